//! What one bench boot's console says: kernel timestamps of the stage-1
//! landmarks, the helper's own step lines, and the bench probe's "IHB"
//! lines (vm-tests/baseline: ih-maxrss's start and end of a unit's command,
//! with its peak RSS, and the start of initrd-switch-root.service).

use std::collections::BTreeMap;
use vm_tests::Boot;

pub const STAGE2: &str = "stage 1 to stage 2 (ms)";
pub const SWITCH: &str = "stage 1 to switch-root (ms)";
pub const REPORT: &str = "Run /init to report (ms)";
pub const DATA: &str = "data volume ready (ms)";
pub const TOOLS_RSS: &str = "peak RSS, volume tools (KiB)";
pub const HELPER_RSS: &str = "helper peak RSS (KiB)";
pub const HELPER_TOTAL: &str = "helper total (ms)";

/// The units that make and open the data volume in systemd's stack.
const SD_UNITS: [&str; 2] = ["systemd-repart.service", "systemd-cryptsetup@data.service"];

/// Figures of several boots: (disk GiB, "first"/"steady", figure,
/// configuration) -> one value per boot.
#[derive(Default)]
pub struct Figures(pub BTreeMap<(u64, &'static str, &'static str, &'static str), Vec<f64>>);

impl Figures {
    pub fn add(&mut self, gib: u64, kind: &'static str, config: &'static str, f: BootFigures) {
        for (what, v) in f {
            self.0.entry((gib, kind, what, config)).or_default().push(v);
        }
    }
}

pub type BootFigures = BTreeMap<&'static str, f64>;

/// Everything one boot measured; a boot that did not reach stage 2 says so
/// loudly (with its console) and gives no figures, so the table's counts
/// show it.
pub fn boot_figures(b: &Boot) -> BootFigures {
    let pid1 = b.pid1;
    let mut f = BootFigures::new();
    let start = stamps(&b.console, "Run /init as init process")
        .first()
        .copied();
    let systemds = stamps(&b.console, "running in system mode");
    // Dracut modes: the initrd's systemd, then stage 2's.
    let stage2 = systemds.get(if pid1 { 0 } else { 1 }).copied();
    let (Some(start), Some(stage2), true) = (start, stage2, b.reached) else {
        eprintln!(
            "BENCH BOOT FAILED: {} did not reach stage 2 and its report; no figures:\n{}",
            b.name, b.console
        );
        return f;
    };
    f.insert(STAGE2, ms(stage2 - start));
    let switch = if pid1 {
        "PID 1: switching root"
    } else {
        "IHB start initrd-switch-root.service"
    };
    if let Some(t) = stamps(&b.console, switch).first() {
        f.insert(SWITCH, ms(t - start));
    }
    if let Some(t) = stamps(&b.console, "IH-REPORT-BEGIN").first() {
        f.insert(REPORT, ms(t - start));
    }
    let steps = step_times(&b.console);
    let step = |k: &str| steps.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    if let Some(v) = step("data") {
        f.insert(DATA, v);
    }
    if let Some(v) = step("total") {
        f.insert(HELPER_TOTAL, v);
    }
    if let Some(v) = step("peak RSS (KiB)") {
        f.insert(HELPER_RSS, v);
    }
    let units = unit_spans(&b.console);
    if let Some((_, peak)) = units.get("initrd-helper.service") {
        f.insert(TOOLS_RSS, *peak);
    }
    let sd: Vec<_> = SD_UNITS.iter().filter_map(|u| units.get(*u)).collect();
    if sd.len() == SD_UNITS.len() {
        // What systemd's stack spends on the data volume: repart (a no-op
        // on later boots, but it still runs) plus the unlock.
        f.insert(DATA, sd.iter().map(|(span, _)| span).sum());
        f.insert(TOOLS_RSS, sd.iter().map(|(_, p)| *p).fold(0.0, f64::max));
    }
    f
}

fn ms(s: f64) -> f64 {
    s * 1000.0
}

/// A console line's kernel timestamp (s): "[   12.345678] ...".
fn line_stamp(l: &str) -> Option<f64> {
    l.split_once('[')?.1.split_once(']')?.0.trim().parse().ok()
}

/// Kernel timestamps (s) of the console lines containing `needle`.
fn stamps(console: &str, needle: &str) -> Vec<f64> {
    console
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(line_stamp)
        .collect()
}

/// "IHB start UNIT" and "IHB end UNIT maxrss=KIB status=N" -> UNIT ->
/// (span ms, peak RSS KiB). A failed command gives no figures.
fn unit_spans(console: &str) -> BTreeMap<String, (f64, f64)> {
    let mut starts = BTreeMap::new();
    let mut out = BTreeMap::new();
    for l in console.lines() {
        let (Some((_, rest)), Some(t)) = (l.split_once("IHB "), line_stamp(l)) else {
            continue;
        };
        let mut w = rest.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("start"), Some(u), _) => {
                starts.insert(u.to_string(), t);
            }
            (Some("end"), Some(u), Some(rss)) if rest.ends_with(" status=0") => {
                let rss = rss
                    .strip_prefix("maxrss=")
                    .and_then(|k| k.parse::<f64>().ok());
                if let (Some(s), Some(rss)) = (starts.get(u), rss) {
                    out.insert(u.to_string(), (ms(t - s), rss));
                }
            }
            _ => {}
        }
    }
    out
}

/// "step NAME: done in 12.3 ms", "data: PHASE in 12.3 ms" and "all steps
/// done in 12.3 ms (peak RSS N KiB)" -> (name, value).
pub fn step_times(console: &str) -> Vec<(String, f64)> {
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

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_spans_pair_starts_with_ends() {
        let c = "[   12.5] IHB start systemd-repart.service\n\
                 [   13.0] x\n[   17.5] IHB end systemd-repart.service maxrss=4 status=0\n\
                 [   18.0] IHB end lonely.service maxrss=1 status=0\n\
                 [   19.0] IHB start bad.service\n[   20.0] IHB end bad.service maxrss=9 status=1\n";
        let s = unit_spans(c);
        assert_eq!(s.len(), 1, "{s:?}");
        let (span, peak) = s["systemd-repart.service"];
        assert!(
            (span - 5000.0).abs() < 1e-6 && (peak - 4.0).abs() < 1e-9,
            "{s:?}"
        );
    }
}
