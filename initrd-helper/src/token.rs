//! The `systemd-tpm2` LUKS2 token and the recovery key, in the formats
//! systemd uses, so `systemd-cryptsetup` and `cryptsetup` (with systemd's
//! token plugin) unlock what we enroll:
//! - `tpm2-blob`: base64 of TPM2B_PRIVATE || TPM2B_PUBLIC of the sealed object;
//! - the keyslot passphrase is the base64 of the unsealed secret;
//! - the recovery key is 32 random bytes as 64 "modhex" characters in
//!   groups of 8 joined by `-` (systemd-cryptenroll's format).

use crate::b64;
use crate::pcrsig;
use crate::policy::{Policy, Signed};
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
    /// The SRK's TPM name at enrollment (our own field; systemd ignores it).
    pub srk_name: &'a [u8],
    /// A signed policy: the key's PEM file and the PCRs it signs.
    pub signed: Option<(&'a [u8], &'a [u8])>,
    /// The literal PCRs' values at enrollment (our own field, for
    /// naming what changed when the TPM refuses).
    pub pcr_values: &'a [(u8, Vec<u8>)],
}

/// Our token field with the literal PCRs' values at enrollment.
const PCR_VALUES_FIELD: &str = "initrd-helper-pcr-values";

/// Our token field pinning the SRK the secret was sealed under.
const SRK_FIELD: &str = "initrd-helper-srk-name";

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token JSON as systemd 252 writes it (hyphenated keys).
pub fn token_json(t: &TpmToken) -> Value {
    let mut v = json!({
        "type": "systemd-tpm2",
        "keyslots": [t.keyslot.to_string()],
        "tpm2-blob": b64::encode(t.blob),
        "tpm2-pcrs": t.pcrs,
        "tpm2-pcr-bank": "sha256",
        "tpm2-primary-alg": "ecc",
        "tpm2-policy-hash": hex(t.policy_hash),
        "tpm2-pin": false,
        SRK_FIELD: hex(t.srk_name),
    });
    if !t.pcr_values.is_empty() {
        let values: serde_json::Map<String, Value> = t
            .pcr_values
            .iter()
            .map(|(n, v)| (n.to_string(), json!(hex(v))))
            .collect();
        v[PCR_VALUES_FIELD] = Value::Object(values);
    }
    // systemd's signed-policy fields (underscores, as 252 writes them).
    if let Some((pem, pcrs)) = t.signed {
        v["tpm2_pubkey"] = json!(b64::encode(pem));
        v["tpm2_pubkey_pcrs"] = json!(pcrs);
    }
    v
}

/// What unlocking needs from a `systemd-tpm2` token (ours or systemd-cryptenroll's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
    pub pcrs: Vec<u8>,
    /// `tpm2-primary-alg` (systemd: absent means "ecc" for 252's tokens).
    pub primary_alg: String,
    /// A signed policy: the key (`tpm2_pubkey`, PEM bytes) and the PCRs it
    /// signs (`tpm2_pubkey_pcrs`).
    pub signed: Option<SignedFields>,
    /// The SRK name pinned at enrollment (hex), when the token has one.
    pub srk_name: Option<String>,
    /// The literal PCRs' values at enrollment (hex), when recorded.
    pub pcr_values: Vec<(u8, String)>,
}

/// A token's signed policy: the key's PEM bytes and the PCRs it signs.
pub type SignedFields = (Vec<u8>, Vec<u8>);

/// Why the TPM's current SRK is not the one the token was sealed under.
pub fn srk_mismatch(t: &ParsedToken, current: &[u8]) -> Option<String> {
    let pinned = t.srk_name.as_deref()?;
    (pinned != hex(current)).then(|| {
        format!(
            "the TPM's storage root key (0x81000001, name {}) is not the one the volume was sealed \
             under (name {}): the key was replaced, or something between the helper and the TPM \
             answers in its place; refusing to send it the session salt",
            cut(&hex(current), 70),
            cut(pinned, 70)
        )
    })
}

/// Why a token's policy is not the one the helper creates: then the volume
/// was not made by this machine's first boot, and is never unsealed (an
/// attacker can seal to any PCR set; systemd#40410).
pub fn policy_mismatch(t: &ParsedToken, policy: &Policy) -> Option<String> {
    let set = |p: &[u8]| {
        let mut v = p.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    };
    if set(&t.pcrs) != policy.literal {
        return Some(format!(
            "its token is sealed to sha256 PCRs {:?}, the helper seals to {:?} (data.pcrs)",
            t.pcrs, policy.literal
        ));
    }
    if let Some(why) = signed_mismatch(t.signed.as_ref(), policy.signed.as_deref()) {
        return Some(why);
    }
    if t.primary_alg != "ecc" {
        return Some(format!(
            "its token's primary key is {:?}, the helper's is \"ecc\"",
            t.primary_alg
        ));
    }
    None
}

