//! A parallel NOR flash with the Intel/Sharp command set (CFI command set 0001), the kind PC
//! firmware keeps its settings in: OVMF stores its UEFI variables (the boot entries an
//! installer writes, the boot order, the firmware's own settings) in one.
//!
//! In **read-array** mode (the power-on state) the flash reads like memory; the backend
//! maps its storage straight into the guest, read-only, so reads cost nothing. A write is a
//! command: it switches the flash to another mode (program, erase, status, identification),
//! in which reads return the status register or IDs instead of the contents. The device
//! tells its [`FlashModeListener`] whenever the flash starts or stops reading like memory,
//! so the backend can unmap the storage (reads then come to [`BusDevice::read`]) and map it
//! again.
//!
//! The commands (a single byte written anywhere in the flash; the address only matters
//! for program and erase):
//!
//! ```text
//! 0xff, 0x00         read array
//! 0x10, 0x40 + data  program one byte or word at the data's address
//! 0x20 + 0xd0        erase the block holding the address (to all-ones)
//! 0x50               clear the status register
//! 0x70               read the status register (0x80: ready; error bits 0x10/0x20/0x30)
//! 0x90               read identifiers (manufacturer at 0, device at 1)
//! 0x98               read the CFI query table
//! ```
//!
//! OVMF's variable driver (`QemuFlashFvbServicesRuntimeDxe`) detects the flash by writing
//! "clear status" (which leaves it reading the array) and then "read status", and checking
//! that it reads the cleared status, 0x00 (a ROM would read its old byte, RAM the command);
//! it programs one byte at a time and erases 4 KiB blocks. A read-only flash (the firmware's code) takes commands the same way but programs
//! and erases nothing and reports the error in its status.
//!
//! Programming stores the byte as written. Real flash can only clear bits until the block
//! is erased; QEMU's flash (which OVMF is developed against) stores the value as written, and
//! OVMF only ever programs erased bytes or clears bits, so both give the same contents.
//! Anything else a guest writes is an unknown command: the flash sets the command-sequence
//! error bits and returns to read-array mode, as a real part does; nothing is stored.

use crate::bus::BusDevice;

/// The flash's storage: the bytes the guest reads in read-array mode. The backend owns it
/// (typically a shared mapping of the VM's variable store file, also mapped into the guest).
pub trait FlashStorage: Send {
    /// The contents.
    fn bytes(&self) -> &[u8];
    /// The contents, to program or erase.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// A burst of writes is complete (the flash went back to read-array mode after a program
    /// or erase): a good moment to start writing the contents back to a file.
    fn written(&mut self) {}
}

impl FlashStorage for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// Told when the flash starts or stops reading like memory.
pub trait FlashModeListener: Send + Sync {
    /// `true`: the flash is in read-array mode (map the storage for reads); `false`: reads
    /// must come to the device.
    fn read_array_changed(&self, read_array: bool);
}

/// Status register: the part is ready (no operation in progress).
pub const STATUS_READY: u8 = 0x80;
/// Status register: an erase failed (with [`STATUS_PROGRAM_ERROR`]: a bad command sequence).
pub const STATUS_ERASE_ERROR: u8 = 0x20;
/// Status register: a program failed.
pub const STATUS_PROGRAM_ERROR: u8 = 0x10;
/// Status register: the block is locked (the flash is read-only).
pub const STATUS_LOCKED: u8 = 0x02;

/// Intel's JEDEC manufacturer ID.
const MANUFACTURER_ID: u8 = 0x89;
/// A device ID for the identification mode (QEMU's x86 flash reports 0x00; firmware does not
/// look at it).
const DEVICE_ID: u8 = 0x18;

/// Where the flash's reads come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The contents.
    ReadArray,
    /// The status register.
    Status,
    /// Manufacturer and device IDs.
    Identify,
    /// The CFI query table.
    Query,
    /// The next write is the data of a program command.
    Program,
    /// The next write must be the erase confirmation.
    EraseSetup,
}

