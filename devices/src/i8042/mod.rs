//! The i8042 PS/2 controller of a PC with a PS/2 keyboard on its first port and a PS/2
//! wheel mouse on its second (AUX) port, and the CPU reset line the controller drives.
//!
//! Registered on the port I/O bus at `0x60` with a length of 5, so that offset 0 is the data
//! port (`0x60`) and offset 4 the command/status port (`0x64`). Offsets 1-3 (the PC's
//! port `0x61`, which the in-kernel PIT answers, and two unused ports) read `0xff`.
//!
//! ```text
//!  host (app) ── Ps2Input ──┐                       ┌── IrqLine 1  (keyboard byte)
//!                           ▼                       │
//!               Keyboard queue ─► translate ─┐      │
//!               Mouse queue ─────────────────┼─► output buffer ─► port 0x60 reads
//!               controller replies ──────────┘      │
//!                                                   └── IrqLine 12 (mouse byte)
//! ```
//!
//! * The controller has one output buffer. Its own replies (configuration byte, self
//!   tests, `D2`/`D3` loopback), then keyboard bytes, then mouse bytes move into it one at
//!   a time: the next byte enters when the guest reads the current one from port `0x60`.
//!   Keyboard and mouse bytes wait in bounded queues in the devices; a port disabled in
//!   the configuration byte keeps its device's bytes waiting.
//! * A byte entering the output buffer pulses the keyboard or mouse interrupt line if the
//!   configuration byte enables it (bits 0 and 1); enabling an interrupt while a byte of
//!   that port waits pulses it too. The lines are edge-triggered (ISA IRQ 1 and 12).
//! * Keyboard bytes are scancode set 2 and translated to set 1 when configuration bit 6
//!   is set (the power-on value, as a BIOS leaves it).
//! * Command `FE` (and every `Fx` pulse command with bit 0 clear) and an output-port write
//!   (`D1`) with bit 0 clear reset the CPU through [`ResetLine`]. The A20 bit of the output
//!   port is stored and read back; the machine does not wrap memory at 1 MiB.
//!
//! The host injects keys and mouse movement through [`Ps2Input`], a cheap clonable handle
//! usable from any thread while a vCPU thread does port I/O. Interrupt lines and the reset
//! line are always pulled after the device's state lock is released.

pub mod keyboard;
pub mod keys;
pub mod mouse;
mod queue;
mod translate;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use keyboard::KeyboardLeds;
pub use keys::Key;
pub use mouse::MouseButtons;

use crate::bus::BusDevice;
use crate::{Error, IrqLine, Result, lock};
use keyboard::Keyboard;
use mouse::{MotionRefused, Mouse};
use translate::Translator;

/// What the controller can ask of the machine.
pub trait ResetLine: Send + Sync {
    /// The guest asked for a CPU reset.
    fn reset(&self);
}

/// Status: output buffer full (a byte waits at port 0x60).
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status: system flag (mirrors configuration bit 2, set by the self test).
const STATUS_SYSTEM: u8 = 0x04;
/// Status: the last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;
/// Status: keyboard not inhibited (this PC has no keylock).
const STATUS_UNLOCKED: u8 = 0x10;
/// Status: the byte in the output buffer comes from the AUX (mouse) port.
const STATUS_AUX_DATA: u8 = 0x20;

/// Configuration: keyboard interrupt (IRQ 1) enabled.
const CONFIG_KBD_INT: u8 = 0x01;
/// Configuration: mouse interrupt (IRQ 12) enabled.
const CONFIG_AUX_INT: u8 = 0x02;
/// Configuration: system flag.
const CONFIG_SYSTEM: u8 = 0x04;
/// Configuration: keyboard port clock disabled.
const CONFIG_KBD_DISABLED: u8 = 0x10;
/// Configuration: mouse port clock disabled.
const CONFIG_AUX_DISABLED: u8 = 0x20;
/// Configuration: translate keyboard bytes to set 1.
const CONFIG_TRANSLATE: u8 = 0x40;
/// The configuration a PC BIOS leaves: keyboard interrupt on, system flag, translation.
const POWER_ON_CONFIG: u8 = CONFIG_KBD_INT | CONFIG_SYSTEM | CONFIG_TRANSLATE;

/// Input port: bit 7 keyboard not inhibited, bit 5 no manufacturing jumper.
const INPUT_PORT: u8 = 0xa0;
/// Output port: bit 0 CPU not in reset.
const OUTPUT_PORT_RESET: u8 = 0x01;
/// Output port: A20 gate enabled.
const OUTPUT_PORT_A20: u8 = 0x02;
/// Output port: bit 4 keyboard output buffer full, bit 5 mouse output buffer full.
const OUTPUT_PORT_KBD_FULL: u8 = 0x10;
const OUTPUT_PORT_AUX_FULL: u8 = 0x20;
/// Output port at power-on: not in reset, A20 on, clock and data lines idle (high).
const POWER_ON_OUTPUT_PORT: u8 = 0xc0 | OUTPUT_PORT_A20 | OUTPUT_PORT_RESET;

