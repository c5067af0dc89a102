//! Direct Linux boot (the x86 boot protocol, `Documentation/arch/x86/boot.rst`): kernel,
//! initrd, command line, and the zero page with its e820 memory map.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{Cmdline, KernelLoader, load_cmdline};
use vm_memory::{Address, Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::pc::layout;
use vivarium_devices::GuestMemoryMmap;
use vivarium_hypervisor::x86;

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
const E820_RESERVED: u32 = 2;
/// Boot protocol magic numbers and flags.
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const LOADFLAG_CAN_USE_HEAP: u8 = 0x80;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// `screen_info.orig_video_isVGA` of a VESA linear framebuffer (`VIDEO_TYPE_VLFB`).
const VIDEO_TYPE_VLFB: u8 = 0x23;

/// A linear framebuffer the kernel finds in its boot parameters (`screen_info`) and draws its
/// console on with the built-in `vesafb`/`simplefb`/`simpledrm`, before any driver of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFramebuffer {
    /// Guest physical address (below 4 GiB).
    pub base: u32,
    /// Bytes of video memory.
    pub size: u64,
    /// Pixels per row.
    pub width: u16,
    /// Rows.
    pub height: u16,
    /// Bytes from one row to the next.
    pub stride: u16,
}

impl BootFramebuffer {
    /// Fills `screen_info` for this framebuffer: 32 bits per pixel, bytes blue, green, red,
    /// unused (x8r8g8b8), as VBE reports a VLFB mode (its size in 64 KiB units).
    pub fn write_screen_info(&self, info: &mut linux_loader::loader::bootparam::screen_info) {
        info.orig_video_isVGA = VIDEO_TYPE_VLFB;
        info.lfb_base = self.base;
        info.lfb_size = (self.size >> 16).min(u64::from(u32::MAX)) as u32;
        info.lfb_width = self.width;
        info.lfb_height = self.height;
        info.lfb_depth = 32;
        info.lfb_linelength = self.stride;
        (info.red_size, info.red_pos) = (8, 16);
        (info.green_size, info.green_pos) = (8, 8);
        (info.blue_size, info.blue_pos) = (8, 0);
        (info.rsvd_size, info.rsvd_pos) = (8, 24);
        // One page of the size of the picture fits; more would let a driver pan.
        info.pages = (self.size / (u64::from(self.stride) * u64::from(self.height)).max(1))
            .min(u64::from(u16::MAX)) as u16;
    }
}

/// Where the loaded kernel starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    /// 64-bit entry point.
    pub entry: u64,
}

