//! The ARM PrimeCell UART (PL011, ARM DDI 0183) as Linux's `amba-pl011` driver and its
//! `earlycon=pl011` use it: the console UART of an aarch64 `virt` board.
//!
//! Registered on the MMIO bus with a length of [`PL011_MMIO_SIZE`] (4 KiB). Registers are
//! 32-bit words at word-aligned offsets; accesses of 1 to 8 bytes at a register's offset
//! read its low bytes (zero above 32 bits) and write its low bits (a byte write to a 16-bit
//! register clears its high byte, as an APB write without byte strobes does). Accesses at
//! other offsets, of no bytes, or to unknown registers read zero and are ignored.
//!
//! The model:
//! * **Transmit** never waits: a write to UARTDR goes straight to the output (or, in loopback
//!   mode, `UARTCR.LBE`, into the receive FIFO), so UARTFR always says TXFE and never TXFF
//!   or BUSY. The transmitter works whatever `UARTCR` says: a kernel's earlycon writes to a
//!   UART nobody enabled when there is no firmware before it.
//! * **Receive**: host bytes come in through [`Pl011::enqueue_input`] (as for
//!   [`crate::serial::Serial`], through [`crate::ConsoleInput`]) into a 16-entry FIFO, or a
//!   1-byte holding register while `UARTLCR_H.FEN` is clear; the FIFO is emptied when FEN
//!   changes. Input that does not fit is not taken (the caller keeps it), so the host never
//!   overruns the FIFO; loopback can, which sets the overrun error.
//! * **Interrupts** follow the TRM's conditions with no notion of time: RX is raised when a
//!   received byte brings the FIFO to its trigger level (any byte with the FIFO disabled) and
//!   lowered when reads bring it below; RT (receive timeout) whenever the FIFO holds data,
//!   lowered when it empties; TX whenever the (always empty) transmit FIFO is at or below its
//!   level, i.e. from reset and after every write, until the guest clears it through
//!   UARTICR. The modem lines are constant (CTS, DSR and DCD asserted, RI not), so their
//!   interrupts never rise. The one output line ([`LevelIrq`]) is held at
//!   `UARTRIS & UARTIMSC != 0`.
//! * **Identity**: the PrimeCell registers at 0xFE0..0xFFC read periphid `0x00041011` (part
//!   0x011, designer ARM, revision 0: Linux sizes the FIFO at 16 for revisions below 3) and
//!   cellid `0xB105F00D`, which Linux's AMBA bus matches the driver against.
//! * No DMA: UARTDMACR is stored and read back, nothing else.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use crate::LevelIrq;
use crate::bus::BusDevice;

/// Bytes of MMIO the UART occupies.
pub const PL011_MMIO_SIZE: u64 = 0x1000;
/// The PrimeCell peripheral ID the UART reports (UARTPeriphID0..3).
pub const PL011_PERIPH_ID: u32 = 0x0004_1011;
/// The PrimeCell cell ID every PrimeCell reports (UARTPCellID0..3).
pub const PRIMECELL_ID: u32 = 0xb105_f00d;
/// Entries of the receive FIFO while FIFOs are enabled.
pub const RX_FIFO_SIZE: usize = 16;

/// Data register.
const UARTDR: u64 = 0x000;
/// Receive status (read) / error clear (write).
const UARTRSR: u64 = 0x004;
/// Flags.
const UARTFR: u64 = 0x018;
/// IrDA low-power counter.
const UARTILPR: u64 = 0x020;
/// Integer baud rate divisor.
const UARTIBRD: u64 = 0x024;
/// Fractional baud rate divisor.
const UARTFBRD: u64 = 0x028;
/// Line control.
const UARTLCR_H: u64 = 0x02c;
/// Control.
const UARTCR: u64 = 0x030;
/// Interrupt FIFO level select.
const UARTIFLS: u64 = 0x034;
/// Interrupt mask set/clear.
const UARTIMSC: u64 = 0x038;
/// Raw interrupt status.
const UARTRIS: u64 = 0x03c;
/// Masked interrupt status.
const UARTMIS: u64 = 0x040;
/// Interrupt clear.
const UARTICR: u64 = 0x044;
/// DMA control.
const UARTDMACR: u64 = 0x048;
/// First of the peripheral and cell ID registers (0xFE0..0xFFC).
const ID_FIRST: u64 = 0xfe0;

