//! Host keyboard and mouse input into the machine's PS/2 devices: the backend-neutral
//! [`InputEvent`]s of `vivarium_core::input` become key presses and mouse packets of the
//! i8042's keyboard and mouse.

use vivarium_core::input::{InputEvent, KeyCode};
use vivarium_devices::i8042::{Key, MouseButtons, Ps2Input};

/// The PS/2 key at the position `key` names. Exhaustive, so a key added to [`KeyCode`]
/// cannot be forgotten here.
pub fn ps2_key(key: KeyCode) -> Key {
    use KeyCode as K;
    match key {
        K::Escape => Key::Escape,
        K::F1 => Key::F1,
        K::F2 => Key::F2,
        K::F3 => Key::F3,
        K::F4 => Key::F4,
        K::F5 => Key::F5,
        K::F6 => Key::F6,
        K::F7 => Key::F7,
        K::F8 => Key::F8,
        K::F9 => Key::F9,
        K::F10 => Key::F10,
        K::F11 => Key::F11,
        K::F12 => Key::F12,
        K::PrintScreen => Key::PrintScreen,
        K::ScrollLock => Key::ScrollLock,
        K::Pause => Key::Pause,
        K::Backquote => Key::Backquote,
        K::Digit1 => Key::Digit1,
        K::Digit2 => Key::Digit2,
        K::Digit3 => Key::Digit3,
        K::Digit4 => Key::Digit4,
        K::Digit5 => Key::Digit5,
        K::Digit6 => Key::Digit6,
        K::Digit7 => Key::Digit7,
        K::Digit8 => Key::Digit8,
        K::Digit9 => Key::Digit9,
        K::Digit0 => Key::Digit0,
        K::Minus => Key::Minus,
        K::Equal => Key::Equal,
        K::Backspace => Key::Backspace,
        K::Tab => Key::Tab,
        K::KeyQ => Key::KeyQ,
        K::KeyW => Key::KeyW,
        K::KeyE => Key::KeyE,
        K::KeyR => Key::KeyR,
        K::KeyT => Key::KeyT,
        K::KeyY => Key::KeyY,
        K::KeyU => Key::KeyU,
        K::KeyI => Key::KeyI,
        K::KeyO => Key::KeyO,
        K::KeyP => Key::KeyP,
        K::BracketLeft => Key::BracketLeft,
        K::BracketRight => Key::BracketRight,
        K::CapsLock => Key::CapsLock,
        K::KeyA => Key::KeyA,
        K::KeyS => Key::KeyS,
        K::KeyD => Key::KeyD,
        K::KeyF => Key::KeyF,
        K::KeyG => Key::KeyG,
        K::KeyH => Key::KeyH,
        K::KeyJ => Key::KeyJ,
        K::KeyK => Key::KeyK,
        K::KeyL => Key::KeyL,
        K::Semicolon => Key::Semicolon,
        K::Quote => Key::Quote,
        K::Backslash => Key::Backslash,
        K::Enter => Key::Enter,
        K::ShiftLeft => Key::ShiftLeft,
        K::IntlBackslash => Key::IntlBackslash,
        K::KeyZ => Key::KeyZ,
        K::KeyX => Key::KeyX,
        K::KeyC => Key::KeyC,
        K::KeyV => Key::KeyV,
        K::KeyB => Key::KeyB,
        K::KeyN => Key::KeyN,
        K::KeyM => Key::KeyM,
        K::Comma => Key::Comma,
        K::Period => Key::Period,
        K::Slash => Key::Slash,
        K::ShiftRight => Key::ShiftRight,
        K::ControlLeft => Key::ControlLeft,
        K::MetaLeft => Key::MetaLeft,
        K::AltLeft => Key::AltLeft,
        K::Space => Key::Space,
        K::AltRight => Key::AltRight,
        K::MetaRight => Key::MetaRight,
        K::ContextMenu => Key::ContextMenu,
        K::ControlRight => Key::ControlRight,
        K::Insert => Key::Insert,
        K::Home => Key::Home,
        K::PageUp => Key::PageUp,
        K::Delete => Key::Delete,
        K::End => Key::End,
        K::PageDown => Key::PageDown,
        K::ArrowUp => Key::ArrowUp,
        K::ArrowLeft => Key::ArrowLeft,
        K::ArrowDown => Key::ArrowDown,
        K::ArrowRight => Key::ArrowRight,
        K::NumLock => Key::NumLock,
        K::NumpadDivide => Key::NumpadDivide,
        K::NumpadMultiply => Key::NumpadMultiply,
        K::NumpadSubtract => Key::NumpadSubtract,
        K::Numpad7 => Key::Numpad7,
        K::Numpad8 => Key::Numpad8,
        K::Numpad9 => Key::Numpad9,
        K::NumpadAdd => Key::NumpadAdd,
        K::Numpad4 => Key::Numpad4,
        K::Numpad5 => Key::Numpad5,
        K::Numpad6 => Key::Numpad6,
        K::Numpad1 => Key::Numpad1,
        K::Numpad2 => Key::Numpad2,
        K::Numpad3 => Key::Numpad3,
        K::NumpadEnter => Key::NumpadEnter,
        K::Numpad0 => Key::Numpad0,
        K::NumpadDecimal => Key::NumpadDecimal,
        K::NumpadEqual => Key::NumpadEqual,
        K::NumpadComma => Key::NumpadComma,
        K::IntlRo => Key::IntlRo,
        K::IntlYen => Key::IntlYen,
        K::KanaMode => Key::KanaMode,
        K::Convert => Key::Convert,
        K::NonConvert => Key::NonConvert,
        K::Lang1 => Key::Lang1,
        K::Lang2 => Key::Lang2,
        K::Power => Key::Power,
        K::Sleep => Key::Sleep,
        K::WakeUp => Key::WakeUp,
        K::AudioVolumeMute => Key::AudioVolumeMute,
        K::AudioVolumeDown => Key::AudioVolumeDown,
        K::AudioVolumeUp => Key::AudioVolumeUp,
        K::MediaPlayPause => Key::MediaPlayPause,
        K::MediaStop => Key::MediaStop,
        K::MediaTrackNext => Key::MediaTrackNext,
        K::MediaTrackPrevious => Key::MediaTrackPrevious,
        K::MediaSelect => Key::MediaSelect,
        K::BrowserBack => Key::BrowserBack,
        K::BrowserForward => Key::BrowserForward,
        K::BrowserRefresh => Key::BrowserRefresh,
        K::BrowserStop => Key::BrowserStop,
        K::BrowserSearch => Key::BrowserSearch,
        K::BrowserFavorites => Key::BrowserFavorites,
        K::BrowserHome => Key::BrowserHome,
        K::LaunchMail => Key::LaunchMail,
        K::LaunchApp1 => Key::LaunchApp1,
        K::LaunchApp2 => Key::LaunchApp2,
    }
}

