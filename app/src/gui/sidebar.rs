//! The library sidebar: every VM with its OS icon, name and state, a filter box, and a New VM
//! button. Rows are laid out only for the visible part of the list, so a library of hundreds
//! of VMs costs no more per frame than a dozen.

use std::collections::HashMap;

use eframe::egui::{self, Color32, FontId, RichText, Sense, text::LayoutJob};

use super::icons::Icons;
use super::model::{Snapshot, VmRow, VmState};
use super::style::state_color;

/// Height of one row.
const ROW_HEIGHT: f32 = 50.0;
/// Size of the OS icon in a row.
const ICON: f32 = 32.0;
/// The slot for the icon or, for a running VM with a screen, its live thumbnail.
const THUMBNAIL: egui::Vec2 = egui::vec2(44.0, 33.0);

/// What the user did in the sidebar.
pub enum SidebarAction {
    /// Selected a VM.
    Select(String),
    /// Asked for the New VM dialog.
    NewVm,
}

/// The label a row has for screen readers and tests: `name, State`.
pub fn row_label(vm: &VmRow) -> String {
    if vm.state.is_stopped() && vm.cannot_start.is_some() {
        format!("{}, {}, cannot start here", vm.name(), vm.state.label())
    } else {
        format!("{}, {}", vm.name(), vm.state.label())
    }
}

/// Draws the sidebar.
pub fn ui(
    ui: &mut egui::Ui,
    snapshot: &Snapshot,
    filter: &mut String,
    selected: Option<&str>,
    icons: &Icons,
    thumbnails: &HashMap<&str, &egui::TextureHandle>,
) -> Option<SidebarAction> {
    let mut action = None;
    ui.add_space(10.0);
    ui.horizontal(|ui| {
        ui.label(RichText::new("Library").heading().strong());
        ui.label(RichText::new(snapshot.vms.len().to_string()).weak());
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .button(RichText::new("+").size(16.0))
                .on_hover_text("New VM (Ctrl+N)")
                .clicked()
            {
                action = Some(SidebarAction::NewVm);
            }
        });
    });
    ui.add_space(4.0);
    let filter_id = ui.label(RichText::new("Filter").small().weak()).id;
    ui.add(
        egui::TextEdit::singleline(filter)
            .hint_text("Name or OS")
            .desired_width(f32::INFINITY),
    )
    .labelled_by(filter_id);
    ui.add_space(6.0);

    let needle = filter.trim().to_lowercase();
    let visible: Vec<&VmRow> = snapshot
        .vms
        .iter()
        .filter(|vm| needle.is_empty() || vm.search_text.contains(&needle))
        .collect();
    if visible.is_empty() && !snapshot.vms.is_empty() {
        ui.label(RichText::new("No VM matches the filter.").weak());
    }
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show_rows(ui, ROW_HEIGHT, visible.len(), |ui, range| {
            ui.spacing_mut().item_spacing.y = 0.0;
            for vm in &visible[range] {
                let thumbnail = thumbnails.get(vm.name()).copied();
                if row(ui, vm, selected == Some(vm.name()), icons, thumbnail) {
                    action = Some(SidebarAction::Select(vm.name().to_string()));
                }
            }
        });
    action
}

