//! The Screen tab: a running VM's picture (from its [`DisplayFeed`]) in an egui texture,
//! scaled to fit the pane or shown 1:1, with the input grab and a bar under it.
//!
//! - Uploads: only when the feed has new rows, and only those rows (`set_partial`); the
//!   whole picture after a mode change. The feed produces at most 60 updates a second.
//! - Scaling: "Fit" shows the largest whole-number enlargement that fits the pane, with
//!   nearest filtering (sharp pixels), or shrinks smoothly (linear filtering) when the
//!   picture is larger than the pane. "1:1" shows one guest pixel per physical pixel of the
//!   monitor (HiDPI-aware), scrolling when it does not fit. The picture is placed on whole
//!   physical pixels.
//! - Grab: a click into the picture gives the guest the keyboard and mouse (pointer hidden
//!   and confined to the window; locked on macOS, where confining is not offered); Ctrl+Alt
//!   gives them back (see [`super::grab`]).

use eframe::egui::{self, Color32, RichText, Sense, TextureHandle, TextureOptions};
use vivarium_core::input::InputEvent;

use super::display_feed::{DisplayFeed, FeedStatus};
use super::grab::{self, Grab};
use super::input_link::InputLink;

/// Height of the bar under the picture.
const BAR_HEIGHT: f32 = 30.0;

/// How the picture is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scale {
    /// As large as fits the pane, keeping the aspect.
    #[default]
    Fit,
    /// One guest pixel per physical pixel.
    Actual,
}

/// What the user asked for in the Screen tab that the app does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScreenAction {
    /// Enter or leave fullscreen.
    ToggleFullscreen,
    /// Leave fullscreen.
    LeaveFullscreen,
}

/// How many times the Screen tab put the picture into its texture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uploads {
    /// Whole pictures (the first, and after a mode or filter change).
    pub whole: u64,
    /// Bands of changed rows.
    pub rows: u64,
}

/// The Screen tab's state for the VM it shows.
#[derive(Default)]
pub struct ScreenView {
    texture: Option<TextureHandle>,
    filter: Option<TextureOptions>,
    /// How the picture is sized.
    pub scale: Scale,
    /// The keyboard and mouse grab.
    pub grab: Grab,
    /// Texture uploads done, for tests and the benchmark.
    pub uploads: Uploads,
}

