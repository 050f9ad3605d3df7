//! Block device discovery from sysfs, and disk facts from a device or an
//! image file. Reads only: nothing here opens a device for writing.

use crate::facts::{probe_fs, DiskFacts, FsKind, PartitionFacts, PROBE_LEN};
use crate::gpt;
use crate::guid::Guid;
use crate::sys::blkid::{self, Signature};
use crate::verity_sb::{self, Superblock};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Kernel devices that never hold the boot disk's GPT.
const SKIP_PREFIXES: [&str; 7] = ["loop", "ram", "zram", "sr", "dm-", "md", "nbd"];

fn read_trimmed(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Partition number -> device node, from /sys/class/block/<disk>/<part>/partition.
fn partition_nodes(root: &Path, sys_disk: &Path) -> BTreeMap<u32, PathBuf> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(sys_disk) else {
        return out;
    };
    for e in rd.flatten() {
        let num = read_trimmed(&e.path().join("partition")).and_then(|n| n.parse().ok());
        if let Some(n) = num {
            out.insert(n, root.join("dev").join(e.file_name()));
        }
    }
    out
}

/// The logical sector size the kernel reads `sysname`'s table with, when
/// sysfs says (bounded to the sizes GPT readers know).
pub fn logical_sector_size(root: &Path, sysname: &str) -> Option<u64> {
    let p = root
        .join("sys/class/block")
        .join(sysname)
        .join("queue/logical_block_size");
    read_trimmed(&p)
        .and_then(|s| s.parse().ok())
        .filter(|n| gpt::SECTOR_SIZES.contains(n))
}

/// Whole disks the kernel knows now, with their tables and partitions;
/// partitions of type `probe_type` are also probed by libblkid.
pub fn scan(root: &Path, probe_type: Option<Guid>) -> Vec<DiskFacts> {
    let class = root.join("sys/class/block");
    let Ok(rd) = std::fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !SKIP_PREFIXES.iter().any(|p| n.starts_with(p)))
        .filter(|n| !class.join(n).join("partition").exists())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let node = root.join("dev").join(&n);
            // sysfs shows a disk slightly before devtmpfs has made its node:
            // such a disk is reported as settling, and the decision waits.
            if !node.exists() {
                return settling_disk(n, node);
            }
            let nodes = partition_nodes(root, &class.join(&n));
            let ss = logical_sector_size(root, &n);
            let mut d = read_disk(n.clone(), node, ss, probe_type, |num| {
                nodes
                    .get(&num)
                    .filter(|p| p.exists())
                    .map(|p| (p.clone(), 0, 0))
            });
            // Likewise a disk some of whose partitions have no node yet:
            // planning on part of a table could pick an older root slot,
            // miss the data partition, or miss a look-alike (seen in VM boots).
            d.settling = matches!(&d.table, Ok(t) if d.partitions.len() != t.partitions.len());
            d
        })
        .collect()
}

fn settling_disk(name: String, dev: PathBuf) -> DiskFacts {
    DiskFacts {
        name,
        dev,
        size: 0,
        table: Err("no device node yet".into()),
        partitions: Vec::new(),
        settling: true,
    }
}

/// Facts for a disk image file: partition "devices" are the image itself.
pub fn disk_from_image(path: &Path, probe_type: Option<Guid>) -> DiskFacts {
    // Partitions of an image have no device node: they are named IMAGE#N,
    // and libblkid probes their byte range of the image.
    let p = path.to_path_buf();
    let table = File::open(path)
        .ok()
        .and_then(|mut f| gpt::read(&mut f).ok());
    read_disk(
        path.display().to_string(),
        p.clone(),
        None,
        probe_type,
        |n| {
            let part = table.as_ref()?.partitions.iter().find(|x| x.number == n)?;
            let ss = table.as_ref()?.sector_size;
            Some((
                PathBuf::from(format!("{}#{n}", p.display())),
                part.offset(ss),
                part.size(ss),
            ))
        },
    )
}

/// The file system magic and the verity superblock at `offset`.
type Probed = (Option<FsKind>, Option<Result<Superblock, String>>);

