//! Fuzz virtio-net in both directions. The input is the transmit queue's configuration, the
//! receive queue's, a frame stream as the peer (passt) would send it, and guest memory.
//!
//! Transmit: the device processes the transmit queue (twice) with its stream connected to a
//! socket pair whose other end a thread reads; oracle: what arrives is well framed (each
//! frame behind its 4-byte big-endian length, an Ethernet header at least, no partial frame)
//! and the device counted exactly the frames that arrived.
//!
//! Receive: the stream goes through the receive path (`receive_stream`, the framing and
//! delivery code of the receive thread) into the receive queue; oracle: no panic, no hang, no
//! more frames delivered than the stream held.
#![no_main]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vivarium_devices::virtio::VirtioDevice;
use vivarium_devices::virtio::net::{Net, receive_stream};
use vivarium_devices_fuzz::{Counter, Cursor, guest_memory};

/// Smallest frame the stream carries (an Ethernet header) and the largest length word the
/// device sends (its limit for a transmit chain).
const MIN_FRAME: usize = 14;
const MAX_STREAM_FRAME: usize = 65_550;

/// Reads the peer's end to its close; returns the frames found, checking the framing.
fn drain(mut peer: UnixStream) -> u64 {
    let mut bytes = Vec::new();
    peer.read_to_end(&mut bytes).expect("the peer end reads");
    let mut frames = 0;
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a partial length word on the stream");
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        assert!(
            (MIN_FRAME..=MAX_STREAM_FRAME).contains(&len),
            "a frame of {len} bytes sent"
        );
        assert!(rest.len() >= 4 + len, "a partial frame on the stream");
        rest = &rest[4 + len..];
        frames += 1;
    }
    frames
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let tx_queue = c.queue(256);
    let rx_queue = c.queue(256);
    let stream_len = usize::from(c.u16() % 0x2000);
    let stream = c.bytes(stream_len);
    let memory = Arc::new(guest_memory(c.rest()));
    let irq = Counter::shared();

    // Transmit, through the device.
    let (device_end, peer) = UnixStream::pair().expect("a socket pair");
    let reader = std::thread::spawn(move || drain(peer));
    let mut net = Net::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], device_end).expect("the card");
    // An empty receive queue: the transmit queue is the one under test here.
    let idle_rx = virtio_queue::Queue::new(256).unwrap();
    net.activate(memory.clone(), vec![idle_rx, tx_queue], 0, irq.clone())
        .expect("activation");
    for _ in 0..2 {
        if net.process_queue(1).is_err() {
            break;
        }
    }
    let sent = net.stats().tx_frames;
    // Dropping the card shuts its stream down; the reader then sees the end.
    drop(net);
    let arrived = reader.join().expect("the reader thread");
    assert_eq!(
        sent, arrived,
        "frames counted as sent vs frames on the stream"
    );

    // Receive, through the receive path.
    let stats = receive_stream(stream, memory, rx_queue, irq);
    assert!(
        stats.rx_frames as usize <= stream.len() / (4 + MIN_FRAME),
        "more frames delivered than the stream held"
    );
});
