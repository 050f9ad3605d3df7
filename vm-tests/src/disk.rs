//! Disk images and the TPM on the host side: the test disk with its
//! digests (the "not a byte written" checks), byte-range edits, key
//! checks with the host's cryptsetup, and enrolment through the helper
//! against a TCP swtpm.

use crate::{Artifacts, Scratch};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A writable copy of the test disk and its digests, for the "not a byte
/// written" checks of boots with writes enabled.
pub struct TestDisk {
    pub path: PathBuf,
    pub sha256: String,
    /// Digest of the image's partitions before the data partition (ESP,
    /// both root slots and their hash partitions).
    pub slots_sha256: String,
    layout: Vec<(u64, u64)>,
}

/// Byte offset and size of each partition, from the builder's layout.
/// Panics on a missing, malformed or empty layout: the digests built on it
/// would otherwise compare nothing.
pub fn layout(a: &Artifacts) -> Vec<(u64, u64)> {
    let p = a.disk.with_file_name("layout.json");
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let parts = v["partitiontable"]["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{}: no partitiontable.partitions", p.display()));
    let out: Vec<(u64, u64)> = parts
        .iter()
        .map(|e| {
            let n = |k: &str| {
                e[k].as_u64()
                    .unwrap_or_else(|| panic!("{}: a partition without {k}", p.display()))
                    * 512
            };
            (n("start"), n("size"))
        })
        .collect();
    assert!(out.len() >= 2, "{}: fewer than two partitions", p.display());
    out
}

/// Digest of every partition but the last (the data partition) of `path`.
pub fn slots_digest(path: &Path, layout: &[(u64, u64)]) -> String {
    let n = layout.len().saturating_sub(1);
    layout[..n]
        .iter()
        .map(|&(off, len)| sha256_range(path, off, len))
        .collect::<Vec<_>>()
        .join(",")
}

impl TestDisk {
    pub fn new(s: &Scratch, a: &Artifacts) -> TestDisk {
        let path = s.copy_disk(&a.disk);
        let sha256 = sha256(&path);
        let layout = layout(a);
        let slots_sha256 = slots_digest(&path, &layout);
        TestDisk {
            path,
            sha256,
            slots_sha256,
            layout,
        }
    }

    pub fn unchanged(&self) -> bool {
        sha256(&self.path) == self.sha256
    }

    /// Every partition but the data partition is byte-identical.
    pub fn slots_unchanged(&self) -> bool {
        slots_digest(&self.path, &self.layout) == self.slots_sha256
    }
}

/// Runs `cmd` and returns the first word of its output: a 64-hex sha256.
/// A failing tool or an output that is not a digest fails the test, so
/// "unchanged" can never be two empty strings compared.
fn digest_of(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let d = text.split_whitespace().next().unwrap_or("").to_string();
    assert!(
        out.status.success() && d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()),
        "{what} failed ({}): {} {}",
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// sha256 of a file, via sha256sum (the disk images are large and sparse).
pub fn sha256(p: &Path) -> String {
    let mut c = Command::new("sha256sum");
    c.arg(p);
    digest_of(c, &format!("sha256sum {}", p.display()))
}

/// sha256 of `len` bytes at `offset` of a file (one partition of a disk
/// image), through `dd | sha256sum`; `pipefail` makes a failing dd fail it,
/// and a short read (past the file's end) fails too.
pub fn sha256_range(p: &Path, offset: u64, len: u64) -> String {
    let size = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= size) && len > 0,
        "{}: range {offset}+{len} is not inside the {size}-byte file",
        p.display()
    );
    let script = format!(
        "set -o pipefail; dd if='{}' bs=1M iflag=skip_bytes,count_bytes skip={offset} count={len} status=none | sha256sum",
        p.display()
    );
    let mut c = Command::new("bash");
    c.args(["-c", &script]);
    digest_of(c, &format!("dd | sha256sum of {}", p.display()))
}

