//! Fuzz fw_cfg, the firmware configuration interface (ports 0x510-0x51b): item selection,
//! data port reads of any width, DMA descriptors anywhere in guest memory (select, read,
//! skip, write, with any length and destination, through the 64-bit register or its two
//! halves), and accesses of any width at any offset. The items include named files whose
//! names and contents come from the input; guest memory has a hole between two regions.
//!
//! Oracles besides "no panic, no hang, no out-of-bounds host access": file names are refused
//! or found again, and whatever the guest did, selecting the signature item and reading it
//! through the data port gives "QEMU".
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vivarium_devices::bus::BusDevice;
use vivarium_devices::fw_cfg::{FwCfg, X86_PORT, X86_PORT_LEN, key};
use vivarium_devices_fuzz::{Cursor, guest_memory, perform};

const BASE: u64 = X86_PORT as u64;

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let files = c.u8() % 4;
    let mut named = Vec::new();
    for _ in 0..files {
        let name_len = usize::from(c.u8() % 64);
        let name = String::from_utf8_lossy(c.bytes(name_len)).into_owned();
        let data_len = usize::from(c.u16() % 0x2000);
        named.push((name, c.bytes(data_len).to_vec()));
    }
    let ops_len = usize::from(c.u16());
    let ops = c.bytes(ops_len);
    let memory = Arc::new(guest_memory(c.rest()));
    let mut dev = FwCfg::new(memory);
    dev.set_u16(key::NB_CPUS, 2);
    dev.set_u64(key::RAM_SIZE, 128 << 20);
    for (name, data) in named {
        if dev.add_file(&name, data.clone()).is_ok() {
            assert_eq!(
                dev.file(&name),
                Some(&data[..]),
                "file `{name}` not found again"
            );
        }
    }

    let mut c = Cursor::new(ops);
    while !c.is_empty() {
        match c.u8() % 6 {
            0 => dev.write(BASE, 0, &c.u16().to_le_bytes()),
            1 => {
                let mut b = [0u8; 8];
                let len = c.width();
                dev.read(BASE, 1, &mut b[..len]);
            }
            2 => dev.write(BASE, 4, &c.guest_address().to_be_bytes()),
            3 => {
                let address = c.guest_address();
                dev.write(BASE, 4, &((address >> 32) as u32).to_be_bytes());
                dev.write(BASE, 8, &(address as u32).to_be_bytes());
            }
            4 => {
                let access = c.access(X86_PORT_LEN + 4);
                perform(&mut dev, BASE, access);
            }
            _ => {
                dev.write(BASE, 0, &key::SIGNATURE.to_le_bytes());
                let mut sig = [0u8; 4];
                dev.read(BASE, 1, &mut sig);
                assert_eq!(&sig, b"QEMU", "the signature item");
            }
        }
    }
});
