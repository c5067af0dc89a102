//! Fuzz the PL011 UART: reads and writes of any width at any offset of its 4 KiB (and past
//! it), with line control (FIFO on and off), control (loopback), FIFO levels, masks and
//! interrupt clears, interleaved with host input queued into the receive FIFO; the output
//! sink fails now and then as a closed terminal would.
//!
//! Oracles besides "no panic": the interrupt line is held at exactly `UARTMIS != 0` and only
//! ever set when its level changes; the receive FIFO never takes more than its room (16
//! entries at most) or than it was offered; the PrimeCell ID registers never change; the
//! sink never gets more bytes than the guest wrote.
#![no_main]

use std::io::Write;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vivarium_devices::LevelIrq;
use vivarium_devices::bus::BusDevice;
use vivarium_devices::pl011::{
    PL011_MMIO_SIZE, PL011_PERIPH_ID, PRIMECELL_ID, Pl011, RX_FIFO_SIZE,
};
use vivarium_devices_fuzz::{Access, Cursor, perform};

const BASE: u64 = 0x0900_0000;

/// A level line that records its level and checks it only moves on a change.
#[derive(Default)]
struct Line(Mutex<bool>);

impl LevelIrq for Line {
    fn set_level(&self, asserted: bool) -> std::io::Result<()> {
        let mut level = self.0.lock().unwrap();
        assert_ne!(*level, asserted, "the line was set to the level it had");
        *level = asserted;
        Ok(())
    }
}

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

fn read32(uart: &mut Pl011, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    uart.read(BASE, offset, &mut b);
    u32::from_le_bytes(b)
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let got = Arc::new(Mutex::new(Vec::new()));
    let output = Output {
        got: got.clone(),
        writes: 0,
        fail_every: usize::from(c.u8() % 8),
    };
    let line = Arc::new(Line::default());
    let mut uart = Pl011::new(line.clone(), Box::new(output));
    let mut data_writes = 0usize;
    while !c.is_empty() {
        let op = c.u8();
        if op.is_multiple_of(4) {
            let bytes = c.bytes(usize::from(op >> 2));
            let room = uart.input_room();
            assert!(room <= RX_FIFO_SIZE);
            let taken = uart.enqueue_input(bytes);
            assert!(
                taken <= room && taken <= bytes.len(),
                "took {taken} of {} with room {room}",
                bytes.len()
            );
        } else {
            // Mostly the registers, sometimes anywhere in (or past) the window.
            let range = if op & 2 == 0 {
                0x50
            } else {
                PL011_MMIO_SIZE + 0x10
            };
            let access = c.access(range);
            if let Access::Write { offset: 0, .. } = access {
                data_writes += 1;
            }
            perform(&mut uart, BASE, access);
        }
        // The line is what the masked status says, and the device knows it.
        let mis = read32(&mut uart, 0x40);
        assert_eq!(uart.irq_asserted(), mis != 0, "MIS {mis:#x}");
        assert_eq!(*line.0.lock().unwrap(), mis != 0);
    }
    let id = |uart: &mut Pl011, first: u64| {
        (0..4).fold(0u32, |id, i| id | (read32(uart, first + 4 * i) << (8 * i)))
    };
    assert_eq!(id(&mut uart, 0xfe0), PL011_PERIPH_ID);
    assert_eq!(id(&mut uart, 0xff0), PRIMECELL_ID);
    // The sink got no more than the guest could have written.
    assert!(got.lock().unwrap().len() <= data_writes);
});
