//! The desktop app: the VM library, its details, dialogs to create, clone, change and delete
//! VMs, and (for running VMs) their control and console.
//!
//! Nothing here blocks the UI thread: the library is listed by a [`model::Refresher`] thread,
//! and every operation that touches disks runs as a background [`jobs::Job`] that reports
//! progress and ends in a notification.

mod app;
mod console;
mod details;
mod dialogs;
mod display_feed;
mod drop;
mod grab;
mod host;
mod icons;
mod input_link;
mod iso_drop;
mod jobs;
mod keymap;
mod model;
mod prefs;
mod screen;
mod sidebar;
mod style;
mod toasts;

use std::path::PathBuf;
use std::process::ExitCode;

pub use app::VivariumApp;
use vivarium_core::Library;

/// The application id: the window class on Linux, and the name of eframe's storage folder.
pub const APP_ID: &str = "vivarium";

/// What the app works on: the library, and where it keeps its own settings.
#[derive(Debug, Clone)]
pub struct AppEnv {
    /// The VM library.
    pub library: Library,
    /// The app's settings file (`None`: settings are not saved).
    pub prefs_path: Option<PathBuf>,
    /// The `vivarium-vm` executable that runs VM processes (`None`: the one beside this
    /// executable).
    pub vm_exe: Option<PathBuf>,
}

impl AppEnv {
    /// The library `VIVARIUM_HOME` (or the user's data folder) names, and the settings file in
    /// the user's config folder.
    pub fn from_environment() -> Result<AppEnv, vivarium_core::Error> {
        Ok(AppEnv {
            library: Library::open_default()?,
            prefs_path: prefs::default_path(),
            vm_exe: None,
        })
    }
}

/// The options of the native window: size, icon, app id, and persistence of its geometry.
pub fn native_options() -> eframe::NativeOptions {
    let mut viewport = eframe::egui::ViewportBuilder::default()
        .with_title("Vivarium")
        .with_app_id(APP_ID)
        .with_inner_size([1100.0, 700.0])
        .with_min_inner_size([720.0, 440.0])
        .with_drag_and_drop(true);
    if let Ok(icon) = eframe::icon_data::from_png_bytes(icons::APP_ICON_PNG) {
        viewport = viewport.with_icon(icon);
    }
    eframe::NativeOptions {
        viewport,
        persist_window: true,
        ..Default::default()
    }
}

/// Opens the app window on the default library; returns when the window closes. Running VMs
/// keep running after it closes.
pub fn run_app() -> ExitCode {
    let env = match AppEnv::from_environment() {
        Ok(env) => env,
        Err(error) => {
            eprintln!("vivarium: error: {error}");
            return ExitCode::from(vivarium_vm::exit_code(error.kind()));
        }
    };
    let result = eframe::run_native(
        "Vivarium",
        native_options(),
        Box::new(move |cc| Ok(Box::new(VivariumApp::new(cc, env)))),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "vivarium: error: could not open the window: {error}. Without a display, use \
                 the command line (`vivarium --help`)."
            );
            ExitCode::from(1)
        }
    }
}
