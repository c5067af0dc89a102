//! The `virt` board's flattened device tree (written with `vm-fdt`): what a Linux arm64
//! kernel learns of the machine instead of ACPI tables and boot parameters — CPUs with PSCI,
//! memory, the GICv3 with its MSI frame, the architected timer, the UART and the RTC, the
//! PCI host bridge over ECAM, and `/chosen` (command line, initrd, console).

use vm_fdt::FdtWriter;

use crate::error::{Error, Result};
use crate::virt::layout;
use vivarium_hypervisor::aarch64::GicV3;

/// Interrupt specifier type: a shared peripheral interrupt.
const GIC_SPI: u32 = 0;
/// Interrupt specifier type: a private peripheral interrupt.
const GIC_PPI: u32 = 1;
/// Interrupt flags: rising edge.
const IRQ_EDGE_RISING: u32 = 1;
/// Interrupt flags: active-high level.
const IRQ_LEVEL_HIGH: u32 = 4;

/// The phandles the tree's nodes refer to each other by.
const PHANDLE_GIC: u32 = 1;
const PHANDLE_MSI: u32 = 2;
const PHANDLE_CLOCK: u32 = 3;

/// The PPIs of the architected timer: secure and non-secure physical, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// The UART the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uart {
    /// An ARM PL011 (`ttyAMA0`).
    Pl011,
    /// A 16550A on MMIO (`ttyS0`).
    Ns16550a,
}

/// What the device tree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig {
    /// vCPUs.
    pub cpus: u32,
    /// RAM in bytes, from [`layout::RAM_START`].
    pub memory_size: u64,
    /// The kernel command line.
    pub cmdline: String,
    /// The initrd's place (start, end), if there is one.
    pub initrd: Option<(u64, u64)>,
    /// The console UART.
    pub uart: Uart,
}

/// The node name of the UART, for `stdout-path`.
fn uart_node(uart: Uart) -> String {
    match uart {
        Uart::Pl011 => format!("pl011@{:x}", layout::UART),
        Uart::Ns16550a => format!("serial@{:x}", layout::UART),
    }
}

fn fdt_error(e: vm_fdt::Error) -> Error {
    Error::Setup(format!("could not write the device tree: {e}"))
}

/// Splits 64-bit values into the two 32-bit cells of an `#address-cells = <2>` tree.
fn cells(values: &[u64]) -> Vec<u32> {
    values
        .iter()
        .flat_map(|v| [(v >> 32) as u32, *v as u32])
        .collect()
}

/// Writes the device tree.
pub fn build(config: &FdtConfig) -> Result<Vec<u8>> {
    write(config).map_err(fdt_error)
}

