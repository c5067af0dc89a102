//! The Delete confirmation: says what goes (the VM's folder and disks) and what stays (a
//! shared base image other VMs still use).

use eframe::egui::{self, Color32, RichText};
use vivarium_core::fsutil::format_size;

use super::{DialogEnv, DialogOutcome, modal_frame, problem};
use crate::gui::jobs::Done;

/// The dialog's state.
pub struct DeleteDialog {
    name: String,
    /// The delete job, while it runs.
    pub job: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

impl DeleteDialog {
    /// A confirmation for deleting `name`.
    pub fn new(name: &str) -> Self {
        DeleteDialog {
            name: name.to_string(),
            job: None,
            error: None,
        }
    }

    /// What will be removed, in sentences.
    fn consequences(&self, env: &DialogEnv<'_>) -> Vec<String> {
        let Some(vm) = env.snapshot.find(&self.name) else {
            return vec![format!("`{}` is no longer in the library.", self.name)];
        };
        let entry = &vm.entry;
        let mut lines = vec![format!(
            "Its folder `{}` is removed from the library.",
            entry.path.display()
        )];
        match &entry.config {
            Ok(config) => {
                let disks = config.disks.len();
                if disks > 0 {
                    lines.push(format!(
                        "{} with everything the guest stored ({} on this computer) {} lost.",
                        if disks == 1 {
                            "Its disk".to_string()
                        } else {
                            format!("Its {disks} disks")
                        },
                        format_size(entry.disk_usage),
                        if disks == 1 { "is" } else { "are" }
                    ));
                }
                if config.disks.iter().any(|d| d.base.is_some()) {
                    lines.push(
                        "Its disks are linked to a shared base image: the base stays as long as \
                         other VMs use it, and is removed with the last of them."
                            .into(),
                    );
                }
                if let Some(image) = config.cdrom.as_ref().and_then(|c| c.image.as_ref()) {
                    lines.push(format!(
                        "The ISO `{}` is not part of the VM and stays.",
                        image.display()
                    ));
                }
            }
            Err(reason) => lines.push(format!(
                "Its configuration cannot be read ({reason}); whatever is in the folder goes."
            )),
        }
        lines
    }

    /// Draws the dialog.
    pub fn ui(&mut self, ctx: &egui::Context, env: &mut DialogEnv<'_>) -> DialogOutcome {
        let mut outcome = DialogOutcome::Open;
        let busy = self.job.is_some();
        let lines = self.consequences(env);
        let response = egui::Modal::new(egui::Id::unique("delete-dialog"))
            .frame(modal_frame(ctx))
            .show(ctx, |ui| {
                ui.set_width(460.0);
                ui.heading(format!("Delete {}?", self.name));
                ui.add_space(8.0);
                for line in &lines {
                    ui.horizontal_top(|ui| {
                        ui.label("•");
                        ui.add(egui::Label::new(line).wrap());
                    });
                }
                ui.add_space(4.0);
                ui.label(RichText::new("This cannot be undone.").strong());
                ui.add_space(10.0);
                if let Some(error) = &self.error {
                    problem(ui, error);
                }
                if busy {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("Deleting…");
                    });
                    return;
                }
                ui.separator();
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    let delete =
                        egui::Button::new(RichText::new("Delete").strong().color(Color32::WHITE))
                            .fill(Color32::from_rgb(0xC8, 0x35, 0x2F));
                    if ui.add(delete).clicked() {
                        self.start(env);
                    }
                    if ui.button("Cancel").clicked() {
                        outcome = DialogOutcome::Close;
                    }
                });
            });
        if response.should_close() && !busy {
            outcome = DialogOutcome::Close;
        }
        outcome
    }

    fn start(&mut self, env: &mut DialogEnv<'_>) {
        self.error = None;
        let library = env.library.clone();
        let name = self.name.clone();
        self.job = Some(env.jobs.spawn(
            format!("Deleting {name}"),
            Some(name.clone()),
            move |_| {
                library.delete(&name)?;
                Ok(Done::Deleted { name })
            },
        ));
    }
}
