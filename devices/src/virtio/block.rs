//! virtio-blk over a [`BlockBackend`].
//!
//! One request queue. Supported requests: IN, OUT, FLUSH, GET_ID; features SEG_MAX,
//! BLK_SIZE, FLUSH and RO (read-only backends). Every guest-controlled value is checked
//! before the backend or guest memory is touched:
//!
//! * chain shape: at most [`MAX_DESCRIPTORS`] descriptors, no loops or dangling `next`;
//!   the header (16 bytes) readable and entirely in the first descriptor; the status byte
//!   writable and in the last one; data buffers device-writable for IN/GET_ID and
//!   device-readable for OUT;
//! * every data buffer lies inside guest memory (checked for the whole request before any
//!   I/O, so a bad buffer never leaves a half-written disk);
//! * `sector * 512 + length` is computed with checked arithmetic and must stay within the
//!   capacity; the length must be a multiple of 512 and at most [`MAX_REQUEST_BYTES`].
//!
//! A request that fails these checks completes with `VIRTIO_BLK_S_IOERR` (or
//! `VIRTIO_BLK_S_UNSUPP` for unknown types). A chain whose status byte cannot be written
//! is returned with used length 0 and nothing written. Only a broken ring (which
//! virtio-queue reports) puts the device in NEEDS_RESET.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{VIRTIO_ID_BLOCK, VirtioDevice, VirtioInterrupt, collect_chain};
use crate::{Error, GuestMemoryMmap, Result};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest number of data segments in a request (advertised as `seg_max`).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest chain: header + `SEG_MAX` data segments + status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// Largest data transfer of one request.
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// Request type: read.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: get the device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O or request error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: FLUSH requests are supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;

/// Bounce buffer size for moving data between guest memory and the backend.
const CHUNK: usize = 256 * 1024;
/// Length of `struct virtio_blk_config` that we expose (through `num_queues`).
const CONFIG_LEN: usize = 36;

/// Storage behind a virtio-blk device. Offsets and lengths are in bytes.
pub trait BlockBackend: Send + Sync {
    /// Fill `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make written data durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
}

/// A raw disk image in a host file, accessed with positioned I/O.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
}

impl RawFile {
    /// Open the image at `path`, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::from_file(file, read_only)
    }

    /// Use an already open file. Its size is taken now.
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(RawFile {
            file,
            size,
            read_only,
        })
    }
}

impl BlockBackend for RawFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Size of the request header (`type: le32, reserved: le32, sector: le64`).
const HEADER_LEN: usize = 16;

