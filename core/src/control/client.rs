//! The client side of the control protocol, used by the CLI and the desktop app.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use super::fdpass::FileReader;
use std::time::Duration;

use super::ControlError;
use super::protocol::{
    Line, MAX_LINE, PROTOCOL_VERSION, Reply, Request, VmStatus, encode, read_line,
};
use crate::input::InputEvent;
use crate::library::Library;

/// How long a request may take before the client gives up (a pause waits up to 5 s for the
/// vCPUs to stop).
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to a VM process's control socket.
pub struct ControlClient {
    name: String,
    pid: u32,
    reader: BufReader<FileReader>,
    writer: UnixStream,
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .finish()
    }
}

impl ControlClient {
    /// Connects to VM `name`'s process and says hello. Fails with
    /// [`ControlError::NotRunning`] when no VM process answers.
    pub fn connect(library: &Library, name: &str) -> Result<ControlClient, ControlError> {
        let path = super::RuntimePaths::of_running(library, name).socket;
        let stream = UnixStream::connect(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ControlError::NotRunning(name.to_string())
            }
            _ => ControlError::Io {
                context: format!("could not connect to `{}`", path.display()),
                source: e,
            },
        })?;
        let io = |context: &str| {
            let context = format!("{context} VM `{name}`'s control socket");
            move |source| ControlError::Io { context, source }
        };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(io("could not set a timeout on"))?;
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .map_err(io("could not set a timeout on"))?;
        super::fdpass::no_sigpipe(&stream);
        let reader = BufReader::new(FileReader::new(
            stream.try_clone().map_err(io("could not use"))?,
        ));
        let mut client = ControlClient {
            name: name.to_string(),
            pid: 0,
            reader,
            writer: stream,
        };
        match client.exchange(&Request::Hello {
            version: PROTOCOL_VERSION,
        })? {
            Reply::Hello { version, pid, .. } if version == PROTOCOL_VERSION => {
                client.pid = pid;
                Ok(client)
            }
            Reply::Hello { version, .. } | Reply::Error { version, .. }
                if version != PROTOCOL_VERSION =>
            {
                Err(ControlError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: version,
                })
            }
            other => Err(client.unexpected(&other)),
        }
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The VM process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn unexpected(&self, reply: &Reply) -> ControlError {
        ControlError::Protocol {
            name: self.name.clone(),
            what: format!("{reply:?}"),
        }
    }

    /// Sends one request and reads its reply (an error reply is returned as a reply).
    fn exchange(&mut self, request: &Request) -> Result<Reply, ControlError> {
        self.exchange_inner(request, None)
    }

    /// Like [`exchange`](Self::exchange), with `file` handed over along with the request.
    fn exchange_with_file(
        &mut self,
        request: &Request,
        file: &std::fs::File,
    ) -> Result<Reply, ControlError> {
        self.exchange_inner(request, Some(file))
    }

    fn exchange_inner(
        &mut self,
        request: &Request,
        file: Option<&std::fs::File>,
    ) -> Result<Reply, ControlError> {
        let lost = |source: std::io::Error| {
            if matches!(
                source.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            ) {
                ControlError::NotRunning(self.name.clone())
            } else {
                ControlError::Io {
                    context: format!("talking to VM `{}`", self.name),
                    source,
                }
            }
        };
        let bytes = encode(request);
        match file {
            Some(file) => super::fdpass::send_with_file(&mut self.writer, &bytes, file),
            None => super::fdpass::write_all_no_sigpipe(&self.writer, &bytes),
        }
        .map_err(lost)?;
        let line = match read_line(&mut self.reader, MAX_LINE).map_err(lost)? {
            Line::Text(line) => line,
            Line::End => return Err(ControlError::NotRunning(self.name.clone())),
            Line::TooLong => {
                return Err(ControlError::Protocol {
                    name: self.name.clone(),
                    what: "a reply longer than the protocol allows".into(),
                });
            }
        };
        serde_json::from_slice(&line).map_err(|e| ControlError::Protocol {
            name: self.name.clone(),
            what: format!("{e}: {}", String::from_utf8_lossy(&line)),
        })
    }

    /// Sends a request that is answered with `ok`.
    fn command(&mut self, request: Request) -> Result<(), ControlError> {
        match self.exchange(&request)? {
            Reply::Ok => Ok(()),
            Reply::Error { message, .. } => Err(ControlError::Refused {
                name: self.name.clone(),
                message,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The VM's status.
    pub fn status(&mut self) -> Result<VmStatus, ControlError> {
        match self.exchange(&Request::Status)? {
            Reply::Status { status } => Ok(status),
            Reply::Error { message, .. } => Err(ControlError::Refused {
                name: self.name.clone(),
                message,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Stops the vCPUs (memory and devices keep their state).
    pub fn pause(&mut self) -> Result<(), ControlError> {
        self.command(Request::Pause)
    }

    /// Continues a paused VM.
    pub fn resume(&mut self) -> Result<(), ControlError> {
        self.command(Request::Resume)
    }

    /// Presses the reset button.
    pub fn reset(&mut self) -> Result<(), ControlError> {
        self.command(Request::Reset)
    }

    /// Pulls the plug. Returns once the request is taken; the VM process ends shortly after.
    pub fn power_off(&mut self) -> Result<(), ControlError> {
        self.command(Request::PowerOff)
    }

    /// Presses the ACPI power button and returns; a guest that listens shuts down. Poll
    /// [`status`](Self::status) or [`super::live_state`] to see it end.
    pub fn shut_down(&mut self) -> Result<(), ControlError> {
        self.command(Request::ShutDown)
    }

    /// Ejects the medium of the VM's CD-ROM drive; `force` even if the guest locked it.
    pub fn eject_cdrom(&mut self, force: bool) -> Result<(), ControlError> {
        self.command(Request::Eject { force })
    }

    /// Inserts the image at `image` (an absolute path) in the VM's CD-ROM drive. The image
    /// is opened here, with this process's rights, and handed to the VM process as an open
    /// file (a confined VM process cannot open it itself).
    pub fn insert_cdrom(&mut self, image: &std::path::Path) -> Result<(), ControlError> {
        let file = std::fs::File::open(image).map_err(|source| ControlError::Io {
            context: format!("could not open `{}`", image.display()),
            source,
        })?;
        let request = Request::Insert {
            image: image.to_path_buf(),
        };
        self.exchange_with_file(&request, &file)
            .and_then(|reply| match reply {
                Reply::Ok => Ok(()),
                Reply::Error { message, .. } => Err(ControlError::Refused {
                    name: self.name.clone(),
                    message,
                }),
                other => Err(self.unexpected(&other)),
            })
    }

    /// Sends keyboard and mouse events to the guest, in order. Returns once the VM process
    /// has handed them to the guest's devices; events the guest cannot take now (its
    /// keyboard or mouse is off, or it has not read earlier input) are dropped there, as a
    /// real keyboard loses them.
    pub fn send_input(&mut self, events: &[InputEvent]) -> Result<(), ControlError> {
        self.command(Request::Input {
            events: events.to_vec(),
        })
    }

    /// The VM's screen, to view: the VM process hands over its display's shared memory, which
    /// is mapped here once it is known to be sealed against shrinking (so the VM process
    /// cannot crash this viewer). A VM without a display refuses.
    pub fn open_display(&mut self) -> Result<crate::display::SharedDisplay, ControlError> {
        // A file left over from an earlier reply is not this one's.
        while self.reader.get_mut().take_file().is_some() {}
        match self.exchange(&Request::Display)? {
            Reply::Display { .. } => {
                let file =
                    self.reader
                        .get_mut()
                        .take_file()
                        .ok_or_else(|| ControlError::Protocol {
                            name: self.name.clone(),
                            what: "a display reply without the display's memory".into(),
                        })?;
                let what = format!("the display of `{}`", self.name);
                crate::display::SharedDisplay::from_file(file, &what).map_err(|e| {
                    ControlError::Protocol {
                        name: self.name.clone(),
                        what: e.to_string(),
                    }
                })
            }
            Reply::Error { message, .. } => Err(ControlError::Refused {
                name: self.name.clone(),
                message,
            }),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Turns this connection into the VM's serial console.
    pub fn attach_serial(mut self) -> Result<SerialStream, ControlError> {
        match self.exchange(&Request::AttachSerial)? {
            Reply::SerialAttached { backlog_bytes } => {
                let _ = self.reader.get_ref().get_ref().set_read_timeout(None);
                let _ = self.writer.set_write_timeout(None);
                Ok(SerialStream {
                    backlog_bytes,
                    reader: self.reader,
                    writer: self.writer,
                })
            }
            Reply::Error { message, .. } => Err(ControlError::Refused {
                name: self.name.clone(),
                message,
            }),
            other => Err(self.unexpected(&other)),
        }
    }
}

/// A VM's serial console: reading gives the recent output backlog first, then live output,
/// and ends (returns 0) when the VM stops. Input goes through [`SerialStream::input`], which
/// another thread may own.
pub struct SerialStream {
    backlog_bytes: u64,
    reader: BufReader<FileReader>,
    writer: UnixStream,
}

impl SerialStream {
    /// How many bytes of earlier output come before the live output.
    pub fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes
    }

    /// A handle that sends bytes to the guest's serial port (usable from another thread).
    pub fn input(&self) -> std::io::Result<SerialInput> {
        Ok(SerialInput(self.writer.try_clone()?))
    }

    /// Waits at most `timeout` in each read (`None`: wait for ever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.reader.get_ref().get_ref().set_read_timeout(timeout)
    }
}

impl Read for SerialStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

/// Sends console input to a VM's serial port.
pub struct SerialInput(UnixStream);

impl SerialInput {
    /// Detaches from the console: ends the input and the output (a reader blocked on the
    /// [`SerialStream`] returns 0).
    pub fn detach(&self) -> std::io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Both)
    }
}

impl Write for SerialInput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        super::fdpass::write_all_no_sigpipe(&self.0, buf).map(|()| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
