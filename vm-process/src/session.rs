//! Running a VM in this process.
//!
//! [`Session`] is what runs a VM in a process, detached (`vivarium-vm`, started by
//! [`crate::launch::spawn`]) or in the foreground (`vivarium run`): it holds the bundle lock,
//! writes `logs/vm.log` and `logs/serial.log` (bounded, rotated), records the run
//! (`state/run.toml`) and how it ended (`state/last-run.toml`), and serves the control socket,
//! which it removes when the machine ends.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use vivarium_core::Error;
use vivarium_core::backend::{
    ControlRequest, DisplaySpec, MachineExit, MachineSpec, NetworkSpec, RunningMachine,
};
use vivarium_core::config::{DisplayConfig, NetworkConfig};
use vivarium_core::control::records::{self, RunRecord};
use vivarium_core::control::serial_hub::SerialHub;
use vivarium_core::control::server::{ControlServer, ServedVm};
use vivarium_core::control::{
    LastExit, LastRun, display_path, network_socket_path, now_unix, socket_path,
};
use vivarium_core::display::SharedDisplay;
use vivarium_core::library::{BundleLock, Library};
use vivarium_core::logfile::RotatingLog;
use vivarium_core::passt::Passt;

/// Size at which `logs/vm.log` and `logs/serial.log` rotate (one older file is kept).
pub const LOG_LIMIT: u64 = 1 << 20;

/// The body of `vivarium-vm NAME`: starts the VM, tells [`crate::launch::spawn`] (through standard
/// output) whether it runs, detaches its standard streams, and runs until the machine ends.
/// Stack size of the threads a VM process starts (vCPUs, devices, control), unless
/// `RUST_MIN_STACK` says otherwise.
pub const VM_THREAD_STACK: usize = 1 << 20;

/// Gives the threads of a VM process 1 MiB stacks instead of the default 2 MiB. On hosts whose
/// transparent huge pages are on for all memory, a 2 MiB stack that happens to be 2 MiB-aligned
/// is backed by one huge page at its first touch, so each such thread cost 2 MiB of resident
/// memory for a few KiB of stack; a 1 MiB stack cannot hold a huge page. Must run before the
/// process starts any thread.
pub fn limit_thread_stacks() {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: called at the start of the VM process's command, before it has started any
        // thread, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", VM_THREAD_STACK.to_string()) };
    }
}

/// Returns the process exit code.
pub fn run_vm_process(name: &str, boot_once: Option<vivarium_core::backend::BootOnce>) -> u8 {
    // Until `detach_stdio`, standard error is the starter's; from then on it is `logs/vm.log`.
    crate::logging::log_to_stderr();
    for warning in crate::harden::harden_process() {
        tracing::warn!("{warning}");
    }
    let started =
        Library::open_default().and_then(|library| Session::start(&library, name, None, boot_once));
    let session = match started {
        Ok(session) => session,
        Err(error) => {
            let kind = error.kind();
            println!(
                "{}",
                json!({"error": {"kind": kind.as_str(), "message": error.to_string()}})
            );
            return crate::exit_code(kind);
        }
    };
    println!("{}", json!({"ready": {"pid": std::process::id()}}));
    let _ = std::io::stdout().flush();
    session.detach_stdio();
    watch_signals(session.machine(), false);
    // The main thread has started every thread it starts: from now on it only waits and
    // records the end.
    if let Err(e) = crate::seccomp::install_on_this_thread(vivarium_threads::ThreadKind::Main) {
        tracing::warn!("{e}");
    }
    match session.wait() {
        MachineExit::PoweredOff => 0,
        MachineExit::Crashed { .. } => crate::EXIT_CRASHED,
        MachineExit::Failed { .. } => 1,
    }
}

/// A VM running in this process.
pub struct Session {
    name: String,
    bundle: PathBuf,
    started_at_unix: u64,
    log: Arc<Mutex<RotatingLog>>,
    machine: Arc<dyn RunningMachine>,
    server: Option<ControlServer>,
    /// The screen's display file, removed when the machine ends.
    display: Option<DisplaySpec>,
    /// User-mode networking, ended with the session.
    _passt: Option<Passt>,
    _lock: BundleLock,
}

