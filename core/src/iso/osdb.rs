//! Operating system families and what a new VM for each should get (like libosinfo's
//! recommendations in GNOME Boxes).

use serde::Serialize;

/// A family of operating systems Vivarium recognises on an ISO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OsFamily {
    /// Debian GNU/Linux.
    Debian,
    /// Ubuntu and its flavours.
    Ubuntu,
    /// Fedora.
    Fedora,
    /// Red Hat Enterprise Linux and its rebuilds (CentOS, Rocky, AlmaLinux).
    RedHat,
    /// Arch Linux.
    Arch,
    /// openSUSE.
    OpenSuse,
    /// Another Linux distribution.
    Linux,
    /// Microsoft Windows.
    Windows,
    /// FreeBSD.
    FreeBsd,
    /// OpenBSD.
    OpenBsd,
    /// NetBSD.
    NetBsd,
    /// A memory tester (Memtest86+).
    Memtest,
    /// Not recognised.
    Other,
}

/// What a new VM for a family gets unless the user says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Recommended {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Disk size in bytes (0: the VM needs no disk).
    pub disk_bytes: u64,
    /// Icon name: `debian`, `ubuntu`, `fedora`, `arch`, `linux`, `windows`, `bsd` or `other`.
    pub icon: &'static str,
}

const GIB: u64 = 1 << 30;

impl OsFamily {
    /// The recommended hardware and icon of this family.
    pub fn recommended(self) -> Recommended {
        let (cpus, memory_mib, disk_gib, icon) = match self {
            OsFamily::Debian => (2, 2048, 20, "debian"),
            OsFamily::Ubuntu => (2, 4096, 25, "ubuntu"),
            OsFamily::Fedora => (2, 4096, 20, "fedora"),
            OsFamily::RedHat => (2, 4096, 20, "linux"),
            OsFamily::Arch => (2, 2048, 20, "arch"),
            OsFamily::OpenSuse => (2, 4096, 40, "linux"),
            OsFamily::Linux => (2, 2048, 20, "linux"),
            OsFamily::Windows => (4, 4096, 64, "windows"),
            OsFamily::FreeBsd | OsFamily::OpenBsd | OsFamily::NetBsd => (2, 2048, 20, "bsd"),
            OsFamily::Memtest => (1, 1024, 0, "other"),
            OsFamily::Other => (2, 2048, 20, "other"),
        };
        Recommended {
            cpus,
            memory_mib,
            disk_bytes: disk_gib * GIB,
            icon,
        }
    }

    /// The family's name shown to people.
    pub fn display_name(self) -> &'static str {
        match self {
            OsFamily::Debian => "Debian",
            OsFamily::Ubuntu => "Ubuntu",
            OsFamily::Fedora => "Fedora",
            OsFamily::RedHat => "Red Hat Enterprise Linux",
            OsFamily::Arch => "Arch Linux",
            OsFamily::OpenSuse => "openSUSE",
            OsFamily::Linux => "Linux",
            OsFamily::Windows => "Windows",
            OsFamily::FreeBsd => "FreeBSD",
            OsFamily::OpenBsd => "OpenBSD",
            OsFamily::NetBsd => "NetBSD",
            OsFamily::Memtest => "Memtest86+",
            OsFamily::Other => "Other",
        }
    }

    /// The id prefix used in `vm.toml` (`debian` → `debian12`).
    pub fn id_prefix(self) -> &'static str {
        match self {
            OsFamily::Debian => "debian",
            OsFamily::Ubuntu => "ubuntu",
            OsFamily::Fedora => "fedora",
            OsFamily::RedHat => "rhel",
            OsFamily::Arch => "archlinux",
            OsFamily::OpenSuse => "opensuse",
            OsFamily::Linux => "linux",
            OsFamily::Windows => "win",
            OsFamily::FreeBsd => "freebsd",
            OsFamily::OpenBsd => "openbsd",
            OsFamily::NetBsd => "netbsd",
            OsFamily::Memtest => "memtest",
            OsFamily::Other => "other",
        }
    }

    /// Whether the family boots a Linux kernel.
    pub fn is_linux(self) -> bool {
        matches!(
            self,
            OsFamily::Debian
                | OsFamily::Ubuntu
                | OsFamily::Fedora
                | OsFamily::RedHat
                | OsFamily::Arch
                | OsFamily::OpenSuse
                | OsFamily::Linux
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_sane_recommendations() {
        use OsFamily::*;
        for family in [
            Debian, Ubuntu, Fedora, RedHat, Arch, OpenSuse, Linux, Windows, FreeBsd, OpenBsd,
            NetBsd, Memtest, Other,
        ] {
            let r = family.recommended();
            crate::config::validate_cpus(r.cpus).unwrap();
            crate::config::validate_memory_mib(r.memory_mib).unwrap();
            assert!(
                [
                    "debian", "ubuntu", "fedora", "arch", "linux", "windows", "bsd", "other"
                ]
                .contains(&r.icon)
            );
            assert!(r.disk_bytes == 0 || r.disk_bytes >= 16 << 30, "{family:?}");
        }
        assert_eq!(Windows.recommended().memory_mib, 4096);
        assert_eq!(Memtest.recommended().disk_bytes, 0);
    }
}
