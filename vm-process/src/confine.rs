//! What the VM process may reach on the file system while its guest runs (Landlock).
//!
//! A guest that takes over the VM process gets its authority. Before the machine is built (so
//! every thread it starts inherits the restriction), the process restricts itself to what one
//! VM needs: its own bundle (disks, variable store, logs, run records), the files it reads
//! (the base images of its disk chains, its ISO, the firmware, a kernel and initrd), the
//! devices it opens (`/dev/kvm`, `/dev/urandom`, `/dev/null`), and in its runtime folder the
//! right to create its control socket and to remove its own files there at the end. Nothing
//! else on the file system can be opened: not `~/.ssh`, not another VM's disks or display.
//! A disc inserted later is opened by the CLI or the app and handed over the control socket
//! as an open file (see `vivarium_core::control`), so the drive never needs a path.
//!
//! Landlock restricts the calling thread and the threads and processes it starts afterwards,
//! so [`confine_filesystem`] runs on the thread that builds the machine, after passt was
//! started (passt is confined by its own means) and before any machine thread exists.
//!
//! On kernels without Landlock (before 5.13, or with it left out of the boot's LSM list) the
//! VM runs unconfined with a warning in `vm.log`; an older Landlock gives what it has.
//!
//! What remains reachable is said in the doc of [`Reach`]. Connecting to a Unix socket by its
//! path is not a file access Landlock controls on the kernels this targets, so the control
//! sockets of other VMs stay connectable; the runtime folder grants no read or write of files
//! in it, so their display files are not.

use std::path::{Path, PathBuf};

use vivarium_core::backend::{BootSpec, FirmwareSpec, MachineSpec};

/// The host's hypervisor device.
#[cfg(target_os = "linux")]
const KVM_DEVICE: &str = "/dev/kvm";

/// Devices every VM process reads or writes: entropy for virtio-rng and the standard streams
/// put on `/dev/null` when it detaches.
const COMMON_DEVICES: &[&str] = &["/dev/urandom", "/dev/null"];

/// Host files the machine reads while it is built: the host's memory size (for the "more
/// memory than the host has" check).
const HOST_FILES: &[&str] = &["/proc/meminfo"];

/// Where the VM process may go once confined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reach {
    /// Folders it may read, write, create and remove anything beneath: its bundle.
    pub own: Vec<PathBuf>,
    /// Files it may only read: base images, the ISO, firmware, kernel and initrd, and the few
    /// host files in [`HOST_FILES`].
    pub read: Vec<PathBuf>,
    /// Device files it may open for reading, writing and ioctls.
    pub devices: Vec<PathBuf>,
    /// Folders where it may only create Unix sockets and remove files: its runtime folder,
    /// for its control socket and, at the end, its display file and socket.
    pub sockets: Vec<PathBuf>,
}

impl Reach {
    /// What the VM whose bundle is `bundle`, built from `spec`, needs, with its runtime files
    /// (`socket`, the control socket, next to its display file) in `socket`'s folder. Each
    /// qcow2 disk's backing chain is followed, so its base images are readable; a chain that
    /// cannot be followed is left out here (opening the disk then fails with the real reason).
    pub fn for_machine(bundle: &Path, spec: &MachineSpec, socket: &Path) -> Reach {
        let mut reach = Reach {
            own: vec![bundle.to_path_buf()],
            ..Reach::default()
        };
        for disk in &spec.disks {
            match vivarium_core::disk::backing_chain(&disk.path) {
                Ok(chain) => reach.read.extend(chain),
                Err(_) => reach.read.push(disk.path.clone()),
            }
        }
        if let Some(image) = spec.cdrom.as_ref().and_then(|c| c.image.clone()) {
            reach.read.push(image);
        }
        match &spec.boot {
            BootSpec::Linux { kernel, initrd, .. } => {
                reach.read.push(kernel.clone());
                reach.read.extend(initrd.clone());
            }
            BootSpec::Firmware { firmware, .. } => match firmware {
                FirmwareSpec::Bios { image, vga_rom } => {
                    reach.read.push(image.clone());
                    reach.read.extend(vga_rom.clone());
                }
                FirmwareSpec::Uefi { code, vars } => {
                    reach.read.push(code.clone());
                    // The variable store is in the bundle; one kept elsewhere is written too.
                    if !vars.starts_with(bundle) {
                        reach.own.push(vars.clone());
                    }
                }
            },
            BootSpec::RealModeImage { .. } => {}
        }
        reach.read.extend(HOST_FILES.iter().map(PathBuf::from));
        #[cfg(target_os = "linux")]
        reach.devices.push(PathBuf::from(KVM_DEVICE));
        reach
            .devices
            .extend(COMMON_DEVICES.iter().map(PathBuf::from));
        if let Some(dir) = socket.parent() {
            reach.sockets.push(dir.to_path_buf());
        }
        reach.read.sort();
        reach.read.dedup();
        reach
    }
}

