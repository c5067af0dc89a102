//! A tiny hand-made 64-bit guest "kernel" for tests on any `/dev/kvm`, including software-only
//! ones such as `kvm_pvm` that cannot boot Linux.
//!
//! It is an ELF executable that Vivarium's direct Linux boot path loads like an ELF vmlinux
//! (at 1 MiB, entered in 64-bit long mode). The guest:
//! 1. programs the PICs (COM1's IRQ 4 only) and an IDT whose PIC vectors acknowledge the
//!    interrupt and return;
//! 2. enables COM1's receive interrupt and writes [`BANNER`];
//! 3. waits with `hlt` and echoes every byte it reads from COM1 back to COM1;
//! 4. on reading a `q`, powers off through the ACPI PM1a control register (port 0x604,
//!    `SLP_TYP` 5 | `SLP_EN`), as an ACPI operating system does for S5.
//!
//! It never powers off by itself otherwise, and it idles in `hlt` (no busy loop), so a test
//! can keep it running for a long time at almost no CPU cost.

use std::path::Path;

/// What the guest writes to its serial port once it runs.
pub const BANNER: &str = "VIVARIUM-HANDMADE-READY\r\n";

/// Where the image is loaded and linked (the kernel's usual 1 MiB).
const LOAD_ADDRESS: u64 = 0x10_0000;
/// File offset (and offset from [`LOAD_ADDRESS`]) of the first instruction; the ELF header
/// and the one program header fit before it.
const CODE_OFFSET: u64 = 0x80;
/// Offset of the IDT (256 bytes of gates per 16 vectors; vectors 0x20..0x2f are used). It lies
/// past the end of the file, in the zero-filled part of the segment.
const IDT_END_OFFSET: u64 = 0x170 + 0x300;

