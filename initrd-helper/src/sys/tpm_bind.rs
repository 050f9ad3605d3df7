//! Binding a provisioned data volume to this machine's TPM, and measuring
//! an opened volume into PCR 15.
//!
//! Why: the volume secret is sealed to a PCR policy anyone with the TPM can
//! also seal to (PCR 7 is public), so a planted LUKS2 volume with a
//! look-alike token would unseal and be mounted (systemd#40410). At
//! provisioning, the helper writes `identity::binding_digest` (keyed with
//! the volume key) into an NV index whose only write authorisation is
//! PolicyPCR over the configured PCRs plus PCR 15 = zero. The helper extends
//! PCR 15 as soon as it opens a volume, so from then until the next reset
//! of the TPM (a reboot) nobody can write the index; an attacker with TPM
//! access in the running system can delete and redefine it, but not fill
//! it. Before opening, the helper checks the index's public area (exactly
//! our attributes and policy) and its content (this volume's digest).
//!
//! Residual risk (README "Threat model"): whoever runs code with PCR 15 = 0
//! and the same policy PCRs (their own initrd at an unchanged PCR 7) can
//! write the index, and can also unseal the real volume's secret.

use crate::policy::Policy;
use crate::sys::tpm_policy::{self, PolicyError, PolicyResult};
use crate::sys::tpm_seal::{self, TpmResult};
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, PcrHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{Digest, DigestValues, MaxNvBuffer, NvPublic, NvPublicBuilder};
use tss_esapi::Context;

/// The NV index (owner range, TCG handle registry 0x01800000-0x01BFFFFF)
/// that holds the binding digest.
pub const BINDING_NV_INDEX: u32 = 0x0180_1a5e;
/// The PCR opened volumes are measured into (systemd's `tpm2-measure-pcr`).
pub const MEASURE_PCR: u8 = 15;
const DIGEST_LEN: usize = 32;
/// TPMA_NV_WRITTEN: set by the TPM on the first write, never by a definer.
const NV_WRITTEN: u32 = 1 << 29;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("TPM: {0}")]
    Tpm(#[from] tss_esapi::Error),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error(
        "PCR {MEASURE_PCR} is already extended (something opened a volume before the helper ran): \
         the binding cannot be checked or written"
    )]
    PcrExtended,
    #[error(
        "this machine's TPM holds no binding for it (NV index {BINDING_NV_INDEX:#x} is absent)"
    )]
    Missing,
    #[error(
        "NV index {BINDING_NV_INDEX:#x} is not the helper's (other attributes or write policy: \
         redefined since provisioning)"
    )]
    ForeignIndex,
    #[error("NV index {BINDING_NV_INDEX:#x} was never written since it was defined")]
    Unwritten,
    #[error("the binding in NV index {BINDING_NV_INDEX:#x} names another volume")]
    Mismatch,
}

/// The volume's policy with PCR 15 (= zero) added to its literal PCRs:
/// the index's write policy.
fn write_policy(policy: &Policy) -> Policy {
    policy.with_literal(MEASURE_PCR)
}

fn index() -> TpmResult<NvIndexTpmHandle> {
    NvIndexTpmHandle::new(BINDING_NV_INDEX)
}

/// Whether PCR 15 (sha256) is still all zero.
pub fn pcr15_is_zero(ctx: &mut Context) -> TpmResult<bool> {
    let values = tpm_seal::pcr_values(ctx, &[MEASURE_PCR])?;
    Ok(values.iter().all(|(_, v)| v.iter().all(|&b| b == 0)))
}

/// The index's public area as the helper defines it, its policy computed
/// over the PCRs' current values (PCR 15 must be zero now).
fn expected_public(ctx: &mut Context, policy: &Policy) -> PolicyResult<NvPublic> {
    let policy = tpm_policy::digest(ctx, &write_policy(policy))?;
    let attrs = NvIndexAttributesBuilder::new()
        .with_policy_write(true)
        .with_auth_read(true)
        .with_no_da(true)
        .build()?;
    Ok(NvPublicBuilder::new()
        .with_nv_index(index()?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attrs)
        .with_index_auth_policy(policy)
        .with_data_area_size(DIGEST_LEN)
        .build()?)
}

/// The index's handle, or `None` when it is not defined.
fn lookup(ctx: &mut Context) -> TpmResult<Option<NvIndexHandle>> {
    let tpm = TpmHandle::NvIndex(index()?);
    Ok(ctx
        .execute_without_session(|c| c.tr_from_tpm_public(tpm))
        .ok()
        .map(NvIndexHandle::from))
}

/// The raw TPMA_NV bits (the conversion never fails for a read area).
fn attr_bits(p: &NvPublic) -> u32 {
    tss_esapi::tss2_esys::TPMA_NV::try_from(p.attributes()).unwrap_or(0)
}

/// Same attributes (but the TPM-set WRITTEN bit), policy, algorithm, size.
fn same_public(found: &NvPublic, want: &NvPublic) -> bool {
    let bits = |p: &NvPublic| attr_bits(p) & !NV_WRITTEN;
    bits(found) == bits(want)
        && found.authorization_policy() == want.authorization_policy()
        && found.name_algorithm() == want.name_algorithm()
        && found.data_size() == want.data_size()
}

fn require_pcr15_zero(ctx: &mut Context) -> Result<(), BindError> {
    if pcr15_is_zero(ctx)? {
        Ok(())
    } else {
        Err(BindError::PcrExtended)
    }
}