/// Copies `len` bytes at `offset` of `from` to `to` at `to_offset`.
pub fn copy_range(from: &Path, offset: u64, len: u64, to: &Path, to_offset: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut src = fs::File::open(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(to)
        .unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    src.seek(SeekFrom::Start(offset))
        .and_then(|_| dst.seek(SeekFrom::Start(to_offset)))
        .unwrap_or_else(|e| panic!("seeking: {e}"));
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact(&mut buf[..n])
            .unwrap_or_else(|e| panic!("reading {}: {e}", from.display()));
        dst.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("writing {}: {e}", to.display()));
        done += n as u64;
    }
    dst.sync_all()
        .unwrap_or_else(|e| panic!("syncing {}: {e}", to.display()));
}

/// Inverts one byte of a file in place (the tamper scenario).
pub fn flip_byte(p: &Path, offset: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut b))
        .unwrap_or_else(|e| panic!("reading: {e}"));
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(&b))
        .unwrap_or_else(|e| panic!("writing: {e}"));
}

pub fn is_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// Whether `key` opens the LUKS header in `img` (a volume or a copy of its
/// first 16 MiB) with the host's plain cryptsetup: no TPM, no token plugin.
pub fn key_opens(img: &Path, key: &str) -> bool {
    use std::io::Write;
    let mut c = Command::new("cryptsetup")
        .args(["luksOpen", "--test-passphrase", "--key-file=-"])
        .arg(img)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cryptsetup (Debian cryptsetup-bin): {e}"));
    let written = c
        .stdin
        .take()
        .map(|mut i| i.write_all(key.as_bytes()).is_ok())
        .unwrap_or(false);
    c.wait().map(|s| s.success()).unwrap_or(false) && written
}

fn helper_bin() -> PathBuf {
    PathBuf::from(
        std::env::var("IH_HELPER_BIN")
            .unwrap_or_else(|_| panic!("IH_HELPER_BIN is set by `make test`")),
    )
}

/// Runs `f` with a TCTI string for a swtpm (TCP) on the state in
/// `tpm_dir` (the state the next boot's swtpm loads), then stops it.
fn with_tcp_swtpm<T>(tpm_dir: &Path, f: impl FnOnce(&str) -> T) -> T {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        l.local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("port: {e}"))
    };
    let mut tpm = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", tpm_dir.display()))
        .args([
            "--server",
            &format!("type=tcp,bindaddr=127.0.0.1,port={port}"),
        ])
        .args([
            "--ctrl",
            &format!("type=tcp,bindaddr=127.0.0.1,port={}", port + 1),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("swtpm: {e}"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = f(&format!("swtpm:host=127.0.0.1,port={port}"));
    let _ = tpm.kill();
    let _ = tpm.wait();
    r
}

/// `initrd-helper encrypt --pcrs PCRS` of the blank `img` against the swtpm
/// state in `tpm_dir`: a volume made outside the machine's own first boot.
/// Returns the helper's JSON.
pub fn enroll(tpm_dir: &Path, img: &Path, pcrs: &str) -> serde_json::Value {
    let out = with_tcp_swtpm(tpm_dir, |tcti| {
        Command::new(helper_bin())
            .args(["encrypt", "--pcrs", pcrs, "--tcti", tcti])
            .arg(img)
            .output()
            .unwrap_or_else(|e| panic!("initrd-helper encrypt: {e}"))
    });
    assert!(
        out.status.success(),
        "initrd-helper encrypt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("encrypt's JSON: {e}"))
}

/// Resets the dictionary-attack counter of the TPM state in `tpm_dir`
/// (empty lockout auth, as swtpm starts): every unclean power-off while a
/// DA-protected key was in use counts as a failure, and a test that cuts
/// the power ten times in a row would otherwise hit lockout (which the
/// helper names as such; a unit test checks that).
pub fn clear_da_lockout(tpm_dir: &Path) {
    let out = with_tcp_swtpm(tpm_dir, |tcti| {
        Command::new("tpm2_dictionarylockout")
            .args(["--clear-lockout", "-T", tcti])
            .output()
            .unwrap_or_else(|e| panic!("tpm2_dictionarylockout (Debian tpm2-tools): {e}"))
    });
    assert!(
        out.status.success(),
        "tpm2_dictionarylockout --clear-lockout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
