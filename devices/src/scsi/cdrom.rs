//! A read-only CD/DVD-ROM drive (SCSI peripheral type 5) over an image file.
//!
//! Commands: the SPC-4 basics (TEST UNIT READY, REQUEST SENSE, INQUIRY with VPD pages
//! 0x00/0x80/0x83, MODE SENSE(6/10) page 0x2a, REPORT LUNS, PREVENT ALLOW MEDIUM REMOVAL,
//! START STOP UNIT), the block reads (READ CAPACITY(10), READ(10), READ(12)) and the
//! MMC-6 commands Linux's `sr`/`cdrom` drivers, udev's `cdrom_id` and installers ask
//! (READ TOC/PMA/ATIP formats 0 and 1, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION,
//! READ DISC INFORMATION, READ TRACK INFORMATION, GET PERFORMANCE, SET CD SPEED,
//! MECHANISM STATUS). Anything else is CHECK CONDITION / INVALID COMMAND OPERATION CODE.
//!
//! The medium is a file read with positioned reads in 2048-byte sectors; a trailing
//! partial sector reads as zero-padded. Images larger than an 80-minute CD present the
//! DVD-ROM profile, smaller ones the CD-ROM profile, each as one complete session with
//! one data track.
//!
//! The host changes the medium through a [`CdromControl`] (cheap to clone, any thread):
//! the guest then sees UNIT ATTENTION (NOT READY TO READY CHANGE, MEDIUM MAY HAVE
//! CHANGED) once and a media event in GET EVENT STATUS NOTIFICATION, and the transport's
//! change listener is called so it can raise its own asynchronous event.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Completion, DataIn, Sense, be16, be32, send_response};
use crate::lock;

/// Logical block size of the drive.
pub const SECTOR_SIZE: u64 = 2048;
/// Sectors of an 80-minute CD; larger media present the DVD-ROM profile.
pub const CD_MAX_SECTORS: u64 = 80 * 60 * 75;
/// MMC profile: CD-ROM.
pub const PROFILE_CD_ROM: u16 = 0x0008;
/// MMC profile: DVD-ROM.
pub const PROFILE_DVD_ROM: u16 = 0x0010;
/// Read speed reported in MODE SENSE and GET PERFORMANCE, in kB/s (24x CD).
const SPEED_KBPS: u16 = 4234;
/// Bounce buffer size for READ.
const READ_CHUNK: usize = 64 * 1024;

/// Operation codes.
mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const READ_TRACK_INFORMATION: u8 = 0x52;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const REPORT_LUNS: u8 = 0xa0;
    pub const READ_12: u8 = 0xa8;
    pub const GET_PERFORMANCE: u8 = 0xac;
    pub const SET_CD_SPEED: u8 = 0xbb;
    pub const MECHANISM_STATUS: u8 = 0xbd;
}

/// Errors of the host-side medium operations.
#[derive(Debug, thiserror::Error)]
pub enum CdromError {
    /// The image could not be opened or examined.
    #[error("cannot open the CD-ROM image `{path}`: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path is not a regular file (a directory, a device...).
    #[error("the CD-ROM image `{0}` is not a regular file: choose an ISO image file")]
    NotAFile(PathBuf),
    /// The image is empty.
    #[error("the CD-ROM image `{0}` is empty: choose an ISO image file")]
    Empty(PathBuf),
    /// The guest locked the drive (PREVENT ALLOW MEDIUM REMOVAL); it was asked to eject.
    #[error(
        "the guest has locked the CD-ROM drive (the disc is probably in use, e.g. mounted); \
         it was asked to release it: unmount the disc in the guest and try again, or force \
         the eject"
    )]
    Locked,
}

/// Media event of GET EVENT STATUS NOTIFICATION (MMC-6 table "Media Event Format").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaEvent {
    NoChange = 0,
    EjectRequest = 1,
    NewMedia = 2,
    MediaRemoval = 3,
}

/// An inserted image.
#[derive(Debug, Clone)]
struct Medium {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
}

impl Medium {
    fn open(path: &Path) -> Result<Medium, CdromError> {
        let file = File::open(path).map_err(|source| CdromError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Medium::from_file(file, path)
    }

    fn from_file(file: File, path: &Path) -> Result<Medium, CdromError> {
        let open_err = |source| CdromError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(CdromError::NotAFile(path.to_path_buf()));
        }
        if meta.len() == 0 {
            return Err(CdromError::Empty(path.to_path_buf()));
        }
        Ok(Medium {
            file: Arc::new(file),
            path: path.to_path_buf(),
            size: meta.len(),
        })
    }

