// SPDX-License-Identifier: GPL-2.0
//! Intel VMX: running a DomU vCPU from Dom0's `Run` hypercall.
//!
//! The vCPU's VMCS is cleared at the end of every run, so a vCPU may run on any CPU next
//! time; each run loads it (VMCLEAR + VMPTRLD), writes this CPU's host state, enters with
//! VMLAUNCH, handles the exits it can in root mode with VMRESUME, and at the first exit for
//! Dom0 saves the guest's state, clears the VMCS and makes Dom0's current again.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::{
    arch::{asm, naked_asm},
    sync::atomic::{AtomicBool, Ordering},
};

use super::guest::{
    self, ArchState, GuestExit, GuestVendor, Next, VcpuState, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME,
};
use super::vmx::{control, vmclear, vmptrld, vmread, vmwrite, Ctl, VmFail};
use super::{
    guest_run_epilogue, load_gprs_from_rax, objtool_frame_non_standard, save_gprs_to_rax, CpuState,
    GuestRegs, GP, UD,
};
use crate::keel_core::{
    caps::Vendor,
    slat,
    vmcb::VmcbSeg,
    vmcs::{
        ar, cpu_based, entry_ctl, exit_ctl, field, interruptibility, intr_info, pin_based,
        secondary, CrAccess,
    },
};
use crate::x86::{self, msr};

/// CR0.NE: VMX requires it set; the guest sees its own value.
const CR0_NE: u64 = 1 << 5;
/// CR4.VMXE.
const CR4_VMXE: u64 = 1 << 13;
/// MSRs each run switches between Dom0's and the guest's values.
const SWITCHED_MSRS: [u32; 5] = [
    msr::KERNEL_GS_BASE,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
];
/// Host-state fields copied from Dom0's VMCS into the vCPU's at each run: the root-mode
/// state of this CPU.
const HOST_FIELDS: [u32; 16] = [
    field::HOST_CR0,
    field::HOST_CR3,
    field::HOST_CR4,
    field::HOST_CS_SELECTOR,
    field::HOST_SS_SELECTOR,
    field::HOST_TR_SELECTOR,
    field::HOST_FS_BASE,
    field::HOST_GS_BASE,
    field::HOST_TR_BASE,
    field::HOST_GDTR_BASE,
    field::HOST_IDTR_BASE,
    field::HOST_IA32_SYSENTER_CS,
    field::HOST_IA32_SYSENTER_ESP,
    field::HOST_IA32_SYSENTER_EIP,
    field::HOST_IA32_PAT,
    field::HOST_IA32_EFER,
];

/// The segment fields: selector, base, limit, access rights.
const SEGMENTS: [(u32, u32, u32, u32); 8] = [
    (
        field::GUEST_ES_SELECTOR,
        field::GUEST_ES_BASE,
        field::GUEST_ES_LIMIT,
        field::GUEST_ES_AR_BYTES,
    ),
    (
        field::GUEST_CS_SELECTOR,
        field::GUEST_CS_BASE,
        field::GUEST_CS_LIMIT,
        field::GUEST_CS_AR_BYTES,
    ),
    (
        field::GUEST_SS_SELECTOR,
        field::GUEST_SS_BASE,
        field::GUEST_SS_LIMIT,
        field::GUEST_SS_AR_BYTES,
    ),
    (
        field::GUEST_DS_SELECTOR,
        field::GUEST_DS_BASE,
        field::GUEST_DS_LIMIT,
        field::GUEST_DS_AR_BYTES,
    ),
    (
        field::GUEST_FS_SELECTOR,
        field::GUEST_FS_BASE,
        field::GUEST_FS_LIMIT,
        field::GUEST_FS_AR_BYTES,
    ),
    (
        field::GUEST_GS_SELECTOR,
        field::GUEST_GS_BASE,
        field::GUEST_GS_LIMIT,
        field::GUEST_GS_AR_BYTES,
    ),
    (
        field::GUEST_LDTR_SELECTOR,
        field::GUEST_LDTR_BASE,
        field::GUEST_LDTR_LIMIT,
        field::GUEST_LDTR_AR_BYTES,
    ),
    (
        field::GUEST_TR_SELECTOR,
        field::GUEST_TR_BASE,
        field::GUEST_TR_LIMIT,
        field::GUEST_TR_AR_BYTES,
    ),
];

