//! A read-only ISO 9660 (ECMA-119) reader with Joliet and Rock Ridge names.
//!
//! Why not a crate: `cdfs` (the successor of `iso9660`) calls itself a work in progress, has
//! seen no release since 2023, reads no El Torito catalogue, and its handling of hostile
//! images (offsets past the end, looping continuation areas, huge directories) is not
//! documented. Vivarium reads ISOs that users drop on it, so every number read from the image
//! is treated as untrusted: this reader bounds-checks every offset and length against the
//! image, caps directory sizes, continuation chains and path depth, reads with positioned
//! reads (no mapping of the whole file), and never panics on bad input.

use std::io::Write;

use super::IsoError;

/// Size of an ISO 9660 logical sector (the only size this reader accepts).
pub const SECTOR: u64 = 2048;
/// First sector of the volume descriptor set.
const DESCRIPTORS_START: u64 = 16;
/// Most volume descriptors read before giving up on finding the terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Largest directory (its extent) the reader loads, in bytes.
pub const MAX_DIRECTORY_BYTES: u64 = 8 << 20;
/// Most entries one directory may list.
pub const MAX_DIRECTORY_ENTRIES: usize = 100_000;
/// Most path components a lookup follows.
pub const MAX_PATH_DEPTH: usize = 32;
/// Most SUSP continuation areas followed for one directory record.
const MAX_CONTINUATIONS: usize = 16;
/// Most extents one (multi-extent) file may have.
const MAX_EXTENTS: usize = 1024;

/// Somewhere bytes of an image can be read from at a given offset.
pub trait ImageSource {
    /// Length of the image in bytes.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; fails if the image ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ImageSource for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(buf.len()));
        match (start, end) {
            (Some(s), Some(e)) if e <= <[u8]>::len(self) => {
                buf.copy_from_slice(&self[s..e]);
                Ok(())
            }
            _ => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// A file on disk, read with positioned reads.
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl FileSource {
    /// Wraps an open file of `len` bytes.
    pub fn new(file: std::fs::File, len: u64) -> Self {
        FileSource { file, len }
    }
}

impl ImageSource for FileSource {
    fn len(&self) -> u64 {
        self.len
    }
    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            let n = std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// Which names the directory tree is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScheme {
    /// Rock Ridge `NM` names on the primary tree (POSIX names, case kept).
    RockRidge {
        /// Bytes to skip at the start of each system use area (from the `SP` entry).
        skip: u8,
    },
    /// Joliet names (UCS-2) on the supplementary tree.
    Joliet,
    /// Plain ISO 9660 names (`NAME.EXT;1`, shown without the version).
    Plain,
}

/// One run of contiguous sectors holding (part of) a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First sector.
    pub sector: u32,
    /// Length in bytes.
    pub len: u32,
}

/// An entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name under the image's name scheme.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
    /// Where its data is (several extents for a file of 4 GiB or more).
    pub extents: Vec<Extent>,
    /// Rock Ridge symbolic link target, if it is one.
    pub symlink: Option<String>,
}

