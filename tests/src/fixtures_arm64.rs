//! The arm64 fixtures: Debian 12's arm64 kernel, its modules, an arm64 busybox, an arm64
//! guest initramfs (the same `/init` as the x86 guest, `xtask/guest/init.sh`), the outer
//! initramfs of the arm64 rig ([`crate::rig::Rig::arm64`]), and Debian's arm64 QEMU with the
//! arm64 libraries it needs (the peer VMM inside the rig), all from Debian's arm64 packages.
//!
//! The packages are downloaded (`apt-get download PKG:arm64`) and unpacked (`dpkg -x`), never
//! installed; the arm64 architecture is added to dpkg's list first when it is missing
//! (`dpkg --add-architecture arm64`, then `apt-get update`), through sudo when not root.
//! Like the x86 fixtures ([`crate::fixtures`]), tests only [`Arm64Fixtures::locate`] them;
//! `cargo xtask fixtures --arm64` (and `cargo xtask test`) [`build`]s them.
//!
//! They live in `arm64/` of the fixture cache ([`crate::fixtures::default_dir`]):
//!
//! | file | what |
//! | --- | --- |
//! | `Image` | the Debian arm64 kernel (Debian's arm64 `vmlinuz` is a plain, uncompressed `Image`) |
//! | `guest-initramfs.cpio.gz` | arm64 busybox, the virtio/input modules, `/init` from `xtask/guest/init.sh` |
//! | `outer-initramfs.cpio` | the rig's base: busybox, `/init` from `xtask/guest/rig-init.sh`, the rig's modules, `Image` and the guest initramfs under `/rig/fixtures` |
//! | `busybox` | arm64 busybox-static |
//! | `modules/*.ko`, `modules/deps` | the selected modules and their dependencies |
//! | `sysroot/` | the arm64 packages' libraries (`lib/`, `usr/lib/`) and `usr/bin/qemu-system-aarch64` |
//! | `kernel-release`, `config` | the kernel's release string and build configuration |
//! | `stamp` | the cache key: package versions, the two init scripts' hashes, the format version |

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fixtures::{
    Cpio, GUEST_INIT, Package, apt_update, candidate_version, capture, collect_modules, copy,
    download, file_name, fnv1a, is_root, kernel_release, lock_dir, modules_in_load_order, run,
    write, write_guest_initramfs,
};
use crate::rig::RIG_INIT;

/// Modules in the arm64 guest initramfs (their dependencies are added): virtio over PCI and
/// MMIO, disks, CD-ROM, network, entropy, console, input. The PL011 UART, the PL031 clock,
/// the ECAM host bridge, the GICv3 and its ITS and PSCI are built into Debian's arm64 kernel.
pub const GUEST_MODULES_ARM64: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_rng",
    "virtio_net",
    "virtio_scsi",
    "sr_mod",
    "virtio_console",
    "virtio_input",
    "evdev",
];

/// Modules the arm64 rig loads: only `dummy` (a network interface with a default route, as in
/// the x86 rig). KVM is built into Debian's arm64 kernel (`CONFIG_KVM=y`): there is nothing to
/// load for `/dev/kvm`.
pub const RIG_MODULES_ARM64: &[&str] = &["dummy"];

/// The Debian architecture of these fixtures.
pub const DEBIAN_ARCH: &str = "arm64";

/// Bumped when the layout or contents of the cache change without a package version change.
const FORMAT_VERSION: u32 = 1;

/// The meta-package whose dependency names the real kernel package.
const KERNEL_META_PACKAGE: &str = "linux-image-arm64:arm64";
/// A static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static:arm64";
/// QEMU for arm64 machines (`qemu-system-aarch64`), built for arm64.
const QEMU_PACKAGE: &str = "qemu-system-arm:arm64";
/// Libraries every cross-built Rust program needs, besides those QEMU pulls in.
const BASE_LIBRARY_PACKAGES: &[&str] = &["libc6:arm64", "libgcc-s1:arm64"];
/// Where QEMU's program is in its package, and so in the sysroot and in the rig.
pub const QEMU_PROGRAM: &str = "usr/bin/qemu-system-aarch64";
/// Rounds of following library packages' dependencies before giving up.
const LIBRARY_ROUNDS: usize = 10;

