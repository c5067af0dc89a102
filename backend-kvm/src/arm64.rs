//! aarch64 vCPU and GIC state on KVM: the vCPU's init (KVM's preferred target, PSCI 0.2 in the
//! kernel, application processors powered off until `CPU_ON`), its entry registers, the
//! in-kernel GICv3, and the registers of a crash report.

use std::mem::offset_of;

use kvm_bindings::{
    KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT,
    KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_REG_ARM_CORE, KVM_REG_ARM64,
    KVM_REG_SIZE_U64, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device,
    kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_regs, kvm_vcpu_init,
    user_pt_regs,
};
use kvm_ioctls::{DeviceFd, VcpuFd, VmFd};
use vivarium_hypervisor::aarch64::{Entry, GicV3};

use crate::error::{Result, kvm_error};

/// PSTATE at entry: EL1 with SP_EL1 (EL1h), debug, SError, IRQ and FIQ masked.
const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// The `KVM_{GET,SET}_ONE_REG` id of a 64-bit core register at byte `offset` of `kvm_regs`.
fn core_register(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

fn pc_register() -> u64 {
    core_register(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc))
}

fn pstate_register() -> u64 {
    core_register(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate))
}

fn sp_register() -> u64 {
    core_register(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, sp))
}

fn x_register(n: usize) -> u64 {
    core_register(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) + n * 8)
}

/// Initialises vCPU `index`: the host's preferred CPU target with PSCI 0.2 handled by KVM,
/// and every CPU but the first powered off until the guest's `CPU_ON`.
pub fn init_vcpu(vm: &VmFd, vcpu: &VcpuFd, index: u32) -> Result<()> {
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(kvm_error("KVM refused naming the preferred CPU target"))?;
    init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
    if index > 0 {
        init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&init)
        .map_err(kvm_error("KVM refused initialising a vCPU"))
}

/// Puts the vCPU at `entry` in EL1h with everything masked (the arm64 boot protocol).
pub fn set_entry(vcpu: &VcpuFd, entry: &Entry) -> Result<()> {
    let set = |register: u64, value: u64, what: &'static str| {
        vcpu.set_one_reg(register, &value.to_le_bytes())
            .map(|_| ())
            .map_err(kvm_error(what))
    };
    set(
        pstate_register(),
        PSTATE_EL1H_MASKED,
        "KVM refused setting PSTATE",
    )?;
    set(x_register(0), entry.x0, "KVM refused setting x0")?;
    set(pc_register(), entry.pc, "KVM refused setting the PC")
}

/// The in-kernel GICv3 at `layout`'s addresses (initialised by [`finish_gic`] once every vCPU
/// exists).
pub fn create_gic(vm: &VmFd, layout: &GicV3) -> Result<DeviceFd> {
    let mut device = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm
        .create_device(&mut device)
        .map_err(kvm_error("KVM refused creating the GICv3"))?;
    set_address(&gic, KVM_VGIC_V3_ADDR_TYPE_DIST, layout.distributor)?;
    set_address(&gic, KVM_VGIC_V3_ADDR_TYPE_REDIST, layout.redistributors)?;
    Ok(gic)
}

fn set_address(gic: &DeviceFd, kind: u32, address: u64) -> Result<()> {
    let attribute = kvm_device_attr {
        flags: 0,
        group: KVM_DEV_ARM_VGIC_GRP_ADDR,
        attr: u64::from(kind),
        addr: &address as *const u64 as u64,
    };
    gic.set_device_attr(&attribute)
        .map_err(kvm_error("KVM refused placing the GICv3"))
}

/// Initialises the GIC (after every vCPU is created and initialised: it sizes the
/// redistributors by them).
pub fn finish_gic(gic: &DeviceFd) -> Result<()> {
    let attribute = kvm_device_attr {
        flags: 0,
        group: KVM_DEV_ARM_VGIC_GRP_CTRL,
        attr: u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        addr: 0,
    };
    gic.set_device_attr(&attribute)
        .map_err(kvm_error("KVM refused initialising the GICv3"))
}

/// The `KVM_IRQ_LINE` number of SPI `line`: type SPI (1) in bits 24..28, the INTID below.
pub fn spi_irq_line(line: u32) -> u32 {
    const KVM_ARM_IRQ_TYPE_SPI: u32 = 1;
    const KVM_ARM_IRQ_TYPE_SHIFT: u32 = 24;
    (KVM_ARM_IRQ_TYPE_SPI << KVM_ARM_IRQ_TYPE_SHIFT) | (GicV3::FIRST_SPI + line)
}

/// The registers of a vCPU as text, for crash reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let get = |register: u64| {
        let mut bytes = [0u8; 8];
        vcpu.get_one_reg(register, &mut bytes)
            .ok()
            .map(|_| u64::from_le_bytes(bytes))
    };
    let Some(pc) = get(pc_register()) else {
        return "(registers unavailable)".into();
    };
    let mut text = format!(
        "pc={pc:#018x} sp={:#018x} pstate={:#x}",
        get(sp_register()).unwrap_or(0),
        get(pstate_register()).unwrap_or(0)
    );
    for n in 0..31 {
        if n % 4 == 0 {
            text.push('\n');
        } else {
            text.push(' ');
        }
        text.push_str(&format!("x{n}={:#018x}", get(x_register(n)).unwrap_or(0)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_are_kvms() {
        // KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | offset in 32-bit words:
        // x0 is word 0, the PC word 64 (after 31 registers and SP), PSTATE word 66.
        assert_eq!(x_register(0), 0x6030_0000_0010_0000);
        assert_eq!(pc_register(), 0x6030_0000_0010_0040);
        assert_eq!(pstate_register(), 0x6030_0000_0010_0042);
        assert_eq!(spi_irq_line(0), 0x0100_0020);
        assert_eq!(spi_irq_line(5), 0x0100_0025);
    }
}
