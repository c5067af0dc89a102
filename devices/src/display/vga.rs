//! The legacy VGA of a VGA-compatible display (what `-vga std` is on a PC): the registers
//! behind ports 0x3b0..0x3df, the four 64 KiB memory planes behind the window at
//! 0xa0000..0xbffff, and a renderer that turns text mode into pixels.
//!
//! What is modelled is what a VGA BIOS and programs that write the text buffer need:
//!
//! * the sequencer (map mask, character map select, memory mode), the graphics controller
//!   (set/reset, data rotate and function, read map select, the four write modes, both read
//!   modes, memory map select, bit mask), the attribute controller (its palette, mode control,
//!   colour plane enable, colour select and the index/data flip-flop that a read of input
//!   status 1 resets), the CRTC (start address, cursor shape and position, maximum scan line,
//!   offset, vertical display end, write protection of registers 0-7), the DAC (its 256 entries
//!   through 0x3c7..0x3c9 and the pixel mask) and the miscellaneous output register (which
//!   moves the CRTC between 0x3b4 and 0x3d4);
//! * memory accesses in planar, odd/even (text) and chain-4 addressing, with the latches;
//! * input status 1 whose retrace bits change at every read, so BIOS loops that wait for a
//!   retrace end at once.
//!
//! [`Vga::render`] draws text mode: any number of columns and rows the CRTC gives, 8- or
//! 9-dot characters (with the line-graphics ninth column), the font from plane 2 as the
//! character map select register chooses, foreground/background attributes through the
//! attribute palette and the DAC, blinking (or background intensity) and the cursor.
//!
//! The 16-colour planar graphics modes (0x0d, 0x0e, 0x10, 0x12) and the 256-colour ones
//! (0x13, chain-4 or not) are drawn too. Not modelled: the pictures of the CGA-compatible
//! graphics modes (0x04..0x06) render as a black placeholder of the mode's size (their memory
//! behaves, only the picture is not drawn); nor are pixel panning, the line compare split
//! screen, the monochrome underline and the overscan colour. The values the guest writes are untrusted: every index is masked,
//! every size is bounded, and no register setting makes the renderer read outside the planes.

/// Guest physical address of the legacy memory window.
pub const WINDOW_START: u64 = 0xa_0000;
/// Size of the legacy memory window (0xa0000..0xbffff).
pub const WINDOW_SIZE: u64 = 0x2_0000;
/// First of the VGA's I/O ports.
pub const PORTS_START: u16 = 0x3b0;
/// Number of VGA I/O ports (0x3b0..0x3df).
pub const PORTS_LEN: u16 = 0x30;
/// Bytes in each of the four planes.
pub const PLANE_SIZE: usize = 64 << 10;

/// The widest and tallest picture the renderer makes (beyond: a blank of this bound).
const MAX_WIDTH: u32 = 2048;
const MAX_HEIGHT: u32 = 2048;

/// Frames (at about 60 Hz) per cursor blink phase and per character blink phase.
const CURSOR_BLINK_FRAMES: u64 = 16;
const CHAR_BLINK_FRAMES: u64 = 32;

// Sequencer registers.
const SR_CLOCKING: usize = 1;
const SR_MAP_MASK: usize = 2;
const SR_CHAR_MAP: usize = 3;
const SR_MEMORY_MODE: usize = 4;
// Graphics controller registers.
const GR_SET_RESET: usize = 0;
const GR_ENABLE_SET_RESET: usize = 1;
const GR_COLOR_COMPARE: usize = 2;
const GR_DATA_ROTATE: usize = 3;
const GR_READ_MAP: usize = 4;
const GR_MODE: usize = 5;
const GR_MISC: usize = 6;
const GR_COLOR_DONT_CARE: usize = 7;
const GR_BIT_MASK: usize = 8;
// Attribute controller registers.
const AR_MODE: usize = 0x10;
const AR_PLANE_ENABLE: usize = 0x12;
const AR_COLOR_SELECT: usize = 0x14;
const AR_REGISTERS: usize = 0x15;
/// The attribute index's palette address source bit: clear, the screen shows nothing.
const AR_PAS: u8 = 0x20;
// CRTC registers.
const CR_HDISP_END: usize = 0x01;
const CR_OVERFLOW: usize = 0x07;
const CR_MAX_SCAN: usize = 0x09;
const CR_CURSOR_START: usize = 0x0a;
const CR_CURSOR_END: usize = 0x0b;
const CR_START_HI: usize = 0x0c;
const CR_START_LO: usize = 0x0d;
const CR_CURSOR_HI: usize = 0x0e;
const CR_CURSOR_LO: usize = 0x0f;
const CR_VRETRACE_END: usize = 0x11;
const CR_VDISP_END: usize = 0x12;
const CR_OFFSET: usize = 0x13;
const CR_UNDERLINE: usize = 0x14;
const CR_MODE: usize = 0x17;
const CR_REGISTERS: usize = 0x19;

/// The standard 16-colour text palette in the DAC at power-on (6 bits a channel), so text
/// written before any BIOS programmed the DAC is readable.
const POWER_ON_PALETTE: [[u8; 3]; 16] = [
    [0, 0, 0],
    [0, 0, 42],
    [0, 42, 0],
    [0, 42, 42],
    [42, 0, 0],
    [42, 0, 42],
    [42, 21, 0],
    [42, 42, 42],
    [21, 21, 21],
    [21, 21, 63],
    [21, 63, 21],
    [21, 63, 63],
    [63, 21, 21],
    [63, 21, 63],
    [63, 63, 21],
    [63, 63, 63],
];

/// A rendered picture: `width` x `height` pixels, rows packed, each `0x00RRGGBB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// The pixels, row after row.
    pub pixels: Vec<u32>,
}

impl Picture {
    fn blank(width: u32, height: u32) -> Picture {
        let (width, height) = (width.clamp(1, MAX_WIDTH), height.clamp(1, MAX_HEIGHT));
        Picture {
            width,
            height,
            pixels: vec![0; (width * height) as usize],
        }
    }
}

/// What an earlier drawing of text mode was made of, for [`Vga::render_update`].
#[derive(Debug, Clone, Default)]
pub struct RenderCache {
    /// The layout generation and picture size it was drawn with.
    key: Option<(u64, (u32, u32))>,
    /// Its cells (character, attribute).
    cells: Vec<u16>,
    /// The cells its cursor was drawn in (more than one when rows overlap: a CRTC offset
    /// smaller than a row shows the same addresses, the cursor's too, in several rows).
    cursor: Vec<usize>,
    /// Whether its blinking characters were in their hidden phase.
    blink_off: bool,
}

/// The geometry of the text mode the CRTC and sequencer describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextGeometry {
    /// Characters per row.
    pub columns: u32,
    /// Rows of characters.
    pub rows: u32,
    /// Dots per character cell across (8 or 9).
    pub cell_width: u32,
    /// Scan lines per character cell.
    pub cell_height: u32,
    /// Each dot is drawn twice across (the 40-column modes' halved dot clock).
    pub double_width: bool,
    /// Each scan line is drawn twice (CRTC scan doubling).
    pub double_scan: bool,
}

impl TextGeometry {
    /// Size of the picture in pixels.
    pub fn size(&self) -> (u32, u32) {
        (
            self.columns * self.cell_width * if self.double_width { 2 } else { 1 },
            self.rows * self.cell_height * if self.double_scan { 2 } else { 1 },
        )
    }
}

/// The legacy VGA's state: registers and planes. Cloning it takes a snapshot.
#[derive(Clone)]
pub struct Vga {
    misc: u8,
    feature: u8,
    subsystem_enable: u8,
    seq_index: u8,
    seq: [u8; 8],
    gr_index: u8,
    gr: [u8; 16],
    crtc_index: u8,
    crtc: [u8; 64],
    ar_index: u8,
    /// Whether the next write to 0x3c0 is data (else an index).
    ar_data_next: bool,
    ar: [u8; AR_REGISTERS],
    pel_mask: u8,
    dac: Vec<[u8; 3]>,
    dac_read_index: u8,
    dac_write_index: u8,
    /// Which colour component of an entry the next 0x3c9 access is.
    dac_component: u8,
    /// Whether the DAC was last set up for reading (0x3c7) rather than writing (0x3c8).
    dac_reading: bool,
    dac_latch: [u8; 3],
    /// The DAC keeps 8 bits a channel (a VBE mode asked for it) instead of 6.
    dac_8bit: bool,
    status_reads: u32,
    latch: [u8; 4],
    planes: Vec<u8>,
    generation: u64,
    /// Counts changes to anything but the text in planes 0 and 1 and the cursor position:
    /// equal, an earlier drawing of text mode needs only its changed rows redrawn.
    layout_generation: u64,
}

