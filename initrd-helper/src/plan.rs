//! The pure planner: typed facts + command line + config -> a list of steps.
//!
//! Nothing here touches the machine, so every safety rule (which disk,
//! which slot, what to refuse) is unit-tested with plain values.

use crate::cmdline::{Cmdline, DeviceSpec};
use crate::config::{Config, Encryption, Unverified};
use crate::dps;
use crate::facts::{DiskFacts, Facts, PartitionFacts, TpmFacts};
use crate::guid::Guid;
use crate::sys::blkid::Signature;
use crate::verity::VerityOptions;
use serde::Serialize;
use std::cmp::Ordering;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no disk has {what}; searched: {}", searched_text(.searched))]
    NoDisk { what: String, searched: Vec<String> },
    #[error("the boot disk with GPT disk GUID {0} was not found")]
    DiskNotFound(Guid),
    #[error("the boot loader booted from partition {0} (LoaderDevicePartUUID), which no disk has")]
    LoaderDiskNotFound(Guid),
    #[error("disks {} still show their partitions (device nodes missing): no boot disk is chosen until every disk has settled; if one never does, name the boot disk with initrd_helper.disk=<disk GUID>", .0.join(", "))]
    Settling(Vec<String>),
    #[error("several disks answer to the boot disk's identity ({}): a cloned disk; refusing to choose (give the clone a new GUID: sfdisk --disk-id)", .0.join(", "))]
    DuplicateDisks(Vec<String>),
    #[error("several disks carry root partitions ({}); refusing to guess which one to use: set initrd_helper.disk=<disk GUID>", .0.join(", "))]
    AmbiguousDisks(Vec<String>),
    #[error("the partition table of {disk} cannot be used: {error}")]
    BadTable { disk: String, error: String },
    #[error(
        "disk {0} has no bootable root partition (all root slots are empty, partial or pending)"
    )]
    NoBootableRoot(String),
    #[error("{} and root.unverified = \"refuse\": refusing to mount an unverified root (set root.unverified = \"mount-read-only\" for development images)", if *.0 { "systemd.verity=0 turns roothash= off" } else { "no roothash= on the kernel command line" })]
    UnverifiedRefused(bool),
    #[error("roothash={0} is not 32 to 64 bytes of hex")]
    BadRootHash(String),
    #[error("the boot disk {disk} has no {what}")]
    MissingPartition { disk: String, what: String },
    #[error("{dev} ({what}) has partition type {found}, expected {expected}")]
    WrongType {
        dev: String,
        what: String,
        found: Guid,
        expected: &'static str,
    },
    #[error("hash partition {dev} cannot verify {data}: {why}")]
    BadVerity {
        dev: String,
        data: String,
        why: String,
    },
    #[error(
        "root partition {dev} ({label:?}) holds no supported file system (ext4, erofs, squashfs)"
    )]
    NoRootFs { dev: String, label: String },
    #[error("the boot disk {disk} has several data partitions of type {kind} ({}); refusing to guess", .parts.join(", "))]
    AmbiguousData {
        disk: String,
        kind: &'static str,
        parts: Vec<String>,
    },
    #[error("data partition {dev} holds {found}, not {expected}: refusing to format it (it may hold someone's data). To start it over, boot once with systemd.factory_reset=1")]
    DataNotOurs {
        dev: String,
        found: String,
        expected: &'static str,
    },
    #[error(
        "data partition {dev} could not be probed for signatures ({error}): refusing to touch it"
    )]
    DataUnprobed { dev: String, error: String },
    #[error("no usable TPM2 ({tpm}): refusing to provision the data partition {dev} without encryption (data.encryption = \"tpm2\"); nothing was changed. Machines without a TPM need data.encryption = \"none\"")]
    NoTpmToProvision { dev: String, tpm: String },
    #[error("no usable TPM2 ({tpm}): cannot unlock the data volume {dev}; nothing was changed. From the emergency shell: `cryptsetup open {dev} {name}` with the recovery key, then `systemctl restart initrd-helper`")]
    NoTpmToUnlock {
        dev: String,
        name: String,
        tpm: String,
    },
}

fn searched_text(disks: &[String]) -> String {
    if disks.is_empty() {
        "no disks found (yet)".into()
    } else {
        disks.join(", ")
    }
}

impl PlanError {
    /// Errors that may resolve once more devices appear (worth waiting for).
    pub fn may_resolve_by_waiting(&self) -> bool {
        matches!(
            self,
            PlanError::NoDisk { .. }
                | PlanError::DiskNotFound(_)
                | PlanError::LoaderDiskNotFound(_)
                | PlanError::Settling(_)
                | PlanError::MissingPartition { .. }
                | PlanError::NoTpmToProvision { .. }
                | PlanError::NoTpmToUnlock { .. }
        )
    }
}

/// Where the machine ID written this boot comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum MachineIdSource {
    /// Fresh random ID (no persistence yet: new on every boot).
    Random,
    /// `systemd.machine_id=` on the command line.
    KernelCommandLine(String),
    /// Kept in this file on the data partition: read it, or make a random
    /// one and store it there (first boot, and after a factory reset).
    Persisted(String),
}

