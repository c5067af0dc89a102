//! `cargo xtask bench app`: how responsive the desktop app is.
//!
//! - Frame time of the library view with 200 VMs (the `frame_bench` example of the app, in
//!   release): the app's UI pass plus egui's tessellation, median and worst of 300 frames.
//! - Idle CPU of the app in a real window (Xvfb, software rendering) with one running VM (the
//!   hand-made guest on this host's /dev/kvm), and of that VM's process, over 20 s, after the
//!   window settled: user + system time from /proc, as a share of one core.
//! - The screen view (the `screen_bench` example of the app, in release, in a real window
//!   under Xvfb at 1920x1080 with a VM's screen shown in the whole window): frames per
//!   second and the app's CPU with a static screen, and with a 1920x1080 picture that
//!   changes completely 60 times a second (written into the VM's display file, as a guest's
//!   drawing lands there).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::update_benchmarks_md;
use crate::util::{self, have_program, workspace_root};

const VMS: usize = 200;
const FRAMES: usize = 300;
const SAMPLE: Duration = Duration::from_secs(20);
const SCREEN_SAMPLE: Duration = Duration::from_secs(15);

/// Entry point of `cargo xtask bench app`.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    util::run(Command::new(&cargo).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "vivarium",
        "--bin",
        "vivarium",
        "--example",
        "frame_bench",
        "--example",
        "screen_bench",
    ]))?;
    let release = util::target_dir().join("release");
    let out = Command::new(release.join("examples").join("frame_bench"))
        .args(["--vms", &VMS.to_string(), "--frames", &FRAMES.to_string()])
        .output()
        .map_err(|e| format!("could not run frame_bench: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "frame_bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let median = json_number(&line, "median_ms")?;
    let worst = json_number(&line, "worst_ms")?;
    eprintln!("xtask: frame time with {VMS} VMs: median {median:.2} ms, worst {worst:.2} ms");

    let idle = idle_cpu(&release.join("vivarium"));
    let idle_text = match &idle {
        Ok((app, vm)) => format!(
            "| idle CPU of the app (real window under Xvfb, one running VM) | {app:.1} % of a core |\n\
             | idle CPU of that VM's process (hand-made guest halted in `hlt`) | {vm:.1} % of a core |\n"
        ),
        Err(why) => {
            eprintln!("xtask: idle CPU not measured: {why}");
            format!("| idle CPU with one running VM | not measured here: {why} |\n")
        }
    };
    let screen_text = match screen_bench(&release) {
        Ok(line) => {
            let n = |key| json_number(&line, key);
            let (static_fps, static_cpu) = (n("static_fps")?, n("static_cpu_percent")?);
            let (written, shown) = (n("written_fps")?, n("shown_fps")?);
            let (frames, cpu) = (n("frames_per_second")?, n("changing_cpu_percent")?);
            let (static_ui, changing_ui) = (n("static_ui_ms")?, n("changing_ui_ms")?);
            eprintln!(
                "xtask: screen view: static {static_fps:.1} frames/s at {static_cpu:.1} % CPU; \
                 changing: {shown:.1} of {written:.1} pictures/s shown, {frames:.1} frames/s, \
                 {cpu:.1} % CPU"
            );
            format!(
                "| 1920x1080 screen changing 60 times a second: pictures shown | {shown:.1} per second (of {written:.1} written) |\n\
                 | the same: frames drawn | {frames:.1} per second |\n\
                 | the same: CPU of the app | {cpu:.1} % of a core |\n\
                 | the same: the app's UI pass per frame (taking the new rows into the texture included; rendering excluded) | {changing_ui:.2} ms |\n\
                 | static 1920x1080 screen: frames drawn | {static_fps:.1} per second |\n\
                 | static 1920x1080 screen: CPU of the app | {static_cpu:.1} % of a core |\n\
                 | static 1920x1080 screen: the app's UI pass per frame | {static_ui:.2} ms |\n"
            )
        }
        Err(why) => {
            eprintln!("xtask: screen view not measured: {why}");
            format!(
                "| screen view | not measured here: {why} |
"
            )
        }
    };
    let section = format!(
        "## App responsiveness (`cargo xtask bench app`)\n\n\
         The library view with {VMS} VMs, one selected: the CPU work of a frame (the app's UI \
         pass and egui's tessellation; the GPU draw is left out), {FRAMES} frames after the \
         listing settled, release build. The sidebar lays out only the rows on screen, so the \
         frame time does not grow with the library. Idle CPU is sampled for {} s with `/proc` \
         after the window settled; the app repaints only when something changes (a listing \
         every 0.5 s, console output, input).\n\n\
         | measure | result |\n| --- | --- |\n\
         | frame time, median | {median:.2} ms |\n\
         | frame time, worst | {worst:.2} ms |\n\
         {idle_text}\n\
         The screen view: the app in a real window (Xvfb at 1920x1080, software rendering \
         with lavapipe on the CPU) showing a running VM's 1920x1080 screen in the whole \
         window, 1:1. The picture comes from the VM's display file; the benchmark's own \
         thread draws into it, 60 new pictures a second, every pixel changing (its CPU is \
         not counted). The app copies the changed rows into its texture at most 60 times a \
         second; a static screen costs no frames (the view's feed thread, not a timed \
         repaint, tells the VM process it is being looked at). {} s per phase. The app's own UI pass is the small part of \
         a frame; the rest is lavapipe drawing, uploading and presenting 1920x1080 pixels on \
         the CPU, so these frame rates are the software renderer's (on this 2-core machine, \
         shared with other work while measuring), not what a GPU gives.\n\n\
         | measure | result |\n| --- | --- |\n\
         {screen_text}",
        SAMPLE.as_secs(),
        SCREEN_SAMPLE.as_secs()
    );
    update_benchmarks_md(&root, "## App responsiveness", &section)?;
    eprintln!("xtask: wrote the results to docs/BENCHMARKS.md");
    Ok(())
}

fn json_number(line: &str, key: &str) -> Result<f64, String> {
    let pattern = format!("\"{key}\":");
    let start = line
        .find(&pattern)
        .ok_or_else(|| format!("no {key} in `{line}`"))?
        + pattern.len();
    line[start..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("bad {key} in `{line}`"))
}

/// A child process killed (by its pid) on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("could not read the stats of {pid}: {e}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().map_err(|e| e.to_string())?
        + fields[12].parse::<f64>().map_err(|e| e.to_string())?;
    // Linux reports in clock ticks of USER_HZ, 100 on every architecture Vivarium runs on.
    Ok(ticks / 100.0)
}

