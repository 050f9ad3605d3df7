//! A test machine for the data-partition scenarios: the golden image on a
//! bigger disk of its own, its own TPM and (optionally) its own firmware
//! variable store, booted as often as a scenario needs.
#![allow(clippy::unwrap_used)]

use crate::{boot, enlarge, layout, slots_digest, Artifacts, Boot, BootOpts, Scratch, EMERGENCY};
use std::process::Command;

/// The golden image flashed onto a 4 GiB disk.
pub const DISK_BYTES: u64 = 4 << 30;

pub struct Machine {
    pub a: Artifacts,
    pub s: Scratch,
    pub disk: std::path::PathBuf,
    pub vars: Option<std::path::PathBuf>,
    /// `slots_digest` of the disk as flashed: the ESP and root slots.
    pub slots_sha256: String,
}

impl Machine {
    /// A fresh machine: the image on a bigger disk, a new TPM, and (with
    /// `uefi`) its own firmware variable store.
    pub fn new(name: &str, uefi: bool) -> Machine {
        Machine::new_for(false, name, uefi)
    }

    /// `new`, booting the PID-1 initrd when `pid1`.
    pub fn new_for(pid1: bool, name: &str, uefi: bool) -> Machine {
        let a = Artifacts::for_mode(pid1);
        let s = Scratch::new(&a.scratch_name(name));
        let disk = s.copy_disk(&a.disk);
        enlarge(&disk, DISK_BYTES);
        let vars = uefi.then(|| s.uefi_vars());
        let slots_sha256 = slots_digest(&disk, &layout(&a));
        Machine {
            a,
            s,
            disk,
            vars,
            slots_sha256,
        }
    }

    /// Every partition but the data partition is as flashed.
    pub fn slots_unchanged(&self) -> bool {
        slots_digest(&self.disk, &layout(&self.a)) == self.slots_sha256
    }

    pub fn opts<'a>(&'a self, name: &'a str, append: &'a str) -> BootOpts<'a> {
        BootOpts {
            append,
            snapshot: false,
            uefi_vars: self.vars.as_deref(),
            ..BootOpts::new(name, &self.disk, &self.s.0)
        }
    }

    /// A boot that must reach the guest report.
    pub fn boot_ok(&self, name: &str, extra: &str) -> Boot {
        self.boot_typed(name, extra, &[])
    }

    /// `boot_ok`, with `typed` on the serial console: (text to wait for,
    /// what to type then), in order.
    pub fn boot_typed(&self, name: &str, extra: &str, typed: &[(&str, &str)]) -> Boot {
        let append = format!("ih_test.poweroff {extra}");
        let o = BootOpts {
            typed: typed
                .iter()
                .map(|(w, t)| (w.to_string(), t.to_string()))
                .collect(),
            ..self.opts(name, &append)
        };
        let b = boot(&self.a, &o);
        b.check(b.reached, "the guest report never appeared");
        // PID-1 mode has no unit; its PID 1 switched root, so it succeeded.
        b.check(
            b.pid1 || b.value("helper_unit_failed") == "0",
            "initrd-helper.service failed",
        );
        b
    }

    /// A boot that must stop at the emergency target.
    pub fn boot_refused(&self, name: &str, extra: &str, tpm: bool) -> Boot {
        let append = format!("ih_test.poweroff {extra}");
        let o = BootOpts {
            marker: EMERGENCY,
            tpm,
            ..self.opts(name, &append)
        };
        boot(&self.a, &o)
    }

    /// The in-progress mark is cleared and util-linux accepts the table.
    pub fn check_table_finished(&self, b: &Boot) {
        let (_, _, attrs) = self.data_entry();
        b.check(!attrs.contains("55"), "the in-progress mark is still set");
        let ok = Command::new("sfdisk")
            .arg("--verify")
            .arg(&self.disk)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        b.check(ok.success(), "sfdisk --verify rejects the table");
    }

    /// The data partition's entry on the host: (last LBA, UUID, attributes).
    pub fn data_entry(&self) -> (u64, String, String) {
        let out = Command::new("sfdisk")
            .arg("-J")
            .arg(&self.disk)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let parts = v["partitiontable"]["partitions"].as_array().unwrap();
        let p = parts.last().unwrap();
        let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
        (
            p["start"].as_u64().unwrap() + p["size"].as_u64().unwrap() - 1,
            s("uuid"),
            s("attrs"),
        )
    }
}

/// The helper's own console lines (not the guest report's journal copy)
/// that contain `needle`.
pub fn helper_lines(b: &Boot, needle: &str) -> usize {
    b.lines_with("initrd-helper[")
        .iter()
        .filter(|l| !l.contains("IHJ ") && l.contains(needle))
        .count()
}
