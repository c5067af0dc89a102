//! The app: state, the frame loop, and how the parts talk to each other.

use eframe::egui::{self, RichText};
use vivarium_core::Library;

use std::collections::HashMap;

use vivarium_core::config::DisplayConfig;
use vivarium_core::control::{ControlClient, LiveState};

use super::console::{Console, Link};
use super::details::{self, DetailsAction, DetailsContext, NotesEditor, Tab};
use super::dialogs::{
    Dialog, DialogEnv, DialogOutcome, FilePick, clone::CloneDialog, delete::DeleteDialog,
    new_vm::NewVmDialog, settings::SettingsDialog,
};
use super::display_feed::DisplayFeed;
use super::drop::{self, DroppedSource};
use super::grab::Grab;
use super::host::HostProbe;
use super::icons::Icons;
use super::input_link::InputLink;
use super::jobs::{Done, Finished, Jobs};
use super::model::{Refresher, Snapshot};
use super::prefs::{self, Prefs};
use super::screen::{ScreenAction, ScreenView};
use super::sidebar::{self, SidebarAction};
use super::toasts::{Level, Toasts};
use super::{AppEnv, style};

/// eframe storage key of the selected VM.
const SELECTED_KEY: &str = "selected-vm";

/// The Vivarium desktop app.
pub struct VivariumApp {
    env: AppEnv,
    refresher: Refresher,
    snapshot: Snapshot,
    selected: Option<String>,
    /// A VM to select as soon as it shows up in a listing (after create or clone).
    select_when_listed: Option<String>,
    filter: String,
    icons: Icons,
    toasts: Toasts,
    jobs: Jobs,
    host: HostProbe,
    prefs: Prefs,
    saved_prefs: Prefs,
    dialog: Option<Dialog>,
    notes: NotesEditor,
    /// The notes save job, while it runs.
    notes_job: Option<u64>,
    /// The text the running notes save writes.
    notes_sent: Option<String>,
    /// The details pane's tab.
    tab: Tab,
    /// Serial consoles of running VMs, attached when first shown.
    consoles: HashMap<String, Console>,
    /// The file dialog choosing a disc for a running VM's CD-ROM drive, and the VM.
    cd_pick: Option<(String, FilePick<()>)>,
    /// The screens of running VMs that have one (for the Screen tab and the thumbnails).
    screens: HashMap<String, LiveScreen>,
    /// The Screen tab's view, and the VM run it shows.
    screen: ScreenView,
    screen_of: Option<(String, u32)>,
    /// Whether the window shows only the selected VM's screen.
    fullscreen: bool,
    /// Events taken for the guest before egui saw them (while the screen has the grab).
    stolen: Vec<egui::Event>,
    /// Sidebar thumbnails: the feed's serial they show, and the texture.
    thumbnails: HashMap<String, (u64, egui::TextureHandle)>,
}

/// A running VM's screen: its display feed and the way its input goes.
struct LiveScreen {
    /// The VM process (a new run gets a new display file).
    pid: u32,
    feed: DisplayFeed,
    link: InputLink,
}

impl VivariumApp {
    /// The app on `env`'s library; restores the selected VM from eframe's storage.
    pub fn new(cc: &eframe::CreationContext<'_>, env: AppEnv) -> Self {
        let ctx = cc.egui_ctx.clone();
        let (prefs, prefs_problem) = prefs::load(env.prefs_path.as_deref());
        style::apply(&ctx, prefs.theme);
        let selected = cc
            .storage
            .and_then(|storage| eframe::get_value::<String>(storage, SELECTED_KEY));
        let mut toasts = Toasts::default();
        if let Some(problem) = prefs_problem {
            toasts.push(Level::Warning, problem);
        }
        VivariumApp {
            refresher: Refresher::start(env.library.clone(), ctx.clone()),
            snapshot: Snapshot::default(),
            selected,
            select_when_listed: None,
            filter: String::new(),
            icons: Icons::load(&ctx),
            toasts,
            jobs: Jobs::new(ctx.clone()),
            host: HostProbe::start(ctx),
            saved_prefs: prefs.clone(),
            prefs,
            dialog: None,
            notes: NotesEditor::default(),
            notes_job: None,
            notes_sent: None,
            tab: Tab::Overview,
            consoles: HashMap::new(),
            cd_pick: None,
            screens: HashMap::new(),
            screen: ScreenView::default(),
            screen_of: None,
            fullscreen: false,
            stolen: Vec::new(),
            thumbnails: HashMap::new(),
            env,
        }
    }

