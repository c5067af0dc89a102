//! `cargo xtask fuzz [--time SECONDS] [--jobs N] [--sanitizer none|address] [TARGET...]`:
//! builds every fuzz target of the `fuzz/` crate and runs each (or the ones named) for a set
//! time; any finding fails the command, naming the target and the input that triggers it.
//!
//! What it does, in order:
//! - Finds `cargo-fuzz`: `cargo fuzz` when it is installed, else the copy in the cache
//!   (`~/.cache/vivarium/tools/cargo-fuzz`), else installs it there with
//!   `cargo install cargo-fuzz --locked --root ...` (nothing is installed elsewhere).
//! - Picks the toolchain: `nightly` when rustup has it, else the current one with
//!   `RUSTC_BOOTSTRAP=1` (cargo-fuzz's instrumentation flags need no nightly; a sanitizer
//!   does).
//! - Builds every target (`cargo fuzz build`, output in `fuzz/target`, outside the workspace's
//!   target folder), without a sanitizer unless `--sanitizer` asks for one: the models are safe
//!   Rust, and the build keeps overflow checks and debug assertions on, so panics are what
//!   finds bugs; leaving ASan out halves the build and doubles the executions.
//! - Runs each target's binary with libFuzzer for `--time` seconds (default
//!   [`DEFAULT_SECONDS`]), `--jobs` at a time (default: the machine's cores), over its corpus
//!   in the cache (`~/.cache/vivarium/fuzz-corpus/TARGET`, where new inputs go, kept between
//!   runs), its seeds (`fuzz/seeds/TARGET`), its regression inputs (`fuzz/regressions/TARGET`:
//!   every one of them runs first, so a crash fixed once stays fixed) and generated seeds
//!   (small qcow2 images made with `qemu-img`, when it is installed). An input slower than
//!   [`TIMEOUT_SECONDS`] or a run over [`RSS_LIMIT_MB`] MiB is a finding too.
//! - Prints a table of executions, executions per second, corpus size and new coverage per
//!   target; each run's libFuzzer output is in `fuzz/target/logs/TARGET.log`, and a finding's
//!   input in `fuzz/artifacts/TARGET/`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use crate::util::{self, workspace_root};

/// Seconds each target runs when `--time` is not given: enough for a target to get past
/// its seeds and shallow bugs, short enough that all of them take a few minutes.
pub const DEFAULT_SECONDS: u64 = 15;
/// An input that takes longer than this (seconds) is a finding (a hang).
pub const TIMEOUT_SECONDS: u64 = 10;
/// A run whose memory grows past this (MiB) is a finding (unbounded allocation).
pub const RSS_LIMIT_MB: u64 = 2048;
/// The cargo-fuzz release line installed when it is missing.
const CARGO_FUZZ_VERSION: &str = "^0.13";

const USAGE: &str = "usage: cargo xtask fuzz [--time SECONDS] [--jobs N] \
                     [--sanitizer none|address] [TARGET...]";

/// Options of one fuzzing session.
struct Options {
    seconds: u64,
    jobs: usize,
    sanitizer: String,
    targets: Vec<String>,
}

/// What one target's run gave.
struct Outcome {
    target: String,
    passed: bool,
    executions: Option<u64>,
    per_second: Option<u64>,
    new_units: Option<u64>,
    peak_rss_mb: Option<u64>,
    corpus: usize,
    log: PathBuf,
    artifacts: Vec<PathBuf>,
}

/// Entry point of `cargo xtask fuzz`.
pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    fuzz(&options)
}

/// The short run `cargo xtask test` does: every target for [`DEFAULT_SECONDS`].
pub fn run_short() -> Result<(), String> {
    fuzz(&Options {
        seconds: DEFAULT_SECONDS,
        jobs: default_jobs(),
        sanitizer: "none".into(),
        targets: Vec::new(),
    })
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        seconds: DEFAULT_SECONDS,
        jobs: default_jobs(),
        sanitizer: "none".into(),
        targets: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--time" => {
                options.seconds = value("--time")?
                    .parse()
                    .map_err(|_| format!("--time takes whole seconds\n{USAGE}"))?;
            }
            "--jobs" => {
                options.jobs = value("--jobs")?
                    .parse::<usize>()
                    .map_err(|_| format!("--jobs takes a number\n{USAGE}"))?
                    .max(1);
            }
            "--sanitizer" => options.sanitizer = value("--sanitizer")?,
            "-h" | "--help" => return Err(USAGE.into()),
            other if other.starts_with('-') => {
                return Err(format!("unknown option `{other}`\n{USAGE}"));
            }
            target => options.targets.push(target.to_string()),
        }
    }
    Ok(options)
}