/// The segments of `a`, in [`SEGMENTS`] order.
fn segments_mut(a: &mut ArchState) -> [&mut VmcbSeg; 8] {
    [
        &mut a.es, &mut a.cs, &mut a.ss, &mut a.ds, &mut a.fs, &mut a.gs, &mut a.ldt, &mut a.tr,
    ]
}

/// VMCB-format attributes to VMX access rights (a segment that is not present is unusable).
fn ar_from_attrib(attrib: u16) -> u64 {
    let a = u64::from(attrib);
    let v = (a & 0xff) | ((a & 0xf00) << 4);
    if a & 0x80 == 0 {
        v | u64::from(ar::UNUSABLE)
    } else {
        v
    }
}

/// VMX access rights to VMCB-format attributes.
fn attrib_from_ar(ar_bytes: u64) -> u16 {
    if ar_bytes & u64::from(ar::UNUSABLE) != 0 {
        return 0;
    }
    ((ar_bytes & 0xff) | ((ar_bytes >> 4) & 0xf00)) as u16
}

/// Writes a VMCS field; failures show up at the next entry as a VM-instruction error.
fn w(f: u32, v: u64) {
    let _ = vmwrite(f, v);
}

/// The CR0 bits the guest does not own: NE (VMX needs it set), PG (its changes switch long
/// mode on and off, which Keel mirrors in the entry controls) and the other fixed-1 bits but
/// PE (unrestricted guest). Computed once per vCPU; exits read it back from the VMCS.
fn initial_cr0_mask() -> u64 {
    // SAFETY: The fixed-bit MSRs exist on VMX CPUs.
    let fixed0 = unsafe { x86::rdmsr(msr::IA32_VMX_CR0_FIXED0) };
    (fixed0 & 0xffff_ffff & !1) | CR0_NE | CR0_PG
}

/// The CR4 bits the guest does not own: VMXE and the other fixed-1 bits.
fn initial_cr4_mask() -> u64 {
    // SAFETY: As above.
    let fixed0 = unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED0) };
    fixed0 | CR4_VMXE
}

/// The current VMCS's CR0 and CR4 guest/host masks.
fn masks() -> (u64, u64) {
    (
        vmread(field::CR0_GUEST_HOST_MASK),
        vmread(field::CR4_GUEST_HOST_MASK),
    )
}

/// The guest's CR0 in hardware for the value it sees: the mask's bits are the ones VMX
/// forces on, but PG, which stays the guest's.
fn hw_cr0(cr0: u64) -> u64 {
    cr0 | (masks().0 & !CR0_PG)
}

/// The guest's CR4 in hardware for the value it sees.
fn hw_cr4(cr4: u64) -> u64 {
    cr4 | masks().1
}

