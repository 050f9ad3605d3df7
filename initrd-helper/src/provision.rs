//! `initrd-helper encrypt`: turns a provably blank device into LUKS2 sealed
//! to the TPM2 (systemd-tpm2 token) with a recovery key. This is the
//! encryption core of first-boot provisioning, also usable offline by image
//! builders and by the VM tests.

use crate::pcrsig::SignatureError;
use crate::policy::Policy;
use crate::sys::tpm_policy::PolicyError;
use crate::sys::{luks, tpm_seal};
use crate::token;
use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use zeroize::Zeroizing;

/// How much of the device must be zero to count as blank: covers every
/// superblock and partition-table location at the start of a device.
const BLANK_PROBE: usize = 1 << 20;

#[derive(Debug, Serialize)]
pub struct Encrypted {
    pub luks_uuid: String,
    pub tpm_keyslot: u32,
    pub recovery_keyslot: u32,
    pub pcrs: Vec<u8>,
    /// Handed out once, here, and never logged; wiped when dropped.
    #[serde(serialize_with = "expose")]
    pub recovery_key: Zeroizing<String>,
}

/// The recovery key's one way out: `encrypt`'s JSON on stdout.
fn expose<S: serde::Serializer>(key: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(key)
}

/// True when the first MiB is all zero (no signature of any kind).
pub fn is_blank(dev: &Path) -> Result<bool> {
    let mut buf = vec![0u8; BLANK_PROBE];
    let mut f = std::fs::File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let n = f
        .read(&mut buf)
        .with_context(|| format!("reading {}", dev.display()))?;
    Ok(n > 0 && buf[..n].iter().all(|&b| b == 0))
}

/// Parses "7,16" into PCR indexes 0-23.
pub fn parse_pcrs(s: &str) -> Result<Vec<u8>> {
    let pcrs: Vec<u8> = s
        .split(',')
        .map(|p| p.trim().parse::<u8>().ok().filter(|&n| n < 24))
        .collect::<Option<_>>()
        .with_context(|| {
            format!("invalid PCR list {s:?}: expected numbers 0-23 separated by commas")
        })?;
    if pcrs.is_empty() {
        bail!("empty PCR list");
    }
    Ok(pcrs)
}

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&crate::sys::random16()?);
    b[16..].copy_from_slice(&crate::sys::random16()?);
    Ok(b)
}

pub fn encrypt(dev: &Path, tcti: &str, pcrs: &[u8]) -> Result<Encrypted> {
    if !is_blank(dev)? {
        bail!(
            "{} is not blank (its first MiB is not all zero): refusing to encrypt it",
            dev.display()
        );
    }
    let conf = tss_esapi::tcti_ldr::TctiNameConf::from_str(tcti)
        .with_context(|| format!("TCTI {tcti:?}"))?;
    let mut ctx =
        tss_esapi::Context::new(conf).with_context(|| format!("opening the TPM ({tcti})"))?;
    Ok(seal_and_format(&mut ctx, dev, &Policy::literal(pcrs))?.0)
}

/// A fresh secret sealed under a policy: what a TPM keyslot and its
/// token are made of.
pub struct NewSeal {
    sealed: tpm_seal::Sealed,
    srk_name: Vec<u8>,
    pcr_values: Vec<(u8, Vec<u8>)>,
    /// The keyslot's passphrase (the secret, as systemd encodes it).
    pub passphrase: Zeroizing<String>,
}

impl NewSeal {
    /// The `systemd-tpm2` token for `keyslot`.
    pub fn token(&self, keyslot: u32, policy: &Policy) -> serde_json::Value {
        token::token_json(&token::TpmToken {
            keyslot,
            blob: &token::blob(&self.sealed.private, &self.sealed.public),
            pcrs: &policy.literal,
            policy_hash: &self.sealed.policy_hash,
            srk_name: &self.srk_name,
            signed: policy.signed.as_ref().map(|s| (&s.pem[..], &s.pcrs[..])),
            pcr_values: &self.pcr_values,
        })
    }
}

