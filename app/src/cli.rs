//! The `vivarium` command line: every library operation, for people and for scripts.
//!
//! Exit codes are stable (see [`exit_code`]); `--json` prints machine-readable results, and on
//! failure a JSON object `{"error": {"kind": ..., "message": ...}}` on standard output.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use vivarium_core::config::{
    BootSource, CdromConfig, DiskFormat, DisplayConfig, MacAddress, NetworkConfig, OsInfo,
    PortForward,
};
use vivarium_core::control::LiveState;
use vivarium_core::disk::ProgressFn;
use vivarium_core::fsutil::{format_size, parse_size};
use vivarium_core::text;
use vivarium_core::{
    Arch, CloneMode, Error, ErrorKind, Library, NewDisk, NewVm, VmConfig, VmEntry,
};

const EXIT_CODES: &str = "Exit codes: 0 success, 1 operating system error, 2 bad usage, \
3 no such VM, 4 name already exists, 5 invalid input, 6 VM is running or busy, \
7 damaged or newer configuration, 8 cancelled, 9 the guest crashed, \
10 this host cannot run VMs, 11 the VM is not running, 12 timed out (the guest did not shut down), \
13 the VM is a machine of another architecture than this computer runs.";

/// The help text after `vivarium mouse --help`: the actions.
const MOUSE_ACTIONS: &str = "Actions:
  move:DX,DY      move DX right and DY down (negative: left, up)
  down:BUTTON     press BUTTON (left, right or middle) and hold it
  up:BUTTON       release it
  click:BUTTON    press and release it
  wheel:N         turn the wheel N detents up (negative: down)

Example: vivarium mouse web move:100,40 click:left";

/// Vivarium: desktop virtual machines.
#[derive(Debug, Parser)]
#[command(name = "vivarium", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Print results (and errors) as JSON, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every VM with its state, OS, CPUs, memory and disk use.
    List,
    /// Show everything about one VM.
    Info {
        /// The VM.
        name: String,
    },
    /// Create a VM with a new, empty (sparse) disk. With --iso, the OS on the ISO is
    /// recognised first: the VM gets its name, hardware and installer boot from it (flags
    /// override).
    Create {
        /// Name of the new VM (with --iso it defaults to the recognised OS, e.g. "Debian 12").
        #[arg(required_unless_present = "iso")]
        name: Option<String>,
        #[command(flatten)]
        boot: BootArgs,
        /// Size of the new disk (e.g. 20G; default 20G, or what the ISO's OS needs).
        #[arg(long, conflicts_with = "no_disk")]
        disk_size: Option<String>,
        /// Format of the new disk.
        #[arg(long, default_value = "raw", value_parser = ["raw", "qcow2"])]
        disk_format: String,
        /// Create the VM without a disk.
        #[arg(long)]
        no_disk: bool,
        #[command(flatten)]
        hardware: HardwareArgs,
    },
    /// Create a VM from an existing raw or qcow2 disk image (the image is copied).
    Import {
        /// Name of the new VM.
        name: String,
        /// The disk image to copy into the VM.
        disk: PathBuf,
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        hardware: HardwareArgs,
    },
    /// Rename a stopped VM.
    Rename {
        /// Current name.
        name: String,
        /// New name.
        new_name: String,
    },
    /// Change the settings of a stopped VM (notes can change while it runs).
    Set(SetArgs),
    /// Delete a stopped VM and its disks (base images other VMs use stay).
    Delete {
        /// The VM.
        name: String,
    },
    /// Say whether this machine can run VMs, and if not, why and what to do.
    Host,
    /// Show what is on an installer ISO: the OS, its version and architecture, how a VM
    /// would boot it, and the hardware a VM for it gets. Changes nothing.
    InspectIso {
        /// The ISO file.
        file: PathBuf,
    },
    /// Run a VM in this terminal until it stops: its serial console on standard output (and
    /// in the VM's logs/serial.log). SIGTERM presses the ACPI power button (a second SIGTERM,
    /// or Ctrl-C, powers off at once).
    Run {
        /// The VM.
        name: String,
        /// Boot from this device this once, through the BIOS: `cdrom`, `disk`, or `menu`
        /// (the BIOS's boot menu, to choose there).
        #[arg(long, value_parser = ["cdrom", "disk", "menu"])]
        boot_from: Option<String>,
    },
    /// Start a VM in a process of its own, detached from this terminal; it keeps running
    /// after this command (and the app) exit. Its serial console is in logs/serial.log and
    /// through `vivarium console`.
    Start {
        /// The VM.
        name: String,
        /// Run without a window (the only way until the desktop app opens one).
        #[arg(long)]
        headless: bool,
        /// Boot from this device this once, through the BIOS: `cdrom`, `disk`, or `menu`
        /// (the BIOS's boot menu, to choose there). The VM's settings do not change.
        #[arg(long, value_parser = ["cdrom", "disk", "menu"])]
        boot_from: Option<String>,
    },
    /// Shut a VM down: press its ACPI power button and wait until the guest has powered off.
    Stop {
        /// The VM.
        name: String,
        /// Power it off at once instead (pulling the plug; the guest gets no say).
        #[arg(long)]
        force: bool,
        /// How long to wait for the guest to power off, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Pause a running VM (its vCPUs stop; memory and devices keep their state).
    Pause {
        /// The VM.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// The VM.
        name: String,
    },
    /// Press a running VM's reset button.
    Reset {
        /// The VM.
        name: String,
    },
    /// Eject the CD-ROM of a running VM (the guest is told; a drive the guest locked is
    /// asked to release its disc unless --force). `set --eject` changes a stopped VM.
    Eject {
        /// The VM.
        name: String,
        /// Eject even if the guest has locked the drive.
        #[arg(long)]
        force: bool,
    },
    /// Insert an image in the CD-ROM of a running VM (the guest sees the new disc).
    /// `set --iso` changes a stopped VM.
    Insert {
        /// The VM.
        name: String,
        /// The image (an ISO file).
        file: PathBuf,
    },
    /// Type text into a running VM through its keyboard (a US layout: shifted characters,
    /// \n is Enter, \t is Tab), then press the --key combinations. Keys go one character
    /// at a time, --delay apart.
    #[command(
        after_help = "Examples:\n  vivarium type web 'root' --key enter\n  vivarium type web --key ctrl+alt+f2\n  vivarium key web ctrl+alt+delete"
    )]
    Type {
        /// The VM.
        name: String,
        /// The text (printable ASCII, newlines and tabs).
        text: Option<String>,
        /// A key combination to press after the text, e.g. `enter`, `f2`, `ctrl+alt+delete`
        /// (repeatable; keys joined by `+`).
        #[arg(long = "key", value_name = "COMBO")]
        keys: Vec<String>,
        /// Milliseconds between key strokes.
        #[arg(long, default_value_t = crate::send_input::DEFAULT_DELAY_MS)]
        delay: u64,
    },
    /// Press key combinations on a running VM's keyboard, in order, e.g.
    /// `vivarium key NAME ctrl+alt+delete` or `vivarium key NAME ctrl+alt+f2 enter`.
    Key {
        /// The VM.
        name: String,
        /// Key combinations: keys joined by `+` (ctrl, alt, shift, super, esc, enter, tab,
        /// space, backspace, delete, home, end, pageup, pagedown, up, down, left, right,
        /// f1-f12, letters, digits, unshifted symbols, or W3C key names like NumpadEnter).
        #[arg(required = true, value_name = "COMBO")]
        combos: Vec<String>,
        /// Milliseconds between combinations.
        #[arg(long, default_value_t = crate::send_input::DEFAULT_DELAY_MS)]
        delay: u64,
    },
    /// Move a running VM's mouse and press its buttons: actions in order, --delay apart.
    #[command(after_help = MOUSE_ACTIONS)]
    Mouse {
        /// The VM.
        name: String,
        /// The actions.
        #[arg(required = true, value_name = "ACTION", allow_hyphen_values = true)]
        actions: Vec<String>,
        /// Milliseconds between actions.
        #[arg(long, default_value_t = crate::send_input::DEFAULT_DELAY_MS)]
        delay: u64,
    },
    /// Show whether a VM runs (and what it does), or how its last run ended.
    Status {
        /// The VM.
        name: String,
    },
    /// Save a running VM's screen as a PNG image.
    Screenshot {
        /// The VM.
        name: String,
        /// The PNG file to write (replaced if it exists).
        file: PathBuf,
    },
    /// Attach this terminal to a running VM's serial console (recent output first). Ctrl-]
    /// detaches. When standard input is not a terminal, it is sent to the guest, and the
    /// command ends once input has ended and the guest has been quiet for a second.
    Console {
        /// The VM.
        name: String,
    },
    /// Clone a stopped VM: a full, independent copy, or a linked clone that shares the disk.
    Clone {
        /// The VM to clone.
        source: String,
        /// Name of the clone.
        name: String,
        /// Make a linked clone: copy-on-write overlays over a shared base image (instant).
        #[arg(long)]
        linked: bool,
    },
}

