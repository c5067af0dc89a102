//! A type 0 PCI configuration space with per-bit write masks.

use crate::{Error, Result};

/// Size of the conventional configuration space modelled here; ECAM offsets above it
/// (the PCIe extended space) read as zero, i.e. "no extended capabilities".
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Size of one function's configuration space through ECAM.
pub const EXTENDED_CONFIG_SPACE_SIZE: usize = 4096;
/// Number of BAR registers in a type 0 header.
pub const NUM_BARS: usize = 6;
/// The index that names the expansion ROM BAR (configuration offset 0x30) wherever BARs
/// are numbered (`bar_mapping`, `PciDevice::read_bar`).
pub const ROM_BAR: usize = NUM_BARS;
/// Offset of the expansion ROM base address register.
pub const ROM_BAR_OFFSET: usize = 0x30;
/// The expansion ROM BAR's enable bit.
const ROM_ENABLE: u32 = 1;

/// Offset of the command register.
pub const COMMAND: usize = 0x04;
/// Offset of the status register.
pub const STATUS: usize = 0x06;
/// Offset of the first BAR register.
pub const BAR0: usize = 0x10;
/// Offset of the capabilities pointer.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Offset of the interrupt line register.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Offset of the interrupt pin register.
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command register: I/O space decoding enabled.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus mastering (DMA) enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: INTx assertion disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status register: a capability list is present.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;

/// First offset available for capabilities (after the standard header).
const FIRST_CAPABILITY: usize = 0x40;
/// Command bits the guest may change: I/O, memory, bus master, parity error response,
/// SERR#, INTx disable.
const COMMAND_WRITABLE: u16 = 0x0547;
/// Status bits that are "write one to clear" (error bits).
const STATUS_W1C: u16 = 0xf900;

/// The identity fields of a type 0 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class code.
    pub class: u8,
    /// Sub-class code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (0 = none, 1 = INTA# ... 4 = INTD#).
    pub interrupt_pin: u8,
}

/// The address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// 32-bit memory (must sit below 4 GiB).
    Memory32,
    /// 64-bit memory (uses two BAR registers).
    Memory64,
}

/// A BAR as declared by the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarDef {
    /// Address space.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Whether the memory is prefetchable.
    pub prefetchable: bool,
}

/// Where a BAR currently decodes: enabled in the command register and at a usable
/// address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarMapping {
    /// Address space.
    pub kind: BarKind,
    /// Guest physical (or port) address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A type 0 configuration space: register contents, the bits a guest may write, and
/// the bits a guest clears by writing one.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    w1c: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarDef>; NUM_BARS],
    /// Size of the expansion ROM, if the function has one.
    rom_size: Option<u64>,
    last_capability: Option<usize>,
    next_capability: usize,
}

