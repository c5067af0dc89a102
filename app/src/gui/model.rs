//! What the app knows about the library: a snapshot of every VM, taken off the UI thread by a
//! [`Refresher`] every second and at once after an operation.

use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eframe::egui;
use vivarium_core::{Library, VmEntry};

use super::icons::OsKind;

/// How often the library is listed when nothing happens.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The state of a VM as the sidebar shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Not running.
    Stopped,
    /// A VM process holds it.
    Running,
    /// Its `vm.toml` cannot be read.
    Broken,
}

impl VmState {
    /// The word shown to people.
    pub fn label(self) -> &'static str {
        match self {
            VmState::Stopped => "Stopped",
            VmState::Running => "Running",
            VmState::Broken => "Broken",
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
    /// Its OS icon.
    pub os: OsKind,
    /// Lowercase name and OS name, for the filter.
    pub search_text: String,
}

impl VmRow {
    /// A row from a library entry.
    pub fn new(entry: VmEntry) -> Self {
        let state = match (&entry.config, entry.running) {
            (Err(_), _) => VmState::Broken,
            (Ok(_), true) => VmState::Running,
            (Ok(_), false) => VmState::Stopped,
        };
        let (os, os_name) = match &entry.config {
            Ok(config) => (OsKind::from_os_id(&config.os.id), config.os.name.clone()),
            Err(_) => (OsKind::Other, String::new()),
        };
        let search_text = format!("{} {}", entry.name, os_name).to_lowercase();
        VmRow {
            entry,
            state,
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
    /// Lists the library now (on the calling thread).
    pub fn take(library: &Library) -> Snapshot {
        match library.list() {
            Ok(entries) => Snapshot {
                vms: entries.into_iter().map(VmRow::new).collect(),
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
                loop {
                    let snapshot = Snapshot::take(&library);
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(snapshot);
                    ctx.request_repaint();
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
