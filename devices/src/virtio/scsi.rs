//! virtio-scsi host adapter with one CD-ROM logical unit (target 0, LUN 0).
//!
//! Queues: control (0), event (1), one request queue (2). Feature: `VIRTIO_SCSI_F_CHANGE`
//! (a host-side medium change is reported on the event queue as a parameter change with
//! the sense code 28h/00h; drivers that subscribed to asynchronous media-change
//! notification get that instead; drivers without either poll, as Linux does).
//!
//! Every chain is untrusted. A chain is split into its device-readable part (request
//! header, then data-out) and its device-writable part (response, then data-in); a
//! readable descriptor after a writable one, a loop, a descriptor outside guest memory or
//! more than [`MAX_DESCRIPTORS`] descriptors get the chain dropped (returned with used
//! length 0, nothing written), as does a writable part too short for the response. A
//! request too short for its header is answered with `VIRTIO_SCSI_S_FAILURE`; one for any
//! other target or LUN with `VIRTIO_SCSI_S_BAD_TARGET`; a command needing more data-in
//! than the buffers hold with `VIRTIO_SCSI_S_OVERRUN`. The request and response layouts
//! are read and written byte by byte across descriptors (the spec forbids assuming any
//! framing).

use std::sync::Arc;

use virtio_bindings::virtio_scsi as vs;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{VIRTIO_ID_SCSI, VirtioDevice, VirtioInterrupt, collect_chain};
use crate::scsi::cdrom::{Cdrom, CdromControl};
use crate::scsi::{Completion, DataIn, DataInError, FIXED_SENSE_LEN};
use crate::{Error, GuestMemoryMmap, Result};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Largest number of data segments in a command (advertised as `seg_max`).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Longest chain accepted.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Largest transfer of one command, in 512-byte sectors (advertised as `max_sectors`).
pub const MAX_SECTORS: u32 = 0xffff;
/// Largest `cdb_size` / `sense_size` a driver may set.
pub const MAX_CONFIGURABLE_SIZE: u32 = 1024;
/// Index of the control queue.
pub const CONTROL_QUEUE: usize = 0;
/// Index of the event queue.
pub const EVENT_QUEUE: usize = 1;
/// Index of the request queue.
pub const REQUEST_QUEUE: usize = 2;
/// Asynchronous notification class: media change (virtio spec 5.6.6.2).
pub const VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE: u32 = 1 << 4;

/// `lun[8]`, `id: le64`, `task_attr`, `prio`, `crn`, then the CDB.
const CMD_REQ_HEADER: usize = 19;
/// `sense_len: le32`, `resid: le32`, `status_qualifier: le16`, `status`, `response`, then
/// the sense data.
const CMD_RESP_HEADER: usize = 12;
/// Size of `struct virtio_scsi_event`.
const EVENT_LEN: usize = 16;
/// Length of `struct virtio_scsi_config`.
const CONFIG_LEN: usize = 36;
/// Bound on the bytes of one chain (well above `MAX_SECTORS * 512`).
const MAX_CHAIN_BYTES: u64 = 1 << 30;

/// Counters for tests and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScsiStats {
    /// Commands executed by the logical unit.
    pub commands: u64,
    /// Commands answered without reaching it (bad target, short header, overrun).
    pub transport_errors: u64,
    /// Control requests answered.
    pub control: u64,
    /// Events delivered on the event queue.
    pub events: u64,
    /// Chains dropped without an answer (malformed).
    pub dropped: u64,
}

/// The parts of a chain: device-readable then device-writable buffers, all inside guest
/// memory.
struct Buffers {
    readable: Vec<(GuestAddress, u32)>,
    writable: Vec<(GuestAddress, u32)>,
}

