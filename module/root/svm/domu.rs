// SPDX-License-Identifier: GPL-2.0
//! AMD SVM: running a DomU vCPU from Dom0's `Run` hypercall.
//!
//! Root mode runs the vCPU's VMCB with VMRUN from inside Dom0's exit handler: VMLOAD/VMSAVE
//! switch the state VMRUN does not (FS, GS, TR, LDTR, the syscall MSRs), XSAVE/XRSTOR the FPU.
//! V_INTR_MASKING with the host's IF set at VMRUN makes every host interrupt end the guest's
//! turn (INTR intercept), while GIF stays clear in root mode so none is taken there; the NMI
//! intercept likewise leaves the NMI pending for Dom0.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::arch::naked_asm;

use super::{vmcb_of, Svm};
use crate::keel_core::{
    arch::{efer, rflags, vector},
    caps::Vendor,
    exit::Exit,
    vmcb::{self as layout, event, misc1, misc2, Vmcb, VmcbSeg},
};
use crate::root::exit::{self, UserExit};
use crate::root::fpu;
use crate::root::vcpu::{
    benign_exception, switch_back_tsc_aux, switch_tsc_aux, take_forced_failure, ArchState,
    VcpuState, INTERCEPTED_EXCEPTIONS, IRQ_VALID, PASSTHROUGH_MSRS,
};
use crate::root::{
    guest_run_epilogue, load_gprs_from_rax, objtool_frame_non_standard, pop_callee_saved_ret,
    push_callee_saved, save_gprs_to_rax, x86, GuestRegs, Page, RAX,
};

/// V_INTR_MASKING (VMCB int_ctl bit 24).
const V_INTR_MASKING: u32 = 1 << 24;
/// A virtual interrupt request (int_ctl V_IRQ, bit 8) at the highest priority (V_INTR_PRIO,
/// bits 19:16) whatever the guest's TPR (V_IGN_TPR, bit 20): the guest takes it (vector
/// `int_vector`) as soon as it takes interrupts, or with the VINTR intercept exits then.
const V_IRQ_WINDOW: u32 = V_IRQ | (0xf << 16) | (1 << 20);
/// int_ctl V_IRQ (bit 8).
const V_IRQ: u32 = 1 << 8;
/// The VINTR intercept (misc1 bit 4).
const INTERCEPT_VINTR: u32 = 1 << 4;
/// The IRET intercept (misc1 bit 20) and its exit code.
const INTERCEPT_IRET: u32 = 1 << 20;
const EXIT_IRET: u64 = 0x74;
/// EVENTINJ type: NMI.
const EVENT_TYPE_NMI: u32 = 2 << 8;
/// EVENTINJ type: external interrupt.
const EVENT_TYPE_INTR: u32 = 0;
/// Nested paging enable (misc_ctl bit 0).
const NP_ENABLE: u64 = 1;
/// INTR and NMI intercepts (misc1 bits 0 and 1), HLT (24), IOIO (27), MONITOR/MWAIT (misc2
/// bits 10, 11).
const INTERCEPT_INTR: u32 = 1 << 0;
const INTERCEPT_NMI: u32 = 1 << 1;
const INTERCEPT_HLT: u32 = 1 << 24;
const INTERCEPT_IOIO: u32 = 1 << 27;
const INTERCEPT_MONITOR: u32 = 1 << 10;
const INTERCEPT_MWAIT: u32 = 1 << 11;
/// Writes to CR0 and CR4 (intercept_cr bits 16 + n).
const INTERCEPT_CR0_WRITE: u32 = 1 << 16;
const INTERCEPT_CR4_WRITE: u32 = 1 << 20;

/// The controls that give the CPU back to Dom0 whatever the guest does: V_INTR_MASKING
/// (with the host's IF set at VMRUN, a host interrupt exits even while the guest runs with IF
/// clear) and the INTR and NMI intercepts. Written before every VMRUN: a refused VMRUN may
/// write the VMCB back changed (QEMU's early checks store int_ctl = 0), and a guest must never
/// keep a host CPU.
fn keep_exits(c: &mut layout::VmcbControl) {
    c.int_ctl |= V_INTR_MASKING;
    c.intercept_misc1 |= INTERCEPT_INTR | INTERCEPT_NMI;
}

