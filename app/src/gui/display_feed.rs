//! A running VM's screen, followed off the UI thread: a [`DisplayFeed`] thread maps the VM's
//! display file ([`vivarium_core::display`]), keeps an RGBA mirror of the picture with the rows
//! that changed since the UI last looked (only while the Screen tab shows it), and a small
//! thumbnail for the sidebar, refreshed a few times a second at most.
//!
//! The thread polls two counters in shared memory (the mode generation and the frame counter)
//! on a timer: 60 times a second while the screen is shown, 4 times a second otherwise. It asks
//! the UI to repaint only when it has something new, so a static screen costs no frames.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use eframe::egui::{self, Color32, ColorImage};
use vivarium_core::control::{ControlClient, ControlError};
use vivarium_core::display::{DisplayError, DisplayMode, SharedDisplay};
use vivarium_core::library::Library;

/// Poll interval while the screen is shown: at most 60 updates a second.
pub const SHOWN_INTERVAL: Duration = Duration::from_micros(16_667);
/// Poll interval while only the thumbnail is wanted.
const THUMBNAIL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a missing display file is looked for again.
const REOPEN_INTERVAL: Duration = Duration::from_millis(250);
/// The largest thumbnail, in pixels (the sidebar shows it at 44x33 points, twice that on
/// HiDPI screens).
pub const THUMBNAIL_MAX: [usize; 2] = [128, 96];

/// Where the feed is with the display file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedStatus {
    /// The display file is not there yet (the VM process is starting).
    Waiting,
    /// The file is mapped; the guest has not turned its display on (or turned it off).
    Off,
    /// The guest shows a picture.
    On,
    /// The file exists but cannot be used; the text says why.
    Failed(String),
}

/// UI passes the app's window has completed (the screen is drawn in the root viewport, also
/// when full screen).
fn ui_passes(ctx: &egui::Context) -> u64 {
    ctx.cumulative_pass_nr_for(egui::ViewportId::ROOT)
}

/// The picture as the feed last mirrored it, and what changed since the UI took it.
pub struct Picture {
    /// The mode the mirror is in (`None`: display off).
    pub mode: Option<DisplayMode>,
    /// The whole picture, RGBA.
    pub image: ColorImage,
    /// Rows changed since the UI last took them.
    pub changed: Option<Range<u32>>,
    /// The size changed (or the mirror was refilled): the UI uploads the whole picture.
    pub resized: bool,
    /// Updates the feed produced (for tests and the benchmark).
    pub updates: u64,
}

/// The latest thumbnail.
#[derive(Clone)]
pub struct Thumbnail {
    /// The downscaled picture.
    pub image: Arc<ColorImage>,
    /// Increases with every new thumbnail.
    pub serial: u64,
}

struct Shared {
    status: Mutex<FeedStatus>,
    picture: Mutex<Picture>,
    thumbnail: Mutex<Option<Thumbnail>>,
    /// One more than the number of UI passes completed when the UI last drew the screen; 0:
    /// never. The screen counts as shown while no UI pass has completed without drawing it,
    /// so a window that stays still (no repaints) keeps it shown without a heartbeat.
    shown_in_pass: AtomicU64,
    stop: AtomicBool,
}

/// Follows one run of one VM's display file on a thread of its own; the thread ends when the
/// feed is dropped.
pub struct DisplayFeed {
    shared: Arc<Shared>,
    ctx: egui::Context,
}

