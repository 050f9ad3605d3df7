//! `make bench`: our two stage-1 modes side by side with systemd's own
//! stack (vm-tests/baseline, built by vm-tests/build-baseline.sh) on the
//! same kernel, disk image and guest root: a first boot and steady-state
//! boots of each, on a 2 GiB and a 256 GiB sparse disk, interleaved
//! (ours, PID 1, theirs, ours, ...), medians with their spread and ratios
//! (bench/table.rs); then the unlock time under a literal and under a
//! signed PCR policy. Figures only: no threshold fails anything.
//!
//! IH_BENCH_ROUNDS (default 3) fresh machines per configuration, each
//! with one first boot and IH_BENCH_STEADY (default 1) steady boots;
//! IH_BENCH_DISKS_GIB (default "2 256"); IH_BENCH_POLICY_BOOTS (default
//! 3, 0 skips the policy part); consoles kept in IH_BENCH_LOG (default
//! /tmp/ih-bench).

#[path = "bench/figures.rs"]
mod figures;
#[path = "bench/table.rs"]
mod table;

use figures::{boot_figures, Figures};
use std::collections::BTreeMap;
use vm_tests::{boot, enlarge, Artifacts, BootOpts, Scratch};

/// One stage-1 stack under test.
struct Config {
    name: &'static str,
    artifacts: Artifacts,
    append: String,
    /// The initrd as a user would ship it: without the bench probe.
    shipped: std::path::PathBuf,
}

fn configs() -> Vec<Config> {
    let ours = Artifacts::from_env();
    let pid1 = Artifacts::pid1_from_env();
    // build-baseline.sh's artifacts, beside build-image.sh's.
    let beside = |f: &str| ours.initrd.with_file_name(f);
    let poweroff = "ih_test.poweroff".to_string();
    vec![
        Config {
            name: table::OURS,
            shipped: ours.initrd.clone(),
            artifacts: Artifacts {
                initrd: beside("initrd-bench.img"),
                ..Artifacts::from_env()
            },
            append: poweroff.clone(),
        },
        Config {
            name: table::PID1,
            shipped: pid1.initrd.clone(),
            artifacts: pid1,
            append: poweroff,
        },
        Config {
            name: table::SYSTEMD,
            shipped: beside("initrd-baseline.img"),
            artifacts: Artifacts {
                initrd: beside("initrd-baseline-bench.img"),
                disk: beside("baseline-disk.img"),
                kernel: ours.kernel.clone(),
                pid1: false,
            },
            append: format!(
                "ih_test.poweroff roothash={} systemd.volatile=overlay",
                ours.roothash("a")
            ),
        },
    ]
}

