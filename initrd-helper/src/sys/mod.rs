//! The only code that touches the machine: block devices, mounts, the TPM,
//! libcryptsetup. Everything above works on the typed values these return.

pub mod ask;
pub mod blkid;
pub mod blkpg;
pub mod block;
pub mod cryptlog;
pub mod disk_write;
pub mod fs_grow;
pub mod init;
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

const EFIVARS: &str = "sys/firmware/efi/efivars";

/// The EFI factory reset request under `root`, and what it is checked
/// against: the os-release of this environment (the initrd's
/// initrd-release first, as systemd reads it there) and the boot ID.
pub fn efi_reset(root: &Path) -> crate::facts::EfiResetFacts {
    use crate::reset_request::{self, os_release_field};
    let var = root.join(EFIVARS).join(reset_request::VAR);
    let request = var
        .exists()
        .then(|| read_bounded(&var, reset_request::MAX_VAR).and_then(|b| reset_request::parse(&b)));
    let release = os_release(
        root,
        &["etc/initrd-release", "etc/os-release", "usr/lib/os-release"],
    )
    .unwrap_or_default();
    let boot_id = boot_id(root).ok();
    crate::facts::EfiResetFacts {
        request,
        os_id: os_release_field(&release, "ID"),
        image_id: os_release_field(&release, "IMAGE_ID"),
        boot_id,
    }
}

/// The first of `paths` (under `root`) that reads: an os-release file.
fn os_release(root: &Path, paths: &[&str]) -> Option<String> {
    paths
        .iter()
        .find_map(|p| read_bounded(&root.join(p), 64 << 10).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// This boot's ID, as the kernel prints it.
fn boot_id(root: &Path) -> Result<String, String> {
    read_bounded(&root.join("proc/sys/kernel/random/boot_id"), 64)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

/// Requests a factory reset for the next boot from the running system (as
/// `systemd-factory-reset request` does): the variable names this OS
/// (ROOT/etc/os-release) and this boot. Returns the variable's path.
pub fn request_efi_reset(root: &Path) -> Result<std::path::PathBuf, String> {
    use crate::reset_request::{self, os_release_field};
    let dir = root.join(EFIVARS);
    if !dir.is_dir() {
        return Err(format!("{} is missing: not an EFI boot", dir.display()));
    }
    let release =
        os_release(root, &["etc/os-release", "usr/lib/os-release"]).ok_or("no os-release")?;
    let id = os_release_field(&release, "ID").ok_or("os-release has no ID=")?;
    let boot = reset_request::normalize_id(&boot_id(root)?).ok_or("unreadable boot ID")?;
    let bytes = reset_request::encode(
        &id,
        os_release_field(&release, "IMAGE_ID").as_deref(),
        &boot,
    );
    let var = dir.join(reset_request::VAR);
    // efivarfs takes a variable in one write (attributes first).
    std::fs::write(&var, bytes).map_err(|e| format!("writing {}: {e}", var.display()))?;
    Ok(var)
}

/// Deletes the EFI factory reset request (efivarfs marks variables
/// immutable: the flag is cleared first). `Ok(false)`: it was not there.
pub fn clear_efi_reset(root: &Path) -> std::io::Result<bool> {
    let var = root.join(EFIVARS).join(crate::reset_request::VAR);
    let f = match std::fs::File::open(&var) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    // Only efivarfs has the flag; elsewhere (tests) the delete is enough.
    if let Ok(flags) = ioctl_getflags(&f) {
        if flags.contains(IFlags::IMMUTABLE) {
            ioctl_setflags(&f, flags - IFlags::IMMUTABLE)?;
        }
    }
    drop(f);
    std::fs::remove_file(&var)?;
    Ok(true)
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
