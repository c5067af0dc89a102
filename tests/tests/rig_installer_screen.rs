//! The Debian installer on the VM's screen, inside the nested rig: `vivarium create --iso`
//! with the real installer ISO (`vivarium_e2e::installer_iso`), its default boot entry (the
//! text installer on the console, not the serial one), and the keyboard.
//!
//! One rig run, one boot: the script starts the VM and takes a screenshot every few seconds
//! until the screen holds a picture (not the blank or scrolling boot console) that stays the
//! same: the installer's first screen, "Select a language". It presses Enter with `vivarium
//! type --key enter`, which chooses the highlighted language, and waits for the next, different screen.
//! Both screenshots come out of the rig; the test checks each is the installer's text
//! interface (newt's light grey dialog filling most of the screen inside a blue border)
//! and that Enter changed the dialog, and keeps them in `target/test-screenshots/` to be
//! looked at.
//!
//! Then the installer finds the disc it booted from: the netboot installer has no CD step, so
//! the fixture's initrds carry the CD-ROM modules Debian's netinst initrd has
//! (`vivarium_e2e::installer_cd_modules`). On the installer's shell on tty2 (Alt+F2, Enter,
//! both through `vivarium key`), a command typed with `vivarium type` asks the installer's own
//! `list-devices cd` (what its CD detection uses: udev's `cdrom_id` answers from the drive's
//! MMC replies) for the CD-ROM drives, mounts `/dev/sr0` and reads the disc's `.disk/info`,
//! writing both to the serial port, where the script reads them. The shell's screen is kept
//! too.
//!
//! Needs the installer ISO (`cargo xtask fixtures --installer-iso`) and the rig's
//! prerequisites; without them the test says so loudly and passes, unless
//! `VIVARIUM_REQUIRE_RIG=1`, where it fails.

use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::installer_iso;
use vivarium_e2e::rig::{self, Rig};

/// The colour of newt's dialogs on the Linux console (the VGA palette's light grey), as
/// `vivarium screenshot --json` names a dominant colour: on a 1024x768 console the installer's
/// dialog fills most of the screen, inside a blue border.
const NEWT_GREY: &str = "#aaaaaa";

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let carry = rig::CARRY_SH;
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
{carry}
{wait_for}
# settled OUT [DIFFERENT_FROM]: wait (up to 10 minutes) for an installer screen (mostly newt's
# grey dialog) that two screenshots 3 s apart agree on (and that differs from DIFFERENT_FROM),
# save it as OUT.
settled() {{
    rm -f /tmp/last.png
    n=0
    while [ $n -lt 100 ]; do
        sleep 3; n=$((n+1))
        $V --json screenshot installer /tmp/now.png > /tmp/now.json 2>/dev/null || continue
        if grep -q '"dominant_color":"{NEWT_GREY}"' /tmp/now.json && [ -f /tmp/last.png ] && cmp -s /tmp/now.png /tmp/last.png; then
            if [ -z "$2" ] || ! cmp -s /tmp/now.png "$2"; then
                cp /tmp/now.png "$1"
                return 0
            fi
        fi
        cp /tmp/now.png /tmp/last.png
    done
    echo "VIVARIUM-RIG-MARK the screen never settled on a new picture"
    return 1
}}
$V create installer --iso "$VIVARIUM_RIG_FILES/installer.iso" --memory 1G --network none \
    --display 1024x768 || exit 10
$V start installer || exit 11
echo "VIVARIUM-RIG-MARK started"
settled /tmp/first.png || exit 12
echo "VIVARIUM-RIG-MARK first screen"
carry first /tmp/first.png
$V type installer --key enter
echo "VIVARIUM-RESULT key_exit=$?"
settled /tmp/second.png /tmp/first.png || exit 13
echo "VIVARIUM-RIG-MARK second screen"
carry second /tmp/second.png
# The installer's shell on tty2 asks for the CD-ROM drives and reads the disc.
S="$VIVARIUM_HOME/vms/installer.vivm/logs/serial.log"
$V key installer alt+f2 || exit 14
sleep 3
$V key installer enter || exit 15
sleep 3
$V type installer 'echo CD-DRIVES: $(list-devices cd) > /dev/ttyS0; mkdir -p /m; mount -t iso9660 -o ro /dev/sr0 /m && echo CD-INFO: $(cat /m/.disk/info) > /dev/ttyS0' --key enter || exit 16
# The disc's info line comes last, after the drives' line: wait for the part that is checked.
wait_for "$S" 'CD-INFO: Debian GNU/Linux 12' 120 && echo "VIVARIUM-RESULT cd_info=yes"
sed -n 's/^CD-DRIVES: *\(.*\)$/VIVARIUM-RESULT cd_drives=\1/p' "$S" | tr -d '\r'
tr -d '\r' < "$S" | tail -n 5
$V screenshot installer /tmp/shell.png && carry shell /tmp/shell.png
$V stop --force installer > /dev/null
exit 0
"#
    )
}

