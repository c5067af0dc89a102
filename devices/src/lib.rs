//! Arch-neutral device models for Vivarium. They see guest memory, a bus and an
//! interrupt line; they never name a hypervisor API.
//!
//! A backend wires the models to its exits like this:
//!
//! * Build two [`bus::Bus`]es, one for port I/O and one for MMIO, and dispatch every
//!   PIO/MMIO exit to [`bus::Bus::read`] / [`bus::Bus::write`]. Unmapped accesses read
//!   all-ones and ignore writes.
//! * Create a [`pci::PciRoot`] with both buses, register [`pci::PciConfigIo`] at port
//!   `0xcf8` (8 ports) and [`pci::PciConfigMmio`] (ECAM) on the MMIO bus, and describe
//!   the ECAM window to the guest (ACPI MCFG or FDT).
//! * Add PCI devices with [`pci::PciRoot::add_device`]: the root assigns BAR addresses from
//!   its 32-bit and 64-bit windows and maps/unmaps/moves BARs on the MMIO bus whenever
//!   the guest reprograms them; a [`pci::BarRemapListener`] tells the backend too (e.g.
//!   to move ioeventfds).
//! * Virtio devices ([`virtio::block::Block`], [`virtio::rng::Rng`]) sit behind
//!   [`virtio::pci::VirtioPciDevice`], which signals MSI-X messages through the backend's
//!   [`pci::MsiSignaller`] and processes a queue when the guest writes its notify
//!   register or when the backend calls [`virtio::pci::VirtioPciDevice::notify_queue`].
//! * The 16550 UART ([`serial::Serial`]) goes on the PIO bus (or MMIO bus) and raises an
//!   [`IrqLine`] the backend implements.
//! * The PL011 UART ([`pl011::Pl011`], the console of an aarch64 `virt` board) goes on the
//!   MMIO bus (4 KiB) and holds a [`LevelIrq`] (a GIC SPI) at the level its masked
//!   interrupt status says. Both UARTs take host input through [`ConsoleInput`].
//! * The i8042 PS/2 controller ([`i8042::I8042`]) goes on the PIO bus at `0x60` (5 ports)
//!   with two [`IrqLine`]s (keyboard, mouse) and a [`i8042::ResetLine`]; the host types and
//!   moves the mouse through its [`i8042::Ps2Input`] handle from any thread.
//! * virtio-input ([`virtio::input::Input`], a keyboard or an absolute tablet) sits behind
//!   the virtio transport like the other virtio devices; the host types and points
//!   through its [`virtio::input::InputSender`] from any thread.
#![deny(missing_docs)]

pub mod acpi_pm;
pub mod bus;
pub mod display;
pub mod error;
pub mod fw_cfg;
pub mod i8042;
pub mod pci;
pub mod pflash;
pub mod pl011;
pub mod rtc;
pub mod scsi;
pub mod serial;
pub mod virtio;

pub use error::{Error, Result};

use std::sync::{Mutex, MutexGuard};

/// The guest memory type every device model works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// An interrupt line (edge or level, the backend decides) that a device can raise.
///
/// The KVM backend implements it with an irqfd or `KVM_IRQ_LINE`; the HVF backend with
/// its GIC. Device models only call [`IrqLine::trigger`].
pub trait IrqLine: Send + Sync {
    /// Raise the interrupt.
    fn trigger(&self) -> std::io::Result<()>;
}

/// An interrupt line a device holds at a level: asserted while the device wants service,
/// deasserted when it no longer does (a GIC SPI, a PCI INTx pin).
///
/// A trait of its own rather than a `set_level` method on [`IrqLine`]: an edge line (an ISA
/// interrupt, an irqfd) has no level to hold, and a default method that pulsed on assertion
/// would silently give a level device edge semantics, so every implementation of
/// [`IrqLine`] would have to invent one. A device that needs a level takes a `LevelIrq`;
/// the VMM implements it over the hypervisor's level lines.
pub trait LevelIrq: Send + Sync {
    /// Hold the line asserted (`true`) or deasserted (`false`) until told otherwise.
    /// Setting the level it already has is harmless.
    fn set_level(&self, asserted: bool) -> std::io::Result<()>;
}

/// A UART's receive side as the host's console sees it, so the VMM's console code drives a
/// 16550 ([`serial::Serial`]) and a PL011 ([`pl011::Pl011`]) alike.
pub trait ConsoleInput: Send {
    /// Queues bytes the guest will read; returns how many fit in the receive FIFO (the
    /// rest is the caller's to send again later).
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize;
    /// Room left in the receive FIFO.
    fn input_room(&self) -> usize;
}

/// Lock a mutex, recovering the data if another thread panicked while holding it: a
/// device model must keep serving the guest rather than propagate a poison panic.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
