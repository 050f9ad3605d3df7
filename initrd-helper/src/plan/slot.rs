//! Slots without a root hash: the newest bootable root (or usr) slot by
//! its label's version (development images, `root.unverified =
//! "mount-read-only"`), and the mount step every slot ends in.

use super::disk::select_disk;
use super::{PlanError, SlotMount, Step};
use crate::config::{Config, Unverified};
use crate::dps::{self, SlotKind};
use crate::facts::{DiskFacts, Facts, PartitionFacts};
use crate::guid::Guid;
use std::cmp::Ordering;
use std::path::PathBuf;

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

/// Without a root hash: the newest bootable slot of `kind` by label version.
pub fn select_unverified_slot(
    disk: &DiskFacts,
    kind: SlotKind,
) -> Result<&PartitionFacts, PlanError> {
    disk.partitions
        .iter()
        .filter(|p| p.gpt.type_guid == kind.data_type() && dps::label_is_bootable(&p.gpt.label))
        .max_by(|a, b| slot_order(a, b))
        .ok_or_else(|| PlanError::NoBootableSlot {
            disk: disk.name.clone(),
            kind: kind.name(),
        })
}

/// The boot disk and the steps that bring up its root.
pub(super) type DiskSteps<'f> = (&'f DiskFacts, Vec<Step>);

/// Mounts slot `p` (its file system) from `source` (the slot itself, or
/// the dm-verity device over it) read-only at `target`.
pub(super) fn mount_slot_step(
    kind: SlotKind,
    p: &PartitionFacts,
    source: PathBuf,
    target: &str,
) -> Result<Step, PlanError> {
    let fs =
        p.fs.filter(|f| f.is_root_fs())
            .ok_or_else(|| PlanError::NoRootFs {
                kind: kind.name(),
                dev: p.dev.display().to_string(),
                label: p.gpt.label.clone(),
            })?;
    let m = SlotMount {
        source,
        fstype: fs.mount_type().into(),
        label: p.gpt.label.clone(),
        partuuid: p.gpt.uuid,
        target: target.into(),
    };
    Ok(match kind {
        SlotKind::Root => Step::MountRoot(m),
        SlotKind::Usr => Step::MountUsr(m),
    })
}

/// Without a hash for `kind`: the newest slot, when the config allows an
/// unverified one.
pub(super) fn plan_unverified<'f>(
    facts: &'f Facts,
    cfg: &Config,
    kind: SlotKind,
    wanted: Option<Guid>,
    verity_off: bool,
    target: &str,
) -> Result<DiskSteps<'f>, PlanError> {
    if cfg.root.unverified == Unverified::Refuse {
        return Err(PlanError::UnverifiedRefused {
            key: kind.hash_key(),
            verity_off,
        });
    }
    let t = kind.data_type();
    let what = format!("a GPT {} partition ({})", kind.name(), dps::type_name(&t));
    let has = |d: &DiskFacts| d.partitions.iter().any(|p| p.gpt.type_guid == t);
    let disk = select_disk(facts, wanted, &what, has)?;
    if let Err(e) = &disk.table {
        return Err(PlanError::BadTable {
            disk: disk.name.clone(),
            error: e.clone(),
        });
    }
    let slot = select_unverified_slot(disk, kind)?;
    let mount = mount_slot_step(kind, slot, slot.dev.clone(), target)?;
    Ok((disk, vec![mount]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::FsKind;
    use crate::plan::testutil::*;
    use crate::plan::*;

    #[test]
    fn refuses_unverified_root_by_default() {
        let e = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &no_data(),
        );
        assert_eq!(
            e.unwrap_err(),
            PlanError::UnverifiedRefused {
                key: "roothash=",
                verity_off: false
            }
        );
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
        assert_eq!(
            select_unverified_slot(&d, SlotKind::Root)
                .unwrap()
                .gpt
                .label,
            "os_1.10"
        );
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
        assert_eq!(
            select_unverified_slot(&d, SlotKind::Root)
                .unwrap()
                .gpt
                .number,
            2
        );
    }

    #[test]
    fn only_empty_slots_is_an_error() {
        let d = disk("vda", 1, vec![part(4, dps::ROOT_X86_64, "_empty", None)]);
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert_eq!(
            e,
            PlanError::NoBootableSlot {
                disk: "vda".into(),
                kind: "root"
            }
        );
    }

    #[test]
    fn root_without_file_system_is_refused() {
        let d = disk("vda", 1, vec![part(2, dps::ROOT_X86_64, "os_1", None)]);
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::NoRootFs { .. }));
    }
}
