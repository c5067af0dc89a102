//! Running the real `vivarium` binary against a temporary library.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `vivarium` binary of this workspace's build (the same profile as the running test).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("VIVARIUM_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; the binary one level up.
    let exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join("vivarium");
    assert!(
        bin.is_file(),
        "`{}` is missing: build it first with `cargo build -p vivarium` (cargo xtask test does), \
         or point VIVARIUM_BIN at it",
        bin.display()
    );
    bin
}

/// The `vivarium-vm` binary (the VM process `vivarium start` runs) beside [`binary`].
pub fn vm_binary() -> PathBuf {
    let bin = binary().with_file_name("vivarium-vm");
    assert!(
        bin.is_file(),
        "`{}` is missing: build it first with `cargo build --workspace` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// A temporary, empty library and a way to run `vivarium` on it.
pub struct TempLibrary {
    dir: tempfile::TempDir,
}

impl Default for TempLibrary {
    fn default() -> Self {
        Self::new()
    }
}

impl TempLibrary {
    /// A new empty library in a temporary folder (removed on drop).
    pub fn new() -> Self {
        TempLibrary {
            dir: tempfile::Builder::new()
                .prefix("vivarium-test-")
                .tempdir()
                .expect("a temporary folder"),
        }
    }

    /// The library root (`VIVARIUM_HOME`).
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// A scratch folder beside the library for test inputs (kernels, images).
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir.path().join("scratch");
        std::fs::create_dir_all(&path).expect("scratch folder");
        path
    }

    /// The bundle folder of a VM.
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.home().join("vms").join(format!("{name}.vivm"))
    }

    /// A `vivarium` command on this library.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.env("VIVARIUM_HOME", self.home()).args(args);
        cmd
    }

    /// Runs `vivarium ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("vivarium runs")
    }

    /// Runs `vivarium ARGS`, expects success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`vivarium {}` failed with {}:\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `vivarium --json ARGS`, expects success, returns the parsed JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Runs `vivarium ARGS`, expects failure with `code`; returns stderr, which must explain.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "`vivarium {}` should exit with {code}:\nstdout: {}\nstderr: {stderr}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
        );
        assert!(stderr.contains("error:"), "no error message: {stderr}");
        stderr
    }

    /// Names of the VMs `vivarium list --json` shows, with their states.
    pub fn list(&self) -> Vec<(String, String)> {
        self.json(&["list"])
            .as_array()
            .expect("list is an array")
            .iter()
            .map(|vm| {
                (
                    vm["name"].as_str().unwrap().to_string(),
                    vm["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}
