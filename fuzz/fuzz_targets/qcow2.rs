//! Fuzz disk image recognition and the qcow2 header checks: the input is written to a file
//! and goes through `disk::probe`, the function `import` (and a dropped file) recognises an
//! image with: the qcow2 header, its backing file name, the open by the qcow2 reader, and the
//! truncation check of the L1 and L2 tables. An image recognised as qcow2 without a backing
//! file is then opened as a VM's disk would be, and read at its start, middle and end; the
//! other header readers (`backing_file`, `qcow2_is_empty`) run too.
//!
//! Oracles besides "no panic": no unbounded allocation (the run's RSS limit) and no hang.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vivarium_core::config::DiskFormat;
use vivarium_core::disk::{self, Qcow2Disk};

/// The image file, one per process, rewritten for each input.
fn image_path() -> &'static PathBuf {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("image.qcow2");
        (dir, path)
    })
    .1
}

fuzz_target!(|input: &[u8]| {
    let path = image_path();
    std::fs::write(path, input).expect("the image file is written");
    let _ = disk::backing_file(path);
    let _ = disk::qcow2_is_empty(path);
    let Ok(info) = disk::probe(path) else {
        return;
    };
    if info.format != DiskFormat::Qcow2 || info.backing_file.is_some() {
        // A raw image is its bytes; a backing file would be looked up on this machine.
        return;
    }
    let Ok(image) = Qcow2Disk::open(path, true) else {
        return;
    };
    assert_eq!(image.size(), info.virtual_size);
    let size = image.size();
    let mut sector = [0u8; 512];
    for offset in [0, size / 2 / 512 * 512, size.saturating_sub(512)] {
        if offset + 512 <= size {
            let _ = image.read_at(&mut sector, offset);
        }
    }
});
