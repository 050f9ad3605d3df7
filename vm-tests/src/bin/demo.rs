//! `make demo`: boots the demo appliance with a fresh software TPM, shows its
//! first boot on the console, then the helper's plan and step timings.
//! `INTERACTIVE=1` gives the serial console (root shell) instead; power the
//! guest off (`poweroff`) or press Ctrl-A X to leave.

use std::process::ExitCode;
use vm_tests::{boot, Artifacts, BootOpts, Scratch};

fn main() -> ExitCode {
    let a = Artifacts::from_env();
    let s = Scratch::new("demo");
    let interactive = std::env::var("INTERACTIVE").is_ok_and(|v| v == "1");
    // Slot A through dm-verity, as a production boot entry would name it.
    let append = format!(
        "roothash={}{}",
        a.roothash("a"),
        if interactive { "" } else { " ih_test.poweroff" }
    );
    let opts = BootOpts {
        append: &append,
        echo: true,
        interactive,
        ..BootOpts::new("demo", &a.disk, &s.0)
    };
    let b = boot(&a, &opts);
    if interactive {
        return ExitCode::SUCCESS;
    }
    println!("\n===== initrd-helper on this boot: plan and step timings =====");
    for l in b
        .lines_with("initrd-helper[")
        .iter()
        .filter(|l| !l.contains("IHJ "))
    {
        println!("{l}");
    }
    println!(
        "===== booted to the report in {:.1} s wall (TCG) =====",
        b.wall.as_secs_f64()
    );
    if b.reached {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
