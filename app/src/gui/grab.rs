//! The input grab: while the guest's screen has the keyboard and mouse, every key, button,
//! wheel turn and mouse movement is taken out of egui's input (so no app shortcut or widget
//! sees it) and turned into the guest's [`InputEvent`]s. Pressing Ctrl and Alt together (the
//! release combination, as in VMware) gives them back.
//!
//! Modifiers: egui-winit reports the modifier keys both as key events of their own (left and
//! right apart) and as a modifier state (`ModifiersChanged`, and on every key event). The
//! grab follows both: a modifier the state says is held but no key event pressed is pressed
//! on its left side; a modifier the state says is up is released on both sides. So the guest
//! never keeps a modifier down that the user let go of.
//!
//! Mouse: the guest has a relative mouse. Raw mouse motion (`MouseMoved`, the device's own
//! counts, as egui-winit forwards them) is used when the platform gives it; else the
//! pointer's movement in physical pixels.

use std::collections::BTreeSet;

use eframe::egui::{Event, Modifiers, MouseWheelUnit, PointerButton, Pos2};
use vivarium_core::input::{InputEvent, KeyCode, MouseButtons};

use super::keymap;

/// The release combination, as the status bar says it.
pub const RELEASE_COMBO: &str = "Ctrl+Alt";
/// Wheel motion in points that counts as one detent (for touchpads that scroll smoothly).
const POINTS_PER_DETENT: f32 = 50.0;

/// The keys sent for the Ctrl+Alt+Del button (it cannot be typed while grabbed: Ctrl+Alt
/// releases the grab first).
pub const CTRL_ALT_DEL: [InputEvent; 6] = [
    InputEvent::Key {
        key: KeyCode::ControlLeft,
        pressed: true,
    },
    InputEvent::Key {
        key: KeyCode::AltLeft,
        pressed: true,
    },
    InputEvent::Key {
        key: KeyCode::Delete,
        pressed: true,
    },
    InputEvent::Key {
        key: KeyCode::Delete,
        pressed: false,
    },
    InputEvent::Key {
        key: KeyCode::AltLeft,
        pressed: false,
    },
    InputEvent::Key {
        key: KeyCode::ControlLeft,
        pressed: false,
    },
];

/// The grab's state: whether it is on, and what the guest has been told is held down.
#[derive(Debug, Default)]
pub struct Grab {
    active: bool,
    keys_down: BTreeSet<KeyCode>,
    buttons: MouseButtons,
    last_pointer: Option<Pos2>,
    /// Motion and wheel not sent yet (fractions of a count or a detent).
    motion: [f32; 2],
    wheel: f32,
}

/// What a batch of events did to the grab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrabChange {
    /// The grab goes on.
    Held,
    /// The release combination was pressed: the grab ended.
    Released,
}

impl Grab {
    /// Whether the screen has the keyboard and mouse.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Starts the grab; `pointer` is where the pointer is now.
    pub fn begin(&mut self, pointer: Option<Pos2>) {
        self.active = true;
        self.last_pointer = pointer;
        self.motion = [0.0; 2];
        self.wheel = 0.0;
    }

    /// Ends the grab, and tells the guest every key and button it holds came up.
    pub fn end(&mut self, out: &mut Vec<InputEvent>) {
        self.active = false;
        // Modifiers last, so a held combination does not turn into another on the way up.
        let (modifiers, keys): (Vec<KeyCode>, Vec<KeyCode>) = std::mem::take(&mut self.keys_down)
            .into_iter()
            .partition(|k| k.is_modifier());
        out.extend(keys.into_iter().chain(modifiers).map(InputEvent::release));
        if self.buttons != MouseButtons::default() {
            self.buttons = MouseButtons::default();
            out.push(InputEvent::PointerMotion {
                dx: 0,
                dy: 0,
                wheel: 0,
                buttons: self.buttons,
            });
        }
    }

