//! PID-1 mode: the helper as /init of a minimal initrd, with no systemd
//! and no udev. PID 1 mounts the API file systems, loads the build-time
//! module list, runs `initrd-helper run` as a supervised child (a crash
//! there is a failed boot, not a kernel panic), and then switches root to
//! /sysroot and executes the real init; on failure it follows
//! `initrd_helper.on_failure=` and never exits.

use crate::pid1::{self, OnFailure};
use crate::{cmdline, sys};
use std::path::Path;
use std::time::{Duration, Instant};

/// The module list the initrd builder writes.
pub const MODULES_LIST: &str = "/etc/initrd-helper/modules.list";
/// Long enough to read the error before a reboot.
const REBOOT_PAUSE: Duration = Duration::from_secs(10);

/// PID 1's whole life in the initrd. Never returns.
pub fn main() -> ! {
    let t = Instant::now();
    // Nothing can be logged before /dev exists; the kernel prints the
    // panic that a PID-1 exit would cause, so keep going instead.
    let mounted = sys::init::mount_api();
    crate::log::init(true, false);
    if let Err(e) = mounted {
        fail(
            OnFailure::Wait,
            &format!("mounting the API file systems: {e}"),
        );
    }
    std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // No udev: libdevmapper makes its /dev/mapper nodes itself.
    std::env::set_var("DM_DISABLE_UDEV", "1");
    let cmd = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| cmdline::parse(&c).ok())
        .unwrap_or_default();
    let policy = cmd.on_failure.unwrap_or_default();
    load_modules(Path::new(MODULES_LIST));
    if let Err(e) = sys::init::mount_efivars() {
        ::log::warn!(
            "PID 1: no EFI variables ({e}): the boot loader's disk and reset requests are not seen"
        );
    }
    ::log::info!(
        "PID 1: ready to run the helper after {:.1} ms",
        ms(t.elapsed())
    );
    let exe = std::env::current_exe().unwrap_or_else(|_| "/init".into());
    match sys::init::run_supervised(&exe, &["run"]) {
        Ok(Some(0)) => {}
        Ok(Some(code)) => fail(policy, &format!("the helper failed (exit status {code})")),
        Ok(None) => fail(policy, "the helper was killed by a signal"),
        Err(e) => fail(policy, &format!("starting the helper: {e}")),
    }
    let init = pid1::init_path(cmd.init.as_deref());
    ::log::info!(
        "PID 1: switching root to /sysroot, init {init}, {:.1} ms after /init started",
        ms(t.elapsed())
    );
    let e = sys::init::switch_root(Path::new("/sysroot"), init);
    fail(policy, &format!("switching root to /sysroot ({init}): {e}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loads the listed modules, one dependency level at a time, the modules
/// of a level in parallel. A module that fails is logged and skipped: a
/// missing driver then shows up as the helper's own clear error.
fn load_modules(list: &Path) {
    let t = Instant::now();
    let text = match std::fs::read_to_string(list) {
        Ok(s) => s,
        Err(e) => {
            ::log::warn!("PID 1: no module list ({}: {e})", list.display());
            return;
        }
    };
    let mods = match pid1::parse_modules(&text).and_then(|m| pid1::levels(&m).map(|l| (m, l))) {
        Ok(ml) => ml,
        Err(e) => {
            ::log::warn!("PID 1: module list {}: {e}; loading none", list.display());
            return;
        }
    };
    let (mods, levels) = mods;
    let base = Path::new("/lib/modules").join(sys::init::kernel_release());
    let mut counts = [0usize; 3];
    for level in &levels {
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = level
                .iter()
                .map(|&i| {
                    let p = base.join(&mods[i].path);
                    s.spawn(move || (sys::init::load_module(&p), p))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (r, p) in results {
            match r {
                Ok(sys::init::Loaded::Now) => counts[0] += 1,
                Ok(sys::init::Loaded::Already) => counts[1] += 1,
                Ok(sys::init::Loaded::NotForThisMachine) => {
                    counts[2] += 1;
                    ::log::debug!("PID 1: {} is not for this machine", p.display());
                }
                Err(e) => ::log::warn!("PID 1: loading {}: {e}", p.display()),
            }
        }
    }
    ::log::info!(
        "PID 1: loaded {} modules ({} built in or loaded, {} not for this machine) in {} levels, {:.1} ms",
        counts[0],
        counts[1],
        counts[2],
        levels.len(),
        ms(t.elapsed())
    );
}

/// The boot failed: one line says why and what happens next, then the
/// policy. PID 1 never exits (the kernel would panic, and with panic=-1
/// reboot, in a loop).
fn fail(policy: OnFailure, why: &str) -> ! {
    let next = match policy {
        OnFailure::Wait => {
            "waiting (initrd_helper.on_failure=wait); fix the cause and reset the machine"
        }
        OnFailure::Reboot => "rebooting in 10 s (initrd_helper.on_failure=reboot)",
        OnFailure::Poweroff => "powering off in 10 s (initrd_helper.on_failure=poweroff)",
        OnFailure::Halt => "halting in 10 s (initrd_helper.on_failure=halt)",
    };
    ::log::error!("PID 1: the boot failed: {why}; {next}");
    if policy != OnFailure::Wait {
        sleep_reaping(REBOOT_PAUSE);
        let e = sys::init::power(policy);
        ::log::error!("PID 1: {next} failed: {e}; waiting");
    }
    loop {
        sleep_reaping(Duration::from_secs(3600));
    }
}

fn sleep_reaping(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        sys::init::reap();
        std::thread::sleep(Duration::from_millis(500).min(d));
    }
}
