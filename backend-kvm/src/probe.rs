//! The host probe: can this machine run VMs with KVM, and if not, why and what to do.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use vivarium_core::backend::HostSupport;

/// KVM's stable API version; any other value means a kernel too old or too strange to use.
const KVM_API_VERSION: i32 = 12;

/// Where the probe looks. Tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct HostPaths {
    /// The KVM device, normally `/dev/kvm`.
    pub kvm_device: PathBuf,
    /// The loaded kernel modules, normally `/sys/module`.
    pub modules: PathBuf,
    /// CPU information, normally `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            kvm_device: "/dev/kvm".into(),
            modules: "/sys/module".into(),
            cpuinfo: "/proc/cpuinfo".into(),
        }
    }
}

/// What the probe found about the KVM implementation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmFlavour {
    /// Hardware virtualisation: Intel VT-x (`kvm_intel`).
    IntelVmx,
    /// Hardware virtualisation: AMD SVM (`kvm_amd`).
    AmdSvm,
    /// `kvm_pvm`: a page-table based software hypervisor that cannot run an unmodified
    /// kernel.
    SoftwarePvm,
    /// KVM answers, but the probe cannot tell which implementation it is.
    Unknown,
}

/// Reads which KVM implementation is loaded, from the module list and the CPU flags.
pub fn kvm_flavour(paths: &HostPaths) -> KvmFlavour {
    let loaded = |module: &str| paths.modules.join(module).exists();
    if loaded("kvm_pvm") {
        return KvmFlavour::SoftwarePvm;
    }
    let flags = cpu_flags(&paths.cpuinfo);
    if loaded("kvm_intel") && flags.iter().any(|f| f == "vmx") {
        return KvmFlavour::IntelVmx;
    }
    if loaded("kvm_amd") && flags.iter().any(|f| f == "svm") {
        return KvmFlavour::AmdSvm;
    }
    KvmFlavour::Unknown
}

fn cpu_flags(cpuinfo: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(cpuinfo) else {
        return Vec::new();
    };
    text.lines()
        .find(|line| line.starts_with("flags"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, flags)| flags.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Probes the host: the KVM device, the permission to use it, its API version, and whether it
/// is hardware virtualisation that can run full guests.
pub fn probe(paths: &HostPaths) -> HostSupport {
    let device = paths.kvm_device.display().to_string();
    let file = match fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.kvm_device)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let flags = cpu_flags(&paths.cpuinfo);
            let hw = flags.iter().any(|f| f == "vmx" || f == "svm");
            let remedy = if hw {
                "Load the KVM module: `sudo modprobe kvm_intel` (Intel) or `sudo modprobe \
                 kvm_amd` (AMD)."
            } else {
                "Enable virtualisation (VT-x or AMD-V) in the firmware settings, or on a cloud \
                 VM enable nested virtualisation, then load the KVM module."
            };
            return HostSupport::Unavailable {
                reason: format!("{device} does not exist (KVM is not available)"),
                remedy: remedy.into(),
            };
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return HostSupport::Unavailable {
                reason: format!("you have no permission to use {device}"),
                remedy: "Add your user to the kvm group (`sudo usermod -aG kvm $USER`), then log \
                         out and in again."
                    .into(),
            };
        }
        Err(e) => {
            return HostSupport::Unavailable {
                reason: format!("{device} cannot be opened: {e}"),
                remedy: "Check that the KVM module loaded without errors (`sudo dmesg | grep \
                         -i kvm`)."
                    .into(),
            };
        }
    };
    let api = api_version(&file);
    if api != KVM_API_VERSION {
        return HostSupport::Unavailable {
            reason: format!("{device} speaks KVM API version {api}, not {KVM_API_VERSION}"),
            remedy: "Use a newer Linux kernel.".into(),
        };
    }
    match kvm_flavour(paths) {
        KvmFlavour::IntelVmx => HostSupport::Ready {
            summary: format!("KVM API {api} on Intel VT-x"),
        },
        KvmFlavour::AmdSvm => HostSupport::Ready {
            summary: format!("KVM API {api} on AMD SVM"),
        },
        KvmFlavour::Unknown => HostSupport::Ready {
            summary: format!("KVM API {api}"),
        },
        KvmFlavour::SoftwarePvm => HostSupport::Limited {
            summary: format!("KVM API {api} served by kvm_pvm, a software-only hypervisor"),
            reason: "kvm_pvm cannot run an unmodified operating system kernel (it stops on \
                     instructions it cannot emulate), so full guests will not boot here. Use a \
                     machine with hardware virtualisation (VT-x/AMD-V, or nested \
                     virtualisation on a cloud VM)."
                .into(),
        },
    }
}

