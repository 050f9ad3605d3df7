//! The two ext4 superblock fields a grow needs (block size and block
//! count), read from the data volume when it is opened: when the disk grew
//! since the file system was made, the file system is grown online to fill
//! its (already grown) device. Pure, so the arithmetic is unit-tested and
//! fuzzed; the ioctl is in `sys/fs_grow.rs`.

/// The superblock sits 1024 bytes into the device and is 1024 bytes long.
pub const SB_OFFSET: u64 = 1024;
pub const SB_LEN: usize = 1024;

/// Growth below this is not worth a resize (mke2fs leaves a last partial
/// block group unused, so a freshly made file system is a little smaller
/// than its device on every boot).
pub const MIN_GROWTH: u64 = 16 << 20;

const MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u64,
    pub blocks: u64,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The file system's size, or `None` when `sb` is not an ext4 superblock
/// (or claims a block size ext4 does not have).
pub fn geometry(sb: &[u8]) -> Option<Geometry> {
    let sb = sb.get(..SB_LEN)?;
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) != MAGIC {
        return None;
    }
    let log = le32(sb, 0x18);
    if log > 6 {
        return None;
    }
    let lo = u64::from(le32(sb, 0x04));
    let hi = if le32(sb, 0x60) & INCOMPAT_64BIT != 0 {
        u64::from(le32(sb, 0x150))
    } else {
        0
    };
    Some(Geometry {
        block_size: 1024 << log,
        blocks: hi << 32 | lo,
    })
}

/// The block count to grow to on a `dev_size`-byte device, or `None` when
/// the device is not at least [`MIN_GROWTH`] bigger (never a shrink).
pub fn grow_to(g: Geometry, dev_size: u64) -> Option<u64> {
    let fs_bytes = g.blocks.checked_mul(g.block_size)?;
    if dev_size.checked_sub(fs_bytes)? < MIN_GROWTH {
        return None;
    }
    Some(dev_size / g.block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn superblock(log: u32, blocks: u64, bit64: bool) -> Vec<u8> {
        let mut b = vec![0u8; SB_LEN];
        b[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        b[0x18..0x1c].copy_from_slice(&log.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&(blocks as u32).to_le_bytes());
        if bit64 {
            b[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            b[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        }
        b
    }

    #[test]
    fn reads_size_and_grows_only_when_worth_it() {
        let g = geometry(&superblock(2, 1 << 20, true)).unwrap();
        assert_eq!(
            g,
            Geometry {
                block_size: 4096,
                blocks: 1 << 20
            }
        );
        assert_eq!(grow_to(g, 4 << 30), None, "same size");
        assert_eq!(grow_to(g, (4 << 30) + (1 << 20)), None, "1 MiB more");
        assert_eq!(grow_to(g, 8 << 30), Some(2 << 20));
        assert_eq!(grow_to(g, 1 << 30), None, "never a shrink");
    }

    #[test]
    fn the_high_word_counts_only_with_64bit() {
        let big = (1u64 << 32) + 5;
        assert_eq!(geometry(&superblock(2, big, true)).unwrap().blocks, big);
        assert_eq!(geometry(&superblock(2, big, false)).unwrap().blocks, 5);
    }

    #[test]
    fn refuses_what_is_not_ext4() {
        assert_eq!(geometry(&[0u8; SB_LEN]), None);
        assert_eq!(geometry(&superblock(7, 1, false)), None);
        assert_eq!(geometry(&superblock(2, 1, false)[..100]), None);
        let g = geometry(&superblock(6, u64::MAX, true)).unwrap();
        assert_eq!(grow_to(g, u64::MAX), None, "overflow is no growth");
    }
}