/// Sets up the VMCS controls of a vCPU, once.
fn setup_controls(v: &mut VcpuState) -> Result<(), VmFail> {
    let ctl = |c, wanted, optional| control(c, wanted, optional).map_err(|_| VmFail::Invalid);
    let pin = ctl(
        Ctl::Pin,
        pin_based::EXT_INTR_EXITING | pin_based::NMI_EXITING,
        pin_based::PREEMPTION_TIMER,
    )?;
    let proc = ctl(
        Ctl::Proc,
        cpu_based::HLT_EXITING
            | cpu_based::MWAIT_EXITING
            | cpu_based::MONITOR_EXITING
            | cpu_based::UNCOND_IO_EXITING
            | cpu_based::USE_MSR_BITMAPS
            | cpu_based::ACTIVATE_SECONDARY_CONTROLS,
        0,
    )?;
    let proc2 = ctl(
        Ctl::Proc2,
        secondary::ENABLE_EPT | secondary::UNRESTRICTED_GUEST,
        secondary::ENABLE_RDTSCP | secondary::ENABLE_INVPCID | secondary::ENABLE_XSAVES,
    )?;
    let exit = ctl(
        Ctl::Exit,
        exit_ctl::HOST_ADDR_SPACE_SIZE
            | exit_ctl::SAVE_IA32_PAT
            | exit_ctl::LOAD_IA32_PAT
            | exit_ctl::SAVE_IA32_EFER
            | exit_ctl::LOAD_IA32_EFER,
        0,
    )?;
    let entry = ctl(
        Ctl::Entry,
        entry_ctl::LOAD_DEBUG_CONTROLS | entry_ctl::LOAD_IA32_PAT | entry_ctl::LOAD_IA32_EFER,
        0,
    )?;

    // The MSR bitmap: everything exits but the pass-through MSRs.
    let bitmap = &mut v.msr_map[0].0;
    bitmap.fill(0xff);
    for m in guest::PASSTHROUGH_MSRS {
        let (base, index) = if m >= 0xc000_0000 {
            (1024, (m - 0xc000_0000) as usize)
        } else {
            (0, m as usize)
        };
        for half in [0, 2048] {
            bitmap[half + base + index / 8] &= !(1 << (index % 8));
        }
    }
    if pin & u64::from(pin_based::PREEMPTION_TIMER) != 0 {
        // A backstop for the host's interrupts, which end the guest's turn on their own: some
        // emulators (Bochs) hold them while the guest runs with IF clear. 2^19 TSC ticks per
        // entry (under 0.2 ms at 3 GHz; Bochs's TSC is slower); the timer counts at the TSC's
        // rate >> IA32_VMX_MISC[4:0].
        // SAFETY: IA32_VMX_MISC exists on VMX CPUs.
        let rate = unsafe { x86::rdmsr(msr::IA32_VMX_MISC) } & 0x1f;
        vmwrite(field::VMX_PREEMPTION_TIMER_VALUE, (1u64 << 19) >> rate)?;
    }
    let bitmap_pa = v.pa_of(v.msr_map[0].0.as_ptr());
    let eptp = slat::eptp(v.domain.slat_root);
    for (f, val) in [
        (field::PIN_BASED_VM_EXEC_CONTROL, pin),
        (field::CPU_BASED_VM_EXEC_CONTROL, proc),
        (field::SECONDARY_VM_EXEC_CONTROL, proc2),
        (field::VM_EXIT_CONTROLS, exit),
        (field::VM_ENTRY_CONTROLS, entry),
        // #UD: VMMCALL is a hypercall too.
        (field::EXCEPTION_BITMAP, 1 << UD),
        (field::PAGE_FAULT_ERROR_CODE_MASK, 0),
        (field::PAGE_FAULT_ERROR_CODE_MATCH, 0),
        (field::CR3_TARGET_COUNT, 0),
        (field::VM_EXIT_MSR_STORE_COUNT, 0),
        (field::VM_EXIT_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_INTR_INFO_FIELD, 0),
        (field::MSR_BITMAP, bitmap_pa),
        (field::EPT_POINTER, eptp),
        (field::CR0_GUEST_HOST_MASK, initial_cr0_mask()),
        (field::CR4_GUEST_HOST_MASK, initial_cr4_mask()),
        (field::VMCS_LINK_POINTER, u64::MAX),
        (field::GUEST_DR7, 0x400),
        (field::GUEST_IA32_DEBUGCTL, 0),
        (field::GUEST_ACTIVITY_STATE, 0),
        (field::GUEST_INTERRUPTIBILITY_INFO, 0),
        (field::GUEST_PENDING_DBG_EXCEPTIONS, 0),
    ] {
        vmwrite(f, val)?;
    }
    Ok(())
}

