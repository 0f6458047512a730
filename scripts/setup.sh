#!/usr/bin/env bash
# Install everything a run or the tests need: system packages (Java 17, Fashion-MNIST) where root allows,
# a virtualenv with the pinned stack, and Horovod (built once, cached by version). Safe to re-run.
#
# Env: VENV (default .venv), PYTHON (default python3), PIPELINES_CACHE (default ~/.cache/pipelines),
#      PIPELINES_SKIP_HOROVOD=1 to skip Horovod, PIPELINES_SKIP_APT=1 to skip system packages.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.pipelines-setup"

apt_install() {
  [ "${PIPELINES_SKIP_APT:-0}" = 1 ] && return 0
  local want=()
  java_major=$( (java -version 2>&1 || true) | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then want+=(openjdk-17-jre-headless); fi
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || want+=(dataset-fashion-mnist)
  # A real single-node SLURM for the launch tests (tests/slurm.py), crontab for `pipelines schedule`,
  # headless Chromium and its driver for the run report's browser test (tests/test_report.py),
  # OpenBLAS as the system libblas.so.3/liblapack.so.3 that Spark MLlib's netlib loads (else its Java fallback),
  # and the OpenMP runtime LightGBM's wheel links (histogram forests).
  for pkg in slurmctld slurmd slurm-client munge cron chromium chromium-driver libopenblas0-pthread libgomp1; do
    dpkg -s "$pkg" >/dev/null 2>&1 || want+=("$pkg")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${want[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
  else
    echo "setup: please install ${want[*]} (needs root; e.g. sudo apt-get install ${want[*]})." >&2
    echo "       Without Fashion-MNIST the default job falls back to scikit-learn's digits;" >&2
    echo "       without SLURM the tests that need a real scheduler are skipped (they say why)." >&2
  fi
}

apt_install

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

hash_now=$(cat pyproject.toml scripts/setup.sh scripts/build_horovod.sh | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$hash_now" ]; then
  echo "setup: installing the Python stack into $VENV (first time: a few minutes)"
  "$PY" -m pip install --quiet --upgrade pip wheel setuptools
  "$PY" -m pip install --quiet -e ".[dev]"
  if [ "${PIPELINES_SKIP_HOROVOD:-0}" != 1 ]; then
    PY="$PY" bash scripts/build_horovod.sh
  fi
  echo "$hash_now" > "$STAMP"
else
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null 2>&1 || true
fi
"$VENV/bin/pipelines" check || { echo "setup: environment check failed (see above)" >&2; exit 1; }
echo "setup: ready ($VENV)"