/// The guest's code, assembled once from the listing below (GNU as, `.code64`, linked at
/// `LOAD_ADDRESS + CODE_OFFSET` = 0x100080). Absolute addresses in it: the IDT register at
/// 0x100148, the banner at 0x100152, the IDT at 0x100170 (gates from 0x100370), the
/// interrupt handler at 0x100139.
///
/// ```text
/// 100080 cli
///        lidt   [0x100148]
///        ; PICs: ICW1 0x11, ICW2 vectors 0x20/0x28, ICW3 0x04/0x02, ICW4 0x01,
///        ; then mask everything but IRQ 4 (COM1)
///        mov al,0x11; out 0x20,al; out 0xa0,al; mov al,0x20; out 0x21,al
///        mov al,0x28; out 0xa1,al; mov al,0x04; out 0x21,al; mov al,0x02; out 0xa1,al
///        mov al,0x01; out 0x21,al; out 0xa1,al; mov al,0xef; out 0x21,al
///        mov al,0xff; out 0xa1,al
///        ; interrupt gates 0x20..0x2f -> isr (selector 0x08, present, type 0xe)
///        mov rdi,0x100370; mov ecx,16; mov rax,0x100139
/// fill:  mov [rdi],ax; mov word [rdi+2],8; mov word [rdi+4],0x8e00; mov rdx,rax
///        shr rdx,16; mov [rdi+6],dx; shr rdx,16; mov [rdi+8],edx; mov dword [rdi+12],0
///        add rdi,16; dec ecx; jnz fill
///        ; COM1: IER = receive data available; MCR = OUT2|RTS|DTR
///        mov dx,0x3f9; mov al,1; out dx,al; mov dx,0x3fc; mov al,0x0b; out dx,al
///        mov rsi,0x100152; mov dx,0x3f8
/// print: lodsb; test al,al; jz loop; out dx,al; jmp print
/// loop:  cli
/// drain: mov dx,0x3fd; in al,dx; test al,1; jz sleep      ; LSR data ready?
///        mov dx,0x3f8; in al,dx; cmp al,'q'; je poweroff; out dx,al; jmp drain
/// sleep: sti; hlt; jmp loop
/// poweroff: mov dx,0x604; mov ax,0x3401; out dx,ax        ; SLP_TYP 5 | SLP_EN | SCI_EN
/// halt:  cli; hlt; jmp halt
/// isr:   push rax; mov al,0x20; out 0x20,al; pop rax; iretq   ; EOI to the master PIC
///        (align 8) idtr: dw 0x2ff; dq 0x100170
/// banner: db "VIVARIUM-HANDMADE-READY", 13, 10, 0
/// ```
const CODE: [u8; 236] = [
    0xfa, 0x0f, 0x01, 0x1c, 0x25, 0x48, 0x01, 0x10, 0x00, 0xb0, 0x11, 0xe6, //
    0x20, 0xe6, 0xa0, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x28, 0xe6, 0xa1, 0xb0, //
    0x04, 0xe6, 0x21, 0xb0, 0x02, 0xe6, 0xa1, 0xb0, 0x01, 0xe6, 0x21, 0xe6, //
    0xa1, 0xb0, 0xef, 0xe6, 0x21, 0xb0, 0xff, 0xe6, 0xa1, 0x48, 0xc7, 0xc7, //
    0x70, 0x03, 0x10, 0x00, 0xb9, 0x10, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc0, //
    0x39, 0x01, 0x10, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47, 0x02, 0x08, //
    0x00, 0x66, 0xc7, 0x47, 0x04, 0x00, 0x8e, 0x48, 0x89, 0xc2, 0x48, 0xc1, //
    0xea, 0x10, 0x66, 0x89, 0x57, 0x06, 0x48, 0xc1, 0xea, 0x10, 0x89, 0x57, //
    0x08, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc7, 0x10, //
    0xff, 0xc9, 0x75, 0xd0, 0x66, 0xba, 0xf9, 0x03, 0xb0, 0x01, 0xee, 0x66, //
    0xba, 0xfc, 0x03, 0xb0, 0x0b, 0xee, 0x48, 0xc7, 0xc6, 0x52, 0x01, 0x10, //
    0x00, 0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, //
    0xf8, 0xfa, 0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0x0c, 0x66, //
    0xba, 0xf8, 0x03, 0xec, 0x3c, 0x71, 0x74, 0x07, 0xee, 0xeb, 0xeb, 0xfb, //
    0xf4, 0xeb, 0xe6, 0x66, 0xba, 0x04, 0x06, 0x66, 0xb8, 0x01, 0x34, 0x66, //
    0xef, 0xfa, 0xf4, 0xeb, 0xfc, 0x50, 0xb0, 0x20, 0xe6, 0x20, 0x58, 0x48, //
    0xcf, 0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00, 0xff, 0x02, 0x70, 0x01, //
    0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x56, 0x49, 0x56, 0x41, 0x52, 0x49, //
    0x55, 0x4d, 0x2d, 0x48, 0x41, 0x4e, 0x44, 0x4d, 0x41, 0x44, 0x45, 0x2d, //
    0x52, 0x45, 0x41, 0x44, 0x59, 0x0d, 0x0a, 0x00,
];

/// Where the display guest's drawing code starts (offset from [`LOAD_ADDRESS`]), past the IDT.
const DISPLAY_CODE_OFFSET: u64 = 0x500;
/// Rows the display guest paints white after its first picture (see [`display_elf_image`]).
pub const DISPLAY_BAND: std::ops::Range<u32> = 100..110;