/// Writes `a` into the current VMCS.
fn load_arch(a: &mut ArchState) {
    w(field::GUEST_RIP, a.rip);
    w(field::GUEST_RSP, a.rsp);
    w(field::GUEST_RFLAGS, a.rflags | 2);
    let (cr0, cr4, efer) = (a.cr0, a.cr4, a.efer);
    for (seg, (fsel, fbase, flimit, far)) in segments_mut(a).into_iter().zip(SEGMENTS) {
        w(fsel, seg.selector.into());
        w(fbase, seg.base);
        w(flimit, seg.limit.into());
        w(far, ar_from_attrib(seg.attrib));
    }
    w(field::GUEST_GDTR_BASE, a.gdt.base);
    w(field::GUEST_GDTR_LIMIT, a.gdt.limit.into());
    w(field::GUEST_IDTR_BASE, a.idt.base);
    w(field::GUEST_IDTR_LIMIT, a.idt.limit.into());
    w(field::GUEST_CR0, hw_cr0(cr0));
    w(field::CR0_READ_SHADOW, cr0);
    w(field::GUEST_CR3, a.cr3);
    w(field::GUEST_CR4, hw_cr4(cr4));
    w(field::CR4_READ_SHADOW, cr4);
    w(field::GUEST_IA32_EFER, efer);
    set_long_mode(efer & EFER_LMA != 0);
    w(field::GUEST_IA32_PAT, a.pat);
    w(field::GUEST_SYSENTER_CS, a.sysenter_cs);
    w(field::GUEST_SYSENTER_ESP, a.sysenter_esp);
    w(field::GUEST_SYSENTER_EIP, a.sysenter_eip);
}

/// Reads the current VMCS into `a`.
fn save_arch(a: &mut ArchState) {
    a.rip = vmread(field::GUEST_RIP);
    a.rsp = vmread(field::GUEST_RSP);
    a.rflags = vmread(field::GUEST_RFLAGS);
    for (seg, (fsel, fbase, flimit, far)) in segments_mut(a).into_iter().zip(SEGMENTS) {
        seg.selector = vmread(fsel) as u16;
        seg.base = vmread(fbase);
        seg.limit = vmread(flimit) as u32;
        seg.attrib = attrib_from_ar(vmread(far));
    }
    a.gdt.base = vmread(field::GUEST_GDTR_BASE);
    a.gdt.limit = vmread(field::GUEST_GDTR_LIMIT) as u32;
    a.idt.base = vmread(field::GUEST_IDTR_BASE);
    a.idt.limit = vmread(field::GUEST_IDTR_LIMIT) as u32;
    let (m0, m4) = masks();
    a.cr0 = (vmread(field::GUEST_CR0) & !m0) | (vmread(field::CR0_READ_SHADOW) & m0);
    a.cr3 = vmread(field::GUEST_CR3);
    a.cr4 = (vmread(field::GUEST_CR4) & !m4) | (vmread(field::CR4_READ_SHADOW) & m4);
    a.efer = vmread(field::GUEST_IA32_EFER);
    a.pat = vmread(field::GUEST_IA32_PAT);
    a.sysenter_cs = vmread(field::GUEST_SYSENTER_CS);
    a.sysenter_esp = vmread(field::GUEST_SYSENTER_ESP);
    a.sysenter_eip = vmread(field::GUEST_SYSENTER_EIP);
}

/// Sets or clears the "IA-32e mode guest" entry control.
fn set_long_mode(on: bool) {
    let entry = vmread(field::VM_ENTRY_CONTROLS);
    let bit = u64::from(entry_ctl::IA32E_MODE);
    w(
        field::VM_ENTRY_CONTROLS,
        if on { entry | bit } else { entry & !bit },
    );
}

/// INVEPT single-context: drops cached translations of this EPT (a new domain may reuse a
/// freed domain's table pages).
fn invept(eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: In VMX root operation with EPT; the descriptor is valid for the type.
    unsafe { asm!("invept {}, [{}]", in(reg) 1u64, in(reg) &desc, options(nostack)) };
}

/// A vCPU during one VMX exit.
struct Exit<'a> {
    v: &'a mut VcpuState,
}