/// UARTFR: clear to send.
pub const FR_CTS: u32 = 1 << 0;
/// UARTFR: data set ready.
pub const FR_DSR: u32 = 1 << 1;
/// UARTFR: data carrier detect.
pub const FR_DCD: u32 = 1 << 2;
/// UARTFR: transmitter busy (never, here).
pub const FR_BUSY: u32 = 1 << 3;
/// UARTFR: receive FIFO empty.
pub const FR_RXFE: u32 = 1 << 4;
/// UARTFR: transmit FIFO full (never, here).
pub const FR_TXFF: u32 = 1 << 5;
/// UARTFR: receive FIFO full.
pub const FR_RXFF: u32 = 1 << 6;
/// UARTFR: transmit FIFO empty (always, here).
pub const FR_TXFE: u32 = 1 << 7;

/// UARTLCR_H: FIFOs enabled.
pub const LCR_H_FEN: u32 = 1 << 4;
/// UARTCR: UART enabled.
pub const CR_UARTEN: u32 = 1 << 0;
/// UARTCR: loopback.
pub const CR_LBE: u32 = 1 << 7;
/// UARTCR: transmit enabled.
pub const CR_TXE: u32 = 1 << 8;
/// UARTCR: receive enabled.
pub const CR_RXE: u32 = 1 << 9;

/// Interrupt bit (UARTIMSC, UARTRIS, UARTMIS, UARTICR): receive.
pub const INT_RX: u32 = 1 << 4;
/// Interrupt bit: transmit.
pub const INT_TX: u32 = 1 << 5;
/// Interrupt bit: receive timeout.
pub const INT_RT: u32 = 1 << 6;
/// Interrupt bit: overrun error.
pub const INT_OE: u32 = 1 << 10;
/// Every interrupt bit (modem RI, CTS, DCD, DSR; RX, TX, RT; FE, PE, BE, OE).
const INT_ALL: u32 = 0x7ff;

/// UARTRSR / UARTDR bits 8..11: overrun error.
const RSR_OE: u32 = 1 << 3;

/// UARTCR at reset: transmit and receive enabled, the UART itself not.
const CR_RESET: u32 = CR_TXE | CR_RXE;
/// UARTIFLS at reset: both FIFOs interrupt at half full.
const IFLS_RESET: u32 = 0x12;

/// A PL011 UART.
pub struct Pl011 {
    irq: Arc<dyn LevelIrq>,
    output: Box<dyn Write + Send>,
    /// Received bytes, each with its error bits (UARTDR bits 8..11, shifted down).
    rx: VecDeque<(u8, u8)>,
    rsr: u32,
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
    /// The level the line was last set to.
    line: bool,
}

