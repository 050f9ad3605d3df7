#!/bin/bash
# Installs every Debian package the build, the static libraries and the VM
# tests need, on a fresh Debian 12 machine. Idempotent: a stamp keyed by the
# package list makes later runs a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${IH_CACHE:-$here/.cache}
mkdir -p "$cache"

PKGS=(
  # static C libraries (built from source, see build-static-libs.sh)
  build-essential autoconf automake autoconf-archive libtool libltdl-dev pkg-config
  gettext autopoint dpkg-dev clang libclang-dev
  nettle-dev libmbedtls-dev libjson-c-dev uuid-dev libblkid-dev libargon2-dev libaio-dev libpopt-dev
  # checks on the binary
  file strace cpio openssl
  # systemd 252's TPM2 token plugin (interop test) dlopens these
  libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0 libtss2-tcti-swtpm0
  # VM tests and the demo
  qemu-system-x86 swtpm swtpm-tools mmdebstrap fdisk e2fsprogs cryptsetup-bin
  dosfstools erofs-utils squashfs-tools ovmf python3-venv
  # the PID-1 initrd builder compresses its cpio
  zstd
  # the power-cut matrix resets the software TPM's dictionary-attack counter
  tpm2-tools
  # the NixOS module is evaluated with Debian's nix (2.8)
  nix-bin
)
# virt-fw-vars edits OVMF variable stores (the dbx update of the TPM
# mismatch scenario); not packaged for bookworm, so from PyPI, pinned.
VIRT_FIRMWARE="virt-firmware==26.10"

venv() {
  local v="$cache/venv-${VIRT_FIRMWARE//[=.]/-}"
  if [ ! -x "$v/bin/virt-fw-vars" ]; then
    rm -rf "$v"
    # Debian's python3 (with python3-venv above), not whatever python3 is first on PATH.
    /usr/bin/python3 -m venv "$v"
    "$v/bin/pip" install -q "$VIRT_FIRMWARE"
  fi
}

key=$(printf '%s\n' "${PKGS[@]}" | sha256sum | cut -c1-16)
stamp="$cache/apt-$key.stamp"
if [ -e "$stamp" ]; then venv; exit 0; fi

export DEBIAN_FRONTEND=noninteractive
# Source entries: the static build unpacks cryptsetup and lvm2 (bookworm) and
# tpm2-tss (trixie: bookworm's source is gone from the archive).
cat > /etc/apt/sources.list.d/initrd-helper-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
touch "$stamp"
venv
