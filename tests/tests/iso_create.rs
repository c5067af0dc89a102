//! `vivarium create --iso` and `vivarium inspect-iso` on an ISO laid out like Debian's netinst,
//! holding the guest fixtures' real kernel and initramfs.
//!
//! Needs `xorriso` (Debian package; `cargo xtask test` installs it) and the guest fixtures
//! (`cargo xtask fixtures`). Without them the test says so loudly and passes, unless
//! `VIVARIUM_REQUIRE_RIG=1`, where it fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use vivarium_e2e::fixtures::Fixtures;
use vivarium_e2e::gate;
use vivarium_e2e::vivarium::TempLibrary;

const INVALID: i32 = 5;

fn prerequisites() -> Result<Fixtures, String> {
    if let Some(reason) = gate::program_missing("xorriso", "xorriso") {
        return Err(reason);
    }
    Fixtures::locate()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs (coreutils)");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Builds `debian.iso` in `dir` the way Debian's netinst is laid out: `.disk/info`,
/// `install.amd/` with the kernel and initrd, isolinux's `menu.cfg` including `txt.cfg`.
fn debian_like_iso(dir: &Path, fixtures: &Fixtures) -> PathBuf {
    let tree = dir.join("tree");
    let write = |path: &str, data: &[u8]| {
        let target = tree.join(path);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(target, data).unwrap();
    };
    write(
        ".disk/info",
        b"Debian GNU/Linux 12.5.0 \"Bookworm\" - Official amd64 NETINST with firmware 20240210-11:27",
    );
    write(
        "install.amd/vmlinuz",
        &fs::read(fixtures.vmlinuz()).unwrap(),
    );
    write(
        "install.amd/initrd.gz",
        &fs::read(fixtures.guest_initramfs()).unwrap(),
    );
    write(
        "isolinux/isolinux.cfg",
        b"path \ninclude menu.cfg\ndefault vesamenu.c32\nprompt 0\ntimeout 0\n",
    );
    write(
        "isolinux/menu.cfg",
        b"menu title Debian GNU/Linux installer menu (BIOS mode)\ninclude stdmenu.cfg\ninclude txt.cfg\n",
    );
    write("isolinux/stdmenu.cfg", b"menu background splash.png\n");
    write(
        "isolinux/txt.cfg",
        b"default install\nlabel install\n\tmenu label ^Install\n\tkernel /install.amd/vmlinuz\n\
          \tappend vga=788 initrd=/install.amd/initrd.gz --- quiet \n",
    );
    // The boot image's contents do not matter to recognition; its catalogue entry does.
    write("isolinux/isolinux.bin", &[0xfa; 2048]);
    let iso = dir.join("debian.iso");
    let out = Command::new("xorriso")
        .args([
            "-as",
            "mkisofs",
            "-quiet",
            "-R",
            "-J",
            "-V",
            "Debian 12.5.0 amd64 n",
        ])
        .args(["-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin"])
        .args([
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            "-o",
        ])
        .arg(&iso)
        .arg(&tree)
        .output()
        .expect("xorriso runs");
    assert!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    iso
}

/// Nothing of a failed create is left: no VM, no staging folder.
fn assert_nothing_created(lib: &TempLibrary) {
    assert!(lib.list().is_empty(), "{:?}", lib.list());
    let staging = lib.home().join(".staging");
    let leftovers = fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        leftovers,
        0,
        "staging folders were left in {}",
        staging.display()
    );
}

