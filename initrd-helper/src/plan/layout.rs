//! What `/` is (`root.layout`): the selected root slot, with a `usrhash=`
//! slot over its /usr; or a tmpfs, or the data partition, around the
//! selected usr slot.

use super::slot::plan_unverified;
use super::verity::{plan_verity, verity_steps};
use super::{PlanError, Step};
use crate::cmdline::Cmdline;
use crate::config::{Config, Layout};
use crate::dps::SlotKind;
use crate::facts::{DiskFacts, Facts};

/// The selected root slot is `/` (the verified one with `roothash=`),
/// with a `usrhash=` slot of the same disk over its /usr.
pub(super) fn slot_layout<'f>(
    facts: &'f Facts,
    cmd: &Cmdline,
    cfg: &Config,
) -> Result<(&'f DiskFacts, Vec<Step>), PlanError> {
    let wanted = cmd.disk.or(cfg.devices.disk);
    let root = cfg.root.mount_point.as_str();
    let sel = cmd.verity_for(SlotKind::Root);
    let (disk, mut steps) = match sel.hash {
        Some(h) => plan_verity(facts, &sel, SlotKind::Root, wanted, h, root)?,
        None => plan_unverified(
            facts,
            cfg,
            SlotKind::Root,
            wanted,
            cmd.roothash.is_some(),
            root,
        )?,
    };
    let usr = cmd.verity_for(SlotKind::Usr);
    if let Some(h) = usr.hash {
        let target = format!("{}/usr", root.trim_end_matches('/'));
        steps.extend(verity_steps(disk, &usr, SlotKind::Usr, h, &target)?);
    }
    Ok((disk, steps))
}

/// `/` is a tmpfs (`tmpfs`) or the data partition (`data`: its steps are
/// placed by the caller, before the last, the /usr mount); /usr is the
/// selected usr slot (verified with `usrhash=`, else the newest when
/// unverified slots are allowed).
pub(super) fn usr_layout<'f>(
    facts: &'f Facts,
    cmd: &Cmdline,
    cfg: &Config,
) -> Result<(&'f DiskFacts, Vec<Step>), PlanError> {
    let tmpfs = cfg.root.layout == Layout::Tmpfs;
    if cmd.verity_for(SlotKind::Root).hash.is_some() {
        return Err(PlanError::RootHashUnused(if tmpfs {
            "tmpfs"
        } else {
            "data"
        }));
    }
    let wanted = cmd.disk.or(cfg.devices.disk);
    let root = cfg.root.mount_point.trim_end_matches('/');
    let target = format!("{root}/usr");
    let sel = cmd.verity_for(SlotKind::Usr);
    let (disk, mut steps) = match sel.hash {
        Some(h) => plan_verity(facts, &sel, SlotKind::Usr, wanted, h, &target)?,
        None => plan_unverified(
            facts,
            cfg,
            SlotKind::Usr,
            wanted,
            cmd.usrhash.is_some(),
            &target,
        )?,
    };
    if !tmpfs {
        return Ok((disk, steps));
    }
    // The tmpfs goes up just before /usr is mounted into it.
    let at = steps.len().saturating_sub(1);
    steps.insert(
        at,
        Step::TmpfsRoot {
            target: cfg.root.mount_point.clone(),
            options: cfg.root.tmpfs_options.clone(),
        },
    );
    Ok((disk, steps))
}

