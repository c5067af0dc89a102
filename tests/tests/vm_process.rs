//! One process per VM, on the host's `/dev/kvm` with the hand-made guest
//! (`vivarium_e2e::handmade`): `vivarium start` detaches a VM process that outlives it; the
//! CLI drives it through its control socket (status, console, pause, resume, stop); the
//! library stays consistent when the process is killed; the protocol shrugs off bad clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vivarium_e2e::handmade::BANNER;
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_handmade_vm, kvm_usable, process_alive, read_text, status,
    wait_for_serial, wait_for_vm_log, wait_until,
};
use vivarium_e2e::wait;

const WAIT: Duration = Duration::from_secs(20);

/// Runs `vivarium console NAME` with `input` on a pipe, keeps the pipe open until the console
/// has shown every one of `expected` (at most [`WAIT`]: the guest answers at its own pace),
/// then closes it; returns what the console printed.
fn console_with_input(
    library: &TempLibrary,
    name: &str,
    input: &[u8],
    expected: &[&str],
) -> String {
    let mut child = library
        .command(&["console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("console starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let shown = Arc::clone(&shown);
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let text = || String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    wait::poll(
        &format!("{expected:?} on `vivarium console {name}`"),
        WAIT,
        || match wait::missing(&text(), expected) {
            None => Ok(()),
            Some(absent) => Err(format!(
                "no {absent:?}; the console printed:\n{}",
                wait::tail(&text())
            )),
        },
    );
    drop(stdin);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(status.success(), "console failed: {stderr}");
    text()
}

fn pid_of(library: &TempLibrary, name: &str) -> u32 {
    let status = status(library, name);
    status["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {status}")) as u32
}

fn state_in_list(library: &TempLibrary, name: &str) -> Value {
    library
        .json(&["list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["name"] == name)
        .cloned()
        .expect("the VM is listed")
}

#[test]
fn start_console_pause_resume_and_power_off_through_the_cli() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "hm");
    let _guard = PowerOffOnDrop::new(&library, "hm");

    // `start` returns once the VM answers; the VM outlives it.
    let started = library.json(&["start", "hm"]);
    let pid = started["pid"].as_u64().unwrap() as u32;
    assert!(
        process_alive(pid),
        "the VM process runs after `start` exited"
    );
    assert_eq!(status(&library, "hm")["state"], "running");
    // Another process (a fresh `vivarium list`) sees it running, with its pid.
    let listed = state_in_list(&library, "hm");
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["pid"], pid);

    // A second start is refused clearly, and the running VM is untouched.
    let refused = library.fails(6, &["start", "hm"]);
    assert!(refused.contains("already running"), "{refused}");
    assert_eq!(pid_of(&library, "hm"), pid);

    // The console shows the banner (from the backlog once the guest has printed it) and the
    // guest echoes input from a pipe.
    wait_for_serial(&library, "hm", BANNER, WAIT);
    console_with_input(
        &library,
        "hm",
        b"ping-from-a-pipe\r\n",
        &[BANNER, "ping-from-a-pipe"],
    );

    // Pause and resume show in the status.
    library.ok(&["pause", "hm"]);
    assert_eq!(status(&library, "hm")["state"], "paused");
    // A paused guest cannot hear the power button: refused with a reason.
    let refused = library.fails(6, &["stop", "hm"]);
    assert!(refused.contains("paused"), "{refused}");
    library.ok(&["resume", "hm"]);
    assert_eq!(status(&library, "hm")["state"], "running");

    // The hand-made guest ignores the power button: `stop` gives up after its timeout with
    // its own exit code, and says what to do.
    let timed_out = library.fails(12, &["stop", "--timeout", "1", "hm"]);
    assert!(timed_out.contains("stop --force"), "{timed_out}");
    assert_eq!(status(&library, "hm")["state"], "shutting-down");

    // Power off: the process ends, the socket goes, the run is recorded.
    let socket = vivarium_core::control::socket_path(&core_library(&library), "hm");
    assert!(socket.exists());
    library.ok(&["stop", "--force", "hm"]);
    wait_until("the VM process to end", WAIT, || !process_alive(pid));
    assert!(!socket.exists(), "the socket was removed");
    let stopped = status(&library, "hm");
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["last_run"]["exit"], "powered-off", "{stopped}");
    assert!(
        stopped["last_run"]["ended_at_unix"].as_u64()
            >= stopped["last_run"]["started_at_unix"].as_u64()
    );
    let bundle = library.bundle("hm");
    assert!(read_text(&bundle.join("logs/serial.log")).contains(BANNER));
    let vm_log = read_text(&bundle.join("logs/vm.log"));
    assert!(vm_log.contains("powered-off"), "{vm_log}");
    // Commands that need a running VM say it is not running.
    let not_running = library.fails(11, &["pause", "hm"]);
    assert!(not_running.contains("not running"), "{not_running}");

    // The guest powers itself off through ACPI when it reads a `q`.
    library.ok(&["start", "hm"]);
    let pid = pid_of(&library, "hm");
    wait_for_serial(&library, "hm", BANNER, WAIT);
    console_with_input(&library, "hm", b"q", &[]);
    wait_until("the guest's own power-off", WAIT, || !process_alive(pid));
    assert_eq!(status(&library, "hm")["last_run"]["exit"], "powered-off");
}

