//! The VM library: a folder of VM bundles, and every operation on them.
//!
//! Layout under the library root:
//!
//! ```text
//! vms/<name>.vivm/        one bundle per VM: vm.toml, disks/, state/, logs/, .lock
//! bases/<id>.vivbase/     shared, read-only base images of linked clones (disks/<file>)
//! .staging/<id>/          bundles being built; they appear in vms/ by one rename
//! .trash/<id>/            bundles being deleted; they left vms/ by one rename
//! .journal/<id>.toml      intent records of multi-step operations (linked clone)
//! .library.lock           serialises operations that change the library
//! ```
//!
//! Every change is atomic: a crash or `kill -9` at any moment leaves the library as it was
//! before or after the operation, and [`Library::open`] finishes or undoes what a crashed
//! operation left behind.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::arch::Arch;
use crate::config::{
    BootSource, CONFIG_FORMAT, CdromConfig, DiskConfig, DiskFormat, DisplayConfig, Firmware,
    NetworkConfig, OsInfo, VmConfig, validate_cpus, validate_memory_mib, validate_name,
};
use crate::disk::{self, CopyMethod, Progress};
use crate::error::{Error, Result};
use crate::fsutil::{allocated_bytes_in, atomic_write, format_size, free_space, sync_dir};

/// Extension of a VM bundle folder.
pub const BUNDLE_EXTENSION: &str = "vivm";
/// Extension of a base image folder.
const BASE_EXTENSION: &str = "vivbase";
/// Name of the configuration file in a bundle.
pub const CONFIG_FILE: &str = "vm.toml";
/// Name of the lock file a running VM holds in its bundle.
pub const LOCK_FILE: &str = ".lock";

/// The library of VMs under one root folder.
#[derive(Debug, Clone)]
pub struct Library {
    root: PathBuf,
}

/// A VM as the library sees it: its folder, and its configuration or why it cannot be read.
#[derive(Debug, Clone)]
pub struct VmEntry {
    /// The VM's name (its folder's name without the extension).
    pub name: String,
    /// The bundle folder.
    pub path: PathBuf,
    /// The configuration, or the reason it cannot be loaded.
    pub config: std::result::Result<VmConfig, String>,
    /// Whether a VM process holds the bundle (it is running).
    pub running: bool,
    /// Bytes the bundle's own disk files occupy (shared bases not included).
    pub disk_usage: u64,
}

impl VmEntry {
    /// The configuration, or an error saying the VM is broken and why.
    pub fn config(&self) -> Result<&VmConfig> {
        self.config.as_ref().map_err(|reason| Error::Broken {
            name: self.name.clone(),
            reason: reason.clone(),
        })
    }
}

/// What to put in a new VM.
#[derive(Debug, Clone)]
pub struct NewVm {
    /// Name of the VM.
    pub name: String,
    /// Its machine's architecture, if chosen: `None` takes what its boot files say (the
    /// kernel's header, the ISO's inspection), else this computer's machine. Boot files of
    /// another architecture than the one chosen are refused, and so is an architecture
    /// Vivarium has no machine for.
    pub arch: Option<Arch>,
    /// Guest OS.
    pub os: OsInfo,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// How it boots.
    pub boot: BootSource,
    /// The firmware that boots its disks and CD-ROM.
    pub firmware: Firmware,
    /// Its first disk.
    pub disk: NewDisk,
    /// An ISO to insert in the CD-ROM drive.
    pub cdrom: Option<PathBuf>,
    /// Network card.
    pub network: NetworkConfig,
    /// Display.
    pub display: DisplayConfig,
    /// Notes.
    pub notes: String,
}

impl NewVm {
    /// A VM with the defaults a desktop user expects: 2 CPUs, 2 GiB, a 20 GiB sparse disk, user
    /// networking, a 1024x768 screen.
    pub fn with_defaults(name: impl Into<String>, boot: BootSource) -> Self {
        NewVm {
            name: name.into(),
            arch: None,
            os: OsInfo::other(),
            cpus: 2,
            memory_mib: 2048,
            boot,
            firmware: Firmware::Bios,
            disk: NewDisk::Blank {
                size: 20 << 30,
                format: DiskFormat::Raw,
            },
            cdrom: None,
            network: NetworkConfig::user_with_random_mac(),
            display: DisplayConfig::default_framebuffer(),
            notes: String::new(),
        }
    }
}

/// The first disk of a new VM.
#[derive(Debug, Clone)]
pub enum NewDisk {
    /// No disk.
    None,
    /// A new, empty, sparse disk.
    Blank {
        /// Size the guest sees, in bytes.
        size: u64,
        /// Image format.
        format: DiskFormat,
    },
    /// A copy of an existing raw or qcow2 image (a qcow2 chain is flattened into raw).
    Import {
        /// The image to copy.
        path: PathBuf,
    },
}

/// Full or linked clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    /// An independent copy of every disk.
    Full,
    /// Copy-on-write overlays over a shared base image: instant, at any disk size.
    Linked,
}

/// Result of an operation that succeeded, with anything the user should know.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The VM's configuration after the operation.
    pub config: VmConfig,
    /// Things worth telling the user (e.g. little free space).
    pub warnings: Vec<String>,
}

/// A held exclusive lock on a VM bundle. The VM runner holds one while the VM runs; library
/// operations that change a VM hold one for their duration. Released on drop.
#[derive(Debug)]
pub struct BundleLock {
    _file: File,
}

/// A held lock on the whole library (released on drop).
struct LibraryLock {
    _file: File,
}

/// Record of a linked clone in progress, so that a crash can be finished or undone.
///
/// Each disk of the parent either gets a new base (its current file becomes the base, and
/// the parent a new overlay over it) or, when the disk has not changed since its base was
/// made, reuses that base (the parent keeps its disk; only the clone gets an overlay).
#[derive(Debug, Serialize, Deserialize)]
struct LinkedCloneJournal {
    parent: String,
    /// Disk files the parent uses before the operation (relative to its bundle).
    old_disks: Vec<PathBuf>,
    /// Disk files the parent uses after it (relative to its bundle): a new overlay, or the
    /// same file as before for a disk whose base is reused.
    new_disks: Vec<PathBuf>,
    /// The base of each disk after the operation: created by it, or reused.
    new_bases: Vec<Uuid>,
    /// The disks whose base is reused (it existed before, so undoing never removes it).
    /// Journals written before bases were reused have none.
    #[serde(default)]
    reused: Vec<ReusedBase>,
    /// The staging folder (under `.staging/`) where the clone's bundle is built.
    clone_staging: Uuid,
    /// The clone's name.
    clone_name: String,
}

/// A disk of a linked clone whose parent had not changed it since its base was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReusedBase {
    /// Index of the disk in the parent's configuration.
    disk: usize,
    /// The base's file name in `bases/<id>.vivbase/disks/` (the id is in `new_bases`).
    file: String,
    /// The base file's format.
    format: DiskFormat,
}

impl LinkedCloneJournal {
    /// How the disk at `index` reuses an existing base, if it does.
    fn reused(&self, index: usize) -> Option<&ReusedBase> {
        self.reused.iter().find(|reused| reused.disk == index)
    }

    /// Whether the operation gives the parent new disks (then the commit point is the
    /// parent's `vm.toml`; otherwise it is the rename that adds the clone to the library).
    fn changes_parent(&self) -> bool {
        (0..self.old_disks.len()).any(|index| self.reused(index).is_none())
    }
}

/// A base image that a disk already reads as, found by [`Library::unchanged_base`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnchangedBase {
    /// The base's id (its folder `bases/<id>.vivbase`).
    id: Uuid,
    /// Its file name in the folder's `disks/`.
    file: String,
    /// Its format.
    format: DiskFormat,
}

impl Library {
    /// Opens the library at the default place: `$VIVARIUM_HOME` if set, else the user's data
    /// directory (e.g. `~/.local/share/vivarium` on Linux).
    pub fn open_default() -> Result<Library> {
        Library::open(&default_root()?)
    }

    /// Opens (creating if needed) the library at `root`, and repairs what an interrupted
    /// operation left behind.
    pub fn open(root: &Path) -> Result<Library> {
        let library = Library {
            root: root.to_path_buf(),
        };
        for dir in [
            library.vms_dir(),
            library.bases_dir(),
            library.staging_dir(),
            library.trash_dir(),
            library.journal_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(|e| {
                Error::io(
                    format!(
                        "could not create the library folder `{}` (set VIVARIUM_HOME to a folder \
                         you can write to)",
                        dir.display()
                    ),
                    e,
                )
            })?;
        }
        let _lock = library.lock_library()?;
        library.recover()?;
        Ok(library)
    }

    /// The library's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }
    fn bases_dir(&self) -> PathBuf {
        self.root.join("bases")
    }
    fn staging_dir(&self) -> PathBuf {
        self.root.join(".staging")
    }
    fn trash_dir(&self) -> PathBuf {
        self.root.join(".trash")
    }
    fn journal_dir(&self) -> PathBuf {
        self.root.join(".journal")
    }

    /// The bundle folder a VM of this name has (whether or not it exists).
    pub fn bundle_path(&self, name: &str) -> PathBuf {
        let name = crate::config::normalize_name(name);
        self.vms_dir().join(format!("{name}.{BUNDLE_EXTENSION}"))
    }

