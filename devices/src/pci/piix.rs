//! The two functions of Intel's PIIX3/PIIX4 south bridge that UEFI firmware looks for on an
//! i440FX machine, at 00:01.0 and 00:01.3:
//!
//! * the **PCI-to-ISA bridge** (8086:7000, class 06/01), the parent of the legacy devices.
//!   OVMF enumerates the PS/2 keyboard and the serial ports under it (its ISA/SIO bus
//!   driver binds to the bridge), so without it OVMF has neither keyboard nor serial
//!   console. It is multi-function, so guests scan its other functions. Its PIRQ route
//!   registers (0x60..0x63) keep what the firmware writes; this machine's interrupts do not
//!   depend on them (the IOAPIC routes the PCI slots' lines, as the ACPI tables say).
//! * the **power management** function (8086:7113, class 06/80), whose PMBA register
//!   (0x40) places the ACPI PM block (PM1 event and control, and the PM timer) in port I/O
//!   space and whose PMREGMISC bit 0 (0x80) turns that decoding on. OVMF programs both
//!   before it uses the PM timer for every delay; the block follows PMBA on the port bus.

use std::sync::{Arc, Weak};

use super::i440fx::{INTEL_VENDOR_ID, QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID};
use super::{PciConfiguration, PciDevice, PciHeader};
use crate::bus::{Bus, SharedBusDevice};

/// The PIIX3 PCI-to-ISA bridge's device ID.
pub const PIIX3_ISA_DEVICE_ID: u16 = 0x7000;
/// The PIIX4 power management function's device ID.
pub const PIIX4_PM_DEVICE_ID: u16 = 0x7113;
/// The slot both functions live in, as on QEMU's `pc` machine.
pub const PIIX_SLOT: u8 = 1;
/// The power management function's number.
pub const PM_FUNCTION: u8 = 3;
/// The power management base register (PMBA).
pub const PMBA: usize = 0x40;
/// The register whose bit 0 turns the PM I/O block's decoding on (PMREGMISC).
pub const PMREGMISC: usize = 0x80;
/// First PIRQ route register (PIRQA..PIRQD follow).
const PIRQ_ROUTE: usize = 0x60;

/// The PCI-to-ISA bridge at 00:01.0.
pub struct Piix3IsaBridge {
    config: PciConfiguration,
}

impl Piix3IsaBridge {
    /// The bridge in its power-on state (every PIRQ disabled).
    pub fn new() -> Self {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: INTEL_VENDOR_ID,
            device_id: PIIX3_ISA_DEVICE_ID,
            revision_id: 0,
            class: 0x06,
            subclass: 0x01,
            prog_if: 0,
            subsystem_vendor_id: QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id: QEMU_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        // Multi-function: the power management function is 00:01.3.
        config.set_bytes(0x0e, &[0x80]);
        config.set_bytes(PIRQ_ROUTE, &[0x80; 4]);
        config.set_mask(PIRQ_ROUTE, &[0x8f; 4]);
        Piix3IsaBridge { config }
    }
}

impl Default for Piix3IsaBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for Piix3IsaBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

/// The power management function at 00:01.3: its PMBA register moves the ACPI PM block
/// (a device already registered on the port bus) to where the firmware puts it.
pub struct Piix4Pm {
    config: PciConfiguration,
    pio_bus: Weak<Bus>,
    /// Where the PM block is registered on the port bus now.
    base: u16,
}

impl Piix4Pm {
    /// The function with the PM block `block` registered on `pio_bus` at `base` (the
    /// address the ACPI tables give), which PMBA reads as until the guest moves it, with
    /// decoding on (the block is there from power-on, whatever the guest writes to
    /// PMREGMISC; the machine's firmware and the guest find it where the tables say).
    pub fn new(
        pio_bus: &Arc<Bus>,
        base: u16,
        block: SharedBusDevice,
        len: u64,
    ) -> crate::Result<Self> {
        pio_bus.insert(u64::from(base), len, block)?;
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: INTEL_VENDOR_ID,
            device_id: PIIX4_PM_DEVICE_ID,
            revision_id: 3,
            class: 0x06,
            subclass: 0x80,
            prog_if: 0,
            subsystem_vendor_id: QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id: QEMU_SUBSYSTEM_ID,
            // The SCI, on ISA IRQ 9.
            interrupt_pin: 1,
        });
        config.set_bytes(0x3c, &[9]);
        // PMBA: bits 15..6 are the base, bit 0 reads 1 (an I/O address).
        config.set_u32(PMBA, u32::from(base) | 1);
        config.set_mask(PMBA, &[0xc0, 0xff, 0, 0]);
        config.set_bytes(PMREGMISC, &[1]);
        config.set_mask(PMREGMISC, &[1]);
        Ok(Piix4Pm {
            config,
            pio_bus: Arc::downgrade(pio_bus),
            base,
        })
    }

    /// Where the PM block decodes now.
    pub fn base(&self) -> u16 {
        self.base
    }
}