/// How far the confinement took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confined {
    /// Every rule is enforced.
    Fully,
    /// The kernel's Landlock is older than the rules: what it knows is enforced (the
    /// rights it lacks stay open), as `why` says.
    Partly {
        /// What is not enforced.
        why: String,
    },
    /// Nothing is enforced (no Landlock in this kernel, or not on this platform).
    Not {
        /// Why.
        why: String,
    },
}

/// Why the confinement could not be set up (a rule the kernel refused, a file that could
/// not be opened to be named in a rule).
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// A path of the reach could not be opened.
    #[error("could not open `{path}` to allow it: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Landlock refused the ruleset or the restriction.
    #[error("Landlock refused the VM process's rules: {0}")]
    Landlock(String),
}

/// Restricts this thread, and every thread and process it starts from now on, to `reach`.
/// Paths of the reach that do not exist are skipped (what is not there cannot be opened
/// later either, except by creating it, which only the bundle allows).
#[cfg(target_os = "linux")]
pub fn confine_filesystem(reach: &Reach) -> Result<Confined, ConfineError> {
    use landlock::{
        ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
        RulesetStatus,
    };

    // The newest ABI whose rights this code names; an older kernel gets what it has.
    let abi = ABI::V5;
    let landlock = |e: landlock::RulesetError| ConfineError::Landlock(e.to_string());
    let open = |path: &Path| -> Result<Option<PathFd>, ConfineError> {
        match PathFd::new(path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) => {
                if path.exists() {
                    Err(ConfineError::Open {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    })
                } else {
                    Ok(None)
                }
            }
        }
    };
    let file_read = AccessFs::ReadFile;
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
    let sockets = AccessFs::MakeSock | AccessFs::RemoveFile;
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock)?
        .create()
        .map_err(landlock)?;
    for path in &reach.own {
        if let Some(fd) = open(path)? {
            let access = if path.is_dir() {
                AccessFs::from_all(abi)
            } else {
                AccessFs::from_file(abi)
            };
            ruleset = ruleset
                .add_rule(PathBeneath::new(fd, access))
                .map_err(landlock)?;
        }
    }
    for (paths, access) in [
        (&reach.read, file_read.into()),
        (&reach.devices, device),
        (&reach.sockets, sockets),
    ] {
        for path in paths {
            if let Some(fd) = open(path)? {
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(landlock)?;
            }
        }
    }
    let status = ruleset.restrict_self().map_err(landlock)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Confined::Fully,
        RulesetStatus::PartiallyEnforced => Confined::Partly {
            why: "this kernel's Landlock is older than Vivarium's rules (file truncation, \
                  renames across folders or device ioctls may stay open)"
                .into(),
        },
        RulesetStatus::NotEnforced => Confined::Not {
            why: "this kernel has no Landlock (Linux 5.13 or later with `landlock` in its \
                  `lsm=` list gives it)"
                .into(),
        },
    })
}

