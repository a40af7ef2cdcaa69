// SPDX-License-Identifier: GPL-2.0
//! Intel VMX beneath Dom0: VMXON, a VMCS that describes the running CPU, the launch, the exit
//! trampoline and Dom0's exit handlers, and the way back out (VMXOFF).
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::{arch::asm, arch::naked_asm, mem::offset_of, sync::atomic::Ordering};

use super::{
    handle, load_gprs_but_rax, objtool_frame_non_standard, rlog, save_gprs_but_rax, CpuState,
    Dom0Exit, ExitAction, GuestRegs, HostFrame, GP, RAX,
};
use crate::keel_core::{
    exit::ExitKind,
    vmcs::{
        self, ar, cpu_based, entry_ctl, exit_ctl, field, interruptibility, intr_info, secondary,
    },
};
use crate::x86::{self, msr};

/// CR4.VMXE.
const CR4_VMXE: u64 = 1 << 13;
/// IA32_FEATURE_CONTROL: lock, and VMX outside SMX.
const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
const FEATURE_CONTROL_VMX_INSIDE_SMX: u64 = 1 << 1;

/// A VMX instruction failed (SDM 31.2): VMfailInvalid (no current VMCS) or VMfailValid with
/// the VM-instruction error number.
#[derive(Clone, Copy)]
pub(crate) enum VmFail {
    /// VMfailInvalid.
    Invalid,
    /// VMfailValid(error number).
    Valid(u32),
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

impl core::fmt::Debug for VmFail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid => write!(f, "VMfailInvalid"),
            Self::Valid(n) => write!(f, "VMfailValid, VM-instruction error {n}"),
        }
    }
}

// Debug is the message: the kernel's `pr_*` formats core's Debug, not its Display.
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

/// Converts RFLAGS after a VMX instruction into its result (SDM 31.2: CF = VMfailInvalid,
/// ZF = VMfailValid).
fn vm_result(rflags: u64) -> Result<(), VmFail> {
    if rflags & 1 != 0 {
        Err(VmFail::Invalid)
    } else if rflags & (1 << 6) != 0 {
        Err(VmFail::Valid(vmread(field::VM_INSTRUCTION_ERROR) as u32))
    } else {
        Ok(())
    }
}

/// VMXON with the region at physical address `pa`.
///
/// # Safety
///
/// CR4.VMXE is set, IA32_FEATURE_CONTROL allows VMX, and `pa` is a zeroed 4 KiB region that
/// holds the VMCS revision id and stays allocated until VMXOFF.
unsafe fn vmxon(pa: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: The caller's contract; VMXON reads the 8-byte operand.
    unsafe { asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) rflags) };
    vm_result(rflags)
}

