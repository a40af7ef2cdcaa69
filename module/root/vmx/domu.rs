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
    arch::naked_asm,
    sync::atomic::{AtomicBool, Ordering},
};

use super::ops::{invept, vmclear, vmptrld, VmFail, Vmcs};
use super::{ar_from_attrib, attrib_from_ar, control, write_control_regs, write_pdptes, Ctl, Vmx};
use crate::keel_core::{
    arch::{cr0, msr, rflags, vector},
    caps::Vendor,
    exit::{Exit, VmxInfo},
    slat, state,
    vmcb::VmcbSeg,
    vmcs::{
        cpu_based, entry_ctl, exit_ctl, field, interruptibility, intr_info, pin_based, secondary,
        Field,
    },
};
use crate::root::exit::{self, Action, UserExit};
use crate::root::fpu;
use crate::root::vcpu::{
    benign_exception, switch_back_tsc_aux, switch_tsc_aux, take_forced_failure, ArchState,
    VcpuState, INTERCEPTED_EXCEPTIONS, IRQ_VALID, PASSTHROUGH_MSRS,
};
use crate::root::{
    guest_run_epilogue, load_gprs_from_rax, objtool_frame_non_standard, pop_callee_saved_ret,
    push_callee_saved, save_gprs_to_rax, x86, GuestRegs,
};

/// MSRs each run switches between Dom0's and the guest's values.
const SWITCHED_MSRS: [u32; 5] = [
    msr::KERNEL_GS_BASE,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
];

/// Host-state fields copied from Dom0's VMCS into the vCPU's at each run (the root-mode state
/// of this CPU), by width.
const HOST_FIELDS_16: [Field<u16>; 3] = [
    field::HOST_CS_SELECTOR,
    field::HOST_SS_SELECTOR,
    field::HOST_TR_SELECTOR,
];
const HOST_FIELDS_32: [Field<u32>; 1] = [field::HOST_IA32_SYSENTER_CS];
const HOST_FIELDS_64: [Field<u64>; 12] = [
    field::HOST_CR0,
    field::HOST_CR3,
    field::HOST_CR4,
    field::HOST_FS_BASE,
    field::HOST_GS_BASE,
    field::HOST_TR_BASE,
    field::HOST_GDTR_BASE,
    field::HOST_IDTR_BASE,
    field::HOST_IA32_SYSENTER_ESP,
    field::HOST_IA32_SYSENTER_EIP,
    field::HOST_IA32_PAT,
    field::HOST_IA32_EFER,
];

/// This CPU's host state, read from Dom0's VMCS.
struct HostState {
    f16: [u16; HOST_FIELDS_16.len()],
    f32: [u32; HOST_FIELDS_32.len()],
    f64: [u64; HOST_FIELDS_64.len()],
}

impl HostState {
    fn read(vmcs: &Vmcs) -> Self {
        Self {
            f16: HOST_FIELDS_16.map(|f| vmcs.read(f)),
            f32: HOST_FIELDS_32.map(|f| vmcs.read(f)),
            f64: HOST_FIELDS_64.map(|f| vmcs.read(f)),
        }
    }

    fn write(&self, vmcs: &Vmcs) {
        for (f, v) in HOST_FIELDS_16.iter().zip(self.f16) {
            vmcs.write(*f, v);
        }
        for (f, v) in HOST_FIELDS_32.iter().zip(self.f32) {
            vmcs.write(*f, v);
        }
        for (f, v) in HOST_FIELDS_64.iter().zip(self.f64) {
            vmcs.write(*f, v);
        }
    }
}

/// The segment fields: selector, base, limit, access rights.
type SegFields = (Field<u16>, Field<u64>, Field<u32>, Field<u32>);
const SEGMENTS: [SegFields; 8] = [
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

/// The CR0 bits the guest does not own: NE (VMX needs it set), PG (its changes switch long
/// mode on and off, which Keel mirrors in the entry controls) and the other fixed-1 bits but
/// PE (unrestricted guest). Computed once per vCPU; exits read it back from the VMCS.
fn initial_cr0_mask() -> u64 {
    // SAFETY: The fixed-bit MSRs exist on VMX CPUs.
    let fixed0 = unsafe { x86::rdmsr(msr::IA32_VMX_CR0_FIXED0) };
    (fixed0 & 0xffff_ffff & !cr0::PE) | cr0::NE | cr0::PG
}

/// The CR4 bits the guest does not own: VMX's fixed-1 bits and every bit the guest may not
/// set (VMXE among them), so that setting one exits and gets #GP (`keel_core::state`).
fn initial_cr4_mask(limits: &state::Limits) -> u64 {
    // SAFETY: As above.
    let fixed0 = unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED0) };
    fixed0 | !limits.cr4
}