/// Every bench boot's console, kept for a look at where time went
/// (IH_BENCH_LOG, default /tmp/ih-bench).
fn keep_console(b: &vm_tests::Boot) {
    let dir = std::env::var("IH_BENCH_LOG").unwrap_or_else(|_| "/tmp/ih-bench".into());
    let p = std::path::Path::new(&dir).join(format!("{}.console", b.name));
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&p, &b.console)) {
        eprintln!("bench: keeping {}: {e}", p.display());
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every configuration on every disk size: `rounds` fresh machines each
/// (disk, TPM and firmware variables), a first boot then `steady` boots,
/// the configurations taking turns boot by boot.
fn side_by_side(configs: &[Config], rounds: usize, steady: usize, sizes: &[u64]) -> Figures {
    let mut figs = Figures::default();
    for round in 0..rounds {
        for &gib in sizes {
            let machines: Vec<_> = configs
                .iter()
                .map(|c| {
                    let s = Scratch::new(&format!("bench-{}-{gib}g-{round}", c.name));
                    let disk = s.copy_disk(&c.artifacts.disk);
                    enlarge(&disk, gib << 30);
                    let vars = s.uefi_vars();
                    (c, s, disk, vars)
                })
                .collect();
            for i in 0..=steady {
                let kind = if i == 0 { "first" } else { "steady" };
                for (c, s, disk, vars) in &machines {
                    let name = format!("{}-{gib}g-{round}-{i}", c.name);
                    let b = boot(
                        &c.artifacts,
                        &BootOpts {
                            append: &c.append,
                            snapshot: false,
                            uefi_vars: Some(vars),
                            ..BootOpts::new(&name, disk, &s.0)
                        },
                    );
                    keep_console(&b);
                    let got = boot_figures(&b);
                    println!(
                        "{name}: stage 1 {:.0} ms, wall {:.1} s",
                        got.get("stage 1 to stage 2 (ms)")
                            .copied()
                            .unwrap_or(f64::NAN),
                        b.wall.as_secs_f64()
                    );
                    figs.add(gib, kind, c.name, got);
                }
            }
        }
    }
    figs
}

/// The data step's unlock time under a literal PCR 7 policy (direct
/// kernel boot) and under the signed PCR 11 + PCR 7 policy (UKI A), on
/// two machines provisioned first, then unlocked `n` times each,
/// interleaved, so both see the same machine load.
fn unlock_by_policy(a: &Artifacts, n: usize) {
    let machines: Vec<(&str, Scratch)> = ["literal", "signed"]
        .into_iter()
        .map(|p| (p, Scratch::new(&format!("bench-{p}"))))
        .collect();
    let disks: Vec<_> = machines
        .iter()
        .map(|(_, s)| {
            let d = s.copy_disk(&a.disk);
            enlarge(&d, 2 << 30);
            (d, s.uefi_vars())
        })
        .collect();
    let uki = vm_tests::uki::path(a, "a");
    let mut figures: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    for round in 0..=n {
        for ((policy, s), (disk, vars)) in machines.iter().zip(&disks) {
            let name = format!("{policy}-{round}");
            let b = boot(
                a,
                &BootOpts {
                    snapshot: false,
                    uefi_vars: Some(vars),
                    uki: (*policy == "signed").then_some(uki.as_path()),
                    ..BootOpts::new(&name, disk, &s.0)
                },
            );
            let times = figures::step_times(&b.console);
            let unlock = times.iter().find(|(k, _)| k == "data/unlocked");
            match (round, unlock) {
                (0, _) => println!("{policy}: provisioned (wall {:.1} s)", b.wall.as_secs_f64()),
                (_, Some((_, ms))) => println!("{policy}: unlock {round}: {ms:.1} ms"),
                (_, None) => panic!("{policy} boot {round}: no unlock line:\n{}", b.console),
            }
            if round > 0 {
                for (k, v) in times {
                    figures.entry((policy, k)).or_default().push(v);
                }
            }
        }
    }
    println!("\nunlock by policy, median of {n} boots each (OVMF + swtpm, TCG; ms):");
    for key in ["data/unlocked", "data", "total"] {
        for policy in ["literal", "signed"] {
            let mut v = figures
                .remove(&(policy, key.to_string()))
                .unwrap_or_default();
            println!("  {policy:<8} {key:<14} {:>8.1}", figures::median(&mut v));
        }
    }
}

fn main() {
    let rounds = env_num("IH_BENCH_ROUNDS", 3);
    let steady = env_num("IH_BENCH_STEADY", 1);
    let sizes: Vec<u64> = std::env::var("IH_BENCH_DISKS_GIB")
        .unwrap_or_else(|_| "2 256".into())
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    let configs = configs();
    let figs = side_by_side(&configs, rounds, steady, &sizes);
    table::print(&figs, rounds, steady);
    let shipped: Vec<_> = configs
        .iter()
        .map(|c| (c.name, c.shipped.clone()))
        .collect();
    table::print_sizes(&shipped);
    let policy_boots = env_num("IH_BENCH_POLICY_BOOTS", 3);
    if policy_boots > 0 {
        unlock_by_policy(&Artifacts::from_env(), policy_boots);
    }
}
