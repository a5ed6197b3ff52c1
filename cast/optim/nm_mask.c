/* N:M mask refresh (paper Eq. 6) for fp32 weights on CPU, built and loaded by cast/optim/native.py.
 *
 * The weight is seen as (A, M, B): element (a, i, b) at (a*M + i)*B + b, a group being the M
 * entries (a, 0..M-1, b). For nn.Linear (groups along the last dim) B = 1; for GPT-2's Conv1D
 * (groups along dim 0) B = the row length.
 *
 * An entry's rank counts the group entries that beat it; for a pair p < q, p wins when
 * |w_p| >= |w_q| (a tie goes to the lower index). Entries of rank < N are kept. These are the
 * comparisons of cast.sparsity.nm_mask, in the same order, so both give the same mask even with
 * NaN. No branch: the compiler vectorises the groups of four (2:4) across SIMD lanes.
 *
 * Returns the number of entries where the new mask differs from old.
 */
#include <stdint.h>
#include <math.h>

/* 1 if entry q (index > p) beats entry p, as the complement of "p wins" */
#define BEATEN(ap, aq) (!((ap) >= (aq)))

static inline int64_t groups4(const float *w, const uint8_t *old, uint8_t *out, int64_t n) {
    float a0 = fabsf(w[0]), a1 = fabsf(w[1]), a2 = fabsf(w[2]), a3 = fabsf(w[3]);
    int r0 = BEATEN(a0, a1) + BEATEN(a0, a2) + BEATEN(a0, a3);
    int r1 = (a0 >= a1) + BEATEN(a1, a2) + BEATEN(a1, a3);
    int r2 = (a0 >= a2) + (a1 >= a2) + BEATEN(a2, a3);
    int r3 = (a0 >= a3) + (a1 >= a3) + (a2 >= a3);
    out[0] = r0 < n;
    out[1] = r1 < n;
    out[2] = r2 < n;
    out[3] = r3 < n;
    return (out[0] != old[0]) + (out[1] != old[1]) + (out[2] != old[2]) + (out[3] != old[3]);
}

int64_t nm_mask_f32(const float *w, const uint8_t *old, uint8_t *out, int64_t A, int64_t M, int64_t B,
                    int64_t n, int threads) {
    int64_t flips = 0;
    if (M == 4 && B == 1) {  /* 2:4 (or 1:4, 3:4) along the last dim: the hot path */
#pragma omp parallel for reduction(+ : flips) schedule(static) num_threads(threads)
        for (int64_t a = 0; a < A; a++)
            flips += groups4(w + 4 * a, old + 4 * a, out + 4 * a, n);
        return flips;
    }
#pragma omp parallel for reduction(+ : flips) schedule(static) num_threads(threads)
    for (int64_t a = 0; a < A; a++) {
        const float *x = w + a * M * B;
        for (int64_t i = 0; i < M; i++) {
            for (int64_t b = 0; b < B; b++) {
                float xi = fabsf(x[i * B + b]);
                int64_t r = 0, k = (a * M + i) * B + b;
                for (int64_t j = 0; j < i; j++)
                    r += fabsf(x[j * B + b]) >= xi;
                for (int64_t j = i + 1; j < M; j++)
                    r += BEATEN(xi, fabsf(x[j * B + b]));
                out[k] = r < n;
                flips += out[k] != old[k];
            }
        }
    }
    return flips;
}
