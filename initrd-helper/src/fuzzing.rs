//! Fuzz target bodies, one per parser the boot path feeds with outside
//! bytes, shared by the `cargo fuzz` targets (`initrd-helper/fuzz/`,
//! `make fuzz`) and by the unit test that replays the committed corpus on
//! stable Rust in `make test`. Each must return for every input without a
//! panic, an abort or an allocation the input's size does not justify; the
//! asserts are invariants (what the helper writes, it reads back).

use crate::facts::{probe_fs, DiskFacts, Facts, PartitionFacts, TpmFacts};
use crate::sys::blkid::Signature;
use crate::{b64, cmdline, config, gpt, gpt_grow, mountinfo, plan, token, verity, verity_sb};
use std::io::Cursor;
use std::path::PathBuf;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// The targets by name (the fuzz/fuzz_targets file names).
pub const TARGETS: [(&str, Target); 10] = [
    ("cmdline", cmdline_target),
    ("config", config_target),
    ("gpt", gpt_target),
    ("grow", grow_target),
    ("token", token_target),
    ("verity", verity_target),
    ("b64", b64_target),
    ("mountinfo", mountinfo_target),
    ("planner", planner_target),
    ("pcrsig", pcrsig_target),
];

fn text(data: &[u8]) -> &str {
    std::str::from_utf8(data).unwrap_or("")
}

pub fn cmdline_target(data: &[u8]) {
    if let Ok(c) = cmdline::parse(text(data)) {
        let _ = c.factory_reset_request();
    }
}

pub fn config_target(data: &[u8]) {
    let _ = config::parse(text(data), "fuzz.toml");
}

pub fn gpt_target(data: &[u8]) {
    let fixed = with_valid_crcs(data);
    for img in [data, &fixed[..]] {
        let _ = gpt::read(&mut Cursor::new(img));
        for ss in gpt::SECTOR_SIZES {
            let _ = gpt::read_sized(&mut Cursor::new(img), ss);
        }
    }
}

/// `img` with both headers' CRCs (and their entry arrays' CRCs, where the
/// claimed array lies inside the image) made to match: mutated fields then
/// reach the bounds checks instead of stopping at a CRC mismatch.
pub fn with_valid_crcs(img: &[u8]) -> Vec<u8> {
    let mut out = img.to_vec();
    for ss in gpt::SECTOR_SIZES {
        let last = (img.len() / ss as usize).saturating_sub(1);
        for lba in [1, last] {
            fix_header(&mut out, lba * ss as usize, ss as usize);
        }
    }
    out
}

