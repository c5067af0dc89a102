//! The crate's error type.

use std::io;

/// Errors reported by the device models to the VMM (never to the guest, which only
/// sees device-visible failures such as status bytes).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bus range has zero length or its end overflows the address space.
    #[error("invalid bus range: base {base:#x} length {len:#x}")]
    InvalidRange {
        /// Start of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// A bus range overlaps one already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing range")]
    Overlap {
        /// Start of the refused range.
        base: u64,
        /// Length of the refused range.
        len: u64,
    },
    /// No device is registered at that base address.
    #[error("no device registered at {0:#x}")]
    NotMapped(u64),
    /// The PCI bus has no free device slot.
    #[error("no free PCI device slot")]
    NoFreeSlot,
    /// The requested PCI slot is already used or out of range.
    #[error("PCI slot {0} is unavailable")]
    SlotUnavailable(u8),
    /// A BAR could not be placed in its address window.
    #[error("no room for a {size:#x}-byte BAR in the {window} window")]
    OutOfBarSpace {
        /// Which window was full.
        window: &'static str,
        /// Size of the BAR that did not fit.
        size: u64,
    },
    /// A BAR description is invalid (size not a power of two, too small, bad index).
    #[error("invalid BAR {index}: {reason}")]
    InvalidBar {
        /// BAR index.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// PCI configuration space has no room left for a capability.
    #[error("no room for a {0}-byte PCI capability")]
    CapabilitySpace(usize),
    /// A virtio queue could not be set up.
    #[error("virtio queue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A virtio device could not be activated.
    #[error("virtio device activation failed: {0}")]
    Activation(String),
    /// The device hit a condition that requires the driver to reset it.
    #[error("device needs reset: {0}")]
    NeedsReset(String),
    /// Guest memory could not be accessed.
    #[error("guest memory error: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The guest has its PS/2 keyboard or mouse turned off (no driver yet, or it disabled
    /// the device), so host input for it was not sent.
    #[error(
        "the guest has not enabled its PS/2 {0} (no driver loaded yet, or it turned the device off): the input was not sent"
    )]
    InputDisabled(&'static str),
    /// The guest has not read earlier PS/2 input; the new input was not queued.
    #[error(
        "the guest is not reading its PS/2 {0} fast enough: the input was not sent; send it again later"
    )]
    InputQueueFull(&'static str),
    /// A flash device's storage does not fit its geometry.
    #[error("invalid flash: {0}")]
    InvalidFlash(String),
    /// A host I/O operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
