//! Disk images: create, recognise, copy (sparse, reflink), flatten, and qcow2 overlays.
//!
//! qcow2 is read and written with the `imago` crate. Raw images are plain files; copies keep
//! them sparse by copying only the data extents (`SEEK_DATA`/`SEEK_HOLE`), or share every block
//! with a reflink (`FICLONE`) where the file system can.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, Mapping};
use imago::{PermissiveImplicitOpenGate, Storage, StorageCreateOptions};

use crate::config::DiskFormat;
use crate::error::{Error, Result};

/// The qcow2 magic number, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Unit in which copies check for cancellation and report progress.
const COPY_CHUNK: u64 = 32 << 20;

/// What a disk image file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format found in the file.
    pub format: DiskFormat,
    /// The size the guest sees, in bytes.
    pub virtual_size: u64,
    /// For qcow2: the backing file named in the header, if any.
    pub backing_file: Option<String>,
}

/// Receives progress of long operations and tells them when to stop.
pub trait Progress: Sync {
    /// `done` of `total` bytes have been handled.
    fn update(&self, done: u64, total: u64);
    /// Whether the operation should stop (it then undoes itself and returns
    /// [`Error::Cancelled`]).
    fn cancelled(&self) -> bool;
}

/// A [`Progress`] that reports nothing and never cancels.
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _done: u64, _total: u64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that forwards updates to a closure and cancels when a flag is set.
pub struct ProgressFn<'a, F: Fn(u64, u64) + Sync> {
    /// Called with (done, total).
    pub on_update: F,
    /// Set to true to cancel.
    pub cancel: &'a AtomicBool,
}

impl<F: Fn(u64, u64) + Sync> Progress for ProgressFn<'_, F> {
    fn update(&self, done: u64, total: u64) {
        (self.on_update)(done, total)
    }
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Creates a new, empty (sparse) disk image of `size` bytes. Fails if `path` exists.
pub fn create(path: &Path, format: DiskFormat, size: u64) -> Result<()> {
    let ctx = || format!("could not create disk image `{}`", path.display());
    match format {
        DiskFormat::Raw => {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(|e| Error::io(ctx(), e))?;
            if let Err(e) = file.set_len(size) {
                drop(file);
                let _ = std::fs::remove_file(path);
                // EFBIG: the file system's largest file is smaller (ext4's is 16 TiB - 4 KiB).
                if e.raw_os_error() == Some(libc::EFBIG) {
                    return Err(Error::InvalidInput(format!(
                        "a raw disk of {} is larger than the file system holding the library \
                         allows one file to be: choose a smaller --disk-size, or \
                         --disk-format qcow2",
                        crate::fsutil::format_size(size)
                    )));
                }
                return Err(Error::io(ctx(), e));
            }
            file.sync_all().map_err(|e| Error::io(ctx(), e))
        }
        DiskFormat::Qcow2 => create_qcow2(path, size, None),
    }
}

/// Creates a qcow2 copy-on-write overlay at `path` over `backing`, whose path is written into
/// the header relative to the overlay's directory, as qcow2 defines it.
pub fn create_overlay(
    path: &Path,
    backing_relative: &str,
    backing_format: DiskFormat,
    size: u64,
) -> Result<()> {
    create_qcow2(path, size, Some((backing_relative, backing_format)))
}

fn create_qcow2(path: &Path, size: u64, backing: Option<(&str, DiskFormat)>) -> Result<()> {
    let ctx = || format!("could not create qcow2 image `{}`", path.display());
    // imago creates the file with O_EXCL (it never clobbers an existing file).
    let storage = imago::file::File::create_open(StorageCreateOptions::new().filename(path))
        .map_err(|e| Error::io(ctx(), e))?;
    let result = (|| -> std::io::Result<()> {
        let mut builder = Qcow2::<imago::file::File>::create_builder(storage).size(size);
        if let Some((file, format)) = backing {
            builder = builder.backing(file.to_string(), format.extension().to_string());
        }
        builder.create()?;
        File::open(path)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(path);
        return Err(Error::io(ctx(), e));
    }
    Ok(())
}

/// Recognises a disk image: qcow2 by its header, raw otherwise; refuses files that are
/// clearly something else (an ISO, another VM format, an empty file, a directory).
pub fn probe(path: &Path) -> Result<ImageInfo> {
    let not_image = |why: String| Error::NotADiskImage {
        path: path.to_path_buf(),
        why,
    };
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_image("the file does not exist".into()),
        std::io::ErrorKind::PermissionDenied => {
            not_image("you have no permission to read it".into())
        }
        _ => Error::io(format!("could not read `{}`", path.display()), e),
    })?;
    if meta.is_dir() {
        return Err(not_image("it is a folder, not a file".into()));
    }
    if !meta.is_file() {
        return Err(not_image("it is not a regular file".into()));
    }
    let len = meta.len();
    if len == 0 {
        return Err(not_image("it is empty".into()));
    }
    let mut file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            not_image("you have no permission to read it".into())
        }
        _ => Error::io(format!("could not open `{}`", path.display()), e),
    })?;
    let mut head = vec![0u8; 4096.min(len as usize)];
    file.read_exact(&mut head)
        .map_err(|e| Error::io(format!("could not read `{}`", path.display()), e))?;

    if head.starts_with(&QCOW2_MAGIC) {
        return probe_qcow2(path, &head).map_err(not_image);
    }
    if let Some(other) = foreign_format(&mut file, &head, len) {
        return Err(not_image(other));
    }
    if len % 512 != 0 {
        return Err(not_image(format!(
            "its size ({len} bytes) is not a multiple of 512 bytes, so it is not a raw disk image"
        )));
    }
    Ok(ImageInfo {
        format: DiskFormat::Raw,
        virtual_size: len,
        backing_file: None,
    })
}

/// Names formats that are not disk images Vivarium can use directly, with what to do.
fn foreign_format(file: &mut File, head: &[u8], len: u64) -> Option<String> {
    let convert = |name: &str| {
        format!(
            "it is a {name} image; convert it first, e.g. `qemu-img convert -O qcow2 FILE disk.qcow2`"
        )
    };
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return Some(convert("VMDK"));
    }
    if head.len() >= 0x44 && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return Some(convert("VirtualBox VDI"));
    }
    if head.starts_with(b"vhdxfile") {
        return Some(convert("VHDX"));
    }
    if head.starts_with(b"conectix") {
        return Some(convert("VHD"));
    }
    let mut footer = [0u8; 512];
    if len >= 512
        && file.seek(SeekFrom::Start(len - 512)).is_ok()
        && file.read_exact(&mut footer).is_ok()
        && footer.starts_with(b"conectix")
    {
        return Some(convert("VHD"));
    }
    let mut volume_descriptor = [0u8; 6];
    if len >= 0x8006
        && file.read_exact_at(&mut volume_descriptor, 0x8000).is_ok()
        && &volume_descriptor[1..6] == b"CD001"
    {
        return Some(
            "it is a CD/DVD image (ISO 9660): create a VM from it with `vivarium create --iso`"
                .into(),
        );
    }
    None
}

fn probe_qcow2(path: &Path, head: &[u8]) -> std::result::Result<ImageInfo, String> {
    let backing_file = qcow2_backing_from_header(path, head)?;
    check_qcow2_extensions(path).map_err(|e| format!("its qcow2 header is damaged ({e})"))?;
    // Open without following the backing chain: only this file's header is checked here.
    let image = Qcow2::<imago::file::File>::builder_path(path)
        .backing(None)
        .write(false)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(|e| format!("its qcow2 header is damaged ({e})"))?;
    let access = FormatAccess::new(image);
    if let Some(why) = qcow2_truncation(path).map_err(|e| e.to_string())? {
        return Err(why);
    }
    Ok(ImageInfo {
        format: DiskFormat::Qcow2,
        virtual_size: access.size(),
        backing_file,
    })
}

