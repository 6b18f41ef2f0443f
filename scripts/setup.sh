#!/usr/bin/env bash
# Set up posttrain in ./.venv on a fresh machine: the CPU build of torch first (a plain `torch`
# would pull several GB of CUDA), then posttrain with its dependencies. llama-cpp-python compiles
# llama.cpp from source the first time (~13 min on 2 cores); pip's wheel cache makes later installs fast.
# llama.cpp's converter is provisioned from the same sdist at the end, so the first run fetches nothing.
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

# llama.cpp: the runtime (llama-cpp-python) is built from its sdist, and llama.cpp's converter, which
# the built wheel lacks, is taken from the SAME file after posttrain's install below. The sdist is
# downloaded once and kept in posttrain's cache (where `posttrain convert` would look for it), so a rerun,
# a rebuild with other flags or a second clone downloads nothing; and at a path that stays the same,
# pip's wheel cache knows the wheel built from it: a new .venv installs it in seconds. Only
# llama-cpp-python is built from source: its build backends come as wheels (`--no-binary :all:` would
# build each of them from source too, 4.2 min on 2 cores).
SDIST_DIR=${POSTTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/posttrain}/llama.cpp/sdist  # toolchain.kept_sdist_dir()
installed=$(.venv/bin/python -c "from importlib.metadata import version; print(version('llama-cpp-python'))" \
  2>/dev/null || true)
SDIST=
if [ -n "$installed" ] && [ -f "$SDIST_DIR/llama_cpp_python-$installed.tar.gz" ]; then
  SDIST="$SDIST_DIR/llama_cpp_python-$installed.tar.gz"
fi
if [ -z "$SDIST" ] && [ -z "$installed" ]; then
  # A new .venv: the newest sdist an earlier setup kept, rather than a download.
  SDIST=$(ls "$SDIST_DIR"/llama_cpp_python-*.tar.gz 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$SDIST" ]; then
  # The version already installed, else the newest that posttrain accepts (pyproject.toml's requirement).
  spec="llama-cpp-python==$installed"
  [ -n "$installed" ] || spec="llama-cpp-python$(sed -n 's/.*"llama-cpp-python\[server\]\([^"]*\)".*/\1/p' pyproject.toml)"
  echo "downloading the $spec sdist (~75 MB, once) ..."
  dl=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps --no-binary llama-cpp-python "$spec" -d "$dl"
  mkdir -p "$SDIST_DIR"
  SDIST="$SDIST_DIR/$(cd "$dl" && ls llama_cpp_python-*.tar.gz)"
  mv "$dl"/llama_cpp_python-*.tar.gz "$SDIST"
  rmdir "$dl"
fi

CMAKE_FLAGS=${POSTTRAIN_LLAMA_CMAKE_ARGS:-}
if [ "${POSTTRAIN_CUDA:-0}" = 1 ]; then
  arch=${POSTTRAIN_CUDA_ARCH:-}
  if [ -z "$arch" ] && command -v nvidia-smi >/dev/null; then
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  fi
  CMAKE_FLAGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=${arch:-native} $CMAKE_FLAGS"
fi
BUILT_WITH=.venv/.llama-cpp-cmake-args
if [ -z "$installed" ] || { [ -n "$CMAKE_FLAGS" ] && [ "$(cat "$BUILT_WITH" 2>/dev/null)" != "$CMAKE_FLAGS" ]; }; then
  # Installed from the downloaded file itself, before posttrain's install would pick a version of its own.
  flags=()
  [ -z "$installed" ] || flags+=(--force-reinstall --no-deps)
  [ -z "$CMAKE_FLAGS" ] || flags+=(--no-cache-dir)  # pip's wheel cache ignores CMAKE_ARGS
  echo "building llama-cpp-python from $(basename "$SDIST")${CMAKE_FLAGS:+ with CMAKE_ARGS=\"$CMAKE_FLAGS\"}" \
    "(llama.cpp: ~13 min on 2 cores, seconds from pip's wheel cache) ..."
  started=$SECONDS
  CMAKE_ARGS="$CMAKE_FLAGS" .venv/bin/python -m pip install --quiet ${flags[@]+"${flags[@]}"} "$SDIST"
  echo "llama-cpp-python built and installed in $((SECONDS - started)) s"
  if [ -n "$CMAKE_FLAGS" ]; then echo "$CMAKE_FLAGS" > "$BUILT_WITH"; else rm -f "$BUILT_WITH"; fi
elif [ -z "$CMAKE_FLAGS" ] && [ -f "$BUILT_WITH" ]; then
  echo "note: llama-cpp-python was built with CMAKE_ARGS=\"$(cat "$BUILT_WITH")\"; kept (delete $BUILT_WITH and .venv to go back)" >&2
fi

# --test adds the optional parts the tests drive for real: Ray (a local cluster), MLflow and W&B
# (offline), PEFT (LoRA adapters).
if [ "$WITH_TEST_TOOLS" = 1 ]; then EXTRAS="test,lora,track,ray"; else EXTRAS="test"; fi
.venv/bin/python -m pip install --quiet -e ".[$EXTRAS]"
# llama.cpp's converter from the sdist the runtime was built from (seconds; nothing when a rerun finds
# it), then the same checks `posttrain doctor` makes, so a missing piece shows here, not on the first run.
.venv/bin/posttrain doctor --sdist "$SDIST" --no-selftest
.venv/bin/posttrain --version
