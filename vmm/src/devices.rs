//! Wiring of the machine's devices onto the buses and the hypervisor's interrupts: PCI with
//! virtio (disks, network, CD-ROM, random numbers) and the display.

use std::sync::{Arc, Mutex};

use std::os::unix::net::UnixStream;

use vivarium_core::backend::{CdromSpec, DiskSpec, NetworkSpec};
use vivarium_core::config::DiskFormat;
use vivarium_core::disk::Qcow2Disk;
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::bus::Bus;
use vivarium_devices::display::bochs::{BochsDisplay, Scanout};
use vivarium_devices::pci::{MsiSignaller, PciConfigIo, PciConfigMmio, PciRoot, PciWindows};
use vivarium_devices::scsi::cdrom::{Cdrom, CdromControl};
use vivarium_devices::virtio::VirtioDevice;
use vivarium_devices::virtio::block::{Block, BlockBackend, RawFile};
use vivarium_devices::virtio::net::Net;
use vivarium_devices::virtio::pci::VirtioPciDevice;
use vivarium_devices::virtio::rng::Rng;
use vivarium_devices::virtio::scsi::{EVENT_QUEUE, VirtioScsi};

use crate::display::Screen;
use crate::error::{Error, Result};

/// The legacy PCI configuration mechanism's address port (data at +4).
const PCI_CONFIG_PORT: u64 = 0xcf8;

pub(crate) fn bus_error(what: &str) -> impl FnOnce(vivarium_devices::Error) -> Error + '_ {
    move |e| Error::Setup(format!("could not place the {what}: {e}"))
}

/// Where a board puts PCI: its windows for BARs, the ECAM (with Vivarium's own host bridge)
/// and the address the display's framebuffer BAR gets (the start of the 32-bit window).
#[derive(Debug, Clone, Copy)]
pub struct PciPlacement {
    /// The BAR windows.
    pub windows: PciWindows,
    /// The ECAM window (start, size).
    pub ecam: (u64, u64),
    /// Where the display's BAR 0 lands.
    pub framebuffer: u64,
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
    /// Functions the board puts at fixed places (a UEFI PC's south bridge at 00:01), plugged
    /// in before the rest, function 0 of a slot first.
    pub board_functions: Vec<BoardFunction>,
}

/// A PCI function a board puts at a fixed address.
pub struct BoardFunction {
    /// What it is, for errors.
    pub what: &'static str,
    /// Its slot on bus 0.
    pub slot: u8,
    /// Its function number.
    pub function: u8,
    /// The function.
    pub device: vivarium_devices::pci::SharedPciDevice,
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
    pub screen: Arc<Screen>,
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
    msi: Arc<dyn MsiSignaller>,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    memory: &Arc<GuestMemoryMmap>,
    placement: &PciPlacement,
    devices: PciDevices<'_>,
) -> Result<PciSlots> {
    let PciDevices {
        disks,
        network,
        cdrom,
        screen,
        host_bridge,
        board_functions,
    } = devices;
    let windows = placement.windows;
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
            placement.ecam.0,
            placement.ecam.1,
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        )
        .map_err(bus_error("PCI ECAM window"))?;
    }
    let mut slots = PciSlots::default();

    for function in board_functions {
        let mut root = root.lock().unwrap_or_else(|e| e.into_inner());
        let plugged = if function.function == 0 {
            root.add_device_at(function.slot, function.device)
        } else {
            root.add_function(function.slot, function.function, function.device)
        };
        plugged.map_err(|e| {
            Error::Setup(format!(
                "could not plug in the {} at 00:{:02x}.{}: {e}",
                function.what, function.slot, function.function
            ))
        })?;
    }
    if let Some(screen) = screen {
        attach_display(&root, pio, mmio, screen, placement.framebuffer)?;
    }
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
/// largest, gets the start of the 32-bit window (`framebuffer`). It starts in the
/// boot mode with decoding on, as firmware leaves a display; the screen maps the video memory
/// at BAR 0 as the root assigns it.
fn attach_display(
    root: &Arc<Mutex<PciRoot>>,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    device: ScreenDevice,
    framebuffer: u64,
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
        Some(address) if address == framebuffer => Ok(()),
        // Decoding stays off until the firmware turns it on (and maps the memory).
        None if !boot_mode => Ok(()),
        other => Err(Error::Setup(format!(
            "the display's video memory is at {other:x?}, not at {:#x} where the boot \
             protocol announces it",
            framebuffer
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
    msi: &Arc<dyn MsiSignaller>,
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
