// SPDX-License-Identifier: GPL-2.0
//! Intel VMX: the [`Hal`] over the current VMCS (for Dom0 and DomU alike), Dom0's launch and
//! exits (`dom0.rs`), a DomU vCPU's run (`domu.rs`), the VMX instructions below both
//! (`ops.rs`).
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

pub(crate) mod dom0;
pub(crate) mod domu;
pub(crate) mod ops;

use super::hal::Hal;
use super::{rlog, x86, CpuInfo};
use crate::keel_core::{
    arch::{cr0, dr6, efer, msr, rflags, vector},
    state,
    vmcs::{self, ar, entry_ctl, field, interruptibility, intr_info},
};
use ops::Vmcs;

/// Controls Keel needs that the CPU does not allow: the capability MSR and the bits.
#[derive(Clone, Copy)]
pub(crate) struct ControlError {
    pub(crate) msr: u32,
    pub(crate) missing: u32,
}

/// A VM-execution, VM-exit or VM-entry control field, for [`control`].
#[derive(Clone, Copy)]
pub(crate) enum Ctl {
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
pub(crate) fn control(ctl: Ctl, wanted: u32, optional: u32) -> Result<u32, ControlError> {
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
        return Err(ControlError {
            msr: cap_msr,
            missing,
        });
    }
    Ok(vmcs::adjust_controls(value | optional, cap).0)
}

/// The guest whose VMCS is current, with what its domain's side needs besides (`X`).
pub(crate) struct Vmx<X> {
    /// The current VMCS.
    pub(crate) vmcs: Vmcs,
    /// Dom0's or DomU's extra state.
    pub(crate) extra: X,
}

/// VMCB-format segment attributes to VMX access rights (a segment that is not present is
/// unusable).
pub(crate) fn ar_from_attrib(attrib: u16) -> u32 {
    let a = u32::from(attrib);
    let v = (a & 0xff) | ((a & 0xf00) << 4);
    if a & 0x80 == 0 {
        v | ar::UNUSABLE
    } else {
        v
    }
}

/// VMX access rights to VMCB-format attributes.
pub(crate) fn attrib_from_ar(ar_bytes: u32) -> u16 {
    if ar_bytes & ar::UNUSABLE != 0 {
        return 0;
    }
    ((ar_bytes & 0xff) | ((ar_bytes >> 4) & 0xf00)) as u16
}

/// Sets or clears the "IA-32e mode guest" entry control.
pub(crate) fn set_long_mode(vmcs: &Vmcs, on: bool) {
    let entry = vmcs.read(field::VM_ENTRY_CONTROLS);
    let bit = entry_ctl::IA32E_MODE;
    vmcs.write(
        field::VM_ENTRY_CONTROLS,
        if on { entry | bit } else { entry & !bit },
    );
}

/// Writes the guest's CR0, CR3, CR4 and EFER into the current VMCS. CR0 and CR4 go in the
/// read shadows; in hardware, the bits Keel owns (the guest/host masks) hold VMX's fixed-1
/// bits, except CR0.PG, which stays the guest's (unrestricted guest). Long mode follows
/// EFER.LMA.
pub(crate) fn write_control_regs(v: &Vmcs, ctl: &state::Ctl) {
    let m0 = v.read(field::CR0_GUEST_HOST_MASK);
    // SAFETY: IA32_VMX_CR4_FIXED0 exists on VMX CPUs.
    let cr4_fixed1_bits = unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED0) };
    v.write(field::GUEST_CR0, ctl.cr0 | (m0 & !cr0::PG));
    v.write(field::CR0_READ_SHADOW, ctl.cr0);
    v.write(field::GUEST_CR3, ctl.cr3);
    v.write(field::GUEST_CR4, ctl.cr4 | cr4_fixed1_bits);
    v.write(field::CR4_READ_SHADOW, ctl.cr4);
    v.write(field::GUEST_IA32_EFER, ctl.efer);
    set_long_mode(v, ctl.efer & efer::LMA != 0);
}