/// Injects the pending NMI (`VcpuState::nmi`) unless the guest is still in the handler of
/// the last one, in an interrupt shadow (the next exit tries again) or another event is being
/// injected; returns whether it injected one. SVM does not track the guest's NMI
/// blocking for Keel: the vCPU is marked masked and its IRET intercepted, and the IRET exit
/// unmasks it: the next NMI then goes in as that IRET is about to run, one instruction early
/// (KVM waits for the IRET to complete; Linux's NMI entry returns through a copy of its frame
/// and so copes with an NMI there).
fn deliver_nmi(vm: &mut layout::Vmcb, nmi: &mut bool, masked: &mut bool) -> bool {
    let c = &mut vm.control;
    let shadow = c.int_state & layout::INT_STATE_SHADOW != 0;
    let injected = *nmi && !*masked && !shadow && c.event_inj & event::VALID == 0;
    if injected {
        c.event_inj = u32::from(vector::NMI) | EVENT_TYPE_NMI | event::VALID;
        *nmi = false;
        *masked = true;
    }
    if *masked {
        c.intercept_misc1 |= INTERCEPT_IRET;
    } else {
        c.intercept_misc1 &= !INTERCEPT_IRET;
    }
    injected
}

/// Offers the run loop's pending interrupt (`VcpuState::irq`) as a virtual interrupt (V_IRQ
/// with its vector) if the guest takes interrupts now (RFLAGS.IF, no interrupt shadow, no
/// other event being injected): the processor takes it at the first instruction boundary and
/// clears V_IRQ (checked after the exit, with [`irq_in_delivery`]). Otherwise asks for a VINTR exit (the same
/// request, intercepted), after which the next entry tries again. Returns whether it offered.
///
/// Not EVENTINJ: QEMU's VMRUN delivers an injected interrupt at once but leaves its vector as
/// the CPU's pending exception (`cs->exception_index`), and the next exit request of its
/// execution loop (a round-robin or I/O kick) delivers that vector a second time, as an
/// exception, wherever the guest then is, even with interrupts off: a Linux DomU's callback
/// handler then runs inside its own entry code. A virtual interrupt is delivered by QEMU's
/// interrupt path, which leaves nothing behind; on hardware both work.
fn deliver_irq(vm: &mut layout::Vmcb, irq: u16) -> bool {
    let c = &mut vm.control;
    c.int_ctl &= !V_IRQ_WINDOW;
    c.intercept_misc1 &= !INTERCEPT_VINTR;
    if irq & IRQ_VALID == 0 {
        return false;
    }
    let busy = c.event_inj & event::VALID != 0;
    let shadow = c.int_state & layout::INT_STATE_SHADOW != 0;
    c.int_ctl |= V_IRQ_WINDOW;
    if !busy && !shadow && vm.save.rflags & rflags::IF != 0 {
        c.int_vector = u32::from(irq & 0xff);
        true
    } else {
        c.int_vector = 0;
        c.intercept_misc1 |= INTERCEPT_VINTR;
        false
    }
}

/// After an exit: whether the exit interrupted the delivery of the virtual interrupt
/// [`deliver_irq`] offered with `vector` (in `exit_int_info` as an external interrupt; QEMU,
/// which also leaves V_IRQ set then, names it an exception). It is offered again, as a virtual
/// interrupt, rather than re-injected through EVENTINJ (see [`deliver_irq`]). Otherwise the
/// guest took the offer if the processor cleared V_IRQ.
fn irq_in_delivery(c: &layout::VmcbControl, vector: u8) -> bool {
    let info = c.exit_int_info;
    let kind = info & (7 << 8);
    info & event::VALID != 0
        && info & 0xff == u32::from(vector)
        && (kind == EVENT_TYPE_INTR || kind == event::TYPE_EXCEPTION)
}

