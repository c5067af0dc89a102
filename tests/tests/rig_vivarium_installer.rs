//! The real Debian 12 installer, booted from the installer ISO fixture inside the nested rig:
//! `vivarium create --iso FILE --boot-entry serial` recognises the ISO and takes the kernel,
//! initrd and command line of its serial-console entry; started, the installer's first screen
//! ("Select a language") appears on `vivarium console`; Enter typed through the console moves
//! it to the next screen ("Select your location").
//!
//! One rig run, one boot. The ISO (140 MB) rides in the rig's initramfs; the guest gets 1 GiB.
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`; the installer ISO comes from
//! `cargo xtask fixtures --installer-iso`.

use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::installer_iso::{self, SERIAL_CMDLINE, SERIAL_ENTRY};
use vivarium_e2e::rig::{self, Rig};

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
VM="Debian 12"
S="$VIVARIUM_HOME/vms/$VM.vivm/logs/serial.log"
{wait_for}
screen() {{ # the end of the serial log without escape codes, for the transcript
    esc=$(printf '\033')
    tail -c 3000 "$S" | sed "s/$esc\[[0-9;?]*[A-Za-z]/ /g" | tr -d '\033' | tr '\r' '\n' \
        | grep -v '^ *$' | tail -n 30
}}
$V create --iso "$VIVARIUM_RIG_FILES/installer.iso" --boot-entry {SERIAL_ENTRY} \
    --display none --no-disk --network none --cpus 1 --memory 1024 > create.out 2>&1
echo "VIVARIUM-RESULT create_exit=$?"
cat create.out
sed -n 's/^OS: *\([^(]*\) (\([a-z0-9]*\),.*$/VIVARIUM-RESULT os_id=\2/p' create.out
grep -q "^Created \`$VM\`" create.out && echo "VIVARIUM-RESULT created=yes"
grep -q "(boot entry \"{SERIAL_ENTRY}\")" create.out && echo "VIVARIUM-RESULT entry=yes"
grep -q "It boots the installer's kernel with: {SERIAL_CMDLINE}$" create.out \
    && echo "VIVARIUM-RESULT serial_cmdline=yes"
start=$(date +%s)
$V start "$VM"
echo "VIVARIUM-RESULT start_exit=$?"
if wait_for "$S" "Select a language" 600; then
    echo "VIVARIUM-RESULT first_screen=yes first_screen_s=$(( $(date +%s) - start ))"
    # The title comes first; the rest of the screen is still being drawn.
    wait_for "$S" "Choose the language to be used for the installation process" 120 \
        && echo "VIVARIUM-RESULT language_prompt=yes"
    sleep 3
    # Enter through the serial console: English, the default, is chosen.
    printf '\r' | $V console "$VM" > /dev/null 2>&1
    wait_for "$S" "Select your location" 120 && echo "VIVARIUM-RESULT next_screen=yes"
fi
screen
$V stop --force "$VM"
echo "VIVARIUM-RESULT stop_exit=$?"
exit 0
"#
    )
}

#[test]
fn the_debian_installer_reaches_its_first_screens_on_the_serial_console() {
    let missing_iso = installer_iso::InstallerIso::locate().err();
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_installer", missing_iso) else {
        return;
    };
    let iso = installer_iso::InstallerIso::locate().expect("located above");
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());

    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(iso.path(), "installer.iso")
        .memory_mib(3072)
        .timeout(std::time::Duration::from_secs(1200))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG Debian installer: whole rig run {:.1} s, first screen {} s after start",
        run.elapsed.as_secs_f64(),
        run.result("first_screen_s").unwrap_or_else(|| "-".into())
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
    run.expect("create_exit", "0");
    run.expect("os_id", "debian12");
    run.expect("created", "yes");
    run.expect("entry", "yes");
    run.expect("serial_cmdline", "yes");
    run.expect("start_exit", "0");
    run.expect("first_screen", "yes");
    run.expect("language_prompt", "yes");
    run.expect("next_screen", "yes");
    run.expect("stop_exit", "0");
}