/// The drawing code of the display guest, assembled once from the listing below (GNU as,
/// `.code64`, Intel syntax, linked at 0x100500). It reads the framebuffer from the boot
/// parameters' `screen_info` (rsi points at them), maps the GiB holding it with 2 MiB pages (a
/// page directory at 2 MiB put in the boot page tables' PDPT at 0xa000), draws, spins for
/// 6e9 TSC ticks (about two seconds), paints [`DISPLAY_BAND`] white, and jumps to the serial
/// guest's first instruction (0x100080), which prints [`BANNER`] and echoes.
///
/// ```text
///        movzx r8d,word [rsi+0x12]; movzx r9d,word [rsi+0x14]   ; width, height
///        movzx r10d,word [rsi+0x24]; mov r11d,[rsi+0x18]        ; stride, base
///        test r11d,r11d; jz done
///        mov rax,r11; shr rax,30; mov rbx,rax; shl rbx,30       ; PDPT index, its GiB
///        mov edi,0x200000; mov ecx,512; mov rdx,rbx; or rdx,0x83
/// fillpd: mov [rdi],rdx; add rdi,8; add rdx,0x200000; dec ecx; jnz fillpd
///        mov edx,0x200003; mov [0xa000+rax*8],rdx; mov rax,cr3; mov cr3,rax
///        xor r12d,r12d                                          ; y
/// row:   cmp r12d,r9d; jae drawn; mov rdi,r12; imul rdi,r10; add rdi,r11; xor r13d,r13d
/// col:   cmp r13d,r8d; jae nextrow
///        ; pixel = (x & 0xff) << 16 | (y & 0xff) << 8 | (x + y) & 0xff
///        mov eax,r13d; and eax,0xff; shl eax,16; mov edx,r12d; and edx,0xff; shl edx,8
///        or eax,edx; lea edx,[r13+r12]; and edx,0xff; or eax,edx
///        mov [rdi+r13*4],eax; inc r13d; jmp col
/// nextrow: inc r12d; jmp row
/// drawn: rdtsc; shl rdx,32; or rax,rdx; mov rbx,rax; mov rcx,6000000000; add rbx,rcx
/// wait:  pause; rdtsc; shl rdx,32; or rax,rdx; cmp rax,rbx; jb wait
///        mov r12d,100
/// band:  cmp r12d,110; jae done; cmp r12d,r9d; jae done
///        mov rdi,r12; imul rdi,r10; add rdi,r11; xor r13d,r13d
/// bandcol: cmp r13d,r8d; jae bandnext; mov dword [rdi+r13*4],0xffffff; inc r13d; jmp bandcol
/// bandnext: inc r12d; jmp band
/// done:  mov eax,0x100080; jmp rax
/// ```
const DISPLAY_CODE: [u8; 278] = [
    0x44, 0x0f, 0xb7, 0x46, 0x12, 0x44, 0x0f, 0xb7, 0x4e, 0x14, 0x44, 0x0f, //
    0xb7, 0x56, 0x24, 0x44, 0x8b, 0x5e, 0x18, 0x45, 0x85, 0xdb, 0x0f, 0x84, //
    0xf3, 0x00, 0x00, 0x00, 0x4c, 0x89, 0xd8, 0x48, 0xc1, 0xe8, 0x1e, 0x48, //
    0x89, 0xc3, 0x48, 0xc1, 0xe3, 0x1e, 0xbf, 0x00, 0x00, 0x20, 0x00, 0xb9, //
    0x00, 0x02, 0x00, 0x00, 0x48, 0x89, 0xda, 0x48, 0x81, 0xca, 0x83, 0x00, //
    0x00, 0x00, 0x48, 0x89, 0x17, 0x48, 0x83, 0xc7, 0x08, 0x48, 0x81, 0xc2, //
    0x00, 0x00, 0x20, 0x00, 0xff, 0xc9, 0x75, 0xee, 0xba, 0x03, 0x00, 0x20, //
    0x00, 0x48, 0x89, 0x14, 0xc5, 0x00, 0xa0, 0x00, 0x00, 0x0f, 0x20, 0xd8, //
    0x0f, 0x22, 0xd8, 0x45, 0x31, 0xe4, 0x45, 0x39, 0xcc, 0x73, 0x46, 0x4c, //
    0x89, 0xe7, 0x49, 0x0f, 0xaf, 0xfa, 0x4c, 0x01, 0xdf, 0x45, 0x31, 0xed, //
    0x45, 0x39, 0xc5, 0x73, 0x2f, 0x44, 0x89, 0xe8, 0x25, 0xff, 0x00, 0x00, //
    0x00, 0xc1, 0xe0, 0x10, 0x44, 0x89, 0xe2, 0x81, 0xe2, 0xff, 0x00, 0x00, //
    0x00, 0xc1, 0xe2, 0x08, 0x09, 0xd0, 0x43, 0x8d, 0x54, 0x25, 0x00, 0x81, //
    0xe2, 0xff, 0x00, 0x00, 0x00, 0x09, 0xd0, 0x42, 0x89, 0x04, 0xaf, 0x41, //
    0xff, 0xc5, 0xeb, 0xcc, 0x41, 0xff, 0xc4, 0xeb, 0xb5, 0x0f, 0x31, 0x48, //
    0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc3, 0x48, 0xb9, 0x00, //
    0xbc, 0xa0, 0x65, 0x01, 0x00, 0x00, 0x00, 0x48, 0x01, 0xcb, 0xf3, 0x90, //
    0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x39, 0xd8, //
    0x72, 0xf0, 0x41, 0xbc, 0x64, 0x00, 0x00, 0x00, 0x41, 0x83, 0xfc, 0x6e, //
    0x73, 0x29, 0x45, 0x39, 0xcc, 0x73, 0x24, 0x4c, 0x89, 0xe7, 0x49, 0x0f, //
    0xaf, 0xfa, 0x4c, 0x01, 0xdf, 0x45, 0x31, 0xed, 0x45, 0x39, 0xc5, 0x73, //
    0x0d, 0x42, 0xc7, 0x04, 0xaf, 0xff, 0xff, 0xff, 0x00, 0x41, 0xff, 0xc5, //
    0xeb, 0xee, 0x41, 0xff, 0xc4, 0xeb, 0xd1, 0xb8, 0x80, 0x00, 0x10, 0x00, //
    0xff, 0xe0, //
];

