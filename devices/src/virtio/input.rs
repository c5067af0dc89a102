//! virtio-input (virtio 1.x, spec section 5.8): a keyboard or an absolute tablet, the
//! host's keys and pointer for guests without PS/2 (aarch64) and a pointer that needs no
//! grab for any guest.
//!
//! One type, [`Input`], in two flavours ([`InputKind`]):
//! * **Keyboard**: `EV_KEY` with the Linux key code of every [`Key`] (the keys of
//!   `vivarium_core::input::KeyCode`, which the VMM maps to [`Key`] as it does for PS/2),
//!   `EV_REP` (the guest repeats held keys itself), `EV_LED` (Num, Caps and Scroll Lock,
//!   which the guest sets through the status queue) and `EV_SYN`.
//! * **Tablet**: `EV_ABS` `ABS_X`/`ABS_Y` over 0..=[`ABS_MAX`], `EV_KEY` `BTN_LEFT`,
//!   `BTN_RIGHT`, `BTN_MIDDLE`, `EV_REL` `REL_WHEEL` and `EV_SYN`. No input property is set,
//!   so Linux (udev, libinput) takes it for an absolute mouse, not a touchscreen.
//!
//! The configuration space answers the driver's select/subsel protocol as Linux's
//! `virtio_input` driver asks it at probe: it writes `select` and `subsel`, reads `size`,
//! then that many bytes of the union at offset 8 (`ID_NAME`, `ID_SERIAL`, `ID_DEVIDS`,
//! `PROP_BITS`, `EV_BITS` per event type, `ABS_INFO` per axis). A selection the device has
//! nothing for reads `size` 0.
//!
//! The host sends input through an [`InputSender`] (cheap to clone, usable from any
//! thread while a vCPU thread serves the queues). Each host action becomes one report:
//! its events and an `EV_SYN`/`SYN_REPORT`, each event in one buffer of the event queue
//! (queue 0). A report goes whole or not at all: when the guest has fewer free buffers
//! than it needs, or no driver is running, it is dropped and counted ([`InputStats`]) and
//! the caller gets a [`SendError`]; nothing ever waits for the guest. A dropped release
//! of a key or button the guest holds down is not forgotten: it is owed, and delivered
//! before anything else as soon as buffers are there (at the next action, or when the guest
//! posts buffers), so the guest never keeps a key stuck down. The status queue (queue 1)
//! carries the guest's LED changes; its buffers are read and returned.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_bindings::virtio_input as vi;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::{VirtioDevice, VirtioInterrupt, check_ring_layout, collect_chain, process_available};
use crate::i8042::{Key, KeyboardLeds, MouseButtons};
use crate::{Error, GuestMemoryMmap, Result};

/// Virtio device ID of an input device.
pub const VIRTIO_ID_INPUT: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_INPUT;
/// Entries of each queue (Linux posts at most 64 event buffers).
pub const QUEUE_SIZE: u16 = 64;
/// Bytes of the configuration space: select, subsel, size, 5 reserved, a 128-byte union.
pub const CONFIG_LEN: usize = 136;
/// The largest `ABS_X`/`ABS_Y` value of the tablet (its range starts at 0).
pub const ABS_MAX: u32 = 32767;
/// The host's pointer positions are fractions of the screen in these units: 0 is the left
/// (top) edge, `POSITION_MAX` the right (bottom) one.
pub const POSITION_MAX: u16 = u16::MAX;

/// Index of the event queue.
const EVENTQ: usize = 0;
/// Index of the status queue.
const STATUSQ: usize = 1;
/// Bytes of one `virtio_input_event` (le16 type, le16 code, le32 value).
const EVENT_LEN: usize = 8;
/// Offset of the union in the configuration space.
const UNION: usize = 8;
/// Most descriptors in one event or status buffer.
const MAX_CHAIN: usize = 4;
/// Key and button codes the device tracks (Linux's `KEY_CNT`).
const KEY_CNT: usize = 0x300;

/// The Linux input event types and codes this device uses (`linux/input-event-codes.h`,
/// a stable ABI), and `BUS_VIRTUAL` of `linux/input.h`.
#[allow(missing_docs)]
pub mod codes {
    pub const EV_SYN: u16 = 0x00;
    pub const EV_KEY: u16 = 0x01;
    pub const EV_REL: u16 = 0x02;
    pub const EV_ABS: u16 = 0x03;
    pub const EV_LED: u16 = 0x11;
    pub const EV_REP: u16 = 0x14;
    pub const SYN_REPORT: u16 = 0;
    pub const REL_WHEEL: u16 = 0x08;
    pub const ABS_X: u16 = 0x00;
    pub const ABS_Y: u16 = 0x01;
    pub const LED_NUML: u16 = 0x00;
    pub const LED_CAPSL: u16 = 0x01;
    pub const LED_SCROLLL: u16 = 0x02;
    pub const REP_DELAY: u16 = 0x00;
    pub const REP_PERIOD: u16 = 0x01;
    pub const BTN_LEFT: u16 = 0x110;
    pub const BTN_RIGHT: u16 = 0x111;
    pub const BTN_MIDDLE: u16 = 0x112;
    pub const BUS_VIRTUAL: u16 = 0x06;