/// Why a qcow2 image is cut short, if it is: a table or data cluster that its L1 and L2 tables
/// point at lies (partly) past the end of the file, as in an interrupted download or copy.
/// Such an image opens, and the missing clusters would read as zeros; `qemu-img check` calls
/// them errors. Compressed clusters and images with features Vivarium does not read are
/// left to the qcow2 reader.
fn qcow2_truncation(path: &Path) -> Result<Option<String>> {
    let ctx = || format!("could not read the qcow2 tables of `{}`", path.display());
    let file = File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let len = file.metadata().map_err(|e| Error::io(ctx(), e))?.len();
    let mut head = [0u8; Qcow2Header::V3_FEATURES_END];
    if len < head.len() as u64 {
        return Ok(Some(format!(
            "it is only {len} bytes, shorter than a qcow2 header"
        )));
    }
    file.read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(ctx(), e))?;
    let Ok(header) = Qcow2Header::parse(&head) else {
        return Ok(None);
    };
    if header.incompatible_features & (Qcow2Header::EXTERNAL_DATA_FILE | Qcow2Header::EXTENDED_L2)
        != 0
        || !(9..=21).contains(&header.cluster_bits)
    {
        return Ok(None);
    }
    let cut = |what: &str, end: u64| {
        Some(format!(
            "it is cut short: it is {len} bytes, but its {what} reaches byte {end} (an \
             interrupted download or copy? get the whole image again)"
        ))
    };
    let cluster_size = 1u64 << header.cluster_bits;
    let l1_end = header
        .l1_table_offset
        .saturating_add(u64::from(header.l1_size) * 8);
    if l1_end > len {
        return Ok(cut("L1 table", l1_end));
    }
    let mut l1 = vec![0u8; u64::from(header.l1_size) as usize * 8];
    file.read_exact_at(&mut l1, header.l1_table_offset)
        .map_err(|e| Error::io(ctx(), e))?;
    const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
    const COMPRESSED: u64 = 1 << 62;
    let mut l2 = vec![0u8; cluster_size as usize];
    for entry in l1.chunks_exact(8) {
        let l2_offset = u64::from_be_bytes(entry.try_into().expect("8 bytes")) & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        if l2_offset.saturating_add(cluster_size) > len {
            return Ok(cut("L2 table", l2_offset.saturating_add(cluster_size)));
        }
        file.read_exact_at(&mut l2, l2_offset)
            .map_err(|e| Error::io(ctx(), e))?;
        for entry in l2.chunks_exact(8) {
            let entry = u64::from_be_bytes(entry.try_into().expect("8 bytes"));
            if entry & COMPRESSED != 0 {
                continue;
            }
            let data = entry & OFFSET_MASK;
            if data != 0 && data.saturating_add(cluster_size) > len {
                return Ok(cut("data", data.saturating_add(cluster_size)));
            }
        }
    }
    Ok(None)
}

/// The fields of a qcow2 header that Vivarium reads itself, at the byte offsets the qcow2
/// specification gives them (versions 2 and 3; version 2 has no feature bits).
#[derive(Debug, Clone, Copy)]
struct Qcow2Header {
    /// Where the backing file name starts in the file (0: no backing file).
    backing_file_offset: u64,
    /// Length of the backing file name in bytes.
    backing_file_size: u32,
    /// log2 of the cluster size.
    cluster_bits: u32,
    /// Entries in the L1 table.
    l1_size: u32,
    /// Where the L1 table starts in the file.
    l1_table_offset: u64,
    /// Internal snapshots in the image.
    nb_snapshots: u32,
    /// Incompatible feature bits (version 3).
    incompatible_features: u64,
    /// Where the header extensions start: the header's length (72 for version 2).
    header_length: u32,
}

impl Qcow2Header {
    /// Bytes of a version 2 header, the shortest there is.
    const MIN_LEN: usize = 72;
    /// Bytes of a version 3 header up to and including its feature bits.
    const V3_FEATURES_END: usize = 80;
    /// Bytes of a version 3 header up to and including its `header_length` field.
    const V3_LEN: usize = 104;
    /// Incompatible feature: the image is marked corrupt.
    const CORRUPT: u64 = 1 << 1;
    /// Incompatible feature: guest data lives in an external data file.
    const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// Incompatible feature: L2 entries are 128 bits with subcluster bitmaps.
    const EXTENDED_L2: u64 = 1 << 4;

    /// Parses the start of a qcow2 file (its magic already checked).
    fn parse(head: &[u8]) -> std::result::Result<Qcow2Header, String> {
        if head.len() < Qcow2Header::MIN_LEN {
            return Err("it is too short for a qcow2 header".into());
        }
        let be64 = |at: usize| u64::from_be_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4 bytes"));
        let version = be32(4);
        if !(2..=3).contains(&version) {
            return Err(format!("its qcow2 version {version} is not 2 or 3"));
        }
        let incompatible_features = if version >= 3 && head.len() >= Qcow2Header::V3_FEATURES_END {
            be64(72)
        } else {
            0
        };
        let header_length = if version >= 3 && head.len() >= Qcow2Header::V3_LEN {
            be32(100)
        } else {
            Qcow2Header::MIN_LEN as u32
        };
        Ok(Qcow2Header {
            backing_file_offset: be64(8),
            backing_file_size: be32(16),
            cluster_bits: be32(20),
            l1_size: be32(36),
            l1_table_offset: be64(40),
            nb_snapshots: be32(60),
            incompatible_features,
            header_length,
        })
    }
}

/// The header extension naming the image's feature bits.
const FEATURE_NAME_TABLE: u32 = 0x6803_f857;
/// Bytes of one entry of the feature name table.
const FEATURE_NAME_ENTRY: u32 = 48;

/// Refuses header extensions the qcow2 reader would panic on instead of reporting them: a
/// feature name table that is not whole 48-byte entries (found by fuzzing: imago 0.2 indexes
/// past the end of a short last entry, so `probe`, and opening such a disk for a VM, crashed).
/// Called before every open of an existing qcow2 image by the reader. Other damage (fields out
/// of range, extensions past the header cluster) is left to the reader, which reports it.
fn check_qcow2_extensions(path: &Path) -> std::io::Result<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = vec![0u8; (Qcow2Header::V3_LEN as u64).min(len) as usize];
    file.read_exact_at(&mut head, 0)?;
    let Ok(header) = Qcow2Header::parse(&head) else {
        return Ok(());
    };
    // Version 2 has no header extensions (the reader reads none).
    if head[4..8] != 3u32.to_be_bytes() || !(9..=21).contains(&header.cluster_bits) {
        return Ok(());
    }
    let end = (1u64 << header.cluster_bits).min(len);
    let mut at = u64::from(header.header_length);
    // Each step moves past an 8-byte extension header at least, so the walk ends.
    while at.saturating_add(8) <= end {
        let mut extension = [0u8; 8];
        file.read_exact_at(&mut extension, at)?;
        let kind = u32::from_be_bytes(extension[..4].try_into().expect("4 bytes"));
        let size = u32::from_be_bytes(extension[4..].try_into().expect("4 bytes"));
        if kind == 0 {
            break;
        }
        if kind == FEATURE_NAME_TABLE && !size.is_multiple_of(FEATURE_NAME_ENTRY) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "its feature name table is {size} bytes, not a whole number of \
                     {FEATURE_NAME_ENTRY}-byte entries"
                ),
            ));
        }
        at = at
            .saturating_add(8)
            .saturating_add(u64::from(size).next_multiple_of(8));
    }
    Ok(())
}

/// Reads the backing file name from a qcow2 header (bytes 8..20 point at it).
fn qcow2_backing_from_header(
    path: &Path,
    head: &[u8],
) -> std::result::Result<Option<String>, String> {
    let header = Qcow2Header::parse(head)?;
    let offset = header.backing_file_offset;
    let size = header.backing_file_size as usize;
    if offset == 0 || size == 0 {
        return Ok(None);
    }
    if size > 1023 {
        return Err("its backing file name is longer than qcow2 allows".into());
    }
    let mut name = vec![0u8; size];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut name, offset))
        .map_err(|_| "its backing file name lies beyond the end of the file".to_string())?;
    String::from_utf8(name)
        .map(Some)
        .map_err(|_| "its backing file name is not UTF-8".into())
}