/// The controller's internal RAM (byte 0 is the configuration byte).
const RAM_BYTES: usize = 32;
/// Controller replies held at once; a guest that issues commands and never reads
/// loses the excess rather than growing memory.
const MAX_REPLIES: usize = 16;

const CMD_READ_RAM: u8 = 0x20;
const CMD_READ_RAM_LAST: u8 = 0x3f;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_WRITE_RAM_LAST: u8 = 0x7f;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

/// Self test passed.
const SELF_TEST_OK: u8 = 0x55;
/// Interface test: no error.
const INTERFACE_OK: u8 = 0x00;

/// Where a byte in the output buffer came from, which decides its interrupt and the
/// status register's AUX bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    Keyboard,
    Aux,
}

/// What an access asks of the outside world once the state lock is released.
#[derive(Debug, Default)]
struct Effects {
    keyboard_irq: bool,
    aux_irq: bool,
    reset: bool,
}

/// The controller with its two devices.
#[derive(Debug)]
struct Controller {
    ram: [u8; RAM_BYTES],
    output: Option<(u8, Port)>,
    /// The last byte read from the data port, which a read of an empty buffer repeats.
    last_output: u8,
    replies: VecDeque<(u8, Port)>,
    /// A command waiting for its data byte at port 0x60.
    pending: Option<u8>,
    last_was_command: bool,
    output_port: u8,
    translator: Translator,
    keyboard: Keyboard,
    mouse: Mouse,
}

impl Default for Controller {
    fn default() -> Self {
        let mut ram = [0; RAM_BYTES];
        ram[0] = POWER_ON_CONFIG;
        Controller {
            ram,
            output: None,
            last_output: 0,
            replies: VecDeque::with_capacity(MAX_REPLIES),
            pending: None,
            last_was_command: false,
            output_port: POWER_ON_OUTPUT_PORT,
            translator: Translator::default(),
            keyboard: Keyboard::default(),
            mouse: Mouse::default(),
        }
    }
}

