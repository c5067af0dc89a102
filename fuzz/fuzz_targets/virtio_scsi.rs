//! Fuzz virtio-scsi with its CD-ROM: the input becomes guest memory (two regions with a
//! hole between them), the configuration of the three queues (control, event, request),
//! the negotiated features and host-side medium changes between passes; the device then
//! processes whatever the "driver" put in the rings.
//!
//! Oracles besides "no panic, no out-of-bounds host access, no hang": the image file is
//! never modified (the drive is read-only).
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::scsi::cdrom::Cdrom;
use vivarium_devices::virtio::VirtioInterrupt;
use vivarium_devices::virtio::scsi::VirtioScsi;
use vm_memory::{Bytes, GuestAddress};

const REGION0: (u64, usize) = (0, 0x1_0000);
const REGION1: (u64, usize) = (0x2_0000, 0x1_0000);
/// Per queue: size (2), three addresses (3 x 8), next_avail (2), event_idx (1).
const QUEUE_HEADER: usize = 29;
const HEADER: usize = 3 * QUEUE_HEADER + 2;
const IMAGE_SECTORS: usize = 40;

struct Irq;
impl VirtioInterrupt for Irq {
    fn signal_queue(&self, _queue: usize) {}
    fn signal_config(&self) {}
}

/// The image, written once per process; its expected contents.
fn image() -> &'static (tempfile::NamedTempFile, Vec<u8>) {
    static IMAGE: OnceLock<(tempfile::NamedTempFile, Vec<u8>)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        // A partial trailing sector: reads past the file's end must pad, never fail.
        let content: Vec<u8> = (0..IMAGE_SECTORS * 2048 - 100)
            .map(|i| (i % 251) as u8)
            .collect();
        f.write_all(&content).unwrap();
        f.flush().unwrap();
        (f, content)
    })
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn queue(h: &[u8]) -> Queue {
    let addr = |o: usize| {
        let raw = u64_at(h, o);
        if raw >> 63 == 1 { raw } else { raw % 0x3_2000 }
    };
    let mut q = Queue::new(128).unwrap();
    let _ = q.try_set_size(u16::from_le_bytes([h[0], h[1]]));
    for (o, set) in [
        (
            2,
            Queue::set_desc_table_address as fn(&mut Queue, Option<u32>, Option<u32>),
        ),
        (10, Queue::set_avail_ring_address),
        (18, Queue::set_used_ring_address),
    ] {
        let a = addr(o);
        set(&mut q, Some(a as u32), Some((a >> 32) as u32));
    }
    q.set_next_avail(u16::from_le_bytes([h[26], h[27]]));
    q.set_event_idx(h[28] & 1 != 0);
    q.set_ready(h[28] & 2 == 0);
    q
}

fuzz_target!(|input: &[u8]| {
    if input.len() < HEADER {
        return;
    }
    let (hdr, body) = input.split_at(HEADER);
    let mut queues: Vec<Queue> = (0..3)
        .map(|i| queue(&hdr[i * QUEUE_HEADER..(i + 1) * QUEUE_HEADER]))
        .collect();
    let features = hdr[3 * QUEUE_HEADER];
    let changes = hdr[3 * QUEUE_HEADER + 1];

    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .unwrap();
    let n0 = body.len().min(REGION0.1);
    mem.write_slice(&body[..n0], GuestAddress(REGION0.0))
        .unwrap();
    let n1 = (body.len() - n0).min(REGION1.1);
    mem.write_slice(&body[n0..n0 + n1], GuestAddress(REGION1.0))
        .unwrap();

    let (file, content) = image();
    let cd = Cdrom::new("fuzz", Some(file.path())).unwrap();
    let control = cd.control();
    let mut dev = VirtioScsi::new(cd);
    dev.set_driver_features(u64::from(features & 0x0f));
    let irq = Irq;
    // Two rounds over the queues (request, control, event), with host-side medium
    // changes chosen by the input in between.
    'rounds: for round in 0..2 {
        match (changes >> (2 * round)) & 3 {
            1 => control.force_eject(),
            2 => {
                let _ = control.insert(file.path());
            }
            3 => {
                let _ = control.eject();
            }
            _ => {}
        }
        for index in [2, 0, 1] {
            if dev
                .process_queue_raw(index, &mut queues, &mem, &irq)
                .is_err()
            {
                break 'rounds;
            }
        }
    }
    assert!(
        std::fs::read(file.path()).unwrap() == *content,
        "the image was modified"
    );
});
