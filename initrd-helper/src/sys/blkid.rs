//! The blank proof: libblkid (linked statically, it comes with libcryptsetup)
//! looks for every file system, RAID, crypto and partition-table signature it
//! knows. This module is the FFI boundary for it; nothing above sees a pointer.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::AsRawFd;
use std::path::Path;

/// What libblkid found on a device (or a byte range of an image file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "signature", content = "type", rename_all = "lowercase")]
pub enum Signature {
    /// No signature of any kind: the only state we format.
    None,
    /// One signature: its blkid TYPE (`crypto_LUKS`, `ext4`) or PTTYPE (`gpt`).
    Found(String),
    /// Several signatures that contradict each other.
    Ambiguous,
}

type Probe = *mut c_void;

extern "C" {
    fn blkid_new_probe() -> Probe;
    fn blkid_free_probe(pr: Probe);
    fn blkid_probe_set_device(pr: Probe, fd: c_int, off: i64, size: i64) -> c_int;
    fn blkid_probe_enable_superblocks(pr: Probe, enable: c_int) -> c_int;
    fn blkid_probe_enable_partitions(pr: Probe, enable: c_int) -> c_int;
    fn blkid_do_safeprobe(pr: Probe) -> c_int;
    fn blkid_probe_lookup_value(
        pr: Probe,
        name: *const c_char,
        data: *mut *const c_char,
        len: *mut usize,
    ) -> c_int;
}

/// Frees the probe on every return path.
struct Guard(Probe);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: the pointer came from blkid_new_probe and is freed once.
        unsafe { blkid_free_probe(self.0) }
    }
}

fn lookup(pr: Probe, name: &CStr) -> Option<String> {
    let mut data: *const c_char = std::ptr::null();
    // SAFETY: pr is a live probe; blkid sets data to a NUL-terminated string
    // owned by the probe, copied out before the probe is freed.
    let rc =
        unsafe { blkid_probe_lookup_value(pr, name.as_ptr(), &mut data, std::ptr::null_mut()) };
    if rc != 0 || data.is_null() {
        return None;
    }
    // SAFETY: see above.
    Some(
        unsafe { CStr::from_ptr(data) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Probes `len` bytes at `offset` of `path` (0, 0 = the whole device).
pub fn probe(path: &Path, offset: u64, len: u64) -> std::io::Result<Signature> {
    let file = std::fs::File::open(path)?;
    let err = |what: &str| std::io::Error::other(format!("libblkid: {what} failed"));
    // SAFETY: plain constructor; null means out of memory.
    let pr = unsafe { blkid_new_probe() };
    if pr.is_null() {
        return Err(err("blkid_new_probe"));
    }
    let guard = Guard(pr);
    let (off, size) = (offset as i64, len as i64);
    // SAFETY: the fd stays open (file outlives guard's use); pr is live.
    let rc = unsafe {
        if blkid_probe_set_device(guard.0, file.as_raw_fd(), off, size) != 0 {
            -100
        } else {
            blkid_probe_enable_superblocks(guard.0, 1);
            blkid_probe_enable_partitions(guard.0, 1);
            blkid_do_safeprobe(guard.0)
        }
    };
    let found = match rc {
        0 => lookup(guard.0, c"TYPE")
            .or_else(|| lookup(guard.0, c"PTTYPE"))
            .unwrap_or_else(|| "unknown".into()),
        1 => return Ok(Signature::None),
        -2 => return Ok(Signature::Ambiguous),
        -100 => return Err(err("blkid_probe_set_device")),
        _ => return Err(err("blkid_do_safeprobe")),
    };
    drop(guard);
    drop(file);
    Ok(Signature::Found(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn zeros_are_blank_and_signatures_are_found() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert_eq!(probe(&img, 0, 0).unwrap(), Signature::None);
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "offset=33554432"])
            .arg(&img)
            .arg("16M")
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed by this test");
        assert!(ok.success());
        // The first 32 MiB (another "partition") stay blank.
        assert_eq!(probe(&img, 0, 32 << 20).unwrap(), Signature::None);
        assert_eq!(
            probe(&img, 32 << 20, 32 << 20).unwrap(),
            Signature::Found("ext4".into())
        );
    }
}
