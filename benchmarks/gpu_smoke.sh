#!/usr/bin/env bash
# GPU smoke test: `bash benchmarks/gpu_smoke.sh` on one H100/H200-class GPU, under 8 minutes (about
# 2-4 with a cold torch.compile cache), nothing downloaded (random weights, synthetic tokens).
# It runs benchmarks/gpu_smoke.py, which prints three blocks (numbers from the run; none asserted):
#
#   torch 2.x, torchao 0.x, device NVIDIA H100 80GB HBM3
#   == 1. CAST training, FSDP2 on 1 cuda device, bf16 compute, compiled AdamS ==
#   model: 134.1M parameters (84.9M in 84 2:4 targets), 8 x 1024 tokens per step, 60 steps, wall ... s
#   tokens/s (steps 10-60): ...   model TFLOP/s: ...
#   MFU: ..% of 989 TFLOP/s (NVIDIA H100 80GB HBM3)        <- dense bf16 peak by name; GPU_PEAK_TFLOPS overrides
#   peak memory: allocated .. GiB, reserved .. GiB; planned .. GiB (without CUDA context): allocated / planned = ..
#   planned by component (GiB): weights .., grads .., moments .., mask .., teacher .., activations .., ...
#   final: train/loss .., train/ce .., train/kl .., ..., mask/flips .., scale/mean ..
#   == 2. one optimizer step on cuda: 134.1M fp32 parameters (... tensors) ==
#   adams_compiled   ... ms   ...x AdamW(fused)          <- AdamS's fused kernels vs torch's fused AdamW
#   adams_foreach    ... ms   ...x AdamW(fused)
#   adamw_fused      ... ms   1.00x AdamW(fused)
#   == 3. exported 2:4 linear layers: torchao semi-structured sparse vs dense bf16 ==
#   backend: SparseSemiStructuredTensorCUSPARSELT (cuSPARSELt), 8192 tokens per call
#   linear   768 x   768: dense ... us, 2:4 ... us, speed-up ..x   (one line per distinct target shape:
#   linear  2048 x   768: ...                                       768x768, 2048x768, 768x2048)
#   whole model forward: dense ... ms, 2:4 targets ... ms, speed-up ..x
#   LLaMA-2-7B MLP shape 11008 x 4096: dense ... us, 2:4 ... us, speed-up ..x
#   gpu_smoke: done in ... s
#
# What to expect (public cuSPARSELt figures, not measured here): 2:4 matmuls ~1.1-1.3x at these small
# shapes and up to ~1.6x at 11008 x 4096; the allocated peak at or below the plan (the plan is an upper
# bound: it counts gradients and activations as if all alive at once). On CPU, `--tiny` checks the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false CAST_NO_TQDM=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PY" benchmarks/gpu_smoke.py "$@"
