//! A PS/2 (MF2) keyboard: the commands a host sends it and the set 2 scancodes it sends
//! back.
//!
//! The keyboard always works in scancode set 2; the controller translates to set 1 when
//! its configuration asks for it (bit 6 of the configuration byte). Asking for set 1 or 3 is
//! refused with "resend" (`FE`), which Linux's `atkbd` takes as "stay in set 2".
//!
//! Unlike a real keyboard, this one does not scan keys from power-on but only once the
//! guest's driver (or firmware) has enabled it with `F4`, `F6` or a reset `FF`: host input
//! typed before a driver exists would pile up in the queue, and Linux's i8042 probe
//! declares the controller absent when it has more than 16 bytes to flush.
//!
//! Host keys are pressed and released as keys, not bytes: while the host holds a key whose
//! make code the keyboard queued, room for its break code stays free in the queue, so a key
//! the guest saw go down always comes up, however far behind the guest is (otherwise a
//! dropped break would leave the key held and the guest's auto-repeat typing it for ever).
//!
//! Typematic repeat is the host's job: the keyboard stores the rate and delay the guest
//! sets with `F3` (see [`Keyboard::typematic`]) but does not repeat a held key by itself;
//! the host sends the key's make code again (another [`super::Ps2Input::press`]) for each
//! repeat, as a real keyboard would.

use super::keys::Key;
use super::queue::ByteQueue;

/// Acknowledge.
pub const ACK: u8 = 0xfa;
/// Resend: the command or parameter was not understood.
pub const RESEND: u8 = 0xfe;
/// Basic assurance test passed (after a reset).
const BAT_OK: u8 = 0xaa;
/// Set 2's "buffer overrun" code (the controller's translation turns it into set 1's FF).
pub const OVERRUN: u8 = 0x00;
/// The MF2 keyboard's identity.
const ID: [u8; 2] = [0xab, 0x83];
/// Typematic default: 10.9 characters per second after 500 ms.
const DEFAULT_TYPEMATIC: u8 = 0x2b;
/// How many bytes the keyboard holds for the controller. A real keyboard holds 16 keys;
/// this one takes more because the host may send a burst (typed text) faster than a
/// guest reads it.
const QUEUE_BYTES: usize = 256;

const CMD_SET_LEDS: u8 = 0xed;
const CMD_ECHO: u8 = 0xee;
const CMD_SCANCODE_SET: u8 = 0xf0;
const CMD_IDENTIFY: u8 = 0xf2;
const CMD_TYPEMATIC: u8 = 0xf3;
const CMD_ENABLE: u8 = 0xf4;
const CMD_DISABLE: u8 = 0xf5;
const CMD_DEFAULTS: u8 = 0xf6;
const CMD_RESEND: u8 = 0xfe;
const CMD_RESET: u8 = 0xff;

/// The keyboard's three lock lights, as the guest last set them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyboardLeds {
    /// Scroll Lock.
    pub scroll_lock: bool,
    /// Num Lock.
    pub num_lock: bool,
    /// Caps Lock.
    pub caps_lock: bool,
}

impl KeyboardLeds {
    fn from_byte(byte: u8) -> Self {
        KeyboardLeds {
            scroll_lock: byte & 1 != 0,
            num_lock: byte & 2 != 0,
            caps_lock: byte & 4 != 0,
        }
    }
}

/// The parameter a command is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Leds,
    Typematic,
    ScancodeSet,
}

/// A PS/2 keyboard.
#[derive(Debug)]
pub struct Keyboard {
    queue: ByteQueue,
    awaiting: Option<Awaiting>,
    scanning: bool,
    leds: KeyboardLeds,
    typematic: u8,
    /// The last byte sent, for the resend command.
    last_sent: u8,
    /// Keys the host holds whose make code was queued and break code not yet: the queue
    /// keeps room for their break codes.
    held: Vec<Key>,
}

impl Default for Keyboard {
    fn default() -> Self {
        Keyboard {
            queue: ByteQueue::new(QUEUE_BYTES),
            awaiting: None,
            // See the module documentation: no scanning until a driver enables it.
            scanning: false,
            leds: KeyboardLeds::default(),
            typematic: DEFAULT_TYPEMATIC,
            last_sent: ACK,
            held: Vec::new(),
        }
    }
}

impl Keyboard {
    /// The next byte for the controller.
    pub fn pop(&mut self) -> Option<u8> {
        let byte = self.queue.pop()?;
        self.last_sent = byte;
        Some(byte)
    }

    /// Bytes waiting for the controller.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The lock lights.
    pub fn leds(&self) -> KeyboardLeds {
        self.leds
    }

    /// The typematic byte last set: bits 0-4 rate, bits 5-6 delay.
    pub fn typematic(&self) -> u8 {
        self.typematic
    }

    /// Whether the keyboard reports keys (enabled with `F4`, `F6` or `FF`; `F5` disables).
    pub fn scanning(&self) -> bool {
        self.scanning
    }

    /// Queue room kept for the break codes of the keys the host holds.
    fn reserved(&self) -> usize {
        self.held
            .iter()
            .map(|key| key.break_code().as_slice().len())
            .sum()
    }

