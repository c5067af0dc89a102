//! GRUB's rescue CD (`grub-rescue-cdrom.iso`) from Debian's `grub-rescue-pc` package, unpacked
//! with `dpkg -x` (never installed) into its own cache entry, `grub-rescue-N/`, in the fixture
//! cache, keyed by the package version. It is a `grub-mkrescue` image for BIOS PCs: an El
//! Torito no-emulation entry (`boot/grub/i386-pc/eltorito.img`, GRUB's core image), GRUB's
//! i386-pc modules, and a sample `grub.cfg` whose menu names kernels that are not on the disc,
//! so the menu shows (with a countdown) and `c` gives GRUB's command line, `grub>`. GRUB draws
//! it on the BIOS console, in VGA text mode.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{
    Package, apt_update, candidate_version, copy, download, lock_dir, run, write,
};

/// Bumped when the layout changes without a change of the package.
const FORMAT_VERSION: u32 = 1;
/// The cache entry's folder.
const ENTRY: &str = "grub-rescue-1";
/// The package the ISO comes from.
const PACKAGE: &str = "grub-rescue-pc";
/// Where the package keeps it.
const PACKAGE_PATH: &str = "usr/lib/grub-rescue/grub-rescue-cdrom.iso";
/// The ISO's file name (as the package names it).
pub const ISO_NAME: &str = "grub-rescue-cdrom.iso";

/// The rescue ISO in a fixture cache.
#[derive(Debug, Clone)]
pub struct GrubRescueIso {
    dir: PathBuf,
}

impl GrubRescueIso {
    /// The ISO in the fixture cache `fixtures_dir`, if [`build`] completed there.
    pub fn open(fixtures_dir: &Path) -> Result<GrubRescueIso, String> {
        let iso = GrubRescueIso {
            dir: fixtures_dir.join(ENTRY),
        };
        if iso.dir.join("stamp").is_file() && iso.path().is_file() {
            Ok(iso)
        } else {
            Err(format!(
                "GRUB's rescue ISO is missing in {}: build it with `cargo xtask fixtures \
                 --grub-rescue`",
                iso.dir.display()
            ))
        }
    }

    /// The ISO.
    pub fn path(&self) -> PathBuf {
        self.dir.join(ISO_NAME)
    }

    /// The package version the ISO comes from (GRUB's version, e.g. `2.06-13+deb12u2`).
    pub fn version(&self) -> String {
        fs::read_to_string(self.dir.join("stamp"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("package {PACKAGE} ")))
            .unwrap_or("?")
            .to_string()
    }
}

/// The ISO for test `test`, or `None` after saying loudly why it is skipped; fails instead
/// under `VIVARIUM_REQUIRE_RIG=1` ([`crate::gate`]).
#[track_caller]
pub fn grub_rescue_or_skip(test: &str) -> Option<GrubRescueIso> {
    match crate::fixtures::default_dir().and_then(|d| GrubRescueIso::open(&d)) {
        Ok(iso) => Some(iso),
        Err(reason) => {
            crate::gate::skip(test, &reason);
            None
        }
    }
}

/// Unpacks the ISO into the cache entry inside `fixtures_dir`, unless it is there for the same
/// package version.
pub fn build(fixtures_dir: &Path) -> Result<GrubRescueIso, String> {
    let dir = fixtures_dir.join(ENTRY);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = lock_dir(&dir)?;
    let package = candidate_version(PACKAGE)
        .or_else(|first| {
            eprintln!("fixtures: {first}; updating the package lists once");
            apt_update()?;
            candidate_version(PACKAGE)
        })
        .map(|version| Package {
            name: PACKAGE.to_string(),
            version,
        })?;
    let key = format!(
        "grub-rescue format {FORMAT_VERSION}\npackage {} {}\n",
        package.name, package.version
    );
    if let Ok(iso) = GrubRescueIso::open(fixtures_dir)
        && fs::read_to_string(dir.join("stamp")).is_ok_and(|stamp| stamp == key)
    {
        drop(lock);
        return Ok(iso);
    }
    let work = dir.join(format!(".work-{}", std::process::id()));
    let result = (|| -> Result<(), String> {
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        let debs = download(&work, std::slice::from_ref(&package))?;
        let root = work.join("root");
        for deb in &debs {
            run(Command::new("dpkg").arg("-x").arg(deb).arg(&root))?;
        }
        // The stamp goes last, so an interrupted build is never taken for a complete one.
        let _ = fs::remove_file(dir.join("stamp"));
        copy(&root.join(PACKAGE_PATH), &dir.join(ISO_NAME))?;
        write(&dir.join("stamp"), key.as_bytes())
    })();
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result?;
    eprintln!("fixtures: GRUB's rescue ISO ready in {}", dir.display());
    GrubRescueIso::open(fixtures_dir)
}