#[test]
fn create_from_a_debian_like_iso() {
    let fixtures = match prerequisites() {
        Ok(fixtures) => fixtures,
        Err(reason) => {
            gate::skip("iso_create::create_from_a_debian_like_iso", &reason);
            return;
        }
    };
    let lib = TempLibrary::new();
    let iso = debian_like_iso(&lib.scratch(), &fixtures);
    let iso_arg = iso.to_str().unwrap();

    // Inspection alone changes nothing.
    let text = lib.ok(&["inspect-iso", iso_arg]);
    for expected in [
        "Debian 12",
        "12.5.0",
        "x86_64",
        "/install.amd/vmlinuz",
        "2 CPUs",
    ] {
        assert!(
            text.contains(expected),
            "`{expected}` missing from:\n{text}"
        );
    }
    assert!(lib.list().is_empty());

    // Create with the recognised defaults.
    let out = lib.json(&["create", "--iso", iso_arg]);
    assert_eq!(out["iso"]["os"]["id"], "debian12");
    assert_eq!(out["iso"]["plan"]["kind"], "direct-linux");
    let config = &out["created"];
    assert_eq!(config["name"], "Debian 12");
    assert_eq!(config["os"]["id"], "debian12");
    assert_eq!(config["os"]["name"], "Debian 12");
    assert_eq!(config["cpus"], 2);
    assert_eq!(config["memory_mib"], 2048);
    assert_eq!(config["disks"][0]["size"], 20u64 << 30);
    assert_eq!(config["boot"]["kind"], "installer");
    assert_eq!(config["boot"]["kernel"], "state/installer-kernel");
    assert_eq!(config["boot"]["initrd"], "state/installer-initrd");
    assert_eq!(config["boot"]["cmdline"], "vga=788 --- quiet");
    let canonical = fs::canonicalize(&iso).unwrap();
    assert_eq!(config["cdrom"]["image"], canonical.to_str().unwrap());
    let bundle = lib.bundle("Debian 12");
    assert_eq!(
        sha256(&bundle.join("state/installer-kernel")),
        sha256(&fixtures.vmlinuz())
    );
    assert_eq!(
        sha256(&bundle.join("state/installer-initrd")),
        sha256(&fixtures.guest_initramfs())
    );
    let toml = fs::read_to_string(bundle.join("vm.toml")).unwrap();
    assert!(
        toml.contains("kernel = \"state/installer-kernel\""),
        "{toml}"
    );

    // A second create gets a free name; flags override the recommendations, and a VM
    // without a screen gets the serial console.
    let out = lib.json(&[
        "create",
        "--iso",
        iso_arg,
        "--cpus",
        "1",
        "--memory",
        "1G",
        "--display",
        "none",
        "--no-disk",
    ]);
    let config = &out["created"];
    assert_eq!(config["name"], "Debian 12 (2)");
    assert_eq!(config["cpus"], 1);
    assert_eq!(config["memory_mib"], 1024);
    assert_eq!(config["disks"].as_array().unwrap().len(), 0);
    assert_eq!(
        config["boot"]["cmdline"],
        "vga=788 console=ttyS0,115200n8 --- quiet"
    );
    let named = lib.json(&["create", "installer", "--iso", iso_arg]);
    assert_eq!(named["created"]["name"], "installer");
    assert_eq!(named["created"]["os"]["id"], "debian12");
}

#[test]
fn bad_isos_are_refused_and_nothing_is_created() {
    let lib = TempLibrary::new();
    let scratch = lib.scratch();
    let empty = scratch.join("empty.iso");
    fs::write(&empty, b"").unwrap();
    let text = scratch.join("readme.iso");
    fs::write(&text, vec![b'x'; 64 << 10]).unwrap();
    for (path, expected) in [
        (empty.as_path(), "empty"),
        (text.as_path(), "not an ISO 9660 image"),
        (scratch.as_path(), "folder"),
        (scratch.join("missing.iso").as_path(), "does not exist"),
    ] {
        let err = lib.fails(INVALID, &["create", "--iso", path.to_str().unwrap()]);
        assert!(err.contains(expected), "`{expected}` missing from: {err}");
        assert_nothing_created(&lib);
    }

    let fixtures = match prerequisites() {
        Ok(fixtures) => fixtures,
        Err(reason) => {
            gate::skip(
                "iso_create::bad_isos_are_refused_and_nothing_is_created (the truncated ISO)",
                &reason,
            );
            return;
        }
    };
    let iso = debian_like_iso(&scratch, &fixtures);
    let bytes = fs::read(&iso).unwrap();
    let cut = scratch.join("cut.iso");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = lib.fails(INVALID, &["create", "--iso", cut.to_str().unwrap()]);
    assert!(err.contains("cut short"), "{err}");
    assert_nothing_created(&lib);
}
