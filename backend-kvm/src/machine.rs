//! A running KVM machine: the VM, its memory, devices and vCPU threads, and the control
//! plane (pause, resume, power off, reset) that the VM runner drives.
//!
//! One machine thread owns the VM. It builds the VM, starts one thread per vCPU, and waits
//! until something asks the machine to stop: the guest (power off, reset, triple fault) or
//! the host (a [`ControlRequest`]). A reset rebuilds the VM from scratch, which is exactly
//! what a reset button does to a PC.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vivarium_core::backend::{
    BackendError, BootSpec, ControlRequest, MachineExit, MachineSpec, RunningMachine,
};
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::acpi_pm::{AcpiPm, AcpiPmPorts};
use vivarium_devices::bus::{Bus, BusKind};
use vivarium_devices::i8042::Ps2Input;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::memory::GuestRam;
use crate::{boot, cpu, layout};

/// Why a machine stops.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    PowerOff,
    Reset,
    Crash(String),
    Failed(String),
}

/// State shared by the machine thread, the vCPU threads and the controller.
struct Control {
    state: Mutex<ControlState>,
    changed: Condvar,
}

#[derive(Default)]
struct ControlState {
    paused: bool,
    stop: Option<Stop>,
    /// vCPU threads currently inside their run loop.
    vcpus_running: usize,
    /// vCPU threads parked because the machine is paused.
    vcpus_parked: usize,
    /// Thread handles of the vCPU threads, for kicking them out of KVM_RUN.
    vcpu_threads: Vec<libc::pthread_t>,
    /// Set when the machine thread has ended.
    ended: Option<MachineExit>,
    /// The current boot's ACPI power-management block, where the power button is.
    acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    /// The current boot's PS/2 keyboard and mouse input (a reset builds a new i8042).
    ps2_input: Option<Ps2Input>,
    /// The current boot's serial port, where console input goes.
    serial: Option<Arc<Mutex<vivarium_devices::serial::Serial>>>,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records why the machine stops and wakes everybody. The first reason wins, except that
    /// a reset gives way to anything final (a power-off during a reboot must not be lost).
    fn stop(&self, why: Stop) {
        let mut state = self.lock();
        if state.stop.is_none() || (state.stop == Some(Stop::Reset) && why != Stop::Reset) {
            state.stop = Some(why);
        }
        drop(state);
        self.changed.notify_all();
        self.kick_vcpus();
    }

    /// Interrupts every vCPU thread that is inside KVM_RUN so it looks at the control state.
    fn kick_vcpus(&self) {
        let threads = self.lock().vcpu_threads.clone();
        for thread in threads {
            // SAFETY: the handle belongs to a vCPU thread of this machine that is joined only
            // after its handle is removed from the list under the same lock; the signal has
            // a no-op handler installed by `install_kick_handler`.
            unsafe {
                libc::pthread_kill(thread, vmm_sys_util::signal::SIGRTMIN());
            }
        }
    }