    fn lock_library(&self) -> Result<LibraryLock> {
        let path = self.root.join(".library.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("could not open `{}`", path.display()), e))?;
        file.lock()
            .map_err(|e| Error::io(format!("could not lock `{}`", path.display()), e))?;
        Ok(LibraryLock { _file: file })
    }

    /// Takes the bundle's lock without waiting. Fails with [`Error::Busy`] when a VM process
    /// (or another operation) holds it. The VM runner calls this before it starts a VM.
    pub fn lock_bundle(&self, name: &str) -> Result<BundleLock> {
        let bundle = self.bundle_path(name);
        if !bundle.is_dir() {
            return Err(Error::NotFound(name.to_string()));
        }
        let path = bundle.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("could not open `{}`", path.display()), e))?;
        // Probes (`bundle_locked`, `list`) hold the lock for microseconds; a few short retries
        // keep them from making a start or an operation fail as busy.
        let mut attempt = 0;
        let taken = loop {
            match file.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) if attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                other => break other,
            }
        };
        match taken {
            Ok(()) => Ok(BundleLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Busy {
                name: name.to_string(),
                what: "running (or in use by another operation)".into(),
                todo: "shut it down first, or wait for the other operation to finish".into(),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("could not lock `{}`", path.display()), e))
            }
        }
    }

    /// Whether VM `name`'s bundle lock is held (a VM process runs it, or another operation
    /// holds it). A non-blocking probe: it never waits.
    pub fn bundle_locked(&self, name: &str) -> bool {
        Library::is_running(&self.bundle_path(name))
    }

    fn is_running(bundle: &Path) -> bool {
        let Ok(file) = OpenOptions::new().write(true).open(bundle.join(LOCK_FILE)) else {
            return false;
        };
        // A shared probe: concurrent probes never see each other as a running VM.
        match file.try_lock_shared() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(_) => false,
        }
    }

    /// Every VM in the library, sorted by name. A VM whose `vm.toml` cannot be loaded is listed
    /// with the reason instead of being hidden.
    pub fn list(&self) -> Result<Vec<VmEntry>> {
        let dir = self.vms_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("could not read `{}`", dir.display()), e))?;
        let mut vms: Vec<VmEntry> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let name = bundle_name(&path)?;
                path.is_dir().then(|| self.load_entry(name, path))
            })
            .collect();
        vms.sort_by_key(|vm| vm.name.to_lowercase());
        Ok(vms)
    }

    /// One VM by name.
    pub fn get(&self, name: &str) -> Result<VmEntry> {
        let path = self.bundle_path(name);
        if validate_name(name).is_err() || !path.is_dir() {
            return Err(Error::NotFound(name.to_string()));
        }
        // The VM's name as stored (composed), whichever form it was asked by.
        Ok(self.load_entry(crate::config::normalize_name(name), path))
    }

    fn load_entry(&self, name: String, path: PathBuf) -> VmEntry {
        // The folder name is the VM's name; a rename interrupted between renaming the folder
        // and rewriting vm.toml is repaired at the next open.
        let config = read_config(&path).map(|mut config| {
            config.name = name.clone();
            config
        });
        VmEntry {
            running: Library::is_running(&path),
            disk_usage: allocated_bytes_in(&path.join("disks")),
            config: config.map_err(|e| e.to_string()),
            name,
            path,
        }
    }

    /// Whether a name is free: no VM has it (ignoring case, so that the library can move to a
    /// case-insensitive file system) and no operation in progress reserved it.
    fn check_name_free(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        // Names that look the same are the same: case aside, and é as one code point or as
        // e and a combining accent (bundles made before names were normalised included).
        let key = |name: &str| crate::config::normalize_name(name).to_lowercase();
        let wanted = key(name);
        let taken_by_vm = fs::read_dir(self.vms_dir())
            .map_err(|e| Error::io("could not read the library", e))?
            .flatten()
            .filter_map(|entry| bundle_name(&entry.path()))
            .any(|existing| key(&existing) == wanted);
        let reserved = self
            .live_reservations()
            .iter()
            .any(|reserved| key(reserved) == wanted);
        if taken_by_vm || reserved {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        Ok(())
    }

    /// Names reserved by staging folders whose operations are still running.
    fn live_reservations(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.staging_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|entry| staging_owner_alive(&entry.path()))
            .filter_map(|entry| fs::read_to_string(entry.path().join("reservation")).ok())
            .collect()
    }

    /// Creates a VM. Its bundle is built in staging and appears in the library by one rename.
    pub fn create(&self, spec: &NewVm, progress: &dyn Progress) -> Result<Outcome> {
        let boot = check_boot_source(&spec.boot)?;
        self.create_with(spec, BootPrep::Given(boot), progress)
    }

    /// Creates a VM for the installer ISO `inspection` describes (see [`crate::iso::inspect`]):
    /// the ISO goes in the CD-ROM drive and, when its installer boots directly, its kernel and
    /// initrd are copied into the bundle's `state/` and booted with the entry's command line
    /// (the serial-console variant when `spec.display` is none). `spec.boot` and
    /// `spec.cdrom` are ignored. An ISO that needs firmware gives a VM that boots from the
    /// CD-ROM, with a warning; a refused one (not bootable, another architecture) gives an
    /// error and nothing is created.
    pub fn create_from_iso(
        &self,
        spec: &NewVm,
        inspection: &crate::iso::IsoInspection,
        progress: &dyn Progress,
    ) -> Result<Outcome> {
        if let crate::iso::BootPlan::Refused { reason } = &inspection.plan {
            return Err(Error::InvalidIso {
                path: inspection.path.clone(),
                why: reason.clone(),
            });
        }
        let mut spec = spec.clone();
        spec.cdrom = Some(inspection.path.clone());
        self.create_with(&spec, BootPrep::Iso(inspection), progress)
    }

    fn create_with(
        &self,
        spec: &NewVm,
        boot_prep: BootPrep<'_>,
        progress: &dyn Progress,
    ) -> Result<Outcome> {
        let normalized;
        let spec = if crate::config::normalize_name(&spec.name) == spec.name {
            spec
        } else {
            normalized = NewVm {
                name: crate::config::normalize_name(&spec.name),
                ..spec.clone()
            };
            &normalized
        };
        validate_name(&spec.name)?;
        validate_cpus(spec.cpus)?;
        validate_memory_mib(spec.memory_mib)?;
        let found = match &boot_prep {
            BootPrep::Given(BootSource::Linux { kernel, .. }) => {
                crate::arch::kernel_file_arch(kernel)?
                    .map(|arch| (arch, format!("the kernel `{}`", kernel.display())))
            }
            BootPrep::Given(_) => None,
            BootPrep::Iso(inspection) => inspection
                .os
                .arch
                .map(|arch| (arch, format!("the ISO `{}`", inspection.path.display()))),
        };
        let arch = decide_arch(spec.arch, found)?;
        let cdrom = match &spec.cdrom {
            Some(iso) => Some(CdromConfig {
                image: Some(check_readable_file(iso, "CD-ROM image")?),
            }),
            None => None,
        };
        let mut warnings = Vec::new();
        if let Some(why) = arch.cannot_start_on(Arch::host_machine()) {
            warnings.push(format!("`{}` cannot start here: {why}", spec.name));
        }
        let import_info = match &spec.disk {
            NewDisk::Import { path } => {
                let info = disk::probe(path)?;
                // An overlay is flattened: every file below it must be there, said before
                // anything is made (and naming the user's files, not the copy's).
                if info.backing_file.is_some()
                    && let Err(e) = disk::backing_chain(path)
                {
                    return Err(Error::InvalidInput(format!(
                        "`{}` cannot be imported: it is an overlay, and {}: put its backing \
                         file back where it names it, or import an image that stands alone",
                        path.display(),
                        match &e {
                            Error::Io { source, .. } => source.to_string(),
                            other => other.to_string(),
                        }
                    )));
                }
                Some((path.clone(), info))
            }
            _ => None,
        };

        let staging = self.begin_staging(&spec.name)?;
        let bundle = staging.bundle();
        let boot = match boot_prep {
            BootPrep::Given(boot) => boot,
            BootPrep::Iso(inspection) => iso_boot_source(inspection, spec, &bundle, progress)?,
        };
        let disks_dir = bundle.join("disks");
        let mut disks = Vec::new();
        match (&spec.disk, import_info) {
            (NewDisk::None, _) => {}
            (NewDisk::Blank { size, format }, _) => {
                if *size < 1 << 20 {
                    return Err(Error::InvalidInput(format!(
                        "a disk of {} is too small: give at least 1 MiB",
                        format_size(*size)
                    )));
                }
                let free = free_space(&self.root)?;
                if *size > free {
                    warnings.push(format!(
                        "the disk can grow to {} but only {} is free where the library is; \
                         the guest will see write errors if it fills the disk",
                        format_size(*size),
                        format_size(free)
                    ));
                }
                let file = PathBuf::from(format!("disks/disk0.{}", format.extension()));
                disk::create(&bundle.join(&file), *format, *size)?;
                disks.push(DiskConfig {
                    file,
                    format: *format,
                    size: *size,
                    read_only: false,
                    base: None,
                });
            }
            (NewDisk::Import { path }, Some((_, info))) => {
                let needed = crate::fsutil::allocated_bytes(path).unwrap_or(0);
                let free = free_space(&self.root)?;
                if needed > free {
                    return Err(Error::InvalidInput(format!(
                        "importing `{}` needs {} but only {} is free where the library is",
                        path.display(),
                        format_size(needed),
                        format_size(free)
                    )));
                }
                let (format, method_target) = match (&info.format, &info.backing_file) {
                    (DiskFormat::Qcow2, Some(_)) => (DiskFormat::Raw, "disks/disk0.raw"),
                    (DiskFormat::Qcow2, None) => (DiskFormat::Qcow2, "disks/disk0.qcow2"),
                    (DiskFormat::Raw, _) => (DiskFormat::Raw, "disks/disk0.raw"),
                };
                let target = bundle.join(method_target);
                if info.backing_file.is_some() {
                    disk::flatten_to_raw(path, &target, progress)?;
                    warnings.push(format!(
                        "`{}` is an overlay over `{}`; its contents were flattened into one \
                         independent raw disk",
                        path.display(),
                        info.backing_file.clone().unwrap_or_default()
                    ));
                } else {
                    disk::copy_file(path, &target, true, progress)?;
                }
                disks.push(DiskConfig {
                    file: method_target.into(),
                    format,
                    size: info.virtual_size,
                    read_only: false,
                    base: None,
                });
            }
            (NewDisk::Import { .. }, None) => unreachable!("import info probed above"),
        }
        fs::create_dir_all(&disks_dir).map_err(|e| Error::io("could not create disks/", e))?;
        let config = VmConfig {
            format: CONFIG_FORMAT,
            id: Uuid::new_v4(),
            name: spec.name.clone(),
            created: now_rfc3339(),
            arch,
            os: spec.os.clone(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            boot,
            firmware: spec.firmware,
            disks,
            cdrom,
            network: spec.network.clone(),
            display: spec.display,
            notes: spec.notes.clone(),
        };
        config.validate()?;
        atomic_write(&bundle.join(CONFIG_FILE), config.to_toml().as_bytes())?;
        self.commit_staging(staging, &spec.name)?;
        Ok(Outcome { config, warnings })
    }

    /// Renames a stopped VM.
    pub fn rename(&self, old: &str, new: &str) -> Result<VmConfig> {
        let new = &crate::config::normalize_name(new);
        let _lock = self.lock_library()?;
        let entry = self.get(old)?;
        let mut config = entry.config()?.clone();
        let _bundle_lock = self.lock_bundle(old)?;
        if old == new {
            return Ok(config);
        }
        if old.to_lowercase() != new.to_lowercase() {
            self.check_name_free(new)?;
        } else {
            validate_name(new)?;
        }
        let from = self.bundle_path(old);
        let to = self.bundle_path(new);
        // The folder rename is the commit point; vm.toml follows (and is repaired at the next
        // open if a crash comes in between).
        fs::rename(&from, &to)
            .map_err(|e| Error::io(format!("could not rename `{old}` to `{new}`"), e))?;
        sync_dir(&self.vms_dir()).map_err(|e| Error::io("could not sync the library", e))?;
        config.name = new.to_string();
        atomic_write(&to.join(CONFIG_FILE), config.to_toml().as_bytes())?;
        Ok(config)
    }

    /// Changes the settings of a VM through `edit`, validates them and saves atomically.
    /// A running VM can only have its notes changed.
    pub fn update(
        &self,
        name: &str,
        edit: impl FnOnce(&mut VmConfig) -> Result<()>,
    ) -> Result<VmConfig> {
        let _lock = self.lock_library()?;
        let entry = self.get(name)?;
        let before = entry.config()?.clone();
        let mut after = before.clone();
        edit(&mut after)?;
        after.id = before.id;
        after.name = before.name.clone();
        after.format = CONFIG_FORMAT;
        after.created = before.created.clone();
        // The machine is the VM's for its life: its disks hold a system of that architecture.
        after.arch = before.arch;
        // Disks change through their own operations; a settings edit may only flip whether
        // the guest can write them.
        let read_only: Vec<bool> = after.disks.iter().map(|d| d.read_only).collect();
        after.disks = before.disks.clone();
        for (disk, read_only) in after.disks.iter_mut().zip(read_only) {
            disk.read_only = read_only;
        }
        after.boot = check_boot_source(&after.boot)?;
        if after.boot != before.boot
            && let BootSource::Linux { kernel, .. } = &after.boot
            && let Some(found) = crate::arch::kernel_file_arch(kernel)?
            && found.machine() != Some(after.arch)
        {
            return Err(Error::InvalidInput(format!(
                "the kernel `{}` is built for {found}, but `{name}` is {} machine: give it \
                 {} kernel",
                kernel.display(),
                after.arch.with_article(),
                after.arch.with_article()
            )));
        }
        if let Some(CdromConfig { image: Some(iso) }) = &after.cdrom {
            let checked = check_readable_file(iso, "CD-ROM image")?;
            after.cdrom = Some(CdromConfig {
                image: Some(checked),
            });
        }
        after.validate()?;
        let only_notes = VmConfig {
            notes: before.notes.clone(),
            ..after.clone()
        } == before;
        let _bundle_lock = if only_notes {
            None
        } else {
            Some(self.lock_bundle(name)?)
        };
        atomic_write(&entry.path.join(CONFIG_FILE), after.to_toml().as_bytes())?;
        Ok(after)
    }

    /// Deletes a stopped VM and its disks. Base images other VMs still use stay.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _lock = self.lock_library()?;
        let entry = self.get(name)?;
        let bundle_lock = self.lock_bundle(name)?;
        let trash = self.trash_dir().join(Uuid::new_v4().to_string());
        fs::rename(&entry.path, &trash)
            .map_err(|e| Error::io(format!("could not delete `{name}`"), e))?;
        drop(bundle_lock);
        sync_dir(&self.vms_dir()).map_err(|e| Error::io("could not sync the library", e))?;
        fs::remove_dir_all(&trash)
            .map_err(|e| Error::io(format!("could not remove the files of `{name}`"), e))?;
        self.collect_unused_bases()?;
        Ok(())
    }

    /// Clones a stopped VM under a new name: a new id and MAC address, and either independent
    /// copies of the disks (full) or copy-on-write overlays over a shared base (linked).
    pub fn clone_vm(
        &self,
        source: &str,
        name: &str,
        mode: CloneMode,
        progress: &dyn Progress,
    ) -> Result<Outcome> {
        let name = &crate::config::normalize_name(name);
        match mode {
            CloneMode::Full => self.full_clone(source, name, progress),
            CloneMode::Linked => self.linked_clone(source, name),
        }
    }

    fn clone_config(source: &VmConfig, name: &str) -> VmConfig {
        let mut config = source.clone();
        config.id = Uuid::new_v4();
        config.name = name.to_string();
        config.created = now_rfc3339();
        if let NetworkConfig::User { mac, .. } = &mut config.network {
            *mac = crate::config::MacAddress::random();
        }
        config
    }

    fn full_clone(&self, source: &str, name: &str, progress: &dyn Progress) -> Result<Outcome> {
        let entry = self.get(source)?;
        let source_config = entry.config()?.clone();
        let _source_lock = self.lock_bundle(source)?;
        let needed: u64 = allocated_bytes_in(&entry.path.join("disks"));
        let free = free_space(&self.root)?;
        if needed > free {
            return Err(Error::InvalidInput(format!(
                "a full clone of `{source}` needs {} but only {} is free; a linked clone \
                 (--linked) needs almost none",
                format_size(needed),
                format_size(free)
            )));
        }
        let staging = self.begin_staging(name)?;
        let bundle = staging.bundle();
        let mut config = Library::clone_config(&source_config, name);
        // Progress counts what each copy reports: the file's length for a copy, the disk's
        // size for an overlay flattened through its chain.
        let progress_len = |d: &DiskConfig| {
            let path = entry.path.join(&d.file);
            if disk::backing_file(&path).ok().flatten().is_some() {
                d.size
            } else {
                fs::metadata(path).map(|m| m.len()).unwrap_or(0)
            }
        };
        let total: u64 = source_config.disks.iter().map(progress_len).sum();
        let mut done_before = 0u64;
        for (index, disk_config) in config.disks.iter_mut().enumerate() {
            let src = entry.path.join(&disk_config.file);
            let this_len = progress_len(disk_config);
            let offset = done_before;
            let sub = SubProgress {
                inner: progress,
                offset,
                total,
            };
            let has_backing = disk::backing_file(&src)?.is_some();
            let (file, method) = if has_backing {
                let file = PathBuf::from(format!("disks/disk{index}.raw"));
                let method = disk::flatten_to_raw(&src, &bundle.join(&file), &sub)?;
                disk_config.format = DiskFormat::Raw;
                disk_config.base = None;
                (file, method)
            } else {
                let file = PathBuf::from(format!(
                    "disks/disk{index}.{}",
                    disk_config.format.extension()
                ));
                let method = disk::copy_file(&src, &bundle.join(&file), true, &sub)?;
                (file, method)
            };
            tracing::debug!(?method, "cloned {}", src.display());
            let _: CopyMethod = method;
            disk_config.file = file;
            done_before += this_len;
        }
        copy_bundle_boot_files(&config, &entry.path, &bundle)?;
        config.validate()?;
        atomic_write(&bundle.join(CONFIG_FILE), config.to_toml().as_bytes())?;
        self.commit_staging(staging, name)?;
        Ok(Outcome {
            config,
            warnings: Vec::new(),
        })
    }

    fn linked_clone(&self, source: &str, name: &str) -> Result<Outcome> {
        let _lock = self.lock_library()?;
        let entry = self.get(source)?;
        let parent = entry.config()?.clone();
        let _parent_lock = self.lock_bundle(source)?;
        self.check_name_free(name)?;
        if parent.disks.is_empty() {
            return Err(Error::InvalidInput(format!(
                "`{source}` has no disks, so there is nothing to link: use a full clone"
            )));
        }

        let (journal, journal_path) = self.plan_linked_clone(source, &parent, name)?;

        let result = self
            .prepare_linked_clone(&entry.path, &parent, &journal, name)
            .and_then(|(parent_after, clone)| {
                if journal.changes_parent() {
                    // Commit point: the parent now runs on its overlays.
                    atomic_write(
                        &entry.path.join(CONFIG_FILE),
                        parent_after.to_toml().as_bytes(),
                    )?;
                }
                // With every base reused, the parent is untouched, and the commit point is
                // the rename in here that adds the clone to the library.
                self.finish_linked_clone(&journal)?;
                Ok((parent_after, clone))
            });
        match result {
            Ok((parent_after, clone)) => {
                let _ = fs::remove_file(&journal_path);
                let _ = sync_dir(&self.journal_dir());
                self.normalize_reused_overlays(&entry.path, parent_after, &journal);
                Ok(Outcome {
                    config: clone,
                    warnings: Vec::new(),
                })
            }
            Err(e) => {
                // Undo whatever was done, from the journal, exactly as recovery would.
                if let Err(undo) = self.recover_linked_clone(&journal) {
                    tracing::error!("could not undo a failed linked clone: {undo}");
                } else {
                    let _ = fs::remove_file(&journal_path);
                }
                Err(e)
            }
        }
    }

    /// Writes the journal of a linked clone before any of its steps, so that a crash at any
    /// later point can be finished or undone by [`Library::open`].
    fn plan_linked_clone(
        &self,
        source: &str,
        parent: &VmConfig,
        name: &str,
    ) -> Result<(LinkedCloneJournal, PathBuf)> {
        let journal_id = Uuid::new_v4();
        let mut journal = LinkedCloneJournal {
            parent: source.to_string(),
            old_disks: parent.disks.iter().map(|d| d.file.clone()).collect(),
            new_disks: Vec::new(),
            new_bases: Vec::new(),
            reused: Vec::new(),
            clone_staging: journal_id,
            clone_name: name.to_string(),
        };
        let short = &journal_id.simple().to_string()[..8];
        let parent_path = self.bundle_path(source);
        for (index, disk_config) in parent.disks.iter().enumerate() {
            let current = parent_path.join(&disk_config.file);
            if let Some(base) = self.unchanged_base(&current, disk_config.size)? {
                journal.new_disks.push(disk_config.file.clone());
                journal.new_bases.push(base.id);
                journal.reused.push(ReusedBase {
                    disk: index,
                    file: base.file,
                    format: base.format,
                });
            } else {
                journal
                    .new_disks
                    .push(PathBuf::from(format!("disks/disk{index}-{short}.qcow2")));
                journal.new_bases.push(Uuid::new_v4());
            }
        }
        let journal_path = self.journal_dir().join(format!("{journal_id}.toml"));
        let journal_text = toml::to_string(&journal).expect("journal serialises");
        atomic_write(&journal_path, journal_text.as_bytes())?;

        Ok((journal, journal_path))
    }

    /// Everything of a linked clone before its commit point: bases (hard links of the
    /// parent's disks), the parent's new overlays, and the clone's bundle in staging. Returns
    /// the parent's and the clone's configurations after the clone.
    fn prepare_linked_clone(
        &self,
        parent_path: &Path,
        parent: &VmConfig,
        journal: &LinkedCloneJournal,
        name: &str,
    ) -> Result<(VmConfig, VmConfig)> {
        let staging_bundle = self
            .staging_dir()
            .join(journal.clone_staging.to_string())
            .join("bundle");
        fs::create_dir_all(staging_bundle.join("disks"))
            .map_err(|e| Error::io("could not create the clone's folder", e))?;
        let mut parent_after = parent.clone();
        let mut clone = Library::clone_config(parent, name);
        for (index, disk_config) in parent.disks.iter().enumerate() {
            let base_id = journal.new_bases[index];
            let clone_file = PathBuf::from(format!("disks/disk{index}.qcow2"));
            if let Some(reused) = journal.reused(index) {
                // The parent's disk reads exactly as this base: the clone gets an overlay
                // over it and the parent keeps its disk, so the chain does not grow.
                disk::create_overlay(
                    &staging_bundle.join(&clone_file),
                    &base_backing_path(base_id, &reused.file),
                    reused.format,
                    disk_config.size,
                )?;
                clone.disks[index] = DiskConfig {
                    file: clone_file,
                    format: DiskFormat::Qcow2,
                    base: Some(base_id),
                    ..disk_config.clone()
                };
                continue;
            }
            let current = parent_path.join(&disk_config.file);
            let file_name = current
                .file_name()
                .ok_or_else(|| Error::InvalidInput("a disk has no file name".into()))?;
            let base_dir = self
                .bases_dir()
                .join(format!("{base_id}.{BASE_EXTENSION}"))
                .join("disks");
            fs::create_dir_all(&base_dir)
                .map_err(|e| Error::io("could not create a base image folder", e))?;
            // A changed disk of a library from before bases were reused may still reach its
            // base through empty overlays: it names the lowest equal base before it becomes
            // a base itself, so the chain is as deep as the changes.
            if let Some(shorter) = self.shortened_backing(&current, disk_config.size)
                && let Err(e) = disk::set_backing_name(&current, &shorter)
            {
                tracing::warn!(
                    "could not shorten the backing chain of `{}`: {e}",
                    current.display()
                );
            }
            // The base shares the parent's current disk file (a hard link, so instant);
            // base paths resolve the same from `vms/X/disks/` and `bases/Y/disks/`, so a
            // qcow2 overlay's own backing path stays valid when it becomes a base.
            fs::hard_link(&current, base_dir.join(file_name)).map_err(|e| {
                Error::io(
                    format!("could not turn `{}` into a base image", current.display()),
                    e,
                )
            })?;
            sync_dir(&base_dir).map_err(|e| Error::io("could not sync a base folder", e))?;
            let backing = base_backing_path(base_id, &file_name.to_string_lossy());
            let parent_overlay = parent_path.join(&journal.new_disks[index]);
            disk::create_overlay(
                &parent_overlay,
                &backing,
                disk_config.format,
                disk_config.size,
            )?;
            disk::create_overlay(
                &staging_bundle.join(&clone_file),
                &backing,
                disk_config.format,
                disk_config.size,
            )?;
            parent_after.disks[index] = DiskConfig {
                file: journal.new_disks[index].clone(),
                format: DiskFormat::Qcow2,
                base: Some(base_id),
                ..disk_config.clone()
            };
            clone.disks[index] = DiskConfig {
                file: clone_file,
                format: DiskFormat::Qcow2,
                base: Some(base_id),
                ..disk_config.clone()
            };
        }
        sync_dir(&parent_path.join("disks")).map_err(|e| Error::io("could not sync disks/", e))?;
        copy_bundle_boot_files(&clone, parent_path, &staging_bundle)?;
        clone.validate()?;
        atomic_write(
            &staging_bundle.join(CONFIG_FILE),
            clone.to_toml().as_bytes(),
        )?;
        Ok((parent_after, clone))
    }

    /// The steps after a linked clone's commit point: drop the parent's old disk names (the
    /// bases keep the data), make bases read-only, and move the clone into the library.
    fn finish_linked_clone(&self, journal: &LinkedCloneJournal) -> Result<()> {
        let parent_path = self.bundle_path(&journal.parent);
        for (index, old) in journal.old_disks.iter().enumerate() {
            if journal.reused(index).is_some() {
                // The parent keeps this disk, and the base was read-only already.
                continue;
            }
            let old_path = parent_path.join(old);
            if old_path.exists() {
                fs::remove_file(&old_path).map_err(|e| {
                    Error::io(format!("could not remove `{}`", old_path.display()), e)
                })?;
            }
            let base_dir = self
                .bases_dir()
                .join(format!("{}.{BASE_EXTENSION}", journal.new_bases[index]))
                .join("disks");
            if let Some(file_name) = old.file_name() {
                let base_file = base_dir.join(file_name);
                if let Ok(meta) = fs::metadata(&base_file) {
                    let mut perms = meta.permissions();
                    perms.set_readonly(true);
                    let _ = fs::set_permissions(&base_file, perms);
                }
            }
        }
        let staging_bundle = self
            .staging_dir()
            .join(journal.clone_staging.to_string())
            .join("bundle");
        if staging_bundle.exists() {
            let target = self.bundle_path(&journal.clone_name);
            fs::rename(&staging_bundle, &target).map_err(|e| {
                Error::io(
                    format!("could not add `{}` to the library", journal.clone_name),
                    e,
                )
            })?;
            sync_dir(&self.vms_dir()).map_err(|e| Error::io("could not sync the library", e))?;
        }
        let _ = fs::remove_dir_all(self.staging_dir().join(journal.clone_staging.to_string()));
        Ok(())
    }

    /// Finishes (after its commit point) or undoes (before it) an interrupted linked clone.
    ///
    /// When every base is reused, the parent never changes and the commit point is the rename
    /// that adds the clone: a clone still in staging is removed (it may be incomplete), one
    /// already in the library stays.
    fn recover_linked_clone(&self, journal: &LinkedCloneJournal) -> Result<()> {
        let parent_path = self.bundle_path(&journal.parent);
        let committed = journal.changes_parent()
            && read_config(&parent_path)
                .map(|config| {
                    config
                        .disks
                        .iter()
                        .map(|d| &d.file)
                        .eq(journal.new_disks.iter())
                })
                .unwrap_or(false);
        if committed {
            return self.finish_linked_clone(journal);
        }
        for (index, new) in journal.new_disks.iter().enumerate() {
            if journal.reused(index).is_none() {
                let _ = fs::remove_file(parent_path.join(new));
            }
        }
        for (index, base) in journal.new_bases.iter().enumerate() {
            if journal.reused(index).is_some() {
                continue;
            }
            let dir = self.bases_dir().join(format!("{base}.{BASE_EXTENSION}"));
            if dir.exists() {
                fs::remove_dir_all(&dir)
                    .map_err(|e| Error::io(format!("could not remove `{}`", dir.display()), e))?;
            }
        }
        let _ = fs::remove_dir_all(self.staging_dir().join(journal.clone_staging.to_string()));
        Ok(())
    }

    /// The bases that read exactly as the base file `base` (of `size` bytes), top first:
    /// `base` itself, then, while the last one is an empty qcow2 overlay (see
    /// [`disk::qcow2_is_empty`]) over another base of this library of the same size, that
    /// base. Libraries made before bases were reused have chains of such empty bases, one per
    /// clone. Empty when `base` is no base of this library of that size.
    fn equal_bases(&self, base: &Path, size: u64) -> Result<Vec<UnchangedBase>> {
        let mut equal = Vec::new();
        let mut current = base.to_path_buf();
        for _ in 0..disk::MAX_CHAIN_DEPTH {
            let Some((id, file)) = self.base_file_of(&current) else {
                break;
            };
            let Ok(info) = disk::probe(&current) else {
                break;
            };
            if info.virtual_size != size {
                break;
            }
            equal.push(UnchangedBase {
                id,
                file,
                format: info.format,
            });
            if !disk::qcow2_is_empty(&current)? {
                break;
            }
            let Some(below) = backing_target(&current)? else {
                break;
            };
            current = below;
        }
        Ok(equal)
    }

    /// The base image that the disk file `disk` (of `size` bytes) reads exactly as, if there is
    /// one: `disk` is a qcow2 overlay with nothing of its own (no cluster written since it was
    /// made) over a base of this library of the same size; of the bases that read the same
    /// ([`Library::equal_bases`]), the lowest. `None` when the disk changed, or is not an
    /// overlay of a base: then a linked clone needs a new base.
    fn unchanged_base(&self, disk: &Path, size: u64) -> Result<Option<UnchangedBase>> {
        if !disk::probe(disk).is_ok_and(|info| info.virtual_size == size)
            || !disk::qcow2_is_empty(disk)?
        {
            return Ok(None);
        }
        let Some(target) = backing_target(disk)? else {
            return Ok(None);
        };
        Ok(self.equal_bases(&target, size)?.pop())
    }

    /// The backing name that the overlay `disk` (of `size` bytes) should have when it is not
    /// the one it has: of the bases that read as the one it names ([`Library::equal_bases`]),
    /// the lowest of the same format, in the normalised form. `None` when the disk is no
    /// overlay of a base, or already names that one that way.
    fn shortened_backing(&self, disk: &Path, size: u64) -> Option<String> {
        let backing = disk::backing_file(disk).ok()??;
        let target = backing_target(disk).ok()??;
        let equal = self.equal_bases(&target, size).ok()?;
        let format = equal.first()?.format;
        let lowest = equal.iter().rev().find(|base| base.format == format)?;
        let wanted = base_backing_path(lowest.id, &lowest.file);
        (wanted != backing).then_some(wanted)
    }

    /// The base id and file name of `file` when it is a base image of this library
    /// (`bases/<id>.vivbase/disks/<file>`, lexically normalised).
    fn base_file_of(&self, file: &Path) -> Option<(Uuid, String)> {
        let rest = file.strip_prefix(normalize(&self.bases_dir())).ok()?;
        let parts: Vec<&str> = rest
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<_>>()?;
        let [folder, "disks", name] = parts.as_slice() else {
            return None;
        };
        let id = folder.strip_suffix(&format!(".{BASE_EXTENSION}"))?;
        Some((Uuid::parse_str(id).ok()?, name.to_string()))
    }

    /// After a linked clone that reused bases: points each reused parent disk straight at its
    /// base with the short, normalised backing path, where it still reaches the base through
    /// empty overlays or names it another way (libraries from before bases were reused), and
    /// records the base in the parent's `vm.toml`. The disk is replaced by an equal empty
    /// overlay with one rename, so a crash leaves the old or the new one, both right; a
    /// failure only leaves the longer chain, which still works. Bases that nothing reaches
    /// any more are then collected. Needs the library and parent locks held.
    fn normalize_reused_overlays(
        &self,
        parent_path: &Path,
        mut parent_after: VmConfig,
        journal: &LinkedCloneJournal,
    ) {
        let mut repaired = false;
        let mut config_changed = false;
        for reused in &journal.reused {
            let index = reused.disk;
            let base_id = journal.new_bases[index];
            let wanted = base_backing_path(base_id, &reused.file);
            let Some(disk_config) = parent_after.disks.get_mut(index) else {
                continue;
            };
            let current = parent_path.join(&disk_config.file);
            if disk::backing_file(&current).ok().flatten().as_deref() != Some(wanted.as_str()) {
                match replace_with_empty_overlay(&current, &wanted, reused.format, disk_config.size)
                {
                    Ok(()) => repaired = true,
                    Err(e) => {
                        tracing::warn!(
                            "could not shorten the backing chain of `{}`: {e}",
                            current.display()
                        );
                        continue;
                    }
                }
            }
            if disk_config.base != Some(base_id) {
                disk_config.base = Some(base_id);
                config_changed = true;
            }
        }
        if config_changed
            && let Err(e) = atomic_write(
                &parent_path.join(CONFIG_FILE),
                parent_after.to_toml().as_bytes(),
            )
        {
            tracing::warn!("could not record the parent's base in its vm.toml: {e}");
        }
        if repaired && let Err(e) = self.collect_unused_bases() {
            tracing::warn!("could not remove unused base images: {e}");
        }
    }

    /// Reserves `name` and returns a staging folder to build a bundle in. The name stays
    /// reserved while the returned guard lives.
    fn begin_staging(&self, name: &str) -> Result<Staging> {
        let _lock = self.lock_library()?;
        self.check_name_free(name)?;
        let dir = self.staging_dir().join(Uuid::new_v4().to_string());
        fs::create_dir_all(dir.join("bundle").join("disks"))
            .and_then(|()| fs::create_dir_all(dir.join("bundle").join("state")))
            .and_then(|()| fs::create_dir_all(dir.join("bundle").join("logs")))
            .map_err(|e| Error::io("could not create a staging folder in the library", e))?;
        let owner = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".owner"))
            .map_err(|e| Error::io("could not create a staging folder in the library", e))?;
        owner
            .lock()
            .map_err(|e| Error::io("could not lock a staging folder", e))?;
        fs::write(dir.join("reservation"), name)
            .map_err(|e| Error::io("could not reserve the name", e))?;
        Ok(Staging {
            dir,
            _owner: owner,
            committed: false,
        })
    }

    /// Moves a finished staging bundle into the library: the single step that makes it appear.
    fn commit_staging(&self, mut staging: Staging, name: &str) -> Result<()> {
        let _lock = self.lock_library()?;
        let bundle = staging.bundle();
        sync_tree(&bundle).map_err(|e| Error::io("could not sync the new VM's files", e))?;
        let target = self.bundle_path(name);
        if target.exists() {
            return Err(Error::AlreadyExists(name.to_string()));
        }
        fs::rename(&bundle, &target)
            .map_err(|e| Error::io(format!("could not add `{name}` to the library"), e))?;
        sync_dir(&self.vms_dir()).map_err(|e| Error::io("could not sync the library", e))?;
        staging.committed = true;
        Ok(())
    }

    /// Repairs what interrupted operations left: journals first, then trash and dead staging
    /// folders, folder/name mismatches, temporary files, and unused bases.
    fn recover(&self) -> Result<()> {
        if let Ok(entries) = fs::read_dir(self.journal_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(text) = fs::read_to_string(&path) else {
                    continue;
                };
                match toml::from_str::<LinkedCloneJournal>(&text) {
                    Ok(journal) => {
                        tracing::info!(
                            "recovering an interrupted linked clone of `{}`",
                            journal.parent
                        );
                        self.recover_linked_clone(&journal)?;
                    }
                    Err(e) => tracing::warn!("ignoring unreadable journal {}: {e}", path.display()),
                }
                let _ = fs::remove_file(&path);
            }
        }
        if let Ok(entries) = fs::read_dir(self.trash_dir()) {
            for entry in entries.flatten() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        if let Ok(entries) = fs::read_dir(self.staging_dir()) {
            for entry in entries.flatten() {
                if !staging_owner_alive(&entry.path()) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.vms_dir()) {
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(name) = bundle_name(&path) else {
                    continue;
                };
                remove_temporaries(&path);
                if let Ok(mut config) = read_config(&path)
                    && config.name != name
                    && !Library::is_running(&path)
                {
                    config.name = name;
                    atomic_write(&path.join(CONFIG_FILE), config.to_toml().as_bytes())?;
                }
            }
        }
        self.collect_unused_bases()
    }

    /// Removes base images that no VM's disk chain reaches any more. References are read from
    /// the qcow2 headers of the disk files themselves, so a damaged `vm.toml` never causes a
    /// base that is still needed to be removed.
    fn collect_unused_bases(&self) -> Result<()> {
        let mut reachable: HashSet<PathBuf> = HashSet::new();
        let mut pending: Vec<PathBuf> = Vec::new();
        for dir in [self.vms_dir(), self.staging_dir()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let mut disk_dirs = vec![entry.path().join("disks")];
                disk_dirs.push(entry.path().join("bundle").join("disks"));
                for disk_dir in disk_dirs {
                    if let Ok(files) = fs::read_dir(&disk_dir) {
                        pending.extend(files.flatten().map(|f| f.path()));
                    }
                }
            }
        }
        while let Some(file) = pending.pop() {
            let backing = match disk::backing_file(&file) {
                Ok(Some(backing)) => backing,
                Ok(None) => continue,
                Err(_) => {
                    // An unreadable header: keep every base, to be safe.
                    return Ok(());
                }
            };
            let Some(dir) = file.parent() else { continue };
            let target = normalize(&dir.join(backing));
            if let Some(base_dir) = base_folder_of(&self.bases_dir(), &target)
                && reachable.insert(base_dir)
            {
                pending.push(target);
            }
        }
        let Ok(entries) = fs::read_dir(self.bases_dir()) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(BASE_EXTENSION) {
                continue;
            }
            if !reachable.contains(&normalize(&path)) {
                tracing::info!("removing unused base image {}", path.display());
                make_writable_tree(&path);
                fs::remove_dir_all(&path)
                    .map_err(|e| Error::io(format!("could not remove `{}`", path.display()), e))?;
            }
        }
        Ok(())
    }

    /// Shared base images and how many VMs of the library use each (directly or through
    /// another base).
    pub fn bases(&self) -> Result<Vec<(PathBuf, u64)>> {
        let Ok(entries) = fs::read_dir(self.bases_dir()) else {
            return Ok(Vec::new());
        };
        Ok(entries
            .flatten()
            .map(|entry| {
                let path = entry.path();
                let size = allocated_bytes_in(&path.join("disks"));
                (path, size)
            })
            .collect())
    }
}

