//! dm-verity options as systemd spells them (`systemd.verity_root_options=`,
//! crypttab/veritytab style), parsed into a typed value. Everything here is
//! security-relevant: an unknown or malformed option stops the boot.

use serde::Serialize;

/// What the kernel does when a block does not match the hash tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnCorruption {
    /// Kernel default (and systemd's): the read fails with EIO.
    #[default]
    IoError,
    Ignore,
    Restart,
    Panic,
}

impl OnCorruption {
    pub fn name(self) -> &'static str {
        match self {
            OnCorruption::IoError => "io-error",
            OnCorruption::Ignore => "ignore",
            OnCorruption::Restart => "restart",
            OnCorruption::Panic => "panic",
        }
    }
}

/// Where the PKCS#7 signature of the root hash comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signature {
    Path(String),
    Inline(#[serde(skip)] Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct VerityOptions {
    pub on_corruption: OnCorruption,
    pub ignore_zero_blocks: bool,
    pub check_at_most_once: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Options systemd knows that we do not support: our hash partition carries
/// a verity superblock, so geometry overrides are refused rather than ignored.
const UNSUPPORTED: [&str; 12] = [
    "superblock",
    "format",
    "data-block-size",
    "hash-block-size",
    "data-blocks",
    "hash-offset",
    "salt",
    "uuid",
    "hash",
    "fec-device",
    "fec-offset",
    "fec-roots",
];

fn set_corruption(o: &mut VerityOptions, c: OnCorruption) -> Result<(), String> {
    if o.on_corruption != OnCorruption::IoError && o.on_corruption != c {
        return Err("only one of ignore-, restart- and panic-on-corruption may be given".into());
    }
    o.on_corruption = c;
    Ok(())
}

/// PKCS#7 root hash signatures are a few KiB; a larger file is not one.
pub const MAX_SIGNATURE: usize = 64 * 1024;

/// The kernel takes a DER-encoded PKCS#7 message: one ASN.1 SEQUENCE whose
/// length is the whole input. Checked here so a PEM file, an empty file or
/// a truncated copy is named as such (the kernel only says EINVAL/EBADMSG).
pub fn check_signature(b: &[u8]) -> Result<(), String> {
    if b.is_empty() {
        return Err("is empty".into());
    }
    if b.len() > MAX_SIGNATURE {
        return Err(format!("is over {MAX_SIGNATURE} bytes: not a signature"));
    }
    if b.starts_with(b"-----BEGIN") {
        return Err("is PEM; the kernel wants DER (openssl pkcs7 -outform DER)".into());
    }
    let len = match b {
        [0x30, n, ..] if *n < 0x80 => Some(2 + usize::from(*n)),
        [0x30, 0x81, n, ..] => Some(3 + usize::from(*n)),
        [0x30, 0x82, h, l, ..] => Some(4 + (usize::from(*h) << 8 | usize::from(*l))),
        [0x30, 0x83, a, h, l, ..] => {
            Some(5 + (usize::from(*a) << 16 | usize::from(*h) << 8 | usize::from(*l)))
        }
        _ => None,
    };
    match len {
        None => Err("is not a DER-encoded PKCS#7 signature".into()),
        Some(n) if n != b.len() => Err(format!(
            "is {} bytes but its DER header says {n} (truncated or padded)",
            b.len()
        )),
        Some(_) => Ok(()),
    }
}

fn parse_signature(v: &str) -> Result<Signature, String> {
    if let Some(b) = v.strip_prefix("base64:") {
        let sig =
            crate::b64::decode(b).map_err(|_| "root-hash-signature=base64: is not valid base64")?;
        check_signature(&sig).map_err(|e| format!("root-hash-signature=base64: {e}"))?;
        return Ok(Signature::Inline(sig));
    }
    if v.starts_with('/') {
        return Ok(Signature::Path(v.to_string()));
    }
    Err("root-hash-signature= takes an absolute path or base64:DATA".into())
}

fn take(o: &mut VerityOptions, word: &str) -> Result<(), String> {
    let (k, v) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    match (k, v) {
        ("ignore-corruption", None) => set_corruption(o, OnCorruption::Ignore)?,
        ("restart-on-corruption", None) => set_corruption(o, OnCorruption::Restart)?,
        ("panic-on-corruption", None) => set_corruption(o, OnCorruption::Panic)?,
        ("ignore-zero-blocks", None) => o.ignore_zero_blocks = true,
        ("check-at-most-once", None) => o.check_at_most_once = true,
        ("root-hash-signature", Some(v)) => o.signature = Some(parse_signature(v)?),
        (k, _) if UNSUPPORTED.contains(&k) => {
            return Err(format!(
                "{k}= is not supported (the verity superblock defines it)"
            ))
        }
        (k, _) => return Err(format!("unknown verity option {k:?}")),
    }
    Ok(())
}

/// Parses a comma-separated option list.
pub fn parse_options(s: &str) -> Result<VerityOptions, String> {
    let mut o = VerityOptions::default();
    for word in s.split(',').filter(|w| !w.is_empty()) {
        take(&mut o, word)?;
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_and_signature() {
        let o = parse_options(
            "panic-on-corruption,check-at-most-once,root-hash-signature=/run/sig.p7s",
        )
        .unwrap();
        assert_eq!(o.on_corruption, OnCorruption::Panic);
        assert!(o.check_at_most_once && !o.ignore_zero_blocks);
        assert_eq!(o.signature, Some(Signature::Path("/run/sig.p7s".into())));
        let o = parse_options("root-hash-signature=base64:MAMBAgM=").unwrap();
        assert_eq!(o.signature, Some(Signature::Inline(vec![0x30, 3, 1, 2, 3])));
        assert_eq!(parse_options("").unwrap(), VerityOptions::default());
    }

    #[test]
    fn refuses_unknown_conflicting_and_unsupported() {
        for bad in [
            "bogus",
            "ignore-corruption,panic-on-corruption",
            "hash-offset=4096",
            "root-hash-signature=relative",
            "root-hash-signature=base64:!!",
            "ignore-zero-blocks=yes",
        ] {
            assert!(parse_options(bad).is_err(), "{bad}");
        }
    }
}
