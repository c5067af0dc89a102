//! `vivarium-arm64-kvm-probe`: the smallest KVM/arm64 machine, for the arm64 rig. It opens
//! `/dev/kvm`, creates a VM with one memory slot, the in-kernel GICv3 (distributor at
//! 0x0800_0000, redistributors at 0x080a_0000, as QEMU's `virt` places them), one vCPU
//! (`KVM_ARM_PREFERRED_TARGET`, `KVM_ARM_VCPU_INIT` with PSCI 0.2), initialises the GIC after
//! the vCPU (`KVM_DEV_ARM_VGIC_CTRL_INIT`), and runs a few hand-assembled instructions: a
//! 32-bit store of [`MMIO_VALUE`] to [`MMIO_ADDRESS`], where no memory is (a `KVM_EXIT_MMIO`),
//! then `HVC #0` with x0 = PSCI `SYSTEM_OFF` (KVM's own PSCI turns it into a
//! `KVM_EXIT_SYSTEM_EVENT` of type shutdown). It reports each step and exit as
//! `VIVARIUM-RESULT key=value` lines and exits 0 when both exits came as expected.
//!
//! Built for aarch64 Linux only (`vivarium_e2e::cross`); elsewhere it is a stub that says so.
//! `tests/tests/rig_arm64_kvm.rs` runs it in the arm64 rig: it proves the KVM calls the aarch64
//! backend needs, in the order it needs them, on real KVM/arm64.

// Elsewhere only the stub's `main` is used.
#![cfg_attr(
    not(all(target_arch = "aarch64", target_os = "linux")),
    allow(dead_code)
)]

#[cfg(all(target_arch = "aarch64", target_os = "linux"))]
mod probe {
    use std::mem::offset_of;
    use std::process::ExitCode;
    use std::time::Instant;

    use kvm_bindings::{
        KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_REG_ARM_CORE, KVM_REG_ARM64, KVM_REG_SIZE_U64,
        KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
        KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST, kvm_create_device,
        kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_regs,
        kvm_userspace_memory_region, kvm_vcpu_init, user_pt_regs,
    };
    use kvm_ioctls::{DeviceFd, Kvm, VcpuExit};

    use super::{MMIO_ADDRESS, MMIO_VALUE, PSCI_SYSTEM_OFF, RAM_BASE, RAM_SIZE, program};

    /// The GICv3 distributor's base, as on QEMU's `virt`.
    const GICD_BASE: u64 = 0x0800_0000;
    /// The first redistributor's base, as on QEMU's `virt`.
    const GICR_BASE: u64 = 0x080a_0000;
    /// Exits handled before the probe gives up.
    const MAX_EXITS: usize = 16;

    fn result(key: &str, value: impl std::fmt::Display) {
        println!("VIVARIUM-RESULT {key}={value}");
    }

    /// The `KVM_{GET,SET}_ONE_REG` id of a 64-bit core register at byte `offset` of
    /// `kvm_regs`.
    fn core_register(offset: usize) -> u64 {
        KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
    }

    /// Sets a GIC device attribute whose value is a `u64` (or none, for a control).
    fn set_attribute(
        gic: &DeviceFd,
        group: u32,
        attr: u32,
        value: Option<&u64>,
    ) -> Result<(), String> {
        let attribute = kvm_device_attr {
            flags: 0,
            group,
            attr: u64::from(attr),
            addr: value.map_or(0, |v| v as *const u64 as u64),
        };
        gic.set_device_attr(&attribute)
            .map_err(|e| format!("KVM_SET_DEVICE_ATTR group {group} attr {attr}: {e}"))
    }