/// Whether `path` is a qcow2 image that holds nothing of its own: no cluster of it is allocated
/// or marked as reading zeroes, so every guest read goes to its backing file and the disk's
/// contents are exactly its backing file's (nothing was written since the overlay was made).
///
/// Read from the L1 and L2 tables on disk. Answers `false` for raw images and for qcow2
/// images it cannot vouch for (internal snapshots, an external data file, extended L2
/// entries, marked corrupt, tables outside the file): `false` is always the safe answer.
/// Must not be asked while a VM writes the image (its unflushed tables are not on disk yet).
pub fn qcow2_is_empty(path: &Path) -> Result<bool> {
    let ctx = || format!("could not read the qcow2 tables of `{}`", path.display());
    let file = File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let len = file.metadata().map_err(|e| Error::io(ctx(), e))?.len();
    let mut head = [0u8; Qcow2Header::V3_FEATURES_END];
    if len < head.len() as u64 {
        return Ok(false);
    }
    file.read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(ctx(), e))?;
    if !head.starts_with(&QCOW2_MAGIC) {
        return Ok(false);
    }
    let Ok(header) = Qcow2Header::parse(&head) else {
        return Ok(false);
    };
    let unvouched =
        Qcow2Header::CORRUPT | Qcow2Header::EXTERNAL_DATA_FILE | Qcow2Header::EXTENDED_L2;
    if header.nb_snapshots != 0
        || header.incompatible_features & unvouched != 0
        || !(9..=21).contains(&header.cluster_bits)
    {
        return Ok(false);
    }
    let cluster_size = 1u64 << header.cluster_bits;
    let l1_bytes = u64::from(header.l1_size) * 8;
    if header
        .l1_table_offset
        .checked_add(l1_bytes)
        .is_none_or(|end| end > len)
    {
        return Ok(false);
    }
    let mut l1 = vec![0u8; l1_bytes as usize];
    file.read_exact_at(&mut l1, header.l1_table_offset)
        .map_err(|e| Error::io(ctx(), e))?;
    // Bits 9..=55 of an L1 entry are the offset of its L2 table; 0 means no table, so every
    // cluster it covers is unallocated.
    const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
    let mut l2 = vec![0u8; cluster_size as usize];
    for entry in l1.chunks_exact(8) {
        let entry = u64::from_be_bytes(entry.try_into().expect("8 bytes"));
        if entry == 0 {
            continue;
        }
        let l2_offset = entry & OFFSET_MASK;
        if l2_offset == 0 || l2_offset.saturating_add(cluster_size) > len {
            return Ok(false);
        }
        file.read_exact_at(&mut l2, l2_offset)
            .map_err(|e| Error::io(ctx(), e))?;
        // An L2 entry of 0 is an unallocated cluster; anything else (data, compressed, a zero
        // flag) is something this image holds of its own.
        if l2.iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The backing file named in a qcow2 image's header (`None` for raw images and qcow2 images
/// without a backing file).
pub fn backing_file(path: &Path) -> Result<Option<String>> {
    let mut head = [0u8; 72];
    let file = File::open(path)
        .map_err(|e| Error::io(format!("could not open `{}`", path.display()), e))?;
    if file.read_exact_at(&mut head, 0).is_err() || !head.starts_with(&QCOW2_MAGIC) {
        return Ok(None);
    }
    qcow2_backing_from_header(path, &head).map_err(|why| Error::NotADiskImage {
        path: path.to_path_buf(),
        why,
    })
}

/// Makes the qcow2 image `path` name `backing` as its backing file instead of the name it
/// has, in place and atomically, keeping the backing format it names. The caller guarantees
/// that the new backing file has the same format and reads the same as the old one (e.g. the
/// old one is an empty overlay over it), and that nothing has the image open.
///
/// The new name is written into unused space of the header cluster (after the header
/// extensions and the old name, where the qcow2 format keeps nothing), and synced; then one
/// 12-byte write of the header's backing name offset and length switches to it, and is
/// synced. That write lies in the file's first sector, so a crash leaves the old name or the
/// new one, both valid.
pub fn set_backing_name(path: &Path, backing: &str) -> Result<()> {
    let ctx = || format!("could not rename the backing file of `{}`", path.display());
    let refuse = |why: &str| Error::InvalidInput(format!("{}: {why}", ctx()));
    if backing.is_empty() || backing.len() > 1023 {
        return Err(refuse("the new name is empty or longer than qcow2 allows"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(ctx(), e))?;
    let len = file.metadata().map_err(|e| Error::io(ctx(), e))?.len();
    let mut head = [0u8; Qcow2Header::V3_LEN];
    if len < head.len() as u64 {
        return Err(refuse("it is too short for a qcow2 header"));
    }
    file.read_exact_at(&mut head, 0)
        .map_err(|e| Error::io(ctx(), e))?;
    if !head.starts_with(&QCOW2_MAGIC) {
        return Err(refuse("it is not a qcow2 image"));
    }
    let header = Qcow2Header::parse(&head).map_err(|why| refuse(&why))?;
    if header.backing_file_offset == 0 || header.backing_file_size == 0 {
        return Err(refuse("it has no backing file"));
    }
    if !(9..=21).contains(&header.cluster_bits) {
        return Err(refuse("its cluster size is out of range"));
    }
    let cluster_size = 1u64 << header.cluster_bits;
    // The header extensions end with an extension of type 0.
    let mut at = u64::from(header.header_length);
    loop {
        if at + 8 > cluster_size.min(len) {
            return Err(refuse("its header extensions run past the header cluster"));
        }
        let mut extension = [0u8; 8];
        file.read_exact_at(&mut extension, at)
            .map_err(|e| Error::io(ctx(), e))?;
        let kind = u32::from_be_bytes(extension[..4].try_into().expect("4 bytes"));
        let size = u64::from(u32::from_be_bytes(
            extension[4..].try_into().expect("4 bytes"),
        ));
        at += 8;
        if kind == 0 {
            break;
        }
        at += size.div_ceil(8) * 8;
    }
    let used_end = at.max(header.backing_file_offset + u64::from(header.backing_file_size));
    let new_at = used_end.div_ceil(8) * 8;
    let new_end = new_at + backing.len() as u64;
    if new_end > cluster_size || new_end > len {
        return Err(refuse("its header cluster has no room for another name"));
    }
    file.write_all_at(backing.as_bytes(), new_at)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(ctx(), e))?;
    let mut pointer = [0u8; 12];
    pointer[..8].copy_from_slice(&new_at.to_be_bytes());
    pointer[8..].copy_from_slice(&(backing.len() as u32).to_be_bytes());
    file.write_all_at(&pointer, 8)
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(ctx(), e))
}

/// Most files a disk's backing chain may have. Vivarium's own chains are as deep as the
/// number of times a VM's disk changed between linked clones; a deeper chain is refused as
/// damaged (one that loops through other names would otherwise never end).
pub const MAX_CHAIN_DEPTH: usize = 1024;

/// One file of a disk's backing chain, opened for reading (and writing, for a writable top).
enum ChainLevel {
    /// A qcow2 image, opened without its backing file (the chain attaches it).
    Qcow2(Box<Qcow2<imago::file::File>>),
    /// A raw image: the bottom of the chain.
    Raw(imago::raw::Raw<imago::file::File>),
}

/// The path of the backing file `name` that the image `image` names, resolved as qcow2 defines
/// it (relative to the image's folder) from the image's real folder, and made canonical.
///
/// Joining names without resolving them (as a qcow2 library does) makes the path longer by
/// one `../../../bases/<id>.vivbase/disks/` per level, until a deep chain passes `PATH_MAX`;
/// a canonical path is never longer than the real one.
fn resolve_backing(image: &Path, name: &str) -> std::io::Result<PathBuf> {
    let name = Path::new(name);
    let joined = if name.is_absolute() {
        name.to_path_buf()
    } else {
        let dir = match image.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        dir.join(name)
    };
    fs::canonicalize(&joined).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "the backing file `{}` of `{}` cannot be opened: {e}",
                name.display(),
                image.display()
            ),
        )
    })
}