/// The token's signed policy against the one planned: the same key (by
/// fingerprint) over the same PCRs, or neither has one.
fn signed_mismatch(token: Option<&SignedFields>, planned: Option<&Signed>) -> Option<String> {
    match (token, planned) {
        (None, None) => None,
        (Some(_), None) => Some(
            "its token uses a signed PCR policy (tpm2_pubkey), and this boot has no PCR public \
             key (boot the UKI that carries it, or set data.pcr_public_key)"
                .into(),
        ),
        (None, Some(s)) => Some(format!(
            "its token has no signed PCR policy, the helper seals under key {} (the UKI's \
             .pcrpkey or data.pcr_public_key)",
            s.pkfp
        )),
        (Some((pem, pcrs)), Some(s)) => {
            let fp = pcrsig::parse_public_key_pem(pem).map(|k| k.fingerprint());
            match fp {
                Err(e) => Some(format!("its token's tpm2_pubkey is not usable: {e}")),
                Ok(fp) if fp != s.pkfp => Some(format!(
                    "its token's signed policy is by key {fp}, this boot's key is {}",
                    s.pkfp
                )),
                Ok(_) if *pcrs != s.pcrs => Some(format!(
                    "its token's signed policy covers PCRs {pcrs:?}, the helper's {:?} \
                     (data.signed_pcrs)",
                    s.pcrs
                )),
                Ok(_) => None,
            }
        }
    }
}

/// Splits one TPM2B off the front of `b`.
fn take_tpm2b(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
    let body = b.get(2..2 + n)?;
    Some((body, &b[2 + n..]))
}

