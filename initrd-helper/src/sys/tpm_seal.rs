//! Sealing a secret to the TPM2 under a PCR policy, and unsealing it.
//!
//! The parent is an ECC P-256 storage root key, persistent at 0x81000001:
//! reused when present, created and persisted when not. Its template is
//! systemd 252's primary template (Debian 12): that systemd-cryptsetup does not
//! look at 0x81000001 but re-creates a transient primary from its template on
//! every unlock, and primaries derive deterministically from the owner seed
//! and the template, so using the same template makes both the same key. Every command that carries the
//! secret runs in a session salted with that key, so the secret never crosses
//! the TPM bus in clear.

use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, KeyDerivationFunctionScheme, KeyedHashScheme, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use crate::policy::Policy;
use crate::sys::tpm_policy::{self, PolicyError, PolicyResult};

/// Where systemd (systemd-tpm2-setup) and we keep the storage root key.
pub const SRK_HANDLE: u32 = 0x8100_0001;

pub type TpmResult<T> = Result<T, tss_esapi::Error>;

/// A sealed object as stored (later: in the LUKS2 token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub private: Vec<u8>,
    pub public: Vec<u8>,
    /// The PolicyPCR digest the object is bound to (systemd's `tpm2-policy-hash`).
    pub policy_hash: Vec<u8>,
}

/// systemd 252's `primary_template_ecc`: note no noDA attribute (the TCG
/// SRK template and systemd >= 255's persistent SRK set it; a different
/// template is a different key).
fn srk_template() -> TpmResult<Public> {
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .build()?;
    let ecc = PublicEccParametersBuilder::new()
        .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
        .with_ecc_scheme(EccScheme::Null)
        .with_curve(EccCurve::NistP256)
        .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
        .with_is_signing_key(false)
        .with_is_decryption_key(true)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_ecc_parameters(ecc)
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// Whether `found` is a key made from `srk_template()` (all but its
/// public point, which the owner seed decides).
fn is_our_srk(found: &Public) -> bool {
    let Ok(want) = srk_template() else {
        return false;
    };
    match (found, &want) {
        (
            Public::Ecc {
                object_attributes: a,
                name_hashing_algorithm: n,
                auth_policy: p,
                parameters: q,
                ..
            },
            Public::Ecc {
                object_attributes: a2,
                name_hashing_algorithm: n2,
                auth_policy: p2,
                parameters: q2,
                ..
            },
        ) => a == a2 && n == n2 && p == p2 && q == q2,
        _ => false,
    }
}

/// The persistent SRK, created and persisted on first use. A key at that
/// handle that is not made from our template (fixedTPM, sensitiveDataOrigin,
/// restricted decrypt ECC P-256, ...) is refused: salting sessions with a
/// planted key would hand the salt to whoever planted it.
pub fn srk(ctx: &mut Context) -> TpmResult<KeyHandle> {
    let persistent = PersistentTpmHandle::new(SRK_HANDLE)?;
    if let Ok(h) =
        ctx.execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(persistent)))
    {
        let key: KeyHandle = h.into();
        let (public, _, _) = ctx.execute_without_session(|c| c.read_public(key))?;
        if !is_our_srk(&public) {
            return Err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::InconsistentParams,
            ));
        }
        return Ok(key);
    }
    let created = ctx.execute_with_nullauth_session(|c| {
        c.create_primary(Hierarchy::Owner, srk_template()?, None, None, None, None)
    })?;
    let handle = ctx.execute_with_nullauth_session(|c| {
        c.evict_control(
            Provision::Owner,
            created.key_handle.into(),
            Persistent::Persistent(persistent),
        )
    })?;
    ctx.flush_context(created.key_handle.into())?;
    Ok(handle.into())
}

/// The SRK's TPM name (nameAlg || digest of its public area): what the
/// token pins, so a later unlock salts only to the same key.
pub fn srk_name(ctx: &mut Context, srk: KeyHandle) -> TpmResult<Vec<u8>> {
    Ok(ctx.tr_get_name(srk.into())?.value().to_vec())
}

