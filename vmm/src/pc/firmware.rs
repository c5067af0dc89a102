//! Booting through PC firmware (SeaBIOS): the ROM below 4 GiB, the BIOS area whose routing
//! the i440FX's PAM registers choose, and what the firmware reads over fw_cfg.
//!
//! ```text
//! 4 GiB - ROM size .. 4 GiB    the BIOS image, a read-only memory slot; the vCPU starts at
//!                              its last 16 bytes (the reset vector, 0xfffffff0)
//! 0xc0000 .. 0x100000          the BIOS area, thirteen slots that follow PAM: RAM
//!                              (read-write or read-only), the ROM's last 128 KiB (0xe0000..),
//!                              or nothing (0xc0000..0xdffff reading the PCI side)
//! ```
//!
//! At power-on every PAM segment reads the ROM. SeaBIOS then routes the area to RAM, copies
//! itself there from the ROM's high copy, and write-protects it at the end of POST; option
//! ROMs (the display's VGA BIOS) are copied into 0xc0000.. meanwhile. Writes that reach a
//! segment with no writable slot exit to [`BiosAreaWrites`], which applies them to RAM when
//! PAM says writes go there (PAM mode 2: read the ROM, write RAM) and drops them otherwise.

use std::path::Path;
use std::sync::{Arc, Mutex};

use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::bus::BusDevice;
use vivarium_devices::fw_cfg::{FwCfg, key};
use vivarium_devices::pci::i440fx::{
    PAM_AREA_END, PAM_AREA_START, PAM_REGISTERS, PAM_SEGMENTS, PamListener, PamMode, PamSegment,
    pam_segments,
};
use vivarium_hypervisor::{MemoryMapping, Vm};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::pc::layout;

/// Smallest BIOS image accepted (SeaBIOS's `bios.bin` is 128 KiB).
const MIN_ROM_SIZE: usize = 64 << 10;
/// Largest BIOS image accepted (a flash chip of 16 MiB; SeaBIOS is 128 or 256 KiB).
const MAX_ROM_SIZE: usize = 16 << 20;
/// The part of the ROM that also appears at 0xe0000..0x100000.
const ISA_BIOS_SIZE: usize = 128 << 10;
/// The erase block of the UEFI flash (what OVMF's flash driver erases at a time).
pub const FLASH_BLOCK_SIZE: usize = 4 << 10;

/// A firmware image in memory of its own, page-aligned so the hypervisor can map it.
pub struct Rom {
    address: *mut u8,
    len: usize,
}

// SAFETY: the pointer is to a private mapping owned by the `Rom`, only written while it is
// built (before it is shared) and unmapped once in Drop.
unsafe impl Send for Rom {}
// SAFETY: as above; after `load` it is only read (by the guest and by `bytes`).
unsafe impl Sync for Rom {}

impl Rom {
    /// Reads a BIOS image: its size must be a multiple of 64 KiB from 64 KiB to 16 MiB.
    pub fn load(path: &Path) -> Result<Rom> {
        Self::load_image(path, "a BIOS image", "seabios", MIN_ROM_SIZE)
    }

    /// Reads OVMF's code: a multiple of 4 KiB (its flash blocks) from 64 KiB to 16 MiB, with
    /// the reset vector in its last 16 bytes.
    pub fn load_uefi_code(path: &Path) -> Result<Rom> {
        Self::load_image(path, "UEFI firmware code", "ovmf", FLASH_BLOCK_SIZE)
    }

    fn load_image(path: &Path, what: &str, package: &str, granule: usize) -> Result<Rom> {
        let bad = |why: String| Error::Firmware {
            path: path.to_path_buf(),
            why,
        };
        let data = std::fs::read(path).map_err(|e| {
            bad(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "the file does not exist: install the `{package}` package (sudo apt install \
                     {package})"
                ),
                _ => e.to_string(),
            })
        })?;
        if data.len() < MIN_ROM_SIZE
            || data.len() > MAX_ROM_SIZE
            || !data.len().is_multiple_of(granule)
        {
            return Err(bad(format!(
                "it is {} bytes; {what} is a multiple of {} KiB from 64 KiB to 16 MiB (is it a \
                 damaged or foreign file? reinstall the `{package}` package)",
                data.len(),
                granule >> 10
            )));
        }
        // SAFETY: a fresh private anonymous mapping; the result is checked below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                data.len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(bad(format!(
                "no memory for it: {}",
                std::io::Error::last_os_error()
            )));
        }
        let rom = Rom {
            address: address.cast(),
            len: data.len(),
        };
        // SAFETY: the mapping is `len` bytes long, writable, and nobody else sees it yet.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), rom.address, rom.len) };
        Ok(rom)
    }

    /// The image's size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the image is empty (never: `load` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the ROM sits below 4 GiB.
    pub fn guest_address(&self) -> u64 {
        layout::PCI_HOLE_END - self.len as u64
    }

    fn host_address(&self) -> *mut u8 {
        self.address
    }
}

