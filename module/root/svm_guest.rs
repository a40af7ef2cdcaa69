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

use super::guest::{self, ArchState, GuestExit, GuestVendor, Next, VcpuState};
use super::{
    guest_run_epilogue, load_gprs_from_rax, objtool_frame_non_standard, save_gprs_to_rax, CpuState,
    GuestRegs, RAX, UD,
};
use crate::keel_core::{
    caps::{Vendor, EFER_SVME},
    exit::ExitKind,
    insn,
    vmcb::{self, event, misc1, misc2, Vmcb},
};
use crate::x86;

/// V_INTR_MASKING (VMCB int_ctl bit 24).
const V_INTR_MASKING: u32 = 1 << 24;
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

/// The vCPU's VMCB.
fn vmcb(v: &mut VcpuState) -> &mut Vmcb {
    // SAFETY: `control` is a 4 KiB-aligned page of the vCPU, used as its VMCB on SVM; `Vmcb`
    // is plain data of that size and alignment, valid for any bytes.
    unsafe { &mut *v.control.0.as_mut_ptr().cast::<Vmcb>() }
}

/// The vCPU's VMCB, shared.
fn vmcb_ref(v: &VcpuState) -> &Vmcb {
    // SAFETY: As in `vmcb`.
    unsafe { &*v.control.0.as_ptr().cast::<Vmcb>() }
}

/// Sets up the VMCB controls and maps of a vCPU, once.
fn setup_controls(v: &mut VcpuState) {
    v.io_map.iter_mut().for_each(|p| p.0.fill(0xff));
    // SAFETY: `msr_map` is two contiguous pages of the vCPU, 8 KiB in all.
    let map = unsafe { &mut *v.msr_map.as_mut_ptr().cast::<[u8; vmcb::MSRPM_SIZE]>() };
    map.fill(0xff);
    for m in guest::PASSTHROUGH_MSRS {
        if let Some((byte, bit)) = vmcb::msrpm_position(m) {
            map[byte] &= !(3 << bit);
        }
    }
    let iopm_pa = v.pa_of(v.io_map[0].0.as_ptr());
    let msrpm_pa = v.pa_of(v.msr_map[0].0.as_ptr());
    let (asid, ncr3) = (v.asid, v.domain.slat_root);
    let c = &mut vmcb(v).control;
    c.intercept_exceptions = 1 << UD;
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
    c.nested_cr3 = ncr3;
}

/// Writes `a` into the VMCB.
fn load_arch(v: &mut VcpuState) {
    let a = v.arch;
    let s = &mut vmcb(v).save;
    s.rip = a.rip;
    s.rsp = a.rsp;
    s.rflags = a.rflags | 2;
    s.cs = a.cs;
    s.ds = a.ds;
    s.es = a.es;
    s.fs = a.fs;
    s.gs = a.gs;
    s.ss = a.ss;
    s.tr = a.tr;
    s.ldtr = a.ldt;
    s.gdtr = a.gdt;
    s.idtr = a.idt;
    s.cpl = ((a.ss.attrib >> 5) & 3) as u8;
    s.cr0 = a.cr0;
    s.cr2 = a.cr2;
    s.cr3 = a.cr3;
    s.cr4 = a.cr4;
    s.efer = a.efer | EFER_SVME;
    s.g_pat = a.pat;
    s.dr7 = 0x400;
    s.dr6 = 0xffff_0ff0;
    s.star = a.star;
    s.lstar = a.lstar;
    s.cstar = a.cstar;
    s.sfmask = a.sfmask;
    s.kernel_gs_base = a.kernel_gs_base;
    s.sysenter_cs = a.sysenter_cs;
    s.sysenter_esp = a.sysenter_esp;
    s.sysenter_eip = a.sysenter_eip;
}

