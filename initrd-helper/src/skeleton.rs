//! The skeleton of a tmpfs root around a hermetic /usr: the usr-merge
//! links (/bin -> usr/bin, ...), the mount points stage 2 mounts its API
//! file systems on, and /etc, /var, /root. Only what is missing is made,
//! so a restarted unit (or an existing directory) is left as it is; and
//! the one-time copy of the factory /etc into a writable root.

use std::io;
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Directories and their modes (sticky /tmp, private /root).
pub const DIRS: &[(&str, u32)] = &[
    ("usr", 0o755),
    ("etc", 0o755),
    ("var", 0o755),
    ("run", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("dev", 0o755),
    ("tmp", 0o1777),
    ("root", 0o700),
    ("home", 0o755),
    ("mnt", 0o755),
    ("srv", 0o755),
];

/// The usr-merge links, relative so they hold inside and outside the initrd.
pub const LINKS: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("sbin", "usr/sbin"),
    ("lib", "usr/lib"),
    ("lib64", "usr/lib64"),
];

/// Makes what is missing of the skeleton under `root`.
pub fn create(root: &Path) -> io::Result<()> {
    for (name, mode) in DIRS {
        let p = root.join(name);
        if p.symlink_metadata().is_err() {
            std::fs::DirBuilder::new().mode(*mode).create(&p)?;
            // The umask must not narrow /tmp's sticky, world-writable mode.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
    }
    for (name, to) in LINKS {
        let p = root.join(name);
        if p.symlink_metadata().is_err() {
            symlink(to, &p)?;
        }
    }
    Ok(())
}

/// Copies the tree `from` to `tmp` (a stale `tmp` from a cut copy is
/// removed first), syncs it, then renames it to `to`: `to` appears whole
/// or not at all. Modes and owners are kept; returns the entries copied.
pub fn seed(from: &Path, tmp: &Path, to: &Path) -> io::Result<u64> {
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(tmp)?;
    }
    let n = copy_tree(from, tmp)?;
    sync_dir(tmp)?;
    std::fs::rename(tmp, to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    Ok(n)
}

fn sync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

/// Directories, regular files and symlinks; anything else (a device node
/// or socket has no business in a factory /etc) is an error.
fn copy_tree(from: &Path, to: &Path) -> io::Result<u64> {
    use std::os::unix::fs::{lchown, MetadataExt};
    let meta = from.symlink_metadata()?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(std::fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        std::fs::copy(from, to)?;
    } else if ft.is_dir() {
        std::fs::create_dir(to)?;
        let mut n = 0;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            n += copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        lchown(to, Some(meta.uid()), Some(meta.gid()))?;
        return Ok(n + 1);
    } else {
        return Err(io::Error::other(format!(
            "{} is neither a file, a directory nor a symlink",
            from.display()
        )));
    }
    lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if ft.is_file() {
        // After the chown, which clears set-id bits.
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn makes_the_skeleton_and_keeps_what_exists() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("home")).unwrap();
        std::fs::write(d.path().join("home/keep"), b"x").unwrap();
        create(d.path()).unwrap();
        create(d.path()).unwrap();
        let mode = |n: &str| std::fs::metadata(d.path().join(n)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        assert_eq!(
            std::fs::read_link(d.path().join("lib64")).unwrap(),
            Path::new("usr/lib64")
        );
        assert!(d.path().join("home/keep").exists());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            DIRS.len() + LINKS.len()
        );
    }
}