impl std::fmt::Debug for Pl011 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pl011")
            .field("rx", &self.rx.len())
            .field("lcr_h", &self.lcr_h)
            .field("cr", &self.cr)
            .field("imsc", &self.imsc)
            .field("ris", &self.ris)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl Pl011 {
    /// A UART in its reset state that holds `irq` at its interrupt level and writes what
    /// the guest sends to `output`.
    pub fn new(irq: Arc<dyn LevelIrq>, output: Box<dyn Write + Send>) -> Self {
        Pl011 {
            irq,
            output,
            rx: VecDeque::with_capacity(RX_FIFO_SIZE),
            rsr: 0,
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            // The transmit FIFO is empty, at or below any trigger level.
            ris: INT_TX,
            dmacr: 0,
            line: false,
        }
    }

    /// Queues bytes the guest will read; returns how many fit in the receive FIFO (or the
    /// holding register while the guest has FIFOs off), raising the receive interrupts the
    /// guest unmasked.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let taken = self.input_room().min(bytes.len());
        for &byte in &bytes[..taken] {
            self.receive(byte);
        }
        self.update_line();
        taken
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// Whether the interrupt line is asserted now.
    pub fn irq_asserted(&self) -> bool {
        self.line
    }

    fn rx_capacity(&self) -> usize {
        if self.lcr_h & LCR_H_FEN != 0 {
            RX_FIFO_SIZE
        } else {
            1
        }
    }

    /// Entries at which the receive interrupt rises (UARTIFLS.RXIFLSEL; the reserved
    /// values act as 7/8). One entry with the FIFOs off.
    fn rx_trigger(&self) -> usize {
        if self.lcr_h & LCR_H_FEN == 0 {
            return 1;
        }
        match (self.ifls >> 3) & 7 {
            0 => 2,
            1 => 4,
            2 => 8,
            3 => 12,
            _ => 14,
        }
    }

    /// One byte arrives from the line (the host, or loopback).
    fn receive(&mut self, byte: u8) {
        if self.rx.len() >= self.rx_capacity() {
            // The byte is lost; the overrun shows on the newest entry and in UARTRSR.
            self.rsr |= RSR_OE;
            self.ris |= INT_OE;
            if let Some(last) = self.rx.back_mut() {
                last.1 |= RSR_OE as u8;
            }
            return;
        }
        self.rx.push_back((byte, 0));
        if self.rx.len() >= self.rx_trigger() {
            self.ris |= INT_RX;
        }
        self.ris |= INT_RT;
    }

    fn read_data(&mut self) -> u32 {
        let Some((byte, errors)) = self.rx.pop_front() else {
            return 0;
        };
        if self.rx.len() < self.rx_trigger() {
            self.ris &= !INT_RX;
        }
        if self.rx.is_empty() {
            self.ris &= !INT_RT;
        }
        u32::from(byte) | (u32::from(errors) << 8)
    }

    fn write_data(&mut self, value: u32) {
        let byte = value as u8;
        if self.cr & CR_LBE != 0 {
            self.receive(byte);
        } else if let Err(e) = self
            .output
            .write_all(&[byte])
            .and_then(|()| self.output.flush())
        {
            // An output sink that fails (a closed terminal) must not stop the guest.
            tracing::debug!("pl011 output failed: {e}");
        }
        // The transmit FIFO empties at once: it passed through its trigger level.
        self.ris |= INT_TX;
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_CTS | FR_DSR | FR_DCD | FR_TXFE;
        if self.rx.is_empty() {
            fr |= FR_RXFE;
        }
        if self.rx.len() >= self.rx_capacity() {
            fr |= FR_RXFF;
        }
        fr
    }

    fn set_lcr_h(&mut self, value: u32) {
        let old = self.lcr_h;
        self.lcr_h = value & 0xff;
        if (old ^ self.lcr_h) & LCR_H_FEN != 0 {
            // The receive FIFO changes shape: start empty.
            self.rx.clear();
            self.ris &= !(INT_RX | INT_RT);
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            UARTDR => self.read_data(),
            UARTRSR => self.rsr,
            UARTFR => self.flags(),
            UARTILPR => self.ilpr,
            UARTIBRD => self.ibrd,
            UARTFBRD => self.fbrd,
            UARTLCR_H => self.lcr_h,
            UARTCR => self.cr,
            UARTIFLS => self.ifls,
            UARTIMSC => self.imsc,
            UARTRIS => self.ris,
            UARTMIS => self.ris & self.imsc,
            UARTDMACR => self.dmacr,
            ID_FIRST..=0xffc => {
                // Four ID bytes each of the peripheral ID, then the cell ID.
                let index = (offset - ID_FIRST) / 4;
                let id = if index < 4 {
                    PL011_PERIPH_ID
                } else {
                    PRIMECELL_ID
                };
                (id >> (8 * (index % 4))) & 0xff
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            UARTDR => self.write_data(value),
            UARTRSR => self.rsr = 0,
            UARTILPR => self.ilpr = value & 0xff,
            UARTIBRD => self.ibrd = value & 0xffff,
            UARTFBRD => self.fbrd = value & 0x3f,
            UARTLCR_H => self.set_lcr_h(value),
            UARTCR => self.cr = value & 0xffff,
            UARTIFLS => self.ifls = value & 0x3f,
            UARTIMSC => self.imsc = value & INT_ALL,
            UARTICR => self.ris &= !(value & INT_ALL),
            UARTDMACR => self.dmacr = value & 0x7,
            _ => tracing::trace!(offset, value, "pl011: write ignored"),
        }
    }

    /// Holds the line at the masked status; a failed change is tried again next time.
    fn update_line(&mut self) {
        let level = self.ris & self.imsc != 0;
        if level == self.line {
            return;
        }
        match self.irq.set_level(level) {
            Ok(()) => self.line = level,
            Err(e) => tracing::warn!("pl011: could not set the interrupt line: {e}"),
        }
    }
}

impl crate::ConsoleInput for Pl011 {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        Pl011::enqueue_input(self, bytes)
    }

    fn input_room(&self) -> usize {
        Pl011::input_room(self)
    }
}

