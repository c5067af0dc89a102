//! A real Debian kernel boots under Vivarium's own KVM backend, inside the nested rig (real
//! `/dev/kvm` in a software-emulated machine), driven through the `vivarium` command line as a
//! user would: import a disk, run, change settings, run again.
//!
//! One rig run, three boots:
//! 1. checks CPUs, memory, the disk's sha256, a write (then read back on the host side after
//!    the VM stopped: it persisted), virtio-rng, the virtio devices and the PS/2 keyboard and
//!    mouse; the guest powers off
//!    (ACPI S5) and `vivarium run` exits 0;
//! 2. the disk is made read-only and an image is inserted in the CD-ROM drive (`set --iso`):
//!    the guest's write is refused and the image is unchanged; the guest finds the virtio-scsi
//!    CD-ROM as `/dev/sr0` with the image's size and contents; the guest reboots, Vivarium
//!    resets the machine and it boots again with the drive still there; Ctrl-C powers off;
//! 3. the guest waits for the ACPI power button; SIGTERM to `vivarium run` presses it and the
//!    guest shuts down cleanly.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::path::Path;

use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig};

const DISK_BYTES: usize = 2 << 20;
const HASHED_BYTES: usize = 1 << 20;
const WRITE_OFFSET: usize = 64 << 10;
const GUEST_CPUS: u32 = 2;
const GUEST_MIB: u64 = 256;
/// The CD-ROM medium: any file works; a multiple of the 2048-byte sector.
const CD_BYTES: usize = 3 << 20;

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let checks = "uptime,cpus,mem,blk-sha256,blk-size,blk-write,rng,virtio,rtc,input";
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
cp "$VIVARIUM_RIG_FILES/disk.img" disk.img
base="console=ttyS0 quiet panic=-1"
{wait_for}
stop_vm() {{ # PID SIGNAL: send SIGNAL, give the VM 60 s to stop; returns its exit code
    kill -"$2" "$1"
    n=0
    while kill -0 "$1" 2>/dev/null && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done
    if kill -0 "$1" 2>/dev/null; then
        echo "VIVARIUM-RIG-MARK vivarium did not stop on SIG$2"
        kill -9 "$1"
    fi
    wait "$1"
}}
$V host
$V import guest disk.img --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "$base vivarium.checks={checks} vivarium.blk_len={HASHED_BYTES} vivarium.blk_write_off={WRITE_OFFSET} vivarium.then=poweroff" \
    --cpus {GUEST_CPUS} --memory {GUEST_MIB} --network none --display none || exit 10
D="$VIVARIUM_HOME/vms/guest.vivm/disks/disk0.raw"

echo "VIVARIUM-RIG-MARK boot1-start"
echo "VIVARIUM-RESULT rig_epoch=$(date +%s)"
$V run guest
echo "VIVARIUM-RESULT boot1_exit=$?"
echo "VIVARIUM-RIG-MARK boot1-end"
written=$(dd if="$D" bs=512 skip={skip} count=1 2>/dev/null | head -c 22 | tr ' ' _)
echo "VIVARIUM-RESULT persisted=$written"

sum_before=$(sha256sum "$D" | cut -d' ' -f1)
$V set guest --disk-read-only on --iso "$VIVARIUM_RIG_FILES/cd.img" \
    --cmdline "$base vivarium.checks=blk-ro,cdrom-sha256,blk-size,virtio vivarium.ro_dev=vda vivarium.blk_dev=sr0 vivarium.cd_len={CD_BYTES} vivarium.then=reboot" || exit 11
$V run guest > boot2.log 2>&1 &
pid=$!
wait_for boot2.log VIVARIUM-GUEST-DONE 120 2
stop_vm $pid INT
echo "VIVARIUM-RESULT boot2_exit=$?"
echo "VIVARIUM-RESULT boot2_boots=$(grep -c VIVARIUM-GUEST-READY boot2.log)"
echo "VIVARIUM-RESULT boot2_$(grep -m1 -o 'blk_ro=[A-Za-z]*' boot2.log)"
for key in cdrom_sha256 blk_bytes virtio_ids; do
    # One value per boot: the CD-ROM must look the same after the reset.
    echo "VIVARIUM-RESULT boot2_$key=$(grep -o "$key=[0-9a-f,]*" boot2.log | cut -d= -f2 | sort -u | tr '\n' / | sed 's#/$##')"
done
echo "VIVARIUM-RESULT boot2_cd_reports=$(grep -c cdrom_sha256= boot2.log)"
grep -i -m5 "sr0\|scsi" boot2.log
$V set guest --eject || exit 13
sum_after=$(sha256sum "$D" | cut -d' ' -f1)
[ "$sum_before" = "$sum_after" ] && echo "VIVARIUM-RESULT ro_unchanged=yes" || echo "VIVARIUM-RESULT ro_unchanged=no"

$V set guest --disk-read-only off --cmdline "$base vivarium.then=acpi-wait" || exit 12
$V run guest > boot3.log 2>&1 &
pid=$!
wait_for boot3.log VIVARIUM-GUEST-WAITING
echo "VIVARIUM-RIG-MARK boot3-button"
stop_vm $pid TERM
echo "VIVARIUM-RESULT boot3_exit=$?"
grep -q "powered off" boot3.log && echo "VIVARIUM-RESULT boot3_powered_off=yes"
grep -q "reboot: Power down" boot3.log && echo "VIVARIUM-RESULT boot3_clean=yes"
tail -n 5 boot3.log

