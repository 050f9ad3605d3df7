//! A factory reset requested from the running system: stage 2 sets the
//! `FactoryResetRequest` EFI variable as systemd 258's
//! `systemd-factory-reset request` does (Debian 12's systemd lacks the
//! tool; the guest probe writes the same bytes), and the next boot's
//! helper resets the data volume once and deletes the variable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use vm_tests::machine::{helper_lines, Machine};

#[test]
#[ignore = "VM test: run through `make test`"]
fn vm_factory_reset_efi_request() {
    let m = Machine::new("factory_reset_efi_request", true);
    let b1 = m.boot_ok("request", "ih_test.write=old-data ih_test.request_reset");
    let r1 = b1.report();
    b1.check(r1["reset_var"] == "absent", "a request before any was made");
    b1.check(
        r1["reset_request"] == "ok",
        "stage 2 could not set FactoryResetRequest",
    );
    b1.check(r1["data_write"] == "ok", "writing the data failed");

    let b2 = m.boot_ok("reset", "ih_test.write=new-data");
    let r2 = b2.report();
    b2.check(
        helper_lines(&b2, "(request \"efi:") >= 1,
        "the plan does not carry out the EFI request",
    );
    b2.check(
        r2["luks_uuid"] != r1["luks_uuid"],
        "the volume was not reset",
    );
    b2.check(
        r2["data_probe"].is_empty(),
        "data from before the reset survived",
    );
    b2.check(
        r2["machine_id"] != r1["machine_id"],
        "the machine-id survived the reset",
    );
    b2.check(
        helper_lines(&b2, "FactoryResetRequest EFI variable is cleared") == 1,
        "the helper did not say it cleared the request",
    );
    b2.check(
        r2["reset_var"] == "absent",
        "the request is still set after the reset",
    );

    // Once per request: the next boot keeps what the reset made.
    let b3 = m.boot_ok("after", "");
    let r3 = b3.report();
    b3.check(r3["luks_uuid"] == r2["luks_uuid"], "a second reset");
    b3.check(
        r3["data_probe"] == "new-data",
        "data written after the reset is gone",
    );
    b3.check(
        helper_lines(&b3, "(request \"efi:") == 0,
        "the request was planned again",
    );
}
