//! The slot a root hash names (`roothash=` or `usrhash=`, DPS-derived
//! partition UUIDs, or systemd's explicit verity devices) and its
//! dm-verity step.

use super::disk::select_disk;
use super::slot::{mount_slot_step, DiskSteps};
use super::{PlanError, Step};
use crate::cmdline::{DeviceSpec, VeritySel};
use crate::dps::{self, SlotKind};
use crate::facts::{DiskFacts, Facts, PartitionFacts};
use crate::guid::Guid;
use std::path::PathBuf;

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

fn spec_text(spec: &DeviceSpec, bits: &str, kind: SlotKind) -> String {
    match spec {
        DeviceSpec::PartUuid(u) => format!(
            "partition with UUID {u} (the {bits} 128 bits of {})",
            kind.hash_key()
        ),
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

/// The data and hash partitions a hash names, as looked for.
struct Wanted {
    data: DeviceSpec,
    hash: DeviceSpec,
    data_what: String,
    hash_what: String,
}

fn wanted_pair(sel: &VeritySel, kind: SlotKind, roothash: &str) -> Result<Wanted, PlanError> {
    let (du, hu) = derived_uuids(roothash).ok_or_else(|| PlanError::BadRootHash {
        key: kind.hash_key(),
        hash: roothash.into(),
    })?;
    let data = sel.data.cloned().unwrap_or(DeviceSpec::PartUuid(du));
    let hash = sel.hash_dev.cloned().unwrap_or(DeviceSpec::PartUuid(hu));
    Ok(Wanted {
        data_what: spec_text(&data, "first", kind),
        hash_what: spec_text(&hash, "last", kind),
        data,
        hash,
    })
}

/// With `roothash=` (or `usrhash=`): the data and hash partitions it
/// names, on one disk, which becomes the boot disk.
pub(super) fn plan_verity<'f>(
    facts: &'f Facts,
    sel: &VeritySel,
    kind: SlotKind,
    wanted: Option<Guid>,
    roothash: &str,
    target: &str,
) -> Result<DiskSteps<'f>, PlanError> {
    let w = wanted_pair(sel, kind, roothash)?;
    let disk = select_disk(facts, wanted, &format!("a {}", w.data_what), |d| {
        find_part(d, &w.data).is_some()
    })?;
    Ok((disk, verity_steps(disk, sel, kind, roothash, target)?))
}

/// The verity and mount steps of the pair a hash names on `disk`.
pub(super) fn verity_steps(
    disk: &DiskFacts,
    sel: &VeritySel,
    kind: SlotKind,
    roothash: &str,
    target: &str,
) -> Result<Vec<Step>, PlanError> {
    let w = wanted_pair(sel, kind, roothash)?;
    let (data_spec, hash_spec, data_what, hash_what) = (w.data, w.hash, w.data_what, w.hash_what);
    let missing = |what: &str| PlanError::MissingPartition {
        disk: disk.name.clone(),
        what: what.into(),
    };
    let data = find_part(disk, &data_spec).ok_or_else(|| missing(&data_what))?;
    let hash = find_part(disk, &hash_spec).ok_or_else(|| missing(&hash_what))?;
    // Derived UUIDs must also carry the right DPS types; explicit devices are
    // the admin's choice (as in systemd).
    if sel.data.is_none() {
        check_type(data, "verity data", kind.data_type())?;
    }
    if sel.hash_dev.is_none() {
        check_type(hash, "verity hash", kind.hash_type())?;
    }
    check_superblock(disk, data, hash, roothash)?;
    let name = kind.name().to_string();
    let mapper = PathBuf::from(format!("/dev/mapper/{name}"));
    let mount = mount_slot_step(kind, data, mapper, target)?;
    let verity = Step::ActivateVerity {
        name,
        data: data.dev.clone(),
        hash: hash.dev.clone(),
        roothash: roothash.to_string(),
        label: data.gpt.label.clone(),
        options: sel.options.clone(),
    };
    Ok(vec![verity, mount])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::FsKind;
    use crate::plan::testutil::*;
    use crate::plan::*;

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
        assert_eq!(
            e.unwrap_err(),
            PlanError::BadRootHash {
                key: "roothash=",
                hash: "abcd".into()
            }
        );
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
            (
                Step::ActivateVerity { data, hash, .. },
                Step::MountRoot(SlotMount { source, fstype, .. }),
            ) => {
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
        assert_eq!(
            e,
            PlanError::UnverifiedRefused {
                key: "roothash=",
                verity_off: true
            }
        );
        let p = plan(&facts(vec![verity_disk("vda", 1)]), &cmd, &dev_cfg()).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("systemd.verity=0")));
    }
}
