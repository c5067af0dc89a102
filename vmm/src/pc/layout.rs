//! The guest physical address map of a Vivarium x86_64 machine.
//!
//! ```text
//! 0x0000_0000 .. 0x0009_fc00   RAM (real-mode area; boot structures below)
//!   0x0000_0500                GDT
//!   0x0000_0520                IDT (empty)
//!   0x0000_7000                Linux zero page (boot_params)
//!   0x0000_9000 .. 0x0000_c000 identity page tables (PML4, PDPT, PD)
//!   0x0002_0000                kernel command line
//! 0x0009_fc00 .. 0x0010_0000   reserved (EBDA, VGA hole, BIOS area)
//!   0x000e_0000                ACPI tables (RSDP found by the kernel's scan of 0xe0000)
//! 0x0010_0000 .. RAM top       RAM (kernel at 1 MiB, initrd at the top)
//! 0xc000_0000 .. 0xe000_0000   32-bit PCI MMIO window (BARs)
//!   0xc000_0000                the display's video memory (bochs display BAR 0, the first BAR
//!                              assigned; `screen_info` announces it at boot), up to 64 MiB
//! 0xe000_0000 .. 0xf000_0000   PCI ECAM (MCFG), 256 buses
//! 0xfec0_0000                  IOAPIC
//! 0xfee0_0000                  local APIC
//! 4 GiB .. 4 GiB + rest        RAM above the hole, when there is more than 3 GiB
//! ```

use vm_memory::GuestAddress;

/// Start of the PCI hole below 4 GiB: RAM stops here and resumes at 4 GiB.
pub const PCI_HOLE_START: u64 = 0xc000_0000;
/// End of the PCI hole.
pub const PCI_HOLE_END: u64 = 1 << 32;
/// 32-bit MMIO window for PCI BARs.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// Where the display's video memory (the bochs display's BAR 0) is at boot: the start of the
/// 32-bit window, which the first BAR assigned gets. A guest may move the BAR; the memory
/// follows it.
pub const FRAMEBUFFER_START: u64 = PCI_MMIO32_START;
/// PCI Express enhanced configuration space (ECAM).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// The last PCI bus number the machine declares (MCFG and the host bridge's `_CRS`). Every
/// device sits on the root bus and there are no bridges; declaring 256 buses would make
/// Linux probe 32 slots on each of them through port I/O at boot (about a second of exits
/// in a nested VM).
pub const PCI_LAST_BUS: u8 = 0;
/// Size of the ECAM window (256 buses x 32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// Size of the 64-bit MMIO window placed above RAM.
pub const PCI_MMIO64_SIZE: u64 = 1 << 36;
/// The IOAPIC's MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;

/// Four pages the hypervisor may keep for itself (on KVM: the identity-map page, then the
/// three pages of the TSS of Intel's real-mode emulation), in the PCI hole below the
/// firmware's flash area and above where firmware places BARs (it is what QEMU uses).
pub const HYPERVISOR_PAGES: u64 = 0xfeff_c000;

/// End of the 32-bit window in which PC firmware places BARs: the IOAPIC.
pub const FIRMWARE_MMIO32_END: u64 = IOAPIC_START;

/// Start of the 32-bit window in which PC firmware (SeaBIOS and OVMF on an i440FX) places
/// BARs: 2 GiB when RAM below 4 GiB ends at or below 2 GiB, else 3 GiB (where it ends at the
/// latest).
pub fn firmware_mmio32_start(memory_size: u64) -> u64 {
    if low_ram_end(memory_size) <= 0x8000_0000 {
        0x8000_0000
    } else {
        PCI_HOLE_START
    }
}

/// Global descriptor table for 64-bit entry.
pub const GDT_START: GuestAddress = GuestAddress(0x500);
/// Interrupt descriptor table (empty) for 64-bit entry.
pub const IDT_START: GuestAddress = GuestAddress(0x520);
/// Linux zero page.
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// Page directory pointer table.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// Page directory (identity maps the first GiB with 2 MiB pages).
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x2_0000);
/// Most bytes of command line the machine accepts (Linux's x86 limit is 2048 on old
/// kernels; current ones take the size from the header).
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// End of the low RAM the e820 map reports as usable.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables.
pub const ACPI_START: GuestAddress = GuestAddress(0xe_0000);
/// Where the kernel is loaded (1 MiB).
pub const HIGH_RAM_START: GuestAddress = GuestAddress(0x10_0000);

/// The RAM regions for `size` bytes of guest memory, leaving the PCI hole free.
pub fn ram_regions(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= PCI_HOLE_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), PCI_HOLE_START as usize),
            (GuestAddress(PCI_HOLE_END), (size - PCI_HOLE_START) as usize),
        ]
    }
}

/// The end of RAM below 4 GiB (exclusive).
pub fn low_ram_end(size: u64) -> u64 {
    size.min(PCI_HOLE_START)
}

/// Where the 64-bit MMIO window starts: above all RAM, aligned to its size.
pub fn mmio64_start(size: u64) -> u64 {
    let top = if size <= PCI_HOLE_START {
        PCI_HOLE_END
    } else {
        PCI_HOLE_END + (size - PCI_HOLE_START)
    };
    top.div_ceil(PCI_MMIO64_SIZE) * PCI_MMIO64_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(low_ram_end(256 << 20), 256 << 20);
    }

    #[test]
    fn large_memory_skips_the_pci_hole() {
        let regions = ram_regions(6 << 30);
        assert_eq!(regions[0], (GuestAddress(0), 3 << 30));
        assert_eq!(regions[1], (GuestAddress(4 << 30), 3 << 30));
        let total: usize = regions.iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 6 << 30);
        assert!(mmio64_start(6 << 30) >= 7 << 30);
    }
}
