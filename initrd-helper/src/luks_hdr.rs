//! Why libcryptsetup refused a LUKS2 header: its load only returns an
//! errno, so after a refusal the helper reads the binary headers itself
//! and names the cause (LUKS1, another version, a damaged or truncated
//! header). Only a diagnosis: libcryptsetup alone decides what opens, and
//! this never runs unless it refused.

use sha2::{Digest, Sha256};

/// The binary header's size (the JSON area follows it).
pub const BIN_LEN: usize = 4096;
/// Where libcryptsetup looks for the secondary header when the primary
/// cannot say (the LUKS2 metadata sizes, 16 KiB to 4 MiB).
pub const SECONDARY_OFFSETS: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const MAGIC_1: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_2: &[u8; 6] = b"SKUL\xba\xbe";

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// What one header copy at `offset` looks like; `read(offset, len)` gives
/// the device's bytes there (`None`: the device ends first).
fn copy_state(read: &dyn Fn(u64, usize) -> Option<Vec<u8>>, offset: u64, magic: &[u8]) -> String {
    let Some(bin) = read(offset, BIN_LEN) else {
        return "the device ends inside it (truncated)".into();
    };
    if &bin[..6] != magic {
        return "no LUKS magic".into();
    }
    let version = u16::from_be_bytes([bin[6], bin[7]]);
    if version != 2 {
        return format!("LUKS version {version}");
    }
    let size = be_u64(&bin, 8);
    if !(0x4000..=0x40_0000).contains(&size) || !size.is_power_of_two() {
        return format!("implausible header size {size}");
    }
    if &bin[72..79] != b"sha256\0" {
        return "a checksum algorithm other than sha256".into();
    }
    // Bounded above: at most 4 MiB.
    let Some(mut all) = read(offset, size as usize) else {
        return "the device ends inside it (truncated)".into();
    };
    let want = bin[448..480].to_vec();
    all[448..512].fill(0);
    if Sha256::digest(&all)[..] != want[..] {
        return "checksum mismatch (damaged)".into();
    }
    "intact binary header".into()
}

/// The cause, for the error line: the primary's state and the secondary's.
pub fn diagnose(read: &dyn Fn(u64, usize) -> Option<Vec<u8>>) -> String {
    if let Some(b) = read(0, 8) {
        if &b[..6] == MAGIC_1 && b[6..8] == [0, 1] {
            return "a LUKS1 volume: the helper makes and opens only LUKS2".into();
        }
    }
    let primary = copy_state(read, 0, MAGIC_1);
    // The secondary follows the primary's metadata area: its size is in
    // the primary; else each size LUKS2 allows is tried.
    let sized = read(0, 16)
        .filter(|b| &b[..6] == MAGIC_1)
        .map(|b| be_u64(&b, 8))
        .filter(|s| SECONDARY_OFFSETS.contains(s));
    let secondary = match sized {
        Some(off) => copy_state(read, off, MAGIC_2),
        None => SECONDARY_OFFSETS
            .iter()
            .map(|&o| copy_state(read, o, MAGIC_2))
            .find(|s| s != "no LUKS magic" && !s.contains("truncated"))
            .unwrap_or_else(|| "none found".into()),
    };
    if primary.starts_with("intact") && secondary.starts_with("intact") {
        return "both header copies are intact, so its JSON metadata is what libcryptsetup refuses"
            .into();
    }
    format!("primary header: {primary}; secondary: {secondary}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: &[u8; 6], size: u64) -> Vec<u8> {
        let mut b = vec![0u8; size as usize];
        b[..6].copy_from_slice(magic);
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&size.to_be_bytes());
        b[72..78].copy_from_slice(b"sha256");
        let sum = Sha256::digest(&b);
        b[448..480].copy_from_slice(&sum);
        b
    }

    fn reader(img: Vec<u8>) -> impl Fn(u64, usize) -> Option<Vec<u8>> {
        move |o, n| {
            let o = usize::try_from(o).ok()?;
            img.get(o..o.checked_add(n)?).map(<[u8]>::to_vec)
        }
    }

    fn image() -> Vec<u8> {
        let mut img = header(MAGIC_1, 0x4000);
        img.extend(header(MAGIC_2, 0x4000));
        img.resize(1 << 20, 0);
        img
    }

    #[test]
    fn names_each_cause() {
        assert!(diagnose(&reader(image())).contains("JSON metadata"));
        let mut img = image();
        img[100] ^= 1;
        img[0x4000 + 100] ^= 1;
        let d = diagnose(&reader(img));
        assert_eq!(
            d,
            "primary header: checksum mismatch (damaged); secondary: checksum mismatch (damaged)"
        );
        let mut img = image();
        img[6..8].copy_from_slice(&[0, 1]);
        assert!(diagnose(&reader(img)).contains("LUKS1"));
        let mut img = image();
        img[6..8].copy_from_slice(&[0, 3]);
        assert!(diagnose(&reader(img)).contains("LUKS version 3"));
        let d = diagnose(&reader(image()[..8192].to_vec()));
        assert!(
            d.contains("primary header: the device ends inside it"),
            "{d}"
        );
        let mut img = image();
        img[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        let d = diagnose(&reader(img));
        assert!(d.contains("implausible header size"), "{d}");
        assert!(d.contains("secondary: intact"), "{d}");
    }
}