/// Everything the data step needs (carried out by `data::run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataStep {
    /// The whole boot disk (GPT edits, BLKPG).
    pub disk: PathBuf,
    pub number: u32,
    pub dev: PathBuf,
    pub encryption: Encryption,
    pub pcrs: Vec<u8>,
    /// Grow to the disk's end when provisioning (last partition only).
    pub grow: bool,
    /// /dev/mapper name (tpm2).
    pub name: String,
    /// Mount point inside the root (e.g. /sysroot/var).
    pub target: String,
    pub action: DataAction,
    /// A factory reset request's ID (see README "Factory reset").
    pub reset: Option<String>,
    pub mkfs_options: Vec<String>,
}

/// What the data step does with the partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", content = "why", rename_all = "kebab-case")]
pub enum DataAction {
    /// Format from scratch: proven blank, our in-progress mark, or a reset.
    Provision(String),
    /// Unlock (tpm2) and mount what is there; never formats.
    Open,
}

/// GPT attribute bit the helper sets on the data partition while it
/// provisions it (DPS leaves bits 48-58 unassigned for `var`): a partition
/// carrying it holds nothing but our own unfinished first boot.
pub const IN_PROGRESS_BIT: u64 = 1 << 55;

/// Name of the data volume under /dev/mapper.
pub const DATA_NAME: &str = "data";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Open the root slot through dm-verity as /dev/mapper/NAME.
    ActivateVerity {
        name: String,
        data: PathBuf,
        hash: PathBuf,
        roothash: String,
        label: String,
        options: VerityOptions,
    },
    /// Mount the selected root slot read-only.
    MountRoot {
        source: PathBuf,
        fstype: String,
        label: String,
        partuuid: Guid,
        target: String,
    },
    /// Overlay on the root's /etc: lower = image, upper/work on tmpfs under /run.
    EtcOverlay {
        target: String,
        /// A dedicated tmpfs holding `upper` and `work` (overlayfs needs both on one fs).
        state_dir: String,
        upper: String,
        work: String,
    },
    /// The data partition: grow + format on first boot, unlock and mount on
    /// every boot, cryptographic erase on a factory reset.
    Data(DataStep),
    /// Write /etc/machine-id into the (writable) /etc.
    MachineId {
        path: String,
        source: MachineIdSource,
    },
}

