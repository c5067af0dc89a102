//! Loading a Linux arm64 `Image` (the arm64 boot protocol, Linux's
//! `Documentation/arch/arm64/booting.rst`): its 64-byte header says how far from a 2 MiB
//! boundary it wants to be and how much memory it takes with its BSS.
//!
//! Written here rather than with `linux-loader`'s PE loader because that loader builds only on
//! aarch64 hosts, and the board (with its tests) builds on every host.

use std::io::Read;
use std::path::Path;

use vivarium_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};

/// The header's magic, "ARM\x64", at byte 56.
const MAGIC: u32 = 0x644d_5241;
/// The header's size.
const HEADER_SIZE: usize = 64;
/// The `text_offset` of kernels older than 3.17, whose header gives 0 for size.
const OLD_TEXT_OFFSET: u64 = 0x8_0000;
/// The alignment of the base the kernel is loaded relative to.
pub const BASE_ALIGNMENT: u64 = 2 << 20;

/// An `Image` header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the image goes past a 2 MiB-aligned base.
    pub text_offset: u64,
    /// How much memory it occupies from there, BSS included.
    pub image_size: u64,
}

impl ImageHeader {
    /// Parses the first 64 bytes of a file; `None` if it is no arm64 `Image`.
    pub fn parse(header: &[u8]) -> Option<ImageHeader> {
        if header.len() < HEADER_SIZE {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap());
        let magic = u32::from_le_bytes(header[56..60].try_into().unwrap());
        if magic != MAGIC {
            return None;
        }
        let (text_offset, image_size) = match u64_at(16) {
            0 => (OLD_TEXT_OFFSET, 0),
            size => (u64_at(8), size),
        };
        Some(ImageHeader {
            text_offset,
            image_size,
        })
    }
}

/// Where a kernel went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Its first instruction (where the image was loaded).
    pub entry: u64,
    /// The end of the memory it occupies (BSS included).
    pub end: u64,
}

/// Loads the `Image` at `path` into `memory` relative to the 2 MiB-aligned `base`.
pub fn load_image(
    memory: &GuestMemoryMmap,
    base: u64,
    path: &Path,
    ram_end: u64,
) -> Result<LoadedKernel> {
    let bad = |why: String| Error::Kernel {
        path: path.to_path_buf(),
        why,
    };
    let mut file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(|e| bad(e.to_string()))?;
    let header = ImageHeader::parse(&data).ok_or_else(|| {
        bad(
            "it is not a Linux arm64 Image (no \"ARM\\x64\" magic in its header): give the \
             uncompressed arm64 kernel (Debian's vmlinuz for arm64 is one)"
                .into(),
        )
    })?;
    let entry = base + header.text_offset;
    let size = header.image_size.max(data.len() as u64);
    let end = entry
        .checked_add(size)
        .filter(|&end| end <= ram_end)
        .ok_or_else(|| {
            bad(format!(
                "it needs {} MiB of memory from {entry:#x}, more than the VM has",
                size >> 20
            ))
        })?;
    memory
        .write_slice(&data, GuestAddress(entry))
        .map_err(|e| bad(format!("it does not fit in guest memory: {e}")))?;
    Ok(LoadedKernel { entry, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(text_offset: u64, image_size: u64, magic: u32) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_SIZE];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[56..60].copy_from_slice(&magic.to_le_bytes());
        h
    }

    #[test]
    fn the_header_says_where_the_image_goes() {
        assert_eq!(
            ImageHeader::parse(&header(0, 0x200_0000, MAGIC)),
            Some(ImageHeader {
                text_offset: 0,
                image_size: 0x200_0000
            })
        );
        // Before 3.17: no size, and the fixed offset.
        assert_eq!(
            ImageHeader::parse(&header(0x1234, 0, MAGIC))
                .unwrap()
                .text_offset,
            OLD_TEXT_OFFSET
        );
        assert_eq!(ImageHeader::parse(&header(0, 1, 0x1234_5678)), None);
        assert_eq!(ImageHeader::parse(&[0; 12]), None);
    }

    #[test]
    fn a_kernel_is_loaded_at_its_offset_and_one_too_big_is_refused() {
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x4000_0000), 8 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Image");
        let mut image = header(0x1_0000, 0x30_0000, MAGIC);
        image.extend_from_slice(b"kernel text");
        std::fs::write(&path, &image).unwrap();
        let loaded = load_image(&memory, 0x4000_0000, &path, 0x4080_0000).unwrap();
        assert_eq!(loaded.entry, 0x4001_0000);
        assert_eq!(loaded.end, 0x4031_0000);
        let mut text = [0u8; 11];
        memory
            .read_slice(&mut text, GuestAddress(0x4001_0000 + HEADER_SIZE as u64))
            .unwrap();
        assert_eq!(&text, b"kernel text");
        let small = load_image(&memory, 0x4000_0000, &path, 0x4020_0000).unwrap_err();
        assert!(
            small.to_string().contains("more than the VM has"),
            "{small}"
        );
        std::fs::write(
            &path,
            b"MZ not an image at all, far too short for a header........",
        )
        .unwrap();
        let foreign = load_image(&memory, 0x4000_0000, &path, 0x4080_0000).unwrap_err();
        assert!(
            foreign.to_string().contains("not a Linux arm64 Image"),
            "{foreign}"
        );
    }
}
