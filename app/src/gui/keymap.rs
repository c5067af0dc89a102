//! egui's keys to the guest's keys ([`KeyCode`], named by position).
//!
//! egui (through egui-winit) reports the physical key of a key event when the platform knows
//! it, which is what the guest needs: the guest applies its own keyboard layout. When only the
//! logical key is known (some platforms, and synthetic events), the key that produces it on a
//! US keyboard is used.
//!
//! What egui cannot tell apart: egui-winit reports the keypad's digits, Enter, `/`, and `-` as
//! the main keyboard's, and does not report keypad `*` and `.` at all, so the guest gets the
//! main keys for those (with the same characters) and never keypad `*` or `.`. Keys beyond F12
//! and keys a PC has no scancode for (Fn, Eject, Help, Clear) are not sent.

use eframe::egui::Key;
use vivarium_core::input::KeyCode;

/// The guest key for a key event: its physical key when egui knows it, else its logical key.
pub fn key_code(physical: Option<Key>, logical: Key) -> Option<KeyCode> {
    match physical {
        Some(key) => physical_key(key),
        None => logical_key(logical),
    }
}

/// The guest key at the position of egui's physical key `key`.
pub fn physical_key(key: Key) -> Option<KeyCode> {
    use KeyCode as K;
    Some(match key {
        Key::ArrowDown => K::ArrowDown,
        Key::ArrowLeft => K::ArrowLeft,
        Key::ArrowRight => K::ArrowRight,
        Key::ArrowUp => K::ArrowUp,
        Key::Escape => K::Escape,
        Key::Tab => K::Tab,
        Key::Backspace => K::Backspace,
        Key::Enter => K::Enter,
        Key::Space => K::Space,
        Key::Insert => K::Insert,
        Key::Delete => K::Delete,
        Key::Home => K::Home,
        Key::End => K::End,
        Key::PageUp => K::PageUp,
        Key::PageDown => K::PageDown,
        Key::Comma => K::Comma,
        Key::Backslash => K::Backslash,
        Key::Slash => K::Slash,
        Key::OpenBracket => K::BracketLeft,
        Key::CloseBracket => K::BracketRight,
        Key::Backtick => K::Backquote,
        Key::Minus => K::Minus,
        Key::Period => K::Period,
        // The only physical key egui-winit reports as Plus is the keypad's.
        Key::Plus => K::NumpadAdd,
        Key::Equals => K::Equal,
        Key::Semicolon => K::Semicolon,
        Key::Quote => K::Quote,
        Key::Num0 => K::Digit0,
        Key::Num1 => K::Digit1,
        Key::Num2 => K::Digit2,
        Key::Num3 => K::Digit3,
        Key::Num4 => K::Digit4,
        Key::Num5 => K::Digit5,
        Key::Num6 => K::Digit6,
        Key::Num7 => K::Digit7,
        Key::Num8 => K::Digit8,
        Key::Num9 => K::Digit9,
        Key::A => K::KeyA,
        Key::B => K::KeyB,
        Key::C => K::KeyC,
        Key::D => K::KeyD,
        Key::E => K::KeyE,
        Key::F => K::KeyF,
        Key::G => K::KeyG,
        Key::H => K::KeyH,
        Key::I => K::KeyI,
        Key::J => K::KeyJ,
        Key::K => K::KeyK,
        Key::L => K::KeyL,
        Key::M => K::KeyM,
        Key::N => K::KeyN,
        Key::O => K::KeyO,
        Key::P => K::KeyP,
        Key::Q => K::KeyQ,
        Key::R => K::KeyR,
        Key::S => K::KeyS,
        Key::T => K::KeyT,
        Key::U => K::KeyU,
        Key::V => K::KeyV,
        Key::W => K::KeyW,
        Key::X => K::KeyX,
        Key::Y => K::KeyY,
        Key::Z => K::KeyZ,
        Key::F1 => K::F1,
        Key::F2 => K::F2,
        Key::F3 => K::F3,
        Key::F4 => K::F4,
        Key::F5 => K::F5,
        Key::F6 => K::F6,
        Key::F7 => K::F7,
        Key::F8 => K::F8,
        Key::F9 => K::F9,
        Key::F10 => K::F10,
        Key::F11 => K::F11,
        Key::F12 => K::F12,
        Key::BrowserBack => K::BrowserBack,
        Key::BrowserForward => K::BrowserForward,
        Key::BrowserRefresh => K::BrowserRefresh,
        Key::BrowserSearch => K::BrowserSearch,
        Key::BrowserHome => K::BrowserHome,
        Key::BrowserFavorites => K::BrowserFavorites,
        Key::BrowserStop => K::BrowserStop,
        Key::MediaPlayPause => K::MediaPlayPause,
        Key::MediaTrackNext => K::MediaTrackNext,
        Key::MediaTrackPrevious => K::MediaTrackPrevious,
        Key::MediaStop => K::MediaStop,
        Key::AudioVolumeMute => K::AudioVolumeMute,
        Key::AudioVolumeDown => K::AudioVolumeDown,
        Key::AudioVolumeUp => K::AudioVolumeUp,
        Key::LaunchMail => K::LaunchMail,
        Key::LaunchApp1 => K::LaunchApp1,
        Key::LaunchApp2 => K::LaunchApp2,
        Key::ShiftLeft => K::ShiftLeft,
        Key::ShiftRight => K::ShiftRight,
        Key::ControlLeft => K::ControlLeft,
        Key::ControlRight => K::ControlRight,
        Key::AltLeft => K::AltLeft,
        Key::AltRight => K::AltRight,
        Key::SuperLeft => K::MetaLeft,
        Key::SuperRight => K::MetaRight,
        Key::IntlBackslash => K::IntlBackslash,
        Key::CapsLock => K::CapsLock,
        Key::NumLock => K::NumLock,
        Key::ScrollLock => K::ScrollLock,
        Key::PrintScreen => K::PrintScreen,
        Key::Pause => K::Pause,
        Key::Menu => K::ContextMenu,
        Key::Power => K::Power,
        Key::Sleep => K::Sleep,
        // Clipboard keys of Sun keyboards, F13 and up, and keys without a PC scancode.
        Key::Copy
        | Key::Cut
        | Key::Paste
        | Key::Colon
        | Key::Pipe
        | Key::Questionmark
        | Key::Exclamationmark
        | Key::OpenCurlyBracket
        | Key::CloseCurlyBracket
        | Key::F13
        | Key::F14
        | Key::F15
        | Key::F16
        | Key::F17
        | Key::F18
        | Key::F19
        | Key::F20
        | Key::F21
        | Key::F22
        | Key::F23
        | Key::F24
        | Key::F25
        | Key::F26
        | Key::F27
        | Key::F28
        | Key::F29
        | Key::F30
        | Key::F31
        | Key::F32
        | Key::F33
        | Key::F34
        | Key::F35
        | Key::Fn
        | Key::Eject
        | Key::Help
        | Key::Clear => return None,
    })
}