    fn sectors(&self) -> u64 {
        self.size.div_ceil(SECTOR_SIZE)
    }

    fn is_dvd(&self) -> bool {
        self.sectors() > CD_MAX_SECTORS
    }

    /// Fill `buf` from byte `pos`; bytes past the end of the file read as zero.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let in_file = usize::try_from(self.size.saturating_sub(pos))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.file.read_exact_at(&mut buf[..in_file], pos)?;
        buf[in_file..].fill(0);
        Ok(())
    }
}

/// The drive's state, shared between the logical unit and its controls.
#[derive(Debug)]
struct Drive {
    medium: Option<Medium>,
    tray_open: bool,
    prevent_removal: bool,
    unit_attention: Option<Sense>,
    media_event: MediaEvent,
    /// Incremented by every host-side medium change (and eject request).
    changes: u64,
}

impl Drive {
    /// The medium, if the guest can read it now; otherwise the NOT READY sense.
    fn ready(&self) -> Result<&Medium, Sense> {
        match (&self.medium, self.tray_open) {
            (_, true) => Err(Sense::NO_MEDIUM_TRAY_OPEN),
            (None, false) => Err(Sense::NO_MEDIUM_TRAY_CLOSED),
            (Some(m), false) => Ok(m),
        }
    }

    /// A medium became readable.
    fn medium_arrived(&mut self) {
        self.unit_attention = Some(Sense::MEDIUM_CHANGED);
        self.media_event = MediaEvent::NewMedia;
    }
}

/// Called after a host-side medium change, outside the drive's lock.
pub type ChangeListener = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    drive: Mutex<Drive>,
    listener: Mutex<Option<ChangeListener>>,
}

impl Shared {
    /// Run `f` on the drive.
    fn with<R>(&self, f: impl FnOnce(&mut Drive) -> R) -> R {
        f(&mut lock(&self.drive))
    }

    fn notify(&self) {
        let listener = lock(&self.listener).clone();
        if let Some(l) = listener {
            l();
        }
    }
}

/// The host's handle on a [`Cdrom`]: eject, insert, look at the medium. Cheap to clone,
/// usable from any thread.
#[derive(Clone)]
pub struct CdromControl {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CdromControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdromControl")
            .field("medium", &self.medium())
            .finish()
    }
}

impl CdromControl {
    /// A drive with the image at `medium` inserted (or empty, tray closed), without a
    /// logical unit yet (see [`Cdrom::with_control`]).
    pub fn new(medium: Option<&Path>) -> Result<CdromControl, CdromError> {
        let medium = medium.map(Medium::open).transpose()?;
        let drive = Drive {
            medium,
            tray_open: false,
            prevent_removal: false,
            unit_attention: None,
            media_event: MediaEvent::NoChange,
            changes: 0,
        };
        Ok(CdromControl {
            shared: Arc::new(Shared {
                drive: Mutex::new(drive),
                listener: Mutex::new(None),
            }),
        })
    }

    /// Remove the medium. Fails with [`CdromError::Locked`] while the guest prevents
    /// removal; the guest then sees an eject request (a desktop or udev may release and
    /// eject the disc itself).
    pub fn eject(&self) -> Result<(), CdromError> {
        let r = self.shared.with(|d| {
            d.changes += 1;
            if d.prevent_removal {
                d.media_event = MediaEvent::EjectRequest;
                return Err(CdromError::Locked);
            }
            Self::remove(d);
            Ok(())
        });
        self.shared.notify();
        r
    }

    /// Remove the medium even if the guest locked the drive (as pulling a stuck disc
    /// out of a real drive would).
    pub fn force_eject(&self) {
        self.shared.with(|d| {
            d.changes += 1;
            Self::remove(d);
        });
        self.shared.notify();
    }

    fn remove(d: &mut Drive) {
        if d.medium.take().is_some() && !d.tray_open {
            d.media_event = MediaEvent::MediaRemoval;
        }
        d.tray_open = true;
    }