/// Hands `events` to the PS/2 devices in order. Never blocks: an event the guest cannot take
/// now (its driver has the device off, or it has not read earlier input and the device's
/// queue is full) is dropped with a debug log, as a real keyboard loses keys the computer
/// does not read.
pub fn deliver(ps2: &Ps2Input, events: &[InputEvent]) {
    for event in events {
        let result = match *event {
            InputEvent::Key { key, pressed: true } => ps2.press(ps2_key(key)),
            InputEvent::Key {
                key,
                pressed: false,
            } => ps2.release(ps2_key(key)),
            InputEvent::PointerMotion {
                dx,
                dy,
                wheel,
                buttons,
            } => ps2.mouse_motion(
                dx,
                dy,
                wheel,
                MouseButtons {
                    left: buttons.left,
                    right: buttons.right,
                    middle: buttons.middle,
                },
            ),
            // A PS/2 mouse has no position: it takes the buttons and the wheel.
            InputEvent::PointerPosition { wheel, buttons, .. } => ps2.mouse_motion(
                0,
                0,
                wheel,
                MouseButtons {
                    left: buttons.left,
                    right: buttons.right,
                    middle: buttons.middle,
                },
            ),
        };
        if let Err(e) = result {
            tracing::debug!("input {event:?} dropped: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use vivarium_core::input::keys_for_text;
    use vivarium_devices::IrqLine;
    use vivarium_devices::bus::BusDevice;
    use vivarium_devices::i8042::{I8042, ResetLine};

    struct Unwired;

    impl ResetLine for Unwired {
        fn reset(&self) {}
    }

    impl IrqLine for Unwired {
        fn trigger(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Everything the guest can read from port 0x60 now.
    fn drain(controller: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        loop {
            let mut status = [0u8];
            controller.read(0x60, 4, &mut status);
            if status[0] & 1 == 0 {
                return bytes;
            }
            let mut data = [0u8];
            controller.read(0x60, 0, &mut data);
            bytes.push(data[0]);
        }
    }

    #[test]
    fn input_the_guest_cannot_take_is_dropped_without_blocking() {
        let unwired = Arc::new(Unwired);
        let mut controller = I8042::new(unwired.clone(), unwired.clone(), unwired);
        let ps2 = controller.input();
        // No driver has enabled the keyboard yet: the keys are dropped, nothing waits.
        deliver(&ps2, &keys_for_text("lost").unwrap());
        assert!(
            drain(&mut controller).is_empty(),
            "nothing before the driver"
        );
        // The driver enables scanning (F4, acknowledged with FA).
        controller.write(0x60, 0, &[0xf4]);
        assert_eq!(drain(&mut controller), [0xfa]);
        deliver(&ps2, &keys_for_text("a").unwrap());
        assert_eq!(drain(&mut controller), [0x1e, 0x9e], "set 1, translated");
        // Far more than the keyboard holds, sent while the guest reads nothing: delivered
        // at once, the rest dropped; the guest sees the first keys whole, then the overrun
        // code (FF in set 1), and later keys work again.
        let flood = keys_for_text(&"x".repeat(1000)).unwrap();
        let started = std::time::Instant::now();
        deliver(&ps2, &flood);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let read = drain(&mut controller);
        assert!(read.len() < 400, "bounded: {} bytes", read.len());
        let (&last, keys) = read.split_last().unwrap();
        assert_eq!(last, 0xff, "the overrun code");
        assert!(keys.chunks(2).all(|k| k == [0x2d, 0xad]), "{keys:02x?}");
        deliver(&ps2, &keys_for_text("a").unwrap());
        assert_eq!(drain(&mut controller), [0x1e, 0x9e]);
        // The mouse is off until its driver turns reporting on: motion is dropped.
        deliver(
            &ps2,
            &[InputEvent::PointerMotion {
                dx: 1,
                dy: 1,
                wheel: 0,
                buttons: Default::default(),
            }],
        );
        assert!(drain(&mut controller).is_empty(), "no mouse driver yet");
    }

    #[test]
    fn every_key_code_is_a_distinct_ps2_key_of_the_same_name() {
        let mut seen = HashSet::new();
        for &code in KeyCode::ALL {
            let key = ps2_key(code);
            assert!(seen.insert(key), "{code} maps to {key:?} twice");
            assert_eq!(format!("{key:?}"), code.name());
        }
        // Every PS/2 key is reachable.
        assert_eq!(seen.len(), Key::ALL.len());
        assert_eq!(KeyCode::PC105_COUNT, Key::PC105_COUNT);
    }
}
