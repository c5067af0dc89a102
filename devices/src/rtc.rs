//! The PC's CMOS real-time clock (a Motorola MC146818 as every PC chipset models it) with its
//! battery-backed RAM: the clock a guest reads at boot (Linux's `rtc_cmos`, `hwclock`,
//! firmware), kept as an offset from the host's wall clock so that it runs while the VM runs
//! and a guest that sets it keeps its own time.
//!
//! Registered on the port I/O bus at `0x70` with a length of 2: offset 0 selects a register
//! (bit 7 is the NMI mask, ignored), offset 1 reads or writes it.
//!
//! What is modelled: the time and date registers in BCD or binary and in 24- or 12-hour mode
//! as register B selects; the century at `0x32` (the FADT's century field names it); the
//! update-in-progress bit (set during the last 244 µs of every second, as the chip does, so
//! that guests that wait for it see it fall); the SET bit that freezes the clock while the
//! guest writes a new time; the alarm; the update-ended, alarm and periodic interrupt flags in
//! register C (read clears them) and their interrupt on IRQ 8 when register B enables it; and
//! 114 bytes of RAM. Interrupts are timed by a small thread that only exists while one of them
//! is enabled. There is no crate for this device in the rust-vmm family (`vm-superio` has the
//! ARM PL031 only), so it is written here.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::IrqLine;
use crate::bus::BusDevice;

/// Register: seconds.
const SECONDS: usize = 0x00;
/// Register: seconds alarm.
const SECONDS_ALARM: usize = 0x01;
/// Register: minutes.
const MINUTES: usize = 0x02;
/// Register: minutes alarm.
const MINUTES_ALARM: usize = 0x03;
/// Register: hours.
const HOURS: usize = 0x04;
/// Register: hours alarm.
const HOURS_ALARM: usize = 0x05;
/// Register: day of the week, 1 = Sunday.
const WEEKDAY: usize = 0x06;
/// Register: day of the month.
const DAY: usize = 0x07;
/// Register: month.
const MONTH: usize = 0x08;
/// Register: year within the century.
const YEAR: usize = 0x09;
/// Register A: update in progress, divider, periodic rate.
const REG_A: usize = 0x0a;
/// Register B: SET, interrupt enables, data mode, 24-hour mode.
const REG_B: usize = 0x0b;
/// Register C: interrupt flags, cleared by reading.
const REG_C: usize = 0x0c;
/// Register D: valid RAM and time.
const REG_D: usize = 0x0d;
/// Register: century (the FADT's `century` field points here).
pub const CENTURY: u8 = 0x32;

/// Register A bit 7: an update is in progress.
const A_UIP: u8 = 0x80;
/// Register A bits 0-3: periodic interrupt rate select.
const A_RATE: u8 = 0x0f;
/// Register A after reset: divider 010 (32.768 kHz time base), rate 0110 (1024 Hz).
const A_RESET: u8 = 0x26;
/// Register B bit 7: updates halted while the guest sets the clock.
const B_SET: u8 = 0x80;
/// Register B bit 6: periodic interrupt enable.
const B_PIE: u8 = 0x40;
/// Register B bit 5: alarm interrupt enable.
const B_AIE: u8 = 0x20;
/// Register B bit 4: update-ended interrupt enable.
const B_UIE: u8 = 0x10;
/// Register B bit 2: data mode binary (clear: BCD).
const B_BINARY: u8 = 0x04;
/// Register B bit 1: 24-hour mode (clear: 12-hour with bit 7 of the hour = PM).
const B_24H: u8 = 0x02;
/// Register B after reset: BCD, 24-hour, no interrupts (what PC firmware leaves).
const B_RESET: u8 = B_24H;
/// Register C bit 7: an enabled interrupt is pending.
const C_IRQF: u8 = 0x80;
/// Register C bit 6: periodic interrupt flag.
const C_PF: u8 = 0x40;
/// Register C bit 5: alarm flag.
const C_AF: u8 = 0x20;
/// Register C bit 4: update-ended flag.
const C_UF: u8 = 0x10;
/// Register D bit 7: valid RAM and time (the battery is good).
const D_VRT: u8 = 0x80;
/// Alarm register values from 0xc0 up match any value.
const ALARM_DONT_CARE: u8 = 0xc0;

