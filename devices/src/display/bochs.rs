//! The bochs display adapter (PCI 1234:1111, "bochs-display"): a linear framebuffer in BAR 0
//! and, in BAR 2, the registers through which a driver sets a mode (Linux's `bochs` DRM
//! driver, OVMF's and SeaBIOS's VBE code).
//!
//! BAR 2 (4 KiB of MMIO) holds:
//!
//! ```text
//! 0x000..0x400  the EDID of the virtual monitor (its preferred mode is the configured size)
//! 0x400..0x420  VGA ports 0x3c0..0x3df (Linux writes the attribute index to unblank; ignored)
//! 0x500..0x516  the bochs "DISPI" registers, 16 bits each: ID, XRES, YRES, BPP, ENABLE, BANK,
//!               VIRT_WIDTH, VIRT_HEIGHT, X_OFFSET, Y_OFFSET, VIDEO_MEMORY_64K
//! 0x600..0x608  QEMU's extended registers: their size (8), and the framebuffer byte order
//! ```
//!
//! Made with [`BochsDisplay::new_vga`] it is the standard VGA (what QEMU's `-vga std` is): PCI
//! class 0x0300, the same registers, and in front of them a legacy [`Vga`] (ports
//! 0x3b0..0x3df, also reached at BAR 2 offset 0x400, and the memory window 0xa0000..0xbffff,
//! which the backend routes here through [`VgaIo`] and [`VgaWindow`]) and the DISPI registers
//! at ports 0x1ce (index) and 0x1cf (data), where SeaBIOS's `vgabios-stdvga.bin` programs them.
//! While DISPI is enabled the framebuffer is what the guest shows, as without the VGA; while it
//! is off the backend shows what [`Vga::render`] draws (text mode). With DISPI enabled and the
//! linear framebuffer off (a banked VBE mode), the window shows 64 KiB of the video memory at
//! the bank the BANK register selects, through the sink.
//!
//! The framebuffer itself is memory the backend maps into the guest at BAR 0, so the device
//! model never sees a pixel: it works out what the guest shows (the scanout) from the
//! registers and tells the backend through a [`ScanoutSink`]. Register values are the guest's
//! and untrusted: a mode that does not fit in the video memory, or a depth the display cannot
//! show, turns the scanout off instead of being passed on.

use std::sync::Arc;

use super::edid::{EDID_BLOCK_SIZE, edid_for};
use super::vga::{self, Vga};
use crate::bus::BusDevice;
use crate::pci::{BarDef, BarKind, PciConfiguration, PciDevice, PciHeader};
use crate::{Error, Result};

/// PCI vendor ID of the bochs display (the one QEMU and Bochs use).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID of the bochs display.
pub const DEVICE_ID: u16 = 0x1111;
/// The framebuffer BAR.
pub const FRAMEBUFFER_BAR: usize = 0;
/// The register BAR.
pub const MMIO_BAR: usize = 2;
/// Size of the register BAR.
pub const MMIO_BAR_SIZE: u64 = 0x1000;

const EDID_END: u64 = 0x400;
const VGA_PORTS: u64 = 0x400;
const DISPI: u64 = 0x500;
const QEXT: u64 = 0x600;
/// Size of QEMU's extended register block (its first register says so).
const QEXT_SIZE: u32 = 8;
/// The framebuffer byte order value meaning little endian (the only one supported).
const QEXT_LITTLE_ENDIAN: u32 = 0x1e1e_1e1e;

/// Register indices (offset `0x500 + 2 * index`).
const ID: usize = 0;
const XRES: usize = 1;
const YRES: usize = 2;
const BPP: usize = 3;
const ENABLE: usize = 4;
const BANK: usize = 5;
const VIRT_WIDTH: usize = 6;
const VIRT_HEIGHT: usize = 7;
const X_OFFSET: usize = 8;
const Y_OFFSET: usize = 9;
const VIDEO_MEMORY_64K: usize = 10;
const REGISTERS: usize = 11;

/// The newest interface version; the guest may ask for an older one by writing ID.
const ID_LATEST: u16 = 0xb0c5;
const ID_OLDEST: u16 = 0xb0c0;
/// ENABLE bits.
const ENABLED: u16 = 0x01;
const GET_CAPS: u16 = 0x02;
const LFB_ENABLED: u16 = 0x40;
const DAC_8BIT: u16 = 0x20;
/// The DISPI registers' index and data ports (the standard VGA's; the bochs display has them
/// in BAR 2 only).
pub const DISPI_PORT: u16 = 0x1ce;
/// Ports from [`DISPI_PORT`] on: the index, the data, and the data again (Bochs's alias).
pub const DISPI_PORTS_LEN: u16 = 3;
/// Size of the banked VBE window.
const BANK_SIZE: u64 = 64 << 10;
/// Largest resolution and depth the adapter reports (and accepts).
const MAX_RES: u16 = 16384;
const MAX_BPP: u16 = 32;

