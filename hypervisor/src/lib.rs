//! The hypervisor trait set Vivarium's VMM runs on, whatever the hypervisor: a [`Hypervisor`]
//! makes [`Vm`]s; a VM maps guest memory, gives interrupt lines and MSIs, reads a dirty log
//! where the hypervisor keeps one, and makes [`Vcpu`]s; a vCPU runs until an exit the VMM
//! handles ([`VcpuExit`]) and can be kicked out of its run from another thread ([`Kicker`]).
//!
//! The set is small on purpose (in the spirit of alioth's `hv` module and Cloud Hypervisor's
//! `hypervisor` crate): what a machine needs, not what a hypervisor offers. Everything a board
//! decides (the address map, how a CPU enters the guest, the firmware) is described in the
//! hypervisor's terms here and carried out by the backend: KVM on Linux (`vivarium-backend-kvm`)
//! and, on macOS on Apple Silicon, Hypervisor.framework (`vivarium-backend-hvf`).
//!
//! Rules every backend keeps, because the VMM relies on them:
//! - A vCPU is created, set up and run on one thread, the one that calls [`Vm::create_vcpu`]
//!   (Hypervisor.framework binds a vCPU to its thread; KVM does not mind).
//! - [`Vcpu::run`] returns to the VMM for every access it cannot complete itself, and
//!   [`VcpuExit::Interrupted`] when kicked; a kick that lands while the vCPU is not inside the
//!   hypervisor may be lost, so the VMM kicks until the vCPU acknowledges.
//! - A read exit's data is taken as the guest's value at the next [`Vcpu::run`].

pub mod aarch64;
pub mod x86;

use std::sync::Arc;

pub use vivarium_core::backend::HostSupport;

/// Errors of a hypervisor backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call into the hypervisor failed.
    #[error("{context}: {source}")]
    Hypervisor {
        /// What was being done.
        context: &'static str,
        /// The hypervisor's error.
        #[source]
        source: std::io::Error,
    },
    /// The request is one this hypervisor or this host cannot carry out.
    #[error("{0}")]
    Unsupported(String),
    /// The request contradicts the VM's state (an overlapping mapping, an unknown one).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An error from the OS error number a hypervisor call returned.
    pub fn from_errno(context: &'static str, errno: i32) -> Error {
        Error::Hypervisor {
            context,
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A hypervisor of this host: probes it and makes VMs.
pub trait Hypervisor: Send + Sync + 'static {
    /// Its short name ("kvm", "hvf").
    fn name(&self) -> &'static str;

    /// Whether VMs run on this host, in words a user can act on.
    fn probe(&self) -> HostSupport;

    /// The most vCPUs one VM may have here.
    fn max_vcpus(&self) -> Result<u32>;

    /// A new, empty VM: no memory, no vCPUs, and the interrupt controllers of the VM's
    /// architecture (on x86_64 a PC's: PIC, IOAPIC, local APICs and the PIT).
    fn create_vm(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>>;
}

/// What a board says about a VM before it exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// vCPUs the VM will have.
    pub cpus: u32,
    /// Guest-physical pages the hypervisor may keep for itself (on x86 KVM: its TSS and
    /// identity-map pages), four pages from this address, where neither RAM nor a device
    /// is; `None` where the hypervisor needs none.
    pub hypervisor_pages: Option<u64>,
    /// On aarch64: where the GICv3 goes. Its shared interrupts are the VM's interrupt lines
    /// (line `n` is SPI `n`, INTID 32 + `n`).
    pub gic: Option<aarch64::GicV3>,
}

/// A range of host memory mapped into a VM's guest-physical address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapping {
    /// Where the guest sees it.
    pub guest_address: u64,
    /// Its length in bytes (a multiple of the page size).
    pub size: u64,
    /// The host memory behind it.
    pub host_address: *mut u8,
    /// Guest writes exit to the VMM as MMIO instead of landing in the memory (ROM, flash).
    /// Refused by a hypervisor without read-only mappings ([`Vm::read_only_memory`]).
    pub read_only: bool,
    /// The hypervisor records which pages the guest writes ([`Vm::dirty_pages`]).
    pub log_dirty: bool,
}

// SAFETY: the pointer is only an address handed to the hypervisor; whoever maps it promises
// (in `Vm::map_memory`'s contract) that the memory outlives the mapping.
unsafe impl Send for MemoryMapping {}
// SAFETY: as above; nothing is read or written through it here.
unsafe impl Sync for MemoryMapping {}

/// A VM: its guest memory, interrupts and vCPUs.
pub trait Vm: Send + Sync {
    /// Maps host memory into the guest at `mapping.guest_address`.
    ///
    /// # Safety
    /// `mapping.host_address .. + mapping.size` must be a valid mapping of this process that
    /// stays mapped until [`Vm::unmap_memory`] of it or until the VM and all its vCPUs are
    /// gone; the guest range must not overlap another mapping.
    unsafe fn map_memory(&self, mapping: MemoryMapping) -> Result<()>;

    /// Removes the mapping that starts at `guest_address`.
    fn unmap_memory(&self, guest_address: u64) -> Result<()>;