    /// Takes the events that belong to the guest out of `events` (keys, text, clipboard
    /// shortcuts, pointer buttons, motion and wheel), leaving focus and window events.
    pub fn steal(events: &mut Vec<Event>) -> Vec<Event> {
        let mut stolen = Vec::new();
        events.retain(|event| {
            let guest = matches!(
                event,
                Event::Key { .. }
                    | Event::Text(_)
                    | Event::Ime(_)
                    | Event::Copy
                    | Event::Cut
                    | Event::Paste(_)
                    | Event::PasteImage(_)
                    | Event::PointerButton { .. }
                    | Event::PointerMoved(_)
                    | Event::MouseMoved(_)
                    | Event::MouseWheel { .. }
                    | Event::ModifiersChanged(_)
            );
            if guest {
                stolen.push(event.clone());
            }
            !guest
        });
        stolen
    }

    /// Turns stolen events into the guest's events (appended to `out`); `pixels_per_point`
    /// converts pointer movement to physical pixels. Stops at the release combination.
    pub fn translate(
        &mut self,
        events: &[Event],
        pixels_per_point: f32,
        out: &mut Vec<InputEvent>,
    ) -> GrabChange {
        if !self.active {
            return GrabChange::Released;
        }
        let raw_motion = events.iter().any(|e| matches!(e, Event::MouseMoved(_)));
        for event in events {
            match event {
                Event::ModifiersChanged(modifiers) => self.sync_modifiers(*modifiers, out),
                Event::Key {
                    key,
                    physical_key,
                    pressed,
                    modifiers,
                    ..
                } => {
                    let Some(code) = keymap::key_code(*physical_key, *key) else {
                        continue;
                    };
                    if !code.is_modifier() {
                        self.sync_modifiers(*modifiers, out);
                    }
                    self.key(code, *pressed, out);
                }
                // egui-winit turns Ctrl+C, Ctrl+X and Ctrl+V into clipboard events instead of
                // key presses (their releases come as keys).
                Event::Copy => self.key(KeyCode::KeyC, true, out),
                Event::Cut => self.key(KeyCode::KeyX, true, out),
                Event::Paste(_) | Event::PasteImage(_) => self.key(KeyCode::KeyV, true, out),
                Event::PointerButton {
                    button, pressed, ..
                } => {
                    let mut buttons = self.buttons;
                    let held = match button {
                        PointerButton::Primary => &mut buttons.left,
                        PointerButton::Secondary => &mut buttons.right,
                        PointerButton::Middle => &mut buttons.middle,
                        _ => continue,
                    };
                    if *held != *pressed {
                        *held = *pressed;
                        // Motion before the press moves with the buttons held before it.
                        self.flush_motion(out);
                        self.buttons = buttons;
                        out.push(InputEvent::PointerMotion {
                            dx: 0,
                            dy: 0,
                            wheel: 0,
                            buttons: self.buttons,
                        });
                    }
                }
                Event::MouseMoved(delta) => {
                    self.motion[0] += delta.x;
                    self.motion[1] += delta.y;
                }
                Event::PointerMoved(pos) => {
                    if !raw_motion && let Some(last) = self.last_pointer {
                        self.motion[0] += (pos.x - last.x) * pixels_per_point;
                        self.motion[1] += (pos.y - last.y) * pixels_per_point;
                    }
                    self.last_pointer = Some(*pos);
                }
                Event::MouseWheel { unit, delta, .. } => {
                    self.wheel += match unit {
                        MouseWheelUnit::Line => delta.y,
                        MouseWheelUnit::Page => delta.y * 3.0,
                        MouseWheelUnit::Point => delta.y / POINTS_PER_DETENT,
                    };
                }
                _ => {}
            }
            if self.release_combo_held() {
                self.end(out);
                return GrabChange::Released;
            }
        }
        self.flush_motion(out);
        GrabChange::Held
    }

    fn key(&mut self, code: KeyCode, pressed: bool, out: &mut Vec<InputEvent>) {
        if pressed {
            // A modifier the state already pressed is not pressed again.
            if !(code.is_modifier() && self.keys_down.contains(&code)) {
                self.keys_down.insert(code);
                out.push(InputEvent::press(code));
            }
        } else if self.keys_down.remove(&code) {
            out.push(InputEvent::release(code));
        }
    }

