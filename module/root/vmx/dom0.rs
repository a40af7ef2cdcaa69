// SPDX-License-Identifier: GPL-2.0
//! Intel VMX beneath Dom0: VMXON, a VMCS that describes the running CPU, the launch, the exit
//! trampoline and Dom0's exits, and the way back out (VMXOFF).
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::{
    arch::naked_asm,
    mem::offset_of,
    sync::atomic::{AtomicBool, Ordering},
};

use super::ops::{vmclear, vmptrld, vmxoff, vmxon, VmFail, Vmcs};
use super::{control, ControlError, Ctl, Vmx};
use crate::keel_core::{
    arch::{cr4, feature_control, msr},
    exit::{Exit, ExitKind, VmxInfo},
    vmcs::{self, ar, cpu_based, entry_ctl, exit_ctl, field, intr_info, secondary},
};
use crate::root::dom0::{Dom0, Dom0Hal, LeavePoint};
use crate::root::exit::{self, Action};
use crate::root::vcpu::VcpuState;
use crate::root::{
    load_gprs_but_rax, objtool_frame_non_standard, park, pop_callee_saved_ret, push_callee_saved,
    push_return, rlog, root_leave, save_gprs_but_rax, x86, CpuInfo, CpuState, Dom0View, HostFrame,
    RAX,
};

/// Writes fields into the current VMCS, stopping at the first failure (a launch error).
macro_rules! write_fields {
    ($vmcs:expr, $(($f:expr, $v:expr)),* $(,)?) => {{
        $( $vmcs.try_write($f, $v).map_err(|e| LaunchError::Vmwrite($f.encoding(), e))?; )*
    }};
}

/// Why a launch failed.
#[derive(Clone, Copy)]
pub(crate) enum LaunchError {
    /// CR0 has a bit VMX operation does not allow.
    Cr0Unsupported,
    /// VMXON failed.
    Vmxon(VmFail),
    /// VMCLEAR/VMPTRLD of the VMCS failed.
    Vmptrld(VmFail),
    /// A VMCS write failed (field).
    Vmwrite(u32, VmFail),
    /// A control Keel needs is not allowed (which control MSR, the missing bits).
    Control(u32, u32),
    /// VMLAUNCH failed.
    Vmlaunch(VmFail),
    /// The first VM entry failed on the guest state (exit reason).
    EntryFailed,
}

// Debug is the message: the kernel's `pr_*` formats core's Debug, not its Display.
impl From<ControlError> for LaunchError {
    fn from(e: ControlError) -> Self {
        Self::Control(e.msr, e.missing)
    }
}

impl core::fmt::Debug for LaunchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Cr0Unsupported => write!(f, "CR0 has bits VMX operation does not allow"),
            Self::Vmxon(e) => write!(f, "VMXON failed ({e:?})"),
            Self::Vmptrld(e) => write!(f, "VMCLEAR/VMPTRLD failed ({e:?})"),
            Self::Vmwrite(field, e) => write!(f, "VMWRITE of field {field:#x} failed ({e:?})"),
            Self::Control(msr, bits) => {
                write!(
                    f,
                    "controls {bits:#x} not allowed by capability MSR {msr:#x}"
                )
            }
            Self::Vmlaunch(e) => write!(f, "VMLAUNCH failed ({e:?})"),
            Self::EntryFailed => write!(f, "the first VM entry failed on the guest state"),
        }
    }
}

/// The physical address of something inside `state`.
fn pa_of(state: &CpuState, p: *const u8) -> u64 {
    p as u64 - state.info.page_offset_base
}

/// A segment register for the guest-state area: selector, base, limit, access rights.
fn segment(sel: u16, base: u64) -> (u16, u64, u32, u32) {
    match x86::lar(sel) {
        Some(lar) if sel & !3 != 0 => (sel, base, x86::lsl(sel), vmcs::ar_from_lar(lar)),
        _ => (sel, base, 0, ar::UNUSABLE),
    }
}