/// Writes `digest` as the binding, (re)defining the index as ours first
/// when it is absent or not ours. Provisioning only, before `measure`.
pub fn write(
    ctx: &mut Context,
    policy: &Policy,
    signatures: Option<&[u8]>,
    digest: &[u8; 32],
) -> Result<(), BindError> {
    require_pcr15_zero(ctx)?;
    let want = expected_public(ctx, policy)?;
    let handle = match lookup(ctx)? {
        Some(h) if same_public(&ctx.nv_read_public(h)?.0, &want) => h,
        found => {
            if let Some(h) = found {
                ctx.execute_with_nullauth_session(|c| c.nv_undefine_space(Provision::Owner, h))?;
            }
            ctx.execute_with_nullauth_session(|c| {
                c.nv_define_space(Provision::Owner, None, want.clone())
            })?
        }
    };
    let session = tpm_seal::start(ctx, None, SessionType::Policy)?;
    let data = MaxNvBuffer::try_from(digest.to_vec())?;
    let result = PolicySession::try_from(session)
        .map_err(PolicyError::from)
        .and_then(|p| tpm_policy::satisfy(ctx, p, &write_policy(policy), signatures))
        .and_then(|_| {
            Ok(ctx.execute_with_session(Some(session), |c| {
                c.nv_write(NvAuth::NvIndex(handle), handle, data, 0)
            })?)
        });
    ctx.flush_context(tss_esapi::handles::SessionHandle::from(session).into())?;
    Ok(result?)
}

/// Checks that the binding index is ours and names this volume.
pub fn check(ctx: &mut Context, policy: &Policy, digest: &[u8; 32]) -> Result<(), BindError> {
    require_pcr15_zero(ctx)?;
    let want = expected_public(ctx, policy)?;
    let handle = lookup(ctx)?.ok_or(BindError::Missing)?;
    let (found, _) = ctx.nv_read_public(handle)?;
    if !same_public(&found, &want) {
        return Err(BindError::ForeignIndex);
    }
    if attr_bits(&found) & NV_WRITTEN == 0 {
        return Err(BindError::Unwritten);
    }
    let len = DIGEST_LEN as u16;
    let data =
        ctx.execute_with_nullauth_session(|c| c.nv_read(NvAuth::NvIndex(handle), handle, len, 0))?;
    if data.value() != digest {
        return Err(BindError::Mismatch);
    }
    Ok(())
}

/// Extends PCR 15 (sha256) with an opened volume's `identity::pcr15_event`.
pub fn measure(ctx: &mut Context, event: &[u8; 32]) -> TpmResult<()> {
    let mut d = DigestValues::new();
    d.set(HashingAlgorithm::Sha256, Digest::try_from(event.to_vec())?);
    ctx.execute_with_nullauth_session(|c| c.pcr_extend(PcrHandle::Pcr15, d))
}

#[cfg(test)]
mod tests {
    //! swtpm tier: a fresh software TPM per test.
    use super::*;
    use crate::sys::swtpm_test::{context, swtpm};

    fn p7() -> Policy {
        Policy::literal(&[7])
    }

    #[test]
    fn write_policy_adds_15_once() {
        assert_eq!(write_policy(&Policy::literal(&[7])).literal, vec![7, 15]);
        assert_eq!(
            write_policy(&Policy::literal(&[15, 0, 7])).literal,
            vec![0, 7, 15]
        );
    }

    #[test]
    fn swtpm_binding_roundtrip_and_refusals() {
        let t = swtpm();
        let mut ctx = context(&t);
        assert!(matches!(
            check(&mut ctx, &p7(), &[1; 32]),
            Err(BindError::Missing)
        ));
        write(&mut ctx, &p7(), None, &[1; 32]).unwrap();
        check(&mut ctx, &p7(), &[1; 32]).unwrap();
        assert!(matches!(
            check(&mut ctx, &p7(), &[2; 32]),
            Err(BindError::Mismatch)
        ));
        // Another policy is another index: a token for other PCRs cannot
        // borrow this binding.
        assert!(matches!(
            check(&mut ctx, &Policy::literal(&[7, 16]), &[1; 32]),
            Err(BindError::ForeignIndex)
        ));
        // Rewriting (a factory reset) keeps the index and replaces the digest.
        write(&mut ctx, &p7(), None, &[2; 32]).unwrap();
        check(&mut ctx, &p7(), &[2; 32]).unwrap();
        // Once a volume is open, nothing can be written or checked.
        measure(&mut ctx, &[9; 32]).unwrap();
        assert!(!pcr15_is_zero(&mut ctx).unwrap());
        assert!(matches!(
            write(&mut ctx, &p7(), None, &[3; 32]),
            Err(BindError::PcrExtended)
        ));
    }

    #[test]
    fn swtpm_redefined_index_is_not_ours_and_cannot_be_filled_later() {
        let t = swtpm();
        let mut ctx = context(&t);
        write(&mut ctx, &p7(), None, &[1; 32]).unwrap();
        // The running system (PCR 15 extended) deletes the index and defines
        // one exactly like ours: the TPM refuses the write, so it stays unwritten.
        let want = expected_public(&mut ctx, &p7()).unwrap();
        measure(&mut ctx, &[9; 32]).unwrap();
        let h = lookup(&mut ctx).unwrap().unwrap();
        ctx.execute_with_nullauth_session(|c| c.nv_undefine_space(Provision::Owner, h))
            .unwrap();
        let h = ctx
            .execute_with_nullauth_session(|c| c.nv_define_space(Provision::Owner, None, want))
            .unwrap();
        let data = MaxNvBuffer::try_from(vec![5u8; 32]).unwrap();
        assert!(ctx
            .execute_with_nullauth_session(|c| c.nv_write(NvAuth::NvIndex(h), h, data, 0))
            .is_err());
        let (p, _) = ctx.nv_read_public(h).unwrap();
        assert_eq!(attr_bits(&p) & NV_WRITTEN, 0);
    }
}