/// Opens every file of the chain of `path`, top first, each backing file resolved with
/// [`resolve_backing`]. Only the top is opened for writing, and only if `writable`.
fn open_chain_levels(path: &Path, writable: bool) -> std::io::Result<Vec<(PathBuf, ChainLevel)>> {
    use std::os::unix::fs::MetadataExt;
    let mut levels = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut current = fs::canonicalize(path)?;
    // The format the file above names for this one (`None`: probe it).
    let mut named_format: Option<String> = None;
    loop {
        let meta = fs::metadata(&current)?;
        if !seen.insert((meta.dev(), meta.ino())) {
            return Err(std::io::Error::other(format!(
                "the backing chain of `{}` loops back to `{}`",
                path.display(),
                current.display()
            )));
        }
        if levels.len() >= MAX_CHAIN_DEPTH {
            return Err(std::io::Error::other(format!(
                "the backing chain of `{}` is deeper than {MAX_CHAIN_DEPTH} files",
                path.display()
            )));
        }
        let write = writable && levels.is_empty();
        let is_qcow2 = match named_format.as_deref() {
            Some("qcow2") => true,
            Some("raw") | Some("file") => false,
            Some(other) => {
                return Err(std::io::Error::other(format!(
                    "the backing file `{}` is named with the format `{other}`, which is \
                     neither raw nor qcow2",
                    current.display()
                )));
            }
            None => {
                let mut magic = [0u8; 4];
                File::open(&current)?
                    .read_exact_at(&mut magic, 0)
                    .map(|()| magic == QCOW2_MAGIC)
                    .unwrap_or(false)
            }
        };
        if !is_qcow2 {
            let raw = imago::raw::Raw::<imago::file::File>::builder_path(&current)
                .write(write)
                .open(PermissiveImplicitOpenGate::default())?;
            levels.push((current, ChainLevel::Raw(raw)));
            return Ok(levels);
        }
        check_qcow2_extensions(&current)?;
        let image = Qcow2::<imago::file::File>::builder_path(&current)
            .backing(None)
            .write(write)
            .open(PermissiveImplicitOpenGate::default())?;
        let backing = image.implicit_backing_file().cloned();
        named_format = image.implicit_backing_format().cloned();
        let next = match &backing {
            Some(name) => Some(resolve_backing(&current, name)?),
            None => None,
        };
        levels.push((current, ChainLevel::Qcow2(Box::new(image))));
        match next {
            Some(next) => current = next,
            None => return Ok(levels),
        }
    }
}

/// Opens the image `path` with its whole backing chain as one disk, each backing file found
/// from the real folder of the file that names it (see [`resolve_backing`]), so a chain of
/// any depth opens with short paths. Only the top is writable, and only if `writable`.
fn open_chain(path: &Path, writable: bool) -> std::io::Result<FormatAccess<imago::file::File>> {
    let mut lower: Option<FormatAccess<imago::file::File>> = None;
    for (_, level) in open_chain_levels(path, writable)?.into_iter().rev() {
        lower = Some(match level {
            ChainLevel::Raw(raw) => FormatAccess::new(raw),
            ChainLevel::Qcow2(mut image) => {
                image.set_backing(lower.take());
                FormatAccess::new(*image)
            }
        });
    }
    lower.ok_or_else(|| std::io::Error::other("an empty backing chain"))
}

/// The files of the backing chain of the disk image `path`, top first: `path` itself (made
/// canonical), then each backing file down to one without a backing file. Fails when a file is
/// missing or damaged, when the chain loops, or when it is deeper than [`MAX_CHAIN_DEPTH`].
pub fn backing_chain(path: &Path) -> Result<Vec<PathBuf>> {
    let levels = open_chain_levels(path, false).map_err(|e| {
        Error::io(
            format!("could not follow the backing chain of `{}`", path.display()),
            e,
        )
    })?;
    Ok(levels.into_iter().map(|(path, _)| path).collect())
}

/// How a copy was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Every block shared with the source (copy-on-write file system).
    Reflink,
    /// Only the data extents were copied; holes stay holes.
    Sparse,
    /// A qcow2 chain was read through and written out as one raw image.
    Flatten,
}

/// Copies the image file `src` to the new file `dst` (which must not exist), keeping it sparse.
/// A reflink is tried first unless `allow_reflink` is false. On error or cancel, `dst` is
/// removed.
pub fn copy_file(
    src: &Path,
    dst: &Path,
    allow_reflink: bool,
    progress: &dyn Progress,
) -> Result<CopyMethod> {
    let result = copy_file_inner(src, dst, allow_reflink, progress);
    if result.is_err() {
        let _ = fs::remove_file(dst);
    }
    result
}

fn copy_file_inner(
    src: &Path,
    dst: &Path,
    allow_reflink: bool,
    progress: &dyn Progress,
) -> Result<CopyMethod> {
    let ctx = || format!("could not copy `{}` to `{}`", src.display(), dst.display());
    let input = File::open(src).map_err(|e| Error::io(ctx(), e))?;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io(ctx(), e))?;
    let len = input.metadata().map_err(|e| Error::io(ctx(), e))?.len();
    if allow_reflink && reflink(&input, &output).is_ok() {
        output.sync_all().map_err(|e| Error::io(ctx(), e))?;
        progress.update(len, len);
        return Ok(CopyMethod::Reflink);
    }
    output.set_len(len).map_err(|e| Error::io(ctx(), e))?;
    let mut done = 0u64;
    progress.update(0, len);
    let mut position = 0u64;
    while position < len {
        let Some((start, end)) =
            next_data_extent(&input, position, len).map_err(|e| Error::io(ctx(), e))?
        else {
            break;
        };
        let mut at = start;
        while at < end {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            let n = (end - at).min(COPY_CHUNK);
            copy_range(&input, &output, at, n).map_err(|e| Error::io(ctx(), e))?;
            at += n;
            done += n;
            progress.update(done, len);
        }
        position = end;
    }
    output.sync_all().map_err(|e| Error::io(ctx(), e))?;
    progress.update(len, len);
    Ok(CopyMethod::Sparse)
}

/// Shares all blocks of `input` with `output` (btrfs, XFS, bcachefs).
#[cfg(target_os = "linux")]
fn reflink(input: &File, output: &File) -> std::io::Result<()> {
    // FICLONE = _IOW(0x94, 9, int). Written out because libc does not export it on every
    // target; its value is part of the kernel ABI.
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: both descriptors are open files owned by the caller for the whole call; FICLONE
    // takes the source descriptor as its integer argument and touches no user memory.
    let rc = unsafe { libc::ioctl(output.as_raw_fd(), FICLONE as _, input.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Other systems clone by path (macOS `clonefile`), which this descriptor-based copy does
/// not use yet: they get the sparse copy.
#[cfg(not(target_os = "linux"))]
fn reflink(_input: &File, _output: &File) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The next extent of data at or after `from`: `Some((start, end))`, or `None` when only
/// holes remain. File systems without `SEEK_DATA` make the whole rest one extent.
fn next_data_extent(file: &File, from: u64, len: u64) -> std::io::Result<Option<(u64, u64)>> {
    let fd = file.as_raw_fd();
    // SAFETY: lseek on a descriptor we own; it only moves the file offset.
    let start = unsafe { libc::lseek(fd, from as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some((from, len))),
            _ => Err(err),
        };
    }
    let start = start as u64;
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((start, (end as u64).min(len))))
}

/// Copies `len` bytes at `offset` from `input` to the same offset of `output`, in the kernel
/// where possible (`copy_file_range`), else through a buffer.
fn copy_range(input: &File, output: &File, offset: u64, len: u64) -> std::io::Result<()> {
    copy_range_to(input, offset, output, offset, len)
}

/// Copies `len` bytes at `from` in `input` to `to` in `output`, in the kernel where possible
/// (`copy_file_range`, which also shares blocks where the file system can), else through a
/// buffer.
#[cfg(target_os = "linux")]
fn copy_range_to(input: &File, from: u64, output: &File, to: u64, len: u64) -> std::io::Result<()> {
    let mut copied = 0u64;
    while copied < len {
        let mut off_in = (from + copied) as libc::loff_t;
        let mut off_out = (to + copied) as libc::loff_t;
        // SAFETY: both descriptors are open and owned by the caller; the offsets are local
        // variables that outlive the call; no user buffers are involved.
        let n = unsafe {
            libc::copy_file_range(
                input.as_raw_fd(),
                &mut off_in,
                output.as_raw_fd(),
                &mut off_out,
                (len - copied) as usize,
                0,
            )
        };
        if n > 0 {
            copied += n as u64;
            continue;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source file ended early",
            ));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EXDEV)
            | Some(libc::ENOSYS)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EINVAL) => {
                return copy_range_buffered(
                    input,
                    from + copied,
                    output,
                    to + copied,
                    len - copied,
                );
            }
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
    Ok(())
}