impl Buffers {
    fn split(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<Buffers> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut total = 0u64;
        for d in descs {
            if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize) {
                return None;
            }
            total = total
                .checked_add(u64::from(d.len()))
                .filter(|t| *t <= MAX_CHAIN_BYTES)?;
            if d.is_write_only() {
                writable.push((d.addr(), d.len()));
            } else if writable.is_empty() {
                readable.push((d.addr(), d.len()));
            } else {
                // Device-readable after device-writable: the spec forbids it.
                return None;
            }
        }
        Some(Buffers { readable, writable })
    }

    fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| u64::from(s.1)).sum()
    }

    /// The first `n` readable bytes, if there are that many.
    fn read_prefix(&self, mem: &GuestMemoryMmap, n: usize) -> Option<Vec<u8>> {
        let mut out = vec![0u8; n];
        let mut done = 0usize;
        for &(addr, len) in &self.readable {
            if done == n {
                break;
            }
            let k = (len as usize).min(n - done);
            mem.read_slice(&mut out[done..done + k], addr).ok()?;
            done += k;
        }
        (done == n).then_some(out)
    }

    fn writer<'a>(&'a self, mem: &'a GuestMemoryMmap) -> GuestWriter<'a> {
        GuestWriter {
            mem,
            segments: &self.writable,
            index: 0,
            offset: 0,
            written: 0,
            capacity: self.writable_len(),
        }
    }
}

/// Sequential writes into the writable buffers of a chain.
struct GuestWriter<'a> {
    mem: &'a GuestMemoryMmap,
    segments: &'a [(GuestAddress, u32)],
    index: usize,
    offset: u32,
    written: u64,
    capacity: u64,
}