/// The VMX-preemption timer's start value: a backstop for the host's interrupts, which end the
/// guest's turn on their own but some emulators (Bochs) hold while the guest runs with IF
/// clear. 2^19 TSC ticks per entry (under 0.2 ms at 3 GHz; Bochs's TSC is slower); the timer
/// counts at the TSC's rate >> IA32_VMX_MISC[4:0].
fn preemption_ticks() -> u32 {
    // SAFETY: IA32_VMX_MISC exists on VMX CPUs.
    let rate = unsafe { x86::rdmsr(msr::IA32_VMX_MISC) } & 0x1f;
    ((1u64 << 19) >> rate) as u32
}

/// The controls that give the CPU back to Dom0 whatever the guest does: external-interrupt
/// and NMI exiting, and the preemption timer (where the CPU has it) with its start value.
/// Written at every run, so that nothing a failed or refused entry left behind lets a guest
/// keep a host CPU.
fn keep_exits(vmcs: &Vmcs) {
    let pin = vmcs.read(field::PIN_BASED_VM_EXEC_CONTROL);
    vmcs.write(
        field::PIN_BASED_VM_EXEC_CONTROL,
        pin | pin_based::EXT_INTR_EXITING | pin_based::NMI_EXITING,
    );
    if pin & pin_based::PREEMPTION_TIMER != 0 {
        vmcs.write(field::VMX_PREEMPTION_TIMER_VALUE, preemption_ticks());
    }
}

/// An activity state beyond the four the SDM defines: see `take_forced_failure`.
const FORCED_FAILURE_ACTIVITY: u32 = 0xff;