    /// Kicks the vCPUs repeatedly until `done` holds (a kick can land just before a vCPU
    /// enters KVM_RUN and be missed; the next one is not) or the timeout passes.
    fn kick_until(&self, timeout: Duration, done: impl Fn(&ControlState) -> bool) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if done(&self.lock()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            self.kick_vcpus();
            let state = self.lock();
            let _ = self
                .changed
                .wait_timeout(state, Duration::from_millis(5))
                .unwrap_or_else(|e| e.into_inner());
        }
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

/// The guest's reset request (i8042 command 0xfe, ACPI reset) as a machine stop.
struct GuestReset(Arc<Control>);

impl vivarium_devices::i8042::ResetLine for GuestReset {
    fn reset(&self) {
        self.0.stop(Stop::Reset);
    }
}

/// Serial output shared across resets (the device is rebuilt, the sink stays).
#[derive(Clone)]
struct SharedOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The parts of a [`MachineSpec`] a machine keeps across resets.
struct MachinePlan {
    cpus: u32,
    memory_size: u64,
    boot: BootSpec,
    disks: Vec<vivarium_core::backend::DiskSpec>,
    network: Option<vivarium_core::backend::NetworkSpec>,
    /// The CD-ROM drive (with its medium) outlives each build of the machine.
    cdrom: Option<vivarium_devices::scsi::cdrom::CdromControl>,
    /// The screen; its display file (and video memory) outlives each build.
    display: Option<vivarium_core::backend::DisplaySpec>,
    serial: SharedOutput,
}

/// A machine started by [`start`].
pub struct KvmMachine {
    control: Arc<Control>,
    /// The CD-ROM drive, shared with every build of the machine.
    cdrom: Option<vivarium_devices::scsi::cdrom::CdromControl>,
    thread: Option<JoinHandle<()>>,
}

/// Checks a machine description against what this host can give.
fn check_plan(spec: &MachineSpec) -> Result<()> {
    if spec.cpus == 0 {
        return Err(Error::InvalidMachine(
            "a machine needs at least one CPU".into(),
        ));
    }
    let kvm = Kvm::new().map_err(|e| Error::Kvm {
        context: "opening /dev/kvm",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    let max = kvm.get_max_vcpus() as u32;
    if spec.cpus > max {
        return Err(Error::InvalidMachine(format!(
            "{} CPUs is more than this host's KVM allows ({max})",
            spec.cpus
        )));
    }
    let memory = spec.memory_mib << 20;
    if let Some(host) = host_memory_bytes()
        && memory > host
    {
        return Err(Error::InvalidMachine(format!(
            "the VM wants {} MiB of memory but this host has only {} MiB: give it less",
            spec.memory_mib,
            host >> 20
        )));
    }
    if matches!(spec.boot, BootSpec::Firmware { .. }) && spec.memory_mib < 16 {
        return Err(Error::InvalidMachine(format!(
            "a machine booted by firmware needs at least 16 MiB of memory, not {} MiB",
            spec.memory_mib
        )));
    }
    if let BootSpec::Linux { kernel, initrd, .. } = &spec.boot {
        if !kernel.is_file() {
            return Err(Error::Kernel {
                path: kernel.clone(),
                why: "the file does not exist".into(),
            });
        }
        if let Some(initrd) = initrd
            && !initrd.is_file()
        {
            return Err(Error::Initrd {
                path: initrd.clone(),
                why: "the file does not exist".into(),
            });
        }
    }
    Ok(())
}

fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Builds and starts a machine on a thread of its own.
pub fn start(spec: MachineSpec) -> Result<KvmMachine> {
    check_plan(&spec)?;
    install_kick_handler();
    let plan = MachinePlan {
        cpus: spec.cpus,
        memory_size: spec.memory_mib << 20,
        boot: spec.boot,
        disks: spec.disks,
        network: spec.network,
        display: spec.display,
        cdrom: spec
            .cdrom
            .as_ref()
            .map(crate::devices::open_cdrom)
            .transpose()?,
        serial: SharedOutput(Arc::new(Mutex::new(spec.serial_output))),
    };
    let control = Arc::new(Control {
        state: Mutex::new(ControlState::default()),
        changed: Condvar::new(),
    });
    // Build the first boot before returning, so configuration errors reach the caller.
    let first = Vm::build(&plan, &control)?;
    let cdrom = plan.cdrom.clone();
    let thread_control = Arc::clone(&control);
    let thread = std::thread::Builder::new()
        .name("vivarium-machine".into())
        .spawn(move || {
            vivarium_threads::started(vivarium_threads::ThreadKind::Machine);
            machine_thread(plan, first, thread_control)
        })
        .map_err(|e| Error::Setup(format!("could not start the machine thread: {e}")))?;
    Ok(KvmMachine {
        control,
        cdrom,
        thread: Some(thread),
    })
}

/// The text of a panic's payload (what `panic!` was given).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `body`, a thread of the machine named `what`: if it panics, the machine stops as
/// failed with the panic's message (the process's panic hook has written where it happened
/// to standard error, which is the VM process's `vm.log`), instead of the other threads
/// waiting for it forever. The devices it may have left half-updated are not used again: a
/// failed machine is torn down.
fn supervised(what: &str, control: &Control, body: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let message = panic_message(payload.as_ref());
        tracing::error!("{what} panicked: {message}");
        control.stop(Stop::Failed(format!(
            "{what} panicked: {message} (vm.log says where)"
        )));
    }
}

fn machine_thread(plan: MachinePlan, first: Vm, control: Arc<Control>) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        machine_loop(&plan, first, &control)
    }));
    let exit = run.unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        tracing::error!("the machine thread panicked: {message}");
        // Its vCPU threads may still run: stop them before reporting the end.
        control.stop(Stop::Failed(message.clone()));
        control.kick_until(Duration::from_secs(10), |s| s.vcpus_running == 0);
        MachineExit::Failed {
            error: format!("the machine thread panicked: {message} (vm.log says where)"),
        }
    });
    let _ = plan.serial.clone().flush();
    control.lock().ended = Some(exit);
    control.changed.notify_all();
}

