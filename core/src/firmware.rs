//! PC firmware on this host, and whether a disk holds something it can boot.
//!
//! Vivarium ships no firmware: it uses the builds Debian installs (`seabios`: SeaBIOS and the
//! standard VGA's VGA BIOS; `ovmf`: OVMF for UEFI). `VIVARIUM_FIRMWARE_DIR` names a folder
//! searched first (for builds of one's own, and for tests).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The SeaBIOS image, the larger build first (it has room for every driver).
const SEABIOS_NAMES: &[&str] = &["bios-256k.bin", "bios.bin"];
/// The VGA BIOS of a BIOS machine's screen, the standard VGA (PCI 1234:1111 with the legacy
/// VGA: text mode at 0xb8000, and the VBE modes of its DISPI registers).
const VGA_BIOS_NAME: &str = "vgabios-stdvga.bin";
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
    /// The standard VGA's VGA BIOS (the BIOS console in text mode, and the VESA modes).
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

    /// OVMF's code and variable store template, or what to install to get them.
    pub fn require_ovmf(&self) -> Result<(&Path, &Path), String> {
        match (&self.ovmf_code, &self.ovmf_vars) {
            (Some(code), Some(vars)) => Ok((code, vars)),
            _ => Err(
                "booting through UEFI needs OVMF, which is not installed: install the \
                      `ovmf` package (sudo apt install ovmf)"
                    .to_string(),
            ),
        }
    }

    /// Lines for `vivarium host`: each firmware and where it is, or what to install.
    pub fn describe(&self) -> Vec<String> {
        let line = |what: &str, path: &Option<PathBuf>, package: &str| match path {
            Some(p) => format!("{what}: {}", p.display()),
            None => format!("{what}: not installed (sudo apt install {package})"),
        };
        vec![
            line("BIOS (SeaBIOS)", &self.seabios, "seabios"),
            line(
                &format!("VGA BIOS ({VGA_BIOS_NAME})"),
                &self.vga_bios,
                "seabios",
            ),
            line("UEFI (OVMF)", &self.ovmf_code, "ovmf"),
            line("UEFI variables template", &self.ovmf_vars, "ovmf"),
        ]
    }
}

/// The VM's UEFI variable store, in its bundle.
pub const UEFI_VARS_FILE: &str = "state/uefi-vars.fd";

/// Offset of a firmware volume header's signature (`_FVH`), which starts OVMF's variable
/// store (EDK2's `EFI_FIRMWARE_VOLUME_HEADER`: 16 zero bytes, a GUID, the length, then it).
const FV_SIGNATURE_OFFSET: usize = 40;

/// Why `data` is not a variable store of `expected` bytes, or `None` if it looks like one.
fn vars_problem(data: &[u8], expected: u64) -> Option<String> {
    if data.len() as u64 != expected {
        return Some(format!(
            "it is {} bytes, and this host's OVMF uses {expected}",
            data.len()
        ));
    }
    if data.get(FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4) != Some(b"_FVH") {
        return Some("it is not a UEFI firmware volume".into());
    }
    None
}

/// The VM's UEFI variable store, `bundle/state/uefi-vars.fd`, made from OVMF's `template` at
/// the first UEFI boot (written atomically: a copy interrupted leaves no file). One that is
/// there is checked against the template's size and format; a damaged or foreign one is
/// refused with what to do, and left as it is.
pub fn prepare_uefi_vars(bundle: &Path, template: &Path) -> Result<PathBuf, String> {
    let vars = bundle.join(UEFI_VARS_FILE);
    let template_data = std::fs::read(template).map_err(|e| {
        format!(
            "cannot read OVMF's variable store template {}: {e} (reinstall the `ovmf` package)",
            template.display()
        )
    })?;
    if let Some(why) = vars_problem(&template_data, template_data.len() as u64) {
        return Err(format!(
            "OVMF's variable store template {} is damaged: {why} (reinstall the `ovmf` package)",
            template.display()
        ));
    }
    match std::fs::read(&vars) {
        Ok(data) => match vars_problem(&data, template_data.len() as u64) {
            None => Ok(vars),
            Some(why) => Err(format!(
                "the VM's UEFI variable store {} is damaged or from another firmware: {why}. \
                 To start over with OVMF's defaults (the VM's UEFI boot entries and settings \
                 are lost), delete the file",
                vars.display()
            )),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = vars.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            crate::fsutil::atomic_write(&vars, &template_data)
                .map_err(|e| format!("cannot write {}: {e}", vars.display()))?;
            Ok(vars)
        }
        Err(e) => Err(format!("cannot read {}: {e}", vars.display())),
    }
}

/// Whether a disk holds what `firmware` boots: a BIOS boot sector, or for UEFI a GUID
/// partition table with an EFI system partition.
pub fn disk_is_bootable(
    path: &Path,
    format: crate::config::DiskFormat,
    firmware: crate::config::Firmware,
) -> bool {
    match firmware {
        crate::config::Firmware::Bios => disk_has_bios_boot_sector(path, format),
        crate::config::Firmware::Uefi => disk_has_efi_system_partition(path, format),
    }
}

/// The EFI system partition's type GUID, C12A7328-F81F-11D2-BA4B-00A0C93EC93B, as stored.
const EFI_SYSTEM_PARTITION: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// Whether the GPT in `head` (the disk's first 34 sectors of 512 bytes) has an EFI system
/// partition among its first 128 entries.
pub fn has_efi_system_partition(head: &[u8]) -> bool {
    let Some(header) = head.get(512..512 + 92) else {
        return false;
    };
    if &header[..8] != b"EFI PART" {
        return false;
    }
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap());
    let entries_lba = u64::from_le_bytes(header[72..80].try_into().unwrap());
    let count = u32_at(80).min(128) as usize;
    let size = u32_at(84) as usize;
    if entries_lba != 2 || size < 128 {
        return false;
    }
    (0..count).any(|i| {
        let at = 1024 + i * size;
        head.get(at..at + 16) == Some(&EFI_SYSTEM_PARTITION[..])
    })
}