    /// Makes the guest's modifiers agree with the state egui reports.
    fn sync_modifiers(&mut self, modifiers: Modifiers, out: &mut Vec<InputEvent>) {
        let mac = cfg!(target_os = "macos");
        for (held, left, right) in [
            (modifiers.shift, KeyCode::ShiftLeft, KeyCode::ShiftRight),
            (modifiers.ctrl, KeyCode::ControlLeft, KeyCode::ControlRight),
            (modifiers.alt, KeyCode::AltLeft, KeyCode::AltRight),
            // Only macOS reports the Command (Super) key as a modifier.
            (
                mac && modifiers.mac_cmd,
                KeyCode::MetaLeft,
                KeyCode::MetaRight,
            ),
        ] {
            let down = self.keys_down.contains(&left) || self.keys_down.contains(&right);
            if held && !down {
                self.key(left, true, out);
            } else if !held && down && (mac || left != KeyCode::MetaLeft) {
                self.key(left, false, out);
                self.key(right, false, out);
            }
        }
    }

    fn release_combo_held(&self) -> bool {
        let any = |a, b| self.keys_down.contains(&a) || self.keys_down.contains(&b);
        any(KeyCode::ControlLeft, KeyCode::ControlRight) && any(KeyCode::AltLeft, KeyCode::AltRight)
    }

    fn flush_motion(&mut self, out: &mut Vec<InputEvent>) {
        let dx = self.motion[0].trunc();
        let dy = self.motion[1].trunc();
        let wheel = self.wheel.trunc();
        if dx == 0.0 && dy == 0.0 && wheel == 0.0 {
            return;
        }
        self.motion[0] -= dx;
        self.motion[1] -= dy;
        self.wheel -= wheel;
        out.push(InputEvent::PointerMotion {
            dx: dx as i32,
            dy: dy as i32,
            wheel: wheel as i32,
            buttons: self.buttons,
        });
    }
}

