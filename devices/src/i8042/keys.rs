//! The keys of a full PC-105 keyboard, plus the extra keys of international, multimedia and
//! "internet" keyboards, and the scancode set 2 bytes a PS/2 keyboard sends for them.
//!
//! Keys are named by position (the names of the W3C UI Events `code` values, which name
//! the key on a US layout): [`Key::KeyQ`] is the key right of Tab whatever the guest's
//! layout prints on it, [`Key::IntlBackslash`] is the 102nd key between left Shift and Z
//! on ISO keyboards, [`Key::Backslash`] is the key above Enter (ANSI) or left of it (ISO).
//!
//! Set 2 encodes a key as a one-byte make code, or `E0` + a byte for the keys added by the
//! 101-key keyboard; a break (release) puts `F0` before the last byte. PrintScreen and
//! Pause have sequences of their own: PrintScreen sends a fake left-Shift prefix
//! (`E0 12 E0 7C`), and Pause sends the make of Ctrl+NumLock behind an `E1` prefix and has
//! no break code at all. (A real keyboard varies PrintScreen's and Pause's bytes with
//! the modifiers held; this model always sends the plain sequences, which is what
//! every driver recognises.)

/// A key of a PC-105 keyboard, by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // The names say which key; see the module documentation.
pub enum Key {
    // Function row.
    Escape,
    F1,
    F2,
    F3,
    F4,
    F5,
    F6,
    F7,
    F8,
    F9,
    F10,
    F11,
    F12,
    PrintScreen,
    ScrollLock,
    Pause,
    // Number row.
    Backquote,
    Digit1,
    Digit2,
    Digit3,
    Digit4,
    Digit5,
    Digit6,
    Digit7,
    Digit8,
    Digit9,
    Digit0,
    Minus,
    Equal,
    Backspace,
    // Top letter row.
    Tab,
    KeyQ,
    KeyW,
    KeyE,
    KeyR,
    KeyT,
    KeyY,
    KeyU,
    KeyI,
    KeyO,
    KeyP,
    BracketLeft,
    BracketRight,
    // Home row.
    CapsLock,
    KeyA,
    KeyS,
    KeyD,
    KeyF,
    KeyG,
    KeyH,
    KeyJ,
    KeyK,
    KeyL,
    Semicolon,
    Quote,
    Backslash,
    Enter,
    // Bottom letter row.
    ShiftLeft,
    IntlBackslash,
    KeyZ,
    KeyX,
    KeyC,
    KeyV,
    KeyB,
    KeyN,
    KeyM,
    Comma,
    Period,
    Slash,
    ShiftRight,
    // Space row.
    ControlLeft,
    MetaLeft,
    AltLeft,
    Space,
    AltRight,
    MetaRight,
    ContextMenu,
    ControlRight,
    // Navigation block.
    Insert,
    Home,
    PageUp,
    Delete,
    End,
    PageDown,
    ArrowUp,
    ArrowLeft,
    ArrowDown,
    ArrowRight,
    // Keypad.
    NumLock,
    NumpadDivide,
    NumpadMultiply,
    NumpadSubtract,
    Numpad7,
    Numpad8,
    Numpad9,
    NumpadAdd,
    Numpad4,
    Numpad5,
    Numpad6,
    Numpad1,
    Numpad2,
    Numpad3,
    NumpadEnter,
    Numpad0,
    NumpadDecimal,
    // Extra keys of international, multimedia and "internet" keyboards.
    NumpadEqual,
    NumpadComma,
    IntlRo,
    IntlYen,
    KanaMode,
    Convert,
    NonConvert,
    Lang1,
    Lang2,
    Power,
    Sleep,
    WakeUp,
    AudioVolumeMute,
    AudioVolumeDown,
    AudioVolumeUp,
    MediaPlayPause,
    MediaStop,
    MediaTrackNext,
    MediaTrackPrevious,
    MediaSelect,
    BrowserBack,
    BrowserForward,
    BrowserRefresh,
    BrowserStop,
    BrowserSearch,
    BrowserFavorites,
    BrowserHome,
    LaunchMail,
    LaunchApp1,
    LaunchApp2,
}

