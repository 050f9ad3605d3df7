//! Growing the last partition of a GPT to the end of a larger disk (a small
//! golden image flashed onto a big disk), with a fresh partition UUID so
//! flashed machines differ.
//!
//! `plan_grow` is pure. `write_grow` writes in a crash-safe order: the new
//! backup entries and header first (into space no table uses yet), then the
//! primary entries and header. A power cut before the primary write leaves
//! the old primary in force and the next boot grows again; a cut during it
//! leaves a primary with a bad CRC, and the reader falls back to the new
//! backup at the disk's last LBA, which already describes the grown table.

use crate::gpt::Gpt;
use crate::guid::Guid;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Partition ends are aligned to 1 MiB, as partitioning tools do.
const ALIGN_BYTES: u64 = 1 << 20;
/// Offsets of the header fields we rewrite.
const HDR_CRC: usize = 16;
const HDR_CURRENT: usize = 24;
const HDR_ALTERNATE: usize = 32;
const HDR_LAST_USABLE: usize = 48;
const HDR_ENTRIES_LBA: usize = 72;
const HDR_ENTRIES_CRC: usize = 88;
/// Offsets inside a partition entry.
const ENT_UUID: usize = 16;
const ENT_LAST_LBA: usize = 40;
const ENT_ATTRS: usize = 48;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrowError {
    #[error("partition {0} is not in the table")]
    NoSuchPartition(u32),
    #[error("partition {0} is not the last partition on the disk; only the last one can grow")]
    NotLast(u32),
}

/// What a grow changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grow {
    pub number: u32,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
    pub new_uuid: Guid,
    /// The entry's attribute bits after the edit.
    pub attributes: u64,
    /// The disk's last LBA: where the backup header goes.
    pub disk_last_lba: u64,
    pub new_last_usable_lba: u64,
}

fn entries_sectors(gpt: &Gpt) -> u64 {
    (gpt.raw.entries.len() as u64).div_ceil(gpt.sector_size)
}

/// What growing partition `number` to the end of a `dev_size`-byte disk
/// would change; `None` when it already ends there (idempotent).
/// (The boot path uses `plan_edit`, which also sets the in-progress bit.)
#[cfg(test)]
pub fn plan_grow(
    gpt: &Gpt,
    dev_size: u64,
    number: u32,
    new_uuid: Guid,
) -> Result<Option<Grow>, GrowError> {
    let attrs = entry(gpt, number)?.attributes;
    let g = plan_edit(gpt, dev_size, number, true, Some(new_uuid), attrs)?;
    // A fresh UUID alone is no reason to rewrite a grown table.
    Ok(g.filter(|g| {
        g.new_last_lba != g.old_last_lba || g.disk_last_lba != gpt.alternate_lba || gpt.used_backup
    }))
}

fn entry(gpt: &Gpt, number: u32) -> Result<&crate::gpt::Partition, GrowError> {
    gpt.partitions
        .iter()
        .find(|p| p.number == number)
        .ok_or(GrowError::NoSuchPartition(number))
}

