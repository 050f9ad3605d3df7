//! Link settings for the initrd-helper binary. In the release profile
//! (`panic = "abort"`, see the workspace Cargo.toml) nothing unwinds, so
//! its unwind tables are discarded at link time (`link/no-unwind-tables.ld`,
//! half a MiB); dev and test builds unwind and keep them. Cargo's
//! CARGO_CFG_PANIC says "unwind" to build scripts whatever the profile, so
//! the profile name decides.

fn main() {
    println!("cargo:rerun-if-changed=link/no-unwind-tables.ld");
    println!("cargo:rerun-if-env-changed=PROFILE");
    if std::env::var("PROFILE").as_deref() == Ok("release") {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/link/no-unwind-tables.ld");
    }
}