impl DisplayFeed {
    /// Starts following VM `name`'s screen: its VM process hands the display over its control
    /// socket (sealed shared memory, see `vivarium_core::display`), asked again until it does.
    /// `ctx` is asked to repaint when there is something new to show.
    pub fn start_for_vm(library: &Library, name: &str, ctx: egui::Context) -> DisplayFeed {
        let (library, vm) = (library.clone(), name.to_string());
        let open: DisplayOpener = Box::new(move || {
            match ControlClient::connect(&library, &vm).and_then(|mut c| c.open_display()) {
                Ok(display) => Ok(Some(display)),
                // Not (yet, or no longer) answering: wait.
                Err(ControlError::NotRunning(_) | ControlError::Io { .. }) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        });
        DisplayFeed::start(open, name, ctx)
    }

    /// Starts following the display that `open` gives: `Ok(None)` while there is none yet,
    /// an error when there will be none. `ctx` is asked to repaint when there is something
    /// new to show.
    pub fn start(open: DisplayOpener, label: &str, ctx: egui::Context) -> DisplayFeed {
        let shared = Arc::new(Shared {
            status: Mutex::new(FeedStatus::Waiting),
            picture: Mutex::new(Picture {
                mode: None,
                image: ColorImage::filled([0, 0], Color32::BLACK),
                changed: None,
                resized: false,
                updates: 0,
            }),
            thumbnail: Mutex::new(None),
            shown_in_pass: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        let ctx_for_thread = ctx.clone();
        let started = std::thread::Builder::new()
            .name(format!("display-{label}"))
            .spawn(move || Follower::new(for_thread, open, ctx_for_thread).run());
        if let Err(e) = started {
            *lock(&shared.status) = FeedStatus::Failed(format!("no thread to follow it: {e}"));
        }
        DisplayFeed { shared, ctx }
    }

    /// Where the feed is with the display file.
    pub fn status(&self) -> FeedStatus {
        lock(&self.shared.status).clone()
    }

    /// Tells the feed the UI draws the screen in this pass: it follows at full rate and tells
    /// the VM process a viewer is looking, until a UI pass completes without this call.
    pub fn mark_shown(&self) {
        let pass = ui_passes(&self.ctx);
        self.shared.shown_in_pass.store(pass + 1, Ordering::Release);
    }

    /// The mirrored picture, locked; the caller takes `changed` and `resized`.
    pub fn picture(&self) -> MutexGuard<'_, Picture> {
        lock(&self.shared.picture)
    }

    /// The latest thumbnail, if the guest showed anything yet.
    pub fn thumbnail(&self) -> Option<Thumbnail> {
        lock(&self.shared.thumbnail).clone()
    }
}

impl Drop for DisplayFeed {
    fn drop(&mut self) {
        // Not joined: the thread notices within REOPEN_INTERVAL or THUMBNAIL_INTERVAL and
        // ends (unmapping the file), and the UI thread does not wait for that.
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// How a feed gets its display: `Ok(None)` while there is none yet.
pub type DisplayOpener = Box<dyn FnMut() -> Result<Option<SharedDisplay>, String> + Send>;

/// The feed thread's own state.
struct Follower {
    shared: Arc<Shared>,
    open: DisplayOpener,
    ctx: egui::Context,
    display: Option<SharedDisplay>,
    /// Mode generation and frame counter the mirror is current with (`None`: refill it).
    mirrored: Option<(u64, u64)>,
    /// Mode generation and frame counter of the last thumbnail.
    thumbnailed: Option<(u64, u64)>,
    last_thumbnail: Option<Instant>,
    thumbnail_serial: u64,
    /// Rows read from the display before they go into the mirror (outside its lock).
    scratch: Vec<u8>,
}

impl Follower {
    fn new(shared: Arc<Shared>, open: DisplayOpener, ctx: egui::Context) -> Follower {
        Follower {
            shared,
            open,
            ctx,
            display: None,
            mirrored: None,
            thumbnailed: None,
            last_thumbnail: None,
            thumbnail_serial: 0,
            scratch: Vec::new(),
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let interval = if self.display.is_none() {
                self.try_open();
                REOPEN_INTERVAL
            } else if self.shown() {
                self.follow_shown();
                SHOWN_INTERVAL
            } else {
                // Not shown: the mirror goes stale and is refilled when shown again.
                self.mirrored = None;
                self.update_thumbnail();
                THUMBNAIL_INTERVAL
            };
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }

    fn shown(&self) -> bool {
        // The passes first: a whole pass that drew the screen between the two loads must not
        // read as a pass that did not.
        let passes = ui_passes(&self.ctx);
        let marked = self.shared.shown_in_pass.load(Ordering::Acquire);
        marked != 0 && marked >= passes
    }

    fn set_status(&self, status: FeedStatus) {
        let mut current = lock(&self.shared.status);
        if *current != status {
            *current = status;
            self.ctx.request_repaint();
        }
    }

    fn try_open(&mut self) {
        match (self.open)() {
            Ok(Some(display)) => {
                self.display = Some(display);
                self.mirrored = None;
                self.thumbnailed = None;
                self.set_status(FeedStatus::Off);
            }
            Ok(None) => self.set_status(FeedStatus::Waiting),
            Err(why) => self.set_status(FeedStatus::Failed(why)),
        }
    }

    /// One tick while the screen is shown: copy what changed into the mirror.
    fn follow_shown(&mut self) {
        let Some(display) = &self.display else {
            return;
        };
        display.touch_viewer();
        let (mode, generation) = display.mode();
        let frame = display.frame_counter();
        self.set_status(if mode.is_some() {
            FeedStatus::On
        } else {
            FeedStatus::Off
        });
        let Some(mode) = mode else {
            if self.mirrored.is_none_or(|(g, _)| g != generation) {
                let mut picture = lock(&self.shared.picture);
                picture.mode = None;
                picture.image = ColorImage::filled([0, 0], Color32::BLACK);
                picture.changed = None;
                picture.resized = true;
                picture.updates += 1;
                drop(picture);
                self.mirrored = Some((generation, frame));
                self.ctx.request_repaint();
            }
            self.update_thumbnail();
            return;
        };
        let refill = self.mirrored.is_none_or(|(g, _)| g != generation);
        if !refill && self.mirrored.is_some_and(|(_, f)| f == frame) {
            self.update_thumbnail();
            return;
        }
        let width = mode.width as usize;
        let rows = if refill {
            // Clear the dirty bits: everything is read now.
            let _ = display.take_dirty_rows(&mode);
            Some(0..mode.height)
        } else {
            display.take_dirty_rows(&mode)
        };
        self.mirrored = Some((generation, frame));
        let Some(rows) = rows else {
            self.update_thumbnail();
            return;
        };
        self.scratch.resize(rows.len() * width * 4, 0);
        if let Err(e) = display.read_rows_rgba(&mode, rows.clone(), &mut self.scratch) {
            self.set_status(FeedStatus::Failed(e.to_string()));
            return;
        }
        {
            let mut picture = lock(&self.shared.picture);
            let size = [width, mode.height as usize];
            if refill || picture.image.size != size {
                picture.image = ColorImage::filled(size, Color32::BLACK);
                picture.resized = true;
                picture.changed = None;
            }
            picture.mode = Some(mode);
            let start = rows.start as usize * width;
            let dst = &mut picture.image.pixels[start..start + rows.len() * width];
            for (px, rgba) in dst.iter_mut().zip(self.scratch.chunks_exact(4)) {
                *px = Color32::from_rgba_premultiplied(rgba[0], rgba[1], rgba[2], rgba[3]);
            }
            if !picture.resized {
                picture.changed = Some(match picture.changed.take() {
                    Some(old) => old.start.min(rows.start)..old.end.max(rows.end),
                    None => rows,
                });
            }
            picture.updates += 1;
        }
        self.ctx.request_repaint();
        self.update_thumbnail();
    }

    /// Makes a new thumbnail if the picture changed and the last one is old enough.
    fn update_thumbnail(&mut self) {
        let Some(display) = &self.display else {
            return;
        };
        if self
            .last_thumbnail
            .is_some_and(|at| at.elapsed() < THUMBNAIL_INTERVAL)
        {
            return;
        }
        let (mode, generation) = display.mode();
        let frame = display.frame_counter();
        if self.thumbnailed == Some((generation, frame)) {
            return;
        }
        if !self.shown() {
            self.set_status(if mode.is_some() {
                FeedStatus::On
            } else {
                FeedStatus::Off
            });
        }
        self.thumbnailed = Some((generation, frame));
        self.last_thumbnail = Some(Instant::now());
        let image = match mode {
            Some(mode) => match downscale(display, &mode, THUMBNAIL_MAX, &mut self.scratch) {
                Ok(image) => Some(image),
                Err(e) => {
                    self.set_status(FeedStatus::Failed(e.to_string()));
                    return;
                }
            },
            None => None,
        };
        self.thumbnail_serial += 1;
        *lock(&self.shared.thumbnail) = image.map(|image| Thumbnail {
            image: Arc::new(image),
            serial: self.thumbnail_serial,
        });
        self.ctx.request_repaint();
    }
}

/// The size of a picture of `size` scaled down (never up) to fit in `max`, keeping its aspect.
pub fn fit_within(size: [usize; 2], max: [usize; 2]) -> [usize; 2] {
    if size[0] == 0 || size[1] == 0 {
        return [0, 0];
    }
    let scale = (max[0] as f64 / size[0] as f64)
        .min(max[1] as f64 / size[1] as f64)
        .min(1.0);
    [
        ((size[0] as f64 * scale).round() as usize).max(1),
        ((size[1] as f64 * scale).round() as usize).max(1),
    ]
}

/// The picture scaled down to fit in `max` by averaging each output pixel's source area,
/// reading the display one source row at a time.
fn downscale(
    display: &SharedDisplay,
    mode: &DisplayMode,
    max: [usize; 2],
    line: &mut Vec<u8>,
) -> Result<ColorImage, DisplayError> {
    let (w, h) = (mode.width as usize, mode.height as usize);
    let [tw, th] = fit_within([w, h], max);
    let mut sums = vec![[0u32; 4]; tw];
    let mut pixels = Vec::with_capacity(tw * th);
    line.resize(w * 4, 0);
    // Each output column sums the source columns [x0, x1), each output row the rows [y0, y1).
    let columns: Vec<Range<usize>> = (0..tw).map(|x| x * w / tw..((x + 1) * w / tw)).collect();
    for ty in 0..th {
        let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
        sums.iter_mut().for_each(|s| *s = [0; 4]);
        for y in y0..y1 {
            display.read_rows_rgba(mode, y as u32..y as u32 + 1, line)?;
            for (sum, cols) in sums.iter_mut().zip(&columns) {
                for px in line[cols.start * 4..cols.end.max(cols.start + 1) * 4].chunks_exact(4) {
                    for c in 0..4 {
                        sum[c] += u32::from(px[c]);
                    }
                }
            }
        }
        for (sum, cols) in sums.iter().zip(&columns) {
            let n = ((y1 - y0) * cols.len().max(1)) as u32;
            pixels.push(Color32::from_rgba_premultiplied(
                (sum[0] / n) as u8,
                (sum[1] / n) as u8,
                (sum[2] / n) as u8,
                255,
            ));
        }
    }
    Ok(ColorImage::new([tw, th], pixels))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vivarium_core::display::PixelFormat;

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn thumbnails_fit_and_keep_the_aspect() {
        assert_eq!(fit_within([1024, 768], [128, 96]), [128, 96]);
        assert_eq!(fit_within([1920, 1080], [128, 96]), [128, 72]);
        assert_eq!(fit_within([64, 48], [128, 96]), [64, 48]);
        assert_eq!(fit_within([0, 48], [128, 96]), [0, 0]);
    }

    #[test]
    fn the_feed_mirrors_changed_rows_and_follows_mode_changes() {
        // The VM process's side, handed to the feed once "started".
        let handed: Arc<Mutex<Option<std::fs::File>>> = Arc::default();
        let slot = handed.clone();
        let open: DisplayOpener = Box::new(move || match lock(&slot).take() {
            Some(file) => SharedDisplay::from_file(file, "the test display")
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        });
        let ctx = egui::Context::default();
        let feed = DisplayFeed::start(open, "test", ctx);
        wait_for("the missing display noticed", || {
            feed.status() == FeedStatus::Waiting
        });
        let vm = SharedDisplay::create_sealed("test display", 1 << 20).unwrap();
        *lock(&handed) = Some(vm.try_clone_file().unwrap());
        feed.mark_shown();
        wait_for("the display off", || feed.status() == FeedStatus::Off);
        let mode = DisplayMode::packed(64, 32, PixelFormat::Xrgb8888);
        vm.set_mode(Some(mode)).unwrap();
        let mut changed = None;
        wait_for("the first picture", || {
            feed.mark_shown();
            let mut picture = feed.picture();
            if picture.resized && picture.image.size == [64, 32] {
                picture.resized = false;
                picture.changed = None;
                return true;
            }
            false
        });
        // Row 10 turns red: the feed reports just that row (a dirty chunk covers 4 KiB, so
        // rows 0..32 of 256 bytes each: all of them share one chunk).
        let mut red = Vec::new();
        for _ in 0..64 {
            red.extend_from_slice(&[0, 0, 255, 0]);
        }
        vm.write_vram(u64::from(mode.stride) * 10, &red).unwrap();
        wait_for("the red row", || {
            feed.mark_shown();
            let mut picture = feed.picture();
            changed = picture.changed.take();
            changed.is_some()
        });
        let picture = feed.picture();
        assert!(changed.unwrap().contains(&10));
        assert_eq!(
            picture.image.pixels[10 * 64 + 5],
            Color32::from_rgb(255, 0, 0)
        );
        assert_eq!(picture.image.pixels[9 * 64 + 5], Color32::BLACK);
        drop(picture);
        // The thumbnail follows (at most four times a second).
        wait_for("a thumbnail", || feed.thumbnail().is_some());
        // A new mode: the whole picture again, in the new size.
        vm.set_mode(Some(DisplayMode::packed(32, 16, PixelFormat::Rgb565)))
            .unwrap();
        wait_for("the new size", || {
            feed.mark_shown();
            let picture = feed.picture();
            picture.resized && picture.image.size == [32, 16]
        });
        vm.set_mode(None).unwrap();
        wait_for("the display off again", || {
            feed.mark_shown();
            feed.status() == FeedStatus::Off
        });
        assert!(vm.viewer_active(Duration::from_secs(2)));
    }

    #[test]
    fn memory_that_is_not_a_sealed_display_fails_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.display");
        std::fs::write(&path, vec![1u8; 8192]).unwrap();
        let open: DisplayOpener = Box::new(move || {
            let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            SharedDisplay::from_file(file, "a plain file")
                .map(Some)
                .map_err(|e| e.to_string())
        });
        let feed = DisplayFeed::start(open, "test", egui::Context::default());
        wait_for(
            "the failure",
            || matches!(feed.status(), FeedStatus::Failed(why) if why.contains("not sealed")),
        );
    }

    #[test]
    fn downscaling_averages_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let vm = SharedDisplay::create(&dir.path().join("d"), 1 << 20).unwrap();
        let mode = DisplayMode::packed(4, 2, PixelFormat::Xrgb8888);
        vm.set_mode(Some(mode)).unwrap();
        // Left half white, right half black: a 2x1 thumbnail is white and black, a 1x1 grey.
        let row = [[255u8; 4], [255; 4], [0; 4], [0; 4]].concat();
        vm.write_vram(0, &[row.clone(), row].concat()).unwrap();
        let mut line = Vec::new();
        let two = downscale(&vm, &mode, [2, 2], &mut line).unwrap();
        assert_eq!(two.size, [2, 1]);
        assert_eq!(two.pixels, vec![Color32::WHITE, Color32::BLACK]);
        let one = downscale(&vm, &mode, [1, 1], &mut line).unwrap();
        assert_eq!(one.pixels, vec![Color32::from_rgb(127, 127, 127)]);
    }
}
