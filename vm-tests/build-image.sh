#!/bin/bash
# Builds (and caches, keyed by inputs) everything a VM boot needs:
#   kernel   Debian bookworm's kernel, extracted (vmlinuz + modules)
#   rootfs   a bookworm guest root from mmdebstrap, with the test probe unit
#   disk     a GPT disk image in the design's layout (see README "Disk layout")
#   usr disk the hermetic-/usr image (tmpfs-root layout), A/B erofs + verity
#   initrd   a dracut initrd built inside the guest root with our module
#            (and a copy with the tmpfs-layout config appended)
# Usage: build-image.sh HELPER_BINARY   -> prints the artifacts directory.
set -euo pipefail
# Only the final path goes to stdout; every tool's chatter goes to stderr.
exec 3>&1 1>&2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${IH_CACHE:-$top/.cache}/vm
helper=$(realpath "$1")
mkdir -p "$cache"
log() { echo "build-image: $*" >&2; }
digest() { cat "$@" | sha256sum | cut -c1-16; }

SUITE=bookworm
# The guest root: systemd in both stages, dracut to build the initrd in place,
# and the tools tests inspect the guest with.
GUEST_PKGS=systemd,systemd-sysv,udev,kmod,dracut-core,e2fsprogs,util-linux,cryptsetup-bin,cryptsetup,procps,fdisk,dmsetup,libtss2-esys-3.0.2-0,libtss2-mu0,libtss2-rc0,libtss2-tcti-device0
# Kernel modules the guest never needs; dropped to keep the root small.
PRUNE_MODULES="drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging sound drivers/bluetooth net/wireless drivers/iio drivers/hid drivers/input/touchscreen drivers/scsi/qla2xxx drivers/scsi/lpfc"

# ---- kernel ---------------------------------------------------------------
kernel_pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
kver=${kernel_pkg#linux-image-}
kdir="$cache/kernel-$kver"
if [ ! -e "$kdir/done" ]; then
  log "kernel $kernel_pkg"
  rm -rf "$kdir"; mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get download -qq "$kernel_pkg")
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/x"
  for p in $PRUNE_MODULES; do rm -rf "$kdir/x/lib/modules/$kver/kernel/$p"; done
  touch "$kdir/done"
fi

# ---- guest root -------------------------------------------------------------
rootkey=$(echo "$SUITE $GUEST_PKGS $kver" | cat - "$0" "$here"/guest/* | sha256sum | cut -c1-16)
rootfs="$cache/rootfs-$rootkey"
if [ ! -e "$rootfs.done" ]; then
  log "guest root ($SUITE, mmdebstrap)"
  rm -rf "$rootfs"; mkdir -p "$rootfs"
  mmdebstrap --quiet --variant=minbase --include="$GUEST_PKGS" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info}/*' \
    "$SUITE" "$rootfs" >&2
  cp -a "$kdir/x/lib/modules" "$rootfs/usr/lib/"
  chroot "$rootfs" depmod "$kver"
  install -m644 "$here/guest/fstab" "$rootfs/etc/fstab"
  install -m755 "$here/guest/ih-report" "$rootfs/usr/local/sbin/ih-report"
  install -m644 "$here/guest/ih-report.service" "$rootfs/etc/systemd/system/"
  ln -sf /etc/systemd/system/ih-report.service "$rootfs/etc/systemd/system/multi-user.target.wants/"
  # The helper writes /etc/machine-id on every boot; the image ships none.
  rm -f "$rootfs/etc/machine-id" "$rootfs/var/lib/dbus/machine-id"
  echo appliance > "$rootfs/etc/hostname"
  chroot "$rootfs" passwd -qd root
  # Demo: log in on the serial console without a password.
  mkdir -p "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d"
  printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I $TERM\n' \
    > "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
  # Timers that want a writable /var/lib and do nothing useful in a test guest.
  for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$u"
  done
  touch "$rootfs.done"
fi

# ---- disk image (depends on the root only, not on the helper) ---------------
# Two image versions, the way an A/B updater (systemd-sysupdate) leaves them:
#   root-A + root-A-verity: version 1, labels appliance_1
#   root-B + root-B-verity: version 2, labels appliance_2 (IMAGE_VERSION=2 in os-release)
# Each slot's partition UUIDs derive from its dm-verity root hash (DPS): the
# first 128 bits name the data partition, the last 128 bits the hash partition.
# Root slots carry the DPS read-only flag (GPT attribute bit 60): without it
# stage-2 systemd-gpt-auto-generator remounts the root read-write.
# Layout (MiB): ESP 32 | root-A | root-A-verity 32 | root-B | root-B-verity 32 | data 64
diskkey=$(echo "$rootkey v3" | sha256sum | cut -c1-16)
disk="$cache/disk-$diskkey.img"

as_uuid() { echo "${1:0:8}-${1:8:4}-${1:12:4}-${1:16:4}-${1:20:12}"; }

# build_slot VERSION DIR: ext4 + verity images; prints the root hash.
build_slot() {
  local v=$1 dir=$2 osr="$rootfs/usr/lib/os-release"
  sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d' "$osr"
  printf 'IMAGE_ID=appliance\nIMAGE_VERSION=%s\n' "$v" >> "$osr"
  # A read-only root needs no journal (and so never replays one).
  mkfs.ext4 -q -O ^has_journal -L "root-$v" -U random -d "$rootfs" "$dir/root-$v.img" "${root_mib}M" >&2
  veritysetup format "$dir/root-$v.img" "$dir/verity-$v.img" | sed -n 's/^Root hash:[[:space:]]*//p'
}

