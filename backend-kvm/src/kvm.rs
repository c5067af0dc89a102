//! The hypervisor trait set on KVM: [`Kvm`] (the `/dev/kvm` of this host), [`KvmVm`] (a VM:
//! memory slots, interrupt lines through irqfds and `KVM_IRQ_LINE`, MSIs, the dirty log) and
//! [`KvmVcpu`] (a vCPU set up as a PC's CPU, its exits translated).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Once};

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, kvm_userspace_memory_region};
#[cfg(target_arch = "x86_64")]
use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Cap, VcpuExit as KvmExit, VcpuFd, VmFd};
use vivarium_hypervisor::{
    HostSupport, Hypervisor, InterruptLine, Kicker, MemoryMapping, Vcpu, VcpuExit, Vm, VmSpec,
};
#[cfg(target_arch = "x86_64")]
use vmm_sys_util::eventfd::EventFd;

#[cfg(target_arch = "aarch64")]
use crate::arm64;
#[cfg(target_arch = "x86_64")]
use crate::cpu;
use crate::error::{Error, Result, kvm_error};
use crate::probe::{self, HostPaths};

/// KVM on this host.
#[derive(Debug, Clone, Default)]
pub struct Kvm {
    paths: HostPaths,
}

impl Kvm {
    /// KVM through this host's `/dev/kvm`.
    pub fn new() -> Kvm {
        Kvm::default()
    }

    fn open() -> Result<kvm_ioctls::Kvm> {
        kvm_ioctls::Kvm::new().map_err(kvm_error("opening /dev/kvm"))
    }
}

impl Hypervisor for Kvm {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn probe(&self) -> HostSupport {
        probe::probe(&self.paths)
    }

    fn max_vcpus(&self) -> Result<u32> {
        Ok(Kvm::open()?.get_max_vcpus() as u32)
    }

    fn create_vm(&self, spec: &VmSpec) -> Result<Arc<dyn Vm>> {
        install_kick_handler();
        let kvm = Kvm::open()?;
        let fd = kvm
            .create_vm()
            .map_err(kvm_error("KVM refused creating a VM"))?;
        #[cfg(target_arch = "x86_64")]
        {
            // The TSS (three pages) and the identity map (one page) of Intel's real-mode
            // emulation live where the board keeps room for them.
            let pages = spec.hypervisor_pages.ok_or_else(|| {
                Error::Invalid("a KVM x86 VM needs four guest pages for KVM's own use".into())
            })?;
            fd.set_identity_map_address(pages)
                .map_err(kvm_error("KVM refused placing the identity map"))?;
            fd.set_tss_address((pages + 0x1000) as usize)
                .map_err(kvm_error("KVM refused placing the TSS"))?;
            fd.create_irq_chip()
                .map_err(kvm_error("KVM refused creating the interrupt controllers"))?;
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit)
                .map_err(kvm_error("KVM refused creating the PIT"))?;
        }
        #[cfg(target_arch = "aarch64")]
        let gic = {
            let layout = spec.gic.as_ref().ok_or_else(|| {
                Error::Invalid("a KVM/arm64 VM needs a place for its GICv3".into())
            })?;
            Mutex::new(Some(arm64::create_gic(&fd, layout)?))
        };
        let read_only = kvm.check_extension(Cap::ReadonlyMem);
        let max_slots = kvm.get_nr_memslots() as u32;
        Ok(Arc::new(KvmVm {
            kvm,
            fd: Arc::new(fd),
            #[cfg(target_arch = "aarch64")]
            gic,
            cpus: spec.cpus,
            read_only,
            slots: Mutex::new(Slots {
                mapped: BTreeMap::new(),
                free: Vec::new(),
                next: 0,
                max: max_slots,
            }),
        }))
    }
}

/// The memory slots of a VM, by guest address.
struct Slots {
    mapped: BTreeMap<u64, Slot>,
    /// Slot numbers given back by unmapping.
    free: Vec<u32>,
    /// The next slot number never used.
    next: u32,
    /// How many slots KVM has.
    max: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    number: u32,
    size: u64,
}

impl Slots {
    fn take_number(&mut self) -> Result<u32> {
        if let Some(number) = self.free.pop() {
            return Ok(number);
        }
        if self.next >= self.max {
            return Err(Error::Unsupported(format!(
                "KVM has only {} memory slots and all are in use",
                self.max
            )));
        }
        self.next += 1;
        Ok(self.next - 1)
    }
}

/// A KVM VM.
pub struct KvmVm {
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    kvm: kvm_ioctls::Kvm,
    fd: Arc<VmFd>,
    /// The in-kernel GICv3, initialised once every vCPU exists.
    #[cfg(target_arch = "aarch64")]
    gic: Mutex<Option<kvm_ioctls::DeviceFd>>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    cpus: u32,
    read_only: bool,
    slots: Mutex<Slots>,
}