impl Controller {
    fn config(&self) -> u8 {
        self.ram[0]
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.config() & CONFIG_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        match self.output {
            Some((_, Port::Keyboard)) => status |= STATUS_OUTPUT_FULL,
            Some((_, Port::Aux)) => status |= STATUS_OUTPUT_FULL | STATUS_AUX_DATA,
            None => {}
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn interrupt_enabled(&self, port: Port) -> bool {
        match port {
            Port::Keyboard => self.config() & CONFIG_KBD_INT != 0,
            Port::Aux => self.config() & CONFIG_AUX_INT != 0,
        }
    }

    fn raise(&self, port: Port, fx: &mut Effects) {
        if self.interrupt_enabled(port) {
            match port {
                Port::Keyboard => fx.keyboard_irq = true,
                Port::Aux => fx.aux_irq = true,
            }
        }
    }

    /// Moves the next waiting byte into an empty output buffer.
    fn refill(&mut self, fx: &mut Effects) {
        if self.output.is_some() {
            return;
        }
        let next = self.replies.pop_front().or_else(|| {
            if self.config() & CONFIG_KBD_DISABLED == 0 {
                self.next_keyboard_byte().map(|b| (b, Port::Keyboard))
            } else {
                None
            }
        });
        let next = next.or_else(|| {
            if self.config() & CONFIG_AUX_DISABLED == 0 {
                self.mouse.pop().map(|b| (b, Port::Aux))
            } else {
                None
            }
        });
        if let Some((byte, port)) = next {
            self.output = Some((byte, port));
            self.raise(port, fx);
        }
    }

    /// The keyboard's next byte as the CPU sees it (translated if configured). A break
    /// prefix only marks the byte after it, so it is consumed without output; the loop
    /// ends because every iteration takes a byte from the bounded keyboard queue.
    fn next_keyboard_byte(&mut self) -> Option<u8> {
        loop {
            let byte = self.keyboard.pop()?;
            if self.config() & CONFIG_TRANSLATE == 0 {
                return Some(byte);
            }
            if let Some(translated) = self.translator.feed(byte) {
                return Some(translated);
            }
        }
    }

    fn reply(&mut self, byte: u8, port: Port, fx: &mut Effects) {
        if self.replies.len() < MAX_REPLIES {
            self.replies.push_back((byte, port));
        } else {
            tracing::debug!("i8042: reply {byte:#04x} dropped, the guest does not read");
        }
        self.refill(fx);
    }

    fn set_config(&mut self, config: u8, fx: &mut Effects) {
        let old = self.config();
        self.ram[0] = config;
        if (old ^ config) & CONFIG_TRANSLATE != 0 {
            self.translator.reset();
        }
        // The interrupt follows "output buffer full and enabled": enabling it while a
        // byte waits is a rising edge.
        if let Some((_, port)) = self.output {
            let bit = match port {
                Port::Keyboard => CONFIG_KBD_INT,
                Port::Aux => CONFIG_AUX_INT,
            };
            if old & bit == 0 && config & bit != 0 {
                self.raise(port, fx);
            }
        }
        self.refill(fx);
    }

    fn output_port(&self) -> u8 {
        let mut value = self.output_port & !(OUTPUT_PORT_KBD_FULL | OUTPUT_PORT_AUX_FULL);
        match self.output {
            Some((_, Port::Keyboard)) => value |= OUTPUT_PORT_KBD_FULL,
            Some((_, Port::Aux)) => value |= OUTPUT_PORT_AUX_FULL,
            None => {}
        }
        value
    }

    fn read_data(&mut self, fx: &mut Effects) -> u8 {
        if let Some((byte, _)) = self.output.take() {
            self.last_output = byte;
        }
        self.refill(fx);
        self.last_output
    }

    fn command(&mut self, command: u8, fx: &mut Effects) {
        self.last_was_command = true;
        self.pending = None;
        match command {
            CMD_READ_RAM..=CMD_READ_RAM_LAST => {
                let value = self.ram[usize::from(command - CMD_READ_RAM)];
                self.reply(value, Port::Keyboard, fx);
            }
            CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST
            | CMD_WRITE_OUTPUT_PORT
            | CMD_WRITE_KBD_OUTPUT
            | CMD_WRITE_AUX_OUTPUT
            | CMD_WRITE_AUX => self.pending = Some(command),
            CMD_AUX_DISABLE => self.set_config(self.config() | CONFIG_AUX_DISABLED, fx),
            CMD_AUX_ENABLE => self.set_config(self.config() & !CONFIG_AUX_DISABLED, fx),
            CMD_AUX_TEST | CMD_KBD_TEST => self.reply(INTERFACE_OK, Port::Keyboard, fx),
            CMD_SELF_TEST => {
                self.ram[0] |= CONFIG_SYSTEM;
                self.reply(SELF_TEST_OK, Port::Keyboard, fx);
            }
            CMD_KBD_DISABLE => self.set_config(self.config() | CONFIG_KBD_DISABLED, fx),
            CMD_KBD_ENABLE => self.set_config(self.config() & !CONFIG_KBD_DISABLED, fx),
            CMD_READ_INPUT_PORT => self.reply(INPUT_PORT, Port::Keyboard, fx),
            CMD_READ_OUTPUT_PORT => {
                let value = self.output_port();
                self.reply(value, Port::Keyboard, fx);
            }
            CMD_PULSE_FIRST..=0xff => {
                // Bits 0-3 clear are pulsed low; bit 0 is the CPU reset line.
                if command & OUTPUT_PORT_RESET == 0 {
                    fx.reset = true;
                }
            }
            other => tracing::debug!("i8042: command {other:#04x} ignored"),
        }
    }

    fn write_data(&mut self, value: u8, fx: &mut Effects) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(command @ CMD_WRITE_RAM..=CMD_WRITE_RAM_LAST) => {
                let index = usize::from(command - CMD_WRITE_RAM);
                if index == 0 {
                    self.set_config(value, fx);
                } else {
                    self.ram[index] = value;
                }
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET == 0 {
                    fx.reset = true;
                }
            }
            Some(CMD_WRITE_KBD_OUTPUT) => self.reply(value, Port::Keyboard, fx),
            Some(CMD_WRITE_AUX_OUTPUT) => self.reply(value, Port::Aux, fx),
            Some(CMD_WRITE_AUX) => {
                self.mouse.write(value);
                self.refill(fx);
            }
            _ => {
                self.keyboard.write(value);
                self.refill(fx);
            }
        }
    }

    /// A host key press (`down`) or release, through the keyboard.
    fn host_key(&mut self, key: Key, down: bool, fx: &mut Effects) -> Result<()> {
        if !self.keyboard.scanning() {
            return Err(Error::InputDisabled("keyboard"));
        }
        let queued = if down {
            self.keyboard.press(key)
        } else {
            self.keyboard.release(key)
        };
        // An overrun code may have been queued even when the key was not.
        self.refill(fx);
        if queued {
            Ok(())
        } else {
            Err(Error::InputQueueFull("keyboard"))
        }
    }
}

