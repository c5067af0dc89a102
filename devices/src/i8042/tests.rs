//! The controller driven through its ports the way Linux's i8042, atkbd and psmouse
//! drivers drive it, plus host input, reset lines and hostile guests.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct Count(AtomicUsize);

impl Count {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl ResetLine for Count {
    fn reset(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl IrqLine for Count {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A controller with counters on its reset line and both interrupts.
struct Rig {
    dev: I8042,
    resets: Arc<Count>,
    irq1: Arc<Count>,
    irq12: Arc<Count>,
}

impl Rig {
    /// A controller whose keyboard a driver has enabled (`F4`).
    fn with_driver() -> Self {
        let mut rig = Rig::new();
        assert_eq!(rig.kbd(&[0xf4]), [0xfa]);
        rig
    }

    fn new() -> Self {
        let resets = Arc::new(Count::default());
        let irq1 = Arc::new(Count::default());
        let irq12 = Arc::new(Count::default());
        let dev = I8042::new(resets.clone(), irq1.clone(), irq12.clone());
        Rig {
            dev,
            resets,
            irq1,
            irq12,
        }
    }

    fn status(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(0x60, 4, &mut b);
        b[0]
    }

    fn read_data(&mut self) -> u8 {
        let mut b = [0u8];
        self.dev.read(0x60, 0, &mut b);
        b[0]
    }

    fn command(&mut self, c: u8) {
        self.dev.write(0x60, 4, &[c]);
    }

    fn data(&mut self, d: u8) {
        self.dev.write(0x60, 0, &[d]);
    }

    /// Reads what is waiting, as `(byte, from_aux)`, the way Linux's interrupt handler
    /// does: status first, then data while the output buffer is full.
    fn drain(&mut self) -> Vec<(u8, bool)> {
        let mut out = Vec::new();
        for _ in 0..4096 {
            let status = self.status();
            if status & STATUS_OUTPUT_FULL == 0 {
                break;
            }
            let aux = status & STATUS_AUX_DATA != 0;
            out.push((self.read_data(), aux));
        }
        out
    }

    fn drain_bytes(&mut self) -> Vec<u8> {
        self.drain().into_iter().map(|(b, _)| b).collect()
    }

    /// `i8042_command`: a controller command with parameters, returning `replies` bytes.
    fn i8042_command(&mut self, command: u8, params: &[u8], replies: usize) -> Vec<(u8, bool)> {
        self.command(command);
        for &p in params {
            self.data(p);
        }
        let got = self.drain();
        assert_eq!(got.len(), replies, "command {command:#x}: {got:02x?}");
        got
    }

    fn read_ctr(&mut self) -> u8 {
        self.i8042_command(0x20, &[], 1)[0].0
    }

    fn write_ctr(&mut self, ctr: u8) {
        self.i8042_command(0x60, &[ctr], 0);
        assert_eq!(self.read_ctr(), ctr);
    }

    /// A keyboard command (`ps2_command` through the data port).
    fn kbd(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for &b in bytes {
            self.data(b);
            for (byte, aux) in self.drain() {
                assert!(!aux, "keyboard reply {byte:#x} flagged as AUX");
                got.push(byte);
            }
        }
        got
    }

    /// A mouse command: every byte through `D4`.
    fn aux(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        for &b in bytes {
            self.command(0xd4);
            self.data(b);
            for (byte, aux) in self.drain() {
                assert!(aux, "mouse reply {byte:#x} not flagged as AUX");
                got.push(byte);
            }
        }
        got
    }
}

#[test]
fn linux_probe_sequence() {
    let mut r = Rig::new();
    // i8042_controller_check: flush.
    assert!(r.drain().is_empty());
    let status = r.status();
    assert_ne!(status & STATUS_UNLOCKED, 0, "no keylock");
    assert_eq!(status & 0xc0, 0, "no timeout or parity error");
    // i8042_controller_selftest.
    assert_eq!(r.i8042_command(0xaa, &[], 1), [(0x55, false)]);
    assert_ne!(r.status() & STATUS_SYSTEM, 0);
    // i8042_controller_init: read the CTR until two reads agree, disable the keyboard,
    // keep translation.
    let ctr = r.read_ctr();
    assert_eq!(r.read_ctr(), ctr);
    assert_ne!(
        ctr & CONFIG_TRANSLATE,
        0,
        "translation on, as a BIOS leaves it"
    );
    let mut ctr = (ctr | CONFIG_KBD_DISABLED) & !CONFIG_KBD_INT;
    ctr &= !CONFIG_AUX_INT;
    r.write_ctr(ctr);

    // i8042_check_mux: three loopback bytes; the third coming back unchanged means "no
    // multiplexer".
    for b in [0xf0, 0x56, 0xa4] {
        assert_eq!(r.i8042_command(0xd3, &[b], 1), [(b, true)]);
    }
    // i8042_check_aux: loopback, then the AUX enable bit test.
    assert_eq!(r.i8042_command(0xd3, &[0x5a], 1), [(0x5a, true)]);
    r.i8042_command(0xa7, &[], 0);
    assert_ne!(r.read_ctr() & CONFIG_AUX_DISABLED, 0);
    r.i8042_command(0xa8, &[], 0);
    assert_eq!(r.read_ctr() & CONFIG_AUX_DISABLED, 0);
    // The AUX interrupt test: enable the AUX port and its interrupt, loop back 0xa5,
    // expect IRQ 12 with the AUX bit.
    ctr = (r.read_ctr() & !CONFIG_AUX_DISABLED) | CONFIG_AUX_INT;
    r.write_ctr(ctr);
    let irq12 = r.irq12.get();
    r.command(0xd3);
    r.data(0xa5);
    assert_eq!(r.irq12.get(), irq12 + 1, "IRQ 12 delivered");
    assert_eq!(r.status() & 0x21, 0x21);
    assert_eq!(r.read_data(), 0xa5);
    // Interface tests as `i8042_port_test` would do them.
    assert_eq!(r.i8042_command(0xab, &[], 1), [(0x00, false)]);
    assert_eq!(r.i8042_command(0xa9, &[], 1), [(0x00, false)]);

    // i8042_enable_kbd_port, then atkbd_probe / atkbd_activate.
    ctr = (r.read_ctr() & !CONFIG_KBD_DISABLED) | CONFIG_KBD_INT;
    r.write_ctr(ctr);
    let irq1 = r.irq1.get();
    // Translated identity: AB 83 becomes AB 41 ("ab41").
    assert_eq!(r.kbd(&[0xf2]), [0xfa, 0xab, 0x41]);
    assert_eq!(r.irq1.get(), irq1 + 3, "one IRQ 1 per byte");
    assert_eq!(r.kbd(&[0xf5]), [0xfa], "atkbd_deactivate");
    assert_eq!(r.kbd(&[0xed, 0x00]), [0xfa, 0xfa], "atkbd_set_leds");
    assert_eq!(
        r.kbd(&[0xf3, 0x20 | 0x0b]),
        [0xfa, 0xfa],
        "atkbd_set_repeat_rate"
    );
    assert_eq!(r.kbd(&[0xf4]), [0xfa], "atkbd_activate");
    assert_eq!(r.kbd(&[0xed, 0x02]), [0xfa, 0xfa], "NumLock on");
    assert!(r.dev.input().leds().num_lock);

    // psmouse: reset, probe, IntelliMouse detection, enable.
    let irq12 = r.irq12.get();
    assert_eq!(r.aux(&[0xff]), [0xfa, 0xaa, 0x00]);
    assert_eq!(r.irq12.get(), irq12 + 3);
    assert_eq!(r.aux(&[0xf2]), [0xfa, 0x00]);
    assert_eq!(r.aux(&[0xf6]), [0xfa], "PSMOUSE_CMD_RESET_DIS");
    // Synaptics probe (E8 x4 + E9) must not find the Synaptics magic 0x47.
    let info = r.aux(&[0xe8, 0, 0xe8, 0, 0xe8, 0, 0xe8, 0, 0xe9]);
    assert_eq!(info.len(), 12);
    assert_ne!(info[10], 0x47);
    assert_eq!(
        r.aux(&[0xf3, 200, 0xf3, 100, 0xf3, 80, 0xf2]),
        [0xfa, 0xfa, 0xfa, 0xfa, 0xfa, 0xfa, 0xfa, 0x03]
    );
    assert_eq!(r.aux(&[0xf3, 100, 0xe8, 3, 0xe6, 0xf4]), [0xfa; 6]);

    // The host types and moves the mouse; both arrive with their interrupts.
    let input = r.dev.input();
    let irq1 = r.irq1.get();
    input.press(Key::KeyA).unwrap();
    input.release(Key::KeyA).unwrap();
    assert_eq!(r.drain(), [(0x1e, false), (0x9e, false)]);
    assert_eq!(r.irq1.get(), irq1 + 2);
    let irq12 = r.irq12.get();
    input
        .mouse_motion(
            3,
            2,
            1,
            MouseButtons {
                left: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        r.drain(),
        [(0x29, true), (3, true), (0xfe, true), (0xff, true)],
        "left button, 3 right, 2 down (Y up is positive), wheel up"
    );
    assert_eq!(r.irq12.get(), irq12 + 4);
    assert_eq!(r.resets.get(), 0);
}

#[test]
fn translation_off_gives_set_2() {
    let mut r = Rig::with_driver();
    r.write_ctr(CONFIG_KBD_INT | CONFIG_SYSTEM);
    let input = r.dev.input();
    for key in [
        Key::KeyA,
        Key::ArrowLeft,
        Key::PrintScreen,
        Key::Pause,
        Key::F7,
    ] {
        input.press(key).unwrap();
        input.release(key).unwrap();
        let mut expected = key.make().as_slice().to_vec();
        expected.extend_from_slice(key.break_code().as_slice());
        assert_eq!(r.drain_bytes(), expected, "{key:?}");
    }
    // Identify is untranslated too.
    assert_eq!(r.kbd(&[0xf2]), [0xfa, 0xab, 0x83]);
}

#[test]
fn translation_on_gives_set_1() {
    let mut r = Rig::with_driver();
    let input = r.dev.input();
    let cases: &[(Key, &[u8])] = &[
        (Key::KeyA, &[0x1e, 0x9e]),
        (Key::ShiftLeft, &[0x2a, 0xaa]),
        (Key::Delete, &[0xe0, 0x53, 0xe0, 0xd3]),
        (Key::ControlRight, &[0xe0, 0x1d, 0xe0, 0x9d]),
        (Key::MetaRight, &[0xe0, 0x5c, 0xe0, 0xdc]),
        (Key::Pause, &[0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5]),
        (
            Key::PrintScreen,
            &[0xe0, 0x2a, 0xe0, 0x37, 0xe0, 0xb7, 0xe0, 0xaa],
        ),
    ];
    for (key, expected) in cases {
        input.press(*key).unwrap();
        input.release(*key).unwrap();
        assert_eq!(r.drain_bytes(), *expected, "{key:?}");
    }
}

#[test]
fn bytes_wait_while_a_port_is_disabled_and_interrupts_follow_the_config() {
    let mut r = Rig::with_driver();
    let input = r.dev.input();
    r.command(0xad);
    input.press(Key::Space).unwrap();
    assert!(r.drain().is_empty(), "the keyboard port is disabled");
    let irq1 = r.irq1.get();
    r.command(0xae);
    assert_eq!(r.irq1.get(), irq1 + 1);
    assert_eq!(r.drain_bytes(), [0x39]);

    // With the keyboard interrupt off, the byte is there but no IRQ; enabling the
    // interrupt while it waits raises it.
    r.write_ctr(CONFIG_SYSTEM | CONFIG_TRANSLATE);
    let irq1 = r.irq1.get();
    input.press(Key::Space).unwrap();
    assert_eq!(r.irq1.get(), irq1);
    assert_ne!(r.status() & STATUS_OUTPUT_FULL, 0);
    r.command(0x60);
    r.data(CONFIG_SYSTEM | CONFIG_TRANSLATE | CONFIG_KBD_INT);
    assert_eq!(r.irq1.get(), irq1 + 1);
    assert_eq!(r.read_data(), 0x39);

    // Mouse bytes need the AUX port enabled and reporting on.
    let err = input
        .mouse_motion(1, 0, 0, MouseButtons::default())
        .unwrap_err();
    assert!(matches!(err, Error::InputDisabled("mouse")), "{err}");
    r.aux(&[0xf4]);
    r.command(0xa7);
    input
        .mouse_motion(1, 0, 0, MouseButtons::default())
        .unwrap();
    assert!(r.drain().is_empty());
    r.command(0xa8);
    assert_eq!(r.drain(), [(0x08, true), (1, true), (0, true)]);
    assert_eq!(r.irq12.get(), 0, "the AUX interrupt is off in this config");
}

#[test]
fn a_disabled_keyboard_refuses_host_keys() {
    let mut r = Rig::new();
    let err = r.dev.input().press(Key::KeyQ).unwrap_err();
    assert!(
        matches!(err, Error::InputDisabled("keyboard")),
        "no driver has enabled the keyboard yet: {err}"
    );
    r.kbd(&[0xf4]);
    r.dev.input().press(Key::KeyQ).unwrap();
    assert_eq!(r.drain_bytes(), [0x10]);
    r.kbd(&[0xf5]);
    let err = r.dev.input().press(Key::KeyQ).unwrap_err();
    assert!(matches!(err, Error::InputDisabled("keyboard")), "{err}");
    assert!(err.to_string().contains("not sent"));
    r.kbd(&[0xf4]);
    r.dev.input().press(Key::KeyQ).unwrap();
    assert_eq!(r.drain_bytes(), [0x10]);
}

#[test]
fn the_keyboard_queue_overflows_with_an_overrun_code() {
    let mut r = Rig::with_driver();
    let input = r.dev.input();
    let mut full = 0;
    for _ in 0..1000 {
        match input.press(Key::KeyB) {
            Ok(()) => {}
            Err(Error::InputQueueFull("keyboard")) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(full > 0);
    let bytes = r.drain_bytes();
    assert!(bytes.len() <= 257, "{}", bytes.len());
    // Set 2's overrun 00 arrives translated as set 1's FF, once, at the end.
    assert_eq!(bytes.last(), Some(&0xff));
    assert_eq!(bytes.iter().filter(|&&b| b == 0xff).count(), 1);
    assert!(bytes[..bytes.len() - 1].iter().all(|&b| b == 0x30));
    // Once read, there is room again.
    input.press(Key::KeyB).unwrap();
}

#[test]
fn reset_through_fe_pulses_and_the_output_port() {
    let mut r = Rig::new();
    r.command(0xfe);
    assert_eq!(r.resets.get(), 1);
    r.command(0xff);
    r.command(0xf1);
    assert_eq!(r.resets.get(), 1, "bit 0 not pulsed");
    r.command(0xf0);
    assert_eq!(r.resets.get(), 2);
    // Output port: A20 off and on without reset, then bit 0 low.
    assert_eq!(r.i8042_command(0xd0, &[], 1)[0].0 & 0x03, 0x03);
    r.i8042_command(0xd1, &[0xc1], 0);
    assert_eq!(r.i8042_command(0xd0, &[], 1)[0].0 & 0x03, 0x01, "A20 off");
    r.i8042_command(0xd1, &[0xc3], 0);
    assert_eq!(r.resets.get(), 2);
    r.command(0xd1);
    r.data(0xc2);
    assert_eq!(r.resets.get(), 3);
}

#[test]
fn controller_commands_answer() {
    let mut r = Rig::new();
    assert_eq!(r.i8042_command(0xc0, &[], 1), [(INPUT_PORT, false)]);
    // Controller RAM beyond the configuration byte.
    r.i8042_command(0x65, &[0x77], 0);
    assert_eq!(r.i8042_command(0x25, &[], 1), [(0x77, false)]);
    assert_eq!(r.i8042_command(0x20, &[], 1), [(POWER_ON_CONFIG, false)]);
    // D2 puts a byte in the keyboard's place, D3 in the mouse's.
    assert_eq!(r.i8042_command(0xd2, &[0x42], 1), [(0x42, false)]);
    assert_eq!(r.i8042_command(0xd3, &[0x43], 1), [(0x43, true)]);
    // Status: command/data bit follows the last write.
    r.command(0xff);
    assert_ne!(r.status() & STATUS_COMMAND, 0);
    r.data(0xee);
    assert_eq!(r.status() & STATUS_COMMAND, 0);
    assert_eq!(r.drain_bytes(), [0xee], "keyboard echo");
    // Reading an empty buffer repeats the last byte; unknown commands do nothing.
    assert_eq!(r.read_data(), 0xee);
    for c in [0x00, 0x10, 0x90, 0xa0, 0xa6, 0xc1, 0xe0, 0xdd] {
        r.command(c);
        assert!(r.drain().is_empty(), "{c:#x}");
    }
    assert_eq!(r.resets.get(), 0);
    // Ports 0x61-0x63 read all ones; wide reads give the byte in the low lane.
    let mut b = [0u8; 2];
    r.dev.read(0x60, 1, &mut b);
    assert_eq!(b, [0xff, 0]);
    r.dev.read(0x60, 4, &mut b);
    assert_eq!(b[1], 0);
}

#[test]
fn host_input_from_another_thread_while_the_guest_reads() {
    let mut r = Rig::with_driver();
    let input = r.dev.input();
    const KEYS: usize = 2000;
    let typist = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < KEYS {
            match input.press(Key::KeyZ) {
                Ok(()) => sent += 1,
                Err(Error::InputQueueFull(_)) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let mut got = 0;
    while got < KEYS {
        for byte in r.drain_bytes() {
            match byte {
                0x2c => got += 1,
                // A press that found the queue full left an overrun code and was retried.
                0xff => {}
                other => panic!("unexpected {other:#x}"),
            }
        }
        std::thread::yield_now();
    }
    typist.join().unwrap();
    assert_eq!(got, KEYS, "every key arrived exactly once");
}

/// A small deterministic PRNG (xorshift64*), so the fuzz test replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_port_traffic_never_panics_or_grows() {
    for seed in 1..=8u64 {
        let mut r = if seed % 2 == 0 {
            Rig::with_driver()
        } else {
            Rig::new()
        };
        let input = r.dev.input();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for _ in 0..20_000 {
            let v = rng.next();
            let byte = (v >> 8) as u8;
            // Favour the interesting commands so the devices get exercised.
            let command = match (v >> 16) % 4 {
                0 => 0xd4,
                1 => [0x20, 0x60, 0xa7, 0xa8, 0xad, 0xae, 0xd1, 0xd2, 0xd3][(v >> 20) as usize % 9],
                _ => byte,
            };
            match v % 11 {
                0..=2 => {
                    // Everything but a reset pulse: count resets separately.
                    r.command(command);
                }
                3..=5 => r.data(byte),
                6 | 7 => {
                    r.read_data();
                }
                8 => {
                    r.status();
                }
                9 => {
                    let key = Key::ALL[(v >> 24) as usize % Key::ALL.len()];
                    let _ = if v & 1 << 40 != 0 {
                        input.press(key)
                    } else {
                        input.release(key)
                    };
                }
                _ => {
                    let _ = input.mouse_motion(
                        (v >> 24) as i16 as i32 * 64,
                        (v >> 40) as i16 as i32,
                        (v >> 56) as i8 as i32,
                        MouseButtons {
                            left: v & 1 != 0,
                            right: v & 2 != 0,
                            middle: v & 4 != 0,
                        },
                    );
                }
            }
            let state = lock(&r.dev.shared.state);
            assert!(state.replies.len() <= MAX_REPLIES);
            assert!(state.keyboard.queued() <= 256);
            assert!(state.mouse.queued() <= 340);
        }
        // Whatever state the guest left, the controller still answers a self test once
        // it is drained (a pending command is cancelled by the new command).
        let _ = r.drain();
        r.command(0xaa);
        let got = r.drain_bytes();
        assert_eq!(got.first(), Some(&0x55), "seed {seed}: {got:02x?}");
    }
}

#[test]
fn garbage_on_every_offset_is_harmless() {
    let mut r = Rig::new();
    for value in 0..=255u8 {
        for offset in 0..8 {
            r.dev.write(0x60, offset, &[value, value]);
            let mut wide = [0u8; 8];
            r.dev.read(0x60, offset, &mut wide);
            r.dev.write(0x60, offset, &[]);
            r.dev.read(0x60, offset, &mut []);
        }
    }
}
