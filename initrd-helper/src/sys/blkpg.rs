//! Telling the kernel about a partition's new size (BLKPG_RESIZE_PARTITION).
//! BLKRRPART would re-read the whole table, but the kernel refuses it while
//! any partition of the disk is in use, and the root slot always is.
//! This module is the FFI boundary for the ioctl.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_longlong, c_void};
use std::os::fd::AsRawFd;
use std::path::Path;

/// `_IO(0x12, 105)` from linux/fs.h.
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: c_int = 3;

/// linux/blkpg.h `struct blkpg_partition` (byte offsets and sizes).
#[repr(C)]
struct BlkpgPartition {
    start: c_longlong,
    length: c_longlong,
    pno: c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// linux/blkpg.h `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: c_int,
    flags: c_int,
    datalen: c_int,
    data: *mut c_void,
}

/// Makes the kernel's partition `number` of `disk` `length` bytes long
/// (its start is unchanged: BLKPG requires the same start).
pub fn resize_partition(disk: &Path, number: u32, start: u64, length: u64) -> std::io::Result<()> {
    let f = std::fs::File::open(disk)?;
    let mut part = BlkpgPartition {
        start: start as c_longlong,
        length: length as c_longlong,
        pno: number as c_int,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg and part live across the call and have the kernel's layout.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG, &mut arg as *mut BlkpgIoctlArg) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
