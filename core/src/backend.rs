//! The backend trait: what the app and the VM runner need from a hypervisor, whatever it is.
//!
//! Two implementations are planned: KVM on Linux x86_64 (`vivarium-backend-kvm`) and
//! Hypervisor.framework on macOS aarch64. The trait is at the level of a *machine*: probe the
//! host, start a machine from a [`MachineSpec`], control it, and learn how it ended. How a
//! backend builds the machine (vCPU threads, memory, device wiring) is its own business; the
//! device models it wires are shared (`vivarium-devices`).

use std::io::Write;
use std::path::PathBuf;

use crate::config::{DiskFormat, VmConfig};

/// Whether a backend can run VMs on this host, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSupport {
    /// Full guests run.
    Ready {
        /// What was found, e.g. "KVM API 12, AMD SVM".
        summary: String,
    },
    /// The hypervisor works, but only for small hand-made guests: full operating systems do
    /// not boot (e.g. a software-only KVM such as `kvm_pvm`).
    Limited {
        /// What was found.
        summary: String,
        /// Why full guests will not run, and what to do.
        reason: String,
    },
    /// The backend cannot run anything here.
    Unavailable {
        /// What is missing or refused.
        reason: String,
        /// What the user can do about it.
        remedy: String,
    },
}

impl HostSupport {
    /// Whether any guest can run at all (ready or limited).
    pub fn can_run(&self) -> bool {
        !matches!(self, HostSupport::Unavailable { .. })
    }

    /// One or two sentences for the user.
    pub fn explain(&self) -> String {
        match self {
            HostSupport::Ready { summary } => format!("Ready: {summary}."),
            HostSupport::Limited { summary, reason } => format!("Limited: {summary}. {reason}"),
            HostSupport::Unavailable { reason, remedy } => {
                format!("Cannot run VMs: {reason}. {remedy}")
            }
        }
    }
}

/// A disk as the backend needs it: an absolute path and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

/// The network card and where its frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The card's MAC address.
    pub mac: [u8; 6],
    /// A unix stream socket that carries Ethernet frames, each behind its 4-byte big-endian
    /// length (passt's socket). The machine connects to it at every boot.
    pub frame_socket: PathBuf,
}

/// The CD-ROM drive as the backend needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdromSpec {
    /// The inserted image (absolute path, opened read-only), or `None` for an empty drive.
    pub image: Option<PathBuf>,
}

/// A disc image inserted while the machine runs: already open, because the VM process is
/// confined and may not open files the user picks (the CLI or the app opens it and hands it
/// over the control socket).
#[derive(Debug)]
pub struct CdromMedium {
    /// The open image.
    pub file: std::fs::File,
    /// Where it is (absolute), for what the drive reports and the log says.
    pub path: PathBuf,
}

/// The machine's screen: the shared display file the VM process created (its video memory
/// becomes the guest's framebuffer) and the size the guest starts with.
#[cfg(unix)]
#[derive(Debug, Clone)]
pub struct DisplaySpec {
    /// The display file, with video memory of a power-of-two size.
    pub shared: std::sync::Arc<crate::display::SharedDisplay>,
    /// Width in pixels of the mode the machine boots in (and prefers).
    pub width: u32,
    /// Height in pixels of that mode.
    pub height: u32,
}

/// How the machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSpec {
    /// Direct Linux boot.
    Linux {
        /// bzImage (or ELF vmlinux).
        kernel: PathBuf,
        /// Initial ramdisk.
        initrd: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// Boot through PC firmware, which finds a boot loader on the devices in `order`.
    Firmware {
        /// The firmware.
        firmware: FirmwareSpec,
        /// Where the firmware looks for something to boot, first to last.
        order: Vec<BootDevice>,
        /// Whether the firmware offers its boot menu (Esc or F12 at the start).
        menu: bool,
    },
    /// Real-mode code loaded at a guest physical address and entered there with a flat
    /// 64 KiB segment. Used by the tests' hand-made guests (they run on any KVM, including
    /// software-only ones), and by anything that brings its own loader.
    RealModeImage {
        /// The code.
        code: Vec<u8>,
        /// Where to load it (and start), below 1 MiB.
        load_address: u64,
    },
}

/// A PC firmware and the files it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareSpec {
    /// A legacy BIOS (SeaBIOS): its image, mapped below 4 GiB and its last 128 KiB at
    /// 0xe0000, and the display's VGA BIOS (an option ROM), if the machine has a display.
    Bios {
        /// The BIOS image (e.g. `bios-256k.bin`).
        image: PathBuf,
        /// The VGA option ROM of the standard VGA (e.g. `vgabios-stdvga.bin`).
        vga_rom: Option<PathBuf>,
    },
    /// UEFI (OVMF): its code, mapped read-only right below 4 GiB, and the VM's own variable
    /// store (a copy of OVMF's template in the bundle's `state/`), a flash right below the
    /// code that the firmware writes its settings and boot entries to.
    Uefi {
        /// OVMF's code (e.g. `OVMF_CODE_4M.fd`).
        code: PathBuf,
        /// The VM's variable store file.
        vars: PathBuf,
    },
}

