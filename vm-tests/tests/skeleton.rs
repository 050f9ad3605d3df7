//! VM boot scenarios of the walking skeleton: a real dracut initrd with our
//! module, real systemd in both stages, a QEMU guest under TCG with swtpm.
//! Ignored by plain `cargo test`; `make test` runs them with `--ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use vm_tests::{boot, is_machine_id, sha256, Artifacts, BootOpts, Scratch, TestDisk, EMERGENCY};

/// Boots the image twice with writes enabled: / is read-only, /etc is an
/// overlay whose writes vanish at reboot, machine-id is valid and stable,
/// the helper's lines are in the journal, and every partition but the data
/// partition is byte-identical afterwards.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_boot_readonly_root() {
    boot_readonly_root(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_boot_readonly_root() {
    boot_readonly_root(true);
}

fn boot_readonly_root(pid1: bool) {
    let a = Artifacts::for_mode(pid1);
    let s = Scratch::new(&a.scratch_name("boot_readonly_root"));
    let disk = TestDisk::new(&s, &a);
    let opts = |name| BootOpts {
        snapshot: false,
        ..BootOpts::new(name, &disk.path, &s.0)
    };

    let b1 = boot(&a, &opts("boot1"));
    b1.check(b1.reached, "the guest report never appeared");
    let r = b1.report();
    b1.check(
        r["root_options"].split(',').next() == Some("ro"),
        "/ is not mounted read-only",
    );
    b1.check(r["root_write"] == "refused", "writing to / succeeded");
    b1.check(r["etc_fstype"] == "overlay", "/etc is not an overlay");
    b1.check(
        r["etc_upper_fstype"] == "tmpfs",
        "the /etc upper layer is not on tmpfs",
    );
    b1.check(
        r["etc_probe_existed"] == "no",
        "a fresh image already had /etc/ih-probe",
    );
    b1.check(r["etc_write"] == "ok", "writing to /etc failed");
    b1.check(
        is_machine_id(&r["machine_id"]),
        "/etc/machine-id is not 32 hex digits",
    );
    b1.check(
        r["pid1_machine_id_msgs"] == "0",
        "systemd (stage 2) logged about the machine-id",
    );
    // PID-1 mode has no unit: its PID 1 says it switched root instead.
    b1.check(
        if pid1 {
            !b1.lines_with("PID 1: switching root to /sysroot")
                .is_empty()
        } else {
            r["helper_unit_finished"] == "1" && r["helper_unit_failed"] == "0"
        },
        "the helper did not finish, or logged a failure",
    );
    b1.check(
        r["failed_units"].is_empty(),
        "failed units in the booted system",
    );
    let journal_lines: usize = r["helper_journal_lines"].parse().unwrap_or(0);
    b1.check(
        journal_lines >= 5,
        "the helper's lines are missing from journalctl -b",
    );
    for step in ["mount-root", "data", "etc-overlay", "machine-id"] {
        let line = format!("step {step}: done in");
        b1.check(
            !b1.lines_with(&line).is_empty(),
            &format!("no console line {line:?}"),
        );
    }
    eprintln!("boot1: report at {} s guest uptime", r["uptime"]);

    let b2 = boot(&a, &opts("boot2"));
    b2.check(
        b2.reached,
        "the guest report never appeared on the second boot",
    );
    b2.check(
        b2.value("etc_probe_existed") == "no",
        "a write to /etc survived the reboot",
    );
    b2.check(
        b2.value("machine_id") == r["machine_id"],
        "second boot: the machine-id changed",
    );
    b2.check(
        disk.slots_unchanged(),
        "a root slot or the ESP changed although the root is read-only",
    );
}

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