impl std::fmt::Debug for Vga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vga")
            .field("misc", &self.misc)
            .field("seq", &self.seq)
            .field("gr", &self.gr)
            .field("crtc", &&self.crtc[..CR_REGISTERS])
            .field("ar", &self.ar)
            .finish()
    }
}

impl Default for Vga {
    fn default() -> Self {
        Vga::new()
    }
}

impl Vga {
    /// A VGA as it comes out of reset: colour addressing (CRTC at 0x3d4), the 16-colour
    /// palette in the DAC, and planes of zeros. A VGA BIOS then sets a mode.
    pub fn new() -> Vga {
        let mut dac = vec![[0u8; 3]; 256];
        dac[..16].copy_from_slice(&POWER_ON_PALETTE);
        let mut ar = [0u8; AR_REGISTERS];
        for (i, entry) in ar.iter_mut().take(16).enumerate() {
            *entry = i as u8;
        }
        ar[AR_PLANE_ENABLE] = 0x0f;
        let mut seq = [0u8; 8];
        seq[SR_MAP_MASK] = 0x0f;
        let mut gr = [0u8; 16];
        gr[GR_BIT_MASK] = 0xff;
        Vga {
            misc: 0x01,
            feature: 0,
            subsystem_enable: 1,
            seq_index: 0,
            seq,
            gr_index: 0,
            gr,
            crtc_index: 0,
            crtc: [0; 64],
            ar_index: 0,
            ar_data_next: false,
            ar,
            pel_mask: 0xff,
            dac,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_component: 0,
            dac_reading: false,
            dac_latch: [0; 3],
            dac_8bit: false,
            status_reads: 0,
            latch: [0; 4],
            planes: vec![0; 4 * PLANE_SIZE],
            generation: 0,
            layout_generation: 0,
        }
    }

