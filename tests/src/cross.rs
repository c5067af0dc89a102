//! Cross-building workspace binaries for the arm64 rig ([`crate::rig::Rig::arm64`]):
//! `cargo build --target aarch64-unknown-linux-gnu`, linked by Debian's `aarch64-linux-gnu-gcc`
//! (set for that target in the workspace's `.cargo/config.toml`) against
//! `libc6-dev-arm64-cross`. The rig carries the result with the arm64 libraries it names.
//!
//! The build goes to its own target folder (`rig-cross/` in the workspace's target folder),
//! so a test that cross-builds never waits on the lock of the build that is running it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of the arm64 rig's programs.
pub const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";

/// The linker for [`ARM64_TARGET`] (Debian package `gcc-aarch64-linux-gnu`).
pub const ARM64_LINKER: &str = "aarch64-linux-gnu-gcc";

/// Strips arm64 programs (Debian package `binutils-aarch64-linux-gnu`, which the linker's
/// package brings).
const ARM64_STRIP: &str = "aarch64-linux-gnu-strip";

/// Why workspace binaries cannot be cross-built for the arm64 rig here, or `None`: the Rust
/// standard library for [`ARM64_TARGET`] (`rustup target add aarch64-unknown-linux-gnu`) and
/// the linker must be installed.
pub fn missing_prerequisite() -> Option<String> {
    if crate::rig::find_program(ARM64_LINKER).is_none() {
        return Some(format!(
            "`{ARM64_LINKER}` is not installed (Debian packages gcc-aarch64-linux-gnu and \
             libc6-dev-arm64-cross)"
        ));
    }
    let sysroot = Command::new(rustc())
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let has_target =
        sysroot.is_some_and(|root| root.join("lib/rustlib").join(ARM64_TARGET).is_dir());
    (!has_target).then(|| {
        format!("Rust's standard library for {ARM64_TARGET} is missing: rustup target add {ARM64_TARGET}")
    })
}

/// Builds binary `bin` of workspace package `package` for [`ARM64_TARGET`] (debug profile) and
/// returns its path. Progress goes to stderr; cargo's own output says what failed.
pub fn build_arm64(package: &str, bin: &str) -> Result<PathBuf, String> {
    if let Some(missing) = missing_prerequisite() {
        return Err(missing);
    }
    let target_dir = cross_target_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(&cargo)
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--quiet",
            "--target",
            ARM64_TARGET,
            "-p",
            package,
            "--bin",
            bin,
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --target {ARM64_TARGET} -p {package} --bin {bin} failed ({status})"
        ));
    }
    let path = target_dir.join(ARM64_TARGET).join("debug").join(bin);
    path.is_file()
        .then_some(path.clone())
        .ok_or_else(|| format!("cargo built no {}", path.display()))
}

/// [`build_arm64`], then a stripped copy in `scratch` (smaller to carry into the rig; the
/// unstripped program when there is no arm64 `strip`).
pub fn small_arm64_binary(package: &str, bin: &str, scratch: &Path) -> Result<PathBuf, String> {
    let built = build_arm64(package, bin)?;
    let copy = scratch.join(bin);
    fs::copy(&built, &copy).map_err(|e| format!("cannot copy {}: {e}", built.display()))?;
    let _ = Command::new(ARM64_STRIP).arg(&copy).status();
    Ok(copy)
}

/// The workspace root (the parent of this crate's folder).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the workspace root")
        .to_path_buf()
}

/// `rig-cross/` in the target folder (`$CARGO_TARGET_DIR`, else `target/` of the workspace).
pub fn cross_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("rig-cross")
}

fn rustc() -> std::ffi::OsString {
    std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())
}
