//! The Discoverable Partitions Specification: type GUIDs we look for, the
//! `NAME_VERSION` labels A/B updaters (systemd-sysupdate) write, and the
//! version order used to pick the newest slot when no root hash is given.

use crate::guid::Guid;
use std::cmp::Ordering;

const fn g(s: &[u8; 16]) -> Guid {
    Guid::from_bytes(*s)
}

/// Root partition, x86-64: 4f68bce3-e8cd-4db1-96e7-fbcaf984b709.
pub const ROOT_X86_64: Guid = g(&[
    0x4f, 0x68, 0xbc, 0xe3, 0xe8, 0xcd, 0x4d, 0xb1, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09,
]);
/// Root verity hash partition, x86-64: 2c7357ed-ebd2-46d9-aec1-23d437ec2bf5.
pub const ROOT_VERITY_X86_64: Guid = g(&[
    0x2c, 0x73, 0x57, 0xed, 0xeb, 0xd2, 0x46, 0xd9, 0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b, 0xf5,
]);
/// `/usr` partition, x86-64: 8484680c-9521-48c6-9c11-b0720656f69e.
pub const USR_X86_64: Guid = g(&[
    0x84, 0x84, 0x68, 0x0c, 0x95, 0x21, 0x48, 0xc6, 0x9c, 0x11, 0xb0, 0x72, 0x06, 0x56, 0xf6, 0x9e,
]);
/// `/usr` verity hash partition, x86-64: 77ff5f63-e7b6-4633-acf4-1565b864c0e6.
pub const USR_VERITY_X86_64: Guid = g(&[
    0x77, 0xff, 0x5f, 0x63, 0xe7, 0xb6, 0x46, 0x33, 0xac, 0xf4, 0x15, 0x65, 0xb8, 0x64, 0xc0, 0xe6,
]);
/// Generic `var` partition: 4d21b016-b534-45c2-a9fb-5c16e091fd2d.
pub const VAR: Guid = g(&[
    0x4d, 0x21, 0xb0, 0x16, 0xb5, 0x34, 0x45, 0xc2, 0xa9, 0xfb, 0x5c, 0x16, 0xe0, 0x91, 0xfd, 0x2d,
]);
/// Generic Linux data: 0fc63daf-8483-4772-8e79-3d69d8477de4.
pub const LINUX_GENERIC: Guid = g(&[
    0x0f, 0xc6, 0x3d, 0xaf, 0x84, 0x83, 0x47, 0x72, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
]);
/// EFI System Partition: c12a7328-f81f-11d2-ba4b-00a0c93ec93b.
pub const ESP: Guid = g(&[
    0xc1, 0x2a, 0x73, 0x28, 0xf8, 0x1f, 0x11, 0xd2, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
]);

/// DPS partition attribute: the partition is mounted read-only (bit 60).
/// systemd's gpt-auto generator and remount-fs remount a root slot
/// without it read-write, which a verity root cannot be.
pub const READ_ONLY: u64 = 1 << 60;

/// Human name of a type GUID, for plans and logs.
pub fn type_name(t: &Guid) -> &'static str {
    match *t {
        ROOT_X86_64 => "root-x86-64",
        ROOT_VERITY_X86_64 => "root-x86-64-verity",
        USR_X86_64 => "usr-x86-64",
        USR_VERITY_X86_64 => "usr-x86-64-verity",
        VAR => "var",
        LINUX_GENERIC => "linux-generic",
        ESP => "esp",
        _ => "other",
    }
}

/// The two kinds of image slot: a whole root, or a hermetic /usr (the
/// image has no /etc of its own; the root is a tmpfs or the data
/// partition). Each has its DPS types, its hash option and mapper name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotKind {
    Root,
    Usr,
}

impl SlotKind {
    pub fn data_type(self) -> Guid {
        match self {
            SlotKind::Root => ROOT_X86_64,
            SlotKind::Usr => USR_X86_64,
        }
    }

