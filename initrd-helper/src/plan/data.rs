//! The data partition's policy: provision only what is proven blank, ours
//! unfinished, or asked to be reset; open what is ours; refuse the rest.

use super::{DataAction, DataStep, PlanError, Step, DATA_NAME, IN_PROGRESS_BIT};
use crate::cmdline::Cmdline;
use crate::config::{Config, Encryption, Layout};

use crate::dps;
use crate::facts::{DiskFacts, Facts, PartitionFacts, TpmFacts};
use crate::pcrsig;
use crate::policy::{Policy, Signed};
use crate::sys::blkid::Signature;

/// The data partition of the boot disk, if it has one.
fn data_partition<'d>(
    disk: &'d DiskFacts,
    cfg: &Config,
) -> Result<Option<&'d PartitionFacts>, PlanError> {
    let t = cfg.data_partition_type();
    let found: Vec<&PartitionFacts> = disk
        .partitions
        .iter()
        .filter(|p| p.gpt.type_guid == t)
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(PlanError::AmbiguousData {
            disk: disk.name.clone(),
            kind: dps::type_name(&t),
            parts: many.iter().map(|p| p.dev.display().to_string()).collect(),
        }),
    }
}

fn expected_signature(e: Encryption) -> &'static str {
    match e {
        Encryption::Tpm2 => "crypto_LUKS",
        Encryption::None => "ext4",
    }
}

/// Blank, ours-unfinished, ours-finished, or someone else's.
fn data_action(p: &PartitionFacts, cfg: &Config, reset: bool) -> Result<DataAction, PlanError> {
    let dev = p.dev.display().to_string();
    if p.gpt.attributes & IN_PROGRESS_BIT != 0 {
        return Ok(DataAction::Provision(
            "an interrupted first boot left its in-progress mark".into(),
        ));
    }
    let expected = expected_signature(cfg.data.encryption);
    match &p.signature {
        None => Err(PlanError::DataUnprobed {
            dev,
            error: "not probed".into(),
        }),
        Some(Err(error)) => Err(PlanError::DataUnprobed {
            dev,
            error: error.clone(),
        }),
        Some(Ok(Signature::None)) => Ok(DataAction::Provision(
            "blank: libblkid finds no signature".into(),
        )),
        Some(Ok(Signature::Found(t))) if t == expected => Ok(DataAction::Open),
        Some(Ok(_)) if reset => Ok(DataAction::Provision("factory reset requested".into())),
        Some(Ok(Signature::Found(t))) => Err(PlanError::DataNotOurs {
            dev,
            found: t.clone(),
            expected,
        }),
        Some(Ok(Signature::Ambiguous)) => Err(PlanError::DataNotOurs {
            dev,
            found: "several contradicting signatures".into(),
            expected,
        }),
    }
}

fn tpm_text(t: &TpmFacts) -> String {
    match t {
        TpmFacts::Absent => "no TPM device found".into(),
        TpmFacts::Unusable { error } => error.clone(),
        TpmFacts::Present { manufacturer } => format!("present ({manufacturer})"),
    }
}

/// Bytes of `disk` past its partition table's end (the backup header).
fn disk_growth(disk: &DiskFacts) -> u64 {
    match &disk.table {
        Ok(t) => disk.size.saturating_sub(
            t.alternate_lba
                .saturating_add(1)
                .saturating_mul(t.sector_size),
        ),
        Err(_) => 0,
    }
}

