//! KVM/arm64 from Rust, in the arm64 rig: `vivarium-arm64-kvm-probe` (`tests/src/bin/`),
//! cross-built for aarch64 Linux with `vivarium_e2e::cross` and carried into the arm64 rig with
//! its arm64 libraries, creates a VM with one memory slot, the in-kernel GICv3, one vCPU with
//! PSCI 0.2, and runs a store to an address without memory and `HVC #0` with PSCI
//! `SYSTEM_OFF`. The test checks that the store came out as a `KVM_EXIT_MMIO` with its address
//! and value, and the PSCI call as a shutdown system event: the KVM calls, and their order,
//! that the aarch64 backend is built on.
//!
//! Prerequisites: the arm64 fixtures and `qemu-system-aarch64` (as `rig_arm64_qemu_baseline`),
//! Rust's `aarch64-unknown-linux-gnu` target and Debian's `gcc-aarch64-linux-gnu` with
//! `libc6-dev-arm64-cross`; `cargo xtask test` provides them all, and a missing one fails the
//! test there.

use std::time::Duration;

use vivarium_e2e::cross;
use vivarium_e2e::guest_disk::loud;
use vivarium_e2e::rig::{self, Rig};

/// What the probe stores, and where (its constants).
const MMIO_ADDRESS: &str = "0x10000000";
const MMIO_VALUE: &str = "0x56495641";

#[test]
fn a_raw_kvm_arm64_vm_exits_on_mmio_and_on_psci_system_off() {
    let test = "rig_arm64_kvm";
    let Some(fixtures) = rig::arm64_fixtures_or_skip(test, cross::missing_prerequisite()) else {
        return;
    };
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let probe =
        cross::small_arm64_binary("vivarium-e2e", "vivarium-arm64-kvm-probe", scratch.path())
            .expect("the probe cross-builds for aarch64");

    let script = "echo VIVARIUM-RIG-MARK probe-start\n\
                  /rig/bin/vivarium-arm64-kvm-probe\n\
                  code=$?\n\
                  echo VIVARIUM-RIG-MARK probe-end\n\
                  exit $code\n";
    let run = Rig::arm64(&fixtures, script)
        .binary_at(&probe, "/rig/bin/vivarium-arm64-kvm-probe")
        .timeout(Duration::from_secs(120))
        .run()
        .expect("the arm64 rig starts");
    let probe_time = run
        .time_of("probe-end")
        .zip(run.time_of("probe-start"))
        .map(|(end, start)| end.saturating_sub(start).as_secs_f64());
    loud(&format!(
        "arm64 KVM probe: rig ready {:.1} s, probe {} (its own count {} ms), whole rig run \
         {:.1} s",
        run.time_of(rig::READY_MARKER)
            .unwrap_or_default()
            .as_secs_f64(),
        probe_time.map_or("?".into(), |s| format!("{s:.2} s")),
        run.result("probe_ms").unwrap_or_default(),
        run.elapsed.as_secs_f64(),
    ));

    assert_eq!(
        run.kvm,
        Some(true),
        "no /dev/kvm in the arm64 rig\n{}",
        run.transcript()
    );
    run.expect("gic_init", "ok");
    // Address, length in bytes, value.
    run.expect("mmio_write", &format!("{MMIO_ADDRESS},4,{MMIO_VALUE}"));
    run.expect("system_event", "shutdown");
    assert!(run.succeeded(), "the probe failed\n{}", run.transcript());
}
