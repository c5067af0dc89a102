//! `cargo xtask ...`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Commands:
//! - `run`: build and run Vivarium.
//! - `test`: the whole test suite as CI runs it (installs what it needs first).
//! - `bench clone`: clone benchmarks, side by side with `cp`.
//! - `bench display`: the VM side's screen refresh cost.
//! - `bench installer`: the Debian installer ISO to its first screen, Vivarium vs QEMU.
//! - `bench firmware`: an installed GRUB disk through SeaBIOS, Vivarium vs QEMU `-M pc`.
//! - `bench memtest`: Memtest86+ to its ready screen through SeaBIOS, Vivarium vs QEMU `-M pc`.
//! - `bench vm`: the VM process's size and start-up CPU time.
//! - `fixtures`: build the guest fixtures (Debian kernel, busybox initramfs) into the cache;
//!   with `--installer-iso` also the Debian installer ISO, with `--bios-disk`, `--memtest` and
//!   `--grub-rescue` the firmware tests' GRUB disk, Memtest86+ ISOs and GRUB rescue ISO.
//! - `fuzz`: build every fuzz target and run each for a set time (see `fuzz.rs`).
//! - `rig`: run a script inside the nested test rig (an emulated machine with a real /dev/kvm;
//!   `--arch arm64` for the arm64 rig, an emulated arm64 machine with KVM/arm64).

use std::process::ExitCode;

mod bench;
mod bench_app;
mod bench_boot;
mod bench_display;
mod bench_firmware;
mod bench_installer;
mod bench_memtest;
mod bench_vm;
mod fixtures;
mod fuzz;
mod rig;
mod run;
mod test;
mod util;

fn usage() -> &'static str {
    "usage: cargo xtask <command>\n\
     \n\
     commands:\n\
     \x20 run [-- ARGS]  build Vivarium and run it (default: show the VM library)\n\
     \x20 test           install what the tests need, then run fmt, clippy and every test\n\
     \x20 bench clone    benchmark linked and full clones against cp (writes docs/BENCHMARKS.md)\n\
     \x20 bench app      frame time with 200 VMs and idle CPU of the app (docs/BENCHMARKS.md)\n\
     \x20 bench boot     boot Vivarium and QEMU side by side in the nested rig (docs/BENCHMARKS.md)\n\
     \x20 bench display  CPU cost of the VM's screen refresh, still and changing (docs/BENCHMARKS.md)\n\
     \x20 bench installer  installer ISO to its first screen, Vivarium vs QEMU, in the rig\n\
     \x20                (docs/BENCHMARKS.md)\n\
     \x20 bench firmware  an installed GRUB disk through SeaBIOS, Vivarium vs QEMU -M pc, in\n\
     \x20                the rig (docs/BENCHMARKS.md)\n\
     \x20 bench memtest  Memtest86+ to its ready screen through SeaBIOS, Vivarium vs QEMU -M pc,\n\
     \x20                in the rig (docs/BENCHMARKS.md)\n\
     \x20 bench vm       size of vivarium-vm and its start-up CPU time (docs/BENCHMARKS.md)\n\
     \x20 fixtures [--installer-iso] [--bios-disk] [--memtest] [--grub-rescue] [--arm64]\n\
     \x20                build the guest fixtures (kernel, initramfs; the Debian installer ISO,\n\
     \x20                the GRUB disk, Memtest86+'s and GRUB's rescue ISOs; the arm64 set)\n\
     \x20                into the cache\n\
     \x20 fuzz [--time SECONDS] [--jobs N] [--sanitizer none|address] [TARGET...]\n\
     \x20                build every fuzz target and run each for a while (default 15 s);\n\
     \x20                a crash, hang or runaway allocation fails\n\
     \x20 rig [--arch arm64] [OPTIONS] -- SCRIPT  run SCRIPT in the nested rig, x86_64 or arm64\n\
     \x20                (see `cargo xtask rig --help`)\n"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{}", usage());
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "run" => run::run(rest),
        "fixtures" => fixtures::run(rest),
        "fuzz" => fuzz::run(rest),
        "rig" => rig::run(rest),
        "help" | "--help" | "-h" => {
            print!("{}", usage());
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}
