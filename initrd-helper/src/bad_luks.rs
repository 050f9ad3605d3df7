//! The bad-input matrix, LUKS half: malformed or foreign LUKS2 headers on
//! the data partition, each read the way the boot reads it before any TPM
//! is asked (`provision::our_token`). Every case must end in one bounded
//! line naming the cause, with the volume byte-identical afterwards.

use crate::provision;
use crate::sys::luks;
use crate::token::{self, TpmToken};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Longest error line allowed (as in the disk half).
const MAX_LINE: usize = 900;
/// The secondary LUKS2 header's offset with libcryptsetup's default
/// 16 KiB metadata area.
const SECONDARY: usize = 16384;

fn our_token(slot: u32, pcrs: &[u8]) -> Value {
    token::token_json(&TpmToken {
        keyslot: slot,
        blob: &token::blob(&[1, 2], &[3]),
        pcrs,
        policy_hash: &[0; 32],
        srk_name: &[0x00, 0x0b],
        signed: None,
        pcr_values: &[],
    })
}

/// A fresh LUKS2 volume (17 MiB sparse file) with `token` as its only token.
fn volume(dir: &Path, token: impl Fn(u32) -> Value) -> PathBuf {
    let p = dir.join("data.img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(17 << 20).unwrap();
    luks::format_luks2(&p, b"tpm-passphrase", b"recovery-key", token).unwrap();
    p
}

fn flip(p: &Path, offsets: &[usize]) {
    let mut b = std::fs::read(p).unwrap();
    for &o in offsets {
        b[o] ^= 0x5a;
    }
    std::fs::write(p, b).unwrap();
}

type Mutate = fn(&Path);
/// Name, the token the volume is made with, what is then done to it, and
/// the words the line must say.
type Case = (&'static str, fn(u32) -> Value, Mutate, &'static str);

fn cases() -> Vec<Case> {
    let none: Mutate = |_| {};
    let ours: fn(u32) -> Value = |s| our_token(s, &[7]);
    vec![
        (
            "only a FIDO2 token",
            |s| json!({"type": "systemd-fido2", "keyslots": [s.to_string()]}),
            none,
            "no systemd-tpm2 token",
        ),
        (
            "token sealed to PCR 16",
            |s| our_token(s, &[16]),
            none,
            "did not provision",
        ),
        (
            "token blob not base64",
            |s| {
                let mut t = our_token(s, &[7]);
                t["tpm2-blob"] = json!("%%%");
                t
            },
            none,
            "tpm2-blob",
        ),
        (
            "both JSON areas damaged",
            ours,
            |p| flip(p, &[4096 + 20, SECONDARY + 4096 + 20]),
            "primary header: checksum mismatch (damaged); secondary: checksum mismatch",
        ),
        (
            "both binary headers damaged",
            ours,
            |p| flip(p, &[24, SECONDARY + 24]),
            "secondary: checksum mismatch",
        ),
        (
            "LUKS1 version field",
            ours,
            |p| {
                let mut b = std::fs::read(p).unwrap();
                b[6..8].copy_from_slice(&[0, 1]);
                std::fs::write(p, b).unwrap();
            },
            "a LUKS1 volume",
        ),
        (
            "truncated inside the header",
            ours,
            |p| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(8192)
                    .unwrap()
            },
            "primary header: the device ends inside it (truncated)",
        ),
    ]
}

/// The cases for README's table: kind, name, the words the line says.
pub(crate) fn table() -> Vec<(&'static str, &'static str, &'static str)> {
    cases()
        .into_iter()
        .map(|(name, _, _, needle)| ("LUKS2 header", name, needle))
        .collect()
}

#[test]
fn every_bad_luks_header_ends_in_one_clear_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = volume(dir.path(), |s| our_token(s, &[7]));
    provision::our_token(&good, &crate::policy::Policy::literal(&[7]))
        .expect("our own token is accepted");
    let mut n = 0;
    for (name, token, mutate, needle) in cases() {
        let dir = tempfile::tempdir().unwrap();
        let p = volume(dir.path(), token);
        mutate(&p);
        let before = std::fs::read(&p).unwrap();
        let e = provision::our_token(&p, &crate::policy::Policy::literal(&[7])).expect_err(name);
        let line = crate::inputs::error_line(&e);
        assert_eq!(
            std::fs::read(&p).unwrap(),
            before,
            "{name}: the volume changed"
        );
        assert!(!line.contains('\n'), "{name}: more than one line: {line}");
        assert!(line.len() <= MAX_LINE, "{name}: {} characters", line.len());
        assert!(
            line.contains(needle),
            "{name}: {line:?} does not say {needle:?}"
        );
        eprintln!("{name}: {line}");
        n += 1;
    }
    eprintln!("bad LUKS headers: {n} cases");
}
