//! Why no plan could be made: each error names its cause, and says
//! whether waiting for more devices may resolve it.

use crate::guid::Guid;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no disk has {what}; searched: {}", searched_text(.searched))]
    NoDisk { what: String, searched: Vec<String> },
    #[error("the boot disk with GPT disk GUID {0} was not found")]
    DiskNotFound(Guid),
    #[error("the boot loader booted from partition {0} (LoaderDevicePartUUID), which no disk has")]
    LoaderDiskNotFound(Guid),
    #[error("disks {} still show their partitions (device nodes missing): no boot disk is chosen until every disk has settled; if one never does, name the boot disk with initrd_helper.disk=<disk GUID>", .0.join(", "))]
    Settling(Vec<String>),
    #[error("several disks answer to the boot disk's identity ({}): a cloned disk; refusing to choose (give the clone a new GUID: sfdisk --disk-id)", .0.join(", "))]
    DuplicateDisks(Vec<String>),
    #[error("several disks carry root partitions ({}); refusing to guess which one to use: set initrd_helper.disk=<disk GUID>", .0.join(", "))]
    AmbiguousDisks(Vec<String>),
    #[error("the partition table of {disk} cannot be used: {error}")]
    BadTable { disk: String, error: String },
    #[error(
        "disk {disk} has no bootable {kind} partition (all {kind} slots are empty, partial or pending)"
    )]
    NoBootableSlot { disk: String, kind: &'static str },
    #[error("{} and root.unverified = \"refuse\": refusing to mount an unverified {} (set root.unverified = \"mount-read-only\" for development images)", if *.verity_off { format!("systemd.verity=0 turns {key} off") } else { format!("no {key} on the kernel command line") }, if *.key == "usrhash=" { "/usr" } else { "root" })]
    UnverifiedRefused { key: &'static str, verity_off: bool },
    #[error("{key}{hash} is not 32 to 64 bytes of hex")]
    BadRootHash { key: &'static str, hash: String },
    #[error("root.layout = \"{0}\" takes / from no root slot, but the kernel command line carries roothash=: refusing to leave a verified root unused (drop roothash= or use root.layout = \"slot\")")]
    RootHashUnused(&'static str),
    #[error("root.layout = \"data\" makes the data partition /, but {0}: refusing to boot without a root (give the boot disk a blank partition of type {1}, or set data.enabled = true)")]
    NoDataRoot(String, crate::guid::Guid),
    #[error("the boot disk {disk} has no {what}")]
    MissingPartition { disk: String, what: String },
    #[error("{dev} ({what}) has partition type {found}, expected {expected}")]
    WrongType {
        dev: String,
        what: String,
        found: Guid,
        expected: &'static str,
    },
    #[error("hash partition {dev} cannot verify {data}: {why}")]
    BadVerity {
        dev: String,
        data: String,
        why: String,
    },
    #[error(
        "{kind} partition {dev} ({label:?}) holds no supported file system (ext4, erofs, squashfs)"
    )]
    NoRootFs {
        kind: &'static str,
        dev: String,
        label: String,
    },
    #[error("the boot disk {disk} has several data partitions of type {kind} ({}); refusing to guess", .parts.join(", "))]
    AmbiguousData {
        disk: String,
        kind: &'static str,
        parts: Vec<String>,
    },
    #[error("data partition {dev} holds {found}, not {expected}: refusing to format it (it may hold someone's data). To start it over, boot once with systemd.factory_reset=1")]
    DataNotOurs {
        dev: String,
        found: String,
        expected: &'static str,
    },
    #[error(
        "data partition {dev} could not be probed for signatures ({error}): refusing to touch it"
    )]
    DataUnprobed { dev: String, error: String },
    #[error("no usable TPM2 ({tpm}): refusing to provision the data partition {dev} without encryption (data.encryption = \"tpm2\"); nothing was changed. Machines without a TPM need data.encryption = \"none\"")]
    NoTpmToProvision { dev: String, tpm: String },
    #[error("no usable TPM2 ({tpm}): cannot unlock the data volume {dev}; nothing was changed. From the emergency shell: `cryptsetup open {dev} {name}` with the recovery key, then `systemctl restart initrd-helper`")]
    NoTpmToUnlock {
        dev: String,
        name: String,
        tpm: String,
    },
    #[error("the signed PCR policy's public key {path} cannot be used: {why}; nothing was changed (fix data.pcr_public_key, or rebuild the UKI with a valid --pcr-public-key)")]
    BadPcrKey { path: String, why: String },
    #[error("data.pcrs = [] and no signed PCR policy (no data.pcr_public_key, and the boot brought no /.extra/tpm2-pcr-public-key.pem): the volume's secret would be sealed to nothing; refusing (name literal PCRs, or boot a UKI with .pcrpkey)")]
    NoPolicy,
}

fn searched_text(disks: &[String]) -> String {
    if disks.is_empty() {
        "no disks found (yet)".into()
    } else {
        disks.join(", ")
    }
}

impl PlanError {
    /// Errors that may resolve once more devices appear (worth waiting for).
    pub fn may_resolve_by_waiting(&self) -> bool {
        matches!(
            self,
            PlanError::NoDisk { .. }
                | PlanError::DiskNotFound(_)
                | PlanError::LoaderDiskNotFound(_)
                | PlanError::Settling(_)
                | PlanError::MissingPartition { .. }
                | PlanError::NoTpmToProvision { .. }
                | PlanError::NoTpmToUnlock { .. }
        )
    }
}