fn machine_loop(plan: &MachinePlan, first: Vm, control: &Arc<Control>) -> MachineExit {
    let mut vm = Some(first);
    loop {
        let current = match vm.take() {
            Some(vm) => vm,
            None => match Vm::build(plan, control) {
                Ok(vm) => vm,
                Err(e) => {
                    break MachineExit::Failed {
                        error: format!("could not rebuild the machine after a reset: {e}"),
                    };
                }
            },
        };
        match current.run(control) {
            Stop::Reset => {
                tracing::info!("the machine resets");
                let mut state = control.lock();
                // A power-off or crash that arrived during the reset still stands.
                if state.stop == Some(Stop::Reset) {
                    state.stop = None;
                    continue;
                }
                match state.stop.clone() {
                    Some(Stop::Crash(report)) => break MachineExit::Crashed { report },
                    Some(Stop::Failed(error)) => break MachineExit::Failed { error },
                    _ => break MachineExit::PoweredOff,
                }
            }
            Stop::PowerOff => break MachineExit::PoweredOff,
            Stop::Crash(report) => break MachineExit::Crashed { report },
            Stop::Failed(error) => break MachineExit::Failed { error },
        }
    }
}

impl KvmMachine {
    /// Keyboard and mouse input into the running boot's PS/2 devices; `None` once the
    /// machine has ended. A reset replaces the devices, so fetch the handle again after
    /// one (a handle of an earlier boot goes nowhere).
    pub fn ps2_input(&self) -> Option<Ps2Input> {
        let state = self.control.lock();
        if state.ended.is_some() {
            return None;
        }
        state.ps2_input.clone()
    }
}

impl RunningMachine for KvmMachine {
    fn change_cdrom(
        &self,
        medium: Option<vivarium_core::backend::CdromMedium>,
        force: bool,
    ) -> std::result::Result<(), BackendError> {
        if self.control.lock().ended.is_some() {
            return Err(BackendError::Stopped);
        }
        let Some(cdrom) = &self.cdrom else {
            return Err(BackendError::Unsupported(
                "this VM has no CD-ROM drive: give it one while it is stopped (vivarium set \
                 NAME --iso FILE)"
                    .into(),
            ));
        };
        let refused = |e: vivarium_devices::scsi::cdrom::CdromError| {
            BackendError::InvalidMachine(e.to_string())
        };
        match (medium, force) {
            (Some(medium), _) => cdrom
                .insert_file(medium.file, &medium.path)
                .map_err(refused),
            (None, true) => {
                cdrom.force_eject();
                Ok(())
            }
            (None, false) => cdrom.eject().map_err(refused),
        }
    }

    fn request(&self, request: ControlRequest) -> std::result::Result<(), BackendError> {
        if self.control.lock().ended.is_some() {
            return Err(BackendError::Stopped);
        }
        match request {
            ControlRequest::PowerOff => self.control.stop(Stop::PowerOff),
            ControlRequest::Reset => self.control.stop(Stop::Reset),
            ControlRequest::Pause => {
                self.control.lock().paused = true;
                let parked = self.control.kick_until(Duration::from_secs(5), |s| {
                    s.vcpus_parked == s.vcpus_running || s.stop.is_some()
                });
                if !parked {
                    return Err(BackendError::InvalidMachine(
                        "the vCPUs did not stop within 5 seconds".into(),
                    ));
                }
            }
            ControlRequest::Resume => {
                self.control.lock().paused = false;
                self.control.changed.notify_all();
            }
            ControlRequest::PowerButton => {
                let pm = self.control.lock().acpi_pm.clone();
                match pm {
                    Some(pm) => pm
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .press_power_button(),
                    None => return Err(BackendError::Stopped),
                }
            }
        }
        Ok(())
    }

    fn send_serial_input(&self, bytes: &[u8]) -> std::result::Result<usize, BackendError> {
        let serial = {
            let state = self.control.lock();
            if state.ended.is_some() {
                return Err(BackendError::Stopped);
            }
            state.serial.clone()
        };
        match serial {
            Some(serial) => Ok(serial
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .enqueue_input(bytes)),
            None => Ok(0),
        }
    }

