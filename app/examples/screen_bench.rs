//! Frames per second and CPU of the app's screen view: `cargo xtask bench app` runs it (in
//! release, in a real window on an X server it starts) and records the result in
//! docs/BENCHMARKS.md.
//!
//! It opens the real app on `--home` (a library in which VM `--vm` runs with a screen),
//! selects the VM, shows its screen in the whole window, and then measures two phases of
//! `--seconds` each:
//!
//! - static: nothing changes on the screen: frames drawn per second and the app's CPU;
//! - changing: a writer thread (here, standing in for the guest) draws a new 1920x1080
//!   picture into the VM's display file every 1/60 s: pictures shown per second (texture
//!   uploads), frames drawn per second, and the app's CPU without the writer's.
//!
//! Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use eframe::egui;
use vivarium::gui::{AppEnv, VivariumApp};
use vivarium_core::Library;
use vivarium_core::display::{DisplayMode, PixelFormat, SharedDisplay};

const WIDTH: u32 = 1920;
const HEIGHT: u32 = 1080;
const SETTLE: Duration = Duration::from_secs(5);

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// CPU seconds (user + system) of this process, or of one of its threads.
fn cpu_seconds(task: Option<i32>) -> f64 {
    let path = match task {
        Some(tid) => format!("/proc/self/task/{tid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).expect("the process's stats");
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // USER_HZ is 100 on every architecture Vivarium runs on.
    ticks / 100.0
}

/// Draws a new picture every 1/60 s until told to stop: moving colour bands over the whole
/// screen, so every row changes every frame.
struct Writer {
    stop: Arc<AtomicBool>,
    tid: Arc<AtomicU64>,
    frames: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(display: Arc<SharedDisplay>) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU64::new(0));
        let frames = Arc::new(AtomicU64::new(0));
        let (s, t, f) = (stop.clone(), tid.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            t.store(unsafe { libc::gettid() } as u64, Ordering::Relaxed);
            // Four pictures drawn once, shown in turn: every pixel differs from the last
            // picture's, and the writer costs only the copy.
            let pictures: Vec<Vec<u8>> = (0..4u64)
                .map(|k| {
                    let mut buf = vec![0u8; (WIDTH * HEIGHT * 4) as usize];
                    for (i, px) in buf.chunks_exact_mut(4).enumerate() {
                        let x = (i as u32 % WIDTH) as u64;
                        let y = (i as u32 / WIDTH) as u64;
                        let v = ((x + y) / 4 + k * 64) as u8 | 1;
                        px.copy_from_slice(&[v, v.wrapping_mul(3), 255 - v, 0]);
                    }
                    buf
                })
                .collect();
            let start = Instant::now();
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let buf = &pictures[(n % 4) as usize];
                display.write_vram(0, buf).expect("the picture fits");
                n += 1;
                f.store(n, Ordering::Relaxed);
                let next = start + Duration::from_micros(16_667 * n);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Writer {
            stop,
            tid,
            frames,
            thread: Some(thread),
        }
    }

    fn cpu(&self) -> f64 {
        cpu_seconds(Some(self.tid.load(Ordering::Relaxed) as i32))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    frames: u64,
    /// Time spent in the app's UI pass (its own work; rendering is eframe's).
    ui_time: Duration,
    uploads: u64,
    cpu: f64,
    writer_cpu: f64,
    written: u64,
}

/// Mean time of the app's UI pass per frame between two samples, in ms.
fn per_frame_ms(start: &Sample, end: &Sample) -> f64 {
    let frames = (end.frames - start.frames).max(1) as f64;
    (end.ui_time - start.ui_time).as_secs_f64() * 1000.0 / frames
}

enum Phase {
    /// Waiting for the screen to show.
    Starting,
    /// Letting the window settle before measuring the static screen.
    Settling(Instant),
    Static(Sample),
    /// The writer runs; settling before measuring.
    Warming(Instant),
    Changing(Sample),
    Done,
}

struct Bench {
    app: VivariumApp,
    vm: String,
    display: Arc<SharedDisplay>,
    seconds: Duration,
    frames: u64,
    ui_time: Duration,
    phase: Phase,
    writer: Option<Writer>,
    results: Vec<String>,
}

impl Bench {
    fn sample(&self) -> Sample {
        let (whole, rows) = self.app.screen_uploads();
        Sample {
            at: Instant::now(),
            frames: self.frames,
            ui_time: self.ui_time,
            uploads: whole + rows,
            cpu: cpu_seconds(None),
            writer_cpu: self.writer.as_ref().map_or(0.0, Writer::cpu),
            written: self
                .writer
                .as_ref()
                .map_or(0, |w| w.frames.load(Ordering::Relaxed)),
        }
    }

    fn step(&mut self, ctx: &egui::Context) {
        let now = Instant::now();
        match self.phase {
            Phase::Starting if self.app.screen_uploads().0 > 0 => {
                self.app.show_fullscreen(ctx, true);
                self.phase = Phase::Settling(now);
            }
            Phase::Settling(since) if now - since >= SETTLE => {
                self.phase = Phase::Static(self.sample());
            }
            Phase::Static(start) if now - start.at >= self.seconds => {
                let end = self.sample();
                let wall = (end.at - start.at).as_secs_f64();
                self.results.push(format!(
                    "\"static_fps\": {:.2}, \"static_cpu_percent\": {:.2}, \"static_ui_ms\": {:.3}",
                    (end.frames - start.frames) as f64 / wall,
                    (end.cpu - start.cpu) / wall * 100.0,
                    per_frame_ms(&start, &end)
                ));
                self.writer = Some(Writer::start(self.display.clone()));
                self.phase = Phase::Warming(now);
            }
            Phase::Warming(since) if now - since >= SETTLE => {
                self.phase = Phase::Changing(self.sample());
            }
            Phase::Changing(start) if now - start.at >= self.seconds => {
                let end = self.sample();
                let wall = (end.at - start.at).as_secs_f64();
                let app_cpu = (end.cpu - start.cpu) - (end.writer_cpu - start.writer_cpu);
                self.results.push(format!(
                    "\"written_fps\": {:.2}, \"shown_fps\": {:.2}, \"frames_per_second\": {:.2}, \
                     \"changing_cpu_percent\": {:.2}, \"changing_ui_ms\": {:.3}",
                    (end.written - start.written) as f64 / wall,
                    (end.uploads - start.uploads) as f64 / wall,
                    (end.frames - start.frames) as f64 / wall,
                    app_cpu / wall * 100.0,
                    per_frame_ms(&start, &end)
                ));
                self.writer = None;
                println!("{{{}}}", self.results.join(", "));
                self.phase = Phase::Done;
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
            _ => {}
        }
        // Phase changes are checked on the app's own frames, plus one timed repaint when the
        // phase is due to end, so a static screen still ends its phase without the bench
        // adding frames to what it measures.
        let due = match self.phase {
            Phase::Starting => Some(Duration::from_millis(500)),
            Phase::Settling(since) | Phase::Warming(since) => {
                Some((since + SETTLE).saturating_duration_since(now))
            }
            Phase::Static(start) | Phase::Changing(start) => {
                Some((start.at + self.seconds).saturating_duration_since(now))
            }
            Phase::Done => None,
        };
        if let Some(due) = due {
            ctx.request_repaint_after(due);
        }
    }
}

impl eframe::App for Bench {
    fn raw_input_hook(&mut self, ctx: &egui::Context, raw_input: &mut egui::RawInput) {
        self.app.raw_input_hook(ctx, raw_input);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.frames += 1;
        if self.app.selected() != Some(self.vm.as_str()) {
            self.app.select(&self.vm);
        }
        let started = Instant::now();
        self.app.ui(ui, frame);
        self.ui_time += started.elapsed();
        let ctx = ui.ctx().clone();
        self.step(&ctx);
    }
}

fn main() {
    let home = arg("--home").expect("--home LIBRARY");
    let vm = arg("--vm").expect("--vm NAME");
    let seconds = Duration::from_secs(arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(10));
    let library = Library::open(std::path::Path::new(&home)).expect("the library opens");
    let display = vivarium_core::control::ControlClient::connect(&library, &vm)
        .and_then(|mut c| c.open_display())
        .expect("the VM's display");
    // The first picture, before the app looks: the screen is on.
    let mode = DisplayMode::packed(WIDTH, HEIGHT, PixelFormat::Xrgb8888);
    display.set_mode(Some(mode)).expect("1920x1080 fits");
    display
        .write_vram(0, &vec![0x40; (WIDTH * HEIGHT * 4) as usize])
        .expect("the picture fits");
    let display = Arc::new(display);
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Vivarium screen benchmark")
            .with_inner_size([WIDTH as f32, HEIGHT as f32]),
        persist_window: false,
        ..Default::default()
    };
    let env = AppEnv {
        library,
        prefs_path: None,
        vm_exe: None,
    };
    eframe::run_native(
        "Vivarium screen benchmark",
        options,
        Box::new(move |cc| {
            Ok(Box::new(Bench {
                app: VivariumApp::new(cc, env),
                vm,
                display,
                seconds,
                frames: 0,
                ui_time: Duration::ZERO,
                phase: Phase::Starting,
                writer: None,
                results: Vec::new(),
            }))
        }),
    )
    .expect("the window opens");
}