    /// The library the app shows.
    pub fn library(&self) -> &Library {
        &self.env.library
    }

    /// The selected VM.
    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    /// Selects a VM (as a click in the sidebar does).
    pub fn select(&mut self, name: &str) {
        self.selected = Some(name.to_string());
    }

    /// How many VMs the latest listing has (0 before the first one arrived).
    pub fn listed_vms(&self) -> usize {
        self.snapshot.vms.len()
    }

    /// Texture uploads the Screen tab made: whole pictures, and bands of changed rows.
    pub fn screen_uploads(&self) -> (u64, u64) {
        let uploads = self.screen.uploads;
        (uploads.whole, uploads.rows)
    }

    /// Whether the Screen tab has the keyboard and mouse.
    pub fn screen_grabbed(&self) -> bool {
        self.screen.grab.is_active()
    }

    /// Whether the window shows only a VM's screen.
    pub fn is_fullscreen(&self) -> bool {
        self.fullscreen
    }

    /// Shows the selected VM's screen in the whole window (as its Fullscreen button does),
    /// or leaves that.
    pub fn show_fullscreen(&mut self, ctx: &egui::Context, on: bool) {
        self.set_fullscreen(ctx, on);
    }

    /// The VMs whose sidebar row shows a live thumbnail.
    pub fn thumbnailed_vms(&self) -> Vec<String> {
        let mut names: Vec<String> = self.thumbnails.keys().cloned().collect();
        names.sort();
        names
    }

    /// Follows the screens of the running VMs that have one: a feed per VM process.
    fn sync_screens(&mut self, ctx: &egui::Context) {
        let wanted: HashMap<String, u32> = self
            .snapshot
            .vms
            .iter()
            .filter_map(|vm| {
                let config = vm.entry.config.as_ref().ok()?;
                let has_display = config.display != DisplayConfig::None;
                match &vm.live {
                    Some(LiveState::Running(status)) if has_display && vm.state.is_live() => {
                        Some((vm.name().to_string(), status.pid))
                    }
                    _ => None,
                }
            })
            .collect();
        self.screens
            .retain(|name, screen| wanted.get(name) == Some(&screen.pid));
        for (name, pid) in wanted {
            if self.screens.contains_key(&name) {
                continue;
            }
            let library = &self.env.library;
            let screen = LiveScreen {
                pid,
                feed: DisplayFeed::start_for_vm(library, &name, ctx.clone()),
                link: InputLink::start(library, &name, ctx),
            };
            self.screens.insert(name.clone(), screen);
            // The screen is the default tab of a running VM (the console stays if chosen).
            if self.selected.as_deref() == Some(name.as_str()) && self.tab == Tab::Overview {
                self.tab = Tab::Screen;
            }
        }
        let screens = &self.screens;
        self.thumbnails.retain(|name, _| screens.contains_key(name));
        let shown_gone = self
            .screen_of
            .as_ref()
            .is_some_and(|(name, pid)| screens.get(name).is_none_or(|s| s.pid != *pid));
        if shown_gone {
            self.forget_screen(ctx);
        }
    }

    /// The Screen tab no longer shows the VM run it showed: the grab ends, fullscreen too.
    fn forget_screen(&mut self, ctx: &egui::Context) {
        let link = self
            .screen_of
            .as_ref()
            .and_then(|(name, _)| self.screens.get(name))
            .map(|s| &s.link);
        self.screen.release(ctx, link);
        self.screen.forget();
        self.screen_of = None;
        self.set_fullscreen(ctx, false);
    }

    fn set_fullscreen(&mut self, ctx: &egui::Context, on: bool) {
        if self.fullscreen != on {
            self.fullscreen = on;
            ctx.send_viewport_cmd(egui::ViewportCommand::Fullscreen(on));
        }
    }

