//! x86_64 vCPU state: CPUID, MSRs, FPU, local APIC, and the register state for each way of
//! entering the guest (64-bit Linux entry, or real mode for hand-made guests).

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Address, Bytes};

use crate::error::{Error, Result};
use crate::layout;
use vivarium_devices::GuestMemoryMmap;

fn hv(context: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm {
        context,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

/// KVM's supported CPUID, with per-vCPU APIC ids, the topology and the hypervisor bit.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, index: u32, count: u32) -> Result<()> {
    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(hv("reading the CPUID KVM supports"))?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((count & 0xff) << 16);
                // ECX[31]: running under a hypervisor. (The TSC-deadline timer, ECX[24],
                // stays off: with it the guest hung now and then in the nested test rig;
                // see docs/BENCHMARKS.md.)
                entry.ecx |= 1 << 31;
                // EDX[28]: HTT, meaningful when the package has more than one logical CPU.
                if count > 1 {
                    entry.edx |= 1 << 28;
                } else {
                    entry.edx &= !(1 << 28);
                }
            }
            0xb | 0x1f => {
                // x2APIC id of this vCPU in every topology sub-leaf.
                entry.edx = index;
            }
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(hv("setting the vCPU's CPUID"))
}

/// Model-specific registers a freshly reset x86_64 CPU has, as Linux expects at entry.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// MISC_ENABLE bit 0: fast string operations.
    const FAST_STRING: u64 = 1;
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, FAST_STRING),
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Setup("too many MSRs".into()))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(hv("setting the vCPU's MSRs"))?;
    if written != entries.len() {
        return Err(Error::Setup(format!(
            "KVM accepted only {written} of {} boot MSRs",
            entries.len()
        )));
    }
    Ok(())
}

/// The x87 and SSE control words of a reset CPU.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(hv("setting the vCPU's FPU state"))
}

/// Local APIC LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(hv("reading the local APIC"))?;
    let read = |regs: &[libc::c_char], at: usize| {
        let bytes: Vec<u8> = regs[at..at + 4].iter().map(|&b| b as u8).collect();
        u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    };
    let write = |regs: &mut [libc::c_char], at: usize, value: u32| {
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            regs[at + i] = *b as libc::c_char;
        }
    };
    let set_mode = |value: u32, mode: u32| (value & !0x700) | (mode << 8);
    let lvt0 = read(&lapic.regs, APIC_LVT0);
    write(&mut lapic.regs, APIC_LVT0, set_mode(lvt0, DELIVERY_EXTINT));
    let lvt1 = read(&lapic.regs, APIC_LVT1);
    write(&mut lapic.regs, APIC_LVT1, set_mode(lvt1, DELIVERY_NMI));
    vcpu.set_lapic(&lapic).map_err(hv("setting the local APIC"))
}

/// Encodes an x86 segment descriptor (Intel SDM vol. 3, 3.4.5).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM view of the segment a descriptor at GDT index `index` describes.
fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = bit(55) == 1;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first GiB, and puts the vCPU
/// in 64-bit long mode at `entry` with `rsi` pointing at the Linux zero page.
pub fn setup_long_mode(mem: &GuestMemoryMmap, vcpu: &VcpuFd, entry: u64) -> Result<()> {
    let gdt = [
        gdt_entry(0, 0, 0),            // null
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
        gdt_entry(0xc093, 0, 0xfffff), // data
        gdt_entry(0x808b, 0, 0xfffff), // TSS
    ];
    let write_err =
        |what: &str| Error::Setup(format!("could not write the {what} to guest memory"));
    for (i, descriptor) in gdt.iter().enumerate() {
        mem.write_obj(*descriptor, layout::GDT_START.unchecked_add(i as u64 * 8))
            .map_err(|_| write_err("GDT"))?;
    }
    mem.write_obj(0u64, layout::IDT_START)
        .map_err(|_| write_err("IDT"))?;

    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> 2 MiB page i (present, writable, large).
    mem.write_obj(layout::PDPTE_START.raw_value() | 0x03, layout::PML4_START)
        .map_err(|_| write_err("page tables"))?;
    mem.write_obj(layout::PDE_START.raw_value() | 0x03, layout::PDPTE_START)
        .map_err(|_| write_err("page tables"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, layout::PDE_START.unchecked_add(i * 8))
            .map_err(|_| write_err("page tables"))?;
    }

    let mut sregs = vcpu.get_sregs().map_err(hv("reading segment registers"))?;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = layout::GDT_START.raw_value();
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = layout::IDT_START.raw_value();
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    const CR0_PE: u64 = 1;
    const CR0_ET: u64 = 1 << 4;
    const CR0_PG: u64 = 1 << 31;
    const CR4_PAE: u64 = 1 << 5;
    const EFER_LME: u64 = 1 << 8;
    const EFER_LMA: u64 = 1 << 10;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = layout::PML4_START.raw_value();
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(hv("setting segment registers"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: layout::BOOT_STACK_POINTER,
        rbp: layout::BOOT_STACK_POINTER,
        rsi: layout::ZERO_PAGE_START.raw_value(),
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(hv("setting general registers"))
}

/// Puts the vCPU in real mode at physical address `entry` (below 64 KiB) with flat segments.
pub fn setup_real_mode(vcpu: &VcpuFd, entry: u64) -> Result<()> {
    if entry >= 0x1_0000 {
        return Err(Error::Setup(format!(
            "a real-mode entry point must be below 64 KiB, not {entry:#x}"
        )));
    }
    let mut sregs = vcpu.get_sregs().map_err(hv("reading segment registers"))?;
    for segment in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        segment.base = 0;
        segment.selector = 0;
    }
    vcpu.set_sregs(&sregs)
        .map_err(hv("setting segment registers"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: 0xfff0,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(hv("setting general registers"))
}

/// The registers of a vCPU as text, for crash reports.
pub fn describe_registers(vcpu: &VcpuFd) -> String {
    let regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => return format!("(registers unavailable: {e})"),
    };
    let mut text = format!(
        "rip={:#018x} rsp={:#018x} rflags={:#x}\n\
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
         rsi={:#018x} rdi={:#018x} rbp={:#018x}\n\
         r8={:#018x} r9={:#018x} r10={:#018x} r11={:#018x}\n\
         r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}",
        regs.rip,
        regs.rsp,
        regs.rflags,
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi,
        regs.rbp,
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15
    );
    if let Ok(s) = vcpu.get_sregs() {
        text.push_str(&format!(
            "\ncr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}:{:#x}",
            s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector, s.cs.base
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_round_trip_into_kvm_segments() {
        let code = gdt_entry(0xa09b, 0, 0xfffff);
        assert_eq!(code, 0x00af_9b00_0000_ffff);
        let seg = segment_from_gdt(code, 1);
        assert_eq!(seg.selector, 8);
        assert_eq!(seg.l, 1);
        assert_eq!(seg.present, 1);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!(data.db, 1);
        assert_eq!(data.type_, 0x3);
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }
}
