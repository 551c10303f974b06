#!/usr/bin/env bash
# Installs the system packages the tests and real peers need (Debian/Ubuntu):
#   dcmtk (storescu/storescp/dcmdump), dicom3tools (dciodvfy), postgresql, redis-server,
#   orthanc + orthanc-dicomweb, pixelmed-apps (DicomSRValidator) with a JDK, openssl,
#   chromium + chromium-driver (headless browser test of the admin pages).
# Skips what is already there; needs root (or sudo) only when something is missing.
#
#   scripts/system-deps.sh                     # every package above
#   scripts/system-deps.sh chromium orthanc    # only these (names from the table below;
#                                              # scripts/viewer-deps.sh uses this)
set -euo pipefail

say() { printf '[system-deps %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

declare -A CHECK=(
  [dcmtk]="command -v storescp"
  [dicom3tools]="command -v dciodvfy"
  [postgresql]="ls /usr/lib/postgresql/*/bin/initdb"
  [redis-server]="command -v redis-server"
  [orthanc]="command -v Orthanc"
  [orthanc-dicomweb]="ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so"
  [pixelmed-apps]="ls /usr/share/java/pixelmed.jar"
  [default-jdk-headless]="command -v javac"
  [openssl]="command -v openssl"
  [chromium]="command -v chromium"
  [chromium-driver]="command -v chromedriver"
  [npm]="command -v npm"
)
wanted=("$@")
if ((${#wanted[@]} == 0)); then
  # npm is only for scripts/viewer-deps.sh (it fetches the OHIF viewer), not for make test.
  for pkg in "${!CHECK[@]}"; do [[ $pkg == npm ]] || wanted+=("$pkg"); done
fi
missing=()
for pkg in "${wanted[@]}"; do
  if [[ -z ${CHECK[$pkg]+x} ]]; then
    say "unknown package $pkg (known: ${!CHECK[*]})"
    exit 2
  fi
  if ! eval "${CHECK[$pkg]}" >/dev/null 2>&1; then missing+=("$pkg"); fi
done
if ((${#missing[@]} == 0)); then
  say "system packages present"
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    say "missing ${missing[*]} and not root: install them with apt-get, then re-run"
    exit 1
  fi
fi
say "installing ${missing[*]} (about 2 minutes)"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# --no-install-recommends: dicom3tools would otherwise pull in ghostscript and friends.
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
# Debian starts these services on install; the tests start their own on loopback.
for svc in postgresql redis-server orthanc; do
  $SUDO service "$svc" stop >/dev/null 2>&1 || true
done
say "done"
