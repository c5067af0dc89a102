//! Errors of the VMM.

use std::path::PathBuf;

/// Result of a VMM operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong building or running a machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The hypervisor refused or failed a request.
    #[error(transparent)]
    Hypervisor(#[from] vivarium_hypervisor::Error),
    /// The kernel image cannot be used.
    #[error("the kernel `{path}` cannot be booted: {why}")]
    Kernel {
        /// The kernel file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The initrd cannot be used.
    #[error("the initrd `{path}` cannot be used: {why}")]
    Initrd {
        /// The initrd file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A firmware file cannot be used.
    #[error("the firmware `{path}` cannot be used: {why}")]
    Firmware {
        /// The firmware file.
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },
    /// The machine description cannot be built (too much memory, bad command line, ...).
    #[error("{0}")]
    InvalidMachine(String),
    /// Setting up the machine failed.
    #[error("machine setup failed: {0}")]
    Setup(String),
    /// A disk cannot be opened.
    #[error("the disk `{path}` cannot be opened: {source}")]
    Disk {
        /// The image file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<Error> for vivarium_core::backend::BackendError {
    fn from(e: Error) -> Self {
        use vivarium_core::backend::BackendError;
        match e {
            Error::Hypervisor(vivarium_hypervisor::Error::Hypervisor { context, source }) => {
                BackendError::Hypervisor {
                    context: context.to_string(),
                    source,
                }
            }
            Error::Hypervisor(e) => BackendError::InvalidMachine(e.to_string()),
            Error::Kernel { .. }
            | Error::Initrd { .. }
            | Error::Firmware { .. }
            | Error::InvalidMachine(_) => BackendError::InvalidMachine(e.to_string()),
            Error::Disk { .. } => BackendError::InvalidMachine(e.to_string()),
            Error::Setup(_) => BackendError::InvalidMachine(e.to_string()),
        }
    }
}