/// The animating guest's code (GNU as, `.code64`, Intel syntax, linked at 0x100500): like the
/// display guest it finds and maps the framebuffer, then fills the whole picture with one
/// grey after another, forever (each frame a step brighter, wrapping), never idling.
///
/// ```text
///        (the first 0x61 bytes: read screen_info and map its GiB, as DISPLAY_CODE;
///         no framebuffer: jump to stop)
///        xor ebx,ebx                                            ; colour
/// frame: xor r12d,r12d
/// row:   cmp r12d,r9d; jae next; mov rdi,r12; imul rdi,r10; add rdi,r11; xor r13d,r13d
/// col:   cmp r13d,r8d; jae nextrow; mov [rdi+r13*4],ebx; inc r13d; jmp col
/// nextrow: inc r12d; jmp row
/// next:  add ebx,0x010101; and ebx,0xffffff; jmp frame
/// stop:  cli; hlt; jmp stop
/// ```
const ANIMATION_CODE: [u8; 155] = [
    0x44, 0x0f, 0xb7, 0x46, 0x12, 0x44, 0x0f, 0xb7, 0x4e, 0x14, 0x44, 0x0f, //
    0xb7, 0x56, 0x24, 0x44, 0x8b, 0x5e, 0x18, 0x45, 0x85, 0xdb, 0x74, 0x7f, //
    0x4c, 0x89, 0xd8, 0x48, 0xc1, 0xe8, 0x1e, 0x48, 0x89, 0xc3, 0x48, 0xc1, //
    0xe3, 0x1e, 0xbf, 0x00, 0x00, 0x20, 0x00, 0xb9, 0x00, 0x02, 0x00, 0x00, //
    0x48, 0x89, 0xda, 0x48, 0x81, 0xca, 0x83, 0x00, 0x00, 0x00, 0x48, 0x89, //
    0x17, 0x48, 0x83, 0xc7, 0x08, 0x48, 0x81, 0xc2, 0x00, 0x00, 0x20, 0x00, //
    0xff, 0xc9, 0x75, 0xee, 0xba, 0x03, 0x00, 0x20, 0x00, 0x48, 0x89, 0x14, //
    0xc5, 0x00, 0xa0, 0x00, 0x00, 0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8, 0x31, //
    0xdb, 0x45, 0x31, 0xe4, 0x45, 0x39, 0xcc, 0x73, 0x20, 0x4c, 0x89, 0xe7, //
    0x49, 0x0f, 0xaf, 0xfa, 0x4c, 0x01, 0xdf, 0x45, 0x31, 0xed, 0x45, 0x39, //
    0xc5, 0x73, 0x09, 0x42, 0x89, 0x1c, 0xaf, 0x41, 0xff, 0xc5, 0xeb, 0xf2, //
    0x41, 0xff, 0xc4, 0xeb, 0xdb, 0x81, 0xc3, 0x01, 0x01, 0x01, 0x00, 0x81, //
    0xe3, 0xff, 0xff, 0xff, 0x00, 0xeb, 0xca, 0xfa, 0xf4, 0xeb, 0xfc, //
];