/// Enters VMX operation on this CPU and continues as Dom0 in non-root mode.
///
/// # Safety
///
/// Interrupts are off and stay off until this returns; `state` is this CPU's zero-initialised
/// state (but for `info`), exclusively owned by this CPU until [`leave`] is called, and
/// `host_cr3` the physical address of page tables that map the kernel for as long as Keel is
/// loaded (init_mm's).
///
/// `corrupt` (a test of the rollback) makes the guest state invalid, so that the first entry
/// fails.
pub(crate) unsafe fn launch(
    state: &mut CpuState,
    host_cr3: u64,
    corrupt: bool,
) -> Result<(), LaunchError> {
    // SAFETY: IA32_FEATURE_CONTROL exists on VMX CPUs; the probe checked it allows VMX outside
    // SMX or is unlocked, in which case setting and locking it is what the firmware should
    // have done (Linux does the same at boot).
    unsafe {
        let fc = x86::rdmsr(msr::IA32_FEATURE_CONTROL);
        if fc & feature_control::LOCKED == 0 {
            x86::wrmsr(
                msr::IA32_FEATURE_CONTROL,
                fc | feature_control::LOCKED | feature_control::VMX_OUTSIDE_SMX,
            );
        }
    }
    // SAFETY: These MSRs exist on every VMX CPU (SDM A.7, A.8).
    let (cr0_fixed0, cr0_fixed1, cr4_fixed0, cr4_fixed1, basic) = unsafe {
        (
            x86::rdmsr(msr::IA32_VMX_CR0_FIXED0),
            x86::rdmsr(msr::IA32_VMX_CR0_FIXED1),
            x86::rdmsr(msr::IA32_VMX_CR4_FIXED0),
            x86::rdmsr(msr::IA32_VMX_CR4_FIXED1),
            x86::rdmsr(msr::IA32_VMX_BASIC),
        )
    };
    let cr0 = x86::read_cr0();
    if (cr0 | cr0_fixed0) & cr0_fixed1 != cr0 {
        return Err(LaunchError::Cr0Unsupported);
    }
    let dom0_cr4 = x86::read_cr4();
    let cr4 = (dom0_cr4 | cr4_fixed0 | cr4::VMXE) & cr4_fixed1;
    // SAFETY: Setting VMXE (allowed by the fixed bits) changes nothing Linux relies on; Linux
    // keeps writing its own CR4 value, and from now on VMX masks the bit from it.
    unsafe { x86::write_cr4(cr4) };

    let revision = (basic & 0x7fff_ffff) as u32;
    state.region.0[..4].copy_from_slice(&revision.to_le_bytes());
    state.control.0[..4].copy_from_slice(&revision.to_le_bytes());
    let region_pa = pa_of(state, state.region.0.as_ptr());
    let vmcs_pa = pa_of(state, state.control.0.as_ptr());

    // SAFETY: CR4.VMXE is set, IA32_FEATURE_CONTROL allows VMX, the region holds the revision
    // id and belongs to this CPU's state until `leave`.
    if let Err(e) = unsafe { vmxon(region_pa) } {
        // SAFETY: Restores the CR4 Linux had.
        unsafe { x86::write_cr4(dom0_cr4) };
        return Err(LaunchError::Vmxon(e));
    }
    // SAFETY: In VMX operation; the VMCS region holds the revision id and lives in `state`.
    let loaded = unsafe { vmclear(vmcs_pa).and_then(|()| vmptrld(vmcs_pa)) };
    let result = loaded.map_err(LaunchError::Vmptrld).and_then(|vmcs| {
        setup_vmcs(&vmcs, state, host_cr3, cr4)?;
        if corrupt {
            // RFLAGS bit 1 must be set (SDM 27.3.1.4): this entry fails.
            write_fields!(vmcs, (field::GUEST_RFLAGS, 0));
        }
        // SAFETY: The VMCS is current and describes this CPU; `vmx_launch` continues as the
        // guest at its return point or returns the failure.
        match unsafe { vmx_launch() } {
            0 => Ok(()),
            2 => Err(LaunchError::EntryFailed),
            // VMLAUNCH with a current VMCS fails with VMfailValid.
            _ => Err(LaunchError::Vmlaunch(VmFail::Valid(
                vmcs.read(field::VM_INSTRUCTION_ERROR),
            ))),
        }
    });
    if matches!(result, Err(e) if !matches!(e, LaunchError::EntryFailed)) {
        // SAFETY: Leaves VMX operation entered above; nothing will use the VMCS again.
        unsafe {
            // A failed VMCLEAR changes nothing here: VMXOFF follows.
            let _ = vmclear(vmcs_pa);
            vmxoff();
            x86::write_cr4(dom0_cr4);
        }
    }
    result
}

