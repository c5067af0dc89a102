//! MSI-X: the vector table, the pending bit array and the capability's control bits.

use std::io;
use std::sync::Arc;

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Size of one MSI-X table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enabled.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Largest table the capability can describe.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const VECTOR_CONTROL_MASKED: u32 = 1;

/// Delivers a message-signalled interrupt. The backend implements it (KVM:
/// `KVM_SIGNAL_MSI` or an irqfd with a GSI route; HVF: the GIC's MSI doorbell).
pub trait MsiSignaller: Send + Sync {
    /// Send the message `data` to `address`.
    fn signal_msi(&self, address: u64, data: u32) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn dword(&self, i: u64) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.control,
        }
    }

    fn set_dword(&mut self, i: u64, v: u32) {
        match i {
            0 => self.addr_lo = v,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Only the mask bit of vector control is implemented; the rest is reserved.
            _ => self.control = v & VECTOR_CONTROL_MASKED,
        }
    }

    fn masked(&self) -> bool {
        self.control & VECTOR_CONTROL_MASKED != 0
    }
}

/// The MSI-X state of one function.
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    signaller: Arc<dyn MsiSignaller>,
    delivered: u64,
}

impl std::fmt::Debug for MsixState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixState")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish()
    }
}

impl MsixState {
    /// A table of `vectors` entries (clamped to 1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16, signaller: Arc<dyn MsiSignaller>) -> Self {
        let n = usize::from(vectors.clamp(1, MSIX_MAX_VECTORS));
        MsixState {
            entries: vec![
                Entry {
                    control: VECTOR_CONTROL_MASKED,
                    ..Entry::default()
                };
                n
            ],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            signaller,
            delivered: 0,
        }
    }

    /// Number of vectors in the table.
    pub fn table_size(&self) -> u16 {
        // At most MSIX_MAX_VECTORS, which fits.
        self.entries.len() as u16
    }

    /// Size of the table in bytes.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Size of the pending bit array in bytes.
    pub fn pba_bytes(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Whether MSI-X is enabled in the capability.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How many messages were sent so far (for tests and statistics).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The message control word for the capability (table size, enable, function mask).
    pub fn control(&self) -> u16 {
        let mut c = self.table_size() - 1;
        if self.enabled {
            c |= MSIX_CONTROL_ENABLE;
        }
        if self.function_masked {
            c |= MSIX_CONTROL_FUNCTION_MASK;
        }
        c
    }

    /// The capability body (everything after ID and next pointer) and its writable mask,
    /// for a table at `table_offset` in BAR `table_bar` and a PBA at `pba_offset` in BAR
    /// `pba_bar`. Offsets must be 8-byte aligned.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&self.control().to_le_bytes());
        body.extend_from_slice(&((table_offset & !7) | u32::from(table_bar & 7)).to_le_bytes());
        body.extend_from_slice(&((pba_offset & !7) | u32::from(pba_bar & 7)).to_le_bytes());
        let writable = (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK)
            .to_le_bytes()
            .to_vec();
        (body, writable)
    }

    /// Apply a new message control word written by the guest; unmasking delivers pending
    /// messages.
    pub fn set_control(&mut self, control: u16) {
        let was_enabled = self.enabled;
        self.enabled = control & MSIX_CONTROL_ENABLE != 0;
        self.function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if self.enabled != was_enabled {
            tracing::debug!(enabled = self.enabled, "MSI-X enable changed");
        }
        self.deliver_pending();
    }

    /// Reset to the power-on state: disabled, all vectors masked, nothing pending.
    pub fn reset(&mut self) {
        for e in &mut self.entries {
            *e = Entry {
                control: VECTOR_CONTROL_MASKED,
                ..Entry::default()
            };
        }
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
    }

    /// Guest read of the table. Any offset and size is accepted; bytes past the table
    /// read as all-ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let e = self
                        .entries
                        .get(usize::try_from(o / MSIX_ENTRY_SIZE).ok()?)?;
                    let d = e.dword((o % MSIX_ENTRY_SIZE) / 4).to_le_bytes();
                    Some(d[(o % 4) as usize])
                })
                .unwrap_or(0xff);
        }
    }

    /// Guest write of the table. Bytes past the table are ignored; unmasking a vector
    /// with its pending bit set delivers the message.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched = Vec::new();
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i as u64) else {
                break;
            };
            let Some(idx) = usize::try_from(o / MSIX_ENTRY_SIZE)
                .ok()
                .filter(|i| *i < self.entries.len())
            else {
                continue;
            };
            let dw = (o % MSIX_ENTRY_SIZE) / 4;
            let entry = &mut self.entries[idx];
            let mut bytes = entry.dword(dw).to_le_bytes();
            bytes[(o % 4) as usize] = *v;
            entry.set_dword(dw, u32::from_le_bytes(bytes));
            if touched.last() != Some(&idx) {
                touched.push(idx);
            }
        }
        for idx in touched {
            self.deliver_if_pending(idx);
        }
    }

    /// Guest read of the pending bit array; bytes past it read as all-ones.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let q = self.pending.get(usize::try_from(o / 8).ok()?)?;
                    Some(q.to_le_bytes()[(o % 8) as usize])
                })
                .unwrap_or(0xff);
        }
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// Whether `vector` is masked (individually or by the function mask).
    pub fn is_masked(&self, vector: u16) -> bool {
        self.function_masked
            || self
                .entries
                .get(usize::from(vector))
                .is_none_or(Entry::masked)
    }

    /// Raise `vector`: send its message, or set its pending bit if it is masked. Returns
    /// false if MSI-X is disabled or the vector does not exist (nothing happens then).
    pub fn trigger(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.is_masked(vector) {
            self.pending[v / 64] |= 1 << (v % 64);
        } else {
            self.send(v);
        }
        true
    }

    fn deliver_pending(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for idx in 0..self.entries.len() {
            self.deliver_if_pending(idx);
        }
    }

    fn deliver_if_pending(&mut self, idx: usize) {
        let bit = 1u64 << (idx % 64);
        if self.enabled
            && !self.function_masked
            && !self.entries[idx].masked()
            && self.pending[idx / 64] & bit != 0
        {
            self.pending[idx / 64] &= !bit;
            self.send(idx);
        }
    }

    fn send(&mut self, idx: usize) {
        let e = self.entries[idx];
        let address = u64::from(e.addr_lo) | (u64::from(e.addr_hi) << 32);
        match self.signaller.signal_msi(address, e.data) {
            Ok(()) => self.delivered += 1,
            Err(err) => tracing::warn!(vector = idx, address, "MSI delivery failed: {err}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records every message.
    #[derive(Default)]
    pub(crate) struct RecordingSignaller(pub Mutex<Vec<(u64, u32)>>);

    impl MsiSignaller for RecordingSignaller {
        fn signal_msi(&self, address: u64, data: u32) -> io::Result<()> {
            self.0.lock().unwrap().push((address, data));
            Ok(())
        }
    }

    fn program(m: &mut MsixState, v: u64, addr: u64, data: u32, masked: bool) {
        let o = v * MSIX_ENTRY_SIZE;
        m.write_table(o, &(addr as u32).to_le_bytes());
        m.write_table(o + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(o + 8, &data.to_le_bytes());
        m.write_table(o + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn masks_and_pending() {
        let sig = Arc::new(RecordingSignaller::default());
        let mut m = MsixState::new(3, sig.clone());
        assert_eq!(m.control(), 2);
        // Disabled: nothing happens.
        assert!(!m.trigger(0));
        program(&mut m, 0, 0xfee0_0000, 0x41, false);
        program(&mut m, 1, 0xfee0_1000, 0x42, true);
        m.set_control(MSIX_CONTROL_ENABLE);
        assert!(m.trigger(0));
        assert!(m.trigger(1));
        assert!(m.is_pending(1));
        assert_eq!(*sig.0.lock().unwrap(), vec![(0xfee0_0000, 0x41)]);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        // Unmasking the vector delivers the pending message.
        m.write_table(MSIX_ENTRY_SIZE + 12, &0u32.to_le_bytes());
        assert!(!m.is_pending(1));
        assert_eq!(sig.0.lock().unwrap().len(), 2);
        // Function mask holds everything back until cleared.
        m.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert!(m.trigger(0));
        assert_eq!(sig.0.lock().unwrap().len(), 2);
        m.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(sig.0.lock().unwrap().len(), 3);
        // Nonexistent vectors are ignored.
        assert!(!m.trigger(3));
        assert!(!m.trigger(u16::MAX));
        assert_eq!(m.delivered(), 3);
    }

    #[test]
    fn garbage_table_accesses() {
        let sig = Arc::new(RecordingSignaller::default());
        let mut m = MsixState::new(2, sig.clone());
        m.set_control(MSIX_CONTROL_ENABLE);
        // Every byte, every width, including past the end.
        for off in 0..64u64 {
            for len in [1usize, 2, 3, 4, 8] {
                m.write_table(off, &vec![0xa5; len]);
                let mut b = vec![0; len];
                m.read_table(off, &mut b);
                m.read_pba(off, &mut b);
            }
        }
        m.write_table(u64::MAX - 1, &[0xff; 8]);
        let mut b = [0u8; 8];
        m.read_table(u64::MAX - 1, &mut b);
        assert_eq!(b, [0xff; 8]);
        // Reserved vector-control bits read back as zero; the mask bit is kept.
        let mut ctl = [0u8; 4];
        m.read_table(12, &mut ctl);
        assert_eq!(u32::from_le_bytes(ctl), 1);
        // Past the table reads all-ones.
        m.read_table(32, &mut ctl);
        assert_eq!(ctl, [0xff; 4]);
        m.reset();
        assert!(!m.enabled());
        assert!(m.is_masked(0));
    }
}