    /// Counts changes that may change the picture: equal between two snapshots, they render
    /// the same (but for blinking, see [`Vga::blink_phase`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks the picture as changed (the owner switched something the VGA does not see, such
    /// as the extended framebuffer mode, on or off).
    pub fn touch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.layout_generation = self.layout_generation.wrapping_add(1);
    }

    fn touch_text(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// Keeps 8 bits a channel in the DAC (`true`, a VBE mode's 8-bit DAC) or 6.
    pub fn set_dac_8bit(&mut self, on: bool) {
        self.dac_8bit = on;
    }

    /// Whether the CRTC answers at 0x3d4 (colour) rather than at 0x3b4 (monochrome).
    fn color(&self) -> bool {
        self.misc & 0x01 != 0
    }

    /// Reads the port `port` (0x3b0..0x3df; others read 0xff).
    pub fn read_port(&mut self, port: u16) -> u8 {
        match port {
            0x3b4 | 0x3d4 if self.crtc_port(port) => self.crtc_index,
            0x3b5 | 0x3d5 if self.crtc_port(port) => self.crtc[usize::from(self.crtc_index & 0x3f)],
            0x3ba | 0x3da if self.crtc_port(port) => self.input_status_1(),
            0x3c0 => self.ar_index,
            0x3c1 => self
                .ar
                .get(usize::from(self.ar_index & 0x1f))
                .copied()
                .unwrap_or(0),
            // Input status 0: no switch sense, no pending retrace interrupt.
            0x3c2 => 0x00,
            0x3c3 => self.subsystem_enable,
            0x3c4 => self.seq_index,
            0x3c5 => self.seq[usize::from(self.seq_index & 7)],
            0x3c6 => self.pel_mask,
            0x3c7 => {
                if self.dac_reading {
                    0x03
                } else {
                    0x00
                }
            }
            0x3c8 => self.dac_write_index,
            0x3c9 => {
                let entry = self.dac[usize::from(self.dac_read_index)];
                let value = entry[usize::from(self.dac_component)];
                self.next_dac_component(true);
                value
            }
            0x3ca => self.feature,
            0x3cc => self.misc,
            0x3ce => self.gr_index,
            0x3cf => self.gr[usize::from(self.gr_index & 0x0f)],
            _ => 0xff,
        }
    }

    /// Writes `value` to the port `port` (0x3b0..0x3df; others are ignored).
    pub fn write_port(&mut self, port: u16, value: u8) {
        match port {
            0x3b4 | 0x3d4 if self.crtc_port(port) => self.crtc_index = value & 0x3f,
            0x3b5 | 0x3d5 if self.crtc_port(port) => self.write_crtc(value),
            0x3ba | 0x3da if self.crtc_port(port) => self.feature = value,
            0x3c0 => {
                if self.ar_data_next {
                    let index = usize::from(self.ar_index & 0x1f);
                    if let Some(r) = self.ar.get_mut(index) {
                        *r = value;
                    }
                } else {
                    self.ar_index = value & 0x3f;
                }
                self.ar_data_next = !self.ar_data_next;
            }
            0x3c2 => self.misc = value,
            0x3c3 => self.subsystem_enable = value & 1,
            0x3c4 => self.seq_index = value & 7,
            0x3c5 => self.seq[usize::from(self.seq_index & 7)] = value,
            0x3c6 => self.pel_mask = value,
            0x3c7 => {
                self.dac_read_index = value;
                self.dac_component = 0;
                self.dac_reading = true;
            }
            0x3c8 => {
                self.dac_write_index = value;
                self.dac_component = 0;
                self.dac_reading = false;
            }
            0x3c9 => {
                let mask = if self.dac_8bit { 0xff } else { 0x3f };
                self.dac_latch[usize::from(self.dac_component)] = value & mask;
                if self.dac_component == 2 {
                    self.dac[usize::from(self.dac_write_index)] = self.dac_latch;
                }
                self.next_dac_component(false);
            }
            0x3ce => self.gr_index = value & 0x0f,
            0x3cf => self.gr[usize::from(self.gr_index & 0x0f)] = value,
            _ => return,
        }
        // Index registers change nothing on the screen; the cursor position changes text
        // only; the rest may change anything.
        let cursor_move = matches!(port, 0x3b5 | 0x3d5)
            && matches!(usize::from(self.crtc_index), CR_CURSOR_HI | CR_CURSOR_LO);
        if cursor_move {
            self.touch_text();
        } else if !matches!(port, 0x3b4 | 0x3d4 | 0x3c4 | 0x3ce | 0x3c7 | 0x3c8) {
            self.touch();
        }
    }

    /// Whether a CRTC or input status port answers in the current addressing (colour
    /// 0x3dx, monochrome 0x3bx).
    fn crtc_port(&self, port: u16) -> bool {
        (port >= 0x3d0) == self.color()
    }

    fn write_crtc(&mut self, value: u8) {
        let index = usize::from(self.crtc_index & 0x3f);
        let protected = self.crtc[CR_VRETRACE_END] & 0x80 != 0;
        if protected && index < CR_OVERFLOW {
            return;
        }
        if protected && index == CR_OVERFLOW {
            // Only the line compare bit 8 stays writable.
            self.crtc[index] = (self.crtc[index] & !0x10) | (value & 0x10);
            return;
        }
        self.crtc[index] = value;
    }

    fn next_dac_component(&mut self, reading: bool) {
        self.dac_component += 1;
        if self.dac_component == 3 {
            self.dac_component = 0;
            if reading {
                self.dac_read_index = self.dac_read_index.wrapping_add(1);
            } else {
                self.dac_write_index = self.dac_write_index.wrapping_add(1);
            }
        }
    }

    /// Input status 1: resets the attribute flip-flop; the display-enable and vertical
    /// retrace bits take turns, so a loop that waits for either state sees it soon.
    fn input_status_1(&mut self) -> u8 {
        self.ar_data_next = false;
        self.status_reads = self.status_reads.wrapping_add(1);
        let n = self.status_reads;
        let display_disabled = (n & 1) as u8;
        let retrace = ((n >> 1) & 1) as u8;
        display_disabled | (retrace << 3)
    }

    /// Where `offset` into the legacy window lands in the memory map that GR6 selects: the
    /// address seen by the planes, or `None` if that part of the window is not decoded.
    fn map(&self, offset: u64) -> Option<usize> {
        let offset = usize::try_from(offset).ok()?;
        let (start, len) = match (self.gr[GR_MISC] >> 2) & 3 {
            0 => (0x0_0000, 0x2_0000),
            1 => (0x0_0000, 0x1_0000),
            2 => (0x1_0000, 0x8000),
            _ => (0x1_8000, 0x8000),
        };
        let a = offset.checked_sub(start)?;
        (a < len).then_some(a)
    }

    /// The plane offset and the planes an access at window address `a` reaches (a mask),
    /// by the addressing mode.
    fn route(&self, a: usize, write: bool) -> (usize, u8) {
        let chain4 = self.seq[SR_MEMORY_MODE] & 0x08 != 0;
        let odd_even = if write {
            self.seq[SR_MEMORY_MODE] & 0x04 == 0
        } else {
            self.gr[GR_MODE] & 0x10 != 0
        };
        if chain4 {
            ((a & !3) & (PLANE_SIZE - 1), 1 << (a & 3))
        } else if odd_even {
            let planes = if write {
                0b0101 << (a & 1)
            } else {
                1 << ((self.gr[GR_READ_MAP] & 2) | (a & 1) as u8)
            };
            ((a & !1) & (PLANE_SIZE - 1), planes)
        } else {
            (a & (PLANE_SIZE - 1), 0)
        }
    }

    fn plane(&self, plane: usize, offset: usize) -> u8 {
        self.planes[plane * PLANE_SIZE + offset]
    }

    /// Reads a byte at `offset` into the legacy window (0..0x20000).
    pub fn read_memory(&mut self, offset: u64) -> u8 {
        let Some(a) = self.map(offset) else {
            return 0xff;
        };
        let (at, planes) = self.route(a, false);
        for p in 0..4 {
            self.latch[p] = self.plane(p, at);
        }
        if planes != 0 {
            // Chain-4 or odd/even: one plane, chosen by the address.
            return self.plane(planes.trailing_zeros() as usize, at);
        }
        if self.gr[GR_MODE] & 0x08 == 0 {
            self.latch[usize::from(self.gr[GR_READ_MAP] & 3)]
        } else {
            // Read mode 1: a bit is set where the pixel's colour matches the compare colour
            // in the planes that count.
            let compare = self.gr[GR_COLOR_COMPARE];
            let care = self.gr[GR_COLOR_DONT_CARE];
            let mut differ = 0u8;
            for p in 0..4 {
                if care & (1 << p) != 0 {
                    let want = if compare & (1 << p) != 0 { 0xff } else { 0 };
                    differ |= self.latch[p] ^ want;
                }
            }
            !differ
        }
    }

    /// Writes a byte at `offset` into the legacy window (0..0x20000).
    pub fn write_memory(&mut self, offset: u64, value: u8) {
        let Some(a) = self.map(offset) else {
            return;
        };
        let (at, route_planes) = self.route(a, true);
        let map_mask = self.seq[SR_MAP_MASK] & 0x0f;
        let planes = if route_planes == 0 {
            map_mask
        } else {
            map_mask & route_planes
        };
        if planes == 0 {
            return;
        }
        let chain4 = self.seq[SR_MEMORY_MODE] & 0x08 != 0;
        let bytes = if chain4 {
            // Chain-4 (mode 0x13): the byte goes to its plane as it is.
            [value; 4]
        } else {
            self.write_pipeline(value)
        };
        for (p, byte) in bytes.iter().enumerate() {
            if planes & (1 << p) != 0 {
                self.planes[p * PLANE_SIZE + at] = *byte;
            }
        }
        if planes & 0b1100 != 0 {
            // The font (plane 2), or plane 3.
            self.touch();
        } else {
            self.touch_text();
        }
    }

    /// The bytes write modes 0-3 make for each plane from the CPU's `value` and the latches.
    fn write_pipeline(&self, value: u8) -> [u8; 4] {
        let rotate = u32::from(self.gr[GR_DATA_ROTATE] & 7);
        let function = (self.gr[GR_DATA_ROTATE] >> 3) & 3;
        let set_reset = self.gr[GR_SET_RESET];
        let enable = self.gr[GR_ENABLE_SET_RESET];
        let rotated = value.rotate_right(rotate);
        let expand = |bit: bool| if bit { 0xffu8 } else { 0 };
        let mut out = [0u8; 4];
        let mode = self.gr[GR_MODE] & 3;
        let mut bit_mask = self.gr[GR_BIT_MASK];
        if mode == 3 {
            bit_mask &= rotated;
        }
        for (p, byte) in out.iter_mut().enumerate() {
            let latch = self.latch[p];
            let source = match mode {
                0 if enable & (1 << p) != 0 => expand(set_reset & (1 << p) != 0),
                0 => rotated,
                1 => {
                    *byte = latch;
                    continue;
                }
                2 => expand(value & (1 << p) != 0),
                _ => expand(set_reset & (1 << p) != 0),
            };
            let combined = match function {
                0 => source,
                1 => source & latch,
                2 => source | latch,
                _ => source ^ latch,
            };
            *byte = (combined & bit_mask) | (latch & !bit_mask);
        }
        out
    }

    /// The text mode's geometry, or `None` in a graphics mode.
    pub fn text_geometry(&self) -> Option<TextGeometry> {
        if self.gr[GR_MISC] & 0x01 != 0 {
            return None;
        }
        let cell_height = u32::from(self.crtc[CR_MAX_SCAN] & 0x1f) + 1;
        let double_scan = self.crtc[CR_MAX_SCAN] & 0x80 != 0;
        let mut lines = self.vertical_lines();
        if double_scan {
            lines /= 2;
        }
        Some(TextGeometry {
            columns: u32::from(self.crtc[CR_HDISP_END]) + 1,
            rows: (lines / cell_height).max(1),
            cell_width: if self.seq[SR_CLOCKING] & 0x01 != 0 {
                8
            } else {
                9
            },
            cell_height,
            double_width: self.seq[SR_CLOCKING] & 0x08 != 0,
            double_scan,
        })
    }

    /// Scan lines shown: the vertical display end (10 bits) plus one.
    fn vertical_lines(&self) -> u32 {
        let overflow = u32::from(self.crtc[CR_OVERFLOW]);
        (u32::from(self.crtc[CR_VDISP_END]) | ((overflow & 0x02) << 7) | ((overflow & 0x40) << 3))
            + 1
    }

    /// Whether the screen shows nothing: the sequencer's screen-off bit, or the attribute
    /// controller's palette in the CPU's hands (palette address source clear).
    fn blanked(&self) -> bool {
        self.seq[SR_CLOCKING] & 0x20 != 0 || self.ar_index & AR_PAS == 0
    }

    /// Which blink phase of `frame` (frames at about 60 Hz since any fixed start) the picture
    /// depends on: renderings of equal generation and equal phase are equal. 0 when nothing
    /// blinks.
    pub fn blink_phase(&self, frame: u64) -> u8 {
        if self.text_geometry().is_none() || self.blanked() {
            return 0;
        }
        let mut phase = 0;
        if self.cursor_shown() {
            phase |= ((frame / CURSOR_BLINK_FRAMES) & 1) as u8;
        }
        if self.ar[AR_MODE] & 0x08 != 0 {
            phase |= (((frame / CHAR_BLINK_FRAMES) & 1) as u8) << 1;
        }
        phase
    }

    fn cursor_shown(&self) -> bool {
        self.crtc[CR_CURSOR_START] & 0x20 == 0
    }

    /// The colour of attribute palette entry `index` (0..16): through the attribute palette,
    /// the colour select register, the pixel mask and the DAC.
    fn color_of(&self, index: u8) -> u32 {
        let index = index & self.ar[AR_PLANE_ENABLE] & 0x0f;
        let entry = self.ar[usize::from(index)] & 0x3f;
        let select = self.ar[AR_COLOR_SELECT];
        let mut dac_index = if self.ar[AR_MODE] & 0x80 != 0 {
            (entry & 0x0f) | ((select & 0x03) << 4)
        } else {
            entry
        };
        dac_index |= (select & 0x0c) << 4;
        self.dac_color(dac_index & self.pel_mask)
    }

    /// The colour of DAC entry `index`.
    fn dac_color(&self, index: u8) -> u32 {
        let [r, g, b] = self.dac[usize::from(index)];
        let scale = |v: u8| -> u32 {
            if self.dac_8bit {
                u32::from(v)
            } else {
                let v = u32::from(v & 0x3f);
                (v << 2) | (v >> 4)
            }
        };
        (scale(r) << 16) | (scale(g) << 8) | scale(b)
    }

    /// The size of the picture [`Vga::render`] makes now (never above 2048x2048).
    pub fn picture_size(&self) -> (u32, u32) {
        let (width, height) = match self.text_geometry() {
            Some(geometry) => geometry.size(),
            None => self.graphics_size(),
        };
        (width.clamp(1, MAX_WIDTH), height.clamp(1, MAX_HEIGHT))
    }

    /// A graphics mode's pixels across and distinct lines down.
    fn graphics_size(&self) -> (u32, u32) {
        let mut width = (u32::from(self.crtc[CR_HDISP_END]) + 1) * 8;
        if self.ar[AR_MODE] & 0x40 != 0 {
            // 256 colours: a pixel is two dots.
            width /= 2;
        }
        let mut repeat = u32::from(self.crtc[CR_MAX_SCAN] & 0x1f) + 1;
        if self.crtc[CR_MAX_SCAN] & 0x80 != 0 {
            repeat *= 2;
        }
        (width, self.vertical_lines() / repeat)
    }

    /// Draws what the VGA shows at `frame` (frames at about 60 Hz; it picks the blink phase).
    /// Text mode is drawn, and the 16-colour planar and 256-colour chain-4 graphics modes; the
    /// CGA-compatible modes (4-6) and anything larger than 2048x2048 are a black placeholder
    /// of their size, and so is a blanked screen.
    pub fn render(&self, frame: u64) -> Picture {
        let (width, height) = self.picture_size();
        let mut picture = Picture::blank(width, height);
        if self.blanked() {
            return picture;
        }
        match self.text_geometry() {
            Some(geometry) if geometry.size() == (width, height) => {
                self.draw_text(&geometry, frame, &mut picture);
            }
            Some(_) => {}
            None if self.graphics_size() == (width, height) => self.draw_graphics(&mut picture),
            None => {}
        }
        picture
    }

    /// The 16-colour planar modes (0x0d, 0x0e, 0x10, 0x12) and the 256-colour modes (0x13
    /// and its unchained variants): each line from the start address plus the offset, a
    /// pixel from the four planes' bits (16 colours, through the attribute palette) or from
    /// one plane's byte (256 colours, the DAC directly).
    fn draw_graphics(&self, picture: &mut Picture) {
        // The CGA-compatible modes interleave the planes' bits (shift register modes): not
        // drawn.
        if self.gr[GR_MODE] & 0x60 == 0x20 {
            return;
        }
        let start =
            (usize::from(self.crtc[CR_START_HI]) << 8) | usize::from(self.crtc[CR_START_LO]);
        let row_stride = usize::from(self.crtc[CR_OFFSET]) * 2;
        let shift = self.address_shift();
        let colors256 = self.ar[AR_MODE] & 0x40 != 0;
        let mut palette = [0u32; 16];
        for (i, c) in palette.iter_mut().enumerate() {
            *c = self.color_of(i as u8);
        }
        let width = picture.width as usize;
        for y in 0..picture.height as usize {
            let line = start + y * row_stride;
            for x in 0..width {
                let color = if colors256 {
                    let at = ((line + x / 4) << shift) & (PLANE_SIZE - 1);
                    let index = self.plane(x % 4, at) & self.pel_mask;
                    self.dac_color(index)
                } else {
                    let at = ((line + x / 8) << shift) & (PLANE_SIZE - 1);
                    let bit = 7 - (x % 8);
                    let index =
                        (0..4).fold(0u8, |acc, p| acc | (((self.plane(p, at) >> bit) & 1) << p));
                    palette[usize::from(index)]
                };
                picture.pixels[y * width + x] = color;
            }
        }
    }

    /// Memory address to plane offset: doubleword mode quadruples it, word mode doubles it.
    fn address_shift(&self) -> u32 {
        if self.crtc[CR_UNDERLINE] & 0x40 != 0 {
            2
        } else if self.crtc[CR_MODE] & 0x40 == 0 {
            1
        } else {
            0
        }
    }

    /// Brings `picture` (an earlier drawing, or any picture) up to what the VGA shows at
    /// `frame`, redrawing only the character rows that changed since the drawing `cache`
    /// describes when only text, the cursor or blinking changed. Returns the ranges of pixel
    /// rows it changed. The picture ends up as [`Vga::render`] would draw it.
    pub fn render_update(
        &self,
        frame: u64,
        picture: &mut Picture,
        cache: &mut RenderCache,
    ) -> Vec<std::ops::Range<u32>> {
        let size = self.picture_size();
        let text = self
            .text_geometry()
            .filter(|g| g.size() == size && !self.blanked());
        let Some(g) = text else {
            *picture = self.render(frame);
            *cache = RenderCache::default();
            let whole = 0..picture.height;
            return std::iter::once(whole).collect();
        };
        if (picture.width, picture.height) != size {
            *picture = Picture::blank(size.0, size.1);
            *cache = RenderCache::default();
        }
        let cells = self.text_cells(&g);
        let cursor = self.cursor_cells(&g, frame);
        let blink = self.ar[AR_MODE] & 0x08 != 0;
        let blink_off = blink && (frame / CHAR_BLINK_FRAMES) & 1 == 1;
        let key = (self.layout_generation, size);
        let columns = g.columns as usize;
        let full = cache.key != Some(key) || cache.cells.len() != cells.len();
        let mut redraw = vec![full; g.rows as usize];
        if !full {
            for (row, flag) in redraw.iter_mut().enumerate() {
                let range = row * columns..(row + 1) * columns;
                *flag = cells[range.clone()] != cache.cells[range.clone()]
                    || (blink_off != cache.blink_off
                        && cells[range].iter().any(|c| c & 0x8000 != 0));
            }
            if cursor != cache.cursor {
                for &at in cursor.iter().chain(&cache.cursor) {
                    redraw[at / columns] = true;
                }
            }
        }
        self.draw_text_rows(&g, frame, picture, &redraw);
        *cache = RenderCache {
            key: Some(key),
            cells,
            cursor,
            blink_off,
        };
        let cell_lines = g.cell_height * if g.double_scan { 2 } else { 1 };
        let mut ranges: Vec<std::ops::Range<u32>> = Vec::new();
        for (row, _) in redraw.iter().enumerate().filter(|(_, r)| **r) {
            let lines = row as u32 * cell_lines..(row as u32 + 1) * cell_lines;
            match ranges.last_mut() {
                Some(last) if last.end == lines.start => last.end = lines.end,
                _ => ranges.push(lines),
            }
        }
        ranges
    }

    /// Each cell's character and attribute (attribute in the high byte), row after row.
    fn text_cells(&self, g: &TextGeometry) -> Vec<u16> {
        let start =
            (usize::from(self.crtc[CR_START_HI]) << 8) | usize::from(self.crtc[CR_START_LO]);
        let row_stride = usize::from(self.crtc[CR_OFFSET]) * 2;
        let shift = self.address_shift();
        let mut cells = Vec::with_capacity((g.rows * g.columns) as usize);
        for row in 0..g.rows as usize {
            for column in 0..g.columns as usize {
                let at = ((start + row * row_stride + column) << shift) & (PLANE_SIZE - 1);
                cells.push(u16::from(self.plane(0, at)) | (u16::from(self.plane(1, at)) << 8));
            }
        }
        cells
    }

    /// The cells the cursor is drawn in at `frame` (none when it is hidden then or off the
    /// screen; several when overlapping rows show its address more than once), as
    /// [`Vga::draw_text_rows`] draws it.
    fn cursor_cells(&self, g: &TextGeometry, frame: u64) -> Vec<usize> {
        if !self.cursor_shown() || (frame / CURSOR_BLINK_FRAMES) & 1 != 0 {
            return Vec::new();
        }
        let start =
            (usize::from(self.crtc[CR_START_HI]) << 8) | usize::from(self.crtc[CR_START_LO]);
        let cursor =
            (usize::from(self.crtc[CR_CURSOR_HI]) << 8) | usize::from(self.crtc[CR_CURSOR_LO]);
        let row_stride = usize::from(self.crtc[CR_OFFSET]) * 2;
        let columns = g.columns as usize;
        (0..g.rows as usize)
            .flat_map(|row| (0..columns).map(move |column| (row, column)))
            .filter(|&(row, column)| (start + row * row_stride + column) & 0xffff == cursor)
            .map(|(row, column)| row * columns + column)
            .collect()
    }

    fn draw_text(&self, g: &TextGeometry, frame: u64, picture: &mut Picture) {
        self.draw_text_rows(g, frame, picture, &vec![true; g.rows as usize]);
    }

    /// Draws the character rows of text mode that `redraw` says.
    fn draw_text_rows(&self, g: &TextGeometry, frame: u64, picture: &mut Picture, redraw: &[bool]) {
        let start =
            (usize::from(self.crtc[CR_START_HI]) << 8) | usize::from(self.crtc[CR_START_LO]);
        let cursor =
            (usize::from(self.crtc[CR_CURSOR_HI]) << 8) | usize::from(self.crtc[CR_CURSOR_LO]);
        let row_stride = usize::from(self.crtc[CR_OFFSET]) * 2;
        let shift = self.address_shift();
        let cursor_on = self.cursor_shown() && (frame / CURSOR_BLINK_FRAMES) & 1 == 0;
        let cursor_first = u32::from(self.crtc[CR_CURSOR_START] & 0x1f);
        let cursor_last = u32::from(self.crtc[CR_CURSOR_END] & 0x1f).min(g.cell_height - 1);
        let blink = self.ar[AR_MODE] & 0x08 != 0;
        let blink_off = blink && (frame / CHAR_BLINK_FRAMES) & 1 == 1;
        let line_graphics = self.ar[AR_MODE] & 0x04 != 0;
        let sr3 = self.seq[SR_CHAR_MAP];
        let font_base = |select: u8| -> usize {
            usize::from(select & 3) * 0x4000 + usize::from(select >> 2) * 0x2000
        };
        // Attribute bit 3 chooses map A (set) or map B (clear).
        let map_a = font_base(((sr3 >> 2) & 3) | ((sr3 >> 3) & 4));
        let map_b = font_base((sr3 & 3) | ((sr3 >> 2) & 4));
        let mut palette = [0u32; 16];
        for (i, c) in palette.iter_mut().enumerate() {
            *c = self.color_of(i as u8);
        }
        let dot_width = if g.double_width { 2 } else { 1 };
        let line_height = if g.double_scan { 2 } else { 1 };
        let width = picture.width as usize;
        for row in (0..g.rows as usize).filter(|r| redraw.get(*r) == Some(&true)) {
            for column in 0..g.columns as usize {
                let address = start + row * row_stride + column;
                let at = (address << shift) & (PLANE_SIZE - 1);
                let ch = self.plane(0, at);
                let attr = self.plane(1, at);
                let fg = palette[usize::from(attr & 0x0f)];
                let bg_index = if blink { (attr >> 4) & 7 } else { attr >> 4 };
                let bg = palette[usize::from(bg_index)];
                let hidden = blink_off && attr & 0x80 != 0;
                let font = if attr & 0x08 != 0 { map_a } else { map_b };
                let glyph = font + usize::from(ch) * 32;
                let is_cursor = cursor_on && (address & 0xffff) == cursor;
                for line in 0..g.cell_height {
                    let mut bits =
                        u16::from(self.plane(2, (glyph + line as usize) & (PLANE_SIZE - 1))) << 1;
                    if g.cell_width == 9 && line_graphics && (0xc0..=0xdf).contains(&ch) {
                        bits |= (bits >> 1) & 1;
                    }
                    if hidden {
                        bits = 0;
                    }
                    if is_cursor && (cursor_first..=cursor_last).contains(&line) {
                        bits = 0x1ff;
                    }
                    let y0 = (row * g.cell_height as usize + line as usize) * line_height;
                    for dot in 0..g.cell_width as usize {
                        // Bit 8 is the glyph's leftmost dot; bit 0 the ninth column.
                        let on = if dot < 8 {
                            bits & (0x100 >> dot) != 0
                        } else {
                            bits & 1 != 0
                        };
                        let color = if on { fg } else { bg };
                        let x0 = (column * g.cell_width as usize + dot) * dot_width;
                        for dy in 0..line_height {
                            let row_start = (y0 + dy) * width;
                            for dx in 0..dot_width {
                                picture.pixels[row_start + x0 + dx] = color;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Puts the whole of `plane` (0..4) as bytes, for tests and diagnostics.
    pub fn plane_bytes(&self, plane: usize) -> &[u8] {
        let plane = plane & 3;
        &self.planes[plane * PLANE_SIZE..(plane + 1) * PLANE_SIZE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`fuzz/regressions/vga/cursor-in-overlapping-rows`): with a CRTC
    /// offset of 0 every row shows the same addresses, the cursor's included, so the cursor is
    /// drawn in every row; when it blinked off, the row-by-row redraw cleared it in the first
    /// row only and the picture differed from a whole drawing.
    #[test]
    fn the_cursor_blinks_off_in_every_row_that_shows_it() {
        let mut vga = Vga::new();
        vga.write_port(0x3c0, 0x29);
        vga.write_port(0x3d4, 0xd2);
        vga.write_port(0x3c2, 0x2c);
        vga.write_memory(1, 0xb4);
        vga.write_port(0x3b5, 0xd1);
        let mut cache = RenderCache::default();
        let mut picture = vga.render(0x95);
        vga.render_update(0x95, &mut picture, &mut cache);
        for frame in [0x95 * 2, 0x95 * 3, 0x95 * 4] {
            vga.render_update(frame, &mut picture, &mut cache);
            assert!(picture == vga.render(frame), "frame {frame}");
        }
    }

    /// The registers of mode 3 (80x25 colour text, 9x16 cells), as a VGA BIOS sets them.
    const MODE3_SEQ: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
    const MODE3_CRTC: [u8; 25] = [
        0x5f, 0x4f, 0x50, 0x82, 0x55, 0x81, 0xbf, 0x1f, 0x00, 0x4f, 0x0d, 0x0e, 0x00, 0x00, 0x00,
        0x00, 0x9c, 0x8e, 0x8f, 0x28, 0x1f, 0x96, 0xb9, 0xa3, 0xff,
    ];
    const MODE3_GR: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0e, 0x00, 0xff];
    const MODE3_AR: [u8; 21] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0x3e,
        0x3f, 0x0c, 0x00, 0x0f, 0x08, 0x00,
    ];

    /// The colour of EGA palette entry `i` (bits rgbRGB) as the BIOS loads it into the DAC.
    fn ega(i: u8) -> [u8; 3] {
        let channel =
            |primary: u8, secondary: u8| 42 * ((i >> primary) & 1) + 21 * ((i >> secondary) & 1);
        [channel(2, 5), channel(1, 4), channel(0, 3)]
    }

    fn rgb8(c: [u8; 3]) -> u32 {
        let s = |v: u8| u32::from((v << 2) | (v >> 4));
        (s(c[0]) << 16) | (s(c[1]) << 8) | s(c[2])
    }

    /// A made-up 8x16 font: every glyph different, most rows neither empty nor full.
    fn glyph_row(ch: u8, line: usize) -> u8 {
        (ch.wrapping_mul(37) ^ (line as u8).wrapping_mul(91)).rotate_left(line as u32 % 8)
    }

    /// Sets mode 3 through the ports, as SeaBIOS's stdvga code does.
    fn set_mode3(v: &mut Vga) {
        v.write_port(0x3c2, 0x67);
        for (i, value) in MODE3_SEQ.iter().enumerate() {
            v.write_port(0x3c4, i as u8);
            v.write_port(0x3c5, *value);
        }
        // Unprotect CRTC 0-7 first.
        v.write_port(0x3d4, 0x11);
        v.write_port(0x3d5, 0x00);
        for (i, value) in MODE3_CRTC.iter().enumerate() {
            v.write_port(0x3d4, i as u8);
            v.write_port(0x3d5, *value);
        }
        for (i, value) in MODE3_GR.iter().enumerate() {
            v.write_port(0x3ce, i as u8);
            v.write_port(0x3cf, *value);
        }
        v.read_port(0x3da);
        for (i, value) in MODE3_AR.iter().enumerate() {
            v.write_port(0x3c0, i as u8);
            v.write_port(0x3c0, *value);
        }
        v.write_port(0x3c8, 0);
        for i in 0..64u8 {
            for c in ega(i) {
                v.write_port(0x3c9, c);
            }
        }
        // Palette address source on: the screen shows.
        v.write_port(0x3c0, 0x20);
    }

    /// Loads the made-up font into plane 2, the way SeaBIOS's `stdvga_load_font` does:
    /// sequential addressing, map mask plane 2, window at 0xa0000, 32 bytes per glyph.
    fn load_font(v: &mut Vga) {
        let seq = |v: &mut Vga, i: u8, value: u8| {
            v.write_port(0x3c4, i);
            v.write_port(0x3c5, value);
        };
        let gr = |v: &mut Vga, i: u8, value: u8| {
            v.write_port(0x3ce, i);
            v.write_port(0x3cf, value);
        };
        seq(v, 0, 0x01);
        seq(v, 2, 0x04);
        seq(v, 4, 0x07);
        seq(v, 0, 0x03);
        gr(v, 4, 0x02);
        gr(v, 5, 0x00);
        gr(v, 6, 0x04);
        for ch in 0..=255u8 {
            for line in 0..16 {
                v.write_memory(u64::from(ch) * 32 + line as u64, glyph_row(ch, line));
            }
        }
        seq(v, 0, 0x01);
        seq(v, 2, 0x03);
        seq(v, 4, 0x03);
        seq(v, 0, 0x03);
        gr(v, 6, 0x0e);
        gr(v, 4, 0x00);
        gr(v, 5, 0x10);
    }

    fn text_vga() -> Vga {
        let mut v = Vga::new();
        set_mode3(&mut v);
        load_font(&mut v);
        v
    }

    /// Writes `text` with `attr` at (`row`, `column`) through the text buffer at 0xb8000.
    fn put(v: &mut Vga, row: usize, column: usize, text: &[u8], attr: u8) {
        for (i, ch) in text.iter().enumerate() {
            let at = 0x1_8000 + ((row * 80 + column + i) * 2) as u64;
            v.write_memory(at, *ch);
            v.write_memory(at + 1, attr);
        }
    }

    fn set_crtc(v: &mut Vga, index: u8, value: u8) {
        v.write_port(0x3d4, index);
        v.write_port(0x3d5, value);
    }

    #[test]
    fn indexed_registers_read_back_and_the_crtc_follows_misc() {
        let mut v = Vga::new();
        v.write_port(0x3c4, 0x02);
        v.write_port(0x3c5, 0x0a);
        assert_eq!(v.read_port(0x3c4), 0x02);
        assert_eq!(v.read_port(0x3c5), 0x0a);
        // The sequencer index has three bits.
        v.write_port(0x3c4, 0xfa);
        assert_eq!(v.read_port(0x3c4), 0x02);
        v.write_port(0x3ce, 0x08);
        v.write_port(0x3cf, 0x5a);
        assert_eq!(v.read_port(0x3cf), 0x5a);
        // Colour addressing: the CRTC at 0x3d4, nothing at 0x3b4.
        set_crtc(&mut v, 0x0e, 0x12);
        assert_eq!(v.read_port(0x3d5), 0x12);
        assert_eq!(v.read_port(0x3b5), 0xff);
        // Monochrome: the other way round, the registers unchanged.
        v.write_port(0x3c2, 0x66);
        assert_eq!(v.read_port(0x3cc), 0x66);
        assert_eq!(v.read_port(0x3d5), 0xff);
        v.write_port(0x3b4, 0x0e);
        assert_eq!(v.read_port(0x3b5), 0x12);
        v.write_port(0x3d5, 0x99);
        assert_eq!(v.read_port(0x3b5), 0x12);
    }

    #[test]
    fn crtc_protection_keeps_registers_0_to_7() {
        let mut v = Vga::new();
        set_crtc(&mut v, 0x01, 0x4f);
        set_crtc(&mut v, 0x07, 0x00);
        set_crtc(&mut v, 0x11, 0x80);
        set_crtc(&mut v, 0x01, 0x27);
        set_crtc(&mut v, 0x07, 0xff);
        v.write_port(0x3d4, 0x01);
        assert_eq!(v.read_port(0x3d5), 0x4f);
        v.write_port(0x3d4, 0x07);
        assert_eq!(v.read_port(0x3d5), 0x10, "only the line compare bit");
        set_crtc(&mut v, 0x11, 0x00);
        set_crtc(&mut v, 0x01, 0x27);
        v.write_port(0x3d4, 0x01);
        assert_eq!(v.read_port(0x3d5), 0x27);
    }

    #[test]
    fn attribute_flip_flop_resets_on_input_status_and_retrace_toggles() {
        let mut v = Vga::new();
        v.read_port(0x3da);
        v.write_port(0x3c0, 0x10);
        v.write_port(0x3c0, 0x0c);
        assert_eq!(v.read_port(0x3c1), 0x0c);
        // Half-way through (index written), a read of input status 1 resets the flip-flop:
        // the next write is an index again.
        v.write_port(0x3c0, 0x12);
        v.read_port(0x3da);
        v.write_port(0x3c0, 0x34);
        assert_eq!(v.read_port(0x3c0), 0x34, "PAS set, index 0x14");
        v.write_port(0x3c0, 0x05);
        assert_eq!(v.read_port(0x3c1), 0x05);
        // A loop waiting for the retrace to start and then to end finishes soon.
        let mut seen = [false; 2];
        for _ in 0..4 {
            seen[usize::from(v.read_port(0x3da) & 0x08 != 0)] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn dac_reads_and_writes_three_components_per_entry() {
        let mut v = Vga::new();
        v.write_port(0x3c8, 0x10);
        for c in [1, 2, 3, 4, 5, 0xff] {
            v.write_port(0x3c9, c);
        }
        assert_eq!(v.read_port(0x3c8), 0x12, "two entries written");
        assert_eq!(v.read_port(0x3c7), 0x00, "write mode");
        v.write_port(0x3c7, 0x10);
        assert_eq!(v.read_port(0x3c7), 0x03, "read mode");
        let read: Vec<u8> = (0..6).map(|_| v.read_port(0x3c9)).collect();
        assert_eq!(read, vec![1, 2, 3, 4, 5, 0x3f], "six bits a channel");
        // Power-on palette: entry 1 is blue.
        v.write_port(0x3c7, 1);
        assert_eq!([0, 0, 0].map(|_: u8| v.read_port(0x3c9)), [0, 0, 42]);
    }

    #[test]
    fn font_goes_to_plane_2_and_text_to_planes_0_and_1() {
        let mut v = text_vga();
        for ch in [0u8, b'A', 0xdb, 0xff] {
            for line in 0..16 {
                assert_eq!(
                    v.plane_bytes(2)[usize::from(ch) * 32 + line],
                    glyph_row(ch, line)
                );
            }
        }
        // The font load left planes 0 and 1 alone.
        assert!(v.plane_bytes(0).iter().all(|b| *b == 0));
        put(&mut v, 1, 3, b"Hi", 0x1f);
        let at = (80 + 3) * 2;
        assert_eq!(&v.plane_bytes(0)[at..at + 3], &[b'H', 0, b'i']);
        assert_eq!(&v.plane_bytes(1)[at..at + 3], &[0x1f, 0, 0x1f]);
        // The font survives text writes, and odd/even reads give the text back.
        assert_eq!(v.plane_bytes(2)[usize::from(b'H') * 32], glyph_row(b'H', 0));
        assert_eq!(v.read_memory(0x1_8000 + at as u64), b'H');
        assert_eq!(v.read_memory(0x1_8000 + at as u64 + 1), 0x1f);
        // With GR6's map at 0xb8000, 0xa0000 is not decoded.
        assert_eq!(v.read_memory(0), 0xff);
    }

    #[test]
    fn write_modes_and_read_mode_1() {
        let mut v = Vga::new();
        // Planar, window 0xa0000 64 KiB, all planes.
        v.write_port(0x3c4, 4);
        v.write_port(0x3c5, 0x06);
        v.write_port(0x3ce, 6);
        v.write_port(0x3cf, 0x05);
        // Mode 0 with set/reset on planes 0 and 2 (colour 0b0101) and a bit mask.
        for (i, value) in [(0, 0x05), (1, 0x0f), (8, 0xf0)] {
            v.write_port(0x3ce, i);
            v.write_port(0x3cf, value);
        }
        v.write_memory(0x10, 0x00);
        let planes: Vec<u8> = (0..4).map(|p| v.plane_bytes(p)[0x10]).collect();
        assert_eq!(planes, vec![0xf0, 0x00, 0xf0, 0x00]);
        // Mode 1 copies the latches: read 0x10, write 0x20.
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x01);
        v.read_memory(0x10);
        v.write_memory(0x20, 0x55);
        let planes: Vec<u8> = (0..4).map(|p| v.plane_bytes(p)[0x20]).collect();
        assert_eq!(planes, vec![0xf0, 0x00, 0xf0, 0x00]);
        // Mode 2: the CPU byte's low bits are the colour, through the bit mask (0x0f now).
        v.write_port(0x3ce, 8);
        v.write_port(0x3cf, 0x0f);
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x02);
        v.read_memory(0x20);
        v.write_memory(0x20, 0x0a);
        let planes: Vec<u8> = (0..4).map(|p| v.plane_bytes(p)[0x20]).collect();
        assert_eq!(planes, vec![0xf0, 0x0f, 0xf0, 0x0f]);
        // Mode 3: set/reset colour, bit mask ANDed with the rotated byte; XOR with latches.
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x03);
        v.write_port(0x3ce, 3);
        v.write_port(0x3cf, 0x18);
        v.write_port(0x3ce, 8);
        v.write_port(0x3cf, 0xff);
        v.read_memory(0x20);
        v.write_memory(0x20, 0x81);
        let planes: Vec<u8> = (0..4).map(|p| v.plane_bytes(p)[0x20]).collect();
        assert_eq!(planes, vec![0xf0 ^ 0x81, 0x0f, 0xf0 ^ 0x81, 0x0f]);
        // Read mode 1: where the colour is 0b0101 in all planes that count.
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x08);
        v.write_port(0x3ce, 2);
        v.write_port(0x3cf, 0x05);
        v.write_port(0x3ce, 7);
        v.write_port(0x3cf, 0x0f);
        assert_eq!(v.read_memory(0x10), 0xf0);
        // The map mask keeps planes out of a write.
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x00);
        v.write_port(0x3ce, 1);
        v.write_port(0x3cf, 0x00);
        v.write_port(0x3ce, 3);
        v.write_port(0x3cf, 0x00);
        v.write_port(0x3c4, 2);
        v.write_port(0x3c5, 0x08);
        v.write_memory(0x30, 0x77);
        let planes: Vec<u8> = (0..4).map(|p| v.plane_bytes(p)[0x30]).collect();
        assert_eq!(planes, vec![0, 0, 0, 0x77]);
        // Chain-4: the low address bits choose the plane.
        v.write_port(0x3c4, 4);
        v.write_port(0x3c5, 0x0e);
        v.write_port(0x3c4, 2);
        v.write_port(0x3c5, 0x0f);
        v.write_memory(0x41, 0x99);
        assert_eq!(v.plane_bytes(1)[0x40], 0x99);
        assert_eq!(v.read_memory(0x41), 0x99);
    }

    /// What the screen of `text` (rows of (bytes, attribute)) should look like, worked out
    /// from the font and the palette directly (no planes, no registers).
    fn expected_screen(
        text: &[(usize, usize, &[u8], u8)],
        cursor: Option<(usize, usize)>,
    ) -> Vec<u32> {
        let mut cells = vec![(b' ', 0x07u8); 80 * 25];
        for (row, column, bytes, attr) in text {
            for (i, b) in bytes.iter().enumerate() {
                cells[row * 80 + column + i] = (*b, *attr);
            }
        }
        // The AR palette of mode 3 maps index 6 to DAC 0x14 and 8..15 to 0x38..0x3f.
        let color = |i: u8| rgb8(ega(MODE3_AR[usize::from(i)]));
        let mut pixels = vec![0u32; 720 * 400];
        for (n, (ch, attr)) in cells.iter().enumerate() {
            let (row, column) = (n / 80, n % 80);
            for line in 0..16 {
                let mut bits = glyph_row(*ch, line);
                let cursor_here = cursor == Some((row, column)) && (13..=14).contains(&line);
                for dot in 0..9 {
                    let on = if dot < 8 {
                        bits & 0x80 != 0
                    } else {
                        (0xc0..=0xdf).contains(ch) && glyph_row(*ch, line) & 1 != 0
                    };
                    bits <<= 1;
                    let c = if on || cursor_here {
                        color(attr & 0x0f)
                    } else {
                        color((attr >> 4) & 7)
                    };
                    pixels[(row * 16 + line) * 720 + column * 9 + dot] = c;
                }
            }
        }
        pixels
    }

    #[test]
    fn an_80x25_screen_renders_pixel_for_pixel() {
        let mut v = text_vga();
        for i in 0..80 * 25 {
            v.write_memory(0x1_8000 + i * 2, b' ');
            v.write_memory(0x1_8000 + i * 2 + 1, 0x07);
        }
        let text: &[(usize, usize, &[u8], u8)] = &[
            (0, 0, b"Memtest86+ v6.10", 0x1f),
            (0, 30, b"\xc4\xc4\xc5\xdb\xdf line graphics", 0x4e),
            (5, 10, b"every colour", 0x6a),
            (24, 60, b"bottom right corner!", 0x71),
        ];
        for (row, column, bytes, attr) in text {
            put(&mut v, *row, *column, bytes, *attr);
        }
        // The cursor (lines 13-14 of mode 3) at row 3, column 7.
        set_crtc(&mut v, 0x0e, 0);
        set_crtc(&mut v, 0x0f, 3 * 80 + 7);
        assert_eq!(
            v.text_geometry().unwrap(),
            TextGeometry {
                columns: 80,
                rows: 25,
                cell_width: 9,
                cell_height: 16,
                double_width: false,
                double_scan: false
            }
        );
        let shown = v.render(0);
        assert_eq!((shown.width, shown.height), (720, 400));
        let want = expected_screen(text, Some((3, 7)));
        let differ = shown
            .pixels
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .map(|i| (i % 720, i / 720));
        assert_eq!(differ, None, "first differing pixel (x, y)");
        // The cursor blinks: half a second later it is gone.
        let later = v.render(CURSOR_BLINK_FRAMES);
        assert_eq!(later.pixels, expected_screen(text, None));
        assert_ne!(v.blink_phase(0), v.blink_phase(CURSOR_BLINK_FRAMES));
    }

    #[test]
    fn a_character_matches_its_glyph_and_blink_intensity_and_font_maps_apply() {
        let mut v = text_vga();
        put(&mut v, 0, 0, b"A", 0x9e);
        // The cursor (at 0, 0) off.
        set_crtc(&mut v, 0x0a, 0x20);
        // Blink on (mode 3): background 0x9 is blue with blink; in the off phase the glyph
        // is gone.
        let on = v.render(0);
        let off = v.render(CHAR_BLINK_FRAMES);
        let yellow = rgb8(ega(0x3e));
        let blue = rgb8(ega(0x01));
        for line in 0..16 {
            for dot in 0..8 {
                let lit = glyph_row(b'A', line) & (0x80 >> dot) != 0;
                let px = on.pixels[line * 720 + dot];
                assert_eq!(px, if lit { yellow } else { blue }, "line {line} dot {dot}");
                assert_eq!(off.pixels[line * 720 + dot], blue);
            }
        }
        // Blink off: bit 7 is background intensity (0x9: light blue), no blinking.
        v.read_port(0x3da);
        v.write_port(0x3c0, 0x30);
        v.write_port(0x3c0, 0x04);
        assert_eq!(v.render(CHAR_BLINK_FRAMES).pixels[0], {
            if glyph_row(b'A', 0) & 0x80 != 0 {
                yellow
            } else {
                rgb8(ega(0x39))
            }
        });
        // Character map A at 16 KiB: attribute bit 3 picks it, so 'A' now draws from there.
        v.write_port(0x3c4, 3);
        v.write_port(0x3c5, 0x04);
        let blank = v.render(0);
        assert!(
            (0..16).all(|line| (0..8).all(|dot| blank.pixels[line * 720 + dot] == rgb8(ega(0x39)))),
            "map A is empty"
        );
    }

    #[test]
    fn geometry_follows_the_crtc_and_blanking_hides_all() {
        let mut v = text_vga();
        // 8-dot characters and 8-line cells with the same 400 lines: 80x50.
        v.write_port(0x3c4, 1);
        v.write_port(0x3c5, 0x01);
        set_crtc(&mut v, 0x09, 0x47);
        let g = v.text_geometry().unwrap();
        assert_eq!(
            (g.columns, g.rows, g.cell_width, g.cell_height),
            (80, 50, 8, 8)
        );
        assert_eq!(v.render(0).width, 640);
        // 40 columns with the halved dot clock: still 640 wide.
        set_crtc(&mut v, 0x11, 0x00);
        set_crtc(&mut v, 0x01, 39);
        v.write_port(0x3c5, 0x09);
        assert_eq!(v.render(0).width, 640);
        // The screen off draws black.
        v.write_port(0x3c5, 0x29);
        put(&mut v, 0, 0, b"\xdb\xdb", 0x7f);
        assert!(v.render(0).pixels.iter().all(|p| *p == 0));
        // A CGA-compatible graphics mode (shift register interleave) is a black placeholder
        // of its size: 320 pixels, 400 lines of 8-line rows.
        v.write_port(0x3c5, 0x01);
        v.write_port(0x3ce, 6);
        v.write_port(0x3cf, 0x05);
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x30);
        let g = v.render(0);
        assert_eq!((g.width, g.height), (320, 50));
        assert!(g.pixels.iter().all(|p| *p == 0));
    }

    /// Sets a mode from its register table (misc, sequencer, CRTC, graphics, attribute).
    fn set_mode(v: &mut Vga, misc: u8, seq: &[u8], crtc: &[u8], gr: &[u8], ar: &[u8]) {
        v.write_port(0x3c2, misc);
        for (i, value) in seq.iter().enumerate() {
            v.write_port(0x3c4, i as u8);
            v.write_port(0x3c5, *value);
        }
        set_crtc(v, 0x11, 0);
        for (i, value) in crtc.iter().enumerate() {
            set_crtc(v, i as u8, *value);
        }
        for (i, value) in gr.iter().enumerate() {
            v.write_port(0x3ce, i as u8);
            v.write_port(0x3cf, *value);
        }
        v.read_port(0x3da);
        for (i, value) in ar.iter().enumerate() {
            v.write_port(0x3c0, i as u8);
            v.write_port(0x3c0, *value);
        }
        v.write_port(0x3c0, 0x20);
    }

    #[test]
    fn mode_13h_draws_bytes_through_the_dac() {
        let mut v = Vga::new();
        let ar: Vec<u8> = (0..16).chain([0x41, 0x00, 0x0f, 0x00, 0x00]).collect();
        set_mode(
            &mut v,
            0x63,
            &[0x03, 0x01, 0x0f, 0x00, 0x0e],
            &[
                0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0xbf, 0x1f, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x9c, 0x0e, 0x8f, 0x28, 0x40, 0x96, 0xb9, 0xa3, 0xff,
            ],
            &[0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0f, 0xff],
            &ar,
        );
        v.write_port(0x3c8, 200);
        for c in [63, 32, 0] {
            v.write_port(0x3c9, c);
        }
        // A pixel at (x 13, y 7) and one at the last place, written at 0xa0000 + y*320 + x.
        v.write_memory(7 * 320 + 13, 200);
        v.write_memory(199 * 320 + 319, 1);
        let p = v.render(0);
        assert_eq!((p.width, p.height), (320, 200));
        assert_eq!(p.pixels[7 * 320 + 13], 0xff_82_00);
        assert_eq!(p.pixels[199 * 320 + 319], rgb8(POWER_ON_PALETTE[1]));
        let lit = p.pixels.iter().filter(|px| **px != 0).count();
        assert_eq!(lit, 2);
    }

    #[test]
    fn mode_12h_draws_four_planes_through_the_attribute_palette() {
        let mut v = Vga::new();
        set_mode(
            &mut v,
            0xe3,
            &[0x03, 0x01, 0x0f, 0x00, 0x06],
            &[
                0x5f, 0x4f, 0x50, 0x82, 0x54, 0x80, 0x0b, 0x3e, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xea, 0x8c, 0xdf, 0x28, 0x00, 0xe7, 0x04, 0xe3, 0xff,
            ],
            &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x0f, 0xff],
            &MODE3_AR[..16]
                .iter()
                .copied()
                .chain([0x01, 0x00, 0x0f, 0x00, 0x00])
                .collect::<Vec<u8>>(),
        );
        v.write_port(0x3c8, 0);
        for i in 0..64u8 {
            for c in ega(i) {
                v.write_port(0x3c9, c);
            }
        }
        // Write mode 2, colour 14 (yellow), at pixel (x 10, y 3): bit mask 0x20.
        v.write_port(0x3ce, 5);
        v.write_port(0x3cf, 0x02);
        v.write_port(0x3ce, 8);
        v.write_port(0x3cf, 0x80 >> (10 % 8));
        let at = 3 * 80 + 10 / 8;
        v.read_memory(at);
        v.write_memory(at, 14);
        let p = v.render(0);
        assert_eq!((p.width, p.height), (640, 480));
        assert_eq!(p.pixels[3 * 640 + 10], rgb8(ega(MODE3_AR[14])));
        assert_eq!(p.pixels.iter().filter(|px| **px != 0).count(), 1);
    }

    #[test]
    fn updates_redraw_only_the_rows_that_changed_and_match_a_full_drawing() {
        let mut v = text_vga();
        let mut picture = Picture::blank(1, 1);
        let mut cache = RenderCache::default();
        // The first drawing is whole.
        assert_eq!(v.render_update(0, &mut picture, &mut cache), vec![0..400]);
        assert_eq!(picture, v.render(0));
        // Nothing changed: nothing redrawn.
        assert!(v.render_update(1, &mut picture, &mut cache).is_empty());
        // Text on row 3, and the cursor moved from row 0 to row 10: those rows only.
        put(&mut v, 3, 5, b"text", 0x1e);
        set_crtc(&mut v, 0x0e, 0x03);
        set_crtc(&mut v, 0x0f, 0x20);
        assert_eq!(
            v.render_update(2, &mut picture, &mut cache),
            vec![0..16, 48..64, 160..176]
        );
        assert_eq!(picture, v.render(2));
        // The cursor blinks off: its row.
        assert_eq!(
            v.render_update(CURSOR_BLINK_FRAMES, &mut picture, &mut cache),
            vec![160..176]
        );
        assert_eq!(picture, v.render(CURSOR_BLINK_FRAMES));
        // Blinking characters change phase: the rows that have them.
        put(&mut v, 7, 0, b"!", 0x8f);
        v.render_update(CURSOR_BLINK_FRAMES, &mut picture, &mut cache);
        assert_eq!(
            v.render_update(
                CHAR_BLINK_FRAMES + CURSOR_BLINK_FRAMES,
                &mut picture,
                &mut cache
            ),
            vec![112..128]
        );
        assert_eq!(picture, v.render(CHAR_BLINK_FRAMES + CURSOR_BLINK_FRAMES));
        // A palette change redraws everything; so does the font.
        v.write_port(0x3c8, 1);
        for c in [10, 20, 30] {
            v.write_port(0x3c9, c);
        }
        assert_eq!(v.render_update(0, &mut picture, &mut cache), vec![0..400]);
        assert_eq!(picture, v.render(0));
        // A graphics mode is drawn whole.
        v.write_port(0x3ce, 6);
        v.write_port(0x3cf, 0x05);
        let (w, h) = v.picture_size();
        assert_eq!(v.render_update(0, &mut picture, &mut cache), vec![0..h]);
        assert_eq!((picture.width, picture.height), (w, h));
    }

    #[test]
    fn random_text_updates_match_full_drawings() {
        let mut rng = Xorshift(0x1234_5678_9abc_def1);
        let mut v = text_vga();
        let mut picture = Picture::blank(1, 1);
        let mut cache = RenderCache::default();
        for round in 0..300u64 {
            for _ in 0..(rng.next() % 50) {
                let r = rng.next();
                match r % 10 {
                    0 => set_crtc(&mut v, 0x0f, (r >> 8) as u8),
                    1 => set_crtc(&mut v, 0x0e, ((r >> 8) & 7) as u8),
                    _ => v.write_memory(0x1_8000 + (r >> 16) % 4000, (r >> 8) as u8),
                }
            }
            // Now and then a register the text does not depend on, or one it does.
            match rng.next() % 8 {
                0 => set_crtc(&mut v, 0x0a, (rng.next() % 2) as u8 * 0x20),
                1 => {
                    v.write_port(0x3c8, (rng.next() % 16) as u8);
                    for _ in 0..3 {
                        v.write_port(0x3c9, rng.next() as u8);
                    }
                }
                2 => {
                    v.read_port(0x3da);
                    v.write_port(0x3c0, 0x30);
                    v.write_port(
                        0x3c0,
                        if rng.next().is_multiple_of(2) {
                            0x0c
                        } else {
                            0x04
                        },
                    );
                }
                _ => {}
            }
            let frame = round * 7;
            // As the backend does: a snapshot drawn into the same picture.
            let snapshot = v.clone();
            snapshot.render_update(frame, &mut picture, &mut cache);
            assert_eq!(picture, snapshot.render(frame), "round {round}");
        }
    }

    /// A small deterministic generator (xorshift), so the test is repeatable.
    struct Xorshift(u64);
    impl Xorshift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_writes_everywhere_never_panic_and_render_within_bounds() {
        let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
        let mut v = text_vga();
        for round in 0..200_000u32 {
            let r = rng.next();
            let value = (r >> 32) as u8;
            match r % 4 {
                0 | 1 => {
                    let port = PORTS_START + ((r >> 8) % u64::from(PORTS_LEN)) as u16;
                    if r & 0x80 != 0 {
                        v.read_port(port);
                    } else {
                        v.write_port(port, value);
                    }
                }
                2 => v.write_memory((r >> 8) % (WINDOW_SIZE + 16), value),
                _ => {
                    v.read_memory((r >> 8) % (WINDOW_SIZE + 16));
                }
            }
            if round % 5000 == 0 {
                let p = v.render(u64::from(round));
                assert_eq!(p.pixels.len(), (p.width * p.height) as usize);
                assert!(p.width <= MAX_WIDTH && p.height <= MAX_HEIGHT);
            }
        }
        // Every extreme of the geometry registers.
        for value in [0u8, 0xff] {
            for index in 0..CR_REGISTERS as u8 {
                set_crtc(&mut v, 0x11, 0);
                set_crtc(&mut v, index, value);
            }
            v.write_port(0x3ce, 6);
            v.write_port(0x3cf, 0);
            let p = v.render(0);
            assert_eq!(p.pixels.len(), (p.width * p.height) as usize);
        }
    }
}
