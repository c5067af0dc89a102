//! The control protocol: newline-delimited JSON messages over a unix stream socket.
//!
//! A client opens with [`Request::Hello`] carrying [`PROTOCOL_VERSION`]; the VM process answers
//! [`Reply::Hello`] (same version) or an error and closes. Then each request line gets exactly
//! one reply line. [`Request::AttachSerial`] is answered with [`Reply::SerialAttached`], after
//! which the connection carries raw bytes: the serial backlog and live output from the VM, and
//! console input to it. The full description is `docs/CONTROL-PROTOCOL.md`.

use std::io::{BufRead, ErrorKind};

use serde::{Deserialize, Serialize};

use crate::input::InputEvent;

/// The version of the control protocol this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest message line accepted (bytes, without the newline). A longer line is an error
/// and ends the connection.
pub const MAX_LINE: usize = 64 * 1024;

/// What a running VM is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    /// The VM process is up, the machine is being built (no socket yet).
    Starting,
    /// The vCPUs run.
    Running,
    /// The vCPUs are stopped; memory and devices keep their state.
    Paused,
    /// The power button was pressed; the guest is shutting down.
    ShuttingDown,
}

impl RunState {
    /// The word `list` and `status` show.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::ShuttingDown => "shutting-down",
        }
    }
}

/// The status of a running VM, as its process reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM's name.
    pub name: String,
    /// What it is doing.
    pub state: RunState,
    /// The VM process.
    pub pid: u32,
    /// When the VM process started (seconds since the Unix epoch).
    pub started_at_unix: u64,
    /// How many control connections are open (this one included).
    pub control_clients: u32,
    /// How many clients are attached to the serial console.
    pub serial_clients: u32,
    /// The CD-ROM drive (`None` without one, or from an older VM process). Follows `eject`
    /// and `insert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromDrive>,
}

/// A running VM's CD-ROM drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CdromDrive {
    /// The image in the drive, `None` when it is empty.
    pub image: Option<std::path::PathBuf>,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Request {
    /// The first message of every connection.
    Hello {
        /// The client's protocol version.
        version: u32,
    },
    /// Asks for [`Reply::Status`].
    Status,
    /// Stops the vCPUs.
    Pause,
    /// Continues after a pause.
    Resume,
    /// Presses the ACPI power button (returns at once; the guest decides when it is done).
    ShutDown,
    /// Pulls the plug.
    PowerOff,
    /// Presses the reset button.
    Reset,
    /// Turns the connection into the serial console stream.
    AttachSerial,
    /// Asks for the VM's screen: answered by [`Reply::Display`] with the display's sealed
    /// shared memory attached as an open file (see `crate::display`).
    Display,
    /// Ejects the CD-ROM's medium; `force` even if the guest locked the drive.
    Eject {
        /// Eject even if the guest prevents medium removal.
        #[serde(default)]
        force: bool,
    },
    /// Inserts an image in the CD-ROM drive (replacing the medium unless the guest locked
    /// the drive).
    Insert {
        /// The image, as an absolute path (the VM process has its own working folder).
        image: std::path::PathBuf,
    },
    /// Keyboard and mouse events for the guest, in order (see [`crate::input`]).
    Input {
        /// The events.
        events: Vec<InputEvent>,
    },
}

/// A message from the VM process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Reply {
    /// Answer to [`Request::Hello`].
    Hello {
        /// The VM process's protocol version.
        version: u32,
        /// The VM's name.
        vm: String,
        /// The VM process.
        pid: u32,
    },
    /// The request was done.
    Ok,
    /// Answer to [`Request::Status`].
    Status {
        /// The status.
        status: VmStatus,
    },
    /// The connection now carries the serial console; `backlog_bytes` of recent output come
    /// first.
    SerialAttached {
        /// Bytes of earlier output that precede the live output.
        backlog_bytes: u64,
    },
    /// Answer to [`Request::Display`]: the display's memory comes attached to this reply.
    Display {
        /// Bytes of video memory (after the header page).
        vram_size: u64,
    },
    /// The request failed or was not understood; the VM is not affected.
    Error {
        /// A stable category: `bad-message`, `version-mismatch`, `hello-first`,
        /// `too-long`, `refused`.
        code: String,
        /// What went wrong, for people.
        message: String,
        /// The VM process's protocol version (so a client can explain a mismatch).
        version: u32,
    },
}

