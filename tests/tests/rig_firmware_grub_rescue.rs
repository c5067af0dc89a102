//! GRUB's rescue CD (Debian's `grub-rescue-cdrom.iso`, made by `grub-mkrescue` for BIOS PCs)
//! booted the way a PC boots it, inside the nested rig: SeaBIOS, the ISO's El Torito
//! no-emulation entry (GRUB's core image), GRUB's modules read from the CD through the BIOS,
//! its menu and its command line, all drawn on the BIOS console in VGA text mode.
//!
//! On the host, `vivarium inspect-iso` must make it a BIOS VM booting its CD (its sample
//! `grub.cfg` names kernels that are not on the disc, so there is nothing to boot directly).
//! One rig run: `create --iso` and `start`. The script looks at the screen (a screenshot read
//! against the VGA BIOS's font by `vivarium-screen-check --text`) until GRUB's menu is on it,
//! bounded, and keeps it (a); presses `c` (again when the menu or a "press any key" message
//! is still or again there: the menu's 30 s countdown may run out first) until GRUB's prompt
//! `grub>` is there (b); types `xx`, Ctrl+U (which clears the line), `set v=OK` and
//! `echo VIVARIUM-GRUB-$v`, so the output, `VIVARIUM-GRUB-OK`, is text that was never typed,
//! and looks until it shows (c); types `ls` and looks until GRUB lists the CD it booted from,
//! `(cd)` (d). The test reads the four pictures' text and colours on the host and keeps them
//! in `target/test-screenshots/`.

use std::path::{Path, PathBuf};

use vivarium_e2e::gate;
use vivarium_e2e::grub_rescue::{self, ISO_NAME};
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};
use vivarium_e2e::screen::Picture;
use vivarium_e2e::vga_text::{TextScreen, VgaFont};

/// Debian's SeaBIOS folder (the BIOS and the VGA BIOS, whose font the pictures are read with).
const SEABIOS_DIR: &str = "/usr/share/seabios";
const VGA_BIOS: &str = "vgabios-stdvga.bin";
/// The pictures the script takes, in order.
const SHOTS: [&str; 4] = ["menu", "prompt", "echo", "ls"];
/// The VGA's light grey and black, GRUB's console colours.
const GREY: [u8; 3] = [170, 170, 170];
const BLACK: [u8; 3] = [0, 0, 0];