/// How long before each second boundary the update-in-progress bit is set.
const UPDATE_CYCLE: Duration = Duration::from_micros(244);
/// The longest stretch of missed seconds whose alarms are checked one by one (a day); after a
/// longer gap (the host slept) the alarm flag is set if the alarm matched on any of them.
const MAX_SECONDS_SCANNED: u64 = 86_400;
/// The fastest periodic interrupt the model delivers (rate select 3, 8192 Hz).
const MIN_PERIOD: Duration = Duration::from_nanos(122_070);

/// Where the clock gets the host's time; tests substitute their own.
pub trait WallClock: Send + Sync {
    /// Time since the Unix epoch.
    fn now(&self) -> Duration;
}

/// The host's real-time clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A broken-down calendar time, as the time registers hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CalendarTime {
    year: i32,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CalendarTime {
    fn from_unix(seconds: i64) -> Option<CalendarTime> {
        let t = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?;
        Some(CalendarTime {
            year: t.year(),
            month: u8::from(t.month()),
            day: t.day(),
            weekday: t.weekday().number_from_sunday(),
            hour: t.hour(),
            minute: t.minute(),
            second: t.second(),
        })
    }

    fn to_unix(self) -> Option<i64> {
        let month = time::Month::try_from(self.month).ok()?;
        let date = time::Date::from_calendar_date(self.year, month, self.day).ok()?;
        let clock = time::Time::from_hms(self.hour, self.minute, self.second).ok()?;
        Some(
            time::PrimitiveDateTime::new(date, clock)
                .assume_utc()
                .unix_timestamp(),
        )
    }
}

/// The clock's state, shared with the interrupt timer thread.
struct State {
    clock: Arc<dyn WallClock>,
    /// The guest's time minus the host's, in whole seconds.
    offset: i64,
    /// Registers and RAM. The time registers hold the frozen time while SET is on, and are
    /// computed from the host clock otherwise.
    cmos: [u8; 128],
    /// The host time up to which update, alarm and periodic events have been accounted for.
    accounted_to: Duration,
    /// Set when the device goes away, to end the timer thread.
    stopping: bool,
}

impl State {
    fn binary(&self) -> bool {
        self.cmos[REG_B] & B_BINARY != 0
    }