impl DataIn for GuestWriter<'_> {
    fn capacity(&self) -> u64 {
        self.capacity - self.written
    }

    fn write(&mut self, mut data: &[u8]) -> std::result::Result<(), DataInError> {
        if data.len() as u64 > self.capacity() {
            return Err(DataInError);
        }
        while !data.is_empty() {
            let &(addr, len) = self.segments.get(self.index).ok_or(DataInError)?;
            let room = (len - self.offset) as usize;
            if room == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = room.min(data.len());
            let at = addr
                .checked_add(u64::from(self.offset))
                .ok_or(DataInError)?;
            self.mem
                .write_slice(&data[..n], at)
                .map_err(|_| DataInError)?;
            self.offset += n as u32;
            self.written += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

/// Whether an 8-byte virtio-scsi LUN field addresses the CD-ROM (target 0, LUN 0).
fn is_cdrom_lun(lun: &[u8]) -> bool {
    // Format: 1, target, then a single-level LUN (flat space 0x40 bit allowed), zeros.
    lun.len() == 8
        && lun[0] == 1
        && lun[1] == 0
        && lun[2] & !0x40 == 0
        && lun[3] == 0
        && lun[4..8] == [0; 4]
}

struct Active {
    memory: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-scsi adapter with one CD-ROM drive.
pub struct VirtioScsi {
    cdrom: Cdrom,
    control: CdromControl,
    cdb_size: u32,
    sense_size: u32,
    driver_features: u64,
    /// Asynchronous notification classes the driver subscribed to.
    subscribed: u32,
    /// Host-side medium changes already reported on the event queue.
    reported_changes: u64,
    active: Option<Active>,
    stats: ScsiStats,
}

impl std::fmt::Debug for VirtioScsi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioScsi")
            .field("cdrom", &self.cdrom)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl VirtioScsi {
    /// An adapter with `cdrom` as target 0, LUN 0. Keep [`Cdrom::control`] to change
    /// its medium; to have the guest told at once, set a change listener on it that calls
    /// the transport's queue notification for [`EVENT_QUEUE`] (otherwise events go out on
    /// the driver's next request).
    pub fn new(cdrom: Cdrom) -> Self {
        let control = cdrom.control();
        VirtioScsi {
            cdrom,
            reported_changes: control.changes(),
            control,
            cdb_size: vs::VIRTIO_SCSI_CDB_DEFAULT_SIZE,
            sense_size: vs::VIRTIO_SCSI_SENSE_DEFAULT_SIZE,
            driver_features: 0,
            subscribed: 0,
            active: None,
            stats: ScsiStats::default(),
        }
    }

    /// The CD-ROM's medium control.
    pub fn cdrom_control(&self) -> CdromControl {
        self.control.clone()
    }

    /// Counters.
    pub fn stats(&self) -> ScsiStats {
        self.stats
    }

    /// Split a chain, or drop it (used length 0).
    fn buffers(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Option<Buffers> {
        let b = collect_chain(chain, MAX_DESCRIPTORS)
            .ok()
            .and_then(|descs| Buffers::split(mem, &descs));
        if b.is_none() {
            tracing::debug!("virtio-scsi: malformed chain dropped");
            self.stats.dropped += 1;
        }
        b
    }

    /// Handle one command chain; returns the bytes written into it.
    fn handle_command(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let Some(bufs) = self.buffers(mem, chain) else {
            return 0;
        };
        let sense_size = self.sense_size as usize;
        let resp_len = CMD_RESP_HEADER + sense_size;
        if bufs.writable_len() < resp_len as u64 {
            tracing::debug!("virtio-scsi: no room for the response; chain dropped");
            self.stats.dropped += 1;
            return 0;
        }
        let data_in_len = bufs.writable_len() - resp_len as u64;
        let mut writer = bufs.writer(mem);
        // Data-in starts after the response; write the response last.
        if writer.write(&vec![0u8; resp_len]).is_err() {
            self.stats.dropped += 1;
            return 0;
        }
        let req_len = CMD_REQ_HEADER + self.cdb_size as usize;
        let (response, completion) = match bufs.read_prefix(mem, req_len) {
            None => (vs::VIRTIO_SCSI_S_FAILURE, None),
            Some(req) if !is_cdrom_lun(&req[..8]) => (vs::VIRTIO_SCSI_S_BAD_TARGET, None),
            Some(req) => {
                self.stats.commands += 1;
                let c = self.cdrom.execute(&req[CMD_REQ_HEADER..], &mut writer);
                match c {
                    Completion::Overrun => (vs::VIRTIO_SCSI_S_OVERRUN, None),
                    c => (vs::VIRTIO_SCSI_S_OK, Some(c)),
                }
            }
        };
        if completion.is_none() {
            self.stats.transport_errors += 1;
        }
        let transferred = writer.written - resp_len as u64;
        let mut resp = vec![0u8; resp_len];
        let mut sense_len = 0;
        if let Some(Completion::CheckCondition(sense)) = completion {
            let fixed = sense.to_fixed();
            sense_len = FIXED_SENSE_LEN.min(sense_size);
            resp[CMD_RESP_HEADER..CMD_RESP_HEADER + sense_len].copy_from_slice(&fixed[..sense_len]);
        }
        let resid = u32::try_from(data_in_len - transferred).unwrap_or(u32::MAX);
        resp[0..4].copy_from_slice(&(sense_len as u32).to_le_bytes());
        resp[4..8].copy_from_slice(&resid.to_le_bytes());
        resp[10] = completion.map_or(0, |c| c.status());
        resp[11] = response as u8;
        if bufs.writer(mem).write(&resp).is_err() {
            return 0;
        }
        // At most MAX_CHAIN_BYTES.
        (resp_len as u64 + transferred) as u32
    }

    /// Handle one control chain; returns the bytes written into it.
    fn handle_control(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let Some(bufs) = self.buffers(mem, chain) else {
            return 0;
        };
        let Some(kind) = bufs
            .read_prefix(mem, 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            self.stats.dropped += 1;
            return 0;
        };
        let resp: Vec<u8> = match kind {
            vs::VIRTIO_SCSI_T_TMF => {
                // type, subtype, lun[8], id.
                let Some(req) = bufs.read_prefix(mem, 24) else {
                    self.stats.dropped += 1;
                    return 0;
                };
                let subtype = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
                vec![self.task_management(subtype, &req[8..16]) as u8]
            }
            vs::VIRTIO_SCSI_T_AN_QUERY | vs::VIRTIO_SCSI_T_AN_SUBSCRIBE => {
                // type, lun[8], event_requested.
                let Some(req) = bufs.read_prefix(mem, 16) else {
                    self.stats.dropped += 1;
                    return 0;
                };
                let requested = u32::from_le_bytes([req[12], req[13], req[14], req[15]]);
                let (actual, response) = if is_cdrom_lun(&req[4..12]) {
                    let actual = requested & VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE;
                    if kind == vs::VIRTIO_SCSI_T_AN_SUBSCRIBE {
                        self.subscribed = actual;
                    }
                    (actual, vs::VIRTIO_SCSI_S_OK)
                } else {
                    (0, vs::VIRTIO_SCSI_S_BAD_TARGET)
                };
                let mut r = actual.to_le_bytes().to_vec();
                r.push(response as u8);
                r
            }
            other => {
                tracing::debug!(other, "virtio-scsi: unknown control request dropped");
                self.stats.dropped += 1;
                return 0;
            }
        };
        if bufs.writable_len() < resp.len() as u64 || bufs.writer(mem).write(&resp).is_err() {
            self.stats.dropped += 1;
            return 0;
        }
        self.stats.control += 1;
        resp.len() as u32
    }

    /// A task management function. Commands complete synchronously, so there is never a
    /// task to abort or query.
    fn task_management(&mut self, subtype: u32, lun: &[u8]) -> u32 {
        if !is_cdrom_lun(lun) {
            return vs::VIRTIO_SCSI_S_BAD_TARGET;
        }
        match subtype {
            vs::VIRTIO_SCSI_T_TMF_ABORT_TASK
            | vs::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
            | vs::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
            | vs::VIRTIO_SCSI_T_TMF_QUERY_TASK
            | vs::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => vs::VIRTIO_SCSI_S_OK,
            vs::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET | vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
                self.cdrom.reset();
                vs::VIRTIO_SCSI_S_OK
            }
            _ => vs::VIRTIO_SCSI_S_FUNCTION_REJECTED,
        }
    }

    /// The event to report for a host-side medium change, given what the driver
    /// negotiated: `(event, reason)`.
    fn change_event(&self) -> Option<(u32, u32)> {
        if self.subscribed & VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE != 0 {
            Some((
                vs::VIRTIO_SCSI_T_ASYNC_NOTIFY,
                VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE,
            ))
        } else if self.driver_features & (1 << vs::VIRTIO_SCSI_F_CHANGE) != 0 {
            // Sense code 28h/00h: medium may have changed (reason = asc | ascq << 8).
            Some((vs::VIRTIO_SCSI_T_PARAM_CHANGE, 0x28))
        } else {
            None
        }
    }

    /// Report a pending host-side medium change into the event queue if the driver gave
    /// it a buffer; otherwise keep it pending. Event buffers are only taken when there is
    /// something to report.
    fn deliver_events(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<()> {
        let changes = self.control.changes();
        if changes == self.reported_changes || !queue.ready() {
            return Ok(());
        }
        let Some((event, reason)) = self.change_event() else {
            // The driver polls; nothing to send.
            self.reported_changes = changes;
            return Ok(());
        };
        if !queue.is_valid(mem) {
            return Err(Error::NeedsReset(
                "event queue: rings outside guest memory".into(),
            ));
        }
        super::check_ring_layout(queue)?;
        let broken = |e: virtio_queue::Error| Error::NeedsReset(format!("event queue: {e}"));
        let mut used = false;
        // Bounded: each pass consumes one available chain.
        for _ in 0..queue.size() {
            let Some(chain) = queue.iter(mem).map_err(broken)?.next() else {
                break;
            };
            let head = chain.head_index();
            let written = match self.buffers(mem, chain) {
                Some(b) if b.readable.is_empty() && b.writable_len() >= EVENT_LEN as u64 => {
                    let mut e = [0u8; EVENT_LEN];
                    e[0..4].copy_from_slice(&event.to_le_bytes());
                    e[4] = 1; // LUN: format 1, target 0, LUN 0
                    e[12..16].copy_from_slice(&reason.to_le_bytes());
                    b.writer(mem).write(&e).is_ok()
                }
                Some(_) => {
                    self.stats.dropped += 1;
                    false
                }
                None => false,
            };
            let len = if written { EVENT_LEN as u32 } else { 0 };
            queue.add_used(mem, head, len).map_err(broken)?;
            used = true;
            if written {
                self.stats.events += 1;
                self.reported_changes = changes;
                break;
            }
        }
        if used && queue.needs_notification(mem).map_err(broken)? {
            interrupt.signal_queue(EVENT_QUEUE);
        }
        Ok(())
    }

    /// Process queue `index` of `queues` (used by tests and the fuzzer without a
    /// transport). Returns whether work remains.
    #[doc(hidden)]
    pub fn process_queue_raw(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<bool> {
        let more = match (index, queues.get_mut(index)) {
            (CONTROL_QUEUE, Some(q)) => {
                super::process_available(q, mem, index, interrupt, |c| self.handle_control(mem, c))?
            }
            (REQUEST_QUEUE, Some(q)) => {
                super::process_available(q, mem, index, interrupt, |c| self.handle_command(mem, c))?
            }
            _ => false,
        };
        if let Some(q) = queues.get_mut(EVENT_QUEUE) {
            self.deliver_events(q, mem, interrupt)?;
        }
        Ok(more)
    }

    /// Set the negotiated features (what `activate` does), for tests and the fuzzer.
    #[doc(hidden)]
    pub fn set_driver_features(&mut self, features: u64) {
        self.driver_features = features;
    }
}

impl VirtioDevice for VirtioScsi {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_SCSI
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << vs::VIRTIO_SCSI_F_CHANGE
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_LEN];
        let fields: [(usize, u32); 7] = [
            (0, 1), // num_queues (request queues)
            (4, SEG_MAX),
            (8, MAX_SECTORS),
            (12, u32::from(QUEUE_SIZE)), // cmd_per_lun
            (16, EVENT_LEN as u32),      // event_info_size
            (20, self.sense_size),
            (24, self.cdb_size),
        ];
        for (at, v) in fields {
            cfg[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        // max_channel (28) = 0, max_target (30) = 0, max_lun (32) = 0.
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only sense_size and cdb_size are driver-writable, as whole 32-bit fields.
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        if v > MAX_CONFIGURABLE_SIZE {
            tracing::debug!(offset, v, "virtio-scsi: config size too large, ignored");
            return;
        }
        match offset {
            20 => self.sense_size = v,
            24 => self.cdb_size = v,
            _ => {}
        }
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI controller.
        (0x01, 0x00, 0x00)
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()> {
        if queues.len() != 3 {
            return Err(Error::Activation(
                "virtio-scsi needs its control, event and request queues".into(),
            ));
        }
        self.driver_features = features;
        self.reported_changes = self.control.changes();
        self.active = Some(Active {
            memory,
            queues,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<bool> {
        let Some(mut active) = self.active.take() else {
            return Ok(false);
        };
        let mem = active.memory.clone();
        let r = self.process_queue_raw(index, &mut active.queues, &mem, &*active.interrupt);
        self.active = Some(active);
        r
    }

    fn reset(&mut self) {
        self.active = None;
        self.cdb_size = vs::VIRTIO_SCSI_CDB_DEFAULT_SIZE;
        self.sense_size = vs::VIRTIO_SCSI_SENSE_DEFAULT_SIZE;
        self.driver_features = 0;
        self.subscribed = 0;
        self.cdrom.reset();
    }
}

#[cfg(test)]
mod tests;
