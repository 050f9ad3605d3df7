//! Asking the person at the console for the recovery key. Where systemd
//! runs the initrd with a password agent (the console agent dracut and
//! mkosi install, or Plymouth's), through systemd's agent protocol: an
//! `ask.` file under /run/systemd/ask-password and a datagram socket only
//! root may write to (docs/PASSWORD_AGENTS.md), so the agent owns the
//! console and its echo. Without systemd (the helper as /init), on
//! /dev/console directly, echo off.

use crate::recovery::{self, Answer, MAX_ANSWER};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Where questions for systemd's agents go (under the root).
pub const ASK_DIR: &str = "run/systemd/ask-password";
/// The agents' path units: one of them installed means an agent answers.
const AGENT_UNITS: [&str; 2] = [
    "systemd-ask-password-console.path",
    "systemd-ask-password-plymouth.path",
];
const UNIT_DIRS: [&str; 2] = ["usr/lib/systemd/system", "lib/systemd/system"];

/// How the question is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// systemd's password agents, through this directory.
    Agent(PathBuf),
    /// This terminal, ourselves.
    Console(PathBuf),
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Agent(_) => write!(f, "systemd's password agent"),
            Channel::Console(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The agent when systemd is PID 1 under `root` and an agent is installed,
/// else the console.
pub fn channel(root: &Path) -> Channel {
    let systemd = root.join("run/systemd/system").is_dir();
    let agent = UNIT_DIRS
        .iter()
        .any(|d| AGENT_UNITS.iter().any(|u| root.join(d).join(u).exists()));
    if systemd && agent {
        Channel::Agent(root.join(ASK_DIR))
    } else {
        Channel::Console(root.join("dev/console"))
    }
}

/// Asks once; `timeout` `None` waits for ever.
pub fn ask(ch: &Channel, message: &str, id: &str, timeout: Option<Duration>) -> io::Result<Answer> {
    match ch {
        Channel::Agent(dir) => ask_agent(dir, message, id, timeout),
        Channel::Console(tty) => ask_console(tty, message, timeout),
    }
}

/// Removes the question's files however the asking ends.
struct Remove(Vec<PathBuf>);

impl Drop for Remove {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1000)
}

fn ask_agent(dir: &Path, message: &str, id: &str, timeout: Option<Duration>) -> io::Result<Answer> {
    std::fs::create_dir_all(dir)?;
    let tag: String = super::random16()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sck = dir.join(format!("sck.{tag}"));
    let ask = dir.join(format!("ask.{tag}"));
    let tmp = dir.join(format!("tmp.{tag}"));
    let _remove = Remove(vec![sck.clone(), ask.clone(), tmp.clone()]);
    let sock = UnixDatagram::bind(&sck)?;
    // Only root may answer: anyone who can write here could feed us keys.
    std::fs::set_permissions(&sck, std::fs::Permissions::from_mode(0o600))?;
    let not_after = timeout.map_or(0, |t| {
        let t = u64::try_from(t.as_micros()).unwrap_or(u64::MAX);
        monotonic_usec().saturating_add(t)
    });
    let text = recovery::ask_file(
        std::process::id(),
        &sck.display().to_string(),
        not_after,
        message,
        id,
    );
    // Agents watch for ask.* being closed or moved in: write, then rename.
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &ask)?;
    let start = Instant::now();
    let mut buf = Zeroizing::new(vec![0u8; MAX_ANSWER + 2]);
    loop {
        let left = match timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(l) if !l.is_zero() => Some(l),
                _ => return Ok(Answer::NoAnswer),
            },
            None => None,
        };
        sock.set_read_timeout(left)?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Some(a) = recovery::parse_reply(&buf[..n]) {
                    return Ok(a);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Answer::NoAnswer)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Echo off for as long as it lives; the terminal's modes come back after.
struct NoEcho<'f> {
    tty: &'f std::fs::File,
    saved: Option<rustix::termios::Termios>,
}

impl<'f> NoEcho<'f> {
    fn new(tty: &'f std::fs::File) -> NoEcho<'f> {
        use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
        // Not a terminal (a pipe in tests): nothing to turn off.
        let saved = tcgetattr(tty).ok();
        if let Some(s) = &saved {
            let mut quiet = s.clone();
            quiet.local_modes.remove(LocalModes::ECHO);
            quiet.local_modes.insert(LocalModes::ICANON);
            let _ = tcsetattr(tty, OptionalActions::Now, &quiet);
        }
        NoEcho { tty, saved }
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = rustix::termios::tcsetattr(self.tty, rustix::termios::OptionalActions::Now, s);
        }
    }
}

fn ask_console(tty: &Path, message: &str, timeout: Option<Duration>) -> io::Result<Answer> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(tty)?;
    let quiet = NoEcho::new(&f);
    (&f).write_all(format!("\n{message} ").as_bytes())?;
    let line = read_line(quiet.tty, timeout);
    drop(quiet);
    let _ = (&f).write_all(b"\n");
    Ok(match line? {
        Some(l) => Answer::Key(l),
        None => Answer::NoAnswer,
    })
}

