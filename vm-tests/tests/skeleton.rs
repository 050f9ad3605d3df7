//! VM boot scenarios of the walking skeleton: a real dracut initrd with our
//! module, real systemd in both stages, a QEMU guest under TCG with swtpm.
//! Ignored by plain `cargo test`; `make test` runs them with `--ignored`.
//! The read-only root, /etc overlay and machine-id of an image with a data
//! partition are checked on the boots of `data.rs`'s machine life cycle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use vm_tests::{boot, sha256, Artifacts, BootOpts, Scratch, TestDisk, EMERGENCY};

/// An image without a data partition (the tmpfs-root kind): the machine-id
/// comes from the firmware's SMBIOS UUID, the same on every boot of one
/// machine, another on another machine, with nothing stored on the disk.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_firmware_machine_id() {
    let a = Artifacts::from_env();
    let s = Scratch::new("firmware_machine_id");
    let disk = TestDisk::new(&s, &a);
    let out = Command::new("sfdisk")
        .args(["-q", "--delete"])
        .arg(&disk.path)
        .arg("6")
        .output()
        .expect("sfdisk");
    assert!(out.status.success(), "sfdisk --delete: {out:?}");
    let digest = sha256(&disk.path);
    let (uuid_a, uuid_b) = (
        "5ea1ed00-0000-4000-8000-00000000000a",
        "5ea1ed00-0000-4000-8000-00000000000b",
    );
    let boot_with = |name, uuid| {
        let b = boot(
            &a,
            &BootOpts {
                smbios_uuid: Some(uuid),
                snapshot: false,
                ..BootOpts::new(name, &disk.path, &s.0)
            },
        );
        b.check(b.reached, "the guest report never appeared");
        b.check(
            b.value("helper_unit_failed") == "0",
            "initrd-helper.service failed",
        );
        b
    };
    let b1 = boot_with("first", uuid_a);
    let id_a = b1.value("machine_id");
    b1.check(
        id_a == uuid_a.replace('-', ""),
        &format!("machine-id {id_a:?} is not the SMBIOS UUID {uuid_a}"),
    );
    b1.check(
        b1.value("pid1_machine_id_msgs") == "0",
        "systemd (stage 2) logged about the machine-id",
    );
    b1.check(
        !b1.lines_with("SMBIOS product UUID) to").is_empty(),
        "the plan line does not name the firmware as the source",
    );
    let b2 = boot_with("again", uuid_a);
    b2.check(
        b2.value("machine_id") == id_a,
        "the machine-id changed on the same machine",
    );
    let b3 = boot_with("other", uuid_b);
    b3.check(
        b3.value("machine_id") == uuid_b.replace('-', ""),
        "another machine did not get its own machine-id",
    );
    b3.check(
        sha256(&disk.path) == digest,
        "the disk changed (nothing is stored)",
    );
}

/// A malformed security-relevant option of ours: one clear error line naming
/// it, the emergency target, and not a byte written to the disk.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_bad_cmdline() {
    bad_cmdline(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_bad_cmdline() {
    bad_cmdline(true);
}

fn bad_cmdline(pid1: bool) {
    let a = Artifacts::for_mode(pid1);
    let s = Scratch::new(&a.scratch_name("bad_cmdline"));
    let disk = TestDisk::new(&s, &a);
    let opts = BootOpts {
        append: "initrd_helper.disk=not-a-guid",
        snapshot: false,
        marker: EMERGENCY,
        ..BootOpts::new("bad_cmdline", &disk.path, &s.0)
    };
    let b = boot(&a, &opts);
    b.check_refused(&["initrd_helper.disk=\"not-a-guid\""]);
    b.check(disk.unchanged(), "the disk image changed");
}
