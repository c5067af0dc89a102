//! The vCPU loop, the port I/O bus and the legacy devices through real KVM exits, with tiny
//! real-mode guests assembled here. They run on any /dev/kvm, including software-only ones
//! such as `kvm_pvm` that cannot boot a full kernel.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vivarium_backend_kvm::Kvm;
use vivarium_core::backend::{
    Backend, BootSpec, ControlRequest, MachineExit, MachineSpec, RunningMachine,
};
use vivarium_devices::i8042::{Key, MouseButtons};
use vivarium_e2e::{gate, wait};
use vivarium_vmm::Vmm;

/// Where the guests are loaded and entered.
const LOAD: u64 = 0x1000;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    /// Waits (at most `timeout`) until the guest has written `what`.
    #[track_caller]
    fn wait_for(&self, what: &str, timeout: Duration) {
        wait::poll(&format!("{what:?} on the serial port"), timeout, || {
            let text = self.text();
            if text.contains(what) {
                Ok(())
            } else {
                Err(format!("{text:?}"))
            }
        })
    }
    /// Waits (at most `timeout`) until what the guest wrote satisfies `done`.
    #[track_caller]
    fn wait_until(&self, what: &str, timeout: Duration, done: impl Fn(&[u8]) -> bool) {
        wait::poll(what, timeout, || {
            let bytes = self.bytes();
            if done(&bytes) {
                Ok(())
            } else {
                Err(format!("the serial port had {bytes:02x?}"))
            }
        })
    }
}

/// Returns the backend, or `None` after saying loudly why test `test` cannot run here (or
/// failing it, where every test must run: the suite's one rule, `vivarium_e2e::gate`).
#[track_caller]
fn backend(test: &str) -> Option<Vmm> {
    let backend = Vmm::new(Kvm::new());
    let support = backend.probe();
    let unusable = (!support.can_run()).then(|| support.explain());
    gate::kvm(&format!("handmade_guests::{test}"), unusable).then_some(backend)
}

fn start(backend: &Vmm, code: Vec<u8>, cpus: u32) -> (Arc<dyn RunningMachine>, Capture) {
    let out = Capture::default();
    let spec = MachineSpec {
        cpus,
        memory_mib: 16,
        boot: BootSpec::RealModeImage {
            code,
            load_address: LOAD,
        },
        disks: Vec::new(),
        network: None,
        cdrom: None,
        display: None,
        serial_output: Box::new(out.clone()),
    };
    (backend.start(spec).expect("the machine starts"), out)
}

/// Real-mode code that writes `message` to COM1 byte by byte, then runs `tail`.
fn print_then(message: &str, tail: &[u8]) -> Vec<u8> {
    // 0: mov dx, 0x3f8 | 3: mov si, msg | 6: lodsb | 7: test al, al | 9: jz +3 (to 14)
    // 11: out dx, al | 12: jmp -8 (to 6) | 14: tail... | msg
    let mut code = vec![
        0xba, 0xf8, 0x03, 0xbe, 0, 0, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8,
    ];
    code.extend_from_slice(tail);
    let msg = LOAD as usize + code.len();
    code[4] = msg as u8;
    code[5] = (msg >> 8) as u8;
    code.extend_from_slice(message.as_bytes());
    code.push(0);
    code
}

/// cli; hlt; jmp back to cli.
const HALT_FOREVER: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfc];

#[test]
fn a_guest_writes_to_the_serial_port_and_the_host_powers_it_off() {
    let Some(backend) = backend("a_guest_writes_to_the_serial_port_and_the_host_powers_it_off")
    else {
        return;
    };
    let (machine, out) = start(
        &backend,
        print_then("Hello from a hand-made guest\n", &HALT_FOREVER),
        1,
    );
    out.wait_for("Hello from a hand-made guest\n", Duration::from_secs(20));
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
    assert!(
        machine.request(ControlRequest::Pause).is_err(),
        "a stopped machine refuses requests"
    );
}