impl Reply {
    /// An error reply.
    pub fn error(code: &str, message: impl Into<String>) -> Reply {
        Reply::Error {
            code: code.into(),
            message: message.into(),
            version: PROTOCOL_VERSION,
        }
    }
}

/// Encodes a message as one line (with its newline).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialise");
    line.push(b'\n');
    line
}

/// A line read from a peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline.
    Text(Vec<u8>),
    /// The line was longer than the limit (what was read is dropped).
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    End,
}

/// Reads one line of at most `max` bytes. Never buffers more than `max` bytes of a line.
pub fn read_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(Line::End);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        if line.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(Line::Text(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cd_drive_in_a_status_survives_the_wire_empty_or_not() {
        let status = |image: Option<&str>| VmStatus {
            name: "vm".into(),
            state: RunState::Running,
            pid: 1,
            started_at_unix: 2,
            control_clients: 1,
            serial_clients: 0,
            cdrom: Some(CdromDrive {
                image: image.map(std::path::PathBuf::from),
            }),
        };
        for sent in [status(None), status(Some("/a.iso"))] {
            let text = serde_json::to_string(&sent).unwrap();
            assert_eq!(
                serde_json::from_str::<VmStatus>(&text).unwrap(),
                sent,
                "{text}"
            );
        }
        // An older VM process says nothing about a drive.
        let old = r#"{"name":"vm","state":"running","pid":1,"started_at_unix":2,"control_clients":1,"serial_clients":0}"#;
        assert_eq!(serde_json::from_str::<VmStatus>(old).unwrap().cdrom, None);
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        assert_eq!(
            encode(&Request::Hello { version: 1 }),
            b"{\"type\":\"hello\",\"version\":1}\n"
        );
        assert_eq!(encode(&Request::ShutDown), b"{\"type\":\"shut-down\"}\n");
        assert_eq!(
            serde_json::from_str::<Request>("{\"type\":\"attach-serial\"}").unwrap(),
            Request::AttachSerial
        );
        assert!(serde_json::from_str::<Request>("{\"type\":\"format-disk\"}").is_err());
        // Fields a request does not have are ignored (room for additions).
        assert_eq!(
            serde_json::from_str::<Request>("{\"type\":\"pause\",\"x\":1}").unwrap(),
            Request::Pause
        );
        // The CD-ROM requests; `force` may be left out.
        assert_eq!(
            encode(&Request::Insert {
                image: "/isos/d.iso".into()
            }),
            b"{\"type\":\"insert\",\"image\":\"/isos/d.iso\"}\n"
        );
        assert_eq!(
            serde_json::from_str::<Request>("{\"type\":\"eject\"}").unwrap(),
            Request::Eject { force: false }
        );
        assert_eq!(
            encode(&Request::Eject { force: true }),
            b"{\"type\":\"eject\",\"force\":true}\n"
        );
        // Input: a batch of events.
        assert_eq!(
            encode(&Request::Input {
                events: vec![crate::input::InputEvent::press(crate::input::KeyCode::Enter)]
            }),
            b"{\"type\":\"input\",\"events\":[{\"type\":\"key\",\"key\":\"Enter\",\"pressed\":true}]}\n"
        );
        assert!(
            serde_json::from_str::<Request>(
                "{\"type\":\"input\",\"events\":[{\"type\":\"key\",\"key\":\"Nope\",\"pressed\":true}]}"
            )
            .is_err()
        );
    }

    #[test]
    fn lines_are_bounded() {
        let mut input = std::io::BufReader::with_capacity(4, &b"abc\ndefghij\nk"[..]);
        assert_eq!(
            read_line(&mut input, 5).unwrap(),
            Line::Text(b"abc".to_vec())
        );
        assert_eq!(read_line(&mut input, 5).unwrap(), Line::TooLong);
        let mut input = std::io::BufReader::new(&b"k"[..]);
        assert_eq!(read_line(&mut input, 5).unwrap(), Line::End);
    }
}