/// The data step for the boot disk, or `None` (with a warning) without one.
pub(super) fn data_step(
    facts: &Facts,
    disk: &DiskFacts,
    cmd: &Cmdline,
    cfg: &Config,
    warnings: &mut Vec<String>,
) -> Result<Option<Step>, PlanError> {
    if !cfg.data.enabled {
        return Ok(None);
    }
    let Some(p) = data_partition(disk, cfg)? else {
        warnings.push(format!(
            "the boot disk {} has no data partition (type {}): {} stays as the image has it",
            disk.name,
            cfg.data_partition_type(),
            cfg.data.mount_point
        ));
        return Ok(None);
    };
    let (reset, clear_efi_reset) = reset_request(cmd, facts, warnings);
    let action = data_action(p, cfg, reset.is_some())?;
    let dev = p.dev.display().to_string();
    let tpm_ok = matches!(facts.tpm, TpmFacts::Present { .. });
    // Opened by hand with the recovery key: only the mount is left to do.
    let opened = action == DataAction::Open && reset.is_none() && facts.data_open;
    // A volume a reset is about to erase is not worth a recovery key.
    let mut recovery = recovery_options(cmd, cfg);
    recovery.prompt &= reset.is_none();
    let prompt = action == DataAction::Open && recovery.prompt;
    if cfg.data.encryption == Encryption::Tpm2 && !tpm_ok && !opened && prompt && facts.tpm_settled
    {
        warnings.push(format!(
            "no usable TPM2 ({}): the recovery key of {dev} will be asked for on the console",
            tpm_text(&facts.tpm)
        ));
    } else if cfg.data.encryption == Encryption::Tpm2 && !tpm_ok && !opened {
        let tpm = tpm_text(&facts.tpm);
        return Err(match action {
            DataAction::Open if reset.is_none() => PlanError::NoTpmToUnlock {
                dev,
                name: DATA_NAME.into(),
                tpm,
            },
            _ => PlanError::NoTpmToProvision { dev, tpm },
        });
    }
    let is_last = !disk
        .partitions
        .iter()
        .any(|o| o.gpt.first_lba > p.gpt.first_lba);
    if cfg.data.grow && !is_last {
        warnings.push(format!("{dev} is not the last partition: it is not grown"));
    }
    let root = cfg.root.mount_point.trim_end_matches('/');
    // The data partition is the root itself, or mounted inside it (at
    // /var by default): our state dir is the root's /var/lib/initrd-helper
    // either way.
    let (target, state_in_fs) = match cfg.root.layout {
        Layout::Data => (cfg.root.mount_point.clone(), "var/lib/initrd-helper"),
        Layout::Slot | Layout::Tmpfs => (
            format!("{root}{}", cfg.data.mount_point.trim_end_matches('/')),
            "lib/initrd-helper",
        ),
    };
    let state = format!("{}/{state_in_fs}", target.trim_end_matches('/'));
    Ok(Some(Step::Data(DataStep {
        disk: disk.dev.clone(),
        number: p.gpt.number,
        dev: p.dev.clone(),
        encryption: cfg.data.encryption,
        policy: tpm_policy(cfg, facts)?,
        grow: cfg.data.grow && is_last,
        disk_growth: disk_growth(disk),
        name: DATA_NAME.into(),
        target,
        state,
        action,
        reset,
        clear_efi_reset,
        mkfs_options: cfg.data.mkfs_options.clone(),
        recovery,
    })))
}

/// The recovery options: the config's, with the command line's overrides.
fn recovery_options(cmd: &Cmdline, cfg: &Config) -> crate::recovery::RecoveryOptions {
    crate::recovery::RecoveryOptions {
        prompt: cmd.recovery_prompt.unwrap_or(cfg.data.recovery_prompt),
        tries: cfg.data.recovery_tries,
        timeout_secs: cfg.data.recovery_timeout_secs,
        reseal: cmd
            .reseal_after_recovery
            .unwrap_or(cfg.data.reseal_after_recovery),
    }
}