impl Session {
    /// Locks VM `name`, opens its logs, records the run, builds and starts the machine and
    /// serves its control socket. Serial output also goes to `echo`, if given. A failure after
    /// the lock was taken is recorded as the last run ([`LastExit::Failed`]); a VM of another
    /// machine than this computer runs is refused before ([`Error::OtherArch`]).
    pub fn start(
        library: &Library,
        name: &str,
        echo: Option<Box<dyn Write + Send>>,
        boot_once: Option<vivarium_core::backend::BootOnce>,
    ) -> Result<Session, Error> {
        let backend = crate::backend::host_backend().ok_or_else(|| {
            Error::InvalidInput("Vivarium has no hypervisor backend for this platform yet".into())
        })?;
        let entry = library.get(name)?;
        let config = entry.config()?.clone();
        // Before the lock: a VM of another machine never ran here, so no run is recorded.
        config.check_starts_here()?;
        let lock = library.lock_bundle(name).map_err(|e| match e {
            Error::Busy { name, .. } => Error::Busy {
                todo: format!(
                    "it is already running (see `vivarium status {name}`), or another operation \
                     holds it"
                ),
                what: "busy".into(),
                name,
            },
            other => other,
        })?;
        let bundle = entry.path.clone();
        let started_at_unix = now_unix();
        let logs = bundle.join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("could not create `{}`", logs.display()), e))?;
        let open_log = |file: &str| {
            let path = logs.join(file);
            RotatingLog::open(&path, LOG_LIMIT)
                .map_err(|e| Error::io(format!("could not open `{}`", path.display()), e))
        };
        let log = Arc::new(Mutex::new(open_log("vm.log")?));
        let note = |text: &str| {
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).line(text);
        };
        note(&format!(
            "VM process {} starts `{name}`",
            std::process::id()
        ));
        records::record_run(
            &bundle,
            &RunRecord {
                pid: std::process::id(),
                started_at_unix,
                paths: Some(vivarium_core::control::RuntimePaths::computed(
                    library, name,
                )),
            },
        )?;
        let fail = |error: Error| {
            note(&format!("the VM could not start: {error}"));
            let run = LastRun {
                exit: LastExit::Failed {
                    error: error.to_string(),
                },
                started_at_unix,
                ended_at_unix: now_unix(),
            };
            if records::record_last_run(&bundle, &run).is_ok() {
                records::clear_run_record(&bundle);
            }
            error
        };
        let serial = SerialHub::new(Some(open_log("serial.log").map_err(&fail)?), echo);
        serial.note(&format!("`{name}` starts"));
        let mut spec = MachineSpec::from_config_with(&config, &bundle, serial.sink(), boot_once)
            .map_err(|e| fail(e.into()))?;
        if let vivarium_core::backend::BootSpec::Firmware { order, .. } = &spec.boot {
            note(&format!(
                "boots through the BIOS, trying {order:?} in this order"
            ));
        }
        let passt = match &config.network {
            NetworkConfig::None => None,
            NetworkConfig::User { mac, forwards } => {
                let socket = network_socket_path(library, name);
                match Passt::start(&socket, forwards, &logs.join("passt.log")) {
                    Ok(passt) => {
                        note(&format!(
                            "user-mode network through passt, MAC {mac}{}",
                            if forwards.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    ", forwarding {}",
                                    forwards
                                        .iter()
                                        .map(ToString::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            }
                        ));
                        spec.network = Some(NetworkSpec {
                            mac: mac.0,
                            frame_socket: passt.socket().to_path_buf(),
                        });
                        Some(passt)
                    }
                    // The VM still starts; the user reads why it has no network in the VM
                    // log and at the top of its console.
                    Err(e) => {
                        note(&format!("no network: {e}"));
                        serial.note(&format!("no network: {e}"));
                        None
                    }
                }
            }
        };
        let display = open_display(library, name, &config.display).map_err(&fail)?;
        if let Some(display) = &display {
            note(&format!(
                "display {}x{} in {} ({} MiB of video memory)",
                display.width,
                display.height,
                display.shared.label().display(),
                display.shared.vram_size() >> 20
            ));
        }
        spec.display = display.clone();
        // From here on the process reaches only what this VM needs; every machine thread
        // inherits it. An unconfined VM (a kernel without Landlock) still runs, said in
        // the log.
        // (The runtime folder is made now: the confined process may only put sockets there.)
        let socket = socket_path(library, name);
        if let Some(dir) = socket.parent() {
            vivarium_core::fsutil::ensure_private_dir(dir).map_err(|e| {
                fail(Error::io(
                    format!("could not create `{}`", dir.display()),
                    e,
                ))
            })?;
        }
        let reach = crate::confine::Reach::for_machine(&bundle, &spec, &socket);
        note(&crate::confine::describe(
            &crate::confine::confine_filesystem(&reach),
        ));
        // And each thread started from here on makes only the system calls its kind needs;
        // one outside its filter ends the VM as failed, naming the call.
        match crate::seccomp::enable() {
            Ok(()) => {
                note("seccomp: every VM thread runs under its kind's system-call filter");
                let failure = FailureRecord {
                    bundle: bundle.clone(),
                    started_at_unix,
                    runtime: vec![
                        socket.clone(),
                        display_path(library, name),
                        network_socket_path(library, name),
                    ],
                };
                crate::seccomp::watch_blocked_calls(move |call| {
                    failure.end_process(&call.to_string())
                });
            }
            Err(e) => note(&format!("warning: {e}")),
        }
        let machine = backend.start(spec).map_err(|e| {
            remove_display(display.as_ref());
            fail(e.into())
        })?;
        note(&format!(
            "the machine runs ({:.2} ms of CPU since the process started)",
            process_cpu_ms()
        ));
        let served = ServedVm {
            name: name.to_string(),
            started_at_unix,
            machine: Arc::clone(&machine),
            serial,
            log: Some(Arc::clone(&log)),
            cdrom: config.cdrom.as_ref().map(|c| c.image.clone()),
            display: display.as_ref().map(|d| Arc::clone(&d.shared)),
        };
        let server = match ControlServer::bind(&socket_path(library, name), served) {
            Ok(server) => server,
            Err(e) => {
                let _ = machine.request(ControlRequest::PowerOff);
                machine.wait();
                remove_display(display.as_ref());
                return Err(fail(e.into()));
            }
        };
        Ok(Session {
            display,
            _passt: passt,
            name: name.to_string(),
            bundle,
            started_at_unix,
            log,
            machine,
            server: Some(server),
            _lock: lock,
        })
    }

    /// The machine, for control requests.
    pub fn machine(&self) -> Arc<dyn RunningMachine> {
        Arc::clone(&self.machine)
    }

    fn note(&self, text: &str) {
        let _ = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .line(text);
    }

    /// Puts standard input and output on `/dev/null` and standard error on `logs/vm.log`
    /// (where a panic message lands), so the process holds no terminal or pipe of its starter.
    pub fn detach_stdio(&self) {
        let log_path = self.bundle.join("logs").join("vm.log");
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path);
        use std::os::fd::AsRawFd;
        if let Ok(null) = &null {
            // SAFETY: both descriptors are open; dup2 atomically replaces 0 and 1, which this
            // process does not use as Rust objects other than through std's handles, which
            // keep working on the new files.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
            }
        }
        if let Ok(err) = &err {
            // SAFETY: as above, for descriptor 2.
            unsafe {
                libc::dup2(err.as_raw_fd(), 2);
            }
        }
    }

    /// Waits until the machine ends, removes the control socket, and records how the run
    /// ended. The bundle lock is released when the session is dropped.
    pub fn wait(mut self) -> MachineExit {
        let exit = self.machine.wait();
        // No client can reach a VM that has ended.
        self.server.take();
        remove_display(self.display.take().as_ref());
        let last = match &exit {
            MachineExit::PoweredOff => LastExit::PoweredOff,
            MachineExit::Crashed { report } => LastExit::Crashed {
                reason: report.clone(),
            },
            MachineExit::Failed { error } => LastExit::Failed {
                error: error.clone(),
            },
        };
        self.note(&format!(
            "`{}` ended: {}{}",
            self.name,
            last.as_str(),
            last.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ));
        let run = LastRun {
            exit: last,
            started_at_unix: self.started_at_unix,
            ended_at_unix: now_unix(),
        };
        match records::record_last_run(&self.bundle, &run) {
            Ok(()) => records::clear_run_record(&self.bundle),
            Err(e) => self.note(&format!("could not record the end of the run: {e}")),
        }
        exit
    }
}

