//! Starting a VM in a process of its own: [`spawn`] runs the `vivarium-vm` binary detached
//! from the caller (a session of its own, no terminal, standard streams on `/dev/null` and
//! `logs/vm.log`) and waits until the VM answers on its control socket or the process reports
//! why it could not start. The CLI's `start` and the desktop app use it; the VM then outlives
//! them.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use vivarium_core::backend::BootOnce;
use vivarium_core::library::Library;
use vivarium_core::{Error, ErrorKind};

/// The VM process binary's file name.
pub const VM_BINARY: &str = "vivarium-vm";

/// The `vivarium-vm` binary installed beside the running executable (`vivarium`, or a test
/// binary one folder below it, as cargo lays them out).
pub fn vm_binary() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("could not find the running executable", e))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(VM_BINARY), dir.join("..").join(VM_BINARY)];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            Error::io(
                format!(
                    "the VM process program `{VM_BINARY}` is missing next to `{}`: install it \
                     beside `vivarium` (reinstall Vivarium, or build the workspace)",
                    exe.display()
                ),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
}

/// Starts VM `name` in a process of its own and returns its pid once the VM answers on its
/// control socket. If the VM cannot start, the error is the one the VM process reported; a
/// VM of another machine than this computer runs fails at once with
/// [`Error::OtherArch`].
/// `boot_once` boots another device this once (`vivarium start --boot-from`).
pub fn spawn(library: &Library, name: &str, boot_once: Option<BootOnce>) -> Result<u32, Error> {
    spawn_with(&vm_binary()?, library, name, boot_once)
}

/// [`spawn`] with the `vivarium-vm` executable given (the app's tests name the one cargo
/// built).
pub fn spawn_with(
    vm_binary: &Path,
    library: &Library,
    name: &str,
    boot_once: Option<BootOnce>,
) -> Result<u32, Error> {
    // A VM of another machine is refused here, before a process is started for it.
    library.get(name)?.config()?.check_starts_here()?;
    let mut command = Command::new(vm_binary);
    command.arg(name);
    if let Some(once) = boot_once {
        command.arg("--boot-from").arg(crate::boot_once_name(once));
    }
    command
        .env("VIVARIUM_HOME", library.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `setsid` is async-signal-safe and touches no memory of this process; it only
    // makes the child the leader of a new session without a controlling terminal.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        Error::io(
            format!("could not start the VM process `{}`", vm_binary.display()),
            e,
        )
    })?;
    // The VM process writes one JSON line (ready or error) and then closes its end, so these
    // reads end when the VM runs or the process has failed.
    let mut report = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut report);
    }
    let mut stderr_text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut stderr_text);
    }
    let parsed: Option<Value> = report
        .lines()
        .find_map(|line| serde_json::from_str(line).ok());
    if let Some(pid) = parsed
        .as_ref()
        .and_then(|v| v["ready"]["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
    {
        // The VM runs on; a thread reaps it when it ends so a long-lived caller (the app)
        // keeps no zombie.
        let _ = std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || child.wait());
        return Ok(pid);
    }
    let status = child.wait();
    if let Some(error) = parsed
        .as_ref()
        .map(|v| &v["error"])
        .filter(|e| e.is_object())
    {
        let kind = error["kind"]
            .as_str()
            .and_then(ErrorKind::from_name)
            .unwrap_or(ErrorKind::Io);
        let message = error["message"].as_str().unwrap_or("unknown error");
        return Err(Error::Reported {
            kind,
            message: message.to_string(),
        });
    }
    Err(Error::Reported {
        kind: ErrorKind::Io,
        message: format!(
            "the VM process ended without starting the VM ({}): {}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            stderr_text.trim()
        ),
    })
}