/// What one start boots from instead of what the VM's configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOnce {
    /// The CD-ROM through the firmware (QEMU's `-boot once=d`).
    Cdrom,
    /// The first disk through the firmware (an installer VM whose disk is not detected as
    /// bootable, for instance).
    Disk,
    /// The firmware's boot menu, to choose there (VMware's "power on to firmware").
    Menu,
}

/// A device the firmware may boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// The disk at this index of [`MachineSpec::disks`].
    Disk(usize),
    /// The CD-ROM drive.
    Cdrom,
}

/// Everything a backend needs to build a machine.
pub struct MachineSpec {
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// How it boots.
    pub boot: BootSpec,
    /// Disks in the order the guest sees them.
    pub disks: Vec<DiskSpec>,
    /// The network card, if the machine has one. The VM's configuration asks for it; the
    /// process running the VM provides the frame socket (see `passt`).
    pub network: Option<NetworkSpec>,
    /// The CD-ROM drive, if the machine has one.
    pub cdrom: Option<CdromSpec>,
    /// The screen, if the machine has one. The VM's configuration asks for it; the process
    /// running the VM creates the display file (see `control::display_path`).
    #[cfg(unix)]
    pub display: Option<DisplaySpec>,
    /// Where the guest's serial console output goes.
    pub serial_output: Box<dyn Write + Send>,
}

impl MachineSpec {
    /// The machine a VM's configuration describes, with disk paths resolved in its bundle.
    /// Booting from a disk or CD-ROM goes through the host's SeaBIOS (see
    /// [`crate::firmware`]); fails with what to install when it is missing.
    pub fn from_config(
        config: &VmConfig,
        bundle: &std::path::Path,
        serial_output: Box<dyn Write + Send>,
    ) -> Result<MachineSpec, BackendError> {
        Self::from_config_with(config, bundle, serial_output, None)
    }

    /// Like [`MachineSpec::from_config`], booting from `boot_once` this time instead of what
    /// the configuration says (the "boot from CD once" of a start).
    pub fn from_config_with(
        config: &VmConfig,
        bundle: &std::path::Path,
        serial_output: Box<dyn Write + Send>,
        boot_once: Option<BootOnce>,
    ) -> Result<MachineSpec, BackendError> {
        use crate::config::BootSource;
        let disks: Vec<DiskSpec> = config
            .disks
            .iter()
            .map(|d| DiskSpec {
                path: bundle.join(&d.file),
                format: d.format,
                read_only: d.read_only,
            })
            .collect();
        let has_cdrom = config.cdrom.is_some();
        let firmware_boot = |cd_first: bool| -> Result<BootSpec, BackendError> {
            let host = crate::firmware::HostFirmware::locate();
            let firmware = match config.firmware {
                crate::config::Firmware::Bios => FirmwareSpec::Bios {
                    image: host
                        .require_seabios()
                        .map_err(BackendError::HostUnsupported)?
                        .to_path_buf(),
                    vga_rom: host.vga_bios.clone(),
                },
                crate::config::Firmware::Uefi => {
                    let (code, template) =
                        host.require_ovmf().map_err(BackendError::HostUnsupported)?;
                    let vars = crate::firmware::prepare_uefi_vars(bundle, template)
                        .map_err(BackendError::InvalidMachine)?;
                    FirmwareSpec::Uefi {
                        code: code.to_path_buf(),
                        vars,
                    }
                }
            };
            if cd_first && !has_cdrom {
                return Err(BackendError::InvalidMachine(format!(
                    "{} has no CD-ROM drive to boot from: give it one (vivarium set {} --iso \
                     FILE)",
                    config.name, config.name
                )));
            }
            let mut order = Vec::new();
            if cd_first {
                order.push(BootDevice::Cdrom);
            }
            order.extend((0..disks.len().min(1)).map(BootDevice::Disk));
            if !cd_first && has_cdrom {
                order.push(BootDevice::Cdrom);
            }
            order.extend((1..disks.len()).map(BootDevice::Disk));
            Ok(BootSpec::Firmware {
                firmware,
                order,
                menu: matches!(boot_once, Some(BootOnce::Menu)),
            })
        };
        let direct = |kernel: &PathBuf, initrd: &Option<PathBuf>, cmdline: &String| {
            BootSpec::Linux {
                // A relative path is a file of the bundle (e.g. an installer's kernel taken
                // from its ISO into `state/`); `join` keeps an absolute one as it is.
                kernel: bundle.join(kernel),
                initrd: initrd.as_ref().map(|i| bundle.join(i)),
                cmdline: cmdline.clone(),
            }
        };
        let boot = match (boot_once, &config.boot) {
            (Some(BootOnce::Cdrom), _) => firmware_boot(true)?,
            (Some(BootOnce::Disk | BootOnce::Menu), _) => firmware_boot(false)?,
            (
                None,
                BootSource::Linux {
                    kernel,
                    initrd,
                    cmdline,
                },
            ) => direct(kernel, initrd, cmdline),
            (
                None,
                BootSource::Installer {
                    kernel,
                    initrd,
                    cmdline,
                },
            ) => {
                // Once the installer has put a boot loader on the first disk (for this VM's
                // firmware), that disk boots.
                let installed = disks.first().is_some_and(|d| {
                    crate::firmware::disk_is_bootable(&d.path, d.format, config.firmware)
                });
                if installed {
                    firmware_boot(false)?
                } else if config.firmware == crate::config::Firmware::Uefi {
                    // A directly booted installer sees no UEFI and installs a BIOS boot
                    // loader; through OVMF from the CD it installs one for UEFI.
                    firmware_boot(true)?
                } else {
                    direct(kernel, initrd, cmdline)
                }
            }
            (None, BootSource::Cdrom) => firmware_boot(true)?,
            (None, BootSource::Disk) => firmware_boot(false)?,
        };
        Ok(MachineSpec {
            cpus: config.cpus,
            memory_mib: config.memory_mib,
            boot,
            disks,
            network: None,
            #[cfg(unix)]
            display: None,
            cdrom: config.cdrom.as_ref().map(|c| CdromSpec {
                image: c.image.as_ref().map(|i| bundle.join(i)),
            }),
            serial_output,
        })
    }
}

