//! The New VM dialog: an installer ISO, a Linux kernel (+ initrd), or a disk image to import;
//! name, CPUs, memory and disk size with sensible defaults; inline validation. Creating runs
//! `Library::create` (for an ISO: `iso::inspect` and `Library::create_from_iso`) in the
//! background, as `vivarium create` / `vivarium import` do.

use std::path::{Path, PathBuf};

use eframe::egui::{self, RichText};
use vivarium_core::config::{
    BootSource, DiskFormat, MAX_CPUS, MAX_MEMORY_MIB, MIN_CPUS, MIN_MEMORY_MIB,
};
use vivarium_core::{NewDisk, NewVm};

use super::{
    DialogEnv, DialogOutcome, FilePick, field_label, job_progress, modal_frame, name_problem,
    problem,
};
use crate::gui::drop::{DroppedSource, file_name, name_from_file};
use crate::gui::jobs::Done;

/// Where the new VM starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// An installer ISO in the CD-ROM drive, and a new empty disk.
    Iso,
    /// A Linux kernel and initrd booted directly, and a new empty disk.
    Kernel,
    /// A copy of an existing raw or qcow2 disk image, booted from.
    DiskImage,
}

/// The file fields a file dialog can fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileField {
    Iso,
    Kernel,
    Initrd,
    DiskImage,
}

/// The dialog's state.
pub struct NewVmDialog {
    source: SourceKind,
    iso: String,
    kernel: String,
    initrd: String,
    cmdline: String,
    disk_image: String,
    name: String,
    /// Whether the user typed the name (then a chosen file no longer renames it).
    name_edited: bool,
    cpus: u32,
    memory_mib: u64,
    disk_gib: u64,
    pick: Option<FilePick<FileField>>,
    /// The create job, while it runs.
    pub job: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

impl NewVmDialog {
    /// An empty dialog with the defaults from the app's settings.
    pub fn new(env: &DialogEnv<'_>) -> Self {
        NewVmDialog {
            source: SourceKind::Iso,
            iso: String::new(),
            kernel: String::new(),
            initrd: String::new(),
            cmdline: "console=ttyS0".into(),
            disk_image: String::new(),
            name: super::free_name(env.snapshot, "New VM"),
            name_edited: false,
            cpus: env.prefs.new_vm_cpus,
            memory_mib: env.prefs.new_vm_memory_mib,
            disk_gib: env.prefs.new_vm_disk_gib,
            pick: None,
            job: None,
            error: None,
        }
    }

    /// The dialog filled in from a dropped file.
    pub fn from_dropped(env: &DialogEnv<'_>, source: &DroppedSource) -> Self {
        let mut dialog = NewVmDialog::new(env);
        match source {
            DroppedSource::Iso(path) => {
                dialog.source = SourceKind::Iso;
                dialog.iso = path.display().to_string();
            }
            DroppedSource::DiskImage(path) => {
                dialog.source = SourceKind::DiskImage;
                dialog.disk_image = path.display().to_string();
            }
        }
        let path = match source {
            DroppedSource::Iso(p) | DroppedSource::DiskImage(p) => p,
        };
        dialog.name = super::free_name(env.snapshot, &name_from_file(path));
        dialog
    }

    fn set_file(&mut self, field: FileField, path: &Path, env: &DialogEnv<'_>) {
        let text = path.display().to_string();
        match field {
            FileField::Iso => self.iso = text,
            FileField::Kernel => self.kernel = text,
            FileField::Initrd => self.initrd = text,
            FileField::DiskImage => self.disk_image = text,
        }
        if !self.name_edited && field != FileField::Initrd {
            self.name = super::free_name(env.snapshot, &name_from_file(path));
        }
    }

    /// The main file of the chosen source, and what is wrong with it.
    fn file_problem(&self) -> Option<String> {
        let (text, what) = match self.source {
            SourceKind::Iso => (&self.iso, "an ISO image"),
            SourceKind::Kernel => (&self.kernel, "a kernel"),
            SourceKind::DiskImage => (&self.disk_image, "a disk image"),
        };
        if text.trim().is_empty() {
            return Some(format!("Choose {what}."));
        }
        if !Path::new(text.trim()).is_file() {
            return Some(format!("`{}` is not a file.", text.trim()));
        }
        if self.source == SourceKind::Kernel
            && !self.initrd.trim().is_empty()
            && !Path::new(self.initrd.trim()).is_file()
        {
            return Some(format!(
                "The initrd `{}` is not a file.",
                self.initrd.trim()
            ));
        }
        None
    }