/// This boot's reset request: the command line's (it wins, and
/// `systemd.factory_reset=0` turns the EFI variable off, as in systemd
/// 258), else the `FactoryResetRequest` EFI variable's when it is for this
/// OS and was made in an earlier boot. The bool: the variable is to be
/// deleted once the reset is done.
fn reset_request(
    cmd: &Cmdline,
    facts: &Facts,
    warnings: &mut Vec<String>,
) -> (Option<String>, bool) {
    let from_cmdline = cmd.factory_reset_request();
    let efi = match &facts.efi_reset.request {
        None => None,
        Some(Err(e)) => {
            warnings.push(format!(
                "the FactoryResetRequest EFI variable is ignored: {e}"
            ));
            None
        }
        Some(Ok(_)) if cmd.factory_reset_off => {
            warnings.push(
                "the FactoryResetRequest EFI variable is ignored: systemd.factory_reset=0".into(),
            );
            None
        }
        Some(Ok(r)) => {
            let f = &facts.efi_reset;
            match crate::reset_request::not_for_us(
                r,
                f.os_id.as_deref(),
                f.image_id.as_deref(),
                f.boot_id.as_deref(),
            ) {
                Some(why) => {
                    warnings.push(format!(
                        "the FactoryResetRequest EFI variable is not for this boot: {why}"
                    ));
                    None
                }
                None => Some(r.reset_id()),
            }
        }
    };
    let clear = efi.is_some();
    (from_cmdline.or(efi), clear)
}