/// How the VM boots.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// Boot this Linux kernel directly (bzImage or vmlinux).
    #[arg(long, conflicts_with = "iso")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk for --kernel.
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for --kernel.
    #[arg(long, requires = "kernel")]
    pub cmdline: Option<String>,
    /// Insert this ISO in the CD-ROM drive and boot its installer (`create` recognises the
    /// OS on it and boots the installer's Linux kernel directly when it can).
    #[arg(long)]
    pub iso: Option<PathBuf>,
    /// With --iso: boot this entry of the ISO's boot menu instead of its default (an isolinux
    /// label or menu label, or a GRUB entry's title; e.g. a serial-console entry).
    #[arg(long, requires = "iso")]
    pub boot_entry: Option<String>,
    /// The firmware that boots the VM's disks and CD-ROM: `bios` (SeaBIOS; the default) or
    /// `uefi` (OVMF, with the VM's own UEFI variables).
    #[arg(long, value_parser = ["bios", "uefi"])]
    pub firmware: Option<String>,
}

/// Hardware settings of a new VM.
#[derive(Debug, Args)]
pub struct HardwareArgs {
    /// The VM's machine: `x86_64` (also for i686 systems) or `aarch64`. By default what the
    /// kernel's header or the ISO says, else this computer's; boot files of another
    /// architecture are refused. A VM of another machine than this computer's is made, listed
    /// and copied here, but starts only on a computer of its own architecture.
    #[arg(long)]
    pub arch: Option<String>,
    /// Virtual CPUs (default 2, or what the ISO's OS needs).
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Memory (e.g. 2G, 512M; a plain number is MiB; default 2G, or what the ISO's OS needs).
    #[arg(long)]
    pub memory: Option<String>,
    /// OS id (e.g. debian12, linux, windows, other).
    #[arg(long)]
    pub os: Option<String>,
    /// OS name shown to people (defaults from --os).
    #[arg(long)]
    pub os_name: Option<String>,
    /// Network: `user` (user-mode, no root needed) or `none`.
    #[arg(long, default_value = "user", value_parser = ["user", "none"])]
    pub network: String,
    /// Forward a host port to a guest port: tcp:HOST:GUEST or udp:HOST:GUEST (repeatable).
    #[arg(long = "forward")]
    pub forwards: Vec<String>,
    /// Screen size WIDTHxHEIGHT, or `none` for serial console only.
    #[arg(long, default_value = "1024x768")]
    pub display: String,
    /// Notes.
    #[arg(long, default_value = "")]
    pub notes: String,
}

/// Arguments of `vivarium set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The VM.
    pub name: String,
    /// Virtual CPUs.
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Memory (e.g. 4G; a plain number is MiB).
    #[arg(long)]
    pub memory: Option<String>,
    /// Boot this Linux kernel directly.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (needs a kernel).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (needs a kernel).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Boot from the CD-ROM, or from the disk.
    #[arg(long, value_parser = ["cdrom", "disk"], conflicts_with = "kernel")]
    pub boot: Option<String>,
    /// The firmware that boots the disks and CD-ROM: `bios` or `uefi`. A UEFI VM keeps its
    /// UEFI variables (boot entries) in its bundle; switching back to BIOS keeps them for
    /// later.
    #[arg(long, value_parser = ["bios", "uefi"])]
    pub firmware: Option<String>,
    /// Insert this ISO in the CD-ROM drive.
    #[arg(long, conflicts_with = "eject")]
    pub iso: Option<PathBuf>,
    /// Empty the CD-ROM drive.
    #[arg(long)]
    pub eject: bool,
    /// Network: `user` or `none`.
    #[arg(long, value_parser = ["user", "none"])]
    pub network: Option<String>,
    /// MAC address of the network card.
    #[arg(long)]
    pub mac: Option<String>,
    /// Add a port forward tcp:HOST:GUEST (repeatable).
    #[arg(long = "forward")]
    pub forwards: Vec<String>,
    /// Remove every port forward (before adding those given with --forward).
    #[arg(long)]
    pub clear_forwards: bool,
    /// Screen size WIDTHxHEIGHT, or `none`.
    #[arg(long)]
    pub display: Option<String>,
    /// OS id.
    #[arg(long)]
    pub os: Option<String>,
    /// OS name shown to people.
    #[arg(long)]
    pub os_name: Option<String>,
    /// Notes.
    #[arg(long)]
    pub notes: Option<String>,
    /// Make every disk of the VM read-only (`on`) or writable (`off`) for the guest.
    #[arg(long, value_parser = ["on", "off"])]
    pub disk_read_only: Option<String>,
}

