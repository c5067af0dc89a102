//! Soak: 50 start/stop cycles of the hand-made guest, with no growth in the open files or the
//! memory of the long-lived processes.
//!
//! Vivarium has no daemon; the long-lived processes are a VM process that stays up while
//! clients come and go, and the app, whose side is the control client in this test process.
//! Each cycle starts and powers off a VM through the CLI, and meanwhile a client of the
//! long-lived VM connects, asks for its status, attaches to its console, types, reads the
//! echo and disconnects (half the time abruptly mid-stream). The open files and resident
//! memory of the long-lived VM process and of this process are measured after a warm-up and
//! at the end.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use vivarium_core::control::{ControlClient, LiveState, live_state};
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_handmade_vm, kvm_usable, open_files, resident_kib,
};

const CYCLES: usize = 50;
const WARM_UP: usize = 5;
/// Allowed growth of open files: none, beyond a descriptor or two in flight.
const FD_SLACK: usize = 2;
/// Allowed growth of resident memory (allocator arenas settle in the first cycles).
const RSS_SLACK_KIB: u64 = 4 * 1024;

/// One client visit to the long-lived VM: status, console attach, type, read the echo,
/// disconnect (abruptly when `abrupt`).
fn visit(library: &vivarium_core::Library, name: &str, cycle: usize, abrupt: bool) {
    let mut client = ControlClient::connect(library, name).expect("connect");
    assert_eq!(client.status().unwrap().state.as_str(), "running");
    let mut console = client.attach_serial().expect("attach");
    console
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut backlog = vec![0u8; console.backlog_bytes() as usize];
    console.read_exact(&mut backlog).unwrap();
    let token = format!("<{cycle}>");
    console
        .input()
        .unwrap()
        .write_all(token.as_bytes())
        .unwrap();
    if abrupt {
        return; // dropped mid-stream, echo unread
    }
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(&token) {
        let mut buf = [0u8; 256];
        // The read times out after 10 s (set above): the wait is bounded.
        let n = console.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "cycle {cycle}: no echo of {token} ({e}); the console showed {:?}",
                String::from_utf8_lossy(&seen)
            )
        });
        assert!(
            n > 0,
            "cycle {cycle}: the console ended before the echo of {token}"
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn fifty_start_stop_cycles_leak_neither_files_nor_memory() {
    if !kvm_usable("vm_soak") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "steady");
    create_handmade_vm(&library, "cycler");
    let _steady_guard = PowerOffOnDrop::new(&library, "steady");
    let _cycler_guard = PowerOffOnDrop::new(&library, "cycler");
    let core = core_library(&library);
    let steady_pid = library.json(&["start", "steady"])["pid"].as_u64().unwrap() as u32;
    let me = std::process::id();

    let started = Instant::now();
    let mut baseline = None;
    for cycle in 0..CYCLES {
        if cycle == WARM_UP {
            baseline = Some((
                open_files(steady_pid),
                resident_kib(steady_pid),
                open_files(me),
                resident_kib(me),
            ));
        }
        library.ok(&["start", "cycler"]);
        assert!(matches!(live_state(&core, "cycler"), LiveState::Running(_)));
        visit(&core, "steady", cycle, cycle % 2 == 1);
        library.ok(&["stop", "--force", "cycler"]);
        let LiveState::Stopped {
            last_run: Some(run),
        } = live_state(&core, "cycler")
        else {
            panic!("cycle {cycle}: `cycler` did not stop");
        };
        assert_eq!(run.exit.as_str(), "powered-off");
    }
    // Let the VM process finish with the last abrupt client.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client = ControlClient::connect(&core, "steady").unwrap();
    loop {
        let status = client.status().unwrap();
        // Only this connection left: every earlier one has closed its descriptors.
        if status.serial_clients == 0 && status.control_clients == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "clients left over: {status:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(client);
    std::thread::sleep(Duration::from_millis(200));

    let (vm_fds, vm_rss, my_fds, my_rss) = baseline.expect("measured after the warm-up");
    let after = (
        open_files(steady_pid),
        resident_kib(steady_pid),
        open_files(me),
        resident_kib(me),
    );
    loud(&format!(
        "SOAK {CYCLES} cycles in {:.1} s: VM process fds {vm_fds} -> {}, RSS {vm_rss} -> {} KiB; \
         client process fds {my_fds} -> {}, RSS {my_rss} -> {} KiB",
        started.elapsed().as_secs_f64(),
        after.0,
        after.1,
        after.2,
        after.3
    ));
    assert!(vm_fds > 0 && my_fds > 0, "/proc is readable");
    assert!(
        after.0 <= vm_fds + FD_SLACK,
        "the VM process's open files grew: {vm_fds} -> {}",
        after.0
    );
    assert!(
        after.1 <= vm_rss + RSS_SLACK_KIB,
        "the VM process's memory grew: {vm_rss} -> {} KiB",
        after.1
    );
    assert!(
        after.2 <= my_fds + FD_SLACK,
        "the client's open files grew: {my_fds} -> {}",
        after.2
    );
    assert!(
        after.3 <= my_rss + RSS_SLACK_KIB,
        "the client's memory grew: {my_rss} -> {} KiB",
        after.3
    );
    library.ok(&["stop", "--force", "steady"]);
}
