//! The hypervisor's interrupts as the device models see them: an [`InterruptLine`] is a
//! device's [`IrqLine`], and the VM's MSI delivery a device's [`MsiSignaller`].

use std::sync::Arc;

#[cfg(target_arch = "x86_64")]
use vivarium_devices::pci::MsiSignaller;
use vivarium_devices::{IrqLine, LevelIrq};
use vivarium_hypervisor::{InterruptLine, Vm};

/// A device's interrupt on a line of the VM's interrupt controller.
pub struct DeviceIrq(pub Arc<dyn InterruptLine>);

impl IrqLine for DeviceIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.pulse().map_err(std::io::Error::other)
    }
}

/// MSIs of a VM's devices, delivered by the hypervisor (x86: to the local APICs).
#[cfg(target_arch = "x86_64")]
pub struct DeviceMsi(pub Arc<dyn Vm>);

#[cfg(target_arch = "x86_64")]
impl MsiSignaller for DeviceMsi {
    fn signal_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        self.0
            .signal_msi(address, data)
            .map_err(std::io::Error::other)
    }
}

/// The device-side line of `line` on `vm`.
pub fn device_irq(vm: &dyn Vm, line: u32) -> crate::Result<Arc<dyn IrqLine>> {
    Ok(Arc::new(DeviceIrq(vm.interrupt_line(line)?)))
}

/// A device's level-triggered interrupt (a PL011's) on a line of the VM's controller.
#[allow(dead_code)] // The PL011 is not on a board yet (see `virt::build`).
pub struct DeviceLevelIrq(pub Arc<dyn InterruptLine>);

impl LevelIrq for DeviceLevelIrq {
    fn set_level(&self, asserted: bool) -> std::io::Result<()> {
        self.0.set_level(asserted).map_err(std::io::Error::other)
    }
}