impl Step {
    /// Short name for the per-step log line.
    pub fn name(&self) -> &'static str {
        match self {
            Step::ActivateVerity { .. } => "verity",
            Step::MountRoot { .. } => "mount-root",
            Step::Data(_) => "data",
            Step::EtcOverlay { .. } => "etc-overlay",
            Step::MachineId { .. } => "machine-id",
        }
    }

    /// One line saying what the step will do.
    pub fn describe(&self) -> String {
        match self {
            Step::ActivateVerity {
                name,
                data,
                hash,
                roothash,
                label,
                options,
            } => format!(
                "open dm-verity /dev/mapper/{name} over {} (data, slot {label:?}) and {} (hash), \
                 root hash {}…, on corruption: {}{}",
                data.display(),
                hash.display(),
                roothash.get(..12).unwrap_or(roothash),
                options.on_corruption.name(),
                if options.signature.is_some() {
                    ", root hash signature checked by the kernel"
                } else {
                    ""
                },
            ),
            Step::MountRoot {
                source,
                fstype,
                label,
                target,
                ..
            } => {
                format!(
                    "mount {} ({fstype}, slot {label:?}) read-only at {target}",
                    source.display()
                )
            }
            Step::EtcOverlay { target, upper, .. } => {
                format!("overlay {target} (lower: image, upper: tmpfs {upper})")
            }
            Step::Data(DataStep {
                dev,
                encryption,
                target,
                action,
                reset,
                pcrs,
                grow,
                ..
            }) => {
                let how = match encryption {
                    Encryption::Tpm2 => format!("LUKS2 sealed to TPM2 PCRs {pcrs:?}"),
                    Encryption::None => "unencrypted ext4".into(),
                };
                let what = match action {
                    DataAction::Provision(why) => format!(
                        "provision {} ({why}): {}{how}, ext4, mount at {target}",
                        dev.display(),
                        if *grow { "grow to the disk end, " } else { "" }
                    ),
                    DataAction::Open => {
                        format!("open {} ({how}), mount at {target}", dev.display())
                    }
                };
                match reset {
                    Some(id) => format!("{what}; {} (request {id:?})", crate::reset::RULE),
                    None => what,
                }
            }
            Step::MachineId { path, source } => match source {
                MachineIdSource::Random => format!("write a random machine-id to {path}"),
                MachineIdSource::Persisted(file) => {
                    format!("write the machine-id kept in {file} (made once) to {path}")
                }
                MachineIdSource::KernelCommandLine(id) => {
                    format!("write machine-id {id} (systemd.machine_id=) to {path}")
                }
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub boot_disk: String,
    pub boot_disk_guid: Guid,
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

fn has_root(d: &DiskFacts) -> bool {
    d.partitions
        .iter()
        .any(|p| p.gpt.type_guid == dps::ROOT_X86_64)
}

/// The disk we may read and (later) write. Only one disk is ever chosen,
/// and the choice never depends on probing order (systemd#38907):
/// 1. the disk named by `initrd_helper.disk=` / `devices.disk`;
/// 2. else the disk holding the ESP the firmware booted from
///    (`LoaderDevicePartUUID`, as systemd-gpt-auto-generator uses it);
/// 3. else the only candidate, once no disk is still settling (a disk
///    whose partitions are still appearing could be a second candidate).
///
/// Look-alike partitions on other disks are ignored in 1 and 2; two
/// candidates in 3 are an error. `what` names what makes a disk a
/// candidate, for the error message.
pub fn select_disk<'f>(
    facts: &'f Facts,
    wanted: Option<Guid>,
    what: &str,
    is_candidate: impl Fn(&DiskFacts) -> bool,
) -> Result<&'f DiskFacts, PlanError> {
    if let Some(g) = wanted {
        return one_disk(
            facts,
            |d| d.disk_guid() == Some(g),
            || PlanError::DiskNotFound(g),
        );
    }
    if let Some(esp) = facts.loader_partuuid {
        // Insisted on: a late boot disk must not lose to an early stick.
        let holds_esp = |d: &DiskFacts| d.partitions.iter().any(|p| p.gpt.uuid == esp);
        return one_disk(facts, holds_esp, || PlanError::LoaderDiskNotFound(esp));
    }
    let settling: Vec<String> = facts
        .disks
        .iter()
        .filter(|d| d.settling)
        .map(|d| d.name.clone())
        .collect();
    if !settling.is_empty() {
        return Err(PlanError::Settling(settling));
    }
    let candidates: Vec<&DiskFacts> = facts.disks.iter().filter(|d| is_candidate(d)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => match facts.disks.iter().find(|d| d.table.is_err()) {
            // A damaged table may be the boot disk: say so rather than "not found".
            Some(d) if facts.disks.len() == 1 => Err(PlanError::BadTable {
                disk: d.name.clone(),
                error: d.table.clone().err().unwrap_or_default(),
            }),
            _ => Err(PlanError::NoDisk {
                what: what.to_string(),
                searched: facts.disks.iter().map(searched_disk).collect(),
            }),
        },
        many => Err(PlanError::AmbiguousDisks(
            many.iter().map(|d| d.name.clone()).collect(),
        )),
    }
}

/// A disk in the "searched" list, with why its table was no use.
fn searched_disk(d: &DiskFacts) -> String {
    match &d.table {
        Ok(_) => d.name.clone(),
        Err(e) => format!("{} ({})", d.name, cut(e, 160)),
    }
}

/// At most `n` characters of a value from a disk, for messages.
fn cut(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The one disk `pick` names (two with the same GUID are refused: a
/// cloned disk must not be written by accident), once it has settled.
fn one_disk(
    facts: &Facts,
    pick: impl Fn(&DiskFacts) -> bool,
    missing: impl Fn() -> PlanError,
) -> Result<&DiskFacts, PlanError> {
    let found: Vec<&DiskFacts> = facts.disks.iter().filter(|d| pick(d)).collect();
    match found.as_slice() {
        [] => Err(missing()),
        [d] if d.settling => Err(PlanError::Settling(vec![d.name.clone()])),
        [d] => Ok(d),
        many => Err(PlanError::DuplicateDisks(
            many.iter().map(|d| d.name.clone()).collect(),
        )),
    }
}

fn slot_order(a: &PartitionFacts, b: &PartitionFacts) -> Ordering {
    let (_, va) = dps::split_label(&a.gpt.label);
    let (_, vb) = dps::split_label(&b.gpt.label);
    let by_version = match (va, vb) {
        (Some(x), Some(y)) => dps::vercmp(x, y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    // Equal versions: the lower partition number wins (it sorts "greater").
    by_version.then_with(|| b.gpt.number.cmp(&a.gpt.number))
}

/// Without a root hash: the newest bootable root slot by label version.
pub fn select_unverified_slot(disk: &DiskFacts) -> Result<&PartitionFacts, PlanError> {
    disk.partitions
        .iter()
        .filter(|p| p.gpt.type_guid == dps::ROOT_X86_64 && dps::label_is_bootable(&p.gpt.label))
        .max_by(|a, b| slot_order(a, b))
        .ok_or_else(|| PlanError::NoBootableRoot(disk.name.clone()))
}

fn mount_root_step(p: &PartitionFacts, target: &str) -> Result<Step, PlanError> {
    let fs =
        p.fs.filter(|f| f.is_root_fs())
            .ok_or_else(|| PlanError::NoRootFs {
                dev: p.dev.display().to_string(),
                label: p.gpt.label.clone(),
            })?;
    Ok(Step::MountRoot {
        source: p.dev.clone(),
        fstype: fs.mount_type().into(),
        label: p.gpt.label.clone(),
        partuuid: p.gpt.uuid,
        target: target.into(),
    })
}

fn etc_steps(cmd: &Cmdline, cfg: &Config, data_target: Option<&str>) -> Vec<Step> {
    let root = cfg.root.mount_point.trim_end_matches('/');
    let mut steps = Vec::new();
    if cfg.etc.overlay {
        let state = cfg.etc.state_dir.trim_end_matches('/');
        steps.push(Step::EtcOverlay {
            target: format!("{root}/etc"),
            state_dir: state.to_string(),
            upper: format!("{state}/upper"),
            work: format!("{state}/work"),
        });
    }
    let source = match (&cmd.machine_id, data_target) {
        (Some(id), _) => MachineIdSource::KernelCommandLine(id.clone()),
        (None, Some(t)) => MachineIdSource::Persisted(format!("{t}/{MACHINE_ID_FILE}")),
        (None, None) => MachineIdSource::Random,
    };
    steps.push(Step::MachineId {
        path: format!("{root}/etc/machine-id"),
        source,
    });
    steps
}

/// Where the machine ID lives on the data file system (with the default
/// mount point: /var/lib/initrd-helper/machine-id).
pub const MACHINE_ID_FILE: &str = "lib/initrd-helper/machine-id";

/// The data partition of the boot disk, if it has one.
fn data_partition<'d>(
    disk: &'d DiskFacts,
    cfg: &Config,
) -> Result<Option<&'d PartitionFacts>, PlanError> {
    let t = cfg.data.partition_type;
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

/// The data step for the boot disk, or `None` (with a warning) without one.
fn data_step(
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
            disk.name, cfg.data.partition_type, cfg.data.mount_point
        ));
        return Ok(None);
    };
    let reset = cmd.factory_reset_request();
    let action = data_action(p, cfg, reset.is_some())?;
    let dev = p.dev.display().to_string();
    let tpm_ok = matches!(facts.tpm, TpmFacts::Present { .. });
    // Opened by hand with the recovery key: only the mount is left to do.
    let opened = action == DataAction::Open && reset.is_none() && facts.data_open;
    if cfg.data.encryption == Encryption::Tpm2 && !tpm_ok && !opened {
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
    Ok(Some(Step::Data(DataStep {
        disk: disk.dev.clone(),
        number: p.gpt.number,
        dev: p.dev.clone(),
        encryption: cfg.data.encryption,
        pcrs: cfg.data.pcrs.clone(),
        grow: cfg.data.grow && is_last,
        name: DATA_NAME.into(),
        target: format!("{root}{}", cfg.data.mount_point.trim_end_matches('/')),
        action,
        reset,
        mkfs_options: cfg.data.mkfs_options.clone(),
    })))
}

/// Partition UUIDs the DPS derives from a root hash: the first 128 bits
/// name the data partition, the last 128 bits the hash partition.
pub fn derived_uuids(roothash: &str) -> Option<(Guid, Guid)> {
    let h = crate::hex::decode(roothash).ok()?;
    let first: [u8; 16] = h.get(..16)?.try_into().ok()?;
    let last: [u8; 16] = h.get(h.len().checked_sub(16)?..)?.try_into().ok()?;
    Some((Guid::from_bytes(first), Guid::from_bytes(last)))
}

fn find_part<'d>(disk: &'d DiskFacts, spec: &DeviceSpec) -> Option<&'d PartitionFacts> {
    disk.partitions.iter().find(|p| match spec {
        DeviceSpec::PartUuid(u) => p.gpt.uuid == *u,
        DeviceSpec::Path(path) => p.dev == *path,
    })
}

