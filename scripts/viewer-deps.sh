#!/usr/bin/env bash
# Installs what the viewer tests (tests/viewers/, `make viewer-check`) need, once:
#   1. system packages through scripts/system-deps.sh: chromium + chromium-driver (the
#      headless browser), orthanc + orthanc-dicomweb (the PACS stand-in; orthanc ships the
#      ServeFolders plugin that serves the viewer), npm (to fetch the viewer);
#   2. the published OHIF viewer build: `npm pack @ohif/app@$OHIF_VERSION` from the npm
#      registry, checked against the pinned SHA-256, its package/dist/ unpacked into
#      $SPINEXR_CACHE/ohif/$OHIF_VERSION/dist (default ~/.cache/spinexr/ohif/3.13.2/dist).
# A second run finds both and downloads nothing. The tests never download: without the
# cached build they skip, or fail under SPINEXR_REQUIRE_TOOLS=1 saying to run this script.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Keep in step with tests/ohif_support.py (OHIF_VERSION).
OHIF_VERSION="3.13.2"
OHIF_SHA256="b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1"
CACHE="${SPINEXR_CACHE:-$HOME/.cache/spinexr}/ohif/$OHIF_VERSION"

say() { printf '[viewer-deps %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

bash "$ROOT/scripts/system-deps.sh" chromium chromium-driver orthanc orthanc-dicomweb npm

if [[ -f "$CACHE/dist/index.html" && -f "$CACHE/dist/app-config.js" ]]; then
  say "OHIF $OHIF_VERSION present ($CACHE/dist)"
  exit 0
fi

say "fetching @ohif/app@$OHIF_VERSION from the npm registry (~50 MB)"
mkdir -p "$CACHE"
work="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
tarball="$work/ohif-app-$OHIF_VERSION.tgz"
got="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [[ $got != "$OHIF_SHA256" ]]; then
  say "SHA-256 of $tarball is $got, expected $OHIF_SHA256: not installed"
  exit 1
fi
tar -xzf "$tarball" -C "$work" package/dist package/package.json
version="$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$work/package/package.json")"
if [[ $version != "$OHIF_VERSION" ]]; then
  say "the tarball holds @ohif/app $version, expected $OHIF_VERSION: not installed"
  exit 1
fi
# Rename into place last, so an interrupted run never leaves a half-unpacked dist behind.
rm -rf "$CACHE/dist"
mv "$work/package/dist" "$CACHE/dist"
say "OHIF $OHIF_VERSION unpacked into $CACHE/dist ($(du -sh "$CACHE/dist" | cut -f1))"
