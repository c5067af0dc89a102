//! An EDID 1.4 base block (VESA E-EDID) describing a virtual monitor whose preferred mode is
//! the VM's configured screen size, so a guest driver that reads it (Linux's `bochs`) starts in
//! that mode. Hand-written: it is 128 bytes of fixed layout, and no maintained crate builds one.

/// Size of an EDID base block.
pub const EDID_BLOCK_SIZE: usize = 128;

/// Largest active width or height a detailed timing descriptor can express (12 bits).
const MAX_DETAILED: u32 = 4095;
/// Reduced-blanking style intervals (pixels / lines) for the preferred timing.
const H_BLANK: u32 = 160;
const H_FRONT: u32 = 48;
const H_SYNC: u32 = 32;
const V_BLANK: u32 = 30;
const V_FRONT: u32 = 3;
const V_SYNC: u32 = 5;
/// Refresh rate of the preferred timing, in Hz.
const REFRESH_HZ: u64 = 60;
/// Pixel density used for the physical size (96 dots per inch).
const DPI: u32 = 96;

/// The EDID of a monitor named "Vivarium" that prefers `width` x `height` at 60 Hz (lower when
/// the pixel clock would not fit the descriptor). Sizes a detailed timing cannot express
/// (above 4095) give an EDID without a preferred timing; the guest then picks a mode itself.
pub fn edid_for(width: u32, height: u32) -> [u8; EDID_BLOCK_SIZE] {
    let mut e = [0u8; EDID_BLOCK_SIZE];
    e[..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VIV": three 5-bit letters (A = 1), big endian.
    let letter = |c: u8| u16::from(c - b'A' + 1);
    let id = (letter(b'V') << 10) | (letter(b'I') << 5) | letter(b'V');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&1u16.to_le_bytes()); // product code
    e[16] = 1; // week of manufacture
    e[17] = (2026 - 1990) as u8; // year of manufacture
    e[18] = 1; // EDID version 1.4
    e[19] = 4;
    e[20] = 0xa0; // digital input, 8 bits per colour
    // In 64 bits: any u32 size is accepted (found by fuzzing: a width above 16.9 million
    // overflowed), and a screen wider than 255 cm says 255.
    let cm = |px: u32| (u64::from(px) * 254 / u64::from(DPI) / 100).clamp(1, 255) as u8;
    e[21] = cm(width);
    e[22] = cm(height);
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // RGB 4:4:4, sRGB default colour space, preferred timing is native
    write_srgb_chromaticity(&mut e[25..35]);
    // Established timings: 640x480@60, 800x600@60, 1024x768@60.
    e[35] = 0x21;
    e[36] = 0x08;
    // No standard timings.
    for i in 0..8 {
        e[38 + 2 * i] = 0x01;
        e[39 + 2 * i] = 0x01;
    }
    if width <= MAX_DETAILED && height <= MAX_DETAILED && width > 0 && height > 0 {
        write_detailed_timing(&mut e[54..72], width, height);
    } else {
        write_dummy_descriptor(&mut e[54..72]);
    }
    // Monitor name: up to 13 bytes, ended by a newline and padded with spaces.
    e[72..77].copy_from_slice(&[0, 0, 0, 0xfc, 0]);
    let mut name = *b"Vivarium\n    ";
    name[9..].fill(b' ');
    e[77..90].copy_from_slice(&name);
    write_dummy_descriptor(&mut e[90..108]);
    write_dummy_descriptor(&mut e[108..126]);
    e[126] = 0; // no extension blocks
    let sum = e[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    e[127] = 0u8.wrapping_sub(sum);
    e
}

fn write_dummy_descriptor(d: &mut [u8]) {
    d.fill(0);
    d[3] = 0x10;
}

/// The sRGB primaries and D65 white point as 10-bit binary fractions.
fn write_srgb_chromaticity(c: &mut [u8]) {
    let v = |x: f64| (x * 1024.0).round() as u16;
    let (rx, ry, gx, gy) = (v(0.640), v(0.330), v(0.300), v(0.600));
    let (bx, by, wx, wy) = (v(0.150), v(0.060), v(0.3127), v(0.3290));
    let low = |a: u16, b: u16, c: u16, d: u16| {
        (((a & 3) << 6) | ((b & 3) << 4) | ((c & 3) << 2) | (d & 3)) as u8
    };
    c[0] = low(rx, ry, gx, gy);
    c[1] = low(bx, by, wx, wy);
    for (i, value) in [rx, ry, gx, gy, bx, by, wx, wy].into_iter().enumerate() {
        c[2 + i] = (value >> 2) as u8;
    }
}

fn write_detailed_timing(d: &mut [u8], width: u32, height: u32) {
    let h_total = u64::from(width + H_BLANK);
    let v_total = u64::from(height + V_BLANK);
    // Pixel clock in units of 10 kHz; a screen too large for 60 Hz gets the fastest refresh
    // the 16-bit field can say.
    let clock = (h_total * v_total * REFRESH_HZ)
        .div_ceil(10_000)
        .min(0xffff) as u16;
    d[0..2].copy_from_slice(&clock.to_le_bytes());
    d[2] = width as u8;
    d[3] = H_BLANK as u8;
    d[4] = (((width >> 8) & 0xf) << 4 | ((H_BLANK >> 8) & 0xf)) as u8;
    d[5] = height as u8;
    d[6] = V_BLANK as u8;
    d[7] = (((height >> 8) & 0xf) << 4 | ((V_BLANK >> 8) & 0xf)) as u8;
    d[8] = H_FRONT as u8;
    d[9] = H_SYNC as u8;
    d[10] = (((V_FRONT & 0xf) << 4) | (V_SYNC & 0xf)) as u8;
    d[11] = ((((H_FRONT >> 8) & 3) << 6)
        | (((H_SYNC >> 8) & 3) << 4)
        | (((V_FRONT >> 4) & 3) << 2)
        | ((V_SYNC >> 4) & 3)) as u8;
    let mm = |px: u32| (px * 254 / DPI / 10).min(0xfff);
    let (wmm, hmm) = (mm(width), mm(height));
    d[12] = wmm as u8;
    d[13] = hmm as u8;
    d[14] = (((wmm >> 8) << 4) | (hmm >> 8)) as u8;
    // Digital separate sync, horizontal sync positive.
    d[17] = 0x1a;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_valid_and_prefers_the_configured_size() {
        let e = edid_for(1280, 800);
        assert_eq!(&e[..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!((e[18], e[19]), (1, 4));
        let d = &e[54..72];
        let width = u32::from(d[2]) | (u32::from(d[4] >> 4) << 8);
        let height = u32::from(d[5]) | (u32::from(d[7] >> 4) << 8);
        assert_eq!((width, height), (1280, 800));
        let clock_khz = u32::from(u16::from_le_bytes([d[0], d[1]])) * 10;
        // (1280 + 160) x (800 + 30) x 60 Hz = 71.7 MHz.
        assert_eq!(clock_khz, 71_720);
        assert_eq!(&e[77..86], b"Vivarium\n");
    }

    #[test]
    fn sizes_a_descriptor_cannot_hold_get_no_preferred_timing() {
        let e = edid_for(5120, 2880);
        assert_eq!(&e[54..58], &[0, 0, 0, 0x10]);
        assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // A big screen that fits the descriptor keeps its size, at a lower refresh rate.
        let e = edid_for(4095, 4095);
        assert_eq!(u16::from_le_bytes([e[54], e[55]]), 0xffff);
    }

    #[test]
    fn any_size_gives_a_valid_block() {
        // Found by fuzzing: the physical size overflowed for widths above 16.9 million
        // (fuzz/regressions/bochs_display/edid-huge-width).
        for (width, height) in [(u32::MAX, 0), (0, u32::MAX), (u32::MAX, u32::MAX), (0, 0)] {
            let e = edid_for(width, height);
            assert_eq!(e.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert_eq!(&e[54..58], &[0, 0, 0, 0x10], "{width}x{height}");
        }
        let e = edid_for(u32::MAX, 768);
        assert_eq!((e[21], e[22]), (255, 20));
    }
}
