//! A PS/2 mouse with the IntelliMouse wheel extension: the commands a host sends it and
//! the 3-byte (standard) or 4-byte (wheel) movement packets it sends back.
//!
//! Packet byte 0: bit 0 left, bit 1 right, bit 2 middle button, bit 3 always 1, bit 4 X
//! sign, bit 5 Y sign, bit 6 X overflow, bit 7 Y overflow; bytes 1 and 2: the low 8 bits
//! of the 9-bit two's complement X and Y movement (Y grows upwards); byte 3 (wheel mode
//! only): the wheel movement, -8..=7, positive towards the user.
//!
//! The guest turns on wheel mode with IntelliMouse's "knock": sample rates 200, 100, 80 in
//! a row, after which the device ID is 3. The sample rate and resolution are stored and
//! reported but do not change anything: the host sends movement when it has some, in
//! the counts it wants.

use super::queue::ByteQueue;

/// Acknowledge.
const ACK: u8 = 0xfa;
/// Resend: not understood.
const RESEND: u8 = 0xfe;
/// Basic assurance test passed.
const BAT_OK: u8 = 0xaa;
/// How many bytes the mouse holds for the controller (85 wheel packets).
const QUEUE_BYTES: usize = 340;
/// At most this many packets carry one host movement; what is left beyond them is
/// reported with the overflow bits and dropped.
pub const MAX_PACKETS_PER_MOTION: usize = 16;
/// The movement range of one packet on X and Y (9-bit two's complement).
const XY_MIN: i32 = -256;
const XY_MAX: i32 = 255;
/// The wheel range of one packet (4-bit two's complement, IntelliMouse).
const Z_MIN: i32 = -8;
const Z_MAX: i32 = 7;
/// The sample rates that switch an IntelliMouse into wheel mode.
const WHEEL_KNOCK: [u8; 3] = [200, 100, 80];
/// Device IDs.
const ID_STANDARD: u8 = 0x00;
const ID_WHEEL: u8 = 0x03;
const DEFAULT_SAMPLE_RATE: u8 = 100;
/// 4 counts per millimetre.
const DEFAULT_RESOLUTION: u8 = 2;

const CMD_SCALING_1_1: u8 = 0xe6;
const CMD_SCALING_2_1: u8 = 0xe7;
const CMD_RESOLUTION: u8 = 0xe8;
const CMD_STATUS: u8 = 0xe9;
const CMD_STREAM_MODE: u8 = 0xea;
const CMD_READ_DATA: u8 = 0xeb;
const CMD_RESET_WRAP: u8 = 0xec;
const CMD_WRAP_MODE: u8 = 0xee;
const CMD_REMOTE_MODE: u8 = 0xf0;
const CMD_GET_ID: u8 = 0xf2;
const CMD_SAMPLE_RATE: u8 = 0xf3;
const CMD_ENABLE: u8 = 0xf4;
const CMD_DISABLE: u8 = 0xf5;
const CMD_DEFAULTS: u8 = 0xf6;
const CMD_RESEND: u8 = 0xfe;
const CMD_RESET: u8 = 0xff;

/// Which mouse buttons are down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MouseButtons {
    /// The left (primary) button.
    pub left: bool,
    /// The right (secondary) button.
    pub right: bool,
    /// The middle button (wheel click).
    pub middle: bool,
}

impl MouseButtons {
    fn bits(self) -> u8 {
        u8::from(self.left) | u8::from(self.right) << 1 | u8::from(self.middle) << 2
    }
}

/// Why the mouse did not take a movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MotionRefused {
    /// The guest has not enabled reporting (no driver yet, or it turned the mouse off).
    Disabled,
    /// The packets did not all fit in the mouse's queue (the guest does not read).
    QueueFull,
}

/// The parameter a command is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    SampleRate,
    Resolution,
}

/// The last thing sent, for the resend command: up to an ACK and a wheel packet.
#[derive(Clone, Copy, Debug, Default)]
struct LastSent {
    bytes: [u8; 5],
    len: usize,
}

