//! The shared display: a VM's framebuffer in a file that the VM process maps into the guest as
//! video memory and that the app (and `vivarium screenshot`) map to show it, with no copy
//! through a socket.
//!
//! The file is one header page followed by the video memory:
//!
//! ```text
//! offset 0      header (4096 bytes): magic, version, video memory size, the current mode
//!               (written under a sequence lock), a frame counter, a dirty bitmap, the time a
//!               viewer last looked
//! offset 4096   video memory (`vram_size` bytes), mapped into the guest as its framebuffer
//! ```
//!
//! The VM process is the writer of the mode (`set_mode`, from the display device or the boot
//! protocol) and of the dirty bits (`mark_dirty`, from the hypervisor's dirty log); viewers take
//! the dirty bits (`take_dirty_rows`) and copy only the rows that changed. Every field a viewer
//! reads is checked against the video memory size, so a broken or hostile VM process cannot make
//! a viewer read outside the mapping.
//!
//! On Linux the VM process keeps it in sealed shared memory (`memfd_create`, sealed against
//! shrinking and growing) instead of a file in the runtime folder, and hands it to viewers over
//! its control socket (`ControlClient::open_display`). A viewer maps it only once it has checked
//! the seal, so a hostile VM process cannot truncate the memory under a viewer and kill it with
//! SIGBUS; no file is left behind however the VM process ends.
//!
//! Hand-written on `mmap` rather than a mapping crate: the video memory is written concurrently
//! by the guest, so it is only ever reached through raw pointers and volatile-style copies, never
//! as a Rust slice, which the safe wrappers of mapping crates would hand out.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Size of the header page at the start of the file; the video memory follows it.
pub const HEADER_SIZE: u64 = 4096;
/// The largest video memory a display file may have (64 MiB: 4K at 32 bits per pixel, twice).
pub const MAX_VRAM_SIZE: u64 = 64 << 20;
/// Video memory size given to a VM when nothing else is asked for (16 MiB, like QEMU's
/// bochs-display: enough for 2560x1600 at 32 bits per pixel).
pub const DEFAULT_VRAM_SIZE: u64 = 16 << 20;
/// Number of dirty bits in the header; each covers `vram_size / DIRTY_BITS` bytes (at least a
/// page).
pub const DIRTY_BITS: u64 = 4096;

const MAGIC: [u8; 8] = *b"VIVDISP\0";
const VERSION: u32 = 1;
const DIRTY_WORDS: usize = (DIRTY_BITS / 64) as usize;

/// Errors of the shared display.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The display file could not be created, opened or mapped.
    #[error("display file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is not a Vivarium display (wrong magic, version or size).
    #[error(
        "{path} is not a Vivarium display file ({what}); is the VM running a different Vivarium version?"
    )]
    NotADisplay {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The video memory size asked for is not possible.
    #[error(
        "video memory of {0} bytes is not possible: it must be a multiple of 4096 between 64 KiB and 64 MiB"
    )]
    BadVramSize(u64),
    /// A mode does not fit in the video memory.
    #[error("display mode {0} does not fit in the video memory")]
    ModeTooLarge(DisplayMode),
    /// Shared memory handed to a viewer that the VM process could still shrink under it.
    #[error(
        "{what} is not sealed against shrinking, so the VM process could make the viewer crash: refused"
    )]
    NotSealed {
        /// What was handed over.
        what: String,
    },
}