#[test]
fn the_i8042_reset_command_reboots_the_machine() {
    let Some(backend) = backend("the_i8042_reset_command_reboots_the_machine") else {
        return;
    };
    // Print, then `mov al, 0xfe; out 0x64, al` and halt (the reset should come first).
    let mut tail = vec![0xb0, 0xfe, 0xe6, 0x64];
    tail.extend_from_slice(&HALT_FOREVER);
    let (machine, out) = start(&backend, print_then("boot\n", &tail), 1);
    out.wait_until(
        "three boots (the reset reboots the guest)",
        Duration::from_secs(30),
        |bytes| String::from_utf8_lossy(bytes).matches("boot\n").count() >= 3,
    );
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
}

#[test]
fn a_triple_fault_ends_the_machine_as_crashed_with_its_registers() {
    let Some(backend) = backend("a_triple_fault_ends_the_machine_as_crashed_with_its_registers")
    else {
        return;
    };
    // lidt [idt] with a zero limit, then int3: no handler, no double-fault handler: the CPU
    // shuts down (a triple fault). The IDT descriptor follows the code.
    let mut tail = vec![0x0f, 0x01, 0x1e, 0, 0, 0xcc];
    tail.extend_from_slice(&HALT_FOREVER);
    let mut code = print_then("about to crash\n", &tail);
    let descriptor = code.len() + LOAD as usize;
    code.extend_from_slice(&[0; 6]);
    let lidt = 14 + 3; // offset of the lidt operand in the code
    code[lidt] = descriptor as u8;
    code[lidt + 1] = (descriptor >> 8) as u8;
    let (machine, out) = start(&backend, code, 1);
    match machine.wait() {
        MachineExit::Crashed { report } => {
            assert!(report.contains("rip="), "{report}");
            println!("crash report:\n{report}");
        }
        other => panic!("expected a crash, got {other:?} (serial: {:?})", out.text()),
    }
    assert!(out.text().contains("about to crash"));
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let Some(backend) = backend("pause_stops_the_guest_and_resume_continues_it") else {
        return;
    };
    // mov dx, 0x3f8; mov al, '.'; out dx, al; jmp back to the out: an endless stream of dots.
    let code = vec![0xba, 0xf8, 0x03, 0xb0, b'.', 0xee, 0xeb, 0xfd];
    let (machine, out) = start(&backend, code, 2);
    out.wait_for("....", Duration::from_secs(20));
    machine.request(ControlRequest::Pause).unwrap();
    let paused_at = out.len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(out.len(), paused_at, "no output while paused");
    machine.request(ControlRequest::Resume).unwrap();
    out.wait_until(
        "more dots after the resume",
        Duration::from_secs(10),
        |bytes| bytes.len() > paused_at,
    );
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
}