/// Why a request failed; mapped to a status byte.
#[derive(Debug)]
enum RequestError {
    /// Bad request shape or values, or an I/O error.
    IoErr(&'static str),
    /// Unknown request type.
    Unsupported(u32),
}

struct Active {
    memory: Arc<GuestMemoryMmap>,
    queue: Queue,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Counters for tests and statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Requests completed with OK.
    pub ok: u64,
    /// Requests completed with IOERR.
    pub io_errors: u64,
    /// Requests completed with UNSUPP.
    pub unsupported: u64,
    /// Chains dropped without a status (no writable status byte, malformed chain).
    pub dropped: u64,
}

/// A virtio-blk device.
pub struct Block {
    backend: Box<dyn BlockBackend>,
    id: [u8; ID_BYTES],
    capacity: u64,
    read_only: bool,
    active: Option<Active>,
    stats: BlockStats,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl Block {
    /// A block device over `backend`, answering GET_ID with `id` (truncated to 20 bytes,
    /// NUL padded). The device is read-only if the backend is. The capacity is the
    /// backend size rounded down to whole sectors.
    pub fn new(backend: Box<dyn BlockBackend>, id: &[u8]) -> Self {
        let mut idb = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        idb[..n].copy_from_slice(&id[..n]);
        Block {
            capacity: backend.size() / SECTOR_SIZE,
            read_only: backend.read_only(),
            backend,
            id: idb,
            active: None,
            stats: BlockStats::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Request counters.
    pub fn stats(&self) -> BlockStats {
        self.stats
    }

    /// Handle one chain and return the number of bytes written into its buffers.
    fn handle_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let descs = match collect_chain(chain, MAX_DESCRIPTORS) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(?e, "virtio-blk: malformed chain dropped");
                self.stats.dropped += 1;
                return 0;
            }
        };
        // The last descriptor must hold a writable status byte in guest memory.
        let Some((status_desc, rest)) = descs.split_last().filter(|(s, rest)| {
            !rest.is_empty() && s.is_write_only() && s.len() >= 1 && mem.check_range(s.addr(), 1)
        }) else {
            tracing::debug!("virtio-blk: chain without a usable status byte dropped");
            self.stats.dropped += 1;
            return 0;
        };
        let (status, written) = match self.execute(mem, rest) {
            Ok(written) => {
                self.stats.ok += 1;
                (VIRTIO_BLK_S_OK, written)
            }
            Err(RequestError::IoErr(why)) => {
                tracing::debug!("virtio-blk: request failed: {why}");
                self.stats.io_errors += 1;
                (VIRTIO_BLK_S_IOERR, 0)
            }
            Err(RequestError::Unsupported(t)) => {
                tracing::debug!(request_type = t, "virtio-blk: unsupported request");
                self.stats.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        };
        if mem.write_obj(status, status_desc.addr()).is_err() {
            // Checked above; memory does not shrink under us.
            return 0;
        }
        // `written` is at most MAX_REQUEST_BYTES, so this cannot overflow.
        written + 1
    }

    /// Run the request made of the header descriptor and data descriptors `descs` (status
    /// excluded). Returns the bytes written into guest buffers.
    fn execute(
        &self,
        mem: &GuestMemoryMmap,
        descs: &[Descriptor],
    ) -> std::result::Result<u32, RequestError> {
        let (head, data) = descs
            .split_first()
            .ok_or(RequestError::IoErr("empty request"))?;
        if head.is_write_only() || (head.len() as usize) < HEADER_LEN {
            return Err(RequestError::IoErr("bad header descriptor"));
        }
        let mut raw = [0u8; HEADER_LEN];
        mem.read_slice(&mut raw, head.addr())
            .map_err(|_| RequestError::IoErr("header outside guest memory"))?;
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = raw;
        let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes(s);
        match request_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let write = request_type == VIRTIO_BLK_T_OUT;
                if write && self.read_only {
                    return Err(RequestError::IoErr("write to a read-only device"));
                }
                let total = self.check_buffers(mem, data, !write)?;
                if total % SECTOR_SIZE != 0 {
                    return Err(RequestError::IoErr("length not a multiple of 512"));
                }
                let start = sector
                    .checked_mul(SECTOR_SIZE)
                    .ok_or(RequestError::IoErr("sector overflow"))?;
                let end = start
                    .checked_add(total)
                    .ok_or(RequestError::IoErr("length overflow"))?;
                if end > self.capacity * SECTOR_SIZE {
                    return Err(RequestError::IoErr("beyond capacity"));
                }
                if write {
                    self.transfer_out(mem, data, start)?;
                    Ok(0)
                } else {
                    self.transfer_in(mem, data, start)?;
                    // total <= MAX_REQUEST_BYTES < u32::MAX.
                    Ok(total as u32)
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.backend
                    .flush()
                    .map_err(|_| RequestError::IoErr("flush failed"))?;
                Ok(0)
            }
            VIRTIO_BLK_T_GET_ID => {
                self.check_buffers(mem, data, true)?;
                let mut written = 0usize;
                for d in data {
                    if written == ID_BYTES {
                        break;
                    }
                    let n = (d.len() as usize).min(ID_BYTES - written);
                    mem.write_slice(&self.id[written..written + n], d.addr())
                        .map_err(|_| RequestError::IoErr("id buffer outside guest memory"))?;
                    written += n;
                }
                Ok(written as u32)
            }
            t => Err(RequestError::Unsupported(t)),
        }
    }

