//! PC firmware on this host, and whether a disk holds something it can boot.
//!
//! Vivarium ships no firmware: it uses the builds Debian installs (`seabios`: SeaBIOS and the
//! bochs display's VGA BIOS; `ovmf`: OVMF for UEFI). `VIVARIUM_FIRMWARE_DIR` names a folder
//! searched first (for builds of one's own, and for tests).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The SeaBIOS image, the larger build first (it has room for every driver).
const SEABIOS_NAMES: &[&str] = &["bios-256k.bin", "bios.bin"];
/// The VGA BIOS for the bochs display (PCI 1234:1111 without legacy VGA).
const VGA_BIOS_NAME: &str = "vgabios-bochs-display.bin";
/// Where Debian (and Ubuntu) put SeaBIOS.
const SEABIOS_DIRS: &[&str] = &["/usr/share/seabios", "/usr/share/qemu"];
/// OVMF's code and variable-store template, 4 MiB builds without Secure Boot keys enrolled.
const OVMF_CODE_NAME: &str = "OVMF_CODE_4M.fd";
const OVMF_VARS_NAME: &str = "OVMF_VARS_4M.fd";
/// Where Debian (and Ubuntu) put OVMF.
const OVMF_DIRS: &[&str] = &["/usr/share/OVMF", "/usr/share/ovmf", "/usr/share/qemu"];

/// The environment variable naming a folder searched before the system's.
pub const FIRMWARE_DIR_VAR: &str = "VIVARIUM_FIRMWARE_DIR";

/// The firmware files found on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFirmware {
    /// SeaBIOS (BIOS boot).
    pub seabios: Option<PathBuf>,
    /// The bochs display's VGA BIOS (the BIOS console and VESA modes on the screen).
    pub vga_bios: Option<PathBuf>,
    /// OVMF's code (UEFI boot).
    pub ovmf_code: Option<PathBuf>,
    /// OVMF's variable store template, copied into each UEFI VM's bundle.
    pub ovmf_vars: Option<PathBuf>,
}

impl HostFirmware {
    /// Looks for the files in `VIVARIUM_FIRMWARE_DIR`, then where Debian installs them.
    pub fn locate() -> HostFirmware {
        let extra = std::env::var_os(FIRMWARE_DIR_VAR).map(PathBuf::from);
        Self::locate_in(extra.as_deref())
    }

    /// Like [`HostFirmware::locate`], with `extra` searched first.
    pub fn locate_in(extra: Option<&Path>) -> HostFirmware {
        let dirs = |system: &[&str]| -> Vec<PathBuf> {
            extra
                .map(Path::to_path_buf)
                .into_iter()
                .chain(system.iter().map(PathBuf::from))
                .collect()
        };
        let find = |dirs: &[PathBuf], names: &[&str]| {
            dirs.iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n)))
                .find(|p| p.is_file())
        };
        let seabios_dirs = dirs(SEABIOS_DIRS);
        let ovmf_dirs = dirs(OVMF_DIRS);
        HostFirmware {
            seabios: find(&seabios_dirs, SEABIOS_NAMES),
            vga_bios: find(&seabios_dirs, &[VGA_BIOS_NAME]),
            ovmf_code: find(&ovmf_dirs, &[OVMF_CODE_NAME]),
            ovmf_vars: find(&ovmf_dirs, &[OVMF_VARS_NAME]),
        }
    }

    /// SeaBIOS, or what to install to get it.
    pub fn require_seabios(&self) -> Result<&Path, String> {
        self.seabios.as_deref().ok_or_else(|| {
            "booting from a disk or CD-ROM needs SeaBIOS, which is not installed: install the \
             `seabios` package (sudo apt install seabios)"
                .to_string()
        })
    }

    /// Lines for `vivarium host`: each firmware and where it is, or what to install.
    pub fn describe(&self) -> Vec<String> {
        let line = |what: &str, path: &Option<PathBuf>, package: &str| match path {
            Some(p) => format!("{what}: {}", p.display()),
            None => format!("{what}: not installed (sudo apt install {package})"),
        };
        vec![
            line("BIOS (SeaBIOS)", &self.seabios, "seabios"),
            line("VGA BIOS", &self.vga_bios, "seabios"),
            line("UEFI (OVMF)", &self.ovmf_code, "ovmf"),
            line("UEFI variables template", &self.ovmf_vars, "ovmf"),
        ]
    }
}