fn fix_header(img: &mut [u8], at: usize, ss: usize) {
    let u32_at = |b: &[u8], o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |b: &[u8], o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]))
    };
    let Some(h) = img.get(at..at + 92) else {
        return;
    };
    if &h[..8] != b"EFI PART" {
        return;
    }
    let (lba, n, size) = (u64_at(h, 72), u32_at(h, 80), u32_at(h, 84));
    if let (Some(lba), Some(n), Some(size)) = (lba, n, size) {
        let start = usize::try_from(lba).ok().and_then(|l| l.checked_mul(ss));
        let len = (n as usize).checked_mul(size as usize);
        if let Some(range) = start
            .zip(len)
            .and_then(|(s, l)| img.get(s..s.checked_add(l)?))
        {
            let crc = crc32fast::hash(range);
            img[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let hs = (u32_at(img, at + 12).unwrap_or(92) as usize).clamp(92, ss);
    if img.len() < at + hs {
        return;
    }
    img[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&img[at..at + hs]);
    img[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

/// The grow planner on a fuzzed table, flashed onto a disk up to 4x the
/// image; a planned edit is written and must read back as planned.
pub fn grow_target(data: &[u8]) {
    let Some((&k, img)) = data.split_last() else {
        return;
    };
    let img = &with_valid_crcs(img)[..];
    let Ok(t) = gpt::read(&mut Cursor::new(img)) else {
        return;
    };
    let size = img.len() as u64 * (1 + u64::from(k % 4));
    for p in &t.partitions {
        for grow in [false, true] {
            let Ok(Some(g)) = gpt_grow::plan_edit(&t, size, p.number, grow, None, 1 << 55) else {
                continue;
            };
            let mut disk = img.to_vec();
            disk.resize(size as usize, 0);
            let mut c = Cursor::new(disk);
            if gpt_grow::write_grow(&mut c, &t, &g).is_ok() {
                let back = gpt::read(&mut c);
                assert!(back.is_ok(), "an edit we wrote does not read back");
            }
        }
    }
}

pub fn token_target(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(t) = token::parse_token(&v) {
            let _ = token::policy_mismatch(&t, &crate::policy::Policy::literal(&[7]));
        }
    }
}

/// A PCR public key file and a signature file (systemd's formats), both
/// from the same bytes: neither parser may panic or allocate unbounded.
pub fn pcrsig_target(data: &[u8]) {
    let _ = crate::pcrsig::parse_public_key_pem(data);
    let _ = crate::pcrsig::find_signature(data, &[11], "00", &[0; 32]);
}

/// Verity options as text, and the same bytes as a hash partition's start.
pub fn verity_target(data: &[u8]) {
    let _ = verity::parse_options(text(data));
    if let Some(Ok(sb)) = verity_sb::probe(data) {
        let _ = sb.mismatch(1 << 30, 1 << 20, 32);
    }
}

/// Decoding never panics, and encoding what was decoded gives it back.
pub fn b64_target(data: &[u8]) {
    if let Ok(d) = b64::decode(text(data)) {
        assert_eq!(b64::decode(&b64::encode(&d)).ok(), Some(d));
    }
}

pub fn mountinfo_target(data: &[u8]) {
    let m = mountinfo::parse(text(data));
    let _ = mountinfo::find(&m, "/sysroot");
}

/// The planner on facts from a fuzzed disk: the first line is the command
/// line, the rest the disk image.
pub fn planner_target(data: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (line, img) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let Ok(cmd) = cmdline::parse(text(line)) else {
        return;
    };
    let facts = Facts {
        disks: vec![disk_facts(&with_valid_crcs(img))],
        tpm: TpmFacts::Present {
            manufacturer: "fuzz".into(),
        },
        data_open: false,
        loader_partuuid: None,
        product_uuid: text(line).get(..36).map(str::to_string),
        pcr_files: Default::default(),
        efi_reset: Default::default(),
        tpm_settled: true,
    };
    let mut cfg = config::Config::default();
    for layout in [config::Layout::Slot, config::Layout::Tmpfs] {
        for unverified in [
            config::Unverified::Refuse,
            config::Unverified::MountReadOnly,
        ] {
            cfg.root.layout = layout;
            cfg.root.unverified = unverified;
            let _ = plan::plan(&facts, &cmd, &cfg);
        }
    }
}

fn disk_facts(img: &[u8]) -> DiskFacts {
    let table = gpt::read(&mut Cursor::new(img)).map_err(|e| e.to_string());
    let partitions = match &table {
        Ok(t) => t
            .partitions
            .iter()
            .map(|p| {
                let at = usize::try_from(p.offset(t.sector_size))
                    .ok()
                    .and_then(|o| img.get(o..));
                PartitionFacts {
                    gpt: p.clone(),
                    dev: PathBuf::from(format!("/dev/vda{}", p.number)),
                    fs: at.and_then(probe_fs),
                    verity: at.and_then(verity_sb::probe),
                    signature: Some(Ok(Signature::None)),
                }
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    DiskFacts {
        name: "vda".into(),
        dev: PathBuf::from("/dev/vda"),
        size: img.len() as u64,
        table,
        partitions,
        settling: false,
    }
}

#[cfg(test)]
mod tests {
    /// Replays the committed corpus (initrd-helper/fuzz/corpus/TARGET/*)
    /// through every target: each input that once found new coverage.
    #[test]
    fn committed_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut total = 0;
        for (name, target) in super::TARGETS {
            let dir = root.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e} (the corpus is committed)", dir.display()));
            let mut n = 0;
            for e in entries {
                let data = std::fs::read(e.unwrap().path()).unwrap();
                target(&data);
                n += 1;
            }
            assert!(n > 0, "{name}: empty corpus");
            total += n;
        }
        eprintln!("replayed {total} corpus inputs");
    }
}