/// Sets up the VMCS controls of a vCPU, once.
fn setup_controls(
    vmcs: &Vmcs,
    v: &mut VcpuState,
    slat_root: u64,
    limits: &state::Limits,
) -> Result<(), VmFail> {
    let ctl = |c, wanted, optional| control(c, wanted, optional).map_err(|_| VmFail::Invalid);
    let pin = ctl(
        Ctl::Pin,
        pin_based::EXT_INTR_EXITING | pin_based::NMI_EXITING,
        pin_based::PREEMPTION_TIMER | pin_based::VIRTUAL_NMIS,
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
            | exit_ctl::SAVE_DEBUG_CONTROLS
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
    for m in PASSTHROUGH_MSRS {
        let (base, index) = if m >= 0xc000_0000 {
            (1024, (m - 0xc000_0000) as usize)
        } else {
            (0, m as usize)
        };
        for half in [0, 2048] {
            bitmap[half + base + index / 8] &= !(1 << (index % 8));
        }
    }
    let bitmap_pa = v.pa_of(v.msr_map[0].0.as_ptr());
    for (f, val) in [
        (field::PIN_BASED_VM_EXEC_CONTROL, pin),
        (field::CPU_BASED_VM_EXEC_CONTROL, proc),
        (field::SECONDARY_VM_EXEC_CONTROL, proc2),
        (field::VM_EXIT_CONTROLS, exit),
        (field::VM_ENTRY_CONTROLS, entry),
        // #UD: VMMCALL is a hypercall too.
        (field::EXCEPTION_BITMAP, INTERCEPTED_EXCEPTIONS),
        (field::PAGE_FAULT_ERROR_CODE_MASK, 0),
        (field::PAGE_FAULT_ERROR_CODE_MATCH, 0),
        (field::CR3_TARGET_COUNT, 0),
        (field::VM_EXIT_MSR_STORE_COUNT, 0),
        (field::VM_EXIT_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_INTR_INFO_FIELD, 0),
        (field::GUEST_ACTIVITY_STATE, 0),
        (field::GUEST_INTERRUPTIBILITY_INFO, 0),
    ] {
        vmcs.try_write(f, val)?;
    }
    for (f, val) in [
        (field::MSR_BITMAP, bitmap_pa),
        (field::EPT_POINTER, slat::eptp(slat_root)),
        (field::CR0_GUEST_HOST_MASK, initial_cr0_mask()),
        (field::CR4_GUEST_HOST_MASK, initial_cr4_mask(limits)),
        (field::VMCS_LINK_POINTER, u64::MAX),
        (field::GUEST_DR7, 0x400),
        (field::GUEST_IA32_DEBUGCTL, 0),
        (field::GUEST_PENDING_DBG_EXCEPTIONS, 0),
    ] {
        vmcs.try_write(f, val)?;
    }
    Ok(())
}

/// Writes `a` into the current VMCS.
fn load_arch(vmcs: &Vmcs, a: &mut ArchState) {
    let w = |f, v| vmcs.write(f, v);
    w(field::GUEST_RIP, a.rip);
    w(field::GUEST_RSP, a.rsp);
    w(field::GUEST_RFLAGS, a.rflags | 2);
    for (seg, (fsel, fbase, flimit, far)) in segments_mut(a).into_iter().zip(SEGMENTS) {
        vmcs.write(fsel, seg.selector);
        vmcs.write(fbase, seg.base);
        vmcs.write(flimit, seg.limit);
        vmcs.write(far, ar_from_attrib(seg.attrib));
    }
    w(field::GUEST_GDTR_BASE, a.gdt.base);
    vmcs.write(field::GUEST_GDTR_LIMIT, a.gdt.limit);
    w(field::GUEST_IDTR_BASE, a.idt.base);
    vmcs.write(field::GUEST_IDTR_LIMIT, a.idt.limit);
    write_control_regs(vmcs, &a.ctl());
    w(field::GUEST_IA32_PAT, a.pat);
    w(field::GUEST_DR7, a.dr7);
    vmcs.write(field::GUEST_SYSENTER_CS, a.sysenter_cs as u32);
    w(field::GUEST_SYSENTER_ESP, a.sysenter_esp);
    w(field::GUEST_SYSENTER_EIP, a.sysenter_eip);
}

/// Reads the current VMCS into `a`.
fn save_arch(vmx: &Vmx<()>, a: &mut ArchState) {
    use crate::root::hal::Hal;
    let vmcs = &vmx.vmcs;
    a.rip = vmcs.read(field::GUEST_RIP);
    a.rsp = vmcs.read(field::GUEST_RSP);
    a.rflags = vmcs.read(field::GUEST_RFLAGS);
    a.dr7 = vmcs.read(field::GUEST_DR7);
    for (seg, (fsel, fbase, flimit, far)) in segments_mut(a).into_iter().zip(SEGMENTS) {
        seg.selector = vmcs.read(fsel);
        seg.base = vmcs.read(fbase);
        seg.limit = vmcs.read(flimit);
        seg.attrib = attrib_from_ar(vmcs.read(far));
    }
    a.gdt.base = vmcs.read(field::GUEST_GDTR_BASE);
    a.gdt.limit = vmcs.read(field::GUEST_GDTR_LIMIT);
    a.idt.base = vmcs.read(field::GUEST_IDTR_BASE);
    a.idt.limit = vmcs.read(field::GUEST_IDTR_LIMIT);
    let c = vmx.control_regs();
    (a.cr0, a.cr3, a.cr4, a.efer) = (c.cr0, c.cr3, c.cr4, c.efer);
    a.pat = vmcs.read(field::GUEST_IA32_PAT);
    a.sysenter_cs = vmcs.read(field::GUEST_SYSENTER_CS).into();
    a.sysenter_esp = vmcs.read(field::GUEST_SYSENTER_ESP);
    a.sysenter_eip = vmcs.read(field::GUEST_SYSENTER_EIP);
}

/// An exit that interrupted the delivery of an event (a fault on the IDT, a host interrupt
/// mid-delivery) would lose it: NMIs and hardware exceptions are injected again at the next
/// entry. Software interrupts and exceptions are not: RIP still points at the instruction,
/// which runs again.
fn reinject_vectoring(vmcs: &Vmcs) {
    let info = vmcs.read(field::IDT_VECTORING_INFO_FIELD);
    let kind = info & intr_info::TYPE_MASK;
    if info & intr_info::VALID == 0
        || (kind != intr_info::TYPE_NMI
            && kind != intr_info::TYPE_HW_EXCEPTION
            && kind != intr_info::TYPE_EXT_INTR)
    {
        return;
    }
    if info & intr_info::DELIVER_ERROR_CODE != 0 {
        vmcs.write(
            field::VM_ENTRY_EXCEPTION_ERROR_CODE,
            vmcs.read(field::IDT_VECTORING_ERROR_CODE),
        );
    }
    if kind == intr_info::TYPE_NMI {
        // An NMI whose delivery the exit interrupted left virtual-NMI blocking set, which an
        // entry that injects an NMI must not have (SDM 27.3.1.5).
        let blocking = vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO);
        vmcs.write(
            field::GUEST_INTERRUPTIBILITY_INFO,
            blocking & !interruptibility::NMI,
        );
    }
    // Bits 30:12 of the vectoring information are reserved in the entry field.
    vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, info & 0x8000_0fff);
}

