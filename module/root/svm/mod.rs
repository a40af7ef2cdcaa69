// SPDX-License-Identifier: GPL-2.0
//! AMD SVM: the [`Hal`] over a VMCB (for Dom0 and DomU alike), Dom0's launch and exits
//! (`dom0.rs`), a DomU vCPU's run (`domu.rs`).
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

pub(crate) mod dom0;
pub(crate) mod domu;

use super::hal::Hal;
use super::{rlog, CpuInfo, Page};
use crate::keel_core::{
    arch::{dr6, efer, rflags, vector},
    state::Ctl,
    vmcb::{self, event, Vmcb},
};

/// A 4 KiB control page (a CPU's or a vCPU's) as the VMCB it is on SVM.
pub(crate) fn vmcb_of(page: &mut Page) -> &mut Vmcb {
    // SAFETY: `Page` is 4 KiB, 4 KiB-aligned; `Vmcb` is `repr(C)` plain data of that size and
    // alignment, valid for any bytes.
    unsafe { &mut *page.0.as_mut_ptr().cast::<Vmcb>() }
}

/// What the SVM [`Hal`] keeps for a guest outside its VMCB.
pub(crate) trait SvmGuest {
    /// The guest's EFER.LME is held back from the VMCB (see `vmcb::hardware_efer`).
    fn lme_held(&self) -> bool;
    /// Records whether it is.
    fn set_lme_held(&mut self, held: bool);
    /// IA32_DEBUGCTL.BTF is set: TF single-steps branches only.
    fn btf(&self) -> bool;
}

/// A DomU vCPU keeps the flag in its state.
impl SvmGuest for &mut bool {
    fn lme_held(&self) -> bool {
        **self
    }

    fn set_lme_held(&mut self, held: bool) {
        **self = held;
    }

    /// A DomU's IA32_DEBUGCTL is not its own (its accesses are intercepted): 0.
    fn btf(&self) -> bool {
        false
    }
}

/// The guest whose VMCB this is, with what its domain's side needs besides (`X`).
pub(crate) struct Svm<'a, X> {
    /// The VMCB.
    pub(crate) vmcb: &'a mut Vmcb,
    /// The CPU saves the next RIP on intercepts.
    pub(crate) nrip_save: bool,
    /// Dom0's or DomU's extra state.
    pub(crate) extra: X,
}

impl<X: SvmGuest> Hal for Svm<'_, X> {
    #[inline]
    fn rip(&self) -> u64 {
        self.vmcb.save.rip
    }

    #[inline]
    fn set_rip(&mut self, rip: u64) {
        let s = &mut self.vmcb.save;
        s.rip = rip;
        self.vmcb.control.int_state &= !vmcb::INT_STATE_SHADOW;
        if s.rflags & (rflags::TF | rflags::RF) != 0 {
            s.rflags &= !rflags::RF;
            // With DEBUGCTL.BTF only branches trap, and no instruction Keel completes is one.
            if s.rflags & rflags::TF != 0 && !self.extra.btf() {
                s.dr6 = dr6::after_debug(s.dr6, dr6::BS);
                self.reflect_debug();
            }
        }
    }

    fn rsp(&self) -> u64 {
        self.vmcb.save.rsp
    }

    fn set_rsp(&mut self, rsp: u64) {
        self.vmcb.save.rsp = rsp;
    }

    fn cpl(&self) -> u8 {
        self.vmcb.save.cpl
    }

    #[inline]
    fn control_regs(&self) -> Ctl {
        let s = &self.vmcb.save;
        let held = if self.extra.lme_held() { efer::LME } else { 0 };
        Ctl {
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: (s.efer & !efer::SVME) | held,
        }
    }

    #[inline]
    fn cs(&self) -> (u64, u16) {
        (self.vmcb.save.cs.base, self.vmcb.save.cs.attrib)
    }

    fn inject(&mut self, vector: u8, error_code: Option<u32>) {
        let c = &mut self.vmcb.control;
        c.event_inj = u32::from(vector) | event::TYPE_EXCEPTION | event::VALID;
        if let Some(code) = error_code {
            c.event_inj |= event::ERROR_VALID;
            c.event_inj_err = code;
        }
    }

    /// The processor has written the #DB's conditions to DR6 in the save area before the
    /// intercept, and an ICEBP's saved RIP is past it (a trap): the exception goes in as is,
    /// DR7.GD cleared as the processor's delivery clears it. (`set_rip` updates DR6 for its
    /// single step first.)
    fn reflect_debug(&mut self) {
        const DR7_GD: u64 = 1 << 13;
        self.vmcb.save.dr7 &= !DR7_GD;
        self.inject(vector::DB, None);
    }

    fn event_in_delivery(&self) -> bool {
        self.vmcb.control.exit_int_info & event::VALID != 0
    }

    #[inline]
    fn insn_len(&self) -> Option<u64> {
        let (next, rip) = (self.vmcb.control.next_rip, self.vmcb.save.rip);
        (self.nrip_save && next > rip).then(|| next - rip)
    }

    fn set_control_regs(&mut self, ctl: &Ctl) {
        let s = &mut self.vmcb.save;
        // A CR0/CR4 change Keel completes flushes the guest's TLB, as the instruction would:
        // FLUSH_ALL, which every SVM CPU takes (flushing one ASID needs FlushByAsid).
        if s.cr0 != ctl.cr0 || s.cr4 != ctl.cr4 {
            self.vmcb.control.tlb_ctl = vmcb::TLB_CONTROL_FLUSH_ALL;
        }
        let (efer, held) = vmcb::hardware_efer(ctl);
        let s = &mut self.vmcb.save;
        s.cr0 = ctl.cr0;
        s.cr3 = ctl.cr3;
        s.cr4 = ctl.cr4;
        s.efer = efer;
        self.extra.set_lme_held(held);
    }

    /// With nested paging the CPU reads the PDPTEs from guest memory.
    fn set_pdptes(&mut self, _pdptes: &[u64; 4]) {}

    fn pat(&self) -> u64 {
        self.vmcb.save.g_pat
    }

    fn set_pat(&mut self, pat: u64) {
        self.vmcb.save.g_pat = pat;
    }

    fn dump(&self, cpu: &CpuInfo, why: &str) {
        let v = &*self.vmcb;
        rlog!(
            cpu,
            Err,
            "CPU {}: {}: exit code {:#x} info1 {:#x} info2 {:#x} intinfo {:#x}",
            cpu.cpu,
            why,
            v.control.exit_code,
            v.control.exit_info_1,
            v.control.exit_info_2,
            v.control.exit_int_info
        );
        rlog!(
            cpu,
            Err,
            " rip={:#x} rsp={:#x} rflags={:#x} cs={:#x} cpl={}",
            v.save.rip,
            v.save.rsp,
            v.save.rflags,
            v.save.cs.selector,
            v.save.cpl
        );
        rlog!(
            cpu,
            Err,
            " cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            v.save.cr0,
            v.save.cr3,
            v.save.cr4,
            v.save.efer
        );
    }
}