/// Copies `len` bytes at `from` through a buffer (systems without `copy_file_range`).
#[cfg(not(target_os = "linux"))]
fn copy_range_to(input: &File, from: u64, output: &File, to: u64, len: u64) -> std::io::Result<()> {
    copy_range_buffered(input, from, output, to, len)
}

fn copy_range_buffered(
    input: &File,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut at = 0u64;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        input.read_exact_at(&mut buf[..n], from + at)?;
        output.write_all_at(&buf[..n], to + at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads the qcow2 image `src` through its whole backing chain and writes the disk's contents
/// to the new raw file `dst`, as sparse as the chain: only what some file of the chain holds
/// is read and written. The chain's allocation maps say where that is (a qcow2 file's
/// clusters, a raw base's data extents by `SEEK_DATA`/`SEEK_HOLE`); data is copied in the
/// kernel (`copy_file_range`) and ranges no file holds stay holes, so an empty 2 TiB overlay
/// is flattened in moments. On error or cancel, `dst` is removed.
pub fn flatten_to_raw(src: &Path, dst: &Path, progress: &dyn Progress) -> Result<CopyMethod> {
    let result = flatten_inner(src, dst, progress);
    if result.is_err() {
        let _ = fs::remove_file(dst);
    }
    result.map(|()| CopyMethod::Flatten)
}

fn flatten_inner(src: &Path, dst: &Path, progress: &dyn Progress) -> Result<()> {
    let ctx = || {
        format!(
            "could not flatten `{}` into `{}`",
            src.display(),
            dst.display()
        )
    };
    let access = open_chain(src, false).map_err(|e| Error::io(ctx(), e))?;
    let size = access.size();
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| Error::io(ctx(), e))?;
    output.set_len(size).map_err(|e| Error::io(ctx(), e))?;
    // The chain's files, opened again by name for their holes and for kernel copies.
    let mut files: std::collections::HashMap<PathBuf, (File, u64)> = Default::default();
    let mut offset = 0u64;
    progress.update(0, size);
    while offset < size {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let (mapping, len) = access
            .get_mapping(offset, size - offset)
            .map_err(|e| Error::io(ctx(), e))?;
        let len = len.min(size - offset);
        match mapping {
            Mapping::Eof { .. } => break,
            Mapping::Zero { .. } => {}
            Mapping::Raw {
                storage,
                offset: host,
                ..
            } if storage.get_filename().is_some() => {
                let name = storage.get_filename().expect("checked above");
                if !files.contains_key(&name) {
                    let file = File::open(&name).map_err(|e| Error::io(ctx(), e))?;
                    let file_len = file.metadata().map_err(|e| Error::io(ctx(), e))?.len();
                    files.insert(name.clone(), (file, file_len));
                }
                let (file, file_len) = &files[&name];
                copy_data_extents(file, *file_len, host, &output, offset, len, size, progress)
                    .map_err(|e| match e {
                        CopyStop::Cancelled => Error::Cancelled,
                        CopyStop::Io(e) => Error::io(ctx(), e),
                    })?;
            }
            _ => {
                // Data only the format driver can decode (compressed clusters), or a file
                // without a name: read through the chain, write what is not zero.
                let mut buf = vec![0u8; len.min(COPY_CHUNK) as usize];
                let mut at = 0u64;
                while at < len {
                    if progress.cancelled() {
                        return Err(Error::Cancelled);
                    }
                    let n = (len - at).min(COPY_CHUNK) as usize;
                    let chunk = &mut buf[..n];
                    access
                        .read(&mut *chunk, offset + at)
                        .map_err(|e| Error::io(ctx(), e))?;
                    if chunk.iter().any(|&b| b != 0) {
                        output
                            .write_all_at(chunk, offset + at)
                            .map_err(|e| Error::io(ctx(), e))?;
                    }
                    at += n as u64;
                    progress.update(offset + at, size);
                }
            }
        }
        if len == 0 {
            return Err(Error::io(
                ctx(),
                std::io::Error::other("the image reported an empty mapping"),
            ));
        }
        offset += len;
        progress.update(offset, size);
    }
    output.sync_all().map_err(|e| Error::io(ctx(), e))
}

/// Why [`copy_data_extents`] stopped early.
enum CopyStop {
    /// The user cancelled.
    Cancelled,
    /// Reading or writing failed.
    Io(std::io::Error),
}

/// Copies the data extents of `file` (of `file_len` bytes) within `len` bytes from `from` to
/// `output` at `to` onward, leaving its holes (and whatever lies past its end) as holes.
#[allow(clippy::too_many_arguments)]
fn copy_data_extents(
    file: &File,
    file_len: u64,
    from: u64,
    output: &File,
    to: u64,
    len: u64,
    total: u64,
    progress: &dyn Progress,
) -> std::result::Result<(), CopyStop> {
    let end = from.saturating_add(len).min(file_len);
    let mut position = from;
    while position < end {
        let Some((start, stop)) =
            next_data_extent(file, position, file_len).map_err(CopyStop::Io)?
        else {
            break;
        };
        if start >= end {
            break;
        }
        let stop = stop.min(end);
        let mut at = start;
        while at < stop {
            if progress.cancelled() {
                return Err(CopyStop::Cancelled);
            }
            let n = (stop - at).min(COPY_CHUNK);
            copy_range_to(file, at, output, to + (at - from), n).map_err(CopyStop::Io)?;
            at += n;
            progress.update(to + (at - from), total);
        }
        position = stop;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An interrupted download of a qcow2 image: the header and tables are there, the data is
    /// not. Import must refuse it, saying so, instead of a disk that reads zeros.
    #[test]
    fn a_truncated_qcow2_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whole.qcow2");
        create(&path, DiskFormat::Qcow2, 64 << 20).unwrap();
        {
            let disk = Qcow2Disk::open(&path, false).unwrap();
            for i in 0..32u64 {
                disk.write_at(&[0x5a; 4096], i << 20).unwrap();
            }
            disk.flush().unwrap();
        }
        assert_eq!(
            probe(&path).unwrap().format,
            DiskFormat::Qcow2,
            "whole: fine"
        );
        let len = fs::metadata(&path).unwrap().len();
        let data = fs::read(&path).unwrap();
        for keep in [len / 2, len - 4096, 1 << 16] {
            let cut = dir.path().join(format!("cut-{keep}.qcow2"));
            fs::write(&cut, &data[..keep as usize]).unwrap();
            let e = probe(&cut).unwrap_err().to_string();
            assert!(e.contains("cut short"), "{keep}: {e}");
        }
        // The header alone.
        let header = dir.path().join("header.qcow2");
        fs::write(&header, &data[..512]).unwrap();
        assert!(probe(&header).is_err());
    }

    /// Found by fuzzing (fuzz/regressions/qcow2/feature-name-table-short-entry): a feature
    /// name table of 49 bytes made the qcow2 reader index past its last entry and panic, in
    /// `probe` (import) and when a VM opened the disk. Both refuse the image now.
    #[test]
    fn a_feature_name_table_of_partial_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        create(&path, DiskFormat::Qcow2, 1 << 20).unwrap();
        assert_eq!(probe(&path).unwrap().format, DiskFormat::Qcow2);
        let mut data = fs::read(&path).unwrap();
        let header_length = u32::from_be_bytes(data[100..104].try_into().unwrap()) as usize;
        // Walk to the end-of-extensions marker and put a 49-byte feature name table there.
        let mut at = header_length;
        while u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) != 0 {
            let size = u32::from_be_bytes(data[at + 4..at + 8].try_into().unwrap()) as usize;
            at += 8 + size.next_multiple_of(8);
        }
        data[at..at + 4].copy_from_slice(&FEATURE_NAME_TABLE.to_be_bytes());
        data[at + 4..at + 8].copy_from_slice(&49u32.to_be_bytes());
        data[at + 8..at + 8 + 56].fill(0);
        data[at + 8 + 56..at + 8 + 64].fill(0); // the end marker after it
        fs::write(&path, &data).unwrap();
        let e = probe(&path).unwrap_err().to_string();
        assert!(e.contains("feature name table is 49 bytes"), "{e}");
        let e = Qcow2Disk::open(&path, true)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("feature name table is 49 bytes"), "{e}");
        // Whole entries are fine.
        data[at + 4..at + 8].copy_from_slice(&48u32.to_be_bytes());
        fs::write(&path, &data).unwrap();
        assert_eq!(probe(&path).unwrap().format, DiskFormat::Qcow2);
    }

    #[test]
    fn raw_disks_are_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        create(&path, DiskFormat::Raw, 10 << 30).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 10 << 30);
        assert!(crate::fsutil::allocated_bytes(&path).unwrap() < 1 << 20);
        let info = probe(&path).unwrap();
        assert_eq!(info.format, DiskFormat::Raw);
        assert_eq!(info.virtual_size, 10 << 30);
        assert!(
            create(&path, DiskFormat::Raw, 1 << 20).is_err(),
            "must not clobber"
        );
    }

    #[test]
    fn qcow2_disks_probe_and_overlays_name_their_base() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        create(&base, DiskFormat::Qcow2, 1 << 30).unwrap();
        let info = probe(&base).unwrap();
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, 1 << 30);
        assert_eq!(info.backing_file, None);
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.qcow2", DiskFormat::Qcow2, 1 << 30).unwrap();
        assert_eq!(backing_file(&top).unwrap().as_deref(), Some("base.qcow2"));
        assert_eq!(
            probe(&top).unwrap().backing_file.as_deref(),
            Some("base.qcow2")
        );
    }

    #[test]
    fn probe_refuses_what_is_not_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, contents: &[u8], expect: &str| {
            let path = dir.path().join(name);
            fs::write(&path, contents).unwrap();
            let err = probe(&path).unwrap_err().to_string();
            assert!(err.contains(expect), "{name}: {err}");
        };
        check("empty", b"", "empty");
        check("odd", b"hello", "multiple of 512");
        let mut iso = vec![0u8; 0x8800];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        check("x.iso", &iso, "--iso");
        let mut vmdk = vec![0u8; 1024];
        vmdk[..4].copy_from_slice(b"KDMV");
        check("x.vmdk", &vmdk, "VMDK");
        let mut qcow = vec![0u8; 512];
        qcow[..4].copy_from_slice(&QCOW2_MAGIC);
        check("broken.qcow2", &qcow, "qcow2");
        let err = probe(dir.path()).unwrap_err().to_string();
        assert!(err.contains("folder"), "{err}");
        let err = probe(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        create(&src, DiskFormat::Raw, 1 << 30).unwrap();
        let file = OpenOptions::new().write(true).open(&src).unwrap();
        file.write_all_at(b"first", 0).unwrap();
        file.write_all_at(&[7u8; 3 << 20], 500 << 20).unwrap();
        file.write_all_at(b"last", (1 << 30) - 4).unwrap();
        drop(file);
        let dst = dir.path().join("dst.raw");
        let method = copy_file(&src, &dst, false, &NoProgress).unwrap();
        assert_eq!(method, CopyMethod::Sparse);
        assert_eq!(fs::metadata(&dst).unwrap().len(), 1 << 30);
        let out = File::open(&dst).unwrap();
        let mut buf = [0u8; 5];
        out.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"first");
        let mut mid = vec![0u8; 3 << 20];
        out.read_exact_at(&mut mid, 500 << 20).unwrap();
        assert!(mid.iter().all(|&b| b == 7));
        let mut tail = [0u8; 4];
        out.read_exact_at(&mut tail, (1 << 30) - 4).unwrap();
        assert_eq!(&tail, b"last");
        assert!(crate::fsutil::allocated_bytes(&dst).unwrap() < 16 << 20);
    }

    #[test]
    fn cancelled_copy_leaves_nothing() {
        struct CancelAfterFirst(AtomicBool);
        impl Progress for CancelAfterFirst {
            fn update(&self, done: u64, _total: u64) {
                if done > 0 {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            fn cancelled(&self) -> bool {
                self.0.load(Ordering::Relaxed)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.raw");
        fs::write(&src, vec![1u8; 4 * COPY_CHUNK as usize]).unwrap();
        let dst = dir.path().join("dst.raw");
        let err = copy_file(&src, &dst, false, &CancelAfterFirst(AtomicBool::new(false)));
        assert!(matches!(err, Err(Error::Cancelled)), "{err:?}");
        assert!(!dst.exists());
    }

    #[test]
    fn an_overlay_is_empty_until_the_guest_writes_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        create(&base, DiskFormat::Raw, 64 << 20).unwrap();
        assert!(
            !qcow2_is_empty(&base).unwrap(),
            "a raw disk is not an overlay"
        );
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.raw", DiskFormat::Raw, 64 << 20).unwrap();
        assert!(qcow2_is_empty(&top).unwrap());
        // Opening and closing it for writing, reading, flushing: still nothing of its own.
        let disk = Qcow2Disk::open(&top, false).unwrap();
        let mut buf = [0u8; 512];
        disk.read_at(&mut buf, 40 << 20).unwrap();
        disk.flush().unwrap();
        drop(disk);
        assert!(qcow2_is_empty(&top).unwrap());
        // One sector written far into the disk (its L2 table is not the first one).
        let disk = Qcow2Disk::open(&top, false).unwrap();
        disk.write_at(&[1u8; 512], 40 << 20).unwrap();
        disk.flush().unwrap();
        drop(disk);
        assert!(!qcow2_is_empty(&top).unwrap());
        // Zeroes written are a change too: they hide whatever the base has there.
        let zeroed = dir.path().join("zeroed.qcow2");
        create_overlay(&zeroed, "base.raw", DiskFormat::Raw, 64 << 20).unwrap();
        let disk = Qcow2Disk::open(&zeroed, false).unwrap();
        disk.write_at(&[0u8; 65536], 0).unwrap();
        disk.flush().unwrap();
        drop(disk);
        assert!(!qcow2_is_empty(&zeroed).unwrap());
    }

    /// A chain laid out as a library lays it: a VM's overlay over a base, itself an overlay
    /// over a base, and so on, each naming the next `../../../bases/<n>.vivbase/disks/d`.
    fn library_shaped_chain(root: &Path, depth: usize) -> PathBuf {
        let base_dir = |n: usize| root.join(format!("bases/{n:036}.vivbase/disks"));
        fs::create_dir_all(base_dir(0)).unwrap();
        let bottom = base_dir(0).join("d");
        let mut data = vec![0u8; 4 << 20];
        data[..6].copy_from_slice(b"bottom");
        fs::write(&bottom, &data).unwrap();
        let backing = |n: usize| format!("../../../bases/{n:036}.vivbase/disks/d");
        for n in 1..depth {
            fs::create_dir_all(base_dir(n)).unwrap();
            let format = if n == 1 {
                DiskFormat::Raw
            } else {
                DiskFormat::Qcow2
            };
            create_overlay(&base_dir(n).join("d"), &backing(n - 1), format, 4 << 20).unwrap();
        }
        let disks = root.join("vms/p.vivm/disks");
        fs::create_dir_all(&disks).unwrap();
        let top = disks.join("top.qcow2");
        let format = if depth == 1 {
            DiskFormat::Raw
        } else {
            DiskFormat::Qcow2
        };
        create_overlay(&top, &backing(depth - 1), format, 4 << 20).unwrap();
        top
    }

    #[test]
    fn a_deep_chain_opens_with_short_paths() {
        let dir = tempfile::tempdir().unwrap();
        // 80 levels: joined without resolving, the deepest path would be about 80 times
        // `../../../bases/<36>.vivbase/disks/` long, past PATH_MAX (4096).
        let top = library_shaped_chain(dir.path(), 80);
        let naive = Qcow2::<imago::file::File>::builder_path(&top)
            .write(false)
            .open(PermissiveImplicitOpenGate::default());
        assert!(
            naive.is_err(),
            "joining backing names without resolving them fails on this chain"
        );
        let chain = backing_chain(&top).unwrap();
        assert_eq!(chain.len(), 81);
        let longest = chain.iter().map(|p| p.as_os_str().len()).max().unwrap();
        let root_len = fs::canonicalize(dir.path()).unwrap().as_os_str().len();
        assert!(longest < root_len + 100, "a path of {longest} bytes");
        let disk = Qcow2Disk::open(&top, false).unwrap();
        let mut buf = [0u8; 6];
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"bottom");
        disk.write_at(b"top!", 0).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let out = dir.path().join("flat.raw");
        flatten_to_raw(&top, &out, &NoProgress).unwrap();
        assert_eq!(&fs::read(&out).unwrap()[..6], b"top!om");
    }

    #[test]
    fn a_backing_name_is_switched_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..4].copy_from_slice(b"base");
        fs::write(&base, &data).unwrap();
        fs::hard_link(&base, dir.path().join("same-base.raw")).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.raw", DiskFormat::Raw, 4 << 20).unwrap();
        let disk = Qcow2Disk::open(&top, false).unwrap();
        disk.write_at(b"top", 1 << 20).unwrap();
        disk.flush().unwrap();
        drop(disk);
        for round in 0..3 {
            let name = if round % 2 == 0 {
                "same-base.raw"
            } else {
                "base.raw"
            };
            set_backing_name(&top, name).unwrap();
            assert_eq!(backing_file(&top).unwrap().as_deref(), Some(name));
            let disk = Qcow2Disk::open(&top, true).unwrap();
            let mut buf = [0u8; 4];
            disk.read_at(&mut buf, 0).unwrap();
            assert_eq!(&buf, b"base");
            disk.read_at(&mut buf[..3], 1 << 20).unwrap();
            assert_eq!(&buf[..3], b"top");
        }
        let raw = dir.path().join("plain.raw");
        create(&raw, DiskFormat::Raw, 1 << 20).unwrap();
        assert!(set_backing_name(&raw, "base.raw").is_err());
        let alone = dir.path().join("alone.qcow2");
        create(&alone, DiskFormat::Qcow2, 1 << 20).unwrap();
        assert!(set_backing_name(&alone, "base.raw").is_err());
    }

    #[test]
    fn a_backing_chain_that_loops_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.qcow2");
        let b = dir.path().join("b.qcow2");
        create_overlay(&a, "b.qcow2", DiskFormat::Qcow2, 1 << 20).unwrap();
        create_overlay(&b, "a.qcow2", DiskFormat::Qcow2, 1 << 20).unwrap();
        let err = backing_chain(&a).unwrap_err().to_string();
        assert!(err.contains("loops"), "{err}");
        assert!(Qcow2Disk::open(&a, true).is_err());
        let missing = dir.path().join("c.qcow2");
        create_overlay(&missing, "gone.raw", DiskFormat::Raw, 1 << 20).unwrap();
        let err = backing_chain(&missing).unwrap_err().to_string();
        assert!(err.contains("gone.raw"), "{err}");
    }

    #[test]
    fn flattening_an_overlay_of_a_large_empty_base_follows_the_allocation_maps() {
        const SIZE: u64 = 2 << 40;
        let dir = tempfile::tempdir().unwrap();
        // A 2 TiB raw base with 3 MiB of data in two places...
        let base = dir.path().join("base.raw");
        create(&base, DiskFormat::Raw, SIZE).unwrap();
        let file = OpenOptions::new().write(true).open(&base).unwrap();
        file.write_all_at(&[b'b'; 1 << 20], 0).unwrap();
        file.write_all_at(&[b'B'; 2 << 20], 1 << 40).unwrap();
        drop(file);
        // ...under a qcow2 base with 1 MiB of its own (a clone of a changed VM)...
        let middle = dir.path().join("middle.qcow2");
        create_overlay(&middle, "base.raw", DiskFormat::Raw, SIZE).unwrap();
        let disk = Qcow2Disk::open(&middle, false).unwrap();
        disk.write_at(&[b'm'; 1 << 20], 3 << 39).unwrap();
        disk.flush().unwrap();
        drop(disk);
        // ...under the top overlay, which wrote 64 KiB over the base's first MiB.
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "middle.qcow2", DiskFormat::Qcow2, SIZE).unwrap();
        let disk = Qcow2Disk::open(&top, false).unwrap();
        disk.write_at(&[b't'; 64 << 10], 0).unwrap();
        disk.flush().unwrap();
        drop(disk);

        let out = dir.path().join("flat.raw");
        let started = std::time::Instant::now();
        flatten_to_raw(&top, &out, &NoProgress).unwrap();
        let took = started.elapsed();
        assert!(took.as_secs() < 30, "flattening took {took:?}");
        assert_eq!(fs::metadata(&out).unwrap().len(), SIZE);
        let allocated = crate::fsutil::allocated_bytes(&out).unwrap();
        assert!(
            (4 << 20..=8 << 20).contains(&allocated),
            "{allocated} bytes allocated for 4 MiB of data"
        );
        let flat = File::open(&out).unwrap();
        let read = |at: u64, len: usize| {
            let mut buf = vec![0u8; len];
            flat.read_exact_at(&mut buf, at).unwrap();
            buf
        };
        assert!(read(0, 64 << 10).iter().all(|&b| b == b't'));
        assert!(
            read(64 << 10, (1 << 20) - (64 << 10))
                .iter()
                .all(|&b| b == b'b')
        );
        assert!(read(1 << 20, 4096).iter().all(|&b| b == 0));
        assert!(read(3 << 39, 1 << 20).iter().all(|&b| b == b'm'));
        assert!(read(1 << 40, 2 << 20).iter().all(|&b| b == b'B'));
        assert!(read(SIZE - 4096, 4096).iter().all(|&b| b == 0));
        eprintln!("flattened a 2 TiB chain holding 4 MiB in {took:?} ({allocated} bytes)");
    }

    #[test]
    fn a_cancelled_flatten_leaves_nothing() {
        struct CancelAtOnce;
        impl Progress for CancelAtOnce {
            fn update(&self, _: u64, _: u64) {}
            fn cancelled(&self) -> bool {
                true
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        fs::write(&base, vec![1u8; 8 << 20]).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.raw", DiskFormat::Raw, 8 << 20).unwrap();
        let out = dir.path().join("flat.raw");
        let result = flatten_to_raw(&top, &out, &CancelAtOnce);
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        assert!(!out.exists());
    }

    #[test]
    fn flatten_reads_through_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        fs::write(&base, {
            let mut v = vec![0u8; 4 << 20];
            v[..4].copy_from_slice(b"base");
            v
        })
        .unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.raw", DiskFormat::Raw, 4 << 20).unwrap();
        let out = dir.path().join("flat.raw");
        flatten_to_raw(&top, &out, &NoProgress).unwrap();
        let data = fs::read(&out).unwrap();
        assert_eq!(data.len(), 4 << 20);
        assert_eq!(&data[..4], b"base");
        assert!(data[4..].iter().all(|&b| b == 0));
    }
}

