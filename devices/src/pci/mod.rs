//! PCI: configuration space, the root complex (bus 0) with its host bridge, legacy
//! CF8/CFC and ECAM configuration access, BAR allocation and relocation, and MSI-X.
//!
//! ## BAR relocation
//!
//! [`PciRoot::add_device`] assigns every BAR an address (32-bit memory BARs from the
//! window below 4 GiB, 64-bit ones from the window above, I/O BARs from the I/O window)
//! and programs it into the device, as firmware would; memory decoding stays off until
//! the guest enables it in the command register. After every configuration write the
//! root recomputes where each BAR of that device decodes ([`BarMapping`]) and applies
//! the difference to its MMIO or PIO [`Bus`]: it maps, unmaps or relocates a
//! [`PciBarRegion`] that forwards accesses to [`PciDevice::read_bar`] /
//! [`PciDevice::write_bar`]. It then tells the device ([`PciDevice::bar_moved`]) and the
//! backend ([`BarRemapListener`], e.g. to re-register ioeventfds on the notify region).
//! Applying the change inside the configuration write means the very next guest access
//! to the BAR already reaches the device.

mod config;
pub mod i440fx;
mod msix;
pub mod piix;

pub use config::*;
pub use msix::*;

use std::sync::{Arc, Mutex, Weak};

use crate::bus::{Bus, BusDevice};
use crate::{Error, Result, lock};

/// Number of device slots on bus 0.
pub const NUM_SLOTS: usize = 32;
/// ECAM bytes per bus (32 devices x 8 functions x 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// First port of the legacy configuration mechanism (address register).
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
/// Number of ports of the legacy mechanism (address register and data window).
pub const CONFIG_IO_PORTS: u64 = 8;

/// Host bridge vendor ID: Red Hat, Inc. (the ID range QEMU uses for its virtual
/// hardware). See [`HostBridge`] for why.
pub const HOST_BRIDGE_VENDOR_ID: u16 = 0x1b36;
/// Host bridge device ID: "QEMU PCIe host bridge" (listed in the PCI ID database and in
/// QEMU's `docs/specs/pci-ids`).
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// The function's configuration space.
    fn config(&self) -> &PciConfiguration;
    /// The function's configuration space, mutably (used by the root to assign BARs).
    fn config_mut(&mut self) -> &mut PciConfiguration;
    /// Guest read of configuration space at `offset` (0..4096).
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    /// Guest write of configuration space at `offset` (0..4096).
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
    }
    /// Guest read inside BAR `bar` at `offset`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset);
        data.fill(0xff);
    }
    /// Guest write inside BAR `bar` at `offset`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }
    /// BAR `bar` now decodes at `new` (`None`: not at all) instead of `old`.
    fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
        let _ = (bar, old, new);
    }
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// The host bridge at 00:00.0.
///
/// It uses the IDs of QEMU's generic PCIe host bridge (1b36:0008): an ID that guests
/// already see on virtual machines, that no OS binds a chipset driver or quirk to
/// (unlike the IDs of a real Intel chipset, which Linux and Windows probe for chipset
/// specific registers), and that is documented publicly. Class 06/00/00 (host bridge).
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfiguration,
}