/// A guest that redraws its whole screen as fast as its vCPU can, forever (a changing screen
/// for benchmarks of the display path). It prints nothing and ignores the serial port; stop
/// it with `vivarium stop --force`.
pub fn animation_elf_image() -> Vec<u8> {
    image_with_entry(&ANIMATION_CODE)
}

/// The ELF file of the guest.
pub fn elf_image() -> Vec<u8> {
    elf_with(&CODE, IDT_END_OFFSET)
}

/// A guest that draws a known picture on the screen the boot parameters announce (Vivarium's
/// direct Linux boot fills `screen_info` for a VM with a display), then behaves like
/// [`elf_image`]: prints [`BANNER`] once the picture is complete, echoes serial input and
/// powers off on `q`. The picture is [`display_picture`]; [`DISPLAY_BAND`] is painted a couple
/// of seconds after the rest, so a viewer that followed the dirty bits sees only those rows
/// change last.
pub fn display_elf_image() -> Vec<u8> {
    image_with_entry(&DISPLAY_CODE)
}

/// Writes the display guest's ELF file to `path`.
pub fn write_display_kernel(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, display_elf_image())
}

/// The picture the display guest leaves on a `width` x `height` screen, as RGBA rows: pixel
/// (x, y) is red `x`, green `y`, blue `x + y` (each modulo 256), rows of [`DISPLAY_BAND`]
/// white.
pub fn display_picture(width: u32, height: u32) -> Vec<u8> {
    let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
    for y in 0..height {
        for x in 0..width {
            if DISPLAY_BAND.contains(&y) {
                rgba.extend_from_slice(&[255, 255, 255, 255]);
            } else {
                rgba.extend_from_slice(&[x as u8, y as u8, x.wrapping_add(y) as u8, 255]);
            }
        }
    }
    rgba
}

/// The ELF file of the serial guest with `extra` code at offset [`DISPLAY_CODE_OFFSET`] (past
/// the IDT, which stays zeros in the file) and the entry point there.
fn image_with_entry(extra: &[u8]) -> Vec<u8> {
    let mut code = CODE.to_vec();
    code.resize((DISPLAY_CODE_OFFSET - CODE_OFFSET) as usize, 0);
    code.extend_from_slice(extra);
    let file_size = CODE_OFFSET + code.len() as u64;
    let mut elf = elf_with(&code, IDT_END_OFFSET.max(file_size));
    elf[24..32].copy_from_slice(&(LOAD_ADDRESS + DISPLAY_CODE_OFFSET).to_le_bytes()); // e_entry
    elf
}

