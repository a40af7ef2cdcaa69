// SPDX-License-Identifier: GPL-2.0
//! The one hardware trait: the guest currently loaded on this CPU, Dom0 or a DomU vCPU, as
//! the exit handlers see it. `vmx/` implements it over the current VMCS, `svm/` over a VMCB;
//! nothing above it names a VMCS field or a VMCB offset.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use super::CpuInfo;
use crate::keel_core::state::Ctl;

/// The guest currently loaded on this CPU.
pub(crate) trait Hal {
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP past an instruction root mode completed for the guest, with what the
    /// processor does when an instruction completes: the STI or MOV SS interrupt shadow ends,
    /// RFLAGS.RF is cleared, and with RFLAGS.TF set the single-step #DB is raised (DR6.BS).
    fn set_rip(&mut self, rip: u64);
    /// RSP (kept by the hardware, not with the other GPRs).
    fn rsp(&self) -> u64;
    /// Sets RSP.
    fn set_rsp(&mut self, rsp: u64);
    /// The CPL.
    fn cpl(&self) -> u8;
    /// CR0, CR3, CR4 and EFER as the guest sees them (without the bits Keel owns: CR4.VMXE,
    /// EFER.SVME).
    fn control_regs(&self) -> Ctl;
    /// CR4 as the guest sees it.
    fn cr4(&self) -> u64 {
        self.control_regs().cr4
    }
    /// CS base and attributes (VMCB format).
    fn cs(&self) -> (u64, u16);
    /// Injects a hardware exception at the next entry.
    fn inject(&mut self, vector: u8, error_code: Option<u32>);
    /// Gives the guest the #DB whose interception caused this exit, as the processor would
    /// have delivered it: DR6 says why, and an ICEBP (INT1) has completed.
    fn reflect_debug(&mut self);
    /// The exit came while the processor was delivering an event (an exception, interrupt or
    /// NMI whose delivery the exit cut short: VMX's IDT-vectoring information, SVM's
    /// EXITINTINFO).
    fn event_in_delivery(&self) -> bool;
    /// The length of the instruction that exited, when the hardware reports it.
    fn insn_len(&self) -> Option<u64>;
    /// Sets CR0, CR3, CR4 and EFER as the guest sees them, after a guest's MOV to CR or
    /// WRMSR to EFER that the caller checked (`keel_core::state`): long mode follows EFER.LMA,
    /// and the guest's TLB is flushed.
    fn set_control_regs(&mut self, ctl: &Ctl);
    /// The four PAE PDPTEs the CPU uses from the next entry (VMX with EPT keeps them in the
    /// VMCS; SVM reads them from guest memory and has nothing to set).
    fn set_pdptes(&mut self, pdptes: &[u64; 4]);
    /// IA32_PAT.
    fn pat(&self) -> u64;
    /// Sets IA32_PAT.
    fn set_pat(&mut self, pat: u64);
    /// Logs the vendor's exit information and the guest's state, with why.
    fn dump(&self, cpu: &CpuInfo, why: &str);
}

/// A borrowed guest is the guest.
impl<T: Hal> Hal for &mut T {
    fn rip(&self) -> u64 {
        (**self).rip()
    }
    fn set_rip(&mut self, rip: u64) {
        (**self).set_rip(rip)
    }
    fn rsp(&self) -> u64 {
        (**self).rsp()
    }
    fn set_rsp(&mut self, rsp: u64) {
        (**self).set_rsp(rsp)
    }
    fn cpl(&self) -> u8 {
        (**self).cpl()
    }
    fn control_regs(&self) -> Ctl {
        (**self).control_regs()
    }
    fn cr4(&self) -> u64 {
        (**self).cr4()
    }
    fn cs(&self) -> (u64, u16) {
        (**self).cs()
    }
    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        (**self).inject(vector, error_code)
    }
    fn reflect_debug(&mut self) {
        (**self).reflect_debug()
    }
    fn event_in_delivery(&self) -> bool {
        (**self).event_in_delivery()
    }
    fn insn_len(&self) -> Option<u64> {
        (**self).insn_len()
    }
    fn set_control_regs(&mut self, ctl: &Ctl) {
        (**self).set_control_regs(ctl)
    }
    fn set_pdptes(&mut self, pdptes: &[u64; 4]) {
        (**self).set_pdptes(pdptes)
    }
    fn pat(&self) -> u64 {
        (**self).pat()
    }
    fn set_pat(&mut self, pat: u64) {
        (**self).set_pat(pat)
    }
    fn dump(&self, cpu: &CpuInfo, why: &str) {
        (**self).dump(cpu, why)
    }
}
