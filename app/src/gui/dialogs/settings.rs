//! The Settings editor: name, OS, CPUs, memory, boot, CD-ROM, network, display and disk
//! write protection of a stopped VM. A running VM's settings are shown read-only. Saving goes
//! through `Library::update` (validated, atomic) and `Library::rename`, as `vivarium set` and
//! `vivarium rename` do.

use std::path::{Path, PathBuf};

use eframe::egui::{self, RichText};
use vivarium_core::VmConfig;
use vivarium_core::config::{
    BootSource, CdromConfig, DisplayConfig, Firmware, MAX_CPUS, MAX_MEMORY_MIB, MIN_CPUS,
    MIN_MEMORY_MIB, NetworkConfig, OsInfo,
};

use super::{DialogEnv, DialogOutcome, FilePick, field_label, modal_frame, name_problem, problem};
use crate::gui::jobs::Done;
use crate::gui::model::VmState;

/// OS families the user can pick: (id, name shown).
const OS_CHOICES: &[(&str, &str)] = &[
    ("debian", "Debian"),
    ("ubuntu", "Ubuntu"),
    ("fedora", "Fedora"),
    ("arch", "Arch Linux"),
    ("linux", "Linux"),
    ("windows", "Windows"),
    ("freebsd", "FreeBSD"),
    ("other", "Other"),
];