impl ScreenView {
    /// Draws the tab for `feed`, sending grabbed input through `link`. `label` names the
    /// picture for screen readers (and tests).
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        feed: &DisplayFeed,
        link: &InputLink,
        label: &str,
        fullscreen: bool,
    ) -> Option<ScreenAction> {
        // No timed repaint: a still screen costs no frames, and the feed knows the screen is
        // shown until a pass completes without it (new pictures repaint at once).
        feed.mark_shown();
        let mut action = None;
        let status = feed.status();
        let full = ui.available_rect_before_wrap();
        let bar_height = if fullscreen { 0.0 } else { BAR_HEIGHT };
        let area = egui::Rect::from_min_max(
            full.min,
            egui::pos2(full.max.x, (full.max.y - bar_height).max(full.min.y)),
        );
        let mut size_text = String::new();
        match &status {
            FeedStatus::On => {
                let ppp = ui.ctx().pixels_per_point();
                let tex_size = self.upload(ui.ctx(), feed, area, ppp);
                size_text = format!("{}x{}", tex_size[0], tex_size[1]);
                let response = self.picture(ui, area, tex_size, ppp, label);
                if response.clicked() && !self.grab.is_active() {
                    self.begin_grab(ui.ctx(), &response);
                }
            }
            other => {
                self.texture = None;
                let (text, weak) = match other {
                    FeedStatus::Waiting => ("Waiting for the VM's display…".to_string(), true),
                    FeedStatus::Off => {
                        ("The guest has not turned on its display".to_string(), true)
                    }
                    FeedStatus::Failed(why) => {
                        (format!("The screen cannot be shown: {why}"), false)
                    }
                    FeedStatus::On => unreachable!(),
                };
                let painter = ui.painter_at(area);
                painter.rect_filled(area, 8, Color32::from_gray(24));
                let response = ui.allocate_rect(area, Sense::hover());
                let mut rich = RichText::new(&text).size(16.0);
                rich = if weak {
                    rich.color(Color32::from_gray(170))
                } else {
                    rich.color(super::style::state_color(super::model::VmState::Broken))
                };
                ui.put(area, egui::Label::new(rich));
                response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, label));
            }
        }
        if self.grab.is_active() {
            ui.ctx().set_cursor_icon(egui::CursorIcon::None);
        }
        if !fullscreen {
            let bar = egui::Rect::from_min_max(egui::pos2(full.min.x, area.max.y), full.max);
            ui.scope_builder(egui::UiBuilder::new().max_rect(bar), |ui| {
                action = self.bar(ui, link, &size_text);
            });
            ui.advance_cursor_after_rect(full);
        } else {
            ui.advance_cursor_after_rect(full);
            if !self.grab.is_active() && ui.input(|i| i.key_pressed(egui::Key::Escape)) {
                action = Some(ScreenAction::LeaveFullscreen);
            }
        }
        action
    }

    /// Takes the feed's new rows into the texture; returns the picture's size.
    fn upload(
        &mut self,
        ctx: &egui::Context,
        feed: &DisplayFeed,
        area: egui::Rect,
        ppp: f32,
    ) -> [usize; 2] {
        let mut picture = feed.picture();
        let size = picture.image.size;
        let filter = filter_for(scale_factor(self.scale, size, area.size() * ppp));
        let whole = picture.resized
            || self.filter != Some(filter)
            || self.texture.as_ref().is_none_or(|t| t.size() != size);
        if whole {
            if size[0] == 0 || size[1] == 0 {
                return size;
            }
            let image = picture.image.clone();
            picture.resized = false;
            picture.changed = None;
            drop(picture);
            match &mut self.texture {
                Some(texture) => texture.set(image, filter),
                None => self.texture = Some(ctx.load_texture("guest-screen", image, filter)),
            }
            self.filter = Some(filter);
            self.uploads.whole += 1;
        } else if let Some(rows) = picture.changed.take() {
            let width = size[0];
            let pixels = picture.image.pixels
                [rows.start as usize * width..rows.end as usize * width]
                .to_vec();
            drop(picture);
            let rows_image = egui::ColorImage::new([width, rows.len()], pixels);
            if let Some(texture) = &mut self.texture {
                texture.set_partial([0, rows.start as usize], rows_image, filter);
                self.uploads.rows += 1;
            }
        }
        size
    }

    /// Draws the picture in `area`; returns its response (clicks grab).
    fn picture(
        &mut self,
        ui: &mut egui::Ui,
        area: egui::Rect,
        size: [usize; 2],
        ppp: f32,
        label: &str,
    ) -> egui::Response {
        let Some(texture) = &self.texture else {
            ui.painter_at(area).rect_filled(area, 0, Color32::BLACK);
            return ui.allocate_rect(area, Sense::hover());
        };
        let factor = scale_factor(self.scale, size, area.size() * ppp);
        let shown = egui::vec2(size[0] as f32, size[1] as f32) * factor / ppp;
        let fits = shown.x <= area.width() + 0.5 && shown.y <= area.height() + 0.5;
        let make = |ui: &mut egui::Ui, origin: egui::Pos2| {
            // On whole physical pixels, so nearest filtering maps guest pixels exactly.
            let min = egui::pos2(
                (origin.x * ppp).round() / ppp,
                (origin.y * ppp).round() / ppp,
            );
            let rect = egui::Rect::from_min_size(min, shown);
            let response = ui.allocate_rect(rect, Sense::click());
            ui.painter().image(
                texture.id(),
                rect,
                egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
            response
        };
        let response = if fits {
            let response = make(ui, area.center() - shown / 2.0);
            // Black bars around the picture only: with a software renderer every pixel
            // painted twice costs.
            let painter = ui.painter_at(area);
            let pic = response.rect;
            for bar in [
                egui::Rect::from_min_max(area.min, egui::pos2(area.max.x, pic.min.y)),
                egui::Rect::from_min_max(egui::pos2(area.min.x, pic.max.y), area.max),
                egui::Rect::from_min_max(
                    egui::pos2(area.min.x, pic.min.y),
                    egui::pos2(pic.min.x, pic.max.y),
                ),
                egui::Rect::from_min_max(
                    egui::pos2(pic.max.x, pic.min.y),
                    egui::pos2(area.max.x, pic.max.y),
                ),
            ] {
                if bar.is_positive() {
                    painter.rect_filled(bar, 0, Color32::BLACK);
                }
            }
            response
        } else {
            ui.painter_at(area).rect_filled(area, 0, Color32::BLACK);
            // 1:1 and larger than the pane: scroll.
            ui.scope_builder(egui::UiBuilder::new().max_rect(area), |ui| {
                egui::ScrollArea::both()
                    .auto_shrink([false, false])
                    .show(ui, |ui| {
                        // Centred along the side that fits.
                        let spare = (area.size() - shown).max(egui::Vec2::ZERO) / 2.0;
                        let origin = ui.cursor().min + spare;
                        make(ui, origin)
                    })
                    .inner
            })
            .inner
        };
        let value = format!("{}x{}", size[0], size[1]);
        response.widget_info(|| {
            let mut info = egui::WidgetInfo::labeled(egui::Role::Image, true, label);
            info.current_text_value = Some(value.clone());
            info
        });
        if self.grab.is_active() {
            ui.painter().rect_stroke(
                response.rect,
                0,
                egui::Stroke::new(2.0, super::style::ACCENT),
                egui::StrokeKind::Outside,
            );
        }
        response
    }

    fn bar(&mut self, ui: &mut egui::Ui, link: &InputLink, size: &str) -> Option<ScreenAction> {
        let mut action = None;
        ui.horizontal_centered(|ui| {
            let text = if self.grab.is_active() {
                format!(
                    "Press {} to release the keyboard and mouse",
                    grab::RELEASE_COMBO
                )
            } else {
                "Click the screen to give it the keyboard and mouse".to_string()
            };
            ui.label(RichText::new(text).small());
            if let Some(problem) = link.problem() {
                ui.label(
                    RichText::new(format!("Input does not reach the VM: {problem}"))
                        .small()
                        .color(super::style::state_color(super::model::VmState::Broken)),
                );
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .button("Fullscreen")
                    .on_hover_text("Esc or Ctrl+Alt leaves fullscreen")
                    .clicked()
                {
                    action = Some(ScreenAction::ToggleFullscreen);
                }
                if ui
                    .button("Send Ctrl+Alt+Del")
                    .on_hover_text("Ctrl+Alt releases the grab, so Ctrl+Alt+Del is sent from here")
                    .clicked()
                {
                    link.send(grab::CTRL_ALT_DEL.to_vec());
                }
                ui.selectable_value(&mut self.scale, Scale::Actual, "1:1")
                    .on_hover_text("One guest pixel per screen pixel");
                ui.selectable_value(&mut self.scale, Scale::Fit, "Fit")
                    .on_hover_text("As large as fits, keeping the aspect");
                if !size.is_empty() {
                    ui.label(RichText::new(size).small().weak());
                }
            });
        });
        action
    }

    fn begin_grab(&mut self, ctx: &egui::Context, response: &egui::Response) {
        response.request_focus();
        self.grab.begin(ctx.input(|i| i.pointer.latest_pos()));
        ctx.send_viewport_cmd(egui::ViewportCommand::CursorGrab(
            if cfg!(target_os = "macos") {
                egui::viewport::CursorGrab::Locked
            } else {
                egui::viewport::CursorGrab::Confined
            },
        ));
        ctx.send_viewport_cmd(egui::ViewportCommand::CursorVisible(false));
        // Keyboard zoom (Ctrl+Plus) is the guest's while grabbed.
        ctx.options_mut(|o| o.zoom_with_keyboard = false);
    }

    /// Lets go of the picture (for another VM or run); keeps the scale chosen. Release the
    /// grab first.
    pub fn forget(&mut self) {
        self.texture = None;
        self.filter = None;
        self.grab = Grab::default();
    }

    /// Ends the grab (the guest lets go of every key, through `link` while the VM still
    /// runs) and gives the pointer back.
    pub fn release(&mut self, ctx: &egui::Context, link: Option<&InputLink>) {
        if !self.grab.is_active() {
            return;
        }
        let mut out = Vec::new();
        self.grab.end(&mut out);
        if let Some(link) = link {
            link.send(out);
        }
        ungrab_pointer(ctx);
    }

    /// Turns the events stolen this frame into the guest's, sends them, and ends the grab at
    /// the release combination or when the window loses focus; returns whether it ended.
    pub fn forward(
        &mut self,
        ctx: &egui::Context,
        events: &[egui::Event],
        link: &InputLink,
    ) -> bool {
        if !self.grab.is_active() {
            return false;
        }
        let mut out: Vec<InputEvent> = Vec::new();
        let change = self
            .grab
            .translate(events, ctx.pixels_per_point(), &mut out);
        link.send(out);
        let lost_focus = ctx.input(|i| {
            i.raw
                .events
                .iter()
                .any(|e| matches!(e, egui::Event::WindowFocused(false)))
        });
        if change == grab::GrabChange::Released {
            ungrab_pointer(ctx);
            return true;
        }
        if lost_focus {
            self.release(ctx, Some(link));
            return true;
        }
        false
    }
}