/// A qcow2 image (with its backing chain) opened for a guest: what a VMM's disk device reads
/// and writes. The backing files are opened read-only; writes land in the top image.
pub struct Qcow2Disk {
    access: FormatAccess<imago::file::File>,
    read_only: bool,
}

impl Qcow2Disk {
    /// Opens `path` and its backing chain (of any depth: see [`backing_chain`]).
    pub fn open(path: &Path, read_only: bool) -> Result<Qcow2Disk> {
        let access = open_chain(path, !read_only).map_err(|e| {
            Error::io(
                format!("could not open the qcow2 disk `{}`", path.display()),
                e,
            )
        })?;
        Ok(Qcow2Disk { access, read_only })
    }

    /// Size the guest sees, in bytes.
    pub fn size(&self) -> u64 {
        self.access.size()
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Reads `buf.len()` bytes at `offset` (through the backing chain where the top image has
    /// no data).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.access.read(buf, offset)
    }

    /// Writes `buf` at `offset` into the top image (allocating clusters, copy-on-write).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.read_only {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.access.write(buf, offset)
    }

    /// Makes written data and metadata durable (nothing to do for a read-only disk).
    pub fn flush(&self) -> std::io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.access.flush()?;
        self.access.sync()
    }
}

#[cfg(test)]
mod qcow2_disk_tests {
    use super::*;

