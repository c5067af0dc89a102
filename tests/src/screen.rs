//! Pictures of a VM's screen, whoever took them: QEMU's `screendump` (binary PPM) and
//! `vivarium screenshot` (PNG), as plain RGB; what they show (the dominant colour, whether it
//! is the Debian installer's text interface), and how alike two of them are.
//!
//! Two VMMs showing the same Linux console need not give the same bytes: under QEMU with
//! SeaBIOS, `vga=788` gives the kernel a 16-bit (RGB565) VESA mode, which `screendump` widens to
//! 8 bits a channel by repeating the top bits (the console's grey `#aaaaaa` becomes
//! `#adaaad`), while Vivarium gives it a 32-bit mode. Such pictures are compared at the depth
//! of the coarser one ([`Depth::Rgb565`]): the console palette's colours agree exactly there.
//! (The Debian installer does not stay in that mode under QEMU: its `bochs` DRM driver
//! switches QEMU's standard VGA to 1280x800 at 32 bits, so its first screen compares at
//! [`Depth::Rgb888`].)
//!
//! PPM is read by hand: the format is a three-line header and raw bytes, and no PPM crate is
//! in the workspace; PNG goes through the `image` crate.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// Why a picture could not be read or compared.
#[derive(Debug, thiserror::Error)]
pub enum ScreenError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Neither a binary PPM (`P6`) nor a PNG.
    #[error("not a picture this reads (binary PPM `P6` with 8-bit samples, or PNG): {0}")]
    Format(String),
    /// The two pictures have different sizes, so no pixel-by-pixel comparison.
    #[error("the pictures differ in size: {0}x{1} against {2}x{3}")]
    SizeMismatch(u32, u32, u32, u32),
}

/// A picture as rows of RGB pixels, 3 bytes each, top row first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// The colour depth at which two pictures are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// 8 bits a channel: the bytes as they are.
    Rgb888,
    /// The top 5, 6 and 5 bits of red, green and blue: a 16-bit framebuffer's colours.
    Rgb565,
}

impl Depth {
    /// `color` with the bits this depth does not hold cleared.
    pub fn reduce(self, [r, g, b]: [u8; 3]) -> [u8; 3] {
        match self {
            Depth::Rgb888 => [r, g, b],
            Depth::Rgb565 => [r & 0xf8, g & 0xfc, b & 0xf8],
        }
    }
}

/// The console palette's blue: the Debian installer's (newt's) screen background.
pub const NEWT_BLUE: [u8; 3] = [0x00, 0x00, 0xaa];
/// The console palette's light grey: newt's dialogs.
pub const NEWT_GREY: [u8; 3] = [0xaa, 0xaa, 0xaa];