/// How a key is encoded in scancode set 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    /// One make byte.
    Plain(u8),
    /// `E0` and a make byte.
    Extended(u8),
    /// PrintScreen's fake-shift sequence.
    PrintScreen,
    /// Pause's make-only sequence.
    Pause,
    /// One byte sent on press and nothing on release (the Korean Hangul and Hanja keys).
    MakeOnly(u8),
}

/// A short scancode byte sequence (the longest, Pause's, is 8 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    bytes: [u8; 8],
    len: u8,
}

impl Sequence {
    fn new(bytes: &[u8]) -> Self {
        let mut seq = Sequence {
            bytes: [0; 8],
            len: bytes.len() as u8,
        };
        seq.bytes[..bytes.len()].copy_from_slice(bytes);
        seq
    }

    /// The bytes, in the order the keyboard sends them.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Sequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

impl Key {
    /// Every key: the PC-105 keys in keyboard order, then the extra keys.
    pub const ALL: [Key; 135] = {
        use Key::*;
        [
            Escape,
            F1,
            F2,
            F3,
            F4,
            F5,
            F6,
            F7,
            F8,
            F9,
            F10,
            F11,
            F12,
            PrintScreen,
            ScrollLock,
            Pause,
            Backquote,
            Digit1,
            Digit2,
            Digit3,
            Digit4,
            Digit5,
            Digit6,
            Digit7,
            Digit8,
            Digit9,
            Digit0,
            Minus,
            Equal,
            Backspace,
            Tab,
            KeyQ,
            KeyW,
            KeyE,
            KeyR,
            KeyT,
            KeyY,
            KeyU,
            KeyI,
            KeyO,
            KeyP,
            BracketLeft,
            BracketRight,
            CapsLock,
            KeyA,
            KeyS,
            KeyD,
            KeyF,
            KeyG,
            KeyH,
            KeyJ,
            KeyK,
            KeyL,
            Semicolon,
            Quote,
            Backslash,
            Enter,
            ShiftLeft,
            IntlBackslash,
            KeyZ,
            KeyX,
            KeyC,
            KeyV,
            KeyB,
            KeyN,
            KeyM,
            Comma,
            Period,
            Slash,
            ShiftRight,
            ControlLeft,
            MetaLeft,
            AltLeft,
            Space,
            AltRight,
            MetaRight,
            ContextMenu,
            ControlRight,
            Insert,
            Home,
            PageUp,
            Delete,
            End,
            PageDown,
            ArrowUp,
            ArrowLeft,
            ArrowDown,
            ArrowRight,
            NumLock,
            NumpadDivide,
            NumpadMultiply,
            NumpadSubtract,
            Numpad7,
            Numpad8,
            Numpad9,
            NumpadAdd,
            Numpad4,
            Numpad5,
            Numpad6,
            Numpad1,
            Numpad2,
            Numpad3,
            NumpadEnter,
            Numpad0,
            NumpadDecimal,
            NumpadEqual,
            NumpadComma,
            IntlRo,
            IntlYen,
            KanaMode,
            Convert,
            NonConvert,
            Lang1,
            Lang2,
            Power,
            Sleep,
            WakeUp,
            AudioVolumeMute,
            AudioVolumeDown,
            AudioVolumeUp,
            MediaPlayPause,
            MediaStop,
            MediaTrackNext,
            MediaTrackPrevious,
            MediaSelect,
            BrowserBack,
            BrowserForward,
            BrowserRefresh,
            BrowserStop,
            BrowserSearch,
            BrowserFavorites,
            BrowserHome,
            LaunchMail,
            LaunchApp1,
            LaunchApp2,
        ]
    };

    /// How many keys of [`Key::ALL`] a PC-105 keyboard has (they come first).
    pub const PC105_COUNT: usize = 105;