/// A key event as egui-winit reports it (for tests).
#[cfg(test)]
fn key_event(key: eframe::egui::Key, pressed: bool, modifiers: Modifiers) -> Event {
    Event::Key {
        key,
        physical_key: Some(key),
        pressed,
        repeat: false,
        modifiers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eframe::egui::{self, Key};

    fn run(grab: &mut Grab, events: &[Event]) -> (Vec<InputEvent>, GrabChange) {
        let mut out = Vec::new();
        let change = grab.translate(events, 2.0, &mut out);
        (out, change)
    }

    fn active() -> Grab {
        let mut grab = Grab::default();
        grab.begin(Some(Pos2::new(10.0, 10.0)));
        grab
    }

    #[test]
    fn keys_with_modifiers_reach_the_guest_in_order() {
        let mut grab = active();
        let shift = Modifiers::SHIFT;
        let (out, change) = run(
            &mut grab,
            &[
                key_event(Key::ShiftLeft, true, Modifiers::NONE),
                Event::ModifiersChanged(shift),
                key_event(Key::A, true, shift),
                Event::Text("A".into()),
                key_event(Key::A, false, shift),
                key_event(Key::ShiftLeft, false, shift),
                Event::ModifiersChanged(Modifiers::NONE),
            ],
        );
        assert_eq!(change, GrabChange::Held);
        assert_eq!(
            out,
            vec![
                InputEvent::press(KeyCode::ShiftLeft),
                InputEvent::press(KeyCode::KeyA),
                InputEvent::release(KeyCode::KeyA),
                InputEvent::release(KeyCode::ShiftLeft),
            ]
        );
        assert!(grab.keys_down.is_empty());
    }

    #[test]
    fn a_modifier_known_only_from_the_state_is_pressed_and_released() {
        // Synthetic events (and some platforms) give no key event for the modifier itself.
        let mut grab = active();
        let (out, _) = run(
            &mut grab,
            &[
                key_event(Key::C, true, Modifiers::SHIFT),
                key_event(Key::C, false, Modifiers::SHIFT),
                Event::ModifiersChanged(Modifiers::NONE),
            ],
        );
        assert_eq!(
            out,
            vec![
                InputEvent::press(KeyCode::ShiftLeft),
                InputEvent::press(KeyCode::KeyC),
                InputEvent::release(KeyCode::KeyC),
                InputEvent::release(KeyCode::ShiftLeft),
            ]
        );
    }

    #[test]
    fn ctrl_alt_releases_the_grab_and_every_held_key() {
        let mut grab = active();
        let (out, change) = run(
            &mut grab,
            &[
                key_event(Key::W, true, Modifiers::NONE),
                key_event(Key::ControlLeft, true, Modifiers::NONE),
                key_event(Key::AltRight, true, Modifiers::CTRL),
                key_event(Key::X, true, Modifiers::CTRL | Modifiers::ALT),
            ],
        );
        assert_eq!(change, GrabChange::Released);
        assert!(!grab.is_active());
        assert_eq!(
            out,
            vec![
                InputEvent::press(KeyCode::KeyW),
                InputEvent::press(KeyCode::ControlLeft),
                InputEvent::press(KeyCode::AltRight),
                InputEvent::release(KeyCode::KeyW),
                InputEvent::release(KeyCode::ControlLeft),
                InputEvent::release(KeyCode::AltRight),
            ],
            "X came after the release: it is not sent"
        );
    }

    #[test]
    fn clipboard_shortcuts_are_keys_for_the_guest() {
        let mut grab = active();
        let (out, _) = run(
            &mut grab,
            &[
                key_event(Key::ControlLeft, true, Modifiers::NONE),
                Event::ModifiersChanged(Modifiers::CTRL),
                Event::Copy,
                key_event(Key::C, false, Modifiers::CTRL),
            ],
        );
        assert_eq!(
            out,
            vec![
                InputEvent::press(KeyCode::ControlLeft),
                InputEvent::press(KeyCode::KeyC),
                InputEvent::release(KeyCode::KeyC),
            ]
        );
    }

    #[test]
    fn raw_motion_wins_over_pointer_motion_and_buttons_keep_order() {
        let mut grab = active();
        let pos = Pos2::new(10.0, 10.0);
        let (out, _) = run(
            &mut grab,
            &[
                Event::PointerMoved(Pos2::new(50.0, 50.0)),
                Event::MouseMoved(egui::vec2(3.0, -2.0)),
                Event::PointerButton {
                    pos,
                    button: PointerButton::Primary,
                    pressed: true,
                    modifiers: Modifiers::NONE,
                },
                Event::MouseMoved(egui::vec2(1.5, 0.0)),
                Event::MouseWheel {
                    unit: MouseWheelUnit::Line,
                    delta: egui::vec2(0.0, -1.0),
                    phase: egui::TouchPhase::Move,
                    source: egui::MouseWheelSource::Wheel,
                    modifiers: Modifiers::NONE,
                },
            ],
        );
        let left = MouseButtons {
            left: true,
            ..Default::default()
        };
        assert_eq!(
            out,
            vec![
                InputEvent::PointerMotion {
                    dx: 3,
                    dy: -2,
                    wheel: 0,
                    buttons: MouseButtons::default()
                },
                InputEvent::PointerMotion {
                    dx: 0,
                    dy: 0,
                    wheel: 0,
                    buttons: left
                },
                InputEvent::PointerMotion {
                    dx: 1,
                    dy: 0,
                    wheel: -1,
                    buttons: left
                },
            ]
        );
        // Without raw motion, the pointer's movement counts, in physical pixels (2 per point).
        let (out, _) = run(&mut grab, &[Event::PointerMoved(Pos2::new(52.0, 49.0))]);
        assert_eq!(
            out,
            vec![InputEvent::PointerMotion {
                dx: 4,
                dy: -2,
                wheel: 0,
                buttons: left
            }]
        );
        // Ending the grab lets go of the button.
        let mut out = Vec::new();
        grab.end(&mut out);
        assert_eq!(
            out,
            vec![InputEvent::PointerMotion {
                dx: 0,
                dy: 0,
                wheel: 0,
                buttons: MouseButtons::default()
            }]
        );
    }

    #[test]
    fn stealing_leaves_window_events() {
        let mut events = vec![
            Event::WindowFocused(false),
            key_event(Key::A, true, Modifiers::NONE),
            Event::PointerGone,
            Event::Text("a".into()),
        ];
        let stolen = Grab::steal(&mut events);
        assert_eq!(stolen.len(), 2);
        assert_eq!(
            events,
            vec![Event::WindowFocused(false), Event::PointerGone]
        );
    }
}
