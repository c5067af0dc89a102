//! The VM process's file-system confinement (issue 15): a process that confines itself exactly
//! as a VM process does for a given VM (`vivarium_vm::confine`, with the reach computed by the
//! same function from the same machine) can still use that VM's disks and bundle, and can
//! read its linked clone's base, but cannot open the user's SSH key, another VM's disk or
//! configuration, or create files outside its bundle.
//!
//! Landlock confines the thread that asks and what it starts afterwards, for good, so the
//! confined side runs in a child process: this test binary run again, with only the
//! `confined_probe` test, which reports each attempt on its standard output.

use std::path::{Path, PathBuf};
use std::process::Command;

use vivarium_core::backend::MachineSpec;
use vivarium_core::library::Library;
use vivarium_e2e::gate;
use vivarium_e2e::vivarium::TempLibrary;

/// Set for the child: the VM whose confinement it applies, and the files it tries.
const PROBE_VM: &str = "VIVARIUM_CONFINEMENT_PROBE_VM";
const PROBE_TRIES: &str = "VIVARIUM_CONFINEMENT_PROBE_TRIES";

/// What the child tries: `read` or `write` (open for writing) or `create` a path.
fn attempt(how: &str, path: &Path) -> String {
    use std::fs::OpenOptions;
    let result = match how {
        "read" => OpenOptions::new().read(true).open(path).map(drop),
        "write" => OpenOptions::new().write(true).open(path).map(drop),
        "create" => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map(drop),
        other => panic!("unknown attempt {other}"),
    };
    match result {
        Ok(()) => "allowed".into(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".into(),
        Err(e) => format!("error: {e}"),
    }
}

/// What a VM process does for VM `name` of the library in `VIVARIUM_HOME` before it builds
/// the machine: gives up privileges and confines its file-system reach with the same function
/// and the same reach. Reports the confinement as `PROBE confined ...`; returns the VM's
/// bundle and control socket.
fn confine_as_vm_process(name: &str) -> (PathBuf, PathBuf) {
    let library = Library::open_default().expect("the library");
    let entry = library.get(name).expect("the VM");
    let config = entry.config().expect("its configuration").clone();
    let spec = MachineSpec::from_config(&config, &entry.path, Box::new(std::io::sink()))
        .expect("its machine");
    let socket = vivarium_core::control::socket_path(&library, name);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let reach = vivarium_vm::confine::Reach::for_machine(&entry.path, &spec, &socket);
    for warning in vivarium_vm::harden::harden_process() {
        println!("PROBE warning {warning}");
    }
    let confined = vivarium_vm::confine::confine_filesystem(&reach);
    println!("PROBE confined {confined:?}");
    (entry.path, socket)
}

/// The confined side; does nothing unless run by the test below.
#[test]
#[ignore = "the child process of the_confined_vm_process_reaches_only_its_own_vm"]
fn confined_probe() {
    let (Ok(name), Ok(tries)) = (std::env::var(PROBE_VM), std::env::var(PROBE_TRIES)) else {
        return;
    };
    confine_as_vm_process(&name);
    for line in tries.lines() {
        let (how, path) = line.split_once(' ').expect("HOW PATH");
        println!("PROBE {how} {path} {}", attempt(how, Path::new(path)));
    }
}

fn disk_of(lib: &TempLibrary, name: &str) -> PathBuf {
    let info = lib.json(&["info", name]);
    let file = info["config"]["disks"][0]["file"]
        .as_str()
        .expect("the VM has a disk");
    lib.bundle(name).join(file)
}

#[test]
fn the_confined_vm_process_reaches_only_its_own_vm() {
    let lib = TempLibrary::new();
    let kernel = lib.scratch().join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).expect("write the hand-made guest");
    let kernel_arg = kernel.to_str().unwrap();
    for name in ["parent", "other"] {
        lib.ok(&[
            "create",
            name,
            "--kernel",
            kernel_arg,
            "--disk-size",
            "16M",
            "--network",
            "none",
            "--display",
            "none",
        ]);
    }
    lib.ok(&["clone", "--linked", "parent", "mine"]);
    let mine = disk_of(&lib, "mine");
    let base = vivarium_core::disk::backing_chain(&mine).unwrap()[1].clone();
    let parent = disk_of(&lib, "parent");
    let other = disk_of(&lib, "other");
    // The user's secrets, in the home the VM process runs under.
    let home = tempfile::tempdir().unwrap();
    let ssh = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    let key = ssh.join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    let outside = lib.scratch().join("dropped-by-the-guest");
    let expected: Vec<(&str, PathBuf, &str)> = vec![
        ("read", key.clone(), "denied"),
        ("read", other.clone(), "denied"),
        ("write", other.clone(), "denied"),
        ("read", lib.bundle("other").join("vm.toml"), "denied"),
        ("read", parent.clone(), "denied"),
        ("write", base.clone(), "denied"),
        ("create", outside.clone(), "denied"),
        ("read", "/etc/passwd".into(), "denied"),
        ("read", mine.clone(), "allowed"),
        ("write", mine.clone(), "allowed"),
        ("read", base.clone(), "allowed"),
        ("read", kernel.clone(), "allowed"),
        (
            "create",
            lib.bundle("mine").join("state-of-the-guest"),
            "allowed",
        ),
        ("read", "/dev/urandom".into(), "allowed"),
    ];
    let tries: String = expected
        .iter()
        .map(|(how, path, _)| format!("{how} {}\n", path.display()))
        .collect();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "confined_probe", "--nocapture"])
        .env("VIVARIUM_HOME", lib.home())
        .env("HOME", home.path())
        .env(PROBE_VM, "mine")
        .env(PROBE_TRIES, tries)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the probe failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let confined = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PROBE confined "))
        .expect("the probe reports its confinement");
    if confined != "Ok(Fully)" {
        gate::skip(
            "vm_confinement",
            &format!("this kernel cannot confine the VM process fully: {confined}"),
        );
        return;
    }
    for (how, path, want) in &expected {
        let prefix = format!("PROBE {how} {} ", path.display());
        let got = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no report for {prefix}: {stdout}"));
        assert_eq!(got, *want, "{how} `{}`", path.display());
    }
    assert!(!outside.exists());
}