    /// The key's scancode set 2 encoding (IBM's set 2 table for the 101/102-key keyboard,
    /// plus the Windows and Menu keys of the 104/105-key keyboards).
    fn encoding(self) -> Encoding {
        use Encoding::{Extended as X, Plain as P};
        use Key::*;
        match self {
            Escape => P(0x76),
            F1 => P(0x05),
            F2 => P(0x06),
            F3 => P(0x04),
            F4 => P(0x0c),
            F5 => P(0x03),
            F6 => P(0x0b),
            F7 => P(0x83),
            F8 => P(0x0a),
            F9 => P(0x01),
            F10 => P(0x09),
            F11 => P(0x78),
            F12 => P(0x07),
            PrintScreen => Encoding::PrintScreen,
            ScrollLock => P(0x7e),
            Pause => Encoding::Pause,
            Backquote => P(0x0e),
            Digit1 => P(0x16),
            Digit2 => P(0x1e),
            Digit3 => P(0x26),
            Digit4 => P(0x25),
            Digit5 => P(0x2e),
            Digit6 => P(0x36),
            Digit7 => P(0x3d),
            Digit8 => P(0x3e),
            Digit9 => P(0x46),
            Digit0 => P(0x45),
            Minus => P(0x4e),
            Equal => P(0x55),
            Backspace => P(0x66),
            Tab => P(0x0d),
            KeyQ => P(0x15),
            KeyW => P(0x1d),
            KeyE => P(0x24),
            KeyR => P(0x2d),
            KeyT => P(0x2c),
            KeyY => P(0x35),
            KeyU => P(0x3c),
            KeyI => P(0x43),
            KeyO => P(0x44),
            KeyP => P(0x4d),
            BracketLeft => P(0x54),
            BracketRight => P(0x5b),
            CapsLock => P(0x58),
            KeyA => P(0x1c),
            KeyS => P(0x1b),
            KeyD => P(0x23),
            KeyF => P(0x2b),
            KeyG => P(0x34),
            KeyH => P(0x33),
            KeyJ => P(0x3b),
            KeyK => P(0x42),
            KeyL => P(0x4b),
            Semicolon => P(0x4c),
            Quote => P(0x52),
            Backslash => P(0x5d),
            Enter => P(0x5a),
            ShiftLeft => P(0x12),
            IntlBackslash => P(0x61),
            KeyZ => P(0x1a),
            KeyX => P(0x22),
            KeyC => P(0x21),
            KeyV => P(0x2a),
            KeyB => P(0x32),
            KeyN => P(0x31),
            KeyM => P(0x3a),
            Comma => P(0x41),
            Period => P(0x49),
            Slash => P(0x4a),
            ShiftRight => P(0x59),
            ControlLeft => P(0x14),
            MetaLeft => X(0x1f),
            AltLeft => P(0x11),
            Space => P(0x29),
            AltRight => X(0x11),
            MetaRight => X(0x27),
            ContextMenu => X(0x2f),
            ControlRight => X(0x14),
            Insert => X(0x70),
            Home => X(0x6c),
            PageUp => X(0x7d),
            Delete => X(0x71),
            End => X(0x69),
            PageDown => X(0x7a),
            ArrowUp => X(0x75),
            ArrowLeft => X(0x6b),
            ArrowDown => X(0x72),
            ArrowRight => X(0x74),
            NumLock => P(0x77),
            NumpadDivide => X(0x4a),
            NumpadMultiply => P(0x7c),
            NumpadSubtract => P(0x7b),
            Numpad7 => P(0x6c),
            Numpad8 => P(0x75),
            Numpad9 => P(0x7d),
            NumpadAdd => P(0x79),
            Numpad4 => P(0x6b),
            Numpad5 => P(0x73),
            Numpad6 => P(0x74),
            Numpad1 => P(0x69),
            Numpad2 => P(0x72),
            Numpad3 => P(0x7a),
            NumpadEnter => X(0x5a),
            Numpad0 => P(0x70),
            NumpadDecimal => P(0x71),
            // The extra keys, from Microsoft's keyboard scan code specification (the codes
            // Linux's atkbd and Windows recognise).
            NumpadEqual => P(0x0f),
            NumpadComma => P(0x6d),
            IntlRo => P(0x51),
            IntlYen => P(0x6a),
            KanaMode => P(0x13),
            Convert => P(0x64),
            NonConvert => P(0x67),
            Lang1 => Encoding::MakeOnly(0xf2),
            Lang2 => Encoding::MakeOnly(0xf1),
            Power => X(0x37),
            Sleep => X(0x3f),
            WakeUp => X(0x5e),
            AudioVolumeMute => X(0x23),
            AudioVolumeDown => X(0x21),
            AudioVolumeUp => X(0x32),
            MediaPlayPause => X(0x34),
            MediaStop => X(0x3b),
            MediaTrackNext => X(0x4d),
            MediaTrackPrevious => X(0x15),
            MediaSelect => X(0x50),
            BrowserBack => X(0x38),
            BrowserForward => X(0x30),
            BrowserRefresh => X(0x20),
            BrowserStop => X(0x28),
            BrowserSearch => X(0x10),
            BrowserFavorites => X(0x18),
            BrowserHome => X(0x3a),
            LaunchMail => X(0x48),
            LaunchApp1 => X(0x40),
            LaunchApp2 => X(0x2b),
        }
    }

