//! ACPI tables for the x86_64 machine, built with the `acpi_tables` crate and written into
//! guest memory at [`layout::ACPI_START`], where Linux finds the RSDP (through
//! `boot_params.acpi_rsdp_addr`, or by scanning `0xe0000..0x100000`).
//!
//! ```text
//! RSDP (rev 2) ─► XSDT ─┬─► FACP (FADT) ─┬─► DSDT  \_S5, \_SB.PCI0, \_SB.MRES, \_SB.COM1,
//!                       │                 │         \_SB.RTC_, \_SB.PS2K, \_SB.PS2M, CPUs
//!                       │                 └─► FACS
//!                       ├─► APIC (MADT)  local APICs, IOAPIC, ISA overrides, LINT1 NMI
//!                       └─► MCFG         ECAM for segment 0, the root bus
//! ```
//!
//! The machine is not hardware-reduced: the FADT points at the PM1a event/control blocks,
//! the PM timer and the reset register of `vivarium_devices::acpi_pm::AcpiPm` on port I/O,
//! so Linux powers off through `\_S5` + `SLP_EN`, sees the fixed power button, can use the
//! `acpi_pm` clocksource and reboots through the reset register.
//!
//! The SCI is ISA IRQ [`SCI_IRQ`], declared **edge-triggered, active-high** in the MADT.
//! The device raises it through an irqfd without a resample fd, which pulses the GSI
//! (assert, then deassert at once). On a level-triggered IOAPIC pin, KVM ignores a pulse
//! that arrives while the previous SCI is still in service (Remote IRR set), so an event
//! could be lost; an edge-triggered pin latches every pulse. The device pulses on every
//! new pending event (see `AcpiPm`), which is exactly what an edge-triggered SCI needs.

use std::ops::Range;

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt, Memory32Fixed,
    Name, Package, Path, ResourceTemplate, Scope,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vivarium_devices::GuestMemoryMmap;
use vivarium_devices::acpi_pm::{
    AcpiPmPorts, PM_TMR_LEN, PM1_CNT_LEN, PM1_EVT_LEN, RESET_VALUE, SLP_TYP_S5,
};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result};
use crate::pc::layout;

/// The ISA IRQ (and IOAPIC GSI) of the SCI. Wire the `AcpiPm` device's interrupt line to
/// this GSI.
pub const SCI_IRQ: u32 = 9;
/// The most vCPUs the tables describe: xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_CPUS: u32 = 255;

/// The OEM id in every table header.
const OEM_ID: [u8; 6] = *b"VIVARI";
/// The OEM table id in every table header.
const OEM_TABLE_ID: [u8; 8] = *b"VIVARIUM";
/// The OEM revision in every table header.
const OEM_REVISION: u32 = 1;
/// The tables must stay below the end of the BIOS area.
const ACPI_END: u64 = 0x10_0000;
/// Alignment of each table in the blob (the RSDP needs 16, the FACS 64).
const TABLE_ALIGN: usize = 16;
const FACS_ALIGN: usize = 64;

/// COM1, as the legacy device wiring places it.
const COM1_PORT: u16 = 0x3f8;
const COM1_IRQ: u32 = 4;
/// The CMOS real-time clock's ports and interrupt (the ISA PC's).
const RTC_PORT: u16 = 0x70;
const RTC_IRQ: u32 = 8;

/// The i8042 (PS/2 controller), as the legacy device wiring places it.
const I8042_DATA_PORT: u16 = 0x60;
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_KEYBOARD_IRQ: u32 = 1;
const I8042_MOUSE_IRQ: u32 = 12;

/// MADT interrupt source override flags: polarity active-high (01), trigger edge (01 << 2).
const MPS_INTI_EDGE_HIGH: u16 = 0b01 | (0b01 << 2);
/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip does).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT IA-PC boot architecture flags: legacy (ISA) devices present, 8042 present (the
/// DSDT's PS2K/PS2M describe it), ASPM must not be enabled by the OS.
/// `MSI_NOT_SUPPORTED` is clear: virtio-pci uses MSI-X.
const IAPC_8042: u16 = 1 << 1;
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_PCIE_ASPM_CONTROLS: u16 = 1 << 4;

/// ACPI tables laid out for a guest physical address: the bytes to copy there and where
/// the RSDP is.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// The tables, to be written at [`AcpiTables::start`].
    pub bytes: Vec<u8>,
    /// Where `bytes` belong in guest memory; the RSDP is the first structure.
    pub start: GuestAddress,
}

impl AcpiTables {
    /// The RSDP's guest address (what `boot_params.acpi_rsdp_addr` gets).
    pub fn rsdp(&self) -> GuestAddress {
        self.start
    }
}

/// Builds the tables for `cpus` vCPUs (local APIC ids `0..cpus`), the PM device at `pm`,
/// and a PCI host bridge whose 64-bit MMIO window is `mmio64` (empty: none), and writes
/// them at [`layout::ACPI_START`]. Returns the RSDP's address.
///
/// The backend calls it after building guest memory and before loading the kernel:
///
/// ```ignore
/// let mmio64 = layout::mmio64_start(size)..layout::mmio64_start(size) + layout::PCI_MMIO64_SIZE;
/// let rsdp = acpi::write_acpi_tables(&memory, cpus, &AcpiPmPorts::STANDARD, mmio64)?;
/// // boot_params.acpi_rsdp_addr = rsdp
/// ```
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    cpus: u32,
    pm: &AcpiPmPorts,
    mmio64: Range<u64>,
) -> Result<GuestAddress> {
    let tables = build_acpi_tables(cpus, pm, mmio64, layout::ACPI_START)?;
    mem.write_slice(&tables.bytes, tables.start)
        .map_err(|e| Error::Setup(format!("could not write the ACPI tables: {e}")))?;
    Ok(tables.rsdp())
}

