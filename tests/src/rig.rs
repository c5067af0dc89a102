//! The nested test rig: a machine emulated by QEMU's TCG with a genuine `/dev/kvm` in which a
//! VMM boots real guest kernels (the host's own `/dev/kvm` may be a software hypervisor that
//! cannot; see `shared/notes/kvm-on-these-machines.md` of the project). It comes in two
//! architectures ([`Arch`]):
//! - **x86_64** ([`Rig::new`]): an emulated AMD CPU whose Debian kernel loads `kvm_amd`;
//! - **arm64** ([`Rig::arm64`]): QEMU's `virt` machine with the virtualisation extensions
//!   (EL2) and a GICv3, whose Debian arm64 kernel has KVM built in, so a VMM inside boots
//!   arm64 guests on real KVM/arm64 (see `shared/notes/arm64-rig.md`). Its programs are arm64
//!   programs: Debian's arm64 QEMU ([`Rig::qemu`]) and workspace binaries cross-built for it
//!   ([`crate::cross`]), carried with the arm64 libraries they name
//!   ([`crate::elf::library_closure`]) from the arm64 fixtures' sysroot.
//!
//! The logic lives here, in the `vivarium-e2e` library, so that tests call it directly (no
//! nested `cargo` runs, but for the cross-builds of arm64 programs, in a target folder of
//! their own) and `cargo xtask rig` is a thin wrapper around the same code.
//!
//! A test describes the run with [`Rig`]: a shell script, the host binaries it needs (copied in
//! with every library `ldd` lists and the dynamic loader), data files, and files for the script
//! under `/rig/files`. [`Rig::run`] packs the outer initramfs, boots it, and returns the outer
//! serial console as timestamped lines ([`RigRun`]), with the script's exit code. The outer
//! `/init` (`xtask/guest/rig-init.sh`) documents the protocol and the layout inside.
//!
//! ```no_run
//! use vivarium_e2e::{fixtures::Fixtures, rig::Rig};
//!
//! let fixtures = Fixtures::locate().expect("cargo xtask fixtures");
//! let run = Rig::new(&fixtures, "ls /dev/kvm").run().expect("the rig boots");
//! assert_eq!(run.kvm, Some(true));
//! assert_eq!(run.exit_code, Some(0), "{}", run.transcript());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::fixtures::{Cpio, Fixtures, RIG_MODULES};
use crate::fixtures_arm64::{self, Arm64Fixtures};

/// The outer machine's `/init` (busybox sh; its protocol is documented at its top).
pub const RIG_INIT: &str = include_str!("../../xtask/guest/rig-init.sh");

/// The emulator that runs the outer machine (and, carried inside, the baseline inner VMM).
pub const QEMU: &str = "qemu-system-x86_64";

/// The emulator that runs the outer machine of the arm64 rig (Debian package
/// `qemu-system-arm`).
pub const QEMU_AARCH64: &str = "qemu-system-aarch64";

/// The architecture of a rig's outer machine, and so of the guests its VMMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// An emulated AMD x86_64 machine with `kvm_amd` ([`Rig::new`]).
    X86_64,
    /// An emulated arm64 `virt` machine with EL2 and KVM/arm64 ([`Rig::arm64`]).
    Arm64,
}

impl Arch {
    /// The emulator that runs the outer machine.
    pub fn emulator(self) -> &'static str {
        match self {
            Arch::X86_64 => QEMU,
            Arch::Arm64 => QEMU_AARCH64,
        }
    }

    /// Why this rig cannot run here, or `None` when it can: its emulator must be installed.
    pub fn missing_prerequisite(self) -> Option<String> {
        find_program(self.emulator())
            .is_none()
            .then(|| emulator_missing(self))
    }
}

/// The fixtures a rig boots with.
#[derive(Debug, Clone)]
enum Machine {
    X86_64(Fixtures),
    Arm64(Arm64Fixtures),
}

/// Marker of the outer init once the kvm modules are loaded: `VIVARIUM-RIG-READY kvm=yes|no`.
pub const READY_MARKER: &str = "VIVARIUM-RIG-READY";

/// Marker of the script's end: `VIVARIUM-RIG-EXIT <code>`.
pub const EXIT_MARKER: &str = "VIVARIUM-RIG-EXIT";
/// A shell function for rig scripts, the rig's own bounded wait ([`crate::wait`] on the host):
/// `wait_for FILE TEXT [SECONDS [COUNT]]` waits up to SECONDS (default 120) until FILE (a VM's
/// serial log, a console's output) has COUNT (default 1) lines matching TEXT (a `grep`
/// pattern), and otherwise prints a rig mark saying what it awaited and the end of FILE (as
/// `VIVARIUM-RIG-SEEN` lines, escape codes taken out), and fails.
///
/// A line is matched as soon as its first bytes are there: when the script reads values out of
/// the line it waited for, TEXT goes to the line's end (a field of fixed length, or a last
/// field the writer adds for this).
pub const WAIT_FOR_SH: &str = r#"wait_for() { # FILE TEXT [SECONDS [COUNT]]: wait for COUNT lines matching TEXT in FILE
    n=0
    while [ $n -lt $(( ${3:-120} * 2 )) ]; do
        c=$(grep -c -e "$2" "$1" 2>/dev/null)
        [ "${c:-0}" -ge "${4:-1}" ] && return 0
        usleep 500000; n=$((n+1))
    done
    echo "VIVARIUM-RIG-MARK gave up waiting ${3:-120} s for ${4:-1} line(s) matching '$2' in $1 (found ${c:-0}); it ends with:"
    esc=$(printf '\033')
    tail -c 3000 "$1" 2>/dev/null | sed "s/$esc\[[0-9;?]*[A-Za-z]/ /g" | tr -d '\033' \
        | tr '\r' '\n' | grep -v '^ *$' | tail -n 20 \
        | sed -e 's/VIVARIUM-RESULT/(result)/g' -e 's/^/VIVARIUM-RIG-SEEN /'
    return 1
}"#;