    /// Whether VM `name` runs with a screen the app follows.
    fn has_screen(&self, name: &str) -> bool {
        self.screens.contains_key(name)
    }

    /// While the screen has the grab: sends this frame's input to the guest.
    fn forward_grabbed_input(&mut self, ctx: &egui::Context) {
        if !self.screen.grab.is_active() {
            self.stolen.clear();
            return;
        }
        let mut events = std::mem::take(&mut self.stolen);
        // Events the raw input hook did not see (test harnesses do not call it).
        events.extend(ctx.input_mut(|i| Grab::steal(&mut i.events)));
        let Some(screen) = self
            .screen_of
            .as_ref()
            .and_then(|(name, _)| self.screens.get(name))
        else {
            self.screen.release(ctx, None);
            return;
        };
        if self.screen.forward(ctx, &events, &screen.link) && self.fullscreen {
            self.set_fullscreen(ctx, false);
        }
    }

    /// Draws the selected VM's screen (the Screen tab, or the whole window in fullscreen).
    fn screen_ui(
        screen_view: &mut ScreenView,
        screen_of: &mut Option<(String, u32)>,
        screens: &HashMap<String, LiveScreen>,
        name: &str,
        ui: &mut egui::Ui,
        fullscreen: bool,
    ) -> Option<ScreenAction> {
        let live = screens.get(name)?;
        let key = (name.to_string(), live.pid);
        if screen_of.as_ref() != Some(&key) {
            screen_view.release(ui.ctx(), None);
            screen_view.forget();
            *screen_of = Some(key);
        }
        screen_view.ui(
            ui,
            &live.feed,
            &live.link,
            &format!("Screen of {name}"),
            fullscreen,
        )
    }

    /// New thumbnails from the feeds into the sidebar's textures.
    fn update_thumbnails(&mut self, ctx: &egui::Context) {
        for (name, screen) in &self.screens {
            let Some(thumbnail) = screen.feed.thumbnail() else {
                self.thumbnails.remove(name);
                continue;
            };
            match self.thumbnails.get_mut(name) {
                Some((serial, _)) if *serial == thumbnail.serial => {}
                Some((serial, texture)) => {
                    texture.set(thumbnail.image, egui::TextureOptions::LINEAR);
                    *serial = thumbnail.serial;
                }
                None => {
                    let texture = ctx.load_texture(
                        format!("thumbnail-{name}"),
                        thumbnail.image,
                        egui::TextureOptions::LINEAR,
                    );
                    self.thumbnails
                        .insert(name.clone(), (thumbnail.serial, texture));
                }
            }
        }
    }

    /// Takes in what the background threads produced: a new listing, finished jobs.
    fn poll(&mut self, ctx: &egui::Context) {
        if let Some(snapshot) = self.refresher.take_latest() {
            self.snapshot = snapshot;
            self.sync_screens(ctx);
            // A console whose VM stopped, or whose connection ended, goes; the next look at a
            // running VM's console attaches again (and gets the backlog).
            let snapshot = &self.snapshot;
            self.consoles.retain(|name, console| {
                snapshot.find(name).is_some_and(|vm| vm.state.is_live())
                    && !matches!(console.link(), Link::Ended | Link::Failed(_))
            });
            if let Some(name) = &self.select_when_listed
                && self.snapshot.find(name).is_some()
            {
                self.selected = self.select_when_listed.take();
            }
        }
        for finished in self.jobs.take_finished() {
            self.job_finished(finished);
        }
        if let Some((name, pick)) = &self.cd_pick
            && let Some(picked) = pick.poll()
        {
            let name = name.clone();
            self.cd_pick = None;
            if let Some(image) = picked {
                self.prefs.last_folder = image.parent().map(std::path::Path::to_path_buf);
                self.insert_cd(&name, image);
            }
        }
    }

    /// Ejects the disc of a running VM's CD-ROM drive (over its control socket).
    fn eject_cd(&mut self, name: &str) {
        let library = self.env.library.clone();
        let name = name.to_string();
        self.jobs.spawn(
            format!("Ejecting the disc of {name}"),
            Some(name.clone()),
            move |_| {
                ControlClient::connect(&library, &name)?.eject_cdrom(false)?;
                Ok(Done::Controlled {
                    name,
                    what: "the disc was ejected",
                })
            },
        );
    }