    fn send_input(
        &self,
        events: &[vivarium_core::input::InputEvent],
    ) -> std::result::Result<(), BackendError> {
        let ps2 = {
            let state = self.control.lock();
            if state.ended.is_some() {
                return Err(BackendError::Stopped);
            }
            state.ps2_input.clone()
        };
        match ps2 {
            Some(ps2) => crate::input::deliver(&ps2, events),
            // Between a reset and the new boot's devices: like keys pressed while a PC
            // restarts, they are lost.
            None => tracing::debug!("{} input events dropped during a reset", events.len()),
        }
        Ok(())
    }

    fn wait(&self) -> MachineExit {
        let mut state = self.control.lock();
        loop {
            if let Some(exit) = &state.ended {
                return exit.clone();
            }
            state = self
                .control
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for KvmMachine {
    fn drop(&mut self) {
        // Dropping the handle powers the machine off and waits for its threads.
        if self.control.lock().ended.is_none() {
            self.control.stop(Stop::PowerOff);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One boot of the machine: the KVM VM with its memory, devices and vCPUs.
struct Vm {
    _vm: Arc<VmFd>,
    _memory: Arc<GuestMemoryMmap>,
    /// The screen's refresh thread (dirty log to display file).
    screen: Option<crate::display::RefreshThread>,
    /// The firmware's ROM and BIOS area, mapped for as long as the VM lives.
    _bios_area: Option<Arc<crate::firmware::BiosArea>>,
    /// The UEFI variable store, mapped for as long as the VM lives.
    _uefi_vars: Option<Arc<crate::firmware::VarsMapping>>,
    vcpus: Vec<VcpuFd>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// Owns the RAM mappings behind `_memory`; last, so it is dropped after everything that
    /// uses them.
    ram: GuestRam,
}

fn kvm_error(context: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm {
        context,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// Where OVMF places the ACPI PM block through the PIIX4's PMBA (its `PcdAcpiPmBaseAddress`).
const UEFI_PM_BASE: u16 = 0xb000;

impl Vm {
    fn build(plan: &MachinePlan, control: &Arc<Control>) -> Result<Vm> {
        let kvm = Kvm::new().map_err(kvm_error("opening /dev/kvm"))?;
        let vm = kvm.create_vm().map_err(kvm_error("creating a VM"))?;
        // The TSS and identity map pages live in the PCI hole below the firmware's flash area,
        // where nothing else is mapped.
        vm.set_tss_address(layout::KVM_TSS as usize)
            .map_err(kvm_error("placing the TSS"))?;
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(kvm_error("placing the identity map"))?;
        vm.create_irq_chip()
            .map_err(kvm_error("creating the interrupt controllers"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(kvm_error("creating the PIT"))?;

        let ram = GuestRam::allocate(&layout::ram_regions(plan.memory_size))?;
        let memory = Arc::clone(ram.memory());
        let firmware = match &plan.boot {
            BootSpec::Firmware { firmware, .. } => Some(firmware),
            _ => None,
        };
        // A BIOS machine's screen is the standard VGA, whose legacy window 0xa0000..0xbffff is
        // the VGA's memory (trapped MMIO), not RAM.
        let standard_vga = plan.display.is_some()
            && matches!(
                firmware,
                Some(vivarium_core::backend::FirmwareSpec::Bios { .. })
            );
        for (index, region) in memory.iter().enumerate() {
            let host = memory
                .get_host_address(region.start_addr())
                .map_err(|e| Error::Setup(format!("guest memory has no host mapping: {e}")))?
                as u64;
            let start = region.start_addr().raw_value();
            let slot = if index == 0 {
                layout::SLOT_RAM_LOW
            } else {
                layout::SLOT_RAM_HIGH
            };
            // With firmware, the BIOS area (0xc0000..1 MiB) of the first region is mapped on
            // its own, segment by segment as the PAM registers say (`firmware::BiosArea`).
            let pieces: Vec<(u32, u64, u64)> = if index == 0 && firmware.is_some() {
                let bios_start = vivarium_devices::pci::i440fx::PAM_AREA_START;
                let bios_end = vivarium_devices::pci::i440fx::PAM_AREA_END;
                let low_end = if standard_vga {
                    vivarium_devices::display::vga::WINDOW_START
                } else {
                    bios_start
                };
                vec![
                    (slot, 0, low_end),
                    (
                        layout::SLOT_RAM_ABOVE_BIOS_AREA,
                        bios_end,
                        region.len() - bios_end,
                    ),
                ]
            } else {
                vec![(slot, 0, region.len())]
            };
            for (slot, offset, size) in pieces {
                // Guest RAM is not advised with MADV_HUGEPAGE (the nested test rig's kernel
                // stalled now and then after a VM ended with it); it is 2 MiB-aligned, so hosts
                // whose transparent huge pages are on for all memory back it with huge pages.
                let region_info = kvm_userspace_memory_region {
                    slot,
                    flags: 0,
                    guest_phys_addr: start + offset,
                    memory_size: size,
                    userspace_addr: host + offset,
                };
                // SAFETY: the mapping is owned by `memory`, which lives at least until every
                // vCPU of this VM has stopped running (they are joined before the `Vm` is
                // dropped), so KVM never touches an unmapped range on behalf of a running
                // guest; no two slots overlap.
                unsafe { vm.set_user_memory_region(region_info) }
                    .map_err(kvm_error("registering guest memory"))?;
            }
        }

        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let reset = Arc::new(GuestReset(Arc::clone(control)));
        let legacy = crate::devices::attach_legacy_devices(
            &vm,
            &pio,
            plan.serial.clone(),
            reset.clone(),
            plan.memory_size,
        )?;
        {
            let mut state = control.lock();
            state.ps2_input = Some(legacy.ps2_input);
            state.serial = Some(legacy.serial);
        }
        let power_control = Arc::clone(control);
        let power_off = Arc::new(crate::devices::GuestPowerOff(Box::new(move || {
            power_control.stop(Stop::PowerOff)
        })));
        let uefi = matches!(
            firmware,
            Some(vivarium_core::backend::FirmwareSpec::Uefi { .. })
        );
        // The ACPI PM block: at QEMU's place on a BIOS or direct-boot machine; on a UEFI
        // machine where OVMF puts it through the PIIX4's PMBA (the tables say so too).
        let pm_ports = if uefi {
            AcpiPmPorts::new(UEFI_PM_BASE).expect("the UEFI PM block fits in port space")
        } else {
            AcpiPmPorts::STANDARD
        };
        let acpi_pm = crate::devices::attach_acpi_pm(
            &vm,
            &pio,
            power_off,
            reset,
            (!uefi).then_some(pm_ports),
        )?;
        let piix = uefi
            .then(|| crate::devices::piix_functions(&pio, acpi_pm.clone(), pm_ports))
            .transpose()?;
        control.lock().acpi_pm = Some(acpi_pm);
        let vm = Arc::new(vm);
        let read_only_slots = kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem);
        // UEFI: the variable store flash right below the code.
        let mut uefi_vars = None;
        // The firmware's images: the BIOS and the display's VGA BIOS, or OVMF's code (OVMF
        // drives the display itself).
        let (bios, vga_rom) = match firmware {
            Some(vivarium_core::backend::FirmwareSpec::Uefi { code, vars }) => {
                let rom = Arc::new(crate::firmware::Rom::load_uefi_code(code)?);
                let mapping = crate::firmware::VarsMapping::open(vars)?;
                let base = rom.guest_address() - mapping.len() as u64;
                let flash = crate::firmware::uefi_vars_flash(
                    Arc::clone(&vm),
                    mapping.clone(),
                    base,
                    read_only_slots,
                )?;
                mmio.insert(base, mapping.len() as u64, Arc::new(Mutex::new(flash)))
                    .map_err(|e| {
                        Error::Setup(format!("could not place the UEFI variable store: {e}"))
                    })?;
                uefi_vars = Some(mapping);
                (Some(rom), None)
            }
            Some(vivarium_core::backend::FirmwareSpec::Bios { image, vga_rom }) => {
                let rom = Arc::new(crate::firmware::Rom::load(image)?);
                let vga = match (vga_rom, &plan.display) {
                    (Some(path), Some(_)) => {
                        Some(std::fs::read(path).map_err(|e| Error::Firmware {
                            path: path.clone(),
                            why: format!(
                                "{e}: install the `seabios` package (sudo apt install seabios)"
                            ),
                        })?)
                    }
                    _ => None,
                };
                (Some(rom), vga)
            }
            None => (None, None),
        };
        let screen = plan
            .display
            .as_ref()
            .map(|d| -> Result<_> {
                let screen = crate::display::KvmScreen::new(
                    Arc::clone(&vm),
                    Arc::clone(&d.shared),
                    layout::SLOT_DISPLAY,
                )?;
                Ok(crate::devices::ScreenDevice {
                    screen,
                    width: d.width,
                    height: d.height,
                    // A firmware sets its own modes; a directly booted kernel gets one set.
                    boot_mode: firmware.is_none(),
                    option_rom: vga_rom.clone(),
                    vga: standard_vga,
                })
            })
            .transpose()?;
        let boot_framebuffer = screen.as_ref().map(|s| boot::BootFramebuffer {
            base: layout::FRAMEBUFFER_START as u32,
            size: s.screen.display().vram_size(),
            width: s.width as u16,
            height: s.height as u16,
            stride: (s.width * 4) as u16,
        });
        let refresh = screen
            .as_ref()
            .map(|s| crate::display::RefreshThread::start(Arc::clone(&s.screen)))
            .transpose()?;
        // With firmware: the ROM, the BIOS area following the i440FX's PAM registers, and
        // the host bridge itself.
        let bios_area = bios
            .map(|rom| {
                crate::firmware::BiosArea::new(
                    Arc::clone(&vm),
                    Arc::clone(&memory),
                    rom,
                    read_only_slots,
                )
            })
            .transpose()?;
        let host_bridge = bios_area.as_ref().map(|area| {
            let bridge = vivarium_devices::pci::i440fx::I440fxHostBridge::new(area.clone());
            Arc::new(Mutex::new(bridge)) as vivarium_devices::pci::SharedPciDevice
        });
        if let Some(area) = &bios_area {
            use vivarium_devices::pci::i440fx::{PAM_AREA_END, PAM_AREA_START};
            mmio.insert(
                PAM_AREA_START,
                PAM_AREA_END - PAM_AREA_START,
                Arc::new(Mutex::new(crate::firmware::BiosAreaWrites(area.clone()))),
            )
            .map_err(|e| Error::Setup(format!("could not place the BIOS area: {e}")))?;
        }
        let slots = crate::devices::attach_pci(
            &vm,
            &pio,
            &mmio,
            &memory,
            plan.memory_size,
            crate::devices::PciDevices {
                disks: &plan.disks,
                network: plan.network.as_ref(),
                cdrom: plan.cdrom.as_ref(),
                screen,
                host_bridge,
                piix,
            },
        )?;
        let mmio64_start = layout::mmio64_start(plan.memory_size);
        let mmio64 = mmio64_start..mmio64_start + layout::PCI_MMIO64_SIZE;
        let rsdp = match &plan.boot {
            BootSpec::Firmware { order, menu, .. } => {
                let pci = crate::acpi::PciLayout {
                    mmio32: layout::firmware_mmio32_start(plan.memory_size)
                        ..layout::FIRMWARE_MMIO32_END,
                    mmio64,
                    ecam: false,
                };
                let acpi = crate::acpi::build_firmware_acpi(plan.cpus, &pm_ports, &pci)?;
                let boot_order: Vec<String> = order
                    .iter()
                    .filter_map(|device| match device {
                        vivarium_core::backend::BootDevice::Disk(i) => slots
                            .disks
                            .get(*i)
                            .map(|slot| crate::firmware::disk_boot_path(*slot)),
                        vivarium_core::backend::BootDevice::Cdrom => {
                            slots.cdrom.map(crate::firmware::cdrom_boot_path)
                        }
                    })
                    .collect();
                let fw_cfg = crate::firmware::fw_cfg(
                    Arc::clone(&memory),
                    &crate::firmware::FirmwareConfig {
                        cpus: plan.cpus,
                        memory_size: plan.memory_size,
                        boot_order: &boot_order,
                        menu: *menu,
                        acpi: &acpi,
                        display: plan.display.is_some(),
                        uefi,
                    },
                )?;
                pio.insert(
                    u64::from(vivarium_devices::fw_cfg::X86_PORT),
                    vivarium_devices::fw_cfg::X86_PORT_LEN,
                    Arc::new(Mutex::new(fw_cfg)),
                )
                .map_err(|e| Error::Setup(format!("could not place fw_cfg: {e}")))?;
                None
            }
            _ => Some(crate::acpi::write_acpi_tables(
                &memory, plan.cpus, &pm_ports, mmio64,
            )?),
        };

        let mut vcpus = Vec::with_capacity(plan.cpus as usize);
        for index in 0..plan.cpus {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_error("creating a vCPU"))?;
            cpu::setup_cpuid(&kvm, &vcpu, index, plan.cpus)?;
            cpu::setup_msrs(&vcpu)?;
            cpu::setup_fpu(&vcpu)?;
            cpu::setup_lapic(&vcpu)?;
            vcpus.push(vcpu);
        }
        match &plan.boot {
            BootSpec::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let entry = boot::load_linux(
                    &memory,
                    plan.memory_size,
                    kernel,
                    initrd.as_deref(),
                    cmdline,
                    rsdp,
                    boot_framebuffer.as_ref(),
                )?;
                cpu::setup_long_mode(&memory, &vcpus[0], entry.entry)?;
            }
            BootSpec::RealModeImage { code, load_address } => {
                memory
                    .write_slice(code, GuestAddress(*load_address))
                    .map_err(|e| {
                        Error::InvalidMachine(format!("the boot image does not fit: {e}"))
                    })?;
                cpu::setup_real_mode(&vcpus[0], *load_address)?;
            }
            // The vCPUs start where a PC's do after reset: at the reset vector
            // (0xfffffff0, CS base 0xffff0000), which is the top of the firmware image; the
            // other vCPUs wait for the firmware's INIT/SIPI.
            BootSpec::Firmware { .. } => {}
        }
        Ok(Vm {
            _vm: vm,
            _memory: memory,
            _bios_area: bios_area,
            _uefi_vars: uefi_vars,
            screen: refresh,
            ram,
            vcpus,
            pio,
            mmio,
        })
    }

    /// Runs the vCPUs until the machine stops; returns why.
    fn run(self, control: &Arc<Control>) -> Stop {
        let Vm {
            _vm: vm,
            _memory: memory,
            _bios_area: bios_area,
            _uefi_vars: uefi_vars,
            screen,
            ram,
            vcpus,
            pio,
            mmio,
        } = self;
        let mut threads = Vec::new();
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let thread_control = Arc::clone(control);
            let pio = Arc::clone(&pio);
            let mmio = Arc::clone(&mmio);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    vivarium_threads::started(vivarium_threads::ThreadKind::Vcpu);
                    supervised(&format!("vCPU {index}"), &thread_control, || {
                        vcpu_thread(index, vcpu, &thread_control, &pio, &mmio)
                    })
                });
            match spawned {
                Ok(handle) => {
                    control.lock().vcpu_threads.push(handle.as_pthread_t());
                    threads.push(handle);
                }
                Err(e) => control.stop(Stop::Failed(format!("could not start a vCPU thread: {e}"))),
            }
        }
        // Wait for a reason to stop, then for every vCPU thread to leave its loop.
        {
            let mut state = control.lock();
            while state.stop.is_none() {
                state = control
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        control.kick_until(Duration::from_secs(10), |s| s.vcpus_running == 0);
        control.lock().vcpu_threads.clear();
        for thread in threads {
            let _ = thread.join();
        }
        drop(screen);
        drop(bios_area);
        drop(vm);
        drop(memory);
        drop(pio);
        drop(mmio);
        // The variable store's last writes reach its file once the flash model is gone too.
        drop(uefi_vars);
        drop(ram);
        control.lock().stop.clone().unwrap_or(Stop::PowerOff)
    }
}

/// Counts a vCPU thread as inside its run loop for as long as it lives, including when it
/// leaves by a panic.
struct RunningVcpu<'a>(&'a Control);

impl<'a> RunningVcpu<'a> {
    fn enter(control: &'a Control) -> Self {
        control.lock().vcpus_running += 1;
        control.changed.notify_all();
        RunningVcpu(control)
    }
}

impl Drop for RunningVcpu<'_> {
    fn drop(&mut self) {
        self.0.lock().vcpus_running -= 1;
        self.0.changed.notify_all();
    }
}

fn vcpu_thread(index: usize, mut vcpu: VcpuFd, control: &Control, pio: &Bus, mmio: &Bus) {
    let _running = RunningVcpu::enter(control);
    loop {
        {
            let mut state = control.lock();
            if state.stop.is_some() {
                break;
            }
            if state.paused {
                state.vcpus_parked += 1;
                control.changed.notify_all();
                while state.paused && state.stop.is_none() {
                    state = control
                        .changed
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                state.vcpus_parked -= 1;
                continue;
            }
        }
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
            }
            Ok(VcpuExit::MmioRead(address, data)) => {
                mmio.read(address, data);
            }
            Ok(VcpuExit::MmioWrite(address, data)) => {
                mmio.write(address, data);
            }
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel irqchip; ours has one. Treat as idle.
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(VcpuExit::Shutdown) => {
                let registers = cpu::describe_registers(&vcpu);
                control.stop(Stop::Crash(format!(
                    "vCPU {index} triple-faulted (the guest crashed)\n{registers}"
                )));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let stop = match kind {
                    kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Stop::PowerOff,
                    kvm_bindings::KVM_SYSTEM_EVENT_RESET => Stop::Reset,
                    other => Stop::Crash(format!("vCPU {index}: system event {other}")),
                };
                control.stop(stop);
            }
            Ok(VcpuExit::InternalError) => {
                let registers = cpu::describe_registers(&vcpu);
                control.stop(Stop::Crash(format!(
                    "vCPU {index}: KVM internal error (KVM could not emulate an instruction; \
                     a software-only KVM such as kvm_pvm cannot run full guests)\n{registers}"
                )));
            }
            Ok(VcpuExit::FailEntry(reason, cpu_id)) => {
                control.stop(Stop::Failed(format!(
                    "vCPU {index}: KVM could not enter the guest (hardware reason {reason:#x}, \
                     cpu {cpu_id})"
                )));
            }
            Ok(other) => {
                let exit = format!("{other:?}");
                let registers = cpu::describe_registers(&vcpu);
                control.stop(Stop::Failed(format!(
                    "vCPU {index}: unexpected exit {exit}\n{registers}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked by the controller: look at the control state again.
            }
            Err(e) => {
                control.stop(Stop::Failed(format!("vCPU {index}: KVM_RUN failed: {e}")));
            }
        }
    }
}

/// An interrupt line wired to a GSI of KVM's in-kernel IOAPIC through an irqfd.
pub struct IrqfdLine {
    event: EventFd,
}

impl IrqfdLine {
    /// Registers a new irqfd for `gsi`.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<IrqfdLine> {
        let event = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| Error::Setup(format!("could not create an eventfd: {e}")))?;
        vm.register_irqfd(&event, gsi)
            .map_err(kvm_error("registering an interrupt line"))?;
        Ok(IrqfdLine { event })
    }
}

impl vivarium_devices::IrqLine for IrqfdLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.event.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> Arc<Control> {
        Arc::new(Control {
            state: Mutex::new(ControlState::default()),
            changed: Condvar::new(),
        })
    }

    /// A vCPU thread that panics ends the machine as failed with the panic's message, and
    /// leaves the count of running vCPUs right, so the machine thread's wait for a reason to
    /// stop and for the vCPUs to leave (what `Vm::run` does) ends within a second.
    #[test]
    fn a_panicking_vcpu_thread_fails_the_machine_within_a_second() {
        let control = control();
        let thread_control = Arc::clone(&control);
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            supervised("vCPU 0", &thread_control, || {
                let _running = RunningVcpu::enter(&thread_control);
                panic!("a device model lost its state");
            })
        });
        let mut state = control.lock();
        while state.stop.is_none() || state.vcpus_running != 0 {
            let (next, timeout) = control
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap();
            state = next;
            assert!(
                !timeout.timed_out() || started.elapsed() < Duration::from_secs(1),
                "the machine did not learn of the panic within a second"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let Some(Stop::Failed(message)) = state.stop.clone() else {
            panic!("expected a failure, got {:?}", state.stop);
        };
        assert!(message.contains("vCPU 0 panicked"), "{message}");
        assert!(
            message.contains("a device model lost its state"),
            "{message}"
        );
        drop(state);
        thread.join().unwrap();
    }

    #[test]
    fn a_panic_without_a_message_still_says_so() {
        let control = control();
        supervised("the display refresh", &control, || {
            std::panic::panic_any(42u32);
        });
        let Some(Stop::Failed(message)) = control.lock().stop.clone() else {
            panic!("expected a failure");
        };
        assert!(message.contains("the display refresh panicked: a panic without a message"));
    }
}
