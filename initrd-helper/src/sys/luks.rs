//! LUKS via libcryptsetup (statically linked). For now: read-only header
//! probing for facts; formatting and unlocking arrive with the data-partition
//! work. libcryptsetup-rs serialises calls internally (it is not thread-safe).

use libcryptsetup_rs::consts::vals::EncryptionFormat;
use libcryptsetup_rs::{CryptInit, LibcryptErr};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("libcryptsetup on {dev}: {source}")]
    Lib { dev: String, source: LibcryptErr },
}

/// The UUID of the LUKS2 header on `dev`, or an error when there is none.
pub fn luks2_uuid(dev: &Path) -> Result<String, LuksError> {
    let wrap = |source| LuksError::Lib {
        dev: dev.display().to_string(),
        source,
    };
    let mut cd = CryptInit::init(dev).map_err(wrap)?;
    cd.context_handle()
        .load::<()>(Some(EncryptionFormat::Luks2), None)
        .map_err(wrap)?;
    let uuid = cd.status_handle().get_uuid().map_err(wrap)?;
    Ok(uuid.to_string())
}
