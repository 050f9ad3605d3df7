//! VM scenarios of the hermetic-/usr image (no root partition): layout
//! `tmpfs` (/ a tmpfs, /etc an overlay over the factory copy in /usr, the
//! data partition at /var) and `data` (/ the encrypted data partition);
//! /usr is the `usrhash=` slot through dm-verity `usr` (erofs; squashfs in
//! the hand-built image's slot B).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use vm_tests::{boot, is_machine_id, Artifacts, Boot, BootOpts, Scratch};

/// One test's disk (a writable copy, or the image itself under QEMU's
/// `-snapshot`) and its swtpm state.
struct Machine {
    a: Artifacts,
    s: Scratch,
    disk: PathBuf,
    writable: bool,
}

impl Machine {
    fn new(a: Artifacts, name: &str, writable: bool) -> Machine {
        let s = Scratch::new(name);
        let disk = if writable {
            s.copy_disk(&a.disk)
        } else {
            a.disk.clone()
        };
        Machine {
            a,
            s,
            disk,
            writable,
        }
    }

    /// Boots with `usrhash=` of `slot` plus `extra`; the report.
    fn boot(&self, name: &str, slot: &str, extra: &str) -> (Boot, Report) {
        let append = format!("ih_test.poweroff usrhash={} {extra}", self.a.usrhash(slot));
        let b = boot(
            &self.a,
            &BootOpts {
                append: &append,
                snapshot: !self.writable,
                ..BootOpts::new(name, &self.disk, &self.s.0)
            },
        );
        b.check(b.reached, "the guest report never appeared");
        let r = b.report();
        (b, r)
    }
}

/// The helper's console lines with `needle` (not the report's journal copy).
fn console_lines(b: &Boot, needle: &str) -> Vec<String> {
    b.lines_with(needle)
        .into_iter()
        .filter(|l| !l.contains("IHJ "))
        .collect()
}

type Report = BTreeMap<String, String>;

/// What every boot of the tmpfs layout shows, whichever slot.
fn check_layout(b: &Boot, r: &Report, a: &Artifacts, slot: &str) {
    b.expect(&[
        ("root_fstype", "tmpfs", "/ is not a tmpfs"),
        ("root_write", "ok", "the tmpfs / is not writable"),
        (
            "root_probe_existed",
            "no",
            "/ kept a file from an earlier boot",
        ),
        ("etc_fstype", "overlay", "/etc is not an overlay"),
        (
            "etc_lower",
            "/sysroot/usr/share/factory/etc",
            "the /etc overlay's lower layer is not the factory copy",
        ),
        (
            "etc_probe_existed",
            "no",
            "/etc kept a file from an earlier boot",
        ),
    ]);
    check_usr(
        b,
        r,
        a,
        slot,
        &["tmpfs-root", "mount-usr", "persist", "etc-overlay"],
    );
}

