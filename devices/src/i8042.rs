//! The i8042 keyboard controller, as far as a machine without a PS/2 keyboard needs it: its
//! status and command ports, and the CPU reset line (command `0xfe` on port `0x64`), which is
//! how Linux reboots a PC without ACPI reset support.
//!
//! Registered on the port I/O bus at `0x60` with a length of 5, so that offset 0 is the data
//! port (`0x60`) and offset 4 the command/status port (`0x64`).

use std::sync::Arc;

use crate::bus::BusDevice;

/// Command: pulse the output port, bit 0 low = reset the CPU.
const CMD_RESET_CPU: u8 = 0xfe;
/// Command: read the controller configuration byte.
const CMD_READ_CONFIG: u8 = 0x20;
/// Command: write the controller configuration byte.
const CMD_WRITE_CONFIG: u8 = 0x60;
/// Command: controller self-test; answers 0x55.
const CMD_SELF_TEST: u8 = 0xaa;
/// Status bit: output buffer full (data waiting at port 0x60).
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status bit: system flag (POST passed).
const STATUS_SYSTEM: u8 = 0x04;
/// Status bit: the last write was a command.
const STATUS_COMMAND: u8 = 0x08;

/// What the controller can ask of the machine.
pub trait ResetLine: Send + Sync {
    /// The guest asked for a CPU reset.
    fn reset(&self);
}

/// The i8042 controller.
pub struct I8042 {
    reset: Arc<dyn ResetLine>,
    config: u8,
    output: Option<u8>,
    pending_command: Option<u8>,
    last_was_command: bool,
}

impl I8042 {
    /// A controller whose reset command pulls `reset`.
    pub fn new(reset: Arc<dyn ResetLine>) -> Self {
        I8042 {
            reset,
            config: 0,
            output: None,
            pending_command: None,
            last_was_command: false,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM;
        if self.output.is_some() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        match command {
            CMD_RESET_CPU => self.reset.reset(),
            CMD_READ_CONFIG => self.output = Some(self.config),
            CMD_WRITE_CONFIG => self.pending_command = Some(command),
            CMD_SELF_TEST => self.output = Some(0x55),
            // Other commands (port enables, tests) need no answer from a controller with no
            // devices behind it.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        if self.pending_command.take() == Some(CMD_WRITE_CONFIG) {
            self.config = value;
        }
        // Bytes for a keyboard that is not there are dropped.
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.output.take().unwrap_or(0),
            4 => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 => self.data(value),
            4 => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct CountResets(AtomicUsize);
    impl ResetLine for CountResets {
        fn reset(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn command_fe_resets_the_machine() {
        let resets = Arc::new(CountResets::default());
        let mut dev = I8042::new(resets.clone());
        dev.write(0x60, 4, &[0xfe]);
        assert_eq!(resets.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn configuration_byte_and_self_test() {
        let mut dev = I8042::new(Arc::new(CountResets::default()));
        dev.write(0x60, 4, &[CMD_WRITE_CONFIG]);
        dev.write(0x60, 0, &[0x45]);
        dev.write(0x60, 4, &[CMD_READ_CONFIG]);
        let mut status = [0u8];
        dev.read(0x60, 4, &mut status);
        assert_ne!(status[0] & STATUS_OUTPUT_FULL, 0);
        let mut byte = [0u8];
        dev.read(0x60, 0, &mut byte);
        assert_eq!(byte[0], 0x45);
        dev.write(0x60, 4, &[CMD_SELF_TEST]);
        dev.read(0x60, 0, &mut byte);
        assert_eq!(byte[0], 0x55);
    }

    #[test]
    fn garbage_is_harmless() {
        let resets = Arc::new(CountResets::default());
        let mut dev = I8042::new(resets.clone());
        for value in 0..=255u8 {
            if value != CMD_RESET_CPU {
                dev.write(0x60, 4, &[value]);
            }
            dev.write(0x60, 0, &[value]);
            dev.write(0x60, 2, &[value]);
            let mut wide = [0u8; 8];
            dev.read(0x60, 0, &mut wide);
            dev.read(0x60, 3, &mut wide);
            dev.write(0x60, 0, &[]);
        }
        assert_eq!(resets.0.load(Ordering::SeqCst), 0);
    }
}
