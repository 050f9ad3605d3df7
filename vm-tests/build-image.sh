#!/bin/bash
# Builds (and caches, keyed by inputs) everything a VM boot needs:
#   kernel   Debian bookworm's kernel, extracted (vmlinuz + modules)
#   rootfs   a bookworm guest root from mmdebstrap, with the test probe unit
#   disk     a GPT disk image in the design's layout (see README "Disk layout")
#   usr disk the hermetic-/usr image (tmpfs-root layout), A/B erofs + verity
#   repart disk the same /usr laid out by systemd-repart 257 (repart.d)
#   mkosi initrd trixie's systemd initrd built by mkosi-initrd with our drop-in
#   initrd   a dracut initrd built inside the guest root with our module
#            (and one per layout config, with it appended)
#   UKIs     that initrd, the kernel and roothash= of slot A or B in a
#            signed-PCR-11 UKI (ukify 257, systemd-stub 257)
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
# shellcheck source=vm-tests/lib.sh
. "$here/lib.sh"

SUITE=bookworm
# The guest root: systemd in both stages, dracut to build the initrd in place,
# and the tools tests inspect the guest with.
GUEST_PKGS=systemd,systemd-sysv,systemd-boot,udev,kmod,dracut-core,e2fsprogs,util-linux,cryptsetup-bin,cryptsetup,procps,fdisk,dmsetup,libtss2-esys-3.0.2-0,libtss2-mu0,libtss2-rc0,libtss2-tcti-device0
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

# ---- tools root: trixie's systemd-repart 257 and mkosi 25 -------------------
# Bookworm's systemd-repart (252) cannot build these images offline and its
# mkosi (14) predates mkosi-initrd (repart-notes.md): both run in a trixie
# root made by mmdebstrap, never installed on the host.
# ukify, systemd-measure (which computes PolicyPCR digests with libtss2) and
# the 257 stub build the UKIs: stub and tools of one version (uki-notes.md).
TOOLS_PKGS=systemd-repart,erofs-utils,dosfstools,mtools,cryptsetup-bin,mkosi,kmod,zstd,systemd-ukify,systemd-boot-efi,openssl,libtss2-esys-3.0.2-0t64,libtss2-rc0t64,libtss2-mu-4.0.1-0t64
repartroot="$cache/tools-root-$(echo "trixie $TOOLS_PKGS" | sha256sum | cut -c1-16)"
if [ ! -e "$repartroot.done" ]; then
  log "tools root (trixie, mmdebstrap)"
  rm -rf "$repartroot"
  mmdebstrap --quiet --variant=minbase --include="$TOOLS_PKGS" trixie "$repartroot" >&2
  # mkosi-initrd installs from the root's own apt lists (--cache-only=metadata).
  cp /etc/resolv.conf "$repartroot/etc/resolv.conf"
  chroot "$repartroot" apt-get update -qq >&2
  touch "$repartroot.done"
fi
# in_tools CMD...: runs CMD in the tools root, in a private mount namespace
# (its /proc, /dev and /sys go away with it; the root is bind-mounted onto
# itself because mkosi's sandbox needs / to be a mount point).
in_tools() {
  unshare --mount --propagation private sh -c 'r=$1; shift
    mount --bind "$r" "$r" && mount -t proc proc "$r/proc" && mount --bind /dev "$r/dev" &&
      mount -t sysfs sys "$r/sys" && exec chroot "$r" "$@"' sh "$repartroot" "$@"
}

