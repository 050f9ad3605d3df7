//! The identity of a data volume, derived from its LUKS2 UUID and volume
//! key, in the two forms the helper uses it:
//! - the PCR 15 measurement after unlocking, exactly as systemd-cryptsetup's
//!   `tpm2-measure-pcr=yes` makes it (HMAC-SHA256 keyed with the volume key
//!   over `cryptsetup:NAME:UUID`), so policies written for systemd's
//!   measurement hold for our volumes too, and nothing sealed to "PCR 15 is
//!   still zero" opens once a volume is open;
//! - the binding digest kept in a TPM NV index at provisioning (see
//!   `sys/tpm_bind.rs`): only a holder of the volume key can compute it, and
//!   the index can only be written while PCR 15 is zero, i.e. in the initrd
//!   before any volume was opened.
//!
//! An HMAC, not a plain hash of the key: nothing derived from the key
//! crosses the TPM bus unkeyed (systemd's reasoning).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation of the binding digest from every other use of the key.
const BINDING_PREFIX: &str = "initrd-helper:binding:v1:";

fn hmac(key: &[u8], msg: &str) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(msg.as_bytes());
    mac.finalize().into_bytes().into()
}

/// systemd escapes `:` in the volume name (`xescape(name, ":")`) so the
/// fields of the measured string cannot run into each other.
fn escape_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c == ':' || c == '\\' || !c.is_ascii_graphic() {
                let mut s = String::new();
                for b in c.to_string().bytes() {
                    s.push_str(&format!("\\x{b:02x}"));
                }
                s
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// What is extended into PCR 15 (sha256 bank) after `name` was opened.
pub fn pcr15_event(name: &str, luks_uuid: &str, volume_key: &[u8]) -> [u8; 32] {
    hmac(
        volume_key,
        &format!("cryptsetup:{}:{luks_uuid}", escape_name(name)),
    )
}

/// What the binding NV index holds for the volume `luks_uuid`.
pub fn binding_digest(luks_uuid: &str, volume_key: &[u8]) -> [u8; 32] {
    hmac(volume_key, &format!("{BINDING_PREFIX}{luks_uuid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr15_event_is_hmac_of_systemds_string() {
        // RFC 4231 test case 2 ("Jefe"), to pin the HMAC construction.
        let d = hmac(b"Jefe", "what do ya want for nothing?");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let k = [7u8; 64];
        assert_eq!(
            pcr15_event("data", "u-1", &k),
            hmac(&k, "cryptsetup:data:u-1")
        );
        assert_eq!(escape_name("a:b"), "a\\x3ab");
    }

    #[test]
    fn binding_depends_on_uuid_and_key() {
        let a = binding_digest("u-1", &[1; 64]);
        assert_ne!(a, binding_digest("u-2", &[1; 64]));
        assert_ne!(a, binding_digest("u-1", &[2; 64]));
        assert_ne!(a, pcr15_event("data", "u-1", &[1; 64]));
    }
}