    /// The set 2 bytes the keyboard sends when the key goes down.
    pub fn make(self) -> Sequence {
        match self.encoding() {
            Encoding::Plain(code) => Sequence::new(&[code]),
            Encoding::Extended(code) => Sequence::new(&[0xe0, code]),
            Encoding::PrintScreen => Sequence::new(&[0xe0, 0x12, 0xe0, 0x7c]),
            Encoding::Pause => Sequence::new(&[0xe1, 0x14, 0x77, 0xe1, 0xf0, 0x14, 0xf0, 0x77]),
            Encoding::MakeOnly(code) => Sequence::new(&[code]),
        }
    }

    /// The set 2 bytes the keyboard sends when the key comes up (empty for Pause, Hangul
    /// and Hanja, which have no break code).
    pub fn break_code(self) -> Sequence {
        match self.encoding() {
            Encoding::Plain(code) => Sequence::new(&[0xf0, code]),
            Encoding::Extended(code) => Sequence::new(&[0xe0, 0xf0, code]),
            Encoding::PrintScreen => Sequence::new(&[0xe0, 0xf0, 0x7c, 0xe0, 0xf0, 0x12]),
            Encoding::Pause | Encoding::MakeOnly(_) => Sequence::new(&[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_has_a_distinct_make_code_and_a_matching_break() {
        let mut seen = HashSet::new();
        for key in Key::ALL {
            let make = key.make();
            assert!(seen.insert(make.as_slice().to_vec()), "{key:?} {make:?}");
            let brk = key.break_code();
            match key {
                Key::Pause | Key::Lang1 | Key::Lang2 => assert!(brk.as_slice().is_empty()),
                Key::PrintScreen => assert_eq!(brk.as_slice().len(), 6),
                _ => {
                    // The break is the make with F0 before its last byte.
                    let m = make.as_slice();
                    let mut expected = m[..m.len() - 1].to_vec();
                    expected.push(0xf0);
                    expected.push(m[m.len() - 1]);
                    assert_eq!(brk.as_slice(), &expected[..], "{key:?}");
                }
            }
        }
        assert_eq!(seen.len(), Key::ALL.len());
        assert_eq!(
            Key::ALL[Key::PC105_COUNT - 1],
            Key::NumpadDecimal,
            "a PC-105 keyboard"
        );
    }

    #[test]
    fn well_known_codes() {
        assert_eq!(Key::KeyA.make().as_slice(), &[0x1c]);
        assert_eq!(Key::KeyA.break_code().as_slice(), &[0xf0, 0x1c]);
        assert_eq!(Key::ArrowUp.make().as_slice(), &[0xe0, 0x75]);
        assert_eq!(Key::ArrowUp.break_code().as_slice(), &[0xe0, 0xf0, 0x75]);
        assert_eq!(Key::F7.make().as_slice(), &[0x83]);
        assert_eq!(Key::IntlBackslash.make().as_slice(), &[0x61]);
        assert_eq!(
            Key::PrintScreen.make().as_slice(),
            &[0xe0, 0x12, 0xe0, 0x7c]
        );
        assert_eq!(Key::Pause.make().as_slice().len(), 8);
    }
}
