//! Fuzz PCI configuration space as a guest reaches it: the address and data ports
//! 0xcf8/0xcfc and the ECAM window, plus accesses wherever the BARs the guest programs end up
//! decoding on the port and memory buses. Behind the root: either the i440FX with the PIIX
//! functions (ISA bridge, power management with its ACPI PM block, as a firmware machine
//! has) or Vivarium's own host bridge, a bochs display with an option ROM and a virtio-rng.
//!
//! Oracles besides "no panic, no hang": the read-only identity of every function (vendor and
//! device IDs) never changes, and the buses never hold overlapping ranges.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vivarium_devices::acpi_pm::{AcpiPm, AcpiPmPorts};
use vivarium_devices::bus::{Bus, BusKind};
use vivarium_devices::display::bochs::{BochsDisplay, Scanout, ScanoutSink};
use vivarium_devices::pci::i440fx::{I440fxHostBridge, PAM_SEGMENTS, PamListener, PamSegment};
use vivarium_devices::pci::piix::{PIIX_SLOT, PM_FUNCTION, Piix3IsaBridge, Piix4Pm};
use vivarium_devices::pci::{
    CONFIG_ADDRESS_PORT, CONFIG_IO_PORTS, ECAM_BUS_SIZE, MsiSignaller, PciConfigIo, PciConfigMmio,
    PciRoot, PciWindows,
};
use vivarium_devices::virtio::pci::VirtioPciDevice;
use vivarium_devices::virtio::rng::Rng;
use vivarium_devices_fuzz::{Access, Counter, Cursor, guest_memory};

const WINDOWS: PciWindows = PciWindows {
    mem32: (0xc000_0000, 0x2000_0000),
    mem64: (0x100_0000_0000, 0x100_0000_0000),
    io: (0xc000, 0x4000),
};
const ECAM_BASE: u64 = 0xb000_0000;

struct Sink;
impl ScanoutSink for Sink {
    fn set_scanout(&self, _scanout: Option<Scanout>) {}
    fn framebuffer_moved(&self, _address: u64) {}
}

struct Pam;
impl PamListener for Pam {
    fn pam_changed(&self, _segments: &[PamSegment; PAM_SEGMENTS]) {}
}

struct NoMsi;
impl MsiSignaller for NoMsi {
    fn signal_msi(&self, _address: u64, _data: u32) -> std::io::Result<()> {
        Ok(())
    }
}

struct Zeros;
impl std::io::Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        buf.fill(0);
        Ok(buf.len())
    }
}

/// Whether `ranges` (sorted by base) overlap.
fn overlapping(ranges: &[(u64, u64)]) -> bool {
    ranges
        .windows(2)
        .any(|w| u128::from(w[0].0) + u128::from(w[0].1) > u128::from(w[1].0))
}

