//! The only code that touches the machine: block devices, mounts, the TPM,
//! libcryptsetup. Everything above works on the typed values these return.

pub mod blkid;
pub mod blkpg;
pub mod block;
pub mod cryptlog;
pub mod disk_write;
pub mod fs_grow;
pub mod luks;
pub mod mount;
pub mod tpm;
pub mod tpm_bind;
pub mod tpm_policy;
pub mod tpm_seal;
pub mod verity;

#[cfg(test)]
pub mod swtpm_test;

use crate::facts::DiskFacts;
use std::path::Path;

/// The disks under `root` (normally `/`; a fixture dir in tests), or the
/// given disk image files instead (for `plan --disk`). The TPM is probed
/// separately (`tpm::probe`), once: callers rescan disks every 100 ms.
/// Partitions of type `probe_type` (the data partition) are also probed by
/// libblkid, the blank proof.
pub fn disks(
    root: &Path,
    images: &[std::path::PathBuf],
    probe_type: Option<crate::guid::Guid>,
) -> Vec<DiskFacts> {
    if images.is_empty() {
        block::scan(root, probe_type)
    } else {
        images
            .iter()
            .map(|p| block::disk_from_image(p, probe_type))
            .collect()
    }
}

/// The SMBIOS product UUID under `root` (readable by root only), bounded.
pub fn product_uuid(root: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(root.join("sys/class/dmi/id/product_uuid"))
        .ok()?
        .take(128)
        .read_to_string(&mut s)
        .ok()?;
    Some(s.trim().to_string())
}

/// Reads at most `max` bytes of `p`; more is an error (a file that large
/// is not what it claims to be).
pub fn read_bounded(p: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(max + 1).read_to_end(&mut buf))
        .map_err(|e| format!("reading {}: {e}", p.display()))?;
    if buf.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", p.display()));
    }
    Ok(buf)
}

/// The signed-policy key and signature file under `root`: the configured
/// paths, else the first of the stub's and systemd's copies that exists.
/// A configured `""` means none.
pub fn pcr_files(root: &Path, d: &crate::config::DataConfig) -> crate::facts::PcrFiles {
    use crate::policy::{RUN_PUBLIC_KEY, RUN_SIGNATURE, STUB_PUBLIC_KEY, STUB_SIGNATURE};
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let pick = |configured: &Option<String>, defaults: [&str; 2]| match configured.as_deref() {
        Some("") => None,
        Some(p) => Some(p.to_string()),
        None => defaults
            .into_iter()
            .find(|p| at(p).exists())
            .map(str::to_string),
    };
    let key = pick(&d.pcr_public_key, [STUB_PUBLIC_KEY, RUN_PUBLIC_KEY]).map(|p| {
        let content = read_bounded(&at(&p), crate::pcrsig::MAX_KEY_FILE);
        (p, content)
    });
    let signature = pick(&d.pcr_signature, [STUB_SIGNATURE, RUN_SIGNATURE]);
    crate::facts::PcrFiles { key, signature }
}

/// `LoaderDevicePartUUID` from efivarfs under `root`, when the boot loader
/// or stub set it and it parses.
pub fn loader_partuuid(root: &Path) -> Option<crate::guid::Guid> {
    let name = format!("LoaderDevicePartUUID-{}", crate::facts::LOADER_VENDOR);
    let p = root.join("sys/firmware/efi/efivars").join(name);
    // Bounded read: the variable is 4 + 74 bytes.
    let mut buf = Vec::new();
    use std::io::Read;
    std::fs::File::open(p)
        .ok()?
        .take(256)
        .read_to_end(&mut buf)
        .ok()?;
    crate::facts::parse_loader_partuuid(&buf)
}

/// Whether a device-mapper device `/dev/mapper/NAME` exists already
/// (verity root, data volume): made by an earlier run of this boot, or by
/// hand from the emergency shell.
pub fn mapper_active(name: &str) -> bool {
    use libcryptsetup_rs::consts::vals::CryptStatusInfo;
    matches!(
        libcryptsetup_rs::status(None, name),
        Ok(CryptStatusInfo::Active | CryptStatusInfo::Busy)
    )
}

/// 16 random bytes from the kernel (blocks only until the CRNG is ready).
pub fn random16() -> std::io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        let n = rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty())?;
        filled += n;
    }
    Ok(b)
}
