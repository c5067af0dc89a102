//! Wiring of the legacy PC devices (serial port, i8042) onto the port I/O bus and KVM's
//! interrupt controllers.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vivarium_devices::bus::Bus;
use vivarium_devices::i8042::{I8042, ResetLine};
use vivarium_devices::serial::Serial;

use crate::error::{Error, Result};
use crate::machine::IrqfdLine;

/// COM1's port range and interrupt.
const COM1_PORT: u64 = 0x3f8;
const COM1_IRQ: u32 = 4;
/// The i8042's data port; its command port is 4 above.
const I8042_PORT: u64 = 0x60;

fn bus_error(what: &str) -> impl FnOnce(vivarium_devices::Error) -> Error + '_ {
    move |e| Error::Setup(format!("could not place the {what}: {e}"))
}

/// Adds COM1 (writing to `serial_output`) and the i8042 (whose reset command calls `reset`)
/// to the port I/O bus.
pub fn attach_legacy_devices(
    vm: &VmFd,
    pio: &Bus,
    serial_output: impl Write + Send + 'static,
    reset: Arc<dyn ResetLine>,
) -> Result<Arc<Mutex<Serial>>> {
    let irq = Arc::new(IrqfdLine::new(vm, COM1_IRQ)?);
    let serial = Arc::new(Mutex::new(Serial::new(irq, Box::new(serial_output))));
    pio.insert(COM1_PORT, 8, serial.clone())
        .map_err(bus_error("serial port"))?;
    let i8042 = Arc::new(Mutex::new(I8042::new(reset)));
    pio.insert(I8042_PORT, 5, i8042)
        .map_err(bus_error("keyboard controller"))?;
    Ok(serial)
}
