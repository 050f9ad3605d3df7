//! LUKS via libcryptsetup (statically linked): LUKS2 formatting with a TPM
//! keyslot, a recovery keyslot and systemd's token; reading the token,
//! opening, closing, and the cryptographic erase of a factory reset.
//! libcryptsetup-rs serialises calls (its `mutex` feature: libcryptsetup is not
//! thread-safe, and without the feature a call from a second thread panics).

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptDeactivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{CryptKdf, EncryptionFormat};
use libcryptsetup_rs::{CryptInit, CryptPbkdfType, Either, LibcryptErr, TokenInput};
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    #[error("libcryptsetup on {dev}: {source}")]
    Lib { dev: String, source: LibcryptErr },
    #[error("libcryptsetup cannot load the LUKS2 header of {dev} ({why}); nothing was written")]
    Header { dev: String, why: String },
    #[error("the LUKS2 header of {0} claims an implausible volume key size")]
    KeySize(String),
}

fn wrapper(dev: &Path) -> impl Fn(LibcryptErr) -> LuksError + '_ {
    move |source| LuksError::Lib {
        dev: dev.display().to_string(),
        source,
    }
}

/// Loads the header, read-only (libcryptsetup repairs nothing on load);
/// a refusal is explained by `luks_hdr::diagnose`.
fn load(dev: &Path) -> Result<libcryptsetup_rs::CryptDevice, LuksError> {
    let wrap = wrapper(dev);
    let mut cd = CryptInit::init(dev).map_err(&wrap)?;
    cd.context_handle()
        .load::<()>(Some(EncryptionFormat::Luks2), None)
        .map_err(|e| LuksError::Header {
            dev: dev.display().to_string(),
            why: diagnosis(dev).unwrap_or_else(|| e.to_string()),
        })?;
    Ok(cd)
}

/// Our reading of the header copies on `dev`, or `None` when it cannot be
/// opened.
fn diagnosis(dev: &Path) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(dev).ok()?;
    let read = |offset: u64, len: usize| {
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, offset).ok().map(|()| b)
    };
    Some(crate::luks_hdr::diagnose(&read))
}

/// The UUID of the LUKS2 header on `dev`, or an error when there is none.
#[cfg(test)]
pub fn luks2_uuid(dev: &Path) -> Result<String, LuksError> {
    let mut cd = load(dev)?;
    let uuid = cd.status_handle().get_uuid().map_err(wrapper(dev))?;
    Ok(uuid.to_string())
}

/// The first `systemd-tpm2` token's JSON, or `None` when there is none.
pub fn tpm2_token(dev: &Path) -> Result<Option<serde_json::Value>, LuksError> {
    Ok(first_tpm2_token(&mut load(dev)?).map(|(_, v)| v))
}

/// The first `systemd-tpm2` token: its ID and JSON.
fn first_tpm2_token(cd: &mut libcryptsetup_rs::CryptDevice) -> Option<(u32, serde_json::Value)> {
    // LUKS2 has 32 token slots; empty ones fail to read.
    (0..32).find_map(|id| {
        cd.token_handle()
            .json_get(id)
            .ok()
            .filter(|v| v["type"] == "systemd-tpm2")
            .map(|v| (id, v))
    })
}

/// No stretching for our keyslots (see `minimal_pbkdf`).
fn use_minimal_pbkdf(cd: &mut libcryptsetup_rs::CryptDevice, dev: &Path) -> Result<(), LuksError> {
    cd.settings_handle()
        .set_pbkdf_type(&minimal_pbkdf())
        .map_err(wrapper(dev))
}

/// An unlocked volume's identity: what binding and measuring need.
pub struct Volume {
    pub uuid: String,
    pub key: Zeroizing<Vec<u8>>,
}

/// LUKS2 volume keys are at most this long (aes-xts-plain64 with AES-256
/// takes 64 bytes); a header that claims more is refused before allocating.
const MAX_VOLUME_KEY: usize = 128;

/// The volume key of `dev`, from a keyslot passphrase. Nothing is activated:
/// the caller checks what the key proves first.
pub fn volume_key(dev: &Path, passphrase: &[u8]) -> Result<Volume, LuksError> {
    let wrap = wrapper(dev);
    let mut cd = load(dev)?;
    let size = usize::try_from(cd.status_handle().get_volume_key_size())
        .ok()
        .filter(|&n| (1..=MAX_VOLUME_KEY).contains(&n))
        .ok_or(LuksError::KeySize(dev.display().to_string()))?;
    let mut key = Zeroizing::new(vec![0u8; size]);
    let (_, n) = cd
        .volume_key_handle()
        .get(None, &mut key, Some(passphrase))
        .map_err(&wrap)?;
    key.truncate(n.min(size));
    let uuid = cd.status_handle().get_uuid().map_err(&wrap)?.to_string();
    Ok(Volume { uuid, key })
}