impl GuestVendor for Exit<'_> {
    fn vcpu(&mut self) -> &mut VcpuState {
        self.v
    }

    fn vcpu_ref(&self) -> &VcpuState {
        self.v
    }

    fn rip(&self) -> u64 {
        vmread(field::GUEST_RIP)
    }

    fn set_rip(&mut self, rip: u64) {
        w(field::GUEST_RIP, rip);
        let blocking = vmread(field::GUEST_INTERRUPTIBILITY_INFO) as u32;
        if blocking & (interruptibility::STI | interruptibility::MOV_SS) != 0 {
            let cleared = blocking & !(interruptibility::STI | interruptibility::MOV_SS);
            w(field::GUEST_INTERRUPTIBILITY_INFO, cleared.into());
        }
    }

    fn cpl(&self) -> u8 {
        ((vmread(field::GUEST_SS_AR_BYTES) >> 5) & 3) as u8
    }

    fn control_regs(&self) -> (u64, u64, u64, u64) {
        let (m0, m4) = masks();
        (
            (vmread(field::GUEST_CR0) & !m0) | (vmread(field::CR0_READ_SHADOW) & m0),
            vmread(field::GUEST_CR3),
            (vmread(field::GUEST_CR4) & !m4) | (vmread(field::CR4_READ_SHADOW) & m4),
            vmread(field::GUEST_IA32_EFER),
        )
    }

    fn cs(&self) -> (u64, u16) {
        (
            vmread(field::GUEST_CS_BASE),
            attrib_from_ar(vmread(field::GUEST_CS_AR_BYTES)),
        )
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let mut info = u32::from(vector) | intr_info::TYPE_HW_EXCEPTION | intr_info::VALID;
        if let Some(code) = error_code {
            info |= intr_info::DELIVER_ERROR_CODE;
            w(field::VM_ENTRY_EXCEPTION_ERROR_CODE, code.into());
        }
        w(field::VM_ENTRY_INTR_INFO_FIELD, info.into());
    }

    fn insn_len(&mut self) -> Option<u64> {
        Some(vmread(field::VM_EXIT_INSTRUCTION_LEN))
    }

    fn set_efer(&mut self, efer: u64) {
        w(field::GUEST_IA32_EFER, efer);
    }

    fn pat(&self) -> u64 {
        vmread(field::GUEST_IA32_PAT)
    }

    fn set_pat(&mut self, pat: u64) {
        w(field::GUEST_IA32_PAT, pat);
    }
}

impl Exit<'_> {
    /// A MOV to or from a control register the guest does not own.
    fn cr_access(&mut self) -> Next {
        let q = CrAccess::decode(vmread(field::EXIT_QUALIFICATION));
        let gpr = |v: &VcpuState, n: u8| {
            if n == 4 {
                vmread(field::GUEST_RSP)
            } else {
                v.regs.gpr[usize::from(n)]
            }
        };
        let (cr0, _, _, efer) = self.control_regs();
        match (q.cr, q.access_type) {
            (0, 0) => {
                let value = gpr(self.v, q.gpr) & 0xffff_ffff;
                let paging_on = value & CR0_PG != 0 && cr0 & CR0_PG == 0;
                let paging_off = value & CR0_PG == 0 && cr0 & CR0_PG != 0;
                let (_, _, cr4, _) = self.control_regs();
                if paging_on && efer & EFER_LME != 0 {
                    if cr4 & CR4_PAE == 0 {
                        self.inject(GP, Some(0));
                        return Next::Resume;
                    }
                    w(field::GUEST_IA32_EFER, efer | EFER_LMA);
                    set_long_mode(true);
                } else if paging_off && efer & EFER_LMA != 0 {
                    w(field::GUEST_IA32_EFER, efer & !EFER_LMA);
                    set_long_mode(false);
                }
                w(field::GUEST_CR0, hw_cr0(value));
                w(field::CR0_READ_SHADOW, value);
            }
            (4, 0) => {
                let value = gpr(self.v, q.gpr);
                if value & CR4_VMXE != 0 {
                    self.inject(GP, Some(0));
                    return Next::Resume;
                }
                w(field::GUEST_CR4, hw_cr4(value));
                w(field::CR4_READ_SHADOW, value);
            }
            (3, 0) => w(field::GUEST_CR3, gpr(self.v, q.gpr)),
            (3, 1) => {
                let value = vmread(field::GUEST_CR3);
                if q.gpr == 4 {
                    w(field::GUEST_RSP, value);
                } else {
                    self.v.regs.gpr[usize::from(q.gpr)] = value;
                }
            }
            _ => {
                let rip = self.rip();
                return guest::unhandled(self, 28, rip);
            }
        }
        guest::skip(self);
        Next::Resume
    }
}

