//! The CD-ROM modules for the installer ISO's initrds.
//!
//! Debian's netboot initrd (what `mini.iso` boots) has no driver for a CD-ROM drive: it fetches
//! everything else from a mirror. The initrd on Debian's netinst CD has them: the SCSI CD-ROM
//! driver with the kernel's CD-ROM layer, ISO 9660, and the virtio-scsi host driver. This adds
//! the same modules to the netboot initrd, taken from the installer kernel's own Debian
//! package (`linux-image-RELEASE`, the release read from the initrd), as a second compressed
//! cpio archive after the first: the kernel unpacks both, the second adding the modules and
//! replacing the module indexes, which `depmod` regenerates over the whole module tree. At boot
//! the installer's udev coldplug then loads them for the virtio-scsi controller, and the
//! drive appears as `/dev/sr0`, where the installer's `list-devices cd` finds it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::fixtures::{
    Cpio, Package, candidate_version, download, file_name, gzip, index_modules, load_order,
    module_depends, read_module, run, write,
};

/// The modules asked for, with whatever they depend on that the initrd lacks.
pub const CD_MODULES: &[&str] = &["virtio_scsi", "sr_mod", "isofs"];

/// One entry of a newc cpio archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// The path, relative (as the archive stores it).
    pub name: String,
    /// The mode, type bits included.
    pub mode: u32,
    /// The contents (a symlink's target for links; empty for folders).
    pub data: Vec<u8>,
}

impl CpioEntry {
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & 0o170_000 == 0o100_000
    }
}

/// Reads a newc cpio archive up to its trailer. Written here (the `cpio` tool is not on every
/// machine, and the crates for the format are writers or unmaintained): the format is a
/// 110-byte hex header, the name and the data, each padded to 4 bytes.
pub fn read_newc(archive: &[u8]) -> Result<Vec<CpioEntry>, String> {
    const HEADER: usize = 110;
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        let header = archive
            .get(at..at + HEADER)
            .ok_or_else(|| format!("the archive ends inside a header at byte {at}"))?;
        if &header[..6] != b"070701" && &header[..6] != b"070702" {
            return Err(format!("no newc cpio header at byte {at}"));
        }
        let field = |i: usize| -> Result<usize, String> {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| format!("a bad header field at byte {at}"))?;
            usize::from_str_radix(hex, 16).map_err(|_| format!("a bad header field at byte {at}"))
        };
        let mode = field(1)? as u32;
        let size = field(6)?;
        let name_size = field(11)?;
        let name_end = at + HEADER + name_size;
        let name = archive
            .get(at + HEADER..name_end.saturating_sub(1))
            .ok_or_else(|| format!("the archive ends inside a name at byte {at}"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_start = align(name_end);
        let data = archive
            .get(data_start..data_start + size)
            .ok_or_else(|| format!("the archive ends inside {name}"))?;
        if name == "TRAILER!!!" {
            return Ok(entries);
        }
        entries.push(CpioEntry {
            name,
            mode,
            data: data.to_vec(),
        });
        at = align(data_start + size);
    }
}

