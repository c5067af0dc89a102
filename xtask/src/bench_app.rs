//! `cargo xtask bench app`: how responsive the desktop app is.
//!
//! - Frame time of the library view with 200 VMs (the `frame_bench` example of the app, in
//!   release): the app's UI pass plus egui's tessellation, median and worst of 300 frames.
//! - Idle CPU of the app in a real window (Xvfb, software rendering) with one running VM (the
//!   hand-made guest on this host's /dev/kvm), and of that VM's process, over 20 s, after the
//!   window settled: user + system time from /proc, as a share of one core.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::update_benchmarks_md;
use crate::util::{self, have_program, workspace_root};

const VMS: usize = 200;
const FRAMES: usize = 300;
const SAMPLE: Duration = Duration::from_secs(20);

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
         {idle_text}",
        SAMPLE.as_secs()
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
    let cli = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(vivarium)
            .env("VIVARIUM_HOME", &home)
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
    };
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
    let mut xvfb = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x800x24",
            "-nolisten",
            "tcp",
        ])
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
    let app = Command::new(vivarium)
        .env("DISPLAY", format!(":{}", display.trim()))
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