impl KvmVm {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Vm for KvmVm {
    unsafe fn map_memory(&self, mapping: MemoryMapping) -> Result<()> {
        if mapping.read_only && !self.read_only {
            return Err(Error::Unsupported(
                "this KVM has no read-only memory (KVM_CAP_READONLY_MEM)".into(),
            ));
        }
        let mut slots = self.slots();
        let start = mapping.guest_address;
        let end = start
            .checked_add(mapping.size)
            .ok_or_else(|| Error::Invalid(format!("a mapping at {start:#x} wraps around")))?;
        let overlaps = slots
            .mapped
            .range(..end)
            .next_back()
            .is_some_and(|(&at, slot)| at + slot.size > start);
        if overlaps {
            return Err(Error::Invalid(format!(
                "guest memory at {start:#x}..{end:#x} overlaps a mapping"
            )));
        }
        let number = slots.take_number()?;
        let mut flags = 0;
        if mapping.read_only {
            flags |= KVM_MEM_READONLY;
        }
        if mapping.log_dirty {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let region = kvm_userspace_memory_region {
            slot: number,
            flags,
            guest_phys_addr: start,
            memory_size: mapping.size,
            userspace_addr: mapping.host_address as u64,
        };
        // SAFETY: the caller promises the host range stays mapped for as long as the guest
        // can reach it (this function's contract); the guest range overlaps no other slot
        // (checked above).
        if let Err(e) = unsafe { self.fd.set_user_memory_region(region) } {
            slots.free.push(number);
            return Err(Error::from_errno(
                "KVM refused registering guest memory",
                e.errno(),
            ));
        }
        slots.mapped.insert(
            start,
            Slot {
                number,
                size: mapping.size,
            },
        );
        Ok(())
    }

    fn unmap_memory(&self, guest_address: u64) -> Result<()> {
        let mut slots = self.slots();
        let slot = *slots.mapped.get(&guest_address).ok_or_else(|| {
            Error::Invalid(format!("no guest memory is mapped at {guest_address:#x}"))
        })?;
        let region = kvm_userspace_memory_region {
            slot: slot.number,
            flags: 0,
            guest_phys_addr: guest_address,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: a slot of size 0 deletes the slot; no memory is handed to KVM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(kvm_error("KVM refused removing guest memory"))?;
        slots.mapped.remove(&guest_address);
        slots.free.push(slot.number);
        Ok(())
    }

    fn read_only_memory(&self) -> bool {
        self.read_only
    }

    fn dirty_pages(&self, guest_address: u64) -> Result<Option<Vec<u64>>> {
        let slot = *self.slots().mapped.get(&guest_address).ok_or_else(|| {
            Error::Invalid(format!("no guest memory is mapped at {guest_address:#x}"))
        })?;
        let size = usize::try_from(slot.size)
            .map_err(|_| Error::Invalid("a mapping larger than the address space".into()))?;
        self.fd
            .get_dirty_log(slot.number, size)
            .map(Some)
            .map_err(kvm_error("KVM refused giving the dirty log"))
    }

    fn interrupt_line(&self, line: u32) -> Result<Arc<dyn InterruptLine>> {
        // On arm64 the GIC's interrupt routing exists only once the GIC is initialised (after
        // the vCPUs), and the board wires its devices before: edges go through
        // `KVM_IRQ_LINE` there too.
        #[cfg(target_arch = "x86_64")]
        let event = {
            let event = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Hypervisor {
                context: "creating an eventfd",
                source,
            })?;
            self.fd
                .register_irqfd(&event, line)
                .map_err(kvm_error("KVM refused registering an interrupt line"))?;
            event
        };
        Ok(Arc::new(KvmInterruptLine {
            vm: Arc::clone(&self.fd),
            line,
            #[cfg(target_arch = "x86_64")]
            event,
            #[cfg(target_arch = "aarch64")]
            pulsing: Mutex::new(()),
        }))
    }

    #[cfg(target_arch = "aarch64")]
    fn signal_msi(&self, _address: u64, _data: u32) -> Result<()> {
        Err(Error::Unsupported(
            "a KVM/arm64 VM here has no ITS: MSIs reach the GIC through the board's MSI frame \
             as SPIs"
                .into(),
        ))
    }

    #[cfg(target_arch = "x86_64")]
    fn signal_msi(&self, address: u64, data: u32) -> Result<()> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(kvm_error("KVM refused delivering an MSI"))
    }

    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(index))
            .map_err(kvm_error("KVM refused creating a vCPU"))?;
        #[cfg(target_arch = "x86_64")]
        {
            cpu::setup_cpuid(&self.kvm, &fd, index, self.cpus)?;
            cpu::setup_msrs(&fd)?;
            cpu::setup_fpu(&fd)?;
            cpu::setup_lapic(&fd)?;
        }
        #[cfg(target_arch = "aarch64")]
        arm64::init_vcpu(&self.fd, &fd, index)?;
        Ok(Box::new(KvmVcpu {
            fd,
            // SAFETY: pthread_self has no preconditions.
            thread: unsafe { libc::pthread_self() },
        }))
    }

    #[cfg(target_arch = "aarch64")]
    fn vcpus_created(&self) -> Result<()> {
        let gic = self.gic.lock().unwrap_or_else(|e| e.into_inner());
        match gic.as_ref() {
            Some(gic) => arm64::finish_gic(gic),
            None => Ok(()),
        }
    }
}

