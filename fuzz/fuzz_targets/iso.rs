//! Fuzz the ISO 9660 reader and the installer recognition: the input is an ISO image from
//! its volume descriptors on (sector 16; the 32 KiB system area before it is zeros), and
//! everything Vivarium does with a dropped ISO runs on it: volume descriptors, Joliet and
//! Rock Ridge names, the El Torito catalogue, recognition, boot loader configurations and
//! the boot plan, then a walk of the directory tree reading every file.
//!
//! Oracles besides "no panic": no allocation beyond the reader's caps (libFuzzer's
//! `-rss_limit_mb` catches one), and every file read returns exactly the size its entry
//! states.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vivarium_core::iso::reader::{DirEntry, IsoImage};
use vivarium_core::iso::{Arch, inspect_image};

const SYSTEM_AREA: usize = 16 * 2048;
const MAX_WALKED: usize = 256;

fn walk(image: &IsoImage<[u8]>, entries: Vec<DirEntry>, depth: usize, walked: &mut usize) {
    for entry in entries {
        *walked += 1;
        if *walked > MAX_WALKED {
            return;
        }
        if entry.is_dir {
            if depth < 8
                && let Ok(children) = image.read_dir(&entry)
            {
                walk(image, children, depth + 1, walked);
            }
        } else if entry.size() <= 1 << 20 {
            let mut out = Vec::new();
            if let Ok(n) = image.copy_entry(&entry, &mut out, &mut |_| true) {
                assert_eq!(n, entry.size());
                assert_eq!(out.len() as u64, n);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bytes = vec![0u8; SYSTEM_AREA];
    bytes.extend_from_slice(data);
    let Ok(image) = IsoImage::open(bytes.into_boxed_slice()) else {
        return;
    };
    let _ = inspect_image(&image, Some(Arch::X86_64));
    if let Ok(root) = image.root_dir() {
        let mut walked = 0;
        walk(&image, root, 0, &mut walked);
    }
});