    /// Puts `image` in a running VM's CD-ROM drive (over its control socket).
    fn insert_cd(&mut self, name: &str, image: std::path::PathBuf) {
        let library = self.env.library.clone();
        let name = name.to_string();
        self.jobs.spawn(
            format!("Inserting {} in {name}", drop::file_name(&image)),
            Some(name.clone()),
            move |_| {
                // The VM process has its own working folder: it gets an absolute path.
                let image = std::fs::canonicalize(&image).map_err(|e| {
                    vivarium_core::Error::io(
                        format!("could not open the disc image `{}`", image.display()),
                        e,
                    )
                })?;
                ControlClient::connect(&library, &name)?.insert_cdrom(&image)?;
                Ok(Done::Controlled {
                    name,
                    what: "the disc was inserted",
                })
            },
        );
    }

    fn job_finished(&mut self, finished: Finished) {
        self.refresher.refresh_now();
        if self.notes_job == Some(finished.id) {
            self.notes_job = None;
            self.notes.saving = false;
        }
        if let Some(dialog) = &mut self.dialog
            && dialog.job() == Some(finished.id)
            && dialog.job_finished(&finished)
        {
            self.dialog = None;
        }
        match finished.result {
            Ok(Done::Created { name, warnings }) => {
                self.toasts.info(format!("Created {name}."));
                self.warn_all(warnings);
                self.select_when_listed = Some(name);
            }
            Ok(Done::CreatedFromIso {
                name,
                recognised,
                warnings,
            }) => {
                self.toasts.info(recognised);
                self.warn_all(warnings);
                self.select_when_listed = Some(name);
            }
            Ok(Done::Cloned { name, warnings }) => {
                self.toasts.info(format!("Created {name}."));
                self.warn_all(warnings);
                self.select_when_listed = Some(name);
            }
            Ok(Done::Deleted { name }) => {
                self.toasts.info(format!("Deleted {name}."));
                if self.selected.as_deref() == Some(&name) {
                    self.selected = None;
                }
            }
            Ok(Done::Saved { name }) => {
                self.toasts.info(format!("Saved the settings of {name}."));
                self.select_when_listed = Some(name);
            }
            Ok(Done::Started { name, pid }) => {
                self.toasts
                    .info(format!("Started {name} (VM process {pid})."));
                if self.selected.as_deref() == Some(&name) {
                    // The screen when the VM has one (its feed starts with the next listing).
                    let has_display = self
                        .snapshot
                        .find(&name)
                        .and_then(|vm| vm.entry.config.as_ref().ok())
                        .is_some_and(|config| config.display != DisplayConfig::None);
                    self.tab = if has_display {
                        Tab::Screen
                    } else {
                        Tab::Console
                    };
                }
            }
            Ok(Done::Controlled { name, what }) => {
                self.toasts.info(format!("{name}: {what}."));
            }
            Ok(Done::NotesSaved { name }) => {
                if self.notes.vm == name {
                    // The editor may have changed meanwhile; what was sent is saved.
                    self.notes.saved = self.notes_sent.take().unwrap_or_default();
                }
            }
            Err(vivarium_core::Error::Cancelled) => {
                self.toasts.info(format!("{}: cancelled.", finished.label));
            }
            Err(error) => {
                self.toasts
                    .error(format!("{} failed: {error}", finished.label));
            }
        }
    }

    fn warn_all(&mut self, warnings: Vec<String>) {
        for warning in warnings {
            self.toasts.push(Level::Warning, warning);
        }
    }