/// Prefix of the lines that carry files out of the rig: `VIVARIUM-B64 <name> <base64>`.
pub const CARRY_MARKER: &str = "VIVARIUM-B64 ";

/// A shell function for rig scripts: `carry NAME FILE` prints FILE on the console as base64
/// lines that [`RigRun::carried`] puts back together on the host.
pub const CARRY_SH: &str = r#"carry() { # NAME FILE: the file on the console, as base64 lines
    base64 "$2" | sed "s/^/VIVARIUM-B64 $1 /"
}"#;

/// What the rig's init writes to the console every few seconds while the machine runs its
/// own processes, without a line ending (so it can land inside another line; the reader
/// takes it out wherever it is).
pub const ALIVE_TOKEN: &str = "<VIVARIUM-RIG-ALIVE>";

/// Prefix of result lines: `VIVARIUM-RESULT key=value [key=value...]`.
pub const RESULT_MARKER: &str = "VIVARIUM-RESULT";

/// QEMU's firmware files that a QEMU run inside the rig may need (microvm's qboot, the option
/// ROMs for direct kernel boot on pc/q35), looked up in QEMU's data folder.
const QEMU_FIRMWARE: &[&str] = &[
    "bios-256k.bin",
    "bios.bin",
    "bios-microvm.bin",
    "qboot.rom",
    "pvh.bin",
    "linuxboot.bin",
    "linuxboot_dma.bin",
    "kvmvapic.bin",
];

/// A run of the nested rig, described before it starts.
#[derive(Debug, Clone)]
pub struct Rig {
    machine: Machine,
    script: String,
    /// Programs, each with the path to give it in the rig (`None`: its host path).
    binaries: Vec<(PathBuf, Option<String>)>,
    data: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
    timeout: Duration,
    memory_mib: u32,
    cpus: u32,
    arm64_qemu: bool,
    compress: bool,
    echo: bool,
    kernel_log: bool,
}

/// What a rig run printed and how it ended.
#[derive(Debug, Clone)]
pub struct RigRun {
    /// Every line of the outer serial console, with the time since QEMU started.
    pub lines: Vec<RigLine>,
    /// Whether the outer machine had `/dev/kvm` (`None`: it never got that far).
    pub kvm: Option<bool>,
    /// The script's exit code (`None`: the script never finished).
    pub exit_code: Option<i32>,
    /// The run was stopped because it took longer than the timeout.
    pub timed_out: bool,
    /// The run was stopped because the emulated machine froze or stalled (see [`Rig::run`]).
    pub frozen: bool,
    /// Wall time from starting QEMU to its end.
    pub elapsed: Duration,
    /// Size of the outer initramfs in bytes.
    pub initramfs_bytes: u64,
    /// What the outer QEMU wrote to stderr (its own errors).
    pub qemu_stderr: String,
}

/// How often a quiet run checks whether the emulated machine still uses the CPU.
const FREEZE_POLL: Duration = Duration::from_secs(5);
/// A machine that prints nothing and uses almost no CPU (fewer than [`FREEZE_TICKS`] clock
/// ticks) for this long is frozen: under the software emulator, nested guests now and then
/// leave the emulated CPU halted for good (measured: a frozen QEMU uses about 6 ticks in 20 s;
/// a live one at least one CPU in a hundred).
const FREEZE_AFTER: Duration = Duration::from_secs(60);
/// CPU ticks (1/100 s) a live machine uses at the least in [`FREEZE_AFTER`].
const FREEZE_TICKS: u64 = 40;
/// A machine whose init has not said it is alive for this long has stalled: its emulated
/// CPU is busy, but inside a nested guest that never gives it back (a fault of nested
/// virtualisation under the software emulator, seen with guests of two vCPUs). The script's
/// own processes, the heartbeat among them, no longer run, so this is never the VMM under
/// test hanging its guest (that leaves the heartbeat going).
const STALL_AFTER: Duration = Duration::from_secs(90);
/// Runs of a script before a freeze is reported as the result.
const FREEZE_ATTEMPTS: u32 = 3;

/// CPU time (user + system, in clock ticks) the process has used, or `None`.
fn qemu_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// One line of the outer console.
#[derive(Debug, Clone)]
pub struct RigLine {
    /// Time since the outer QEMU started.
    pub at: Duration,
    /// The line, without its line ending.
    pub text: String,
}

