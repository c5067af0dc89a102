//! Installer ISOs: what is on one (OS, version, architecture), what a VM for it should get,
//! and how to boot it.
//!
//! [`inspect`] reads an ISO (everything in it is untrusted) and returns an [`IsoInspection`];
//! [`crate::Library::create_from_iso`] turns one into a VM, extracting the installer's kernel
//! and initrd into the bundle when it can be booted directly.

pub mod bootcfg;
pub mod eltorito;
pub mod osdb;
pub mod reader;
pub mod recognise;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use eltorito::{BootCatalogue, Platform};
pub use osdb::{OsFamily, Recommended};
pub use reader::{FileSource, ImageSource, IsoImage, NameScheme};
pub use recognise::{Arch, RecognisedOs};

use crate::config::OsInfo;
use crate::disk::Progress;
use crate::error::Error;

/// What can be wrong with an ISO image (before a path is attached to it).
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// The file has no bytes.
    #[error("it is empty (0 bytes): the download or copy did not finish; get the ISO again")]
    Empty,
    /// The file is not ISO 9660.
    #[error("it is not an ISO 9660 image ({0}): choose an installer's .iso file")]
    NotIso(String),
    /// The file is shorter than its volume says.
    #[error(
        "it is cut short: it has {have} of the {want} bytes its volume needs; download it again"
    )]
    Truncated {
        /// Bytes in the file.
        have: u64,
        /// Bytes the volume descriptor states.
        want: u64,
    },
    /// A structure in the image is inconsistent.
    #[error("it is damaged: {0}; download it again")]
    Corrupt(String),
    /// Reading the file failed.
    #[error("it could not be read: {0}")]
    Read(String),
    /// Writing an extracted file failed.
    #[error("a file taken from it could not be written: {0}")]
    Write(String),
    /// The user cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl IsoError {
    /// This error about the ISO at `path`, as a library error.
    pub fn at(self, path: &Path) -> Error {
        match self {
            IsoError::Cancelled => Error::Cancelled,
            IsoError::Write(why) => Error::io(
                format!("could not extract boot files from `{}`", path.display()),
                std::io::Error::other(why),
            ),
            other => Error::InvalidIso {
                path: path.to_path_buf(),
                why: other.to_string(),
            },
        }
    }
}

/// How a VM created from the ISO boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BootPlan {
    /// Boot the installer's Linux kernel directly, with the ISO as the CD-ROM.
    DirectLinux {
        /// Kernel path on the ISO.
        kernel_path: String,
        /// Initrd paths on the ISO, in load order (joined into one initrd when extracted).
        initrd_paths: Vec<String>,
        /// The entry's command line.
        cmdline: String,
        /// The command line for a VM without a screen: the same, with the console on the
        /// first serial port.
        serial_cmdline: String,
        /// The boot entry's label or title.
        entry: String,
        /// The configuration file the entry is in.
        config_file: String,
    },
    /// The ISO starts from its own boot loader: the VM boots its CD-ROM through the PC
    /// firmware, as a PC does.
    NeedsFirmware {
        /// Why, in words for people.
        reason: String,
        /// The firmware it boots with: BIOS (SeaBIOS) when the ISO has a BIOS boot entry,
        /// UEFI (OVMF) when it boots only through UEFI.
        firmware: crate::config::Firmware,
    },
    /// No VM can be made from this ISO on this computer.
    Refused {
        /// Why, and what to do.
        reason: String,
    },
}

impl BootPlan {
    /// One line for people: how the VM will boot.
    pub fn describe(&self) -> String {
        match self {
            BootPlan::DirectLinux {
                kernel_path,
                initrd_paths,
                entry,
                ..
            } => format!(
                "directly from its Linux kernel {kernel_path}{} (boot entry \"{entry}\"), with the ISO as CD-ROM",
                if initrd_paths.is_empty() {
                    String::new()
                } else {
                    format!(" and initrd {}", initrd_paths.join(" + "))
                }
            ),
            BootPlan::NeedsFirmware { reason, .. } => reason.clone(),
            BootPlan::Refused { reason } => format!("cannot be used: {reason}"),
        }
    }
}

