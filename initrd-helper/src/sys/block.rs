//! Block device discovery from sysfs, and disk facts from a device or an
//! image file. Reads only: nothing here opens a device for writing.

use crate::facts::{probe_fs, DiskFacts, FsKind, PartitionFacts, PROBE_LEN};
use crate::gpt;
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

/// Whole disks the kernel knows now, with their tables and partitions.
pub fn scan(root: &Path) -> Vec<DiskFacts> {
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
            let nodes = partition_nodes(root, &class.join(&n));
            read_disk(n.clone(), root.join("dev").join(&n), true, |num| {
                nodes.get(&num).cloned()
            })
        })
        .collect()
}

/// Facts for a disk image file: partition "devices" are the image itself.
pub fn disk_from_image(path: &Path) -> DiskFacts {
    // Partitions of an image have no device node: they are named IMAGE#N.
    let p = path.to_path_buf();
    read_disk(path.display().to_string(), p.clone(), false, |n| {
        Some(PathBuf::from(format!("{}#{n}", p.display())))
    })
}

fn probe_at(f: &mut File, offset: u64) -> Option<FsKind> {
    let mut buf = vec![0u8; PROBE_LEN];
    f.seek(SeekFrom::Start(offset)).ok()?;
    f.read_exact(&mut buf).ok()?;
    probe_fs(&buf)
}

/// `devices`: partitions are real block devices (libcryptsetup can open
/// them), not offsets into an image file.
fn read_disk(
    name: String,
    dev: PathBuf,
    devices: bool,
    node: impl Fn(u32) -> Option<PathBuf>,
) -> DiskFacts {
    let mut facts = DiskFacts {
        name,
        dev: dev.clone(),
        size: 0,
        table: Err(String::new()),
        partitions: Vec::new(),
    };
    let mut f = match File::open(&dev) {
        Ok(f) => f,
        Err(e) => {
            facts.table = Err(format!("opening {}: {e}", dev.display()));
            return facts;
        }
    };
    facts.size = f.seek(SeekFrom::End(0)).unwrap_or(0);
    match gpt::read(&mut f) {
        Ok(t) => {
            for p in &t.partitions {
                // A partition the kernel has not created a node for yet is skipped;
                // the caller's bounded wait rescans.
                let Some(pdev) = node(p.number) else { continue };
                let fs = probe_at(&mut f, p.offset(t.sector_size));
                let luks_uuid = (devices && fs == Some(FsKind::Luks))
                    .then(|| {
                        super::luks::luks2_uuid(&pdev)
                            .map_err(|e| log::debug!("{e}"))
                            .ok()
                    })
                    .flatten();
                facts.partitions.push(PartitionFacts {
                    gpt: p.clone(),
                    dev: pdev,
                    fs,
                    luks_uuid,
                });
            }
            facts.table = Ok(t);
        }
        Err(e) => facts.table = Err(e.to_string()),
    }
    facts
}
