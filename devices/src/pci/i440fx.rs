//! An i440FX-compatible host bridge (PCI 8086:1237), for machines booted by firmware.
//!
//! SeaBIOS and OVMF find their platform by the host bridge's IDs (SeaBIOS's `qemu_detect`,
//! OVMF's `PlatformInitLib`: "i440FX" or "Q35", anything else is an unknown board, which
//! OVMF refuses), so a machine that runs them shows the i440FX's IDs with QEMU's subsystem
//! (1af4:1100), which tells the firmwares they run in a virtual machine.
//!
//! What the firmwares use of the chipset is the **PAM** registers (Programmable Attribute
//! Map, config 0x59..0x5f): for each segment of the BIOS area (0xc0000..0x100000) whether
//! reads and writes go to RAM or to the ROM/PCI side. At power-on every segment reads the
//! BIOS ROM; SeaBIOS turns the segments into writable RAM, copies itself there ("shadowing"),
//! and at the end write-protects them. The device only keeps the registers and reports each
//! change to a [`PamListener`]; the backend maps memory to match (the device never touches
//! guest memory itself).

use std::sync::Arc;

use super::{PciConfiguration, PciDevice, PciHeader};

/// Intel's vendor ID.
pub const INTEL_VENDOR_ID: u16 = 0x8086;
/// The 82441FX (i440FX PMC) device ID.
pub const I440FX_DEVICE_ID: u16 = 0x1237;
/// QEMU's subsystem vendor (Red Hat, virtio's vendor), which the firmwares check for.
pub const QEMU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
/// QEMU's subsystem ID ("QEMU virtual machine").
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

/// Offset of PAM0 (the F segment); PAM1..PAM6 follow.
pub const PAM0: usize = 0x59;
/// Number of PAM registers.
pub const PAM_REGISTERS: usize = 7;
/// Number of PAM segments: 0xf0000 (64 KiB) and twelve of 16 KiB from 0xc0000 to 0xeffff.
pub const PAM_SEGMENTS: usize = 13;
/// Start of the area the PAM registers govern.
pub const PAM_AREA_START: u64 = 0xc_0000;
/// End of that area (exclusive).
pub const PAM_AREA_END: u64 = 0x10_0000;

/// Where accesses to one segment go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PamMode {
    /// Reads and writes go to the ROM/PCI side (the power-on state).
    Rom,
    /// Reads come from RAM, writes go to the ROM side (are lost): write-protected RAM.
    ReadOnlyRam,
    /// Writes go to RAM, reads come from the ROM side (how a BIOS copies itself).
    WriteOnlyRam,
    /// Reads and writes go to RAM.
    Ram,
}

impl PamMode {
    fn from_bits(bits: u8) -> PamMode {
        match bits & 3 {
            0 => PamMode::Rom,
            1 => PamMode::ReadOnlyRam,
            2 => PamMode::WriteOnlyRam,
            _ => PamMode::Ram,
        }
    }

    /// Whether reads of the segment come from RAM.
    pub fn reads_ram(self) -> bool {
        matches!(self, PamMode::ReadOnlyRam | PamMode::Ram)
    }

    /// Whether writes to the segment go to RAM.
    pub fn writes_ram(self) -> bool {
        matches!(self, PamMode::WriteOnlyRam | PamMode::Ram)
    }
}

/// One segment of the BIOS area and where its accesses go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamSegment {
    /// Guest physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where reads and writes go.
    pub mode: PamMode,
}

/// The segments as the registers `pam` (PAM0..PAM6) describe them, in address order.
pub fn pam_segments(pam: &[u8; PAM_REGISTERS]) -> [PamSegment; PAM_SEGMENTS] {
    let mut segments = [PamSegment {
        start: 0,
        len: 0,
        mode: PamMode::Rom,
    }; PAM_SEGMENTS];
    // PAM1..PAM6: two 16 KiB segments each, the low nibble first.
    for (i, segment) in segments.iter_mut().take(12).enumerate() {
        let register = pam[1 + i / 2];
        let bits = if i % 2 == 0 { register } else { register >> 4 };
        *segment = PamSegment {
            start: PAM_AREA_START + 0x4000 * i as u64,
            len: 0x4000,
            mode: PamMode::from_bits(bits),
        };
    }
    // PAM0's high nibble: the F segment.
    segments[12] = PamSegment {
        start: 0xf_0000,
        len: 0x1_0000,
        mode: PamMode::from_bits(pam[0] >> 4),
    };
    segments
}

/// Told of every change of the PAM registers, with every segment's new mode.
pub trait PamListener: Send + Sync {
    /// The segments now route as `segments` says; called inside the guest's configuration
    /// write, so the next access already sees the new routing.
    fn pam_changed(&self, segments: &[PamSegment; PAM_SEGMENTS]);
}

