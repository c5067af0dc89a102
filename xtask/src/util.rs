//! Small helpers shared by the xtask commands.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// The cargo target folder (`$CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Vivarium's folder in the user's cache (`$XDG_CACHE_HOME/vivarium`, else
/// `~/.cache/vivarium`): tools and data the commands keep between runs, outside the repository.
pub fn cache_dir() -> Result<PathBuf, String> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let cache = match non_empty("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(
            non_empty("HOME").ok_or("neither XDG_CACHE_HOME nor HOME is set: no cache folder")?,
        )
        .join(".cache"),
    };
    Ok(cache.join("vivarium"))
}

/// Builds the release `vivarium` binary and returns its path.
pub fn build_release_vivarium() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "vivarium",
        "-p",
        "vivarium-vm",
    ]))?;
    Ok(target_dir().join("release").join("vivarium"))
}

/// Builds the release binary `bin` of workspace package `package` and returns its path.
pub fn build_release_bin(package: &str, bin: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo).current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        bin,
    ]))?;
    Ok(target_dir().join("release").join(bin))
}

/// Today's date as `YYYY-MM-DD` (by `date`), for "Measured ..." lines; empty if unknown.
pub fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs a command to completion, echoing it first; an error says which command failed.
pub fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {}", describe(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {}: {e}", describe(cmd)))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", describe(cmd)))
    }
}

/// Whether a program can be found on `PATH`.
pub fn have_program(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// A command line as a person would type it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Installs Debian packages that are missing (needs root or sudo). Does nothing when all are
/// present. Fails unless every one of them is installed at the end.
pub fn ensure_apt_packages(packages: &[&str]) -> Result<(), String> {
    let sudo = if is_root() { None } else { Some("sudo") };
    let apt = |args: &[&str]| {
        let mut cmd = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    install_missing(
        packages,
        dpkg_installed,
        || run(&mut apt(&["update", "-q"])),
        |missing| {
            let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
            install.args(missing);
            run(&mut install)
        },
    )
}

/// The packages of `packages` that `installed` says are not installed, in their order.
fn missing_packages<'a>(packages: &[&'a str], installed: &impl Fn(&str) -> bool) -> Vec<&'a str> {
    packages.iter().copied().filter(|p| !installed(p)).collect()
}

