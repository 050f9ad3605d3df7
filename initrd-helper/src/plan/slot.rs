//! Root slots without a root hash: the newest bootable slot by its label's
//! version (development images, `root.unverified = "mount-read-only"`),
//! and the mount step every root layout ends in.

use super::disk::{has_root, select_disk};
use super::{PlanError, Step};
use crate::config::{Config, Unverified};
use crate::dps;
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

/// Without a root hash: the newest bootable root slot by label version.
pub fn select_unverified_slot(disk: &DiskFacts) -> Result<&PartitionFacts, PlanError> {
    disk.partitions
        .iter()
        .filter(|p| p.gpt.type_guid == dps::ROOT_X86_64 && dps::label_is_bootable(&p.gpt.label))
        .max_by(|a, b| slot_order(a, b))
        .ok_or_else(|| PlanError::NoBootableRoot(disk.name.clone()))
}

/// The boot disk and the steps that bring up its root.
pub(super) type DiskSteps<'f> = (&'f DiskFacts, Vec<Step>);

/// Mounts root slot `p` (its file system) from `source` (the slot itself,
/// or the dm-verity device over it) read-only at `target`.
pub(super) fn mount_root_step(
    p: &PartitionFacts,
    source: PathBuf,
    target: &str,
) -> Result<Step, PlanError> {
    let fs =
        p.fs.filter(|f| f.is_root_fs())
            .ok_or_else(|| PlanError::NoRootFs {
                dev: p.dev.display().to_string(),
                label: p.gpt.label.clone(),
            })?;
    Ok(Step::MountRoot {
        source,
        fstype: fs.mount_type().into(),
        label: p.gpt.label.clone(),
        partuuid: p.gpt.uuid,
        target: target.into(),
    })
}

pub(super) fn plan_unverified<'f>(
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
    let mount = mount_root_step(slot, slot.dev.clone(), &cfg.root.mount_point)?;
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
    fn root_without_file_system_is_refused() {
        let d = disk("vda", 1, vec![part(2, dps::ROOT_X86_64, "os_1", None)]);
        let e = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap_err();
        assert!(matches!(e, PlanError::NoRootFs { .. }));
    }
}
