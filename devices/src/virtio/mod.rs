//! Virtio 1.x devices and their modern PCI transport.
//!
//! A device model implements [`VirtioDevice`]; [`pci::VirtioPciDevice`] turns it into a
//! PCI function. Queue processing runs when the driver notifies a queue (or when the
//! backend calls [`pci::VirtioPciDevice::notify_queue`]), in the calling thread.

pub mod block;
pub mod input;
pub mod net;
pub mod pci;
pub mod rng;
pub mod scsi;

use std::sync::Arc;

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::{Error, GuestMemoryMmap, Result};

/// Feature bit: the device conforms to virtio 1.0 or later (required by this transport).
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver for it.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready to drive the device.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 0x80;

/// Virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Virtio device ID of an entropy source.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Virtio device ID of a SCSI host adapter.
pub const VIRTIO_ID_SCSI: u32 = 8;

/// How a device tells the driver about used buffers and configuration changes. The
/// transport implements it (MSI-X or INTx for PCI).
pub trait VirtioInterrupt: Send + Sync {
    /// Buffers were added to the used ring of queue `queue`.
    fn signal_queue(&self, queue: usize);
    /// The device configuration (or the NEEDS_RESET status) changed.
    fn signal_config(&self);
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block, 4 = entropy, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue (powers of two); the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device feature bits (device-specific ones; the transport adds `VERSION_1` and the
    /// ring features it supports).
    fn features(&self) -> u64;
    /// Length of the device configuration space in bytes.
    fn config_len(&self) -> usize;
    /// Read the device configuration space; bytes past `config_len` read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write the device configuration space (ignored by default).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// PCI class, subclass and programming interface to present.
    fn pci_class(&self) -> (u8, u8, u8) {
        (0xff, 0, 0)
    }
    /// Start the device after the driver set DRIVER_OK. `queues` has one entry per queue
    /// (a queue the driver did not enable is not `ready()`), already validated against
    /// `memory`; `features` are the negotiated ones.
    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()>;
    /// The driver notified queue `index`: process its available buffers. Returns whether
    /// work remains (the per-call budget ran out; call again later). An error puts the
    /// device in DEVICE_NEEDS_RESET.
    fn process_queue(&mut self, index: usize) -> Result<bool>;
    /// Return to the pre-activation state, dropping the queues.
    fn reset(&mut self);
}

/// Why a descriptor chain was refused before looking at its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// More descriptors than the device allows.
    TooLong,
    /// The chain ends with a descriptor that still has NEXT set: a loop, a next index out
    /// of the table, or a descriptor outside guest memory.
    Truncated,
    /// No descriptors at all.
    Empty,
}

/// Collect at most `max` descriptors of `chain`, refusing chains that are longer, loop or
/// point outside the descriptor table. virtio-queue bounds the walk by the queue size
/// (or the indirect table size); this adds the device's own limit and detects the
/// truncation it does silently.
pub(crate) fn collect_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    max: usize,
) -> std::result::Result<Vec<Descriptor>, ChainError> {
    let mut descs = Vec::new();
    for d in chain {
        if descs.len() == max {
            return Err(ChainError::TooLong);
        }
        descs.push(d);
    }
    match descs.last() {
        None => Err(ChainError::Empty),
        Some(d) if d.has_next() => Err(ChainError::Truncated),
        Some(_) => Ok(descs),
    }
}

/// Most chains handled in one [`process_available`] call, per queue entry.
pub(crate) const CHAIN_BUDGET_PER_ENTRY: usize = 32;

/// Whether `[a.0, a.0 + a.1)` and `[b.0, b.0 + b.1)` intersect (computed without overflow).
fn ranges_overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    let a_end = u128::from(a.0) + u128::from(a.1);
    let b_end = u128::from(b.0) + u128::from(b.1);
    u128::from(a.0) < b_end && u128::from(b.0) < a_end
}

/// Refuse rings the device would write over the driver's own structures: a used ring that
/// overlaps the available ring or the descriptor table lets the device's completions
/// rewrite the driver's requests (found by fuzzing: a used ring on top of the available
/// ring keeps moving `avail.idx` ahead of the device, an endless loop).
pub(crate) fn check_ring_layout(queue: &Queue) -> Result<()> {
    let size = u64::from(queue.size());
    let desc = (queue.desc_table(), 16 * size);
    let avail = (queue.avail_ring(), 6 + 2 * size);
    let used = (queue.used_ring(), 6 + 8 * size);
    if ranges_overlap(used, avail) || ranges_overlap(used, desc) {
        return Err(Error::NeedsReset(
            "used ring overlaps the available ring or descriptor table".into(),
        ));
    }
    Ok(())
}

