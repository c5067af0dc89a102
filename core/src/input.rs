//! Keyboard and mouse input for a guest, in terms that do not depend on the architecture or
//! the backend: [`KeyCode`] names a physical key (the backend turns it into PS/2 scancodes,
//! a later one into virtio-input or USB HID usages), [`InputEvent`] is a key going down or up
//! or a pointer movement, and [`keys_for_text`] / [`keys_for_combo`] turn text and key
//! combinations such as `ctrl+alt+delete` into events.
//!
//! Keys are named by position, with the W3C UI Events `code` names (which name the key as it
//! is labelled on a US keyboard): [`KeyCode::KeyQ`] is the key right of Tab whatever the
//! guest's layout prints on it. The names are also the wire form (`"KeyQ"`), so the app, the
//! CLI and a VM process of another build agree on them.

use serde::{Deserialize, Serialize};

/// Declares [`KeyCode`] with its list of every key.
macro_rules! key_codes {
    ($( $(#[$meta:meta])* $key:ident ),+ $(,)?) => {
        /// A physical key: the 105 keys of a PC-105 keyboard, then the usual extra keys
        /// (keypad = and ,, Japanese and Korean keys, power and media keys, browser and
        /// launch keys). Named by position; see the module documentation.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum KeyCode {
            $( $(#[$meta])* $key, )+
        }

        impl KeyCode {
            /// Every key, PC-105 keys first in keyboard order, then the extra keys.
            pub const ALL: &'static [KeyCode] = &[$( KeyCode::$key, )+];

            /// The key's name (its W3C `code` value, e.g. `"ControlLeft"`), also its wire form.
            pub fn name(self) -> &'static str {
                match self {
                    $( KeyCode::$key => stringify!($key), )+
                }
            }
        }
    };
}

key_codes! {
    /// Esc.
    Escape,
    /// F1.
    F1,
    /// F2.
    F2,
    /// F3.
    F3,
    /// F4.
    F4,
    /// F5.
    F5,
    /// F6.
    F6,
    /// F7.
    F7,
    /// F8.
    F8,
    /// F9.
    F9,
    /// F10.
    F10,
    /// F11.
    F11,
    /// F12.
    F12,
    /// PrtSc / SysRq.
    PrintScreen,
    /// Scroll Lock.
    ScrollLock,
    /// Pause / Break.
    Pause,
    /// `` ` `` and `~` (left of 1).
    Backquote,
    /// 1 and !.
    Digit1,
    /// 2 and @.
    Digit2,
    /// 3 and #.
    Digit3,
    /// 4 and $.
    Digit4,
    /// 5 and %.
    Digit5,
    /// 6 and ^.
    Digit6,
    /// 7 and &.
    Digit7,
    /// 8 and *.
    Digit8,
    /// 9 and (.
    Digit9,
    /// 0 and ).
    Digit0,
    /// - and _.
    Minus,
    /// = and +.
    Equal,
    /// Backspace.
    Backspace,
    /// Tab.
    Tab,
    /// Q.
    KeyQ,
    /// W.
    KeyW,
    /// E.
    KeyE,
    /// R.
    KeyR,
    /// T.
    KeyT,
    /// Y.
    KeyY,
    /// U.
    KeyU,
    /// I.
    KeyI,
    /// O.
    KeyO,
    /// P.
    KeyP,
    /// [ and {.
    BracketLeft,
    /// ] and }.
    BracketRight,
    /// Caps Lock.
    CapsLock,
    /// A.
    KeyA,
    /// S.
    KeyS,
    /// D.
    KeyD,
    /// F.
    KeyF,
    /// G.
    KeyG,
    /// H.
    KeyH,
    /// J.
    KeyJ,
    /// K.
    KeyK,
    /// L.
    KeyL,
    /// ; and :.
    Semicolon,
    /// ' and ".
    Quote,
    /// \ and | (above Enter on ANSI keyboards, left of it on ISO ones).
    Backslash,
    /// Enter.
    Enter,
    /// Left Shift.
    ShiftLeft,
    /// The ISO key between left Shift and Z (< and > on many European layouts).
    IntlBackslash,
    /// Z.
    KeyZ,
    /// X.
    KeyX,
    /// C.
    KeyC,
    /// V.
    KeyV,
    /// B.
    KeyB,
    /// N.
    KeyN,
    /// M.
    KeyM,
    /// , and <.
    Comma,
    /// . and >.
    Period,
    /// / and ?.
    Slash,
    /// Right Shift.
    ShiftRight,
    /// Left Ctrl.
    ControlLeft,
    /// Left Windows / Super / Command key.
    MetaLeft,
    /// Left Alt.
    AltLeft,
    /// Space bar.
    Space,
    /// Right Alt (AltGr).
    AltRight,
    /// Right Windows / Super key.
    MetaRight,
    /// The context menu key.
    ContextMenu,
    /// Right Ctrl.
    ControlRight,
    /// Insert.
    Insert,
    /// Home.
    Home,
    /// Page Up.
    PageUp,
    /// Delete.
    Delete,
    /// End.
    End,
    /// Page Down.
    PageDown,
    /// Arrow up.
    ArrowUp,
    /// Arrow left.
    ArrowLeft,
    /// Arrow down.
    ArrowDown,
    /// Arrow right.
    ArrowRight,
    /// Num Lock.
    NumLock,
    /// Keypad /.
    NumpadDivide,
    /// Keypad *.
    NumpadMultiply,
    /// Keypad -.
    NumpadSubtract,
    /// Keypad 7 / Home.
    Numpad7,
    /// Keypad 8 / Up.
    Numpad8,
    /// Keypad 9 / Page Up.
    Numpad9,
    /// Keypad +.
    NumpadAdd,
    /// Keypad 4 / Left.
    Numpad4,
    /// Keypad 5.
    Numpad5,
    /// Keypad 6 / Right.
    Numpad6,
    /// Keypad 1 / End.
    Numpad1,
    /// Keypad 2 / Down.
    Numpad2,
    /// Keypad 3 / Page Down.
    Numpad3,
    /// Keypad Enter.
    NumpadEnter,
    /// Keypad 0 / Insert.
    Numpad0,
    /// Keypad . / Delete.
    NumpadDecimal,
    // Extra keys.
    /// Keypad = (Mac and some PC keyboards).
    NumpadEqual,
    /// Keypad , (Brazilian keyboards).
    NumpadComma,
    /// The Japanese Ro key (\ and _ left of right Shift).
    IntlRo,
    /// The Japanese Yen key (left of Backspace).
    IntlYen,
    /// The Japanese Katakana/Hiragana key.
    KanaMode,
    /// The Japanese Henkan (convert) key.
    Convert,
    /// The Japanese Muhenkan (non-convert) key.
    NonConvert,
    /// The Korean Hangul/English key.
    Lang1,
    /// The Korean Hanja key.
    Lang2,
    /// The system power key.
    Power,
    /// The system sleep key.
    Sleep,
    /// The system wake key.
    WakeUp,
    /// Mute.
    AudioVolumeMute,
    /// Volume down.
    AudioVolumeDown,
    /// Volume up.
    AudioVolumeUp,
    /// Play/pause.
    MediaPlayPause,
    /// Stop media.
    MediaStop,
    /// Next track.
    MediaTrackNext,
    /// Previous track.
    MediaTrackPrevious,
    /// Media player.
    MediaSelect,
    /// Browser back.
    BrowserBack,
    /// Browser forward.
    BrowserForward,
    /// Browser refresh.
    BrowserRefresh,
    /// Browser stop.
    BrowserStop,
    /// Browser search.
    BrowserSearch,
    /// Browser favourites.
    BrowserFavorites,
    /// Browser home.
    BrowserHome,
    /// E-mail.
    LaunchMail,
    /// "My Computer".
    LaunchApp1,
    /// Calculator.
    LaunchApp2,
}

impl KeyCode {
    /// How many keys of [`KeyCode::ALL`] a PC-105 keyboard has (they come first).
    pub const PC105_COUNT: usize = 105;

    /// The key whose name (see [`KeyCode::name`]) is `name`, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<KeyCode> {
        KeyCode::ALL
            .iter()
            .copied()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// Whether the key is a modifier (Shift, Ctrl, Alt, Meta/Super on either side).
    pub fn is_modifier(self) -> bool {
        matches!(
            self,
            KeyCode::ShiftLeft
                | KeyCode::ShiftRight
                | KeyCode::ControlLeft
                | KeyCode::ControlRight
                | KeyCode::AltLeft
                | KeyCode::AltRight
                | KeyCode::MetaLeft
                | KeyCode::MetaRight
        )
    }
}

impl std::fmt::Display for KeyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mouse buttons held down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MouseButtons {
    /// The left (primary) button.
    #[serde(default)]
    pub left: bool,
    /// The right (secondary) button.
    #[serde(default)]
    pub right: bool,
    /// The middle button (or the wheel pressed).
    #[serde(default)]
    pub middle: bool,
}

/// Something the user did with the keyboard or the mouse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum InputEvent {
    /// A key went down (`pressed`, or repeats when sent again while down) or came up.
    Key {
        /// The key.
        key: KeyCode,
        /// Down (true) or up (false).
        pressed: bool,
    },
    /// The pointer moved by `dx` right and `dy` down (in mouse counts, screen directions), the
    /// wheel turned `wheel` detents up (away from the user), with `buttons` held. A button
    /// press without movement is a motion of zero with the new buttons.
    PointerMotion {
        /// Counts to the right (negative: left).
        #[serde(default)]
        dx: i32,
        /// Counts down (negative: up).
        #[serde(default)]
        dy: i32,
        /// Wheel detents up (negative: down).
        #[serde(default)]
        wheel: i32,
        /// The buttons held after the motion.
        #[serde(default)]
        buttons: MouseButtons,
    },
    /// The pointer is at (`x`, `y`) on the guest's screen, as fractions of its width and
    /// height in units of [`POINTER_POSITION_MAX`] (0: the left or top edge,
    /// `POINTER_POSITION_MAX`: the right or bottom one), the wheel turned `wheel` detents
    /// up, with `buttons` held: what an absolute pointer (a tablet) reports, which needs no
    /// grab. A device with only relative motion (a PS/2 mouse) takes the buttons and the
    /// wheel.
    PointerPosition {
        /// Across the screen, from the left edge.
        x: u16,
        /// Down the screen, from the top edge.
        y: u16,
        /// Wheel detents up (negative: down).
        #[serde(default)]
        wheel: i32,
        /// The buttons held.
        #[serde(default)]
        buttons: MouseButtons,
    },
}

/// The right or bottom edge of the screen in [`InputEvent::PointerPosition`]'s units.
pub const POINTER_POSITION_MAX: u16 = u16::MAX;

impl InputEvent {
    /// A key going down.
    pub fn press(key: KeyCode) -> InputEvent {
        InputEvent::Key { key, pressed: true }
    }

    /// A key coming up.
    pub fn release(key: KeyCode) -> InputEvent {
        InputEvent::Key {
            key,
            pressed: false,
        }
    }

    /// The pointer at `x` across and `y` down the screen, as fractions from 0.0 (left, top)
    /// to 1.0 (right, bottom; values outside are taken as the nearest edge), with `buttons`
    /// held.
    pub fn pointer_at(x: f64, y: f64, buttons: MouseButtons) -> InputEvent {
        let scale = |f: f64| {
            let f = if f.is_nan() { 0.0 } else { f.clamp(0.0, 1.0) };
            (f * f64::from(POINTER_POSITION_MAX)).round() as u16
        };
        InputEvent::PointerPosition {
            x: scale(x),
            y: scale(y),
            wheel: 0,
            buttons,
        }
    }
}

/// Text or a key combination that cannot be turned into key presses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Characters a US keyboard layout cannot type.
    #[error(
        "cannot type {} with a US keyboard layout; type only printable ASCII, newlines and \
         tabs, and send other keys by name (e.g. --key ctrl+alt+delete)",
        describe_chars(.0)
    )]
    Untypable(Vec<(usize, char)>),
    /// A key combination that is empty or names a key that does not exist.
    #[error(
        "`{combo}` is not a key combination: {reason}. Write keys joined by `+`, e.g. \
         `ctrl+alt+delete`, `enter`, `f2`, `shift+tab` or `KeyA` (key names: ctrl, alt, \
         shift, super, esc, enter, tab, space, backspace, delete, insert, home, end, pageup, \
         pagedown, up, down, left, right, f1-f12, a letter, a digit, an unshifted symbol such \
         as `-` or `/`, or any W3C key code name such as `NumpadEnter`)"
    )]
    BadCombo {
        /// The combination as given.
        combo: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn describe_chars(chars: &[(usize, char)]) -> String {
    const SHOWN: usize = 5;
    let mut parts: Vec<String> = chars
        .iter()
        .take(SHOWN)
        .map(|(at, c)| format!("{c:?} (U+{:04X}) at character {}", u32::from(*c), at + 1))
        .collect();
    if chars.len() > SHOWN {
        parts.push(format!("and {} more", chars.len() - SHOWN));
    }
    parts.join(", ")
}

/// The key that types `c` on a US layout, and whether Shift must be held. `'\n'` is Enter,
/// `'\t'` Tab.
pub fn us_key_for_char(c: char) -> Option<(KeyCode, bool)> {
    use KeyCode::*;
    let letter = |c: char| -> Option<KeyCode> {
        Some(match c.to_ascii_lowercase() {
            'a' => KeyA,
            'b' => KeyB,
            'c' => KeyC,
            'd' => KeyD,
            'e' => KeyE,
            'f' => KeyF,
            'g' => KeyG,
            'h' => KeyH,
            'i' => KeyI,
            'j' => KeyJ,
            'k' => KeyK,
            'l' => KeyL,
            'm' => KeyM,
            'n' => KeyN,
            'o' => KeyO,
            'p' => KeyP,
            'q' => KeyQ,
            'r' => KeyR,
            's' => KeyS,
            't' => KeyT,
            'u' => KeyU,
            'v' => KeyV,
            'w' => KeyW,
            'x' => KeyX,
            'y' => KeyY,
            'z' => KeyZ,
            _ => return None,
        })
    };
    if c.is_ascii_lowercase() {
        return letter(c).map(|k| (k, false));
    }
    if c.is_ascii_uppercase() {
        return letter(c).map(|k| (k, true));
    }
    Some(match c {
        '\n' => (Enter, false),
        '\t' => (Tab, false),
        ' ' => (Space, false),
        '1' => (Digit1, false),
        '2' => (Digit2, false),
        '3' => (Digit3, false),
        '4' => (Digit4, false),
        '5' => (Digit5, false),
        '6' => (Digit6, false),
        '7' => (Digit7, false),
        '8' => (Digit8, false),
        '9' => (Digit9, false),
        '0' => (Digit0, false),
        '!' => (Digit1, true),
        '@' => (Digit2, true),
        '#' => (Digit3, true),
        '$' => (Digit4, true),
        '%' => (Digit5, true),
        '^' => (Digit6, true),
        '&' => (Digit7, true),
        '*' => (Digit8, true),
        '(' => (Digit9, true),
        ')' => (Digit0, true),
        '`' => (Backquote, false),
        '~' => (Backquote, true),
        '-' => (Minus, false),
        '_' => (Minus, true),
        '=' => (Equal, false),
        '+' => (Equal, true),
        '[' => (BracketLeft, false),
        '{' => (BracketLeft, true),
        ']' => (BracketRight, false),
        '}' => (BracketRight, true),
        '\\' => (Backslash, false),
        '|' => (Backslash, true),
        ';' => (Semicolon, false),
        ':' => (Semicolon, true),
        '\'' => (Quote, false),
        '"' => (Quote, true),
        ',' => (Comma, false),
        '<' => (Comma, true),
        '.' => (Period, false),
        '>' => (Period, true),
        '/' => (Slash, false),
        '?' => (Slash, true),
        _ => return None,
    })
}

/// The key presses and releases that type `text` on a guest with a US keyboard layout:
/// each character is its key pressed and released, with left Shift held around it for
/// upper-case letters and shifted symbols. `'\n'` (and `"\r\n"`, or a lone `'\r'`) is Enter,
/// `'\t'` is Tab. The guest's Caps Lock, if on, still inverts letters, as on a real
/// keyboard. Refuses text with characters the layout cannot type, naming every one of them.
pub fn keys_for_text(text: &str) -> Result<Vec<InputEvent>, InputError> {
    let mut events = Vec::with_capacity(text.len() * 2);
    let mut untypable = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((at, c)) = chars.next() {
        let c = if c == '\r' {
            // "\r\n" is one Enter.
            if chars.peek().is_some_and(|&(_, next)| next == '\n') {
                continue;
            }
            '\n'
        } else {
            c
        };
        match us_key_for_char(c) {
            Some((key, shifted)) => {
                if shifted {
                    events.push(InputEvent::press(KeyCode::ShiftLeft));
                }
                events.push(InputEvent::press(key));
                events.push(InputEvent::release(key));
                if shifted {
                    events.push(InputEvent::release(KeyCode::ShiftLeft));
                }
            }
            None => untypable.push((at, c)),
        }
    }
    if untypable.is_empty() {
        Ok(events)
    } else {
        Err(InputError::Untypable(untypable))
    }
}

/// The key one word of a combination names: a short name (`ctrl`, `alt`, `shift`, `super`,
/// `esc`, `enter`, `del`, `pgup`, `up`, `f5`, ...), a single unshifted character on a US
/// layout (`a`, `1`, `/`), or a W3C key code name (`ControlRight`, `NumpadEnter`), ignoring
/// ASCII case.
pub fn key_for_name(name: &str) -> Option<KeyCode> {
    use KeyCode::*;
    let lower = name.to_ascii_lowercase();
    let alias = match lower.as_str() {
        "ctrl" | "control" | "lctrl" => Some(ControlLeft),
        "rctrl" => Some(ControlRight),
        "alt" | "lalt" => Some(AltLeft),
        "ralt" | "altgr" => Some(AltRight),
        "shift" | "lshift" => Some(ShiftLeft),
        "rshift" => Some(ShiftRight),
        "super" | "win" | "meta" | "cmd" | "lsuper" => Some(MetaLeft),
        "rsuper" => Some(MetaRight),
        "menu" => Some(ContextMenu),
        "esc" => Some(Escape),
        "enter" | "return" | "ret" => Some(Enter),
        "tab" => Some(Tab),
        "space" | "spc" => Some(Space),
        "backspace" | "bs" => Some(Backspace),
        "del" | "delete" => Some(Delete),
        "ins" | "insert" => Some(Insert),
        "home" => Some(Home),
        "end" => Some(End),
        "pgup" | "pageup" => Some(PageUp),
        "pgdn" | "pagedown" => Some(PageDown),
        "up" => Some(ArrowUp),
        "down" => Some(ArrowDown),
        "left" => Some(ArrowLeft),
        "right" => Some(ArrowRight),
        "capslock" | "caps" => Some(CapsLock),
        "numlock" => Some(NumLock),
        "scrolllock" => Some(ScrollLock),
        "sysrq" | "prtsc" | "print" => Some(PrintScreen),
        "break" => Some(Pause),
        "minus" => Some(Minus),
        "plus" | "equal" => Some(Equal),
        _ => None,
    };
    if alias.is_some() {
        return alias;
    }
    let mut chars = name.chars();
    if let (Some(c), None) = (chars.next(), chars.next())
        && !c.is_whitespace()
    {
        return match us_key_for_char(c.to_ascii_lowercase()) {
            Some((key, false)) => Some(key),
            _ => None,
        };
    }
    KeyCode::from_name(name)
}

/// The events of a key combination such as `ctrl+alt+delete`: its keys pressed in the order
/// written, then released in the reverse order.
pub fn keys_for_combo(combo: &str) -> Result<Vec<InputEvent>, InputError> {
    let bad = |reason: String| InputError::BadCombo {
        combo: combo.to_string(),
        reason,
    };
    let mut keys = Vec::new();
    for word in combo.split('+') {
        let word = word.trim();
        if word.is_empty() {
            return Err(bad("it has an empty key name".into()));
        }
        let key = key_for_name(word).ok_or_else(|| bad(format!("no key is called `{word}`")))?;
        if keys.contains(&key) {
            return Err(bad(format!("it names {key} twice")));
        }
        keys.push(key);
    }
    let mut events: Vec<InputEvent> = keys.iter().map(|&k| InputEvent::press(k)).collect();
    events.extend(keys.iter().rev().map(|&k| InputEvent::release(k)));
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_is_listed_once_with_a_distinct_name() {
        let names: HashSet<&str> = KeyCode::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), KeyCode::ALL.len());
        assert!(KeyCode::ALL.len() > KeyCode::PC105_COUNT);
        assert_eq!(
            KeyCode::ALL[KeyCode::PC105_COUNT - 1],
            KeyCode::NumpadDecimal
        );
        for &key in KeyCode::ALL {
            assert_eq!(KeyCode::from_name(key.name()), Some(key));
            assert_eq!(key_for_name(key.name()), Some(key), "{key}");
            // The wire form is the name.
            assert_eq!(
                serde_json::to_string(&key).unwrap(),
                format!("\"{}\"", key.name())
            );
        }
    }

    #[test]
    fn events_have_a_stable_wire_form() {
        assert_eq!(
            serde_json::to_string(&InputEvent::press(KeyCode::KeyA)).unwrap(),
            r#"{"type":"key","key":"KeyA","pressed":true}"#
        );
        let motion = InputEvent::PointerMotion {
            dx: 5,
            dy: -3,
            wheel: 1,
            buttons: MouseButtons {
                left: true,
                right: false,
                middle: false,
            },
        };
        let wire = serde_json::to_string(&motion).unwrap();
        assert_eq!(
            wire,
            r#"{"type":"pointer-motion","dx":5,"dy":-3,"wheel":1,"buttons":{"left":true,"right":false,"middle":false}}"#
        );
        assert_eq!(serde_json::from_str::<InputEvent>(&wire).unwrap(), motion);
        // Fields may be left out: a click without motion.
        assert_eq!(
            serde_json::from_str::<InputEvent>(
                r#"{"type":"pointer-motion","buttons":{"right":true}}"#
            )
            .unwrap(),
            InputEvent::PointerMotion {
                dx: 0,
                dy: 0,
                wheel: 0,
                buttons: MouseButtons {
                    right: true,
                    ..MouseButtons::default()
                }
            }
        );
        assert!(
            serde_json::from_str::<InputEvent>(r#"{"type":"key","key":"KeyÄ","pressed":true}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<InputEvent>(r#"{"type":"key","key":"KeyA"}"#).is_err());
        let at = InputEvent::pointer_at(0.5, 1.0, MouseButtons::default());
        let wire = serde_json::to_string(&at).unwrap();
        assert_eq!(
            wire,
            r#"{"type":"pointer-position","x":32768,"y":65535,"wheel":0,"buttons":{"left":false,"right":false,"middle":false}}"#
        );
        assert_eq!(serde_json::from_str::<InputEvent>(&wire).unwrap(), at);
        assert_eq!(
            serde_json::from_str::<InputEvent>(r#"{"type":"pointer-position","x":1,"y":2}"#)
                .unwrap(),
            InputEvent::PointerPosition {
                x: 1,
                y: 2,
                wheel: 0,
                buttons: MouseButtons::default()
            }
        );
        assert!(
            serde_json::from_str::<InputEvent>(r#"{"type":"pointer-position","x":70000,"y":0}"#)
                .is_err()
        );
    }

    #[test]
    fn pointer_positions_are_clamped_fractions() {
        let at = |x, y| match InputEvent::pointer_at(x, y, MouseButtons::default()) {
            InputEvent::PointerPosition { x, y, .. } => (x, y),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.0, 1.0), (0, POINTER_POSITION_MAX));
        assert_eq!(at(-3.0, 7.5), (0, POINTER_POSITION_MAX));
        assert_eq!(at(f64::NAN, 0.25), (0, 16384));
        assert_eq!(
            at(f64::INFINITY, f64::NEG_INFINITY),
            (POINTER_POSITION_MAX, 0)
        );
    }

    #[test]
    fn text_becomes_key_strokes_with_shift_where_needed() {
        use InputEvent as E;
        use KeyCode::*;
        let events = keys_for_text("aB!\n").unwrap();
        assert_eq!(
            events,
            [
                E::press(KeyA),
                E::release(KeyA),
                E::press(ShiftLeft),
                E::press(KeyB),
                E::release(KeyB),
                E::release(ShiftLeft),
                E::press(ShiftLeft),
                E::press(Digit1),
                E::release(Digit1),
                E::release(ShiftLeft),
                E::press(Enter),
                E::release(Enter),
            ]
        );
        // "\r\n" and a lone '\r' are one Enter each; tab is Tab.
        assert_eq!(keys_for_text("\r\n").unwrap(), keys_for_text("\n").unwrap());
        assert_eq!(keys_for_text("\r").unwrap(), keys_for_text("\n").unwrap());
        assert_eq!(
            keys_for_text("\t").unwrap(),
            [E::press(Tab), E::release(Tab)]
        );
        assert_eq!(keys_for_text("").unwrap(), []);
    }

    #[test]
    fn every_printable_ascii_character_is_typable_and_distinct() {
        let mut seen = HashSet::new();
        for c in (0x20u8..0x7f).map(char::from).chain(['\n', '\t']) {
            let (key, shifted) = us_key_for_char(c).unwrap_or_else(|| panic!("{c:?}"));
            assert!(seen.insert((key, shifted)), "{c:?} shares its key stroke");
            assert!(!key.is_modifier());
            let events = keys_for_text(&c.to_string()).unwrap();
            assert_eq!(events.len(), if shifted { 4 } else { 2 }, "{c:?}");
        }
        assert_eq!(seen.len(), 95 + 2);
    }

    #[test]
    fn untypable_characters_are_all_named() {
        let err = keys_for_text("café ñ\u{7}").unwrap_err();
        assert_eq!(
            err,
            InputError::Untypable(vec![(3, 'é'), (5, 'ñ'), (6, '\u{7}')])
        );
        let text = err.to_string();
        assert!(text.contains("'é' (U+00E9) at character 4"), "{text}");
        assert!(text.contains("U+0007"), "{text}");
        assert!(text.contains("--key"), "{text}");
    }

    #[test]
    fn combos_press_in_order_and_release_in_reverse() {
        use InputEvent as E;
        use KeyCode::*;
        assert_eq!(
            keys_for_combo("ctrl+alt+delete").unwrap(),
            [
                E::press(ControlLeft),
                E::press(AltLeft),
                E::press(Delete),
                E::release(Delete),
                E::release(AltLeft),
                E::release(ControlLeft),
            ]
        );
        assert_eq!(
            keys_for_combo("Enter").unwrap(),
            [E::press(Enter), E::release(Enter)]
        );
        assert_eq!(keys_for_combo("f2").unwrap()[0], E::press(F2));
        assert_eq!(keys_for_combo("F12").unwrap()[0], E::press(F12));
        assert_eq!(
            keys_for_combo("AudioVolumeUp").unwrap()[0],
            E::press(AudioVolumeUp)
        );
        assert_eq!(keys_for_combo("shift + A").unwrap()[1], E::press(KeyA));
        assert_eq!(keys_for_combo("super+/").unwrap()[1], E::press(Slash));
        assert_eq!(
            keys_for_combo("NumpadEnter").unwrap()[0],
            E::press(NumpadEnter)
        );
        for bad in ["", "ctrl+", "ctrl+foo", "ctrl+ctrl", "shift+?", "é"] {
            let err = keys_for_combo(bad).unwrap_err();
            assert!(matches!(err, InputError::BadCombo { .. }), "{bad}");
        }
        let text = keys_for_combo("ctrl+foo").unwrap_err().to_string();
        assert!(text.contains("no key is called `foo`"), "{text}");
    }
}
