//! Mount helpers over rustix (no unsafe needed), and the mount table.

use crate::mountinfo::{self, MountEntry};
use rustix::mount::{mount, MountFlags};
use std::ffi::CString;
use std::io;
use std::path::Path;

/// Mount data as the C string the syscall wants.
fn data(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))
}

fn mkdir(p: &Path) -> io::Result<()> {
    std::fs::create_dir_all(p)
}

pub fn mount_ro(source: &Path, target: &Path, fstype: &str) -> io::Result<()> {
    mkdir(target)?;
    mount(
        source,
        target,
        fstype,
        MountFlags::RDONLY | MountFlags::NODEV,
        None,
    )?;
    Ok(())
}

/// A writable data file system (no device nodes or setuid binaries on it).
pub fn mount_rw(source: &Path, target: &Path, fstype: &str) -> io::Result<()> {
    mkdir(target)?;
    mount(
        source,
        target,
        fstype,
        MountFlags::NODEV | MountFlags::NOSUID,
        None,
    )?;
    Ok(())
}

/// `source` bind-mounted at `target`, both made when missing.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    mkdir(source)?;
    mkdir(target)?;
    rustix::mount::mount_bind(source, target)?;
    Ok(())
}

pub fn umount(target: &Path) -> io::Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())?;
    Ok(())
}

pub fn mount_tmpfs(target: &Path, options: &str) -> io::Result<()> {
    mkdir(target)?;
    mount(
        "initrd-helper",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        data(options)?.as_c_str(),
    )?;
    Ok(())
}

pub fn mount_overlay(target: &Path, lower: &Path, upper: &Path, work: &Path) -> io::Result<()> {
    mkdir(upper)?;
    mkdir(work)?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        data(&opts)?.as_c_str(),
    )?;
    Ok(())
}

/// The current mount table (empty when /proc is not mounted).
pub fn table() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| mountinfo::parse(&t))
        .unwrap_or_default()
}