/// An exit that interrupted the delivery of an event (a fault on the IDT, a host interrupt
/// mid-delivery) would lose it: NMIs and hardware exceptions are injected again at the next
/// entry. Software interrupts and exceptions are not: RIP still points at the instruction,
/// which runs again.
fn reinject_vectoring() {
    let info = vmread(field::IDT_VECTORING_INFO_FIELD) as u32;
    let kind = info & intr_info::TYPE_MASK;
    if info & intr_info::VALID == 0
        || (kind != intr_info::TYPE_NMI && kind != intr_info::TYPE_HW_EXCEPTION)
    {
        return;
    }
    if info & intr_info::DELIVER_ERROR_CODE != 0 {
        w(
            field::VM_ENTRY_EXCEPTION_ERROR_CODE,
            vmread(field::IDT_VECTORING_ERROR_CODE),
        );
    }
    // Bits 30:12 of the vectoring information are reserved in the entry field.
    w(field::VM_ENTRY_INTR_INFO_FIELD, (info & 0x8000_0fff).into());
}

/// Handles one guest exit. `nmi` is set when an NMI arrived while the guest ran (Dom0 gets
/// it at its next entry).
fn handle_exit(v: &mut VcpuState, reason: u32, nmi: &AtomicBool) -> Next {
    let mut g = Exit { v };
    let basic = reason & 0xffff;
    if reason & (1 << 31) != 0 {
        g.v.exit = GuestExit::EntryFailure {
            reason: reason.into(),
            qualification: vmread(field::EXIT_QUALIFICATION),
        };
        g.v.exit_rip = g.rip();
        return Next::ToDom0;
    }
    match basic {
        0 => {
            let info = vmread(field::VM_EXIT_INTR_INFO) as u32;
            if info & intr_info::TYPE_MASK == intr_info::TYPE_NMI {
                nmi.store(true, Ordering::Relaxed);
                return Next::ToDom0;
            }
            if info & 0xff == u32::from(UD) {
                return guest::invalid_opcode(&mut g);
            }
            let rip = g.rip();
            guest::unhandled(&mut g, reason.into(), rip)
        }
        // An external interrupt: Dom0's, still pending; Dom0 takes it once it runs again. The
        // preemption timer likewise gives Dom0 its turn.
        1 | 52 => Next::ToDom0,
        2 => guest::shutdown(&mut g),
        // INIT: Linux sends none to a CPU it is using; ignore it.
        3 => Next::Resume,
        10 => guest::cpuid(&mut g, Vendor::Vmx),
        12 => guest::hlt(&mut g),
        13 => {
            x86::wbinvd();
            guest::skip(&mut g);
            Next::Resume
        }
        18 => {
            let len = vmread(field::VM_EXIT_INSTRUCTION_LEN) as u8;
            guest::hypercall(&mut g, len)
        }
        // Other VMX instructions, MONITOR and MWAIT: #UD, as CPUID says.
        19..=27 | 36 | 39 | 50 | 53 | 59 => {
            g.inject(UD, None);
            Next::Resume
        }
        28 => g.cr_access(),
        30 => {
            let q = vmread(field::EXIT_QUALIFICATION);
            let len = vmread(field::VM_EXIT_INSTRUCTION_LEN) as u8;
            if q & (1 << 4) != 0 {
                // INS/OUTS: not yet.
                let rip = g.rip();
                return guest::unhandled(&mut g, reason.into(), rip);
            }
            let size = (q & 7) as u8 + 1;
            guest::io(&mut g, (q >> 16) as u16, size, q & (1 << 3) != 0, len)
        }
        31 => guest::msr(&mut g, false),
        32 => guest::msr(&mut g, true),
        48 => {
            let q = vmread(field::EXIT_QUALIFICATION);
            let gpa = vmread(field::GUEST_PHYSICAL_ADDRESS);
            let access = if q & 4 != 0 {
                4
            } else if q & 2 != 0 {
                2
            } else {
                1
            };
            guest::slat_fault(&mut g, gpa, access)
        }
        55 => {
            let supported = g.v.domain.xcr0_supported;
            guest::xsetbv(&mut g, supported)
        }
        _ => {
            let q = vmread(field::EXIT_QUALIFICATION);
            guest::unhandled(&mut g, reason.into(), q)
        }
    }
}