/// Sets up the VMCB controls and maps of a vCPU, once.
fn setup_controls(v: &mut VcpuState, slat_root: u64) {
    v.io_map.iter_mut().for_each(|p| p.0.fill(0xff));
    // SAFETY: `msr_map` is two contiguous pages of the vCPU, 8 KiB in all.
    let map = unsafe { &mut *v.msr_map.as_mut_ptr().cast::<[u8; layout::MSRPM_SIZE]>() };
    map.fill(0xff);
    for m in PASSTHROUGH_MSRS {
        if let Some((byte, bit)) = layout::msrpm_position(m) {
            map[byte] &= !(3 << bit);
        }
    }
    let iopm_pa = v.pa_of(v.io_map[0].0.as_ptr());
    let msrpm_pa = v.pa_of(v.msr_map[0].0.as_ptr());
    let asid = v.asid;
    let c = &mut vmcb_of(&mut v.control).control;
    // MOV to CR0 and CR4 (and CLTS, LMSW): Keel applies the architecture's rules itself
    // (`keel_core::state`), whatever the CPU or an emulator checks, and keeps EFER.LME out of
    // the VMCB while the guest's paging and PAE are off (`layout::hardware_efer`).
    c.intercept_cr = INTERCEPT_CR0_WRITE | INTERCEPT_CR4_WRITE;
    c.intercept_exceptions = INTERCEPTED_EXCEPTIONS;
    c.intercept_misc1 = INTERCEPT_INTR
        | INTERCEPT_NMI
        | misc1::CPUID
        | misc1::INVD
        | INTERCEPT_HLT
        | INTERCEPT_IOIO
        | misc1::MSR_PROT
        | misc1::SHUTDOWN;
    c.intercept_misc2 = misc2::VMRUN
        | misc2::VMMCALL
        | misc2::VMLOAD
        | misc2::VMSAVE
        | misc2::STGI
        | misc2::CLGI
        | misc2::SKINIT
        | misc2::XSETBV
        | INTERCEPT_MONITOR
        | INTERCEPT_MWAIT;
    c.iopm_base_pa = iopm_pa;
    c.msrpm_base_pa = msrpm_pa;
    c.asid = asid;
    c.int_ctl = V_INTR_MASKING;
    c.misc_ctl = NP_ENABLE;
    c.nested_cr3 = slat_root;
}

/// The TSS types (the low 4 attribute bits): 16-bit available 1, busy 3; 32/64-bit available
/// 9, busy 0xb. Bit 1 is the busy bit.
const TSS_BUSY: u16 = 1 << 1;

/// TR as the VMCB gets it: with an available TSS type. Real CPUs use the cached TR whatever its
/// type, but QEMU's TCG aborts the whole emulator when an interrupt needs the TSS and the
/// cached type is busy ("invalid tss type"), which any guest could make happen. VMX, in turn,
/// requires the busy type at entry, so the vCPU state keeps it busy (see [`tr_from_vmcb`]).
fn tr_for_vmcb(tr: VmcbSeg) -> VmcbSeg {
    let tss = matches!(tr.attrib & 0x1f, 0x03 | 0x0b);
    VmcbSeg {
        attrib: if tss {
            tr.attrib & !TSS_BUSY
        } else {
            tr.attrib
        },
        ..tr
    }
}

/// TR from the VMCB, as the vCPU state keeps it: a loaded TSS is busy (LTR marks it so).
fn tr_from_vmcb(tr: VmcbSeg) -> VmcbSeg {
    let tss = matches!(tr.attrib & 0x1f, 0x01 | 0x09);
    VmcbSeg {
        attrib: if tss { tr.attrib | TSS_BUSY } else { tr.attrib },
        ..tr
    }
}

