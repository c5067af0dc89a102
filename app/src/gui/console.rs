//! The serial console of a running VM in a terminal view: the VM process's serial stream
//! (backlog first, then live) fed into a `vt100` screen model, drawn cell by cell, with
//! scrollback (mouse wheel), copy, and keyboard input sent to the guest's serial port.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use eframe::egui::{self, Color32, FontId, Sense, text::LayoutJob};
use vivarium_core::Library;
use vivarium_core::control::{ControlClient, SerialInput};

/// Lines of scrollback kept per console.
const SCROLLBACK: usize = 5000;
/// Size of the screen before the view has measured itself.
const INITIAL_SIZE: (u16, u16) = (25, 80);

/// What the console knows about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// Connecting to the VM process.
    Connecting,
    /// Attached: output arrives, input goes out.
    Attached,
    /// The VM stopped or the connection ended.
    Ended,
    /// Attaching failed.
    Failed(String),
}

/// One VM's console: its screen model, and the thread that feeds it.
pub struct Console {
    parser: Arc<Mutex<vt100::Parser>>,
    input: Arc<Mutex<Option<SerialInput>>>,
    link: Arc<Mutex<Link>>,
    stop: Arc<AtomicBool>,
    /// Whether the console has the keyboard.
    focused: bool,
}

