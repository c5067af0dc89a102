//! Vivarium's KVM backend (Linux, x86_64): the [`Backend`] that builds machines on KVM with
//! the rust-vmm crates and wires the arch-neutral device models of `vivarium-devices` to KVM
//! exits and interrupts.
//!
//! On machines whose /dev/kvm is a software-only hypervisor (`kvm_pvm`), the probe says full
//! guests will not boot; small hand-made guests still run, and the tests use them.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

pub mod acpi;
mod boot;
mod cpu;
mod devices;
mod display;
pub mod error;
pub mod firmware;
mod input;
pub mod layout;
mod machine;
mod memory;
pub mod probe;

use vivarium_core::backend::{Backend, BackendError, HostSupport, MachineSpec, RunningMachine};

pub use error::{Error, Result};
pub use machine::KvmMachine;
pub use probe::HostPaths;

/// The KVM backend.
#[derive(Debug, Clone, Default)]
pub struct KvmBackend {
    paths: HostPaths,
}

impl KvmBackend {
    /// The backend on this host's /dev/kvm.
    pub fn new() -> Self {
        KvmBackend::default()
    }
}

impl KvmBackend {
    /// Starts a machine like [`Backend::start`], returning the KVM machine itself, which
    /// also offers what the backend trait does not carry yet (the PS/2 input handle).
    pub fn start_machine(
        &self,
        spec: MachineSpec,
    ) -> std::result::Result<KvmMachine, BackendError> {
        if let HostSupport::Unavailable { reason, remedy } = self.probe() {
            return Err(BackendError::HostUnsupported(format!("{reason}. {remedy}")));
        }
        Ok(machine::start(spec)?)
    }
}

impl Backend for KvmBackend {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn probe(&self) -> HostSupport {
        probe::probe(&self.paths)
    }

    fn start(
        &self,
        spec: MachineSpec,
    ) -> std::result::Result<std::sync::Arc<dyn RunningMachine>, BackendError> {
        Ok(std::sync::Arc::new(self.start_machine(spec)?))
    }
}