/// How a VM process ends at once as failed when it cannot go on safely (a thread made a system
/// call outside its filter, and may hold any lock): it says why in `vm.log`, records the run
/// as failed with that error (what `vivarium status` and the app show), removes its runtime
/// files, and exits with status 1, without waiting for threads that may never return.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    /// The VM's bundle.
    pub bundle: PathBuf,
    /// When the run started.
    pub started_at_unix: u64,
    /// The control socket, display file and network socket, removed on the way out.
    pub runtime: Vec<PathBuf>,
}

impl FailureRecord {
    /// Records `error` and ends the process.
    pub fn end_process(&self, error: &str) -> ! {
        let logs = self.bundle.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join("vm.log"))
        {
            let _ = writeln!(file, "the VM failed: {error}");
        }
        let run = LastRun {
            exit: LastExit::Failed {
                error: error.to_string(),
            },
            started_at_unix: self.started_at_unix,
            ended_at_unix: now_unix(),
        };
        if records::record_last_run(&self.bundle, &run).is_ok() {
            records::clear_run_record(&self.bundle);
        }
        for file in &self.runtime {
            let _ = std::fs::remove_file(file);
        }
        // SAFETY: _exit ends the process at once; nothing after it runs, and no destructor
        // of a thread that may be stuck holding a lock is needed.
        unsafe { libc::_exit(1) }
    }
}