impl HostBridge {
    /// A host bridge configuration space.
    pub fn new() -> Self {
        HostBridge {
            config: PciConfiguration::new(PciHeader {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                revision_id: 0,
                class: 0x06,
                subclass: 0x00,
                prog_if: 0,
                subsystem_vendor_id: HOST_BRIDGE_VENDOR_ID,
                subsystem_id: 0x1100,
                interrupt_pin: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
}

/// A bump allocator of naturally aligned blocks inside `[base, base + size)`.
#[derive(Clone, Debug)]
pub struct AddressAllocator {
    name: &'static str,
    next: u64,
    end: u64,
}

impl AddressAllocator {
    /// An allocator over `[base, base + size)`; an overflowing window is clamped.
    pub fn new(name: &'static str, base: u64, size: u64) -> Self {
        AddressAllocator {
            name,
            next: base,
            end: base.saturating_add(size),
        }
    }

    /// Allocate `size` bytes (a power of two) aligned to `size`.
    pub fn allocate(&mut self, size: u64) -> Result<u64> {
        let err = Error::OutOfBarSpace {
            window: self.name,
            size,
        };
        if !size.is_power_of_two() {
            return Err(err);
        }
        let start = self.next.checked_next_multiple_of(size).ok_or(err)?;
        let end =
            start
                .checked_add(size)
                .filter(|e| *e <= self.end)
                .ok_or(Error::OutOfBarSpace {
                    window: self.name,
                    size,
                })?;
        self.next = end;
        Ok(start)
    }
}

/// The address windows the root assigns BARs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindows {
    /// 32-bit MMIO window `(base, size)`, below 4 GiB.
    pub mem32: (u64, u64),
    /// 64-bit MMIO window `(base, size)`, above RAM.
    pub mem64: (u64, u64),
    /// I/O port window `(base, size)`.
    pub io: (u64, u64),
}

/// A change of where a BAR decodes, reported to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRemap {
    /// Device slot on bus 0.
    pub slot: u8,
    /// BAR index.
    pub bar: usize,
    /// Address space.
    pub kind: BarKind,
    /// BAR size.
    pub size: u64,
    /// Previous address, if it was decoding.
    pub old: Option<u64>,
    /// New address, if it decodes now (and could be mapped on the bus).
    pub new: Option<u64>,
}

/// Receives BAR remap events (e.g. the backend moving ioeventfds).
pub trait BarRemapListener: Send + Sync {
    /// A BAR was mapped, unmapped or moved; the bus is already updated.
    fn bar_remapped(&self, event: &BarRemap);
}

/// Forwards bus accesses to one BAR of a PCI device.
pub struct PciBarRegion {
    device: SharedPciDevice,
    bar: usize,
}

impl BusDevice for PciBarRegion {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }
    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

struct Slot {
    device: SharedPciDevice,
    mapped: [Option<BarMapping>; NUM_BARS + 1],
}

/// Bus 0 of a PCI hierarchy: the host bridge in slot 0 and up to 31 devices.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    /// Functions 1..7 of multi-function devices, by (device, function). They have no BARs
    /// (the chipset functions that need them, like PIIX4's power management, decode fixed
    /// registers of their own).
    functions: Vec<((u8, u8), SharedPciDevice)>,
    // Weak: the buses hold the root (through the configuration-space devices), so strong
    // references here would keep every device, and the guest memory they hold, alive forever
    // after the machine ends.
    mmio_bus: Weak<Bus>,
    pio_bus: Weak<Bus>,
    mem32: AddressAllocator,
    mem64: AddressAllocator,
    io: AddressAllocator,
    listener: Option<Arc<dyn BarRemapListener>>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let used: Vec<usize> = (0..NUM_SLOTS)
            .filter(|s| self.slots[*s].is_some())
            .collect();
        f.debug_struct("PciRoot").field("slots", &used).finish()
    }
}

impl PciRoot {
    /// A root with the host bridge at slot 0. BARs are mapped on `mmio_bus` and
    /// `pio_bus` and assigned from `windows`.
    pub fn new(mmio_bus: Arc<Bus>, pio_bus: Arc<Bus>, windows: PciWindows) -> Self {
        Self::with_host_bridge(
            mmio_bus,
            pio_bus,
            windows,
            Arc::new(Mutex::new(HostBridge::new())),
        )
    }

    /// A root with `host_bridge` at slot 0 (e.g. the i440FX a firmware expects).
    pub fn with_host_bridge(
        mmio_bus: Arc<Bus>,
        pio_bus: Arc<Bus>,
        windows: PciWindows,
        host_bridge: SharedPciDevice,
    ) -> Self {
        let mut slots: Vec<Option<Slot>> = (0..NUM_SLOTS).map(|_| None).collect();
        slots[0] = Some(Slot {
            device: host_bridge,
            mapped: [None; NUM_BARS + 1],
        });
        PciRoot {
            slots,
            functions: Vec::new(),
            mmio_bus: Arc::downgrade(&mmio_bus),
            pio_bus: Arc::downgrade(&pio_bus),
            mem32: AddressAllocator::new("32-bit MMIO", windows.mem32.0, windows.mem32.1),
            mem64: AddressAllocator::new("64-bit MMIO", windows.mem64.0, windows.mem64.1),
            io: AddressAllocator::new("I/O", windows.io.0, windows.io.1),
            listener: None,
        }
    }