/// One line, at most `MAX_ANSWER` bytes (more is a wrong key, not a
/// bigger buffer); `None` when the time is up or the input ended.
fn read_line(
    mut f: &std::fs::File,
    timeout: Option<Duration>,
) -> io::Result<Option<Zeroizing<String>>> {
    use rustix::event::{poll, PollFd, PollFlags};
    let start = Instant::now();
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_ANSWER));
    let mut byte = [0u8; 1];
    loop {
        if let Some(t) = timeout {
            let Some(left) = t.checked_sub(start.elapsed()).filter(|l| !l.is_zero()) else {
                return Ok(None);
            };
            let ts = rustix::time::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&f, PollFlags::IN)];
            if poll(&mut fds, Some(&ts))? == 0 {
                return Ok(None);
            }
        }
        match f.read(&mut byte) {
            Ok(0) => return Ok(None),
            Ok(_) if byte[0] == b'\n' || byte[0] == b'\r' => break,
            Ok(_) if line.len() < MAX_ANSWER => line.push(byte[0]),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(Zeroizing::new(
        String::from_utf8_lossy(&line).into_owned(),
    )))
}

#[cfg(test)]
mod tests {
    //! The agent side played by a thread, as systemd's console agent does
    //! it: find the `ask.` file, read `Socket=`, send `+KEY`.
    use super::*;

    fn answer_as_agent(dir: PathBuf, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let start = Instant::now();
            loop {
                assert!(start.elapsed() < Duration::from_secs(10), "no ask file");
                let found = std::fs::read_dir(&dir).ok().and_then(|rd| {
                    rd.flatten()
                        .find(|e| e.file_name().to_string_lossy().starts_with("ask."))
                });
                if let Some(e) = found {
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    let sck = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Socket="))
                        .unwrap()
                        .to_string();
                    let mode = std::fs::metadata(&sck).unwrap().permissions().mode();
                    assert_eq!(mode & 0o777, 0o600, "the socket is writable by others");
                    UnixDatagram::unbound()
                        .unwrap()
                        .send_to(reply, &sck)
                        .unwrap();
                    return text;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    }

    #[test]
    fn agent_answer_is_read_and_the_question_removed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(ASK_DIR);
        let agent = answer_as_agent(dir.clone(), b"+the-key\0");
        let a = ask(
            &Channel::Agent(dir.clone()),
            "Key?",
            "cryptsetup:/dev/x",
            None,
        )
        .unwrap();
        assert_eq!(a, Answer::Key(Zeroizing::new("the-key".into())));
        let text = agent.join().unwrap();
        assert!(
            text.contains("Message=Key?\n") && text.contains("Echo=0\n"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "files left behind"
        );
    }

    #[test]
    fn agent_cancel_and_timeout_are_no_answer() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join(ASK_DIR);
        let agent = answer_as_agent(dir.clone(), b"-");
        let ch = Channel::Agent(dir.clone());
        assert_eq!(ask(&ch, "Key?", "x", None).unwrap(), Answer::NoAnswer);
        agent.join().unwrap();
        let t = Instant::now();
        let a = ask(&ch, "Key?", "x", Some(Duration::from_millis(200))).unwrap();
        assert_eq!(a, Answer::NoAnswer);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A pseudo-terminal: its controller side (the person) and the
    /// terminal's path (the console the helper opens).
    fn pty() -> (std::fs::File, PathBuf) {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let path = PathBuf::from(name.to_string_lossy().into_owned());
        (std::fs::File::from(master), path)
    }

    /// What the terminal showed within `wait`.
    fn shown(master: &mut std::fs::File, wait: Duration) -> String {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        let ts = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(wait.as_nanos()).unwrap(),
        };
        while poll(&mut [PollFd::new(&*master, PollFlags::IN)], Some(&ts)).unwrap() > 0 {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => out.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn console_reads_a_line_with_echo_off() {
        let (mut master, tty) = pty();
        let person = std::thread::spawn(move || {
            let mut seen = String::new();
            while !seen.contains("Key?") {
                seen += &shown(&mut master, Duration::from_millis(100));
            }
            master.write_all(b"typed-key\n").unwrap();
            seen + &shown(&mut master, Duration::from_millis(300))
        });
        let a = ask(
            &Channel::Console(tty),
            "Key?",
            "x",
            Some(Duration::from_secs(10)),
        )
        .unwrap();
        assert_eq!(a, Answer::Key(Zeroizing::new("typed-key".into())));
        let screen = person.join().unwrap();
        assert!(screen.contains("Key?"), "{screen:?}");
        assert!(!screen.contains("typed"), "the key was echoed: {screen:?}");
    }

    #[test]
    fn console_times_out_without_an_answer() {
        let (_master, tty) = pty();
        let t = Instant::now();
        let a = ask(
            &Channel::Console(tty),
            "Key?",
            "x",
            Some(Duration::from_millis(200)),
        )
        .unwrap();
        assert_eq!(a, Answer::NoAnswer);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn channel_needs_systemd_and_an_agent() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(channel(d.path()), Channel::Console(_)));
        std::fs::create_dir_all(d.path().join("run/systemd/system")).unwrap();
        assert!(matches!(channel(d.path()), Channel::Console(_)));
        let units = d.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("systemd-ask-password-console.path"), "").unwrap();
        assert_eq!(channel(d.path()), Channel::Agent(d.path().join(ASK_DIR)));
    }
}
