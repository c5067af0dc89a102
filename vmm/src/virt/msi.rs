//! MSIs on the `virt` board: a GICv2m MSI frame (ARM's "GICv2m" architecture, which Linux's
//! `gic-v2m` driver and Hypervisor.framework's GIC both speak). A device's MSI is a write of
//! an SPI's INTID to the frame's `SETSPI_NS` register; the board turns it into an edge on
//! that SPI. Devices' MSI-X messages never reach the CPU side, so the signaller does it at
//! once; the frame's registers are also there for the guest to read (and write).

use std::sync::{Arc, OnceLock};

use vivarium_devices::bus::BusDevice;
use vivarium_devices::pci::MsiSignaller;
use vivarium_hypervisor::aarch64::GicV3;
use vivarium_hypervisor::{InterruptLine, Vm};

use crate::virt::layout;

/// `MSI_TYPER`: the first SPI (bits 16..26) and how many (bits 0..10).
const MSI_TYPER: u64 = 0x008;
/// `MSI_SETSPI_NS`: the INTID written raises that SPI.
pub const MSI_SETSPI_NS: u64 = 0x040;
/// `MSI_IIDR`: the implementer (0: none in particular).
const MSI_IIDR: u64 = 0xfcc;

/// The SPIs a frame hands out.
#[derive(Clone)]
pub struct MsiFrame {
    vm: Arc<dyn Vm>,
    /// Each SPI's line, made when first raised.
    lines: Arc<Vec<OnceLock<Arc<dyn InterruptLine>>>>,
}

impl MsiFrame {
    /// The frame raising SPIs of `vm`.
    pub fn new(vm: Arc<dyn Vm>) -> MsiFrame {
        MsiFrame {
            vm,
            lines: Arc::new((0..layout::MSI_SPIS).map(|_| OnceLock::new()).collect()),
        }
    }

    /// Raises the SPI of INTID `intid`, if it is one of the frame's; anything else is
    /// ignored (a guest may write garbage).
    fn raise(&self, intid: u32) -> std::io::Result<()> {
        let first = GicV3::FIRST_SPI + layout::MSI_FIRST_SPI;
        if !(first..first + layout::MSI_SPIS).contains(&intid) {
            tracing::debug!(intid, "an MSI for no SPI of the frame is dropped");
            return Ok(());
        }
        let slot = &self.lines[(intid - first) as usize];
        let line = match slot.get() {
            Some(line) => line,
            None => {
                let line = self
                    .vm
                    .interrupt_line(intid - GicV3::FIRST_SPI)
                    .map_err(std::io::Error::other)?;
                slot.get_or_init(|| line)
            }
        };
        line.pulse().map_err(std::io::Error::other)
    }
}

impl MsiSignaller for MsiFrame {
    fn signal_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        if address != layout::MSI_FRAME + MSI_SETSPI_NS {
            tracing::debug!(address, "an MSI to no MSI frame is dropped");
            return Ok(());
        }
        self.raise(data)
    }
}

impl BusDevice for MsiFrame {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value: u32 = match offset {
            MSI_TYPER => ((GicV3::FIRST_SPI + layout::MSI_FIRST_SPI) << 16) | layout::MSI_SPIS,
            MSI_IIDR => 0,
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == MSI_SETSPI_NS && data.len() == 4 {
            let intid = u32::from_le_bytes(data.try_into().expect("4 bytes"));
            if let Err(e) = self.raise(intid) {
                tracing::warn!("an MSI written to the frame was lost: {e}");
            }
        }
    }
}