    /// The host pressed `key` (or repeats it while it is held): queues its make code if it
    /// fits with room left for the break codes of every held key, this one included, and
    /// for the overrun code. Returns false, and queues the overrun code instead when there
    /// is room for it, if not.
    pub fn press(&mut self, key: Key) -> bool {
        let held = self.held.contains(&key);
        let own_break = key.break_code().as_slice().len();
        let queued = self.queue.push_or_overrun(
            key.make().as_slice(),
            OVERRUN,
            self.reserved(),
            if held { 0 } else { own_break },
        );
        if queued && !held && own_break > 0 {
            self.held.push(key);
        }
        queued
    }

    /// The host released `key`: queues its break code, which always fits when the key's
    /// press was queued. The break of a key whose press was not queued (the queue was full,
    /// or the guest cleared it since) is queued only if it fits, as for a press.
    pub fn release(&mut self, key: Key) -> bool {
        let bytes = key.break_code();
        if let Some(at) = self.held.iter().position(|&k| k == key) {
            self.held.swap_remove(at);
            // The room was kept for it.
            let queued = self.queue.push_all(bytes.as_slice());
            debug_assert!(queued, "the break code of a held key always fits");
            return queued;
        }
        self.queue
            .push_or_overrun(bytes.as_slice(), OVERRUN, self.reserved(), 0)
    }

    /// Drops every queued byte (and so the room kept for break codes: a key released
    /// later sends its break if it fits).
    fn clear(&mut self) {
        self.queue.clear();
        self.held.clear();
    }

    fn reply(&mut self, bytes: &[u8]) {
        // A reply that does not fit beside the room kept for break codes (a guest that
        // sends commands and never reads) is dropped; the keyboard queue stays bounded.
        if self.queue.room() < bytes.len() + self.reserved() || !self.queue.push_all(bytes) {
            tracing::debug!("ps/2 keyboard: reply {bytes:02x?} dropped, queue full");
        }
    }

    fn set_defaults(&mut self) {
        self.typematic = DEFAULT_TYPEMATIC;
    }

    /// A byte from the host (through the controller's data port).
    pub fn write(&mut self, byte: u8) {
        // A command byte in place of a parameter abandons the command that waited for it.
        if let Some(awaiting) = self.awaiting.take()
            && byte < CMD_SET_LEDS
        {
            self.parameter(awaiting, byte);
            return;
        }
        self.command(byte);
    }

