//! TPM2 access through tss-esapi (tpm2-tss linked statically with a fixed
//! TCTI table: `device` and `swtpm`): presence, and a context for sealing.
//!
//! `INITRD_HELPER_TCTI` overrides the TCTI (e.g. `swtpm:host=127.0.0.1,port=2321`
//! in tests: tss-esapi's swtpm config is TCP only); the default is the kernel
//! resource manager `/dev/tpmrm0`.

use crate::facts::TpmFacts;
use std::path::Path;
use std::str::FromStr;
use tss_esapi::constants::PropertyTag;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

pub const TCTI_ENV: &str = "INITRD_HELPER_TCTI";
const RM_DEVICE: &str = "dev/tpmrm0";

/// A TPM context on the machine's TPM (or `INITRD_HELPER_TCTI`).
pub fn context(root: &Path) -> Result<Context, String> {
    let conf = tcti(root).ok_or("no TPM device (/dev/tpmrm0) found")?;
    TctiNameConf::from_str(&conf)
        .and_then(Context::new)
        .map_err(|e| format!("opening the TPM ({conf}): {e}"))
}

fn tcti(root: &Path) -> Option<String> {
    if let Ok(t) = std::env::var(TCTI_ENV) {
        return Some(t);
    }
    let dev = root.join(RM_DEVICE);
    dev.exists().then(|| format!("device:{}", dev.display()))
}

/// Four ASCII characters packed big-endian, as TPM_PT_MANUFACTURER is.
fn vendor_string(v: u32) -> String {
    v.to_be_bytes()
        .iter()
        .filter(|c| c.is_ascii_graphic())
        .map(|&c| c as char)
        .collect()
}

fn manufacturer(conf: &str) -> Result<String, tss_esapi::Error> {
    let mut ctx = Context::new(TctiNameConf::from_str(conf)?)?;
    let v = ctx.get_tpm_property(PropertyTag::Manufacturer)?;
    Ok(v.map(vendor_string).unwrap_or_default())
}

pub fn probe(root: &Path) -> TpmFacts {
    let Some(conf) = tcti(root) else {
        return TpmFacts::Absent;
    };
    match manufacturer(&conf) {
        Ok(m) => TpmFacts::Present { manufacturer: m },
        Err(e) => TpmFacts::Unusable {
            error: format!("{conf}: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn vendor_string_unpacks_ascii() {
        assert_eq!(super::vendor_string(u32::from_be_bytes(*b"IBM\0")), "IBM");
    }
}