    fn dialog_env(&mut self) -> DialogEnv<'_> {
        DialogEnv {
            library: &self.env.library,
            snapshot: &self.snapshot,
            jobs: &mut self.jobs,
            prefs: &mut self.prefs,
        }
    }

    fn open_new_vm(&mut self, from: Option<DroppedSource>) {
        let env = self.dialog_env();
        let dialog = match &from {
            Some(source) => NewVmDialog::from_dropped(&env, source),
            None => NewVmDialog::new(&env),
        };
        self.dialog = Some(Dialog::NewVm(dialog));
    }

    /// A dropped ISO is inspected and becomes a VM for what it holds (in the background);
    /// other dropped files open the New VM dialog filled in from the first one.
    fn handle_drops(&mut self, ctx: &egui::Context) {
        let dropped: Vec<std::path::PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .collect()
        });
        let Some(path) = dropped.first() else {
            return;
        };
        if self.dialog.as_ref().is_some_and(|d| d.job().is_some()) {
            self.toasts
                .error("Wait for the dialog's work to finish before dropping another file.");
            return;
        }
        match drop::classify(path) {
            Ok(DroppedSource::Iso(iso)) => {
                let library = self.env.library.clone();
                self.jobs.spawn(
                    format!("Creating a VM from {}", drop::file_name(&iso)),
                    None,
                    move |progress| super::iso_drop::create_from_iso(&library, &iso, progress),
                );
            }
            Ok(source) => self.open_new_vm(Some(source)),
            Err(why) => self.toasts.error(why),
        }
    }

    fn save_notes(&mut self) {
        if self.notes_job.is_some() || !self.notes.dirty() {
            return;
        }
        let library = self.env.library.clone();
        let name = self.notes.vm.clone();
        let text = self.notes.text.clone();
        self.notes_sent = Some(text.clone());
        self.notes.saving = true;
        self.notes_job = Some(self.jobs.spawn(
            format!("Saving the notes of {name}"),
            None,
            move |_| {
                library.update(&name, |config| {
                    config.notes = text;
                    Ok(())
                })?;
                Ok(Done::NotesSaved { name })
            },
        ));
    }

    fn start_vm(&mut self, name: &str, boot_once: Option<vivarium_core::backend::BootOnce>) {
        let library = self.env.library.clone();
        let exe = self.env.vm_exe.clone();
        let name = name.to_string();
        self.jobs
            .spawn(format!("Starting {name}"), Some(name.clone()), move |_| {
                let pid = match exe {
                    Some(exe) => vivarium_vm::launch::spawn_with(&exe, &library, &name, boot_once)?,
                    None => vivarium_vm::launch::spawn(&library, &name, boot_once)?,
                };
                Ok(Done::Started { name, pid })
            });
    }

    fn control_vm(&mut self, name: &str, action: &DetailsAction) {
        let (label, what): (&str, &'static str) = match action {
            DetailsAction::ShutDown => ("Shutting down", "the power button was pressed"),
            DetailsAction::PowerOff => ("Powering off", "powered off"),
            DetailsAction::Pause => ("Pausing", "paused"),
            DetailsAction::Resume => ("Resuming", "resumed"),
            _ => return,
        };
        let action = action.clone();
        let library = self.env.library.clone();
        let name = name.to_string();
        self.jobs
            .spawn(format!("{label} {name}"), Some(name.clone()), move |_| {
                let mut client = ControlClient::connect(&library, &name)?;
                match action {
                    DetailsAction::ShutDown => client.shut_down()?,
                    DetailsAction::PowerOff => client.power_off()?,
                    DetailsAction::Pause => client.pause()?,
                    _ => client.resume()?,
                }
                Ok(Done::Controlled { name, what })
            });
    }

    /// Presses Ctrl+Alt+Del in VM `name` (the keys the grab cannot pass on: Ctrl+Alt releases
    /// it), off the UI thread.
    fn send_ctrl_alt_del(&mut self, name: String) {
        let library = self.env.library.clone();
        self.jobs.spawn(
            format!("Sending Ctrl+Alt+Del to {name}"),
            Some(name.clone()),
            move |_| {
                let mut client = ControlClient::connect(&library, &name)?;
                client.send_input(&super::grab::CTRL_ALT_DEL)?;
                Ok(Done::Controlled {
                    name,
                    what: "Ctrl+Alt+Del was pressed",
                })
            },
        );
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui
                    .add(egui::Button::new("New VM…").shortcut_text("Ctrl+N"))
                    .clicked()
                {
                    self.open_new_vm(None);
                }
                ui.separator();
                if ui.button("Quit").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            let running = self.selected.clone().filter(|name| {
                self.snapshot
                    .find(name)
                    .is_some_and(|vm| vm.state.is_live())
            });
            // A stopped VM that is not broken can be started from another device this once.
            let startable = self.selected.clone().filter(|name| {
                self.snapshot.find(name).is_some_and(|vm| {
                    !vm.state.is_live()
                        && vm.entry.config.is_ok()
                        && vm.cannot_start.is_none()
                        && self.jobs.busy_with(name).is_none()
                })
            });
            ui.menu_button("Machine", |ui| {
                use vivarium_core::backend::BootOnce;
                for (once, label, hint) in [
                    (
                        BootOnce::Cdrom,
                        "Start from CD-ROM once",
                        "Boot the disc in the drive through the BIOS this time only",
                    ),
                    (
                        BootOnce::Menu,
                        "Start to the boot menu",
                        "Open the BIOS's boot menu to choose the device (Esc at the start)",
                    ),
                ] {
                    let item = ui
                        .add_enabled(startable.is_some(), egui::Button::new(label))
                        .on_hover_text(hint)
                        .on_disabled_hover_text("Select a stopped VM");
                    if item.clicked()
                        && let Some(name) = startable.clone()
                    {
                        self.start_vm(&name, Some(once));
                        ui.close();
                    }
                }
                ui.separator();
                let send = ui
                    .add_enabled(running.is_some(), egui::Button::new("Press Ctrl+Alt+Del"))
                    .on_disabled_hover_text("Select a running VM");
                if send.clicked()
                    && let Some(name) = running
                {
                    self.send_ctrl_alt_del(name);
                    ui.close();
                }
            });
            ui.menu_button("View", |ui| {
                ui.label(RichText::new("Theme").weak());
                for (choice, label) in [
                    (prefs::ThemeChoice::System, "Follow the desktop"),
                    (prefs::ThemeChoice::Light, "Light"),
                    (prefs::ThemeChoice::Dark, "Dark"),
                ] {
                    if ui.radio(self.prefs.theme == choice, label).clicked() {
                        self.prefs.theme = choice;
                        style::apply(ui.ctx(), choice);
                    }
                }
            });
        });
    }

    fn welcome(&mut self, ui: &mut egui::Ui) {
        ui.vertical_centered(|ui| {
            ui.add_space((ui.available_height() / 2.0 - 170.0).max(20.0));
            if let Some(icon) = self.icons.app() {
                ui.add(egui::Image::new((icon.id(), egui::vec2(96.0, 96.0))));
            }
            ui.add_space(12.0);
            ui.label(RichText::new("No virtual machines yet").size(22.0).strong());
            ui.add_space(4.0);
            ui.label(
                RichText::new("Drop an ISO or a disk image anywhere on this window, or").weak(),
            );
            ui.add_space(14.0);
            let button = egui::Button::new(RichText::new("New VM…").size(18.0).strong())
                .fill(style::ACCENT)
                .min_size(egui::vec2(180.0, 44.0));
            if ui.add(button).clicked() {
                self.open_new_vm(None);
            }
        });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!("Library: {}", self.env.library.root().display()))
                    .small()
                    .weak(),
            );
            if let Some(error) = &self.snapshot.error {
                ui.label(
                    RichText::new(format!("cannot list the library: {error}"))
                        .small()
                        .color(style::state_color(super::model::VmState::Broken)),
                );
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                for job in self.jobs.running() {
                    ui.label(RichText::new(&job.label).small());
                    ui.spinner();
                }
            });
        });
    }

    fn central(&mut self, ui: &mut egui::Ui) {
        self.host.banner(ui);
        if !self.snapshot.loaded {
            ui.centered_and_justified(|ui| ui.spinner());
            return;
        }
        if self.snapshot.vms.is_empty() {
            self.welcome(ui);
            return;
        }
        let Some(vm) = self
            .selected
            .as_deref()
            .and_then(|name| self.snapshot.find(name))
            .cloned()
        else {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new("Select a VM in the library")
                        .weak()
                        .size(16.0),
                );
            });
            return;
        };
        if let Ok(config) = &vm.entry.config {
            self.notes.sync(vm.name(), &config.notes);
        }
        ui.add_space(8.0);
        let busy = self.jobs.busy_with(vm.name()).map(|job| job.label.clone());
        // The VM's own reason first: a VM of another machine cannot start on any host of
        // this one's architecture.
        let cannot_start = vm
            .cannot_start
            .clone()
            .or_else(|| self.host.status().cannot_start());
        let cx = DetailsContext {
            icons: &self.icons,
            busy: busy.as_deref(),
            cannot_start: cannot_start.as_deref(),
        };
        if self.tab == Tab::Console && vm.state.is_live() && !self.consoles.contains_key(vm.name())
        {
            let console = Console::attach(&self.env.library, vm.name(), ui.ctx());
            self.consoles.insert(vm.name().to_string(), console);
        }
        let console = self.consoles.get_mut(vm.name());
        let (screen_view, screen_of, screens) =
            (&mut self.screen, &mut self.screen_of, &self.screens);
        let mut screen_action = None;
        let mut draw_screen = |ui: &mut egui::Ui| {
            screen_action = Self::screen_ui(screen_view, screen_of, screens, vm.name(), ui, false);
        };
        let screen: Option<&mut dyn FnMut(&mut egui::Ui)> = if screens.contains_key(vm.name()) {
            Some(&mut draw_screen)
        } else {
            None
        };
        let action = details::ui(
            ui,
            &vm,
            &mut self.notes,
            &cx,
            &mut self.tab,
            console,
            screen,
        );
        if let Some(ScreenAction::ToggleFullscreen) = screen_action {
            self.set_fullscreen(ui.ctx(), true);
        }
        match action {
            Some(DetailsAction::Start) => self.start_vm(vm.name(), None),
            Some(
                action @ (DetailsAction::ShutDown
                | DetailsAction::PowerOff
                | DetailsAction::Pause
                | DetailsAction::Resume),
            ) => self.control_vm(vm.name(), &action),
            Some(DetailsAction::Clone) => {
                let dialog = CloneDialog::new(&self.dialog_env(), vm.name());
                self.dialog = Some(Dialog::Clone(dialog));
            }
            Some(DetailsAction::Delete) => {
                self.dialog = Some(Dialog::Delete(DeleteDialog::new(vm.name())));
            }
            Some(DetailsAction::Settings) => {
                if let Ok(config) = &vm.entry.config {
                    self.dialog = Some(Dialog::Settings(Box::new(SettingsDialog::new(
                        config,
                        &vm.entry.path,
                    ))));
                }
            }
            Some(DetailsAction::SaveNotes) => self.save_notes(),
            Some(DetailsAction::EjectCd) => self.eject_cd(vm.name()),
            Some(DetailsAction::InsertCd) if self.cd_pick.is_none() => {
                let pick = FilePick::open(
                    ui.ctx(),
                    (),
                    &format!("Choose a disc for {}", vm.name()),
                    Some(("ISO images", &["iso"])),
                    self.prefs.last_folder.clone(),
                );
                self.cd_pick = Some((vm.name().to_string(), pick));
            }
            Some(DetailsAction::InsertCd) => {}
            None => {}
        }
    }

    /// The grab ends when its screen is no longer on show (another VM or tab was chosen).
    fn release_grab_if_hidden(&mut self, ctx: &egui::Context) {
        if !self.screen.grab.is_active() {
            return;
        }
        let shown = self.tab == Tab::Screen
            && self.selected.as_ref().is_some_and(|name| {
                self.screen_of.as_ref().is_some_and(|(of, _)| of == name)
                    && self
                        .snapshot
                        .find(name)
                        .is_some_and(|vm| vm.state.is_live())
            });
        if !shown {
            self.forget_screen(ctx);
        }
    }

    /// The whole window is the selected VM's screen.
    fn fullscreen_ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        let Some(name) = self.selected.clone().filter(|name| self.has_screen(name)) else {
            self.set_fullscreen(&ctx, false);
            return;
        };
        let mut action = None;
        // No fill: the screen paints every pixel of the window itself.
        egui::CentralPanel::default()
            .frame(egui::Frame::new())
            .show(ui, |ui| {
                action = Self::screen_ui(
                    &mut self.screen,
                    &mut self.screen_of,
                    &self.screens,
                    &name,
                    ui,
                    true,
                );
            });
        if matches!(
            action,
            Some(ScreenAction::LeaveFullscreen | ScreenAction::ToggleFullscreen)
        ) {
            self.set_fullscreen(&ctx, false);
        }
        self.release_grab_if_hidden(&ctx);
    }

    fn save_prefs_if_changed(&mut self) {
        if self.prefs == self.saved_prefs {
            return;
        }
        self.saved_prefs = self.prefs.clone();
        let Some(path) = self.env.prefs_path.clone() else {
            return;
        };
        let prefs = self.prefs.clone();
        // A small file, but written with fsync: off the UI thread.
        std::thread::spawn(move || {
            if let Err(e) = prefs::save(&path, &prefs) {
                eprintln!("vivarium: could not save the app's settings: {e}");
            }
        });
    }
}