    /// Whether read-only mappings exist here (guest writes to them exit as MMIO).
    fn read_only_memory(&self) -> bool;

    /// The pages of the mapping at `guest_address` (mapped with `log_dirty`) that the guest
    /// wrote since the last call, one bit per page; `Ok(None)` when this hypervisor keeps no
    /// dirty log (the caller then compares the memory itself).
    fn dirty_pages(&self, guest_address: u64) -> Result<Option<Vec<u64>>>;

    /// The interrupt line `line` of the VM's interrupt controller (on x86 a GSI of the
    /// IOAPIC and PIC; on aarch64 an SPI of the GIC).
    fn interrupt_line(&self, line: u32) -> Result<Arc<dyn InterruptLine>>;

    /// Delivers a message-signalled interrupt: `data` written to `address`.
    fn signal_msi(&self, address: u64, data: u32) -> Result<()>;

    /// Makes vCPU `index` (0 is the boot CPU) in the state of a CPU after reset, set up as
    /// this machine's CPUs are (on aarch64 an application processor starts powered off,
    /// until the boot CPU's PSCI `CPU_ON`). Call it on the thread that will run the vCPU.
    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>>;

    /// Called once every vCPU of the VM exists, before any runs (KVM initialises its GICv3
    /// then, sized by the vCPUs).
    fn vcpus_created(&self) -> Result<()> {
        Ok(())
    }
}

/// An interrupt line into the VM's interrupt controller.
pub trait InterruptLine: Send + Sync {
    /// An edge: the line rises and falls (an ISA device's interrupt).
    fn pulse(&self) -> Result<()>;
    /// Holds the line at `asserted` (a level-triggered line: PCI INTx, a GIC SPI) until told
    /// otherwise.
    fn set_level(&self, asserted: bool) -> Result<()>;
}

/// A virtual CPU. Not `Send`: it lives and dies on the thread that created it.
pub trait Vcpu {
    /// Runs the guest until an exit the VMM must handle.
    fn run(&mut self) -> Result<VcpuExit<'_>>;

    /// What interrupts [`Vcpu::run`] from another thread.
    fn kicker(&self) -> Arc<dyn Kicker>;

    /// The registers as text, for crash reports.
    fn describe_registers(&self) -> String;

    /// Sets where and how an x86 CPU enters the guest (a board's direct boot); a CPU that is
    /// not told starts at the reset vector, as a PC's does.
    fn set_x86_entry(&mut self, entry: &x86::Entry) -> Result<()> {
        let _ = entry;
        Err(Error::Unsupported("this vCPU is not an x86 CPU".into()))
    }

    /// Sets where an aarch64 CPU enters the guest (a board's direct boot).
    fn set_aarch64_entry(&mut self, entry: &aarch64::Entry) -> Result<()> {
        let _ = entry;
        Err(Error::Unsupported("this vCPU is not an aarch64 CPU".into()))
    }
}

/// Where and how a vCPU enters the guest when the board boots it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An x86 CPU.
    X86(x86::Entry),
    /// An aarch64 CPU.
    Aarch64(aarch64::Entry),
}

impl Entry {
    /// Puts `vcpu` there.
    pub fn apply(&self, vcpu: &mut dyn Vcpu) -> Result<()> {
        match self {
            Entry::X86(entry) => vcpu.set_x86_entry(entry),
            Entry::Aarch64(entry) => vcpu.set_aarch64_entry(entry),
        }
    }
}

/// Interrupts a running vCPU from another thread.
pub trait Kicker: Send + Sync {
    /// Makes the vCPU's current or next-entered run return [`VcpuExit::Interrupted`] soon,
    /// unless it is not inside the hypervisor (then the kick may be lost: repeat it).
    fn kick(&self);
}

/// Why [`Vcpu::run`] returned.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// The guest read I/O port `port`: fill `data`.
    IoIn {
        /// The port.
        port: u16,
        /// Where the value goes (1, 2 or 4 bytes).
        data: &'a mut [u8],
    },
    /// The guest wrote `data` to I/O port `port`.
    IoOut {
        /// The port.
        port: u16,
        /// The value written.
        data: &'a [u8],
    },
    /// The guest read from `address`, where no memory is mapped: fill `data`.
    MmioRead {
        /// The guest-physical address.
        address: u64,
        /// Where the value goes.
        data: &'a mut [u8],
    },
    /// The guest wrote `data` to `address`, where no writable memory is mapped.
    MmioWrite {
        /// The guest-physical address.
        address: u64,
        /// The value written.
        data: &'a [u8],
    },
    /// The vCPU has nothing to do until an interrupt (only where the hypervisor does not wait
    /// itself).
    Idle,
    /// Kicked ([`Kicker::kick`]) or interrupted by a signal: look at the machine's state.
    Interrupted,
    /// The guest asked the platform to power off.
    PowerOff,
    /// The guest asked the platform to reset.
    Reset,
    /// The guest crashed (a triple fault; an instruction the hypervisor could not run): what
    /// happened (the VMM adds [`Vcpu::describe_registers`]).
    Crashed(String),
    /// The hypervisor could not go on with this vCPU: why (the VMM adds the registers).
    Failed(String),
}
