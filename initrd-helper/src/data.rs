//! The data step: first-boot provisioning, unlock and mount on every boot,
//! and the factory reset.
//!
//! Crash safety rests on one GPT attribute bit (`plan::IN_PROGRESS_BIT`):
//! it is set (together with the grow and the fresh UUID, in one
//! crash-ordered table write) before anything is written to the partition,
//! and cleared only once the new file system is made and mounted. A boot
//! that finds the bit provisions again from scratch; nothing of a user's
//! can be there yet, because the volume was never handed over.
//! A factory reset sets the same bit before it erases, so a power cut
//! mid-reset also converges.

use crate::config::Encryption;
use crate::identity;
use crate::pcrsig;
use crate::plan::{DataAction, DataStep, IN_PROGRESS_BIT};
use crate::provision;
use crate::reset::{self, ResetDecision};
use crate::sys::{self, disk_write, luks, tpm_bind, tpm_policy};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The recovery key hand-off: read by the OS (escrow), then deleted by it.
pub const RECOVERY_KEY_FILE: &str = "/run/initrd-helper/recovery-key";
/// In the data step's state directory: the ID of the last factory reset done.
const RESET_FILE: &str = "factory-reset";
/// At least this much is zeroed at the partition's start before a format:
/// LUKS2's default header + keyslot area, and every fs superblock there.
const WIPE_BYTES: u64 = 16 << 20;

impl DataStep {
    /// The device holding the file system.
    fn fs_dev(&self) -> PathBuf {
        match self.encryption {
            Encryption::Tpm2 => Path::new("/dev/mapper").join(&self.name),
            Encryption::None => self.dev.clone(),
        }
    }
}

/// Runs the step; the text says what was done, for the step's log line.
pub fn run(d: &DataStep) -> Result<String> {
    let done = match d.action {
        DataAction::Provision(_) => provision_volume(d),
        DataAction::Open => open_or_reset(d),
    }?;
    if d.clear_efi_reset {
        // The reset is recorded on the volume, so a variable that stays
        // (a firmware refusing the delete) cannot reset it twice.
        match sys::clear_efi_reset(Path::new("/")) {
            Ok(_) => log::info!("factory reset: the FactoryResetRequest EFI variable is cleared"),
            Err(e) => log::warn!(
                "factory reset: the FactoryResetRequest EFI variable could not be deleted ({e}); \
                 the reset is recorded as done, so it is not repeated"
            ),
        }
    }
    Ok(done)
}

fn open_or_reset(d: &DataStep) -> Result<String> {
    // PCR 15 is extended only once the volume is kept: a reset provisions a
    // new volume, whose binding can only be written while PCR 15 is zero.
    let mut pending = None;
    let opened = open(d).and_then(|event| {
        pending = event;
        mount(d)
    });
    let done = match (&opened, &d.reset) {
        (Ok(()), Some(_)) => std::fs::read_to_string(Path::new(&d.state).join(RESET_FILE)).ok(),
        _ => None,
    };
    let decision = reset::decide(d.reset.as_deref(), opened.is_ok(), done.as_deref());
    let keeps = matches!(
        decision,
        ResetDecision::KeepAndRearm | ResetDecision::AlreadyDone | ResetDecision::Fail
    );
    if let (true, Some(event)) = (keeps, pending) {
        measure(&event)?;
    }
    if keeps && opened.is_ok() {
        grow_fs(d);
    }
    match decision {
        ResetDecision::KeepAndRearm => {
            forget_reset(d);
            Ok(format!(
                "opened {} and mounted it at {}",
                d.dev.display(),
                d.target
            ))
        }
        ResetDecision::Fail => Err(opened
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("the data volume did not open"))),
        ResetDecision::ResetUnopenable => {
            // Asked to erase it anyway: an unreadable volume is no reason not to.
            if let Err(e) = &opened {
                log::warn!(
                    "factory reset: the old volume cannot be opened ({e:#}); erasing it regardless"
                );
            }
            close(d)?;
            provision_volume(d)
        }
        ResetDecision::AlreadyDone => {
            log::warn!(
                "factory reset: this request was already carried out on an earlier boot; not \
                 resetting again (remove systemd.factory_reset= from the boot entry: after one \
                 boot without it, the flag works again; or use a new initrd_helper.factory_reset=ID)"
            );
            Ok(format!("opened {} (reset already done)", d.dev.display()))
        }
        ResetDecision::Reset => {
            sys::mount::umount(Path::new(&d.target))
                .context("unmounting the data before the reset")?;
            close(d)?;
            provision_volume(d)
        }
    }
}

