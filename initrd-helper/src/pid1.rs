//! PID-1 mode, the pure part: the failure policy, the init to hand over
//! to, and the kernel-module list the initrd builder makes (modules.dep's
//! format, dependencies first), grouped into levels that can load in
//! parallel. `init.rs` does the work; these decisions are unit-tested here.

use std::collections::BTreeMap;

/// What PID 1 does when the boot fails (`initrd_helper.on_failure=`).
/// The default waits: a failure never becomes a reboot loop unless asked
/// for (with boot counting, `reboot` is what makes the next try happen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Print the error and wait for a person (the console stays usable
    /// for nothing else: there is no shell).
    #[default]
    Wait,
    /// Reboot after a pause long enough to read the error.
    Reboot,
    Poweroff,
    Halt,
}

impl OnFailure {
    pub fn parse(s: &str) -> Option<OnFailure> {
        Some(match s {
            "wait" => OnFailure::Wait,
            "reboot" => OnFailure::Reboot,
            "poweroff" => OnFailure::Poweroff,
            "halt" => OnFailure::Halt,
            _ => return None,
        })
    }
}

/// The init of the real root: the kernel's `init=` if given, else
/// /sbin/init, as the kernel itself would choose.
pub fn init_path(init_arg: Option<&str>) -> &str {
    init_arg
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/sbin/init")
}

/// The module list's size limit (a real one is a few KiB).
pub const LIST_MAX_BYTES: usize = 1 << 20;
/// At most this many modules.
const MAX_MODULES: usize = 4096;

/// One module: its path under /lib/modules/KVER and the paths of the
/// modules it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub deps: Vec<String>,
}

/// Parses `PATH: DEP DEP...` lines (modules.dep's format). Blank lines and
/// `#` comments are skipped; paths must be relative and stay inside the
/// modules directory.
pub fn parse_modules(text: &str) -> Result<Vec<Module>, String> {
    if text.len() > LIST_MAX_BYTES {
        return Err(format!("module list over {LIST_MAX_BYTES} bytes"));
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, deps) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected \"PATH: DEPS\"", n + 1))?;
        let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
        for p in std::iter::once(path).chain(deps.iter().map(String::as_str)) {
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..") {
                return Err(format!("line {}: bad module path {p:?}", n + 1));
            }
        }
        out.push(Module {
            path: path.to_string(),
            deps,
        });
        if out.len() > MAX_MODULES {
            return Err(format!("more than {MAX_MODULES} modules"));
        }
    }
    Ok(out)
}

/// Groups the modules (indices into `mods`) by dependency depth: a level's
/// modules need only modules of earlier levels, so each level can load in
/// parallel. A dependency that is not in the list is taken as built in
/// (the loader then finds its symbols or reports the module's error).
/// A cycle is an error.
pub fn levels(mods: &[Module]) -> Result<Vec<Vec<usize>>, String> {
    let index: BTreeMap<&str, usize> = mods
        .iter()
        .enumerate()
        .map(|(i, m)| (m.path.as_str(), i))
        .collect();
    let mut depth: Vec<Option<usize>> = vec![None; mods.len()];
    // Relaxation: at most len rounds; a round with no progress left
    // undecided modules only when their dependencies form a cycle.
    for _ in 0..=mods.len() {
        let mut progress = false;
        for (i, m) in mods.iter().enumerate() {
            if depth[i].is_some() {
                continue;
            }
            let deps: Option<Vec<usize>> = m
                .deps
                .iter()
                .filter_map(|d| index.get(d.as_str()))
                .map(|&j| depth[j].map(|d| d + 1))
                .collect();
            if let Some(ds) = deps {
                depth[i] = Some(ds.into_iter().max().unwrap_or(0));
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, d) in depth.iter().enumerate() {
        let d = d.ok_or_else(|| format!("dependency cycle through {}", mods[i].path))?;
        if out.len() <= d {
            out.resize(d + 1, Vec::new());
        }
        out[d].push(i);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
# made by mkinitrd.sh
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko
kernel/drivers/md/dm-mod.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko
";

    #[test]
    fn levels_put_dependencies_first() {
        let m = parse_modules(LIST).unwrap();
        assert_eq!(m.len(), 8);
        let l = levels(&m).unwrap();
        let names = |lvl: &Vec<usize>| -> Vec<&str> {
            lvl.iter()
                .map(|&i| m[i].path.rsplit('/').next().unwrap())
                .collect()
        };
        assert_eq!(
            names(&l[0]),
            [
                "jbd2.ko",
                "mbcache.ko",
                "crc16.ko",
                "dm-mod.ko",
                "virtio_blk.ko"
            ]
        );
        assert_eq!(names(&l[1]), ["ext4.ko", "dm-bufio.ko"]);
        assert_eq!(names(&l[2]), ["dm-verity.ko"]);
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn cycles_and_bad_paths_are_refused() {
        let cyc = parse_modules("a.ko: b.ko\nb.ko: a.ko\nc.ko:\n").unwrap();
        assert!(levels(&cyc).unwrap_err().contains("cycle"));
        for bad in [
            "/abs.ko:",
            "x.ko: ../../etc/shadow",
            "no colon here",
            ": dep.ko",
        ] {
            assert!(parse_modules(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_modules(&"a".repeat(LIST_MAX_BYTES + 1)).is_err());
        assert_eq!(parse_modules("").unwrap(), []);
    }

    #[test]
    fn the_command_line_carries_policy_and_init() {
        let c = crate::cmdline::parse("initrd_helper.on-failure=reboot init=/lib/systemd/systemd")
            .unwrap();
        assert_eq!(c.on_failure, Some(OnFailure::Reboot));
        assert_eq!(init_path(c.init.as_deref()), "/lib/systemd/systemd");
        // A misspelt policy is no policy: wait, never a loop.
        let c = crate::cmdline::parse("initrd_helper.on_failure=rebot").unwrap();
        assert_eq!(c.on_failure, None);
        assert!(
            c.warnings[0].contains("expected wait, reboot"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn policy_and_init() {
        assert_eq!(OnFailure::parse("reboot"), Some(OnFailure::Reboot));
        assert_eq!(OnFailure::parse("Reboot"), None);
        assert_eq!(OnFailure::default(), OnFailure::Wait);
        assert_eq!(init_path(None), "/sbin/init");
        assert_eq!(
            init_path(Some("/lib/systemd/systemd")),
            "/lib/systemd/systemd"
        );
        assert_eq!(init_path(Some("relative")), "/sbin/init");
    }
}
