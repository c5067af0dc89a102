//! Test disks for guests, and what a test prints past the harness's capture.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Writes `len` bytes of deterministic pseudo-random data (xorshift64 from `seed`), so that a
/// hash of the disk means something.
pub fn write_pattern_disk(path: &Path, len: usize, seed: u64) {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    std::fs::write(path, bytes).expect("write the test disk");
}

/// The sha256 (hex) of the first `len` bytes of `path`, computed by `sha256sum` as the guest
/// computes it.
pub fn host_sha256(path: &Path, len: usize) -> String {
    let bytes = std::fs::read(path).expect("read the test disk");
    let head = tempfile::NamedTempFile::new().expect("a temporary file");
    std::fs::write(head.path(), &bytes[..len]).expect("write the hashed region");
    let out = Command::new("sha256sum")
        .arg(head.path())
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Prints straight to stderr, past the test harness's capture, so that a skip or a figure is
/// seen.
pub fn loud(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
