//! Guest fixtures built from Debian 12 packages: a kernel, its modules, busybox and a guest
//! initramfs whose `/init` runs checks and reports them on the console.
//!
//! The logic lives here, in the `vivarium-e2e` library, so that tests and `cargo xtask
//! fixtures` share one implementation: the xtask command is a thin wrapper around [`build`],
//! and tests only [`Fixtures::locate`] what it built (a test never downloads anything).
//!
//! The fixtures go to a cache outside the repository, [`default_dir`]:
//! `$VIVARIUM_FIXTURES`, else `$XDG_CACHE_HOME/vivarium/fixtures`, else
//! `~/.cache/vivarium/fixtures`. Its contents:
//!
//! | file | what |
//! | --- | --- |
//! | `vmlinuz` | the Debian kernel (bzImage) |
//! | `vmlinux` | the ELF kernel inside it (boots through its PVH entry, skipping decompression) |
//! | `guest-initramfs.cpio.gz` | busybox, the virtio/input/display modules, `/init` from `xtask/guest/init.sh` |
//! | `busybox` | busybox-static |
//! | `modules/*.ko`, `modules/deps` | the selected modules and their dependencies (`name: dep dep`) |
//! | `kernel-release`, `config` | the kernel's release string and build configuration |
//! | `stamp` | the cache key: package versions, the init script's hash, the format version |
//!
//! The guest `/init` protocol is documented at the top of `xtask/guest/init.sh`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest `/init` (a busybox sh script; its protocol is documented at its top).
pub const GUEST_INIT: &str = include_str!("../../xtask/guest/init.sh");

/// Modules in the guest initramfs (their dependencies are added): virtio over PCI and MMIO,
/// disks, CD-ROM, network, entropy, console, input, the ACPI power button, the bochs display.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_rng",
    "virtio_net",
    "virtio_scsi",
    "sr_mod",
    "sd_mod",
    "virtio_console",
    "virtio_input",
    "evdev",
    "psmouse",
    "button",
    "bochs",
];

/// Modules the nested rig loads: `kvm_amd` for a real `/dev/kvm` inside the emulated AMD
/// machine, `dummy` for a network interface with a default route (passt needs one to model
/// the guest's network on, and the rig has no network of its own).
pub const RIG_MODULES: &[&str] = &["kvm_amd", "dummy"];

/// Bumped when the layout or contents of the cache change without a package version change.
const FORMAT_VERSION: u32 = 1;

/// The meta-package whose dependency names the real kernel package.
const KERNEL_META_PACKAGE: &str = "linux-image-amd64";

/// The package that provides a static busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The guest fixtures in a cache folder, as [`build`] left them.
#[derive(Debug, Clone)]
pub struct Fixtures {
    dir: PathBuf,
}

impl Fixtures {
    /// The fixtures in [`default_dir`], if [`build`] completed there; the error says how to
    /// build them.
    pub fn locate() -> Result<Fixtures, String> {
        Fixtures::open(&default_dir()?)
    }

    /// The fixtures in `dir`, if [`build`] completed there.
    pub fn open(dir: &Path) -> Result<Fixtures, String> {
        let fixtures = Fixtures {
            dir: dir.to_path_buf(),
        };
        let required = [
            dir.join("stamp"),
            fixtures.vmlinuz(),
            fixtures.guest_initramfs(),
            fixtures.busybox(),
            dir.join("modules").join("deps"),
        ];
        match required.iter().find(|p| !p.is_file()) {
            None => Ok(fixtures),
            Some(missing) => Err(format!(
                "guest fixtures missing in {} (no {}): build them with `cargo xtask fixtures`",
                dir.display(),
                missing.display()
            )),
        }
    }

    /// The cache folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The Debian kernel, a bzImage.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The uncompressed ELF kernel (with a PVH entry point), when it could be extracted.
    pub fn vmlinux(&self) -> Option<PathBuf> {
        Some(self.dir.join("vmlinux")).filter(|p| p.is_file())
    }

