//! An installer ISO dropped on the window: inspect it and create the VM it asks for, off the
//! UI thread, as `vivarium create --iso` does.

use std::path::Path;

use vivarium_core::config::{BootSource, DiskFormat};
use vivarium_core::disk::Progress;
use vivarium_core::iso::{self, BootPlan, IsoInspection};
use vivarium_core::{Error, Library, NewDisk, NewVm};

use super::drop::file_name;
use super::jobs::Done;

/// Inspects the ISO at `path` and creates a VM for it: named after the OS (a free name if
/// taken), with the OS table's CPUs, memory and disk, booting the installer's kernel
/// directly, or the CD through the firmware the ISO asks for (BIOS, or UEFI for an ISO that
/// boots only through UEFI). An ISO that cannot be used creates nothing and gives an error
/// that says why.
pub fn create_from_iso(
    library: &Library,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Done, Error> {
    let inspection = iso::inspect(path)?;
    let mut spec = spec_for(library, &inspection);
    match &inspection.plan {
        BootPlan::DirectLinux { .. } => {}
        // The VM starts the ISO's own boot loader from its CD-ROM drive through the firmware
        // it asks for.
        BootPlan::NeedsFirmware { firmware, .. } => spec.firmware = *firmware,
        BootPlan::Refused { reason } => {
            return Err(Error::InvalidIso {
                path: path.to_path_buf(),
                why: reason.clone(),
            });
        }
    }
    let outcome = library.create_from_iso(&spec, &inspection, progress)?;
    Ok(Done::CreatedFromIso {
        name: outcome.config.name.clone(),
        recognised: recognised_text(&inspection, path, &outcome.config),
        warnings: outcome.warnings,
    })
}

/// The new VM: the recommended hardware for the OS, the recognised OS, a free name.
fn spec_for(library: &Library, inspection: &IsoInspection) -> NewVm {
    let name = crate::cli::free_name(library, &inspection.suggested_name());
    let recommended = inspection.recommended;
    // `create_from_iso` sets the boot source and the CD-ROM from the inspection.
    let mut spec = NewVm::with_defaults(name, BootSource::Cdrom);
    spec.cpus = recommended.cpus;
    spec.memory_mib = recommended.memory_mib;
    spec.os = inspection.os_info();
    spec.disk = if recommended.disk_bytes == 0 {
        NewDisk::None
    } else {
        NewDisk::Blank {
            size: recommended.disk_bytes,
            format: DiskFormat::Raw,
        }
    };
    spec
}

/// "Debian 12 (x86_64)".
fn describe_os(inspection: &IsoInspection) -> String {
    match inspection.os.arch {
        Some(arch) => format!("{} ({arch})", inspection.os.name),
        None => inspection.os.name.clone(),
    }
}

/// What the toast says about a VM made from an ISO.
fn recognised_text(
    inspection: &IsoInspection,
    path: &Path,
    config: &vivarium_core::config::VmConfig,
) -> String {
    let disk = config
        .disks
        .first()
        .map(|d| format!("a {} GiB disk", d.size >> 30))
        .unwrap_or_else(|| "no disk".into());
    format!(
        "Recognised {} on {}: created {} with {} CPUs, {} MiB memory and {disk}; it boots {}.",
        describe_os(inspection),
        file_name(path),
        config.name,
        config.cpus,
        config.memory_mib,
        inspection.plan.describe()
    )
}
