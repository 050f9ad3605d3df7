//! Growing the mounted data file system online (EXT4_IOC_RESIZE_FS, what
//! `resize2fs` does on a mounted ext4), so the initrd needs no resize2fs
//! and the file system stays mounted. The kernel journals the resize: a
//! power cut leaves the old or the new size, and the next boot grows again.
//! This module is the FFI boundary for the ioctl.
#![allow(unsafe_code)]

use crate::ext4;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

/// `_IOW('f', 16, __u64)` from linux/ext4.h (fs/ext4/ext4.h).
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// The block count `dev`'s ext4 should grow to, or `None` when it fills
/// its device (or is not ext4).
pub fn ext4_target(dev: &Path) -> std::io::Result<Option<(ext4::Geometry, u64)>> {
    let mut f = File::open(dev)?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut sb = vec![0u8; ext4::SB_LEN];
    f.seek(SeekFrom::Start(ext4::SB_OFFSET))?;
    f.read_exact(&mut sb)?;
    Ok(ext4::geometry(&sb).and_then(|g| Some((g, ext4::grow_to(g, size)?))))
}

/// Grows the ext4 mounted at `mount_point` to `blocks` blocks.
pub fn ext4_grow(mount_point: &Path, blocks: u64) -> std::io::Result<()> {
    let f = File::open(mount_point)?;
    let n: u64 = blocks;
    // SAFETY: the kernel reads one u64 from the pointer, which lives across
    // the call; the fd is the mounted file system's directory.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), EXT4_IOC_RESIZE_FS, &n as *const u64) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
