//! virtio-net: an Ethernet card whose other end is a stream socket carrying one frame after
//! another, each behind its length as a 4-byte big-endian number. That is the protocol of
//! `passt` (user-mode networking without root: DHCP, NAT to the host's sockets, port
//! forwarding) and of QEMU's `-netdev stream`; the backend connects the socket, this model
//! never knows what is at the other end.
//!
//! Frames from the guest (transmit queue 1) are written to the socket in the vCPU thread
//! that notified the queue. Frames from the socket are read by a thread of this device and
//! placed in the guest's receive buffers (queue 0) as they come; when the guest has no free
//! buffer the thread waits for it to post some (its notification of queue 0 wakes the
//! thread), and reading stops meanwhile, so the socket's buffer, not this process, holds
//! the backlog. While the driver is not running (before DRIVER_OK, after a reset) received
//! frames are dropped, like a card whose link is down.
//!
//! No offloads are offered (no checksum or segmentation features): frames are plain
//! Ethernet frames of at most [`MAX_FRAME`] bytes, the header in front of each is all zeros
//! (with `num_buffers` = 1), and the peer must keep to the guest's MTU (passt: `--mtu`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{VirtioDevice, VirtioInterrupt, collect_chain, process_available};
use crate::{Error, GuestMemoryMmap, Result};

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
/// Feature bit: the device has a MAC address in its configuration.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// Feature bit: the configuration has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// Link status: up.
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// The header in front of every frame when VERSION_1 is negotiated (`virtio_net_hdr` with
/// `num_buffers`).
pub const NET_HDR_LEN: usize = 12;
/// Largest Ethernet frame carried: 1500 bytes of payload, the Ethernet header and a VLAN
/// tag (no frame check sequence).
pub const MAX_FRAME: usize = 1518;
/// Smallest frame accepted: an Ethernet header.
const MIN_FRAME: usize = 14;
/// The largest length word the stream may carry before it is taken as broken (passt's own
/// limit is 65535 plus headers).
const MAX_STREAM_FRAME: usize = 65_550;
/// Entries in each queue.
const QUEUE_SIZE: u16 = 256;
/// Most descriptors in one chain.
const MAX_CHAIN: usize = 64;
/// How often the receive thread looks whether the device is going away.
const POLL: Duration = Duration::from_millis(200);

/// Index of the receive queue.
const RX: usize = 0;
/// Index of the transmit queue.
const TX: usize = 1;

/// Counters of what the card did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames from the stream dropped: link down, too big for the guest's buffer, runts.
    pub rx_dropped: u64,
    /// Frames the guest sent that went to the stream.
    pub tx_frames: u64,
    /// Frames from the guest dropped: malformed chains, too big, stream gone.
    pub tx_dropped: u64,
}

/// The receive side, shared with the receive thread.
struct RxShared {
    state: Mutex<RxState>,
    /// Wakes the receive thread: the guest posted buffers, or the device goes away.
    wake: Condvar,
}

struct RxState {
    active: Option<Active>,
    stopping: bool,
    stats: NetStats,
}

/// The running queue of one direction.
struct Active {
    memory: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl RxShared {
    fn lock(&self) -> MutexGuard<'_, RxState> {
        crate::lock(&self.state)
    }
}

/// A virtio network card connected to a frame stream.
pub struct Net {
    mac: [u8; 6],
    rx: Arc<RxShared>,
    tx: Option<Active>,
    /// The stream's write half (the receive thread has the read half).
    stream: Option<UnixStream>,
    tx_stats: NetStats,
    receiver: Option<JoinHandle<()>>,
}