/// Writes `a` into the VMCB; returns whether EFER.LME is held back from it.
fn load_arch(vmcb: &mut Vmcb, a: &ArchState) -> bool {
    let s = &mut vmcb.save;
    s.rip = a.rip;
    s.rsp = a.rsp;
    s.rflags = a.rflags | 2;
    s.cs = a.cs;
    s.ds = a.ds;
    s.es = a.es;
    s.fs = a.fs;
    s.gs = a.gs;
    s.ss = a.ss;
    s.tr = tr_for_vmcb(a.tr);
    s.ldtr = a.ldt;
    s.gdtr = a.gdt;
    s.idtr = a.idt;
    s.cpl = ((a.ss.attrib >> 5) & 3) as u8;
    s.cr0 = a.cr0;
    s.cr2 = a.cr2;
    s.cr3 = a.cr3;
    s.cr4 = a.cr4;
    let (efer, lme_held) = layout::hardware_efer(&a.ctl());
    s.efer = efer;
    s.g_pat = a.pat;
    s.dr7 = a.dr7;
    s.dr6 = a.dr6;
    s.star = a.star;
    s.lstar = a.lstar;
    s.cstar = a.cstar;
    s.sfmask = a.sfmask;
    s.kernel_gs_base = a.kernel_gs_base;
    s.sysenter_cs = a.sysenter_cs;
    s.sysenter_esp = a.sysenter_esp;
    s.sysenter_eip = a.sysenter_eip;
    lme_held
}

/// Reads the VMCB into `a` (XCR0 is not in the VMCB: it stays), with the guest's EFER.LME if
/// `lme_held`.
fn save_arch(vmcb: &Vmcb, lme_held: bool, a: &mut ArchState) {
    let s = &vmcb.save;
    *a = ArchState {
        rip: s.rip,
        rsp: s.rsp,
        rflags: s.rflags,
        cs: s.cs,
        ds: s.ds,
        es: s.es,
        fs: s.fs,
        gs: s.gs,
        ss: s.ss,
        tr: tr_from_vmcb(s.tr),
        ldt: s.ldtr,
        gdt: s.gdtr,
        idt: s.idtr,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: (s.efer & !efer::SVME) | if lme_held { efer::LME } else { 0 },
        pat: s.g_pat,
        xcr0: a.xcr0,
        tsc_aux: a.tsc_aux,
        star: s.star,
        lstar: s.lstar,
        cstar: s.cstar,
        sfmask: s.sfmask,
        kernel_gs_base: s.kernel_gs_base,
        sysenter_cs: s.sysenter_cs,
        sysenter_esp: s.sysenter_esp,
        sysenter_eip: s.sysenter_eip,
        dr6: s.dr6,
        dr7: s.dr7,
    };
}

/// A DomU vCPU's hardware view: its VMCB and whether EFER.LME is held back from it.
fn svm_hw<'a>(
    page: &'a mut Page,
    lme_held: &'a mut bool,
    nrip_save: bool,
) -> Svm<'a, &'a mut bool> {
    Svm {
        vmcb: vmcb_of(page),
        nrip_save,
        extra: lme_held,
    }
}