    /// Check that every data buffer has the right direction and lies in guest memory, and
    /// return their total length (bounded by [`MAX_REQUEST_BYTES`]).
    fn check_buffers(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        device_writes: bool,
    ) -> std::result::Result<u64, RequestError> {
        let mut total = 0u64;
        for d in data {
            if d.is_write_only() != device_writes {
                return Err(RequestError::IoErr("data buffer has the wrong direction"));
            }
            if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize) {
                return Err(RequestError::IoErr("data buffer outside guest memory"));
            }
            total = total
                .checked_add(u64::from(d.len()))
                .filter(|t| *t <= MAX_REQUEST_BYTES)
                .ok_or(RequestError::IoErr("request too large"))?;
        }
        Ok(total)
    }

    /// Disk → guest buffers.
    fn transfer_in(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        mut pos: u64,
    ) -> std::result::Result<(), RequestError> {
        let mut buf = vec![0u8; CHUNK];
        for d in data {
            let mut done = 0usize;
            let len = d.len() as usize;
            while done < len {
                let n = (len - done).min(CHUNK);
                self.backend
                    .read_at(&mut buf[..n], pos)
                    .map_err(|_| RequestError::IoErr("backend read failed"))?;
                let addr = checked_addr(d.addr(), done)?;
                mem.write_slice(&buf[..n], addr)
                    .map_err(|_| RequestError::IoErr("guest write failed"))?;
                done += n;
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Guest buffers → disk.
    fn transfer_out(
        &self,
        mem: &GuestMemoryMmap,
        data: &[Descriptor],
        mut pos: u64,
    ) -> std::result::Result<(), RequestError> {
        let mut buf = vec![0u8; CHUNK];
        for d in data {
            let mut done = 0usize;
            let len = d.len() as usize;
            while done < len {
                let n = (len - done).min(CHUNK);
                let addr = checked_addr(d.addr(), done)?;
                mem.read_slice(&mut buf[..n], addr)
                    .map_err(|_| RequestError::IoErr("guest read failed"))?;
                self.backend
                    .write_at(&buf[..n], pos)
                    .map_err(|_| RequestError::IoErr("backend write failed"))?;
                done += n;
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Process the request queue once (used by tests and the fuzzer without a transport).
    /// Returns whether work remains.
    #[doc(hidden)]
    pub fn process_queue_raw(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemoryMmap,
        interrupt: &dyn VirtioInterrupt,
    ) -> Result<bool> {
        super::process_available(queue, mem, 0, interrupt, |chain| {
            self.handle_chain(mem, chain)
        })
    }
}

fn checked_addr(base: GuestAddress, off: usize) -> std::result::Result<GuestAddress, RequestError> {
    base.checked_add(off as u64)
        .ok_or(RequestError::IoErr("address overflow"))
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f =
            (1 << VIRTIO_BLK_F_SEG_MAX) | (1 << VIRTIO_BLK_F_BLK_SIZE) | (1 << VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; CONFIG_LEN];
        cfg[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8..12) unused; seg_max at 12.
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // geometry (16..20) unused; blk_size at 20.
        cfg[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        // topology (24..32), writeback (32), num_queues (34).
        cfg[34..36].copy_from_slice(&1u16.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| cfg.get(usize::try_from(o).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    fn pci_class(&self) -> (u8, u8, u8) {
        // Mass storage, SCSI controller: what other VMMs present for virtio-blk.
        (0x01, 0x00, 0x00)
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _features: u64,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<()> {
        let queue = queues
            .into_iter()
            .next()
            .ok_or_else(|| Error::Activation("virtio-blk needs its request queue".into()))?;
        self.active = Some(Active {
            memory,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<bool> {
        if index != 0 {
            return Ok(false);
        }
        let Some(mut active) = self.active.take() else {
            return Ok(false);
        };
        let mem = active.memory.clone();
        let r = self.process_queue_raw(&mut active.queue, &mem, &*active.interrupt);
        self.active = Some(active);
        r
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testutil::*;
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use virtio_queue::QueueT;

    const HDR: u64 = 0x4_0000;
    const DATA: u64 = 0x5_0000;
    const STATUS: u64 = 0x6_0000;
    const DISK_SECTORS: u64 = 64;
    /// A descriptor `(addr, len, flags)`.
    type Seg = (u64, u32, u16);

    fn disk_image() -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..DISK_SECTORS * SECTOR_SIZE)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        f.write_all(&content).unwrap();
        f.flush().unwrap();
        (f, content)
    }

    fn block(read_only: bool) -> (Block, tempfile::NamedTempFile, Vec<u8>) {
        let (f, content) = disk_image();
        let backend = RawFile::open(f.path(), read_only).unwrap();
        (
            Block::new(Box::new(backend), b"vivarium-disk-0"),
            f,
            content,
        )
    }

    fn header(mem: &GuestMemoryMmap, t: u32, sector: u64) {
        mem.write_obj(t.to_le(), GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector.to_le(), GuestAddress(HDR + 8))
            .unwrap();
        mem.write_obj(0xaau8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Run one chain and return `(status byte, used length)`.
    fn run(dev: &mut Block, mem: &GuestMemoryMmap, mut q: Queue) -> (u8, u32) {
        let irq = CountingInterrupt::default();
        dev.process_queue_raw(&mut q, mem, &irq).unwrap();
        assert_eq!(used_idx(mem), 1, "the chain is always returned");
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
        (status(mem), used_entry(mem, 0).1)
    }

    #[test]
    fn read_returns_file_bytes() {
        let (mut dev, _f, content) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 3);
        // Two data buffers to exercise scatter.
        let q = queue_chain(
            &mem,
            &[
                (HDR, 16, 0),
                (DATA, 512, F_WRITE),
                (DATA + 0x1000, 1024, F_WRITE),
                (STATUS, 1, F_WRITE),
            ],
        );
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 1537));
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, content[3 * 512..4 * 512]);
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
            .unwrap();
        assert_eq!(got, content[4 * 512..6 * 512]);
    }

    #[test]
    fn write_lands_in_file_and_flush() {
        let (mut dev, f, mut content) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, DISK_SECTORS - 2);
        let data: Vec<u8> = (0..1024).map(|i| (i % 13) as u8 + 100).collect();
        mem.write_slice(&data, GuestAddress(DATA)).unwrap();
        let q = queue_chain(&mem, &[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 1));
        content[(DISK_SECTORS as usize - 2) * 512..].copy_from_slice(&data);
        assert_eq!(std::fs::read(f.path()).unwrap(), content);

        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let q = queue_chain(&mem, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(dev.stats().ok, 2);
    }

    #[test]
    fn get_id() {
        let (mut dev, _f, _) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        mem.write_slice(&[0xee; 32], GuestAddress(DATA)).unwrap();
        let q = queue_chain(
            &mem,
            &[(HDR, 16, 0), (DATA, 32, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 21));
        let mut got = [0u8; 21];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got[..15], b"vivarium-disk-0");
        assert_eq!(&got[15..20], &[0; 5]);
        assert_eq!(got[20], 0xee, "nothing past 20 bytes");
        // A short buffer gets a prefix.
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let q = queue_chain(
            &mem,
            &[(HDR, 16, 0), (DATA, 4, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 5));
    }

    #[test]
    fn read_only_refuses_writes() {
        let (mut dev, f, content) = block(true);
        assert_ne!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
        let q = queue_chain(&mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_IOERR, 1));
        assert_eq!(std::fs::read(f.path()).unwrap(), content);
        // Reads still work.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let q = queue_chain(
            &mem,
            &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 513));
    }

    #[test]
    fn config_space() {
        let (dev, _f, _) = block(false);
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), DISK_SECTORS);
        let mut b = [0u8; 4];
        dev.read_config(12, &mut b);
        assert_eq!(u32::from_le_bytes(b), SEG_MAX);
        dev.read_config(20, &mut b);
        assert_eq!(u32::from_le_bytes(b), 512);
        dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(dev.features() & (1 << VIRTIO_BLK_F_RO), 0);
    }

    #[test]
    fn hostile_requests_fail_with_ioerr() {
        let (mut dev, f, content) = block(false);
        let mem = memory();
        let cases: Vec<(&str, u32, u64, Vec<Seg>)> = vec![
            (
                "data beyond guest memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    (HDR, 16, 0),
                    (MEM_SIZE as u64 - 256, 512, F_WRITE),
                    (STATUS, 1, F_WRITE),
                ],
            ),
            (
                "data address wraps",
                VIRTIO_BLK_T_OUT,
                0,
                vec![(HDR, 16, 0), (u64::MAX - 100, 512, 0), (STATUS, 1, F_WRITE)],
            ),
            (
                "sector beyond capacity",
                VIRTIO_BLK_T_IN,
                DISK_SECTORS,
                vec![(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
            ),
            (
                "end beyond capacity",
                VIRTIO_BLK_T_OUT,
                DISK_SECTORS - 1,
                vec![(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, F_WRITE)],
            ),
            (
                "sector * 512 overflows",
                VIRTIO_BLK_T_IN,
                u64::MAX / 256,
                vec![(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
            ),
            (
                "start + length overflows",
                VIRTIO_BLK_T_IN,
                (u64::MAX - 511) / 512,
                vec![(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)],
            ),
            (
                "write-only header",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    (HDR, 16, F_WRITE),
                    (DATA, 512, F_WRITE),
                    (STATUS, 1, F_WRITE),
                ],
            ),
            (
                "short header",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 8, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
            ),
            (
                "header outside memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    (0xffff_ffff_0000, 16, 0),
                    (DATA, 512, F_WRITE),
                    (STATUS, 1, F_WRITE),
                ],
            ),
            (
                "read into a device-readable buffer",
                VIRTIO_BLK_T_IN,
                0,
                vec![(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)],
            ),
            (
                "write from a device-writable buffer",
                VIRTIO_BLK_T_OUT,
                0,
                vec![(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
            ),
            (
                "length not a multiple of 512",
                VIRTIO_BLK_T_OUT,
                0,
                vec![(HDR, 16, 0), (DATA, 100, 0), (STATUS, 1, F_WRITE)],
            ),
            (
                "too large",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    (HDR, 16, 0),
                    (DATA, 0x8000_0000, F_WRITE),
                    (STATUS, 1, F_WRITE),
                ],
            ),
        ];
        for (name, t, sector, descs) in cases {
            header(&mem, t, sector);
            mem.write_slice(&[0x77; 1024], GuestAddress(DATA)).unwrap();
            let q = queue_chain(&mem, &descs);
            let (st, len) = run(&mut dev, &mem, q);
            assert_eq!((st, len), (VIRTIO_BLK_S_IOERR, 1), "{name}");
            // The bad request moved no data either way.
            let mut d = [0u8; 1024];
            mem.read_slice(&mut d, GuestAddress(DATA)).unwrap();
            assert_eq!(d, [0x77; 1024], "{name}: guest data untouched");
            assert_eq!(
                std::fs::read(f.path()).unwrap(),
                content,
                "{name}: disk untouched"
            );
        }
        // Unknown request types are UNSUPP.
        header(&mem, 0x1234, 0);
        let q = queue_chain(&mem, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_UNSUPP, 1));
    }

    #[test]
    fn chains_without_status_are_dropped() {
        let (mut dev, f, content) = block(false);
        let mem = memory();
        let cases: Vec<(&str, Vec<Seg>)> = vec![
            ("missing status", vec![(HDR, 16, 0), (DATA, 512, 0)]),
            (
                "status readable",
                vec![(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, 0)],
            ),
            (
                "status zero length",
                vec![(HDR, 16, 0), (DATA, 512, 0), (STATUS, 0, F_WRITE)],
            ),
            (
                "status outside memory",
                vec![(HDR, 16, 0), (DATA, 512, 0), (MEM_SIZE as u64, 1, F_WRITE)],
            ),
            ("lone descriptor", vec![(STATUS, 1, F_WRITE)]),
        ];
        for (name, descs) in cases {
            header(&mem, VIRTIO_BLK_T_OUT, 0);
            mem.write_slice(&[0x66; 512], GuestAddress(DATA)).unwrap();
            let q = queue_chain(&mem, &descs);
            let (st, len) = run(&mut dev, &mem, q);
            assert_eq!((st, len), (0xaa, 0), "{name}");
            assert_eq!(std::fs::read(f.path()).unwrap(), content, "{name}");
        }
        assert_eq!(dev.stats().dropped, 5);
    }

    #[test]
    fn descriptor_loop_and_bad_next() {
        let (mut dev, _f, _) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 2 -> 1 ...
        let q = queue_with(
            &mem,
            &[
                desc(HDR, 16, F_NEXT, 1),
                desc(DATA, 512, F_WRITE | F_NEXT, 2),
                desc(STATUS, 1, F_WRITE | F_NEXT, 1),
            ],
            0,
        );
        assert_eq!(run(&mut dev, &mem, q), (0xaa, 0));
        // Next index outside the table.
        let q = queue_with(&mem, &[desc(HDR, 16, F_NEXT, 300)], 0);
        assert_eq!(run(&mut dev, &mem, q), (0xaa, 0));
    }

    #[test]
    fn indirect_descriptors() {
        let (mut dev, _f, content) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 1);
        let table = 0x7_0000u64;
        let entries = [
            desc(HDR, 16, F_NEXT, 1),
            desc(DATA, 512, F_WRITE | F_NEXT, 2),
            desc(STATUS, 1, F_WRITE, 0),
        ];
        for (i, e) in entries.iter().enumerate() {
            mem.write_obj(*e, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
        let q = queue_with(&mem, &[desc(table, 48, F_INDIRECT, 0)], 0);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_OK, 513));
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, content[512..1024]);
        // An indirect table outside memory or with a bad length is dropped.
        let q = queue_with(&mem, &[desc(0xffff_ffff_f000, 48, F_INDIRECT, 0)], 0);
        assert_eq!(run(&mut dev, &mem, q).1, 0);
        let q = queue_with(&mem, &[desc(table, 47, F_INDIRECT, 0)], 0);
        assert_eq!(run(&mut dev, &mem, q).1, 0);
    }

    #[test]
    fn several_chains_one_interrupt() {
        let (mut dev, _f, _) = block(false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let mut q = queue_with(&mem, &[], 0);
        for i in 0..4u16 {
            let d0 = desc(HDR, 16, F_NEXT, 2 * i + 1);
            let d1 = desc(STATUS, 1, F_WRITE, 0);
            mem.write_obj(d0, GuestAddress(32 * u64::from(i))).unwrap();
            mem.write_obj(d1, GuestAddress(32 * u64::from(i) + 16))
                .unwrap();
            mem.write_obj(2 * i, GuestAddress(AVAIL_RING + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(4u16, GuestAddress(AVAIL_RING + 2)).unwrap();
        let irq = CountingInterrupt::default();
        assert!(!dev.process_queue_raw(&mut q, &mem, &irq).unwrap());
        assert_eq!(used_idx(&mem), 4);
        assert_eq!(irq.queue.load(Ordering::SeqCst), 1);
        assert_eq!(q.next_used(), 4);
    }

    /// A backend that fails every operation.
    struct Broken;
    impl BlockBackend for Broken {
        fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
        fn flush(&self) -> io::Result<()> {
            Err(io::Error::other("broken"))
        }
        fn size(&self) -> u64 {
            1 << 20
        }
        fn read_only(&self) -> bool {
            false
        }
    }

    #[test]
    fn backend_errors_are_ioerr() {
        let mut dev = Block::new(Box::new(Broken), b"");
        let mem = memory();
        for (t, flags) in [(VIRTIO_BLK_T_IN, F_WRITE), (VIRTIO_BLK_T_OUT, 0)] {
            header(&mem, t, 0);
            let q = queue_chain(
                &mem,
                &[(HDR, 16, 0), (DATA, 512, flags), (STATUS, 1, F_WRITE)],
            );
            assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_IOERR, 1));
        }
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let q = queue_chain(&mem, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]);
        assert_eq!(run(&mut dev, &mem, q), (VIRTIO_BLK_S_IOERR, 1));
    }
}