#[test]
fn bad_machines_are_refused_with_clear_errors() {
    let Some(backend) = backend("bad_machines_are_refused_with_clear_errors") else {
        return;
    };
    let spec = |boot, memory_mib| MachineSpec {
        cpus: 1,
        memory_mib,
        boot,
        disks: Vec::new(),
        network: None,
        cdrom: None,
        display: None,
        serial_output: Box::new(Capture::default()),
    };
    let err = backend
        .start(spec(
            BootSpec::Linux {
                kernel: "/nonexistent/vmlinuz".into(),
                initrd: None,
                cmdline: String::new(),
            },
            64,
        ))
        .err()
        .expect("a missing kernel is refused")
        .to_string();
    assert!(err.contains("does not exist"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let not_a_kernel = dir.path().join("vmlinuz");
    std::fs::write(&not_a_kernel, vec![0x5a; 64 << 10]).unwrap();
    let err = backend
        .start(spec(
            BootSpec::Linux {
                kernel: not_a_kernel,
                initrd: None,
                cmdline: String::new(),
            },
            64,
        ))
        .err()
        .expect("a file that is not a kernel is refused")
        .to_string();
    assert!(err.contains("neither a Linux bzImage"), "{err}");

    let err = backend
        .start(spec(
            BootSpec::RealModeImage {
                code: HALT_FOREVER.to_vec(),
                load_address: LOAD,
            },
            64 << 20,
        ))
        .err()
        .expect("more memory than the host has is refused")
        .to_string();
    assert!(err.contains("this host has only"), "{err}");
}

#[test]
fn pci_configuration_space_answers_through_port_io() {
    let Some(backend) = backend("pci_configuration_space_answers_through_port_io") else {
        return;
    };
    // For slot 0 (host bridge) and slot 1 (first virtio device): write the address to
    // 0xcf8, read the vendor/device dword from 0xcfc, send its four bytes to COM1.
    let mut code = Vec::new();
    for slot in [0u8, 1] {
        code.extend_from_slice(&[0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
        code.extend_from_slice(&[0x66, 0xb8, 0x00, slot << 3, 0x00, 0x80]); // mov eax, addr
        code.extend_from_slice(&[0x66, 0xef]); // out dx, eax
        code.extend_from_slice(&[0xba, 0xfc, 0x0c]); // mov dx, 0xcfc
        code.extend_from_slice(&[0x66, 0xed]); // in eax, dx
        code.extend_from_slice(&[0xba, 0xf8, 0x03]); // mov dx, 0x3f8
        for _ in 0..3 {
            code.extend_from_slice(&[0xee, 0x66, 0xc1, 0xe8, 0x08]); // out dx, al; shr eax, 8
        }
        code.push(0xee); // out dx, al
    }
    code.extend_from_slice(&HALT_FOREVER);
    let (machine, out) = start(&backend, code, 1);
    out.wait_until("the two ids (8 bytes)", Duration::from_secs(20), |bytes| {
        bytes.len() >= 8
    });
    let bytes = out.bytes();
    let id = |b: &[u8]| {
        (
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        )
    };
    assert_eq!(id(&bytes[0..4]), (0x1b36, 0x0008), "host bridge");
    assert_eq!(
        id(&bytes[4..8]),
        (0x1af4, 0x1044),
        "virtio-rng (modern id 0x1040 + 4)"
    );
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
}

#[test]
fn the_acpi_power_button_reaches_the_guest_and_s5_powers_off() {
    let Some(backend) = backend("the_acpi_power_button_reaches_the_guest_and_s5_powers_off") else {
        return;
    };
    let mut tail = vec![
        0xba, 0x02, 0x06, // mov dx, 0x602 (PM1a enable)
        0xb8, 0x00, 0x01, // mov ax, PWRBTN_EN
        0xef, // out dx, ax
        0xba, 0x00, 0x06, // mov dx, 0x600 (PM1a status)
        0xed, // wait: in ax, dx
        0xf6, 0xc4, 0x01, // test ah, 1 (PWRBTN_STS)
        0x74, 0xfa, // jz wait
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'B', // mov al, 'B'
        0xee, // out dx, al
        0xba, 0x04, 0x06, // mov dx, 0x604 (PM1a control)
        0xb8, 0x00, 0x34, // mov ax, SLP_EN | SLP_TYP(5)
        0xef, // out dx, ax
    ];
    tail.extend_from_slice(&HALT_FOREVER);
    let (machine, out) = start(&backend, print_then("armed\n", &tail), 1);
    out.wait_for("armed\n", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(50));
    assert!(!out.text().contains('B'), "no button press yet");
    machine.request(ControlRequest::PowerButton).unwrap();
    assert_eq!(
        machine.wait(),
        MachineExit::PoweredOff,
        "the guest entered S5"
    );
    assert!(out.text().ends_with("armed\nB"), "{:?}", out.text());
}

/// Real-mode code that waits until the i8042 has a byte (status bit 0), reads it from port
/// 0x60 and writes it to COM1 (`dx` must hold 0x3f8).
const FORWARD_ONE_I8042_BYTE: [u8; 9] = [
    0xe4, 0x64, // wait: in al, 0x64
    0xa8, 0x01, // test al, 1 (output buffer full)
    0x74, 0xfa, // jz wait
    0xe4, 0x60, // in al, 0x60
    0xee, // out dx, al
];

#[test]
fn the_i8042_answers_its_self_test_and_keyboard_identify_through_port_io() {
    let Some(backend) =
        backend("the_i8042_answers_its_self_test_and_keyboard_identify_through_port_io")
    else {
        return;
    };
    let mut code = vec![0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    // Controller self test (0xaa on port 0x64): 0x55.
    code.extend_from_slice(&[0xb0, 0xaa, 0xe6, 0x64]);
    code.extend_from_slice(&FORWARD_ONE_I8042_BYTE);
    // Read the configuration byte (0x20).
    code.extend_from_slice(&[0xb0, 0x20, 0xe6, 0x64]);
    code.extend_from_slice(&FORWARD_ONE_I8042_BYTE);
    // Keyboard interface test (0xab): 0x00.
    code.extend_from_slice(&[0xb0, 0xab, 0xe6, 0x64]);
    code.extend_from_slice(&FORWARD_ONE_I8042_BYTE);
    // Keyboard identify (0xf2 on port 0x60): ACK and the MF2 id, translated.
    code.extend_from_slice(&[0xb0, 0xf2, 0xe6, 0x60]);
    for _ in 0..3 {
        code.extend_from_slice(&FORWARD_ONE_I8042_BYTE);
    }
    code.extend_from_slice(&HALT_FOREVER);
    let (machine, out) = start(&backend, code, 1);
    out.wait_until("six answers", Duration::from_secs(20), |bytes| {
        bytes.len() >= 6
    });
    assert_eq!(
        out.bytes(),
        [0x55, 0x45, 0x00, 0xfa, 0xab, 0x41],
        "self test, configuration (translation, system flag, keyboard interrupt), \
         interface test, ACK, identity AB 83 translated to AB 41"
    );
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
}

#[test]
fn host_keys_and_mouse_movement_reach_the_guest() {
    let Some(backend) = backend("host_keys_and_mouse_movement_reach_the_guest") else {
        return;
    };
    // Enable the keyboard (0xf4 to port 0x60) and mouse reporting (0xd4, 0xf4), then
    // forward every byte forever.
    let mut tail = vec![
        0xb0, 0xf4, 0xe6, 0x60, // keyboard: enable
        0xb0, 0xd4, 0xe6, 0x64, 0xb0, 0xf4, 0xe6, 0x60, // mouse: enable reporting
    ];
    tail.extend_from_slice(&FORWARD_ONE_I8042_BYTE);
    tail.extend_from_slice(&[0xeb, 0xf5]); // jmp back to the wait
    let out = Capture::default();
    let machine = backend
        .start_machine(MachineSpec {
            cpus: 1,
            memory_mib: 16,
            boot: BootSpec::RealModeImage {
                code: print_then("ready\n", &tail),
                load_address: LOAD,
            },
            disks: Vec::new(),
            network: None,
            cdrom: None,
            display: None,
            serial_output: Box::new(out.clone()),
        })
        .expect("the machine starts");
    let mut expected = b"ready\n".to_vec();
    expected.extend_from_slice(&[0xfa, 0xfa]); // the keyboard's and the mouse's ACKs
    out.wait_until(
        "the banner and both ACKs",
        Duration::from_secs(20),
        |bytes| bytes == expected.as_slice(),
    );
    let input = machine
        .ps2_input()
        .expect("a running machine has PS/2 input");
    input.press(Key::KeyA).unwrap();
    input.release(Key::KeyA).unwrap();
    let left = MouseButtons {
        left: true,
        ..Default::default()
    };
    input.mouse_motion(5, -3, 0, left).unwrap();
    // Set 1 make and break of A, then a packet: left button, 5 right, 3 up.
    expected.extend_from_slice(&[0x1e, 0x9e, 0x09, 0x05, 0x03]);
    out.wait_until(
        "the key's codes and the mouse packet",
        Duration::from_secs(20),
        |bytes| bytes.len() >= expected.len(),
    );
    assert_eq!(out.bytes(), expected);
    machine.request(ControlRequest::PowerOff).unwrap();
    assert_eq!(machine.wait(), MachineExit::PoweredOff);
    assert!(
        machine.ps2_input().is_none(),
        "no input into a stopped machine"
    );
}
