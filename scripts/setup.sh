#!/usr/bin/env bash
# Set up posttrain in ./.venv on a fresh machine: the CPU build of torch first (a plain `torch`
# would pull several GB of CUDA), then posttrain with its dependencies. llama-cpp-python compiles
# llama.cpp from source the first time (~13 min on 2 cores); pip's wheel cache makes later installs fast.
#
#   bash scripts/setup.sh            posttrain itself
#   bash scripts/setup.sh --test     and what the test suite drives besides Python: Chromium (the HTML
#                                    report is rendered in it) and Go (Ollama's TEMPLATEs are executed
#                                    with Go's text/template), cmake, ninja and g++ (llama.cpp's imatrix tools
#                                    are built from source), from the system's packages (apt)
#
# Building llama.cpp for this machine (both rebuild llama-cpp-python without pip's wheel cache, which
# ignores CMAKE_ARGS; the flags used are remembered in .venv, so a rerun rebuilds only when they change):
#   POSTTRAIN_CUDA=1 bash scripts/setup.sh                  with CUDA (needs nvcc; POSTTRAIN_CUDA_ARCH=90
#                                                           picks the GPU generation, default: this GPU's)
#   POSTTRAIN_LLAMA_CMAKE_ARGS="..." bash scripts/setup.sh  any llama.cpp CMake options, e.g. the build
#                                                           without AMX that `posttrain doctor` prints
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WITH_TEST_TOOLS=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST_TOOLS=1 ;;
    *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

if [ "$WITH_TEST_TOOLS" = 1 ]; then
  missing=()
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
  command -v go >/dev/null || missing+=(golang-go)
  # llama.cpp's llama-imatrix and llama-quantize are built from the sdist (posttrain ship --imatrix-text).
  command -v cmake >/dev/null || missing+=(cmake)
  command -v ninja >/dev/null || missing+=(ninja-build)
  command -v g++ >/dev/null || missing+=(g++)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
      sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      echo "note: ${missing[*]} not installed (needs apt as root); the tests that need them will be skipped" >&2
    fi
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
fi

# llama.cpp built with the flags asked for, before posttrain's install would take the cached CPU wheel.
CMAKE_FLAGS=${POSTTRAIN_LLAMA_CMAKE_ARGS:-}
if [ "${POSTTRAIN_CUDA:-0}" = 1 ]; then
  arch=${POSTTRAIN_CUDA_ARCH:-}
  if [ -z "$arch" ] && command -v nvidia-smi >/dev/null; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  fi
  CMAKE_FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${arch:-native} $CMAKE_FLAGS"
fi
BUILT_WITH=.venv/.llama-cpp-cmake-args
if [ -n "$CMAKE_FLAGS" ] && [ "$(cat "$BUILT_WITH" 2>/dev/null)" != "$CMAKE_FLAGS" ]; then
  echo "building llama-cpp-python with CMAKE_ARGS=\"$CMAKE_FLAGS\" (minutes) ..."
  CMAKE_ARGS="$CMAKE_FLAGS" .venv/bin/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
    "llama-cpp-python[server]>=0.3.16"
  echo "$CMAKE_FLAGS" > "$BUILT_WITH"
elif [ -z "$CMAKE_FLAGS" ] && [ -f "$BUILT_WITH" ]; then
  echo "note: llama-cpp-python was built with CMAKE_ARGS=\"$(cat "$BUILT_WITH")\"; kept (delete $BUILT_WITH and .venv to go back)" >&2
fi

# --test adds the optional parts the tests drive for real: Ray (a local cluster), MLflow and W&B
# (offline), PEFT (LoRA adapters).
if [ "$WITH_TEST_TOOLS" = 1 ]; then EXTRAS="test,lora,track,ray"; else EXTRAS="test"; fi
.venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
.venv/bin/posttrain --version
