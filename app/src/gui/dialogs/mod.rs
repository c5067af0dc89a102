//! The modal dialogs: New VM, Clone, Delete and Settings. Each keeps its own form state,
//! validates it inline, and hands its work to a background job.

pub mod clone;
pub mod delete;
pub mod new_vm;
pub mod settings;

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, channel};

use eframe::egui::{self, Color32, RichText};
use vivarium_core::Library;

use super::jobs::{Finished, Jobs};
use super::model::Snapshot;
use super::prefs::Prefs;

/// The dialog on screen, if any.
pub enum Dialog {
    /// Create a VM.
    NewVm(new_vm::NewVmDialog),
    /// Clone a VM.
    Clone(clone::CloneDialog),
    /// Delete a VM.
    Delete(delete::DeleteDialog),
    /// Change a VM's settings (or look at them while it runs).
    Settings(Box<settings::SettingsDialog>),
}

/// What a dialog may use while it is shown.
pub struct DialogEnv<'a> {
    /// The library.
    pub library: &'a Library,
    /// The latest listing (for name checks and states).
    pub snapshot: &'a Snapshot,
    /// Where long work goes.
    pub jobs: &'a mut Jobs,
    /// The app's settings (defaults, last folder).
    pub prefs: &'a mut Prefs,
}

/// What the app does after a dialog's frame.
pub enum DialogOutcome {
    /// Keep showing it.
    Open,
    /// Close it.
    Close,
}

impl Dialog {
    /// Draws the dialog.
    pub fn ui(&mut self, ctx: &egui::Context, env: &mut DialogEnv<'_>) -> DialogOutcome {
        match self {
            Dialog::NewVm(d) => d.ui(ctx, env),
            Dialog::Clone(d) => d.ui(ctx, env),
            Dialog::Delete(d) => d.ui(ctx, env),
            Dialog::Settings(d) => d.ui(ctx, env),
        }
    }

    /// The background job this dialog waits for.
    pub fn job(&self) -> Option<u64> {
        match self {
            Dialog::NewVm(d) => d.job,
            Dialog::Clone(d) => d.job,
            Dialog::Delete(d) => d.job,
            Dialog::Settings(d) => d.job,
        }
    }

    /// Tells the dialog its job ended; returns whether it should close (on success it does;
    /// on failure it stays open with the reason, so nothing typed is lost).
    pub fn job_finished(&mut self, finished: &Finished) -> bool {
        let (job, error) = match self {
            Dialog::NewVm(d) => (&mut d.job, &mut d.error),
            Dialog::Clone(d) => (&mut d.job, &mut d.error),
            Dialog::Delete(d) => (&mut d.job, &mut d.error),
            Dialog::Settings(d) => (&mut d.job, &mut d.error),
        };
        *job = None;
        match &finished.result {
            Ok(_) => true,
            Err(vivarium_core::Error::Cancelled) => {
                *error = Some("Cancelled; nothing was changed.".into());
                false
            }
            Err(e) => {
                *error = Some(e.to_string());
                false
            }
        }
    }
}

/// A file dialog running off the UI thread (rfd; the XDG portal on Linux).
pub struct FilePick<T> {
    rx: Receiver<Option<PathBuf>>,
    /// Which field the chosen file goes to.
    pub target: T,
}

impl<T: Copy> FilePick<T> {
    /// Opens a file dialog for `target`, starting in `folder`, showing files with these
    /// extensions first (every file can still be chosen).
    pub fn open(
        ctx: &egui::Context,
        target: T,
        title: &str,
        filter: Option<(&str, &[&str])>,
        folder: Option<PathBuf>,
    ) -> Self {
        let (tx, rx) = channel();
        let mut dialog = rfd::AsyncFileDialog::new().set_title(title);
        if let Some((name, extensions)) = filter {
            dialog = dialog.add_filter(name, extensions);
        }
        dialog = dialog.add_filter("All files", &["*"]);
        if let Some(folder) = folder.filter(|f| f.is_dir()) {
            dialog = dialog.set_directory(folder);
        }
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            let picked = pollster::block_on(dialog.pick_file()).map(|f| f.path().to_path_buf());
            let _ = tx.send(picked);
            ctx.request_repaint();
        });
        FilePick { rx, target }
    }

    /// `Some(result)` once the dialog closed (`Some(None)`: nothing was chosen).
    pub fn poll(&self) -> Option<Option<PathBuf>> {
        match self.rx.try_recv() {
            Ok(picked) => Some(picked),
            Err(std::sync::mpsc::TryRecvError::Empty) => None,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Some(None),
        }
    }
}

/// A red line under a field that says what is wrong.
pub fn problem(ui: &mut egui::Ui, text: &str) {
    ui.label(
        RichText::new(text)
            .color(Color32::from_rgb(0xD6, 0x3B, 0x3B))
            .small(),
    );
}

/// A label that names the field after it, for people and for screen readers.
pub fn field_label(ui: &mut egui::Ui, text: &str) -> egui::Id {
    ui.label(text).id
}

/// The standard frame of the dialogs.
pub fn modal_frame(ctx: &egui::Context) -> egui::Frame {
    egui::Frame::popup(&ctx.global_style())
        .inner_margin(egui::Margin::same(20))
        .corner_radius(12)
}

/// Whether a name is already used by a VM (ignoring case, as the library does).
pub fn name_taken(snapshot: &Snapshot, name: &str, except: Option<&str>) -> bool {
    let wanted = name.to_lowercase();
    snapshot.vms.iter().any(|vm| {
        vm.name().to_lowercase() == wanted && except.is_none_or(|e| e.to_lowercase() != wanted)
    })
}

/// The problem with a proposed name, if any.
pub fn name_problem(snapshot: &Snapshot, name: &str, except: Option<&str>) -> Option<String> {
    if let Err(e) = vivarium_core::config::validate_name(name) {
        return Some(e.to_string());
    }
    name_taken(snapshot, name, except).then(|| format!("A VM named `{name}` already exists."))
}

/// A name like `base`, `base 2`, `base 3`… that no VM has yet.
pub fn free_name(snapshot: &Snapshot, base: &str) -> String {
    if !name_taken(snapshot, base, None) {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base} {n}"))
        .find(|candidate| !name_taken(snapshot, candidate, None))
        .expect("some number is free")
}

/// A progress bar for a job, with Cancel when the job can be cancelled.
pub fn job_progress(ui: &mut egui::Ui, jobs: &Jobs, job: u64, cancellable: bool) {
    let Some(job) = jobs.get(job) else {
        return;
    };
    ui.horizontal(|ui| {
        let bar = match job.progress.fraction() {
            Some(fraction) => {
                let (done, total) = job.progress.bytes();
                egui::ProgressBar::new(fraction).text(format!(
                    "{} of {}",
                    vivarium_core::fsutil::format_size(done),
                    vivarium_core::fsutil::format_size(total)
                ))
            }
            None => egui::ProgressBar::new(0.0).animate(true).text("Working…"),
        };
        ui.add_sized([ui.available_width() - 90.0, 22.0], bar);
        if cancellable {
            let cancelling = job.progress.is_cancelling();
            if ui
                .add_enabled(!cancelling, egui::Button::new("Cancel"))
                .clicked()
            {
                job.progress.cancel();
            }
        }
    });
}
