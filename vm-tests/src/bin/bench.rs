//! `make bench`: boots the image N times (IH_BENCH_BOOTS, default 3) and
//! prints the helper's step durations and boot figures. Figures only: no
//! threshold fails anything.

use std::collections::BTreeMap;
use vm_tests::{boot, Artifacts, BootOpts, Scratch};

/// "step NAME: done in 12.3 ms" and "all steps done in 12.3 ms" -> (name, ms).
fn step_times(console: &str) -> Vec<(String, f64)> {
    console
        .lines()
        .filter(|l| l.contains("initrd-helper[") && !l.contains("IHJ "))
        .filter_map(|l| {
            let (head, tail) = l.split_once(" in ")?;
            let ms: f64 = tail.split_whitespace().next()?.parse().ok()?;
            let name = if head.contains("all steps done") {
                "total".to_string()
            } else {
                head.split("step ").nth(1)?.split(':').next()?.to_string()
            };
            Some((name, ms))
        })
        .collect()
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
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!("\nmedian of {n} boots (QEMU TCG, 2 vCPU):");
    for (k, v) in steps.iter_mut() {
        println!("  helper {k:<12} {:>8.1} ms", med(v));
    }
    println!("  guest uptime at report {:>6.2} s", med(&mut uptimes));
}