/// Runs the vCPU `v` on this CPU until an exit for Dom0 (`v.exit` says which).
///
/// # Safety
///
/// Called from Dom0's exit handler on this CPU (GIF clear, Dom0's VMCB at `dom0_vmcb_pa`);
/// `v` is not running anywhere else, and its domain (`v.domain`, set) and the domain's tables
/// stay allocated during the run.
pub(crate) unsafe fn run(dom0_vmcb_pa: u64, nrip_save: bool, v: &mut VcpuState) {
    // SAFETY: The Linux side sets the domain before the first run and keeps it alive.
    let domain = unsafe { &*v.domain };
    if !v.initialized {
        setup_controls(v, domain.slat_root);
        v.initialized = true;
        v.arch_dirty = true;
    }
    // An event the last run left to inject (one whose delivery an exit interrupted, when the
    // run then ended) is delivered at this entry, unless Dom0 gave the vCPU a new state.
    let reloaded = v.arch_dirty;
    if v.arch_dirty {
        v.lme_held = load_arch(vmcb_of(&mut v.control), &v.arch);
        v.arch_dirty = false;
    }
    let vmcb_pa = v.pa_of(v.control.0.as_ptr());
    {
        let c = &mut vmcb_of(&mut v.control).control;
        // The vCPU may have run on another CPU, or its ASID been used by another domain.
        c.tlb_ctl = layout::TLB_CONTROL_FLUSH_ALL;
        if reloaded {
            // A new state is in no interrupt shadow either.
            c.event_inj = 0;
            c.int_state &= !layout::INT_STATE_SHADOW;
        }
    }
    let data = v.completion_data;
    v.domu(
        |page, held| svm_hw(page, held, nrip_save),
        domain,
        Vendor::Svm,
        0,
    )
    .complete_pending(data);
    let xcr0_supported = domain.xcr0_supported;
    let xcr0 = fpu::host_xcr0(xcr0_supported);
    // SAFETY: The areas are the vCPU's, sized for the domain's XCR0 (the Linux side checked).
    unsafe { fpu::enter(v, xcr0_supported, xcr0) };
    // SAFETY: Switched back below, before Dom0 runs.
    let dom0_tsc_aux = unsafe { switch_tsc_aux(v, domain.tsc_aux) };
    // The breakpoint addresses are the guest's while it runs, Dom0's after (VMRUN and #VMEXIT
    // switch DR6 and DR7, not these). Root mode's DR7 has every breakpoint off.
    let dom0_dr = x86::read_dr0_3();
    // SAFETY: As above: no breakpoint is enabled here.
    unsafe { x86::write_dr0_3(&v.guest_dr) };
    loop {
        let rax = v.regs.gpr[RAX];
        let vm = vmcb_of(&mut v.control);
        vm.save.rax = rax;
        keep_exits(&mut vm.control);
        v.drop_stale_irq(domain);
        let vm = vmcb_of(&mut v.control);
        let nmi_injected = deliver_nmi(vm, &mut v.nmi, &mut v.nmi_masked);
        let offered = deliver_irq(vm, v.irq);
        // Testing: VMRUN refuses a VMCB without the VMRUN intercept (APM 15.5.1).
        let forced = take_forced_failure();
        if forced {
            vm.control.intercept_misc2 &= !misc2::VMRUN;
        }
        // SAFETY: The VMCB is complete; the trampoline saves the guest's GPRs and gives the
        // processor Dom0's VMLOAD state back before returning.
        unsafe { svm_guest_enter(&mut v.regs, vmcb_pa, dom0_vmcb_pa) };
        let vm = vmcb_of(&mut v.control);
        let c = &mut vm.control;
        c.intercept_misc2 |= misc2::VMRUN;
        c.tlb_ctl = 0;
        c.event_inj = 0;
        let exit = Exit::from_svm(c.exit_code, c.exit_info_1, c.exit_info_2);
        let refused = matches!(exit, Exit::EntryFailure { .. });
        // A refused VMRUN delivers nothing (and QEMU's may clear int_ctl).
        if nmi_injected && refused {
            v.nmi = true;
            v.nmi_masked = false;
        }
        let offered_again = offered && irq_in_delivery(c, v.irq as u8);
        if offered && !refused && !offered_again && c.int_ctl & V_IRQ == 0 {
            v.injected = v.irq;
            v.irq = 0;
        }
        c.int_ctl &= !V_IRQ_WINDOW;
        // An event whose delivery the exit interrupted is delivered again (NMIs, hardware
        // exceptions and interrupts; a software interrupt's instruction simply runs again),
        // except the offered interrupt, which stays pending. An "exception" above vector 31
        // is QEMU's name for an interrupt in delivery (EVENTINJ refuses that type for those
        // vectors).
        let mut kind = c.exit_int_info & (7 << 8);
        if kind == event::TYPE_EXCEPTION && c.exit_int_info & 0xff > 31 {
            kind = EVENT_TYPE_INTR;
        }
        if c.exit_int_info & event::VALID != 0
            && !offered_again
            && (kind == EVENT_TYPE_NMI || kind == event::TYPE_EXCEPTION || kind == EVENT_TYPE_INTR)
        {
            let error = if kind == EVENT_TYPE_INTR {
                0
            } else {
                c.exit_int_info & event::ERROR_VALID
            };
            c.event_inj = (c.exit_int_info & 0xff) | kind | error | event::VALID;
            c.event_inj_err = c.exit_int_info_err;
        }
        // An intercepted #AC or #DB that came while another event was being delivered
        // replaces it, as on the processor (see VMX's `yield_vectoring`): an exception comes
        // again when its instruction runs again, an NMI stays pending (the offered interrupt
        // is pending still, not re-injected).
        if benign_exception(&exit) && c.event_inj & event::VALID != 0 {
            if c.event_inj & (7 << 8) == EVENT_TYPE_NMI {
                v.nmi = true;
                v.nmi_masked = false;
            }
            c.event_inj = 0;
        }
        let raw_reason = c.exit_code;
        if !refused {
            v.regs.gpr[RAX] = vm.save.rax;
        }
        if raw_reason == EXIT_IRET {
            // The guest leaves its NMI handler: NMIs may go in again (the IRET runs at the
            // next entry, after an NMI pending by then).
            v.nmi_masked = false;
            vm.control.intercept_misc1 &= !INTERCEPT_IRET;
            continue;
        }
        // A refused VMRUN may leave the host's state in the save area (QEMU does).
        let rip = if refused { v.arch.rip } else { vm.save.rip };
        let action = exit::handle(
            &mut v.domu(
                |page, held| svm_hw(page, held, nrip_save),
                domain,
                Vendor::Svm,
                raw_reason,
            ),
            &exit,
        );
        if !v.finish(action, rip) {
            break;
        }
    }
    vmcb_of(&mut v.control).save.rax = v.regs.gpr[RAX];
    v.guest_dr = x86::read_dr0_3();
    // SAFETY: Dom0's own values, back before it runs.
    unsafe { x86::write_dr0_3(&dom0_dr) };
    // SAFETY: As for `fpu::enter`; the TSC_AUX switched above.
    unsafe {
        fpu::leave(v, xcr0_supported, xcr0);
        switch_back_tsc_aux(v, dom0_tsc_aux);
    }
    if matches!(v.exit, UserExit::EntryFailure { .. }) {
        // A refused VMRUN may leave the save area half written (QEMU stores the host's state
        // there): the guest's state is still the one Dom0 gave, loaded again next time.
        v.arch_dirty = true;
    } else {
        save_arch(vmcb_of(&mut v.control), v.lme_held, &mut v.arch);
    }
}