/// Unlocks through the TPM (tpm2), but only a volume this machine
/// provisioned (exact token policy, then the TPM binding); a volume opened
/// by hand with the recovery key (emergency shell) is used as it is.
/// Returns the PCR 15 event still to be measured (see `measure`).
fn open(d: &DataStep) -> Result<Option<[u8; 32]>> {
    if d.encryption == Encryption::None {
        grow_partition(d)?;
        return Ok(None);
    }
    if sys::mapper_active(&d.name) {
        if d.grow {
            log::info!(
                "data: {} was opened before the helper ran: not grown",
                d.name
            );
        }
        return Ok(None);
    }
    let t = std::time::Instant::now();
    // The header first: a foreign volume is refused even without a TPM,
    // and is never prompted for.
    let token = provision::our_token(&d.dev, &d.policy)?;
    let sigs = signatures(d);
    let (vol, recovered) = match unseal(d, token, &sigs) {
        Ok((mut ctx, vol)) => {
            check_binding(d, &mut ctx, &vol)?;
            (vol, false)
        }
        Err(refused) => (crate::recover::ask_for_key(d, refused)?, true),
    };
    // Ours: now it may be grown (before activation, so the mapping takes
    // the new size).
    grow_partition(d)?;
    if recovered && d.recovery.reseal {
        let sigs = sigs.as_ref().ok().and_then(|s| s.as_deref());
        crate::recover::reseal(d, &vol, sigs);
    }
    let event = activate(d, &vol)?;
    log::info!(
        "data: unlocked {} {} (LUKS2 {}{}) in {:.1} ms",
        d.dev.display(),
        if recovered {
            "with the recovery key"
        } else {
            "through the TPM"
        },
        vol.uuid,
        if recovered {
            ""
        } else {
            ", bound to this machine"
        },
        t.elapsed().as_secs_f64() * 1000.0
    );
    // PCR 15 is extended wherever there is a TPM to extend.
    let tpm = !recovered || sys::tpm::context(Path::new("/")).is_ok();
    Ok(tpm.then_some(event))
}

/// The volume's key through the TPM: the token's secret unsealed under
/// this boot's policy. Any failure here is one the recovery key overcomes.
fn unseal(
    d: &DataStep,
    token: crate::token::ParsedToken,
    sigs: &Result<Option<Vec<u8>>>,
) -> Result<(tss_esapi::Context, luks::Volume)> {
    let sigs = sigs.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut ctx = sys::tpm::context(Path::new("/")).map_err(anyhow::Error::msg)?;
    let pass = provision::unseal_passphrase(&mut ctx, &d.dev, token, &d.policy, sigs.as_deref())?;
    let vol = luks::volume_key(&d.dev, pass.as_bytes())?;
    Ok((ctx, vol))
}

/// An unsealed volume is ours only if this TPM's binding names it.
fn check_binding(d: &DataStep, ctx: &mut tss_esapi::Context, vol: &luks::Volume) -> Result<()> {
    let digest = identity::binding_digest(&vol.uuid, &vol.key);
    tpm_bind::check(ctx, &d.policy, &digest).map_err(|e| {
        anyhow::anyhow!(
            "{} holds LUKS2 volume {} that this machine did not provision: {e}. {}",
            d.dev.display(),
            vol.uuid,
            provision::FOREIGN_ADVICE
        )
    })
}

/// Opens the volume by its key; returns its PCR 15 event (systemd's
/// `tpm2-measure-pcr=yes` event) for `measure`.
fn activate(d: &DataStep, vol: &luks::Volume) -> Result<[u8; 32]> {
    luks::open_with_key(&d.dev, &d.name, &vol.key)
        .with_context(|| format!("opening {} as /dev/mapper/{}", d.dev.display(), d.name))?;
    Ok(identity::pcr15_event(&d.name, &vol.uuid, &vol.key))
}

/// The signed policy's signature file (bounded), when the policy is signed.
fn signatures(d: &DataStep) -> Result<Option<Vec<u8>>> {
    let Some(s) = &d.policy.signed else {
        return Ok(None);
    };
    sys::read_bounded(Path::new(&s.signatures), pcrsig::MAX_SIGNATURE_FILE)
        .map(Some)
        .map_err(|e| {
            anyhow::anyhow!(
                "the signed PCR policy (key {}) needs its signatures: {e} (boot a UKI built \
                 with --pcr-private-key, or set data.pcr_signature)",
                s.key_file
            )
        })
}