    /// The guest initramfs (gzip-compressed newc cpio).
    pub fn guest_initramfs(&self) -> PathBuf {
        self.dir.join("guest-initramfs.cpio.gz")
    }

    /// busybox-static.
    pub fn busybox(&self) -> PathBuf {
        self.dir.join("busybox")
    }

    /// The kernel's release string, e.g. `6.1.0-48-amd64`.
    pub fn kernel_release(&self) -> String {
        fs::read_to_string(self.dir.join("kernel-release"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    /// The cache key the fixtures were built with (package names and versions).
    pub fn stamp(&self) -> String {
        fs::read_to_string(self.dir.join("stamp")).unwrap_or_default()
    }

    /// The module files for `names` and all their dependencies, in an order `insmod` accepts
    /// (dependencies first). Names use `_` or `-` alike.
    pub fn modules_in_load_order(&self, names: &[&str]) -> Result<Vec<PathBuf>, String> {
        modules_in_load_order(&self.dir.join("modules"), names)
    }
}

/// The module files in `modules` (a folder as [`build`] leaves it: flat `.ko` files and a
/// `deps` file) for `names` and all their dependencies, dependencies first.
pub(crate) fn modules_in_load_order(
    modules: &Path,
    names: &[&str],
) -> Result<Vec<PathBuf>, String> {
    let deps_path = modules.join("deps");
    let text = fs::read_to_string(&deps_path)
        .map_err(|e| format!("cannot read {}: {e}", deps_path.display()))?;
    let graph = parse_deps(&text);
    let order = load_order(names, |name| graph.get(name).map(|(_, deps)| deps.clone()))?;
    Ok(order
        .iter()
        .map(|name| modules.join(&graph[name].0))
        .collect())
}

/// The fixture cache folder: `$VIVARIUM_FIXTURES`, else `$XDG_CACHE_HOME/vivarium/fixtures`,
/// else `~/.cache/vivarium/fixtures`.
pub fn default_dir() -> Result<PathBuf, String> {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("VIVARIUM_FIXTURES") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match non_empty("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(non_empty("HOME").ok_or(
            "neither VIVARIUM_FIXTURES, XDG_CACHE_HOME nor HOME is set: set VIVARIUM_FIXTURES \
             to a folder for the guest fixtures",
        )?)
        .join(".cache"),
    };
    Ok(cache.join("vivarium").join("fixtures"))
}

/// Builds the fixtures in `dir` from Debian packages (`apt-get download`, `dpkg -x`), unless
/// they are already there for the same package versions. Needs `apt-get`, `apt-cache`,
/// `dpkg`, `gzip` and `xz`; runs `apt-get update` (through sudo when not root) only if the
/// package lists are missing. Progress goes to stderr.
pub fn build(dir: &Path) -> Result<Fixtures, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = lock_dir(dir)?;
    let packages = resolve_packages()?;
    let key = cache_key(&packages);
    if let Ok(fixtures) = Fixtures::open(dir)
        && fixtures.stamp() == key
    {
        eprintln!("fixtures: up to date in {}", dir.display());
        drop(lock);
        return Ok(fixtures);
    }
    let work = dir.join(format!(".work-{}", std::process::id()));
    let result = build_in(dir, &work, &packages, &key);
    let _ = fs::remove_dir_all(&work);
    drop(lock);
    result
}

/// A Debian package pinned to the version the cache is keyed on.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) version: String,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<File, String> {
    let path = dir.join(".lock");
    let file = File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    Ok(file)
}

fn cache_key(packages: &[Package]) -> String {
    let mut key = format!("format {FORMAT_VERSION}\n");
    for p in packages {
        key.push_str(&format!("package {} {}\n", p.name, p.version));
    }
    key.push_str(&format!("init {:016x}\n", fnv1a(GUEST_INIT.as_bytes())));
    let modules: Vec<&str> = GUEST_MODULES.iter().chain(RIG_MODULES).copied().collect();
    key.push_str(&format!("modules {}\n", modules.join(",")));
    key
}