/// Whether the first sector of a disk is a BIOS boot sector a firmware would run: the
/// 0x55 0xaa signature and boot code (a partition table alone, as a partitioner writes before
/// a boot loader is installed, has zeros where the code goes).
pub fn is_bios_boot_sector(sector: &[u8]) -> bool {
    sector.len() >= 512
        && sector[510] == 0x55
        && sector[511] == 0xaa
        && sector[..440].iter().any(|b| *b != 0)
}

/// Whether the disk at `path` (raw, or qcow2 through its backing chain) starts with a BIOS
/// boot sector. A disk that cannot be read counts as not bootable (starting it reports why).
pub fn disk_has_bios_boot_sector(path: &Path, format: crate::config::DiskFormat) -> bool {
    let mut sector = [0u8; 512];
    let read = match format {
        crate::config::DiskFormat::Raw => std::fs::File::open(path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut sector, 0)),
        crate::config::DiskFormat::Qcow2 => crate::disk::Qcow2Disk::open(path, true)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|d| d.read_at(&mut sector, 0)),
    };
    read.is_ok() && is_bios_boot_sector(&sector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_files_in_the_extra_folder_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bios.bin"), b"x").unwrap();
        std::fs::write(dir.path().join(VGA_BIOS_NAME), b"x").unwrap();
        let found = HostFirmware::locate_in(Some(dir.path()));
        assert_eq!(
            found.seabios.as_deref(),
            Some(&*dir.path().join("bios.bin"))
        );
        assert_eq!(
            found.vga_bios.as_deref(),
            Some(&*dir.path().join(VGA_BIOS_NAME))
        );
        assert!(found.require_seabios().is_ok());
    }

    #[test]
    fn missing_firmware_says_what_to_install() {
        let none = HostFirmware::default();
        assert!(
            none.require_seabios()
                .unwrap_err()
                .contains("apt install seabios")
        );
        let lines = none.describe();
        assert!(lines[0].contains("not installed (sudo apt install seabios)"));
        assert!(lines[2].contains("sudo apt install ovmf"));
    }

    #[test]
    fn boot_sectors_need_code_and_the_signature() {
        let mut sector = [0u8; 512];
        assert!(!is_bios_boot_sector(&sector));
        sector[510] = 0x55;
        sector[511] = 0xaa;
        assert!(!is_bios_boot_sector(&sector), "a partition table alone");
        sector[0] = 0xeb;
        assert!(is_bios_boot_sector(&sector));
        assert!(!is_bios_boot_sector(&sector[..100]));
    }

    #[test]
    fn raw_and_qcow2_disks_are_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("base.raw");
        let mut image = vec![0u8; 1 << 20];
        assert!(!{
            std::fs::write(&raw, &image).unwrap();
            disk_has_bios_boot_sector(&raw, crate::config::DiskFormat::Raw)
        });
        image[0] = 0xfa;
        image[510] = 0x55;
        image[511] = 0xaa;
        std::fs::write(&raw, &image).unwrap();
        assert!(disk_has_bios_boot_sector(
            &raw,
            crate::config::DiskFormat::Raw
        ));
        let overlay = dir.path().join("top.qcow2");
        crate::disk::create_overlay(
            &overlay,
            "base.raw",
            crate::config::DiskFormat::Raw,
            1 << 20,
        )
        .unwrap();
        assert!(disk_has_bios_boot_sector(
            &overlay,
            crate::config::DiskFormat::Qcow2
        ));
        assert!(!disk_has_bios_boot_sector(
            &dir.path().join("missing"),
            crate::config::DiskFormat::Raw
        ));
    }
}
