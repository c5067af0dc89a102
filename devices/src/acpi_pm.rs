//! ACPI fixed-hardware power management on port I/O: the PM1a event block (status and
//! enable), the PM1a control block, the PM timer and a reset register.
//!
//! This is what a guest needs to power itself off through ACPI (writing `SLP_EN` with the
//! S5 sleep type the DSDT declares), to see a press of the fixed power button (an SCI with
//! `PWRBTN_STS` set), to use the `acpi_pm` clocksource, and to reboot through the FADT's
//! reset register.
//!
//! The whole device is one block of [`AcpiPmPorts::LEN`] ports; the ACPI tables (FADT) must
//! describe the same addresses, which [`AcpiPmPorts`] computes:
//!
//! ```text
//! base + 0x0  PM1a_STS  (16 bits)  PWRBTN_STS (bit 8), write 1 to clear
//! base + 0x2  PM1a_EN   (16 bits)  PWRBTN_EN (bit 8) and the other defined enable bits
//! base + 0x4  PM1a_CNT  (16 bits)  SCI_EN (bit 0, always set), SLP_TYP (10..12), SLP_EN (13)
//! base + 0x8  PM_TMR    (32 bits)  3.579545 MHz counter (FADT flag TMR_VAL_EXT)
//! base + 0xc  RESET     (8 bits)   writing RESET_VALUE resets the machine
//! ```
//!
//! The SCI is raised through an [`IrqLine`], which can only pulse. So the device raises it
//! on every rising edge of "a status bit is set whose enable bit is set" (a press, or the
//! guest enabling an event that is already pending), and the interrupt must be declared
//! edge-triggered to the guest; see the backend's MADT.

use std::sync::Arc;
use std::time::Instant;

use crate::IrqLine;
use crate::bus::BusDevice;
use crate::i8042::ResetLine;

/// The PM timer's frequency in Hz, fixed by the ACPI specification.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The `SLP_TYP` value that means S5 (soft off); the DSDT's `\_S5` package must carry it.
pub const SLP_TYP_S5: u8 = 5;
/// The value the FADT's `RESET_VALUE` declares; writing it to the reset register resets.
pub const RESET_VALUE: u8 = 0x06;
/// Length in bytes of the PM1a event block (status + enable).
pub const PM1_EVT_LEN: u8 = 4;
/// Length in bytes of the PM1a control block.
pub const PM1_CNT_LEN: u8 = 2;
/// Length in bytes of the PM timer block.
pub const PM_TMR_LEN: u8 = 4;

/// PM1 status/enable: timer carry.
const TMR_BIT: u16 = 1 << 0;
/// PM1 status/enable: global lock release.
const GBL_BIT: u16 = 1 << 5;
/// PM1 status/enable: power button.
pub const PWRBTN_BIT: u16 = 1 << 8;
/// PM1 status/enable: sleep button.
const SLPBTN_BIT: u16 = 1 << 9;
/// PM1 status/enable: RTC alarm.
const RTC_BIT: u16 = 1 << 10;
/// PM1 enable: PCIe wake disable.
const PCIEXP_WAKE_DIS: u16 = 1 << 14;
/// The enable bits the guest can set and read back (ACPICA checks the read-back).
const ENABLE_MASK: u16 = TMR_BIT | GBL_BIT | PWRBTN_BIT | SLPBTN_BIT | RTC_BIT | PCIEXP_WAKE_DIS;

/// PM1 control: SCI (ACPI mode) enabled. Hard-wired to 1: the FADT declares no SMI
/// command port, so the machine is always in ACPI mode.
pub const SCI_EN: u16 = 1 << 0;
/// PM1 control: bus master reload.
const BM_RLD: u16 = 1 << 1;
/// PM1 control: first bit of the sleep type field.
const SLP_TYP_SHIFT: u16 = 10;
/// PM1 control: the sleep type field.
const SLP_TYP_MASK: u16 = 0b111 << SLP_TYP_SHIFT;
/// PM1 control: sleep enable (write-only, reads 0).
pub const SLP_EN: u16 = 1 << 13;
/// The control bits that are stored and read back.
const CONTROL_MASK: u16 = BM_RLD | SLP_TYP_MASK;

/// Where the device's registers sit in port I/O space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiPmPorts {
    base: u16,
}

impl AcpiPmPorts {
    /// How many ports the device occupies from its base.
    pub const LEN: u16 = 0x10;
    /// Offset of the PM1a event block.
    const PM1_EVT: u16 = 0x0;
    /// Offset of the PM1a control block.
    const PM1_CNT: u16 = 0x4;
    /// Offset of the PM timer.
    const PM_TMR: u16 = 0x8;
    /// Offset of the reset register.
    const RESET: u16 = 0xc;