/// VMCLEAR of the VMCS at `pa`.
///
/// # Safety
///
/// In VMX operation; `pa` is a VMCS region that stays allocated.
pub(super) unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: The caller's contract.
    unsafe { asm!("vmclear [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) rflags) };
    vm_result(rflags)
}

/// VMPTRLD of the VMCS at `pa`.
///
/// # Safety
///
/// In VMX operation; `pa` is a cleared VMCS region that stays allocated while current.
pub(super) unsafe fn vmptrld(pa: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: The caller's contract.
    unsafe { asm!("vmptrld [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) rflags) };
    vm_result(rflags)
}

/// VMXOFF.
///
/// # Safety
///
/// In VMX root operation, with no VMCS that will be used again left current.
unsafe fn vmxoff() {
    // SAFETY: The caller's contract.
    unsafe { asm!("vmxoff", options(nostack)) };
}

/// Reads a field of the current VMCS. Only called with a current VMCS (during a launch after
/// VMPTRLD, or in an exit handler), where VMREAD of a valid field cannot fail.
pub(super) fn vmread(f: u32) -> u64 {
    let v: u64;
    // SAFETY: A VMCS is current (see above); VMREAD only writes its destination register.
    unsafe { asm!("vmread {}, {}", out(reg) v, in(reg) u64::from(f), options(nostack)) };
    v
}

/// Writes a field of the current VMCS. Only called with a current VMCS; the field's value is
/// checked by the processor at the next VM entry.
pub(super) fn vmwrite(f: u32, v: u64) -> Result<(), VmFail> {
    let rflags: u64;
    // SAFETY: A VMCS is current; VMWRITE changes only that VMCS.
    unsafe {
        asm!("vmwrite {}, {}", "pushfq", "pop {}", in(reg) u64::from(f), in(reg) v,
             lateout(reg) rflags, options(nostack))
    };
    vm_result(rflags)
}

/// Writes a list of fields, stopping at the first failure.
fn vmwrite_all(fields: &[(u32, u64)]) -> Result<(), LaunchError> {
    for &(f, v) in fields {
        vmwrite(f, v).map_err(|e| LaunchError::Vmwrite(f, e))?;
    }
    Ok(())
}

/// The physical address of something inside `state`.
fn pa_of(state: &CpuState, p: *const u8) -> u64 {
    p as u64 - state.info.page_offset_base
}

/// A segment register for the guest-state area: selector, base, limit, access rights.
fn segment(sel: u16, base: u64) -> (u64, u64, u64, u64) {
    match x86::lar(sel) {
        Some(lar) if sel & !3 != 0 => (
            sel.into(),
            base,
            x86::lsl(sel).into(),
            vmcs::ar_from_lar(lar).into(),
        ),
        _ => (sel.into(), base, 0, ar::UNUSABLE.into()),
    }
}

/// A VM-execution, VM-exit or VM-entry control field, for [`control`].
#[derive(Clone, Copy)]
pub(super) enum Ctl {
    /// Pin-based VM-execution controls.
    Pin,
    /// Primary processor-based VM-execution controls.
    Proc,
    /// Secondary processor-based VM-execution controls.
    Proc2,
    /// VM-exit controls.
    Exit,
    /// VM-entry controls.
    Entry,
}

/// Computes a control value from its capability MSR (the TRUE one when IA32_VMX_BASIC[55]
/// says it exists): the `wanted` bits, which must be allowed, and the `optional` bits the CPU
/// allows.
pub(super) fn control(ctl: Ctl, wanted: u32, optional: u32) -> Result<u64, LaunchError> {
    // SAFETY: IA32_VMX_BASIC exists on every VMX CPU.
    let true_ctls = unsafe { x86::rdmsr(msr::IA32_VMX_BASIC) } & (1 << 55) != 0;
    let pick = |plain, tru| if true_ctls { tru } else { plain };
    let cap_msr = match ctl {
        Ctl::Pin => pick(
            msr::IA32_VMX_PINBASED_CTLS,
            msr::IA32_VMX_TRUE_PINBASED_CTLS,
        ),
        Ctl::Proc => pick(
            msr::IA32_VMX_PROCBASED_CTLS,
            msr::IA32_VMX_TRUE_PROCBASED_CTLS,
        ),
        Ctl::Proc2 => msr::IA32_VMX_PROCBASED_CTLS2,
        Ctl::Exit => pick(msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS),
        Ctl::Entry => pick(msr::IA32_VMX_ENTRY_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS),
    };
    // SAFETY: The VMX control capability MSRs exist on every VMX CPU; the TRUE ones exist when
    // IA32_VMX_BASIC[55] is set, checked above.
    let cap = unsafe { x86::rdmsr(cap_msr) };
    let (value, missing) = vmcs::adjust_controls(wanted, cap);
    if missing != 0 {
        return Err(LaunchError::Control(cap_msr, missing));
    }
    Ok(vmcs::adjust_controls(value | optional, cap).0.into())
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
        if fc & FEATURE_CONTROL_LOCKED == 0 {
            x86::wrmsr(
                msr::IA32_FEATURE_CONTROL,
                fc | FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX,
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
    let cr4 = (dom0_cr4 | cr4_fixed0 | CR4_VMXE) & cr4_fixed1;
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
    let result = loaded
        .map_err(LaunchError::Vmptrld)
        .and_then(|()| setup_vmcs(state, host_cr3, cr4))
        .and_then(|()| {
            if corrupt {
                // RFLAGS bit 1 must be set (SDM 27.3.1.4): this entry fails.
                vmwrite_all(&[(field::GUEST_RFLAGS, 0)])?;
            }
            // SAFETY: The VMCS is current and describes this CPU; `vmx_launch` continues as
            // the guest at its return point or returns the failure.
            match unsafe { vmx_launch() } {
                0 => Ok(()),
                2 => Err(LaunchError::EntryFailed),
                // VMLAUNCH with a current VMCS fails with VMfailValid.
                _ => Err(LaunchError::Vmlaunch(VmFail::Valid(
                    vmread(field::VM_INSTRUCTION_ERROR) as u32,
                ))),
            }
        });
    if matches!(result, Err(e) if !matches!(e, LaunchError::EntryFailed)) {
        // SAFETY: Leaves VMX operation entered above; nothing will use the VMCS again.
        unsafe {
            let _ = vmclear(vmcs_pa);
            vmxoff();
            x86::write_cr4(dom0_cr4);
        }
    }
    result
}

/// Fills the current VMCS from the running CPU.
fn setup_vmcs(state: &mut CpuState, host_cr3: u64, cr4: u64) -> Result<(), LaunchError> {
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

    vmwrite_all(&[
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
        (field::CR4_GUEST_HOST_MASK, CR4_VMXE),
        (field::CR4_READ_SHADOW, cr4 & !CR4_VMXE),
        (field::VMCS_LINK_POINTER, u64::MAX),
        // Host: the state root mode runs in.
        (field::HOST_CR0, cr0),
        (field::HOST_CR3, host_cr3),
        (field::HOST_CR4, cr4),
        (field::HOST_CS_SELECTOR, x86::read_cs().into()),
        (field::HOST_SS_SELECTOR, x86::read_ss().into()),
        (field::HOST_DS_SELECTOR, 0),
        (field::HOST_ES_SELECTOR, 0),
        (field::HOST_FS_SELECTOR, 0),
        (field::HOST_GS_SELECTOR, 0),
        (field::HOST_TR_SELECTOR, tr.into()),
        (field::HOST_FS_BASE, fs_base),
        (field::HOST_GS_BASE, gs_base),
        (field::HOST_TR_BASE, tr_base),
        (field::HOST_GDTR_BASE, gdt.base),
        (field::HOST_IDTR_BASE, root_idt),
        (field::HOST_IA32_SYSENTER_CS, sysenter_cs),
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
        (field::GUEST_SYSENTER_CS, sysenter_cs),
        (field::GUEST_SYSENTER_ESP, sysenter_esp),
        (field::GUEST_SYSENTER_EIP, sysenter_eip),
        (field::GUEST_ACTIVITY_STATE, 0),
        (field::GUEST_INTERRUPTIBILITY_INFO, 0),
        (field::GUEST_PENDING_DBG_EXCEPTIONS, 0),
    ])?;
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
        vmwrite_all(&[(fsel, sel), (fbase, base), (flimit, limit), (far, arv)])?;
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
        "push rbp",
        "push rbx",
        "push r12",
        "push r13",
        "push r14",
        "push r15",
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
        "pop r15",
        "pop r14",
        "pop r13",
        "pop r12",
        "pop rbx",
        "pop rbp",
        "ret",
        guest_rsp = const field::GUEST_RSP,
        guest_rip = const field::GUEST_RIP,
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
        leave = sym super::root_leave,
        failed = sym vmx_resume_failed,
        this = sym vmx_exit,
    )
}

/// Dom0's state during one VMX exit.
struct Exit<'a> {
    state: &'a mut CpuState,
    reason: u32,
}

impl Dom0Exit for Exit<'_> {
    fn info(&self) -> &super::CpuInfo {
        &self.state.info
    }

    fn regs(&mut self) -> &mut GuestRegs {
        &mut self.state.frame.regs
    }

    fn cpl(&self) -> u8 {
        // SS.DPL is the CPL (SDM 25.4.1).
        ((vmread(field::GUEST_SS_AR_BYTES) >> 5) & 3) as u8
    }

    fn cr4(&self) -> u64 {
        vmread(field::GUEST_CR4) & !CR4_VMXE
    }

    fn skip(&mut self) -> bool {
        let len = vmread(field::VM_EXIT_INSTRUCTION_LEN);
        let _ = vmwrite(field::GUEST_RIP, vmread(field::GUEST_RIP) + len);
        let blocking = vmread(field::GUEST_INTERRUPTIBILITY_INFO) as u32;
        if blocking & (interruptibility::STI | interruptibility::MOV_SS) != 0 {
            let cleared = blocking & !(interruptibility::STI | interruptibility::MOV_SS);
            let _ = vmwrite(field::GUEST_INTERRUPTIBILITY_INFO, cleared.into());
        }
        true
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let mut info = u32::from(vector) | intr_info::TYPE_HW_EXCEPTION | intr_info::VALID;
        if let Some(code) = error_code {
            info |= intr_info::DELIVER_ERROR_CODE;
            let _ = vmwrite(field::VM_ENTRY_EXCEPTION_ERROR_CODE, code.into());
        }
        let _ = vmwrite(field::VM_ENTRY_INTR_INFO_FIELD, info.into());
    }

    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        match index {
            // VMX is Keel's: Dom0 sees it locked off, as a firmware that disabled it leaves it.
            msr::IA32_FEATURE_CONTROL => {
                // SAFETY: The MSR exists on VMX CPUs.
                let fc = unsafe { x86::rdmsr(index) };
                Some(fc & !(FEATURE_CONTROL_VMX_OUTSIDE_SMX | FEATURE_CONTROL_VMX_INSIDE_SMX))
            }
            _ => None,
        }
    }

    fn wrmsr(&mut self, _index: u32, _value: u64) -> bool {
        // IA32_FEATURE_CONTROL is locked: writes fault, as on the hardware.
        false
    }

    fn cr_access(&mut self) -> bool {
        let q = vmcs::CrAccess::decode(vmread(field::EXIT_QUALIFICATION));
        if q.cr != 4 || q.access_type != 0 {
            return false;
        }
        let value = if q.gpr == 4 {
            vmread(field::GUEST_RSP)
        } else {
            self.state.frame.regs.gpr[usize::from(q.gpr)]
        };
        // SAFETY: The fixed-bit MSRs exist on VMX CPUs.
        let fixed1 = unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED1) };
        if value & CR4_VMXE != 0 || value & !fixed1 != 0 {
            // Setting VMXE on a CPU whose CPUID has no VMX faults; so do unsupported bits.
            self.inject(GP, Some(0));
            return true;
        }
        let _ = vmwrite(field::GUEST_CR4, value | CR4_VMXE);
        let _ = vmwrite(field::CR4_READ_SHADOW, value);
        self.skip();
        true
    }

    fn test_intercept(&mut self, on: bool) -> bool {
        let current = vmread(field::SECONDARY_VM_EXEC_CONTROL) as u32;
        let value = if on {
            // `control` refuses the bit when the CPU's capability MSR does not allow it.
            match control(Ctl::Proc2, current | secondary::WBINVD_EXITING, 0) {
                Ok(value) => value,
                Err(_) => return false,
            }
        } else {
            u64::from(current & !secondary::WBINVD_EXITING)
        };
        vmwrite(field::SECONDARY_VM_EXEC_CONTROL, value).is_ok()
    }

    fn run_guest(&mut self, vcpu: &mut super::guest::VcpuState) {
        // SAFETY: Called from Dom0's Run hypercall on this CPU with Dom0's VMCS current; the
        // Linux side holds the vCPU for the whole call.
        unsafe { super::vmx_guest::run(self.state, vcpu) };
    }

    fn prepare_leave(&mut self) {
        let rsp = vmread(field::GUEST_RSP);
        let rip = vmread(field::GUEST_RIP);
        let rflags = vmread(field::GUEST_RFLAGS);
        let cr3 = vmread(field::GUEST_CR3);
        let cr4 = vmread(field::GUEST_CR4) & !CR4_VMXE;
        let gdt = x86::DescTable {
            base: vmread(field::GUEST_GDTR_BASE),
            limit: vmread(field::GUEST_GDTR_LIMIT) as u16,
        };
        let idt = x86::DescTable {
            base: vmread(field::GUEST_IDTR_BASE),
            limit: vmread(field::GUEST_IDTR_LIMIT) as u16,
        };
        let fs_base = vmread(field::GUEST_FS_BASE);
        let gs_base = vmread(field::GUEST_GS_BASE);
        let debugctl = vmread(field::GUEST_IA32_DEBUGCTL);
        let vmcs_pa = pa_of(self.state, self.state.control.0.as_ptr());
        // SAFETY: Leaving VMX operation for good on this CPU, then giving Dom0 back the state
        // the exit replaced with host values (SDM 28.5: GDTR/IDTR limits, FS/GS bases,
        // DEBUGCTL); CR4 becomes Dom0's without VMXE. TR's limit is fixed by the module after
        // the hypercall returns (it needs Linux's writable GDT).
        unsafe {
            let _ = vmclear(vmcs_pa);
            vmxoff();
            x86::write_cr4(cr4);
            x86::lgdt(&gdt);
            x86::lidt(&idt);
            x86::wrmsr(msr::FS_BASE, fs_base);
            x86::wrmsr(msr::GS_BASE, gs_base);
            x86::wrmsr(msr::IA32_DEBUGCTL, debugctl);
        }
        super::push_return(&mut self.state.frame, rsp, rip, rflags, cr3);
    }

    fn dump(&mut self, why: &str) {
        let info = &self.state.info;
        rlog!(
            info,
            Err,
            "CPU {}: {}: exit reason {:#x} qualification {:#x}",
            info.cpu,
            why,
            self.reason,
            vmread(field::EXIT_QUALIFICATION)
        );
        rlog!(
            info,
            Err,
            " rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} ss_ar={:#x}",
            vmread(field::GUEST_RIP),
            vmread(field::GUEST_RSP),
            vmread(field::GUEST_RFLAGS),
            vmread(field::GUEST_CS_SELECTOR),
            vmread(field::GUEST_SS_AR_BYTES)
        );
        rlog!(
            info,
            Err,
            " cr0={:#x} cr3={:#x} cr4={:#x} idt_vectoring={:#x}",
            vmread(field::GUEST_CR0),
            vmread(field::GUEST_CR3),
            vmread(field::GUEST_CR4),
            vmread(field::IDT_VECTORING_INFO_FIELD)
        );
        super::dump_regs(info, &self.state.frame.regs);
    }
}