impl Drop for Rom {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `load`, once; the guest no longer reaches it
        // (the VM that mapped it is gone before the machine drops its ROM).
        unsafe { libc::munmap(self.address.cast(), self.len) };
    }
}

/// The BIOS area's guest memory, one mapping per segment, following the PAM registers.
pub struct BiosArea {
    vm: Arc<dyn Vm>,
    memory: Arc<GuestMemoryMmap>,
    rom: Arc<Rom>,
    /// Host address of guest physical address 0 (RAM region 0).
    ram_host: *mut u8,
    /// Whether the hypervisor has read-only mappings (without, read-only RAM and the ROM
    /// stay writable).
    read_only_slots: bool,
    state: Mutex<AreaState>,
}

// SAFETY: `ram_host` is only an address handed to the hypervisor, inside guest RAM that
// `memory` keeps mapped; nothing is read or written through it here.
unsafe impl Send for BiosArea {}
// SAFETY: as above; the state is behind a mutex.
unsafe impl Sync for BiosArea {}

struct AreaState {
    modes: [PamMode; PAM_SEGMENTS],
    /// What each segment maps now: (host address, read-only), or nothing.
    slots: [Option<(usize, bool)>; PAM_SEGMENTS],
}

impl BiosArea {
    /// Maps the ROM below 4 GiB and the BIOS area in its power-on state (every segment reads
    /// the ROM).
    pub fn new(
        vm: Arc<dyn Vm>,
        memory: Arc<GuestMemoryMmap>,
        rom: Arc<Rom>,
    ) -> Result<Arc<BiosArea>> {
        use vm_memory::GuestMemoryBackend;
        let ram_host = memory
            .get_host_address(GuestAddress(0))
            .map_err(|e| Error::Setup(format!("guest memory has no host mapping: {e}")))?;
        let read_only_slots = vm.read_only_memory();
        if rom.len() < ISA_BIOS_SIZE {
            return Err(Error::InvalidMachine(format!(
                "a BIOS image of {} KiB is smaller than the 128 KiB the BIOS area shows",
                rom.len() >> 10
            )));
        }
        let mapping = MemoryMapping {
            guest_address: rom.guest_address(),
            size: rom.len() as u64,
            host_address: rom.host_address(),
            read_only: read_only_slots,
            log_dirty: false,
        };
        // SAFETY: the ROM mapping is owned by `rom`, which the machine keeps until after the
        // VM is gone; the range (the top of the 32-bit space) holds no other mapping.
        unsafe { vm.map_memory(mapping) }?;
        let area = Arc::new(BiosArea {
            vm,
            memory,
            rom,
            ram_host,
            read_only_slots,
            state: Mutex::new(AreaState {
                modes: [PamMode::Rom; PAM_SEGMENTS],
                slots: [None; PAM_SEGMENTS],
            }),
        });
        area.apply(&pam_segments(&[0; PAM_REGISTERS]))?;
        Ok(area)
    }

    /// What the slot of `segment` maps: RAM, the ROM's copy of the F and E segments, or
    /// nothing (reads go to the PCI side).
    fn wanted(&self, segment: &PamSegment) -> Option<(usize, bool)> {
        let read_only = self.read_only_slots;
        if segment.mode.reads_ram() {
            let read_only = read_only && !segment.mode.writes_ram();
            return Some((self.ram_host as usize + segment.start as usize, read_only));
        }
        // Reads go to the ROM side: the BIOS image's last 128 KiB for 0xe0000..0xfffff, the
        // PCI bus (nothing here; option ROMs live in their BARs) below.
        let isa_bios = PAM_AREA_END - ISA_BIOS_SIZE as u64;
        (segment.start >= isa_bios).then(|| {
            let rom_offset = self.rom.len() as u64 - (PAM_AREA_END - segment.start);
            (
                self.rom.host_address() as usize + rom_offset as usize,
                read_only,
            )
        })
    }