/// A line of KVM's in-kernel interrupt controller (a GSI of the IOAPIC and PIC on x86, an SPI
/// of the GICv3 on arm64): on x86 edges through an irqfd (no ioctl on the device's thread),
/// levels through `KVM_IRQ_LINE`; on arm64 both through `KVM_IRQ_LINE`.
struct KvmInterruptLine {
    vm: Arc<VmFd>,
    line: u32,
    #[cfg(target_arch = "x86_64")]
    event: EventFd,
    /// Held across a pulse's rise and fall, so two threads pulsing at once give two edges
    /// rather than one rise, one fall and a lost interrupt.
    #[cfg(target_arch = "aarch64")]
    pulsing: Mutex<()>,
}

impl InterruptLine for KvmInterruptLine {
    #[cfg(target_arch = "x86_64")]
    fn pulse(&self) -> Result<()> {
        self.event.write(1).map_err(|source| Error::Hypervisor {
            context: "raising an interrupt line",
            source,
        })
    }

    #[cfg(target_arch = "aarch64")]
    fn pulse(&self) -> Result<()> {
        let _edge = self.pulsing.lock().unwrap_or_else(|e| e.into_inner());
        self.set_level(true)?;
        self.set_level(false)
    }

    fn set_level(&self, asserted: bool) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        let line = self.line;
        #[cfg(target_arch = "aarch64")]
        let line = arm64::spi_irq_line(self.line);
        self.vm
            .set_irq_line(line, asserted)
            .map_err(kvm_error("KVM refused setting an interrupt line"))
    }
}

/// Installs the no-op handler of the signal that kicks vCPUs out of KVM_RUN (once per process).
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
        if let Err(e) =
            vmm_sys_util::signal::register_signal_handler(vmm_sys_util::signal::SIGRTMIN(), noop)
        {
            tracing::error!("could not install the vCPU kick handler: {e}");
        }
    });
}

/// A KVM vCPU, on the thread that created it.
pub struct KvmVcpu {
    fd: VcpuFd,
    thread: libc::pthread_t,
}

/// Kicks a vCPU thread out of KVM_RUN with a signal (KVM_RUN returns EINTR).
struct SignalKicker {
    thread: libc::pthread_t,
}

impl Kicker for SignalKicker {
    fn kick(&self) {
        // SAFETY: the thread is a vCPU thread of this process that the machine joins only
        // after it has dropped this kicker (it keeps the kickers of a boot only while the
        // boot's vCPU threads run); the signal has a no-op handler (`install_kick_handler`).
        unsafe {
            libc::pthread_kill(self.thread, vmm_sys_util::signal::SIGRTMIN());
        }
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VcpuExit<'_>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(VcpuExit::Interrupted);
            }
            Err(e) => return Err(Error::from_errno("KVM_RUN failed", e.errno())),
        };
        Ok(match exit {
            KvmExit::IoOut(port, data) => VcpuExit::IoOut { port, data },
            KvmExit::IoIn(port, data) => VcpuExit::IoIn { port, data },
            KvmExit::MmioRead(address, data) => VcpuExit::MmioRead { address, data },
            KvmExit::MmioWrite(address, data) => VcpuExit::MmioWrite { address, data },
            // Only without an in-kernel irqchip; ours has one.
            KvmExit::Hlt => VcpuExit::Idle,
            KvmExit::Shutdown => VcpuExit::Crashed("triple-faulted (the guest crashed)".into()),
            KvmExit::SystemEvent(kind, _) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuExit::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuExit::Reset,
                other => VcpuExit::Crashed(format!("system event {other}")),
            },
            KvmExit::InternalError => VcpuExit::Crashed(
                "KVM internal error (KVM could not emulate an instruction; a software-only \
                 KVM such as kvm_pvm cannot run full guests)"
                    .into(),
            ),
            KvmExit::FailEntry(reason, cpu_id) => VcpuExit::Failed(format!(
                "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu_id})"
            )),
            other => VcpuExit::Failed(format!("unexpected exit {other:?}")),
        })
    }

    fn kicker(&self) -> Arc<dyn Kicker> {
        Arc::new(SignalKicker {
            thread: self.thread,
        })
    }

    fn describe_registers(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        return cpu::describe_registers(&self.fd);
        #[cfg(target_arch = "aarch64")]
        return arm64::describe_registers(&self.fd);
    }

    #[cfg(target_arch = "x86_64")]
    fn set_x86_entry(&mut self, entry: &vivarium_hypervisor::x86::Entry) -> Result<()> {
        cpu::set_entry(&self.fd, entry)
    }

    #[cfg(target_arch = "aarch64")]
    fn set_aarch64_entry(&mut self, entry: &vivarium_hypervisor::aarch64::Entry) -> Result<()> {
        arm64::set_entry(&self.fd, entry)
    }
}
