//! `cargo xtask bench clone`: clone benchmarks, side by side in one run.
//!
//! One 20 GiB sparse raw disk holding 1 GiB of data is cloned by Vivarium (full and linked)
//! and copied by `cp --sparse=always` and `cp --reflink=auto`, alternating, several runs each;
//! the medians go to `docs/BENCHMARKS.md`. Times are wall-clock of the whole command, process
//! start included, on a warm page cache.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{self, have_program, workspace_root};

const DISK_SIZE: &str = "20G";
const DATA_CHUNKS: u64 = 16;
const CHUNK_BYTES: usize = 64 << 20;
const RUNS: usize = 5;

/// Entry point of `cargo xtask bench ...`.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("clone") => clone_bench(),
        Some("boot") => crate::bench_boot::run(),
        Some("app") => crate::bench_app::run(),
        Some("display") => crate::bench_display::run(),
        Some("installer") => crate::bench_installer::run(),
        Some("firmware") => crate::bench_firmware::run(),
        Some("memtest") => crate::bench_memtest::run(),
        Some("vm") => crate::bench_vm::run(),
        _ => Err(
            "usage: cargo xtask bench clone|boot|app|display|installer|firmware|memtest|vm".into(),
        ),
    }
}

fn clone_bench() -> Result<(), String> {
    for tool in ["cp"] {
        if !have_program(tool) {
            return Err(format!("`{tool}` is needed for the comparison"));
        }
    }
    let root = workspace_root();
    let bin = util::build_release_vivarium()?;
    // On the same file system as the build, not a RAM-backed /tmp.
    let work = util::target_dir().join("bench-clone");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("could not create {}: {e}", work.display()))?;
    let home = work.join("library");
    let kernel = work.join("kernel");
    fs::write(&kernel, b"placeholder kernel file").map_err(|e| e.to_string())?;

    let vivarium = |args: &[&str]| -> Result<Duration, String> {
        let started = Instant::now();
        let out = Command::new(&bin)
            .env("VIVARIUM_HOME", &home)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            return Err(format!(
                "vivarium {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(elapsed)
    };
    vivarium(&[
        "create",
        "source",
        "--kernel",
        kernel.to_str().unwrap(),
        "--disk-size",
        DISK_SIZE,
    ])?;
    let disk = home.join("vms/source.vivm/disks/disk0.raw");
    fill_with_data(&disk)?;
    let sync = || {
        let _ = Command::new("sync").status();
    };
    sync();

    let mut full = Vec::new();
    let mut cp_sparse = Vec::new();
    let mut cp_sparse_sync = Vec::new();
    let mut cp_reflink = Vec::new();
    for run in 0..RUNS {
        let name = format!("full{run}");
        full.push(vivarium(&["clone", "source", &name])?);
        vivarium(&["delete", &name])?;
        sync();
        for (variant, times, durable) in [
            ("--sparse=always", &mut cp_sparse, false),
            ("--sparse=always", &mut cp_sparse_sync, true),
            ("--reflink=auto", &mut cp_reflink, false),
        ] {
            let target = work.join("cp-copy.raw");
            times.push(time_cp(variant, &disk, &target, durable)?);
            let _ = fs::remove_file(&target);
            sync();
        }
    }
    let mut linked = Vec::new();
    for run in 0..RUNS {
        linked.push(vivarium(&[
            "clone",
            "source",
            &format!("linked{run}"),
            "--linked",
        ])?);
    }

    let fs_type = file_system_type(&work);
    let rows = [
        ("Vivarium linked clone", median(&linked)),
        ("Vivarium full clone", median(&full)),
        ("cp --sparse=always", median(&cp_sparse)),
        (
            "cp --sparse=always, then sync FILE",
            median(&cp_sparse_sync),
        ),
        ("cp --reflink=auto", median(&cp_reflink)),
    ];
    let mut table = String::new();
    table.push_str("| operation | median wall time | runs |\n|---|---:|---:|\n");
    for (what, time) in rows {
        table.push_str(&format!(
            "| {what} | {} | {RUNS} |\n",
            format_duration(time)
        ));
    }
    let ratio = median(&full).as_secs_f64() / median(&cp_sparse).as_secs_f64();
    let ratio_durable = median(&full).as_secs_f64() / median(&cp_sparse_sync).as_secs_f64();
    let section = format!(
        "## Clone\n\n\
         Command: `cargo xtask bench clone` (release build). A {DISK_SIZE} sparse raw disk with \
         1 GiB of data ({DATA_CHUNKS} chunks of 64 MiB spread over the disk), on {fs_type}, \
         {cpus} CPUs, warm page cache; times are whole commands, process start included.\n\n\
         {table}\n\
         Full clone / `cp --sparse=always`: {ratio:.2}x; full clone / (`cp --sparse=always` + \
         `sync FILE`): {ratio_durable:.2}x. A Vivarium clone is durable when it returns (its \
         files are fsynced before the rename that publishes the VM), so the second ratio \
         compares like with like: plain `cp` returns before its data reaches the disk. \
         Measured {date}.\n",
        cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        date = today(),
    );
    println!("{section}");
    update_benchmarks_md(&root, "## Clone", &section)?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Writes 1 GiB of non-zero data in chunks spread over the disk.
fn fill_with_data(disk: &Path) -> Result<(), String> {
    let file = OpenOptions::new()
        .write(true)
        .open(disk)
        .map_err(|e| format!("could not open {}: {e}", disk.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let stride = len / DATA_CHUNKS;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    for i in 0..DATA_CHUNKS {
        for (j, byte) in chunk.iter_mut().enumerate() {
            *byte = (j as u64 ^ i).wrapping_mul(0x9e37_79b9) as u8 | 1;
        }
        file.write_all_at(&chunk, i * stride)
            .map_err(|e| e.to_string())?;
    }
    file.sync_all().map_err(|e| e.to_string())
}

/// Times `cp VARIANT SRC DST`, and when `durable`, the `sync DST` that makes it crash-safe.
fn time_cp(variant: &str, src: &Path, dst: &Path, durable: bool) -> Result<Duration, String> {
    let started = Instant::now();
    let mut cp = Command::new("cp");
    cp.arg(variant).arg(src).arg(dst);
    check_status(&mut cp)?;
    if durable {
        check_status(Command::new("sync").arg(dst))?;
    }
    Ok(started.elapsed())
}

fn check_status(cmd: &mut Command) -> Result<(), String> {
    let status = cmd.status().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{} failed", util::describe(cmd)))
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn file_system_type(path: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(path)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "an unknown file system".into())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces the section starting with `heading` in docs/BENCHMARKS.md (or appends it).
pub fn update_benchmarks_md(root: &Path, heading: &str, section: &str) -> Result<(), String> {
    let path = root.join("docs").join("BENCHMARKS.md");
    let current = fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nFigures from the project's own harness (`cargo xtask bench ...`). \
         Each section says the command that produced it.\n\n"
            .into()
    });
    let updated = match current.find(heading) {
        Some(start) => {
            let after = &current[start + heading.len()..];
            let end = after
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(current.len());
            let rest = &current[end..];
            let gap = if rest.is_empty() { "" } else { "\n" };
            format!(
                "{}{}{gap}{rest}",
                &current[..start],
                section.trim_end_matches('\n').to_owned() + "\n"
            )
        }
        None => format!("{}\n\n{section}", current.trim_end_matches('\n')),
    };
    fs::write(&path, updated).map_err(|e| format!("could not write {}: {e}", path.display()))
}