    pub const KEY_ESC: u16 = 1;
    pub const KEY_1: u16 = 2;
    pub const KEY_2: u16 = 3;
    pub const KEY_3: u16 = 4;
    pub const KEY_4: u16 = 5;
    pub const KEY_5: u16 = 6;
    pub const KEY_6: u16 = 7;
    pub const KEY_7: u16 = 8;
    pub const KEY_8: u16 = 9;
    pub const KEY_9: u16 = 10;
    pub const KEY_0: u16 = 11;
    pub const KEY_MINUS: u16 = 12;
    pub const KEY_EQUAL: u16 = 13;
    pub const KEY_BACKSPACE: u16 = 14;
    pub const KEY_TAB: u16 = 15;
    pub const KEY_Q: u16 = 16;
    pub const KEY_W: u16 = 17;
    pub const KEY_E: u16 = 18;
    pub const KEY_R: u16 = 19;
    pub const KEY_T: u16 = 20;
    pub const KEY_Y: u16 = 21;
    pub const KEY_U: u16 = 22;
    pub const KEY_I: u16 = 23;
    pub const KEY_O: u16 = 24;
    pub const KEY_P: u16 = 25;
    pub const KEY_LEFTBRACE: u16 = 26;
    pub const KEY_RIGHTBRACE: u16 = 27;
    pub const KEY_ENTER: u16 = 28;
    pub const KEY_LEFTCTRL: u16 = 29;
    pub const KEY_A: u16 = 30;
    pub const KEY_S: u16 = 31;
    pub const KEY_D: u16 = 32;
    pub const KEY_F: u16 = 33;
    pub const KEY_G: u16 = 34;
    pub const KEY_H: u16 = 35;
    pub const KEY_J: u16 = 36;
    pub const KEY_K: u16 = 37;
    pub const KEY_L: u16 = 38;
    pub const KEY_SEMICOLON: u16 = 39;
    pub const KEY_APOSTROPHE: u16 = 40;
    pub const KEY_GRAVE: u16 = 41;
    pub const KEY_LEFTSHIFT: u16 = 42;
    pub const KEY_BACKSLASH: u16 = 43;
    pub const KEY_Z: u16 = 44;
    pub const KEY_X: u16 = 45;
    pub const KEY_C: u16 = 46;
    pub const KEY_V: u16 = 47;
    pub const KEY_B: u16 = 48;
    pub const KEY_N: u16 = 49;
    pub const KEY_M: u16 = 50;
    pub const KEY_COMMA: u16 = 51;
    pub const KEY_DOT: u16 = 52;
    pub const KEY_SLASH: u16 = 53;
    pub const KEY_RIGHTSHIFT: u16 = 54;
    pub const KEY_KPASTERISK: u16 = 55;
    pub const KEY_LEFTALT: u16 = 56;
    pub const KEY_SPACE: u16 = 57;
    pub const KEY_CAPSLOCK: u16 = 58;
    pub const KEY_F1: u16 = 59;
    pub const KEY_F2: u16 = 60;
    pub const KEY_F3: u16 = 61;
    pub const KEY_F4: u16 = 62;
    pub const KEY_F5: u16 = 63;
    pub const KEY_F6: u16 = 64;
    pub const KEY_F7: u16 = 65;
    pub const KEY_F8: u16 = 66;
    pub const KEY_F9: u16 = 67;
    pub const KEY_F10: u16 = 68;
    pub const KEY_NUMLOCK: u16 = 69;
    pub const KEY_SCROLLLOCK: u16 = 70;
    pub const KEY_KP7: u16 = 71;
    pub const KEY_KP8: u16 = 72;
    pub const KEY_KP9: u16 = 73;
    pub const KEY_KPMINUS: u16 = 74;
    pub const KEY_KP4: u16 = 75;
    pub const KEY_KP5: u16 = 76;
    pub const KEY_KP6: u16 = 77;
    pub const KEY_KPPLUS: u16 = 78;
    pub const KEY_KP1: u16 = 79;
    pub const KEY_KP2: u16 = 80;
    pub const KEY_KP3: u16 = 81;
    pub const KEY_KP0: u16 = 82;
    pub const KEY_KPDOT: u16 = 83;
    pub const KEY_102ND: u16 = 86;
    pub const KEY_F11: u16 = 87;
    pub const KEY_F12: u16 = 88;
    pub const KEY_RO: u16 = 89;
    pub const KEY_HENKAN: u16 = 92;
    pub const KEY_KATAKANAHIRAGANA: u16 = 93;
    pub const KEY_MUHENKAN: u16 = 94;
    pub const KEY_KPENTER: u16 = 96;
    pub const KEY_RIGHTCTRL: u16 = 97;
    pub const KEY_KPSLASH: u16 = 98;
    pub const KEY_SYSRQ: u16 = 99;
    pub const KEY_RIGHTALT: u16 = 100;
    pub const KEY_HOME: u16 = 102;
    pub const KEY_UP: u16 = 103;
    pub const KEY_PAGEUP: u16 = 104;
    pub const KEY_LEFT: u16 = 105;
    pub const KEY_RIGHT: u16 = 106;
    pub const KEY_END: u16 = 107;
    pub const KEY_DOWN: u16 = 108;
    pub const KEY_PAGEDOWN: u16 = 109;
    pub const KEY_INSERT: u16 = 110;
    pub const KEY_DELETE: u16 = 111;
    pub const KEY_MUTE: u16 = 113;
    pub const KEY_VOLUMEDOWN: u16 = 114;
    pub const KEY_VOLUMEUP: u16 = 115;
    pub const KEY_POWER: u16 = 116;
    pub const KEY_KPEQUAL: u16 = 117;
    pub const KEY_PAUSE: u16 = 119;
    pub const KEY_KPCOMMA: u16 = 121;
    pub const KEY_HANGEUL: u16 = 122;
    pub const KEY_HANJA: u16 = 123;
    pub const KEY_YEN: u16 = 124;
    pub const KEY_LEFTMETA: u16 = 125;
    pub const KEY_RIGHTMETA: u16 = 126;
    pub const KEY_COMPOSE: u16 = 127;
    pub const KEY_STOP: u16 = 128;
    pub const KEY_CALC: u16 = 140;
    pub const KEY_SLEEP: u16 = 142;
    pub const KEY_WAKEUP: u16 = 143;
    pub const KEY_MAIL: u16 = 155;
    pub const KEY_BOOKMARKS: u16 = 156;
    pub const KEY_COMPUTER: u16 = 157;
    pub const KEY_BACK: u16 = 158;
    pub const KEY_FORWARD: u16 = 159;
    pub const KEY_NEXTSONG: u16 = 163;
    pub const KEY_PLAYPAUSE: u16 = 164;
    pub const KEY_PREVIOUSSONG: u16 = 165;
    pub const KEY_STOPCD: u16 = 166;
    pub const KEY_CONFIG: u16 = 171;
    pub const KEY_HOMEPAGE: u16 = 172;
    pub const KEY_REFRESH: u16 = 173;
    pub const KEY_SEARCH: u16 = 217;
}

use codes::*;

