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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootConfig {
    /// Without `roothash=`: `refuse` (default) or `mount-read-only`.
    pub unverified: Unverified,
    /// Where the root is mounted; systemd's initrd switches into it.
    pub mount_point: String,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
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
}

impl Default for EtcConfig {
    fn default() -> Self {
        EtcConfig {
            overlay: true,
            state_dir: "/run/initrd-helper/etc".into(),
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: RootConfig,
    pub etc: EtcConfig,
    pub devices: DevicesConfig,
}

/// Parses config text; `path` is only used in error messages.
pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
    let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.message().to_string(),
    })?;
    validate(&cfg).map_err(|message| ConfigError::Parse {
        path: path.into(),
        message,
    })?;
    Ok(cfg)
}

fn validate(cfg: &Config) -> Result<(), String> {
    for (name, p) in [
        ("root.mount_point", &cfg.root.mount_point),
        ("etc.state_dir", &cfg.etc.state_dir),
    ] {
        if !p.starts_with('/') {
            return Err(format!("{name} = {p:?}: must be an absolute path"));
        }
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
        assert!(!c.etc.overlay);
        assert_eq!(c.root.mount_point, "/sysroot");
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
