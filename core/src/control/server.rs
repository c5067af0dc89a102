//! The VM process's control socket: one thread accepts connections, one thread serves each.
//!
//! Nothing a client sends can disturb the VM: a malformed, unknown or oversized message gets
//! an error reply (an oversized one also ends that connection), a client that disconnects at
//! any point only ends its own thread, and a slow console client is dropped rather than
//! slowing the guest (see [`super::serial_hub`]).

use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ControlError;
use super::fdpass::FileReader;
use super::protocol::{
    Line, MAX_LINE, PROTOCOL_VERSION, Reply, Request, RunState, VmStatus, encode, read_line,
};
use super::serial_hub::SerialHub;
use crate::backend::{ControlRequest, RunningMachine};
use crate::logfile::RotatingLog;

/// How long console input may wait for room in the guest's serial port before it is dropped.
const INPUT_STALL_LIMIT: Duration = Duration::from_secs(10);

/// What the server serves.
pub struct ServedVm {
    /// The VM's name.
    pub name: String,
    /// When the VM process started (seconds since the Unix epoch).
    pub started_at_unix: u64,
    /// The machine.
    pub machine: Arc<dyn RunningMachine>,
    /// Its serial console.
    pub serial: SerialHub,
    /// The VM process's log (`logs/vm.log`), where requests are noted.
    pub log: Option<Arc<Mutex<RotatingLog>>>,
    /// The CD-ROM drive at start: `None` without one, else the image in it.
    pub cdrom: Option<Option<PathBuf>>,
    /// The screen, handed to viewers that ask (`None`: the VM has no display).
    pub display: Option<Arc<crate::display::SharedDisplay>>,
}

struct Shared {
    vm: ServedVm,
    state: Mutex<RunState>,
    /// The CD-ROM drive's medium now (changed by eject and insert).
    cdrom: Mutex<Option<Option<PathBuf>>>,
    control_clients: AtomicU32,
    closing: AtomicBool,
}

impl Shared {
    fn note(&self, text: &str) {
        if let Some(log) = &self.vm.log {
            let _ = log.lock().unwrap_or_else(|e| e.into_inner()).line(text);
        }
    }

    fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: RunState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    fn status(&self) -> VmStatus {
        VmStatus {
            name: self.vm.name.clone(),
            state: self.state(),
            pid: std::process::id(),
            started_at_unix: self.vm.started_at_unix,
            control_clients: self.control_clients.load(Ordering::SeqCst),
            serial_clients: self.vm.serial.clients() as u32,
            cdrom: self
                .cdrom
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .map(|image| super::protocol::CdromDrive { image }),
        }
    }
}

