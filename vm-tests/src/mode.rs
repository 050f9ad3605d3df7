//! The two stage-1 modes the scenarios run in, as a matrix: the dracut
//! initrd (systemd + udev + our module) and the PID-1 initrd (the helper
//! as /init, built by dracut-like-modules/pid1/mkinitrd.sh).

use crate::{Artifacts, EMERGENCY};

/// PID 1's line when the boot failed (its counterpart of the emergency
/// target).
pub const PID1_FAILED: &str = "PID 1: the boot failed";

impl Artifacts {
    /// The default artifacts with the PID-1 initrd.
    pub fn pid1_from_env() -> Artifacts {
        let a = Artifacts::from_env();
        Artifacts {
            initrd: a.initrd.with_file_name("initrd-pid1.img"),
            pid1: true,
            ..a
        }
    }

    /// `from_env` or `pid1_from_env`.
    pub fn for_mode(pid1: bool) -> Artifacts {
        if pid1 {
            Artifacts::pid1_from_env()
        } else {
            Artifacts::from_env()
        }
    }

    /// A scratch name that differs per mode.
    pub fn scratch_name(&self, name: &str) -> String {
        if self.pid1 {
            format!("pid1_{name}")
        } else {
            name.to_string()
        }
    }
}

/// The console text a boot waits for: a refusal is PID 1's failure line
/// in PID-1 mode, the emergency target otherwise.
pub fn marker<'m>(a: &Artifacts, wanted: &'m str) -> &'m str {
    if a.pid1 && wanted == EMERGENCY {
        PID1_FAILED
    } else {
        wanted
    }
}
