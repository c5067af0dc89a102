//! Helpers shared by the fuzz targets: a cursor that turns the fuzzer's bytes into values,
//! guest memory with a hole, virtqueues configured from the input, register accesses of any
//! width, and interrupt lines that count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::{Queue, QueueT};
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::IrqLine;
use vivarium_devices::virtio::VirtioInterrupt;
use vm_memory::{Bytes, GuestAddress};

/// The first guest memory region: `(start, length)`.
pub const REGION0: (u64, usize) = (0, 0x1_0000);
/// The second region, after a hole of 64 KiB.
pub const REGION1: (u64, usize) = (0x2_0000, 0x1_0000);
/// Bytes of input a queue's configuration takes (see [`Cursor::queue`]).
pub const QUEUE_HEADER: usize = 29;

/// Reads values off the front of the fuzzer's input; once it is used up every value is zero
/// (so any input is a valid program).
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The rest of the input, taken.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// The next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// The next `N` bytes, zero-padded at the end of the input.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// The next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// An access width: 1, 2, 4 or 8 bytes mostly, sometimes 3 (odd widths must not panic).
    pub fn width(&mut self) -> usize {
        [1, 2, 4, 8, 1, 2, 4, 3][usize::from(self.u8() % 8)]
    }

    /// A guest address: usually inside or near the populated memory (some in the hole, some
    /// past the end); when the top bit is set, the raw (possibly huge) value.
    pub fn guest_address(&mut self) -> u64 {
        let raw = self.u64();
        if raw >> 63 == 1 { raw } else { raw % 0x3_2000 }
    }

    /// A virtqueue configured as a driver might (or might not): size, the three ring
    /// addresses, the next available index and event-index mode, from [`QUEUE_HEADER`]
    /// bytes. Sizes and addresses the queue refuses stay at their defaults, as the transport
    /// would refuse them. The queue is ready.
    pub fn queue(&mut self, max_size: u16) -> Queue {
        let mut h = Cursor::new(self.bytes(QUEUE_HEADER));
        let mut q = Queue::new(max_size).expect("a valid maximum queue size");
        let _ = q.try_set_size(h.u16());
        let (desc, avail, used) = (h.guest_address(), h.guest_address(), h.guest_address());
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_next_avail(h.u16());
        q.set_event_idx(h.u8() & 1 != 0);
        q.set_ready(true);
        q
    }
}

/// Guest memory of two regions with a hole between them ([`REGION0`], [`REGION1`]), filled
/// from `fill` (the rest stays zero).
pub fn guest_memory(fill: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .expect("guest memory");
    let n0 = fill.len().min(REGION0.1);
    mem.write_slice(&fill[..n0], GuestAddress(REGION0.0))
        .expect("inside region 0");
    let n1 = (fill.len() - n0).min(REGION1.1);
    mem.write_slice(&fill[n0..n0 + n1], GuestAddress(REGION1.0))
        .expect("inside region 1");
    mem
}

/// An interrupt line (and a virtio interrupt) that counts how often it was raised.
#[derive(Default)]
pub struct Counter(AtomicUsize);

impl Counter {
    /// A shared counter.
    pub fn shared() -> Arc<Counter> {
        Arc::new(Counter::default())
    }

    /// How often it was raised.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl IrqLine for Counter {
    fn trigger(&self) -> std::io::Result<()> {
        self.bump();
        Ok(())
    }
}

impl VirtioInterrupt for Counter {
    fn signal_queue(&self, _queue: usize) {
        self.bump();
    }
    fn signal_config(&self) {
        self.bump();
    }
}

impl vivarium_devices::i8042::ResetLine for Counter {
    fn reset(&self) {
        self.bump();
    }
}

impl vivarium_devices::acpi_pm::PowerOff for Counter {
    fn power_off(&self) {
        self.bump();
    }
}

/// One register access of a guest.
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// Read `len` bytes at `offset`.
    Read {
        /// Offset in the device's range.
        offset: u64,
        /// Bytes (1 to 8).
        len: usize,
    },
    /// Write the first `len` bytes of `value` at `offset`.
    Write {
        /// Offset in the device's range.
        offset: u64,
        /// Bytes (1 to 8).
        len: usize,
        /// The bytes, little endian.
        value: [u8; 8],
    },
}

impl Cursor<'_> {
    /// A read or write of any width at an offset below `range` (a power of two or not).
    pub fn access(&mut self, range: u64) -> Access {
        let kind = self.u8();
        let offset = u64::from(self.u32()) % range.max(1);
        let len = self.width();
        if kind & 1 == 0 {
            Access::Read { offset, len }
        } else {
            let mut value = [0u8; 8];
            let bytes = self.bytes(len);
            value[..bytes.len()].copy_from_slice(bytes);
            Access::Write { offset, len, value }
        }
    }
}

/// Performs `access` on `device` (registered at `base`); returns what a read gave.
pub fn perform(
    device: &mut dyn vivarium_devices::bus::BusDevice,
    base: u64,
    access: Access,
) -> [u8; 8] {
    let mut out = [0u8; 8];
    match access {
        Access::Read { offset, len } => device.read(base, offset, &mut out[..len]),
        Access::Write { offset, len, value } => device.write(base, offset, &value[..len]),
    }
    out
}