fn spec_text(spec: &DeviceSpec, derived_from: &str) -> String {
    match spec {
        DeviceSpec::PartUuid(u) => format!("partition with UUID {u} ({derived_from})"),
        DeviceSpec::Path(p) => format!("partition {}", p.display()),
    }
}

fn check_type(p: &PartitionFacts, what: &str, expected: Guid) -> Result<(), PlanError> {
    if p.gpt.type_guid == expected {
        return Ok(());
    }
    Err(PlanError::WrongType {
        dev: p.dev.display().to_string(),
        what: what.into(),
        found: p.gpt.type_guid,
        expected: dps::type_name(&expected),
    })
}

type DiskSteps<'f> = (&'f DiskFacts, Vec<Step>);

/// The hash partition's verity superblock is well formed and fits the
/// pair and the root hash (libcryptsetup and the kernel would only say
/// "invalid argument").
fn check_superblock(
    disk: &DiskFacts,
    data: &PartitionFacts,
    hash: &PartitionFacts,
    roothash: &str,
) -> Result<(), PlanError> {
    let ss = disk.table.as_ref().map(|t| t.sector_size).unwrap_or(512);
    let why = match &hash.verity {
        None => Some(
            "it holds no dm-verity superblock (not made by veritysetup format or \
             systemd-repart Verity=hash, or overwritten)"
                .to_string(),
        ),
        Some(Err(e)) => Some(e.clone()),
        Some(Ok(sb)) => sb.mismatch(data.gpt.size(ss), hash.gpt.size(ss), roothash.len() / 2),
    };
    match why {
        None => Ok(()),
        Some(why) => Err(PlanError::BadVerity {
            dev: hash.dev.display().to_string(),
            data: data.dev.display().to_string(),
            why,
        }),
    }
}