impl eframe::App for VivariumApp {
    fn raw_input_hook(&mut self, _ctx: &egui::Context, raw_input: &mut egui::RawInput) {
        if self.screen.grab.is_active() {
            // Before egui sees them: no widget and no shortcut reacts to the guest's input.
            let stolen = Grab::steal(&mut raw_input.events);
            self.stolen.extend(stolen);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll(&ctx);
        self.forward_grabbed_input(&ctx);
        self.update_thumbnails(&ctx);
        if self.fullscreen {
            self.fullscreen_ui(ui);
            return;
        }
        self.handle_drops(&ctx);
        if ctx.input_mut(|i| {
            i.consume_shortcut(&egui::KeyboardShortcut::new(
                egui::Modifiers::COMMAND,
                egui::Key::N,
            ))
        }) && self.dialog.is_none()
        {
            self.open_new_vm(None);
        }

        egui::Panel::top("menu-bar").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status-bar").show(ui, |ui| self.status_bar(ui));
        let sidebar_frame =
            egui::Frame::side_top_panel(ui.style()).inner_margin(egui::Margin::symmetric(10, 0));
        let action = egui::Panel::left("library")
            .resizable(true)
            .default_size(270.0)
            .min_size(200.0)
            .frame(sidebar_frame)
            .show(ui, |ui| {
                let thumbnails: HashMap<&str, &egui::TextureHandle> = self
                    .thumbnails
                    .iter()
                    .map(|(name, (_, texture))| (name.as_str(), texture))
                    .collect();
                sidebar::ui(
                    ui,
                    &self.snapshot,
                    &mut self.filter,
                    self.selected.as_deref(),
                    &self.icons,
                    &thumbnails,
                )
            })
            .inner;
        match action {
            Some(SidebarAction::Select(name)) => {
                if self.notes.dirty() {
                    self.save_notes();
                }
                if self.has_screen(&name) {
                    self.tab = Tab::Screen;
                }
                self.selected = Some(name);
            }
            Some(SidebarAction::NewVm) => self.open_new_vm(None),
            None => {}
        }
        let central_frame =
            egui::Frame::central_panel(ui.style()).inner_margin(egui::Margin::symmetric(20, 12));
        egui::CentralPanel::default()
            .frame(central_frame)
            .show(ui, |ui| self.central(ui));

        if let Some(mut dialog) = self.dialog.take() {
            let mut env = self.dialog_env();
            match dialog.ui(&ctx, &mut env) {
                DialogOutcome::Open => self.dialog = Some(dialog),
                DialogOutcome::Close => {}
            }
        }
        self.toasts.ui(&ctx);
        drop::hover_overlay(&ctx);
        // Relative times ("5 min ago") stay true without repainting more than this.
        ctx.request_repaint_after(std::time::Duration::from_secs(30));
        self.release_grab_if_hidden(&ctx);
        self.save_prefs_if_changed();
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if let Some(selected) = &self.selected {
            eframe::set_value(storage, SELECTED_KEY, selected);
        }
    }
}
