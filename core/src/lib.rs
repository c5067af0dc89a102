//! The core of Vivarium: the VM library on disk (bundles, `vm.toml`, disks, clones, imports)
//! and the types the app, the CLI and the backends share.
//!
//! Nothing here touches a hypervisor API; the backends do.

pub mod arch;
pub mod backend;
pub mod config;
#[cfg(unix)]
pub mod control;
pub mod disk;
#[cfg(unix)]
pub mod display;
pub mod error;
pub mod firmware;
pub mod fsutil;
pub mod input;
pub mod iso;
pub mod library;
pub mod logfile;
#[cfg(unix)]
pub mod passt;
pub mod text;

pub use arch::Arch;
pub use config::VmConfig;
pub use error::{Error, ErrorKind, Result};
pub use library::{CloneMode, Library, NewDisk, NewVm, VmEntry};
