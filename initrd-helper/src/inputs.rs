//! The boot's inputs: the kernel command line, the config file and the
//! machine's facts, gathered (with a bounded wait for the boot disk) and
//! planned. `run` and `plan` share this; so do the bad-input tests, which
//! plan disk images the way `plan --disk` does.

use crate::{cmdline, config, facts, plan, sys};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `plan --disk` assumes in place of the host's TPM.
pub const ASSUMED_TPM: &str = "assumed present (plan --disk does not look at the host's TPM)";

/// How often the boot disk is looked for again while waiting.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);
/// How long the set of disks must stay unchanged, once it changed while
/// we waited, before the only candidate disk is taken as the boot disk.
const DISK_QUIET: Duration = Duration::from_millis(500);

pub struct Inputs {
    pub cmd: cmdline::Cmdline,
    pub cfg: config::Config,
    pub root: PathBuf,
}

/// Parses the command line (`cmdline`, else ROOT/proc/cmdline) and the
/// config (`config`, else the default path; missing = defaults).
pub fn load(cmdline: Option<&str>, config: Option<&Path>, root: Option<&Path>) -> Result<Inputs> {
    let root = root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let text = match cmdline {
        Some(c) => c.to_string(),
        None => {
            std::fs::read_to_string(root.join("proc/cmdline")).context("reading /proc/cmdline")?
        }
    };
    let cmd = cmdline::parse(&text)?;
    let cfg_path = config.map_or_else(|| PathBuf::from(config::DEFAULT_PATH), Path::to_path_buf);
    let cfg = config::load(&cfg_path)?;
    Ok(Inputs { cmd, cfg, root })
}

/// Gathers facts and plans, rescanning until the boot disk shows up or the
/// configured timeout passes (udev may still be loading the disk driver).
pub fn plan_with_wait(
    i: &Inputs,
    images: &[PathBuf],
    wait: bool,
) -> Result<(plan::Plan, facts::Facts)> {
    let deadline = Instant::now() + Duration::from_secs(i.cfg.devices.timeout_secs.into());
    let mut said = false;
    let probe_type = i.cfg.data.enabled.then(|| i.cfg.data_partition_type());
    let mut tpm = facts::TpmFacts::Absent;
    // A disk image says nothing about the firmware of the machine it is for.
    let (loader_partuuid, product_uuid) = if images.is_empty() {
        (sys::loader_partuuid(&i.root), sys::product_uuid(&i.root))
    } else {
        (None, None)
    };
    // Rule 3 of the disk choice (the only candidate) only counts once the
    // set of disks has been still for DISK_QUIET: disks that appear while
    // we wait (a driver probing them one by one) may not all be there yet.
    let by_identity = i.cmd.disk.or(i.cfg.devices.disk).is_some() || loader_partuuid.is_some();
    let mut seen: Option<(Vec<String>, Instant)> = None;
    let pcr_files = sys::pcr_files(&i.root, &i.cfg.data);
    // Like the firmware facts: a disk image says nothing about them.
    let efi_reset = if images.is_empty() {
        sys::efi_reset(&i.root)
    } else {
        Default::default()
    };
    loop {
        let disks = sys::disks(&i.root, images, probe_type);
        let names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
        let quiet = match &mut seen {
            None => {
                seen = Some((names, Instant::now()));
                true
            }
            Some((old, since)) if *old != names => {
                (*old, *since) = (names, Instant::now());
                false
            }
            Some((_, since)) => since.elapsed() >= DISK_QUIET,
        };
        // A TPM found once stays found; an absent one is looked for again
        // (its driver may load after the disk's), which is cheap.
        // Planning a disk image: the host's TPM and device-mapper say
        // nothing about the machine it is for; a usable TPM is assumed.
        // (`INITRD_HELPER_TCTI` names a TPM to ask instead, e.g. a swtpm.)
        if !images.is_empty() && std::env::var_os(sys::tpm::TCTI_ENV).is_none() {
            tpm = facts::TpmFacts::Present {
                manufacturer: ASSUMED_TPM.into(),
            };
        } else if !matches!(tpm, facts::TpmFacts::Present { .. }) {
            tpm = sys::tpm::probe(&i.root);
        }
        let facts = facts::Facts {
            disks,
            tpm: tpm.clone(),
            data_open: images.is_empty() && sys::mapper_active(plan::DATA_NAME),
            loader_partuuid,
            product_uuid: product_uuid.clone(),
            pcr_files: pcr_files.clone(),
            efi_reset: efi_reset.clone(),
            tpm_settled: !wait || Instant::now() >= deadline,
        };
        match plan::plan(&facts, &i.cmd, &i.cfg) {
            Ok(_) if wait && !by_identity && !quiet && Instant::now() < deadline => {
                std::thread::sleep(RESCAN_INTERVAL);
            }
            Ok(p) => return Ok((p, facts)),
            Err(e) if wait && e.may_resolve_by_waiting() && Instant::now() < deadline => {
                if !said {
                    ::log::info!(
                        "waiting up to {} s for the boot disk: {e}",
                        i.cfg.devices.timeout_secs
                    );
                    said = true;
                }
                std::thread::sleep(RESCAN_INTERVAL);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// An error as the one line the console and journal get: the chain joined
/// with ": ", a cause dropped when the entry before already ends with its
/// text (some library errors print their source too).
pub fn error_line(e: &anyhow::Error) -> String {
    chain_text(e.chain().map(|c| c.to_string()))
}

fn chain_text(chain: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in chain {
        if !parts.last().is_some_and(|p| p.ends_with(&c)) {
            parts.push(c);
        }
    }
    parts.join(": ").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_text_drops_repeated_causes() {
        let c = ["step verity", "io: No such device", "No such device"].map(String::from);
        assert_eq!(
            super::chain_text(c.into_iter()),
            "step verity: io: No such device"
        );
    }
}
