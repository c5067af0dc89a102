use super::loader::{TableLoader, Zone, run_script};
use super::*;

fn device() -> (FwCfg, Arc<GuestMemoryMmap>) {
    let memory =
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory"));
    (FwCfg::new(memory.clone()), memory)
}

fn select(dev: &mut FwCfg, key: u16) {
    dev.write(0, 0, &key.to_le_bytes());
}

fn read_bytes(dev: &mut FwCfg, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let mut b = [0u8];
            dev.read(0, 1, &mut b);
            b[0]
        })
        .collect()
}

fn dma(dev: &mut FwCfg, memory: &GuestMemoryMmap, at: u64, control: u32, len: u32, dest: u64) {
    let mut d = Vec::new();
    d.extend_from_slice(&control.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&dest.to_be_bytes());
    memory.write_slice(&d, GuestAddress(at)).unwrap();
    dev.write(0, 4, &((at >> 32) as u32).to_be_bytes());
    dev.write(0, 8, &(at as u32).to_be_bytes());
}

fn status(memory: &GuestMemoryMmap, at: u64) -> u32 {
    let mut b = [0u8; 4];
    memory.read_slice(&mut b, GuestAddress(at)).unwrap();
    u32::from_be_bytes(b)
}

#[test]
fn signature_and_features_through_the_data_port() {
    let (mut dev, _) = device();
    select(&mut dev, key::SIGNATURE);
    assert_eq!(read_bytes(&mut dev, 4), b"QEMU");
    // Past the end: zeros.
    assert_eq!(read_bytes(&mut dev, 2), [0, 0]);
    select(&mut dev, key::ID);
    assert_eq!(read_bytes(&mut dev, 4), [3, 0, 0, 0]);
    let mut sig = [0u8; 8];
    dev.read(0, 4, &mut sig);
    assert_eq!(&sig, b"QEMU CFG");
}

#[test]
fn the_directory_lists_files_sorted_with_sizes_and_keys() {
    let (mut dev, _) = device();
    let b = dev
        .add_file("bootorder", b"/pci@i0cf8/*@5\n".to_vec())
        .unwrap();
    let a = dev.add_file("etc/e820", vec![1; 20]).unwrap();
    assert_eq!(b, key::FILE_FIRST);
    assert_eq!(a, key::FILE_FIRST + 1);
    select(&mut dev, key::FILE_DIR);
    let dir = read_bytes(&mut dev, 4 + 2 * 64);
    assert_eq!(u32::from_be_bytes(dir[0..4].try_into().unwrap()), 2);
    let entry = |i: usize| &dir[4 + 64 * i..4 + 64 * (i + 1)];
    assert_eq!(u32::from_be_bytes(entry(0)[0..4].try_into().unwrap()), 15);
    assert_eq!(u16::from_be_bytes(entry(0)[4..6].try_into().unwrap()), b);
    assert!(entry(0)[8..].starts_with(b"bootorder\0"));
    assert_eq!(u32::from_be_bytes(entry(1)[0..4].try_into().unwrap()), 20);
    assert!(entry(1)[8..].starts_with(b"etc/e820\0"));
}

#[test]
fn bad_file_names_are_refused() {
    let (mut dev, _) = device();
    assert!(dev.add_file("", vec![]).is_err());
    assert!(dev.add_file(&"x".repeat(56), vec![]).is_err());
    assert!(dev.add_file("a\0b", vec![]).is_err());
    dev.add_file("a", vec![]).unwrap();
    assert_eq!(
        dev.add_file("a", vec![]),
        Err(FwCfgError::Duplicate("a".into()))
    );
}

#[test]
fn dma_selects_reads_skips_and_zero_fills() {
    let (mut dev, memory) = device();
    let key = dev.add_file("etc/data", (0u8..100).collect()).unwrap();
    let control = (u32::from(key) << 16) | DMA_SELECT | DMA_READ;
    dma(&mut dev, &memory, 0x1000, control, 10, 0x2000);
    assert_eq!(status(&memory, 0x1000), 0);
    let mut got = [0u8; 10];
    memory.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Skip 80, then read 20: 10 bytes of data, then zeros.
    dma(&mut dev, &memory, 0x1000, DMA_SKIP, 80, 0);
    memory
        .write_slice(&[0xaa; 20], GuestAddress(0x3000))
        .unwrap();
    dma(&mut dev, &memory, 0x1000, DMA_READ, 20, 0x3000);
    let mut got = [0u8; 20];
    memory.read_slice(&mut got, GuestAddress(0x3000)).unwrap();
    assert_eq!(&got[..10], &(90u8..100).collect::<Vec<_>>()[..]);
    assert_eq!(&got[10..], &[0; 10]);
    // The data port continues where DMA left off: at the end.
    assert_eq!(read_bytes(&mut dev, 1), [0]);
}

