//! Test support: a fresh swtpm per test on a loopback port pair (the swtpm
//! test tier). tss-esapi's swtpm TCTI config speaks TCP only.

use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

pub struct Swtpm {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Two consecutive ports: swtpm's server and control channels.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

pub fn swtpm() -> Swtpm {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.path().display()))
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
        .expect("swtpm (Debian package swtpm) is needed by the swtpm tests");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Swtpm {
        child,
        _dir: dir,
        port,
    }
}

pub fn context(t: &Swtpm) -> Context {
    let conf = TctiNameConf::from_str(&tcti(t)).unwrap();
    Context::new(conf).unwrap()
}

/// The TCTI string for `t` (tss-esapi and systemd's SYSTEMD_TPM2_DEVICE).
pub fn tcti(t: &Swtpm) -> String {
    format!("swtpm:host=127.0.0.1,port={}", t.port)
}
