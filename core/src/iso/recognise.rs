//! Recognising the operating system on an ISO: family, name, version and architecture, from
//! the volume id and the files distributions put on their media.

use serde::Serialize;

pub use crate::arch::{Arch, kernel_arch};

use super::IsoError;
use super::osdb::OsFamily;
use super::reader::{ImageSource, IsoImage};

/// Largest marker file (`.disk/info`, `.treeinfo`) read, in bytes.
const MAX_MARKER_BYTES: u64 = 64 << 10;

/// The operating system recognised on an ISO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecognisedOs {
    /// Its family.
    pub family: OsFamily,
    /// Machine-readable id for `vm.toml` (e.g. `debian12`, `ubuntu24.04`, `win`).
    pub id: String,
    /// Name shown to people (e.g. `Debian 12`).
    pub name: String,
    /// Version as the media states it (e.g. `12.5.0`), if known.
    pub version: Option<String>,
    /// Architecture, if known.
    pub arch: Option<Arch>,
    /// What the recognition is based on, for people (e.g. "`.disk/info` says ...").
    pub evidence: Vec<String>,
}

impl RecognisedOs {
    fn new(family: OsFamily, version: Option<String>) -> Self {
        let major = version.as_deref().map(|v| short_version(family, v));
        let (id, name) = match &major {
            Some(v) => (
                format!("{}{v}", family.id_prefix()),
                format!("{} {v}", family.display_name()),
            ),
            None => (
                family.id_prefix().to_string(),
                family.display_name().to_string(),
            ),
        };
        RecognisedOs {
            family,
            id,
            name,
            version,
            arch: None,
            evidence: Vec::new(),
        }
    }
}

/// The part of a version a VM's name carries: `12` of Debian `12.5.0`, `24.04` of Ubuntu
/// `24.04.1`.
fn short_version(family: OsFamily, version: &str) -> String {
    let parts: Vec<&str> = version.split('.').collect();
    match family {
        OsFamily::Debian | OsFamily::Fedora | OsFamily::RedHat => parts[0].to_string(),
        OsFamily::Ubuntu | OsFamily::FreeBsd | OsFamily::OpenBsd | OsFamily::OpenSuse => {
            parts.iter().take(2).copied().collect::<Vec<_>>().join(".")
        }
        _ => version.to_string(),
    }
}

fn read_text<S: ImageSource + ?Sized>(image: &IsoImage<S>, path: &str) -> Option<String> {
    match image.read_file(path, MAX_MARKER_BYTES) {
        Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    }
}

/// Recognises the OS on an open image. Unknown media give family `Other`.
pub fn recognise<S: ImageSource + ?Sized>(image: &IsoImage<S>) -> Result<RecognisedOs, IsoError> {
    let volume_id = image.info().volume_id.clone();
    let root: Vec<String> = image.root_dir()?.into_iter().map(|e| e.name).collect();
    let has_root = |name: &str| root.iter().any(|n| n.eq_ignore_ascii_case(name));
    let mut os = recognise_family(image, &volume_id, &has_root);
    if os.arch.is_none() {
        os.arch = arch_from_layout(image, &mut os.evidence);
    }
    Ok(os)
}