/// An ELF executable of `code` linked at `LOAD_ADDRESS + CODE_OFFSET`, in one segment of
/// `mem_size` bytes from `LOAD_ADDRESS` (zero-filled past the file).
fn elf_with(code: &[u8], mem_size: u64) -> Vec<u8> {
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let file_size = CODE_OFFSET + code.len() as u64;
    let mut elf = Vec::with_capacity(file_size as usize);
    // ELF header (System V gABI): 64-bit, little endian, version 1, executable, x86-64.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(LOAD_ADDRESS + CODE_OFFSET).to_le_bytes()); // e_entry
    elf.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&PHDR_SIZE.to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    // One PT_LOAD segment: the whole file at 1 MiB, followed by the zeroed IDT.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes()); // p_flags: RWX
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDRESS.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_size.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&mem_size.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.resize(CODE_OFFSET as usize, 0);
    elf.extend_from_slice(code);
    elf
}

/// Writes the guest's ELF file to `path`.
pub fn write_kernel(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, elf_image())
}

/// What the input guest writes to its serial port once its keyboard and mouse are on.
pub const INPUT_BANNER: &str = "VIVARIUM-INPUT-READY\r\n";

/// Where the input guest's IDT ends (it starts at offset 0x400; vectors 0x20..0x2f are used).
const INPUT_IDT_END_OFFSET: u64 = 0x700;

