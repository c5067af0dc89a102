//! The CD-ROM drive with a real Debian guest, inside the nested rig: the guest's `sr` driver
//! reads the disc behind virtio-scsi, and notices when the host changes it while it runs.
//!
//! One rig run, one boot (`vivarium start`, the guest ends in a shell on its console):
//! 1. the guest hashes the first disc (`/dev/sr0`) at boot and reports its size;
//! 2. while a guest process holds `/dev/sr0` open, Linux locks the drive and `vivarium
//!    eject` is refused with the reason; once it let go, `vivarium eject` empties the drive
//!    and the guest's next read of `/dev/sr0` is refused;
//! 3. `vivarium insert` puts in a second disc of another size: the guest sees the new size
//!    and contents (the medium change reached Linux, which dropped its cached pages).
//!
//! Commands reach the guest's shell through `vivarium console` with input from a pipe; the
//! guest prints `CDRESULT key=value` lines (typed as `CD""RESULT` so that the shell's echo
//! of the command line never matches), which the script copies out of the serial log.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::path::Path;

use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig};

/// The first disc: a multiple of the 2048-byte sector.
const FIRST_BYTES: usize = 1 << 20;
/// The second disc, of another size, to show the guest re-reads the capacity.
const SECOND_BYTES: usize = (3 << 20) - 5 * 2048;

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
{wait_for}
guest() {{ # COMMAND: type a command line on the guest's console
    printf '%s\n' "$1" | $V console guest > /dev/null 2>&1
}}
$V create guest --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "console=ttyS0 quiet panic=-1 vivarium.checks=cdrom-sha256 vivarium.cd_len={FIRST_BYTES} vivarium.then=shell" \
    --no-disk --cpus 1 --memory 256 --network none --display none || exit 10
$V set guest --iso "$VIVARIUM_RIG_FILES/first.img" || exit 11
$V start guest || exit 12
wait_for "$S" VIVARIUM-GUEST-DONE || exit 13
sleep 2
guest 'echo CD""RESULT boot_size=$(blockdev --getsize64 /dev/sr0)'
wait_for "$S" "CDRESULT boot_size"

# While a guest process holds the disc open, Linux locks the drive: the eject is refused.
# (The guest announces the holder once it has the disc open: Linux locked the drive then.)
guest 'sleep 600 < /dev/sr0 & h=$!; n=0; while ! ls -l /proc/$h/fd 2>/dev/null | grep -q /dev/sr0 && [ $n -lt 100 ]; do usleep 100000; n=$((n+1)); done; ls -l /proc/$h/fd 2>/dev/null | grep -q /dev/sr0 && echo CD""RESULT holder=started || echo CD""RESULT holder=not-open'
wait_for "$S" "CDRESULT holder=" || exit 14
$V eject guest 2> locked.err
echo "VIVARIUM-RESULT locked_eject_exit=$?"
grep -q "locked the CD-ROM drive" locked.err && echo "VIVARIUM-RESULT locked_reason=yes"
cat locked.err
# Once the holder has closed the disc (its files are gone), Linux has unlocked the drive.
guest 'h=$(pidof sleep); kill $h; n=0; while ls /proc/$h/fd 2>/dev/null | grep -q . && [ $n -lt 100 ]; do usleep 100000; n=$((n+1)); done; echo CD""RESULT holder=stopped'
# (CDRESULT, not the command's own text: the shell echoes the command line as it is typed.)
wait_for "$S" "CDRESULT holder=stopped" || exit 15

$V eject guest
echo "VIVARIUM-RESULT eject_exit=$?"
guest 'head -c 2048 /dev/sr0 >/dev/null 2>&1 && echo CD""RESULT ejected_read=ok || echo CD""RESULT ejected_read=refused'
wait_for "$S" "CDRESULT ejected_read"

$V insert guest "$VIVARIUM_RIG_FILES/second.img"
echo "VIVARIUM-RESULT insert_exit=$?"
guest 'echo CD""RESULT new_size=$(blockdev --getsize64 /dev/sr0) new_sha256=$(head -c {SECOND_BYTES} /dev/sr0 | sha256sum | cut -d" " -f1)'
# The whole line, to the hash's last digit: the results are read out of it next.
wait_for "$S" "CDRESULT new_size=[0-9]* new_sha256=[0-9a-f]\{{64\}}"

tr -d '\r' < "$S" | grep '^CDRESULT ' | sed 's/^CDRESULT/VIVARIUM-RESULT/'
tr -d '\r' < "$S" | grep -o 'cdrom_sha256=[0-9a-f]*' | head -n 1 | sed 's/^/VIVARIUM-RESULT /'
$V stop --force guest
echo "VIVARIUM-RESULT stop_exit=$?"
tail -n 25 "$S"
exit 0
"#
    )
}

#[test]
fn the_guest_reads_the_cdrom_and_sees_eject_and_insert() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_cdrom", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let first = scratch.path().join("first.img");
    let second = scratch.path().join("second.img");
    write_pattern_disk(&first, FIRST_BYTES, 0x0123_4567_89ab_cdef);
    write_pattern_disk(&second, SECOND_BYTES, 0xfedc_ba98_7654_3210);
    let vivarium = rig::small_vivarium(scratch.path());

    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(&first, "first.img")
        .file(&second, "second.img")
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG vivarium CD-ROM: whole rig run {:.1} s",
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
    run.expect("cdrom_sha256", &host_sha256(&first, FIRST_BYTES));
    run.expect("boot_size", &FIRST_BYTES.to_string());
    run.expect("locked_eject_exit", "6");
    run.expect("locked_reason", "yes");
    run.expect("eject_exit", "0");
    run.expect("ejected_read", "refused");
    run.expect("insert_exit", "0");
    run.expect("new_size", &SECOND_BYTES.to_string());
    run.expect("new_sha256", &host_sha256(&second, SECOND_BYTES));
    run.expect("stop_exit", "0");
}
