//! Applies a plan one step at a time: each step first checks whether its
//! effect already holds (a re-run after a crash or a unit restart skips it),
//! and logs one line with its outcome and duration.

use crate::data;
pub use crate::env::Env;
use crate::machine_id;
use crate::mountinfo;
use crate::plan::{MachineIdSource, Plan, Step};
use crate::status::StepStatus;
use crate::sys;
use crate::verity::{Signature, VerityOptions, MAX_SIGNATURE};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::Instant;

/// Size cap of the tmpfs holding the /etc upper layer.
const ETC_TMPFS_OPTIONS: &str = "mode=0755,size=64m";
/// Where we remember the machine ID written this boot (survives switch-root).
const MACHINE_ID_RECORD: &str = "/run/initrd-helper/machine-id";

enum Outcome {
    Done,
    Skipped(String),
    /// Done, and what was done differs from the plan's description.
    Did(String),
}

/// The signature's bytes, bounded and checked to be DER before the kernel
/// sees them.
pub(crate) fn read_signature(sig: &Signature) -> Result<Vec<u8>> {
    use std::io::Read;
    let p = match sig {
        Signature::Inline(b) => return Ok(b.clone()),
        Signature::Path(p) => p,
    };
    let mut b = Vec::new();
    std::fs::File::open(p)
        .and_then(|f| f.take(MAX_SIGNATURE as u64 + 1).read_to_end(&mut b))
        .with_context(|| format!("reading the root hash signature {p}"))?;
    crate::verity::check_signature(&b)
        .map_err(|e| anyhow::anyhow!("the root hash signature {p} {e}"))?;
    Ok(b)
}

fn activate_verity(
    name: &str,
    data: &Path,
    hash: &Path,
    roothash: &str,
    options: &VerityOptions,
) -> Result<Outcome> {
    // Only our own earlier run (a restarted unit) can have made it this boot.
    if sys::mapper_active(name) {
        return Ok(Outcome::Skipped(format!(
            "/dev/mapper/{name} already active"
        )));
    }
    let key = crate::hex::decode(roothash).context("decoding roothash=")?;
    let sig = options.signature.as_ref().map(read_signature).transpose()?;
    sys::verity::activate(name, data, hash, &key, options, sig.as_deref()).with_context(|| {
        format!(
            "activating dm-verity {name} over {} and {}",
            data.display(),
            hash.display()
        )
    })?;
    Ok(Outcome::Done)
}

/// EIO from a verity device means a block did not match the hash tree.
fn mount_hint(source: &Path, e: std::io::Error) -> anyhow::Error {
    let verity = source.starts_with("/dev/mapper");
    if verity && e.raw_os_error() == Some(5) {
        return anyhow::Error::new(e).context(
            "dm-verity rejected a block: the root partition is corrupted or does not match roothash=",
        );
    }
    e.into()
}

fn mount_root(source: &Path, fstype: &str, target: &str) -> Result<Outcome> {
    if let Some(m) = mountinfo::find(&sys::mount::table(), target) {
        let same = Path::new(&m.source) == source;
        if !same {
            bail!(
                "{target} is already mounted from {} (expected {})",
                m.source,
                source.display()
            );
        }
        return Ok(Outcome::Skipped(format!("{target} already mounted")));
    }
    sys::mount::mount_ro(source, Path::new(target), fstype)
        .map_err(|e| mount_hint(source, e))
        .with_context(|| format!("mounting {} ({fstype}) at {target}", source.display()))?;
    Ok(Outcome::Done)
}

/// A tmpfs at `target` holding the skeleton (a restarted unit finds it).
fn tmpfs_root(target: &str, options: &str) -> Result<Outcome> {
    let t = Path::new(target);
    let mounted =
        mountinfo::find(&sys::mount::table(), target).is_some_and(|m| m.fstype == "tmpfs");
    if !mounted {
        sys::mount::mount_tmpfs(t, options)
            .with_context(|| format!("mounting the tmpfs root at {target} ({options})"))?;
    }
    crate::skeleton::create(t).with_context(|| format!("making the skeleton in {target}"))?;
    Ok(match mounted {
        true => Outcome::Skipped(format!("{target} already a tmpfs")),
        false => Outcome::Done,
    })
}

