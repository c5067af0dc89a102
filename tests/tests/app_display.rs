//! The app's Screen tab driven through egui_kittest with a real VM process on the host's
//! /dev/kvm (the hand-made input guest, which reports every i8042 byte on its serial port,
//! given a screen): the tab shows what is in the VM's display file (checked in the rendered
//! pixels), follows mode changes, says so when the display is off, puts a live thumbnail in
//! the sidebar, and while it has the grab every key goes to the guest (as exact set 1
//! scancodes) and no app shortcut fires, the mouse too (as PS/2 packets); Ctrl+Alt gives them
//! back. A second test has the hand-made display guest draw its own picture.
//!
//! The hand-made guest does not draw, so the test draws into the VM's display file as a
//! guest's writes to video memory would land there.

use std::time::{Duration, Instant};

use eframe::egui::{self, Role};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use vivarium::gui::{AppEnv, VivariumApp};
use vivarium_core::display::{DisplayMode, PixelFormat, SharedDisplay};
use vivarium_e2e::handmade::{INPUT_BANNER, input_reports};
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_handmade_input_vm, kvm_usable, read_text,
};

const RED: [u8; 3] = [230, 30, 40];
const GREEN: [u8; 3] = [20, 200, 60];
const BLUE: [u8; 3] = [30, 60, 220];
const YELLOW: [u8; 3] = [250, 220, 20];

