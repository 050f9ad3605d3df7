//! GUIDs as GPT stores them (mixed-endian) and as humans write them, on
//! top of the `uuid` crate (byte orders, parsing, formatting); this type
//! only adds the strict parse and the GPT/serde conventions we rely on.
//!
//! Parsing is strict: a malformed GUID on the command line is a security
//! problem (it selects the disk we write to), so only the canonical 8-4-4-4-12
//! hex form is accepted (not `uuid`'s braced, URN or simple forms); case is
//! ignored.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A 128-bit GUID in its canonical (big-endian, "display") byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Guid(Uuid);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected a GUID like 01234567-89ab-cdef-0123-456789abcdef")]
pub struct GuidError;

/// The canonical form's length: 32 hex digits and 4 dashes.
const HYPHENATED_LEN: usize = 36;

impl Guid {
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Guid(Uuid::from_bytes(b))
    }

    /// GPT stores the first three fields little-endian.
    pub fn from_gpt_bytes(b: &[u8; 16]) -> Self {
        Guid(Uuid::from_bytes_le(*b))
    }

    pub fn to_gpt_bytes(self) -> [u8; 16] {
        self.0.to_bytes_le()
    }

    /// A random version-4 GUID from 16 random bytes.
    pub fn random_v4(b: [u8; 16]) -> Self {
        Guid(uuid::Builder::from_random_bytes(b).into_uuid())
    }

    pub fn is_nil(&self) -> bool {
        self.0.is_nil()
    }

    /// 32 lowercase hex digits without dashes (the machine-id format).
    pub fn to_simple(self) -> String {
        self.0.simple().to_string()
    }
}

impl FromStr for Guid {
    type Err = GuidError;
    fn from_str(s: &str) -> Result<Self, GuidError> {
        let dashes = [8, 13, 18, 23];
        let canonical =
            s.len() == HYPHENATED_LEN && dashes.iter().all(|&i| s.as_bytes()[i] == b'-');
        if !canonical {
            return Err(GuidError);
        }
        Uuid::try_parse(s).map(Guid).map_err(|_| GuidError)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
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
