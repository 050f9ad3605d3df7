//! The measured boot chain: UKIs (ukify 257 + systemd-stub 257 around the
//! dracut initrd) booted by OVMF with swtpm, PCR 11 measured by the stub
//! and systemd-pcrphase, and the data volume sealed under the signed PCR
//! policy the UKI carries (.pcrpkey/.pcrsig).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_tests::uki::{self, READY};
use vm_tests::{boot, Artifacts, BootOpts, Scratch, EMERGENCY};

/// The status report says which slot booted, what was done to the data
/// volume under which policy, and each step's outcome and time.
fn check_status(b: &vm_tests::Boot, version: &str, action: &str) {
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

/// One boot through the firmware of `uki` (slot A's or B's) on `disk`.
fn boot_uki(
    a: &Artifacts,
    s: &Scratch,
    name: &str,
    disk: &std::path::Path,
    slot: &str,
) -> vm_tests::Boot {
    let vars = s.0.join("OVMF_VARS.fd");
    let uki = uki::path(a, slot);
    let o = BootOpts {
        snapshot: false,
        uefi_vars: Some(&vars),
        uki: Some(&uki),
        ..BootOpts::new(name, disk, &s.0)
    };
    boot(a, &o)
}

/// Boot 1 (UKI A) provisions the data volume under the signed policy;
/// boot 2 (UKI B: the other slot and version, so another PCR 11, signed by
/// the same key) unlocks it with no re-enrollment; a boot without the
/// UKI's key (direct kernel boot) is refused before the TPM is asked.
/// Stage 2 reads the helper's status report on both UKI boots.
#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_uki_boot_signed_policy_and_status_report() {
    let a = Artifacts::from_env();
    let s = Scratch::new("uki_boot");
    let disk = s.copy_disk(&a.disk);
    s.uefi_vars();
    let (pred_a, pred_b) = (uki::predictions(&a, "a"), uki::predictions(&a, "b"));
    assert_ne!(pred_a[READY], pred_b[READY], "the two UKIs measure alike");

    let b1 = boot_uki(&a, &s, "uki-a", &disk, "a");
    b1.check(b1.reached, "the guest report never appeared");
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
        !b1.lines_with("step data: done").is_empty()
            && !b1.lines_with("provisioned /dev/vda6").is_empty(),
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
    // Debian 12's cryptsetup with systemd 252's token plugin satisfies the
    // same signed policy in stage 2 (phase "ready", signed by ukify too).
    b1.check(
        b1.value("data_token_open") == "ok",
        "systemd's token plugin does not unlock the signed-policy token",
    );
    let (id, luks) = (b1.value("machine_id"), b1.value("luks_uuid"));
    check_status(&b1, "1", "provision");

    let b2 = boot_uki(&a, &s, "uki-b", &disk, "b");
    b2.check(
        b2.reached,
        "the guest report never appeared after the update",
    );
    b2.check(
        b2.value("pcr11").to_lowercase() == pred_b[READY],
        "PCR 11 under UKI B is not its prediction",
    );
    b2.check(b2.value("image_version") == "2", "not slot B's root");
    b2.check(
        !b2.lines_with("through the TPM (LUKS2").is_empty(),
        "the volume was not unlocked through the TPM under the updated UKI",
    );
    b2.check(
        b2.lines_with("provisioned /dev/vda6").is_empty(),
        "the update re-provisioned",
    );
    b2.check(b2.value("luks_uuid") == luks, "another volume");
    b2.check(
        b2.value("luks_keyslots") == "2",
        "keyslots changed: re-enrolled?",
    );
    b2.check(b2.value("machine_id") == id, "the machine ID changed");
    b2.check(b2.value("data_probe") == "uki-a", "boot 1's data is gone");
    b2.check(
        b2.value("data_token_open") == "ok",
        "the token plugin fails under UKI B",
    );
    check_status(&b2, "2", "open");
    // The figures for README (cargo test -- --nocapture shows them).
    for l in b1
        .lines_with("step data: done")
        .iter()
        .chain(&b2.lines_with("through the TPM (LUKS2"))
    {
        eprintln!("uki_boot: {}", l.trim());
    }

    // No UKI, no key: the token's signed policy cannot be met, so the
    // helper says so and stops (nothing opened, nothing written).
    let append = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let o = BootOpts {
        append: &append,
        snapshot: false,
        marker: EMERGENCY,
        ..BootOpts::new("no-uki", &disk, &s.0)
    };
    let b3 = boot(&a, &o);
    b3.check_refused(&["signed PCR policy", "no PCR public key"]);
}
