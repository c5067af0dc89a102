//! `cargo xtask run [-- ARGS]`: builds Vivarium and runs it on the user's library.
//!
//! With no arguments it shows the library (`vivarium list`); with arguments it runs
//! `vivarium ARGS`, e.g. `cargo xtask run -- create web --kernel vmlinuz`.

use std::process::Command;

use crate::util;

/// Entry point of `cargo xtask run`.
pub fn run(args: &[String]) -> Result<(), String> {
    let bin = util::build_release_vivarium()?;
    let args: Vec<&str> = match args.iter().map(String::as_str).collect::<Vec<_>>() {
        a if a.is_empty() => vec!["list"],
        a if a[0] == "--" => a[1..].to_vec(),
        a => a,
    };
    let status = Command::new(&bin)
        .args(&args)
        .status()
        .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("vivarium exited with {status}"))
    }
}
