//! A `log` backend for early boot: each record goes to /dev/kmsg with a
//! syslog priority prefix (facility "user"), so it shows on the console and
//! later in `journalctl -b -t initrd-helper`. Off-boot (no writable kmsg, or
//! `--stderr`) records go to stderr.
//!
//! /dev/kmsg is opened per record on purpose: the kernel rate-limits each
//! open file to 10 records per 5 s unless `printk.devkmsg=on`.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;

const KMSG: &str = "/dev/kmsg";
/// The kernel truncates longer records; leave room for the prefix.
const MAX_RECORD: usize = 900;
/// syslog facility LOG_USER, shifted as in the priority prefix.
const FACILITY_USER: u8 = 1 << 3;

pub const IDENT: &str = "initrd-helper";

struct Logger {
    kmsg: bool,
    level: LevelFilter,
}

fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One kmsg record: `<PRI>ident[pid]: message`, cut at a char boundary.
pub fn format_record(level: Level, pid: u32, msg: &str) -> String {
    let mut cut = msg.len().min(MAX_RECORD);
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    let line = msg[..cut].replace('\n', " ");
    format!(
        "<{}>{IDENT}[{pid}]: {line}\n",
        FACILITY_USER | priority(level)
    )
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        // Libraries only with initrd_helper.debug: tss-esapi logs expected
        // conditions as errors (a missing persistent SRK before we create
        // it), and our own error lines carry a library's cause already.
        // The level can be raised after init (`initrd_helper.debug` is only
        // known once the command line is parsed), so the global filter rules.
        let level = self.level.max(log::max_level());
        let ours = m.target().starts_with("initrd_helper");
        m.level() <= level && (ours || level == LevelFilter::Debug)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let msg = r.args().to_string();
        if self.kmsg {
            let rec = format_record(r.level(), std::process::id(), &msg);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .open(KMSG)
                .and_then(|mut f| f.write_all(rec.as_bytes()));
            if written.is_ok() {
                return;
            }
        }
        let _ = writeln!(std::io::stderr(), "{IDENT}: {msg}");
    }

    fn flush(&self) {}
}

/// Installs the logger; `to_kmsg` is honoured only when /dev/kmsg is writable.
pub fn init(to_kmsg: bool, debug: bool) {
    let kmsg = to_kmsg && std::fs::OpenOptions::new().write(true).open(KMSG).is_ok();
    let level = if debug {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    if log::set_boxed_logger(Box::new(Logger { kmsg, level })).is_ok() {
        log::set_max_level(level);
    }
}

/// Raises the level after the command line was parsed (`initrd_helper.debug`).
pub fn set_debug(debug: bool) {
    if debug {
        log::set_max_level(LevelFilter::Debug);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_has_priority_and_ident() {
        assert_eq!(
            format_record(Level::Error, 7, "boom"),
            "<11>initrd-helper[7]: boom\n"
        );
        assert_eq!(
            format_record(Level::Info, 7, "a\nb"),
            "<14>initrd-helper[7]: a b\n"
        );
    }

    #[test]
    fn long_records_are_cut_on_char_boundaries() {
        let r = format_record(Level::Info, 1, &"é".repeat(1000));
        assert!(r.len() < MAX_RECORD + 40);
        assert!(r.ends_with("é\n"));
    }

    #[test]
    fn the_debug_flag_raises_the_level_after_init() {
        let l = Logger {
            kmsg: false,
            level: LevelFilter::Info,
        };
        let m = |lvl, target| Metadata::builder().level(lvl).target(target).build();
        assert!(l.enabled(&m(Level::Info, "initrd_helper::data")));
        assert!(
            !l.enabled(&m(Level::Info, "tss_esapi")),
            "libraries only with debug"
        );
        set_debug(true);
        assert!(l.enabled(&m(Level::Debug, "initrd_helper::data")));
        assert!(l.enabled(&m(Level::Debug, "libcryptsetup")));
    }
}
