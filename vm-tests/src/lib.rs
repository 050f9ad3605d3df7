//! QEMU + swtpm harness for the VM boot tests.
//!
//! Artifacts (kernel, initrd, disk) come from `build-image.sh`, named by
//! `IH_VM_DIR`. Each boot gets its own swtpm, a serial console captured to a
//! file, and a readiness marker awaited with a named timeout. Tests assert
//! through [`Boot::check`], which prints the whole console when it fails.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Long enough for a TCG boot on a loaded 2-core CI machine (~40 s idle).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Printed by the guest's ih-report unit after its last line.
pub const REPORT_DONE: &str = "IH-REPORT-END";
/// systemd's status line when the emergency target is reached.
pub const EMERGENCY: &str = "Emergency Mode";
const POLL: Duration = Duration::from_millis(250);

pub struct Artifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub disk: PathBuf,
}

impl Artifacts {
    /// Reads `IH_VM_DIR`; panics with a hint when it is unset (run `make test`).
    /// The root hash of slot `a` or `b` written by the image builder.
    pub fn roothash(&self, slot: &str) -> String {
        let p = self.disk.with_file_name(format!("roothash-{slot}"));
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
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
        }
    }
}

pub struct Boot {
    pub name: String,
    pub console: String,
    pub reached: bool,
    pub wall: Duration,
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

fn serial(o: &BootOpts, console: &Path) -> String {
    if o.interactive {
        "mon:stdio".into()
    } else {
        format!("file:{}", console.display())
    }
}

/// Prints what was added to the console since `seen` bytes.
fn echo_new(text: &str, seen: &mut usize) {
    if let Some(new) = text.get(*seen..) {
        print!("{new}");
        *seen = text.len();
    }
}

fn qemu_command(a: &Artifacts, o: &BootOpts, console: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    let drive = format!(
        "file={},if=virtio,format=raw,cache=unsafe",
        o.disk.display()
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
    .args(["-nographic", "-nodefaults", "-no-reboot"])
    .arg("-kernel")
    .arg(&a.kernel)
    .arg("-initrd")
    .arg(&a.initrd)
    .args(["-append", &format!("console=ttyS0 panic=-1 {}", o.append)])
    .args(["-drive", &drive])
    .args(["-serial", &serial(o, console)])
    .args([
        "-chardev",
        &format!("socket,id=chrtpm,path={}", sock.display()),
    ])
    .args([
        "-tpmdev",
        "emulator,id=tpm0,chardev=chrtpm",
        "-device",
        "tpm-crb,tpmdev=tpm0",
    ])
    .args(["-device", "virtio-rng-pci"])
    .stderr(Stdio::piped());
    if !o.interactive {
        c.stdin(Stdio::null()).stdout(Stdio::null());
    }
    if o.snapshot {
        c.arg("-snapshot");
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
    let mut vm = qemu_command(a, o, &console)
        .spawn()
        .unwrap_or_else(|e| panic!("starting qemu: {e}"));
    let mut reached = false;
    let mut seen = 0;
    if o.interactive {
        let _ = vm.wait();
    }
    while t.elapsed() < BOOT_TIMEOUT && !o.interactive {
        let text = fs::read_to_string(&console).unwrap_or_default();
        if o.echo {
            echo_new(&text, &mut seen);
        }
        if text.contains(o.marker) {
            reached = true;
            break;
        }
        if let Ok(Some(_)) = vm.try_wait() {
            break;
        }
        std::thread::sleep(POLL);
    }
    // Give a powering-off guest a moment to finish cleanly, then stop it.
    let stop = Instant::now();
    while stop.elapsed() < Duration::from_secs(20) && matches!(vm.try_wait(), Ok(None)) {
        std::thread::sleep(POLL);
    }
    let _ = vm.kill();
    let _ = vm.wait();
    let mut err = String::new();
    if let Some(mut e) = vm.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let _ = tpm.kill();
    let _ = tpm.wait();
    let mut text = fs::read_to_string(&console).unwrap_or_default();
    if !err.trim().is_empty() {
        text.push_str(&format!("\n--- qemu stderr ---\n{err}"));
    }
    let b = Boot {
        name: o.name.to_string(),
        console: text,
        reached,
        wall: t.elapsed(),
    };
    if !o.interactive {
        eprintln!(
            "boot {}: marker {:?} {} after {:.1} s",
            b.name,
            o.marker,
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

/// A writable copy of the test disk and its digest, for the "not a byte
/// written" checks of boots with writes enabled.
pub struct TestDisk {
    pub path: PathBuf,
    pub sha256: String,
}

impl TestDisk {
    pub fn new(s: &Scratch, a: &Artifacts) -> TestDisk {
        let path = s.copy_disk(&a.disk);
        let sha256 = sha256(&path);
        TestDisk { path, sha256 }
    }

    pub fn unchanged(&self) -> bool {
        sha256(&self.path) == self.sha256
    }
}

/// sha256 of a file, via sha256sum (the disk images are large and sparse).
pub fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap_or_else(|e| panic!("sha256sum: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// sha256 of `len` bytes at `offset` of a file (one partition of a disk
/// image), through `dd | sha256sum`.
pub fn sha256_range(p: &Path, offset: u64, len: u64) -> String {
    let script = format!(
        "dd if='{}' bs=1M iflag=skip_bytes,count_bytes skip={offset} count={len} status=none | sha256sum",
        p.display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Inverts one byte of a file in place (the tamper scenario).
pub fn flip_byte(p: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut b))
        .unwrap_or_else(|e| panic!("reading: {e}"));
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&b))
        .unwrap_or_else(|e| panic!("writing: {e}"));
}

pub fn is_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}
