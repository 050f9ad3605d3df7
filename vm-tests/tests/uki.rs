//! The measured boot chain: UKIs (ukify 257 + systemd-stub 257 around the
//! dracut initrd) booted by OVMF and systemd-boot with swtpm, PCR 11
//! measured by the stub and systemd-pcrphase, the data volume sealed under
//! the signed PCR policy the UKI carries (.pcrpkey/.pcrsig), an A/B update
//! by systemd-sysupdate and boot counting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use vm_tests::uki::{self, READY};
use vm_tests::{boot, esp, Artifacts, Boot, BootOpts, Scratch, EMERGENCY};

/// The status report says which slot booted, what was done to the data
/// volume under which policy, and each step's outcome and time.
fn check_status(b: &Boot, version: &str, action: &str) {
    let s = uki::status(b);
    b.check(
        s["ok"] == true && s["error"].is_null(),
        &format!("status: not ok: {s}"),
    );
    b.check(s["format"] == 1, "status: format");
    let root = &s["slots"][0];
    b.check(
        root["kind"] == "root" && root["version"] == version,
        &format!("status: slot {root}, expected root version {version}"),
    );
    let d = &s["data"];
    b.check(
        d["action"] == action,
        &format!("status: data action {}", d["action"]),
    );
    b.check(
        d["signed_pcrs"] == serde_json::json!([11]) && d["literal_pcrs"] == serde_json::json!([7]),
        &format!("status: policy {d}"),
    );
    b.check(
        d["signed_key"].as_str().is_some_and(|k| k.len() == 64),
        "status: no key fingerprint",
    );
    b.check(d["recovery_used"] == false, "status: recovery_used");
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = steps.iter().filter_map(|st| st["name"].as_str()).collect();
    b.check(
        names == ["verity", "mount-root", "data", "etc-overlay", "machine-id"],
        &format!("status: steps {names:?}"),
    );
    b.check(
        steps
            .iter()
            .all(|st| st["outcome"] == "done" && st["ms"].as_f64().is_some_and(|ms| ms > 0.0)),
        "status: a step not done, or without its time",
    );
    let total = s["total_ms"].as_f64().unwrap_or(0.0);
    let sum: f64 = steps.iter().filter_map(|st| st["ms"].as_f64()).sum();
    b.check(total >= sum, "status: total time below the steps' sum");
}

/// One boot through the firmware and systemd-boot from the disk in `s`
/// (with the update payload shared when `payload` is given) that reaches
/// the guest report.
fn boot_esp(a: &Artifacts, s: &Scratch, name: &str, payload: Option<&Path>) -> Boot {
    let (disk, vars) = (s.0.join("disk.img"), s.0.join("OVMF_VARS.fd"));
    let o = BootOpts {
        snapshot: false,
        uefi_vars: Some(&vars),
        esp: true,
        share: payload,
        ..BootOpts::new(name, &disk, &s.0)
    };
    let b = boot(a, &o);
    b.check(b.reached, "the guest report never appeared");
    b
}

/// The boot ran `version` (its root slot, its UKI's PCR 11) and unlocked
/// the volume made on boot 1 through the TPM, as the same machine.
fn check_unlocked(b: &Boot, version: &str, pcr11: &str, first: &Boot) {
    b.check(
        b.value("image_version") == version,
        &format!("not version {version}'s root"),
    );
    b.check(
        b.value("pcr11").to_lowercase() == pcr11,
        &format!("PCR 11 is not UKI {version}'s prediction {pcr11}"),
    );
    b.check(
        !b.lines_with("through the TPM (LUKS2").is_empty(),
        "the volume was not unlocked through the TPM",
    );
    b.check(
        b.lines_with("provisioned /dev/vda6").is_empty(),
        "re-provisioned",
    );
    let same = |key: &'static str| (key, first.value(key));
    for (key, want) in [
        same("luks_uuid"),
        ("luks_keyslots", "2".into()),
        same("machine_id"),
        ("data_probe", "uki-a".into()),
    ] {
        b.check(
            b.value(key) == want,
            &format!("{key} is not {want:?}: another volume, re-enrolled, or another machine"),
        );
    }
    // Debian 12's cryptsetup with systemd 252's TPM2 token plugin (the code
    // systemd-cryptsetup unlocks with) opens the same token.
    b.check(
        b.value("data_token_open") == "ok",
        "systemd's token plugin fails",
    );
}