/// A CFI flash of the Intel command set over a [`FlashStorage`].
pub struct CfiFlash {
    storage: Box<dyn FlashStorage>,
    block_size: usize,
    writable: bool,
    mode: Mode,
    status: u8,
    listener: Option<std::sync::Arc<dyn FlashModeListener>>,
    /// Whether a program or erase happened since the last return to read-array mode.
    dirty: bool,
}

impl CfiFlash {
    /// A flash over `storage` erased in blocks of `block_size` bytes (a power of two that
    /// divides the storage's size). `writable: false` makes a read-only part (firmware code).
    pub fn new(
        storage: Box<dyn FlashStorage>,
        block_size: usize,
        writable: bool,
    ) -> crate::Result<CfiFlash> {
        let len = storage.bytes().len();
        if !block_size.is_power_of_two() || len == 0 || !len.is_multiple_of(block_size) {
            return Err(crate::Error::InvalidFlash(format!(
                "{len} bytes are not a whole number of {block_size}-byte blocks"
            )));
        }
        Ok(CfiFlash {
            storage,
            block_size,
            writable,
            mode: Mode::ReadArray,
            status: STATUS_READY,
            listener: None,
            dirty: false,
        })
    }

    /// Tells `listener` about every change between read-array mode and the other modes.
    pub fn set_listener(&mut self, listener: std::sync::Arc<dyn FlashModeListener>) {
        self.listener = Some(listener);
    }

