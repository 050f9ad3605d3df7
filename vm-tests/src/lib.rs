//! QEMU + swtpm harness for the VM boot tests.
//!
//! Artifacts (kernel, initrd, disk) come from `build-image.sh`, named by
//! `IH_VM_DIR`. Each boot gets its own swtpm, a serial console captured to a
//! file, and a readiness marker awaited with a named timeout. Tests assert
//! through [`Boot::check`], which prints the whole console when it fails.

use console::{echo_new, serial, serial_socket, type_on_console, Typist};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod console;
pub mod disk;
pub mod esp;
pub mod machine;
pub mod mode;
pub mod uki;

pub use disk::*;

/// Long enough for a TCG boot on a loaded 2-core CI machine (~40 s idle).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Printed by the guest's ih-report unit after its last line.
pub const REPORT_DONE: &str = "IH-REPORT-END";
/// systemd's status line when the emergency target is reached.
pub const EMERGENCY: &str = "Emergency Mode";
const POLL: Duration = Duration::from_millis(250);
const KILL_POLL: Duration = Duration::from_millis(5);

pub struct Artifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    /// The initrd is the PID-1 one (the helper as /init): a refusal ends
    /// at PID 1's failure line instead of the emergency target.
    pub pid1: bool,
}

impl Artifacts {
    /// Reads `IH_VM_DIR`; panics with a hint when it is unset (run `make test`).
    /// The root hash of slot `a` or `b` written by the image builder.
    pub fn roothash(&self, slot: &str) -> String {
        self.hash_file(&format!("roothash-{slot}"))
    }

    /// The usr slot's hash (`a` or `b`) of a hermetic-/usr image (in
    /// DISK.usrhash-SLOT beside it).
    pub fn usrhash(&self, slot: &str) -> String {
        let name = self.disk.file_name().unwrap_or_default().to_string_lossy();
        self.hash_file(&format!("{name}.usrhash-{slot}"))
    }

    fn hash_file(&self, name: &str) -> String {
        let p = self.disk.with_file_name(name);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// The hermetic-/usr image (usr A/B, no root slot) and the initrd
    /// with `root.layout = LAYOUT`'s config (build-image.sh's "usr disk"
    /// and vm-tests/config/layout-LAYOUT.toml).
    pub fn usr_from_env(layout: &str) -> Artifacts {
        Artifacts::from_env().with(layout, "usr-disk.img")
    }

    /// The same /usr laid out by systemd-repart from vm-tests/repart.d,
    /// with the tmpfs layout's initrd.
    pub fn repart_from_env() -> Artifacts {
        Artifacts::from_env().with("tmpfs", "repart-disk.img")
    }

    /// The repart image with the initrd mkosi-initrd built with our
    /// drop-in (dracut-like-modules/mkosi, the tmpfs layout's config).
    pub fn mkosi_from_env() -> Artifacts {
        Artifacts::from_env().with("mkosi", "repart-disk.img")
    }

    fn with(self, layout: &str, disk: &str) -> Artifacts {
        Artifacts {
            initrd: self.initrd.with_file_name(format!("initrd-{layout}.img")),
            disk: self.disk.with_file_name(disk),
            kernel: self.kernel,
            pid1: self.pid1,
        }
    }

    pub fn from_env() -> Artifacts {
        let dir = std::env::var("IH_VM_DIR").unwrap_or_else(|_| {
            panic!("IH_VM_DIR is not set: run the VM tests through `make test`")
        });
        let d = PathBuf::from(dir);
        Artifacts {
            kernel: d.join("vmlinuz"),
            initrd: d.join("initrd.img"),
            disk: d.join("disk.img"),
            pid1: false,
        }
    }
}

/// A scratch directory per test (under `IH_VM_SCRATCH`, default /tmp/ih-vm),
/// removed when the test passes and kept, with its consoles, when it fails.
pub struct Scratch(pub PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var("IH_VM_SCRATCH").unwrap_or_else(|_| "/tmp/ih-vm".into());
        let p = PathBuf::from(base).join(name);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Scratch(p)
    }

    /// A sparse, writable copy of a disk image.
    pub fn copy_disk(&self, src: &Path) -> PathBuf {
        let dst = self.0.join("disk.img");
        let ok = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(src)
            .arg(&dst)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "copying {} failed", src.display());
        dst
    }
}

