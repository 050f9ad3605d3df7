//! GUID Partition Table reader over any `Read + Seek` (a block device or an
//! image file), so the same code runs on sparse files in unit tests.
//!
//! Every field is distrusted: sizes and counts are bounded before they drive
//! an allocation, LBAs are checked against the device, partitions must lie
//! in the usable area without overlapping. The primary table is used when
//! its header and entries are intact; otherwise a backup is looked for at
//! the primary's AlternateLBA (when the primary header itself is intact),
//! then at the device's last LBA. A backup header is only ever used with
//! its own entry array, so two generations of a table (an interrupted
//! rewrite) are never mixed; `used_backup` says a backup was used and the
//! planner decides what that means.

use crate::guid::Guid;
use serde::Serialize;
use std::io::{self, Read, Seek, SeekFrom};

const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: usize = 92;
/// More entries than any partitioning tool writes (they write 128).
const MAX_ENTRIES: u32 = 1024;
/// An entry is 128 * 2^n bytes (UEFI 2.10, 5.3.2); no tool uses over 1 KiB.
const MAX_ENTRY_SIZE: u32 = 1024;
/// Bound on the entry array read (and allocated) per header.
const MAX_ARRAY_BYTES: u64 = 1 << 20;
pub const SECTOR_SIZES: [u64; 2] = [512, 4096];

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT signature (not a GPT disk)")]
    NoGpt,
    #[error(
        "the primary GPT header is damaged ({primary}) and no usable backup was found ({backup})"
    )]
    Damaged {
        primary: &'static str,
        backup: &'static str,
    },
    #[error(
        "the partition table describes {needed} sectors but the disk has only {have}: a truncated \
         image, or an image flashed onto a smaller disk"
    )]
    Truncated { needed: u64, have: u64 },
    #[error(
        "the GPT was written for {found}-byte sectors but this disk has {device}-byte sectors: the \
         kernel and firmware ignore it; build the image for {device}-byte sectors"
    )]
    WrongSectorSize { found: u64, device: u64 },
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
    /// Byte offset; the reader bounded `first_lba` by the disk size.
    pub fn offset(&self, sector_size: u64) -> u64 {
        self.first_lba.saturating_mul(sector_size)
    }
    /// Byte length; the reader checked `first_lba <= last_lba`.
    pub fn size(&self, sector_size: u64) -> u64 {
        (self.last_lba.saturating_sub(self.first_lba) + 1).saturating_mul(sector_size)
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

impl Header {
    fn array_len(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut a = [0u8; 16];
    if let Some(s) = b.get(at..at + 16) {
        a.copy_from_slice(s);
    }
    Guid::from_gpt_bytes(&a)
}

/// Reads `len` bytes at `off`; the callers bound `len` first.
fn read_at<R: Read + Seek>(r: &mut R, off: u64, len: usize) -> io::Result<Vec<u8>> {
    r.seek(SeekFrom::Start(off))?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Why one header (with its entries) is not usable; `None` = no signature.
type Loaded = Result<Option<(Header, Vec<Partition>, Vec<u8>)>, &'static str>;

/// Parses and checks a header block found at `lba` of a disk whose last
/// LBA is `last`; `None` when the signature is absent.
fn parse_header(
    block: &[u8],
    ss: u64,
    lba: u64,
    last: u64,
) -> Result<Option<Header>, &'static str> {
    if block.get(0..8) != Some(&SIGNATURE[..]) {
        return Ok(None);
    }
    let size = le_u32(block, 12) as usize;
    if !(MIN_HEADER_SIZE..=block.len()).contains(&size) {
        return Err("header size out of range");
    }
    let raw = block[..size].to_vec();
    let mut copy = raw.clone();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != le_u32(block, 16) {
        return Err("header CRC mismatch");
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
    check_header(&h, ss, lba, last)?;
    Ok(Some(h))
}

/// The header's own geometry: where it says it is, entry sizes, and an
/// entry array inside the disk and outside the usable area.
fn check_header(h: &Header, ss: u64, lba: u64, last: u64) -> Result<(), &'static str> {
    if h.current_lba != lba {
        return Err("header is not where it says it is (CurrentLBA)");
    }
    let size_ok =
        h.entry_size >= 128 && h.entry_size <= MAX_ENTRY_SIZE && h.entry_size.is_power_of_two();
    if !size_ok || h.num_entries > MAX_ENTRIES || h.array_len() > MAX_ARRAY_BYTES {
        return Err("entry count or size out of range");
    }
    if h.first_usable > h.last_usable || h.first_usable < 2 {
        return Err("usable area is empty or overlaps the header");
    }
    if h.last_usable >= last {
        return Err("usable area extends past the disk's end");
    }
    let sectors = h.array_len().div_ceil(ss).max(1);
    let end = h
        .entries_lba
        .checked_add(sectors)
        .ok_or("entry array LBA overflows")?;
    let inside = h.entries_lba >= 2 && end <= last;
    let clear = end <= h.first_usable || h.entries_lba > h.last_usable;
    if !inside || !clear {
        return Err("entry array outside the disk or inside the usable area");
    }
    Ok(())
}

fn parse_entry(e: &[u8], number: u32) -> Option<Partition> {
    let type_guid = guid_at(e, 0);
    if type_guid.is_nil() {
        return None;
    }
    let units: Vec<u16> = e
        .get(56..128)?
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

/// Every partition in the usable area, none overlapping another.
fn check_entries(h: &Header, parts: &[Partition]) -> Result<(), &'static str> {
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
    for p in parts {
        if p.first_lba > p.last_lba || p.first_lba < h.first_usable || p.last_lba > h.last_usable {
            return Err("a partition lies outside the usable area");
        }
        spans.push((p.first_lba, p.last_lba));
    }
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[1].0 <= w[0].1) {
        return Err("partitions overlap");
    }
    Ok(())
}

fn read_entries<R: Read + Seek>(r: &mut R, h: &Header, ss: u64) -> Loaded {
    let off = h
        .entries_lba
        .checked_mul(ss)
        .ok_or("entry array offset overflows")?;
    // array_len <= MAX_ARRAY_BYTES (check_header): a small allocation.
    let raw = read_at(r, off, h.array_len() as usize).map_err(|_| "entry array unreadable")?;
    if crc32fast::hash(&raw) != h.entries_crc {
        return Err("entry array CRC mismatch");
    }
    let parts: Vec<Partition> = raw
        .chunks(h.entry_size as usize)
        .zip(1u32..)
        .filter_map(|(e, n)| parse_entry(e, n))
        .collect();
    check_entries(h, &parts)?;
    Ok(Some((h.clone(), parts, raw)))
}

/// The header at `lba` with its own entries.
fn load<R: Read + Seek>(r: &mut R, ss: u64, lba: u64, last: u64) -> Loaded {
    let off = lba.checked_mul(ss).ok_or("header offset overflows")?;
    let block = read_at(r, off, ss as usize).map_err(|_| "header unreadable")?;
    match parse_header(&block, ss, lba, last)? {
        Some(h) => read_entries(r, &h, ss),
        None => Ok(None),
    }
}

fn build(
    (h, parts, entries): (Header, Vec<Partition>, Vec<u8>),
    ss: u64,
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

/// The primary header's AlternateLBA when the header itself is intact.
fn primary_alternate<R: Read + Seek>(r: &mut R, ss: u64) -> Option<u64> {
    let block = read_at(r, ss, ss as usize).ok()?;
    if block.get(0..8) != Some(&SIGNATURE[..]) {
        return None;
    }
    let size = (le_u32(&block, 12) as usize).clamp(MIN_HEADER_SIZE, block.len());
    let mut copy = block[..size].to_vec();
    copy[16..20].fill(0);
    (crc32fast::hash(&copy) == le_u32(&block, 16)).then(|| le_u64(&block, 32))
}

/// Reads the table with sector size `ss` from a device of `dev_size`
/// bytes; `None` when neither header location has a signature.
fn read_with<R: Read + Seek>(r: &mut R, ss: u64, dev_size: u64) -> Result<Option<Gpt>, GptError> {
    let last = (dev_size / ss).saturating_sub(1);
    if last < 3 {
        return Ok(None);
    }
    let primary = load(r, ss, 1, last);
    if let Ok(Some(t)) = primary {
        return Ok(Some(build(t, ss, false)));
    }
    let mut spots = Vec::with_capacity(2);
    if let Some(alt) = primary_alternate(r, ss).filter(|&a| a > 1 && a <= last) {
        spots.push(alt);
    }
    if !spots.contains(&last) {
        spots.push(last);
    }
    let mut backup_error = "no backup header";
    for lba in spots {
        match load(r, ss, lba, last) {
            Ok(Some(t)) => return Ok(Some(build(t, ss, true))),
            Ok(None) => {}
            Err(e) => backup_error = e,
        }
    }
    match primary {
        Ok(None) if backup_error == "no backup header" => Ok(None),
        Ok(None) => Err(GptError::Damaged {
            primary: "no primary header",
            backup: backup_error,
        }),
        Err(e) => Err(damaged_or_truncated(r, ss, last, e, backup_error)),
        Ok(Some(_)) => Ok(None), // returned above
    }
}

/// A primary that only fails because the disk ends too early is reported
/// as truncation: that is the real cause, not a damaged table.
fn damaged_or_truncated<R: Read + Seek>(
    r: &mut R,
    ss: u64,
    last: u64,
    primary: &'static str,
    backup: &'static str,
) -> GptError {
    match primary_alternate(r, ss) {
        Some(alt) if alt > last => GptError::Truncated {
            needed: alt.saturating_add(1),
            have: last + 1,
        },
        _ => GptError::Damaged { primary, backup },
    }
}

fn device_size<R: Seek>(r: &mut R) -> io::Result<u64> {
    r.seek(SeekFrom::End(0))
}

/// Reads the GPT of a disk image: either sector size (the file says neither).
pub fn read<R: Read + Seek>(r: &mut R) -> Result<Gpt, GptError> {
    let dev_size = device_size(r)?;
    for ss in SECTOR_SIZES {
        if let Some(g) = read_with(r, ss, dev_size)? {
            return Ok(g);
        }
    }
    Err(GptError::NoGpt)
}

/// Reads the GPT of a block device with logical sector size `ss`, as the
/// kernel and firmware do; a table made for the other size is named as such.
pub fn read_sized<R: Read + Seek>(r: &mut R, ss: u64) -> Result<Gpt, GptError> {
    let dev_size = device_size(r)?;
    if let Some(g) = read_with(r, ss, dev_size)? {
        return Ok(g);
    }
    for other in SECTOR_SIZES.into_iter().filter(|&o| o != ss) {
        if matches!(read_with(r, other, dev_size), Ok(Some(_))) {
            return Err(GptError::WrongSectorSize {
                found: other,
                device: ss,
            });
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
        let e = read(&mut Cursor::new(img)).unwrap_err();
        assert!(matches!(e, GptError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains("header CRC mismatch"), "{e}");
    }

    #[test]
    fn corrupt_entries_everywhere_is_an_error() {
        let mut img = sample();
        let n = img.len();
        img[2 * 512 + 40] ^= 0xff;
        img[n - 33 * 512 + 40] ^= 0xff;
        let e = read(&mut Cursor::new(img)).unwrap_err();
        assert!(e.to_string().contains("entry array CRC mismatch"), "{e}");
    }

    #[test]
    fn blank_disk_is_not_gpt() {
        let r = read(&mut Cursor::new(vec![0u8; 1 << 20]));
        assert!(matches!(r, Err(GptError::NoGpt)));
        let r = read(&mut Cursor::new(vec![0u8; 100]));
        assert!(matches!(r, Err(GptError::NoGpt)));
    }

    /// Edits header field bytes of the header at `lba` (512-byte sectors),
    /// then fixes its CRC: a well-formed lie.
    pub(crate) fn edit_header(img: &mut [u8], lba: usize, f: impl Fn(&mut [u8])) {
        let h = &mut img[lba * 512..lba * 512 + 92];
        f(h);
        h[16..20].fill(0);
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    /// Edits entry `i`'s bytes in both arrays, fixing both headers' CRCs.
    fn edit_entry(img: &mut [u8], i: usize, f: impl Fn(&mut [u8])) {
        let last = img.len() / 512 - 1;
        for (hdr, ent) in [(1, 2), (last, last - 32)] {
            let e = &mut img[ent * 512 + i * 128..ent * 512 + (i + 1) * 128];
            f(e);
            let crc = crc32fast::hash(&img[ent * 512..ent * 512 + 128 * 128]);
            edit_header(img, hdr, |h| h[88..92].copy_from_slice(&crc.to_le_bytes()));
        }
    }

    fn err_text(img: Vec<u8>) -> String {
        read(&mut Cursor::new(img)).unwrap_err().to_string()
    }

    #[test]
    fn a_huge_entry_array_is_refused_before_allocating() {
        let mut img = sample();
        let n = img.len() / 512 - 1;
        for lba in [1, n] {
            // 4 GiB: 2^22 entries of 1 KiB.
            edit_header(&mut img, lba, |h| {
                h[80..84].copy_from_slice(&(1u32 << 22).to_le_bytes());
                h[84..88].copy_from_slice(&1024u32.to_le_bytes());
            });
        }
        assert!(err_text(img).contains("entry count or size"));
        let mut img = sample();
        edit_header(&mut img, 1, |h| {
            h[84..88].copy_from_slice(&200u32.to_le_bytes())
        });
        assert!(
            read(&mut Cursor::new(img)).unwrap().used_backup,
            "odd entry size"
        );
    }

    #[test]
    fn overlapping_and_out_of_disk_entries_are_refused() {
        let t: Guid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".parse().unwrap();
        let u = Guid::from_bytes([1; 16]);
        let img = image(&[(t, u, 2048, 4095, "a"), (t, u, 4000, 5000, "b")], 8192);
        assert!(err_text(img).contains("partitions overlap"));
        let img = image(&[(t, u, 2048, 1u64 << 40, "a")], 8192);
        assert!(err_text(img).contains("outside the usable area"));
        let img = image(&[(t, u, 4095, 2048, "a")], 8192);
        assert!(err_text(img).contains("outside the usable area"));
        let mut img = sample();
        edit_entry(&mut img, 0, |e| {
            e[40..48].copy_from_slice(&u64::MAX.to_le_bytes())
        });
        assert!(err_text(img).contains("outside the usable area"));
    }

    #[test]
    fn a_truncated_image_is_named_as_such() {
        let mut img = sample();
        img.truncate(6000 * 512);
        let e = err_text(img);
        assert!(e.contains("truncated image"), "{e}");
        assert!(e.contains("8192 sectors but the disk has only 6000"), "{e}");
    }

    #[test]
    fn entry_array_lbas_are_checked() {
        let mut img = sample();
        edit_header(&mut img, 1, |h| {
            h[72..80].copy_from_slice(&u64::MAX.to_le_bytes())
        });
        assert!(read(&mut Cursor::new(img.clone())).unwrap().used_backup);
        let n = img.len() / 512 - 1;
        edit_header(&mut img, n, |h| {
            h[72..80].copy_from_slice(&100u64.to_le_bytes())
        });
        assert!(err_text(img).contains("entry array outside the disk or inside the usable area"));
    }

    #[test]
    fn the_backup_is_found_through_the_alternate_lba() {
        // An image copied onto a bigger disk: the backup is not at the last LBA.
        let mut img = sample();
        img.resize(16384 * 512, 0);
        let mut entries = img[2 * 512..34 * 512].to_vec();
        entries[100] ^= 0xff; // primary entries damaged, header intact
        img[2 * 512..34 * 512].copy_from_slice(&entries);
        let g = read(&mut Cursor::new(img)).unwrap();
        assert!(g.used_backup);
        assert_eq!(g.partitions[0].label, "root_1.0");
    }

    #[test]
    fn a_header_elsewhere_than_it_claims_is_refused() {
        let mut img = sample();
        edit_header(&mut img, 1, |h| {
            h[24..32].copy_from_slice(&5u64.to_le_bytes())
        });
        assert!(read(&mut Cursor::new(img)).unwrap().used_backup);
    }

    #[test]
    fn a_512_byte_table_on_a_4k_disk_is_named() {
        let e = read_sized(&mut Cursor::new(sample()), 4096).unwrap_err();
        assert!(
            matches!(
                e,
                GptError::WrongSectorSize {
                    found: 512,
                    device: 4096
                }
            ),
            "{e}"
        );
        assert!(read_sized(&mut Cursor::new(sample()), 512).is_ok());
        assert!(matches!(
            read_sized(&mut Cursor::new(vec![0u8; 1 << 20]), 512),
            Err(GptError::NoGpt)
        ));
    }
}