/// Builds the tables for a blob placed at `start` (16-byte aligned) without touching
/// guest memory. See [`write_acpi_tables`] for the parameters.
pub fn build_acpi_tables(
    cpus: u32,
    pm: &AcpiPmPorts,
    mmio64: Range<u64>,
    start: GuestAddress,
) -> Result<AcpiTables> {
    let pci = PciLayout {
        mmio32: layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE,
        mmio64,
        ecam: true,
    };
    Ok(lay_out(cpus, pm, &pci, start)?.0)
}

/// How the PCI host bridge the tables describe is set up.
#[derive(Clone, Debug)]
pub struct PciLayout {
    /// The 32-bit MMIO window.
    pub mmio32: Range<u64>,
    /// The 64-bit MMIO window (empty: none).
    pub mmio64: Range<u64>,
    /// Whether the machine has the ECAM at `layout::PCI_ECAM_START` (then an MCFG describes
    /// it); a firmware-booted i440FX machine has none and uses ports 0xcf8/0xcfc only.
    pub ecam: bool,
}

/// Where each table went in the blob (guest addresses).
struct TableAddresses {
    facs: u64,
    dsdt: u64,
    fadt: u64,
    madt: u64,
    mcfg: Option<u64>,
    xsdt: u64,
}

fn lay_out(
    cpus: u32,
    pm: &AcpiPmPorts,
    pci: &PciLayout,
    start: GuestAddress,
) -> Result<(AcpiTables, TableAddresses)> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::InvalidMachine(format!(
            "ACPI describes 1 to {MAX_CPUS} vCPUs, not {cpus}"
        )));
    }
    for (name, window) in [("32-bit", &pci.mmio32), ("64-bit", &pci.mmio64)] {
        if window.start > window.end {
            return Err(Error::InvalidMachine(format!(
                "invalid {name} PCI window {:#x}..{:#x}",
                window.start, window.end
            )));
        }
    }
    if pci.mmio32.end > 1 << 32 {
        return Err(Error::InvalidMachine(format!(
            "the 32-bit PCI window ends above 4 GiB ({:#x})",
            pci.mmio32.end
        )));
    }
    if !start.0.is_multiple_of(TABLE_ALIGN as u64) || start.0 >= ACPI_END {
        return Err(Error::Setup(format!(
            "the ACPI tables need a 16-byte aligned address below {ACPI_END:#x}, not {:#x}",
            start.0
        )));
    }

    let mut blob = Blob::new(start.0);
    // The RSDP goes first so that the address is both the one we pass and the one a scan
    // of the BIOS area finds; its contents are filled in last.
    let rsdp_offset = blob.reserve(Rsdp::len(), TABLE_ALIGN);
    let facs = blob.push(&aml_bytes(&FACS::new()), FACS_ALIGN)?;
    let dsdt = blob.push(&dsdt(cpus, pci), TABLE_ALIGN)?;
    let fadt = blob.push(&fadt(pm, dsdt, facs), TABLE_ALIGN)?;
    let madt = blob.push(madt(cpus).as_slice(), TABLE_ALIGN)?;
    let mcfg = pci
        .ecam
        .then(|| blob.push(&mcfg(), TABLE_ALIGN))
        .transpose()?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for table in [Some(fadt), Some(madt), mcfg].into_iter().flatten() {
        xsdt.add_entry(table);
    }
    let xsdt = blob.push(&aml_bytes(&xsdt), TABLE_ALIGN)?;
    blob.fill(rsdp_offset, &aml_bytes(&Rsdp::new(OEM_ID, xsdt)));

    Ok((
        AcpiTables {
            bytes: blob.bytes,
            start,
        },
        TableAddresses {
            facs,
            dsdt,
            fadt,
            madt,
            mcfg,
            xsdt,
        },
    ))
}

/// The fw_cfg file the RSDP goes in (placed by the firmware in the F segment).
pub const FW_CFG_RSDP: &str = "etc/acpi/rsdp";
/// The fw_cfg file the other tables go in (placed by the firmware in high memory).
pub const FW_CFG_TABLES: &str = "etc/acpi/tables";

/// The ACPI tables of a firmware boot as fw_cfg files: the firmware places them where it
/// likes and links them as `loader` says (see `vivarium_devices::fw_cfg::loader`).
#[derive(Clone, Debug)]
pub struct FirmwareAcpi {
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// `etc/table-loader`.
    pub loader: Vec<u8>,
}

