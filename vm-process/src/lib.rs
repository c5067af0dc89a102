//! Vivarium's VM process: one running VM in a process of its own.
//!
//! The `vivarium-vm` binary (installed beside `vivarium`, found next to it) runs one VM: the
//! VMM with its devices on the host's hypervisor backend, its logs and run records, and the
//! control server the CLI and the app talk to. It links no GUI, font or GPU crate: the
//! process that faces the guest holds as little code as it can. `vivarium start` and the app
//! start it through [`launch::spawn`]; `vivarium run` runs the same [`session::Session`] in its
//! own process, in the foreground.

pub mod backend;
pub mod confine;
pub mod harden;
pub mod launch;
pub mod logging;
pub mod seccomp;
pub mod session;

use vivarium_core::ErrorKind;
use vivarium_core::backend::BootOnce;

/// Exit code of the VM process (and of `vivarium run`) when the guest crashed.
pub const EXIT_CRASHED: u8 = 9;

/// The exit code a script sees for an error of this kind (the table in `docs/CLI.md`).
pub fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Io => 1,
        ErrorKind::NotFound => 3,
        ErrorKind::AlreadyExists => 4,
        ErrorKind::InvalidInput => 5,
        ErrorKind::Busy => 6,
        ErrorKind::Broken => 7,
        ErrorKind::Cancelled => 8,
        ErrorKind::HostUnsupported => 10,
        ErrorKind::NotRunning => 11,
        ErrorKind::Timeout => 12,
        ErrorKind::OtherArch => 13,
    }
}

/// The device of a `--boot-from` value: `cdrom`, `disk` or `menu`.
pub fn parse_boot_once(value: &str) -> Option<BootOnce> {
    match value {
        "cdrom" => Some(BootOnce::Cdrom),
        "disk" => Some(BootOnce::Disk),
        "menu" => Some(BootOnce::Menu),
        _ => None,
    }
}

/// The `--boot-from` value of a device.
pub fn boot_once_name(once: BootOnce) -> &'static str {
    match once {
        BootOnce::Cdrom => "cdrom",
        BootOnce::Disk => "disk",
        BootOnce::Menu => "menu",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_once_names_round_trip() {
        for once in [BootOnce::Cdrom, BootOnce::Disk, BootOnce::Menu] {
            assert_eq!(parse_boot_once(boot_once_name(once)), Some(once));
        }
        assert_eq!(parse_boot_once("floppy"), None);
    }
}
