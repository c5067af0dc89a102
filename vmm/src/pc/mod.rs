//! The `pc` board: the x86_64 PC that Vivarium's machines are on x86 hosts. Its address map
//! (`layout`), Linux's boot protocol (`boot`), ACPI tables (`acpi`), the firmware platform
//! (`firmware`: the ROM, the PAM-routed BIOS area, fw_cfg, the UEFI variable flash), the legacy
//! devices (`legacy`) and PS/2 input (`input`); [`build`] makes one boot of a machine of it.

pub mod acpi;
pub mod boot;
pub mod firmware;
pub mod layout;
pub mod legacy;

use std::sync::{Arc, Mutex};

use vivarium_core::backend::BootSpec;
use vivarium_devices::acpi_pm::AcpiPmPorts;
use vivarium_devices::bus::{Bus, BusKind};
use vivarium_devices::pci::PciWindows;
use vivarium_hypervisor::{Entry, Hypervisor, MemoryMapping, VmSpec};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::devices::PciPlacement;
use crate::error::{Error, Result};
use crate::machine::{Boot, BootHandles, Control, GuestReset, MachinePlan, Stop};
use crate::memory::GuestRam;

/// Where OVMF places the ACPI PM block through the PIIX4's PMBA (its `PcdAcpiPmBaseAddress`).
const UEFI_PM_BASE: u16 = 0xb000;

