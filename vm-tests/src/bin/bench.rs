//! `make bench`: boots the image N times (IH_BENCH_BOOTS, default 3) and
//! prints the helper's step durations and boot figures; then a first and a
//! second boot (UEFI, TPM) on a 2 GiB and a 256 GiB sparse disk, for the
//! provisioning, unlock and peak-RSS figures; then the unlock time under a
//! literal and under a signed PCR policy (IH_BENCH_POLICY_BOOTS each,
//! default 3). Figures only: no threshold fails anything.

use std::collections::BTreeMap;
use vm_tests::{boot, enlarge, Artifacts, BootOpts, Scratch};

/// "step NAME: done in 12.3 ms", "data: PHASE in 12.3 ms" and "all steps
/// done in 12.3 ms (peak RSS N KiB)" -> (name, value).
fn step_times(console: &str) -> Vec<(String, f64)> {
    console
        .lines()
        .filter(|l| l.contains("initrd-helper[") && !l.contains("IHJ "))
        .flat_map(|l| {
            let mut out = Vec::new();
            if let Some((_, rss)) = l.split_once("peak RSS ") {
                if let Some(k) = rss.split_whitespace().next().and_then(|k| k.parse().ok()) {
                    out.push(("peak RSS (KiB)".to_string(), k));
                }
            }
            // The first " in " followed by a number ("marked in progress
            // (GPT) in 61.1 ms" has an earlier one).
            let timed = l.match_indices(" in ").find_map(|(i, _)| {
                let ms: f64 = l[i + 4..].split_whitespace().next()?.parse().ok()?;
                Some((&l[..i], ms))
            });
            let parsed = timed.and_then(|(head, ms)| {
                let name = if head.contains("all steps done") {
                    "total".to_string()
                } else if let Some(phase) = head.split("]: data: ").nth(1) {
                    format!("data/{}", phase.split(' ').next().unwrap_or(phase))
                } else {
                    head.split("step ").nth(1)?.split(':').next()?.to_string()
                };
                Some((name, ms))
            });
            out.extend(parsed);
            out
        })
        .collect()
}

/// First boot, then second boot, on the image flashed onto a `gib` GiB disk.
fn first_and_second(a: &Artifacts, gib: u64) {
    let s = Scratch::new(&format!("bench-{gib}g"));
    let disk = s.copy_disk(&a.disk);
    enlarge(&disk, gib << 30);
    let vars = s.uefi_vars();
    for which in ["first", "second"] {
        let name = format!("{gib}g-{which}");
        let b = boot(
            a,
            &BootOpts {
                append: "ih_test.poweroff",
                snapshot: false,
                uefi_vars: Some(&vars),
                ..BootOpts::new(&name, &disk, &s.0)
            },
        );
        println!(
            "\n{gib} GiB disk, {which} boot (wall {:.1} s):",
            b.wall.as_secs_f64()
        );
        for (k, v) in step_times(&b.console) {
            println!("  helper {k:<28} {v:>9.1}");
        }
    }
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
            let times = step_times(&b.console);
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
            println!("  {policy:<8} {key:<14} {:>8.1}", median(&mut v));
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let a = Artifacts::from_env();
    let n: usize = std::env::var("IH_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = Scratch::new("bench");
    let append = format!("ih_test.poweroff roothash={}", a.roothash("a"));
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut uptimes = Vec::new();
    for i in 0..n {
        let name = format!("bench{i}");
        let b = boot(
            &a,
            &BootOpts {
                append: &append,
                ..BootOpts::new(&name, &a.disk, &s.0)
            },
        );
        for (k, v) in step_times(&b.console) {
            steps.entry(k).or_default().push(v);
        }
        if let Some(u) = b.report().get("uptime").and_then(|u| u.parse::<f64>().ok()) {
            uptimes.push(u);
        }
        println!("boot {i}: wall {:.1} s", b.wall.as_secs_f64());
    }
    let med = |v: &mut Vec<f64>| median(v);
    println!("\nmedian of {n} boots (QEMU TCG, 2 vCPU; ms, each a first boot: writes discarded):");
    for (k, v) in steps.iter_mut() {
        let unit = if k.contains("KiB") { "" } else { " ms" };
        println!("  helper {k:<24} {:>8.1}{unit}", med(v));
    }
    println!("  guest uptime at report {:>6.2} s", med(&mut uptimes));
    let sizes = std::env::var("IH_BENCH_DISKS_GIB").unwrap_or_else(|_| "2 256".into());
    for gib in sizes.split_whitespace().filter_map(|g| g.parse().ok()) {
        first_and_second(&a, gib);
    }
    let policy_boots = std::env::var("IH_BENCH_POLICY_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if policy_boots > 0 {
        unlock_by_policy(&a, policy_boots);
    }
}