/// The Linux key code (`KEY_*`) of the key at `key`'s position: what Linux reports for
/// that key of a PC keyboard. Exhaustive, so a key added to [`Key`] cannot be forgotten.
pub fn linux_key_code(key: Key) -> u16 {
    use Key as K;
    match key {
        K::Escape => KEY_ESC,
        K::F1 => KEY_F1,
        K::F2 => KEY_F2,
        K::F3 => KEY_F3,
        K::F4 => KEY_F4,
        K::F5 => KEY_F5,
        K::F6 => KEY_F6,
        K::F7 => KEY_F7,
        K::F8 => KEY_F8,
        K::F9 => KEY_F9,
        K::F10 => KEY_F10,
        K::F11 => KEY_F11,
        K::F12 => KEY_F12,
        K::PrintScreen => KEY_SYSRQ,
        K::ScrollLock => KEY_SCROLLLOCK,
        K::Pause => KEY_PAUSE,
        K::Backquote => KEY_GRAVE,
        K::Digit1 => KEY_1,
        K::Digit2 => KEY_2,
        K::Digit3 => KEY_3,
        K::Digit4 => KEY_4,
        K::Digit5 => KEY_5,
        K::Digit6 => KEY_6,
        K::Digit7 => KEY_7,
        K::Digit8 => KEY_8,
        K::Digit9 => KEY_9,
        K::Digit0 => KEY_0,
        K::Minus => KEY_MINUS,
        K::Equal => KEY_EQUAL,
        K::Backspace => KEY_BACKSPACE,
        K::Tab => KEY_TAB,
        K::KeyQ => KEY_Q,
        K::KeyW => KEY_W,
        K::KeyE => KEY_E,
        K::KeyR => KEY_R,
        K::KeyT => KEY_T,
        K::KeyY => KEY_Y,
        K::KeyU => KEY_U,
        K::KeyI => KEY_I,
        K::KeyO => KEY_O,
        K::KeyP => KEY_P,
        K::BracketLeft => KEY_LEFTBRACE,
        K::BracketRight => KEY_RIGHTBRACE,
        K::CapsLock => KEY_CAPSLOCK,
        K::KeyA => KEY_A,
        K::KeyS => KEY_S,
        K::KeyD => KEY_D,
        K::KeyF => KEY_F,
        K::KeyG => KEY_G,
        K::KeyH => KEY_H,
        K::KeyJ => KEY_J,
        K::KeyK => KEY_K,
        K::KeyL => KEY_L,
        K::Semicolon => KEY_SEMICOLON,
        K::Quote => KEY_APOSTROPHE,
        K::Backslash => KEY_BACKSLASH,
        K::Enter => KEY_ENTER,
        K::ShiftLeft => KEY_LEFTSHIFT,
        K::IntlBackslash => KEY_102ND,
        K::KeyZ => KEY_Z,
        K::KeyX => KEY_X,
        K::KeyC => KEY_C,
        K::KeyV => KEY_V,
        K::KeyB => KEY_B,
        K::KeyN => KEY_N,
        K::KeyM => KEY_M,
        K::Comma => KEY_COMMA,
        K::Period => KEY_DOT,
        K::Slash => KEY_SLASH,
        K::ShiftRight => KEY_RIGHTSHIFT,
        K::ControlLeft => KEY_LEFTCTRL,
        K::MetaLeft => KEY_LEFTMETA,
        K::AltLeft => KEY_LEFTALT,
        K::Space => KEY_SPACE,
        K::AltRight => KEY_RIGHTALT,
        K::MetaRight => KEY_RIGHTMETA,
        K::ContextMenu => KEY_COMPOSE,
        K::ControlRight => KEY_RIGHTCTRL,
        K::Insert => KEY_INSERT,
        K::Home => KEY_HOME,
        K::PageUp => KEY_PAGEUP,
        K::Delete => KEY_DELETE,
        K::End => KEY_END,
        K::PageDown => KEY_PAGEDOWN,
        K::ArrowUp => KEY_UP,
        K::ArrowLeft => KEY_LEFT,
        K::ArrowDown => KEY_DOWN,
        K::ArrowRight => KEY_RIGHT,
        K::NumLock => KEY_NUMLOCK,
        K::NumpadDivide => KEY_KPSLASH,
        K::NumpadMultiply => KEY_KPASTERISK,
        K::NumpadSubtract => KEY_KPMINUS,
        K::Numpad7 => KEY_KP7,
        K::Numpad8 => KEY_KP8,
        K::Numpad9 => KEY_KP9,
        K::NumpadAdd => KEY_KPPLUS,
        K::Numpad4 => KEY_KP4,
        K::Numpad5 => KEY_KP5,
        K::Numpad6 => KEY_KP6,
        K::Numpad1 => KEY_KP1,
        K::Numpad2 => KEY_KP2,
        K::Numpad3 => KEY_KP3,
        K::NumpadEnter => KEY_KPENTER,
        K::Numpad0 => KEY_KP0,
        K::NumpadDecimal => KEY_KPDOT,
        K::NumpadEqual => KEY_KPEQUAL,
        K::NumpadComma => KEY_KPCOMMA,
        K::IntlRo => KEY_RO,
        K::IntlYen => KEY_YEN,
        K::KanaMode => KEY_KATAKANAHIRAGANA,
        K::Convert => KEY_HENKAN,
        K::NonConvert => KEY_MUHENKAN,
        K::Lang1 => KEY_HANGEUL,
        K::Lang2 => KEY_HANJA,
        K::Power => KEY_POWER,
        K::Sleep => KEY_SLEEP,
        K::WakeUp => KEY_WAKEUP,
        K::AudioVolumeMute => KEY_MUTE,
        K::AudioVolumeDown => KEY_VOLUMEDOWN,
        K::AudioVolumeUp => KEY_VOLUMEUP,
        K::MediaPlayPause => KEY_PLAYPAUSE,
        K::MediaStop => KEY_STOPCD,
        K::MediaTrackNext => KEY_NEXTSONG,
        K::MediaTrackPrevious => KEY_PREVIOUSSONG,
        K::MediaSelect => KEY_CONFIG,
        K::BrowserBack => KEY_BACK,
        K::BrowserForward => KEY_FORWARD,
        K::BrowserRefresh => KEY_REFRESH,
        K::BrowserStop => KEY_STOP,
        K::BrowserSearch => KEY_SEARCH,
        K::BrowserFavorites => KEY_BOOKMARKS,
        K::BrowserHome => KEY_HOMEPAGE,
        K::LaunchMail => KEY_MAIL,
        K::LaunchApp1 => KEY_COMPUTER,
        K::LaunchApp2 => KEY_CALC,
    }
}

/// Which device an [`Input`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputKind {
    /// A keyboard: keys, auto-repeat, lock lights.
    Keyboard,
    /// An absolute pointer: position, three buttons, a wheel.
    Tablet,
}

impl InputKind {
    /// The name the guest sees (`VIRTIO_INPUT_CFG_ID_NAME`).
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Keyboard => "Vivarium Virtio Keyboard",
            InputKind::Tablet => "Vivarium Virtio Tablet",
        }
    }

    fn what(self) -> &'static str {
        match self {
            InputKind::Keyboard => "keyboard",
            InputKind::Tablet => "tablet",
        }
    }

    /// `VIRTIO_INPUT_CFG_ID_DEVIDS`' product number.
    fn product(self) -> u16 {
        match self {
            InputKind::Keyboard => 1,
            InputKind::Tablet => 2,
        }
    }

    /// The codes the device reports for event type `ty` (`VIRTIO_INPUT_CFG_EV_BITS`).
    fn codes(self, ty: u16) -> Vec<u16> {
        match (self, ty) {
            (_, EV_SYN) => vec![SYN_REPORT],
            (InputKind::Keyboard, EV_KEY) => Key::ALL.iter().map(|k| linux_key_code(*k)).collect(),
            (InputKind::Keyboard, EV_REP) => vec![REP_DELAY, REP_PERIOD],
            (InputKind::Keyboard, EV_LED) => vec![LED_NUML, LED_CAPSL, LED_SCROLLL],
            (InputKind::Tablet, EV_KEY) => vec![BTN_LEFT, BTN_RIGHT, BTN_MIDDLE],
            (InputKind::Tablet, EV_REL) => vec![REL_WHEEL],
            (InputKind::Tablet, EV_ABS) => vec![ABS_X, ABS_Y],
            _ => Vec::new(),
        }
    }
}

/// Why host input did not reach the guest. The input is dropped (and counted), never
/// queued: send it again later if it still matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The guest's driver has not started the device (or reset it).
    #[error(
        "the guest's virtio-input {0} driver is not running (not loaded yet, or it reset the device): the input was dropped"
    )]
    NotRunning(&'static str),
    /// The guest has fewer free event buffers than the input needs.
    #[error(
        "the guest is not reading its virtio-input {0} fast enough (no free event buffer): the input was dropped"
    )]
    NoBuffers(&'static str),
    /// The input is of a kind this device does not report (keys to a tablet, a pointer to
    /// a keyboard).
    #[error("a virtio-input {device} reports no {input}: the input was dropped")]
    Unsupported {
        /// This device.
        device: &'static str,
        /// What was sent to it.
        input: &'static str,
    },
}

/// Counters of what the device did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InputStats {
    /// Reports (events up to their `SYN_REPORT`) placed in the guest's buffers.
    pub reports: u64,
    /// Reports dropped: no driver, or not enough free buffers.
    pub dropped: u64,
    /// Event buffers the guest posted that could not hold an event (too short, read-only,
    /// malformed), returned unused.
    pub bad_buffers: u64,
    /// Events read from the status queue.
    pub status_events: u64,
}

