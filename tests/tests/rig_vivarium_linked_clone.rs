//! A linked clone boots: a real Debian kernel under Vivarium's KVM backend, inside the nested
//! rig, reads and writes a disk that is a qcow2 overlay over the parent's base image.
//!
//! One rig run, driven through the `vivarium` command line:
//! 1. import a pattern disk as `parent`, make `child` with `vivarium clone --linked`;
//! 2. boot `child` (2 vCPUs): the guest hashes its whole disk (the parent's data, read through
//!    the overlay from the base), writes its kernel log at the start of the disk through the
//!    page cache and `fsync` (a write over several sectors, then a FLUSH request), then
//!    writes a pattern with `O_DIRECT` into the middle of a cluster (copy-on-write from the
//!    base) and powers off at once, with no flush after it;
//! 3. boot `child` again: the guest hashes its whole disk (the first boot's writes survived
//!    the restart), writes another pattern with `O_DIRECT` and reboots at once; after the
//!    machine's reset it hashes the disk again (the write survived the reset, where the disk
//!    is closed and opened again);
//! 4. the base image and the parent's own overlay are unchanged, byte for byte;
//! 5. the clone's overlay is carried out of the rig and checked on the host by QEMU's own
//!    qcow2 implementation: `qemu-img check` passes; `qemu-img convert` of the overlay over
//!    the base gives the parent's data with the pattern, a kernel log where the guest wrote
//!    it, and the very disk the guest hashed after the reset.
//!
//! Prerequisites and skipping work as in `rig_qemu_baseline.rs`.

use std::fs;
use std::path::Path;
use std::process::Command;

use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig};

const DISK_BYTES: usize = 2 << 20;
/// Inside the overlay's 17th 64 KiB cluster, not at its start: the write needs copy-on-write
/// of the rest of the cluster from the base.
const WRITE_OFFSET: usize = (1 << 20) + 4096;
/// The second boot's write, in another cluster, made before the guest reboots.
const RESET_WRITE_OFFSET: usize = (1536 << 10) + 9 * 512;
const GUEST_CPUS: u32 = 2;
const GUEST_MIB: u64 = 256;