/// An intercepted #AC or #DB that came while another event was being delivered replaces it,
/// as on the processor, which handles two such exceptions one after the other (SDM Vol. 3A,
/// 6.15, Table 6-5): an exception comes again when its instruction runs again, and the
/// interrupt or NMI stays pending. Called after [`reinject_vectoring`] put the event back.
fn yield_vectoring(vmcs: &Vmcs, v: &mut VcpuState) {
    let entry = vmcs.read(field::VM_ENTRY_INTR_INFO_FIELD);
    if entry & intr_info::VALID == 0 {
        return;
    }
    if carries_injected(vmcs, v) {
        give_back_irq(vmcs, v);
        return;
    }
    if entry & intr_info::TYPE_MASK == intr_info::TYPE_NMI {
        v.nmi = true;
    }
    vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, 0);
}

/// An IRET that unblocked virtual NMIs and then faulted (an EPT violation: its stack in a
/// hole or an MMIO page; an intercepted #AC: its stack misaligned at CPL 3) runs again when
/// the guest resumes, or its fault is delivered first: its NMI handler has not returned, so
/// NMIs are blocked again, as the CPU reports ("NMI unblocking due to IRET", bit 12 of the
/// exit qualification or of the exit's interruption information, undefined while an event was
/// being delivered, and not for a #DF: SDM Vol. 3C, 28.2.1 to 28.2.3).
fn reblock_nmis_after_faulting_iret(vmcs: &Vmcs, reason: u32) {
    const NMI_UNBLOCKING_DUE_TO_IRET: u32 = 1 << 12;
    const DF: u32 = 8;
    let unblocked = match reason & 0xffff {
        EXIT_EPT_VIOLATION => {
            vmcs.read(field::EXIT_QUALIFICATION) & u64::from(NMI_UNBLOCKING_DUE_TO_IRET) != 0
        }
        EXIT_EXCEPTION_OR_NMI => {
            let info = vmcs.read(field::VM_EXIT_INTR_INFO);
            info & NMI_UNBLOCKING_DUE_TO_IRET != 0
                && info & intr_info::TYPE_MASK == intr_info::TYPE_HW_EXCEPTION
                && info & 0xff != DF
        }
        _ => false,
    };
    if !unblocked
        || vmcs.read(field::IDT_VECTORING_INFO_FIELD) & intr_info::VALID != 0
        || vmcs.read(field::PIN_BASED_VM_EXEC_CONTROL) & pin_based::VIRTUAL_NMIS == 0
    {
        return;
    }
    let blocking = vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO);
    vmcs.write(
        field::GUEST_INTERRUPTIBILITY_INFO,
        blocking | interruptibility::NMI,
    );
}

/// Exit reason: EPT violation.
const EXIT_EPT_VIOLATION: u32 = 48;

/// Exit reason: an exception or NMI.
const EXIT_EXCEPTION_OR_NMI: u32 = 0;

/// Exit reason: NMI window.
const EXIT_NMI_WINDOW: u32 = 8;