/// Fills the current VMCS from the running CPU.
fn setup_vmcs(
    vmcs: &Vmcs,
    state: &mut CpuState,
    host_cr3: u64,
    cr4: u64,
) -> Result<(), LaunchError> {
    let pin = control(Ctl::Pin, 0, 0)?;
    let proc = control(
        Ctl::Proc,
        cpu_based::USE_MSR_BITMAPS | cpu_based::ACTIVATE_SECONDARY_CONTROLS,
        0,
    )?;
    // Instructions Linux may use that fault in non-root mode unless enabled; enabled where the
    // CPU has them.
    let proc2 = control(
        Ctl::Proc2,
        0,
        secondary::ENABLE_RDTSCP
            | secondary::ENABLE_INVPCID
            | secondary::ENABLE_XSAVES
            | secondary::ENABLE_USR_WAIT_PAUSE,
    )?;
    let exit = control(
        Ctl::Exit,
        exit_ctl::HOST_ADDR_SPACE_SIZE
            | exit_ctl::SAVE_DEBUG_CONTROLS
            | exit_ctl::SAVE_IA32_PAT
            | exit_ctl::LOAD_IA32_PAT
            | exit_ctl::SAVE_IA32_EFER
            | exit_ctl::LOAD_IA32_EFER,
        0,
    )?;
    let entry = control(
        Ctl::Entry,
        entry_ctl::IA32E_MODE
            | entry_ctl::LOAD_DEBUG_CONTROLS
            | entry_ctl::LOAD_IA32_PAT
            | entry_ctl::LOAD_IA32_EFER,
        0,
    )?;

    // The MSR bitmap: only IA32_FEATURE_CONTROL exits (reads show VMX locked off, writes #GP).
    state.msr_map[0].0.fill(0);
    let fc = msr::IA32_FEATURE_CONTROL as usize;
    state.msr_map[0].0[fc / 8] |= 1 << (fc % 8); // read-low bitmap
    state.msr_map[0].0[2048 + fc / 8] |= 1 << (fc % 8); // write-low bitmap
    let msr_bitmap_pa = pa_of(state, state.msr_map[0].0.as_ptr());

    let gdt = x86::sgdt();
    let idt = x86::sidt();
    build_root_idt(state, &idt);
    let root_idt = pa_of(state, state.idt.0.as_ptr()) + state.info.page_offset_base;
    let tr = x86::read_tr();
    // SAFETY: `gdt` is the current GDTR and TR a valid TSS selector in it (Linux loaded it).
    let tr_base = unsafe { x86::system_segment_base(&gdt, tr) };
    let ldtr = x86::read_ldtr();
    let ldtr_base = if ldtr & !3 != 0 {
        // SAFETY: A non-null LDTR is a valid LDT selector of the current GDT.
        unsafe { x86::system_segment_base(&gdt, ldtr) }
    } else {
        0
    };
    // SAFETY: These MSRs exist on every x86-64 CPU.
    let (fs_base, gs_base, sysenter_cs, sysenter_esp, sysenter_eip, debugctl, pat, efer) = unsafe {
        (
            x86::rdmsr(msr::FS_BASE),
            x86::rdmsr(msr::GS_BASE),
            x86::rdmsr(msr::IA32_SYSENTER_CS),
            x86::rdmsr(msr::IA32_SYSENTER_ESP),
            x86::rdmsr(msr::IA32_SYSENTER_EIP),
            x86::rdmsr(msr::IA32_DEBUGCTL),
            x86::rdmsr(msr::IA32_PAT),
            x86::rdmsr(msr::EFER),
        )
    };
    let frame_addr = &raw mut state.frame;
    state.frame.state = state;
    let cr0 = x86::read_cr0();

    write_fields!(
        vmcs,
        (field::PIN_BASED_VM_EXEC_CONTROL, pin),
        (field::CPU_BASED_VM_EXEC_CONTROL, proc),
        (field::SECONDARY_VM_EXEC_CONTROL, proc2),
        (field::VM_EXIT_CONTROLS, exit),
        (field::VM_ENTRY_CONTROLS, entry),
        (field::EXCEPTION_BITMAP, 0),
        (field::PAGE_FAULT_ERROR_CODE_MASK, 0),
        (field::PAGE_FAULT_ERROR_CODE_MATCH, 0),
        (field::CR3_TARGET_COUNT, 0),
        (field::VM_EXIT_MSR_STORE_COUNT, 0),
        (field::VM_EXIT_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_MSR_LOAD_COUNT, 0),
        (field::VM_ENTRY_INTR_INFO_FIELD, 0),
        (field::MSR_BITMAP, msr_bitmap_pa),
        (field::CR0_GUEST_HOST_MASK, 0),
        (field::CR0_READ_SHADOW, cr0),
        (field::CR4_GUEST_HOST_MASK, cr4::VMXE),
        (field::CR4_READ_SHADOW, cr4 & !cr4::VMXE),
        (field::VMCS_LINK_POINTER, u64::MAX),
        // Host: the state root mode runs in.
        (field::HOST_CR0, cr0),
        (field::HOST_CR3, host_cr3),
        (field::HOST_CR4, cr4),
        (field::HOST_CS_SELECTOR, x86::read_cs()),
        (field::HOST_SS_SELECTOR, x86::read_ss()),
        (field::HOST_DS_SELECTOR, 0),
        (field::HOST_ES_SELECTOR, 0),
        (field::HOST_FS_SELECTOR, 0),
        (field::HOST_GS_SELECTOR, 0),
        (field::HOST_TR_SELECTOR, tr),
        (field::HOST_FS_BASE, fs_base),
        (field::HOST_GS_BASE, gs_base),
        (field::HOST_TR_BASE, tr_base),
        (field::HOST_GDTR_BASE, gdt.base),
        (field::HOST_IDTR_BASE, root_idt),
        (field::HOST_IA32_SYSENTER_CS, sysenter_cs as u32),
        (field::HOST_IA32_SYSENTER_ESP, sysenter_esp),
        (field::HOST_IA32_SYSENTER_EIP, sysenter_eip),
        (field::HOST_IA32_PAT, pat),
        (field::HOST_IA32_EFER, efer),
        (field::HOST_RSP, frame_addr as u64),
        (field::HOST_RIP, vmx_exit as *const () as u64),
        // Guest: the running CPU, as it is now (RSP and RIP are set by `vmx_launch`).
        (field::GUEST_CR0, cr0),
        (field::GUEST_CR3, x86::read_cr3()),
        (field::GUEST_CR4, cr4),
        (field::GUEST_DR7, x86::read_dr7()),
        (field::GUEST_RFLAGS, x86::read_rflags()),
        (field::GUEST_GDTR_BASE, gdt.base),
        (field::GUEST_GDTR_LIMIT, gdt.limit.into()),
        (field::GUEST_IDTR_BASE, idt.base),
        (field::GUEST_IDTR_LIMIT, idt.limit.into()),
        (field::GUEST_IA32_DEBUGCTL, debugctl),
        (field::GUEST_IA32_PAT, pat),
        (field::GUEST_IA32_EFER, efer),
        (field::GUEST_SYSENTER_CS, sysenter_cs as u32),
        (field::GUEST_SYSENTER_ESP, sysenter_esp),
        (field::GUEST_SYSENTER_EIP, sysenter_eip),
        (field::GUEST_ACTIVITY_STATE, 0),
        (field::GUEST_INTERRUPTIBILITY_INFO, 0),
        (field::GUEST_PENDING_DBG_EXCEPTIONS, 0),
    );
    let segs = [
        (
            field::GUEST_ES_SELECTOR,
            field::GUEST_ES_BASE,
            field::GUEST_ES_LIMIT,
            field::GUEST_ES_AR_BYTES,
            segment(x86::read_es(), 0),
        ),
        (
            field::GUEST_CS_SELECTOR,
            field::GUEST_CS_BASE,
            field::GUEST_CS_LIMIT,
            field::GUEST_CS_AR_BYTES,
            segment(x86::read_cs(), 0),
        ),
        (
            field::GUEST_SS_SELECTOR,
            field::GUEST_SS_BASE,
            field::GUEST_SS_LIMIT,
            field::GUEST_SS_AR_BYTES,
            segment(x86::read_ss(), 0),
        ),
        (
            field::GUEST_DS_SELECTOR,
            field::GUEST_DS_BASE,
            field::GUEST_DS_LIMIT,
            field::GUEST_DS_AR_BYTES,
            segment(x86::read_ds(), 0),
        ),
        (
            field::GUEST_FS_SELECTOR,
            field::GUEST_FS_BASE,
            field::GUEST_FS_LIMIT,
            field::GUEST_FS_AR_BYTES,
            segment(x86::read_fs(), fs_base),
        ),
        (
            field::GUEST_GS_SELECTOR,
            field::GUEST_GS_BASE,
            field::GUEST_GS_LIMIT,
            field::GUEST_GS_AR_BYTES,
            segment(x86::read_gs(), gs_base),
        ),
        (
            field::GUEST_LDTR_SELECTOR,
            field::GUEST_LDTR_BASE,
            field::GUEST_LDTR_LIMIT,
            field::GUEST_LDTR_AR_BYTES,
            segment(ldtr, ldtr_base),
        ),
        (
            field::GUEST_TR_SELECTOR,
            field::GUEST_TR_BASE,
            field::GUEST_TR_LIMIT,
            field::GUEST_TR_AR_BYTES,
            segment(tr, tr_base),
        ),
    ];
    for (fsel, fbase, flimit, far, (sel, base, limit, arv)) in segs {
        write_fields!(
            vmcs,
            (fsel, sel),
            (fbase, base),
            (flimit, limit),
            (far, arv)
        );
    }
    Ok(())
}