/// Builds the tables of a firmware-booted machine: laid out as if at address 0, so every
/// pointer holds its target's offset, with a table-loader script that allocates the two
/// files, adds the tables file's address to each pointer and fixes every checksum.
pub fn build_firmware_acpi(cpus: u32, pm: &AcpiPmPorts, pci: &PciLayout) -> Result<FirmwareAcpi> {
    use vivarium_devices::fw_cfg::loader::{TableLoader, Zone};
    let (tables, at) = lay_out(cpus, pm, pci, GuestAddress(0))?;
    let blob = tables.bytes;
    let rsdp_len = Rsdp::len();
    let rsdp = blob[..rsdp_len].to_vec();
    // The tables file is the whole blob: its first bytes (where the RSDP was laid out) stay
    // unused, which keeps every offset the same.
    let mut tables = blob;
    tables[..rsdp_len].fill(0);
    let loader_error = |e: vivarium_devices::fw_cfg::FwCfgError| Error::Setup(e.to_string());
    let mut loader = TableLoader::new();
    loader
        .allocate(FW_CFG_RSDP, 16, Zone::FSegment)
        .map_err(loader_error)?;
    loader
        .allocate(FW_CFG_TABLES, FACS_ALIGN as u32, Zone::High)
        .map_err(loader_error)?;
    let u32_at = |b: &[u8], at: u64| {
        u32::from_le_bytes(b[at as usize..at as usize + 4].try_into().expect("4"))
    };
    let u64_at = |b: &[u8], at: u64| {
        u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().expect("8"))
    };
    // Pointers inside the tables file: the FADT's FACS and DSDT (32- and 64-bit fields, where
    // set) and the XSDT's entries.
    let mut pointers: Vec<(u64, u8)> = Vec::new();
    for (field, size) in [(36u64, 4u8), (40, 4), (132, 8), (140, 8)] {
        let value = if size == 4 {
            u64::from(u32_at(&tables, at.fadt + field))
        } else {
            u64_at(&tables, at.fadt + field)
        };
        if value != 0 {
            pointers.push((at.fadt + field, size));
        }
    }
    let xsdt_len = u64::from(u32_at(&tables, at.xsdt + 4));
    for entry in (at.xsdt + 36..at.xsdt + xsdt_len).step_by(8) {
        pointers.push((entry, 8));
    }
    for (offset, size) in pointers {
        loader
            .add_pointer(FW_CFG_TABLES, FW_CFG_TABLES, offset as u32, size)
            .map_err(loader_error)?;
    }
    for table in [
        Some(at.dsdt),
        Some(at.fadt),
        Some(at.madt),
        at.mcfg,
        Some(at.xsdt),
    ]
    .into_iter()
    .flatten()
    {
        let len = u32_at(&tables, table + 4);
        loader
            .add_checksum(FW_CFG_TABLES, table as u32 + 9, table as u32, len)
            .map_err(loader_error)?;
    }
    let _ = at.facs;
    // The RSDP: its 32-bit RSDT field stays 0 (there is no RSDT); the XSDT address.
    if u32_at(&rsdp, 16) != 0 {
        loader
            .add_pointer(FW_CFG_RSDP, FW_CFG_TABLES, 16, 4)
            .map_err(loader_error)?;
    }
    loader
        .add_pointer(FW_CFG_RSDP, FW_CFG_TABLES, 24, 8)
        .map_err(loader_error)?;
    loader
        .add_checksum(FW_CFG_RSDP, 8, 0, 20)
        .map_err(loader_error)?;
    loader
        .add_checksum(FW_CFG_RSDP, 32, 0, rsdp_len as u32)
        .map_err(loader_error)?;
    Ok(FirmwareAcpi {
        rsdp,
        tables,
        loader: loader.into_bytes(),
    })
}

/// The tables being laid out from a guest address.
struct Blob {
    start: u64,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(start: u64) -> Self {
        Blob {
            start,
            bytes: Vec::new(),
        }
    }

    /// Pads so that the next byte's guest address is a multiple of `align`, then reserves
    /// `len` zero bytes; returns their offset in the blob.
    fn reserve(&mut self, len: usize, align: usize) -> usize {
        let addr = self.start + self.bytes.len() as u64;
        let pad = (addr.next_multiple_of(align as u64) - addr) as usize;
        self.bytes.resize(self.bytes.len() + pad, 0);
        let offset = self.bytes.len();
        self.bytes.resize(offset + len, 0);
        offset
    }

    /// Appends `table` at the next `align`-aligned address and returns that address.
    fn push(&mut self, table: &[u8], align: usize) -> Result<u64> {
        let offset = self.reserve(table.len(), align);
        self.fill(offset, table);
        let end = self.start + self.bytes.len() as u64;
        if end > ACPI_END {
            return Err(Error::Setup(format!(
                "the ACPI tables do not fit below {ACPI_END:#x} ({end:#x})"
            )));
        }
        Ok(self.start + offset as u64)
    }

