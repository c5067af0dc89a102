//! Errors of the KVM backend: a KVM call that failed, as the hypervisor trait set's error.

/// Result of a KVM backend operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the KVM backend.
pub type Error = vivarium_hypervisor::Error;

/// The error of the KVM call doing `context`.
pub(crate) fn kvm_error(context: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::from_errno(context, e.errno())
}