/// The arm64 fixtures in a cache folder, as [`build`] left them.
#[derive(Debug, Clone)]
pub struct Arm64Fixtures {
    dir: PathBuf,
}

impl Arm64Fixtures {
    /// The fixtures in `arm64/` of the default fixture cache, if [`build`] completed there; the
    /// error says how to build them.
    pub fn locate() -> Result<Arm64Fixtures, String> {
        Arm64Fixtures::open(&default_dir()?)
    }

    /// The fixtures in `dir`, if [`build`] completed there.
    pub fn open(dir: &Path) -> Result<Arm64Fixtures, String> {
        let fixtures = Arm64Fixtures {
            dir: dir.to_path_buf(),
        };
        let required = [
            dir.join("stamp"),
            fixtures.kernel(),
            fixtures.guest_initramfs(),
            fixtures.outer_initramfs(),
            fixtures.busybox(),
            fixtures.qemu(),
            dir.join("modules").join("deps"),
        ];
        match required.iter().find(|p| !p.is_file()) {
            None => Ok(fixtures),
            Some(missing) => Err(format!(
                "arm64 fixtures missing in {} (no {}): build them with `cargo xtask fixtures \
                 --arm64`",
                dir.display(),
                missing.display()
            )),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Debian arm64 kernel, an uncompressed `Image`.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("Image")
    }

    /// The arm64 guest initramfs (gzip-compressed newc cpio).
    pub fn guest_initramfs(&self) -> PathBuf {
        self.dir.join("guest-initramfs.cpio.gz")
    }

    /// The base of the rig's outer initramfs (uncompressed newc cpio): the rig appends an
    /// archive of its script and carried files to it.
    pub fn outer_initramfs(&self) -> PathBuf {
        self.dir.join("outer-initramfs.cpio")
    }

    /// arm64 busybox-static.
    pub fn busybox(&self) -> PathBuf {
        self.dir.join("busybox")
    }

    /// The unpacked arm64 packages: libraries at their Debian paths, and QEMU.
    pub fn sysroot(&self) -> PathBuf {
        self.dir.join("sysroot")
    }

    /// Debian's arm64 `qemu-system-aarch64`, in the sysroot.
    pub fn qemu(&self) -> PathBuf {
        self.sysroot().join(QEMU_PROGRAM)
    }

    /// The kernel's release string, e.g. `6.1.0-57-arm64`.
    pub fn kernel_release(&self) -> String {
        fs::read_to_string(self.dir.join("kernel-release"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The cache key the fixtures were built with (package names and versions).
    pub fn stamp(&self) -> String {
        fs::read_to_string(self.dir.join("stamp")).unwrap_or_default()
    }

    /// The module files for `names` and their dependencies, dependencies first.
    pub fn modules_in_load_order(&self, names: &[&str]) -> Result<Vec<PathBuf>, String> {
        modules_in_load_order(&self.dir.join("modules"), names)
    }
}

/// `arm64/` of the fixture cache ([`crate::fixtures::default_dir`]).
pub fn default_dir() -> Result<PathBuf, String> {
    Ok(crate::fixtures::default_dir()?.join(DEBIAN_ARCH))
}

/// Builds the arm64 fixtures in `dir`, unless they are there for the same package versions and
/// init scripts. Needs `apt-get`, `apt-cache`, `dpkg` and `gzip`; adds the arm64 architecture
/// to dpkg and updates the package lists when they have no arm64 packages. Progress goes to
/// stderr.
pub fn build(dir: &Path) -> Result<Arm64Fixtures, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = lock_dir(dir)?;
    ensure_architecture()?;
    let packages = resolve_packages()?;
    let key = cache_key(&packages);
    if let Ok(fixtures) = Arm64Fixtures::open(dir)
        && fixtures.stamp() == key
    {
        eprintln!("fixtures: arm64 up to date in {}", dir.display());
        drop(lock);
        return Ok(fixtures);
    }
    let work = dir.join(format!(".work-{}", std::process::id()));
    let result = build_in(dir, &work, &packages, &key);
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result
}

/// Adds arm64 to dpkg's foreign architectures (and updates the package lists) when missing.
fn ensure_architecture() -> Result<(), String> {
    let foreign = capture(Command::new("dpkg").arg("--print-foreign-architectures"))?;
    if foreign.split_whitespace().any(|a| a == DEBIAN_ARCH) {
        return Ok(());
    }
    eprintln!(
        "fixtures: adding the {DEBIAN_ARCH} architecture to dpkg (packages are only downloaded)"
    );
    let mut cmd = if is_root() {
        Command::new("dpkg")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("dpkg");
        sudo
    };
    run(cmd.args(["--add-architecture", DEBIAN_ARCH]))?;
    apt_update()
}

fn cache_key(packages: &[Package]) -> String {
    let mut key = format!("format {FORMAT_VERSION}\narch {DEBIAN_ARCH}\n");
    for p in packages {
        key.push_str(&format!("package {} {}\n", p.name, p.version));
    }
    key.push_str(&format!("init {:016x}\n", fnv1a(GUEST_INIT.as_bytes())));
    key.push_str(&format!("rig-init {:016x}\n", fnv1a(RIG_INIT.as_bytes())));
    let modules: Vec<&str> = GUEST_MODULES_ARM64
        .iter()
        .chain(RIG_MODULES_ARM64)
        .copied()
        .collect();
    key.push_str(&format!("modules {}\n", modules.join(",")));
    key
}

/// The kernel, busybox and QEMU packages, pinned to their candidate versions.
fn resolve_packages() -> Result<Vec<Package>, String> {
    let resolve = || -> Result<Vec<Package>, String> {
        let kernel = kernel_package()?;
        [kernel.as_str(), BUSYBOX_PACKAGE, QEMU_PACKAGE]
            .iter()
            .map(|name| {
                Ok(Package {
                    name: name.to_string(),
                    version: candidate_version(name)?,
                })
            })
            .collect()
    };
    resolve().or_else(|first| {
        eprintln!("fixtures: {first}; updating the package lists once");
        apt_update()?;
        resolve()
    })
}

/// The real kernel package behind the meta-package, e.g. `linux-image-6.1.0-57-arm64:arm64`.
fn kernel_package() -> Result<String, String> {
    let out = capture(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    depends_of(&out)
        .into_iter()
        .find(|dep| dep.starts_with("linux-image-") && dep.ends_with("-arm64:arm64"))
        .ok_or_else(|| format!("apt-cache depends {KERNEL_META_PACKAGE} names no kernel package"))
}

/// The packages `apt-cache depends` output names as (pre-)dependencies, alternatives
/// included, virtual packages (`<name>`) left out.
fn depends_of(apt_cache_depends: &str) -> Vec<String> {
    apt_cache_depends
        .lines()
        .map(|l| l.trim().trim_start_matches('|'))
        .filter_map(|l| {
            l.strip_prefix("Depends:")
                .or_else(|| l.strip_prefix("PreDepends:"))
        })
        .map(str::trim)
        .filter(|dep| !dep.starts_with('<'))
        .map(str::to_string)
        .collect()
}

/// Whether a dependency is an arm64 library package (the only kind the sysroot follows).
fn is_library_package(dep: &str) -> bool {
    dep.strip_suffix(":arm64")
        .is_some_and(|name| name.starts_with("lib") || name.starts_with("zlib"))
}

fn build_in(
    dir: &Path,
    work: &Path,
    packages: &[Package],
    key: &str,
) -> Result<Arm64Fixtures, String> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let debs = download(work, packages)?;
    let kernel_root = work.join("kernel");
    let busybox_root = work.join("busybox");
    let sysroot = work.join("sysroot");
    eprintln!("fixtures: unpacking {}", packages[0].name);
    for (deb, root) in debs.iter().zip([&kernel_root, &busybox_root, &sysroot]) {
        run(Command::new("dpkg").arg("-x").arg(deb).arg(root))?;
    }
    libraries_for_qemu(work, &sysroot)?;

    let out = work.join("out");
    fs::create_dir_all(out.join("modules")).map_err(|e| format!("cannot create {e}"))?;
    let release = kernel_release(&kernel_root)?;
    copy(
        &kernel_root.join(format!("boot/vmlinuz-{release}")),
        &out.join("Image"),
    )?;
    copy(
        &kernel_root.join(format!("boot/config-{release}")),
        &out.join("config"),
    )?;
    copy(&busybox_root.join("bin/busybox"), &out.join("busybox"))?;
    write(
        &out.join("kernel-release"),
        format!("{release}\n").as_bytes(),
    )?;
    let wanted: Vec<&str> = GUEST_MODULES_ARM64
        .iter()
        .chain(RIG_MODULES_ARM64)
        .copied()
        .collect();
    collect_modules(
        &kernel_root.join("lib/modules").join(&release),
        &wanted,
        &out.join("modules"),
    )?;
    // Only what a carried program may need stays: libraries and QEMU's program.
    let kept = out.join("sysroot");
    for part in ["lib", "usr/lib", QEMU_PROGRAM] {
        let from = sysroot.join(part);
        let to = kept.join(part);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(|e| format!("cannot create {e}"))?;
        }
        if from.exists() {
            fs::rename(&from, &to).map_err(|e| format!("cannot move {}: {e}", from.display()))?;
        }
    }
    let staged = Arm64Fixtures { dir: out.clone() };
    eprintln!("fixtures: writing the arm64 guest-initramfs.cpio.gz");
    write_guest_initramfs(
        &staged.busybox(),
        &staged.modules_in_load_order(GUEST_MODULES_ARM64)?,
        &staged.guest_initramfs(),
    )?;
    eprintln!("fixtures: writing the arm64 rig's outer-initramfs.cpio");
    write_outer_initramfs(&staged)?;
    write(&out.join("stamp"), key.as_bytes())?;
    install(&out, dir)?;
    let fixtures = Arm64Fixtures::open(dir)?;
    eprintln!(
        "fixtures: arm64 ready in {} (kernel {release})",
        fixtures.dir().display()
    );
    Ok(fixtures)
}

/// Unpacks into `sysroot` the arm64 library packages QEMU needs (already unpacked there), and
/// those every cross-built program needs: each round downloads the library packages the
/// unpacked ones depend on, until every library QEMU names (and those they name) is there.
fn libraries_for_qemu(work: &Path, sysroot: &Path) -> Result<(), String> {
    let qemu = sysroot.join(QEMU_PROGRAM);
    let mut had: Vec<String> = vec![QEMU_PACKAGE.to_string()];
    let mut frontier: Vec<String> = BASE_LIBRARY_PACKAGES
        .iter()
        .map(|s| s.to_string())
        .collect();
    frontier.extend(dependencies(&had)?);
    for round in 1..=LIBRARY_ROUNDS {
        frontier.retain(|dep| is_library_package(dep) && !had.contains(dep));
        frontier.sort();
        frontier.dedup();
        if !frontier.is_empty() {
            let folder = work.join(format!("libraries-{round}"));
            fs::create_dir_all(&folder).map_err(|e| format!("cannot create {e}"))?;
            let packages: Vec<Package> = frontier
                .iter()
                .map(|name| Package {
                    name: name.clone(),
                    version: candidate_version(name).unwrap_or_default(),
                })
                .filter(|p| !p.version.is_empty())
                .collect();
            for deb in download(&folder, &packages)? {
                run(Command::new("dpkg").arg("-x").arg(&deb).arg(sysroot))?;
            }
            had.extend(frontier.iter().cloned());
        }
        match crate::elf::library_closure(sysroot, &qemu) {
            Ok(libraries) => {
                eprintln!(
                    "fixtures: arm64 QEMU needs {} libraries, from {} packages",
                    libraries.len(),
                    had.len()
                );
                return Ok(());
            }
            Err(missing) if frontier.is_empty() => return Err(missing),
            Err(_) => frontier = dependencies(&frontier)?,
        }
    }
    Err(format!(
        "the arm64 QEMU's libraries are still incomplete after {LIBRARY_ROUNDS} rounds of \
         dependencies"
    ))
}

/// The direct dependencies of `packages`.
fn dependencies(packages: &[String]) -> Result<Vec<String>, String> {
    let out = capture(Command::new("apt-cache").arg("depends").args(packages))?;
    Ok(depends_of(&out))
}

/// The rig's base initramfs: busybox, the rig's `/init`, its modules (with a load order) and the
/// guest fixtures. The rig appends a second archive with the script and the carried files.
fn write_outer_initramfs(fixtures: &Arm64Fixtures) -> Result<(), String> {
    let path = fixtures.outer_initramfs();
    let file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let modules = fixtures.modules_in_load_order(RIG_MODULES_ARM64)?;
    let result = (|| -> std::io::Result<()> {
        cpio.base_layout()?;
        cpio.file("init", 0o755, RIG_INIT.as_bytes())?;
        cpio.file_from("bin/busybox", 0o755, &fixtures.busybox())?;
        cpio.symlink("bin/sh", "busybox")?;
        let mut order = String::new();
        for module in &modules {
            let name = file_name(module);
            cpio.file_from(&format!("rig/modules/{name}"), 0o644, module)?;
            order.push_str(&format!("{name}\n"));
        }
        cpio.file("rig/modules/load-order", 0o644, order.as_bytes())?;
        cpio.file_from("rig/fixtures/Image", 0o644, &fixtures.kernel())?;
        cpio.file_from(
            "rig/fixtures/guest-initramfs.cpio.gz",
            0o644,
            &fixtures.guest_initramfs(),
        )?;
        cpio.finish()?.flush()
    })();
    result.map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Moves the staged files into the cache; the stamp goes last so that an interrupted install
/// is never taken for a complete one.
fn install(staged: &Path, dir: &Path) -> Result<(), String> {
    let _ = fs::remove_file(dir.join("stamp"));
    for name in [
        "modules",
        "sysroot",
        "Image",
        "config",
        "busybox",
        "kernel-release",
        "guest-initramfs.cpio.gz",
        "outer-initramfs.cpio",
        "stamp",
    ] {
        let from = staged.join(name);
        if !from.exists() {
            continue;
        }
        let to = dir.join(name);
        if to.is_dir() {
            fs::remove_dir_all(&to).map_err(|e| format!("cannot remove {}: {e}", to.display()))?;
        }
        fs::rename(&from, &to).map_err(|e| format!("cannot move {}: {e}", to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_read_from_apt_cache_depends() {
        let out = "qemu-system-arm:arm64\n  Depends: libaio1:arm64\n |Depends: libelogind0:arm64\n  \
                   Depends: libsystemd0:arm64\n  PreDepends: libc6:arm64\n  Depends: \
                   <qemu-system-data:arm64>\n    qemu-system-data\n  Recommends: qemu-utils:arm64\n";
        assert_eq!(
            depends_of(out),
            [
                "libaio1:arm64",
                "libelogind0:arm64",
                "libsystemd0:arm64",
                "libc6:arm64"
            ]
        );
    }

    #[test]
    fn only_arm64_libraries_are_followed() {
        assert!(is_library_package("libglib2.0-0:arm64"));
        assert!(is_library_package("zlib1g:arm64"));
        assert!(!is_library_package("libdrm-common"));
        assert!(!is_library_package("qemu-system-common:arm64"));
        assert!(!is_library_package("libc6"));
    }
}