    fn apply(&self, segments: &[PamSegment; PAM_SEGMENTS]) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (i, segment) in segments.iter().enumerate() {
            state.modes[i] = segment.mode;
            let want = self.wanted(segment);
            if state.slots[i] == want {
                continue;
            }
            if state.slots[i].take().is_some() {
                self.vm.unmap_memory(segment.start)?;
            }
            if let Some((host, read_only)) = want {
                let mapping = MemoryMapping {
                    guest_address: segment.start,
                    size: segment.len,
                    host_address: host as *mut u8,
                    read_only,
                    log_dirty: false,
                };
                // SAFETY: the host range is inside RAM region 0 (which starts at guest 0 and
                // spans the BIOS area) or inside the ROM mapping, both owned by the machine
                // until after the VM is gone; no other mapping covers this segment.
                unsafe { self.vm.map_memory(mapping) }?;
                state.slots[i] = want;
            }
        }
        Ok(())
    }

    fn mode_at(&self, address: u64) -> Option<PamMode> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let index = if address >= 0xf_0000 {
            12
        } else {
            ((address.checked_sub(PAM_AREA_START)?) / 0x4000) as usize
        };
        state.modes.get(index).copied()
    }
}

impl PamListener for BiosArea {
    fn pam_changed(&self, segments: &[PamSegment; PAM_SEGMENTS]) {
        if let Err(e) = self.apply(segments) {
            tracing::error!("the BIOS area could not follow the PAM registers: {e}");
        }
    }
}

/// Accesses to the BIOS area that no slot takes (writes to read-only or ROM-routed segments,
/// reads of 0xc0000..0xdffff routed to PCI). Register it on the MMIO bus over
/// `PAM_AREA_START..PAM_AREA_END`.
pub struct BiosAreaWrites(pub Arc<BiosArea>);

impl BusDevice for BiosAreaWrites {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let address = base + offset;
        match self.0.mode_at(address) {
            Some(mode) if mode.writes_ram() => {
                if let Err(e) = self.0.memory.write_slice(data, GuestAddress(address)) {
                    tracing::debug!(address, "write to the BIOS area failed: {e}");
                }
            }
            // Write-protected, or routed to the ROM: lost, as on a PC.
            _ => {}
        }
    }
}

/// The VM's UEFI variable store file, mapped shared: the guest reads it through a read-only
/// memory slot while the flash is in read-array mode, and the flash model programs and
/// erases it in place (the file is the flash).
pub struct VarsMapping {
    address: *mut u8,
    len: usize,
}

// SAFETY: the pointer is to a shared mapping owned by the `VarsMapping`, unmapped once in
// Drop; the flash model (behind its mutex) is its only writer.
unsafe impl Send for VarsMapping {}
// SAFETY: as above.
unsafe impl Sync for VarsMapping {}

