//! /etc and the machine ID: the overlay on the read-only root's /etc, and
//! where the machine ID comes from (command line, data partition, random).

use super::{MachineIdSource, Step};
use crate::cmdline::Cmdline;
use crate::config::Config;

pub(super) fn etc_steps(cmd: &Cmdline, cfg: &Config, data_target: Option<&str>) -> Vec<Step> {
    let root = cfg.root.mount_point.trim_end_matches('/');
    let mut steps = Vec::new();
    if cfg.etc.overlay {
        let state = cfg.etc.state_dir.trim_end_matches('/');
        steps.push(Step::EtcOverlay {
            target: format!("{root}/etc"),
            state_dir: state.to_string(),
            upper: format!("{state}/upper"),
            work: format!("{state}/work"),
        });
    }
    let source = match (&cmd.machine_id, data_target) {
        (Some(id), _) => MachineIdSource::KernelCommandLine(id.clone()),
        (None, Some(t)) => MachineIdSource::Persisted(format!("{t}/{MACHINE_ID_FILE}")),
        (None, None) => MachineIdSource::Random,
    };
    steps.push(Step::MachineId {
        path: format!("{root}/etc/machine-id"),
        source,
    });
    steps
}

/// Where the machine ID lives on the data file system (with the default
/// mount point: /var/lib/initrd-helper/machine-id).
pub const MACHINE_ID_FILE: &str = "lib/initrd-helper/machine-id";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::testutil::*;
    use crate::plan::*;

    #[test]
    fn machine_id_from_cmdline_and_no_overlay() {
        let mut cfg = dev_cfg();
        cfg.etc.overlay = false;
        let cmd = Cmdline {
            machine_id: Some("ab".repeat(16)),
            ..Cmdline::default()
        };
        let p = plan(&facts(vec![standard_disk("vda", 1)]), &cmd, &cfg).unwrap();
        assert_eq!(p.steps.len(), 2);
        assert_eq!(
            p.steps[1],
            Step::MachineId {
                path: "/sysroot/etc/machine-id".into(),
                source: MachineIdSource::KernelCommandLine("ab".repeat(16)),
            }
        );
    }
}
