//! A running machine: its boots (each a VM with its memory, devices and vCPU threads, built
//! by the board), and the control plane (pause, resume, power off, reset) that the VM runner
//! drives. Nothing here knows which hypervisor runs the machine.
//!
//! One machine thread owns the machine. It has the board build a boot, starts one thread per
//! vCPU (each creates, sets up and runs its own vCPU, as Hypervisor.framework requires), and
//! waits until something asks the machine to stop: the guest (power off, reset, crash) or the
//! host (a [`ControlRequest`]). A reset rebuilds the VM from scratch, which is exactly what a
//! reset button does to a PC.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vivarium_core::backend::{
    BackendError, ControlRequest, MachineExit, MachineSpec, RunningMachine,
};
use vivarium_devices::acpi_pm::AcpiPm;
use vivarium_devices::bus::Bus;
use vivarium_devices::i8042::Ps2Input;
use vivarium_hypervisor::{Entry, Hypervisor, Kicker, Vcpu, VcpuExit, Vm};

use crate::error::{Error, Result};
use crate::memory::GuestRam;

/// Why a machine stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    PowerOff,
    Reset,
    Crash(String),
    Failed(String),
}

/// State shared by the machine thread, the vCPU threads and the controller.
pub(crate) struct Control {
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
    /// vCPUs of the current boot that exist (created and set up).
    vcpus_created: usize,
    /// Whether the current boot's vCPUs may run (every one exists and the VM was told).
    vcpus_released: bool,
    /// What kicks each running vCPU out of the hypervisor.
    kickers: Vec<Arc<dyn Kicker>>,
    /// Set when the machine thread has ended.
    ended: Option<MachineExit>,
    /// The current boot's ACPI power-management block, where the power button is.
    acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    /// The current boot's PS/2 keyboard and mouse input (a reset builds a new i8042).
    ps2_input: Option<Ps2Input>,
    /// The current boot's serial port, where console input goes.
    serial: Option<Arc<Mutex<dyn vivarium_devices::ConsoleInput>>>,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records why the machine stops and wakes everybody. The first reason wins, except that
    /// a reset gives way to anything final (a power-off during a reboot must not be lost).
    pub(crate) fn stop(&self, why: Stop) {
        let mut state = self.lock();
        if state.stop.is_none() || (state.stop == Some(Stop::Reset) && why != Stop::Reset) {
            state.stop = Some(why);
        }
        drop(state);
        self.changed.notify_all();
        self.kick_vcpus();
    }

    /// Interrupts every vCPU that is inside the hypervisor so it looks at the control state.
    fn kick_vcpus(&self) {
        let kickers = self.lock().kickers.clone();
        for kicker in kickers {
            kicker.kick();
        }
    }

    /// Kicks the vCPUs repeatedly until `done` holds (a kick can land just before a vCPU
    /// enters the hypervisor and be missed; the next one is not) or the timeout passes.
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

/// The guest's reset request (i8042 command 0xfe, ACPI reset) as a machine stop.
#[cfg(target_arch = "x86_64")]
pub(crate) struct GuestReset(pub(crate) Arc<Control>);

#[cfg(target_arch = "x86_64")]
impl vivarium_devices::i8042::ResetLine for GuestReset {
    fn reset(&self) {
        self.0.stop(Stop::Reset);
    }
}

/// Serial output shared across resets (the device is rebuilt, the sink stays).
#[derive(Clone)]
pub(crate) struct SharedOutput(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).flush()
    }
}

/// The parts of a [`MachineSpec`] a machine keeps across resets.
pub(crate) struct MachinePlan {
    pub(crate) cpus: u32,
    pub(crate) memory_size: u64,
    pub(crate) boot: vivarium_core::backend::BootSpec,
    pub(crate) disks: Vec<vivarium_core::backend::DiskSpec>,
    pub(crate) network: Option<vivarium_core::backend::NetworkSpec>,
    /// The CD-ROM drive (with its medium) outlives each build of the machine.
    pub(crate) cdrom: Option<vivarium_devices::scsi::cdrom::CdromControl>,
    /// The screen; its display file (and video memory) outlives each build.
    pub(crate) display: Option<vivarium_core::backend::DisplaySpec>,
    pub(crate) serial: SharedOutput,
}

/// A machine started by [`start`].
pub struct Machine {
    control: Arc<Control>,
    /// The CD-ROM drive, shared with every build of the machine.
    cdrom: Option<vivarium_devices::scsi::cdrom::CdromControl>,
    thread: Option<JoinHandle<()>>,
}