/// Runs the vCPU `v` on this CPU until an exit for Dom0 (`v.exit` says which). Dom0's VMCS
/// (in `dom0`) is current on entry and again on return. An NMI that arrives while the guest
/// runs, or in root mode, ends the guest's turn and is left pending for Dom0.
///
/// # Safety
///
/// Called from Dom0's exit handler on this CPU; `v` is not running anywhere else, its VMCS
/// region and maps are part of it, and its domain's tables stay allocated during the run.
pub(crate) unsafe fn run(dom0: &mut CpuState, v: &mut VcpuState) {
    let mut host = [0u64; HOST_FIELDS.len()];
    for (h, f) in host.iter_mut().zip(HOST_FIELDS) {
        *h = vmread(f);
    }
    let dom0_pa = dom0.control.0.as_ptr() as u64 - dom0.info.page_offset_base;
    let vmcs_pa = v.pa_of(v.control.0.as_ptr());
    if !v.initialized {
        // SAFETY: IA32_VMX_BASIC exists on VMX CPUs.
        let basic = unsafe { x86::rdmsr(msr::IA32_VMX_BASIC) };
        let revision = ((basic & 0x7fff_ffff) as u32).to_le_bytes();
        v.control.0[0] = revision[0];
        v.control.0[1] = revision[1];
        v.control.0[2] = revision[2];
        v.control.0[3] = revision[3];
    }
    // SAFETY: The vCPU's VMCS region holds the revision id and is not current on another
    // CPU (each run clears it at its end).
    let loaded = unsafe { vmclear(vmcs_pa).and_then(|()| vmptrld(vmcs_pa)) };
    let ok = loaded.and_then(|()| {
        if !v.initialized {
            setup_controls(v)?;
            v.initialized = true;
            v.arch_dirty = true;
        }
        Ok(())
    });
    if let Err(e) = ok {
        v.exit = GuestExit::EntryFailure {
            reason: 0xffff_ffff,
            qualification: match e {
                VmFail::Invalid => u64::MAX,
                VmFail::Valid(n) => n.into(),
            },
        };
        // SAFETY: Dom0's VMCS stays valid; make it current again.
        unsafe {
            let _ = vmclear(vmcs_pa);
            let _ = vmptrld(dom0_pa);
        }
        return;
    }
    for (h, f) in host.iter().zip(HOST_FIELDS) {
        w(f, *h);
    }
    w(field::HOST_RIP, vmx_guest_exit as *const () as u64);
    if v.arch_dirty {
        load_arch(&mut v.arch);
        v.arch_dirty = false;
    }
    guest::complete_pending(&mut Exit { v: &mut *v });
    w(field::VM_ENTRY_INTR_INFO_FIELD, 0);
    invept(slat::eptp(v.domain.slat_root));

    // Dom0's state that VM exits do not restore: the syscall MSRs, CR2 and the FPU.
    let mut dom0_msrs = [0u64; SWITCHED_MSRS.len()];
    let guest_msrs = [
        v.arch.kernel_gs_base,
        v.arch.star,
        v.arch.lstar,
        v.arch.cstar,
        v.arch.sfmask,
    ];
    let xcr0 = guest::host_xcr0(v);
    let dom0_cr2 = x86::read_cr2();
    // SAFETY: These MSRs exist on every x86-64 CPU; the guest's values are the guest's own
    // and only matter in the guest (root mode does not use them). Dom0's are restored below,
    // before it runs. CR2 likewise.
    unsafe {
        for ((m, d), g) in SWITCHED_MSRS.iter().zip(&mut dom0_msrs).zip(guest_msrs) {
            *d = x86::rdmsr(*m);
            x86::wrmsr(*m, g);
        }
        x86::write_cr2(v.arch.cr2);
        guest::fpu_enter(v, xcr0);
    }

    let mut launched = false;
    loop {
        if dom0.nmi_pending.load(Ordering::Relaxed) {
            // Dom0 has an NMI to take: give it the CPU first.
            v.exit = GuestExit::None;
            v.exit_rip = vmread(field::GUEST_RIP);
            break;
        }
        // SAFETY: The vCPU's VMCS is current and complete; the trampoline returns here after
        // the next VM exit or a failed entry.
        let failed = unsafe { vmx_guest_enter(&mut v.regs, u64::from(launched)) };
        if failed != 0 {
            let error = vmread(field::VM_INSTRUCTION_ERROR);
            v.exit = GuestExit::EntryFailure {
                reason: 0xffff_ffff | (error << 32),
                qualification: 0,
            };
            v.exit_rip = vmread(field::GUEST_RIP);
            break;
        }
        launched = true;
        let reason = vmread(field::VM_EXIT_REASON) as u32;
        v.counters[crate::keel_core::exit::ExitKind::from_vmx(reason) as usize] += 1;
        v.exit = GuestExit::None;
        reinject_vectoring();
        match handle_exit(v, reason, &dom0.nmi_pending) {
            Next::Resume => continue,
            Next::ToDom0 => break,
        }
    }

    // SAFETY: As above, in reverse.
    unsafe {
        guest::fpu_leave(v, xcr0);
        v.arch.cr2 = x86::read_cr2();
        x86::write_cr2(dom0_cr2);
        let mut saved = [0u64; SWITCHED_MSRS.len()];
        for ((m, d), s) in SWITCHED_MSRS.iter().zip(dom0_msrs).zip(&mut saved) {
            *s = x86::rdmsr(*m);
            x86::wrmsr(*m, d);
        }
        [
            v.arch.kernel_gs_base,
            v.arch.star,
            v.arch.lstar,
            v.arch.cstar,
            v.arch.sfmask,
        ] = saved;
    }
    if matches!(v.exit, GuestExit::EntryFailure { .. }) {
        // The guest state was refused: keep Dom0's copy and load it again next time.
        v.arch_dirty = true;
    } else {
        save_arch(&mut v.arch);
    }
    // SAFETY: Writes the vCPU's VMCS back to memory (it may run on another CPU next) and
    // makes Dom0's current again, as the Run hypercall found it.
    unsafe {
        let _ = vmclear(vmcs_pa);
        let _ = vmptrld(dom0_pa);
    }
}

