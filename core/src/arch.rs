//! CPU architectures: of a guest's machine (`arch` in `vm.toml`), of this computer, of an
//! installer ISO and of a kernel image (read from its header).
//!
//! Vivarium has two machines: the x86_64 PC (the `pc` board, which also runs 32-bit x86
//! systems) and the aarch64 `virt` board. A VM is one of them ([`Arch::machine`]); it starts
//! only on a computer whose own machine is the same ([`Arch::host_machine`]).

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many bytes of a kernel image [`kernel_file_arch`] reads: every header
/// [`kernel_arch`] knows lies in them (a PE header is found through its offset at 0x3c, which
/// is small in every EFI stub).
pub const KERNEL_HEAD_BYTES: usize = 4096;

/// A CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit x86 (amd64).
    X86_64,
    /// 32-bit x86 (i386/i686).
    X86,
    /// 64-bit ARM (arm64).
    Aarch64,
    /// 32-bit ARM.
    Arm,
    /// 64-bit RISC-V.
    Riscv64,
    /// 64-bit little-endian POWER.
    Ppc64le,
    /// IBM Z.
    S390x,
}

/// The machines Vivarium has, as people read them in messages.
const MACHINES: &str = "x86_64 (which also runs i686 systems) and aarch64";

impl Arch {
    /// The architecture this program runs on, if it is one of the above.
    pub fn host() -> Option<Arch> {
        Arch::from_name(std::env::consts::ARCH)
    }

    /// The machine VMs get on this computer (x86_64 on an x86_64 host, aarch64 on an
    /// aarch64 one), or `None` where Vivarium has none.
    pub fn host_machine() -> Option<Arch> {
        Arch::host().and_then(Arch::machine)
    }

    /// The Vivarium machine that runs guests of this architecture: the x86_64 PC for x86_64
    /// and 32-bit x86 guests, the aarch64 machine for aarch64 ones; `None` for the others.
    pub fn machine(self) -> Option<Arch> {
        match self {
            Arch::X86_64 | Arch::X86 => Some(Arch::X86_64),
            Arch::Aarch64 => Some(Arch::Aarch64),
            Arch::Arm | Arch::Riscv64 | Arch::Ppc64le | Arch::S390x => None,
        }
    }

