//! Fuzz the legacy VGA (`devices::display::vga`): any sequence of port writes and reads in
//! 0x3b0..0x3e0, reads and writes of the 128 KiB legacy window, and drawings at any frame,
//! whole and row by row.
//!
//! Oracles besides "no panic": a drawing has the size the VGA reports and exactly that many
//! pixels; the row-by-row redraw of an earlier drawing ends as the whole drawing does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vivarium_devices::display::vga::{Picture, RenderCache, Vga};
use vivarium_devices_fuzz::Cursor;

fn check(vga: &Vga, picture: &Picture) {
    assert_eq!((picture.width, picture.height), vga.picture_size());
    assert_eq!(
        picture.pixels.len(),
        (picture.width * picture.height) as usize
    );
}

fuzz_target!(|input: &[u8]| {
    let mut cursor = Cursor::new(input);
    let mut vga = Vga::new();
    let mut cache = RenderCache::default();
    let mut earlier: Option<Picture> = None;
    let mut frame = 0u64;
    while !cursor.is_empty() {
        match cursor.u8() % 6 {
            0 => {
                let port = 0x3b0 + u16::from(cursor.u8() % 0x30);
                vga.write_port(port, cursor.u8());
            }
            1 => {
                let port = 0x3b0 + u16::from(cursor.u8() % 0x30);
                let _ = vga.read_port(port);
            }
            2 => {
                let offset = u64::from(cursor.u32() % 0x2_0000);
                vga.write_memory(offset, cursor.u8());
            }
            3 => {
                let offset = u64::from(cursor.u32() % 0x2_0000);
                let _ = vga.read_memory(offset);
            }
            4 => {
                // A run of text-buffer writes, as a program filling the screen does.
                let start = u64::from(cursor.u16());
                for (i, byte) in cursor.bytes(64).iter().enumerate() {
                    vga.write_memory(0x1_8000 + (start + i as u64) % 0x8000, *byte);
                }
            }
            _ => {
                frame += u64::from(cursor.u8());
                let whole = vga.render(frame);
                check(&vga, &whole);
                if let Some(mut picture) = earlier.take() {
                    let _ = vga.render_update(frame, &mut picture, &mut cache);
                    check(&vga, &picture);
                    assert!(
                        picture == whole,
                        "the row-by-row redraw differs from the whole drawing"
                    );
                    earlier = Some(picture);
                } else {
                    let mut picture = whole.clone();
                    cache = RenderCache::default();
                    let _ = vga.render_update(frame, &mut picture, &mut cache);
                    earlier = Some(picture);
                }
            }
        }
    }
});
