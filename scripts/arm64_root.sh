#!/usr/bin/env bash
# An emulated arm64 Debian (bookworm) root with python3, python3-numpy and python3-pytest,
# for running pi_backend's Python tests on ARM (tests/pi_backend/test_arm.py):
#   qemu-aarch64-static -L ROOT ROOT/usr/bin/python3 -m pytest ...
# Usage: scripts/arm64_root.sh [ROOT]   (default: $BNN_ARM64_ROOT or .cache/arm64-root)
# Needs root, debootstrap, dpkg-deb and qemu-aarch64-static (scripts/setup.sh installs
# them) and the network. Skipped when ROOT is complete (its .complete stamp matches);
# built in ROOT.tmp.* and renamed, so an interrupted run leaves no half-made ROOT.
#
# binfmt_misc is not available (no chroot into arm64 code), so only debootstrap's first
# stage runs: it unpacks the base system and downloads the --include packages, which
# are unpacked here (dpkg-deb --fsys-tarfile | tar -x). Their maintainer scripts never run; the one that
# matters, update-alternatives for the reference BLAS / LAPACK that numpy loads, is
# replaced by two symlinks.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$(realpath -m "${1:-${BNN_ARM64_ROOT:-.cache/arm64-root}}")  # qemu -L wants it absolute
SUITE=bookworm
PACKAGES=python3-numpy,python3-pytest
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAMP="$SUITE arm64 minbase $PACKAGES v1"

if [ "$(cat "$ROOT/.complete" 2>/dev/null)" = "$STAMP" ]; then
  exit 0
fi
for tool in debootstrap dpkg-deb qemu-aarch64-static; do
  command -v "$tool" >/dev/null || {
    echo "arm64_root: $tool not found; install it (scripts/setup.sh does, as root)" >&2
    exit 1
  }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "arm64_root: debootstrap needs root; run: sudo $0 $ROOT" >&2
  exit 1
fi

echo "setup: building the arm64 root $ROOT (debootstrap, about 2 minutes)"
start=$SECONDS
mkdir -p "$(dirname "$ROOT")"
tmp=$(mktemp -d "$ROOT.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! debootstrap --foreign --arch=arm64 --variant=minbase --include="$PACKAGES" \
     "$SUITE" "$tmp" "$MIRROR" >"$tmp.log" 2>&1; then
  tail -20 "$tmp.log" >&2
  echo "arm64_root: debootstrap failed (log above, full log $tmp.log)" >&2
  exit 1
fi
rm -f "$tmp.log"
# debootstrap/base: the packages beyond the base system; debpaths: package -> .deb
while read -r pkg; do
  deb=$(awk -v p="$pkg" '$1 == p { print $2 }' "$tmp/debootstrap/debpaths")
  [ -n "$deb" ] || { echo "arm64_root: no .deb for $pkg" >&2; exit 1; }
  echo "$tmp$deb"
done < <(tr ' ' '\n' < "$tmp/debootstrap/base" | grep .) |
  # --keep-directory-symlink: /lib, /bin, /sbin are symlinks into /usr (merged /usr)
  xargs -P 4 -I{} sh -c 'dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"' \
    sh {} "$tmp"
libdir="$tmp/usr/lib/aarch64-linux-gnu"
ln -sf blas/libblas.so.3 "$libdir/libblas.so.3"
ln -sf lapack/liblapack.so.3 "$libdir/liblapack.so.3"
rm -f "$tmp"/var/cache/apt/archives/*.deb
if ! out=$(qemu-aarch64-static -L "$tmp" "$tmp/usr/bin/python3" -c \
           'import numpy, pytest, platform; print(platform.machine(), numpy.__version__)' 2>&1); then
  echo "$out" >&2
  echo "arm64_root: python3 with numpy and pytest does not run under qemu-aarch64-static" >&2
  exit 1
fi
echo "$STAMP" > "$tmp/.complete"
rm -rf "$ROOT"
mv "$tmp" "$ROOT"
trap - EXIT
echo "setup: arm64 root ready ($out) in $((SECONDS - start)) s"
