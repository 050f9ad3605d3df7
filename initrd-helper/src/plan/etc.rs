//! /etc and the machine ID: the overlay on the read-only root's /etc, and
//! where the machine ID comes from: the command line, the data partition,
//! else the firmware (SMBIOS product UUID), else a random one per boot.

use super::{MachineIdSource, Step};
use crate::cmdline::{Cmdline, MachineIdArg};
use crate::config::{Config, Layout};
use crate::facts::Facts;
use crate::machine_id;

/// The /etc and machine-id steps; `data_state`: our state directory on
/// the data partition, if there is one.
pub(super) fn etc_steps(
    cmd: &Cmdline,
    cfg: &Config,
    facts: &Facts,
    data_state: Option<&str>,
    warnings: &mut Vec<String>,
) -> Vec<Step> {
    let root = cfg.root.mount_point.trim_end_matches('/');
    let mut steps = Vec::new();
    // A hermetic /usr image has no /etc: its factory copy is the lower layer.
    let factory = format!("{root}{}", cfg.etc.factory.trim_end_matches('/'));
    let lower = match cfg.root.layout {
        Layout::Slot => Some(format!("{root}/etc")),
        Layout::Tmpfs => Some(factory),
        // A writable root keeps its own /etc, seeded once from the factory.
        Layout::Data => {
            steps.push(Step::EtcSeed {
                from: factory,
                to: format!("{root}/etc"),
            });
            None
        }
    };
    if let (true, Some(lower)) = (cfg.etc.overlay, lower) {
        let state = cfg.etc.state_dir.trim_end_matches('/');
        steps.push(Step::EtcOverlay {
            target: format!("{root}/etc"),
            lower,
            state_dir: state.to_string(),
            upper: format!("{state}/upper"),
            work: format!("{state}/work"),
        });
    }
    if !cfg.etc.overlay && cfg.root.layout == Layout::Tmpfs {
        warnings.push(
            "etc.overlay = false with root.layout = \"tmpfs\": /etc starts empty (the factory \
             copy is only used as the overlay's lower layer)"
                .into(),
        );
    }
    let firmware = || match machine_id::from_firmware(facts.product_uuid.as_deref()) {
        Ok(id) => (MachineIdSource::Firmware(id), None),
        Err(why) => (
            MachineIdSource::Random,
            Some(format!(
                "{why}: the machine-id is random, a new one on every boot"
            )),
        ),
    };
    let (source, warning) = match (&cmd.machine_id, data_state) {
        (Some(MachineIdArg::Fixed(id)), _) => {
            (MachineIdSource::KernelCommandLine(id.clone()), None)
        }
        (Some(MachineIdArg::Firmware), _) | (None, None) => firmware(),
        (None, Some(state)) => (
            MachineIdSource::Persisted(format!("{state}/machine-id")),
            None,
        ),
    };
    warnings.extend(warning);
    steps.push(Step::MachineId {
        path: format!("{root}/etc/machine-id"),
        source,
    });
    steps
}

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
            machine_id: Some(MachineIdArg::Fixed("ab".repeat(16))),
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

    fn machine_id_source(p: &Plan) -> &MachineIdSource {
        match p.steps.last() {
            Some(Step::MachineId { source, .. }) => source,
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn without_a_data_partition_the_firmware_names_the_machine() {
        let mut f = facts(vec![standard_disk("vda", 1)]);
        f.product_uuid = Some("8E1D5F5A-1B2C-4D3E-9F00-0123456789AB".into());
        let p = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap();
        assert_eq!(
            machine_id_source(&p),
            &MachineIdSource::Firmware("8e1d5f5a1b2c4d3e9f000123456789ab".into())
        );
        assert!(
            !p.warnings.iter().any(|w| w.contains("machine-id")),
            "{:?}",
            p.warnings
        );
        // A placeholder (or none) is no identity: random, and said so.
        f.product_uuid = Some("03000200-0400-0500-0006-000700080009".into());
        let p = plan(&f, &Cmdline::default(), &dev_cfg()).unwrap();
        assert_eq!(machine_id_source(&p), &MachineIdSource::Random);
        assert!(
            p.warnings.iter().any(|w| w.contains("placeholder")),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn systemd_machine_id_firmware_wins_over_the_data_partition() {
        let mut f = facts(vec![standard_disk("vda", 1)]);
        f.tpm = crate::facts::TpmFacts::Present {
            manufacturer: "test".into(),
        };
        f.product_uuid = Some("8e1d5f5a-1b2c-4d3e-9f00-0123456789ab".into());
        let mut cfg = dev_cfg();
        cfg.data.enabled = true;
        let p = plan(&f, &Cmdline::default(), &cfg).unwrap();
        assert!(matches!(
            machine_id_source(&p),
            MachineIdSource::Persisted(_)
        ));
        let cmd = Cmdline {
            machine_id: Some(MachineIdArg::Firmware),
            ..Cmdline::default()
        };
        let p = plan(&f, &cmd, &cfg).unwrap();
        assert!(matches!(
            machine_id_source(&p),
            MachineIdSource::Firmware(_)
        ));
    }
}
