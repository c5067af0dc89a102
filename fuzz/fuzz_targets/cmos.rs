//! Fuzz the CMOS real-time clock and its RAM (ports 0x70/0x71): index selection with and
//! without the NMI bit, reads and writes of every register (time and date in BCD or binary,
//! 12- or 24-hour, the SET bit, rate selection and interrupt enables, the flags register), as
//! the host's clock moves forward (and, once, backward) between accesses, with any guest time
//! offset and memory size.
//!
//! Oracles besides "no panic, no hang": the register index never leaves the 128-byte RAM.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vivarium_devices::bus::BusDevice;
use vivarium_devices::rtc::{CmosRtc, WallClock};
use vivarium_devices_fuzz::{Counter, Cursor};

/// A host clock the input moves.
struct Clock(AtomicU64);

impl WallClock for Clock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    // Any time from 1970 to about 2554 (nanoseconds in a u64).
    let clock = Arc::new(Clock(AtomicU64::new(c.u64())));
    let offset = c.u64() as i64;
    let mut rtc = CmosRtc::with_clock(Counter::shared(), clock.clone(), offset);
    rtc.set_memory_size(c.u64(), c.u64());
    while !c.is_empty() {
        let op = c.u8();
        let arg = c.u8();
        match op % 6 {
            0 => rtc.write(0x70, 0, &[arg]),
            1 => rtc.write(0x70, 1, &[arg]),
            2 => {
                let mut b = [0u8; 4];
                let len = c.width().min(4);
                rtc.read(0x70, u64::from(arg % 3), &mut b[..len]);
                if arg.is_multiple_of(3) {
                    assert!(b[0] < 0x80, "index {:#x} outside the RAM", b[0]);
                }
            }
            3 => {
                // Select a register and write it, as drivers do.
                rtc.write(0x70, 0, &[arg % 0x0e]);
                rtc.write(0x70, 1, &[c.u8()]);
            }
            4 => {
                // Time passes: up to about 18 minutes, sometimes a lot more.
                let step = if arg == 0xff {
                    c.u64() >> 8
                } else {
                    u64::from(c.u32()) << 8
                };
                let _ = clock
                    .0
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        Some(t.saturating_add(step))
                    });
            }
            _ => {
                if arg == 0 {
                    // The host's clock was set back.
                    clock.0.store(c.u64(), Ordering::Relaxed);
                }
                let _ = rtc.guest_time();
            }
        }
    }
});
