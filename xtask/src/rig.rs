//! `cargo xtask rig`: runs a shell script inside the nested test rig (an emulated AMD machine
//! with a real `/dev/kvm`, or with `--arch arm64` an emulated arm64 machine with KVM/arm64) and
//! prints its console.
//!
//! The rig itself is `vivarium_e2e::rig`, shared with the tests; this command builds the guest
//! fixtures when needed (the arm64 ones for `--arch arm64`), cross-builds the workspace
//! binaries named with `--cross-bin`, parses the arguments and passes the script's exit code
//! on.

use std::path::PathBuf;
use std::time::Duration;

use vivarium_e2e::rig::Rig;

const USAGE: &str = "usage: cargo xtask rig [--arch x86_64|arm64] [--qemu] [--bin PROGRAM]... \
                     [--cross-bin PACKAGE:BIN]... [--data PATH]... [--file PATH[:NAME]]... \
                     [--timeout SECONDS] [--gzip] [--kernel-log] -- SCRIPT\n\
                     \n\
                     SCRIPT is a file, or else the words after `--` as one shell command.\n\
                     --arch arm64 runs the arm64 rig (an emulated arm64 machine with KVM/arm64; \
                     the default is x86_64); --qemu carries QEMU in (qemu-system-x86_64 and its \
                     firmware, or Debian's arm64 qemu-system-aarch64 with its libraries); --bin \
                     a program with its libraries (an arm64 program in the arm64 rig); \
                     --cross-bin a workspace binary cross-built for the arm64 rig, carried at \
                     /rig/bin/BIN; --data a file or folder at its host path; --file a file as \
                     /rig/files/NAME; --gzip compresses the outer initramfs; --kernel-log lets \
                     the outer kernel log to the console.";

/// Options of `cargo xtask rig`.
#[derive(Default)]
struct Options {
    arm64: bool,
    cross_binaries: Vec<(String, String)>,
    qemu: bool,
    binaries: Vec<String>,
    data: Vec<String>,
    files: Vec<(String, String)>,
    timeout: Option<u64>,
    gzip: bool,
    kernel_log: bool,
    script: String,
}

/// Entry point of `cargo xtask rig ... -- SCRIPT`.
pub fn run(args: &[String]) -> Result<(), String> {
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}");
        return Ok(());
    }
    let options = parse(args)?;
    let mut rig = if options.arm64 {
        Rig::arm64(&crate::fixtures::ensure_arm64()?, &options.script)
    } else if !options.cross_binaries.is_empty() {
        return Err("--cross-bin is for the arm64 rig (--arch arm64)".into());
    } else {
        Rig::new(&crate::fixtures::ensure()?, &options.script)
    };
    let stripped = vivarium_e2e::cross::cross_target_dir().join("stripped");
    std::fs::create_dir_all(&stripped)
        .map_err(|e| format!("cannot create {}: {e}", stripped.display()))?;
    for (package, bin) in &options.cross_binaries {
        let built = vivarium_e2e::cross::small_arm64_binary(package, bin, &stripped)?;
        rig = rig.binary_at(&built, &format!("/rig/bin/{bin}"));
    }
    rig = rig
        .echo(true)
        .compress(options.gzip)
        .kernel_log(options.kernel_log);
    if options.qemu {
        rig = rig.qemu()?;
    }
    for program in &options.binaries {
        rig = rig.binary(program);
    }
    for path in &options.data {
        rig = rig.data(path);
    }
    for (path, name) in &options.files {
        rig = rig.file(path, name);
    }
    if let Some(seconds) = options.timeout {
        rig = rig.timeout(Duration::from_secs(seconds));
    }
    let run = rig.run()?;
    eprintln!(
        "rig: {:.1} s, initramfs {:.1} MB, kvm={}, exit={}",
        run.elapsed.as_secs_f64(),
        run.initramfs_bytes as f64 / 1e6,
        run.kvm.map_or("unknown", |k| if k { "yes" } else { "no" }),
        run.exit_code.map_or("none".into(), |c| c.to_string()),
    );
    if !run.qemu_stderr.trim().is_empty() {
        eprintln!("rig: qemu stderr:\n{}", run.qemu_stderr.trim_end());
    }
    match (run.timed_out, run.exit_code) {
        (true, _) => Err("the rig timed out (raise it with --timeout)".into()),
        (false, Some(0)) => Ok(()),
        (false, Some(code)) => Err(format!("the rig script exited with code {code}")),
        (false, None) => Err("the rig stopped before the script finished".into()),
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or(format!("{arg} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--qemu" => options.qemu = true,
            "--arch" => match value()?.as_str() {
                "arm64" | "aarch64" => options.arm64 = true,
                "x86_64" | "amd64" => options.arm64 = false,
                other => return Err(format!("unknown --arch {other}\n\n{USAGE}")),
            },
            "--cross-bin" => {
                let v = value()?;
                let (package, bin) = v
                    .split_once(':')
                    .ok_or(format!("--cross-bin needs PACKAGE:BIN, not {v}"))?;
                options.cross_binaries.push((package.into(), bin.into()));
            }
            "--gzip" => options.gzip = true,
            "--kernel-log" => options.kernel_log = true,
            "--bin" => options.binaries.push(value()?),
            "--data" => options.data.push(value()?),
            "--file" => options.files.push(file_spec(&value()?)),
            "--timeout" => {
                let v = value()?;
                options.timeout = Some(v.parse().map_err(|_| format!("bad --timeout {v}"))?);
            }
            "--" => break,
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    let rest: Vec<&String> = args.collect();
    options.script = match rest.as_slice() {
        [] => return Err(format!("no script\n\n{USAGE}")),
        [one] if PathBuf::from(one).is_file() => std::fs::read_to_string(one)
            .map_err(|e| format!("cannot read the script {one}: {e}"))?,
        words => words
            .iter()
            .map(|w| w.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    };
    Ok(options)
}

/// `PATH[:NAME]`: NAME defaults to the file's name.
fn file_spec(spec: &str) -> (String, String) {
    match spec.rsplit_once(':') {
        Some((path, name)) if !name.is_empty() && !name.contains('/') => {
            (path.to_string(), name.to_string())
        }
        _ => {
            let name = PathBuf::from(spec)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| spec.to_string());
            (spec.to_string(), name)
        }
    }
}