    pub fn main() -> ExitCode {
        match run() {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                result("probe_error", e.replace(' ', "_"));
                ExitCode::from(1)
            }
        }
    }

    fn run() -> Result<bool, String> {
        let started = Instant::now();
        let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
        result("kvm_api", kvm.get_api_version());
        result("ipa_limit_bits", kvm.get_host_ipa_limit());
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;

        // SAFETY: a fresh private anonymous mapping, of no file: it aliases nothing.
        let ram = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RAM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ram == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        let code = program();
        // SAFETY: the mapping is RAM_SIZE bytes, readable and writable, and ours alone; the
        // program is a few words.
        unsafe {
            std::ptr::copy_nonoverlapping(
                code.as_ptr().cast::<u8>(),
                ram.cast::<u8>(),
                std::mem::size_of_val(code.as_slice()),
            );
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: RAM_BASE,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram as u64,
        };
        // SAFETY: the slot maps the mapping above, which stays mapped until the process ends
        // (it is never unmapped), at guest addresses no other slot uses.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        result("memory_slot", format!("{RAM_BASE:#x}+{RAM_SIZE:#x}"));

        let mut device = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let gic = vm
            .create_device(&mut device)
            .map_err(|e| format!("KVM_CREATE_DEVICE (VGIC_V3): {e}"))?;
        set_attribute(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST,
            Some(&GICD_BASE),
        )?;
        set_attribute(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST,
            Some(&GICR_BASE),
        )?;
        result(
            "gic",
            format!("v3,dist={GICD_BASE:#x},redist={GICR_BASE:#x}"),
        );

        let mut vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(|e| format!("KVM_ARM_PREFERRED_TARGET: {e}"))?;
        result("preferred_target", init.target);
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        vcpu.vcpu_init(&init)
            .map_err(|e| format!("KVM_ARM_VCPU_INIT: {e}"))?;
        // The GIC is initialised once its vCPUs are (it sizes the redistributors by them).
        set_attribute(
            &gic,
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT,
            None,
        )?;
        result("gic_init", "ok");

        let pc = core_register(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));
        vcpu.set_one_reg(pc, &RAM_BASE.to_le_bytes())
            .map_err(|e| format!("KVM_SET_ONE_REG pc: {e}"))?;

        let mut mmio_ok = false;
        let mut off_ok = false;
        for _ in 0..MAX_EXITS {
            match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
                VcpuExit::MmioWrite(address, data) => {
                    let mut bytes = [0u8; 8];
                    bytes[..data.len()].copy_from_slice(data);
                    let value = u64::from_le_bytes(bytes);
                    result(
                        "mmio_write",
                        format!("{address:#x},{},{value:#x}", data.len()),
                    );
                    mmio_ok = address == MMIO_ADDRESS && value == u64::from(MMIO_VALUE);
                }
                VcpuExit::SystemEvent(kind, data) => {
                    let name = match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown".to_string(),
                        KVM_SYSTEM_EVENT_RESET => "reset".to_string(),
                        KVM_SYSTEM_EVENT_CRASH => "crash".to_string(),
                        other => format!("type{other}"),
                    };
                    result("system_event", &name);
                    result(
                        "system_event_flags",
                        format!("{:#x}", data.first().copied().unwrap_or(0)),
                    );
                    off_ok = name == "shutdown";
                    break;
                }
                other => {
                    result("unexpected_exit", format!("{other:?}").replace(' ', "_"));
                    break;
                }
            }
        }
        result("psci_call", format!("{PSCI_SYSTEM_OFF:#x}"));
        result("probe_ms", started.elapsed().as_millis());
        Ok(mmio_ok && off_ok)
    }
}

/// Guest physical address of the memory slot (where QEMU's `virt` has its RAM), where the
/// program starts.
const RAM_BASE: u64 = 0x4000_0000;
/// Size of the memory slot.
const RAM_SIZE: usize = 2 << 20;
/// Where the program stores [`MMIO_VALUE`]: no memory is there, so the store exits to the VMM.
const MMIO_ADDRESS: u64 = 0x1000_0000;
/// What the program stores (32 bits).
const MMIO_VALUE: u32 = 0x5649_5641;
/// PSCI 0.2 `SYSTEM_OFF` (an SMC32 function id, in x0).
const PSCI_SYSTEM_OFF: u32 = 0x8400_0008;

/// `MOVZ Xd, #imm16, LSL #shift`.
const fn movz(rd: u32, imm16: u32, shift: u32) -> u32 {
    0xd280_0000 | ((shift / 16) << 21) | ((imm16 & 0xffff) << 5) | rd
}

/// `MOVK Xd, #imm16, LSL #shift`.
const fn movk(rd: u32, imm16: u32, shift: u32) -> u32 {
    0xf280_0000 | ((shift / 16) << 21) | ((imm16 & 0xffff) << 5) | rd
}

/// `STR Wt, [Xn]`.
const fn str_w(rt: u32, rn: u32) -> u32 {
    0xb900_0000 | (rn << 5) | rt
}

/// `HVC #0`.
const HVC_0: u32 = 0xd400_0002;
/// `B .` (a branch to itself).
const B_SELF: u32 = 0x1400_0000;

/// The guest program, little-endian instruction words: x1 = [`MMIO_ADDRESS`],
/// w2 = [`MMIO_VALUE`], `str w2, [x1]`, x0 = [`PSCI_SYSTEM_OFF`], `hvc #0`, then a loop.
fn program() -> Vec<u32> {
    vec![
        movz(1, (MMIO_ADDRESS >> 16) as u32, 16),
        movk(1, MMIO_ADDRESS as u32, 0),
        movz(2, MMIO_VALUE, 0),
        movk(2, MMIO_VALUE >> 16, 16),
        str_w(2, 1),
        movz(0, PSCI_SYSTEM_OFF, 0),
        movk(0, PSCI_SYSTEM_OFF >> 16, 16),
        HVC_0,
        B_SELF,
    ]
}

fn main() -> std::process::ExitCode {
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    return probe::main();
    #[cfg(not(all(target_arch = "aarch64", target_os = "linux")))]
    {
        eprintln!("vivarium-arm64-kvm-probe runs on aarch64 Linux only (the arm64 rig)");
        std::process::ExitCode::from(2)
    }
}
