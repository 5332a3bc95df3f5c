#!/usr/bin/env bash
# The learner's GPU checks (issue 11), for a machine with a CUDA GPU and python with torch and
# transformers: no Ray, vLLM or DeepSpeed needed, nothing downloaded. About 2-4 minutes.
#   bash scripts/gpu_check.sh [OUT_DIR]      (the device tool: bash scripts/gpu_check.sh "$OUT")
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log; exits non-zero if a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
mkdir -p "$out"
python="${PYTHON:-python}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi not found"; } | tee "$out/gpu_check.log"
PYTHONUNBUFFERED=1 "$python" scripts/gpu_check.py --out "$out/gpu_check.json" "${@:2}" 2>&1 | tee -a "$out/gpu_check.log"
