//! Errors of the VM library. Every message says what went wrong and what to do about it.

use std::path::PathBuf;

/// Result of a library operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the VM library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No VM has this name.
    #[error("there is no VM named `{0}` (see `vivarium list`)")]
    NotFound(String),

    /// The name is already taken.
    #[error("a VM named `{0}` already exists: choose another name")]
    AlreadyExists(String),

    /// The name cannot be used.
    #[error("`{name}` cannot be a VM name because {why}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        why: String,
    },

    /// A setting or argument is out of range or malformed.
    #[error("{0}")]
    InvalidInput(String),

    /// The VM is running (or another operation holds it).
    #[error("VM `{name}` is {what}: {todo}")]
    Busy {
        /// The VM.
        name: String,
        /// What holds it, e.g. "running".
        what: String,
        /// What the user can do.
        todo: String,
    },

    /// `vm.toml` cannot be read as a configuration.
    #[error("the configuration is damaged: {0}")]
    CorruptConfig(String),

    /// `vm.toml` was written by another version of Vivarium.
    #[error(
        "the configuration has format {found}, but this Vivarium understands format {supported}; \
         it was left untouched: use the Vivarium version that created it"
    )]
    UnsupportedFormat {
        /// The `format` found in the file.
        found: i64,
        /// The format this build understands.
        supported: u32,
    },

    /// The VM is a machine of another architecture than this computer runs (see
    /// [`crate::VmConfig::cannot_start_here`]): it is listed, cloned, renamed and deleted
    /// here, but cannot start.
    #[error("VM `{name}` cannot start here: {reason}")]
    OtherArch {
        /// The VM.
        name: String,
        /// Why, e.g. "this VM is an aarch64 machine; this computer runs x86_64 VMs".
        reason: String,
    },

    /// The VM's configuration is damaged, so the operation cannot be done on it.
    #[error("VM `{name}` cannot be used: {reason}")]
    Broken {
        /// The VM.
        name: String,
        /// Why its configuration cannot be loaded.
        reason: String,
    },

    /// A file given as a disk image cannot be used as one.
    #[error("`{path}` is not a usable disk image: {why}")]
    NotADiskImage {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },

    /// A file given as an installer ISO cannot be used as one.
    #[error("`{path}` cannot be used as an installer ISO: {why}")]
    InvalidIso {
        /// The file.
        path: PathBuf,
        /// Why, and what to do.
        why: String,
    },

    /// The operation was cancelled by the user; nothing was changed.
    #[error("cancelled; nothing was changed")]
    Cancelled,

    /// The hypervisor backend could not build or run the machine.
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),

    /// Talking to a running VM failed (it is not running, refused, or timed out).
    #[cfg(unix)]
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),

    /// An error another Vivarium process (a VM process) reported, with its category.
    #[error("{message}")]
    Reported {
        /// The category the other process gave.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },

    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the library was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A stable category, for exit codes and `--json` output.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidName { .. }
            | Error::InvalidInput(_)
            | Error::NotADiskImage { .. }
            | Error::InvalidIso { .. } => ErrorKind::InvalidInput,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::CorruptConfig(_) | Error::UnsupportedFormat { .. } | Error::Broken { .. } => {
                ErrorKind::Broken
            }
            Error::OtherArch { .. } => ErrorKind::OtherArch,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Io { .. } => ErrorKind::Io,
            Error::Reported { kind, .. } => *kind,
            #[cfg(unix)]
            Error::Control(e) => match e {
                crate::control::ControlError::NotRunning(_) => ErrorKind::NotRunning,
                crate::control::ControlError::Timeout(_) => ErrorKind::Timeout,
                crate::control::ControlError::Refused { .. } => ErrorKind::Busy,
                crate::control::ControlError::VersionMismatch { .. } => ErrorKind::Broken,
                crate::control::ControlError::Protocol { .. }
                | crate::control::ControlError::Io { .. } => ErrorKind::Io,
            },
            Error::Backend(e) => match e {
                crate::backend::BackendError::HostUnsupported(_) => ErrorKind::HostUnsupported,
                crate::backend::BackendError::InvalidMachine(_)
                | crate::backend::BackendError::Unsupported(_) => ErrorKind::InvalidInput,
                crate::backend::BackendError::Hypervisor { .. }
                | crate::backend::BackendError::Stopped => ErrorKind::Io,
            },
        }
    }
}

/// Stable categories of errors; the CLI maps each to its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such VM.
    NotFound,
    /// Name taken.
    AlreadyExists,
    /// Bad argument, name, setting or file.
    InvalidInput,
    /// The VM is running or locked by another operation.
    Busy,
    /// A damaged or foreign configuration.
    Broken,
    /// Cancelled by the user.
    Cancelled,
    /// The operating system refused a file operation.
    Io,
    /// This host cannot run VMs (no usable hypervisor).
    HostUnsupported,
    /// The VM is not running (for commands that need a running VM).
    NotRunning,
    /// The VM did not do what was asked in the time allowed (e.g. shut down).
    Timeout,
    /// The VM is a machine of another architecture than this computer runs.
    OtherArch,
}

impl ErrorKind {
    /// Every kind, for parsing [`ErrorKind::as_str`] back.
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::InvalidInput,
        ErrorKind::Busy,
        ErrorKind::Broken,
        ErrorKind::Cancelled,
        ErrorKind::Io,
        ErrorKind::HostUnsupported,
        ErrorKind::NotRunning,
        ErrorKind::Timeout,
        ErrorKind::OtherArch,
    ];

    /// The kind whose [`ErrorKind::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Short name used in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::AlreadyExists => "already-exists",
            ErrorKind::InvalidInput => "invalid-input",
            ErrorKind::Busy => "busy",
            ErrorKind::Broken => "broken",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Io => "io",
            ErrorKind::HostUnsupported => "host-unsupported",
            ErrorKind::NotRunning => "not-running",
            ErrorKind::Timeout => "timeout",
            ErrorKind::OtherArch => "other-arch",
        }
    }
}
