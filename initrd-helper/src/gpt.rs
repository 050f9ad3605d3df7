//! GUID Partition Table reader over any `Read + Seek` (a block device or an
//! image file), so the same code runs on sparse files in unit tests.
//!
//! Both CRCs are checked. When the primary header is damaged the backup at
//! the last LBA is used and `used_backup` says so; the planner decides what a
//! damaged table means for safety.

use crate::guid::Guid;
use serde::Serialize;
use std::io::{self, Read, Seek, SeekFrom};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: usize = 92;
const MAX_ENTRIES: u32 = 1024;
const SECTOR_SIZES: [u64; 2] = [512, 4096];

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT signature (not a GPT disk)")]
    NoGpt,
    #[error("GPT header CRC mismatch in both the primary and the backup header")]
    BadHeaders,
    #[error("GPT partition entries CRC mismatch")]
    BadEntries,
    #[error("GPT header is malformed: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number, as the kernel names it (vda2 = 2).
    pub number: u32,
    pub type_guid: Guid,
    pub uuid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub label: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    pub sector_size: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub alternate_lba: u64,
    pub used_backup: bool,
    pub partitions: Vec<Partition>,
    /// The on-disk bytes, kept so a rewrite preserves every field we do not change.
    #[serde(skip)]
    pub raw: RawTable,
}

/// The header and entry array exactly as read (header: its `header_size` bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawTable {
    pub header: Vec<u8>,
    pub entries: Vec<u8>,
    pub entry_size: u32,
    /// Where the primary entry array starts (2 on every disk we build).
    pub primary_entries_lba: u64,
}

impl Partition {
    pub fn offset(&self, sector_size: u64) -> u64 {
        self.first_lba * sector_size
    }
    pub fn size(&self, sector_size: u64) -> u64 {
        (self.last_lba + 1 - self.first_lba) * sector_size
    }
}

#[derive(Clone)]
struct Header {
    current_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Guid,
    entries_lba: u64,
    num_entries: u32,
    entry_size: u32,
    entries_crc: u32,
    raw: Vec<u8>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Guid::from_gpt_bytes(&a)
}

fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: usize) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Parses a header block; `None` when the signature is absent, `Err` when
/// present but damaged.
fn parse_header(block: &[u8]) -> Result<Option<Header>, GptError> {
    if &block[0..8] != SIGNATURE {
        return Ok(None);
    }
    let size = le_u32(block, 12) as usize;
    if !(MIN_HEADER_SIZE..=block.len()).contains(&size) {
        return Err(GptError::Malformed("header size"));
    }
    let raw = block[..size].to_vec();
    let mut copy = raw.clone();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le_u32(block, 16) {
        return Err(GptError::BadHeaders);
    }
    let h = Header {
        current_lba: le_u64(block, 24),
        alternate_lba: le_u64(block, 32),
        first_usable: le_u64(block, 40),
        last_usable: le_u64(block, 48),
        disk_guid: guid_at(block, 56),
        entries_lba: le_u64(block, 72),
        num_entries: le_u32(block, 80),
        entry_size: le_u32(block, 84),
        entries_crc: le_u32(block, 88),
        raw,
    };
    if h.num_entries > MAX_ENTRIES || h.entry_size < 128 || h.entry_size % 8 != 0 {
        return Err(GptError::Malformed("entry count or size"));
    }
    Ok(Some(h))
}

fn parse_entry(e: &[u8], number: u32) -> Option<Partition> {
    let type_guid = guid_at(e, 0);
    if type_guid.is_nil() {
        return None;
    }
    let units: Vec<u16> = e[56..128]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    Some(Partition {
        number,
        type_guid,
        uuid: guid_at(e, 16),
        first_lba: le_u64(e, 32),
        last_lba: le_u64(e, 40),
        attributes: le_u64(e, 48),
        label: String::from_utf16_lossy(&units),
    })
}

fn read_entries<R: Read + Seek>(
    r: &mut R,
    h: &Header,
    ss: u64,
) -> Result<(Vec<Partition>, Vec<u8>), GptError> {
    let len = h.num_entries as usize * h.entry_size as usize;
    let raw = read_at(r, h.entries_lba * ss, len)?;
    if crc32fast::hash(&raw) != h.entries_crc {
        return Err(GptError::BadEntries);
    }
    let parts = raw
        .chunks(h.entry_size as usize)
        .zip(1u32..)
        .filter_map(|(e, n)| parse_entry(e, n))
        .collect();
    Ok((parts, raw))
}

fn build(
    h: Header,
    ss: u64,
    (parts, entries): (Vec<Partition>, Vec<u8>),
    used_backup: bool,
) -> Gpt {
    let raw = RawTable {
        header: h.raw.clone(),
        entries,
        entry_size: h.entry_size,
        primary_entries_lba: if used_backup { 2 } else { h.entries_lba },
    };
    Gpt {
        raw,
        disk_guid: h.disk_guid,
        sector_size: ss,
        first_usable_lba: h.first_usable,
        last_usable_lba: h.last_usable,
        alternate_lba: h.alternate_lba,
        used_backup,
        partitions: parts,
    }
}

