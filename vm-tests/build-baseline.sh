#!/bin/bash
# Builds what `make bench` needs beside build-image.sh's artifacts, into
# the same cache (keyed by inputs), and links it into $IH_CACHE/vm/current:
#   initrd-baseline.img  systemd 252's own stack in a dracut initrd (module
#                        vm-tests/baseline, built in the guest root like ours)
#   baseline-disk.img    the disk image without its data partition (repart
#                        252 creates it on the first boot; it never formats
#                        an existing one)
#   initrd-baseline-bench.img, initrd-bench.img
#                        that initrd and our dracut one with the bench's
#                        probes appended as a second cpio (ih-maxrss around
#                        the volume tools or the helper, a kmsg line as
#                        switch-root begins): both sides carry the same, the
#                        sizes are taken without them
# Usage: build-baseline.sh (after build-image.sh).
set -euo pipefail
exec 1>&2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
cache=${IH_CACHE:-$top/.cache}/vm
out="$cache/current"
log() { echo "build-baseline: $*" >&2; }
# shellcheck source=vm-tests/lib.sh
. "$here/lib.sh"
rootfs=$(readlink -f "$out/rootfs")
[ -d "$rootfs/usr/lib/modules" ] || { log "no guest root at $out/rootfs: run build-image.sh first"; exit 1; }
kver=$(ls "$rootfs/usr/lib/modules")
[ "$(echo "$kver" | wc -w)" = 1 ] || { log "expected one kernel in the guest root, found: $kver"; exit 1; }
src="$here/baseline"

module=("$src"/{module-setup.sh,50-data.conf,crypttab,sysroot-var.mount,repart-after-sysroot.conf})
key=$(digest "${module[@]}" <(echo "${rootfs##*/} baseline v2"))
initrd="$cache/baseline-initrd-$key.img"
if [ ! -e "$initrd" ]; then
  log "initrd (dracut, systemd $(chroot "$rootfs" systemctl --version | head -1 | cut -d' ' -f2) stack)"
  stage="$rootfs/usr/lib/ih-baseline" mod="$rootfs/usr/lib/dracut/modules.d/90ih-baseline"
  rm -rf "$stage" "$mod"; mkdir -p "$stage" "$mod"
  cp "${module[@]}" "$stage/"; install -m755 "$src/module-setup.sh" "$mod/module-setup.sh"
  dracut_in_root "$rootfs" "$kver" ih-baseline
  mv "$rootfs/tmp/initrd.img" "$initrd"
  rm -rf "$stage" "$mod"
fi

disk=$(readlink -f "$out/disk.img")
bdisk="$cache/baseline-disk-$(echo "${disk##*/} baseline v1" | sha256sum | cut -c1-16).img"
if [ ! -e "$bdisk" ]; then
  log "disk image without the data partition"
  cp --sparse=always "$disk" "$bdisk.tmp"
  n=$(sfdisk -J "$bdisk.tmp" | python3 -c 'import json,sys; p=json.load(sys.stdin)["partitiontable"]["partitions"]; print(len(p))')
  [ "$n" = 6 ] || { log "expected 6 partitions in $disk, found $n"; exit 1; }
  sfdisk -q --no-reread --no-tell-kernel --delete "$bdisk.tmp" 6
  mv "$bdisk.tmp" "$bdisk"
fi

# with_probe IN OUT UNIT=CONF...: IN with a second cpio appended that holds
# ih-maxrss and each vm-tests/baseline/CONF as UNIT's drop-in ih-bench.conf.
with_probe() {
  local in=$1 out=$2 tmp="$cache/build-probe" pair d; shift 2
  [ -e "$out" ] && return
  log "${out##*/}: ${in##*/} with the bench probe"
  rm -rf "$tmp"; mkdir -p "$tmp/usr/bin"
  for pair in "$@"; do
    d="$tmp/etc/systemd/system/${pair%%=*}.d"; mkdir -p "$d"
    install -m644 "$src/${pair#*=}" "$d/ih-bench.conf"
  done
  gcc -static -O2 -Wall -Werror -o "$tmp/usr/bin/ih-maxrss" "$src/ih-maxrss.c"
  (cd "$tmp" && find etc usr | sort | cpio -o -H newc -R 0:0 --quiet) > "$tmp/extra.cpio"
  cat "$in" "$tmp/extra.cpio" > "$out.tmp"; mv "$out.tmp" "$out"; rm -rf "$tmp"
}
probe=("$src"/ih-bench*.conf "$src/ih-maxrss.c")
switch=initrd-switch-root.service=ih-bench.conf
ours=$(readlink -f "$out/initrd.img")
bench="$cache/baseline-ours-$(digest "$ours" "${probe[@]}" <(echo ours v4)).img"
with_probe "$ours" "$bench" initrd-helper.service=ih-bench-helper.conf "$switch"
sdbench="$cache/baseline-sdbench-$(digest "$initrd" "${probe[@]}" <(echo v1)).img"
with_probe "$initrd" "$sdbench" systemd-repart.service=ih-bench-repart.conf \
  systemd-cryptsetup@data.service=ih-bench-cryptsetup.conf "$switch"

for old in "$cache"/baseline-*; do
  case "$old" in "$initrd"|"$bdisk"|"$bench"|"$sdbench") ;; *) rm -rf "$old" ;; esac
done
ln -sf "$initrd" "$out/initrd-baseline.img"
ln -sf "$bdisk" "$out/baseline-disk.img"
ln -sf "$bench" "$out/initrd-bench.img"
ln -sf "$sdbench" "$out/initrd-baseline-bench.img"
