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

use std::path::Path;

use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
base="console=ttyS0 panic=-1 vivarium.then=acpi-wait"
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
{wait_for}
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

#[test]
fn a_real_guest_runs_in_its_own_process_driven_by_the_cli() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_process", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let vivarium = rig::small_vivarium(scratch.path());
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
    run.expect("start_exit", "0");
    run.expect("state_after_start", "running");
    run.expect("list_running", "yes");
    run.expect("console1_exit", "0");
    run.expect("console_backlog", "yes");
    run.expect("state_paused", "paused");
    run.expect("state_resumed", "running");
    run.expect("stop_exit", "0");
    run.expect("state_stopped", "stopped");
    run.expect("last_run_powered_off", "yes");
    run.expect("power_button_seen", "yes");
    run.expect("clean_power_down", "yes");
    // Boot 2: a live console that ends with the VM, and a forced power-off.
    run.expect("console_live", "yes");
    run.expect("force_exit", "0");
    run.expect("console_ended", "yes");
    run.expect("state_forced", "stopped");
}
