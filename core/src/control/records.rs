//! What a VM process records in its bundle, and the live state of a VM for `list` and the app.
//!
//! - `state/run.toml` exists while a VM process runs: its pid and start time. It is written
//!   (atomically) after the process took the bundle lock and removed when it ends.
//! - `state/last-run.toml` says how the last run ended, and when (written atomically).
//!
//! A VM process killed with SIGKILL records nothing: its lock dies with it, but its
//! `run.toml` (and maybe its socket) stay. [`live_state`] finds such leftovers, records the
//! run as [`LastExit::Killed`] and removes them, under the bundle lock so a VM that is
//! starting at the same moment is never disturbed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ControlClient, VmStatus, now_unix, socket_path};
use crate::fsutil::atomic_write;
use crate::library::Library;

/// Folder of a bundle where run records live.
const STATE_DIR: &str = "state";
/// The record of the run in progress.
const RUN_FILE: &str = "run.toml";
/// The record of how the last run ended.
const LAST_RUN_FILE: &str = "last-run.toml";

/// How a run of a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LastExit {
    /// The guest powered off, or the host pulled the plug (`stop --force`).
    PoweredOff,
    /// The guest crashed (e.g. a triple fault).
    Crashed {
        /// What happened, with the vCPU registers.
        reason: String,
    },
    /// The VM process was killed (or died) without recording how the run ended.
    Killed,
    /// The VM could not start, or the VMM failed while it ran.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl LastExit {
    /// A short word for tables and JSON: `powered-off`, `crashed`, `killed`, `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LastExit::PoweredOff => "powered-off",
            LastExit::Crashed { .. } => "crashed",
            LastExit::Killed => "killed",
            LastExit::Failed { .. } => "failed",
        }
    }

    /// The detail (crash report or error), if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            LastExit::Crashed { reason } => Some(reason),
            LastExit::Failed { error } => Some(error),
            LastExit::PoweredOff | LastExit::Killed => None,
        }
    }
}

/// How and when the last run of a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    /// How it ended.
    pub exit: LastExit,
    /// When the run started (seconds since the Unix epoch).
    pub started_at_unix: u64,
    /// When it ended, or for [`LastExit::Killed`] when that was noticed.
    pub ended_at_unix: u64,
}

/// The record of a run in progress (`state/run.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The VM process.
    pub pid: u32,
    /// When it started (seconds since the Unix epoch).
    pub started_at_unix: u64,
    /// Where its control socket, display file and network socket are. They depend on the
    /// environment the VM process was started in (`XDG_RUNTIME_DIR`), so clients started in
    /// another one (a shell of another session, a desktop launcher) find them here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<super::RuntimePaths>,
}

/// Whether a VM runs, as the app and `list` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveState {
    /// No VM process runs it.
    Stopped {
        /// How the last run ended, if it ever ran.
        last_run: Option<LastRun>,
    },
    /// A VM process runs it.
    Running(VmStatus),
    /// No VM process runs it, but another operation of the library holds it (a full clone
    /// copying its disks, a rename): it cannot be started or changed until that ends.
    Busy,
}

fn state_dir(bundle: &Path) -> PathBuf {
    bundle.join(STATE_DIR)
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str(&text).ok()
}

fn write_toml<T: Serialize>(path: &Path, value: &T) -> crate::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| crate::Error::io(format!("could not create `{}`", dir.display()), e))?;
    }
    let text = toml::to_string(value).expect("records always serialise to TOML");
    atomic_write(path, text.as_bytes())
}

/// How the last run of VM `name` ended, if it ever ran (from `state/last-run.toml`).
pub fn last_run(library: &Library, name: &str) -> Option<LastRun> {
    read_toml(&state_dir(&library.bundle_path(name)).join(LAST_RUN_FILE))
}

/// Records how the run of the VM in `bundle` ended. The caller holds the bundle lock.
pub fn record_last_run(bundle: &Path, run: &LastRun) -> crate::Result<()> {
    write_toml(&state_dir(bundle).join(LAST_RUN_FILE), run)
}

/// The record of the run in progress of the VM in `bundle`, if any.
pub fn run_record(bundle: &Path) -> Option<RunRecord> {
    read_toml(&state_dir(bundle).join(RUN_FILE))
}

/// Records the run in progress. The caller (the VM process) holds the bundle lock.
pub fn record_run(bundle: &Path, run: &RunRecord) -> crate::Result<()> {
    write_toml(&state_dir(bundle).join(RUN_FILE), run)
}

/// Removes the record of the run in progress (its end was recorded). The caller holds the lock.
pub fn clear_run_record(bundle: &Path) {
    let _ = std::fs::remove_file(state_dir(bundle).join(RUN_FILE));
}