pub struct BootOpts<'a> {
    pub name: &'a str,
    pub disk: &'a Path,
    /// Extra kernel command line after the defaults.
    pub append: &'a str,
    /// Boot with `-snapshot` (writes discarded) or write to the disk.
    pub snapshot: bool,
    /// Stop as soon as this appears on the console.
    pub marker: &'a str,
    /// swtpm state dir; kept across boots of one test.
    pub tpm_dir: &'a Path,
    /// Copy the console to stdout as it arrives (the demo).
    pub echo: bool,
    /// Serial console on this terminal, until the guest powers off.
    pub interactive: bool,
    /// A second virtio disk (the guest's /dev/vdb), writes enabled.
    pub extra_disk: Option<&'a Path>,
    /// Boot through UEFI firmware (OVMF) with this writable variable store,
    /// so the firmware measures itself and its settings into the TPM.
    pub uefi_vars: Option<&'a Path>,
    /// Attach the software TPM (false: a machine without a TPM).
    pub tpm: bool,
    /// Kill QEMU the moment the marker appears (a power cut), instead of
    /// letting the guest power off.
    pub kill_at_marker: bool,
    /// With `kill_at_marker`: how long after the marker the cut comes.
    pub kill_delay: Duration,
    /// QEMU's cache mode for the boot disk. "unsafe" (fast) ignores the
    /// guest's flushes; the power-cut matrix uses "writeback", which
    /// honours them.
    pub cache: &'a str,
    /// The SMBIOS system UUID the firmware reports (QEMU `-uuid`; without
    /// it QEMU reports all zeros).
    pub smbios_uuid: Option<&'a str>,
    /// Boot this UKI through the firmware (needs `uefi_vars`): its own
    /// initrd and command line, nothing from `Artifacts` or `append`.
    pub uki: Option<&'a Path>,
    /// Typed on the serial console, in order: each text once its console
    /// text has appeared (a person answering a prompt).
    pub typed: Vec<(String, String)>,
    /// Boot through the firmware from the disk's ESP (systemd-boot picks
    /// the UKI; needs `uefi_vars`): nothing from `Artifacts` or `append`.
    pub esp: bool,
    /// A host directory the guest can mount read-only (virtio 9p, tag
    /// `ih-update`): the update payload.
    pub share: Option<&'a Path>,
    /// Let a guest reboot run on in the same QEMU (the firmware, boot
    /// loader and TPM go through a reset), instead of ending the boot.
    pub reboot: bool,
}

impl<'a> BootOpts<'a> {
    /// Defaults for a test boot: writes discarded, report marker, quiet.
    pub fn new(name: &'a str, disk: &'a Path, tpm_dir: &'a Path) -> Self {
        BootOpts {
            name,
            disk,
            append: "ih_test.poweroff",
            snapshot: true,
            marker: REPORT_DONE,
            tpm_dir,
            echo: false,
            interactive: false,
            extra_disk: None,
            uefi_vars: None,
            tpm: true,
            kill_at_marker: false,
            kill_delay: Duration::ZERO,
            cache: "unsafe",
            smbios_uuid: None,
            uki: None,
            typed: Vec::new(),
            esp: false,
            share: None,
            reboot: false,
        }
    }
}

/// OVMF's code (4 MiB build, Secure Boot capable, no SMM needed).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

impl Scratch {
    /// A fresh copy of OVMF's empty variable store for this test.
    pub fn uefi_vars(&self) -> PathBuf {
        let p = self.0.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &p).unwrap_or_else(|e| panic!("copying {OVMF_VARS}: {e}"));
        p
    }
}