/// The state shared by the bus device and the input handles.
struct Shared {
    state: Mutex<Controller>,
    keyboard_irq: Arc<dyn IrqLine>,
    aux_irq: Arc<dyn IrqLine>,
    reset: Arc<dyn ResetLine>,
}

impl Shared {
    /// Runs `f` on the controller under its lock, then pulls the lines it asked for with
    /// the lock released.
    fn with<R>(&self, f: impl FnOnce(&mut Controller, &mut Effects) -> R) -> R {
        let mut fx = Effects::default();
        let result = f(&mut lock(&self.state), &mut fx);
        for (wanted, line, name) in [
            (fx.keyboard_irq, &self.keyboard_irq, "keyboard"),
            (fx.aux_irq, &self.aux_irq, "mouse"),
        ] {
            if wanted && let Err(e) = line.trigger() {
                tracing::warn!("i8042: could not raise the {name} interrupt: {e}");
            }
        }
        if fx.reset {
            self.reset.reset();
        }
        result
    }
}

/// The i8042 controller as a port I/O bus device.
pub struct I8042 {
    shared: Arc<Shared>,
}

impl I8042 {
    /// A controller whose keyboard bytes raise `keyboard_irq` (IRQ 1), whose mouse bytes
    /// raise `aux_irq` (IRQ 12), and whose reset commands pull `reset`.
    pub fn new(
        reset: Arc<dyn ResetLine>,
        keyboard_irq: Arc<dyn IrqLine>,
        aux_irq: Arc<dyn IrqLine>,
    ) -> Self {
        I8042 {
            shared: Arc::new(Shared {
                state: Mutex::new(Controller::default()),
                keyboard_irq,
                aux_irq,
                reset,
            }),
        }
    }

    /// A handle through which the host types and moves the mouse.
    pub fn input(&self) -> Ps2Input {
        Ps2Input {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.shared.with(|c, fx| c.read_data(fx)),
            4 => lock(&self.shared.state).status(),
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
            0 => self.shared.with(|c, fx| c.write_data(value, fx)),
            4 => self.shared.with(|c, fx| c.command(value, fx)),
            _ => {}
        }
    }
}

/// The host's side of the PS/2 keyboard and mouse: cheap to clone, callable from any
/// thread. Each call queues bytes in the device and raises its interrupt if the guest
/// can take a byte now.
///
/// Key repeat is the caller's job: to repeat a held key, call [`Ps2Input::press`] again at
/// the guest's typematic rate (as a real keyboard sends the make code again).
#[derive(Clone)]
pub struct Ps2Input {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ps2Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ps2Input").finish_non_exhaustive()
    }
}

impl Ps2Input {
    /// The key went down (or repeats).
    ///
    /// Fails with [`Error::InputDisabled`] while the guest has the keyboard disabled,
    /// and with [`Error::InputQueueFull`] when the guest has not read earlier keys yet
    /// (the key is not sent; the guest sees an overrun code): wait and send it again.
    pub fn press(&self, key: Key) -> Result<()> {
        self.shared.with(|c, fx| c.host_key(key, true, fx))
    }

    /// The key came up. Its break code always gets through when its press did (the
    /// keyboard keeps room for the break codes of held keys, so the guest never sees a key
    /// stuck down); otherwise errors as for [`Ps2Input::press`].
    pub fn release(&self, key: Key) -> Result<()> {
        if key.break_code().as_slice().is_empty() {
            return Ok(());
        }
        self.shared.with(|c, fx| c.host_key(key, false, fx))
    }

    /// The mouse moved by `dx` counts right and `dy` counts down (screen directions), its
    /// wheel by `wheel` detents up (away from the user), with `buttons` down. A movement
    /// larger than one packet carries is split over several (up to
    /// [`mouse::MAX_PACKETS_PER_MOTION`], the rest is reported as overflow). The wheel only
    /// reaches a guest that turned wheel mode on.
    ///
    /// Fails with [`Error::InputDisabled`] while the guest has reporting off, and with
    /// [`Error::InputQueueFull`] when it has not read earlier packets yet.
    pub fn mouse_motion(&self, dx: i32, dy: i32, wheel: i32, buttons: MouseButtons) -> Result<()> {
        self.shared.with(|c, fx| {
            // PS/2 Y and wheel grow the other way round.
            let result = c
                .mouse
                .motion(dx, dy.saturating_neg(), wheel.saturating_neg(), buttons);
            c.refill(fx);
            result.map_err(|refused| match refused {
                MotionRefused::Disabled => Error::InputDisabled("mouse"),
                MotionRefused::QueueFull => Error::InputQueueFull("mouse"),
            })
        })
    }

    /// The keyboard's lock lights as the guest set them.
    pub fn leds(&self) -> KeyboardLeds {
        lock(&self.shared.state).keyboard.leds()
    }
}

#[cfg(test)]
mod tests;
