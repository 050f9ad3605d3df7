//! Kernel command line: quote-aware splitting and the typed options we honour.
//!
//! We read systemd's names where they exist (`roothash=`, `systemd.machine_id=`,
//! `systemd.factory_reset=`) and keep our own under one prefix,
//! `initrd_helper.` (`-` and `_` are equivalent in keys, as in systemd).
//! Policy: a malformed security-relevant option (a hash, a disk selector) is
//! refused with an error naming it; a malformed cosmetic one is warned about
//! and ignored.

use crate::guid::Guid;
use crate::verity::{self, VerityOptions};
use serde::Serialize;
use std::path::PathBuf;

/// The documented prefix of our own options.
pub const PREFIX: &str = "initrd_helper.";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid kernel command line option {key}={value:?}: {reason}")]
pub struct CmdlineError {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// A partition named on the command line: a device node or `PARTUUID=`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceSpec {
    Path(PathBuf),
    PartUuid(Guid),
}

fn parse_device(key: &str, v: Option<&str>) -> Result<DeviceSpec, CmdlineError> {
    let bad = || refuse(key, v, "expected /dev/NODE or PARTUUID=GUID");
    let v = v.ok_or_else(bad)?;
    if let Some(u) = v.strip_prefix("PARTUUID=") {
        return u.parse().map(DeviceSpec::PartUuid).map_err(|_| bad());
    }
    if v.starts_with("/dev/") && !v.contains("/../") {
        return Ok(DeviceSpec::Path(PathBuf::from(v)));
    }
    Err(bad())
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cmdline {
    /// `roothash=`: dm-verity root hash (hex) of the root to boot.
    pub roothash: Option<String>,
    /// `systemd.verity=` / `rd.systemd.verity=`: false ignores `roothash=`.
    pub verity: bool,
    /// `systemd.verity_root_data=`: the data device instead of the derived PARTUUID.
    pub verity_data: Option<DeviceSpec>,
    /// `systemd.verity_root_hash=`: the hash device instead of the derived PARTUUID.
    pub verity_hash: Option<DeviceSpec>,
    /// `systemd.verity_root_options=`.
    pub verity_options: VerityOptions,
    /// `usrhash=`: dm-verity root hash (hex) of the /usr slot to boot.
    pub usrhash: Option<String>,
    /// `systemd.verity_usr_data=`, `_hash=`, `_options=`: as for root.
    pub verity_usr_data: Option<DeviceSpec>,
    pub verity_usr_hash: Option<DeviceSpec>,
    pub verity_usr_options: VerityOptions,
    /// `systemd.machine_id=`: a fixed machine ID (32 hex) for this boot,
    /// or `firmware` (the SMBIOS product UUID), as systemd reads it.
    pub machine_id: Option<MachineIdArg>,
    /// `systemd.factory_reset=`: explicit request to wipe the data partition.
    pub factory_reset: bool,
    /// `systemd.factory_reset=0` (the last value): no reset, not even one
    /// the `FactoryResetRequest` EFI variable asks for.
    pub factory_reset_off: bool,
    /// `initrd_helper.factory_reset=ID`: a reset request with its own ID
    /// (one reset per distinct ID).
    pub factory_reset_id: Option<String>,
    /// `initrd_helper.disk=`: GPT disk GUID of the boot disk.
    pub disk: Option<Guid>,
    /// `initrd_helper.debug`: log debug lines too.
    pub debug: bool,
    /// `initrd_helper.recovery_prompt=`: overrides `data.recovery_prompt`.
    pub recovery_prompt: Option<bool>,
    /// `initrd_helper.reseal_after_recovery=`: overrides
    /// `data.reseal_after_recovery`.
    pub reseal_after_recovery: Option<bool>,
    /// `initrd_helper.on_failure=` (PID-1 mode): what PID 1 does when the
    /// boot fails.
    pub on_failure: Option<crate::pid1::OnFailure>,
    /// The kernel's `init=`: the real root's init (PID-1 mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    /// Warnings about ignored malformed cosmetic options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Splits a command line into `(key, value)` words. Double or single quotes
/// group spaces and are removed (`a="b c"` -> `("a", Some("b c"))`), as the
/// kernel and systemd do. Keys have `-` normalised to `_`.
pub fn split(s: &str) -> Vec<(String, Option<String>)> {
    words(s)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.replace('-', "_"), Some(v.to_string())),
            None => (w.replace('-', "_"), None),
        })
        .collect()
}

fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// systemd's boolean words; `None` when the value is none of them.
pub fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v {
        None => Some(true),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
            "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
            _ => None,
        },
    }
}

/// The longest value an error echoes: a 50 KB value is cut, not repeated.
const MAX_ECHO: usize = 80;

