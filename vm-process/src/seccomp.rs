//! The system calls each thread of the VM process may make (seccomp, through `seccompiler`).
//!
//! Every thread of a running VM says what kind it is as it starts
//! (`vivarium_threads::started`), before it does any work — a vCPU thread before the guest
//! runs its first instruction. [`enable`] makes that install the kind's filter: the calls the
//! kind needs and nothing else. A call outside the filter raises SIGSYS; the handler notes the
//! call and the thread's kind, writes them to standard error (`vm.log` once the process has
//! detached) and parks the thread. The watcher started by [`watch_blocked_calls`] sees it
//! within a few milliseconds and ends the VM as failed, naming the call (the VM process's
//! session records that like any failure: `vivarium status`, the app and `last-run.toml`).
//! The process never hangs on a blocked call and never goes on past one.
//!
//! Filters stack: a thread started by a filtered thread keeps its parent's filter and adds
//! its own. So the machine thread, which starts the vCPU and device threads (again at each
//! reset), allows what they need as well; the main thread installs its own filter only after
//! it has started every thread it starts.
//!
//! The lists were made from `strace -f` of VM processes running the hand-made guests and
//! real Debian guests (disk, network, display, input, CD-ROM, linked clones, reboots), with
//! what the paths that those runs do not reach need (log rotation, errors), and are checked
//! by the same guests in CI with the filters on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vivarium_threads::ThreadKind;

/// A system call a thread made that its filter does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedCall {
    /// The kind of the thread.
    pub kind: ThreadKind,
    /// The call's number on this architecture.
    pub number: i32,
}

impl BlockedCall {
    /// The call's name (`openat`), or `#N` for a number this table does not know.
    pub fn name(&self) -> String {
        call_name(self.number)
            .map(str::to_string)
            .unwrap_or_else(|| format!("#{}", self.number))
    }
}

impl std::fmt::Display for BlockedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a {} thread of the VM process made the system call `{}` ({}), which its seccomp \
             filter does not allow",
            self.kind.name(),
            self.name(),
            self.number
        )
    }
}

/// Why the filters could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be built.
    #[error("could not build the {kind} thread's seccomp filter: {why}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// What failed.
        why: String,
    },
    /// The kernel refused a filter or the SIGSYS handler.
    #[error("could not install the {kind} thread's seccomp filter: {why}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// What failed.
        why: String,
    },
    /// Not on this platform.
    #[error("seccomp filters are Linux's; this platform runs the VM process without them")]
    Unsupported,
}

/// The first blocked call: 0 when none, else `1 << 40 | kind << 32 | number`.
static BLOCKED: AtomicU64 = AtomicU64::new(0);

#[cfg(target_os = "linux")]
fn kind_index(kind: ThreadKind) -> u64 {
    ThreadKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u64
}

/// The call blocked first in this process, if any.
pub fn blocked_call() -> Option<BlockedCall> {
    let word = BLOCKED.load(Ordering::SeqCst);
    (word != 0).then(|| BlockedCall {
        kind: ThreadKind::ALL[((word >> 32) & 0xff) as usize % ThreadKind::ALL.len()],
        number: word as u32 as i32,
    })
}