/// Copies the factory /etc into a writable root that has none: through a
/// temporary name, so a cut copy is started over and never taken for /etc.
fn etc_seed(from: &str, to: &str) -> Result<Outcome> {
    // An empty directory is a mount point or a skeleton's, never a seeded /etc.
    let empty = std::fs::read_dir(to).map(|mut d| d.next().is_none());
    match (Path::new(to).symlink_metadata(), empty) {
        (Err(_), _) => {}
        (Ok(_), Ok(true)) => {
            std::fs::remove_dir(to).with_context(|| format!("removing the empty {to}"))?
        }
        (Ok(_), _) => {
            return Ok(Outcome::Skipped(format!(
                "{to} exists (seeded on an earlier boot)"
            )))
        }
    }
    if !Path::new(from).is_dir() {
        bail!(
            "{from} is not a directory: the image has no factory /etc to seed {to} from (a \
             hermetic /usr image must ship it there; see etc.factory)"
        );
    }
    let tmp = format!("{to}.initrd-helper-seed");
    let n = crate::skeleton::seed(Path::new(from), Path::new(&tmp), Path::new(to))
        .with_context(|| format!("copying {from} to {to}"))?;
    Ok(Outcome::Did(format!(
        "seeded {to} from {from} ({n} entries)"
    )))
}

/// The `data.persist` binds not in place yet (a restarted unit finds some).
fn persist(binds: &[crate::plan::Bind]) -> Result<Outcome> {
    let table = sys::mount::table();
    let mut done = Vec::new();
    for b in binds {
        if mountinfo::find(&table, &b.to).is_some() {
            continue;
        }
        sys::mount::bind(Path::new(&b.from), Path::new(&b.to))
            .with_context(|| format!("bind-mounting {} at {}", b.from, b.to))?;
        done.push(b.to.as_str());
    }
    if done.is_empty() {
        return Ok(Outcome::Skipped(
            "every persisted directory is mounted already".into(),
        ));
    }
    Ok(Outcome::Did(format!(
        "bound {} from the data file system",
        done.join(", ")
    )))
}

fn etc_overlay(
    target: &str,
    lower: &str,
    state_dir: &str,
    upper: &str,
    work: &str,
) -> Result<Outcome> {
    let table = sys::mount::table();
    if mountinfo::find(&table, target).is_some_and(|m| m.fstype == "overlay") {
        return Ok(Outcome::Skipped(format!("{target} already an overlay")));
    }
    if !Path::new(lower).is_dir() {
        bail!(
            "{lower} is not a directory: the image has no /etc to overlay (a hermetic /usr \
             image must ship its factory /etc there; see etc.factory)"
        );
    }
    if mountinfo::find(&table, state_dir).is_none() {
        sys::mount::mount_tmpfs(Path::new(state_dir), ETC_TMPFS_OPTIONS).with_context(|| {
            format!("mounting the tmpfs for the /etc upper layer at {state_dir}")
        })?;
    }
    sys::mount::mount_overlay(
        Path::new(target),
        Path::new(lower),
        Path::new(upper),
        Path::new(work),
    )
    .with_context(|| format!("mounting the overlay on {target}"))?;
    Ok(Outcome::Done)
}

/// The ID kept on the data partition, made (and stored) when there is none.
fn persisted_machine_id(file: &str) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(file) {
        if machine_id::is_valid(s.trim()) {
            return Ok(s.trim().to_string());
        }
        log::warn!("{file} holds no valid machine ID; making a new one");
    }
    let id = machine_id::from_random(sys::random16().context("reading random bytes")?);
    machine_id::write(Path::new(file), &format!("{id}\n"))
        .with_context(|| format!("storing the machine ID in {file}"))?;
    log::info!("machine-id: made {id} and stored it in {file}");
    Ok(id)
}