/// The machine of a new VM: the one its boot files need (`found`: their architecture, and
/// what they are, e.g. "the kernel `vmlinuz`"), which must be the one asked for (`wanted`) if
/// one was; else the one asked for; else this computer's.
fn decide_arch(wanted: Option<Arch>, found: Option<(Arch, String)>) -> Result<Arch> {
    let wanted = match wanted {
        Some(arch) => Some(arch.machine_or_refuse()?),
        None => None,
    };
    let found = match found {
        Some((arch, what)) => Some((arch.machine_for(&what)?, arch, what)),
        None => None,
    };
    match (wanted, found) {
        (Some(wanted), Some((machine, arch, what))) if wanted != machine => {
            Err(Error::InvalidInput(format!(
                "{what} is built for {arch}, which runs on the {machine} machine, not on the \
                 {wanted} one asked for: leave the architecture out, or give {wanted} boot files"
            )))
        }
        (_, Some((machine, ..))) => Ok(machine),
        (Some(wanted), None) => Ok(wanted),
        (None, None) => Arch::host_machine().ok_or_else(|| {
            Error::InvalidInput(format!(
                "Vivarium has no machine for this computer's architecture ({}): choose the VM's \
                 architecture (x86_64 or aarch64)",
                std::env::consts::ARCH
            ))
        }),
    }
}

