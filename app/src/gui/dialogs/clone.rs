//! The Clone dialog: a name, full or linked, and (for a full clone) a progress bar with
//! Cancel. The clone runs `Library::clone_vm` in the background, as `vivarium clone` does.

use eframe::egui::{self, RichText};
use vivarium_core::CloneMode;

use super::{
    DialogEnv, DialogOutcome, field_label, job_progress, modal_frame, name_problem, problem,
};
use crate::gui::jobs::Done;

/// The dialog's state.
pub struct CloneDialog {
    source: String,
    name: String,
    mode: CloneMode,
    /// The clone job, while it runs.
    pub job: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

impl CloneDialog {
    /// A dialog to clone `source`, proposing a free name.
    pub fn new(env: &DialogEnv<'_>, source: &str) -> Self {
        CloneDialog {
            source: source.to_string(),
            name: super::free_name(env.snapshot, &format!("{source} clone")),
            mode: CloneMode::Linked,
            job: None,
            error: None,
        }
    }

    /// Draws the dialog.
    pub fn ui(&mut self, ctx: &egui::Context, env: &mut DialogEnv<'_>) -> DialogOutcome {
        let mut outcome = DialogOutcome::Open;
        let busy = self.job.is_some();
        let response = egui::Modal::new(egui::Id::unique("clone-dialog"))
            .frame(modal_frame(ctx))
            .show(ctx, |ui| {
                ui.set_width(460.0);
                ui.heading(format!("Clone {}", self.source));
                ui.add_space(8.0);
                ui.add_enabled_ui(!busy, |ui| {
                    ui.horizontal(|ui| {
                        let id = field_label(ui, "Name");
                        ui.add(egui::TextEdit::singleline(&mut self.name).desired_width(320.0))
                            .labelled_by(id);
                    });
                    let name_problem = name_problem(env.snapshot, &self.name, None);
                    if let Some(why) = &name_problem {
                        problem(ui, why);
                    }
                    ui.add_space(6.0);
                    ui.radio_value(&mut self.mode, CloneMode::Linked, "Linked clone");
                    ui.indent("linked-help", |ui| {
                        ui.label(
                            RichText::new(
                                "Instant, at any disk size: both VMs share the current disk \
                                 contents as a read-only base and write their changes apart.",
                            )
                            .weak(),
                        );
                    });
                    ui.radio_value(&mut self.mode, CloneMode::Full, "Full clone");
                    ui.indent("full-help", |ui| {
                        ui.label(
                            RichText::new(
                                "An independent copy of every disk. Takes as long as copying \
                                 the data the disks hold.",
                            )
                            .weak(),
                        );
                    });
                });
                ui.add_space(10.0);
                if let Some(error) = &self.error {
                    problem(ui, error);
                }
                if let Some(job) = self.job {
                    job_progress(ui, env.jobs, job, self.mode == CloneMode::Full);
                    return;
                }
                let valid = name_problem(env.snapshot, &self.name, None).is_none();
                ui.separator();
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if ui
                        .add_enabled(valid, egui::Button::new(RichText::new("Clone").strong()))
                        .clicked()
                    {
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
        let (source, name, mode) = (self.source.clone(), self.name.clone(), self.mode);
        let kind = match mode {
            CloneMode::Full => "Full clone",
            CloneMode::Linked => "Linked clone",
        };
        let label = format!("{kind} of {source} as {name}");
        self.job = Some(
            env.jobs
                .spawn(label, Some(source.clone()), move |progress| {
                    let outcome = library.clone_vm(&source, &name, mode, progress)?;
                    Ok(Done::Cloned {
                        name: outcome.config.name,
                        warnings: outcome.warnings,
                    })
                }),
        );
    }
}
