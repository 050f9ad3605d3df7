//! The A/B update machine: a boot disk with an ESP (systemd-boot and UKI
//! A), root slot A and a free slot B, updated by systemd-sysupdate in the
//! guest from the payload directory build-image.sh makes, then booted by
//! systemd-boot with boot counting.

use crate::{Artifacts, Scratch};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where build-image.sh starts the ESP (sector 2048), in bytes.
const ESP_OFFSET: u64 = 2048 * 512;

/// The factory disk (slot B "_empty") with the ESP written into partition
/// 1, copied into `s`.
pub fn factory_disk(a: &Artifacts, s: &Scratch) -> PathBuf {
    let disk = s.copy_disk(&a.disk.with_file_name("sysupdate-disk.img"));
    let esp = fs::read(a.disk.with_file_name("esp.img")).unwrap_or_else(|e| panic!("esp.img: {e}"));
    assert!(esp.len() > 1 << 20, "esp.img is {} bytes", esp.len());
    write_at(&disk, ESP_OFFSET, &esp);
    disk
}

/// The version-2 payload directory (slot images and UKI B).
pub fn payload(a: &Artifacts) -> PathBuf {
    let p = a.disk.with_file_name("update");
    let n = fs::read_dir(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .count();
    assert_eq!(n, 3, "{}: expected 3 files", p.display());
    p
}

/// Byte offset of partition `index` (0-based) of the disk image, read
/// from its own table by sfdisk.
pub fn partition_offset(disk: &Path, index: usize) -> u64 {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(disk)
        .output()
        .unwrap_or_else(|e| panic!("sfdisk: {e}"));
    assert!(out.status.success(), "sfdisk -J {} failed", disk.display());
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sfdisk -J: {e}"));
    let start = v["partitiontable"]["partitions"][index]["start"].as_u64();
    start.unwrap_or_else(|| panic!("{}: no partition {index}", disk.display())) * 512
}

/// Overwrites `bytes` at `offset` of `path`, durably.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(bytes))
        .and_then(|_| f.sync_all())
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A second machine that starts where `s` is now: the same disk, TPM
/// state and firmware variables (consoles and sockets left behind).
pub fn fork(s: &Scratch, name: &str) -> Scratch {
    let f = Scratch::new(name);
    for e in fs::read_dir(&s.0).unwrap_or_else(|e| panic!("{}: {e}", s.0.display())) {
        let p = e.unwrap_or_else(|e| panic!("{e}")).path();
        let keep = p.is_file()
            && !matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("console" | "sock" | "log")
            );
        if keep {
            let ok = Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(&p)
                .arg(&f.0)
                .status()
                .is_ok_and(|st| st.success());
            assert!(ok, "copying {} failed", p.display());
        }
    }
    f
}

/// The helper's own error lines on the console (not the report's journal
/// copies), across every boot of one machine run.
pub fn console_errors(b: &crate::Boot) -> Vec<String> {
    b.lines_with("initrd-helper[")
        .into_iter()
        .filter(|l| l.contains("error:") && !l.contains("IHJ "))
        .collect()
}
