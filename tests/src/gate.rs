//! The one rule for tests that cannot run on every machine: a usable `/dev/kvm` (the
//! hand-made guests and the VM processes that run them), the nested rig and its fixtures, the
//! installer ISO, the BIOS disk, firmware files, `passt`, a real X server.
//!
//! When a prerequisite is missing the test is skipped, and says so loudly past the harness's
//! output capture (`SKIPPED: <test>: <reason>`; libtest cannot mark a test skipped at run
//! time), unless the run must not skip: with `VIVARIUM_REQUIRE_RIG=1`, which `cargo xtask
//! test` sets after installing everything the suite needs, the test fails instead, so that CI
//! never counts a test that could not run as passed. (`VIVARIUM_REQUIRE_KVM=1`, the older name
//! the KVM tests honoured, means the same.)

use crate::guest_disk::loud;
use crate::vivarium::TempLibrary;

/// The variable `cargo xtask test` sets: a missing prerequisite fails the test.
pub const REQUIRE_ENV: &str = "VIVARIUM_REQUIRE_RIG";

/// The older name of [`REQUIRE_ENV`], once honoured by the KVM tests only.
const REQUIRE_KVM_ENV: &str = "VIVARIUM_REQUIRE_KVM";

/// Whether this run must not skip a test (see the module's documentation).
pub fn required() -> bool {
    [REQUIRE_ENV, REQUIRE_KVM_ENV]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| v == "1"))
}

/// Test `test` cannot run here for `reason`: fails it when the run is [`required`], else says
/// loudly that it is skipped. The caller returns from the test afterwards.
#[track_caller]
pub fn skip(test: &str, reason: &str) {
    if required() {
        panic!("{test} cannot run here, and {REQUIRE_ENV}=1 says every test must run: {reason}");
    }
    loud(&format!("SKIPPED: {test}: {reason}"));
}

/// Whether test `test` may go on: `true` when `missing` is `None`, otherwise the test is
/// [`skip`]ped (or failed, when the run is [`required`]) for that reason and this is `false`.
#[track_caller]
pub fn runs(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(reason) => {
            skip(test, &reason);
            false
        }
    }
}

/// The gate of every test that needs a usable `/dev/kvm`, given what the host probe said:
/// `unusable` is why the host cannot run VMs, `None` when it can. See [`runs`].
#[track_caller]
pub fn kvm(test: &str, unusable: Option<String>) -> bool {
    runs(
        test,
        unusable.map(|why| format!("this host cannot run VMs: {why}")),
    )
}

/// Whether this host's `/dev/kvm` runs guests, as `vivarium --json host` says: the gate of
/// the tests that run VM processes ([`kvm`]).
#[track_caller]
pub fn kvm_usable(test: &str) -> bool {
    let library = TempLibrary::new();
    let host = library.json(&["host"]);
    let unusable = (host["can_run"].as_bool() != Some(true)).then(|| {
        host["explain"]
            .as_str()
            .unwrap_or("no hypervisor")
            .to_string()
    });
    kvm(test, unusable)
}

/// Why `program` cannot be used (it is not on `PATH`), with the Debian package to install.
pub fn program_missing(program: &str, package: &str) -> Option<String> {
    crate::rig::find_program(program).is_none().then(|| {
        format!(
            "`{program}` is not installed (Debian package {package}; cargo xtask test installs it)"
        )
    })
}

/// Why the file at `path` (firmware, say) cannot be used (it is missing), with the Debian
/// package that has it.
pub fn file_missing(path: impl AsRef<std::path::Path>, package: &str) -> Option<String> {
    let path = path.as_ref();
    (!path.is_file()).then(|| {
        format!(
            "{} is missing (Debian package {package}; cargo xtask test installs it)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package_and_a_present_one_is_fine() {
        let missing = program_missing("vivarium-no-such-program", "nothing").unwrap();
        assert!(missing.contains("vivarium-no-such-program"), "{missing}");
        assert!(missing.contains("Debian package nothing"), "{missing}");
        assert_eq!(program_missing("sh", "dash"), None);
        let gone = file_missing("/nonexistent/bios.bin", "seabios").unwrap();
        assert!(gone.contains("/nonexistent/bios.bin is missing"), "{gone}");
        assert!(gone.contains("Debian package seabios"), "{gone}");
        assert_eq!(file_missing("/proc/self/status", "procps"), None);
    }

    #[test]
    fn nothing_missing_runs_without_a_word() {
        assert!(runs("gate::tests", None));
        assert!(kvm("gate::tests", None));
    }
}