/// The guest key that types egui's logical key `key` on a US keyboard (Shift is sent as the
/// user holds it).
pub fn logical_key(key: Key) -> Option<KeyCode> {
    Some(match key {
        Key::Colon => KeyCode::Semicolon,
        Key::Pipe => KeyCode::Backslash,
        Key::Questionmark => KeyCode::Slash,
        Key::Exclamationmark => KeyCode::Digit1,
        Key::OpenCurlyBracket => KeyCode::BracketLeft,
        Key::CloseCurlyBracket => KeyCode::BracketRight,
        Key::Plus => KeyCode::Equal,
        other => return physical_key(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_key_of_a_pc105_keyboard_egui_reports_has_a_guest_key() {
        let reached: BTreeSet<KeyCode> = Key::ALL.iter().filter_map(|&k| physical_key(k)).collect();
        let pc105 = &KeyCode::ALL[..KeyCode::PC105_COUNT];
        // The keypad keys egui-winit folds into main keys or drops (see the module docs).
        let folded = [
            KeyCode::NumpadDivide,
            KeyCode::NumpadMultiply,
            KeyCode::NumpadSubtract,
            KeyCode::Numpad0,
            KeyCode::Numpad1,
            KeyCode::Numpad2,
            KeyCode::Numpad3,
            KeyCode::Numpad4,
            KeyCode::Numpad5,
            KeyCode::Numpad6,
            KeyCode::Numpad7,
            KeyCode::Numpad8,
            KeyCode::Numpad9,
            KeyCode::NumpadEnter,
            KeyCode::NumpadDecimal,
        ];
        let missing: Vec<KeyCode> = pc105
            .iter()
            .copied()
            .filter(|k| !reached.contains(k) && !folded.contains(k))
            .collect();
        assert!(missing.is_empty(), "no egui key for {missing:?}");
        // Keypad + is reached (egui's only physical Plus); the folded keys are not.
        let reached_pc105 = pc105.iter().filter(|k| reached.contains(k)).count();
        assert_eq!(reached_pc105, pc105.len() - folded.len());
    }

    #[test]
    fn no_two_egui_keys_share_a_guest_key() {
        let mut seen = std::collections::BTreeMap::new();
        for &key in Key::ALL {
            if let Some(code) = physical_key(key)
                && let Some(other) = seen.insert(code, key)
            {
                panic!("{key:?} and {other:?} both give {code:?}");
            }
        }
    }

    #[test]
    fn logical_symbols_fall_back_to_their_us_key() {
        assert_eq!(key_code(None, Key::Colon), Some(KeyCode::Semicolon));
        assert_eq!(key_code(None, Key::Plus), Some(KeyCode::Equal));
        assert_eq!(
            key_code(Some(Key::Plus), Key::Plus),
            Some(KeyCode::NumpadAdd)
        );
        // The physical key wins over the layout: Z on a German keyboard is at Y.
        assert_eq!(key_code(Some(Key::Y), Key::Z), Some(KeyCode::KeyY));
        assert_eq!(key_code(None, Key::F13), None);
    }
}
