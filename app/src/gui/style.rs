//! The app's look: spacing, corner radii, accent colour, and the colours of VM states.

use eframe::egui::{self, Color32};

use super::model::VmState;
use super::prefs::ThemeChoice;

/// The accent colour (the app icon's green).
pub const ACCENT: Color32 = Color32::from_rgb(0x17, 0xA5, 0x89);

/// The colour of a state's dot and word.
pub fn state_color(state: VmState) -> Color32 {
    match state {
        VmState::Running => Color32::from_rgb(0x2E, 0xB8, 0x5C),
        VmState::Starting | VmState::ShuttingDown | VmState::Busy => {
            Color32::from_rgb(0x3B, 0x9E, 0xD9)
        }
        VmState::Paused => Color32::from_rgb(0xE0, 0x9B, 0x1A),
        VmState::Stopped | VmState::PoweredOff => Color32::from_rgb(0x8A, 0x93, 0xA0),
        VmState::Crashed | VmState::Failed | VmState::Broken => Color32::from_rgb(0xD6, 0x3B, 0x3B),
    }
}

/// The colour of a note that a stopped VM cannot start on this computer.
pub const CANNOT_START: Color32 = Color32::from_rgb(0xE0, 0x9B, 0x1A);

/// Applies the theme choice and the app's spacing to every theme.
pub fn apply(ctx: &egui::Context, theme: ThemeChoice) {
    ctx.set_theme(match theme {
        ThemeChoice::System => egui::ThemePreference::System,
        ThemeChoice::Light => egui::ThemePreference::Light,
        ThemeChoice::Dark => egui::ThemePreference::Dark,
    });
    ctx.all_styles_mut(|style| {
        style.spacing.item_spacing = egui::vec2(8.0, 6.0);
        style.spacing.button_padding = egui::vec2(10.0, 4.0);
        style.spacing.interact_size.y = 24.0;
        style.visuals.selection.bg_fill = ACCENT.gamma_multiply(0.55);
        style.visuals.selection.stroke = egui::Stroke::new(1.0, ACCENT);
        style.visuals.hyperlink_color = ACCENT;
        let radius = egui::CornerRadius::same(6);
        style.visuals.widgets.noninteractive.corner_radius = radius;
        style.visuals.widgets.inactive.corner_radius = radius;
        style.visuals.widgets.hovered.corner_radius = radius;
        style.visuals.widgets.active.corner_radius = radius;
        style.visuals.widgets.open.corner_radius = radius;
        style.visuals.window_corner_radius = egui::CornerRadius::same(10);
    });
}
