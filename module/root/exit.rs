// SPDX-License-Identifier: GPL-2.0
//! The exit pipeline: one `match` over the decoded [`Exit`] for Dom0 and every DomU.
//!
//! The vendor code reads the VMCS or VMCB, decodes it (`keel_core::exit`), and calls
//! [`handle`] with a [`Ctx`]: the loaded guest's hardware ([`Hal`]) and the domain's policy
//! (Dom0's in `dom0.rs`, a DomU's in `vcpu.rs`). What is the same for every domain (CPUID's
//! plumbing, XSETBV, RDMSR/WRMSR, INVD, control-register moves, skipping an instruction) is
//! written once here; what differs is a [`Ctx`] method. Each handler returns an [`Action`].
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use super::hal::Hal;
use super::x86;
use super::{GuestRegs, RAX, RCX, RDX};
use crate::keel_core::{
    arch::{cr0, cr4, seg_attrib, vector},
    exit::{CrAccess, CrOp, Exit, ExitKind},
    insn,
    state::{self, Limits},
    xcr,
};

/// What to do after an exit: the handlers' contract. It is a plain tag, small enough to come
/// back in a register on the hot path; what a DomU's userspace is told (`ToUser`, `Crash`)
/// the handler has written into the vCPU's [`UserExit`] record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Enter the guest again.
    Resume,
    /// End the DomU's turn with nothing for its userspace: a host interrupt, an NMI or the
    /// preemption timer needs Dom0; the module's run loop lets Dom0 run and enters again.
    /// (For Dom0 itself, the same as `Resume`: the interrupt is taken once Dom0 runs.)
    RunLoop,
    /// End the DomU's run with the exit record the handler wrote, for its userspace to serve.
    ToUser,
    /// The domain cannot go on: a DomU's run ends with the exit the handler recorded as
    /// unhandled; Dom0's CPU is parked (there is nothing to return to).
    Crash,
    /// Dom0 only: hand this CPU back (the Leave hypercall).
    Leave,
}

/// Why a run ended, for the vCPU's userspace (the uapi's exit record).
#[derive(Clone, Copy, Default)]
pub(crate) enum UserExit {
    /// Nothing for userspace: a host interrupt or a kick took the CPU back; run again.
    #[default]
    None,
    /// HLT.
    Hlt,
    /// IN/OUT.
    Io {
        port: u16,
        size: u8,
        input: bool,
        data: u64,
    },
    /// An access to an MMIO range.
    Mmio {
        gpa: u64,
        size: u8,
        read: bool,
        data: u64,
    },
    /// RDMSR/WRMSR of an MSR a Xen domain's local APIC model serves (IA32_APIC_BASE and the
    /// x2APIC range): the run loop answers it and never passes it to userspace.
    Msr { index: u32, write: bool, value: u64 },
    /// A hypercall Keel does not handle.
    Hypercall {
        nr: u64,
        args: [u64; 5],
        long_mode: bool,
    },
    /// A triple fault (`None`), or the guest's `SCHEDOP_shutdown` with Xen's reason.
    Shutdown { xen_reason: Option<u32> },
    /// An access outside the map (or a write to ROM), with `keel_core::exit::access` bits.
    MemoryFault { gpa: u64, access: u32 },
    /// The hardware refused the guest state.
    EntryFailure { reason: u64, qualification: u64 },
    /// An exit Keel cannot handle.
    Unhandled { reason: u64, qualification: u64 },
}

