//! `vivarium type` and `vivarium key`: keyboard input for a running VM from the command line,
//! through its control socket.
//!
//! Keys go to the guest's PS/2 keyboard, whose buffer holds a few dozen key strokes and
//! drops what does not fit (as a real keyboard does when the computer does not read it). So
//! the text goes one character at a time with a short pause between characters, as QEMU's
//! `sendkey` and a human typist do: a guest that reads its keyboard on interrupts (Linux)
//! never falls behind, and one that polls it (a boot loader) gets the time to see each key.

use std::time::Duration;

use serde_json::json;
use vivarium_core::input::{InputEvent, keys_for_combo, keys_for_text};
use vivarium_core::{Error, Library};

/// The pause between characters unless `--delay` says otherwise.
pub const DEFAULT_DELAY_MS: u64 = 10;

/// What to type: text first, then each key combination, in order.
#[derive(Debug, Clone, Default)]
pub struct Typing {
    /// Text for a US keyboard layout (`\n` is Enter, `\t` Tab).
    pub text: Option<String>,
    /// Key combinations such as `ctrl+alt+delete`, `enter` or `f2`.
    pub combos: Vec<String>,
    /// The pause between key strokes.
    pub delay: Duration,
}

impl Typing {
    /// The key strokes: each a short group of events (a character, or a combination) sent
    /// together. Checks everything before anything is sent, so bad input types nothing.
    pub fn strokes(&self) -> Result<Vec<Vec<InputEvent>>, Error> {
        let mut strokes = Vec::new();
        if let Some(text) = &self.text {
            let events = keys_for_text(text).map_err(|e| Error::InvalidInput(e.to_string()))?;
            // A character is a press and a release of its key, inside Shift when shifted:
            // a stroke ends when no key is down any more.
            let mut down = 0usize;
            let mut stroke = Vec::new();
            for event in events {
                if let InputEvent::Key { pressed, .. } = event {
                    if pressed {
                        down += 1;
                    } else {
                        down = down.saturating_sub(1);
                    }
                }
                stroke.push(event);
                if down == 0 {
                    strokes.push(std::mem::take(&mut stroke));
                }
            }
        }
        for combo in &self.combos {
            strokes.push(keys_for_combo(combo).map_err(|e| Error::InvalidInput(e.to_string()))?);
        }
        if strokes.is_empty() {
            return Err(Error::InvalidInput(
                "nothing to type: give the text, or keys with --key (e.g. --key enter)".into(),
            ));
        }
        Ok(strokes)
    }
}

/// Types into VM `name`: checks the input, connects, and sends it stroke by stroke.
pub fn type_into(library: &Library, name: &str, typing: &Typing, json: bool) -> Result<(), Error> {
    let strokes = typing.strokes()?;
    library.get(name)?;
    let mut client = vivarium_core::control::ControlClient::connect(library, name)?;
    let mut events = 0;
    for (i, stroke) in strokes.iter().enumerate() {
        if i > 0 && !typing.delay.is_zero() {
            std::thread::sleep(typing.delay);
        }
        client.send_input(stroke)?;
        events += stroke.len();
    }
    if json {
        println!(
            "{}",
            json!({"vm": name, "strokes": strokes.len(), "events": events})
        );
    } else {
        println!("`{name}`: typed {} key strokes.", strokes.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vivarium_core::input::KeyCode;

    fn typing(text: Option<&str>, combos: &[&str]) -> Typing {
        Typing {
            text: text.map(String::from),
            combos: combos.iter().map(|c| c.to_string()).collect(),
            delay: Duration::ZERO,
        }
    }

    #[test]
    fn one_stroke_per_character_then_per_combination() {
        let strokes = typing(Some("aB\n"), &["ctrl+alt+delete", "f2"])
            .strokes()
            .unwrap();
        assert_eq!(strokes.len(), 5);
        assert_eq!(
            strokes[0],
            [
                InputEvent::press(KeyCode::KeyA),
                InputEvent::release(KeyCode::KeyA)
            ]
        );
        assert_eq!(strokes[1].len(), 4, "B is inside Shift");
        assert_eq!(strokes[2][0], InputEvent::press(KeyCode::Enter));
        assert_eq!(strokes[3].len(), 6);
        assert_eq!(strokes[4][0], InputEvent::press(KeyCode::F2));
        // Everything together is exactly the text's and the combinations' events.
        let mut all = keys_for_text("aB\n").unwrap();
        all.extend(keys_for_combo("ctrl+alt+delete").unwrap());
        all.extend(keys_for_combo("f2").unwrap());
        assert_eq!(strokes.concat(), all);
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_sent() {
        for (text, combos) in [
            (Some("naïve"), &[][..]),
            (Some("ok"), &["ctrl+nothing"][..]),
            (None, &[][..]),
            (Some(""), &[][..]),
        ] {
            let err = typing(text, combos).strokes().unwrap_err();
            assert_eq!(err.kind(), vivarium_core::ErrorKind::InvalidInput, "{err}");
        }
        let err = typing(Some("naïve"), &[])
            .strokes()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'ï' (U+00EF) at character 3"), "{err}");
    }
}
