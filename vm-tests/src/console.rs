//! The serial console: where it goes, and typing on it (a person
//! answering a prompt) through QEMU's socket chardev.

use crate::BootOpts;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(crate) fn serial(o: &BootOpts, console: &Path) -> String {
    if o.interactive {
        "mon:stdio".into()
    } else if o.typed.is_empty() {
        format!("file:{}", console.display())
    } else {
        "chardev:ser0".into()
    }
}

/// The serial console's socket when something is to be typed on it.
pub(crate) fn serial_socket(o: &BootOpts) -> PathBuf {
    o.tpm_dir.join("serial.sock")
}

/// How long a person takes to start typing once the prompt shows (the
/// agent sets the terminal up around printing it).
const TYPE_DELAY: Duration = Duration::from_millis(1500);

/// What is typed on the serial console, and how far it got.
#[derive(Default)]
pub(crate) struct Typist {
    next: usize,
    prompt_seen: Option<Instant>,
    pub(crate) conn: Option<UnixStream>,
}

/// Connects to the serial console's socket (QEMU waits for this before it
/// starts the guest, so nothing is lost) and copies everything the guest
/// prints into the console file, byte for byte. QEMU's own `logfile=`
/// is not used: it logs a byte again each time a full socket makes the
/// serial port retry it, which put stray characters into the console.
pub(crate) fn attach(o: &BootOpts, console: &Path) -> UnixStream {
    use std::io::{Read, Write};
    let t = Instant::now();
    let conn = loop {
        match UnixStream::connect(serial_socket(o)) {
            Ok(c) => break c,
            Err(e) if t.elapsed() > Duration::from_secs(30) => {
                panic!("connecting to the serial console's socket: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut out = std::fs::File::create(console)
        .unwrap_or_else(|e| panic!("creating {}: {e}", console.display()));
    let mut r = conn
        .try_clone()
        .unwrap_or_else(|e| panic!("the serial console's socket: {e}"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    conn
}

/// Types the texts whose console text has appeared (in order), each
/// `TYPE_DELAY` after its text, on the connection `attach` made.
pub(crate) fn type_on_console(o: &BootOpts, text: &str, t: &mut Typist) {
    use std::io::Write;
    while let Some((wait_for, keys)) = o.typed.get(t.next) {
        if !text.contains(wait_for.as_str()) {
            return;
        }
        let seen = *t.prompt_seen.get_or_insert_with(Instant::now);
        if seen.elapsed() < TYPE_DELAY {
            return;
        }
        let Some(c) = t.conn.as_mut() else { return };
        c.write_all(keys.as_bytes())
            .unwrap_or_else(|e| panic!("typing on the serial console: {e}"));
        eprintln!(
            "boot {}: typed {} bytes after {wait_for:?}",
            o.name,
            keys.len()
        );
        t.next += 1;
        t.prompt_seen = None;
    }
}

/// Prints what was added to the console since `seen` bytes.
pub(crate) fn echo_new(text: &str, seen: &mut usize) {
    if let Some(new) = text.get(*seen..) {
        print!("{new}");
        *seen = text.len();
    }
}