/// Checks a machine description against what this host can give.
fn check_plan(hypervisor: &dyn Hypervisor, spec: &MachineSpec) -> Result<()> {
    if spec.cpus == 0 {
        return Err(Error::InvalidMachine(
            "a machine needs at least one CPU".into(),
        ));
    }
    let max = hypervisor.max_vcpus()?;
    if spec.cpus > max {
        return Err(Error::InvalidMachine(format!(
            "{} CPUs is more than this host's {} allows ({max})",
            spec.cpus,
            hypervisor.name().to_uppercase()
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
    use vivarium_core::backend::BootSpec;
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
pub fn start(hypervisor: Arc<dyn Hypervisor>, spec: MachineSpec) -> Result<Machine> {
    check_plan(hypervisor.as_ref(), &spec)?;
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
    let first = build_boot(hypervisor.as_ref(), &plan, &control)?;
    let cdrom = plan.cdrom.clone();
    let thread_control = Arc::clone(&control);
    let thread = std::thread::Builder::new()
        .name("vivarium-machine".into())
        .spawn(move || {
            vivarium_threads::started(vivarium_threads::ThreadKind::Machine);
            machine_thread(hypervisor, plan, first, thread_control)
        })
        .map_err(|e| Error::Setup(format!("could not start the machine thread: {e}")))?;
    Ok(Machine {
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

fn machine_thread(
    hypervisor: Arc<dyn Hypervisor>,
    plan: MachinePlan,
    first: Boot,
    control: Arc<Control>,
) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        machine_loop(hypervisor.as_ref(), &plan, first, &control)
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

fn machine_loop(
    hypervisor: &dyn Hypervisor,
    plan: &MachinePlan,
    first: Boot,
    control: &Arc<Control>,
) -> MachineExit {
    let mut boot = Some(first);
    loop {
        let current = match boot.take() {
            Some(boot) => boot,
            None => match build_boot(hypervisor, plan, control) {
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

impl Machine {
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

impl RunningMachine for Machine {
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

impl Drop for Machine {
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

/// The board of this host's architecture builds a boot: the `pc` on x86_64.
#[cfg(target_arch = "x86_64")]
use crate::pc::build as build_boot;
/// The `virt` board on aarch64.
#[cfg(target_arch = "aarch64")]
use crate::virt::build as build_boot;

/// No board for this host's architecture: a machine cannot start, and says so.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn build_boot(
    _hypervisor: &dyn Hypervisor,
    _plan: &MachinePlan,
    _control: &Arc<Control>,
) -> Result<Boot> {
    Err(Error::InvalidMachine(format!(
        "Vivarium has no machine for {} hosts yet: only x86_64 guests run, on x86_64 hosts",
        std::env::consts::ARCH
    )))
}

/// One boot of the machine, as the board built it: the VM with its memory, devices and how
/// each vCPU starts.
pub(crate) struct Boot {
    pub(crate) vm: Arc<dyn Vm>,
    /// Where each vCPU enters the guest (`None`: at the reset vector, or, for an application
    /// processor, when the firmware wakes it).
    pub(crate) entries: Vec<Option<Entry>>,
    pub(crate) pio: Arc<Bus>,
    pub(crate) mmio: Arc<Bus>,
    /// What the boot keeps alive while it runs: `early` goes once the vCPUs are joined, before
    /// the VM; `late` after the buses (a flash model's file gets its last writes then).
    pub(crate) early: Vec<Box<dyn Send>>,
    pub(crate) late: Vec<Box<dyn Send>>,
    /// Owns the RAM mappings; last, so it is dropped after everything that uses them.
    pub(crate) ram: GuestRam,
}

/// The devices of the current boot the host talks to.
#[derive(Default)]
pub(crate) struct BootHandles {
    /// The ACPI power-management block, where the power button is.
    pub(crate) acpi_pm: Option<Arc<Mutex<AcpiPm>>>,
    /// The PS/2 keyboard and mouse input.
    pub(crate) ps2_input: Option<Ps2Input>,
    /// The serial port (a 16550, a PL011), where console input goes.
    pub(crate) serial: Option<Arc<Mutex<dyn vivarium_devices::ConsoleInput>>>,
}

impl Control {
    /// Makes `handles` the current boot's.
    pub(crate) fn set_handles(&self, handles: BootHandles) {
        let mut state = self.lock();
        state.acpi_pm = handles.acpi_pm;
        state.ps2_input = handles.ps2_input;
        state.serial = handles.serial;
    }
}

impl Boot {
    /// Runs the vCPUs until the machine stops; returns why.
    fn run(self, control: &Arc<Control>) -> Stop {
        let Boot {
            vm,
            entries,
            pio,
            mmio,
            early,
            late,
            ram,
        } = self;
        let mut threads = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let thread_control = Arc::clone(control);
            let vm = Arc::clone(&vm);
            let pio = Arc::clone(&pio);
            let mmio = Arc::clone(&mmio);
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    vivarium_threads::started(vivarium_threads::ThreadKind::Vcpu);
                    supervised(&format!("vCPU {index}"), &thread_control, || {
                        vcpu_thread(index, vm.as_ref(), entry, &thread_control, &pio, &mmio)
                    })
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => control.stop(Stop::Failed(format!("could not start a vCPU thread: {e}"))),
            }
        }
        // Every vCPU exists before any runs: the VM is told (KVM/arm64 initialises its GIC
        // then), and the vCPUs are let go.
        let all_created = {
            let mut state = control.lock();
            while state.vcpus_created < threads.len() && state.stop.is_none() {
                state = control
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            state.stop.is_none()
        };
        if all_created {
            match vm.vcpus_created() {
                Ok(()) => control.lock().vcpus_released = true,
                Err(e) => control.stop(Stop::Failed(format!("could not finish the vCPUs: {e}"))),
            }
            control.changed.notify_all();
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
        {
            let mut state = control.lock();
            state.kickers.clear();
            state.vcpus_created = 0;
            state.vcpus_released = false;
        }
        for thread in threads {
            let _ = thread.join();
        }
        drop(early);
        drop(vm);
        drop(pio);
        drop(mmio);
        drop(late);
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

/// A vCPU's thread: creates and sets up the vCPU, then runs it until the machine stops.
fn vcpu_thread(
    index: usize,
    vm: &dyn Vm,
    entry: Option<Entry>,
    control: &Control,
    pio: &Bus,
    mmio: &Bus,
) {
    let _running = RunningVcpu::enter(control);
    let made = vm.create_vcpu(index as u32).and_then(|mut vcpu| {
        if let Some(entry) = &entry {
            entry.apply(vcpu.as_mut())?;
        }
        Ok(vcpu)
    });
    let mut vcpu = match made {
        Ok(vcpu) => vcpu,
        Err(e) => {
            control.stop(Stop::Failed(format!("could not set up vCPU {index}: {e}")));
            return;
        }
    };
    {
        let mut state = control.lock();
        state.kickers.push(vcpu.kicker());
        state.vcpus_created += 1;
        control.changed.notify_all();
        while !state.vcpus_released && state.stop.is_none() {
            state = control
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
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
        if let Some(stop) = run_once(index, vcpu.as_mut(), pio, mmio) {
            control.stop(stop);
        }
    }
}

/// Runs the vCPU to its next exit and handles it; returns why the machine must stop, if it
/// must.
fn run_once(index: usize, vcpu: &mut dyn Vcpu, pio: &Bus, mmio: &Bus) -> Option<Stop> {
    let crashed = match vcpu.run() {
        Ok(VcpuExit::IoOut { port, data }) => {
            pio.write(u64::from(port), data);
            return None;
        }
        Ok(VcpuExit::IoIn { port, data }) => {
            pio.read(u64::from(port), data);
            return None;
        }
        Ok(VcpuExit::MmioRead { address, data }) => {
            mmio.read(address, data);
            return None;
        }
        Ok(VcpuExit::MmioWrite { address, data }) => {
            mmio.write(address, data);
            return None;
        }
        Ok(VcpuExit::Idle) => {
            // Only where the hypervisor does not wait for interrupts itself.
            std::thread::sleep(Duration::from_millis(1));
            return None;
        }
        // Kicked: the caller looks at the control state again.
        Ok(VcpuExit::Interrupted) => return None,
        Ok(VcpuExit::PowerOff) => return Some(Stop::PowerOff),
        Ok(VcpuExit::Reset) => return Some(Stop::Reset),
        Ok(VcpuExit::Crashed(what)) => Ok(what),
        Ok(VcpuExit::Failed(why)) => Err(why),
        Err(e) => return Some(Stop::Failed(format!("vCPU {index}: {e}"))),
    };
    let registers = vcpu.describe_registers();
    Some(match crashed {
        Ok(what) => Stop::Crash(format!("vCPU {index}: {what}\n{registers}")),
        Err(why) => Stop::Failed(format!("vCPU {index}: {why}\n{registers}")),
    })
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