/// Where a new VM's boot source comes from.
enum BootPrep<'a> {
    /// As given (already checked).
    Given(BootSource),
    /// From an installer ISO, extracted into the bundle.
    Iso(&'a crate::iso::IsoInspection),
}

/// The boot source of a VM made from an ISO; extracts the installer's kernel and initrd into
/// `bundle/state/` when it boots directly.
fn iso_boot_source(
    inspection: &crate::iso::IsoInspection,
    spec: &NewVm,
    bundle: &Path,
    progress: &dyn Progress,
) -> Result<BootSource> {
    use crate::iso::{BootPlan, INITRD_FILE, KERNEL_FILE};
    match &inspection.plan {
        BootPlan::DirectLinux {
            cmdline,
            serial_cmdline,
            ..
        } => {
            let state = bundle.join("state");
            let has_initrd = crate::iso::extract_boot_files(
                &inspection.path,
                &inspection.plan,
                &state,
                progress,
            )?;
            let cmdline = if spec.display == DisplayConfig::None {
                serial_cmdline.clone()
            } else {
                cmdline.clone()
            };
            Ok(BootSource::Installer {
                kernel: Path::new("state").join(KERNEL_FILE),
                initrd: has_initrd.then(|| Path::new("state").join(INITRD_FILE)),
                cmdline,
            })
        }
        // The disk first: while it is empty the firmware goes on to the installer CD, and
        // once the system is installed, the disk boots with no setting changed.
        BootPlan::NeedsFirmware { .. } => Ok(BootSource::Disk),
        BootPlan::Refused { reason } => Err(Error::InvalidIso {
            path: inspection.path.clone(),
            why: reason.clone(),
        }),
    }
}