/// With `roothash=`: the data and hash partitions it names, on one disk.
fn plan_verity<'f>(
    facts: &'f Facts,
    cmd: &Cmdline,
    wanted: Option<Guid>,
    roothash: &str,
) -> Result<DiskSteps<'f>, PlanError> {
    let (du, hu) =
        derived_uuids(roothash).ok_or_else(|| PlanError::BadRootHash(roothash.into()))?;
    let data_spec = cmd.verity_data.clone().unwrap_or(DeviceSpec::PartUuid(du));
    let hash_spec = cmd.verity_hash.clone().unwrap_or(DeviceSpec::PartUuid(hu));
    let data_what = spec_text(&data_spec, "the first 128 bits of roothash=");
    let hash_what = spec_text(&hash_spec, "the last 128 bits of roothash=");
    let disk = select_disk(facts, wanted, &format!("a {data_what}"), |d| {
        find_part(d, &data_spec).is_some()
    })?;
    let missing = |what: &str| PlanError::MissingPartition {
        disk: disk.name.clone(),
        what: what.into(),
    };
    let data = find_part(disk, &data_spec).ok_or_else(|| missing(&data_what))?;
    let hash = find_part(disk, &hash_spec).ok_or_else(|| missing(&hash_what))?;
    // Derived UUIDs must also carry the right DPS types; explicit devices are
    // the admin's choice (as in systemd).
    if cmd.verity_data.is_none() {
        check_type(data, "verity data", dps::ROOT_X86_64)?;
    }
    if cmd.verity_hash.is_none() {
        check_type(hash, "verity hash", dps::ROOT_VERITY_X86_64)?;
    }
    check_superblock(disk, data, hash, roothash)?;
    let name = "root".to_string();
    let mut mount = mount_root_step(data, "")?;
    if let Step::MountRoot { source, .. } = &mut mount {
        *source = PathBuf::from(format!("/dev/mapper/{name}"));
    }
    let verity = Step::ActivateVerity {
        name,
        data: data.dev.clone(),
        hash: hash.dev.clone(),
        roothash: roothash.to_string(),
        label: data.gpt.label.clone(),
        options: cmd.verity_options.clone(),
    };
    Ok((disk, vec![verity, mount]))
}

fn plan_unverified<'f>(
    facts: &'f Facts,
    cfg: &Config,
    wanted: Option<Guid>,
    verity_off: bool,
) -> Result<DiskSteps<'f>, PlanError> {
    if cfg.root.unverified == Unverified::Refuse {
        return Err(PlanError::UnverifiedRefused(verity_off));
    }
    let what = format!(
        "a GPT root partition ({})",
        dps::type_name(&dps::ROOT_X86_64)
    );
    let disk = select_disk(facts, wanted, &what, has_root)?;
    if let Err(e) = &disk.table {
        return Err(PlanError::BadTable {
            disk: disk.name.clone(),
            error: e.clone(),
        });
    }
    let slot = select_unverified_slot(disk)?;
    Ok((disk, vec![mount_root_step(slot, "")?]))
}

