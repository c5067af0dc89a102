//! Firmware boot through the real `vivarium` binary on the host's KVM (SeaBIOS runs on any
//! `/dev/kvm`, the software-only `kvm_pvm` included): a VM made from a BIOS-bootable ISO boots
//! its CD while its disk is empty, the BIOS console and the boot sector's text are on the
//! VM's screen in the standard VGA's text mode (through SeaBIOS's VGA BIOS), the disk boots
//! once it holds a boot sector, and `start --boot-from cdrom` boots the CD that once; a boot
//! sector that writes the VGA text buffer at 0xb8000 itself, with no BIOS call, shows its
//! words and colours on the screen.

use std::time::{Duration, Instant};

use vivarium_e2e::boot_sector::{printing_boot_sector, text_buffer_boot_sector, write_boot_iso};
use vivarium_e2e::gate;
use vivarium_e2e::screen::Picture;
use vivarium_e2e::vga_text::{TextScreen, VgaFont};
use vivarium_e2e::vivarium::TempLibrary;
use vivarium_e2e::vm_process::{
    PowerOffOnDrop, kvm_usable, read_text, wait_for_serial, wait_until,
};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// The VGA BIOS the screen runs, whose font the screenshots are read with.
const VGA_BIOS: &str = "/usr/share/seabios/vgabios-stdvga.bin";

/// Whether the test can run: KVM, and Debian's SeaBIOS (`cargo xtask test` installs it, and
/// there its absence is a failure).
fn can_run(test: &str) -> bool {
    kvm_usable(test) && gate::runs(test, gate::file_missing(SEABIOS, "seabios"))
}

/// The `screenshot` folder people look at (target/test-screenshots).
fn keep_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let dir = exe
        .ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps")
        .join("test-screenshots");
    std::fs::create_dir_all(&dir).expect("a folder for screenshots");
    dir
}

/// The text lines on a BIOS console picture: the index (at 16 pixels a line) of each line
/// with at least 4 rows that have a pixel brighter than the black background (the blinking
/// underline cursor, 2 rows, is not text).
fn text_lines(picture: &Picture) -> Vec<usize> {
    let width = picture.width as usize;
    let pixels: Vec<[u8; 3]> = picture.pixels().collect();
    let mut lit_rows_per_line = std::collections::BTreeMap::<usize, usize>::new();
    for (y, row) in pixels.chunks(width).enumerate() {
        if row
            .iter()
            .any(|p| p.iter().map(|c| u32::from(*c)).sum::<u32>() > 300)
        {
            *lit_rows_per_line.entry(y / 16).or_default() += 1;
        }
    }
    lit_rows_per_line
        .into_iter()
        .filter(|(_, rows)| *rows >= 4)
        .map(|(line, _)| line)
        .collect()
}