impl BusDevice for Pl011 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.is_empty()
            || data.len() > 8
            || !offset.is_multiple_of(4)
            || offset >= PL011_MMIO_SIZE
        {
            return;
        }
        let value = self.read_register(offset).to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&value[..n]);
        self.update_line();
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.is_empty()
            || data.len() > 8
            || !offset.is_multiple_of(4)
            || offset >= PL011_MMIO_SIZE
        {
            return;
        }
        let mut value = [0u8; 4];
        let n = data.len().min(4);
        value[..n].copy_from_slice(&data[..n]);
        self.write_register(offset, u32::from_le_bytes(value));
        self.update_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A level line that records every change.
    #[derive(Default)]
    struct Line(Mutex<Vec<bool>>);

    impl Line {
        fn level(&self) -> bool {
            self.0.lock().unwrap().last().copied().unwrap_or(false)
        }
        fn changes(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    impl LevelIrq for Line {
        fn set_level(&self, asserted: bool) -> std::io::Result<()> {
            self.0.lock().unwrap().push(asserted);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const BASE: u64 = 0x0900_0000;

    fn uart() -> (Pl011, Arc<Line>, Capture) {
        let line = Arc::new(Line::default());
        let out = Capture::default();
        (Pl011::new(line.clone(), Box::new(out.clone())), line, out)
    }

    fn r32(u: &mut Pl011, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        u.read(BASE, offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn w32(u: &mut Pl011, offset: u64, value: u32) {
        u.write(BASE, offset, &value.to_le_bytes());
    }

    /// What Linux's driver does at startup: FIFOs on, 8 bits, UART enabled, RX and RT
    /// unmasked.
    fn linux_startup(u: &mut Pl011) {
        w32(u, UARTICR, INT_ALL);
        w32(u, UARTLCR_H, LCR_H_FEN | 0x60);
        w32(u, UARTCR, CR_UARTEN | CR_TXE | CR_RXE);
        w32(u, UARTIMSC, INT_RX | INT_RT);
    }

    #[test]
    fn reset_values_and_identity() {
        let (mut u, line, _) = uart();
        assert_eq!(
            r32(&mut u, UARTFR),
            FR_CTS | FR_DSR | FR_DCD | FR_TXFE | FR_RXFE
        );
        assert_eq!(r32(&mut u, UARTCR), 0x300);
        assert_eq!(r32(&mut u, UARTIFLS), 0x12);
        assert_eq!(r32(&mut u, UARTIMSC), 0);
        assert_eq!(r32(&mut u, UARTRIS), INT_TX);
        assert_eq!(r32(&mut u, UARTMIS), 0);
        let id = |u: &mut Pl011, first: u64| {
            (0..4).fold(0u32, |id, i| id | (r32(u, first + 4 * i) << (8 * i)))
        };
        assert_eq!(id(&mut u, 0xfe0), PL011_PERIPH_ID);
        assert_eq!(id(&mut u, 0xff0), PRIMECELL_ID);
        // Byte and halfword reads of the ID registers (readb/readw) give the same bytes.
        let mut b = [0u8; 1];
        u.read(BASE, 0xff4, &mut b);
        assert_eq!(b[0], 0xf0);
        let mut h = [0u8; 2];
        u.read(BASE, 0xfe8, &mut h);
        assert_eq!(u16::from_le_bytes(h), 0x04);
        assert_eq!(line.changes(), 0, "no interrupt at reset");
    }

    #[test]
    fn registers_read_back_within_their_width() {
        let (mut u, _, _) = uart();
        for (reg, written, read) in [
            (UARTILPR, 0xffff_ffff, 0xff),
            (UARTIBRD, 0xffff_ffff, 0xffff),
            (UARTFBRD, 0xffff_ffff, 0x3f),
            (UARTLCR_H, 0xffff_ff7f, 0x7f),
            (UARTCR, 0xffff_ff7f, 0xff7f),
            (UARTIFLS, 0xffff_ffff, 0x3f),
            (UARTDMACR, 0xffff_ffff, 0x7),
        ] {
            w32(&mut u, reg, written);
            assert_eq!(r32(&mut u, reg), read, "register {reg:#x}");
        }
        // Read-only registers ignore writes.
        w32(&mut u, UARTFR, 0);
        assert_eq!(r32(&mut u, UARTFR) & FR_TXFE, FR_TXFE);
        w32(&mut u, 0xfe0, 0);
        assert_eq!(r32(&mut u, 0xfe0), 0x11);
        // A halfword write (Linux's writew) sets a register.
        u.write(BASE, UARTIBRD, &0x1234u16.to_le_bytes());
        assert_eq!(r32(&mut u, UARTIBRD), 0x1234);
    }

    #[test]
    fn output_goes_to_the_sink_whatever_the_control_register_says() {
        let (mut u, _, out) = uart();
        // Earlycon writes bytes to a UART no one enabled.
        w32(&mut u, UARTCR, 0);
        for b in b"ok\n" {
            u.write(BASE, UARTDR, &[*b]);
        }
        w32(&mut u, UARTDR, 0xffff_ff21);
        assert_eq!(&*out.0.lock().unwrap(), b"ok\n!");
        assert_eq!(r32(&mut u, UARTFR) & (FR_TXFF | FR_BUSY), 0);
    }

    #[test]
    fn fifo_holds_sixteen_and_the_holding_register_one() {
        let (mut u, _, _) = uart();
        // FIFOs off at reset: a 1-byte holding register.
        assert_eq!(u.input_room(), 1);
        assert_eq!(u.enqueue_input(b"ab"), 1);
        assert_eq!(r32(&mut u, UARTFR) & (FR_RXFF | FR_RXFE), FR_RXFF);
        assert_eq!(r32(&mut u, UARTDR), u32::from(b'a'));
        assert_eq!(r32(&mut u, UARTFR) & FR_RXFE, FR_RXFE);
        // Enabling the FIFOs: 16 entries, in order.
        assert_eq!(u.enqueue_input(b"x"), 1);
        w32(&mut u, UARTLCR_H, LCR_H_FEN);
        assert_eq!(
            r32(&mut u, UARTFR) & FR_RXFE,
            FR_RXFE,
            "flushed on FEN change"
        );
        let text: Vec<u8> = (b'A'..=b'Z').collect();
        assert_eq!(u.enqueue_input(&text), RX_FIFO_SIZE);
        assert_eq!(u.input_room(), 0);
        assert_eq!(u.enqueue_input(b"more"), 0);
        assert_eq!(r32(&mut u, UARTFR) & FR_RXFF, FR_RXFF);
        let got: Vec<u8> = (0..RX_FIFO_SIZE)
            .map(|_| r32(&mut u, UARTDR) as u8)
            .collect();
        assert_eq!(got, text[..RX_FIFO_SIZE]);
        assert_eq!(r32(&mut u, UARTFR) & FR_RXFE, FR_RXFE);
        // Reading an empty FIFO gives zero and changes nothing.
        assert_eq!(r32(&mut u, UARTDR), 0);
        assert_eq!(u.input_room(), RX_FIFO_SIZE);
        // Writing LCR_H again with FEN unchanged (a termios change) keeps the input.
        u.enqueue_input(b"kept");
        w32(&mut u, UARTLCR_H, LCR_H_FEN | 0x60);
        assert_eq!(r32(&mut u, UARTDR), u32::from(b'k'));
    }

    #[test]
    fn receive_interrupts_follow_the_fifo_and_the_mask() {
        let (mut u, line, _) = uart();
        linux_startup(&mut u);
        assert!(!line.level());
        // One byte: below the half-full trigger, so only the receive timeout.
        u.enqueue_input(b"a");
        assert_eq!(r32(&mut u, UARTMIS), INT_RT);
        assert!(line.level());
        // Reading it empties the FIFO: the line falls.
        r32(&mut u, UARTDR);
        assert_eq!(r32(&mut u, UARTRIS) & (INT_RX | INT_RT), 0);
        assert!(!line.level());
        // Eight bytes reach the trigger: RX too, until reads bring the FIFO below it.
        u.enqueue_input(b"12345678");
        assert_eq!(r32(&mut u, UARTMIS), INT_RX | INT_RT);
        r32(&mut u, UARTDR);
        assert_eq!(r32(&mut u, UARTMIS), INT_RT);
        // Clearing RT through ICR lowers the line although data is there.
        w32(&mut u, UARTICR, INT_RT);
        assert_eq!(r32(&mut u, UARTMIS), 0);
        assert!(!line.level());
        // The next byte raises it again.
        u.enqueue_input(b"9");
        assert!(line.level());
        // Masking everything lowers it; unmasking raises it.
        w32(&mut u, UARTIMSC, 0);
        assert!(!line.level());
        w32(&mut u, UARTIMSC, INT_RX | INT_RT);
        assert!(line.level());
        while r32(&mut u, UARTFR) & FR_RXFE == 0 {
            r32(&mut u, UARTDR);
        }
        assert!(!line.level());
        // The line was only set when its level changed.
        let changes = line.0.lock().unwrap().clone();
        assert!(changes.windows(2).all(|w| w[0] != w[1]), "{changes:?}");
    }

    #[test]
    fn trigger_levels_follow_ifls() {
        for (sel, level) in [(0, 2), (1, 4), (2, 8), (3, 12), (4, 14), (7, 14)] {
            let (mut u, _, _) = uart();
            w32(&mut u, UARTLCR_H, LCR_H_FEN);
            w32(&mut u, UARTIFLS, sel << 3);
            u.enqueue_input(&vec![b'x'; level - 1]);
            assert_eq!(r32(&mut u, UARTRIS) & INT_RX, 0, "sel {sel}");
            u.enqueue_input(b"x");
            assert_eq!(r32(&mut u, UARTRIS) & INT_RX, INT_RX, "sel {sel}");
        }
        // FIFOs off: every byte is the trigger.
        let (mut u, _, _) = uart();
        u.enqueue_input(b"x");
        assert_eq!(r32(&mut u, UARTRIS) & INT_RX, INT_RX);
    }

    #[test]
    fn transmit_interrupt_until_cleared_and_again_after_a_write() {
        let (mut u, line, _) = uart();
        w32(&mut u, UARTIMSC, INT_TX);
        assert!(line.level(), "an empty transmit FIFO asks for data");
        w32(&mut u, UARTICR, INT_TX);
        assert!(!line.level());
        w32(&mut u, UARTDR, u32::from(b'x'));
        assert!(line.level());
        // Masking TX (the driver's stop_tx) lowers the line.
        w32(&mut u, UARTIMSC, 0);
        assert!(!line.level());
    }

    #[test]
    fn loopback_receives_what_is_sent_and_can_overrun() {
        let (mut u, line, out) = uart();
        w32(&mut u, UARTIMSC, INT_OE);
        w32(&mut u, UARTCR, CR_UARTEN | CR_TXE | CR_RXE | CR_LBE);
        w32(&mut u, UARTDR, u32::from(b'a'));
        assert!(out.0.lock().unwrap().is_empty());
        // The holding register is full: the next byte overruns.
        w32(&mut u, UARTDR, u32::from(b'b'));
        assert_eq!(r32(&mut u, UARTRSR), RSR_OE);
        assert!(line.level());
        assert_eq!(r32(&mut u, UARTDR), u32::from(b'a') | (RSR_OE << 8));
        // ECR clears the error, ICR the interrupt.
        w32(&mut u, UARTRSR, 0);
        assert_eq!(r32(&mut u, UARTRSR), 0);
        w32(&mut u, UARTICR, INT_OE);
        assert!(!line.level());
    }

    /// A line whose first change fails: the model tries again at the next access.
    #[test]
    fn a_failed_line_change_is_retried() {
        struct Flaky(Mutex<(usize, bool)>);
        impl LevelIrq for Flaky {
            fn set_level(&self, asserted: bool) -> std::io::Result<()> {
                let mut s = self.0.lock().unwrap();
                s.0 += 1;
                if s.0 == 1 {
                    return Err(std::io::Error::other("not now"));
                }
                s.1 = asserted;
                Ok(())
            }
        }
        let line = Arc::new(Flaky(Mutex::new((0, false))));
        let mut u = Pl011::new(line.clone(), Box::new(std::io::sink()));
        w32(&mut u, UARTIMSC, INT_TX);
        assert!(!u.irq_asserted());
        r32(&mut u, UARTFR);
        assert!(u.irq_asserted());
        assert!(line.0.lock().unwrap().1);
    }

    #[test]
    fn garbage_never_panics_nor_pops() {
        let (mut u, _, _) = uart();
        u.enqueue_input(b"z");
        for offset in (0..0x1010u64).chain([u64::MAX, u64::MAX - 3]) {
            for len in [0usize, 1, 2, 3, 4, 8, 9, 16] {
                if offset.is_multiple_of(4) && offset < PL011_MMIO_SIZE && len > 0 && len <= 8 {
                    continue;
                }
                let mut buf = vec![0xaau8; len];
                u.read(BASE, offset, &mut buf);
                assert!(buf.iter().all(|b| *b == 0), "{offset:#x}+{len}");
                u.write(BASE, offset, &vec![0xffu8; len]);
            }
        }
        // Unaligned reads of the data register did not take the byte.
        assert_eq!(r32(&mut u, UARTDR), u32::from(b'z'));
        // A failing sink does not stop the guest.
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut u = Pl011::new(Arc::new(Line::default()), Box::new(Broken));
        w32(&mut u, UARTDR, 0x41);
        assert_eq!(r32(&mut u, UARTFR) & FR_TXFE, FR_TXFE);
    }

    #[test]
    fn console_input_drives_both_uarts_alike() {
        use crate::ConsoleInput;
        let (u, _, _) = uart();
        struct NoIrq;
        impl crate::IrqLine for NoIrq {
            fn trigger(&self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let serial = crate::serial::Serial::new(Arc::new(NoIrq), Box::new(std::io::sink()));
        let mut consoles: Vec<Box<dyn ConsoleInput>> = vec![Box::new(u), Box::new(serial)];
        for console in &mut consoles {
            let room = console.input_room();
            assert!(room >= 1);
            assert_eq!(console.enqueue_input(b"hi"), room.min(2));
        }
    }
}