impl Console {
    /// Attaches to VM `name`'s serial console on a thread of its own.
    pub fn attach(library: &Library, name: &str, ctx: &egui::Context) -> Console {
        let console = Console {
            parser: Arc::new(Mutex::new(vt100::Parser::new(
                INITIAL_SIZE.0,
                INITIAL_SIZE.1,
                SCROLLBACK,
            ))),
            input: Arc::new(Mutex::new(None)),
            link: Arc::new(Mutex::new(Link::Connecting)),
            stop: Arc::new(AtomicBool::new(false)),
            focused: false,
        };
        let (parser, input, link, stop) = (
            console.parser.clone(),
            console.input.clone(),
            console.link.clone(),
            console.stop.clone(),
        );
        let (library, name, ctx) = (library.clone(), name.to_string(), ctx.clone());
        let _ = std::thread::Builder::new()
            .name(format!("console-{name}"))
            .spawn(move || {
                let stream = ControlClient::connect(&library, &name)
                    .and_then(|client| client.attach_serial());
                let mut stream = match stream {
                    Ok(stream) => stream,
                    Err(e) => {
                        *lock(&link) = Link::Failed(e.to_string());
                        ctx.request_repaint();
                        return;
                    }
                };
                *lock(&input) = stream.input().ok();
                *lock(&link) = Link::Attached;
                let mut buf = [0u8; 8192];
                while !stop.load(Ordering::Relaxed) {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            lock(&parser).process(&buf[..n]);
                            ctx.request_repaint();
                        }
                    }
                }
                *lock(&link) = Link::Ended;
                *lock(&input) = None;
                ctx.request_repaint();
            });
        console
    }

    /// The connection's state.
    pub fn link(&self) -> Link {
        lock(&self.link).clone()
    }

    /// The text on the screen (without scrollback).
    pub fn screen_text(&self) -> String {
        lock(&self.parser).screen().contents()
    }

    /// Sends bytes to the guest's serial port.
    pub fn send(&self, bytes: &[u8]) {
        if let Some(input) = lock(&self.input).as_mut() {
            let _ = input.write_all(bytes);
        }
    }

    /// Draws the terminal in the space `ui` offers and takes keyboard input when focused.
    pub fn ui(&mut self, ui: &mut egui::Ui, label: &str) {
        let font = FontId::monospace(13.0);
        let (char_w, line_h) = ui.fonts_mut(|f| (f.glyph_width(&font, 'M'), f.row_height(&font)));
        let size = ui.available_size();
        let cols = ((size.x - 16.0) / char_w).floor().clamp(20.0, 400.0) as u16;
        let rows = ((size.y - 16.0) / line_h).floor().clamp(5.0, 200.0) as u16;
        let (rect, response) = ui.allocate_exact_size(size, Sense::click());
        let id = response.id;
        if response.clicked() {
            response.request_focus();
        }
        self.focused = response.has_focus();
        if self.focused {
            ui.memory_mut(|m| {
                m.set_focus_lock_filter(
                    id,
                    egui::EventFilter {
                        tab: true,
                        horizontal_arrows: true,
                        vertical_arrows: true,
                        escape: true,
                    },
                )
            });
            self.take_keys(ui);
        }
        let mut parser = lock(&self.parser);
        if parser.screen().size() != (rows, cols) {
            parser.screen_mut().set_size(rows, cols);
        }
        if response.hovered() {
            let scroll = ui.input(|i| i.smooth_scroll_delta.y);
            if scroll != 0.0 {
                let lines = (scroll / line_h).round() as isize;
                let now = parser.screen().scrollback() as isize;
                parser
                    .screen_mut()
                    .set_scrollback((now + lines).max(0) as usize);
            }
        }
        let screen = parser.screen();
        let text = screen.contents();
        response.widget_info(|| {
            let mut info = egui::WidgetInfo::labeled(egui::Role::Terminal, true, label);
            info.current_text_value = Some(text.clone());
            info
        });
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 8, BACKGROUND);
        if self.focused {
            painter.rect_stroke(
                rect,
                8,
                egui::Stroke::new(1.5, super::style::ACCENT),
                egui::StrokeKind::Inside,
            );
        }
        let origin = rect.min + egui::vec2(8.0, 8.0);
        for row in 0..rows {
            let mut job = LayoutJob::default();
            for col in 0..cols {
                let Some(cell) = screen.cell(row, col) else {
                    continue;
                };
                if cell.is_wide_continuation() {
                    continue;
                }
                let (mut fg, mut bg) = (
                    color(cell.fgcolor(), FOREGROUND),
                    color(cell.bgcolor(), Color32::TRANSPARENT),
                );
                if cell.inverse() {
                    let fg_was = fg;
                    fg = if bg == Color32::TRANSPARENT {
                        BACKGROUND
                    } else {
                        bg
                    };
                    bg = fg_was;
                }
                if cell.bold() {
                    fg = fg.gamma_multiply(1.15);
                }
                let contents = if cell.has_contents() {
                    cell.contents()
                } else {
                    " "
                };
                job.append(
                    contents,
                    0.0,
                    egui::TextFormat {
                        font_id: font.clone(),
                        color: fg,
                        background: bg,
                        underline: if cell.underline() {
                            egui::Stroke::new(1.0, fg)
                        } else {
                            egui::Stroke::NONE
                        },
                        ..Default::default()
                    },
                );
            }
            let galley = painter.layout_job(job);
            painter.galley(
                origin + egui::vec2(0.0, row as f32 * line_h),
                galley,
                FOREGROUND,
            );
        }
        if screen.scrollback() == 0 && !screen.hide_cursor() {
            let (crow, ccol) = screen.cursor_position();
            let cursor = egui::Rect::from_min_size(
                origin + egui::vec2(ccol as f32 * char_w, crow as f32 * line_h),
                egui::vec2(char_w, line_h),
            );
            if self.focused {
                painter.rect_filled(cursor, 1, FOREGROUND.gamma_multiply(0.7));
            } else {
                painter.rect_stroke(
                    cursor,
                    1,
                    egui::Stroke::new(1.0, FOREGROUND.gamma_multiply(0.6)),
                    egui::StrokeKind::Inside,
                );
            }
        }
        if screen.scrollback() > 0 {
            painter.text(
                rect.right_top() + egui::vec2(-12.0, 10.0),
                egui::Align2::RIGHT_TOP,
                format!("scrolled back {} lines", screen.scrollback()),
                FontId::proportional(12.0),
                Color32::from_gray(160),
            );
        }
    }

    /// Turns the frame's key and text events into bytes for the guest.
    fn take_keys(&mut self, ui: &egui::Ui) {
        let events = ui.input(|i| i.events.clone());
        let mut out = Vec::new();
        for event in events {
            match event {
                egui::Event::Text(text) => out.extend_from_slice(text.as_bytes()),
                egui::Event::Paste(text) => out.extend_from_slice(text.as_bytes()),
                egui::Event::Key {
                    key,
                    pressed: true,
                    modifiers,
                    ..
                } => {
                    if let Some(bytes) = key_bytes(key, modifiers) {
                        out.extend_from_slice(&bytes);
                    }
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            lock(&self.parser).screen_mut().set_scrollback(0);
            self.send(&out);
        }
    }

    /// Copies the screen's text to the clipboard.
    pub fn copy(&self, ctx: &egui::Context) {
        ctx.copy_text(self.screen_text());
    }

    /// Copies everything the console still holds: scrollback and screen.
    pub fn copy_all(&self, ctx: &egui::Context) {
        let mut parser = lock(&self.parser);
        let screen = parser.screen_mut();
        let now = screen.scrollback();
        screen.set_scrollback(usize::MAX);
        let depth = screen.scrollback();
        let rows = screen.size().0 as usize;
        let mut text = String::new();
        // Page by page from the oldest line: at offset `o` the page starts with the line `o`
        // lines above the screen, so its first `min(rows, o)` lines are new.
        let mut offset = depth;
        while offset > 0 {
            screen.set_scrollback(offset);
            for line in screen.contents().split('\n').take(rows.min(offset)) {
                text.push_str(line);
                text.push('\n');
            }
            offset = offset.saturating_sub(rows);
        }
        screen.set_scrollback(0);
        text.push_str(&screen.contents());
        screen.set_scrollback(now);
        ctx.copy_text(text.trim_end().to_string());
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(input) = lock(&self.input).as_ref() {
            let _ = input.detach();
        }
    }
}

/// The bytes a terminal sends for a key (text arrives as `Event::Text`).
fn key_bytes(key: egui::Key, modifiers: egui::Modifiers) -> Option<Vec<u8>> {
    use egui::Key;
    if modifiers.ctrl && !modifiers.shift {
        let name = key.name();
        if name.len() == 1 {
            let c = name.as_bytes()[0].to_ascii_lowercase();
            if c.is_ascii_lowercase() {
                return Some(vec![c - b'a' + 1]);
            }
        }
    }
    let bytes: &[u8] = match key {
        Key::Enter => b"\r",
        Key::Backspace => b"\x7f",
        Key::Tab => b"\t",
        Key::Escape => b"\x1b",
        Key::ArrowUp => b"\x1b[A",
        Key::ArrowDown => b"\x1b[B",
        Key::ArrowRight => b"\x1b[C",
        Key::ArrowLeft => b"\x1b[D",
        Key::Home => b"\x1b[H",
        Key::End => b"\x1b[F",
        Key::Delete => b"\x1b[3~",
        Key::PageUp => b"\x1b[5~",
        Key::PageDown => b"\x1b[6~",
        _ => return None,
    };
    Some(bytes.to_vec())
}

const BACKGROUND: Color32 = Color32::from_rgb(0x14, 0x17, 0x1c);
const FOREGROUND: Color32 = Color32::from_rgb(0xd8, 0xdc, 0xe2);

/// The 16 ANSI colours (a calm palette), then the 6x6x6 cube and the grey ramp.
fn color(c: vt100::Color, default: Color32) -> Color32 {
    const ANSI: [(u8, u8, u8); 16] = [
        (0x1d, 0x20, 0x26),
        (0xe0, 0x6c, 0x75),
        (0x98, 0xc3, 0x79),
        (0xe5, 0xc0, 0x7b),
        (0x61, 0xaf, 0xef),
        (0xc6, 0x78, 0xdd),
        (0x56, 0xb6, 0xc2),
        (0xd8, 0xdc, 0xe2),
        (0x5c, 0x63, 0x70),
        (0xff, 0x7b, 0x86),
        (0xb5, 0xe8, 0x90),
        (0xff, 0xd6, 0x8a),
        (0x7c, 0xc4, 0xff),
        (0xde, 0x93, 0xf5),
        (0x6f, 0xd3, 0xe0),
        (0xff, 0xff, 0xff),
    ];
    match c {
        vt100::Color::Default => default,
        vt100::Color::Rgb(r, g, b) => Color32::from_rgb(r, g, b),
        vt100::Color::Idx(i) if i < 16 => {
            let (r, g, b) = ANSI[i as usize];
            Color32::from_rgb(r, g, b)
        }
        vt100::Color::Idx(i) if i < 232 => {
            let i = i - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            Color32::from_rgb(level(i / 36), level((i / 6) % 6), level(i % 6))
        }
        vt100::Color::Idx(i) => {
            let v = 8 + (i - 232) * 10;
            Color32::from_rgb(v, v, v)
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_terminal_bytes() {
        let none = egui::Modifiers::NONE;
        assert_eq!(key_bytes(egui::Key::Enter, none), Some(b"\r".to_vec()));
        assert_eq!(
            key_bytes(egui::Key::ArrowUp, none),
            Some(b"\x1b[A".to_vec())
        );
        assert_eq!(
            key_bytes(egui::Key::C, egui::Modifiers::CTRL),
            Some(vec![3])
        );
        assert_eq!(key_bytes(egui::Key::A, none), None, "letters come as text");
    }

    #[test]
    fn colours_cover_the_256_palette() {
        assert_eq!(color(vt100::Color::Default, FOREGROUND), FOREGROUND);
        assert_eq!(
            color(vt100::Color::Idx(16), FOREGROUND),
            Color32::from_rgb(0, 0, 0)
        );
        assert_eq!(
            color(vt100::Color::Idx(231), FOREGROUND),
            Color32::from_rgb(255, 255, 255)
        );
        assert_eq!(
            color(vt100::Color::Idx(255), FOREGROUND),
            Color32::from_rgb(238, 238, 238)
        );
    }
}
