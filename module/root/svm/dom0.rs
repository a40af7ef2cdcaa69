// SPDX-License-Identifier: GPL-2.0
//! AMD SVM beneath Dom0: EFER.SVME and the host-save area, a VMCB that describes the running
//! CPU, the VMRUN loop, Dom0's exits, and the way back out.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`). Between #VMEXIT and VMRUN the
//! global interrupt flag is clear, so no interrupt or NMI reaches this code.

use core::{arch::asm, arch::naked_asm, mem::offset_of, sync::atomic::Ordering};

use super::{vmcb_of, Svm};
use crate::keel_core::{
    arch::{cr0, efer, msr},
    exit::Exit,
    vmcb::{self, misc1, misc2, Vmcb, VmcbSave, VmcbSeg},
};
use crate::root::dom0::{Dom0, Dom0Hal, LeavePoint};
use crate::root::exit::{self, Action};
use crate::root::vcpu::VcpuState;
use crate::root::{
    load_gprs_but_rax, objtool_frame_non_standard, park, pop_callee_saved_ret, push_callee_saved,
    push_return, root_leave, save_gprs_but_rax, x86, CpuState, Dom0View, HostFrame, RAX,
};

/// The ASID Dom0 runs with (0 is the host's).
const DOM0_ASID: u32 = 1;

/// Why a launch failed.
#[derive(Clone, Copy)]
pub(crate) enum LaunchError {
    /// The first VMRUN exited with VMEXIT_INVALID: the VMCB's guest state is not valid.
    InvalidState,
}

// Debug is the message: the kernel's `pr_*` formats core's Debug, not its Display.
impl core::fmt::Debug for LaunchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::InvalidState => write!(f, "the first VMRUN failed: invalid guest state"),
        }
    }
}

/// A segment register for the VMCB: selector, attributes from LAR, limit from LSL.
fn segment(sel: u16, base: u64) -> VmcbSeg {
    match x86::lar(sel) {
        Some(lar) if sel & !3 != 0 => VmcbSeg {
            selector: sel,
            attrib: vmcb::attrib_from_lar(lar),
            limit: x86::lsl(sel),
            base,
        },
        _ => VmcbSeg {
            selector: sel,
            ..VmcbSeg::default()
        },
    }
}

/// Saves the processor's FS, GS, TR, LDTR, KernelGsBase, STAR/LSTAR/CSTAR/SFMASK and SYSENTER
/// state into the VMCB at `pa`.
///
/// # Safety
///
/// EFER.SVME is set and `pa` is a VMCB.
unsafe fn vmsave(pa: u64) {
    // SAFETY: The caller's contract.
    unsafe { asm!("vmsave rax", in("rax") pa, options(nostack)) };
}