fn write_machine_id(path: &str, source: &MachineIdSource, env: &Env) -> Result<Outcome> {
    let record = env.at(MACHINE_ID_RECORD);
    let recorded = std::fs::read_to_string(&record).ok();
    let current = std::fs::read_to_string(path).ok();
    let id = match source {
        MachineIdSource::KernelCommandLine(id) | MachineIdSource::Firmware(id) => id.clone(),
        MachineIdSource::Persisted(file) => persisted_machine_id(file)?,
        MachineIdSource::Random => match (&recorded, &current) {
            (Some(r), Some(c)) if r == c && machine_id::is_valid(r.trim()) => {
                return Ok(Outcome::Skipped(
                    "machine-id already written this boot".into(),
                ))
            }
            _ => machine_id::from_random(sys::random16().context("reading random bytes")?),
        },
    };
    let content = format!("{id}\n");
    machine_id::write(Path::new(path), &content).with_context(|| format!("writing {path}"))?;
    machine_id::write(&record, &content)
        .with_context(|| format!("recording the machine-id in {}", record.display()))?;
    Ok(Outcome::Done)
}

/// Applies `step` with its paths under `env`'s root.
fn apply_step(step: &Step, env: &Env) -> Result<Outcome> {
    match &env.resolve(step) {
        Step::ActivateVerity {
            name,
            data,
            hash,
            roothash,
            options,
            ..
        } => activate_verity(name, data, hash, roothash, options),
        Step::MountRoot(m) | Step::MountUsr(m) => mount_root(&m.source, &m.fstype, &m.target),
        Step::TmpfsRoot { target, options } => tmpfs_root(target, options),
        Step::Skeleton { target } => crate::skeleton::create(Path::new(target))
            .map(|()| Outcome::Done)
            .with_context(|| format!("making the skeleton in {target}")),
        Step::EtcSeed { from, to } => etc_seed(from, to),
        Step::Persist { binds } => persist(binds),
        Step::EtcOverlay {
            target,
            lower,
            state_dir,
            upper,
            work,
        } => etc_overlay(target, lower, state_dir, upper, work),
        Step::MachineId { path, source } => write_machine_id(path, source, env),
        Step::Data(d) => match mountinfo::find(&sys::mount::table(), &d.target) {
            // A restarted unit: the volume is open and mounted already.
            Some(_) => Ok(Outcome::Skipped(format!("{} already mounted", d.target))),
            None => data::run(d).map(Outcome::Did),
        },
    }
}

