//! `cargo xtask fixtures`: builds the guest fixtures (a Debian kernel, its modules, busybox and
//! a guest initramfs) into the cache outside the repository, or says they are up to date. With
//! `--installer-iso` it also builds the Debian installer ISO (a separate cache entry, a larger
//! download, used only by the tests of ISO import). With `--arm64` it also builds the arm64
//! fixtures (`vivarium_e2e::fixtures_arm64`: the Debian arm64 kernel, busybox, guest and rig
//! initramfs and Debian's arm64 QEMU with its libraries, in the cache's `arm64/`).
//! `--bios-disk`, `--memtest` and `--grub-rescue` build the GRUB-on-BIOS disk, unpack
//! Memtest86+'s ISOs and GRUB's rescue ISO (each a cache entry of its own) for the firmware
//! tests.
//!
//! The work is done by `vivarium_e2e::fixtures` and `vivarium_e2e::installer_iso`, which the
//! tests use as well; this command only parses the arguments and prints where the fixtures are.

use std::path::PathBuf;
use std::time::Instant;

use vivarium_e2e::fixtures::{self, Fixtures};
use vivarium_e2e::fixtures_arm64::{self, Arm64Fixtures};
use vivarium_e2e::installer_iso;

const USAGE: &str = "usage: cargo xtask fixtures [--installer-iso] [--bios-disk] [--memtest] \
     [--grub-rescue] [--arm64] [--dir DIR]";

/// Entry point of `cargo xtask fixtures [--installer-iso] [--bios-disk] [--memtest]
/// [--grub-rescue] [--arm64] [--dir DIR]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut dir = None;
    let mut with_iso = false;
    let mut with_bios_disk = false;
    let mut with_memtest = false;
    let mut with_arm64 = false;
    let mut with_grub_rescue = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--installer-iso" => with_iso = true,
            "--bios-disk" => with_bios_disk = true,
            "--memtest" => with_memtest = true,
            "--arm64" => with_arm64 = true,
            "--grub-rescue" => with_grub_rescue = true,
            "--dir" => dir = Some(PathBuf::from(rest.next().ok_or(USAGE)?)),
            _ => return Err(USAGE.into()),
        }
    }
    let dir = match dir {
        Some(dir) => dir,
        None => fixtures::default_dir()?,
    };
    let started = Instant::now();
    let fixtures = ensure_in(&dir)?;
    print_summary(&fixtures);
    if with_iso {
        let iso = installer_iso::build(&dir)?;
        println!(
            "  installer ISO    {} (installer {})",
            iso.path().display(),
            iso.installer_version()
        );
    }
    if with_bios_disk {
        let disk = vivarium_e2e::bios_disk::build(&dir, &fixtures)?;
        println!("  BIOS disk        {}", disk.path().display());
    }
    if with_memtest {
        let isos = vivarium_e2e::memtest::build(&dir)?;
        println!(
            "  Memtest86+ ISOs  {} (memtest86+ {})",
            isos.path(vivarium_e2e::memtest::Flavour::X64)
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            isos.version()
        );
    }
    if with_grub_rescue {
        let iso = vivarium_e2e::grub_rescue::build(&dir)?;
        println!(
            "  GRUB rescue ISO  {} (grub-rescue-pc {})",
            iso.path().display(),
            iso.version()
        );
    }
    if with_arm64 {
        let arm64 = fixtures_arm64::build(&dir.join(fixtures_arm64::DEBIAN_ARCH))?;
        print_arm64_summary(&arm64);
    }
    eprintln!("fixtures: took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The arm64 fixtures in the default cache, built first when missing or out of date.
pub fn ensure_arm64() -> Result<Arm64Fixtures, String> {
    fixtures_arm64::build(&fixtures_arm64::default_dir()?)
}

fn print_arm64_summary(fixtures: &Arm64Fixtures) {
    println!("arm64 fixtures in {}", fixtures.dir().display());
    println!("  kernel release   {}", fixtures.kernel_release());
    println!("  Image            {}", fixtures.kernel().display());
    println!(
        "  guest initramfs  {}",
        fixtures.guest_initramfs().display()
    );
    println!(
        "  rig initramfs    {}",
        fixtures.outer_initramfs().display()
    );
    println!("  arm64 QEMU       {}", fixtures.qemu().display());
}

/// The fixtures in the default cache, built first when missing or out of date.
pub fn ensure() -> Result<Fixtures, String> {
    ensure_in(&fixtures::default_dir()?)
}

/// The Debian installer ISO in the default cache, built first when missing or out of date.
pub fn ensure_installer_iso() -> Result<installer_iso::InstallerIso, String> {
    installer_iso::build(&fixtures::default_dir()?)
}

/// The GRUB-on-BIOS disk in the default cache, built first when missing or out of date.
pub fn ensure_bios_disk(fixtures: &Fixtures) -> Result<vivarium_e2e::bios_disk::BiosDisk, String> {
    vivarium_e2e::bios_disk::build(&fixtures::default_dir()?, fixtures)
}

/// Memtest86+'s ISOs in the default cache, unpacked first when missing or out of date.
pub fn ensure_memtest() -> Result<vivarium_e2e::memtest::MemtestIsos, String> {
    vivarium_e2e::memtest::build(&fixtures::default_dir()?)
}

/// GRUB's rescue ISO in the default cache, unpacked first when missing or out of date.
pub fn ensure_grub_rescue() -> Result<vivarium_e2e::grub_rescue::GrubRescueIso, String> {
    vivarium_e2e::grub_rescue::build(&fixtures::default_dir()?)
}

fn ensure_in(dir: &std::path::Path) -> Result<Fixtures, String> {
    fixtures::build(dir)
}

fn print_summary(fixtures: &Fixtures) {
    println!("fixtures in {}", fixtures.dir().display());
    println!("  kernel release   {}", fixtures.kernel_release());
    println!("  vmlinuz          {}", fixtures.vmlinuz().display());
    if let Some(vmlinux) = fixtures.vmlinux() {
        println!("  vmlinux          {}", vmlinux.display());
    }
    println!(
        "  guest initramfs  {}",
        fixtures.guest_initramfs().display()
    );
    println!("  busybox          {}", fixtures.busybox().display());
    println!("  (set VIVARIUM_FIXTURES to use another folder)");
}
