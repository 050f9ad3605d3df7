//! The one environment value every path a step touches goes through: `/`
//! on a real boot, a temporary directory in tests (and `run --root DIR`).
//! A plan names paths as the booted machine sees them; [`Env::resolve`]
//! maps a whole step under the root before it is applied, so no step can
//! reach a path the environment did not give it.

use crate::plan::{Bind, DataStep, MachineIdSource, SlotMount, Step};
use crate::verity::Signature;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Env {
    root: PathBuf,
}

impl Env {
    pub fn new(root: impl Into<PathBuf>) -> Env {
        Env { root: root.into() }
    }

    /// `p` (absolute, as the machine sees it) under the root.
    pub fn at(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    fn s(&self, p: &str) -> String {
        self.at(p).display().to_string()
    }

    fn mount(&self, m: &SlotMount) -> SlotMount {
        SlotMount {
            source: self.at(&m.source),
            target: self.s(&m.target),
            ..m.clone()
        }
    }

    /// The step with each of its paths under the root.
    pub fn resolve(&self, step: &Step) -> Step {
        match step {
            Step::ActivateVerity {
                name,
                data,
                hash,
                roothash,
                label,
                options,
            } => {
                let mut options = options.clone();
                if let Some(Signature::Path(p)) = &options.signature {
                    options.signature = Some(Signature::Path(self.s(p)));
                }
                Step::ActivateVerity {
                    name: name.clone(),
                    data: self.at(data),
                    hash: self.at(hash),
                    roothash: roothash.clone(),
                    label: label.clone(),
                    options,
                }
            }
            Step::MountRoot(m) => Step::MountRoot(self.mount(m)),
            Step::MountUsr(m) => Step::MountUsr(self.mount(m)),
            Step::TmpfsRoot { target, options } => Step::TmpfsRoot {
                target: self.s(target),
                options: options.clone(),
            },
            Step::Skeleton { target } => Step::Skeleton {
                target: self.s(target),
            },
            Step::Persist { binds } => Step::Persist {
                binds: binds
                    .iter()
                    .map(|b| Bind {
                        from: self.s(&b.from),
                        to: self.s(&b.to),
                    })
                    .collect(),
            },
            Step::EtcSeed { from, to } => Step::EtcSeed {
                from: self.s(from),
                to: self.s(to),
            },
            Step::EtcOverlay {
                target,
                lower,
                state_dir,
                upper,
                work,
            } => Step::EtcOverlay {
                target: self.s(target),
                lower: self.s(lower),
                state_dir: self.s(state_dir),
                upper: self.s(upper),
                work: self.s(work),
            },
            Step::Data(d) => Step::Data(DataStep {
                disk: self.at(&d.disk),
                dev: self.at(&d.dev),
                target: self.s(&d.target),
                state: self.s(&d.state),
                ..d.clone()
            }),
            Step::MachineId { path, source } => Step::MachineId {
                path: self.s(path),
                source: match source {
                    MachineIdSource::Persisted(f) => MachineIdSource::Persisted(self.s(f)),
                    other => other.clone(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_of_a_step_goes_under_the_root() {
        let env = Env::new("/tmp/t");
        assert_eq!(env.at("/sysroot/etc"), Path::new("/tmp/t/sysroot/etc"));
        assert_eq!(Env::new("/").at("/dev/vda2"), Path::new("/dev/vda2"));
        let s = env.resolve(&Step::EtcOverlay {
            target: "/sysroot/etc".into(),
            lower: "/sysroot/usr/share/factory/etc".into(),
            state_dir: "/run/x".into(),
            upper: "/run/x/upper".into(),
            work: "/run/x/work".into(),
        });
        let text = serde_json::to_string(&s).unwrap();
        // Every path-valued field (all of them here) now starts with the root.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for (k, f) in v.as_object().unwrap() {
            if k != "step" {
                assert!(f.as_str().unwrap().starts_with("/tmp/t/"), "{k}: {f}");
            }
        }
    }
}
