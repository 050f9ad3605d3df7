//! The power-cut matrix: QEMU killed at points of first-boot provisioning
//! on a big sparse disk, each next boot recognising the interrupted one,
//! and the machine converging to a volume that keeps what it stores.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_tests::machine::{helper_lines, Machine};
use vm_tests::{boot, clear_da_lockout, enlarge, Boot, BootOpts};

/// A boot killed `delay_ms` after `marker` appears on the console, with a
/// disk cache mode that honours the guest's flushes (what the helper made
/// durable is on the host file; what it did not may be lost).
fn power_cut(m: &Machine, name: &str, marker: &'static str, delay_ms: u64) -> Boot {
    let o = BootOpts {
        marker,
        kill_at_marker: true,
        kill_delay: std::time::Duration::from_millis(delay_ms),
        cache: "writeback",
        ..m.opts(name, "ih_test.poweroff")
    };
    let b = boot(&m.a, &o);
    b.check(b.reached, &format!("{marker:?} never appeared"));
    b
}

/// Where the power goes: a line of the helper's provisioning log, and how
/// long after it. Every cut but the last lands while provisioning runs.
const CUTS: [(&str, u64); 10] = [
    ("data: provisioning", 0),
    ("data: provisioning", 40),
    ("data: marked in progress", 0),
    ("data: marked in progress", 40),
    ("data: wiped the old header", 0),
    ("data: wiped the old header", 100),
    ("data: LUKS2 formatted", 0),
    ("data: LUKS2 formatted", 150),
    ("data: mkfs.ext4", 0),
    ("data: cleared the in-progress mark", 0),
];

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_power_cut_matrix() {
    // A big (sparse) disk: mkfs takes long enough to be cut in the middle.
    // Direct kernel boots: what a cut tests is the order of the helper's
    // writes, and OVMF would add ~14 s of TCG firmware to each of 12 boots.
    let m = Machine::new("power_cut_matrix", false);
    enlarge(&m.disk, 64 << 30);
    let mut marked_before = false;
    for (i, (marker, delay)) in CUTS.iter().enumerate() {
        let b = power_cut(&m, &format!("cut{i}"), marker, *delay);
        if marked_before {
            b.check(
                helper_lines(&b, "interrupted first boot") >= 1,
                "the boot did not recognise the interrupted first boot",
            );
        }
        // The table is readable after every cut, and the mark is on disk
        // from the moment the helper said so until it said it cleared it.
        let (_, _, attrs) = m.data_entry();
        let after_mark = !marker.contains("provisioning");
        let cleared = marker.contains("cleared");
        if after_mark && !cleared {
            b.check(
                attrs.contains("55"),
                &format!("no in-progress mark after cut {i}: {attrs:?}"),
            );
        }
        if cleared {
            b.check(!attrs.contains("55"), "the cleared mark came back");
        }
        marked_before = attrs.contains("55");
        clear_da_lockout(&m.s.0);
        eprintln!("power cut {i}: {marker:?} + {delay} ms survived (mark set: {marked_before})");
    }
    eprintln!("power_cut_matrix: {} cut points survived", CUTS.len());
    // The next boot converges (the last cut came after provisioning: it
    // opens that volume), and what it stores persists.
    let b1 = m.boot_ok("converge", "ih_test.write=survives");
    b1.check(
        b1.value("data_source") == "/dev/mapper/data",
        "/var is not the data volume",
    );
    b1.check(b1.value("data_write") == "ok", "writing to /var failed");
    m.check_table_finished(&b1);
    b1.check(
        helper_lines(&b1, "provisioning") == 0,
        "provisioned once more after the last cut",
    );
    let b2 = m.boot_ok("later", "");
    b2.check(b2.value("data_probe") == "survives", "the file is gone");
    b2.check(
        b2.value("luks_uuid") == b1.value("luks_uuid"),
        "the volume changed",
    );
}
