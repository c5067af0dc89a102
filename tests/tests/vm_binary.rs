//! The VM process is a binary of its own, `vivarium-vm`, beside `vivarium`: the process that
//! faces the guest links the VMM, the devices, the backend and the control server, and none
//! of the desktop app's GUI, font or GPU crates.

use std::process::Command;

/// Crates of the desktop app that must not be in the VM process.
const GUI_CRATES: &[&str] = &[
    "eframe",
    "egui",
    "egui-wgpu",
    "egui-winit",
    "wgpu",
    "winit",
    "rfd",
    "image",
    "ab_glyph",
    "vt100",
    "clap",
];

#[test]
fn the_vm_process_binary_links_no_gui_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "vivarium-vm",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for gui in GUI_CRATES {
        assert!(
            !crates.contains(gui),
            "the VM process links `{gui}`:\n{tree}"
        );
    }
    for needed in ["vivarium-core", "vivarium-devices"] {
        assert!(crates.contains(&needed), "`{needed}` missing:\n{tree}");
    }
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    assert!(crates.contains(&"vivarium-backend-kvm"), "{tree}");
    // The app, for comparison, has them (the check would notice a renamed crate).
    let app = Command::new(&cargo)
        .args([
            "tree",
            "--offline",
            "-p",
            "vivarium",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(String::from_utf8_lossy(&app.stdout).contains("eframe "));
}

#[test]
fn vivarium_vm_is_installed_beside_vivarium_and_refuses_bad_arguments() {
    let vm = vivarium_e2e::vivarium::vm_binary();
    assert_eq!(
        vm.parent(),
        vivarium_e2e::vivarium::binary().parent(),
        "beside vivarium"
    );
    for args in [
        &[][..],
        &["a", "b"][..],
        &["vm", "--boot-from", "floppy"][..],
    ] {
        let out = Command::new(&vm)
            .args(args)
            .output()
            .expect("vivarium-vm runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("usage: vivarium-vm NAME"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