#[test]
fn a_64_bit_dma_write_starts_the_transfer_too() {
    let (mut dev, memory) = device();
    let mut d = Vec::new();
    d.extend_from_slice(&((u32::from(key::SIGNATURE) << 16) | DMA_SELECT | DMA_READ).to_be_bytes());
    d.extend_from_slice(&4u32.to_be_bytes());
    d.extend_from_slice(&0x5000u64.to_be_bytes());
    memory.write_slice(&d, GuestAddress(0x4000)).unwrap();
    dev.write(0, 4, &0x4000u64.to_be_bytes());
    let mut got = [0u8; 4];
    memory.read_slice(&mut got, GuestAddress(0x5000)).unwrap();
    assert_eq!(&got, b"QEMU");
    assert_eq!(status(&memory, 0x4000), 0);
}

#[test]
fn hostile_dma_gets_the_error_bit_and_changes_nothing_else() {
    let (mut dev, memory) = device();
    dev.add_file("etc/x", vec![7; 16]).unwrap();
    // Destination outside guest memory.
    dma(
        &mut dev,
        &memory,
        0x1000,
        DMA_SELECT | DMA_READ | (0x20 << 16),
        16,
        0xffff_f000,
    );
    assert_eq!(status(&memory, 0x1000), DMA_ERROR);
    // A destination that wraps around the address space.
    dma(&mut dev, &memory, 0x1000, DMA_READ, 16, u64::MAX - 3);
    assert_eq!(status(&memory, 0x1000), DMA_ERROR);
    // A huge length.
    dma(&mut dev, &memory, 0x1000, DMA_READ, u32::MAX, 0x2000);
    assert_eq!(status(&memory, 0x1000), DMA_ERROR);
    // Writes are refused.
    dma(&mut dev, &memory, 0x1000, DMA_WRITE, 4, 0x2000);
    assert_eq!(status(&memory, 0x1000), DMA_ERROR);
    assert_eq!(dev.file("etc/x"), Some(&[7u8; 16][..]));
    // A descriptor outside memory is ignored (there is nowhere to report to).
    dev.write(0, 4, &0xffff_ff00u64.to_be_bytes());
    // Unknown selectors read as empty; odd access sizes read zeros.
    select(&mut dev, 0x7777);
    assert_eq!(read_bytes(&mut dev, 3), [0, 0, 0]);
    let mut odd = [0xffu8; 3];
    dev.read(0, 5, &mut odd);
    assert_eq!(odd, [0, 0, 0]);
    dev.write(0, 1, &[1, 2, 3]);
}

#[test]
fn loader_script_links_and_checksums_a_blob() {
    // A "table" of 16 bytes whose byte 9 is its checksum and whose bytes 4..8 point at
    // offset 0 of the same file; an "rsdp" pointing at offset 4 of the table file.
    let mut table = vec![0u8; 16];
    table[4..8].copy_from_slice(&0u32.to_le_bytes());
    let mut rsdp = vec![0u8; 8];
    rsdp[0..4].copy_from_slice(&4u32.to_le_bytes());
    let mut script = TableLoader::new();
    script
        .allocate("etc/acpi/rsdp", 16, Zone::FSegment)
        .unwrap();
    script.allocate("etc/acpi/tables", 64, Zone::High).unwrap();
    script
        .add_pointer("etc/acpi/tables", "etc/acpi/tables", 4, 4)
        .unwrap();
    script.add_checksum("etc/acpi/tables", 9, 0, 16).unwrap();
    script
        .add_pointer("etc/acpi/rsdp", "etc/acpi/tables", 0, 4)
        .unwrap();
    let bytes = script.into_bytes();
    assert_eq!(bytes.len(), 5 * 128);
    let files = |name: &str| match name {
        "etc/acpi/rsdp" => Some(rsdp.clone()),
        "etc/acpi/tables" => Some(table.clone()),
        _ => None,
    };
    let mut place = |_: &str, _: u32, zone: Zone, _: usize| match zone {
        Zone::FSegment => 0xf_0000,
        Zone::High => 0x7fe_0000,
    };
    let placed = run_script(&bytes, &files, &mut place).unwrap();
    let t = &placed[1].2;
    assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x7fe_0000);
    assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    let r = &placed[0].2;
    assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 0x7fe_0004);
}