/// The exit code a script sees for an error of this kind.
pub fn exit_code(kind: ErrorKind) -> u8 {
    vivarium_vm::exit_code(kind)
}

/// Set by SIGINT during long operations: they stop, undo themselves and report "cancelled".
static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    CANCEL.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C (and SIGTERM, SIGHUP) cancel the running operation cleanly instead of killing
/// the process.
fn cancel_on_interrupt() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe, and has the
    // signature `signal` expects.
    // SIGTERM (a `kill`, a session ending) and SIGHUP (the terminal closing) cancel the same
    // way: an interrupted clone or import never leaves gigabytes in `.staging`.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
    }
}

/// Why a VM's configuration cannot be used, in the shape every `error` of `--json` output
/// has (`{"kind": ..., "message": ...}`), in listings as in failures.
fn broken_json(reason: &impl std::fmt::Display) -> serde_json::Value {
    json!({"kind": vivarium_core::ErrorKind::Broken.as_str(), "message": reason.to_string()})
}

/// What a command line that cannot be parsed prints under `--json` (on standard output, like
/// every failure), besides clap's own message on standard error.
pub fn usage_error_json(message: &str) -> String {
    json!({"error": {"kind": "usage", "message": message.trim_end()}}).to_string()
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    if matches!(cli.command, Command::Run { .. }) {
        vivarium_vm::session::limit_thread_stacks();
    }
    let json = cli.json;
    match execute(cli) {
        Ok(()) => 0,
        Err(error) => {
            let kind = error.kind();
            if json {
                let out = json!({"error": {"kind": kind.as_str(), "message": error.to_string()}});
                println!("{out}");
            }
            eprintln!("vivarium: error: {error}");
            exit_code(kind)
        }
    }
}

