//! The hypervisor backend of this host.

use vivarium_core::backend::Backend;

/// The backend for the host this binary runs on, if there is one.
pub fn host_backend() -> Option<Box<dyn Backend>> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        Some(Box::new(vivarium_backend_kvm::KvmBackend::new()))
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        None
    }
}