/// Everything Vivarium works out about an ISO.
#[derive(Debug, Clone, Serialize)]
pub struct IsoInspection {
    /// The ISO (absolute path).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its volume id.
    pub volume_id: String,
    /// Which file names it carries: `rock-ridge`, `joliet` or `iso9660`.
    pub names: &'static str,
    /// The operating system on it.
    pub os: RecognisedOs,
    /// What a VM for it should get.
    pub recommended: Recommended,
    /// Whether it has a BIOS boot entry.
    pub bios_bootable: bool,
    /// Whether it has a UEFI boot entry.
    pub uefi_bootable: bool,
    /// How a VM for it boots.
    pub plan: BootPlan,
}

impl IsoInspection {
    /// The OS as `vm.toml` records it.
    pub fn os_info(&self) -> OsInfo {
        OsInfo {
            id: self.os.id.clone(),
            name: self.os.name.clone(),
        }
    }

    /// A VM name for it: the OS name (e.g. `Debian 12`), made a valid name.
    pub fn suggested_name(&self) -> String {
        let cleaned: String = self
            .os
            .name
            .chars()
            .map(|c| {
                if c.is_control()
                    || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
                {
                    '-'
                } else {
                    c
                }
            })
            .take(crate::config::MAX_NAME_CHARS - 4)
            .collect();
        let cleaned = cleaned.trim().trim_start_matches('.').to_string();
        if cleaned.is_empty() {
            "Installer".into()
        } else {
            cleaned
        }
    }
}

/// Opens the file at `path` as an image, with clear errors for what is not a readable file.
pub fn open(path: &Path) -> Result<IsoImage<FileSource>, Error> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::InvalidIso {
            path: path.to_path_buf(),
            why: "it does not exist: check the path".into(),
        },
        std::io::ErrorKind::PermissionDenied => Error::InvalidIso {
            path: path.to_path_buf(),
            why: "you have no permission to reach it: check the folder's permissions".into(),
        },
        _ => Error::io(format!("could not read `{}`", path.display()), e),
    })?;
    if meta.is_dir() {
        return Err(Error::InvalidIso {
            path: path.to_path_buf(),
            why: "it is a folder: choose the .iso file inside it".into(),
        });
    }
    if !meta.is_file() {
        return Err(Error::InvalidIso {
            path: path.to_path_buf(),
            why: "it is not a regular file: choose an .iso file".into(),
        });
    }
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => Error::InvalidIso {
            path: path.to_path_buf(),
            why: "you have no permission to read it: make it readable (chmod +r) or copy it \
                  somewhere you can read"
                .into(),
        },
        _ => Error::io(format!("could not open `{}`", path.display()), e),
    })?;
    IsoImage::open(Box::new(FileSource::new(file, meta.len()))).map_err(|e| e.at(path))
}

/// Inspects the ISO at `path` for this computer's architecture.
pub fn inspect(path: &Path) -> Result<IsoInspection, Error> {
    inspect_for(path, Arch::host())
}

/// Inspects the ISO at `path` for a computer of architecture `host` (`None`: unknown).
pub fn inspect_for(path: &Path, host: Option<Arch>) -> Result<IsoInspection, Error> {
    inspect_entry(path, host, None)
}

/// Inspects the ISO at `path` for a computer of architecture `host`, planning to boot its
/// boot entry `entry` (an isolinux label or menu label, or a GRUB menu entry's title) instead
/// of the default one. An entry that is not there makes the plan [`BootPlan::Refused`], with
/// the entries there are.
pub fn inspect_entry(
    path: &Path,
    host: Option<Arch>,
    entry: Option<&str>,
) -> Result<IsoInspection, Error> {
    let image = open(path)?;
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    inspect_image_entry(&image, host, entry)
        .map(|mut inspection| {
            inspection.path = absolute;
            inspection
        })
        .map_err(|e| e.at(path))
}

/// Inspects an open image (the path of the result is empty).
pub fn inspect_image<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    host: Option<Arch>,
) -> Result<IsoInspection, IsoError> {
    inspect_image_entry(image, host, None)
}