fn execute(cli: Cli) -> Result<(), Error> {
    let library = Library::open_default()?;
    let json = cli.json;
    match cli.command {
        Command::List => list(&library, json),
        Command::Info { name } => info(&library, &name, json),
        Command::Create {
            name,
            boot,
            disk_size,
            disk_format,
            no_disk,
            hardware,
        } => {
            if let Some(iso) = &boot.iso {
                let options = IsoCreate {
                    name,
                    disk_size,
                    disk_format,
                    no_disk,
                };
                return create_from_iso(&library, iso, &boot, &hardware, options, json);
            }
            let disk = if no_disk {
                NewDisk::None
            } else {
                NewDisk::Blank {
                    size: parse_size(disk_size.as_deref().unwrap_or("20G"))?,
                    format: disk_format.parse::<DiskFormat>()?,
                }
            };
            let name = name.expect("clap requires a name without --iso");
            let spec = new_vm(name, &boot, &hardware, disk)?;
            create(&library, &spec, json)
        }
        Command::Import {
            name,
            disk,
            boot,
            hardware,
        } => {
            let boot_source_given = boot.kernel.is_some() || boot.iso.is_some();
            let mut spec = new_vm(name, &boot, &hardware, NewDisk::Import { path: disk })?;
            if !boot_source_given {
                spec.boot = BootSource::Disk;
            }
            create(&library, &spec, json)
        }
        Command::Rename { name, new_name } => {
            let config = library.rename(&name, &new_name)?;
            report(json, &format!("Renamed `{name}` to `{new_name}`."), &config);
            Ok(())
        }
        Command::Set(args) => set(&library, args, json),
        Command::Host => host(json),
        Command::InspectIso { file } => {
            let inspection = vivarium_core::iso::inspect(&file)?;
            if json {
                println!("{}", json!({"iso": inspection_json(&inspection)}));
            } else {
                print_inspection(&inspection);
            }
            Ok(())
        }
        Command::Run { name, boot_from } => crate::runner::run_in_terminal(
            &library,
            &name,
            boot_from.as_deref().and_then(boot_once),
            json,
        ),
        Command::Start {
            name,
            headless: _,
            boot_from,
        } => crate::lifecycle::start(
            &library,
            &name,
            boot_from.as_deref().and_then(boot_once),
            json,
        ),
        Command::Stop {
            name,
            force,
            timeout,
        } => crate::lifecycle::stop(
            &library,
            &name,
            force,
            std::time::Duration::from_secs(timeout),
            json,
        ),
        Command::Pause { name } => crate::lifecycle::pause(&library, &name, json),
        Command::Resume { name } => crate::lifecycle::resume(&library, &name, json),
        Command::Reset { name } => crate::lifecycle::reset(&library, &name, json),
        Command::Eject { name, force } => crate::lifecycle::eject(&library, &name, force, json),
        Command::Insert { name, file } => crate::lifecycle::insert(&library, &name, &file, json),
        Command::Type {
            name,
            text,
            keys,
            delay,
        } => crate::send_input::type_into(
            &library,
            &name,
            &crate::send_input::Typing {
                text,
                combos: keys,
                delay: std::time::Duration::from_millis(delay),
            },
            json,
        ),
        Command::Key {
            name,
            combos,
            delay,
        } => crate::send_input::type_into(
            &library,
            &name,
            &crate::send_input::Typing {
                text: None,
                combos,
                delay: std::time::Duration::from_millis(delay),
            },
            json,
        ),
        Command::Mouse {
            name,
            actions,
            delay,
        } => crate::send_input::move_mouse(
            &library,
            &name,
            &actions,
            std::time::Duration::from_millis(delay),
            json,
        ),
        Command::Status { name } => crate::lifecycle::status(&library, &name, json),
        Command::Console { name } => crate::console::attach(&library, &name),
        Command::Screenshot { name, file } => crate::screenshot::run(&library, &name, &file, json),
        Command::Delete { name } => {
            library.delete(&name)?;
            if json {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("Deleted `{name}`.");
            }
            Ok(())
        }
        Command::Clone {
            source,
            name,
            linked,
        } => {
            let mode = if linked {
                CloneMode::Linked
            } else {
                CloneMode::Full
            };
            cancel_on_interrupt();
            let started = std::time::Instant::now();
            let outcome = with_progress("Cloning", |progress| {
                library.clone_vm(&source, &name, mode, progress)
            })?;
            let kind = if linked { "linked" } else { "full" };
            let message = format!(
                "Created `{name}`, a {kind} clone of `{source}`, in {:.2} s.",
                started.elapsed().as_secs_f64()
            );
            print_warnings(&outcome.warnings);
            report(json, &message, &outcome.config);
            Ok(())
        }
    }
}

fn new_vm(name: String, boot: &BootArgs, hw: &HardwareArgs, disk: NewDisk) -> Result<NewVm, Error> {
    let boot_source = match (&boot.kernel, &boot.iso) {
        (Some(kernel), _) => BootSource::Linux {
            kernel: kernel.clone(),
            initrd: boot.initrd.clone(),
            cmdline: boot.cmdline.clone().unwrap_or_default(),
        },
        (None, Some(_)) => BootSource::Cdrom,
        (None, None) => BootSource::Disk,
    };
    let mut spec = NewVm::with_defaults(name, boot_source);
    spec.arch = arch_arg(hw)?;
    if let Some(cpus) = cpus_arg(hw.cpus)? {
        spec.cpus = cpus;
    }
    if let Some(memory) = &hw.memory {
        spec.memory_mib = parse_memory_mib(memory)?;
    }
    spec.os = os_info(
        hw.os.as_deref(),
        hw.os_name.as_deref(),
        boot.kernel.is_some(),
    );
    spec.network = match hw.network.as_str() {
        "none" => {
            if !hw.forwards.is_empty() {
                return Err(Error::InvalidInput(
                    "--forward needs a network: drop --network none".into(),
                ));
            }
            NetworkConfig::None
        }
        _ => NetworkConfig::User {
            mac: MacAddress::random(),
            forwards: parse_forwards(&hw.forwards)?,
        },
    };
    spec.display = hw.display.parse::<DisplayConfig>()?;
    spec.notes = hw.notes.clone();
    spec.cdrom = boot.iso.clone();
    spec.disk = disk;
    if let Some(firmware) = &boot.firmware {
        spec.firmware = firmware.parse().map_err(Error::InvalidInput)?;
    }
    Ok(spec)
}

/// The `--arch` of a new VM: a machine Vivarium has (i686 gives the x86_64 one).
fn arch_arg(hw: &HardwareArgs) -> Result<Option<Arch>, Error> {
    hw.arch.as_deref().map(str::parse::<Arch>).transpose()
}

/// The disk options of `create --iso`.
struct IsoCreate {
    name: Option<String>,
    disk_size: Option<String>,
    disk_format: String,
    no_disk: bool,
}

