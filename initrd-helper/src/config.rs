//! The helper's config file, baked into the initrd at
//! `/etc/initrd-helper/config.toml`. A missing file means the documented
//! defaults; unknown keys are an error (a typo must not silently change
//! what a first boot does).

use serde::{Deserialize, Serialize};
use std::path::Path;

pub const DEFAULT_PATH: &str = "/etc/initrd-helper/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: String, message: String },
}

/// What to do when the command line carries no `roothash=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Unverified {
    /// Refuse to boot an unverified root (production images).
    #[default]
    Refuse,
    /// Mount the newest bootable root slot read-only without verity
    /// (development images).
    MountReadOnly,
}

/// What `/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// The selected root slot, read-only (a `usrhash=` slot is mounted
    /// over its /usr when given).
    #[default]
    Slot,
    /// A tmpfs, with /usr from the selected usr slot and /etc from the
    /// factory copy in /usr (`systemd.volatile=yes`, NixOS's verity store).
    Tmpfs,
    /// The data partition (DPS root type by default): grown, LUKS2 + TPM2,
    /// formatted at first boot, with /usr from the selected usr slot over
    /// it and /etc seeded once from the factory copy (mkosi/ParticleOS's
    /// `root=encrypted+absent`).
    Data,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootConfig {
    /// `slot` (default), `tmpfs` or `data`.
    pub layout: Layout,
    /// mount(8) options of the tmpfs root (layout `tmpfs`).
    pub tmpfs_options: String,
    /// Without `roothash=`: `refuse` (default) or `mount-read-only`.
    pub unverified: Unverified,
    /// Where the root is mounted; systemd's initrd switches into it.
    pub mount_point: String,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            layout: Layout::Slot,
            tmpfs_options: "mode=0755,size=50%".into(),
            unverified: Unverified::Refuse,
            mount_point: "/sysroot".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcConfig {
    /// Mount an overlay on the root's /etc with a tmpfs upper layer.
    pub overlay: bool,
    /// Where the upper and work dirs live; under /run so they survive switch-root.
    pub state_dir: String,
    /// The overlay's lower layer when the image has no /etc (layout
    /// `tmpfs`): the factory copy in /usr, relative to the root.
    pub factory: String,
}

impl Default for EtcConfig {
    fn default() -> Self {
        EtcConfig {
            overlay: true,
            state_dir: "/run/initrd-helper/etc".into(),
            factory: "/usr/share/factory/etc".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// How long to wait for the boot disk to appear before failing.
    pub timeout_secs: u32,
    /// GPT disk GUID of the boot disk; the command line's
    /// `initrd_helper.disk=` takes precedence.
    pub disk: Option<crate::guid::Guid>,
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            timeout_secs: 30,
            disk: None,
        }
    }
}

/// How the data partition is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// LUKS2 with a TPM2-sealed keyslot and a recovery keyslot.
    #[default]
    Tpm2,
    /// A plain file system (no TPM needed; the data is readable by anyone
    /// holding the disk).
    None,
}

/// PCR 7 (Secure Boot policy) as systemd <= 257 defaulted to: it survives
/// kernel and initrd updates; firmware/dbx updates change it, and then the
/// recovery key opens the volume (README "TPM policy").
pub const DEFAULT_PCRS: [u8; 1] = [7];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Provision and mount the data partition (the boot disk's partition of
    /// type `partition_type`). `false`: the helper never touches it.
    pub enabled: bool,
    /// DPS type GUID of the data partition (default: `var`; `root` with
    /// `root.layout = "data"`). See [`Config::data_partition_type`].
    pub partition_type: Option<crate::guid::Guid>,
    /// `tpm2` (default) or `none`.
    pub encryption: Encryption,
    /// PCRs (sha256 bank) the volume secret is sealed to at their values
    /// at enrollment (literal PolicyPCR). May be empty with a signed policy.
    pub pcrs: Vec<u8>,
    /// The public key (PEM) of a signed PCR policy: the volume unlocks
    /// whenever `signed_pcrs` are in a state this key's owner signed.
    /// Default: the booted UKI's `.pcrpkey` when there is one
    /// (/.extra/tpm2-pcr-public-key.pem); `""`: no signed policy.
    pub pcr_public_key: Option<String>,
    /// The signatures (systemd's tpm2-pcr-signature.json). Default: the
    /// booted UKI's `.pcrsig` (/.extra/tpm2-pcr-signature.json).
    pub pcr_signature: Option<String>,
    /// The PCRs the key's owner signs (systemd's `tpm2_pubkey_pcrs`).
    pub signed_pcrs: Vec<u8>,
    /// Grow the partition to the end of the disk on first boot.
    pub grow: bool,
    /// Where the data file system is mounted inside the root.
    pub mount_point: String,
    /// Extra mkfs.ext4 options (first boot and after a factory reset only).
    pub mkfs_options: Vec<String>,
    /// Directories outside `mount_point` that persist too (a tmpfs root's
    /// /root, /home, ...): each is bind-mounted from `.persist/PATH` on the
    /// data file system.
    pub persist: Vec<String>,
    /// When the TPM cannot unlock the volume (refused, absent, locked
    /// out), ask for the recovery key on the console (README "Recovery").
    pub recovery_prompt: bool,
    /// Wrong keys allowed before the step fails (1-10).
    pub recovery_tries: u8,
    /// Seconds each question waits for an answer; 0: for ever.
    pub recovery_timeout_secs: u32,
    /// After a recovery unlock, seal a new TPM keyslot to this boot's
    /// policy, so the next boot unlocks by itself (off by default: it
    /// trusts this boot's measurements from then on).
    pub reseal_after_recovery: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            enabled: true,
            partition_type: None,
            encryption: Encryption::Tpm2,
            pcrs: DEFAULT_PCRS.to_vec(),
            pcr_public_key: None,
            pcr_signature: None,
            signed_pcrs: crate::policy::DEFAULT_SIGNED_PCRS.to_vec(),
            grow: true,
            mount_point: "/var".into(),
            mkfs_options: Vec::new(),
            persist: Vec::new(),
            recovery_prompt: true,
            recovery_tries: crate::recovery::DEFAULT_TRIES,
            recovery_timeout_secs: 0,
            reseal_after_recovery: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: RootConfig,
    pub etc: EtcConfig,
    pub devices: DevicesConfig,
    pub data: DataConfig,
}