/// Runs the guest once.
///
/// Arguments: RDI = the vCPU's GPRs (RAX and RSP live in the VMCB), RSI = the vCPU's VMCB
/// (physical), RDX = Dom0's VMCB (physical). VMSAVEs Dom0's state (the processor holds it: the
/// VMRUN loop does no VMLOAD/VMSAVE), VMLOADs the guest's, sets IF (GIF is
/// clear, so nothing is taken here: with V_INTR_MASKING, IF at VMRUN lets host interrupts end
/// the guest's turn), VMRUNs, and after #VMEXIT clears IF, VMSAVEs the guest's state, saves
/// its GPRs and VMLOADs Dom0's state. The callee-saved registers are preserved; the guest's
/// values are cleared from the others.
///
/// # Safety
///
/// In root mode on SVM (GIF clear), the VMCB complete.
#[unsafe(naked)]
unsafe extern "C" fn svm_guest_enter(regs: *mut GuestRegs, vmcb_pa: u64, dom0_vmcb_pa: u64) {
    naked_asm!(
        objtool_frame_non_standard!(),
        push_callee_saved!(),
        "push rdi",
        "push rdx",
        "push rsi",
        "mov rax, rdi",
        load_gprs_from_rax!(),
        "mov rax, [rsp + 8]",
        "vmsave rax",
        "mov rax, [rsp]",
        "vmload rax",
        "sti",
        "vmrun rax",
        "cli",
        "vmsave rax",
        "mov rax, [rsp + 16]",
        save_gprs_to_rax!(),
        "mov rax, [rsp + 8]",
        "vmload rax",
        "add rsp, 24",
        "xor eax, eax",
        guest_run_epilogue!(),
        this = sym svm_guest_enter,
    )
}
