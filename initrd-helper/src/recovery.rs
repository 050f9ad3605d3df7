//! Recovery without a shell, the pure part: the options (config and
//! command line), the question asked, systemd's password-agent formats
//! (the `ask.` file and the agent's reply, docs/PASSWORD_AGENTS.md), and
//! the typed key's canonical form. `sys::ask` does the asking and
//! `recover` the unlock and the re-seal.

use serde::Serialize;
use zeroize::Zeroizing;

/// Tries when nothing is configured: as systemd-cryptsetup's `tries=3`.
pub const DEFAULT_TRIES: u8 = 3;
/// More tries than this are refused: an unattended prompt is not a
/// brute-force oracle (each try costs a PBKDF2 of 1000 rounds only).
pub const MAX_TRIES: u8 = 10;
/// The longest answer read (a recovery key is 71 characters).
pub const MAX_ANSWER: usize = 512;

/// What the data step does when the TPM cannot unlock an existing volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryOptions {
    /// Ask for the recovery key on the console (else: fail, as before).
    pub prompt: bool,
    pub tries: u8,
    /// Seconds each question waits; 0: for ever (systemd-cryptsetup's default).
    pub timeout_secs: u32,
    /// After a recovery unlock, seal a new TPM keyslot to this boot's
    /// policy (and bind it), so the next boot unlocks by itself.
    pub reseal: bool,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            prompt: true,
            tries: DEFAULT_TRIES,
            timeout_secs: 0,
            reseal: false,
        }
    }
}

/// The question, with the try it is.
pub fn question(dev: &str, attempt: u8, tries: u8) -> String {
    format!(
        "initrd-helper: the TPM cannot unlock the data volume {dev}. Type its recovery key \
         (try {attempt} of {tries}):"
    )
}

/// The agent's `Id=`: what the question is for (systemd's form).
pub fn ask_id(dev: &str) -> String {
    format!("cryptsetup:{dev}")
}

/// An `ask.` file for systemd's password agents. `not_after_usec`:
/// CLOCK_MONOTONIC deadline, 0 for none. `Message=` is one line: line
/// breaks in the inputs are flattened.
pub fn ask_file(pid: u32, socket: &str, not_after_usec: u64, message: &str, id: &str) -> String {
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    format!(
        "[Ask]\nPID={pid}\nSocket={}\nAcceptCached=0\nEcho=0\nNotAfter={not_after_usec}\n\
         Message={}\nIcon=drive-harddisk\nId={}\n",
        one_line(socket),
        one_line(message),
        one_line(id)
    )
}

/// What an agent answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Key(Zeroizing<String>),
    /// The user cancelled (an agent's `-`), or no one answered in time.
    NoAnswer,
}

/// An agent's datagram: `+` and the password (a trailing NUL allowed), or
/// `-` for a cancel. `None`: not a valid reply (ignored, as systemd does).
pub fn parse_reply(datagram: &[u8]) -> Option<Answer> {
    let body = datagram.strip_suffix(&[0]).unwrap_or(datagram);
    match body.split_first()? {
        (b'+', key) if key.len() <= MAX_ANSWER => std::str::from_utf8(key)
            .ok()
            .map(|k| Answer::Key(Zeroizing::new(k.to_string()))),
        (b'-', _) => Some(Answer::NoAnswer),
        _ => None,
    }
}

/// The passphrase to try for what was typed: a recovery key in any case,
/// with or without its dashes or with spaces, becomes its canonical
/// 8x8 dashed form; anything else is tried as typed (trailing line end
/// removed), as a passphrase slot of the owner's own may hold it.
pub fn canonical_key(typed: &str) -> Zeroizing<String> {
    let trimmed = typed.trim_end_matches(['\n', '\r']);
    let compact: Zeroizing<String> = Zeroizing::new(
        trimmed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect(),
    );
    let modhex = compact.len() == 64 && compact.bytes().all(|b| b"cbdefghijklnrtuv".contains(&b));
    if !modhex {
        return Zeroizing::new(trimmed.to_string());
    }
    let groups: Vec<&str> = (0..8).map(|i| &compact[i * 8..i * 8 + 8]).collect();
    Zeroizing::new(groups.join("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cccccccc-bbbbbbbb-dddddddd-eeeeeeee-ffffffff-gggggggg-hhhhhhhh-iiiiiiii";

    #[test]
    fn typed_keys_become_canonical() {
        for typed in [
            KEY.to_string(),
            format!("{KEY}\n"),
            KEY.to_uppercase(),
            KEY.replace('-', ""),
            KEY.replace('-', " "),
        ] {
            assert_eq!(canonical_key(&typed).as_str(), KEY, "{typed:?}");
        }
        // Not a recovery key: tried as typed (an owner's passphrase).
        assert_eq!(
            canonical_key("My Pass-phrase\r\n").as_str(),
            "My Pass-phrase"
        );
        assert_eq!(canonical_key(&KEY[..70]).as_str(), &KEY[..70]);
    }

    #[test]
    fn agent_replies() {
        assert_eq!(
            parse_reply(b"+secret\0"),
            Some(Answer::Key(Zeroizing::new("secret".into())))
        );
        assert_eq!(
            parse_reply(b"+"),
            Some(Answer::Key(Zeroizing::new(String::new())))
        );
        assert_eq!(parse_reply(b"-"), Some(Answer::NoAnswer));
        for bad in [&b""[..], b"secret", b"\0", b"+\xff\xfe"] {
            assert_eq!(parse_reply(bad), None, "{bad:?}");
        }
        let long = [b"+".as_slice(), &[b'a'; MAX_ANSWER + 1]].concat();
        assert_eq!(parse_reply(&long), None);
    }

    #[test]
    fn ask_file_is_one_section_of_single_lines() {
        let f = ask_file(
            42,
            "/run/systemd/ask-password/sck.1",
            0,
            "two\nlines",
            &ask_id("/dev/vda6"),
        );
        assert_eq!(
            f,
            "[Ask]\nPID=42\nSocket=/run/systemd/ask-password/sck.1\nAcceptCached=0\nEcho=0\n\
             NotAfter=0\nMessage=two lines\nIcon=drive-harddisk\nId=cryptsetup:/dev/vda6\n"
        );
        assert!(question("/dev/vda6", 1, 3).contains("try 1 of 3"));
    }
}
