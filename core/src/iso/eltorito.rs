//! The El Torito boot catalogue: which boot images an ISO offers, for which firmware.

use serde::Serialize;

use super::IsoError;
use super::reader::{ImageSource, IsoImage};

/// Most catalogue entries read (a real catalogue has a handful).
const MAX_ENTRIES: usize = 256;
/// Most catalogue sectors read.
const MAX_SECTORS: u64 = 4;

/// The firmware a boot entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// PC BIOS (platform id 0).
    Bios,
    /// UEFI (platform id 0xEF).
    Uefi,
    /// PowerPC (1).
    PowerPc,
    /// Mac (2).
    Mac,
    /// Any other id.
    Other(u8),
}

impl Platform {
    fn from_id(id: u8) -> Platform {
        match id {
            0 => Platform::Bios,
            1 => Platform::PowerPc,
            2 => Platform::Mac,
            0xEF => Platform::Uefi,
            other => Platform::Other(other),
        }
    }
}

/// How a boot image is presented to the firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Emulation {
    /// The image is loaded as is (isolinux, GRUB's eltorito.img, an EFI system partition).
    NoEmulation,
    /// A floppy disk image.
    Floppy,
    /// A hard disk image.
    HardDisk,
}

/// One bootable (or not) image of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootEntry {
    /// The firmware it is for.
    pub platform: Platform,
    /// Whether the entry is marked bootable.
    pub bootable: bool,
    /// How the image is presented.
    pub emulation: Emulation,
    /// First sector (2048 bytes) of the image.
    pub load_sector: u32,
    /// Length in 512-byte sectors as the catalogue states it (0 or 1 often means "the
    /// firmware works it out").
    pub sector_count: u16,
}

/// The boot catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BootCatalogue {
    /// Every entry: the default entry first, then each section's entries.
    pub entries: Vec<BootEntry>,
}

impl BootCatalogue {
    /// Whether some bootable entry is for PC BIOS.
    pub fn has_bios(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.bootable && e.platform == Platform::Bios)
    }

    /// Whether some bootable entry is for UEFI.
    pub fn has_uefi(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.bootable && e.platform == Platform::Uefi)
    }
}

/// Reads the boot catalogue at `sector`.
pub fn read_catalogue<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    sector: u32,
) -> Result<BootCatalogue, IsoError> {
    let mut bytes = Vec::new();
    for i in 0..MAX_SECTORS {
        match image.read_sector(u64::from(sector) + i) {
            Ok(data) => bytes.extend_from_slice(&data),
            Err(e) if i == 0 => return Err(e),
            Err(_) => break,
        }
    }
    parse_catalogue(&bytes)
}

/// Parses a boot catalogue from its bytes.
pub fn parse_catalogue(bytes: &[u8]) -> Result<BootCatalogue, IsoError> {
    let bad = |why: &str| IsoError::Corrupt(format!("its El Torito boot catalogue {why}"));
    let validation = bytes.get(0..32).ok_or_else(|| bad("is cut short"))?;
    if validation[0] != 1 || validation[30] != 0x55 || validation[31] != 0xAA {
        return Err(bad("has no validation entry"));
    }
    let sum = validation.chunks_exact(2).fold(0u16, |acc, w| {
        acc.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    if sum != 0 {
        return Err(bad("has a bad checksum"));
    }
    let mut catalogue = BootCatalogue::default();
    let default = bytes.get(32..64).ok_or_else(|| bad("is cut short"))?;
    catalogue
        .entries
        .push(entry(default, Platform::from_id(validation[1])));
    let mut at = 64usize;
    let entries = |at: usize| bytes.get(at..at + 32);
    while let Some(header) = entries(at) {
        if header[0] != 0x90 && header[0] != 0x91 {
            break;
        }
        let last = header[0] == 0x91;
        let platform = Platform::from_id(header[1]);
        let count = u16::from_le_bytes([header[2], header[3]]);
        at += 32;
        for _ in 0..count {
            let Some(raw) = entries(at) else {
                return Err(bad("ends inside a section"));
            };
            at += 32;
            catalogue.entries.push(entry(raw, platform));
            // Extension entries (0x44) follow while bit 5 of the previous one's byte 1 is set.
            let mut more = raw[0] != 0 && raw.get(12).is_some_and(|b| b & 0x20 != 0);
            while more {
                match entries(at) {
                    Some(ext) if ext[0] == 0x44 => {
                        more = ext[1] & 0x20 != 0;
                        at += 32;
                    }
                    _ => more = false,
                }
            }
            if catalogue.entries.len() > MAX_ENTRIES {
                return Err(bad("has more entries than any real one"));
            }
        }
        if last {
            break;
        }
    }
    Ok(catalogue)
}

fn entry(raw: &[u8], platform: Platform) -> BootEntry {
    BootEntry {
        platform,
        bootable: raw[0] == 0x88,
        emulation: match raw[1] & 0x0F {
            0 => Emulation::NoEmulation,
            1..=3 => Emulation::Floppy,
            _ => Emulation::HardDisk,
        },
        load_sector: u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]),
        sector_count: u16::from_le_bytes([raw[6], raw[7]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation(platform: u8) -> [u8; 32] {
        let mut v = [0u8; 32];
        v[0] = 1;
        v[1] = platform;
        v[30] = 0x55;
        v[31] = 0xAA;
        let sum = v.chunks_exact(2).fold(0u16, |a, w| {
            a.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        let fix = 0u16.wrapping_sub(sum).to_le_bytes();
        v[28] = fix[0];
        v[29] = fix[1];
        v
    }

    #[test]
    fn reads_bios_default_and_uefi_section() {
        let mut bytes = validation(0).to_vec();
        let mut default = [0u8; 32];
        default[0] = 0x88;
        default[6] = 4;
        default[8] = 30;
        bytes.extend_from_slice(&default);
        let mut header = [0u8; 32];
        header[0] = 0x91;
        header[1] = 0xEF;
        header[2] = 1;
        bytes.extend_from_slice(&header);
        let mut efi = [0u8; 32];
        efi[0] = 0x88;
        efi[8] = 40;
        bytes.extend_from_slice(&efi);
        let catalogue = parse_catalogue(&bytes).unwrap();
        assert_eq!(catalogue.entries.len(), 2);
        assert_eq!(catalogue.entries[0].platform, Platform::Bios);
        assert_eq!(catalogue.entries[0].load_sector, 30);
        assert_eq!(catalogue.entries[1].platform, Platform::Uefi);
        assert!(catalogue.has_bios() && catalogue.has_uefi());
    }

    #[test]
    fn refuses_bad_checksums_and_short_catalogues() {
        let mut v = validation(0);
        v[4] = 7;
        assert!(parse_catalogue(&v).is_err());
        assert!(parse_catalogue(&validation(0)).is_err());
        assert!(parse_catalogue(&[]).is_err());
        let mut bytes = validation(0).to_vec();
        bytes.extend_from_slice(&[0u8; 32]);
        let mut header = [0u8; 32];
        header[0] = 0x91;
        header[2] = 0xFF;
        header[3] = 0xFF;
        bytes.extend_from_slice(&header);
        assert!(parse_catalogue(&bytes).is_err());
    }
}
