//! x86_64 vCPU state: CPUID, MSRs, FPU, local APIC, and the register state for each way of
//! entering the guest (64-bit Linux entry, or real mode for hand-made guests).

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};
use vivarium_hypervisor::x86::{
    CODE_SELECTOR, CR0_LONG_MODE, CR4_LONG_MODE, DATA_SELECTOR, EFER_LONG_MODE, Entry, Segment,
    TSS_SELECTOR,
};

use crate::error::{Error, Result, kvm_error};

/// KVM's supported CPUID, with per-vCPU APIC ids, the topology and the hypervisor bit.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, index: u32, count: u32) -> Result<()> {
    let mut cpuid: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_error("KVM refused reading the CPUID KVM supports"))?;
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
        .map_err(kvm_error("KVM refused setting the vCPU's CPUID"))
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
    let msrs =
        Msrs::from_entries(&entries).map_err(|_| Error::Invalid("too many boot MSRs".into()))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(kvm_error("KVM refused setting the vCPU's MSRs"))?;
    if written != entries.len() {
        return Err(Error::Unsupported(format!(
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
        .map_err(kvm_error("KVM refused setting the vCPU's FPU state"))
}

/// Local APIC LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as firmware leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let mut lapic = vcpu
        .get_lapic()
        .map_err(kvm_error("KVM refused reading the local APIC"))?;
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
    vcpu.set_lapic(&lapic)
        .map_err(kvm_error("KVM refused setting the local APIC"))
}

/// The KVM view of a segment.
fn kvm_segment_of(segment: &Segment) -> kvm_segment {
    kvm_segment {
        base: segment.base,
        limit: segment.limit,
        selector: segment.selector,
        type_: segment.kind,
        present: u8::from(segment.present),
        dpl: segment.dpl,
        db: u8::from(segment.db),
        s: u8::from(segment.s),
        l: u8::from(segment.l),
        g: u8::from(segment.g),
        avl: u8::from(segment.avl),
        unusable: u8::from(!segment.present),
        padding: 0,
    }
}

/// Puts the vCPU where `entry` says (from the state KVM gives a reset CPU).
pub fn set_entry(vcpu: &VcpuFd, entry: &Entry) -> Result<()> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_error("KVM refused reading segment registers"))?;
    let regs = match entry {
        Entry::LongMode {
            rip,
            rsp,
            rsi,
            gdt_base,
            gdt,
            idt_base,
            idt_limit,
            cr3,
        } => {
            let descriptor = |index: u8| {
                gdt.get(usize::from(index)).copied().ok_or_else(|| {
                    Error::Invalid(format!("the boot GDT has no descriptor {index}"))
                })
            };
            let code = kvm_segment_of(&Segment::from_descriptor(
                descriptor(CODE_SELECTOR)?,
                CODE_SELECTOR,
            ));
            let data = kvm_segment_of(&Segment::from_descriptor(
                descriptor(DATA_SELECTOR)?,
                DATA_SELECTOR,
            ));
            let tss = kvm_segment_of(&Segment::from_descriptor(
                descriptor(TSS_SELECTOR)?,
                TSS_SELECTOR,
            ));
            sregs.gdt.base = *gdt_base;
            sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
            sregs.idt.base = *idt_base;
            sregs.idt.limit = *idt_limit;
            sregs.cs = code;
            sregs.ds = data;
            sregs.es = data;
            sregs.fs = data;
            sregs.gs = data;
            sregs.ss = data;
            sregs.tr = tss;
            sregs.cr0 |= CR0_LONG_MODE;
            sregs.cr3 = *cr3;
            sregs.cr4 |= CR4_LONG_MODE;
            sregs.efer |= EFER_LONG_MODE;
            kvm_regs {
                rflags: 0x2,
                rip: *rip,
                rsp: *rsp,
                rbp: *rsp,
                rsi: *rsi,
                ..Default::default()
            }
        }
        Entry::RealMode { ip, sp } => {
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
            kvm_regs {
                rflags: 0x2,
                rip: u64::from(*ip),
                rsp: u64::from(*sp),
                ..Default::default()
            }
        }
    };
    vcpu.set_sregs(&sregs)
        .map_err(kvm_error("KVM refused setting segment registers"))?;
    vcpu.set_regs(&regs)
        .map_err(kvm_error("KVM refused setting general registers"))
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
    use vivarium_hypervisor::x86::descriptor;

    #[test]
    fn segments_become_kvm_segments() {
        let code = kvm_segment_of(&Segment::from_descriptor(
            descriptor(0xa09b, 0, 0xfffff),
            CODE_SELECTOR,
        ));
        assert_eq!(code.selector, 8);
        assert_eq!((code.l, code.present, code.unusable), (1, 1, 0));
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        let null = kvm_segment_of(&Segment::from_descriptor(0, 0));
        assert_eq!(null.unusable, 1);
    }
}
