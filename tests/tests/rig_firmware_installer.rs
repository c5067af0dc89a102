//! The Debian installer ISO booted the way a PC boots it, inside the nested rig: through
//! SeaBIOS (Debian's, carried into the rig at its host path), El Torito, isolinux and its
//! graphical menu (vesamenu in a VESA mode of the standard VGA's VGA BIOS), then Enter on the
//! serial entry starts the installer, whose first question ("Select a language") comes up.
//!
//! One rig run: the VM is made with `create --iso` (it boots the installer's kernel directly
//! by default) and started with `--boot-from cdrom`. The script waits for the menu on the
//! serial console (isolinux mirrors it there), takes the screen, chooses "Install on the serial
//! console" with Down and Enter through `vivarium key`, and waits for the installer's first
//! question on the serial console. The pictures come out of the rig; the test checks the menu
//! is vesamenu's 640x480 picture over Debian's splash, in the 640x480 VESA mode it asked for,
//! and keeps them in `target/test-screenshots/`.

use std::path::Path;

use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::installer_iso;
use vivarium_e2e::rig::{self, Rig};
use vivarium_e2e::screen::{Depth, Picture};

/// Debian's SeaBIOS folder (the BIOS and the VGA BIOS).
const SEABIOS_DIR: &str = "/usr/share/seabios";

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let carry = rig::CARRY_SH;
    format!(
        r##"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
{carry}
S="$VIVARIUM_HOME/vms/installer.vivm/logs/serial.log"
$V create installer --iso "$VIVARIUM_RIG_FILES/installer.iso" --memory 1G --network none \
    --display 1024x768 || exit 10
$V host | sed 's/^/VIVARIUM-RIG-MARK host: /'
$V start installer --boot-from cdrom || exit 11
echo "VIVARIUM-RIG-MARK started"
n=0
while ! grep -q 'installer menu (BIOS mode)' "$S" 2>/dev/null; do
    sleep 1; n=$((n+1))
    if [ $n -gt 300 ]; then
        echo "VIVARIUM-RIG-MARK no isolinux menu on the serial console"
        tail -c 2000 "$S"; tail -n 20 "$VIVARIUM_HOME/vms/installer.vivm/logs/vm.log"; exit 12
    fi
done
echo "VIVARIUM-RIG-MARK menu"
# vesamenu draws its picture right after it has written the menu on the serial console:
# take the screen until it is not all black and two screenshots a second apart agree (the
# picture is drawn completely), bounded. The standard VGA's VGA BIOS has the 640x480 mode
# vesamenu asks for (as with QEMU's -vga std); before it, isolinux is in VGA text mode.
rm -f /tmp/menu-last.png
n=0
while :; do
    sleep 1; n=$((n+1))
    if [ $n -gt 60 ]; then
        echo "VIVARIUM-RIG-MARK the menu never settled"; cat /tmp/menu.json; break
    fi
    $V --json screenshot installer /tmp/menu.png > /tmp/menu.json 2>/dev/null || continue
    if ! grep -q '"dominant_share":1.0' /tmp/menu.json && [ -f /tmp/menu-last.png ] \
        && cmp -s /tmp/menu.png /tmp/menu-last.png; then
        break
    fi
    cp /tmp/menu.png /tmp/menu-last.png
done
carry menu /tmp/menu.png
# Down to "Install on the serial console", then Enter: isolinux loads the installer's kernel
# and initrd through the BIOS from the CD, and the installer's first question comes up on the
# serial console.
$V key installer down
echo "VIVARIUM-RESULT down_exit=$?"
sleep 1
$V key installer enter
echo "VIVARIUM-RESULT key_exit=$?"
echo "VIVARIUM-RIG-MARK entered"
n=0
while ! grep -q 'Select a language' "$S" 2>/dev/null; do
    sleep 2; n=$((n+1))
    # 15 minutes: 98 s on an idle machine, 428 s with a build running beside the rig.
    if [ $n -gt 450 ]; then
        echo "VIVARIUM-RIG-MARK no installer on the serial console"
        tail -c 3000 "$S"; break
    fi
done
grep -q 'Select a language' "$S" && echo "VIVARIUM-RIG-MARK installer" && echo "VIVARIUM-RESULT installer=yes"
$V screenshot installer /tmp/after.png && carry after /tmp/after.png
$V stop --force installer > /dev/null
exit 0
"##
    )
}

#[test]
fn the_installer_iso_boots_through_seabios_and_isolinux_and_enter_starts_it() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_firmware_installer", None) else {
        return;
    };
    let Some(iso) = installer_iso::installer_iso_or_skip("rig_firmware_installer") else {
        return;
    };
    if !gate::runs(
        "rig_firmware_installer",
        gate::file_missing(Path::new(SEABIOS_DIR).join("bios-256k.bin"), "seabios"),
    ) {
        return;
    }
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .data(SEABIOS_DIR)
        .file(iso.path(), "installer.iso")
        .memory_mib(3072)
        .timeout(std::time::Duration::from_secs(1500))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG firmware installer: whole rig run {:.1} s, isolinux menu {:.1} s after start",
        run.elapsed.as_secs_f64(),
        run.time_of("VIVARIUM-RIG-MARK menu")
            .unwrap_or_default()
            .saturating_sub(run.time_of("VIVARIUM-RIG-MARK started").unwrap_or_default())
            .as_secs_f64(),
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
    let carried = run.carried();
    let keep = |name: &str, bytes: &[u8]| {
        let path = rig::screenshot_dir().join(name);
        std::fs::write(&path, bytes).expect("keep the screenshot");
        path
    };
    let menu_png = carried
        .get("menu")
        .unwrap_or_else(|| panic!("no menu screenshot\n{}", run.transcript()));
    let kept = keep("firmware-isolinux-menu.png", menu_png);
    let menu = Picture::from_png(menu_png).expect("a PNG");
    assert_eq!(
        (menu.width, menu.height),
        (640, 480),
        "vesamenu's VESA mode (see {})",
        kept.display()
    );
    // vesamenu's picture: Debian's splash (a dark teal, not black) with the menu over it.
    let (dominant, share) = menu.dominant(Depth::Rgb565);
    assert_ne!(
        dominant,
        [0, 0, 0],
        "the splash, not black ({})",
        kept.display()
    );
    assert!(
        share < 0.95,
        "the menu over the splash ({})",
        kept.display()
    );
    run.expect("down_exit", "0");
    run.expect("installer", "yes");
    loud(&format!(
        "RIG firmware installer: Enter to the installer's first question {:.1} s",
        run.time_of("VIVARIUM-RIG-MARK installer")
            .unwrap_or_default()
            .saturating_sub(run.time_of("VIVARIUM-RIG-MARK entered").unwrap_or_default())
            .as_secs_f64()
    ));
    if let Some(after) = carried.get("after") {
        keep("firmware-installer-after-enter.png", after);
    }
}