/// Seals a fresh random secret under `policy`.
pub fn seal_new(ctx: &mut tss_esapi::Context, policy: &Policy) -> Result<NewSeal> {
    let srk = tpm_seal::srk(ctx).context(SRK_REFUSED)?;
    let srk_name = tpm_seal::srk_name(ctx, srk).context("reading the storage root key's name")?;
    let secret = Zeroizing::new(random32()?);
    let sealed = tpm_seal::seal(ctx, srk, policy, &*secret).map_err(|e| {
        let why = if is_lockout(&e) {
            format!("sealing the new key: {LOCKOUT}; nothing was written")
        } else {
            "sealing the volume secret".to_string()
        };
        anyhow::Error::new(e).context(why)
    })?;
    // Only for messages: a failure to read them costs the diagnosis only.
    let pcr_values = tpm_seal::pcr_values(ctx, &policy.literal).unwrap_or_default();
    Ok(NewSeal {
        sealed,
        srk_name,
        pcr_values,
        passphrase: Zeroizing::new(token::tpm_passphrase(&*secret)),
    })
}

/// Seals a fresh secret under `policy` and formats `dev` (proven blank by the
/// caller) as LUKS2 with it; returns the TPM keyslot's passphrase too, so
/// the caller can open the volume without a second unseal.
pub fn seal_and_format(
    ctx: &mut tss_esapi::Context,
    dev: &Path,
    policy: &Policy,
) -> Result<(Encrypted, Zeroizing<String>)> {
    let new = seal_new(ctx, policy)?;
    let recovery_key = Zeroizing::new(token::recovery_key(&Zeroizing::new(random32()?)));
    let e = luks::format_luks2(
        dev,
        new.passphrase.as_bytes(),
        recovery_key.as_bytes(),
        |slot| new.token(slot, policy),
    )
    .with_context(|| format!("formatting {} as LUKS2", dev.display()))?;
    let e = Encrypted {
        luks_uuid: e.uuid,
        tpm_keyslot: e.tpm_keyslot,
        recovery_keyslot: e.recovery_keyslot,
        pcrs: policy.literal.clone(),
        recovery_key,
    };
    Ok((e, new.passphrase))
}

/// `dev`'s systemd-tpm2 token, once its policy is checked to be exactly
/// the one the helper creates (`policy`): a token sealed to anything else
/// was not made by this machine's first boot, and is never unsealed. Reads
/// the header only (no TPM needed).
pub fn our_token(dev: &Path, policy: &Policy) -> Result<token::ParsedToken> {
    let json = luks::tpm2_token(dev)?.with_context(|| {
        format!(
            "{} holds a LUKS2 volume with no systemd-tpm2 token: this machine did not \
             provision it. {FOREIGN_ADVICE}",
            dev.display()
        )
    })?;
    let t = token::parse_token(&json)
        .map_err(|e| anyhow::anyhow!("the systemd-tpm2 token of {}: {e}", dev.display()))?;
    if let Some(why) = token::policy_mismatch(&t, policy) {
        bail!(
            "{} holds a LUKS2 volume this machine did not provision: {why}. {FOREIGN_ADVICE}",
            dev.display()
        );
    }
    Ok(t)
}

/// Unseals the secret of `dev`'s token `t` (from [`our_token`], so its
/// policy is `policy`): its keyslot passphrase. `signatures`: the signed
/// policy's signature file.
pub fn unseal_passphrase(
    ctx: &mut tss_esapi::Context,
    dev: &Path,
    t: token::ParsedToken,
    policy: &Policy,
    signatures: Option<&[u8]>,
) -> Result<Zeroizing<String>> {
    let srk = tpm_seal::srk(ctx).context(SRK_REFUSED)?;
    let name = tpm_seal::srk_name(ctx, srk).context("reading the storage root key's name")?;
    if let Some(why) = token::srk_mismatch(&t, &name) {
        bail!(
            "{}: {why}; nothing was changed; unlock with the recovery key",
            dev.display()
        );
    }
    let sealed = tpm_seal::Sealed {
        private: t.private,
        public: t.public,
        policy_hash: Vec::new(),
    };
    let secret = Zeroizing::new(
        tpm_seal::unseal(ctx, srk, policy, &sealed, signatures).map_err(|e| {
            let now = tpm_seal::pcr_values(ctx, &policy.literal).unwrap_or_default();
            let changed = token::pcr_changes(&t.pcr_values, &now);
            unseal_error(e, dev, policy, &changed)
        })?,
    );
    Ok(Zeroizing::new(token::tpm_passphrase(&secret)))
}