fn fuzz(options: &Options) -> Result<(), String> {
    let started = Instant::now();
    let fuzz_dir = workspace_root().join("fuzz");
    let tool = CargoFuzz::find_or_install()?;
    let all = tool.list(&fuzz_dir)?;
    for target in &options.targets {
        if !all.contains(target) {
            return Err(format!(
                "there is no fuzz target `{target}`; the targets are: {}",
                all.join(" ")
            ));
        }
    }
    let targets = if options.targets.is_empty() {
        all
    } else {
        options.targets.clone()
    };

    // Build every target, whichever run: a target that does not build is a failure.
    let build_started = Instant::now();
    let mut build = tool.command(&fuzz_dir);
    build.args(["build", "--sanitizer", &options.sanitizer]);
    util::run(&mut build).map_err(|e| format!("the fuzz targets do not build: {e}"))?;
    eprintln!(
        "xtask: fuzz targets built in {:.0} s",
        build_started.elapsed().as_secs_f64()
    );

    let bin_dir = fuzz_dir
        .join("target")
        .join(tool.host_triple()?)
        .join("release");
    let corpus_root = util::cache_dir()?.join("fuzz-corpus");
    let generated = generated_seeds(&corpus_root)?;
    let logs = fuzz_dir.join("target").join("logs");
    fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;

    let queue = Mutex::new(targets.iter().cloned().collect::<VecDeque<_>>());
    let outcomes = Mutex::new(Vec::new());
    let run_started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.min(targets.len()) {
            scope.spawn(|| {
                loop {
                    let Some(target) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let outcome = run_target(
                        &target,
                        options.seconds,
                        &bin_dir,
                        &fuzz_dir,
                        &corpus_root,
                        &generated,
                        &logs,
                    );
                    outcomes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(outcome);
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap_or_else(|e| e.into_inner());
    outcomes.sort_by_key(|o| o.as_ref().map(|o| o.target.clone()).unwrap_or_default());
    let mut failures = Vec::new();
    for outcome in &outcomes {
        match outcome {
            Ok(o) if o.passed => {}
            Ok(o) => failures.push(failure_message(o)),
            Err(e) => failures.push(e.clone()),
        }
    }
    print_summary(&outcomes, options.seconds);
    eprintln!(
        "xtask: fuzzing took {:.0} s ({:.0} s of runs, {} at a time)",
        started.elapsed().as_secs_f64(),
        run_started.elapsed().as_secs_f64(),
        options.jobs.min(targets.len()),
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fuzzing found {} problem(s):\n{}\nreproduce one with `fuzz/target/{}/release/TARGET \
             ARTIFACT`; once fixed, keep the input in fuzz/regressions/TARGET/ and add a unit \
             test beside the code",
            failures.len(),
            failures.join("\n"),
            tool.host_triple().unwrap_or_else(|_| "HOST".into()),
        ))
    }
}

fn failure_message(o: &Outcome) -> String {
    let artifacts = if o.artifacts.is_empty() {
        "no input saved".to_string()
    } else {
        o.artifacts
            .iter()
            .map(|a| a.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "  {}: the fuzzer failed (a crash, a hang or too much memory); input: {}; log: {}",
        o.target,
        artifacts,
        o.log.display()
    )
}

/// Runs one target's binary for `seconds`.
fn run_target(
    target: &str,
    seconds: u64,
    bin_dir: &Path,
    fuzz_dir: &Path,
    corpus_root: &Path,
    generated: &Path,
    logs: &Path,
) -> Result<Outcome, String> {
    let corpus = corpus_root.join(target);
    fs::create_dir_all(&corpus).map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
    let artifacts = fuzz_dir.join("artifacts").join(target);
    fs::create_dir_all(&artifacts)
        .map_err(|e| format!("cannot create {}: {e}", artifacts.display()))?;
    let before = list_files(&artifacts);
    let log = logs.join(format!("{target}.log"));
    let log_file =
        fs::File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| format!("cannot share {}: {e}", log.display()))?;

    let mut cmd = Command::new(bin_dir.join(target));
    // New inputs go to the first folder, the corpus in the cache; the others are read only.
    cmd.arg(&corpus);
    for extra in [
        fuzz_dir.join("seeds").join(target),
        fuzz_dir.join("regressions").join(target),
        generated.join(target),
    ] {
        if extra.is_dir() {
            cmd.arg(extra);
        }
    }
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err));
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    let status = cmd
        .status()
        .map_err(|e| format!("  {target}: could not start {}: {e}", util::describe(&cmd)))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let new_artifacts: Vec<PathBuf> = list_files(&artifacts)
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    let outcome = Outcome {
        target: target.to_string(),
        passed: status.success() && new_artifacts.is_empty(),
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        new_units: stat("new_units_added"),
        peak_rss_mb: stat("peak_rss_mb"),
        corpus: list_files(&corpus).len(),
        log,
        artifacts: new_artifacts,
    };
    if !outcome.passed {
        // The end of libFuzzer's report: the panic message and the stack.
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!(
            "xtask: {target} FAILED; the end of its log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(outcome)
}

fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn print_summary(outcomes: &[Result<Outcome, String>], seconds: u64) {
    println!("\nfuzzing, {seconds} s per target:\n");
    println!("| target | result | executions | exec/s | corpus | new units | peak RSS (MiB) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let show = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
    for outcome in outcomes {
        match outcome {
            Ok(o) => println!(
                "| `{}` | {} | {} | {} | {} | {} | {} |",
                o.target,
                if o.passed { "ok" } else { "FAILED" },
                show(o.executions),
                show(o.per_second),
                o.corpus,
                show(o.new_units),
                show(o.peak_rss_mb),
            ),
            Err(e) => println!("| | error: {e} | | | | | |"),
        }
    }
    println!();
}

/// Seeds the runner makes rather than the repository keeping binaries: small qcow2 images
/// (512-byte clusters, so they stay within libFuzzer's input size) from `qemu-img`, when it
/// is installed. Returns the folder holding one subfolder per target.
fn generated_seeds(corpus_root: &Path) -> Result<PathBuf, String> {
    let root = corpus_root.join("generated-seeds");
    let dir = root.join("qcow2");
    let complete = root.join("qcow2.complete");
    if complete.is_file() || !util::have_program("qemu-img") {
        return Ok(root);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let qemu_img = |args: &[&str]| {
        let mut cmd = Command::new("qemu-img");
        cmd.current_dir(&dir).args(args).stdout(Stdio::null());
        util::run(&mut cmd)
    };
    let small = "cluster_size=512";
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        small,
        "empty.qcow2",
        "1M",
    ])?;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,compat=0.10",
        "v2.qcow2",
        "64K",
    ])?;
    // A raw disk with a few sectors of data, converted: allocated L2 tables and clusters.
    let mut raw = vec![0u8; 16 << 10];
    for (i, sector) in raw.chunks_mut(512).enumerate().filter(|(i, _)| i % 5 == 0) {
        sector.fill(i as u8 + 1);
    }
    fs::write(dir.join("data.raw"), &raw).map_err(|e| format!("cannot write a seed: {e}"))?;
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        small,
        "data.raw",
        "data.qcow2",
    ])?;
    fs::remove_file(dir.join("data.raw")).map_err(|e| format!("cannot remove a seed: {e}"))?;
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        small,
        "-b",
        "empty.qcow2",
        "-F",
        "qcow2",
        "overlay.qcow2",
    ])?;
    fs::write(&complete, b"").map_err(|e| format!("cannot write a seed: {e}"))?;
    Ok(root)
}

