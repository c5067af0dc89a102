//! File system helpers: atomic replacement, directory syncs, free space, sizes.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};

/// The folder `path` is in: `.` for a bare file name (whose `parent()` is the empty path, which
/// cannot be opened to sync it).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `contents` atomically: the data goes to a temporary file in the same
/// directory, is synced, and is renamed over `path`; then the directory is synced. A crash at
/// any point leaves either the old or the new file, never a mix.
pub fn atomic_write(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("`{}` is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io(format!("could not write `{}`", path.display()), e))
}

/// Syncs a directory so that renames and creations in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes free for an unprivileged user on the file system holding `path`.
pub fn free_space(path: &Path) -> Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("`{}` contains a NUL byte", path.display())))?;
    // SAFETY: `statvfs` is plain old data, so all-zero bytes are a valid value.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` a valid, writable statvfs
    // that outlives the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if rc != 0 {
        return Err(Error::io(
            format!("could not read the free space of `{}`", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    // The field types differ between Linux (u64) and macOS (u32 blocks, u64 sizes).
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

/// Bytes a file really occupies on disk (its allocated blocks), which for a sparse disk image
/// is much less than its length.
pub fn allocated_bytes(path: &Path) -> std::io::Result<u64> {
    Ok(fs::symlink_metadata(path)?.blocks().saturating_mul(512))
}

/// Sum of [`allocated_bytes`] over every file below `dir` (not following symlinks).
pub fn allocated_bytes_in(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => allocated_bytes_in(&path),
                Ok(_) => allocated_bytes(&path).unwrap_or(0),
                Err(_) => 0,
            }
        })
        .sum()
}

/// Parses a size such as `20G`, `512M`, `1.5GiB`, `4096` (bytes). Suffixes are binary
/// (K = 1024).
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || {
        Error::InvalidInput(format!(
            "bad size `{text}`: write a number with an optional unit, e.g. 20G, 512M, 4096"
        ))
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => {
            return Err(Error::InvalidInput(format!(
                "bad size `{text}`: `{other}` is not a unit; use K, M, G, T or P (binary: \
                 1K = 1024 bytes), e.g. 20G"
            )));
        }
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(1u64 << shift).ok_or_else(bad);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// Formats a byte count for people: `20 GiB`, `1.5 MiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || (value - value.round()).abs() < 0.05 {
        format!("{} {}", value.round() as u64, UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Creates `dir` (and its parents) if needed and makes it private to this user (mode 0700),
/// as a folder of sockets must be.
#[cfg(unix)]
pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_is_in_the_current_folder() {
        // `Path::parent` gives the empty path for "shot.png": syncing that folder failed after
        // the file had been written, so `vivarium screenshot VM shot.png` reported an error.
        assert_eq!(parent_dir(Path::new("shot.png")), Path::new("."));
        assert_eq!(parent_dir(Path::new("pics/shot.png")), Path::new("pics"));
        assert_eq!(parent_dir(Path::new("/tmp/shot.png")), Path::new("/tmp"));
        let dir = tempfile::tempdir().unwrap();
        sync_dir(parent_dir(Path::new("shot.png"))).unwrap();
        atomic_write(&dir.path().join("shot.png"), b"png").unwrap();
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("20GiB").unwrap(), 20 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("1P").unwrap(), 1 << 50);
        let unit = parse_size("12Q").unwrap_err().to_string();
        assert!(unit.contains("`q` is not a unit"), "{unit}");
        for bad in ["", "G", "12Q", "-1G", "99999999999T", "1..2G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_format() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(20 << 30), "20 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1 << 50), "1 PiB");
        assert_eq!(format_size(1), "1 B");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.toml");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn free_space_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
    }
}
