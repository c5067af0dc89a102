//! User-mode networking through `passt`: a process of the VM that gives the guest DHCP, DNS
//! and NAT onto the host's own sockets (no root, no bridge, no tap device), and forwards
//! host ports to the guest.
//!
//! The VM process starts one `passt` per running VM. `passt` listens on a unix socket in the
//! runtime folder; the machine's virtio-net card connects to it (and connects again after a
//! reset) and exchanges Ethernet frames, each behind its 4-byte big-endian length. `passt`
//! ends with the VM process: it is told to (`PR_SET_PDEATHSIG`) even when the VM process is
//! killed, and it is killed when [`Passt`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{PortForward, Protocol};

/// The MTU the guest gets by DHCP: the virtio-net card carries standard Ethernet frames.
pub const GUEST_MTU: u16 = 1500;
/// How much of passt's standard error is kept for error messages.
const MAX_KEPT_STDERR: usize = 8192;
/// How long `passt` may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why user-mode networking could not start.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// `passt` is not on the PATH.
    #[error(
        "`passt` is not installed, so the VM has no network; install the `passt` package \
         (e.g. `sudo apt install passt`) and start the VM again"
    )]
    NotInstalled,
    /// It could not be started or did not come up.
    #[error("user-mode networking (passt) failed: {0}")]
    Failed(String),
}

/// A running `passt` for one VM.
pub struct Passt {
    child: Child,
    socket: PathBuf,
}

impl Passt {
    /// Starts `passt` serving its frame stream on `socket`, with `forwards` from host ports
    /// to guest ports, and waits until the socket exists. The socket's folder is created
    /// private to this user if needed.
    pub fn start(
        socket: &Path,
        forwards: &[PortForward],
        log_file: &Path,
    ) -> Result<Passt, PasstError> {
        let program = find_in_path("passt").ok_or(PasstError::NotInstalled)?;
        if let Some(dir) = socket.parent() {
            crate::fsutil::ensure_private_dir(dir).map_err(|e| {
                PasstError::Failed(format!("could not create `{}`: {e}", dir.display()))
            })?;
        }
        let _ = std::fs::remove_file(socket);
        let mut command = Command::new(program);
        command
            .arg("--foreground")
            .arg("--quiet")
            .arg("--socket")
            .arg(socket)
            .args(["--mtu", &GUEST_MTU.to_string()])
            .arg("--log-file")
            .arg(log_file)
            .args(["--log-size", "1048576"]);
        // A debugging aid: every frame and connection in passt's log.
        if std::env::var_os("VIVARIUM_PASST_TRACE").is_some_and(|v| v == "1") {
            command.arg("--trace");
        }
        // passt leaves root for `nobody` unless told otherwise, and `nobody` could not
        // create its socket in this user's private runtime folder: it runs as the VM
        // process's own user (only ever root when Vivarium itself runs as root).
        // SAFETY: getuid and getgid cannot fail and have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        command.args(["--runas", &format!("{uid}:{gid}")]);
        for (flag, protocol) in [
            ("--tcp-ports", Protocol::Tcp),
            ("--udp-ports", Protocol::Udp),
        ] {
            let spec = port_spec(forwards, protocol);
            if !spec.is_empty() {
                command.args([flag, &spec]);
            }
        }
        // What passt says on its standard error (only why it could not start, with
        // `--quiet`) goes to a file beside its log, read back when it does not start. A file,
        // not a pipe: a pipe needs a reader thread for as long as passt runs, and that thread
        // would predate the VM process's confinement.
        let stderr_path = log_file.with_extension("err");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| {
            PasstError::Failed(format!("could not create `{}`: {e}", stderr_path.display()))
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // prctl, which is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    // End with the VM process, however it ends.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| PasstError::Failed(format!("could not start passt: {e}")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The file appears at bind(), a moment before passt listens: a connection in
            // between would be refused.
            if socket.exists() && is_listening(socket) {
                return Ok(Passt {
                    child,
                    socket: socket.to_path_buf(),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                let message: String = std::fs::read_to_string(&stderr_path)
                    .unwrap_or_default()
                    .chars()
                    .take(MAX_KEPT_STDERR)
                    .collect();
                let message: Vec<&str> = message
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("Failed to send"))
                    .collect();
                return Err(PasstError::Failed(format!(
                    "passt exited ({status}): {}",
                    message.join("; ")
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(PasstError::Failed(format!(
                    "passt did not create its socket within {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The socket the virtio-net card connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// passt's port list for one protocol: `HOST:GUEST,HOST:GUEST`.
fn port_spec(forwards: &[PortForward], protocol: Protocol) -> String {
    forwards
        .iter()
        .filter(|f| f.protocol == protocol)
        .map(|f| format!("{}:{}", f.host, f.guest))
        .collect::<Vec<_>>()
        .join(",")
}

/// `name` in one of the PATH's folders.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// Whether a socket bound at `path` is listening, from the kernel's table of Unix sockets
/// (`/proc/net/unix`: the flags column has `__SO_ACCEPTCON`, 0x10000, for a listening socket).
/// Where that table cannot be read, a bound socket counts as listening.
fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return true;
    };
    listening_in_table(&table, &path.to_string_lossy())
}

/// [`is_listening`] on the text of `/proc/net/unix`.
fn listening_in_table(table: &str, path: &str) -> bool {
    const ACCEPTING: u32 = 0x1_0000;
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8
            && fields[7] == path
            && u32::from_str_radix(fields[3], 16).is_ok_and(|flags| flags & ACCEPTING != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_per_protocol() {
        let forwards: Vec<PortForward> = ["tcp:8080:80", "udp:5353:53", "2222:22"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(port_spec(&forwards, Protocol::Tcp), "8080:80,2222:22");
        assert_eq!(port_spec(&forwards, Protocol::Udp), "5353:53");
        assert_eq!(port_spec(&[], Protocol::Tcp), "");
    }

    #[test]
    fn a_socket_counts_as_listening_only_with_the_accepting_flag() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                     0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/v/net.sock\n\
                     0000000000000000: 00000002 00000000 00000000 0001 01 4243 /run/v/other.sock\n\
                     0000000000000000: 00000003 00000000 00000000 0001 03 4244\n";
        assert!(listening_in_table(table, "/run/v/net.sock"));
        assert!(!listening_in_table(table, "/run/v/other.sock"));
        assert!(!listening_in_table(table, "/run/v/missing.sock"));
    }

    #[test]
    fn passt_serves_frames_on_its_socket_and_ends_when_dropped() {
        if find_in_path("passt").is_none() {
            eprintln!("SKIPPED: passt is not installed (cargo xtask test installs it)");
            assert!(
                std::env::var("VIVARIUM_REQUIRE_RIG").as_deref() != Ok("1"),
                "passt is required"
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("net.sock");
        let passt = match Passt::start(&socket, &[], &dir.path().join("passt.log")) {
            Ok(passt) => passt,
            Err(e) => panic!("{e}"),
        };
        let stream = std::os::unix::net::UnixStream::connect(passt.socket()).unwrap();
        drop(stream);
        let pid = passt.child.id();
        drop(passt);
        assert!(!socket.exists());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || {
                // A zombie is gone once waited for; the wait in drop did that.
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err()
            }
        );
    }
}
