//! Memtest86+'s ready-made ISOs (`memtest86+x64.iso`, `memtest86+ia32.iso`) from Debian's
//! `memtest86+` package, unpacked with `dpkg -x` (never installed) into their own cache entry,
//! `memtest-N/`, in the fixture cache, keyed by the package version. Both boot on a BIOS from
//! their El Torito floppy-emulation image (memtest's own boot sector) and draw their test screen
//! straight into the VGA text buffer.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{
    Package, apt_update, candidate_version, copy, download, lock_dir, run, write,
};

/// Bumped when the layout changes without a change of the package.
const FORMAT_VERSION: u32 = 1;
/// The cache entry's folder.
const ENTRY: &str = "memtest-1";
/// The package the ISOs come from.
const PACKAGE: &str = "memtest86+";
/// Where the package keeps them.
const ISO_DIR: &str = "usr/lib/memtest86+";

/// Memtest86+'s builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// The 64-bit build.
    X64,
    /// The 32-bit build.
    Ia32,
}

impl Flavour {
    /// Both builds.
    pub const ALL: [Flavour; 2] = [Flavour::X64, Flavour::Ia32];

    /// The ISO's file name (as the package names it).
    pub fn iso_name(self) -> &'static str {
        match self {
            Flavour::X64 => "memtest86+x64.iso",
            Flavour::Ia32 => "memtest86+ia32.iso",
        }
    }

    /// A short name (for VM names and markers).
    pub fn short(self) -> &'static str {
        match self {
            Flavour::X64 => "x64",
            Flavour::Ia32 => "ia32",
        }
    }
}

/// The ISOs in a fixture cache.
#[derive(Debug, Clone)]
pub struct MemtestIsos {
    dir: PathBuf,
}

impl MemtestIsos {
    /// The ISOs in the fixture cache `fixtures_dir`, if [`build`] completed there.
    pub fn open(fixtures_dir: &Path) -> Result<MemtestIsos, String> {
        let isos = MemtestIsos {
            dir: fixtures_dir.join(ENTRY),
        };
        let complete = isos.dir.join("stamp").is_file()
            && Flavour::ALL.iter().all(|f| isos.path(*f).is_file());
        if complete {
            Ok(isos)
        } else {
            Err(format!(
                "the Memtest86+ ISOs are missing in {}: build them with `cargo xtask fixtures \
                 --memtest`",
                isos.dir.display()
            ))
        }
    }

    /// The ISO of `flavour`.
    pub fn path(&self, flavour: Flavour) -> PathBuf {
        self.dir.join(flavour.iso_name())
    }

    /// The package version the ISOs come from.
    pub fn version(&self) -> String {
        fs::read_to_string(self.dir.join("stamp"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("package {PACKAGE} ")))
            .unwrap_or("?")
            .to_string()
    }
}

/// The ISOs for test `test`, or `None` after saying loudly why it is skipped; fails instead
/// under `VIVARIUM_REQUIRE_RIG=1` ([`crate::gate`]).
#[track_caller]
pub fn memtest_or_skip(test: &str) -> Option<MemtestIsos> {
    match crate::fixtures::default_dir().and_then(|d| MemtestIsos::open(&d)) {
        Ok(isos) => Some(isos),
        Err(reason) => {
            crate::gate::skip(test, &reason);
            None
        }
    }
}

/// Unpacks the ISOs into the cache entry inside `fixtures_dir`, unless they are there for the
/// same package version.
pub fn build(fixtures_dir: &Path) -> Result<MemtestIsos, String> {
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
        "memtest format {FORMAT_VERSION}\npackage {} {}\n",
        package.name, package.version
    );
    if let Ok(isos) = MemtestIsos::open(fixtures_dir)
        && fs::read_to_string(dir.join("stamp")).is_ok_and(|stamp| stamp == key)
    {
        drop(lock);
        return Ok(isos);
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
        for flavour in Flavour::ALL {
            copy(
                &root.join(ISO_DIR).join(flavour.iso_name()),
                &dir.join(flavour.iso_name()),
            )?;
        }
        write(&dir.join("stamp"), key.as_bytes())
    })();
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result?;
    eprintln!("fixtures: Memtest86+ ISOs ready in {}", dir.display());
    MemtestIsos::open(fixtures_dir)
}
