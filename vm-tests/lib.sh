# Shell helpers shared by build-image.sh and build-baseline.sh (sourced).

digest() { cat "$@" | sha256sum | cut -c1-16; }

# dracut_in_root ROOT KVER MODULE: builds ROOT/tmp/initrd.img by running the
# guest root's own dracut inside it, with systemd-initrd and MODULE only, no
# host-only detection, uncompressed (the VM tests boot it under TCG, where
# decompression is slow; the bench reports zstd sizes).
dracut_in_root() {
  local root=$1 kver=$2 module=$3
  mount -t proc proc "$root/proc"; mount --bind /dev "$root/dev"
  # shellcheck disable=SC2064 # expand now: $root is local
  trap "umount '$root/proc' '$root/dev' 2>/dev/null || true" EXIT
  chroot "$root" dracut --quiet --force --no-hostonly --no-hostonly-cmdline \
    --no-early-microcode --reproducible --compress=cat --kver "$kver" \
    --modules "systemd-initrd $module" /tmp/initrd.img >&2
  umount "$root/proc" "$root/dev"; trap - EXIT
}