#[test]
fn a_vm_from_a_bios_iso_boots_its_cd_on_the_screen_then_its_disk() {
    if !can_run("vm_firmware") {
        return;
    }
    let library = TempLibrary::new();
    let iso = write_boot_iso(
        &library.scratch().join("boot.iso"),
        &printing_boot_sector(
            "Hello from a BIOS boot sector on the CD",
            "boot sector ran from the CD",
        ),
    );
    let created = library.json(&[
        "create",
        "bios",
        "--iso",
        iso.to_str().unwrap(),
        "--disk-size",
        "64M",
        "--memory",
        "128M",
        "--network",
        "none",
        "--display",
        "1024x768",
    ]);
    assert_eq!(created["created"]["boot"]["kind"], "disk", "{created}");
    let host = library.ok(&["host"]);
    assert!(
        host.contains("BIOS (SeaBIOS): /usr/share/seabios/"),
        "{host}"
    );

    // The disk is empty: SeaBIOS goes on to the CD.
    {
        let _guard = PowerOffOnDrop::new(&library, "bios");
        library.ok(&["start", "bios"]);
        wait_for_serial(
            &library,
            "bios",
            "boot sector ran from the CD",
            Duration::from_secs(60),
        );
        // The VGA BIOS drew SeaBIOS's console and the boot sector's line on the screen:
        // "SeaBIOS (version ...)", "Booting from Hard Disk...", "Boot failed: not a bootable
        // disk", an empty line, "Booting from DVD/CD...", and the boot sector's greeting.
        // The screen is read until it shows those lines (the refresh runs a few times a
        // second), bounded.
        let shot = keep_dir().join("firmware-bios-cd.png");
        let expected = vec![0, 1, 2, 4, 5];
        let font = VgaFont::load(std::path::Path::new(VGA_BIOS)).expect("the VGA BIOS's font");
        // Each line is written a character at a time and the screen is redrawn a few times
        // a second, so a picture can hold a line half-written: the wait is for the whole
        // text, not for the rows to have some.
        let shows_all = |picture: &Picture| {
            (picture.width, picture.height) == (720, 400)
                && text_lines(picture) == expected
                && TextScreen::read(picture, &font, 9).is_ok_and(|screen| {
                    screen.line(0).starts_with("SeaBIOS (version ")
                        && screen
                            .line(5)
                            .starts_with("Hello from a BIOS boot sector on the CD")
                })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let picture = loop {
            library.ok(&["screenshot", "bios", shot.to_str().unwrap()]);
            let picture = Picture::load(&shot).expect("a PNG");
            if shows_all(&picture) {
                break picture;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed the BIOS console's lines {expected:?} in VGA text \
                 mode (720x400): it is {}x{} with text on {:?}, reading:\n{} (see {})",
                picture.width,
                picture.height,
                text_lines(&picture),
                TextScreen::read(&picture, &font, 9)
                    .map(|screen| screen.text())
                    .unwrap_or_default(),
                shot.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let screen = TextScreen::read(&picture, &font, 9).expect("a text screen");
        assert!(
            screen
                .line(5)
                .starts_with("Hello from a BIOS boot sector on the CD"),
            "{}",
            screen.text()
        );
        library.ok(&["stop", "--force", "bios"]);
    }

    // "Install" a system: a boot sector on the VM's disk. The next start boots it, with no
    // setting changed.
    let disk = std::fs::read_dir(library.bundle("bios").join("disks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    std::os::unix::fs::FileExt::write_all_at(
        &file,
        &printing_boot_sector("installed system", "boot sector ran from the disk"),
        0,
    )
    .unwrap();
    drop(file);
    {
        let _guard = PowerOffOnDrop::new(&library, "bios");
        library.ok(&["start", "bios"]);
        wait_for_serial(
            &library,
            "bios",
            "boot sector ran from the disk",
            Duration::from_secs(60),
        );
        library.ok(&["stop", "--force", "bios"]);
    }

    // Boot from the CD this once: the CD boots, and the settings still say disk.
    let serial = library.bundle("bios").join("logs/serial.log");
    let before = read_text(&serial).matches("ran from the CD").count();
    {
        let _guard = PowerOffOnDrop::new(&library, "bios");
        library.ok(&["start", "bios", "--boot-from", "cdrom"]);
        wait_until("the CD to boot once more", Duration::from_secs(60), || {
            read_text(&serial).matches("ran from the CD").count() > before
        });
        library.ok(&["stop", "--force", "bios"]);
    }
    let info = library.json(&["info", "bios"]);
    assert_eq!(info["config"]["boot"]["kind"], "disk", "{info}");
}

#[test]
fn a_boot_sector_writing_the_text_buffer_shows_on_the_screen() {
    if !can_run("vm_firmware")
        || !gate::runs("vm_firmware", gate::file_missing(VGA_BIOS, "seabios"))
    {
        return;
    }
    let font = VgaFont::load(std::path::Path::new(VGA_BIOS)).expect("the VGA BIOS's font");
    let library = TempLibrary::new();
    // Yellow on blue, at the start of row 20, straight into 0xb8000.
    let words = "Written to 0xB8000 by the boot sector";
    let iso = write_boot_iso(
        &library.scratch().join("text.iso"),
        &text_buffer_boot_sector(words, 0x1e, 20, "text buffer written"),
    );
    library.json(&[
        "create",
        "text",
        "--iso",
        iso.to_str().unwrap(),
        "--memory",
        "64M",
        "--network",
        "none",
        "--display",
        "1024x768",
    ]);
    let _guard = PowerOffOnDrop::new(&library, "text");
    library.ok(&["start", "text"]);
    wait_for_serial(
        &library,
        "text",
        "text buffer written",
        Duration::from_secs(60),
    );
    let shot = keep_dir().join("firmware-text-buffer.png");
    let deadline = Instant::now() + Duration::from_secs(30);
    let screen = loop {
        library.ok(&["screenshot", "text", shot.to_str().unwrap()]);
        let picture = Picture::load(&shot).expect("a PNG");
        if let Ok(screen) = TextScreen::read(&picture, &font, 9)
            && screen.line(20).starts_with(words)
        {
            break screen;
        }
        assert!(
            Instant::now() < deadline,
            "the screen never showed the boot sector's words on row 20 (see {})",
            shot.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The colours of attribute 0x1e through the VGA BIOS's palette: yellow on blue, every
    // cell of the words (spaces too), and the rest of the row as the BIOS cleared it.
    let (yellow, blue) = ([255, 255, 85], [0, 0, 170]);
    for column in 0..words.len() {
        let cell = screen.cell(20, column);
        assert_eq!(cell.bg, blue, "column {column} (see {})", shot.display());
        if words.as_bytes()[column] != b' ' {
            assert_eq!(cell.fg, yellow, "column {column} (see {})", shot.display());
        }
    }
    let after = screen.cell(20, words.len() + 1);
    assert_eq!((after.ch, after.bg), (Some(b' '), [0, 0, 0]));
    // SeaBIOS's console is still above it.
    assert!(screen.line(0).starts_with("SeaBIOS"), "{}", screen.text());
    library.ok(&["stop", "--force", "text"]);
}

#[test]
fn booting_a_cd_needs_a_drive() {
    if !can_run("vm_firmware") {
        return;
    }
    let library = TempLibrary::new();
    library.ok(&[
        "create",
        "nocd",
        "--disk-size",
        "16M",
        "--memory",
        "64M",
        "--network",
        "none",
        "--display",
        "none",
    ]);
    let out = library.run(&["start", "nocd", "--boot-from", "cdrom"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no CD-ROM drive"), "{stderr}");
}