/// Reads the VMCB into `a`.
fn save_arch(v: &mut VcpuState) {
    let s = &vmcb_ref(v).save;
    let a = ArchState {
        rip: s.rip,
        rsp: s.rsp,
        rflags: s.rflags,
        cs: s.cs,
        ds: s.ds,
        es: s.es,
        fs: s.fs,
        gs: s.gs,
        ss: s.ss,
        tr: s.tr,
        ldt: s.ldtr,
        gdt: s.gdtr,
        idt: s.idtr,
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        efer: s.efer & !EFER_SVME,
        pat: s.g_pat,
        xcr0: v.arch.xcr0,
        star: s.star,
        lstar: s.lstar,
        cstar: s.cstar,
        sfmask: s.sfmask,
        kernel_gs_base: s.kernel_gs_base,
        sysenter_cs: s.sysenter_cs,
        sysenter_esp: s.sysenter_esp,
        sysenter_eip: s.sysenter_eip,
    };
    v.arch = a;
}

/// A vCPU during one SVM exit.
struct Exit<'a> {
    v: &'a mut VcpuState,
    nrip_save: bool,
}

impl GuestVendor for Exit<'_> {
    fn vcpu(&mut self) -> &mut VcpuState {
        self.v
    }

    fn vcpu_ref(&self) -> &VcpuState {
        self.v
    }

    fn rip(&self) -> u64 {
        vmcb_ref(self.v).save.rip
    }

    fn set_rip(&mut self, rip: u64) {
        let v = vmcb(self.v);
        v.save.rip = rip;
        v.control.int_state &= !vmcb::INT_STATE_SHADOW;
    }

    fn cpl(&self) -> u8 {
        vmcb_ref(self.v).save.cpl
    }

    fn control_regs(&self) -> (u64, u64, u64, u64) {
        let s = &vmcb_ref(self.v).save;
        (s.cr0, s.cr3, s.cr4, s.efer & !EFER_SVME)
    }

    fn cs(&self) -> (u64, u16) {
        let s = &vmcb_ref(self.v).save;
        (s.cs.base, s.cs.attrib)
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let c = &mut vmcb(self.v).control;
        c.event_inj = u32::from(vector) | event::TYPE_EXCEPTION | event::VALID;
        if let Some(code) = error_code {
            c.event_inj |= event::ERROR_VALID;
            c.event_inj_err = code;
        }
    }

    fn insn_len(&mut self) -> Option<u64> {
        let c = &vmcb_ref(self.v).control;
        let rip = self.rip();
        if self.nrip_save && c.next_rip > rip {
            return Some(c.next_rip - rip);
        }
        let mut bytes = [0u8; insn::MAX_LEN];
        let n = guest::fetch(self, &mut bytes);
        insn::decode(&bytes[..n], guest::mode(self))
            .ok()
            .map(|i| i.len as u64)
    }

    fn set_efer(&mut self, efer: u64) {
        vmcb(self.v).save.efer = efer | EFER_SVME;
    }

    fn pat(&self) -> u64 {
        vmcb_ref(self.v).save.g_pat
    }

    fn set_pat(&mut self, pat: u64) {
        vmcb(self.v).save.g_pat = pat;
    }
}

/// Handles one #VMEXIT of the guest.
fn handle_exit(v: &mut VcpuState, nrip_save: bool) -> Next {
    let (code, info1, info2) = {
        let c = &vmcb_ref(v).control;
        (c.exit_code, c.exit_info_1, c.exit_info_2)
    };
    let mut g = Exit { v, nrip_save };
    match code {
        // Host interrupts and NMIs stay pending; Dom0 takes them once it runs again.
        0x60 | 0x61 => Next::ToDom0,
        0x46 => guest::invalid_opcode(&mut g),
        0x72 => guest::cpuid(&mut g, Vendor::Svm),
        0x76 => {
            x86::wbinvd();
            guest::skip(&mut g);
            Next::Resume
        }
        0x78 => guest::hlt(&mut g),
        0x7b => {
            if info1 & (1 << 2) != 0 {
                let rip = g.rip();
                return guest::unhandled(&mut g, code, rip);
            }
            let size = match (info1 >> 4) & 7 {
                1 => 1,
                2 => 2,
                _ => 4,
            };
            // EXITINFO2 holds the next RIP for IOIO intercepts.
            let len = info2.wrapping_sub(g.rip()) as u8;
            guest::io(&mut g, (info1 >> 16) as u16, size, info1 & 1 != 0, len)
        }
        0x7c => guest::msr(&mut g, info1 & 1 != 0),
        0x7f => guest::shutdown(&mut g),
        0x81 => guest::hypercall(&mut g, 3),
        0x7a | 0x80 | 0x82..=0x86 | 0x8a | 0x8b => {
            g.inject(UD, None);
            Next::Resume
        }
        0x8d => {
            let supported = g.v.domain.xcr0_supported;
            guest::xsetbv(&mut g, supported)
        }
        0x400 => {
            // Error code: bit 1 write, bit 4 instruction fetch.
            let access = if info1 & (1 << 4) != 0 {
                4
            } else if info1 & 2 != 0 {
                2
            } else {
                1
            };
            guest::slat_fault(&mut g, info2, access)
        }
        vmcb::exit_code::INVALID | 0xffff_ffff => {
            g.v.exit = GuestExit::EntryFailure {
                reason: code,
                qualification: info1,
            };
            g.v.exit_rip = g.rip();
            Next::ToDom0
        }
        _ => guest::unhandled(&mut g, code, info1),
    }
}

