//! Files dragged onto the window: the hint while they hover, and what a dropped file is
//! (an installer ISO, or a disk image to import).

use std::path::{Path, PathBuf};

use eframe::egui::{self, Color32, RichText, Stroke};
use vivarium_core::config::DiskFormat;

/// A file the New VM dialog can start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DroppedSource {
    /// An installer CD/DVD image.
    Iso(PathBuf),
    /// A raw or qcow2 disk image, to be copied into the VM.
    DiskImage(PathBuf),
}

/// What a dropped file is, from its name and (for disk images) its header.
pub fn classify(path: &Path) -> Result<DroppedSource, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if !path.is_file() {
        return Err(format!(
            "`{}` is not a file: drop an ISO or a disk image",
            path.display()
        ));
    }
    match ext.as_str() {
        "iso" => Ok(DroppedSource::Iso(path.to_path_buf())),
        "qcow2" | "raw" | "img" => {
            let info = vivarium_core::disk::probe(path).map_err(|e| e.to_string())?;
            if ext == "qcow2" && info.format != DiskFormat::Qcow2 {
                return Err(format!(
                    "`{}` is named .qcow2 but is not a qcow2 image",
                    path.display()
                ));
            }
            Ok(DroppedSource::DiskImage(path.to_path_buf()))
        }
        _ => Err(format!(
            "`{}` is neither an ISO (.iso) nor a disk image (.qcow2, .raw, .img)",
            file_name(path)
        )),
    }
}

/// A VM name proposed from a file's name: its stem, cleaned to what a VM name allows.
pub fn name_from_file(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("New VM");
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' || c == ' ' {
                c
            } else {
                '-'
            }
        })
        .take(vivarium_core::config::MAX_NAME_CHARS)
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| c == '.' || c == ' ' || c == '-');
    if cleaned.is_empty() {
        "New VM".to_string()
    } else {
        cleaned.to_string()
    }
}

/// The file name for messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// While files hover over the window: a dimmed window with a drop target and what will happen
/// (as labels, so that screen readers announce it too).
pub fn hover_overlay(ctx: &egui::Context) {
    let hovered: Vec<egui::HoveredFile> = ctx.input(|i| i.raw.hovered_files.clone());
    let Some(first) = hovered.first() else {
        return;
    };
    let what = match &first.path {
        Some(path) => format!("Drop to create a VM from {}", file_name(path)),
        None => "Drop an ISO or a disk image to create a VM".to_string(),
    };
    let rect = ctx.content_rect();
    egui::Area::new(egui::Id::unique("drop-overlay"))
        .order(egui::Order::Foreground)
        .fixed_pos(rect.min)
        .interactable(false)
        .show(ctx, |ui| {
            ui.set_min_size(rect.size());
            let painter = ui.painter();
            painter.rect_filled(rect, 0, Color32::from_black_alpha(170));
            let target = rect.shrink(28.0);
            painter.rect_stroke(
                target,
                16,
                Stroke::new(3.0, super::style::ACCENT),
                egui::StrokeKind::Inside,
            );
            let inner =
                egui::Rect::from_center_size(target.center(), egui::vec2(target.width(), 80.0));
            ui.scope_builder(egui::UiBuilder::new().max_rect(inner), |ui| {
                ui.vertical_centered(|ui| {
                    ui.label(RichText::new(what).size(24.0).color(Color32::WHITE));
                    ui.label(
                        RichText::new(
                            "ISO images start an installer; raw and qcow2 disk images are \
                             copied into the VM",
                        )
                        .size(14.0)
                        .color(Color32::from_gray(210)),
                    );
                });
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_files_are_recognised_by_name_and_header() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("debian-12.8.0-amd64-netinst.iso");
        std::fs::write(&iso, b"not really an iso").unwrap();
        assert_eq!(classify(&iso), Ok(DroppedSource::Iso(iso.clone())));
        let raw = dir.path().join("disk.img");
        std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(classify(&raw), Ok(DroppedSource::DiskImage(raw.clone())));
        let fake = dir.path().join("fake.qcow2");
        std::fs::write(&fake, vec![0u8; 4096]).unwrap();
        assert!(classify(&fake).unwrap_err().contains("not a qcow2"));
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello").unwrap();
        assert!(classify(&text).unwrap_err().contains("neither an ISO"));
        assert!(
            classify(&dir.path().join("gone.iso"))
                .unwrap_err()
                .contains("not a file")
        );
    }

    #[test]
    fn names_come_from_the_file_name() {
        assert_eq!(
            name_from_file(Path::new("/x/debian-12.8.0-amd64-netinst.iso")),
            "debian-12.8.0-amd64-netinst"
        );
        assert_eq!(
            name_from_file(Path::new("/x/my disk (1).qcow2")),
            "my disk -1"
        );
        assert_eq!(name_from_file(Path::new("/x/@@@.iso")), "New VM");
        vivarium_core::config::validate_name(&name_from_file(Path::new("/x/a:b.iso"))).unwrap();
    }
}