/// `vivarium create --iso`: recognise the ISO, print what was found, create the VM with the
/// recommended hardware (flags override) and the installer's boot.
fn create_from_iso(
    library: &Library,
    iso: &std::path::Path,
    boot: &BootArgs,
    hw: &HardwareArgs,
    options: IsoCreate,
    json: bool,
) -> Result<(), Error> {
    // The ISO is inspected for the machine the VM is to be: this computer's unless
    // `--arch` says another.
    let target = arch_arg(hw)?.or_else(Arch::host);
    let inspection = vivarium_core::iso::inspect_entry(iso, target, boot.boot_entry.as_deref())?;
    if !json {
        print_inspection(&inspection);
    }
    let recommended = inspection.recommended;
    let name = match options.name {
        Some(name) => name,
        None => free_name(library, &inspection.suggested_name()),
    };
    let disk_size = match &options.disk_size {
        Some(text) => parse_size(text)?,
        None => recommended.disk_bytes,
    };
    let disk = if options.no_disk || disk_size == 0 {
        NewDisk::None
    } else {
        NewDisk::Blank {
            size: disk_size,
            format: options.disk_format.parse::<DiskFormat>()?,
        }
    };
    let mut spec = new_vm(name, boot, hw, disk)?;
    if boot.firmware.is_none()
        && let vivarium_core::iso::BootPlan::NeedsFirmware { firmware, .. } = &inspection.plan
    {
        spec.firmware = *firmware;
    }
    if hw.cpus.is_none() {
        spec.cpus = recommended.cpus;
    }
    if hw.memory.is_none() {
        spec.memory_mib = recommended.memory_mib;
    }
    if hw.os.is_none() {
        spec.os = inspection.os_info();
        if let Some(name) = &hw.os_name {
            spec.os.name = name.clone();
        }
    }
    cancel_on_interrupt();
    let outcome = with_progress("Extracting the installer", |progress| {
        library.create_from_iso(&spec, &inspection, progress)
    })?;
    print_warnings(&outcome.warnings);
    let config = &outcome.config;
    if json {
        println!(
            "{}",
            json!({
                "iso": inspection_json(&inspection),
                "created": config_json(config),
                "warnings": outcome.warnings,
            })
        );
    } else {
        let disk = config
            .disks
            .first()
            .map(|d| format!("a {} {} disk", format_size(d.size), d.format))
            .unwrap_or_else(|| "no disk".into());
        println!(
            "Created `{}` ({}): {}, {} memory, {disk}, the ISO in its CD-ROM drive.",
            config.name,
            config.os.name,
            cpus_text(config.cpus),
            format_size(config.memory_mib << 20)
        );
        match &config.boot {
            BootSource::Installer { cmdline, .. } => {
                println!(
                    "It boots the installer's kernel with: {cmdline}\nOnce the installer has \
                     made the disk bootable, it boots the disk through its {}.",
                    config.firmware.label()
                );
            }
            BootSource::Disk => println!(
                "It boots the ISO through its {} while the disk holds nothing bootable, then \
                 the disk.",
                config.firmware.label()
            ),
            _ => {}
        }
    }
    Ok(())
}

/// A `--cpus` value checked against the range a VM can have (taken as any integer, so that
/// `-1` and `1000` get the range named, not a parser's complaint about digits).
fn cpus_arg(cpus: Option<i64>) -> Result<Option<u32>, Error> {
    use vivarium_core::config::{MAX_CPUS, MIN_CPUS};
    cpus.map(|n| {
        u32::try_from(n)
            .ok()
            .filter(|n| (MIN_CPUS..=MAX_CPUS).contains(n))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{n} CPUs is out of range: choose {MIN_CPUS} to {MAX_CPUS}"
                ))
            })
    })
    .transpose()
}

/// "1 CPU", "2 CPUs".
fn cpus_text(cpus: u32) -> String {
    if cpus == 1 {
        "1 CPU".into()
    } else {
        format!("{cpus} CPUs")
    }
}

/// `base`, or `base (2)`, `base (3)`, ... whichever no VM has yet.
pub(crate) fn free_name(library: &Library, base: &str) -> String {
    let taken = |name: &str| !matches!(library.get(name), Err(Error::NotFound(_)));
    if !taken(base) {
        return base.to_string();
    }
    (2..1000)
        .map(|n| format!("{base} ({n})"))
        .find(|name| !taken(name))
        .unwrap_or_else(|| base.to_string())
}

fn inspection_json(inspection: &vivarium_core::iso::IsoInspection) -> Value {
    serde_json::to_value(inspection).expect("an inspection always serialises to JSON")
}

