//! `cargo xtask bench display`: what following a VM's screen costs on the VM side.
//!
//! The VM process's `display-refresh` thread reads KVM's dirty log of the video memory into the
//! display file (4 times a second with nobody looking, about 60 while a viewer touches the
//! file). Its CPU time (user + system, from `/proc/PID/task/TID/stat`) is sampled for
//! [`SAMPLE`] with a hand-made guest on this host's `/dev/kvm`, 1024x768 at 32 bits:
//! - a still screen (the display guest, idle in `hlt` after drawing), without and with a viewer;
//! - a screen that changes all the time (the animation guest repaints every pixel as fast as
//!   its vCPU can), with a viewer.
//!
//! The viewer here only touches the file and takes the dirty rows (no copy, no drawing): what
//! it costs to show them is the app's (VIEW's) benchmark. The refreshes that found changes
//! come from the display file's frame counter.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vivarium_core::display::SharedDisplay;

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const SAMPLE: Duration = Duration::from_secs(10);
const SIZE: &str = "1024x768";

/// One measured situation.
struct Measure {
    what: &'static str,
    /// Share of one core used by the refresh thread, in percent.
    cpu_percent: f64,
    /// Refreshes per second that found changed video memory.
    changed_per_second: f64,
}

/// Entry point of `cargo xtask bench display`.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let bin = util::build_release_vivarium()?;
    let work = util::target_dir().join("bench-display");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let home = work.join("library");
    let cli = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&bin)
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
    if !cli(&["--json", "host"])?.contains("\"can_run\":true") {
        return Err("this host cannot run VMs".into());
    }
    // The first sentence of the probe's verdict, e.g. "Limited: KVM API 12 served by kvm_pvm,
    // a software-only hypervisor".
    let host_kvm = cli(&["host"])?
        .lines()
        .find(|l| l.starts_with("Ready:") || l.starts_with("Limited:"))
        .and_then(|l| l.split(". ").next())
        .unwrap_or("unknown")
        .trim_end_matches('.')
        .to_string();
    let still = work.join("display.elf");
    let moving = work.join("animation.elf");
    std::fs::write(&still, vivarium_e2e::handmade::display_elf_image())
        .map_err(|e| e.to_string())?;
    std::fs::write(&moving, vivarium_e2e::handmade::animation_elf_image())
        .map_err(|e| e.to_string())?;
    for (name, kernel) in [("still", &still), ("moving", &moving)] {
        cli(&[
            "create",
            name,
            "--kernel",
            kernel.to_str().ok_or("a UTF-8 path")?,
            "--no-disk",
            "--network",
            "none",
            "--display",
            SIZE,
            "--memory",
            "32M",
            "--cpus",
            "1",
        ])?;
    }
    let library = vivarium_core::Library::open(&home).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for (name, banner) in [("still", true), ("moving", false)] {
        let started = cli(&["--json", "start", name])?;
        let pid = json_u32(&started, "pid")?;
        let measured = (|| -> Result<(), String> {
            let display = vivarium_core::control::ControlClient::connect(&library, name)
                .and_then(|mut c| c.open_display())
                .map_err(|e| e.to_string())?;
            if banner {
                // The picture is complete once the guest prints its banner.
                let serial = home.join(format!("vms/{name}.vivm/logs/serial.log"));
                wait_for(Duration::from_secs(60), || {
                    std::fs::read_to_string(&serial)
                        .is_ok_and(|t| t.contains(vivarium_e2e::handmade::BANNER))
                })?;
                results.push(sample(
                    "still screen, nobody looking",
                    pid,
                    &display,
                    false,
                )?);
                results.push(sample(
                    "still screen, a viewer looking",
                    pid,
                    &display,
                    true,
                )?);
            } else {
                std::thread::sleep(Duration::from_secs(2));
                results.push(sample(
                    "whole screen changing, a viewer looking",
                    pid,
                    &display,
                    true,
                )?);
            }
            Ok(())
        })();
        let _ = cli(&["stop", "--force", name]);
        measured?;
    }
    let mut table = String::from(
        "| situation | refresh thread CPU | refreshes with changes |\n|---|---:|---:|\n",
    );
    for m in &results {
        table.push_str(&format!(
            "| {} | {:.2} % of a core | {:.1} /s |\n",
            m.what, m.cpu_percent, m.changed_per_second
        ));
    }
    let section = format!(
        "## Display refresh, VM side (`cargo xtask bench display`)\n\n\
         The VM process's refresh thread reads KVM's dirty log of the video memory ({SIZE}, 32 \
         bits, 16 MiB slot) into the display file: 4 times a second when nobody looks, every \
         16 ms while a viewer touched the file within the last second. Its CPU time is sampled \
         for {} s per situation from `/proc`, with hand-made guests (a still picture; a guest \
         repainting every pixel as fast as its vCPU can). The viewer only touches the file and \
         takes the dirty rows; what showing them costs is the app's. CPU time comes in 10 ms \
         ticks: the resolution is 0.1 % of a core. Host: {host_kvm}. Measured \
         {date}.\n\n\
         {table}",
        SAMPLE.as_secs(),
        date = today(),
    );
    println!("{section}");
    update_benchmarks_md(&root, "## Display refresh, VM side", &section)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Samples the refresh thread of VM process `pid` for [`SAMPLE`], with or without a viewer.
fn sample(
    what: &'static str,
    pid: u32,
    display: &SharedDisplay,
    viewer: bool,
) -> Result<Measure, String> {
    let tid = refresh_thread(pid)?;
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        if viewer {
            let done = Arc::clone(&done);
            scope.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    display.touch_viewer();
                    if let (Some(mode), _) = display.mode() {
                        let _ = display.take_dirty_rows(&mode);
                    }
                    std::thread::sleep(Duration::from_millis(16));
                }
            });
            // Let the refresh thread notice the viewer.
            std::thread::sleep(Duration::from_millis(500));
        }
        let cpu_before = thread_cpu_seconds(pid, tid)?;
        let frames_before = display.frame_counter();
        let started = Instant::now();
        std::thread::sleep(SAMPLE);
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds(pid, tid)? - cpu_before;
        let frames = display.frame_counter() - frames_before;
        done.store(true, Ordering::Relaxed);
        Ok(Measure {
            what,
            cpu_percent: cpu / elapsed * 100.0,
            changed_per_second: frames as f64 / elapsed,
        })
    })
}

/// The thread id of the VM process's `display-refresh` thread.
fn refresh_thread(pid: u32) -> Result<u32, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("no VM process {pid}: {e}"))?;
    tasks
        .flatten()
        .find(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "display-refresh")
        })
        .and_then(|t| t.file_name().to_str()?.parse().ok())
        .ok_or_else(|| format!("VM process {pid} has no display-refresh thread"))
}

/// CPU seconds (user + system) one thread has used.
fn thread_cpu_seconds(pid: u32, tid: u32) -> Result<f64, String> {
    let path = format!("/proc/{pid}/task/{tid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').ok_or("bad /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().map_err(|e| e.to_string())?
        + fields[12].parse::<f64>().map_err(|e| e.to_string())?;
    // USER_HZ is 100 on every architecture Vivarium runs on.
    Ok(ticks / 100.0)
}

fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() > deadline {
            return Err("the guest did not finish drawing in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn json_u32(text: &str, key: &str) -> Result<u32, String> {
    let pattern = format!("\"{key}\":");
    let start = text
        .find(&pattern)
        .ok_or_else(|| format!("no {key} in `{text}`"))?
        + pattern.len();
    text[start..]
        .split([',', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("bad {key} in `{text}`"))
}