/// A second guest, for keyboard and mouse tests: it turns on the i8042's keyboard and mouse
/// as a driver does (AUX port on, configuration byte 0x47 = both interrupts, system flag,
/// set 2 -> set 1 translation; `F4` to the keyboard and, through `D4`, to the mouse, each
/// answered by an ACK it reads), writes [`INPUT_BANNER`], then reports every byte the
/// controller gives it on COM1 as `k` (keyboard) or `m` (mouse, status bit 5) and two hex
/// digits and a space, e.g. `k1e k9e m09 m05 m03 `. It sleeps in `hlt` between bytes (IRQ 1
/// and IRQ 12 wake it) and never powers off by itself.
///
/// Assembled once (GNU as, `.intel_syntax noprefix`, `.code64`, linked at 0x100080) from:
///
/// ```text
/// _start: cli; lidt [idtr]
///         ; PICs: ICW1 0x11, vectors 0x20/0x28, cascade on IRQ 2, 8086 mode;
///         ; unmask IRQ 1 and 2 on the master and IRQ 12 on the slave
///         mov al,0x11; out 0x20,al; out 0xa0,al; mov al,0x20; out 0x21,al
///         mov al,0x28; out 0xa1,al; mov al,0x04; out 0x21,al; mov al,0x02; out 0xa1,al
///         mov al,0x01; out 0x21,al; out 0xa1,al; mov al,0xf9; out 0x21,al
///         mov al,0xef; out 0xa1,al
///         ; interrupt gates 0x20..0x2f -> isr (IDT at 0x100400)
///         mov rdi,0x100600; mov ecx,16; mov rax,isr
/// fill:   (as in the first guest) ... dec ecx; jnz fill
/// drain:  in al,0x64; test al,1; jz drained; in al,0x60; jmp drain
/// drained: mov al,0xa8; out 0x64,al              ; AUX port on
///         mov al,0x60; out 0x64,al; mov al,0x47; out 0x60,al   ; configuration byte
///         mov al,0xf4; out 0x60,al               ; keyboard: enable scanning
/// ack1:   in al,0x64; test al,1; jz ack1; in al,0x60
///         mov al,0xd4; out 0x64,al; mov al,0xf4; out 0x60,al   ; mouse: enable reporting
/// ack2:   in al,0x64; test al,1; jz ack2; in al,0x60
///         mov rsi,banner; mov dx,0x3f8
/// print:  lodsb; test al,al; jz loop; out dx,al; jmp print
/// loop:   cli
/// poll:   in al,0x64; test al,1; jz sleep
///         mov bl,'k'; test al,0x20; jz 1f; mov bl,'m'
/// 1:      in al,0x60; mov cl,al; mov dx,0x3f8; mov al,bl; out dx,al
///         movzx eax,cl; shr eax,4; mov al,[rax+hexdigits]; out dx,al
///         movzx eax,cl; and eax,15; mov al,[rax+hexdigits]; out dx,al
///         mov al,' '; out dx,al; jmp poll
/// sleep:  sti; hlt; jmp loop
/// isr:    push rax; mov al,0x20; out 0xa0,al; out 0x20,al; pop rax; iretq  ; EOI both PICs
///         (align 8) idtr: dw 0x2ff; dq 0x100400
/// hexdigits: db "0123456789abcdef"
/// banner: db "VIVARIUM-INPUT-READY", 13, 10, 0
/// ```
const INPUT_CODE: [u8; 305] = [
    0xfa, 0x0f, 0x01, 0x1c, 0x25, 0x80, 0x01, 0x10, 0x00, 0xb0, 0x11, 0xe6, //
    0x20, 0xe6, 0xa0, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x28, 0xe6, 0xa1, 0xb0, //
    0x04, 0xe6, 0x21, 0xb0, 0x02, 0xe6, 0xa1, 0xb0, 0x01, 0xe6, 0x21, 0xe6, //
    0xa1, 0xb0, 0xf9, 0xe6, 0x21, 0xb0, 0xef, 0xe6, 0xa1, 0x48, 0xc7, 0xc7, //
    0x00, 0x06, 0x10, 0x00, 0xb9, 0x10, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc0, //
    0x72, 0x01, 0x10, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47, 0x02, 0x08, //
    0x00, 0x66, 0xc7, 0x47, 0x04, 0x00, 0x8e, 0x48, 0x89, 0xc2, 0x48, 0xc1, //
    0xea, 0x10, 0x66, 0x89, 0x57, 0x06, 0x48, 0xc1, 0xea, 0x10, 0x89, 0x57, //
    0x08, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc7, 0x10, //
    0xff, 0xc9, 0x75, 0xd0, 0xe4, 0x64, 0xa8, 0x01, 0x74, 0x04, 0xe4, 0x60, //
    0xeb, 0xf6, 0xb0, 0xa8, 0xe6, 0x64, 0xb0, 0x60, 0xe6, 0x64, 0xb0, 0x47, //
    0xe6, 0x60, 0xb0, 0xf4, 0xe6, 0x60, 0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa, //
    0xe4, 0x60, 0xb0, 0xd4, 0xe6, 0x64, 0xb0, 0xf4, 0xe6, 0x60, 0xe4, 0x64, //
    0xa8, 0x01, 0x74, 0xfa, 0xe4, 0x60, 0x48, 0xc7, 0xc6, 0x9a, 0x01, 0x10, //
    0x00, 0x66, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, //
    0xf8, 0xfa, 0xe4, 0x64, 0xa8, 0x01, 0x74, 0x32, 0xb3, 0x6b, 0xa8, 0x20, //
    0x74, 0x02, 0xb3, 0x6d, 0xe4, 0x60, 0x88, 0xc1, 0x66, 0xba, 0xf8, 0x03, //
    0x88, 0xd8, 0xee, 0x0f, 0xb6, 0xc1, 0xc1, 0xe8, 0x04, 0x8a, 0x80, 0x8a, //
    0x01, 0x10, 0x00, 0xee, 0x0f, 0xb6, 0xc1, 0x83, 0xe0, 0x0f, 0x8a, 0x80, //
    0x8a, 0x01, 0x10, 0x00, 0xee, 0xb0, 0x20, 0xee, 0xeb, 0xc8, 0xfb, 0xf4, //
    0xeb, 0xc3, 0x50, 0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20, 0x58, 0x48, 0xcf, //
    0x0f, 0x1f, 0x40, 0x00, 0xff, 0x02, 0x00, 0x04, 0x10, 0x00, 0x00, 0x00, //
    0x00, 0x00, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, //
    0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x56, 0x49, 0x56, 0x41, 0x52, 0x49, //
    0x55, 0x4d, 0x2d, 0x49, 0x4e, 0x50, 0x55, 0x54, 0x2d, 0x52, 0x45, 0x41, //
    0x44, 0x59, 0x0d, 0x0a, 0x00, //
];