/// A PS/2 mouse.
#[derive(Debug)]
pub struct Mouse {
    queue: ByteQueue,
    awaiting: Option<Awaiting>,
    remote: bool,
    reporting: bool,
    wrap: bool,
    scaling_2_1: bool,
    sample_rate: u8,
    resolution: u8,
    id: u8,
    recent_rates: [u8; 3],
    buttons: MouseButtons,
    /// Movement not yet reported, in remote mode.
    pending: (i32, i32, i32),
    last_sent: LastSent,
}

impl Default for Mouse {
    fn default() -> Self {
        Mouse {
            queue: ByteQueue::new(QUEUE_BYTES),
            awaiting: None,
            remote: false,
            reporting: false,
            wrap: false,
            scaling_2_1: false,
            sample_rate: DEFAULT_SAMPLE_RATE,
            resolution: DEFAULT_RESOLUTION,
            id: ID_STANDARD,
            recent_rates: [0; 3],
            buttons: MouseButtons::default(),
            pending: (0, 0, 0),
            last_sent: LastSent::default(),
        }
    }
}

/// 2:1 scaling as the PS/2 mouse applies it to each report.
fn scale_2_1(v: i32) -> i32 {
    let magnitude = match v.unsigned_abs() {
        0 => 0,
        1 | 2 => 1,
        3 => 3,
        4 => 6,
        5 => 9,
        m => m.saturating_mul(2).min(i32::MAX as u32) as i32,
    };
    if v < 0 { -magnitude } else { magnitude }
}

impl Mouse {
    /// The next byte for the controller.
    pub fn pop(&mut self) -> Option<u8> {
        self.queue.pop()
    }

    /// Bytes waiting for the controller.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether packets are 4 bytes long (the guest switched wheel mode on).
    pub fn has_wheel(&self) -> bool {
        self.id == ID_WHEEL
    }

    fn reply(&mut self, bytes: &[u8]) {
        if self.queue.push_all(bytes) {
            let len = bytes.len().min(self.last_sent.bytes.len());
            self.last_sent.bytes[..len].copy_from_slice(&bytes[..len]);
            self.last_sent.len = len;
        } else {
            tracing::debug!("ps/2 mouse: reply {bytes:02x?} dropped, queue full");
        }
    }

    /// One packet for movement `(x, y, z)` clamped to a packet's range; `overflow` says
    /// which of X and Y did not fit.
    fn packet(&self, x: i32, y: i32, z: i32, overflow: (bool, bool)) -> ([u8; 4], usize) {
        let x = x.clamp(XY_MIN, XY_MAX);
        let y = y.clamp(XY_MIN, XY_MAX);
        let mut head = 0x08 | self.buttons.bits();
        if x < 0 {
            head |= 0x10;
        }
        if y < 0 {
            head |= 0x20;
        }
        if overflow.0 {
            head |= 0x40;
        }
        if overflow.1 {
            head |= 0x80;
        }
        let z = z.clamp(Z_MIN, Z_MAX);
        let bytes = [head, x as u8, y as u8, z as i8 as u8];
        (bytes, if self.has_wheel() { 4 } else { 3 })
    }

    fn send_packet(&mut self, bytes: &[u8]) -> bool {
        if self.queue.push_all(bytes) {
            self.last_sent.bytes[..bytes.len()].copy_from_slice(bytes);
            self.last_sent.len = bytes.len();
            true
        } else {
            false
        }
    }