fn recognise_family<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    volume_id: &str,
    has_root: &dyn Fn(&str) -> bool,
) -> RecognisedOs {
    // Windows: its installer image.
    for marker in ["sources/install.wim", "sources/install.esd"] {
        if image.is_file(marker) {
            let mut os = RecognisedOs::new(OsFamily::Windows, None);
            os.evidence
                .push(format!("it has `{marker}` (the Windows installer image)"));
            return os;
        }
    }
    // Fedora and Red Hat: `.treeinfo`.
    if let Some(text) = read_text(image, ".treeinfo")
        && let Some(os) = from_treeinfo(&text)
    {
        return os;
    }
    // Debian, Ubuntu and their derivatives: `.disk/info`.
    if let Some(text) = read_text(image, ".disk/info")
        && let Some(os) = from_disk_info(&text)
    {
        return os;
    }
    if has_root("casper") {
        let mut os = RecognisedOs::new(OsFamily::Ubuntu, None);
        os.evidence
            .push("it has `casper/` (Ubuntu's live system)".to_string());
        return os;
    }
    for (dir, arch) in [
        ("install.amd", Arch::X86_64),
        ("install.386", Arch::X86),
        ("install.a64", Arch::Aarch64),
    ] {
        if has_root(dir) {
            let mut os = RecognisedOs::new(OsFamily::Debian, None);
            os.arch = Some(arch);
            os.evidence
                .push(format!("it has `{dir}/` (the Debian installer for {arch})"));
            return os;
        }
    }
    for arch in ["x86_64", "aarch64", "i686"] {
        if image.is_dir(&format!("arch/boot/{arch}")) {
            let version = volume_id
                .strip_prefix("ARCH_")
                .filter(|v| v.len() == 6 && v.chars().all(|c| c.is_ascii_digit()))
                .map(|v| format!("{}.{}", &v[..4], &v[4..]));
            let mut os = RecognisedOs::new(OsFamily::Arch, version);
            os.id = "archlinux".into();
            os.arch = Arch::from_name(arch);
            os.evidence.push(format!("it has `arch/boot/{arch}/`"));
            return os;
        }
    }
    for arch in ["x86_64", "aarch64", "i386", "ppc64le", "s390x"] {
        if image.is_file(&format!("boot/{arch}/loader/linux"))
            || image.is_dir(&format!("boot/{arch}/loader"))
        {
            let lower = volume_id.to_ascii_lowercase();
            let mut os = if lower.contains("tumbleweed") {
                let mut os = RecognisedOs::new(OsFamily::OpenSuse, None);
                os.id = "opensusetumbleweed".into();
                os.name = "openSUSE Tumbleweed".into();
                os
            } else if let Some(version) = version_after(volume_id, "Leap-") {
                let mut os = RecognisedOs::new(OsFamily::OpenSuse, Some(version.clone()));
                os.name = format!("openSUSE Leap {version}");
                os
            } else {
                RecognisedOs::new(OsFamily::OpenSuse, None)
            };
            os.arch = Arch::from_name(arch);
            os.evidence.push(format!(
                "it has `boot/{arch}/loader/` (openSUSE's boot loader)"
            ));
            return os;
        }
    }
    if let Some(os) = from_bsd(image, volume_id, has_root) {
        return os;
    }
    let lower = volume_id.to_ascii_lowercase();
    if lower.contains("mt86")
        || lower.contains("memtest")
        || [
            "memtest",
            "memtest.bin",
            "memtest86+.bin",
            "mt86plus",
            "boot/memtest",
            "boot/mt86plus",
        ]
        .iter()
        .any(|p| image.is_file(p))
    {
        let mut os = RecognisedOs::new(OsFamily::Memtest, None);
        os.evidence
            .push("it holds Memtest86+ (a memory tester)".to_string());
        return os;
    }
    let mut os = RecognisedOs::new(OsFamily::Other, None);
    if !volume_id.is_empty() {
        os.name = volume_id.to_string();
        os.evidence.push(format!(
            "nothing known on it; its volume id is \"{volume_id}\""
        ));
    }
    os
}

/// The version number following `marker` in `text` (`openSUSE-Leap-15.5-DVD` → `15.5`).
fn version_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let version: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!version.is_empty()).then_some(version)
}