    /// Put the image at `path` in the drive (replacing the current one unless the guest
    /// locked the drive) and close the tray. Nothing changes if the image cannot be
    /// opened.
    pub fn insert(&self, path: &Path) -> Result<(), CdromError> {
        self.insert_medium(Medium::open(path)?)
    }

    /// Like [`insert`](Self::insert), with the image already open (by a process that may open
    /// it, for a VM process that may not); `path` is what the drive reports it holds.
    pub fn insert_file(&self, file: File, path: &Path) -> Result<(), CdromError> {
        self.insert_medium(Medium::from_file(file, path)?)
    }

    fn insert_medium(&self, medium: Medium) -> Result<(), CdromError> {
        let r = self.shared.with(|d| {
            if d.prevent_removal && d.medium.is_some() {
                d.changes += 1;
                d.media_event = MediaEvent::EjectRequest;
                return Err(CdromError::Locked);
            }
            d.medium = Some(medium);
            d.tray_open = false;
            d.changes += 1;
            d.medium_arrived();
            Ok(())
        });
        self.shared.notify();
        r
    }

    /// The image in the drive, if any (also when the guest opened the tray).
    pub fn medium(&self) -> Option<PathBuf> {
        self.shared
            .with(|d| d.medium.as_ref().map(|m| m.path.clone()))
    }

    /// Whether the guest prevents medium removal.
    pub fn locked(&self) -> bool {
        self.shared.with(|d| d.prevent_removal)
    }

    /// Whether the tray is open.
    pub fn tray_open(&self) -> bool {
        self.shared.with(|d| d.tray_open)
    }

    /// Call `listener` after every host-side change (eject, insert, eject request), from
    /// the thread that made it and without holding the drive's lock. A transport uses it
    /// to raise an asynchronous event. Replaces an earlier listener.
    pub fn set_change_listener(&self, listener: ChangeListener) {
        *lock(&self.shared.listener) = Some(listener);
    }

    /// Number of host-side changes so far (a transport compares it with the last value
    /// it reported).
    pub fn changes(&self) -> u64 {
        self.shared.with(|d| d.changes)
    }
}

/// A CD/DVD-ROM logical unit.
pub struct Cdrom {
    shared: Arc<Shared>,
    serial: String,
}

impl std::fmt::Debug for Cdrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cdrom")
            .field("serial", &self.serial)
            .field("medium", &self.control().medium())
            .finish()
    }
}

impl Cdrom {
    /// A drive with the image at `medium` inserted (or empty, tray closed). `serial`
    /// (printable ASCII, at most 32 bytes kept) identifies it in INQUIRY VPD pages.
    pub fn new(serial: &str, medium: Option<&Path>) -> Result<Cdrom, CdromError> {
        Ok(Cdrom::with_control(serial, &CdromControl::new(medium)?))
    }

    /// The logical unit of the drive `control` manages. A machine that is rebuilt (reset)
    /// keeps its drive, and with it the medium, across logical units.
    pub fn with_control(serial: &str, control: &CdromControl) -> Cdrom {
        let serial: String = serial
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        Cdrom {
            shared: control.shared.clone(),
            serial,
        }
    }

    /// The host's handle on this drive.
    pub fn control(&self) -> CdromControl {
        CdromControl {
            shared: self.shared.clone(),
        }
    }

    /// A logical unit reset (SAM-5): medium removal is allowed again and pending
    /// conditions are cleared; the medium stays.
    pub fn reset(&self) {
        self.shared.with(|d| {
            d.prevent_removal = false;
            d.unit_attention = None;
        });
    }

