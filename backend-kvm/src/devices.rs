//! Wiring of the machine's devices onto the buses and KVM's interrupt controllers: the
//! legacy PC devices (serial port, i8042), ACPI power management, and PCI with virtio.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use std::os::unix::net::UnixStream;

use vivarium_core::backend::{CdromSpec, DiskSpec, NetworkSpec};
use vivarium_core::config::DiskFormat;
use vivarium_core::disk::Qcow2Disk;
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::acpi_pm::{AcpiPm, AcpiPmPorts, PowerOff};
use vivarium_devices::bus::Bus;
use vivarium_devices::display::bochs::{BochsDisplay, Scanout};
use vivarium_devices::i8042::{I8042, Ps2Input, ResetLine};
use vivarium_devices::pci::{PciConfigIo, PciConfigMmio, PciRoot, PciWindows};
use vivarium_devices::rtc::CmosRtc;
use vivarium_devices::scsi::cdrom::{Cdrom, CdromControl};
use vivarium_devices::serial::Serial;
use vivarium_devices::virtio::VirtioDevice;
use vivarium_devices::virtio::block::{Block, BlockBackend, RawFile};
use vivarium_devices::virtio::net::Net;
use vivarium_devices::virtio::pci::VirtioPciDevice;
use vivarium_devices::virtio::rng::Rng;
use vivarium_devices::virtio::scsi::{EVENT_QUEUE, VirtioScsi};

use crate::display::KvmScreen;
use crate::error::{Error, Result};
use crate::layout;
use crate::machine::IrqfdLine;

/// The legacy PCI configuration mechanism's address port (data at +4).
const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Port window for PCI I/O BARs.
const PCI_IO_START: u64 = 0xc000;
const PCI_IO_SIZE: u64 = 0x4000;

/// COM1's port range and interrupt.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;
/// The i8042's data port; its command port is 4 above.
const I8042_PORT: u64 = 0x60;
/// The i8042's interrupts: keyboard bytes on IRQ 1, mouse bytes on IRQ 12 (ISA, edge).
const I8042_KEYBOARD_IRQ: u32 = 1;
const I8042_MOUSE_IRQ: u32 = 12;
/// The CMOS real-time clock's index port (data at +1) and interrupt.
const RTC_PORT: u64 = 0x70;
const RTC_IRQ: u32 = 8;

fn bus_error(what: &str) -> impl FnOnce(vivarium_devices::Error) -> Error + '_ {
    move |e| Error::Setup(format!("could not place the {what}: {e}"))
}

/// Adds COM1 (writing to `serial_output`, IRQ 4), the i8042 with its PS/2 keyboard (IRQ 1)
/// and mouse (IRQ 12), whose reset command calls `reset`, and the CMOS real-time clock
/// (IRQ 8, its battery-backed RAM holding the memory size of `memory_size` bytes of RAM, as
/// firmware reads it) to the port I/O bus. Returns the host's input handle for the PS/2
/// devices.
pub fn attach_legacy_devices(
    vm: &VmFd,
    pio: &Bus,
    serial_output: impl Write + Send + 'static,
    reset: Arc<dyn ResetLine>,
    memory_size: u64,
) -> Result<LegacyDevices> {
    let irq = Arc::new(IrqfdLine::new(vm, COM1_IRQ)?);
    let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(serial_output))));
    pio.insert(COM1_PORT, 8, serial.clone())
        .map_err(bus_error("serial port"))?;
    let keyboard_irq = Arc::new(IrqfdLine::new(vm, I8042_KEYBOARD_IRQ)?);
    let mouse_irq = Arc::new(IrqfdLine::new(vm, I8042_MOUSE_IRQ)?);
    let i8042 = I8042::new(reset, keyboard_irq, mouse_irq);
    let ps2_input = i8042.input();
    pio.insert(I8042_PORT, 5, Arc::new(Mutex::new(i8042)))
        .map_err(bus_error("keyboard controller"))?;
    let rtc_irq = Arc::new(IrqfdLine::new(vm, RTC_IRQ)?);
    let mut rtc = CmosRtc::new(rtc_irq);
    rtc.set_memory_size(
        layout::low_ram_end(memory_size),
        memory_size - layout::low_ram_end(memory_size),
    );
    pio.insert(RTC_PORT, 2, Arc::new(Mutex::new(rtc)))
        .map_err(bus_error("real-time clock"))?;
    Ok(LegacyDevices { serial, ps2_input })
}

/// The legacy devices the host talks to while the machine runs.
pub struct LegacyDevices {
    /// COM1, where console input goes.
    pub serial: Arc<Mutex<Serial>>,
    /// The i8042's keyboard and mouse input.
    pub ps2_input: Ps2Input,
}

