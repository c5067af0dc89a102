//! `vm.toml`: the versioned configuration of one VM.
//!
//! The schema is versioned by the top-level `format` key. This build reads and writes
//! [`CONFIG_FORMAT`]; a file with another `format` is refused with a clear error and never
//! rewritten, so a newer Vivarium's VM survives an older Vivarium untouched.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::arch::Arch;
use crate::error::{Error, Result};

/// The `format` value this build reads and writes.
pub const CONFIG_FORMAT: u32 = 1;

/// Fewest virtual CPUs a VM may have.
pub const MIN_CPUS: u32 = 1;
/// Most virtual CPUs a VM may have (the x2APIC-less limit of a KVM x86 VM).
pub const MAX_CPUS: u32 = 255;
/// Least guest memory, in MiB: below this no installer or kernel we target boots.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Most guest memory, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
/// Longest VM name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// The whole configuration of a VM, as stored in `vm.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Schema version; always [`CONFIG_FORMAT`] when written by this build.
    pub format: u32,
    /// Stable identity of the VM; a clone gets a new one.
    pub id: Uuid,
    /// The VM's name; it is also the bundle folder's name.
    pub name: String,
    /// When the VM was created (RFC 3339, UTC).
    pub created: String,
    /// The guest's machine: `x86_64` (the PC, which also runs 32-bit x86 systems) or
    /// `aarch64`. Decided at creation and always written; configurations from before the key
    /// existed are x86_64 machines. A VM starts only on a computer whose machine this is
    /// ([`VmConfig::cannot_start_here`]).
    #[serde(default = "default_arch")]
    pub arch: Arch,
    /// The guest operating system.
    pub os: OsInfo,
    /// Number of virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// How the VM boots.
    pub boot: BootSource,
    /// The PC firmware that boots its disks and CD-ROM (BIOS unless the file says UEFI;
    /// configurations from before UEFI existed are BIOS machines).
    #[serde(default, skip_serializing_if = "Firmware::is_bios")]
    pub firmware: Firmware,
    /// Disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// CD-ROM drive, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromConfig>,
    /// Network card.
    pub network: NetworkConfig,
    /// Graphical display (configurations written before the display existed get the default
    /// screen).
    #[serde(default = "DisplayConfig::default_framebuffer")]
    pub display: DisplayConfig,
    /// Free-form notes of the user.
    #[serde(default)]
    pub notes: String,
}

/// The machine of a configuration written before `arch` existed: every VM was a PC then.
fn default_arch() -> Arch {
    Arch::X86_64
}

/// The guest operating system, as recognised or chosen at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsInfo {
    /// Short machine-readable id, e.g. `debian12`, `linux`, `other`.
    pub id: String,
    /// Name shown to people, e.g. `Debian 12`.
    pub name: String,
}

impl OsInfo {
    /// An OS that was not recognised.
    pub fn other() -> Self {
        OsInfo {
            id: "other".into(),
            name: "Other".into(),
        }
    }

    /// A Linux guest booted from a kernel image.
    pub fn linux() -> Self {
        OsInfo {
            id: "linux".into(),
            name: "Linux".into(),
        }
    }
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BootSource {
    /// Direct Linux boot: a kernel, an optional initrd and a command line.
    Linux {
        /// Kernel image (bzImage or ELF vmlinux): an absolute path, or a path relative to
        /// the bundle for a file the bundle holds (e.g. `state/installer-kernel`).
        kernel: PathBuf,
        /// Initial ramdisk (absolute, or relative to the bundle like `kernel`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        /// Kernel command line.
        #[serde(default)]
        cmdline: String,
    },
    /// An installer's Linux kernel booted directly (fast, with the ISO in the CD-ROM drive)
    /// while the first disk holds nothing the firmware can boot; once the installer has
    /// written a boot loader there, the VM boots that disk through its firmware instead. The
    /// fields are those of [`BootSource::Linux`].
    Installer {
        /// The installer's kernel (usually `state/installer-kernel` in the bundle).
        kernel: PathBuf,
        /// The installer's initrd.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<PathBuf>,
        /// The installer's command line.
        #[serde(default)]
        cmdline: String,
    },
    /// Boot the CD-ROM through the firmware, then the disks.
    Cdrom,
    /// Boot the first disk through the firmware; when it holds nothing bootable (a new VM
    /// with an installer ISO), the CD-ROM, then the other disks.
    Disk,
}

impl BootSource {
    /// A short description for listings.
    pub fn describe(&self) -> String {
        match self {
            BootSource::Linux { kernel, .. } => format!("Linux kernel {}", kernel.display()),
            BootSource::Installer { .. } => {
                "the installer's Linux kernel until the disk is bootable, then the disk".into()
            }
            BootSource::Cdrom => "CD-ROM, then the disks (through the firmware)".into(),
            BootSource::Disk => "disk, else CD-ROM (through the firmware)".into(),
        }
    }
}

/// The PC firmware of a VM that boots through one (disk, CD-ROM, or an installed system).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// A legacy BIOS (SeaBIOS): what most installers and every 32-bit system boot with.
    #[default]
    Bios,
    /// UEFI (OVMF), with the VM's own variable store (its boot entries) in `state/`.
    Uefi,
}