/// Loads a Linux kernel (bzImage, or an ELF vmlinux), its initrd and command line into guest
/// memory and writes the zero page. Returns the 64-bit entry point.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    acpi_rsdp: Option<GuestAddress>,
    framebuffer: Option<&BootFramebuffer>,
) -> Result<KernelEntry> {
    let mut file = File::open(kernel).map_err(|e| Error::Kernel {
        path: kernel.to_path_buf(),
        why: format!("it cannot be opened ({e})"),
    })?;
    let (loaded, entry) = match linux_loader::loader::BzImage::load(
        mem,
        None,
        &mut file,
        Some(layout::HIGH_RAM_START),
    ) {
        Ok(loaded) => {
            // The 64-bit entry of a bzImage is 0x200 past the start of its protected-mode
            // code (`startup_64`).
            let entry = loaded.kernel_load.raw_value() + 0x200;
            (loaded, entry)
        }
        Err(bz_error) => {
            let mut file = File::open(kernel).map_err(|e| Error::Kernel {
                path: kernel.to_path_buf(),
                why: format!("it cannot be opened ({e})"),
            })?;
            match linux_loader::loader::Elf::load(
                mem,
                None,
                &mut file,
                Some(layout::HIGH_RAM_START),
            ) {
                Ok(loaded) => {
                    let entry = loaded.kernel_load.raw_value();
                    (loaded, entry)
                }
                Err(elf_error) => {
                    return Err(Error::Kernel {
                        path: kernel.to_path_buf(),
                        why: format!(
                            "it is neither a Linux bzImage ({bz_error}) nor an ELF vmlinux \
                             ({elf_error})"
                        ),
                    });
                }
            }
        }
    };

    let mut params = boot_params::default();
    if let Some(header) = loaded.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HEADER_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADFLAG_CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    if let Some(rsdp) = acpi_rsdp {
        params.acpi_rsdp_addr = rsdp.raw_value();
    }
    if let Some(framebuffer) = framebuffer {
        framebuffer.write_screen_info(&mut params.screen_info);
    }

    let mut line = Cmdline::new(layout::CMDLINE_MAX_SIZE)
        .map_err(|e| Error::Setup(format!("command line: {e}")))?;
    line.insert_str(cmdline)
        .map_err(|e| Error::InvalidMachine(format!("the kernel command line is invalid: {e}")))?;
    load_cmdline(mem, layout::CMDLINE_START, &line)
        .map_err(|e| Error::Setup(format!("could not write the command line: {e}")))?;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.raw_value() as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(initrd) = initrd {
        let (address, size) = load_initrd(mem, memory_size, loaded.kernel_end, &params, initrd)?;
        params.hdr.ramdisk_image = address as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = e820_map(memory_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = *entry;
    }
    params.e820_entries = e820.len() as u8;

    let boot = BootParams::new::<boot_params>(&params, layout::ZERO_PAGE_START);
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&boot, mem)
        .map_err(|e| Error::Setup(format!("could not write the zero page: {e}")))?;
    Ok(KernelEntry { entry })
}

/// Puts the initrd at the top of low RAM (below the kernel's `initrd_addr_max`), page
/// aligned. Returns its address and size.
fn load_initrd(
    mem: &GuestMemoryMmap,
    memory_size: u64,
    kernel_end: u64,
    params: &boot_params,
    path: &Path,
) -> Result<(u64, u64)> {
    let data = std::fs::read(path).map_err(|e| Error::Initrd {
        path: path.to_path_buf(),
        why: format!("it cannot be read ({e})"),
    })?;
    let size = data.len() as u64;
    let max = if params.hdr.initrd_addr_max != 0 {
        u64::from(params.hdr.initrd_addr_max)
    } else {
        0x37ff_ffff
    };
    let top = layout::low_ram_end(memory_size).min(max + 1);
    let address = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a > kernel_end)
        .ok_or_else(|| {
            Error::InvalidMachine(format!(
                "the initrd `{}` ({} MiB) does not fit in the VM's memory beside the kernel: give \
             the VM more memory",
                path.display(),
                size >> 20
            ))
        })?;
    mem.write_slice(&data, GuestAddress(address))
        .map_err(|e| Error::Setup(format!("could not write the initrd: {e}")))?;
    Ok((address, size))
}

/// The e820 map: low RAM, the reserved legacy area, RAM above 1 MiB up to the PCI hole, and
/// RAM above 4 GiB.
pub fn e820_map(memory_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, kind: u32| boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    let high = layout::HIGH_RAM_START.raw_value();
    let mut map = vec![
        entry(0, layout::EBDA_START, E820_RAM),
        entry(layout::EBDA_START, high - layout::EBDA_START, E820_RESERVED),
    ];
    let low_end = layout::low_ram_end(memory_size);
    if low_end > high {
        map.push(entry(high, low_end - high, E820_RAM));
    }
    if memory_size > layout::PCI_HOLE_START {
        map.push(entry(
            layout::PCI_HOLE_END,
            memory_size - layout::PCI_HOLE_START,
            E820_RAM,
        ));
    }
    map
}

