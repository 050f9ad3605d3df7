//! Typed facts about the machine, gathered by `sys::disks` and `sys::tpm` (or built by
//! hand in tests) and consumed by the pure planner.
//!
//! `probe_fs` is a small magic-number probe, not libblkid, on purpose: it
//! runs on every partition of every disk on each 100 ms rescan, only picks
//! the `mount(2)` type of a root slot (the kernel's mount and dm-verity check
//! the real thing), and as a pure function it is fuzzed and unit-tested
//! without a device. Where a decision destroys data (the data partition's
//! blank proof), libblkid's full probe decides (`sys/blkid.rs`).

use crate::gpt::{Gpt, Partition};
use serde::Serialize;
use std::path::PathBuf;

/// File systems and containers recognised by their superblock magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Ext4,
    Erofs,
    Squashfs,
    Vfat,
    Luks,
}

impl FsKind {
    /// The name `mount(2)` wants.
    pub fn mount_type(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Erofs => "erofs",
            FsKind::Squashfs => "squashfs",
            FsKind::Vfat => "vfat",
            FsKind::Luks => "crypto_LUKS",
        }
    }

    pub fn is_root_fs(self) -> bool {
        matches!(self, FsKind::Ext4 | FsKind::Erofs | FsKind::Squashfs)
    }
}

/// Bytes to read from a partition's start for [`probe_fs`].
pub const PROBE_LEN: usize = 4096;

/// Recognises a file system from the first [`PROBE_LEN`] bytes of a device.
pub fn probe_fs(b: &[u8]) -> Option<FsKind> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    if at(0, b"LUKS\xba\xbe") || at(0, b"SKUL\xba\xbe") {
        Some(FsKind::Luks)
    } else if at(0, b"hsqs") {
        Some(FsKind::Squashfs)
    } else if at(1024, &0xE0F5_E1E2u32.to_le_bytes()) {
        Some(FsKind::Erofs)
    } else if at(1080, &[0x53, 0xEF]) {
        Some(FsKind::Ext4)
    } else if at(510, &[0x55, 0xAA]) && (at(54, b"FAT") || at(82, b"FAT32")) {
        Some(FsKind::Vfat)
    } else {
        None
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionFacts {
    #[serde(flatten)]
    pub gpt: Partition,
    /// Device node (`/dev/vda2`), or the image file for `plan --disk`.
    pub dev: PathBuf,
    pub fs: Option<FsKind>,
    /// The dm-verity superblock at its start (`None`: no verity magic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verity: Option<Result<crate::verity_sb::Superblock, String>>,
    /// libblkid's finding, for data partitions only (`None`: not probed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<Result<crate::sys::blkid::Signature, String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiskFacts {
    /// Kernel name (`vda`) or the image path.
    pub name: String,
    pub dev: PathBuf,
    pub size: u64,
    /// The parsed GPT, or why it could not be read.
    pub table: Result<Gpt, String>,
    pub partitions: Vec<PartitionFacts>,
    /// The kernel is still creating its device nodes (the disk's, or some
    /// of its partitions'): no boot-disk decision is made while one is.
    pub settling: bool,
}

impl DiskFacts {
    pub fn disk_guid(&self) -> Option<crate::guid::Guid> {
        self.table.as_ref().ok().map(|t| t.disk_guid)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TpmFacts {
    Absent,
    Present { manufacturer: String },
    Unusable { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub disks: Vec<DiskFacts>,
    pub tpm: TpmFacts,
    /// `/dev/mapper/data` exists already: opened by hand with the recovery
    /// key (emergency shell), or by an earlier run of this boot.
    pub data_open: bool,
    /// The ESP the firmware booted from, as systemd-boot/systemd-stub
    /// report it (the `LoaderDevicePartUUID` EFI variable).
    pub loader_partuuid: Option<crate::guid::Guid>,
    /// The firmware's SMBIOS system UUID (`/sys/class/dmi/id/product_uuid`,
    /// QEMU's `-uuid`), raw: the planner decides whether it is usable.
    pub product_uuid: Option<String>,
    /// A signed PCR policy's files: configured, or the booted UKI's.
    pub pcr_files: PcrFiles,
    /// A factory reset requested through the EFI variable, and what it is
    /// checked against.
    pub efi_reset: EfiResetFacts,
    /// An absent TPM was waited for as long as the boot disk may be (its
    /// driver can load late): only then does its absence mean asking for
    /// the recovery key.
    pub tpm_settled: bool,
}

/// `FactoryResetRequest` (when set: parsed, or why not) and this boot's
/// os-release IDs and boot ID.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EfiResetFacts {
    pub request: Option<Result<crate::reset_request::EfiRequest, String>>,
    pub os_id: Option<String>,
    pub image_id: Option<String>,
    pub boot_id: Option<String>,
}

/// The files of a signed PCR policy found for this boot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PcrFiles {
    /// The public key's path, and its content or why it could not be read.
    pub key: Option<(String, Result<Vec<u8>, String>)>,
    /// The signature file's path (its content is read when it is used).
    pub signature: Option<String>,
}

/// systemd's loader variables' vendor GUID (efivarfs file name suffix).
pub const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Parses an efivarfs `LoaderDevicePartUUID` file: 4 bytes of attributes,
/// then the UUID as UTF-16LE text (upper case, maybe NUL-terminated).
/// Anything else (too long, not a UUID) is `None`: a cosmetic hint only
/// narrows the choice, and a bad one is ignored, never guessed at.
pub fn parse_loader_partuuid(b: &[u8]) -> Option<crate::guid::Guid> {
    let text = b.get(4..)?;
    if text.len() > 128 || text.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = text
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units)
        .ok()?
        .to_ascii_lowercase()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_LEN];
        b[off..off + magic.len()].copy_from_slice(magic);
        b
    }

    #[test]
    fn probes_known_magics() {
        assert_eq!(probe_fs(&with(1080, &[0x53, 0xEF])), Some(FsKind::Ext4));
        assert_eq!(
            probe_fs(&with(1024, &[0xE2, 0xE1, 0xF5, 0xE0])),
            Some(FsKind::Erofs)
        );
        assert_eq!(probe_fs(&with(0, b"hsqs")), Some(FsKind::Squashfs));
        assert_eq!(probe_fs(&with(0, b"LUKS\xba\xbe")), Some(FsKind::Luks));
        let mut fat = with(82, b"FAT32");
        fat[510] = 0x55;
        fat[511] = 0xAA;
        assert_eq!(probe_fs(&fat), Some(FsKind::Vfat));
    }

    #[test]
    fn loader_partuuid_parses_systemds_format() {
        let mut b = vec![6, 0, 0, 0];
        for u in "9A0B1C2D-0000-4000-8000-00000000ABCD\0".encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        let g = parse_loader_partuuid(&b).unwrap();
        assert_eq!(g.to_string(), "9a0b1c2d-0000-4000-8000-00000000abcd");
        assert_eq!(parse_loader_partuuid(&b[..10]), None);
        assert_eq!(parse_loader_partuuid(&[6, 0, 0, 0, b'x', 0]), None);
        assert_eq!(parse_loader_partuuid(&vec![0; 5000]), None);
    }

    #[test]
    fn blank_and_short_buffers_are_unknown() {
        assert_eq!(probe_fs(&[0u8; PROBE_LEN]), None);
        assert_eq!(probe_fs(&[0u8; 10]), None);
        assert_eq!(probe_fs(&[]), None);
    }
}