/// Launches the current VMCS with this function's caller as the guest.
///
/// Arguments: none (the VMCS is current and complete but for GUEST_RSP and GUEST_RIP).
/// Result: 0 in the guest, now in VMX non-root mode, returning to the caller; 1 if VMLAUNCH
/// failed (VM_INSTRUCTION_ERROR says why), still in root mode; 2 if the entry failed on the
/// guest state and the exit handler already left VMX operation. The callee-saved registers
/// are preserved in every case.
///
/// # Safety
///
/// In VMX root operation with interrupts off and this CPU's complete VMCS current.
#[unsafe(naked)]
unsafe extern "C" fn vmx_launch() -> u64 {
    naked_asm!(
        push_callee_saved!(),
        "mov rax, {guest_rsp}",
        "vmwrite rax, rsp",
        "mov rax, {guest_rip}",
        "lea rdx, [rip + 2f]",
        "vmwrite rax, rdx",
        "xor eax, eax",
        "vmlaunch",
        // VMLAUNCH fell through: it failed.
        "mov eax, 1",
        "2:",
        // The guest starts here, with the stack as it was at the VMWRITE of GUEST_RSP and
        // RAX = 0 (or 2 if the exit handler rejected the first entry and left).
        pop_callee_saved_ret!(),
        guest_rsp = const field::GUEST_RSP.encoding(),
        guest_rip = const field::GUEST_RIP.encoding(),
    )
}

