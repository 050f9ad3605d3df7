//! A [`Policy`] on the TPM: its digest (a trial session), and satisfying
//! it in a policy session, in the order systemd 252+ uses so that
//! systemd-cryptsetup satisfies the same digest:
//! 1. signed part: PolicyPCR over the signed PCRs' current values, whose
//!    digest (`approved`) must have a signature by the key; the TPM checks
//!    that signature (VerifySignature over sha256(approved), RSASSA-SHA256,
//!    the key loaded public-only into the owner hierarchy) and
//!    PolicyAuthorize replaces the digest with one naming only the key;
//! 2. literal part: PolicyPCR over the literal PCRs.

use crate::pcrsig::{self, RsaPublic, SignatureError};
use crate::policy::Policy;
use crate::sys::tpm_seal::{pcr_selection, start};
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{
    Digest, Name, Nonce, Public, PublicBuilder, PublicKeyRsa, PublicRsaParametersBuilder,
    RsaExponent, RsaScheme, RsaSignature, Signature, SymmetricDefinitionObject, VerifiedTicket,
};
use tss_esapi::tss2_esys::{TPM2B_DIGEST, TPMT_TK_VERIFIED};
use tss_esapi::Context;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("TPM: {0}")]
    Tpm(#[from] tss_esapi::Error),
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error("the signed policy's signatures ({0}) could not be read")]
    NoSignatures(String),
}

pub type PolicyResult<T> = Result<T, PolicyError>;

/// The public area systemd loads a PCR-signing key with: RSA, sha256
/// name, decrypt|sign|userWithAuth, no scheme, the exponent written out.
fn key_public(k: &RsaPublic) -> PolicyResult<Public> {
    let bits = match k.bits() {
        2048 => RsaKeyBits::Rsa2048,
        3072 => RsaKeyBits::Rsa3072,
        _ => RsaKeyBits::Rsa4096,
    };
    let attrs = ObjectAttributesBuilder::new()
        .with_decrypt(true)
        .with_sign_encrypt(true)
        .with_user_with_auth(true)
        .build()?;
    let params = PublicRsaParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::Null)
        .with_scheme(RsaScheme::Null)
        .with_key_bits(bits)
        .with_exponent(RsaExponent::create(k.exponent)?)
        .with_is_signing_key(true)
        .with_is_decryption_key(true)
        .with_restricted(false)
        .build()?;
    Ok(PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Rsa)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_rsa_parameters(params)
        .with_rsa_unique_identifier(PublicKeyRsa::try_from(k.modulus.clone())?)
        .build()?)
}

fn load_key(ctx: &mut Context, k: &RsaPublic) -> PolicyResult<(KeyHandle, Name)> {
    let public = key_public(k)?;
    let h = ctx.execute_without_session(|c| c.load_external_public(public, Hierarchy::Owner))?;
    match ctx.tr_get_name(h.into()) {
        Ok(n) => Ok((h, n)),
        Err(e) => {
            let _ = ctx.flush_context(h.into());
            Err(e.into())
        }
    }
}

/// A ticket the TPM ignores: trial sessions skip PolicyAuthorize's check.
fn null_ticket() -> PolicyResult<VerifiedTicket> {
    Ok(VerifiedTicket::try_from(TPMT_TK_VERIFIED {
        tag: tss_esapi::constants::tss::TPM2_ST_VERIFIED,
        hierarchy: tss_esapi::constants::tss::TPM2_RH_NULL,
        digest: TPM2B_DIGEST::default(),
    })?)
}

