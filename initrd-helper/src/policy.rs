//! The TPM policy the data volume's secret is sealed under, decided by the
//! planner: literal PCRs (their values now), and optionally a signed PCR
//! policy (systemd's: PolicyAuthorize by an RSA key over PCR 11, whose
//! signed values the UKI carries), so an update signed by the same key
//! unlocks without re-enrollment.

use crate::pcrsig::RsaPublic;
use serde::Serialize;

/// Where systemd-stub puts the UKI's `.pcrpkey` and `.pcrsig` for the
/// initrd, and where systemd's tmpfiles copy them for stage 2.
pub const STUB_PUBLIC_KEY: &str = "/.extra/tpm2-pcr-public-key.pem";
pub const STUB_SIGNATURE: &str = "/.extra/tpm2-pcr-signature.json";
pub const RUN_PUBLIC_KEY: &str = "/run/systemd/tpm2-pcr-public-key.pem";
pub const RUN_SIGNATURE: &str = "/run/systemd/tpm2-pcr-signature.json";

/// The PCRs a signed policy covers by default: PCR 11, which systemd-stub
/// and systemd-pcrphase measure the UKI and the boot phases into.
pub const DEFAULT_SIGNED_PCRS: [u8; 1] = [11];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signed {
    /// The PCRs whose values the key's owner signs (`tpm2_pubkey_pcrs`).
    pub pcrs: Vec<u8>,
    /// `pkfp`: the key's fingerprint, as the signature file names it.
    pub pkfp: String,
    /// Where the key was read from.
    pub key_file: String,
    /// Where the signatures are read when the policy is satisfied.
    pub signatures: String,
    #[serde(skip)]
    pub key: RsaPublic,
    /// The PEM file's bytes, as the token's `tpm2_pubkey` carries them.
    #[serde(skip)]
    pub pem: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// PolicyPCR over these PCRs' values at sealing (sha256 bank).
    pub literal: Vec<u8>,
    /// PolicyAuthorize first, when present.
    pub signed: Option<Box<Signed>>,
}

fn sorted(p: &[u8]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

impl Policy {
    pub fn literal(pcrs: &[u8]) -> Policy {
        Policy {
            literal: sorted(pcrs),
            signed: None,
        }
    }

    /// The same policy with `pcr` added to the literal PCRs (the binding
    /// index's write policy adds PCR 15).
    pub fn with_literal(&self, pcr: u8) -> Policy {
        let mut p = self.clone();
        p.literal.push(pcr);
        p.literal = sorted(&p.literal);
        p
    }

    /// What `plan` prints.
    pub fn describe(&self) -> String {
        match &self.signed {
            None => format!("TPM2 PCRs {:?}", self.literal),
            Some(s) if self.literal.is_empty() => format!(
                "TPM2 signed policy over PCRs {:?} (key {}…)",
                s.pcrs,
                &s.pkfp[..12.min(s.pkfp.len())]
            ),
            Some(s) => format!(
                "TPM2 signed policy over PCRs {:?} (key {}…) and PCRs {:?}",
                s.pcrs,
                &s.pkfp[..12.min(s.pkfp.len())],
                self.literal
            ),
        }
    }
}
