//! A disk with GRUB installed for BIOS boots through SeaBIOS, inside the nested rig, as an
//! installed system boots: the firmware runs GRUB's boot sector and core image from the disk,
//! GRUB reads its configuration and the kernel from the ext2 root partition, and the Debian
//! kernel boots to the guest's marker (`vivarium_e2e::bios_disk`). Then the same for a linked
//! clone of that VM (a qcow2 overlay over the disk as its base): a clone boots through the
//! firmware exactly like its parent.
//!
//! One rig run: `vivarium import` makes a VM from the disk (boot kind `disk`), `start` boots
//! it, the script waits for the guest's marker and for the VM to power off on its own, then
//! clones it linked and does the same with the clone.

use std::path::Path;

use vivarium_e2e::bios_disk::{self, DONE_MARKER, MENU_ENTRY};
use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

const SEABIOS_DIR: &str = "/usr/share/seabios";

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    format!(
        r##"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
# boot NAME: start it, wait (bounded) for the guest's marker and for the power-off.
boot() {{
    S="$VIVARIUM_HOME/vms/$1.vivm/logs/serial.log"
    $V start "$1" || return 1
    echo "VIVARIUM-RIG-MARK $1 started"
    n=0
    while ! grep -q '{DONE_MARKER}' "$S" 2>/dev/null; do
        sleep 1; n=$((n+1))
        if [ $n -gt 240 ]; then
            echo "VIVARIUM-RIG-MARK $1: no marker"; tail -c 3000 "$S"; return 1
        fi
    done
    echo "VIVARIUM-RIG-MARK $1 marker"
    grep -q '{MENU_ENTRY}' "$S" && echo "VIVARIUM-RESULT $1_grub_menu=yes"
    sed -n "s/^VIVARIUM-RESULT \(.*\)$/VIVARIUM-RESULT $1_\1/p" "$S" | tr -d '\r'
    n=0
    while ! $V --json status "$1" 2>/dev/null | grep -q '"state":"stopped"'; do
        sleep 1; n=$((n+1)); [ $n -gt 60 ] && {{ echo "VIVARIUM-RIG-MARK $1 did not power off"; return 1; }}
    done
    $V --json info "$1" | grep -o '"exit":"[a-z-]*"' | sed "s/^/VIVARIUM-RESULT $1_last_run=/"
}}
cp "$VIVARIUM_RIG_FILES/bios-disk.raw" /tmp/disk.raw
$V import installed /tmp/disk.raw --cpus 1 --memory 256M --network none --display 800x600 || exit 10
boot installed || exit 11
$V clone --linked installed clone || exit 12
boot clone || exit 13
exit 0
"##
    )
}

#[test]
fn an_installed_grub_disk_boots_through_seabios_and_so_does_its_linked_clone() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_firmware_disk", None) else {
        return;
    };
    let Some(disk) = bios_disk::bios_disk_or_skip("rig_firmware_disk") else {
        return;
    };
    if !gate::runs(
        "rig_firmware_disk",
        gate::file_missing(Path::new(SEABIOS_DIR).join("bios-256k.bin"), "seabios"),
    ) {
        return;
    }
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .data(SEABIOS_DIR)
        .file(disk.path(), "bios-disk.raw")
        .memory_mib(2048)
        .timeout(std::time::Duration::from_secs(900))
        .run()
        .expect("the rig starts");
    let boot_time = |name: &str| {
        run.time_of(&format!("VIVARIUM-RIG-MARK {name} marker"))
            .unwrap_or_default()
            .saturating_sub(
                run.time_of(&format!("VIVARIUM-RIG-MARK {name} started"))
                    .unwrap_or_default(),
            )
            .as_secs_f64()
    };
    loud(&format!(
        "RIG firmware disk: whole rig run {:.1} s; start to marker {:.1} s (installed), {:.1} s \
         (linked clone)",
        run.elapsed.as_secs_f64(),
        boot_time("installed"),
        boot_time("clone")
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
    for vm in ["installed", "clone"] {
        run.expect(&format!("{vm}_grub_menu"), "yes");
        run.expect(&format!("{vm}_cpus"), "1");
        run.expect(&format!("{vm}_last_run"), "\"exit\":\"powered-off\"");
    }
}
