//! Fuzz the 16550A UART: reads and writes of any width at any of its eight registers (and
//! past them), with the divisor latch, FIFO control, interrupt enables, loopback and
//! scratch, interleaved with host input queued into the receive FIFO; the output sink fails
//! now and then as a closed terminal would.
//!
//! Oracles besides "no panic": the receive FIFO never takes more than its room or than it was
//! offered, and the sink never gets more bytes than the guest could have written.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vivarium_devices::serial::Serial;
use vivarium_devices_fuzz::{Counter, Cursor, perform};

/// An output that records what it got and fails every `fail_every`-th write.
struct Output {
    got: Arc<Mutex<Vec<u8>>>,
    writes: usize,
    fail_every: usize,
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writes += 1;
        if self.fail_every != 0 && self.writes.is_multiple_of(self.fail_every) {
            return Err(std::io::Error::other("the terminal went away"));
        }
        self.got.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let got = Arc::new(Mutex::new(Vec::new()));
    let output = Output {
        got: got.clone(),
        writes: 0,
        fail_every: usize::from(c.u8() % 8),
    };
    let mut uart = Serial::new(Counter::shared(), Box::new(output));
    while !c.is_empty() {
        let op = c.u8();
        if op.is_multiple_of(4) {
            let bytes = c.bytes(usize::from(op >> 2));
            let room = uart.input_room();
            let taken = uart.enqueue_input(bytes);
            assert!(
                taken <= room && taken <= bytes.len(),
                "took {taken} of {} with room {room}",
                bytes.len()
            );
        } else {
            let access = c.access(10);
            perform(&mut uart, 0x3f8, access);
        }
    }
    // The sink got no more than the guest could have written.
    assert!(got.lock().unwrap().len() <= input.len());
});