/// What the guest shows, as the registers describe it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanout {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bits per pixel: 16 (RGB 5:6:5), 24 or 32 (blue, green, red, unused).
    pub bpp: u32,
    /// Bytes from one row to the next.
    pub stride: u32,
    /// Byte offset of the first pixel in the framebuffer.
    pub offset: u64,
}

impl Scanout {
    /// A packed 32-bit mode at the start of the framebuffer.
    pub fn packed32(width: u32, height: u32) -> Scanout {
        Scanout {
            width,
            height,
            bpp: 32,
            stride: width * 4,
            offset: 0,
        }
    }
}

/// The backend's side of the adapter: it shows the scanout and moves the framebuffer
/// memory with BAR 0.
pub trait ScanoutSink: Send + Sync {
    /// The guest now shows `scanout` (`None`: nothing, the display is off or its mode was
    /// refused). Only called with modes that lie inside the video memory.
    fn set_scanout(&self, scanout: Option<Scanout>);
    /// BAR 0 now decodes at guest physical `address`: the framebuffer memory must appear
    /// there. Not called when decoding is switched off (the memory stays where it was).
    fn framebuffer_moved(&self, address: u64);
    /// Reads video memory from `offset` (a banked VBE mode through the legacy window); a sink
    /// that cannot reads zeros.
    fn read_video_memory(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }
    /// Writes video memory at `offset` (a banked VBE mode through the legacy window); a sink
    /// that cannot drops it.
    fn write_video_memory(&self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
}

/// The bochs display adapter.
pub struct BochsDisplay {
    config: PciConfiguration,
    vram_size: u64,
    regs: [u16; REGISTERS],
    edid: [u8; EDID_BLOCK_SIZE],
    sink: Arc<dyn ScanoutSink>,
    /// The scanout last given to the sink.
    shown: Option<Scanout>,
    /// Whether a refused mode was already logged as a warning (later ones are debug events, so
    /// a guest cannot flood the log).
    warned: bool,
    /// The VGA BIOS behind the expansion ROM BAR (what a PC firmware runs to get a
    /// console), if the machine boots through firmware.
    option_rom: Option<Vec<u8>>,
    /// The legacy VGA, on the standard VGA ([`BochsDisplay::new_vga`]).
    vga: Option<Box<Vga>>,
    /// The DISPI index register behind port 0x1ce.
    dispi_index: u16,
}

impl std::fmt::Debug for BochsDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BochsDisplay")
            .field("vram_size", &self.vram_size)
            .field("regs", &self.regs)
            .field("shown", &self.shown)
            .finish()
    }
}

impl BochsDisplay {
    /// An adapter with `vram_size` bytes of framebuffer (a power of two, 64 KiB to 2 GiB)
    /// whose monitor prefers `preferred` (width, height). With `boot_mode`, the adapter
    /// starts as firmware leaves it: in that 32-bit mode, memory decoding on, and the sink is
    /// told at once; without, it starts disabled.
    pub fn new(
        vram_size: u64,
        preferred: (u32, u32),
        boot_mode: Option<Scanout>,
        sink: Arc<dyn ScanoutSink>,
    ) -> Result<BochsDisplay> {
        Self::build(vram_size, preferred, boot_mode, sink, false)
    }

    /// The standard VGA: the adapter of [`BochsDisplay::new`] (disabled, with no boot mode) as
    /// a VGA-compatible device with the legacy VGA in front, for a machine whose firmware runs
    /// a VGA BIOS (SeaBIOS's `vgabios-stdvga.bin`).
    pub fn new_vga(
        vram_size: u64,
        preferred: (u32, u32),
        sink: Arc<dyn ScanoutSink>,
    ) -> Result<BochsDisplay> {
        Self::build(vram_size, preferred, None, sink, true)
    }

