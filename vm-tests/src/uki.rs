//! The UKIs build-image.sh makes (ukify 257, one per root slot, PCR 11
//! signed for the boot phases) and the PCR 11 values ukify predicted.

use crate::Artifacts;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// systemd-pcrphase's phase names, in boot order, as ukify signs them.
pub const ENTER_INITRD: &str = "enter-initrd";
pub const READY: &str = "enter-initrd:leave-initrd:sysinit:ready";

/// The UKI booting root slot `slot` (`a` or `b`).
pub fn path(a: &Artifacts, slot: &str) -> PathBuf {
    a.disk.with_file_name(format!("uki-{slot}.efi"))
}

/// ukify's PCR 11 (sha256) predictions for that UKI, by phase path. Panics
/// unless all four phases are there, each with 64 hex digits.
pub fn predictions(a: &Artifacts, slot: &str) -> BTreeMap<String, String> {
    let p = a.disk.with_file_name(format!("uki-{slot}.efi.pcr11"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let m: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_lowercase()))
        .collect();
    assert_eq!(m.len(), 4, "{}: expected 4 phases: {text}", p.display());
    for (phase, hash) in &m {
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: phase {phase}: {hash:?}",
            p.display()
        );
    }
    assert!(
        m.contains_key(ENTER_INITRD) && m.contains_key(READY),
        "{text}"
    );
    m
}

/// The helper's status report (/run/initrd-helper/status.json), which the
/// guest's probe prints as hex chunks. Panics when it is missing or not JSON.
pub fn status(b: &crate::Boot) -> serde_json::Value {
    let n: usize = b.value("status_chunks").parse().unwrap_or(0);
    b.check(n > 0, "the guest found no status report");
    let hex: String = (1..=n)
        .map(|i| b.value(&format!("status_hex_{i}")))
        .collect();
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let v = bytes.and_then(|b| serde_json::from_slice(&b).ok());
    b.check(v.is_some(), "the status report is not JSON");
    v.unwrap_or_default()
}
