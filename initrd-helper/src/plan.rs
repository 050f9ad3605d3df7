//! The pure planner: typed facts + command line + config -> a list of steps.
//!
//! Nothing here touches the machine, so every safety rule (which disk,
//! which slot, what to refuse) is unit-tested with plain values.

use crate::cmdline::Cmdline;
use crate::config::{Config, Unverified};
use crate::dps;
use crate::facts::{DiskFacts, Facts, PartitionFacts};
use crate::guid::Guid;
use serde::Serialize;
use std::cmp::Ordering;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no disk with a GPT root partition ({}) was found; searched: {}", dps::type_name(&dps::ROOT_X86_64), .searched.join(", "))]
    NoDisk { searched: Vec<String> },
    #[error("the boot disk with GPT disk GUID {0} was not found")]
    DiskNotFound(Guid),
    #[error("several disks carry root partitions ({}); refusing to guess which one to use: set initrd_helper.disk=<disk GUID>", .0.join(", "))]
    AmbiguousDisks(Vec<String>),
    #[error("the partition table of {disk} cannot be used: {error}")]
    BadTable { disk: String, error: String },
    #[error(
        "disk {0} has no bootable root partition (all root slots are empty, partial or pending)"
    )]
    NoBootableRoot(String),
    #[error("no roothash= on the kernel command line and root.unverified = \"refuse\": refusing to mount an unverified root (set root.unverified = \"mount-read-only\" for development images)")]
    UnverifiedRefused,
    #[error("roothash= was given but this build cannot activate dm-verity yet")]
    VerityUnsupported,
    #[error(
        "root partition {dev} ({label:?}) holds no supported file system (ext4, erofs, squashfs)"
    )]
    NoRootFs { dev: String, label: String },
}

impl PlanError {
    /// Errors that may resolve once more devices appear (worth waiting for).
    pub fn may_resolve_by_waiting(&self) -> bool {
        matches!(self, PlanError::NoDisk { .. } | PlanError::DiskNotFound(_))
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
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
            Step::MountRoot { .. } => "mount-root",
            Step::EtcOverlay { .. } => "etc-overlay",
            Step::MachineId { .. } => "machine-id",
        }
    }

    /// One line saying what the step will do.
    pub fn describe(&self) -> String {
        match self {
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
            Step::MachineId { path, source } => match source {
                MachineIdSource::Random => format!("write a random machine-id to {path}"),
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

/// The disk we may read and (later) write. Only one disk is ever chosen:
/// look-alike partitions on other disks are ignored, and two candidate
/// disks without an explicit choice are an error (systemd#38907).
pub fn select_disk(facts: &Facts, wanted: Option<Guid>) -> Result<&DiskFacts, PlanError> {
    if let Some(g) = wanted {
        return facts
            .disks
            .iter()
            .find(|d| d.disk_guid() == Some(g))
            .ok_or(PlanError::DiskNotFound(g));
    }
    let candidates: Vec<&DiskFacts> = facts.disks.iter().filter(|d| has_root(d)).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => match facts.disks.iter().find(|d| d.table.is_err()) {
            // A damaged table may be the boot disk: say so rather than "not found".
            Some(d) if facts.disks.len() == 1 => Err(PlanError::BadTable {
                disk: d.name.clone(),
                error: d.table.clone().err().unwrap_or_default(),
            }),
            _ => Err(PlanError::NoDisk {
                searched: facts.disks.iter().map(|d| d.name.clone()).collect(),
            }),
        },
        many => Err(PlanError::AmbiguousDisks(
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

fn etc_steps(cmd: &Cmdline, cfg: &Config) -> Vec<Step> {
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
    let source = match &cmd.machine_id {
        Some(id) => MachineIdSource::KernelCommandLine(id.clone()),
        None => MachineIdSource::Random,
    };
    steps.push(Step::MachineId {
        path: format!("{root}/etc/machine-id"),
        source,
    });
    steps
}

/// Turns facts, command line and config into the boot plan.
pub fn plan(facts: &Facts, cmd: &Cmdline, cfg: &Config) -> Result<Plan, PlanError> {
    let wanted = cmd
        .disk
        .or_else(|| cfg.devices.disk.as_deref().and_then(|d| d.parse().ok()));
    let disk = select_disk(facts, wanted)?;
    let table = disk.table.as_ref().map_err(|e| PlanError::BadTable {
        disk: disk.name.clone(),
        error: e.clone(),
    })?;
    let mut warnings = cmd.warnings.clone();
    if table.used_backup {
        warnings.push(format!(
            "{}: primary GPT header is damaged; using the backup",
            disk.name
        ));
    }
    let slot = match (&cmd.roothash, cfg.root.unverified) {
        (Some(_), _) => return Err(PlanError::VerityUnsupported),
        (None, Unverified::Refuse) => return Err(PlanError::UnverifiedRefused),
        (None, Unverified::MountReadOnly) => select_unverified_slot(disk)?,
    };
    let mut steps = vec![mount_root_step(slot, &cfg.root.mount_point)?];
    steps.extend(etc_steps(cmd, cfg));
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
            fs,
            luks_uuid: None,
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
            }),
            partitions: parts,
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
        }
    }

    fn dev_cfg() -> Config {
        let mut c = Config::default();
        c.root.unverified = Unverified::MountReadOnly;
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
            &Config::default(),
        );
        assert_eq!(e.unwrap_err(), PlanError::UnverifiedRefused);
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
    fn config_disk_applies_and_cmdline_wins() {
        let f = facts(vec![standard_disk("vda", 1), standard_disk("vdb", 2)]);
        let mut cfg = dev_cfg();
        cfg.devices.disk = Some(Guid::from_bytes([1; 16]).to_string());
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
}