fn ungrab_pointer(ctx: &egui::Context) {
    ctx.send_viewport_cmd(egui::ViewportCommand::CursorGrab(
        egui::viewport::CursorGrab::None,
    ));
    ctx.send_viewport_cmd(egui::ViewportCommand::CursorVisible(true));
    ctx.options_mut(|o| o.zoom_with_keyboard = true);
}

/// Physical pixels per guest pixel for a picture of `size` in an area of `room` physical
/// pixels.
pub fn scale_factor(scale: Scale, size: [usize; 2], room: egui::Vec2) -> f32 {
    if size[0] == 0 || size[1] == 0 {
        return 1.0;
    }
    match scale {
        Scale::Actual => 1.0,
        Scale::Fit => {
            let fit = (room.x / size[0] as f32).min(room.y / size[1] as f32);
            if fit >= 1.0 {
                fit.floor()
            } else {
                fit.max(0.01)
            }
        }
    }
}

/// Nearest filtering for whole-number enlargements (every guest pixel stays a sharp square),
/// linear for shrinking.
pub fn filter_for(factor: f32) -> TextureOptions {
    if factor >= 1.0 && factor.fract() == 0.0 {
        TextureOptions::NEAREST
    } else {
        TextureOptions::LINEAR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_enlarges_by_whole_factors_and_shrinks_smoothly() {
        let room = egui::vec2(1700.0, 1300.0);
        assert_eq!(scale_factor(Scale::Fit, [640, 480], room), 2.0);
        assert_eq!(scale_factor(Scale::Fit, [800, 600], room), 2.0);
        assert_eq!(scale_factor(Scale::Fit, [1024, 768], room), 1.0);
        let shrink = scale_factor(Scale::Fit, [3840, 2160], room);
        assert!((shrink - 1700.0 / 3840.0).abs() < 1e-6);
        assert_eq!(scale_factor(Scale::Actual, [3840, 2160], room), 1.0);
        assert_eq!(filter_for(2.0), TextureOptions::NEAREST);
        assert_eq!(filter_for(1.0), TextureOptions::NEAREST);
        assert_eq!(filter_for(shrink), TextureOptions::LINEAR);
    }
}