/// How cargo-fuzz is run, and with which toolchain.
struct CargoFuzz {
    /// The program and the arguments before the subcommand (`cargo fuzz`, or the binary in the
    /// cache and `fuzz`, as cargo itself would call it).
    program: Vec<String>,
    /// `Some("nightly")` when rustup has it; `None`: the current toolchain with RUSTC_BOOTSTRAP.
    toolchain: Option<&'static str>,
}

impl CargoFuzz {
    fn find_or_install() -> Result<CargoFuzz, String> {
        let toolchain = nightly_available().then_some("nightly");
        let works = |program: &[String]| {
            let mut cmd = Command::new(&program[0]);
            cmd.args(&program[1..])
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.status().is_ok_and(|s| s.success())
        };
        let on_path = vec!["cargo".to_string(), "fuzz".to_string()];
        if works(&on_path) {
            return Ok(CargoFuzz {
                program: on_path,
                toolchain,
            });
        }
        let root = util::cache_dir()?.join("tools").join("cargo-fuzz");
        let cached = vec![
            root.join("bin")
                .join("cargo-fuzz")
                .to_string_lossy()
                .into_owned(),
            "fuzz".to_string(),
        ];
        if !works(&cached) {
            eprintln!(
                "xtask: cargo-fuzz is not installed; installing it into {} (only used by \
                 `cargo xtask fuzz`)",
                root.display()
            );
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut install = Command::new(cargo);
            install
                .args(["install", "cargo-fuzz", "--locked", "--version"])
                .arg(CARGO_FUZZ_VERSION)
                .arg("--root")
                .arg(&root);
            util::run(&mut install)?;
            if !works(&cached) {
                return Err(format!(
                    "cargo-fuzz was installed into {} but does not run",
                    root.display()
                ));
            }
        }
        Ok(CargoFuzz {
            program: cached,
            toolchain,
        })
    }