# install_sysupdate ROOT: A/B updates in the guest by Debian's
# systemd-sysupdate, which only trixie (257) ships: its binaries with their
# library closure and loader from the tools root (guest/systemd-sysupdate
# runs them), and the transfers (guest/sysupdate-*.transfer).
install_sysupdate() {
  local r=$1 d="$1/usr/local/lib/sysupdate-257" bins="/usr/lib/systemd/systemd-sysupdate /usr/lib/systemd/systemd-import"
  mkdir -p "$d/bin" "$r/usr/lib/sysupdate.d"
  for b in $bins; do cp "$repartroot$b" "$d/bin/"; done
  # ldd's "name => path" lines and the loader's own line.
  libs=$(chroot "$repartroot" ldd $bins | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u)
  [ -n "$libs" ] || { log "ldd found no libraries for systemd-sysupdate"; exit 1; }
  for l in $libs; do cp -L "$repartroot$l" "$d/"; done
  [ -x "$d/ld-linux-x86-64.so.2" ] || { log "no dynamic loader for systemd-sysupdate"; exit 1; }
  install -m755 "$here/guest/systemd-sysupdate" "$r/usr/local/sbin/systemd-sysupdate"
  install -m755 "$here/guest/sysupdate-import" "$d/systemd-import"
  for t in "$here"/guest/sysupdate-*.transfer; do
    install -m644 "$t" "$r/usr/lib/sysupdate.d/${t##*/sysupdate-}"
  done
  "$d/ld-linux-x86-64.so.2" --library-path "$d" "$d/bin/systemd-sysupdate" --version | head -1 >&2
}

# ---- guest root -------------------------------------------------------------
# Keyed by its inputs, not by this whole script (an edit elsewhere must not
# rebuild it): bump the tag when the steps of this section change.
rootkey=$(echo "rootfs v4 $SUITE $GUEST_PKGS $kver $PRUNE_MODULES $repartroot" | cat - "$here"/guest/* | sha256sum | cut -c1-16)
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
  install_sysupdate "$rootfs"
  chroot "$rootfs" passwd -qd root
  # Demo: log in on the serial console without a password.
  mkdir -p "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d"
  printf '[Service]\nExecStart=\nExecStart=-/sbin/agetty --autologin root --keep-baud 115200 %%I $TERM\n' \
    > "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
  # Only the interactive demo wants a login; a test boot (ih_test.poweroff)
  # would spend its report's CPU on the autologin shell.
  printf '[Unit]\nConditionKernelCommandLine=!ih_test.poweroff\n' \
    >> "$rootfs/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
  install -m644 "$here/guest/modprobe-ih-test.conf" "$rootfs/etc/modprobe.d/ih-test.conf"
  # Timers that want a writable /var/lib and do nothing useful in a test
  # guest; VT gettys on a machine with no display (getty-static alone took
  # 15 s of every TCG boot, racing the report).
  for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    getty-static.service getty@tty1.service; do
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
diskkey=$(echo "$rootkey disk v4" | sha256sum | cut -c1-16)
disk="$cache/disk-$diskkey.img"

as_uuid() { echo "${1:0:8}-${1:8:4}-${1:12:4}-${1:16:4}-${1:20:12}"; }

# build_slot VERSION DIR: ext4 + verity images; prints the root hash.
build_slot() {
  local v=$1 dir=$2 osr="$rootfs/usr/lib/os-release"
  sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d' "$osr"
  printf 'IMAGE_ID=appliance\nIMAGE_VERSION=%s\n' "$v" >> "$osr"
  # A read-only root needs no journal (and so never replays one).
  mkfs.ext4 -q -O ^has_journal -L "root-$v" -U random -d "$rootfs" "$dir/root-$v.img" "${root_mib}M" >&2
  veritysetup format "$dir/root-$v.img" "$dir/root-verity-$v.img" | sed -n 's/^Root hash:[[:space:]]*//p'
}

# place IMAGE PARTITION-INDEX (0-based): into $tmp/disk.img, per $tmp/layout.json.
place() {
  local start
  start=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitiontable"]["partitions"][int(sys.argv[2])]["start"])' "$tmp/layout.json" "$2")
  dd if="$1" of="$tmp/disk.img" bs=512 seek="$start" conv=notrunc,sparse status=none
}