/// Inspects an open image, planning to boot the boot entry `entry` (see [`inspect_entry`]).
pub fn inspect_image_entry<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    host: Option<Arch>,
    entry: Option<&str>,
) -> Result<IsoInspection, IsoError> {
    let catalogue = match image.info().boot_catalog_sector {
        Some(sector) => Some(eltorito::read_catalogue(image, sector)?),
        None => None,
    };
    let mut os = recognise::recognise(image)?;
    let mut plan = plan_boot(image, &mut os, catalogue.as_ref(), host, entry)?;
    let recommended = os.family.recommended();
    // What the ISO says about itself is shown on terminals and written into vm.toml: its
    // control and invisible characters are escaped here, once.
    let clean = |s: &str| crate::text::for_terminal(s).into_owned();
    os.name = clean(&os.name);
    os.version = os.version.as_deref().map(clean);
    os.evidence = os.evidence.iter().map(|e| clean(e)).collect();
    if let BootPlan::DirectLinux { entry, .. } = &mut plan {
        *entry = clean(entry);
    }
    Ok(IsoInspection {
        path: PathBuf::new(),
        size: image.len(),
        volume_id: clean(&image.info().volume_id),
        names: match image.scheme() {
            NameScheme::RockRidge { .. } => "rock-ridge",
            NameScheme::Joliet => "joliet",
            NameScheme::Plain => "iso9660",
        },
        os,
        recommended,
        bios_bootable: catalogue.as_ref().is_some_and(BootCatalogue::has_bios),
        uefi_bootable: catalogue.as_ref().is_some_and(BootCatalogue::has_uefi),
        plan,
    })
}

const FIRMWARE_NOTE: &str = "boots from its CD-ROM through the VM's BIOS (SeaBIOS)";

