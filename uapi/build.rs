//! Generates the Rust view of `uapi/linux/keel.h` with the bindgen that `scripts/setup`
//! installs (the same one the kernel module's build uses), so both sides see one layout.
use std::{env, path::PathBuf, process::Command};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let header = manifest.join("linux/keel.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("keel_uapi.rs");
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=BINDGEN");
    let bindgen = env::var("BINDGEN").unwrap_or_else(|_| "bindgen".into());
    let status = Command::new(&bindgen)
        .args([
            "--use-core",
            "--no-doc-comments",
            "--with-derive-default",
            "--default-macro-constant-type",
            "unsigned",
        ])
        .args(["--allowlist-type", "keel_.*", "--allowlist-var", "KEEL_.*"])
        .arg("--output")
        .arg(&out)
        .arg(&header)
        .args(["--", "-I/usr/include"])
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{bindgen} failed on {} ({s})", header.display()),
        Err(e) => {
            panic!("cannot run {bindgen} ({e}): run scripts/setup, which installs bindgen-cli")
        }
    }
}
