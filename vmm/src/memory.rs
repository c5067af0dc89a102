//! Guest RAM, mapped so that the hypervisor can back the guest with 2 MiB pages.
//!
//! KVM maps a guest page range with a huge page only when the host mapping is a huge page and
//! the guest physical address and the host virtual address are congruent modulo 2 MiB. The
//! kernel places an anonymous mapping wherever it likes (older kernels do not align large
//! anonymous mappings), so a plain `mmap` of guest RAM usually leaves every guest page behind
//! a 4 KiB second-level mapping: one nested page fault per 4 KiB the guest touches, and more
//! TLB misses for the rest of its life. This module maps each RAM range at a 2 MiB-aligned
//! address (over-allocate, then trim) and hands the mapping to `vm-memory`.
//!
//! `vm-memory` can build an aligned region only from a raw pointer, and then does not unmap
//! it; [`GuestRam`] owns the mappings and unmaps them when the last user of the memory is gone.

use std::sync::Arc;

use vivarium_devices::GuestMemoryMmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

use crate::error::{Error, Result};

/// Alignment of every RAM mapping: the x86 large page.
pub const RAM_ALIGNMENT: usize = 2 << 20;

/// A mapping this module made, unmapped by [`GuestRam`].
struct Mapping {
    address: *mut libc::c_void,
    length: usize,
}

/// The guest's RAM: the `vm-memory` view shared with the devices, and the mappings behind it.
pub struct GuestRam {
    memory: Option<Arc<GuestMemoryMmap>>,
    mappings: Vec<Mapping>,
}

// SAFETY: the raw pointers are only used to unmap, once, in Drop; the memory itself is reached
// through `GuestMemoryMmap`, which is Send + Sync.
unsafe impl Send for GuestRam {}
// SAFETY: as above; no method dereferences the pointers.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// Maps each `(guest address, length)` range at a 2 MiB-aligned host address (ranges whose
    /// guest address is 2 MiB-aligned get congruent host addresses, so KVM can use huge pages).
    pub fn allocate(ranges: &[(GuestAddress, usize)]) -> Result<GuestRam> {
        let mut ram = GuestRam {
            memory: None,
            mappings: Vec::new(),
        };
        let mut regions = Vec::new();
        for &(guest, length) in ranges {
            let address = ram.map_aligned(length)?;
            // SAFETY: `address` .. `address + length` is a private anonymous read-write
            // mapping made above and owned by `ram`, which unmaps it only after every user of
            // the `GuestMemoryMmap` built here is gone (see Drop).
            let region = unsafe {
                MmapRegionBuilder::new(length)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                    .with_raw_mmap_pointer(address.cast())
            }
            .build()
            .map_err(|e| Error::InvalidMachine(format!("could not map guest memory: {e}")))?;
            let region = GuestRegionMmap::new(region, guest).ok_or_else(|| {
                Error::InvalidMachine(format!(
                    "guest memory at {:#x} of {length} bytes wraps around the address space",
                    guest.0
                ))
            })?;
            regions.push(region);
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| Error::InvalidMachine(format!("bad guest memory layout: {e}")))?;
        ram.memory = Some(Arc::new(memory));
        Ok(ram)
    }

    /// The memory, for the vCPUs, the boot code and the devices.
    pub fn memory(&self) -> &Arc<GuestMemoryMmap> {
        self.memory
            .as_ref()
            .expect("GuestRam always holds its memory until dropped")
    }

    fn map_aligned(&mut self, length: usize) -> Result<*mut libc::c_void> {
        let oom = |what: &str| {
            Error::InvalidMachine(format!(
                "could not allocate {} MiB of guest memory ({what}: {})",
                length >> 20,
                std::io::Error::last_os_error()
            ))
        };
        let padded = length.checked_add(RAM_ALIGNMENT).ok_or_else(|| {
            Error::InvalidMachine(format!("{length} bytes of memory is too much"))
        })?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks; it replaces
        // nothing. MAP_NORESERVE: the guest's memory is committed page by page as it is used.
        let reserved = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            return Err(oom("mmap"));
        }
        let start = reserved as usize;
        let aligned = start.next_multiple_of(RAM_ALIGNMENT);
        let head = aligned - start;
        let tail = padded - head - length;
        // SAFETY: the head and tail are the unused ends of the mapping just made, outside
        // `aligned .. aligned + length`; nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(reserved, head);
            }
            if tail > 0 {
                libc::munmap((aligned + length) as *mut libc::c_void, tail);
            }
        }
        let address = aligned as *mut libc::c_void;
        self.mappings.push(Mapping { address, length });
        Ok(address)
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Some(memory) = self.memory.take()
            && Arc::try_unwrap(memory).is_err()
        {
            // Something still holds the memory (a device thread that outlived its machine):
            // leave the mappings in place rather than pull them from under it.
            tracing::warn!("guest memory still in use after the machine ended; not unmapping it");
            return;
        }
        for mapping in self.mappings.drain(..) {
            // SAFETY: the mapping was made by `map_aligned` and, with the last `Arc` of the
            // `GuestMemoryMmap` dropped above, nothing refers to it any more.
            unsafe {
                libc::munmap(mapping.address, mapping.length);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_mapped_at_huge_page_boundaries_and_works() {
        let ranges = [(GuestAddress(0), 6 << 20), (GuestAddress(1 << 32), 4 << 20)];
        let ram = GuestRam::allocate(&ranges).unwrap();
        let memory = ram.memory();
        for region in memory.iter() {
            let host = memory.get_host_address(region.start_addr()).unwrap() as usize;
            assert_eq!(
                host % RAM_ALIGNMENT,
                0,
                "region at {:?}",
                region.start_addr()
            );
        }
        memory
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        memory
            .write_obj(7u64, GuestAddress((1 << 32) + (4 << 20) - 8))
            .unwrap();
        assert_eq!(
            memory.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1234_5678
        );
        assert!(memory.read_obj::<u8>(GuestAddress(6 << 20)).is_err());
    }

    #[test]
    fn memory_still_shared_is_not_unmapped() {
        let ram = GuestRam::allocate(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let kept = Arc::clone(ram.memory());
        drop(ram);
        // The mapping stayed: this would fault if it had been unmapped.
        kept.write_obj(1u8, GuestAddress(0)).unwrap();
    }
}