/// Screen sizes offered (any size can be set with `vivarium set --display`).
const DISPLAYS: &[&str] = &[
    "none",
    "800x600",
    "1024x768",
    "1280x800",
    "1280x1024",
    "1920x1080",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootKind {
    Linux,
    Installer,
    Cdrom,
    Disk,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileField {
    Kernel,
    Initrd,
    Iso,
}

/// The dialog's state: the form, filled from the VM's configuration.
pub struct SettingsDialog {
    original: VmConfig,
    /// The VM's bundle, where relative boot files are.
    bundle: PathBuf,
    name: String,
    os: OsInfo,
    cpus: u32,
    memory_mib: u64,
    boot: BootKind,
    firmware: Firmware,
    kernel: String,
    initrd: String,
    cmdline: String,
    iso: String,
    network: bool,
    display: String,
    read_only: Vec<bool>,
    pick: Option<FilePick<FileField>>,
    /// The save job, while it runs.
    pub job: Option<u64>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

impl SettingsDialog {
    /// The form for the configuration of the VM whose bundle is `bundle`.
    pub fn new(config: &VmConfig, bundle: &Path) -> Self {
        let (boot, kernel, initrd, cmdline) = match &config.boot {
            BootSource::Linux {
                kernel,
                initrd,
                cmdline,
            }
            | BootSource::Installer {
                kernel,
                initrd,
                cmdline,
            } => (
                if matches!(config.boot, BootSource::Installer { .. }) {
                    BootKind::Installer
                } else {
                    BootKind::Linux
                },
                kernel.display().to_string(),
                initrd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cmdline.clone(),
            ),
            BootSource::Cdrom => (BootKind::Cdrom, String::new(), String::new(), String::new()),
            BootSource::Disk => (BootKind::Disk, String::new(), String::new(), String::new()),
        };
        SettingsDialog {
            original: config.clone(),
            bundle: bundle.to_path_buf(),
            name: config.name.clone(),
            os: config.os.clone(),
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            boot,
            firmware: config.firmware,
            kernel,
            initrd,
            cmdline,
            iso: config
                .cdrom
                .as_ref()
                .and_then(|c| c.image.as_ref())
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            network: !matches!(config.network, NetworkConfig::None),
            display: config.display.to_string(),
            read_only: config.disks.iter().map(|d| d.read_only).collect(),
            pick: None,
            job: None,
            error: None,
        }
    }

    /// Whether a kernel or initrd path names a file: absolute, or relative to the VM's
    /// bundle (an installer's files live in its `state/`).
    fn kernel_exists(&self, path: &str) -> bool {
        let path = Path::new(path);
        path.is_file() || (path.is_relative() && self.bundle.join(path).is_file())
    }

    /// The problems of the form, in the order of the fields.
    fn problems(&self, env: &DialogEnv<'_>) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(why) = name_problem(env.snapshot, &self.name, Some(&self.original.name)) {
            problems.push(why);
        }
        let kernel_boot = matches!(self.boot, BootKind::Linux | BootKind::Installer);
        if kernel_boot && !self.kernel_exists(self.kernel.trim()) {
            problems.push("Choose the kernel file.".into());
        }
        if kernel_boot && !self.initrd.trim().is_empty() && !self.kernel_exists(self.initrd.trim())
        {
            problems.push(format!(
                "The initrd `{}` is not a file.",
                self.initrd.trim()
            ));
        }
        if !self.iso.trim().is_empty() && !Path::new(self.iso.trim()).is_file() {
            problems.push(format!("The ISO `{}` is not a file.", self.iso.trim()));
        }
        if self.boot == BootKind::Cdrom && self.iso.trim().is_empty() {
            problems.push("Booting from the CD-ROM needs an ISO in the drive.".into());
        }
        problems
    }

    /// Writes the form into a configuration (what `Library::update` then validates).
    fn apply(&self, config: &mut VmConfig) -> vivarium_core::Result<()> {
        config.os = self.os.clone();
        config.cpus = self.cpus;
        config.memory_mib = self.memory_mib;
        config.boot = match self.boot {
            BootKind::Linux => BootSource::Linux {
                kernel: PathBuf::from(self.kernel.trim()),
                initrd: (!self.initrd.trim().is_empty()).then(|| PathBuf::from(self.initrd.trim())),
                cmdline: self.cmdline.trim().to_string(),
            },
            BootKind::Installer => BootSource::Installer {
                kernel: PathBuf::from(self.kernel.trim()),
                initrd: (!self.initrd.trim().is_empty()).then(|| PathBuf::from(self.initrd.trim())),
                cmdline: self.cmdline.trim().to_string(),
            },
            BootKind::Cdrom => BootSource::Cdrom,
            BootKind::Disk => BootSource::Disk,
        };
        config.firmware = self.firmware;
        let iso = self.iso.trim();
        if !iso.is_empty() {
            config.cdrom = Some(CdromConfig {
                image: Some(PathBuf::from(iso)),
            });
        } else if config.cdrom.is_some() {
            config.cdrom = Some(CdromConfig { image: None });
        }
        match (self.network, &config.network) {
            (false, _) => config.network = NetworkConfig::None,
            (true, NetworkConfig::None) => config.network = NetworkConfig::user_with_random_mac(),
            (true, NetworkConfig::User { .. }) => {}
        }
        config.display = self.display.parse::<DisplayConfig>()?;
        for (disk, read_only) in config.disks.iter_mut().zip(&self.read_only) {
            disk.read_only = *read_only;
        }
        Ok(())
    }

    /// Draws the dialog.
    pub fn ui(&mut self, ctx: &egui::Context, env: &mut DialogEnv<'_>) -> DialogOutcome {
        if let Some(picked) = self.pick.as_ref().and_then(FilePick::poll) {
            let field = self.pick.take().map(|p| p.target);
            if let (Some(path), Some(field)) = (picked, field) {
                env.prefs.last_folder = path.parent().map(Path::to_path_buf);
                let text = path.display().to_string();
                match field {
                    FileField::Kernel => self.kernel = text,
                    FileField::Initrd => self.initrd = text,
                    FileField::Iso => self.iso = text,
                }
            }
        }
        let running = env
            .snapshot
            .find(&self.original.name)
            .is_some_and(|vm| vm.state.is_live());
        let busy = self.job.is_some();
        let mut outcome = DialogOutcome::Open;
        let response = egui::Modal::new(egui::Id::unique("settings-dialog"))
            .frame(modal_frame(ctx))
            .show(ctx, |ui| {
                ui.set_width(540.0);
                ui.heading(format!("Settings of {}", self.original.name));
                if running {
                    ui.label(
                        RichText::new(
                            "The VM is running: its settings can change once it has shut down.",
                        )
                        .color(crate::gui::style::state_color(VmState::Running)),
                    );
                }
                ui.add_space(8.0);
                ui.add_enabled_ui(!running && !busy, |ui| self.form(ui, env));
                let problems = self.problems(env);
                for why in &problems {
                    problem(ui, why);
                }
                if let Some(error) = &self.error {
                    problem(ui, error);
                }
                ui.add_space(6.0);
                ui.separator();
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    if busy {
                        ui.spinner();
                        return;
                    }
                    if running {
                        if ui.button("Close").clicked() {
                            outcome = DialogOutcome::Close;
                        }
                        return;
                    }
                    if ui
                        .add_enabled(
                            problems.is_empty(),
                            egui::Button::new(RichText::new("Save").strong()),
                        )
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

    fn form(&mut self, ui: &mut egui::Ui, env: &mut DialogEnv<'_>) {
        let folder = env.prefs.last_folder.clone();
        egui::Grid::new("settings-grid")
            .num_columns(2)
            .spacing([12.0, 8.0])
            .min_col_width(120.0)
            .show(ui, |ui| {
                let id = field_label(ui, "Name");
                ui.add(egui::TextEdit::singleline(&mut self.name).desired_width(340.0))
                    .labelled_by(id);
                ui.end_row();

                field_label(ui, "Operating system");
                egui::ComboBox::from_id_salt("settings-os")
                    .selected_text(self.os.name.clone())
                    .width(200.0)
                    .show_ui(ui, |ui| {
                        for (id, name) in OS_CHOICES {
                            let selected = self.os.id == *id;
                            if ui.selectable_label(selected, *name).clicked() {
                                self.os = OsInfo {
                                    id: (*id).into(),
                                    name: (*name).into(),
                                };
                            }
                        }
                    });
                ui.end_row();

                let id = field_label(ui, "CPUs");
                ui.add(egui::DragValue::new(&mut self.cpus).range(MIN_CPUS..=MAX_CPUS))
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

                field_label(ui, "Boot from");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut self.boot, BootKind::Linux, "Linux kernel");
                    if matches!(self.original.boot, BootSource::Installer { .. }) {
                        ui.radio_value(&mut self.boot, BootKind::Installer, "Installer, then disk")
                            .on_hover_text(
                                "The installer's kernel until the disk has a boot loader, then \
                                 the disk through the BIOS",
                            );
                    }
                    ui.radio_value(&mut self.boot, BootKind::Cdrom, "CD-ROM");
                    ui.radio_value(&mut self.boot, BootKind::Disk, "Disk")
                        .on_hover_text("The disk; while it holds nothing bootable, the CD-ROM");
                });
                ui.end_row();
                field_label(ui, "Firmware");
                ui.horizontal(|ui| {
                    ui.radio_value(&mut self.firmware, Firmware::Bios, "BIOS")
                        .on_hover_text("SeaBIOS: what most installers and 32-bit systems boot");
                    ui.radio_value(&mut self.firmware, Firmware::Uefi, "UEFI")
                        .on_hover_text(
                            "OVMF, with this VM's own UEFI variables (its boot entries) in its \
                             folder",
                        );
                });
                ui.end_row();
                if matches!(self.boot, BootKind::Linux | BootKind::Installer) {
                    self.file_row(ui, "Kernel", FileField::Kernel, &folder);
                    self.file_row(ui, "Initrd", FileField::Initrd, &folder);
                    let id = field_label(ui, "Command line");
                    ui.add(egui::TextEdit::singleline(&mut self.cmdline).desired_width(340.0))
                        .labelled_by(id);
                    ui.end_row();
                }
                self.file_row(ui, "CD-ROM image", FileField::Iso, &folder);

                field_label(ui, "Network");
                ui.checkbox(&mut self.network, "User-mode network (no root needed)");
                ui.end_row();

                field_label(ui, "Display");
                egui::ComboBox::from_id_salt("settings-display")
                    .selected_text(self.display.clone())
                    .show_ui(ui, |ui| {
                        for size in DISPLAYS {
                            ui.selectable_value(&mut self.display, (*size).to_string(), *size);
                        }
                    });
                ui.end_row();

                for (i, disk) in self.original.disks.iter().enumerate() {
                    field_label(ui, &format!("Disk {}", i + 1));
                    let text = format!(
                        "{} {} — read-only for the guest",
                        vivarium_core::fsutil::format_size(disk.size),
                        disk.format
                    );
                    if let Some(read_only) = self.read_only.get_mut(i) {
                        ui.checkbox(read_only, text);
                    }
                    ui.end_row();
                }
            });
    }

    fn file_row(
        &mut self,
        ui: &mut egui::Ui,
        label: &str,
        field: FileField,
        folder: &Option<PathBuf>,
    ) {
        let id = field_label(ui, label);
        ui.horizontal(|ui| {
            let (text, hint) = match field {
                FileField::Kernel => (&mut self.kernel, "path to the kernel"),
                FileField::Initrd => (&mut self.initrd, "optional"),
                FileField::Iso => (&mut self.iso, "empty drive"),
            };
            ui.add(
                egui::TextEdit::singleline(text)
                    .hint_text(hint)
                    .desired_width(250.0),
            )
            .labelled_by(id);
            if ui
                .add_enabled(self.pick.is_none(), egui::Button::new("Choose…"))
                .on_hover_text(format!("Choose the {} file", label.to_lowercase()))
                .clicked()
            {
                let filter: Option<(&str, &[&str])> =
                    (field == FileField::Iso).then_some(("ISO images", &["iso"]));
                self.pick = Some(FilePick::open(
                    ui.ctx(),
                    field,
                    &format!("Choose the {}", label.to_lowercase()),
                    filter,
                    folder.clone(),
                ));
            }
        });
        ui.end_row();
    }

    fn start(&mut self, env: &mut DialogEnv<'_>) {
        self.error = None;
        let library = env.library.clone();
        let old = self.original.name.clone();
        let new = self.name.trim().to_string();
        let form = self.clone_form();
        self.job = Some(env.jobs.spawn(
            format!("Saving the settings of {old}"),
            Some(old.clone()),
            move |_| {
                library.update(&old, |config| form.apply(config))?;
                if new != old {
                    library.rename(&old, &new)?;
                }
                Ok(Done::Saved { name: new })
            },
        ));
    }

    fn clone_form(&self) -> SettingsDialog {
        SettingsDialog {
            original: self.original.clone(),
            bundle: self.bundle.clone(),
            name: self.name.clone(),
            os: self.os.clone(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            boot: self.boot,
            firmware: self.firmware,
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            iso: self.iso.clone(),
            network: self.network,
            display: self.display.clone(),
            read_only: self.read_only.clone(),
            pick: None,
            job: None,
            error: None,
        }
    }
}
