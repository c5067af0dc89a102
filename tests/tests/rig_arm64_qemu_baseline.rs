//! Baseline of the arm64 rig: Debian's arm64 QEMU, as the VMM inside the arm64 rig
//! (`Rig::arm64`, an emulated arm64 machine with KVM/arm64), boots the arm64 guest fixtures
//! (Debian's arm64 kernel + busybox initramfs) on real KVM/arm64 with `-M virt,gic-version=3
//! -cpu host` and a virtio-blk disk on PCI (ECAM, MSIs through the ITS), and the guest's checks
//! come back over the consoles. It proves the arm64 rig and its fixtures, the machine an arm64
//! Vivarium guest will see, and its timings are the reference for the arm64 benchmark.
//!
//! Prerequisites: `cargo xtask fixtures --arm64` and `qemu-system-aarch64` (Debian package
//! `qemu-system-arm`); `cargo xtask test` provides both, and a missing one fails the test there
//! (`vivarium_e2e::gate`). One rig boot (about 15 s) for every check.

use std::time::Duration;

use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig, RigRun};

/// Size of the test disk, and how much of it the guest hashes.
const DISK_BYTES: usize = 2 << 20;
const HASHED_BYTES: usize = 1 << 20;
/// Where the guest's write test writes (a multiple of 512).
const WRITE_OFFSET: usize = 64 << 10;
/// Guest shape (one vCPU: a second one makes the emulated boot slower, not more telling).
const GUEST_CPUS: u32 = 1;
const GUEST_MIB: u64 = 256;

/// The script run inside the rig: the arm64 QEMU boots the guest with one virtio-blk disk and a
/// virtio-rng on PCI, the console quiet (every PL011 character is an exit to the VMM), then the
/// rig reads back what the guest wrote and carries that sector out.
fn rig_script() -> String {
    let checks = "uptime,cpus,mem,blk-sha256,blk-size,blk-write,rng,virtio";
    let append = format!(
        "console=ttyAMA0 quiet panic=-1 vivarium.checks={checks} vivarium.blk_len={HASHED_BYTES} \
         vivarium.blk_write_off={WRITE_OFFSET} vivarium.then=poweroff"
    );
    format!(
        r#"{carry}
cp "$VIVARIUM_RIG_FILES/disk.img" disk.img
echo "VIVARIUM-RIG-MARK inner-start"
qemu-system-aarch64 -enable-kvm -M virt,gic-version=3 -cpu host \
    -smp {GUEST_CPUS} -m {GUEST_MIB} -nodefaults -no-user-config -display none -nic none \
    -serial stdio -no-reboot \
    -kernel "$VIVARIUM_GUEST_KERNEL" -initrd "$VIVARIUM_GUEST_INITRD" \
    -append "{append}" \
    -drive file=disk.img,format=raw,if=none,id=disk \
    -device virtio-blk-pci,drive=disk \
    -device virtio-rng-pci 2>&1
code=$?
echo "VIVARIUM-RIG-MARK inner-end"
echo "VIVARIUM-RESULT inner_qemu_exit=$code"
written=$(dd if=disk.img bs=512 skip={skip} count=1 2>/dev/null | head -c 22 | tr ' ' _)
echo "VIVARIUM-RESULT rig_written=$written"
dd if=disk.img of=written.bin bs=512 skip={skip} count=1 2>/dev/null
carry written.bin written.bin
exit $code
"#,
        carry = rig::CARRY_SH,
        skip = WRITE_OFFSET / 512,
    )
}

fn seconds(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn report_timings(run: &RigRun) {
    let since_start = |marker: &str| {
        let start = run.time_of("VIVARIUM-RIG-MARK inner-start")?;
        Some(run.time_of(marker)?.saturating_sub(start))
    };
    loud(&format!(
        "BASELINE arm64 qemu-in-rig: rig ready {}, guest ready {} after QEMU started (guest \
         uptime {} s), guest done {}, QEMU exit {}, whole rig run {:.1} s, outer initramfs \
         {:.1} MB",
        seconds(run.time_of(rig::READY_MARKER)),
        seconds(since_start("VIVARIUM-GUEST-READY")),
        run.result("uptime_s").unwrap_or_default(),
        seconds(since_start("VIVARIUM-GUEST-DONE")),
        seconds(since_start("VIVARIUM-RIG-MARK inner-end")),
        run.elapsed.as_secs_f64(),
        run.initramfs_bytes as f64 / 1e6,
    ));
}

#[test]
fn arm64_qemu_boots_the_arm64_guest_on_kvm_inside_the_arm64_rig() {
    let test = "rig_arm64_qemu_baseline";
    let Some(fixtures) =
        rig::arm64_fixtures_or_skip(test, gate::program_missing("sha256sum", "coreutils"))
    else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let disk = scratch.path().join("disk.img");
    write_pattern_disk(&disk, DISK_BYTES, 0x6a09_e667_f3bc_c908);
    let disk_sha256 = host_sha256(&disk, HASHED_BYTES);

    let run = Rig::arm64(&fixtures, &rig_script())
        .qemu()
        .expect("the arm64 QEMU can be carried into the rig")
        .file(&disk, "disk.img")
        .timeout(Duration::from_secs(240))
        .run()
        .expect("the arm64 rig starts");
    report_timings(&run);

    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the arm64 rig\n{}",
        run.transcript()
    );
    assert!(
        run.time_of("VIVARIUM-GUEST-READY").is_some(),
        "the arm64 guest never reached its /init\n{}",
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
    run.expect("rig_written", &format!("VIVARIUM-PATTERN_{WRITE_OFFSET}"));
    let carried = run.carried();
    let sector = carried
        .get("written.bin")
        .expect("the written sector carried out");
    assert_eq!(sector.len(), 512, "{}", run.transcript());
    assert!(
        sector.starts_with(format!("VIVARIUM-PATTERN {WRITE_OFFSET}").as_bytes()),
        "the sector carried out of the rig: {:?}",
        String::from_utf8_lossy(&sector[..40])
    );
    run.expect("rng_bytes", "64");
    run.expect("virtio_ids", "2,4");
    assert!(
        run.time_of("VIVARIUM-GUEST-DONE").is_some(),
        "{}",
        run.transcript()
    );
}