    /// The conventional placement, at port `0x600` (as on QEMU's PC machines).
    pub const STANDARD: AcpiPmPorts = AcpiPmPorts { base: 0x600 };

    /// The block at `base`, if all of it fits in the 16-bit port space.
    pub fn new(base: u16) -> Option<Self> {
        base.checked_add(Self::LEN - 1)?;
        Some(AcpiPmPorts { base })
    }

    /// The first port of the block (where to register the device on the PIO bus).
    pub fn base(&self) -> u16 {
        self.base
    }

    /// The PM1a event block (FADT `PM1a_EVT_BLK`, [`PM1_EVT_LEN`] bytes).
    pub fn pm1a_evt(&self) -> u16 {
        self.base + Self::PM1_EVT
    }

    /// The PM1a control block (FADT `PM1a_CNT_BLK`, [`PM1_CNT_LEN`] bytes).
    pub fn pm1a_cnt(&self) -> u16 {
        self.base + Self::PM1_CNT
    }

    /// The PM timer (FADT `PM_TMR_BLK`, [`PM_TMR_LEN`] bytes, 32 bits wide).
    pub fn pm_tmr(&self) -> u16 {
        self.base + Self::PM_TMR
    }

    /// The reset register (FADT `RESET_REG`, one byte; the value is [`RESET_VALUE`]).
    pub fn reset(&self) -> u16 {
        self.base + Self::RESET
    }
}

impl Default for AcpiPmPorts {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// What the guest's ACPI power-off asks of the machine.
pub trait PowerOff: Send + Sync {
    /// The guest entered S5 (soft off): stop the machine.
    fn power_off(&self);
}

/// The registers of the block, with the byte offset each starts at and its width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Status,
    Enable,
    Control,
    Timer,
    Reset,
}

impl Reg {
    const ALL: [Reg; 5] = [
        Reg::Status,
        Reg::Enable,
        Reg::Control,
        Reg::Timer,
        Reg::Reset,
    ];

    fn start(self) -> u64 {
        u64::from(match self {
            Reg::Status => AcpiPmPorts::PM1_EVT,
            Reg::Enable => AcpiPmPorts::PM1_EVT + 2,
            Reg::Control => AcpiPmPorts::PM1_CNT,
            Reg::Timer => AcpiPmPorts::PM_TMR,
            Reg::Reset => AcpiPmPorts::RESET,
        })
    }

    fn width(self) -> u64 {
        match self {
            Reg::Status | Reg::Enable | Reg::Control => 2,
            Reg::Timer => 4,
            Reg::Reset => 1,
        }
    }

    /// The register holding byte `offset` of the block, and which byte of it that is.
    fn at(offset: u64) -> Option<(Reg, u32)> {
        Reg::ALL.into_iter().find_map(|reg| {
            let byte = offset.checked_sub(reg.start())?;
            (byte < reg.width()).then_some((reg, byte as u32))
        })
    }
}

/// The bytes one access wrote into one register: which bits, and their values.
#[derive(Clone, Copy, Debug, Default)]
struct Written {
    mask: u32,
    value: u32,
}

impl Written {
    /// The written bits of a 16-bit register, and whether any were written.
    fn as_u16(self) -> Option<(u16, u16)> {
        (self.mask != 0).then_some((self.mask as u16, self.value as u16))
    }
}

/// The ACPI PM device. Register it on the port I/O bus at [`AcpiPmPorts::base`] with a
/// length of [`AcpiPmPorts::LEN`]; keep a clone of the `Arc<Mutex<_>>` to call
/// [`AcpiPm::press_power_button`].
pub struct AcpiPm {
    sci: Arc<dyn IrqLine>,
    power_off: Arc<dyn PowerOff>,
    reset: Arc<dyn ResetLine>,
    status: u16,
    enable: u16,
    control: u16,
    clock_start: Instant,
}

impl AcpiPm {
    /// A device that raises `sci` for enabled events, calls `power_off` when the guest
    /// enters S5 and `reset` when it writes [`RESET_VALUE`] to the reset register.
    pub fn new(
        sci: Arc<dyn IrqLine>,
        power_off: Arc<dyn PowerOff>,
        reset: Arc<dyn ResetLine>,
    ) -> Self {
        AcpiPm {
            sci,
            power_off,
            reset,
            status: 0,
            enable: 0,
            control: 0,
            clock_start: Instant::now(),
        }
    }