/// Prints what was recognised on an ISO, for people.
fn print_inspection(inspection: &vivarium_core::iso::IsoInspection) {
    let os = &inspection.os;
    let version = os
        .version
        .as_deref()
        .map(|v| format!(", version {v}"))
        .unwrap_or_default();
    let arch = os
        .arch
        .map(|a| a.to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("ISO:          {}", inspection.path.display());
    println!("Volume:       {}", inspection.volume_id);
    println!("OS:           {} ({}{version})", os.name, os.id);
    println!("Architecture: {arch}");
    for evidence in &os.evidence {
        println!("              ({evidence})");
    }
    let firmware = match (inspection.bios_bootable, inspection.uefi_bootable) {
        (true, true) => "BIOS and UEFI",
        (true, false) => "BIOS",
        (false, true) => "UEFI",
        (false, false) => "none",
    };
    println!("Boot entries: {firmware}");
    println!("Boots:        {}", inspection.plan.describe());
    if let vivarium_core::iso::BootPlan::DirectLinux { cmdline, .. } = &inspection.plan {
        println!("Command line: {cmdline}");
    }
    let r = &inspection.recommended;
    let disk = if r.disk_bytes == 0 {
        "no disk".to_string()
    } else {
        format!("a {} disk", format_size(r.disk_bytes))
    };
    println!(
        "Proposed:     {}, {} memory, {disk} (icon: {})",
        cpus_text(r.cpus),
        format_size(r.memory_mib << 20),
        r.icon
    );
}

/// The guest OS of a new VM: the id and name given, else Linux for a kernel boot, else other.
pub fn os_info(id: Option<&str>, name: Option<&str>, has_kernel: bool) -> OsInfo {
    let base = match id {
        Some(id) => OsInfo {
            id: id.to_string(),
            name: id.to_string(),
        },
        None if has_kernel => OsInfo::linux(),
        None => OsInfo::other(),
    };
    OsInfo {
        name: name.map(str::to_string).unwrap_or(base.name),
        id: base.id,
    }
}

/// Parses a memory size: a plain number is MiB, else a size such as `2G` or `512M`.
pub fn parse_memory_mib(text: &str) -> Result<u64, Error> {
    if let Ok(mib) = text.trim().parse::<u64>() {
        return Ok(mib);
    }
    let bytes = parse_size(text)?;
    if bytes % (1 << 20) != 0 {
        return Err(Error::InvalidInput(format!(
            "memory `{text}` is not a whole number of MiB"
        )));
    }
    Ok(bytes >> 20)
}

fn parse_forwards(forwards: &[String]) -> Result<Vec<PortForward>, Error> {
    let parsed = forwards
        .iter()
        .map(|f| f.parse::<PortForward>())
        .collect::<Result<Vec<_>, _>>()?;
    for (i, a) in parsed.iter().enumerate() {
        if parsed[..i]
            .iter()
            .any(|b| b.protocol == a.protocol && b.host == a.host)
        {
            return Err(Error::InvalidInput(format!(
                "host port {} ({}) is forwarded twice",
                a.host, a.protocol
            )));
        }
    }
    Ok(parsed)
}

fn create(library: &Library, spec: &NewVm, json: bool) -> Result<(), Error> {
    cancel_on_interrupt();
    let outcome = with_progress("Copying disk", |progress| library.create(spec, progress))?;
    print_warnings(&outcome.warnings);
    let config = &outcome.config;
    let disk = config
        .disks
        .first()
        .map(|d| format!("a {} {} disk", format_size(d.size), d.format))
        .unwrap_or_else(|| "no disk".into());
    let message = format!(
        "Created `{}` ({}): {}, {} memory, {disk}.",
        config.name,
        config.os.name,
        cpus_text(config.cpus),
        format_size(config.memory_mib << 20)
    );
    if json {
        println!(
            "{}",
            json!({"created": config_json(config), "warnings": outcome.warnings})
        );
    } else {
        println!("{message}");
    }
    Ok(())
}

fn set(library: &Library, args: SetArgs, json: bool) -> Result<(), Error> {
    let memory = args.memory.as_deref().map(parse_memory_mib).transpose()?;
    let display = args
        .display
        .as_deref()
        .map(str::parse::<DisplayConfig>)
        .transpose()?;
    let mac = args
        .mac
        .as_deref()
        .map(str::parse::<MacAddress>)
        .transpose()?;
    let forwards = parse_forwards(&args.forwards)?;
    let cpus = cpus_arg(args.cpus)?;
    let config = library.update(&args.name, |config| {
        if let Some(cpus) = cpus {
            config.cpus = cpus;
        }
        if let Some(mib) = memory {
            config.memory_mib = mib;
        }
        apply_boot_changes(config, &args)?;
        if let Some(iso) = &args.iso {
            config.cdrom = Some(CdromConfig {
                image: Some(iso.clone()),
            });
        }
        if args.eject {
            config.cdrom = Some(CdromConfig { image: None });
        }
        apply_network_changes(config, &args, mac, &forwards)?;
        if let Some(display) = display {
            config.display = display;
        }
        if args.os.is_some() || args.os_name.is_some() {
            let id = args.os.clone().unwrap_or_else(|| config.os.id.clone());
            config.os = OsInfo {
                name: args
                    .os_name
                    .clone()
                    .unwrap_or_else(|| args.os.clone().unwrap_or(config.os.name.clone())),
                id,
            };
        }
        if let Some(notes) = &args.notes {
            config.notes = notes.clone();
        }
        if let Some(read_only) = &args.disk_read_only {
            for disk in &mut config.disks {
                disk.read_only = read_only == "on";
            }
        }
        Ok(())
    })?;
    report(json, &format!("Updated `{}`.", args.name), &config);
    Ok(())
}

fn apply_boot_changes(config: &mut VmConfig, args: &SetArgs) -> Result<(), Error> {
    if let Some(firmware) = &args.firmware {
        config.firmware = firmware.parse().map_err(Error::InvalidInput)?;
    }
    if let Some(boot) = &args.boot {
        config.boot = if boot == "cdrom" {
            BootSource::Cdrom
        } else {
            BootSource::Disk
        };
    }
    let touches_linux = args.kernel.is_some() || args.initrd.is_some() || args.cmdline.is_some();
    if !touches_linux {
        return Ok(());
    }
    let installer = matches!(config.boot, BootSource::Installer { .. });
    let (mut kernel, mut initrd, mut cmdline) = match &config.boot {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        }
        | BootSource::Installer {
            kernel,
            initrd,
            cmdline,
        } => (Some(kernel.clone()), initrd.clone(), cmdline.clone()),
        _ => (None, None, String::new()),
    };
    if let Some(k) = &args.kernel {
        kernel = Some(k.clone());
    }
    if let Some(i) = &args.initrd {
        initrd = Some(i.clone());
    }
    if let Some(c) = &args.cmdline {
        cmdline = c.clone();
    }
    let kernel = kernel.ok_or_else(|| {
        Error::InvalidInput(format!(
            "`{}` does not boot a Linux kernel: give --kernel as well",
            config.name
        ))
    })?;
    config.boot = if installer {
        BootSource::Installer {
            kernel,
            initrd,
            cmdline,
        }
    } else {
        BootSource::Linux {
            kernel,
            initrd,
            cmdline,
        }
    };
    Ok(())
}

