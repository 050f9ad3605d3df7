//! `make bench`: boots the image N times (IH_BENCH_BOOTS, default 3) and
//! prints the helper's step durations and boot figures; then a first and a
//! second boot (UEFI, TPM) on a 2 GiB and a 256 GiB sparse disk, for the
//! provisioning, unlock and peak-RSS figures; then the unlock time under a
//! literal and under a signed PCR policy (IH_BENCH_POLICY_BOOTS each,
//! default 3); then stage 1 of the dracut initrd against the PID-1 initrd
//! (IH_BENCH_MODE_BOOTS steady-state boots each, default 3). Figures only:
//! no threshold fails anything.

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

/// Kernel timestamp (s) of the first console line containing `needle`
/// (`last`: the last one).
fn stamp(console: &str, needle: &str, last: bool) -> Option<f64> {
    let mut hits = console
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let inner = l.split_once('[')?.1.split_once(']')?.0;
            inner.trim().parse::<f64>().ok()
        });
    if last {
        hits.next_back()
    } else {
        hits.next()
    }
}

/// Stage 1 of the dracut initrd (systemd, udev, our module) against the
/// PID-1 initrd (the helper as /init), on a first boot and on steady-state
/// boots (`n` each after the first), on a 2 GiB and a 256 GiB sparse disk:
/// from the kernel's "Run /init" to the stage-2 systemd's first line, the
/// helper's own total and its peak RSS. Four machines, booted interleaved.
fn stage1_by_mode(n: usize) {
    let modes = [("dracut", false), ("pid1", true)];
    let mut figures: BTreeMap<(u64, &str, &str, &str), Vec<f64>> = BTreeMap::new();
    let machines: Vec<_> = [2u64, 256]
        .iter()
        .flat_map(|&gib| modes.iter().map(move |&(m, pid1)| (gib, m, pid1)))
        .map(|(gib, m, pid1)| {
            let a = Artifacts::for_mode(pid1);
            let s = Scratch::new(&format!("bench-mode-{m}-{gib}g"));
            let disk = s.copy_disk(&a.disk);
            enlarge(&disk, gib << 30);
            let vars = s.uefi_vars();
            (gib, m, a, s, disk, vars)
        })
        .collect();
    for round in 0..=n {
        for (gib, m, a, s, disk, vars) in &machines {
            let name = format!("{m}-{gib}g-{round}");
            let b = boot(
                a,
                &BootOpts {
                    snapshot: false,
                    uefi_vars: Some(vars),
                    ..BootOpts::new(&name, disk, &s.0)
                },
            );
            let start = stamp(&b.console, "Run /init as init process", false);
            let stage2 = stamp(&b.console, "running in system mode", true);
            let (Some(start), Some(stage2)) = (start, stage2) else {
                panic!("{name}: no /init or stage-2 line:\n{}", b.console);
            };
            let kind = if round == 0 { "first" } else { "steady" };
            let times = step_times(&b.console);
            let get = |k: &str| times.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            let mut put = |what, v: Option<f64>| {
                if let Some(v) = v {
                    figures.entry((*gib, kind, what, m)).or_default().push(v);
                }
            };
            put("stage 1 to stage 2 (ms)", Some((stage2 - start) * 1000.0));
            put("helper total (ms)", get("total"));
            put("helper peak RSS (KiB)", get("peak RSS (KiB)"));
            println!("{name}: stage 1 {:.0} ms", (stage2 - start) * 1000.0);
        }
    }
    println!("\nstage 1 by mode, medians (OVMF + swtpm, TCG; first boot n=1, steady n={n}):");
    println!(
        "  {:<6} {:<7} {:<26} {:>10} {:>10} {:>7}",
        "disk", "boot", "figure", "dracut", "pid1", "ratio"
    );
    let keys: Vec<_> = figures
        .keys()
        .map(|&(g, k, w, _)| (g, k, w))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (gib, kind, what) in keys {
        let mut med = |m| {
            median(
                figures
                    .get_mut(&(gib, kind, what, m))
                    .map(|v| v.as_mut_slice())
                    .unwrap_or(&mut []),
            )
        };
        let (d, p) = (med("dracut"), med("pid1"));
        println!(
            "  {:<6} {kind:<7} {what:<26} {d:>10.1} {p:>10.1} {:>7.2}",
            format!("{gib}G"),
            p / d
        );
    }
    for (m, pid1) in modes {
        let a = Artifacts::for_mode(pid1);
        let raw = std::fs::metadata(&a.initrd).map(|md| md.len()).unwrap_or(0);
        println!(
            "  {m} initrd: {raw} bytes as built ({})",
            if pid1 { "zstd" } else { "uncompressed cpio" }
        );
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
    let mode_boots = std::env::var("IH_BENCH_MODE_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    if mode_boots > 0 {
        stage1_by_mode(mode_boots);
    }
}
