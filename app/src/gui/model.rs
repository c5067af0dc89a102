//! What the app knows about the library: a snapshot of every VM, taken off the UI thread by a
//! [`Refresher`] every second and at once after an operation.

use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eframe::egui;
use vivarium_core::control::{LastExit, LiveState, RunState, live_state};
use vivarium_core::{Library, VmEntry};

use super::icons::OsKind;

/// How often the library and the VM processes are polled when nothing happens.
const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// The state of a VM as the sidebar shows it: from its VM process while it runs, from the
/// record of its last run when it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Not running, and never ran (or its process was killed).
    Stopped,
    /// Not running; the guest powered off last time.
    PoweredOff,
    /// Not running; the guest crashed last time.
    Crashed,
    /// Not running; the last start or run failed.
    Failed,
    /// The VM process is building the machine.
    Starting,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// The power button was pressed; the guest is shutting down.
    ShuttingDown,
    /// Its `vm.toml` cannot be read.
    Broken,
    /// Another operation holds it (a full clone copying its disks): it cannot start until
    /// that ends.
    Busy,
}

impl VmState {
    /// The word shown to people.
    pub fn label(self) -> &'static str {
        match self {
            VmState::Stopped => "Stopped",
            VmState::PoweredOff => "Powered off",
            VmState::Crashed => "Crashed",
            VmState::Failed => "Failed",
            VmState::Starting => "Starting",
            VmState::Running => "Running",
            VmState::Paused => "Paused",
            VmState::ShuttingDown => "Shutting down",
            VmState::Broken => "Broken",
            VmState::Busy => "Busy",
        }
    }

    /// Whether a VM process runs the VM.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::ShuttingDown
        )
    }

    /// Whether the VM is stopped (and its configuration readable).
    pub fn is_stopped(self) -> bool {
        matches!(
            self,
            VmState::Stopped | VmState::PoweredOff | VmState::Crashed | VmState::Failed
        )
    }

    fn from_live(live: &LiveState) -> VmState {
        match live {
            LiveState::Running(status) => match status.state {
                RunState::Starting => VmState::Starting,
                RunState::Running => VmState::Running,
                RunState::Paused => VmState::Paused,
                RunState::ShuttingDown => VmState::ShuttingDown,
            },
            LiveState::Stopped { last_run } => match last_run.as_ref().map(|r| &r.exit) {
                Some(LastExit::PoweredOff) => VmState::PoweredOff,
                Some(LastExit::Crashed { .. }) => VmState::Crashed,
                Some(LastExit::Failed { .. }) => VmState::Failed,
                Some(LastExit::Killed) | None => VmState::Stopped,
            },
            LiveState::Busy => VmState::Busy,
        }
    }
}

/// One VM of a snapshot.
#[derive(Debug, Clone)]
pub struct VmRow {
    /// What the library says about it.
    pub entry: VmEntry,
    /// Its state.
    pub state: VmState,
    /// What its VM process (or the record of its last run) says.
    pub live: Option<LiveState>,
    /// Why it cannot start on this computer (its machine is of another architecture), if
    /// it cannot.
    pub cannot_start: Option<String>,
    /// Its OS icon.
    pub os: OsKind,
    /// Lowercase name and OS name, for the filter.
    pub search_text: String,
}

impl VmRow {
    /// A row from a library entry and its live state (`None` for a broken VM).
    pub fn new(entry: VmEntry, live: Option<LiveState>) -> Self {
        let state = match (&entry.config, &live) {
            (Err(_), _) => VmState::Broken,
            (Ok(_), Some(live)) => VmState::from_live(live),
            (Ok(_), None) if entry.running => VmState::Running,
            (Ok(_), None) => VmState::Stopped,
        };
        let (os, os_name) = match &entry.config {
            Ok(config) => (OsKind::from_os_id(&config.os.id), config.os.name.clone()),
            Err(_) => (OsKind::Other, String::new()),
        };
        let search_text = format!("{} {}", entry.name, os_name).to_lowercase();
        let cannot_start = entry
            .config
            .as_ref()
            .ok()
            .and_then(vivarium_core::VmConfig::cannot_start_here);
        VmRow {
            entry,
            state,
            live,
            cannot_start,
            os,
            search_text,
        }
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }
}

/// Every VM of the library at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The VMs, sorted by name.
    pub vms: Vec<VmRow>,
    /// Why the library could not be listed, if it could not.
    pub error: Option<String>,
    /// Whether this is a real listing (not the empty placeholder before the first one).
    pub loaded: bool,
}

impl Snapshot {
    /// Lists the library and asks every VM's live state, now (on the calling thread).
    pub fn take(library: &Library) -> Snapshot {
        match library.list() {
            Ok(entries) => Snapshot {
                vms: entries
                    .into_iter()
                    .map(|entry| {
                        let live = entry
                            .config
                            .is_ok()
                            .then(|| live_state(library, &entry.name));
                        VmRow::new(entry, live)
                    })
                    .collect(),
                error: None,
                loaded: true,
            },
            Err(e) => Snapshot {
                vms: Vec::new(),
                error: Some(e.to_string()),
                loaded: true,
            },
        }
    }

    /// The VM of this name.
    pub fn find(&self, name: &str) -> Option<&VmRow> {
        self.vms.iter().find(|vm| vm.entry.name == name)
    }
}

/// Lists the library on its own thread, every [`REFRESH_INTERVAL`] and when asked.
pub struct Refresher {
    latest: Arc<Mutex<Option<Snapshot>>>,
    wake: Sender<()>,
}

impl Refresher {
    /// Starts the thread; it ends when the refresher is dropped.
    pub fn start(library: Library, ctx: egui::Context) -> Refresher {
        let latest = Arc::new(Mutex::new(None));
        let (wake, woken) = channel::<()>();
        let slot = latest.clone();
        std::thread::Builder::new()
            .name("library-refresh".into())
            .spawn(move || {
                // The window repaints only when something changed: an idle app costs nothing.
                let mut last_seen = String::new();
                loop {
                    let snapshot = Snapshot::take(&library);
                    let seen = format!("{:?}{:?}", snapshot.vms, snapshot.error);
                    if seen != last_seen {
                        last_seen = seen;
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
                        ctx.request_repaint();
                    }
                    match woken.recv_timeout(REFRESH_INTERVAL) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {
                            // Coalesce a burst of wake-ups into one listing.
                            while woken.try_recv().is_ok() {}
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })
            .expect("the library refresh thread starts");
        Refresher { latest, wake }
    }

    /// Asks for a new listing now.
    pub fn refresh_now(&self) {
        let _ = self.wake.send(());
    }

    /// The newest listing, if one arrived since the last call.
    pub fn take_latest(&self) -> Option<Snapshot> {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