/// Turns SVM on on this CPU and continues as Dom0 inside it.
///
/// # Safety
///
/// As for the VMX `launch`: interrupts are off, `state` is this CPU's and zeroed but for
/// `info`, `host_cr3` maps the kernel for as long as Keel is loaded. `corrupt` (a test of the
/// rollback) makes the VMCB invalid, so that the first VMRUN fails.
pub(crate) unsafe fn launch(
    state: &mut CpuState,
    host_cr3: u64,
    corrupt: bool,
) -> Result<(), LaunchError> {
    let page_offset = state.info.page_offset_base;
    let pa = |p: *const u8| p as u64 - page_offset;
    let hsave_pa = pa(state.region.0.as_ptr());
    let vmcb_pa = pa(state.control.0.as_ptr());
    let msrpm_pa = pa(state.msr_map[0].0.as_ptr());

    // The MSR permission map: EFER (SVME is Keel's), VM_HSAVE_PA and VM_CR exit.
    // SAFETY: `msr_map` is two contiguous pages of `state`, 8 KiB in all.
    let map = unsafe { &mut *state.msr_map.as_mut_ptr().cast::<[u8; vmcb::MSRPM_SIZE]>() };
    map.fill(0);
    vmcb::msrpm_intercept(map, msr::EFER, true, true);
    vmcb::msrpm_intercept(map, msr::VM_HSAVE_PA, true, true);
    vmcb::msrpm_intercept(map, msr::VM_CR, false, true);

    // SAFETY: EFER exists; setting SVME is allowed (the probe checked VM_CR.SVMDIS), and Linux
    // never writes EFER after boot without reading it first, which then exits to Keel.
    let efer = unsafe { x86::rdmsr(msr::EFER) } | efer::SVME;
    // SAFETY: As above; VM_HSAVE_PA takes the 4 KiB-aligned host-save area, owned by `state`.
    unsafe {
        x86::wrmsr(msr::EFER, efer);
        x86::wrmsr(msr::VM_HSAVE_PA, hsave_pa);
    }

    let gdt = x86::sgdt();
    let idt = x86::sidt();
    // SAFETY: These MSRs exist on every x86-64 CPU.
    let pat = unsafe { x86::rdmsr(msr::IA32_PAT) };
    let v = vmcb_of(&mut state.control);
    let c = &mut v.control;
    c.intercept_misc1 = misc1::CPUID | misc1::INVD | misc1::MSR_PROT | misc1::SHUTDOWN;
    c.intercept_misc2 = misc2::VMRUN
        | misc2::VMMCALL
        | misc2::VMLOAD
        | misc2::VMSAVE
        | misc2::STGI
        | misc2::CLGI
        | misc2::SKINIT
        | misc2::XSETBV;
    c.msrpm_base_pa = msrpm_pa;
    c.asid = DOM0_ASID;
    c.tlb_ctl = vmcb::TLB_CONTROL_FLUSH_ALL;

    let s: &mut VmcbSave = &mut v.save;
    s.cs = segment(x86::read_cs(), 0);
    s.ss = segment(x86::read_ss(), 0);
    s.ds = segment(x86::read_ds(), 0);
    s.es = segment(x86::read_es(), 0);
    s.gdtr = VmcbSeg {
        limit: gdt.limit.into(),
        base: gdt.base,
        ..VmcbSeg::default()
    };
    s.idtr = VmcbSeg {
        limit: idt.limit.into(),
        base: idt.base,
        ..VmcbSeg::default()
    };
    s.cpl = 0;
    s.efer = efer;
    s.cr0 = x86::read_cr0();
    s.cr2 = x86::read_cr2();
    s.cr3 = x86::read_cr3();
    s.cr4 = x86::read_cr4();
    s.dr6 = x86::read_dr6();
    s.dr7 = x86::read_dr7();
    s.rflags = x86::read_rflags();
    s.rax = 0;
    s.g_pat = pat;
    if corrupt {
        // CR0.NW set with CR0.CD clear is an illegal guest state (APM 15.5.1).
        s.cr0 = (s.cr0 | cr0::NW) & !cr0::CD;
    }
    // SAFETY: SVME is set and `vmcb_pa` is this CPU's VMCB.
    unsafe { vmsave(vmcb_pa) };

    state.frame.state = state;
    state.frame.vmcb_pa = vmcb_pa;
    state.frame.launch_cr3 = x86::read_cr3();
    let frame = &raw mut state.frame;
    let vmcb_ptr = state.control.0.as_mut_ptr().cast::<Vmcb>();
    // SAFETY: The VMCB describes this CPU; `svm_launch` continues as the guest at its return
    // point with RAX = 0, or returns 1 after a failed first VMRUN (the handler left).
    match unsafe { svm_launch(frame, vmcb_ptr, host_cr3) } {
        0 => Ok(()),
        _ => Err(LaunchError::InvalidState),
    }
}