    /// [`Arch::machine`], or an error saying that Vivarium has no machine for `what` (e.g.
    /// "the kernel `vmlinuz`"), which is built for this architecture.
    pub fn machine_for(self, what: &str) -> Result<Arch> {
        self.machine().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{what} is built for {self}, and {}",
                self.no_machine()
            ))
        })
    }

    /// [`Arch::machine`], or an error saying that Vivarium has no machine of this
    /// architecture (for a VM asked to be one).
    pub fn machine_or_refuse(self) -> Result<Arch> {
        self.machine().ok_or_else(|| {
            Error::InvalidInput(format!(
                "a VM cannot be {} machine: {}",
                self.with_article(),
                self.no_machine()
            ))
        })
    }

    fn no_machine(self) -> String {
        format!("Vivarium has no {self} machine: it has {MACHINES} machines")
    }

    /// Parses the names distributions use (`amd64`, `x86_64`, `i386`, `arm64`, ...).
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name.to_ascii_lowercase().as_str() {
            "x86_64" | "amd64" | "x64" | "x86-64" => Arch::X86_64,
            "i386" | "i486" | "i586" | "i686" | "x86" | "ia32" => Arch::X86,
            "aarch64" | "arm64" | "a64" | "aa64" => Arch::Aarch64,
            "armhf" | "armel" | "armv7" | "armv7hl" | "arm" => Arch::Arm,
            "riscv64" => Arch::Riscv64,
            "ppc64el" | "ppc64le" => Arch::Ppc64le,
            "s390x" => Arch::S390x,
            _ => return None,
        })
    }

    /// The usual name (`x86_64`, `aarch64`, ...), as `vm.toml` and `--json` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::X86 => "i686",
            Arch::Aarch64 => "aarch64",
            Arch::Arm => "arm",
            Arch::Riscv64 => "riscv64",
            Arch::Ppc64le => "ppc64le",
            Arch::S390x => "s390x",
        }
    }

    /// The name with its indefinite article, as said aloud: "an x86_64", "a riscv64".
    pub fn with_article(self) -> String {
        let article = match self {
            Arch::X86_64 | Arch::X86 | Arch::Aarch64 | Arch::Arm | Arch::S390x => "an",
            Arch::Riscv64 | Arch::Ppc64le => "a",
        };
        format!("{article} {self}")
    }

    /// Why a VM whose machine is of this architecture cannot start on a computer whose
    /// machine is `host` (see [`Arch::host_machine`]; `None`: a computer Vivarium has no
    /// machine for), or `None` when it can.
    pub fn cannot_start_on(self, host: Option<Arch>) -> Option<String> {
        if host == Some(self) {
            return None;
        }
        let vm = match self.machine() {
            Some(_) => format!("this VM is {} machine", self.with_article()),
            None => format!(
                "this VM is {} machine, which this Vivarium does not have",
                self.with_article()
            ),
        };
        Some(match host {
            Some(host) => format!("{vm}; this computer runs {host} VMs"),
            None => format!(
                "{vm}; this computer ({}) runs no Vivarium VMs",
                std::env::consts::ARCH
            ),
        })
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    /// Parses a name of [`Arch::from_name`], refusing architectures Vivarium has no machine
    /// for; `i686` (a 32-bit x86 system) gives the x86_64 machine, which runs it.
    fn from_str(s: &str) -> Result<Arch> {
        let arch = Arch::from_name(s).ok_or_else(|| {
            Error::InvalidInput(format!(
                "unknown architecture `{s}`: choose x86_64 or aarch64"
            ))
        })?;
        arch.machine_or_refuse()
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        Arch::from_name(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown architecture `{name}`: write x86_64 or aarch64"
            ))
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The architecture a kernel image is built for, from its header: an x86 bzImage (`HdrS`),
/// an arm64 or RISC-V `Image`, an ELF file, or a PE/COFF (EFI) executable.
pub fn kernel_arch(head: &[u8]) -> Option<Arch> {
    let at = |i: usize, n: usize| head.get(i..i + n);
    if at(0x202, 4) == Some(b"HdrS") {
        let version = at(0x206, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        let xloadflags = at(0x236, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
        return Some(if version >= 0x020c && xloadflags & 1 != 0 {
            Arch::X86_64
        } else {
            Arch::X86
        });
    }
    if at(0x38, 4) == Some(b"ARM\x64") {
        return Some(Arch::Aarch64);
    }
    if at(0x38, 4) == Some(b"RSC\x05") {
        return Some(Arch::Riscv64);
    }
    if at(0, 4) == Some(b"\x7fELF") {
        let little = head.get(5) == Some(&1);
        let machine = at(18, 2).map(|b| {
            if little {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })?;
        return match machine {
            0x3E => Some(Arch::X86_64),
            0x03 => Some(Arch::X86),
            0xB7 => Some(Arch::Aarch64),
            0x28 => Some(Arch::Arm),
            0xF3 => Some(Arch::Riscv64),
            0x15 => Some(Arch::Ppc64le),
            0x16 => Some(Arch::S390x),
            _ => None,
        };
    }
    if at(0, 2) == Some(b"MZ") {
        let pe = at(0x3c, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))? as usize;
        if at(pe, 4) == Some(b"PE\0\0") {
            let machine = at(pe + 4, 2).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
            return match machine {
                0x8664 => Some(Arch::X86_64),
                0x014c => Some(Arch::X86),
                0xAA64 => Some(Arch::Aarch64),
                0x5064 => Some(Arch::Riscv64),
                _ => None,
            };
        }
    }
    None
}

/// The architecture the kernel image at `path` is built for, from its header (see
/// [`kernel_arch`]); `None` when the header is none of those (the file is read, not judged).
pub fn kernel_file_arch(path: &Path) -> Result<Option<Arch>> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("could not open the kernel `{}`", path.display()), e))?;
    let mut head = Vec::with_capacity(KERNEL_HEAD_BYTES);
    file.take(KERNEL_HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(format!("could not read the kernel `{}`", path.display()), e))?;
    Ok(kernel_arch(&head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_headers() {
        let mut bz = vec![0u8; 0x240];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        bz[0x236] = 1;
        assert_eq!(kernel_arch(&bz), Some(Arch::X86_64));
        bz[0x236] = 0;
        assert_eq!(kernel_arch(&bz), Some(Arch::X86));
        let mut arm = vec![0u8; 0x40];
        arm[0] = b'M';
        arm[1] = b'Z';
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&arm), Some(Arch::Aarch64));
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[5] = 1;
        elf[18] = 0x3E;
        assert_eq!(kernel_arch(&elf), Some(Arch::X86_64));
        let mut pe = vec![0u8; 0x100];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xAA64u16.to_le_bytes());
        assert_eq!(kernel_arch(&pe), Some(Arch::Aarch64));
        pe[0x3c] = 0xff; // PE header past the end
        assert_eq!(kernel_arch(&pe), None);
        assert_eq!(kernel_arch(&[]), None);
    }

    #[test]
    fn the_machines_of_architectures() {
        assert_eq!(Arch::X86_64.machine(), Some(Arch::X86_64));
        assert_eq!(Arch::X86.machine(), Some(Arch::X86_64));
        assert_eq!(Arch::Aarch64.machine(), Some(Arch::Aarch64));
        for none in [Arch::Arm, Arch::Riscv64, Arch::Ppc64le, Arch::S390x] {
            assert_eq!(none.machine(), None, "{none}");
            let e = none.machine_for("the kernel `k`").unwrap_err().to_string();
            assert!(e.contains(&format!("no {none} machine")), "{e}");
        }
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("amd64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("i686".parse::<Arch>().unwrap(), Arch::X86_64);
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert!("riscv64".parse::<Arch>().is_err());
        assert!("mips".parse::<Arch>().is_err());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Arch::host_machine(), Some(Arch::X86_64));
        #[cfg(target_arch = "aarch64")]
        assert_eq!(Arch::host_machine(), Some(Arch::Aarch64));
    }

    #[test]
    fn why_a_vm_cannot_start_on_a_computer() {
        assert_eq!(Arch::X86_64.cannot_start_on(Some(Arch::X86_64)), None);
        assert_eq!(Arch::Aarch64.cannot_start_on(Some(Arch::Aarch64)), None);
        assert_eq!(
            Arch::Aarch64.cannot_start_on(Some(Arch::X86_64)).unwrap(),
            "this VM is an aarch64 machine; this computer runs x86_64 VMs"
        );
        assert_eq!(
            Arch::X86_64.cannot_start_on(Some(Arch::Aarch64)).unwrap(),
            "this VM is an x86_64 machine; this computer runs aarch64 VMs"
        );
        let why = Arch::Riscv64.cannot_start_on(Some(Arch::X86_64)).unwrap();
        assert!(
            why.contains("a riscv64 machine, which this Vivarium does not have"),
            "{why}"
        );
        assert!(
            Arch::X86_64
                .cannot_start_on(None)
                .unwrap()
                .contains("runs no Vivarium VMs")
        );
    }

    #[test]
    fn kernel_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Image");
        let mut arm = vec![0u8; 8192];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        std::fs::write(&path, &arm).unwrap();
        assert_eq!(kernel_file_arch(&path).unwrap(), Some(Arch::Aarch64));
        std::fs::write(&path, b"not a kernel").unwrap();
        assert_eq!(kernel_file_arch(&path).unwrap(), None);
        assert!(kernel_file_arch(&dir.path().join("missing")).is_err());
    }
}
