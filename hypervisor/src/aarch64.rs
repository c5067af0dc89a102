//! The aarch64 parts of the trait set: where the GICv3 is, and how a CPU enters the guest
//! when a board boots Linux directly (the arm64 boot protocol).

/// Where a VM's GICv3 is and how MSIs reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicV3 {
    /// The distributor's base (64 KiB).
    pub distributor: u64,
    /// The first redistributor's base (128 KiB per vCPU, one after another).
    pub redistributors: u64,
}

impl GicV3 {
    /// Size of the distributor's frame.
    pub const DISTRIBUTOR_SIZE: u64 = 0x1_0000;
    /// Size of one vCPU's redistributor (its RD and SGI frames).
    pub const REDISTRIBUTOR_SIZE: u64 = 0x2_0000;
    /// The first shared peripheral interrupt's INTID (SPIs are numbered from here).
    pub const FIRST_SPI: u32 = 32;
}

/// How an aarch64 CPU starts: at EL1 with the MMU off and interrupts masked (the Linux arm64
/// boot protocol), at `pc` with `x0` (Linux: the device tree's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The first instruction.
    pub pc: u64,
    /// `x0`.
    pub x0: u64,
}
