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

/// SMBIOS UUIDs that firmware vendors ship unchanged on many machines:
/// never an identity.
const PLACEHOLDERS: [&str; 3] = [
    "03000200-0400-0500-0006-000700080009",
    "00020003-0004-0005-0006-000700080009",
    "4c4c4544-0000-2010-8020-80c04f202020",
];

/// The machine ID `systemd.machine_id=firmware` gives: the firmware's
/// SMBIOS product UUID as 32 lowercase hex digits, or why it cannot be one
/// (missing, not a UUID, all zeros or all ones, a known placeholder).
pub fn from_firmware(product_uuid: Option<&str>) -> Result<String, String> {
    let raw = product_uuid.ok_or("the firmware offers no SMBIOS product UUID")?;
    let shown: String = raw.chars().take(40).collect();
    let g: Guid = raw
        .to_ascii_lowercase()
        .parse()
        .map_err(|_| format!("the SMBIOS product UUID {shown:?} is not a UUID"))?;
    let id = g.to_simple();
    let text = g.to_string();
    if id.chars().all(|c| c == '0') || id.chars().all(|c| c == 'f') {
        return Err(format!(
            "the SMBIOS product UUID is {text}, not an identity"
        ));
    }
    if PLACEHOLDERS.contains(&text.as_str()) {
        return Err(format!(
            "the SMBIOS product UUID {text} is a vendor placeholder shared by many machines"
        ));
    }
    Ok(id)
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
    fn firmware_ids_are_the_product_uuid_unless_it_is_none() {
        let id = from_firmware(Some("8E1D5F5A-1B2C-4D3E-9F00-0123456789AB")).unwrap();
        assert_eq!(id, "8e1d5f5a1b2c4d3e9f000123456789ab");
        assert!(is_valid(&id));
        for (raw, why) in [
            (None, "offers no"),
            (Some("not-a-uuid"), "not a UUID"),
            (
                Some("00000000-0000-0000-0000-000000000000"),
                "not an identity",
            ),
            (
                Some("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
                "not an identity",
            ),
            (Some("03000200-0400-0500-0006-000700080009"), "placeholder"),
        ] {
            let e = from_firmware(raw).unwrap_err();
            assert!(e.contains(why), "{raw:?}: {e}");
        }
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
