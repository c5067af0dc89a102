//! Vivarium's VMM: the machine, whatever the hypervisor. It owns the control plane (pause,
//! resume, power off, reset by rebuilding, "the first stop reason wins"), the vCPU threads,
//! guest RAM and the wiring of the device models (`vivarium-devices`) onto buses and
//! interrupt lines, over the hypervisor trait set of `vivarium-hypervisor`. A board says what
//! the machine is: `pc` is the x86_64 PC (its address map, boot protocol, ACPI, firmware and
//! legacy devices), `virt` the aarch64 machine (device tree, GICv3 with a GICv2m MSI frame,
//! UART, PL031, virtio-pci over ECAM, direct boot of an arm64 `Image`).
//!
//! [`Vmm`] is the machine-level [`Backend`] the VM process runs: `Vmm::new(hypervisor)`.

// The `virt` board is the machine of aarch64 hosts; elsewhere it is built and unit-tested
// (its device tree, its address map) but not run.
#![cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]

mod devices;
mod display;
pub mod error;
mod input;
mod interrupts;
mod machine;
mod memory;
#[cfg(target_arch = "x86_64")]
pub mod pc;
pub mod virt;

use std::sync::Arc;

use vivarium_core::backend::{Backend, BackendError, HostSupport, MachineSpec, RunningMachine};
use vivarium_hypervisor::Hypervisor;

pub use error::{Error, Result};
pub use machine::Machine;

/// The VMM on one hypervisor: starts machines from [`MachineSpec`]s.
#[derive(Clone)]
pub struct Vmm {
    hypervisor: Arc<dyn Hypervisor>,
}

impl Vmm {
    /// The VMM running its machines on `hypervisor`.
    pub fn new(hypervisor: impl Hypervisor) -> Vmm {
        Vmm {
            hypervisor: Arc::new(hypervisor),
        }
    }

    /// Starts a machine like [`Backend::start`], returning the machine itself, which also
    /// offers what the backend trait does not carry (the PS/2 input handle).
    pub fn start_machine(&self, spec: MachineSpec) -> std::result::Result<Machine, BackendError> {
        if let HostSupport::Unavailable { reason, remedy } = self.hypervisor.probe() {
            return Err(BackendError::HostUnsupported(format!("{reason}. {remedy}")));
        }
        Ok(machine::start(Arc::clone(&self.hypervisor), spec)?)
    }
}

impl Backend for Vmm {
    fn name(&self) -> &'static str {
        self.hypervisor.name()
    }

    fn probe(&self) -> HostSupport {
        self.hypervisor.probe()
    }

    fn start(
        &self,
        spec: MachineSpec,
    ) -> std::result::Result<Arc<dyn RunningMachine>, BackendError> {
        Ok(Arc::new(self.start_machine(spec)?))
    }
}