$V list
exit 0
"#,
        skip = WRITE_OFFSET / 512,
    )
}

#[test]
fn vivarium_boots_debian_in_the_rig_with_disk_reboot_and_power_button() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_boot", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let disk = scratch.path().join("disk.img");
    write_pattern_disk(&disk, DISK_BYTES, 0x2545_f491_4f6c_dd1d);
    let disk_sha256 = host_sha256(&disk, HASHED_BYTES);
    let vivarium = rig::small_vivarium(scratch.path());
    let cd = scratch.path().join("cd.img");
    write_pattern_disk(&cd, CD_BYTES, 0x9e37_79b9_7f4a_7c15);
    let cd_sha256 = host_sha256(&cd, CD_BYTES);

    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(&disk, "disk.img")
        .file(&cd, "cd.img")
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .expect("the rig starts");
    let boot1 = match (
        run.time_of("VIVARIUM-RIG-MARK boot1-start"),
        run.time_of("VIVARIUM-GUEST-READY"),
    ) {
        (Some(start), Some(ready)) => format!("{:.1} s", (ready - start).as_secs_f64()),
        _ => "?".into(),
    };
    loud(&format!(
        "RIG vivarium: guest ready {boot1} after `vivarium run` started; whole rig run {:.1} s",
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
    // Boot 1: the machine as configured, the disk, and a clean ACPI power-off.
    run.expect("cpus", &GUEST_CPUS.to_string());
    let mem_kib: u64 = run
        .result("mem_kib")
        .and_then(|v| v.parse().ok())
        .expect("mem_kib reported");
    assert!(
        mem_kib > GUEST_MIB * 1024 * 6 / 10 && mem_kib <= GUEST_MIB * 1024,
        "MemTotal {mem_kib} KiB for a {GUEST_MIB} MiB guest"
    );
    run.expect("blk_sha256", &disk_sha256);
    run.expect("blk_bytes", &DISK_BYTES.to_string());
    run.expect("blk_write", "ok");
    run.expect("rng_bytes", "64");
    run.expect("rng_source", "virtio_rng.0");
    run.expect("virtio_ids", "2,4");
    // The CMOS clock: Linux's rtc_cmos binds it through ACPI and reads the host's time (the
    // rig's clock when the VM started, give or take the boot).
    run.expect("rtc_driver", "rtc_cmos");
    let rtc: i64 = run
        .result("rtc_epoch")
        .and_then(|v| v.parse().ok())
        .expect("rtc_epoch");
    let rig: i64 = run
        .result("rig_epoch")
        .and_then(|v| v.parse().ok())
        .expect("rig_epoch");
    assert!(
        (0..300).contains(&(rtc - rig)),
        "the guest's RTC says {rtc}, the rig's clock said {rig} when the VM started"
    );
    // The i8042, found through ACPI PnP: atkbd on the translated keyboard, psmouse with the
    // IntelliMouse wheel.
    let inputs = run.result("input_devices").unwrap_or_default();
    for device in ["AT_Translated_Set_2_keyboard", "ImPS/2_Generic_Wheel_Mouse"] {
        assert!(
            inputs.contains(device),
            "{device} missing from the guest's input devices {inputs:?}\n{}",
            run.transcript()
        );
    }
    run.expect("boot1_exit", "0");
    run.expect("persisted", &format!("VIVARIUM-PATTERN_{WRITE_OFFSET}"));
    // Boot 2: read-only is enforced, and a guest reboot resets the machine.
    let read_only = run.result("boot2_blk_ro").unwrap_or_default();
    assert!(
        ["EROFS", "EPERM", "EACCES", "EIO"].contains(&read_only.as_str()),
        "a write to the read-only disk gave {read_only:?}\n{}",
        run.transcript()
    );
    run.expect("ro_unchanged", "yes");
    let boots: u32 = run
        .result("boot2_boots")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        boots >= 2,
        "the guest's reboot did not boot it again\n{}",
        run.transcript()
    );
    run.expect("boot2_exit", "0");
    // Boot 2 (both boots, before and after the reset): the CD-ROM behind virtio-scsi.
    run.expect("boot2_cdrom_sha256", &cd_sha256);
    run.expect("boot2_blk_bytes", &CD_BYTES.to_string());
    let reports: u32 = run
        .result("boot2_cd_reports")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        reports >= 2,
        "the CD-ROM was not checked after the reset\n{}",
        run.transcript()
    );
    let ids = run.result("boot2_virtio_ids").unwrap_or_default();
    let mut ids: Vec<&str> = ids.trim().split(',').collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["2", "4", "8"],
        "virtio devices with the CD-ROM\n{}",
        run.transcript()
    );
    // Boot 3: the host's power button shuts the guest down cleanly.
    run.expect("boot3_exit", "0");
    run.expect("boot3_powered_off", "yes");
    run.expect("boot3_clean", "yes");
}
