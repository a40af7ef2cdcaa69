// SPDX-License-Identifier: GPL-2.0
//! AMD SVM beneath Dom0: EFER.SVME and the host-save area, a VMCB that describes the running
//! CPU, the VMRUN loop, Dom0's exit handlers, and the way back out.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`). Between #VMEXIT and VMRUN the
//! global interrupt flag is clear, so no interrupt or NMI reaches this code.

use core::{arch::asm, arch::naked_asm, mem::offset_of, sync::atomic::Ordering};

use super::{
    handle, load_gprs_but_rax, objtool_frame_non_standard, rlog, save_gprs_but_rax, CpuState,
    Dom0Exit, ExitAction, GuestRegs, HostFrame, RAX,
};
use crate::keel_core::{
    caps::EFER_SVME,
    exit::ExitKind,
    insn::{self, Mode},
    paging::{self, PagingMode},
    vmcb::{self, event, misc1, misc2, Vmcb, VmcbSave, VmcbSeg},
};
use crate::x86::{self, msr};

/// EFER bits Dom0 may write (APM Vol. 2, 3.1.7): SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE,
/// MCOMMIT, INTWB, UAIE, AutoIBRS. Others are reserved and fault.
const EFER_WRITABLE: u64 = (1 << 0) | (0x3f << 8) | (0x3 << 17) | (0x3 << 20);
/// EFER.LMA: read-only, owned by the processor.
const EFER_LMA: u64 = 1 << 10;
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

/// The VMCB inside `state`.
fn vmcb(state: &mut CpuState) -> &mut Vmcb {
    // SAFETY: `control` is a 4 KiB, 4 KiB-aligned page of `state`, used as the VMCB on SVM;
    // `Vmcb` is `repr(C)` plain data of that size and alignment, valid for any bytes.
    unsafe { &mut *state.control.0.as_mut_ptr().cast::<Vmcb>() }
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
    let efer = unsafe { x86::rdmsr(msr::EFER) } | EFER_SVME;
    // SAFETY: As above; VM_HSAVE_PA takes the 4 KiB-aligned host-save area, owned by `state`.
    unsafe {
        x86::wrmsr(msr::EFER, efer);
        x86::wrmsr(msr::VM_HSAVE_PA, hsave_pa);
    }

    let gdt = x86::sgdt();
    let idt = x86::sidt();
    // SAFETY: These MSRs exist on every x86-64 CPU.
    let pat = unsafe { x86::rdmsr(msr::IA32_PAT) };
    let v = vmcb(state);
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
        s.cr0 = (s.cr0 | (1 << 29)) & !(1 << 30);
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
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
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
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
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
/// and calls [`svm_exit_handler`]; a non-zero result leaves through [`super::root_leave`].
///
/// No VMLOAD/VMSAVE: the state they move (FS, GS, TR, LDTR, KernelGsBase, the syscall and
/// SYSENTER MSRs) stays Dom0's in the processor across VMRUN and #VMEXIT, and root mode does
/// not change it; a DomU run saves it first and puts it back after (`svm_guest.rs`).
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
        leave = sym super::root_leave,
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
        x86::wrmsr(msr::EFER, efer & !EFER_SVME);
    }
}

/// Dom0's state during one SVM exit.
struct Exit<'a> {
    state: &'a mut CpuState,
    kind: ExitKind,
}