    /// The VM to create, as `vivarium create`/`import` would build it.
    fn spec(&self) -> NewVm {
        let path = |text: &str| PathBuf::from(text.trim());
        let boot = match self.source {
            SourceKind::Iso => BootSource::Cdrom,
            SourceKind::Kernel => BootSource::Linux {
                kernel: path(&self.kernel),
                initrd: (!self.initrd.trim().is_empty()).then(|| path(&self.initrd)),
                cmdline: self.cmdline.trim().to_string(),
            },
            SourceKind::DiskImage => BootSource::Disk,
        };
        let mut spec = NewVm::with_defaults(self.name.clone(), boot);
        spec.cpus = self.cpus;
        spec.memory_mib = self.memory_mib;
        spec.os = crate::cli::os_info(None, None, self.source == SourceKind::Kernel);
        spec.cdrom = (self.source == SourceKind::Iso).then(|| path(&self.iso));
        spec.disk = match self.source {
            SourceKind::DiskImage => NewDisk::Import {
                path: path(&self.disk_image),
            },
            SourceKind::Iso | SourceKind::Kernel => NewDisk::Blank {
                size: self.disk_gib << 30,
                format: DiskFormat::Raw,
            },
        };
        spec
    }

    /// Draws the dialog.
    pub fn ui(&mut self, ctx: &egui::Context, env: &mut DialogEnv<'_>) -> DialogOutcome {
        if let Some(picked) = self.pick.as_ref().and_then(FilePick::poll) {
            let field = self.pick.take().map(|p| p.target);
            if let (Some(path), Some(field)) = (picked, field) {
                env.prefs.last_folder = path.parent().map(Path::to_path_buf);
                self.set_file(field, &path, env);
            }
        }
        let mut outcome = DialogOutcome::Open;
        let busy = self.job.is_some();
        let response = egui::Modal::new(egui::Id::unique("new-vm-dialog"))
            .frame(modal_frame(ctx))
            .show(ctx, |ui| {
                ui.set_width(520.0);
                ui.heading("New virtual machine");
                ui.add_space(8.0);
                ui.add_enabled_ui(!busy, |ui| self.form(ui, env));
                ui.add_space(12.0);
                if let Some(error) = &self.error {
                    problem(ui, error);
                }
                if let Some(job) = self.job {
                    job_progress(ui, env.jobs, job, true);
                    return;
                }
                let name_problem = name_problem(env.snapshot, &self.name, None);
                let file_problem = self.file_problem();
                let valid = name_problem.is_none() && file_problem.is_none();
                ui.separator();
                ui.horizontal(|ui| {
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        let mut create = egui::Button::new(RichText::new("Create").strong());
                        if valid {
                            create = create.fill(crate::gui::style::ACCENT.gamma_multiply(0.8));
                        }
                        if ui.add_enabled(valid, create).clicked() {
                            self.start(env);
                        }
                        if ui.button("Cancel").clicked() {
                            outcome = DialogOutcome::Close;
                        }
                    });
                });
            });
        if response.should_close() && !busy {
            outcome = DialogOutcome::Close;
        }
        outcome
    }

    fn form(&mut self, ui: &mut egui::Ui, env: &mut DialogEnv<'_>) {
        ui.label(RichText::new("Install from").strong());
        ui.horizontal(|ui| {
            ui.radio_value(&mut self.source, SourceKind::Iso, "ISO image");
            ui.radio_value(&mut self.source, SourceKind::Kernel, "Linux kernel");
            ui.radio_value(
                &mut self.source,
                SourceKind::DiskImage,
                "Existing disk image",
            );
        });
        ui.add_space(4.0);
        let folder = env.prefs.last_folder.clone();
        egui::Grid::new("new-vm-files")
            .num_columns(2)
            .spacing([12.0, 8.0])
            .min_col_width(110.0)
            .show(ui, |ui| match self.source {
                SourceKind::Iso => self.file_row(
                    ui,
                    "ISO image",
                    FileField::Iso,
                    ("ISO images", &["iso"]),
                    &folder,
                ),
                SourceKind::Kernel => {
                    self.file_row(
                        ui,
                        "Kernel",
                        FileField::Kernel,
                        ("Kernels", &["*"]),
                        &folder,
                    );
                    self.file_row(
                        ui,
                        "Initrd",
                        FileField::Initrd,
                        ("Initrds", &["*"]),
                        &folder,
                    );
                    let id = field_label(ui, "Command line");
                    ui.add(egui::TextEdit::singleline(&mut self.cmdline).desired_width(340.0))
                        .labelled_by(id);
                    ui.end_row();
                }
                SourceKind::DiskImage => self.file_row(
                    ui,
                    "Disk image",
                    FileField::DiskImage,
                    ("Disk images", &["qcow2", "raw", "img"]),
                    &folder,
                ),
            });
        if let Some(why) = self.file_problem() {
            problem(ui, &why);
        }
        ui.add_space(10.0);
        egui::Grid::new("new-vm-hardware")
            .num_columns(2)
            .spacing([12.0, 8.0])
            .min_col_width(110.0)
            .show(ui, |ui| {
                let id = field_label(ui, "Name");
                let response = ui
                    .add(egui::TextEdit::singleline(&mut self.name).desired_width(340.0))
                    .labelled_by(id);
                if response.changed() {
                    self.name_edited = true;
                }
                ui.end_row();
                let id = field_label(ui, "CPUs");
                ui.add(egui::DragValue::new(&mut self.cpus).range(MIN_CPUS..=MAX_CPUS.min(64)))
                    .labelled_by(id);
                ui.end_row();
                let id = field_label(ui, "Memory");
                ui.add(
                    egui::DragValue::new(&mut self.memory_mib)
                        .range(MIN_MEMORY_MIB..=MAX_MEMORY_MIB)
                        .speed(16)
                        .suffix(" MiB"),
                )
                .labelled_by(id);
                ui.end_row();
                if self.source != SourceKind::DiskImage {
                    let id = field_label(ui, "Disk size");
                    ui.add(
                        egui::DragValue::new(&mut self.disk_gib)
                            .range(1..=16384)
                            .suffix(" GiB"),
                    )
                    .labelled_by(id)
                    .on_hover_text("The disk is sparse: it takes space only as the guest writes");
                    ui.end_row();
                }
            });
        if let Some(why) = name_problem(env.snapshot, &self.name, None) {
            problem(ui, &why);
        }
        if self.source == SourceKind::DiskImage {
            ui.label(
                RichText::new("The image is copied into the VM; the original stays untouched.")
                    .weak()
                    .small(),
            );
        }
    }

    fn file_row(
        &mut self,
        ui: &mut egui::Ui,
        label: &str,
        field: FileField,
        filter: (&str, &[&str]),
        folder: &Option<PathBuf>,
    ) {
        let id = field_label(ui, label);
        ui.horizontal(|ui| {
            let text = match field {
                FileField::Iso => &mut self.iso,
                FileField::Kernel => &mut self.kernel,
                FileField::Initrd => &mut self.initrd,
                FileField::DiskImage => &mut self.disk_image,
            };
            let hint = if field == FileField::Initrd {
                "optional"
            } else {
                "path to the file"
            };
            ui.add(
                egui::TextEdit::singleline(text)
                    .hint_text(hint)
                    .desired_width(250.0),
            )
            .labelled_by(id);
            let choosing = self.pick.is_some();
            if ui
                .add_enabled(!choosing, egui::Button::new("Choose…"))
                .on_hover_text(format!("Choose the {} file", label.to_lowercase()))
                .clicked()
            {
                let filter = (filter.1 != ["*"]).then_some(filter);
                self.pick = Some(FilePick::open(
                    ui.ctx(),
                    field,
                    &format!("Choose {}", label.to_lowercase()),
                    filter,
                    folder.clone(),
                ));
            }
        });
        ui.end_row();
    }

    fn start(&mut self, env: &mut DialogEnv<'_>) {
        self.error = None;
        env.prefs.new_vm_cpus = self.cpus;
        env.prefs.new_vm_memory_mib = self.memory_mib;
        if self.source != SourceKind::DiskImage {
            env.prefs.new_vm_disk_gib = self.disk_gib;
        }
        let spec = self.spec();
        let library = env.library.clone();
        let name = spec.name.clone();
        let label = match self.source {
            SourceKind::DiskImage => format!(
                "Creating {name} from {}",
                file_name(Path::new(self.disk_image.trim()))
            ),
            _ => format!("Creating {name}"),
        };
        let from_iso = self.source == SourceKind::Iso;
        self.job = Some(env.jobs.spawn(label, Some(name), move |progress| {
            let outcome = if from_iso {
                // As `vivarium create --iso`: the OS is recognised and its installer's kernel
                // booted directly when it can be; the dialog's name and hardware stay.
                let iso = spec.cdrom.clone().unwrap_or_default();
                let inspection = vivarium_core::iso::inspect(&iso)?;
                let mut spec = spec;
                spec.os = inspection.os_info();
                if let vivarium_core::iso::BootPlan::NeedsFirmware { firmware, .. } =
                    &inspection.plan
                {
                    spec.firmware = *firmware;
                }
                library.create_from_iso(&spec, &inspection, progress)?
            } else {
                library.create(&spec, progress)?
            };
            Ok(Done::Created {
                name: outcome.config.name,
                warnings: outcome.warnings,
            })
        }));
    }
}