/// Reads `.disk/info`, e.g. `Debian GNU/Linux 12.5.0 "Bookworm" - Official amd64 NETINST ...`.
pub fn from_disk_info(text: &str) -> Option<RecognisedOs> {
    let line = text.lines().next()?.trim();
    if line.is_empty() {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let version_at = words
        .iter()
        .position(|w| w.starts_with(|c: char| c.is_ascii_digit()));
    let distro = words[..version_at.unwrap_or(words.len())].join(" ");
    let version = version_at.map(|i| {
        words[i]
            .trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.')
            .to_string()
    });
    let lower = distro.to_ascii_lowercase();
    let family = if lower.contains("ubuntu") {
        OsFamily::Ubuntu
    } else if lower.starts_with("debian") {
        OsFamily::Debian
    } else {
        OsFamily::Linux
    };
    let mut os = RecognisedOs::new(family, version.clone());
    match family {
        OsFamily::Ubuntu => {
            // Flavours keep their own name (Kubuntu, Xubuntu, ...).
            let flavour = words.first().copied().unwrap_or("Ubuntu");
            if let Some(v) = &version {
                os.name = format!("{flavour} {}", short_version(family, v));
                if line.contains("LTS") {
                    os.name.push_str(" LTS");
                }
            }
        }
        OsFamily::Linux => {
            os.name = match &version {
                Some(v) => format!("{distro} {v}"),
                None => distro.clone(),
            };
        }
        _ => {}
    }
    os.arch = words.iter().find_map(|w| Arch::from_name(w));
    os.evidence.push(format!("`.disk/info` says \"{line}\""));
    Some(os)
}

/// Reads `.treeinfo` (an INI file) of Fedora, RHEL and their rebuilds.
pub fn from_treeinfo(text: &str) -> Option<RecognisedOs> {
    let mut section = String::new();
    let mut get = std::collections::HashMap::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            get.insert(
                format!("{section}.{}", key.trim().to_ascii_lowercase()),
                value.trim().to_string(),
            );
        }
    }
    let pick = |keys: &[&str]| keys.iter().find_map(|k| get.get(*k).cloned());
    let name = pick(&["release.name", "general.family", "general.name"])?;
    let version = pick(&["release.version", "general.version"]);
    let arch = pick(&["tree.arch", "general.arch"]);
    let lower = name.to_ascii_lowercase();
    let family = if lower.contains("fedora") {
        OsFamily::Fedora
    } else if ["red hat", "centos", "rocky", "alma", "oracle"]
        .iter()
        .any(|n| lower.contains(n))
    {
        OsFamily::RedHat
    } else {
        OsFamily::Linux
    };
    let mut os = RecognisedOs::new(family, version.clone());
    if family != OsFamily::Fedora {
        let short = version.as_deref().map(|v| short_version(family, v));
        os.name = match &short {
            Some(v) => format!("{name} {v}"),
            None => name.clone(),
        };
    }
    os.arch = arch.as_deref().and_then(Arch::from_name);
    os.evidence.push(format!(
        "`.treeinfo` names {name}{}",
        version.map(|v| format!(" {v}")).unwrap_or_default()
    ));
    Some(os)
}

fn from_bsd<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    volume_id: &str,
    has_root: &dyn Fn(&str) -> bool,
) -> Option<RecognisedOs> {
    let upper = volume_id.to_ascii_uppercase();
    // FreeBSD: `14_0_RELEASE_AMD64_CD`, and its loader and kernel.
    if image.is_file("boot/kernel/kernel") || upper.contains("_RELEASE_") && upper.contains("BSD") {
        let parts: Vec<&str> = upper.split('_').collect();
        let version = match parts.as_slice() {
            [major, minor, ..] if major.chars().all(|c| c.is_ascii_digit()) => {
                Some(format!("{major}.{}", minor))
            }
            _ => None,
        };
        let mut os = RecognisedOs::new(OsFamily::FreeBsd, version);
        os.arch = parts.iter().find_map(|p| Arch::from_name(p));
        os.evidence
            .push("it has `boot/kernel/kernel` (the FreeBSD kernel)".to_string());
        return Some(os);
    }
    // OpenBSD: `<version>/<arch>/bsd.rd`.
    if let Ok(entries) = image.root_dir() {
        for entry in entries.iter().filter(|e| e.is_dir) {
            let looks_like_version = entry.name.split('.').count() == 2
                && entry.name.chars().all(|c| c.is_ascii_digit() || c == '.');
            if !looks_like_version {
                continue;
            }
            for arch in ["amd64", "i386", "arm64"] {
                if image.is_file(&format!("{}/{arch}/bsd.rd", entry.name)) {
                    let mut os = RecognisedOs::new(OsFamily::OpenBsd, Some(entry.name.clone()));
                    os.arch = Arch::from_name(arch);
                    os.evidence.push(format!(
                        "it has `{}/{arch}/bsd.rd` (OpenBSD's installer)",
                        entry.name
                    ));
                    return Some(os);
                }
            }
        }
    }
    if has_root("netbsd") || upper.starts_with("NETBSD") {
        let mut os = RecognisedOs::new(OsFamily::NetBsd, None);
        os.evidence.push("it has the NetBSD kernel".to_string());
        return Some(os);
    }
    None
}