/// Landlock is Linux's: elsewhere the VM process runs unconfined (the platform's own sandbox
/// is the next step there).
#[cfg(not(target_os = "linux"))]
pub fn confine_filesystem(_reach: &Reach) -> Result<Confined, ConfineError> {
    Ok(Confined::Not {
        why: "file-system confinement is not built for this platform yet".into(),
    })
}

/// The line `vm.log` gets for `confined`.
pub fn describe(confined: &Result<Confined, ConfineError>) -> String {
    match confined {
        Ok(Confined::Fully) => {
            "confined: the VM process reaches only its bundle, its images and firmware, and \
             its devices (Landlock)"
                .into()
        }
        Ok(Confined::Partly { why }) => format!("confined in part (Landlock): {why}"),
        Ok(Confined::Not { why }) => format!("warning: the VM process is not confined: {why}"),
        Err(e) => format!("warning: the VM process is not confined: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vivarium_core::backend::{CdromSpec, DiskSpec};
    use vivarium_core::config::DiskFormat;

    fn spec(boot: BootSpec, disks: Vec<DiskSpec>, iso: Option<PathBuf>) -> MachineSpec {
        MachineSpec {
            cpus: 1,
            memory_mib: 64,
            boot,
            disks,
            network: None,
            cdrom: iso.map(|image| CdromSpec { image: Some(image) }),
            #[cfg(unix)]
            display: None,
            serial_output: Box::new(std::io::sink()),
        }
    }

    #[test]
    fn the_reach_names_the_bundle_the_images_the_firmware_and_the_runtime_folder() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("vms/a.vivm");
        std::fs::create_dir_all(bundle.join("disks")).unwrap();
        let disk = bundle.join("disks/disk0.raw");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let spec = spec(
            BootSpec::Firmware {
                firmware: FirmwareSpec::Bios {
                    image: "/fw/bios.bin".into(),
                    vga_rom: Some("/fw/vga.bin".into()),
                },
                order: vec![],
                menu: false,
            },
            vec![DiskSpec {
                path: disk.clone(),
                format: DiskFormat::Raw,
                read_only: false,
            }],
            Some("/isos/d.iso".into()),
        );
        let reach = Reach::for_machine(&bundle, &spec, Path::new("/run/v/a-1.sock"));
        assert_eq!(reach.own, vec![bundle.clone()]);
        for file in [
            "/fw/bios.bin",
            "/fw/vga.bin",
            "/isos/d.iso",
            "/proc/meminfo",
        ] {
            assert!(
                reach.read.contains(&PathBuf::from(file)),
                "{file} in {reach:?}"
            );
        }
        assert!(reach.read.contains(&disk));
        assert_eq!(reach.sockets, vec![PathBuf::from("/run/v")]);
        assert!(reach.devices.contains(&PathBuf::from("/dev/urandom")));
        #[cfg(target_os = "linux")]
        assert!(reach.devices.contains(&PathBuf::from("/dev/kvm")));
    }

    #[test]
    fn a_linked_disk_makes_its_base_readable() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("bases/b.vivbase/disks/disk0.raw");
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let bundle = dir.path().join("vms/c.vivm");
        std::fs::create_dir_all(bundle.join("disks")).unwrap();
        let overlay = bundle.join("disks/disk0.qcow2");
        vivarium_core::disk::create_overlay(
            &overlay,
            "../../../bases/b.vivbase/disks/disk0.raw",
            DiskFormat::Raw,
            1 << 20,
        )
        .unwrap();
        let spec = spec(
            BootSpec::RealModeImage {
                code: vec![0xf4],
                load_address: 0x7c00,
            },
            vec![DiskSpec {
                path: overlay.clone(),
                format: DiskFormat::Qcow2,
                read_only: false,
            }],
            None,
        );
        let reach = Reach::for_machine(&bundle, &spec, Path::new("/run/v/c.sock"));
        assert!(
            reach
                .read
                .iter()
                .any(|p| p.canonicalize().ok() == base.canonicalize().ok()),
            "the base is readable: {reach:?}"
        );
    }
}
