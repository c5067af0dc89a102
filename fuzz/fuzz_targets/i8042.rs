//! Fuzz the i8042 PS/2 controller with its keyboard and mouse: guest reads and writes of
//! ports 0x60 (data) and 0x64 (status, commands) of any width, command bytes with their
//! parameters, keyboard and mouse commands sent through the data port (and to the mouse
//! through 0xd4), interleaved with the host typing and moving the mouse.
//!
//! Oracles besides "no panic, no hang": a read of any width gives one byte (the rest zero).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vivarium_devices::bus::BusDevice;
use vivarium_devices::i8042::{I8042, Key, MouseButtons};
use vivarium_devices_fuzz::{Counter, Cursor};

/// Bytes a guest writes to port 0x64, and to 0x60 for the keyboard or the mouse: the ones
/// the models know, so most inputs exercise a command rather than the unknown-byte path.
const CONTROLLER_COMMANDS: &[u8] = &[
    0x20, 0x60, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xad, 0xae, 0xc0, 0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xfe,
    0xf0,
];
const DEVICE_COMMANDS: &[u8] = &[
    0xed, 0xee, 0xf0, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xfe, 0xff, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb,
    0xec, 0xf0, 0xf3, 0xc8, 0x64, 0x50, 0x00, 0x01, 0x02, 0x03,
];

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let irq = Counter::shared();
    let mut dev = I8042::new(irq.clone(), irq.clone(), irq.clone());
    let host = dev.input();
    while !c.is_empty() {
        let op = c.u8();
        let arg = c.u8();
        match op % 10 {
            0 => dev.write(
                0x60,
                4,
                &[CONTROLLER_COMMANDS[usize::from(arg) % CONTROLLER_COMMANDS.len()]],
            ),
            1 => dev.write(
                0x60,
                0,
                &[DEVICE_COMMANDS[usize::from(arg) % DEVICE_COMMANDS.len()]],
            ),
            2 => {
                // Any byte, any width, any of the five ports.
                let len = c.width();
                let value = c.u64().to_le_bytes();
                dev.write(0x60, u64::from(arg % 5), &value[..len]);
            }
            3 | 4 => {
                let mut status = [0u8; 1];
                dev.read(0x60, 4, &mut status);
                let mut data = [0u8; 8];
                let len = c.width();
                dev.read(0x60, 0, &mut data[..len]);
                assert!(
                    data[1..].iter().all(|&b| b == 0),
                    "a wide read gave more than a byte"
                );
            }
            5 => {
                let mut data = [0u8; 4];
                let len = c.width().min(4);
                dev.read(0x60, u64::from(arg % 6), &mut data[..len]);
            }
            6 => {
                let key = Key::ALL[usize::from(c.u8()) % Key::ALL.len()];
                let _ = if arg & 1 == 0 {
                    host.press(key)
                } else {
                    host.release(key)
                };
            }
            7 => {
                let (dx, dy, wheel) = (c.u32() as i32, c.u32() as i32, i32::from(c.u8() as i8));
                let buttons = MouseButtons {
                    left: arg & 1 != 0,
                    right: arg & 2 != 0,
                    middle: arg & 4 != 0,
                };
                let _ = host.mouse_motion(dx, dy, wheel, buttons);
            }
            8 => {
                let _ = host.leds();
            }
            _ => {
                // A command byte and its parameter in one go, as drivers send them.
                dev.write(
                    0x60,
                    4,
                    &[CONTROLLER_COMMANDS[usize::from(arg) % CONTROLLER_COMMANDS.len()]],
                );
                dev.write(0x60, 0, &[c.u8()]);
            }
        }
    }
});
