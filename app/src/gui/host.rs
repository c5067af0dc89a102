//! Whether this computer can run VMs: the backend's host probe, run once off the UI thread,
//! and the banner that explains a limited or missing hypervisor in the window.

use std::sync::{Arc, Mutex};

use eframe::egui::{self, Color32, RichText};
use vivarium_core::backend::HostSupport;

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    /// The probe has not answered yet.
    Checking,
    /// The backend's answer.
    Probed {
        /// The backend's name.
        backend: String,
        /// What it can do here.
        support: HostSupport,
    },
    /// This platform has no backend.
    NoBackend,
}

impl HostStatus {
    /// Why no VM can start here, or `None` when one can (a limited host still runs small
    /// guests; while the probe runs, starting is allowed and fails with the reason if need be).
    pub fn cannot_start(&self) -> Option<String> {
        match self {
            HostStatus::Checking => None,
            HostStatus::Probed { support, .. } if support.can_run() => None,
            HostStatus::Probed { support, .. } => Some(support.explain()),
            HostStatus::NoBackend => {
                Some("Vivarium has no hypervisor backend for this platform yet".into())
            }
        }
    }
}

/// The probe, running or done.
pub struct HostProbe {
    status: Arc<Mutex<HostStatus>>,
    dismissed: bool,
}

impl HostProbe {
    /// Starts the probe on its own thread.
    pub fn start(ctx: egui::Context) -> HostProbe {
        let status = Arc::new(Mutex::new(HostStatus::Checking));
        let slot = status.clone();
        let _ = std::thread::Builder::new()
            .name("host-probe".into())
            .spawn(move || {
                let found = match vivarium_vm::backend::host_backend() {
                    Some(backend) => HostStatus::Probed {
                        backend: backend.name().to_string(),
                        support: backend.probe(),
                    },
                    None => HostStatus::NoBackend,
                };
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = found;
                ctx.request_repaint();
            });
        HostProbe {
            status,
            dismissed: false,
        }
    }

    /// What is known now.
    pub fn status(&self) -> HostStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Draws the banner when the host cannot run full guests (nothing when it can).
    pub fn banner(&mut self, ui: &mut egui::Ui) {
        if self.dismissed {
            return;
        }
        let (color, title, text) = match self.status() {
            HostStatus::Checking
            | HostStatus::Probed {
                support: HostSupport::Ready { .. },
                ..
            } => return,
            HostStatus::Probed {
                backend,
                support: HostSupport::Limited { summary, reason },
            } => (
                Color32::from_rgb(0xC9, 0x8A, 0x12),
                "This computer runs only small test guests",
                format!("{backend}: {summary}. {reason}"),
            ),
            HostStatus::Probed {
                backend,
                support: HostSupport::Unavailable { reason, remedy },
            } => (
                Color32::from_rgb(0xC8, 0x35, 0x2F),
                "This computer cannot run VMs",
                format!("{backend}: {reason}. {remedy}"),
            ),
            HostStatus::NoBackend => (
                Color32::from_rgb(0xC8, 0x35, 0x2F),
                "This computer cannot run VMs",
                "Vivarium has no hypervisor backend for this platform yet; you can still \
                 create, clone and change VMs."
                    .to_string(),
            ),
        };
        egui::Frame::new()
            .fill(color.gamma_multiply(0.18))
            .stroke(egui::Stroke::new(1.0, color))
            .corner_radius(8)
            .inner_margin(egui::Margin::symmetric(12, 8))
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    let (rect, _) =
                        ui.allocate_exact_size(egui::vec2(22.0, 22.0), egui::Sense::hover());
                    ui.painter().circle_filled(rect.center(), 10.0, color);
                    ui.painter().text(
                        rect.center(),
                        egui::Align2::CENTER_CENTER,
                        "!",
                        egui::FontId::proportional(15.0),
                        Color32::WHITE,
                    );
                    ui.vertical(|ui| {
                        ui.set_max_width(ui.available_width() - 40.0);
                        ui.label(RichText::new(title).strong());
                        ui.add(egui::Label::new(text).wrap());
                    });
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::TOP), |ui| {
                        if ui.small_button("×").on_hover_text("Hide").clicked() {
                            self.dismissed = true;
                        }
                    });
                });
            });
    }
}