/// FNV-1a, 64 bits: a stable hash for cache keys (std's hasher may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn resolve_packages() -> Result<Vec<Package>, String> {
    let resolve = || -> Result<Vec<Package>, String> {
        let kernel = kernel_package()?;
        [kernel.as_str(), BUSYBOX_PACKAGE]
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

/// The real kernel package behind the meta-package, e.g. `linux-image-6.1.0-48-amd64`.
fn kernel_package() -> Result<String, String> {
    let out = capture(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|dep| dep.starts_with("linux-image-") && dep.ends_with("-amd64"))
        .map(str::to_string)
        .ok_or_else(|| format!("apt-cache depends {KERNEL_META_PACKAGE} names no kernel package"))
}

pub(crate) fn candidate_version(package: &str) -> Result<String, String> {
    let out = capture(Command::new("apt-cache").args(["show", "--no-all-versions", package]))?;
    out.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| format!("apt-cache show {package} gives no version"))
}

pub(crate) fn apt_update() -> Result<(), String> {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    };
    cmd.args(["update", "-q"]);
    run(&mut cmd).map_err(|e| {
        format!("{e}: the package lists are needed to download the fixtures; run apt-get update")
    })
}

pub(crate) fn is_root() -> bool {
    capture(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}

fn build_in(dir: &Path, work: &Path, packages: &[Package], key: &str) -> Result<Fixtures, String> {
    let _ = fs::remove_dir_all(work);
    fs::create_dir_all(work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let debs = download(work, packages)?;
    let kernel_root = work.join("kernel");
    let busybox_root = work.join("busybox");
    eprintln!("fixtures: unpacking {}", packages[0].name);
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&debs[0])
        .arg(&kernel_root))?;
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&debs[1])
        .arg(&busybox_root))?;

    let out = work.join("out");
    fs::create_dir_all(out.join("modules")).map_err(|e| format!("cannot create {e}"))?;
    let release = kernel_release(&kernel_root)?;
    copy(
        &kernel_root.join(format!("boot/vmlinuz-{release}")),
        &out.join("vmlinuz"),
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
    let wanted: Vec<&str> = GUEST_MODULES.iter().chain(RIG_MODULES).copied().collect();
    collect_modules(
        &kernel_root.join("lib/modules").join(&release),
        &wanted,
        &out.join("modules"),
    )?;
    eprintln!("fixtures: extracting vmlinux");
    if let Err(e) = extract_vmlinux(&out.join("vmlinuz"), &out.join("vmlinux")) {
        eprintln!("fixtures: no vmlinux ({e}); guests boot from vmlinuz");
        let _ = fs::remove_file(out.join("vmlinux"));
    }
    let staged = Fixtures { dir: out.clone() };
    eprintln!("fixtures: writing guest-initramfs.cpio.gz");
    write_guest_initramfs(
        &staged.busybox(),
        &staged.modules_in_load_order(GUEST_MODULES)?,
        &out.join("guest-initramfs.cpio.gz"),
    )?;
    write(&out.join("stamp"), key.as_bytes())?;
    install(&out, dir)?;
    let fixtures = Fixtures::open(dir)?;
    eprintln!(
        "fixtures: ready in {} (kernel {release})",
        fixtures.dir().display()
    );
    Ok(fixtures)
}

