//! User-mode networking of a VM process on the host's `/dev/kvm` with the hand-made guest:
//! the VM process starts `passt` for a VM whose configuration asks for a network, forwards
//! the configured host ports, and ends `passt` with the VM however the VM ends; without
//! `passt` the VM starts anyway and says why it has no network. (A real guest's DHCP and
//! TCP through passt is `rig_vivarium_network.rs`.)

use std::net::TcpStream;
use std::time::Duration;

use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, create_handmade_vm, kvm_usable, process_alive, read_text, status,
    wait_for_serial, wait_for_vm_log, wait_until,
};
use vivarium_e2e::{gate, wait};

const WAIT: Duration = Duration::from_secs(20);

/// Processes whose parent is `parent` and whose command name starts with `name` (passt
/// re-executes itself as `passt.avx2` where the CPU has AVX2).
fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if comm.starts_with(name) && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn passt_installed(test: &str) -> bool {
    gate::runs(test, gate::program_missing("passt", "passt"))
}

/// Waits until the VM process `pid` has started its passt, checks it is the only one, and
/// returns its pid.
fn its_passt(pid: u32) -> u32 {
    let passt = wait::poll("the VM process's passt", WAIT, || {
        let found = children_named(pid, "passt");
        if found.is_empty() {
            Err(format!("no passt among the children of {pid}"))
        } else {
            Ok(found)
        }
    });
    assert_eq!(passt.len(), 1, "one passt for the VM, got {passt:?}");
    passt[0]
}

/// A free TCP port on the loopback.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn a_vm_with_a_network_gets_its_own_passt_which_ends_with_it() {
    let test = "vm_network::a_vm_with_a_network_gets_its_own_passt_which_ends_with_it";
    if !kvm_usable(test) || !passt_installed(test) {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "net");
    let port = free_port();
    library.ok(&[
        "set",
        "net",
        "--network",
        "user",
        "--forward",
        &format!("tcp:{port}:80"),
    ]);
    let _guard = PowerOffOnDrop::new(&library, "net");
    library.ok(&["start", "net"]);
    let pid = status(&library, "net")["pid"].as_u64().expect("pid") as u32;
    let passt = its_passt(pid);
    wait_for_vm_log(
        &library,
        "net",
        &["user-mode network through passt", &port.to_string()],
        WAIT,
    );
    // passt listens on the forwarded host port for the guest.
    wait_until("the forwarded port to listen", WAIT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    // A reset builds the machine again: the old network card lets go of passt's connection
    // (and, with every other device, of the guest memory) so the new one can connect.
    library.ok(&["reset", "net"]);
    wait_until("the machine to reset", WAIT, || {
        read_text(&library.bundle("net").join("logs/vm.log")).contains("the machine resets")
    });

    library.ok(&["stop", "--force", "net"]);
    wait_until("passt to end with the VM", WAIT, || !process_alive(passt));
    // The VM process is gone, so its log is complete.
    wait_until("the VM process to end", WAIT, || !process_alive(pid));
    let vm_log = read_text(&library.bundle("net").join("logs/vm.log"));
    assert!(
        !vm_log.contains("still in use") && !vm_log.contains("ERROR"),
        "the machine did not release its devices and memory at reset:\n{vm_log}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is free again"
    );

    // A VM process killed outright takes its passt with it.
    library.ok(&["start", "net"]);
    let pid = status(&library, "net")["pid"].as_u64().expect("pid") as u32;
    let passt = its_passt(pid);
    // SAFETY: kill only sends a signal.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    wait_until("passt to end with the killed VM", WAIT, || {
        !process_alive(passt)
    });
    // And the VM starts again with a network.
    library.ok(&["start", "net"]);
    let pid = status(&library, "net")["pid"].as_u64().expect("pid") as u32;
    its_passt(pid);
    library.ok(&["stop", "--force", "net"]);
}

#[test]
fn without_passt_the_vm_starts_and_says_it_has_no_network() {
    if !kvm_usable("vm_network::without_passt_the_vm_starts_and_says_it_has_no_network") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_vm(&library, "offline");
    library.ok(&["set", "offline", "--network", "user"]);
    let _guard = PowerOffOnDrop::new(&library, "offline");
    let started = library
        .command(&["start", "offline"])
        .env("PATH", library.scratch())
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "start without passt: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(status(&library, "offline")["state"], "running");
    wait_for_vm_log(
        &library,
        "offline",
        &["`passt` is not installed", "install the `passt` package"],
        WAIT,
    );
    wait_for_serial(&library, "offline", "no network", WAIT);
    library.ok(&["stop", "--force", "offline"]);
}