/// CPU time this process has used so far (user and system, all threads), in milliseconds:
/// what `cargo xtask bench vm` reads from `vm.log` as the VMM's start-up cost.
pub fn process_cpu_ms() -> f64 {
    // SAFETY: a zeroed rusage is valid; getrusage fills it for this process.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Creates the display file of VM `name` when its configuration has a screen.
fn open_display(
    library: &Library,
    name: &str,
    config: &DisplayConfig,
) -> Result<Option<DisplaySpec>, Error> {
    let DisplayConfig::Framebuffer { width, height } = *config else {
        return Ok(None);
    };
    let vram = config.vram_size().ok_or_else(|| {
        Error::InvalidInput(format!(
            "the display {width}x{height} of `{name}` needs more video memory than Vivarium \
             gives a VM: choose a smaller size (vivarium set {name} --display 1920x1080)"
        ))
    })?;
    // Sealed shared memory that viewers get over the control socket (Linux); a file in the
    // runtime folder elsewhere.
    #[cfg(target_os = "linux")]
    let created = {
        let _ = (library, display_path);
        SharedDisplay::create_sealed(&format!("vivarium display of {name}"), vram)
    };
    #[cfg(not(target_os = "linux"))]
    let created = {
        let path = display_path(library, name);
        if let Some(dir) = path.parent() {
            vivarium_core::fsutil::ensure_private_dir(dir)
                .map_err(|e| Error::io(format!("could not create `{}`", dir.display()), e))?;
        }
        SharedDisplay::create(&path, vram)
    };
    let shared = created.map_err(|e| {
        Error::io(
            "could not create the VM's display",
            std::io::Error::other(e),
        )
    })?;
    Ok(Some(DisplaySpec {
        shared: Arc::new(shared),
        width,
        height,
    }))
}

/// Removes a display file once its machine has ended (viewers that still map it keep their
/// copy until they let go). Sealed shared memory has no file: it goes with its last user.
fn remove_display(display: Option<&DisplaySpec>) {
    if let Some(path) = display.and_then(|d| d.shared.path()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Counts SIGTERMs and SIGINTs; the watcher thread turns them into control requests.
static TERMS: AtomicU32 = AtomicU32::new(0);
static INTS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    TERMS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_int(_: libc::c_int) {
    INTS.fetch_add(1, Ordering::SeqCst);
}

/// Installs the signal handlers of a VM process: SIGTERM presses the power button (a second
/// one powers off); SIGINT powers off when `interrupt_powers_off` (a foreground `run`), and
/// is ignored otherwise, like SIGHUP.
pub fn install_signal_handlers(interrupt_powers_off: bool) {
    let term: extern "C" fn(libc::c_int) = on_term;
    let int: extern "C" fn(libc::c_int) = on_int;
    // SAFETY: the handlers only increment atomics (async-signal-safe) and have the signature
    // `signal` expects; SIG_IGN is a valid disposition.
    unsafe {
        libc::signal(libc::SIGTERM, term as libc::sighandler_t);
        if interrupt_powers_off {
            libc::signal(libc::SIGINT, int as libc::sighandler_t);
        } else {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
}

/// Turns the signals counted by [`install_signal_handlers`] into requests to `machine`, on a
/// thread of its own that ends with the machine.
pub fn watch_signals(machine: Arc<dyn RunningMachine>, interrupt_powers_off: bool) {
    install_signal_handlers(interrupt_powers_off);
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            vivarium_threads::started(vivarium_threads::ThreadKind::Main);
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
                    && machine.request(request).is_err()
                {
                    return;
                }
            }
        });
}
