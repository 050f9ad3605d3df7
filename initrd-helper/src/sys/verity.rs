//! dm-verity activation through libcryptsetup: the hash partition's verity
//! superblock gives the geometry, the root hash from the command line is the
//! "volume key", and the kernel checks every block read against it.

use crate::verity::{OnCorruption, VerityOptions};
use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::EncryptionFormat;
use libcryptsetup_rs::{CryptInit, Either, LibcryptErr};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{what}: {source}")]
    Lib {
        what: &'static str,
        source: LibcryptErr,
    },
}

fn lib(what: &'static str) -> impl Fn(LibcryptErr) -> VerityError {
    move |source| VerityError::Lib { what, source }
}

fn flags(o: &VerityOptions) -> CryptActivate {
    let mut f = CryptActivate::READONLY;
    f |= match o.on_corruption {
        OnCorruption::IoError => CryptActivate::empty(),
        OnCorruption::Ignore => CryptActivate::IGNORE_CORRUPTION,
        OnCorruption::Restart => CryptActivate::RESTART_ON_CORRUPTION,
        OnCorruption::Panic => CryptActivate::PANIC_ON_CORRUPTION,
    };
    if o.ignore_zero_blocks {
        f |= CryptActivate::IGNORE_ZERO_BLOCKS;
    }
    if o.check_at_most_once {
        f |= CryptActivate::CHECK_AT_MOST_ONCE;
    }
    f
}

/// Activates `/dev/mapper/NAME`. `signature`: PKCS#7 of the root hash,
/// verified by the kernel against its trusted keyrings.
pub fn activate(
    name: &str,
    data: &Path,
    hash: &Path,
    roothash: &[u8],
    options: &VerityOptions,
    signature: Option<&[u8]>,
) -> Result<(), VerityError> {
    let mut cd = CryptInit::init_with_data_device(Either::Right((hash, data)))
        .map_err(lib("opening the hash and data devices"))?;
    cd.context_handle()
        .load::<()>(Some(EncryptionFormat::Verity), None)
        .map_err(lib("reading the verity superblock on the hash partition"))?;
    let f = flags(options);
    let mut act = cd.activate_handle();
    match signature {
        None => act.activate_by_volume_key(Some(name), Some(roothash), f),
        Some(sig) => act.activate_by_signed_key(Some(name), Some(roothash), Some(sig), f),
    }
    .map_err(lib(
        "the kernel refused the verity table (root hash or signature rejected, or dm-verity \
         unavailable; the kernel's \"device-mapper: verity\" line says which)",
    ))
}
