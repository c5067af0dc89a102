//! Running a VM in the foreground of this process (`vivarium run`).
//!
//! It is the same VM process as `vivarium start` runs detached ([`vivarium_vm::session::Session`]:
//! bundle lock, logs, run records, control socket), with the serial console also on standard
//! output, and SIGINT (Ctrl-C) as power off.

use std::io::Write;

use serde_json::json;
use vivarium_core::Error;
use vivarium_core::backend::MachineExit;
use vivarium_core::library::Library;

use vivarium_vm::EXIT_CRASHED;
use vivarium_vm::session::{Session, install_signal_handlers, watch_signals};

/// The terminal's side of the serial console.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf);
        let _ = out.flush();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Runs `name` until it stops. A clean power-off is success; a crash ends the process with
/// [`EXIT_CRASHED`]; a VMM failure is an error.
pub fn run_in_terminal(
    library: &Library,
    name: &str,
    boot_once: Option<vivarium_core::backend::BootOnce>,
    json: bool,
) -> Result<(), Error> {
    // Installed first, so that a signal that comes while the machine is being built is
    // not lost.
    install_signal_handlers(true);
    vivarium_vm::logging::log_to_stderr();
    let session = Session::start(library, name, Some(Box::new(Stdout)), boot_once)?;
    watch_signals(session.machine(), true);
    let exit = session.wait();
    let message = match &exit {
        MachineExit::PoweredOff => "powered off".to_string(),
        MachineExit::Crashed { report } => format!("crashed:\n{report}"),
        MachineExit::Failed { error } => format!("failed: {error}"),
    };
    if json {
        println!(
            "{}",
            json!({"vm": name, "exit": exit_name(&exit), "detail": message})
        );
    } else {
        eprintln!("\nvivarium: `{name}` {message}");
    }
    match exit {
        MachineExit::PoweredOff => Ok(()),
        // The process ends here; the kernel releases the bundle lock with it.
        MachineExit::Crashed { .. } => std::process::exit(i32::from(EXIT_CRASHED)),
        MachineExit::Failed { error } => Err(Error::io(
            format!("`{name}` stopped because the VMM failed"),
            std::io::Error::other(error),
        )),
    }
}

fn exit_name(exit: &MachineExit) -> &'static str {
    match exit {
        MachineExit::PoweredOff => "powered-off",
        MachineExit::Crashed { .. } => "crashed",
        MachineExit::Failed { .. } => "failed",
    }
}