/// One `virtio_input_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Event {
    ty: u16,
    code: u16,
    value: u32,
}

impl Event {
    fn new(ty: u16, code: u16, value: u32) -> Self {
        Event { ty, code, value }
    }

    fn bytes(self) -> [u8; EVENT_LEN] {
        let mut b = [0u8; EVENT_LEN];
        b[0..2].copy_from_slice(&self.ty.to_le_bytes());
        b[2..4].copy_from_slice(&self.code.to_le_bytes());
        b[4..8].copy_from_slice(&self.value.to_le_bytes());
        b
    }
}

/// A set of key or button codes below [`KEY_CNT`].
#[derive(Clone, Default, PartialEq, Eq)]
struct KeySet([u64; KEY_CNT / 64]);

impl KeySet {
    fn contains(&self, code: u16) -> bool {
        let code = usize::from(code);
        code < KEY_CNT && self.0[code / 64] & (1 << (code % 64)) != 0
    }

    fn set(&mut self, code: u16, on: bool) {
        let code = usize::from(code);
        if code >= KEY_CNT {
            return;
        }
        if on {
            self.0[code / 64] |= 1 << (code % 64);
        } else {
            self.0[code / 64] &= !(1 << (code % 64));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    fn codes(&self) -> impl Iterator<Item = u16> + '_ {
        (0..KEY_CNT as u16).filter(|c| self.contains(*c))
    }
}

/// The queues while the driver runs.
struct Active {
    memory: Arc<GuestMemoryMmap>,
    events: Queue,
    status: Option<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Why a report did not go.
enum Refused {
    NoBuffers,
    Broken(String),
}

/// The state the device and its senders share.
#[derive(Default)]
struct State {
    active: Option<Active>,
    /// Keys and buttons the guest was told are down.
    down: KeySet,
    /// Releases of keys in `down` that were dropped and are still to be delivered.
    owed: KeySet,
    leds: KeyboardLeds,
    stats: InputStats,
}

struct Shared {
    kind: InputKind,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

impl State {
    /// Delivers `events` and a `SYN_REPORT` as one report, or nothing.
    fn report(&mut self, events: &[Event]) -> std::result::Result<(), Refused> {
        let Some(active) = self.active.as_mut() else {
            return Err(Refused::NoBuffers);
        };
        let result = place(active, events, &mut self.stats);
        if let Err(Refused::Broken(why)) = &result {
            tracing::warn!("virtio-input: event queue broken ({why}); input off until reset");
            self.active = None;
        }
        result
    }

    /// Delivers the owed releases, if any. True when nothing is owed any more.
    fn pay_owed(&mut self) -> bool {
        if self.owed.is_empty() {
            return true;
        }
        let events: Vec<Event> = self
            .owed
            .codes()
            .map(|c| Event::new(EV_KEY, c, 0))
            .collect();
        if self.report(&events).is_err() {
            return false;
        }
        self.stats.reports += 1;
        for e in &events {
            self.down.set(e.code, false);
        }
        self.owed = KeySet::default();
        true
    }

    /// Sends one host action's events as a report: owed releases first, then these.
    /// Releases that cannot be delivered become owed.
    fn send(&mut self, kind: InputKind, events: &[Event]) -> std::result::Result<(), SendError> {
        if self.active.is_none() {
            self.stats.dropped += 1;
            return Err(SendError::NotRunning(kind.what()));
        }
        if events.is_empty() {
            self.pay_owed();
            return Ok(());
        }
        let delivered = self.pay_owed() && self.report(events).is_ok();
        if delivered {
            self.stats.reports += 1;
            for e in events.iter().filter(|e| e.ty == EV_KEY) {
                self.down.set(e.code, e.value != 0);
            }
            return Ok(());
        }
        self.stats.dropped += 1;
        for e in events.iter().filter(|e| e.ty == EV_KEY && e.value == 0) {
            if self.down.contains(e.code) {
                self.owed.set(e.code, true);
            }
        }
        if self.active.is_none() {
            // The queue broke while sending.
            return Err(SendError::NotRunning(kind.what()));
        }
        Err(SendError::NoBuffers(kind.what()))
    }
}

/// How many buffers the driver has made available and the device not yet taken.
fn free_buffers(queue: &Queue, mem: &GuestMemoryMmap) -> std::result::Result<u16, Refused> {
    let avail = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .map_err(|e| Refused::Broken(e.to_string()))?;
    let free = avail.0.wrapping_sub(queue.next_avail());
    if free > queue.size() {
        return Err(Refused::Broken(format!(
            "{free} buffers available in a queue of {}",
            queue.size()
        )));
    }
    Ok(free)
}

/// Places `events` and a `SYN_REPORT`, one per buffer of the event queue, if the driver has
/// posted buffers for all of them.
fn place(
    active: &mut Active,
    events: &[Event],
    stats: &mut InputStats,
) -> std::result::Result<(), Refused> {
    let memory = active.memory.clone();
    let mem = &*memory;
    let queue = &mut active.events;
    if !queue.ready() {
        return Err(Refused::NoBuffers);
    }
    if !queue.is_valid(mem) || check_ring_layout(queue).is_err() {
        return Err(Refused::Broken(
            "rings outside guest memory or overlapping".into(),
        ));
    }
    let needed = events.len() + 1;
    if usize::from(free_buffers(queue, mem)?) < needed {
        // Ask the driver to say when it posts more, then look once more.
        let broken = |e: virtio_queue::Error| Refused::Broken(e.to_string());
        queue.enable_notification(mem).map_err(broken)?;
        if usize::from(free_buffers(queue, mem)?) < needed {
            return Err(Refused::NoBuffers);
        }
    }
    let syn = Event::new(EV_SYN, SYN_REPORT, 0);
    let mut used = false;
    for event in events.iter().copied().chain(std::iter::once(syn)) {
        // Buffers that cannot hold an event go back unused; the event takes the next one.
        loop {
            let chain = queue
                .iter(mem)
                .map_err(|e| Refused::Broken(e.to_string()))?
                .next();
            let Some(chain) = chain else {
                // Only bad buffers were left: the report is cut short.
                return finish(active, used);
            };
            let head = chain.head_index();
            let written = write_event(mem, chain, event);
            if !written {
                stats.bad_buffers += 1;
            }
            queue
                .add_used(mem, head, if written { EVENT_LEN as u32 } else { 0 })
                .map_err(|e| Refused::Broken(e.to_string()))?;
            used = true;
            if written {
                break;
            }
        }
    }
    finish(active, used)
}

/// Interrupts the driver for the buffers just used, as the notification rules say.
fn finish(active: &mut Active, used: bool) -> std::result::Result<(), Refused> {
    if used
        && active
            .events
            .needs_notification(&*active.memory)
            .map_err(|e| Refused::Broken(e.to_string()))?
    {
        active.interrupt.signal_queue(EVENTQ);
    }
    Ok(())
}

/// Writes `event` into the device-writable buffers of `chain`; false when they cannot take
/// it (no room, a device-readable part, outside guest memory, a malformed chain).
fn write_event(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    event: Event,
) -> bool {
    let Ok(descriptors) = collect_chain(chain, MAX_CHAIN) else {
        return false;
    };
    if descriptors.iter().any(|d| !d.is_write_only()) {
        return false;
    }
    let room: u64 = descriptors.iter().map(|d| u64::from(d.len())).sum();
    if room < EVENT_LEN as u64 {
        return false;
    }
    let bytes = event.bytes();
    let mut done = 0usize;
    for d in &descriptors {
        if done == EVENT_LEN {
            break;
        }
        let n = (d.len() as usize).min(EVENT_LEN - done);
        if mem.write_slice(&bytes[done..done + n], d.addr()).is_err() {
            return false;
        }
        done += n;
    }
    true
}

/// Reads the event in a status buffer (device-readable parts, in order), if it holds one.
fn read_status(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Event> {
    let descriptors = collect_chain(chain, MAX_CHAIN).ok()?;
    let mut bytes = [0u8; EVENT_LEN];
    let mut done = 0usize;
    for d in descriptors.iter().filter(|d| !d.is_write_only()) {
        if done == EVENT_LEN {
            break;
        }
        let n = (d.len() as usize).min(EVENT_LEN - done);
        mem.read_slice(&mut bytes[done..done + n], d.addr()).ok()?;
        done += n;
    }
    (done == EVENT_LEN).then(|| Event {
        ty: u16::from_le_bytes([bytes[0], bytes[1]]),
        code: u16::from_le_bytes([bytes[2], bytes[3]]),
        value: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    })
}

/// A virtio-input device: a keyboard or a tablet.
pub struct Input {
    shared: Arc<Shared>,
    serial: String,
    select: u8,
    subsel: u8,
    /// The configuration space as the current selection makes it.
    config: [u8; CONFIG_LEN],
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("kind", &self.shared.kind)
            .field("select", &self.select)
            .field("subsel", &self.subsel)
            .field("stats", &self.shared.lock().stats)
            .finish()
    }
}

impl Input {
    /// A device of `kind` whose `ID_SERIAL` is `serial` (cut to 128 bytes).
    pub fn new(kind: InputKind, serial: &str) -> Self {
        let mut serial = serial.to_string();
        while serial.len() > 128 {
            serial.pop();
        }
        let mut input = Input {
            shared: Arc::new(Shared {
                kind,
                state: Mutex::new(State::default()),
            }),
            serial,
            select: 0,
            subsel: 0,
            config: [0; CONFIG_LEN],
        };
        input.answer();
        input
    }