/// Turns facts, command line and config into the boot plan.
pub fn plan(facts: &Facts, cmd: &Cmdline, cfg: &Config) -> Result<Plan, PlanError> {
    let wanted = cmd.disk.or(cfg.devices.disk);
    let mut warnings = cmd.warnings.clone();
    let roothash = cmd.roothash.as_deref().filter(|_| cmd.verity);
    if cmd.roothash.is_some() && roothash.is_none() {
        warnings.push("systemd.verity=0: ignoring roothash=".into());
    }
    let (disk, mut steps) = match roothash {
        Some(h) => plan_verity(facts, cmd, wanted, h)?,
        None => plan_unverified(facts, cfg, wanted, cmd.roothash.is_some())?,
    };
    let table = disk.table.as_ref().map_err(|e| PlanError::BadTable {
        disk: disk.name.clone(),
        error: e.clone(),
    })?;
    if table.used_backup {
        warnings.push(format!(
            "{}: primary GPT header is damaged; using the backup",
            disk.name
        ));
    }
    for s in &mut steps {
        if let Step::MountRoot { target, .. } = s {
            target.clone_from(&cfg.root.mount_point);
        }
    }
    let data = data_step(facts, disk, cmd, cfg, &mut warnings)?;
    let data_target = match &data {
        Some(Step::Data(d)) => Some(d.target.clone()),
        _ => None,
    };
    steps.extend(data);
    steps.extend(etc_steps(cmd, cfg, data_target.as_deref()));
    Ok(Plan {
        boot_disk: disk.name.clone(),
        boot_disk_guid: table.disk_guid,
        steps,
        warnings,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::facts::{FsKind, TpmFacts};
    use crate::gpt::{Gpt, Partition};

    pub(crate) fn part(n: u32, t: Guid, label: &str, fs: Option<FsKind>) -> PartitionFacts {
        PartitionFacts {
            gpt: Partition {
                number: n,
                type_guid: t,
                uuid: Guid::from_bytes([n as u8; 16]),
                first_lba: 2048 * n as u64,
                last_lba: 2048 * n as u64 + 2047,
                attributes: 0,
                label: label.into(),
            },
            dev: PathBuf::from(format!("/dev/vda{n}")),
            verity: (fs.is_none() && dps::type_name(&t).ends_with("-verity"))
                .then(|| crate::verity_sb::probe(&crate::verity_sb::tests::superblock(256)))
                .flatten(),
            fs,
            signature: Some(Ok(Signature::None)),
        }
    }

    pub(crate) fn disk(name: &str, guid: u8, parts: Vec<PartitionFacts>) -> DiskFacts {
        DiskFacts {
            name: name.into(),
            dev: PathBuf::from(format!("/dev/{name}")),
            size: 1 << 30,
            table: Ok(Gpt {
                disk_guid: Guid::from_bytes([guid; 16]),
                sector_size: 512,
                first_usable_lba: 34,
                last_usable_lba: (1 << 21) - 34,
                alternate_lba: (1 << 21) - 1,
                used_backup: false,
                partitions: parts.iter().map(|p| p.gpt.clone()).collect(),
                raw: Default::default(),
            }),
            partitions: parts,
            settling: false,
        }
    }

    pub(crate) fn standard_disk(name: &str, guid: u8) -> DiskFacts {
        let e4 = Some(FsKind::Ext4);
        disk(
            name,
            guid,
            vec![
                part(1, dps::ESP, "esp", Some(FsKind::Vfat)),
                part(2, dps::ROOT_X86_64, "appliance_1", e4),
                part(3, dps::ROOT_VERITY_X86_64, "appliance_1", None),
                part(4, dps::ROOT_X86_64, "_empty", None),
                part(5, dps::ROOT_VERITY_X86_64, "_empty", None),
                part(6, dps::VAR, "data", None),
            ],
        )
    }

    pub(crate) fn facts(disks: Vec<DiskFacts>) -> Facts {
        Facts {
            disks,
            tpm: TpmFacts::Absent,
            data_open: false,
            loader_partuuid: None,
        }
    }

    fn no_data() -> Config {
        let mut c = Config::default();
        c.data.enabled = false;
        c
    }

    /// Development config without the data partition (the root-slot tests).
    fn dev_cfg() -> Config {
        let mut c = Config::default();
        c.root.unverified = Unverified::MountReadOnly;
        c.data.enabled = false;
        c
    }

    #[test]
    fn plans_the_skeleton_boot() {
        let p = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &dev_cfg(),
        )
        .unwrap();
        assert_eq!(p.boot_disk, "vda");
        let names: Vec<_> = p.steps.iter().map(Step::name).collect();
        assert_eq!(names, ["mount-root", "etc-overlay", "machine-id"]);
        match &p.steps[0] {
            Step::MountRoot {
                source,
                fstype,
                target,
                ..
            } => {
                assert_eq!(source, &PathBuf::from("/dev/vda2"));
                assert_eq!((fstype.as_str(), target.as_str()), ("ext4", "/sysroot"));
            }
            s => panic!("unexpected {s:?}"),
        }
        assert!(p.steps[1]
            .describe()
            .contains("/run/initrd-helper/etc/upper"));
    }

    #[test]
    fn refuses_unverified_root_by_default() {
        let e = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &no_data(),
        );
        assert_eq!(e.unwrap_err(), PlanError::UnverifiedRefused(false));
    }

    #[test]
    fn newest_slot_wins_and_empty_partial_pending_are_skipped() {
        let e4 = Some(FsKind::Ext4);
        let d = disk(
            "vda",
            1,
            vec![
                part(2, dps::ROOT_X86_64, "os_1.9", e4),
                part(3, dps::ROOT_X86_64, "os_1.10", e4),
                part(4, dps::ROOT_X86_64, "PND#os_2.0", e4),
                part(5, dps::ROOT_X86_64, "PRT#os_3.0", e4),
                part(6, dps::ROOT_X86_64, "_empty", None),
            ],
        );
        assert_eq!(select_unverified_slot(&d).unwrap().gpt.label, "os_1.10");
    }

    #[test]
    fn equal_versions_prefer_the_lower_partition_number() {
        let e4 = Some(FsKind::Ext4);
        let d = disk(
            "vda",
            1,
            vec![
                part(2, dps::ROOT_X86_64, "root", e4),
                part(4, dps::ROOT_X86_64, "root", e4),
            ],
        );
        assert_eq!(select_unverified_slot(&d).unwrap().gpt.number, 2);
    }

    #[test]
    fn only_empty_slots_is_an_error() {
        let d = disk("vda", 1, vec![part(4, dps::ROOT_X86_64, "_empty", None)]);
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert_eq!(e, PlanError::NoBootableRoot("vda".into()));
    }

    #[test]
    fn two_candidate_disks_are_refused_unless_one_is_named() {
        let f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 2)]);
        let e = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::AmbiguousDisks(ref v) if v == &["vda", "vdb"]));
        assert!(e.to_string().contains("initrd_helper.disk="));
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([2; 16])),
            ..Cmdline::default()
        };
        assert_eq!(plan(&f, &cmd, &dev_cfg()).unwrap().boot_disk, "vdb");
    }

    #[test]
    fn a_settling_disk_blocks_the_decision_until_it_settles() {
        // The look-alike's partitions are still appearing: it must not be
        // left out (then vda would look like the only candidate).
        let mut late = standard_disk("vdb", 2);
        late.partitions.truncate(2);
        late.settling = true;
        let f = facts(vec![standard_disk("vda", 1), late.clone()]);
        let e = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert_eq!(e, PlanError::Settling(vec!["vdb".into()]));
        assert!(e.may_resolve_by_waiting());
        late.settling = false;
        late.partitions = standard_disk("vdb", 2).partitions;
        let f = facts(vec![standard_disk("vda", 1), late]);
        let e = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::AmbiguousDisks(_)), "{e}");
        // Named explicitly, another disk's settling does not matter; the
        // named disk's own settling does.
        let mut f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 2)]);
        f.disks[1].settling = true;
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([1; 16])),
            ..Cmdline::default()
        };
        assert_eq!(plan(&f, &cmd, &dev_cfg()).unwrap().boot_disk, "vda");
        f.disks[0].settling = true;
        assert!(matches!(
            plan(&f, &cmd, &dev_cfg()),
            Err(PlanError::Settling(_))
        ));
    }

    #[test]
    fn the_loaders_esp_names_the_boot_disk() {
        let mut f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 2)]);
        // standard_disk's ESP is partition 1 with UUID [1; 16] on both: a
        // look-alike copy; make vdb's ESP distinct and boot from it.
        f.disks[1].partitions[0].gpt.uuid = Guid::from_bytes([0xe5; 16]);
        f.loader_partuuid = Some(Guid::from_bytes([0xe5; 16]));
        assert_eq!(
            plan(&f, &Cmdline::default(), &dev_cfg()).unwrap().boot_disk,
            "vdb"
        );
        // Not there (yet): wait, never fall back to guessing.
        f.loader_partuuid = Some(Guid::from_bytes([0xee; 16]));
        let e = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::LoaderDiskNotFound(_)) && e.may_resolve_by_waiting());
        // Both disks have that ESP (a cloned disk): refused.
        f.loader_partuuid = Some(Guid::from_bytes([1; 16]));
        f.disks[1].partitions[0].gpt.uuid = Guid::from_bytes([1; 16]);
        let e = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::DuplicateDisks(_)), "{e}");
    }

    #[test]
    fn cloned_disk_guids_are_refused() {
        let f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 1)]);
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([1; 16])),
            ..Cmdline::default()
        };
        let e = plan(&f, &cmd, &dev_cfg()).unwrap_err();
        assert_eq!(
            e,
            PlanError::DuplicateDisks(vec!["vda".into(), "vdb".into()])
        );
    }

    #[test]
    fn searched_disks_say_why_their_table_was_no_use() {
        let mut bad = standard_disk("vdb", 2);
        bad.table = Err("x".repeat(5000));
        bad.partitions.clear();
        let other = disk("vdc", 3, vec![part(1, dps::VAR, "data", None)]);
        let e = plan(&facts(vec![bad, other]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        let t = e.to_string();
        assert!(t.contains("vdb (xxx") && t.contains("vdc"), "{t}");
        assert!(t.len() < 400, "values are cut: {}", t.len());
    }

    #[test]
    fn config_disk_applies_and_cmdline_wins() {
        let f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 2)]);
        let mut cfg = dev_cfg();
        cfg.devices.disk = Some(Guid::from_bytes([1; 16]));
        assert_eq!(
            plan(&f, &Cmdline::default(), &cfg).unwrap().boot_disk,
            "vda"
        );
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([2; 16])),
            ..Cmdline::default()
        };
        assert_eq!(plan(&f, &cmd, &cfg).unwrap().boot_disk, "vdb");
    }

    #[test]
    fn look_alike_disk_without_root_is_ignored() {
        let other = disk("vdb", 2, vec![part(1, dps::VAR, "data", None)]);
        let p = plan(
            &facts(vec![other, standard_disk("vda", 1)]),
            &Cmdline::default(),
            &dev_cfg(),
        )
        .unwrap();
        assert_eq!(p.boot_disk, "vda");
    }

    #[test]
    fn named_disk_missing_waits_then_fails() {
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([9; 16])),
            ..Cmdline::default()
        };
        let e = plan(&facts(vec![standard_disk("vda", 1)]), &cmd, &dev_cfg()).unwrap_err();
        assert!(e.may_resolve_by_waiting());
        let e = plan(&facts(vec![]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(e.may_resolve_by_waiting());
    }

    #[test]
    fn damaged_single_disk_is_reported_as_such() {
        let mut d = standard_disk("vda", 1);
        d.table = Err("GPT header CRC mismatch".into());
        d.partitions.clear();
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::BadTable { .. }), "{e}");
        assert!(!e.may_resolve_by_waiting());
    }

    #[test]
    fn backup_header_use_is_warned() {
        let mut d = standard_disk("vda", 1);
        if let Ok(t) = d.table.as_mut() {
            t.used_backup = true;
        }
        let p = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap();
        assert!(p.warnings[0].contains("backup"));
    }

    #[test]
    fn root_without_file_system_is_refused() {
        let d = disk("vda", 1, vec![part(2, dps::ROOT_X86_64, "os_1", None)]);
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::NoRootFs { .. }));
    }

    #[test]
    fn machine_id_from_cmdline_and_no_overlay() {
        let mut cfg = dev_cfg();
        cfg.etc.overlay = false;
        let cmd = Cmdline {
            machine_id: Some("ab".repeat(16)),
            ..Cmdline::default()
        };
        let p = plan(&facts(vec![standard_disk("vda", 1)]), &cmd, &cfg).unwrap();
        assert_eq!(p.steps.len(), 2);
        assert_eq!(
            p.steps[1],
            Step::MachineId {
                path: "/sysroot/etc/machine-id".into(),
                source: MachineIdSource::KernelCommandLine("ab".repeat(16)),
            }
        );
    }

    const HASH_A: &str = "11111111111111111111111111111111aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    /// A disk whose slot A partitions carry UUIDs derived from `HASH_A`.
    fn verity_disk(name: &str, guid: u8) -> DiskFacts {
        let (du, hu) = derived_uuids(HASH_A).unwrap();
        let mut d = standard_disk(name, guid);
        d.partitions[1].gpt.uuid = du;
        d.partitions[2].gpt.uuid = hu;
        d
    }

    fn with_hash(h: &str) -> Cmdline {
        Cmdline {
            roothash: Some(h.into()),
            ..Cmdline::default()
        }
    }

    #[test]
    fn derives_uuids_from_the_root_hash() {
        let (d, h) = derived_uuids(HASH_A).unwrap();
        assert_eq!(d.to_string(), "11111111-1111-1111-1111-111111111111");
        assert_eq!(h.to_string(), "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa");
        assert!(derived_uuids("abcd").is_none());
        let e = plan(
            &facts(vec![verity_disk("vda", 1)]),
            &with_hash("abcd"),
            &no_data(),
        );
        assert_eq!(e.unwrap_err(), PlanError::BadRootHash("abcd".into()));
    }

    #[test]
    fn roothash_selects_the_matching_slot_even_when_unverified_is_refused() {
        let p = plan(
            &facts(vec![verity_disk("vda", 1)]),
            &with_hash(HASH_A),
            &no_data(),
        )
        .unwrap();
        let names: Vec<_> = p.steps.iter().map(Step::name).collect();
        assert_eq!(names, ["verity", "mount-root", "etc-overlay", "machine-id"]);
        match (&p.steps[0], &p.steps[1]) {
            (Step::ActivateVerity { data, hash, .. }, Step::MountRoot { source, fstype, .. }) => {
                assert_eq!(
                    (data.to_str(), hash.to_str()),
                    (Some("/dev/vda2"), Some("/dev/vda3"))
                );
                assert_eq!(
                    (source.to_str(), fstype.as_str()),
                    (Some("/dev/mapper/root"), "ext4")
                );
            }
            s => panic!("unexpected {s:?}"),
        }
    }

    #[test]
    fn wrong_roothash_matches_no_disk_and_may_wait() {
        let e = plan(
            &facts(vec![verity_disk("vda", 1)]),
            &with_hash(&"ab".repeat(32)),
            &no_data(),
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::NoDisk { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("abababab-abab-abab-abab-abababababab"),
            "{e}"
        );
        assert!(e.may_resolve_by_waiting());
    }

    #[test]
    fn verity_look_alike_on_another_disk_is_ambiguous() {
        let f = facts(vec![verity_disk("vda", 1), verity_disk("vdb", 2)]);
        let e = plan(&f, &with_hash(HASH_A), &no_data()).unwrap_err();
        assert!(matches!(e, PlanError::AmbiguousDisks(_)));
        let cmd = Cmdline {
            disk: Some(Guid::from_bytes([2; 16])),
            ..with_hash(HASH_A)
        };
        assert_eq!(plan(&f, &cmd, &no_data()).unwrap().boot_disk, "vdb");
    }

    #[test]
    fn hash_partition_on_another_disk_is_refused() {
        let mut a = verity_disk("vda", 1);
        a.partitions.remove(2);
        let e = plan(
            &facts(vec![a, verity_disk("vdb", 2)]),
            &with_hash(HASH_A),
            &no_data(),
        );
        // vdb also has the data partition: two candidates, no guessing.
        assert!(matches!(e.unwrap_err(), PlanError::AmbiguousDisks(_)));
        let mut a = verity_disk("vda", 1);
        a.partitions.remove(2);
        let e = plan(&facts(vec![a]), &with_hash(HASH_A), &no_data()).unwrap_err();
        assert!(matches!(e, PlanError::MissingPartition { .. }), "{e}");
    }

    #[test]
    fn derived_partitions_must_have_dps_types() {
        let mut d = verity_disk("vda", 1);
        d.partitions[2].gpt.type_guid = dps::VAR;
        let e = plan(&facts(vec![d]), &with_hash(HASH_A), &no_data()).unwrap_err();
        assert!(matches!(e, PlanError::WrongType { .. }), "{e}");
    }

    #[test]
    fn explicit_verity_devices_override_derivation() {
        let d = standard_disk("vda", 1);
        let cmd = Cmdline {
            verity_data: Some(DeviceSpec::Path("/dev/vda4".into())),
            verity_hash: Some(DeviceSpec::Path("/dev/vda5".into())),
            ..with_hash(HASH_A)
        };
        let mut d4 = d.clone();
        d4.partitions[3].fs = Some(FsKind::Ext4);
        let p = plan(&facts(vec![d4]), &cmd, &no_data()).unwrap();
        assert!(
            matches!(&p.steps[0], Step::ActivateVerity { data, .. } if data.to_str() == Some("/dev/vda4"))
        );
    }

    #[test]
    fn verity_off_falls_back_to_the_unverified_policy() {
        let cmd = Cmdline {
            verity: false,
            ..with_hash(HASH_A)
        };
        let e = plan(&facts(vec![verity_disk("vda", 1)]), &cmd, &no_data()).unwrap_err();
        assert_eq!(e, PlanError::UnverifiedRefused(true));
        let p = plan(&facts(vec![verity_disk("vda", 1)]), &cmd, &dev_cfg()).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("systemd.verity=0")));
    }

    #[test]
    fn plan_serialises_to_json() {
        let p = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &dev_cfg(),
        )
        .unwrap();
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["steps"][0]["step"], "mount-root");
        assert_eq!(j["steps"][2]["source"]["kind"], "random");
    }

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
        let e = data_plan(&f, &cmd).unwrap_err();
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
