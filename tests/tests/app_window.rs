//! The app in a real window under Xvfb (a software X server, drawn with the software
//! renderer) on a library of several VMs, one of them running (the hand-made guest on the
//! host's /dev/kvm, when it can run): screenshots of the library view and of the console are
//! saved to a folder the test prints, for people to look at. A second running VM is the
//! hand-made display guest, which draws its picture through the real path (framebuffer, the
//! VM process's dirty log, the display file): its Screen tab (Fit and 1:1) and sidebar
//! thumbnail are screenshotted too, before and after a click grabs it.
//!
//! Needs `Xvfb`, `xdotool` and ImageMagick's `import` (`cargo xtask test` installs them);
//! without them the test says so loudly and skips, unless `VIVARIUM_REQUIRE_RIG=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::vivarium::{TempLibrary, binary};
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, core_library, create_display_vm, create_handmade_vm, kvm_usable, read_text,
    wait_until,
};

/// The VM with a screen.
const SCREEN_VM: &str = "Workstation";

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 800;

/// A child process that is killed (by its pid) when the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts Xvfb on a free display; returns it and the display name.
fn start_xvfb() -> (KillOnDrop, String) {
    let mut child = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0"])
        .arg(format!("{WIDTH}x{HEIGHT}x24"))
        .args(["-nolisten", "tcp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb starts");
    let mut out = child.stdout.take().expect("Xvfb's stdout");
    let mut number = String::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut out, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        number.push(byte[0] as char);
    }
    assert!(!number.is_empty(), "Xvfb did not report its display");
    (KillOnDrop(child), format!(":{}", number.trim()))
}

fn xdotool(display: &str, args: &[&str]) -> String {
    let out = Command::new("xdotool")
        .env("DISPLAY", display)
        .args(args)
        .output()
        .expect("xdotool runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn screenshot(display: &str, path: &Path) {
    let status = Command::new("import")
        .env("DISPLAY", display)
        .args(["-window", "root"])
        .arg(path)
        .status()
        .expect("import runs");
    assert!(status.success(), "screenshot {} failed", path.display());
}

/// Where the screenshots go: `$VIVARIUM_SCREENSHOTS`, else `app-screenshots` in the target dir.
fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIVARIUM_SCREENSHOTS") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test knows its path");
    exe.ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps")
        .join("app-screenshots")
}

fn make_library(library: &TempLibrary) {
    let scratch = library.scratch();
    let iso = scratch.join("installer.iso");
    std::fs::File::create(&iso)
        .and_then(|f| f.set_len(8 << 20))
        .unwrap();
    let kernel = scratch.join("vmlinuz");
    std::fs::write(&kernel, b"kernel").unwrap();
    let iso = iso.to_str().unwrap();
    let kernel = kernel.to_str().unwrap();
    for (name, os, os_name, extra) in [
        (
            "Debian 12 desktop",
            "debian12",
            "Debian 12",
            vec!["--iso", iso],
        ),
        (
            "Ubuntu server",
            "ubuntu24.04",
            "Ubuntu 24.04",
            vec!["--kernel", kernel],
        ),
        ("Fedora 41", "fedora41", "Fedora 41", vec!["--iso", iso]),
        (
            "Arch build box",
            "arch",
            "Arch Linux",
            vec!["--kernel", kernel],
        ),
        (
            "Windows 11",
            "win11",
            "Windows 11",
            vec!["--iso", iso, "--memory", "8G"],
        ),
        ("FreeBSD 14", "freebsd14", "FreeBSD 14", vec!["--iso", iso]),
    ] {
        let mut args = vec![
            "create",
            name,
            "--os",
            os,
            "--os-name",
            os_name,
            "--notes",
            "Made by the window test",
        ];
        // `create --iso` inspects the ISO (this one is a blank stand-in): the installer VMs
        // are made from the kernel and get the disc in their drive afterwards.
        let with_cd = extra.first() == Some(&"--iso");
        if with_cd {
            args.extend(["--kernel", kernel]);
            args.extend(extra.iter().skip(2));
        } else {
            args.extend(extra);
        }
        library.ok(&args);
        if with_cd {
            library.ok(&["set", name, "--iso", iso]);
        }
    }
    library.ok(&[
        "clone",
        "Ubuntu server",
        "Ubuntu server staging",
        "--linked",
    ]);
    let broken = library.bundle("old experiment");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("vm.toml"), "format = 1\ncpus = \n").unwrap();
}

