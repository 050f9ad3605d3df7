#!/bin/bash
# dracut module for initrd-helper: installs the static binary, its initrd
# unit, the config and the kernel modules its steps need.
# Files come from INITRD_HELPER_DIR (default /usr/lib/initrd-helper):
#   initrd-helper          the binary
#   units/*.service        the initrd units
# and the config from /etc/initrd-helper/config.toml when present.

# Opt-in only: hostonly auto-detection cannot tell whether an image wants it.
check() {
    return 255
}

depends() {
    # base: /etc/initrd-release (systemd's initrd targets assert it);
    # systemd-initrd: the targets our unit is ordered against;
    # dracut-systemd: an emergency shell that says what failed.
    # Not dracut's dm module: it brings every driver in drivers/md (md RAID,
    # bcache, dm-thin, dlm: ~4.5 MB); install() takes its udev rules alone.
    echo base systemd-initrd dracut-systemd
    return 0
}

installkernel() {
    # Disk and TPM drivers for VMs and common hardware; dm targets and file
    # systems the helper mounts (request_module also loads them on demand).
    # virtio_rng: getrandom() blocks until the CRNG is seeded, ~1 s in a VM without it.
    hostonly='' instmods virtio_blk virtio_pci virtio_scsi virtio_rng nvme ahci sd_mod \
        tpm_crb tpm_tis \
        dm_mod dm_verity dm_crypt overlay ext4 erofs squashfs vfat
    # dm-crypt's aes-xts-plain64 (requested by the crypto API on first use;
    # aes_generic for CPUs without AES-NI).
    hostonly='' instmods xts aesni_intel aes_generic
}

install() {
    local dir="${INITRD_HELPER_DIR:-/usr/lib/initrd-helper}"
    inst_simple "$dir/initrd-helper" /usr/bin/initrd-helper
    inst_simple "$dir/units/initrd-helper.service" "$systemdsystemunitdir/initrd-helper.service"
    if [[ -e /etc/initrd-helper/config.toml ]]; then
        inst_simple /etc/initrd-helper/config.toml /etc/initrd-helper/config.toml
    fi
    # The root is ours: initrd-root-fs.target must wait for (and require) us.
    mkdir -p "$initdir$systemdsystemunitdir/initrd-root-fs.target.requires"
    ln_r "$systemdsystemunitdir/initrd-helper.service" \
        "$systemdsystemunitdir/initrd-root-fs.target.requires/initrd-helper.service"
    inst_multiple -o modprobe
    # device-mapper's udev rules, so /dev/mapper/root gets its systemd device
    # unit (with roothash= and no root=, systemd-fstab-generator makes
    # sysroot.mount wait for dev-mapper-root.device); dmsetup decodes their
    # cookies. Debian names them 55-dm and 60-persistent-storage-dm, upstream
    # 10-dm and 13-dm-disk: whichever exist are taken.
    inst_multiple -o dmsetup
    inst_rules 10-dm.rules 13-dm-disk.rules 55-dm.rules 60-persistent-storage-dm.rules \
        95-dm-notify.rules
    # Keep dm devices' udev records across the initrd's database cleanup:
    # stage 2's udev must see the root's flags, not a bare dm node.
    inst_rules "$moddir/11-initrd-helper-dm.rules"
    # A signed PCR policy is signed for boot phases: systemd-pcrphase
    # extends "enter-initrd" into PCR 11 before the helper runs (its unit
    # runs only under systemd-stub, which sets StubPcrKernelImage). Not
    # dracut's systemd-pcrphase module: that one requires tpm2-tools.
    if [[ -x $systemdutildir/systemd-pcrphase ]]; then
        inst_multiple "$systemdutildir"/systemd-pcrphase \
            "$systemdsystemunitdir"/systemd-pcrphase-initrd.service
        $SYSTEMCTL -q --root "$initdir" add-wants initrd.target systemd-pcrphase-initrd.service
        # dlopen()ed by systemd-pcrphase, so not found by dracut's ldd pass
        # (nor is what they link: libtss2-sys).
        inst_libdir_file "libtss2-esys.so*" "libtss2-sys.so*" "libtss2-rc.so*" "libtss2-mu.so*" \
            "libtss2-tcti-device.so*"
    fi
    # First boot and factory reset format the data volume.
    inst_multiple mkfs.ext4
    inst_multiple -o /etc/mke2fs.conf
}