    fn fill(&mut self, offset: usize, data: &[u8]) {
        self.bytes[offset..offset + data.len()].copy_from_slice(data);
    }
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

fn io_gas(port: u16, len: u8, access: AccessSize) -> GAS {
    GAS::new(GasSpace::SystemIo, len * 8, 0, access, u64::from(port))
}

/// The FADT: PM1a event/control blocks, PM timer and reset register on port I/O, the SCI,
/// the fixed power button, no sleep button, no GPE block, no SMI command port (always in
/// ACPI mode).
fn fadt(pm: &AcpiPmPorts, dsdt: u64, facs: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt)
        .firmware_ctrl_64(facs)
        .preferred_pm_profile(PmProfile::Desktop)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        // No fixed sleep button; the power button is fixed hardware (its flag stays 0).
        .flag(Flags::SlpButton)
        // RTC wake status is not in the fixed registers.
        .flag(Flags::FixRtc)
        .flag(Flags::TmrValExt)
        .flag(Flags::ResetRegSup);
    f.sci_int = (SCI_IRQ as u16).into();
    f.pm1a_evt_blk = u32::from(pm.pm1a_evt()).into();
    f.pm1a_cnt_blk = u32::from(pm.pm1a_cnt()).into();
    f.pm_tmr_blk = u32::from(pm.pm_tmr()).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.x_pm1a_evt_blk = io_gas(pm.pm1a_evt(), PM1_EVT_LEN, AccessSize::WordAccess);
    f.x_pm1a_cnt_blk = io_gas(pm.pm1a_cnt(), PM1_CNT_LEN, AccessSize::WordAccess);
    f.x_pm_tmr_blk = io_gas(pm.pm_tmr(), PM_TMR_LEN, AccessSize::DwordAccess);
    // C2 and C3 are not supported (latencies above 100 and 1000 us).
    f.p_lvl2_lat = 101.into();
    f.p_lvl3_lat = 1001.into();
    // The 8042 flag goes with the DSDT's PS/2 keyboard (PNP0303) and mouse (PNP0F13), which
    // is how Linux finds the controller; with the flag and no PNP0303 it would probe the
    // ports by hand.
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_PCIE_ASPM_CONTROLS).into();
    f.century = vivarium_devices::rtc::CENTURY;
    f.reset_reg = io_gas(pm.reset(), 1, AccessSize::ByteAccess);
    f.reset_value = RESET_VALUE;
    aml_bytes(&f.finalize())
}

/// The MADT: one enabled local APIC per vCPU (processor UID = APIC id = index), the IOAPIC,
/// the PC's ISA overrides (PIT IRQ 0 on GSI 2; the SCI edge/active-high) and LINT1 as NMI.
fn madt(cpus: u32) -> Sdt {
    // Header (36 bytes), local APIC address, flags.
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, layout::LAPIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..cpus {
        // `cpus <= MAX_CPUS` was checked: ids fit in a byte.
        let id = id as u8;
        madt.append_slice(&aml_bytes(&ProcessorLocalApic::new(
            id,
            id,
            EnabledStatus::Enabled,
        )));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(0, layout::IOAPIC_START as u32, 0)));
    madt.append_slice(&interrupt_source_override(0, 2, 0));
    madt.append_slice(&interrupt_source_override(
        SCI_IRQ as u8,
        SCI_IRQ,
        MPS_INTI_EDGE_HIGH,
    ));
    madt.append_slice(&local_apic_nmi());
    madt
}

/// MADT structure type 2: ISA `source` IRQ is wired to `gsi` with MPS INTI `flags`.
fn interrupt_source_override(source: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut s = [0u8; 10];
    s[0] = 2; // type
    s[1] = 10; // length
    s[2] = 0; // bus: ISA
    s[3] = source;
    s[4..8].copy_from_slice(&gsi.to_le_bytes());
    s[8..10].copy_from_slice(&flags.to_le_bytes());
    s
}

/// MADT structure type 4: LINT1 of every processor (UID 0xff) is the NMI input.
fn local_apic_nmi() -> [u8; 6] {
    let flags: u16 = 0; // conforms to the bus
    let [f0, f1] = flags.to_le_bytes();
    [4, 6, 0xff, f0, f1, 1]
}

/// The MCFG: the ECAM window for PCI segment 0, the root bus (no bridges).
fn mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, layout::PCI_LAST_BUS);
    aml_bytes(&mcfg)
}

/// The DSDT: the S5 sleep state, the PCI host bridge and its windows, the ECAM as a
/// motherboard resource (Linux only trusts an MCFG area that is reserved somewhere), COM1,
/// the real-time clock, the PS/2 keyboard and mouse, and a processor device per vCPU.
fn dsdt(cpus: u32, pci: &PciLayout) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let s5 = SLP_TYP_S5;
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&s5, &s5, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let pci0 = pci_host_bridge(pci);
    let mres = motherboard_resources();
    let com1 = com1();
    let rtc = rtc();
    let [ps2_keyboard, ps2_mouse] = ps2_devices();
    let cpu_devices: Vec<RawBytes> = (0..cpus).map(cpu_device).collect();
    let mut children: Vec<&dyn Aml> = vec![&pci0];
    if pci.ecam {
        children.push(&mres);
    }
    children.extend([&com1 as &dyn Aml, &rtc, &ps2_keyboard, &ps2_mouse]);
    children.extend(cpu_devices.iter().map(|c| c as &dyn Aml));
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut body);

    // DSDT revision 2: integers are 64 bits (the 64-bit window needs them).
    let mut table = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// `\_SB.PCI0`: a PCI Express host bridge (ECAM via MCFG) for segment 0, the root bus, the