/// Opens `dev` as /dev/mapper/`name` with its volume key.
pub fn open_with_key(dev: &Path, name: &str, key: &[u8]) -> Result<(), LuksError> {
    let mut cd = load(dev)?;
    cd.activate_handle()
        .activate_by_volume_key(Some(name), Some(key), CryptActivate::empty())
        .map_err(wrapper(dev))
}

/// Closes /dev/mapper/`name`.
pub fn close(name: &str) -> Result<(), LuksError> {
    let dev = Path::new("/dev/mapper").join(name);
    let mut cd = CryptInit::init_by_name_and_header(name, None).map_err(wrapper(&dev))?;
    cd.activate_handle()
        .deactivate(name, CryptDeactivate::empty())
        .map_err(wrapper(&dev))
}

/// Bytes the LUKS2 header and keyslots take at the start of `dev` (the data
/// offset), or `fallback` when no header can be loaded.
pub fn header_len(dev: &Path, fallback: u64) -> u64 {
    match load(dev) {
        Ok(mut cd) => (cd.status_handle().get_data_offset() * 512).max(fallback),
        Err(_) => fallback,
    }
}

/// What `format_luks2` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub uuid: String,
    pub tpm_keyslot: u32,
    pub recovery_keyslot: u32,
    pub token: u32,
}

/// PBKDF2, 1000 iterations, no benchmark: both our secrets are 256-bit
/// random values, so stretching adds nothing but boot time and memory
/// (argon2id costs ~1 GiB and seconds per unlock: systemd#41673, #14168).
fn minimal_pbkdf() -> CryptPbkdfType {
    CryptPbkdfType {
        type_: CryptKdf::Pbkdf2,
        hash: Some("sha512".into()),
        time_ms: 0,
        iterations: 1000,
        max_memory_kb: 0,
        parallel_threads: 0,
        flags: CryptPbkdf::NO_BENCHMARK,
    }
}

/// Formats `dev` as LUKS2 (aes-xts-plain64, a random 512-bit volume key that
/// never leaves libcryptsetup) with a TPM keyslot, a recovery keyslot and the
/// token `token(tpm_keyslot)`. The caller proves the device blank first.
pub fn format_luks2(
    dev: &Path,
    tpm_passphrase: &[u8],
    recovery_key: &[u8],
    token: impl Fn(u32) -> serde_json::Value,
) -> Result<Enrolled, LuksError> {
    let wrap = wrapper(dev);
    let mut cd = CryptInit::init(dev).map_err(&wrap)?;
    use_minimal_pbkdf(&mut cd, dev)?;
    cd.context_handle()
        .format::<()>(
            EncryptionFormat::Luks2,
            ("aes", "xts-plain64"),
            None,
            Either::Right(64),
            None,
        )
        .map_err(&wrap)?;
    let mut slots = cd.keyslot_handle();
    let tpm_keyslot = slots
        .add_by_key(None, None, tpm_passphrase, CryptVolumeKey::empty())
        .map_err(&wrap)?;
    let recovery_keyslot = slots
        .add_by_key(None, None, recovery_key, CryptVolumeKey::empty())
        .map_err(&wrap)?;
    let token = cd
        .token_handle()
        .json_set(TokenInput::AddToken(&token(tpm_keyslot)))
        .map_err(&wrap)?;
    let uuid = cd.status_handle().get_uuid().map_err(&wrap)?.to_string();
    Ok(Enrolled {
        uuid,
        tpm_keyslot,
        recovery_keyslot,
        token,
    })
}

/// Most keyslots a token may name (LUKS2 has 32).
const MAX_TOKEN_KEYSLOTS: usize = 32;