    fn build(
        vram_size: u64,
        preferred: (u32, u32),
        boot_mode: Option<Scanout>,
        sink: Arc<dyn ScanoutSink>,
        vga: bool,
    ) -> Result<BochsDisplay> {
        if !vram_size.is_power_of_two() || !(64 << 10..=1 << 31).contains(&vram_size) {
            return Err(Error::InvalidBar {
                index: FRAMEBUFFER_BAR,
                reason: "the video memory must be a power of two between 64 KiB and 2 GiB",
            });
        }
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: VENDOR_ID,
            device_id: DEVICE_ID,
            revision_id: 2,
            class: 0x03, // display controller
            // VGA compatible, or other (no legacy VGA ports or window).
            subclass: if vga { 0x00 } else { 0x80 },
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
            interrupt_pin: 0,
        });
        config.add_bar(
            FRAMEBUFFER_BAR,
            BarDef {
                kind: BarKind::Memory32,
                size: vram_size,
                prefetchable: true,
            },
        )?;
        config.add_bar(
            MMIO_BAR,
            BarDef {
                kind: BarKind::Memory32,
                size: MMIO_BAR_SIZE,
                prefetchable: false,
            },
        )?;
        let mut regs = [0u16; REGISTERS];
        regs[ID] = ID_LATEST;
        regs[VIDEO_MEMORY_64K] = (vram_size >> 16).min(0xffff) as u16;
        let mut display = BochsDisplay {
            config,
            vram_size,
            regs,
            edid: edid_for(preferred.0, preferred.1),
            sink,
            shown: None,
            warned: false,
            option_rom: None,
            vga: vga.then(|| Box::new(Vga::new())),
            dispi_index: 0,
        };
        if let Some(mode) = boot_mode {
            let as_reg = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
            display.regs[XRES] = as_reg(mode.width);
            display.regs[YRES] = as_reg(mode.height);
            display.regs[BPP] = as_reg(mode.bpp);
            display.regs[VIRT_WIDTH] = as_reg(mode.stride * 8 / mode.bpp.max(8));
            display.regs[VIRT_HEIGHT] =
                as_reg((vram_size / u64::from(mode.stride.max(1))).min(0xffff) as u32);
            display.regs[ENABLE] = ENABLED | LFB_ENABLED;
            // Firmware that set a mode leaves memory decoding on, so the guest can draw
            // before it enumerates PCI.
            display.config.set_u16(0x04, 0x0002);
            display.update_scanout();
        }
        Ok(display)
    }

    /// What the registers describe now, if the guest shows anything and it fits.
    pub fn scanout(&self) -> Option<Scanout> {
        let r = &self.regs;
        if r[ENABLE] & ENABLED == 0 {
            return None;
        }
        let bpp = u32::from(r[BPP]);
        if !matches!(bpp, 16 | 24 | 32) {
            return None;
        }
        let (width, height) = (u32::from(r[XRES]), u32::from(r[YRES]));
        if width == 0 || height == 0 || width > u32::from(MAX_RES) || height > u32::from(MAX_RES) {
            return None;
        }
        let bytes_pp = bpp / 8;
        let virt_width = u32::from(r[VIRT_WIDTH]).max(width);
        let stride = virt_width * bytes_pp;
        let offset = u64::from(r[Y_OFFSET]) * u64::from(stride)
            + u64::from(r[X_OFFSET]) * u64::from(bytes_pp);
        let end = offset + u64::from(height - 1) * u64::from(stride) + u64::from(width * bytes_pp);
        (end <= self.vram_size).then_some(Scanout {
            width,
            height,
            bpp,
            stride,
            offset,
        })
    }

    /// Whether the guest shows the framebuffer (DISPI enabled), which wins over the VGA.
    pub fn framebuffer_enabled(&self) -> bool {
        self.regs[ENABLE] & ENABLED != 0
    }

    /// The legacy VGA, on the standard VGA.
    pub fn vga(&self) -> Option<&Vga> {
        self.vga.as_deref()
    }

    /// Reads `data.len()` bytes of I/O ports from `port` (the VGA's 0x3b0..0x3df, DISPI's
    /// 0x1ce..0x1d0); other ports, and all of them without the VGA, read all-ones.
    pub fn read_io(&mut self, port: u16, data: &mut [u8]) {
        if (DISPI_PORT..DISPI_PORT + DISPI_PORTS_LEN).contains(&port) && self.vga.is_some() {
            let value = if port == DISPI_PORT {
                self.dispi_index
            } else {
                let index = usize::from(self.dispi_index);
                if index < REGISTERS {
                    self.read_register(index)
                } else {
                    0
                }
            };
            let bytes = value.to_le_bytes();
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = bytes.get(i).copied().unwrap_or(0);
            }
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let at = port.wrapping_add(i as u16);
            *byte = match self.vga.as_mut() {
                Some(vga) if is_vga_port(at) => vga.read_port(at),
                _ => 0xff,
            };
        }
    }

    /// Writes `data` to I/O ports from `port` (a 16-bit write to an index port sets the index
    /// and the data register after it, as on a VGA).
    pub fn write_io(&mut self, port: u16, data: &[u8]) {
        if (DISPI_PORT..DISPI_PORT + DISPI_PORTS_LEN).contains(&port) && self.vga.is_some() {
            let mut bytes = [0u8; 2];
            for (b, d) in bytes.iter_mut().zip(data) {
                *b = *d;
            }
            let value = u16::from_le_bytes(bytes);
            if port == DISPI_PORT {
                self.dispi_index = value;
            } else if usize::from(self.dispi_index) < REGISTERS {
                self.write_register(usize::from(self.dispi_index), value);
            }
            return;
        }
        for (i, byte) in data.iter().enumerate() {
            let at = port.wrapping_add(i as u16);
            if let Some(vga) = self.vga.as_mut()
                && is_vga_port(at)
            {
                vga.write_port(at, *byte);
            }
        }
    }

    /// Reads the legacy window at `offset` (from 0xa0000): the VGA's planes, or the video
    /// memory of a banked VBE mode.
    pub fn read_window(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(at) = self.bank_offset(offset, data.len()) {
            self.sink.read_video_memory(at, data);
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match self.vga.as_mut() {
                Some(vga) => vga.read_memory(offset + i as u64),
                None => 0xff,
            };
        }
    }

    /// Writes the legacy window at `offset` (from 0xa0000).
    pub fn write_window(&mut self, offset: u64, data: &[u8]) {
        if let Some(at) = self.bank_offset(offset, data.len()) {
            self.sink.write_video_memory(at, data);
            return;
        }
        if let Some(vga) = self.vga.as_mut() {
            for (i, byte) in data.iter().enumerate() {
                vga.write_memory(offset + i as u64, *byte);
            }
        }
    }

    /// Where a window access lands in the video memory in a banked VBE mode (DISPI on, the
    /// linear framebuffer off): the first 64 KiB of the window show the selected bank.
    fn bank_offset(&self, offset: u64, len: usize) -> Option<u64> {
        let banked = self.vga.is_some()
            && self.regs[ENABLE] & ENABLED != 0
            && self.regs[ENABLE] & LFB_ENABLED == 0;
        let end = offset.checked_add(len as u64)?;
        if !banked || end > BANK_SIZE {
            return None;
        }
        let at = u64::from(self.regs[BANK]) * BANK_SIZE + offset;
        (at + len as u64 <= self.vram_size).then_some(at)
    }

    fn update_scanout(&mut self) {
        let now = self.scanout();
        if now == self.shown {
            return;
        }
        if now.is_none() && self.regs[ENABLE] & ENABLED != 0 {
            if self.warned {
                tracing::debug!(regs = ?self.regs, "bochs display: mode refused");
            } else {
                self.warned = true;
                tracing::warn!(
                    regs = ?self.regs,
                    "bochs display: the guest asked for a mode the display cannot show; it is \
                     off (further refusals are debug events)"
                );
            }
        }
        self.shown = now;
        self.sink.set_scanout(now);
    }

    fn read_register(&self, index: usize) -> u16 {
        let caps = self.regs[ENABLE] & GET_CAPS != 0;
        match index {
            XRES if caps => MAX_RES,
            YRES if caps => MAX_RES,
            BPP if caps => MAX_BPP,
            _ => self.regs[index],
        }
    }

    fn write_register(&mut self, index: usize, value: u16) {
        match index {
            ID => {
                if (ID_OLDEST..=ID_LATEST).contains(&value) {
                    self.regs[ID] = value;
                }
            }
            VIDEO_MEMORY_64K => {}
            // There is no banked VGA window (only the linear framebuffer): the bank is kept
            // for reads and means nothing.
            BANK => self.regs[BANK] = value,
            VIRT_HEIGHT => {
                // Derived from the stride: however many rows the video memory holds.
                let _ = value;
            }
            ENABLE => {
                self.regs[ENABLE] = value;
                if let Some(vga) = self.vga.as_mut() {
                    vga.set_dac_8bit(value & DAC_8BIT != 0);
                    // What the screen shows switches between the VGA and the framebuffer.
                    vga.touch();
                }
            }
            _ => self.regs[index] = value,
        }
        let stride = u64::from(u32::from(self.regs[VIRT_WIDTH].max(self.regs[XRES])))
            * u64::from(self.regs[BPP].max(8) / 8);
        self.regs[VIRT_HEIGHT] = (self.vram_size / stride.max(1)).min(0xffff) as u16;
        self.update_scanout();
    }

    fn read_mmio(&mut self, offset: u64, data: &mut [u8]) {
        if self.vga.is_some() && (VGA_PORTS..VGA_PORTS + 0x20).contains(&offset) {
            self.read_io(0x3c0 + (offset - VGA_PORTS) as u16, data);
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = match at {
                _ if at < EDID_END => self.edid.get(at as usize).copied().unwrap_or(0),
                _ if (DISPI..DISPI + 2 * REGISTERS as u64).contains(&at) => {
                    let index = ((at - DISPI) / 2) as usize;
                    self.read_register(index).to_le_bytes()[((at - DISPI) % 2) as usize]
                }
                _ if (QEXT..QEXT + 4).contains(&at) => {
                    QEXT_SIZE.to_le_bytes()[(at - QEXT) as usize]
                }
                _ if (QEXT + 4..QEXT + 8).contains(&at) => {
                    QEXT_LITTLE_ENDIAN.to_le_bytes()[(at - QEXT - 4) as usize]
                }
                _ => 0,
            };
        }
    }

    fn write_mmio(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if offset < DISPI + 2 * REGISTERS as u64 && end > DISPI {
            // Merge the written bytes into every register they touch, then apply each.
            let first = (offset.max(DISPI) - DISPI) / 2;
            let last = (end.min(DISPI + 2 * REGISTERS as u64) - 1 - DISPI) / 2;
            for index in first..=last {
                let mut bytes = self.regs[index as usize].to_le_bytes();
                for (k, byte) in bytes.iter_mut().enumerate() {
                    let at = DISPI + index * 2 + k as u64;
                    if (offset..end).contains(&at) {
                        *byte = data[(at - offset) as usize];
                    }
                }
                self.write_register(index as usize, u16::from_le_bytes(bytes));
            }
        } else if (QEXT + 4..QEXT + 8).contains(&offset) {
            // Only little-endian framebuffers are supported; a request for big endian is
            // ignored (the guest reads the register back to learn what it got).
            tracing::debug!("bochs display: framebuffer byte order write ignored");
        } else if (VGA_PORTS..VGA_PORTS + 0x20).contains(&offset) {
            // Without the VGA, the attribute controller's unblank bit Linux writes is ignored
            // (the scanout follows ENABLE only).
            if self.vga.is_some() {
                self.write_io(0x3c0 + (offset - VGA_PORTS) as u16, data);
            }
        }
    }
}