# ab_disk DATA_TYPE HASH_TYPE SLOT_MIB HASH_MIB HASH_A HASH_B NAME [ESP_MIB]:
# the A/B disk in $tmp/disk.img (and $tmp/layout.json), slot images from
# $tmp/NAME-{1,2}.img and their trees from $tmp/NAME-verity-{1,2}.img.
# HASH_B "-": slot B is free ("_empty", zeros, random UUIDs, read-only flag).
# Layout (MiB): ESP 32 (or ESP_MIB) | A | A-verity | B | B-verity | data 64
ab_disk() {
  local t=$1 vt=$2 mib=$3 vmib=$4 ha=$5 hb=$6 n=$7 esp_mib=${8:-32} b bv
  if [ "$hb" = - ]; then
    b='name="_empty", attrs="GUID:60"'; bv='name="_empty"'
  else
    b="name=\"appliance_2\", attrs=\"GUID:60\", uuid=$(as_uuid "${hb:0:32}")"
    bv="name=\"appliance_2\", uuid=$(as_uuid "${hb:32:32}")"
  fi
  truncate -s "$(( 1 + esp_mib + 2 * (mib + vmib) + 64 + 1 ))M" "$tmp/disk.img"
  sfdisk -q --no-reread --no-tell-kernel "$tmp/disk.img" <<SFDISK
label: gpt
unit: sectors
first-lba: 2048
size=${esp_mib}MiB, type=c12a7328-f81f-11d2-ba4b-00a0c93ec93b, name="esp"
size=${mib}MiB, type=$t, name="appliance_1", attrs="GUID:60", uuid=$(as_uuid "${ha:0:32}")
size=${vmib}MiB, type=$vt, name="appliance_1", uuid=$(as_uuid "${ha:32:32}")
size=${mib}MiB, type=$t, $b
size=${vmib}MiB, type=$vt, $bv
size=64MiB, type=4d21b016-b534-45c2-a9fb-5c16e091fd2d, name="data"
SFDISK
  sfdisk -J "$tmp/disk.img" > "$tmp/layout.json"
  place "$tmp/$n-1.img" 1; place "$tmp/$n-verity-1.img" 2
  [ "$hb" = - ] || { place "$tmp/$n-2.img" 3; place "$tmp/$n-verity-2.img" 4; }
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
  ab_disk 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 \
    "$root_mib" "$verity_mib" "$hash_a" "$hash_b" root
  echo "$hash_a" > "$disk.roothash-a"; echo "$hash_b" > "$disk.roothash-b"
  mv "$tmp/layout.json" "$disk.layout.json"
  mv "$tmp/disk.img" "$disk"; rm -rf "$tmp"
fi

# ---- usr disk: hermetic /usr A/B for the tmpfs-root layout ------------------
# The image has no /etc: the guest's /etc is its factory copy in
# /usr/share/factory/etc. Slot A is erofs (lz4hc), slot B squashfs (gzip),
# each with its verity partner; UUIDs derive from the usrhash as for root.
# No root partition.
usrkey=$(echo "$rootkey usr v2" | sha256sum | cut -c1-16)
usrdisk="$cache/usrdisk-$usrkey.img"
mib() { echo $(( ($(stat -c %s "$1") + 1048575) / 1048576 )); }
# build_usr VERSION DIR: erofs (1) or squashfs (2) + verity images of
# DIR/tree; prints the hash.
build_usr() {
  local v=$1 dir=$2 osr="$2/tree/lib/os-release"
  sed -i '/^IMAGE_ID=/d; /^IMAGE_VERSION=/d' "$osr"
  printf 'IMAGE_ID=appliance\nIMAGE_VERSION=%s\n' "$v" >> "$osr"
  if [ "$v" = 1 ]; then
    mkfs.erofs --quiet -zlz4hc -T 0 -U "00000000-0000-4000-8000-00000000000$v" "$dir/usr-$v.img" "$dir/tree" >&2
  else
    mksquashfs "$dir/tree" "$dir/usr-$v.img" -comp gzip -noappend -quiet -mkfs-time 0 -all-time 0 >&2
  fi
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
  ab_disk 8484680c-9521-48c6-9c11-b0720656f69e 77ff5f63-e7b6-4633-acf4-1565b864c0e6 \
    "$usr_mib" "$uv_mib" "$uhash_a" "$uhash_b" usr
  echo "$uhash_a" > "$usrdisk.usrhash-a"; echo "$uhash_b" > "$usrdisk.usrhash-b"
  mv "$tmp/disk.img" "$usrdisk"; rm -rf "$tmp"
fi

# ---- repart disk: the hermetic-/usr image laid out by systemd-repart --------
# Made entirely by systemd-repart 257 from vm-tests/repart.d (ESP; usr A +
# usr-verity with Verity=/VerityMatchKey=, erofs; an _empty B pair; a blank
# data partition), offline and reproducibly (fixed --seed, SOURCE_DATE_EPOCH).
repartkey=$(digest "$here"/repart.d/* <(echo "$rootkey $repartroot repart v1"))
repartdisk="$cache/repartdisk-$repartkey.img"
if [ ! -e "$repartdisk" ]; then
  log "repart disk image (systemd-repart $(chroot "$repartroot" systemd-repart --version | head -1))"
  work="$repartroot/work"; rm -rf "$work"; mkdir -p "$work/src" "$work/defs"
  cp -a --reflink=auto "$rootfs/usr" "$work/src/usr"
  mkdir -p "$work/src/usr/share/factory"
  cp -a "$rootfs/etc" "$work/src/usr/share/factory/etc"
  printf 'IMAGE_ID=appliance\nIMAGE_VERSION=1\n' >> "$work/src/usr/lib/os-release"
  cp "$here"/repart.d/*.conf "$work/defs/"
  # The ESP gets 512-byte sectors (repart-notes.md).
  in_tools env SOURCE_DATE_EPOCH=0 SYSTEMD_REPART_MKFS_OPTIONS_VFAT="-S 512" \
    systemd-repart --empty=create --size=auto --offline=yes --definitions=/work/defs \
      --copy-source=/work/src --seed=5f3e1c2a-8d4b-4e6f-9a0b-1c2d3e4f5a6b \
      --dry-run=no --json=short /work/disk.img \
    > "$work/repart.json" 2> "$work/repart.log" || { tail -20 "$work/repart.log" >&2; exit 1; }
  # usrhash= is the usr partition's "roothash" in repart's JSON.
  uhash=$(python3 -c 'import json,sys; print(next(p["roothash"] for p in json.load(open(sys.argv[1])) if p["type"] == "usr-x86-64" and p.get("roothash")))' "$work/repart.json")
  [ ${#uhash} = 64 ] || { log "systemd-repart gave no usr root hash"; exit 1; }
  echo "$uhash" > "$repartdisk.usrhash-a"
  mv "$work/disk.img" "$repartdisk"; rm -rf "$work"
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
  dracut_in_root "$rootfs" "$kver" initrd-helper
  mv "$rootfs/tmp/initrd.img" "$initrd"
  # Leave the cached root as the disk image saw it.
  rm -rf "$stage" "$rootfs/etc/initrd-helper" "$rootfs/usr/lib/dracut/modules.d/90initrd-helper"
fi

# The same initrd with another layout's config (vm-tests/config/layout-NAME.toml)
# appended as a second cpio archive: the kernel unpacks both, the later
# config.toml wins. -> initrd-KEY.NAME.img
layout_initrds=()
for conf in "$here"/config/layout-*.toml; do
  name=${conf##*/layout-}; name=${name%.toml}
  extra="${initrd%.img}.$name.$(digest "$conf").img"
  layout_initrds+=("$extra")
  [ -e "$extra" ] && continue
  tmp="$cache/build-initrd-$name"; rm -rf "$tmp"; mkdir -p "$tmp/etc/initrd-helper"
  install -m644 "$conf" "$tmp/etc/initrd-helper/config.toml"
  (cd "$tmp" && find etc | sort | cpio -o -H newc -R 0:0 --quiet) > "$tmp/extra.cpio"
  cat "$initrd" "$tmp/extra.cpio" > "$extra.tmp"
  mv "$extra.tmp" "$extra"; rm -rf "$tmp"
done

# ---- PID-1 initrd: the helper as /init (dracut-like-modules/pid1) ----------
# No systemd, no udev: dracut-like-modules/pid1/mkinitrd.sh with the guest
# kernel's modules and the guest root's mkfs.ext4, and the dracut initrd's
# config.
pid1src="$top/dracut-like-modules/pid1/mkinitrd.sh"
pid1key=$(digest "$helper" "$pid1src" "$config" <(echo "$rootkey pid1 v1"))
pid1initrd="$cache/initrd-pid1-$pid1key.img"
if [ ! -e "$pid1initrd" ]; then
  log "initrd (PID 1)"
  "$pid1src" --kver "$kver" --helper "$helper" --config "$config" --root "$rootfs" \
    --moddir "$rootfs/usr/lib/modules" --out "$pid1initrd"
fi

# ---- mkosi initrd: mkosi-initrd (25) with our drop-in ------------------------
# dracut-like-modules/mkosi/install.sh puts the drop-in into the tools root's
# /etc/mkosi-initrd; mkosi-initrd builds trixie's systemd initrd with it for
# the guest kernel (its modules copied in and depmod'ed), with the tmpfs
# layout's config.
mkosidir="$top/dracut-like-modules/mkosi"
mkosikey=$(digest "$helper" "$mkosidir"/* "$top"/units/* "$here/config/layout-tmpfs.toml" \
  <(echo "$repartroot $kver mkosi v1"))
mkosiinitrd="$cache/initrd-mkosi-$mkosikey.img"
if [ ! -e "$mkosiinitrd" ]; then
  log "initrd (mkosi-initrd $(chroot "$repartroot" mkosi --version))"
  rm -rf "$repartroot/etc/mkosi-initrd" "$repartroot/usr/lib/modules" "$repartroot/work"
  "$mkosidir/install.sh" "$repartroot/etc/mkosi-initrd" "$helper" "$here/config/layout-tmpfs.toml"
  mkdir -p "$repartroot/usr/lib/modules" "$repartroot/usr/lib/firmware" "$repartroot/work"
  cp -a "$kdir/x/lib/modules/$kver" "$repartroot/usr/lib/modules/"
  chroot "$repartroot" depmod "$kver"
  in_tools mkosi-initrd --kernel-version "$kver" -t cpio -o initrd -O /work \
    > "$repartroot/work/mkosi.log" 2>&1 || { tail -30 "$repartroot/work/mkosi.log" >&2; exit 1; }
  mv "$repartroot/work/initrd" "$mkosiinitrd"
  rm -rf "$repartroot/work" "$repartroot/usr/lib/modules" "$repartroot/etc/mkosi-initrd"
fi

# ---- UKIs: kernel + dracut initrd + command line, PCR 11 signed ------------
# Two UKIs, one per root slot (roothash= and IMAGE_VERSION in each), both
# signed for the boot phases by one PCR key (made once per cache, like a
# vendor's key): the A/B pair an update moves between. ukify --measure's
# PCR 11 predictions are kept beside each (uki-X.efi.pcr11: "PHASE HASH").
# A failed initrd reboots (dracut: rd.shell=0 rd.emergency=reboot), so boot
# counting gets its next try, and nobody gets a root shell.
pcrkey="$cache/pcr-key"
if [ ! -e "$pcrkey/done" ]; then
  rm -rf "$pcrkey" "$repartroot/work"; mkdir -p "$pcrkey" "$repartroot/work"
  in_tools openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out /work/priv.pem 2>/dev/null
  in_tools openssl pkey -in /work/priv.pem -pubout -out /work/pub.pem
  mv "$repartroot/work/priv.pem" "$repartroot/work/pub.pem" "$pcrkey/"; rm -rf "$repartroot/work"
  touch "$pcrkey/done"
fi
ukikey=$(digest "$initrd" "$kdir/x/boot/vmlinuz-$kver" "$pcrkey/pub.pem" "$disk.roothash-a" "$disk.roothash-b" \
  <(echo "$repartroot uki v2"))
ukis=()
for slot in a b; do
  uki="$cache/uki-$ukikey-$slot.efi"
  ukis+=("$uki" "$uki.pcr11")
  [ -e "$uki.pcr11" ] && continue
  log "UKI $slot ($(chroot "$repartroot" ukify --version))"
  w="$repartroot/work"; rm -rf "$w"; mkdir -p "$w"
  cp "$kdir/x/boot/vmlinuz-$kver" "$w/vmlinuz"; cp "$initrd" "$w/initrd"
  cp "$pcrkey/priv.pem" "$pcrkey/pub.pem" "$w/"
  v=$([ $slot = a ] && echo 1 || echo 2)
  printf 'ID=appliance\nNAME=Appliance\nIMAGE_ID=appliance\nIMAGE_VERSION=%s\n' "$v" > "$w/os-release"
  in_tools ukify build --linux=/work/vmlinuz --initrd=/work/initrd --uname="$kver" \
    --cmdline="console=ttyS0 panic=-1 rd.shell=0 rd.emergency=reboot ih_test.poweroff ih_test.write=uki-$slot roothash=$(cat "$disk.roothash-$slot")" \
    --os-release=@/work/os-release --pcr-private-key=/work/priv.pem --pcr-public-key=/work/pub.pem \
    --measure --output=/work/uki.efi > "$w/ukify.log" 2>&1 || { tail -20 "$w/ukify.log" >&2; exit 1; }
  # "# PCR[11] Phase <enter-initrd>" then "11:sha256=HEX": one "PHASE HEX" line each.
  awk '/^# PCR\[11\] Phase/ { p = $4; gsub(/[<>]/, "", p) } /^11:sha256=/ { sub(/^11:sha256=/, ""); print p, $0 }' \
    "$w/ukify.log" > "$w/pcr11"
  [ "$(wc -l < "$w/pcr11")" = 4 ] || { log "ukify printed no PCR 11 predictions"; cat "$w/ukify.log" >&2; exit 1; }
  mv "$w/uki.efi" "$uki"; mv "$w/pcr11" "$uki.pcr11"; rm -rf "$w"
done

# ---- A/B update by systemd-sysupdate: boot disk, ESP, update payload ------
# The factory state an update starts from: a 192 MiB ESP (two UKIs fit),
# root slot A (version 1, as on the disk image) and a free slot B labelled
# "_empty" (zeros, fresh random UUIDs) for systemd-sysupdate to fill, and the
# blank data partition. The ESP (esp-KEY.img, written into partition 1 by
# the test) holds systemd-boot 257 and UKI A as \EFI\Linux\appliance_1.efi;
# the payload directory is version 2 as a vendor ships it: slot B's root and
# verity images named by their partition UUIDs, and UKI B.
# sectors_of IMG INDEX: "START SIZE" of partition INDEX (0-based) of IMG.
sectors_of() {
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["partitiontable"]["partitions"][int(sys.argv[2])]; print(p["start"], p["size"])' "$1.layout.json" "$2"
}
# extract IMG INDEX OUT: partition INDEX of IMG as the file OUT (sparse).
extract() {
  local ss; read -r -a ss < <(sectors_of "$1" "$2")
  dd if="$1" of="$3" bs=512 skip="${ss[0]}" count="${ss[1]}" conv=sparse status=none
}
updkey=$(echo "$diskkey sysupdate disk v2" | sha256sum | cut -c1-16)
upddisk="$cache/sysupdate-disk-$updkey.img"
if [ ! -e "$upddisk" ]; then
  log "sysupdate disk image"
  tmp="$cache/build-upd-$updkey"; rm -rf "$tmp"; mkdir -p "$tmp"
  read -r -a ra < <(sectors_of "$disk" 1); read -r -a va < <(sectors_of "$disk" 2)
  extract "$disk" 1 "$tmp/root-1.img"; extract "$disk" 2 "$tmp/root-verity-1.img"
  ab_disk 4f68bce3-e8cd-4db1-96e7-fbcaf984b709 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 \
    $(( ra[1] / 2048 )) $(( va[1] / 2048 )) "$(cat "$disk.roothash-a")" - root 192
  [ "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["partitiontable"]["partitions"][0]["start"])' "$tmp/layout.json")" = 2048 ] ||
    { log "the ESP does not start at sector 2048"; exit 1; }
  mv "$tmp/layout.json" "$upddisk.layout.json"; mv "$tmp/disk.img" "$upddisk"; rm -rf "$tmp"
fi
espkey=$(digest "$cache/uki-$ukikey-a.efi" <(echo "$repartroot esp v1"))
esp="$cache/esp-$espkey.img"
if [ ! -e "$esp" ]; then
  log "ESP (systemd-boot $(chroot "$repartroot" sh -c 'dpkg-query -W -f "\${Version}" systemd-boot-efi'))"
  w="$repartroot/work"; rm -rf "$w"; mkdir -p "$w"
  cp "$cache/uki-$ukikey-a.efi" "$w/uki.efi"
  # No menu: the newest entry with tries left boots at once.
  printf 'timeout 0\neditor no\n' > "$w/loader.conf"
  in_tools sh -c 'set -e; cd /work; mkfs.vfat -F 32 -C -n ESP -S 512 esp.img $((192 * 1024))
    mmd -i esp.img ::/EFI ::/EFI/BOOT ::/EFI/Linux ::/loader
    mcopy -i esp.img /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
    mcopy -i esp.img loader.conf ::/loader/loader.conf
    mcopy -i esp.img uki.efi ::/EFI/Linux/appliance_1.efi' >&2
  mv "$w/esp.img" "$esp"; rm -rf "$w"
fi
payload="$cache/update-$(digest "$cache/uki-$ukikey-b.efi" <(echo "$diskkey payload v1"))"
if [ ! -e "$payload.done" ]; then
  log "update payload (version 2)"
  rm -rf "$payload"; mkdir -p "$payload"
  hb=$(cat "$disk.roothash-b")
  extract "$disk" 3 "$payload/appliance_2_$(as_uuid "${hb:0:32}").root.raw"
  extract "$disk" 4 "$payload/appliance_2_$(as_uuid "${hb:32:32}").verity.raw"
  ln "$cache/uki-$ukikey-b.efi" "$payload/appliance_2.efi"
  touch "$payload.done"
fi

# Drop superseded builds (other keys) so the cache does not grow per change.
# (build-* are the work dirs of builds that were cut short.)
for old in "$cache"/rootfs-* "$cache"/tools-root-* "$cache"/repart-root-* "$cache"/disk-*.img* "$cache"/usrdisk-*.img* \
  "$cache"/repartdisk-*.img* "$cache"/initrd-*.img "$cache"/build-* "$cache"/uki-* "$cache"/sysupdate-disk-*.img* \
  "$cache"/esp-*.img "$cache"/update-*; do
  case " $rootfs $rootfs.done $repartroot $repartroot.done $initrd $mkosiinitrd $pid1initrd ${layout_initrds[*]} ${ukis[*]} $esp $payload $payload.done " in
    *" $old "*) continue ;;
  esac
  case "$old" in "$disk"*|"$usrdisk"*|"$repartdisk"*|"$upddisk"*) ;; *) rm -rf "$old" ;; esac
done

out="$cache/current"
mkdir -p "$out"
ln -sf "$kdir/x/boot/vmlinuz-$kver" "$out/vmlinuz"
ln -sf "$initrd" "$out/initrd.img"
ln -sf "$disk" "$out/disk.img"
# The guest root, for build-baseline.sh (make bench).
ln -sfn "$rootfs" "$out/rootfs"
for f in roothash-a roothash-b layout.json; do ln -sf "$disk.$f" "$out/$f"; done
ln -sf "$usrdisk" "$out/usr-disk.img"
ln -sf "$repartdisk" "$out/repart-disk.img"
ln -sf "$mkosiinitrd" "$out/initrd-mkosi.img"
ln -sf "$pid1initrd" "$out/initrd-pid1.img"
for f in usrhash-a usrhash-b; do ln -sf "$usrdisk.$f" "$out/usr-disk.img.$f"; done
ln -sf "$repartdisk.usrhash-a" "$out/repart-disk.img.usrhash-a"
for slot in a b; do
  ln -sf "$cache/uki-$ukikey-$slot.efi" "$out/uki-$slot.efi"
  ln -sf "$cache/uki-$ukikey-$slot.efi.pcr11" "$out/uki-$slot.efi.pcr11"
done
ln -sf "$upddisk" "$out/sysupdate-disk.img"
ln -sf "$upddisk.layout.json" "$out/sysupdate-disk.img.layout.json"
ln -sf "$esp" "$out/esp.img"
ln -sfn "$payload" "$out/update"
for f in "${layout_initrds[@]}"; do
  name=${f%.*.img}; ln -sf "$f" "$out/initrd-${name##*.}.img"
done
echo "$out" >&3