/// Layout `data`: the data step mounts `/`, the skeleton is made on it,
/// and only then is /usr (the last of `usr_steps`) mounted into it.
pub(super) fn data_root(
    disk: &DiskFacts,
    cfg: &Config,
    mut usr_steps: Vec<Step>,
    data: Option<Step>,
) -> Result<Vec<Step>, PlanError> {
    let t = cfg.data_partition_type();
    let data = data.ok_or_else(|| {
        let why = if cfg.data.enabled {
            format!("the boot disk {} has no partition of type {t}", disk.name)
        } else {
            "data.enabled = false".to_string()
        };
        PlanError::NoDataRoot(why, t)
    })?;
    let mount_usr = usr_steps.pop();
    usr_steps.push(data);
    usr_steps.push(Step::Skeleton {
        target: cfg.root.mount_point.clone(),
    });
    usr_steps.extend(mount_usr);
    Ok(usr_steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Unverified;
    use crate::dps;
    use crate::facts::FsKind;
    use crate::plan::testutil::*;
    use crate::plan::*;

    const USR_A: &str = "22222222222222222222222222222222bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const ROOT_H: &str = "44444444444444444444444444444444dddddddddddddddddddddddddddddddd";
    const USR_B: &str = "33333333333333333333333333333333cccccccccccccccccccccccccccccccc";

    /// ESP | usr A pair | usr B pair | var, slot UUIDs derived from the hashes.
    fn usr_disk() -> DiskFacts {
        let ero = Some(FsKind::Erofs);
        let mut parts = vec![
            part(1, dps::ESP, "esp", Some(FsKind::Vfat)),
            part(2, dps::USR_X86_64, "appliance_1", ero),
            part(3, dps::USR_VERITY_X86_64, "appliance_1", None),
            part(4, dps::USR_X86_64, "appliance_2", ero),
            part(5, dps::USR_VERITY_X86_64, "appliance_2", None),
            part(6, dps::VAR, "data", None),
        ];
        for (i, h) in [(1, USR_A), (3, USR_B)] {
            let (d, v) = derived_uuids(h).unwrap();
            parts[i].gpt.uuid = d;
            parts[i + 1].gpt.uuid = v;
        }
        disk("vda", 1, parts)
    }

    fn tmpfs_cfg() -> Config {
        let mut c = no_data();
        c.root.layout = Layout::Tmpfs;
        c
    }

    fn usrhash(h: &str) -> Cmdline {
        Cmdline {
            usrhash: Some(h.into()),
            ..Cmdline::default()
        }
    }

    fn names(p: &Plan) -> Vec<&'static str> {
        p.steps.iter().map(Step::name).collect()
    }

    #[test]
    fn tmpfs_root_with_usr_from_the_verified_slot_and_factory_etc() {
        let p = plan(&facts(vec![usr_disk()]), &usrhash(USR_B), &tmpfs_cfg()).unwrap();
        assert_eq!(
            names(&p),
            [
                "verity",
                "tmpfs-root",
                "mount-usr",
                "etc-overlay",
                "machine-id"
            ]
        );
        match (&p.steps[0], &p.steps[1], &p.steps[2], &p.steps[3]) {
            (
                Step::ActivateVerity {
                    name, data, hash, ..
                },
                Step::TmpfsRoot { target, options },
                Step::MountUsr(m),
                Step::EtcOverlay {
                    target: etc, lower, ..
                },
            ) => {
                assert_eq!(name, "usr");
                assert_eq!(
                    (data.to_str(), hash.to_str()),
                    (Some("/dev/vda4"), Some("/dev/vda5"))
                );
                assert_eq!(
                    (target.as_str(), options.as_str()),
                    ("/sysroot", "mode=0755,size=50%")
                );
                assert_eq!(m.source.to_str(), Some("/dev/mapper/usr"));
                assert_eq!(
                    (m.fstype.as_str(), m.target.as_str()),
                    ("erofs", "/sysroot/usr")
                );
                assert_eq!(m.label, "appliance_2");
                assert_eq!(etc, "/sysroot/etc");
                assert_eq!(lower, "/sysroot/usr/share/factory/etc");
            }
            s => panic!("unexpected {s:?}"),
        }
        assert!(p.steps[3]
            .describe()
            .contains("lower: /sysroot/usr/share/factory/etc"));
    }

    #[test]
    fn tmpfs_root_keeps_data_at_var_with_the_machine_id_on_it() {
        let mut f = facts(vec![usr_disk()]);
        f.tpm = crate::facts::TpmFacts::Present {
            manufacturer: "test".into(),
        };
        let mut cfg = tmpfs_cfg();
        cfg.data.enabled = true;
        let p = plan(&f, &usrhash(USR_A), &cfg).unwrap();
        assert_eq!(
            names(&p),
            [
                "verity",
                "tmpfs-root",
                "mount-usr",
                "data",
                "etc-overlay",
                "machine-id"
            ]
        );
        // data.persist: more of the tmpfs root kept on the data partition.
        cfg.data.persist = vec!["/root".into(), "/home/".into()];
        let p2 = plan(&f, &usrhash(USR_A), &cfg).unwrap();
        assert_eq!(
            p2.steps[4],
            Step::Persist {
                binds: vec![
                    Bind {
                        from: "/sysroot/var/.persist/root".into(),
                        to: "/sysroot/root".into()
                    },
                    Bind {
                        from: "/sysroot/var/.persist/home".into(),
                        to: "/sysroot/home".into()
                    },
                ]
            }
        );
        assert!(matches!(&p.steps[3], Step::Data(d) if d.target == "/sysroot/var"));
        assert!(matches!(
            p.steps.last(),
            Some(Step::MachineId { source: MachineIdSource::Persisted(f), .. })
                if f == "/sysroot/var/lib/initrd-helper/machine-id"
        ));
    }

    #[test]
    fn data_layout_makes_the_encrypted_root_then_mounts_usr_into_it() {
        let mut d = usr_disk();
        d.partitions[5].gpt.type_guid = dps::ROOT_X86_64;
        let mut f = facts(vec![d]);
        f.tpm = crate::facts::TpmFacts::Present {
            manufacturer: "test".into(),
        };
        let mut cfg = tmpfs_cfg();
        cfg.root.layout = Layout::Data;
        cfg.data.enabled = true;
        let p = plan(&f, &usrhash(USR_A), &cfg).unwrap();
        assert_eq!(
            names(&p),
            [
                "verity",
                "data",
                "skeleton",
                "mount-usr",
                "etc-seed",
                "machine-id"
            ]
        );
        match &p.steps[1] {
            Step::Data(d) => {
                assert_eq!(d.dev.to_str(), Some("/dev/vda6"));
                assert_eq!(d.target, "/sysroot");
                assert_eq!(d.state, "/sysroot/var/lib/initrd-helper");
                assert!(matches!(d.action, DataAction::Provision(_)));
            }
            s => panic!("unexpected {s:?}"),
        }
        assert_eq!(
            p.steps[4],
            Step::EtcSeed {
                from: "/sysroot/usr/share/factory/etc".into(),
                to: "/sysroot/etc".into()
            }
        );
        assert!(matches!(
            p.steps.last(),
            Some(Step::MachineId { source: MachineIdSource::Persisted(f), .. })
                if f == "/sysroot/var/lib/initrd-helper/machine-id"
        ));
        // No root-typed data partition, or data off: no root to boot.
        let e = plan(&facts(vec![usr_disk()]), &usrhash(USR_A), &cfg).unwrap_err();
        assert!(matches!(e, PlanError::NoDataRoot(..)), "{e}");
        assert!(
            e.to_string()
                .contains("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            "{e}"
        );
        cfg.data.enabled = false;
        let e = plan(&f, &usrhash(USR_A), &cfg).unwrap_err();
        assert!(e.to_string().contains("data.enabled = false"), "{e}");
    }

    #[test]
    fn tmpfs_layout_refuses_a_root_hash_and_unverified_usr() {
        let cmd = Cmdline {
            roothash: Some(USR_A.into()),
            ..usrhash(USR_A)
        };
        let f = facts(vec![usr_disk()]);
        assert_eq!(
            plan(&f, &cmd, &tmpfs_cfg()).unwrap_err(),
            PlanError::RootHashUnused("tmpfs")
        );
        let e = plan(&f, &Cmdline::default(), &tmpfs_cfg()).unwrap_err();
        assert_eq!(
            e,
            PlanError::UnverifiedRefused {
                key: "usrhash=",
                verity_off: false
            }
        );
        assert!(
            e.to_string()
                .contains("no usrhash= on the kernel command line"),
            "{e}"
        );
        assert!(e.to_string().contains("unverified /usr"), "{e}");
    }

    #[test]
    fn unverified_usr_is_the_newest_usr_slot() {
        let mut cfg = tmpfs_cfg();
        cfg.root.unverified = Unverified::MountReadOnly;
        let p = plan(&facts(vec![usr_disk()]), &Cmdline::default(), &cfg).unwrap();
        assert_eq!(
            names(&p),
            ["tmpfs-root", "mount-usr", "etc-overlay", "machine-id"]
        );
        assert!(
            matches!(&p.steps[1], Step::MountUsr(m) if m.label == "appliance_2" && m.source.to_str() == Some("/dev/vda4"))
        );
        // A disk with root slots only has no usr slot to offer.
        let e = plan(
            &facts(vec![standard_disk("vda", 1)]),
            &Cmdline::default(),
            &cfg,
        );
        assert!(matches!(e.unwrap_err(), PlanError::NoDisk { what, .. } if what.contains("usr")));
    }

    #[test]
    fn usrhash_must_name_usr_typed_partitions() {
        let mut d = usr_disk();
        d.partitions[3].gpt.type_guid = dps::ROOT_X86_64;
        let e = plan(&facts(vec![d]), &usrhash(USR_B), &tmpfs_cfg()).unwrap_err();
        assert!(
            matches!(
                &e,
                PlanError::WrongType {
                    expected: "usr-x86-64",
                    ..
                }
            ),
            "{e}"
        );
        let e = plan(
            &facts(vec![usr_disk()]),
            &usrhash(&"ab".repeat(32)),
            &tmpfs_cfg(),
        );
        assert!(e.unwrap_err().to_string().contains("of usrhash="));
    }

    #[test]
    fn roothash_and_usrhash_together_mount_usr_over_the_root_slot() {
        let mut d = usr_disk();
        let (rd, rv) = derived_uuids(ROOT_H).unwrap();
        let mut root = part(7, dps::ROOT_X86_64, "appliance_1", Some(FsKind::Ext4));
        root.gpt.uuid = rd;
        let mut rhash = part(8, dps::ROOT_VERITY_X86_64, "appliance_1", None);
        rhash.gpt.uuid = rv;
        d.partitions.extend([root, rhash]);
        let cmd = Cmdline {
            roothash: Some(ROOT_H.into()),
            ..usrhash(USR_A)
        };
        let p = plan(&facts(vec![d]), &cmd, &no_data()).unwrap();
        assert_eq!(
            names(&p),
            [
                "verity",
                "mount-root",
                "verity",
                "mount-usr",
                "etc-overlay",
                "machine-id"
            ]
        );
        assert!(matches!(&p.steps[2], Step::ActivateVerity { name, .. } if name == "usr"));
        assert!(matches!(&p.steps[3], Step::MountUsr(m) if m.target == "/sysroot/usr"));
        assert!(matches!(&p.steps[4], Step::EtcOverlay { lower, .. } if lower == "/sysroot/etc"));
    }

    #[test]
    fn verity_off_names_both_hashes_it_ignores() {
        let cmd = Cmdline {
            verity: false,
            roothash: Some(USR_A.into()),
            ..usrhash(USR_A)
        };
        let mut cfg = tmpfs_cfg();
        cfg.root.unverified = Unverified::MountReadOnly;
        let e = plan(&facts(vec![usr_disk()]), &cmd, &tmpfs_cfg()).unwrap_err();
        assert!(
            e.to_string()
                .contains("systemd.verity=0 turns usrhash= off"),
            "{e}"
        );
        let p = plan(&facts(vec![usr_disk()]), &cmd, &cfg).unwrap();
        assert!(p
            .warnings
            .iter()
            .any(|w| w == "systemd.verity=0: ignoring roothash= and usrhash="));
    }
}