/// What [`ensure_apt_packages`] does, with the package system behind `installed`, `update` and
/// `install`. Installing a package can remove another that was there: where `qemu-utils`
/// comes from a newer backport, `qemu-system-x86` (without recommends) pulls in the
/// distribution's `qemu-system-common`, which the backported `qemu-utils` breaks, so apt
/// removes `qemu-utils` (and `qemu-img` with it). So the list is checked again after the
/// install, and what went missing is installed in a second step (then the distribution's
/// matching version comes); whatever is still missing after that is an error that names it.
fn install_missing(
    packages: &[&str],
    installed: impl Fn(&str) -> bool,
    update: impl FnOnce() -> Result<(), String>,
    mut install: impl FnMut(&[&str]) -> Result<(), String>,
) -> Result<(), String> {
    let missing = missing_packages(packages, &installed);
    if missing.is_empty() {
        return Ok(());
    }
    update()?;
    install(&missing)?;
    let gone = missing_packages(packages, &installed);
    if gone.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: after installing {}, these are not installed: {} (another package's install \
         removed them, or apt skipped them); installing them again",
        missing.join(" "),
        gone.join(" ")
    );
    install(&gone)?;
    let still = missing_packages(packages, &installed);
    if still.is_empty() {
        return Ok(());
    }
    Err(format!(
        "these Debian packages are still not installed after two attempts: {} (installing one \
         removes another: see which with `apt-get install --no-install-recommends --dry-run {}`, \
         and install versions that go together, e.g. qemu-utils from the same release as \
         qemu-system-x86)",
        still.join(" "),
        packages.join(" ")
    ))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    // `id -u` avoids an unsafe libc call for a one-off question.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    /// A package system: what is installed, and what installing a package removes.
    struct FakeApt {
        installed: RefCell<BTreeSet<String>>,
        /// `(installed, removed)`: installing the first removes the second.
        breaks: Vec<(&'static str, &'static str)>,
        /// Packages apt will not install.
        broken: Vec<&'static str>,
        installs: RefCell<Vec<Vec<String>>>,
        updates: RefCell<u32>,
    }

    impl FakeApt {
        fn new(installed: &[&str]) -> FakeApt {
            FakeApt {
                installed: RefCell::new(installed.iter().map(|p| p.to_string()).collect()),
                breaks: Vec::new(),
                broken: Vec::new(),
                installs: RefCell::new(Vec::new()),
                updates: RefCell::new(0),
            }
        }

        fn ensure(&self, packages: &[&str]) -> Result<(), String> {
            install_missing(
                packages,
                |p| self.installed.borrow().contains(p),
                || {
                    *self.updates.borrow_mut() += 1;
                    Ok(())
                },
                |missing| {
                    self.installs
                        .borrow_mut()
                        .push(missing.iter().map(|p| p.to_string()).collect());
                    for package in missing {
                        if self.broken.contains(package) {
                            continue;
                        }
                        for (installed, removed) in &self.breaks {
                            if installed == package {
                                self.installed.borrow_mut().remove(*removed);
                            }
                        }
                        self.installed.borrow_mut().insert(package.to_string());
                    }
                    Ok(())
                },
            )
        }
    }

    #[test]
    fn the_missing_list_keeps_the_order_and_leaves_out_what_is_installed() {
        let installed = |p: &str| p == "b" || p == "d";
        assert_eq!(
            missing_packages(&["a", "b", "c", "d"], &installed),
            ["a", "c"]
        );
        assert!(missing_packages(&["b", "d"], &installed).is_empty());
    }

    #[test]
    fn nothing_missing_runs_no_apt_at_all() {
        let apt = FakeApt::new(&["qemu-utils", "passt"]);
        apt.ensure(&["qemu-utils", "passt"]).unwrap();
        assert_eq!(*apt.updates.borrow(), 0);
        assert!(apt.installs.borrow().is_empty());
    }

    #[test]
    fn missing_packages_are_installed_in_one_step() {
        let apt = FakeApt::new(&["passt"]);
        apt.ensure(&["qemu-utils", "passt", "xorriso"]).unwrap();
        assert_eq!(*apt.updates.borrow(), 1);
        assert_eq!(*apt.installs.borrow(), [vec!["qemu-utils", "xorriso"]]);
    }

    #[test]
    fn a_package_removed_by_another_install_is_installed_again() {
        // A backported qemu-utils is installed; qemu-system-x86 brings the distribution's
        // qemu-system-common, which the backport breaks, and apt removes qemu-utils.
        let mut apt = FakeApt::new(&["qemu-utils"]);
        apt.breaks.push(("qemu-system-x86", "qemu-utils"));
        apt.ensure(&["qemu-utils", "qemu-system-x86", "passt"])
            .unwrap();
        assert_eq!(
            *apt.installs.borrow(),
            [vec!["qemu-system-x86", "passt"], vec!["qemu-utils"]]
        );
        assert!(apt.installed.borrow().contains("qemu-utils"));
        assert!(apt.installed.borrow().contains("qemu-system-x86"));
    }

    #[test]
    fn a_package_still_missing_after_the_second_step_is_an_error_that_names_it() {
        let mut apt = FakeApt::new(&[]);
        apt.broken.push("qemu-utils");
        let err = apt.ensure(&["qemu-utils", "qemu-system-x86"]).unwrap_err();
        assert!(
            err.contains("still not installed after two attempts: qemu-utils ("),
            "{err}"
        );
        assert_eq!(apt.installs.borrow().len(), 2);
    }
}