/// Writes the PAE PDPTEs the next entry loads (with EPT, VM entry takes them from the VMCS).
pub(crate) fn write_pdptes(v: &Vmcs, pdptes: &[u64; 4]) {
    let fields = [
        field::GUEST_PDPTE0,
        field::GUEST_PDPTE1,
        field::GUEST_PDPTE2,
        field::GUEST_PDPTE3,
    ];
    for (f, &e) in fields.into_iter().zip(pdptes) {
        v.write(f, e);
    }
}

impl<X> Vmx<X> {
    /// The CR0 and CR4 guest/host masks: the bits the guest does not own.
    fn masks(&self) -> (u64, u64) {
        (
            self.vmcs.read(field::CR0_GUEST_HOST_MASK),
            self.vmcs.read(field::CR4_GUEST_HOST_MASK),
        )
    }
}

impl<X> Vmx<X> {
    /// Injects a #DB of type `kind` (hardware or privileged software exception) for the
    /// conditions `payload` (DR6's B0-B3, BD, BS): DR6 updated as the processor updates it and
    /// DR7.GD cleared, as its delivery does.
    fn deliver_debug(&mut self, payload: u64, kind: u32) {
        const DR7_GD: u64 = 1 << 13;
        let dr7 = self.vmcs.read(field::GUEST_DR7);
        if dr7 & DR7_GD != 0 {
            self.vmcs.write(field::GUEST_DR7, dr7 & !DR7_GD);
        }
        // SAFETY: DR6 is the running guest's: Dom0's while root mode serves its exits, a
        // DomU's from before its run's first completion to its end (`domu::run`); the value
        // has its reserved bits as they must be.
        unsafe { x86::write_dr6(dr6::after_debug(x86::read_dr6(), payload)) };
        self.vmcs.write(
            field::VM_ENTRY_INTR_INFO_FIELD,
            u32::from(vector::DB) | kind | intr_info::VALID,
        );
    }
}

impl<X> Hal for Vmx<X> {
    #[inline]
    fn rip(&self) -> u64 {
        self.vmcs.read(field::GUEST_RIP)
    }