/// Starts a thread (itself filtered as [`ThreadKind::Main`]) that calls `on_blocked` with
/// the blocked call as soon as a thread makes a call outside its filter. `on_blocked` is
/// expected to end the process.
pub fn watch_blocked_calls(on_blocked: impl Fn(BlockedCall) + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name("seccomp-watch".into())
        .spawn(move || {
            vivarium_threads::started(ThreadKind::Main);
            loop {
                if let Some(call) = blocked_call() {
                    on_blocked(call);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
}

/// The name of call `number` on this architecture.
#[cfg(target_os = "linux")]
pub fn call_name(number: i32) -> Option<&'static str> {
    usize::try_from(number)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|s| s.name())
}

/// The name of call `number` (no table on this platform).
#[cfg(not(target_os = "linux"))]
pub fn call_name(_number: i32) -> Option<&'static str> {
    None
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    use std::cell::Cell;
    use std::collections::{BTreeMap, HashMap};
    use std::sync::OnceLock;
    use syscalls::Sysno;

    thread_local! {
        /// The kind of this thread's filter (`u8::MAX` for none), read by the SIGSYS handler.
        static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
    }

    static PROGRAMS: OnceLock<HashMap<ThreadKind, BpfProgram>> = OnceLock::new();

    /// The type byte of KVM's ioctls (`KVMIO`).
    const KVM_IOCTL_TYPE: u8 = 0xae;

    /// What every thread does: memory, locks, time, signals, its own end, closing and writing
    /// to descriptors it has (log lines), metadata of open files, randomness for hash maps.
    const COMMON: &[Sysno] = &[
        Sysno::brk,
        Sysno::mmap,
        Sysno::munmap,
        Sysno::mremap,
        Sysno::mprotect,
        Sysno::madvise,
        Sysno::futex,
        Sysno::set_robust_list,
        Sysno::rseq,
        Sysno::sched_yield,
        Sysno::sched_getaffinity,
        Sysno::clock_gettime,
        Sysno::clock_nanosleep,
        Sysno::nanosleep,
        Sysno::restart_syscall,
        Sysno::rt_sigprocmask,
        Sysno::rt_sigreturn,
        Sysno::rt_sigaction,
        Sysno::sigaltstack,
        Sysno::tgkill,
        Sysno::gettid,
        Sysno::getpid,
        Sysno::getrandom,
        Sysno::exit,
        Sysno::exit_group,
        Sysno::close,
        Sysno::write,
        Sysno::writev,
        Sysno::fcntl,
        Sysno::lseek,
        Sysno::fstat,
        #[cfg(target_arch = "x86_64")]
        Sysno::newfstatat,
        #[cfg(target_arch = "aarch64")]
        Sysno::fstatat,
        Sysno::statx,
    ];

    /// Rotating a log (any thread may write a line to `vm.log` or the guest's serial log):
    /// create the next file and rename or remove the old one, in the bundle.
    const LOG_ROTATION: &[Sysno] = &[
        Sysno::openat,
        Sysno::renameat,
        Sysno::renameat2,
        Sysno::unlinkat,
        Sysno::fsync,
        Sysno::fdatasync,
        #[cfg(target_arch = "x86_64")]
        Sysno::rename,
        #[cfg(target_arch = "x86_64")]
        Sysno::unlink,
    ];

    /// A vCPU: the hypervisor's ioctls, device emulation (disk reads and writes, flushes and
    /// discards, frames to passt, serial output to attached consoles), waking other threads,
    /// and starting the device workers that a guest's register write starts (the network
    /// card's receiver when the driver is ready, the RTC's alarm timer, the display refresh),
    /// which inherit this filter: so a device worker's filter is the same list.
    const VCPU: &[Sysno] = &[
        Sysno::ioctl,
        Sysno::clone,
        Sysno::clone3,
        Sysno::recvmsg,
        Sysno::shutdown,
        Sysno::read,
        Sysno::readv,
        Sysno::pread64,
        Sysno::pwrite64,
        Sysno::preadv,
        Sysno::pwritev,
        Sysno::preadv2,
        Sysno::pwritev2,
        Sysno::fallocate,
        Sysno::ftruncate,
        Sysno::fstatfs,
        Sysno::sendto,
        Sysno::sendmsg,
        Sysno::recvfrom,
        Sysno::ppoll,
        #[cfg(target_arch = "x86_64")]
        Sysno::poll,
    ];

    /// The control server: connections, requests (which reach devices: input raises guest
    /// interrupts through the hypervisor), threads per client.
    const CONTROL: &[Sysno] = &[
        Sysno::accept4,
        Sysno::recvmsg,
        Sysno::recvfrom,
        Sysno::sendmsg,
        Sysno::sendto,
        Sysno::read,
        Sysno::shutdown,
        Sysno::setsockopt,
        Sysno::getsockopt,
        Sysno::ioctl,
        Sysno::ppoll,
        #[cfg(target_arch = "x86_64")]
        Sysno::poll,
        Sysno::clone,
        Sysno::clone3,
        Sysno::pread64,
        Sysno::pwrite64,
        Sysno::dup,
    ];

    /// The machine thread: builds the machine again at each reset (opens the hypervisor,
    /// disks, firmware; maps memory; connects to passt) and starts the vCPU and device
    /// threads, which inherit this filter: so it also allows everything they do.
    const MACHINE: &[Sysno] = &[
        // Opening disk images again at a reset (the qcow2 reader asks the file system about
        // alignment), and what the first build on the main thread was seen doing.
        Sysno::fstatfs,
        Sysno::statfs,
        Sysno::fadvise64,
        Sysno::getuid,
        Sysno::geteuid,
        Sysno::getgid,
        Sysno::getegid,
        Sysno::uname,
        Sysno::sysinfo,
        Sysno::getcwd,
        Sysno::prlimit64,
        Sysno::connect,
        Sysno::setsockopt,
        Sysno::getsockopt,
        Sysno::shutdown,
        Sysno::eventfd2,
        Sysno::clone,
        Sysno::clone3,
        Sysno::flock,
        Sysno::getdents64,
        Sysno::readlinkat,
        Sysno::faccessat,
        Sysno::faccessat2,
        Sysno::memfd_create,
        Sysno::dup,
        Sysno::dup3,
        Sysno::mlock,
        Sysno::munlock,
        Sysno::msync,
        Sysno::mincore,
        Sysno::sched_setaffinity,
        Sysno::set_tid_address,
        #[cfg(target_arch = "x86_64")]
        Sysno::open,
        #[cfg(target_arch = "x86_64")]
        Sysno::access,
        #[cfg(target_arch = "x86_64")]
        Sysno::readlink,
        #[cfg(target_arch = "x86_64")]
        Sysno::stat,
        #[cfg(target_arch = "x86_64")]
        Sysno::dup2,
    ];

    /// The main thread and the watchers: wait for the machine, then record how the run ended
    /// (atomic writes in the bundle), remove the runtime files, stop passt, and wake the control
    /// server's acceptor to end it (by connecting to its socket).
    const MAIN: &[Sysno] = &[
        Sysno::read,
        Sysno::connect,
        Sysno::ppoll,
        #[cfg(target_arch = "x86_64")]
        Sysno::poll,
        Sysno::ftruncate,
        Sysno::mkdirat,
        Sysno::getdents64,
        Sysno::fchmod,
        Sysno::fchmodat,
        Sysno::flock,
        Sysno::kill,
        Sysno::wait4,
        Sysno::waitid,
        Sysno::dup3,
        Sysno::shutdown,
        Sysno::pread64,
        Sysno::pwrite64,
        #[cfg(target_arch = "x86_64")]
        Sysno::mkdir,
        #[cfg(target_arch = "x86_64")]
        Sysno::chmod,
        #[cfg(target_arch = "x86_64")]
        Sysno::dup2,
    ];

    /// The calls a thread of `kind` may make.
    pub fn allowed(kind: ThreadKind) -> Vec<Sysno> {
        let mut calls: Vec<Sysno> = COMMON.iter().chain(LOG_ROTATION).copied().collect();
        match kind {
            ThreadKind::Vcpu | ThreadKind::Device => calls.extend(VCPU),
            ThreadKind::Control => calls.extend(CONTROL),
            ThreadKind::Machine => calls.extend(VCPU.iter().chain(CONTROL).chain(MACHINE)),
            ThreadKind::Main => calls.extend(MAIN),
        }
        calls.sort_by_key(|s| s.id());
        calls.dedup();
        calls
    }

    pub(super) fn program(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
        let build = |why: String| SeccompError::Build {
            kind: kind.name(),
            why,
        };
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed(kind)
            .into_iter()
            .map(|call| (i64::from(call.id()), Vec::new()))
            .collect();
        // The threads that face the guest make the hypervisor's ioctls only (KVM's all have
        // the type byte 0xAE): no terminal, block-device or file-system ioctl. The machine
        // thread, which opens disks again at a reset, keeps them all.
        if matches!(
            kind,
            ThreadKind::Vcpu | ThreadKind::Device | ThreadKind::Control
        ) {
            let kvm_only = SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(0xff00),
                u64::from(KVM_IOCTL_TYPE) << 8,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| build(e.to_string()))?;
            rules.insert(i64::from(Sysno::ioctl.id()), vec![kvm_only]);
        }
        // Two calls only with some arguments. prctl: naming a thread and `no_new_privs` (what
        // starting a thread and installing a filter do), never turning core dumps back on.
        // seccomp: adding a filter (a thread of a filtered parent installs its own), which can
        // only restrict.
        let first_argument_is = |values: &[u64]| -> Result<Vec<SeccompRule>, SeccompError> {
            values
                .iter()
                .map(|value| {
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *value)
                        .and_then(|c| SeccompRule::new(vec![c]))
                        .map_err(|e| build(e.to_string()))
                })
                .collect()
        };
        rules.insert(
            i64::from(Sysno::prctl.id()),
            first_argument_is(&[
                libc::PR_SET_NAME as u64,
                libc::PR_GET_NAME as u64,
                libc::PR_SET_NO_NEW_PRIVS as u64,
            ])?,
        );
        // Unix sockets only (passt's frame stream; the main thread waking the acceptor): no
        // thread of the VM process opens a network socket of its own.
        if matches!(kind, ThreadKind::Machine | ThreadKind::Main) {
            rules.insert(
                i64::from(Sysno::socket.id()),
                first_argument_is(&[libc::AF_UNIX as u64])?,
            );
        }
        rules.insert(
            i64::from(Sysno::seccomp.id()),
            first_argument_is(&[u64::from(libc::SECCOMP_SET_MODE_FILTER)])?,
        );
        let arch =
            TargetArch::try_from(std::env::consts::ARCH).map_err(|e| build(e.to_string()))?;
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
            .map_err(|e| build(e.to_string()))?;
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| build(e.to_string()))
    }

    /// Builds every filter and installs the SIGSYS handler.
    pub fn prepare() -> Result<(), SeccompError> {
        let mut programs = HashMap::new();
        for kind in ThreadKind::ALL {
            programs.insert(kind, program(kind)?);
        }
        let _ = PROGRAMS.set(programs);
        // SAFETY: a zeroed sigaction is a valid starting value; the handler has the
        // SA_SIGINFO signature and only does async-signal-safe things (atomics, a thread-local
        // read, write(2), nanosleep(2)).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                return Err(SeccompError::Install {
                    kind: "any",
                    why: format!("SIGSYS handler: {}", std::io::Error::last_os_error()),
                });
            }
        }
        Ok(())
    }

    /// Installs the filter of `kind` on this thread.
    pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
        let program =
            PROGRAMS
                .get()
                .and_then(|p| p.get(&kind))
                .ok_or_else(|| SeccompError::Install {
                    kind: kind.name(),
                    why: "the filters were not prepared".into(),
                })?;
        KIND.with(|k| k.set(kind_index(kind) as u8));
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Install {
            kind: kind.name(),
            why: e.to_string(),
        })
    }

    /// `siginfo_t`'s SIGSYS fields (`_sigsys` in the kernel's union), on the 64-bit
    /// architectures Vivarium runs on: three ints and padding, then the union.
    #[repr(C)]
    struct SigsysInfo {
        signo: i32,
        errno: i32,
        code: i32,
        _pad: i32,
        call_addr: usize,
        syscall: i32,
        arch: u32,
    }

    extern "C" fn on_sigsys(_signal: i32, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SIGSYS raised by seccomp, whose layout
        // on x86_64 and aarch64 begins as `SigsysInfo`.
        let number = unsafe { (*(info as *const SigsysInfo)).syscall };
        let kind = KIND.with(|k| k.get());
        let kind = if usize::from(kind) < ThreadKind::ALL.len() {
            kind
        } else {
            0
        };
        let word = 1 << 40 | u64::from(kind) << 32 | u64::from(number as u32);
        if BLOCKED
            .compare_exchange(0, word, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let name = call_name(number).unwrap_or("?");
            let kind_name = ThreadKind::ALL[usize::from(kind)].name();
            for part in [
                "\nvivarium-vm: a ".as_bytes(),
                kind_name.as_bytes(),
                b" thread made the system call `",
                name.as_bytes(),
                b"`, which its seccomp filter does not allow: the VM ends as failed\n",
            ] {
                // SAFETY: write(2) of a valid buffer to standard error is async-signal-safe.
                unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
            }
        }
        // This thread goes no further; the watcher ends the process.
        loop {
            let second = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: nanosleep with a valid timespec; async-signal-safe.
            unsafe { libc::nanosleep(&second, std::ptr::null_mut()) };
        }
    }
}