    /// Press the fixed power button: sets `PWRBTN_STS` and raises the SCI if the guest
    /// enabled the power button event (`PWRBTN_EN`). A guest whose ACPI driver is not up yet
    /// sees the event when it enables it, unless it clears the status first (Linux does).
    pub fn press_power_button(&mut self) {
        self.update(|pm| pm.status |= PWRBTN_BIT);
    }

    /// Whether the guest has enabled the power button event, i.e. a press will reach it.
    pub fn power_button_enabled(&self) -> bool {
        self.enable & PWRBTN_BIT != 0
    }

    /// Applies `change` and raises the SCI if it made an enabled event pending that was
    /// not pending before (the rising edge of the SCI level).
    fn update(&mut self, change: impl FnOnce(&mut Self)) {
        let before = self.status & self.enable;
        change(self);
        let after = self.status & self.enable;
        if after & !before != 0
            && let Err(e) = self.sci.trigger()
        {
            tracing::warn!("could not raise the ACPI SCI: {e}");
        }
    }

    /// The PM timer: ticks of [`PM_TIMER_HZ`] since the device was created, wrapping at 32
    /// bits.
    fn timer(&self) -> u32 {
        let nanos = self.clock_start.elapsed().as_nanos();
        // Truncating to 32 bits is the counter's wrap-around.
        (nanos * u128::from(PM_TIMER_HZ) / 1_000_000_000) as u32
    }

    fn register(&self, reg: Reg) -> u32 {
        match reg {
            Reg::Status => u32::from(self.status),
            Reg::Enable => u32::from(self.enable),
            Reg::Control => u32::from(self.control | SCI_EN),
            Reg::Timer => self.timer(),
            Reg::Reset => 0,
        }
    }