/// Messages of MSI-X capable devices, delivered with `KVM_SIGNAL_MSI`.
pub struct KvmMsi {
    vm: Arc<VmFd>,
}

impl vivarium_devices::pci::MsiSignaller for KvmMsi {
    fn signal_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        let msi = kvm_bindings::kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

/// The guest asking to enter S5 (ACPI power off).
pub struct GuestPowerOff(pub Box<dyn Fn() + Send + Sync>);

impl PowerOff for GuestPowerOff {
    fn power_off(&self) {
        (self.0)()
    }
}

/// Adds the ACPI power-management block (power button, S5, PM timer, reset register).
pub fn attach_acpi_pm(
    vm: &VmFd,
    pio: &Bus,
    power_off: Arc<dyn PowerOff>,
    reset: Arc<dyn ResetLine>,
    ports: Option<AcpiPmPorts>,
) -> Result<Arc<Mutex<AcpiPm>>> {
    let sci = Arc::new(IrqfdLine::new(vm, crate::acpi::SCI_IRQ)?);
    let pm = Arc::new(Mutex::new(AcpiPm::new(sci, power_off, reset)));
    if let Some(ports) = ports {
        pio.insert(
            u64::from(ports.base()),
            u64::from(AcpiPmPorts::LEN),
            pm.clone(),
        )
        .map_err(bus_error("ACPI power management block"))?;
    }
    Ok(pm)
}

/// The PIIX south bridge functions UEFI firmware expects at 00:01.0 and 00:01.3 (see
/// `vivarium_devices::pci::piix`), with the ACPI PM block `pm` placed at `ports` through the
/// power-management function's PMBA.
pub fn piix_functions(
    pio: &Arc<Bus>,
    pm: Arc<Mutex<AcpiPm>>,
    ports: AcpiPmPorts,
) -> Result<PiixFunctions> {
    use vivarium_devices::pci::piix::{Piix3IsaBridge, Piix4Pm};
    let pm_function = Piix4Pm::new(pio, ports.base(), pm, u64::from(AcpiPmPorts::LEN))
        .map_err(bus_error("ACPI power management block"))?;
    Ok(PiixFunctions {
        isa_bridge: Arc::new(Mutex::new(Piix3IsaBridge::new())),
        power_management: Arc::new(Mutex::new(pm_function)),
    })
}

/// The PIIX functions of a UEFI machine, to plug in at 00:01.
pub struct PiixFunctions {
    /// The PCI-to-ISA bridge (00:01.0).
    pub isa_bridge: vivarium_devices::pci::SharedPciDevice,
    /// The power-management function (00:01.3).
    pub power_management: vivarium_devices::pci::SharedPciDevice,
}

/// The virtio devices a machine has besides the ones every machine gets.
pub struct PciDevices<'a> {
    /// Disks, in the order the guest sees them.
    pub disks: &'a [DiskSpec],
    /// The network card.
    pub network: Option<&'a NetworkSpec>,
    /// The CD-ROM drive.
    pub cdrom: Option<&'a CdromControl>,
    /// The screen: a bochs display over this video memory, starting in (and preferring) a
    /// 32-bit mode of `width` x `height`.
    pub screen: Option<ScreenDevice>,
    /// The host bridge a firmware expects (the i440FX); `None`: Vivarium's own, with the
    /// ECAM. Without the ECAM, configuration space is reached through ports 0xcf8/0xcfc only.
    pub host_bridge: Option<vivarium_devices::pci::SharedPciDevice>,
    /// The south bridge functions of a UEFI machine, plugged in at 00:01 before the rest.
    pub piix: Option<PiixFunctions>,
}

/// Where the devices a firmware boots from were plugged in.
#[derive(Debug, Clone, Default)]
pub struct PciSlots {
    /// The slot of each disk's controller, in the order of [`PciDevices::disks`].
    pub disks: Vec<u8>,
    /// The slot of the CD-ROM's controller.
    pub cdrom: Option<u8>,
}

/// The bochs display of a machine with a screen.
pub struct ScreenDevice {
    /// The video memory and where the guest's mode goes.
    pub screen: Arc<KvmScreen>,
    /// Width of the boot (and preferred) mode.
    pub width: u32,
    /// Height of the boot (and preferred) mode.
    pub height: u32,
    /// Whether the adapter starts in that mode, as firmware leaves it for a kernel booted
    /// directly (a firmware sets its own modes).
    pub boot_mode: bool,
    /// The VGA BIOS behind the adapter's ROM BAR, for a firmware boot.
    pub option_rom: Option<Vec<u8>>,
    /// Whether the adapter is the standard VGA (a BIOS machine: the legacy VGA ports and the
    /// window at 0xa0000, which must hold no RAM) rather than the bochs display.
    pub vga: bool,
}

