//! Non-blocking notifications in the window's bottom-right corner: they tell what happened
//! (and why something failed) and go away by themselves.

use std::time::{Duration, Instant};

use eframe::egui::{self, Align2, Color32, RichText};

/// How long an information stays.
const INFO_FOR: Duration = Duration::from_secs(5);
/// How long a warning or an error stays (long enough to read the reason).
const ERROR_FOR: Duration = Duration::from_secs(12);

/// How serious a notification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something finished.
    Info,
    /// Something finished, but the user should know something.
    Warning,
    /// Something failed.
    Error,
}

#[derive(Debug, Clone)]
struct Toast {
    id: u64,
    level: Level,
    text: String,
    shown: Instant,
}

/// The notifications on screen.
#[derive(Debug, Default)]
pub struct Toasts {
    toasts: Vec<Toast>,
    next_id: u64,
}

impl Toasts {
    /// Shows a notification.
    pub fn push(&mut self, level: Level, text: impl Into<String>) {
        self.next_id += 1;
        self.toasts.push(Toast {
            id: self.next_id,
            level,
            text: text.into(),
            shown: Instant::now(),
        });
    }

    /// Shows an information.
    pub fn info(&mut self, text: impl Into<String>) {
        self.push(Level::Info, text);
    }

    /// Shows an error.
    pub fn error(&mut self, text: impl Into<String>) {
        self.push(Level::Error, text);
    }

    /// Draws the notifications and drops the expired ones.
    pub fn ui(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        self.toasts
            .retain(|t| now.duration_since(t.shown) < lifetime(t.level));
        if self.toasts.is_empty() {
            return;
        }
        let next_expiry = self
            .toasts
            .iter()
            .map(|t| lifetime(t.level).saturating_sub(now.duration_since(t.shown)))
            .min()
            .unwrap_or(INFO_FOR);
        ctx.request_repaint_after(next_expiry);
        let mut closed = Vec::new();
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(Align2::RIGHT_BOTTOM, [-16.0, -16.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                ui.set_max_width(380.0);
                for toast in &self.toasts {
                    let accent = match toast.level {
                        Level::Info => Color32::from_rgb(0x17, 0xA5, 0x89),
                        Level::Warning => Color32::from_rgb(0xE0, 0x9B, 0x1A),
                        Level::Error => Color32::from_rgb(0xD6, 0x3B, 0x3B),
                    };
                    let frame = egui::Frame::popup(ui.style())
                        .inner_margin(egui::Margin::symmetric(14, 10))
                        .stroke(egui::Stroke::new(1.0, accent));
                    frame.show(ui, |ui| {
                        ui.set_width(350.0);
                        ui.horizontal_top(|ui| {
                            let title = match toast.level {
                                Level::Info => "Done",
                                Level::Warning => "Note",
                                Level::Error => "Error",
                            };
                            ui.vertical(|ui| {
                                ui.set_width(300.0);
                                ui.label(RichText::new(title).strong().color(accent));
                                ui.add(egui::Label::new(&toast.text).wrap());
                            });
                            if ui.small_button("×").on_hover_text("Dismiss").clicked() {
                                closed.push(toast.id);
                            }
                        });
                    });
                    ui.add_space(8.0);
                }
            });
        self.toasts.retain(|t| !closed.contains(&t.id));
    }
}

fn lifetime(level: Level) -> Duration {
    match level {
        Level::Info => INFO_FOR,
        Level::Warning | Level::Error => ERROR_FOR,
    }
}