/// The live state of VM `name`. Fast: a non-blocking probe of the bundle lock first; the VM
/// process is asked for its status only when the lock is held. Leftovers of a VM process that
/// died without cleaning up (its run record, its socket) are turned into a
/// [`LastExit::Killed`] record and removed.
pub fn live_state(library: &Library, name: &str) -> LiveState {
    if library.bundle_locked(name) {
        match ControlClient::connect(library, name).and_then(|mut c| c.status()) {
            Ok(status) => return LiveState::Running(status),
            Err(_) => {
                // Locked but not (yet, or no longer) answering: a VM process that is still
                // building its machine or is ending, or another library operation.
                if let Some(run) = run_record(&library.bundle_path(name)) {
                    return LiveState::Running(VmStatus {
                        name: name.to_string(),
                        state: super::RunState::Starting,
                        pid: run.pid,
                        started_at_unix: run.started_at_unix,
                        control_clients: 0,
                        serial_clients: 0,
                        cdrom: None,
                    });
                }
                // Locked, no run record: a library operation, not a VM process.
                return LiveState::Busy;
            }
        }
    } else {
        clean_up_after_dead_process(library, name);
    }
    LiveState::Stopped {
        last_run: last_run(library, name),
    }
}

/// If a VM process of `name` died without recording its end, records it as killed and removes
/// its run record and socket. Does nothing when the bundle is locked (a VM process runs or is
/// starting).
pub fn clean_up_after_dead_process(library: &Library, name: &str) {
    let bundle = library.bundle_path(name);
    let socket = socket_path(library, name);
    let record = run_record(&bundle);
    let computed = super::RuntimePaths::computed(library, name);
    let leftovers = || {
        let recorded = run_record(&bundle).and_then(|r| r.paths);
        [Some(computed.clone()), recorded]
            .into_iter()
            .flatten()
            .flat_map(|p| [p.socket, p.display, p.network])
            .collect::<Vec<_>>()
    };
    if record.is_none() && !leftovers().iter().any(|p| p.exists()) {
        return;
    }
    let Ok(_lock) = library.lock_bundle(name) else {
        return;
    };
    // Under the lock nobody else runs this VM: what is left is stale (its display file is
    // guest memory's size in RAM-backed space, its sockets files nobody answers on).
    for path in leftovers() {
        let _ = std::fs::remove_file(path);
    }
    if let Some(run) = run_record(&bundle) {
        let killed = LastRun {
            exit: LastExit::Killed,
            started_at_unix: run.started_at_unix,
            ended_at_unix: now_unix(),
        };
        if record_last_run(&bundle, &killed).is_ok() {
            clear_run_record(&bundle);
        }
    }
    let _ = std::fs::remove_file(&socket);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_process_is_recorded_as_killed_and_its_leftovers_go() {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path()).unwrap();
        let spec = crate::NewVm::with_defaults("vm", crate::config::BootSource::Disk);
        let spec = crate::NewVm {
            disk: crate::NewDisk::None,
            ..spec
        };
        library.create(&spec, &crate::disk::NoProgress).unwrap();
        assert_eq!(
            live_state(&library, "vm"),
            LiveState::Stopped { last_run: None }
        );
        let bundle = library.bundle_path("vm");
        // A process started in another environment (another XDG_RUNTIME_DIR) left its display
        // file and sockets where its run record says.
        let elsewhere = dir.path().join("other-runtime");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let paths = super::super::RuntimePaths {
            socket: elsewhere.join("vm.sock"),
            display: elsewhere.join("vm.display"),
            network: elsewhere.join("vm.net.sock"),
        };
        for file in [&paths.socket, &paths.display, &paths.network] {
            std::fs::write(file, b"left over").unwrap();
        }
        record_run(
            &bundle,
            &RunRecord {
                pid: 1,
                started_at_unix: 5,
                paths: Some(paths.clone()),
            },
        )
        .unwrap();
        assert_eq!(
            super::super::RuntimePaths::of_running(&library, "vm"),
            paths,
            "clients look where the process put them"
        );
        let LiveState::Stopped {
            last_run: Some(run),
        } = live_state(&library, "vm")
        else {
            panic!("stopped with a last run")
        };
        assert_eq!(run.exit, LastExit::Killed);
        assert_eq!(run.started_at_unix, 5);
        assert!(run_record(&bundle).is_none());
        for file in [&paths.socket, &paths.display, &paths.network] {
            assert!(!file.exists(), "{} removed", file.display());
        }
        assert_eq!(
            super::super::RuntimePaths::of_running(&library, "vm"),
            super::super::RuntimePaths::computed(&library, "vm")
        );
        // A record survives reading it again.
        assert_eq!(last_run(&library, "vm").unwrap().exit, LastExit::Killed);
    }

    #[test]
    fn records_round_trip_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let run = LastRun {
            exit: LastExit::Crashed {
                reason: "triple fault\nrip=0".into(),
            },
            started_at_unix: 1,
            ended_at_unix: 2,
        };
        record_last_run(dir.path(), &run).unwrap();
        let back: LastRun = read_toml(&dir.path().join("state").join(LAST_RUN_FILE)).unwrap();
        assert_eq!(back, run);
    }
}