/// The policy's digest: what the sealed object (or NV index) is bound to.
pub fn digest(ctx: &mut Context, policy: &Policy) -> PolicyResult<Digest> {
    let trial = start(ctx, None, SessionType::Trial)?;
    let result = PolicySession::try_from(trial)
        .map_err(PolicyError::from)
        .and_then(|s| {
            if let Some(signed) = &policy.signed {
                let (key, name) = load_key(ctx, &signed.key)?;
                ctx.flush_context(key.into())?;
                let ticket = null_ticket()?;
                ctx.execute_without_session(|c| {
                    c.policy_authorize(s, Digest::default(), Nonce::default(), &name, ticket)
                })?;
            }
            literal_part(ctx, s, policy)?;
            Ok(ctx.execute_without_session(|c| c.policy_get_digest(s))?)
        });
    ctx.flush_context(tss_esapi::handles::SessionHandle::from(trial).into())?;
    result
}

fn literal_part(ctx: &mut Context, s: PolicySession, policy: &Policy) -> PolicyResult<()> {
    if !policy.literal.is_empty() {
        let sel = pcr_selection(&policy.literal)?;
        ctx.execute_without_session(|c| c.policy_pcr(s, Digest::default(), sel))?;
    }
    Ok(())
}

/// Whether the signed part could be satisfied now: the signed PCRs' state
/// has a signature (checked before anything is written, so a boot that
/// cannot write the binding never formats).
pub fn preflight(
    ctx: &mut Context,
    policy: &Policy,
    signatures: Option<&[u8]>,
) -> PolicyResult<()> {
    let Some(signed) = &policy.signed else {
        return Ok(());
    };
    let json = signatures.ok_or_else(|| PolicyError::NoSignatures(signed.signatures.clone()))?;
    let approved = digest(ctx, &Policy::literal(&signed.pcrs))?;
    pcrsig::find_signature(json, &signed.pcrs, &signed.pkfp, approved.value())?;
    Ok(())
}

/// Satisfies `policy` in the policy session `s`; `signatures` is the
/// signature file's content (needed when the policy is signed).
pub fn satisfy(
    ctx: &mut Context,
    s: PolicySession,
    policy: &Policy,
    signatures: Option<&[u8]>,
) -> PolicyResult<()> {
    if let Some(signed) = &policy.signed {
        let json =
            signatures.ok_or_else(|| PolicyError::NoSignatures(signed.signatures.clone()))?;
        let sel = pcr_selection(&signed.pcrs)?;
        ctx.execute_without_session(|c| c.policy_pcr(s, Digest::default(), sel))?;
        let approved = ctx.execute_without_session(|c| c.policy_get_digest(s))?;
        let sig = pcrsig::find_signature(json, &signed.pcrs, &signed.pkfp, approved.value())?;
        let (key, name) = load_key(ctx, &signed.key)?;
        let hashed = Digest::try_from(Sha256::digest(approved.value()).to_vec());
        let ticket = hashed.map_err(PolicyError::from).and_then(|d| {
            let sig = RsaSignature::create(HashingAlgorithm::Sha256, PublicKeyRsa::try_from(sig)?)?;
            Ok(ctx
                .execute_without_session(|c| c.verify_signature(key, d, Signature::RsaSsa(sig)))?)
        });
        ctx.flush_context(key.into())?;
        let ticket = ticket?;
        ctx.execute_without_session(|c| {
            c.policy_authorize(s, approved, Nonce::default(), &name, ticket)
        })?;
    }
    literal_part(ctx, s, policy)
}

#[cfg(test)]
mod tests {
    //! swtpm tier. The PCR-signing key lives in the swtpm too (a signing
    //! primary), standing in for the UKI builder's private key.
    use super::*;
    use crate::policy::Signed;
    use crate::sys::swtpm_test::{context, swtpm};
    use crate::sys::tpm_seal::{seal, srk, unseal};
    use tss_esapi::handles::PcrHandle;
    use tss_esapi::interface_types::algorithm::HashingAlgorithm as H;
    use tss_esapi::structures::{DigestValues, HashScheme, HashcheckTicket, SignatureScheme};
    use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

