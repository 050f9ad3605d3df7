//! VM boot scenarios with a second disk: a look-alike of the boot disk (the
//! boot-disk decision is deterministic and never writes the other disk),
//! and a hostile GPT (it cannot stop, stall or change the boot).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use vm_tests::{boot, sha256, Artifacts, BootOpts, Scratch, TestDisk, EMERGENCY};

/// The GPT disk GUID of an image, as sfdisk reports it.
fn disk_guid(img: &Path) -> String {
    let out = Command::new("sfdisk").arg("-J").arg(img).output().unwrap();
    assert!(out.status.success(), "sfdisk -J {}", img.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["partitiontable"]["id"].as_str().unwrap().to_lowercase()
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_lookalike_disk_deterministic() {
    let a = Artifacts::from_env();
    let s = Scratch::new("lookalike_disk_deterministic");
    let disk = TestDisk::new(&s, &a);
    // A copy of the golden image (same root slots and partition UUIDs,
    // e.g. a second flashed stick) with a disk GUID of its own.
    let other = s.0.join("lookalike.img");
    std::fs::copy(&disk.path, &other).unwrap();
    let st = Command::new("sfdisk")
        .arg("--disk-id")
        .arg(&other)
        .arg("5f1e0000-0000-4000-8000-00000000c0de")
        // Its "Disk identifier changed" line would split libtest's result line.
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "sfdisk --disk-id");
    let other_digest = sha256(&other);
    let roothash = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let opts = |name, append| BootOpts {
        snapshot: false,
        extra_disk: Some(&other),
        append,
        ..BootOpts::new(name, &disk.path, &s.0)
    };
    // No disk named: two candidates, refused, nothing written anywhere.
    let b = boot(
        &a,
        &BootOpts {
            marker: EMERGENCY,
            ..opts("ambiguous", &roothash)
        },
    );
    b.check_refused(&["several disks carry root partitions", "initrd_helper.disk="]);
    b.check(disk.unchanged(), "the boot disk changed");
    b.check(
        sha256(&other) == other_digest,
        "the look-alike disk changed",
    );
    // Named: that disk boots (and is provisioned); the look-alike stays as it was.
    let named = format!("{roothash} initrd_helper.disk={}", disk_guid(&disk.path));
    let b = boot(&a, &opts("named", &named));
    b.check(b.reached, "the guest report never appeared");
    b.check(
        b.value("data_source") == "/dev/mapper/data",
        "/var is not the boot disk's data volume",
    );
    b.check(
        b.value("data_part").starts_with("/dev/vda"),
        "the data volume is not on the named disk",
    );
    b.check(disk.slots_unchanged(), "the boot disk's slots changed");
    b.check(
        sha256(&other) == other_digest,
        "the look-alike disk changed",
    );
}

/// IEEE CRC-32, bitwise (GPT's checksum), to write a well-formed lie.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A GPT header at `lba` with valid CRCs over whatever it claims.
fn header(
    lba: u64,
    alt: u64,
    entries_lba: u64,
    count: u32,
    size: u32,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&34u64.to_le_bytes());
    h[48..56].copy_from_slice(&(alt.max(lba) - 34).to_le_bytes());
    h[56..72].copy_from_slice(&[0x66; 16]);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&count.to_le_bytes());
    h[84..88].copy_from_slice(&size.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A 64 MiB disk whose primary GPT (valid CRCs) holds a root partition
/// that looks like slot A (same type and partition UUID), overlapping
/// entries and one that ends 1 TiB past the disk; its backup header claims
/// a 4 GiB entry array.
fn hostile_disk(path: &Path, slot_a_uuid: [u8; 16]) {
    let sectors = (64u64 << 20) / 512;
    let last = sectors - 1;
    let mut img = vec![0u8; 64 << 20];
    let root_type: [u8; 16] = [
        0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7,
        0x09,
    ];
    let mut entries = vec![0u8; 128 * 128];
    for (i, (first, last_lba)) in [(2048u64, 40_000u64), (30_000, 50_000), (60_000, 1 << 31)]
        .iter()
        .enumerate()
    {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&root_type);
        e[16..32].copy_from_slice(&slot_a_uuid);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last_lba.to_le_bytes());
    }
    let crc = crc32(&entries);
    img[512..512 + 92].copy_from_slice(&header(1, last, 2, 128, 128, crc));
    img[1024..1024 + entries.len()].copy_from_slice(&entries);
    let b = header(last, 1, last - 32, 1 << 22, 1024, 0);
    let at = (last * 512) as usize;
    img[at..at + 92].copy_from_slice(&b);
    std::fs::write(path, img).unwrap();
}

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_hostile_second_disk() {
    let a = Artifacts::from_env();
    let s = Scratch::new("hostile_second_disk");
    let disk = TestDisk::new(&s, &a);
    let hostile = s.0.join("hostile.img");
    // Slot A's partition UUID: the first 128 bits of its root hash, in
    // GPT's mixed-endian byte order.
    let h = a.roothash("a");
    let mut u: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    u[0..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    hostile_disk(&hostile, u.try_into().unwrap());
    let digest = sha256(&hostile);
    let append = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let b = boot(
        &a,
        &BootOpts {
            snapshot: false,
            extra_disk: Some(&hostile),
            append: &append,
            ..BootOpts::new("hostile", &disk.path, &s.0)
        },
    );
    b.check(b.reached, "the guest report never appeared");
    b.check(
        b.value("helper_unit_failed") == "0",
        "initrd-helper.service failed",
    );
    b.check(
        b.value("data_source") == "/dev/mapper/data",
        "/var is not the data volume",
    );
    b.check(
        b.lines_with("initrd-helper[")
            .iter()
            .all(|l| !l.contains("waiting up to") || !l.contains("vdb")),
        "the helper waited on the hostile disk",
    );
    b.check(sha256(&hostile) == digest, "the hostile disk was written");
    b.check(disk.slots_unchanged(), "the boot disk's slots changed");
    let total = b
        .lines_with("all steps done in")
        .first()
        .cloned()
        .unwrap_or_default();
    b.check(!total.is_empty(), "no 'all steps done' line");
    eprintln!("hostile_second_disk: {}", total.trim());
}
