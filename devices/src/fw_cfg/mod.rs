//! The firmware configuration device (`fw_cfg`): how SeaBIOS and OVMF learn what machine
//! they run on (memory map, CPUs, boot order, ACPI and SMBIOS tables, option ROMs).
//!
//! The interface is QEMU's (`docs/specs/fw_cfg.rst`), which both firmwares speak; it is
//! written here from that contract. On x86 it sits on port I/O:
//!
//! ```text
//! base + 0   selector (16-bit, little-endian): picks an item, rewinds its offset
//! base + 1   data (8-bit): the selected item's next byte (0 past its end)
//! base + 4   DMA address (64-bit big-endian; or high half at +4, low half at +8, the low
//!            half's write starts the transfer); reads give the "QEMU CFG" signature
//! ```
//!
//! A DMA transfer is described in guest memory by a 16-byte `FWCfgDmaAccess`
//! (big-endian `control`, `length`, `address`): `control` may select an item (bit 3, the
//! key in its top 16 bits), then read (bit 1), skip (bit 2) or write (bit 4) `length`
//! bytes at the item's offset. When done the device writes `control` back as 0, or with
//! the error bit (bit 0) if the transfer could not be done (a bad guest address, a write to
//! a read-only item); nothing of it is then half-applied to the item.
//!
//! Everything the guest writes here is untrusted: selectors of items that do not exist read
//! as empty, DMA descriptors are bounds-checked against guest memory, and transfers are
//! capped in size and chunked, so a guest cannot make the device allocate or loop without
//! bound.

pub mod loader;

use std::collections::BTreeMap;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemoryMmap;
use crate::bus::BusDevice;

/// The x86 port of the selector register (data at +1, DMA at +4..+12).
pub const X86_PORT: u16 = 0x510;
/// Ports the device occupies from its base (selector 2, data 1, pad 1, DMA 8).
pub const X86_PORT_LEN: u64 = 12;

/// Item keys of the interface (the ones the firmwares read).
pub mod key {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Feature bits: 1 traditional interface, 2 DMA.
    pub const ID: u16 = 0x01;
    /// The machine's UUID (16 bytes, as SMBIOS shows it).
    pub const UUID: u16 = 0x02;
    /// RAM size in bytes (u64).
    pub const RAM_SIZE: u16 = 0x03;
    /// 1 when the machine has no display (u16).
    pub const NOGRAPHIC: u16 = 0x04;
    /// Number of CPUs at boot (u16).
    pub const NB_CPUS: u16 = 0x05;
    /// NUMA description (u64 count of nodes, then per-CPU and per-node data; 0: none).
    pub const NUMA: u16 = 0x0d;
    /// 1 when the firmware should offer its boot menu (u16).
    pub const BOOT_MENU: u16 = 0x0e;
    /// Most CPUs the machine can have (u16).
    pub const MAX_CPUS: u16 = 0x0f;
    /// The directory of named files.
    pub const FILE_DIR: u16 = 0x19;
    /// The first key of a named file.
    pub const FILE_FIRST: u16 = 0x20;
}

/// `FW_CFG_ID` bits.
const ID_TRADITIONAL: u32 = 1 << 0;
const ID_DMA: u32 = 1 << 1;

/// DMA control bits.
const DMA_ERROR: u32 = 1 << 0;
const DMA_READ: u32 = 1 << 1;
const DMA_SKIP: u32 = 1 << 2;
const DMA_SELECT: u32 = 1 << 3;
const DMA_WRITE: u32 = 1 << 4;

/// What a read of the DMA register gives: "QEMU CFG" as a big-endian number.
const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;
/// Bytes of a file name in the directory, the terminating NUL included.
pub const FILE_NAME_LEN: usize = 56;
/// Most bytes one DMA transfer moves (the firmwares load at most a few MiB at once: ROMs,
/// tables, a kernel). A longer request is refused with the error bit.
const DMA_MAX_LEN: u32 = 64 << 20;
/// Bytes copied per step of a DMA read, so a transfer never holds a large buffer.
const DMA_CHUNK: usize = 64 << 10;

