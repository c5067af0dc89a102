//! Helpers for tests of VM processes on the host's `/dev/kvm` with the hand-made guest: a VM
//! that boots it, a guard that powers it off whatever the test does, and what `/proc` says
//! about a process (open files, memory).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::vivarium::TempLibrary;

/// The gate of the tests that run VM processes: whether this host's `/dev/kvm` runs guests
/// (one rule for every such test, [`crate::gate`]).
pub use crate::gate::kvm_usable;

/// Creates VM `name` in `library` that boots the hand-made guest (1 CPU, 32 MiB, no disk, no
/// network, no display).
pub fn create_handmade_vm(library: &TempLibrary, name: &str) {
    let kernel = library.scratch().join("handmade.elf");
    if !kernel.exists() {
        crate::handmade::write_kernel(&kernel).expect("write the hand-made guest");
    }
    create_vm_booting(library, name, &kernel);
}

/// Creates VM `name` in `library` that boots the hand-made input guest (see
/// [`crate::handmade::input_elf_image`]), with the same hardware as [`create_handmade_vm`].
pub fn create_handmade_input_vm(library: &TempLibrary, name: &str) {
    let kernel = library.scratch().join("handmade-input.elf");
    if !kernel.exists() {
        crate::handmade::write_input_kernel(&kernel).expect("write the hand-made input guest");
    }
    create_vm_booting(library, name, &kernel);
}

fn create_vm_booting(library: &TempLibrary, name: &str, kernel: &Path) {
    library.ok(&[
        "create",
        name,
        "--kernel",
        kernel.to_str().expect("a UTF-8 path"),
        "--no-disk",
        "--network",
        "none",
        "--display",
        "none",
        "--memory",
        "32M",
        "--cpus",
        "1",
    ]);
}

/// Creates VM `name` in `library` that boots the hand-made display guest
/// ([`crate::handmade::display_elf_image`]: it draws [`crate::handmade::display_picture`] on a
/// `display` screen, e.g. `1024x768`, then prints the banner; 1 CPU, 32 MiB, no disk, no
/// network).
pub fn create_display_vm(library: &TempLibrary, name: &str, display: &str) {
    let kernel = library.scratch().join("handmade-display.elf");
    if !kernel.exists() {
        crate::handmade::write_display_kernel(&kernel).expect("write the display guest");
    }
    library.ok(&[
        "create",
        name,
        "--kernel",
        kernel.to_str().expect("a UTF-8 path"),
        "--no-disk",
        "--network",
        "none",
        "--display",
        display,
        "--memory",
        "32M",
        "--cpus",
        "1",
    ]);
}

/// Powers the VM off when dropped (a failing test must not leave VM processes behind).
pub struct PowerOffOnDrop<'a> {
    library: &'a TempLibrary,
    name: String,
}

impl<'a> PowerOffOnDrop<'a> {
    /// Guards VM `name`.
    pub fn new(library: &'a TempLibrary, name: &str) -> Self {
        PowerOffOnDrop {
            library,
            name: name.to_string(),
        }
    }
}

impl Drop for PowerOffOnDrop<'_> {
    fn drop(&mut self) {
        let status = self.library.run(&["--json", "status", &self.name]);
        let pid = serde_json::from_slice::<Value>(&status.stdout)
            .ok()
            .and_then(|v| v["pid"].as_u64());
        let _ = self.library.run(&["stop", "--force", &self.name]);
        if let Some(pid) = pid
            && process_alive(pid as u32)
        {
            // SAFETY: kill only sends a signal.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
    }
}

/// `vivarium --json status NAME`.
pub fn status(library: &TempLibrary, name: &str) -> Value {
    library.json(&["status", name])
}

/// Waits until `check` holds, polling; fails with `what` after `timeout` ([`crate::wait`]).
pub use crate::wait::until as wait_until;

/// Waits until the serial log of VM `name` contains `needle` (at most `timeout`), and
/// returns the log then.
#[track_caller]
pub fn wait_for_serial(
    library: &TempLibrary,
    name: &str,
    needle: &str,
    timeout: Duration,
) -> String {
    let log = library.bundle(name).join("logs/serial.log");
    crate::wait::for_text(&log, &[needle], timeout)
}

/// Waits until the VM log of VM `name` contains every one of `needles` (at most `timeout`),
/// and returns the log then.
#[track_caller]
pub fn wait_for_vm_log(
    library: &TempLibrary,
    name: &str,
    needles: &[&str],
    timeout: Duration,
) -> String {
    let log = library.bundle(name).join("logs/vm.log");
    crate::wait::for_text(&log, needles, timeout)
}

/// Whether process `pid` exists and any of its threads is not a zombie. (Killed, the thread
/// group leader turns zombie first while the other threads still run and hold the process's
/// files, its bundle lock among them; the process is gone only when every thread is.)
pub fn process_alive(pid: u32) -> bool {
    let live = |stat: &str| {
        // The state follows the command name in parentheses.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|task| std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| live(&stat)))
}

/// How many files process `pid` has open.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of process `pid`, in KiB.
pub fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The library of a temporary library, as the core opens it (for the control client).
pub fn core_library(library: &TempLibrary) -> vivarium_core::Library {
    vivarium_core::Library::open(library.home()).expect("the library opens")
}

/// Reads a file as text, empty if it is missing.
pub fn read_text(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}