impl Config {
    /// The data partition's type: configured, else `root` when it is the
    /// root (layout `data`), else `var`.
    pub fn data_partition_type(&self) -> crate::guid::Guid {
        match (self.data.partition_type, self.root.layout) {
            (Some(t), _) => t,
            (None, Layout::Data) => crate::dps::ROOT_X86_64,
            (None, _) => crate::dps::VAR,
        }
    }
}

/// Parses config text; `path` is only used in error messages.
pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: match e.span() {
            Some(span) => format!("{}: {}", where_in(text, span.start), e.message()),
            None => e.message().to_string(),
        },
    })?;
    validate(&cfg).map_err(|message| ConfigError::Parse {
        path: path.into(),
        message,
    })?;
    Ok(cfg)
}

/// "line N (`text of that line`)", cut to a sane length: the message
/// names the key even when toml's own message does not.
fn where_in(text: &str, at: usize) -> String {
    let at = at.min(text.len());
    let line_no = text.as_bytes()[..at]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let shown: String = line.chars().take(80).collect();
    format!("line {line_no} ({shown})")
}

fn validate(cfg: &Config) -> Result<(), String> {
    for (name, p) in [
        ("root.mount_point", &cfg.root.mount_point),
        ("etc.state_dir", &cfg.etc.state_dir),
        ("data.mount_point", &cfg.data.mount_point),
        ("etc.factory", &cfg.etc.factory),
    ] {
        if !p.starts_with('/') {
            return Err(format!("{name} = {p:?}: must be an absolute path"));
        }
    }
    let t = &cfg.root.tmpfs_options;
    if t.is_empty() || t.len() > 256 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "root.tmpfs_options = {t:?}: expected tmpfs mount options such as \"mode=0755,size=50%\""
        ));
    }
    validate_persist(&cfg.data.persist, &cfg.data.mount_point)?;
    let pcrs = &cfg.data.pcrs;
    if pcrs.len() > 24 || pcrs.iter().any(|&p| p > 23) {
        return Err(format!(
            "data.pcrs = {pcrs:?}: expected up to 24 PCR numbers 0-23"
        ));
    }
    let signed = &cfg.data.signed_pcrs;
    if signed.is_empty() || signed.len() > 24 || signed.iter().any(|&p| p > 23) {
        return Err(format!(
            "data.signed_pcrs = {signed:?}: expected 1 to 24 PCR numbers 0-23"
        ));
    }
    let tries = cfg.data.recovery_tries;
    if !(1..=crate::recovery::MAX_TRIES).contains(&tries) {
        return Err(format!(
            "data.recovery_tries = {tries}: expected 1 to {}",
            crate::recovery::MAX_TRIES
        ));
    }
    for (name, p) in [
        ("data.pcr_public_key", &cfg.data.pcr_public_key),
        ("data.pcr_signature", &cfg.data.pcr_signature),
    ] {
        match p.as_deref() {
            None | Some("") => {}
            Some(p) if p.starts_with('/') => {}
            Some(p) => return Err(format!("{name} = {p:?}: must be an absolute path or \"\"")),
        }
    }
    Ok(())
}