/// Steps the app (with real time passing, for its background threads) until `done` holds.
fn wait_until(
    harness: &mut Harness<'_, VivariumApp>,
    what: &str,
    mut done: impl FnMut(&Harness<'_, VivariumApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        harness.run_steps(1);
        if done(harness) {
            harness.run_steps(2);
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has_label(harness: &Harness<'_, VivariumApp>, label: &str) -> bool {
    harness.query_by_label(label).is_some()
}

/// The size the Screen tab says its picture has (`None`: no picture).
fn shown_size(harness: &Harness<'_, VivariumApp>) -> Option<String> {
    harness
        .query_by_role_and_label(Role::Image, "Screen of kb")
        .and_then(|node| node.value())
}

/// Draws a picture of `mode`'s size: `color(x, y)` for each pixel, in XRGB8888.
fn draw(display: &SharedDisplay, mode: DisplayMode, color: impl Fn(u32, u32) -> [u8; 3]) {
    display.set_mode(Some(mode)).unwrap();
    let mut bytes = Vec::with_capacity((mode.stride * mode.height) as usize);
    for y in 0..mode.height {
        for x in 0..mode.width {
            let [r, g, b] = color(x, y);
            bytes.extend_from_slice(&[b, g, r, 0]);
        }
    }
    display.write_vram(mode.offset, &bytes).unwrap();
}

/// The colour at `(fx, fy)` (fractions of its width and height) of the screen as rendered.
fn rendered_color(harness: &mut Harness<'_, VivariumApp>, fx: f32, fy: f32) -> [u8; 3] {
    let rect = harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .rect();
    let image = harness.render().expect("the harness renders");
    let x = rect.left() + rect.width() * fx;
    let y = rect.top() + rect.height() * fy;
    let pixel = image.get_pixel(x as u32, y as u32).0;
    [pixel[0], pixel[1], pixel[2]]
}

/// Presses `key` with `modifier` held, as egui-winit reports it: the modifier's own key
/// event, the new modifier state, the key with that state on it, and back.
fn chord(harness: &Harness<'_, VivariumApp>, modifier: egui::Key, key: egui::Key) {
    let held = match modifier {
        egui::Key::ShiftLeft => egui::Modifiers::SHIFT,
        egui::Key::ControlLeft => egui::Modifiers {
            ctrl: true,
            command: true,
            ..Default::default()
        },
        other => panic!("no modifier state for {other:?}"),
    };
    let event = |key, pressed, modifiers| egui::Event::Key {
        key,
        physical_key: Some(key),
        pressed,
        repeat: false,
        modifiers,
    };
    let none = egui::Modifiers::NONE;
    harness.event(event(modifier, true, none));
    harness.event(egui::Event::ModifiersChanged(held));
    harness.event(event(key, true, held));
    harness.event(event(key, false, held));
    harness.event(event(modifier, false, held));
    harness.event(egui::Event::ModifiersChanged(none));
}

/// Steps the app until the rendered screen has `color` at `(fx, fy)` (the feed follows the
/// display file on its own thread: a picture drawn right after a mode change may arrive a
/// frame later than the mode).
fn expect_color(harness: &mut Harness<'_, VivariumApp>, fx: f32, fy: f32, color: [u8; 3]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = rendered_color(harness, fx, fy);
        if close(seen, color) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "at ({fx}, {fy}) the screen shows {seen:?}, not {color:?}"
        );
        harness.run_steps(1);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 3)
}

/// The guest's reports of i8042 bytes since its banner.
fn reports(library: &TempLibrary) -> Vec<(char, u8)> {
    input_reports(&read_text(&library.bundle("kb").join("logs/serial.log")))
}

fn keyboard(bytes: &[u8]) -> Vec<(char, u8)> {
    bytes.iter().map(|&b| ('k', b)).collect()
}

/// Steps the app until the guest reported `expected` after the `before` reports it had, then
/// a moment more so that extra bytes would show, and checks they are exactly `expected`.
fn expect_keys(
    harness: &mut Harness<'_, VivariumApp>,
    library: &TempLibrary,
    before: usize,
    expected: &[u8],
) {
    expect_reports(harness, library, before, &keyboard(expected));
}

/// As [`expect_keys`], for keyboard (`k`) and mouse (`m`) bytes.
fn expect_reports(
    harness: &mut Harness<'_, VivariumApp>,
    library: &TempLibrary,
    before: usize,
    expected: &[(char, u8)],
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while reports(library).len() < before + expected.len() && Instant::now() < deadline {
        harness.run_steps(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    harness.run_steps(1);
    let hex = |r: &[(char, u8)]| {
        r.iter()
            .map(|(d, b)| format!("{d}{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        hex(&reports(library)[before..]),
        hex(expected),
        "the guest's i8042 bytes (k = keyboard, m = mouse)"
    );
}

#[test]
fn the_screen_tab_shows_the_guest_and_has_its_keyboard_while_grabbed() {
    if !kvm_usable("app_display::the_screen_tab_shows_the_guest_and_has_its_keyboard_while_grabbed")
    {
        return;
    }
    let library = TempLibrary::new();
    create_handmade_input_vm(&library, "kb");
    library.ok(&["set", "kb", "--display", "640x480"]);
    let _guard = PowerOffOnDrop::new(&library, "kb");
    library.ok(&["start", "kb"]);
    let serial = library.bundle("kb").join("logs/serial.log");
    vivarium_e2e::vm_process::wait_until(
        "the input guest's banner",
        Duration::from_secs(30),
        || read_text(&serial).contains(INPUT_BANNER),
    );
    let env = AppEnv {
        library: core_library(&library),
        prefs_path: None,
        vm_exe: Some(vivarium_e2e::vivarium::vm_binary()),
    };
    let display = vivarium_core::control::ControlClient::connect(&env.library, "kb")
        .and_then(|mut c| c.open_display())
        .expect("the VM process hands over its display");
    let mut harness = Harness::builder()
        .with_size([1200.0, 800.0])
        .build_eframe(move |cc| VivariumApp::new(cc, env));
    harness.run_steps(2);

    // Selecting a running VM with a screen opens its Screen tab. (The input guest never
    // draws; the boot protocol announced its screen, so the display is on.)
    wait_until(&mut harness, "kb running in the sidebar", |h| {
        has_label(h, "kb, Running")
    });
    harness.get_by_label("kb, Running").click();
    wait_until(&mut harness, "the Screen tab", |h| {
        h.query_by_role_and_label(Role::Image, "Screen of kb")
            .is_some()
    });

    // A picture in four colours: the tab shows it (fit: doubled, sharp).
    let small = DisplayMode::packed(320, 200, PixelFormat::Xrgb8888);
    draw(&display, small, |x, y| match (x < 160, y < 100) {
        (true, true) => RED,
        (false, true) => GREEN,
        (true, false) => BLUE,
        (false, false) => YELLOW,
    });
    wait_until(&mut harness, "the 320x200 picture", |h| {
        shown_size(h).as_deref() == Some("320x200")
    });
    let rect = harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .rect();
    assert_eq!(
        (rect.width(), rect.height()),
        (640.0, 400.0),
        "enlarged by a whole factor"
    );
    for (fx, fy, color) in [
        (0.25, 0.25, RED),
        (0.75, 0.25, GREEN),
        (0.25, 0.75, BLUE),
        (0.75, 0.75, YELLOW),
    ] {
        expect_color(&mut harness, fx, fy, color);
    }
    let uploads = harness.state().screen_uploads();
    // One changed row band: uploaded as rows, the rest of the picture stays.
    let band = vec![[0u8, 0, 0, 0]; 320].concat();
    for y in 10..14 {
        display
            .write_vram(u64::from(small.stride) * y, &band)
            .unwrap();
    }
    wait_until(&mut harness, "the changed rows uploaded", |h| {
        h.state().screen_uploads().1 > uploads.1
    });
    assert_eq!(
        harness.state().screen_uploads().0,
        uploads.0,
        "changed rows do not upload the whole picture"
    );
    expect_color(&mut harness, 0.25, 0.06, [0, 0, 0]);
    expect_color(&mut harness, 0.25, 0.25, RED);

    // The sidebar shows a live thumbnail instead of the OS icon.
    wait_until(&mut harness, "the thumbnail", |h| {
        h.state().thumbnailed_vms() == ["kb"]
    });

    // The guest changes its resolution: the tab follows.
    let large = DisplayMode::packed(800, 600, PixelFormat::Xrgb8888);
    draw(&display, large, |_, _| YELLOW);
    wait_until(&mut harness, "the 800x600 picture", |h| {
        shown_size(h).as_deref() == Some("800x600")
    });
    expect_color(&mut harness, 0.5, 0.5, YELLOW);
    // The display turns off, then on again.
    display.set_mode(None).unwrap();
    wait_until(&mut harness, "the display-off placeholder", |h| {
        has_label(h, "The guest has not turned on its display")
    });
    // With the display off, the sidebar shows the OS icon again.
    wait_until(&mut harness, "the thumbnail gone", |h| {
        h.state().thumbnailed_vms().is_empty()
    });
    draw(&display, small, |_, _| BLUE);
    wait_until(&mut harness, "the picture again", |h| {
        shown_size(h).as_deref() == Some("320x200")
    });

    // Fullscreen: only the screen, no sidebar; Esc leaves.
    harness
        .get_by_role_and_label(Role::Button, "Fullscreen")
        .click();
    wait_until(&mut harness, "fullscreen", |h| {
        h.state().is_fullscreen()
            && !has_label(h, "kb, Running")
            && shown_size(h).as_deref() == Some("320x200")
    });
    harness.key_press(egui::Key::Escape);
    wait_until(&mut harness, "fullscreen left", |h| {
        !h.state().is_fullscreen() && has_label(h, "kb, Running")
    });

    // A click into the screen grabs the keyboard: keys go to the guest as set 1 scancodes,
    // Ctrl+N (New VM in the app) included, and the app does not react to them.
    assert!(has_label(
        &harness,
        "Click the screen to give it the keyboard and mouse"
    ));
    harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .click();
    wait_until(&mut harness, "the grab", |h| {
        has_label(h, "Press Ctrl+Alt to release the keyboard and mouse")
    });
    assert!(harness.state().screen_grabbed());
    let before = reports(&library).len();
    harness.key_press(egui::Key::A);
    harness.run_steps(1);
    chord(&harness, egui::Key::ShiftLeft, egui::Key::B);
    harness.run_steps(1);
    chord(&harness, egui::Key::ControlLeft, egui::Key::N);
    harness.run_steps(1);
    harness.key_press(egui::Key::F10);
    harness.run_steps(1);
    expect_keys(
        &mut harness,
        &library,
        before,
        &[
            0x1e, 0x9e, // a
            0x2a, 0x30, 0xb0, 0xaa, // Shift+B
            0x1d, 0x31, 0xb1, 0x9d, // Ctrl+N
            0x44, 0xc4, // F10
        ],
    );
    assert!(
        !has_label(&harness, "New virtual machine"),
        "Ctrl+N went to the guest, not to the app"
    );

    // The mouse, relative: raw motion, then a left click, as PS/2 packets (buttons and sign
    // bits with bit 3 set, X, Y with up positive).
    let before = reports(&library).len();
    harness.event(egui::Event::MouseMoved(egui::vec2(5.0, -3.0)));
    harness.run_steps(1);
    let center = harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .rect()
        .center();
    for pressed in [true, false] {
        harness.event(egui::Event::PointerButton {
            pos: center,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
        harness.run_steps(1);
    }
    expect_reports(
        &mut harness,
        &library,
        before,
        &[0x08, 0x05, 0x03, 0x09, 0x00, 0x00, 0x08, 0x00, 0x00].map(|b| ('m', b)),
    );
    assert!(harness.state().screen_grabbed(), "a click keeps the grab");

    // Ctrl+Alt releases: the guest sees both come down and, at the release, go up.
    let before = reports(&library).len();
    harness.key_down(egui::Key::ControlLeft);
    harness.key_down(egui::Key::AltLeft);
    harness.run_steps(1);
    harness.key_up(egui::Key::AltLeft);
    harness.key_up(egui::Key::ControlLeft);
    wait_until(&mut harness, "the release", |h| {
        has_label(h, "Click the screen to give it the keyboard and mouse")
    });
    assert!(!harness.state().screen_grabbed());
    expect_keys(&mut harness, &library, before, &[0x1d, 0x38, 0x9d, 0xb8]);

    // Released, keys are the app's again: nothing reaches the guest, Ctrl+N opens the dialog.
    let before = reports(&library).len();
    harness.key_press(egui::Key::A);
    chord(&harness, egui::Key::ControlLeft, egui::Key::N);
    wait_until(&mut harness, "the New VM dialog", |h| {
        has_label(h, "New virtual machine")
    });
    harness
        .get_by_role_and_label(Role::Button, "Cancel")
        .click();
    harness.run_steps(2);
    // The Ctrl+Alt+Del button sends the combination without a grab.
    harness
        .get_by_role_and_label(Role::Button, "Send Ctrl+Alt+Del")
        .click();
    harness.run_steps(1);
    expect_keys(
        &mut harness,
        &library,
        before,
        &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
    );

    // In fullscreen, the release combination also leaves fullscreen.
    harness
        .get_by_role_and_label(Role::Button, "Fullscreen")
        .click();
    wait_until(&mut harness, "fullscreen", |h| h.state().is_fullscreen());
    harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .click();
    wait_until(&mut harness, "the grab", |h| h.state().screen_grabbed());
    harness.key_press(egui::Key::Escape);
    harness.run_steps(2);
    assert!(
        harness.state().is_fullscreen(),
        "Esc is the guest's while grabbed"
    );
    harness.key_down(egui::Key::ControlLeft);
    harness.key_down(egui::Key::AltLeft);
    wait_until(&mut harness, "released and out of fullscreen", |h| {
        !h.state().screen_grabbed() && !h.state().is_fullscreen()
    });
    harness.key_up(egui::Key::AltLeft);
    harness.key_up(egui::Key::ControlLeft);
    harness.run_steps(2);

    // The Machine menu presses Ctrl+Alt+Del too.
    let before = reports(&library).len();
    harness.get_by_label("Machine").click();
    harness.run_steps(2);
    harness
        .get_by_role_and_label(Role::Button, "Press Ctrl+Alt+Del")
        .click();
    harness.run_steps(1);
    expect_keys(
        &mut harness,
        &library,
        before,
        &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d],
    );
}

/// The hand-made display guest draws its picture through the real path (guest writes to the
/// framebuffer, the VM process's dirty log, the display file): the Screen tab shows exactly
/// that picture, one guest pixel per pixel.
#[test]
fn a_guests_own_picture_reaches_the_screen_tab_pixel_for_pixel() {
    if !kvm_usable("app_display::a_guests_own_picture_reaches_the_screen_tab_pixel_for_pixel") {
        return;
    }
    let library = TempLibrary::new();
    vivarium_e2e::vm_process::create_display_vm(&library, "kb", "640x480");
    let _guard = PowerOffOnDrop::new(&library, "kb");
    library.ok(&["start", "kb"]);
    let serial = library.bundle("kb").join("logs/serial.log");
    // The banner comes once the whole picture is drawn.
    vivarium_e2e::vm_process::wait_until(
        "the display guest's banner",
        Duration::from_secs(60),
        || read_text(&serial).contains(vivarium_e2e::handmade::BANNER),
    );
    let env = AppEnv {
        library: core_library(&library),
        prefs_path: None,
        vm_exe: Some(vivarium_e2e::vivarium::vm_binary()),
    };
    let mut harness = Harness::builder()
        .with_size([1200.0, 1000.0])
        .build_eframe(move |cc| VivariumApp::new(cc, env));
    wait_until(&mut harness, "kb running in the sidebar", |h| {
        has_label(h, "kb, Running")
    });
    harness.get_by_label("kb, Running").click();
    wait_until(&mut harness, "the guest's 640x480 picture", |h| {
        shown_size(h).as_deref() == Some("640x480")
    });
    let expected = vivarium_e2e::handmade::display_picture(640, 480);
    let rect = harness
        .get_by_role_and_label(Role::Image, "Screen of kb")
        .rect();
    assert_eq!(
        (rect.width(), rect.height()),
        (640.0, 480.0),
        "1:1 in this pane"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let image = harness.render().expect("the harness renders");
        let mismatches: Vec<(u32, u32)> = [
            (0, 0),
            (100, 37),
            (255, 200),
            (639, 479),
            (320, 240),
            (17, 400),
        ]
        .into_iter()
        .filter(|&(x, y)| {
            let at = ((y * 640 + x) * 4) as usize;
            let want = [expected[at], expected[at + 1], expected[at + 2]];
            let seen = image
                .get_pixel(rect.left() as u32 + x, rect.top() as u32 + y)
                .0;
            !close([seen[0], seen[1], seen[2]], want)
        })
        .collect();
        if mismatches.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the screen differs from the guest's picture at {mismatches:?}"
        );
        harness.run_steps(1);
        std::thread::sleep(Duration::from_millis(50));
    }
}
