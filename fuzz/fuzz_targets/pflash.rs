//! Fuzz the CFI parallel flash (Intel command set) that holds OVMF's variables: command
//! bytes and their data (program, erase and its confirmation, status, identification, CFI
//! query, read array, unknown commands) written with any width at any offset, reads of any
//! width anywhere, on a writable or a read-only part of a few block sizes.
//!
//! Oracles besides "no panic": a read-only part never changes; a writable one changes only
//! on writes; the mode listener always agrees with the device on whether it
//! reads like memory; and in read-array mode a read gives the contents.
#![no_main]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use libfuzzer_sys::fuzz_target;
use vivarium_devices::pflash::{CfiFlash, FlashModeListener};
use vivarium_devices_fuzz::{Access, Cursor, perform};

/// Remembers what the flash last said about its mode.
struct Mode(AtomicBool);

impl FlashModeListener for Mode {
    fn read_array_changed(&self, read_array: bool) {
        self.0.store(read_array, Ordering::Relaxed);
    }
}

/// Commands the flash knows, so most writes are meaningful.
const COMMANDS: &[u8] = &[0xff, 0x00, 0x10, 0x40, 0x20, 0xd0, 0x50, 0x70, 0x90, 0x98];

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let flags = c.u8();
    let writable = flags & 1 != 0;
    let block_size = 256usize << (flags >> 1 & 7); // 256 B .. 32 KiB
    let size = block_size * (1 + usize::from(c.u8() % 8));
    let initial: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let mut flash = CfiFlash::new(Box::new(initial.clone()), block_size, writable).unwrap();
    let listener = Arc::new(Mode(AtomicBool::new(true)));
    flash.set_listener(listener.clone());
    while !c.is_empty() {
        let op = c.u8();
        let access = if op.is_multiple_of(4) {
            let offset = u64::from(c.u32()) % size as u64;
            let command = COMMANDS[usize::from(c.u8()) % COMMANDS.len()];
            Access::Write {
                offset,
                len: 1,
                value: [command, 0, 0, 0, 0, 0, 0, 0],
            }
        } else {
            c.access(size as u64)
        };
        let reads_array = flash.reads_as_memory();
        let before = flash.contents().to_vec();
        let out = perform(&mut flash, 0xffc0_0000, access);
        if flash.contents() != &before[..] {
            assert!(writable, "a read-only flash changed");
            assert!(
                matches!(access, Access::Write { .. }),
                "a read changed the contents"
            );
        }
        if let (true, Access::Read { offset, len }) = (reads_array, access) {
            for (i, byte) in out[..len].iter().enumerate() {
                let at = offset as usize + i;
                let want = before.get(at).copied().unwrap_or(0xff);
                assert_eq!(*byte, want, "read-array byte {at}");
            }
        }
        assert_eq!(
            listener.0.load(Ordering::Relaxed),
            flash.reads_as_memory(),
            "the listener and the flash disagree on the mode"
        );
    }
    if !writable {
        assert_eq!(flash.contents(), &initial[..]);
    }
});
