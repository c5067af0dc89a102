//! Running a VM in the foreground of this process (`vivarium run`).
//!
//! The VM's bundle stays locked while it runs, so no other process deletes, renames or
//! starts it. The serial console goes to standard output and to `logs/serial.log`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use vivarium_core::Error;
use vivarium_core::backend::{ControlRequest, MachineExit, MachineSpec};
use vivarium_core::library::Library;

/// Exit code when the guest crashed.
pub const EXIT_CRASHED: u8 = 9;

/// Counts SIGTERMs and SIGINTs; the watcher thread turns them into control requests.
static TERMS: AtomicU32 = AtomicU32::new(0);
static INTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    TERMS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_int(_: libc::c_int) {
    INTS.fetch_add(1, Ordering::SeqCst);
}

/// Writes to both standard output and the serial log.
struct Tee {
    log: Option<std::fs::File>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf);
        let _ = out.flush();
        if let Some(log) = &mut self.log {
            let _ = log.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// Runs `name` until it stops. A clean power-off is success; a crash ends the process with
/// [`EXIT_CRASHED`]; a VMM failure is an error.
pub fn run_in_terminal(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    let term: extern "C" fn(libc::c_int) = on_term;
    let int: extern "C" fn(libc::c_int) = on_int;
    // Installed first, so that a signal that comes while the machine is being built is
    // not lost.
    // SAFETY: the handlers only increment atomics (async-signal-safe) and have the signature
    // `signal` expects.
    unsafe {
        libc::signal(libc::SIGTERM, term as libc::sighandler_t);
        libc::signal(libc::SIGINT, int as libc::sighandler_t);
    }
    let backend = crate::backend::host_backend().ok_or_else(|| {
        Error::InvalidInput("Vivarium has no hypervisor backend for this platform yet".into())
    })?;
    let entry = library.get(name)?;
    let config = entry.config()?.clone();
    let _lock = library.lock_bundle(name)?;
    let logs = entry.path.join("logs");
    let _ = std::fs::create_dir_all(&logs);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join("serial.log"))
        .ok();
    let spec = MachineSpec::from_config(&config, &entry.path, Box::new(Tee { log }))?;
    let machine = backend.start(spec)?;

    let watched = machine.clone();
    std::thread::spawn(move || {
        let mut terms_seen = 0;
        loop {
            std::thread::sleep(Duration::from_millis(20));
            let terms = TERMS.load(Ordering::SeqCst);
            let request = if INTS.load(Ordering::SeqCst) > 0 || terms > 1 {
                Some(ControlRequest::PowerOff)
            } else if terms == 1 && terms_seen == 0 {
                terms_seen = 1;
                Some(ControlRequest::PowerButton)
            } else {
                None
            };
            if let Some(request) = request
                && watched.request(request).is_err()
            {
                return;
            }
        }
    });

    let exit = machine.wait();
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