/// Most directories `data.persist` may name.
pub const MAX_PERSIST: usize = 32;

/// `data.persist`: absolute, plain paths, none of which is `/`, /usr or
/// /etc (the image's and the overlay's), or already on the data partition.
fn validate_persist(paths: &[String], mount_point: &str) -> Result<(), String> {
    if paths.len() > MAX_PERSIST {
        return Err(format!(
            "data.persist: {} entries, at most {MAX_PERSIST}",
            paths.len()
        ));
    }
    let mp = mount_point.trim_end_matches('/');
    for p in paths {
        let t = p.trim_end_matches('/');
        let plain = p.starts_with('/')
            && !p.split('/').any(|c| c == ".." || c == ".")
            && !p.contains("//")
            && !p.chars().any(|c| c.is_control());
        let why = if !plain {
            "must be an absolute path without . or .. components"
        } else if t.is_empty()
            || ["/usr", "/etc"]
                .iter()
                .any(|x| t == *x || t.starts_with(&format!("{x}/")))
        {
            "/, /usr and /etc cannot be persisted this way"
        } else if t == mp || t.starts_with(&format!("{mp}/")) {
            "is on the data partition already (under data.mount_point)"
        } else {
            continue;
        };
        return Err(format!("data.persist entry {p:?}: {why}"));
    }
    Ok(())
}

/// Loads the config file; a missing file yields the defaults.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, &shown),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(source) => Err(ConfigError::Read {
            path: shown,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(parse("", "x").unwrap(), Config::default());
        assert_eq!(Config::default().root.unverified, Unverified::Refuse);
    }

    #[test]
    fn parses_values() {
        let c = parse(
            "[root]\nunverified = \"mount-read-only\"\n[devices]\ntimeout_secs = 5\n\
             disk = \"4f68bce3-e8cd-4db1-96e7-fbcaf984b709\"\n[etc]\noverlay = false\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.root.unverified, Unverified::MountReadOnly);
        assert_eq!(c.devices.timeout_secs, 5);
        let p = parse("[data]\npersist = [\"/root\", \"/home/\"]\n", "x").unwrap();
        assert_eq!(p.data.persist, ["/root", "/home/"]);
        assert!(!c.etc.overlay);
        assert_eq!(c.root.mount_point, "/sysroot");
        let r = parse(
            "[root]\nlayout = \"tmpfs\"\ntmpfs_options = \"size=1G\"\n",
            "x",
        )
        .unwrap()
        .root;
        assert_eq!(
            (r.layout, r.tmpfs_options.as_str()),
            (Layout::Tmpfs, "size=1G")
        );
        let d = parse(
            "[data]\nencryption = \"none\"\npcrs = [0, 7]\n\
             partition_type = \"0fc63daf-8483-4772-8e79-3d69d8477de4\"\n",
            "x",
        )
        .unwrap()
        .data;
        assert_eq!((d.encryption, d.pcrs), (Encryption::None, vec![0, 7]));
        assert_eq!(d.partition_type, Some(crate::dps::LINUX_GENERIC));
        let mut c = Config::default();
        assert_eq!(c.data_partition_type(), crate::dps::VAR);
        c.root.layout = Layout::Data;
        assert_eq!(c.data_partition_type(), crate::dps::ROOT_X86_64);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        for bad in [
            "[root]\nunverfied = \"refuse\"\n",
            "[rooot]\n",
            "[root]\nunverified = \"sometimes\"\n",
            "[devices]\ntimeout_secs = -1\n",
            "[devices]\ndisk = \"banana\"\n",
            "[etc]\nstate_dir = \"relative\"\n",
            "[data]\nsigned_pcrs = []\n",
            "[data]\npcr_public_key = \"key.pem\"\n",
            "[data]\npcrs = [24]\n",
            "[data]\nencryption = \"luks1\"\n",
            "[data]\nmount_point = \"var\"\n",
            "[root]\nlayout = \"persistent\"\n",
            "[root]\ntmpfs_options = \"size=1G mode=0755\"\n",
            "[etc]\nfactory = \"usr/share/factory/etc\"\n",
            "[data]\npersist = [\"home\"]\n",
            "[data]\npersist = [\"/home/../etc\"]\n",
            "[data]\npersist = [\"/etc/ssh\"]\n",
            "[data]\npersist = [\"/var/lib/x\"]\n",
            "[data]\npersist = [\"/\"]\n",
            "not toml at all [",
        ] {
            let e = parse(bad, "cfg.toml").unwrap_err();
            assert!(
                e.to_string().starts_with("parsing cfg.toml: "),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn missing_file_is_defaults() {
        let c = load(Path::new("/nonexistent/initrd-helper.toml")).unwrap();
        assert_eq!(c, Config::default());
    }
}