    fn write_control(&mut self, mask: u16, value: u16) {
        self.control = (self.control & !mask) | (value & mask & CONTROL_MASK);
        if mask & value & SLP_EN == 0 {
            return;
        }
        let sleep_type = (self.control & SLP_TYP_MASK) >> SLP_TYP_SHIFT;
        // SLP_TYP 0 is soft-off as well: QEMU's PM blocks power off on it, and OVMF's
        // power-off (ResetShutdown: the UEFI shell's `reset -s`, GRUB's `halt`) writes it
        // with SLP_EN whatever the DSDT's `\_S5` says. No other state uses type 0 here.
        if sleep_type == u16::from(SLP_TYP_S5) || sleep_type == 0 {
            tracing::info!("the guest entered ACPI S5: powering off");
            self.power_off.power_off();
        } else {
            tracing::debug!(sleep_type, "unsupported ACPI sleep type ignored");
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // Each register is sampled once per access, so a wide read of the timer is coherent.
        let mut sampled: [Option<u32>; Reg::ALL.len()] = [None; Reg::ALL.len()];
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = 0;
            let Some((reg, index)) = offset.checked_add(i as u64).and_then(Reg::at) else {
                continue;
            };
            let value = *sampled[reg as usize].get_or_insert_with(|| self.register(reg));
            *byte = (value >> (8 * index)) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut written = [Written::default(); Reg::ALL.len()];
        for (i, &byte) in data.iter().enumerate() {
            let Some((reg, index)) = offset.checked_add(i as u64).and_then(Reg::at) else {
                continue;
            };
            let w = &mut written[reg as usize];
            w.mask |= 0xff << (8 * index);
            w.value |= u32::from(byte) << (8 * index);
        }
        let status = written[Reg::Status as usize].as_u16();
        let enable = written[Reg::Enable as usize].as_u16();
        if status.is_some() || enable.is_some() {
            self.update(|pm| {
                if let Some((mask, value)) = status {
                    // Write 1 to clear.
                    pm.status &= !(mask & value);
                }
                if let Some((mask, value)) = enable {
                    pm.enable = (pm.enable & !mask) | (value & mask & ENABLE_MASK);
                }
            });
        }
        if let Some((mask, value)) = written[Reg::Control as usize].as_u16() {
            self.write_control(mask, value);
        }
        let reset = written[Reg::Reset as usize];
        if reset.mask != 0 && reset.value as u8 == RESET_VALUE {
            tracing::info!("the guest asked for an ACPI reset");
            self.reset.reset();
        }
        // The timer is read-only.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct Counter(AtomicUsize);
    impl Counter {
        fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
        fn bump(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl IrqLine for Counter {
        fn trigger(&self) -> std::io::Result<()> {
            self.bump();
            Ok(())
        }
    }
    impl PowerOff for Counter {
        fn power_off(&self) {
            self.bump();
        }
    }
    impl ResetLine for Counter {
        fn reset(&self) {
            self.bump();
        }
    }

    struct Rig {
        pm: AcpiPm,
        sci: Arc<Counter>,
        off: Arc<Counter>,
        reset: Arc<Counter>,
    }

    const BASE: u64 = 0x600;
    const STS: u64 = 0;
    const EN: u64 = 2;
    const CNT: u64 = 4;
    const TMR: u64 = 8;
    const RST: u64 = 12;

    fn rig() -> Rig {
        let sci = Arc::new(Counter::default());
        let off = Arc::new(Counter::default());
        let reset = Arc::new(Counter::default());
        let pm = AcpiPm::new(sci.clone(), off.clone(), reset.clone());
        Rig {
            pm,
            sci,
            off,
            reset,
        }
    }

    impl Rig {
        fn read16(&mut self, offset: u64) -> u16 {
            let mut b = [0u8; 2];
            self.pm.read(BASE, offset, &mut b);
            u16::from_le_bytes(b)
        }
        fn read32(&mut self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.pm.read(BASE, offset, &mut b);
            u32::from_le_bytes(b)
        }
        fn write16(&mut self, offset: u64, value: u16) {
            self.pm.write(BASE, offset, &value.to_le_bytes());
        }
    }

    #[test]
    fn port_layout() {
        let p = AcpiPmPorts::STANDARD;
        assert_eq!(
            (p.base(), p.pm1a_evt(), p.pm1a_cnt(), p.pm_tmr(), p.reset()),
            (0x600, 0x600, 0x604, 0x608, 0x60c)
        );
        assert_eq!(AcpiPmPorts::default(), p);
        assert!(AcpiPmPorts::new(0xfff0).is_some());
        assert!(AcpiPmPorts::new(0xfff1).is_none());
        assert!(Reg::at(u64::from(AcpiPmPorts::LEN)).is_none());
    }

    #[test]
    fn power_button_raises_the_sci_only_when_enabled() {
        let mut r = rig();
        r.pm.press_power_button();
        assert_eq!(r.read16(STS) & PWRBTN_BIT, PWRBTN_BIT);
        assert_eq!(r.sci.get(), 0, "not enabled: no SCI");

        // Clear, enable, press: one SCI.
        r.write16(STS, PWRBTN_BIT);
        r.write16(EN, PWRBTN_BIT);
        assert!(r.pm.power_button_enabled());
        assert_eq!(r.read16(EN), PWRBTN_BIT);
        assert_eq!(r.sci.get(), 0);
        r.pm.press_power_button();
        assert_eq!(r.read16(STS), PWRBTN_BIT);
        assert_eq!(r.sci.get(), 1);

        // Pressing again before the guest cleared the status adds no new event.
        r.pm.press_power_button();
        assert_eq!(r.sci.get(), 1);
        r.write16(STS, PWRBTN_BIT);
        r.pm.press_power_button();
        assert_eq!(r.sci.get(), 2);

        // Disabled again: status is set, no SCI.
        r.write16(STS, PWRBTN_BIT);
        r.write16(EN, 0);
        r.pm.press_power_button();
        assert_eq!(r.sci.get(), 2);
        assert_eq!(r.read16(STS), PWRBTN_BIT);
    }

    #[test]
    fn enabling_a_pending_event_raises_the_sci() {
        let mut r = rig();
        r.pm.press_power_button();
        assert_eq!(r.sci.get(), 0);
        // A 32-bit write of the whole event block: status (no bit to clear) and enable.
        r.pm.write(BASE, STS, &(u32::from(PWRBTN_BIT) << 16).to_le_bytes());
        assert_eq!(r.sci.get(), 1);
        // Rewriting the same enable is not a new edge.
        r.write16(EN, PWRBTN_BIT);
        assert_eq!(r.sci.get(), 1);
    }

    #[test]
    fn status_is_write_one_to_clear() {
        let mut r = rig();
        r.pm.press_power_button();
        // Writing zeros, or ones elsewhere, keeps the bit.
        r.write16(STS, 0);
        r.write16(STS, !PWRBTN_BIT);
        r.pm.write(BASE, STS, &[0xff]); // low byte only
        assert_eq!(r.read16(STS), PWRBTN_BIT);
        // Writing one to bit 8 (high byte alone) clears it.
        r.pm.write(BASE, STS + 1, &[0x01]);
        assert_eq!(r.read16(STS), 0);
        // The enable register is plain read/write with only defined bits kept.
        r.write16(EN, 0xffff);
        assert_eq!(r.read16(EN), ENABLE_MASK);
        r.write16(STS, 0xffff);
        assert_eq!(
            r.read16(EN),
            ENABLE_MASK,
            "status writes leave enable alone"
        );
    }

    #[test]
    fn s5_and_type_0_power_off_and_other_sleep_types_do_not() {
        let mut r = rig();
        assert_eq!(r.read16(CNT), SCI_EN, "always in ACPI mode");
        for typ in 1..8u16 {
            if typ == u16::from(SLP_TYP_S5) {
                continue;
            }
            // The type alone, then with SLP_EN, as ACPICA does.
            r.write16(CNT, SCI_EN | (typ << SLP_TYP_SHIFT));
            r.write16(CNT, SCI_EN | (typ << SLP_TYP_SHIFT) | SLP_EN);
        }
        assert_eq!(r.off.get(), 0);
        let s5 = u16::from(SLP_TYP_S5) << SLP_TYP_SHIFT;
        // The type without SLP_EN does nothing.
        r.write16(CNT, SCI_EN | s5);
        assert_eq!(r.off.get(), 0);
        assert_eq!(r.read16(CNT), SCI_EN | s5, "SLP_TYP reads back");
        r.write16(CNT, SCI_EN | s5 | SLP_EN);
        assert_eq!(r.off.get(), 1);
        assert_eq!(r.read16(CNT) & SLP_EN, 0, "SLP_EN reads as 0");
        // A byte write of the high half carries SLP_TYP and SLP_EN together.
        r.pm.write(BASE, CNT + 1, &[((s5 | SLP_EN) >> 8) as u8]);
        assert_eq!(r.off.get(), 2);
        // OVMF's power-off: SLP_TYP 0, then SLP_EN.
        r.write16(CNT, SCI_EN);
        r.write16(CNT, SCI_EN | SLP_EN);
        assert_eq!(r.off.get(), 3);
        // Writing SCI_EN = 0 does not leave ACPI mode.
        r.write16(CNT, 0);
        assert_eq!(r.read16(CNT), SCI_EN);
        assert_eq!((r.reset.get(), r.sci.get()), (0, 0));
    }

    #[test]
    fn reset_register() {
        let mut r = rig();
        r.pm.write(BASE, RST, &[0x01]);
        r.pm.write(BASE, RST, &[0xff]);
        assert_eq!(r.reset.get(), 0);
        r.pm.write(BASE, RST, &[RESET_VALUE]);
        assert_eq!(r.reset.get(), 1);
        let mut b = [0xffu8];
        r.pm.read(BASE, RST, &mut b);
        assert_eq!(b[0], 0);
    }

    #[test]
    fn pm_timer_counts_at_3_58_mhz() {
        let mut r = rig();
        let t0 = r.read32(TMR);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let t1 = r.read32(TMR);
        let ticks = u64::from(t1.wrapping_sub(t0));
        // At least the 50 ms slept; at most a few seconds of scheduler delay.
        assert!(ticks >= PM_TIMER_HZ / 20, "{ticks} ticks");
        assert!(ticks < PM_TIMER_HZ * 10, "{ticks} ticks");
        // Writes do not move it backwards.
        r.pm.write(BASE, TMR, &[0; 4]);
        assert!(r.read32(TMR).wrapping_sub(t1) < 0x8000_0000);
    }

    #[test]
    fn garbage_of_every_width_at_every_offset_never_panics() {
        let mut r = rig();
        let values = [0u8, 0xff, 0xa5, 0x5a, 0x20, 0x34, RESET_VALUE];
        for offset in (0..=u64::from(AcpiPmPorts::LEN) + 8).chain([u64::MAX - 2, u64::MAX]) {
            for width in [0usize, 1, 2, 3, 4, 8, 16, 64] {
                for &v in &values {
                    let data = vec![v; width];
                    r.pm.write(BASE, offset, &data);
                    let mut out = vec![0xeeu8; width];
                    r.pm.read(BASE, offset, &mut out);
                    if offset >= u64::from(AcpiPmPorts::LEN) {
                        assert!(out.iter().all(|&b| b == 0), "{offset:#x}+{width}");
                    }
                    r.pm.press_power_button();
                }
            }
        }
        // The hooks may have fired (garbage can be a valid command), and the device still
        // works afterwards.
        r.write16(STS, 0xffff);
        r.write16(EN, PWRBTN_BIT);
        let before = r.sci.get();
        r.pm.press_power_button();
        assert_eq!(r.sci.get(), before + 1);
        assert!(r.off.get() > 0 && r.reset.get() > 0);
    }
}
