//! Hand-made BIOS boot sectors and a bootable ISO holding one, for tests of firmware boot on
//! the host's KVM (SeaBIOS runs on any `/dev/kvm`, software-only ones included).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A 512-byte boot sector that prints `screen` through the BIOS (int 10h teletype, so it
/// appears on the VM's screen through the VGA BIOS, or on COM1 when SeaBIOS mirrors its
/// console there), then `serial` straight to COM1, and halts. It runs at 0x7c00 whatever
/// CS:IP the firmware jumps with (0:7c00 from a disk, 7c0:0 from a CD).
pub fn printing_boot_sector(screen: &str, serial: &str) -> Vec<u8> {
    // 0: xor ax, ax | 2: mov ds, ax | 4: mov si, screen | 7: cld
    // 8: lodsb | 9: test al, al | 11: jz +9 (22) | 13: mov ah, 0x0e | 15: mov bx, 7
    // 18: int 0x10 | 20: jmp -14 (8)
    // 22: mov si, serial | 25: mov dx, 0x3f8 | 28: lodsb | 29: test al, al | 31: jz +3 (36)
    // 33: out dx, al | 34: jmp -8 (28) | 36: cli | 37: hlt | 38: jmp -4 (36)
    let mut code = vec![
        0x31, 0xc0, 0x8e, 0xd8, 0xbe, 0, 0, 0xfc, 0xac, 0x84, 0xc0, 0x74, 0x09, 0xb4, 0x0e, 0xbb,
        0x07, 0x00, 0xcd, 0x10, 0xeb, 0xf2, 0xbe, 0, 0, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74,
        0x03, 0xee, 0xeb, 0xf8, 0xfa, 0xf4, 0xeb, 0xfc,
    ];
    let screen_at = 0x7c00 + code.len();
    code.extend_from_slice(screen.as_bytes());
    code.extend_from_slice(b"\r\n\0");
    let serial_at = 0x7c00 + code.len();
    code.extend_from_slice(serial.as_bytes());
    code.extend_from_slice(b"\n\0");
    code[5..7].copy_from_slice(&(screen_at as u16).to_le_bytes());
    code[23..25].copy_from_slice(&(serial_at as u16).to_le_bytes());
    assert!(
        code.len() <= 510,
        "the messages do not fit in a boot sector"
    );
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}

/// Writes an ISO at `iso` whose El Torito entry (BIOS, no emulation) is `sector`, with
/// xorriso. Panics with what to install when xorriso is missing.
pub fn write_boot_iso(iso: &Path, sector: &[u8]) -> PathBuf {
    let tree = iso.with_extension("tree");
    std::fs::create_dir_all(&tree).expect("a folder for the ISO's files");
    std::fs::write(tree.join("boot.img"), sector).expect("write the boot image");
    let status = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "BOOTSECTOR", "-o"])
        .arg(iso)
        .args(["-b", "boot.img", "-no-emul-boot", "-boot-load-size", "1"])
        .arg(&tree)
        .status()
        .expect("xorriso runs (install the `xorriso` package)");
    assert!(status.success(), "xorriso made {}", iso.display());
    iso.to_path_buf()
}

/// A 512-byte boot sector that writes `text` (ASCII) in `attribute` straight into the VGA text
/// buffer at 0xb8000, from the start of text row `row` (no BIOS call), then `serial` to COM1,
/// and halts.
pub fn text_buffer_boot_sector(text: &str, attribute: u8, row: u16, serial: &str) -> Vec<u8> {
    // 0: xor ax, ax | 2: mov ds, ax | 4: mov ax, 0xb800 | 7: mov es, ax | 9: mov di, row*160
    // 12: mov si, text | 15: mov ah, attribute | 17: cld
    // 18: lodsb | 19: test al, al | 21: jz +3 (26) | 23: stosw | 24: jmp -8 (18)
    // 26: mov si, serial | 29: mov dx, 0x3f8 | 32: lodsb | 33: test al, al | 35: jz +3 (40)
    // 37: out dx, al | 38: jmp -8 (32) | 40: cli | 41: hlt | 42: jmp -4 (40)
    let mut code = vec![
        0x31, 0xc0, 0x8e, 0xd8, 0xb8, 0x00, 0xb8, 0x8e, 0xc0, 0xbf, 0, 0, 0xbe, 0, 0, 0xb4,
        attribute, 0xfc, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xab, 0xeb, 0xf8, 0xbe, 0, 0, 0xba, 0xf8,
        0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8, 0xfa, 0xf4, 0xeb, 0xfc,
    ];
    code[10..12].copy_from_slice(&(row * 160).to_le_bytes());
    let text_at = 0x7c00 + code.len();
    code.extend_from_slice(text.as_bytes());
    code.push(0);
    let serial_at = 0x7c00 + code.len();
    code.extend_from_slice(serial.as_bytes());
    code.extend_from_slice(b"\n\0");
    code[13..15].copy_from_slice(&(text_at as u16).to_le_bytes());
    code[27..29].copy_from_slice(&(serial_at as u16).to_le_bytes());
    assert!(code.len() <= 510, "the text does not fit in a boot sector");
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}