fn refuse(key: &str, value: Option<&str>, reason: &str) -> CmdlineError {
    let v = value.unwrap_or("");
    let value = match v.char_indices().nth(MAX_ECHO) {
        Some((i, _)) => format!("{}... ({} bytes)", &v[..i], v.len()),
        None => v.to_string(),
    };
    CmdlineError {
        key: key.chars().take(MAX_ECHO).collect(),
        value,
        reason: reason.to_string(),
    }
}

/// A dm-verity root hash: 64 to 128 hex digits (sha256 .. sha512).
fn parse_roothash(key: &str, v: Option<&str>) -> Result<String, CmdlineError> {
    let v = v.ok_or_else(|| refuse(key, v, "a root hash is required"))?;
    let ok_len = (64..=128).contains(&v.len()) && v.len() % 2 == 0;
    if !ok_len || crate::hex::decode(v).is_err() {
        return Err(refuse(key, Some(v), "expected 64 to 128 hex digits"));
    }
    Ok(v.to_ascii_lowercase())
}

/// `systemd.machine_id=`'s two forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineIdArg {
    Fixed(String),
    Firmware,
}

fn is_machine_id(v: &str) -> bool {
    v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit()) && v.chars().any(|c| c != '0')
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            roothash: None,
            verity: true,
            verity_data: None,
            verity_hash: None,
            verity_options: VerityOptions::default(),
            usrhash: None,
            verity_usr_data: None,
            verity_usr_hash: None,
            verity_usr_options: VerityOptions::default(),
            machine_id: None,
            factory_reset: false,
            factory_reset_off: false,
            factory_reset_id: None,
            disk: None,
            debug: false,
            recovery_prompt: None,
            reseal_after_recovery: None,
            on_failure: None,
            init: None,
            warnings: Vec::new(),
        }
    }
}

impl Cmdline {
    fn warn(&mut self, key: &str, v: Option<&str>, why: &str) {
        let v = v.unwrap_or("");
        self.warnings.push(format!("ignoring {key}={v:?}: {why}"));
    }

    fn bool_opt(&mut self, key: &str, v: Option<&str>) -> Option<bool> {
        let b = parse_bool(v);
        if b.is_none() {
            self.warn(key, v, "expected a boolean");
        }
        b
    }

    fn take(&mut self, key: &str, v: Option<&str>) -> Result<(), CmdlineError> {
        match key {
            "roothash" => self.roothash = Some(parse_roothash(key, v)?),
            "systemd.verity" | "rd.systemd.verity" => {
                self.verity = parse_bool(v).ok_or_else(|| refuse(key, v, "expected a boolean"))?;
            }
            "systemd.verity_root_data" => self.verity_data = Some(parse_device(key, v)?),
            "systemd.verity_root_hash" => self.verity_hash = Some(parse_device(key, v)?),
            "systemd.verity_root_options" => {
                self.verity_options =
                    verity::parse_options(v.unwrap_or("")).map_err(|why| refuse(key, v, &why))?;
            }
            "usrhash" => self.usrhash = Some(parse_roothash(key, v)?),
            "systemd.verity_usr_data" => self.verity_usr_data = Some(parse_device(key, v)?),
            "systemd.verity_usr_hash" => self.verity_usr_hash = Some(parse_device(key, v)?),
            "systemd.verity_usr_options" => {
                self.verity_usr_options =
                    verity::parse_options(v.unwrap_or("")).map_err(|why| refuse(key, v, &why))?;
            }
            "systemd.machine_id" => match v {
                Some(id) if is_machine_id(id) => {
                    self.machine_id = Some(MachineIdArg::Fixed(id.to_ascii_lowercase()))
                }
                Some("firmware") => self.machine_id = Some(MachineIdArg::Firmware),
                // systemd itself ignores an invalid ID; so do we, loudly.
                _ => self.warn(key, v, "expected 32 hex digits or \"firmware\""),
            },
            "systemd.factory_reset" => {
                // A reset destroys data: an unreadable value must not guess.
                self.factory_reset = parse_bool(v)
                    .ok_or_else(|| refuse(key, v, "expected a boolean (1/0, yes/no)"))?;
                self.factory_reset_off = !self.factory_reset;
            }
            "init" => self.init = v.map(str::to_string),
            _ => return self.take_ours(key, v),
        }
        Ok(())
    }

