//! Which disk is the boot disk: the only one ever read for slots and
//! written, chosen the same way whatever order the disks appear in.

use super::PlanError;

use crate::facts::{DiskFacts, Facts};
use crate::guid::Guid;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testutil::*;
    use crate::plan::*;

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
}