impl DirEntry {
    /// Size of the file's data in bytes.
    pub fn size(&self) -> u64 {
        self.extents.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// Facts from the volume descriptors.
#[derive(Debug, Clone, Default)]
pub struct VolumeInfo {
    /// Volume identifier of the primary descriptor (trimmed).
    pub volume_id: String,
    /// Volume identifier of the Joliet descriptor, if any (trimmed).
    pub joliet_volume_id: Option<String>,
    /// Publisher identifier (trimmed).
    pub publisher: String,
    /// Application identifier (trimmed).
    pub application: String,
    /// Volume size in bytes as the primary descriptor states it.
    pub volume_bytes: u64,
    /// Sector of the El Torito boot catalogue, if the image has a boot record.
    pub boot_catalog_sector: Option<u32>,
}

/// An open ISO 9660 image.
pub struct IsoImage<S: ImageSource + ?Sized> {
    source: Box<S>,
    info: VolumeInfo,
    scheme: NameScheme,
    root: Extent,
}

impl<S: ImageSource + ?Sized> std::fmt::Debug for IsoImage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsoImage")
            .field("info", &self.info)
            .field("scheme", &self.scheme)
            .finish()
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A d-/a-character field, trimmed of padding.
fn text_field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches([' ', '\0'])
        .trim()
        .to_string()
}

/// A Joliet (UCS-2 big-endian) field, trimmed of padding.
fn ucs2_field(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
        .trim_end_matches([' ', '\0'])
        .trim()
        .to_string()
}

impl<S: ImageSource + ?Sized> IsoImage<S> {
    /// Opens an image: reads the volume descriptors and picks the richest name scheme (Rock
    /// Ridge, then Joliet, then plain names).
    pub fn open(source: Box<S>) -> Result<Self, IsoError> {
        let len = source.len();
        if len == 0 {
            return Err(IsoError::Empty);
        }
        if len < (DESCRIPTORS_START + 1) * SECTOR {
            return Err(IsoError::NotIso(format!(
                "it is only {len} bytes long, smaller than any ISO 9660 image"
            )));
        }
        let mut info = VolumeInfo::default();
        let mut primary_root: Option<Extent> = None;
        let mut joliet_root: Option<Extent> = None;
        let mut sector = [0u8; SECTOR as usize];
        for index in 0..MAX_DESCRIPTORS {
            let offset = (DESCRIPTORS_START + index) * SECTOR;
            if offset + SECTOR > len {
                break;
            }
            source
                .read_exact_at(&mut sector, offset)
                .map_err(|e| IsoError::Read(e.to_string()))?;
            if &sector[1..6] != b"CD001" {
                if index == 0 {
                    return Err(IsoError::NotIso(
                        "it has no ISO 9660 volume descriptor (no `CD001` at sector 16)".into(),
                    ));
                }
                break;
            }
            match sector[0] {
                0 if sector[7..7 + 23] == *b"EL TORITO SPECIFICATION" => {
                    info.boot_catalog_sector = Some(le32(&sector, 71));
                }
                1 if primary_root.is_none() => {
                    if le16(&sector, 128) != SECTOR as u16 {
                        return Err(IsoError::Corrupt(format!(
                            "its logical block size is {} bytes; only 2048 is supported",
                            le16(&sector, 128)
                        )));
                    }
                    info.volume_id = text_field(&sector[40..72]);
                    info.publisher = text_field(&sector[318..446]);
                    info.application = text_field(&sector[574..702]);
                    info.volume_bytes = u64::from(le32(&sector, 80)) * SECTOR;
                    primary_root = Some(root_extent(&sector)?);
                }
                2 if joliet_root.is_none()
                    && sector[88] == b'%'
                    && sector[89] == b'/'
                    && matches!(sector[90], b'@' | b'C' | b'E') =>
                {
                    info.joliet_volume_id = Some(ucs2_field(&sector[40..72]));
                    joliet_root = Some(root_extent(&sector)?);
                }
                255 => break,
                _ => {}
            }
        }
        let Some(primary) = primary_root else {
            return Err(IsoError::NotIso(
                "it has no primary volume descriptor".into(),
            ));
        };
        if info.volume_bytes > len {
            return Err(IsoError::Truncated {
                have: len,
                want: info.volume_bytes,
            });
        }
        let mut image = IsoImage {
            source,
            info,
            scheme: NameScheme::Plain,
            root: primary,
        };
        image.check_extent(primary)?;
        if let Some(skip) = image.rock_ridge_skip(primary)? {
            image.scheme = NameScheme::RockRidge { skip };
        } else if let Some(joliet) = joliet_root
            && image.check_extent(joliet).is_ok()
        {
            image.scheme = NameScheme::Joliet;
            image.root = joliet;
        }
        Ok(image)
    }

    /// The volume descriptors' facts.
    pub fn info(&self) -> &VolumeInfo {
        &self.info
    }

    /// The name scheme in use.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// Length of the image in bytes.
    pub fn len(&self) -> u64 {
        self.source.len()
    }

    /// Whether the image is empty (never true for an open image).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// Reads `buf.len()` bytes at `offset`, which must lie inside the image.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IsoError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| IsoError::Corrupt("an offset overflows".into()))?;
        if end > self.source.len() {
            return Err(IsoError::Corrupt(format!(
                "it points at bytes {offset}..{end}, past its end ({} bytes)",
                self.source.len()
            )));
        }
        self.source
            .read_exact_at(buf, offset)
            .map_err(|e| IsoError::Read(e.to_string()))
    }

