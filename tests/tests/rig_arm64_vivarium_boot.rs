//! Vivarium on KVM/arm64: the `virt` board boots the Debian arm64 kernel, inside the arm64
//! rig (an emulated arm64 machine whose KVM works), driven through the cross-built `vivarium`
//! command line as a user would on an arm64 Linux host: import a disk with a kernel, run it,
//! then a linked clone of it.
//!
//! One rig run, two boots:
//! 1. the VM (1 CPU, 256 MiB: with 2 CPUs about one boot in three hung in this rig, before
//!    the power-off or early, which is not understood yet) boots to its `/init` and checks
//!    CPUs, memory, the disk's sha256 over virtio-blk on PCI (MSI-X through the
//!    GICv2m frame), a write that persists, virtio-rng, the virtio devices, and powers off
//!    (PSCI `SYSTEM_OFF`): `vivarium run` exits 0;
//! 2. a linked clone (a qcow2 overlay over the disk) boots and reads the same disk contents;
//! 3. the VM started in the background reads a line from its UART: what `vivarium console`
//!    typed arrives byte for byte; then in a shell there `reboot -f` typed the same way resets
//!    the machine (PSCI `SYSTEM_RESET`) and the guest boots again, and `vivarium stop --force`
//!    powers it off.
//!
//! Prerequisites and skipping work as in `rig_arm64_qemu_baseline.rs`.

use std::path::Path;
use std::time::Duration;

use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig};

const DISK_BYTES: usize = 2 << 20;
const HASHED_BYTES: usize = 1 << 20;
const WRITE_OFFSET: usize = 64 << 10;
const GUEST_CPUS: u32 = 1;
const GUEST_MIB: u64 = 256;

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let checks = "uptime,cpus,mem,blk-sha256,blk-size,blk-write,rng,virtio";
    format!(
        r#"{wait_for}
export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
cp "$VIVARIUM_RIG_FILES/disk.img" disk.img
base="console=ttyS0 quiet panic=-1"
$V host
$V import guest disk.img --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "$base vivarium.checks={checks} vivarium.blk_len={HASHED_BYTES} vivarium.blk_write_off={WRITE_OFFSET} vivarium.then=poweroff" \
    --cpus {GUEST_CPUS} --memory {GUEST_MIB} --network none --display none || exit 10
D="$VIVARIUM_HOME/vms/guest.vivm/disks/disk0.raw"
echo "VIVARIUM-RIG-MARK boot1-start"
$V run guest
echo "VIVARIUM-RESULT boot1_exit=$?"
echo "VIVARIUM-RIG-MARK boot1-end"
written=$(dd if="$D" bs=512 skip={skip} count=1 2>/dev/null | head -c 22 | tr ' ' _)
echo "VIVARIUM-RESULT persisted=$written"
echo "VIVARIUM-RESULT parent_sha256=$(head -c {HASHED_BYTES} "$D" | sha256sum | cut -d' ' -f1)"
$V clone guest clone --linked || exit 11
$V set clone --cmdline "$base vivarium.checks=blk-sha256 vivarium.blk_len={HASHED_BYTES} vivarium.then=poweroff" || exit 12
$V run clone > clone.log 2>&1
echo "VIVARIUM-RESULT clone_exit=$?"
echo "VIVARIUM-RESULT clone_$(grep -m1 -o 'blk_sha256=[0-9a-f]*' clone.log)"
tail -n 3 clone.log
$V set guest --cmdline "$base vivarium.checks=console-echo vivarium.then=shell" || exit 13
$V start guest || exit 14
S="$VIVARIUM_HOME/vms/guest.vivm/logs/serial.log"
wait_for "$S" VIVARIUM-GUEST-CONSOLE-READY 90 || exit 15
(printf 'typed into the UART\n'; sleep 2) | $V console guest > console.log 2>&1
wait_for "$S" "console_typed=" 30
echo "VIVARIUM-RESULT typed=$(grep -m1 -o 'console_typed=[0-9a-f]*' "$S" | cut -d= -f2)"
wait_for "$S" VIVARIUM-GUEST-DONE 30
# The shell's line editor asks the terminal where its cursor is and takes the first bytes
# that come as the answer: an empty line first.
(usleep 500000; printf '\n'; sleep 1; printf 'reboot -f\n'; sleep 1) | $V console guest >> console.log 2>&1
wait_for "$S" VIVARIUM-GUEST-READY 90 2 && echo "VIVARIUM-RESULT rebooted=yes"
$V stop guest --force
echo "VIVARIUM-RESULT stop_exit=$?"
$V list
exit 0
"#,
        skip = WRITE_OFFSET / 512,
        wait_for = rig::WAIT_FOR_SH,
    )
}

#[test]
fn vivarium_boots_the_arm64_kernel_on_kvm_arm64_and_so_does_a_linked_clone() {
    let test = "rig_arm64_vivarium_boot";
    let Some(fixtures) =
        rig::arm64_fixtures_or_skip(test, vivarium_e2e::cross::missing_prerequisite())
    else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let disk = scratch.path().join("disk.img");
    write_pattern_disk(&disk, DISK_BYTES, 0xbb67_ae85_84ca_a73b);
    let disk_sha256 = host_sha256(&disk, HASHED_BYTES);
    let vivarium =
        rig::small_vivarium_arm64(scratch.path()).expect("vivarium cross-builds for arm64");

    let run = Rig::arm64(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(&disk, "disk.img")
        .timeout(Duration::from_secs(300))
        .run()
        .expect("the arm64 rig starts");
    let boot1 = match (
        run.time_of("VIVARIUM-RIG-MARK boot1-start"),
        run.time_of("VIVARIUM-GUEST-READY"),
    ) {
        (Some(start), Some(ready)) => format!("{:.1} s", (ready - start).as_secs_f64()),
        _ => "?".into(),
    };
    loud(&format!(
        "RIG arm64 vivarium: guest ready {boot1} after `vivarium run` started; whole rig run \
         {:.1} s",
        run.elapsed.as_secs_f64()
    ));
    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the arm64 rig\n{}",
        run.transcript()
    );
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
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
    run.expect("boot1_exit", "0");
    run.expect("persisted", &format!("VIVARIUM-PATTERN_{WRITE_OFFSET}"));
    run.expect("clone_exit", "0");
    // The clone reads what its parent's disk held when it was cloned, the guest's write
    // included.
    let parent = run
        .result("parent_sha256")
        .expect("the parent's disk hashed");
    assert_ne!(
        parent, disk_sha256,
        "the guest's write changed the first MiB"
    );
    run.expect("clone_blk_sha256", &parent);
    let typed: String = b"typed into the UART"
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    run.expect("typed", &typed);
    run.expect("rebooted", "yes");
    run.expect("stop_exit", "0");
}
