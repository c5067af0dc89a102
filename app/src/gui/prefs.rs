//! The app's own settings (theme, the folder of the last file dialog, new-VM defaults), kept in
//! `app.toml` in the user's config folder and written atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Light, dark, or whatever the desktop uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThemeChoice {
    /// Follow the desktop.
    #[default]
    System,
    /// Always light.
    Light,
    /// Always dark.
    Dark,
}

/// The settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prefs {
    /// Colour theme.
    pub theme: ThemeChoice,
    /// Where the last file dialog was, to open the next one there.
    pub last_folder: Option<PathBuf>,
    /// CPUs a new VM gets.
    pub new_vm_cpus: u32,
    /// Memory a new VM gets, in MiB.
    pub new_vm_memory_mib: u64,
    /// Disk size a new VM gets, in GiB.
    pub new_vm_disk_gib: u64,
}

impl Default for Prefs {
    fn default() -> Self {
        Prefs {
            theme: ThemeChoice::System,
            last_folder: None,
            new_vm_cpus: 2,
            new_vm_memory_mib: 2048,
            new_vm_disk_gib: 20,
        }
    }
}

/// `app.toml` in the user's config folder (e.g. `~/.config/vivarium/app.toml`).
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "Vivarium", "vivarium")
        .map(|dirs| dirs.config_dir().join("app.toml"))
}

/// Reads the settings; a missing file gives the defaults, a damaged one the defaults and a
/// message saying what was wrong (the file is left as it is until the next save).
pub fn load(path: Option<&Path>) -> (Prefs, Option<String>) {
    let Some(path) = path else {
        return (Prefs::default(), None);
    };
    match std::fs::read_to_string(path) {
        Ok(text) => match toml::from_str(&text) {
            Ok(prefs) => (prefs, None),
            Err(e) => (
                Prefs::default(),
                Some(format!(
                    "The app's settings in `{}` could not be read ({e}); using the defaults.",
                    path.display()
                )),
            ),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Prefs::default(), None),
        Err(e) => (
            Prefs::default(),
            Some(format!("Could not read `{}`: {e}", path.display())),
        ),
    }
}

/// Writes the settings atomically, creating the folder if needed.
pub fn save(path: &Path, prefs: &Prefs) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("could not create `{}`: {e}", dir.display()))?;
    }
    let text = toml::to_string(prefs).map_err(|e| e.to_string())?;
    vivarium_core::fsutil::atomic_write(path, text.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_settings_load_back_and_damage_falls_back_to_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/app.toml");
        assert_eq!(load(Some(&path)), (Prefs::default(), None));
        let prefs = Prefs {
            theme: ThemeChoice::Dark,
            last_folder: Some("/isos".into()),
            new_vm_cpus: 4,
            ..Prefs::default()
        };
        save(&path, &prefs).unwrap();
        assert_eq!(load(Some(&path)), (prefs, None));
        std::fs::write(&path, "theme = 3").unwrap();
        let (loaded, warning) = load(Some(&path));
        assert_eq!(loaded, Prefs::default());
        assert!(warning.unwrap().contains("could not be read"));
    }
}
