//! virtio-rng: fills device-writable buffers with bytes from the host's randomness.
//!
//! The source is the host's `/dev/urandom` (the kernel CSPRNG on Linux and macOS), read
//! through `std`. Device-readable descriptors in a chain are skipped; at most
//! [`MAX_BYTES_PER_REQUEST`] bytes are produced per chain so a guest cannot make one
//! notification burn unbounded host time.

use std::fs::File;
use std::io::{self, Read};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestMemoryBackend};

use super::{VIRTIO_ID_RNG, VirtioDevice, VirtioInterrupt, collect_chain};
use crate::{Error, GuestMemoryMmap, Result};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written into one chain.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// Most descriptors in one chain.
const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;

struct Active {
    memory: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio entropy device.
pub struct Rng {
    source: Box<dyn Read + Send>,
    active: Option<Active>,
    delivered: u64,
}

impl std::fmt::Debug for Rng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rng")
            .field("active", &self.active.is_some())
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl Rng {
    /// An entropy device reading the host's `/dev/urandom`.
    pub fn new() -> io::Result<Self> {
        Ok(Self::with_source(Box::new(File::open("/dev/urandom")?)))
    }

    /// An entropy device reading `source` (for tests and fuzzing).
    pub fn with_source(source: Box<dyn Read + Send>) -> Self {
        Rng {
            source,
            active: None,
            delivered: 0,
        }
    }

    /// Bytes handed to the guest so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let descs = match collect_chain(chain, MAX_DESCRIPTORS) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(?e, "virtio-rng: malformed chain dropped");
                return 0;
            }
        };
        let mut buf = [0u8; 4096];
        let mut written = 0usize;
        for d in descs.iter().filter(|d| d.is_write_only()) {
            let len = (d.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
            if len == 0 || !mem.check_range(d.addr(), len) {
                // Outside guest memory: stop here, report what was written.
                if len != 0 {
                    tracing::debug!("virtio-rng: buffer outside guest memory");
                }
                break;
            }
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len());
                if let Err(e) = self.source.read_exact(&mut buf[..n]) {
                    tracing::warn!("virtio-rng: entropy source failed: {e}");
                    return written as u32;
                }
                // In range: checked above for the whole buffer.
                let Some(addr) = d.addr().checked_add(done as u64) else {
                    return written as u32;
                };
                if mem.write_slice(&buf[..n], addr).is_err() {
                    return written as u32;
                }
                done += n;
                written += n;
            }
        }
        self.delivered += written as u64;
        // At most MAX_BYTES_PER_REQUEST.
        written as u32
    }

    /// Process the request queue once (used by tests and fuzzing without a transport).
    /// Returns whether work remains.
    #[doc(hidden)]
    pub fn process_queue_raw(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<bool> {
        super::process_available(queue, mem, 0, interrupt, |chain| {
            self.handle_chain(mem, chain)
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()> {
        let queue = queues
            .into_iter()
            .next()
            .ok_or_else(|| Error::Activation("virtio-rng needs its request queue".into()))?;
        self.active = Some(Active {
            memory,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<bool> {
        if index != 0 {
            return Ok(false);
        }
        let Some(mut active) = self.active.take() else {
            return Ok(false);
        };
        let mem = active.memory.clone();
        let r = self.process_queue_raw(&mut active.queue, &mem, &*active.interrupt);
        self.active = Some(active);
        r
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::*;
    use std::sync::atomic::Ordering;
    use vm_memory::GuestAddress;

    fn run(dev: &mut Rng, mem: &GuestMemoryMmap, mut q: Queue) -> u32 {
        let irq = CountingInterrupt::default();
        dev.process_queue_raw(&mut q, mem, &irq).unwrap();
        assert_eq!(used_idx(mem), 1);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
        used_entry(mem, 0).1
    }

    #[test]
    fn fills_writable_buffers_from_urandom() {
        let mut dev = Rng::new().unwrap();
        let mem = memory();
        mem.write_slice(&[0u8; 4096], GuestAddress(0x8000)).unwrap();
        mem.write_slice(&[0u8; 64], GuestAddress(0x9000)).unwrap();
        let q = queue_chain(
            &mem,
            &[
                (0x8000, 4096, F_WRITE),
                (0xa000, 32, 0),
                (0x9000, 64, F_WRITE),
            ],
        );
        assert_eq!(run(&mut dev, &mem, q), 4160);
        let mut got = vec![0u8; 4096];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        // 4096 zero bytes from a CSPRNG: practically impossible.
        assert!(got.iter().filter(|b| **b == 0).count() < 200);
        assert_eq!(dev.delivered(), 4160);
    }

    #[test]
    fn bounded_and_memory_checked() {
        let mut dev = Rng::with_source(Box::new(std::io::repeat(0x5a)));
        let mem = memory();
        // Bigger than the per-request limit: capped.
        let q = queue_chain(&mem, &[(0x1_0000, 0x2_0000, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), MAX_BYTES_PER_REQUEST as u32);
        // Past the end of guest memory: nothing written.
        let q = queue_chain(&mem, &[(MEM_SIZE as u64 - 16, 32, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), 0);
        let q = queue_chain(&mem, &[(u64::MAX - 8, 32, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), 0);
        // A loop is dropped.
        let q = queue_with(&mem, &[desc(0x1_0000, 16, F_WRITE | F_NEXT, 0)], 0);
        assert_eq!(run(&mut dev, &mem, q), 0);
        // Failing entropy source: nothing claimed.
        struct Fail;
        impl Read for Fail {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("no entropy"))
            }
        }
        let mut dev = Rng::with_source(Box::new(Fail));
        let q = queue_chain(&mem, &[(0x1_0000, 16, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), 0);
    }
}
