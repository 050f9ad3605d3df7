//! TPM2 + LUKS2 interop in the guest: a volume enrolled by
//! `initrd-helper encrypt` against the test's software TPM is unlocked by
//! Debian 12's own cryptsetup (systemd's token plugin) and systemd-cryptsetup
//! through /dev/tpmrm0, which the host cannot do (no kernel TPM there); so
//! is the data volume the helper provisions during that boot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_tests::{boot, enroll, key_opens, Artifacts, BootOpts, Scratch};

/// PCR 16 (debug): no firmware or kernel extends it, and swtpm's
/// startup-clear resets it at each start, so the value sealed to on the host
/// is the value the guest sees.
const PCRS: &str = "16";

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_systemd_cryptsetup_interop() {
    let a = Artifacts::from_env();
    let s = Scratch::new("systemd_cryptsetup_interop");
    let img = s.0.join("data.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let e = enroll(&s.0, &img, PCRS);
    assert_eq!(e["pcrs"], serde_json::json!([16]));
    assert_eq!(e["recovery_key"].as_str().map(str::len), Some(71));

    let append = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let opts = BootOpts {
        append: &append,
        extra_disk: Some(&img),
        ..BootOpts::new("interop", &a.disk, &s.0)
    };
    let b = boot(&a, &opts);
    b.check(b.reached, "the guest report never appeared");
    b.check(
        b.value("vdb_luks_token_type") == "\"systemd-tpm2\"",
        "the guest's cryptsetup does not see our token",
    );
    b.check(
        b.value("vdb_token_open") == "ok",
        "cryptsetup --token-only (systemd-tpm2 plugin) did not unlock",
    );
    b.check(
        b.value("vdb_systemd_cryptsetup") == "ok",
        "systemd-cryptsetup tpm2-device=auto did not unlock",
    );
    // The data volume the helper provisioned at boot, too.
    b.check(
        b.value("luks_token_type") == "\"systemd-tpm2\"",
        "luksDump of the data partition shows no systemd-tpm2 token",
    );
    b.check(
        b.value("data_token_open") == "ok",
        "systemd's token plugin did not unlock the helper's data volume",
    );

    // The recovery key handed out by `encrypt` opens it with plain cryptsetup.
    let key = e["recovery_key"].as_str().unwrap();
    assert!(
        key_opens(&img, key),
        "the recovery key did not open the volume"
    );
}
