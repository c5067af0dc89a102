//! Fuzz virtio-rng request processing: the input becomes the queue's configuration, how much
//! entropy the source gives before it fails, and guest memory (two regions with a hole).
//!
//! Oracles besides "no panic, no out-of-bounds host access, no hang": the device never hands
//! out more bytes than its source gave, nor more than its per-request limit per chain.
#![no_main]

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vivarium_devices::virtio::rng::{MAX_BYTES_PER_REQUEST, Rng};
use vivarium_devices_fuzz::{Counter, Cursor, guest_memory};

/// A source that gives `left` bytes of a pattern, then fails; counts what it gave.
struct Source {
    left: u64,
    given: Arc<AtomicU64>,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("entropy source exhausted"));
        }
        let n = buf.len().min(self.left as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = i as u8 ^ 0x5a;
        }
        self.left -= n as u64;
        self.given.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let mut queue = c.queue(256);
    let budget = u64::from(c.u32() % (1 << 21));
    let mem = guest_memory(c.rest());
    let given = Arc::new(AtomicU64::new(0));
    let mut rng = Rng::with_source(Box::new(Source {
        left: budget,
        given: given.clone(),
    }));
    let irq = Counter::default();
    let mut chains = 0u64;
    for _ in 0..2 {
        let before = queue.next_used();
        let result = rng.process_queue_raw(&mut queue, &mem, &irq);
        chains += u64::from(queue.next_used().wrapping_sub(before));
        if result.is_err() {
            break;
        }
    }
    assert!(rng.delivered() <= given.load(Ordering::Relaxed));
    assert!(rng.delivered() <= chains * MAX_BYTES_PER_REQUEST as u64);
});
