#!/usr/bin/env bash
# Build (once) and install Horovod 0.28.1 against the venv's TensorFlow, caching the wheel by version.
#
# horovod 0.28.1 (the last release) does not build against TensorFlow >= 2.16 as published: its optional
# XLA op source includes headers TF no longer ships. We drop that one source from the CMake list (XLA ops
# are off unless HOROVOD_ENABLE_XLA_OPS=1) and build the rest unchanged.
#
# Env:
#   PY                      python of the target venv (default: .venv/bin/python)
#   PIPELINES_CACHE         cache root (default: ~/.cache/pipelines); wheels go in $PIPELINES_CACHE/wheels
#   HOROVOD_GPU_OPERATIONS  set to NCCL on GPU clusters (needs nvcc + NCCL; see docs/INSTALL.md)
set -euo pipefail

HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
PY="${PY:-.venv/bin/python}"
CACHE="${PIPELINES_CACHE:-$HOME/.cache/pipelines}"

tf_version=$("$PY" -c 'import importlib.metadata as m
for n in ("tensorflow-cpu", "tensorflow"):
    try:
        print(m.version(n)); break
    except m.PackageNotFoundError:
        pass')
py_tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
flavour="cpu"
[ -n "${HOROVOD_GPU_OPERATIONS:-}" ] && flavour="gpu-$(echo "$HOROVOD_GPU_OPERATIONS" | tr '[:upper:]' '[:lower:]')"
key="horovod-${HOROVOD_VERSION}-tf${tf_version}-${py_tag}-${flavour}"
wheel_dir="$CACHE/wheels/$key"

if "$PY" -c 'import horovod.tensorflow' 2>/dev/null \
   && [ "$("$PY" -c 'import horovod; print(horovod.__version__)')" = "$HOROVOD_VERSION" ]; then
  echo "horovod $HOROVOD_VERSION already installed"
  exit 0
fi

if ! ls "$wheel_dir"/horovod-*.whl >/dev/null 2>&1; then
  echo "building horovod $HOROVOD_VERSION for TF $tf_version ($flavour); about 10-12 minutes on 2 cores"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
  tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
  src="$work/horovod-$HOROVOD_VERSION"
  # Drop the XLA op source that needs TF's removed XLA headers.
  sed -i '/xla_mpi_ops\.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
  grep -q xla_mpi_ops "$src/horovod/tensorflow/CMakeLists.txt" && { echo "patch failed" >&2; exit 1; }
  # horovod 0.28.1's CMake files (and gloo's) predate CMake 4, which refuses cmake_minimum_required < 3.5.
  "$PY" -m pip install --quiet "cmake>=3.18,<4"
  # horovod's setup.py runs `cmake` from PATH in another directory: put the venv's bin first, absolute.
  export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
  export CMAKE_POLICY_VERSION_MINIMUM=3.5
  export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
  export HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI="${HOROVOD_WITHOUT_MPI:-1}"
  export MAKEFLAGS="-j$(nproc)"
  mkdir -p "$work/out"
  if ! "$PY" -m pip wheel --no-build-isolation --no-deps -w "$work/out" "$src" > "$work/build.log" 2>&1; then
    grep -iE -B2 -A8 'error|failed' "$work/build.log" | tail -80 >&2
    mkdir -p "$CACHE" && cp "$work/build.log" "$CACHE/horovod-build.log"
    echo "horovod build failed; full log in $CACHE/horovod-build.log" >&2
    exit 1
  fi
  # Publish atomically so an interrupted build never leaves a half wheel in the cache.
  mkdir -p "$CACHE/wheels"
  tmp_dir=$(mktemp -d "$CACHE/wheels/.tmp-XXXXXX")
  cp "$work"/out/horovod-*.whl "$tmp_dir/"
  rm -rf "$wheel_dir"
  mv "$tmp_dir" "$wheel_dir"
fi

"$PY" -m pip install --quiet --no-deps "$wheel_dir"/horovod-*.whl
# horovod's runtime deps (without letting pip touch TF/numpy)
"$PY" -m pip install --quiet cloudpickle psutil pyyaml packaging
echo "horovod $HOROVOD_VERSION installed from $wheel_dir"