/// The seals a display's shared memory carries, and which a viewer requires.
#[cfg(target_os = "linux")]
const DISPLAY_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// How pixels are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// 32 bits per pixel, bytes blue, green, red, unused (DRM's XRGB8888, little endian).
    Xrgb8888,
    /// 24 bits per pixel, bytes blue, green, red.
    Rgb888,
    /// 16 bits per pixel, 5 red, 6 green, 5 blue (little endian).
    Rgb565,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> u32 {
        match self {
            PixelFormat::Xrgb8888 => 4,
            PixelFormat::Rgb888 => 3,
            PixelFormat::Rgb565 => 2,
        }
    }

    /// The format for a bits-per-pixel value as VGA/VBE and the bochs registers give it.
    pub fn from_bpp(bpp: u32) -> Option<PixelFormat> {
        match bpp {
            32 => Some(PixelFormat::Xrgb8888),
            24 => Some(PixelFormat::Rgb888),
            16 => Some(PixelFormat::Rgb565),
            _ => None,
        }
    }

    fn code(self) -> u32 {
        match self {
            PixelFormat::Xrgb8888 => 1,
            PixelFormat::Rgb888 => 2,
            PixelFormat::Rgb565 => 3,
        }
    }

    fn from_code(code: u32) -> Option<PixelFormat> {
        match code {
            1 => Some(PixelFormat::Xrgb8888),
            2 => Some(PixelFormat::Rgb888),
            3 => Some(PixelFormat::Rgb565),
            _ => None,
        }
    }
}

/// What the guest shows: a `width` x `height` picture starting `offset` bytes into the video
/// memory, `stride` bytes per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DisplayMode {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes from the start of one row to the next.
    pub stride: u32,
    /// Byte offset of the first row in the video memory.
    pub offset: u64,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl std::fmt::Display for DisplayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}x{} {:?} (stride {}, offset {})",
            self.width, self.height, self.format, self.stride, self.offset
        )
    }
}

impl DisplayMode {
    /// A mode with rows packed one after the other at the start of the video memory.
    pub fn packed(width: u32, height: u32, format: PixelFormat) -> DisplayMode {
        DisplayMode {
            width,
            height,
            stride: width * format.bytes_per_pixel(),
            offset: 0,
            format,
        }
    }

    /// Bytes of video memory the mode covers, from `offset` to the end of the last row; `None`
    /// if the numbers are nonsense (zero size, a stride shorter than a row, overflow).
    pub fn span(&self) -> Option<u64> {
        if self.width == 0 || self.height == 0 || self.width > 16384 || self.height > 16384 {
            return None;
        }
        let row = u64::from(self.width) * u64::from(self.format.bytes_per_pixel());
        if u64::from(self.stride) < row {
            return None;
        }
        let last_row = u64::from(self.height - 1) * u64::from(self.stride);
        self.offset.checked_add(last_row)?.checked_add(row)
    }

    /// Whether the mode lies inside video memory of `vram_size` bytes.
    pub fn fits(&self, vram_size: u64) -> bool {
        self.span().is_some_and(|end| end <= vram_size)
    }
}

/// The header page, as laid out in the file. Every field is read and written atomically
/// (little-endian hosts only: x86_64 and aarch64).
#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_size: u32,
    vram_size: u64,
    /// Sequence lock over the mode fields: odd while the writer changes them.
    mode_lock: AtomicU64,
    /// 0 when the guest shows nothing (display off), else a `PixelFormat` code.
    format: AtomicU32,
    width: AtomicU32,
    height: AtomicU32,
    stride: AtomicU32,
    offset: AtomicU64,
    /// Incremented on every mode change.
    mode_generation: AtomicU64,
    /// Incremented whenever video memory content changed (after the dirty bits are set).
    frame_counter: AtomicU64,
    /// Unix time in milliseconds at which a viewer last looked (0: never).
    viewer_seen_ms: AtomicU64,
    /// Bit `i` set: bytes `[i * chunk, (i + 1) * chunk)` of the video memory changed since a
    /// viewer last took the bits.
    dirty: [AtomicU64; DIRTY_WORDS],
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_SIZE as usize);

/// A VM's display file, mapped.
pub struct SharedDisplay {
    /// Where it is on the file system (`None` for sealed shared memory), or what to call it.
    path: Option<PathBuf>,
    label: PathBuf,
    file: File,
    base: NonNull<u8>,
    len: usize,
    vram_size: u64,
}

// SAFETY: the mapping is plain shared memory; all header accesses are atomic and video memory is
// only copied through raw pointers, so the handle may move to and be shared between threads.
unsafe impl Send for SharedDisplay {}
// SAFETY: as above; no method hands out a reference into the mapping that could alias a write.
unsafe impl Sync for SharedDisplay {}

