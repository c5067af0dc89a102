//! Talking to running VMs: every running VM is a process of its own (the `vivarium` binary
//! re-executed as a VM runner) that serves a control socket. The CLI and the desktop app are
//! its peers: they ask for its status, pause, resume, shut down, power off or reset it, and
//! attach to its serial console.
//!
//! - [`socket_path`]: where a VM's socket is (the per-user runtime folder, mode 0600).
//! - [`protocol`]: the messages (newline-delimited JSON after a `hello` handshake; see
//!   `docs/CONTROL-PROTOCOL.md`).
//! - [`ControlClient`] and [`SerialStream`]: the client side.
//! - [`server`]: the VM process's side, over a [`RunningMachine`](crate::backend::RunningMachine).
//! - [`records`]: what a VM process records in its bundle (the run in progress and how the
//!   last run ended), and [`live_state`], which puts everything together for `list` and the app.

mod client;
pub mod fdpass;
pub mod protocol;
pub mod records;
pub mod serial_hub;
pub mod server;

use std::path::PathBuf;

pub use client::{ControlClient, SerialInput, SerialStream};
pub use protocol::{CdromDrive, PROTOCOL_VERSION, RunState, VmStatus};
pub use records::{LastExit, LastRun, LiveState, last_run, live_state};

use crate::library::Library;

/// The longest socket path a `sockaddr_un` holds (108 bytes on Linux with the NUL, 104 on
/// macOS); paths are kept below the smaller.
const MAX_SOCKET_PATH: usize = 100;

/// What can go wrong when talking to a VM process.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No VM process serves this VM.
    #[error("VM `{0}` is not running (start it with `vivarium start {0}`)")]
    NotRunning(String),
    /// The VM process speaks another protocol version (another Vivarium build).
    #[error(
        "protocol version mismatch: this Vivarium speaks control protocol {ours}, the VM process \
         speaks {theirs}; stop the VM with the Vivarium that started it"
    )]
    VersionMismatch {
        /// Our version.
        ours: u32,
        /// The VM process's version.
        theirs: u32,
    },
    /// The VM process refused the request; the text says why.
    #[error("VM `{name}` refused: {message}")]
    Refused {
        /// The VM.
        name: String,
        /// Its reason.
        message: String,
    },
    /// The VM process answered something this client does not understand.
    #[error("VM `{name}` sent an unexpected reply: {what}")]
    Protocol {
        /// The VM.
        name: String,
        /// What was wrong.
        what: String,
    },
    /// The VM did not do what was asked within the time allowed.
    #[error("{0}")]
    Timeout(String),
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The folder that holds the control sockets of a library's VMs: `$XDG_RUNTIME_DIR/vivarium`
/// (per user, mode 0700) when the runtime folder is set, else `.run/` (mode 0700) in the library.
pub fn socket_dir(library: &Library) -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() && std::path::Path::new(&dir).is_absolute() => {
            PathBuf::from(dir).join("vivarium")
        }
        _ => library.root().join(".run"),
    }
}

/// Where a running VM's files in the runtime folder are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimePaths {
    /// The control socket.
    pub socket: PathBuf,
    /// The shared display file.
    pub display: PathBuf,
    /// passt's frame socket.
    pub network: PathBuf,
}

impl RuntimePaths {
    /// Where a VM process started in this environment puts them.
    pub fn computed(library: &Library, name: &str) -> RuntimePaths {
        RuntimePaths {
            socket: socket_path(library, name),
            display: display_path(library, name),
            network: network_socket_path(library, name),
        }
    }

    /// Where VM `name`'s running process put them (its run record says), else where one
    /// started in this environment would.
    pub fn of_running(library: &Library, name: &str) -> RuntimePaths {
        records::run_record(&library.bundle_path(name))
            .and_then(|r| r.paths)
            .unwrap_or_else(|| RuntimePaths::computed(library, name))
    }
}

/// The control socket of VM `name` in `library`. The file name carries a hash of the library
/// folder and the name, so two libraries never share a socket; long names are shortened so the
/// path fits in a `sockaddr_un`.
pub fn socket_path(library: &Library, name: &str) -> PathBuf {
    runtime_socket(library, name, ".sock")
}

/// The socket of VM `name`'s user-mode network (passt's frame stream), next to its control
/// socket.
pub fn network_socket_path(library: &Library, name: &str) -> PathBuf {
    runtime_socket(library, name, ".net.sock")
}

/// The shared display file of VM `name` (see [`crate::display`]), next to its control socket:
/// the VM process creates it, the app and `vivarium screenshot` map it.
pub fn display_path(library: &Library, name: &str) -> PathBuf {
    runtime_socket(library, name, ".display")
}

fn runtime_socket(library: &Library, name: &str, suffix: &str) -> PathBuf {
    let dir = socket_dir(library);
    let mut key = library.root().as_os_str().as_encoded_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(name.as_bytes());
    let hash = format!("{:016x}", fnv1a64(&key));
    let dir_len = dir.as_os_str().len() + 1;
    let room = MAX_SOCKET_PATH
        .saturating_sub(dir_len)
        .saturating_sub(hash.len() + suffix.len() + 1);
    let short: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(room.min(32))
        .collect();
    if short.is_empty() {
        dir.join(format!("{hash}{suffix}"))
    } else {
        dir.join(format!("{short}-{hash}{suffix}"))
    }
}

/// FNV-1a, 64 bits. Hand-written (a few lines) because the socket name must be the same in
/// every Vivarium build that may talk to a VM, which the standard library's hasher does not
/// promise.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_are_distinct_per_library_and_name_and_short() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let la = Library::open(a.path()).unwrap();
        let lb = Library::open(b.path()).unwrap();
        assert_ne!(socket_path(&la, "x"), socket_path(&lb, "x"));
        assert_ne!(socket_path(&la, "x"), socket_path(&la, "y"));
        let long = "n".repeat(200);
        let path = socket_path(&la, &long);
        assert!(path.as_os_str().len() <= MAX_SOCKET_PATH, "{path:?}");
        assert_eq!(path, socket_path(&la, &long), "stable");
    }

    #[test]
    fn fnv_is_the_published_function() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