fn apply_network_changes(
    config: &mut VmConfig,
    args: &SetArgs,
    mac: Option<MacAddress>,
    forwards: &[PortForward],
) -> Result<(), Error> {
    if args.network.as_deref() == Some("none") {
        if mac.is_some() || !forwards.is_empty() {
            return Err(Error::InvalidInput(
                "--mac and --forward need a network: drop --network none".into(),
            ));
        }
        config.network = NetworkConfig::None;
        return Ok(());
    }
    if args.network.as_deref() == Some("user") && matches!(config.network, NetworkConfig::None) {
        config.network = NetworkConfig::user_with_random_mac();
    }
    match &mut config.network {
        NetworkConfig::None => {
            if mac.is_some() || !forwards.is_empty() || args.clear_forwards {
                return Err(Error::InvalidInput(format!(
                    "`{}` has no network card: add one with --network user",
                    config.name
                )));
            }
        }
        NetworkConfig::User {
            mac: current_mac,
            forwards: current,
        } => {
            if let Some(mac) = mac {
                *current_mac = mac;
            }
            if args.clear_forwards {
                current.clear();
            }
            for forward in forwards {
                if current
                    .iter()
                    .any(|f| f.protocol == forward.protocol && f.host == forward.host)
                {
                    return Err(Error::InvalidInput(format!(
                        "host port {} ({}) is already forwarded; use --clear-forwards to start over",
                        forward.host, forward.protocol
                    )));
                }
                current.push(*forward);
            }
        }
    }
    Ok(())
}

/// The device of a `--boot-from` value (clap has checked it is one of these).
pub fn boot_once(value: &str) -> Option<vivarium_core::backend::BootOnce> {
    vivarium_vm::parse_boot_once(value)
}

fn host(json: bool) -> Result<(), Error> {
    let Some(backend) = vivarium_vm::backend::host_backend() else {
        let reason = "Vivarium has no hypervisor backend for this platform yet";
        if json {
            println!(
                "{}",
                json!({"backend": null, "can_run": false, "explain": reason})
            );
        } else {
            println!("{reason}.");
        }
        return Ok(());
    };
    let support = backend.probe();
    let firmware = vivarium_core::firmware::HostFirmware::locate();
    if json {
        println!(
            "{}",
            json!({
                "backend": backend.name(),
                "can_run": support.can_run(),
                "full_guests": matches!(support, vivarium_core::backend::HostSupport::Ready { .. }),
                "explain": support.explain(),
                "firmware": firmware,
            })
        );
    } else {
        println!("Backend: {}", backend.name());
        println!("{}", support.explain());
        println!("Firmware:");
        for line in firmware.describe() {
            println!("  {line}");
        }
    }
    Ok(())
}

/// The live state of a VM whose configuration loads (`None` for a broken one).
fn live_of(library: &Library, entry: &VmEntry) -> Option<LiveState> {
    entry
        .config
        .as_ref()
        .ok()
        .map(|_| vivarium_core::control::live_state(library, &entry.name))
}

/// The state `list` shows of a stopped VM that cannot start on this computer (its machine is
/// of another architecture).
const OTHER_ARCH_STATE: &str = "other-arch";

/// Why the VM of this entry cannot start here, if its configuration loads and it cannot.
fn cannot_start(entry: &VmEntry) -> Option<String> {
    entry
        .config
        .as_ref()
        .ok()
        .and_then(VmConfig::cannot_start_here)
}

fn state_word(live: Option<&LiveState>, cannot_start: Option<&str>) -> &'static str {
    match live {
        None => "broken",
        Some(LiveState::Stopped { .. }) if cannot_start.is_some() => OTHER_ARCH_STATE,
        Some(LiveState::Stopped { .. }) => "stopped",
        Some(LiveState::Running(status)) => status.state.as_str(),
        Some(LiveState::Busy) => "busy",
    }
}

/// The JSON fields of a VM's live state (state, pid or last run), and why it cannot start
/// here (`cannot_start`, in the shape of every `error`) if it cannot: then a stopped VM's
/// state is `other-arch`.
fn live_fields(row: &mut Value, live: Option<&LiveState>, cannot_start: Option<&str>) {
    match live {
        None => row["state"] = json!("broken"),
        Some(live) => {
            if let (Some(row), Value::Object(fields)) =
                (row.as_object_mut(), crate::lifecycle::live_json(live))
            {
                row.extend(fields);
            }
            if let Some(why) = cannot_start {
                if matches!(live, LiveState::Stopped { .. }) {
                    row["state"] = json!(OTHER_ARCH_STATE);
                }
                row["cannot_start"] =
                    json!({"kind": ErrorKind::OtherArch.as_str(), "message": why});
            }
        }
    }
}

fn list(library: &Library, json: bool) -> Result<(), Error> {
    let vms = library.list()?;
    let live: Vec<Option<LiveState>> = vms.iter().map(|vm| live_of(library, vm)).collect();
    if json {
        let rows: Vec<Value> = vms
            .iter()
            .zip(&live)
            .map(|(vm, live)| {
                let mut row = json!({
                    "name": vm.name,
                    "disk_usage_bytes": vm.disk_usage,
                });
                live_fields(&mut row, live.as_ref(), cannot_start(vm).as_deref());
                match &vm.config {
                    Ok(c) => {
                        row["arch"] = json!(c.arch);
                        row["os"] = json!(c.os.id);
                        row["os_name"] = json!(c.os.name);
                        row["cpus"] = json!(c.cpus);
                        row["memory_mib"] = json!(c.memory_mib);
                    }
                    Err(reason) => row["error"] = broken_json(reason),
                }
                row
            })
            .collect();
        println!("{}", Value::Array(rows));
        return Ok(());
    }
    if vms.is_empty() {
        println!(
            "No VMs yet. Create one with `vivarium create NAME --kernel FILE` or `--iso FILE`."
        );
        return Ok(());
    }
    let width = vms
        .iter()
        .map(|v| v.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<13}  {:<16}  {:>4}  {:>9}  {:>9}  LAST RUN",
        "NAME", "STATE", "OS", "CPUS", "MEMORY", "DISK USE"
    );
    for (vm, live) in vms.iter().zip(&live) {
        let why = cannot_start(vm);
        // A VM that cannot start here says why where its last run would be.
        let last = match (live, &why) {
            (Some(LiveState::Stopped { .. }), Some(why)) => why.as_str(),
            (
                Some(LiveState::Stopped {
                    last_run: Some(run),
                }),
                None,
            ) => run.exit.as_str(),
            _ => "",
        };
        match &vm.config {
            Ok(c) => println!(
                "{:<width$}  {:<13}  {:<16}  {:>4}  {:>9}  {:>9}  {last}",
                text::for_terminal(&vm.name),
                state_word(live.as_ref(), why.as_deref()),
                text::for_terminal(&c.os.name),
                c.cpus,
                format_size(c.memory_mib << 20),
                format_size(vm.disk_usage)
            ),
            Err(reason) => println!("{:<width$}  {:<13}  {reason}", vm.name, "broken"),
        }
    }
    Ok(())
}