    /// Report BAR remaps to `listener` from now on.
    pub fn set_bar_listener(&mut self, listener: Arc<dyn BarRemapListener>) {
        self.listener = Some(listener);
    }

    /// Plug `device` into the first free slot, assign its BARs and return the slot.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<u8> {
        let slot = (1..NUM_SLOTS)
            .find(|s| self.slots[*s].is_none())
            .ok_or(Error::NoFreeSlot)?;
        self.add_device_at(slot as u8, device)?;
        Ok(slot as u8)
    }

    /// Plug `device` into `slot` (1..32) and assign its BARs.
    pub fn add_device_at(&mut self, slot: u8, device: SharedPciDevice) -> Result<()> {
        let s = usize::from(slot);
        if s == 0 || s >= NUM_SLOTS || self.slots[s].is_some() {
            return Err(Error::SlotUnavailable(slot));
        }
        {
            let mut dev = lock(&device);
            let bars: Vec<(usize, BarDef)> = dev.config().bars().collect();
            // Largest first keeps the bump allocators tightly packed.
            let mut order = bars.clone();
            order.sort_by_key(|(_, d)| std::cmp::Reverse(d.size));
            for (index, def) in order {
                let addr = match def.kind {
                    BarKind::Memory32 => self.mem32.allocate(def.size)?,
                    BarKind::Memory64 => self.mem64.allocate(def.size)?,
                    BarKind::Io => self.io.allocate(def.size)?,
                };
                dev.config_mut().set_bar_address(index, addr)?;
            }
        }
        self.slots[s] = Some(Slot {
            device,
            mapped: [None; NUM_BARS + 1],
        });
        // Devices normally start with decoding off, but honour a model that enables it.
        self.update_bars(s);
        Ok(())
    }

    /// Plug `device` in as function `function` (1..8) of the multi-function device in
    /// `slot`: function 0 must be there and say it is multi-function (bit 7 of its header
    /// type), or guests never look for the other functions. Such functions have no BARs.
    pub fn add_function(&mut self, slot: u8, function: u8, device: SharedPciDevice) -> Result<()> {
        let unavailable = Error::SlotUnavailable(slot);
        if !(1..8).contains(&function)
            || self.functions.iter().any(|(at, _)| *at == (slot, function))
        {
            return Err(unavailable);
        }
        let Some(first) = self.slots.get(usize::from(slot)).and_then(Option::as_ref) else {
            return Err(unavailable);
        };
        if lock(&first.device).config().u8_at(0x0e) & 0x80 == 0 {
            return Err(unavailable);
        }
        if lock(&device).config().bars().next().is_some() {
            return Err(Error::InvalidBar {
                index: 0,
                reason: "functions other than 0 cannot have BARs here",
            });
        }
        self.functions.push(((slot, function), device));
        Ok(())
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<SharedPciDevice> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.device.clone())
    }

    /// Configuration read of bus 0, `device`, `function` at `offset`. Absent functions read
    /// all-ones.
    pub fn config_read(&self, device: u8, function: u8, offset: usize, data: &mut [u8]) {
        if let Some(extra) = self.extra_function(device, function) {
            lock(extra).read_config(offset, data);
            return;
        }
        match self.function(device, function) {
            Some(slot) => lock(&slot.device).read_config(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of bus 0, `device`, `function` at `offset`; BAR changes are
    /// applied to the buses before it returns.
    pub fn config_write(&mut self, device: u8, function: u8, offset: usize, data: &[u8]) {
        if let Some(extra) = self.extra_function(device, function) {
            lock(extra).write_config(offset, data);
            return;
        }
        let Some(slot) = self.function(device, function) else {
            return;
        };
        lock(&slot.device).write_config(offset, data);
        self.update_bars(usize::from(device));
    }

    fn extra_function(&self, device: u8, function: u8) -> Option<&SharedPciDevice> {
        if function == 0 {
            return None;
        }
        self.functions
            .iter()
            .find(|(at, _)| *at == (device, function))
            .map(|(_, d)| d)
    }

    fn function(&self, device: u8, function: u8) -> Option<&Slot> {
        if function != 0 {
            return None;
        }
        self.slots.get(usize::from(device))?.as_ref()
    }

    fn update_bars(&mut self, s: usize) {
        let Some(slot) = self.slots[s].as_mut() else {
            return;
        };
        let wanted: Vec<(usize, Option<BarMapping>)> = {
            let dev = lock(&slot.device);
            (0..=ROM_BAR)
                .map(|i| (i, dev.config().bar_mapping(i)))
                .collect()
        };
        let mut events = Vec::new();
        for (bar, want) in wanted {
            let have = slot.mapped[bar];
            if have == want {
                continue;
            }
            let def = match (have, want) {
                (Some(m), _) | (None, Some(m)) => m,
                (None, None) => continue,
            };
            let Some(bus) = (match def.kind {
                BarKind::Io => &self.pio_bus,
                _ => &self.mmio_bus,
            })
            .upgrade() else {
                // The machine is being torn down; there is nothing left to map on.
                continue;
            };
            if let Some(h) = have {
                if let Err(e) = bus.remove(h.addr) {
                    tracing::warn!(slot = s, bar, "BAR unmap failed: {e}");
                }
                slot.mapped[bar] = None;
            }
            if let Some(w) = want {
                let region = Arc::new(Mutex::new(PciBarRegion {
                    device: slot.device.clone(),
                    bar,
                }));
                match bus.insert(w.addr, w.size, region) {
                    Ok(()) => slot.mapped[bar] = Some(w),
                    Err(e) => {
                        tracing::warn!(slot = s, bar, addr = w.addr, "BAR not mapped: {e}")
                    }
                }
            }
            let old = have.map(|m| m.addr);
            let new = slot.mapped[bar].map(|m| m.addr);
            if old != new {
                events.push(BarRemap {
                    slot: s as u8,
                    bar,
                    kind: def.kind,
                    size: def.size,
                    old,
                    new,
                });
            }
        }
        for ev in events {
            tracing::debug!(?ev, "BAR remapped");
            lock(&slot.device).bar_moved(ev.bar, ev.old, ev.new);
            if let Some(l) = &self.listener {
                l.bar_remapped(&ev);
            }
        }
    }
}

/// The legacy configuration mechanism: address register at port 0xcf8, data window at
/// 0xcfc..0xcff. Register it on the PIO bus at [`CONFIG_ADDRESS_PORT`] with length
/// [`CONFIG_IO_PORTS`].
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    /// A CF8/CFC front end for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// `(device, function, register offset)` selected by the address register plus the
    /// byte offset into the data window, or `None` if disabled or not bus 0.
    fn target(&self, data_offset: u64, len: usize) -> Option<(u8, u8, usize)> {
        let a = self.address;
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        // The access must stay inside the 4-byte data window.
        if data_offset.checked_add(len as u64)? > 4 {
            return None;
        }
        let dev = ((a >> 11) & 0x1f) as u8;
        let func = ((a >> 8) & 0x7) as u8;
        let reg = (a & 0xfc) as usize + data_offset as usize;
        Some((dev, func, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match offset {
            0..4 => {
                let bytes = self.address.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            _ => match self.target(offset - 4, data.len()) {
                Some((dev, func, reg)) => lock(&self.root).config_read(dev, func, reg, data),
                None => data.fill(0xff),
            },
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            // Only a full dword write selects an address (byte writes to 0xcf8/0xcfb are
            // other legacy registers on real chipsets).
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            0..4 => {}
            _ => {
                if let Some((dev, func, reg)) = self.target(offset - 4, data.len()) {
                    lock(&self.root).config_write(dev, func, reg, data);
                }
            }
        }
    }
}

/// The ECAM (PCIe enhanced configuration) window for bus 0. Register it on the MMIO bus
/// with length [`ECAM_BUS_SIZE`] and describe it in ACPI MCFG (or the FDT) as bus 0..0.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    /// An ECAM front end for `root`.
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root }
    }

    fn target(offset: u64, len: usize) -> Option<(u8, u8, usize)> {
        // 1, 2 or 4 bytes, naturally aligned, inside bus 0.
        if !matches!(len, 1 | 2 | 4)
            || !offset.is_multiple_of(len as u64)
            || offset >= ECAM_BUS_SIZE
        {
            return None;
        }
        let dev = ((offset >> 15) & 0x1f) as u8;
        let func = ((offset >> 12) & 0x7) as u8;
        let reg = (offset & 0xfff) as usize;
        Some((dev, func, reg))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match Self::target(offset, data.len()) {
            Some((dev, func, reg)) => lock(&self.root).config_read(dev, func, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let Some((dev, func, reg)) = Self::target(offset, data.len()) {
            lock(&self.root).config_write(dev, func, reg, data);
        }
    }
}

/// Test helpers shared with other modules.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::msix::tests::RecordingSignaller;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;

    pub(crate) const WINDOWS: PciWindows = PciWindows {
        mem32: (0xc000_0000, 0x3000_0000),
        mem64: (0x100_0000_0000, 0x100_0000_0000),
        io: (0xc000, 0x4000),
    };

    /// A device with a 64-bit BAR 0, a 32-bit BAR 2 and an I/O BAR 3 that echoes the BAR
    /// index and offset.
    struct Dummy {
        config: PciConfiguration,
        moves: Vec<(usize, Option<u64>, Option<u64>)>,
    }

    impl Dummy {
        fn new() -> Self {
            let mut config = PciConfiguration::new(PciHeader {
                vendor_id: 0x1234,
                device_id: 0x5678,
                revision_id: 0,
                class: 0xff,
                subclass: 0,
                prog_if: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                interrupt_pin: 0,
            });
            for (i, kind, size) in [
                (0, BarKind::Memory64, 0x4000),
                (2, BarKind::Memory32, 0x1000),
                (3, BarKind::Io, 0x20),
            ] {
                config
                    .add_bar(
                        i,
                        BarDef {
                            kind,
                            size,
                            prefetchable: false,
                        },
                    )
                    .unwrap();
            }
            Dummy {
                config,
                moves: Vec::new(),
            }
        }
    }

    impl PciDevice for Dummy {
        fn config(&self) -> &PciConfiguration {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfiguration {
            &mut self.config
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(0);
            data[0] = bar as u8;
            if data.len() > 1 {
                data[1] = offset as u8;
            }
        }
        fn bar_moved(&mut self, bar: usize, old: Option<u64>, new: Option<u64>) {
            self.moves.push((bar, old, new));
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<BarRemap>>);
    impl BarRemapListener for Events {
        fn bar_remapped(&self, event: &BarRemap) {
            self.0.lock().unwrap().push(*event);
        }
    }

    struct Machine {
        mmio: Arc<Bus>,
        pio: Arc<Bus>,
        events: Arc<Events>,
        dummy: Arc<Mutex<Dummy>>,
    }

    const ECAM: u64 = 0xe000_0000;

    fn machine() -> Machine {
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), pio.clone(), WINDOWS)));
        let events = Arc::new(Events::default());
        root.lock().unwrap().set_bar_listener(events.clone());
        pio.insert(
            CONFIG_ADDRESS_PORT,
            CONFIG_IO_PORTS,
            Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
        )
        .unwrap();
        mmio.insert(
            ECAM,
            ECAM_BUS_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        )
        .unwrap();
        let dummy = Arc::new(Mutex::new(Dummy::new()));
        assert_eq!(root.lock().unwrap().add_device(dummy.clone()).unwrap(), 1);
        Machine {
            mmio,
            pio,
            events,
            dummy,
        }
    }

    fn cf8_read32(pio: &Bus, dev: u32, reg: u32) -> u32 {
        pio.write(0xcf8, &(0x8000_0000 | (dev << 11) | reg).to_le_bytes());
        let mut b = [0; 4];
        pio.read(0xcfc, &mut b);
        u32::from_le_bytes(b)
    }

    fn cf8_write32(pio: &Bus, dev: u32, reg: u32, v: u32) {
        pio.write(0xcf8, &(0x8000_0000 | (dev << 11) | reg).to_le_bytes());
        pio.write(0xcfc, &v.to_le_bytes());
    }

    fn ecam_read32(mmio: &Bus, dev: u64, reg: u64) -> u32 {
        let mut b = [0; 4];
        mmio.read(ECAM + (dev << 15) + reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn ecam_write32(mmio: &Bus, dev: u64, reg: u64, v: u32) {
        mmio.write(ECAM + (dev << 15) + reg, &v.to_le_bytes());
    }

    #[test]
    fn enumeration_through_both_mechanisms() {
        let m = machine();
        assert_eq!(cf8_read32(&m.pio, 0, 0), 0x0008_1b36);
        assert_eq!(ecam_read32(&m.mmio, 0, 0), 0x0008_1b36);
        assert_eq!(cf8_read32(&m.pio, 0, 8) >> 8, 0x06_00_00);
        assert_eq!(cf8_read32(&m.pio, 1, 0), 0x5678_1234);
        assert_eq!(ecam_read32(&m.mmio, 1, 0), 0x5678_1234);
        // Empty slots, other functions, other buses: all-ones.
        assert_eq!(cf8_read32(&m.pio, 2, 0), 0xffff_ffff);
        assert_eq!(ecam_read32(&m.mmio, 31, 0), 0xffff_ffff);
        assert_eq!(ecam_read32(&m.mmio, 0, 1 << 12), 0xffff_ffff);
        m.pio.write(0xcf8, &0x8001_0000u32.to_le_bytes());
        let mut b = [0; 4];
        m.pio.read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Disabled address register: all-ones.
        m.pio.write(0xcf8, &0u32.to_le_bytes());
        m.pio.read(0xcfc, &mut b);
        assert_eq!(b, [0xff; 4]);
        // The address register reads back.
        m.pio.write(0xcf8, &0x8000_0810u32.to_le_bytes());
        m.pio.read(0xcf8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0810);
        // Sub-dword data accesses hit the right bytes.
        m.pio.write(0xcf8, &0x8000_0800u32.to_le_bytes());
        let mut w = [0; 2];
        m.pio.read(0xcfe, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x5678);
        // Crossing the data window end or misaligned ECAM reads all-ones.
        m.pio.read(0xcfe, &mut b[..3]);
        let mut b3 = [0u8; 3];
        m.mmio.read(ECAM + (1 << 15), &mut b3);
        assert_eq!(b3, [0xff; 3]);
        m.mmio.read(ECAM + (1 << 15) + 2, &mut b);
        assert_eq!(b, [0xff; 4]);
        // Extended configuration space reads zero for a present function.
        assert_eq!(ecam_read32(&m.mmio, 1, 0x100), 0);
    }

    #[test]
    fn bars_assigned_and_mapped_on_enable() {
        let m = machine();
        let bar0 = u64::from(cf8_read32(&m.pio, 1, 0x10) & !0xf)
            | (u64::from(cf8_read32(&m.pio, 1, 0x14)) << 32);
        let bar2 = u64::from(cf8_read32(&m.pio, 1, 0x18) & !0xf);
        let bar3 = u64::from(cf8_read32(&m.pio, 1, 0x1c) & !0x3);
        assert_eq!(bar0, WINDOWS.mem64.0);
        assert_eq!(bar2, WINDOWS.mem32.0);
        assert_eq!(bar3, WINDOWS.io.0);
        // Nothing decodes before the command register enables it.
        let mut b = [0u8; 2];
        assert!(!m.mmio.read(bar0, &mut b));
        cf8_write32(&m.pio, 1, 4, u32::from(COMMAND_MEMORY | COMMAND_IO));
        assert!(m.mmio.read(bar0 + 5, &mut b));
        assert_eq!(b, [0, 5]);
        assert!(m.mmio.read(bar2 + 7, &mut b));
        assert_eq!(b, [2, 7]);
        assert!(m.pio.read(bar3 + 1, &mut b));
        assert_eq!(b, [3, 1]);
        assert_eq!(m.events.0.lock().unwrap().len(), 3);
    }

    #[test]
    fn guest_moves_bar() {
        let m = machine();
        cf8_write32(&m.pio, 1, 4, u32::from(COMMAND_MEMORY));
        let old = WINDOWS.mem32.0;
        m.events.0.lock().unwrap().clear();
        // Move BAR 2 through ECAM.
        ecam_write32(&m.mmio, 1, 0x18, 0xd000_0000);
        let mut b = [0u8; 2];
        assert!(!m.mmio.read(old, &mut b));
        assert!(m.mmio.read(0xd000_0003, &mut b));
        assert_eq!(b, [2, 3]);
        let ev = m.events.0.lock().unwrap().clone();
        assert_eq!(
            ev,
            vec![BarRemap {
                slot: 1,
                bar: 2,
                kind: BarKind::Memory32,
                size: 0x1000,
                old: Some(old),
                new: Some(0xd000_0000)
            }]
        );
        assert_eq!(
            m.dummy.lock().unwrap().moves.last(),
            Some(&(2, Some(old), Some(0xd000_0000)))
        );
        // Size probing with decoding disabled, as Linux does, unmaps and restores.
        cf8_write32(&m.pio, 1, 4, 0);
        assert!(!m.mmio.read(0xd000_0000, &mut b));
        cf8_write32(&m.pio, 1, 0x18, 0xffff_ffff);
        assert_eq!(cf8_read32(&m.pio, 1, 0x18), 0xffff_f000);
        cf8_write32(&m.pio, 1, 0x18, 0xd000_0000);
        cf8_write32(&m.pio, 1, 4, u32::from(COMMAND_MEMORY));
        assert!(m.mmio.read(0xd000_0000, &mut b));
        // A BAR moved onto another device's range is refused by the bus: it does not
        // decode (and does not take the ECAM window over).
        cf8_write32(&m.pio, 1, 0x18, ECAM as u32);
        assert!(m.mmio.read(ECAM, &mut [0u8; 4]));
        assert_eq!(ecam_read32(&m.mmio, 0, 0), 0x0008_1b36);
        let last = *m.events.0.lock().unwrap().last().unwrap();
        assert_eq!(last.new, None);
        // Moving it back to a free place maps it again.
        cf8_write32(&m.pio, 1, 0x18, 0xd000_1000);
        assert!(m.mmio.read(0xd000_1000, &mut b));
    }

    #[test]
    fn allocator_alignment_and_exhaustion() {
        let mut a = AddressAllocator::new("t", 0x1000, 0x10000);
        assert_eq!(a.allocate(0x100).unwrap(), 0x1000);
        assert_eq!(a.allocate(0x4000).unwrap(), 0x4000);
        assert!(a.allocate(0x3000).is_err());
        assert!(a.allocate(0x10000).is_err());
        assert_eq!(a.allocate(0x8000).unwrap(), 0x8000);
        assert_eq!(a.allocate(0x1000).unwrap(), 0x10000);
        assert!(a.allocate(0x10).is_err());
        assert!(a.allocate(0).is_err());
        let mut b = AddressAllocator::new("t", u64::MAX - 0x10, 0x1000);
        assert!(b.allocate(0x1000).is_err());
    }

    #[test]
    fn slots() {
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mut root = PciRoot::new(mmio, pio, WINDOWS);
        assert!(
            root.add_device_at(0, Arc::new(Mutex::new(HostBridge::new())))
                .is_err()
        );
        assert!(
            root.add_device_at(32, Arc::new(Mutex::new(HostBridge::new())))
                .is_err()
        );
        for _ in 1..NUM_SLOTS {
            root.add_device(Arc::new(Mutex::new(HostBridge::new())))
                .unwrap();
        }
        assert!(matches!(
            root.add_device(Arc::new(Mutex::new(HostBridge::new()))),
            Err(Error::NoFreeSlot)
        ));
        assert!(root.device(31).is_some());
        assert!(root.device(200).is_none());
    }
}
