//! What the VM process gives up before it builds a machine: the right to gain privileges
//! (`no_new_privs`: nothing it runs, passt included, can gain any through a set-user-ID
//! program or file capabilities) and core dumps (a VM process's memory is the guest's memory:
//! the user's private data, which a crash must not write to disk or hand to a crash
//! collector). `VIVARIUM_VM_CORE_DUMPS=1` keeps core dumps, for debugging the VMM.

/// The environment variable that keeps core dumps on.
pub const CORE_DUMPS_VARIABLE: &str = "VIVARIUM_VM_CORE_DUMPS";

/// Applies both; what could not be applied is returned as warnings for `vm.log` (the VM
/// still runs: neither protects the host from the guest on its own).
pub fn harden_process() -> Vec<String> {
    let mut warnings = Vec::new();
    // (macOS has no no_new_privs; its VM process gets the rest.)
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments changes only this
    // process's credentials flags.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        warnings.push(format!(
            "could not set no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    if std::env::var_os(CORE_DUMPS_VARIABLE).is_some_and(|v| v == "1") {
        return warnings;
    }
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass; lowering a limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        warnings.push(format!(
            "could not turn core dumps off: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Not dumpable: no core through a pipe handler either, and other processes of the user
    // cannot ptrace it or read its memory through /proc (the kernel's own protection for
    // processes holding secrets).
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_DUMPABLE and constant arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        warnings.push(format!(
            "could not make the process undumpable: {}",
            std::io::Error::last_os_error()
        ));
    }
    warnings
}