fn write(config: &FdtConfig) -> std::result::Result<Vec<u8>, vm_fdt::Error> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_string("model", "Vivarium virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", &config.cmdline)?;
    fdt.property_string("stdout-path", &format!("/{}", uart_node(config.uart)))?;
    if let Some((start, end)) = config.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    let memory = fdt.begin_node(&format!("memory@{:x}", layout::RAM_START))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u32("reg", &cells(&[layout::RAM_START, config.memory_size]))?;
    fdt.end_node(memory)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for index in 0..config.cpus {
        let mpidr = layout::mpidr(index);
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_array_u32("reg", &cells(&[mpidr]))?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let gic = fdt.begin_node(&format!("intc@{:x}", layout::GIC_DISTRIBUTOR))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u32(
        "reg",
        &cells(&[
            layout::GIC_DISTRIBUTOR,
            GicV3::DISTRIBUTOR_SIZE,
            layout::GIC_REDISTRIBUTORS,
            u64::from(config.cpus) * GicV3::REDISTRIBUTOR_SIZE,
        ]),
    )?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_null("ranges")?;
    fdt.property_phandle(PHANDLE_GIC)?;
    let msi = fdt.begin_node(&format!("v2m@{:x}", layout::MSI_FRAME))?;
    fdt.property_string("compatible", "arm,gic-v2m-frame")?;
    fdt.property_null("msi-controller")?;
    fdt.property_array_u32("reg", &cells(&[layout::MSI_FRAME, layout::MSI_FRAME_SIZE]))?;
    fdt.property_u32("arm,msi-base-spi", GicV3::FIRST_SPI + layout::MSI_FIRST_SPI)?;
    fdt.property_u32("arm,msi-num-spis", layout::MSI_SPIS)?;
    fdt.property_phandle(PHANDLE_MSI)?;
    fdt.end_node(msi)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    let interrupts: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.property_null("always-on")?;
    fdt.end_node(timer)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(PHANDLE_CLOCK)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&uart_node(config.uart))?;
    match config.uart {
        Uart::Pl011 => {
            fdt.property_string_list(
                "compatible",
                vec!["arm,pl011".into(), "arm,primecell".into()],
            )?;
            fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
            fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
            fdt.property_array_u32("interrupts", &[GIC_SPI, layout::UART_SPI, IRQ_LEVEL_HIGH])?;
        }
        Uart::Ns16550a => {
            fdt.property_string("compatible", "ns16550a")?;
            fdt.property_u32("clock-frequency", 1_843_200)?;
            // The 16550 model raises its interrupt as an edge, as on an ISA bus.
            fdt.property_array_u32("interrupts", &[GIC_SPI, layout::UART_SPI, IRQ_EDGE_RISING])?;
        }
    }
    fdt.property_array_u32("reg", &cells(&[layout::UART, layout::DEVICE_FRAME_SIZE]))?;
    fdt.end_node(uart)?;

    let rtc = fdt.begin_node(&format!("pl031@{:x}", layout::RTC))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u32("reg", &cells(&[layout::RTC, layout::DEVICE_FRAME_SIZE]))?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, layout::RTC_SPI, IRQ_LEVEL_HIGH])?;
    fdt.property_u32("clocks", PHANDLE_CLOCK)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.end_node(rtc)?;

    let pci = fdt.begin_node(&format!("pcie@{:x}", layout::PCI_ECAM_START))?;
    fdt.property_string("compatible", "pci-host-ecam-generic")?;
    fdt.property_string("device_type", "pci")?;
    fdt.property_array_u32(
        "reg",
        &cells(&[layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE]),
    )?;
    fdt.property_array_u32("bus-range", &[0, 0])?;
    fdt.property_u32("linux,pci-domain", 0)?;
    fdt.property_u32("#address-cells", 3)?;
    fdt.property_u32("#size-cells", 2)?;
    // Child address: (space code, address high, address low); 0x0200_0000 is 32-bit memory,
    // 0x4300_0000 prefetchable 64-bit memory. Parent address and size in two cells each.
    let mut ranges = vec![0x0200_0000];
    ranges.extend(cells(&[layout::PCI_MMIO32_START]));
    ranges.extend(cells(&[layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE]));
    ranges.push(0x4300_0000);
    ranges.extend(cells(&[layout::PCI_MMIO64_START]));
    ranges.extend(cells(&[layout::PCI_MMIO64_START, layout::PCI_MMIO64_SIZE]));
    fdt.property_array_u32("ranges", &ranges)?;
    fdt.property_u32("msi-parent", PHANDLE_MSI)?;
    fdt.property_null("dma-coherent")?;
    fdt.end_node(pci)?;

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FdtConfig {
        FdtConfig {
            cpus: 2,
            memory_size: 256 << 20,
            cmdline: "console=ttyAMA0 panic=-1".into(),
            initrd: Some((0x4400_0000, 0x4410_0000)),
            uart: Uart::Pl011,
        }
    }

    /// The tree, decompiled by `dtc` (the device-tree compiler), is exactly the machine the
    /// board builds: compared line by line with the source kept beside this file.
    #[test]
    fn the_device_tree_decompiles_to_the_expected_source() {
        let missing = vivarium_e2e::gate::program_missing("dtc", "device-tree-compiler");
        if !vivarium_e2e::gate::runs("virt::fdt (dtc)", missing) {
            return;
        }
        let blob = build(&config()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("virt.dtb");
        std::fs::write(&path, &blob).unwrap();
        let out = std::process::Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-q"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let decompiled = String::from_utf8(out.stdout).unwrap();
        let want = include_str!("virt-2cpus.dts");
        for (n, (got, want)) in decompiled.lines().zip(want.lines()).enumerate() {
            assert_eq!(
                got,
                want,
                "line {} of the decompiled tree:\n{decompiled}",
                n + 1
            );
        }
        assert_eq!(
            decompiled.lines().count(),
            want.lines().count(),
            "{decompiled}"
        );
    }

    #[test]
    fn the_tree_holds_what_linux_looks_up() {
        let blob = build(&config()).unwrap();
        let text = String::from_utf8_lossy(&blob);
        for name in [
            "linux,dummy-virt",
            "arm,gic-v3",
            "arm,gic-v2m-frame",
            "arm,armv8-timer",
            "arm,pl011",
            "arm,pl031",
            "pci-host-ecam-generic",
            "console=ttyAMA0 panic=-1",
            "/pl011@9000000",
            "psci",
        ] {
            assert!(text.contains(name), "{name} is missing from the tree");
        }
        // 16550 instead of a PL011: another node and another console.
        let mut serial = config();
        serial.uart = Uart::Ns16550a;
        serial.initrd = None;
        let text = String::from_utf8_lossy(&build(&serial).unwrap()).into_owned();
        assert!(text.contains("ns16550a") && text.contains("/serial@9000000"));
        assert!(!text.contains("linux,initrd-start"));
    }
}
