//! An address bus that routes port I/O or MMIO accesses to devices.
//!
//! A [`Bus`] maps non-overlapping address ranges to devices. The backend keeps one for
//! port I/O and one for MMIO and calls [`Bus::read`] / [`Bus::write`] on every exit.
//! The bus is internally synchronised (`&self` everywhere) so vCPU threads can share it
//! through an `Arc`, and so a device (the PCI root) can remap ranges while the guest
//! runs. The range map's lock is never held while a device runs, so a device may itself
//! change the bus it sits on.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::{Error, Result, lock};

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Read `data.len()` bytes at `offset` from the start of the range the device was
    /// registered at (the base the access hit is given in `base`).
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// Write `data` at `offset` from the start of the range registered at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// A shared, lockable bus device.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

/// Which address space a bus models; only used for logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusKind {
    /// x86 port I/O (16-bit address space).
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

impl fmt::Display for BusKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusKind::Pio => f.write_str("pio"),
            BusKind::Mmio => f.write_str("mmio"),
        }
    }
}

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedBusDevice,
}

/// Counters of accesses that hit no device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmappedStats {
    /// Reads that returned all-ones.
    pub reads: u64,
    /// Writes that were dropped.
    pub writes: u64,
}

/// An address space of non-overlapping device ranges.
pub struct Bus {
    kind: BusKind,
    ranges: RwLock<BTreeMap<u64, Entry>>,
    unmapped_reads: AtomicU64,
    unmapped_writes: AtomicU64,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("kind", &self.kind)
            .field("ranges", &self.ranges())
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new(kind: BusKind) -> Self {
        Bus {
            kind,
            ranges: RwLock::new(BTreeMap::new()),
            unmapped_reads: AtomicU64::new(0),
            unmapped_writes: AtomicU64::new(0),
        }
    }

    /// Which address space this bus models.
    pub fn kind(&self) -> BusKind {
        self.kind
    }

