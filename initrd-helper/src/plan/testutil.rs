//! Facts and configs built by hand for the planner's tests.

use crate::config::{Config, Unverified};
use crate::dps;
use crate::facts::{DiskFacts, Facts, FsKind, PartitionFacts, TpmFacts};
use crate::gpt::{Gpt, Partition};
use crate::guid::Guid;
use crate::sys::blkid::Signature;
use std::path::PathBuf;

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
        product_uuid: None,
        pcr_files: Default::default(),
        efi_reset: Default::default(),
        tpm_settled: true,
    }
}

pub(crate) fn no_data() -> Config {
    let mut c = Config::default();
    c.data.enabled = false;
    c
}

/// Development config without the data partition (the root-slot tests).
pub(crate) fn dev_cfg() -> Config {
    let mut c = Config::default();
    c.root.unverified = Unverified::MountReadOnly;
    c.data.enabled = false;
    c
}
