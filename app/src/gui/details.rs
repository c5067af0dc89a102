//! The details pane of the selected VM: what it is made of, its notes, and the buttons that
//! act on it (only those that apply to its state are on).

use eframe::egui::{self, Color32, RichText};
use vivarium_core::config::{BootSource, NetworkConfig};
use vivarium_core::fsutil::format_size;

use vivarium_core::control::{LastExit, LastRun, LiveState};

use super::console::{Console, Link};
use super::icons::Icons;
use super::model::{VmRow, VmState};
use super::style::state_color;

/// The tabs of the details pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tab {
    /// What the VM is made of.
    #[default]
    Overview,
    /// The guest's screen (running VMs with a display).
    Screen,
    /// The serial console (running VMs).
    Console,
}

/// What the user asked for in the details pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailsAction {
    /// Start the VM in a VM process of its own.
    Start,
    /// Press the ACPI power button.
    ShutDown,
    /// Cut the power.
    PowerOff,
    /// Pause the vCPUs.
    Pause,
    /// Resume the vCPUs.
    Resume,
    /// Open the Clone dialog.
    Clone,
    /// Open the Delete confirmation.
    Delete,
    /// Open the Settings editor.
    Settings,
    /// Save the notes being edited.
    SaveNotes,
    /// Eject the disc of the running VM's CD-ROM drive.
    EjectCd,
    /// Choose an image and insert it in the running VM's CD-ROM drive.
    InsertCd,
}

/// The notes being edited, and what was last saved.
#[derive(Debug, Default)]
pub struct NotesEditor {
    /// The VM the notes belong to.
    pub vm: String,
    /// The text in the editor.
    pub text: String,
    /// The text as last loaded or saved.
    pub saved: String,
    /// Whether a save is running.
    pub saving: bool,
}

impl NotesEditor {
    /// Whether the editor has changes not saved yet.
    pub fn dirty(&self) -> bool {
        self.text != self.saved
    }

    /// Follows the VM's notes from the library unless the user is editing them.
    pub fn sync(&mut self, vm: &str, notes: &str) {
        if self.vm != vm {
            self.vm = vm.to_string();
            self.text = notes.to_string();
            self.saved = notes.to_string();
        } else if !self.dirty() && !self.saving && self.saved != notes {
            self.text = notes.to_string();
            self.saved = notes.to_string();
        }
    }
}

/// What the pane needs to know besides the VM.
pub struct DetailsContext<'a> {
    /// Icons.
    pub icons: &'a Icons,
    /// A job working on this VM (its buttons are off meanwhile).
    pub busy: Option<&'a str>,
    /// Why this VM cannot start on this host, if it cannot: its machine is of another
    /// architecture, or no VM can start here.
    pub cannot_start: Option<&'a str>,
}