/// The policy a volume is sealed under: the literal PCRs, plus a signed
/// PCR policy when a public key is configured or the UKI brought one.
fn tpm_policy(cfg: &Config, facts: &Facts) -> Result<Policy, PlanError> {
    let mut policy = Policy::literal(&cfg.data.pcrs);
    if cfg.data.encryption == Encryption::None {
        return Ok(policy);
    }
    if let Some((path, content)) = &facts.pcr_files.key {
        let bad = |why: String| PlanError::BadPcrKey {
            path: path.clone(),
            why,
        };
        let pem = content.clone().map_err(bad)?;
        let key = pcrsig::parse_public_key_pem(&pem).map_err(bad)?;
        policy.signed = Some(Box::new(Signed {
            pcrs: cfg.data.signed_pcrs.clone(),
            pkfp: key.fingerprint(),
            key_file: path.clone(),
            signatures: facts
                .pcr_files
                .signature
                .clone()
                .unwrap_or_else(|| crate::policy::STUB_SIGNATURE.into()),
            key,
            pem,
        }));
    } else if policy.literal.is_empty() {
        return Err(PlanError::NoPolicy);
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testutil::*;
    use crate::plan::*;

    fn data_facts(sig: Result<Signature, String>, attrs: u64, tpm: bool) -> Facts {
        let mut d = standard_disk("vda", 1);
        d.partitions[5].signature = Some(sig);
        d.partitions[5].gpt.attributes = attrs;
        let mut f = facts(vec![d]);
        if tpm {
            f.tpm = TpmFacts::Present {
                manufacturer: "IBM".into(),
            };
        }
        f
    }

    fn data_plan(f: &Facts, cmd: &Cmdline) -> Result<Step, PlanError> {
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        let p = plan(f, cmd, &cfg)?;
        Ok(p.steps.into_iter().find(|s| s.name() == "data").unwrap())
    }

    fn action(s: &Step) -> (&DataAction, Option<&str>) {
        match s {
            Step::Data(d) => (&d.action, d.reset.as_deref()),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn an_efi_reset_request_for_this_os_from_an_earlier_boot_resets_once() {
        use crate::reset_request::{encode, parse};
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        let mut f = data_facts(luks, 0, true);
        let boot = "0f3c6a2e9d8b4c1aa5e7f0123456789a";
        f.efi_reset.request = Some(parse(&encode("debian", None, boot)));
        f.efi_reset.os_id = Some("debian".into());
        f.efi_reset.boot_id = Some("11111111-2222-3333-4444-555555555555".into());
        let step = |f: &Facts, cmd: &str| match data_plan(f, &crate::cmdline::parse(cmd).unwrap()) {
            Ok(Step::Data(d)) => (d.reset, d.clear_efi_reset),
            r => panic!("{r:?}"),
        };
        assert_eq!(step(&f, ""), (Some(format!("efi:{boot}")), true));
        // The command line wins; its explicit 0 turns the variable off.
        assert_eq!(
            step(&f, "initrd_helper.factory_reset=x").0.as_deref(),
            Some("id:x")
        );
        assert_eq!(step(&f, "systemd.factory_reset=0"), (None, false));
        // Another OS's request, or one made in this very boot, is not ours.
        let mut other = f.clone();
        other.efi_reset.os_id = Some("fedora".into());
        assert_eq!(step(&other, ""), (None, false));
        other.efi_reset = f.efi_reset.clone();
        other.efi_reset.boot_id = Some(boot.into());
        assert_eq!(step(&other, ""), (None, false));
        other.efi_reset.request = Some(Err("not JSON".into()));
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        let p = plan(&other, &Cmdline::default(), &cfg).unwrap();
        assert!(p
            .warnings
            .iter()
            .any(|w| w.contains("EFI variable is ignored: not JSON")));
    }

    #[test]
    fn the_policy_is_signed_when_the_boot_brings_a_key() {
        let cmd = Cmdline::default();
        let policy = |f: &Facts, cfg: &Config| tpm_policy(cfg, f);
        let mut f = data_facts(Ok(Signature::None), 0, true);
        let cfg = dev_cfg();
        assert_eq!(policy(&f, &cfg).unwrap(), Policy::literal(&[7]));
        let pem = include_bytes!("../../tests/data/pcr-public-key.pem").to_vec();
        f.pcr_files.key = Some((crate::policy::STUB_PUBLIC_KEY.into(), Ok(pem)));
        let p = policy(&f, &cfg).unwrap();
        let s = p.signed.as_deref().unwrap();
        assert_eq!(
            (p.literal.as_slice(), s.pcrs.as_slice()),
            (&[7][..], &[11][..])
        );
        assert_eq!(
            s.pkfp,
            include_str!("../../tests/data/pcr-public-key.pkfp").trim()
        );
        assert_eq!(s.signatures, crate::policy::STUB_SIGNATURE);
        let line = data_plan(&f, &cmd).unwrap().describe();
        assert!(
            line.contains("signed policy over PCRs [11] (key 95ac7adcd9e5…) and PCRs [7]"),
            "{line}"
        );
        // Literal PCRs may be dropped only when a key signs the rest.
        let mut only_signed = cfg.clone();
        only_signed.data.pcrs.clear();
        assert!(policy(&f, &only_signed).unwrap().literal.is_empty());
        let mut none = f.clone();
        none.pcr_files.key = None;
        assert_eq!(policy(&none, &only_signed), Err(PlanError::NoPolicy));
        // A key that is there but unusable stops the plan, naming the file.
        f.pcr_files.key = Some(("/k.pem".into(), Ok(b"junk".to_vec())));
        match policy(&f, &cfg) {
            Err(PlanError::BadPcrKey { path, .. }) => assert_eq!(path, "/k.pem"),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn blank_or_marked_data_is_provisioned_and_ours_is_opened() {
        let cmd = Cmdline::default();
        let blank = data_plan(&data_facts(Ok(Signature::None), 0, true), &cmd).unwrap();
        assert!(matches!(action(&blank).0, DataAction::Provision(w) if w.contains("blank")));
        match &blank {
            Step::Data(d) => assert!(d.grow && d.target == "/sysroot/var"),
            _ => unreachable!(),
        }
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        let open = data_plan(&data_facts(luks.clone(), 0, true), &cmd).unwrap();
        assert_eq!(action(&open).0, &DataAction::Open);
        let marked = data_plan(&data_facts(luks, IN_PROGRESS_BIT, true), &cmd).unwrap();
        assert!(matches!(action(&marked).0, DataAction::Provision(w) if w.contains("interrupted")));
    }

    #[test]
    fn an_opened_volume_grows_into_a_disk_that_grew() {
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        let mut f = data_facts(luks, 0, true);
        // standard_disk's table ends at 1 GiB (backup at LBA 2^21 - 1).
        let same = data_plan(&f, &Cmdline::default()).unwrap();
        assert!(!same.describe().contains("grow"), "{}", same.describe());
        f.disks[0].size = 3 << 30;
        let grown = data_plan(&f, &Cmdline::default()).unwrap();
        match &grown {
            Step::Data(d) => assert_eq!(d.disk_growth, 2 << 30),
            s => panic!("{s:?}"),
        }
        assert!(
            grown
                .describe()
                .contains("grow it and its file system into the disk's new 2048 MiB"),
            "{}",
            grown.describe()
        );
    }

    #[test]
    fn foreign_or_unprobed_data_is_never_formatted() {
        let cmd = Cmdline::default();
        for sig in [
            Ok(Signature::Found("ext4".into())),
            Ok(Signature::Found("xfs".into())),
            Ok(Signature::Ambiguous),
            Err("I/O error".into()),
        ] {
            let e = data_plan(&data_facts(sig.clone(), 0, true), &cmd).unwrap_err();
            assert!(
                matches!(
                    e,
                    PlanError::DataNotOurs { .. } | PlanError::DataUnprobed { .. }
                ),
                "{sig:?}: {e}"
            );
        }
        // A reset request may erase anything on the data partition but an unreadable one.
        let reset = crate::cmdline::parse("systemd.factory_reset=1").unwrap();
        let xfs = Ok(Signature::Found("xfs".into()));
        let s = data_plan(&data_facts(xfs, 0, true), &reset).unwrap();
        assert!(
            matches!(action(&s), (DataAction::Provision(_), Some(id)) if id == "systemd.factory_reset")
        );
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        let s = data_plan(&data_facts(luks, 0, true), &reset).unwrap();
        assert_eq!(
            action(&s).0,
            &DataAction::Open,
            "the reset guard is checked after opening"
        );
    }

    #[test]
    fn without_a_tpm_nothing_is_formatted_or_guessed() {
        let cmd = Cmdline::default();
        let e = data_plan(&data_facts(Ok(Signature::None), 0, false), &cmd).unwrap_err();
        assert!(matches!(e, PlanError::NoTpmToProvision { .. }), "{e}");
        assert!(e.may_resolve_by_waiting());
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        let mut f = data_facts(luks, 0, false);
        // A volume without its TPM: asked for its recovery key, once the
        // TPM was waited for; refused with the prompt off.
        f.tpm_settled = false;
        let e = data_plan(&f, &cmd).unwrap_err();
        assert!(e.may_resolve_by_waiting(), "{e}");
        f.tpm_settled = true;
        let s = data_plan(&f, &cmd).unwrap();
        assert_eq!(action(&s), (&DataAction::Open, None));
        assert!(
            s.describe().contains("ask for the recovery key (3 tries)"),
            "{}",
            s.describe()
        );
        // Not for a volume a factory reset erases anyway.
        let reset = crate::cmdline::parse("systemd.factory_reset=1").unwrap();
        let luks = Ok(Signature::Found("crypto_LUKS".into()));
        match data_plan(&data_facts(luks, 0, true), &reset).unwrap() {
            Step::Data(d) => assert!(!d.recovery.prompt && d.reset.is_some()),
            s => panic!("{s:?}"),
        }
        let off = crate::cmdline::parse("initrd_helper.recovery_prompt=0").unwrap();
        let e = data_plan(&f, &off).unwrap_err();
        assert!(e.to_string().contains("recovery key"), "{e}");
        // ... which, opened by hand from the emergency shell, is mounted.
        f.data_open = true;
        assert_eq!(action(&data_plan(&f, &cmd).unwrap()).0, &DataAction::Open);
        // encryption = "none" needs no TPM.
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        cfg.data.encryption = Encryption::None;
        let p = plan(&data_facts(Ok(Signature::None), 0, false), &cmd, &cfg).unwrap();
        assert!(p.steps.iter().any(|s| s.name() == "data"));
    }

    #[test]
    fn machine_id_is_kept_on_the_data_partition() {
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        let p = plan(
            &data_facts(Ok(Signature::None), 0, true),
            &Cmdline::default(),
            &cfg,
        )
        .unwrap();
        let names: Vec<_> = p.steps.iter().map(Step::name).collect();
        assert_eq!(names, ["mount-root", "data", "etc-overlay", "machine-id"]);
        assert_eq!(
            p.steps[3],
            Step::MachineId {
                path: "/sysroot/etc/machine-id".into(),
                source: MachineIdSource::Persisted(
                    "/sysroot/var/lib/initrd-helper/machine-id".into()
                ),
            }
        );
    }
}
