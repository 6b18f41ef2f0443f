#!/usr/bin/env bash
# Set up posttrain in ./.venv on a fresh machine: the CPU build of torch first (a plain `torch`
# would pull several GB of CUDA), then posttrain with its dependencies. llama-cpp-python compiles
# llama.cpp from source the first time (~13 min on 2 cores); pip's wheel cache makes later installs fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/posttrain --version