impl Firmware {
    /// Whether this is the BIOS (the default, not written to `vm.toml`).
    pub fn is_bios(&self) -> bool {
        *self == Firmware::Bios
    }

    /// The name used in `vm.toml` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// The name shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Firmware::Bios => "BIOS",
            Firmware::Uefi => "UEFI",
        }
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "bios" => Ok(Firmware::Bios),
            "uefi" => Ok(Firmware::Uefi),
            other => Err(format!("unknown firmware `{other}`: use `bios` or `uefi`")),
        }
    }
}

/// Image file format of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// A plain image: byte N of the file is byte N of the disk.
    Raw,
    /// QEMU copy-on-write version 2 (used for linked clones).
    Qcow2,
}

impl DiskFormat {
    /// File name extension for this format.
    pub fn extension(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for DiskFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" | "img" => Ok(DiskFormat::Raw),
            "qcow2" => Ok(DiskFormat::Qcow2),
            other => Err(Error::InvalidInput(format!(
                "unknown disk format `{other}`: use `raw` or `qcow2`"
            ))),
        }
    }
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image file, relative to the bundle (e.g. `disks/disk0.raw`).
    pub file: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Size the guest sees, in bytes.
    pub size: u64,
    /// Whether the guest may only read the disk.
    #[serde(default)]
    pub read_only: bool,
    /// The shared base image this disk is a copy-on-write overlay of (linked clones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Uuid>,
}

/// The CD-ROM drive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdromConfig {
    /// The inserted image, if any (an empty drive has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
}

/// The network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NetworkConfig {
    /// No network card.
    None,
    /// User-mode networking (no root needed) with optional port forwards.
    User {
        /// The card's MAC address.
        mac: MacAddress,
        /// Host ports forwarded to guest ports.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        forwards: Vec<PortForward>,
    },
}

impl NetworkConfig {
    /// User-mode networking with a new random MAC address.
    pub fn user_with_random_mac() -> Self {
        NetworkConfig::User {
            mac: MacAddress::random(),
            forwards: Vec::new(),
        }
    }
}

/// A forwarded port: connections to `host` on the host reach `guest` in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the host.
    pub host: u16,
    /// Port in the guest.
    pub guest: u16,
}

impl FromStr for PortForward {
    type Err = Error;
    /// Parses `tcp:HOST:GUEST`, `udp:HOST:GUEST` or `HOST:GUEST` (TCP).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "bad port forward `{s}`: write it as tcp:HOSTPORT:GUESTPORT (or udp:...), e.g. tcp:2222:22"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (protocol, host, guest) = match parts.as_slice() {
            [h, g] => (Protocol::Tcp, *h, *g),
            [p, h, g] => {
                let protocol = match p.to_ascii_lowercase().as_str() {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return Err(bad()),
                };
                (protocol, *h, *g)
            }
            _ => return Err(bad()),
        };
        let port = |text: &str| match text.parse::<u16>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(p) => Ok(p),
        };
        Ok(PortForward {
            protocol,
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.protocol, self.host, self.guest)
    }
}

/// Transport protocol of a port forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// An Ethernet MAC address, written `02:ab:cd:ef:01:23` in `vm.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A random, locally administered, unicast address.
    pub fn random() -> Self {
        let random = Uuid::new_v4();
        let bytes = random.as_bytes();
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[..6]);
        // Locally administered (bit 1 set), unicast (bit 0 clear).
        mac[0] = (mac[0] & 0xfc) | 0x02;
        MacAddress(mac)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "bad MAC address `{s}`: write six hex bytes like 02:00:00:12:34:56"
            ))
        };
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 == 1 {
            return Err(Error::InvalidInput(format!(
                "MAC address `{s}` is a multicast address; a network card needs a unicast one \
                 (the first byte must be even)"
            )));
        }
        Ok(MacAddress(mac))
    }
}

