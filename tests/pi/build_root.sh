#!/usr/bin/env bash
# Build (once) an emulated Raspberry Pi OS Bookworm root: Debian 12 arm64 with Python 3.11,
# the same Python and glibc as Raspberry Pi OS 64-bit, and OpenSSH's server (the device loop's
# check logs into it over SSH). Cached outside the checkout; a second call returns at once. Needs root, qemu-user-static, binfmt-support and mmdebstrap.
#
#   tests/pi/build_root.sh [ROOT]      (default: $TLEDGE_PI_ROOT or ~/.cache/tledge/pi-root-bookworm-arm64)
set -euo pipefail
ROOT=${1:-${TLEDGE_PI_ROOT:-$HOME/.cache/tledge/pi-root-bookworm-arm64}}
if [ -x "$ROOT/usr/bin/python3" ] && [ -f "$ROOT/.tledge-root-complete-v2" ]; then
    echo "$ROOT"
    exit 0
fi
mkdir -p "$(dirname "$ROOT")"
# Build into a temporary folder beside it and rename at the end: an interrupted build never
# leaves a root that looks complete. mmdebstrap mounts nothing that outlives it.
TMP="$ROOT.partial.$$"
trap 'rm -rf --one-file-system "$TMP" 2>/dev/null || true' EXIT
mmdebstrap --quiet --arch=arm64 --variant=apt \
    --include=python3,python3-venv,python3-pip,ca-certificates,openssh-server \
    bookworm "$TMP" >&2
touch "$TMP/.tledge-root-complete-v2"
[ -e "$ROOT" ] && rm -rf --one-file-system "$ROOT"
mv "$TMP" "$ROOT"
trap - EXIT
echo "$ROOT"
