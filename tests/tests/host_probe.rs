//! The host probe as a user without access to `/dev/kvm` sees it: `vivarium host` says what
//! to do (join the kvm group), and starting a VM fails with the same advice instead of an
//! obscure error. The test runs the binary as the unprivileged user `nobody` (with
//! `setpriv`), so it needs root and a `/dev/kvm` that `nobody` may not open.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use serde_json::Value;
use vivarium_e2e::guest_disk::loud;

const NOBODY: &str = "65534";

fn as_nobody(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"])
        .arg(vivarium_e2e::vivarium::binary())
        .args(args)
        .env("VIVARIUM_HOME", home)
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .expect("setpriv runs")
}

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to run the binary as `nobody`".into());
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv (util-linux) is missing".into());
    }
    let kvm = std::fs::metadata("/dev/kvm").ok()?;
    if kvm.permissions().mode() & 0o006 != 0 {
        return Some("/dev/kvm is open to everyone here".into());
    }
    None
}

#[test]
fn a_user_without_access_to_dev_kvm_is_told_to_join_the_kvm_group() {
    let no_kvm = (!std::path::Path::new("/dev/kvm").exists()).then(|| "no /dev/kvm".to_string());
    if !vivarium_e2e::gate::kvm("host_probe", no_kvm) {
        return;
    }
    // Not a matter of the host's KVM: the test's own way of playing a user without access.
    if let Some(why) = cannot_run() {
        loud(&format!("SKIPPED: host_probe: {why}"));
        return;
    }
    let home = tempfile::tempdir().unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    let out = as_nobody(home.path(), &["--json", "host"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(host["can_run"], false, "{host}");
    let explain = host["explain"].as_str().unwrap_or_default();
    assert!(
        explain.contains("no permission to use /dev/kvm") && explain.contains("kvm group"),
        "{explain}"
    );

    // Starting a VM says the same, and leaves the VM stopped.
    let kernel = home.path().join("kernel.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let created = as_nobody(
        home.path(),
        &[
            "create",
            "vm",
            "--kernel",
            kernel.to_str().unwrap(),
            "--no-disk",
            "--network",
            "none",
            "--display",
            "none",
            "--memory",
            "32M",
            "--cpus",
            "1",
        ],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let started = as_nobody(home.path(), &["start", "vm"]);
    assert!(
        !started.status.success(),
        "a start without /dev/kvm access must fail"
    );
    let message = String::from_utf8_lossy(&started.stderr);
    assert!(
        message.contains("/dev/kvm") && message.contains("kvm group"),
        "the start failure should say what to do: {message}"
    );
    let listed = as_nobody(home.path(), &["--json", "list"]);
    let list: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_ne!(list[0]["state"], "running", "{list}");
}
