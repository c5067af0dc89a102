//! A real Debian guest in its own VM process, driven through the command line exactly as a
//! user would, inside the nested rig (real `/dev/kvm` in a software-emulated machine).
//!
//! One rig run, two boots:
//! 1. `vivarium start` returns and the VM keeps running; `status` and `list` (other
//!    processes) show it running; `console` (input from a pipe) shows the guest's boot from
//!    the backlog; `pause`/`resume` show in `status`; `stop` presses the power button, the
//!    guest's acpid powers it off cleanly, and `stop` returns once it is off: the last run
//!    is "powered off".
//! 2. a console attached from the start shows live output and ends when the VM stops;
//!    `stop --force` powers the VM off.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use vivarium_e2e::fixtures::Fixtures;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig, RigRun};

/// The `vivarium` binary, stripped into a temporary folder so the rig's initramfs stays small.
fn small_vivarium(scratch: &Path) -> PathBuf {
    let bin = vivarium_e2e::vivarium::binary();
    let copy = scratch.join("vivarium");
    std::fs::copy(&bin, &copy).expect("copy the vivarium binary");
    let _ = Command::new("strip").arg(&copy).status();
    copy
}

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
base="console=ttyS0 panic=-1 vivarium.then=acpi-wait"
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
wait_for() {{ # FILE TEXT: wait up to 120 s for TEXT in FILE
    n=0
    while [ $n -lt 240 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        usleep 500000; n=$((n+1))
    done
    echo "VIVARIUM-RIG-MARK gave up waiting for $2 in $1"
    return 1
}}
field() {{ # NAME KEY: a string field of `vivarium --json status NAME`
    $V --json status "$1" | tr ',{{}}' '\n\n\n' | grep "\"$2\"" | head -n 1 | cut -d'"' -f4
}}
$V create guest --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "$base" --no-disk --cpus 1 --memory 256 --network none --display none || exit 10

echo "VIVARIUM-RIG-MARK boot1-start"
$V start guest
echo "VIVARIUM-RESULT start_exit=$?"
echo "VIVARIUM-RESULT state_after_start=$(field guest state)"
$V list
$V --json list | grep -q '"state":"running"' && echo "VIVARIUM-RESULT list_running=yes"
wait_for "$S" VIVARIUM-GUEST-WAITING
echo "VIVARIUM-RIG-MARK boot1-waiting"
echo | $V console guest > console1.log 2>&1
echo "VIVARIUM-RESULT console1_exit=$?"
grep -q VIVARIUM-GUEST-READY console1.log && echo "VIVARIUM-RESULT console_backlog=yes"
$V pause guest
echo "VIVARIUM-RESULT state_paused=$(field guest state)"
$V resume guest
echo "VIVARIUM-RESULT state_resumed=$(field guest state)"
$V stop --timeout 120 guest
echo "VIVARIUM-RESULT stop_exit=$?"
echo "VIVARIUM-RESULT state_stopped=$(field guest state)"
$V --json status guest | grep -q '"exit":"powered-off"' && echo "VIVARIUM-RESULT last_run_powered_off=yes"
grep -q VIVARIUM-GUEST-POWER-BUTTON "$S" && echo "VIVARIUM-RESULT power_button_seen=yes"
grep -q "reboot: Power down" "$S" && echo "VIVARIUM-RESULT clean_power_down=yes"

echo "VIVARIUM-RIG-MARK boot2-start"
$V start guest || exit 11
sleep 600 | $V console guest > console2.log 2>&1 &
console=$!
wait_for console2.log VIVARIUM-GUEST-WAITING && echo "VIVARIUM-RESULT console_live=yes"
$V stop --force guest
echo "VIVARIUM-RESULT force_exit=$?"
n=0
while kill -0 $console 2>/dev/null && [ $n -lt 20 ]; do usleep 500000; n=$((n+1)); done
kill -0 $console 2>/dev/null && echo "VIVARIUM-RESULT console_ended=no" || echo "VIVARIUM-RESULT console_ended=yes"
echo "VIVARIUM-RESULT state_forced=$(field guest state)"
tail -n 3 console2.log
$V list
exit 0
"#
    )
}

fn expect(run: &RigRun, key: &str, want: &str) {
    assert_eq!(
        run.result(key).as_deref(),
        Some(want),
        "result {key}\n{}",
        run.transcript()
    );
}

#[test]
fn a_real_guest_runs_in_its_own_process_driven_by_the_cli() {
    let prerequisites = rig::missing_prerequisite()
        .map(Err)
        .unwrap_or_else(Fixtures::locate);
    let fixtures = match prerequisites {
        Ok(fixtures) => fixtures,
        Err(reason) if std::env::var("VIVARIUM_REQUIRE_RIG").is_ok_and(|v| v == "1") => {
            panic!("VIVARIUM_REQUIRE_RIG=1 but the rig cannot run: {reason}")
        }
        Err(reason) => {
            loud(&format!(
                "SKIPPED: rig_vivarium_process: {reason} (cargo xtask test sets this up)"
            ));
            return;
        }
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = small_vivarium(scratch.path());
    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG vivarium process: whole rig run {:.1} s",
        run.elapsed.as_secs_f64()
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
    // Boot 1: start, status from other processes, console backlog, pause/resume, a clean
    // shutdown through the power button.
    expect(&run, "start_exit", "0");
    expect(&run, "state_after_start", "running");
    expect(&run, "list_running", "yes");
    expect(&run, "console1_exit", "0");
    expect(&run, "console_backlog", "yes");
    expect(&run, "state_paused", "paused");
    expect(&run, "state_resumed", "running");
    expect(&run, "stop_exit", "0");
    expect(&run, "state_stopped", "stopped");
    expect(&run, "last_run_powered_off", "yes");
    expect(&run, "power_button_seen", "yes");
    expect(&run, "clean_power_down", "yes");
    // Boot 2: a live console that ends with the VM, and a forced power-off.
    expect(&run, "console_live", "yes");
    expect(&run, "force_exit", "0");
    expect(&run, "console_ended", "yes");
    expect(&run, "state_forced", "stopped");
}
