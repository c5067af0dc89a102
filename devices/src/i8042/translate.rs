//! The i8042's scancode translation: with bit 6 of its configuration byte set, the
//! controller turns the keyboard's set 2 bytes into set 1 (the XT keyboard's codes) before
//! the CPU sees them, as every PC BIOS leaves it and as Linux's `atkbd` expects by default.
//!
//! Each set 2 byte below 0x80 has a set 1 value (the table below, the controller's ROM
//! table: the inverse of Linux `atkbd`'s "unxlate" table); `F0` (break prefix) is swallowed
//! and sets bit 7 of the next translated byte; bytes from 0x80 up pass unchanged, except
//! set 2's two codes above 0x7f: `83` (F7) and `84` (Alt+SysRq).

/// Set 1 value of each set 2 byte 0x00..0x80.
const SET2_TO_SET1: [u8; 128] = [
    0xff, 0x43, 0x41, 0x3f, 0x3d, 0x3b, 0x3c, 0x58, // 00
    0x64, 0x44, 0x42, 0x40, 0x3e, 0x0f, 0x29, 0x59, // 08
    0x65, 0x38, 0x2a, 0x70, 0x1d, 0x10, 0x02, 0x5a, // 10
    0x66, 0x71, 0x2c, 0x1f, 0x1e, 0x11, 0x03, 0x5b, // 18
    0x67, 0x2e, 0x2d, 0x20, 0x12, 0x05, 0x04, 0x5c, // 20
    0x68, 0x39, 0x2f, 0x21, 0x14, 0x13, 0x06, 0x5d, // 28
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5e, // 30
    0x6a, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5f, // 38
    0x6b, 0x33, 0x25, 0x17, 0x18, 0x0b, 0x0a, 0x60, // 40
    0x6c, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0c, 0x61, // 48
    0x6d, 0x73, 0x28, 0x74, 0x1a, 0x0d, 0x62, 0x6e, // 50
    0x3a, 0x36, 0x1c, 0x1b, 0x75, 0x2b, 0x63, 0x76, // 58
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7a, 0x0e, 0x7b, // 60
    0x7c, 0x4f, 0x7d, 0x4b, 0x47, 0x7e, 0x7f, 0x6f, // 68
    0x52, 0x53, 0x50, 0x4c, 0x4d, 0x48, 0x01, 0x45, // 70
    0x57, 0x4e, 0x51, 0x4a, 0x37, 0x49, 0x46, 0x54, // 78
];

/// The break prefix of set 2.
const BREAK_PREFIX: u8 = 0xf0;

/// The translator's state between bytes: whether a break prefix is pending.
#[derive(Clone, Copy, Debug, Default)]
pub struct Translator {
    pending_break: bool,
}

impl Translator {
    /// Feeds one set 2 byte; returns the set 1 byte, or `None` when the byte was a break
    /// prefix that only changes the next one.
    pub fn feed(&mut self, byte: u8) -> Option<u8> {
        if byte == BREAK_PREFIX {
            self.pending_break = true;
            return None;
        }
        let translated = match byte {
            0x00..=0x7f => SET2_TO_SET1[usize::from(byte)],
            0x83 => 0x41,
            0x84 => 0x54,
            other => other,
        };
        if std::mem::take(&mut self.pending_break) {
            Some(translated | 0x80)
        } else {
            Some(translated)
        }
    }

