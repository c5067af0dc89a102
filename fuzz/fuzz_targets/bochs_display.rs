//! Fuzz the bochs display adapter: its configuration space (BAR sizing and moves, the ROM
//! BAR), the MMIO register BAR (EDID block, VGA ports, DISPI registers at 0x500, QEMU's
//! extended registers at 0x600) with accesses of any width at any offset, and the EDID built
//! for any preferred size. The video memory size, preferred size and boot mode come from the
//! input too.
//!
//! Oracles besides "no panic": every scanout the adapter shows lies inside its video memory;
//! every EDID has the fixed header and a valid checksum.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vivarium_devices::display::bochs::{BochsDisplay, MMIO_BAR, Scanout, ScanoutSink};
use vivarium_devices::display::edid::{EDID_BLOCK_SIZE, edid_for};
use vivarium_devices::pci::{PciDevice, ROM_BAR};
use vivarium_devices_fuzz::{Access, Cursor};

/// Checks every scanout against the video memory.
struct Sink {
    vram: u64,
}

impl ScanoutSink for Sink {
    fn set_scanout(&self, scanout: Option<Scanout>) {
        let Some(s) = scanout else { return };
        assert!(s.width > 0 && s.height > 0, "an empty scanout: {s:?}");
        assert!(matches!(s.bpp, 16 | 24 | 32), "a depth of {} bits", s.bpp);
        let row = u64::from(s.width) * u64::from(s.bpp / 8);
        assert!(u64::from(s.stride) >= row, "rows overlap: {s:?}");
        let end = s.offset + u64::from(s.height - 1) * u64::from(s.stride) + row;
        assert!(
            end <= self.vram,
            "scanout {s:?} ends at {end}, past {}",
            self.vram
        );
    }
    fn framebuffer_moved(&self, _address: u64) {}
}

fn check_edid(e: &[u8; EDID_BLOCK_SIZE]) {
    assert_eq!(e[..8], [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    let sum = e.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    assert_eq!(sum, 0, "EDID checksum");
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let vram = 1u64 << (16 + c.u8() % 9); // 64 KiB .. 16 MiB
    let preferred = (c.u32(), c.u32());
    check_edid(&edid_for(preferred.0, preferred.1));
    let boot = c.u8();
    let boot_mode = (boot & 1 != 0).then(|| {
        let (w, h) = (u32::from(c.u16()), u32::from(c.u16()));
        Scanout::packed32(w.max(1), h.max(1))
    });
    let Ok(mut dev) = BochsDisplay::new(vram, preferred, boot_mode, Arc::new(Sink { vram })) else {
        return;
    };
    if boot & 2 != 0 {
        let mut rom = vec![0u8; usize::from(c.u16()) + 3];
        rom[..2].copy_from_slice(&[0x55, 0xaa]);
        let _ = dev.set_option_rom(rom);
    }
    let mut edid = [0u8; EDID_BLOCK_SIZE];
    dev.read_bar(MMIO_BAR, 0, &mut edid);
    check_edid(&edid);

    while !c.is_empty() {
        let (bar, range) = match c.u8() % 8 {
            0 => (None, 0x1000),
            1 => (Some(ROM_BAR), 0x1_0000),
            2 => (Some(0), 0x1000),
            3 => (Some(c.u8() as usize % 8), 0x2000),
            _ => (Some(MMIO_BAR), 0x1100),
        };
        let a = c.access(range);
        let mut out = [0u8; 8];
        match (bar, a) {
            (None, Access::Read { offset, len }) => {
                dev.read_config(offset as usize, &mut out[..len.min(4)]);
            }
            (None, Access::Write { offset, len, value }) => {
                dev.write_config(offset as usize, &value[..len.min(4)]);
            }
            (Some(bar), Access::Read { offset, len }) => dev.read_bar(bar, offset, &mut out[..len]),
            (Some(bar), Access::Write { offset, len, value }) => {
                dev.write_bar(bar, offset, &value[..len])
            }
        }
        if c.u8() == 0xa5 {
            // The root moved or unmapped a BAR.
            let new = (c.u8() & 1 != 0).then(|| u64::from(c.u32()));
            dev.bar_moved(c.u8() as usize % 8, None, new);
        }
        // Whatever the registers say now must be showable or nothing.
        if let Some(s) = dev.scanout() {
            Sink { vram }.set_scanout(Some(s));
        }
    }
});
