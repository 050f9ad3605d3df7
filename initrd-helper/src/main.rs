//! initrd-helper: makes a golden appliance image safe to boot in stage 1.
//!
//! `run` gathers facts, plans and applies (the initrd unit calls it);
//! `plan` prints what `run` would do, touching nothing.

use initrd_helper::inputs::{self, ASSUMED_TPM};
use initrd_helper::status::Status;
use initrd_helper::{apply, log, plan, provision, sys};

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: initrd-helper run  [--cmdline STR] [--config FILE] [--root DIR]
       initrd-helper plan [--cmdline STR] [--config FILE] [--root DIR] [--disk IMAGE]... [--json]
       initrd-helper encrypt --pcrs LIST [--tcti TCTI] DEVICE
       initrd-helper status [--root DIR] [--json]
       initrd-helper request-reset [--root DIR]
       initrd-helper --version

  --cmdline STR  kernel command line (default: ROOT/proc/cmdline)
  --config FILE  config file (default: /etc/initrd-helper/config.toml; missing = defaults)
  --root DIR     where /sys, /dev and /proc are read from (default: /)
  --disk IMAGE   plan against a disk image file instead of the machine's disks
  --json         print the plan (and facts) as JSON
  --pcrs LIST    encrypt: PCRs (sha256 bank) the secret is sealed to, e.g. 7 or 7,16
  --tcti TCTI    encrypt: the TPM (default device:/dev/tpmrm0)

request-reset (stage 2) asks for a factory reset on the next boot through the
FactoryResetRequest EFI variable, as systemd 258's systemd-factory-reset does.

status prints what the helper did in this boot's initrd (ROOT/run/initrd-helper/
status.json): slots, data volume and policy, each step's outcome and time.

encrypt formats a blank DEVICE (first MiB all zero, else refused) as LUKS2
with a TPM2-sealed keyslot (systemd-tpm2 token) and a recovery keyslot, and
prints the recovery key once, as JSON on stdout.";

/// Said with every error found before any step ran: the decision to stop
/// was made on facts alone.
const NOTHING_CHANGED: &str = "refusing to boot, nothing was changed on disk";

#[derive(Default)]
struct Args {
    command: String,
    cmdline: Option<String>,
    config: Option<PathBuf>,
    root: Option<PathBuf>,
    disks: Vec<PathBuf>,
    json: bool,
    pcrs: Option<String>,
    tcti: Option<String>,
    device: Option<PathBuf>,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("cmdline") => a.cmdline = Some(p.value()?.string()?),
            Long("config") => a.config = Some(p.value()?.into()),
            Long("root") => a.root = Some(p.value()?.into()),
            Long("disk") => a.disks.push(p.value()?.into()),
            Long("json") => a.json = true,
            Long("pcrs") => a.pcrs = Some(p.value()?.string()?),
            Long("tcti") => a.tcti = Some(p.value()?.string()?),
            Long("version") => a.command = "version".into(),
            Long("help") | Short('h') => a.command = "help".into(),
            Value(v) if a.command.is_empty() => a.command = v.string()?,
            Value(v) if a.command == "encrypt" && a.device.is_none() => a.device = Some(v.into()),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(a)
}

fn print_plan(p: &plan::Plan) {
    println!(
        "boot disk: {} (GPT disk GUID {})",
        p.boot_disk, p.boot_disk_guid
    );
    for w in &p.warnings {
        println!("warning: {w}");
    }
    for (n, s) in p.steps.iter().enumerate() {
        println!("{:>2}. {:<12} {}", n + 1, s.name(), s.describe());
    }
}

