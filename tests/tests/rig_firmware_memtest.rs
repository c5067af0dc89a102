//! Memtest86+ (Debian's `memtest86+x64.iso` and `memtest86+ia32.iso`) booted the way a PC
//! boots it, inside the nested rig: SeaBIOS, the ISO's El Torito floppy image (memtest's own
//! boot sector), and memtest's test screen, which it writes straight into the VGA text buffer
//! at 0xb8000 — shown only because the screen is the standard VGA with its legacy text mode.
//!
//! One rig run, both ISOs one after the other: `create --iso` (a BIOS VM booting its CD) and
//! `start`. The script takes the screen until memtest's ready screen is on it, its header and
//! its "<Enter> to start testing" prompt (the screenshot's text is read against the VGA BIOS's
//! font by `vivarium-screen-check --has`), bounded, and keeps that picture (a); presses Enter;
//! takes the screen until the prompt and the "Init." status are gone (b), then until the
//! screen changed again (c), each bounded. The test reads the three pictures' text and
//! colours: the header in its colours, the blue screen, the build named on the last row, the
//! ready prompt in (a), the test running with no errors in (b) and (c), and its elapsed time
//! or progress moved on from (b) to (c).

use std::path::{Path, PathBuf};

use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::memtest::{self, Flavour};
use vivarium_e2e::rig::{self, Rig};
use vivarium_e2e::screen::Picture;
use vivarium_e2e::vga_text::{TextScreen, VgaFont};

/// Debian's SeaBIOS folder (the BIOS and the VGA BIOS, whose font the pictures are read with).
const SEABIOS_DIR: &str = "/usr/share/seabios";
const VGA_BIOS: &str = "vgabios-stdvga.bin";

fn rig_script(vivarium: &Path, check: &Path) -> String {
    let v = vivarium.display();
    let c = check.display();
    let carry = rig::CARRY_SH;
    let rom = format!("{SEABIOS_DIR}/{VGA_BIOS}");
    let mut script = format!(
        r##"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
C={c}
{carry}
# shot NAME FILE: the screen of NAME in FILE.
shot() {{ $V screenshot "$1" "$2" > /dev/null 2>&1; }}
# until_text NAME FILE LIMIT CHECK...: take the screen into FILE every second until the
# screen check CHECK... on it succeeds, at most LIMIT times.
until_text() {{
    name=$1; file=$2; limit=$3; shift 3
    n=0
    while :; do
        sleep 1; n=$((n+1))
        shot "$name" "$file" && "$@" "$file" && return 0
        if [ $n -gt "$limit" ]; then
            echo "VIVARIUM-RIG-MARK $name: gave up after $limit s waiting for: $*"
            $C --text {rom} "$file" | sed "s/^/VIVARIUM-RIG-SEEN /"
            [ -f "$file" ] && carry "$name-failed" "$file"
            return 1
        fi
    done
}}
both() {{ $C --has {rom} "$3" "$1" && $C --has {rom} "$3" "$2"; }}
lacks() {{ ! $C --has {rom} "$3" "$1" && ! $C --has {rom} "$3" "$2"; }}
differs() {{ ! $C --same "$1" "$2" > /dev/null; }}
# memtest NAME ISO: boot it; wait for memtest's ready screen (its header and its prompt) and
# keep it (a); Enter; wait
# until it tests (its prompt and "Init." gone) and keep that (b); wait for the screen to move
# on (its timer, progress) and keep that (c).
memtest() {{
    $V create "$1" --iso "$VIVARIUM_RIG_FILES/$2" --cpus 1 --memory 256M --network none \
        --display 1024x768 || return 1
    $V start "$1" || return 1
    echo "VIVARIUM-RIG-MARK $1 started"
    until_text "$1" /tmp/$1-a.png 300 both "Memtest86+ v" "to start testing" || return 1
    echo "VIVARIUM-RIG-MARK $1 ready"
    carry $1-a /tmp/$1-a.png
    $V key "$1" enter
    echo "VIVARIUM-RESULT $1_key_exit=$?"
    until_text "$1" /tmp/$1-b.png 120 lacks "to start testing" "Init." || return 1
    echo "VIVARIUM-RIG-MARK $1 testing"
    carry $1-b /tmp/$1-b.png
    until_text "$1" /tmp/$1-c.png 120 differs /tmp/$1-b.png || return 1
    echo "VIVARIUM-RIG-MARK $1 moved"
    carry $1-c /tmp/$1-c.png
    for f in b c; do
        $C --text {rom} /tmp/$1-$f.png | sed "s/^/VIVARIUM-RIG-SEEN $1-$f: /"
    done
    $V stop --force "$1" > /dev/null
}}
"##
    );
    for (i, flavour) in Flavour::ALL.iter().enumerate() {
        script.push_str(&format!(
            "memtest {} {} || exit {}\n",
            flavour.short(),
            flavour.iso_name(),
            11 + i
        ));
    }
    script.push_str("exit 0\n");
    script
}