/// Replaces the TPM keyslot of `dev`'s first `systemd-tpm2` token by a new
/// one opening with `passphrase` (the volume key `key` proves the right to),
/// the token by `token(new keyslot)` in place, and destroys the keyslots
/// the old token named. A cut before the token is replaced leaves the old
/// token and a spare keyslot; after it, a spare old keyslot whose secret
/// is sealed to a policy that no longer holds. Returns the new keyslot.
pub fn replace_tpm_keyslot(
    dev: &Path,
    key: &[u8],
    passphrase: &[u8],
    token: impl Fn(u32) -> serde_json::Value,
) -> Result<u32, LuksError> {
    let wrap = wrapper(dev);
    let mut cd = load(dev)?;
    use_minimal_pbkdf(&mut cd, dev)?;
    let Some((id, old)) = first_tpm2_token(&mut cd) else {
        return Err(LuksError::Header {
            dev: dev.display().to_string(),
            why: "no systemd-tpm2 token to replace".into(),
        });
    };
    let old_slots: Vec<u32> = old["keyslots"]
        .as_array()
        .map(|a| {
            a.iter()
                .take(MAX_TOKEN_KEYSLOTS)
                .filter_map(|k| k.as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let slot = cd
        .keyslot_handle()
        .add_by_key(
            None,
            Some(Either::Left(key)),
            passphrase,
            CryptVolumeKey::empty(),
        )
        .map_err(&wrap)?;
    cd.token_handle()
        .json_set(TokenInput::ReplaceToken(id, &token(slot)))
        .map_err(&wrap)?;
    for old in old_slots.into_iter().filter(|&o| o != slot) {
        cd.keyslot_handle().destroy(old).map_err(&wrap)?;
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    //! LUKS on image files, checked by the host's cryptsetup. (systemd's
    //! token plugin needs a kernel TPM device: the VM scenario
    //! vm_systemd_cryptsetup_interop checks it in the guest.)
    use super::*;
    use crate::sys::{swtpm_test, tpm_seal};
    use crate::token;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn image() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("data.img");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        (d, p)
    }

    /// `cryptsetup luksOpen --test-passphrase ARGS IMG`, passphrase on stdin.
    fn test_open(
        img: &Path,
        args: &[&str],
        stdin: &str,
        env: &[(&str, String)],
    ) -> std::process::Output {
        let mut c = Command::new("cryptsetup")
            .args(["luksOpen", "--test-passphrase"])
            .args(args)
            .arg(img)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cryptsetup (Debian cryptsetup-bin) is needed by this test");
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        c.wait_with_output().unwrap()
    }

    /// A token naming `slot`, as ours do (only `keyslots` matters here).
    fn fake_token(slot: u32, tag: &str) -> serde_json::Value {
        serde_json::json!({"type": "systemd-tpm2", "keyslots": [slot.to_string()], "tag": tag})
    }

    #[test]
    fn re_seal_swaps_the_tpm_keyslot_and_keeps_the_recovery_key() {
        let (_d, img) = image();
        let e = format_luks2(&img, b"old-tpm", b"recovery", |s| fake_token(s, "old")).unwrap();
        let vol = volume_key(&img, b"recovery").unwrap();
        let slot =
            replace_tpm_keyslot(&img, &vol.key, b"new-tpm", |s| fake_token(s, "new")).unwrap();
        assert_ne!(slot, e.tpm_keyslot);
        let tok = tpm2_token(&img).unwrap().unwrap();
        assert_eq!(
            (tok["tag"].as_str(), tok["keyslots"][0].as_str()),
            (Some("new"), Some(&*slot.to_string()))
        );
        let dump = Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(&img)
            .output()
            .unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
        let slots = meta["keyslots"].as_object().unwrap();
        assert_eq!(slots.len(), 2, "{slots:?}");
        assert_eq!(meta["tokens"].as_object().unwrap().len(), 1);
        for (pass, opens) in [("new-tpm", true), ("recovery", true), ("old-tpm", false)] {
            let out = test_open(&img, &["--key-file=-"], pass, &[]);
            assert_eq!(out.status.success(), opens, "{pass}");
        }
        assert_eq!(volume_key(&img, b"new-tpm").unwrap().key, vol.key);
    }

    #[test]
    fn swtpm_luks2_with_token_and_recovery_key() {
        let t = swtpm_test::swtpm();
        let mut ctx = swtpm_test::context(&t);
        let srk = tpm_seal::srk(&mut ctx).unwrap();
        let secret = [0x5au8; 32];
        let sealed = tpm_seal::seal(
            &mut ctx,
            srk,
            &crate::policy::Policy::literal(&[7]),
            &secret,
        )
        .unwrap();
        drop(ctx); // the plugin opens the TPM itself
        let blob = token::blob(&sealed.private, &sealed.public);
        let recovery = token::recovery_key(&[0x11; 32]);
        let (_d, img) = image();
        let e = format_luks2(
            &img,
            token::tpm_passphrase(&secret).as_bytes(),
            recovery.as_bytes(),
            |slot| {
                token::token_json(&token::TpmToken {
                    keyslot: slot,
                    blob: &blob,
                    pcrs: &[7],
                    policy_hash: &sealed.policy_hash,
                    srk_name: &[0x00, 0x0b],
                    signed: None,
                    pcr_values: &[],
                })
            },
        )
        .unwrap();
        assert_eq!(luks2_uuid(&img).unwrap(), e.uuid);
        let tok = tpm2_token(&img).unwrap().unwrap();
        let parsed = token::parse_token(&tok).unwrap();
        assert_eq!(
            (parsed.private, parsed.public),
            (sealed.private, sealed.public)
        );
        assert_eq!(header_len(&img, 0), 16 << 20);

        let dump = Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata"])
            .arg(&img)
            .output()
            .unwrap();
        let meta: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
        assert_eq!(meta["tokens"]["0"]["type"], "systemd-tpm2");
        let slot = &meta["keyslots"][e.tpm_keyslot.to_string()]["kdf"];
        assert_eq!(
            (slot["type"].as_str(), slot["iterations"].as_u64()),
            (Some("pbkdf2"), Some(1000))
        );

        // The recovery key opens it with plain cryptsetup.
        let out = test_open(&img, &["--key-file=-"], &recovery, &[]);
        assert!(
            out.status.success(),
            "recovery key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A wrong passphrase is refused (the checks above are not vacuous).
        let out = test_open(&img, &["--key-file=-"], "wrong", &[]);
        assert!(!out.status.success());
    }
}