    /// Reads one whole sector.
    pub fn read_sector(&self, sector: u64) -> Result<[u8; SECTOR as usize], IsoError> {
        let mut buf = [0u8; SECTOR as usize];
        let offset = sector
            .checked_mul(SECTOR)
            .ok_or_else(|| IsoError::Corrupt("a sector number overflows".into()))?;
        self.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn check_extent(&self, extent: Extent) -> Result<(), IsoError> {
        let start = u64::from(extent.sector) * SECTOR;
        let end = start + u64::from(extent.len);
        if end > self.source.len() {
            return Err(IsoError::Corrupt(format!(
                "a file or directory lies at bytes {start}..{end}, past the image's end ({} bytes)",
                self.source.len()
            )));
        }
        Ok(())
    }

    /// The Rock Ridge skip length if the root's `.` record starts with an `SP` entry.
    fn rock_ridge_skip(&self, root: Extent) -> Result<Option<u8>, IsoError> {
        if root.len < 34 {
            return Ok(None);
        }
        let sector = self.read_sector(u64::from(root.sector))?;
        let Some(record) = record_at(&sector, 0) else {
            return Ok(None);
        };
        let system_use = record.system_use;
        if system_use.len() >= 7
            && &system_use[0..2] == b"SP"
            && system_use[4] == 0xBE
            && system_use[5] == 0xEF
        {
            return Ok(Some(system_use[6]));
        }
        Ok(None)
    }

    /// Lists the directory at `extent`.
    fn read_dir_extent(&self, extent: Extent) -> Result<Vec<DirEntry>, IsoError> {
        self.check_extent(extent)?;
        if u64::from(extent.len) > MAX_DIRECTORY_BYTES {
            return Err(IsoError::Corrupt(format!(
                "a directory is {} bytes, more than the {} this reader accepts",
                extent.len, MAX_DIRECTORY_BYTES
            )));
        }
        let mut data = vec![0u8; extent.len as usize];
        self.read_at(&mut data, u64::from(extent.sector) * SECTOR)?;
        let mut entries: Vec<DirEntry> = Vec::new();
        // A multi-extent file's records share a name; the last one has the flag clear.
        let mut pending: Option<DirEntry> = None;
        for block in data.chunks(SECTOR as usize) {
            let mut at = 0usize;
            while let Some(record) = record_at(block, at) {
                at += record.length;
                if record.name == [0] || record.name == [1] {
                    continue;
                }
                let extent = Extent {
                    sector: record.extent,
                    len: record.data_len,
                };
                let multi = record.flags & 0x80 != 0;
                let is_dir = record.flags & 0x02 != 0;
                let rock = match self.scheme {
                    NameScheme::RockRidge { skip } => self.rock_ridge(&record, skip)?,
                    _ => RockRidge::default(),
                };
                if rock.relocated {
                    continue;
                }
                let name = match (self.scheme, rock.name) {
                    (NameScheme::RockRidge { .. }, Some(name)) => name,
                    (NameScheme::Joliet, _) => {
                        plain_name(ucs2_field(record.name).as_bytes(), is_dir)
                    }
                    _ => plain_name(record.name, is_dir),
                };
                if name.is_empty() || name == "." || name == ".." || name.contains('/') {
                    continue;
                }
                if let Some(mut open) = pending.take() {
                    if open.name == name && open.extents.len() < MAX_EXTENTS {
                        open.extents.push(extent);
                        if multi {
                            pending = Some(open);
                        } else {
                            entries.push(open);
                        }
                        continue;
                    }
                    entries.push(open);
                }
                let entry = DirEntry {
                    name,
                    is_dir,
                    extents: vec![extent],
                    symlink: rock.symlink,
                };
                if multi && !is_dir {
                    pending = Some(entry);
                } else {
                    entries.push(entry);
                }
                if entries.len() > MAX_DIRECTORY_ENTRIES {
                    return Err(IsoError::Corrupt(format!(
                        "a directory lists more than {MAX_DIRECTORY_ENTRIES} entries"
                    )));
                }
            }
        }
        if let Some(open) = pending {
            entries.push(open);
        }
        Ok(entries)
    }

    /// Reads the Rock Ridge entries of a record (following continuation areas).
    fn rock_ridge(&self, record: &Record<'_>, skip: u8) -> Result<RockRidge, IsoError> {
        let mut rock = RockRidge::default();
        let mut name = String::new();
        let mut has_name = false;
        let mut link = String::new();
        let mut has_link = false;
        let mut link_continues = false;
        let mut area: Vec<u8> = record
            .system_use
            .get(usize::from(skip)..)
            .unwrap_or(&[])
            .to_vec();
        let mut continuations = 0;
        loop {
            let mut next: Option<(u32, u32, u32)> = None;
            let mut at = 0usize;
            while at + 4 <= area.len() {
                let sig = [area[at], area[at + 1]];
                let len = usize::from(area[at + 2]);
                if len < 4 || at + len > area.len() {
                    break;
                }
                let entry = &area[at..at + len];
                match &sig {
                    b"ST" => break,
                    b"CE" if len >= 28 => {
                        next = Some((le32(entry, 4), le32(entry, 12), le32(entry, 20)));
                    }
                    b"NM" if len >= 5 => {
                        let flags = entry[4];
                        if flags & 0x06 == 0 {
                            name.push_str(&String::from_utf8_lossy(&entry[5..]));
                            has_name = true;
                        }
                    }
                    b"SL" if len >= 5 => {
                        has_link = true;
                        let mut c = 5usize;
                        while c + 2 <= entry.len() {
                            let flags = entry[c];
                            let clen = usize::from(entry[c + 1]);
                            let Some(content) = entry.get(c + 2..c + 2 + clen) else {
                                break;
                            };
                            if !link_continues && !link.is_empty() && !link.ends_with('/') {
                                link.push('/');
                            }
                            if flags & 0x08 != 0 {
                                link.clear();
                                link.push('/');
                            } else if flags & 0x02 != 0 {
                                link.push('.');
                            } else if flags & 0x04 != 0 {
                                link.push_str("..");
                            } else {
                                link.push_str(&String::from_utf8_lossy(content));
                            }
                            link_continues = flags & 0x01 != 0;
                            c += 2 + clen;
                        }
                    }
                    b"RE" => rock.relocated = true,
                    _ => {}
                }
                at += len;
                if name.len() > 1024 || link.len() > 4096 {
                    return Err(IsoError::Corrupt(
                        "a Rock Ridge name or link is longer than any real one".into(),
                    ));
                }
            }
            let Some((sector, offset, length)) = next else {
                break;
            };
            continuations += 1;
            if continuations > MAX_CONTINUATIONS || offset >= SECTOR as u32 {
                return Err(IsoError::Corrupt(
                    "a Rock Ridge continuation area chain is too long or points outside a sector"
                        .into(),
                ));
            }
            let length = length.min(SECTOR as u32 - offset);
            let mut buf = vec![0u8; length as usize];
            self.read_at(&mut buf, u64::from(sector) * SECTOR + u64::from(offset))?;
            area = buf;
        }
        if has_name {
            rock.name = Some(name);
        }
        if has_link {
            rock.symlink = Some(link);
        }
        Ok(rock)
    }

    /// Lists the root directory.
    pub fn root_dir(&self) -> Result<Vec<DirEntry>, IsoError> {
        self.read_dir_extent(self.root)
    }

    /// Lists a directory entry's contents.
    pub fn read_dir(&self, dir: &DirEntry) -> Result<Vec<DirEntry>, IsoError> {
        if !dir.is_dir {
            return Err(IsoError::Corrupt(format!(
                "`{}` is not a directory",
                dir.name
            )));
        }
        self.read_dir_extent(dir.extents[0])
    }

    /// Finds the entry at `path` (components separated by `/`, leading `/` optional). Each
    /// component matches exactly first, then without regard to ASCII case.
    pub fn find(&self, path: &str) -> Result<Option<DirEntry>, IsoError> {
        let components: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if components.len() > MAX_PATH_DEPTH {
            return Err(IsoError::Corrupt(format!(
                "the path `{path}` is deeper than {MAX_PATH_DEPTH} levels"
            )));
        }
        if components.contains(&"..") {
            return Ok(None);
        }
        let mut current = DirEntry {
            name: String::new(),
            is_dir: true,
            extents: vec![self.root],
            symlink: None,
        };
        for component in components {
            if !current.is_dir {
                return Ok(None);
            }
            let entries = self.read_dir(&current)?;
            let found = entries
                .iter()
                .position(|e| e.name == component)
                .or_else(|| {
                    entries
                        .iter()
                        .position(|e| e.name.eq_ignore_ascii_case(component))
                });
            match found {
                Some(index) => current = entries.into_iter().nth(index).expect("index found"),
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }

    /// Whether `path` exists and is a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        matches!(self.find(path), Ok(Some(e)) if e.is_dir)
    }

    /// Whether `path` exists and is a file.
    pub fn is_file(&self, path: &str) -> bool {
        matches!(self.find(path), Ok(Some(e)) if !e.is_dir)
    }

    /// Reads the file at `path` whole, if it exists and is at most `limit` bytes.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, IsoError> {
        let Some(entry) = self.find(path)? else {
            return Ok(None);
        };
        if entry.is_dir {
            return Ok(None);
        }
        if entry.size() > limit {
            return Err(IsoError::Corrupt(format!(
                "`{path}` is {} bytes, more than the {limit} expected of it",
                entry.size()
            )));
        }
        let mut out = Vec::with_capacity(entry.size() as usize);
        self.copy_entry(&entry, &mut out, &mut |_| true)?;
        Ok(Some(out))
    }

    /// Reads the first bytes of a file (up to `buf.len()`); returns how many were read.
    pub fn read_head(&self, entry: &DirEntry, buf: &mut [u8]) -> Result<usize, IsoError> {
        let Some(first) = entry.extents.first() else {
            return Ok(0);
        };
        self.check_extent(*first)?;
        let n = buf.len().min(first.len as usize);
        self.read_at(&mut buf[..n], u64::from(first.sector) * SECTOR)?;
        Ok(n)
    }

    /// Copies a file's data to `out` in chunks; `keep_going(bytes_done)` is asked after each
    /// chunk and stops the copy (with [`IsoError::Cancelled`]) when it says no.
    pub fn copy_entry(
        &self,
        entry: &DirEntry,
        out: &mut dyn Write,
        keep_going: &mut dyn FnMut(u64) -> bool,
    ) -> Result<u64, IsoError> {
        for extent in &entry.extents {
            self.check_extent(*extent)?;
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        for extent in &entry.extents {
            let mut offset = u64::from(extent.sector) * SECTOR;
            let mut left = u64::from(extent.len);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                self.read_at(&mut buf[..n], offset)?;
                out.write_all(&buf[..n])
                    .map_err(|e| IsoError::Write(e.to_string()))?;
                offset += n as u64;
                left -= n as u64;
                done += n as u64;
                if !keep_going(done) {
                    return Err(IsoError::Cancelled);
                }
            }
        }
        Ok(done)
    }
}

/// What Rock Ridge says about a record.
#[derive(Debug, Default)]
struct RockRidge {
    name: Option<String>,
    symlink: Option<String>,
    relocated: bool,
}

/// A directory record, borrowed from a sector.
struct Record<'a> {
    length: usize,
    extent: u32,
    data_len: u32,
    flags: u8,
    name: &'a [u8],
    system_use: &'a [u8],
}