impl Serialize for MacAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The graphical display.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DisplayConfig {
    /// No screen: serial console only.
    None,
    /// A linear framebuffer of the given size.
    Framebuffer {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
}

/// The most video memory a VM's display may have (64 MiB).
pub const MAX_DISPLAY_VRAM: u64 = 64 << 20;
/// The least video memory a VM's display gets (16 MiB: 2560x1600 at 32 bits per pixel, so the
/// guest can switch to larger modes than it starts in).
pub const MIN_DISPLAY_VRAM: u64 = 16 << 20;

impl DisplayConfig {
    /// The video memory this display gets: a power of two (a PCI BAR's size) that holds the
    /// screen at 32 bits per pixel, at least [`MIN_DISPLAY_VRAM`]; `None` for no display or a
    /// screen too large for [`MAX_DISPLAY_VRAM`].
    pub fn vram_size(&self) -> Option<u64> {
        match *self {
            DisplayConfig::None => None,
            DisplayConfig::Framebuffer { width, height } => {
                let bytes = u64::from(width) * u64::from(height) * 4;
                let size = bytes.next_power_of_two().max(MIN_DISPLAY_VRAM);
                (size <= MAX_DISPLAY_VRAM).then_some(size)
            }
        }
    }

    /// The default screen of a new VM.
    pub fn default_framebuffer() -> Self {
        DisplayConfig::Framebuffer {
            width: 1024,
            height: 768,
        }
    }
}

impl FromStr for DisplayConfig {
    type Err = Error;
    /// Parses `none` or `WIDTHxHEIGHT`.
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("none") {
            return Ok(DisplayConfig::None);
        }
        let bad = || {
            Error::InvalidInput(format!(
                "bad display `{s}`: write WIDTHxHEIGHT (e.g. 1280x800) or `none`"
            ))
        };
        let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
        let width: u32 = w.parse().map_err(|_| bad())?;
        let height: u32 = h.parse().map_err(|_| bad())?;
        if !(320..=7680).contains(&width) || !(200..=4320).contains(&height) {
            return Err(Error::InvalidInput(format!(
                "display {width}x{height} is out of range: width 320..7680, height 200..4320"
            )));
        }
        let display = DisplayConfig::Framebuffer { width, height };
        if display.vram_size().is_none() {
            return Err(Error::InvalidInput(format!(
                "display {width}x{height} needs more than {} MiB of video memory at 32 bits per \
                 pixel: choose a smaller size (e.g. 3840x2160)",
                MAX_DISPLAY_VRAM >> 20
            )));
        }
        Ok(display)
    }
}

impl fmt::Display for DisplayConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisplayConfig::None => f.write_str("none"),
            DisplayConfig::Framebuffer { width, height } => write!(f, "{width}x{height}"),
        }
    }
}

/// Whether `path` is relative and only goes down (no `..`, no root, not empty).
fn is_plain_relative(path: &std::path::Path) -> bool {
    path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// A VM name in Unicode's composed form (NFC): the form Vivarium stores and compares, so
/// that `é` typed as one character or as `e` and a combining accent (as some keyboards and
/// file systems give it) names the same VM.
pub fn normalize_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfc().collect()
}

/// Checks a VM name: what the user may call a VM so that it is also a safe folder name.
pub fn validate_name(name: &str) -> Result<()> {
    let problem = if name.trim().is_empty() {
        Some("it is empty".to_string())
    } else if name != name.trim() {
        Some("it starts or ends with a space".to_string())
    } else if name.chars().count() > MAX_NAME_CHARS {
        Some(format!("it is longer than {MAX_NAME_CHARS} characters"))
    } else if name.starts_with('.') {
        Some("it starts with a dot".to_string())
    } else {
        name.chars()
            .find(|c| {
                c.is_control() || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|')
            })
            .map(|c| format!("it contains the character {c:?}"))
            .or_else(|| {
                name.chars()
                    .find(|c| crate::text::is_invisible(*c))
                    .map(|c| {
                        format!(
                            "it contains the invisible character U+{:04X}, which makes a name look \
                         like another",
                            c as u32
                        )
                    })
            })
    };
    match problem {
        Some(why) => Err(Error::InvalidName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks a CPU count.
pub fn validate_cpus(cpus: u32) -> Result<()> {
    if (MIN_CPUS..=MAX_CPUS).contains(&cpus) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{cpus} CPUs is out of range: choose {MIN_CPUS} to {MAX_CPUS}"
        )))
    }
}

