//! GUIDs as GPT stores them (mixed-endian) and as humans write them.
//!
//! Parsing is strict: a malformed GUID on the command line is a security
//! problem (it selects the disk we write to), so only the canonical 8-4-4-4-12
//! hex form is accepted; case is ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A 128-bit GUID in its canonical (big-endian, "display") byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid([u8; 16]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected a GUID like 01234567-89ab-cdef-0123-456789abcdef")]
pub struct GuidError;

impl Guid {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Guid(b)
    }

    /// GPT stores the first three fields little-endian.
    pub fn from_gpt_bytes(b: &[u8; 16]) -> Self {
        let mut o = *b;
        o[0..4].reverse();
        o[4..6].reverse();
        o[6..8].reverse();
        Guid(o)
    }

    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut o = self.0;
        o[0..4].reverse();
        o[4..6].reverse();
        o[6..8].reverse();
        o
    }

    /// A random version-4 GUID.
    pub fn random_v4(mut b: [u8; 16]) -> Self {
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// 32 lowercase hex digits without dashes (the machine-id format).
    pub fn to_simple(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl FromStr for Guid {
    type Err = GuidError;
    fn from_str(s: &str) -> Result<Self, GuidError> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(GuidError);
        }
        let hex: String = groups.concat();
        let bytes = crate::hex::decode(&hex).map_err(|_| GuidError)?;
        let arr: [u8; 16] = bytes.try_into().map_err(|_| GuidError)?;
        Ok(Guid(arr))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.to_simple();
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: GuidError| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_display_and_gpt_order() {
        let g: Guid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".parse().unwrap();
        assert_eq!(g.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        let disk = g.to_gpt_bytes();
        assert_eq!(&disk[0..4], &[0xe3, 0xbc, 0x68, 0x4f]);
        assert_eq!(Guid::from_gpt_bytes(&disk), g);
    }

    #[test]
    fn uppercase_is_accepted() {
        let g: Guid = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709".parse().unwrap();
        assert_eq!(g.to_simple(), "4f68bce3e8cd4db196e7fbcaf984b709");
    }

    #[test]
    fn malformed_is_refused() {
        for bad in [
            "",
            "banana",
            "4f68bce3e8cd4db196e7fbcaf984b709",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b70",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b7090",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b70g",
            "{4f68bce3-e8cd-4db1-96e7-fbcaf984b709}",
        ] {
            assert_eq!(bad.parse::<Guid>(), Err(GuidError), "{bad}");
        }
    }

    #[test]
    fn random_v4_sets_version_and_variant() {
        let g = Guid::random_v4([0xff; 16]);
        assert_eq!(g.to_string(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