# place IMAGE PARTITION-INDEX (0-based): into $tmp/disk.img, per $tmp/layout.json.
place() {
  local start
  start=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitiontable"]["partitions"][int(sys.argv[2])]["start"])' "$tmp/layout.json" "$2")
  dd if="$1" of="$tmp/disk.img" bs=512 seek="$start" conv=notrunc,sparse status=none
}

if [ ! -e "$disk" ]; then
  log "disk image"
  used=$(du -sm --exclude=./proc "$rootfs" | cut -f1)
  root_mib=$(( (used * 13 / 10 + 64 + 63) / 64 * 64 ))
  verity_mib=32
  tmp="$cache/build-$diskkey"; rm -rf "$tmp"; mkdir -p "$tmp"
  hash_a=$(build_slot 1 "$tmp"); hash_b=$(build_slot 2 "$tmp")
  sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d' "$rootfs/usr/lib/os-release"
  [ ${#hash_a} = 64 ] && [ ${#hash_b} = 64 ] || { log "veritysetup gave no root hash"; exit 1; }
  total=$(( 1 + 32 + 2 * (root_mib + verity_mib) + 64 + 1 ))
  truncate -s "${total}M" "$tmp/disk.img"
  root_t=4f68bce3-e8cd-4db1-96e7-fbcaf984b709 verity_t=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5
  sfdisk -q --no-reread --no-tell-kernel "$tmp/disk.img" <<SFDISK
label: gpt
unit: sectors
first-lba: 2048
size=32MiB, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, name="esp"
size=${root_mib}MiB, type=$root_t, name="appliance_1", attrs="GUID:60", uuid=$(as_uuid "${hash_a:0:32}")
size=${verity_mib}MiB, type=$verity_t, name="appliance_1", uuid=$(as_uuid "${hash_a:32:32}")
size=${root_mib}MiB, type=$root_t, name="appliance_2", attrs="GUID:60", uuid=$(as_uuid "${hash_b:0:32}")
size=${verity_mib}MiB, type=$verity_t, name="appliance_2", uuid=$(as_uuid "${hash_b:32:32}")
size=64MiB, type=4d21b016-b534-45c2-a9fb-5c16e091fd2d, name="data"
SFDISK
  sfdisk -J "$tmp/disk.img" > "$tmp/layout.json"
  place "$tmp/root-1.img" 1; place "$tmp/verity-1.img" 2
  place "$tmp/root-2.img" 3; place "$tmp/verity-2.img" 4
  echo "$hash_a" > "$disk.roothash-a"; echo "$hash_b" > "$disk.roothash-b"
  mv "$tmp/layout.json" "$disk.layout.json"
  mv "$tmp/disk.img" "$disk"; rm -rf "$tmp"
fi

# ---- usr disk: hermetic /usr A/B for the tmpfs-root layout ------------------
# The image has no /etc: the guest's /etc is its factory copy in
# /usr/share/factory/etc. Each usr slot is erofs (lz4hc) with its verity
# partner; UUIDs derive from the usrhash as for root. No root partition.
# Layout (MiB): ESP 32 | usr-A | usr-A-verity | usr-B | usr-B-verity | data 64
usrkey=$(echo "$rootkey usr v1" | sha256sum | cut -c1-16)
usrdisk="$cache/usrdisk-$usrkey.img"
usr_t=8484680c-9521-48c6-9c11-b0720656f69e usr_verity_t=77ff5f63-e7b6-4633-acf4-1565b864c0e6
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
# build_usr VERSION DIR: erofs + verity images of DIR/tree; prints the hash.
build_usr() {
  local v=$1 dir=$2 osr="$2/tree/lib/os-release"
  sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d' "$osr"
  printf 'IMAGE_ID=appliance\nIMAGE_VERSION=%s\n' "$v" >> "$osr"
  mkfs.erofs --quiet -zlz4hc -T 0 -U "00000000-0000-4000-8000-00000000000$v" "$dir/usr-$v.img" "$dir/tree" >&2
  veritysetup format "$dir/usr-$v.img" "$dir/usr-verity-$v.img" | sed -n 's/^Root hash:[[:space:]]*//p'
}
if [ ! -e "$usrdisk" ]; then
  log "usr disk image"
  tmp="$cache/build-usr-$usrkey"; rm -rf "$tmp"; mkdir -p "$tmp"
  cp -a --reflink=auto "$rootfs/usr" "$tmp/tree"
  mkdir -p "$tmp/tree/share/factory"
  cp -a "$rootfs/etc" "$tmp/tree/share/factory/etc"
  uhash_a=$(build_usr 1 "$tmp"); uhash_b=$(build_usr 2 "$tmp")
  [ ${#uhash_a} = 64 ] && [ ${#uhash_b} = 64 ] || { log "veritysetup gave no usr hash"; exit 1; }
  usr_mib=$(mib "$tmp/usr-2.img"); [ "$(mib "$tmp/usr-1.img")" -le "$usr_mib" ] || usr_mib=$(mib "$tmp/usr-1.img")
  uv_mib=$(( $(mib "$tmp/usr-verity-1.img") + 1 ))
  truncate -s "$(( 1 + 32 + 2 * (usr_mib + uv_mib) + 64 + 1 ))M" "$tmp/disk.img"
  sfdisk -q --no-reread --no-tell-kernel "$tmp/disk.img" <<SFDISK
label: gpt
unit: sectors
first-lba: 2048
size=32MiB, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, name="esp"
size=${usr_mib}MiB, type=$usr_t, name="appliance_1", attrs="GUID:60", uuid=$(as_uuid "${uhash_a:0:32}")
size=${uv_mib}MiB, type=$usr_verity_t, name="appliance_1", uuid=$(as_uuid "${uhash_a:32:32}")
size=${usr_mib}MiB, type=$usr_t, name="appliance_2", attrs="GUID:60", uuid=$(as_uuid "${uhash_b:0:32}")
size=${uv_mib}MiB, type=$usr_verity_t, name="appliance_2", uuid=$(as_uuid "${uhash_b:32:32}")
size=64MiB, type=4d21b016-b534-45c2-a9fb-5c16e091fd2d, name="data"
SFDISK
  sfdisk -J "$tmp/disk.img" > "$tmp/layout.json"
  place "$tmp/usr-1.img" 1; place "$tmp/usr-verity-1.img" 2
  place "$tmp/usr-2.img" 3; place "$tmp/usr-verity-2.img" 4
  echo "$uhash_a" > "$usrdisk.usrhash-a"; echo "$uhash_b" > "$usrdisk.usrhash-b"
  mv "$tmp/disk.img" "$usrdisk"; rm -rf "$tmp"
fi

# ---- initrd (depends on the root, the helper, the module, units, config) ----
modsrc="$top/dracut-like-modules/dracut/90initrd-helper"
config="$here/config/initrd-helper.toml"
initkey=$(digest "$helper" "$modsrc"/* "$top"/units/* "$config" <(echo "$rootkey"))
initrd="$cache/initrd-$initkey.img"
if [ ! -e "$initrd" ]; then
  log "initrd (dracut)"
  stage="$rootfs/usr/lib/initrd-helper"
  rm -rf "$stage" "$rootfs/usr/lib/dracut/modules.d/90initrd-helper"
  install -D -m755 "$helper" "$stage/initrd-helper"
  cp -a "$top/units" "$stage/units"
  install -D -m644 "$config" "$rootfs/etc/initrd-helper/config.toml"
  cp -a "$modsrc" "$rootfs/usr/lib/dracut/modules.d/"
  mount -t proc proc "$rootfs/proc"; mount --bind /dev "$rootfs/dev"
  trap 'umount "$rootfs/proc" "$rootfs/dev" 2>/dev/null || true' EXIT
  chroot "$rootfs" dracut --quiet --force --no-hostonly --no-hostonly-cmdline \
    --no-early-microcode --reproducible --compress=cat --kver "$kver" \
    --modules "systemd-initrd initrd-helper" /tmp/initrd.img >&2
  umount "$rootfs/proc" "$rootfs/dev"; trap - EXIT
  mv "$rootfs/tmp/initrd.img" "$initrd"
  # Leave the cached root as the disk image saw it.
  rm -rf "$stage" "$rootfs/etc/initrd-helper" "$rootfs/usr/lib/dracut/modules.d/90initrd-helper"
fi

# The same initrd with the tmpfs-layout config appended as a second cpio
# archive (the kernel unpacks both; the later config.toml wins).
usrinitrd="${initrd%.img}.usr.img"
if [ ! -e "$usrinitrd" ] || [ "$here/config/usr.toml" -nt "$usrinitrd" ]; then
  tmp="$cache/build-usr-initrd"; rm -rf "$tmp"; mkdir -p "$tmp/etc/initrd-helper"
  install -m644 "$here/config/usr.toml" "$tmp/etc/initrd-helper/config.toml"
  (cd "$tmp" && find etc | sort | cpio -o -H newc -R 0:0 --quiet) > "$tmp/extra.cpio"
  cat "$initrd" "$tmp/extra.cpio" > "$usrinitrd.tmp"
  mv "$usrinitrd.tmp" "$usrinitrd"; rm -rf "$tmp"
fi

# Drop superseded builds (other keys) so the cache does not grow per change.
for old in "$cache"/rootfs-* "$cache"/disk-*.img* "$cache"/usrdisk-*.img* "$cache"/initrd-*.img; do
  case "$old" in "$rootfs"|"$rootfs.done"|"$disk"*|"$usrdisk"*|"$initrd"|"$usrinitrd") ;; *) rm -rf "$old" ;; esac
done

out="$cache/current"
mkdir -p "$out"
ln -sf "$kdir/x/boot/vmlinuz-$kver" "$out/vmlinuz"
ln -sf "$initrd" "$out/initrd.img"
ln -sf "$disk" "$out/disk.img"
for f in roothash-a roothash-b layout.json; do ln -sf "$disk.$f" "$out/$f"; done
ln -sf "$usrdisk" "$out/usr-disk.img"
ln -sf "$usrinitrd" "$out/initrd-usr.img"
for f in usrhash-a usrhash-b; do ln -sf "$usrdisk.$f" "$out/$f"; done
echo "$out" >&3