    fn parameter(&mut self, awaiting: Awaiting, byte: u8) {
        match awaiting {
            Awaiting::Leds => {
                self.leds = KeyboardLeds::from_byte(byte);
                self.reply(&[ACK]);
            }
            Awaiting::Typematic => {
                self.typematic = byte & 0x7f;
                self.reply(&[ACK]);
            }
            Awaiting::ScancodeSet => match byte {
                // Query: acknowledge the parameter, then name the set.
                0 => self.reply(&[ACK, 2]),
                2 => self.reply(&[ACK]),
                // Sets 1 and 3 are not implemented: refuse, the keyboard stays in set 2.
                _ => self.reply(&[RESEND]),
            },
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            CMD_SET_LEDS => {
                self.awaiting = Some(Awaiting::Leds);
                self.reply(&[ACK]);
            }
            CMD_ECHO => self.reply(&[CMD_ECHO]),
            CMD_SCANCODE_SET => {
                self.awaiting = Some(Awaiting::ScancodeSet);
                self.reply(&[ACK]);
            }
            CMD_IDENTIFY => self.reply(&[ACK, ID[0], ID[1]]),
            CMD_TYPEMATIC => {
                self.awaiting = Some(Awaiting::Typematic);
                self.reply(&[ACK]);
            }
            CMD_ENABLE => {
                self.clear();
                self.scanning = true;
                self.reply(&[ACK]);
            }
            CMD_DISABLE => {
                self.clear();
                self.set_defaults();
                self.scanning = false;
                self.reply(&[ACK]);
            }
            CMD_DEFAULTS => {
                self.clear();
                self.set_defaults();
                self.scanning = true;
                self.reply(&[ACK]);
            }
            CMD_RESEND => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            CMD_RESET => {
                self.clear();
                self.set_defaults();
                self.leds = KeyboardLeds::default();
                self.scanning = true;
                self.reply(&[ACK, BAT_OK]);
            }
            // F7-FD are set 3 commands; anything else is not a command at all.
            _ => self.reply(&[RESEND]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(kbd: &mut Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| kbd.pop()).collect()
    }

    fn send(kbd: &mut Keyboard, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            kbd.write(b);
        }
        drain(kbd)
    }

    #[test]
    fn commands_answer_as_an_mf2_keyboard() {
        let mut k = Keyboard::default();
        assert_eq!(send(&mut k, &[0xff]), [ACK, 0xaa]);
        assert_eq!(send(&mut k, &[0xf2]), [ACK, 0xab, 0x83]);
        assert_eq!(send(&mut k, &[0xed, 0x06]), [ACK, ACK]);
        assert_eq!(
            k.leds(),
            KeyboardLeds {
                scroll_lock: false,
                num_lock: true,
                caps_lock: true
            }
        );
        assert_eq!(send(&mut k, &[0xf3, 0x20]), [ACK, ACK]);
        assert_eq!(k.typematic(), 0x20);
        assert_eq!(send(&mut k, &[0xee]), [0xee]);
        assert_eq!(send(&mut k, &[0xf0, 0x00]), [ACK, ACK, 0x02]);
        assert_eq!(send(&mut k, &[0xf0, 0x02]), [ACK, ACK]);
        assert_eq!(send(&mut k, &[0xf0, 0x03]), [ACK, RESEND]);
        assert_eq!(send(&mut k, &[0xf0, 0x01]), [ACK, RESEND]);
        assert_eq!(send(&mut k, &[0xf5]), [ACK]);
        assert!(!k.scanning());
        assert_eq!(k.typematic(), DEFAULT_TYPEMATIC);
        assert_eq!(send(&mut k, &[0xf4]), [ACK]);
        assert!(k.scanning());
        assert_eq!(send(&mut k, &[0xf6]), [ACK]);
        assert_eq!(send(&mut k, &[0xfe]), [ACK], "resend repeats the last byte");
        for unknown in [0x00, 0x42, 0xec, 0xf7, 0xfa, 0xfd] {
            assert_eq!(send(&mut k, &[unknown]), [RESEND], "{unknown:#x}");
        }
        // A command instead of a parameter replaces the pending one.
        assert_eq!(send(&mut k, &[0xed, 0xf2]), [ACK, ACK, 0xab, 0x83]);
        assert_eq!(send(&mut k, &[0x02]), [RESEND], "no LED command pending");
        assert_eq!(send(&mut k, &[0xff]), [ACK, 0xaa]);
        assert_eq!(k.leds(), KeyboardLeds::default(), "reset clears the LEDs");
    }

    #[test]
    fn reset_and_disable_drop_pending_keys() {
        let mut k = Keyboard::default();
        assert!(!k.scanning(), "no scanning before a driver enables it");
        assert_eq!(send(&mut k, &[0xf4]), [ACK]);
        assert!(k.press(Key::KeyA) && k.release(Key::KeyA));
        assert_eq!(send(&mut k, &[0xf5]), [ACK]);
        assert!(k.press(Key::KeyA));
        assert_eq!(send(&mut k, &[0xff]), [ACK, 0xaa]);
        // The reset dropped the make, and the room kept for the break: the release still
        // sends it.
        assert!(k.release(Key::KeyA));
        assert_eq!(drain(&mut k), [0xf0, 0x1c]);
    }

    #[test]
    fn a_full_queue_ends_with_one_overrun_code() {
        let mut k = Keyboard::default();
        send(&mut k, &[0xf4]);
        let mut accepted = 0;
        for _ in 0..QUEUE_BYTES {
            if k.press(Key::KeyA) && k.release(Key::KeyA) {
                accepted += 1;
            }
        }
        assert_eq!(accepted, (QUEUE_BYTES - 1) / 3);
        assert!(k.queued() <= QUEUE_BYTES);
        let bytes = drain(&mut k);
        assert_eq!(bytes.last(), Some(&OVERRUN));
        assert_eq!(bytes.iter().filter(|&&b| b == OVERRUN).count(), 1);
    }

    #[test]
    fn a_key_the_guest_saw_go_down_always_comes_up() {
        let mut k = Keyboard::default();
        send(&mut k, &[0xf4]);
        // Shift and the arrow keys go down, then far more keys than fit are typed while
        // the guest reads nothing.
        assert!(k.press(Key::ShiftLeft));
        assert!(k.press(Key::ArrowUp));
        let mut refused = 0;
        for _ in 0..QUEUE_BYTES {
            let pressed = k.press(Key::KeyX);
            let released = k.release(Key::KeyX);
            assert_eq!(pressed, released, "an X that went down came up");
            refused += usize::from(!pressed);
        }
        assert!(refused > 0);
        // A guest command's reply fits beside the kept room.
        k.write(0xee);
        // The held keys come up: their break codes fit.
        assert!(k.release(Key::ArrowUp));
        assert!(k.release(Key::ShiftLeft));
        let bytes = drain(&mut k);
        assert!(bytes.len() <= QUEUE_BYTES);
        assert!(
            bytes.ends_with(&[0xe0, 0xf0, 0x75, 0xf0, 0x12]),
            "{bytes:02x?}"
        );
        assert_eq!(bytes.iter().filter(|&&b| b == OVERRUN).count(), 1);
        // Shift and Up first, then whole X strokes (every make has its break), the
        // overrun code, the echo, and the held keys' breaks.
        assert_eq!(bytes[..3], [0x12, 0xe0, 0x75]);
        let strokes = &bytes[3..bytes.len() - 7];
        assert!(!strokes.is_empty() && strokes.len().is_multiple_of(3));
        assert!(strokes.chunks(3).all(|c| c == [0x22, 0xf0, 0x22]));
        assert_eq!(bytes[bytes.len() - 7..bytes.len() - 5], [OVERRUN, 0xee]);
    }
}