impl Rig {
    /// A rig run of `script` (busybox sh) with the guest fixtures in `/rig/fixtures`, a
    /// timeout of `$VIVARIUM_RIG_TIMEOUT` seconds (default 300) and 2 GiB of memory. The
    /// console lines are echoed to stderr as they come when `$VIVARIUM_RIG_ECHO` is `1`, and
    /// the outer kernel logs to the console when `$VIVARIUM_RIG_KERNEL_LOG` is `1`; with
    /// `$VIVARIUM_RIG_MONITOR` set to a path, the outer QEMU's monitor listens on that Unix
    /// socket (for looking into a stalled run by hand).
    pub fn new(fixtures: &Fixtures, script: &str) -> Rig {
        Rig::with_machine(Machine::X86_64(fixtures.clone()), script)
    }

    /// An arm64 rig run of `script`, as [`Rig::new`] otherwise: the outer machine is QEMU's
    /// `virt` with EL2 and a GICv3 (`-cpu max,pauth-impdef=on`, 2 CPUs), booting the arm64
    /// fixtures' kernel and outer initramfs; `/rig/fixtures` has the arm64 guest kernel
    /// (`Image`) and initramfs. Carried programs ([`Rig::binary`]) must be arm64 programs.
    pub fn arm64(fixtures: &Arm64Fixtures, script: &str) -> Rig {
        Rig {
            cpus: 2,
            ..Rig::with_machine(Machine::Arm64(fixtures.clone()), script)
        }
    }

    fn with_machine(machine: Machine, script: &str) -> Rig {
        let timeout = std::env::var("VIVARIUM_RIG_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300);
        Rig {
            machine,
            script: script.to_string(),
            binaries: Vec::new(),
            data: Vec::new(),
            files: Vec::new(),
            timeout: Duration::from_secs(timeout),
            memory_mib: 2048,
            cpus: 1,
            arm64_qemu: false,
            compress: false,
            echo: std::env::var("VIVARIUM_RIG_ECHO").is_ok_and(|v| v == "1"),
            kernel_log: std::env::var("VIVARIUM_RIG_KERNEL_LOG").is_ok_and(|v| v == "1"),
        }
    }

    /// The architecture of the outer machine.
    pub fn arch(&self) -> Arch {
        match self.machine {
            Machine::X86_64(_) => Arch::X86_64,
            Machine::Arm64(_) => Arch::Arm64,
        }
    }

    /// Carries a host program (a path, or a name looked up on `PATH`) at its host path, with
    /// the shared libraries `ldd` lists and the dynamic loader. Vivarium's CLI (a program named
    /// `vivarium`) brings the VM process program installed beside it (`vivarium-vm`), which
    /// `vivarium start` runs. In the arm64 rig the program is an arm64 program (a path: one
    /// cross-built by [`crate::cross`], say), and its loader and libraries come from the arm64
    /// fixtures' sysroot, at their Debian arm64 paths.
    pub fn binary(mut self, program: impl AsRef<Path>) -> Rig {
        let program = program.as_ref();
        self.binaries.push((program.to_path_buf(), None));
        if program.file_name().is_some_and(|n| n == "vivarium") {
            let vm = program.with_file_name("vivarium-vm");
            if vm.is_file() {
                self.binaries.push((vm, None));
            }
        }
        self
    }

    /// Carries a host program as [`Rig::binary`] does, but at path `at` in the rig (for a
    /// program built in a temporary folder: `/rig/bin/NAME`, say).
    pub fn binary_at(mut self, program: impl AsRef<Path>, at: &str) -> Rig {
        self.binaries
            .push((program.as_ref().to_path_buf(), Some(at.to_string())));
        self
    }

    /// Carries a host file, or a folder with everything below it, at its host path (symbolic
    /// links are followed).
    pub fn data(mut self, path: impl AsRef<Path>) -> Rig {
        self.data.push(path.as_ref().to_path_buf());
        self
    }

    /// Carries a host file as `/rig/files/<name>` for the script.
    pub fn file(mut self, host: impl AsRef<Path>, name: &str) -> Rig {
        self.files
            .push((host.as_ref().to_path_buf(), name.to_string()));
        self
    }

    /// Carries QEMU (`qemu-system-x86_64` from `PATH`) with its libraries and the firmware it
    /// needs for `-M microvm` and direct kernel boot, so the script can run it as a VMM. In the
    /// arm64 rig: Debian's arm64 `qemu-system-aarch64` from the arm64 fixtures, at
    /// `/usr/bin/qemu-system-aarch64` with its arm64 libraries (`-M virt` boots a kernel
    /// directly without firmware files).
    pub fn qemu(mut self) -> Result<Rig, String> {
        if self.arch() == Arch::Arm64 {
            self.arm64_qemu = true;
            return Ok(self);
        }
        let qemu = find_program(QEMU).ok_or_else(qemu_missing)?;
        let share = qemu
            .parent()
            .and_then(Path::parent)
            .map(|usr| usr.join("share"))
            .ok_or("cannot tell QEMU's data folder")?;
        for firmware in QEMU_FIRMWARE {
            let path = share.join("qemu").join(firmware);
            if path.exists() {
                self.data.push(path);
            }
        }
        let seabios = share.join("seabios");
        if seabios.is_dir() {
            self.data.push(seabios);
        }
        Ok(self.binary(qemu))
    }

    /// Stops the run (killing QEMU) after this long.
    pub fn timeout(mut self, timeout: Duration) -> Rig {
        self.timeout = timeout;
        self
    }

    /// Memory of the outer machine, in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Rig {
        self.memory_mib = mib;
        self
    }