/// Copies the boot files a configuration keeps in its bundle (relative kernel and initrd
/// paths) from one bundle to another, for clones.
fn copy_bundle_boot_files(config: &VmConfig, from: &Path, to: &Path) -> Result<()> {
    let mut files: Vec<&Path> = Vec::new();
    if let BootSource::Linux { kernel, initrd, .. } | BootSource::Installer { kernel, initrd, .. } =
        &config.boot
    {
        files.extend(std::iter::once(kernel).chain(initrd).map(PathBuf::as_path));
    }
    // The UEFI variable store holds the boot entries of the system installed on the disks:
    // a clone boots it only with them.
    let vars = Path::new(crate::firmware::UEFI_VARS_FILE);
    if from.join(vars).is_file() {
        files.push(vars);
    }
    for file in files {
        if file.is_absolute() {
            continue;
        }
        let target = to.join(file);
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("could not create `{}`", dir.display()), e))?;
        }
        fs::copy(from.join(file), &target).map_err(|e| {
            Error::io(
                format!("could not copy the boot file `{}`", file.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// A bundle being built; removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    _owner: File,
    committed: bool,
}

impl Staging {
    fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        if !self.committed {
            tracing::debug!("discarded staging folder {}", self.dir.display());
        }
    }
}

/// Progress of one disk within a multi-disk operation.
struct SubProgress<'a> {
    inner: &'a dyn Progress,
    offset: u64,
    total: u64,
}

impl Progress for SubProgress<'_> {
    fn update(&self, done: u64, _total: u64) {
        self.inner.update(self.offset + done, self.total);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// The library root when none is given: `$VIVARIUM_HOME`, else the user's data directory.
pub fn default_root() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("VIVARIUM_HOME")
        && !home.is_empty()
    {
        return Ok(PathBuf::from(home));
    }
    directories::ProjectDirs::from("org", "Vivarium", "vivarium")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .ok_or_else(|| {
            Error::InvalidInput(
                "could not find your home folder; set VIVARIUM_HOME to the folder that should \
                 hold your VMs"
                    .into(),
            )
        })
}

fn bundle_name(path: &Path) -> Option<String> {
    if path.extension()?.to_str()? != BUNDLE_EXTENSION {
        return None;
    }
    let name = path.file_stem()?.to_str()?;
    validate_name(name).ok()?;
    Some(name.to_string())
}

fn read_config(bundle: &Path) -> Result<VmConfig> {
    let path = bundle.join(CONFIG_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::CorruptConfig(format!(
                "`{CONFIG_FILE}` is missing from `{}`",
                bundle.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Error::CorruptConfig(format!(
                "`{CONFIG_FILE}` is not UTF-8 text"
            )));
        }
        Err(e) => return Err(Error::io(format!("could not read `{}`", path.display()), e)),
    };
    VmConfig::from_toml(&text)
}

fn staging_owner_alive(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join(".owner")) else {
        return false;
    };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

fn check_boot_source(boot: &BootSource) -> Result<BootSource> {
    Ok(match boot {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        } => BootSource::Linux {
            kernel: check_readable_file(kernel, "kernel")?,
            initrd: match initrd {
                Some(initrd) => Some(check_readable_file(initrd, "initrd")?),
                None => None,
            },
            cmdline: cmdline.clone(),
        },
        other => other.clone(),
    })
}