/// Whether the disk at `path` (raw, or qcow2 through its chain) has a GPT with an EFI system
/// partition. A disk that cannot be read counts as not bootable.
pub fn disk_has_efi_system_partition(path: &Path, format: crate::config::DiskFormat) -> bool {
    let mut head = vec![0u8; 34 * 512];
    read_disk_start(path, format, &mut head).is_ok() && has_efi_system_partition(&head)
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
    read_disk_start(path, format, &mut sector).is_ok() && is_bios_boot_sector(&sector)
}

/// Reads the first `buf.len()` bytes the guest sees of the disk at `path` (raw, or qcow2
/// through its backing chain).
fn read_disk_start(
    path: &Path,
    format: crate::config::DiskFormat,
    buf: &mut [u8],
) -> std::io::Result<()> {
    match format {
        crate::config::DiskFormat::Raw => std::fs::File::open(path)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, buf, 0)),
        crate::config::DiskFormat::Qcow2 => crate::disk::Qcow2Disk::open(path, true)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|d| d.read_at(buf, 0)),
    }
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
        assert!(lines[1].contains("vgabios-stdvga.bin"));
        assert!(lines[1].contains("not installed (sudo apt install seabios)"));
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

    fn template(len: usize) -> Vec<u8> {
        let mut data = vec![0xffu8; len];
        data[..FV_SIGNATURE_OFFSET].fill(0);
        data[FV_SIGNATURE_OFFSET..FV_SIGNATURE_OFFSET + 4].copy_from_slice(b"_FVH");
        data
    }

    #[test]
    fn each_vm_gets_its_own_variable_store_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let template_path = dir.path().join("OVMF_VARS_4M.fd");
        std::fs::write(&template_path, template(540_672)).unwrap();
        let bundle = dir.path().join("vm.vivm");
        std::fs::create_dir_all(&bundle).unwrap();
        let vars = prepare_uefi_vars(&bundle, &template_path).unwrap();
        assert_eq!(vars, bundle.join(UEFI_VARS_FILE));
        // The guest's writes stay: a second start does not copy the template again.
        let mut data = std::fs::read(&vars).unwrap();
        data[0x1000] = 0x42;
        std::fs::write(&vars, &data).unwrap();
        prepare_uefi_vars(&bundle, &template_path).unwrap();
        assert_eq!(std::fs::read(&vars).unwrap()[0x1000], 0x42);
    }

    #[test]
    fn a_damaged_or_foreign_variable_store_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let template_path = dir.path().join("OVMF_VARS_4M.fd");
        std::fs::write(&template_path, template(540_672)).unwrap();
        let bundle = dir.path().join("vm.vivm");
        std::fs::create_dir_all(bundle.join("state")).unwrap();
        let vars = bundle.join(UEFI_VARS_FILE);
        for bad in [template(131_072), vec![0u8; 540_672]] {
            std::fs::write(&vars, &bad).unwrap();
            let e = prepare_uefi_vars(&bundle, &template_path).unwrap_err();
            assert!(e.contains("damaged or from another firmware"), "{e}");
            assert!(e.contains("delete the file"), "{e}");
            assert_eq!(std::fs::read(&vars).unwrap(), bad, "left as it was");
        }
        // A damaged template is the host's problem, named as such.
        std::fs::write(&template_path, b"short").unwrap();
        let e = prepare_uefi_vars(&bundle, &template_path).unwrap_err();
        assert!(e.contains("reinstall the `ovmf` package"), "{e}");
        let e = prepare_uefi_vars(&bundle, &dir.path().join("none.fd")).unwrap_err();
        assert!(e.contains("reinstall the `ovmf` package"), "{e}");
    }

    /// A GPT as sgdisk writes it: the protective MBR, the header at LBA 1 and the entries
    /// from LBA 2.
    fn gpt_with(partition_type: [u8; 16]) -> Vec<u8> {
        let mut head = vec![0u8; 34 * 512];
        head[510] = 0x55;
        head[511] = 0xaa;
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        // The second entry.
        head[1024 + 128..1024 + 144].copy_from_slice(&partition_type);
        head
    }

    #[test]
    fn a_gpt_with_an_efi_system_partition_is_bootable_for_uefi_only() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        std::fs::write(&disk, gpt_with(EFI_SYSTEM_PARTITION)).unwrap();
        let raw = crate::config::DiskFormat::Raw;
        assert!(disk_is_bootable(&disk, raw, crate::config::Firmware::Uefi));
        assert!(!disk_is_bootable(&disk, raw, crate::config::Firmware::Bios));
        // A Linux data partition only: not bootable.
        let mut linux = EFI_SYSTEM_PARTITION;
        linux[0] ^= 1;
        std::fs::write(&disk, gpt_with(linux)).unwrap();
        assert!(!disk_is_bootable(&disk, raw, crate::config::Firmware::Uefi));
        // Garbage where the header goes, and a disk too short to hold a GPT.
        assert!(!has_efi_system_partition(&[0xffu8; 34 * 512]));
        std::fs::write(&disk, [0u8; 600]).unwrap();
        assert!(!disk_is_bootable(&disk, raw, crate::config::Firmware::Uefi));
    }
}