/// A listening control socket. Dropping it stops accepting and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `path` (its folder is created with mode 0700, the socket gets mode 0600; a
    /// file already there is removed: the caller holds the bundle lock, so it is stale).
    pub fn bind(path: &Path, vm: ServedVm) -> Result<ControlServer, ControlError> {
        let io = |context: String| move |source| ControlError::Io { context, source };
        if let Some(dir) = path.parent() {
            crate::fsutil::ensure_private_dir(dir).map_err(io(format!(
                "could not create `{}` (mode 0700)",
                dir.display()
            )))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("could not remove `{}`", path.display()))(e)),
        }
        let listener = UnixListener::bind(path)
            .map_err(io(format!("could not listen on `{}`", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("could not restrict `{}`", path.display())))?;
        let shared = Arc::new(Shared {
            cdrom: Mutex::new(vm.cdrom.clone()),
            vm,
            state: Mutex::new(RunState::Running),
            control_clients: AtomicU32::new(0),
            closing: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("control-accept".into())
            .spawn(move || {
                vivarium_threads::started(vivarium_threads::ThreadKind::Control);
                accept_loop(listener, accepting)
            })
            .map_err(io("could not start the control thread".into()))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What status reports now.
    pub fn state(&self) -> RunState {
        self.shared.state()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees `closing`, then remove the socket file.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.closing.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors or similar: back off instead of spinning.
                tracing::warn!("control socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let serving = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            // (A client thread keeps the acceptor's filter: it is of the same kind.)
            .spawn(move || serve_client(stream, &serving));
        if let Err(e) = spawned {
            tracing::warn!("control socket: could not serve a client: {e}");
        }
    }
}

/// Counts a connection while it lives.
struct ClientCount<'a>(&'a AtomicU32);

impl<'a> ClientCount<'a> {
    fn new(count: &'a AtomicU32) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        ClientCount(count)
    }
}

impl Drop for ClientCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn send(stream: &mut UnixStream, reply: &Reply) -> bool {
    stream.write_all(&encode(reply)).is_ok()
}

/// Answers a display request: the reply, with a new descriptor of the display's sealed memory
/// attached.
fn send_display(stream: &mut UnixStream, shared: &Shared) -> bool {
    let Some(display) = &shared.vm.display else {
        return send(
            stream,
            &Reply::error(
                "refused",
                "this VM has no display (its settings say `none`)",
            ),
        );
    };
    match display.try_clone_file() {
        Ok(file) => {
            let reply = Reply::Display {
                vram_size: display.vram_size(),
            };
            super::fdpass::send_with_file(stream, &encode(&reply), &file).is_ok()
        }
        Err(e) => send(
            stream,
            &Reply::error("refused", format!("the display cannot be shared: {e}")),
        ),
    }
}

fn serve_client(stream: UnixStream, shared: &Shared) {
    let _count = ClientCount::new(&shared.control_clients);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(FileReader::new(read_half));
    let mut writer = stream;
    // The handshake: the first line must be a hello of our version.
    let first = match read_line(&mut reader, MAX_LINE) {
        Ok(Line::Text(line)) => line,
        Ok(Line::TooLong) => {
            send(&mut writer, &Reply::error("too-long", "message too long"));
            return;
        }
        Ok(Line::End) | Err(_) => return,
    };
    match serde_json::from_slice::<Request>(&first) {
        Ok(Request::Hello { version }) if version == PROTOCOL_VERSION => {
            let hello = Reply::Hello {
                version: PROTOCOL_VERSION,
                vm: shared.vm.name.clone(),
                pid: std::process::id(),
            };
            if !send(&mut writer, &hello) {
                return;
            }
        }
        Ok(Request::Hello { version }) => {
            send(
                &mut writer,
                &Reply::error(
                    "version-mismatch",
                    format!("this VM process speaks protocol {PROTOCOL_VERSION}, not {version}"),
                ),
            );
            return;
        }
        _ => {
            send(
                &mut writer,
                &Reply::error(
                    "hello-first",
                    format!(
                        "the first message must be {{\"type\":\"hello\",\"version\":{PROTOCOL_VERSION}}}"
                    ),
                ),
            );
            return;
        }
    }
    loop {
        let line = match read_line(&mut reader, MAX_LINE) {
            Ok(Line::Text(line)) => line,
            Ok(Line::TooLong) => {
                send(
                    &mut writer,
                    &Reply::error(
                        "too-long",
                        format!("message longer than {MAX_LINE} bytes; closing"),
                    ),
                );
                return;
            }
            Ok(Line::End) | Err(_) => return,
        };
        let reply = match serde_json::from_slice::<Request>(&line) {
            Err(e) => Reply::error(
                "bad-message",
                format!("not a request this VM understands: {e}"),
            ),
            Ok(Request::AttachSerial) => {
                serial_session(reader, writer, shared);
                return;
            }
            Ok(Request::Display) => {
                if !send_display(&mut writer, shared) {
                    return;
                }
                continue;
            }
            Ok(request) => {
                let reply = handle(request, reader.get_mut(), shared);
                // A file is for the request it came with: none is kept for a later one.
                while reader.get_mut().take_file().is_some() {}
                reply
            }
        };
        if !send(&mut writer, &reply) {
            return;
        }
    }
}

/// Answers `request`; `files` holds the files that came with it (an inserted disc).
fn handle(request: Request, files: &mut FileReader, shared: &Shared) -> Reply {
    let machine = &shared.vm.machine;
    let (control, after) = match request {
        Request::Status => {
            return Reply::Status {
                status: shared.status(),
            };
        }
        Request::Hello { .. } => {
            return Reply::error("bad-message", "hello was already said");
        }
        Request::AttachSerial | Request::Display => {
            unreachable!("handled by the connection loop")
        }
        Request::Eject { force } => {
            shared.note(&format!("control: eject the CD-ROM (force: {force})"));
            return cdrom_reply(machine.change_cdrom(None, force), None, shared);
        }
        Request::Insert { image } => {
            let file = files.take_file();
            if !image.is_absolute() {
                return Reply::error(
                    "bad-message",
                    format!("the image path `{}` is not absolute", image.display()),
                );
            }
            let Some(file) = file else {
                return Reply::error(
                    "bad-message",
                    "an insert brings the image as an open file (the VM process may not open \
                     files itself): use `vivarium insert` or the app",
                );
            };
            shared.note(&format!(
                "control: insert `{}` in the CD-ROM",
                image.display()
            ));
            let medium = crate::backend::CdromMedium {
                file,
                path: image.clone(),
            };
            let result = machine.change_cdrom(Some(medium), false);
            return cdrom_reply(result, Some(image), shared);
        }
        Request::Input { events } => {
            // Not noted in the log: the app sends one request per key press.
            return match machine.send_input(&events) {
                Ok(()) => Reply::Ok,
                Err(e) => Reply::error("refused", e.to_string()),
            };
        }
        Request::Pause => (ControlRequest::Pause, Some(RunState::Paused)),
        Request::Resume => {
            let after = match shared.state() {
                RunState::Paused => RunState::Running,
                other => other,
            };
            (ControlRequest::Resume, Some(after))
        }
        Request::ShutDown => {
            if shared.state() == RunState::Paused {
                return Reply::error(
                    "refused",
                    "the VM is paused and cannot react to the power button: resume it first, \
                     or power it off",
                );
            }
            (ControlRequest::PowerButton, Some(RunState::ShuttingDown))
        }
        Request::PowerOff => (ControlRequest::PowerOff, None),
        Request::Reset => {
            let after = match shared.state() {
                RunState::ShuttingDown => RunState::Running,
                other => other,
            };
            (ControlRequest::Reset, Some(after))
        }
    };
    shared.note(&format!("control: {control:?}"));
    match machine.request(control) {
        Ok(()) => {
            if let Some(state) = after {
                shared.set_state(state);
            }
            Reply::Ok
        }
        Err(e) => {
            shared.note(&format!("control: {control:?} failed: {e}"));
            Reply::error("refused", e.to_string())
        }
    }
}

/// The reply to a change of the CD-ROM's medium to `medium`, recorded when it worked.
fn cdrom_reply(
    result: Result<(), crate::backend::BackendError>,
    medium: Option<PathBuf>,
    shared: &Shared,
) -> Reply {
    match result {
        Ok(()) => {
            let mut cdrom = shared.cdrom.lock().unwrap_or_else(|e| e.into_inner());
            if cdrom.is_some() {
                *cdrom = Some(medium);
            }
            Reply::Ok
        }
        Err(e) => {
            shared.note(&format!("control: CD-ROM change refused: {e}"));
            Reply::error("refused", e.to_string())
        }
    }
}

/// Streams serial output to the client and its input to the guest until either side ends.
fn serial_session(mut reader: BufReader<FileReader>, mut writer: UnixStream, shared: &Shared) {
    let hub = &shared.vm.serial;
    let (backlog, subscription) = hub.subscribe();
    let attached = Reply::SerialAttached {
        backlog_bytes: backlog.len() as u64,
    };
    if !send(&mut writer, &attached) || writer.write_all(&backlog).is_err() {
        hub.unsubscribe(subscription.id);
        return;
    }
    let id = subscription.id;
    let machine = Arc::clone(&shared.vm.machine);
    let input_hub = hub.clone();
    let input = std::thread::Builder::new()
        .name("serial-input".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !feed_guest(machine.as_ref(), &buf[..n]) {
                    break;
                }
            }
            // The client is gone (or the machine): end the output side too.
            input_hub.unsubscribe(id);
        });
    for chunk in subscription.output.iter() {
        if writer.write_all(&chunk).is_err() {
            break;
        }
    }
    hub.unsubscribe(id);
    let _ = writer.shutdown(std::net::Shutdown::Both);
    if let Ok(input) = input {
        let _ = input.join();
    }
}

