//! How an x86 CPU enters the guest when a board boots it directly, in the architecture's own
//! terms (descriptors, control registers) rather than any hypervisor's structures.

/// Where and in which mode an x86 CPU starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode with paging, as the Linux 64-bit boot protocol wants it. The board has
    /// written the GDT (whose descriptors are `gdt`), an IDT and the page tables at `cr3`
    /// into guest memory.
    LongMode {
        /// The first instruction.
        rip: u64,
        /// The stack pointer (also the frame pointer).
        rsp: u64,
        /// `rsi` (Linux: the zero page).
        rsi: u64,
        /// Where the GDT is, and its descriptors: the code segment at [`CODE_SELECTOR`], the
        /// data segments at [`DATA_SELECTOR`], the TSS at [`TSS_SELECTOR`].
        gdt_base: u64,
        /// The GDT's descriptors, as written at `gdt_base`.
        gdt: Vec<u64>,
        /// Where the IDT is, and its limit.
        idt_base: u64,
        /// The IDT's limit (its size in bytes minus one).
        idt_limit: u16,
        /// The page-table root.
        cr3: u64,
    },
    /// Real mode with flat zero-based segments, at physical address `ip` (below 64 KiB).
    RealMode {
        /// The first instruction.
        ip: u16,
        /// The stack pointer.
        sp: u16,
    },
}

/// The GDT index of the 64-bit code segment in [`Entry::LongMode`].
pub const CODE_SELECTOR: u8 = 1;
/// The GDT index of the data segments in [`Entry::LongMode`].
pub const DATA_SELECTOR: u8 = 2;
/// The GDT index of the TSS in [`Entry::LongMode`].
pub const TSS_SELECTOR: u8 = 3;

/// `cr0` bits of long mode: protection, the x87 (ET) and paging.
pub const CR0_LONG_MODE: u64 = 1 | (1 << 4) | (1 << 31);
/// `cr4` bits of long mode: physical address extension.
pub const CR4_LONG_MODE: u64 = 1 << 5;
/// `EFER` bits of long mode: enabled and active.
pub const EFER_LONG_MODE: u64 = (1 << 8) | (1 << 10);

/// Encodes a segment descriptor (Intel SDM vol. 3, 3.4.5): `flags` are the access byte in
/// bits 0..8 and the flags nibble in bits 12..16.
pub fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// A segment register as the CPU caches it after loading a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// The linear base.
    pub base: u64,
    /// The limit in bytes (granularity applied).
    pub limit: u32,
    /// The selector.
    pub selector: u16,
    /// The type nibble.
    pub kind: u8,
    /// Present.
    pub present: bool,
    /// Privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit).
    pub db: bool,
    /// Code or data (not a system segment).
    pub s: bool,
    /// 64-bit code.
    pub l: bool,
    /// 4 KiB granularity.
    pub g: bool,
    /// Available to software.
    pub avl: bool,
}

impl Segment {
    /// The segment the descriptor `entry` at GDT index `index` gives.
    pub fn from_descriptor(entry: u64, index: u8) -> Segment {
        let bit = |shift: u32| (entry >> shift) & 1 == 1;
        let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
        let granular = bit(55);
        Segment {
            base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
            limit: if granular {
                (limit << 12) | 0xfff
            } else {
                limit
            },
            selector: u16::from(index) * 8,
            kind: ((entry >> 40) & 0xf) as u8,
            present: bit(47),
            dpl: ((entry >> 45) & 0x3) as u8,
            db: bit(54),
            s: bit(44),
            l: bit(53),
            g: granular,
            avl: bit(52),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_decode_into_the_segments_they_describe() {
        let code = descriptor(0xa09b, 0, 0xfffff);
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let seg = Segment::from_descriptor(code, CODE_SELECTOR);
        assert_eq!(seg.selector, 8);
        assert!(seg.l && seg.present && seg.s && seg.g);
        assert_eq!(seg.kind, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        let data = Segment::from_descriptor(descriptor(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert!(data.db);
        assert_eq!(data.kind, 0x3);
        let tss = Segment::from_descriptor(descriptor(0x808b, 0x1234_5678, 0x67), TSS_SELECTOR);
        assert_eq!(tss.base, 0x1234_5678);
        assert!(!tss.s);
        let null = Segment::from_descriptor(0, 0);
        assert!(!null.present);
    }
}
