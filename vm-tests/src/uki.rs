//! The UKIs build-image.sh makes (ukify 257, one per root slot, PCR 11
//! signed for the boot phases) and the PCR 11 values ukify predicted.

use crate::Artifacts;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// systemd-pcrphase's phase names, in boot order, as ukify signs them.
pub const ENTER_INITRD: &str = "enter-initrd";
pub const READY: &str = "enter-initrd:leave-initrd:sysinit:ready";

/// The UKI booting root slot `slot` (`a` or `b`).
pub fn path(a: &Artifacts, slot: &str) -> PathBuf {
    a.disk.with_file_name(format!("uki-{slot}.efi"))
}

/// ukify's PCR 11 (sha256) predictions for that UKI, by phase path. Panics
/// unless all four phases are there, each with 64 hex digits.
pub fn predictions(a: &Artifacts, slot: &str) -> BTreeMap<String, String> {
    let p = a.disk.with_file_name(format!("uki-{slot}.efi.pcr11"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let m: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_lowercase()))
        .collect();
    assert_eq!(m.len(), 4, "{}: expected 4 phases: {text}", p.display());
    for (phase, hash) in &m {
        assert!(
            hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: phase {phase}: {hash:?}",
            p.display()
        );
    }
    assert!(
        m.contains_key(ENTER_INITRD) && m.contains_key(READY),
        "{text}"
    );
    m
}

/// The guest prints the status report in chunks of this many hex digits.
const CHUNK: usize = 800;

/// The helper's status report (/run/initrd-helper/status.json), which the
/// guest's probe prints as hex chunks. Panics when it is missing or not JSON.
pub fn status(b: &crate::Boot) -> serde_json::Value {
    let n: usize = b.value("status_chunks").parse().unwrap_or(0);
    b.check(n > 0, "the guest found no status report");
    let chunks: Vec<String> = (1..=n)
        .map(|i| b.value(&format!("status_hex_{i}")))
        .collect();
    let v = decode(&chunks.concat()).or_else(|| repaired(&b.name, &chunks));
    b.check(v.is_some(), "the status report is not JSON");
    v.unwrap_or_default()
}

fn decode(hex: &str) -> Option<serde_json::Value> {
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    serde_json::from_slice(&bytes?).ok()
}

/// The serial console sometimes lets another writer's bytes into a long
/// line (seen after typed input): a chunk one or two digits too long is
/// decoded without each of its digits (pairs) in turn. Removing any other digit
/// than the stray one shifts every later pair, which is not JSON.
fn repaired(name: &str, chunks: &[String]) -> Option<serde_json::Value> {
    let (i, long) = chunks
        .iter()
        .enumerate()
        .find(|(i, c)| (CHUNK + 1..=CHUNK + 2).contains(&c.len()) && *i + 1 < chunks.len())?;
    let extra = long.len() - CHUNK;
    let without = |ks: &[usize]| {
        let mut fixed = chunks.to_vec();
        for &k in ks.iter().rev() {
            fixed[i].remove(k);
        }
        decode(&fixed.concat())
    };
    let v = if extra == 1 {
        (0..long.len()).find_map(|k| without(&[k]))
    } else {
        (0..long.len()).find_map(|j| (j + 1..long.len()).find_map(|k| without(&[j, k])))
    };
    if v.is_some() {
        eprintln!(
            "boot {name}: status chunk {} had one stray console byte",
            i + 1
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stray_digit_in_a_chunk_is_repaired_and_nothing_else_is() {
        let json = serde_json::json!({"text": "x".repeat(900), "ms": 499.5});
        let hex: String = json
            .to_string()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        let mut chunks: Vec<String> = hex
            .as_bytes()
            .chunks(CHUNK)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        assert!(chunks.len() > 1);
        assert_eq!(decode(&chunks.concat()), Some(json.clone()));
        chunks[0].insert(301, 'a');
        assert_eq!(decode(&chunks.concat()), None);
        assert_eq!(repaired("t", &chunks), Some(json));
        // Two (seen in a VM run) are found too; three are not guessed at.
        chunks[0].insert(500, 'a');
        assert!(repaired("t", &chunks).is_some());
        chunks[0].insert(600, 'a');
        assert_eq!(repaired("t", &chunks), None);
    }
}