/// Injects the pending NMI (`VcpuState::nmi`) unless the guest blocks NMIs or another event
/// is being injected. With virtual NMIs the CPU tracks the guest's NMI blocking (from an
/// injected NMI to its handler's IRET): while it lasts an NMI-window exit is asked for. An
/// STI or MOV SS shadow (one instruction) asks for nothing: a CPU may take the NMI-window
/// exit inside an STI shadow, which would exit again at once, before the guest moves on; the
/// next exit of any kind tries again. Without virtual NMIs (nothing would unblock NMIs at the
/// guest's IRET) the NMI is dropped. Returns whether it injected one.
fn deliver_nmi(vmcs: &Vmcs, v: &mut VcpuState) -> bool {
    let virtual_nmis = vmcs.read(field::PIN_BASED_VM_EXEC_CONTROL) & pin_based::VIRTUAL_NMIS != 0;
    let mut window = false;
    let mut injected = false;
    if v.nmi && !virtual_nmis {
        v.nmi = false;
    }
    if v.nmi {
        let busy = vmcs.read(field::VM_ENTRY_INTR_INFO_FIELD) & intr_info::VALID != 0;
        let blocking = vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO);
        let shadow = blocking & (interruptibility::STI | interruptibility::MOV_SS) != 0;
        if blocking & interruptibility::NMI != 0 {
            window = !shadow;
        } else if !busy && !shadow {
            vmcs.write(
                field::VM_ENTRY_INTR_INFO_FIELD,
                u32::from(vector::NMI) | intr_info::TYPE_NMI | intr_info::VALID,
            );
            v.nmi = false;
            injected = true;
        }
    }
    set_window(vmcs, cpu_based::NMI_WINDOW_EXITING, window);
    injected
}

/// Sets or clears one window-exiting bit of the primary processor-based controls, writing
/// the field only when it changes.
fn set_window(vmcs: &Vmcs, bit: u32, on: bool) {
    let proc = vmcs.read(field::CPU_BASED_VM_EXEC_CONTROL);
    let wanted = if on { proc | bit } else { proc & !bit };
    if wanted != proc {
        vmcs.write(field::CPU_BASED_VM_EXEC_CONTROL, wanted);
    }
}

/// Injects the run loop's pending interrupt (`VcpuState::irq`) if the guest takes interrupts
/// now (RFLAGS.IF, no STI or MOV SS shadow, no other event being injected); otherwise asks for
/// an interrupt-window exit, after which the next entry tries again.
fn deliver_irq(vmcs: &Vmcs, v: &mut VcpuState) {
    let mut want_window = false;
    if v.irq & IRQ_VALID != 0 {
        let busy = vmcs.read(field::VM_ENTRY_INTR_INFO_FIELD) & intr_info::VALID != 0;
        let shadow = vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO)
            & (interruptibility::STI | interruptibility::MOV_SS)
            != 0;
        let open = vmcs.read(field::GUEST_RFLAGS) & rflags::IF != 0;
        if !busy && !shadow && open {
            vmcs.write(
                field::VM_ENTRY_INTR_INFO_FIELD,
                u32::from(v.irq & 0xff) | intr_info::TYPE_EXT_INTR | intr_info::VALID,
            );
            v.injected = v.irq;
            v.irq = 0;
        } else {
            want_window = true;
        }
    }
    set_window(vmcs, cpu_based::INTR_WINDOW_EXITING, want_window);
}

/// Whether the entry's event field holds the run's injected interrupt (put there by
/// [`deliver_irq`], or again by [`reinject_vectoring`] after an exit cut its delivery short).
/// Reads the field only when the run injected one.
fn carries_injected(vmcs: &Vmcs, v: &VcpuState) -> bool {
    if v.injected & IRQ_VALID == 0 {
        return false;
    }
    let entry = vmcs.read(field::VM_ENTRY_INTR_INFO_FIELD);
    entry & intr_info::VALID != 0
        && entry & intr_info::TYPE_MASK == intr_info::TYPE_EXT_INTR
        && entry & 0xff == u32::from(v.injected & 0xff)
}

