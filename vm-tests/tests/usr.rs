//! VM scenarios of the hermetic-/usr layout (`root.layout = "tmpfs"`): /
//! is a tmpfs, /usr is the `usrhash=` slot through dm-verity `usr`
//! (erofs), /etc an overlay over the factory copy in /usr, and the data
//! partition (LUKS2 + TPM2) at /var. The image has no root partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use vm_tests::{boot, is_machine_id, Artifacts, Boot, BootOpts, Scratch};

/// Boots the usr image with `usrhash=` of `slot` plus `extra`; the report.
fn boot_usr(
    a: &Artifacts,
    s: &Scratch,
    disk: &std::path::Path,
    name: &str,
    slot: &str,
    extra: &str,
    snapshot: bool,
) -> (Boot, BTreeMap<String, String>) {
    let append = format!("ih_test.poweroff usrhash={} {extra}", a.usrhash(slot));
    let b = boot(
        a,
        &BootOpts {
            append: &append,
            snapshot,
            ..BootOpts::new(name, disk, &s.0)
        },
    );
    b.check(b.reached, "the guest report never appeared");
    let r = b.report();
    (b, r)
}

/// The helper's console lines with `needle` (not the report's journal copy).
fn console_lines(b: &Boot, needle: &str) -> Vec<String> {
    b.lines_with(needle)
        .into_iter()
        .filter(|l| !l.contains("IHJ "))
        .collect()
}

/// What every boot of the layout shows, whichever slot.
fn check_layout(b: &Boot, r: &BTreeMap<String, String>, a: &Artifacts, slot: &str) {
    b.check(r["root_fstype"] == "tmpfs", "/ is not a tmpfs");
    b.check(r["root_write"] == "ok", "the tmpfs / is not writable");
    b.check(
        r["root_probe_existed"] == "no",
        "/ kept a file from an earlier boot",
    );
    b.check(
        r["usr_source"] == "/dev/mapper/usr",
        "/usr is not dm-verity usr",
    );
    b.check(r["usr_fstype"] == "erofs", "/usr is not the erofs slot");
    b.check(
        r["usr_options"].split(',').next() == Some("ro"),
        "/usr is not read-only",
    );
    let hash = a.usrhash(slot);
    b.check(
        r["usr_dm_table"].contains(" verity ") && r["usr_dm_table"].contains(&hash),
        "dm-verity usr does not carry the slot's usrhash",
    );
    let (data, verity) = if slot == "a" {
        ("vda2", "vda3")
    } else {
        ("vda4", "vda5")
    };
    b.check(
        r["usr_dm_slaves"].split_whitespace().collect::<Vec<_>>() == [data, verity],
        &format!("dm-verity usr is not over {data} and {verity}"),
    );
    let version = if slot == "a" { "1" } else { "2" };
    b.check(
        r["image_version"] == version,
        &format!("/usr/lib/os-release is not slot {slot}'s"),
    );
    b.check(r["etc_fstype"] == "overlay", "/etc is not an overlay");
    b.check(
        r["etc_lower"] == "/sysroot/usr/share/factory/etc",
        "the /etc overlay's lower layer is not the factory copy",
    );
    b.check(
        r["hostname"] == "appliance",
        "the factory /etc's hostname is not in use",
    );
    b.check(
        r["etc_probe_existed"] == "no",
        "/etc kept a file from an earlier boot",
    );
    b.check(
        is_machine_id(&r["machine_id"]),
        "/etc/machine-id is not 32 hex digits",
    );
    b.check(
        r["failed_units"].is_empty(),
        "failed units in the booted system",
    );
    for step in ["tmpfs-root", "mount-usr", "etc-overlay"] {
        let lines = console_lines(b, &format!("step {step}: done in"));
        b.check(lines.len() == 1, &format!("no 'step {step}: done' line"));
    }
    // The step times, for the notes.
    for l in console_lines(b, "initrd-helper[") {
        if l.contains(": step ") || l.contains("all steps done") {
            eprintln!("{}: {}", b.name, l.trim());
        }
    }
}

/// Two boots with writes: the data partition is provisioned on the first
/// and keeps its file on the second, the machine-id (kept there) is the
/// same, and / and /etc start empty each boot.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_usr_tmpfs_root() {
    let a = Artifacts::usr_from_env();
    let s = Scratch::new("usr_tmpfs_root");
    let disk = s.copy_disk(&a.disk);
    let (b1, r1) = boot_usr(
        &a,
        &s,
        &disk,
        "first",
        "a",
        "ih_test.write=kept-on-var",
        false,
    );
    check_layout(&b1, &r1, &a, "a");
    b1.check(
        r1["data_source"] == "/dev/mapper/data",
        "/var is not the data volume",
    );
    b1.check(r1["data_fstype"] == "ext4", "/var is not ext4");
    b1.check(
        r1["luks_token_type"] == "\"systemd-tpm2\"",
        "no systemd-tpm2 token",
    );
    b1.check(r1["data_write"] == "ok", "writing to /var failed");
    let (b2, r2) = boot_usr(&a, &s, &disk, "second", "a", "", false);
    check_layout(&b2, &r2, &a, "a");
    b2.check(r2["data_probe"] == "kept-on-var", "/var lost its file");
    b2.check(
        r2["machine_id"] == r1["machine_id"],
        "the machine-id changed between boots",
    );
    b2.check(
        console_lines(&b2, "step data: done")
            .iter()
            .any(|l| l.contains("opened")),
        "the second boot did not open the provisioned volume",
    );
}

/// `usrhash=` of slot B selects B's pair (DPS UUIDs derived from the hash).
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_usr_slot_b() {
    let a = Artifacts::usr_from_env();
    let s = Scratch::new("usr_slot_b");
    let (b, r) = boot_usr(&a, &s, &a.disk, "slot_b", "b", "", true);
    check_layout(&b, &r, &a, "b");
}
