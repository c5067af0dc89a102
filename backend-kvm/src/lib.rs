//! Vivarium's KVM backend (Linux on x86_64 and aarch64): the hypervisor trait set of
//! `vivarium-hypervisor` on `/dev/kvm` through the rust-vmm crates (`kvm-ioctls`,
//! `kvm-bindings`). It knows KVM and the CPU state KVM wants (x86: CPUID, MSRs, segments;
//! aarch64: the vCPU init, core registers, the in-kernel GICv3); the machine around it (boards, devices, the control plane) is
//! the VMM's (`vivarium-vmm`).
//!
//! On machines whose /dev/kvm is a software-only hypervisor (`kvm_pvm`), the probe says full
//! guests will not boot; small hand-made guests still run, and the tests use them.

#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

#[cfg(target_arch = "aarch64")]
mod arm64;
#[cfg(target_arch = "x86_64")]
mod cpu;
pub mod error;
mod kvm;
pub mod probe;

pub use error::{Error, Result};
pub use kvm::{Kvm, KvmVcpu, KvmVm};
pub use probe::HostPaths;
