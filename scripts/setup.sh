#!/usr/bin/env bash
# Everything a fresh Debian machine (Python 3.11, root) needs: Debian packages,
# a virtualenv at .venv with the pinned requirements, and an emulated arm64 Debian
# root for pi_backend's ARM tests (scripts/arm64_root.sh, in .cache/arm64-root).
# Idempotent: each step is skipped when already done, so it is cheap to run before
# every command.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(dataset-fashion-mnist build-essential
  # pi_backend on ARM for real: cross compilers, qemu-user, a debootstrapped arm64 root
  gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross
  qemu-user-static debootstrap
  # pi_backend's C code under valgrind and libFuzzer (clang; ASan/UBSan come with gcc)
  valgrind clang libclang-rt-14-dev
  # pi_backend's AVX-512 paths tested on CPUs without AVX-512 (SIMDe's emulation)
  libsimde-dev)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || { echo "setup: creating .venv"; "$PYTHON" -m venv .venv; }
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements.txt into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  echo "$want" > "$stamp"
fi

if [ "$(id -u)" -eq 0 ]; then
  bash scripts/arm64_root.sh
elif ! bash scripts/arm64_root.sh 2>/dev/null; then
  echo "setup: no arm64 root (.cache/arm64-root; building it needs root: sudo bash scripts/arm64_root.sh);" \
       "the ARM tests skip without it when not run as root" >&2
fi