/// Why an item cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// The file name is empty, too long for the directory, or has a NUL byte.
    #[error("fw_cfg file name `{0}` is empty, has a NUL byte or is longer than 55 bytes")]
    BadName(String),
    /// A file of that name exists.
    #[error("fw_cfg already has a file named `{0}`")]
    Duplicate(String),
    /// No key is left for another file.
    #[error("fw_cfg has no room for more files")]
    Full,
    /// An item is larger than the interface can describe (4 GiB).
    #[error("fw_cfg item `{0}` is larger than 4 GiB")]
    TooLarge(String),
}

/// One item: its bytes, shared so that building the directory and reading never copy.
#[derive(Clone)]
struct Item {
    data: Arc<[u8]>,
}

/// The fw_cfg device: the items and the guest's current position in one of them.
pub struct FwCfg {
    memory: Arc<GuestMemoryMmap>,
    items: BTreeMap<u16, Item>,
    /// Named files in the order they were added, with their keys.
    files: Vec<(String, u16)>,
    selected: u16,
    offset: u32,
    /// The high half of the DMA address, latched until the low half arrives.
    dma_high: u32,
}

impl std::fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg")
            .field("files", &self.files)
            .field("selected", &self.selected)
            .finish()
    }
}

impl FwCfg {
    /// A device with the signature, the feature bits (traditional and DMA) and an empty file
    /// directory; DMA reaches `memory`.
    pub fn new(memory: Arc<GuestMemoryMmap>) -> Self {
        let mut device = FwCfg {
            memory,
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
        };
        device.set_item(key::SIGNATURE, b"QEMU".to_vec());
        device.set_item(key::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        device.rebuild_directory();
        device
    }

    /// Sets the item at `key` (below [`key::FILE_FIRST`]) to `data`.
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, Item { data: data.into() });
    }

    /// Sets a little-endian u16 item.
    pub fn set_u16(&mut self, key: u16, value: u16) {
        self.set_item(key, value.to_le_bytes().to_vec());
    }

    /// Sets a little-endian u64 item.
    pub fn set_u64(&mut self, key: u16, value: u64) {
        self.set_item(key, value.to_le_bytes().to_vec());
    }

    /// Adds a named file (e.g. `etc/e820`, `bootorder`) and lists it in the directory.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.to_string()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(FwCfgError::TooLarge(name.to_string()));
        }
        let key = key::FILE_FIRST
            .checked_add(self.files.len() as u16)
            .filter(|k| *k < 0x4000)
            .ok_or(FwCfgError::Full)?;
        self.items.insert(key, Item { data: data.into() });
        self.files.push((name.to_string(), key));
        self.rebuild_directory();
        Ok(key)
    }

    /// The bytes of the named file, if there is one.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let (_, key) = self.files.iter().find(|(n, _)| n == name)?;
        self.items.get(key).map(|i| &i.data[..])
    }

    /// The directory, sorted by name as QEMU lists it (SeaBIOS and OVMF look names up, so the
    /// order is for people reading a dump).
    fn rebuild_directory(&mut self) {
        let mut sorted: Vec<&(String, u16)> = self.files.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut dir = Vec::with_capacity(4 + 64 * sorted.len());
        dir.extend_from_slice(&(sorted.len() as u32).to_be_bytes());
        for (name, key) in sorted {
            let size = self.items.get(key).map_or(0, |i| i.data.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut field = [0u8; FILE_NAME_LEN];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&field);
        }
        self.items.insert(key::FILE_DIR, Item { data: dir.into() });
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    fn selected_data(&self) -> &[u8] {
        // Bit 15 (architecture-specific items) is part of the key; bit 14 (the legacy write
        // flag) is not, and writes through the data port are never honoured.
        self.items
            .get(&(self.selected & !0x4000))
            .map_or(&[], |i| &i.data[..])
    }

    fn read_data_byte(&mut self) -> u8 {
        let data = self.selected_data();
        let byte = data.get(self.offset as usize).copied().unwrap_or(0);
        if (self.offset as usize) < data.len() {
            self.offset += 1;
        }
        byte
    }

    /// Runs the DMA transfer described at guest address `descriptor`.
    fn dma(&mut self, descriptor: u64) {
        let mut raw = [0u8; 16];
        if self
            .memory
            .read_slice(&mut raw, GuestAddress(descriptor))
            .is_err()
        {
            tracing::debug!(descriptor, "fw_cfg DMA descriptor outside guest memory");
            return;
        }
        let control = u32::from_be_bytes(raw[0..4].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(raw[4..8].try_into().expect("4 bytes"));
        let address = u64::from_be_bytes(raw[8..16].try_into().expect("8 bytes"));
        let status = match self.transfer(control, length, address) {
            Ok(()) => 0u32,
            Err(why) => {
                tracing::debug!(control, length, address, "fw_cfg DMA refused: {why}");
                DMA_ERROR
            }
        };
        // The descriptor was readable, so its first word is writable unless the guest moved
        // memory meanwhile; nothing else can be done if it is not.
        let _ = self
            .memory
            .write_slice(&status.to_be_bytes(), GuestAddress(descriptor));
    }

    fn transfer(&mut self, control: u32, length: u32, address: u64) -> Result<(), &'static str> {
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        if length > DMA_MAX_LEN {
            return Err("transfer longer than 64 MiB");
        }
        if control & DMA_READ != 0 {
            let start = self.offset as usize;
            let data = self
                .items
                .get(&(self.selected & !0x4000))
                .map(|i| i.data.clone());
            let data: &[u8] = data.as_deref().unwrap_or(&[]);
            let mut done = 0usize;
            let zeros = [0u8; 512];
            while done < length as usize {
                let at = start.saturating_add(done);
                let want = (length as usize - done).min(DMA_CHUNK);
                let dest = address
                    .checked_add(done as u64)
                    .ok_or("destination wraps around")?;
                let written = if at < data.len() {
                    let n = want.min(data.len() - at);
                    self.memory
                        .write_slice(&data[at..at + n], GuestAddress(dest))
                        .map_err(|_| "destination outside guest memory")?;
                    n
                } else {
                    // Past the end of the item the transfer reads zeros.
                    let n = want.min(zeros.len());
                    self.memory
                        .write_slice(&zeros[..n], GuestAddress(dest))
                        .map_err(|_| "destination outside guest memory")?;
                    n
                };
                done += written;
            }
            self.advance(length, data.len());
        } else if control & DMA_SKIP != 0 {
            let len = self.selected_data().len();
            self.advance(length, len);
        } else if control & DMA_WRITE != 0 {
            // No item of this machine is writable by the guest.
            return Err("write to a read-only item");
        }
        Ok(())
    }

    fn advance(&mut self, by: u32, item_len: usize) {
        let end = (self.offset as u64 + u64::from(by)).min(item_len as u64);
        self.offset = end.max(u64::from(self.offset)) as u32;
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 2) => data.copy_from_slice(&self.selected.to_le_bytes()),
            (1, 1) => data[0] = self.read_data_byte(),
            // A wider read of the data port gives successive bytes (as QEMU's does).
            (1, n) if n <= 8 => {
                for byte in data.iter_mut() {
                    *byte = self.read_data_byte();
                }
            }
            (4, 8) => data.copy_from_slice(&DMA_SIGNATURE.to_be_bytes()),
            (4, 4) => data.copy_from_slice(&((DMA_SIGNATURE >> 32) as u32).to_be_bytes()),
            (8, 4) => data.copy_from_slice(&(DMA_SIGNATURE as u32).to_be_bytes()),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (4, 8) => {
                let address = u64::from_be_bytes(data.try_into().expect("8 bytes"));
                self.dma(address);
            }
            (4, 4) => self.dma_high = u32::from_be_bytes(data.try_into().expect("4 bytes")),
            (8, 4) => {
                let low = u32::from_be_bytes(data.try_into().expect("4 bytes"));
                let address = (u64::from(self.dma_high) << 32) | u64::from(low);
                self.dma_high = 0;
                self.dma(address);
            }
            // Writes through the data port were removed from the interface (QEMU 2.4).
            _ => tracing::debug!(offset, len = data.len(), "fw_cfg write ignored"),
        }
    }
}

#[cfg(test)]
mod tests;