/// A Secure Boot forbidden-signatures (dbx) update, as firmware updates
/// ship them: one more revoked hash in the variable store. OVMF measures
/// dbx into PCR 7, so a policy bound to PCR 7 no longer matches. Uses
/// virt-fw-vars (python virt-firmware, installed by scripts/install-deps.sh).
pub fn dbx_update(vars: &Path) {
    let tool = std::env::var("IH_VIRT_FW_VARS").unwrap_or_else(|_| "virt-fw-vars".into());
    let out = Command::new(&tool)
        .arg("--inplace")
        .arg(vars)
        .args([
            "--add-dbx-hash",
            "a0347a3f-9ca1-4a7b-8fb8-3a8d1b9c4e21",
            "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a disk image file `bytes` long (sparse): the golden image flashed
/// onto a bigger disk.
pub fn enlarge(disk: &Path, bytes: u64) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .unwrap_or_else(|e| panic!("{}: {e}", disk.display()));
    f.set_len(bytes)
        .unwrap_or_else(|e| panic!("enlarging {}: {e}", disk.display()));
}

pub struct Boot {
    pub name: String,
    pub console: String,
    pub reached: bool,
    pub wall: Duration,
    /// Booted the PID-1 initrd.
    pub pid1: bool,
}

fn spawn_swtpm(dir: &Path) -> Child {
    let sock = dir.join("swtpm.sock");
    let _ = fs::remove_file(&sock);
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", sock.display()))
        // Its own errors, kept beside the consoles (a failed test keeps the dir).
        .arg("--log")
        .arg(format!("file={},level=1", dir.join("swtpm.log").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting swtpm: {e}"));
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sock.exists(), "swtpm did not create {}", sock.display());
    child
}

/// `-accel kvm` only when asked for: KVM hangs on these machines (vm-notes).
fn accel() -> String {
    std::env::var("IH_VM_ACCEL").unwrap_or_else(|_| "tcg".into())
}

fn qemu_command(a: &Artifacts, o: &BootOpts, console: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let drive = format!(
        "file={},if=virtio,format=raw,cache={}",
        o.disk.display(),
        o.cache
    );
    let sock = o.tpm_dir.join("swtpm.sock");
    c.args([
        "-machine",
        "q35",
        "-accel",
        &accel(),
        "-smp",
        "2",
        "-m",
        "1024",
    ])
    .args(["-nographic", "-nodefaults"]);
    if !o.reboot {
        c.arg("-no-reboot");
    }
    if o.esp {
        assert!(o.uefi_vars.is_some(), "an ESP boots through the firmware");
    } else if let Some(uki) = o.uki {
        // No -append: it would replace the UKI's .cmdline (and be measured
        // into PCR 12 instead).
        assert!(o.uefi_vars.is_some(), "a UKI boots through the firmware");
        c.arg("-kernel").arg(uki);
    } else {
        c.arg("-kernel")
            .arg(&a.kernel)
            .arg("-initrd")
            .arg(&a.initrd)
            .args(["-append", &format!("console=ttyS0 panic=-1 {}", o.append)]);
    }
    if !o.typed.is_empty() {
        // Input and output on the socket: the harness copies the output
        // into the console file (console::attach); QEMU waits for it.
        let dev = format!(
            "socket,id=ser0,path={},server=on,wait=on",
            serial_socket(o).display()
        );
        c.args(["-chardev", &dev]);
    }
    c.args(["-drive", &drive])
        .args(["-serial", &serial(o, console)])
        .args(["-device", "virtio-rng-pci"])
        .args(o.smbios_uuid.iter().flat_map(|u| ["-uuid", u]))
        .stderr(Stdio::piped());
    if !o.interactive {
        c.stdin(Stdio::null()).stdout(Stdio::null());
    }
    if o.snapshot {
        c.arg("-snapshot");
    }
    if o.tpm {
        c.args([
            "-chardev",
            &format!("socket,id=chrtpm,path={}", sock.display()),
        ])
        .args([
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-crb,tpmdev=tpm0",
        ]);
    }
    if let Some(vars) = o.uefi_vars {
        c.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    if let Some(dir) = o.share {
        // A fixed PCI slot: auto-numbered, it would take the boot disk's
        // slot, and the firmware's saved boot entry would then point at
        // the share on the next boot.
        let fs = format!(
            "local,id=upd,path={},security_model=none,readonly=on",
            dir.display()
        );
        c.args(["-fsdev", &fs]).args([
            "-device",
            "virtio-9p-pci,fsdev=upd,mount_tag=ih-update,addr=0x1e",
        ]);
    }
    if let Some(d) = o.extra_disk {
        // Own drive options: -snapshot must not hide what the guest writes here.
        let drive = format!(
            "file={},if=virtio,format=raw,cache=unsafe,snapshot=off",
            d.display()
        );
        c.args(["-drive", &drive]);
    }
    c
}

/// Boots once and returns when the marker appears, QEMU exits, or the
/// timeout passes. QEMU is always killed before returning.
pub fn boot(a: &Artifacts, o: &BootOpts) -> Boot {
    let console = o.tpm_dir.join(format!("{}.console", o.name));
    let _ = fs::remove_file(&console);
    let mut tpm = spawn_swtpm(o.tpm_dir);
    let t = Instant::now();
    let marker = mode::marker(a, o.marker);
    let mut vm = qemu_command(a, o, &console)
        .spawn()
        .unwrap_or_else(|e| panic!("starting qemu: {e}"));
    let mut reached = false;
    let mut seen = 0;
    let mut typist = Typist::default();
    if !o.typed.is_empty() {
        typist.conn = Some(console::attach(o, &console));
    }
    if o.interactive {
        let _ = vm.wait();
    }
    while t.elapsed() < BOOT_TIMEOUT && !o.interactive {
        let text = fs::read_to_string(&console).unwrap_or_default();
        if o.echo {
            echo_new(&text, &mut seen);
        }
        type_on_console(o, &text, &mut typist);
        if text.contains(marker) {
            reached = true;
            break;
        }
        if let Ok(Some(_)) = vm.try_wait() {
            break;
        }
        // A power cut must land right after its marker.
        std::thread::sleep(if o.kill_at_marker { KILL_POLL } else { POLL });
    }
    // Give a powering-off guest a moment to finish cleanly, then stop it.
    let stop = Instant::now();
    // Only a guest past its report powers off by itself: one stopped at
    // a refusal (emergency target, PID 1's failure line) never does, and
    // waiting for it would only cost time.
    let grace = if o.kill_at_marker {
        std::thread::sleep(o.kill_delay);
        Duration::ZERO
    } else if marker == REPORT_DONE {
        Duration::from_secs(20)
    } else {
        Duration::ZERO
    };
    while stop.elapsed() < grace && matches!(vm.try_wait(), Ok(None)) {
        std::thread::sleep(POLL);
    }
    let _ = vm.kill();
    let _ = vm.wait();
    let mut err = String::new();
    if let Some(mut e) = vm.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    // swtpm ends by itself once QEMU is gone; a moment's grace lets it
    // finish writing its state, as a TPM's NV writes are atomic.
    let gone = Instant::now();
    while gone.elapsed() < Duration::from_secs(2) && matches!(tpm.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = tpm.kill();
    let _ = tpm.wait();
    let mut text = fs::read_to_string(&console).unwrap_or_default();
    if !err.trim().is_empty() {
        text.push_str(&format!("\n--- qemu stderr ---\n{err}"));
    }
    let swtpm = fs::read_to_string(o.tpm_dir.join("swtpm.log")).unwrap_or_default();
    if !swtpm.trim().is_empty() {
        text.push_str(&format!("\n--- swtpm log ---\n{swtpm}"));
    }
    let b = Boot {
        name: o.name.to_string(),
        console: text,
        reached,
        wall: t.elapsed(),
        pid1: a.pid1,
    };
    if !o.interactive {
        eprintln!(
            "boot {}: marker {:?} {} after {:.1} s",
            b.name,
            marker,
            if reached { "seen" } else { "NOT seen" },
            b.wall.as_secs_f64()
        );
    }
    b
}

impl Boot {
    /// Asserts `cond`; on failure prints the whole console first.
    pub fn check(&self, cond: bool, what: &str) {
        if !cond {
            eprintln!(
                "===== console of boot {} =====\n{}\n===== end of console =====",
                self.name, self.console
            );
            panic!("boot {}: {what}", self.name);
        }
    }

    /// The guest's `IHR key=value` report lines.
    pub fn report(&self) -> BTreeMap<String, String> {
        self.console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once("IHR "))
            .filter_map(|(_, kv)| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// A report value, failing the test (with the console) when absent.
    pub fn value(&self, key: &str) -> String {
        let r = self.report();
        self.check(r.contains_key(key), &format!("report has no {key:?}"));
        r.get(key).cloned().unwrap_or_default()
    }

    /// Each `(key, value, what is wrong otherwise)` holds in the report.
    pub fn expect(&self, cases: &[(&str, &str, &str)]) {
        let r = self.report();
        for (key, want, wrong) in cases {
            let got = r.get(*key).map(String::as_str);
            self.check(got == Some(*want), &format!("{wrong} ({key}={got:?})"));
        }
    }

    /// The boot stopped at the emergency target, before stage 2, with
    /// exactly one error line from the helper that contains every needle.
    pub fn check_refused(&self, needles: &[&str]) {
        self.check(
            self.reached,
            "the boot did not stop at the emergency target",
        );
        self.check(
            self.lines_with("IH-REPORT-BEGIN").is_empty(),
            "the system booted past the initrd",
        );
        let errors: Vec<String> = self
            .lines_with("initrd-helper[")
            .into_iter()
            .filter(|l| l.contains("error:"))
            .collect();
        self.check(
            errors.len() == 1,
            "expected exactly one error line from the helper",
        );
        for n in needles {
            self.check(
                errors[0].contains(n),
                &format!("the error line does not say {n:?}"),
            );
        }
    }

    /// Console lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.console
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}