/// The architecture from directory names and the EFI boot loader's file name.
fn arch_from_layout<S: ImageSource + ?Sized>(
    image: &IsoImage<S>,
    evidence: &mut Vec<String>,
) -> Option<Arch> {
    for (file, arch) in [
        ("EFI/BOOT/BOOTX64.EFI", Arch::X86_64),
        ("EFI/BOOT/BOOTAA64.EFI", Arch::Aarch64),
        ("EFI/BOOT/BOOTIA32.EFI", Arch::X86),
        ("EFI/BOOT/BOOTRISCV64.EFI", Arch::Riscv64),
        ("EFI/BOOT/BOOTARM.EFI", Arch::Arm),
    ] {
        if image.is_file(file) {
            evidence.push(format!("its UEFI boot loader is `{file}`"));
            return Some(arch);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_info_of_debian_and_ubuntu() {
        let os = from_disk_info(
            "Debian GNU/Linux 12.5.0 \"Bookworm\" - Official amd64 NETINST with firmware 20240210-11:27",
        )
        .unwrap();
        assert_eq!(os.family, OsFamily::Debian);
        assert_eq!(os.id, "debian12");
        assert_eq!(os.name, "Debian 12");
        assert_eq!(os.version.as_deref(), Some("12.5.0"));
        assert_eq!(os.arch, Some(Arch::X86_64));

        let os = from_disk_info("Ubuntu 24.04.1 LTS \"Noble Numbat\" - Release amd64 (20240827.1)")
            .unwrap();
        assert_eq!(os.family, OsFamily::Ubuntu);
        assert_eq!(os.id, "ubuntu24.04");
        assert_eq!(os.name, "Ubuntu 24.04 LTS");
        assert_eq!(os.arch, Some(Arch::X86_64));

        let os = from_disk_info("Linux Mint 21.3 \"Virginia\" - Release amd64 20240108").unwrap();
        assert_eq!(os.family, OsFamily::Linux);
        assert_eq!(os.name, "Linux Mint 21.3");
        assert!(from_disk_info("").is_none());
    }

    #[test]
    fn treeinfo_of_fedora_and_rocky() {
        let os = from_treeinfo(
            "[header]\ntype = productmd.treeinfo\n[release]\nname = Fedora\nshort = Fedora\nversion = 39\n\
             [tree]\narch = x86_64\nplatforms = x86_64,xen\n",
        )
        .unwrap();
        assert_eq!(
            (os.family, os.id.as_str(), os.name.as_str()),
            (OsFamily::Fedora, "fedora39", "Fedora 39")
        );
        assert_eq!(os.arch, Some(Arch::X86_64));
        let os = from_treeinfo("[general]\nfamily = Rocky Linux\nversion = 9.3\narch = aarch64\n")
            .unwrap();
        assert_eq!(os.family, OsFamily::RedHat);
        assert_eq!(os.name, "Rocky Linux 9");
        assert_eq!(os.arch, Some(Arch::Aarch64));
        assert!(from_treeinfo("garbage").is_none());
    }
}
