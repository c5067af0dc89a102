//! Keyboard and mouse input from the host to a running VM, on the host's `/dev/kvm` with the
//! hand-made input guest: `vivarium type` / `vivarium key` and the control protocol's `input`
//! request arrive at the guest's i8042 as the exact set 1 scancodes (the controller
//! translates the keyboard's set 2) and PS/2 mouse packets a driver reads.

use std::time::Duration;

use vivarium_core::control::ControlClient;
use vivarium_core::input::{InputEvent, MouseButtons};
use vivarium_e2e::handmade::{INPUT_BANNER, input_reports};
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_handmade_input_vm, kvm_usable, process_alive, read_text,
    wait_until,
};

const WAIT: Duration = Duration::from_secs(30);

/// The guest's reports so far.
fn reports(library: &TempLibrary, name: &str) -> Vec<(char, u8)> {
    input_reports(&read_text(&library.bundle(name).join("logs/serial.log")))
}

/// Waits until the guest has reported as many bytes as `expected` since its banner (and a
/// moment more, so that extra bytes would show), then checks they are exactly `expected`.
fn expect_reports(library: &TempLibrary, name: &str, expected: &[(char, u8)]) {
    let deadline = std::time::Instant::now() + WAIT;
    while reports(library, name).len() < expected.len() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let hex = |r: &[(char, u8)]| {
        r.iter()
            .map(|(d, b)| format!("{d}{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        hex(&reports(library, name)),
        hex(expected),
        "the guest's i8042 bytes (k = keyboard, m = mouse)"
    );
}

fn keyboard(bytes: &[u8]) -> Vec<(char, u8)> {
    bytes.iter().map(|&b| ('k', b)).collect()
}

fn mouse(bytes: &[u8]) -> Vec<(char, u8)> {
    bytes.iter().map(|&b| ('m', b)).collect()
}

#[test]
fn typed_text_keys_and_mouse_reach_the_guests_i8042_and_a_stopped_vm_says_so() {
    if !kvm_usable("vm_input") {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_input_vm(&library, "kb");
    let _guard = PowerOffOnDrop::new(&library, "kb");
    // Typing into a VM that is not running is refused clearly, before and after it ran.
    let refused = library.fails(11, &["type", "kb", "hello"]);
    assert!(refused.contains("not running"), "{refused}");

    let started = library.json(&["start", "kb"]);
    let pid = started["pid"].as_u64().unwrap() as u32;
    let serial = library.bundle("kb").join("logs/serial.log");
    wait_until("the input guest's banner", WAIT, || {
        read_text(&serial).contains(INPUT_BANNER)
    });
    assert_eq!(reports(&library, "kb"), [], "nothing before input");

    // Text with shifted characters and a newline, then key combinations. The expected
    // bytes are IBM's set 1 codes (make; break = make | 0x80; E0 before the grey keys).
    library.ok(&[
        "type",
        "kb",
        "aB!\n",
        "--key",
        "ctrl+alt+delete",
        "--key",
        "f2",
    ]);
    let mut expected = keyboard(&[
        0x1e, 0x9e, // a
        0x2a, 0x30, 0xb0, 0xaa, // Shift, B, Shift up
        0x2a, 0x02, 0x82, 0xaa, // Shift, 1 (!), Shift up
        0x1c, 0x9c, // Enter
        0x1d, 0x38, 0xe0, 0x53, // Ctrl, Alt, Delete down
        0xe0, 0xd3, 0xb8, 0x9d, // and up in reverse
        0x3c, 0xbc, // F2
    ]);
    expect_reports(&library, "kb", &expected);

    // `vivarium key` with several combinations, and symbols typed with --delay 0.
    library.ok(&["key", "kb", "shift+tab", "AltRight+KeyQ", "up"]);
    expected.extend(keyboard(&[
        0x2a, 0x0f, 0x8f, 0xaa, // Shift+Tab
        0xe0, 0x38, 0x10, 0x90, 0xe0, 0xb8, // AltGr+Q
        0xe0, 0x48, 0xe0, 0xc8, // Up
    ]));
    library.ok(&["type", "kb", "--delay", "0", "~/_"]);
    expected.extend(keyboard(&[
        0x2a, 0x29, 0xa9, 0xaa, // ~
        0x35, 0xb5, // /
        0x2a, 0x0c, 0x8c, 0xaa, // _
    ]));
    expect_reports(&library, "kb", &expected);

    // Characters a US keyboard cannot type: refused, nothing sent.
    let refused = library.fails(5, &["type", "kb", "ok é"]);
    assert!(refused.contains("U+00E9"), "{refused}");
    let refused = library.fails(5, &["key", "kb", "ctrl+nothing"]);
    assert!(refused.contains("nothing"), "{refused}");

    // The mouse, through the control protocol as the app sends it: 5 right and 3 up with
    // the left button, the button released, then 2 left and 4 down with the right button.
    // PS/2 packets: buttons and sign bits (bit 3 always set), X, Y (up is positive).
    let mut client = ControlClient::connect(&core_library(&library), "kb").unwrap();
    let buttons = |left, right| MouseButtons {
        left,
        right,
        middle: false,
    };
    client
        .send_input(&[
            InputEvent::PointerMotion {
                dx: 5,
                dy: -3,
                wheel: 0,
                buttons: buttons(true, false),
            },
            InputEvent::PointerMotion {
                dx: 0,
                dy: 0,
                wheel: 0,
                buttons: buttons(false, false),
            },
            InputEvent::PointerMotion {
                dx: -2,
                dy: 4,
                wheel: 0,
                buttons: buttons(false, true),
            },
        ])
        .unwrap();
    expected.extend(mouse(&[
        0x09, 0x05, 0x03, // left, +5, +3
        0x08, 0x00, 0x00, // nothing held
        0x3a, 0xfe, 0xfc, // right, X and Y negative: -2, -4
    ]));
    expect_reports(&library, "kb", &expected);
    // And through `vivarium mouse`: a middle click, a move with the left button held, and the
    // wheel (which sends a plain packet: this guest did not turn the wheel on).
    library.ok(&[
        "mouse",
        "kb",
        "click:middle",
        "down:left",
        "move:-1,1",
        "up:left",
        "wheel:1",
    ]);
    expected.extend(mouse(&[
        0x0c, 0x00, 0x00, // middle down
        0x08, 0x00, 0x00, // and up
        0x09, 0x00, 0x00, // left down
        0x39, 0xff, 0xff, // left held, 1 left and 1 down
        0x08, 0x00, 0x00, // left up
        0x08, 0x00, 0x00, // the wheel, unseen
    ]));
    expect_reports(&library, "kb", &expected);
    let refused = library.fails(5, &["mouse", "kb", "click:thumb"]);
    assert!(refused.contains("no button is called `thumb`"), "{refused}");

    // A bad event is a bad message: nothing reaches the guest and the connection stays.
    let socket = vivarium_core::control::socket_path(&core_library(&library), "kb");
    {
        use std::io::{BufRead, BufReader, Write};
        let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        raw.write_all(
            b"{\"type\":\"hello\",\"version\":1}\n\
              {\"type\":\"input\",\"events\":[{\"type\":\"key\",\"key\":\"KeyA\",\"pressed\":true},{\"type\":\"key\",\"key\":\"Hyper\",\"pressed\":true}]}\n",
        )
        .unwrap();
        let mut replies = BufReader::new(raw);
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        assert!(line.contains("bad-message"), "{line}");
    }
    client.send_input(&[]).unwrap();
    expect_reports(&library, "kb", &expected);

    // Once the VM has stopped, input is refused with what to do.
    library.ok(&["stop", "--force", "kb"]);
    wait_until("the VM process to end", WAIT, || !process_alive(pid));
    let refused = library.fails(11, &["type", "kb", "x"]);
    assert!(refused.contains("vivarium start kb"), "{refused}");
    let refused = library.fails(11, &["key", "kb", "enter"]);
    assert!(refused.contains("not running"), "{refused}");
}