/// An edit of entry `number`: grown to the disk's end (when `grow`), a new
/// UUID (when given) and new attribute bits. `None` when the entry and the
/// table position already are as asked (idempotent).
pub fn plan_edit(
    gpt: &Gpt,
    dev_size: u64,
    number: u32,
    grow: bool,
    new_uuid: Option<Guid>,
    attributes: u64,
) -> Result<Option<Grow>, GrowError> {
    let p = entry(gpt, number)?;
    let ss = gpt.sector_size;
    let (disk_last, last_usable, new_last) = if grow {
        if gpt.partitions.iter().any(|o| o.first_lba > p.first_lba) {
            return Err(GrowError::NotLast(number));
        }
        let disk_last = dev_size / ss - 1;
        let last_usable = disk_last - entries_sectors(gpt) - 1;
        let align = (ALIGN_BYTES / ss).max(1);
        let new_last = (last_usable + 1) / align * align - 1;
        (disk_last, last_usable, new_last.max(p.last_lba))
    } else {
        // The backup stays where it is (its header's own LBA).
        let at = if gpt.used_backup {
            HDR_CURRENT
        } else {
            HDR_ALTERNATE
        };
        let backup = gpt
            .raw
            .header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(gpt.alternate_lba);
        (backup, gpt.last_usable_lba, p.last_lba)
    };
    let uuid = new_uuid.unwrap_or(p.uuid);
    let unchanged = new_last == p.last_lba
        && uuid == p.uuid
        && attributes == p.attributes
        && disk_last == gpt.alternate_lba
        && !gpt.used_backup;
    if unchanged {
        return Ok(None);
    }
    Ok(Some(Grow {
        number,
        old_last_lba: p.last_lba,
        new_last_lba: new_last,
        new_uuid: uuid,
        attributes,
        disk_last_lba: disk_last,
        new_last_usable_lba: last_usable,
    }))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn grown_entries(gpt: &Gpt, g: &Grow) -> Vec<u8> {
    let mut e = gpt.raw.entries.clone();
    let size = gpt.raw.entry_size as usize;
    let at = (g.number as usize - 1) * size;
    put_u64(&mut e, at + ENT_LAST_LBA, g.new_last_lba);
    put_u64(&mut e, at + ENT_ATTRS, g.attributes);
    e[at + ENT_UUID..at + ENT_UUID + 16].copy_from_slice(&g.new_uuid.to_gpt_bytes());
    e
}

/// A header for the table at `current` (1 or the last LBA), CRCs filled in.
fn header(
    gpt: &Gpt,
    g: &Grow,
    current: u64,
    alternate: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = gpt.raw.header.clone();
    put_u64(&mut h, HDR_CURRENT, current);
    put_u64(&mut h, HDR_ALTERNATE, alternate);
    put_u64(&mut h, HDR_LAST_USABLE, g.new_last_usable_lba);
    put_u64(&mut h, HDR_ENTRIES_LBA, entries_lba);
    put_u32(&mut h, HDR_ENTRIES_CRC, entries_crc);
    put_u32(&mut h, HDR_CRC, 0);
    let crc = crc32fast::hash(&h);
    put_u32(&mut h, HDR_CRC, crc);
    h
}

fn write_at<F: Write + Seek>(f: &mut F, off: u64, data: &[u8]) -> io::Result<()> {
    f.seek(SeekFrom::Start(off))?;
    f.write_all(data)
}

/// The new backup table at the disk's end (step 1 of 2).
pub(crate) fn write_backup<F: Write + Seek>(f: &mut F, gpt: &Gpt, g: &Grow) -> io::Result<()> {
    let ss = gpt.sector_size;
    let entries = grown_entries(gpt, g);
    let crc = crc32fast::hash(&entries);
    let entries_lba = g.disk_last_lba - entries_sectors(gpt);
    write_at(f, entries_lba * ss, &entries)?;
    write_at(
        f,
        g.disk_last_lba * ss,
        &header(gpt, g, g.disk_last_lba, 1, entries_lba, crc),
    )?;
    f.flush()
}

/// The protective MBR's one partition (type 0xEE) covers the disk: after a
/// move of the backup header, its size must follow (fdisk warns otherwise).
fn fix_protective_mbr<F: Read + Write + Seek>(f: &mut F, disk_last_lba: u64) -> io::Result<()> {
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE {
        return Ok(()); // hybrid or no MBR: not ours to touch
    }
    let size = disk_last_lba.min(u32::MAX as u64) as u32;
    write_at(f, 446 + 12, &size.to_le_bytes())
}

/// The primary table (step 2 of 2).
pub(crate) fn write_primary<F: Read + Write + Seek>(
    f: &mut F,
    gpt: &Gpt,
    g: &Grow,
) -> io::Result<()> {
    let ss = gpt.sector_size;
    let entries = grown_entries(gpt, g);
    let crc = crc32fast::hash(&entries);
    let lba = gpt.raw.primary_entries_lba;
    write_at(f, lba * ss, &entries)?;
    write_at(f, ss, &header(gpt, g, 1, g.disk_last_lba, lba, crc))?;
    fix_protective_mbr(f, g.disk_last_lba)?;
    f.flush()
}

/// Writes the grown table. The caller syncs the device afterwards and makes
/// the kernel re-read the partition (that is `sys/` work).
pub fn write_grow<F: Read + Write + Seek>(f: &mut F, gpt: &Gpt, g: &Grow) -> io::Result<()> {
    write_backup(f, gpt, g)?;
    write_primary(f, gpt, g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps;
    use crate::gpt::{self, tests::image};
    use std::io::Cursor;

    const SS: u64 = 512;
    const NEW_UUID: Guid = Guid::from_bytes([0x42; 16]);

    /// An 8 MiB image (root 1-2 MiB, data 2-3 MiB) "flashed" onto a 32 MiB disk.
    fn flashed() -> Cursor<Vec<u8>> {
        let mut img = image(
            &[
                (
                    dps::ROOT_X86_64,
                    Guid::from_bytes([1; 16]),
                    2048,
                    4095,
                    "root_1",
                ),
                (dps::VAR, Guid::from_bytes([2; 16]), 4096, 6143, "data"),
            ],
            16384,
        );
        img.resize(65536 * SS as usize, 0);
        Cursor::new(img)
    }

    fn grow_once(c: &mut Cursor<Vec<u8>>) -> Grow {
        let t = gpt::read(c).unwrap();
        let size = c.get_ref().len() as u64;
        let g = plan_grow(&t, size, 2, NEW_UUID).unwrap().unwrap();
        write_grow(c, &t, &g).unwrap();
        g
    }

    #[test]
    fn grows_to_the_aligned_end_with_a_new_uuid() {
        let mut c = flashed();
        let g = grow_once(&mut c);
        assert_eq!(g.disk_last_lba, 65535);
        assert_eq!(
            g.new_last_lba, 63487,
            "1 MiB aligned, before the backup entries"
        );
        let t = gpt::read(&mut c).unwrap();
        assert!(!t.used_backup);
        assert_eq!(t.alternate_lba, 65535);
        assert_eq!(t.last_usable_lba, 65535 - 32 - 1);
        let d = &t.partitions[1];
        assert_eq!(
            (d.last_lba, d.uuid, d.label.as_str()),
            (63487, NEW_UUID, "data")
        );
        assert_eq!(
            t.partitions[0].uuid,
            Guid::from_bytes([1; 16]),
            "other entries kept"
        );
    }

    #[test]
    fn the_backup_alone_describes_the_grown_table() {
        let mut c = flashed();
        grow_once(&mut c);
        c.get_mut()[SS as usize + 30] ^= 0xff; // break the primary header
        let t = gpt::read(&mut c).unwrap();
        assert!(t.used_backup);
        assert_eq!(t.partitions[1].last_lba, 63487);
    }

    #[test]
    fn growing_again_is_a_no_op() {
        let mut c = flashed();
        grow_once(&mut c);
        let t = gpt::read(&mut c).unwrap();
        let size = c.get_ref().len() as u64;
        assert_eq!(plan_grow(&t, size, 2, NEW_UUID).unwrap(), None);
    }

    #[test]
    fn a_power_cut_after_the_backup_write_converges() {
        let mut c = flashed();
        let t = gpt::read(&mut c).unwrap();
        let size = c.get_ref().len() as u64;
        let g = plan_grow(&t, size, 2, NEW_UUID).unwrap().unwrap();
        write_backup(&mut c, &t, &g).unwrap(); // ... and the power goes
        let t = gpt::read(&mut c).unwrap();
        assert_eq!(t.partitions[1].last_lba, 6143, "old primary still in force");
        grow_once(&mut c);
        assert_eq!(gpt::read(&mut c).unwrap().partitions[1].last_lba, 63487);
    }

    #[test]
    fn attribute_edits_keep_size_and_table_position() {
        let mut c = flashed();
        let t = gpt::read(&mut c).unwrap();
        let size = c.get_ref().len() as u64;
        let g = plan_edit(&t, size, 2, false, None, 1 << 55)
            .unwrap()
            .unwrap();
        write_grow(&mut c, &t, &g).unwrap();
        let t2 = gpt::read(&mut c).unwrap();
        assert_eq!(t2.partitions[1].attributes, 1 << 55);
        assert_eq!(t2.partitions[1].last_lba, 6143);
        assert_eq!(t2.alternate_lba, t.alternate_lba, "backup not moved");
        assert_eq!(t2.partitions[1].uuid, Guid::from_bytes([2; 16]));
        assert_eq!(plan_edit(&t2, size, 2, false, None, 1 << 55).unwrap(), None);
        // Grow + fresh UUID + flag in one write, then clear the flag.
        let g = plan_edit(&t2, size, 2, true, Some(NEW_UUID), 1 << 55)
            .unwrap()
            .unwrap();
        write_grow(&mut c, &t2, &g).unwrap();
        let t3 = gpt::read(&mut c).unwrap();
        assert_eq!(
            (t3.partitions[1].last_lba, t3.partitions[1].uuid),
            (63487, NEW_UUID)
        );
        let g = plan_edit(&t3, size, 2, true, None, 0).unwrap().unwrap();
        write_grow(&mut c, &t3, &g).unwrap();
        let t4 = gpt::read(&mut c).unwrap();
        assert_eq!(t4.partitions[1].attributes, 0);
        assert_eq!(t4.alternate_lba, 65535);
    }

    #[test]
    fn only_the_last_partition_grows() {
        let mut c = flashed();
        let t = gpt::read(&mut c).unwrap();
        assert_eq!(
            plan_grow(&t, 1 << 25, 1, NEW_UUID),
            Err(GrowError::NotLast(1))
        );
        assert_eq!(
            plan_grow(&t, 1 << 25, 9, NEW_UUID),
            Err(GrowError::NoSuchPartition(9))
        );
    }

    /// sfdisk (util-linux) must accept what we write: a sparse file
    /// partitioned by sfdisk, enlarged, grown by us, verified by sfdisk.
    #[test]
    fn sfdisk_accepts_the_grown_table() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut child = Command::new("sfdisk")
            .args(["-q", "--no-reread", "--no-tell-kernel"])
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .expect("sfdisk (util-linux fdisk package) is needed by this test");
        let script = format!(
            "label: gpt\nsize=16MiB, type={}, name=root_1\nsize=8MiB, type={}, name=data\n",
            dps::ROOT_X86_64,
            dps::VAR
        );
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        f.set_len(1 << 30).unwrap(); // flashed onto a 1 GiB disk
        let mut rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let t = gpt::read(&mut rw).unwrap();
        let g = plan_grow(&t, 1 << 30, 2, NEW_UUID).unwrap().unwrap();
        write_grow(&mut rw, &t, &g).unwrap();
        drop(rw);
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(!text.to_lowercase().contains("problem"), "{text}");
        assert!(!text.contains("PMBR size mismatch"), "{text}");
        let dump = Command::new("sfdisk")
            .arg("-d")
            .arg(&path)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.contains(&format!("uuid={}", NEW_UUID.to_string().to_uppercase())),
            "{dump}"
        );
        assert!(dump.contains("last-lba: 2097118"), "{dump}");
    }
}