    fn encode(&self, value: u8) -> u8 {
        if self.binary() {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// A register value in the current data mode, or `None` for a value that is not valid
    /// BCD (which a guest may write; the clock then keeps its time).
    fn decode(&self, value: u8) -> Option<u8> {
        if self.binary() {
            Some(value)
        } else {
            let (high, low) = (value >> 4, value & 0xf);
            (high < 10 && low < 10).then_some(high * 10 + low)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.cmos[REG_B] & B_24H != 0 {
            self.encode(hour)
        } else {
            let pm = if hour >= 12 { 0x80 } else { 0 };
            let twelve = match hour % 12 {
                0 => 12,
                h => h,
            };
            self.encode(twelve) | pm
        }
    }

    fn decode_hour(&self, value: u8) -> Option<u8> {
        if self.cmos[REG_B] & B_24H != 0 {
            self.decode(value)
        } else {
            let twelve = self.decode(value & 0x7f)?;
            if !(1..=12).contains(&twelve) {
                return None;
            }
            Some(twelve % 12 + if value & 0x80 != 0 { 12 } else { 0 })
        }
    }

    fn guest_seconds(&self, host: Duration) -> i64 {
        (host.as_secs() as i64).saturating_add(self.offset)
    }

    /// Writes the guest's calendar time into the time registers.
    fn store_time(&mut self, t: CalendarTime) {
        self.cmos[SECONDS] = self.encode(t.second);
        self.cmos[MINUTES] = self.encode(t.minute);
        self.cmos[HOURS] = self.encode_hour(t.hour);
        self.cmos[WEEKDAY] = self.encode(t.weekday);
        self.cmos[DAY] = self.encode(t.day);
        self.cmos[MONTH] = self.encode(t.month);
        let year = t.year.rem_euclid(10_000);
        self.cmos[YEAR] = self.encode((year % 100) as u8);
        self.cmos[CENTURY as usize] = self.encode((year / 100) as u8);
    }

    /// The calendar time the time registers hold, if it is a valid one.
    fn stored_time(&self) -> Option<CalendarTime> {
        let century = self.decode(self.cmos[CENTURY as usize])?;
        let year = self.decode(self.cmos[YEAR])?;
        if year > 99 || century > 99 {
            return None;
        }
        Some(CalendarTime {
            year: i32::from(century) * 100 + i32::from(year),
            month: self.decode(self.cmos[MONTH])?,
            day: self.decode(self.cmos[DAY])?,
            weekday: 0,
            hour: self.decode_hour(self.cmos[HOURS])?,
            minute: self.decode(self.cmos[MINUTES])?,
            second: self.decode(self.cmos[SECONDS])?,
        })
    }

    /// Brings the time registers up to the running clock (not while SET freezes them).
    fn refresh_time(&mut self, host: Duration) {
        if self.cmos[REG_B] & B_SET != 0 {
            return;
        }
        if let Some(t) = CalendarTime::from_unix(self.guest_seconds(host)) {
            self.store_time(t);
        }
    }

    /// Takes the time registers as the new guest time (the guest wrote one of them).
    fn adopt_stored_time(&mut self, host: Duration) {
        if let Some(seconds) = self.stored_time().and_then(CalendarTime::to_unix) {
            self.offset = seconds.saturating_sub(host.as_secs() as i64);
        }
    }

    fn alarm_matches(&self, guest_seconds: i64) -> bool {
        let Some(t) = CalendarTime::from_unix(guest_seconds) else {
            return false;
        };
        let matches = |register: usize, value: u8, is_hour: bool| {
            let alarm = self.cmos[register];
            if alarm >= ALARM_DONT_CARE {
                return true;
            }
            let encoded = if is_hour {
                self.encode_hour(value)
            } else {
                self.encode(value)
            };
            alarm == encoded
        };
        matches(SECONDS_ALARM, t.second, false)
            && matches(MINUTES_ALARM, t.minute, false)
            && matches(HOURS_ALARM, t.hour, true)
    }

    /// The periodic interrupt's period, if register A selects one.
    fn period(&self) -> Option<Duration> {
        match self.cmos[REG_A] & A_RATE {
            0 => None,
            // Rates 1 and 2 repeat rates 8 and 9 (256 Hz and 128 Hz), as on the chip.
            1 => Some(Duration::from_nanos(3_906_250)),
            2 => Some(Duration::from_nanos(7_812_500)),
            rate => Some(
                Duration::from_nanos(1_000_000_000 * (1 << (rate - 1)) / 32_768).max(MIN_PERIOD),
            ),
        }
    }

    /// Sets the update, alarm and periodic flags for everything that happened between the
    /// last call and `host`. Returns true when this raised IRQF (an interrupt is due).
    fn account(&mut self, host: Duration) -> bool {
        let from = self.accounted_to;
        if host <= from {
            return false;
        }
        self.accounted_to = host;
        let before = self.cmos[REG_C];
        if self.cmos[REG_B] & B_SET == 0 {
            let crossed = host.as_secs().saturating_sub(from.as_secs());
            if crossed > 0 {
                self.cmos[REG_C] |= C_UF;
                // A day of seconds holds every hour:minute:second the alarm can name.
                let scanned = crossed.min(MAX_SECONDS_SCANNED) as i64;
                let last = self.guest_seconds(host);
                if (last - scanned + 1..=last).any(|s| self.alarm_matches(s)) {
                    self.cmos[REG_C] |= C_AF;
                }
            }
        }
        if let Some(period) = self.period() {
            let period = period.as_nanos();
            if host.as_nanos() / period != from.as_nanos() / period {
                self.cmos[REG_C] |= C_PF;
            }
        }
        // The enable bits in B sit at the same positions as their flags in C.
        let enabled = self.cmos[REG_B] & (B_PIE | B_AIE | B_UIE);
        if self.cmos[REG_C] & enabled & (C_PF | C_AF | C_UF) != 0 {
            self.cmos[REG_C] |= C_IRQF;
        }
        before & C_IRQF == 0 && self.cmos[REG_C] & C_IRQF != 0
    }

    /// When the timer thread must next look, if an interrupt is enabled.
    fn next_event(&self) -> Option<Duration> {
        let b = self.cmos[REG_B];
        let now = self.accounted_to;
        let mut next: Option<Duration> = None;
        if b & (B_AIE | B_UIE) != 0 && b & B_SET == 0 {
            next = Some(Duration::from_secs(now.as_secs() + 1));
        }
        if b & B_PIE != 0
            && let Some(period) = self.period()
        {
            let period_ns = period.as_nanos();
            let at = (now.as_nanos() / period_ns + 1) * period_ns;
            let at = Duration::from_nanos(u64::try_from(at).unwrap_or(u64::MAX));
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        next
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    irq: Arc<dyn IrqLine>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock(&self.state)
    }
}

/// The CMOS real-time clock and its RAM.
pub struct CmosRtc {
    shared: Arc<Shared>,
    /// The selected register (port 0x70, NMI mask bit removed).
    index: u8,
    timer: Option<JoinHandle<()>>,
}

impl CmosRtc {
    /// A clock showing the host's time (UTC), raising `irq` (IRQ 8 on a PC).
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        Self::with_clock(irq, Arc::new(SystemClock), 0)
    }

    /// A clock that reads the host's time from `clock` and runs `offset` seconds ahead of it.
    pub fn with_clock(irq: Arc<dyn IrqLine>, clock: Arc<dyn WallClock>, offset: i64) -> Self {
        let now = clock.now();
        let mut cmos = [0u8; 128];
        cmos[REG_A] = A_RESET;
        cmos[REG_B] = B_RESET;
        cmos[REG_D] = D_VRT;
        let mut state = State {
            clock,
            offset,
            cmos,
            accounted_to: now,
            stopping: false,
        };
        state.refresh_time(now);
        CmosRtc {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Condvar::new(),
                irq,
            }),
            index: 0,
            timer: None,
        }
    }

    /// Records the machine's memory in the battery-backed RAM where PC firmware reads it
    /// (SeaBIOS and OVMF use these when fw_cfg gives no memory map): base memory (0x15/0x16,
    /// KiB below 640 KiB), extended memory (0x17/0x18 and 0x30/0x31, KiB from 1 MiB to
    /// 64 MiB), memory from 16 MiB to `low_end` in 64 KiB units (0x34/0x35) and above 4 GiB
    /// in 64 KiB units (0x5b..0x5d).
    pub fn set_memory_size(&mut self, low_end: u64, above_4g: u64) {
        let mut state = self.shared.lock();
        let base_kib: u16 = 640;
        state.cmos[0x15..0x17].copy_from_slice(&base_kib.to_le_bytes());
        let extended_kib = (low_end.saturating_sub(1 << 20) >> 10).min(0xfc00) as u16;
        state.cmos[0x17..0x19].copy_from_slice(&extended_kib.to_le_bytes());
        state.cmos[0x30..0x32].copy_from_slice(&extended_kib.to_le_bytes());
        let above_16m = (low_end.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        state.cmos[0x34..0x36].copy_from_slice(&above_16m.to_le_bytes());
        let high = (above_4g >> 16).min(0xff_ffff) as u32;
        state.cmos[0x5b..0x5e].copy_from_slice(&high.to_le_bytes()[..3]);
    }

    /// The guest's time, in seconds since the Unix epoch.
    pub fn guest_time(&self) -> i64 {
        let state = self.shared.lock();
        state.guest_seconds(state.clock.now())
    }

    fn read_register(&mut self, index: usize) -> u8 {
        let mut state = self.shared.lock();
        let now = state.clock.now();
        let raise = state.account(now);
        let value = match index {
            SECONDS..=YEAR | 0x32 => {
                state.refresh_time(now);
                state.cmos[index]
            }
            REG_A => {
                let in_update = state.cmos[REG_B] & B_SET == 0
                    && now.subsec_nanos() >= 1_000_000_000 - UPDATE_CYCLE.as_nanos() as u32;
                (state.cmos[REG_A] & !A_UIP) | if in_update { A_UIP } else { 0 }
            }
            REG_C => {
                let flags = state.cmos[REG_C];
                state.cmos[REG_C] = 0;
                flags
            }
            _ => state.cmos[index],
        };
        drop(state);
        if raise {
            self.raise();
        }
        value
    }

    fn write_register(&mut self, index: usize, value: u8) {
        let mut state = self.shared.lock();
        let now = state.clock.now();
        let raise = state.account(now);
        match index {
            SECONDS..=YEAR | 0x32 => {
                let alarm = matches!(index, SECONDS_ALARM | MINUTES_ALARM | HOURS_ALARM);
                if !alarm {
                    state.refresh_time(now);
                }
                state.cmos[index] = value;
                if !alarm && state.cmos[REG_B] & B_SET == 0 {
                    // A running clock takes a new value at once.
                    state.adopt_stored_time(now);
                }
            }
            REG_A => state.cmos[REG_A] = value & !A_UIP,
            REG_B => {
                let was_set = state.cmos[REG_B] & B_SET != 0;
                if !was_set && value & B_SET != 0 {
                    // Freeze: the registers keep the time at this moment for the guest to
                    // overwrite.
                    state.refresh_time(now);
                }
                // The data mode changes how the frozen registers read: re-encode them.
                let frozen = state.stored_time();
                state.cmos[REG_B] = value;
                if let Some(t) = frozen.filter(|_| value & B_SET != 0) {
                    let weekday = state.cmos[WEEKDAY];
                    state.store_time(t);
                    state.cmos[WEEKDAY] = weekday;
                }
                if was_set && value & B_SET == 0 {
                    state.adopt_stored_time(now);
                    state.accounted_to = now;
                }
                if value & (B_PIE | B_AIE | B_UIE) != 0 {
                    drop(state);
                    self.ensure_timer();
                    self.shared.wake.notify_all();
                    if raise {
                        self.raise();
                    }
                    return;
                }
            }
            // Register C and D are read-only.
            REG_C | REG_D => {}
            _ => state.cmos[index] = value,
        }
        drop(state);
        if raise {
            self.raise();
        }
    }

    fn raise(&self) {
        if let Err(e) = self.shared.irq.trigger() {
            tracing::warn!("RTC: could not raise the interrupt: {e}");
        }
    }

    /// Starts the interrupt timer thread the first time the guest enables an interrupt.
    fn ensure_timer(&mut self) {
        if self.timer.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("rtc-timer".into())
            .spawn(move || {
                vivarium_threads::started(vivarium_threads::ThreadKind::Device);
                timer_thread(&shared)
            });
        match spawned {
            Ok(handle) => self.timer = Some(handle),
            Err(e) => tracing::warn!("RTC: no interrupt timer ({e}); flags still work"),
        }
    }
}

/// Sleeps until the next enabled event, accounts for it and raises the interrupt.
fn timer_thread(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stopping {
            return;
        }
        let now = state.clock.now();
        if state.account(now) {
            drop(state);
            if let Err(e) = shared.irq.trigger() {
                tracing::warn!("RTC: could not raise the interrupt: {e}");
            }
            state = shared.lock();
            continue;
        }
        state = match state.next_event() {
            Some(at) => {
                let wait = at.saturating_sub(now).max(Duration::from_micros(50));
                shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

impl Drop for CmosRtc {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }
}

impl BusDevice for CmosRtc {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.index,
            1 => self.read_register(usize::from(self.index)),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            0 => self.index = value & 0x7f,
            1 => self.write_register(usize::from(self.index), value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// A clock the test moves by hand.
    struct TestClock(AtomicU64);

    impl TestClock {
        fn at(seconds: u64, nanos: u32) -> Arc<Self> {
            Arc::new(TestClock(AtomicU64::new(
                seconds * 1_000_000_000 + u64::from(nanos),
            )))
        }
        fn advance(&self, by: Duration) {
            self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
        }
    }

    impl WallClock for TestClock {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::SeqCst))
        }
    }

    #[derive(Default)]
    struct CountingIrq(AtomicU32);

    impl IrqLine for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    /// 2026-11-24 13:45:30 UTC, a Tuesday.
    const TUESDAY: u64 = 1_795_527_930;

    fn rtc_at(seconds: u64, nanos: u32) -> (CmosRtc, Arc<TestClock>, Arc<CountingIrq>) {
        let clock = TestClock::at(seconds, nanos);
        let irq = Arc::new(CountingIrq::default());
        (
            CmosRtc::with_clock(irq.clone(), clock.clone(), 0),
            clock,
            irq,
        )
    }

    fn read(rtc: &mut CmosRtc, register: u8) -> u8 {
        rtc.write(0x70, 0, &[register | 0x80]);
        let mut b = [0u8];
        rtc.read(0x70, 1, &mut b);
        b[0]
    }

    fn write(rtc: &mut CmosRtc, register: u8, value: u8) {
        rtc.write(0x70, 0, &[register]);
        rtc.write(0x70, 1, &[value]);
    }

    #[test]
    fn memory_size_fields_as_firmware_reads_them() {
        let mut rtc = CmosRtc::new(Arc::new(CountingIrq::default()));
        rtc.set_memory_size(3 << 30, 5 << 30);
        let word = |rtc: &mut CmosRtc, at: u8| {
            u16::from(read(rtc, at)) | (u16::from(read(rtc, at + 1)) << 8)
        };
        assert_eq!(word(&mut rtc, 0x15), 640);
        assert_eq!(word(&mut rtc, 0x30), 0xfc00);
        assert_eq!(
            u64::from(word(&mut rtc, 0x34)),
            ((3u64 << 30) - (16 << 20)) >> 16
        );
        let high = u32::from(read(&mut rtc, 0x5b))
            | (u32::from(read(&mut rtc, 0x5c)) << 8)
            | (u32::from(read(&mut rtc, 0x5d)) << 16);
        assert_eq!(u64::from(high), (5u64 << 30) >> 16);
        // The clock registers are untouched.
        assert_eq!(read(&mut rtc, 0x0a) & 0x7f, 0x26);
    }

    #[test]
    fn reads_the_host_time_in_bcd_24_hour_mode() {
        let (mut rtc, _, _) = rtc_at(TUESDAY, 0);
        assert_eq!(read(&mut rtc, 0x00), 0x30);
        assert_eq!(read(&mut rtc, 0x02), 0x45);
        assert_eq!(read(&mut rtc, 0x04), 0x13);
        assert_eq!(
            read(&mut rtc, 0x06),
            3,
            "Tuesday is day 3 counting Sunday as 1"
        );
        assert_eq!(read(&mut rtc, 0x07), 0x24);
        assert_eq!(read(&mut rtc, 0x08), 0x11);
        assert_eq!(read(&mut rtc, 0x09), 0x26);
        assert_eq!(read(&mut rtc, CENTURY), 0x20);
        assert_eq!(read(&mut rtc, 0x0d), D_VRT, "battery good");
        assert_eq!(read(&mut rtc, 0x0a) & 0x7f, A_RESET);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let (mut rtc, _, _) = rtc_at(TUESDAY, 0);
        write(&mut rtc, 0x0b, B_BINARY);
        assert_eq!(read(&mut rtc, 0x04), 0x80 | 1, "1 PM");
        assert_eq!(read(&mut rtc, 0x02), 45);
        write(&mut rtc, 0x0b, 0);
        assert_eq!(read(&mut rtc, 0x04), 0x81, "BCD 1 PM");
        write(&mut rtc, 0x0b, B_BINARY | B_24H);
        assert_eq!(read(&mut rtc, 0x04), 13);
        assert_eq!(read(&mut rtc, 0x09), 26);
    }

    #[test]
    fn the_clock_runs() {
        let (mut rtc, clock, _) = rtc_at(TUESDAY, 0);
        clock.advance(Duration::from_secs(31));
        assert_eq!(read(&mut rtc, 0x00), 0x01);
        assert_eq!(read(&mut rtc, 0x02), 0x46);
    }

    #[test]
    fn update_in_progress_in_the_last_244_microseconds() {
        let (mut rtc, clock, _) = rtc_at(TUESDAY, 999_700_000);
        assert_eq!(read(&mut rtc, 0x0a) & A_UIP, 0);
        clock.advance(Duration::from_micros(100));
        assert_eq!(read(&mut rtc, 0x0a) & A_UIP, A_UIP);
        clock.advance(Duration::from_micros(300));
        assert_eq!(read(&mut rtc, 0x0a) & A_UIP, 0);
    }

    #[test]
    fn the_guest_sets_the_time_with_the_set_bit() {
        let (mut rtc, clock, _) = rtc_at(TUESDAY, 0);
        write(&mut rtc, 0x0b, B_SET | B_24H);
        // While SET is on the registers are frozen.
        clock.advance(Duration::from_secs(5));
        assert_eq!(read(&mut rtc, 0x00), 0x30);
        // 1999-12-31 23:59:50.
        for (register, value) in [
            (0x00, 0x50),
            (0x02, 0x59),
            (0x04, 0x23),
            (0x07, 0x31),
            (0x08, 0x12),
            (0x09, 0x99),
            (CENTURY, 0x19),
        ] {
            write(&mut rtc, register, value);
        }
        write(&mut rtc, 0x0b, B_24H);
        assert_eq!(rtc.guest_time(), 946_684_790);
        clock.advance(Duration::from_secs(15));
        assert_eq!(read(&mut rtc, 0x09), 0x00, "the century rolls over");
        assert_eq!(read(&mut rtc, CENTURY), 0x20);
        assert_eq!(read(&mut rtc, 0x00), 0x05);
        assert_eq!(read(&mut rtc, 0x06), 7, "2000-01-01 was a Saturday");
    }

    #[test]
    fn garbage_time_keeps_the_clock() {
        let (mut rtc, _, _) = rtc_at(TUESDAY, 0);
        write(&mut rtc, 0x0b, B_SET | B_24H);
        write(&mut rtc, 0x08, 0x13); // month 13
        write(&mut rtc, 0x07, 0xfa); // not BCD
        write(&mut rtc, 0x0b, B_24H);
        assert_eq!(rtc.guest_time(), TUESDAY as i64);
        // A direct write of a bad value to a running clock changes nothing either.
        write(&mut rtc, 0x04, 0x99);
        assert_eq!(rtc.guest_time(), TUESDAY as i64);
    }

    #[test]
    fn a_running_clock_takes_a_written_minute() {
        let (mut rtc, _, _) = rtc_at(TUESDAY, 0);
        write(&mut rtc, 0x02, 0x50);
        assert_eq!(rtc.guest_time(), TUESDAY as i64 + 5 * 60);
        assert_eq!(read(&mut rtc, 0x02), 0x50);
    }

    #[test]
    fn ram_keeps_what_the_guest_writes_and_c_d_are_read_only() {
        let (mut rtc, _, _) = rtc_at(TUESDAY, 0);
        for register in 0x0e..0x80u8 {
            if register != CENTURY {
                write(&mut rtc, register, register ^ 0x5a);
            }
        }
        for register in 0x0e..0x80u8 {
            if register != CENTURY {
                assert_eq!(read(&mut rtc, register), register ^ 0x5a);
            }
        }
        write(&mut rtc, 0x0d, 0);
        assert_eq!(read(&mut rtc, 0x0d), D_VRT);
        write(&mut rtc, 0x0c, 0xff);
        assert_eq!(read(&mut rtc, 0x0c), 0);
    }

    #[test]
    fn update_flag_is_polled_without_interrupts() {
        let (mut rtc, clock, irq) = rtc_at(TUESDAY, 500_000_000);
        assert_eq!(read(&mut rtc, 0x0c) & C_UF, 0);
        clock.advance(Duration::from_millis(600));
        let c = read(&mut rtc, 0x0c);
        assert_eq!(c & C_UF, C_UF);
        assert_eq!(c & C_IRQF, 0, "not enabled, so no IRQF");
        assert_eq!(read(&mut rtc, 0x0c) & C_UF, 0, "reading C clears it");
        assert_eq!(irq.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn alarm_fires_at_the_matching_second() {
        let (mut rtc, clock, irq) = rtc_at(TUESDAY, 0);
        write(&mut rtc, 0x01, 0x35);
        write(&mut rtc, 0x03, 0xff); // any minute
        write(&mut rtc, 0x05, 0x13);
        write(&mut rtc, 0x0b, B_24H | B_AIE);
        read(&mut rtc, 0x0c);
        clock.advance(Duration::from_secs(3));
        assert_eq!(read(&mut rtc, 0x0c) & C_AF, 0);
        clock.advance(Duration::from_secs(2));
        let c = read(&mut rtc, 0x0c);
        assert_eq!(c & (C_AF | C_IRQF), C_AF | C_IRQF);
        assert!(irq.0.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn periodic_interrupts_reach_the_irq_line_from_the_timer_thread() {
        let irq = Arc::new(CountingIrq::default());
        let mut rtc = CmosRtc::new(irq.clone());
        // Rate 15: 2 Hz. Reading C acknowledges each interrupt, like Linux's handler.
        write(&mut rtc, 0x0a, 0x2f);
        write(&mut rtc, 0x0b, B_24H | B_PIE);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while irq.0.load(Ordering::SeqCst) < 3 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            read(&mut rtc, 0x0c);
        }
        assert!(irq.0.load(Ordering::SeqCst) >= 3);
        drop(rtc); // joins the timer thread
    }

    #[test]
    fn hostile_accesses_never_panic() {
        let (mut rtc, clock, _) = rtc_at(TUESDAY, 0);
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let offset = u64::from(x & 3);
            let value = (x >> 8) as u8;
            if x & 0x100 != 0 {
                rtc.write(0x70, offset, &[value]);
            } else {
                let mut b = [0u8; 4];
                rtc.read(0x70, offset, &mut b[..(1 + (x >> 20) as usize % 4)]);
            }
            clock.advance(Duration::from_micros(u64::from(x >> 24)));
        }
        rtc.write(0x70, 1, &[]);
        rtc.read(0x70, 1, &mut []);
    }
}