/// Writes `out`: the gzip-compressed initrd `initrd` followed by a second gzip-compressed
/// archive with [`CD_MODULES`] (and their missing dependencies) and the regenerated module
/// indexes. `work` is an empty scratch folder; the kernel package is downloaded into `debs`
/// unless it is there already. Returns the modules added.
pub fn add_cd_modules(
    initrd: &Path,
    work: &Path,
    debs: &Path,
    out: &Path,
) -> Result<Vec<String>, String> {
    let compressed =
        fs::read(initrd).map_err(|e| format!("cannot read {}: {e}", initrd.display()))?;
    let entries = read_newc(&gunzip(&compressed)?)?;
    let release = entries
        .iter()
        .find_map(|e| {
            e.name
                .strip_prefix("lib/modules/")?
                .strip_suffix("/modules.dep.bin")
                .map(str::to_string)
        })
        .ok_or_else(|| format!("{} has no lib/modules/*/modules.dep.bin", initrd.display()))?;
    let modules_dir = format!("lib/modules/{release}");

    // The initrd's module tree, for depmod.
    let tree = work.join("initrd-modules");
    let mut index_files = BTreeSet::new();
    for entry in entries.iter().filter(|e| e.is_file()) {
        let Some(relative) = entry.name.strip_prefix(&format!("{modules_dir}/")) else {
            continue;
        };
        if !relative.contains('/') && relative.starts_with("modules.") {
            index_files.insert(relative.to_string());
        }
        let path = tree.join(&entry.name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        write(&path, &entry.data)?;
    }
    let present = index_modules(&tree.join(&modules_dir))?;

    // The installer kernel's own package, for the modules the initrd lacks.
    let name = format!("linux-image-{release}");
    let package = Package {
        version: candidate_version(&name).map_err(|e| {
            format!("the installer's kernel {release} has no package {name} to take its CD-ROM modules from: {e}")
        })?,
        name,
    };
    fs::create_dir_all(debs).map_err(|e| format!("cannot create {}: {e}", debs.display()))?;
    let prefix = format!("{}_", package.name);
    let cached = fs::read_dir(debs)
        .map_err(|e| format!("cannot list {}: {e}", debs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| file_name(p).starts_with(&prefix) && file_name(p).ends_with(".deb"));
    let deb = match cached {
        Some(deb) => deb,
        None => download(debs, std::slice::from_ref(&package))?.remove(0),
    };
    let kernel_root = work.join("kernel");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&kernel_root))?;
    let kernel_modules = kernel_root.join(&modules_dir);
    let available = index_modules(&kernel_modules)?;
    let order = load_order(CD_MODULES, |module| {
        if present.contains_key(module) {
            return Some(Vec::new());
        }
        let bytes = read_module(available.get(module)?).ok()?;
        Some(module_depends(&bytes))
    })?;
    let added: Vec<String> = order
        .into_iter()
        .filter(|m| !present.contains_key(m))
        .collect();

    let mut new_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for module in &added {
        let source = &available[module];
        let relative = source
            .strip_prefix(&kernel_modules)
            .map_err(|_| format!("{} is outside the kernel's modules", source.display()))?
            .to_string_lossy()
            .into_owned();
        // The initrd keeps modules uncompressed, whatever the package does.
        let relative = match relative.rsplit_once(".ko") {
            Some((stem, _)) => format!("{stem}.ko"),
            None => relative,
        };
        let name = format!("{modules_dir}/{relative}");
        let path = tree.join(&name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        write(&path, &read_module(source)?)?;
        new_files.insert(name, path);
    }
    // depmod indexes the aliases of built-in drivers from this; the initrd keeps only the index.
    let builtin = "modules.builtin.modinfo";
    if kernel_modules.join(builtin).is_file() {
        crate::fixtures::copy(
            &kernel_modules.join(builtin),
            &tree.join(&modules_dir).join(builtin),
        )?;
    }
    let depmod = crate::rig::find_program("depmod")
        .ok_or("`depmod` is missing: install the Debian package kmod")?;
    run(Command::new(depmod).arg("-b").arg(&tree).arg(&release))?;
    for index in &index_files {
        let name = format!("{modules_dir}/{index}");
        new_files.insert(name.clone(), tree.join(&name));
    }

    let cpio_path = work.join("cd-modules.cpio");
    let file = fs::File::create(&cpio_path)
        .map_err(|e| format!("cannot create {}: {e}", cpio_path.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    let written = (|| -> std::io::Result<()> {
        for (name, path) in &new_files {
            cpio.file_from(name, 0o644, path)?;
        }
        cpio.finish()?.flush()
    })();
    written.map_err(|e| format!("cannot write {}: {e}", cpio_path.display()))?;
    let gz = work.join("cd-modules.cpio.gz");
    gzip(&cpio_path, &gz)?;
    let mut joined = compressed;
    joined.extend(fs::read(&gz).map_err(|e| format!("cannot read {}: {e}", gz.display()))?);
    write(out, &joined)?;
    Ok(added)
}

/// Decompresses a gzip stream (all of its members) with `gzip -dc`.
fn gunzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    feeder
        .join()
        .map_err(|_| "gzip: the writer panicked".to_string())?
        .map_err(|e| format!("gzip: {e}"))?;
    if !output.status.success() {
        return Err(format!("gzip -dc failed ({})", output.status));
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive() -> Vec<u8> {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("lib/modules/6.1.0-1-amd64/modules.dep.bin", 0o644, b"x")
            .unwrap();
        cpio.symlink("bin/sh", "busybox").unwrap();
        cpio.file("init", 0o755, b"#!/bin/sh\necho hello\n")
            .unwrap();
        cpio.finish().unwrap()
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let entries = read_newc(&archive()).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.1.0-1-amd64",
                "lib/modules/6.1.0-1-amd64/modules.dep.bin",
                "bin",
                "bin/sh",
                "init"
            ]
        );
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert!(init.is_file());
        assert_eq!(init.mode & 0o777, 0o755);
        assert_eq!(init.data, b"#!/bin/sh\necho hello\n");
        let sh = entries.iter().find(|e| e.name == "bin/sh").unwrap();
        assert!(!sh.is_file());
        assert_eq!(sh.data, b"busybox");
    }

    #[test]
    fn refuses_truncated_and_foreign_archives() {
        let whole = archive();
        for cut in [0, 50, 120, whole.len() - 20] {
            assert!(read_newc(&whole[..cut]).is_err(), "cut at {cut}");
        }
        assert!(read_newc(&[b'x'; 200]).is_err());
    }
}
