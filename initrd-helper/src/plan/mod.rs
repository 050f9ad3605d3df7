//! The pure planner: typed facts + command line + config -> a list of steps.
//!
//! Nothing here touches the machine, so every safety rule (which disk,
//! which slot, what to refuse) is unit-tested with plain values.
//!
//! Its rooms: `disk` (which disk), `layout` (what `/` is), `verity` and
//! `slot` (which root or usr slot), `data`
//! (the data partition's policy), `etc` (/etc and the machine ID), `step`
//! (what is planned), `error` (why not).

mod data;
mod disk;
mod error;
mod etc;
mod layout;
mod slot;
mod step;
#[cfg(test)]
pub(crate) mod testutil;
mod verity;

pub use disk::select_disk;
pub use error::PlanError;
pub use slot::select_unverified_slot;
pub use step::{
    Bind, DataAction, DataStep, MachineIdSource, SlotMount, Step, DATA_NAME, IN_PROGRESS_BIT,
};
pub use verity::derived_uuids;

use data::data_step;
use etc::etc_steps;
use layout::{data_root, slot_layout, usr_layout};

use crate::cmdline::Cmdline;
use crate::config::{Config, Layout};
use crate::dps;
use crate::facts::{DiskFacts, Facts};
use crate::guid::Guid;
use serde::Serialize;

/// What the planner decided: the one disk it may touch, the steps in
/// order (each complete: apply adds nothing), and what it warns about.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub boot_disk: String,
    pub boot_disk_guid: Guid,
    pub steps: Vec<Step>,
    pub warnings: Vec<String>,
}

/// Turns facts, command line and config into the boot plan.
pub fn plan(facts: &Facts, cmd: &Cmdline, cfg: &Config) -> Result<Plan, PlanError> {
    let mut warnings = cmd.warnings.clone();
    if !cmd.verity {
        let ignored: Vec<&str> = [(&cmd.roothash, "roothash="), (&cmd.usrhash, "usrhash=")]
            .iter()
            .filter(|(h, _)| h.is_some())
            .map(|(_, k)| *k)
            .collect();
        if !ignored.is_empty() {
            warnings.push(format!(
                "systemd.verity=0: ignoring {}",
                ignored.join(" and ")
            ));
        }
    }
    let (disk, mut steps) = match cfg.root.layout {
        Layout::Slot => slot_layout(facts, cmd, cfg)?,
        Layout::Tmpfs | Layout::Data => usr_layout(facts, cmd, cfg)?,
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
    if cfg.root.layout == Layout::Slot {
        warnings.extend(writable_slots(disk));
    }
    let data = data_step(facts, disk, cmd, cfg, &mut warnings)?;
    let (data_state, persist) = match &data {
        Some(Step::Data(d)) => (
            Some(d.state.clone()),
            persist_step(cfg, &d.target, &mut warnings),
        ),
        _ => (None, None),
    };
    if cfg.root.layout == Layout::Data {
        steps = data_root(disk, cfg, steps, data)?;
    } else {
        steps.extend(data);
        steps.extend(persist);
    }
    steps.extend(etc_steps(
        cmd,
        cfg,
        facts,
        data_state.as_deref(),
        &mut warnings,
    ));
    Ok(Plan {
        boot_disk: disk.name.clone(),
        boot_disk_guid: table.disk_guid,
        steps,
        warnings,
    })
}

/// `data.persist`'s bind mounts from the data file system mounted at
/// `data_target` (nothing to do when the data partition is `/` itself).
fn persist_step(cfg: &Config, data_target: &str, warnings: &mut Vec<String>) -> Option<Step> {
    let paths = &cfg.data.persist;
    if paths.is_empty() {
        return None;
    }
    if cfg.root.layout == Layout::Data {
        warnings
            .push("data.persist is ignored with root.layout = \"data\": all of / persists".into());
        return None;
    }
    let root = cfg.root.mount_point.trim_end_matches('/');
    let binds = paths
        .iter()
        .map(|p| {
            let p = p.trim_end_matches('/');
            Bind {
                from: format!("{data_target}/.persist{p}"),
                to: format!("{root}{p}"),
            }
        })
        .collect();
    Some(Step::Persist { binds })
}

/// A warning for each root slot of the boot disk without the DPS read-only
/// flag: stage-2 systemd would try to remount it read-write (and fail, on
/// a verity root) once an update boots it.
fn writable_slots(disk: &DiskFacts) -> Vec<String> {
    disk.partitions
        .iter()
        .filter(|p| p.gpt.type_guid == dps::ROOT_X86_64 && p.gpt.attributes & dps::READ_ONLY == 0)
        .map(|p| {
            format!(
                "root slot {} ({:?}) lacks the DPS read-only flag (GPT attribute 60): stage-2 \
                 systemd remounts such a root read-write, which fails on dm-verity; set it when \
                 building the image (systemd-repart ReadOnly=yes, sfdisk --part-attrs DISK N 60)",
                p.dev.display(),
                p.gpt.label
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testutil::*;
    use std::path::PathBuf;

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
            Step::MountRoot(SlotMount {
                source,
                fstype,
                target,
                ..
            }) => {
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
    fn every_step_is_built_for_the_configured_root() {
        let mut cfg = dev_cfg();
        cfg.root.mount_point = "/newroot".into();
        let p = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &cfg,
        )
        .unwrap();
        let text: Vec<String> = p.steps.iter().map(Step::describe).collect();
        assert!(text[0].ends_with("read-only at /newroot"), "{text:?}");
        assert!(text[1].starts_with("overlay /newroot/etc"), "{text:?}");
        assert!(text[2].ends_with("to /newroot/etc/machine-id"), "{text:?}");
    }

    #[test]
    fn root_slots_without_the_read_only_flag_are_warned() {
        let mut d = standard_disk("vda", 1);
        for p in &mut d.partitions {
            p.gpt.attributes |= dps::READ_ONLY;
        }
        d.partitions[3].gpt.attributes = 0;
        let p = plan(&facts(vec![d]), &Cmdline::default(), &dev_cfg()).unwrap();
        let w: Vec<_> = p
            .warnings
            .iter()
            .filter(|w| w.contains("read-only flag"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", p.warnings);
        assert!(w[0].contains("/dev/vda4 (\"_empty\")"), "{}", w[0]);
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
