//! The `virt` board: the aarch64 machine Vivarium's VMs are on arm64 hosts (KVM/arm64 on
//! Linux, Hypervisor.framework on macOS), the same guest-visible machine on both. Its address
//! map (`layout`), device tree (`fdt`), the arm64 `Image` loader (`image`) and the GICv2m MSI
//! frame (`msi`); [`build`] makes one boot of a machine of it: RAM from 1 GiB, a GICv3 with
//! the architected timer, a UART and a PL031 clock, virtio-pci over ECAM with the machine's
//! disks, network, CD-ROM and random numbers, and the kernel booted directly with PSCI for the
//! other CPUs.

pub mod fdt;
pub mod image;
pub mod layout;
pub mod msi;

use std::sync::{Arc, Mutex};

use vivarium_core::backend::BootSpec;
use vivarium_devices::bus::{Bus, BusDevice, BusKind};
use vivarium_devices::pci::PciWindows;
use vivarium_devices::serial::Serial;
use vivarium_hypervisor::{Entry, Hypervisor, MemoryMapping, VmSpec, aarch64};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::devices::{PciPlacement, bus_error};
use crate::error::{Error, Result};
use crate::interrupts::device_irq;
use crate::machine::{Boot, BootHandles, Control, MachinePlan};
use crate::memory::GuestRam;

/// Where the device tree goes: this far below the end of RAM (the boot protocol wants it
/// 8-byte aligned, at most 2 MiB, inside RAM).
const FDT_MAX_SIZE: u64 = 2 << 20;

/// The PL031 clock (`vm-superio`'s model, whose registers are 32 bits wide) on the bus.
struct Pl031(vm_superio::Rtc<vm_superio::rtc_pl031::NoEvents>);

impl BusDevice for Pl031 {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (u16::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(offset), Ok(word)) => self.0.read(offset, word),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(offset), Ok(word)) = (u16::try_from(offset), <&[u8; 4]>::try_from(data)) {
            self.0.write(offset, word);
        }
    }
}

/// Checks what this board can build before anything is made.
pub(crate) fn check(plan: &MachinePlan) -> Result<()> {
    if plan.cpus > layout::MAX_CPUS {
        return Err(Error::InvalidMachine(format!(
            "an arm64 VM has at most {} CPUs, not {}",
            layout::MAX_CPUS,
            plan.cpus
        )));
    }
    if plan.memory_size > layout::RAM_MAX {
        return Err(Error::InvalidMachine(format!(
            "an arm64 VM has at most {} GiB of memory, not {} MiB",
            layout::RAM_MAX >> 30,
            plan.memory_size >> 20
        )));
    }
    if !matches!(plan.boot, BootSpec::Linux { .. }) {
        return Err(Error::InvalidMachine(
            "an arm64 VM boots a Linux kernel directly for now: firmware (UEFI) boot on arm64 \
             is not built yet; create the VM with --kernel (and --initrd)"
                .into(),
        ));
    }
    Ok(())
}