fn cmd_plan(a: &Args) -> Result<()> {
    let planned = inputs::load(a.cmdline.as_deref(), a.config.as_deref(), a.root.as_deref())
        .and_then(|i| {
            let (p, facts) = inputs::plan_with_wait(&i, &a.disks, false)?;
            Ok((i, p, facts))
        });
    match (planned, a.json) {
        (Ok((i, p, facts)), true) => {
            let v =
                serde_json::json!({ "plan": p, "facts": facts, "cmdline": i.cmd, "config": i.cfg });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        (Ok((_, p, _)), false) => {
            if !a.disks.is_empty() && std::env::var_os(sys::tpm::TCTI_ENV).is_none() {
                println!("assumed: TPM2 {ASSUMED_TPM}");
            }
            print_plan(&p);
        }
        (Err(e), true) => {
            // Scripts get the refusal as JSON on stdout too.
            let v = serde_json::json!({ "error": inputs::error_line(&e) });
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Err(e);
        }
        (Err(e), false) => return Err(e),
    }
    Ok(())
}

fn cmd_encrypt(a: &Args) -> Result<()> {
    let dev = a.device.as_deref().context("encrypt needs a DEVICE")?;
    let pcrs = provision::parse_pcrs(a.pcrs.as_deref().context("encrypt needs --pcrs")?)?;
    let tcti = a
        .tcti
        .clone()
        .unwrap_or_else(|| "device:/dev/tpmrm0".into());
    let e = provision::encrypt(dev, &tcti, &pcrs)?;
    println!("{}", serde_json::to_string_pretty(&e)?);
    Ok(())
}

fn cmd_run(a: &Args) -> Result<()> {
    let t = Instant::now();
    let i = inputs::load(a.cmdline.as_deref(), a.config.as_deref(), a.root.as_deref())
        .context(NOTHING_CHANGED)?;
    log::set_debug(i.cmd.debug);
    for w in &i.cmd.warnings {
        ::log::warn!("kernel command line: {w}");
    }
    let (p, facts) = match inputs::plan_with_wait(&i, &[], true).context(NOTHING_CHANGED) {
        Ok(planned) => planned,
        Err(e) => {
            let mut status = Status::new(None, false);
            status.error = Some(inputs::error_line(&e));
            write_status(&mut status, &i.root, t);
            return Err(e);
        }
    };
    ::log::info!(
        "boot disk {} (GPT {}), TPM: {:?}",
        p.boot_disk,
        p.boot_disk_guid,
        facts.tpm
    );
    for w in &p.warnings {
        ::log::warn!("{w}");
    }
    for (n, s) in p.steps.iter().enumerate() {
        ::log::info!("plan {}/{}: {}", n + 1, p.steps.len(), s.describe());
    }
    let mut status = Status::new(Some(&p), facts.data_open);
    let applied = apply::apply(&p, &apply::Env::new(&i.root), &mut status.steps);
    status.ok = applied.is_ok();
    status.error = applied.as_ref().err().map(inputs::error_line);
    if let Some(d) = &mut status.data {
        d.recovery_used |= initrd_helper::recover::used();
    }
    write_status(&mut status, &i.root, t);
    applied?;
    ::log::info!(
        "all steps done in {:.1} ms (peak RSS {} KiB)",
        t.elapsed().as_secs_f64() * 1000.0,
        peak_rss_kib()
    );
    Ok(())
}

/// The helper's peak resident set size (VmHWM), for the figures.
/// Writes the status report; a failure to write it does not fail the boot.
fn write_status(status: &mut Status, root: &std::path::Path, t: Instant) {
    status.total_ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = status.write(root) {
        ::log::warn!("status report not written: {e}");
    }
}

fn cmd_status(a: &Args) -> Result<()> {
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let s = Status::read(&root).map_err(|e| {
        anyhow::anyhow!("no status report ({e}): the helper did not run in this boot's initrd")
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        println!("{}", s.summary());
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The C libraries' environment, set before anything runs (PID 1's
/// child inherits it).
fn set_library_env() {
    // tpm2-tss logs to stderr itself; our errors carry its cause already.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
}

/// Errors end in one line that says what failed and that nothing on disk
/// was changed by the failing decision.
fn report(e: &anyhow::Error) {
    ::log::error!("error: {}", inputs::error_line(e));
}

fn main() -> ExitCode {
    set_library_env();
    // The kernel started us as /init (PID-1 mode): its arguments are
    // leftovers of the kernel command line, not ours.
    if rustix::process::getpid().is_init() {
        initrd_helper::init::main();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("initrd-helper: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    sys::cryptlog::route_to_logger();
    let result = match args.command.as_str() {
        "run" => {
            log::init(true, false);
            cmd_run(&args)
        }
        "plan" => {
            log::init(false, false);
            cmd_plan(&args)
        }
        "encrypt" => {
            log::init(false, false);
            cmd_encrypt(&args)
        }
        "status" => {
            log::init(false, false);
            cmd_status(&args)
        }
        "request-reset" => {
            log::init(false, false);
            let root = args.root.clone().unwrap_or_else(|| PathBuf::from("/"));
            sys::request_efi_reset(&root)
                .map(|var| {
                    println!(
                        "factory reset requested for the next boot ({})",
                        var.display()
                    )
                })
                .map_err(anyhow::Error::msg)
        }
        "version" => {
            println!("initrd-helper {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        _ => {
            println!("{USAGE}");
            return ExitCode::from(if args.command == "help" { 0 } else { 2 });
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}