/// Downloads the packages into `work`, returning the .deb paths in the same order.
pub(crate) fn download(work: &Path, packages: &[Package]) -> Result<Vec<PathBuf>, String> {
    let specs: Vec<String> = packages
        .iter()
        .map(|p| format!("{}={}", p.name, p.version))
        .collect();
    let fetch = || {
        run(Command::new("apt-get")
            .current_dir(work)
            .arg("download")
            .args(&specs))
    };
    eprintln!("fixtures: downloading {}", specs.join(" "));
    fetch().or_else(|_| {
        eprintln!("fixtures: download failed; updating the package lists once");
        apt_update()?;
        fetch()
    })?;
    let debs: Vec<PathBuf> = fs::read_dir(work)
        .map_err(|e| format!("cannot list {}: {e}", work.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    packages
        .iter()
        .map(|p| {
            // `name:arch` (a foreign architecture's package) downloads as `name_version_arch.deb`.
            let (name, arch) = match p.name.split_once(':') {
                Some((name, arch)) => (name, Some(arch)),
                None => (p.name.as_str(), None),
            };
            let prefix = format!("{name}_");
            debs.iter()
                .find(|d| {
                    let file = file_name(d);
                    file.starts_with(&prefix)
                        && arch.is_none_or(|arch| file.ends_with(&format!("_{arch}.deb")))
                })
                .cloned()
                .ok_or_else(|| format!("apt-get download left no .deb for {}", p.name))
        })
        .collect()
}

pub(crate) fn kernel_release(root: &Path) -> Result<String, String> {
    let modules = root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&modules)
        .map_err(|e| format!("the kernel package has no {}: {e}", modules.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    releases
        .pop()
        .ok_or_else(|| "the kernel package has no modules folder".to_string())
}

/// Copies the modules named in `wanted` with their dependencies into `out` (flat,
/// uncompressed) and writes `out/deps`.
pub(crate) fn collect_modules(
    modules_root: &Path,
    wanted: &[&str],
    out: &Path,
) -> Result<(), String> {
    let index = index_modules(&modules_root.join("kernel"))?;
    let mut deps_of = BTreeMap::new();
    let order = load_order(wanted, |name| {
        let path = index.get(name)?;
        let deps = read_module(path).ok().map(|bytes| module_depends(&bytes))?;
        deps_of.insert(name.to_string(), deps.clone());
        Some(deps)
    })?;
    let mut deps_file = String::new();
    for name in &order {
        let bytes = read_module(&index[name])?;
        let file = format!("{name}.ko");
        write(&out.join(&file), &bytes)?;
        deps_file.push_str(&format!("{file}: {}\n", deps_of[name].join(" ")));
    }
    write(&out.join("deps"), deps_file.as_bytes())
}

/// Module name (with `_`, as the kernel names them) → file, for every module under `root`.
pub(crate) fn index_modules(root: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut index = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            fs::read_dir(&dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = module_name(&path) {
                index.insert(name, path);
            }
        }
    }
    Ok(index)
}

/// `kvm-amd.ko.xz` → `kvm_amd`; `None` for files that are not modules.
fn module_name(path: &Path) -> Option<String> {
    let name = file_name(path);
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))?;
    Some(normalize(stem))
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// A module's contents, decompressed when the distribution compresses modules.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let name = file_name(path);
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(|e| format!("cannot run {tool} (install it): {e}"))?;
            if !out.status.success() {
                return Err(format!("{tool} -dc {} failed", path.display()));
            }
            Ok(out.stdout)
        }
    }
}

/// The `depends=` field of a module's `.modinfo` section (normalized names).
pub(crate) fn module_depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = module.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &module[start + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect()
}

/// A dependency-first order of `names` and everything they depend on. `deps` gives a module's
/// direct dependencies, or `None` when there is no such module.
pub(crate) fn load_order(
    names: &[&str],
    mut deps: impl FnMut(&str) -> Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    let mut order = Vec::new();
    let mut done = HashSet::new();
    for name in names {
        visit(
            &normalize(name),
            &mut deps,
            &mut done,
            &mut Vec::new(),
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    deps: &mut impl FnMut(&str) -> Option<Vec<String>>,
    done: &mut HashSet<String>,
    path: &mut Vec<String>,
    order: &mut Vec<String>,
) -> Result<(), String> {
    if done.contains(name) {
        return Ok(());
    }
    if path.iter().any(|p| p == name) {
        return Err(format!(
            "module dependency cycle: {} -> {name}",
            path.join(" -> ")
        ));
    }
    let direct = deps(name).ok_or_else(|| format!("the kernel package has no module `{name}`"))?;
    path.push(name.to_string());
    for dep in &direct {
        visit(dep, deps, done, path, order)?;
    }
    path.pop();
    done.insert(name.to_string());
    order.push(name.to_string());
    Ok(())
}

/// `modules/deps` → normalized name → (file, dependencies).
fn parse_deps(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (file, deps) = line.split_once(':')?;
            let name = normalize(file.trim().strip_suffix(".ko")?);
            let deps = deps.split_whitespace().map(normalize).collect();
            Some((name, (file.trim().to_string(), deps)))
        })
        .collect()
}

