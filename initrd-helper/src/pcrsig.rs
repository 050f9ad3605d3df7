//! Signed PCR policies, the parts that need no TPM: the RSA public key a
//! UKI carries (`.pcrpkey`, `/.extra/tpm2-pcr-public-key.pem`) and the
//! signatures it carries (`.pcrsig`, `/.extra/tpm2-pcr-signature.json`),
//! in systemd's formats:
//! - the key is PEM, SubjectPublicKeyInfo (`PUBLIC KEY`) or PKCS#1
//!   (`RSA PUBLIC KEY`); its fingerprint (`pkfp`) is the sha256 of the
//!   PKCS#1 `RSAPublicKey` DER, not of the SPKI;
//! - the signature file is `{"sha256":[{"pcrs":[11],"pkfp":HEX,"pol":HEX,
//!   "sig":BASE64}, ...], "sha1": [...]}`, one entry per signed boot phase,
//!   `pol` the PolicyPCR digest that phase's PCR values give.
//!
//! Both come from a disk or an initrd someone else built: sizes and
//! counts are bounded before anything is allocated from them.

use crate::b64;
use sha2::{Digest, Sha256};

/// Largest key file read (a 4096-bit key's PEM is ~800 bytes).
pub const MAX_KEY_FILE: u64 = 16 << 10;
/// Largest signature file read (four phases of four banks are ~8 KiB).
pub const MAX_SIGNATURE_FILE: u64 = 1 << 20;
/// Most entries looked at in one bank.
const MAX_ENTRIES: usize = 256;

/// An RSA public key as the TPM loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublic {
    /// Big-endian, no leading zero byte.
    pub modulus: Vec<u8>,
    pub exponent: u32,
    /// The PKCS#1 `RSAPublicKey` DER: what `pkfp` hashes.
    pub pkcs1_der: Vec<u8>,
}

impl RsaPublic {
    pub fn bits(&self) -> usize {
        self.modulus.len() * 8
    }

