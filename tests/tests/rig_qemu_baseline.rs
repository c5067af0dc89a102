//! Baseline for booting real guests: QEMU itself, as the VMM inside the nested rig, boots the
//! guest fixtures (Debian kernel + busybox initramfs) on the rig's real `/dev/kvm`, and the
//! guest's checks come back over the consoles. It proves the rig and the fixtures, and its
//! timings are the reference for the benchmark against Vivarium's own VMM.
//!
//! Prerequisites: `cargo xtask fixtures` (the guest fixtures) and `qemu-system-x86_64`
//! (Debian package `qemu-system-x86`); `cargo xtask test` provides both. Without them the test
//! prints `SKIPPED: <reason>` past the harness's output capture and returns (libtest cannot
//! mark a test skipped at run time); with `VIVARIUM_REQUIRE_RIG=1` (for CI machines that must
//! run it) a missing prerequisite fails the test instead. One rig boot for the whole file
//! (about 20 s), so every check is grouped into this single test.

use std::time::Duration;

use vivarium_e2e::fixtures::Fixtures;
use vivarium_e2e::gate;
use vivarium_e2e::guest_disk::{host_sha256, loud, write_pattern_disk};
use vivarium_e2e::rig::{self, Rig, RigRun};

/// Size of the test disk, and how much of it the guest hashes.
const DISK_BYTES: usize = 2 << 20;
const HASHED_BYTES: usize = 1 << 20;
/// Where the guest's write test writes (a multiple of 512).
const WRITE_OFFSET: usize = 64 << 10;
/// Guest shape.
const GUEST_CPUS: u32 = 2;
const GUEST_MIB: u64 = 256;

fn prerequisites() -> Result<Fixtures, String> {
    if let Some(reason) = rig::missing_prerequisite() {
        return Err(reason);
    }
    if let Some(reason) = gate::program_missing("sha256sum", "coreutils") {
        return Err(reason);
    }
    Fixtures::locate()
}

/// The script run inside the rig: QEMU boots the guest with two virtio-blk disks (one
/// read-only) and a virtio-rng on PCI (`microvm,pcie=on`, like Vivarium's machine), then the
/// rig reads back what the guest wrote.
fn rig_script() -> String {
    let checks = "uptime,cpus,mem,blk-sha256,blk-size,blk-write,blk-ro,rng,virtio";
    let append = format!(
        "console=ttyS0 quiet panic=-1 vivarium.checks={checks} vivarium.blk_len={HASHED_BYTES} \
         vivarium.blk_write_off={WRITE_OFFSET} vivarium.ro_dev=vdb vivarium.then=poweroff"
    );
    format!(
        r#"cp "$VIVARIUM_RIG_FILES/disk.img" disk.img
cp "$VIVARIUM_RIG_FILES/disk.img" ro.img
echo "VIVARIUM-RIG-MARK inner-start"
qemu-system-x86_64 -enable-kvm -cpu host -M microvm,pcie=on,rtc=on \
    -smp {GUEST_CPUS} -m {GUEST_MIB} -nodefaults -no-user-config -display none \
    -serial stdio -no-reboot \
    -kernel "$VIVARIUM_GUEST_KERNEL" -initrd "$VIVARIUM_GUEST_INITRD" \
    -append "{append}" \
    -drive file=disk.img,format=raw,if=none,id=disk \
    -device virtio-blk-pci,drive=disk \
    -drive file=ro.img,format=raw,if=none,id=ro,readonly=on \
    -device virtio-blk-pci,drive=ro \
    -device virtio-rng-pci 2>&1
code=$?
echo "VIVARIUM-RIG-MARK inner-end"
echo "VIVARIUM-RESULT inner_qemu_exit=$code"
written=$(dd if=disk.img bs=512 skip={skip} count=1 2>/dev/null | head -c 22 | tr ' ' _)
echo "VIVARIUM-RESULT rig_written=$written"
ro_sum=$(head -c {HASHED_BYTES} ro.img | sha256sum)
echo "VIVARIUM-RESULT rig_ro_sha256=${{ro_sum%% *}}"
exit $code
"#,
        skip = WRITE_OFFSET / 512,
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

fn seconds(d: Option<Duration>) -> String {
    d.map_or("?".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn report_timings(run: &RigRun) {
    let since_start = |marker: &str| {
        let start = run.time_of("VIVARIUM-RIG-MARK inner-start")?;
        Some(run.time_of(marker)?.saturating_sub(start))
    };
    loud(&format!(
        "BASELINE qemu-in-rig: rig ready {}, guest ready {} after QEMU started (guest uptime {} s), \
         guest done {}, QEMU exit {}, whole rig run {:.1} s, outer initramfs {:.1} MB",
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
fn qemu_boots_the_guest_fixtures_inside_the_rig() {
    let fixtures = match prerequisites() {
        Ok(fixtures) => fixtures,
        Err(reason) => {
            gate::skip(
                "rig_qemu_baseline",
                &format!("{reason} (cargo xtask test sets this up)"),
            );
            return;
        }
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let disk = scratch.path().join("disk.img");
    write_pattern_disk(&disk, DISK_BYTES, 0x9e37_79b9_7f4a_7c15);
    let disk_sha256 = host_sha256(&disk, HASHED_BYTES);

    let run = Rig::new(&fixtures, &rig_script())
        .qemu()
        .expect("QEMU can be carried into the rig")
        .file(&disk, "disk.img")
        .run()
        .expect("the rig starts");
    report_timings(&run);

    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the rig\n{}",
        run.transcript()
    );
    assert!(
        run.time_of("VIVARIUM-GUEST-READY").is_some(),
        "the guest never reached its /init\n{}",
        run.transcript()
    );
    assert!(
        run.succeeded(),
        "the rig script failed\n{}",
        run.transcript()
    );
    expect(&run, "cpus", &GUEST_CPUS.to_string());
    let mem_kib: u64 = run
        .result("mem_kib")
        .and_then(|v| v.parse().ok())
        .expect("mem_kib reported");
    assert!(
        mem_kib > GUEST_MIB * 1024 * 6 / 10 && mem_kib <= GUEST_MIB * 1024,
        "MemTotal {mem_kib} KiB for a {GUEST_MIB} MiB guest"
    );
    expect(&run, "blk_sha256", &disk_sha256);
    expect(&run, "blk_bytes", &DISK_BYTES.to_string());
    expect(&run, "blk_write", "ok");
    expect(
        &run,
        "rig_written",
        &format!("VIVARIUM-PATTERN_{WRITE_OFFSET}"),
    );
    let read_only = run.result("blk_ro").unwrap_or_default();
    assert!(
        ["EROFS", "EPERM", "EACCES", "EIO"].contains(&read_only.as_str()),
        "a write to the read-only disk gave {read_only}\n{}",
        run.transcript()
    );
    expect(&run, "rig_ro_sha256", &disk_sha256);
    expect(&run, "rng_bytes", "64");
    expect(&run, "rng_source", "virtio_rng.0");
    expect(&run, "virtio_ids", "2,2,4");
    assert!(
        run.time_of("VIVARIUM-GUEST-DONE").is_some(),
        "{}",
        run.transcript()
    );
}
