//! Standard base64 (RFC 4648, `+/`), strict, through the `base64` crate:
//! a malformed value in a security option or a token must be refused, not
//! guessed at. Accepted: canonical padding (systemd writes it) or none at
//! all (hand-typed command lines); refused: partial or extra padding
//! (`Zg=`, `Zm9v==`), non-zero trailing bits, anything outside the alphabet.

use base64::alphabet::STANDARD;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid base64")]
pub struct B64Error;

const PADDED: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);
const UNPADDED: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Standard base64 with padding (systemd's token fields and the TPM
/// passphrase rule use this form).
pub fn encode(b: &[u8]) -> String {
    PADDED.encode(b)
}

pub fn decode(s: &str) -> Result<Vec<u8>, B64Error> {
    let engine = if s.contains('=') { &PADDED } else { &UNPADDED };
    engine.decode(s).map_err(|_| B64Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_rfc4648_vectors() {
        for (enc, dec) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
    }

    #[test]
    fn encodes_rfc4648_vectors() {
        for (enc, dec) in [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
        ] {
            assert_eq!(encode(dec.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), dec.as_bytes());
        }
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "Z",
            "Zm9v!",
            "Zm===",
            "Zm9v Zg==",
            "Zm9v==",
            "Zg=",
            "Zh==",
            "Zm9=v",
        ] {
            assert_eq!(decode(bad), Err(B64Error), "{bad}");
        }
    }
}
