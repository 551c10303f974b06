#!/usr/bin/env bash
# mypy on the installed import names: links node/, pipeline/, training/, fuzz/ as spinexr.* under
# build/typecheck (the editable install's import hook is invisible to mypy), then checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
mkdir -p "$ROOT/build/typecheck/spinexr"
for t in node pipeline training fuzz; do ln -sfn "../../../$t" "$ROOT/build/typecheck/spinexr/$t"; done
cd "$ROOT"
exec "$VENV/bin/mypy" -p spinexr.node -p spinexr.pipeline -p spinexr.training -p spinexr.fuzz "$@"