/// /usr is slot `slot` through dm-verity, the factory /etc is in use, and
/// each of `steps` was done once.
fn check_usr(b: &Boot, r: &Report, a: &Artifacts, slot: &str, steps: &[&str]) {
    // The hand-built image's B slot is squashfs; every A slot erofs.
    let (fstype, version) = if slot == "a" {
        ("erofs", "1")
    } else {
        ("squashfs", "2")
    };
    b.expect(&[
        ("usr_source", "/dev/mapper/usr", "/usr is not dm-verity usr"),
        ("usr_fstype", fstype, "/usr is not the slot's file system"),
        (
            "image_version",
            version,
            "/usr/lib/os-release is not the slot's",
        ),
        (
            "hostname",
            "appliance",
            "the factory /etc's hostname is not in use",
        ),
        ("failed_units", "", "failed units in the booted system"),
    ]);
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
    b.check(
        is_machine_id(&r["machine_id"]),
        "/etc/machine-id is not 32 hex digits",
    );
    for step in steps {
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

/// Two boots with writes, A's `usrhash=` then B's (an update): the data
/// partition is provisioned on the first and keeps its file on the second,
/// the machine-id (kept there) is the same, / and /etc start empty each
/// boot, and each boot's /usr is its slot's pair (DPS UUIDs derived from
/// the hash).
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_usr_tmpfs_root() {
    let m = Machine::new(Artifacts::usr_from_env("tmpfs"), "usr_tmpfs_root", true);
    let (b1, r1) = m.boot("first", "a", "ih_test.write=kept-on-var");
    check_layout(&b1, &r1, &m.a, "a");
    b1.expect(&[
        (
            "data_source",
            "/dev/mapper/data",
            "/var is not the data volume",
        ),
        ("data_fstype", "ext4", "/var is not ext4"),
        (
            "luks_token_type",
            "\"systemd-tpm2\"",
            "no systemd-tpm2 token",
        ),
        ("data_write", "ok", "writing to /var failed"),
        ("home_write", "ok", "writing to /root (data.persist) failed"),
    ]);
    let (b2, r2) = m.boot("second", "b", "");
    check_layout(&b2, &r2, &m.a, "b");
    b2.expect(&[
        ("data_probe", "kept-on-var", "/var lost its file"),
        (
            "home_probe",
            "kept-on-var",
            "/root (data.persist) lost its file",
        ),
        ("machine_id", &r1["machine_id"], "the machine-id changed"),
    ]);
    b2.check(
        console_lines(&b2, "step data: done")
            .iter()
            .any(|l| l.contains("opened")),
        "the second boot did not open the provisioned volume",
    );
}

/// `root.layout = "data"`: the data partition (DPS root type) is `/`,
/// made (grown, LUKS2 + TPM2, ext4) at first boot with /etc seeded from
/// the factory copy; the second boot keeps what the first wrote in /root,
/// /etc and /var; a factory reset empties / and makes a new machine-id.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_root_on_data() {
    let m = Machine::new(Artifacts::usr_from_env("data"), "root_on_data", true);
    // The image's blank data partition, retyped as the root it becomes,
    // and room to grow into.
    let ok = std::process::Command::new("sfdisk")
        .args(["-q", "--part-type"])
        .arg(&m.disk)
        .args(["6", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "sfdisk --part-type failed");
    vm_tests::enlarge(&m.disk, 1 << 30);
    let (b1, r1) = m.boot("first", "a", "ih_test.write=kept-on-root");
    check_data_root(&b1, &r1, &m.a);
    b1.expect(&[
        ("root_probe_existed", "no", "a new root had /ih-probe"),
        ("home_write", "ok", "writing to /root failed"),
        ("etc_write", "ok", "writing to /etc failed"),
    ]);
    b1.check(
        r1["data_part_size"].parse::<u64>().unwrap_or(0) > 512 << 20,
        "the root partition did not grow into the disk",
    );
    let seeded = console_lines(&b1, "step etc-seed: done");
    b1.check(
        seeded.len() == 1 && seeded[0].contains("seeded /sysroot/etc"),
        "the first boot did not seed /etc",
    );
    let (b2, r2) = m.boot("second", "a", "");
    check_data_root(&b2, &r2, &m.a);
    b2.expect(&[
        ("root_probe_existed", "yes", "/ lost /ih-probe"),
        ("home_probe", "kept-on-root", "/root lost its file"),
        ("etc_probe_existed", "yes", "/etc lost its file"),
        ("data_probe", "kept-on-root", "/var lost its file"),
        ("machine_id", &r1["machine_id"], "the machine-id changed"),
    ]);
    b2.check(
        console_lines(&b2, "step etc-seed: skipped").len() == 1,
        "the second boot did not keep /etc",
    );
    let (b3, r3) = m.boot("reset", "a", "systemd.factory_reset=1");
    check_data_root(&b3, &r3, &m.a);
    b3.expect(&[
        ("root_probe_existed", "no", "the reset kept /ih-probe"),
        ("home_probe", "", "the reset kept /root's file"),
        ("etc_probe_existed", "no", "the reset kept /etc's file"),
    ]);
    b3.check(
        r3["luks_uuid"] != r1["luks_uuid"],
        "the reset kept the LUKS volume",
    );
    b3.check(
        r3["machine_id"] != r1["machine_id"],
        "the reset kept the machine-id",
    );
}

fn check_data_root(b: &Boot, r: &Report, a: &Artifacts) {
    b.expect(&[
        (
            "root_source",
            "/dev/mapper/data",
            "/ is not the data volume",
        ),
        ("root_fstype", "ext4", "/ is not ext4"),
        ("root_write", "ok", "writing to / failed"),
        (
            "luks_token_type",
            "\"systemd-tpm2\"",
            "no systemd-tpm2 token",
        ),
        (
            "etc_fstype",
            "",
            "/etc is a mount of its own, not the root's",
        ),
    ]);
    b.check(
        r["root_options"].split(',').next() == Some("rw"),
        "/ is not writable",
    );
    check_usr(
        b,
        r,
        a,
        "a",
        &["data", "skeleton", "mount-usr", "machine-id"],
    );
}

/// Boots the repart image (tmpfs layout, A's `usrhash=` from repart's
/// JSON) with `a`'s initrd: the layout's checks, the blank data partition
/// provisioned at /var.
fn boot_repart_image(a: Artifacts, name: &str) -> Boot {
    let m = Machine::new(a, name, false);
    let (b, r) = m.boot(name, "a", "");
    check_layout(&b, &r, &m.a, "a");
    b.expect(&[
        (
            "data_source",
            "/dev/mapper/data",
            "the blank data partition is not the data volume at /var",
        ),
        (
            "luks_token_type",
            "\"systemd-tpm2\"",
            "no systemd-tpm2 token",
        ),
        (
            "helper_unit_finished",
            "1",
            "initrd-helper.service did not finish",
        ),
    ]);
    b
}

/// The image systemd-repart 257 laid out from vm-tests/repart.d (never by
/// hand) boots with nothing but the layout choice: the usr partition's
/// `roothash` from repart's JSON is the `usrhash=`.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_repart_image() {
    boot_repart_image(Artifacts::repart_from_env(), "repart_image");
}

/// The drop-in in a real mkosi initrd: mkosi-initrd 25 (trixie's systemd
/// 257 in the initrd, its veritysetup generator masked by the drop-in)
/// boots the repart image as the dracut initrd does.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_mkosi_initrd() {
    let b = boot_repart_image(Artifacts::mkosi_from_env(), "mkosi_initrd");
    b.check(
        !b.lines_with("systemd 257").is_empty(),
        "the initrd's systemd is not mkosi's (trixie's 257)",
    );
}
