//! The hypervisor trait set on the host's `/dev/kvm` (any KVM, the software-only `kvm_pvm`
//! included): guest memory mappings are bookkept by guest address (overlaps refused, an
//! unmapped range mapped again), read-only mappings are what the host's KVM says, the dirty
//! log comes back for a mapping that logs and is refused for a range never mapped, and a
//! hand-made real-mode guest's port write comes back as an exit with its value.

use std::sync::Arc;

use vivarium_backend_kvm::Kvm;
use vivarium_e2e::gate;
use vivarium_hypervisor::{Hypervisor, MemoryMapping, VcpuExit, Vm, VmSpec, x86};

/// Anonymous memory for a test guest, unmapped when dropped.
struct TestMemory {
    address: *mut u8,
    len: usize,
}

impl TestMemory {
    fn new(len: usize) -> TestMemory {
        // SAFETY: a fresh private anonymous mapping; the result is checked.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED, "no memory for the test guest");
        TestMemory {
            address: address.cast(),
            len,
        }
    }

    fn mapping(&self, guest_address: u64, log_dirty: bool) -> MemoryMapping {
        MemoryMapping {
            guest_address,
            size: self.len as u64,
            host_address: self.address,
            read_only: false,
            log_dirty,
        }
    }
}

impl Drop for TestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the VMs that used it are gone by then (each test
        // drops its VM first).
        unsafe { libc::munmap(self.address.cast(), self.len) };
    }
}

fn vm(test: &str) -> Option<Arc<dyn Vm>> {
    let kvm = Kvm::new();
    let support = kvm.probe();
    let unusable = (!support.can_run()).then(|| support.explain());
    if !gate::kvm(&format!("kvm_vm::{test}"), unusable) {
        return None;
    }
    Some(
        kvm.create_vm(&VmSpec {
            cpus: 1,
            hypervisor_pages: Some(0xfeff_c000),
            gic: None,
        })
        .expect("KVM makes a VM"),
    )
}

#[test]
fn mappings_are_kept_by_guest_address_and_overlaps_are_refused() {
    let Some(vm) = vm("mappings_are_kept_by_guest_address_and_overlaps_are_refused") else {
        return;
    };
    let low = TestMemory::new(1 << 20);
    let other = TestMemory::new(64 << 10);
    // SAFETY: `low` and `other` outlive `vm` (dropped at the end of the test, after it).
    unsafe {
        vm.map_memory(low.mapping(0, false))
            .expect("the first mapping");
        let overlap = vm.map_memory(other.mapping(0x8_0000, false)).unwrap_err();
        assert!(overlap.to_string().contains("overlaps"), "{overlap}");
        vm.map_memory(other.mapping(1 << 20, true))
            .expect("a mapping right after the first");
    }
    let log = vm.dirty_pages(1 << 20).expect("a dirty log");
    let log = log.expect("KVM keeps a dirty log");
    assert_eq!(log.len(), 1, "16 pages fit in one word: {log:?}");
    assert_eq!(log[0], 0, "nobody wrote the memory yet");
    let unknown = vm.dirty_pages(0x4000_0000).unwrap_err();
    assert!(unknown.to_string().contains("no guest memory"), "{unknown}");
    vm.unmap_memory(1 << 20).expect("unmapping");
    assert!(vm.unmap_memory(1 << 20).is_err(), "unmapped twice");
    // SAFETY: as above.
    unsafe { vm.map_memory(other.mapping(1 << 20, false)) }.expect("mapped again");
    drop(vm);
}

#[test]
fn a_real_mode_guest_writes_a_port_and_its_value_comes_back_as_an_exit() {
    let Some(vm) = vm("a_real_mode_guest_writes_a_port_and_its_value_comes_back_as_an_exit") else {
        return;
    };
    let memory = TestMemory::new(1 << 20);
    // mov al, 0x5a; out 0x80, al; hlt
    let code = [0xb0, 0x5a, 0xe6, 0x80, 0xf4];
    // SAFETY: the code fits in the mapping made above, which nothing else uses yet.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), memory.address.add(0x1000), code.len()) };
    // SAFETY: `memory` outlives `vm`.
    unsafe { vm.map_memory(memory.mapping(0, false)) }.expect("guest memory");
    let mut vcpu = vm.create_vcpu(0).expect("a vCPU");
    vcpu.set_x86_entry(&x86::Entry::RealMode {
        ip: 0x1000,
        sp: 0xfff0,
    })
    .expect("a real-mode entry");
    match vcpu.run().expect("the vCPU runs") {
        VcpuExit::IoOut { port, data } => {
            assert_eq!(port, 0x80);
            assert_eq!(data, &[0x5a]);
        }
        other => panic!("expected the port write, got {other:?}"),
    }
    assert!(
        vcpu.describe_registers().contains("rip="),
        "the registers are described"
    );
    drop(vcpu);
    drop(vm);
}