/// The directory record at `at` in `block`, if there is a well-formed one (records never
/// cross a sector; a zero length byte ends the sector's records).
fn record_at(block: &[u8], at: usize) -> Option<Record<'_>> {
    let length = usize::from(*block.get(at)?);
    if length < 34 || at + length > block.len() {
        return None;
    }
    let record = &block[at..at + length];
    let name_len = usize::from(record[32]);
    if 33 + name_len > length {
        return None;
    }
    let name = &record[33..33 + name_len];
    let su_start = 33 + name_len + usize::from(name_len % 2 == 0);
    let system_use = record.get(su_start..).unwrap_or(&[]);
    Some(Record {
        length,
        extent: le32(record, 2),
        data_len: le32(record, 10),
        flags: record[25],
        name,
        system_use,
    })
}

/// The root directory extent from a volume descriptor's root record (bytes 156..190).
fn root_extent(descriptor: &[u8]) -> Result<Extent, IsoError> {
    let record = record_at(&descriptor[156..190], 0)
        .ok_or_else(|| IsoError::Corrupt("its root directory record is malformed".into()))?;
    Ok(Extent {
        sector: record.extent,
        len: record.data_len,
    })
}

/// A plain ISO 9660 name without its `;1` version and a trailing dot.
fn plain_name(raw: &[u8], is_dir: bool) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut name: &str = &text;
    if !is_dir {
        if let Some((base, _version)) = name.rsplit_once(';') {
            name = base;
        }
        name = name.strip_suffix('.').unwrap_or(name);
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_an_iso() {
        let empty: Box<[u8]> = Box::new([]);
        assert!(matches!(IsoImage::open(empty), Err(IsoError::Empty)));
        let small: Box<[u8]> = vec![0u8; 1000].into_boxed_slice();
        assert!(matches!(IsoImage::open(small), Err(IsoError::NotIso(_))));
        let zeros: Box<[u8]> = vec![0u8; 40 * 2048].into_boxed_slice();
        assert!(matches!(IsoImage::open(zeros), Err(IsoError::NotIso(_))));
    }

    #[test]
    fn plain_names_drop_the_version() {
        assert_eq!(plain_name(b"README.TXT;1", false), "README.TXT");
        assert_eq!(plain_name(b"NOEXT.;1", false), "NOEXT");
        assert_eq!(plain_name(b"DIR", true), "DIR");
    }

    #[test]
    fn records_are_bounds_checked() {
        let mut block = [0u8; 64];
        block[0] = 60;
        block[32] = 200; // name longer than the record
        assert!(record_at(&block, 0).is_none());
        block[0] = 100; // record longer than the block
        assert!(record_at(&block, 0).is_none());
        assert!(record_at(&block, 63).is_none());
        assert!(record_at(&block, 64).is_none());
    }
}