/// The factory disk boots version 1 through systemd-boot, which provisions
/// the data volume under the UKI's signed policy; in stage 2 Debian's
/// systemd-sysupdate installs version 2 (slot B and UKI B with 2 tries)
/// while version 1 runs. The next boot picks version 2, which unlocks the
/// volume with no re-enrollment and is blessed in stage 2. On a fork of the
/// machine taken before that boot, version 2's root is corrupted: it fails
/// in the initrd twice (each time dracut reboots, rd.emergency=reboot), then
/// systemd-boot falls back to version 1, which unlocks. A direct kernel
/// boot without the UKI's key is refused before the TPM is asked.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_uki_boot_status_report_signed_policy_update_boot_counting_fallback() {
    let a = Artifacts::from_env();
    let s = Scratch::new("uki_boot");
    let disk = esp::factory_disk(&a, &s);
    s.uefi_vars();
    let (pred_a, pred_b) = (uki::predictions(&a, "a"), uki::predictions(&a, "b"));
    assert_ne!(pred_a[READY], pred_b[READY], "the two UKIs measure alike");

    let b1 = boot_esp(&a, &s, "v1-update", Some(&esp::payload(&a)));
    b1.check(
        b1.value("pcr11").to_lowercase() == pred_a[READY],
        &format!(
            "PCR 11 in stage 2 is not ukify's prediction {}",
            pred_a[READY]
        ),
    );
    b1.check(
        !b1.lines_with("LUKS2 sealed to TPM2 signed policy over PCRs [11]")
            .is_empty(),
        "the plan does not seal under the UKI's signed policy",
    );
    b1.check(
        !b1.lines_with("provisioned /dev/vda6").is_empty(),
        "the data volume was not provisioned",
    );
    b1.check(b1.value("image_version") == "1", "not slot A's root");
    b1.check(
        b1.value("data_write") == "ok",
        "the data volume is not writable",
    );
    b1.check(
        b1.value("run_pcr_files") == "2",
        "/run/systemd lacks the key and signatures (systemd's tmpfiles copies them from /.extra)",
    );
    b1.check(
        b1.value("data_token_open") == "ok",
        "systemd's token plugin fails",
    );
    check_status(&b1, "1", "provision");
    b1.check(b1.value("sysupdate") == "ok", "systemd-sysupdate failed");
    b1.check(
        b1.value("esp_ukis") == "appliance_1.efi appliance_2+2-0.efi",
        "the ESP does not hold UKI 1 and a counted UKI 2",
    );
    let fallback = esp::fork(&s, "uki_boot_fallback");

    let b2 = boot_esp(&a, &s, "v2", None);
    check_unlocked(&b2, "2", &pred_b[READY], &b1);
    check_status(&b2, "2", "open");
    b2.check(
        b2.value("bless") == "active",
        "systemd-bless-boot did not run",
    );
    b2.check(
        b2.value("esp_ukis") == "appliance_1.efi appliance_2.efi",
        "UKI 2 was not blessed (its counter is still in the name)",
    );
    for l in b1
        .lines_with("step data: done")
        .iter()
        .chain(&b2.lines_with("through the TPM (LUKS2"))
    {
        eprintln!("uki_boot: {}", l.trim());
    }

    // The fork: version 2 as installed, then one byte of its root flipped
    // (a bad build, bit rot): in the ext4 superblock, the first block the
    // kernel reads through dm-verity.
    let fdisk = fallback.0.join("disk.img");
    let slot_b = esp::partition_offset(&fdisk, 3);
    vm_tests::flip_byte(&fdisk, slot_b + 1024 + 16);
    // One machine run: UKI 2 fails twice, each failed initrd reboots
    // (rd.emergency=reboot), then systemd-boot falls back to UKI 1.
    let (vars, verity) = (
        fallback.0.join("OVMF_VARS.fd"),
        "dm-verity rejected a block",
    );
    let o = BootOpts {
        snapshot: false,
        uefi_vars: Some(&vars),
        esp: true,
        reboot: true,
        ..BootOpts::new("v2-broken-then-v1", &fdisk, &fallback.0)
    };
    let b3 = boot(&a, &o);
    b3.check(
        b3.reached,
        "the fallback to version 1 never reached stage 2",
    );
    let cmdlines: Vec<String> = b3
        .lines_with("Kernel command line:")
        .iter()
        .map(|l| {
            let ours = |slot: &str| l.contains(&format!("roothash={}", a.roothash(slot)));
            if ours("b") {
                "2"
            } else if ours("a") {
                "1"
            } else {
                "?"
            }
            .to_string()
        })
        .collect();
    b3.check(
        cmdlines == ["2", "2", "1"],
        &format!("booted UKIs {cmdlines:?}, expected 2, 2, 1"),
    );
    let refusals = esp::console_errors(&b3);
    b3.check(
        refusals.len() == 2 && refusals.iter().all(|l| l.contains(verity)),
        &format!("expected two refusals naming {verity:?}: {refusals:?}"),
    );
    check_unlocked(&b3, "1", &pred_a[READY], &b1);
    b3.check(
        b3.value("esp_ukis") == "appliance_1.efi appliance_2+0-2.efi",
        "UKI 2 did not use up its 2 tries",
    );

    // No UKI, no key: the token's signed policy cannot be met, so the
    // helper says so and stops (nothing opened, nothing written).
    let append = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let o = BootOpts {
        append: &append,
        snapshot: false,
        marker: EMERGENCY,
        ..BootOpts::new("no-uki", &disk, &s.0)
    };
    boot(&a, &o).check_refused(&["signed PCR policy", "no PCR public key"]);
}