    fn take_ours(&mut self, key: &str, v: Option<&str>) -> Result<(), CmdlineError> {
        let Some(name) = key.strip_prefix(PREFIX) else {
            return Ok(());
        };
        match name {
            "disk" => {
                let g = v.and_then(|v| v.parse::<Guid>().ok()).ok_or_else(|| {
                    refuse(
                        key,
                        v,
                        "expected the boot disk's GPT disk GUID (see `blkid -p -s PTUUID`)",
                    )
                })?;
                self.disk = Some(g);
            }
            "debug" => self.debug = self.bool_opt(key, v).unwrap_or(self.debug),
            // They decide what a typed key may do: a misspelt value is refused.
            "recovery_prompt" | "reseal_after_recovery" => {
                let b = parse_bool(v).ok_or_else(|| refuse(key, v, "expected a boolean"))?;
                if name == "recovery_prompt" {
                    self.recovery_prompt = Some(b);
                } else {
                    self.reseal_after_recovery = Some(b);
                }
            }
            "factory_reset" => {
                let ok = |id: &&str| {
                    !id.is_empty()
                        && id.len() <= 64
                        && id
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c))
                };
                let id = v.filter(ok).ok_or_else(|| {
                    refuse(key, v, "expected a request ID: 1-64 of A-Z a-z 0-9 . _ : -")
                })?;
                self.factory_reset_id = Some(id.to_string());
            }
            // A misspelt policy falls back to waiting, which never loops.
            "on_failure" => match v.and_then(crate::pid1::OnFailure::parse) {
                Some(p) => self.on_failure = Some(p),
                None => self.warn(key, v, "expected wait, reboot, poweroff or halt"),
            },
            _ => self.warn(key, v, "unknown option"),
        }
        Ok(())
    }
}

/// What the command line says of one slot kind's verity.
#[derive(Debug, Clone, Copy)]
pub struct VeritySel<'c> {
    pub hash: Option<&'c str>,
    pub data: Option<&'c DeviceSpec>,
    pub hash_dev: Option<&'c DeviceSpec>,
    pub options: &'c VerityOptions,
}

impl Cmdline {
    /// The root's (`roothash=`, `systemd.verity_root_*=`) or the usr
    /// slot's (`usrhash=`, `systemd.verity_usr_*=`) options; the hash is
    /// `None` under `systemd.verity=0`.
    pub fn verity_for(&self, kind: crate::dps::SlotKind) -> VeritySel<'_> {
        use crate::dps::SlotKind;
        let (hash, data, hash_dev, options) = match kind {
            SlotKind::Root => (
                &self.roothash,
                &self.verity_data,
                &self.verity_hash,
                &self.verity_options,
            ),
            SlotKind::Usr => (
                &self.usrhash,
                &self.verity_usr_data,
                &self.verity_usr_hash,
                &self.verity_usr_options,
            ),
        };
        VeritySel {
            hash: hash.as_deref().filter(|_| self.verity),
            data: data.as_ref(),
            hash_dev: hash_dev.as_ref(),
            options,
        }
    }

    /// The ID of a factory reset request, or `None` when none is made. Our
    /// own flag's ID wins; `systemd.factory_reset=1` has a fixed ID. A reset
    /// is done when the ID differs from the last one done, and a boot
    /// without a request forgets that one (see README "Factory reset").
    pub fn factory_reset_request(&self) -> Option<String> {
        match (&self.factory_reset_id, self.factory_reset) {
            (Some(id), _) => Some(format!("id:{id}")),
            (None, true) => Some("systemd.factory_reset".into()),
            (None, false) => None,
        }
    }
}

