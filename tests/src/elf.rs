//! What a dynamically linked ELF program needs to run: its dynamic loader (`PT_INTERP`) and
//! the shared libraries it names (`DT_NEEDED`), read from the file itself. The x86 rig asks
//! `ldd`, which runs the program's loader; a program of another architecture cannot be run
//! here, so the arm64 rig reads its headers instead ([`needs`]) and finds the libraries in a
//! folder of that architecture's packages ([`library_closure`]).
//!
//! Only what those two questions need is parsed: 64-bit little-endian ELF (x86_64 and
//! aarch64 Linux), its program headers and its dynamic section.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// `e_machine` of an x86_64 program.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of an aarch64 program.
pub const EM_AARCH64: u16 = 183;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// What an ELF file says it needs at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    /// `e_machine`: [`EM_X86_64`], [`EM_AARCH64`], ...
    pub machine: u16,
    /// The dynamic loader's path (`None`: a static program or a library).
    pub interpreter: Option<String>,
    /// The shared libraries it names, in the order of its dynamic section.
    pub needed: Vec<String>,
}

/// Reads the [`Needs`] of the ELF file `bytes`.
pub fn needs(bytes: &[u8]) -> Result<Needs, String> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |at: usize| -> Result<u16, String> {
        let b = bytes.get(at..at + 2).ok_or("truncated ELF file")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        let b = bytes.get(at..at + 4).ok_or("truncated ELF file")?;
        Ok(u32::from_le_bytes(b.try_into().expect("four bytes")))
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        let b = bytes.get(at..at + 8).ok_or("truncated ELF file")?;
        Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
    };
    let index = |v: u64| usize::try_from(v).map_err(|_| "an offset beyond memory".to_string());
    let machine = u16_at(18)?;
    let phoff = index(u64_at(32)?)?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    // (type, offset, vaddr, filesz) of every program header.
    let mut headers = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        headers.push((
            u32_at(at)?,
            u64_at(at + 8)?,
            u64_at(at + 16)?,
            u64_at(at + 32)?,
        ));
    }
    let c_string = |at: usize| -> Result<String, String> {
        let rest = bytes.get(at..).ok_or("a string outside the file")?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("an unterminated string")?;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };
    let interpreter = headers
        .iter()
        .find(|h| h.0 == PT_INTERP)
        .map(|h| c_string(index(h.1)?))
        .transpose()?;
    let Some(dynamic) = headers.iter().find(|h| h.0 == PT_DYNAMIC) else {
        return Ok(Needs {
            machine,
            interpreter,
            needed: Vec::new(),
        });
    };
    let mut strtab = None;
    let mut offsets = Vec::new();
    let (start, len) = (index(dynamic.1)?, index(dynamic.3)?);
    for at in (start..start + len).step_by(16) {
        let (tag, value) = (u64_at(at)?, u64_at(at + 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => offsets.push(value),
            DT_STRTAB => strtab = Some(value),
            _ => {}
        }
    }
    let needed = match strtab {
        None if offsets.is_empty() => Vec::new(),
        None => return Err("a dynamic section without a string table".into()),
        Some(address) => {
            // DT_STRTAB is an address: the loadable segment holding it gives its file offset.
            let (_, offset, vaddr, _) = headers
                .iter()
                .find(|h| h.0 == PT_LOAD && h.2 <= address && address < h.2 + h.3)
                .ok_or("the string table is in no loadable segment")?;
            let table = index(address - vaddr + offset)?;
            offsets
                .iter()
                .map(|&o| c_string(table + index(o)?))
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Needs {
        machine,
        interpreter,
        needed,
    })
}

/// Folders of a Debian root where the dynamic loader looks for libraries, multiarch first.
const LIBRARY_DIRS: &[&str] = &[
    "lib/aarch64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib",
    "usr/lib",
];

/// The files a program (a path inside `root`, a folder laid out as a Debian system, such as
/// packages unpacked with `dpkg -x`) needs from `root`: its loader and every library it names,
/// and those they name, as `/`-rooted paths inside `root` (the paths to give them on the
/// machine that runs it). Symbolic links are resolved inside `root`. A library found nowhere
/// is an error that names it.
pub fn library_closure(root: &Path, program: &Path) -> Result<Vec<String>, String> {
    let read =
        |path: &Path| fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
    let first = needs(&read(program)?).map_err(|e| format!("{}: {e}", program.display()))?;
    let mut found = BTreeSet::new();
    let mut out = Vec::new();
    if let Some(loader) = &first.interpreter {
        resolve_in(root, loader).ok_or_else(|| {
            format!(
                "{}: its loader {loader} is not in {}",
                program.display(),
                root.display()
            )
        })?;
        found.insert(loader.clone());
        out.push(loader.clone());
    }
    let mut queue: Vec<(String, String)> = first
        .needed
        .iter()
        .map(|n| (n.clone(), program.display().to_string()))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    while let Some((name, wanted_by)) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let (inside, host) = LIBRARY_DIRS
            .iter()
            .map(|dir| format!("/{dir}/{name}"))
            .find_map(|inside| resolve_in(root, &inside).map(|host| (inside, host)))
            .ok_or_else(|| {
                format!(
                    "{wanted_by} needs {name}, which is in none of {} (its package is missing)",
                    root.display()
                )
            })?;
        let library = needs(&read(&host)?).map_err(|e| format!("{}: {e}", host.display()))?;
        for next in library.needed {
            queue.push((next, name.clone()));
        }
        if found.insert(inside.clone()) {
            out.push(inside);
        }
    }
    Ok(out)
}

/// The host path of `/`-rooted `path` inside `root`, following symbolic links (absolute ones
/// relative to `root`), or `None` when it does not lead to a file.
pub fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        parts.push(part);
        let host = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        if let Ok(target) = fs::read_link(&host) {
            hops += 1;
            if hops > 40 {
                return None;
            }
            parts.pop();
            let target = target.to_string_lossy().into_owned();
            if target.starts_with('/') {
                parts.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_string));
        }
    }
    let host = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    debug_assert!(host.components().all(|c| c != Component::ParentDir));
    host.is_file().then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_program_names_libc_and_its_loader() {
        let Ok(bytes) = fs::read(std::env::current_exe().unwrap()) else {
            return;
        };
        let needs = needs(&bytes).unwrap();
        if cfg!(all(
            target_arch = "x86_64",
            target_os = "linux",
            target_env = "gnu"
        )) {
            assert_eq!(needs.machine, EM_X86_64);
            assert!(needs.interpreter.unwrap().contains("ld-linux"));
            assert!(
                needs.needed.iter().any(|n| n.starts_with("libc.so")),
                "{:?}",
                needs.needed
            );
        }
    }

    #[test]
    fn what_is_not_elf_is_refused() {
        assert!(needs(b"#!/bin/sh\n").is_err());
        assert!(needs(b"\x7fELF\x01\x01").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn links_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib/aarch64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("libx.so.1.2"), b"x").unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", lib.join("libx.so.1")).unwrap();
        // An absolute link means the same path inside the root, never the host's.
        std::os::unix::fs::symlink(
            "/lib/aarch64-linux-gnu/libx.so.1",
            root.path().join("lib/ld.so"),
        )
        .unwrap();
        let found = resolve_in(root.path(), "/lib/ld.so").unwrap();
        assert_eq!(found, lib.join("libx.so.1.2"));
        assert_eq!(
            resolve_in(root.path(), "/lib/../lib/aarch64-linux-gnu/libx.so.1"),
            Some(lib.join("libx.so.1.2"))
        );
        assert_eq!(resolve_in(root.path(), "/lib/none.so"), None);
    }
}