impl std::fmt::Debug for SharedDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDisplay")
            .field("path", &self.label)
            .field("vram_size", &self.vram_size)
            .finish()
    }
}

impl SharedDisplay {
    /// Creates the display file at `path` (mode 0600, replacing a stale one) with `vram_size`
    /// bytes of zeroed video memory and no mode set.
    pub fn create(path: &Path, vram_size: u64) -> Result<SharedDisplay, DisplayError> {
        if !(64 << 10..=MAX_VRAM_SIZE).contains(&vram_size) || !vram_size.is_multiple_of(4096) {
            return Err(DisplayError::BadVramSize(vram_size));
        }
        let io_err = |source| DisplayError::Io {
            path: path.to_path_buf(),
            source,
        };
        // A new inode each time: a viewer still mapping the file of a previous run keeps its
        // own (dead) copy instead of seeing this run's memory change size under it.
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err)?;
        file.set_len(HEADER_SIZE + vram_size).map_err(io_err)?;
        let display = SharedDisplay::map(Some(path), path, file, vram_size)?;
        display.write_identity();
        Ok(display)
    }

    /// Creates a display in sealed shared memory (Linux's `memfd_create`): `vram_size` bytes of
    /// zeroed video memory, no mode set, sealed so that its size can never change. `name` is
    /// what `/proc` and error messages call it. Viewers get it through
    /// [`SharedDisplay::try_clone_file`] and [`SharedDisplay::from_file`].
    #[cfg(target_os = "linux")]
    pub fn create_sealed(name: &str, vram_size: u64) -> Result<SharedDisplay, DisplayError> {
        use std::os::fd::FromRawFd;
        if !(64 << 10..=MAX_VRAM_SIZE).contains(&vram_size) || !vram_size.is_multiple_of(4096) {
            return Err(DisplayError::BadVramSize(vram_size));
        }
        let label = PathBuf::from(format!("the shared memory `{name}`"));
        let io_err = |source| DisplayError::Io {
            path: label.clone(),
            source,
        };
        let c_name = std::ffi::CString::new(name.replace('\0', "_")).expect("NULs were replaced");
        // SAFETY: memfd_create with a valid C string and flags; the descriptor it returns is
        // owned by the File made right after.
        let fd = unsafe {
            libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(HEADER_SIZE + vram_size).map_err(io_err)?;
        // SAFETY: fcntl F_ADD_SEALS on a descriptor we own, with constant flags.
        if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, DISPLAY_SEALS) } != 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        let display = SharedDisplay::map(None, &label, file, vram_size)?;
        display.write_identity();
        Ok(display)
    }

    /// A new descriptor of the display's memory, to hand to a viewer.
    pub fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Writes the header's identity (magic last), once, when the display is created.
    fn write_identity(&self) {
        let vram_size = self.vram_size;
        let header = self.header_ptr();
        // SAFETY: the mapping is at least HEADER_SIZE long and freshly zeroed; nobody else has it
        // mapped with a valid magic yet, so the plain writes of the identity fields race with no
        // reader that trusts them (readers check the magic, written last with a release fence).
        unsafe {
            std::ptr::addr_of_mut!((*header).version).write(VERSION);
            std::ptr::addr_of_mut!((*header).header_size).write(HEADER_SIZE as u32);
            std::ptr::addr_of_mut!((*header).vram_size).write(vram_size);
            std::sync::atomic::fence(Ordering::Release);
            std::ptr::addr_of_mut!((*header).magic).write(MAGIC);
        }
    }

    /// Opens an existing display file for viewing (a display made by
    /// [`SharedDisplay::create`]: tests, and platforms without sealed shared memory).
    pub fn open(path: &Path) -> Result<SharedDisplay, DisplayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DisplayError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        SharedDisplay::check_and_map(Some(path), path, file)
    }

    /// Views the display whose memory a VM process handed over (see
    /// [`SharedDisplay::create_sealed`]); `what` names it in errors. On Linux the memory must
    /// be sealed against shrinking: otherwise it is refused, as the VM process could truncate
    /// it under this viewer.
    pub fn from_file(file: File, what: &str) -> Result<SharedDisplay, DisplayError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: fcntl F_GET_SEALS on a descriptor we own.
            let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
            if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
                return Err(DisplayError::NotSealed { what: what.into() });
            }
        }
        SharedDisplay::check_and_map(None, Path::new(what), file)
    }

    fn check_and_map(
        path: Option<&Path>,
        label: &Path,
        file: File,
    ) -> Result<SharedDisplay, DisplayError> {
        let io_err = |source| DisplayError::Io {
            path: label.to_path_buf(),
            source,
        };
        let not = |what: String| DisplayError::NotADisplay {
            path: label.to_path_buf(),
            what,
        };
        let len = file.metadata().map_err(io_err)?.len();
        if len < HEADER_SIZE {
            return Err(not(format!("{len} bytes is too short")));
        }
        let mut head = [0u8; 24];
        {
            use std::os::unix::fs::FileExt;
            file.read_exact_at(&mut head, 0).map_err(io_err)?;
        }
        if head[..8] != MAGIC {
            return Err(not("wrong magic".into()));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(not(format!(
                "version {version}, this Vivarium reads {VERSION}"
            )));
        }
        let vram_size = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        if vram_size > MAX_VRAM_SIZE || HEADER_SIZE + vram_size != len {
            return Err(not(format!(
                "video memory of {vram_size} bytes in a file of {len} bytes"
            )));
        }
        SharedDisplay::map(path, label, file, vram_size)
    }

    fn map(
        path: Option<&Path>,
        label: &Path,
        file: File,
        vram_size: u64,
    ) -> Result<SharedDisplay, DisplayError> {
        use std::os::fd::AsRawFd;
        let len = (HEADER_SIZE + vram_size) as usize;
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address. The result is checked before use and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(DisplayError::Io {
                path: label.to_path_buf(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(SharedDisplay {
            path: path.map(Path::to_path_buf),
            label: label.to_path_buf(),
            file,
            base: NonNull::new(base.cast()).expect("mmap does not return null on success"),
            len,
            vram_size,
        })
    }

    fn header_ptr(&self) -> *mut Header {
        self.base.as_ptr().cast()
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts page-aligned with at least HEADER_SIZE bytes, which holds a
        // Header; its mutable fields are atomics, and the identity fields are not changed after
        // `create` wrote them.
        unsafe { &*self.header_ptr() }
    }

    /// The file's path; `None` for sealed shared memory, which has none.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What to call the display in messages: its path, or which shared memory it is.
    pub fn label(&self) -> &Path {
        &self.label
    }

    /// The open file, for the VM process to map the video memory (at `HEADER_SIZE`) into the
    /// guest.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Size of the video memory in bytes.
    pub fn vram_size(&self) -> u64 {
        self.vram_size
    }

    /// Bytes of video memory covered by one dirty bit.
    pub fn dirty_chunk(&self) -> u64 {
        (self.vram_size / DIRTY_BITS).max(4096)
    }

    /// Sets what the guest shows (`None`: the display is off). Refuses a mode that does not fit
    /// in the video memory. Marks the whole picture dirty.
    pub fn set_mode(&self, mode: Option<DisplayMode>) -> Result<(), DisplayError> {
        if let Some(mode) = mode
            && !mode.fits(self.vram_size)
        {
            return Err(DisplayError::ModeTooLarge(mode));
        }
        let h = self.header();
        // Single writer (the VM process serialises mode changes), so a plain increment to odd,
        // the stores, and an increment to even form the sequence lock.
        h.mode_lock.fetch_add(1, Ordering::AcqRel);
        match mode {
            None => h.format.store(0, Ordering::Relaxed),
            Some(m) => {
                h.width.store(m.width, Ordering::Relaxed);
                h.height.store(m.height, Ordering::Relaxed);
                h.stride.store(m.stride, Ordering::Relaxed);
                h.offset.store(m.offset, Ordering::Relaxed);
                h.format.store(m.format.code(), Ordering::Relaxed);
            }
        }
        h.mode_generation.fetch_add(1, Ordering::Relaxed);
        h.mode_lock.fetch_add(1, Ordering::Release);
        self.mark_dirty(0..self.vram_size);
        Ok(())
    }

    /// What the guest shows now, and the mode generation it belongs to; `None` when the display
    /// is off or the header holds a mode that does not fit (a viewer never trusts it).
    pub fn mode(&self) -> (Option<DisplayMode>, u64) {
        let h = self.header();
        loop {
            let before = h.mode_lock.load(Ordering::Acquire);
            if !before.is_multiple_of(2) {
                std::hint::spin_loop();
                continue;
            }
            let format = h.format.load(Ordering::Relaxed);
            let mode = PixelFormat::from_code(format).map(|format| DisplayMode {
                width: h.width.load(Ordering::Relaxed),
                height: h.height.load(Ordering::Relaxed),
                stride: h.stride.load(Ordering::Relaxed),
                offset: h.offset.load(Ordering::Relaxed),
                format,
            });
            let generation = h.mode_generation.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if h.mode_lock.load(Ordering::Relaxed) == before {
                return (mode.filter(|m| m.fits(self.vram_size)), generation);
            }
        }
    }

    /// Records that bytes `range` of the video memory changed, and bumps the frame counter.
    pub fn mark_dirty(&self, range: Range<u64>) {
        let end = range.end.min(self.vram_size);
        if range.start >= end {
            return;
        }
        let chunk = self.dirty_chunk();
        let first = range.start / chunk;
        let last = (end - 1) / chunk;
        let h = self.header();
        for bit in first..=last.min(DIRTY_BITS - 1) {
            h.dirty[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
        h.frame_counter.fetch_add(1, Ordering::Release);
    }

    /// Records changed pages from a dirty-page bitmap (bit `i` of word `w`: page `w * 64 + i`
    /// of the video memory, 4 KiB pages, as KVM's dirty log gives it). Bumps the frame counter
    /// once if anything was set; returns whether anything was.
    pub fn mark_dirty_pages(&self, bitmap: &[u64]) -> bool {
        let chunk_pages = self.dirty_chunk() / 4096;
        let h = self.header();
        let mut any = false;
        for (w, &word) in bitmap.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = (w as u64) * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let bit = page / chunk_pages;
                if bit < DIRTY_BITS {
                    h.dirty[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
                    any = true;
                }
            }
        }
        if any {
            h.frame_counter.fetch_add(1, Ordering::Release);
        }
        any
    }

    /// The frame counter: changes whenever video memory content or the mode changed.
    pub fn frame_counter(&self) -> u64 {
        self.header().frame_counter.load(Ordering::Acquire)
    }

    /// Takes (and clears) the dirty bits and returns the rows of `mode` they touch, as one
    /// range from the first to the last changed row; `None` if nothing in the picture changed.
    pub fn take_dirty_rows(&self, mode: &DisplayMode) -> Option<Range<u32>> {
        let chunk = self.dirty_chunk();
        let h = self.header();
        let span_end = mode.span()?;
        let mut lo = u64::MAX;
        let mut hi = 0u64;
        for (w, word) in h.dirty.iter().enumerate() {
            let mut bits = word.swap(0, Ordering::AcqRel);
            while bits != 0 {
                let bit = (w as u64) * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = bit * chunk;
                let end = start + chunk;
                if end <= mode.offset || start >= span_end {
                    continue;
                }
                lo = lo.min(start.max(mode.offset));
                hi = hi.max(end.min(span_end));
            }
        }
        if lo >= hi {
            return None;
        }
        let stride = u64::from(mode.stride);
        let first = (lo - mode.offset) / stride;
        let last = (hi - 1 - mode.offset) / stride;
        Some(first as u32..(last as u32 + 1).min(mode.height))
    }

    /// Copies `dst.len()` bytes of video memory starting at `offset`; refuses a range outside
    /// the video memory.
    pub fn read_vram(&self, offset: u64, dst: &mut [u8]) -> Result<(), DisplayError> {
        let end = offset.checked_add(dst.len() as u64);
        if end.is_none_or(|end| end > self.vram_size) {
            return Err(DisplayError::Io {
                path: self.label.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "read of {} bytes at {offset} is outside the video memory",
                        dst.len()
                    ),
                ),
            });
        }
        // SAFETY: the range was checked to lie inside the video memory part of the mapping, and
        // `dst` is a distinct Rust buffer. The guest may write the source concurrently; the copy
        // then holds a mix of old and new pixels, which the next dirty frame repairs.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add((HEADER_SIZE + offset) as usize),
                dst.as_mut_ptr(),
                dst.len(),
            );
        }
        Ok(())
    }

    /// Writes bytes into the video memory at `offset` (for tests and for a VM process that
    /// draws its own pictures); refuses a range outside it and marks the bytes dirty.
    pub fn write_vram(&self, offset: u64, src: &[u8]) -> Result<(), DisplayError> {
        let end = offset.checked_add(src.len() as u64);
        if end.is_none_or(|end| end > self.vram_size) {
            return Err(DisplayError::Io {
                path: self.label.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "write of {} bytes at {offset} is outside the video memory",
                        src.len()
                    ),
                ),
            });
        }
        // SAFETY: the range was checked to lie inside the video memory part of the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.base.as_ptr().add((HEADER_SIZE + offset) as usize),
                src.len(),
            );
        }
        self.mark_dirty(offset..offset + src.len() as u64);
        Ok(())
    }

    /// Converts rows `rows` of the picture in `mode` to RGBA (8 bits per channel, alpha 255)
    /// into `rgba`, which holds `width * 4` bytes per row for those rows.
    pub fn read_rows_rgba(
        &self,
        mode: &DisplayMode,
        rows: Range<u32>,
        rgba: &mut [u8],
    ) -> Result<(), DisplayError> {
        let width = mode.width as usize;
        let bpp = mode.format.bytes_per_pixel() as usize;
        let rows = rows.start.min(mode.height)..rows.end.min(mode.height);
        assert!(
            rgba.len() >= rows.len() * width * 4,
            "RGBA buffer too small for {} rows",
            rows.len()
        );
        let mut line = vec![0u8; width * bpp];
        for (i, y) in rows.enumerate() {
            self.read_vram(
                mode.offset + u64::from(y) * u64::from(mode.stride),
                &mut line,
            )?;
            let out = &mut rgba[i * width * 4..(i + 1) * width * 4];
            convert_row(mode.format, &line, out);
        }
        Ok(())
    }

    /// The whole picture as RGBA with its size, or `None` when the display is off.
    pub fn snapshot_rgba(&self) -> Result<Option<(DisplayMode, Vec<u8>)>, DisplayError> {
        let (Some(mode), _) = self.mode() else {
            return Ok(None);
        };
        let mut rgba = vec![0u8; mode.width as usize * mode.height as usize * 4];
        self.read_rows_rgba(&mode, 0..mode.height, &mut rgba)?;
        Ok(Some((mode, rgba)))
    }

    /// Tells the VM process that a viewer is looking now (it then follows the guest's changes
    /// at full rate rather than slowly).
    pub fn touch_viewer(&self) {
        self.header()
            .viewer_seen_ms
            .store(unix_millis(SystemTime::now()), Ordering::Relaxed);
    }

    /// Whether a viewer looked within `within`.
    pub fn viewer_active(&self, within: Duration) -> bool {
        let seen = self.header().viewer_seen_ms.load(Ordering::Relaxed);
        seen != 0
            && unix_millis(SystemTime::now()).saturating_sub(seen) <= within.as_millis() as u64
    }
}