/// Set for the seccomp child: the VM whose failure it records.
const SECCOMP_PROBE_VM: &str = "VIVARIUM_SECCOMP_PROBE_VM";

/// The child of the test below: it confines itself as a VM process does (Landlock, then the
/// seccomp filters, with the same watcher and failure record a VM process sets up), starts a
/// thread that says it is a vCPU, and has it open a network socket, which no vCPU does.
#[test]
#[ignore = "the child process of a_system_call_outside_a_threads_filter_ends_the_vm_as_failed"]
fn seccomp_probe() {
    use vivarium_threads::ThreadKind;
    let Ok(name) = std::env::var(SECCOMP_PROBE_VM) else {
        return;
    };
    let (bundle, socket) = confine_as_vm_process(&name);
    vivarium_vm::seccomp::enable().expect("the filters");
    let failure = vivarium_vm::session::FailureRecord {
        bundle,
        started_at_unix: vivarium_core::control::now_unix(),
        runtime: vec![socket],
    };
    vivarium_vm::seccomp::watch_blocked_calls(move |call| failure.end_process(&call.to_string()));
    std::thread::spawn(|| {
        vivarium_threads::started(ThreadKind::Vcpu);
        println!("PROBE the vCPU thread opens a network socket");
        // SAFETY: socket(2) with constant arguments; the descriptor (if any) is leaked, the
        // process ends right after.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        println!("PROBE the socket call returned {fd}");
    });
    std::thread::sleep(std::time::Duration::from_secs(10));
    println!("PROBE the process was not ended");
}

#[test]
fn a_system_call_outside_a_threads_filter_ends_the_vm_as_failed() {
    let lib = TempLibrary::new();
    let kernel = lib.scratch().join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).expect("write the hand-made guest");
    lib.ok(&[
        "create",
        "mine",
        "--kernel",
        kernel.to_str().unwrap(),
        "--no-disk",
        "--network",
        "none",
        "--display",
        "none",
    ]);
    let started = std::time::Instant::now();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "seccomp_probe", "--nocapture"])
        .env("VIVARIUM_HOME", lib.home())
        .env(SECCOMP_PROBE_VM, "mine")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("PROBE the vCPU thread opens a network socket"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("PROBE the socket call returned"),
        "{stdout}"
    );
    assert!(!stdout.contains("was not ended"), "{stdout}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "ended in {took:?}"
    );
    // Said on standard error (the VM process's `vm.log`) by the signal handler, and recorded
    // as the run's end, which `vivarium status` shows.
    assert!(
        stderr.contains("a vcpu thread made the system call `socket`"),
        "{stderr}"
    );
    let status = lib.json(&["status", "mine"]);
    assert_eq!(status["last_run"]["exit"], "failed", "{status}");
    let detail = status["last_run"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("vcpu thread") && detail.contains("`socket`"),
        "{status}"
    );
    let log = std::fs::read_to_string(lib.bundle("mine").join("logs/vm.log")).unwrap();
    assert!(log.contains("the VM failed: a vcpu thread"), "{log}");
}