#[test]
fn the_app_in_a_real_window_with_screenshots() {
    let tools = [
        ("Xvfb", "xvfb"),
        ("xdotool", "xdotool"),
        ("import", "imagemagick"),
    ];
    let missing = tools
        .iter()
        .find_map(|(program, package)| gate::program_missing(program, package));
    if !gate::runs("app_window", missing) {
        return;
    }
    let library = TempLibrary::new();
    make_library(&library);
    let running = kvm_usable("app_window (the running VM)");
    let _guard = running.then(|| {
        create_handmade_vm(&library, "A tiny guest");
        PowerOffOnDrop::new(&library, "A tiny guest")
    });
    let _screen_guard = running.then(|| {
        create_display_vm(&library, SCREEN_VM, "640x480");
        PowerOffOnDrop::new(&library, SCREEN_VM)
    });
    if running {
        library.ok(&["start", "A tiny guest"]);
        library.ok(&["start", SCREEN_VM]);
        // The display guest prints its banner once its picture is complete.
        let serial = library.bundle(SCREEN_VM).join("logs/serial.log");
        wait_until(
            "the display guest's picture",
            Duration::from_secs(60),
            || read_text(&serial).contains(vivarium_e2e::handmade::BANNER),
        );
    }
    let home = library.home().to_path_buf();
    let (_xvfb, display) = start_xvfb();
    // What the app says goes to a file, so a window that never appears is explained.
    let app_log = library.scratch().join("app-window.log");
    let app_stderr = std::fs::File::create(&app_log).expect("the app's log file");
    let app = Command::new(binary())
        .env("DISPLAY", &display)
        .env("VIVARIUM_HOME", &home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::null())
        .stderr(app_stderr)
        .spawn()
        .expect("the app starts");
    let mut app = KillOnDrop(app);
    // A debug build drawing with the software Vulkan driver takes a while on a busy machine
    // to open its window; the bound is generous, and an app that ends early fails at once.
    let deadline = Instant::now() + Duration::from_secs(180);
    let window = loop {
        let found = xdotool(&display, &["search", "--name", "^Vivarium$"]);
        if let Some(id) = found.lines().next().filter(|id| !id.is_empty()) {
            break id.to_string();
        }
        let said = || {
            let text = read_text(&app_log);
            let start = text.len().saturating_sub(3000);
            text[text.floor_char_boundary(start)..].to_string()
        };
        if let Ok(Some(status)) = app.0.try_wait() {
            panic!(
                "the app ended ({status}) before its window appeared; it said:\n{}",
                said()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the app's window did not appear within 180 s; the app said:\n{}",
            said()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    xdotool(&display, &["windowmove", &window, "0", "0"]);
    let (w, h) = (WIDTH.to_string(), HEIGHT.to_string());
    xdotool(&display, &["windowsize", &window, &w, &h]);
    // The first frames compile shaders on the software renderer; let the listing settle.
    std::thread::sleep(Duration::from_secs(6));

    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // Rows are 50 px high below the filter box; the first VM (sorted) is "A tiny guest" when it
    // exists, else "Arch build box".
    let first_row_y = "146";
    xdotool(&display, &["mousemove", "120", first_row_y, "click", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    let library_shot = dir.join("library.png");
    screenshot(&display, &library_shot);
    let mut shots = vec![library_shot];
    if running {
        // The Console tab sits under the toolbar of the details pane.
        xdotool(&display, &["mousemove", "406", "252", "click", "1"]);
        std::thread::sleep(Duration::from_secs(2));
        // (Typing into the console is covered by the kittest test `app_gui`; under Xvfb
        // without a window manager the window never gets the X keyboard focus.)
        let console_shot = dir.join("console.png");
        screenshot(&display, &console_shot);
        shots.push(console_shot);

        // The VM with a screen: its row (rows in the library's order), which opens its
        // Screen tab; then a click into the picture grabs the keyboard and mouse.
        let names: Vec<String> = core_library(&library)
            .list()
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        let row = names.iter().position(|n| n == SCREEN_VM).unwrap();
        let row_y = (146 + 50 * row).to_string();
        xdotool(&display, &["mousemove", "120", &row_y, "click", "1"]);
        std::thread::sleep(Duration::from_secs(3));
        let screen_shot = dir.join("screen.png");
        screenshot(&display, &screen_shot);
        shots.push(screen_shot);
        // 1:1 (the bar's buttons sit right-aligned under the picture), then back to Fit.
        xdotool(&display, &["mousemove", "1022", "744", "click", "1"]);
        std::thread::sleep(Duration::from_secs(2));
        let actual_shot = dir.join("screen-1to1.png");
        screenshot(&display, &actual_shot);
        shots.push(actual_shot);
        xdotool(&display, &["mousemove", "978", "744", "click", "1"]);
        std::thread::sleep(Duration::from_secs(1));
        xdotool(&display, &["mousemove", "780", "480", "click", "1"]);
        std::thread::sleep(Duration::from_secs(2));
        let grabbed_shot = dir.join("screen-grabbed.png");
        screenshot(&display, &grabbed_shot);
        shots.push(grabbed_shot);
    }
    for shot in &shots {
        let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} is empty", shot.display());
        loud(&format!("app_window: screenshot {}", shot.display()));
    }
}