    /// CPUs of the outer machine (1 for x86, 2 for arm64 unless set).
    pub fn cpus(mut self, cpus: u32) -> Rig {
        self.cpus = cpus;
        self
    }

    /// Gzip the outer initramfs (smaller, but slower to unpack on the emulated CPU).
    pub fn compress(mut self, compress: bool) -> Rig {
        self.compress = compress;
        self
    }

    /// Let the outer kernel log to the console (for debugging the rig itself; the default is
    /// quiet, or `$VIVARIUM_RIG_KERNEL_LOG=1`).
    pub fn kernel_log(mut self, kernel_log: bool) -> Rig {
        self.kernel_log = kernel_log;
        self
    }

    /// Echo the console lines to stderr as they come.
    pub fn echo(mut self, echo: bool) -> Rig {
        self.echo = echo;
        self
    }

    /// Packs the outer initramfs, boots the rig and waits for the script's end, the machine's
    /// end or the timeout. An error means the rig could not be set up or started; a failing
    /// script or a timeout is reported in the [`RigRun`].
    pub fn run(&self) -> Result<RigRun, String> {
        let arch = self.arch();
        let qemu = find_program(arch.emulator()).ok_or_else(|| emulator_missing(arch))?;
        let scratch = tempfile::Builder::new()
            .prefix("vivarium-rig-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary folder: {e}"))?;
        let initramfs = scratch.path().join("rig.cpio");
        self.write_initramfs(&initramfs)?;
        let initramfs = if self.compress {
            let gz = initramfs.with_extension("cpio.gz");
            crate::fixtures::gzip(&initramfs, &gz)?;
            gz
        } else {
            initramfs
        };
        let initramfs_bytes = fs::metadata(&initramfs).map(|m| m.len()).unwrap_or(0);
        let mut attempt = 1;
        loop {
            let mut cmd = self.qemu_command(&qemu, &initramfs);
            let mut run = self.boot(&mut cmd)?;
            run.initramfs_bytes = initramfs_bytes;
            if !run.frozen || attempt == FREEZE_ATTEMPTS {
                return Ok(run);
            }
            // The script starts from scratch in a new machine, so a rerun is sound.
            let _ = writeln!(
                std::io::stderr(),
                "rig: the emulated machine froze after {:.0} s (it stopped using the CPU with \
                 nothing printed, or its own processes stopped running: a known fault of nested \
                 virtualisation under the software emulator); running the script again \
                 ({}/{FREEZE_ATTEMPTS})",
                run.elapsed.as_secs_f64(),
                attempt + 1
            );
            attempt += 1;
        }
    }

    fn write_initramfs(&self, path: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let mut file =
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let sysroot = match &self.machine {
            Machine::X86_64(_) => None,
            Machine::Arm64(fixtures) => {
                // The fixtures' base archive, then this run's: the kernel unpacks
                // concatenated archives one after the other.
                let mut base = File::open(fixtures.outer_initramfs()).map_err(|e| {
                    format!("cannot open {}: {e}", fixtures.outer_initramfs().display())
                })?;
                std::io::copy(&mut base, &mut file).map_err(io)?;
                Some(fixtures.sysroot())
            }
        };
        let mut cpio = Packer {
            cpio: Cpio::new(BufWriter::new(file)),
            carried: BTreeSet::new(),
            sysroot,
        };
        match &self.machine {
            Machine::X86_64(fixtures) => cpio.base(fixtures, &self.script)?,
            Machine::Arm64(_) => cpio
                .cpio
                .file("rig/script.sh", 0o755, self.script.as_bytes())
                .map_err(io)?,
        }
        if self.arm64_qemu
            && let Machine::Arm64(fixtures) = &self.machine
        {
            cpio.arm64_binary(&fixtures.qemu(), fixtures_arm64::QEMU_PROGRAM)?;
        }
        for (program, at) in &self.binaries {
            cpio.binary(program, at.as_deref())?;
        }
        for path in &self.data {
            cpio.data(path)?;
        }
        for (host, name) in &self.files {
            cpio.add(&format!("rig/files/{name}"), host, 0o644)?;
        }
        cpio.cpio
            .finish()
            .and_then(|mut out| out.flush())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    fn qemu_command(&self, qemu: &Path, initramfs: &Path) -> Command {
        let mut cmd = Command::new(qemu);
        let kernel = match &self.machine {
            Machine::X86_64(fixtures) => {
                let cpu = if host_is_intel() {
                    "max,vendor=AuthenticAMD"
                } else {
                    "max"
                };
                cmd.args(["-accel", "tcg", "-cpu", cpu, "-M", "microvm"]);
                fixtures.vmlinux().unwrap_or_else(|| fixtures.vmlinuz())
            }
            Machine::Arm64(fixtures) => {
                // EL2 for KVM inside, and a GICv3 (the only GIC the outer KVM emulates for its
                // guests). pauth-impdef: pointer authentication with QEMU's own cheap algorithm
                // instead of QARMA5, which makes the emulated CPU 2.5-3 times faster.
                cmd.args([
                    "-accel",
                    "tcg",
                    "-M",
                    "virt,virtualization=on,gic-version=3",
                ])
                .args(["-cpu", "max,pauth-impdef=on"]);
                fixtures.kernel()
            }
        };
        cmd.args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initramfs)
            .arg("-append")
            .arg(self.kernel_command_line());
        // A monitor socket for looking into a run by hand (`info registers`, `info irq`).
        if let Some(socket) = std::env::var_os("VIVARIUM_RIG_MONITOR") {
            let mut arg = std::ffi::OsString::from("unix:");
            arg.push(socket);
            arg.push(",server,nowait");
            cmd.arg("-monitor").arg(arg);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The outer kernel's command line. Under a loaded emulator the kernel's TSC calibration
    /// fails now and then and the boot hangs; giving it the host's TSC rate (which is what TCG's
    /// TSC counts at) and trusting the TSC avoids that.
    fn kernel_command_line(&self) -> String {
        if self.arch() == Arch::Arm64 {
            let mut line = String::from("console=ttyAMA0 panic=-1 rdinit=/init");
            line.push_str(if self.kernel_log {
                " loglevel=7"
            } else {
                " quiet loglevel=3"
            });
            return line;
        }
        // nohz=off highres=off: the outer kernel ticks with its local APIC timer in periodic
        // mode. Under TCG, a one-shot APIC timer interrupt that comes due while a nested guest
        // runs is now and then lost; the outer kernel then never sees another timer
        // interrupt, its processes stop running (the heartbeat among them) and the rig stalls
        // (seen with the QEMU monitor: the outer CPU polling in its idle loop with interrupts
        // on, and a heartbeat through /dev/kmsg arriving once in 20 s while a guest booted).
        // A periodic timer re-arms itself, so a lost interrupt costs one tick.
        // idle=poll: the emulated CPU never halts (a halted outer CPU with nested guests now
        // and then never saw its next interrupt); a polling idle loop costs nothing here (the
        // emulator's thread is busy anyway).
        let mut line =
            String::from("console=ttyS0 panic=-1 rdinit=/init idle=poll nohz=off highres=off");
        line.push_str(if self.kernel_log {
            " loglevel=7"
        } else {
            " quiet loglevel=3"
        });
        if let Some(khz) = host_tsc_khz() {
            line.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
        }
        line
    }

    fn boot(&self, cmd: &mut Command) -> Result<RigRun, String> {
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.arch().emulator()))?;
        let lines = spawn_line_reader(child.stdout.take().expect("stdout is piped"), started);
        let stderr = spawn_reader(child.stderr.take().expect("stderr is piped"));
        let mut run = RigRun {
            lines: Vec::new(),
            kvm: None,
            exit_code: None,
            timed_out: false,
            frozen: false,
            elapsed: Duration::ZERO,
            initramfs_bytes: 0,
            qemu_stderr: String::new(),
        };
        let deadline = started + self.timeout;
        let mut cpu_seen = (qemu_cpu_ticks(child.id()), Instant::now());
        // Since when the machine's init is known to run (from its ready marker on).
        let mut alive: Option<Instant> = None;
        loop {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(FREEZE_POLL);
            if wait.is_zero() {
                run.timed_out = true;
                break;
            }
            if alive.is_some_and(|at| at.elapsed() >= STALL_AFTER) {
                let _ = writeln!(
                    std::io::stderr(),
                    "rig: no heartbeat from the emulated machine for {} s",
                    STALL_AFTER.as_secs()
                );
                run.frozen = true;
                run.timed_out = true;
                break;
            }
            match lines.recv_timeout(wait) {
                Ok(Console::Alive) => alive = Some(Instant::now()),
                Ok(Console::Line(line)) => {
                    if self.echo {
                        eprintln!("rig {:6.2}s| {}", line.at.as_secs_f64(), line.text);
                    }
                    if marker_rest(&line.text, READY_MARKER).is_some() {
                        alive = Some(Instant::now());
                    }
                    run.note(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A machine that neither prints nor uses the CPU for a long while is
                    // frozen, not busy.
                    // (A frozen QEMU still spends a few ticks in its main loop.)
                    let ticks = qemu_cpu_ticks(child.id());
                    let used = match (ticks, cpu_seen.0) {
                        (Some(now), Some(then)) => now.saturating_sub(then),
                        _ => u64::MAX,
                    };
                    if used >= FREEZE_TICKS {
                        cpu_seen = (ticks, Instant::now());
                    } else if cpu_seen.1.elapsed() >= FREEZE_AFTER {
                        run.frozen = true;
                        run.timed_out = true;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if run.exit_code.is_some() {
                break;
            }
        }
        // After the exit marker the machine powers off by itself; give it a moment.
        finish(
            &mut child,
            Duration::from_secs(if run.timed_out { 0 } else { 10 }),
        );
        run.elapsed = started.elapsed();
        run.qemu_stderr = stderr.join().unwrap_or_default();
        Ok(run)
    }
}

impl RigRun {
    /// The files the script printed with `carry` ([`CARRY_SH`]), by name.
    pub fn carried(&self) -> BTreeMap<String, Vec<u8>> {
        let mut text: BTreeMap<String, String> = BTreeMap::new();
        for line in &self.lines {
            if let Some(at) = line.text.find(CARRY_MARKER) {
                let rest = &line.text[at + CARRY_MARKER.len()..];
                if let Some((name, data)) = rest.split_once(' ') {
                    text.entry(name.to_string())
                        .or_default()
                        .push_str(data.trim());
                }
            }
        }
        text.into_iter()
            .map(|(name, b64)| {
                let bytes = decode_base64(&b64)
                    .unwrap_or_else(|| panic!("the rig carried {name} as broken base64"));
                (name, bytes)
            })
            .collect()
    }

    /// Records a line, picking up the rig's markers.
    fn note(&mut self, line: RigLine) {
        if let Some(rest) = marker_rest(&line.text, READY_MARKER) {
            self.kvm = Some(rest.trim() == "kvm=yes");
        }
        if let Some(rest) = marker_rest(&line.text, EXIT_MARKER) {
            self.exit_code = rest.trim().parse().ok();
        }
        self.lines.push(line);
    }

    /// Asserts that the script reported `key=want`, showing the transcript when it did not.
    #[track_caller]
    pub fn expect(&self, key: &str, want: &str) {
        assert_eq!(
            self.result(key).as_deref(),
            Some(want),
            "result {key}\n{}",
            self.transcript()
        );
    }

    /// Whether the script ran to its end with exit code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// Every `key=value` of the `VIVARIUM-RESULT` lines, in order (from the rig script or from
    /// a guest inside it).
    pub fn results(&self) -> Vec<(String, String)> {
        self.lines
            .iter()
            .filter_map(|line| marker_rest(&line.text, RESULT_MARKER))
            .flat_map(|rest| {
                rest.split_whitespace()
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The first value of a result key.
    pub fn result(&self, key: &str) -> Option<String> {
        self.results()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// When the first line containing `needle` came, since the outer QEMU started.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|l| l.text.contains(needle))
            .map(|l| l.at)
    }

    /// The whole console with timestamps, and QEMU's errors, for assertion messages.
    pub fn transcript(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            text.push_str(&format!("{:7.2}s| {}\n", line.at.as_secs_f64(), line.text));
        }
        if self.timed_out {
            text.push_str(&format!(
                "(timed out after {:.1} s)\n",
                self.elapsed.as_secs_f64()
            ));
        }
        if !self.qemu_stderr.trim().is_empty() {
            text.push_str(&format!("qemu stderr:\n{}\n", self.qemu_stderr.trim_end()));
        }
        text
    }
}

/// The text after `marker` when the line contains it (guest consoles may prefix lines).
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let at = line.find(marker)?;
    let rest = &line[at + marker.len()..];
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// Adds files to the outer initramfs, each path once.
struct Packer<W: Write> {
    cpio: Cpio<W>,
    carried: BTreeSet<String>,
    /// The arm64 fixtures' sysroot, in the arm64 rig: where carried programs' libraries are.
    sysroot: Option<PathBuf>,
}

impl<W: Write> Packer<W> {
    fn base(&mut self, fixtures: &Fixtures, script: &str) -> Result<(), String> {
        let io = |e: std::io::Error| format!("cannot write the rig initramfs: {e}");
        self.cpio.base_layout().map_err(io)?;
        self.cpio
            .file("init", 0o755, RIG_INIT.as_bytes())
            .map_err(io)?;
        self.cpio.symlink("bin/sh", "busybox").map_err(io)?;
        self.cpio
            .file("rig/script.sh", 0o755, script.as_bytes())
            .map_err(io)?;
        self.add("bin/busybox", &fixtures.busybox(), 0o755)?;
        let mut order = String::new();
        for module in fixtures.modules_in_load_order(RIG_MODULES)? {
            let name = module
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.add(&format!("rig/modules/{name}"), &module, 0o644)?;
            order.push_str(&format!("{name}\n"));
        }
        self.cpio
            .file("rig/modules/load-order", 0o644, order.as_bytes())
            .map_err(io)?;
        self.add("rig/fixtures/vmlinuz", &fixtures.vmlinuz(), 0o644)?;
        self.add(
            "rig/fixtures/guest-initramfs.cpio.gz",
            &fixtures.guest_initramfs(),
            0o644,
        )
    }

    /// A program at `at` (else its path), its libraries at theirs.
    fn binary(&mut self, program: &Path, at: Option<&str>) -> Result<(), String> {
        let path = if program.components().count() > 1 {
            program.to_path_buf()
        } else {
            find_program(&program.to_string_lossy())
                .ok_or_else(|| format!("`{}` is not on PATH", program.display()))?
        };
        let at = at.map_or_else(|| path.to_string_lossy().into_owned(), str::to_string);
        if self.sysroot.is_some() {
            return self.arm64_binary(&path, &at);
        }
        self.add(&at, &path, 0o755)?;
        for library in shared_libraries(&path)? {
            self.add(&library.to_string_lossy(), &library, 0o755)?;
        }
        Ok(())
    }

    /// An arm64 program at `at` in the rig, with its loader and libraries from the sysroot at
    /// their paths there.
    fn arm64_binary(&mut self, program: &Path, at: &str) -> Result<(), String> {
        let sysroot = self
            .sysroot
            .clone()
            .ok_or("an arm64 program carried into an x86 rig")?;
        let bytes =
            fs::read(program).map_err(|e| format!("cannot read {}: {e}", program.display()))?;
        let needs = crate::elf::needs(&bytes).map_err(|e| format!("{}: {e}", program.display()))?;
        if needs.machine != crate::elf::EM_AARCH64 {
            return Err(format!(
                "{} is not an arm64 program (ELF machine {}): the arm64 rig runs arm64                  programs only (cross-build it with vivarium_e2e::cross)",
                program.display(),
                needs.machine
            ));
        }
        self.add(at, program, 0o755)?;
        for inside in crate::elf::library_closure(&sysroot, program)? {
            let host = crate::elf::resolve_in(&sysroot, &inside)
                .ok_or_else(|| format!("{inside} vanished from {}", sysroot.display()))?;
            self.add(&inside, &host, 0o755)?;
        }
        Ok(())
    }

    /// A file, or a folder recursively, at its host path.
    fn data(&mut self, path: &Path) -> Result<(), String> {
        if path.is_dir() {
            let entries =
                fs::read_dir(path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            for entry in entries.filter_map(|e| e.ok()) {
                self.data(&entry.path())?;
            }
            Ok(())
        } else {
            self.add(&path.to_string_lossy(), path, 0o644)
        }
    }

    fn add(&mut self, name: &str, source: &Path, mode: u32) -> Result<(), String> {
        let name = name.trim_start_matches('/').to_string();
        if !self.carried.insert(name.clone()) {
            return Ok(());
        }
        self.cpio
            .file_from(&name, mode, source)
            .map_err(|e| format!("cannot carry {} into the rig: {e}", source.display()))
    }
}

/// The libraries `ldd` lists for a program, and its dynamic loader; none for a static one.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd (install libc-bin): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Ok(Vec::new()); // "not a dynamic executable"
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(format!(
                "{} needs a library that is missing: {}",
                program.display(),
                line.trim()
            ));
        }
        let path = match line.split_once("=>") {
            Some((_, target)) => target.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// A program on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why the rig cannot run here, or `None` when it can: QEMU must be installed.
pub fn missing_prerequisite() -> Option<String> {
    Arch::X86_64.missing_prerequisite()
}

fn qemu_missing() -> String {
    emulator_missing(Arch::X86_64)
}

fn emulator_missing(arch: Arch) -> String {
    let package = match arch {
        Arch::X86_64 => "qemu-system-x86",
        Arch::Arm64 => "qemu-system-arm",
    };
    format!(
        "{} is not on PATH: install the Debian package {package}",
        arch.emulator()
    )
}

/// The host's TSC rate in kHz: the kernel's own figure when it exports it, else the first
/// CPU's clock from /proc/cpuinfo.
fn host_tsc_khz() -> Option<u64> {
    let exported = fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    exported.or_else(|| {
        let info = fs::read_to_string("/proc/cpuinfo").ok()?;
        let mhz: f64 = info
            .lines()
            .find(|l| l.starts_with("cpu MHz"))?
            .split_once(':')?
            .1
            .trim()
            .parse()
            .ok()?;
        Some((mhz * 1000.0) as u64).filter(|&khz| khz > 0)
    })
}

fn host_is_intel() -> bool {
    fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| info.contains("GenuineIntel"))
}

/// Lines of a stream as they come, each with the time since `started`.
fn spawn_line_reader(
    mut stream: impl Read + Send + 'static,
    started: Instant,
) -> mpsc::Receiver<Console> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(at) = find(&pending, ALIVE_TOKEN.as_bytes()) {
                pending.drain(at..at + ALIVE_TOKEN.len());
                if tx.send(Console::Alive).is_err() {
                    return;
                }
            }
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&raw)
                    .trim_end_matches(['\r', '\n'])
                    .replace('\r', "");
                let line = RigLine {
                    at: started.elapsed(),
                    text,
                };
                if tx.send(Console::Line(line)).is_err() {
                    return;
                }
            }
        }
        if !pending.is_empty() {
            let text = String::from_utf8_lossy(&pending).replace('\r', "");
            let _ = tx.send(Console::Line(RigLine {
                at: started.elapsed(),
                text,
            }));
        }
    });
    rx
}