/// Hands `bytes` to the guest's serial port, waiting for room as the guest reads. Returns
/// false when the machine has stopped.
fn feed_guest(machine: &dyn RunningMachine, mut bytes: &[u8]) -> bool {
    let mut last_progress = Instant::now();
    while !bytes.is_empty() {
        match machine.send_serial_input(bytes) {
            Ok(0) => {
                if last_progress.elapsed() > INPUT_STALL_LIMIT {
                    tracing::warn!(
                        "the guest did not read its serial port for {} s; {} bytes of console \
                         input dropped",
                        INPUT_STALL_LIMIT.as_secs(),
                        bytes.len()
                    );
                    return true;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(taken) => {
                bytes = &bytes[taken.min(bytes.len())..];
                last_progress = Instant::now();
            }
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Condvar;

    use super::*;
    use crate::backend::{BackendError, MachineExit};
    use crate::control::ControlClient;
    use crate::input::{InputEvent, KeyCode, MouseButtons};
    use crate::library::Library;

    /// A stand-in machine: records requests and echoes console input to its serial output.
    struct EchoMachine {
        requests: Mutex<Vec<ControlRequest>>,
        output: Mutex<Box<dyn Write + Send>>,
        ended: (Mutex<bool>, Condvar),
        input: Mutex<Vec<InputEvent>>,
    }

    impl RunningMachine for EchoMachine {
        fn request(&self, request: ControlRequest) -> Result<(), BackendError> {
            self.requests.lock().unwrap().push(request);
            if request == ControlRequest::PowerOff {
                *self.ended.0.lock().unwrap() = true;
                self.ended.1.notify_all();
            }
            Ok(())
        }
        fn wait(&self) -> MachineExit {
            let mut ended = self.ended.0.lock().unwrap();
            while !*ended {
                ended = self.ended.1.wait(ended).unwrap();
            }
            MachineExit::PoweredOff
        }
        fn send_serial_input(&self, bytes: &[u8]) -> Result<usize, BackendError> {
            let taken = bytes.len().min(3); // a small FIFO: the server must retry
            self.output
                .lock()
                .unwrap()
                .write_all(&bytes[..taken])
                .unwrap();
            Ok(taken)
        }
        fn send_input(&self, events: &[InputEvent]) -> Result<(), BackendError> {
            if *self.ended.0.lock().unwrap() {
                return Err(BackendError::Stopped);
            }
            self.input.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    #[test]
    fn requests_change_the_state_and_the_console_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path()).unwrap();
        let hub = SerialHub::new(None, None);
        hub.sink().write_all(b"boot banner\n").unwrap();
        let machine = Arc::new(EchoMachine {
            requests: Mutex::new(Vec::new()),
            output: Mutex::new(hub.sink()),
            ended: (Mutex::new(false), Condvar::new()),
            input: Mutex::new(Vec::new()),
        });
        let path = crate::control::socket_path(&library, "fake");
        let server = ControlServer::bind(
            &path,
            ServedVm {
                name: "fake".into(),
                started_at_unix: 7,
                machine: machine.clone(),
                serial: hub.clone(),
                log: None,
                cdrom: None,
                display: Some(Arc::new(
                    crate::display::SharedDisplay::create_sealed("fake-display", 1 << 20).unwrap(),
                )),
            },
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut client = ControlClient::connect(&library, "fake").unwrap();
        assert_eq!(client.pid(), std::process::id());
        client.pause().unwrap();
        assert_eq!(client.status().unwrap().state, RunState::Paused);
        let refused = client.shut_down().unwrap_err().to_string();
        assert!(refused.contains("paused"), "{refused}");
        client.resume().unwrap();
        client.shut_down().unwrap();
        assert_eq!(client.status().unwrap().state, RunState::ShuttingDown);
        client.reset().unwrap();
        assert_eq!(client.status().unwrap().state, RunState::Running);

        let mut console = ControlClient::connect(&library, "fake")
            .unwrap()
            .attach_serial()
            .unwrap();
        console
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        console.input().unwrap().write_all(b"typed text").unwrap();
        let mut seen = Vec::new();
        while !seen.ends_with(b"typed text") {
            let mut buf = [0u8; 64];
            let n = console.read(&mut buf).unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(
            seen.starts_with(b"boot banner\n"),
            "the backlog comes first"
        );
        assert_eq!(client.status().unwrap().serial_clients, 1);
        drop(console);

        // The screen is handed over as sealed shared memory: what the VM side draws, the
        // viewer sees.
        let view = client.open_display().unwrap();
        assert_eq!(view.vram_size(), 1 << 20);
        assert!(view.path().is_none());
        view.write_vram(0, b"drawn").unwrap();
        let mut again = client.open_display().unwrap();
        let mut seen = [0u8; 5];
        again.read_vram(0, &mut seen).unwrap();
        assert_eq!(&seen, b"drawn");
        again = client.open_display().unwrap();
        drop((view, again));

        // CD-ROM changes reach the machine, which has no drive and says so. The client opens
        // the image itself (a missing one never reaches the VM process) and hands it over.
        let refused = client.eject_cdrom(false).unwrap_err().to_string();
        assert!(refused.contains("no CD-ROM drive"), "{refused}");
        let missing = client
            .insert_cdrom(std::path::Path::new("/no/such/d.iso"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("could not open"), "{missing}");
        let image = tempfile::NamedTempFile::new().unwrap();
        let refused = client.insert_cdrom(image.path()).unwrap_err().to_string();
        assert!(refused.contains("no CD-ROM drive"), "{refused}");
        // A request naming an image without bringing it open is refused.
        {
            use std::io::{BufRead, Write};
            let mut raw = UnixStream::connect(&path).unwrap();
            raw.write_all(
                b"{\"type\":\"hello\",\"version\":1}\n{\"type\":\"insert\",\"image\":\"/d.iso\"}\n",
            )
            .unwrap();
            let mut lines = std::io::BufReader::new(raw).lines();
            let _hello = lines.next().unwrap().unwrap();
            let reply = lines.next().unwrap().unwrap();
            assert!(reply.contains("open file"), "{reply}");
        }
        assert_eq!(client.status().unwrap().cdrom, None, "still no drive");

        // Input arrives in order; a batch with an event the VM process does not know is a
        // bad message that changes nothing and leaves the connection open.
        let typed = crate::input::keys_for_text("Hi\n").unwrap();
        client.send_input(&typed).unwrap();
        let click = InputEvent::PointerMotion {
            dx: 3,
            dy: -2,
            wheel: 0,
            buttons: MouseButtons {
                left: true,
                ..MouseButtons::default()
            },
        };
        client.send_input(&[click]).unwrap();
        {
            let mut raw = UnixStream::connect(&path).unwrap();
            raw.write_all(b"{\"type\":\"hello\",\"version\":1}\n")
                .unwrap();
            raw.write_all(
                b"{\"type\":\"input\",\"events\":[{\"type\":\"key\",\"key\":\"KeyA\",\"pressed\":true},\
                  {\"type\":\"key\",\"key\":\"NoSuchKey\",\"pressed\":true}]}\n",
            )
            .unwrap();
            raw.write_all(b"{\"type\":\"input\",\"events\":[{\"type\":\"teleport\"}]}\n")
                .unwrap();
            raw.write_all(b"{\"type\":\"input\",\"events\":[]}\n")
                .unwrap();
            let mut replies = BufReader::new(raw);
            let mut lines = Vec::new();
            for _ in 0..4 {
                match read_line(&mut replies, MAX_LINE).unwrap() {
                    Line::Text(line) => lines.push(String::from_utf8(line).unwrap()),
                    other => panic!("{other:?}"),
                }
            }
            assert!(lines[0].contains("\"hello\""), "{lines:?}");
            assert!(lines[1].contains("bad-message"), "{lines:?}");
            assert!(lines[1].contains("NoSuchKey"), "{lines:?}");
            assert!(lines[2].contains("bad-message"), "{lines:?}");
            assert_eq!(lines[3], "{\"type\":\"ok\"}", "{lines:?}");
        }
        let mut expected = typed.clone();
        expected.push(click);
        assert_eq!(*machine.input.lock().unwrap(), expected);
        assert_eq!(typed[0], InputEvent::press(KeyCode::ShiftLeft));

        client.power_off().unwrap();
        assert_eq!(machine.wait(), MachineExit::PoweredOff);
        // Input to a machine that has stopped is refused, and says so.
        let refused = client.send_input(&typed).unwrap_err().to_string();
        assert!(refused.contains("stopped"), "{refused}");
        assert_eq!(
            *machine.requests.lock().unwrap(),
            [
                ControlRequest::Pause,
                ControlRequest::Resume,
                ControlRequest::PowerButton,
                ControlRequest::Reset,
                ControlRequest::PowerOff
            ]
        );
        drop(server);
        assert!(!path.exists(), "the socket is removed");
        assert!(matches!(
            ControlClient::connect(&library, "fake"),
            Err(ControlError::NotRunning(_))
        ));
    }
}