fn plan_boot<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    os: &mut RecognisedOs,
    catalogue: Option<&BootCatalogue>,
    host: Option<Arch>,
    wanted: Option<&str>,
) -> Result<BootPlan, IsoError> {
    let bootable = catalogue.is_some_and(|c| c.entries.iter().any(|e| e.bootable));
    if !bootable {
        return Ok(BootPlan::Refused {
            reason: "it has no El Torito boot entry, so it is a data disc, not an installer; \
                     insert it into an existing VM with `vivarium set NAME --iso FILE`"
                .into(),
        });
    }
    if let Some(reason) = foreign(os.arch, host) {
        return Ok(BootPlan::Refused { reason });
    }
    if !catalogue.is_some_and(BootCatalogue::has_bios) {
        return Ok(BootPlan::NeedsFirmware {
            reason: "it boots only through UEFI: it boots from its CD-ROM through the VM's \
                     UEFI firmware (OVMF)"
                .into(),
            firmware: crate::config::Firmware::Uefi,
        });
    }
    if os.arch == Some(Arch::X86) && host == Some(Arch::X86_64) {
        return Ok(BootPlan::NeedsFirmware {
            reason: format!("a 32-bit x86 system {FIRMWARE_NOTE}"),
            firmware: crate::config::Firmware::Bios,
        });
    }
    if matches!(
        os.family,
        OsFamily::Windows
            | OsFamily::FreeBsd
            | OsFamily::OpenBsd
            | OsFamily::NetBsd
            | OsFamily::Memtest
    ) {
        return Ok(BootPlan::NeedsFirmware {
            reason: format!(
                "{} starts from its own boot loader: it {FIRMWARE_NOTE}",
                os.family.display_name()
            ),
            firmware: crate::config::Firmware::Bios,
        });
    }
    let read = |path: &str| -> Option<String> {
        image
            .read_file(path, bootcfg::MAX_CONFIG_BYTES)
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let mut problems = Vec::new();
    let candidates = bootcfg::SYSLINUX_CONFIGS
        .iter()
        .map(|c| (c, true))
        .chain(bootcfg::GRUB_CONFIGS.iter().map(|c| (c, false)));
    for (config, syslinux) in candidates {
        let found = if syslinux {
            bootcfg::syslinux_entry(config, &read, wanted)
        } else {
            bootcfg::grub_entry(config, &read, wanted)
        };
        let entry = match found {
            None => continue,
            Some(bootcfg::Found::Unusable(why)) => {
                problems.push(why);
                continue;
            }
            Some(bootcfg::Found::Linux(entry)) => entry,
        };
        let Some(kernel) = image.find(&entry.kernel)?.filter(|k| !k.is_dir) else {
            problems.push(format!(
                "`{}` boots the kernel `{}`, which is not on the ISO",
                entry.config_file, entry.kernel
            ));
            continue;
        };
        if let Some(missing) = entry
            .initrds
            .iter()
            .find(|i| !matches!(image.find(i), Ok(Some(e)) if !e.is_dir))
        {
            problems.push(format!(
                "`{}` loads the initrd `{missing}`, which is not on the ISO",
                entry.config_file
            ));
            continue;
        }
        let mut head = vec![0u8; 4096];
        let n = image.read_head(&kernel, &mut head)?;
        if let Some(arch) = recognise::kernel_arch(&head[..n]) {
            if os.arch.is_none() {
                os.evidence
                    .push(format!("its kernel `{}` is built for {arch}", entry.kernel));
            }
            os.arch = Some(arch);
            if let Some(reason) = foreign(Some(arch), host) {
                return Ok(BootPlan::Refused { reason });
            }
            if arch == Arch::X86 {
                // Direct boot enters kernels in 64-bit mode; a 32-bit kernel starts from the
                // ISO's own boot loader instead.
                return Ok(BootPlan::NeedsFirmware {
                    reason: format!("its 32-bit kernel `{}` {FIRMWARE_NOTE}", entry.kernel),
                    firmware: crate::config::Firmware::Bios,
                });
            }
        }
        if os.family == OsFamily::Other {
            *os = RecognisedOs {
                family: OsFamily::Linux,
                id: "linux".into(),
                name: if os.name == "Other" {
                    "Linux".into()
                } else {
                    os.name.clone()
                },
                version: None,
                arch: os.arch,
                evidence: std::mem::take(&mut os.evidence),
            };
            os.evidence
                .push(format!("`{}` boots a Linux kernel", entry.config_file));
        }
        let serial_cmdline = if entry
            .cmdline
            .split_whitespace()
            .any(|w| w.starts_with("console="))
        {
            entry.cmdline.clone()
        } else {
            serial_variant(&entry.cmdline)
        };
        return Ok(BootPlan::DirectLinux {
            kernel_path: entry.kernel,
            initrd_paths: entry.initrds,
            cmdline: entry.cmdline,
            serial_cmdline,
            entry: entry.label,
            config_file: entry.config_file,
        });
    }
    if let Some(wanted) = wanted {
        let why = if problems.is_empty() {
            format!("it has no isolinux or GRUB configuration, so no boot entry `{wanted}`")
        } else {
            problems.join("; ")
        };
        return Ok(BootPlan::Refused {
            reason: format!("{why}: choose one of them, or leave the boot entry out"),
        });
    }
    let why = if problems.is_empty() {
        "no isolinux or GRUB configuration names a Linux kernel".to_string()
    } else {
        problems.join("; ")
    };
    Ok(BootPlan::NeedsFirmware {
        reason: format!("{why}: it {FIRMWARE_NOTE}"),
        firmware: crate::config::Firmware::Bios,
    })
}

/// The command line with the console on the first serial port, placed before a `---`
/// separator (what follows it is copied to the installed system by Debian's installer).
fn serial_variant(cmdline: &str) -> String {
    let console = "console=ttyS0,115200n8";
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    match words.iter().position(|w| *w == "---") {
        Some(at) => {
            let mut out: Vec<&str> = words[..at].to_vec();
            out.push(console);
            out.extend_from_slice(&words[at..]);
            out.join(" ")
        }
        None => {
            let mut out = words;
            out.push(console);
            out.join(" ")
        }
    }
}

fn foreign(iso: Option<Arch>, host: Option<Arch>) -> Option<String> {
    match (iso, host) {
        // An x86_64 PC runs 32-bit x86 systems (through its BIOS).
        (Some(Arch::X86), Some(Arch::X86_64)) => None,
        (Some(iso), Some(host)) if iso != host => Some(format!(
            "it is for {iso} computers, but this one is {host}: download the {host} version of \
             the ISO"
        )),
        _ => None,
    }
}

/// File names of the extracted boot files inside a bundle's `state/` folder.
pub const KERNEL_FILE: &str = "installer-kernel";
/// See [`KERNEL_FILE`].
pub const INITRD_FILE: &str = "installer-initrd";

/// Extracts the kernel and initrds of a [`BootPlan::DirectLinux`] from the ISO at `iso` into
/// `dir` as [`KERNEL_FILE`] and [`INITRD_FILE`]. Several initrds are joined into one, each
/// but the last padded to 4 bytes (the kernel unpacks concatenated initramfs archives in order, as when a
/// boot loader loads several). Returns whether an initrd was written.
pub fn extract_boot_files(
    iso: &Path,
    plan: &BootPlan,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<bool, Error> {
    let BootPlan::DirectLinux {
        kernel_path,
        initrd_paths,
        ..
    } = plan
    else {
        return Err(Error::InvalidInput(
            "this ISO's installer cannot be booted directly".into(),
        ));
    };
    let image = open(iso)?;
    let find = |path: &str| -> Result<reader::DirEntry, Error> {
        image
            .find(path)
            .map_err(|e| e.at(iso))?
            .filter(|e| !e.is_dir)
            .ok_or_else(|| Error::InvalidIso {
                path: iso.to_path_buf(),
                why: format!(
                    "`{path}` is no longer on it: was the file replaced? inspect it again"
                ),
            })
    };
    let kernel = find(kernel_path)?;
    let initrds = initrd_paths
        .iter()
        .map(|p| find(p))
        .collect::<Result<Vec<_>, _>>()?;
    let total = kernel.size() + initrds.iter().map(|i| i.size() + 3).sum::<u64>();
    let mut done_before = 0u64;
    let copy = |entry: &reader::DirEntry, out: &mut File, done_before: &mut u64| {
        let start = *done_before;
        let n = image
            .copy_entry(entry, out, &mut |done| {
                progress.update(start + done, total);
                !progress.cancelled()
            })
            .map_err(|e| e.at(iso))?;
        *done_before += n;
        Ok::<u64, Error>(n)
    };
    let create = |name: &str| {
        File::create(dir.join(name))
            .map_err(|e| Error::io(format!("could not create `{name}` in the VM's folder"), e))
    };
    let mut out = create(KERNEL_FILE)?;
    copy(&kernel, &mut out, &mut done_before)?;
    out.sync_all()
        .map_err(|e| Error::io("could not write the installer's kernel", e))?;
    if initrds.is_empty() {
        return Ok(false);
    }
    let mut out = create(INITRD_FILE)?;
    for (index, initrd) in initrds.iter().enumerate() {
        let n = copy(initrd, &mut out, &mut done_before)?;
        if index + 1 < initrds.len() {
            let pad = (4 - n % 4) % 4;
            out.write_all(&[0u8; 3][..pad as usize])
                .map_err(|e| Error::io("could not write the installer's initrd", e))?;
        }
    }
    out.sync_all()
        .map_err(|e| Error::io("could not write the installer's initrd", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_console_goes_before_the_separator() {
        assert_eq!(
            serial_variant("vga=788 --- quiet"),
            "vga=788 console=ttyS0,115200n8 --- quiet"
        );
        assert_eq!(serial_variant("quiet"), "quiet console=ttyS0,115200n8");
        assert_eq!(serial_variant(""), "console=ttyS0,115200n8");
    }

    #[test]
    fn foreign_architectures_are_named() {
        assert!(
            foreign(Some(Arch::Aarch64), Some(Arch::X86_64))
                .unwrap()
                .contains("aarch64")
        );
        assert!(foreign(Some(Arch::X86_64), Some(Arch::X86_64)).is_none());
        assert!(foreign(Some(Arch::X86), Some(Arch::X86_64)).is_none());
        assert!(foreign(Some(Arch::X86_64), Some(Arch::X86)).is_some());
        assert!(foreign(None, Some(Arch::X86_64)).is_none());
    }
}

#[cfg(test)]
mod layout_tests;
