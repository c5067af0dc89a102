//! Fuzz the ACPI power-management block (PM1a event and control registers, the PM timer and
//! the reset register): reads and writes of any width at any offset of its 16 ports,
//! interleaved with presses of the power button.
//!
//! Oracles besides "no panic": the timer is read-only and counts up (modulo its wrap), the
//! control register always reads with SCI_EN set, and a write never sets status bits (they
//! are write-1-to-clear).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vivarium_devices::acpi_pm::{AcpiPm, AcpiPmPorts, SCI_EN};
use vivarium_devices::bus::BusDevice;
use vivarium_devices_fuzz::{Access, Counter, Cursor, perform};

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let irq = Counter::shared();
    let mut pm = AcpiPm::new(irq.clone(), irq.clone(), irq.clone());
    let ports = AcpiPmPorts::STANDARD;
    let base = u64::from(ports.base());
    let at = |port: u16| u64::from(port - ports.base());
    let read16 = |pm: &mut AcpiPm, port: u16| {
        let mut b = [0u8; 2];
        pm.read(base, at(port), &mut b);
        u16::from_le_bytes(b)
    };
    while !c.is_empty() {
        let op = c.u8();
        if op == 0xff {
            pm.press_power_button();
            continue;
        }
        let status_before = read16(&mut pm, ports.pm1a_evt());
        let access = c.access(u64::from(AcpiPmPorts::LEN) + 2);
        perform(&mut pm, base, access);
        if let Access::Write { .. } = access {
            let status_after = read16(&mut pm, ports.pm1a_evt());
            assert_eq!(
                status_after & !status_before,
                0,
                "a write set status bits ({status_before:#x} -> {status_after:#x})"
            );
        }
        assert_ne!(
            read16(&mut pm, ports.pm1a_cnt()) & SCI_EN,
            0,
            "SCI_EN clear"
        );
        let _ = pm.power_button_enabled();
    }
});
