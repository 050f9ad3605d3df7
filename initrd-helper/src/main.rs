//! initrd-helper: makes a golden appliance image safe to boot in stage 1.
//!
//! `run` gathers facts, plans and applies (the initrd unit calls it);
//! `plan` prints what `run` would do, touching nothing.

mod apply;
mod b64;
mod cmdline;
mod config;
mod data;
mod dps;
mod facts;
mod gpt;
mod gpt_grow;
mod guid;
mod hex;
mod log;
mod machine_id;
mod mountinfo;
mod plan;
mod provision;
mod sys;
mod token;
mod verity;

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: initrd-helper run  [--cmdline STR] [--config FILE] [--root DIR]
       initrd-helper plan [--cmdline STR] [--config FILE] [--root DIR] [--disk IMAGE]... [--json]
       initrd-helper encrypt --pcrs LIST [--tcti TCTI] DEVICE
       initrd-helper --version

  --cmdline STR  kernel command line (default: ROOT/proc/cmdline)
  --config FILE  config file (default: /etc/initrd-helper/config.toml; missing = defaults)
  --root DIR     where /sys, /dev and /proc are read from (default: /)
  --disk IMAGE   plan against a disk image file instead of the machine's disks
  --json         print the plan (and facts) as JSON
  --pcrs LIST    encrypt: PCRs (sha256 bank) the secret is sealed to, e.g. 7 or 7,16
  --tcti TCTI    encrypt: the TPM (default device:/dev/tpmrm0)

encrypt formats a blank DEVICE (first MiB all zero, else refused) as LUKS2
with a TPM2-sealed keyslot (systemd-tpm2 token) and a recovery keyslot, and
prints the recovery key once, as JSON on stdout.";

/// Said with every error found before any step ran: the decision to stop
/// was made on facts alone.
const NOTHING_CHANGED: &str = "refusing to boot, nothing was changed on disk";

/// How often the boot disk is looked for again while waiting.
const RESCAN_INTERVAL: Duration = Duration::from_millis(100);

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

struct Inputs {
    cmd: cmdline::Cmdline,
    cfg: config::Config,
    root: PathBuf,
}

fn load_inputs(a: &Args) -> Result<Inputs> {
    let root = a.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let text = match &a.cmdline {
        Some(c) => c.clone(),
        None => {
            std::fs::read_to_string(root.join("proc/cmdline")).context("reading /proc/cmdline")?
        }
    };
    let cmd = cmdline::parse(&text)?;
    let cfg_path = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let cfg = config::load(&cfg_path)?;
    Ok(Inputs { cmd, cfg, root })
}

/// Gathers facts and plans, rescanning until the boot disk shows up or the
/// configured timeout passes (udev may still be loading the disk driver).
fn plan_with_wait(
    i: &Inputs,
    images: &[PathBuf],
    wait: bool,
) -> Result<(plan::Plan, facts::Facts)> {
    let deadline = Instant::now() + Duration::from_secs(i.cfg.devices.timeout_secs.into());
    let mut said = false;
    let probe_type = i.cfg.data.enabled.then_some(i.cfg.data.partition_type);
    let mut tpm = facts::TpmFacts::Absent;
    loop {
        let disks = sys::disks(&i.root, images, probe_type);
        // A TPM found once stays found; an absent one is looked for again
        // (its driver may load after the disk's), which is cheap.
        if !matches!(tpm, facts::TpmFacts::Present { .. }) {
            tpm = sys::tpm::probe(&i.root);
        }
        let facts = facts::Facts {
            disks,
            tpm: tpm.clone(),
            data_open: sys::mapper_active(plan::DATA_NAME),
        };
        match plan::plan(&facts, &i.cmd, &i.cfg) {
            Ok(p) => return Ok((p, facts)),
            Err(e) if wait && e.may_resolve_by_waiting() && Instant::now() < deadline => {
                if !said {
                    ::log::info!(
                        "waiting up to {} s for the boot disk: {e}",
                        i.cfg.devices.timeout_secs
                    );
                    said = true;
                }
                std::thread::sleep(RESCAN_INTERVAL);
            }
            Err(e) => return Err(e.into()),
        }
    }
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
    let i = load_inputs(a)?;
    let (p, facts) = plan_with_wait(&i, &a.disks, false)?;
    if a.json {
        let v = serde_json::json!({ "plan": p, "facts": facts, "cmdline": i.cmd, "config": i.cfg });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_plan(&p);
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
    let i = load_inputs(a).context(NOTHING_CHANGED)?;
    log::set_debug(i.cmd.debug);
    for w in &i.cmd.warnings {
        ::log::warn!("kernel command line: {w}");
    }
    let (p, facts) = plan_with_wait(&i, &[], true).context(NOTHING_CHANGED)?;
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
    apply::apply(&p)?;
    ::log::info!(
        "all steps done in {:.1} ms (peak RSS {} KiB)",
        t.elapsed().as_secs_f64() * 1000.0,
        peak_rss_kib()
    );
    Ok(())
}

/// The helper's peak resident set size (VmHWM), for the figures.
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

/// Errors end in one line that says what failed and that nothing on disk
/// was changed by the failing decision.
fn report(e: &anyhow::Error) {
    ::log::error!("error: {}", chain_text(e.chain().map(|c| c.to_string())));
}

/// Joins an error chain with ": ", dropping a cause whose text the previous
/// entry already ends with (some library errors print their source too).
fn chain_text(chain: impl Iterator<Item = String>) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in chain {
        if !parts.last().is_some_and(|p| p.ends_with(&c)) {
            parts.push(c);
        }
    }
    parts.join(": ")
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("initrd-helper: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // OpenSSL (inside libcryptsetup/tpm2-tss) must not dlopen providers or
    // read the host's config from a static binary.
    std::env::set_var("OPENSSL_CONF", "/dev/null");
    std::env::set_var("OPENSSL_MODULES", "/nonexistent");
    // tpm2-tss logs to stderr itself; our errors carry its cause already.
    if std::env::var_os("TSS2_LOG").is_none() {
        std::env::set_var("TSS2_LOG", "all+none");
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn chain_text_drops_repeated_causes() {
        let c = ["step verity", "io: No such device", "No such device"].map(String::from);
        assert_eq!(
            super::chain_text(c.into_iter()),
            "step verity: io: No such device"
        );
    }
}