/// Extracts the ELF kernel from an xz-compressed x86 bzImage, using the payload location the
/// boot protocol's setup header gives (`payload_offset` at 0x248, `payload_length` at 0x24c).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<(), String> {
    let image = fs::read(bzimage).map_err(|e| format!("cannot read {}: {e}", bzimage.display()))?;
    let le32 = |at: usize| -> Option<usize> {
        let bytes = image.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    if image.get(0x202..0x206) != Some(b"HdrS") {
        return Err("not a bzImage (no HdrS)".into());
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + le32(0x248).ok_or("truncated setup header")?;
    let len = le32(0x24c).ok_or("truncated setup header")?;
    let payload = image
        .get(start..start + len)
        .ok_or("payload outside the image")?;
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Err("the payload is not xz-compressed".into());
    }
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?)
        .spawn()
        .map_err(|e| format!("cannot run xz (install xz-utils): {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(payload);
    drop(stdin);
    let status = child.wait().map_err(|e| format!("xz: {e}"))?;
    written.map_err(|e| format!("xz: {e}"))?;
    if !status.success() {
        return Err(format!("xz failed ({status})"));
    }
    let mut magic = [0u8; 4];
    File::open(out)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("cannot read {}: {e}", out.display()))?;
    if &magic != b"\x7fELF" {
        return Err("the payload is not an ELF file".into());
    }
    Ok(())
}

/// Writes the guest initramfs (gzip-compressed): `busybox`, the `modules` (in load order) and
/// [`GUEST_INIT`] as `/init`.
pub(crate) fn write_guest_initramfs(
    busybox: &Path,
    modules: &[PathBuf],
    out: &Path,
) -> Result<(), String> {
    let cpio_path = out.with_extension("");
    let file = File::create(&cpio_path)
        .map_err(|e| format!("cannot create {}: {e}", cpio_path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let result = (|| -> io::Result<()> {
        cpio.base_layout()?;
        cpio.file("init", 0o755, GUEST_INIT.as_bytes())?;
        cpio.file_from("bin/busybox", 0o755, busybox)?;
        cpio.symlink("bin/sh", "busybox")?;
        let mut order = String::new();
        for module in modules {
            let name = file_name(module);
            cpio.file_from(&format!("lib/modules/{name}"), 0o644, module)?;
            order.push_str(&format!("{name}\n"));
        }
        cpio.file("lib/modules/load-order", 0o644, order.as_bytes())?;
        cpio.finish()?.flush()
    })();
    result.map_err(|e| format!("cannot write {}: {e}", cpio_path.display()))?;
    gzip(&cpio_path, out)
}

/// Compresses `input` into `output` with `gzip -9 -n` and removes `input`.
pub fn gzip(input: &Path, output: &Path) -> Result<(), String> {
    let target =
        File::create(output).map_err(|e| format!("cannot create {}: {e}", output.display()))?;
    run(Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(input)
        .stdout(target))?;
    fs::remove_file(input).map_err(|e| format!("cannot remove {}: {e}", input.display()))
}

/// Moves the staged files into the cache; the stamp goes last so that an interrupted
/// install is never taken for a complete one.
fn install(staged: &Path, dir: &Path) -> Result<(), String> {
    let _ = fs::remove_file(dir.join("stamp"));
    let _ = fs::remove_file(dir.join("vmlinux"));
    for name in [
        "modules",
        "vmlinuz",
        "vmlinux",
        "config",
        "busybox",
        "kernel-release",
        "guest-initramfs.cpio.gz",
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

/// A writer of "newc" cpio archives, the format the kernel unpacks as an initramfs. Paths are
/// relative (no leading `/`); missing parent folders are added on the way.
pub struct Cpio<W: Write> {
    out: W,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Cpio<W> {
    /// An empty archive written to `out`.
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            next_inode: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// The folders every initramfs here has, and `/dev/console` so that init has a console
    /// before it mounts devtmpfs.
    pub fn base_layout(&mut self) -> io::Result<()> {
        for dir in [
            "bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib", "root", "run",
        ] {
            self.dir(dir)?;
        }
        self.char_device("dev/console", 0o600, 5, 1)
    }

    /// A folder (and its missing parents).
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040_755, 0, &[])
    }

    /// A regular file with these contents.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = self.parent_of(path)?;
        self.entry(&path, 0o100_000 | (mode & 0o7777), 0, data)
    }

    /// A regular file with the contents of `source` (symlinks followed).
    pub fn file_from(&mut self, path: &str, mode: u32, source: &Path) -> io::Result<()> {
        let data = fs::read(source).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot read {}: {e}", source.display()))
        })?;
        self.file(path, mode, &data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.parent_of(path)?;
        self.entry(&path, 0o120_777, 0, target.as_bytes())
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = self.parent_of(path)?;
        let rdev = (major << 8) | minor;
        self.entry(&path, 0o020_000 | (mode & 0o7777), rdev, &[])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, 0, &[])?;
        Ok(self.out)
    }

    fn parent_of(&mut self, path: &str) -> io::Result<String> {
        let path = path.trim_start_matches('/').to_string();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        Ok(path)
    }

    /// One header, name and data, each padded to 4 bytes. `rdev` packs major << 8 | minor.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::other(format!("{name} is too large for cpio")))?;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, for reproducible archives
            size,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(header.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))
}