impl PciDevice for Piix4Pm {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let wanted = (self.config.u32_at(PMBA) & 0xffc0) as u16;
        if wanted == self.base {
            return;
        }
        let Some(bus) = self.pio_bus.upgrade() else {
            return;
        };
        // A base of 0 or one over another device's ports keeps the block where it is (as
        // a chipset whose decoder loses to the other device would make it unreachable;
        // keeping it reachable is kinder and the guest cannot tell the difference).
        match (wanted != 0)
            .then(|| bus.relocate(u64::from(self.base), u64::from(wanted)))
            .transpose()
        {
            Ok(Some(())) => {
                tracing::debug!(from = self.base, to = wanted, "ACPI PM block moved");
                self.base = wanted;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(to = wanted, "ACPI PM block not moved: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::{BusDevice, BusKind};
    use crate::pci::{PciRoot, PciWindows};

    struct Block;
    impl BusDevice for Block {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(0x40 + offset as u8);
        }
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {}
    }

    fn root_with_piix() -> (PciRoot, Arc<Bus>) {
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mut root = PciRoot::new(
            mmio,
            pio.clone(),
            PciWindows {
                mem32: (0xc000_0000, 0x1000_0000),
                mem64: (1 << 36, 1 << 30),
                io: (0xc000, 0x1000),
            },
        );
        root.add_device_at(PIIX_SLOT, Arc::new(Mutex::new(Piix3IsaBridge::new())))
            .unwrap();
        let pm = Piix4Pm::new(&pio, 0x600, Arc::new(Mutex::new(Block)), 16).unwrap();
        root.add_function(PIIX_SLOT, PM_FUNCTION, Arc::new(Mutex::new(pm)))
            .unwrap();
        (root, pio)
    }

    fn read32(root: &PciRoot, function: u8, offset: usize) -> u32 {
        let mut b = [0; 4];
        root.config_read(PIIX_SLOT, function, offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn both_functions_answer_with_their_ids_and_others_are_absent() {
        let (root, _) = root_with_piix();
        assert_eq!(read32(&root, 0, 0), 0x7000_8086);
        assert_eq!(read32(&root, 0, 0x0c) >> 16 & 0xff, 0x80, "multi-function");
        assert_eq!(read32(&root, 0, 0x08) >> 16, 0x0601);
        assert_eq!(read32(&root, PM_FUNCTION, 0), 0x7113_8086);
        assert_eq!(read32(&root, 1, 0), 0xffff_ffff);
        assert_eq!(read32(&root, PM_FUNCTION, PMBA), 0x601);
    }

    #[test]
    fn pmba_moves_the_pm_block_on_the_port_bus() {
        let (mut root, pio) = root_with_piix();
        let mut b = [0u8; 1];
        assert!(pio.read(0x608, &mut b));
        assert_eq!(b[0], 0x48);
        // OVMF's value.
        root.config_write(PIIX_SLOT, PM_FUNCTION, PMBA, &0xb001u32.to_le_bytes());
        root.config_write(PIIX_SLOT, PM_FUNCTION, PMREGMISC, &[1]);
        assert_eq!(read32(&root, PM_FUNCTION, PMBA), 0xb001);
        assert!(pio.read(0xb008, &mut b));
        assert_eq!(b[0], 0x48);
        assert!(!pio.read(0x608, &mut b), "nothing left at the old base");
        // Low bits are not writable; zero keeps the block reachable.
        root.config_write(PIIX_SLOT, PM_FUNCTION, PMBA, &0u32.to_le_bytes());
        assert!(pio.read(0xb008, &mut b));
    }

    #[test]
    fn a_function_needs_a_multi_function_device_zero() {
        let (mut root, pio) = root_with_piix();
        let pm = |base: u16| {
            Arc::new(Mutex::new(
                Piix4Pm::new(&pio, base, Arc::new(Mutex::new(Block)), 16).unwrap(),
            ))
        };
        assert!(root.add_function(5, 3, pm(0x700)).is_err(), "no device 5");
        assert!(root.add_function(PIIX_SLOT, 3, pm(0x740)).is_err(), "taken");
        assert!(root.add_function(PIIX_SLOT, 0, pm(0x780)).is_err());
        assert!(root.add_function(PIIX_SLOT, 8, pm(0x7c0)).is_err());
        assert!(
            root.add_function(0, 2, pm(0x800)).is_err(),
            "the host bridge is single-function"
        );
    }
}