/// Checks that `path` is a readable, non-empty file and returns its absolute path.
fn check_readable_file(path: &Path, what: &str) -> Result<PathBuf> {
    let absolute = fs::canonicalize(path).map_err(|_| {
        Error::InvalidInput(format!(
            "the {what} `{}` does not exist: check the path",
            path.display()
        ))
    })?;
    let meta = fs::metadata(&absolute)
        .map_err(|e| Error::io(format!("could not read the {what} `{}`", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "the {what} `{}` is not a file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Err(Error::InvalidInput(format!(
            "the {what} `{}` is empty",
            path.display()
        )));
    }
    File::open(&absolute).map_err(|_| {
        Error::InvalidInput(format!(
            "you have no permission to read the {what} `{}`",
            path.display()
        ))
    })?;
    Ok(absolute)
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Syncs every file and folder below `dir`, so a rename that publishes it is durable.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Removes temporary files left in a bundle by an interrupted [`atomic_write`] of its
/// configuration or [`replace_with_empty_overlay`] of a disk.
fn remove_temporaries(bundle: &Path) {
    if let Ok(entries) = fs::read_dir(bundle) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&format!(".{CONFIG_FILE}.tmp-")) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(bundle.join("disks")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(REPAIR_MARK) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Marks the temporary file of [`replace_with_empty_overlay`] (removed by recovery).
const REPAIR_MARK: &str = ".repair-";

/// The backing path that every overlay over a base names: relative, so it resolves the same
/// from `vms/X.vivm/disks/` and from `bases/Y.vivbase/disks/`, and always this short.
fn base_backing_path(base: Uuid, file: &str) -> String {
    format!("../../../bases/{base}.{BASE_EXTENSION}/disks/{file}")
}

/// Replaces the empty qcow2 overlay `disk` by a new empty overlay of `size` bytes over
/// `backing`, with one rename. The caller makes sure the two read the same (see
/// [`Library::unchanged_base`]) and that nothing has the disk open.
fn replace_with_empty_overlay(
    disk: &Path,
    backing: &str,
    format: DiskFormat,
    size: u64,
) -> Result<()> {
    if !disk::qcow2_is_empty(disk)? {
        return Err(Error::InvalidInput(format!(
            "`{}` holds data of its own",
            disk.display()
        )));
    }
    let (Some(dir), Some(name)) = (disk.parent(), disk.file_name()) else {
        return Err(Error::InvalidInput(format!(
            "`{}` is not a disk file",
            disk.display()
        )));
    };
    let temporary = dir.join(format!(
        ".{}{REPAIR_MARK}{}",
        name.to_string_lossy(),
        Uuid::new_v4().simple()
    ));
    disk::create_overlay(&temporary, backing, format, size)?;
    let renamed = fs::rename(&temporary, disk).and_then(|()| sync_dir(dir));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&temporary);
        return Err(Error::io(
            format!("could not replace `{}`", disk.display()),
            e,
        ));
    }
    Ok(())
}

/// The file that the qcow2 overlay `disk` names as its backing file, resolved lexically from
/// the overlay's folder (as [`Library::collect_unused_bases`] does); `None` without one.
fn backing_target(disk: &Path) -> Result<Option<PathBuf>> {
    let Some(backing) = disk::backing_file(disk)? else {
        return Ok(None);
    };
    Ok(disk.parent().map(|dir| normalize(&dir.join(backing))))
}

/// Resolves `.` and `..` components without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The `bases/<id>.vivbase` folder that `file` lies in, if it lies in one.
fn base_folder_of(bases_dir: &Path, file: &Path) -> Option<PathBuf> {
    let bases = normalize(bases_dir);
    let rest = file.strip_prefix(&bases).ok()?;
    let first = rest.components().next()?;
    Some(bases.join(first))
}

