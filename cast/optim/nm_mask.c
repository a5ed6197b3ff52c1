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

/* ranks of a0..a3 turned into keep flags k0..k3 (the comparisons of the header) */
#define KEEP4(a0, a1, a2, a3, n, k0, k1, k2, k3)                           \
    uint8_t k0 = BEATEN(a0, a1) + BEATEN(a0, a2) + BEATEN(a0, a3) < (n); \
    uint8_t k1 = ((a0) >= (a1)) + BEATEN(a1, a2) + BEATEN(a1, a3) < (n); \
    uint8_t k2 = ((a0) >= (a2)) + ((a1) >= (a2)) + BEATEN(a2, a3) < (n); \
    uint8_t k3 = ((a0) >= (a3)) + ((a1) >= (a3)) + ((a2) >= (a3)) < (n)

/* a group of four consecutive entries; returns its flips */
static inline int64_t group4(const float *w, const uint8_t *old, uint8_t *out, int64_t n) {
    float a0 = fabsf(w[0]), a1 = fabsf(w[1]), a2 = fabsf(w[2]), a3 = fabsf(w[3]);
    KEEP4(a0, a1, a2, a3, n, k0, k1, k2, k3);
    out[0] = k0;
    out[1] = k1;
    out[2] = k2;
    out[3] = k3;
    return (k0 != old[0]) + (k1 != old[1]) + (k2 != old[2]) + (k3 != old[3]);
}

/* four rows of length B whose columns are the groups: one column per SIMD lane (separate
 * restrict pointers per row, so the compiler knows the rows do not overlap) */
static int64_t rows4(const float *restrict w0, const float *restrict w1, const float *restrict w2,
                     const float *restrict w3, const uint8_t *restrict o0, const uint8_t *restrict o1,
                     const uint8_t *restrict o2, const uint8_t *restrict o3, uint8_t *restrict m0,
                     uint8_t *restrict m1, uint8_t *restrict m2, uint8_t *restrict m3, int64_t B, int64_t n) {
    int64_t flips = 0;
    for (int64_t b = 0; b < B; b++) {
        float a0 = fabsf(w0[b]), a1 = fabsf(w1[b]), a2 = fabsf(w2[b]), a3 = fabsf(w3[b]);
        KEEP4(a0, a1, a2, a3, n, k0, k1, k2, k3);
        m0[b] = k0;
        m1[b] = k1;
        m2[b] = k2;
        m3[b] = k3;
        flips += (k0 != o0[b]) + (k1 != o1[b]) + (k2 != o2[b]) + (k3 != o3[b]);
    }
    return flips;
}

int64_t nm_mask_f32(const float *w, const uint8_t *old, uint8_t *out, int64_t A, int64_t M, int64_t B,
                    int64_t n, int threads) {
    int64_t flips = 0;
    if (M == 4 && B == 1) {  /* 2:4 (or 1:4, 3:4) along the last dim (nn.Linear): the hot path */
#pragma omp parallel for reduction(+ : flips) schedule(static) num_threads(threads)
        for (int64_t a = 0; a < A; a++)
            flips += group4(w + 4 * a, old + 4 * a, out + 4 * a, n);
        return flips;
    }
    if (M == 4) {  /* groups down the columns (GPT-2's Conv1D): vectorised along a row */
#pragma omp parallel for reduction(+ : flips) schedule(static) num_threads(threads)
        for (int64_t a = 0; a < A; a++) {
            const float *x = w + 4 * a * B;
            const uint8_t *o = old + 4 * a * B;
            uint8_t *m = out + 4 * a * B;
            flips += rows4(x, x + B, x + 2 * B, x + 3 * B, o, o + B, o + 2 * B, o + 3 * B, m, m + B, m + 2 * B,
                           m + 3 * B, B, n);
        }
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