    /// The host moved the mouse by `dx` counts right, `dy` counts up and the wheel by `dz`
    /// detents towards the user, with `buttons` down. In stream mode with reporting on,
    /// queues packets (several for a movement that one cannot carry); in remote mode,
    /// adds the movement to what the next read-data command reports.
    pub fn motion(
        &mut self,
        dx: i32,
        dy: i32,
        dz: i32,
        buttons: MouseButtons,
    ) -> Result<(), MotionRefused> {
        self.buttons = buttons;
        let dz = if self.has_wheel() { dz } else { 0 };
        if self.wrap {
            return Err(MotionRefused::Disabled);
        }
        if self.remote {
            let (x, y, z) = self.pending;
            self.pending = (
                x.saturating_add(dx),
                y.saturating_add(dy),
                z.saturating_add(dz),
            );
            return Ok(());
        }
        if !self.reporting {
            return Err(MotionRefused::Disabled);
        }
        let (mut x, mut y, mut z) = if self.scaling_2_1 {
            (scale_2_1(dx), scale_2_1(dy), dz)
        } else {
            (dx, dy, dz)
        };
        for index in 0..MAX_PACKETS_PER_MOTION {
            let cx = x.clamp(XY_MIN, XY_MAX);
            let cy = y.clamp(XY_MIN, XY_MAX);
            let cz = z.clamp(Z_MIN, Z_MAX);
            x -= cx;
            y -= cy;
            z -= cz;
            let last = index + 1 == MAX_PACKETS_PER_MOTION;
            let (bytes, len) = self.packet(cx, cy, cz, (last && x != 0, last && y != 0));
            if !self.send_packet(&bytes[..len]) {
                return Err(MotionRefused::QueueFull);
            }
            if x == 0 && y == 0 && z == 0 {
                break;
            }
        }
        Ok(())
    }

    fn set_defaults(&mut self) {
        self.sample_rate = DEFAULT_SAMPLE_RATE;
        self.resolution = DEFAULT_RESOLUTION;
        self.scaling_2_1 = false;
        self.remote = false;
        self.reporting = false;
        self.pending = (0, 0, 0);
    }

    /// A byte from the host (controller command `D4` and a data byte).
    pub fn write(&mut self, byte: u8) {
        if self.wrap {
            match byte {
                CMD_RESET_WRAP => {
                    self.wrap = false;
                    self.reply(&[ACK]);
                }
                CMD_RESET => self.command(CMD_RESET),
                other => self.reply(&[other]),
            }
            return;
        }
        if let Some(awaiting) = self.awaiting.take() {
            match awaiting {
                Awaiting::SampleRate => {
                    self.sample_rate = byte;
                    self.recent_rates = [self.recent_rates[1], self.recent_rates[2], byte];
                    if self.recent_rates == WHEEL_KNOCK {
                        self.id = ID_WHEEL;
                    }
                }
                Awaiting::Resolution => self.resolution = byte & 0x03,
            }
            self.reply(&[ACK]);
            return;
        }
        self.command(byte);
    }

