//! The steps a plan is made of, each complete when planned (apply only
//! carries them out), and the line `plan` prints for each.

use crate::config::Encryption;
use crate::guid::Guid;
use crate::verity::VerityOptions;
use serde::Serialize;
use std::path::PathBuf;

/// Where the machine ID written this boot comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum MachineIdSource {
    /// Fresh random ID (nothing to derive it from: new on every boot).
    Random,
    /// The firmware's SMBIOS product UUID (`systemd.machine_id=firmware`,
    /// and the default without a data partition): the same on every boot
    /// of one machine, with nothing stored.
    Firmware(String),
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
    /// The TPM policy a new volume's secret is sealed under, and the one an
    /// existing volume's token must carry exactly.
    pub policy: crate::policy::Policy,
    /// Grow to the disk's end when provisioning (last partition only).
    pub grow: bool,
    /// Bytes of disk past the partition table's end: the disk grew since
    /// the table was written (a volume that is opened is grown into it).
    pub disk_growth: u64,
    /// /dev/mapper name (tpm2).
    pub name: String,
    /// Mount point inside the root (e.g. /sysroot/var; the root itself
    /// with `root.layout = "data"`).
    pub target: String,
    /// Our state directory on it (the machine ID, the last reset's ID):
    /// ROOT/var/lib/initrd-helper with the default mount points.
    pub state: String,
    pub action: DataAction,
    /// A factory reset request's ID (see README "Factory reset").
    pub reset: Option<String>,
    /// The `FactoryResetRequest` EFI variable asked for it: delete the
    /// variable once the step is done.
    pub clear_efi_reset: bool,
    pub mkfs_options: Vec<String>,
    /// When the TPM cannot unlock an existing volume (tpm2).
    pub recovery: crate::recovery::RecoveryOptions,
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

/// One `data.persist` directory: `from` (on the data file system) is
/// bind-mounted at `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bind {
    pub from: String,
    pub to: String,
}

/// A slot's file system, mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotMount {
    pub source: PathBuf,
    pub fstype: String,
    pub label: String,
    pub partuuid: Guid,
    pub target: String,
}

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
    MountRoot(SlotMount),
    /// A tmpfs as the root, with the skeleton a hermetic /usr needs (the
    /// usr-merge links, /etc, /var and the API mount points).
    TmpfsRoot { target: String, options: String },
    /// The skeleton on a data-partition root (made once; kept after).
    Skeleton { target: String },
    /// Mount the selected usr slot read-only at the root's /usr.
    MountUsr(SlotMount),
    /// Overlay on the root's /etc: lower = the image's /etc (or its factory
    /// copy in /usr), upper/work on tmpfs under /run.
    EtcOverlay {
        target: String,
        lower: String,
        /// A dedicated tmpfs holding `upper` and `work` (overlayfs needs both on one fs).
        state_dir: String,
        upper: String,
        work: String,
    },
    /// Bind-mount directories of the data file system over the root's
    /// (`data.persist`), each made on first use.
    Persist { binds: Vec<Bind> },
    /// Seed a writable root's /etc from the factory copy, once (after a
    /// factory reset, again).
    EtcSeed { from: String, to: String },
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
            Step::MountRoot(_) => "mount-root",
            Step::TmpfsRoot { .. } => "tmpfs-root",
            Step::MountUsr(_) => "mount-usr",
            Step::Skeleton { .. } => "skeleton",
            Step::EtcSeed { .. } => "etc-seed",
            Step::Persist { .. } => "persist",
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
            Step::MountRoot(m) | Step::MountUsr(m) => format!(
                "mount {} ({}, slot {:?}) read-only at {}",
                m.source.display(),
                m.fstype,
                m.label,
                m.target
            ),
            Step::TmpfsRoot { target, options } => {
                format!("mount a tmpfs ({options}) at {target} with the usr-merged skeleton")
            }
            Step::Skeleton { target } => {
                format!("make the usr-merged skeleton in {target} where it is missing")
            }
            Step::Persist { binds } => {
                let each: Vec<String> = binds.iter().map(|b| b.to.clone()).collect();
                format!(
                    "bind-mount from the data file system (.persist/…): {}",
                    each.join(", ")
                )
            }
            Step::EtcSeed { from, to } => {
                format!("copy {from} to {to} unless {to} exists (first boot, factory reset)")
            }
            Step::EtcOverlay {
                target,
                lower,
                upper,
                ..
            } => {
                let lower = if lower == target { "image" } else { lower };
                format!("overlay {target} (lower: {lower}, upper: tmpfs {upper})")
            }
            Step::Data(DataStep {
                dev,
                encryption,
                target,
                action,
                reset,
                policy,
                grow,
                disk_growth,
                recovery,
                ..
            }) => {
                let how = match encryption {
                    Encryption::Tpm2 => format!("LUKS2 sealed to {}", policy.describe()),
                    Encryption::None => "unencrypted ext4".into(),
                };
                let what = match action {
                    DataAction::Provision(why) => format!(
                        "provision {} ({why}): {}{how}, ext4, mount at {target}",
                        dev.display(),
                        if *grow { "grow to the disk end, " } else { "" }
                    ),
                    DataAction::Open if *grow && *disk_growth >= crate::ext4::MIN_GROWTH => {
                        format!(
                            "open {} ({how}), grow it and its file system into the disk's new {} \
                         MiB, mount at {target}",
                            dev.display(),
                            disk_growth >> 20
                        )
                    }
                    DataAction::Open => {
                        format!("open {} ({how}), mount at {target}", dev.display())
                    }
                };
                let what = match (encryption, action, recovery.prompt) {
                    (Encryption::Tpm2, DataAction::Open, true) => format!(
                        "{what}; if the TPM cannot unlock it, ask for the recovery key ({} tries{})",
                        recovery.tries,
                        if recovery.reseal {
                            ", then re-seal to this boot's policy"
                        } else {
                            ""
                        }
                    ),
                    _ => what,
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
                MachineIdSource::Firmware(id) => {
                    format!("write machine-id {id} (the firmware's SMBIOS product UUID) to {path}")
                }
            },
        }
    }
}