impl BochsDisplay {
    /// Puts `rom` (a VGA BIOS, e.g. SeaBIOS's `vgabios-stdvga.bin`) behind the
    /// expansion ROM BAR, where firmware finds and runs it. Refuses an image that is not an
    /// option ROM (no 0x55 0xaa signature) or is larger than 16 MiB.
    pub fn set_option_rom(&mut self, mut rom: Vec<u8>) -> Result<()> {
        if rom.len() < 3 || rom[0] != 0x55 || rom[1] != 0xaa {
            return Err(Error::InvalidBar {
                index: crate::pci::ROM_BAR,
                reason: "the option ROM image does not start with the 0x55 0xaa signature",
            });
        }
        let size = (rom.len() as u64).next_power_of_two().max(2 << 10);
        self.config.add_rom_bar(size)?;
        rom.resize(size as usize, 0);
        self.option_rom = Some(rom);
        Ok(())
    }
}

impl PciDevice for BochsDisplay {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            MMIO_BAR if offset < MMIO_BAR_SIZE => self.read_mmio(offset, data),
            crate::pci::ROM_BAR => {
                let rom = self.option_rom.as_deref().unwrap_or(&[]);
                for (i, byte) in data.iter_mut().enumerate() {
                    let at = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .saturating_add(i);
                    *byte = rom.get(at).copied().unwrap_or(0);
                }
            }
            // The framebuffer is memory the backend maps; an access that reaches the device
            // (while the mapping moves) reads as nothing.
            _ => data.fill(0),
        }
    }
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == MMIO_BAR && offset < MMIO_BAR_SIZE {
            self.write_mmio(offset, data);
        }
    }
    fn bar_moved(&mut self, bar: usize, _old: Option<u64>, new: Option<u64>) {
        if let (FRAMEBUFFER_BAR, Some(address)) = (bar, new) {
            self.sink.framebuffer_moved(address);
        }
    }
}