    fn command(&mut self, command: u8) {
        match command {
            CMD_SCALING_1_1 => {
                self.scaling_2_1 = false;
                self.reply(&[ACK]);
            }
            CMD_SCALING_2_1 => {
                self.scaling_2_1 = true;
                self.reply(&[ACK]);
            }
            CMD_RESOLUTION => {
                self.awaiting = Some(Awaiting::Resolution);
                self.reply(&[ACK]);
            }
            CMD_STATUS => {
                let flags = u8::from(self.remote) << 6
                    | u8::from(self.reporting) << 5
                    | u8::from(self.scaling_2_1) << 4
                    | u8::from(self.buttons.left) << 2
                    | u8::from(self.buttons.middle) << 1
                    | u8::from(self.buttons.right);
                self.reply(&[ACK, flags, self.resolution, self.sample_rate]);
            }
            CMD_STREAM_MODE => {
                self.remote = false;
                self.pending = (0, 0, 0);
                self.reply(&[ACK]);
            }
            CMD_READ_DATA => {
                let (x, y, z) = std::mem::take(&mut self.pending);
                let overflow = (
                    !(XY_MIN..=XY_MAX).contains(&x),
                    !(XY_MIN..=XY_MAX).contains(&y),
                );
                let (packet, len) = self.packet(x, y, z, overflow);
                let mut reply = [ACK; 5];
                reply[1..=len].copy_from_slice(&packet[..len]);
                self.reply(&reply[..=len]);
            }
            CMD_RESET_WRAP => self.reply(&[ACK]),
            CMD_WRAP_MODE => {
                self.wrap = true;
                self.reply(&[ACK]);
            }
            CMD_REMOTE_MODE => {
                self.remote = true;
                self.pending = (0, 0, 0);
                self.reply(&[ACK]);
            }
            CMD_GET_ID => self.reply(&[ACK, self.id]),
            CMD_SAMPLE_RATE => {
                self.awaiting = Some(Awaiting::SampleRate);
                self.reply(&[ACK]);
            }
            CMD_ENABLE => {
                self.reporting = true;
                self.reply(&[ACK]);
            }
            CMD_DISABLE => {
                self.queue.clear();
                self.reporting = false;
                self.reply(&[ACK]);
            }
            CMD_DEFAULTS => {
                self.queue.clear();
                self.set_defaults();
                self.reply(&[ACK]);
            }
            CMD_RESEND => {
                let last = self.last_sent;
                self.reply(&last.bytes[..last.len]);
            }
            CMD_RESET => {
                self.queue.clear();
                self.set_defaults();
                self.wrap = false;
                self.id = ID_STANDARD;
                self.recent_rates = [0; 3];
                self.reply(&[ACK, BAT_OK, ID_STANDARD]);
            }
            _ => self.reply(&[RESEND]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut Mouse) -> Vec<u8> {
        std::iter::from_fn(|| m.pop()).collect()
    }

    fn send(m: &mut Mouse, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            m.write(b);
        }
        drain(m)
    }

    const LEFT: MouseButtons = MouseButtons {
        left: true,
        right: false,
        middle: false,
    };

    #[test]
    fn reset_identify_and_the_wheel_knock() {
        let mut m = Mouse::default();
        assert_eq!(send(&mut m, &[0xff]), [ACK, 0xaa, 0x00]);
        assert_eq!(send(&mut m, &[0xf2]), [ACK, 0x00]);
        // The Explorer knock (200, 200, 80) is not supported: still a standard mouse.
        assert_eq!(
            send(&mut m, &[0xf3, 200, 0xf3, 200, 0xf3, 80, 0xf2]),
            [ACK, ACK, ACK, ACK, ACK, ACK, ACK, 0x00]
        );
        assert_eq!(
            send(&mut m, &[0xf3, 200, 0xf3, 100, 0xf3, 80, 0xf2]),
            [ACK, ACK, ACK, ACK, ACK, ACK, ACK, 0x03]
        );
        assert!(m.has_wheel());
        // Defaults keep the ID; reset forgets it.
        assert_eq!(send(&mut m, &[0xf6, 0xf2]), [ACK, ACK, 0x03]);
        assert_eq!(send(&mut m, &[0xff, 0xf2]), [ACK, 0xaa, 0x00, ACK, 0x00]);
    }

    #[test]
    fn status_resolution_scaling_and_unknown_commands() {
        let mut m = Mouse::default();
        assert_eq!(send(&mut m, &[0xe9]), [ACK, 0x00, 2, 100]);
        assert_eq!(
            send(&mut m, &[0xe8, 3, 0xe7, 0xf3, 40, 0xf4, 0xf0, 0xe9]),
            [ACK, ACK, ACK, ACK, ACK, ACK, ACK, ACK, 0x70, 3, 40]
        );
        assert_eq!(
            send(&mut m, &[0xe6, 0xea, 0xe9]),
            [ACK, ACK, ACK, 0x20, 3, 40]
        );
        assert_eq!(send(&mut m, &[0xf5, 0xe9]), [ACK, ACK, 0x00, 3, 40]);
        for unknown in [0x00, 0x55, 0xe5, 0xed, 0xf1, 0xf7, 0xfd] {
            assert_eq!(send(&mut m, &[unknown]), [RESEND], "{unknown:#x}");
        }
        assert_eq!(
            send(&mut m, &[0xfe]),
            [RESEND],
            "resend repeats the last reply"
        );
    }

    #[test]
    fn stream_packets_carry_sign_buttons_and_wheel() {
        let mut m = Mouse::default();
        assert_eq!(m.motion(1, 1, 0, LEFT), Err(MotionRefused::Disabled));
        send(&mut m, &[0xf4]);
        m.motion(5, -3, 0, LEFT).unwrap();
        assert_eq!(drain(&mut m), [0x09 | 0x20, 5, 0xfd]);
        m.motion(-1, 2, 3, MouseButtons::default()).unwrap();
        assert_eq!(drain(&mut m), [0x08 | 0x10, 0xff, 2], "no wheel byte yet");
        send(&mut m, &[0xf3, 200, 0xf3, 100, 0xf3, 80]);
        m.motion(
            0,
            0,
            -2,
            MouseButtons {
                right: true,
                middle: true,
                left: false,
            },
        )
        .unwrap();
        assert_eq!(drain(&mut m), [0x08 | 0x06, 0, 0, 0xfe]);
        assert_eq!(
            send(&mut m, &[0xfe]),
            [0x0e, 0, 0, 0xfe],
            "resend the packet"
        );
    }

    #[test]
    fn large_motions_split_and_overflow() {
        let mut m = Mouse::default();
        send(&mut m, &[0xf4]);
        m.motion(600, -300, 0, MouseButtons::default()).unwrap();
        let bytes = drain(&mut m);
        let packets: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(packets.len(), 3);
        let decode = |p: &[u8]| {
            let x = i32::from(p[1]) - if p[0] & 0x10 != 0 { 256 } else { 0 };
            let y = i32::from(p[2]) - if p[0] & 0x20 != 0 { 256 } else { 0 };
            (x, y, p[0] & 0xc0)
        };
        let decoded: Vec<_> = packets.iter().map(|p| decode(p)).collect();
        assert_eq!(decoded, [(255, -256, 0), (255, -44, 0), (90, 0, 0)]);
        // More than MAX_PACKETS_PER_MOTION packets' worth: the last one has overflow set.
        m.motion(i32::MAX, i32::MIN, 0, MouseButtons::default())
            .unwrap();
        let bytes = drain(&mut m);
        assert_eq!(bytes.len(), 3 * MAX_PACKETS_PER_MOTION);
        let last = decode(&bytes[bytes.len() - 3..]);
        assert_eq!(last, (255, -256, 0xc0));
    }

    #[test]
    fn remote_mode_reports_on_read_data() {
        let mut m = Mouse::default();
        assert_eq!(send(&mut m, &[0xf0]), [ACK]);
        m.motion(3, 4, 0, LEFT).unwrap();
        m.motion(-10, 0, 0, LEFT).unwrap();
        assert!(drain(&mut m).is_empty(), "nothing unasked in remote mode");
        assert_eq!(send(&mut m, &[0xeb]), [ACK, 0x19, 0xf9, 4]);
        assert_eq!(send(&mut m, &[0xeb]), [ACK, 0x09, 0, 0]);
        m.motion(1000, 0, 0, MouseButtons::default()).unwrap();
        assert_eq!(send(&mut m, &[0xeb]), [ACK, 0x48, 0xff, 0]);
    }

    #[test]
    fn wrap_mode_echoes_until_reset_wrap() {
        let mut m = Mouse::default();
        assert_eq!(
            send(&mut m, &[0xee, 0x12, 0xf4, 0xe9]),
            [ACK, 0x12, 0xf4, 0xe9]
        );
        assert_eq!(send(&mut m, &[0xec, 0xe9]), [ACK, ACK, 0x00, 2, 100]);
        assert_eq!(send(&mut m, &[0xee]), [ACK]);
        assert_eq!(
            send(&mut m, &[0xff]),
            [ACK, 0xaa, 0x00],
            "reset works in wrap mode"
        );
        assert_eq!(send(&mut m, &[0x12]), [RESEND], "and leaves it");
    }

    #[test]
    fn scaling_2_1_follows_the_table() {
        let values: Vec<i32> = (-6..=6).map(scale_2_1).collect();
        assert_eq!(values, [-12, -9, -6, -3, -1, -1, 0, 1, 1, 3, 6, 9, 12]);
        assert_eq!(scale_2_1(i32::MAX), i32::MAX);
        assert_eq!(scale_2_1(i32::MIN), -i32::MAX);
    }

    #[test]
    fn a_mouse_that_is_never_read_stays_bounded() {
        let mut m = Mouse::default();
        send(&mut m, &[0xf4]);
        let mut refused = false;
        for _ in 0..1000 {
            refused |= m.motion(1, 1, 0, LEFT) == Err(MotionRefused::QueueFull);
        }
        assert!(refused);
        assert!(m.queued() <= QUEUE_BYTES);
        assert_eq!(m.queued() % 3, 0, "only whole packets are queued");
    }
}