/// Builds the filters, installs the SIGSYS handler and makes every VM-process thread that
/// starts from now on install its kind's filter (`vivarium_threads::started`). A thread
/// whose filter cannot be installed runs without it, with a warning in `vm.log`.
#[cfg(target_os = "linux")]
pub fn enable() -> Result<(), SeccompError> {
    linux::prepare()?;
    vivarium_threads::set_start_hook(|kind| {
        if let Err(e) = linux::install(kind) {
            tracing::warn!("{e}");
        }
    });
    Ok(())
}

/// Seccomp is Linux's.
#[cfg(not(target_os = "linux"))]
pub fn enable() -> Result<(), SeccompError> {
    Err(SeccompError::Unsupported)
}

/// Installs `kind`'s filter on the calling thread (the main thread, once it has started
/// every thread it starts). [`enable`] must have run.
#[cfg(target_os = "linux")]
pub fn install_on_this_thread(kind: ThreadKind) -> Result<(), SeccompError> {
    linux::install(kind)
}

/// Seccomp is Linux's.
#[cfg(not(target_os = "linux"))]
pub fn install_on_this_thread(_kind: ThreadKind) -> Result<(), SeccompError> {
    Err(SeccompError::Unsupported)
}

/// The calls a thread of `kind` may make, by name (for tests and documentation).
#[cfg(target_os = "linux")]
pub fn allowed_calls(kind: ThreadKind) -> Vec<&'static str> {
    linux::allowed(kind).into_iter().map(|s| s.name()).collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn every_filter_builds_and_the_spawners_allow_what_their_threads_need() {
        for kind in ThreadKind::ALL {
            assert!(!allowed_calls(kind).is_empty());
        }
        // Threads inherit the filter of the thread that started them.
        let machine = allowed_calls(ThreadKind::Machine);
        for child in [ThreadKind::Vcpu, ThreadKind::Device] {
            for call in allowed_calls(child) {
                assert!(machine.contains(&call), "{call} of {child:?}");
            }
        }
        assert!(!allowed_calls(ThreadKind::Vcpu).contains(&"connect"));
        for kind in ThreadKind::ALL {
            // `socket` only ever with a condition (AF_UNIX), never by name alone.
            assert!(!allowed_calls(kind).contains(&"socket"), "{kind:?}");
            assert!(!allowed_calls(kind).contains(&"execve"), "{kind:?}");
            assert!(!allowed_calls(kind).contains(&"ptrace"), "{kind:?}");
        }
    }

    #[test]
    fn every_kind_compiles_to_a_bpf_program() {
        for kind in ThreadKind::ALL {
            let program = linux::program(kind).unwrap();
            assert!(
                program.len() > 50,
                "{kind:?}: {} instructions",
                program.len()
            );
        }
    }

    /// A vCPU thread may make KVM's ioctls and no other: a terminal ioctl is blocked, the
    /// thread parked, and the call recorded for the watcher. (The only test in this binary
    /// that installs a filter: the first blocked call is kept process-wide.)
    #[test]
    fn a_terminal_ioctl_on_a_vcpu_thread_is_blocked_and_named() {
        linux::prepare().unwrap();
        let _parked = std::thread::spawn(|| {
            linux::install(ThreadKind::Vcpu).unwrap();
            // KVM's own type byte passes the filter (and fails: fd 0 is no KVM device).
            // SAFETY: ioctl on descriptor 0 with a request that only reads the argument.
            let kvm = unsafe { libc::ioctl(0, 0xae00 as _, 0) };
            assert_eq!(kvm, -1);
            let mut size = [0u16; 4];
            // SAFETY: TIOCGWINSZ writes a `winsize` (four u16s) into `size`.
            unsafe { libc::ioctl(0, libc::TIOCGWINSZ, size.as_mut_ptr()) };
            unreachable!("the filter let a terminal ioctl through");
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let call = loop {
            if let Some(call) = blocked_call() {
                break call;
            }
            assert!(std::time::Instant::now() < deadline, "nothing was blocked");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(call.kind, ThreadKind::Vcpu);
        assert_eq!(call.name(), "ioctl");
    }

    #[test]
    fn blocked_calls_are_named() {
        let call = BlockedCall {
            kind: ThreadKind::Vcpu,
            number: libc::SYS_socket as i32,
        };
        assert_eq!(call.name(), "socket");
        assert!(call.to_string().contains("vcpu thread"), "{call}");
        let unknown = BlockedCall {
            kind: ThreadKind::Main,
            number: 100_000,
        };
        assert_eq!(unknown.name(), "#100000");
    }
}