impl PciConfiguration {
    /// A configuration space with the given identity, no BARs and no capabilities.
    pub fn new(header: PciHeader) -> Self {
        let mut c = PciConfiguration {
            regs: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            w1c: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            rom_size: None,
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        c.set_u16(0x00, header.vendor_id);
        c.set_u16(0x02, header.device_id);
        c.regs[0x08] = header.revision_id;
        c.regs[0x09] = header.prog_if;
        c.regs[0x0a] = header.subclass;
        c.regs[0x0b] = header.class;
        // Header type 0, single function.
        c.regs[0x0e] = 0;
        c.set_u16(0x2c, header.subsystem_vendor_id);
        c.set_u16(0x2e, header.subsystem_id);
        c.regs[INTERRUPT_PIN] = header.interrupt_pin;
        c.set_mask(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        c.w1c[STATUS..STATUS + 2].copy_from_slice(&STATUS_W1C.to_le_bytes());
        // Cache line size and latency timer are plain read/write registers.
        c.writable[0x0c] = 0xff;
        c.writable[0x0d] = 0xff;
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    /// Declare BAR `index`. A 64-bit BAR also takes register `index + 1`. Sizes must be
    /// powers of two: at least 16 bytes for memory (32-bit ones at most 2 GiB), 4 to 256
    /// for I/O.
    pub fn add_bar(&mut self, index: usize, def: BarDef) -> Result<()> {
        let bad = |reason| Error::InvalidBar { index, reason };
        let regs_needed = if def.kind == BarKind::Memory64 { 2 } else { 1 };
        if index + regs_needed > NUM_BARS {
            return Err(bad("index out of range"));
        }
        if (index..index + regs_needed).any(|i| self.bar_register_used(i)) {
            return Err(bad("register already used"));
        }
        if !def.size.is_power_of_two() {
            return Err(bad("size is not a power of two"));
        }
        let (min, max) = match def.kind {
            BarKind::Io => (4, 256),
            BarKind::Memory32 => (16, 1 << 31),
            BarKind::Memory64 => (16, 1 << 63),
        };
        if def.size < min || def.size > max {
            return Err(bad("size out of range"));
        }
        if def.kind == BarKind::Io && def.prefetchable {
            return Err(bad("I/O BARs cannot be prefetchable"));
        }
        let off = BAR0 + index * 4;
        let size_mask = !(def.size - 1);
        let (flags, low_mask) = match def.kind {
            BarKind::Io => (0x1u32, (size_mask as u32) & !0x3),
            BarKind::Memory32 => (u32::from(def.prefetchable) << 3, (size_mask as u32) & !0xf),
            BarKind::Memory64 => (
                0x4 | (u32::from(def.prefetchable) << 3),
                (size_mask as u32) & !0xf,
            ),
        };
        self.set_u32(off, flags);
        self.set_mask(off, &low_mask.to_le_bytes());
        if def.kind == BarKind::Memory64 {
            self.set_u32(off + 4, 0);
            self.set_mask(off + 4, &((size_mask >> 32) as u32).to_le_bytes());
        }
        self.bars[index] = Some(def);
        Ok(())
    }

    /// Declare an expansion ROM of `size` bytes (a power of two, 2 KiB to 16 MiB) behind the
    /// ROM BAR. The firmware places it (the register starts at 0, not decoding) and turns
    /// it on with the enable bit and memory decoding; [`ROM_BAR`] then maps it.
    pub fn add_rom_bar(&mut self, size: u64) -> Result<()> {
        if !size.is_power_of_two() || !(2 << 10..=16 << 20).contains(&size) {
            return Err(Error::InvalidBar {
                index: ROM_BAR,
                reason: "ROM size is not a power of two from 2 KiB to 16 MiB",
            });
        }
        let mask = (!(size - 1) as u32 & 0xffff_f800) | ROM_ENABLE;
        self.set_u32(ROM_BAR_OFFSET, 0);
        self.set_mask(ROM_BAR_OFFSET, &mask.to_le_bytes());
        self.rom_size = Some(size);
        Ok(())
    }

    fn rom_mapping(&self) -> Option<BarMapping> {
        let size = self.rom_size?;
        let register = self.u32_at(ROM_BAR_OFFSET);
        let addr = u64::from(register & 0xffff_f800);
        let on = register & ROM_ENABLE != 0 && self.command() & COMMAND_MEMORY != 0;
        (on && addr != 0 && addr + size <= 1 << 32).then_some(BarMapping {
            kind: BarKind::Memory32,
            addr,
            size,
        })
    }

    fn bar_register_used(&self, reg: usize) -> bool {
        self.bars[reg].is_some()
            || (reg > 0 && matches!(self.bars[reg - 1], Some(b) if b.kind == BarKind::Memory64))
    }

    /// The declared BARs as `(index, definition)`.
    pub fn bars(&self) -> impl Iterator<Item = (usize, BarDef)> + '_ {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.map(|b| (i, b)))
    }

    /// The definition of BAR `index`, if declared.
    pub fn bar(&self, index: usize) -> Option<BarDef> {
        self.bars.get(index).copied().flatten()
    }

    /// The address currently programmed in BAR `index` (flag bits stripped), if declared.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let def = self.bar(index)?;
        let off = BAR0 + index * 4;
        let low = self.u32_at(off);
        Some(match def.kind {
            BarKind::Io => u64::from(low & !0x3),
            BarKind::Memory32 => u64::from(low & !0xf),
            BarKind::Memory64 => u64::from(low & !0xf) | (u64::from(self.u32_at(off + 4)) << 32),
        })
    }

    /// Program BAR `index` with `addr` (as firmware would). The address is masked to the
    /// BAR's alignment.
    pub fn set_bar_address(&mut self, index: usize, addr: u64) -> Result<()> {
        let def = self.bar(index).ok_or(Error::InvalidBar {
            index,
            reason: "not declared",
        })?;
        let off = BAR0 + index * 4;
        let mask = !(def.size - 1);
        let flags = self.u32_at(off) & if def.kind == BarKind::Io { 0x3 } else { 0xf };
        self.set_u32(off, ((addr & mask) as u32) | flags);
        if def.kind == BarKind::Memory64 {
            self.set_u32(off + 4, ((addr & mask) >> 32) as u32);
        }
        Ok(())
    }

    /// Where BAR `index` decodes now, or `None` if it is not declared, its decoding is
    /// disabled in the command register, or its address is zero or unusable. [`ROM_BAR`]
    /// names the expansion ROM.
    pub fn bar_mapping(&self, index: usize) -> Option<BarMapping> {
        if index == ROM_BAR {
            return self.rom_mapping();
        }
        let def = self.bar(index)?;
        let addr = self.bar_address(index)?;
        let command = self.command();
        let enabled = match def.kind {
            BarKind::Io => command & COMMAND_IO != 0,
            _ => command & COMMAND_MEMORY != 0,
        };
        if !enabled || addr == 0 {
            return None;
        }
        let end = addr.checked_add(def.size)?;
        let limit = match def.kind {
            BarKind::Io => 0x1_0000,
            BarKind::Memory32 => 1 << 32,
            BarKind::Memory64 => u64::MAX,
        };
        if end > limit {
            return None;
        }
        Some(BarMapping {
            kind: def.kind,
            addr,
            size: def.size,
        })
    }

    /// Append a capability. `body` is everything after the ID and next-pointer bytes;
    /// `writable` (same length or shorter; missing bytes are read-only) gives the bits
    /// the guest may change. Returns the capability's offset in configuration space.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> Result<usize> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= CONFIG_SPACE_SIZE)
            .ok_or(Error::CapabilitySpace(len))?;
        if writable.len() > body.len() {
            return Err(Error::CapabilitySpace(len));
        }
        self.regs[offset] = id;
        self.regs[offset + 1] = 0;
        self.regs[offset + 2..end].copy_from_slice(body);
        self.writable[offset + 2..offset + 2 + writable.len()].copy_from_slice(writable);
        match self.last_capability {
            Some(prev) => self.regs[prev + 1] = offset as u8,
            None => {
                self.regs[CAPABILITIES_POINTER] = offset as u8;
                let status = self.u16_at(STATUS) | STATUS_CAPABILITIES;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        // Keep capabilities dword aligned.
        self.next_capability = (end + 3) & !3;
        Ok(offset)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.u16_at(COMMAND)
    }

    /// Guest read of configuration space. Offsets past the 256-byte conventional space
    /// (ECAM extended space) read as zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.regs.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Guest write of configuration space: only writable bits change, write-one-to-clear
    /// bits are cleared where a one is written, everything else is ignored.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                return;
            };
            let mask = self.writable[o];
            let cleared = self.w1c[o] & v;
            self.regs[o] = ((self.regs[o] & !mask) | (v & mask)) & !cleared;
        }
    }

    /// Read a byte, ignoring masks (for the device model itself).
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.regs.get(offset).copied().unwrap_or(0)
    }

    /// Read a little-endian u16, ignoring masks.
    pub fn u16_at(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Read a little-endian u32, ignoring masks.
    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Set bytes directly, ignoring masks (for the device model itself). Bytes past the
    /// configuration space are dropped.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            if let Some(r) = offset.checked_add(i).and_then(|o| self.regs.get_mut(o)) {
                *r = *v;
            }
        }
    }

    /// Set a little-endian u16 directly, ignoring masks.
    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Set a little-endian u32 directly, ignoring masks.
    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Replace the writable-bit mask of some bytes.
    pub fn set_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(r) = offset.checked_add(i).and_then(|o| self.writable.get_mut(o)) {
                *r = *m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PciHeader {
        PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            revision_id: 1,
            class: 0x01,
            subclass: 0x00,
            prog_if: 0,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x40,
            interrupt_pin: 1,
        }
    }

    fn write32(c: &mut PciConfiguration, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identity_is_read_only() {
        let mut c = PciConfiguration::new(header());
        write32(&mut c, 0, 0xffff_ffff);
        write32(&mut c, 8, 0xffff_ffff);
        write32(&mut c, 0x2c, 0);
        c.write(INTERRUPT_PIN, &[4]);
        assert_eq!(c.u32_at(0), 0x1042_1af4);
        assert_eq!(c.u32_at(8), 0x0100_0001);
        assert_eq!(c.u32_at(0x2c), 0x0040_1af4);
        assert_eq!(c.u8_at(INTERRUPT_PIN), 1);
        // Interrupt line and command are writable, but only the defined command bits.
        c.write(INTERRUPT_LINE, &[11]);
        assert_eq!(c.u8_at(INTERRUPT_LINE), 11);
        c.write(COMMAND, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE);
        // Status is read-only except error bits that are write-one-to-clear.
        c.set_u16(STATUS, 0x8010);
        c.write(STATUS, &0xffffu16.to_le_bytes());
        assert_eq!(c.u16_at(STATUS), 0x0010);
        // Out of range writes and reads do not panic.
        c.write(0xfe, &[1, 2, 3, 4]);
        let mut b = [0xaa; 8];
        c.read(0xfc, &mut b);
        assert_eq!(&b[4..], &[0, 0, 0, 0]);
        c.read(usize::MAX, &mut b);
    }

    #[test]
    fn bar32_size_probing() {
        let mut c = PciConfiguration::new(header());
        c.add_bar(
            1,
            BarDef {
                kind: BarKind::Memory32,
                size: 0x1000,
                prefetchable: true,
            },
        )
        .unwrap();
        write32(&mut c, BAR0 + 4, 0xffff_ffff);
        assert_eq!(c.u32_at(BAR0 + 4), 0xffff_f008);
        write32(&mut c, BAR0 + 4, 0xfebf_1234);
        assert_eq!(c.u32_at(BAR0 + 4), 0xfebf_1008);
        assert_eq!(c.bar_address(1), Some(0xfebf_1000));
        // Not decoding until memory space is enabled.
        assert_eq!(c.bar_mapping(1), None);
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(
            c.bar_mapping(1),
            Some(BarMapping {
                kind: BarKind::Memory32,
                addr: 0xfebf_1000,
                size: 0x1000
            })
        );
        // Unimplemented BARs read zero and stay zero.
        write32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!(c.u32_at(BAR0), 0);
        // Expansion ROM: none.
        write32(&mut c, 0x30, 0xffff_ffff);
        assert_eq!(c.u32_at(0x30), 0);
    }

    #[test]
    fn bar64_size_probing() {
        let mut c = PciConfiguration::new(header());
        c.add_bar(
            2,
            BarDef {
                kind: BarKind::Memory64,
                size: 0x4000,
                prefetchable: false,
            },
        )
        .unwrap();
        write32(&mut c, BAR0 + 8, 0xffff_ffff);
        write32(&mut c, BAR0 + 12, 0xffff_ffff);
        assert_eq!(c.u32_at(BAR0 + 8), 0xffff_c004);
        assert_eq!(c.u32_at(BAR0 + 12), 0xffff_ffff);
        c.set_bar_address(2, 0x1_0000_4000).unwrap();
        assert_eq!(c.u32_at(BAR0 + 8), 0x4004);
        assert_eq!(c.u32_at(BAR0 + 12), 1);
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(c.bar_mapping(2).unwrap().addr, 0x1_0000_4000);
        // A BAR whose end would overflow is not mapped.
        write32(&mut c, BAR0 + 8, 0xffff_c000);
        write32(&mut c, BAR0 + 12, 0xffff_ffff);
        assert_eq!(c.bar_mapping(2), None);
        // The upper half of a 64-bit BAR cannot be declared again.
        assert!(
            c.add_bar(
                3,
                BarDef {
                    kind: BarKind::Memory32,
                    size: 16,
                    prefetchable: false
                }
            )
            .is_err()
        );
    }

    #[test]
    fn io_bar_and_invalid_bars() {
        let mut c = PciConfiguration::new(header());
        c.add_bar(
            0,
            BarDef {
                kind: BarKind::Io,
                size: 0x20,
                prefetchable: false,
            },
        )
        .unwrap();
        write32(&mut c, BAR0, 0xffff_ffff);
        assert_eq!(c.u32_at(BAR0), 0xffff_ffe1);
        write32(&mut c, BAR0, 0xc040);
        c.write(COMMAND, &COMMAND_IO.to_le_bytes());
        assert_eq!(c.bar_mapping(0).unwrap().addr, 0xc040);
        write32(&mut c, BAR0, 0x1_0000);
        assert_eq!(c.bar_mapping(0), None);
        for (i, kind, size) in [
            (5, BarKind::Memory64, 0x1000),
            (6, BarKind::Memory32, 0x1000),
            (1, BarKind::Memory32, 0x1001),
            (1, BarKind::Memory32, 8),
            (1, BarKind::Io, 0x1000),
            (0, BarKind::Memory32, 0x1000),
        ] {
            let def = BarDef {
                kind,
                size,
                prefetchable: false,
            };
            assert!(c.add_bar(i, def).is_err(), "{i} {kind:?} {size}");
        }
    }

    #[test]
    fn rom_bar_sizing_enable_and_decoding() {
        let mut c = PciConfiguration::new(header());
        assert_eq!(c.bar_mapping(ROM_BAR), None);
        assert!(c.add_rom_bar(3000).is_err());
        assert!(c.add_rom_bar(1024).is_err());
        c.add_rom_bar(64 << 10).unwrap();
        write32(&mut c, ROM_BAR_OFFSET, 0xffff_f800);
        assert_eq!(c.u32_at(ROM_BAR_OFFSET), 0xffff_0000);
        write32(&mut c, ROM_BAR_OFFSET, 0xfeb0_0000 | 1);
        // Not decoding until memory space is on.
        assert_eq!(c.bar_mapping(ROM_BAR), None);
        c.write(COMMAND, &COMMAND_MEMORY.to_le_bytes());
        assert_eq!(
            c.bar_mapping(ROM_BAR),
            Some(BarMapping {
                kind: BarKind::Memory32,
                addr: 0xfeb0_0000,
                size: 64 << 10
            })
        );
        write32(&mut c, ROM_BAR_OFFSET, 0xfeb0_0000);
        assert_eq!(c.bar_mapping(ROM_BAR), None);
    }

    #[test]
    fn capability_list() {
        let mut c = PciConfiguration::new(header());
        let a = c.add_capability(0x09, &[4, 0xaa], &[]).unwrap();
        let b = c
            .add_capability(0x11, &[0, 0, 1, 2, 3, 4], &[0, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_ne!(c.u16_at(STATUS) & STATUS_CAPABILITIES, 0);
        assert_eq!(c.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.u8_at(0x41), 0x44);
        assert_eq!(c.u8_at(0x45), 0);
        // Only the declared bits are writable.
        c.write(b, &[0xff; 8]);
        assert_eq!(c.u32_at(b), 0xc000_0011);
        assert_eq!(c.u32_at(b + 4), 0x0403_0201);
        // Running out of space is an error, not a panic.
        assert!(c.add_capability(0x09, &[0; 300], &[]).is_err());
        while c.add_capability(0x09, &[0; 14], &[]).is_ok() {}
    }
}