fn rig_script(vivarium: &Path) -> String {
    let v = vivarium.display();
    let carry = rig::CARRY_SH;
    let wait_for = rig::WAIT_FOR_SH;
    format!(
        r#"export VIVARIUM_HOME=/tmp/vivarium-library
V={v}
{carry}
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
$V import parent disk.img --kernel "$VIVARIUM_GUEST_KERNEL" --initrd "$VIVARIUM_GUEST_INITRD" \
    --cmdline "$base" --cpus {GUEST_CPUS} --memory {GUEST_MIB} --network none --display none || exit 10
$V clone parent child --linked || exit 11
B=$(ls "$VIVARIUM_HOME"/bases/*.vivbase/disks/*)
P=$(ls "$VIVARIUM_HOME"/vms/parent.vivm/disks/*.qcow2)
C="$VIVARIUM_HOME/vms/child.vivm/disks/disk0.qcow2"
ls -l "$B" "$P" "$C"
echo "VIVARIUM-RESULT base_sha256=$(sha256sum "$B" | cut -d' ' -f1)"
parent_before=$(sha256sum "$P" | cut -d' ' -f1)

$V set child --cmdline "$base vivarium.checks=blk-size,blk-sha256,dmesg-blk,blk-write vivarium.blk_len={DISK_BYTES} vivarium.blk_write_off={WRITE_OFFSET} vivarium.then=poweroff" || exit 12
echo "VIVARIUM-RIG-MARK clone-boot1-start"
$V run child > boot1.log 2>&1
echo "VIVARIUM-RESULT boot1_exit=$?"
grep "VIVARIUM-RESULT" boot1.log | sed 's/VIVARIUM-RESULT /VIVARIUM-RESULT boot1_/'
tail -n 5 boot1.log

$V set child --cmdline "$base vivarium.checks=blk-sha256,blk-write vivarium.blk_len={DISK_BYTES} vivarium.blk_write_off={RESET_WRITE_OFFSET} vivarium.then=reboot" || exit 13
echo "VIVARIUM-RIG-MARK clone-boot2-start"
$V run child > boot2.log 2>&1 &
pid=$!
wait_for boot2.log VIVARIUM-GUEST-DONE 120 2
stop_vm $pid INT
echo "VIVARIUM-RESULT boot2_exit=$?"
echo "VIVARIUM-RESULT boot2_boots=$(grep -c VIVARIUM-GUEST-READY boot2.log)"
echo "VIVARIUM-RESULT boot2_writes=$(grep -o 'blk_write=[a-z]*' boot2.log | cut -d= -f2 | head -n 2 | tr '\n' / | sed 's#/$##')"
echo "VIVARIUM-RESULT boot2_sha256=$(grep -o 'blk_sha256=[0-9a-f]*' boot2.log | cut -d= -f2 | head -n 2 | tr '\n' / | sed 's#/$##')"
tail -n 5 boot2.log

echo "VIVARIUM-RESULT base_after_sha256=$(sha256sum "$B" | cut -d' ' -f1)"
[ "$parent_before" = "$(sha256sum "$P" | cut -d' ' -f1)" ] \
    && echo "VIVARIUM-RESULT parent_unchanged=yes" || echo "VIVARIUM-RESULT parent_unchanged=no"
carry child.qcow2 "$C"
$V list
exit 0
"#
    )
}

/// The 512 bytes the guest fixture's `blk-write` check writes at `offset`.
fn guest_pattern(offset: usize) -> Vec<u8> {
    let mut line = format!("VIVARIUM-PATTERN {offset}").into_bytes();
    line.resize(511, b'.');
    line.push(b'\n');
    line
}

fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (Debian package qemu-utils; cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "qemu-img {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_linked_clone_boots_reads_its_base_and_keeps_its_writes() {
    let Some(fixtures) = rig::fixtures_or_skip("rig_vivarium_linked_clone", None) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let disk = scratch.path().join("disk.img");
    write_pattern_disk(&disk, DISK_BYTES, 0x5851_f42d_4c95_7f2d);
    let parent_data = fs::read(&disk).expect("read the pattern disk");
    let parent_sha256 = host_sha256(&disk, DISK_BYTES);
    let mut written = parent_data.clone();
    written[WRITE_OFFSET..WRITE_OFFSET + 512].copy_from_slice(&guest_pattern(WRITE_OFFSET));
    let mut after_reset = written.clone();
    after_reset[RESET_WRITE_OFFSET..RESET_WRITE_OFFSET + 512]
        .copy_from_slice(&guest_pattern(RESET_WRITE_OFFSET));
    let vivarium = rig::small_vivarium(scratch.path());

    let run = Rig::new(&fixtures, &rig_script(&vivarium))
        .binary(&vivarium)
        .file(&disk, "disk.img")
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .expect("the rig starts");
    loud(&format!(
        "RIG vivarium linked clone: whole rig run {:.1} s",
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
    // The base is the parent's disk as imported.
    run.expect("base_sha256", &parent_sha256);
    // Boot 1: the clone sees the parent's data through its overlay, and its write reads back.
    run.expect("boot1_exit", "0");
    run.expect("boot1_blk_bytes", &DISK_BYTES.to_string());
    run.expect("boot1_blk_sha256", &parent_sha256);
    run.expect("boot1_blk_write", "ok");
    let log_bytes: usize = run
        .result("boot1_dmesg_bytes")
        .and_then(|v| v.parse().ok())
        .expect("the guest reports the size of the kernel log it wrote");
    assert!(
        log_bytes > 0 && log_bytes < WRITE_OFFSET,
        "a kernel log of {log_bytes} bytes"
    );
    run.expect("boot2_exit", "0");
    let boots: u32 = run
        .result("boot2_boots")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        boots >= 2,
        "the clone did not boot again after its reboot\n{}",
        run.transcript()
    );
    run.expect("boot2_writes", "ok/ok");
    // The parent's disk (base and its own overlay) did not change.
    run.expect("base_after_sha256", &parent_sha256);
    run.expect("parent_unchanged", "yes");

    // QEMU's qcow2 code agrees: the overlay is consistent and holds the clone's disk.
    let files = run.carried();
    let overlay_bytes = files
        .get("child.qcow2")
        .unwrap_or_else(|| panic!("the clone's overlay was not carried\n{}", run.transcript()));
    let library = scratch.path().join("library");
    let overlay_dir = library.join("vms/child.vivm/disks");
    fs::create_dir_all(&overlay_dir).expect("make the overlay's folder");
    let overlay = overlay_dir.join("disk0.qcow2");
    fs::write(&overlay, overlay_bytes).expect("write the overlay");
    let backing = vivarium_core::disk::backing_file(&overlay)
        .expect("read the overlay's header")
        .expect("the overlay names its base");
    let base = overlay_dir.join(&backing);
    fs::create_dir_all(base.parent().expect("the base's folder")).expect("make the base's folder");
    fs::write(&base, &parent_data).expect("write the base");
    let overlay_arg = overlay.to_str().expect("a UTF-8 path");
    let check = qemu_img(&["check", overlay_arg]);
    assert!(check.contains("No errors"), "qemu-img check: {check}");
    let flat = scratch.path().join("flat.raw");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        overlay_arg,
        flat.to_str().expect("a UTF-8 path"),
    ]);
    let flat_bytes = fs::read(&flat).expect("read the converted disk");
    assert_eq!(flat_bytes.len(), DISK_BYTES, "the clone's disk size");
    assert!(
        flat_bytes[log_bytes..] == after_reset[log_bytes..],
        "QEMU reads the clone's disk past the kernel log differently from the parent's data \
         with the guest's two patterns"
    );
    let log = String::from_utf8_lossy(&flat_bytes[..log_bytes]);
    assert!(
        log.contains("Linux version"),
        "QEMU does not find the guest's kernel log at the start of the clone's disk: {:?}",
        &log[..log.len().min(200)]
    );
    // The second boot read the first boot's writes after the restart, and after its reset
    // exactly what QEMU reads from the overlay.
    let mut before_reset = flat_bytes.clone();
    before_reset[RESET_WRITE_OFFSET..RESET_WRITE_OFFSET + 512]
        .copy_from_slice(&written[RESET_WRITE_OFFSET..RESET_WRITE_OFFSET + 512]);
    let before_reset_path = scratch.path().join("before-reset.img");
    fs::write(&before_reset_path, &before_reset).expect("write the disk before the reset");
    run.expect(
        "boot2_sha256",
        &format!(
            "{}/{}",
            host_sha256(&before_reset_path, DISK_BYTES),
            host_sha256(&flat, DISK_BYTES)
        ),
    );
}