/// Pop the available chains of `queue`, hand each to `handle` (which returns the number
/// of bytes written to the chain's buffers), put it in the used ring and signal the driver
/// as the notification suppression rules require.
///
/// At most `CHAIN_BUDGET_PER_ENTRY * queue size` chains are handled per call, so a
/// guest cannot keep a vCPU thread in here forever; `Ok(true)` means work remains and the
/// caller should call again later (the driver is also asked to notify on its next
/// submission). Errors mean the queue itself is broken (rings outside memory or
/// overlapping, bogus indices): the device then needs a reset.
pub(crate) fn process_available<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: usize,
    interrupt: &dyn VirtioInterrupt,
    mut handle: F,
) -> Result<bool>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let broken = |e: virtio_queue::Error| Error::NeedsReset(format!("queue {index}: {e}"));
    if !queue.ready() {
        return Ok(false);
    }
    // Rings must lie in guest memory (the transport checks this at DRIVER_OK; checking
    // here keeps every caller safe): an unreadable available-ring entry would otherwise
    // look like "no chain" while `avail.idx` says there is one.
    if !queue.is_valid(mem) {
        return Err(Error::NeedsReset(format!(
            "queue {index}: rings outside guest memory"
        )));
    }
    check_ring_layout(queue)?;
    let budget = usize::from(queue.size()).saturating_mul(CHAIN_BUDGET_PER_ENTRY);
    let mut used = 0usize;
    let mut more = false;
    'outer: loop {
        if queue.event_idx_enabled() {
            queue.disable_notification(mem).map_err(broken)?;
        }
        let used_before = used;
        loop {
            if used == budget {
                more = true;
                break 'outer;
            }
            let chain = queue.iter(mem).map_err(broken)?.next();
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len).map_err(broken)?;
            used += 1;
        }
        if !queue.event_idx_enabled() || !queue.enable_notification(mem).map_err(broken)? {
            break;
        }
        if used == used_before {
            // The driver says there is work but no chain could be taken: never spin.
            return Err(Error::NeedsReset(format!(
                "queue {index}: available ring inconsistent"
            )));
        }
    }
    if more {
        tracing::debug!(index, used, "queue budget exhausted; work remains");
        if queue.event_idx_enabled() {
            // Ask for a notification on the driver's next submission: avail_event = the
            // current avail.idx (the driver kicks when it moves past it).
            let avail_idx = queue.avail_idx(mem, Ordering::Acquire).map_err(broken)?;
            let event = queue
                .used_ring()
                .checked_add(4 + 8 * u64::from(queue.size()))
                .ok_or_else(|| Error::NeedsReset("used ring address overflow".into()))?;
            mem.store(avail_idx.0.to_le(), GuestAddress(event), Ordering::Release)
                .map_err(|e| Error::NeedsReset(format!("queue {index}: {e}")))?;
        }
    }
    if used > 0 && queue.needs_notification(mem).map_err(broken)? {
        interrupt.signal_queue(index);
    }
    Ok(more)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the virtio tests: guest memory, a queue built by hand in it,
    //! and an interrupt that counts.

    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::{Bytes, GuestAddress};

    pub const MEM_SIZE: usize = 0x10_0000;
    pub const F_NEXT: u16 = 1;
    pub const F_WRITE: u16 = 2;
    pub const F_INDIRECT: u16 = 4;

    pub fn memory() -> Arc<GuestMemoryMmap> {
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
    }

    #[derive(Default)]
    pub struct CountingInterrupt {
        pub queue: AtomicUsize,
        pub config: AtomicUsize,
        pub queues: Mutex<Vec<usize>>,
    }

    impl VirtioInterrupt for CountingInterrupt {
        fn signal_queue(&self, queue: usize) {
            self.queue.fetch_add(1, Ordering::SeqCst);
            self.queues.lock().unwrap().push(queue);
        }
        fn signal_config(&self) {
            self.config.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A descriptor `(addr, len, flags, next)`.
    pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// Layout of the 16-entry test queue: descriptor table, available ring, used ring.
    /// (virtio-queue's mock places its used ring over the tail of its available ring,
    /// which the device now refuses, so the tests lay the rings out themselves.)
    pub const DESC_TABLE: u64 = 0x0;
    /// Available ring of the test queue.
    pub const AVAIL_RING: u64 = 0x100;
    /// Used ring of the test queue.
    pub const USED_RING: u64 = 0x200;

    /// Write `descs` at the start of the descriptor table of a 16-entry queue, publish one
    /// chain whose head is `head`, and return a ready queue (used ring cleared).
    pub fn queue_with(mem: &GuestMemoryMmap, descs: &[RawDescriptor], head: u16) -> Queue {
        for (i, d) in descs.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(DESC_TABLE + 16 * i as u64))
                .unwrap();
        }
        mem.write_slice(&[0u8; 0x100], GuestAddress(AVAIL_RING))
            .unwrap();
        mem.write_slice(&[0u8; 0x100], GuestAddress(USED_RING))
            .unwrap();
        mem.write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4))
            .unwrap();
        mem.write_obj(1u16.to_le(), GuestAddress(AVAIL_RING + 2))
            .unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        q.set_used_ring_address(Some(USED_RING as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// A queue with `descs` linked in order (NEXT set on all but the last).
    pub fn queue_chain(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> Queue {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, (a, l, f))| {
                let last = i + 1 == descs.len();
                let flags = if last { *f } else { *f | F_NEXT };
                desc(*a, *l, flags, (i + 1) as u16)
            })
            .collect();
        queue_with(mem, &raw, 0)
    }

    fn used_addr() -> GuestAddress {
        GuestAddress(USED_RING)
    }

    /// The `(id, len)` used-ring entry number `n` of the 16-entry queue at 0x0.
    pub fn used_entry(mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let base = used_addr().0 + 4 + 8 * u64::from(n);
        let id: u32 = mem.read_obj(GuestAddress(base)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(base + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// The used ring index of the 16-entry queue at 0x0.
    pub fn used_idx(mem: &GuestMemoryMmap) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(used_addr().0 + 2)).unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn collect_chain_limits() {
        let mem = memory();
        // A loop: 0 -> 1 -> 0.
        let mut q = queue_with(
            &mem,
            &[desc(0x1000, 1, F_NEXT, 1), desc(0x2000, 1, F_NEXT, 0)],
            0,
        );
        let chain = q.iter(&*mem).unwrap().next().unwrap();
        assert_eq!(collect_chain(chain, 100).err(), Some(ChainError::Truncated));
        // Next index beyond the table.
        let mut q = queue_with(&mem, &[desc(0x1000, 1, F_NEXT, 200)], 0);
        let chain = q.iter(&*mem).unwrap().next().unwrap();
        assert_eq!(collect_chain(chain, 100).err(), Some(ChainError::Truncated));
        // Head beyond the table.
        let mut q = queue_with(&mem, &[desc(0x1000, 1, 0, 0)], 99);
        let chain = q.iter(&*mem).unwrap().next().unwrap();
        assert_eq!(collect_chain(chain, 100).err(), Some(ChainError::Empty));
        // Longer than the device limit.
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0), (0x2000, 1, 0), (0x3000, 1, 0)]);
        let chain = q.iter(&*mem).unwrap().next().unwrap();
        assert_eq!(collect_chain(chain, 2).err(), Some(ChainError::TooLong));
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0), (0x2000, 1, 0)]);
        let chain = q.iter(&*mem).unwrap().next().unwrap();
        assert_eq!(collect_chain(chain, 2).unwrap().len(), 2);
    }

    #[test]
    fn broken_rings_need_reset() {
        let mem = memory();
        let irq = CountingInterrupt::default();
        // Available index far ahead of what the queue size allows.
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0)]);
        mem.write_obj(100u16, GuestAddress(AVAIL_RING + 2)).unwrap();
        let r = process_available(&mut q, &mem, 0, &irq, |_| 0);
        assert!(matches!(r, Err(Error::NeedsReset(_))));
        // A head index outside the table cannot be returned in the used ring.
        let mut q = queue_with(&mem, &[desc(0x1000, 1, 0, 0)], 999);
        let r = process_available(&mut q, &mem, 0, &irq, |_| 0);
        assert!(matches!(r, Err(Error::NeedsReset(_))));
        // Rings outside guest memory.
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(0xffff_0000), Some(0x10));
        q.set_avail_ring_address(Some(0xffff_0000), Some(0x20));
        q.set_used_ring_address(Some(0xffff_0000), Some(0x30));
        q.set_ready(true);
        let r = process_available(&mut q, &mem, 0, &irq, |_| 0);
        assert!(matches!(r, Err(Error::NeedsReset(_))));
        assert_eq!(
            irq.queue.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no interrupt for broken queues"
        );
    }

    /// The fuzzer's second hang: with EVENT_IDX, an available ring whose index is
    /// readable but whose entries lie past the end of memory looked like "more work, but
    /// no chain" forever.
    #[test]
    fn avail_ring_straddling_memory_end_is_refused() {
        let mem = memory();
        let irq = CountingInterrupt::default();
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0)]);
        q.set_event_idx(true);
        let at = MEM_SIZE as u64 - 4;
        mem.write_obj(5u16, GuestAddress(at + 2)).unwrap();
        q.set_avail_ring_address(Some(at as u32), Some(0));
        let r = process_available(&mut q, &mem, 0, &irq, |_| 0);
        assert!(matches!(r, Err(Error::NeedsReset(_))));
    }

    /// The fuzzer's hang: the used ring on top of the available ring makes every
    /// completion publish a new available entry.
    #[test]
    fn used_ring_over_avail_ring_is_refused() {
        let mem = memory();
        let irq = CountingInterrupt::default();
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0)]);
        let avail = q.avail_ring();
        q.set_used_ring_address(Some(avail as u32), Some(0));
        q.set_next_avail(u16::MAX);
        let r = process_available(&mut q, &mem, 0, &irq, |_| 0);
        assert!(matches!(r, Err(Error::NeedsReset(_))));
        // Used ring over the descriptor table too.
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0)]);
        let desc = q.desc_table();
        q.set_used_ring_address(Some(desc as u32 + 16), Some(0));
        assert!(process_available(&mut q, &mem, 0, &irq, |_| 0).is_err());
        // Touching but not overlapping is fine.
        assert!(!ranges_overlap((0, 16), (16, 16)));
        assert!(ranges_overlap((u64::MAX - 1, 16), (u64::MAX, 1)));
    }

    /// A driver that keeps the avail index ahead (here: the handler itself re-publishes
    /// the chain, as a guest's data buffer aimed at the avail ring could) is cut off after
    /// the budget, with a pending-work signal and avail_event set to the avail index.
    #[test]
    fn budget_bounds_one_call() {
        let mem = memory();
        let irq = CountingInterrupt::default();
        let mut q = queue_chain(&mem, &[(0x1000, 1, 0)]);
        q.set_event_idx(true);
        let avail = q.avail_ring();
        let mut handled = 0usize;
        let more = process_available(&mut q, &mem, 0, &irq, |_| {
            handled += 1;
            let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
            let slot = avail + 4 + 2 * u64::from(idx % 16);
            mem.write_obj(0u16, GuestAddress(slot)).unwrap();
            mem.write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
                .unwrap();
            0
        })
        .unwrap();
        assert!(more);
        assert_eq!(handled, 16 * CHAIN_BUDGET_PER_ENTRY);
        let avail_idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
        let event: u16 = mem
            .read_obj(GuestAddress(q.used_ring() + 4 + 8 * 16))
            .unwrap();
        assert_eq!(event, avail_idx);
        assert_eq!(irq.queue.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// A driver's view: a virtio-blk device behind the PCI root, driven only through the
/// buses (ECAM configuration, BAR MMIO, notify writes) with MSI-X completion.
#[cfg(test)]
mod end_to_end {
    use super::testutil::*;
    use crate::bus::{Bus, BusKind};
    use crate::pci::tests_support::RecordingSignaller;
    use crate::pci::*;
    use crate::virtio::block::{Block, RawFile, VIRTIO_BLK_T_IN};
    use crate::virtio::pci::VirtioPciDevice;
    use crate::virtio::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use vm_memory::{Bytes, GuestAddress};

    const ECAM: u64 = 0xe000_0000;

    fn cfg_read(mmio: &Bus, dev: u64, reg: u64, len: usize) -> u32 {
        let mut b = [0u8; 4];
        mmio.read(ECAM + (dev << 15) + reg, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn cfg_write(mmio: &Bus, dev: u64, reg: u64, data: &[u8]) {
        mmio.write(ECAM + (dev << 15) + reg, data);
    }

    #[test]
    fn blk_read_through_pci() {
        let mem = memory();
        let mut img = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..8192u32).map(|i| (i % 241) as u8).collect();
        img.write_all(&content).unwrap();
        let blk = Block::new(Box::new(RawFile::open(img.path(), true).unwrap()), b"e2e");
        let msis = Arc::new(RecordingSignaller::default());
        let dev = VirtioPciDevice::new(Box::new(blk), mem.clone(), msis.clone()).unwrap();
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let windows = PciWindows {
            mem32: (0xc000_0000, 0x2000_0000),
            mem64: (0x80_0000_0000, 0x10_0000_0000),
            io: (0xc000, 0x1000),
        };
        let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), pio, windows)));
        mmio.insert(
            ECAM,
            ECAM_BUS_SIZE,
            Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
        )
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let slot = root.lock().unwrap().add_device(dev.clone()).unwrap();
        let s = u64::from(slot);
        assert_eq!(cfg_read(&mmio, s, 0, 4), 0x1042_1af4);
        // The firmware-assigned 64-bit BAR 0.
        let bar = u64::from(cfg_read(&mmio, s, 0x10, 4) & !0xf)
            | (u64::from(cfg_read(&mmio, s, 0x14, 4)) << 32);
        assert_eq!(bar, windows.mem64.0);
        cfg_write(
            &mmio,
            s,
            4,
            &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        // Walk the capability list to MSI-X and enable it.
        let mut p = u64::from(cfg_read(&mmio, s, 0x34, 1));
        while cfg_read(&mmio, s, p, 1) != 0x11 {
            p = u64::from(cfg_read(&mmio, s, p + 1, 1));
        }
        cfg_write(&mmio, s, p + 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
        let w = |off: u64, data: &[u8]| assert!(mmio.write(bar + off, data));
        // MSI-X vector 0: address/data, unmasked.
        w(0x4000, &0xfee0_0000u32.to_le_bytes());
        w(0x4008, &0x99u32.to_le_bytes());
        w(0x400c, &0u32.to_le_bytes());
        // Driver init.
        w(0x14, &[STATUS_ACKNOWLEDGE]);
        w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        w(0x08, &1u32.to_le_bytes());
        w(0x0c, &1u32.to_le_bytes());
        w(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK],
        );
        w(0x16, &0u16.to_le_bytes());
        w(0x18, &16u16.to_le_bytes());
        w(0x1a, &0u16.to_le_bytes());
        // Rings where the 16-entry mock queue puts them, so testutil can build chains.
        let q = queue_chain(
            &mem,
            &[
                (0x4_0000, 16, 0),
                (0x5_0000, 512, F_WRITE),
                (0x6_0000, 1, F_WRITE),
            ],
        );
        use virtio_queue::QueueT;
        for (off, addr) in [
            (0x20, q.desc_table()),
            (0x28, q.avail_ring()),
            (0x30, q.used_ring()),
        ] {
            w(off, &(addr as u32).to_le_bytes());
            w(off + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        w(0x1c, &1u16.to_le_bytes());
        w(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK],
        );
        let mut st = [0u8];
        mmio.read(bar + 0x14, &mut st);
        assert_eq!(st[0] & STATUS_DRIVER_OK, STATUS_DRIVER_OK);
        // Request: read sector 2.
        mem.write_obj(VIRTIO_BLK_T_IN.to_le(), GuestAddress(0x4_0000))
            .unwrap();
        mem.write_obj(2u64.to_le(), GuestAddress(0x4_0008)).unwrap();
        let notify = dev.lock().unwrap().queue_notify_address(0).unwrap();
        assert!(mmio.write(notify, &0u16.to_le_bytes()));
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x5_0000)).unwrap();
        assert_eq!(got, content[1024..1536]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x6_0000)).unwrap(), 0);
        assert_eq!(used_entry(&mem, 0), (0, 513));
        assert_eq!(*msis.0.lock().unwrap(), vec![(0xfee0_0000, 0x99)]);
        // The guest moves the BAR: the notify address follows.
        cfg_write(&mmio, s, 4, &0u16.to_le_bytes());
        cfg_write(&mmio, s, 0x10, &0u32.to_le_bytes());
        cfg_write(&mmio, s, 0x14, &0x90u32.to_le_bytes());
        cfg_write(
            &mmio,
            s,
            4,
            &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes(),
        );
        let moved = dev.lock().unwrap().queue_notify_address(0).unwrap();
        assert_eq!(moved, 0x90_0000_0000 + 0x3000);
        let mut b = [0u8; 2];
        assert!(!mmio.read(bar + 0x12, &mut b));
        assert!(mmio.read(0x90_0000_0000 + 0x12, &mut b));
        assert_eq!(u16::from_le_bytes(b), 1);
    }
}
