//! The writes of first-boot provisioning on the boot disk: editing the data
//! partition's GPT entry (and telling the kernel its new size), wiping the
//! start of the partition, mkfs. Each is called only for a partition the
//! planner proved blank, marked in progress by us, or asked to reset.

use crate::gpt;
use crate::gpt_grow::{self, Grow};
use crate::guid::Guid;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long udev gets to show the grown partition under its new UUID.
const UDEV_WAIT: Duration = Duration::from_secs(5);

fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(p)
}

/// What an entry edit did, for the log.
pub struct Edited {
    pub grew_to: Option<u64>,
    pub uuid: Guid,
}

/// Edits entry `number` (see `gpt_grow::plan_edit`), syncs, and makes the
/// kernel see a new size. `None`: nothing needed changing.
pub fn edit_entry(
    disk: &Path,
    number: u32,
    grow: bool,
    new_uuid: Option<Guid>,
    set: u64,
    clear: u64,
) -> anyhow::Result<Option<Edited>> {
    use anyhow::Context;
    let mut f = open_rw(disk).with_context(|| format!("opening {}", disk.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    let sysname = disk.file_name().map(|n| n.to_string_lossy().into_owned());
    let table = match sysname.and_then(|n| super::block::logical_sector_size(Path::new("/"), &n)) {
        Some(ss) => gpt::read_sized(&mut f, ss),
        None => gpt::read(&mut f),
    }
    .with_context(|| format!("reading the GPT of {}", disk.display()))?;
    let p = table
        .partitions
        .iter()
        .find(|p| p.number == number)
        .with_context(|| format!("partition {number} vanished from {}", disk.display()))?;
    let (attrs, first_lba) = ((p.attributes | set) & !clear, p.first_lba);
    let Some(g) = gpt_grow::plan_edit(&table, size, number, grow, new_uuid, attrs)? else {
        return Ok(None);
    };
    gpt_grow::write_grow(&mut f, &table, &g)?;
    f.sync_all().context("syncing the partition table")?;
    let ss = table.sector_size;
    let grew_to =
        (g.new_last_lba != g.old_last_lba).then(|| resize_kernel(disk, ss, first_lba, &g));
    let grew_to = grew_to.transpose()?;
    Ok(Some(Edited {
        grew_to,
        uuid: g.new_uuid,
    }))
}

fn resize_kernel(disk: &Path, ss: u64, first_lba: u64, g: &Grow) -> anyhow::Result<u64> {
    use anyhow::Context;
    let len = (g.new_last_lba + 1 - first_lba) * ss;
    super::blkpg::resize_partition(disk, g.number, first_lba * ss, len)
        .context("telling the kernel the partition's new size (BLKPG_RESIZE_PARTITION)")?;
    Ok(len)
}

/// Asks udev to re-probe partition `sysname` (its by-partuuid link follows
/// the new UUID) and waits, bounded, for that link (when udev runs). A late udev is only
/// worth a warning: the helper itself addresses the partition by its node.
pub fn udev_refresh(sysname: &str, uuid: &Guid) -> bool {
    // No udev (PID-1 mode): no links to wait for, nobody to warn.
    if !Path::new("/run/udev/control").exists() {
        return true;
    }
    let _ = std::fs::write(format!("/sys/class/block/{sysname}/uevent"), "change");
    let link = format!("/dev/disk/by-partuuid/{uuid}");
    let t = Instant::now();
    while t.elapsed() < UDEV_WAIT {
        if Path::new(&link).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Zeroes the first `len` bytes of `dev` and syncs: with a LUKS header this
/// destroys every keyslot, so the volume key and all data are gone for good.
pub fn wipe_start(dev: &Path, len: u64) -> io::Result<()> {
    let mut f = open_rw(dev)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// mkfs.ext4 from the initrd. `lazy_*_init`: the kernel initialises inode
/// tables in the background, so a 256 GiB volume formats in about a second.
pub fn mkfs_ext4(dev: &Path, extra: &[String]) -> anyhow::Result<()> {
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        ])
        .args(extra)
        .arg(dev)
        .output()
        .map_err(|e| anyhow::anyhow!("running mkfs.ext4: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "mkfs.ext4 {} failed ({}): {}",
            dev.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