/// PCR indexes (0-23) of the sha256 bank as a selection.
pub fn pcr_selection(pcrs: &[u8]) -> TpmResult<PcrSelectionList> {
    let slots = pcrs
        .iter()
        .map(|&n| PcrSlot::try_from(1u32 << n))
        .collect::<TpmResult<Vec<_>>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
}

/// A session salted with the SRK, encrypting command and response parameters.
/// An sha256 session of `kind`, salted with `salt_key` when given.
pub(crate) fn start(
    ctx: &mut Context,
    salt_key: Option<KeyHandle>,
    kind: SessionType,
) -> TpmResult<AuthSession> {
    ctx.start_auth_session(
        salt_key,
        None,
        None,
        kind,
        SymmetricDefinition::AES_128_CFB,
        HashingAlgorithm::Sha256,
    )?
    .ok_or(tss_esapi::Error::WrapperError(
        tss_esapi::WrapperErrorKind::WrongValueFromTpm,
    ))
}

fn salted(ctx: &mut Context, srk: KeyHandle, kind: SessionType) -> TpmResult<AuthSession> {
    let s = start(ctx, Some(srk), kind)?;
    let (attrs, mask) = SessionAttributesBuilder::new()
        .with_decrypt(true)
        .with_encrypt(true)
        .with_continue_session(true)
        .build();
    ctx.tr_sess_set_attributes(s, attrs, mask)?;
    Ok(s)
}

/// The current sha256 values of `pcrs` (what a diagnosis compares).
pub fn pcr_values(ctx: &mut Context, pcrs: &[u8]) -> TpmResult<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    // TPM2_PCR_Read answers at most 8 digests per call.
    for chunk in pcrs.chunks(8) {
        let (_, _, digests) = ctx.execute_without_session(|c| c.pcr_read(pcr_selection(chunk)?))?;
        let values = digests.value();
        if values.len() != chunk.len() {
            return Err(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ));
        }
        out.extend(
            chunk
                .iter()
                .copied()
                .zip(values.iter().map(|d| d.value().to_vec())),
        );
    }
    Ok(out)
}

fn sealed_template(policy: Digest) -> TpmResult<Public> {
    // No userWithAuth: only the PCR policy can unseal.
    let attrs = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attrs)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// Seals `secret` under `policy` (its literal PCRs at their values now).
pub fn seal(
    ctx: &mut Context,
    srk: KeyHandle,
    policy: &Policy,
    secret: &[u8],
) -> PolicyResult<Sealed> {
    let digest = tpm_policy::digest(ctx, policy)?;
    let public = sealed_template(digest.clone())?;
    let data = SensitiveData::try_from(secret.to_vec())?;
    let session = salted(ctx, srk, SessionType::Hmac)?;
    let created = ctx.execute_with_session(Some(session), |c| {
        c.create(srk, public, None, Some(data), None, None)
    });
    ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into())?;
    let created = created?;
    Ok(Sealed {
        private: created.out_private.value().to_vec(),
        public: created.out_public.marshall()?,
        policy_hash: digest.value().to_vec(),
    })
}

/// Unseals; fails with a policy error when the PCRs no longer match (or,
/// signed, when no signature covers their values). `signatures`: the
/// signature file's content, for a signed policy.
pub fn unseal(
    ctx: &mut Context,
    srk: KeyHandle,
    policy: &Policy,
    sealed: &Sealed,
    signatures: Option<&[u8]>,
) -> PolicyResult<Vec<u8>> {
    let private = Private::try_from(sealed.private.clone())?;
    let public = Public::unmarshall(&sealed.public)?;
    let key = ctx.execute_with_nullauth_session(|c| c.load(srk, private, public))?;
    let session = match salted(ctx, srk, SessionType::Policy) {
        Ok(s) => s,
        Err(e) => {
            let _ = ctx.flush_context(key.into());
            return Err(e.into());
        }
    };
    let result = PolicySession::try_from(session)
        .map_err(PolicyError::from)
        .and_then(|p| tpm_policy::satisfy(ctx, p, policy, signatures))
        .and_then(|_| Ok(ctx.execute_with_session(Some(session), |c| c.unseal(key.into()))?))
        .map(|d| d.value().to_vec());
    ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into())?;
    ctx.flush_context(key.into())?;
    result
}

