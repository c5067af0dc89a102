//! Frame time of the app's library view with many VMs: `cargo xtask bench app` runs it (in
//! release) and records the result in docs/BENCHMARKS.md.
//!
//! It builds a library of `--vms N` VMs in a temporary folder (through the core library, as
//! the CLI does), opens the real app on it without a window, selects a VM, waits for the
//! first listing, then times `--frames F` frames: the app's UI pass plus egui's tessellation
//! into triangles, which is the CPU work of a frame (the GPU draw is left out: it depends on
//! the driver, not on the app). Prints one JSON line: median and worst frame in ms.

use std::time::{Duration, Instant};

use eframe::egui;
use vivarium::gui::{AppEnv, VivariumApp};
use vivarium_core::config::{BootSource, OsInfo};
use vivarium_core::disk::NoProgress;
use vivarium_core::{Library, NewDisk, NewVm};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let vms = arg("--vms", 200);
    let frames = arg("--frames", 300);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let library = Library::open(&dir.path().join("library")).expect("the library opens");
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"kernel").expect("the kernel file");
    let families = [
        "debian12",
        "ubuntu24.04",
        "fedora41",
        "arch",
        "linux",
        "win11",
        "freebsd14",
        "other",
    ];
    for i in 0..vms {
        let mut spec = NewVm::with_defaults(
            format!("vm-{i:04}"),
            BootSource::Linux {
                kernel: kernel.clone(),
                initrd: None,
                cmdline: String::new(),
            },
        );
        let id = families[i % families.len()];
        spec.os = OsInfo {
            id: id.into(),
            name: id.into(),
        };
        spec.disk = NewDisk::None;
        library.create(&spec, &NoProgress).expect("a VM");
    }

    let ctx = egui::Context::default();
    // The constructors eframe and egui_kittest use to run an app without a window.
    let cc = eframe::CreationContext::_new_kittest(ctx.clone());
    let mut frame = eframe::Frame::_new_kittest();
    let env = AppEnv {
        library,
        prefs_path: None,
        vm_exe: None,
    };
    let mut app = VivariumApp::new(&cc, env);
    let input = |time: f64| egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1280.0, 800.0),
        )),
        time: Some(time),
        ..Default::default()
    };
    let started = Instant::now();
    let mut run_frame = |app: &mut VivariumApp| {
        let t = Instant::now();
        let mut output = ctx.run_ui(input(started.elapsed().as_secs_f64()), |ui| {
            eframe::App::ui(app, ui, &mut frame)
        });
        // No GPU here: font atlas updates are not uploaded anywhere.
        output.textures_delta.clear();
        let shapes = std::mem::take(&mut output.shapes);
        let triangles = ctx.tessellate(shapes, output.pixels_per_point);
        std::hint::black_box(triangles);
        t.elapsed()
    };
    // Warm up until the first listing of all VMs arrived (the fonts are laid out on the way).
    let deadline = Instant::now() + Duration::from_secs(120);
    while app.listed_vms() < vms {
        run_frame(&mut app);
        assert!(Instant::now() < deadline, "the library was not listed");
        std::thread::sleep(Duration::from_millis(10));
    }
    app.select("vm-0000");
    for _ in 0..20 {
        run_frame(&mut app);
    }
    let mut times: Vec<Duration> = (0..frames).map(|_| run_frame(&mut app)).collect();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{{\"vms\": {vms}, \"frames\": {frames}, \"median_ms\": {:.3}, \"worst_ms\": {:.3}}}",
        ms(times[times.len() / 2]),
        ms(*times.last().expect("frames"))
    );
}
