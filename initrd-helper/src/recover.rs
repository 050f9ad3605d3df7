//! Recovery without a shell: when the TPM cannot unlock a volume this
//! machine made (refused after a firmware or dbx update, absent, locked
//! out), the data step asks for the recovery key, a bounded number of
//! times, and carries on with the boot. Optionally it then re-seals: a new
//! TPM keyslot sealed to this boot's policy, and the binding rewritten, so
//! the next boot unlocks by itself (talos#10205, systemd#39049).
//!
//! The typed key proves the right to the volume, so the TPM binding is not
//! asked for here: a replaced TPM or motherboard is what recovery is for.
//! Only a volume with our token gets this far (`provision::our_token`).

use crate::plan::DataStep;
use crate::recovery::{self, Answer};
use crate::sys::{self, ask, luks, tpm_bind};
use crate::{identity, provision};
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The pause after a wrong key.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Set once a recovery key opened the volume in this run (the status report).
static USED: AtomicBool = AtomicBool::new(false);

/// Whether this run opened the data volume with a typed recovery key.
pub fn used() -> bool {
    USED.load(Ordering::Relaxed)
}

/// The volume's key from a typed recovery key, after `refused` (why the
/// TPM did not unlock it, logged first: it names what changed). Fails with
/// `refused` when prompting is off, and when no try opened it.
pub fn ask_for_key(d: &DataStep, refused: anyhow::Error) -> Result<luks::Volume> {
    let r = &d.recovery;
    if !r.prompt {
        return Err(refused);
    }
    log::error!("data: {refused:#}");
    let ch = ask::channel(Path::new("/"));
    let dev = d.dev.display().to_string();
    let timeout = (r.timeout_secs > 0).then(|| Duration::from_secs(u64::from(r.timeout_secs)));
    log::warn!("data: asking for the recovery key of {dev} through {ch}");
    for attempt in 1..=r.tries {
        let question = recovery::question(&dev, attempt, r.tries);
        let typed = match ask::ask(&ch, &question, &recovery::ask_id(&dev), timeout) {
            Ok(Answer::Key(k)) => k,
            Ok(Answer::NoAnswer) => {
                log::warn!("data: no recovery key was given for {dev}");
                break;
            }
            Err(e) => {
                log::error!("data: cannot ask for the recovery key through {ch}: {e}");
                break;
            }
        };
        let key = recovery::canonical_key(&typed);
        match luks::volume_key(&d.dev, key.as_bytes()) {
            Ok(vol) => {
                USED.store(true, Ordering::Relaxed);
                log::warn!(
                    "data: the recovery key opened {dev} (try {attempt} of {})",
                    r.tries
                );
                return Ok(vol);
            }
            Err(_) => {
                log::warn!(
                    "data: that key does not open {dev} (try {attempt} of {})",
                    r.tries
                );
                // As a login prompt does: guessing gets slow. It also lets
                // the agent give the console back before the next question.
                std::thread::sleep(RETRY_PAUSE);
            }
        }
    }
    Err(refused.context(format!(
        "no recovery key opened {dev} ({} tries at most); nothing was changed",
        r.tries
    )))
}

/// After a recovery unlock, with `d.recovery.reseal`: seals a new secret to
/// this boot's policy, rewrites the binding for it, then swaps the TPM
/// keyslot and token. Before PCR 15 is extended (the binding needs it
/// zero). A failure leaves the old keyslot in place and costs only the
/// convenience: the next boot asks again.
pub fn reseal(d: &DataStep, vol: &luks::Volume, signatures: Option<&[u8]>) {
    let t = std::time::Instant::now();
    match try_reseal(d, vol, signatures) {
        Ok(slot) => log::info!(
            "data: re-sealed {} to {} (keyslot {slot}); the next boot unlocks through the TPM \
             ({:.1} ms)",
            d.dev.display(),
            d.policy.describe(),
            t.elapsed().as_secs_f64() * 1000.0
        ),
        Err(e) => log::error!(
            "data: re-sealing {} failed: {e:#}; the old TPM keyslot stays, and the next boot \
             asks for the recovery key again",
            d.dev.display()
        ),
    }
}

fn try_reseal(d: &DataStep, vol: &luks::Volume, signatures: Option<&[u8]>) -> Result<u32> {
    let mut ctx = sys::tpm::context(Path::new("/")).map_err(anyhow::Error::msg)?;
    if d.policy.signed.is_some() {
        sys::tpm_policy::preflight(&mut ctx, &d.policy, signatures)
            .context("the signed PCR policy cannot be met in this boot")?;
    }
    let new = provision::seal_new(&mut ctx, &d.policy)?;
    // The binding first: a cut after it leaves the old token, which the
    // TPM still refuses, so the next boot asks again and re-seals again.
    let digest = identity::binding_digest(&vol.uuid, &vol.key);
    tpm_bind::write(&mut ctx, &d.policy, signatures, &digest)
        .context("binding the volume to this TPM")?;
    luks::replace_tpm_keyslot(&d.dev, &vol.key, new.passphrase.as_bytes(), |slot| {
        new.token(slot, &d.policy)
    })
    .context("replacing the TPM keyslot")
}