    pub fn hash_type(self) -> Guid {
        match self {
            SlotKind::Root => ROOT_VERITY_X86_64,
            SlotKind::Usr => USR_VERITY_X86_64,
        }
    }

    /// `root` / `usr`: the /dev/mapper name and the word in messages.
    pub fn name(self) -> &'static str {
        match self {
            SlotKind::Root => "root",
            SlotKind::Usr => "usr",
        }
    }

    /// The command-line option carrying the slot's hash.
    pub fn hash_key(self) -> &'static str {
        match self {
            SlotKind::Root => "roothash=",
            SlotKind::Usr => "usrhash=",
        }
    }
}

/// Label of a slot that holds no image (written by sysupdate for blank slots).
pub const EMPTY_LABEL: &str = "_empty";

/// Whether a root slot's label says it holds a usable, complete image:
/// not `_empty`, not a partial (`PRT#`) or pending (`PND#`) sysupdate write.
pub fn label_is_bootable(label: &str) -> bool {
    label != EMPTY_LABEL && !label.starts_with("PRT#") && !label.starts_with("PND#")
}

/// Splits `NAME_VERSION` at the last underscore; a label without one has no version.
pub fn split_label(label: &str) -> (&str, Option<&str>) {
    match label.rsplit_once('_') {
        Some((name, ver)) if !name.is_empty() && !ver.is_empty() => (name, Some(ver)),
        _ => (label, None),
    }
}

/// Version order in the spirit of systemd's `strverscmp_improved()`:
/// digit runs compare numerically, other runs byte-wise, and `~` sorts
/// before anything (pre-releases: `1.0~rc1` < `1.0`).
pub fn vercmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {}
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = take_digits(a);
                let (nb, rb) = take_digits(b);
                let ord = cmp_digits(na, nb);
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (ra, rb);
                continue;
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => {}
        }
        (a, b) = (&a[1..], &b[1..]);
    }
}

fn take_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|c| c.is_ascii_digit()).count();
    s.split_at(n)
}

fn cmp_digits(a: &[u8], b: &[u8]) -> Ordering {
    let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
    let (a, b) = (&a[strip(a)..], &b[strip(b)..]);
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_spec_text() {
        assert_eq!(
            ROOT_X86_64.to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(
            ROOT_VERITY_X86_64.to_string(),
            "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
        );
        assert_eq!(
            USR_X86_64.to_string(),
            "8484680c-9521-48c6-9c11-b0720656f69e"
        );
        assert_eq!(
            USR_VERITY_X86_64.to_string(),
            "77ff5f63-e7b6-4633-acf4-1565b864c0e6"
        );
        assert_eq!(VAR.to_string(), "4d21b016-b534-45c2-a9fb-5c16e091fd2d");
        assert_eq!(ESP.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn labels() {
        assert_eq!(split_label("appliance_1.2"), ("appliance", Some("1.2")));
        assert_eq!(split_label("my_os_2"), ("my_os", Some("2")));
        assert_eq!(split_label("root"), ("root", None));
        assert_eq!(split_label("_empty"), ("_empty", None));
        assert!(!label_is_bootable("_empty"));
        assert!(!label_is_bootable("PRT#appliance_2"));
        assert!(!label_is_bootable("PND#appliance_2"));
        assert!(label_is_bootable("appliance_2"));
    }

    #[test]
    fn version_order() {
        use Ordering::*;
        assert_eq!(vercmp("1.10", "1.9"), Greater);
        assert_eq!(vercmp("1.0", "1.0"), Equal);
        assert_eq!(vercmp("1.0~rc1", "1.0"), Less);
        assert_eq!(vercmp("2", "10"), Less);
        assert_eq!(vercmp("007", "7"), Equal);
        assert_eq!(vercmp("1.0a", "1.0"), Greater);
        assert_eq!(vercmp("", "1"), Less);
    }
}