/// The VM-exit trampoline (HOST_RIP).
///
/// On entry RSP points at this CPU's [`HostFrame`] (HOST_RSP) and every GPR but RSP holds the
/// guest's value. It saves them into the frame, calls [`vmx_exit_handler`] with the frame and
/// either restores them and resumes the guest, or leaves through [`super::root_leave`].
///
/// # Safety
///
/// Entered by the processor on VM exit only (HOST_RIP), never called.
#[unsafe(naked)]
unsafe extern "C" fn vmx_exit() {
    naked_asm!(
        objtool_frame_non_standard!(),
        // HOST_RIP is reached by a VM exit, not a branch; ENDBR keeps IBT's checks quiet.
        "endbr64",
        "mov [rsp + 0x00], rax",
        save_gprs_but_rax!(),
        "mov rdi, rsp",
        "call {handler}",
        "test rax, rax",
        "jnz {leave}",
        "mov rax, [rsp + 0x00]",
        load_gprs_but_rax!(),
        "vmresume",
        // VMRESUME fell through: it failed.
        "mov rdi, rsp",
        "call {failed}",
        "ud2",
        handler = sym vmx_exit_handler,
        leave = sym root_leave,
        failed = sym vmx_resume_failed,
        this = sym vmx_exit,
    )
}