/// The PCI host bridge with its configuration mechanisms (ports 0xcf8-0xcff, and ECAM with
/// Vivarium's own bridge), and the virtio devices of the machine behind it. Returns where
/// the boot devices went.
pub fn attach_pci(
    vm: &Arc<VmFd>,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    memory: &Arc<GuestMemoryMmap>,
    memory_size: u64,
    devices: PciDevices<'_>,
) -> Result<PciSlots> {
    let PciDevices {
        disks,
        network,
        cdrom,
        screen,
        host_bridge,
        piix,
    } = devices;
    let windows = PciWindows {
        mem32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
        mem64: (layout::mmio64_start(memory_size), layout::PCI_MMIO64_SIZE),
        io: (PCI_IO_START, PCI_IO_SIZE),
    };
    let ecam = host_bridge.is_none();
    let root = Arc::new(Mutex::new(match host_bridge {
        Some(bridge) => PciRoot::with_host_bridge(mmio.clone(), pio.clone(), windows, bridge),
        None => PciRoot::new(mmio.clone(), pio.clone(), windows),
    }));
    pio.insert(
        PCI_CONFIG_PORT,
        8,
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
    )
    .map_err(bus_error("PCI configuration ports"))?;
    if ecam {
        mmio.insert(
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        )
        .map_err(bus_error("PCI ECAM window"))?;
    }
    let mut slots = PciSlots::default();

    if let Some(piix) = piix {
        use vivarium_devices::pci::piix::{PIIX_SLOT, PM_FUNCTION};
        let mut root = root.lock().unwrap_or_else(|e| e.into_inner());
        root.add_device_at(PIIX_SLOT, piix.isa_bridge)
            .and_then(|()| root.add_function(PIIX_SLOT, PM_FUNCTION, piix.power_management))
            .map_err(|e| Error::Setup(format!("could not plug in the PIIX functions: {e}")))?;
    }
    if let Some(screen) = screen {
        attach_display(&root, pio, mmio, screen)?;
    }
    let msi: Arc<dyn vivarium_devices::pci::MsiSignaller> = Arc::new(KvmMsi { vm: vm.clone() });
    let add = |device: Box<dyn VirtioDevice>, what: &str| -> Result<u8> {
        let pci = VirtioPciDevice::new(device, memory.clone(), msi.clone())
            .map_err(|e| Error::Setup(format!("could not create the {what}: {e}")))?;
        root.lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_device(Arc::new(Mutex::new(pci)))
            .map_err(|e| Error::Setup(format!("could not plug in the {what}: {e}")))
    };
    for (index, disk) in disks.iter().enumerate() {
        let backend: Box<dyn BlockBackend> = match disk.format {
            DiskFormat::Raw => {
                Box::new(RawFile::open(&disk.path, disk.read_only).map_err(|source| {
                    Error::Disk {
                        path: disk.path.clone(),
                        source,
                    }
                })?)
            }
            DiskFormat::Qcow2 => Box::new(Qcow2Backend(
                Qcow2Disk::open(&disk.path, disk.read_only).map_err(|e| Error::Disk {
                    path: disk.path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?,
            )),
        };
        let id = format!("vivarium-disk{index}");
        slots.disks.push(add(
            Box::new(Block::new(backend, id.as_bytes())),
            "disk controller",
        )?);
    }
    if let Some(network) = network {
        let stream = UnixStream::connect(&network.frame_socket).map_err(|e| {
            Error::Setup(format!(
                "could not connect the network card to `{}`: {e}",
                network.frame_socket.display()
            ))
        })?;
        let card = Net::new(network.mac, stream)
            .map_err(|e| Error::Setup(format!("could not create the network card: {e}")))?;
        add(Box::new(card), "network card")?;
    }
    if let Some(cdrom) = cdrom {
        slots.cdrom = Some(attach_cdrom(&root, memory, &msi, cdrom)?);
    }
    let rng = Rng::new()
        .map_err(|e| Error::Setup(format!("could not open the host's random source: {e}")))?;
    add(Box::new(rng), "random number generator")?;
    Ok(slots)
}

/// The bochs display, plugged in before any other device so that its framebuffer BAR, the
/// largest, gets the start of the 32-bit window (`layout::FRAMEBUFFER_START`). It starts in the
/// boot mode with decoding on, as firmware leaves a display; the screen maps the video memory
/// at BAR 0 as the root assigns it.
fn attach_display(
    root: &Arc<Mutex<PciRoot>>,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    device: ScreenDevice,
) -> Result<()> {
    let ScreenDevice {
        screen,
        width,
        height,
        boot_mode,
        option_rom,
        vga,
    } = device;
    let vram = screen.display().vram_size();
    let made = if vga {
        BochsDisplay::new_vga(vram, (width, height), screen.clone())
    } else {
        BochsDisplay::new(
            vram,
            (width, height),
            boot_mode.then(|| Scanout::packed32(width, height)),
            screen.clone(),
        )
    };
    let mut bochs =
        made.map_err(|e| Error::Setup(format!("could not create the display adapter: {e}")))?;
    if let Some(rom) = option_rom {
        bochs
            .set_option_rom(rom)
            .map_err(|e| Error::Setup(format!("the VGA BIOS cannot be used: {e}")))?;
    }
    let bochs = Arc::new(Mutex::new(bochs));
    root.lock()
        .unwrap_or_else(|e| e.into_inner())
        .add_device(bochs.clone())
        .map_err(|e| Error::Setup(format!("could not plug in the display adapter: {e}")))?;
    if vga {
        use vivarium_devices::display::bochs::{DISPI_PORT, DISPI_PORTS_LEN, VgaIo, VgaWindow};
        use vivarium_devices::display::vga;
        for (port, len) in [
            (vga::PORTS_START, vga::PORTS_LEN),
            (DISPI_PORT, DISPI_PORTS_LEN),
        ] {
            pio.insert(
                u64::from(port),
                u64::from(len),
                Arc::new(Mutex::new(VgaIo(bochs.clone()))),
            )
            .map_err(bus_error("VGA ports"))?;
        }
        mmio.insert(
            vga::WINDOW_START,
            vga::WINDOW_SIZE,
            Arc::new(Mutex::new(VgaWindow(bochs.clone()))),
        )
        .map_err(bus_error("VGA memory window"))?;
        screen.set_legacy(bochs);
    }
    match screen.address() {
        Some(layout::FRAMEBUFFER_START) => Ok(()),
        // Decoding stays off until the firmware turns it on (and maps the memory).
        None if !boot_mode => Ok(()),
        other => Err(Error::Setup(format!(
            "the display's video memory is at {other:x?}, not at {:#x} where the boot \
             protocol announces it",
            layout::FRAMEBUFFER_START
        ))),
    }
}

/// The drive of a [`CdromSpec`], kept by the machine across resets so that the medium the
/// host inserted or ejected stays so. Fails with a message naming the image if it cannot
/// be used.
pub fn open_cdrom(spec: &CdromSpec) -> Result<CdromControl> {
    CdromControl::new(spec.image.as_deref()).map_err(|e| Error::InvalidMachine(e.to_string()))
}

/// A virtio-scsi controller with `cdrom`'s drive as target 0, LUN 0. A host-side medium
/// change notifies the controller's event queue at once.
fn attach_cdrom(
    root: &Arc<Mutex<PciRoot>>,
    memory: &Arc<GuestMemoryMmap>,
    msi: &Arc<dyn vivarium_devices::pci::MsiSignaller>,
    cdrom: &CdromControl,
) -> Result<u8> {
    let unit = Cdrom::with_control("vivarium-cd0", cdrom);
    // A new machine (power on, reset) starts with the drive unlocked.
    unit.reset();
    let scsi = VirtioScsi::new(unit);
    let pci = VirtioPciDevice::new(Box::new(scsi), memory.clone(), msi.clone())
        .map_err(|e| Error::Setup(format!("could not create the CD-ROM controller: {e}")))?;
    let pci = Arc::new(Mutex::new(pci));
    let slot = root
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add_device(pci.clone())
        .map_err(|e| Error::Setup(format!("could not plug in the CD-ROM controller: {e}")))?;
    // Weak: the drive outlives this machine's controller across resets.
    let controller = Arc::downgrade(&pci);
    cdrom.set_change_listener(Arc::new(move || {
        if let Some(c) = controller.upgrade() {
            c.lock()
                .unwrap_or_else(|e| e.into_inner())
                .notify_queue(EVENT_QUEUE);
        }
    }));
    Ok(slot)
}

/// A qcow2 disk (a linked clone's overlay over its base) as virtio-blk's storage. Dropping it
/// (when the machine stops or resets) writes imago's cached metadata back to the file.
struct Qcow2Backend(Qcow2Disk);

impl BlockBackend for Qcow2Backend {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_only(&self) -> bool {
        self.0.read_only()
    }
}
