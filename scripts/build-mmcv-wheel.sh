#!/usr/bin/env bash
# Builds an mmcv wheel (with its compiled ops) against the torch that is already installed.
#
#   scripts/build-mmcv-wheel.sh OUT_DIR
#
# mmcv has no Linux wheels on PyPI, only a source distribution, and mmcv 2.1.0 (the newest
# that mmdet 3.3.0 accepts) does not build against torch 2.14 as shipped: its setup.py
# forces -std=c++14/-std=c++17 while torch 2.14's headers need C++20. This script downloads
# the sdist, applies that one fix and builds the wheel with --no-build-isolation (so it
# compiles against the installed torch instead of a torch pip would fetch for the build).
# scripts/install.sh (step 3) and the Docker images (deploy/) call it.
#
# Environment:
#   PYTHON                interpreter whose environment has torch (default: python3);
#                         it needs setuptools>=77,<81 (pkg_resources), wheel and ninja
#   MMCV_VERSION          default 2.1.0
#   MMCV_SDIST            a local mmcv-$MMCV_VERSION.tar.gz to use instead of downloading
#   MAX_JOBS              parallel compile jobs (default: nproc)
#   FORCE_CUDA=1          also build the CUDA ops (needs nvcc: a CUDA *devel* image/toolkit
#                         of the same major version as torch's CUDA)
#   TORCH_CUDA_ARCH_LIST  GPU architectures for the CUDA ops, e.g. "8.0;8.6;9.0+PTX"
# Prints progress every 30 s (objects compiled, elapsed, ETA); on failure, the build log's tail.
set -euo pipefail

OUT="${1:?usage: build-mmcv-wheel.sh OUT_DIR}"
PYTHON="${PYTHON:-python3}"
MMCV_VERSION="${MMCV_VERSION:-2.1.0}"
say() { printf '[mmcv %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

TORCH="$("$PYTHON" -c 'import torch; print(torch.__version__)')" \
  || { say "torch is not importable with $PYTHON: install torch first"; exit 1; }
CUDA_OPS="CPU ops only"
if [[ "${FORCE_CUDA:-0}" == "1" ]]; then
  command -v nvcc >/dev/null || [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]] \
    || { say "FORCE_CUDA=1 needs nvcc (a CUDA devel toolkit)"; exit 1; }
  CUDA_OPS="CPU + CUDA ops for ${TORCH_CUDA_ARCH_LIST:-the default architectures of torch}"
fi

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
if [[ -n "${MMCV_SDIST:-}" ]]; then
  cp "$MMCV_SDIST" "$BUILD/"
else
  say "downloading the mmcv $MMCV_VERSION source distribution"
  "$PYTHON" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
    "mmcv==$MMCV_VERSION" -d "$BUILD"
fi
tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
SRC="$BUILD/mmcv-$MMCV_VERSION"
# torch 2.14's headers need C++20; mmcv 2.1.0's setup.py forces C++14/17.
sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
grep -q 'c++20' "$SRC/setup.py" || { say "C++20 patch did not apply to mmcv's setup.py"; exit 1; }

say "building mmcv $MMCV_VERSION against torch $TORCH ($CUDA_OPS); this takes a while"
LOG="$BUILD/build.log"
( cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" -m pip wheel -v --no-build-isolation --no-deps -w "$BUILD/dist" . ) >"$LOG" 2>&1 &
PID=$!
START=$SECONDS
while kill -0 "$PID" 2>/dev/null; do
  sleep 30
  step="$(grep -oE '\[[0-9]+/[0-9]+\]' "$LOG" | tail -n1 | tr -d '[]' || true)"
  el=$((SECONDS - START))
  if [[ -n "$step" ]]; then
    done_n="${step%/*}"; total_n="${step#*/}"
    eta="?"
    if (( done_n > 0 )); then eta="$(( el * (total_n - done_n) / done_n ))s"; fi
    say "   $done_n/$total_n objects compiled, ${el}s elapsed, ETA $eta"
  else
    say "   preparing, ${el}s elapsed"
  fi
done
if ! wait "$PID"; then
  tail -n 60 "$LOG"
  say "mmcv build failed (log above)"
  exit 1
fi
mkdir -p "$OUT"
# Copy, then rename inside OUT: a build killed here never leaves a partial wheel behind that
# a later run would take for a cached one.
WHEEL="$(cd "$BUILD/dist" && ls mmcv-*.whl)"
cp "$BUILD/dist/$WHEEL" "$OUT/.$WHEEL.partial"
mv "$OUT/.$WHEEL.partial" "$OUT/$WHEEL"
say "wheel in $OUT: $(cd "$OUT" && ls mmcv-*.whl) ($((SECONDS - START))s)"