/// Parses the options we honour; later words win, as in the kernel.
pub fn parse(s: &str) -> Result<Cmdline, CmdlineError> {
    let mut c = Cmdline::default();
    for (k, v) in split(s) {
        c.take(&k, v.as_deref())?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_quotes() {
        let w = split(r#"a=1 b="x y" 'c d'=e  f   g="" h"i j"k"#);
        assert_eq!(
            w,
            vec![
                ("a".into(), Some("1".into())),
                ("b".into(), Some("x y".into())),
                ("c d".into(), Some("e".into())),
                ("f".into(), None),
                ("g".into(), Some("".into())),
                ("hi jk".into(), None),
            ]
        );
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        assert_eq!(split(r#"a="b c"#), vec![("a".into(), Some("b c".into()))]);
    }

    #[test]
    fn dash_and_underscore_are_equivalent_in_keys() {
        let c = parse("initrd-helper.debug systemd.machine-id=0123456789abcdef0123456789abcdef")
            .unwrap();
        assert!(c.debug);
        assert_eq!(
            c.machine_id,
            Some(MachineIdArg::Fixed(
                "0123456789abcdef0123456789abcdef".into()
            ))
        );
        let c = parse("systemd.machine_id=firmware").unwrap();
        assert_eq!(c.machine_id, Some(MachineIdArg::Firmware));
    }

    #[test]
    fn parses_disk_and_roothash() {
        let h = "a".repeat(64);
        let c = parse(&format!(
            "quiet roothash={h} initrd_helper.disk=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
        ))
        .unwrap();
        assert_eq!(c.roothash, Some(h));
        assert_eq!(
            c.disk.unwrap().to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
    }

    #[test]
    fn malformed_security_options_are_refused() {
        let e = parse("initrd_helper.disk=banana").unwrap_err();
        assert_eq!(e.key, "initrd_helper.disk");
        assert!(
            e.to_string().contains("initrd_helper.disk=\"banana\""),
            "{e}"
        );
        assert!(parse("initrd_helper.disk").is_err());
        assert!(parse("roothash=xyz").is_err());
        assert!(parse(&format!("roothash={}", "a".repeat(63))).is_err());
        assert!(parse("roothash").is_err());
        assert!(parse("systemd.factory_reset=maybe").is_err());
    }

    #[test]
    fn malformed_cosmetic_options_warn() {
        let c =
            parse("initrd_helper.debug=sometimes initrd_helper.bogus=1 systemd.machine_id=nope")
                .unwrap();
        assert!(!c.debug);
        assert_eq!(c.machine_id, None);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    }

    #[test]
    fn verity_options_and_devices() {
        let c = parse(
            "systemd.verity_root_data=/dev/vda2 systemd.verity_root_hash=PARTUUID=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5 \
             systemd.verity_root_options=restart-on-corruption rd.systemd.verity=0",
        )
        .unwrap();
        assert_eq!(c.verity_data, Some(DeviceSpec::Path("/dev/vda2".into())));
        assert!(matches!(c.verity_hash, Some(DeviceSpec::PartUuid(_))));
        assert_eq!(
            c.verity_options.on_corruption,
            crate::verity::OnCorruption::Restart
        );
        assert!(!c.verity);
        for bad in [
            "systemd.verity_root_data=vda2",
            "systemd.verity_root_data=/dev/../etc/passwd",
            "systemd.verity_root_hash=PARTUUID=nope",
            "systemd.verity_root_options=hash-offset=1",
            "systemd.verity=perhaps",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(bad.starts_with(&e.key), "{bad}: {e}");
        }
    }

    #[test]
    fn usr_options_are_systemds_names() {
        let h = "ab".repeat(32);
        let c = parse(&format!(
            "usrhash={} systemd.verity_usr_data=/dev/vda2 \
             systemd.verity_usr_hash=/dev/vda3 systemd.verity_usr_options=panic-on-corruption",
            h.to_uppercase()
        ))
        .unwrap();
        let u = c.verity_for(crate::dps::SlotKind::Usr);
        assert_eq!(u.hash, Some(h.as_str()));
        assert_eq!(u.data, Some(&DeviceSpec::Path("/dev/vda2".into())));
        assert_eq!(u.hash_dev, Some(&DeviceSpec::Path("/dev/vda3".into())));
        assert_eq!(u.options.on_corruption, crate::verity::OnCorruption::Panic);
        assert!(c.verity_for(crate::dps::SlotKind::Root).hash.is_none());
        let off = parse(&format!("usrhash={h} systemd.verity=0")).unwrap();
        assert!(off.verity_for(crate::dps::SlotKind::Usr).hash.is_none());
        for bad in ["usrhash=xyz", "systemd.verity_usr_data=vda2"] {
            let e = parse(bad).unwrap_err();
            assert!(bad.starts_with(&e.key), "{bad}: {e}");
        }
    }

    #[test]
    fn factory_reset_bool_and_last_wins() {
        assert!(parse("systemd.factory_reset").unwrap().factory_reset);
        assert!(
            !parse("systemd.factory_reset=1 systemd.factory_reset=0")
                .unwrap()
                .factory_reset
        );
    }

    #[test]
    fn foreign_options_are_ignored() {
        let c = parse("console=ttyS0 root=/dev/sda ro rd.shell=0").unwrap();
        assert_eq!(c, Cmdline::default());
        // init= is only read (PID-1 mode hands over to it), never refused.
        let c = parse("init=/bin/sh").unwrap();
        assert_eq!(c.init.as_deref(), Some("/bin/sh"));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn reset_requests_carry_an_id() {
        assert_eq!(parse("quiet").unwrap().factory_reset_request(), None);
        assert_eq!(
            parse("quiet systemd.factory_reset=1")
                .unwrap()
                .factory_reset_request()
                .as_deref(),
            Some("systemd.factory_reset")
        );
        let c = parse("systemd.factory_reset=0 initrd_helper.factory_reset=2026-11-23.1").unwrap();
        assert_eq!(
            c.factory_reset_request().as_deref(),
            Some("id:2026-11-23.1")
        );
        for bad in [
            "initrd_helper.factory_reset",
            "initrd_helper.factory_reset=a/b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
