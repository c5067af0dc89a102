//! `vivarium type`, `vivarium key` and `vivarium mouse`: keyboard and mouse input for a
//! running VM from the command line, through its control socket.
//!
//! Keys go to the guest's PS/2 keyboard, whose buffer holds a few dozen key strokes and
//! drops what does not fit (as a real keyboard does when the computer does not read it). So
//! the input goes one key stroke (a character, a combination, a mouse action) at a time with
//! a short pause between them, as QEMU's `sendkey` and a human typist do: a guest that reads
//! its keyboard on interrupts (Linux) never falls behind, and one that polls it (a boot
//! loader) gets the time to see each key. Sent all at once, 300 characters overflow the
//! buffer even of a guest that does nothing but read it.

use std::time::Duration;

use serde_json::json;
use vivarium_core::input::{InputEvent, MouseButtons, keys_for_combo, keys_for_text};
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

/// The mouse actions of `vivarium mouse`, each a stroke: `move:DX,DY` (counts right and
/// down; negative: left and up), `down:BUTTON`, `up:BUTTON`, `click:BUTTON` (down, then up),
/// `wheel:N` (detents up; negative: down), with BUTTON `left`, `right` or `middle`. Buttons
/// pressed with `down` stay held through the following actions. Checks everything before
/// anything is sent.
pub fn mouse_strokes(actions: &[String]) -> Result<Vec<Vec<InputEvent>>, Error> {
    let bad = |action: &str, why: &str| {
        Error::InvalidInput(format!(
            "`{action}` is not a mouse action: {why}. Actions: move:DX,DY (e.g. move:10,-5 is \
             10 right and 5 up), down:BUTTON, up:BUTTON, click:BUTTON, wheel:N, with BUTTON \
             left, right or middle"
        ))
    };
    let motion = |dx, dy, wheel, buttons| InputEvent::PointerMotion {
        dx,
        dy,
        wheel,
        buttons,
    };
    let mut held = MouseButtons::default();
    let mut strokes = Vec::new();
    for action in actions {
        let (verb, arg) = action
            .split_once(':')
            .ok_or_else(|| bad(action, "it has no `:`"))?;
        let with_button = |buttons: MouseButtons, down: bool| -> Result<MouseButtons, Error> {
            let mut buttons = buttons;
            match arg {
                "left" => buttons.left = down,
                "right" => buttons.right = down,
                "middle" => buttons.middle = down,
                _ => return Err(bad(action, &format!("no button is called `{arg}`"))),
            }
            Ok(buttons)
        };
        let number = |text: &str| {
            text.trim()
                .parse::<i32>()
                .map_err(|_| bad(action, &format!("`{text}` is not a whole number")))
        };
        let stroke = match verb {
            "move" => {
                let (dx, dy) = arg
                    .split_once(',')
                    .ok_or_else(|| bad(action, "a move is DX,DY"))?;
                vec![motion(number(dx)?, number(dy)?, 0, held)]
            }
            "wheel" => vec![motion(0, 0, number(arg)?, held)],
            "down" => {
                held = with_button(held, true)?;
                vec![motion(0, 0, 0, held)]
            }
            "up" => {
                held = with_button(held, false)?;
                vec![motion(0, 0, 0, held)]
            }
            "click" => vec![
                motion(0, 0, 0, with_button(held, true)?),
                motion(0, 0, 0, held),
            ],
            _ => return Err(bad(action, &format!("`{verb}` is not an action"))),
        };
        strokes.push(stroke);
    }
    if strokes.is_empty() {
        return Err(Error::InvalidInput(
            "no mouse action given (e.g. move:10,-5 click:left)".into(),
        ));
    }
    Ok(strokes)
}

/// Types into VM `name`: checks the input, connects, and sends it stroke by stroke.
pub fn type_into(library: &Library, name: &str, typing: &Typing, json: bool) -> Result<(), Error> {
    let strokes = typing.strokes()?;
    send_strokes(library, name, &strokes, typing.delay, json)?;
    if !json {
        println!("`{name}`: typed {} key strokes.", strokes.len());
    }
    Ok(())
}

/// Moves VM `name`'s mouse as `actions` say (see [`mouse_strokes`]), `delay` apart.
pub fn move_mouse(
    library: &Library,
    name: &str,
    actions: &[String],
    delay: Duration,
    json: bool,
) -> Result<(), Error> {
    let strokes = mouse_strokes(actions)?;
    send_strokes(library, name, &strokes, delay, json)?;
    if !json {
        println!("`{name}`: did {} mouse actions.", strokes.len());
    }
    Ok(())
}

/// Sends `strokes` to VM `name`, `delay` apart; with `json`, prints what was sent.
fn send_strokes(
    library: &Library,
    name: &str,
    strokes: &[Vec<InputEvent>],
    delay: Duration,
    json: bool,
) -> Result<(), Error> {
    library.get(name)?;
    let mut client = vivarium_core::control::ControlClient::connect(library, name)?;
    let mut events = 0;
    for (i, stroke) in strokes.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            std::thread::sleep(delay);
        }
        client.send_input(stroke)?;
        events += stroke.len();
    }
    if json {
        println!(
            "{}",
            json!({"vm": name, "strokes": strokes.len(), "events": events})
        );
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

    #[test]
    fn mouse_actions_hold_buttons_across_moves() {
        let actions = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let motion = |dx, dy, wheel, left, right| InputEvent::PointerMotion {
            dx,
            dy,
            wheel,
            buttons: MouseButtons {
                left,
                right,
                middle: false,
            },
        };
        let strokes = mouse_strokes(&actions(&[
            "move:7,-5",
            "down:left",
            "move:-1,2",
            "up:left",
            "click:right",
            "wheel:-2",
        ]))
        .unwrap();
        assert_eq!(
            strokes,
            [
                vec![motion(7, -5, 0, false, false)],
                vec![motion(0, 0, 0, true, false)],
                vec![motion(-1, 2, 0, true, false)],
                vec![motion(0, 0, 0, false, false)],
                vec![motion(0, 0, 0, false, true), motion(0, 0, 0, false, false)],
                vec![motion(0, 0, -2, false, false)],
            ]
        );
        for bad in ["move:1", "move:a,2", "down:thumb", "jump:1", "left", ""] {
            let err = mouse_strokes(&actions(&[bad])).unwrap_err();
            assert_eq!(err.kind(), vivarium_core::ErrorKind::InvalidInput, "{bad}");
        }
        assert!(mouse_strokes(&[]).is_err());
    }
}
