//! `cargo xtask test`: the whole test suite, as CI runs it on a clean Debian/Ubuntu machine.
//!
//! It installs what the tests need (Debian packages), then checks formatting and lints, builds
//! the workspace and runs every test, and then fuzzes every fuzz target for a short time
//! (`cargo xtask fuzz`, see `fuzz.rs`). Any failure fails the command.

use std::process::Command;

use vivarium_e2e::cross;

use crate::util::{self, ensure_apt_packages, workspace_root};

/// Debian packages the tests use: `qemu-utils` gives `qemu-img`, which checks the qcow2 images
/// Vivarium writes (`qemu-img check`, `qemu-img compare`); `qemu-system-x86` runs the nested
/// test rig and is the baseline VMM inside it; `xz-utils` extracts the fixture kernel's vmlinux;
/// `passt` is the VMs' user-mode network; `xorriso` builds the installer ISOs the ISO
/// recognition tests inspect, with `mtools` for the FAT image of the Debian installer ISO's
/// UEFI boot entry and `kmod`'s `depmod` for the CD-ROM modules of its initrds. The app's
/// tests draw with the software Vulkan driver (`mesa-vulkan-drivers`, `libvulkan1`;
/// egui_kittest needs nothing else), and the real-window test runs the app under `xvfb` with
/// the X libraries winit loads at run time, screenshots it with ImageMagick's `import` and
/// clicks with `xdotool`. `seabios` is the BIOS VMs boot disks and CDs through (its VGA BIOS
/// `vgabios-stdvga.bin` sets the standard VGA's text and VESA modes; the Memtest86+ ISOs and
/// GRUB's rescue ISO of the VGA text-mode tests are downloaded into the fixture cache, not
/// installed), and `ovmf` the UEFI firmware; `e2fsprogs`'s `mke2fs -d` makes the root file system of the
/// GRUB disk fixture. The arm64 rig runs on `qemu-system-arm` (its `qemu-system-aarch64`
/// emulates the arm64 machine; the arm64 QEMU inside it comes with the arm64 fixtures, which are
/// downloaded, not installed), and the programs it runs are cross-built with
/// `gcc-aarch64-linux-gnu` against `libc6-dev-arm64-cross`.
const APT_PACKAGES: &[&str] = &[
    "seabios",
    "ovmf",
    "e2fsprogs",
    "qemu-utils",
    "qemu-system-x86",
    "xz-utils",
    "passt",
    "xorriso",
    "mtools",
    "kmod",
    "mesa-vulkan-drivers",
    "libvulkan1",
    "xvfb",
    "xauth",
    "libx11-xcb1",
    "libxcursor1",
    "libxi6",
    "libxkbcommon-x11-0",
    "libfontconfig1",
    "imagemagick",
    "xdotool",
    "qemu-system-arm",
    "device-tree-compiler",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// The macOS target the shared crates are checked for.
const MACOS_TARGET: &str = "aarch64-apple-darwin";

/// The program the arm64 rig's KVM test cross-builds (package, binary).
const ARM64_PROBE: (&str, &str) = ("vivarium-e2e", "vivarium-arm64-kvm-probe");

/// Entry point of `cargo xtask test`. `--no-install` skips the package step (for machines set
/// up by hand).
pub fn run(args: &[String]) -> Result<(), String> {
    let install = !args.iter().any(|a| a == "--no-install");
    if install {
        ensure_apt_packages(APT_PACKAGES)?;
    }
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let step = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root).args(args);
        util::run(&mut cmd)
    };
    step(&["fmt", "--all", "--", "--check"])?;
    // The fuzz crate is not a workspace member.
    step(&["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"])?;
    step(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The end-to-end tests run the `vivarium` binary, so it is built first.
    step(&["build", "--workspace"])?;
    // The crates shared with the macOS (Hypervisor.framework) build must type-check for it.
    if util::have_program("rustup") {
        util::run(Command::new("rustup").args([
            "target",
            "add",
            MACOS_TARGET,
            cross::ARM64_TARGET,
        ]))?;
    }
    step(&[
        "check",
        "--target",
        MACOS_TARGET,
        "-p",
        "vivarium-core",
        "-p",
        "vivarium-devices",
        "-p",
        "vivarium-hypervisor",
        "-p",
        "vivarium-vmm",
        "-p",
        "vivarium",
        "-p",
        "vivarium-vm",
    ])?;
    // The programs the arm64 rig runs are cross-built: the aarch64-only one passes clippy for
    // its target, and is built before the tests (which would build it themselves otherwise).
    step(&[
        "clippy",
        "--target",
        cross::ARM64_TARGET,
        "-p",
        ARM64_PROBE.0,
        "--bin",
        ARM64_PROBE.1,
        "--",
        "-D",
        "warnings",
    ])?;
    // The VMM, its KVM backend and the VM process on arm64 Linux (the `virt` board's host)
    // lint clean for that target too.
    step(&[
        "clippy",
        "--target",
        cross::ARM64_TARGET,
        "-p",
        "vivarium-hypervisor",
        "-p",
        "vivarium-vmm",
        "-p",
        "vivarium-backend-kvm",
        "-p",
        "vivarium-vm",
        "--",
        "-D",
        "warnings",
    ])?;
    cross::build_arm64(ARM64_PROBE.0, ARM64_PROBE.1)?;
    // Tests that boot real guests use the guest fixtures (kept in a cache outside the repo).
    let fixtures = crate::fixtures::ensure()?;
    crate::fixtures::ensure_arm64()?;
    crate::fixtures::ensure_installer_iso()?;
    crate::fixtures::ensure_bios_disk(&fixtures)?;
    crate::fixtures::ensure_memtest()?;
    crate::fixtures::ensure_grub_rescue()?;
    // Everything the rig needs was installed above, so a rig test that cannot run is a
    // failure here, not a skip.
    let mut test = Command::new(&cargo);
    test.current_dir(&root)
        .env("VIVARIUM_REQUIRE_RIG", "1")
        .args(["test", "--workspace", "--no-fail-fast"]);
    util::run(&mut test)?;
    // Every fuzz target builds and runs for a short time without a finding.
    crate::fuzz::run_short()?;
    eprintln!("xtask: the whole suite passed");
    Ok(())
}