    /// Execute `cdb`, writing data-in to `out`.
    pub fn execute(&self, cdb: &[u8], out: &mut dyn DataIn) -> Completion {
        let Some(&opcode) = cdb.first() else {
            return Completion::CheckCondition(Sense::INVALID_OPCODE);
        };
        if cdb.len() < cdb_len(opcode) {
            return Completion::CheckCondition(Sense::INVALID_FIELD);
        }
        // A pending unit attention fails the next command, except those SPC-4 and MMC-6
        // exempt (they neither report nor clear it; REQUEST SENSE reports and clears it).
        let exempt = matches!(
            opcode,
            op::INQUIRY
                | op::REPORT_LUNS
                | op::REQUEST_SENSE
                | op::GET_CONFIGURATION
                | op::GET_EVENT_STATUS_NOTIFICATION
        );
        if !exempt && let Some(ua) = self.shared.with(|d| d.unit_attention.take()) {
            return Completion::CheckCondition(ua);
        }
        let r = match opcode {
            op::TEST_UNIT_READY => self.shared.with(|d| d.ready().map(|_| Vec::new())),
            op::REQUEST_SENSE => self.request_sense(cdb),
            op::INQUIRY => self.inquiry(cdb),
            op::MODE_SENSE_6 | op::MODE_SENSE_10 => self.mode_sense(cdb),
            op::START_STOP_UNIT => self.start_stop(cdb),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => self.shared.with(|d| {
                d.prevent_removal = cdb[4] & 0x01 != 0;
                Ok(Vec::new())
            }),
            op::READ_CAPACITY_10 => self.read_capacity(),
            op::READ_10 => {
                return self.read(u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)), out);
            }
            op::READ_12 => {
                return self.read(u64::from(be32(cdb, 2)), u64::from(be32(cdb, 6)), out);
            }
            op::READ_TOC => self.read_toc(cdb),
            op::GET_CONFIGURATION => self.get_configuration(cdb),
            op::GET_EVENT_STATUS_NOTIFICATION => self.event_status(cdb),
            op::READ_DISC_INFORMATION => self.read_disc_information(cdb),
            op::READ_TRACK_INFORMATION => self.read_track_information(cdb),
            op::REPORT_LUNS => report_luns(cdb),
            op::GET_PERFORMANCE => self.get_performance(cdb),
            op::SET_CD_SPEED => Ok(Vec::new()),
            op::MECHANISM_STATUS => self.mechanism_status(),
            _ => Err(Sense::INVALID_OPCODE),
        };
        match r {
            Ok(response) => send_response(out, &response, allocation_length(cdb)),
            Err(sense) => Completion::CheckCondition(sense),
        }
    }

    fn request_sense(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x01 != 0 {
            // Descriptor-format sense is not supported (SPC-4 6.39).
            return Err(Sense::INVALID_FIELD);
        }
        let sense = self.shared.with(|d| {
            d.unit_attention
                .take()
                .or_else(|| d.ready().err())
                .unwrap_or(Sense::NO_SENSE)
        });
        Ok(sense.to_fixed().to_vec())
    }

    fn inquiry(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        if !evpd {
            if page != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            let mut r = vec![0u8; 36];
            r[0] = 0x05; // peripheral qualifier 0, device type 5 (CD/DVD)
            r[1] = 0x80; // removable medium
            r[2] = 0x05; // SPC-3
            r[3] = 0x02; // response data format 2
            r[4] = (r.len() - 5) as u8;
            r[8..16].copy_from_slice(&pad::<8>("VIVARIUM"));
            r[16..32].copy_from_slice(&pad::<16>("CD-ROM"));
            r[32..36].copy_from_slice(&pad::<4>(concat!(
                env!("CARGO_PKG_VERSION_MAJOR"),
                ".",
                env!("CARGO_PKG_VERSION_MINOR")
            )));
            return Ok(r);
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83],
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => {
                // One T10 vendor ID designator (ASCII): vendor "VIVARIUM" + serial.
                let mut id = pad::<8>("VIVARIUM").to_vec();
                id.extend_from_slice(self.serial.as_bytes());
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                d.extend_from_slice(&id);
                d
            }
            _ => return Err(Sense::INVALID_FIELD),
        };
        let mut r = vec![0x05, page];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(&body);
        Ok(r)
    }

    fn mode_sense(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let ten = cdb[0] == op::MODE_SENSE_10;
        let control = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        if control == 3 {
            return Err(Sense::SAVING_NOT_SUPPORTED);
        }
        if cdb[3] != 0 || !matches!(page, 0x2a | 0x3f) {
            return Err(Sense::INVALID_FIELD);
        }
        let prevent = self.shared.with(|d| d.prevent_removal);
        // MM Capabilities and Mechanical Status page (MMC-6 legacy page 2Ah).
        let mut p = vec![0u8; 20];
        p[0] = 0x2a;
        p[1] = (p.len() - 2) as u8;
        if control != 1 {
            // (Page control 1 asks which fields MODE SELECT may change: none.)
            p[2] = 0x3b; // reads CD-R, CD-RW, method 2, DVD-ROM, DVD-R, DVD-RAM
            p[6] = 0x29 | if prevent { 0x02 } else { 0 }; // tray, eject, lock (+ state)
            p[8..10].copy_from_slice(&SPEED_KBPS.to_be_bytes()); // max read speed
            p[14..16].copy_from_slice(&SPEED_KBPS.to_be_bytes()); // current read speed
        }
        let mut r = if ten { vec![0u8; 8] } else { vec![0u8; 4] };
        r.extend_from_slice(&p);
        if ten {
            let len = (r.len() - 2) as u16;
            r[0..2].copy_from_slice(&len.to_be_bytes());
        } else {
            r[0] = (r.len() - 1) as u8;
        }
        Ok(r)
    }

    fn start_stop(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let power_condition = cdb[4] >> 4;
        let load_eject = cdb[4] & 0x02 != 0;
        let start = cdb[4] & 0x01 != 0;
        if power_condition != 0 || !load_eject {
            return Ok(Vec::new());
        }
        self.shared.with(|d| {
            if start {
                if d.tray_open {
                    d.tray_open = false;
                    if d.medium.is_some() {
                        d.medium_arrived();
                    }
                }
            } else {
                if d.prevent_removal {
                    return Err(Sense::REMOVAL_PREVENTED);
                }
                if !d.tray_open && d.medium.is_some() {
                    d.media_event = MediaEvent::MediaRemoval;
                }
                d.tray_open = true;
            }
            Ok(Vec::new())
        })
    }

    fn read_capacity(&self) -> Result<Vec<u8>, Sense> {
        let sectors = self.shared.with(|d| d.ready().map(Medium::sectors))?;
        let last = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
        let mut r = last.to_be_bytes().to_vec();
        r.extend_from_slice(&(SECTOR_SIZE as u32).to_be_bytes());
        Ok(r)
    }

    fn read(&self, lba: u64, count: u64, out: &mut dyn DataIn) -> Completion {
        let medium = match self.shared.with(|d| d.ready().cloned()) {
            Ok(m) => m,
            Err(sense) => return Completion::CheckCondition(sense),
        };
        // lba and count are at most 32 bits each: no overflow in u64.
        if lba + count > medium.sectors() {
            return Completion::CheckCondition(Sense::LBA_OUT_OF_RANGE);
        }
        let total = count * SECTOR_SIZE;
        if total > out.capacity() {
            return Completion::Overrun;
        }
        let mut buf = vec![0u8; READ_CHUNK.min(usize::try_from(total).unwrap_or(READ_CHUNK))];
        let mut pos = lba * SECTOR_SIZE;
        let mut done = 0u64;
        while done < total {
            let n = usize::try_from(total - done)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            if let Err(e) = medium.read_at(&mut buf[..n], pos) {
                tracing::warn!(path = %medium.path.display(), "CD-ROM image read failed: {e}");
                return Completion::CheckCondition(Sense::READ_ERROR);
            }
            if out.write(&buf[..n]).is_err() {
                return Completion::Overrun;
            }
            pos += n as u64;
            done += n as u64;
        }
        Completion::Good { transferred: total }
    }

    fn read_toc(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let msf = cdb[1] & 0x02 != 0;
        // The format is in byte 2; older (SFF-8020) initiators put it in bits 7:6 of the
        // control byte, as Linux's sr still does for the session info.
        let format = match cdb[2] & 0x0f {
            0 => cdb[9] >> 6,
            f => f,
        };
        let start_track = cdb[6];
        let sectors = self.shared.with(|d| d.ready().map(Medium::sectors))?;
        let address = |lba: u64| -> [u8; 4] {
            if msf {
                lba_to_msf(lba)
            } else {
                u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
            }
        };
        let descriptor = |track: u8, lba: u64| -> [u8; 8] {
            let a = address(lba);
            // ADR 1 (Q sub-channel position), control 4 (data track, no copy).
            [0, 0x14, track, 0, a[0], a[1], a[2], a[3]]
        };
        let mut r = vec![0u8, 0, 1, 1];
        match format {
            0 => match start_track {
                0 | 1 => {
                    r.extend_from_slice(&descriptor(1, 0));
                    r.extend_from_slice(&descriptor(0xaa, sectors));
                }
                0xaa => r.extend_from_slice(&descriptor(0xaa, sectors)),
                _ => return Err(Sense::INVALID_FIELD),
            },
            // Session info: first and last session 1, first track of the last session.
            1 => r.extend_from_slice(&descriptor(1, 0)),
            _ => return Err(Sense::INVALID_FIELD),
        }
        let len = (r.len() - 2) as u16;
        r[0..2].copy_from_slice(&len.to_be_bytes());
        Ok(r)
    }

    fn get_configuration(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let request_type = cdb[1] & 0x03;
        let start = be16(cdb, 2);
        let (present, dvd) = self.shared.with(|d| match d.ready() {
            Ok(m) => (true, m.is_dvd()),
            Err(_) => (false, false),
        });
        let current_profile = match (present, dvd) {
            (false, _) => 0,
            (true, false) => PROFILE_CD_ROM,
            (true, true) => PROFILE_DVD_ROM,
        };
        let cur = |on: bool| u8::from(on);
        // (feature code, version/persistent/current byte, additional data)
        let features: [(u16, u8, Vec<u8>); 7] = [
            // Profile list: DVD-ROM then CD-ROM, the current one flagged.
            (
                0x0000,
                0x03,
                vec![
                    0x00,
                    0x10,
                    cur(current_profile == PROFILE_DVD_ROM),
                    0,
                    0x00,
                    0x08,
                    cur(current_profile == PROFILE_CD_ROM),
                    0,
                ],
            ),
            // Core, version 2: SCSI physical interface, DBE.
            (0x0001, 0x0b, vec![0, 0, 0, 1, 0x01, 0, 0, 0]),
            // Morphing, version 1: OCEvent (events through GESN, polled).
            (0x0002, 0x07, vec![0x02, 0, 0, 0]),
            // Removable medium: tray, eject, lock.
            (0x0003, 0x03, vec![0x29, 0, 0, 0]),
            // Random readable: 2048-byte blocks.
            (0x0010, cur(present), {
                let mut v = (SECTOR_SIZE as u32).to_be_bytes().to_vec();
                v.extend_from_slice(&(if dvd { 16u16 } else { 1 }).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
                v
            }),
            // CD read, version 2.
            (0x001e, 0x08 | cur(present && !dvd), vec![0, 0, 0, 0]),
            // DVD read, version 1.
            (0x001f, 0x04 | cur(present && dvd), vec![0, 0, 0, 0]),
        ];
        let mut r = vec![0u8; 8];
        r[6..8].copy_from_slice(&current_profile.to_be_bytes());
        for (code, flags, data) in features {
            let wanted = match request_type {
                0 => code >= start,
                1 => code >= start && flags & 0x01 != 0,
                2 => code == start,
                _ => return Err(Sense::INVALID_FIELD),
            };
            if wanted {
                r.extend_from_slice(&code.to_be_bytes());
                r.push(flags);
                r.push(data.len() as u8);
                r.extend_from_slice(&data);
            }
        }
        let len = (r.len() - 4) as u32;
        r[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(r)
    }

    fn event_status(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x01 == 0 {
            // Only polled operation is supported (MMC-6 6.6).
            return Err(Sense::INVALID_FIELD);
        }
        const MEDIA_CLASS: u8 = 0x10;
        if cdb[4] & MEDIA_CLASS == 0 {
            // No event of a requested class: NEA set, no descriptor.
            return Ok(vec![0, 2, 0x80, MEDIA_CLASS]);
        }
        let (event, status) = self.shared.with(|d| {
            let event = std::mem::replace(&mut d.media_event, MediaEvent::NoChange);
            let status = u8::from(d.tray_open) | (u8::from(d.ready().is_ok()) << 1);
            (event, status)
        });
        Ok(vec![0, 6, 0x04, MEDIA_CLASS, event as u8, status, 0, 0])
    }

    fn read_disc_information(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        if cdb[1] & 0x07 != 0 {
            // Only standard disc information.
            return Err(Sense::INVALID_FIELD);
        }
        self.shared.with(|d| d.ready().map(|_| ()))?;
        let mut r = vec![0u8; 34];
        r[0..2].copy_from_slice(&32u16.to_be_bytes());
        r[2] = 0x0e; // last session complete, disc complete, not erasable
        r[3] = 1; // first track on disc
        r[4] = 1; // sessions
        r[5] = 1; // first track in last session
        r[6] = 1; // last track in last session
        r[7] = 0x20; // unrestricted use
        r[8] = 0x00; // CD-DA or CD-ROM disc
        // A complete disc has no next lead-in or lead-out to write.
        r[16..24].fill(0xff);
        Ok(r)
    }

    fn read_track_information(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let kind = cdb[1] & 0x03;
        let number = be32(cdb, 2);
        let sectors = self.shared.with(|d| d.ready().map(Medium::sectors))?;
        let track_one = match kind {
            0 => u64::from(number) < sectors,
            1 | 2 => number == 1,
            _ => false,
        };
        if !track_one {
            return Err(Sense::INVALID_FIELD);
        }
        let size = u32::try_from(sectors).unwrap_or(u32::MAX);
        let mut r = vec![0u8; 48];
        r[0..2].copy_from_slice(&46u16.to_be_bytes());
        r[2] = 1; // track
        r[3] = 1; // session
        r[5] = 0x04; // track mode: data, recorded uninterrupted
        r[6] = 0x01; // data mode 1
        // Start address 0 (bytes 8..12); track size and last recorded address.
        r[24..28].copy_from_slice(&size.to_be_bytes());
        r[28..32].copy_from_slice(&(size - 1).to_be_bytes());
        Ok(r)
    }

    fn get_performance(&self, cdb: &[u8]) -> Result<Vec<u8>, Sense> {
        let kind = cdb[10];
        let max_descriptors = be16(cdb, 8);
        let mut r = vec![0u8; 8];
        if kind == 0 && max_descriptors > 0 {
            // Nominal read performance over the whole medium (or nothing without one).
            if let Ok(sectors) = self.shared.with(|d| d.ready().map(Medium::sectors)) {
                let end = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
                let speed = u32::from(SPEED_KBPS);
                for v in [0, speed, end, speed] {
                    r.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        let len = (r.len() - 4) as u32;
        r[0..4].copy_from_slice(&len.to_be_bytes());
        Ok(r)
    }

    fn mechanism_status(&self) -> Result<Vec<u8>, Sense> {
        let open = self.shared.with(|d| d.tray_open);
        // Not a changer: header only, idle mechanism, door state.
        Ok(vec![0, if open { 0x10 } else { 0 }, 0, 0, 0, 0, 0, 0])
    }
}

/// REPORT LUNS (SPC-4 6.33): only LUN 0 exists.
fn report_luns(cdb: &[u8]) -> Result<Vec<u8>, Sense> {
    match cdb[2] {
        0x00 | 0x02 => Ok(vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // Well-known logical units only: there are none.
        0x01 => Ok(vec![0; 8]),
        _ => Err(Sense::INVALID_FIELD),
    }
}

/// Length of a CDB by its group code (SPC-4 4.2.5.1); 1 for vendor-specific groups, so
/// that they reach "invalid operation code".
fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 1,
    }
}

/// The allocation length field of the commands this drive answers with data.
fn allocation_length(cdb: &[u8]) -> usize {
    let n = match cdb[0] {
        op::REQUEST_SENSE | op::MODE_SENSE_6 => u32::from(cdb[4]),
        op::INQUIRY => u32::from(be16(cdb, 3)),
        op::READ_TOC
        | op::GET_CONFIGURATION
        | op::GET_EVENT_STATUS_NOTIFICATION
        | op::READ_DISC_INFORMATION
        | op::READ_TRACK_INFORMATION
        | op::MODE_SENSE_10 => u32::from(be16(cdb, 7)),
        op::MECHANISM_STATUS => u32::from(be16(cdb, 8)),
        op::REPORT_LUNS => be32(cdb, 6),
        // READ CAPACITY has a fixed response; GET PERFORMANCE sizes by descriptor count;
        // the others have none.
        _ => u32::MAX,
    };
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `s` as a space-padded (or truncated) ASCII field.
fn pad<const N: usize>(s: &str) -> [u8; N] {
    let mut f = [b' '; N];
    for (d, c) in f.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    f
}

/// An LBA as the MSF address `[0, M, S, F]` (with the 2-second pregap), saturating.
fn lba_to_msf(lba: u64) -> [u8; 4] {
    let frames = lba + 150;
    let m = frames / (60 * 75);
    if m > 0xff {
        return [0, 0xff, 59, 74];
    }
    [0, m as u8, ((frames / 75) % 60) as u8, (frames % 75) as u8]
}

#[cfg(test)]
mod tests;
