//! The `systemd-tpm2` LUKS2 token and the recovery key, in the formats
//! systemd uses, so `systemd-cryptsetup` and `cryptsetup` (with systemd's
//! token plugin) unlock what we enroll:
//! - `tpm2-blob`: base64 of TPM2B_PRIVATE || TPM2B_PUBLIC of the sealed object;
//! - the keyslot passphrase is the base64 of the unsealed secret;
//! - the recovery key is 32 random bytes as 64 "modhex" characters in
//!   groups of 8 joined by `-` (systemd-cryptenroll's format).

use crate::b64;
use serde_json::{json, Value};

/// A TPM2B: big-endian u16 size, then the bytes.
fn tpm2b(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 2);
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
    out
}

/// `private`: the TPM2B_PRIVATE buffer contents; `public`: a marshalled TPMT_PUBLIC.
pub fn blob(private: &[u8], public: &[u8]) -> Vec<u8> {
    let mut b = tpm2b(private);
    b.extend_from_slice(&tpm2b(public));
    b
}

pub struct TpmToken<'a> {
    pub keyslot: u32,
    pub blob: &'a [u8],
    pub pcrs: &'a [u8],
    pub policy_hash: &'a [u8],
}

/// The token JSON as systemd 252 writes it (hyphenated keys).
pub fn token_json(t: &TpmToken) -> Value {
    json!({
        "type": "systemd-tpm2",
        "keyslots": [t.keyslot.to_string()],
        "tpm2-blob": b64::encode(t.blob),
        "tpm2-pcrs": t.pcrs,
        "tpm2-pcr-bank": "sha256",
        "tpm2-primary-alg": "ecc",
        "tpm2-policy-hash": t.policy_hash.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "tpm2-pin": false,
    })
}

/// The LUKS passphrase for an unsealed TPM secret (systemd's rule).
pub fn tpm_passphrase(secret: &[u8]) -> String {
    b64::encode(secret)
}

/// "modhex": the 16 letters that sit at the same place on most keyboard layouts.
const MODHEX: &[u8; 16] = b"cbdefghijklnrtuv";

/// A recovery key from 32 random bytes: 8 groups of 8 modhex characters.
pub fn recovery_key(bytes: &[u8; 32]) -> String {
    let chars: Vec<u8> = bytes
        .iter()
        .flat_map(|b| [MODHEX[(b >> 4) as usize], MODHEX[(b & 15) as usize]])
        .collect();
    chars
        .chunks(8)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_two_tpm2b() {
        assert_eq!(blob(&[1, 2], &[3]), vec![0, 2, 1, 2, 0, 1, 3]);
    }

    #[test]
    fn token_has_systemd_252_fields() {
        let t = TpmToken {
            keyslot: 1,
            blob: &[0xff],
            pcrs: &[7],
            policy_hash: &[0xab, 0x01],
        };
        let j = token_json(&t);
        assert_eq!(j["type"], "systemd-tpm2");
        assert_eq!(j["keyslots"], json!(["1"]));
        assert_eq!(j["tpm2-blob"], "/w==");
        assert_eq!(j["tpm2-pcrs"], json!([7]));
        assert_eq!(j["tpm2-policy-hash"], "ab01");
        assert_eq!(j["tpm2-pin"], false);
    }

    #[test]
    fn recovery_key_format() {
        let k = recovery_key(&[0x01; 32]);
        assert_eq!(k.len(), 64 + 7);
        assert_eq!(&k[..9], "cbcbcbcb-");
        assert!(k
            .split('-')
            .all(|g| g.len() == 8 && g.bytes().all(|c| MODHEX.contains(&c))));
    }
}