/// Requests to a running machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Stop running the vCPUs (the machine keeps its state).
    Pause,
    /// Continue after [`ControlRequest::Pause`].
    Resume,
    /// Press the ACPI power button: a guest that listens shuts down cleanly.
    PowerButton,
    /// Pull the plug.
    PowerOff,
    /// Press the reset button.
    Reset,
}

/// How a machine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineExit {
    /// The guest powered off (or the host pulled the plug).
    PoweredOff,
    /// The guest crashed (e.g. a triple fault); the report has the vCPU registers.
    Crashed {
        /// What happened, with the registers of the vCPU.
        report: String,
    },
    /// The VMM failed (a host error, not the guest's doing).
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// A machine that is running. Shareable between threads: one waits, others send requests.
pub trait RunningMachine: Send + Sync {
    /// Sends a control request.
    fn request(&self, request: ControlRequest) -> Result<(), BackendError>;
    /// Waits until the machine ends and says how.
    fn wait(&self) -> MachineExit;
    /// Offers bytes to the guest's serial console (COM1 on x86). Returns how many were taken:
    /// fewer than offered (possibly none) when the port's receive buffer is full, so the
    /// caller retries the rest once the guest has read some.
    fn send_serial_input(&self, bytes: &[u8]) -> Result<usize, BackendError>;
    /// Hands keyboard and mouse events to the guest's input devices, in order. Never blocks
    /// on the guest: an event the guest cannot take now (it has the device turned off, or has
    /// not read earlier input yet) is dropped, as a real keyboard would lose it. Fails only
    /// when the machine has stopped or has no keyboard and mouse.
    fn send_input(&self, events: &[crate::input::InputEvent]) -> Result<(), BackendError> {
        let _ = events;
        Err(BackendError::Unsupported(
            "this machine has no keyboard or mouse".into(),
        ))
    }
    /// Changes the medium of the CD-ROM drive while the machine runs: `Some(medium)` inserts
    /// that image, `None` ejects; `force` ejects even when the guest has locked the drive.
    /// The guest is told the medium changed. A machine without a drive refuses.
    fn change_cdrom(&self, medium: Option<CdromMedium>, force: bool) -> Result<(), BackendError> {
        let _ = (medium, force);
        Err(BackendError::Unsupported(
            "this VM has no CD-ROM drive: give it one while it is stopped (vivarium set NAME \
             --iso FILE)"
                .into(),
        ))
    }
}