    /// DER of a PKCS#1 RSAPublicKey (n, e), for the key's fingerprint.
    fn pkcs1_der(n: &[u8], e: u32) -> Vec<u8> {
        fn int(b: &[u8]) -> Vec<u8> {
            let mut body = b.to_vec();
            if body.first().is_some_and(|&x| x & 0x80 != 0) {
                body.insert(0, 0);
            }
            tlv(0x02, &body)
        }
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            match body.len() {
                n if n < 0x80 => v.push(n as u8),
                n if n < 0x100 => v.extend([0x81, n as u8]),
                n => v.extend([0x82, (n >> 8) as u8, n as u8]),
            }
            v.extend_from_slice(body);
            v
        }
        let e = e.to_be_bytes();
        let e = &e[e.iter().position(|&x| x != 0).unwrap_or(3)..];
        tlv(0x30, &[int(n), int(e)].concat())
    }

    /// A signing key in the TPM and its public half as a [`Signed`] policy part.
    fn signer(ctx: &mut Context) -> (KeyHandle, Signed) {
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_sign_encrypt(true)
            .build()
            .unwrap();
        let params = PublicRsaParametersBuilder::new_unrestricted_signing_key(
            RsaScheme::RsaSsa(HashScheme::new(H::Sha256)),
            RsaKeyBits::Rsa2048,
            RsaExponent::default(),
        )
        .build()
        .unwrap();
        let tpl = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Rsa)
            .with_name_hashing_algorithm(H::Sha256)
            .with_object_attributes(attrs)
            .with_rsa_parameters(params)
            .with_rsa_unique_identifier(PublicKeyRsa::default())
            .build()
            .unwrap();
        let k = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, tpl, None, None, None, None)
            })
            .unwrap();
        let Public::Rsa { unique, .. } = k.out_public else {
            panic!("not RSA")
        };
        let n = unique.value().to_vec();
        let key = RsaPublic {
            pkcs1_der: pkcs1_der(&n, 65537),
            modulus: n,
            exponent: 65537,
        };
        let signed = Signed {
            pcrs: vec![11],
            pkfp: key.fingerprint(),
            key_file: "test".into(),
            signatures: "test".into(),
            key,
            pem: Vec::new(),
        };
        (k.key_handle, signed)
    }

    /// The PolicyPCR digest of `pcrs` now (what a UKI builder predicts).
    fn pcr_policy(ctx: &mut Context, pcrs: &[u8]) -> Vec<u8> {
        digest(ctx, &Policy::literal(pcrs))
            .unwrap()
            .value()
            .to_vec()
    }

    /// One signature-file entry: `key` signs sha256(pol), RSASSA-SHA256.
    fn entry(ctx: &mut Context, key: KeyHandle, s: &Signed, pol: &[u8]) -> serde_json::Value {
        let d = Digest::try_from(Sha256::digest(pol).to_vec()).unwrap();
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: tss_esapi::constants::tss::TPM2_ST_HASHCHECK,
            hierarchy: tss_esapi::constants::tss::TPM2_RH_NULL,
            digest: TPM2B_DIGEST::default(),
        })
        .unwrap();
        let scheme = SignatureScheme::RsaSsa {
            hash_scheme: HashScheme::new(H::Sha256),
        };
        let sig = ctx
            .execute_with_nullauth_session(|c| c.sign(key, d, scheme, ticket))
            .unwrap();
        let Signature::RsaSsa(sig) = sig else {
            panic!("not RSASSA")
        };
        serde_json::json!({"pcrs": [11], "pkfp": s.pkfp, "pol": pcrsig::hex(pol),
            "sig": crate::b64::encode(sig.signature().value())})
    }

    fn extend(ctx: &mut Context, pcr: PcrHandle) {
        let mut d = DigestValues::new();
        d.set(H::Sha256, Digest::try_from(vec![0x5a; 32]).unwrap());
        ctx.execute_with_nullauth_session(|c| c.pcr_extend(pcr, d))
            .unwrap();
    }

    #[test]
    fn swtpm_signed_policy_unseals_in_every_signed_state_only() {
        let t = swtpm();
        let mut ctx = context(&t);
        let srk = srk(&mut ctx).unwrap();
        let (key, signed) = signer(&mut ctx);
        let policy = Policy {
            literal: vec![7],
            signed: Some(Box::new(signed.clone())),
        };
        let sealed = seal(&mut ctx, srk, &policy, b"volume secret").unwrap();
        let v1 = pcr_policy(&mut ctx, &[11]);
        let mut sigs = vec![entry(&mut ctx, key, &signed, &v1)];
        let file = |s: &Vec<serde_json::Value>| serde_json::json!({ "sha256": s }).to_string();
        let open =
            |ctx: &mut Context, f: &str| unseal(ctx, srk, &policy, &sealed, Some(f.as_bytes()));
        assert_eq!(open(&mut ctx, &file(&sigs)).unwrap(), b"volume secret");
        // An update: PCR 11 changes (a new UKI). Unsigned, it is refused;
        // once the key's owner signs the new state, the same object unseals.
        extend(&mut ctx, PcrHandle::Pcr11);
        match open(&mut ctx, &file(&sigs)) {
            Err(PolicyError::Signature(SignatureError::NotSigned { entries: 1, .. })) => {}
            r => panic!("{r:?}"),
        }
        let v2 = pcr_policy(&mut ctx, &[11]);
        sigs.push(entry(&mut ctx, key, &signed, &v2));
        assert_eq!(open(&mut ctx, &file(&sigs)).unwrap(), b"volume secret");
        // A forged entry (right digest, wrong signature) is the TPM's to refuse.
        let mut forged = sigs[1].clone();
        forged["sig"] = sigs[0]["sig"].clone();
        assert!(matches!(
            open(&mut ctx, &file(&vec![forged])),
            Err(PolicyError::Tpm(_))
        ));
        // The literal part still binds: PCR 7 changed is refused by the TPM.
        extend(&mut ctx, PcrHandle::Pcr7);
        assert!(matches!(
            open(&mut ctx, &file(&sigs)),
            Err(PolicyError::Tpm(_))
        ));
        assert!(matches!(
            unseal(&mut ctx, srk, &policy, &sealed, None),
            Err(PolicyError::NoSignatures(_))
        ));
    }

    /// The digest as TPM 2.0 Part 3 defines it, computed here without the
    /// TPM: PolicyAuthorize(name, empty ref) then PolicyPCR(7): the value
    /// systemd-cryptsetup's `tpm2-policy-hash` check expects.
    #[test]
    fn swtpm_signed_policy_digest_matches_the_specification() {
        let t = swtpm();
        let mut ctx = context(&t);
        let (_, signed) = signer(&mut ctx);
        let (h, name) = load_key(&mut ctx, &signed.key).unwrap();
        ctx.flush_context(h.into()).unwrap();
        let policy = Policy {
            literal: vec![7],
            signed: Some(Box::new(signed)),
        };
        let got = digest(&mut ctx, &policy).unwrap().value().to_vec();
        let sha = |parts: &[&[u8]]| -> Vec<u8> {
            let mut h = Sha256::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        };
        let cc_authorize = 0x0000_016Au32.to_be_bytes();
        let cc_pcr = 0x0000_017Fu32.to_be_bytes();
        let a = sha(&[&[0; 32], &cc_authorize, name.value()]);
        let a = sha(&[&a]);
        let sel = pcr_selection(&[7]).unwrap();
        let (_, _, vals) = ctx.execute_without_session(|c| c.pcr_read(sel)).unwrap();
        let pcr7 = sha(&[vals.value()[0].value()]);
        // TPML_PCR_SELECTION: count 1, sha256 (0x000b), 3 select bytes, bit 7.
        let tpml = [0, 0, 0, 1, 0x00, 0x0b, 3, 0x80, 0, 0];
        let want = sha(&[&a, &cc_pcr, &tpml, &pcr7]);
        assert_eq!(got, want);
    }
}