/// Share of the picture's pixels for which `test` holds.
fn share(picture: &image::RgbaImage, test: impl Fn(&image::Rgba<u8>) -> bool) -> f64 {
    let hits = picture.pixels().filter(|p| test(p)).count();
    hits as f64 / (picture.width() * picture.height()) as f64
}

/// newt's screen background (the border around the dialog): the console palette's blue.
fn is_blue(p: &image::Rgba<u8>) -> bool {
    p.0 == [0, 0, 0xaa, 255]
}

/// newt's dialog: the console palette's light grey.
fn is_grey(p: &image::Rgba<u8>) -> bool {
    p.0 == [0xaa, 0xaa, 0xaa, 255]
}

#[test]
fn the_installer_shows_its_first_screen_and_enter_moves_on() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_installer_screen", None) else {
        return;
    };
    let Some(iso) = installer_iso::installer_iso_or_skip("rig_installer_screen") else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(iso.path(), "installer.iso")
        .memory_mib(3072)
        .timeout(std::time::Duration::from_secs(1500))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG installer screen: whole rig run {:.1} s, first screen after {:.1} s",
        run.elapsed.as_secs_f64(),
        run.time_of("VIVARIUM-RIG-MARK first screen")
            .unwrap_or_default()
            .saturating_sub(run.time_of("VIVARIUM-RIG-MARK started").unwrap_or_default())
            .as_secs_f64()
    ));
    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the rig\n{}",
        run.transcript()
    );
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
    run.expect("key_exit", "0");
    if let Some(png) = run.carried().get("shell") {
        let kept = rig::screenshot_dir().join("installer-shell.png");
        std::fs::write(&kept, png).expect("keep the screenshot");
        loud(&format!(
            "RIG installer screen: the shell on tty2 in {}",
            kept.display()
        ));
    }
    assert_eq!(
        run.result("cd_drives").as_deref(),
        Some("/dev/sr0"),
        "the installer's `list-devices cd` did not find the CD-ROM drive\n{}",
        run.transcript()
    );
    run.expect("cd_info", "yes");

    let files = run.carried();
    let mut pictures = Vec::new();
    for name in ["first", "second"] {
        let png = files
            .get(name)
            .unwrap_or_else(|| panic!("no {name} screenshot came out\n{}", run.transcript()));
        let kept = rig::screenshot_dir().join(format!("installer-{name}.png"));
        std::fs::write(&kept, png).expect("keep the screenshot");
        let picture = image::load_from_memory(png)
            .expect("the screenshot is a PNG")
            .to_rgba8();
        assert_eq!(
            (picture.width(), picture.height()),
            (1024, 768),
            "{name}: the screen has the VM's configured size"
        );
        let blue = share(&picture, is_blue);
        let grey = share(&picture, is_grey);
        loud(&format!(
            "RIG installer screen: {name}: {:.0} % newt blue, {:.0} % dialog grey, in {}",
            blue * 100.0,
            grey * 100.0,
            kept.display()
        ));
        assert!(
            grey > 0.5 && blue > 0.02,
            "{name}: not the installer's text interface ({:.0} % blue, {:.0} % grey); see {}",
            blue * 100.0,
            grey * 100.0,
            kept.display()
        );
        pictures.push(picture);
    }
    let changed = pictures[0]
        .pixels()
        .zip(pictures[1].pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        changed > 1024 * 768 / 100,
        "Enter did not move the installer to another screen ({changed} pixels changed)"
    );
}