impl Net {
    /// A card with address `mac` whose frames travel over `stream` (length-prefixed, see
    /// the module documentation). Starts the receive thread.
    pub fn new(mac: [u8; 6], stream: UnixStream) -> Result<Self> {
        let reader = stream
            .try_clone()
            .map_err(|e| Error::Activation(format!("cannot share the network stream: {e}")))?;
        reader
            .set_read_timeout(Some(POLL))
            .map_err(|e| Error::Activation(format!("network stream: {e}")))?;
        let rx = Arc::new(RxShared {
            state: Mutex::new(RxState {
                active: None,
                stopping: false,
                stats: NetStats::default(),
            }),
            wake: Condvar::new(),
        });
        let shared = rx.clone();
        let receiver = std::thread::Builder::new()
            .name("virtio-net-rx".into())
            .spawn(move || {
                vivarium_threads::started(vivarium_threads::ThreadKind::Device);
                receive_loop(&shared, reader)
            })
            .map_err(|e| Error::Activation(format!("cannot start the receive thread: {e}")))?;
        Ok(Net {
            mac,
            rx,
            tx: None,
            stream: Some(stream),
            tx_stats: NetStats::default(),
            receiver: Some(receiver),
        })
    }

    /// What the card has done so far.
    pub fn stats(&self) -> NetStats {
        let rx = self.rx.lock().stats;
        NetStats {
            tx_frames: self.tx_stats.tx_frames,
            tx_dropped: self.tx_stats.tx_dropped,
            ..rx
        }
    }

    /// Sends the frames the guest queued for transmission.
    fn transmit(&mut self) -> Result<bool> {
        let Some(active) = self.tx.as_mut() else {
            return Ok(false);
        };
        let memory = active.memory.clone();
        let stream = &mut self.stream;
        let stats = &mut self.tx_stats;
        process_available(
            &mut active.queue,
            &memory,
            TX,
            &*active.interrupt,
            |chain| {
                match frame_of(&memory, chain) {
                    Some(frame) => match stream.as_mut().map(|s| send_frame(s, &frame)) {
                        Some(Ok(())) => stats.tx_frames += 1,
                        Some(Err(e)) => {
                            tracing::warn!("virtio-net: the network stream is gone: {e}");
                            *stream = None;
                            stats.tx_dropped += 1;
                        }
                        None => stats.tx_dropped += 1,
                    },
                    None => stats.tx_dropped += 1,
                }
                // Nothing is written into a transmit buffer.
                0
            },
        )
    }
}