/// Starts Xvfb with a screen of `size` (e.g. `1280x800`); returns it and its display name.
fn start_xvfb(size: &str) -> Result<(KillOnDrop, String), String> {
    let mut xvfb = Command::new("Xvfb")
        .args(["-displayfd", "1", "-screen", "0"])
        .arg(format!("{size}x24"))
        .args(["-nolisten", "tcp"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start Xvfb: {e}"))?;
    let mut out = xvfb.stdout.take().ok_or("Xvfb's stdout")?;
    let xvfb = KillOnDrop(xvfb);
    let mut display = String::new();
    let mut byte = [0u8; 1];
    while std::io::Read::read(&mut out, &mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        display.push(byte[0] as char);
    }
    Ok((xvfb, format!(":{}", display.trim())))
}

/// Runs the vivarium CLI on library `home`.
fn vivarium_cli(vivarium: &Path, home: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(vivarium)
        .env("VIVARIUM_HOME", home)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "vivarium {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The screen view's JSON line from `screen_bench`, with a VM running the hand-made guest
/// with a 1920x1080 screen.
fn screen_bench(release: &Path) -> Result<String, String> {
    if !have_program("Xvfb") {
        return Err("`Xvfb` is not installed".into());
    }
    let vivarium = release.join("vivarium");
    let work = util::target_dir().join("bench-screen");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let home = work.join("library");
    let kernel = work.join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).map_err(|e| e.to_string())?;
    let cli = |args: &[&str]| vivarium_cli(&vivarium, &home, args);
    if !cli(&["--json", "host"])?.contains("\"can_run\":true") {
        return Err("this host cannot run VMs".into());
    }
    cli(&[
        "create",
        "screen",
        "--kernel",
        kernel.to_str().ok_or("a UTF-8 path")?,
        "--no-disk",
        "--network",
        "none",
        "--display",
        "1920x1080",
        "--memory",
        "32M",
        "--cpus",
        "1",
    ])?;
    cli(&["start", "screen"])?;
    let result = (|| {
        let (xvfb, display) = start_xvfb("1920x1080")?;
        let out = Command::new(release.join("examples").join("screen_bench"))
            .args(["--home", home.to_str().ok_or("a UTF-8 path")?])
            .args(["--vm", "screen", "--seconds"])
            .arg(SCREEN_SAMPLE.as_secs().to_string())
            .env("DISPLAY", &display)
            .env("XDG_CONFIG_HOME", work.join("config"))
            .env("XDG_DATA_HOME", work.join("data"))
            .env_remove("WAYLAND_DISPLAY")
            .output()
            .map_err(|e| format!("could not run screen_bench: {e}"))?;
        drop(xvfb);
        if !out.status.success() {
            return Err(format!(
                "screen_bench failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })();
    let _ = cli(&["stop", "--force", "screen"]);
    result
}

/// (app %, VM process %) of one core, idle, with one running VM.
fn idle_cpu(vivarium: &Path) -> Result<(f64, f64), String> {
    for tool in ["Xvfb"] {
        if !have_program(tool) {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    let work = util::target_dir().join("bench-app");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let home = work.join("library");
    let kernel = work.join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).map_err(|e| e.to_string())?;
    let cli = |args: &[&str]| vivarium_cli(vivarium, &home, args);
    let host = cli(&["--json", "host"])?;
    if !host.contains("\"can_run\":true") {
        return Err("this host cannot run VMs".into());
    }
    cli(&[
        "create",
        "idle",
        "--kernel",
        kernel.to_str().ok_or("a UTF-8 path")?,
        "--no-disk",
        "--network",
        "none",
        "--display",
        "none",
        "--memory",
        "32M",
        "--cpus",
        "1",
    ])?;
    let started = cli(&["--json", "start", "idle"])?;
    let result =
        json_number(&started, "pid").and_then(|pid| measure(vivarium, &home, &work, pid as u32));
    let _ = cli(&["stop", "--force", "idle"]);
    result
}

fn measure(vivarium: &Path, home: &Path, work: &Path, vm_pid: u32) -> Result<(f64, f64), String> {
    let (xvfb, display) = start_xvfb("1280x800")?;
    let app = Command::new(vivarium)
        .env("DISPLAY", display)
        .env("VIVARIUM_HOME", home)
        .env("XDG_CONFIG_HOME", work.join("config"))
        .env("XDG_DATA_HOME", work.join("data"))
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("could not start the app: {e}"))?;
    let app = KillOnDrop(app);
    let app_pid = app.0.id();
    std::thread::sleep(Duration::from_secs(15));
    let (app0, vm0, t0) = (cpu_seconds(app_pid)?, cpu_seconds(vm_pid)?, Instant::now());
    std::thread::sleep(SAMPLE);
    let (app1, vm1) = (cpu_seconds(app_pid)?, cpu_seconds(vm_pid)?);
    let wall = t0.elapsed().as_secs_f64();
    drop(app);
    drop(xvfb);
    Ok(((app1 - app0) / wall * 100.0, (vm1 - vm0) / wall * 100.0))
}