    /// Whether reads return the contents (the storage may be mapped into the guest).
    pub fn reads_as_memory(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// The contents.
    pub fn contents(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// The flash's size in bytes.
    pub fn len(&self) -> usize {
        self.storage.bytes().len()
    }

    /// Whether the flash is empty (never: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_mode(&mut self, mode: Mode) {
        let was = self.mode == Mode::ReadArray;
        self.mode = mode;
        let is = mode == Mode::ReadArray;
        if is && self.dirty {
            self.dirty = false;
            self.storage.written();
        }
        if was != is
            && let Some(listener) = &self.listener
        {
            listener.read_array_changed(is);
        }
    }

    /// The byte of the CFI query table at `index` (byte addresses / 1 for an 8-bit part).
    fn query(&self, index: u64) -> u8 {
        let size_log2 = self.len().trailing_zeros() as u8;
        let blocks = (self.len() / self.block_size) as u32 - 1;
        let block_units = (self.block_size / 256) as u32;
        match index {
            0x10 => b'Q',
            0x11 => b'R',
            0x12 => b'Y',
            // Primary command set: Intel/Sharp extended (0x0001).
            0x13 => 0x01,
            0x14 => 0x00,
            // Typical program and erase times (2^n us, 2^n ms); the device is instantaneous.
            0x1f | 0x21 => 0x01,
            0x27 => size_log2,
            // Interface: x8 only.
            0x28 | 0x29 => 0x00,
            0x2c => 0x01,
            0x2d => blocks as u8,
            0x2e => (blocks >> 8) as u8,
            0x2f => block_units as u8,
            0x30 => (block_units >> 8) as u8,
            _ => 0,
        }
    }

    fn command(&mut self, command: u8) {
        match command {
            0xff | 0x00 => self.set_mode(Mode::ReadArray),
            0x10 | 0x40 => self.set_mode(Mode::Program),
            0x20 => self.set_mode(Mode::EraseSetup),
            // Clearing the status clears all of it, the ready bit too, and returns to read
            // array, as QEMU's flash does: OVMF's probe reads the status as 0x00 right after.
            0x50 => {
                self.status = 0;
                self.set_mode(Mode::ReadArray);
            }
            0x70 => self.set_mode(Mode::Status),
            0x90 => self.set_mode(Mode::Identify),
            0x98 => self.set_mode(Mode::Query),
            other => {
                tracing::debug!(command = other, "unknown flash command");
                self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                self.set_mode(Mode::ReadArray);
            }
        }
    }

    fn program(&mut self, offset: u64, data: &[u8]) {
        let start = offset as usize;
        let end = start.saturating_add(data.len());
        if !self.writable {
            self.status |= STATUS_PROGRAM_ERROR | STATUS_LOCKED;
        } else if end <= self.len() {
            self.storage.bytes_mut()[start..end].copy_from_slice(data);
            self.dirty = true;
            self.status |= STATUS_READY;
        } else {
            self.status |= STATUS_PROGRAM_ERROR;
        }
        self.set_mode(Mode::Status);
    }

    fn erase(&mut self, offset: u64, confirm: u8) {
        if confirm != 0xd0 {
            // An erase setup not followed by its confirmation is a bad command sequence.
            self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
        } else if !self.writable {
            self.status |= STATUS_ERASE_ERROR | STATUS_LOCKED;
        } else {
            let start = (offset as usize) & !(self.block_size - 1);
            let end = start + self.block_size;
            if end <= self.len() {
                self.storage.bytes_mut()[start..end].fill(0xff);
                self.dirty = true;
                self.status |= STATUS_READY;
            } else {
                self.status |= STATUS_ERASE_ERROR;
            }
        }
        self.set_mode(Mode::Status);
    }
}

impl BusDevice for CfiFlash {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match self.mode {
            Mode::ReadArray => {
                let contents = self.storage.bytes();
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = offset
                        .checked_add(i as u64)
                        .and_then(|at| contents.get(at as usize))
                        .copied()
                        .unwrap_or(0xff);
                }
            }
            // Program and erase complete at once, so the part is back to reporting status.
            Mode::Status | Mode::Program | Mode::EraseSetup => data.fill(self.status),
            Mode::Identify => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = match (offset + i as u64) & 0xff {
                        0 => MANUFACTURER_ID,
                        1 => DEVICE_ID,
                        _ => 0,
                    };
                }
            }
            Mode::Query => {
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = self.query(offset + i as u64);
                }
            }
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&first) = data.first() else {
            return;
        };
        match self.mode {
            Mode::Program => self.program(offset, data),
            Mode::EraseSetup => self.erase(offset, first),
            _ => self.command(first),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const BLOCK: usize = 4096;

    #[derive(Default)]
    struct Modes(Mutex<Vec<bool>>);

    impl FlashModeListener for Modes {
        fn read_array_changed(&self, read_array: bool) {
            self.0.lock().unwrap().push(read_array);
        }
    }

    fn flash(writable: bool) -> (CfiFlash, Arc<Modes>) {
        let mut contents = vec![0xffu8; 4 * BLOCK];
        contents[0x1234] = 0x5a;
        let mut flash = CfiFlash::new(Box::new(contents), BLOCK, writable).unwrap();
        let modes = Arc::new(Modes::default());
        flash.set_listener(modes.clone());
        (flash, modes)
    }

    fn read(flash: &mut CfiFlash, at: u64) -> u8 {
        let mut byte = [0];
        flash.read(0, at, &mut byte);
        byte[0]
    }

    fn write(flash: &mut CfiFlash, at: u64, value: u8) {
        flash.write(0, at, &[value]);
    }

    /// OVMF's probe: remember a byte, write "clear status", read; write "read status",
    /// read. A flash reads its contents after the first (not the command, as RAM would) and
    /// the cleared status 0x00 after the second (not the old byte, as a ROM would); the
    /// probe puts it back in read-array mode.
    #[test]
    fn ovmf_detects_it_as_flash() {
        let (mut flash, modes) = flash(true);
        let original = read(&mut flash, 0x1234);
        assert_eq!(original, 0x5a);
        write(&mut flash, 0x1234, 0x50);
        assert_eq!(read(&mut flash, 0x1234), original);
        write(&mut flash, 0x1234, 0x70);
        assert_eq!(read(&mut flash, 0x1234), 0x00);
        write(&mut flash, 0x1234, 0xff);
        assert_eq!(read(&mut flash, 0x1234), 0x5a, "contents untouched");
        assert!(flash.reads_as_memory());
        assert_eq!(*modes.0.lock().unwrap(), vec![false, true]);
    }

    #[test]
    fn program_then_erase_a_block() {
        let (mut flash, _) = flash(true);
        for (i, byte) in b"Boot0001".iter().enumerate() {
            write(&mut flash, 0x2000 + i as u64, 0x10);
            write(&mut flash, 0x2000 + i as u64, *byte);
            assert_eq!(read(&mut flash, 0), STATUS_READY);
        }
        write(&mut flash, 0, 0xff);
        assert_eq!(&flash.contents()[0x2000..0x2008], b"Boot0001");
        write(&mut flash, 0x2fff, 0x20);
        write(&mut flash, 0x2fff, 0xd0);
        assert_eq!(read(&mut flash, 0x2fff), STATUS_READY);
        write(&mut flash, 0, 0xff);
        assert!(flash.contents()[0x2000..0x3000].iter().all(|&b| b == 0xff));
        assert_eq!(
            flash.contents()[0x1234],
            0x5a,
            "other blocks keep their bytes"
        );
    }

    #[test]
    fn a_read_only_flash_keeps_its_contents_and_says_so() {
        let (mut flash, _) = flash(false);
        write(&mut flash, 0x1234, 0x40);
        write(&mut flash, 0x1234, 0x00);
        assert_eq!(
            read(&mut flash, 0),
            STATUS_READY | STATUS_PROGRAM_ERROR | STATUS_LOCKED
        );
        write(&mut flash, 0x1000, 0x20);
        write(&mut flash, 0x1000, 0xd0);
        write(&mut flash, 0, 0x50);
        write(&mut flash, 0, 0x70);
        assert_eq!(read(&mut flash, 0), 0, "cleared");
        write(&mut flash, 0, 0xff);
        assert_eq!(flash.contents()[0x1234], 0x5a);
        assert_eq!(flash.contents()[0x1000], 0xff);
    }

    #[test]
    fn garbage_never_changes_the_contents_and_ends_in_read_array() {
        let (mut flash, _) = flash(true);
        let before = flash.contents().to_vec();
        // Commands the part does not know, an erase without its confirmation, and writes of
        // every width at odd offsets and past the end.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let value = (seed >> 8) as u8;
            if matches!(value, 0x10 | 0x40 | 0x20) {
                continue;
            }
            let at = seed % (8 * BLOCK as u64);
            let len = 1 + (seed >> 40) as usize % 8;
            flash.write(0, at, &vec![value; len]);
            let mut out = vec![0; len];
            flash.read(0, at, &mut out);
        }
        write(&mut flash, 0, 0x20);
        write(&mut flash, 0, 0x55);
        assert_eq!(
            read(&mut flash, 0) & (STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR),
            STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR
        );
        write(&mut flash, 0, 0xff);
        assert_eq!(flash.contents(), &before[..]);
        // Past the end: a program there is an error, not a panic.
        write(&mut flash, 4 * BLOCK as u64 + 10, 0x10);
        write(&mut flash, 4 * BLOCK as u64 + 10, 0);
        assert_ne!(read(&mut flash, 0) & STATUS_PROGRAM_ERROR, 0);
        write(&mut flash, 0, 0xff);
        assert_eq!(flash.contents(), &before[..]);
    }

    #[test]
    fn identifies_itself_and_answers_the_cfi_query() {
        let (mut flash, _) = flash(true);
        write(&mut flash, 0, 0x90);
        assert_eq!(read(&mut flash, 0), MANUFACTURER_ID);
        write(&mut flash, 0, 0x98);
        let qry: Vec<u8> = (0x10..0x13).map(|i| read(&mut flash, i)).collect();
        assert_eq!(qry, b"QRY");
        assert_eq!(read(&mut flash, 0x27), 14, "2^14 bytes");
        assert_eq!(read(&mut flash, 0x2d), 3, "four blocks");
        assert_eq!(read(&mut flash, 0x2f), 16, "of 16 x 256 bytes");
    }

    #[test]
    fn sizes_that_are_not_whole_blocks_are_refused() {
        assert!(CfiFlash::new(Box::new(vec![0u8; 5000]), BLOCK, true).is_err());
        assert!(CfiFlash::new(Box::new(vec![0u8; 8192]), 3000, true).is_err());
        assert!(CfiFlash::new(Box::new(Vec::new()), BLOCK, true).is_err());
    }
}