/// What Dom0's side of the VMX HAL needs besides the VMCS.
pub(crate) struct Dom0Vmx<'a> {
    /// Dom0's VMCS (physical).
    vmcs_pa: u64,
    /// This CPU's pending-NMI flag.
    nmi_pending: &'a AtomicBool,
}

impl Dom0Hal for Vmx<Dom0Vmx<'_>> {
    unsafe fn run_domu(&mut self, v: &mut VcpuState) {
        // SAFETY: The caller's contract; Dom0's VMCS is current (this token's) and made
        // current again before `run` returns.
        unsafe { super::domu::run(&self.vmcs, self.extra.vmcs_pa, self.extra.nmi_pending, v) };
    }

    fn test_intercept(&mut self, on: bool) -> bool {
        let current = self.vmcs.read(field::SECONDARY_VM_EXEC_CONTROL);
        let value = if on {
            // `control` refuses the bit when the CPU's capability MSR does not allow it.
            match control(Ctl::Proc2, current | secondary::WBINVD_EXITING, 0) {
                Ok(value) => value,
                Err(_) => return false,
            }
        } else {
            current & !secondary::WBINVD_EXITING
        };
        self.vmcs
            .try_write(field::SECONDARY_VM_EXEC_CONTROL, value)
            .is_ok()
    }

    unsafe fn leave(&mut self, _view: &Dom0View) -> LeavePoint {
        let v = &self.vmcs;
        let point = LeavePoint {
            rsp: v.read(field::GUEST_RSP),
            rip: v.read(field::GUEST_RIP),
            rflags: v.read(field::GUEST_RFLAGS),
            cr3: v.read(field::GUEST_CR3),
        };
        let cr4 = v.read(field::GUEST_CR4) & !cr4::VMXE;
        let gdt = x86::DescTable {
            base: v.read(field::GUEST_GDTR_BASE),
            limit: v.read(field::GUEST_GDTR_LIMIT) as u16,
        };
        let idt = x86::DescTable {
            base: v.read(field::GUEST_IDTR_BASE),
            limit: v.read(field::GUEST_IDTR_LIMIT) as u16,
        };
        let fs_base = v.read(field::GUEST_FS_BASE);
        let gs_base = v.read(field::GUEST_GS_BASE);
        let debugctl = v.read(field::GUEST_IA32_DEBUGCTL);
        let dr7 = v.read(field::GUEST_DR7);
        let ldtr = v.read(field::GUEST_LDTR_SELECTOR);
        // SAFETY: Leaving VMX operation for good on this CPU (the caller's contract), then
        // giving Dom0 back the state the exit replaced with host values (SDM 28.5: GDTR/IDTR
        // limits, FS/GS bases, DEBUGCTL, DR7 set to 0x400, LDTR made unusable); CR4 becomes
        // Dom0's without VMXE. TR's limit is fixed by the module after the hypercall returns
        // (it needs Linux's writable GDT). LDTR is loaded from Dom0's GDT, loaded just before.
        unsafe {
            // A failed VMCLEAR changes nothing here: VMXOFF follows.
            let _ = vmclear(self.extra.vmcs_pa);
            vmxoff();
            x86::write_cr4(cr4);
            x86::lgdt(&gdt);
            x86::lidt(&idt);
            x86::wrmsr(msr::FS_BASE, fs_base);
            x86::wrmsr(msr::GS_BASE, gs_base);
            x86::wrmsr(msr::IA32_DEBUGCTL, debugctl);
            x86::lldt(ldtr);
            x86::write_dr7(dr7);
        }
        point
    }
}