fn probe_at(f: &mut File, offset: u64) -> Probed {
    let mut buf = vec![0u8; PROBE_LEN];
    let read = f
        .seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut buf));
    match read {
        Ok(()) => (probe_fs(&buf), verity_sb::probe(&buf)),
        Err(_) => (None, None),
    }
}

/// libblkid on a partition: its node (`offset`, `len` 0) or its byte range
/// of the disk image `image`.
fn blkid_at(node: &Path, image: &Path, offset: u64, len: u64) -> Result<Signature, String> {
    let r = if len == 0 {
        blkid::probe(node, 0, 0)
    } else {
        blkid::probe(image, offset, len)
    };
    r.map_err(|e| e.to_string())
}

/// `node(n)`: partition n's device node, with its byte range when it is a
/// range of the image file `dev` (0, 0 for a real partition node); `ss`:
/// the device's logical sector size (`None`: an image, either size).
fn read_disk(
    name: String,
    dev: PathBuf,
    ss: Option<u64>,
    probe_type: Option<Guid>,
    node: impl Fn(u32) -> Option<(PathBuf, u64, u64)>,
) -> DiskFacts {
    let mut facts = DiskFacts {
        name,
        dev: dev.clone(),
        size: 0,
        table: Err(String::new()),
        partitions: Vec::new(),
        settling: false,
    };
    let mut f = match File::open(&dev) {
        Ok(f) => f,
        Err(e) => {
            facts.table = Err(format!("opening {}: {e}", dev.display()));
            return facts;
        }
    };
    facts.size = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let table = match ss {
        Some(ss) => gpt::read_sized(&mut f, ss),
        None => gpt::read(&mut f),
    };
    match table {
        Ok(t) => {
            for p in &t.partitions {
                // A partition without a device node yet is skipped; the
                // caller's bounded wait rescans.
                let Some((pdev, off, len)) = node(p.number) else {
                    continue;
                };
                let (fs, verity) = probe_at(&mut f, p.offset(t.sector_size));
                let signature =
                    (Some(p.type_guid) == probe_type).then(|| blkid_at(&pdev, &dev, off, len));
                facts.partitions.push(PartitionFacts {
                    gpt: p.clone(),
                    dev: pdev,
                    fs,
                    verity,
                    signature,
                });
            }
            facts.table = Ok(t);
        }
        Err(e) => facts.table = Err(e.to_string()),
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dps;

    /// A fake root: sysfs entries for vda and vda1, a GPT image as /dev/vda.
    fn fake_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let class = d.path().join("sys/class/block");
        std::fs::create_dir_all(class.join("vda/vda1")).unwrap();
        std::fs::write(class.join("vda/vda1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(class.join("vda1")).unwrap();
        std::fs::write(class.join("vda1/partition"), "1\n").unwrap();
        std::fs::create_dir_all(class.join("loop0")).unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        d
    }

    fn write_disk(root: &Path) {
        let img = crate::gpt::tests::image(
            &[(
                dps::ROOT_X86_64,
                Guid::from_bytes([3; 16]),
                2048,
                4095,
                "os_1",
            )],
            8192,
        );
        std::fs::write(root.join("dev/vda"), img).unwrap();
    }

    #[test]
    fn disks_without_all_partition_nodes_wait_for_the_next_scan() {
        let root = fake_root();
        let d = scan(root.path(), None);
        assert!(d.len() == 1 && d[0].settling, "no /dev/vda yet: settling");
        write_disk(root.path());
        let d = scan(root.path(), None);
        assert!(
            d.len() == 1 && d[0].settling && d[0].partitions.is_empty(),
            "no /dev/vda1 yet: the disk is settling"
        );
        std::fs::write(root.path().join("dev/vda1"), b"").unwrap();
        let disks = scan(root.path(), None);
        assert_eq!(disks.len(), 1, "loop devices are never candidates");
        assert!(!disks[0].settling);
        assert_eq!(disks[0].partitions[0].gpt.label, "os_1");
        assert_eq!(disks[0].partitions[0].dev, root.path().join("dev/vda1"));
    }
}