/// legacy config ports, all I/O ports outside them, the 32-bit window and the 64-bit one.
fn pci_host_bridge(pci: &PciLayout) -> RawBytes {
    let mmio64 = &pci.mmio64;
    let bus_numbers = AddressSpace::<u16>::new_bus_number(0, layout::PCI_LAST_BUS.into());
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0x0000, 0x0cf7, None);
    let io_high = AddressSpace::<u16>::new_io(0x0d00, 0xffff, None);
    // Checked in `lay_out`: the window ends at or below 4 GiB.
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        pci.mmio32.start as u32,
        (pci.mmio32.end - 1) as u32,
        None,
    );
    // `mmio64.start <= mmio64.end` was checked; an empty range means no window.
    let mmio64 = (mmio64.start < mmio64.end).then(|| {
        AddressSpace::<u64>::new_memory(
            AddressSpaceCacheable::NotCacheable,
            true,
            mmio64.start,
            mmio64.end - 1,
            None,
        )
    });
    let mut resources: Vec<&dyn Aml> =
        vec![&bus_numbers, &config_ports, &io_low, &io_high, &mmio32];
    if let Some(window) = &mmio64 {
        resources.push(window);
    }
    let crs = ResourceTemplate::new(resources);
    // PCI Express (PNP0A08, ECAM through the MCFG) or conventional PCI (PNP0A03) only.
    let hid = EISAName::new(if pci.ecam { "PNP0A08" } else { "PNP0A03" });
    let cid = EISAName::new("PNP0A03");
    RawBytes(aml_bytes(&Device::new(
        Path::new("PCI0"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CID"), &cid),
            &Name::new(Path::new("_ADR"), &aml::ZERO),
            &Name::new(Path::new("_SEG"), &aml::ZERO),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_BBN"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// `\_SB.MRES`: motherboard resources (PNP0C02) reserving the ECAM window, so that Linux
/// accepts the MCFG area.
fn motherboard_resources() -> RawBytes {
    let ecam = Memory32Fixed::new(
        true,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let crs = ResourceTemplate::new(vec![&ecam]);
    let hid = EISAName::new("PNP0C02");
    RawBytes(aml_bytes(&Device::new(
        Path::new("MRES"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &aml::ZERO),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// `\_SB.COM1`: the 16550 at 0x3f8, IRQ 4 (edge, active-high).
fn com1() -> RawBytes {
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = ResourceTemplate::new(vec![&ports, &irq]);
    let hid = EISAName::new("PNP0501");
    RawBytes(aml_bytes(&Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &aml::ONE),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// `\_SB.RTC_`: the CMOS real-time clock at 0x70, IRQ 8 (edge, active-high). Declaring it
/// lets Linux's `rtc_cmos` bind through ACPI instead of guessing at the ports.
fn rtc() -> RawBytes {
    let ports = IO::new(RTC_PORT, RTC_PORT, 1, 2);
    let irq = Interrupt::new(true, true, false, false, RTC_IRQ);
    let crs = ResourceTemplate::new(vec![&ports, &irq]);
    let hid = EISAName::new("PNP0B00");
    RawBytes(aml_bytes(&Device::new(
        Path::new("RTC_"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )))
}

/// `\_SB.PS2K` and `\_SB.PS2M`: the i8042's PS/2 keyboard (PNP0303: data port 0x60,
/// command port 0x64, IRQ 1) and PS/2 mouse (PNP0F13: IRQ 12), so that Linux finds the
/// controller through ACPI PnP rather than by probing ports. Both interrupts are ISA
/// edge-triggered, active-high, exclusive.
fn ps2_devices() -> [RawBytes; 2] {
    let data = IO::new(I8042_DATA_PORT, I8042_DATA_PORT, 1, 1);
    let command = IO::new(I8042_COMMAND_PORT, I8042_COMMAND_PORT, 1, 1);
    let keyboard_irq = Interrupt::new(true, true, false, false, I8042_KEYBOARD_IRQ);
    let keyboard_crs = ResourceTemplate::new(vec![&data, &command, &keyboard_irq]);
    let keyboard_hid = EISAName::new("PNP0303");
    let keyboard = RawBytes(aml_bytes(&Device::new(
        Path::new("PS2K"),
        vec![
            &Name::new(Path::new("_HID"), &keyboard_hid),
            &Name::new(Path::new("_CRS"), &keyboard_crs),
        ],
    )));
    let mouse_irq = Interrupt::new(true, true, false, false, I8042_MOUSE_IRQ);
    let mouse_crs = ResourceTemplate::new(vec![&mouse_irq]);
    let mouse_hid = EISAName::new("PNP0F13");
    let mouse = RawBytes(aml_bytes(&Device::new(
        Path::new("PS2M"),
        vec![
            &Name::new(Path::new("_HID"), &mouse_hid),
            &Name::new(Path::new("_CRS"), &mouse_crs),
        ],
    )));
    [keyboard, mouse]
}

/// `\_SB.Cxxx`: processor device `index` (ACPI0007), whose `_UID` matches the MADT's
/// processor UID.
fn cpu_device(index: u32) -> RawBytes {
    let name = format!("C{index:03X}");
    RawBytes(aml_bytes(&Device::new(
        Path::new(&name),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0007"),
            &Name::new(Path::new("_UID"), &index),
        ],
    )))
}

/// An owned, already-encoded AML object.
struct RawBytes(Vec<u8>);

impl Aml for RawBytes {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MMIO64: Range<u64> = (1 << 36)..(2 << 36);

    fn build(cpus: u32) -> AcpiTables {
        build_acpi_tables(cpus, &AcpiPmPorts::STANDARD, MMIO64, layout::ACPI_START).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// A parsed view of the blob, checking every structure on the way.
    struct Parsed<'a> {
        tables: &'a AcpiTables,
        xsdt_entries: Vec<u64>,
    }

    impl<'a> Parsed<'a> {
        fn new(tables: &'a AcpiTables) -> Self {
            let b = &tables.bytes;
            assert_eq!(tables.rsdp().0 % 16, 0, "RSDP is 16-byte aligned");
            assert_eq!(&b[0..8], b"RSD PTR ");
            assert_eq!(b[15], 2, "RSDP revision");
            assert_eq!(sum(&b[0..20]), 0, "RSDP v1 checksum");
            assert_eq!(u32_at(b, 20), 36, "RSDP length");
            assert_eq!(sum(&b[0..36]), 0, "RSDP extended checksum");
            let mut parsed = Parsed {
                tables,
                xsdt_entries: Vec::new(),
            };
            let xsdt = parsed.table(u64_at(b, 24), b"XSDT");
            assert_eq!((xsdt.len() - 36) % 8, 0);
            parsed.xsdt_entries = (36..xsdt.len())
                .step_by(8)
                .map(|o| u64_at(xsdt, o))
                .collect();
            parsed
        }

        /// The table at guest address `addr`, checked: signature, length inside the blob,
        /// checksum.
        fn table(&self, addr: u64, signature: &[u8; 4]) -> &'a [u8] {
            let b = &self.tables.bytes;
            let offset = addr
                .checked_sub(self.tables.start.0)
                .unwrap_or_else(|| panic!("{addr:#x} is below the blob"))
                as usize;
            assert!(
                offset + 36 <= b.len(),
                "{addr:#x} header is outside the blob"
            );
            assert_eq!(&b[offset..offset + 4], signature);
            let len = u32_at(b, offset + 4) as usize;
            assert!(offset + len <= b.len(), "{signature:?} runs past the blob");
            let table = &b[offset..offset + len];
            assert_eq!(
                sum(table),
                0,
                "{} checksum",
                String::from_utf8_lossy(signature)
            );
            table
        }

        /// The XSDT entry with `signature` (exactly one).
        fn find(&self, signature: &[u8; 4]) -> &'a [u8] {
            let b = &self.tables.bytes;
            let hits: Vec<u64> = self
                .xsdt_entries
                .iter()
                .copied()
                .filter(|&a| {
                    let o = (a - self.tables.start.0) as usize;
                    &b[o..o + 4] == signature
                })
                .collect();
            assert_eq!(hits.len(), 1, "{signature:?} in the XSDT");
            self.table(hits[0], signature)
        }

        fn dsdt(&self) -> &'a [u8] {
            let fadt = self.find(b"FACP");
            assert_eq!(
                u32_at(fadt, 40),
                0,
                "32-bit DSDT is zero when X_DSDT is set"
            );
            self.table(u64_at(fadt, 140), b"DSDT")
        }
    }

    #[test]
    fn xsdt_points_at_every_table_with_good_checksums() {
        let tables = build(4);
        let p = Parsed::new(&tables);
        assert_eq!(p.xsdt_entries.len(), 3);
        for sig in [b"FACP", b"APIC", b"MCFG"] {
            let t = p.find(sig);
            assert_eq!(&t[10..16], &OEM_ID);
        }
        let dsdt = p.dsdt();
        assert_eq!(dsdt[8], 2, "DSDT revision 2 (64-bit integers)");
        assert!(tables.start.0 + tables.bytes.len() as u64 <= ACPI_END);
    }

    #[test]
    fn fadt_describes_the_pm_device() {
        let tables = build(1);
        let p = Parsed::new(&tables);
        let f = p.find(b"FACP");
        assert_eq!(f.len(), 276, "ACPI 6 FADT");
        let pm = AcpiPmPorts::STANDARD;
        // FACS: 64-byte aligned, signature, 32-bit pointer zero.
        assert_eq!(u32_at(f, 36), 0);
        let facs = u64_at(f, 132);
        assert_eq!(facs % 64, 0);
        let o = (facs - tables.start.0) as usize;
        assert_eq!(&tables.bytes[o..o + 4], b"FACS");
        assert_eq!(u16_at(f, 46), SCI_IRQ as u16, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "no SMI_CMD: always in ACPI mode");
        assert_eq!(u32_at(f, 56), u32::from(pm.pm1a_evt()));
        assert_eq!(u32_at(f, 64), u32::from(pm.pm1a_cnt()));
        assert_eq!(u32_at(f, 76), u32::from(pm.pm_tmr()));
        assert_eq!(u32_at(f, 80), 0, "no GPE0 block");
        assert_eq!(
            (f[88], f[89], f[91]),
            (4, 2, 4),
            "PM1_EVT/CNT, PM_TMR lengths"
        );
        let flags = u32_at(f, 112);
        assert_eq!(flags & Flags::PwrButton as u32, 0, "fixed power button");
        assert_ne!(flags & Flags::SlpButton as u32, 0, "no fixed sleep button");
        assert_ne!(flags & Flags::TmrValExt as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        assert_eq!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_eq!(u16_at(f, 109) & (1 << 3), 0, "MSI is supported");
        assert_ne!(
            u16_at(f, 109) & IAPC_8042,
            0,
            "an 8042, described in the DSDT"
        );
        // RESET_REG: system I/O, 8 bits, offset 0, at the device's reset port.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), u64::from(pm.reset()));
        assert_eq!(f[128], RESET_VALUE);
        // X_PM1a_EVT_BLK, X_PM1a_CNT_BLK, X_PM_TMR_BLK: system I/O GAS matching the 32-bit
        // fields and lengths.
        for (at, port, bits) in [
            (148, pm.pm1a_evt(), 32),
            (172, pm.pm1a_cnt(), 16),
            (208, pm.pm_tmr(), 32),
        ] {
            assert_eq!((f[at], f[at + 1], f[at + 2]), (1, bits, 0), "GAS at {at}");
            assert_eq!(u64_at(f, at + 4), u64::from(port));
        }
    }

    #[test]
    fn madt_has_one_local_apic_per_cpu_and_the_overrides() {
        for cpus in [1, 2, 7, MAX_CPUS] {
            let tables = build(cpus);
            let p = Parsed::new(&tables);
            let m = p.find(b"APIC");
            assert_eq!(u32_at(m, 36), layout::LAPIC_START as u32);
            assert_eq!(u32_at(m, 40), MADT_PCAT_COMPAT);
            let mut apic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut overrides = Vec::new();
            let mut nmis = 0;
            let mut at = 44;
            while at < m.len() {
                let (kind, len) = (m[at], m[at + 1] as usize);
                assert!(len >= 2 && at + len <= m.len(), "structure at {at}");
                let s = &m[at..at + len];
                match kind {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(s[2], s[3], "processor UID = APIC id");
                        assert_eq!(u32_at(s, 4), 1, "enabled");
                        apic_ids.push(u32::from(s[3]));
                    }
                    1 => ioapics.push((s[2], u32_at(s, 4), u32_at(s, 8))),
                    2 => overrides.push((s[3], u32_at(s, 4), u16_at(s, 8))),
                    4 => {
                        assert_eq!(s, &[4, 6, 0xff, 0, 0, 1]);
                        nmis += 1;
                    }
                    other => panic!("unexpected MADT structure {other}"),
                }
                at += len;
            }
            assert_eq!(apic_ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(0, layout::IOAPIC_START as u32, 0)]);
            assert_eq!(
                overrides,
                vec![(0, 2, 0), (SCI_IRQ as u8, SCI_IRQ, MPS_INTI_EDGE_HIGH)]
            );
            assert_eq!(nmis, 1);
        }
    }

    #[test]
    fn mcfg_describes_the_ecam() {
        let tables = build(2);
        let p = Parsed::new(&tables);
        let m = p.find(b"MCFG");
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(u64_at(m, 44), layout::PCI_ECAM_START);
        assert_eq!(u16_at(m, 52), 0, "segment");
        assert_eq!((m[54], m[55]), (0, layout::PCI_LAST_BUS), "buses");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn dsdt_has_s5_pci0_and_cpus() {
        let tables = build(3);
        let p = Parsed::new(&tables);
        let d = p.dsdt();
        // Name(\_S5_, Package(4) { 5, 5, 0, 0 })
        let s5 = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x08, 0x04, 0x0a, SLP_TYP_S5, 0x0a,
            SLP_TYP_S5, 0x00, 0x00,
        ];
        assert!(contains(d, &s5), "\\_S5 package");
        for name in [
            &b"PCI0"[..],
            b"MRES",
            b"COM1",
            b"PS2K",
            b"PS2M",
            b"C000",
            b"C002",
            b"ACPI0007",
        ] {
            assert!(contains(d, name), "{}", String::from_utf8_lossy(name));
        }
        assert!(!contains(d, b"C003"));
        // EISAID("PNP0A08") = 0x080ad041 little-endian, after a DWord prefix.
        assert!(contains(d, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        // The PS/2 keyboard (PNP0303) with IO(Decode16, 0x60/0x64, align 1, length 1) and
        // the mouse (PNP0F13) with an edge, active-high, exclusive consumer IRQ 12.
        assert!(contains(d, &[0x0c, 0x41, 0xd0, 0x03, 0x03]));
        assert!(contains(
            d,
            &[0x47, 0x01, 0x60, 0x00, 0x60, 0x00, 0x01, 0x01]
        ));
        assert!(contains(
            d,
            &[0x47, 0x01, 0x64, 0x00, 0x64, 0x00, 0x01, 0x01]
        ));
        assert!(contains(d, &[0x0c, 0x41, 0xd0, 0x0f, 0x13]));
        assert!(contains(d, &[0x89, 0x06, 0x00, 0x03, 0x01, 12, 0, 0, 0]));
        assert!(contains(d, &[0x89, 0x06, 0x00, 0x03, 0x01, 1, 0, 0, 0]));
        // The 64-bit window: QWord address space descriptor with min and max.
        let mut qword = Vec::new();
        qword.extend_from_slice(&MMIO64.start.to_le_bytes());
        qword.extend_from_slice(&(MMIO64.end - 1).to_le_bytes());
        assert!(contains(d, &qword));
    }

    #[test]
    fn no_64_bit_window_when_empty() {
        let with = build(1);
        let without =
            build_acpi_tables(1, &AcpiPmPorts::STANDARD, 0..0, layout::ACPI_START).unwrap();
        let d_with = Parsed::new(&with).dsdt().len();
        let d_without = Parsed::new(&without).dsdt().len();
        assert_eq!(d_with - d_without, 46, "one QWord descriptor less");
    }

    #[test]
    fn firmware_tables_link_up_wherever_the_firmware_puts_them() {
        use vivarium_devices::fw_cfg::loader::{Zone, run_script};
        let pci = PciLayout {
            mmio32: 0x8000_0000..0xfec0_0000,
            mmio64: MMIO64,
            ecam: false,
        };
        let acpi = build_firmware_acpi(2, &AcpiPmPorts::STANDARD, &pci).unwrap();
        let files = |name: &str| match name {
            FW_CFG_RSDP => Some(acpi.rsdp.clone()),
            FW_CFG_TABLES => Some(acpi.tables.clone()),
            _ => None,
        };
        const HIGH: u64 = 0x7ff_0000;
        let mut place = |_: &str, _: u32, zone: Zone, _: usize| match zone {
            Zone::FSegment => 0xf_5a00,
            Zone::High => HIGH,
        };
        let placed = run_script(&acpi.loader, &files, &mut place).unwrap();
        let rsdp = &placed[0].2;
        let tables = &placed[1].2;
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(&rsdp[..36]), 0);
        let at = |address: u64| (address - HIGH) as usize;
        let table = |address: u64| {
            let start = at(address);
            let len = u32_at(tables, start + 4) as usize;
            let t = &tables[start..start + len];
            assert_eq!(sum(t), 0, "checksum of {:?}", std::str::from_utf8(&t[..4]));
            t
        };
        let xsdt = table(u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let signatures: Vec<&[u8]> = (36..xsdt.len())
            .step_by(8)
            .map(|e| &table(u64_at(xsdt, e))[..4])
            .collect();
        assert_eq!(signatures, [b"FACP", b"APIC"], "no MCFG without an ECAM");
        let fadt = table(u64_at(xsdt, 36));
        let dsdt = table(u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        let facs = u64_at(fadt, 132);
        assert_eq!(&tables[at(facs)..at(facs) + 4], b"FACS");
        assert!(facs.is_multiple_of(64));
        assert!(contains(dsdt, b"PCI0"));
        assert!(!contains(dsdt, b"MRES"));
    }

    #[test]
    fn refuses_bad_parameters() {
        let pm = AcpiPmPorts::STANDARD;
        for cpus in [0, MAX_CPUS + 1] {
            assert!(build_acpi_tables(cpus, &pm, MMIO64, layout::ACPI_START).is_err());
        }
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 10..5;
        assert!(build_acpi_tables(1, &pm, reversed, layout::ACPI_START).is_err());
        assert!(build_acpi_tables(1, &pm, MMIO64, GuestAddress(0xe0008)).is_err());
        // Too close to the end of the BIOS area to fit.
        assert!(build_acpi_tables(1, &pm, MMIO64, GuestAddress(ACPI_END - 0x100)).is_err());
        assert!(build_acpi_tables(1, &pm, MMIO64, GuestAddress(u64::MAX - 15)).is_err());
    }

    #[test]
    fn written_into_guest_memory_at_acpi_start() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let rsdp = write_acpi_tables(&mem, 2, &AcpiPmPorts::STANDARD, MMIO64).unwrap();
        assert_eq!(rsdp, layout::ACPI_START);
        let expected = build(2);
        let mut back = vec![0u8; expected.bytes.len()];
        mem.read_slice(&mut back, rsdp).unwrap();
        assert_eq!(back, expected.bytes);
        // Linux's scan of the BIOS area: "RSD PTR " on a 16-byte boundary in 0xe0000..0x100000.
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(0xe0000)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");

        let tiny = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(write_acpi_tables(&tiny, 1, &AcpiPmPorts::STANDARD, MMIO64).is_err());
    }

    /// Disassembles every table with ACPICA's `iasl`, which checks the AML and the table
    /// layouts far more thoroughly than the parsing above. `VIVARIUM_ACPI_DUMP=1` prints
    /// the disassembly.
    #[test]
    fn iasl_disassembles_the_tables() {
        let Ok(out) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("SKIPPED: iasl is not installed (Debian: acpica-tools)");
            return;
        };
        assert!(out.status.success());
        let tables = build(2);
        let p = Parsed::new(&tables);
        let dir = tempfile::tempdir().unwrap();
        let named = [
            ("dsdt", p.dsdt()),
            ("facp", p.find(b"FACP")),
            ("apic", p.find(b"APIC")),
            ("mcfg", p.find(b"MCFG")),
        ];
        for (name, bytes) in named {
            let aml = dir.path().join(format!("{name}.dat"));
            std::fs::write(&aml, bytes).unwrap();
            let out = std::process::Command::new("iasl")
                .arg("-d")
                .arg(&aml)
                .current_dir(dir.path())
                .output()
                .unwrap();
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "iasl -d {name}: {log}");
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl")))
                .unwrap_or_else(|e| panic!("no {name}.dsl ({e}): {log}"));
            assert!(
                !dsl.contains("**** "),
                "iasl complained about {name}:\n{dsl}"
            );
            if std::env::var_os("VIVARIUM_ACPI_DUMP").is_some() {
                eprintln!("{dsl}");
            }
            match name {
                "dsdt" => {
                    for s in [
                        "PNP0A08", "PNP0A03", "PNP0C02", "PNP0501", "PNP0B00", "PNP0303",
                        "PNP0F13", "_S5_", "ACPI0007",
                    ] {
                        assert!(dsl.contains(s), "{s} in:\n{dsl}");
                    }
                    // Compile the disassembly back: the AML must round-trip.
                    let out = std::process::Command::new("iasl")
                        .arg(dir.path().join("dsdt.dsl"))
                        .current_dir(dir.path())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "iasl could not recompile the DSDT: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                "facp" => assert!(
                    dsl.contains("Control Method Power Button (V1) : 0"),
                    "{dsl}"
                ),
                _ => {}
            }
        }
    }
}