/// One row; returns whether it was clicked.
fn row(
    ui: &mut egui::Ui,
    vm: &VmRow,
    selected: bool,
    icons: &Icons,
    thumbnail: Option<&egui::TextureHandle>,
) -> bool {
    let width = ui.available_width();
    let (rect, response) = ui.allocate_exact_size(egui::vec2(width, ROW_HEIGHT), Sense::click());
    let label = row_label(vm);
    response.widget_info(|| egui::WidgetInfo::selected(egui::Role::Button, true, selected, &label));
    if !ui.is_rect_visible(rect) {
        return response.clicked();
    }
    let visuals = ui.visuals();
    let painter = ui.painter();
    let card = rect.shrink2(egui::vec2(2.0, 2.0));
    if selected {
        painter.rect_filled(card, 8, visuals.selection.bg_fill);
    } else if response.hovered() {
        painter.rect_filled(card, 8, visuals.widgets.hovered.weak_bg_fill);
    }
    let slot = egui::Rect::from_center_size(
        egui::pos2(card.left() + 8.0 + THUMBNAIL.x / 2.0, card.center().y),
        THUMBNAIL,
    );
    let icon_rect = egui::Rect::from_center_size(slot.center(), egui::vec2(ICON, ICON));
    let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
    if let Some(texture) = thumbnail {
        let [w, h] = texture.size();
        let scale = (THUMBNAIL.x / w as f32).min(THUMBNAIL.y / h as f32);
        let shown =
            egui::Rect::from_center_size(slot.center(), egui::vec2(w as f32, h as f32) * scale);
        painter.image(texture.id(), shown, uv, Color32::WHITE);
        painter.rect_stroke(
            shown,
            2,
            visuals.widgets.noninteractive.bg_stroke,
            egui::StrokeKind::Outside,
        );
    } else if let Some(texture) = icons.os(vm.os) {
        painter.image(
            texture.id(),
            icon_rect,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            Color32::WHITE,
        );
    }
    let text_left = slot.right() + 10.0;
    let text_width = (card.right() - 8.0 - text_left).max(10.0);
    let strong = if selected {
        visuals
            .selection
            .stroke
            .color
            .lerp_to_gamma(visuals.strong_text_color(), 0.6)
    } else {
        visuals.strong_text_color()
    };
    let name = one_line(vm.name(), FontId::proportional(14.5), strong, text_width);
    let name_galley = painter.layout_job(name);
    painter.galley(egui::pos2(text_left, card.top() + 7.0), name_galley, strong);
    let color = state_color(vm.state);
    let dot = egui::pos2(text_left + 4.0, card.top() + 34.0);
    painter.circle_filled(dot, 3.5, color);
    let other_arch = vm.state.is_stopped() && vm.cannot_start.is_some();
    let detail = match (&vm.state, &vm.entry.config) {
        (VmState::Broken, Err(reason)) => format!("Broken: {reason}"),
        (_, Ok(config)) if other_arch => {
            format!("{}, cannot start here · {}", config.arch, config.os.name)
        }
        (state, Ok(config)) => format!("{} · {}", state.label(), config.os.name),
        (state, Err(_)) => state.label().to_string(),
    };
    let detail_color = if matches!(
        vm.state,
        VmState::Broken | VmState::Crashed | VmState::Failed
    ) {
        color
    } else if other_arch {
        crate::gui::style::CANNOT_START
    } else if selected {
        visuals.strong_text_color().gamma_multiply(0.8)
    } else {
        visuals.weak_text_color()
    };
    let detail = one_line(
        &detail,
        FontId::proportional(12.0),
        detail_color,
        text_width - 12.0,
    );
    let detail_galley = painter.layout_job(detail);
    painter.galley(
        egui::pos2(text_left + 12.0, dot.y - detail_galley.size().y / 2.0),
        detail_galley,
        detail_color,
    );
    if response.hovered() && (vm.state == VmState::Broken || other_arch) {
        response.clone().on_hover_text(detail_text(vm));
    }
    response.clicked()
}

fn detail_text(vm: &VmRow) -> String {
    match &vm.entry.config {
        Err(reason) => format!("vm.toml cannot be read: {reason}"),
        Ok(_) => match &vm.cannot_start {
            Some(why) => format!("It cannot start here: {why}"),
            None => String::new(),
        },
    }
}

/// A single line of text cut with an ellipsis at `width`.
fn one_line(text: &str, font: FontId, color: Color32, width: f32) -> LayoutJob {
    let mut job = LayoutJob::simple_singleline(text.to_string(), font, color);
    job.wrap = egui::text::TextWrapping::truncate_at_width(width);
    job
}