/// Checks a memory size in MiB.
pub fn validate_memory_mib(mib: u64) -> Result<()> {
    if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{mib} MiB of memory is out of range: choose {MIN_MEMORY_MIB} MiB to {} GiB",
            MAX_MEMORY_MIB / 1024
        )))
    }
}

impl VmConfig {
    /// Checks every field a user or a hand edit could get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.format != CONFIG_FORMAT {
            return Err(Error::UnsupportedFormat {
                found: i64::from(self.format),
                supported: CONFIG_FORMAT,
            });
        }
        validate_name(&self.name)?;
        if let Some(machine) = self.arch.machine()
            && machine != self.arch
        {
            return Err(Error::InvalidInput(format!(
                "`arch = \"{}\"` names a guest, not a machine: {} guests run on the {machine} \
                 machine, so write `arch = \"{machine}\"`",
                self.arch, self.arch
            )));
        }
        validate_cpus(self.cpus)?;
        validate_memory_mib(self.memory_mib)?;
        if let BootSource::Linux { kernel, initrd, .. }
        | BootSource::Installer { kernel, initrd, .. } = &self.boot
        {
            for path in std::iter::once(kernel).chain(initrd) {
                if !path.is_absolute() && !is_plain_relative(path) {
                    return Err(Error::InvalidInput(format!(
                        "boot file `{}` must be an absolute path or a plain path inside the \
                         VM's folder",
                        path.display()
                    )));
                }
            }
        }
        for disk in &self.disks {
            if disk.file.is_absolute()
                || disk
                    .file
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(Error::InvalidInput(format!(
                    "disk file `{}` must be a plain path inside the VM's folder",
                    disk.file.display()
                )));
            }
            if disk.size == 0 {
                return Err(Error::InvalidInput(format!(
                    "disk `{}` has a size of 0 bytes",
                    disk.file.display()
                )));
            }
        }
        Ok(())
    }

    /// Why this VM cannot start on this computer, if it cannot: its machine is of another
    /// architecture than this computer's (see [`Arch::cannot_start_on`]).
    pub fn cannot_start_here(&self) -> Option<String> {
        self.arch.cannot_start_on(Arch::host_machine())
    }

    /// Fails with [`Error::OtherArch`] when this VM cannot start on this computer (see
    /// [`VmConfig::cannot_start_here`]). Every start checks it before anything else.
    pub fn check_starts_here(&self) -> Result<()> {
        match self.cannot_start_here() {
            None => Ok(()),
            Some(reason) => Err(Error::OtherArch {
                name: self.name.clone(),
                reason,
            }),
        }
    }

    /// Parses `vm.toml` text. The `format` key is checked before anything else so that a file
    /// from a newer Vivarium is reported as such, not as a syntax error.
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| Error::CorruptConfig(e.message().to_string()))?;
        match table.get("format") {
            None => {
                return Err(Error::CorruptConfig(
                    "the `format` key is missing, so this is not a Vivarium vm.toml".into(),
                ));
            }
            Some(toml::Value::Integer(n)) if *n == i64::from(CONFIG_FORMAT) => {}
            Some(toml::Value::Integer(n)) => {
                return Err(Error::UnsupportedFormat {
                    found: *n,
                    supported: CONFIG_FORMAT,
                });
            }
            Some(other) => {
                return Err(Error::CorruptConfig(format!(
                    "`format` must be a number, found {}",
                    other.type_str()
                )));
            }
        }
        let config: VmConfig = toml::from_str(text)
            .map_err(|e: toml::de::Error| Error::CorruptConfig(e.to_string().trim().to_string()))?;
        config.validate().map_err(|e| match e {
            Error::CorruptConfig(_) | Error::UnsupportedFormat { .. } => e,
            other => Error::CorruptConfig(other.to_string()),
        })?;
        Ok(config)
    }

    /// Renders `vm.toml` text.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("a VmConfig always serialises to TOML");
        format!("# Vivarium virtual machine configuration.\n{body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmConfig {
        VmConfig {
            format: CONFIG_FORMAT,
            id: Uuid::new_v4(),
            name: "debian".into(),
            created: "2026-11-24T10:00:00Z".into(),
            arch: Arch::X86_64,
            os: OsInfo::linux(),
            cpus: 2,
            memory_mib: 1024,
            boot: BootSource::Linux {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/k/initrd".into()),
                cmdline: "console=ttyS0".into(),
            },
            firmware: Default::default(),
            disks: vec![DiskConfig {
                file: "disks/disk0.raw".into(),
                format: DiskFormat::Raw,
                size: 1 << 30,
                read_only: false,
                base: None,
            }],
            cdrom: Some(CdromConfig { image: None }),
            network: NetworkConfig::User {
                mac: "02:00:00:00:00:01".parse().unwrap(),
                forwards: vec!["tcp:2222:22".parse().unwrap()],
            },
            display: DisplayConfig::default_framebuffer(),
            notes: "hello\nworld".into(),
        }
    }

    #[test]
    fn the_fuzz_seeds_are_valid_configurations() {
        // The seeds of the vm_toml fuzz target start it from real configurations; they must
        // keep parsing as the format grows.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/vm_toml");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let config =
                VmConfig::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(VmConfig::from_toml(&config.to_toml()).unwrap(), config);
            seen += 1;
        }
        assert!(seen >= 3, "{seen} seeds in {}", dir.display());
    }

    #[test]
    fn round_trips_through_toml() {
        let config = sample();
        let text = config.to_toml();
        assert!(text.contains("format = 1"), "{text}");
        assert_eq!(VmConfig::from_toml(&text).unwrap(), config);
    }

    #[test]
    fn a_config_from_before_the_display_gets_the_default_screen() {
        let text = sample().to_toml();
        let start = text.find("[display]").expect("the display table");
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |i| start + 1 + i + 1);
        let old = format!("{}{}", &text[..start], &text[end..]);
        assert!(!old.contains("display"), "{old}");
        let config = VmConfig::from_toml(&old).unwrap();
        assert_eq!(config.display, DisplayConfig::default_framebuffer());
    }

    #[test]
    fn the_architecture_round_trips_and_defaults_to_x86_64() {
        let text = sample().to_toml();
        assert!(text.contains("\narch = \"x86_64\"\n"), "{text}");
        let mut arm = sample();
        arm.arch = Arch::Aarch64;
        let text = arm.to_toml();
        assert!(text.contains("\narch = \"aarch64\"\n"), "{text}");
        assert_eq!(VmConfig::from_toml(&text).unwrap(), arm);
        // A bundle written before the key existed is an x86_64 machine, and keeps working.
        let pc = sample();
        let old = pc.to_toml().replace("arch = \"x86_64\"\n", "");
        assert!(!old.contains("arch"), "{old}");
        let config = VmConfig::from_toml(&old).unwrap();
        assert_eq!(config.arch, Arch::X86_64);
        assert_eq!(config, pc);
        // Rewritten, it says so.
        assert!(config.to_toml().contains("arch = \"x86_64\""));
        // The names distributions use are read as the machine they name.
        let text = sample()
            .to_toml()
            .replace("arch = \"x86_64\"", "arch = \"arm64\"");
        assert_eq!(VmConfig::from_toml(&text).unwrap().arch, Arch::Aarch64);
        // A guest architecture that runs on a machine of another name says which to write.
        let text = sample()
            .to_toml()
            .replace("arch = \"x86_64\"", "arch = \"i686\"");
        let e = VmConfig::from_toml(&text).unwrap_err();
        assert!(matches!(e, Error::CorruptConfig(_)), "{e:?}");
        assert!(e.to_string().contains("arch = \"x86_64\""), "{e}");
        // An unknown one is damage.
        let text = sample()
            .to_toml()
            .replace("arch = \"x86_64\"", "arch = \"mips\"");
        let e = VmConfig::from_toml(&text).unwrap_err();
        assert!(e.to_string().contains("unknown architecture `mips`"), "{e}");
        // One Vivarium has no machine for (a newer Vivarium's, say) is read, and cannot start.
        let text = sample()
            .to_toml()
            .replace("arch = \"x86_64\"", "arch = \"riscv64\"");
        let config = VmConfig::from_toml(&text).unwrap();
        assert!(config.cannot_start_here().is_some());
    }

    #[test]
    fn a_vm_of_another_architecture_cannot_start_here() {
        let mut config = sample();
        config.arch = Arch::host_machine().unwrap_or(Arch::X86_64);
        assert_eq!(config.cannot_start_here(), None);
        config.check_starts_here().unwrap();
        config.arch = if config.arch == Arch::X86_64 {
            Arch::Aarch64
        } else {
            Arch::X86_64
        };
        let e = config.check_starts_here().unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::OtherArch);
        let text = e.to_string();
        assert!(
            text.contains(&format!("this VM is an {} machine", config.arch)),
            "{text}"
        );
        assert!(text.contains("VM `debian` cannot start here"), "{text}");
    }

    #[test]
    fn refuses_a_future_format_by_name() {
        let text = sample().to_toml().replace("format = 1", "format = 7");
        match VmConfig::from_toml(&text) {
            Err(Error::UnsupportedFormat { found: 7, .. }) => {}
            other => panic!("expected UnsupportedFormat, got {other:?}"),
        }
        // Even when the rest would not parse under format 1.
        let text = "format = 2\nsomething_new = true\n";
        assert!(matches!(
            VmConfig::from_toml(text),
            Err(Error::UnsupportedFormat { found: 2, .. })
        ));
    }

    #[test]
    fn reports_corruption_clearly() {
        for text in [
            "",
            "not toml at all [",
            "format = \"one\"",
            "format = 1\nname = \"x\"",
        ] {
            let err = VmConfig::from_toml(text).unwrap_err();
            assert!(matches!(err, Error::CorruptConfig(_)), "{text:?}: {err:?}");
        }
        let text = sample().to_toml().replace("cpus = 2", "cpus = 0");
        let err = VmConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("CPUs"), "{err}");
        let text = sample().to_toml() + "\nunknown_key = 1\n";
        assert!(VmConfig::from_toml(&text).is_err());
    }

    #[test]
    fn refuses_disk_paths_that_leave_the_bundle() {
        let mut config = sample();
        config.disks[0].file = "../../etc/passwd".into();
        assert!(config.validate().is_err());
        config.disks[0].file = "/etc/passwd".into();
        assert!(config.validate().is_err());
        let mut config = sample();
        config.boot = BootSource::Linux {
            kernel: "state/installer-kernel".into(),
            initrd: Some("state/installer-initrd".into()),
            cmdline: String::new(),
        };
        config.validate().unwrap();
        config.boot = BootSource::Linux {
            kernel: "../other.vivm/state/k".into(),
            initrd: None,
            cmdline: String::new(),
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn names() {
        for good in ["debian", "Debian 12 (test)", "été", "a"] {
            validate_name(good).unwrap();
        }
        let long = "x".repeat(65);
        for bad in [
            "", " ", " lead", "trail ", ".hidden", "a/b", "a\\b", "tab\t", &long,
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        // Names that look like other names: a right-to-left override, a zero-width space.
        for bad in ["web\u{202e}gpj", "de\u{200b}bian", "\u{feff}debian"] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("invisible character"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn macs() {
        for _ in 0..100 {
            let mac = MacAddress::random();
            assert_eq!(mac.0[0] & 0x03, 0x02, "{mac}");
            assert_eq!(mac.to_string().parse::<MacAddress>().unwrap(), mac);
        }
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "01:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwards_and_displays() {
        assert_eq!(
            "2222:22".parse::<PortForward>().unwrap(),
            PortForward {
                protocol: Protocol::Tcp,
                host: 2222,
                guest: 22
            }
        );
        assert_eq!(
            "udp:53:53".parse::<PortForward>().unwrap().protocol,
            Protocol::Udp
        );
        for bad in ["", "22", "tcp:0:22", "sctp:1:2", "tcp:70000:1", "a:b"] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad}");
        }
        assert_eq!(
            "none".parse::<DisplayConfig>().unwrap(),
            DisplayConfig::None
        );
        assert_eq!(
            "1280x800".parse::<DisplayConfig>().unwrap(),
            DisplayConfig::Framebuffer {
                width: 1280,
                height: 800
            }
        );
        assert!("10x10".parse::<DisplayConfig>().is_err());
        assert!("7680x4320".parse::<DisplayConfig>().is_err());
        assert_eq!(
            "1024x768".parse::<DisplayConfig>().unwrap().vram_size(),
            Some(MIN_DISPLAY_VRAM)
        );
        assert_eq!(
            "3840x2160".parse::<DisplayConfig>().unwrap().vram_size(),
            Some(32 << 20)
        );
        assert_eq!(DisplayConfig::None.vram_size(), None);
        assert!("big".parse::<DisplayConfig>().is_err());
    }
}
