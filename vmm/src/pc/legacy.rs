//! The PC's legacy devices on the port bus: COM1, the i8042 with its PS/2 keyboard and mouse,
//! the CMOS real-time clock, the ACPI power-management block and, for UEFI, the PIIX
//! functions that carry it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vivarium_devices::acpi_pm::{AcpiPm, AcpiPmPorts, PowerOff};
use vivarium_devices::bus::Bus;
use vivarium_devices::i8042::{I8042, Ps2Input, ResetLine};
use vivarium_devices::rtc::CmosRtc;
use vivarium_devices::serial::Serial;
use vivarium_hypervisor::Vm;

use crate::devices::{BoardFunction, bus_error};
use crate::error::Result;
use crate::interrupts::device_irq;
use crate::pc::layout;

/// Port window for PCI I/O BARs.
pub const PCI_IO_START: u64 = 0xc000;
/// Its size.
pub const PCI_IO_SIZE: u64 = 0x4000;

/// COM1's port range and interrupt.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;
/// The i8042's data port; its command port is 4 above.
const I8042_PORT: u64 = 0x60;
/// The i8042's interrupts: keyboard bytes on IRQ 1, mouse bytes on IRQ 12 (ISA, edge).
const I8042_KEYBOARD_IRQ: u32 = 1;
const I8042_MOUSE_IRQ: u32 = 12;
/// The CMOS real-time clock's index port (data at +1) and interrupt.
const RTC_PORT: u64 = 0x70;
const RTC_IRQ: u32 = 8;

/// Adds COM1 (writing to `serial_output`, IRQ 4), the i8042 with its PS/2 keyboard (IRQ 1)
/// and mouse (IRQ 12), whose reset command calls `reset`, and the CMOS real-time clock
/// (IRQ 8, its battery-backed RAM holding the memory size of `memory_size` bytes of RAM, as
/// firmware reads it) to the port I/O bus. Returns the host's input handle for the PS/2
/// devices.
pub fn attach_legacy_devices(
    vm: &dyn Vm,
    pio: &Bus,
    serial_output: impl Write + Send + 'static,
    reset: Arc<dyn ResetLine>,
    memory_size: u64,
) -> Result<LegacyDevices> {
    let irq = device_irq(vm, COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(serial_output))));
    pio.insert(COM1_PORT, 8, serial.clone())
        .map_err(bus_error("serial port"))?;
    let keyboard_irq = device_irq(vm, I8042_KEYBOARD_IRQ)?;
    let mouse_irq = device_irq(vm, I8042_MOUSE_IRQ)?;
    let i8042 = I8042::new(reset, keyboard_irq, mouse_irq);
    let ps2_input = i8042.input();
    pio.insert(I8042_PORT, 5, Arc::new(Mutex::new(i8042)))
        .map_err(bus_error("keyboard controller"))?;
    let rtc_irq = device_irq(vm, RTC_IRQ)?;
    let mut rtc = CmosRtc::new(rtc_irq);
    rtc.set_memory_size(
        layout::low_ram_end(memory_size),
        memory_size - layout::low_ram_end(memory_size),
    );
    pio.insert(RTC_PORT, 2, Arc::new(Mutex::new(rtc)))
        .map_err(bus_error("real-time clock"))?;
    Ok(LegacyDevices { serial, ps2_input })
}

/// The legacy devices the host talks to while the machine runs.
pub struct LegacyDevices {
    /// COM1, where console input goes.
    pub serial: Arc<Mutex<Serial>>,
    /// The i8042's keyboard and mouse input.
    pub ps2_input: Ps2Input,
}

/// The guest asking to enter S5 (ACPI power off).
pub struct GuestPowerOff(pub Box<dyn Fn() + Send + Sync>);

impl PowerOff for GuestPowerOff {
    fn power_off(&self) {
        (self.0)()
    }
}

/// Adds the ACPI power-management block (power button, S5, PM timer, reset register).
pub fn attach_acpi_pm(
    vm: &dyn Vm,
    pio: &Bus,
    power_off: Arc<dyn PowerOff>,
    reset: Arc<dyn ResetLine>,
    ports: Option<AcpiPmPorts>,
) -> Result<Arc<Mutex<AcpiPm>>> {
    let sci = device_irq(vm, crate::pc::acpi::SCI_IRQ)?;
    let pm = Arc::new(Mutex::new(AcpiPm::new(sci, power_off, reset)));
    if let Some(ports) = ports {
        pio.insert(
            u64::from(ports.base()),
            u64::from(AcpiPmPorts::LEN),
            pm.clone(),
        )
        .map_err(bus_error("ACPI power management block"))?;
    }
    Ok(pm)
}

/// The PIIX south bridge functions UEFI firmware expects at 00:01.0 and 00:01.3 (see
/// `vivarium_devices::pci::piix`), with the ACPI PM block `pm` placed at `ports` through the
/// power-management function's PMBA.
pub fn piix_functions(
    pio: &Arc<Bus>,
    pm: Arc<Mutex<AcpiPm>>,
    ports: AcpiPmPorts,
) -> Result<Vec<BoardFunction>> {
    use vivarium_devices::pci::piix::{PIIX_SLOT, PM_FUNCTION, Piix3IsaBridge, Piix4Pm};
    let pm_function = Piix4Pm::new(pio, ports.base(), pm, u64::from(AcpiPmPorts::LEN))
        .map_err(bus_error("ACPI power management block"))?;
    Ok(vec![
        BoardFunction {
            what: "PIIX3 ISA bridge",
            slot: PIIX_SLOT,
            function: 0,
            device: Arc::new(Mutex::new(Piix3IsaBridge::new())),
        },
        BoardFunction {
            what: "PIIX4 power management",
            slot: PIIX_SLOT,
            function: PM_FUNCTION,
            device: Arc::new(Mutex::new(pm_function)),
        },
    ])
}