/// The `vivarium-screen-check` binary beside the `vivarium` binary (`cargo build --workspace`
/// builds both).
fn screen_check() -> PathBuf {
    let bin = vivarium_e2e::vivarium::binary().with_file_name("vivarium-screen-check");
    assert!(
        bin.is_file(),
        "`{}` is missing: build it with `cargo build -p vivarium-e2e` (cargo xtask test does)",
        bin.display()
    );
    bin
}

#[test]
fn memtest86plus_x64_and_ia32_boot_through_seabios_and_show_their_test_screen() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_firmware_memtest", None) else {
        return;
    };
    let Some(isos) = memtest::memtest_or_skip("rig_firmware_memtest") else {
        return;
    };
    if !gate::runs(
        "rig_firmware_memtest",
        gate::file_missing(Path::new(SEABIOS_DIR).join(VGA_BIOS), "seabios"),
    ) {
        return;
    }
    let font = VgaFont::load(&Path::new(SEABIOS_DIR).join(VGA_BIOS)).expect("the VGA BIOS font");
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let check = scratch.path().join("vivarium-screen-check");
    std::fs::copy(screen_check(), &check).expect("copy the screen check");
    let _ = std::process::Command::new("strip").arg(&check).status();
    let mut rig = Rig::new(&fixtures, &rig_script(&vivarium, &check))
        .binary(&vivarium)
        .binary(&check)
        .data(SEABIOS_DIR);
    for flavour in Flavour::ALL {
        rig = rig.file(isos.path(flavour), flavour.iso_name());
    }
    let run = rig
        .memory_mib(2048)
        .timeout(std::time::Duration::from_secs(1200))
        .run()
        .expect("the rig starts");
    let since_start = |name: &str, mark: &str| {
        run.time_of(&format!("VIVARIUM-RIG-MARK {name} {mark}"))
            .unwrap_or_default()
            .saturating_sub(
                run.time_of(&format!("VIVARIUM-RIG-MARK {name} started"))
                    .unwrap_or_default(),
            )
            .as_secs_f64()
    };
    loud(&format!(
        "RIG firmware memtest: whole rig run {:.1} s; start to memtest's ready screen {:.1} s (x64), \
         {:.1} s (ia32)",
        run.elapsed.as_secs_f64(),
        since_start("x64", "ready"),
        since_start("ia32", "ready"),
    ));
    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the rig\n{}",
        run.transcript()
    );
    let carried = run.carried();
    for flavour in Flavour::ALL {
        let name = flavour.short();
        let mut screens = Vec::new();
        for shot in ["a", "b", "c"] {
            let Some(png) = carried.get(&format!("{name}-{shot}")) else {
                panic!("no {name}-{shot} screenshot\n{}", run.transcript());
            };
            let kept = rig::screenshot_dir().join(format!("firmware-memtest-{name}-{shot}.png"));
            std::fs::write(&kept, png).expect("keep the screenshot");
            let picture = Picture::from_png(png).expect("a PNG");
            let screen = TextScreen::read(&picture, &font, 9)
                .unwrap_or_else(|e| panic!("{name}: {e} (see {})", kept.display()));
            screens.push((kept, picture, screen));
        }
        check_memtest_screens(flavour, &screens);
    }
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
}

