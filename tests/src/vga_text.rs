//! Reading the text of a VGA text-mode screenshot: each 9x16 (or 8x16) character cell is
//! matched against the VGA BIOS's own 8x16 font, taken from SeaBIOS's `vgabios-stdvga.bin`
//! (the font it loads into plane 2), so a test can assert on the words a guest wrote to the
//! text buffer and on their colours, not only on "some pixels are lit".

use std::collections::HashMap;
use std::path::Path;

use crate::screen::Picture;

/// Rows of a glyph in the 8x16 font.
const GLYPH_ROWS: usize = 16;

/// The 8x16 font of a VGA BIOS: 256 glyphs of 16 rows, a byte per row (bit 7 leftmost).
#[derive(Clone)]
pub struct VgaFont {
    glyphs: Vec<[u8; GLYPH_ROWS]>,
    by_bitmap: HashMap<[u8; GLYPH_ROWS], u8>,
}

/// The letter A of the IBM VGA 8x16 font, which every VGA BIOS font has.
const GLYPH_A: [u8; GLYPH_ROWS] = [
    0x00, 0x00, 0x10, 0x38, 0x6c, 0xc6, 0xc6, 0xfe, 0xc6, 0xc6, 0xc6, 0xc6, 0x00, 0x00, 0x00, 0x00,
];

impl VgaFont {
    /// The font inside a VGA BIOS image (found by its letter A).
    pub fn from_rom(rom: &[u8]) -> Result<VgaFont, String> {
        let at = rom
            .windows(GLYPH_ROWS)
            .position(|w| w == GLYPH_A)
            .ok_or("the VGA BIOS holds no 8x16 font (no letter A found)")?;
        let base = at
            .checked_sub(usize::from(b'A') * GLYPH_ROWS)
            .filter(|b| b + 256 * GLYPH_ROWS <= rom.len())
            .ok_or("the 8x16 font does not fit in the VGA BIOS")?;
        let glyphs: Vec<[u8; GLYPH_ROWS]> = (0..256)
            .map(|c| {
                rom[base + c * GLYPH_ROWS..base + (c + 1) * GLYPH_ROWS]
                    .try_into()
                    .expect("16 bytes")
            })
            .collect();
        // Printable ASCII first, so a bitmap several characters share (the blanks) reads as
        // the ASCII one.
        let mut by_bitmap = HashMap::new();
        for c in (0x20..0x7f).chain(0..0x20).chain(0x7f..=0xff) {
            by_bitmap.entry(glyphs[c]).or_insert(c as u8);
        }
        Ok(VgaFont { glyphs, by_bitmap })
    }

    /// The font of the VGA BIOS at `path`.
    pub fn load(path: &Path) -> Result<VgaFont, String> {
        let rom =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_rom(&rom)
    }

    /// The glyph of character `c`.
    pub fn glyph(&self, c: u8) -> [u8; GLYPH_ROWS] {
        self.glyphs[usize::from(c)]
    }
}

/// One character cell as read from the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// The character (`None`: the cell matches no glyph, e.g. under the cursor).
    pub ch: Option<u8>,
    /// The foreground colour (the background's for a blank cell).
    pub fg: [u8; 3],
    /// The background colour.
    pub bg: [u8; 3],
}

/// The text of a text-mode screenshot.
#[derive(Debug, Clone)]
pub struct TextScreen {
    /// Characters per row.
    pub columns: usize,
    /// Rows.
    pub rows: usize,
    /// The cells, row after row.
    pub cells: Vec<Cell>,
}