/// Enters the guest whose VMCS is current.
///
/// Arguments: RDI = the vCPU's GPRs, RSI = nonzero to VMRESUME (the VMCS was launched in this
/// run), zero to VMLAUNCH. Sets HOST_RSP to its own stack; HOST_RIP must be
/// [`vmx_guest_exit`], which saves the guest's GPRs and returns from this function with 0.
/// Returns 1 when VMLAUNCH/VMRESUME failed (VM_INSTRUCTION_ERROR says why). The callee-saved
/// registers are preserved; the guest's values are cleared from the others.
///
/// # Safety
///
/// In VMX root operation, interrupts off, the vCPU's complete VMCS current.
#[unsafe(naked)]
unsafe extern "C" fn vmx_guest_enter(regs: *mut GuestRegs, resume: u64) -> u64 {
    naked_asm!(
        objtool_frame_non_standard!(),
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
        "push rdi",
        "mov rax, {host_rsp}",
        "vmwrite rax, rsp",
        "mov rax, rdi",
        "test rsi, rsi",
        load_gprs_from_rax!(),
        "mov rax, [rax]",
        "jnz 2f",
        "vmlaunch",
        "jmp 3f",
        "2:",
        "vmresume",
        "3:",
        // The entry failed: nothing of the guest's was loaded but GPRs; RSP is unchanged.
        "pop rdi",
        "mov eax, 1",
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        host_rsp = const field::HOST_RSP,
        this = sym vmx_guest_enter,
    )
}

/// The guest's VM-exit trampoline (HOST_RIP of every vCPU VMCS): RSP is what
/// [`vmx_guest_enter`] set (the GPR pointer on top, then its saved registers and return
/// address). Saves the guest's GPRs and returns 0 from `vmx_guest_enter`.
///
/// # Safety
///
/// Entered by the processor on VM exit only.
#[unsafe(naked)]
unsafe extern "C" fn vmx_guest_exit() {
    naked_asm!(
        objtool_frame_non_standard!(),
        "endbr64",
        "push rax",
        "mov rax, [rsp + 8]",
        save_gprs_to_rax!(),
        "pop rcx",
        "mov [rax], rcx",
        "pop rdi",
        "xor eax, eax",
        guest_run_epilogue!(),
        this = sym vmx_guest_exit,
    )
}