pub(crate) fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs a command to completion; the error names it and how it ended.
pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed ({status})", describe(cmd)))
    }
}

/// Runs a command and returns its stdout; fails on a non-zero exit or any error output that
/// names a missing package.
pub(crate) fn capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_order_puts_dependencies_first() {
        let graph: BTreeMap<&str, Vec<String>> = [
            ("kvm_amd", vec!["kvm".to_string(), "ccp".to_string()]),
            ("kvm", vec!["irqbypass".to_string()]),
            ("ccp", vec![]),
            ("irqbypass", vec![]),
        ]
        .into_iter()
        .collect();
        let order = load_order(&["kvm-amd"], |n| graph.get(n).cloned()).unwrap();
        assert_eq!(order, ["irqbypass", "kvm", "ccp", "kvm_amd"]);
    }

    #[test]
    fn load_order_reports_missing_modules_and_cycles() {
        let missing = load_order(&["nope"], |_| None).unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
        let cycle = load_order(&["a"], |n| {
            Some(vec![if n == "a" { "b" } else { "a" }.to_string()])
        })
        .unwrap_err();
        assert!(cycle.contains("cycle"), "{cycle}");
    }

    #[test]
    fn depends_is_read_from_modinfo() {
        let module = b"\x7fELF....\0license=GPL\0depends=kvm,ccp\0retpoline=Y\0";
        assert_eq!(module_depends(module), ["kvm", "ccp"]);
        assert!(module_depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn cpio_entries_are_aligned_and_parents_come_first() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("a/b/c", 0o644, b"hello").unwrap();
        let bytes = cpio.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        let a = text.find("a\0").unwrap();
        let ab = text.find("a/b\0").unwrap();
        let abc = text.find("a/b/c\0").unwrap();
        assert!(a < ab && ab < abc);
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!"));
    }

    #[test]
    fn deps_file_round_trips() {
        let graph = parse_deps("kvm-amd.ko: kvm ccp\nkvm.ko: irqbypass\n");
        assert_eq!(graph["kvm_amd"].0, "kvm-amd.ko");
        assert_eq!(graph["kvm_amd"].1, ["kvm", "ccp"]);
    }
}
