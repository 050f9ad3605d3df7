//! The skeleton of a tmpfs root around a hermetic /usr: the usr-merge
//! links (/bin -> usr/bin, ...), the mount points stage 2 mounts its API
//! file systems on, and /etc, /var, /root. Only what is missing is made,
//! so a restarted unit (or an existing directory) is left as it is.

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