/// Handles one exit. Returns 0 to resume Dom0, 1 to leave (the frame then holds where to).
extern "C" fn vmx_exit_handler(frame: *mut HostFrame) -> u64 {
    // SAFETY: `frame` is this CPU's frame (HOST_RSP), whose `state` points at the CpuState that
    // contains it; root mode on this CPU is the only user of that state while it runs.
    let state = unsafe { &mut *(*frame).state };
    let reason = vmread(field::VM_EXIT_REASON) as u32;
    let kind = ExitKind::from_vmx(reason);
    match kind {
        ExitKind::EntryFailure if !state.info.launched.load(Ordering::Relaxed) => {
            // The first entry failed: leave VMX and return 2 at the launch point.
            let mut exit = Exit { state, reason };
            exit.dump("the first VM entry failed");
            exit.state.frame.regs.gpr[RAX] = 2;
            exit.prepare_leave();
            1
        }
        ExitKind::TripleFault | ExitKind::EntryFailure => {
            let mut exit = Exit { state, reason };
            exit.dump("Dom0 cannot continue on this CPU");
            super::park();
        }
        ExitKind::Init => {
            // An INIT aimed at a launched CPU: Linux sends none to an online CPU (hotplug
            // hands a CPU back before it goes offline). Count it and go on.
            let info = &state.info;
            rlog!(info, Warn, "CPU {}: INIT signal ignored", info.cpu);
            0
        }
        _ => {
            let mut exit = Exit { state, reason };
            match handle(&mut exit, kind, reason.into()) {
                ExitAction::Resume => {
                    deliver_pending_nmi(exit.state);
                    0
                }
                ExitAction::Leave => 1,
            }
        }
    }
}