/// Draws the pane for `vm`; `screen` draws its Screen tab (running VMs with a display).
pub fn ui(
    ui: &mut egui::Ui,
    vm: &VmRow,
    notes: &mut NotesEditor,
    cx: &DetailsContext<'_>,
    tab: &mut Tab,
    console: Option<&mut Console>,
    screen: Option<&mut dyn FnMut(&mut egui::Ui)>,
) -> Option<DetailsAction> {
    let mut action = None;
    header(ui, vm, cx);
    ui.add_space(10.0);
    toolbar(ui, vm, cx, &mut action);
    ui.add_space(8.0);
    if vm.state.is_live() {
        ui.horizontal(|ui| {
            ui.selectable_value(tab, Tab::Overview, "Overview");
            if screen.is_some() {
                ui.selectable_value(tab, Tab::Screen, "Screen");
            }
            ui.selectable_value(tab, Tab::Console, "Console");
        });
        ui.separator();
    } else {
        // The tab stays as chosen (a VM just started may not be listed as running yet).
        ui.add_space(4.0);
    }
    if *tab == Tab::Screen
        && vm.state.is_live()
        && let Some(screen) = screen
    {
        screen(ui);
        return action;
    }
    if *tab == Tab::Console && vm.state.is_live() {
        console_tab(ui, vm, console);
        return action;
    }
    let config = match &vm.entry.config {
        Ok(config) => config,
        Err(reason) => {
            card(ui, "Problem", |ui| {
                ui.label(
                    RichText::new(format!("`vm.toml` cannot be read: {reason}"))
                        .color(state_color(VmState::Broken)),
                );
                ui.label(format!(
                    "Fix or replace `vm.toml` in `{}`, or delete the VM.",
                    vm.entry.path.display()
                ));
            });
            return action;
        }
    };
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            card(ui, "Hardware", |ui| {
                egui::Grid::new("hardware")
                    .num_columns(2)
                    .spacing([24.0, 6.0])
                    .show(ui, |ui| {
                        row(ui, "Machine", config.arch.as_str());
                        row(ui, "Processors", &config.cpus.to_string());
                        row(ui, "Memory", &format_size(config.memory_mib << 20));
                        let boot = match &config.boot {
                            BootSource::Linux { kernel, initrd, .. } => format!(
                                "Linux kernel {}{}",
                                file_name(kernel),
                                initrd
                                    .as_ref()
                                    .map(|i| format!(" + {}", file_name(i)))
                                    .unwrap_or_default()
                            ),
                            BootSource::Installer { .. } => {
                                "Installer (then the disk, once it is installed)".into()
                            }
                            BootSource::Cdrom => "CD-ROM, then disk".into(),
                            BootSource::Disk => "Disk, else CD-ROM".into(),
                        };
                        row(ui, "Boots from", &boot);
                        if !matches!(config.boot, BootSource::Linux { .. }) {
                            row(ui, "Firmware", config.firmware.label());
                        }
                        cd_row(ui, vm, config, cx.busy.is_some(), &mut action);
                        let network = match &config.network {
                            NetworkConfig::None => "None".to_string(),
                            NetworkConfig::User { mac, forwards } if forwards.is_empty() => {
                                format!("User-mode, MAC {mac}")
                            }
                            NetworkConfig::User { mac, forwards } => format!(
                                "User-mode, MAC {mac}, forwards {}",
                                forwards
                                    .iter()
                                    .map(|f| f.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        };
                        row(ui, "Network", &network);
                        row(ui, "Display", &config.display.to_string());
                    });
            });
            card(ui, "Storage", |ui| {
                if config.disks.is_empty() {
                    ui.label(RichText::new("No disks").weak());
                }
                egui::Grid::new("disks")
                    .num_columns(2)
                    .spacing([24.0, 6.0])
                    .show(ui, |ui| {
                        for (i, disk) in config.disks.iter().enumerate() {
                            let mut text = format!("{} {}", format_size(disk.size), disk.format);
                            if disk.base.is_some() {
                                text.push_str(", linked (copy-on-write over a shared base)");
                            }
                            if disk.read_only {
                                text.push_str(", read-only");
                            }
                            row(ui, &format!("Disk {}", i + 1), &text);
                        }
                        row(ui, "Space used", &format_size(vm.entry.disk_usage));
                    });
            });
            card(ui, "About", |ui| {
                egui::Grid::new("about")
                    .num_columns(2)
                    .spacing([24.0, 6.0])
                    .show(ui, |ui| {
                        match &vm.live {
                            Some(LiveState::Running(status)) => row(
                                ui,
                                "Running since",
                                &format!(
                                    "{} (VM process {})",
                                    ago(status.started_at_unix),
                                    status.pid
                                ),
                            ),
                            Some(LiveState::Stopped {
                                last_run: Some(run),
                            }) => row(ui, "Last run", &describe_run(run)),
                            _ => row(ui, "Last run", "Never started"),
                        }
                        row(ui, "Created", &config.created.replace('T', " "));
                        row(ui, "Folder", &vm.entry.path.display().to_string());
                    });
            });
            card(ui, "Notes", |ui| {
                let id = ui.label(RichText::new("Notes").small().weak()).id;
                let response = ui
                    .add(
                        egui::TextEdit::multiline(&mut notes.text)
                            .hint_text("Anything worth remembering about this VM")
                            .desired_rows(4)
                            .desired_width(f32::INFINITY),
                    )
                    .labelled_by(id);
                if response.lost_focus() && notes.dirty() {
                    action = Some(DetailsAction::SaveNotes);
                }
                ui.horizontal(|ui| {
                    if notes.saving {
                        ui.spinner();
                        ui.label(RichText::new("Saving…").weak());
                    } else if notes.dirty() {
                        if ui.button("Save notes").clicked() {
                            action = Some(DetailsAction::SaveNotes);
                        }
                        ui.label(RichText::new("Not saved yet").weak());
                    }
                });
            });
        });
    action
}