/// `KVM_GET_API_VERSION` on an open `/dev/kvm` (or -1 if the ioctl fails).
fn api_version(file: &fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    // KVM_GET_API_VERSION = _IO(KVMIO, 0x00). Written here because kvm-ioctls only offers it
    // on a `Kvm` it opened itself, and the probe must report open errors in its own words.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xae00;
    // SAFETY: the descriptor is an open file owned by `file` for the whole call; this ioctl
    // takes no argument and writes no memory.
    unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(modules: &[&str], flags: &str) -> (tempfile::TempDir, HostPaths) {
        let dir = tempfile::tempdir().unwrap();
        for module in modules {
            fs::create_dir_all(dir.path().join("module").join(module)).unwrap();
        }
        fs::create_dir_all(dir.path().join("module")).unwrap();
        fs::write(
            dir.path().join("cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse\n"),
        )
        .unwrap();
        let paths = HostPaths {
            kvm_device: dir.path().join("kvm"),
            modules: dir.path().join("module"),
            cpuinfo: dir.path().join("cpuinfo"),
        };
        (dir, paths)
    }

    #[test]
    fn flavours_are_told_apart() {
        let (_d, paths) = fake_host(&["kvm", "kvm_pvm"], "");
        assert_eq!(kvm_flavour(&paths), KvmFlavour::SoftwarePvm);
        let (_d, paths) = fake_host(&["kvm", "kvm_amd"], "svm");
        assert_eq!(kvm_flavour(&paths), KvmFlavour::AmdSvm);
        let (_d, paths) = fake_host(&["kvm", "kvm_intel"], "vmx");
        assert_eq!(kvm_flavour(&paths), KvmFlavour::IntelVmx);
        let (_d, paths) = fake_host(&["kvm"], "");
        assert_eq!(kvm_flavour(&paths), KvmFlavour::Unknown);
    }

    #[test]
    fn a_missing_device_says_what_to_do() {
        let (_d, paths) = fake_host(&[], "svm");
        match probe(&paths) {
            HostSupport::Unavailable { reason, remedy } => {
                assert!(reason.contains("does not exist"), "{reason}");
                assert!(remedy.contains("modprobe"), "{remedy}");
            }
            other => panic!("{other:?}"),
        }
        let (_d, paths) = fake_host(&[], "");
        match probe(&paths) {
            HostSupport::Unavailable { remedy, .. } => {
                assert!(remedy.contains("firmware"), "{remedy}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_device_that_is_not_kvm_is_refused() {
        let (dir, mut paths) = fake_host(&["kvm_amd"], "svm");
        let fake = dir.path().join("not-kvm");
        fs::write(&fake, b"").unwrap();
        paths.kvm_device = fake;
        assert!(!probe(&paths).can_run());
    }

    #[test]
    fn the_real_host_is_probed_and_explained() {
        let support = probe(&HostPaths::default());
        // Whatever this machine is, the probe must explain it; on a kvm_pvm host it must say
        // that full guests will not boot.
        println!("host probe: {}", support.explain());
        if Path::new("/sys/module/kvm_pvm").exists() && Path::new("/dev/kvm").exists() {
            assert!(
                matches!(support, HostSupport::Limited { .. }),
                "{support:?}"
            );
            assert!(support.explain().contains("kvm_pvm"));
        }
    }
}