/// An exit's context: the guest's hardware and its domain's policy.
pub(crate) trait Ctx {
    /// The loaded guest's hardware.
    type Hw: Hal;
    /// The hardware.
    fn hw(&mut self) -> &mut Self::Hw;
    /// The hardware, shared.
    fn hw_ref(&self) -> &Self::Hw;
    /// The guest's GPRs (RSP lives in the hardware).
    fn regs(&mut self) -> &mut GuestRegs;
    /// Counts an exit.
    fn count(&mut self, kind: ExitKind);
    /// CPUID as this domain sees it.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The XCR0 bits the domain may set; 0 makes XSETBV raise #UD.
    fn xcr0_supported(&self) -> u64;
    /// XSETBV set XCR0 to `value` (already live in the processor).
    fn xcr0_changed(&mut self, _value: u64) {}
    /// RDMSR of an MSR that exits; `None` raises #GP.
    fn rdmsr(&mut self, index: u32) -> Option<u64>;
    /// WRMSR of an MSR that exits; false raises #GP.
    fn wrmsr(&mut self, index: u32, value: u64) -> bool;
    /// RDMSR/WRMSR of an MSR that the run loop serves rather than root mode (`value`: what
    /// WRMSR writes); `None` leaves it to [`Ctx::rdmsr`] and [`Ctx::wrmsr`].
    fn msr_to_run_loop(
        &mut self,
        _index: u32,
        _write: bool,
        _value: u64,
        _exit: &Exit,
    ) -> Option<Action> {
        None
    }
    /// VMCALL or VMMCALL.
    fn hypercall(&mut self) -> Action;
    /// The exiting instruction's length when the hardware does not report it (SVM without
    /// next-RIP save): read and decoded from the guest's memory.
    fn decode_len(&mut self, exit: &Exit) -> Option<u64>;
    /// An instruction Keel completes but whose length it cannot find.
    fn length_unknown(&mut self, exit: &Exit) -> Action;
    /// What the domain's control registers may hold: the CR4 bits it may set and the
    /// physical-address width.
    fn limits(&self) -> Limits;
    /// The four PAE PDPTEs at guest-physical `pdpt`, when they can be read (Dom0 never uses
    /// PAE paging).
    fn pdptes(&self, _pdpt: u64) -> Option<[u64; 4]> {
        None
    }
    /// The instruction at CS:RIP, decoded, for exits whose hardware information does not say
    /// enough (SVM without decode assists); `None` when it cannot be read or decoded.
    fn fetch_insn(&mut self) -> Option<insn::Insn> {
        None
    }
    /// An exit this domain does not expect.
    fn unexpected(&mut self, exit: &Exit) -> Action;
    /// An intercepted exception.
    fn exception(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// A host event (interrupt, NMI, preemption timer) ended the guest's turn.
    fn host_event(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// The guest takes interrupts again (an interrupt-window exit Keel asked for).
    fn interrupt_window(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// An INIT signal.
    fn init(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// HLT.
    fn hlt(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// Port I/O.
    fn io(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// A second-level fault.
    fn slat_fault(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
    /// A triple fault or an entry failure: the guest cannot run on.
    fn shutdown(&mut self, exit: &Exit) -> Action {
        self.unexpected(exit)
    }
}

/// Handles one exit. Each arm counts its exit under a constant kind, so that the hot ones
/// (CPUID above all: Dom0's exit without next-RIP save) pay for one dispatch only.
#[inline(always)]
pub(crate) fn handle<C: Ctx>(c: &mut C, exit: &Exit) -> Action {
    match *exit {
        Exit::Cpuid => {
            c.count(ExitKind::Cpuid);
            cpuid(c, exit)
        }
        Exit::Msr { write } => {
            c.count(if write {
                ExitKind::Wrmsr
            } else {
                ExitKind::Rdmsr
            });
            msr(c, exit, write)
        }
        Exit::Hypercall => {
            c.count(ExitKind::Hypercall);
            c.hypercall()
        }
        _ => handle_rest(c, exit),
    }
}

/// [`handle`] for the exits that are not on a hot path.
#[cold]
#[inline(never)]
fn handle_rest<C: Ctx>(c: &mut C, exit: &Exit) -> Action {
    c.count(exit.kind());
    match *exit {
        Exit::Cpuid => cpuid(c, exit),
        Exit::Msr { write } => msr(c, exit, write),
        Exit::Hypercall => c.hypercall(),
        Exit::Xsetbv => xsetbv(c, exit),
        Exit::Invd => {
            // Dropping dirty lines would lose data that is not the guest's alone.
            x86::wbinvd();
            complete(c, exit)
        }
        Exit::VirtInsn | Exit::MonitorMwait => {
            // As CPUID says: no VMX/SVM, no MONITOR/MWAIT.
            c.hw().inject(vector::UD, None);
            Action::Resume
        }
        Exit::CrAccess(access) => cr_access(c, exit, access),
        Exit::Exception { .. } => c.exception(exit),
        Exit::ExternalInterrupt | Exit::Nmi | Exit::PreemptionTimer => c.host_event(exit),
        Exit::Init => c.init(exit),
        Exit::Hlt => c.hlt(exit),
        Exit::Io { .. } => c.io(exit),
        Exit::SlatFault { .. } => c.slat_fault(exit),
        Exit::Shutdown | Exit::EntryFailure { .. } => c.shutdown(exit),
        Exit::InterruptWindow => c.interrupt_window(exit),
        Exit::Sipi | Exit::DrAccess | Exit::SlatMisconfig { .. } | Exit::Other { .. } => {
            c.unexpected(exit)
        }
    }
}

/// What a control-register write does, once known.
enum CrWrite {
    /// MOV to CR`cr` from a GPR.
    Mov { cr: u8, gpr: u8 },
    /// CLTS.
    Clts,
    /// LMSW from a GPR.
    Lmsw { gpr: u8 },
}

/// The write the instruction at CS:RIP makes, when the exit does not say (SVM without decode
/// assists: MOV to CR, and CLTS and LMSW, which SVM's CR0 write intercept takes too). An
/// LMSW from memory is not decoded.
fn decode_cr_write<C: Ctx>(c: &mut C) -> Option<CrWrite> {
    let i = c.fetch_insn()?;
    if i.map != insn::Map::Map0F {
        return None;
    }
    let modrm = i.modrm.unwrap_or(0);
    let reg = (modrm >> 3) & 7;
    let rm = (modrm & 7) | ((i.rex & 1) << 3);
    match i.opcode {
        0x22 => Some(CrWrite::Mov {
            cr: reg | ((i.rex & 4) << 1),
            gpr: rm,
        }),
        0x06 => Some(CrWrite::Clts),
        0x01 if reg == 6 && modrm >> 6 == 3 => Some(CrWrite::Lmsw { gpr: rm }),
        _ => None,
    }
}

/// A control-register access: writes to CR0, CR3 and CR4 follow the architecture's rules
/// (`keel_core::state`: #GP for what a CPU refuses), reads of CR3 are served.
fn cr_access<C: Ctx>(c: &mut C, exit: &Exit, access: CrAccess) -> Action {
    let write = match access.op {
        CrOp::Write(Some(gpr)) => CrWrite::Mov { cr: access.cr, gpr },
        CrOp::Clts => CrWrite::Clts,
        CrOp::Write(None) | CrOp::Lmsw => match decode_cr_write(c) {
            Some(w) => w,
            None => return c.unexpected(exit),
        },
        CrOp::Read(Some(gpr)) if access.cr == 3 => {
            let value = c.hw_ref().control_regs().cr3;
            set_gpr(c, gpr, value);
            return complete(c, exit);
        }
        CrOp::Read(_) => return c.unexpected(exit),
    };
    let old = c.hw_ref().control_regs();
    let (_, attrib) = c.hw_ref().cs();
    let cs_long = old.efer & crate::keel_core::arch::efer::LMA != 0 && attrib & seg_attrib::L != 0;
    let limits = c.limits();
    let new = match write {
        CrWrite::Mov { cr, gpr } => {
            let value = gpr_value(c, gpr);
            // Outside 64-bit mode the operand is 32 bits.
            let value = if cs_long { value } else { value & 0xffff_ffff };
            match cr {
                0 => state::mov_cr0(&old, value, cs_long),
                3 => state::mov_cr3(&old, value, &limits),
                4 => state::mov_cr4(&old, value, &limits),
                _ => return c.unexpected(exit),
            }
        }
        CrWrite::Clts => state::mov_cr0(&old, old.cr0 & !CR0_TS, cs_long),
        // LMSW writes PE (which it cannot clear), MP, EM and TS.
        CrWrite::Lmsw { gpr } => {
            let low = gpr_value(c, gpr) & 0xf;
            state::mov_cr0(&old, (old.cr0 & !0xe) | low, cs_long)
        }
    };
    match new {
        Some(n) => {
            // Entering (or changing) PAE paging loads the PDPTEs; a reserved bit in one is
            // #GP, as on a CPU.
            if state::loads_pdptes(&old, &n) {
                let pdptes = c
                    .pdptes(state::pdpt_address(n.cr3))
                    .filter(|p| p.iter().all(|&e| state::pdpte_valid(e, &limits)));
                let Some(p) = pdptes else {
                    general_protection(c);
                    return Action::Resume;
                };
                c.hw().set_pdptes(&p);
            }
            c.hw().set_control_regs(&n);
            complete(c, exit)
        }
        None => {
            general_protection(c);
            Action::Resume
        }
    }
}

/// CR0.TS.
const CR0_TS: u64 = 1 << 3;

/// A GPR by its encoding (4 is RSP, kept by the hardware).
fn gpr_value<C: Ctx>(c: &mut C, n: u8) -> u64 {
    if n == 4 {
        c.hw_ref().rsp()
    } else {
        c.regs().gpr[usize::from(n & 15)]
    }
}

/// Sets a GPR by its encoding.
fn set_gpr<C: Ctx>(c: &mut C, n: u8, value: u64) {
    if n == 4 {
        c.hw().set_rsp(value);
    } else {
        c.regs().gpr[usize::from(n & 15)] = value;
    }
}

/// Raises #GP(0) in the guest. A real-mode guest (CR0.PE clear) gets it without the error
/// code: real-mode exceptions push none, and VMX's checks on VM-entry event injection refuse
/// "deliver error code" while CR0.PE is clear (SDM Vol. 3C, VM-entry control checks).
pub(crate) fn general_protection<C: Ctx>(c: &mut C) {
    let protected = c.hw_ref().control_regs().cr0 & cr0::PE != 0;
    c.hw().inject(vector::GP, protected.then_some(0));
}

/// EDX:EAX.
pub(crate) fn edx_eax(regs: &GuestRegs) -> u64 {
    (regs.gpr[RDX] << 32) | (regs.gpr[RAX] & 0xffff_ffff)
}

/// Moves RIP past the instruction that exited; false if its length is unknown.
#[inline(always)]
pub(crate) fn skip<C: Ctx>(c: &mut C, exit: &Exit) -> bool {
    let len = match c.hw_ref().insn_len() {
        Some(len) => len,
        None => match c.decode_len(exit) {
            Some(len) => len,
            None => return false,
        },
    };
    let rip = c.hw_ref().rip().wrapping_add(len);
    c.hw().set_rip(rip);
    true
}

/// Skips the instruction and resumes the guest.
#[inline(always)]
pub(crate) fn complete<C: Ctx>(c: &mut C, exit: &Exit) -> Action {
    if skip(c, exit) {
        Action::Resume
    } else {
        c.length_unknown(exit)
    }
}

/// CPUID: the domain's view, into EAX, EBX, ECX, EDX.
#[inline(always)]
fn cpuid<C: Ctx>(c: &mut C, exit: &Exit) -> Action {
    let regs = c.regs();
    let (leaf, sub) = (regs.gpr[RAX] as u32, regs.gpr[RCX] as u32);
    let r = c.cpuid(leaf, sub);
    let regs = c.regs();
    regs.gpr[RAX] = r[0].into();
    regs.gpr[super::RBX] = r[1].into();
    regs.gpr[RCX] = r[2].into();
    regs.gpr[RDX] = r[3].into();
    complete(c, exit)
}

/// XSETBV: checked against the SDM's rules, then executed (the guest's XCR0 is live while it
/// runs).
fn xsetbv<C: Ctx>(c: &mut C, exit: &Exit) -> Action {
    let index = c.regs().gpr[RCX] as u32;
    let value = edx_eax(c.regs());
    let supported = c.xcr0_supported();
    if c.hw_ref().cr4() & cr4::OSXSAVE == 0 || supported == 0 {
        c.hw().inject(vector::UD, None);
    } else if c.hw_ref().cpl() != 0 || !xcr::xsetbv_valid(index, value, supported) {
        general_protection(c);
    } else {
        // SAFETY: The host's CR4.OSXSAVE is set (`supported` is non-zero only then) and
        // `xsetbv_valid` accepted the value for this CPU. A DomU's run gives Dom0 its XCR0
        // back at its end.
        unsafe { x86::xsetbv(index, value) };
        c.xcr0_changed(value);
        return complete(c, exit);
    }
    Action::Resume
}

/// RDMSR/WRMSR of an MSR that exits: the domain's policy decides; a refusal is #GP.
fn msr<C: Ctx>(c: &mut C, exit: &Exit, write: bool) -> Action {
    let index = c.regs().gpr[RCX] as u32;
    let value = if write { edx_eax(c.regs()) } else { 0 };
    if let Some(action) = c.msr_to_run_loop(index, write, value, exit) {
        return action;
    }
    if write {
        if !c.wrmsr(index, value) {
            general_protection(c);
            return Action::Resume;
        }
    } else {
        let Some(value) = c.rdmsr(index) else {
            general_protection(c);
            return Action::Resume;
        };
        let regs = c.regs();
        regs.gpr[RAX] = value & 0xffff_ffff;
        regs.gpr[RDX] = value >> 32;
    }
    complete(c, exit)
}