/// The ELF file of the input guest.
pub fn input_elf_image() -> Vec<u8> {
    elf_with(&INPUT_CODE, INPUT_IDT_END_OFFSET)
}

/// Writes the input guest's ELF file to `path`.
pub fn write_input_kernel(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, input_elf_image())
}

/// The bytes the input guest reported in `serial` output after its banner: (`'k'` or
/// `'m'`, byte) pairs, in order. A trailing partial report is left out.
pub fn input_reports(serial: &str) -> Vec<(char, u8)> {
    let Some(at) = serial.find(INPUT_BANNER) else {
        return Vec::new();
    };
    serial[at + INPUT_BANNER.len()..]
        .split(' ')
        .filter_map(|token| {
            let mut chars = token.chars();
            let device = chars.next().filter(|c| *c == 'k' || *c == 'm')?;
            let hex = chars.as_str();
            (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok().map(|b| (device, b)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_a_64_bit_elf_whose_entry_is_the_first_instruction() {
        let elf = elf_image();
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "64-bit");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, 0x10_0080);
        assert_eq!(elf[CODE_OFFSET as usize], 0xfa, "cli first");
        let banner = &elf[(0x152 - 0x80 + CODE_OFFSET) as usize..];
        assert!(banner.starts_with(BANNER.as_bytes()));
        let memsz = u64::from_le_bytes(elf[64 + 40..64 + 48].try_into().unwrap());
        assert!(memsz >= elf.len() as u64);
    }

    #[test]
    fn the_display_guest_enters_its_drawing_code_and_keeps_the_serial_guest() {
        let elf = display_elf_image();
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        assert_eq!(entry, LOAD_ADDRESS + DISPLAY_CODE_OFFSET);
        assert_eq!(&elf[DISPLAY_CODE_OFFSET as usize..], &DISPLAY_CODE);
        assert_eq!(
            &elf[..CODE_OFFSET as usize + CODE.len()][CODE_OFFSET as usize..],
            &CODE
        );
        // The IDT the serial guest fills is zeros in the file.
        assert!(elf[0x170..0x470].iter().all(|b| *b == 0));
        let memsz = u64::from_le_bytes(elf[64 + 40..64 + 48].try_into().unwrap());
        assert_eq!(memsz, elf.len() as u64);
        let animation = animation_elf_image();
        assert_eq!(&animation[DISPLAY_CODE_OFFSET as usize..], &ANIMATION_CODE);
        // Both read and map the framebuffer with the same code.
        assert_eq!(&ANIMATION_CODE[..0x16], &DISPLAY_CODE[..0x16]);
        let picture = display_picture(4, 120);
        assert_eq!(&picture[(5 * 4 + 3) * 4..][..4], &[3, 5, 8, 255]);
        assert_eq!(&picture[(100 * 4) * 4..][..4], &[255, 255, 255, 255]);
    }

    #[test]
    fn the_input_guest_has_its_banner_where_the_code_reads_it_and_its_reports_parse() {
        let elf = input_elf_image();
        assert_eq!(elf[CODE_OFFSET as usize], 0xfa, "cli first");
        // `mov rsi, banner` takes 0x10019a; the file maps 1 MiB from offset 0.
        let banner = &elf[0x19a..];
        assert!(banner.starts_with(INPUT_BANNER.as_bytes()));
        let memsz = u64::from_le_bytes(elf[64 + 40..64 + 48].try_into().unwrap());
        assert!(memsz >= elf.len() as u64 && memsz >= 0x700);
        assert_eq!(
            input_reports("noise VIVARIUM-INPUT-READY\r\nk1e k9e m09 m0"),
            [('k', 0x1e), ('k', 0x9e), ('m', 0x09)]
        );
        assert_eq!(input_reports("k1e "), []);
    }
}