fn rig_script(vivarium: &Path, check: &Path) -> String {
    let v = vivarium.display();
    let c = check.display();
    let carry = rig::CARRY_SH;
    let rom = format!("{SEABIOS_DIR}/{VGA_BIOS}");
    format!(
        r##"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
C={c}
{carry}
now_s() {{ read up rest < /proc/uptime; echo "${{up%.*}}"; }}
# look NAME: the screen of the VM in /tmp/NAME.png, its text in /tmp/NAME.txt.
look() {{
    $V screenshot grub /tmp/$1.png > /dev/null 2>&1 && $C --text {rom} /tmp/$1.png > /tmp/$1.txt
}}
# shows NAME NEEDLE...: whether the text in /tmp/NAME.txt holds every NEEDLE.
shows() {{
    name=$1; shift
    for needle in "$@"; do grep -qF -- "$needle" /tmp/$name.txt || return 1; done
}}
# gave_up NAME WHAT: says what was awaited and what the screen showed, and fails.
gave_up() {{
    echo "VIVARIUM-RIG-MARK gave up waiting for $1: $2"
    sed "s/^/VIVARIUM-RIG-SEEN /" /tmp/$1.txt
    [ -f /tmp/$1.png ] && carry $1-failed /tmp/$1.png
    tail -n 20 "$VIVARIUM_HOME/vms/grub.vivm/logs/vm.log" | sed "s/^/VIVARIUM-RIG-SEEN /"
    return 1
}}
# until_text NAME SECONDS NEEDLE...: look at the screen (about every second: a look costs
# seconds of the emulated CPU) until it shows every NEEDLE, for at most SECONDS; then carry
# the picture out as NAME.
until_text() {{
    name=$1; deadline=$(( $(now_s) + $2 )); shift 2
    : > /tmp/$name.txt
    while :; do
        sleep 1
        if look $name && shows $name "$@"; then
            echo "VIVARIUM-RIG-MARK $name"
            carry $name /tmp/$name.png
            return 0
        fi
        [ $(now_s) -gt $deadline ] && {{ gave_up $name "$*"; return 1; }}
    done
}}
# until_prompt SECONDS: look at the screen until it shows GRUB's prompt, pressing `c` again
# when it still (or again) shows the menu or a message waiting for a key 10 s after the last
# press (GRUB takes seconds to draw a screen here): the menu's countdown (30 s) may end before
# a look sees the menu; GRUB then tries the default entry, which fails, says so until a key is
# pressed, and shows the menu again.
until_prompt() {{
    deadline=$(( $(now_s) + $1 )); pressed=$(now_s)
    : > /tmp/prompt.txt
    while :; do
        sleep 1
        if look prompt; then
            if shows prompt "grub>"; then
                echo "VIVARIUM-RIG-MARK prompt"
                carry prompt /tmp/prompt.png
                return 0
            fi
            if [ $(now_s) -ge $((pressed + 10)) ] \
                && {{ shows prompt "executed automatically" || shows prompt "Press any key"; }}; then
                $V key grub c > /dev/null && echo "VIVARIUM-RIG-MARK pressed c again"
                pressed=$(now_s)
            fi
        fi
        [ $(now_s) -gt $deadline ] && {{ gave_up prompt "grub>"; return 1; }}
    done
}}
$V create grub --iso "$VIVARIUM_RIG_FILES/{ISO_NAME}" --cpus 1 --memory 256M --network none \
    --display 1024x768 > /tmp/create.out 2>&1 || {{ cat /tmp/create.out; exit 10; }}
$V --json info grub > /tmp/info.json && carry info /tmp/info.json
$V start grub || exit 11
echo "VIVARIUM-RIG-MARK started"
# GRUB's menu: its title, its first entry and its countdown.
until_text menu 300 "GNU GRUB" "GNU/Linux" "executed automatically" || exit 12
$V key grub c > /dev/null || exit 13
echo "VIVARIUM-RIG-MARK pressed c"
until_prompt 240 || exit 14
# A key stroke every 50 ms: GRUB reads the keyboard through the BIOS, polling. Ctrl+U first
# clears the line: of a stray `c` (a second one pressed while GRUB was still drawing its
# prompt), and of the `xx` typed to show that it does.
$V type grub xx --key ctrl+u --delay 50 > /dev/null || exit 15
$V type grub 'set v=OK' --key enter --delay 50 > /dev/null || exit 15
$V type grub 'echo VIVARIUM-GRUB-$v' --key enter --delay 50 > /dev/null || exit 15
until_text echo 120 "VIVARIUM-GRUB-OK" || exit 16
$V type grub 'ls' --key enter --delay 50 > /dev/null || exit 15
until_text ls 120 "(cd)" || exit 17
$V stop --force grub > /dev/null
exit 0
"##
    )
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

/// What `vivarium inspect-iso --json` says about the ISO, on the host.
fn inspect(iso: &Path) -> serde_json::Value {
    let out = std::process::Command::new(vivarium_e2e::vivarium::binary())
        .args(["--json", "inspect-iso"])
        .arg(iso)
        .output()
        .expect("run vivarium inspect-iso");
    assert!(
        out.status.success(),
        "inspect-iso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("inspect-iso's JSON")
}

#[test]
fn the_grub_rescue_iso_boots_through_seabios_to_its_prompt_and_runs_a_command() {
    let test = "rig_firmware_grub_rescue";
    let Some(fixtures) = rig::fixtures_or_skip(test, None) else {
        return;
    };
    let Some(iso) = grub_rescue::grub_rescue_or_skip(test) else {
        return;
    };
    if !gate::runs(
        test,
        gate::file_missing(Path::new(SEABIOS_DIR).join(VGA_BIOS), "seabios"),
    ) {
        return;
    }
    // A BIOS VM booting its CD: no kernel to extract, El Torito for BIOS only.
    let inspection = inspect(&iso.path());
    let plan = &inspection["iso"]["plan"];
    assert_eq!(plan["kind"], "needs-firmware", "{inspection:#}");
    assert_eq!(plan["firmware"], "bios", "{inspection:#}");
    assert_eq!(inspection["iso"]["bios_bootable"], true, "{inspection:#}");
    assert_eq!(inspection["iso"]["uefi_bootable"], false, "{inspection:#}");

    let font = VgaFont::load(&Path::new(SEABIOS_DIR).join(VGA_BIOS)).expect("the VGA BIOS font");
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let check = scratch.path().join("vivarium-screen-check");
    std::fs::copy(screen_check(), &check).expect("copy the screen check");
    let _ = std::process::Command::new("strip").arg(&check).status();
    let run = Rig::new(&fixtures, &rig_script(&vivarium, &check))
        .binary(&vivarium)
        .binary(&check)
        .data(SEABIOS_DIR)
        .file(iso.path(), ISO_NAME)
        .memory_mib(2048)
        .timeout(std::time::Duration::from_secs(900))
        .run()
        .expect("the rig starts");
    let since_start = |mark: &str| {
        run.time_of(&format!("VIVARIUM-RIG-MARK {mark}"))
            .unwrap_or_default()
            .saturating_sub(run.time_of("VIVARIUM-RIG-MARK started").unwrap_or_default())
            .as_secs_f64()
    };
    loud(&format!(
        "RIG firmware GRUB rescue (grub-rescue-pc {}): whole rig run {:.1} s; start to GRUB's \
         menu {:.1} s, to its prompt {:.1} s, to the echo {:.1} s, to ls {:.1} s",
        iso.version(),
        run.elapsed.as_secs_f64(),
        since_start("menu"),
        since_start("prompt"),
        since_start("echo"),
        since_start("ls"),
    ));
    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the rig\n{}",
        run.transcript()
    );
    let carried = run.carried();
    for (name, png) in &carried {
        if name.ends_with("-failed") {
            let kept = rig::screenshot_dir().join(format!("firmware-grub-rescue-{name}.png"));
            std::fs::write(&kept, png).expect("keep the screenshot");
            eprintln!("the last picture before giving up: {}", kept.display());
        }
    }
    // The VM `create` made: boot kind `disk` (its empty disk, then the CD), BIOS.
    let info: serde_json::Value = serde_json::from_slice(
        carried
            .get("info")
            .unwrap_or_else(|| panic!("no info of the VM\n{}", run.transcript())),
    )
    .expect("info's JSON");
    assert_eq!(info["config"]["boot"]["kind"], "disk", "{info:#}");
    assert!(
        info["config"]["firmware"].is_null() || info["config"]["firmware"] == "bios",
        "{info:#}"
    );
    let mut screens = Vec::new();
    for shot in SHOTS {
        let Some(png) = carried.get(shot) else {
            panic!("no {shot} screenshot\n{}", run.transcript());
        };
        let kept = rig::screenshot_dir().join(format!("firmware-grub-rescue-{shot}.png"));
        std::fs::write(&kept, png).expect("keep the screenshot");
        let picture = Picture::from_png(png).expect("a PNG");
        assert_eq!(
            (picture.width, picture.height),
            (720, 400),
            "80x25 text in 9x16 cells, see {}",
            kept.display()
        );
        let screen = TextScreen::read(&picture, &font, 9)
            .unwrap_or_else(|e| panic!("{shot}: {e} (see {})", kept.display()));
        screens.push((kept, screen));
    }
    check_screens(&screens);
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
}

/// What the pictures must show: (a) the menu, (b) the prompt, (c) the echo's output, (d) the
/// devices `ls` lists.
fn check_screens(screens: &[(PathBuf, TextScreen)]) {
    let see = |i: usize| format!("see {}:\n{}", screens[i].0.display(), screens[i].1.text());
    // (a) The menu: GRUB's title on the first rows, light grey on black; the first entry
    // highlighted (black on light grey), the others light grey on black; the countdown.
    let menu = &screens[0].1;
    let (row, column) = menu
        .find("GNU GRUB  version 2.")
        .unwrap_or_else(|| panic!("GRUB's title ({})", see(0)));
    assert!(row <= 2, "the title at the top ({})", see(0));
    let title = menu.cell(row, column);
    assert_eq!((title.fg, title.bg), (GREY, BLACK), "{}", see(0));
    let (first, at) = menu
        .find("GNU/Linux")
        .unwrap_or_else(|| panic!("the first entry ({})", see(0)));
    let entry = menu.cell(first, at);
    assert_eq!(
        (entry.fg, entry.bg),
        (BLACK, GREY),
        "the first entry highlighted ({})",
        see(0)
    );
    let (second, at) = menu
        .find("GNU (aka GNU/Hurd)")
        .unwrap_or_else(|| panic!("the second entry ({})", see(0)));
    assert_eq!(second, first + 1, "{}", see(0));
    let other = menu.cell(second, at);
    assert_eq!((other.fg, other.bg), (GREY, BLACK), "{}", see(0));
    assert!(
        menu.text().contains("executed automatically in"),
        "the countdown ({})",
        see(0)
    );
    // (b) The command line: GRUB's greeting and a prompt at the start of a row, grey on black.
    let prompt = &screens[1].1;
    assert!(
        prompt
            .text()
            .contains("Minimal BASH-like line editing is supported"),
        "{}",
        see(1)
    );
    assert!(
        !prompt.text().contains("GNU/Linux"),
        "the menu gone ({})",
        see(1)
    );
    let (row, column) = prompt
        .find("grub>")
        .unwrap_or_else(|| panic!("the prompt ({})", see(1)));
    assert_eq!(column, 0, "{}", see(1));
    let g = prompt.cell(row, 0);
    assert_eq!((g.fg, g.bg), (GREY, BLACK), "{}", see(1));
    // (c) The typed commands on prompt lines, and the echo's output alone on the next row.
    let echo = &screens[2].1;
    let (typed, _) = echo
        .find("grub> echo VIVARIUM-GRUB-$v")
        .unwrap_or_else(|| panic!("the echo command as typed ({})", see(2)));
    assert_eq!(
        echo.line(typed - 1).trim_end(),
        "grub> set v=OK",
        "the line cleared of `xx` by Ctrl+U ({})",
        see(2)
    );
    assert_eq!(
        echo.line(typed + 1).trim_end(),
        "VIVARIUM-GRUB-OK",
        "the output below the command ({})",
        see(2)
    );
    assert!(
        echo.line(typed + 2).starts_with("grub>"),
        "a new prompt ({})",
        see(2)
    );
    let out = echo.cell(typed + 1, 0);
    assert_eq!((out.fg, out.bg), (GREY, BLACK), "{}", see(2));
    // (d) `ls` lists the CD GRUB booted from.
    let ls = &screens[3].1;
    let (row, _) = ls
        .find("grub> ls")
        .unwrap_or_else(|| panic!("ls as typed ({})", see(3)));
    assert!(ls.line(row + 1).contains("(cd)"), "{}", see(3));
}
