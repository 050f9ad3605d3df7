//! Growing the last partition of a GPT to the end of a larger disk (a small
//! golden image flashed onto a big disk), with a fresh partition UUID so
//! flashed machines differ.
//!
//! `plan_edit` is pure. `write_grow` writes in a crash-safe order: the new
//! backup entries and header first (into space no table uses yet), then a
//! durable barrier (`Barrier::barrier`: fdatasync, which on a block device
//! also flushes the drive's write cache), then the primary entries and
//! header, then another barrier. A power cut before the first barrier
//! completes leaves the old primary in force and the next boot edits again;
//! a cut during the primary write leaves a primary with a bad CRC (or an
//! intact old header whose entries no longer match), and the reader falls
//! back to a backup with its own entries: the old one through the old
//! header's AlternateLBA, or the new one at the disk's last LBA. Either way
//! the table is the old or the new one, never a mix, and the next boot's
//! edit converges (`tests::every_cut_converges` replays every cut).

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

/// A device whose writes up to now can be made durable before later ones.
pub trait Barrier: Read + Write + Seek {
    fn barrier(&mut self) -> io::Result<()>;
}

impl Barrier for std::fs::File {
    fn barrier(&mut self) -> io::Result<()> {
        self.sync_data()
    }
}

/// In-memory images (tests) are durable as soon as they are written.
impl Barrier for std::io::Cursor<Vec<u8>> {
    fn barrier(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrowError {
    #[error("the disk is too small for its partition table")]
    TooSmall,
    #[error("the primary GPT header puts the backup table at LBA {0}, inside the usable area or past the disk's end")]
    BadBackupLocation(u64),
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
        let disk_last = (dev_size / ss).checked_sub(1).ok_or(GrowError::TooSmall)?;
        let last_usable = disk_last
            .checked_sub(entries_sectors(gpt) + 1)
            .ok_or(GrowError::TooSmall)?;
        let align = (ALIGN_BYTES / ss).max(1);
        let new_last = ((last_usable + 1) / align * align)
            .checked_sub(1)
            .ok_or(GrowError::TooSmall)?;
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
        // Never write a table anywhere but past the usable area, on the disk.
        let fits = backup > gpt.last_usable_lba
            && backup < dev_size / ss
            && backup.checked_sub(entries_sectors(gpt)) > Some(gpt.last_usable_lba);
        if !fits {
            return Err(GrowError::BadBackupLocation(backup));
        }
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
pub(crate) fn write_backup<F: Barrier>(f: &mut F, gpt: &Gpt, g: &Grow) -> io::Result<()> {
    let ss = gpt.sector_size;
    let entries = grown_entries(gpt, g);
    let crc = crc32fast::hash(&entries);
    // plan_edit put the backup past the usable area, entries included.
    let entries_lba = g.disk_last_lba.saturating_sub(entries_sectors(gpt));
    write_at(f, entries_lba * ss, &entries)?;
    write_at(
        f,
        g.disk_last_lba * ss,
        &header(gpt, g, g.disk_last_lba, 1, entries_lba, crc),
    )?;
    f.barrier()
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
pub(crate) fn write_primary<F: Barrier>(f: &mut F, gpt: &Gpt, g: &Grow) -> io::Result<()> {
    let ss = gpt.sector_size;
    let entries = grown_entries(gpt, g);
    let crc = crc32fast::hash(&entries);
    let lba = gpt.raw.primary_entries_lba;
    write_at(f, lba * ss, &entries)?;
    write_at(f, ss, &header(gpt, g, 1, g.disk_last_lba, lba, crc))?;
    fix_protective_mbr(f, g.disk_last_lba)?;
    f.barrier()
}

/// Writes the edited table, durably, backup first. The caller makes the
/// kernel see the new size (that is `sys/` work).
pub fn write_grow<F: Barrier>(f: &mut F, gpt: &Gpt, g: &Grow) -> io::Result<()> {
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

    /// The first boot's edit (what `sys::disk_write::edit_entry` asks for):
    /// grown, a fresh UUID, the entry's attributes kept.
    fn grow_plan(t: &Gpt, size: u64, n: u32) -> Result<Option<Grow>, GrowError> {
        let attrs = t
            .partitions
            .iter()
            .find(|p| p.number == n)
            .map_or(0, |p| p.attributes);
        plan_edit(t, size, n, true, Some(NEW_UUID), attrs)
    }

    fn grow_once(c: &mut Cursor<Vec<u8>>) -> Grow {
        let t = gpt::read(c).unwrap();
        let size = c.get_ref().len() as u64;
        let g = grow_plan(&t, size, 2).unwrap().unwrap();
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
        let attrs = t.partitions[1].attributes;
        assert_eq!(plan_edit(&t, size, 2, true, None, attrs).unwrap(), None);
    }

    #[test]
    fn a_power_cut_after_the_backup_write_converges() {
        let mut c = flashed();
        let t = gpt::read(&mut c).unwrap();
        let size = c.get_ref().len() as u64;
        let g = grow_plan(&t, size, 2).unwrap().unwrap();
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
        assert_eq!(grow_plan(&t, 1 << 25, 1), Err(GrowError::NotLast(1)));
        assert_eq!(
            grow_plan(&t, 1 << 25, 9),
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
        let g = grow_plan(&t, 1 << 30, 2).unwrap().unwrap();
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

    /// A device that records every write (split at sector boundaries: a
    /// sector is what a drive writes atomically, or tears) and barrier.
    struct Recorder {
        img: Cursor<Vec<u8>>,
        log: Log,
    }

    impl Read for Recorder {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.img.read(b)
        }
    }
    impl Seek for Recorder {
        fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
            self.img.seek(p)
        }
    }
    impl Write for Recorder {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let at = self.img.position();
            let room = (SS - at % SS) as usize;
            let n = b.len().min(room);
            self.log.push(Some((at, b[..n].to_vec())));
            self.img.write(&b[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Barrier for Recorder {
        fn barrier(&mut self) -> io::Result<()> {
            self.log.push(None);
            Ok(())
        }
    }

    type Edit = fn(&Gpt, u64) -> Option<Grow>;
    /// The recorded writes; `None` is a barrier.
    type Log = Vec<Option<(u64, Vec<u8>)>>;

    /// Runs `edit` on `img`, returning the image after it and its writes.
    fn record(img: &[u8], edit: Edit) -> (Vec<u8>, Log) {
        let mut r = Recorder {
            img: Cursor::new(img.to_vec()),
            log: Vec::new(),
        };
        let t = gpt::read(&mut r.img).unwrap();
        let g = edit(&t, img.len() as u64).unwrap();
        write_grow(&mut r, &t, &g).unwrap();
        (r.img.into_inner(), r.log)
    }

    fn apply(img: &mut [u8], w: &(u64, Vec<u8>), upto: usize) {
        let at = w.0 as usize;
        img[at..at + upto].copy_from_slice(&w.1[..upto]);
    }

    /// Every state a power cut can leave: each prefix of the writes in issue
    /// order, each of them with the next sector torn in half, and, since a
    /// drive may reorder writes between barriers, each suffix of every
    /// barrier-delimited group after the groups before it.
    fn cut_states(old: &[u8], log: &[Option<(u64, Vec<u8>)>], check: &mut dyn FnMut(&[u8])) {
        let writes: Vec<&(u64, Vec<u8>)> = log.iter().flatten().collect();
        let mut img = old.to_vec();
        for w in &writes {
            check(&img);
            let keep = img[w.0 as usize..][..w.1.len()].to_vec();
            apply(&mut img, w, w.1.len() / 2);
            check(&img);
            apply(&mut img, &(w.0, keep), w.1.len());
            apply(&mut img, w, w.1.len());
        }
        check(&img);
        let mut done = old.to_vec();
        for group in log.split(Option::is_none) {
            let group: Vec<&(u64, Vec<u8>)> = group.iter().flatten().collect();
            for start in 1..group.len() {
                let mut s = done.clone();
                group[start..]
                    .iter()
                    .for_each(|w| apply(&mut s, w, w.1.len()));
                check(&s);
            }
            group.iter().for_each(|w| apply(&mut done, w, w.1.len()));
        }
    }

    fn same_table(a: &Gpt, b: &Gpt) -> bool {
        a.partitions == b.partitions && a.last_usable_lba == b.last_usable_lba
    }

    /// Replays every cut of `edit` on `old` (see `cut_states`): the reader
    /// sees the old or the new table, never an error or a mix, and running
    /// the edit again (the next boot) converges on the new table with both
    /// headers intact. Returns the number of cut states checked.
    fn every_cut_converges_for(old: &[u8], edit: Edit) -> usize {
        let before = gpt::read(&mut Cursor::new(old.to_vec())).unwrap();
        let (new_img, log) = record(old, edit);
        assert!(
            log.iter().filter(|w| w.is_none()).count() >= 2,
            "two barriers"
        );
        let after = gpt::read(&mut Cursor::new(new_img)).unwrap();
        let mut n = 0;
        cut_states(old, &log, &mut |s| {
            n += 1;
            let mut c = Cursor::new(s.to_vec());
            let t = gpt::read(&mut c).unwrap_or_else(|e| panic!("cut {n}: {e}"));
            assert!(
                same_table(&t, &before) || same_table(&t, &after),
                "cut {n}: a mixed table"
            );
            if let Some(g) = edit(&t, s.len() as u64) {
                write_grow(&mut c, &t, &g).unwrap();
            }
            let t = gpt::read(&mut c).unwrap();
            assert!(same_table(&t, &after), "cut {n}: did not converge");
            assert!(!t.used_backup, "cut {n}: the primary was not repaired");
            // The backup alone describes the converged table too.
            c.get_mut()[SS as usize..2 * SS as usize].fill(0);
            let b = gpt::read(&mut c).unwrap();
            assert!(b.used_backup && same_table(&b, &after), "cut {n}: backup");
        });
        n
    }

    #[test]
    fn every_cut_converges() {
        fn first_boot(t: &Gpt, size: u64) -> Option<Grow> {
            plan_edit(t, size, 2, true, Some(NEW_UUID), 1 << 55).unwrap()
        }
        fn clear_mark(t: &Gpt, size: u64) -> Option<Grow> {
            plan_edit(t, size, 2, false, None, 0).unwrap()
        }
        let old = flashed().into_inner();
        let n1 = every_cut_converges_for(&old, first_boot);
        let (marked, _) = record(&old, first_boot);
        let n2 = every_cut_converges_for(&marked, clear_mark);
        assert!(n1 > 100 && n2 > 100, "{n1} and {n2} cut states");
        eprintln!("every_cut_converges: {n1} + {n2} cut states");
    }
}
