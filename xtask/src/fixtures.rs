//! `cargo xtask fixtures`: builds the guest fixtures (a Debian kernel, its modules, busybox and
//! a guest initramfs) into the cache outside the repository, or says they are up to date.
//!
//! The work is done by `vivarium_e2e::fixtures`, which the tests use as well; this command
//! only parses the arguments and prints where the fixtures are.

use std::path::PathBuf;
use std::time::Instant;

use vivarium_e2e::fixtures::{self, Fixtures};

/// Entry point of `cargo xtask fixtures [--dir DIR]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let dir = match args {
        [] => fixtures::default_dir()?,
        [flag, dir] if flag == "--dir" => PathBuf::from(dir),
        _ => return Err("usage: cargo xtask fixtures [--dir DIR]".into()),
    };
    let started = Instant::now();
    let fixtures = ensure_in(&dir)?;
    print_summary(&fixtures);
    eprintln!("fixtures: took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The fixtures in the default cache, built first when missing or out of date.
pub fn ensure() -> Result<Fixtures, String> {
    ensure_in(&fixtures::default_dir()?)
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