/// Handles one exit. Returns 0 to resume Dom0, 1 to leave (the frame then holds where to).
extern "C" fn vmx_exit_handler(frame: *mut HostFrame) -> u64 {
    // SAFETY: `frame` is this CPU's frame (HOST_RSP), whose `state` points at the CpuState that
    // contains it; root mode on this CPU is the only user of that state while it runs.
    let state = unsafe { &mut *(*frame).state };
    // SAFETY: A VM exit left Dom0's VMCS current; it stays so while this handler runs (a DomU
    // run makes it current again before it returns).
    let vmcs = unsafe { Vmcs::current() };
    let reason = vmcs.read(field::VM_EXIT_REASON);
    let decoded = Exit::from_vmx(reason, |f| match f {
        VmxInfo::Qualification => vmcs.read(field::EXIT_QUALIFICATION),
        VmxInfo::IntrInfo => vmcs.read(field::VM_EXIT_INTR_INFO).into(),
        VmxInfo::IntrErrorCode => vmcs.read(field::VM_EXIT_INTR_ERROR_CODE).into(),
        VmxInfo::GuestPhysical => vmcs.read(field::GUEST_PHYSICAL_ADDRESS),
    });
    let vmcs_pa = pa_of(state, state.control.0.as_ptr());
    let CpuState {
        frame,
        view,
        nmi_pending,
        info,
        ..
    } = state;
    let mut dom0 = Dom0 {
        hw: Vmx {
            vmcs,
            extra: Dom0Vmx {
                vmcs_pa,
                nmi_pending,
            },
        },
        regs: &mut frame.regs,
        cpu: info,
        view,
    };
    let action = exit::handle(&mut dom0, &decoded);
    if let Some((encoding, e)) = dom0.hw.vmcs.take_failure() {
        rlog!(
            info,
            Err,
            "CPU {}: VMCS field {:#x}: {:?} while handling {}",
            info.cpu,
            encoding,
            e,
            decoded.kind().name()
        );
    }
    match action {
        Action::Resume | Action::RunLoop | Action::ToUser => {
            deliver_pending_nmi(&dom0.hw.vmcs, nmi_pending);
            0
        }
        Action::Leave => {
            // SAFETY: The Leave hypercall: root mode returns to Dom0 on bare metal next.
            let p = unsafe { dom0.hw.leave(dom0.view) };
            push_return(frame, p.rsp, p.rip, p.rflags, p.cr3);
            1
        }
        Action::Crash if !dom0.cpu.launched.load(Ordering::Relaxed) => {
            // The first entry failed: leave VMX and return 2 at the launch point.
            dom0.dump("the first VM entry failed");
            dom0.regs.gpr[RAX] = 2;
            // SAFETY: The launch is abandoned: root mode returns to the launch point next.
            let p = unsafe { dom0.hw.leave(dom0.view) };
            push_return(frame, p.rsp, p.rip, p.rflags, p.cr3);
            1
        }
        Action::Crash => {
            dom0.dump("Dom0 cannot continue on this CPU");
            park();
        }
    }
}