/// The frame in a transmit chain (after the header), or `None` for a malformed chain.
fn frame_of(memory: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Vec<u8>> {
    let descriptors = collect_chain(chain, MAX_CHAIN).ok()?;
    let mut bytes = Vec::new();
    for d in &descriptors {
        if d.is_write_only() {
            return None;
        }
        let len = d.len() as usize;
        if bytes.len() + len > NET_HDR_LEN + MAX_STREAM_FRAME {
            return None;
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        memory.read_slice(&mut bytes[start..], d.addr()).ok()?;
    }
    if bytes.len() < NET_HDR_LEN + MIN_FRAME {
        return None;
    }
    Some(bytes.split_off(NET_HDR_LEN))
}

/// Writes one frame behind its length.
fn send_frame(stream: &mut UnixStream, frame: &[u8]) -> std::io::Result<()> {
    let mut message = Vec::with_capacity(4 + frame.len());
    message.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    message.extend_from_slice(frame);
    stream.write_all(&message)
}

/// Reads length-prefixed frames from a stream with a read timeout, keeping a partial frame
/// across timeouts so that the stream never loses its framing.
struct FrameReader<R> {
    stream: R,
    buffer: Vec<u8>,
}

/// What one attempt to read a frame gave.
enum Received {
    Frame(Vec<u8>),
    /// Nothing complete yet (timeout).
    Nothing,
    /// The stream ended or broke.
    Closed(String),
}

impl<R: Read> FrameReader<R> {
    fn next(&mut self) -> Received {
        loop {
            if self.buffer.len() >= 4 {
                let len =
                    u32::from_be_bytes(self.buffer[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_STREAM_FRAME {
                    return Received::Closed(format!("a frame of {len} bytes announced"));
                }
                if self.buffer.len() >= 4 + len {
                    let frame = self.buffer[4..4 + len].to_vec();
                    self.buffer.drain(..4 + len);
                    return Received::Frame(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Received::Closed("the peer closed the stream".into()),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Received::Nothing;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Received::Closed(e.to_string()),
            }
        }
    }
}

/// The receive thread: frames from the stream into the guest's receive buffers.
fn receive_loop(shared: &RxShared, stream: UnixStream) {
    let mut reader = FrameReader {
        stream,
        buffer: Vec::new(),
    };
    loop {
        let frame = match reader.next() {
            Received::Frame(frame) => frame,
            Received::Nothing => {
                if shared.lock().stopping {
                    return;
                }
                continue;
            }
            Received::Closed(why) => {
                if !shared.lock().stopping {
                    tracing::warn!("virtio-net: network stream ended: {why}");
                }
                return;
            }
        };
        let mut state = shared.lock();
        loop {
            if state.stopping {
                return;
            }
            let Some(active) = state.active.as_mut() else {
                // Link down: the driver is not running.
                state.stats.rx_dropped += 1;
                break;
            };
            match deliver(active, &frame) {
                Delivery::Delivered => {
                    state.stats.rx_frames += 1;
                    break;
                }
                Delivery::Dropped => {
                    state.stats.rx_dropped += 1;
                    break;
                }
                Delivery::NoBuffer | Delivery::Retry => {
                    // Wait for the guest to post buffers (or for the device to go).
                    state = shared
                        .wake
                        .wait_timeout(state, POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                Delivery::Broken(why) => {
                    tracing::warn!("virtio-net: receive queue broken ({why}); link down");
                    state.active = None;
                    state.stats.rx_dropped += 1;
                    break;
                }
            }
        }
    }
}

/// Runs the receive path in the calling thread, without a device or its thread: delivers the
/// frames of `stream` (length-prefixed, as the peer sends them) into the guest's receive
/// queue `queue` until the stream ends or breaks, the queue is broken, or the guest has no
/// free buffer, and returns what happened. The receive thread of [`Net`] runs the same
/// framing and delivery code; this entry point lets the fuzz target feed it a hostile stream
/// and hostile rings deterministically.
pub fn receive_stream(
    stream: impl Read,
    memory: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> NetStats {
    let mut reader = FrameReader {
        stream,
        buffer: Vec::new(),
    };
    let mut active = Active {
        memory,
        queue,
        interrupt,
    };
    let mut stats = NetStats::default();
    while let Received::Frame(frame) = reader.next() {
        match deliver(&mut active, &frame) {
            Delivery::Delivered => stats.rx_frames += 1,
            Delivery::Dropped => stats.rx_dropped += 1,
            // No buffer (the thread would wait for one) or a broken queue: stop here.
            Delivery::NoBuffer | Delivery::Retry | Delivery::Broken(_) => {
                stats.rx_dropped += 1;
                break;
            }
        }
    }
    stats
}

enum Delivery {
    Delivered,
    /// The frame cannot be delivered (a runt, or larger than the guest's buffer).
    Dropped,
    NoBuffer,
    /// No buffer, but the driver added some meanwhile.
    Retry,
    Broken(String),
}

/// Places `frame` into the next receive buffer of the guest.
fn deliver(active: &mut Active, frame: &[u8]) -> Delivery {
    match deliver_once(active, frame) {
        // Buffers arrived while notifications were being turned on: one more look.
        Delivery::Retry => match deliver_once(active, frame) {
            Delivery::Retry => Delivery::NoBuffer,
            outcome => outcome,
        },
        outcome => outcome,
    }
}

fn deliver_once(active: &mut Active, frame: &[u8]) -> Delivery {
    if frame.len() < MIN_FRAME || frame.len() > MAX_STREAM_FRAME {
        return Delivery::Dropped;
    }
    let memory = active.memory.clone();
    let mem = &*memory;
    let queue = &mut active.queue;
    if !queue.is_valid(mem) || super::check_ring_layout(queue).is_err() {
        return Delivery::Broken("rings outside memory or overlapping".into());
    }
    let chain = match queue.iter(mem) {
        Ok(mut iter) => iter.next(),
        Err(e) => return Delivery::Broken(e.to_string()),
    };
    let Some(chain) = chain else {
        // Ask the driver to notify when it adds buffers; if some arrived meanwhile, retry.
        match queue.enable_notification(mem) {
            Ok(true) => return Delivery::Retry,
            Ok(false) => return Delivery::NoBuffer,
            Err(e) => return Delivery::Broken(e.to_string()),
        }
    };
    let head = chain.head_index();
    let Ok(descriptors) = collect_chain(chain, MAX_CHAIN) else {
        // A malformed chain goes back to the driver unused.
        return finish(active, head, 0, Delivery::Dropped);
    };
    let capacity: u64 = descriptors
        .iter()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum();
    if descriptors.iter().any(|d| !d.is_write_only())
        || capacity < (NET_HDR_LEN + frame.len()) as u64
    {
        if capacity >= (NET_HDR_LEN + MAX_FRAME) as u64 {
            // The buffer is fine, the frame too big for any buffer of the guest: keep the
            // buffer for the next frame.
            active.queue.go_to_previous_position();
            return Delivery::Dropped;
        }
        return finish(active, head, 0, Delivery::Dropped);
    }
    let mut header = [0u8; NET_HDR_LEN];
    header[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    let mut source = header.iter().chain(frame).copied();
    let mut written = 0u32;
    for d in &descriptors {
        let chunk: Vec<u8> = source.by_ref().take(d.len() as usize).collect();
        if chunk.is_empty() {
            break;
        }
        if mem.write_slice(&chunk, d.addr()).is_err() {
            return finish(active, head, 0, Delivery::Dropped);
        }
        written += chunk.len() as u32;
    }
    finish(active, head, written, Delivery::Delivered)
}

/// Returns the chain `head` to the driver with `len` bytes written, and interrupts it when
/// the notification rules ask for it.
fn finish(active: &mut Active, head: u16, len: u32, outcome: Delivery) -> Delivery {
    let mem = &*active.memory;
    if let Err(e) = active.queue.add_used(mem, head, len) {
        return Delivery::Broken(e.to_string());
    }
    match active.queue.needs_notification(mem) {
        Ok(true) => active.interrupt.signal_queue(RX),
        Ok(false) => {}
        Err(e) => return Delivery::Broken(e.to_string()),
    }
    outcome
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_NET_F_MAC) | (1 << VIRTIO_NET_F_STATUS)
    }

    fn config_len(&self) -> usize {
        8
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config { u8 mac[6]; le16 status; }
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&self.mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Network controller, Ethernet.
        (0x02, 0x00, 0x00)
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()> {
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(Error::Activation(
                "virtio-net needs its receive and transmit queues".into(),
            ));
        };
        self.tx = Some(Active {
            memory: memory.clone(),
            queue: tx,
            interrupt: interrupt.clone(),
        });
        self.rx.lock().active = Some(Active {
            memory,
            queue: rx,
            interrupt,
        });
        self.rx.wake.notify_all();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<bool> {
        match index {
            RX => {
                // The guest posted receive buffers: wake the receive thread. Taking the lock
                // first means the wake cannot fall between the thread's look at the ring and
                // its wait.
                let _state = self.rx.lock();
                self.rx.wake.notify_all();
                Ok(false)
            }
            TX => self.transmit(),
            _ => Ok(false),
        }
    }

    fn reset(&mut self) {
        self.tx = None;
        self.rx.lock().active = None;
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.rx.lock().stopping = true;
        self.rx.wake.notify_all();
        if let Some(stream) = &self.stream {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use vm_memory::GuestAddress;

    fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&MAC);
        f
    }

    /// Base of the receive queue's rings; the transmit queue's are at [`TX_RINGS`].
    const RX_RINGS: u64 = 0x0;
    /// Base of the transmit queue's rings.
    const TX_RINGS: u64 = 0x400;

    /// Publishes `chains` (each a list of `(addr, len, flags)`) in a 16-entry queue whose
    /// descriptor table, available ring and used ring start at `base`, `base + 0x100` and
    /// `base + 0x200`.
    fn queue_at(mem: &GuestMemoryMmap, base: u64, chains: &[&[(u64, u32, u16)]]) -> Queue {
        let mut index = 0u16;
        let mut heads = Vec::new();
        for chain in chains {
            heads.push(index);
            for (i, (a, l, f)) in chain.iter().enumerate() {
                let flags = if i + 1 == chain.len() {
                    *f
                } else {
                    *f | F_NEXT
                };
                mem.write_obj(
                    desc(*a, *l, flags, index + 1),
                    GuestAddress(base + 16 * u64::from(index)),
                )
                .unwrap();
                index += 1;
            }
        }
        mem.write_slice(&[0u8; 0x100], GuestAddress(base + 0x100))
            .unwrap();
        mem.write_slice(&[0u8; 0x100], GuestAddress(base + 0x200))
            .unwrap();
        for (i, head) in heads.iter().enumerate() {
            mem.write_obj(head.to_le(), GuestAddress(base + 0x104 + 2 * i as u64))
                .unwrap();
        }
        mem.write_obj((heads.len() as u16).to_le(), GuestAddress(base + 0x102))
            .unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
        q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// An empty queue (no chains) at `base`.
    fn empty_queue_at(mem: &GuestMemoryMmap, base: u64) -> Queue {
        queue_at(mem, base, &[])
    }

    /// Entry `n` of the used ring of the queue at `base`: `(head, len)`.
    fn used_at(mem: &GuestMemoryMmap, base: u64, n: u64) -> (u32, u32) {
        let at = base + 0x204 + 8 * n;
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
        (u32::from_le(id), u32::from_le(len))
    }

    /// The used index of the queue at `base`.
    fn used_idx_at(mem: &GuestMemoryMmap, base: u64) -> u16 {
        u16::from_le(mem.read_obj(GuestAddress(base + 0x202)).unwrap())
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn read_message(peer: &mut UnixStream) -> Vec<u8> {
        let mut len = [0u8; 4];
        peer.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        peer.read_exact(&mut frame).unwrap();
        frame
    }

    #[test]
    fn config_has_the_mac_and_link_up() {
        let (a, _b) = UnixStream::pair().unwrap();
        let net = Net::new(MAC, a).unwrap();
        let mut config = [0u8; 8];
        net.read_config(0, &mut config);
        assert_eq!(&config[..6], &MAC);
        assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
        let mut past = [0xffu8; 4];
        net.read_config(6, &mut past);
        assert_eq!(past, [1, 0, 0, 0]);
        net.read_config(u64::MAX, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(net.device_type(), 1);
        assert_eq!(net.queue_max_sizes().len(), 2);
    }

    #[test]
    fn guest_frames_go_to_the_stream_with_their_length() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        let mem = memory();
        let payload = frame(60, 0xab);
        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&payload, GuestAddress(0x2000)).unwrap();
        let tx = queue_at(
            &mem,
            TX_RINGS,
            &[&[(0x1000, NET_HDR_LEN as u32, 0), (0x2000, 60, 0)]],
        );
        let irq = Arc::new(CountingInterrupt::default());
        let rx = queue_at(&mem, RX_RINGS, &[&[(0x8000, 2048, F_WRITE)]]);
        net.activate(mem.clone(), vec![rx, tx], 0, irq.clone())
            .unwrap();
        net.process_queue(TX).unwrap();
        assert_eq!(read_message(&mut peer), payload);
        assert_eq!(
            used_idx_at(&mem, TX_RINGS),
            1,
            "the transmit chain is returned"
        );
        assert_eq!(net.stats().tx_frames, 1);
    }

    #[test]
    fn stream_frames_reach_the_guest_buffers() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        let mem = memory();
        // Two receive chains: one buffer of 2048, and a header + payload split.
        let rx = queue_at(
            &mem,
            RX_RINGS,
            &[
                &[(0x8000, 2048, F_WRITE)],
                &[(0xa000, 12, F_WRITE), (0xb000, 1600, F_WRITE)],
            ],
        );
        let tx = empty_queue_at(&mem, TX_RINGS);
        let irq = Arc::new(CountingInterrupt::default());
        net.activate(mem.clone(), vec![rx, tx], 0, irq.clone())
            .unwrap();
        let first = frame(98, 1);
        let second = frame(1514, 2);
        send_frame(&mut peer, &first).unwrap();
        send_frame(&mut peer, &second).unwrap();
        wait_for("two frames", || net.stats().rx_frames == 2);
        assert_eq!(used_at(&mem, RX_RINGS, 0), (0, (NET_HDR_LEN + 98) as u32));
        assert_eq!(used_at(&mem, RX_RINGS, 1), (1, (NET_HDR_LEN + 1514) as u32));
        let header = read_guest(&mem, 0x8000, NET_HDR_LEN);
        assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(read_guest(&mem, 0x8000 + NET_HDR_LEN as u64, 98), first);
        assert_eq!(read_guest(&mem, 0xb000, 1514), second);
        assert!(irq.queue.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn frames_wait_for_buffers_and_flow_when_the_guest_posts_them() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        let mem = memory();
        let rx = queue_at(&mem, RX_RINGS, &[&[(0x8000, 2048, F_WRITE)]]);
        let tx = empty_queue_at(&mem, TX_RINGS);
        let irq = Arc::new(CountingInterrupt::default());
        net.activate(mem.clone(), vec![rx, tx], 0, irq).unwrap();
        for fill in 1..=3 {
            send_frame(&mut peer, &frame(64, fill)).unwrap();
        }
        wait_for("the first frame", || net.stats().rx_frames == 1);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(net.stats().rx_frames, 1, "no buffer, no delivery");
        assert_eq!(net.stats().rx_dropped, 0, "and nothing lost");
        // The guest posts another buffer (entry 1 of the available ring) and notifies.
        mem.write_obj(
            desc(0x9000, 2048, F_WRITE, 0),
            GuestAddress(RX_RINGS + 16 * 5),
        )
        .unwrap();
        mem.write_obj(5u16.to_le(), GuestAddress(RX_RINGS + 0x104 + 2))
            .unwrap();
        mem.write_obj(2u16.to_le(), GuestAddress(RX_RINGS + 0x102))
            .unwrap();
        net.process_queue(RX).unwrap();
        wait_for("the second frame", || net.stats().rx_frames == 2);
        assert_eq!(
            read_guest(&mem, 0x9000 + NET_HDR_LEN as u64, 64),
            frame(64, 2)
        );
    }

    #[test]
    fn link_down_drops_frames_and_reset_stops_delivery() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        send_frame(&mut peer, &frame(64, 9)).unwrap();
        wait_for("a dropped frame", || net.stats().rx_dropped == 1);
        let mem = memory();
        let rx = queue_at(&mem, RX_RINGS, &[&[(0x8000, 2048, F_WRITE)]]);
        let tx = empty_queue_at(&mem, TX_RINGS);
        net.activate(
            mem.clone(),
            vec![rx, tx],
            0,
            Arc::new(CountingInterrupt::default()),
        )
        .unwrap();
        net.reset();
        send_frame(&mut peer, &frame(64, 9)).unwrap();
        wait_for("a second dropped frame", || net.stats().rx_dropped == 2);
        assert_eq!(used_idx_at(&mem, RX_RINGS), 0);
    }

    #[test]
    fn hostile_chains_and_frames_are_refused_without_harm() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        let mem = memory();
        // Receive: a read-only buffer, a buffer too small for the header, a buffer outside
        // memory, then a good one.
        let rx = queue_at(
            &mem,
            RX_RINGS,
            &[
                &[(0x8000, 2048, 0)],
                &[(0x8000, 8, F_WRITE)],
                &[(MEM_SIZE as u64 - 16, 2048, F_WRITE)],
                &[(0x9000, 2048, F_WRITE)],
            ],
        );
        let tx = empty_queue_at(&mem, TX_RINGS);
        net.activate(
            mem.clone(),
            vec![rx, tx],
            0,
            Arc::new(CountingInterrupt::default()),
        )
        .unwrap();
        send_frame(&mut peer, &[1, 2, 3]).unwrap(); // a runt
        for fill in 1..=4 {
            send_frame(&mut peer, &frame(100, fill)).unwrap();
        }
        wait_for("one good delivery", || net.stats().rx_frames == 1);
        assert_eq!(
            read_guest(&mem, 0x9000 + NET_HDR_LEN as u64, 100),
            frame(100, 4)
        );
        assert_eq!(net.stats().rx_dropped, 4);
        assert_eq!(used_idx_at(&mem, RX_RINGS), 4);
        // Transmit: a write-only descriptor, a runt, a chain that loops.
        let tx = queue_at(
            &mem,
            TX_RINGS,
            &[
                &[(0x1000, 100, F_WRITE)],
                &[(0x1000, 14, 0)],
                &[(0x1000, 100, 0)],
            ],
        );
        mem.write_obj(
            desc(0x1000, 100, F_NEXT, 2),
            GuestAddress(TX_RINGS + 16 * 2),
        )
        .unwrap();
        net.tx = Some(Active {
            memory: mem.clone(),
            queue: tx,
            interrupt: Arc::new(CountingInterrupt::default()),
        });
        net.process_queue(TX).unwrap();
        assert_eq!(net.stats().tx_frames, 0);
        assert_eq!(net.stats().tx_dropped, 3);
    }

    #[test]
    fn a_stream_announcing_a_giant_frame_is_dropped_not_trusted() {
        let (a, mut peer) = UnixStream::pair().unwrap();
        let net = Net::new(MAC, a).unwrap();
        peer.write_all(&u32::MAX.to_be_bytes()).unwrap();
        // The receive thread ends; the device stays usable for transmit and drops cleanly.
        std::thread::sleep(Duration::from_millis(100));
        drop(net);
    }

    #[test]
    fn the_peer_going_away_does_not_hurt_the_guest() {
        let (a, peer) = UnixStream::pair().unwrap();
        let mut net = Net::new(MAC, a).unwrap();
        drop(peer);
        let mem = memory();
        mem.write_slice(&frame(60, 1), GuestAddress(0x2000))
            .unwrap();
        let tx = queue_at(
            &mem,
            TX_RINGS,
            &[&[(0x1000, NET_HDR_LEN as u32, 0), (0x2000, 60, 0)]],
        );
        let rx = empty_queue_at(&mem, RX_RINGS);
        net.activate(
            mem.clone(),
            vec![rx, tx],
            0,
            Arc::new(CountingInterrupt::default()),
        )
        .unwrap();
        net.process_queue(TX).unwrap();
        assert_eq!(net.stats().tx_dropped, 1);
        assert_eq!(used_idx_at(&mem, TX_RINGS), 1);
    }

    #[test]
    fn receive_stream_delivers_until_the_guest_has_no_buffer() {
        let mem = memory();
        let rx = queue_at(
            &mem,
            RX_RINGS,
            &[&[(0x1000, 2048, F_WRITE)], &[(0x2000, 2048, F_WRITE)]],
        );
        let irq = Arc::new(CountingInterrupt::default());
        let mut stream = Vec::new();
        for fill in [1u8, 2, 3] {
            let f = frame(60, fill);
            stream.extend_from_slice(&(f.len() as u32).to_be_bytes());
            stream.extend_from_slice(&f);
        }
        // A runt between the frames is dropped without using a buffer.
        stream.splice(0..0, [0, 0, 0, 4, 9, 9, 9, 9]);
        let stats = receive_stream(&stream[..], mem.clone(), rx, irq);
        // Two buffers: the third frame finds none and the run ends.
        assert_eq!((stats.rx_frames, stats.rx_dropped), (2, 2));
        assert_eq!(used_idx_at(&mem, RX_RINGS), 2);
        assert_eq!(
            read_guest(&mem, 0x1000 + NET_HDR_LEN as u64, 60),
            frame(60, 1)
        );
        assert_eq!(
            read_guest(&mem, 0x2000 + NET_HDR_LEN as u64, 60),
            frame(60, 2)
        );
        // A length word over the limit ends the stream.
        let mem = memory();
        let rx = queue_at(&mem, RX_RINGS, &[&[(0x1000, 2048, F_WRITE)]]);
        let stats = receive_stream(
            &[0xffu8, 0xff, 0xff, 0xff, 0, 0][..],
            mem,
            rx,
            Arc::new(CountingInterrupt::default()),
        );
        assert_eq!(stats, NetStats::default());
    }
}