/// Reads the fields unlocking needs; `None` names what is missing or malformed.
pub fn parse_token(v: &Value) -> Result<ParsedToken, String> {
    if v["type"] != "systemd-tpm2" {
        return Err("not a systemd-tpm2 token".into());
    }
    if v["tpm2-pin"] == true {
        return Err("the token needs a PIN (tpm2-pin), which the helper does not ask for".into());
    }
    let bank = v["tpm2-pcr-bank"].as_str().unwrap_or("sha256");
    if bank != "sha256" {
        return Err(format!(
            "PCR bank {:?} is not supported (sha256 only)",
            cut(bank, 16)
        ));
    }
    let blob = v["tpm2-blob"]
        .as_str()
        .and_then(|s| b64::decode(s).ok())
        .ok_or("tpm2-blob is missing or not base64")?;
    let (private, rest) = take_tpm2b(&blob).ok_or("tpm2-blob: bad TPM2B_PRIVATE")?;
    let (public, _) = take_tpm2b(rest).ok_or("tpm2-blob: bad TPM2B_PUBLIC")?;
    let pcrs = v["tpm2-pcrs"]
        .as_array()
        .ok_or("tpm2-pcrs is missing")?
        .iter()
        .map(|p| p.as_u64().filter(|&n| n < 24).map(|n| n as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or("tpm2-pcrs holds a value that is not a PCR number")?;
    let primary_alg = v["tpm2-primary-alg"].as_str().unwrap_or("ecc");
    let signed = signed_fields(v)?;
    Ok(ParsedToken {
        private: private.to_vec(),
        public: public.to_vec(),
        pcrs,
        primary_alg: cut(primary_alg, 16),
        signed,
        srk_name: v[SRK_FIELD].as_str().map(|s| cut(s, 140)),
        pcr_values: pcr_values(v),
    })
}

/// Our record of the PCR values at enrollment: only well-formed entries
/// (PCR 0-23, 64 hex digits), at most 24; it only ever feeds a message.
fn pcr_values(v: &Value) -> Vec<(u8, String)> {
    let Some(m) = v[PCR_VALUES_FIELD].as_object() else {
        return Vec::new();
    };
    m.iter()
        .take(24)
        .filter_map(|(k, h)| {
            let n = k.parse::<u8>().ok().filter(|&n| n < 24)?;
            let h = h
                .as_str()
                .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            Some((n, h.to_ascii_lowercase()))
        })
        .collect()
}

/// Which recorded PCRs differ from their `now` values, as the message
/// names them ("PCR 7 (was 1a2b3c4d…, now 5e6f7a8b…)").
pub fn pcr_changes(recorded: &[(u8, String)], now: &[(u8, Vec<u8>)]) -> Vec<String> {
    recorded
        .iter()
        .filter_map(|(n, was)| {
            let now = hex(&now.iter().find(|(m, _)| m == n)?.1);
            (now != *was).then(|| {
                format!(
                    "PCR {n} (was {}…, now {}…)",
                    &was[..8],
                    &now[..8.min(now.len())]
                )
            })
        })
        .collect()
}

/// `tpm2_pubkey` (base64 of a PEM file, bounded) and `tpm2_pubkey_pcrs`.
fn signed_fields(v: &Value) -> Result<Option<SignedFields>, String> {
    if v["tpm2_pubkey"].is_null() && v["tpm2_pubkey_pcrs"].is_null() {
        return Ok(None);
    }
    let pem = v["tpm2_pubkey"]
        .as_str()
        .filter(|s| s.len() as u64 <= pcrsig::MAX_KEY_FILE * 2)
        .and_then(|s| b64::decode(s).ok())
        .ok_or("tpm2_pubkey is missing, too long or not base64")?;
    let pcrs = v["tpm2_pubkey_pcrs"]
        .as_array()
        .filter(|a| !a.is_empty() && a.len() <= 24)
        .and_then(|a| {
            a.iter()
                .map(|p| p.as_u64().filter(|&n| n < 24).map(|n| n as u8))
                .collect::<Option<Vec<u8>>>()
        })
        .ok_or("tpm2_pubkey_pcrs is missing or not a list of PCR numbers")?;
    Ok(Some((pem, pcrs)))
}

/// At most `n` characters of a value read from a disk, for messages.
fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
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
            srk_name: &[0x00, 0x0b, 0xcd],
            signed: None,
            pcr_values: &[],
        };
        let j = token_json(&t);
        assert_eq!(j["type"], "systemd-tpm2");
        assert_eq!(j["keyslots"], json!(["1"]));
        assert_eq!(j["tpm2-blob"], "/w==");
        assert_eq!(j["tpm2-pcrs"], json!([7]));
        assert_eq!(j["tpm2-policy-hash"], "ab01");
        assert_eq!(j["tpm2-pin"], false);
        assert_eq!(j["initrd-helper-srk-name"], "000bcd");
        let j = token_json(&TpmToken {
            blob: &blob(&[1], &[2]),
            ..t
        });
        let p = parse_token(&j).unwrap();
        assert_eq!(srk_mismatch(&p, &[0x00, 0x0b, 0xcd]), None);
        assert!(srk_mismatch(&p, &[0x00, 0x0b, 0xce])
            .unwrap()
            .contains("not the one"));
    }

    #[test]
    fn tokens_parse_back() {
        let t = TpmToken {
            keyslot: 0,
            blob: &blob(&[1, 2, 3], &[4, 5]),
            pcrs: &[0, 7],
            policy_hash: &[0xab],
            srk_name: &[],
            signed: None,
            pcr_values: &[],
        };
        let p = parse_token(&token_json(&t)).unwrap();
        assert_eq!(
            (p.private, p.public, p.pcrs),
            (vec![1, 2, 3], vec![4, 5], vec![0, 7])
        );
        let mut j = token_json(&t);
        j["tpm2-blob"] = json!("AAU=");
        assert!(parse_token(&j).unwrap_err().contains("TPM2B_PRIVATE"));
        j["tpm2-pin"] = json!(true);
        assert!(parse_token(&j).unwrap_err().contains("PIN"));
        assert!(parse_token(&json!({"type": "other"})).is_err());
    }

    #[test]
    fn only_the_policy_we_create_is_accepted() {
        let t = TpmToken {
            keyslot: 0,
            blob: &blob(&[1], &[2]),
            pcrs: &[7],
            policy_hash: &[0xab],
            srk_name: &[],
            signed: None,
            pcr_values: &[],
        };
        let ours = parse_token(&token_json(&t)).unwrap();
        assert_eq!(policy_mismatch(&ours, &Policy::literal(&[7])), None);
        assert_eq!(policy_mismatch(&ours, &Policy::literal(&[7, 7])), None);
        assert!(policy_mismatch(&ours, &Policy::literal(&[7, 16]))
            .unwrap()
            .contains("[7, 16]"));
        let mut j = token_json(&TpmToken { pcrs: &[16], ..t });
        assert!(
            policy_mismatch(&parse_token(&j).unwrap(), &Policy::literal(&[7]))
                .unwrap()
                .contains("PCRs [16]")
        );
        j["tpm2-pcrs"] = json!([7]);
        j["tpm2-primary-alg"] = json!("rsa");
        assert!(
            policy_mismatch(&parse_token(&j).unwrap(), &Policy::literal(&[7]))
                .unwrap()
                .contains("rsa")
        );
        j["tpm2-primary-alg"] = json!("ecc");
        j["tpm2_pubkey"] = json!("AAAA");
        assert!(parse_token(&j).unwrap_err().contains("tpm2_pubkey_pcrs"));
        j["tpm2_pubkey_pcrs"] = json!([11]);
        assert!(
            policy_mismatch(&parse_token(&j).unwrap(), &Policy::literal(&[7]))
                .unwrap()
                .contains("signed")
        );
        j["tpm2-pcr-bank"] = json!("x".repeat(5000));
        assert!(parse_token(&j).unwrap_err().len() < 100, "values are cut");
    }

    fn signed(pcrs: &[u8]) -> Policy {
        let pem = include_bytes!("../tests/data/pcr-public-key.pem").to_vec();
        let key = pcrsig::parse_public_key_pem(&pem).unwrap();
        Policy {
            literal: vec![7],
            signed: Some(Box::new(Signed {
                pcrs: pcrs.to_vec(),
                pkfp: key.fingerprint(),
                key_file: "k".into(),
                signatures: "s".into(),
                key,
                pem,
            })),
        }
    }

    #[test]
    fn a_signed_policy_must_match_key_and_pcrs() {
        let policy = signed(&[11]);
        let s = policy.signed.as_ref().unwrap();
        let t = TpmToken {
            keyslot: 0,
            blob: &blob(&[1], &[2]),
            pcrs: &[7],
            policy_hash: &[0xab],
            srk_name: &[],
            signed: Some((&s.pem, &s.pcrs)),
            pcr_values: &[],
        };
        let j = token_json(&t);
        assert_eq!(j["tpm2_pubkey_pcrs"], json!([11]));
        assert_eq!(
            b64::decode(j["tpm2_pubkey"].as_str().unwrap()).unwrap(),
            s.pem
        );
        let ours = parse_token(&j).unwrap();
        assert_eq!(policy_mismatch(&ours, &policy), None);
        let why = policy_mismatch(&ours, &signed(&[11, 12])).unwrap();
        assert!(why.contains("data.signed_pcrs"), "{why}");
        let why = policy_mismatch(&ours, &Policy::literal(&[7])).unwrap();
        assert!(why.contains("no PCR public key"), "{why}");
        let literal = parse_token(&token_json(&TpmToken { signed: None, ..t })).unwrap();
        assert!(policy_mismatch(&literal, &policy)
            .unwrap()
            .contains("no signed PCR policy"));
        let mut other = policy.clone();
        if let Some(s) = other.signed.as_mut() {
            s.pkfp = "00".repeat(32);
        }
        assert!(policy_mismatch(&ours, &other)
            .unwrap()
            .contains("this boot's key"));
    }

    #[test]
    fn pcr_values_at_enrollment_name_what_changed() {
        let values = [(7u8, vec![0x11; 32]), (16, vec![0x22; 32])];
        let t = TpmToken {
            keyslot: 0,
            blob: &blob(&[1], &[2]),
            pcrs: &[7, 16],
            policy_hash: &[0xab],
            srk_name: &[],
            signed: None,
            pcr_values: &values,
        };
        let mut j = token_json(&t);
        let p = parse_token(&j).unwrap();
        let mut got = p.pcr_values.clone();
        got.sort();
        assert_eq!(got, vec![(7, "11".repeat(32)), (16, "22".repeat(32))]);
        let now = [(7u8, vec![0x11; 32]), (16, vec![0x33; 32])];
        assert_eq!(
            pcr_changes(&p.pcr_values, &now),
            vec!["PCR 16 (was 22222222…, now 33333333…)"]
        );
        assert!(pcr_changes(&p.pcr_values, &values).is_empty());
        // Malformed entries are dropped, never trusted or echoed at length.
        j[PCR_VALUES_FIELD] =
            json!({"7": "zz", "99": "11".repeat(32), "x": 1, "16": "AB".repeat(32)});
        assert_eq!(
            parse_token(&j).unwrap().pcr_values,
            vec![(16, "ab".repeat(32))]
        );
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