/// A hypervisor backend.
pub trait Backend: Send + Sync {
    /// Short name, e.g. "kvm".
    fn name(&self) -> &'static str;
    /// Whether this host can run VMs with this backend, and if not, why.
    fn probe(&self) -> HostSupport;
    /// Builds and starts a machine.
    fn start(&self, spec: MachineSpec) -> Result<std::sync::Arc<dyn RunningMachine>, BackendError>;
}

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The host cannot run the machine; the text says why and what to do.
    #[error("{0}")]
    HostUnsupported(String),
    /// The machine asks for something this backend does not do yet.
    #[error("{0}")]
    Unsupported(String),
    /// The configuration cannot be built into a machine (bad kernel, too much memory, ...).
    #[error("{0}")]
    InvalidMachine(String),
    /// The hypervisor refused an operation.
    #[error("{context}: {source}")]
    Hypervisor {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The machine is not running any more.
    #[error("the machine has stopped")]
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        BootSource, CONFIG_FORMAT, CdromConfig, DisplayConfig, NetworkConfig, OsInfo,
    };

    fn config(cdrom: Option<CdromConfig>) -> VmConfig {
        VmConfig {
            format: CONFIG_FORMAT,
            id: uuid::Uuid::new_v4(),
            name: "installer".into(),
            created: "2026-11-24T10:00:00Z".into(),
            arch: crate::Arch::X86_64,
            os: OsInfo::linux(),
            cpus: 1,
            memory_mib: 512,
            boot: BootSource::Linux {
                kernel: "/k/vmlinuz".into(),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
            firmware: Default::default(),
            disks: vec![],
            cdrom,
            network: NetworkConfig::None,
            display: DisplayConfig::default_framebuffer(),
            notes: String::new(),
        }
    }

    #[test]
    fn the_cdrom_reaches_the_machine() {
        let bundle = std::path::Path::new("/vms/installer.vivarium");
        let spec = |cdrom| {
            MachineSpec::from_config(&config(cdrom), bundle, Box::new(std::io::sink()))
                .unwrap()
                .cdrom
        };
        assert_eq!(spec(None), None);
        assert_eq!(
            spec(Some(CdromConfig { image: None })),
            Some(CdromSpec { image: None })
        );
        assert_eq!(
            spec(Some(CdromConfig {
                image: Some("/isos/debian.iso".into())
            })),
            Some(CdromSpec {
                image: Some("/isos/debian.iso".into())
            })
        );
        // A path relative to the bundle (e.g. a copy in state/) is resolved in it.
        assert_eq!(
            spec(Some(CdromConfig {
                image: Some("state/install.iso".into())
            })),
            Some(CdromSpec {
                image: Some(bundle.join("state/install.iso"))
            })
        );
    }

    /// A UEFI VM made from an installer ISO boots the CD through OVMF while its disk is
    /// empty (a directly booted installer would install a BIOS boot loader), with its own
    /// variable store made in `state/`; once the disk has an EFI system partition, the disk.
    #[test]
    fn a_uefi_installer_vm_boots_its_cd_through_ovmf_until_the_disk_has_an_esp() {
        let host = crate::firmware::HostFirmware::locate();
        if host.require_ovmf().is_err() {
            assert!(
                std::env::var_os("VIVARIUM_REQUIRE_RIG").is_none(),
                "OVMF is not installed (sudo apt install ovmf), and every test must run here"
            );
            eprintln!("SKIPPED: OVMF is not installed (sudo apt install ovmf)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path();
        std::fs::create_dir_all(bundle.join("disks")).unwrap();
        std::fs::write(bundle.join("disks/disk0.raw"), vec![0u8; 1 << 20]).unwrap();
        let mut vm = config(Some(CdromConfig {
            image: Some("/isos/debian.iso".into()),
        }));
        vm.firmware = crate::config::Firmware::Uefi;
        vm.boot = BootSource::Installer {
            kernel: "state/installer-kernel".into(),
            initrd: None,
            cmdline: String::new(),
        };
        vm.disks = vec![crate::config::DiskConfig {
            file: "disks/disk0.raw".into(),
            format: crate::config::DiskFormat::Raw,
            size: 1 << 20,
            read_only: false,
            base: None,
        }];
        let boot = || {
            MachineSpec::from_config(&vm, bundle, Box::new(std::io::sink()))
                .unwrap()
                .boot
        };
        let BootSpec::Firmware {
            firmware: FirmwareSpec::Uefi { vars, .. },
            order,
            ..
        } = boot()
        else {
            panic!("expected a UEFI boot, got {:?}", boot());
        };
        assert_eq!(order, vec![BootDevice::Cdrom, BootDevice::Disk(0)]);
        assert_eq!(vars, bundle.join(crate::firmware::UEFI_VARS_FILE));
        assert!(vars.is_file(), "the VM's variable store was made");
        // The installer partitions the disk with an EFI system partition: the disk boots.
        let mut head = vec![0u8; 34 * 512];
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        head[1024..1040].copy_from_slice(&[
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ]);
        let disk = bundle.join("disks/disk0.raw");
        let mut data = std::fs::read(&disk).unwrap();
        data[..head.len()].copy_from_slice(&head);
        std::fs::write(&disk, data).unwrap();
        let BootSpec::Firmware { order, .. } = boot() else {
            panic!("expected a firmware boot");
        };
        assert_eq!(order, vec![BootDevice::Disk(0), BootDevice::Cdrom]);
    }
}