impl Picture {
    /// Reads a binary PPM (`P6`, maximum value 255: what QEMU's `screendump` writes).
    pub fn from_ppm(bytes: &[u8]) -> Result<Picture, ScreenError> {
        let bad = |what: &str| ScreenError::Format(format!("PPM: {what}"));
        let mut at = 0;
        let mut fields = [0u32; 3];
        let magic = next_token(bytes, &mut at).ok_or_else(|| bad("empty"))?;
        if magic != b"P6" {
            return Err(bad("no `P6` magic"));
        }
        for field in &mut fields {
            let token = next_token(bytes, &mut at).ok_or_else(|| bad("header cut short"))?;
            *field = std::str::from_utf8(token)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| bad("a header field is not a number"))?;
        }
        let [width, height, max] = fields;
        if max != 255 {
            return Err(bad(&format!("maximum sample {max}, only 255 is read")));
        }
        // Exactly one whitespace byte separates the header from the samples.
        at += 1;
        let len = width as usize * height as usize * 3;
        let rgb = bytes
            .get(at..at + len)
            .ok_or_else(|| bad(&format!("{width}x{height} needs {len} bytes of samples")))?;
        Ok(Picture {
            width,
            height,
            rgb: rgb.to_vec(),
        })
    }

    /// Reads a PNG (what `vivarium screenshot` writes); alpha is dropped.
    pub fn from_png(bytes: &[u8]) -> Result<Picture, ScreenError> {
        let decoded = image::load_from_memory_with_format(bytes, image::ImageFormat::Png)
            .map_err(|e| ScreenError::Format(format!("PNG: {e}")))?
            .to_rgb8();
        Ok(Picture {
            width: decoded.width(),
            height: decoded.height(),
            rgb: decoded.into_raw(),
        })
    }

    /// Reads a PPM or a PNG, told apart by their first bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Picture, ScreenError> {
        if bytes.starts_with(b"P6") {
            Picture::from_ppm(bytes)
        } else if bytes.starts_with(b"\x89PNG") {
            Picture::from_png(bytes)
        } else {
            Err(ScreenError::Format("neither `P6` nor PNG magic".into()))
        }
    }

    /// Reads the picture in `path` (PPM or PNG).
    pub fn load(path: &Path) -> Result<Picture, ScreenError> {
        let bytes = std::fs::read(path).map_err(|source| ScreenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Picture::from_bytes(&bytes)
    }

    /// The picture as a PNG file's bytes (to keep it where a person can look at it).
    pub fn to_png(&self) -> Result<Vec<u8>, ScreenError> {
        let mut png = Vec::new();
        image::RgbImage::from_raw(self.width, self.height, self.rgb.clone())
            .ok_or_else(|| ScreenError::Format("fewer samples than the size needs".into()))?
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| ScreenError::Format(format!("PNG: {e}")))?;
        Ok(png)
    }

    /// The pixels as `[r, g, b]`.
    pub fn pixels(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        self.rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]])
    }

    /// The colour most pixels have at `depth` (the lowest bits cleared), and their share.
    pub fn dominant(&self, depth: Depth) -> ([u8; 3], f64) {
        let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
        for p in self.pixels() {
            *counts.entry(depth.reduce(p)).or_default() += 1;
        }
        let total = self.pixel_count().max(1) as f64;
        counts
            .into_iter()
            .max_by_key(|&(color, count)| (count, color))
            .map(|(color, count)| (color, count as f64 / total))
            .unwrap_or(([0, 0, 0], 0.0))
    }

    /// The share of the pixels (0 to 1) that are `color` at `depth`.
    pub fn share_of(&self, color: [u8; 3], depth: Depth) -> f64 {
        let want = depth.reduce(color);
        let hits = self.pixels().filter(|p| depth.reduce(*p) == want).count();
        hits as f64 / self.pixel_count().max(1) as f64
    }

    /// Whether this is the Debian installer's text interface: newt's grey dialogs over most
    /// of the screen, inside its blue background (the colours compared as 16-bit ones, so a
    /// 16-bit console counts too).
    pub fn is_newt_screen(&self) -> bool {
        self.share_of(NEWT_GREY, Depth::Rgb565) > 0.5
            && self.share_of(NEWT_BLUE, Depth::Rgb565) > 0.02
    }

    fn pixel_count(&self) -> usize {
        self.width as usize * self.height as usize
    }
}

/// The next whitespace-separated token of a PPM header (skipping `#` comments), from `*at`.
fn next_token<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    loop {
        match bytes.get(*at)? {
            b'#' => {
                while *bytes.get(*at)? != b'\n' {
                    *at += 1;
                }
            }
            c if c.is_ascii_whitespace() => *at += 1,
            _ => break,
        }
    }
    let start = *at;
    while bytes.get(*at).is_some_and(|c| !c.is_ascii_whitespace()) {
        *at += 1;
    }
    Some(&bytes[start..*at])
}

/// How alike two pictures of the same size are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// Pixels in each picture.
    pub pixels: u64,
    /// Pixels whose colours agree at the comparison's depth.
    pub identical: u64,
    /// The smallest rectangle holding every differing pixel, `(left, top, right, bottom)`
    /// inclusive; `None` when the pictures agree.
    pub differing_box: Option<(u32, u32, u32, u32)>,
    /// The text cells (`(column, row)`) holding differing pixels, for a console picture whose
    /// cells are [`Comparison::CELL`] pixels: a cursor is one cell, a different font is all
    /// the text, a different layout is whole regions.
    pub differing_cells: Vec<(u32, u32)>,
}

impl Comparison {
    /// The size of a Linux console cell with the 8x16 font (the one the kernel picks for an
    /// 800x600 or 1024x768 framebuffer).
    pub const CELL: (u32, u32) = (8, 16);

    /// The share of identical pixels, 0 to 1.
    pub fn identical_share(&self) -> f64 {
        self.identical as f64 / self.pixels.max(1) as f64
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.4} % of {} pixels identical",
            self.identical_share() * 100.0,
            self.pixels
        )?;
        if let Some((l, t, r, b)) = self.differing_box {
            write!(
                f,
                "; the {} differing ones within ({l},{t})-({r},{b}), in {} text cells",
                self.pixels - self.identical,
                self.differing_cells.len()
            )?;
        }
        Ok(())
    }
}

