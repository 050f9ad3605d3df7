#!/bin/bash
# Builds the PID-1 initrd: initrd-helper as /init (no systemd, no udev), the
# kernel modules it needs with their dependencies (modules.list, in
# modules.dep's format, which PID 1 loads by finit_module, a dependency
# level at a time), mkfs.ext4 with its libraries, the config, and the
# device nodes the kernel wants before /init runs; a zstd-compressed cpio.
#
# Usage: mkinitrd.sh --kver KVER --helper BIN --out FILE [--config FILE]
#          [--moddir DIR] [--root DIR] [--modules "NAME..."]
#   --moddir  the directory holding KVER/modules.dep (default ROOT/lib/modules)
#   --root    the distribution root that mkfs.ext4 and its libraries come
#             from (default /); any distribution kernel's modules work
#   --modules more module names (as modprobe takes them) to add
set -euo pipefail
die() { echo "mkinitrd.sh: $*" >&2; exit 1; }

kver= helper= out= config= moddir= root=/ extra=
while [ $# -gt 0 ]; do
  case $1 in
    --kver) kver=$2 ;; --helper) helper=$2 ;; --out) out=$2 ;; --config) config=$2 ;;
    --moddir) moddir=$2 ;; --root) root=$2 ;; --modules) extra=$2 ;;
    *) die "unknown argument $1" ;;
  esac
  shift 2
done
[ -n "$kver" ] && [ -n "$helper" ] && [ -n "$out" ] || die "--kver, --helper and --out are required"
moddir=${moddir:-$root/lib/modules}
kdir="$moddir/$kver"
[ -f "$kdir/modules.dep" ] || die "$kdir/modules.dep is missing (run depmod -b)"

# Disks (virtio, NVMe, SATA), the TPM, device-mapper targets, the file
# systems the helper mounts, dm-crypt's cipher (xts over ecb; aesni_intel is skipped at
# boot on CPUs without AES-NI), ext4's checksum, efivarfs (the boot loader's
# variables), and virtio_rng (getrandom() waits for the CRNG otherwise).
MODULES="virtio_blk virtio_pci virtio_scsi virtio_rng nvme ahci sd_mod tpm_crb tpm_tis
  dm_mod dm_verity dm_crypt overlay ext4 erofs squashfs xts ecb aesni_intel aes_generic
  crc32c_generic efivarfs $extra"

tree=$(mktemp -d); trap 'rm -rf "$tree"' EXIT

# ---- modules: the closure of MODULES through modules.dep -------------------
# norm NAME: modprobe's spelling rules ("-" and "_" are the same).
norm() { echo "${1//-/_}"; }
declare -A path_of deps_of
while IFS= read -r line; do
  p=${line%%:*}; d=${line#*:}
  n=${p##*/}; n=$(norm "${n%%.ko*}")
  path_of[$n]=$p; deps_of[$p]=$d
done < "$kdir/modules.dep"
declare -A take
for m in $MODULES; do
  n=$(norm "$m")
  if [ -n "${path_of[$n]:-}" ]; then
    p=${path_of[$n]}; take[$p]=1
    for d in ${deps_of[$p]}; do take[$d]=1; done
  elif grep -qE "/$m\.ko|/$n\.ko" "$kdir/modules.builtin" 2>/dev/null; then
    : # built into the kernel
  else
    die "module $m: neither in $kdir/modules.dep nor built in"
  fi
done
mkdir -p "$tree/lib/modules/$kver" "$tree/etc/initrd-helper"
for p in "${!take[@]}"; do
  case $p in *.ko) ;; *) die "$p: compressed modules are not supported (finit_module of a plain .ko)" ;; esac
  install -D -m644 "$kdir/$p" "$tree/lib/modules/$kver/$p"
  echo "$p:${deps_of[$p]}"
done | sort > "$tree/etc/initrd-helper/modules.list"

# ---- the helper, its config, mkfs.ext4 -------------------------------------
install -D -m755 "$helper" "$tree/init"
[ -z "$config" ] || install -D -m644 "$config" "$tree/etc/initrd-helper/config.toml"
# ldd_in ROOT BIN: the libraries BIN loads, as paths inside ROOT.
ldd_in() {
  if [ "$1" = / ]; then ldd "$2"; else chroot "$1" ldd "$2"; fi |
    awk '/=> \// { print $3 } /^\t\/[^ ]*ld-linux/ { print $1 }'
}
mke2fs=$(cd "$root" && for p in usr/sbin/mke2fs sbin/mke2fs; do [ -x "$p" ] && { echo "/$p"; break; }; done)
[ -n "$mke2fs" ] || die "no mke2fs in $root"
install -D -m755 "$root$mke2fs" "$tree/usr/sbin/mke2fs"
ln -s mke2fs "$tree/usr/sbin/mkfs.ext4"
for l in $(ldd_in "$root" "$mke2fs"); do install -D -m755 "$root$l" "$tree$l"; done
[ ! -e "$root/etc/mke2fs.conf" ] || install -D -m644 "$root/etc/mke2fs.conf" "$tree/etc/mke2fs.conf"

# ---- the rest of a root for PID 1 -------------------------------------------
mkdir -p "$tree"/{dev,proc,sys,run,sysroot,tmp}
# The kernel opens /dev/console for /init before any devtmpfs exists.
mknod -m 600 "$tree/dev/console" c 5 1
mknod -m 666 "$tree/dev/null" c 1 3
# systemd and the helper read the initrd's identity here.
printf 'ID=initrd-helper\nNAME="initrd-helper PID-1 initrd"\n' > "$tree/etc/initrd-release"
(cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
  zstd -q -19 -T0 > "$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitrd.sh: $out: $(wc -l < "$tree/etc/initrd-helper/modules.list") modules, $(du -sb "$tree" | cut -f1) bytes raw, $(stat -c %s "$out") compressed" >&2
