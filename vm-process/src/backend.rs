//! The hypervisor backend of this host, under the VMM.

use vivarium_core::backend::Backend;

/// The backend for the host this binary runs on, if there is one: the VMM on this host's
/// hypervisor.
pub fn host_backend() -> Option<Box<dyn Backend>> {
    #[cfg(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    ))]
    {
        Some(Box::new(vivarium_vmm::Vmm::new(
            vivarium_backend_kvm::Kvm::new(),
        )))
    }
    #[cfg(not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )))]
    {
        None
    }
}