impl Exit<'_> {
    fn vmcb(&mut self) -> &mut Vmcb {
        vmcb(self.state)
    }

    fn vmcb_ref(&self) -> &Vmcb {
        // SAFETY: As in `vmcb()`.
        unsafe { &*self.state.control.0.as_ptr().cast::<Vmcb>() }
    }

    /// The length of the instruction at RIP: from next RIP when the CPU saves it, otherwise
    /// from the bytes at CS:RIP read through Dom0's page tables. The common case, a 64-bit
    /// Dom0 whose bytes are exactly the exit kind's plain encoding within one page, costs one
    /// page walk and a compare; everything else is decoded in full ([`Self::decode_len`]).
    #[inline]
    fn insn_len(&mut self) -> Option<u64> {
        let info = &self.state.info;
        let v = self.vmcb_ref();
        if info.nrip_save && v.control.next_rip > v.save.rip {
            return Some(v.control.next_rip - v.save.rip);
        }
        let la = v.save.cs.base.wrapping_add(v.save.rip);
        let long = v.save.efer & EFER_LMA != 0;
        if let Some(plain) = self.kind.plain_encoding() {
            if long && la & 0xfff <= 0x1000 - plain.len() as u64 {
                let base = info.page_offset_base;
                let la57 = v.save.cr4 & x86::CR4_LA57 != 0;
                // Physical memory is read through Linux's direct map, which root mode's page
                // tables share.
                let pa = paging::translate(v.save.cr3, la57, la, |pa| {
                    // SAFETY: Page-table pages of Dom0 are RAM, mapped in the direct map.
                    Some(unsafe { (base.wrapping_add(pa) as *const u64).read_volatile() })
                });
                if let Some(pa) = pa {
                    let at = base.wrapping_add(pa) as *const u8;
                    let mut same = true;
                    for (i, &b) in plain.iter().enumerate() {
                        // SAFETY: The code page is RAM (the instruction was just fetched from
                        // it) and the bytes lie within it.
                        same &= unsafe { at.add(i).read_volatile() } == b;
                    }
                    if same {
                        return Some(plain.len() as u64);
                    }
                }
            }
        }
        self.decode_len()
    }

    /// The slow path of [`Self::insn_len`]: reads up to 15 bytes at CS:RIP in Dom0's paging
    /// mode, crossing pages, and decodes them.
    #[cold]
    #[inline(never)]
    fn decode_len(&self) -> Option<u64> {
        let base = self.state.info.page_offset_base;
        let v = self.vmcb_ref();
        let mode = if v.save.cs.attrib & (1 << 9) != 0 && v.save.efer & EFER_LMA != 0 {
            Mode::Bits64
        } else if v.save.cs.attrib & (1 << 10) != 0 {
            Mode::Bits32
        } else {
            Mode::Bits16
        };
        let paging = PagingMode::from_control_registers(v.save.cr0, v.save.cr4, v.save.efer);
        let la = v.save.cs.base.wrapping_add(v.save.rip);
        let mut bytes = [0u8; insn::MAX_LEN];
        let n = paging::read_linear_in(
            paging,
            v.save.cr3,
            la,
            &mut bytes,
            // SAFETY: Page-table pages of Dom0 are RAM, mapped in the direct map.
            |pa| Some(unsafe { ((base + pa) as *const u64).read_volatile() }),
            // SAFETY: The code page is RAM: the instruction was just fetched from it.
            |pa| Some(unsafe { ((base + pa) as *const u8).read_volatile() }),
        );
        insn::decode(&bytes[..n], mode).ok().map(|i| i.len as u64)
    }
}

