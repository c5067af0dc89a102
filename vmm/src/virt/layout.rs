//! The `virt` board's guest-physical address map (the places QEMU's `virt` machine uses, so
//! a guest that knows one knows the other):
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x0802_0000  GICv2m MSI frame (4 KiB): device MSIs become SPIs
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU)
//! 0x0900_0000  the UART (4 KiB)
//! 0x0901_0000  PL031 real-time clock (4 KiB)
//! 0x1000_0000  PCI 32-bit memory window, to 0x3eff_0000
//! 0x3f00_0000  PCI ECAM (bus 0: 1 MiB)
//! 0x4000_0000  RAM
//! 0x80_0000_0000  PCI 64-bit memory window (64 GiB)
//! ```

use vivarium_hypervisor::aarch64::GicV3;

/// The GICv3 distributor.
pub const GIC_DISTRIBUTOR: u64 = 0x0800_0000;
/// The GICv2m MSI frame.
pub const MSI_FRAME: u64 = 0x0802_0000;
/// The MSI frame's size.
pub const MSI_FRAME_SIZE: u64 = 0x1000;
/// The first GICv3 redistributor.
pub const GIC_REDISTRIBUTORS: u64 = 0x080a_0000;
/// Where the redistributors must end (the UART follows).
pub const GIC_REDISTRIBUTORS_END: u64 = 0x0900_0000;
/// The UART.
pub const UART: u64 = 0x0900_0000;
/// The real-time clock.
pub const RTC: u64 = 0x0901_0000;
/// Size of the UART's and the RTC's frames.
pub const DEVICE_FRAME_SIZE: u64 = 0x1000;
/// PCI's 32-bit memory window.
pub const PCI_MMIO32_START: u64 = 0x1000_0000;
/// Its size.
pub const PCI_MMIO32_SIZE: u64 = 0x2eff_0000;
/// PCI's configuration space (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0x3f00_0000;
/// Its size: one bus.
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// RAM.
pub const RAM_START: u64 = 0x4000_0000;
/// The most RAM the board has (RAM must end below the 64-bit PCI window).
pub const RAM_MAX: u64 = PCI_MMIO64_START - RAM_START;
/// PCI's 64-bit memory window.
pub const PCI_MMIO64_START: u64 = 0x80_0000_0000;
/// Its size.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// The MSI frame's SPIs: `MSI_SPIS` of them from SPI `MSI_FIRST_SPI` (INTID 32 + that).
pub const MSI_FIRST_SPI: u32 = 64;
/// How many SPIs the MSI frame hands out.
pub const MSI_SPIS: u32 = 64;
/// The UART's SPI.
pub const UART_SPI: u32 = 1;
/// The RTC's SPI.
pub const RTC_SPI: u32 = 2;

/// The most vCPUs the board has: as many redistributors as fit before the UART.
pub const MAX_CPUS: u32 =
    ((GIC_REDISTRIBUTORS_END - GIC_REDISTRIBUTORS) / GicV3::REDISTRIBUTOR_SIZE) as u32;

/// The GICv3 of the board.
pub const GIC: GicV3 = GicV3 {
    distributor: GIC_DISTRIBUTOR,
    redistributors: GIC_REDISTRIBUTORS,
};

/// The MPIDR affinity of vCPU `index` as KVM and Hypervisor.framework give it (Aff0 holds 16
/// CPUs, then Aff1), which the device tree's `cpu@` nodes name.
pub fn mpidr(index: u32) -> u64 {
    u64::from(index % 16) | (u64::from(index / 16) << 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_does_not_overlap() {
        let mut ranges = [
            (GIC_DISTRIBUTOR, GicV3::DISTRIBUTOR_SIZE),
            (MSI_FRAME, MSI_FRAME_SIZE),
            (
                GIC_REDISTRIBUTORS,
                u64::from(MAX_CPUS) * GicV3::REDISTRIBUTOR_SIZE,
            ),
            (UART, DEVICE_FRAME_SIZE),
            (RTC, DEVICE_FRAME_SIZE),
            (PCI_MMIO32_START, PCI_MMIO32_SIZE),
            (PCI_ECAM_START, PCI_ECAM_SIZE),
            (RAM_START, RAM_MAX),
            (PCI_MMIO64_START, PCI_MMIO64_SIZE),
        ];
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        assert_eq!(MAX_CPUS, 123);
        assert_eq!(mpidr(17), 0x101);
        // Everything fits in a 40-bit guest address space (KVM's default).
        const { assert!(PCI_MMIO64_START + PCI_MMIO64_SIZE <= 1 << 40) };
    }
}