/// Compares two pictures of the same size pixel by pixel, their colours reduced to `depth`.
pub fn compare(a: &Picture, b: &Picture, depth: Depth) -> Result<Comparison, ScreenError> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(ScreenError::SizeMismatch(
            a.width, a.height, b.width, b.height,
        ));
    }
    let mut identical = 0;
    let mut differing_box: Option<(u32, u32, u32, u32)> = None;
    let mut cells = std::collections::BTreeSet::new();
    let (cell_w, cell_h) = Comparison::CELL;
    for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
        if depth.reduce(pa) == depth.reduce(pb) {
            identical += 1;
            continue;
        }
        let x = (i % a.width as usize) as u32;
        let y = (i / a.width as usize) as u32;
        differing_box = Some(match differing_box {
            None => (x, y, x, y),
            Some((l, t, r, bo)) => (l.min(x), t.min(y), r.max(x), bo.max(y)),
        });
        cells.insert((y / cell_h, x / cell_w));
    }
    Ok(Comparison {
        pixels: a.pixel_count() as u64,
        identical,
        differing_box,
        differing_cells: cells.into_iter().map(|(row, col)| (col, row)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ppm(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
        let mut bytes = format!("P6\n# a comment\n{width} {height}\n255\n").into_bytes();
        bytes.extend_from_slice(rgb);
        bytes
    }

    fn filled(width: u32, height: u32, color: [u8; 3]) -> Picture {
        Picture {
            width,
            height,
            rgb: color.repeat((width * height) as usize),
        }
    }

    #[test]
    fn a_ppm_is_read_with_comments_and_a_binary_sample_that_looks_like_whitespace() {
        // The first sample is a newline byte: only one whitespace byte ends the header.
        let rgb = [b'\n', 2, 3, 4, 5, 6];
        let picture = Picture::from_bytes(&ppm(2, 1, &rgb)).unwrap();
        assert_eq!((picture.width, picture.height), (2, 1));
        assert_eq!(picture.rgb, rgb);
    }

    #[test]
    fn a_cut_or_foreign_ppm_is_refused() {
        assert!(Picture::from_ppm(&ppm(2, 2, &[0; 11])).is_err());
        assert!(Picture::from_ppm(b"P3\n1 1\n255\n0 0 0\n").is_err());
        assert!(Picture::from_ppm(b"P6\n1 1\n65535\n\0\0\0\0\0\0").is_err());
        assert!(Picture::from_ppm(b"P6\n1").is_err());
        assert!(Picture::from_bytes(b"GIF89a").is_err());
    }

    #[test]
    fn a_png_reads_as_the_same_picture() {
        let picture = Picture {
            width: 2,
            height: 1,
            rgb: vec![0, 0, 0xaa, 0xaa, 0xaa, 0xaa],
        };
        let png = picture.to_png().unwrap();
        assert_eq!(Picture::from_bytes(&png).unwrap(), picture);
    }

    #[test]
    fn a_16_bit_screendump_matches_the_32_bit_screen_at_16_bits_only() {
        // QEMU widens RGB565 (21, 42, 21), the console grey, to (0xad, 0xaa, 0xad).
        let qemu = filled(16, 16, [0xad, 0xaa, 0xad]);
        let vivarium = filled(16, 16, NEWT_GREY);
        let exact = compare(&qemu, &vivarium, Depth::Rgb888).unwrap();
        assert_eq!(exact.identical, 0);
        let reduced = compare(&qemu, &vivarium, Depth::Rgb565).unwrap();
        assert_eq!(reduced.identical_share(), 1.0);
        assert_eq!(reduced.differing_box, None);
        assert!(reduced.differing_cells.is_empty());
    }

    #[test]
    fn differences_are_located_in_pixels_and_text_cells() {
        let a = filled(32, 32, [0, 0, 0]);
        let mut b = a.clone();
        // A pixel in cell (1, 0) and one in cell (3, 1).
        for (x, y) in [(9u32, 3u32), (25, 20)] {
            let i = ((y * 32 + x) * 3) as usize;
            b.rgb[i..i + 3].copy_from_slice(&[0xff, 0xff, 0xff]);
        }
        let c = compare(&a, &b, Depth::Rgb565).unwrap();
        assert_eq!(c.pixels, 1024);
        assert_eq!(c.identical, 1022);
        assert_eq!(c.differing_box, Some((9, 3, 25, 20)));
        assert_eq!(c.differing_cells, vec![(1, 0), (3, 1)]);
        assert!(
            c.to_string()
                .starts_with("99.8047 % of 1024 pixels identical")
        );
    }

    #[test]
    fn pictures_of_different_sizes_are_not_compared() {
        let err = compare(&filled(2, 2, [0; 3]), &filled(2, 3, [0; 3]), Depth::Rgb888);
        assert!(matches!(err, Err(ScreenError::SizeMismatch(2, 2, 2, 3))));
    }

    #[test]
    fn the_installer_screen_is_mostly_grey_inside_blue() {
        let mut screen = filled(10, 10, [0xad, 0xaa, 0xad]);
        assert_eq!(screen.dominant(Depth::Rgb565), ([0xa8, 0xa8, 0xa8], 1.0));
        // No blue border yet: not the installer.
        assert!(!screen.is_newt_screen());
        screen.rgb[..3 * 10].copy_from_slice(&NEWT_BLUE.repeat(10));
        assert!(screen.is_newt_screen());
        assert!(!filled(10, 10, NEWT_BLUE).is_newt_screen());
    }
}