/// Injects an NMI that arrived in root mode into Dom0, if Dom0 can take one now: no other
/// event is being injected and nothing blocks it (STI, MOV SS, an NMI being handled).
/// Otherwise it stays pending until a later exit. (An NMI that arrives after this check and
/// before VMRESUME also waits for the next exit.)
fn deliver_pending_nmi(vmcs: &Vmcs, nmi_pending: &AtomicBool) {
    if !nmi_pending.load(Ordering::Relaxed) {
        return;
    }
    let injecting = vmcs.read(field::VM_ENTRY_INTR_INFO_FIELD) & intr_info::VALID != 0;
    let blocked = vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO) & 0b1011 != 0;
    if !injecting && !blocked {
        nmi_pending.store(false, Ordering::Relaxed);
        let nmi = 2 | intr_info::TYPE_NMI | intr_info::VALID;
        vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, nmi);
    }
}

/// Builds root mode's IDT: Linux's gates, so that a fault in root mode still reaches Linux's
/// handlers (and its oops), but NMIs go to [`root_nmi`], which runs nothing of Linux's: it
/// records the NMI for Dom0 (an NMI is Dom0's: perf, the watchdog, backtraces).
fn build_root_idt(state: &mut CpuState, linux: &x86::DescTable) {
    let len = (usize::from(linux.limit) + 1).min(4096);
    // SAFETY: `linux` is this CPU's IDTR (Linux's IDT, mapped and readable); `len` is within
    // its limit and the root IDT's page.
    unsafe {
        core::ptr::copy_nonoverlapping(linux.base as *const u8, state.idt.0.as_mut_ptr(), len);
    }
    state.idt.0[len..].fill(0);
    let handler = root_nmi as *const () as u64;
    let gate = &mut state.idt.0[2 * 16..3 * 16];
    // A 64-bit interrupt gate (SDM 6.14.1): Linux's selector and type, no IST (root mode's
    // own stack: Linux's NMI stack may be in use by Dom0's handler), the handler's address.
    gate[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    gate[4] = 0;
    gate[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    gate[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
}

/// Root mode's NMI handler (VMX: the host IDT's NMI gate). Finds this CPU's state from the
/// IDTR (the IDT is a page of `CpuState`), sets `nmi_pending`, counts the NMI and returns.
/// Calls nothing; the interrupted root-mode code goes on (the kernel uses no red zone).
///
/// # Safety
///
/// Entered through the IDT only.
#[unsafe(naked)]
unsafe extern "C" fn root_nmi() {
    naked_asm!(
        objtool_frame_non_standard!(),
        "endbr64",
        "push rax",
        "sub rsp, 16",
        "sidt [rsp]",
        "mov rax, [rsp + 2]",
        "add rsp, 16",
        "mov byte ptr [rax + {pending}], 1",
        "lock inc qword ptr [rax + {count}]",
        "pop rax",
        "iretq",
        pending = const offset_of!(CpuState, nmi_pending) as isize - offset_of!(CpuState, idt) as isize,
        count = const (offset_of!(CpuState, info) + offset_of!(CpuInfo, counters)
            + ExitKind::Nmi as usize * 8) as isize - offset_of!(CpuState, idt) as isize,
        this = sym root_nmi,
    )
}

/// VMRESUME failed: the VMCS is bad and Dom0 cannot run on this CPU.
extern "C" fn vmx_resume_failed(frame: *mut HostFrame) -> ! {
    // SAFETY: As in `vmx_exit_handler`.
    let state = unsafe { &mut *(*frame).state };
    // SAFETY: VMRESUME failed with VMfailValid: Dom0's VMCS is still current.
    let error = unsafe { Vmcs::current() }.read(field::VM_INSTRUCTION_ERROR);
    let info = &state.info;
    rlog!(
        info,
        Err,
        "CPU {}: VMRESUME failed, VM-instruction error {}",
        info.cpu,
        error
    );
    park()
}
