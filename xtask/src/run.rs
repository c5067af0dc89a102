//! `cargo xtask run [-- ARGS]`: builds Vivarium and opens the app on the user's library, with a
//! demo VM ready in it.
//!
//! With no arguments it makes sure the library has the demo VMs, then starts the app:
//! - "Debian demo": the guest fixtures' Debian kernel and busybox initramfs (built by
//!   `cargo xtask fixtures` into the cache), booting to a shell on the serial console;
//! - on a host whose hypervisor runs only small guests (the host probe says "Limited"), also
//!   "Tiny demo": the hand-made test guest, which prints a banner and echoes what is typed.
//!
//! Existing VMs of those names are left as they are. With arguments it runs `vivarium ARGS`,
//! e.g. `cargo xtask run -- create web --kernel vmlinuz`.

use std::path::Path;
use std::process::Command;

use crate::util;

/// Name of the demo VM booting the fixture kernel.
const DEBIAN_DEMO: &str = "Debian demo";
/// Name of the demo VM booting the hand-made guest.
const TINY_DEMO: &str = "Tiny demo";

/// What VMs use at run time: `passt` (user-mode network), `seabios` (the BIOS disks and CDs
/// boot through, and its VGA BIOS) and `ovmf` (UEFI).
const RUNTIME_PACKAGES: &[&str] = &["passt", "seabios", "ovmf"];

/// Entry point of `cargo xtask run`.
pub fn run(args: &[String]) -> Result<(), String> {
    util::ensure_apt_packages(RUNTIME_PACKAGES)?;
    let bin = util::build_release_vivarium()?;
    let args: Vec<&str> = match args.iter().map(String::as_str).collect::<Vec<_>>() {
        a if !a.is_empty() && a[0] == "--" => a[1..].to_vec(),
        a => a,
    };
    if args.is_empty() {
        ensure_demo_vms(&bin)?;
    }
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

fn vivarium(bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("could not run vivarium: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`vivarium {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ensure_demo_vms(bin: &Path) -> Result<(), String> {
    let listed = vivarium(bin, &["--json", "list"])?;
    let has = |name: &str| listed.contains(&format!("\"name\":\"{name}\""));
    if !has(DEBIAN_DEMO) {
        let fixtures = crate::fixtures::ensure()?;
        let kernel = fixtures.vmlinuz();
        let initrd = fixtures.guest_initramfs();
        vivarium(
            bin,
            &[
                "create",
                DEBIAN_DEMO,
                "--kernel",
                &kernel.to_string_lossy(),
                "--initrd",
                &initrd.to_string_lossy(),
                "--cmdline",
                "console=ttyS0 quiet panic=-1 vivarium.then=shell",
                "--os",
                "debian12",
                "--os-name",
                "Debian 12 (demo)",
                "--memory",
                "512M",
                "--cpus",
                "1",
                "--no-disk",
                "--network",
                "none",
                "--notes",
                "Made by `cargo xtask run`: the Debian kernel with a busybox initramfs. Start \
                 it and open the Console tab: a shell comes up in a few seconds.",
            ],
        )?;
        eprintln!("xtask: created the VM `{DEBIAN_DEMO}`");
    }
    let host = vivarium(bin, &["--json", "host"])?;
    let limited = host.contains("\"can_run\":true") && host.contains("\"full_guests\":false");
    if limited && !has(TINY_DEMO) {
        let dir = vivarium_e2e::fixtures::default_dir()?;
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let kernel = dir.join("handmade-demo.elf");
        vivarium_e2e::handmade::write_kernel(&kernel).map_err(|e| e.to_string())?;
        vivarium(
            bin,
            &[
                "create",
                TINY_DEMO,
                "--kernel",
                &kernel.to_string_lossy(),
                "--no-disk",
                "--network",
                "none",
                "--display",
                "none",
                "--memory",
                "32M",
                "--cpus",
                "1",
                "--notes",
                "Made by `cargo xtask run` because this computer's hypervisor runs only small \
                 guests: a hand-made guest that prints a banner on the serial console and \
                 echoes what you type (q powers it off).",
            ],
        )?;
        eprintln!("xtask: created the VM `{TINY_DEMO}` (this host runs only small guests)");
    }
    Ok(())
}