impl Drop for SharedDisplay {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference into it outlives self.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn convert_row(format: PixelFormat, src: &[u8], out: &mut [u8]) {
    match format {
        PixelFormat::Xrgb8888 => {
            for (px, o) in src.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&[px[2], px[1], px[0], 255]);
            }
        }
        PixelFormat::Rgb888 => {
            for (px, o) in src.chunks_exact(3).zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&[px[2], px[1], px[0], 255]);
            }
        }
        PixelFormat::Rgb565 => {
            for (px, o) in src.chunks_exact(2).zip(out.chunks_exact_mut(4)) {
                let v = u16::from_le_bytes([px[0], px[1]]);
                let r = ((v >> 11) & 0x1f) as u8;
                let g = ((v >> 5) & 0x3f) as u8;
                let b = (v & 0x1f) as u8;
                o.copy_from_slice(&[
                    (r << 3) | (r >> 2),
                    (g << 2) | (g >> 4),
                    (b << 3) | (b >> 2),
                    255,
                ]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The VM side cannot change the size of a sealed display, and a viewer refuses memory
    /// that is not sealed: a hostile VM process cannot truncate a viewer's mapping.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_sealed_display_cannot_shrink_and_viewers_refuse_unsealed_memory() {
        let vm = SharedDisplay::create_sealed("test-display", 1 << 20).unwrap();
        let file = vm.try_clone_file().unwrap();
        let shrink = file.set_len(HEADER_SIZE).unwrap_err();
        assert_eq!(shrink.raw_os_error(), Some(libc::EPERM), "{shrink}");
        let grow = file.set_len(HEADER_SIZE + (2 << 20)).unwrap_err();
        assert_eq!(grow.raw_os_error(), Some(libc::EPERM), "{grow}");
        let view = SharedDisplay::from_file(file, "the test display").unwrap();
        vm.set_mode(Some(DisplayMode::packed(64, 32, PixelFormat::Xrgb8888)))
            .unwrap();
        assert_eq!(view.mode().0.unwrap().width, 64);

        // A file of the right shape, but not sealed: refused before it is mapped.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unsealed");
        let unsealed = SharedDisplay::create(&path, 1 << 20).unwrap();
        let refused = SharedDisplay::from_file(unsealed.try_clone_file().unwrap(), "a file")
            .unwrap_err()
            .to_string();
        assert!(refused.contains("not sealed"), "{refused}");
    }

    use super::*;

    fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        (dir, path)
    }

    #[test]
    fn a_viewer_sees_the_mode_and_pixels_the_vm_writes() {
        let (_dir, path) = temp("vm.display");
        let vm = SharedDisplay::create(&path, 1 << 20).unwrap();
        let viewer = SharedDisplay::open(&path).unwrap();
        assert_eq!(viewer.mode().0, None);
        let mode = DisplayMode::packed(4, 2, PixelFormat::Xrgb8888);
        vm.set_mode(Some(mode)).unwrap();
        // One red pixel at (1, 1): bytes B, G, R, X.
        vm.write_vram(u64::from(mode.stride) + 4, &[0, 0, 255, 0])
            .unwrap();
        let (seen, generation) = viewer.mode();
        assert_eq!(seen, Some(mode));
        assert_eq!(generation, 1);
        let (_, rgba) = viewer.snapshot_rgba().unwrap().unwrap();
        assert_eq!(&rgba[(4 + 1) * 4..(4 + 2) * 4], &[255, 0, 0, 255]);
        assert_eq!(&rgba[..4], &[0, 0, 0, 255]);
    }

    #[test]
    fn dirty_bits_give_the_changed_rows_once() {
        let (_dir, path) = temp("vm.display");
        let vm = SharedDisplay::create(&path, 16 << 20).unwrap();
        let viewer = SharedDisplay::open(&path).unwrap();
        let mode = DisplayMode::packed(1024, 768, PixelFormat::Xrgb8888);
        vm.set_mode(Some(mode)).unwrap();
        assert_eq!(viewer.take_dirty_rows(&mode), Some(0..768));
        assert_eq!(viewer.take_dirty_rows(&mode), None);
        let before = viewer.frame_counter();
        // Row 100 is at 100 * 4096 bytes: exactly page 100.
        let mut bitmap = vec![0u64; 64];
        bitmap[1] = 1 << (100 - 64);
        assert!(vm.mark_dirty_pages(&bitmap));
        assert!(viewer.frame_counter() > before);
        assert_eq!(viewer.take_dirty_rows(&mode), Some(100..101));
        assert!(!vm.mark_dirty_pages(&[0; 64]));
        // Changes outside the picture are not rows of it.
        vm.mark_dirty(15 << 20..(15 << 20) + 1);
        assert_eq!(viewer.take_dirty_rows(&mode), None);
    }

    #[test]
    fn pixel_formats_convert_to_rgba() {
        let mut out = [0u8; 4];
        convert_row(PixelFormat::Rgb565, &0xf800u16.to_le_bytes(), &mut out);
        assert_eq!(out, [255, 0, 0, 255]);
        convert_row(PixelFormat::Rgb565, &0x07e0u16.to_le_bytes(), &mut out);
        assert_eq!(out, [0, 255, 0, 255]);
        convert_row(PixelFormat::Rgb888, &[255, 0, 0], &mut out);
        assert_eq!(out, [0, 0, 255, 255]);
    }

    #[test]
    fn modes_that_do_not_fit_are_refused() {
        let (_dir, path) = temp("vm.display");
        let vm = SharedDisplay::create(&path, 1 << 20).unwrap();
        let big = DisplayMode::packed(1920, 1080, PixelFormat::Xrgb8888);
        assert!(matches!(
            vm.set_mode(Some(big)),
            Err(DisplayError::ModeTooLarge(_))
        ));
        let bad_stride = DisplayMode {
            stride: 10,
            ..DisplayMode::packed(100, 10, PixelFormat::Xrgb8888)
        };
        assert!(!bad_stride.fits(1 << 20));
        let zero = DisplayMode::packed(0, 10, PixelFormat::Xrgb8888);
        assert!(!zero.fits(1 << 20));
        let mut buf = [0u8; 8];
        assert!(vm.read_vram((1 << 20) - 4, &mut buf).is_err());
        assert!(vm.read_vram(u64::MAX - 2, &mut buf).is_err());
        assert!(SharedDisplay::create(&path, 12345).is_err());
    }

    #[test]
    fn files_that_are_not_displays_are_refused() {
        let (_dir, path) = temp("junk");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let err = SharedDisplay::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a Vivarium display file"), "{err}");
        std::fs::write(&path, b"short").unwrap();
        assert!(SharedDisplay::open(&path).is_err());
        // A display file whose size disagrees with its header.
        let good = path.with_extension("display");
        drop(SharedDisplay::create(&good, 1 << 20).unwrap());
        let f = OpenOptions::new().write(true).open(&good).unwrap();
        f.set_len(HEADER_SIZE + 4096).unwrap();
        assert!(SharedDisplay::open(&good).is_err());
    }

    #[test]
    fn a_viewer_is_active_while_it_looks() {
        let (_dir, path) = temp("vm.display");
        let vm = SharedDisplay::create(&path, 1 << 20).unwrap();
        assert!(!vm.viewer_active(Duration::from_secs(1)));
        SharedDisplay::open(&path).unwrap().touch_viewer();
        assert!(vm.viewer_active(Duration::from_secs(1)));
    }

    #[test]
    fn recreating_leaves_an_old_viewer_on_its_own_copy() {
        let (_dir, path) = temp("vm.display");
        let first = SharedDisplay::create(&path, 1 << 20).unwrap();
        first
            .set_mode(Some(DisplayMode::packed(8, 8, PixelFormat::Xrgb8888)))
            .unwrap();
        let viewer = SharedDisplay::open(&path).unwrap();
        drop(first);
        let second = SharedDisplay::create(&path, 2 << 20).unwrap();
        assert_eq!(viewer.vram_size(), 1 << 20);
        assert!(viewer.mode().0.is_some());
        assert_eq!(second.mode().0, None);
    }
}
