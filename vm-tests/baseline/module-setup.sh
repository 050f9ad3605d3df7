#!/bin/bash
# dracut module "ih-baseline" (bench only, never in a product initrd):
# systemd 252's own stack doing what initrd-helper does, the way a user
# glues it together (../shared/docs/baseline-notes.md):
#   systemd-repart      creates the data partition in the free space, LUKS2
#                       with a TPM2 token (Encrypt=tpm2, PCR 7) and ext4
#   systemd-cryptsetup  opens it through the TPM (crypttab tpm2-device=auto)
#   systemd-veritysetup the root slot from roothash=
#   sysroot-var.mount   the data volume at /var
# plus the libraries and tools systemd dlopen()s or runs for that.
# Files come from IH_BASELINE_DIR (default /usr/lib/ih-baseline).

check() {
    return 255
}

depends() {
    echo base systemd-initrd dracut-systemd dm crypt systemd-veritysetup systemd-repart
    return 0
}

installkernel() {
    # loop: repart formats a new partition through a loop device.
    hostonly='' instmods virtio_blk virtio_pci virtio_rng tpm_crb tpm_tis \
        dm_mod dm_verity dm_crypt loop overlay ext4 xts aesni_intel aes_generic
}

install() {
    local dir="${IH_BASELINE_DIR:-/usr/lib/ih-baseline}" u="$systemdsystemconfdir"
    inst_simple "$dir/50-data.conf" /usr/lib/repart.d/50-data.conf
    inst_simple "$dir/crypttab" /etc/crypttab
    inst_simple "$dir/sysroot-var.mount" "$systemdsystemunitdir/sysroot-var.mount"
    mkdir -p "$initdir$systemdsystemunitdir/initrd-fs.target.wants"
    ln_r "$systemdsystemunitdir/sysroot-var.mount" "$systemdsystemunitdir/initrd-fs.target.wants/sysroot-var.mount"
    inst_simple "$dir/repart-after-sysroot.conf" "$u/systemd-repart.service.d/after-sysroot.conf"
    # The bench's probes (ih-maxrss, ih-bench*.conf) are not here:
    # build-baseline.sh appends them to this initrd and to ours alike, so
    # the sizes compare the two stacks without them.
    # dlopen()ed by systemd-repart and systemd-cryptsetup (no ldd finds them).
    inst_libdir_file "libtss2-esys.so*" "libtss2-sys.so*" "libtss2-rc.so*" "libtss2-mu.so*" \
        "libtss2-tcti-device.so*" "cryptsetup/libcryptsetup-token-systemd-tpm2.so"
    inst_multiple mkfs.ext4 systemd-cryptenroll
    inst_multiple -o /etc/mke2fs.conf
}
