//! The side-by-side table: per disk size and boot kind, each figure's
//! median with its spread for each configuration, and ratios against
//! systemd's stack; then every initrd's size, raw and zstd -19.

use crate::figures::{self, Figures};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const OURS: &str = "dracut+helper";
pub const PID1: &str = "pid1";
pub const SYSTEMD: &str = "systemd";
const COLUMNS: [&str; 3] = [OURS, PID1, SYSTEMD];
/// Rows in this order; a figure no configuration has is left out.
const ROWS: [&str; 7] = [
    figures::SWITCH,
    figures::STAGE2,
    figures::REPORT,
    figures::DATA,
    figures::TOOLS_RSS,
    figures::HELPER_RSS,
    figures::HELPER_TOTAL,
];

/// "median [min-max] nN", or "-" with no values.
fn cell(v: Option<&Vec<f64>>) -> (String, f64) {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return ("-".into(), f64::NAN);
    };
    let mut v = v.clone();
    let m = figures::median(&mut v);
    let (lo, hi) = (v[0], v[v.len() - 1]);
    (format!("{m:.0} [{lo:.0}-{hi:.0}] n{}", v.len()), m)
}

pub fn print(figs: &Figures, rounds: usize, steady: usize) {
    println!(
        "\nside by side (QEMU TCG, 2 vCPU, OVMF + swtpm; {rounds} machines per cell, \
         a first boot and {steady} steady boot(s) each, interleaved; median [min-max] nBOOTS):"
    );
    let mut sizes: Vec<u64> = figs.0.keys().map(|k| k.0).collect();
    sizes.dedup();
    for &gib in &sizes {
        for kind in ["first", "steady"] {
            section(figs, gib, kind);
        }
    }
    disk_ratio(figs, &sizes);
    println!(
        "\n  rows: switch-root = initrd-switch-root.service starting (dracut) or PID 1's \
         switch line; stage 2 = stage-2 systemd's first line;\n  data volume ready = the \
         helper's data step, or systemd-repart's plus systemd-cryptsetup@data's command's run \
         time;\n  volume tools' RSS = wait4()'s ru_maxrss of initrd-helper's command (with mkfs), \
         or the larger of those two commands' (dracut modes only)"
    );
}

/// One disk size's and boot kind's rows; nothing when no boot gave any
/// (IH_BENCH_STEADY=0).
fn section(figs: &Figures, gib: u64, kind: &str) {
    let rows: Vec<String> = ROWS
        .iter()
        .filter_map(|row| table_row(figs, gib, kind, row))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("\n  {gib} GiB disk, {kind} boot");
    println!(
        "    {:<30} {:>26} {:>26} {:>26} {:>8} {:>8}",
        "figure", OURS, PID1, SYSTEMD, "ours/sd", "pid1/sd"
    );
    for r in rows {
        println!("{r}");
    }
}

/// A figure's cells and ratios to systemd's; None when no configuration has it.
fn table_row(figs: &Figures, gib: u64, kind: &str, row: &str) -> Option<String> {
    let cells: Vec<_> = COLUMNS
        .iter()
        .map(|c| cell(figs.0.get(&(gib, kind, row, *c))))
        .collect();
    if cells.iter().all(|(s, _)| s == "-") {
        return None;
    }
    let ratio = |m: f64| {
        let r = m / cells[2].1;
        if r.is_finite() {
            format!("{r:.2}")
        } else {
            "-".into()
        }
    };
    Some(format!(
        "    {row:<30} {:>26} {:>26} {:>26} {:>8} {:>8}",
        cells[0].0,
        cells[1].0,
        cells[2].0,
        ratio(cells[0].1),
        ratio(cells[1].1)
    ))
}

/// The first boot's stage 1 on the largest disk against the smallest, per
/// configuration (the goal: a big disk costs the first boot little).
fn disk_ratio(figs: &Figures, sizes: &[u64]) {
    let (Some(&small), Some(&big)) = (sizes.first(), sizes.last()) else {
        return;
    };
    if small == big {
        return;
    }
    let median = |gib, c| {
        let mut v = figs.0.get(&(gib, "first", figures::STAGE2, c))?.clone();
        (!v.is_empty()).then(|| figures::median(&mut v))
    };
    let cells: Vec<String> = COLUMNS
        .iter()
        .map(|c| match (median(big, *c), median(small, *c)) {
            (Some(b), Some(s)) => format!("{c} {:.2}", b / s),
            _ => format!("{c} -"),
        })
        .collect();
    println!(
        "\n  first boot, stage 1 to stage 2, {big} GiB / {small} GiB: {}",
        cells.join(", ")
    );
}

/// An initrd's size as (raw, zstd -19): a zstd file is decompressed for
/// its raw size, a plain cpio compressed for the other.
fn sizes(p: &Path) -> Result<(u64, u64), String> {
    // zstd skips a symbolic link given by name.
    let p = &p
        .canonicalize()
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    let zstd = bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    let args: &[&str] = if zstd {
        &["-dc"]
    } else {
        &["-19", "-T0", "-c"]
    };
    let out = Command::new("zstd")
        .args(args)
        .arg(p)
        .output()
        .map_err(|e| format!("zstd: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "zstd {args:?} {} failed: {}",
            p.display(),
            out.status
        ));
    }
    let (file, other) = (bytes.len() as u64, out.stdout.len() as u64);
    Ok(if zstd { (other, file) } else { (file, other) })
}

/// Each initrd as shipped (without the bench probe), raw and zstd -19.
pub fn print_sizes(initrds: &[(&str, PathBuf)]) {
    println!(
        "\n  initrd sizes as shipped, no bench probe (bytes) {:>14} {:>14} {:>8}",
        "raw", "zstd -19", "zstd/sd"
    );
    let got: Vec<_> = initrds.iter().map(|(n, p)| (*n, sizes(p))).collect();
    let sd = got
        .iter()
        .find(|(n, _)| *n == SYSTEMD)
        .and_then(|(_, s)| s.as_ref().ok())
        .map_or(f64::NAN, |s| s.1 as f64);
    for (name, s) in got {
        match s {
            Ok((raw, z)) => println!("    {name:<45} {raw:>14} {z:>14} {:>8.2}", z as f64 / sd),
            Err(e) => println!("    {name:<45} SIZE FAILED: {e}"),
        }
    }
}