impl TextScreen {
    /// Reads `picture` as a text screen of `cell_width` (8 or 9) x 16 cells.
    pub fn read(
        picture: &Picture,
        font: &VgaFont,
        cell_width: usize,
    ) -> Result<TextScreen, String> {
        let (width, height) = (picture.width as usize, picture.height as usize);
        if width % cell_width != 0 || height % GLYPH_ROWS != 0 || width == 0 || height == 0 {
            return Err(format!(
                "a {width}x{height} picture is not a text screen of {cell_width}x16 cells"
            ));
        }
        let (columns, rows) = (width / cell_width, height / GLYPH_ROWS);
        let pixel = |x: usize, y: usize| -> [u8; 3] {
            let i = (y * width + x) * 3;
            [picture.rgb[i], picture.rgb[i + 1], picture.rgb[i + 2]]
        };
        let mut cells = Vec::with_capacity(columns * rows);
        for row in 0..rows {
            for column in 0..columns {
                let (x0, y0) = (column * cell_width, row * GLYPH_ROWS);
                // The background: the colour of most of the cell's pixels... unless the glyph
                // covers more than half; both candidates are tried against the font.
                let mut colours: Vec<([u8; 3], usize)> = Vec::new();
                for y in 0..GLYPH_ROWS {
                    for x in 0..8 {
                        let p = pixel(x0 + x, y0 + y);
                        match colours.iter_mut().find(|(c, _)| *c == p) {
                            Some((_, n)) => *n += 1,
                            None => colours.push((p, 1)),
                        }
                    }
                }
                colours.sort_by_key(|c| std::cmp::Reverse(c.1));
                let cell = match colours.as_slice() {
                    [(only, _)] => Cell {
                        ch: Some(if font.by_bitmap.contains_key(&[0; 16]) {
                            font.by_bitmap[&[0; 16]]
                        } else {
                            b' '
                        }),
                        fg: *only,
                        bg: *only,
                    },
                    [(a, _), (b, _)] => {
                        let bitmap_of = |fg: [u8; 3]| -> [u8; GLYPH_ROWS] {
                            let mut rows = [0u8; GLYPH_ROWS];
                            for (y, bits) in rows.iter_mut().enumerate() {
                                for x in 0..8 {
                                    if pixel(x0 + x, y0 + y) == fg {
                                        *bits |= 0x80 >> x;
                                    }
                                }
                            }
                            rows
                        };
                        let as_b = font.by_bitmap.get(&bitmap_of(*b));
                        let as_a = font.by_bitmap.get(&bitmap_of(*a));
                        match (as_b, as_a) {
                            (Some(c), _) => Cell {
                                ch: Some(*c),
                                fg: *b,
                                bg: *a,
                            },
                            (None, Some(c)) => Cell {
                                ch: Some(*c),
                                fg: *a,
                                bg: *b,
                            },
                            (None, None) => Cell {
                                ch: None,
                                fg: *b,
                                bg: *a,
                            },
                        }
                    }
                    _ => Cell {
                        ch: None,
                        fg: colours[1].0,
                        bg: colours[0].0,
                    },
                };
                cells.push(cell);
            }
        }
        Ok(TextScreen {
            columns,
            rows,
            cells,
        })
    }

    /// The cell at `row`, `column`.
    pub fn cell(&self, row: usize, column: usize) -> Cell {
        self.cells[row * self.columns + column]
    }

    /// Row `row` as text: printable ASCII as it is, a cell matching no glyph as `?`, other
    /// characters as `.`.
    pub fn line(&self, row: usize) -> String {
        self.cells[row * self.columns..(row + 1) * self.columns]
            .iter()
            .map(|c| match c.ch {
                Some(ch) if (0x20..0x7f).contains(&ch) => ch as char,
                Some(0) => ' ',
                Some(_) => '.',
                None => '?',
            })
            .collect()
    }

    /// The whole screen as text, a line per row.
    pub fn text(&self) -> String {
        (0..self.rows)
            .map(|r| self.line(r))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Where `needle` first appears: (row, column).
    pub fn find(&self, needle: &str) -> Option<(usize, usize)> {
        (0..self.rows).find_map(|r| self.line(r).find(needle).map(|c| (r, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A font of made-up glyphs around a real letter A, in a "ROM" with bytes before it.
    fn rom() -> Vec<u8> {
        let mut rom = vec![0x5au8; 100];
        for c in 0..256usize {
            if c == usize::from(b'A') {
                rom.extend_from_slice(&GLYPH_A);
            } else if c == 0 || c == 0x20 {
                rom.extend_from_slice(&[0; 16]);
            } else {
                rom.extend((0..16).map(|r| ((c * 7 + r * 13) as u8) | 0x01));
            }
        }
        rom
    }

    #[test]
    fn cells_read_back_as_the_characters_and_colours_drawn() {
        let font = VgaFont::from_rom(&rom()).unwrap();
        let (columns, rows) = (4, 2);
        let text = [b"AB A", b"  Z~"];
        let (fg, bg) = ([255, 255, 85], [0, 0, 170]);
        let mut rgb = vec![0u8; columns * 9 * rows * 16 * 3];
        for (r, line) in text.iter().enumerate() {
            for (c, ch) in line.iter().enumerate() {
                let glyph = font.glyph(*ch);
                for (y, bits) in glyph.iter().enumerate() {
                    for x in 0..9 {
                        let on = x < 8 && bits & (0x80 >> x) != 0;
                        let i = ((r * 16 + y) * columns * 9 + c * 9 + x) * 3;
                        rgb[i..i + 3].copy_from_slice(if on { &fg } else { &bg });
                    }
                }
            }
        }
        let picture = Picture {
            width: (columns * 9) as u32,
            height: (rows * 16) as u32,
            rgb,
        };
        let screen = TextScreen::read(&picture, &font, 9).unwrap();
        assert_eq!(screen.line(0), "AB A");
        assert_eq!(screen.line(1), "  Z~");
        assert_eq!(screen.find("Z~"), Some((1, 2)));
        let a = screen.cell(0, 0);
        assert_eq!((a.ch, a.fg, a.bg), (Some(b'A'), fg, bg));
        assert_eq!(screen.cell(1, 0).bg, bg);
        assert!(TextScreen::read(&picture, &font, 8).is_err());
    }
}