    /// A keyboard.
    pub fn keyboard() -> Self {
        Self::new(InputKind::Keyboard, "vivarium-keyboard")
    }

    /// An absolute tablet.
    pub fn tablet() -> Self {
        Self::new(InputKind::Tablet, "vivarium-tablet")
    }

    /// Which device this is.
    pub fn kind(&self) -> InputKind {
        self.shared.kind
    }

    /// The handle through which the host sends input, from any thread.
    pub fn sender(&self) -> InputSender {
        InputSender {
            shared: Arc::clone(&self.shared),
        }
    }

    /// What the device did so far.
    pub fn stats(&self) -> InputStats {
        self.shared.lock().stats
    }

    /// Fills the configuration space for the current select/subsel.
    fn answer(&mut self) {
        let kind = self.shared.kind;
        let mut payload: Vec<u8> = Vec::new();
        let select = u32::from(self.select);
        let subsel = u16::from(self.subsel);
        if select == vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_NAME && subsel == 0 {
            payload.extend_from_slice(kind.name().as_bytes());
        } else if select == vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_SERIAL && subsel == 0
        {
            payload.extend_from_slice(self.serial.as_bytes());
        } else if select == vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_DEVIDS && subsel == 0
        {
            // bustype, vendor, product, version.
            for v in [BUS_VIRTUAL, 0, kind.product(), 1] {
                payload.extend_from_slice(&v.to_le_bytes());
            }
        } else if select == vi::virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS {
            for code in kind.codes(subsel) {
                let (byte, bit) = (usize::from(code / 8), code % 8);
                if payload.len() <= byte {
                    payload.resize(byte + 1, 0);
                }
                payload[byte] |= 1 << bit;
            }
        } else if select == vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ABS_INFO
            && kind == InputKind::Tablet
            && (subsel == ABS_X || subsel == ABS_Y)
        {
            // min, max, fuzz, flat, res.
            for v in [0, ABS_MAX, 0, 0, 0] {
                payload.extend_from_slice(&v.to_le_bytes());
            }
        }
        // PROP_BITS: no property. Anything else: nothing (size 0).
        payload.truncate(CONFIG_LEN - UNION);
        self.config = [0; CONFIG_LEN];
        self.config[0] = self.select;
        self.config[1] = self.subsel;
        self.config[2] = payload.len() as u8;
        self.config[UNION..UNION + payload.len()].copy_from_slice(&payload);
    }