    /// Forgets a pending break prefix (the controller was reset or translation toggled).
    pub fn reset(&mut self) {
        self.pending_break = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i8042::keys::Key;

    fn translate(bytes: &[u8]) -> Vec<u8> {
        let mut t = Translator::default();
        bytes.iter().filter_map(|&b| t.feed(b)).collect()
    }

    #[test]
    fn the_table_is_a_permutation_except_for_the_error_code() {
        let mut seen = [false; 128];
        for &v in &SET2_TO_SET1[1..] {
            assert!(v < 0x80 && !seen[usize::from(v)], "{v:#x}");
            seen[usize::from(v)] = true;
        }
        // Set 2's "error/overrun" 00 becomes set 1's FF.
        assert_eq!(SET2_TO_SET1[0], 0xff);
    }

    #[test]
    fn keys_translate_to_their_set_1_codes() {
        // (key, set 1 make, set 1 break) from IBM's set 1 table.
        let cases: &[(Key, &[u8], &[u8])] = &[
            (Key::Escape, &[0x01], &[0x81]),
            (Key::KeyA, &[0x1e], &[0x9e]),
            (Key::Enter, &[0x1c], &[0x9c]),
            (Key::F7, &[0x41], &[0xc1]),
            (Key::F12, &[0x58], &[0xd8]),
            (Key::IntlBackslash, &[0x56], &[0xd6]),
            (Key::ArrowUp, &[0xe0, 0x48], &[0xe0, 0xc8]),
            (Key::AltRight, &[0xe0, 0x38], &[0xe0, 0xb8]),
            (Key::MetaLeft, &[0xe0, 0x5b], &[0xe0, 0xdb]),
            (Key::ContextMenu, &[0xe0, 0x5d], &[0xe0, 0xdd]),
            (Key::NumpadDivide, &[0xe0, 0x35], &[0xe0, 0xb5]),
            (Key::NumpadEnter, &[0xe0, 0x1c], &[0xe0, 0x9c]),
            (
                Key::PrintScreen,
                &[0xe0, 0x2a, 0xe0, 0x37],
                &[0xe0, 0xb7, 0xe0, 0xaa],
            ),
            (Key::Pause, &[0xe1, 0x1d, 0x45, 0xe1, 0x9d, 0xc5], &[]),
            // Extra keys (Microsoft's set 1 codes).
            (Key::IntlRo, &[0x73], &[0xf3]),
            (Key::IntlYen, &[0x7d], &[0xfd]),
            (Key::KanaMode, &[0x70], &[0xf0]),
            (Key::Convert, &[0x79], &[0xf9]),
            (Key::NonConvert, &[0x7b], &[0xfb]),
            (Key::NumpadEqual, &[0x59], &[0xd9]),
            (Key::NumpadComma, &[0x7e], &[0xfe]),
            (Key::Lang1, &[0xf2], &[]),
            (Key::Lang2, &[0xf1], &[]),
            (Key::Power, &[0xe0, 0x5e], &[0xe0, 0xde]),
            (Key::Sleep, &[0xe0, 0x5f], &[0xe0, 0xdf]),
            (Key::WakeUp, &[0xe0, 0x63], &[0xe0, 0xe3]),
            (Key::AudioVolumeMute, &[0xe0, 0x20], &[0xe0, 0xa0]),
            (Key::AudioVolumeDown, &[0xe0, 0x2e], &[0xe0, 0xae]),
            (Key::AudioVolumeUp, &[0xe0, 0x30], &[0xe0, 0xb0]),
            (Key::MediaPlayPause, &[0xe0, 0x22], &[0xe0, 0xa2]),
            (Key::MediaStop, &[0xe0, 0x24], &[0xe0, 0xa4]),
            (Key::MediaTrackNext, &[0xe0, 0x19], &[0xe0, 0x99]),
            (Key::MediaTrackPrevious, &[0xe0, 0x10], &[0xe0, 0x90]),
            (Key::MediaSelect, &[0xe0, 0x6d], &[0xe0, 0xed]),
            (Key::BrowserBack, &[0xe0, 0x6a], &[0xe0, 0xea]),
            (Key::BrowserForward, &[0xe0, 0x69], &[0xe0, 0xe9]),
            (Key::BrowserRefresh, &[0xe0, 0x67], &[0xe0, 0xe7]),
            (Key::BrowserStop, &[0xe0, 0x68], &[0xe0, 0xe8]),
            (Key::BrowserSearch, &[0xe0, 0x65], &[0xe0, 0xe5]),
            (Key::BrowserFavorites, &[0xe0, 0x66], &[0xe0, 0xe6]),
            (Key::BrowserHome, &[0xe0, 0x32], &[0xe0, 0xb2]),
            (Key::LaunchMail, &[0xe0, 0x6c], &[0xe0, 0xec]),
            (Key::LaunchApp1, &[0xe0, 0x6b], &[0xe0, 0xeb]),
            (Key::LaunchApp2, &[0xe0, 0x21], &[0xe0, 0xa1]),
        ];
        for (key, make, brk) in cases {
            assert_eq!(translate(key.make().as_slice()), *make, "{key:?} make");
            assert_eq!(
                translate(key.break_code().as_slice()),
                *brk,
                "{key:?} break"
            );
        }
    }

    #[test]
    fn replies_pass_through() {
        // ACK, BAT, identify (the 83 of "AB 83" becomes 41, as Linux expects: "ab41").
        assert_eq!(
            translate(&[0xfa, 0xaa, 0xab, 0x83, 0xee, 0xfe]),
            [0xfa, 0xaa, 0xab, 0x41, 0xee, 0xfe]
        );
    }
}