    /// A cargo-fuzz command in `fuzz_dir` with the toolchain set up.
    fn command(&self, fuzz_dir: &Path) -> Command {
        let mut cmd = Command::new(&self.program[0]);
        cmd.args(&self.program[1..]).current_dir(fuzz_dir);
        self.toolchain_env(&mut cmd);
        cmd
    }

    fn toolchain_env(&self, cmd: &mut Command) {
        // The cargo running xtask may have pointed these at its own toolchain.
        cmd.env_remove("RUSTC").env_remove("CARGO");
        match self.toolchain {
            Some(toolchain) => cmd.env("RUSTUP_TOOLCHAIN", toolchain),
            None => cmd.env("RUSTC_BOOTSTRAP", "1"),
        };
    }

    /// The fuzz targets the crate declares.
    fn list(&self, fuzz_dir: &Path) -> Result<Vec<String>, String> {
        let mut cmd = self.command(fuzz_dir);
        cmd.arg("list");
        let out = cmd
            .output()
            .map_err(|e| format!("could not run {}: {e}", util::describe(&cmd)))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}",
                util::describe(&cmd),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if targets.is_empty() {
            return Err("the fuzz crate declares no targets".into());
        }
        Ok(targets)
    }

    /// The host's target triple (where cargo-fuzz puts the binaries), from the toolchain's
    /// rustc.
    fn host_triple(&self) -> Result<String, String> {
        let mut cmd = Command::new("rustc");
        cmd.arg("-vV");
        self.toolchain_env(&mut cmd);
        let out = cmd
            .output()
            .map_err(|e| format!("could not run rustc -vV: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .map(|h| h.trim().to_string())
            .ok_or_else(|| "rustc -vV names no host".to_string())
    }
}

/// Whether rustup has a nightly toolchain.
fn nightly_available() -> bool {
    util::have_program("rustup")
        && Command::new("rustup")
            .args(["toolchain", "list"])
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("nightly"))
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_default_to_a_short_run_of_every_target() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.seconds, DEFAULT_SECONDS);
        assert_eq!(o.sanitizer, "none");
        assert!(o.targets.is_empty());
        assert!(o.jobs >= 1);
    }

    #[test]
    fn options_take_time_jobs_sanitizer_and_targets() {
        let o = parse(&args(&[
            "--time",
            "240",
            "virtio_net",
            "--jobs",
            "2",
            "--sanitizer",
            "address",
            "qcow2",
        ]))
        .unwrap();
        assert_eq!(o.seconds, 240);
        assert_eq!(o.jobs, 2);
        assert_eq!(o.sanitizer, "address");
        assert_eq!(o.targets, ["virtio_net", "qcow2"]);
    }

    #[test]
    fn bad_options_are_refused_with_the_usage() {
        for bad in [
            &["--time"][..],
            &["--time", "soon"],
            &["--jobs", "x"],
            &["--frobnicate"],
        ] {
            let err = parse(&args(bad)).err().expect("refused");
            assert!(err.contains("usage: cargo xtask fuzz"), "{err}");
        }
    }
}