/// What the three pictures of one memtest must show: (a) its ready screen, (b) testing,
/// (c) testing further on.
fn check_memtest_screens(flavour: Flavour, screens: &[(PathBuf, Picture, TextScreen)]) {
    let build = match flavour {
        Flavour::X64 => ".x64",
        Flavour::Ia32 => ".x32",
    };
    for (kept, picture, screen) in screens {
        let see = || format!("{flavour:?}, see {}:\n{}", kept.display(), screen.text());
        assert_eq!(
            (picture.width, picture.height),
            (720, 400),
            "80x25 text in 9x16 cells ({})",
            see()
        );
        // The header: "Memtest86+ v6.x" in black on grey on the first row, its "+" red.
        let (row, column) = screen
            .find("Memtest86+ v")
            .unwrap_or_else(|| panic!("memtest's header ({})", see()));
        assert_eq!(row, 0, "the header on the first row ({})", see());
        let m = screen.cell(0, column);
        assert_eq!((m.fg, m.bg), ([0, 0, 0], [170, 170, 170]), "{}", see());
        let plus = screen.cell(0, column + 9);
        assert!(
            plus.fg[0] > 128 && plus.fg[1] < 128 && plus.fg[2] < 128 && plus.bg == m.bg,
            "a red + on grey: {plus:?} ({})",
            see()
        );
        // Blue below the header, and the key help on grey on the last row, naming the build.
        let body = screen.cell(12, 40);
        assert_eq!(body.bg, [0, 0, 170], "the blue screen ({})", see());
        let last = screen.line(24);
        assert!(
            last.contains("<ESC> Exit") && last.trim_end().ends_with(build),
            "the last row names the {build} build ({})",
            see()
        );
        assert_eq!(screen.cell(24, 2).bg, [170, 170, 170], "{}", see());
        assert!(screen.find("Memory  :  256MB").is_some(), "{}", see());
    }
    let text = |i: usize| screens[i].2.text();
    let see = |i: usize| format!("{flavour:?}, see {}:\n{}", screens[i].0.display(), text(i));
    assert!(
        text(0).contains("<Enter> to start testing") && text(0).contains("Status: Init."),
        "the ready screen ({})",
        see(0)
    );
    for i in [1, 2] {
        assert!(
            !text(i).contains("to start testing") && text(i).contains("Status: Testing"),
            "testing after Enter ({})",
            see(i)
        );
        assert_eq!(
            field_after(&screens[i].2, "Errors:").as_deref(),
            Some("0"),
            "no memory errors ({})",
            see(i)
        );
    }
    // The test runs on: its elapsed time and progress moved between the two pictures.
    let progress = |i: usize| {
        let time = field_after(&screens[i].2, "Time:")
            .and_then(|t| {
                let parts: Vec<u64> = t
                    .split(':')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                Some(parts.iter().fold(0, |acc, p| acc * 60 + p))
            })
            .unwrap_or_else(|| panic!("an elapsed time ({})", see(i)));
        let test = field_after(&screens[i].2, "Test").unwrap_or_default();
        (time, test)
    };
    let (before, after) = (progress(1), progress(2));
    assert!(
        after.0 >= before.0 && after != before,
        "the test moved on: {before:?} then {after:?} ({} and {})",
        see(1),
        see(2)
    );
}

/// The word after the first `label` on the screen.
fn field_after(screen: &TextScreen, label: &str) -> Option<String> {
    let (row, column) = screen.find(label)?;
    screen.line(row)[column + label.len()..]
        .split_whitespace()
        .next()
        .map(str::to_string)
}
