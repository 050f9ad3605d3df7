//! machine-id format and writing. The ID is 32 lowercase hex digits, a
//! random v4 UUID without dashes, as systemd generates it.

use crate::guid::Guid;
use std::io::Write;
use std::path::Path;

pub fn is_valid(s: &str) -> bool {
    s.len() == 32
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && s.chars().any(|c| c != '0')
}

pub fn from_random(bytes: [u8; 16]) -> String {
    Guid::random_v4(bytes).to_simple()
}

/// Writes `content` with mode 0444 via a temp file and rename, so a crash
/// never leaves a half-written ID behind.
pub fn write(path: &Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("initrd-helper-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o444)
        .open(&tmp)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_valid() {
        let id = from_random([0xab; 16]);
        assert!(is_valid(&id), "{id}");
        assert_eq!(&id[12..13], "4");
    }

    #[test]
    fn validity() {
        assert!(!is_valid(&"0".repeat(32)));
        assert!(!is_valid(&"A".repeat(32)));
        assert!(!is_valid("uninitialized"));
        assert!(!is_valid(&"a".repeat(31)));
    }

    #[test]
    fn write_is_atomic_and_read_only() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etc/machine-id");
        write(&p, "x\n").unwrap();
        write(&p, "y\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "y\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o444
        );
    }
}