fn config_json(config: &VmConfig) -> Value {
    serde_json::to_value(config).expect("a VmConfig always serialises to JSON")
}

fn info(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    let entry = library.get(name)?;
    let live = live_of(library, &entry);
    if json {
        let mut out = json!({
            "name": entry.name,
            "path": entry.path,
            "disk_usage_bytes": entry.disk_usage,
        });
        live_fields(&mut out, live.as_ref(), cannot_start(&entry).as_deref());
        match &entry.config {
            Ok(config) => out["config"] = config_json(config),
            Err(reason) => out["error"] = broken_json(reason),
        }
        println!("{out}");
        return Ok(());
    }
    println!("Name:      {}", text::for_terminal(&entry.name));
    match &live {
        Some(live) => println!("State:     {}", crate::lifecycle::describe(live)),
        None => println!("State:     broken"),
    }
    println!("Folder:    {}", entry.path.display());
    let config = match &entry.config {
        Ok(config) => config,
        Err(reason) => {
            println!("Problem:   {reason}");
            println!(
                "           (fix or remove vm.toml in the folder, or `vivarium delete {name}`)"
            );
            return Ok(());
        }
    };
    println!("Id:        {}", config.id);
    match config.cannot_start_here() {
        None => println!("Machine:   {}", config.arch),
        Some(why) => println!("Machine:   {} (cannot start here: {why})", config.arch),
    }
    println!(
        "OS:        {} ({})",
        text::for_terminal(&config.os.name),
        text::for_terminal(&config.os.id)
    );
    println!("CPUs:      {}", config.cpus);
    println!("Memory:    {}", format_size(config.memory_mib << 20));
    println!("Boot:      {}", config.boot.describe());
    if !matches!(config.boot, BootSource::Linux { .. }) {
        println!("Firmware:  {}", config.firmware.label());
    }
    if let BootSource::Linux {
        initrd, cmdline, ..
    }
    | BootSource::Installer {
        initrd, cmdline, ..
    } = &config.boot
    {
        if let Some(initrd) = initrd {
            println!("Initrd:    {}", initrd.display());
        }
        println!("Cmdline:   {cmdline}");
    }
    for (i, disk) in config.disks.iter().enumerate() {
        let allocated = vivarium_core::fsutil::allocated_bytes(&entry.path.join(&disk.file))
            .map(format_size)
            .unwrap_or_else(|_| "missing!".into());
        let linked = if disk.base.is_some() {
            ", linked (copy-on-write over a shared base)"
        } else {
            ""
        };
        let ro = if disk.read_only { ", read-only" } else { "" };
        println!(
            "Disk {i}:    {} {} ({} used){linked}{ro}  {}",
            format_size(disk.size),
            disk.format,
            allocated,
            disk.file.display()
        );
    }
    if let Some(cdrom) = &config.cdrom {
        match &cdrom.image {
            Some(image) => println!("CD-ROM:    {}", image.display()),
            None => println!("CD-ROM:    empty"),
        }
    }
    match &config.network {
        NetworkConfig::None => println!("Network:   none"),
        NetworkConfig::User { mac, forwards } => {
            let fwd: Vec<String> = forwards.iter().map(|f| f.to_string()).collect();
            let fwd = if fwd.is_empty() {
                String::new()
            } else {
                format!(", forwards {}", fwd.join(" "))
            };
            println!("Network:   user-mode, MAC {mac}{fwd}");
        }
    }
    println!("Display:   {}", config.display);
    println!("Created:   {}", config.created);
    println!("Disk use:  {}", format_size(entry.disk_usage));
    if !config.notes.is_empty() {
        println!(
            "Notes:     {}",
            text::lines_for_terminal(&config.notes).replace('\n', "\n           ")
        );
    }
    Ok(())
}

fn report(json: bool, message: &str, config: &VmConfig) {
    if json {
        println!("{}", json!({"vm": config_json(config)}));
    } else {
        println!("{message}");
    }
}

fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("vivarium: warning: {warning}");
    }
}

/// Runs `op` with a progress line on a terminal's standard error, and Ctrl-C as cancel.
fn with_progress<T>(
    label: &str,
    op: impl FnOnce(&dyn vivarium_core::disk::Progress) -> Result<T, Error>,
) -> Result<T, Error> {
    let tty = std::io::stderr().is_terminal();
    let last_percent = std::sync::atomic::AtomicU64::new(u64::MAX);
    let progress = ProgressFn {
        on_update: |done: u64, total: u64| {
            if !tty || total == 0 {
                return;
            }
            let percent = done.saturating_mul(100) / total;
            if last_percent.swap(percent, Ordering::Relaxed) != percent {
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r{label}: {percent:>3}% ({} of {})  (Ctrl-C cancels)",
                    format_size(done),
                    format_size(total)
                );
                let _ = err.flush();
            }
        },
        cancel: &CANCEL,
    };
    let result = op(&progress);
    if tty && last_percent.load(Ordering::Relaxed) != u64::MAX {
        eprintln!();
    }
    result
}