fn header(ui: &mut egui::Ui, vm: &VmRow, cx: &DetailsContext<'_>) {
    ui.horizontal(|ui| {
        if let Some(texture) = cx.icons.os(vm.os) {
            ui.add(egui::Image::new((texture.id(), egui::vec2(56.0, 56.0))));
        }
        ui.vertical(|ui| {
            ui.add_space(4.0);
            ui.label(RichText::new(vm.name()).size(24.0).strong());
            ui.horizontal(|ui| {
                let color = state_color(vm.state);
                chip(ui, vm.state.label(), color);
                if let Ok(config) = &vm.entry.config {
                    ui.label(RichText::new(&config.os.name).weak());
                }
                if let Some(job) = cx.busy {
                    ui.spinner();
                    ui.label(RichText::new(job).weak());
                }
            });
            if let Some(why) = &vm.cannot_start {
                ui.label(
                    RichText::new(format!("It cannot start here: {why}"))
                        .color(crate::gui::style::CANNOT_START),
                );
            }
        });
    });
}

fn toolbar(
    ui: &mut egui::Ui,
    vm: &VmRow,
    cx: &DetailsContext<'_>,
    action: &mut Option<DetailsAction>,
) {
    let idle = cx.busy.is_none();
    let stopped = vm.state.is_stopped() && idle;
    let configured = vm.entry.config.is_ok();
    ui.horizontal(|ui| {
        let can_start = stopped && configured && cx.cannot_start.is_none();
        let mut start = egui::Button::new(RichText::new("Start").strong());
        if can_start {
            start = start.fill(crate::gui::style::ACCENT.gamma_multiply(0.8));
        }
        let mut response = ui.add_enabled(can_start, start);
        if let Some(why) = cx.cannot_start {
            response = response.on_disabled_hover_text(why);
        }
        if response.clicked() {
            *action = Some(DetailsAction::Start);
        }
        let running = vm.state == VmState::Running && idle;
        if ui
            .add_enabled(running, egui::Button::new("Shut down"))
            .on_hover_text("Press the power button: the guest shuts down cleanly")
            .clicked()
        {
            *action = Some(DetailsAction::ShutDown);
        }
        let live = vm.state.is_live() && idle;
        if ui
            .add_enabled(live, egui::Button::new("Power off"))
            .on_hover_text("Cut the power at once (unsaved data in the guest is lost)")
            .clicked()
        {
            *action = Some(DetailsAction::PowerOff);
        }
        if vm.state == VmState::Paused {
            if ui.add_enabled(idle, egui::Button::new("Resume")).clicked() {
                *action = Some(DetailsAction::Resume);
            }
        } else if ui
            .add_enabled(running, egui::Button::new("Pause"))
            .clicked()
        {
            *action = Some(DetailsAction::Pause);
        }
        ui.separator();
        let settings_label = if vm.state.is_live() {
            "Settings (read-only while running)"
        } else {
            "Settings"
        };
        if ui
            .add_enabled(configured && idle, egui::Button::new("Settings"))
            .on_hover_text(settings_label)
            .clicked()
        {
            *action = Some(DetailsAction::Settings);
        }
        if ui
            .add_enabled(stopped && configured, egui::Button::new("Clone…"))
            .on_disabled_hover_text("A VM can be cloned when it is stopped")
            .clicked()
        {
            *action = Some(DetailsAction::Clone);
        }
        let deletable = idle && !vm.state.is_live();
        if ui
            .add_enabled(deletable, egui::Button::new("Delete…"))
            .on_disabled_hover_text("A VM can be deleted when it is stopped")
            .clicked()
        {
            *action = Some(DetailsAction::Delete);
        }
    });
}

/// A small rounded label in a state's colour.
fn chip(ui: &mut egui::Ui, text: &str, color: Color32) {
    egui::Frame::new()
        .fill(color.gamma_multiply(0.18))
        .corner_radius(10)
        .inner_margin(egui::Margin::symmetric(8, 1))
        .show(ui, |ui| {
            ui.label(RichText::new(text).color(color).small().strong());
        });
}