#[test]
fn a_killed_vm_process_shows_as_killed_and_starts_again() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "victim");
    let _guard = PowerOffOnDrop::new(&library, "victim");
    library.ok(&["start", "victim"]);
    let pid = pid_of(&library, "victim");
    // SAFETY: kill only sends a signal.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_until("the killed process to die", WAIT, || !process_alive(pid));

    let listed = state_in_list(&library, "victim");
    assert_eq!(listed["state"], "stopped", "{listed}");
    assert_eq!(listed["last_run"]["exit"], "killed", "{listed}");
    let socket = vivarium_core::control::socket_path(&core_library(&library), "victim");
    assert!(!socket.exists(), "the stale socket was cleaned up");
    // The library is consistent: the VM can be changed and started again.
    library.ok(&["set", "victim", "--notes", "survived a kill -9"]);
    library.ok(&["start", "victim"]);
    assert_eq!(status(&library, "victim")["state"], "running");
    library.ok(&["stop", "--force", "victim"]);
    assert_eq!(
        status(&library, "victim")["last_run"]["exit"],
        "powered-off"
    );
}

/// A VM started from one environment (a desktop session's `XDG_RUNTIME_DIR`) is seen as
/// running and stopped from a shell whose runtime folder differs or is unset; killed, it
/// leaves no display file or socket behind in the folder it used.
#[test]
fn a_vm_is_found_and_stopped_from_another_environment_and_a_kill_leaves_no_files() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "desk");
    let _guard = PowerOffOnDrop::new(&library, "desk");
    let runtime = library.scratch().join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    let in_env = |args: &[&str], runtime: Option<&std::path::Path>| {
        let mut cmd = library.command(args);
        match runtime {
            Some(dir) => cmd.env("XDG_RUNTIME_DIR", dir),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        let out = cmd.output().expect("vivarium runs");
        assert!(
            out.status.success(),
            "vivarium {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    in_env(&["start", "desk"], Some(&runtime));
    let status_from = |runtime: Option<&std::path::Path>| -> Value {
        serde_json::from_str(&in_env(&["--json", "status", "desk"], runtime)).unwrap()
    };
    assert_eq!(
        status_from(None)["state"],
        "running",
        "without a runtime folder"
    );
    let other = library.scratch().join("other-runtime");
    std::fs::create_dir_all(&other).unwrap();
    assert_eq!(
        status_from(Some(&other))["state"],
        "running",
        "with another one"
    );
    in_env(&["stop", "--force", "desk"], None);
    assert_eq!(status_from(Some(&other))["last_run"]["exit"], "powered-off");

    // Killed: its files in the runtime folder it used go at the next look.
    in_env(&["start", "desk"], Some(&runtime));
    let files = || -> Vec<String> {
        std::fs::read_dir(runtime.join("vivarium"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        !files().is_empty(),
        "the VM's socket is in its runtime folder"
    );
    let pid = pid_of(&library, "desk");
    // SAFETY: kill only sends a signal.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    wait_until("the killed process to die", WAIT, || !process_alive(pid));
    assert_eq!(status_from(None)["last_run"]["exit"], "killed");
    assert_eq!(files(), Vec::<String>::new(), "nothing left behind");
}

/// The VM process cannot gain privileges and writes no core dump (its memory is the guest's).
#[test]
fn the_vm_process_has_no_new_privileges_and_no_core_dumps() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "tight");
    let _guard = PowerOffOnDrop::new(&library, "tight");
    library.ok(&["start", "tight"]);
    let pid = pid_of(&library, "tight");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_default();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    library.ok(&["stop", "--force", "tight"]);
}

#[test]
fn a_vm_that_cannot_start_reports_the_reason_from_its_process() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "broken-kernel");
    // The kernel disappears after the VM was set up to boot it.
    let doomed = library.scratch().join("gone.elf");
    vivarium_e2e::handmade::write_kernel(&doomed).unwrap();
    library.ok(&["set", "broken-kernel", "--kernel", doomed.to_str().unwrap()]);
    std::fs::remove_file(&doomed).unwrap();
    let error = library.fails(5, &["start", "broken-kernel"]);
    assert!(
        error.contains("gone.elf") && error.contains("does not exist"),
        "{error}"
    );
    let stopped = status(&library, "broken-kernel");
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(stopped["last_run"]["exit"], "failed", "{stopped}");
    assert!(
        stopped["last_run"]["detail"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
}

/// A raw protocol connection.
struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(socket: &std::path::Path) -> Raw {
        let writer = UnixStream::connect(socket).expect("connect");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Raw {
            reader: BufReader::new(writer.try_clone().unwrap()),
            writer,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
    }

    /// Whether the VM process closed the connection (end of stream, or reset because this
    /// side had sent more than it read). A connection left open times out instead.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest.is_empty(),
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    fn hello(socket: &std::path::Path) -> Raw {
        let mut raw = Raw::connect(socket);
        raw.send(b"{\"type\":\"hello\",\"version\":1}\n");
        assert_eq!(raw.reply()["type"], "hello");
        raw
    }
}

#[test]
fn bad_clients_get_errors_and_never_disturb_the_vm() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "sturdy");
    let _guard = PowerOffOnDrop::new(&library, "sturdy");
    library.ok(&["start", "sturdy"]);
    let pid = pid_of(&library, "sturdy");
    // The consoles below find the banner in the backlog once the guest has printed it.
    wait_for_serial(&library, "sturdy", BANNER, WAIT);
    let socket = vivarium_core::control::socket_path(&core_library(&library), "sturdy");

    // Garbage before the handshake: an error, then the connection closes.
    let mut raw = Raw::connect(&socket);
    raw.send(b"GET / HTTP/1.1\r\n\r\n");
    let reply = raw.reply();
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "hello-first");
    assert!(raw.closed());

    // Another protocol version: a clear error with the VM's version.
    let mut raw = Raw::connect(&socket);
    raw.send(b"{\"type\":\"hello\",\"version\":999}\n");
    let reply = raw.reply();
    assert_eq!(reply["code"], "version-mismatch");
    assert_eq!(reply["version"], 1);

    // After the handshake: garbage, unknown types and wrong shapes get errors, and the same
    // connection still works.
    let mut raw = Raw::hello(&socket);
    for bad in [
        &b"{{{not json\n"[..],
        b"{\"type\":\"format-disk\"}\n",
        b"{\"no-type\":1}\n",
        b"[1,2,3]\n",
        b"\xff\xfe\n",
        b"\n",
    ] {
        raw.send(bad);
        let reply = raw.reply();
        assert_eq!(reply["type"], "error", "{}", String::from_utf8_lossy(bad));
        assert_eq!(reply["code"], "bad-message");
    }
    raw.send(b"{\"type\":\"status\"}\n");
    assert_eq!(raw.reply()["status"]["state"], "running");
    drop(raw);

    // A huge line: an error, and that connection ends.
    let mut huge = Raw::hello(&socket);
    let blob = vec![b'x'; 200 * 1024];
    let _ = huge.writer.write_all(&blob);
    let reply = huge.reply();
    assert_eq!(reply["code"], "too-long");
    assert!(huge.closed());

    // Clients that vanish mid-message, right after attaching, and mid-stream.
    let mut partial = Raw::hello(&socket);
    partial.send(b"{\"type\":\"sta");
    drop(partial);
    let mut attached = Raw::hello(&socket);
    attached.send(b"{\"type\":\"attach-serial\"}\n");
    drop(attached);
    let mut streaming = Raw::hello(&socket);
    streaming.send(b"{\"type\":\"attach-serial\"}\n");
    assert_eq!(streaming.reply()["type"], "serial-attached");
    streaming.send(b"abc");
    let mut some = [0u8; 8];
    let _ = streaming.reader.read(&mut some);
    drop(streaming);

    // Several clients at once: two consoles and a control connection.
    let client_library = core_library(&library);
    let mut one = vivarium_core::control::ControlClient::connect(&client_library, "sturdy")
        .unwrap()
        .attach_serial()
        .unwrap();
    let two = vivarium_core::control::ControlClient::connect(&client_library, "sturdy")
        .unwrap()
        .attach_serial()
        .unwrap();
    one.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut backlog = vec![0u8; one.backlog_bytes() as usize];
    one.read_exact(&mut backlog).unwrap();
    assert!(String::from_utf8_lossy(&backlog).contains(BANNER));
    two.input().unwrap().write_all(b"from-two").unwrap();
    let mut echoed = Vec::new();
    while !String::from_utf8_lossy(&echoed).contains("from-two") {
        let mut buf = [0u8; 64];
        // The read times out after 10 s (set above): the wait is bounded.
        let n = one.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no echo of from-two on the other console ({e}); it showed {:?}",
                String::from_utf8_lossy(&echoed)
            )
        });
        assert!(n > 0, "the other console ended before the echo");
        echoed.extend_from_slice(&buf[..n]);
    }
    drop(one);
    drop(two);

    // The VM kept running, and every connection above is gone.
    assert!(process_alive(pid));
    assert_eq!(pid_of(&library, "sturdy"), pid);
    let mut client =
        vivarium_core::control::ControlClient::connect(&client_library, "sturdy").unwrap();
    let mut last = None;
    let cleaned = (0..200).any(|_| {
        let status = client.status().unwrap();
        let clean = status.serial_clients == 0 && status.control_clients == 1;
        last = Some(status);
        clean || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(cleaned, "clients left over: {last:?}");
    assert_eq!(client.status().unwrap().state.as_str(), "running");
    drop(client);
    library.ok(&["stop", "--force", "sturdy"]);
}

/// The CD-ROM drive of a running VM: `eject` and `insert` reach it through the control
/// socket (the guest side is covered by the devices' unit tests and the rig); a VM without a
/// drive and a bad image are refused with a reason, and nothing changes.
#[test]
fn cdrom_eject_and_insert_while_running() {
    if !kvm_usable("vm_process") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "cd");
    let _guard = PowerOffOnDrop::new(&library, "cd");
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.iso");
    let second = dir.path().join("second.iso");
    let empty = dir.path().join("empty.iso");
    std::fs::write(&first, vec![1u8; 8192]).unwrap();
    std::fs::write(&second, vec![2u8; 4096]).unwrap();
    std::fs::write(&empty, b"").unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // Without a drive.
    library.ok(&["start", "cd"]);
    let refused = library.fails(6, &["eject", "cd"]);
    assert!(refused.contains("no CD-ROM drive"), "{refused}");
    library.ok(&["stop", "--force", "cd"]);
    wait_until("the VM to stop", WAIT, || {
        status(&library, "cd")["state"] == "stopped"
    });

    // With one: eject (twice: an empty drive stays empty), insert, bad images refused.
    library.ok(&["set", "cd", "--iso", &path(&first)]);
    library.ok(&["start", "cd"]);
    library.ok(&["eject", "cd"]);
    library.ok(&["eject", "cd", "--force"]);
    let missing = library.fails(5, &["insert", "cd", &path(&dir.path().join("nope.iso"))]);
    assert!(missing.contains("does not exist"), "{missing}");
    let refused = library.fails(6, &["insert", "cd", &path(&empty)]);
    assert!(refused.contains("is empty"), "{refused}");
    let done = library.json(&["insert", "cd", &path(&second)]);
    assert_eq!(done["done"], "CD-ROM image inserted", "{done}");
    assert_eq!(status(&library, "cd")["state"], "running");
    library.ok(&["stop", "--force", "cd"]);
    // The VM's log tells what happened.
    wait_for_vm_log(&library, "cd", &["eject the CD-ROM", "second.iso"], WAIT);
}
