//! The machine's screen: the display file's video memory mapped into the guest (the bochs
//! display's BAR 0) with dirty logging, and a refresh thread that turns the hypervisor's dirty
//! log into the display file's dirty bits, about 60 times a second while a viewer looks and a few
//! times a second otherwise (so thumbnails and screenshots stay current).
//!
//! The guest writes pixels straight into the shared file: nothing is copied on the VM side.
//!
//! With the standard VGA (a BIOS machine), what the guest shows while the framebuffer (DISPI)
//! is off is the legacy VGA's: the refresh thread has the device model draw its picture (text
//! mode, and the planar and 256-colour graphics modes) when it changed (or the cursor or
//! characters blink) and writes the rows that changed into the
//! end of the video memory, which becomes the display's mode. The VGA's planes live in the
//! device model, reached through the legacy window 0xa0000..0xbffff, which is trapped MMIO
//! rather than memory: planar, odd/even and chain-4 addressing and the write modes decide
//! where each CPU byte goes, which no memory slot can do, and text mode writes few bytes.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vivarium_core::display::{DisplayMode, HEADER_SIZE, PixelFormat, SharedDisplay};
use vivarium_devices::display::bochs::{BochsDisplay, Scanout, ScanoutSink};
use vivarium_devices::display::vga::{Picture, RenderCache};
use vivarium_hypervisor::{MemoryMapping, Vm};

use crate::error::{Error, Result};

/// How often the dirty log is read while a viewer looks (about 60 Hz).
pub const ACTIVE_INTERVAL: Duration = Duration::from_millis(16);
/// How often it is read when nobody looks.
pub const IDLE_INTERVAL: Duration = Duration::from_millis(250);
/// A viewer that touched the display within this long counts as looking.
const VIEWER_WINDOW: Duration = Duration::from_secs(1);