    /// Register `device` for `[base, base + len)`. Refuses empty, wrapping and
    /// overlapping ranges.
    pub fn insert(&self, base: u64, len: u64, device: SharedBusDevice) -> Result<()> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(Error::InvalidRange { base, len });
        }
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if Self::overlaps(&ranges, base, len) {
            return Err(Error::Overlap { base, len });
        }
        ranges.insert(base, Entry { len, device });
        tracing::debug!(bus = %self.kind, base, len, "range mapped");
        Ok(())
    }

    /// Unregister the range starting at `base` and return its device.
    pub fn remove(&self, base: u64) -> Result<SharedBusDevice> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let entry = ranges.remove(&base).ok_or(Error::NotMapped(base))?;
        tracing::debug!(bus = %self.kind, base, "range unmapped");
        Ok(entry.device)
    }

    /// Move the range starting at `old_base` to `new_base`, keeping its length. On error
    /// (nothing at `old_base`, or the new range is invalid or overlaps another one) the
    /// bus is unchanged.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<()> {
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let entry = ranges.remove(&old_base).ok_or(Error::NotMapped(old_base))?;
        let len = entry.len;
        let valid = new_base.checked_add(len - 1).is_some();
        if !valid || Self::overlaps(&ranges, new_base, len) {
            ranges.insert(old_base, entry);
            return Err(if valid {
                Error::Overlap {
                    base: new_base,
                    len,
                }
            } else {
                Error::InvalidRange {
                    base: new_base,
                    len,
                }
            });
        }
        ranges.insert(new_base, entry);
        tracing::debug!(bus = %self.kind, old_base, new_base, len, "range relocated");
        Ok(())
    }

    /// The registered ranges as `(base, len)`, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        ranges.iter().map(|(b, e)| (*b, e.len)).collect()
    }

    /// How many accesses hit no device so far.
    pub fn unmapped_stats(&self) -> UnmappedStats {
        UnmappedStats {
            reads: self.unmapped_reads.load(Ordering::Relaxed),
            writes: self.unmapped_writes.load(Ordering::Relaxed),
        }
    }

    /// Read `data.len()` bytes at `addr`. Returns whether a device handled the access; if
    /// none did (or the access straddles a range end) `data` is filled with `0xff`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                lock(&device).read(base, addr - base, data);
                true
            }
            None => {
                data.fill(0xff);
                self.unmapped_reads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bus = %self.kind, addr, len = data.len(), "unmapped read");
                false
            }
        }
    }

    /// Write `data` at `addr`. Returns whether a device handled the access; if none did
    /// the write is dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                lock(&device).write(base, addr - base, data);
                true
            }
            None => {
                self.unmapped_writes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(bus = %self.kind, addr, len = data.len(), "unmapped write");
                false
            }
        }
    }

    /// The range containing all of `[addr, addr + len)`, if any; the map lock is released
    /// before returning so the device runs without it.
    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, SharedBusDevice)> {
        let len = u64::try_from(len).ok()?;
        let last = addr.checked_add(len.checked_sub(1)?)?;
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, entry) = ranges.range(..=addr).next_back()?;
        // `addr >= base` by construction; the range's last byte cannot overflow (checked
        // at insert time).
        let range_last = base + (entry.len - 1);
        if last > range_last {
            return None;
        }
        Some((*base, entry.device.clone()))
    }

    fn overlaps(ranges: &BTreeMap<u64, Entry>, base: u64, len: u64) -> bool {
        let last = base + (len - 1);
        // The closest range starting at or before `last` is the only candidate.
        match ranges.range(..=last).next_back() {
            Some((b, e)) => b + (e.len - 1) >= base,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device that records the last access and reads back a pattern.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, u64, Vec<u8>)>,
        reads: usize,
    }

    impl BusDevice for Probe {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            self.reads += 1;
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last_write = Some((base, offset, data.to_vec()));
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn dispatch_with_offsets() {
        let bus = Bus::new(BusKind::Mmio);
        let p = probe();
        bus.insert(0x1000, 0x100, p.clone()).unwrap();
        let mut buf = [0u8; 4];
        assert!(bus.read(0x1010, &mut buf));
        assert_eq!(buf, [0x10, 0x11, 0x12, 0x13]);
        assert!(bus.write(0x10fc, &[1, 2, 3, 4]));
        assert_eq!(
            p.lock().unwrap().last_write,
            Some((0x1000, 0xfc, vec![1, 2, 3, 4]))
        );
    }

    #[test]
    fn unmapped_reads_all_ones_and_counts() {
        let bus = Bus::new(BusKind::Pio);
        let p = probe();
        bus.insert(0x3f8, 8, p.clone()).unwrap();
        let mut buf = [0u8; 2];
        assert!(!bus.read(0x3f0, &mut buf));
        assert_eq!(buf, [0xff, 0xff]);
        // Straddling the end of a range is unmapped too.
        assert!(!bus.read(0x3ff, &mut buf));
        assert!(!bus.write(0x400, &[0]));
        assert!(!bus.write(u64::MAX, &[0, 0]));
        assert!(!bus.read(0x3f8, &mut []));
        assert_eq!(
            bus.unmapped_stats(),
            UnmappedStats {
                reads: 3,
                writes: 2
            }
        );
        assert_eq!(p.lock().unwrap().reads, 0);
        assert!(p.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new(BusKind::Mmio);
        bus.insert(0x1000, 0x1000, probe()).unwrap();
        for (b, l) in [
            (0x1000, 1),
            (0xfff, 2),
            (0x1fff, 1),
            (0x800, 0x2000),
            (0x1800, 4),
        ] {
            assert!(
                matches!(bus.insert(b, l, probe()), Err(Error::Overlap { .. })),
                "{b:#x}+{l:#x}"
            );
        }
        assert!(matches!(
            bus.insert(0x5000, 0, probe()),
            Err(Error::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, probe()),
            Err(Error::InvalidRange { .. })
        ));
        bus.insert(0x2000, 0x10, probe()).unwrap();
        bus.insert(0xfff, 1, probe()).unwrap();
        bus.insert(u64::MAX, 1, probe()).unwrap();
        assert_eq!(bus.ranges().len(), 4);
    }

    #[test]
    fn relocate_and_remove() {
        let bus = Bus::new(BusKind::Mmio);
        let p = probe();
        bus.insert(0x1000, 0x100, p.clone()).unwrap();
        bus.insert(0x3000, 0x100, probe()).unwrap();
        assert!(matches!(
            bus.relocate(0x1000, 0x2f80),
            Err(Error::Overlap { .. })
        ));
        assert!(matches!(
            bus.relocate(0x1000, u64::MAX - 0x10),
            Err(Error::InvalidRange { .. })
        ));
        assert!(matches!(bus.relocate(0x1234, 0), Err(Error::NotMapped(_))));
        // Failed relocations leave the bus unchanged.
        assert_eq!(bus.ranges(), vec![(0x1000, 0x100), (0x3000, 0x100)]);
        bus.relocate(0x1000, 0x8000).unwrap();
        let mut b = [0u8];
        assert!(!bus.read(0x1000, &mut b));
        assert!(bus.write(0x8001, &[7]));
        assert_eq!(p.lock().unwrap().last_write, Some((0x8000, 1, vec![7])));
        bus.remove(0x8000).unwrap();
        assert!(bus.remove(0x8000).is_err());
        assert!(!bus.write(0x8001, &[7]));
    }

    /// A device that maps another range on the same bus from inside an access: the bus
    /// must not hold its map lock while dispatching.
    struct Remapper(Arc<Bus>);
    impl BusDevice for Remapper {
        fn read(&mut self, _: u64, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: u64, _: &[u8]) {
            self.0.insert(0x9000, 1, probe()).unwrap();
        }
    }

    #[test]
    fn device_may_remap_its_own_bus() {
        let bus = Arc::new(Bus::new(BusKind::Mmio));
        bus.insert(0, 4, Arc::new(Mutex::new(Remapper(bus.clone()))))
            .unwrap();
        assert!(bus.write(0, &[1]));
        assert_eq!(bus.ranges(), vec![(0, 4), (0x9000, 1)]);
    }
}