/// Runs the vCPU `v` on this CPU until an exit for Dom0 (`v.exit` says which).
///
/// # Safety
///
/// Called from Dom0's exit handler on this CPU (GIF clear, Dom0's state saved in its VMCB by
/// VMSAVE); `v` is not running anywhere else and its domain's tables stay allocated during
/// the run.
pub(crate) unsafe fn run(dom0: &mut CpuState, v: &mut VcpuState) {
    let nrip_save = dom0.info.nrip_save;
    if !v.initialized {
        setup_controls(v);
        v.initialized = true;
        v.arch_dirty = true;
    }
    if v.arch_dirty {
        load_arch(v);
        v.arch_dirty = false;
    }
    // The vCPU may have run on another CPU, or its ASID been used by another domain.
    vmcb(v).control.tlb_ctl = vmcb::TLB_CONTROL_FLUSH_ALL;
    vmcb(v).control.event_inj = 0;
    guest::complete_pending(&mut Exit {
        v: &mut *v,
        nrip_save,
    });
    let xcr0 = guest::host_xcr0(v);
    // SAFETY: XSAVE is enabled (the Linux side checked); the areas are the vCPU's.
    unsafe { guest::fpu_enter(v, xcr0) };
    let vmcb_pa = v.pa_of(v.control.0.as_ptr());
    let dom0_vmcb_pa = dom0.frame.vmcb_pa;
    loop {
        let rax = v.regs.gpr[RAX];
        vmcb(v).save.rax = rax;
        // SAFETY: The VMCB is complete; the trampoline saves the guest's GPRs and gives the
        // processor Dom0's VMLOAD state back before returning.
        unsafe { svm_guest_enter(&mut v.regs, vmcb_pa, dom0_vmcb_pa) };
        let c = &mut vmcb(v).control;
        c.tlb_ctl = 0;
        c.event_inj = 0;
        // An event whose delivery the exit interrupted is delivered again (NMIs and hardware
        // exceptions; a software interrupt's instruction simply runs again).
        let kind = c.exit_int_info & (7 << 8);
        if c.exit_int_info & event::VALID != 0 && (kind == 2 << 8 || kind == event::TYPE_EXCEPTION)
        {
            c.event_inj = c.exit_int_info;
            c.event_inj_err = c.exit_int_info_err;
        }
        let (code, info1) = (c.exit_code, c.exit_info_1);
        if code != vmcb::exit_code::INVALID && code != 0xffff_ffff {
            v.regs.gpr[RAX] = vmcb_ref(v).save.rax;
        }
        v.counters[ExitKind::from_svm(code, info1) as usize] += 1;
        v.exit = GuestExit::None;
        match handle_exit(v, nrip_save) {
            Next::Resume => continue,
            Next::ToDom0 => break,
        }
    }
    vmcb(v).save.rax = v.regs.gpr[RAX];
    // SAFETY: As for `fpu_enter`.
    unsafe { guest::fpu_leave(v, xcr0) };
    if matches!(v.exit, GuestExit::EntryFailure { .. }) {
        // A refused VMRUN may leave the save area half written (QEMU stores the host's state
        // there): the guest's state is still the one Dom0 gave, loaded again next time.
        v.arch_dirty = true;
    } else {
        save_arch(v);
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
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
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