#[cfg(test)]
mod tests {
    //! swtpm tier: a fresh software TPM per test on a loopback port.
    use super::*;
    use crate::sys::swtpm_test::{context, swtpm};
    use tss_esapi::handles::PcrHandle;
    use tss_esapi::structures::DigestValues;

    #[test]
    fn swtpm_seal_unseal_roundtrip() {
        let t = swtpm();
        let mut ctx = context(&t);
        let srk = srk(&mut ctx).unwrap();
        let sealed = seal(&mut ctx, srk, &Policy::literal(&[7]), b"volume secret").unwrap();
        assert_eq!(sealed.policy_hash.len(), 32);
        assert_eq!(
            unseal(&mut ctx, srk, &Policy::literal(&[7]), &sealed, None).unwrap(),
            b"volume secret"
        );
    }

    /// Every salted session works, not 255 in 256: each one's ECDH shared
    /// secret is a fresh random point, and one with a leading zero byte
    /// made a wrong salt while tpm2-tss's mbedTLS backend wrote it short
    /// (patches/tpm2-tss-mbed-ecdh-padding.patch). 1000 sessions pass by
    /// luck with that bug 2 % of the time.
    #[test]
    fn swtpm_a_thousand_salted_sessions_all_work() {
        let t = swtpm();
        let mut ctx = context(&t);
        let srk = srk(&mut ctx).unwrap();
        for i in 0..1000 {
            let s = salted(&mut ctx, srk, SessionType::Hmac).unwrap();
            let r = ctx.execute_with_session(Some(s), |c| c.get_random(16));
            ctx.flush_context(tss_esapi::handles::SessionHandle::from(s).into())
                .unwrap();
            assert_eq!(
                r.unwrap_or_else(|e| panic!("salted session {i}: {e}"))
                    .len(),
                16
            );
        }
    }

    #[test]
    fn swtpm_changed_pcr_refuses_unseal() {
        let t = swtpm();
        let mut ctx = context(&t);
        let srk = srk(&mut ctx).unwrap();
        let sealed = seal(&mut ctx, srk, &Policy::literal(&[7, 16]), b"volume secret").unwrap();
        let mut d = DigestValues::new();
        d.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(vec![0xab; 32]).unwrap(),
        );
        ctx.execute_with_nullauth_session(|c| c.pcr_extend(PcrHandle::Pcr16, d))
            .unwrap();
        assert!(unseal(&mut ctx, srk, &Policy::literal(&[7, 16]), &sealed, None).is_err());
    }

    #[test]
    fn swtpm_a_planted_key_at_the_srk_handle_is_refused() {
        let t = swtpm();
        let mut ctx = context(&t);
        // A restricted decryption key of another shape (RSA here would do
        // too): same handle, not our template.
        let mut tpl = srk_template().unwrap();
        if let Public::Ecc {
            object_attributes, ..
        } = &mut tpl
        {
            *object_attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_no_da(true)
                .with_restricted(true)
                .with_decrypt(true)
                .build()
                .unwrap();
        }
        let k = ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, tpl, None, None, None, None)
            })
            .unwrap();
        let persistent = PersistentTpmHandle::new(SRK_HANDLE).unwrap();
        ctx.execute_with_nullauth_session(|c| {
            c.evict_control(
                Provision::Owner,
                k.key_handle.into(),
                Persistent::Persistent(persistent),
            )
        })
        .unwrap();
        assert!(srk(&mut ctx).is_err());
    }

    #[test]
    fn swtpm_srk_is_persisted_and_reused() {
        let t = swtpm();
        let mut ctx = context(&t);
        let first = srk(&mut ctx).unwrap();
        let sealed = seal(&mut ctx, first, &Policy::literal(&[7]), b"x").unwrap();
        drop(ctx);
        // A new connection (a later boot) finds the same key at 0x81000001.
        let mut ctx = context(&t);
        let again = srk(&mut ctx).unwrap();
        assert_eq!(
            unseal(&mut ctx, again, &Policy::literal(&[7]), &sealed, None).unwrap(),
            b"x"
        );
        let n = srk_name(&mut ctx, again).unwrap();
        assert_eq!(n.len(), 34, "sha256 name: algorithm id + digest");
    }
}