/// Builds one boot of the PC `plan` describes on `hypervisor`: the VM, its RAM, firmware,
/// devices and how the vCPUs start.
pub(crate) fn build(
    hypervisor: &dyn Hypervisor,
    plan: &MachinePlan,
    control: &Arc<Control>,
) -> Result<Boot> {
    // The hypervisor's own pages live in the PCI hole below the firmware's flash area, where
    // nothing else is mapped.
    let vm = hypervisor.create_vm(&VmSpec {
        cpus: plan.cpus,
        hypervisor_pages: Some(layout::HYPERVISOR_PAGES),
        gic: None,
    })?;

    let ram = GuestRam::allocate(&layout::ram_regions(plan.memory_size))?;
    let memory = Arc::clone(ram.memory());
    let firmware = match &plan.boot {
        BootSpec::Firmware { firmware, .. } => Some(firmware),
        _ => None,
    };
    // A BIOS machine's screen is the standard VGA, whose legacy window 0xa0000..0xbffff is
    // the VGA's memory (trapped MMIO), not RAM.
    let standard_vga = plan.display.is_some()
        && matches!(
            firmware,
            Some(vivarium_core::backend::FirmwareSpec::Bios { .. })
        );
    for (index, region) in memory.iter().enumerate() {
        let host = memory
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Setup(format!("guest memory has no host mapping: {e}")))?;
        let start = region.start_addr().raw_value();
        // With firmware, the BIOS area (0xc0000..1 MiB) of the first region is mapped on
        // its own, segment by segment as the PAM registers say (`firmware::BiosArea`).
        let pieces: Vec<(u64, u64)> = if index == 0 && firmware.is_some() {
            let bios_start = vivarium_devices::pci::i440fx::PAM_AREA_START;
            let bios_end = vivarium_devices::pci::i440fx::PAM_AREA_END;
            let low_end = if standard_vga {
                vivarium_devices::display::vga::WINDOW_START
            } else {
                bios_start
            };
            vec![(0, low_end), (bios_end, region.len() - bios_end)]
        } else {
            vec![(0, region.len())]
        };
        for (offset, size) in pieces {
            // Guest RAM is not advised with MADV_HUGEPAGE (the nested test rig's kernel
            // stalled now and then after a VM ended with it); it is 2 MiB-aligned, so hosts
            // whose transparent huge pages are on for all memory back it with huge pages.
            let mapping = MemoryMapping {
                guest_address: start + offset,
                size,
                // SAFETY: `offset` is inside the region's host mapping.
                host_address: unsafe { host.add(offset as usize) },
                read_only: false,
                log_dirty: false,
            };
            // SAFETY: the mapping is owned by `ram`, which the boot drops after every vCPU of
            // this VM has stopped running (they are joined first), so the hypervisor never
            // touches an unmapped range on behalf of a running guest; no two mappings overlap.
            unsafe { vm.map_memory(mapping) }?;
        }
    }

    let pio = Arc::new(Bus::new(BusKind::Pio));
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let reset = Arc::new(GuestReset(Arc::clone(control)));
    let legacy = legacy::attach_legacy_devices(
        vm.as_ref(),
        &pio,
        plan.serial.clone(),
        reset.clone(),
        plan.memory_size,
    )?;
    let power_control = Arc::clone(control);
    let power_off = Arc::new(legacy::GuestPowerOff(Box::new(move || {
        power_control.stop(Stop::PowerOff)
    })));
    let uefi = matches!(
        firmware,
        Some(vivarium_core::backend::FirmwareSpec::Uefi { .. })
    );
    // The ACPI PM block: at QEMU's place on a BIOS or direct-boot machine; on a UEFI
    // machine where OVMF puts it through the PIIX4's PMBA (the tables say so too).
    let pm_ports = if uefi {
        AcpiPmPorts::new(UEFI_PM_BASE).expect("the UEFI PM block fits in port space")
    } else {
        AcpiPmPorts::STANDARD
    };
    let acpi_pm = legacy::attach_acpi_pm(
        vm.as_ref(),
        &pio,
        power_off,
        reset,
        (!uefi).then_some(pm_ports),
    )?;
    let board_functions = if uefi {
        legacy::piix_functions(&pio, acpi_pm.clone(), pm_ports)?
    } else {
        Vec::new()
    };
    control.set_handles(BootHandles {
        acpi_pm: Some(acpi_pm),
        ps2_input: Some(legacy.ps2_input),
        serial: Some(legacy.serial),
    });
    // UEFI: the variable store flash right below the code.
    let mut uefi_vars = None;
    // The firmware's images: the BIOS and the display's VGA BIOS, or OVMF's code (OVMF
    // drives the display itself).
    let (bios, vga_rom) = match firmware {
        Some(vivarium_core::backend::FirmwareSpec::Uefi { code, vars }) => {
            let rom = Arc::new(firmware::Rom::load_uefi_code(code)?);
            let mapping = firmware::VarsMapping::open(vars)?;
            let base = rom.guest_address() - mapping.len() as u64;
            let flash = firmware::uefi_vars_flash(Arc::clone(&vm), mapping.clone(), base)?;
            mmio.insert(base, mapping.len() as u64, Arc::new(Mutex::new(flash)))
                .map_err(|e| {
                    Error::Setup(format!("could not place the UEFI variable store: {e}"))
                })?;
            uefi_vars = Some(mapping);
            (Some(rom), None)
        }
        Some(vivarium_core::backend::FirmwareSpec::Bios { image, vga_rom }) => {
            let rom = Arc::new(firmware::Rom::load(image)?);
            let vga = match (vga_rom, &plan.display) {
                (Some(path), Some(_)) => {
                    Some(std::fs::read(path).map_err(|e| Error::Firmware {
                        path: path.clone(),
                        why: format!(
                            "{e}: install the `seabios` package (sudo apt install seabios)"
                        ),
                    })?)
                }
                _ => None,
            };
            (Some(rom), vga)
        }
        None => (None, None),
    };
    let screen = plan
        .display
        .as_ref()
        .map(|d| -> Result<_> {
            let screen = crate::display::Screen::new(Arc::clone(&vm), Arc::clone(&d.shared))?;
            Ok(crate::devices::ScreenDevice {
                screen,
                width: d.width,
                height: d.height,
                // A firmware sets its own modes; a directly booted kernel gets one set.
                boot_mode: firmware.is_none(),
                option_rom: vga_rom.clone(),
                vga: standard_vga,
            })
        })
        .transpose()?;
    let boot_framebuffer = screen.as_ref().map(|s| boot::BootFramebuffer {
        base: layout::FRAMEBUFFER_START as u32,
        size: s.screen.display().vram_size(),
        width: s.width as u16,
        height: s.height as u16,
        stride: (s.width * 4) as u16,
    });
    let refresh = screen
        .as_ref()
        .map(|s| crate::display::RefreshThread::start(Arc::clone(&s.screen)))
        .transpose()?;
    // With firmware: the ROM, the BIOS area following the i440FX's PAM registers, and
    // the host bridge itself.
    let bios_area = bios
        .map(|rom| firmware::BiosArea::new(Arc::clone(&vm), Arc::clone(&memory), rom))
        .transpose()?;
    let host_bridge = bios_area.as_ref().map(|area| {
        let bridge = vivarium_devices::pci::i440fx::I440fxHostBridge::new(area.clone());
        Arc::new(Mutex::new(bridge)) as vivarium_devices::pci::SharedPciDevice
    });
    if let Some(area) = &bios_area {
        use vivarium_devices::pci::i440fx::{PAM_AREA_END, PAM_AREA_START};
        mmio.insert(
            PAM_AREA_START,
            PAM_AREA_END - PAM_AREA_START,
            Arc::new(Mutex::new(firmware::BiosAreaWrites(area.clone()))),
        )
        .map_err(|e| Error::Setup(format!("could not place the BIOS area: {e}")))?;
    }
    let placement = PciPlacement {
        windows: PciWindows {
            mem32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mem64: (
                layout::mmio64_start(plan.memory_size),
                layout::PCI_MMIO64_SIZE,
            ),
            io: (legacy::PCI_IO_START, legacy::PCI_IO_SIZE),
        },
        ecam: (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE),
        framebuffer: layout::FRAMEBUFFER_START,
    };
    let slots = crate::devices::attach_pci(
        Arc::new(crate::interrupts::DeviceMsi(Arc::clone(&vm))),
        &pio,
        &mmio,
        &memory,
        &placement,
        crate::devices::PciDevices {
            disks: &plan.disks,
            network: plan.network.as_ref(),
            cdrom: plan.cdrom.as_ref(),
            screen,
            host_bridge,
            board_functions,
        },
    )?;
    let mmio64_start = layout::mmio64_start(plan.memory_size);
    let mmio64 = mmio64_start..mmio64_start + layout::PCI_MMIO64_SIZE;
    let rsdp = match &plan.boot {
        BootSpec::Firmware { order, menu, .. } => {
            let pci = acpi::PciLayout {
                mmio32: layout::firmware_mmio32_start(plan.memory_size)
                    ..layout::FIRMWARE_MMIO32_END,
                mmio64,
                ecam: false,
            };
            let acpi = acpi::build_firmware_acpi(plan.cpus, &pm_ports, &pci)?;
            let boot_order: Vec<String> = order
                .iter()
                .filter_map(|device| match device {
                    vivarium_core::backend::BootDevice::Disk(i) => slots
                        .disks
                        .get(*i)
                        .map(|slot| firmware::disk_boot_path(*slot)),
                    vivarium_core::backend::BootDevice::Cdrom => {
                        slots.cdrom.map(firmware::cdrom_boot_path)
                    }
                })
                .collect();
            let fw_cfg = firmware::fw_cfg(
                Arc::clone(&memory),
                &firmware::FirmwareConfig {
                    cpus: plan.cpus,
                    memory_size: plan.memory_size,
                    boot_order: &boot_order,
                    menu: *menu,
                    acpi: &acpi,
                    display: plan.display.is_some(),
                    uefi,
                },
            )?;
            pio.insert(
                u64::from(vivarium_devices::fw_cfg::X86_PORT),
                vivarium_devices::fw_cfg::X86_PORT_LEN,
                Arc::new(Mutex::new(fw_cfg)),
            )
            .map_err(|e| Error::Setup(format!("could not place fw_cfg: {e}")))?;
            None
        }
        _ => Some(acpi::write_acpi_tables(
            &memory, plan.cpus, &pm_ports, mmio64,
        )?),
    };

    let mut entries: Vec<Option<Entry>> = vec![None; plan.cpus as usize];
    match &plan.boot {
        BootSpec::Linux {
            kernel,
            initrd,
            cmdline,
        } => {
            let entry = boot::load_linux(
                &memory,
                plan.memory_size,
                kernel,
                initrd.as_deref(),
                cmdline,
                rsdp,
                boot_framebuffer.as_ref(),
            )?;
            entries[0] = Some(Entry::X86(boot::long_mode_entry(&memory, entry.entry)?));
        }
        BootSpec::RealModeImage { code, load_address } => {
            memory
                .write_slice(code, GuestAddress(*load_address))
                .map_err(|e| Error::InvalidMachine(format!("the boot image does not fit: {e}")))?;
            entries[0] = Some(Entry::X86(boot::real_mode_entry(*load_address)?));
        }
        // The vCPUs start where a PC's do after reset: at the reset vector
        // (0xfffffff0, CS base 0xffff0000), which is the top of the firmware image; the
        // other vCPUs wait for the firmware's INIT/SIPI.
        BootSpec::Firmware { .. } => {}
    }
    let mut early: Vec<Box<dyn Send>> = Vec::new();
    if let Some(refresh) = refresh {
        early.push(Box::new(refresh));
    }
    if let Some(area) = bios_area {
        early.push(Box::new(area));
    }
    let mut late: Vec<Box<dyn Send>> = Vec::new();
    // The variable store's last writes reach its file once the flash model is gone too.
    if let Some(vars) = uefi_vars {
        late.push(Box::new(vars));
    }
    Ok(Boot {
        vm,
        entries,
        pio,
        mmio,
        early,
        late,
        ram,
    })
}