/// Injects an NMI that arrived in root mode into Dom0, if Dom0 can take one now: no other
/// event is being injected and nothing blocks it (STI, MOV SS, an NMI being handled).
/// Otherwise it stays pending until a later exit. (An NMI that arrives after this check and
/// before VMRESUME also waits for the next exit.)
fn deliver_pending_nmi(state: &CpuState) {
    if !state.nmi_pending.load(Ordering::Relaxed) {
        return;
    }
    let injecting = vmread(field::VM_ENTRY_INTR_INFO_FIELD) as u32 & intr_info::VALID != 0;
    let blocked = vmread(field::GUEST_INTERRUPTIBILITY_INFO) & 0b1011 != 0;
    if !injecting && !blocked {
        state.nmi_pending.store(false, Ordering::Relaxed);
        let nmi = 2 | intr_info::TYPE_NMI | intr_info::VALID;
        let _ = vmwrite(field::VM_ENTRY_INTR_INFO_FIELD, nmi.into());
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
        count = const (offset_of!(CpuState, info) + offset_of!(super::CpuInfo, counters)
            + ExitKind::Nmi as usize * 8) as isize - offset_of!(CpuState, idt) as isize,
        this = sym root_nmi,
    )
}

/// VMRESUME failed: the VMCS is bad and Dom0 cannot run on this CPU.
extern "C" fn vmx_resume_failed(frame: *mut HostFrame) -> ! {
    // SAFETY: As in `vmx_exit_handler`.
    let state = unsafe { &mut *(*frame).state };
    let error = vmread(field::VM_INSTRUCTION_ERROR);
    let info = &state.info;
    rlog!(
        info,
        Err,
        "CPU {}: VMRESUME failed, VM-instruction error {}",
        info.cpu,
        error
    );
    super::park()
}