/// The i440FX host bridge at 00:00.0.
pub struct I440fxHostBridge {
    config: PciConfiguration,
    listener: Arc<dyn PamListener>,
}

impl std::fmt::Debug for I440fxHostBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I440fxHostBridge")
            .field("pam", &self.pam())
            .finish()
    }
}

impl I440fxHostBridge {
    /// A host bridge in its power-on state (every segment routed to the ROM), reporting PAM
    /// changes to `listener`.
    pub fn new(listener: Arc<dyn PamListener>) -> Self {
        let mut config = PciConfiguration::new(PciHeader {
            vendor_id: INTEL_VENDOR_ID,
            device_id: I440FX_DEVICE_ID,
            revision_id: 2,
            class: 0x06,
            subclass: 0x00,
            prog_if: 0,
            subsystem_vendor_id: QEMU_SUBSYSTEM_VENDOR_ID,
            subsystem_id: QEMU_SUBSYSTEM_ID,
            interrupt_pin: 0,
        });
        // PAM0 has only its high nibble; PAM1..6 both (bits 2 and 6 are reserved).
        let mut mask = [0x33u8; PAM_REGISTERS];
        mask[0] = 0x30;
        config.set_mask(PAM0, &mask);
        I440fxHostBridge { config, listener }
    }

    /// The PAM registers now.
    pub fn pam(&self) -> [u8; PAM_REGISTERS] {
        let mut pam = [0u8; PAM_REGISTERS];
        for (i, p) in pam.iter_mut().enumerate() {
            *p = self.config.u8_at(PAM0 + i);
        }
        pam
    }
}

impl PciDevice for I440fxHostBridge {
    fn config(&self) -> &PciConfiguration {
        &self.config
    }
    fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let before = self.pam();
        self.config.write(offset, data);
        let after = self.pam();
        if before != after {
            tracing::debug!(?after, "PAM registers changed");
            self.listener.pam_changed(&pam_segments(&after));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<[PamSegment; PAM_SEGMENTS]>>);

    impl PamListener for Seen {
        fn pam_changed(&self, segments: &[PamSegment; PAM_SEGMENTS]) {
            self.0.lock().unwrap().push(*segments);
        }
    }

    #[test]
    fn segments_cover_the_bios_area_in_order() {
        let segments = pam_segments(&[0; PAM_REGISTERS]);
        let mut at = PAM_AREA_START;
        for s in segments {
            assert_eq!(s.start, at);
            assert_eq!(s.mode, PamMode::Rom);
            at += s.len;
        }
        assert_eq!(at, PAM_AREA_END);
    }

    #[test]
    fn shadowing_as_seabios_does_it() {
        let seen = Arc::new(Seen::default());
        let mut bridge = I440fxHostBridge::new(seen.clone());
        let mut id = [0u8; 4];
        bridge.read_config(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1237_8086);
        bridge.read_config(0x2c, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1100_1af4);
        // SeaBIOS writes the dwords at 0x58 and 0x5c: all of 0xc0000..0xfffff RAM, then
        // write-protects the F segment.
        bridge.write_config(0x58, &0x3333_3000u32.to_le_bytes());
        bridge.write_config(0x5c, &0x3333_3333u32.to_le_bytes());
        let last = *seen.0.lock().unwrap().last().unwrap();
        assert!(last.iter().all(|s| s.mode == PamMode::Ram));
        bridge.write_config(0x59, &[0x10]);
        let last = *seen.0.lock().unwrap().last().unwrap();
        assert_eq!(last[12].mode, PamMode::ReadOnlyRam);
        assert_eq!(last[0].mode, PamMode::Ram);
        // A write that changes nothing reports nothing.
        let n = seen.0.lock().unwrap().len();
        bridge.write_config(0x59, &[0x10]);
        assert_eq!(seen.0.lock().unwrap().len(), n);
    }

    #[test]
    fn reserved_bits_and_other_registers_stay() {
        let seen = Arc::new(Seen::default());
        let mut bridge = I440fxHostBridge::new(seen.clone());
        bridge.write_config(0x59, &[0xff; 7]);
        assert_eq!(bridge.pam(), [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        let mut v = [0u8; 4];
        bridge.write_config(0, &[0xff; 4]);
        bridge.read_config(0, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x1237_8086);
        let segments = pam_segments(&[0x20, 0x12, 0, 0, 0, 0, 0]);
        assert_eq!(segments[12].mode, PamMode::WriteOnlyRam);
        assert_eq!(segments[0].mode, PamMode::WriteOnlyRam);
        assert_eq!(segments[1].mode, PamMode::ReadOnlyRam);
        assert!(segments[0].mode.writes_ram() && !segments[0].mode.reads_ram());
    }
}