    #[test]
    fn a_guest_writes_to_an_overlay_and_the_base_stays() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..4].copy_from_slice(b"base");
        fs::write(&base, &data).unwrap();
        let top = dir.path().join("top.qcow2");
        create_overlay(&top, "base.raw", DiskFormat::Raw, 4 << 20).unwrap();
        let disk = Qcow2Disk::open(&top, false).unwrap();
        assert_eq!(disk.size(), 4 << 20);
        let mut buf = [0u8; 4];
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"base");
        disk.write_at(b"TOP!", 0).unwrap();
        disk.write_at(b"tail", (4 << 20) - 4).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let disk = Qcow2Disk::open(&top, true).unwrap();
        disk.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"TOP!");
        disk.read_at(&mut buf, (4 << 20) - 4).unwrap();
        assert_eq!(&buf, b"tail");
        assert!(disk.write_at(b"nope", 0).is_err());
        assert_eq!(
            &fs::read(&base).unwrap()[..4],
            b"base",
            "the base is untouched"
        );
    }
}

/// Stress tests of [`Qcow2Disk`] as a VMM drives it: random reads and writes of the sizes a
/// guest sends, compared with a model of the disk, from one thread and from several.
#[cfg(test)]
mod qcow2_stress_tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    const SIZE: usize = 8 << 20;

    /// xorshift64*: reproducible random numbers without a dependency.
    struct Rand(u64);
    impl Rand {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Runs `f` on a thread and fails the test if it does not finish within `limit`: a
    /// deadlock shows as a failure that names the test, not as a CI run that never ends.
    fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .expect("the qcow2 disk hung (no answer within the limit)")
    }

    fn base_with_pattern(dir: &Path, format: DiskFormat) -> (PathBuf, Vec<u8>) {
        let mut rand = Rand(0x9e37_79b9_7f4a_7c15);
        let data: Vec<u8> = (0..SIZE).map(|_| rand.next() as u8).collect();
        let raw = dir.join("base.raw");
        fs::write(&raw, &data).unwrap();
        match format {
            DiskFormat::Raw => (raw, data),
            DiskFormat::Qcow2 => {
                let base = dir.join("base.qcow2");
                create(&base, DiskFormat::Qcow2, SIZE as u64).unwrap();
                let disk = Qcow2Disk::open(&base, false).unwrap();
                // Leave some clusters unallocated (they read as zeroes).
                for (i, chunk) in data.chunks(64 << 10).enumerate() {
                    if i % 3 != 1 {
                        disk.write_at(chunk, (i * (64 << 10)) as u64).unwrap();
                    }
                }
                disk.flush().unwrap();
                let mut model = data;
                for (i, chunk) in model.chunks_mut(64 << 10).enumerate() {
                    if i % 3 == 1 {
                        chunk.fill(0);
                    }
                }
                (base, model)
            }
        }
    }

    /// One guest-like request: a sector-aligned range of up to 256 KiB, often crossing
    /// cluster boundaries, often a partial cluster (copy-on-write from the base).
    fn request(rand: &mut Rand, start: usize, len: usize) -> (usize, usize) {
        let sectors = 1 + rand.below(512) as usize;
        let bytes = (sectors * 512).min(len);
        let at = start + (rand.below(((len - bytes) / 512 + 1) as u64) as usize) * 512;
        (at, bytes)
    }

    fn single_thread(base_format: DiskFormat) {
        let dir = tempfile::tempdir().unwrap();
        let (base, mut model) = base_with_pattern(dir.path(), base_format);
        let top = dir.path().join("top.qcow2");
        let name = base.file_name().unwrap().to_str().unwrap();
        create_overlay(&top, name, base_format, SIZE as u64).unwrap();
        let base_before = fs::read(&base).unwrap();
        let disk = Qcow2Disk::open(&top, false).unwrap();
        let mut rand = Rand(7);
        for step in 0..3000 {
            let (at, len) = request(&mut rand, 0, SIZE);
            if rand.below(2) == 0 {
                let buf: Vec<u8> = (0..len).map(|_| rand.next() as u8).collect();
                disk.write_at(&buf, at as u64).unwrap();
                model[at..at + len].copy_from_slice(&buf);
            } else {
                let mut buf = vec![0u8; len];
                disk.read_at(&mut buf, at as u64).unwrap();
                assert!(
                    buf == model[at..at + len],
                    "step {step}: read of {len} bytes at {at} differs"
                );
            }
            if step % 100 == 99 {
                disk.flush().unwrap();
            }
        }
        disk.flush().unwrap();
        drop(disk);
        let disk = Qcow2Disk::open(&top, true).unwrap();
        let mut all = vec![0u8; SIZE];
        disk.read_at(&mut all, 0).unwrap();
        assert!(all == model, "after reopening, the disk differs");
        assert!(fs::read(&base).unwrap() == base_before, "the base changed");
    }

    #[test]
    fn random_io_over_a_raw_base_matches_a_model() {
        within(Duration::from_secs(300), || single_thread(DiskFormat::Raw));
    }

    #[test]
    fn random_io_over_a_qcow2_base_matches_a_model() {
        within(Duration::from_secs(300), || {
            single_thread(DiskFormat::Qcow2)
        });
    }

    /// Threads write their own stripes (so a model is exact) and read everywhere, through one
    /// shared disk, as a VMM with several queues or an I/O thread beside the vCPUs would.
    #[test]
    fn threads_sharing_one_overlay_see_their_writes() {
        within(Duration::from_secs(300), || {
            const THREADS: usize = 4;
            let dir = tempfile::tempdir().unwrap();
            let (base, model) = base_with_pattern(dir.path(), DiskFormat::Raw);
            let top = dir.path().join("top.qcow2");
            create_overlay(&top, "base.raw", DiskFormat::Raw, SIZE as u64).unwrap();
            let _ = base;
            let disk = Arc::new(Qcow2Disk::open(&top, false).unwrap());
            let stripe = SIZE / THREADS;
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let disk = disk.clone();
                    let mut mine = model[t * stripe..(t + 1) * stripe].to_vec();
                    std::thread::spawn(move || {
                        let mut rand = Rand(100 + t as u64);
                        for _ in 0..800 {
                            match rand.below(3) {
                                0 => {
                                    let (at, len) = request(&mut rand, 0, stripe);
                                    let buf: Vec<u8> =
                                        (0..len).map(|_| rand.next() as u8).collect();
                                    disk.write_at(&buf, (t * stripe + at) as u64).unwrap();
                                    mine[at..at + len].copy_from_slice(&buf);
                                }
                                1 => {
                                    let (at, len) = request(&mut rand, 0, stripe);
                                    let mut buf = vec![0u8; len];
                                    disk.read_at(&mut buf, (t * stripe + at) as u64).unwrap();
                                    assert!(buf == mine[at..at + len], "thread {t} read");
                                }
                                _ => {
                                    // Anywhere: only that it answers.
                                    let (at, len) = request(&mut rand, 0, SIZE);
                                    let mut buf = vec![0u8; len];
                                    disk.read_at(&mut buf, at as u64).unwrap();
                                    if rand.below(20) == 0 {
                                        disk.flush().unwrap();
                                    }
                                }
                            }
                        }
                        mine
                    })
                })
                .collect();
            let mut expect = Vec::with_capacity(SIZE);
            for w in workers {
                expect.extend(w.join().unwrap());
            }
            disk.flush().unwrap();
            let mut all = vec![0u8; SIZE];
            disk.read_at(&mut all, 0).unwrap();
            assert!(
                all == expect,
                "the disk differs from what the threads wrote"
            );
        });
    }
}