/// A titled group of facts.
fn card(ui: &mut egui::Ui, title: &str, content: impl FnOnce(&mut egui::Ui)) {
    egui::Frame::new()
        .fill(ui.visuals().faint_bg_color)
        .stroke(ui.visuals().widgets.noninteractive.bg_stroke)
        .corner_radius(10)
        .inner_margin(egui::Margin::symmetric(16, 12))
        .show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new(title).strong());
            ui.add_space(6.0);
            content(ui);
        });
    ui.add_space(10.0);
}

/// The CD/DVD drive: for a running VM the disc in it now (it follows eject and insert), with
/// Eject and Insert… buttons; otherwise what `vm.toml` puts in it at start.
fn cd_row(
    ui: &mut egui::Ui,
    vm: &VmRow,
    config: &vivarium_core::config::VmConfig,
    busy: bool,
    action: &mut Option<DetailsAction>,
) {
    let live = match &vm.live {
        Some(LiveState::Running(status)) => status.cdrom.clone().map(|drive| drive.image),
        _ => None,
    };
    let running = live.is_some();
    let medium = match live {
        Some(medium) => Some(medium),
        None => config.cdrom.as_ref().map(|c| c.image.clone()),
    };
    let text = match &medium {
        None => "None".to_string(),
        Some(None) => "Empty".to_string(),
        Some(Some(image)) => file_name(image),
    };
    ui.label(RichText::new("CD/DVD").weak());
    ui.horizontal(|ui| {
        ui.label(text);
        if !running {
            return;
        }
        let loaded = matches!(medium, Some(Some(_)));
        if ui
            .add_enabled(loaded && !busy, egui::Button::new("Eject").small())
            .on_hover_text("Take the disc out of the running VM's drive")
            .clicked()
        {
            *action = Some(DetailsAction::EjectCd);
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Insert…").small())
            .on_hover_text("Choose an ISO and put it in the running VM's drive")
            .clicked()
        {
            *action = Some(DetailsAction::InsertCd);
        }
    });
    ui.end_row();
}

fn row(ui: &mut egui::Ui, key: &str, value: &str) {
    ui.label(RichText::new(key).weak());
    ui.label(value);
    ui.end_row();
}

fn console_tab(ui: &mut egui::Ui, vm: &VmRow, console: Option<&mut Console>) {
    let Some(console) = console else {
        ui.spinner();
        return;
    };
    ui.horizontal(|ui| {
        let link = console.link();
        let (text, color) = match &link {
            Link::Connecting => ("Connecting…".to_string(), ui.visuals().weak_text_color()),
            Link::Attached => (
                "Connected to the serial console (click it to type)".to_string(),
                ui.visuals().weak_text_color(),
            ),
            Link::Ended => (
                "The console ended".to_string(),
                ui.visuals().weak_text_color(),
            ),
            Link::Failed(why) => (
                format!("Could not attach: {why}"),
                state_color(VmState::Broken),
            ),
        };
        ui.label(RichText::new(text).color(color).small());
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui
                .button("Copy all")
                .on_hover_text("Copy the scrollback and the screen")
                .clicked()
            {
                console.copy_all(ui.ctx());
            }
            if ui.button("Copy screen").clicked() {
                console.copy(ui.ctx());
            }
        });
    });
    ui.add_space(4.0);
    console.ui(ui, &format!("Console of {}", vm.name()));
}

/// "5 minutes ago" from a Unix time.
fn ago(unix: u64) -> String {
    let now = vivarium_core::control::now_unix();
    let secs = now.saturating_sub(unix);
    match secs {
        0..=59 => "just now".to_string(),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

fn describe_run(run: &LastRun) -> String {
    let how = match &run.exit {
        LastExit::PoweredOff => "powered off".to_string(),
        LastExit::Crashed { reason } => format!("crashed: {}", first_line(reason)),
        LastExit::Killed => "its VM process was killed".to_string(),
        LastExit::Failed { error } => format!("failed: {}", first_line(error)),
    };
    format!("Ended {}, {how}", ago(run.ended_at_unix))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

fn file_name(path: &std::path::Path) -> String {
    super::drop::file_name(path)
}