/// What the outer console reader passes on.
enum Console {
    /// A line of output.
    Line(RigLine),
    /// The heartbeat ([`ALIVE_TOKEN`]).
    Alive,
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// All of a stream, read on a thread.
fn spawn_reader(mut stream: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits up to `grace` for QEMU to exit, then kills it.
fn finish(child: &mut Child, grace: Duration) {
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The guest fixtures for the rig test `test`, or `None` after saying loudly why the test is
/// skipped (no QEMU, no fixtures, or `extra`, another missing prerequisite of the test). With
/// `VIVARIUM_REQUIRE_RIG=1` (as `cargo xtask test` sets) a missing prerequisite fails the
/// test instead: CI must not count a rig test that could not run as passed ([`crate::gate`]).
#[track_caller]
pub fn fixtures_or_skip(test: &str, extra: Option<String>) -> Option<Fixtures> {
    let prerequisites = missing_prerequisite()
        .or(extra)
        .map(Err)
        .unwrap_or_else(Fixtures::locate);
    match prerequisites {
        Ok(fixtures) => Some(fixtures),
        Err(reason) => {
            crate::gate::skip(test, &format!("{reason} (cargo xtask test sets this up)"));
            None
        }
    }
}

/// The arm64 fixtures for the arm64 rig test `test`, or `None` after saying loudly why the
/// test is skipped (no `qemu-system-aarch64`, no arm64 fixtures, or `extra`); under
/// `VIVARIUM_REQUIRE_RIG=1` the test fails instead, as with [`fixtures_or_skip`].
#[track_caller]
pub fn arm64_fixtures_or_skip(test: &str, extra: Option<String>) -> Option<Arm64Fixtures> {
    let prerequisites = Arch::Arm64
        .missing_prerequisite()
        .or(extra)
        .map(Err)
        .unwrap_or_else(Arm64Fixtures::locate);
    match prerequisites {
        Ok(fixtures) => Some(fixtures),
        Err(reason) => {
            crate::gate::skip(test, &format!("{reason} (cargo xtask test sets this up)"));
            None
        }
    }
}

/// The `vivarium` binary and the `vivarium-vm` binary beside it, stripped into `scratch` so
/// the rig's initramfs stays small (without `strip` the unstripped copies work too, only
/// slower to carry); [`Rig::binary`] of the returned `vivarium` carries both.
pub fn small_vivarium(scratch: &Path) -> PathBuf {
    let copy = scratch.join("vivarium");
    fs::copy(crate::vivarium::binary(), &copy).expect("copy the vivarium binary");
    let _ = Command::new("strip").arg(&copy).status();
    let vm = scratch.join("vivarium-vm");
    fs::copy(crate::vivarium::vm_binary(), &vm).expect("copy the vivarium-vm binary");
    let _ = Command::new("strip").arg(&vm).status();
    copy
}

/// The arm64 `vivarium` and `vivarium-vm`, cross-built (`crate::cross`) and stripped into
/// `scratch`; [`Rig::binary`] of the returned `vivarium` carries both into the arm64 rig.
pub fn small_vivarium_arm64(scratch: &Path) -> Result<PathBuf, String> {
    let vivarium = crate::cross::small_arm64_binary("vivarium", "vivarium", scratch)?;
    crate::cross::small_arm64_binary("vivarium-vm", "vivarium-vm", scratch)?;
    Ok(vivarium)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console that delivers its bytes in the given pieces, one per read.
    struct Pieces(Vec<&'static [u8]>);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        }
    }

    #[test]
    fn the_heartbeat_is_taken_out_of_lines_wherever_it_lands() {
        let console = Pieces(vec![
            b"VIVARIUM-RES<VIVARIUM-RIG-ALIVE>ULT a=1\n",
            b"<VIVARIUM-RIG-AL",
            b"IVE>VIVARIUM-RESULT b=2\n<VIVARIUM-RIG-ALIVE>",
        ]);
        let rx = spawn_line_reader(console, Instant::now());
        let mut lines = Vec::new();
        let mut beats = 0;
        for item in rx {
            match item {
                Console::Alive => beats += 1,
                Console::Line(line) => lines.push(line.text),
            }
        }
        assert_eq!(beats, 3);
        assert_eq!(lines, ["VIVARIUM-RESULT a=1", "VIVARIUM-RESULT b=2"]);
    }

    fn run_of(lines: &[&str]) -> RigRun {
        let mut run = RigRun {
            lines: Vec::new(),
            kvm: None,
            exit_code: None,
            timed_out: false,
            frozen: false,
            elapsed: Duration::ZERO,
            initramfs_bytes: 0,
            qemu_stderr: String::new(),
        };
        for (i, text) in lines.iter().enumerate() {
            run.note(RigLine {
                at: Duration::from_secs(i as u64),
                text: text.to_string(),
            });
        }
        run
    }

    #[test]
    fn markers_and_results_are_parsed() {
        let run = run_of(&[
            "[    1.0] some kernel line",
            "VIVARIUM-RIG-READY kvm=yes",
            "VIVARIUM-RESULT cpus=2 mem_kib=123",
            "noise VIVARIUM-RESULT blk_sha256=abc",
            "VIVARIUM-RESULTS not=this",
            "VIVARIUM-RIG-EXIT 3",
        ]);
        assert_eq!(run.kvm, Some(true));
        assert_eq!(run.exit_code, Some(3));
        assert!(!run.succeeded());
        assert_eq!(run.result("cpus").as_deref(), Some("2"));
        assert_eq!(run.result("mem_kib").as_deref(), Some("123"));
        assert_eq!(run.result("blk_sha256").as_deref(), Some("abc"));
        assert_eq!(run.result("not"), None);
        assert_eq!(run.time_of("RIG-EXIT"), Some(Duration::from_secs(5)));
    }

    #[test]
    fn ldd_of_a_dynamic_program_includes_libc_and_the_loader() {
        let Some(sh) = find_program("sh") else { return };
        let libraries = shared_libraries(&sh).unwrap();
        if libraries.is_empty() {
            return; // a static shell
        }
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("libc.so"))
        );
        assert!(
            libraries
                .iter()
                .any(|l| l.to_string_lossy().contains("ld-linux"))
        );
    }
}

/// Decodes standard base64 (busybox `base64`). Hand-written: a dozen lines, and no base64
/// crate is in the workspace.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)?) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// `target/test-screenshots/` of the running test binary (created), where tests keep the
/// screenshots a person should look at.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its path");
    let dir = exe
        .ancestors()
        .nth(3)
        .expect("test binaries live in target/<profile>/deps")
        .join("test-screenshots");
    std::fs::create_dir_all(&dir).expect("a folder for screenshots");
    dir
}

#[cfg(test)]
mod carry_tests {
    use super::decode_base64;

    #[test]
    fn decoding_base64_matches_known_values() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a*==").is_none());
    }
}
