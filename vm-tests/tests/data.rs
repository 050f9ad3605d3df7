//! VM boot scenarios for the data partition: first-boot provisioning on a
//! disk bigger than the image, unlock on later boots, a TPM whose policy no
//! longer matches, no TPM at all, factory reset, and power cuts during
//! provisioning. The TPM scenarios boot through OVMF so the firmware really
//! measures itself, its settings and Secure Boot state into the PCRs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use vm_tests::machine::{helper_lines, Machine, DISK_BYTES};
use vm_tests::{
    boot, clear_da_lockout, copy_range, dbx_update, enlarge, enroll, is_machine_id, key_opens,
    layout, sha256, Boot, BootOpts,
};

/// The first boot's provisioning, checked in the guest and on the host.
fn check_provisioned(m: &Machine, b: &Boot) {
    let r = b.report();
    b.check(
        r["data_source"] == "/dev/mapper/data",
        "/var is not the data volume",
    );
    b.check(r["data_fstype"] == "ext4", "/var is not ext4");
    b.check(
        r["luks_token_type"] == "\"systemd-tpm2\"",
        "luksDump shows no systemd-tpm2 token",
    );
    b.check(
        r["luks_keyslots"] == "2",
        "expected a TPM and a recovery keyslot",
    );
    b.check(
        r["luks_tpm_kdf"] == "PBKDF:pbkdf2",
        "the TPM keyslot does not use PBKDF2",
    );
    b.check(
        r["recovery_key_file"] == "400 root",
        "the recovery key hand-off file is not 0400 root",
    );
    let key = &r["recovery_key"];
    b.check(key.len() == 71, "the recovery key has the wrong format");
    b.check(
        helper_lines(b, key) == 0,
        "the helper logged the recovery key",
    );
    b.check(is_machine_id(&r["machine_id"]), "invalid machine-id");
    b.check(
        helper_lines(b, "step data: done") == 1,
        "no 'step data: done' line",
    );
    // Grown to the disk's end (1 MiB aligned, before the backup GPT), with
    // a UUID of its own, and the in-progress mark cleared.
    let (last, uuid, _) = m.data_entry();
    let disk_last = std::fs::metadata(&m.disk).unwrap().len() / 512 - 1;
    b.check(
        last + 2048 + 33 >= disk_last && last < disk_last - 33,
        &format!("data partition ends at LBA {last}, disk at {disk_last}"),
    );
    let image_uuid = {
        let out = Command::new("sfdisk")
            .arg("-J")
            .arg(&m.a.disk)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["partitiontable"]["partitions"][5]["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    b.check(
        uuid != image_uuid,
        "the grown partition kept the image's UUID",
    );
    b.check(
        r["data_part_uuid"].eq_ignore_ascii_case(&uuid),
        "the guest does not see the partition's new UUID",
    );
    check_table_finished(m, b);
}

/// The in-progress mark is cleared and util-linux accepts the table.
fn check_table_finished(m: &Machine, b: &Boot) {
    let (_, _, attrs) = m.data_entry();
    b.check(!attrs.contains("55"), "the in-progress mark is still set");
    let ok = Command::new("sfdisk")
        .arg("--verify")
        .arg(&m.disk)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    b.check(ok.success(), "sfdisk --verify rejects the table");
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_first_boot_provision() {
    first_boot_provision(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_first_boot_provision() {
    first_boot_provision(true);
}

fn first_boot_provision(pid1: bool) {
    let m = Machine::new_for(pid1, "first_boot_provision", true);
    let b = m.boot_ok("first", "ih_test.write=hello");
    check_provisioned(&m, &b);
    b.check(b.value("data_write") == "ok", "writing to /var failed");
    b.check(
        b.value("data_token_open") == "ok",
        "systemd's token plugin cannot unlock the new volume",
    );
    // Firmware PCRs are really measured (the default policy binds PCR 7).
    for p in ["pcr0", "pcr7"] {
        let v = b.value(p);
        b.check(
            v.len() == 64 && v.chars().any(|c| c != '0'),
            &format!("{p} is not measured: {v:?}"),
        );
        eprintln!("first boot: {p} = {v}");
    }
    eprintln!(
        "first boot: data partition {} bytes on a {} byte disk",
        b.value("data_part_size"),
        b.value("disk_size")
    );
}

/// Boot `b2` opened the volume boot `b1` provisioned, as it was: the file
/// `probe` written then, the same machine-id, fs and LUKS UUIDs, an unlock
/// through the TPM, no provisioning and no new recovery key.
fn check_kept(b1: &Boot, b2: &Boot, probe: &str) {
    let (r1, r2) = (b1.report(), b2.report());
    b2.check(r2["data_probe"] == probe, "the file written before is gone");
    for (key, what) in [
        ("machine_id", "the machine-id changed"),
        ("data_fs_uuid", "the file system was re-made"),
        ("luks_uuid", "the LUKS volume was re-made"),
    ] {
        b2.check(r2[key] == r1[key], what);
    }
    b2.check(
        helper_lines(b2, "through the TPM") == 1,
        "no 'unlocked ... through the TPM' line",
    );
    b2.check(
        helper_lines(b2, "provisioning") == 0,
        "the volume was provisioned again",
    );
    b2.check(
        r2["recovery_key_file"].is_empty(),
        "a recovery key was handed out again",
    );
}

/// Parses a report value that must be a number.
fn number(b: &Boot, key: &str) -> u64 {
    let v = b.value(key);
    v.parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {v:?}\n{}", b.console))
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_data_grows_later() {
    // Provisioned on 4 GiB; the disk is then enlarged to 8 GiB (a VM disk
    // grown, an image moved to a bigger drive): the next boot grows the
    // partition, the LUKS2 mapping and the file system, keeping the data.
    let m = Machine::new("data_grows_later", true);
    let b1 = m.boot_ok("first", "ih_test.write=before-the-grow");
    check_provisioned(&m, &b1);
    let (part1, fs1) = (number(&b1, "data_part_size"), number(&b1, "data_fs_bytes"));
    enlarge(&m.disk, 2 * DISK_BYTES);
    let b2 = m.boot_ok("grown", "");
    let (part2, fs2) = (number(&b2, "data_part_size"), number(&b2, "data_fs_bytes"));
    eprintln!("data_grows_later: partition {part1} -> {part2} bytes, file system {fs1} -> {fs2}");
    check_kept(&b1, &b2, "before-the-grow");
    // The partition takes the whole new 4 GiB (less the backup GPT); the
    // file system its usable size, less its new inode tables (~1.6 %).
    b2.check(
        part2 >= part1 + DISK_BYTES - (2 << 20),
        "the partition did not grow by 4 GiB",
    );
    b2.check(
        fs2 >= fs1 + DISK_BYTES / 10 * 9,
        "the file system does not see the new size",
    );
    for l in b2.lines_with("grew") {
        eprintln!("data_grows_later: {l}");
    }
    b2.check(
        helper_lines(&b2, "the disk grew: grew") == 1,
        "no 'the disk grew' line",
    );
    b2.check(
        helper_lines(&b2, "grew the file system") == 1,
        "no 'grew the file system' line",
    );
    let (last, _, _) = m.data_entry();
    let disk_last = 2 * DISK_BYTES / 512 - 1;
    b2.check(
        last + 2048 + 33 >= disk_last && last < disk_last - 33,
        &format!("data partition ends at LBA {last}, disk at {disk_last}"),
    );
    check_table_finished(&m, &b2);
    // Idempotent: the next boot has nothing to grow, and the grown file
    // system mounts as it was.
    let b3 = m.boot_ok("after", "");
    check_kept(&b1, &b3, "before-the-grow");
    b3.check(
        number(&b3, "data_fs_bytes") == fs2,
        "the file system size changed",
    );
    b3.check(
        helper_lines(&b3, "grew") == 0,
        "a boot on an unchanged disk grew something",
    );
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_second_boot_unlock() {
    second_boot_unlock(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_second_boot_unlock() {
    second_boot_unlock(true);
}

fn second_boot_unlock(pid1: bool) {
    let m = Machine::new_for(pid1, "second_boot_unlock", true);
    let b1 = m.boot_ok("first", "ih_test.write=kept");
    check_provisioned(&m, &b1);
    let b2 = m.boot_ok("second", "");
    check_kept(&b1, &b2, "kept");
    // The opened volume is measured into PCR 15 (systemd's volume-key
    // event): non-zero, and the same on every boot of the same volume.
    let pcr15 = b1.value("pcr15");
    b2.check(
        pcr15.len() == 64 && pcr15.chars().any(|c| c != '0'),
        &format!("PCR 15 was not extended: {pcr15:?}"),
    );
    b2.check(
        b2.value("pcr15") == pcr15,
        "PCR 15 differs between two boots of the same volume",
    );
}

/// Tries `key` on the LUKS header at the data partition's start, with the
/// host's plain cryptsetup (no TPM, no token plugin).
fn recovery_key_opens(m: &Machine, key: &str) -> bool {
    let (off, _) = *layout(&m.a).last().unwrap();
    let hdr = m.s.0.join("luks-header.img");
    let cp = format!(
        "dd if='{}' of='{}' bs=1M iflag=skip_bytes skip={off} count=16 status=none",
        m.disk.display(),
        hdr.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &cp])
        .status()
        .unwrap()
        .success());
    key_opens(&hdr, key)
}

/// The helper's question for try `n` of 3.
fn try_of(n: u32) -> String {
    format!("(try {n} of 3)")
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_tpm_mismatch_pcr_diagnostics_recovery_prompt() {
    let m = Machine::new("tpm_mismatch", true);
    let b1 = m.boot_ok("enroll", "ih_test.write=precious");
    check_provisioned(&m, &b1);
    let key = b1.value("recovery_key");
    // A firmware dbx update: PCR 7 changes, the sealed policy no longer matches.
    dbx_update(m.vars.as_deref().unwrap());
    // The TPM refuses; the person at the serial console types a wrong key,
    // then the right one as a person might (no dashes, upper case).
    let retyped = format!("{}\n", key.replace('-', "").to_uppercase());
    let b2 = m.boot_typed(
        "after_dbx_update",
        "",
        &[(&try_of(1), "wrong-key\n"), (&try_of(2), &retyped)],
    );
    // The refusal still names the PCR that changed (from the value the
    // token recorded at enrollment), then the key is asked for.
    for (needle, n) in [
        ("TPM refused to unseal", 1),
        ("changed since enrollment: PCR 7 (was ", 1),
        ("that key does not open /dev/vda6 (try 1 of 3)", 1),
        ("the recovery key opened /dev/vda6 (try 2 of 3)", 1),
        ("unlocked /dev/vda6 with the recovery key", 1),
        ("re-sealed", 0),
    ] {
        b2.check(helper_lines(&b2, needle) == n, &format!("{n} x {needle:?}"));
    }
    b2.check(
        !b2.console.contains("wrong-key") && !b2.console.contains(&retyped.trim_end()[..16]),
        "what was typed was echoed on the console",
    );
    check_same_volume(&b1, &b2);
    b2.check(
        vm_tests::uki::status(&b2)["data"]["recovery_used"] == true,
        "the status report does not say the recovery key was used",
    );
    // Re-seal on: asked again (the last boot did not re-seal), then a new
    // TPM keyslot is sealed to the new PCR 7 ...
    let typed = format!("{key}\n");
    let b3 = m.boot_typed(
        "reseal",
        "initrd_helper.reseal_after_recovery=1",
        &[(&try_of(1), &typed)],
    );
    b3.check(
        helper_lines(&b3, "re-sealed /dev/vda6 to TPM2 PCRs [7]") == 1,
        "no re-seal line",
    );
    check_same_volume(&b1, &b3);
    // ... so the next boot unlocks through the TPM by itself, and the
    // recovery key still opens the volume.
    let b4 = m.boot_ok("after_reseal", &format!("ih_test.recovery={key}"));
    b4.check(
        helper_lines(&b4, "unlocked /dev/vda6 through the TPM") == 1
            && helper_lines(&b4, "asking for the recovery key") == 0,
        "the re-sealed volume did not unlock through the TPM",
    );
    check_same_volume(&b1, &b4);
    b4.check(b4.value("luks_keyslots") == "2", "keyslots left behind");
    b4.check(
        b4.value("recovery_open") == "ok" && recovery_key_opens(&m, &key),
        "the recovery key failed in the guest or on the host",
    );
}

/// The volume the first boot made, with its file, is what this boot has.
fn check_same_volume(first: &Boot, b: &Boot) {
    b.check(b.value("data_probe") == "precious", "the file is gone");
    b.check(
        b.value("luks_uuid") == first.value("luks_uuid"),
        "the volume was re-made",
    );
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_no_tpm() {
    let m = Machine::new("no_tpm", false);
    // A blank data partition is not provisioned unencrypted.
    let digest = sha256(&m.disk);
    let b1 = m.boot_refused("blank_no_tpm", "", false);
    b1.check_refused(&["no usable TPM2", "refusing to provision"]);
    b1.check(sha256(&m.disk) == digest, "the disk changed");
    // A provisioned one without its TPM: the recovery key is asked for, and
    // it opens the volume.
    let b2 = m.boot_ok("with_tpm", "ih_test.write=mine");
    check_provisioned(&m, &b2);
    let key = format!("{}\n", b2.value("recovery_key"));
    let o = BootOpts {
        tpm: false,
        typed: vec![(try_of(1), key)],
        ..m.opts("provisioned_no_tpm", "ih_test.poweroff")
    };
    let b3 = boot(&m.a, &o);
    b3.check(
        b3.reached && b3.value("helper_unit_failed") == "0",
        "the boot did not complete",
    );
    b3.check(
        helper_lines(&b3, "the recovery key of /dev/vda6 will be asked for") == 1
            && helper_lines(&b3, "unlocked /dev/vda6 with the recovery key") == 1,
        "not unlocked with the recovery key",
    );
    b3.check(b3.value("data_probe") == "mine", "the file is gone");
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_factory_reset() {
    factory_reset(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_factory_reset() {
    factory_reset(true);
}

fn factory_reset(pid1: bool) {
    let m = Machine::new_for(pid1, "factory_reset", true);
    let b1 = m.boot_ok("before", "ih_test.write=old-data");
    check_provisioned(&m, &b1);
    let reset = "systemd.factory_reset=1";
    let b2 = m.boot_ok("reset", &format!("{reset} ih_test.write=new-data"));
    let (r1, r2) = (b1.report(), b2.report());
    b2.check(
        r2["data_probe"].is_empty(),
        "data from before the reset survived",
    );
    b2.check(r2["data_write"] == "ok", "writing after the reset failed");
    b2.check(
        r2["machine_id"] != r1["machine_id"],
        "the machine-id survived the reset",
    );
    b2.check(
        is_machine_id(&r2["machine_id"]),
        "invalid machine-id after the reset",
    );
    b2.check(
        r2["luks_uuid"] != r1["luks_uuid"],
        "the LUKS volume survived the reset",
    );
    b2.check(
        r2["luks_token_type"] == "\"systemd-tpm2\"" && r2["luks_keyslots"] == "2",
        "the new volume lacks its token or keyslots",
    );
    b2.check(
        r2["recovery_key"].len() == 71 && r2["recovery_key"] != r1["recovery_key"],
        "no new recovery key after the reset",
    );
    // The flag left on the command line: no second reset.
    let b3 = m.boot_ok("flag_still_on", reset);
    let r3 = b3.report();
    b3.check(r3["data_probe"] == "new-data", "the reset repeated");
    b3.check(
        r3["machine_id"] == r2["machine_id"],
        "the machine-id changed again",
    );
    b3.check(
        helper_lines(&b3, "already carried out") == 1,
        "no warning that the reset was already done",
    );
    // And a boot without the flag keeps it all.
    let b4 = m.boot_ok("flag_removed", "");
    let r4 = b4.report();
    b4.check(
        r4["data_probe"] == "new-data",
        "data written after the reset is gone",
    );
    b4.check(
        r4["machine_id"] == r2["machine_id"],
        "the machine-id changed",
    );
    b4.check(r4["luks_uuid"] == r2["luks_uuid"], "the volume changed");
}

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
    let m = Machine::new("power_cut_matrix", true);
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
    check_table_finished(&m, &b1);
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

/// Puts the volume image `vol` onto the data partition (the attacker
/// swapping the machine's volume for theirs).
fn plant_volume(m: &Machine, vol: &std::path::Path) {
    let (off, len) = *layout(&m.a).last().unwrap();
    assert_eq!(std::fs::metadata(vol).unwrap().len(), len, "volume size");
    copy_range(vol, 0, len, &m.disk, off);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_foreign_volume_refused() {
    let m = Machine::new("foreign_volume_refused", false);
    let (_, len) = *layout(&m.a).last().unwrap();
    let vol = m.s.0.join("attacker.img");
    std::fs::File::create(&vol).unwrap().set_len(len).unwrap();
    // Boot 1: the machine provisions its own volume; an attacker in the
    // running system makes a volume sealed to exactly our policy (PCR 7)
    // with Debian's cryptsetup + systemd-cryptenroll on a second disk.
    let append = "ih_test.poweroff ih_test.plant";
    let o = BootOpts {
        extra_disk: Some(&vol),
        ..m.opts("attacker", append)
    };
    let b1 = boot(&m.a, &o);
    b1.check(b1.reached, "the guest report never appeared");
    b1.check(
        b1.value("plant") == "ok",
        "the attacker's volume was not made",
    );
    b1.check(
        b1.value("vdb_luks_token_type") == "\"systemd-tpm2\"",
        "the attacker's volume has no systemd-tpm2 token",
    );
    // The swap: the TPM would unseal that token; the binding refuses it.
    plant_volume(&m, &vol);
    let digest = sha256(&m.disk);
    let b = m.boot_refused("same_policy", "", true);
    b.check_refused(&["did not provision", "names another volume", "recovery key"]);
    b.check(sha256(&m.disk) == digest, "the disk changed");
    b.check(
        helper_lines(&b, "unlocked") == 0,
        "the helper unlocked a foreign volume",
    );
    // A volume sealed to another PCR set (an attacker's `initrd-helper
    // encrypt --pcrs 16`): refused before anything is unsealed.
    std::fs::File::create(&vol).unwrap().set_len(0).unwrap();
    std::fs::File::create(&vol).unwrap().set_len(len).unwrap();
    let e = enroll(&m.s.0, &vol, "16");
    assert!(e["luks_uuid"].as_str().is_some_and(|u| u.len() == 36));
    plant_volume(&m, &vol);
    let digest = sha256(&m.disk);
    let b = m.boot_refused("other_policy", "", true);
    b.check_refused(&[
        "did not provision",
        "sealed to sha256 PCRs [16]",
        "recovery key",
    ]);
    b.check(sha256(&m.disk) == digest, "the disk changed");
}