fn make_writable_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                make_writable_tree(&path);
            } else if let Ok(meta) = fs::metadata(&path) {
                let mut perms = meta.permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perms.set_readonly(false);
                let _ = fs::set_permissions(&path, perms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::NoProgress;
    use std::os::unix::fs::FileExt;

    fn library() -> (tempfile::TempDir, Library) {
        let dir = tempfile::tempdir().unwrap();
        let library = Library::open(dir.path()).unwrap();
        (dir, library)
    }

    fn new_vm(library: &Library, name: &str) -> VmConfig {
        let kernel = library.root().join("kernel");
        fs::write(&kernel, b"kernel").unwrap();
        let mut spec = NewVm::with_defaults(
            name,
            BootSource::Linux {
                kernel,
                initrd: None,
                cmdline: String::new(),
            },
        );
        spec.disk = NewDisk::Blank {
            size: 64 << 20,
            format: DiskFormat::Raw,
        };
        let config = library.create(&spec, &NoProgress).unwrap().config;
        let disk = library.bundle_path(name).join(&config.disks[0].file);
        let file = OpenOptions::new().write(true).open(disk).unwrap();
        file.write_all_at(b"precious data", 0).unwrap();
        config
    }

    fn read_disk_start(library: &Library, name: &str) -> Vec<u8> {
        let config = read_config(&library.bundle_path(name)).unwrap();
        let mut buf = vec![0u8; 13];
        File::open(library.bundle_path(name).join(&config.disks[0].file))
            .unwrap()
            .read_exact_at(&mut buf, 0)
            .unwrap();
        buf
    }

    fn count(dir: PathBuf) -> usize {
        fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
    }

    /// A VM booting `kernel` (whose contents are `head`), with `arch` asked for.
    fn kernel_vm(
        library: &Library,
        name: &str,
        head: &[u8],
        arch: Option<Arch>,
    ) -> Result<VmConfig> {
        let kernel = library.root().join(format!("{name}.kernel"));
        fs::write(&kernel, head).unwrap();
        let mut spec = NewVm::with_defaults(
            name,
            BootSource::Linux {
                kernel,
                initrd: None,
                cmdline: String::new(),
            },
        );
        spec.arch = arch;
        spec.disk = NewDisk::None;
        library
            .create(&spec, &NoProgress)
            .map(|outcome| outcome.config)
    }

    fn arm64_image() -> Vec<u8> {
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        image
    }

    fn bzimage() -> Vec<u8> {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x236] = 1;
        image
    }

    #[test]
    fn a_new_vm_gets_the_machine_its_kernel_is_built_for() {
        let (_dir, library) = library();
        let arm = kernel_vm(&library, "arm", &arm64_image(), None).unwrap();
        assert_eq!(arm.arch, Arch::Aarch64);
        assert_eq!(
            read_config(&library.bundle_path("arm")).unwrap().arch,
            Arch::Aarch64
        );
        let pc = kernel_vm(&library, "pc", &bzimage(), None).unwrap();
        assert_eq!(pc.arch, Arch::X86_64);
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[5] = 1;
        elf[18] = 0x3E;
        assert_eq!(
            kernel_vm(&library, "elf", &elf, None).unwrap().arch,
            Arch::X86_64
        );
        // A header that says nothing: the architecture asked for, else this computer's.
        let unknown = b"not a kernel header".to_vec();
        let vm = kernel_vm(&library, "plain", &unknown, None).unwrap();
        assert_eq!(Some(vm.arch), Arch::host_machine());
        let vm = kernel_vm(&library, "chosen", &unknown, Some(Arch::Aarch64)).unwrap();
        assert_eq!(vm.arch, Arch::Aarch64);
        // i686 guests are PCs.
        let vm = kernel_vm(&library, "old", &unknown, Some(Arch::X86)).unwrap();
        assert_eq!(vm.arch, Arch::X86_64);
        // A kernel of another machine than the one asked for, or one of no machine: refused,
        // nothing made.
        let e = kernel_vm(&library, "mixed", &arm64_image(), Some(Arch::X86_64))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built for aarch64") && e.contains("x86_64"),
            "{e}"
        );
        let mut riscv = vec![0u8; 64];
        riscv[56..60].copy_from_slice(b"RSC\x05");
        let e = kernel_vm(&library, "riscv", &riscv, None).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("no riscv64 machine"), "{e}");
        let e = kernel_vm(&library, "riscv2", &unknown, Some(Arch::Riscv64)).unwrap_err();
        assert!(e.to_string().contains("no riscv64 machine"), "{e}");
        for name in ["mixed", "riscv", "riscv2"] {
            assert!(library.get(name).is_err(), "{name}");
        }
        assert_eq!(count(library.staging_dir()), 0);
    }

    #[test]
    fn a_vm_of_another_machine_is_cloned_renamed_changed_and_deleted_but_keeps_its_machine() {
        let (_dir, library) = library();
        kernel_vm(&library, "arm", &arm64_image(), None).unwrap();
        let clone = library
            .clone_vm("arm", "arm copy", CloneMode::Full, &NoProgress)
            .unwrap();
        assert_eq!(clone.config.arch, Arch::Aarch64);
        library.rename("arm copy", "arm two").unwrap();
        let changed = library
            .update("arm two", |config| {
                config.cpus = 3;
                config.arch = Arch::X86_64;
                Ok(())
            })
            .unwrap();
        assert_eq!((changed.cpus, changed.arch), (3, Arch::Aarch64));
        // Its kernel can be replaced by another arm64 one, not by an x86 one.
        let x86 = library.root().join("bzImage");
        fs::write(&x86, bzimage()).unwrap();
        let e = library
            .update("arm two", |config| {
                config.boot = BootSource::Linux {
                    kernel: x86.clone(),
                    initrd: None,
                    cmdline: String::new(),
                };
                Ok(())
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built for x86_64") && e.contains("an aarch64 machine"),
            "{e}"
        );
        library.delete("arm two").unwrap();
        library.delete("arm").unwrap();
        assert!(library.list().unwrap().is_empty());
    }

    #[test]
    fn a_linked_clone_interrupted_before_its_commit_point_is_undone() {
        let (_dir, library) = library();
        let parent = new_vm(&library, "parent");
        let (journal, _) = library
            .plan_linked_clone("parent", &parent, "child")
            .unwrap();
        library
            .prepare_linked_clone(&library.bundle_path("parent"), &parent, &journal, "child")
            .unwrap();
        // "Crash" here: bases, overlays and the staged clone exist; the parent's vm.toml has
        // not switched yet.
        assert_eq!(count(library.bases_dir()), 1);
        let library = Library::open(library.root()).unwrap();
        let names: Vec<String> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["parent"]);
        assert_eq!(read_config(&library.bundle_path("parent")).unwrap(), parent);
        assert_eq!(read_disk_start(&library, "parent"), b"precious data");
        assert_eq!(count(library.bases_dir()), 0);
        assert_eq!(count(library.staging_dir()), 0);
        assert_eq!(count(library.journal_dir()), 0);
        assert_eq!(count(library.bundle_path("parent").join("disks")), 1);
    }

    #[test]
    fn a_linked_clone_interrupted_after_its_commit_point_is_finished() {
        let (_dir, library) = library();
        let parent = new_vm(&library, "parent");
        let (journal, _) = library
            .plan_linked_clone("parent", &parent, "child")
            .unwrap();
        let (parent_after, _) = library
            .prepare_linked_clone(&library.bundle_path("parent"), &parent, &journal, "child")
            .unwrap();
        atomic_write(
            &library.bundle_path("parent").join(CONFIG_FILE),
            parent_after.to_toml().as_bytes(),
        )
        .unwrap();
        // "Crash" right after the commit point.
        let library = Library::open(library.root()).unwrap();
        let names: Vec<String> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["child", "parent"]);
        let parent_now = read_config(&library.bundle_path("parent")).unwrap();
        assert_eq!(parent_now.disks[0].format, DiskFormat::Qcow2);
        assert!(parent_now.disks[0].base.is_some());
        assert_eq!(
            count(library.bundle_path("parent").join("disks")),
            1,
            "old name gone"
        );
        assert_eq!(count(library.bases_dir()), 1);
        assert_eq!(count(library.staging_dir()), 0);
        assert_eq!(count(library.journal_dir()), 0);
    }

    /// The first `len` bytes the guest of VM `name` reads from its first disk.
    fn guest_reads(library: &Library, name: &str, len: usize) -> Vec<u8> {
        let config = read_config(&library.bundle_path(name)).unwrap();
        let path = library.bundle_path(name).join(&config.disks[0].file);
        let mut buf = vec![0u8; len];
        match config.disks[0].format {
            DiskFormat::Raw => File::open(path)
                .unwrap()
                .read_exact_at(&mut buf, 0)
                .unwrap(),
            DiskFormat::Qcow2 => disk::Qcow2Disk::open(&path, true)
                .unwrap()
                .read_at(&mut buf, 0)
                .unwrap(),
        }
        buf
    }

    /// Writes `data` at the start of VM `name`'s first disk, as its guest would.
    fn guest_writes(library: &Library, name: &str, data: &[u8]) {
        let config = read_config(&library.bundle_path(name)).unwrap();
        let path = library.bundle_path(name).join(&config.disks[0].file);
        let disk = disk::Qcow2Disk::open(&path, false).unwrap();
        disk.write_at(data, 0).unwrap();
        disk.flush().unwrap();
    }

    fn first_disk(library: &Library, name: &str) -> PathBuf {
        let config = read_config(&library.bundle_path(name)).unwrap();
        library.bundle_path(name).join(&config.disks[0].file)
    }

    fn linked(library: &Library, parent: &str, name: &str) -> VmConfig {
        library
            .clone_vm(parent, name, CloneMode::Linked, &NoProgress)
            .unwrap()
            .config
    }

    /// A backing path as every overlay over a base must name it.
    fn assert_normalised(backing: &str) {
        let rest = backing
            .strip_prefix("../../../bases/")
            .unwrap_or_else(|| panic!("not normalised: {backing}"));
        let (folder, file) = rest.split_once(".vivbase/disks/").unwrap();
        Uuid::parse_str(folder).unwrap();
        assert!(!file.contains('/'), "{backing}");
        assert!(backing.len() <= 100, "{backing}");
    }

    #[test]
    fn linked_clones_of_an_unchanged_vm_share_one_base() {
        let (_dir, library) = library();
        new_vm(&library, "parent");
        let first = linked(&library, "parent", "c0");
        assert_eq!(count(library.bases_dir()), 1);
        let parent_disk = first_disk(&library, "parent");
        let parent_config = read_config(&library.bundle_path("parent")).unwrap();
        for i in 1..100 {
            let clone = linked(&library, "parent", &format!("c{i}"));
            assert_eq!(clone.disks[0].base, first.disks[0].base);
        }
        assert_eq!(count(library.bases_dir()), 1, "one base for all clones");
        assert_eq!(
            read_config(&library.bundle_path("parent")).unwrap(),
            parent_config,
            "the parent keeps its empty overlay"
        );
        assert_eq!(first_disk(&library, "parent"), parent_disk);
        for name in ["parent", "c1", "c99"] {
            let disk = first_disk(&library, name);
            assert_eq!(disk::backing_chain(&disk).unwrap().len(), 2, "{name}");
            assert_normalised(&disk::backing_file(&disk).unwrap().unwrap());
            assert_eq!(guest_reads(&library, name, 13), b"precious data");
        }
        // A clone of a clone that never ran reads the same base too.
        linked(&library, "c5", "grandchild");
        assert_eq!(count(library.bases_dir()), 1);
        let disk = first_disk(&library, "grandchild");
        assert_eq!(disk::backing_chain(&disk).unwrap().len(), 2);
    }

    #[test]
    fn a_changed_vm_gets_a_new_base_and_chains_grow_with_changes_only() {
        let (_dir, library) = library();
        new_vm(&library, "parent");
        linked(&library, "parent", "before");
        guest_writes(&library, "parent", b"changed data!");
        linked(&library, "parent", "after");
        assert_eq!(count(library.bases_dir()), 2, "the change made a new base");
        assert_eq!(guest_reads(&library, "before", 13), b"precious data");
        assert_eq!(guest_reads(&library, "after", 13), b"changed data!");
        assert_eq!(guest_reads(&library, "parent", 13), b"changed data!");
        // Ten rounds of (change, three clones): the depth follows the changes.
        for round in 0..10 {
            guest_writes(&library, "parent", format!("round {round:>6}!").as_bytes());
            for i in 0..3 {
                linked(&library, "parent", &format!("r{round}-{i}"));
            }
        }
        assert_eq!(count(library.bases_dir()), 12);
        let parent_chain = disk::backing_chain(&first_disk(&library, "parent")).unwrap();
        assert_eq!(
            parent_chain.len(),
            13,
            "raw base + 11 changed overlays + the top"
        );
        assert_eq!(guest_reads(&library, "r9-2", 13), b"round      9!");
        assert_eq!(guest_reads(&library, "r4-0", 13), b"round      4!");
        for file in parent_chain.iter().skip(1) {
            if let Some(backing) = disk::backing_file(file).unwrap() {
                assert_normalised(&backing);
            }
        }
        // Deleting clones keeps every base some chain still reaches.
        for round in 0..10 {
            for i in 0..3 {
                library.delete(&format!("r{round}-{i}")).unwrap();
            }
        }
        assert_eq!(
            count(library.bases_dir()),
            12,
            "the parent's chain needs them all"
        );
        assert_eq!(guest_reads(&library, "parent", 13), b"round      9!");
        library.delete("parent").unwrap();
        assert_eq!(
            count(library.bases_dir()),
            2,
            "the bases of `before` and `after`"
        );
        library.delete("after").unwrap();
        assert_eq!(count(library.bases_dir()), 1);
        assert_eq!(guest_reads(&library, "before", 13), b"precious data");
    }

    /// A linked clone exactly as Vivarium made them before bases were reused: the parent's
    /// current disk becomes a new base every time, whether or not it changed, and keeps the
    /// backing name it has.
    fn linked_clone_making_a_new_base(library: &Library, parent: &str, name: &str) {
        let bundle = library.bundle_path(parent);
        let mut config = read_config(&bundle).unwrap();
        let disk = config.disks[0].clone();
        let current = bundle.join(&disk.file);
        let file_name = current.file_name().unwrap().to_string_lossy().into_owned();
        let base_id = Uuid::new_v4();
        let base_dir = library
            .bases_dir()
            .join(format!("{base_id}.{BASE_EXTENSION}/disks"));
        fs::create_dir_all(&base_dir).unwrap();
        fs::hard_link(&current, base_dir.join(&file_name)).unwrap();
        let backing = base_backing_path(base_id, &file_name);
        let overlay = PathBuf::from(format!(
            "disks/disk0-{}.qcow2",
            &Uuid::new_v4().simple().to_string()[..8]
        ));
        disk::create_overlay(&bundle.join(&overlay), &backing, disk.format, disk.size).unwrap();
        let clone_bundle = library.bundle_path(name);
        fs::create_dir_all(clone_bundle.join("disks")).unwrap();
        disk::create_overlay(
            &clone_bundle.join("disks/disk0.qcow2"),
            &backing,
            disk.format,
            disk.size,
        )
        .unwrap();
        let mut clone = Library::clone_config(&config, name);
        clone.disks[0] = DiskConfig {
            file: "disks/disk0.qcow2".into(),
            format: DiskFormat::Qcow2,
            base: Some(base_id),
            ..disk.clone()
        };
        atomic_write(&clone_bundle.join(CONFIG_FILE), clone.to_toml().as_bytes()).unwrap();
        config.disks[0] = DiskConfig {
            file: overlay,
            format: DiskFormat::Qcow2,
            base: Some(base_id),
            ..disk
        };
        atomic_write(&bundle.join(CONFIG_FILE), config.to_toml().as_bytes()).unwrap();
        fs::remove_file(current).unwrap();
    }

    #[test]
    fn libraries_with_a_base_per_clone_keep_working_and_are_shortened_when_cloned() {
        let (_dir, library) = library();
        new_vm(&library, "p");
        // 70 clones made the old way: the parent's chain is 71 files deep, past what a
        // qcow2 library that joins backing names without resolving them can open.
        for i in 0..70 {
            linked_clone_making_a_new_base(&library, "p", &format!("old{i}"));
        }
        assert_eq!(count(library.bases_dir()), 70);
        let deep = disk::backing_chain(&first_disk(&library, "p")).unwrap();
        assert_eq!(deep.len(), 71);
        let library = Library::open(library.root()).unwrap();
        for name in ["p", "old0", "old69"] {
            assert_eq!(guest_reads(&library, name, 13), b"precious data", "{name}");
        }
        // The next clone reuses the lowest base (all above it are empty overlays), and the
        // parent's overlay is pointed straight at it.
        let clone = linked(&library, "p", "new");
        let parent_disk = first_disk(&library, "p");
        assert_eq!(disk::backing_chain(&parent_disk).unwrap().len(), 2);
        assert_normalised(&disk::backing_file(&parent_disk).unwrap().unwrap());
        let new_disk = first_disk(&library, "new");
        assert_eq!(disk::backing_chain(&new_disk).unwrap().len(), 2);
        let parent_config = read_config(&library.bundle_path("p")).unwrap();
        assert_eq!(parent_config.disks[0].base, clone.disks[0].base);
        assert_eq!(guest_reads(&library, "p", 13), b"precious data");
        assert_eq!(guest_reads(&library, "new", 13), b"precious data");
        // The old clones still need their bases; once they are gone, one base remains.
        assert_eq!(count(library.bases_dir()), 70);
        assert_eq!(guest_reads(&library, "old69", 13), b"precious data");
        for i in 0..70 {
            library.delete(&format!("old{i}")).unwrap();
        }
        assert_eq!(count(library.bases_dir()), 1);
        guest_writes(&library, "new", b"the new clone");
        assert_eq!(guest_reads(&library, "p", 13), b"precious data");
    }

    #[test]
    fn a_changed_disk_over_a_chain_of_empty_bases_names_the_lowest_when_it_becomes_a_base() {
        let (_dir, library) = library();
        new_vm(&library, "p");
        linked(&library, "p", "first");
        guest_writes(&library, "p", b"second state!");
        linked(&library, "p", "second");
        // From here on, old-style clones: 60 empty qcow2 bases over the qcow2 base with
        // "second state!", itself over the raw base.
        for i in 0..60 {
            linked_clone_making_a_new_base(&library, "p", &format!("old{i}"));
        }
        assert_eq!(
            disk::backing_chain(&first_disk(&library, "p"))
                .unwrap()
                .len(),
            63
        );
        guest_writes(&library, "p", b"third state!!");
        let third = linked(&library, "p", "third");
        // The changed disk became a base naming the lowest qcow2 base with its contents, so
        // the chain is: new overlay, that base, the "second state!" base, the raw base.
        for name in ["p", "third"] {
            let disk = first_disk(&library, name);
            let chain = disk::backing_chain(&disk).unwrap();
            assert_eq!(chain.len(), 4, "{name}: {chain:?}");
            for file in &chain[..3] {
                assert_normalised(&disk::backing_file(file).unwrap().unwrap());
            }
            assert_eq!(guest_reads(&library, name, 13), b"third state!!");
        }
        assert_eq!(
            third.disks[0].base,
            read_config(&library.bundle_path("p")).unwrap().disks[0].base
        );
        for name in ["first", "old0", "old59"] {
            let expected: &[u8] = if name == "first" {
                b"precious data"
            } else {
                b"second state!"
            };
            assert_eq!(guest_reads(&library, name, 13), expected, "{name}");
        }
        assert_eq!(guest_reads(&library, "second", 13), b"second state!");
        for i in 0..60 {
            library.delete(&format!("old{i}")).unwrap();
        }
        assert_eq!(count(library.bases_dir()), 3, "raw, second, third");
        assert_eq!(guest_reads(&library, "third", 13), b"third state!!");
    }

    #[test]
    fn a_full_clone_of_a_linked_clone_of_a_large_disk_is_sparse_and_fast() {
        let (_dir, library) = library();
        let kernel = library.root().join("kernel");
        fs::write(&kernel, b"kernel").unwrap();
        let mut spec = NewVm::with_defaults(
            "big",
            BootSource::Linux {
                kernel,
                initrd: None,
                cmdline: String::new(),
            },
        );
        spec.disk = NewDisk::Blank {
            size: 2 << 40,
            format: DiskFormat::Raw,
        };
        library.create(&spec, &NoProgress).unwrap();
        let raw = OpenOptions::new()
            .write(true)
            .open(first_disk(&library, "big"))
            .unwrap();
        raw.write_all_at(&[7u8; 2 << 20], 1 << 40).unwrap();
        drop(raw);
        linked(&library, "big", "linked");
        guest_writes(&library, "linked", &[9u8; 1 << 20]);
        let started = std::time::Instant::now();
        library
            .clone_vm("linked", "full", CloneMode::Full, &NoProgress)
            .unwrap();
        let took = started.elapsed();
        assert!(took.as_secs() < 30, "the full clone took {took:?}");
        let full = first_disk(&library, "full");
        assert_eq!(disk::backing_file(&full).unwrap(), None);
        assert_eq!(fs::metadata(&full).unwrap().len(), 2 << 40);
        let allocated = crate::fsutil::allocated_bytes(&full).unwrap();
        assert!(
            (3 << 20..=6 << 20).contains(&allocated),
            "{allocated} bytes for 3 MiB of data"
        );
        let mut buf = vec![0u8; 2 << 20];
        File::open(&full)
            .unwrap()
            .read_exact_at(&mut buf, 1 << 40)
            .unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        assert_eq!(guest_reads(&library, "full", 4), [9u8; 4]);
    }

    #[test]
    fn a_linked_clone_reusing_a_base_interrupted_before_its_rename_is_undone() {
        let (_dir, library) = library();
        new_vm(&library, "parent");
        linked(&library, "parent", "first");
        let parent = read_config(&library.bundle_path("parent")).unwrap();
        let (journal, _) = library
            .plan_linked_clone("parent", &parent, "second")
            .unwrap();
        assert_eq!(journal.reused.len(), 1, "the parent did not change");
        assert!(!journal.changes_parent());
        library
            .prepare_linked_clone(&library.bundle_path("parent"), &parent, &journal, "second")
            .unwrap();
        // "Crash": the clone is staged, not yet in the library.
        let library = Library::open(library.root()).unwrap();
        let names: Vec<String> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["first", "parent"]);
        assert_eq!(read_config(&library.bundle_path("parent")).unwrap(), parent);
        assert_eq!(count(library.bases_dir()), 1, "the reused base is kept");
        assert_eq!(count(library.staging_dir()), 0);
        assert_eq!(count(library.journal_dir()), 0);
        assert_eq!(guest_reads(&library, "parent", 13), b"precious data");
        assert_eq!(guest_reads(&library, "first", 13), b"precious data");
    }

    #[test]
    fn a_linked_clone_reusing_a_base_interrupted_after_its_rename_is_kept() {
        let (_dir, library) = library();
        new_vm(&library, "parent");
        linked(&library, "parent", "first");
        let parent = read_config(&library.bundle_path("parent")).unwrap();
        let (journal, _) = library
            .plan_linked_clone("parent", &parent, "second")
            .unwrap();
        library
            .prepare_linked_clone(&library.bundle_path("parent"), &parent, &journal, "second")
            .unwrap();
        // The commit point of a clone that reuses every base: its bundle enters the library.
        fs::rename(
            library
                .staging_dir()
                .join(journal.clone_staging.to_string())
                .join("bundle"),
            library.bundle_path("second"),
        )
        .unwrap();
        let library = Library::open(library.root()).unwrap();
        let names: Vec<String> = library
            .list()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .collect();
        assert_eq!(names, ["first", "parent", "second"]);
        assert_eq!(read_config(&library.bundle_path("parent")).unwrap(), parent);
        assert_eq!(count(library.bases_dir()), 1);
        assert_eq!(count(library.staging_dir()), 0);
        assert_eq!(count(library.journal_dir()), 0);
        assert_eq!(guest_reads(&library, "second", 13), b"precious data");
    }

    #[test]
    fn a_journal_from_before_bases_were_reused_still_recovers() {
        let (_dir, library) = library();
        let parent = new_vm(&library, "parent");
        let (journal, path) = library
            .plan_linked_clone("parent", &parent, "child")
            .unwrap();
        library
            .prepare_linked_clone(&library.bundle_path("parent"), &parent, &journal, "child")
            .unwrap();
        // Such a journal has no `reused` key.
        let text = fs::read_to_string(&path).unwrap();
        let old: String = text
            .lines()
            .filter(|line| !line.starts_with("reused"))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_ne!(old, text);
        fs::write(&path, old).unwrap();
        let library = Library::open(library.root()).unwrap();
        assert_eq!(read_config(&library.bundle_path("parent")).unwrap(), parent);
        assert_eq!(count(library.bases_dir()), 0);
        assert_eq!(count(library.journal_dir()), 0);
        assert_eq!(guest_reads(&library, "parent", 13), b"precious data");
    }

    #[test]
    fn a_repair_interrupted_before_its_rename_leaves_no_file() {
        let (_dir, library) = library();
        new_vm(&library, "parent");
        linked(&library, "parent", "first");
        let disks = library.bundle_path("parent").join("disks");
        let leftover = disks.join(format!(".disk0-x.qcow2{REPAIR_MARK}0123"));
        fs::write(&leftover, b"half-made overlay").unwrap();
        let library = Library::open(library.root()).unwrap();
        assert!(!leftover.exists());
        assert_eq!(count(disks), 1);
        assert_eq!(guest_reads(&library, "parent", 13), b"precious data");
    }

    #[test]
    fn an_interrupted_rename_is_completed_from_the_folder_name() {
        let (_dir, library) = library();
        new_vm(&library, "old");
        fs::rename(library.bundle_path("old"), library.bundle_path("new")).unwrap();
        let library = Library::open(library.root()).unwrap();
        let config = read_config(&library.bundle_path("new")).unwrap();
        assert_eq!(config.name, "new");
    }

    #[test]
    fn leftovers_of_dead_operations_are_cleaned_but_live_ones_are_kept() {
        let (_dir, library) = library();
        new_vm(&library, "vm");
        let dead = library.staging_dir().join("dead");
        fs::create_dir_all(dead.join("bundle")).unwrap();
        fs::write(dead.join("reservation"), "ghost").unwrap();
        fs::create_dir_all(library.trash_dir().join("half-deleted/disks")).unwrap();
        fs::write(
            library
                .bundle_path("vm")
                .join(format!(".{CONFIG_FILE}.tmp-42")),
            "partial",
        )
        .unwrap();
        let live = library.begin_staging("reserved").unwrap();
        let library2 = Library::open(library.root()).unwrap();
        assert!(!dead.exists());
        assert_eq!(count(library2.trash_dir()), 0);
        assert_eq!(
            count(library2.bundle_path("vm")),
            4,
            "vm.toml, disks, state, logs"
        );
        assert!(live.dir.exists(), "a live operation's staging stays");
        // Its name is reserved while it lives, free again after.
        assert!(matches!(
            library2.check_name_free("reserved"),
            Err(Error::AlreadyExists(_))
        ));
        library2.check_name_free("ghost").unwrap();
        drop(live);
        library2.check_name_free("reserved").unwrap();
    }

    #[test]
    fn a_failed_full_clone_leaves_nothing() {
        let (_dir, library) = library();
        new_vm(&library, "vm");
        struct Cancel;
        impl Progress for Cancel {
            fn update(&self, _: u64, _: u64) {}
            fn cancelled(&self) -> bool {
                true
            }
        }
        let result = library.clone_vm("vm", "copy", CloneMode::Full, &Cancel);
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert!(!library.bundle_path("copy").exists());
        assert_eq!(count(library.staging_dir()), 0);
        library.check_name_free("copy").unwrap();
    }
}
