#!/usr/bin/env bash
# Installs spinexr-node and its whole Python stack into a virtual environment.
#
#   scripts/install.sh            # venv at ./.venv (override with VENV=...)
#
# Steps (each prints what it does):
#   1. create the venv (Python 3.11) and the build tools mmcv needs
#   2. torch==2.14.1 + torchvision==0.29.1 (pinned together)
#   3. mmcv==2.1.0: there is no wheel on the registry, so build it from the sdist with the
#      C++20 fix and --no-build-isolation, once, and cache the wheel under
#      $SPINEXR_WHEEL_CACHE (default ~/.cache/spinexr/wheels) keyed by mmcv+torch+python
#   4. the project itself (editable) with its dev extras
# A stamp file records the hash of pyproject.toml and this script: when neither changed,
# the script exits at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
MMCV_VERSION="2.1.0"
CACHE="${SPINEXR_WHEEL_CACHE:-$HOME/.cache/spinexr/wheels}"
STAMP="$VENV/.spinexr-install-stamp"

say() { printf '[install %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

want_stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/install.sh" "$ROOT/scripts/build-mmcv-wheel.sh" | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  say "environment up to date ($VENV)"
  exit 0
fi

T0=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
  say "1/4 creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
else
  say "1/4 virtual environment exists: $VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install --progress-bar on -q --upgrade "pip>=24" "setuptools>=77,<81" wheel ninja

say "2/4 torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (several GB on first install)"
"${PIP[@]}" install --progress-bar on "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "numpy<2.3"

PYTAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
KEY="mmcv${MMCV_VERSION}-torch${TORCH_VERSION}-${PYTAG}"
WHEELDIR="$CACHE/$KEY"
if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mmcv') != '$MMCV_VERSION')" 2>/dev/null \
   && "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  say "3/4 mmcv $MMCV_VERSION already installed with its ops"
else
  if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
    say "3/4 building mmcv $MMCV_VERSION from source against torch $TORCH_VERSION (about 12 minutes on 2 cores; cached afterwards in $WHEELDIR)"
    PYTHON="$VENV/bin/python" MMCV_VERSION="$MMCV_VERSION" \
      bash "$ROOT/scripts/build-mmcv-wheel.sh" "$WHEELDIR"
  else
    say "3/4 mmcv $MMCV_VERSION wheel from cache $WHEELDIR"
  fi
  "${PIP[@]}" install --no-deps "$WHEELDIR"/mmcv-*.whl
fi

say "4/4 spinexr-node and its dependencies"
"${PIP[@]}" install --progress-bar on -e "$ROOT[dev]"
"$VENV/bin/python" -c "import mmcv.ops, mmdet, torchvision, spinexr.node" \
  || { say "import check failed"; exit 1; }
echo "$want_stamp" >"$STAMP"
say "done in $((SECONDS - T0))s: $VENV"
