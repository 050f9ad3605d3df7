//! The dm-verity superblock that `veritysetup format` (and systemd-repart's
//! `Verity=hash`) writes at the start of a hash partition: read from the
//! probe bytes so the planner can refuse a malformed or mismatched hash
//! partition with a line that names it, before libcryptsetup and the kernel
//! are asked (their refusals are an errno and a kernel log line).
//!
//! The checks are those libcryptsetup makes when it loads the superblock,
//! plus two the planner can make because it knows the pair: the data
//! blocks fit the data partition and the tree fits the hash partition.

use serde::Serialize;

/// What the superblock says about the tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Superblock {
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt_size: u16,
}

const MAGIC: &[u8; 8] = b"verity\0\0";
/// The superblock's size on disk.
pub const LEN: usize = 512;

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// libcryptsetup's bound: a power of two from 512 bytes to 512 KiB.
fn block_size_ok(n: u32) -> bool {
    n.is_power_of_two() && (512..=512 * 1024).contains(&n)
}

/// `None`: no verity superblock at all (no magic); else the parsed
/// superblock or what is wrong with it.
pub fn probe(b: &[u8]) -> Option<Result<Superblock, String>> {
    let b = b.get(..LEN)?;
    (&b[..8] == MAGIC).then(|| parse(b))
}

fn parse(b: &[u8]) -> Result<Superblock, String> {
    let version = le_u32(b, 8);
    if version != 1 {
        return Err(format!(
            "verity superblock version {version} (only 1 exists)"
        ));
    }
    let hash_type = le_u32(b, 12);
    if hash_type > 1 {
        return Err(format!("verity hash type {hash_type} (0 or 1 exist)"));
    }
    let name = &b[32..64];
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let algorithm = std::str::from_utf8(&name[..end])
        .ok()
        .filter(|a| !a.is_empty() && a.bytes().all(|c| c.is_ascii_graphic()))
        .ok_or("the verity superblock's hash algorithm name is not text")?
        .to_string();
    let (data_block_size, hash_block_size) = (le_u32(b, 64), le_u32(b, 68));
    if !block_size_ok(data_block_size) || !block_size_ok(hash_block_size) {
        return Err(format!(
            "verity block sizes {data_block_size}/{hash_block_size} (each a power of two, \
             512 bytes to 512 KiB)"
        ));
    }
    let data_blocks = le_u64(b, 72);
    if data_blocks == 0 {
        return Err("the verity superblock describes no data blocks".into());
    }
    let salt_size = u16::from_le_bytes([b[80], b[81]]);
    if salt_size > 256 {
        return Err(format!("verity salt of {salt_size} bytes (at most 256)"));
    }
    Ok(Superblock {
        hash_type,
        algorithm,
        data_block_size,
        hash_block_size,
        data_blocks,
        salt_size,
    })
}

/// Digest sizes of the hashes dm-verity is used with; others are left to
/// the kernel (no tree-size or root-hash-length check).
pub fn digest_size(algorithm: &str) -> Option<u64> {
    Some(match algorithm {
        "sha1" => 20,
        "sha224" => 28,
        "sha256" => 32,
        "sha384" => 48,
        "sha512" => 64,
        _ => return None,
    })
}

impl Superblock {
    /// Bytes of data the tree covers (checked: a hostile count overflows).
    pub fn data_bytes(&self) -> Option<u64> {
        self.data_blocks
            .checked_mul(u64::from(self.data_block_size))
    }

    /// The least the tree takes on the hash partition: every level's
    /// blocks plus the superblock (a lower bound, so a real image is never
    /// refused by rounding).
    pub fn min_hash_bytes(&self) -> Option<u64> {
        let digest = digest_size(&self.algorithm)?.next_power_of_two();
        let per_block = u64::from(self.hash_block_size) / digest;
        let (mut level, mut blocks) = (self.data_blocks, 0u64);
        loop {
            level = level.div_ceil(per_block.max(2));
            blocks = blocks.checked_add(level)?;
            if level <= 1 {
                break;
            }
        }
        blocks
            .checked_mul(u64::from(self.hash_block_size))?
            .checked_add(LEN as u64)
    }

    /// Why this superblock cannot verify `data_len` bytes of data with a
    /// `hash_len`-byte hash partition and a `roothash_len`-byte root hash.
    pub fn mismatch(&self, data_len: u64, hash_len: u64, roothash_len: usize) -> Option<String> {
        let alg = &self.algorithm;
        if let Some(d) = digest_size(alg).filter(|&d| d != roothash_len as u64) {
            return Some(format!(
                "roothash= has {roothash_len} bytes but the tree uses {alg} ({d}-byte digests)"
            ));
        }
        match self.data_bytes() {
            Some(n) if n <= data_len => {}
            _ => {
                return Some(format!(
                    "the tree covers {} blocks of {} bytes, more than the data partition's \
                     {data_len} bytes (hash and data partitions from different builds?)",
                    self.data_blocks, self.data_block_size
                ))
            }
        }
        match self.min_hash_bytes() {
            Some(n) if n > hash_len => Some(format!(
                "the tree needs at least {n} bytes but the hash partition has {hash_len} \
                 (truncated?)"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A superblock as `veritysetup format` writes it (sha256, 4 KiB
    /// blocks, 32-byte salt).
    pub fn superblock(data_blocks: u64) -> Vec<u8> {
        let mut b = vec![0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        b[80..82].copy_from_slice(&32u16.to_le_bytes());
        b
    }

    #[test]
    fn parses_what_veritysetup_writes() {
        let sb = probe(&superblock(256)).unwrap().unwrap();
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_bytes(), Some(1 << 20));
        // 256 blocks, 128 hashes a block: 2 + 1 blocks, plus the superblock.
        assert_eq!(sb.min_hash_bytes(), Some(3 * 4096 + 512));
        assert_eq!(sb.mismatch(1 << 20, 1 << 20, 32), None);
    }

    #[test]
    fn no_magic_is_none_and_short_input_too() {
        assert_eq!(probe(&[0u8; LEN]), None);
        assert_eq!(probe(&superblock(1)[..100]), None);
    }

    #[test]
    fn refuses_malformed_fields() {
        let bad = |off: usize, v: &[u8], needle: &str| {
            let mut b = superblock(8);
            b[off..off + v.len()].copy_from_slice(v);
            let e = probe(&b).unwrap().unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(8, &2u32.to_le_bytes(), "version 2");
        bad(12, &7u32.to_le_bytes(), "hash type 7");
        bad(32, &[0xff; 4], "not text");
        bad(64, &3000u32.to_le_bytes(), "block sizes");
        bad(68, &(1u32 << 30).to_le_bytes(), "block sizes");
        bad(72, &0u64.to_le_bytes(), "no data blocks");
        bad(80, &300u16.to_le_bytes(), "salt");
    }

    #[test]
    fn names_a_mismatched_pair() {
        let sb = probe(&superblock(u64::MAX)).unwrap().unwrap();
        assert!(sb
            .mismatch(1 << 20, 1 << 20, 32)
            .unwrap()
            .contains("more than"));
        let sb = probe(&superblock(1 << 20)).unwrap().unwrap();
        let e = sb.mismatch(1 << 32, 4096, 32).unwrap();
        assert!(e.contains("hash partition has 4096"), "{e}");
        let e = sb.mismatch(1 << 32, 1 << 30, 20).unwrap();
        assert!(e.contains("roothash= has 20 bytes"), "{e}");
    }
}
