#!/usr/bin/env bash
# GPU check for a GPU machine (NOT run on the development machines, which have no GPU): installs the GPU
# TensorFlow build and an NCCL-enabled Horovod as docs/INSTALL.md says, prints nvidia-smi, then trains the
# Fashion-MNIST CNN for one epoch with one rank per GPU through horovodrun, Dask-worker and Spark-barrier
# launchers (benchmarks/deep/gpu_check.py) and prints images/s, peak GPU memory and test accuracy.
#
#   bash benchmarks/deep/gpu_check.sh            # PY=.venv/bin/python by default; SKIP_INSTALL=1 to reuse
# Needs: nvidia-smi, CUDA's nvcc and NCCL (HOROVOD_NCCL_HOME or a system NCCL), Java 17 for Spark, and
# Debian's dataset-fashion-mnist (or the four IDX files where pipelines.data.bundled looks for them).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
nvidia-smi
if [[ -z "${SKIP_INSTALL:-}" ]]; then
    "$PY" -m pip uninstall -y tensorflow-cpu horovod || true
    "$PY" -m pip install "tensorflow[and-cuda]>=2.16,<2.22"
    export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_WITHOUT_MPI=1
    [[ -n "${NCCL_HOME:-}" ]] && export HOROVOD_NCCL_HOME=$NCCL_HOME
    PY=$PY bash scripts/build_horovod.sh
fi
"$(dirname "$PY")/horovodrun" --check-build
"$PY" -c "import tensorflow as tf; print('TensorFlow GPUs:', tf.config.list_physical_devices('GPU'))"
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2
timeout "${CHECK_TIMEOUT_S:-900}" "$PY" -m benchmarks.deep.gpu_check "$@"