/// A refused unseal, named by its cause: dictionary-attack lockout is not
/// a policy change, and says when it ends and how to get in meanwhile.
/// What dictionary-attack lockout is and when it ends (seal and unseal).
const LOCKOUT: &str = "the TPM is in dictionary-attack lockout (too many failed authorisations \
    or unclean power-offs): this is not a policy change; it ends after the TPM's lockout \
    recovery time, or when its owner clears it (e.g. tpm2_dictionarylockout --clear-lockout)";

fn is_lockout(e: &PolicyError) -> bool {
    use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
    matches!(e, PolicyError::Tpm(tss_esapi::Error::Tss2Error(rc)) if rc.kind() == Some(Tss2ResponseCodeKind::Lockout))
}

/// `changed`: the literal PCRs whose values differ from enrollment's.
fn unseal_error(e: PolicyError, dev: &Path, policy: &Policy, changed: &[String]) -> anyhow::Error {
    let dev = dev.display();
    let why = if let PolicyError::Signature(SignatureError::NotSigned { pcrs, pol, .. }) = &e {
        let from = policy
            .signed
            .as_ref()
            .map_or("-", |s| s.signatures.as_str());
        format!(
            "unsealing the key of {dev}: PCRs {pcrs:?} are in a state the PCR key's owner did \
             not sign (PolicyPCR digest {pol}; signatures from {from}). This boot is not a UKI \
             signed by that key, or something else extended those PCRs: nothing was changed; \
             unlock with the recovery key"
        )
    } else if is_lockout(&e) {
        format!(
            "unsealing the key of {dev}: {LOCKOUT}; nothing was changed; meanwhile unlock with \
             the recovery key"
        )
    } else {
        let what = if changed.is_empty() {
            "no literal PCR differs from its value at enrollment (or none was recorded)".into()
        } else {
            format!("changed since enrollment: {}", changed.join(", "))
        };
        format!(
            "the TPM refused to unseal the key of {dev} (policy: {}; {what}). If the firmware, \
             its settings or the Secure Boot databases changed since enrollment, this is \
             expected: nothing was changed; unlock with the recovery key",
            policy.describe()
        )
    };
    anyhow::Error::new(e).context(why)
}

/// Said when the persistent key at 0x81000001 is not one we can trust.
const SRK_REFUSED: &str = "getting the storage root key (a key at 0x81000001 that is not made \
     from the SRK template is refused)";

/// Said with every refusal of a volume the helper did not make.
pub const FOREIGN_ADVICE: &str =
    "It stays closed and nothing was written. If it is yours (made by \
     hand or by an older initrd-helper), open it with its recovery key as README \"Unlocking by \
     hand\" says; if not, someone planted it: keep the disk for inspection, or reset it with \
     initrd_helper.factory_reset=ID";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockout_is_named_as_such_not_as_a_policy_change() {
        use tss_esapi::constants::response_code::Tss2ResponseCode;
        let dev = Path::new("/dev/vda6");
        let p7 = Policy::literal(&[7]);
        let lockout = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x0000_0921));
        let t = format!("{:#}", unseal_error(lockout.into(), dev, &p7, &[]));
        assert!(
            t.contains("dictionary-attack lockout") && t.contains("not a policy change"),
            "{t}"
        );
        let policy = tss_esapi::Error::Tss2Error(Tss2ResponseCode::from(0x0000_099d));
        let t = format!(
            "{:#}",
            unseal_error(
                policy.into(),
                dev,
                &p7,
                &["PCR 7 (was 00000000…, now 11111111…)".into()]
            )
        );
        assert!(
            t.contains("refused to unseal") && !t.contains("lockout"),
            "{t}"
        );
        assert!(
            t.contains("changed since enrollment: PCR 7 (was 00000000…"),
            "{t}"
        );
    }

    #[test]
    fn pcr_lists() {
        assert_eq!(parse_pcrs("7").unwrap(), vec![7]);
        assert_eq!(parse_pcrs("7, 16").unwrap(), vec![7, 16]);
        for bad in ["", "24", "7,", "x", "-1"] {
            assert!(parse_pcrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blank_means_zero_first_mib() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.img");
        std::fs::File::create(&p).unwrap().set_len(4 << 20).unwrap();
        assert!(is_blank(&p).unwrap());
        let mut img = vec![0u8; 4 << 20];
        img[4096] = 1;
        std::fs::write(&p, img).unwrap();
        assert!(!is_blank(&p).unwrap());
        assert!(encrypt(&p, "device:/nonexistent", &[7])
            .unwrap_err()
            .to_string()
            .contains("not blank"));
    }
}
