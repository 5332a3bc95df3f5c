#!/usr/bin/env bash
# Speculative sampling's per-pass costs at the GPU recipes' sizes (issue 21), for the device tool:
#   bash scripts/gpu_verify_passes.sh "$OUT"
# Needs CUDA, torch and transformers only; a few minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi not found"; } | tee "$out/verify_passes.log"
PYTHONUNBUFFERED=1 "${PYTHON:-python}" benchmarks/bench_verify_passes.py --device cuda \
  --pairs Qwen/Qwen2.5-7B:open-r1/OpenR1-Qwen-7B Qwen/Qwen2.5-3B:open-r1/OpenR1-Qwen-7B \
  --batch 1 64 256 --context 1024 --drafts 2 4 6 --repeats 5 --out "$out/verify_passes.json" 2>&1 | tee -a "$out/verify_passes.log"