    /// systemd's `pkfp`: sha256 of the PKCS#1 DER, lower-case hex.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(&self.pkcs1_der))
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// One DER element: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 {
            return None;
        }
        let bytes = b.get(..n)?;
        let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | x as usize);
        (len, &b[n..])
    };
    let body = b.get(..len)?;
    Some((tag, body, &b[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
/// 1.2.840.113549.1.1.1 (rsaEncryption).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// A PKCS#1 `RSAPublicKey`: SEQUENCE { INTEGER n, INTEGER e }.
fn parse_pkcs1(der: &[u8]) -> Result<RsaPublic, String> {
    let bad = || "not an RSA public key (PKCS#1 DER)".to_string();
    let (tag, seq, rest) = tlv(der).ok_or_else(bad)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return Err(bad());
    }
    let (t1, n, seq) = tlv(seq).ok_or_else(bad)?;
    let (t2, e, seq) = tlv(seq).ok_or_else(bad)?;
    if t1 != INTEGER || t2 != INTEGER || !seq.is_empty() {
        return Err(bad());
    }
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    if !matches!(n.len() * 8, 2048 | 3072 | 4096) {
        return Err(format!(
            "an RSA key of {} bits: expected 2048, 3072 or 4096",
            n.len() * 8
        ));
    }
    if e.is_empty() || e.len() > 4 {
        return Err("the RSA exponent does not fit 32 bits".into());
    }
    let exponent = e.iter().fold(0u32, |a, &x| (a << 8) | x as u32);
    Ok(RsaPublic {
        modulus: n.to_vec(),
        exponent,
        pkcs1_der: der.to_vec(),
    })
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { OID rsaEncryption, ... },
/// BIT STRING { 0 unused bits, RSAPublicKey } }.
fn parse_spki(der: &[u8]) -> Result<RsaPublic, String> {
    let bad = || "not a public key (SubjectPublicKeyInfo DER)".to_string();
    let (tag, seq, rest) = tlv(der).ok_or_else(bad)?;
    if tag != SEQUENCE || !rest.is_empty() {
        return Err(bad());
    }
    let (t, alg, seq) = tlv(seq).ok_or_else(bad)?;
    let (t_oid, oid, _) = tlv(alg).ok_or_else(bad)?;
    if t != SEQUENCE || t_oid != OID {
        return Err(bad());
    }
    if oid != RSA_ENCRYPTION {
        return Err("not an RSA key (systemd's signed PCR policies use RSA)".into());
    }
    let (t_bits, bits, _) = tlv(seq).ok_or_else(bad)?;
    match bits.split_first() {
        Some((0, key)) if t_bits == BIT_STRING => parse_pkcs1(key),
        _ => Err(bad()),
    }
}

/// Parses a PEM public key file (SPKI or PKCS#1).
pub fn parse_public_key_pem(pem: &[u8]) -> Result<RsaPublic, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_string())?;
    let begin = text
        .find("-----BEGIN ")
        .ok_or("not a PEM file (no BEGIN line)")?;
    let after = &text[begin + 11..];
    let label_end = after
        .find("-----")
        .ok_or("not a PEM file (bad BEGIN line)")?;
    let label = &after[..label_end];
    let body = &after[label_end + 5..];
    let end = body
        .find("-----END ")
        .ok_or("not a PEM file (no END line)")?;
    let b64text: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = b64::decode(&b64text).map_err(|e| format!("PEM body: {e}"))?;
    match label {
        "PUBLIC KEY" => parse_spki(&der),
        "RSA PUBLIC KEY" => parse_pkcs1(&der),
        other => Err(format!(
            "a PEM {:?}, expected \"PUBLIC KEY\"",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// Why no signature could be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature file is not valid: {0}")]
    Malformed(String),
    /// No entry for this key, PCR set and PolicyPCR digest: the PCRs are
    /// not in a state the key's owner signed (another UKI, another phase).
    #[error(
        "no signature by key {pkfp} for sha256 PCRs {pcrs:?} in their current state \
         (PolicyPCR digest {pol}; {entries} entries for that key and PCR set)"
    )]
    NotSigned {
        pkfp: String,
        pcrs: Vec<u8>,
        pol: String,
        entries: usize,
    },
}

/// The signature (raw RSASSA bytes) in `json` by the key `pkfp` over the
/// sha256 PolicyPCR digest `pol` of `pcrs`.
pub fn find_signature(
    json: &[u8],
    pcrs: &[u8],
    pkfp: &str,
    pol: &[u8],
) -> Result<Vec<u8>, SignatureError> {
    let bad = |s: &str| SignatureError::Malformed(s.into());
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let bank = v
        .get("sha256")
        .and_then(|b| b.as_array())
        .ok_or_else(|| bad("no \"sha256\" list"))?;
    let pol_hex = hex(pol);
    let mut entries = 0;
    for e in bank.iter().take(MAX_ENTRIES) {
        let same_pcrs = e["pcrs"].as_array().is_some_and(|a| {
            a.len() == pcrs.len()
                && a.iter()
                    .zip(pcrs)
                    .all(|(x, &p)| x.as_u64() == Some(p as u64))
        });
        let same_key = e["pkfp"]
            .as_str()
            .is_some_and(|f| f.eq_ignore_ascii_case(pkfp));
        if !(same_pcrs && same_key) {
            continue;
        }
        entries += 1;
        if e["pol"]
            .as_str()
            .is_some_and(|p| p.eq_ignore_ascii_case(&pol_hex))
        {
            let sig = e["sig"]
                .as_str()
                .ok_or_else(|| bad("an entry without \"sig\""))?;
            return b64::decode(sig).map_err(|e| SignatureError::Malformed(format!("sig: {e}")));
        }
    }
    Err(SignatureError::NotSigned {
        pkfp: pkfp.into(),
        pcrs: pcrs.to_vec(),
        pol: pol_hex,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`
    /// and `openssl pkey -pubout` (SPKI); its pkfp as systemd-measure wrote it.
    const PEM: &str = include_str!("../tests/data/pcr-public-key.pem");
    const PKFP: &str = include_str!("../tests/data/pcr-public-key.pkfp");

    #[test]
    fn spki_pem_parses_with_systemds_fingerprint() {
        let k = parse_public_key_pem(PEM.as_bytes()).unwrap();
        assert_eq!(k.bits(), 2048);
        assert_eq!(k.exponent, 65537);
        assert_eq!(k.fingerprint(), PKFP.trim());
    }

    #[test]
    fn bad_keys_are_named() {
        for (pem, want) in [
            ("", "no BEGIN"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "CERTIFICATE",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
                "PEM body",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nMAA=\n-----END PUBLIC KEY-----\n",
                "SubjectPublicKeyInfo",
            ),
            ("-----BEGIN PUBLIC KEY-----\nAAAA\n", "no END"),
        ] {
            let e = parse_public_key_pem(pem.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{pem:?}: {e}");
        }
        // A truncated key: every prefix fails cleanly, none panics.
        let der = {
            let body: String = PEM.lines().filter(|l| !l.starts_with("-----")).collect();
            b64::decode(&body).unwrap()
        };
        for n in 0..der.len() {
            assert!(parse_spki(&der[..n]).is_err());
        }
    }

    fn sigfile(pol: &str) -> String {
        format!(
            r#"{{"sha1":[{{"pcrs":[11],"pkfp":"{p}","pol":"00","sig":"AA=="}}],
            "sha256":[{{"pcrs":[11],"pkfp":"{p}","pol":"{pol}","sig":"AQID"}},
                      {{"pcrs":[11,12],"pkfp":"{p}","pol":"{pol}","sig":"BAUG"}}]}}"#,
            p = PKFP.trim()
        )
    }

    #[test]
    fn signature_is_found_by_key_pcrs_and_policy() {
        let pol = [0xabu8; 32];
        let json = sigfile(&hex(&pol));
        let pkfp = PKFP.trim();
        assert_eq!(
            find_signature(json.as_bytes(), &[11], pkfp, &pol).unwrap(),
            [1, 2, 3]
        );
        assert_eq!(
            find_signature(json.as_bytes(), &[11, 12], pkfp, &pol).unwrap(),
            [4, 5, 6]
        );
        let other = [0xcdu8; 32];
        match find_signature(json.as_bytes(), &[11], pkfp, &other) {
            Err(SignatureError::NotSigned {
                entries: 1, pol, ..
            }) => assert_eq!(pol, hex(&other)),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            find_signature(json.as_bytes(), &[11], &"0".repeat(64), &pol),
            Err(SignatureError::NotSigned { entries: 0, .. })
        ));
        for bad in ["", "[]", "{\"sha1\":[]}", "{\"sha256\":{}}"] {
            assert!(matches!(
                find_signature(bad.as_bytes(), &[11], pkfp, &pol),
                Err(SignatureError::Malformed(_))
            ));
        }
    }
}