/// Builds one boot of the `virt` machine `plan` describes on `hypervisor`.
pub(crate) fn build(
    hypervisor: &dyn Hypervisor,
    plan: &MachinePlan,
    control: &Arc<Control>,
) -> Result<Boot> {
    check(plan)?;
    let BootSpec::Linux {
        kernel,
        initrd,
        cmdline,
    } = &plan.boot
    else {
        unreachable!("check refused every other boot");
    };
    let vm = hypervisor.create_vm(&VmSpec {
        cpus: plan.cpus,
        hypervisor_pages: None,
        gic: Some(layout::GIC),
    })?;
    let ram = GuestRam::allocate(&[(
        GuestAddress(layout::RAM_START),
        usize::try_from(plan.memory_size)
            .map_err(|_| Error::InvalidMachine("too much memory for this host".into()))?,
    )])?;
    let memory = Arc::clone(ram.memory());
    let host = memory
        .get_host_address(GuestAddress(layout::RAM_START))
        .map_err(|e| Error::Setup(format!("guest memory has no host mapping: {e}")))?;
    let mapping = MemoryMapping {
        guest_address: layout::RAM_START,
        size: plan.memory_size,
        host_address: host,
        read_only: false,
        log_dirty: false,
    };
    // SAFETY: the mapping is owned by `ram`, which the boot drops after every vCPU of this VM
    // has stopped running; nothing else is mapped at RAM's addresses.
    unsafe { vm.map_memory(mapping) }?;

    // The board has no port I/O; the port bus exists for the PCI root's sake and stays empty
    // of anything a guest can reach.
    let pio = Arc::new(Bus::new(BusKind::Pio));
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    // The 16550 model on MMIO for now: with the PL011 model (`vivarium_devices::pl011`) the
    // guest's power-off hung in the arm64 rig, which is not understood yet.
    let uart = Arc::new(Mutex::new(Serial::new(
        device_irq(vm.as_ref(), layout::UART_SPI)?,
        Box::new(plan.serial.clone()),
    )));
    mmio.insert(layout::UART, 8, uart.clone())
        .map_err(bus_error("UART"))?;
    mmio.insert(
        layout::RTC,
        layout::DEVICE_FRAME_SIZE,
        Arc::new(Mutex::new(Pl031(vm_superio::Rtc::new()))),
    )
    .map_err(bus_error("real-time clock"))?;
    let msi = msi::MsiFrame::new(Arc::clone(&vm));
    mmio.insert(
        layout::MSI_FRAME,
        layout::MSI_FRAME_SIZE,
        Arc::new(Mutex::new(msi.clone())),
    )
    .map_err(bus_error("MSI frame"))?;
    control.set_handles(BootHandles {
        acpi_pm: None,
        ps2_input: None,
        serial: Some(uart),
    });

    let screen = plan
        .display
        .as_ref()
        .map(|d| -> Result<_> {
            let screen = crate::display::Screen::new(Arc::clone(&vm), Arc::clone(&d.shared))?;
            Ok(crate::devices::ScreenDevice {
                screen,
                width: d.width,
                height: d.height,
                // The guest's driver sets the mode; nothing has when the kernel starts.
                boot_mode: false,
                option_rom: None,
                vga: false,
            })
        })
        .transpose()?;
    let refresh = screen
        .as_ref()
        .map(|s| crate::display::RefreshThread::start(Arc::clone(&s.screen)))
        .transpose()?;
    let placement = PciPlacement {
        windows: PciWindows {
            mem32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mem64: (layout::PCI_MMIO64_START, layout::PCI_MMIO64_SIZE),
            // No port I/O on this board: no I/O BAR can be given.
            io: (0, 0),
        },
        ecam: (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE),
        framebuffer: layout::PCI_MMIO32_START,
    };
    crate::devices::attach_pci(
        Arc::new(msi),
        &pio,
        &mmio,
        &memory,
        &placement,
        crate::devices::PciDevices {
            disks: &plan.disks,
            network: plan.network.as_ref(),
            cdrom: plan.cdrom.as_ref(),
            screen,
            host_bridge: None,
            board_functions: Vec::new(),
        },
    )?;

    // The kernel at the start of RAM, the initrd after it, the device tree at the end.
    let ram_end = layout::RAM_START + plan.memory_size;
    let loaded = image::load_image(&memory, layout::RAM_START, kernel, ram_end)?;
    let fdt_address = ram_end.checked_sub(FDT_MAX_SIZE).ok_or_else(|| {
        Error::InvalidMachine("the VM has too little memory for its device tree".into())
    })?;
    let initrd_place = initrd
        .as_ref()
        .map(|path| -> Result<(u64, u64)> {
            let bad = |why: String| Error::Initrd {
                path: path.clone(),
                why,
            };
            let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let start = loaded.end.next_multiple_of(image::BASE_ALIGNMENT);
            let end = start + data.len() as u64;
            if end > fdt_address {
                return Err(bad(format!(
                    "the kernel and this initrd ({} MiB) do not fit in the VM's {} MiB of \
                     memory: give it more",
                    data.len() >> 20,
                    plan.memory_size >> 20
                )));
            }
            memory
                .write_slice(&data, GuestAddress(start))
                .map_err(|e| bad(format!("it does not fit in guest memory: {e}")))?;
            Ok((start, end))
        })
        .transpose()?;
    if loaded.end > fdt_address {
        return Err(Error::InvalidMachine(format!(
            "the kernel does not leave room for its device tree in {} MiB of memory: give the \
             VM more",
            plan.memory_size >> 20
        )));
    }
    let blob = fdt::build(&fdt::FdtConfig {
        cpus: plan.cpus,
        memory_size: plan.memory_size,
        cmdline: cmdline.clone(),
        initrd: initrd_place,
        uart: fdt::Uart::Ns16550a,
    })?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(Error::Setup("the device tree is larger than 2 MiB".into()));
    }
    memory
        .write_slice(&blob, GuestAddress(fdt_address))
        .map_err(|e| Error::Setup(format!("could not write the device tree: {e}")))?;

    let mut entries: Vec<Option<Entry>> = vec![None; plan.cpus as usize];
    entries[0] = Some(Entry::Aarch64(aarch64::Entry {
        pc: loaded.entry,
        x0: fdt_address,
    }));
    let mut early: Vec<Box<dyn Send>> = Vec::new();
    if let Some(refresh) = refresh {
        early.push(Box::new(refresh));
    }
    Ok(Boot {
        vm,
        entries,
        pio,
        mmio,
        early,
        late: Vec::new(),
        ram,
    })
}