/// Extends PCR 15 with an opened volume's event: from here on, the binding
/// index cannot be written, and nothing sealed to "no volume open yet"
/// unseals.
fn measure(event: &[u8; 32]) -> Result<()> {
    let mut ctx = sys::tpm::context(Path::new("/")).map_err(anyhow::Error::msg)?;
    tpm_bind::measure(&mut ctx, event).context("measuring the opened volume into PCR 15")
}

/// A boot without a reset request re-arms the flags: the next request,
/// even with the same ID, resets again. (A failure here only means a
/// repeated request would be skipped, so it is a warning.)
fn forget_reset(d: &DataStep) {
    let f = Path::new(&d.state).join(RESET_FILE);
    match std::fs::remove_file(&f) {
        Ok(()) => {
            log::info!("factory reset: no request on this boot; the next one will be honoured")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("factory reset: removing {}: {e}", f.display()),
    }
}

fn close(d: &DataStep) -> Result<()> {
    if d.encryption == Encryption::Tpm2 && sys::mapper_active(&d.name) {
        luks::close(&d.name).with_context(|| format!("closing /dev/mapper/{}", d.name))?;
    }
    Ok(())
}

fn mount(d: &DataStep) -> Result<()> {
    let dev = d.fs_dev();
    sys::mount::mount_rw(&dev, Path::new(&d.target), "ext4")
        .with_context(|| format!("mounting {} (ext4) at {}", dev.display(), d.target))
}

/// Logs how long a provisioning phase took (the figures the issue asks for).
fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = std::time::Instant::now();
    let r = f()?;
    log::info!(
        "data: {what} in {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(r)
}

fn sysname(dev: &Path) -> String {
    dev.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A disk that grew since provisioning (a VM disk enlarged, the image
/// moved to a bigger drive): the partition grows to the new end, crash-safe
/// like the first grow (`gpt_grow`), and never marked in progress (it holds
/// data). Nothing to do on a disk of the same size.
fn grow_partition(d: &DataStep) -> Result<()> {
    // The planner read the table already: no room past it, nothing to read
    // or write again (a cut mid-write leaves the primary's old end, so the
    // next plan still sees the room).
    if !d.grow || d.disk_growth == 0 {
        return Ok(());
    }
    let t = std::time::Instant::now();
    let edited = disk_write::edit_entry(&d.disk, d.number, true, None, 0, 0)
        .with_context(|| format!("growing {} to the disk's new end", d.dev.display()))?;
    if let Some(len) = edited.and_then(|e| e.grew_to) {
        log::info!(
            "data: the disk grew: grew {} to {} MiB in {:.1} ms",
            d.dev.display(),
            len >> 20,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

/// Grows the mounted file system to fill its device when the device is
/// bigger (after `grow_partition`, or a cut between the two on an earlier
/// boot). A failure leaves the data as it was: a warning, not a failed boot.
fn grow_fs(d: &DataStep) {
    if !d.grow {
        return;
    }
    let dev = d.fs_dev();
    let t = std::time::Instant::now();
    let r = sys::fs_grow::ext4_target(&dev).and_then(|target| match target {
        Some((g, blocks)) => sys::fs_grow::ext4_grow(Path::new(&d.target), blocks).map(|()| {
            let bytes = |n: u64| n.saturating_mul(g.block_size);
            Some((bytes(g.blocks), bytes(blocks)))
        }),
        None => Ok(None),
    });
    match r {
        Ok(Some((from, to))) => log::info!(
            "data: grew the file system on {} from {} to {} MiB in {:.1} ms",
            dev.display(),
            from >> 20,
            to >> 20,
            t.elapsed().as_secs_f64() * 1000.0
        ),
        Ok(None) => {}
        Err(e) => log::warn!(
            "data: the file system on {} could not be grown ({e}); it keeps its size, the \
             next boot tries again",
            dev.display()
        ),
    }
}

/// Marks the partition in progress (grown, fresh UUID), then formats.
fn mark(d: &DataStep) -> Result<()> {
    let uuid = crate::guid::Guid::random_v4(sys::random16().context("reading random bytes")?);
    let edited = disk_write::edit_entry(&d.disk, d.number, d.grow, Some(uuid), IN_PROGRESS_BIT, 0)
        .with_context(|| {
            format!(
                "marking partition {} of {} in progress",
                d.number,
                d.disk.display()
            )
        })?;
    if let Some(e) = edited {
        if let Some(len) = e.grew_to {
            log::info!("data: grew {} to {} MiB", d.dev.display(), len >> 20);
        }
        if !disk_write::udev_refresh(&sysname(&d.dev), &e.uuid) {
            log::warn!(
                "data: udev did not show {} under its new UUID {} in time",
                d.dev.display(),
                e.uuid
            );
        }
    }
    Ok(())
}

fn provision_volume(d: &DataStep) -> Result<String> {
    // Read once; without them a signed policy's binding cannot be written.
    let sigs = signatures(d)?;
    if d.policy.signed.is_some() {
        preflight(d, sigs.as_deref())?;
    }
    log::info!("data: provisioning {}: do not power off", d.dev.display());
    timed("marked in progress (GPT)", || mark(d))?;
    close(d)?; // an earlier attempt of this boot (unit restart)
    let wipe = luks::header_len(&d.dev, WIPE_BYTES);
    timed("wiped the old header", || {
        disk_write::wipe_start(&d.dev, wipe).with_context(|| format!("wiping {}", d.dev.display()))
    })?;
    let luks_uuid = match d.encryption {
        Encryption::Tpm2 => Some(timed("LUKS2 formatted, TPM2-sealed, opened", || {
            encrypt(d, sigs.as_deref())
        })?),
        Encryption::None => None,
    };
    let dev = d.fs_dev();
    timed("mkfs.ext4", || disk_write::mkfs_ext4(&dev, &d.mkfs_options))?;
    mount(d)?;
    if let Some(id) = &d.reset {
        let f = Path::new(&d.state).join(RESET_FILE);
        crate::machine_id::write(&f, &format!("{id}\n"))
            .with_context(|| format!("recording the factory reset in {}", f.display()))?;
    }
    timed("cleared the in-progress mark", || {
        disk_write::edit_entry(&d.disk, d.number, false, None, 0, IN_PROGRESS_BIT)
            .map(|_| ())
            .context("clearing the in-progress mark")
    })?;
    Ok(match luks_uuid {
        Some(u) => format!(
            "provisioned {} as LUKS2 {u}, ext4 at {}",
            d.dev.display(),
            d.target
        ),
        None => format!("provisioned {} as ext4 at {}", d.dev.display(), d.target),
    })
}

/// Checks, before the first write, that the signed policy can be met now
/// (the binding needs it): a boot that could not bind never formats.
fn preflight(d: &DataStep, sigs: Option<&[u8]>) -> Result<()> {
    let mut ctx = sys::tpm::context(Path::new("/")).map_err(anyhow::Error::msg)?;
    tpm_policy::preflight(&mut ctx, &d.policy, sigs).context(
        "the signed PCR policy cannot be met in this boot, so a new volume could not be bound: \
         nothing was written (the UKI is signed for boot phases: \
         systemd-pcrphase-initrd.service must have extended enter-initrd into PCR 11)",
    )
}

/// LUKS2 + TPM2 keyslot + recovery keyslot, bound to this TPM; hands the
/// recovery key over, opens and measures the new volume.
fn encrypt(d: &DataStep, sigs: Option<&[u8]>) -> Result<String> {
    let mut ctx = sys::tpm::context(Path::new("/")).map_err(anyhow::Error::msg)?;
    let (e, pass) = provision::seal_and_format(&mut ctx, &d.dev, &d.policy)?;
    let vol = luks::volume_key(&d.dev, pass.as_bytes())?;
    let digest = identity::binding_digest(&vol.uuid, &vol.key);
    tpm_bind::write(&mut ctx, &d.policy, sigs, &digest)
        .context("binding the new volume to this TPM (NV index)")?;
    hand_over(&e.recovery_key).context("handing over the recovery key")?;
    log::warn!(
        "data: a recovery key for LUKS2 volume {} is in {RECOVERY_KEY_FILE} (mode 0400) until \
         shutdown: store it safely, then delete the file. It is shown nowhere else.",
        e.luks_uuid
    );
    let event = activate(d, &vol)?;
    tpm_bind::measure(&mut ctx, &event).context("measuring the new volume into PCR 15")?;
    Ok(e.luks_uuid)
}

/// Writes the recovery key to a 0400 file under /run (survives switch-root,
/// never reaches a disk). No trailing newline: `cryptsetup open
/// --key-file=FILE` uses a file's bytes as they are.
fn hand_over(key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = Path::new(RECOVERY_KEY_FILE);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(p);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()
}
