//! The kinds of thread a VM process runs, and the hook each calls as it starts.
//!
//! The threads of a running VM are started by different crates (the backend starts the
//! machine, vCPU and display threads, the devices their workers, the control server its
//! connections). Each calls [`started`] with its [`ThreadKind`] first thing. The VM process
//! sets the hook ([`set_start_hook`]) to install that kind's seccomp filter, so that each
//! thread can make only the system calls its kind needs; without a hook (tests, tools),
//! [`started`] does nothing. This crate names no hypervisor and no policy: it only carries
//! the call from where a thread starts to the process that decides.

use std::sync::OnceLock;

/// What a thread of a VM process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// Builds the machine (again at each reset), starts its vCPU and device threads and waits
    /// for them.
    Machine,
    /// Runs one vCPU: enters the guest and emulates the devices it touches.
    Vcpu,
    /// A device's own worker: receiving network frames, a timer, the display refresh.
    Device,
    /// The control server: accepting connections and serving them.
    Control,
    /// The process's main thread once the machine runs, and its signal watcher: waits, then
    /// records how the run ended.
    Main,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 5] = [
        ThreadKind::Machine,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Control,
        ThreadKind::Main,
    ];

    /// A short name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Machine => "machine",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Control => "control",
            ThreadKind::Main => "main",
        }
    }
}

static HOOK: OnceLock<fn(ThreadKind)> = OnceLock::new();

/// Sets what [`started`] calls; once per process (a second hook is refused: `false`).
pub fn set_start_hook(hook: fn(ThreadKind)) -> bool {
    HOOK.set(hook).is_ok()
}

/// Called by a thread of kind `kind` as it starts, before it does its work.
pub fn started(kind: ThreadKind) {
    if let Some(hook) = HOOK.get() {
        hook(kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count(kind: ThreadKind) {
        assert_eq!(kind, ThreadKind::Device);
        CALLS.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn the_hook_is_called_once_set_and_only_one_can_be_set() {
        started(ThreadKind::Device);
        assert!(set_start_hook(count));
        assert!(!set_start_hook(count));
        std::thread::spawn(|| started(ThreadKind::Device))
            .join()
            .unwrap();
        assert_eq!(CALLS.load(Ordering::SeqCst), 1);
        let names: Vec<_> = ThreadKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["machine", "vcpu", "device", "control", "main"]);
    }
}