/// The display file's video memory mapped into this process, to be given to the hypervisor.
struct VideoMemory {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory that this process never reads or writes through
// the pointer; it is only handed to the hypervisor as guest memory.
unsafe impl Send for VideoMemory {}
// SAFETY: as above.
unsafe impl Sync for VideoMemory {}

impl VideoMemory {
    fn map(display: &SharedDisplay) -> Result<VideoMemory> {
        let len = usize::try_from(display.vram_size())
            .map_err(|_| Error::Setup("the video memory is too large to map".into()))?;
        // SAFETY: a new shared mapping of `len` bytes of the display file from the page-aligned
        // offset HEADER_SIZE, which the file has (SharedDisplay checked its size); the kernel
        // chooses the address; the result is checked and unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                display.file().as_raw_fd(),
                HEADER_SIZE as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::Setup(format!(
                "could not map the display's video memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(VideoMemory {
            base: NonNull::new(base.cast()).expect("mmap does not return null on success"),
            len,
        })
    }
}

impl Drop for VideoMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`. The guest no longer reaches it:
        // the mapping is owned (through an Arc) by the screen, which lives as long as the
        // VM's devices, and those outlive every vCPU.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// The screen of one boot of the machine: the display file, its video memory in the guest
/// (which follows BAR 0), and the mode the guest shows.
pub struct Screen {
    display: Arc<SharedDisplay>,
    vm: Arc<dyn Vm>,
    memory: VideoMemory,
    /// Where the video memory is mapped now (`None`: not yet).
    address: Mutex<Option<u64>>,
    /// Whether the hypervisor gives no dirty log (then every refresh marks everything).
    no_dirty_log: std::sync::atomic::AtomicBool,
    /// The standard VGA whose text mode the refresh draws, once it is plugged in.
    legacy: std::sync::OnceLock<Arc<Mutex<BochsDisplay>>>,
    /// What was drawn of it last.
    legacy_state: Mutex<LegacyState>,
    /// When the screen was made: the blink clock.
    started: std::time::Instant,
}

/// The last drawing of the VGA: the generation and blink phase it was of, its pixels (as
/// the display file has them), and what it was made of.
#[derive(Default)]
struct LegacyState {
    key: Option<(u64, u8)>,
    shown: Option<Picture>,
    cache: RenderCache,
    /// The frame from which the next drawing is whole again.
    whole_at: u64,
}

/// Frames between whole drawings of the VGA (about a second): the picture lives in video
/// memory the guest can also write through the framebuffer BAR, so it is redrawn and rewritten
/// whole now and then, whatever changed.
const WHOLE_DRAWING_FRAMES: u64 = 60;

impl Screen {
    /// A screen over `display` whose video memory is mapped into the guest once the bochs
    /// display's BAR 0 gets an address.
    pub fn new(vm: Arc<dyn Vm>, display: Arc<SharedDisplay>) -> Result<Arc<Screen>> {
        let memory = VideoMemory::map(&display)?;
        Ok(Arc::new(Screen {
            display,
            vm,
            memory,
            address: Mutex::new(None),
            no_dirty_log: std::sync::atomic::AtomicBool::new(false),
            legacy: std::sync::OnceLock::new(),
            legacy_state: Mutex::new(LegacyState::default()),
            started: std::time::Instant::now(),
        }))
    }

    /// Shows `adapter`'s legacy VGA while its framebuffer is off (a standard VGA).
    pub fn set_legacy(&self, adapter: Arc<Mutex<BochsDisplay>>) {
        let _ = self.legacy.set(adapter);
    }

    /// Draws the legacy VGA into the end of the video memory if what it shows changed, and
    /// makes that the display's mode. Nothing while the framebuffer is on.
    pub fn refresh_legacy(&self) {
        let Some(adapter) = self.legacy.get() else {
            return;
        };
        let frame = (self.started.elapsed().as_millis() * 60 / 1000) as u64;
        let mut state = self.legacy_state.lock().unwrap_or_else(|e| e.into_inner());
        let (vga, mode) = {
            let device = adapter.lock().unwrap_or_else(|e| e.into_inner());
            let Some(vga) = device.vga().filter(|_| !device.framebuffer_enabled()) else {
                *state = LegacyState::default();
                return;
            };
            let key = (vga.generation(), vga.blink_phase(frame));
            let whole = frame >= state.whole_at;
            if state.key == Some(key) && !whole {
                return;
            }
            state.key = Some(key);
            if whole {
                state.cache = RenderCache::default();
                state.whole_at = frame + WHOLE_DRAWING_FRAMES;
            }
            let (width, height) = vga.picture_size();
            let bytes = (u64::from(width) * u64::from(height) * 4).next_multiple_of(4096);
            let Some(offset) = self.display.vram_size().checked_sub(bytes) else {
                return;
            };
            let mode = DisplayMode {
                width,
                height,
                stride: width * 4,
                offset,
                format: PixelFormat::Xrgb8888,
            };
            // The mode is set while the adapter is locked, so a framebuffer mode the guest
            // sets meanwhile comes after it and stays.
            if self.display.mode().0 != Some(mode) {
                if let Err(e) = self.display.set_mode(Some(mode)) {
                    tracing::warn!("the VGA's picture is not shown: {e}");
                    return;
                }
                state.shown = None;
                state.cache = RenderCache::default();
            }
            // A snapshot, drawn without holding up the vCPUs.
            (vga.clone(), mode)
        };
        // Only the rows that changed are drawn and written (the whole picture after a mode
        // change, when there is no earlier drawing).
        let state = &mut *state;
        let picture = state.shown.get_or_insert_with(|| Picture {
            width: 0,
            height: 0,
            pixels: Vec::new(),
        });
        let rows = vga.render_update(frame, picture, &mut state.cache);
        let row_pixels = picture.width as usize;
        for range in rows {
            let (first, end) = (range.start as usize, range.end as usize);
            let mut bytes = Vec::with_capacity((end - first) * row_pixels * 4);
            for pixel in &picture.pixels[first * row_pixels..end * row_pixels] {
                bytes.extend_from_slice(&pixel.to_le_bytes());
            }
            let at = mode.offset + (first * row_pixels * 4) as u64;
            if let Err(e) = self.display.write_vram(at, &bytes) {
                tracing::warn!("the VGA's picture could not be drawn: {e}");
                state.shown = None;
                return;
            }
        }
    }

    /// The display file.
    pub fn display(&self) -> &Arc<SharedDisplay> {
        &self.display
    }

    /// Where the video memory is mapped in the guest, once it is.
    pub fn address(&self) -> Option<u64> {
        *self.address.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn map_at(&self, address: u64) -> std::result::Result<(), vivarium_hypervisor::Error> {
        let mut current = self.address.lock().unwrap_or_else(|e| e.into_inner());
        if *current == Some(address) {
            return Ok(());
        }
        if let Some(old) = *current {
            self.vm.unmap_memory(old)?;
            *current = None;
        }
        let mapping = MemoryMapping {
            guest_address: address,
            size: self.memory.len as u64,
            host_address: self.memory.base.as_ptr(),
            read_only: false,
            log_dirty: true,
        };
        // SAFETY: the backing mapping lives as long as `self`, and the guest reaches it only
        // while the VM runs, which ends before `self` is dropped (the devices that own it go
        // after the vCPUs). The address range is BAR 0's, inside the PCI hole, where no RAM is.
        unsafe { self.vm.map_memory(mapping) }?;
        *current = Some(address);
        // A new mapping starts with an empty dirty log: whatever was there is news to viewers.
        self.display.mark_dirty(0..self.display.vram_size());
        Ok(())
    }

    /// Reads the hypervisor's dirty log of the video memory into the display's dirty bits.
    /// Without a dirty log (a hypervisor that keeps none or refuses it) marks everything, so
    /// viewers still follow.
    pub fn refresh(&self) {
        self.refresh_legacy();
        let current = self.address.lock().unwrap_or_else(|e| e.into_inner());
        let Some(address) = *current else {
            return;
        };
        use std::sync::atomic::Ordering;
        if self.no_dirty_log.load(Ordering::Relaxed) {
            self.display.mark_dirty(0..self.display.vram_size());
            return;
        }
        let log = self.vm.dirty_pages(address);
        match log {
            Ok(Some(bitmap)) => {
                self.display.mark_dirty_pages(&bitmap);
            }
            Ok(None) | Err(_) => {
                let why = match log {
                    Err(e) => e.to_string(),
                    _ => "this hypervisor keeps none".into(),
                };
                // Said once; the VM process's tracing events go to its `logs/vm.log`.
                tracing::warn!(
                    "no dirty log for the video memory ({why}): the screen is refreshed \
                     whole at every tick instead"
                );
                self.no_dirty_log.store(true, Ordering::Relaxed);
                self.display.mark_dirty(0..self.display.vram_size());
            }
        }
    }
}

impl ScanoutSink for Screen {
    fn set_scanout(&self, scanout: Option<Scanout>) {
        let mode = scanout.and_then(|s| {
            let format = PixelFormat::from_bpp(s.bpp)?;
            Some(DisplayMode {
                width: s.width,
                height: s.height,
                stride: s.stride,
                offset: s.offset,
                format,
            })
        });
        if let Err(e) = self.display.set_mode(mode) {
            tracing::warn!("the guest's display mode is not shown: {e}");
            let _ = self.display.set_mode(None);
        }
    }

    fn read_video_memory(&self, offset: u64, data: &mut [u8]) {
        if self.display.read_vram(offset, data).is_err() {
            data.fill(0);
        }
    }

    fn write_video_memory(&self, offset: u64, data: &[u8]) {
        // Outside the video memory (the device checks): dropped.
        let _ = self.display.write_vram(offset, data);
    }

    fn framebuffer_moved(&self, address: u64) {
        if let Err(e) = self.map_at(address) {
            tracing::error!(
                "could not map the video memory at {address:#x}: {e}; the guest's screen \
                 stays blank"
            );
        }
    }
}

/// The thread that refreshes a screen's dirty bits; stopped and joined when dropped.
pub struct RefreshThread {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RefreshThread {
    /// Starts refreshing `screen`.
    pub fn start(screen: Arc<Screen>) -> Result<RefreshThread> {
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("display-refresh".into())
            .spawn(move || {
                vivarium_threads::started(vivarium_threads::ThreadKind::Device);
                refresh_loop(&screen, &stopped)
            })
            .map_err(|e| Error::Setup(format!("could not start the display thread: {e}")))?;
        Ok(RefreshThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn refresh_loop(screen: &Screen, stopped: &Receiver<()>) {
    loop {
        let interval = if screen.display.viewer_active(VIEWER_WINDOW) {
            ACTIVE_INTERVAL
        } else {
            IDLE_INTERVAL
        };
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => screen.refresh(),
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for RefreshThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