fn is_vga_port(port: u16) -> bool {
    (vga::PORTS_START..vga::PORTS_START + vga::PORTS_LEN).contains(&port)
}

/// The standard VGA's I/O ports on the port bus: register it over the VGA's ports
/// ([`vga::PORTS_START`], [`vga::PORTS_LEN`]) and over the DISPI ports ([`DISPI_PORT`],
/// [`DISPI_PORTS_LEN`]), sharing the adapter the PCI root has.
pub struct VgaIo(pub Arc<std::sync::Mutex<BochsDisplay>>);

impl BusDevice for VgaIo {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let port = u16::try_from(base + offset).unwrap_or(0);
        crate::lock(&self.0).read_io(port, data);
    }
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let port = u16::try_from(base + offset).unwrap_or(0);
        crate::lock(&self.0).write_io(port, data);
    }
}

/// The standard VGA's legacy memory window on the MMIO bus: register it over
/// [`vga::WINDOW_START`], [`vga::WINDOW_SIZE`] (which must then be no RAM).
pub struct VgaWindow(pub Arc<std::sync::Mutex<BochsDisplay>>);

impl BusDevice for VgaWindow {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        crate::lock(&self.0).read_window(offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        crate::lock(&self.0).write_window(offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder {
        scanouts: Mutex<Vec<Option<Scanout>>>,
        moves: Mutex<Vec<u64>>,
        vram_writes: Mutex<Vec<(u64, usize)>>,
    }

    impl ScanoutSink for Recorder {
        fn set_scanout(&self, scanout: Option<Scanout>) {
            self.scanouts.lock().unwrap().push(scanout);
        }
        fn framebuffer_moved(&self, address: u64) {
            self.moves.lock().unwrap().push(address);
        }
        fn read_video_memory(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0xaa);
        }
        fn write_video_memory(&self, offset: u64, data: &[u8]) {
            self.vram_writes.lock().unwrap().push((offset, data.len()));
        }
    }

    const VRAM: u64 = 16 << 20;

    fn adapter(boot: Option<Scanout>) -> (BochsDisplay, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let display = BochsDisplay::new(VRAM, (1024, 768), boot, recorder.clone()).unwrap();
        (display, recorder)
    }

    fn write_reg(d: &mut BochsDisplay, index: usize, value: u16) {
        d.write_bar(MMIO_BAR, DISPI + 2 * index as u64, &value.to_le_bytes());
    }

    fn read_reg(d: &mut BochsDisplay, index: usize) -> u16 {
        let mut b = [0u8; 2];
        d.read_bar(MMIO_BAR, DISPI + 2 * index as u64, &mut b);
        u16::from_le_bytes(b)
    }

    /// The register sequence of Linux's `bochs_hw_setmode`.
    fn set_mode(d: &mut BochsDisplay, width: u16, height: u16, bpp: u16) {
        write_reg(d, ENABLE, 0);
        write_reg(d, BPP, bpp);
        write_reg(d, XRES, width);
        write_reg(d, YRES, height);
        write_reg(d, BANK, 0);
        write_reg(d, VIRT_WIDTH, width);
        write_reg(d, VIRT_HEIGHT, 0xffff);
        write_reg(d, X_OFFSET, 0);
        write_reg(d, Y_OFFSET, 0);
        write_reg(d, ENABLE, ENABLED | LFB_ENABLED);
    }

    fn last(r: &Recorder) -> Option<Scanout> {
        *r.scanouts
            .lock()
            .unwrap()
            .last()
            .expect("a scanout was set")
    }

    #[test]
    fn identity_and_bars_are_what_the_bochs_driver_probes() {
        let (mut d, _) = adapter(None);
        assert_eq!(d.config().u16_at(0), VENDOR_ID);
        assert_eq!(d.config().u16_at(2), DEVICE_ID);
        assert_eq!(d.config().u8_at(0x0b), 0x03);
        let fb = d.config().bar(FRAMEBUFFER_BAR).unwrap();
        assert_eq!(
            (fb.kind, fb.size, fb.prefetchable),
            (BarKind::Memory32, VRAM, true)
        );
        assert_eq!(d.config().bar(MMIO_BAR).unwrap().size, MMIO_BAR_SIZE);
        assert_eq!(read_reg(&mut d, ID) & 0xfff0, 0xb0c0);
        assert_eq!(u64::from(read_reg(&mut d, VIDEO_MEMORY_64K)) * 65536, VRAM);
        let mut qext = [0u8; 8];
        d.read_bar(MMIO_BAR, QEXT, &mut qext);
        assert_eq!(u32::from_le_bytes(qext[..4].try_into().unwrap()), 8);
        assert_eq!(
            u32::from_le_bytes(qext[4..].try_into().unwrap()),
            QEXT_LITTLE_ENDIAN
        );
        let mut edid = [0u8; 2];
        d.read_bar(MMIO_BAR, 0, &mut edid);
        assert_eq!(edid, [0x00, 0xff]);
        // Memory decoding is off until the guest enables it, without a boot mode.
        assert_eq!(d.config().command() & 2, 0);
    }

    #[test]
    fn a_mode_set_reaches_the_sink_once_enabled() {
        let (mut d, r) = adapter(None);
        set_mode(&mut d, 800, 600, 32);
        assert_eq!(last(&r), Some(Scanout::packed32(800, 600)));
        assert_eq!(read_reg(&mut d, XRES), 800);
        assert_eq!(read_reg(&mut d, VIRT_HEIGHT), (VRAM / 3200) as u16);
        // Panning (page flipping) moves the scanout.
        write_reg(&mut d, Y_OFFSET, 600);
        assert_eq!(
            last(&r),
            Some(Scanout {
                offset: 600 * 3200,
                ..Scanout::packed32(800, 600)
            })
        );
        write_reg(&mut d, ENABLE, 0);
        assert_eq!(last(&r), None);
        // 16 bits per pixel.
        set_mode(&mut d, 640, 480, 16);
        assert_eq!(
            last(&r),
            Some(Scanout {
                width: 640,
                height: 480,
                bpp: 16,
                stride: 1280,
                offset: 0
            })
        );
    }

    #[test]
    fn hostile_modes_are_refused_not_trusted() {
        let (mut d, r) = adapter(Some(Scanout::packed32(1024, 768)));
        assert_eq!(last(&r), Some(Scanout::packed32(1024, 768)));
        // Larger than the video memory.
        set_mode(&mut d, 16384, 16384, 32);
        assert_eq!(last(&r), None);
        // A depth the display cannot show.
        set_mode(&mut d, 800, 600, 7);
        assert_eq!(d.scanout(), None);
        set_mode(&mut d, 800, 600, 8);
        assert_eq!(d.scanout(), None);
        // Zero and out-of-range sizes.
        set_mode(&mut d, 0, 600, 32);
        assert_eq!(d.scanout(), None);
        set_mode(&mut d, 0xffff, 1, 32);
        assert_eq!(d.scanout(), None);
        // An offset that pushes the picture past the end of the video memory.
        set_mode(&mut d, 1024, 768, 32);
        assert!(d.scanout().is_some());
        write_reg(&mut d, Y_OFFSET, 0xffff);
        assert_eq!(d.scanout(), None);
        assert_eq!(last(&r), None);
        // The last rows of the video memory fit exactly; one pixel further does not.
        write_reg(&mut d, Y_OFFSET, (VRAM / 4096 - 768) as u16);
        assert!(d.scanout().is_some());
        write_reg(&mut d, X_OFFSET, 1);
        assert_eq!(d.scanout(), None);
        // Every scanout the sink ever got fits in the video memory.
        for s in r.scanouts.lock().unwrap().iter().flatten() {
            let end = s.offset
                + u64::from(s.height - 1) * u64::from(s.stride)
                + u64::from(s.width * s.bpp / 8);
            assert!(end <= VRAM, "{s:?}");
        }
        // Read-only and unknown registers stay as they are.
        write_reg(&mut d, VIDEO_MEMORY_64K, 1);
        assert_eq!(u64::from(read_reg(&mut d, VIDEO_MEMORY_64K)) * 65536, VRAM);
        write_reg(&mut d, ID, 0x1234);
        assert_eq!(read_reg(&mut d, ID), ID_LATEST);
        let mut b = [0u8; 4];
        d.read_bar(MMIO_BAR, 0xffe, &mut b[..2]);
        d.read_bar(MMIO_BAR, 0x1000, &mut b);
        d.write_bar(MMIO_BAR, 0x1000, &[1, 2, 3, 4]);
        d.write_bar(5, 0, &[1]);
    }

    #[test]
    fn caps_report_the_limits_and_odd_access_sizes_work() {
        let (mut d, r) = adapter(None);
        write_reg(&mut d, ENABLE, GET_CAPS);
        assert_eq!(read_reg(&mut d, XRES), MAX_RES);
        assert_eq!(read_reg(&mut d, BPP), MAX_BPP);
        // One 32-bit write sets XRES and YRES together; byte writes build a register.
        write_reg(&mut d, ENABLE, 0);
        d.write_bar(
            MMIO_BAR,
            DISPI + 2 * XRES as u64,
            &(640u32 | (480 << 16)).to_le_bytes(),
        );
        d.write_bar(MMIO_BAR, DISPI + 2 * BPP as u64, &[32]);
        d.write_bar(MMIO_BAR, DISPI + 2 * BPP as u64 + 1, &[0]);
        write_reg(&mut d, ENABLE, ENABLED | LFB_ENABLED);
        assert_eq!(last(&r), Some(Scanout::packed32(640, 480)));
    }

    #[test]
    fn the_standard_vga_has_dispi_at_ports_the_vga_behind_bar_2_and_banks() {
        let recorder = Arc::new(Recorder::default());
        let mut d = BochsDisplay::new_vga(VRAM, (1024, 768), recorder.clone()).unwrap();
        assert_eq!(d.config().u8_at(0x0b), 0x03);
        assert_eq!(d.config().u8_at(0x0a), 0x00, "VGA compatible");
        assert!(d.vga().is_some() && !d.framebuffer_enabled());
        // DISPI through 0x1ce/0x1cf, as vgabios-stdvga.bin does.
        let dispi = |d: &mut BochsDisplay, index: usize, value: u16| {
            d.write_io(DISPI_PORT, &(index as u16).to_le_bytes());
            d.write_io(DISPI_PORT + 1, &value.to_le_bytes());
        };
        d.write_io(DISPI_PORT, &(ID as u16).to_le_bytes());
        let mut b = [0u8; 2];
        d.read_io(DISPI_PORT + 1, &mut b);
        assert_eq!(u16::from_le_bytes(b), ID_LATEST);
        dispi(&mut d, BPP, 32);
        dispi(&mut d, XRES, 640);
        dispi(&mut d, YRES, 480);
        dispi(&mut d, ENABLE, ENABLED | LFB_ENABLED);
        assert_eq!(last(&recorder), Some(Scanout::packed32(640, 480)));
        assert!(d.framebuffer_enabled());
        // The VGA's ports at BAR 2 offset 0x400 (0x3c0 on): the sequencer index at 0x3c4.
        d.write_bar(MMIO_BAR, VGA_PORTS + 4, &[0x02, 0x0a]);
        d.read_io(0x3c4, &mut b);
        assert_eq!(
            b,
            [0x02, 0x0a],
            "a 16-bit write sets the index and the data"
        );
        let mut one = [0u8];
        d.read_bar(MMIO_BAR, VGA_PORTS + 5, &mut one);
        assert_eq!(one, [0x0a]);
        // Ports of neither read all-ones; a too-large DISPI index reads 0.
        d.read_io(0x3e0, &mut one);
        assert_eq!(one, [0xff]);
        d.write_io(DISPI_PORT, &[0x40, 0]);
        d.read_io(DISPI_PORT + 1, &mut b);
        assert_eq!(b, [0, 0]);
        d.write_io(DISPI_PORT + 1, &[1, 2]);
        // A banked mode: the window is the video memory at the bank.
        dispi(&mut d, ENABLE, ENABLED);
        dispi(&mut d, BANK, 3);
        let mut w = [0u8; 4];
        d.read_window(0x10, &mut w);
        assert_eq!(w, [0xaa; 4], "the sink's memory");
        d.write_window(0x10, &[1, 2]);
        assert_eq!(
            *recorder.vram_writes.lock().unwrap(),
            vec![(3 * 65536 + 0x10, 2)]
        );
        // Off: the window is the VGA's again (GR6 at reset maps all 128 KiB).
        dispi(&mut d, ENABLE, 0);
        d.write_io(0x3c4, &[0x02, 0x0f]);
        d.write_window(0x10, &[0x5a]);
        d.read_window(0x10, &mut one);
        assert_eq!(one, [0x5a]);
        // Without the VGA, none of it answers.
        let (mut plain, _) = adapter(None);
        plain.read_io(DISPI_PORT, &mut b);
        plain.read_window(0, &mut one);
        assert_eq!((b, one), ([0xff, 0xff], [0xff]));
    }

    #[test]
    fn a_boot_mode_starts_decoding_and_bar_moves_reach_the_sink() {
        let (mut d, r) = adapter(Some(Scanout::packed32(1280, 800)));
        assert_eq!(d.config().command() & 2, 2);
        assert_eq!(read_reg(&mut d, ENABLE), ENABLED | LFB_ENABLED);
        assert_eq!(read_reg(&mut d, XRES), 1280);
        d.bar_moved(FRAMEBUFFER_BAR, Some(0xc000_0000), None);
        d.bar_moved(MMIO_BAR, None, Some(0xc100_0000));
        d.bar_moved(FRAMEBUFFER_BAR, None, Some(0xd000_0000));
        assert_eq!(*r.moves.lock().unwrap(), vec![0xd000_0000]);
        assert!(BochsDisplay::new(12345, (1024, 768), None, r).is_err());
    }
}
