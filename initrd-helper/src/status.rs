//! The boot's status for stage 2: one JSON file the helper writes at the end
//! of its run, success or not (`/run/initrd-helper/status.json`, which
//! survives switch-root), and `initrd-helper status` to read it. Written
//! through a temporary name and renamed, so a reader never sees half of it.

use crate::plan::{DataAction, Plan, Step};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the status is kept (under the run's root).
pub const STATUS_FILE: &str = "run/initrd-helper/status.json";
/// Bumped when a field changes meaning or goes away.
pub const FORMAT_VERSION: u32 = 1;
/// Largest status file `status` reads back.
const MAX_STATUS: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub format: u32,
    /// Every step done (or skipped because its effect held).
    pub ok: bool,
    /// The one error line, when not ok.
    pub error: Option<String>,
    pub boot_disk: Option<String>,
    /// The verified slots mounted (root and /usr).
    pub slots: Vec<SlotStatus>,
    pub data: Option<DataStatus>,
    pub steps: Vec<StepStatus>,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// `root` or `usr`.
    pub kind: String,
    pub label: String,
    /// The label's version (`appliance_2` -> `2`), when it has one.
    pub version: Option<String>,
    pub partuuid: String,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataStatus {
    pub device: String,
    /// `provision`, `open` or `reset` (an open with a reset request).
    pub action: String,
    /// The TPM policy, as `plan` prints it.
    pub policy: String,
    pub literal_pcrs: Vec<u8>,
    /// The signed policy's PCRs and key fingerprint, when signed.
    pub signed_pcrs: Vec<u8>,
    pub signed_key: Option<String>,
    /// The volume was opened with the recovery key: typed at the helper's
    /// prompt, or by hand before the helper ran.
    pub recovery_used: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStatus {
    pub name: String,
    /// `done`, `skipped` or `failed`.
    pub outcome: String,
    pub ms: f64,
    /// What was done, why it was skipped, or the error.
    pub text: String,
}

fn version_of(label: &str) -> Option<String> {
    label
        .rsplit_once('_')
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

impl Status {
    /// The status of a run of `plan` (or of a run that made none).
    pub fn new(plan: Option<&Plan>, data_open: bool) -> Status {
        let mut s = Status {
            format: FORMAT_VERSION,
            ok: false,
            error: None,
            boot_disk: plan.map(|p| p.boot_disk.clone()),
            slots: Vec::new(),
            data: None,
            steps: Vec::new(),
            total_ms: 0.0,
        };
        for step in plan.map_or(&[][..], |p| &p.steps) {
            match step {
                Step::MountRoot(m) | Step::MountUsr(m) => s.slots.push(SlotStatus {
                    kind: if matches!(step, Step::MountRoot(_)) {
                        "root"
                    } else {
                        "usr"
                    }
                    .into(),
                    label: m.label.clone(),
                    version: version_of(&m.label),
                    partuuid: m.partuuid.to_string(),
                    source: m.source.display().to_string(),
                }),
                Step::Data(d) => {
                    let signed = d.policy.signed.as_deref();
                    s.data = Some(DataStatus {
                        device: d.dev.display().to_string(),
                        action: match (&d.action, &d.reset) {
                            (DataAction::Provision(_), _) => "provision",
                            (DataAction::Open, Some(_)) => "reset",
                            (DataAction::Open, None) => "open",
                        }
                        .into(),
                        policy: d.policy.describe(),
                        literal_pcrs: d.policy.literal.clone(),
                        signed_pcrs: signed.map(|s| s.pcrs.clone()).unwrap_or_default(),
                        signed_key: signed.map(|s| s.pkfp.clone()),
                        recovery_used: data_open,
                    })
                }
                _ => {}
            }
        }
        s
    }

    /// Writes the status under `root` (tmp + rename).
    pub fn write(&self, root: &Path) -> std::io::Result<PathBuf> {
        let p = root.join(STATUS_FILE);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, &p)?;
        Ok(p)
    }

    /// Reads the status a run under `root` wrote.
    pub fn read(root: &Path) -> Result<Status, String> {
        let p = root.join(STATUS_FILE);
        let b = crate::sys::read_bounded(&p, MAX_STATUS)?;
        serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// The human summary `initrd-helper status` prints.
    pub fn summary(&self) -> String {
        let mut out = vec![format!(
            "stage 1: {} in {:.0} ms{}",
            if self.ok { "ok" } else { "FAILED" },
            self.total_ms,
            self.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )];
        for s in &self.slots {
            out.push(format!(
                "{} slot: {} (version {}) from {}",
                s.kind,
                s.label,
                s.version.as_deref().unwrap_or("-"),
                s.source
            ));
        }
        if let Some(d) = &self.data {
            out.push(format!(
                "data: {} {} under {}{}",
                d.action,
                d.device,
                d.policy,
                if d.recovery_used {
                    " (opened with the recovery key)"
                } else {
                    ""
                }
            ));
        }
        for st in &self.steps {
            out.push(format!(
                "step {:<12} {:<8} {:>8.1} ms  {}",
                st.name, st.outcome, st.ms, st.text
            ));
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_slot_and_the_data_volume_of_the_plan() {
        use crate::facts::TpmFacts;
        use crate::plan::testutil::*;
        let mut d = standard_disk("vda", 1);
        d.partitions[5].signature = Some(Ok(crate::sys::blkid::Signature::None));
        let mut f = facts(vec![d]);
        f.tpm = TpmFacts::Present {
            manufacturer: "IBM".into(),
        };
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        let p = crate::plan::plan(&f, &Default::default(), &cfg).unwrap();
        let s = Status::new(Some(&p), false);
        assert_eq!(s.boot_disk.as_deref(), Some("vda"));
        let root = &s.slots[0];
        assert_eq!(
            (root.kind.as_str(), root.version.as_deref()),
            ("root", Some("1"))
        );
        let data = s.data.unwrap();
        assert_eq!(
            (data.action.as_str(), data.literal_pcrs),
            ("provision", vec![7])
        );
        assert_eq!((data.signed_key, data.recovery_used), (None, false));
    }

    #[test]
    fn status_round_trips_through_its_file() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Status::new(None, false);
        s.ok = true;
        s.total_ms = 12.5;
        s.steps.push(StepStatus {
            name: "verity".into(),
            outcome: "done".into(),
            ms: 3.0,
            text: "open dm-verity".into(),
        });
        let p = s.write(d.path()).unwrap();
        assert!(p.ends_with("run/initrd-helper/status.json"));
        let back = Status::read(d.path()).unwrap();
        assert_eq!(back, s);
        let text = back.summary();
        assert!(text.starts_with("stage 1: ok in 12 ms"), "{text}");
        assert!(text.contains("step verity"), "{text}");
        std::fs::write(&p, "{").unwrap();
        assert!(Status::read(d.path()).is_err());
        assert_eq!(version_of("appliance_2").as_deref(), Some("2"));
        assert_eq!(version_of("root"), None);
    }
}
