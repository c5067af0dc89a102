//! `cargo xtask bench vm`: what the VM process costs before its guest runs.
//!
//! - The size of the release `vivarium-vm` binary beside the app's `vivarium`, and the shared
//!   libraries each needs (`ldd`).
//! - Start-up CPU time: `vivarium start` of a VM with the hand-made guest on this host's
//!   `/dev/kvm` (1 vCPU, 32 MiB, no disk, network or display), ten times; the VM process
//!   writes the CPU time it has used (user and system, all threads, `getrusage`) to `vm.log`
//!   once its machine runs, confinement and filters included. Firecracker's specification
//!   for the same figure is at most 8 CPU-ms. Also the wall time of `vivarium start` (the CLI
//!   starting, spawning the VM process and waiting for it to say it runs).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::bench::update_benchmarks_md;
use crate::util::{self, workspace_root};

const RUNS: usize = 10;
const HEADING: &str = "## The VM process: size and start-up (`cargo xtask bench vm`)";

/// Entry point of `cargo xtask bench vm`.
pub fn run() -> Result<(), String> {
    let root = workspace_root();
    let vivarium = util::build_release_vivarium()?;
    let vm = vivarium.with_file_name("vivarium-vm");
    let mib = |path: &Path| -> Result<f64, String> {
        std::fs::metadata(path)
            .map(|m| m.len() as f64 / f64::from(1 << 20))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let (vm_size, app_size) = (mib(&vm)?, mib(&vivarium)?);
    let (vm_libs, app_libs) = (shared_libraries(&vm), shared_libraries(&vivarium));

    let work = util::target_dir().join("bench-vm");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    let home = work.join("library");
    let kernel = work.join("handmade.elf");
    vivarium_e2e::handmade::write_kernel(&kernel).map_err(|e| e.to_string())?;
    let cli = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&vivarium)
            .env("VIVARIUM_HOME", &home)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "vivarium {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    cli(&[
        "create",
        "hm",
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
    let log = home.join("vms/hm.vivm/logs/vm.log");
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..RUNS {
        let _ = std::fs::remove_file(&log);
        let started = Instant::now();
        cli(&["start", "hm"])?;
        wall.push(started.elapsed());
        cpu.push(cpu_at_start(&log)?);
        cli(&["stop", "--force", "hm"])?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cli(&["--json", "status", "hm"])?.contains("\"state\":\"stopped\"") {
            if Instant::now() > deadline {
                return Err("the VM did not stop".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    cpu.sort_by(f64::total_cmp);
    wall.sort();
    let cpu_median = cpu[RUNS / 2];
    let wall_median = wall[RUNS / 2].as_secs_f64() * 1000.0;
    eprintln!(
        "xtask: vivarium-vm {vm_size:.1} MiB; start-up CPU median {cpu_median:.2} ms \
         (min {:.2}, max {:.2}); `vivarium start` {wall_median:.1} ms",
        cpu[0],
        cpu[RUNS - 1]
    );
    let section = format!(
        "{HEADING}\n\n\
         Measured {date} with `cargo xtask bench vm` on this project's machine (release build; \
         the host's `/dev/kvm` is `kvm_pvm`, a software hypervisor, so the KVM calls cost more \
         than on hardware).\n\n\
         | | `vivarium-vm` | `vivarium` (app and CLI) |\n\
         |---|---|---|\n\
         | binary size | {vm_size:.1} MiB | {app_size:.1} MiB |\n\
         | shared libraries (`ldd`) | {vm_libs} | {app_libs} |\n\n\
         | start-up of a VM process ({RUNS} runs) | median | min | max |\n\
         |---|---|---|---|\n\
         | CPU time until the machine runs (user + system, all threads; Landlock and the \
         seccomp filters included) | {cpu_median:.2} ms | {:.2} ms | {:.2} ms |\n\
         | wall time of `vivarium start` (CLI start to the VM saying it runs) | \
         {wall_median:.1} ms | {:.1} ms | {:.1} ms |\n\n\
         The guest is the hand-made one (1 vCPU, 32 MiB, no disk, network or display), so this \
         is the VMM's own cost. Firecracker's specification for its VMM start is 8 CPU-ms or \
         less.\n",
        cpu[0],
        cpu[RUNS - 1],
        wall[0].as_secs_f64() * 1000.0,
        wall[RUNS - 1].as_secs_f64() * 1000.0,
        date = util::today(),
    );
    update_benchmarks_md(&root, HEADING, &section)
}

/// The CPU milliseconds the VM process said it had used when its machine ran.
fn cpu_at_start(log: &Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let marker = "the machine runs (";
    let at = text
        .find(marker)
        .ok_or_else(|| format!("`vm.log` has no start line: {text}"))?;
    let rest = &text[at + marker.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no CPU time in `{}`", &rest[..rest.len().min(60)]))
}

/// How many shared libraries `binary` loads, by `ldd` (`?` when it cannot say).
fn shared_libraries(binary: &Path) -> String {
    Command::new("ldd")
        .arg(binary)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(".so"))
                .count()
                .to_string()
        })
        .unwrap_or_else(|| "?".into())
}
