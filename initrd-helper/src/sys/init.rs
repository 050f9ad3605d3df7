//! PID 1's work on the machine: the API file systems, kernel modules by
//! finit_module, the supervised helper run, switching root the way
//! util-linux's switch_root does, and the final reboot or halt.

use rustix::mount::{mount, mount_move, MountFlags};
use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Mounts /proc, /sys, /dev (devtmpfs: the kernel makes the device nodes,
/// there is no udev) and /run.
pub fn mount_api() -> io::Result<()> {
    let none = None::<&std::ffi::CStr>;
    let secure = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    for (fs, target, flags, data) in [
        ("proc", "/proc", secure, none),
        ("sysfs", "/sys", secure, none),
        ("devtmpfs", "/dev", MountFlags::NOSUID, none),
    ] {
        std::fs::create_dir_all(target)?;
        mount(fs, target, fs, flags, data).map_err(|e| annotate(e.into(), target))?;
    }
    let run = CString::new("mode=0755").map_err(|_| io::ErrorKind::InvalidInput)?;
    std::fs::create_dir_all("/run")?;
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(run.as_c_str()),
    )
    .map_err(|e| annotate(e.into(), "/run"))?;
    Ok(())
}

/// Mounts efivarfs when the firmware is EFI (the boot loader's variables:
/// the boot disk, a reset request); after the modules, as it may be one.
/// `Ok(false)`: not an EFI boot.
pub fn mount_efivars() -> io::Result<bool> {
    let efivars = "/sys/firmware/efi/efivars";
    if !Path::new(efivars).is_dir() {
        return Ok(false);
    }
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    mount(
        "efivarfs",
        efivars,
        "efivarfs",
        flags,
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| annotate(e.into(), efivars))?;
    Ok(true)
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// How one module load ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Now,
    /// Built in, or loaded already.
    Already,
    /// The kernel says this machine has no use for it (ENODEV: e.g. a
    /// cipher driver for an instruction the CPU lacks).
    NotForThisMachine,
}

/// Loads the module file at `path` with finit_module (the kernel checks
/// its signature; the file is never read into user memory).
pub fn load_module(path: &Path) -> io::Result<Loaded> {
    let f = std::fs::File::open(path)?;
    match rustix::system::finit_module(&f, c"", 0) {
        Ok(()) => Ok(Loaded::Now),
        Err(rustix::io::Errno::EXIST) => Ok(Loaded::Already),
        Err(rustix::io::Errno::NODEV) => Ok(Loaded::NotForThisMachine),
        Err(e) => Err(e.into()),
    }
}

/// The running kernel's release (/lib/modules/RELEASE).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Runs `exe ARGS` and reaps every child until that one exits (PID 1
/// inherits orphans). Returns its exit code, or `None` when a signal
/// killed it.
pub fn run_supervised(exe: &Path, args: &[&str]) -> io::Result<Option<i32>> {
    let child = std::process::Command::new(exe).args(args).spawn()?;
    let want = child.id();
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid.as_raw_nonzero().get() as u32 == want => {
                return Ok(status.exit_status());
            }
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps any exited children, without blocking.
pub fn reap() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// Makes `new_root` the root and executes `init` there, as util-linux's
/// switch_root: /dev, /proc, /sys and /run move into it, the initramfs's
/// own files are deleted (they would stay in RAM for ever), the new root
/// moves onto /, chroot, exec. Returns only on failure.
pub fn switch_root(new_root: &Path, init: &str) -> io::Error {
    match switch(new_root, init) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn switch(new_root: &Path, init: &str) -> io::Result<Never> {
    // Checked before anything moves: a root without its init is a failed
    // boot, not a kernel panic.
    exists_in(new_root, init)?;
    for m in ["/dev", "/proc", "/sys", "/run"] {
        let to = new_root.join(&m[1..]);
        std::fs::create_dir_all(&to).ok();
        mount_move(m, &to).map_err(|e| annotate(e.into(), m))?;
    }
    let root_dev = std::fs::symlink_metadata("/")?.dev();
    delete_tree(Path::new("/"), root_dev, new_root);
    std::env::set_current_dir(new_root)?;
    mount_move(".", "/").map_err(|e| annotate(e.into(), "moving the new root onto /"))?;
    rustix::process::chroot(".")?;
    std::env::set_current_dir("/")?;
    use std::os::unix::process::CommandExt;
    Err(std::process::Command::new(init).env_clear().exec())
}

/// `path` exists under `root` as seen from inside it: absolute symlinks
/// (Debian's /sbin/init -> /lib/systemd/systemd) resolve under `root`.
fn exists_in(root: &Path, path: &str) -> io::Result<()> {
    let mut p = root.join(path.trim_start_matches('/'));
    for _ in 0..16 {
        let md =
            std::fs::symlink_metadata(&p).map_err(|e| annotate(e, &p.display().to_string()))?;
        if !md.file_type().is_symlink() {
            return Ok(());
        }
        let t = std::fs::read_link(&p)?;
        p = match t.strip_prefix("/") {
            Ok(rel) => root.join(rel),
            Err(_) => p.parent().unwrap_or(root).join(t),
        };
    }
    Err(io::Error::other(format!("{path}: too many symlinks")))
}

/// Deletes `dir`'s contents that are on device `dev` (the initramfs),
/// never crossing into another mount and never into `keep`. Best effort:
/// what cannot be deleted only costs memory.
fn delete_tree(dir: &Path, dev: u64, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p: PathBuf = e.path();
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if p == keep || md.dev() != dev {
            continue;
        }
        if md.is_dir() {
            delete_tree(&p, dev, keep);
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// What the failure policy does to the machine.
pub fn power(cmd: crate::pid1::OnFailure) -> io::Error {
    use crate::pid1::OnFailure;
    use rustix::system::RebootCommand;
    rustix::fs::sync();
    let c = match cmd {
        OnFailure::Reboot => RebootCommand::Restart,
        OnFailure::Poweroff => RebootCommand::PowerOff,
        OnFailure::Halt | OnFailure::Wait => RebootCommand::Halt,
    };
    match rustix::system::reboot(c) {
        Ok(()) => io::Error::other("reboot(2) returned"),
        Err(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_symlinks_resolve_inside_the_new_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("usr/sbin")).unwrap();
        std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        std::os::unix::fs::symlink("usr/sbin", r.join("sbin")).unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        assert!(
            exists_in(r, "/sbin/init").is_err(),
            "a dangling init was accepted"
        );
        std::fs::write(r.join("usr/lib/systemd/systemd"), b"").unwrap();
        exists_in(r, "/sbin/init").unwrap();
        assert!(exists_in(r, "/bin/sh").is_err());
    }
}