    /// Reads the guest's LED changes from the status queue.
    fn process_status(&mut self) -> Result<bool> {
        let mut state = self.shared.lock();
        let Some(mut active) = state.active.take() else {
            return Ok(false);
        };
        let Some(mut queue) = active.status.take() else {
            state.active = Some(active);
            return Ok(false);
        };
        let mem = active.memory.clone();
        let mut events = Vec::new();
        let result = process_available(&mut queue, &mem, STATUSQ, &*active.interrupt, |chain| {
            if let Some(event) = read_status(&mem, chain) {
                events.push(event);
            }
            0
        });
        active.status = Some(queue);
        state.active = Some(active);
        state.stats.status_events += events.len() as u64;
        for event in events {
            if event.ty != EV_LED {
                continue;
            }
            let on = event.value != 0;
            match event.code {
                LED_NUML => state.leds.num_lock = on,
                LED_CAPSL => state.leds.caps_lock = on,
                LED_SCROLLL => state.leds.scroll_lock = on,
                _ => {}
            }
        }
        result
    }
}

impl VirtioDevice for Input {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_INPUT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only select (byte 0) and subsel (byte 1) are the driver's to write.
        for (i, byte) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(0) => self.select = *byte,
                Some(1) => self.subsel = *byte,
                _ => {}
            }
        }
        self.answer();
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Input device controller, other.
        (0x09, 0x80, 0x00)
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()> {
        let mut queues = queues.into_iter();
        let Some(events) = queues.next() else {
            return Err(Error::Activation(
                "virtio-input needs its event queue".into(),
            ));
        };
        let mut state = self.shared.lock();
        *state = State {
            stats: state.stats,
            ..State::default()
        };
        state.active = Some(Active {
            memory,
            events,
            status: queues.next(),
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<bool> {
        match index {
            EVENTQ => {
                // The guest posted event buffers: deliver what is owed.
                let mut state = self.shared.lock();
                let was_active = state.active.is_some();
                state.pay_owed();
                if was_active && state.active.is_none() {
                    return Err(Error::NeedsReset("virtio-input event queue broken".into()));
                }
                Ok(false)
            }
            STATUSQ => self.process_status(),
            _ => Ok(false),
        }
    }

    fn reset(&mut self) {
        let mut state = self.shared.lock();
        *state = State {
            stats: state.stats,
            ..State::default()
        };
    }
}

/// The host's side of a virtio-input device: cheap to clone, callable from any thread.
/// Every call is one report (see the module documentation) and never waits: what the guest
/// cannot take now is dropped, counted, and reported as a [`SendError`].
#[derive(Clone)]
pub struct InputSender {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for InputSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSender")
            .field("kind", &self.shared.kind)
            .finish_non_exhaustive()
    }
}

impl InputSender {
    /// Which device this handle feeds.
    pub fn kind(&self) -> InputKind {
        self.shared.kind
    }

    /// The key went down (`pressed`; again while down: a repeat, value 2) or up. Keyboards
    /// only. A release of a key the guest does not hold down has nothing to say and is not
    /// sent.
    pub fn key(&self, key: Key, pressed: bool) -> std::result::Result<(), SendError> {
        let kind = self.shared.kind;
        if kind != InputKind::Keyboard {
            return Err(SendError::Unsupported {
                device: kind.what(),
                input: "keys",
            });
        }
        let code = linux_key_code(key);
        let mut state = self.shared.lock();
        let held = state.down.contains(code) && !state.owed.contains(code);
        let events = match (pressed, held) {
            (true, true) => vec![Event::new(EV_KEY, code, 2)],
            (true, false) => vec![Event::new(EV_KEY, code, 1)],
            (false, true) => vec![Event::new(EV_KEY, code, 0)],
            (false, false) => Vec::new(),
        };
        state.send(kind, &events)
    }

    /// The pointer is at `position` (`(x, y)` as fractions of the screen in units of
    /// [`POSITION_MAX`]; `None`: where it was), with `buttons` down, and the wheel turned
    /// `wheel` detents up (away from the user; negative: down). Tablets only. Buttons are
    /// reported when they change.
    pub fn pointer(
        &self,
        position: Option<(u16, u16)>,
        buttons: MouseButtons,
        wheel: i32,
    ) -> std::result::Result<(), SendError> {
        let kind = self.shared.kind;
        if kind != InputKind::Tablet {
            return Err(SendError::Unsupported {
                device: kind.what(),
                input: "pointer",
            });
        }
        let scale = |v: u16| {
            (u32::from(v) * ABS_MAX + u32::from(POSITION_MAX) / 2) / u32::from(POSITION_MAX)
        };
        let mut events = Vec::new();
        if let Some((x, y)) = position {
            events.push(Event::new(EV_ABS, ABS_X, scale(x)));
            events.push(Event::new(EV_ABS, ABS_Y, scale(y)));
        }
        let mut state = self.shared.lock();
        for (code, down) in [
            (BTN_LEFT, buttons.left),
            (BTN_RIGHT, buttons.right),
            (BTN_MIDDLE, buttons.middle),
        ] {
            let held = state.down.contains(code) && !state.owed.contains(code);
            if held != down {
                events.push(Event::new(EV_KEY, code, u32::from(down)));
            }
        }
        if wheel != 0 {
            events.push(Event::new(EV_REL, REL_WHEEL, wheel as u32));
        }
        state.send(kind, &events)
    }

    /// The keyboard's lock lights as the guest last set them.
    pub fn leds(&self) -> KeyboardLeds {
        self.shared.lock().leds
    }

    /// What the device did so far.
    pub fn stats(&self) -> InputStats {
        self.shared.lock().stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::*;
    use std::sync::atomic::Ordering;
    use vm_memory::GuestAddress;

    /// Where the tests' event queue and its buffers live.
    const EVT_DESC: u64 = 0x1_0000;
    const EVT_AVAIL: u64 = 0x1_1000;
    const EVT_USED: u64 = 0x1_2000;
    const EVT_BUFS: u64 = 0x2_0000;
    const STS_DESC: u64 = 0x3_0000;
    const STS_AVAIL: u64 = 0x3_1000;
    const STS_USED: u64 = 0x3_2000;
    const STS_BUFS: u64 = 0x4_0000;

    fn make_queue(desc: u64, avail: u64, used: u64) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        q.set_desc_table_address(Some(desc as u32), Some(0));
        q.set_avail_ring_address(Some(avail as u32), Some(0));
        q.set_used_ring_address(Some(used as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// A driver's view of the two queues, as Linux's driver fills them.
    struct Driver {
        mem: Arc<GuestMemoryMmap>,
        irq: Arc<CountingInterrupt>,
        /// Event buffers posted so far (the avail index).
        posted: u16,
        /// Used entries read so far.
        seen: u16,
        status_posted: u16,
    }

    impl Driver {
        fn new(mem: Arc<GuestMemoryMmap>) -> Self {
            for base in [EVT_AVAIL, EVT_USED, STS_AVAIL, STS_USED] {
                mem.write_slice(&[0u8; 0x400], GuestAddress(base)).unwrap();
            }
            Driver {
                mem,
                irq: Arc::new(CountingInterrupt::default()),
                posted: 0,
                seen: 0,
                status_posted: 0,
            }
        }

        fn start(&self, dev: &mut Input) {
            let queues = vec![
                make_queue(EVT_DESC, EVT_AVAIL, EVT_USED),
                make_queue(STS_DESC, STS_AVAIL, STS_USED),
            ];
            dev.activate(self.mem.clone(), queues, 0, self.irq.clone())
                .unwrap();
        }

        /// Posts `n` 8-byte writable event buffers.
        fn post(&mut self, n: u16) {
            for _ in 0..n {
                let slot = self.posted % QUEUE_SIZE;
                let d = desc(EVT_BUFS + 8 * u64::from(slot), 8, F_WRITE, 0);
                self.mem
                    .write_obj(d, GuestAddress(EVT_DESC + 16 * u64::from(slot)))
                    .unwrap();
                self.mem
                    .write_obj(slot, GuestAddress(EVT_AVAIL + 4 + 2 * u64::from(slot)))
                    .unwrap();
                self.posted = self.posted.wrapping_add(1);
            }
            self.mem
                .write_obj(self.posted, GuestAddress(EVT_AVAIL + 2))
                .unwrap();
        }

        /// The events the device placed since the last call, as (type, code, value).
        fn events(&mut self) -> Vec<(u16, u16, i32)> {
            let idx: u16 = self.mem.read_obj(GuestAddress(EVT_USED + 2)).unwrap();
            let mut out = Vec::new();
            while self.seen != idx {
                let at = EVT_USED + 4 + 8 * u64::from(self.seen % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                assert_eq!(len, 8);
                let mut b = [0u8; 8];
                self.mem
                    .read_slice(&mut b, GuestAddress(EVT_BUFS + 8 * u64::from(id)))
                    .unwrap();
                out.push((
                    u16::from_le_bytes([b[0], b[1]]),
                    u16::from_le_bytes([b[2], b[3]]),
                    i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                ));
                self.seen = self.seen.wrapping_add(1);
            }
            out
        }

        /// Sends one status event on the status queue.
        fn status(&mut self, dev: &mut Input, ty: u16, code: u16, value: u32) {
            let slot = self.status_posted % QUEUE_SIZE;
            let buf = STS_BUFS + 8 * u64::from(slot);
            self.mem
                .write_slice(&Event::new(ty, code, value).bytes(), GuestAddress(buf))
                .unwrap();
            self.mem
                .write_obj(
                    desc(buf, 8, 0, 0),
                    GuestAddress(STS_DESC + 16 * u64::from(slot)),
                )
                .unwrap();
            self.mem
                .write_obj(slot, GuestAddress(STS_AVAIL + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.status_posted += 1;
            self.mem
                .write_obj(self.status_posted, GuestAddress(STS_AVAIL + 2))
                .unwrap();
            dev.process_queue(STATUSQ).unwrap();
        }
    }

    /// The configuration answer for (select, subsel): its size byte and its payload.
    fn ask(dev: &mut Input, select: u32, subsel: u16) -> Vec<u8> {
        // As Linux's virtio_cwrite_le: one byte each.
        dev.write_config(0, &[select as u8]);
        dev.write_config(1, &[subsel as u8]);
        let mut size = [0u8];
        dev.read_config(2, &mut size);
        let mut payload = vec![0u8; usize::from(size[0])];
        dev.read_config(UNION as u64, &mut payload);
        payload
    }

    fn bits(bitmap: &[u8]) -> Vec<u16> {
        (0..bitmap.len() * 8)
            .filter(|b| bitmap[b / 8] & (1 << (b % 8)) != 0)
            .map(|b| b as u16)
            .collect()
    }

    const NAME: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_NAME;
    const SERIAL: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_SERIAL;
    const DEVIDS: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ID_DEVIDS;
    const PROPS: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_PROP_BITS;
    const EVBITS: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_EV_BITS;
    const ABSINFO: u32 = vi::virtio_input_config_select_VIRTIO_INPUT_CFG_ABS_INFO;

    #[test]
    fn keyboard_config_answers_the_linux_probe() {
        let mut kbd = Input::keyboard();
        assert_eq!(kbd.device_type(), 18);
        assert_eq!(kbd.config_len(), 136);
        assert_eq!(ask(&mut kbd, NAME, 0), b"Vivarium Virtio Keyboard");
        assert_eq!(ask(&mut kbd, SERIAL, 0), b"vivarium-keyboard");
        assert_eq!(ask(&mut kbd, DEVIDS, 0), [6, 0, 0, 0, 1, 0, 1, 0]);
        assert!(ask(&mut kbd, PROPS, 0).is_empty());
        // EV_REP: any size turns on the guest's auto-repeat.
        assert_eq!(bits(&ask(&mut kbd, EVBITS, EV_REP)), [0, 1]);
        let keys = bits(&ask(&mut kbd, EVBITS, EV_KEY));
        assert_eq!(keys.len(), Key::ALL.len(), "every key has its own code");
        assert!(keys.contains(&KEY_A) && keys.contains(&KEY_SEARCH));
        assert!(!keys.contains(&BTN_LEFT));
        assert_eq!(bits(&ask(&mut kbd, EVBITS, EV_LED)), [0, 1, 2]);
        assert_eq!(bits(&ask(&mut kbd, EVBITS, EV_SYN)), [0]);
        for ty in [EV_REL, EV_ABS, 0x04, 0x05, 0x12, 0xff] {
            assert!(ask(&mut kbd, EVBITS, ty).is_empty(), "type {ty:#x}");
        }
        assert!(ask(&mut kbd, ABSINFO, ABS_X).is_empty());
        // Unknown selections, and subsel on the ID strings, read size 0.
        for (select, subsel) in [(0, 0), (NAME, 1), (4, 0), (0x13, 0), (0xff, 0xff)] {
            assert!(
                ask(&mut kbd, select, subsel).is_empty(),
                "{select:#x}/{subsel}"
            );
        }
        // Reading back select and subsel.
        let mut b = [0u8; 2];
        kbd.write_config(0, &[EVBITS as u8, EV_KEY as u8]);
        kbd.read_config(0, &mut b);
        assert_eq!(b, [EVBITS as u8, 1]);
    }

    #[test]
    fn tablet_config_answers_the_linux_probe() {
        let mut tab = Input::tablet();
        assert_eq!(ask(&mut tab, NAME, 0), b"Vivarium Virtio Tablet");
        assert_eq!(ask(&mut tab, DEVIDS, 0), [6, 0, 0, 0, 2, 0, 1, 0]);
        assert!(ask(&mut tab, PROPS, 0).is_empty(), "not a touchscreen");
        assert_eq!(
            bits(&ask(&mut tab, EVBITS, EV_KEY)),
            [BTN_LEFT, BTN_RIGHT, BTN_MIDDLE]
        );
        assert_eq!(bits(&ask(&mut tab, EVBITS, EV_REL)), [REL_WHEEL]);
        assert_eq!(bits(&ask(&mut tab, EVBITS, EV_ABS)), [ABS_X, ABS_Y]);
        assert!(ask(&mut tab, EVBITS, EV_REP).is_empty());
        assert!(ask(&mut tab, EVBITS, EV_LED).is_empty());
        for axis in [ABS_X, ABS_Y] {
            let info = ask(&mut tab, ABSINFO, axis);
            let word = |i: usize| u32::from_le_bytes(info[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(info.len(), 20);
            assert_eq!(
                (word(0), word(1), word(2), word(3), word(4)),
                (0, 32767, 0, 0, 0)
            );
        }
        assert!(ask(&mut tab, ABSINFO, 2).is_empty());
        // Garbage writes past select/subsel change nothing and never panic.
        tab.write_config(2, &[0xff; 200]);
        tab.write_config(u64::MAX, &[1, 2]);
        let mut big = [0xaau8; 300];
        tab.read_config(0, &mut big);
        assert!(big[CONFIG_LEN..].iter().all(|b| *b == 0));
        tab.read_config(u64::MAX - 1, &mut big[..4]);
        assert_eq!(big[..4], [0; 4]);
    }

    #[test]
    fn linux_key_codes_match_the_kernel_header() {
        // Spot checks against linux/input-event-codes.h.
        for (key, code) in [
            (Key::Escape, 1),
            (Key::KeyQ, 16),
            (Key::Enter, 28),
            (Key::KeyA, 30),
            (Key::Space, 57),
            (Key::F12, 88),
            (Key::PrintScreen, 99),
            (Key::ArrowUp, 103),
            (Key::Delete, 111),
            (Key::MetaLeft, 125),
            (Key::ContextMenu, 127),
            (Key::IntlBackslash, 86),
        ] {
            assert_eq!(linux_key_code(key), code, "{key:?}");
        }
        let mut codes: Vec<u16> = Key::ALL.iter().map(|k| linux_key_code(*k)).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Key::ALL.len(), "no two keys share a code");
        assert!(codes.iter().all(|c| *c != 0 && usize::from(*c) < KEY_CNT));
    }

    #[test]
    fn keys_become_reports_with_repeat_and_syn() {
        let mem = memory();
        let mut kbd = Input::keyboard();
        let mut drv = Driver::new(mem);
        drv.start(&mut kbd);
        drv.post(64);
        let keys = kbd.sender();
        keys.key(Key::KeyA, true).unwrap();
        keys.key(Key::KeyA, true).unwrap();
        keys.key(Key::KeyA, false).unwrap();
        // A release of a key that is not down says nothing.
        keys.key(Key::KeyB, false).unwrap();
        assert_eq!(
            drv.events(),
            [
                (EV_KEY, KEY_A, 1),
                (EV_SYN, SYN_REPORT, 0),
                (EV_KEY, KEY_A, 2),
                (EV_SYN, SYN_REPORT, 0),
                (EV_KEY, KEY_A, 0),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
        assert!(drv.irq.queue.load(Ordering::SeqCst) >= 3);
        assert_eq!(kbd.stats().reports, 3);
        assert_eq!(
            keys.pointer(None, MouseButtons::default(), 1),
            Err(SendError::Unsupported {
                device: "keyboard",
                input: "pointer"
            })
        );
    }

    #[test]
    fn tablet_reports_positions_buttons_and_wheel() {
        let mem = memory();
        let mut tab = Input::tablet();
        let mut drv = Driver::new(mem);
        drv.start(&mut tab);
        drv.post(64);
        let ptr = tab.sender();
        let left = MouseButtons {
            left: true,
            ..MouseButtons::default()
        };
        ptr.pointer(Some((0, POSITION_MAX)), left, 0).unwrap();
        ptr.pointer(Some((POSITION_MAX / 2, 0)), left, -2).unwrap();
        ptr.pointer(None, MouseButtons::default(), 0).unwrap();
        // Nothing changed: nothing sent.
        ptr.pointer(None, MouseButtons::default(), 0).unwrap();
        assert_eq!(
            drv.events(),
            [
                (EV_ABS, ABS_X, 0),
                (EV_ABS, ABS_Y, 32767),
                (EV_KEY, BTN_LEFT, 1),
                (EV_SYN, SYN_REPORT, 0),
                (EV_ABS, ABS_X, 16383),
                (EV_ABS, ABS_Y, 0),
                (EV_REL, REL_WHEEL, -2),
                (EV_SYN, SYN_REPORT, 0),
                (EV_KEY, BTN_LEFT, 0),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
        assert!(matches!(
            ptr.key(Key::KeyA, true),
            Err(SendError::Unsupported { .. })
        ));
    }

    #[test]
    fn without_buffers_reports_are_dropped_whole_and_releases_owed() {
        let mem = memory();
        let mut kbd = Input::keyboard();
        let keys = kbd.sender();
        // No driver yet.
        assert_eq!(
            keys.key(Key::KeyA, true),
            Err(SendError::NotRunning("keyboard"))
        );
        let mut drv = Driver::new(mem);
        drv.start(&mut kbd);
        // One buffer: a report needs two; nothing is placed.
        drv.post(1);
        assert_eq!(
            keys.key(Key::ShiftLeft, true),
            Err(SendError::NoBuffers("keyboard"))
        );
        assert!(drv.events().is_empty());
        drv.post(1);
        keys.key(Key::ShiftLeft, true).unwrap();
        assert_eq!(drv.events().len(), 2);
        // Shift is down in the guest; its release finds no buffer and is owed.
        assert!(keys.key(Key::ShiftLeft, false).is_err());
        // A press meanwhile is dropped too (the owed release would go first).
        drv.post(1);
        assert!(keys.key(Key::KeyB, true).is_err());
        assert!(drv.events().is_empty());
        // The guest posts buffers and notifies: the owed release goes at once.
        drv.post(3);
        kbd.process_queue(EVENTQ).unwrap();
        assert_eq!(
            drv.events(),
            [(EV_KEY, KEY_LEFTSHIFT, 0), (EV_SYN, SYN_REPORT, 0)]
        );
        keys.key(Key::KeyB, true).unwrap();
        assert_eq!(drv.events(), [(EV_KEY, KEY_B, 1), (EV_SYN, SYN_REPORT, 0)]);
        let stats = kbd.stats();
        assert_eq!((stats.reports, stats.dropped), (3, 4));
    }

    #[test]
    fn an_owed_release_goes_before_the_next_report() {
        let mem = memory();
        let mut tab = Input::tablet();
        let mut drv = Driver::new(mem);
        drv.start(&mut tab);
        drv.post(2);
        let ptr = tab.sender();
        let right = MouseButtons {
            right: true,
            ..MouseButtons::default()
        };
        ptr.pointer(None, right, 0).unwrap();
        assert!(ptr.pointer(None, MouseButtons::default(), 0).is_err());
        drv.post(64);
        ptr.pointer(Some((100, 100)), MouseButtons::default(), 0)
            .unwrap();
        assert_eq!(
            drv.events(),
            [
                (EV_KEY, BTN_RIGHT, 1),
                (EV_SYN, SYN_REPORT, 0),
                (EV_KEY, BTN_RIGHT, 0),
                (EV_SYN, SYN_REPORT, 0),
                (EV_ABS, ABS_X, 50),
                (EV_ABS, ABS_Y, 50),
                (EV_SYN, SYN_REPORT, 0),
            ]
        );
    }

    #[test]
    fn status_queue_sets_the_leds() {
        let mem = memory();
        let mut kbd = Input::keyboard();
        let mut drv = Driver::new(mem.clone());
        drv.start(&mut kbd);
        drv.status(&mut kbd, EV_LED, LED_CAPSL, 1);
        drv.status(&mut kbd, EV_LED, LED_NUML, 1);
        drv.status(&mut kbd, EV_LED, LED_NUML, 0);
        drv.status(&mut kbd, EV_KEY, LED_SCROLLL, 1);
        assert_eq!(
            kbd.sender().leds(),
            KeyboardLeds {
                caps_lock: true,
                num_lock: false,
                scroll_lock: false
            }
        );
        assert_eq!(kbd.stats().status_events, 4);
        let used: u16 = mem.read_obj(GuestAddress(STS_USED + 2)).unwrap();
        assert_eq!(used, 4, "every status buffer goes back");
        // A reset forgets the lights and stops delivery.
        kbd.reset();
        assert_eq!(kbd.sender().leds(), KeyboardLeds::default());
        assert!(matches!(
            kbd.sender().key(Key::KeyA, true),
            Err(SendError::NotRunning(_))
        ));
    }

    #[test]
    fn bad_buffers_go_back_unused_and_broken_rings_stop_input() {
        let mem = memory();
        let mut kbd = Input::keyboard();
        let mut drv = Driver::new(mem.clone());
        drv.start(&mut kbd);
        drv.post(4);
        // Make the first buffer read-only and the second too short.
        mem.write_obj(desc(EVT_BUFS, 8, 0, 0), GuestAddress(EVT_DESC))
            .unwrap();
        mem.write_obj(
            desc(EVT_BUFS + 8, 4, F_WRITE, 0),
            GuestAddress(EVT_DESC + 16),
        )
        .unwrap();
        kbd.sender().key(Key::KeyZ, true).unwrap();
        assert_eq!(kbd.stats().bad_buffers, 2);
        let used: u16 = mem.read_obj(GuestAddress(EVT_USED + 2)).unwrap();
        assert_eq!(used, 4);
        // An available index far ahead of the ring: the queue is broken, input stops.
        mem.write_obj(500u16, GuestAddress(EVT_AVAIL + 2)).unwrap();
        assert_eq!(
            kbd.sender().key(Key::KeyZ, false),
            Err(SendError::NotRunning("keyboard"))
        );
        assert!(kbd.sender().key(Key::KeyZ, true).is_err());
    }

    #[test]
    fn senders_work_from_other_threads() {
        let mem = memory();
        let mut kbd = Input::keyboard();
        let mut drv = Driver::new(mem);
        drv.start(&mut kbd);
        drv.post(64);
        let threads: Vec<_> = [Key::KeyA, Key::KeyB]
            .into_iter()
            .map(|key| {
                let keys = kbd.sender();
                std::thread::spawn(move || {
                    keys.key(key, true).unwrap();
                    keys.key(key, false).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(drv.events().len(), 8);
    }
}