impl VarsMapping {
    /// Maps `path` read-write and shared. Its size must be a whole number of flash blocks.
    pub fn open(path: &Path) -> Result<Arc<VarsMapping>> {
        let bad = |why: String| Error::Firmware {
            path: path.to_path_buf(),
            why,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| bad(format!("cannot open the UEFI variable store: {e}")))?;
        let len = file.metadata().map_err(|e| bad(e.to_string()))?.len() as usize;
        if len == 0 || len > MAX_ROM_SIZE || !len.is_multiple_of(FLASH_BLOCK_SIZE) {
            return Err(bad(format!(
                "the UEFI variable store is {len} bytes, not a whole number of 4 KiB blocks up \
                 to 16 MiB (delete it to start over with OVMF's defaults)"
            )));
        }
        use std::os::fd::AsRawFd;
        // SAFETY: mapping a file we opened read-write, shared; the result is checked below.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(bad(format!(
                "cannot map the UEFI variable store: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Arc::new(VarsMapping {
            address: address.cast(),
            len,
        }))
    }

    /// The store's size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty (never: `open` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn sync(&self, flags: libc::c_int) {
        // SAFETY: syncing our own live mapping.
        if unsafe { libc::msync(self.address.cast(), self.len, flags) } != 0 {
            tracing::warn!(
                "writing the UEFI variable store back failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Drop for VarsMapping {
    fn drop(&mut self) {
        self.sync(libc::MS_SYNC);
        // SAFETY: unmapping the mapping made in `open`, once; the VM that mapped it into the
        // guest no longer runs (its vCPUs are joined before the machine's devices drop).
        unsafe { libc::munmap(self.address.cast(), self.len) };
    }
}

/// The store as the flash model's storage.
struct VarsStorage(Arc<VarsMapping>);

impl vivarium_devices::pflash::FlashStorage for VarsStorage {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` bytes and lives as long as the Arc.
        unsafe { std::slice::from_raw_parts(self.0.address, self.0.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; the flash model behind its mutex is the only writer (the guest
        // maps it read-only).
        unsafe { std::slice::from_raw_parts_mut(self.0.address, self.0.len) }
    }
    fn written(&mut self) {
        self.0.sync(libc::MS_ASYNC);
    }
}

/// Maps and unmaps the variable store's read-only guest mapping as the flash enters and
/// leaves read-array mode.
struct VarsSlot {
    vm: Arc<dyn Vm>,
    mapping: Arc<VarsMapping>,
    guest_address: u64,
    /// Without read-only mappings the store is never mapped: every access goes to the model.
    read_only_slots: bool,
    /// Whether it is mapped now.
    mapped: Mutex<bool>,
}

impl VarsSlot {
    fn set(&self, mapped: bool) -> Result<()> {
        if !self.read_only_slots {
            return Ok(());
        }
        let mut current = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        if *current == mapped {
            return Ok(());
        }
        if mapped {
            let mapping = MemoryMapping {
                guest_address: self.guest_address,
                size: self.mapping.len as u64,
                host_address: self.mapping.address,
                read_only: true,
                log_dirty: false,
            };
            // SAFETY: the mapping is owned by `mapping`, which the machine keeps until after
            // the VM is gone; the range (right below the firmware code) holds no other one.
            unsafe { self.vm.map_memory(mapping) }?;
        } else {
            self.vm.unmap_memory(self.guest_address)?;
        }
        *current = mapped;
        Ok(())
    }
}

impl vivarium_devices::pflash::FlashModeListener for VarsSlot {
    fn read_array_changed(&self, read_array: bool) {
        if let Err(e) = self.set(read_array) {
            tracing::error!("the UEFI variable store could not follow its flash: {e}");
        }
    }
}

/// The UEFI variable store of a machine: the flash model (register it on the MMIO bus over
/// `guest_address..+len`) over the mapped file, its slot mapped for reading.
pub fn uefi_vars_flash(
    vm: Arc<dyn Vm>,
    mapping: Arc<VarsMapping>,
    guest_address: u64,
) -> Result<vivarium_devices::pflash::CfiFlash> {
    let slot = Arc::new(VarsSlot {
        read_only_slots: vm.read_only_memory(),
        vm,
        mapping: mapping.clone(),
        guest_address,
        mapped: Mutex::new(false),
    });
    slot.set(true)?;
    let mut flash = vivarium_devices::pflash::CfiFlash::new(
        Box::new(VarsStorage(mapping)),
        FLASH_BLOCK_SIZE,
        true,
    )
    .map_err(|e| Error::Setup(e.to_string()))?;
    flash.set_listener(slot);
    Ok(flash)
}

/// What the firmware is told over fw_cfg.
pub struct FirmwareConfig<'a> {
    /// vCPUs at boot.
    pub cpus: u32,
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// The boot order as OpenFirmware device paths (SeaBIOS's and OVMF's `bootorder`).
    pub boot_order: &'a [String],
    /// Whether to offer the boot menu.
    pub menu: bool,
    /// The ACPI tables as the table-loader hands them over.
    pub acpi: &'a crate::pc::acpi::FirmwareAcpi,
    /// Whether the machine has a display (else the firmware is told "no graphics").
    pub display: bool,
    /// Whether the firmware is OVMF (UEFI) rather than SeaBIOS.
    pub uefi: bool,
}

/// The memory map as `etc/e820` entries: RAM below the PCI hole and above 4 GiB.
fn e820(memory_size: u64) -> Vec<u8> {
    const E820_RAM: u32 = 1;
    let mut entries = Vec::new();
    for (start, len) in layout::ram_regions(memory_size) {
        entries.extend_from_slice(&start.0.to_le_bytes());
        entries.extend_from_slice(&(len as u64).to_le_bytes());
        entries.extend_from_slice(&E820_RAM.to_le_bytes());
    }
    entries
}

/// Builds the fw_cfg device of a firmware boot.
pub fn fw_cfg(memory: Arc<GuestMemoryMmap>, config: &FirmwareConfig<'_>) -> Result<FwCfg> {
    let mut device = FwCfg::new(memory);
    let cpus = u16::try_from(config.cpus)
        .map_err(|_| Error::InvalidMachine(format!("{} CPUs are too many", config.cpus)))?;
    device.set_u64(key::RAM_SIZE, config.memory_size);
    device.set_u16(key::NB_CPUS, cpus);
    device.set_u16(key::MAX_CPUS, cpus);
    device.set_u16(key::NOGRAPHIC, u16::from(!config.display));
    device.set_u16(key::BOOT_MENU, u16::from(config.menu));
    device.set_u64(key::NUMA, 0);
    let file_error = |e: vivarium_devices::fw_cfg::FwCfgError| Error::Setup(e.to_string());
    device
        .add_file("etc/e820", e820(config.memory_size))
        .map_err(file_error)?;
    let mut order = String::new();
    for path in config.boot_order {
        order.push_str(path);
        order.push('\n');
    }
    if config.uefi {
        // OVMF reads the list up to a NUL; devices it does not name stay bootable after
        // those it does (boot entries on the listed disks keep their order).
        order.push('\0');
    } else {
        // SeaBIOS stops at HALT instead of trying devices the list does not name.
        order.push_str("HALT");
    }
    device
        .add_file("bootorder", order.into_bytes())
        .map_err(file_error)?;
    // How long the boot menu waits (ms), and how long SeaBIOS waits before retrying when
    // nothing is bootable (ms): long enough to read the message, short enough to notice a
    // disc inserted meanwhile.
    let wait: u32 = if config.menu { 10_000 } else { 0 };
    device
        .add_file("etc/boot-menu-wait", wait.to_le_bytes().to_vec())
        .map_err(file_error)?;
    device
        .add_file("etc/boot-fail-wait", 5_000u32.to_le_bytes().to_vec())
        .map_err(file_error)?;
    device
        .add_file(crate::pc::acpi::FW_CFG_RSDP, config.acpi.rsdp.clone())
        .map_err(file_error)?;
    device
        .add_file(crate::pc::acpi::FW_CFG_TABLES, config.acpi.tables.clone())
        .map_err(file_error)?;
    device
        .add_file("etc/table-loader", config.acpi.loader.clone())
        .map_err(file_error)?;
    Ok(device)
}

/// The OpenFirmware path of a virtio-blk disk in PCI slot `slot` (what QEMU writes into
/// `bootorder` for one, and what SeaBIOS and OVMF match their devices against).
pub fn disk_boot_path(slot: u8) -> String {
    format!("/pci@i0cf8/scsi@{slot:x}/disk@0,0")
}

/// The OpenFirmware path of the CD-ROM (target 0, LUN 0) of the virtio-scsi controller in
/// PCI slot `slot`.
pub fn cdrom_boot_path(slot: u8) -> String {
    format!("/pci@i0cf8/scsi@{slot:x}/channel@0/disk@0,0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_odd_sized_image_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Rom::load(&dir.path().join("bios.bin")).err().unwrap();
        assert!(
            missing.to_string().contains("apt install seabios"),
            "{missing}"
        );
        for size in [0usize, 1000, 64 << 10 | 1, 32 << 20] {
            let path = dir.path().join(format!("bios-{size}.bin"));
            std::fs::write(&path, vec![0u8; size]).unwrap();
            let e = Rom::load(&path).err().unwrap();
            assert!(e.to_string().contains("multiple of 64 KiB"), "{e}");
        }
        let path = dir.path().join("good.bin");
        let mut image = vec![0u8; 256 << 10];
        image[(256 << 10) - 16] = 0xea;
        std::fs::write(&path, &image).unwrap();
        let rom = Rom::load(&path).unwrap();
        assert_eq!(rom.len(), 256 << 10);
        assert_eq!(rom.guest_address(), 0xfffc_0000);
    }

    #[test]
    fn e820_lists_ram_around_the_hole() {
        let map = e820(6 << 30);
        assert_eq!(map.len(), 40);
        assert_eq!(u64::from_le_bytes(map[8..16].try_into().unwrap()), 3 << 30);
        assert_eq!(u64::from_le_bytes(map[20..28].try_into().unwrap()), 4 << 30);
        assert_eq!(u32::from_le_bytes(map[36..40].try_into().unwrap()), 1);
    }

    #[test]
    fn boot_paths_are_what_the_firmwares_match() {
        assert_eq!(disk_boot_path(0x1a), "/pci@i0cf8/scsi@1a/disk@0,0");
        assert_eq!(cdrom_boot_path(5), "/pci@i0cf8/scsi@5/channel@0/disk@0,0");
    }
}