/// Launches Dom0 inside SVM: this function's caller becomes the guest.
///
/// Arguments: RDI = this CPU's [`HostFrame`] (the top of the root-mode stack), RSI = the VMCB
/// (guest state filled but for RSP and RIP), RDX = root mode's CR3.
/// Result: the guest's RAX at the return point: 0 when launched, 1 when the first VMRUN failed
/// and the handler left. The callee-saved registers are preserved.
///
/// # Safety
///
/// As for `launch`: interrupts off, SVME set, the VMCB and frame belong to this CPU.
#[unsafe(naked)]
unsafe extern "C" fn svm_launch(frame: *mut HostFrame, vmcb: *mut Vmcb, host_cr3: u64) -> u64 {
    naked_asm!(
        objtool_frame_non_standard!(),
        push_callee_saved!(),
        "mov [rsi + {rsp}], rsp",
        "mov [rdi + {launch_rsp}], rsp",
        "lea rax, [rip + 2f]",
        "mov [rsi + {rip}], rax",
        "mov [rdi + {launch_rip}], rax",
        "mov cr3, rdx",
        "mov rsp, rdi",
        "jmp {run}",
        "2:",
        // The guest starts here (or the failed launch returns here), RAX holding the result.
        pop_callee_saved_ret!(),
        rsp = const offset_of!(Vmcb, save) + offset_of!(VmcbSave, rsp),
        rip = const offset_of!(Vmcb, save) + offset_of!(VmcbSave, rip),
        launch_rsp = const offset_of!(HostFrame, launch_rsp),
        launch_rip = const offset_of!(HostFrame, launch_rip),
        run = sym svm_run,
        this = sym svm_launch,
    )
}

/// The VMRUN loop. RSP points at this CPU's [`HostFrame`], which holds the guest's GPRs (RAX
/// and RSP live in the VMCB). Each round loads them, runs the guest until #VMEXIT, saves them
/// and calls [`svm_exit_handler`]; a non-zero result leaves through [`root_leave`].
///
/// No VMLOAD/VMSAVE: the state they move (FS, GS, TR, LDTR, KernelGsBase, the syscall and
/// SYSENTER MSRs) stays Dom0's in the processor across VMRUN and #VMEXIT, and root mode does
/// not change it; a DomU run saves it first and puts it back after (`svm/domu.rs`).
///
/// # Safety
///
/// Jumped to (never called) by `svm_launch`, with RSP at this CPU's frame.
#[unsafe(naked)]
unsafe extern "C" fn svm_run() {
    naked_asm!(
        objtool_frame_non_standard!(),
        "2:",
        load_gprs_but_rax!(),
        "mov rax, [rsp + {vmcb_pa}]",
        "vmrun rax",
        save_gprs_but_rax!(),
        "mov rdi, rsp",
        "call {handler}",
        "test rax, rax",
        "jz 2b",
        "jmp {leave}",
        vmcb_pa = const offset_of!(HostFrame, vmcb_pa),
        handler = sym svm_exit_handler,
        leave = sym root_leave,
        this = sym svm_run,
    )
}

/// Turns SVM off on this CPU, in root mode: sets GIF (STGI needs SVME) with interrupts off
/// (the host's RFLAGS.IF is clear), points VM_HSAVE_PA at what Dom0 last wrote there, and
/// writes `efer` without SVME.
///
/// # Safety
///
/// Only when leaving SVM for good on this CPU, in root mode: nothing runs VMRUN after it.
unsafe fn svm_off(efer: u64, dom0_hsave_pa: u64) {
    // SAFETY: The caller's contract; the MSRs exist on every SVM CPU.
    unsafe {
        asm!("stgi", options(nomem, nostack));
        x86::wrmsr(msr::VM_HSAVE_PA, dom0_hsave_pa);
        x86::wrmsr(msr::EFER, efer & !efer::SVME);
    }
}

/// What Dom0's side of the SVM HAL needs besides the VMCB.
pub(crate) struct Dom0Svm {
    /// Dom0's VMCB (physical), for the DomU runs' VMSAVE/VMLOAD.
    vmcb_pa: u64,
}

/// Dom0 runs in long mode: its EFER.LME is never held back.
impl super::SvmGuest for Dom0Svm {
    fn lme_held(&self) -> bool {
        false
    }

    fn set_lme_held(&mut self, _held: bool) {}

    /// Dom0's IA32_DEBUGCTL is the processor's (VMRUN does not switch it).
    fn btf(&self) -> bool {
        // SAFETY: IA32_DEBUGCTL exists on every x86-64 CPU; reading it changes nothing.
        unsafe { x86::rdmsr(msr::IA32_DEBUGCTL) & msr::DEBUGCTL_BTF != 0 }
    }
}