/// The run's injected interrupt was not delivered (the entry that carried it was refused, or
/// the run ends with it still waiting in the entry's event field): it is pending again, not
/// acknowledged in the local APIC by the run loop, and the next run picks it afresh; the
/// field is cleared.
fn give_back_irq(vmcs: &Vmcs, v: &mut VcpuState) {
    v.irq = v.injected;
    v.injected = 0;
    vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, 0);
}

/// Decodes the exit of the current VMCS.
fn decode(vmcs: &Vmcs) -> (Exit, u32) {
    let reason = vmcs.read(field::VM_EXIT_REASON);
    let exit = Exit::from_vmx(reason, |f| match f {
        VmxInfo::Qualification => vmcs.read(field::EXIT_QUALIFICATION),
        VmxInfo::IntrInfo => vmcs.read(field::VM_EXIT_INTR_INFO).into(),
        VmxInfo::IntrErrorCode => vmcs.read(field::VM_EXIT_INTR_ERROR_CODE).into(),
        VmxInfo::GuestPhysical => vmcs.read(field::GUEST_PHYSICAL_ADDRESS),
    });
    (exit, reason)
}

/// Runs the vCPU `v` on this CPU until an exit for Dom0 (`v.exit` says which). Dom0's VMCS
/// (`dom0`, at `dom0_pa`) is current on entry and again on return. An NMI that arrives while
/// the guest runs, or in root mode, ends the guest's turn and is left pending for Dom0.
///
/// # Safety
///
/// Called from Dom0's exit handler on this CPU; `v` is not running anywhere else, its VMCS
/// region and maps are part of it, and its domain (`v.domain`, set) and the domain's tables
/// stay allocated during the run.
pub(crate) unsafe fn run(dom0: &Vmcs, dom0_pa: u64, nmi_pending: &AtomicBool, v: &mut VcpuState) {
    let host = HostState::read(dom0);
    // SAFETY: The Linux side sets the domain before the first run and keeps it alive.
    let domain = unsafe { &*v.domain };
    let vmcs_pa = v.pa_of(v.control.0.as_ptr());
    if !v.initialized {
        // SAFETY: IA32_VMX_BASIC exists on VMX CPUs.
        let basic = unsafe { x86::rdmsr(msr::IA32_VMX_BASIC) };
        let revision = ((basic & 0x7fff_ffff) as u32).to_le_bytes();
        v.control.0[..4].copy_from_slice(&revision);
    }
    // SAFETY: The vCPU's VMCS region holds the revision id and is not current on another
    // CPU (each run clears it at its end); it is cleared again before this returns, and
    // Dom0's made current.
    let loaded = unsafe { vmclear(vmcs_pa).and_then(|()| vmptrld(vmcs_pa)) };
    let ok = loaded.and_then(|vmcs| {
        if !v.initialized {
            setup_controls(&vmcs, v, domain.slat_root, &domain.limits)?;
            v.initialized = true;
            v.arch_dirty = true;
        }
        Ok(vmcs)
    });
    let vmcs = match ok {
        Ok(vmcs) => vmcs,
        Err(e) => {
            v.exit = UserExit::EntryFailure {
                reason: 0xffff_ffff,
                qualification: e.code(),
            };
            back_to_dom0(v, vmcs_pa, dom0_pa);
            return;
        }
    };
    host.write(&vmcs);
    vmcs.write(field::HOST_RIP, vmx_guest_exit as *const () as u64);
    keep_exits(&vmcs);
    let reloaded = v.arch_dirty;
    if v.arch_dirty {
        load_arch(&vmcs, &mut v.arch);
        // PAE paging: the entry takes the PDPTEs from the VMCS (with EPT), so they come from
        // the guest's memory now (what a CPU loaded at the last CR3 write; the guest cannot
        // have changed them since without Keel seeing a new state).
        let ctl = v.arch.ctl();
        if state::pae_paging(&ctl) {
            if let Some(p) = domain.pdptes(state::pdpt_address(ctl.cr3)) {
                write_pdptes(&vmcs, &p);
            }
        }
        v.arch_dirty = false;
    }
    let mut vmx = Vmx { vmcs, extra: () };
    // An event the last run left to inject (an exception or NMI whose delivery an exit
    // interrupted, when the run then ended; an interrupt is given back instead) is delivered
    // at this entry, unless Dom0 gave the vCPU a new state.
    if reloaded {
        vmx.vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, 0);
        // A new state (INIT/SIPI, or Dom0's) is in no NMI handler and no interrupt shadow,
        // and has no debug exception pending (the old state's would fail the entry's checks
        // against the new RFLAGS: STI blocking with IF clear, BS without TF).
        vmx.vmcs.write(field::GUEST_INTERRUPTIBILITY_INFO, 0);
        vmx.vmcs.write(field::GUEST_PENDING_DBG_EXCEPTIONS, 0);
    }
    // SAFETY: In VMX root operation with EPT (domains need it). A new domain may reuse a freed
    // domain's table pages: drop cached translations.
    unsafe { invept(slat::eptp(domain.slat_root)) };

    // Dom0's state that VM exits do not restore: the syscall MSRs, CR2 and the FPU.
    let mut dom0_msrs = [0u64; SWITCHED_MSRS.len()];
    let guest_msrs = [
        v.arch.kernel_gs_base,
        v.arch.star,
        v.arch.lstar,
        v.arch.cstar,
        v.arch.sfmask,
    ];
    let xcr0_supported = domain.xcr0_supported;
    let xcr0 = fpu::host_xcr0(xcr0_supported);
    let dom0_cr2 = x86::read_cr2();
    let (dom0_dr, dom0_dr6) = (x86::read_dr0_3(), x86::read_dr6());
    // SAFETY: These MSRs exist on every x86-64 CPU; the guest's values are the guest's own
    // and only matter in the guest (root mode does not use them). Dom0's are restored below,
    // before it runs. CR2 likewise. The FPU areas are the vCPU's.
    unsafe {
        for ((m, d), g) in SWITCHED_MSRS.iter().zip(&mut dom0_msrs).zip(guest_msrs) {
            *d = x86::rdmsr(*m);
            x86::wrmsr(*m, g);
        }
        x86::write_cr2(v.arch.cr2);
        fpu::enter(v, xcr0_supported, xcr0);
        // The breakpoint addresses and DR6 are the guest's while it runs (VM entry and exit
        // switch only DR7; VM exits turn its breakpoints off, so none fires in root mode).
        x86::write_dr0_3(&v.guest_dr);
        x86::write_dr6(v.arch.dr6);
    }
    // What the last exit left to Dom0 completes now, after a reload (which would drop the
    // single step it may raise) and with DR6 the guest's (which that single step sets).
    let data = v.completion_data;
    v.domu(|_, _| &mut vmx, domain, Vendor::Vmx, 0)
        .complete_pending(data);

    // SAFETY: Switched back below, before Dom0 runs.
    let dom0_tsc_aux = unsafe { switch_tsc_aux(v, domain.tsc_aux) };
    let mut launched = false;
    loop {
        if nmi_pending.load(Ordering::Relaxed) {
            // Dom0 has an NMI to take: give it the CPU first.
            let rip = vmx.vmcs.read(field::GUEST_RIP);
            v.finish(Action::RunLoop, rip);
            break;
        }
        if let Some((encoding, e)) = vmx.vmcs.take_failure() {
            // A VMCS access failed since the last entry: the state is not what Keel meant.
            v.exit = UserExit::EntryFailure {
                reason: 0xffff_ffff,
                qualification: (u64::from(encoding) << 32) | (e.code() & 0xffff_ffff),
            };
            v.exit_rip = vmx.vmcs.read(field::GUEST_RIP);
            break;
        }
        // Testing: an activity state no CPU has fails the entry's guest-state checks (SDM
        // Vol. 3C, 27.3.1.5).
        let forced = take_forced_failure();
        if forced {
            vmx.vmcs
                .write(field::GUEST_ACTIVITY_STATE, FORCED_FAILURE_ACTIVITY);
        }
        v.drop_stale_irq(domain);
        let nmi_injected = deliver_nmi(&vmx.vmcs, v);
        deliver_irq(&vmx.vmcs, v);
        // A refused entry delivers nothing, and an entry-failure exit clears the field.
        let carried = carries_injected(&vmx.vmcs, v);
        // SAFETY: The vCPU's VMCS is current and complete; the trampoline returns here after
        // the next VM exit or a failed entry.
        let failed = unsafe { vmx_guest_enter(&mut v.regs, u64::from(launched)) };
        if forced {
            vmx.vmcs.write(field::GUEST_ACTIVITY_STATE, 0);
        }
        if failed != 0 {
            // Not delivered: the NMI and the interrupt stay pending.
            v.nmi |= nmi_injected;
            if carried {
                give_back_irq(&vmx.vmcs, v);
            }
            let error: u64 = vmx.vmcs.read(field::VM_INSTRUCTION_ERROR).into();
            v.exit = UserExit::EntryFailure {
                reason: 0xffff_ffff | (error << 32),
                qualification: 0,
            };
            v.exit_rip = vmx.vmcs.read(field::GUEST_RIP);
            break;
        }
        launched = true;
        let (exit, reason) = decode(&vmx.vmcs);
        if matches!(exit, Exit::EntryFailure { .. }) {
            v.nmi |= nmi_injected;
            if carried {
                give_back_irq(&vmx.vmcs, v);
            }
        }
        if reason & 0xffff == EXIT_NMI_WINDOW {
            // The guest takes NMIs again: the next entry injects the pending one.
            continue;
        }
        if exit == Exit::Nmi {
            // The exit consumed the NMI: it is Dom0's, at its next entry.
            nmi_pending.store(true, Ordering::Relaxed);
        }
        let rip = vmx.vmcs.read(field::GUEST_RIP);
        reblock_nmis_after_faulting_iret(&vmx.vmcs, reason);
        reinject_vectoring(&vmx.vmcs);
        if benign_exception(&exit) {
            yield_vectoring(&vmx.vmcs, v);
        }
        let action = exit::handle(
            &mut v.domu(|_, _| &mut vmx, domain, Vendor::Vmx, reason.into()),
            &exit,
        );
        if !v.finish(action, rip) {
            break;
        }
    }

    // SAFETY: As above, in reverse.
    unsafe {
        fpu::leave(v, xcr0_supported, xcr0);
        switch_back_tsc_aux(v, dom0_tsc_aux);
        v.arch.cr2 = x86::read_cr2();
        x86::write_cr2(dom0_cr2);
        (v.guest_dr, v.arch.dr6) = (x86::read_dr0_3(), x86::read_dr6());
        x86::write_dr0_3(&dom0_dr);
        x86::write_dr6(dom0_dr6);
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
    // An interrupt whose delivery an exit cut short waits in the entry's event field; it is
    // not kept there across runs (the next entry may be refused, or reload a new state that
    // clears the field), but given back, so that the run loop does not acknowledge it.
    if carries_injected(&vmx.vmcs, v) {
        give_back_irq(&vmx.vmcs, v);
    }
    if matches!(v.exit, UserExit::EntryFailure { .. }) {
        // The guest state was refused: keep Dom0's copy and load it again next time.
        v.arch_dirty = true;
    } else {
        save_arch(&vmx, &mut v.arch);
    }
    // `vmx`, the vCPU VMCS's token, is not used from here on.
    back_to_dom0(v, vmcs_pa, dom0_pa);
}

/// Writes the vCPU's VMCS back to memory (it may run on another CPU next) and makes Dom0's
/// current again, as the Run hypercall found it. A failure ends the run as an entry failure
/// with the VM-instruction error; if Dom0's VMCS cannot be made current, Dom0's VMRESUME
/// fails next and reports it (`vmx_resume_failed`).
fn back_to_dom0(v: &mut VcpuState, vmcs_pa: u64, dom0_pa: u64) {
    // SAFETY: The vCPU's VMCS is a region of `v`; no token for it is used after this.
    let cleared = unsafe { vmclear(vmcs_pa) };
    // SAFETY: Dom0's VMCS stays allocated while Keel runs on this CPU, and was current when
    // the run began.
    let loaded = unsafe { vmptrld(dom0_pa) }.map(drop);
    if let Err(e) = cleared.and(loaded) {
        v.exit = UserExit::EntryFailure {
            reason: 0xffff_ffff,
            qualification: e.code(),
        };
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
        push_callee_saved!(),
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
        pop_callee_saved_ret!(),
        host_rsp = const field::HOST_RSP.encoding(),
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
