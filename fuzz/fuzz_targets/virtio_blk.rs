//! Fuzz virtio-blk request processing: the input becomes guest memory (two regions with a
//! hole between them) and the queue configuration; the device then processes whatever the
//! "driver" put in the rings.
//!
//! Oracles besides "no panic, no out-of-bounds host access": the backend asserts that the
//! device never reads or writes outside the disk's capacity, and a read-only disk must be
//! unchanged afterwards.
#![no_main]

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::virtio::VirtioInterrupt;
use vivarium_devices::virtio::block::{Block, BlockBackend};
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: usize = 64 * 512 + 100; // a partial trailing sector is never addressable
const REGION0: (u64, usize) = (0, 0x1_0000);
const REGION1: (u64, usize) = (0x2_0000, 0x1_0000);
const HEADER: usize = 32;

struct MemDisk {
    data: Mutex<Vec<u8>>,
    read_only: bool,
}

impl MemDisk {
    fn range(&self, offset: u64, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(offset).expect("offset fits usize");
        let end = start.checked_add(len).expect("end overflows");
        // The device must have checked the capacity (whole sectors only).
        assert!(
            end <= DISK_SIZE / 512 * 512,
            "access beyond capacity: {start}..{end}"
        );
        start..end
    }
}

impl BlockBackend for MemDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let r = self.range(offset, buf.len());
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        assert!(!self.read_only, "write to a read-only backend");
        let r = self.range(offset, buf.len());
        self.data.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        DISK_SIZE as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Shares the disk with the device so the harness can inspect it afterwards.
struct Shared(std::sync::Arc<MemDisk>);
impl BlockBackend for Shared {
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

#[derive(Default)]
struct Irq(AtomicUsize);
impl VirtioInterrupt for Irq {
    fn signal_queue(&self, _queue: usize) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn signal_config(&self) {}
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fuzz_target!(|input: &[u8]| {
    if input.len() < HEADER {
        return;
    }
    let (hdr, body) = input.split_at(HEADER);
    // Header: queue size, flags, then the three ring addresses. Addresses are taken
    // modulo a bit more than the populated space so most land in memory, some in the
    // hole and some past the end; the top bit selects a raw (possibly huge) address.
    let size = u16::from_le_bytes([hdr[0], hdr[1]]);
    let flags = hdr[2];
    let addr = |o: usize| {
        let raw = u64_at(hdr, o);
        if raw >> 63 == 1 { raw } else { raw % 0x3_2000 }
    };
    let (desc, avail, used) = (addr(3), addr(11), addr(19));
    let next_avail = u16::from_le_bytes([hdr[27], hdr[28]]);

    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .unwrap();
    // Fill the regions from the body (the rest stays zero).
    let n0 = body.len().min(REGION0.1);
    mem.write_slice(&body[..n0], GuestAddress(REGION0.0))
        .unwrap();
    let n1 = (body.len() - n0).min(REGION1.1);
    mem.write_slice(&body[n0..n0 + n1], GuestAddress(REGION1.0))
        .unwrap();

    let mut queue = Queue::new(256).unwrap();
    // Invalid sizes and misaligned addresses are refused by the queue, as the transport
    // would refuse them.
    let _ = queue.try_set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_event_idx(flags & 1 != 0);
    queue.set_next_avail(next_avail);
    queue.set_ready(true);

    let read_only = flags & 2 != 0;
    let disk: Vec<u8> = (0..DISK_SIZE).map(|i| (i % 251) as u8).collect();
    let backend = std::sync::Arc::new(MemDisk {
        data: Mutex::new(disk.clone()),
        read_only,
    });
    let mut dev = Block::new(Box::new(Shared(backend.clone())), b"fuzz");
    let irq = Irq::default();
    // Process twice: the second pass sees the state the first one left.
    for _ in 0..2 {
        if dev.process_queue_raw(&mut queue, &mem, &irq).is_err() {
            break;
        }
    }
    if read_only {
        assert!(
            *backend.data.lock().unwrap() == disk,
            "read-only disk modified"
        );
    }
});
