//! The VM side of the screen on the host's `/dev/kvm` (software `kvm_pvm` here), with the
//! hand-made display guest: it finds the framebuffer in its boot parameters, draws a known
//! picture into the video memory KVM maps from the display file, and `vivarium screenshot`
//! writes exactly that picture. The dirty log (or, where KVM lacks it, whole-screen refreshes)
//! tells a viewer which rows changed. Also the clear refusals of `screenshot`.

use std::time::Duration;

use vivarium_core::control::ControlClient;
use vivarium_core::control::display_path;
use vivarium_e2e::handmade::{BANNER, DISPLAY_BAND, display_picture};
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_display_vm, create_handmade_vm, kvm_usable, read_text,
    wait_until,
};
use vivarium_e2e::wait;

const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;

fn decode_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()))
        .to_rgba8();
    let (w, h) = image.dimensions();
    (w, h, image.into_raw())
}

/// Where test screenshots are kept for people to look at (target/test-screenshots).
fn keep_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps");
    let dir = target.join("test-screenshots");
    std::fs::create_dir_all(&dir).expect("a folder for screenshots");
    dir
}

#[test]
fn a_hand_made_guest_draws_and_the_screenshot_matches_pixel_for_pixel() {
    if !kvm_usable("vm_display") {
        return;
    }
    let library = TempLibrary::new();
    create_display_vm(&library, "screen", &format!("{WIDTH}x{HEIGHT}"));
    let _guard = PowerOffOnDrop::new(&library, "screen");
    library.ok(&["start", "screen"]);

    // Follow the display like a viewer: take the dirty rows as they come.
    let display = ControlClient::connect(&core_library(&library), "screen")
        .and_then(|mut c| c.open_display())
        .expect("the VM process hands over its display");
    let mode = display
        .mode()
        .0
        .expect("the boot mode is set before the guest runs");
    assert_eq!(
        (mode.width, mode.height, mode.stride),
        (WIDTH, HEIGHT, WIDTH * 4)
    );
    let serial = library.bundle("screen").join("logs/serial.log");
    let mut taken = Vec::new();
    // Follow the display like a viewer while the guest draws; it prints the banner at the end.
    wait::until(
        "the guest to finish drawing (its banner)",
        Duration::from_secs(60),
        || {
            display.touch_viewer();
            if let Some(rows) = display.take_dirty_rows(&mode) {
                taken.push(rows);
            }
            read_text(&serial).contains(BANNER)
        },
    );
    // The band was painted just before the banner: follow the refreshes until they have shown
    // it (the refresh thread runs at its own pace). Without a dirty log the VM refreshes the
    // whole screen at every tick; with one, refreshes report only the band's rows.
    let vm_log = library.bundle("screen").join("logs/vm.log");
    let no_dirty_log = wait::poll(
        &format!(
            "a refresh of only the band {DISPLAY_BAND:?} (or of the whole screen, without a dirty log)"
        ),
        Duration::from_secs(20),
        || {
            display.touch_viewer();
            if let Some(rows) = display.take_dirty_rows(&mode) {
                taken.push(rows);
            }
            let no_dirty_log = read_text(&vm_log).contains("no dirty log");
            let shown = if no_dirty_log {
                taken.contains(&(0..HEIGHT))
            } else {
                // The picture is drawn top to bottom, so the refreshes after the last one that
                // reached below the band saw the band alone. One of them must exist, and together
                // they have seen all of its rows (one may catch the guest halfway through the
                // band; refreshes of the picture passing over the band's rows do not count).
                let after_picture = taken
                    .iter()
                    .rposition(|r| r.end > DISPLAY_BAND.end)
                    .map_or(0, |i| i + 1);
                let band = &taken[after_picture..];
                band.iter().any(|r| !r.is_empty())
                    && DISPLAY_BAND
                        .clone()
                        .all(|y| band.iter().any(|r| r.contains(&y)))
            };
            if shown {
                Ok(no_dirty_log)
            } else {
                Err(format!(
                    "dirty rows {taken:?} (a dirty log: {})",
                    if no_dirty_log { "no" } else { "yes" }
                ))
            }
        },
    );
    if no_dirty_log {
        vivarium_e2e::guest_disk::loud(
            "NOTE: this KVM gives no dirty log; the VM refreshes the whole screen at every tick",
        );
    } else {
        println!("KVM's dirty log works here: the dirty rows taken were {taken:?}");
        // And an idle screen reports nothing: the guest only spins now.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(display.take_dirty_rows(&mode), None, "the screen is idle");
    }

    let png = keep_dir().join("handmade-display.png");
    let shown = library.json(&["screenshot", "screen", png.to_str().unwrap()]);
    assert_eq!(shown["width"], WIDTH);
    assert_eq!(shown["height"], HEIGHT);
    let (w, h, rgba) = decode_png(&png);
    assert_eq!((w, h), (WIDTH, HEIGHT));
    let expected = display_picture(WIDTH, HEIGHT);
    if let Some(first) = rgba.iter().zip(&expected).position(|(a, b)| a != b) {
        let pixel = first / 4;
        panic!(
            "the screenshot differs from the picture first at ({}, {}): {:?} instead of {:?}",
            pixel as u32 % WIDTH,
            pixel as u32 / WIDTH,
            &rgba[pixel * 4..pixel * 4 + 4],
            &expected[pixel * 4..pixel * 4 + 4]
        );
    }

    // The display is sealed shared memory, never a file in the runtime folder: nothing is
    // left behind. Once the VM is off, screenshot says it is not running.
    let runtime = display_path(&core_library(&library), "screen");
    assert!(
        !runtime.exists(),
        "no display file at {}",
        runtime.display()
    );
    library.ok(&["stop", "--force", "screen"]);
    wait_until("the VM to stop", Duration::from_secs(10), || {
        library.json(&["status", "screen"])["state"] == "stopped"
    });
    let refused = library.fails(11, &["screenshot", "screen", png.to_str().unwrap()]);
    assert!(refused.contains("not running"), "{refused}");
}

#[test]
fn screenshot_refuses_clearly_and_touches_nothing() {
    let library = TempLibrary::new();
    let out = library.scratch().join("shot.png");
    std::fs::write(&out, b"keep me").unwrap();
    let missing = library.fails(3, &["screenshot", "nope", out.to_str().unwrap()]);
    assert!(missing.contains("no VM named"), "{missing}");
    create_handmade_vm(&library, "headless");
    let none = library.fails(5, &["screenshot", "headless", out.to_str().unwrap()]);
    assert!(none.contains("has no display"), "{none}");
    assert!(none.contains("--display"), "{none}");
    create_display_vm(&library, "stopped", "800x600");
    let stopped = library.fails(11, &["screenshot", "stopped", out.to_str().unwrap()]);
    assert!(stopped.contains("not running"), "{stopped}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}
