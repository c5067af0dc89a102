//! Fuzz the virtio PCI transport: a sequence of configuration-space and BAR accesses
//! (reads and writes of any width at any offset) against a virtio-blk device, with
//! guest memory filled from the input, so register garbage, status-machine abuse, queue
//! setup with hostile addresses and notifications all mix.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::pci::{MsiSignaller, PciDevice};
use vivarium_devices::virtio::block::{Block, BlockBackend};
use vivarium_devices::virtio::pci::{VIRTIO_BAR_SIZE, VirtioPciDevice};
use vm_memory::{Bytes, GuestAddress};

struct Zeros;
impl BlockBackend for Zeros {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        assert!(offset + buf.len() as u64 <= 1 << 16);
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        assert!(offset + buf.len() as u64 <= 1 << 16);
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn size(&self) -> u64 {
        1 << 16
    }
    fn read_only(&self) -> bool {
        false
    }
}

struct NoMsi;
impl MsiSignaller for NoMsi {
    fn signal_msi(&self, _address: u64, _data: u32) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap());
    let split = input.len() / 2;
    let (ops, fill) = input.split_at(split);
    let n = fill.len().min(0x1_0000);
    mem.write_slice(&fill[..n], GuestAddress(0)).unwrap();
    let Ok(mut dev) = VirtioPciDevice::new(
        Box::new(Block::new(Box::new(Zeros), b"fuzz")),
        mem,
        Arc::new(NoMsi),
    ) else {
        return;
    };
    // Each op: kind (1 byte), offset (2 bytes), width (1 byte), value (4 bytes).
    for op in ops.chunks_exact(8) {
        let kind = op[0] % 5;
        let offset = u16::from_le_bytes([op[1], op[2]]);
        let width = [1usize, 2, 4, 8, 3][usize::from(op[3] % 5)];
        let mut value = [0u8; 8];
        value[..4].copy_from_slice(&op[4..8]);
        let data = &value[..width];
        match kind {
            0 => dev.write_config(usize::from(offset) % 0x1000, &data[..width.min(4)]),
            1 => {
                let mut b = [0u8; 8];
                dev.read_config(usize::from(offset) % 0x1000, &mut b[..width]);
            }
            2 => dev.write_bar(0, u64::from(offset) % VIRTIO_BAR_SIZE, data),
            3 => {
                let mut b = [0u8; 8];
                dev.read_bar(0, u64::from(offset) % VIRTIO_BAR_SIZE, &mut b[..width]);
            }
            _ => {
                dev.notify_queue(usize::from(offset % 4));
            }
        }
    }
});