fn access(bus: &Bus, addr: u64, a: Access) {
    match a {
        Access::Read { len, .. } => {
            let mut b = [0u8; 8];
            bus.read(addr, &mut b[..len]);
        }
        Access::Write { len, value, .. } => {
            bus.write(addr, &value[..len]);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let firmware_machine = c.u8() & 1 != 0;
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let pio = Arc::new(Bus::new(BusKind::Pio));
    let irq = Counter::shared();
    let mut root = if firmware_machine {
        PciRoot::with_host_bridge(
            mmio.clone(),
            pio.clone(),
            WINDOWS,
            Arc::new(Mutex::new(I440fxHostBridge::new(Arc::new(Pam)))),
        )
    } else {
        PciRoot::new(mmio.clone(), pio.clone(), WINDOWS)
    };
    if firmware_machine {
        let pm = Arc::new(Mutex::new(AcpiPm::new(
            irq.clone(),
            irq.clone(),
            irq.clone(),
        )));
        let pm_function = Piix4Pm::new(
            &pio,
            AcpiPmPorts::STANDARD.base(),
            pm,
            u64::from(AcpiPmPorts::LEN),
        )
        .unwrap();
        root.add_device_at(PIIX_SLOT, Arc::new(Mutex::new(Piix3IsaBridge::new())))
            .unwrap();
        root.add_function(PIIX_SLOT, PM_FUNCTION, Arc::new(Mutex::new(pm_function)))
            .unwrap();
    }
    let mut bochs = BochsDisplay::new(1 << 20, (1024, 768), None, Arc::new(Sink)).unwrap();
    let mut rom = vec![0u8; 3000];
    rom[..3].copy_from_slice(&[0x55, 0xaa, 6]);
    bochs.set_option_rom(rom).unwrap();
    root.add_device(Arc::new(Mutex::new(bochs))).unwrap();
    let memory = Arc::new(guest_memory(&[]));
    let rng = VirtioPciDevice::new(
        Box::new(Rng::with_source(Box::new(Zeros))),
        memory,
        Arc::new(NoMsi),
    )
    .unwrap();
    root.add_device(Arc::new(Mutex::new(rng))).unwrap();
    let root = Arc::new(Mutex::new(root));
    pio.insert(
        CONFIG_ADDRESS_PORT,
        CONFIG_IO_PORTS,
        Arc::new(Mutex::new(PciConfigIo::new(root.clone()))),
    )
    .unwrap();
    mmio.insert(
        ECAM_BASE,
        ECAM_BUS_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
    )
    .unwrap();

    let ids = |root: &Mutex<PciRoot>| -> Vec<[u8; 4]> {
        let root = root.lock().unwrap();
        let mut ids = Vec::new();
        for dev in 0..32 {
            for func in 0..8 {
                let mut id = [0u8; 4];
                root.config_read(dev, func, 0, &mut id);
                ids.push(id);
            }
        }
        ids
    };
    let before = ids(&root);

    while !c.is_empty() {
        match c.u8() % 6 {
            // Select a function and register through 0xcf8, mostly a well-formed address.
            0 => {
                let (dev, func, reg) = (c.u8() % 32, c.u8() % 8, c.u8());
                let raw = c.u8();
                let address = if raw & 0x80 == 0 {
                    0x8000_0000 | u32::from(dev) << 11 | u32::from(func) << 8 | u32::from(reg)
                } else {
                    u32::from(raw) << 24 | u32::from(dev) << 16 | u32::from(reg)
                };
                pio.write(CONFIG_ADDRESS_PORT, &address.to_le_bytes());
            }
            // Any access in the eight configuration ports.
            1 => {
                let a = c.access(CONFIG_IO_PORTS);
                let (Access::Read { offset, .. } | Access::Write { offset, .. }) = a;
                access(&pio, CONFIG_ADDRESS_PORT + offset, a);
            }
            // ECAM.
            2 => {
                let a = c.access(ECAM_BUS_SIZE + 0x10);
                let (Access::Read { offset, .. } | Access::Write { offset, .. }) = a;
                access(&mmio, ECAM_BASE + offset, a);
            }
            // Wherever the BARs decode: the start of the 32-bit window, anywhere below 4 GiB.
            3 => {
                let a = c.access(1 << 32);
                let (Access::Read { offset, .. } | Access::Write { offset, .. }) = a;
                let addr = if c.u8() & 1 == 0 {
                    WINDOWS.mem32.0 + offset % 0x20_0000
                } else {
                    offset
                };
                access(&mmio, addr, a);
            }
            // The 64-bit window (the virtio BAR's home).
            4 => {
                let a = c.access(0x10_0000);
                let (Access::Read { offset, .. } | Access::Write { offset, .. }) = a;
                access(&mmio, WINDOWS.mem64.0 + offset, a);
            }
            // Ports: the I/O window and the ACPI PM block wherever PMBA put it.
            _ => {
                let a = c.access(0x1_0000);
                let (Access::Read { offset, .. } | Access::Write { offset, .. }) = a;
                access(&pio, offset, a);
            }
        }
    }

    assert_eq!(before, ids(&root), "a function's identity changed");
    assert!(!overlapping(&mmio.ranges()), "overlapping MMIO ranges");
    assert!(!overlapping(&pio.ranges()), "overlapping port ranges");
});