    #[inline]
    fn set_rip(&mut self, rip: u64) {
        self.vmcs.write(field::GUEST_RIP, rip);
        let blocking = self.vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO);
        let shadow = interruptibility::STI | interruptibility::MOV_SS;
        if blocking & shadow != 0 {
            self.vmcs
                .write(field::GUEST_INTERRUPTIBILITY_INFO, blocking & !shadow);
        }
        let flags = self.vmcs.read(field::GUEST_RFLAGS);
        if flags & (rflags::TF | rflags::RF) != 0 {
            self.vmcs.write(field::GUEST_RFLAGS, flags & !rflags::RF);
            // With DEBUGCTL.BTF only branches trap, and no instruction Keel completes is one.
            if flags & rflags::TF != 0
                && self.vmcs.read(field::GUEST_IA32_DEBUGCTL) & msr::DEBUGCTL_BTF == 0
            {
                self.deliver_debug(dr6::BS, intr_info::TYPE_HW_EXCEPTION);
            }
        }
    }

    fn rsp(&self) -> u64 {
        self.vmcs.read(field::GUEST_RSP)
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.vmcs.write(field::GUEST_RSP, rsp);
    }

    fn cpl(&self) -> u8 {
        // SS.DPL is the CPL (SDM 25.4.1).
        ((self.vmcs.read(field::GUEST_SS_AR_BYTES) >> 5) & 3) as u8
    }

    fn control_regs(&self) -> state::Ctl {
        let (m0, m4) = self.masks();
        let v = &self.vmcs;
        state::Ctl {
            cr0: (v.read(field::GUEST_CR0) & !m0) | (v.read(field::CR0_READ_SHADOW) & m0),
            cr3: v.read(field::GUEST_CR3),
            cr4: (v.read(field::GUEST_CR4) & !m4) | (v.read(field::CR4_READ_SHADOW) & m4),
            efer: v.read(field::GUEST_IA32_EFER),
        }
    }

    fn cr4(&self) -> u64 {
        let m4 = self.vmcs.read(field::CR4_GUEST_HOST_MASK);
        (self.vmcs.read(field::GUEST_CR4) & !m4) | (self.vmcs.read(field::CR4_READ_SHADOW) & m4)
    }

    fn cs(&self) -> (u64, u16) {
        (
            self.vmcs.read(field::GUEST_CS_BASE),
            attrib_from_ar(self.vmcs.read(field::GUEST_CS_AR_BYTES)),
        )
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let mut info = u32::from(vector) | intr_info::TYPE_HW_EXCEPTION | intr_info::VALID;
        if let Some(code) = error_code {
            info |= intr_info::DELIVER_ERROR_CODE;
            self.vmcs.write(field::VM_ENTRY_EXCEPTION_ERROR_CODE, code);
        }
        self.vmcs.write(field::VM_ENTRY_INTR_INFO_FIELD, info);
    }

    /// A #DB exit leaves DR6 and DR7 as they were and reports the conditions in the exit
    /// qualification (SDM Vol. 3C, 28.2.1). ICEBP's #DB is a privileged software exception:
    /// it goes in as one, with the instruction's length, so that the delivery pushes the RIP
    /// past it, and a delivery an exit cuts short runs the ICEBP again rather than losing it.
    fn reflect_debug(&mut self) {
        if self.vmcs.read(field::GUEST_RFLAGS) & rflags::TF != 0
            && self.vmcs.read(field::GUEST_INTERRUPTIBILITY_INFO)
                & (interruptibility::STI | interruptibility::MOV_SS)
                != 0
        {
            // A single step still pending after the next instruction, as an entry with TF set
            // in an interrupt shadow requires (SDM Vol. 3C, 27.3.1.5; an ICEBP after a MOV SS
            // exits in its shadow).
            let pending = self.vmcs.read(field::GUEST_PENDING_DBG_EXCEPTIONS);
            self.vmcs
                .write(field::GUEST_PENDING_DBG_EXCEPTIONS, pending | dr6::BS);
        }
        let info = self.vmcs.read(field::VM_EXIT_INTR_INFO);
        let kind = if info & intr_info::TYPE_MASK == intr_info::TYPE_PRIV_SW_EXCEPTION {
            let len = self.vmcs.read(field::VM_EXIT_INSTRUCTION_LEN);
            self.vmcs.write(field::VM_ENTRY_INSTRUCTION_LEN, len);
            intr_info::TYPE_PRIV_SW_EXCEPTION
        } else {
            intr_info::TYPE_HW_EXCEPTION
        };
        let qualification = self.vmcs.read(field::EXIT_QUALIFICATION);
        self.deliver_debug(qualification, kind);
    }

    fn event_in_delivery(&self) -> bool {
        self.vmcs.read(field::IDT_VECTORING_INFO_FIELD) & intr_info::VALID != 0
    }

    #[inline]
    fn insn_len(&self) -> Option<u64> {
        Some(self.vmcs.read(field::VM_EXIT_INSTRUCTION_LEN).into())
    }

    fn set_control_regs(&mut self, ctl: &state::Ctl) {
        write_control_regs(&self.vmcs, ctl);
    }

    fn set_pdptes(&mut self, pdptes: &[u64; 4]) {
        write_pdptes(&self.vmcs, pdptes);
    }

    fn pat(&self) -> u64 {
        self.vmcs.read(field::GUEST_IA32_PAT)
    }

    fn set_pat(&mut self, pat: u64) {
        self.vmcs.write(field::GUEST_IA32_PAT, pat);
    }

    fn dump(&self, cpu: &CpuInfo, why: &str) {
        let v = &self.vmcs;
        rlog!(
            cpu,
            Err,
            "CPU {}: {}: exit reason {:#x} qualification {:#x}",
            cpu.cpu,
            why,
            v.read(field::VM_EXIT_REASON),
            v.read(field::EXIT_QUALIFICATION)
        );
        rlog!(
            cpu,
            Err,
            " rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} ss_ar={:#x}",
            v.read(field::GUEST_RIP),
            v.read(field::GUEST_RSP),
            v.read(field::GUEST_RFLAGS),
            v.read(field::GUEST_CS_SELECTOR),
            v.read(field::GUEST_SS_AR_BYTES)
        );
        rlog!(
            cpu,
            Err,
            " cr0={:#x} cr3={:#x} cr4={:#x} idt_vectoring={:#x}",
            v.read(field::GUEST_CR0),
            v.read(field::GUEST_CR3),
            v.read(field::GUEST_CR4),
            v.read(field::IDT_VECTORING_INFO_FIELD)
        );
    }
}
