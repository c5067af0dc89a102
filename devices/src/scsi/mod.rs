//! SCSI logical units, independent of the transport that carries their commands.
//!
//! A logical unit executes a command descriptor block (CDB) and answers with a SCSI
//! status and, on CHECK CONDITION, sense data. Data-in goes to a [`DataIn`] sink the
//! transport provides (for virtio-scsi: the device-writable buffers of the request), so a
//! large READ streams into guest memory without a host buffer of its size.
//!
//! Layouts follow SPC-4 (INQUIRY, REQUEST SENSE, MODE SENSE, REPORT LUNS, sense data) and
//! MMC-6 (the CD/DVD commands); [`cdrom`] is the only logical unit so far.

pub mod cdrom;

/// SCSI status: the command completed.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status: the command failed; sense data says why.
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// Sense key: no error to report.
pub const KEY_NO_SENSE: u8 = 0x0;
/// Sense key: the unit cannot be accessed (e.g. no medium).
pub const KEY_NOT_READY: u8 = 0x2;
/// Sense key: the medium could not be read.
pub const KEY_MEDIUM_ERROR: u8 = 0x3;
/// Sense key: the CDB or its parameters are invalid.
pub const KEY_ILLEGAL_REQUEST: u8 = 0x5;
/// Sense key: something changed (medium, reset) since the initiator last looked.
pub const KEY_UNIT_ATTENTION: u8 = 0x6;

/// Length of fixed-format sense data as this crate produces it.
pub const FIXED_SENSE_LEN: usize = 18;

/// What went wrong, as a sense key and additional sense code/qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// Nothing to report.
    pub const NO_SENSE: Sense = Sense::new(KEY_NO_SENSE, 0x00, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x24, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x39, 0x00);
    /// MEDIUM REMOVAL PREVENTED.
    pub const REMOVAL_PREVENTED: Sense = Sense::new(KEY_ILLEGAL_REQUEST, 0x53, 0x02);
    /// MEDIUM NOT PRESENT - TRAY CLOSED.
    pub const NO_MEDIUM_TRAY_CLOSED: Sense = Sense::new(KEY_NOT_READY, 0x3a, 0x01);
    /// MEDIUM NOT PRESENT - TRAY OPEN.
    pub const NO_MEDIUM_TRAY_OPEN: Sense = Sense::new(KEY_NOT_READY, 0x3a, 0x02);
    /// NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    pub const MEDIUM_CHANGED: Sense = Sense::new(KEY_UNIT_ATTENTION, 0x28, 0x00);
    /// UNRECOVERED READ ERROR.
    pub const READ_ERROR: Sense = Sense::new(KEY_MEDIUM_ERROR, 0x11, 0x00);

    /// A sense triple.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    /// Fixed-format sense data (SPC-4 4.5.3): current error, additional length 10.
    pub fn to_fixed(self) -> [u8; FIXED_SENSE_LEN] {
        let mut s = [0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        s[2] = self.key & 0x0f;
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// GOOD status; `transferred` bytes of data-in were produced.
    Good {
        /// Bytes written to the data-in sink.
        transferred: u64,
    },
    /// CHECK CONDITION with this sense.
    CheckCondition(Sense),
    /// The command needs more data-in than the sink holds; nothing useful was done. The
    /// transport reports an overrun.
    Overrun,
}

impl Completion {
    /// The SCSI status byte of this completion (an overrun is reported by the transport,
    /// with GOOD status).
    pub fn status(&self) -> u8 {
        match self {
            Completion::CheckCondition(_) => STATUS_CHECK_CONDITION,
            _ => STATUS_GOOD,
        }
    }
}

/// Where a command's data-in goes: appended in order, up to [`DataIn::capacity`] bytes.
pub trait DataIn {
    /// Bytes the sink can still take.
    fn capacity(&self) -> u64;
    /// Append `data` (at most `capacity()` bytes). An error means the transport could not
    /// store it (the command then fails).
    fn write(&mut self, data: &[u8]) -> std::result::Result<(), DataInError>;
}

/// The transport could not store data-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the data-in buffers could not be written")]
pub struct DataInError;

/// A [`DataIn`] into a vector, bounded by a capacity (for tests and simple transports).
#[derive(Debug, Default)]
pub struct VecDataIn {
    /// What was written.
    pub data: Vec<u8>,
    /// Largest length accepted.
    pub limit: usize,
}

impl VecDataIn {
    /// An empty sink taking at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        VecDataIn {
            data: Vec::new(),
            limit,
        }
    }
}

impl DataIn for VecDataIn {
    fn capacity(&self) -> u64 {
        (self.limit - self.data.len()) as u64
    }

    fn write(&mut self, data: &[u8]) -> std::result::Result<(), DataInError> {
        if data.len() > self.limit - self.data.len() {
            return Err(DataInError);
        }
        self.data.extend_from_slice(data);
        Ok(())
    }
}

/// Send a small, fully built response: at most `allocation` bytes (the CDB's allocation
/// length) and at most what the sink holds, as SPC-4 asks (a response longer than the
/// allocation length is truncated, never an error).
pub(crate) fn send_response(
    out: &mut dyn DataIn,
    response: &[u8],
    allocation: usize,
) -> Completion {
    let cap = usize::try_from(out.capacity()).unwrap_or(usize::MAX);
    let n = response.len().min(allocation).min(cap);
    match out.write(&response[..n]) {
        Ok(()) => Completion::Good {
            transferred: n as u64,
        },
        Err(DataInError) => Completion::Overrun,
    }
}

/// Big-endian u16 at `at` of `cdb` (0 when the CDB is too short; callers check lengths).
pub(crate) fn be16(cdb: &[u8], at: usize) -> u16 {
    match cdb.get(at..at + 2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    }
}

/// Big-endian u32 at `at` of `cdb` (0 when the CDB is too short).
pub(crate) fn be32(cdb: &[u8], at: usize) -> u32 {
    match cdb.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_layout() {
        let s = Sense::MEDIUM_CHANGED.to_fixed();
        assert_eq!(
            s,
            [
                0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x28, 0x00, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn response_truncated_to_allocation_and_capacity() {
        let mut out = VecDataIn::new(4);
        assert_eq!(
            send_response(&mut out, &[1, 2, 3, 4, 5, 6], 5),
            Completion::Good { transferred: 4 }
        );
        assert_eq!(out.data, [1, 2, 3, 4]);
        let mut out = VecDataIn::new(100);
        send_response(&mut out, &[1, 2, 3, 4, 5, 6], 2);
        assert_eq!(out.data, [1, 2]);
        assert_eq!(be16(&[0, 1], 1), 0, "short CDBs read as zero");
        assert_eq!(be32(&[0, 1, 2, 3, 4], 1), 0x0102_0304);
    }
}