/// Writes the boot GDT, an empty IDT and identity page tables for the first GiB, and returns
/// how the boot CPU enters 64-bit long mode at `entry` with `rsi` pointing at the Linux zero
/// page.
pub fn long_mode_entry(mem: &GuestMemoryMmap, entry: u64) -> Result<x86::Entry> {
    let gdt = vec![
        x86::descriptor(0, 0, 0),            // null
        x86::descriptor(0xa09b, 0, 0xfffff), // 64-bit code
        x86::descriptor(0xc093, 0, 0xfffff), // data
        x86::descriptor(0x808b, 0, 0xfffff), // TSS
    ];
    let write_err =
        |what: &str| Error::Setup(format!("could not write the {what} to guest memory"));
    for (i, descriptor) in gdt.iter().enumerate() {
        mem.write_obj(*descriptor, layout::GDT_START.unchecked_add(i as u64 * 8))
            .map_err(|_| write_err("GDT"))?;
    }
    mem.write_obj(0u64, layout::IDT_START)
        .map_err(|_| write_err("IDT"))?;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present, writable, large).
    mem.write_obj(layout::PDPTE_START.raw_value() | 0x03, layout::PML4_START)
        .map_err(|_| write_err("page tables"))?;
    mem.write_obj(layout::PDE_START.raw_value() | 0x03, layout::PDPTE_START)
        .map_err(|_| write_err("page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, layout::PDE_START.unchecked_add(i * 8))
            .map_err(|_| write_err("page tables"))?;
    }
    Ok(x86::Entry::LongMode {
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START.raw_value(),
        gdt_base: layout::GDT_START.raw_value(),
        gdt,
        idt_base: layout::IDT_START.raw_value(),
        idt_limit: 7,
        cr3: layout::PML4_START.raw_value(),
    })
}

/// How a hand-made real-mode image loaded at `load_address` (below 64 KiB) is entered.
pub fn real_mode_entry(load_address: u64) -> Result<x86::Entry> {
    let ip = u16::try_from(load_address).map_err(|_| {
        Error::InvalidMachine(format!(
            "a real-mode entry point must be below 64 KiB, not {load_address:#x}"
        ))
    })?;
    Ok(x86::Entry::RealMode { ip, sp: 0xfff0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_e820_map_covers_all_ram_once_and_skips_the_hole() {
        for size in [64u64 << 20, 3 << 30, 5 << 30] {
            let map = e820_map(size);
            let ram: u64 = map
                .iter()
                .filter(|e| e.r#type == E820_RAM)
                .map(|e| e.size)
                .sum();
            // The legacy area between 640 KiB and 1 MiB is RAM the guest does not get.
            assert_eq!(ram, size - (0x10_0000 - layout::EBDA_START), "{size}");
            assert!(map.iter().all(
                |e| e.addr + e.size <= layout::PCI_HOLE_START || e.addr >= layout::PCI_HOLE_END
            ));
        }
    }

    #[test]
    fn the_framebuffer_is_announced_as_a_32_bit_vesa_lfb() {
        let mut info = linux_loader::loader::bootparam::screen_info::default();
        BootFramebuffer {
            base: 0xc000_0000,
            size: 16 << 20,
            width: 1024,
            height: 768,
            stride: 4096,
        }
        .write_screen_info(&mut info);
        let (kind, base, size) = (info.orig_video_isVGA, info.lfb_base, info.lfb_size);
        assert_eq!((kind, base, size), (0x23, 0xc000_0000, 256));
        let (w, h, d, l) = (
            info.lfb_width,
            info.lfb_height,
            info.lfb_depth,
            info.lfb_linelength,
        );
        assert_eq!((w, h, d, l), (1024, 768, 32, 4096));
        assert_eq!((info.red_pos, info.green_pos, info.blue_pos), (16, 8, 0));
        let pages = info.pages;
        assert_eq!(pages, 5);
    }

    #[test]
    fn a_file_that_is_not_a_kernel_is_refused_clearly() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("vmlinuz");
        std::fs::write(&fake, vec![0x42u8; 8192]).unwrap();
        let err = load_linux(&mem, 64 << 20, &fake, None, "", None, None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("neither a Linux bzImage"), "{text}");
        let err = load_linux(
            &mem,
            64 << 20,
            &dir.path().join("missing"),
            None,
            "",
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot be opened"), "{err}");
    }
}