impl Dom0Hal for Svm<'_, Dom0Svm> {
    unsafe fn run_domu(&mut self, v: &mut VcpuState) {
        // SAFETY: The caller's contract; called from Dom0's exit on this CPU with GIF clear
        // and Dom0's state in the processor (its VMSAVE state is saved by the run).
        unsafe { super::domu::run(self.extra.vmcb_pa, self.nrip_save, v) };
    }

    fn test_intercept(&mut self, on: bool) -> bool {
        let c = &mut self.vmcb.control;
        if on {
            c.intercept_misc2 |= misc2::WBINVD;
        } else {
            c.intercept_misc2 &= !misc2::WBINVD;
        }
        true
    }

    unsafe fn leave(&mut self, view: &Dom0View) -> LeavePoint {
        let s = &self.vmcb.save;
        let (cr4, cr2, dr7) = (s.cr4, s.cr2, s.dr7);
        let point = LeavePoint {
            rsp: s.rsp,
            rip: s.rip,
            rflags: s.rflags,
            cr3: s.cr3,
        };
        // SAFETY: The hand-back of this CPU (the caller's contract).
        unsafe { svm_off(s.efer, view.hsave_pa) };
        // SAFETY: SVM is off; these restore Dom0's own values of registers VMRUN's host state
        // does not cover (it already matched Dom0's in everything else).
        unsafe {
            x86::write_cr4(cr4);
            x86::write_cr2(cr2);
            x86::write_dr7(dr7);
        }
        point
    }
}

/// Handles one #VMEXIT. Returns 0 to run Dom0 again, 1 to leave (the frame then holds where
/// to).
extern "C" fn svm_exit_handler(frame: *mut HostFrame) -> u64 {
    // SAFETY: `frame` is this CPU's frame (the VMRUN loop's RSP), whose `state` points at the
    // CpuState that contains it; root mode on this CPU is its only user while it runs.
    let state = unsafe { &mut *(*frame).state };
    let vmcb_pa = state.frame.vmcb_pa;
    let CpuState {
        control,
        frame,
        view,
        info,
        ..
    } = state;
    let vmcb = vmcb_of(control);
    vmcb.control.tlb_ctl = 0;
    let c = &vmcb.control;
    let exit = Exit::from_svm(c.exit_code, c.exit_info_1, c.exit_info_2);
    // Guest RAX lives in the VMCB; the common code works on the frame.
    frame.regs.gpr[RAX] = vmcb.save.rax;
    let mut dom0 = Dom0 {
        hw: Svm {
            vmcb,
            nrip_save: info.nrip_save,
            extra: Dom0Svm { vmcb_pa },
        },
        regs: &mut frame.regs,
        cpu: info,
        view,
    };
    let result = match exit::handle(&mut dom0, &exit) {
        Action::Resume | Action::RunLoop | Action::ToUser => 0,
        Action::Leave => {
            // SAFETY: The Leave hypercall: root mode returns to Dom0 on bare metal next.
            let p = unsafe { dom0.hw.leave(dom0.view) };
            dom0.hw.vmcb.save.rax = dom0.regs.gpr[RAX];
            push_return(frame, p.rsp, p.rip, p.rflags, p.cr3);
            return 1;
        }
        Action::Crash if !dom0.cpu.launched.load(Ordering::Relaxed) => {
            // The first VMRUN failed: hand the CPU back at the launch point with RAX = 1. The
            // VMCB's save area may hold host state by now: the launch point is in the frame,
            // and the control registers are still the launch's.
            dom0.dump("the first VMRUN failed");
            // SAFETY: The launch is abandoned: root mode returns to the launch point next. EFER
            // exists on every x86-64 CPU.
            unsafe { svm_off(x86::rdmsr(msr::EFER), 0) };
            frame.regs.gpr[RAX] = 1;
            let (rsp, rip, cr3) = (frame.launch_rsp, frame.launch_rip, frame.launch_cr3);
            push_return(frame, rsp, rip, x86::read_rflags(), cr3);
            return 1;
        }
        Action::Crash => {
            dom0.dump("Dom0 cannot continue on this CPU");
            park();
        }
    };
    dom0.hw.vmcb.save.rax = dom0.regs.gpr[RAX];
    result
}