/// Reads the table with the given sector size; falls back to the backup
/// header (found via the primary's alternate LBA, else the device's last LBA).
fn read_with<R: Read + Seek>(r: &mut R, ss: u64, dev_size: u64) -> Result<Option<Gpt>, GptError> {
    let primary = parse_header(&read_at(r, ss, ss as usize)?);
    if let Ok(Some(h)) = &primary {
        if h.current_lba == 1 {
            if let Ok(parts) = read_entries(r, h, ss) {
                return Ok(Some(build(h.clone(), ss, parts, false)));
            }
        }
    }
    let last_lba = (dev_size / ss).saturating_sub(1);
    if last_lba < 2 {
        return primary.map(|_| None);
    }
    match parse_header(&read_at(r, last_lba * ss, ss as usize)?) {
        Ok(Some(b)) => {
            let parts = read_entries(r, &b, ss)?;
            Ok(Some(build(b, ss, parts, true)))
        }
        Ok(None) => match primary {
            Ok(None) => Ok(None),
            Ok(Some(_)) => Err(GptError::BadEntries),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Reads the GPT of a whole disk or disk image.
pub fn read<R: Read + Seek>(r: &mut R) -> Result<Gpt, GptError> {
    let dev_size = r.seek(SeekFrom::End(0))?;
    for ss in SECTOR_SIZES {
        if dev_size < ss * 3 {
            continue;
        }
        if let Some(g) = read_with(r, ss, dev_size)? {
            return Ok(g);
        }
    }
    Err(GptError::NoGpt)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Builds a minimal valid GPT image in memory (512-byte sectors).
    pub(crate) fn image(parts: &[(Guid, Guid, u64, u64, &str)], sectors: u64) -> Vec<u8> {
        let ss = 512usize;
        let mut img = vec![0u8; sectors as usize * ss];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (t, u, first, last, label)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&t.to_gpt_bytes());
            e[16..32].copy_from_slice(&u.to_gpt_bytes());
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in label.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        let last = sectors - 1;
        let write_header = |img: &mut Vec<u8>, cur: u64, alt: u64, ent: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(SIGNATURE);
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&cur.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(last - 33).to_le_bytes());
            h[56..72].copy_from_slice(&Guid::from_bytes([7; 16]).to_gpt_bytes());
            h[72..80].copy_from_slice(&ent.to_le_bytes());
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let o = cur as usize * ss;
            img[o..o + 92].copy_from_slice(&h);
            let eo = ent as usize * ss;
            img[eo..eo + entries.len()].copy_from_slice(&entries);
        };
        write_header(&mut img, 1, last, 2);
        write_header(&mut img, last, 1, last - 32);
        img
    }

    fn sample() -> Vec<u8> {
        let t: Guid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".parse().unwrap();
        let u = Guid::from_bytes([1; 16]);
        image(&[(t, u, 2048, 4095, "root_1.0")], 8192)
    }

    #[test]
    fn reads_partitions() {
        let g = read(&mut Cursor::new(sample())).unwrap();
        assert!(!g.used_backup);
        assert_eq!(g.partitions.len(), 1);
        let p = &g.partitions[0];
        assert_eq!((p.number, p.first_lba, p.last_lba), (1, 2048, 4095));
        assert_eq!(p.label, "root_1.0");
        assert_eq!(p.size(512), 2048 * 512);
    }

    #[test]
    fn falls_back_to_backup_header() {
        let mut img = sample();
        img[512 + 30] ^= 0xff; // corrupt the primary header
        let g = read(&mut Cursor::new(img)).unwrap();
        assert!(g.used_backup);
        assert_eq!(g.partitions[0].label, "root_1.0");
    }

    #[test]
    fn both_headers_corrupt_is_an_error() {
        let mut img = sample();
        let n = img.len();
        img[512 + 30] ^= 0xff;
        img[n - 512 + 30] ^= 0xff;
        assert!(matches!(
            read(&mut Cursor::new(img)),
            Err(GptError::BadHeaders)
        ));
    }

    #[test]
    fn corrupt_entries_everywhere_is_an_error() {
        let mut img = sample();
        let n = img.len();
        img[2 * 512 + 40] ^= 0xff;
        img[n - 33 * 512 + 40] ^= 0xff;
        assert!(matches!(
            read(&mut Cursor::new(img)),
            Err(GptError::BadEntries)
        ));
    }

    #[test]
    fn blank_disk_is_not_gpt() {
        let r = read(&mut Cursor::new(vec![0u8; 1 << 20]));
        assert!(matches!(r, Err(GptError::NoGpt)));
        let r = read(&mut Cursor::new(vec![0u8; 100]));
        assert!(matches!(r, Err(GptError::NoGpt)));
    }
}
