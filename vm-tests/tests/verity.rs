//! VM boot scenarios for dm-verity on the A/B root slots: the slot follows
//! the booted `roothash=`, a tampered block is refused, a hash that matches
//! nothing stops the boot. Disks are booted with writes enabled and compared
//! byte for byte afterwards (all of it for refused boots; the root slots
//! for boots that provision the data partition).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use vm_tests::{
    boot, flip_byte, layout, sha256, Artifacts, Boot, BootOpts, Scratch, TestDisk, EMERGENCY,
    REPORT_DONE,
};

fn boot_hash(
    a: &Artifacts,
    s: &Scratch,
    disk: &Path,
    name: &str,
    hash: &str,
    marker: &'static str,
) -> Boot {
    let append = format!("ih_test.poweroff roothash={hash}");
    boot(
        a,
        &BootOpts {
            append: &append,
            snapshot: false,
            marker,
            ..BootOpts::new(name, disk, &s.0)
        },
    )
}

/// The report says verity is under / over exactly these partitions.
fn check_verity_root(b: &Boot, hash: &str, data: &str, hash_dev: &str, version: &str) {
    b.check(b.reached, "the guest report never appeared");
    b.check(
        b.value("root_source") == "/dev/mapper/root",
        "/ is not the verity device",
    );
    b.check(
        b.value("root_options").starts_with("ro"),
        "/ is not read-only",
    );
    let table = b.value("dm_table");
    b.check(
        table.split_whitespace().nth(2) == Some("verity"),
        "dm table target is not verity",
    );
    b.check(
        table.contains(hash),
        "dm table does not carry the booted root hash",
    );
    let slaves: Vec<String> = b
        .value("dm_slaves")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    b.check(
        slaves == [data, hash_dev],
        &format!("verity sits on {slaves:?}, expected [{data}, {hash_dev}]"),
    );
    b.check(
        b.value("image_version") == version,
        &format!("expected image version {version}"),
    );
    b.check(
        b.value("failed_units").is_empty(),
        "failed units in the booted system",
    );
    b.check(
        !b.lines_with("step verity: done in").is_empty(),
        "no verity step timing on the console",
    );
}

/// Slot B (version 2) on a fresh writable disk, then a rollback to slot
/// A (version 1): each boot's root is the verity device of its slot's
/// partitions, neither boot writes a root slot or the ESP, and what stage
/// 2 stores outside the slots (/var, the machine-id) survives the switch
/// while /etc's writes do not. One scenario for both slots: each boot
/// checks everything a single-slot boot would.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_slots_b_then_rollback_to_a() {
    let a = Artifacts::from_env();
    let s = Scratch::new("slots_b_then_rollback_to_a");
    let disk = TestDisk::new(&s, &a);
    let (ha, hb) = (a.roothash("a"), a.roothash("b"));
    let b = boot_hash(
        &a,
        &s,
        &disk.path,
        "on_b",
        &format!("{hb} ih_test.write=from-b"),
        REPORT_DONE,
    );
    check_verity_root(&b, &hb, "vda4", "vda5", "2");
    b.check(b.value("data_write") == "ok", "writing to /var failed");
    b.check(disk.slots_unchanged(), "a root slot or the ESP changed");
    let back = boot_hash(&a, &s, &disk.path, "back_to_a", &ha, REPORT_DONE);
    check_verity_root(&back, &ha, "vda2", "vda3", "1");
    back.check(
        back.value("etc_probe_existed") == "no",
        "/etc state leaked across boots",
    );
    // The data partition is not part of a slot: it survives the rollback.
    back.check(
        back.value("data_probe") == "from-b",
        "data written on slot B is gone after the rollback to A",
    );
    back.check(
        back.value("machine_id") == b.value("machine_id"),
        "the machine-id changed with the root slot",
    );
    back.check(disk.slots_unchanged(), "a root slot or the ESP changed");
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_verity_tamper() {
    verity_tamper(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_verity_tamper() {
    verity_tamper(true);
}

fn verity_tamper(pid1: bool) {
    let a = Artifacts::for_mode(pid1);
    let s = Scratch::new(&a.scratch_name("verity_tamper"));
    let mut disk = TestDisk::new(&s, &a);
    // Flip a byte of the ext4 superblock in root-A's data area: the first
    // block the kernel reads when mounting.
    let (off, _) = layout(&a)[1];
    flip_byte(&disk.path, off + 1024 + 16);
    disk.sha256 = sha256(&disk.path);
    let b = boot_hash(&a, &s, &disk.path, "tamper", &a.roothash("a"), EMERGENCY);
    b.check_refused(&["dm-verity rejected a block"]);
    b.check(disk.unchanged(), "the disk changed");
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_wrong_roothash() {
    let a = Artifacts::from_env();
    let s = Scratch::new("wrong_roothash");
    let disk = TestDisk::new(&s, &a);
    let b = boot_hash(&a, &s, &disk.path, "wrong", &"5a".repeat(32), EMERGENCY);
    b.check_refused(&["5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a", "roothash="]);
    b.check(disk.unchanged(), "the disk changed");
}

/// `root-hash-signature=` signed by a key the kernel does not trust: the
/// kernel refuses the activation and the boot stops, disk untouched.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_verity_untrusted_signature() {
    let a = Artifacts::from_env();
    let s = Scratch::new("verity_untrusted_signature");
    let disk = TestDisk::new(&s, &a);
    let h = a.roothash("a");
    let sig = sign_untrusted(&s.0, &h);
    let append = format!(
        "ih_test.poweroff roothash={h} systemd.verity_root_options=root-hash-signature=base64:{sig}"
    );
    let opts = BootOpts {
        append: &append,
        snapshot: false,
        marker: EMERGENCY,
        ..BootOpts::new("untrusted_sig", &disk.path, &s.0)
    };
    let b = boot(&a, &opts);
    b.check_refused(&["step verity", "activating dm-verity root"]);
    b.check(disk.unchanged(), "the disk changed");
}

/// A detached PKCS#7 signature (DER, base64) of the hex root hash, as
/// systemd's `root-hash-signature=` expects, from a throw-away key.
fn sign_untrusted(dir: &Path, roothash: &str) -> String {
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "openssl {args:?} failed");
    };
    fs::write(dir.join("roothash.txt"), roothash).unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-subj",
        "/CN=untrusted verity signer",
        "-days",
        "1",
    ]);
    run(&[
        "smime",
        "-sign",
        "-nocerts",
        "-noattr",
        "-binary",
        "-in",
        "roothash.txt",
        "-inkey",
        "key.pem",
        "-signer",
        "cert.pem",
        "-outform",
        "der",
        "-out",
        "sig.p7s",
    ]);
    let out = std::process::Command::new("base64")
        .args(["-w0", "sig.p7s"])
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}