impl Dom0Exit for Exit<'_> {
    fn info(&self) -> &super::CpuInfo {
        &self.state.info
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.state.frame.regs
    }

    fn cpl(&self) -> u8 {
        self.vmcb_ref().save.cpl
    }

    fn cr4(&self) -> u64 {
        self.vmcb_ref().save.cr4
    }

    #[inline]
    fn skip(&mut self) -> bool {
        let Some(len) = self.insn_len() else {
            return false;
        };
        let v = self.vmcb();
        v.save.rip += len;
        v.control.int_state &= !vmcb::INT_STATE_SHADOW;
        true
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let c = &mut self.vmcb().control;
        c.event_inj = u32::from(vector) | event::TYPE_EXCEPTION | event::VALID;
        if let Some(code) = error_code {
            c.event_inj |= event::ERROR_VALID;
            c.event_inj_err = code;
        }
    }

    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        match index {
            msr::EFER => {
                let svme = if self.state.view.efer_svme {
                    EFER_SVME
                } else {
                    0
                };
                Some((self.vmcb_ref().save.efer & !EFER_SVME) | svme)
            }
            msr::VM_HSAVE_PA => Some(self.state.view.hsave_pa),
            _ => None,
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64) -> bool {
        match index {
            msr::EFER => {
                if value & !EFER_WRITABLE != 0 {
                    return false;
                }
                self.state.view.efer_svme = value & EFER_SVME != 0;
                let s = &mut self.vmcb().save;
                s.efer = (value & !EFER_LMA) | (s.efer & EFER_LMA) | EFER_SVME;
                true
            }
            msr::VM_HSAVE_PA => {
                if value & 0xfff != 0 {
                    return false;
                }
                self.state.view.hsave_pa = value;
                true
            }
            // VM_CR: SVM is Keel's; Dom0's writes have no effect.
            msr::VM_CR => true,
            _ => false,
        }
    }

    fn cr_access(&mut self) -> bool {
        false
    }

    fn test_intercept(&mut self, on: bool) -> bool {
        let c = &mut self.vmcb().control;
        if on {
            c.intercept_misc2 |= misc2::WBINVD;
        } else {
            c.intercept_misc2 &= !misc2::WBINVD;
        }
        true
    }

    fn run_guest(&mut self, vcpu: &mut super::guest::VcpuState) {
        // SAFETY: Called from Dom0's Run hypercall on this CPU, GIF clear, Dom0's state saved
        // by VMSAVE; the Linux side holds the vCPU for the whole call.
        unsafe { super::svm_guest::run(self.state, vcpu) };
    }

    fn prepare_leave(&mut self) {
        let s = &self.vmcb_ref().save;
        let (rsp, rip, rflags, cr3, cr4, cr2, dr7) =
            (s.rsp, s.rip, s.rflags, s.cr3, s.cr4, s.cr2, s.dr7);
        // SAFETY: This is the hand-back after a Leave call: root mode returns to Dom0 next.
        unsafe { svm_off(s.efer, self.state.view.hsave_pa) };
        // SAFETY: SVM is off; these restore Dom0's own values of registers VMRUN's host state
        // does not cover (it already matched Dom0's in everything else).
        unsafe {
            x86::write_cr4(cr4);
            x86::write_cr2(cr2);
            asm!("mov dr7, {}", in(reg) dr7, options(nomem, nostack));
        }
        super::push_return(&mut self.state.frame, rsp, rip, rflags, cr3);
    }

    fn dump(&mut self, why: &str) {
        let v = self.vmcb_ref();
        let info = &self.state.info;
        rlog!(
            info,
            Err,
            "CPU {}: {}: exit code {:#x} info1 {:#x} info2 {:#x} intinfo {:#x}",
            info.cpu,
            why,
            v.control.exit_code,
            v.control.exit_info_1,
            v.control.exit_info_2,
            v.control.exit_int_info
        );
        rlog!(
            info,
            Err,
            " rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cpl={}",
            v.save.rip,
            v.save.rsp,
            v.save.rflags,
            v.save.cs.selector,
            v.save.cpl
        );
        rlog!(
            info,
            Err,
            " cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            v.save.cr0,
            v.save.cr3,
            v.save.cr4,
            v.save.efer
        );
        super::dump_regs(info, &self.state.frame.regs);
    }
}

/// Handles one #VMEXIT. Returns 0 to run Dom0 again, 1 to leave (the frame then holds where
/// to).
extern "C" fn svm_exit_handler(frame: *mut HostFrame) -> u64 {
    // SAFETY: `frame` is this CPU's frame (the VMRUN loop's RSP), whose `state` points at the
    // CpuState that contains it; root mode on this CPU is its only user while it runs.
    let state = unsafe { &mut *(*frame).state };
    let mut exit = Exit {
        state,
        kind: ExitKind::Other,
    };
    let (code, info1) = {
        let c = &exit.vmcb_ref().control;
        (c.exit_code, c.exit_info_1)
    };
    exit.vmcb().control.tlb_ctl = 0;
    // Guest RAX lives in the VMCB; the common code works on the frame.
    exit.state.frame.regs.gpr[RAX] = exit.vmcb_ref().save.rax;
    let kind = ExitKind::from_svm(code, info1);
    exit.kind = kind;
    let action = match kind {
        ExitKind::EntryFailure if !exit.state.info.launched.load(Ordering::Relaxed) => {
            // The first VMRUN failed: hand the CPU back at the launch point with RAX = 1. The
            // VMCB's save area may hold host state by now: the launch point is in the frame,
            // and the control registers are still the launch's.
            exit.dump("the first VMRUN failed");
            exit.state.frame.regs.gpr[RAX] = 1;
            // SAFETY: The launch is abandoned: root mode returns to the launch point next. EFER
            // exists on every x86-64 CPU.
            unsafe { svm_off(x86::rdmsr(msr::EFER), 0) };
            let f = &mut exit.state.frame;
            let (rsp, rip, cr3) = (f.launch_rsp, f.launch_rip, f.launch_cr3);
            super::push_return(f, rsp, rip, x86::read_rflags(), cr3);
            return 1;
        }
        ExitKind::TripleFault | ExitKind::EntryFailure => {
            exit.dump("Dom0 cannot continue on this CPU");
            super::park();
        }
        _ => handle(&mut exit, kind, code),
    };
    let rax = exit.state.frame.regs.gpr[RAX];
    exit.vmcb().save.rax = rax;
    match action {
        ExitAction::Resume => 0,
        ExitAction::Leave => 1,
    }
}