/// Runs every step; stops at the first failure with the step in the context.
/// Carries out the plan's steps in order; each step's outcome and time go
/// into `done` (the status report), the failed one's too.
pub fn apply(plan: &Plan, env: &Env, done: &mut Vec<StepStatus>) -> Result<()> {
    for step in &plan.steps {
        let t = Instant::now();
        let result = apply_step(step, env).with_context(|| format!("step {}", step.name()));
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let (outcome, text) = match &result {
            Ok(Outcome::Done) => ("done", step.describe()),
            Ok(Outcome::Did(what)) => ("done", what.clone()),
            Ok(Outcome::Skipped(why)) => ("skipped", why.clone()),
            Err(e) => ("failed", crate::inputs::error_line(e)),
        };
        done.push(StepStatus {
            name: step.name().into(),
            outcome: outcome.into(),
            ms,
            text: text.clone(),
        });
        match result? {
            Outcome::Skipped(_) => {
                log::info!("step {}: skipped in {ms:.1} ms ({text})", step.name())
            }
            _ => log::info!("step {}: done in {ms:.1} ms: {text}", step.name()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file-only steps of a data-root boot, on a temp root: the
    /// skeleton, the one-time /etc seed (over the skeleton's empty /etc),
    /// the kept machine ID; a second run (a restarted unit, the next boot)
    /// keeps what the first made.
    #[test]
    fn data_root_steps_run_on_a_temp_root_and_rerun_cleanly() {
        let d = tempfile::tempdir().unwrap();
        let env = Env::new(d.path());
        let factory = env.at("/sysroot/usr/share/factory/etc");
        std::fs::create_dir_all(&factory).unwrap();
        std::fs::write(factory.join("hostname"), "appliance\n").unwrap();
        let steps = [
            Step::Skeleton {
                target: "/sysroot".into(),
            },
            Step::EtcSeed {
                from: "/sysroot/usr/share/factory/etc".into(),
                to: "/sysroot/etc".into(),
            },
            Step::MachineId {
                path: "/sysroot/etc/machine-id".into(),
                source: MachineIdSource::Persisted(
                    "/sysroot/var/lib/initrd-helper/machine-id".into(),
                ),
            },
        ];
        let run = || -> Vec<String> {
            steps
                .iter()
                .map(|s| match apply_step(s, &env).unwrap() {
                    Outcome::Done => "done".to_string(),
                    Outcome::Skipped(w) => format!("skipped: {w}"),
                    Outcome::Did(w) => w,
                })
                .collect()
        };
        let first = run();
        assert!(first[1].starts_with("seeded "), "{first:?}");
        let id = std::fs::read_to_string(env.at("/sysroot/etc/machine-id")).unwrap();
        assert!(machine_id::is_valid(id.trim()), "{id:?}");
        assert_eq!(
            std::fs::read_to_string(env.at("/sysroot/etc/hostname")).unwrap(),
            "appliance\n"
        );
        let second = run();
        assert!(second[1].starts_with("skipped"), "{second:?}");
        assert_eq!(
            std::fs::read_to_string(env.at("/sysroot/etc/machine-id")).unwrap(),
            id
        );
        assert!(env.at("/run/initrd-helper/machine-id").exists());
        assert!(!env.at("/sysroot/etc.initrd-helper-seed").exists());
    }

    /// A random machine ID is written once per boot: a restarted unit finds
    /// it recorded under /run and keeps it.
    #[test]
    fn a_random_machine_id_is_kept_within_a_boot() {
        let d = tempfile::tempdir().unwrap();
        let env = Env::new(d.path());
        std::fs::create_dir_all(env.at("/sysroot/etc")).unwrap();
        let step = Step::MachineId {
            path: "/sysroot/etc/machine-id".into(),
            source: MachineIdSource::Random,
        };
        assert!(matches!(apply_step(&step, &env).unwrap(), Outcome::Done));
        let id = std::fs::read_to_string(env.at("/sysroot/etc/machine-id")).unwrap();
        assert!(matches!(
            apply_step(&step, &env).unwrap(),
            Outcome::Skipped(_)
        ));
        assert_eq!(
            std::fs::read_to_string(env.at("/sysroot/etc/machine-id")).unwrap(),
            id
        );
    }

    /// A signature file that is missing, empty, PEM, too large or cut
    /// short is named as such before the kernel is asked.
    #[test]
    fn bad_signature_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let file = |name: &str, b: &[u8]| {
            let p = d.path().join(name);
            std::fs::write(&p, b).unwrap();
            Signature::Path(p.display().to_string())
        };
        let mut der = vec![0x30, 0x82, 0x01, 0x00];
        der.resize(4 + 256, 7);
        let cases = [
            (Signature::Path("/nonexistent/sig".into()), "No such file"),
            (file("empty", b""), "is empty"),
            (file("pem", b"-----BEGIN PKCS7-----\n"), "is PEM"),
            (file("big", &vec![0x30; 100_000]), "over 65536 bytes"),
            (file("cut", &der[..100]), "truncated"),
            (file("text", b"hello"), "not a DER-encoded"),
        ];
        for (sig, needle) in cases {
            let e = crate::inputs::error_line(&read_signature(&sig).unwrap_err());
            assert!(
                e.contains(needle) && !e.contains('\n'),
                "{e:?} lacks {needle:?}"
            );
        }
        assert_eq!(read_signature(&file("good", &der)).unwrap(), der);
    }
}
