//! VM boot scenarios for the data partition: a machine's life (first-boot
//! provisioning on a disk bigger than the image, unlock on later boots,
//! factory reset), a disk grown later, a TPM whose policy no longer
//! matches, no TPM at all, a foreign volume. The scenarios that check PCRs
//! boot through OVMF so the firmware really measures itself, its settings
//! and Secure Boot state into them; the others boot the kernel directly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use vm_tests::machine::{helper_lines, Machine, DISK_BYTES};
use vm_tests::{
    boot, copy_range, dbx_update, enlarge, enroll, is_machine_id, key_opens, layout, sha256, Boot,
    BootOpts,
};

/// The first boot's provisioning, checked in the guest and on the host.
fn check_provisioned(m: &Machine, b: &Boot) {
    let r = b.report();
    b.check(
        r["data_source"] == "/dev/mapper/data",
        "/var is not the data volume",
    );
    b.expect(&[
        ("data_fstype", "ext4", "/var is not ext4"),
        (
            "luks_token_type",
            "\"systemd-tpm2\"",
            "luksDump shows no systemd-tpm2 token",
        ),
        (
            "luks_keyslots",
            "2",
            "expected a TPM and a recovery keyslot",
        ),
        (
            "luks_tpm_kdf",
            "PBKDF:pbkdf2",
            "the TPM keyslot does not use PBKDF2",
        ),
        (
            "recovery_key_file",
            "400 root",
            "the recovery key hand-off file is not 0400 root",
        ),
    ]);
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
    m.check_table_finished(b);
}

/// The first boot's extras beyond `check_provisioned`: the write to /var,
/// systemd's token plugin opening the new volume, and real firmware PCRs
/// (the default policy binds PCR 7).
fn check_first_boot(b: &Boot) {
    b.check(b.value("data_write") == "ok", "writing to /var failed");
    b.check(
        b.value("data_token_open") == "ok",
        "systemd's token plugin cannot unlock the new volume",
    );
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
    // A direct kernel boot: firmware measurements add nothing to a grow.
    let m = Machine::new("data_grows_later", false);
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
    m.check_table_finished(&b2);
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

/// What every boot of the image shows (the walking skeleton): `/` is
/// read-only, `/etc` an overlay on tmpfs that takes a write, a valid
/// machine-id stage-2 systemd says nothing about, the helper finished (its
/// unit, or PID 1's switch root) with its step lines on the console and in
/// the journal, and no failed units.
fn check_skeleton(b: &Boot) {
    let r = b.report();
    b.check(
        r["root_options"].split(',').next() == Some("ro"),
        "/ is not mounted read-only",
    );
    b.expect(&[
        ("root_write", "refused", "writing to / succeeded"),
        ("etc_fstype", "overlay", "/etc is not an overlay"),
        (
            "etc_upper_fstype",
            "tmpfs",
            "the /etc upper layer is not on tmpfs",
        ),
        (
            "etc_probe_existed",
            "no",
            "/etc/ih-probe is there: a write to /etc survived a reboot",
        ),
        ("etc_write", "ok", "writing to /etc failed"),
        (
            "pid1_machine_id_msgs",
            "0",
            "systemd (stage 2) logged about the machine-id",
        ),
        ("failed_units", "", "failed units in the booted system"),
    ]);
    b.check(
        is_machine_id(&r["machine_id"]),
        "/etc/machine-id is not 32 hex digits",
    );
    // PID-1 mode has no unit: its PID 1 says it switched root instead.
    b.check(
        if b.pid1 {
            !b.lines_with("PID 1: switching root to /sysroot").is_empty()
        } else {
            r["helper_unit_finished"] == "1" && r["helper_unit_failed"] == "0"
        },
        "the helper did not finish, or logged a failure",
    );
    let journal_lines: usize = r["helper_journal_lines"].parse().unwrap_or(0);
    b.check(
        journal_lines >= 5,
        "the helper's lines are missing from journalctl -b",
    );
    for step in ["mount-root", "data", "etc-overlay", "machine-id"] {
        let line = format!("step {step}: done in");
        b.check(
            !b.lines_with(&line).is_empty(),
            &format!("no console line {line:?}"),
        );
    }
}

/// A machine's life on one disk and TPM, each boot the walking skeleton
/// (`check_skeleton`): the first boot provisions the data partition;
/// `systemd.factory_reset=1` makes a new volume, machine-id and recovery
/// key; the flag left on resets nothing more; a boot without it opens the
/// same volume through the TPM. The two boots after the reset are the
/// later-boot unlock (same file, machine-id, fs and LUKS UUIDs, no
/// provisioning, no new key, PCR 15 the same on every boot of one volume).
/// After four boots with writes enabled, every partition but the data
/// partition is as flashed.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_provision_unlock_factory_reset() {
    provision_unlock_factory_reset(false);
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_pid1_provision_unlock_factory_reset() {
    provision_unlock_factory_reset(true);
}

fn provision_unlock_factory_reset(pid1: bool) {
    let m = Machine::new_for(pid1, "provision_unlock_factory_reset", true);
    let b1 = m.boot_ok("first", "ih_test.write=old-data");
    check_skeleton(&b1);
    check_provisioned(&m, &b1);
    check_first_boot(&b1);
    let reset = "systemd.factory_reset=1";
    let b2 = m.boot_ok("reset", &format!("{reset} ih_test.write=new-data"));
    check_skeleton(&b2);
    check_provisioned(&m, &b2);
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
        r2["luks_uuid"] != r1["luks_uuid"],
        "the LUKS volume survived the reset",
    );
    b2.check(
        r2["recovery_key"] != r1["recovery_key"],
        "no new recovery key after the reset",
    );
    // The flag left on the command line: no second reset, the volume opens.
    let b3 = m.boot_ok("flag_still_on", reset);
    check_kept(&b2, &b3, "new-data");
    b3.check(
        helper_lines(&b3, "already carried out") == 1,
        "no warning that the reset was already done",
    );
    // And a boot without the flag keeps it all.
    let b4 = m.boot_ok("flag_removed", "");
    check_skeleton(&b4);
    check_kept(&b2, &b4, "new-data");
    b4.check(
        m.slots_unchanged(),
        "a root slot or the ESP changed although the root is read-only",
    );
    // The opened volume is measured into PCR 15 (systemd's volume-key
    // event): non-zero, the same on every boot of one volume, another
    // for the volume the reset replaced.
    let pcr15 = b2.value("pcr15");
    b4.check(
        pcr15.len() == 64 && pcr15.chars().any(|c| c != '0'),
        &format!("PCR 15 was not extended: {pcr15:?}"),
    );
    b4.check(
        b3.value("pcr15") == pcr15 && b4.value("pcr15") == pcr15,
        "PCR 15 differs between boots of the same volume",
    );
    b4.check(
        b1.value("pcr15") != pcr15,
        "PCR 15 is the same for the volume the reset replaced",
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
