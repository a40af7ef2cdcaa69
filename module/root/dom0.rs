// SPDX-License-Identifier: GPL-2.0
//! Dom0's policy for the exit pipeline: what Dom0 sees of the CPU (Keel's CPUID leaves, the
//! extension hidden), the MSRs Keel owns, and Keel's own hypercalls from the module.
//!
//! Dom0 exits only for what Keel intercepts beneath it; anything else is unexpected: logged
//! with a dump of Dom0's state and answered with #UD, and Dom0 goes on.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::sync::atomic::Ordering;

use super::exit::{self, Action, Ctx};
use super::hal::Hal;
use super::vcpu::VcpuState;
use super::{rlog, x86, CpuInfo, Dom0View, GuestRegs, RAX, RDI};
use crate::keel_core::{
    arch::{cr4, efer, feature_control, msr, seg_attrib, vector},
    caps::Vendor,
    cpuid,
    exit::{Exit, ExitKind},
    hypercall::{self, Call},
    insn::{self, Mode},
    paging::{self, PagingMode},
    state::{Ctl, Limits},
};

/// EFER bits Dom0 may write (APM Vol. 2, 3.1.7): SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE,
/// MCOMMIT, INTWB, UAIE, AutoIBRS. Others are reserved and fault.
const EFER_WRITABLE: u64 = (1 << 0) | (0x3f << 8) | (0x3 << 17) | (0x3 << 20);

/// Where Dom0 goes on at its hand-back: the state the exit interrupted.
pub(crate) struct LeavePoint {
    pub(crate) rsp: u64,
    pub(crate) rip: u64,
    pub(crate) rflags: u64,
    pub(crate) cr3: u64,
}

/// What only Dom0's hardware state can do: run a DomU vCPU from inside Dom0's exit, make an
/// instruction exit for a test, and turn the extension off.
pub(crate) trait Dom0Hal: Hal {
    /// Runs a DomU vCPU on this CPU until it exits for Dom0 (the Run hypercall).
    ///
    /// # Safety
    ///
    /// `v` is held by its caller for the whole call and not running anywhere else; its
    /// domain's tables stay allocated meanwhile.
    unsafe fn run_domu(&mut self, v: &mut VcpuState);
    /// Testing only: makes WBINVD exit to Keel (`on`) or stops it; false when the CPU cannot
    /// intercept WBINVD.
    fn test_intercept(&mut self, on: bool) -> bool;
    /// Turns VMX/SVM off on this CPU and gives Dom0 back the state the exit replaced;
    /// returns where Dom0 goes on.
    ///
    /// # Safety
    ///
    /// Only for the hand-back of this CPU, in root mode: nothing enters a guest after it.
    unsafe fn leave(&mut self, view: &Dom0View) -> LeavePoint;
}

/// The slow path of Dom0's `decode_len`: reads up to 15 bytes at CS:RIP in Dom0's paging
/// mode, crossing pages, and decodes them.
#[cold]
#[inline(never)]
fn decode_len_slow(hw: &impl Hal, base: u64) -> Option<u64> {
    let c = hw.control_regs();
    let (cs_base, attrib) = hw.cs();
    let mode = if attrib & seg_attrib::L != 0 && c.efer & efer::LMA != 0 {
        Mode::Bits64
    } else if attrib & seg_attrib::DB != 0 {
        Mode::Bits32
    } else {
        Mode::Bits16
    };
    let paging = PagingMode::from_control_registers(c.cr0, c.cr4, c.efer);
    let la = cs_base.wrapping_add(hw.rip());
    let mut bytes = [0u8; insn::MAX_LEN];
    let n = paging::read_linear_in(
        paging,
        c.cr3,
        la,
        &mut bytes,
        // SAFETY: Page-table pages of Dom0 are RAM, mapped in the direct map.
        |pa| Some(unsafe { ((base + pa) as *const u64).read_volatile() }),
        // SAFETY: The code page is RAM: the instruction was just fetched from it.
        |pa| Some(unsafe { ((base + pa) as *const u8).read_volatile() }),
    );
    insn::decode(&bytes[..n], mode).ok().map(|i| i.len as u64)
}

/// Dom0 during one exit on this CPU.
pub(crate) struct Dom0<'a, H: Dom0Hal> {
    /// The hardware.
    pub(crate) hw: H,
    /// Dom0's GPRs (in this CPU's frame).
    pub(crate) regs: &'a mut GuestRegs,
    /// The CPU.
    pub(crate) cpu: &'a CpuInfo,
    /// Dom0's view of the state Keel owns.
    pub(crate) view: &'a mut Dom0View,
}

impl<H: Dom0Hal> Dom0<'_, H> {
    /// Logs the vendor's exit information and Dom0's state.
    pub(crate) fn dump(&self, why: &str) {
        self.hw.dump(self.cpu, why);
        super::dump_regs(self.cpu, self.regs);
    }
}

impl<H: Dom0Hal> Ctx for Dom0<'_, H> {
    type Hw = H;

    #[inline]
    fn hw(&mut self) -> &mut H {
        &mut self.hw
    }

    #[inline]
    fn hw_ref(&self) -> &H {
        &self.hw
    }

    #[inline]
    fn regs(&mut self) -> &mut GuestRegs {
        self.regs
    }

    #[inline]
    fn count(&mut self, kind: ExitKind) {
        self.cpu.counters[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid::dom0(self.cpu.vendor, self.cpu.identity, leaf, || {
            x86::cpuid(leaf, subleaf)
        })
    }

    fn xcr0_supported(&self) -> u64 {
        self.cpu.xcr0_supported
    }

    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        match index {
            // SVM is Keel's: Dom0 reads SVME as it last wrote it.
            msr::EFER => {
                let svme = if self.view.efer_svme { efer::SVME } else { 0 };
                Some(self.hw.control_regs().efer | svme)
            }
            msr::VM_HSAVE_PA => Some(self.view.hsave_pa),
            // VMX is Keel's: Dom0 sees it locked off, as a firmware that disabled it leaves it.
            msr::IA32_FEATURE_CONTROL => {
                // SAFETY: Only VMX CPUs intercept this MSR, and it exists on them.
                let fc = unsafe { x86::rdmsr(index) };
                Some(fc & !(feature_control::VMX_OUTSIDE_SMX | feature_control::VMX_INSIDE_SMX))
            }
            _ => None,
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64) -> bool {
        match index {
            msr::EFER => {
                if value & !EFER_WRITABLE != 0 {
                    return false;
                }
                self.view.efer_svme = value & efer::SVME != 0;
                let c = self.hw.control_regs();
                self.hw.set_control_regs(&Ctl {
                    efer: (value & !(efer::LMA | efer::SVME)) | (c.efer & efer::LMA),
                    ..c
                });
                true
            }
            msr::VM_HSAVE_PA => {
                if value & 0xfff != 0 {
                    return false;
                }
                self.view.hsave_pa = value;
                true
            }
            // VM_CR: SVM is Keel's; Dom0's writes have no effect.
            msr::VM_CR => true,
            // IA32_FEATURE_CONTROL is locked: writes fault, as on the hardware.
            _ => false,
        }
    }

    /// Keel's own calls, from the module at CPL 0; #UD otherwise, as on a CPU without a
    /// hypervisor.
    fn hypercall(&mut self) -> Action {
        let call = match Call::decode(self.regs.gpr[RAX]) {
            Some(call) if self.hw.cpl() == 0 => call,
            _ => {
                self.hw.inject(vector::UD, None);
                return Action::Resume;
            }
        };
        let exit = Exit::Hypercall;
        let (result, action) = match call {
            Some(Call::Run) => {
                // The instruction is complete before the guest runs: the vendor code switches
                // to the vCPU's VMCS/VMCB and back.
                let vcpu = self.regs.gpr[RDI] as *mut VcpuState;
                let action = exit::complete(self, &exit);
                // SAFETY: Only the module calls Run (CPL 0, checked above), with a vCPU state
                // it owns and holds for the duration of the call.
                unsafe { self.hw.run_domu(&mut *vcpu) };
                self.regs.gpr[RAX] = 0;
                return action;
            }
            Some(Call::Ping) => (hypercall::PONG, Action::Resume),
            Some(Call::Spin) => {
                let ticks = self.regs.gpr[RDI];
                let start = x86::rdtsc();
                while x86::rdtsc().wrapping_sub(start) < ticks {
                    core::hint::spin_loop();
                }
                (0, Action::Resume)
            }
            Some(Call::TestIntercept) => {
                let on = self.regs.gpr[RDI] != 0;
                let result = if self.hw.test_intercept(on) {
                    0
                } else {
                    hypercall::ENOSYS
                };
                (result, Action::Resume)
            }
            Some(Call::Leave) => (0, Action::Leave),
            None => (hypercall::ENOSYS, Action::Resume),
        };
        self.regs.gpr[RAX] = result;
        match exit::complete(self, &exit) {
            Action::Resume => action,
            other => other,
        }
    }

    /// The length of the instruction at RIP, from its bytes at CS:RIP read through Dom0's
    /// page tables (SVM without next-RIP save). The common case, a 64-bit Dom0 whose bytes
    /// are exactly the exit's plain encoding within one page, costs one page walk and a
    /// compare; everything else is decoded in full ([`decode_len_slow`]).
    #[inline(always)]
    fn decode_len(&mut self, exit: &Exit) -> Option<u64> {
        let base = self.cpu.page_offset_base;
        let (cs_base, _) = self.hw.cs();
        let la = cs_base.wrapping_add(self.hw.rip());
        if let Some(plain) = exit.plain_encoding() {
            let c = self.hw.control_regs();
            if c.efer & efer::LMA != 0 && la & 0xfff <= 0x1000 - plain.len() as u64 {
                // Physical memory is read through Linux's direct map, which root mode's page
                // tables share.
                let pa = paging::translate(c.cr3, c.cr4 & cr4::LA57 != 0, la, |pa| {
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
        decode_len_slow(&self.hw, base)
    }

    #[cold]
    fn length_unknown(&mut self, _exit: &Exit) -> Action {
        self.dump("cannot find the length of the instruction");
        self.hw.inject(vector::UD, None);
        Action::Resume
    }

    /// Dom0's control registers are its own: only VMX's fixed bits and VMXE (hidden) bound
    /// them. (Only VMX intercepts Dom0's CR writes: those toggling a bit Keel owns.)
    fn limits(&self) -> Limits {
        let cr4 = match self.cpu.vendor {
            // SAFETY: IA32_VMX_CR4_FIXED1 exists on VMX CPUs.
            Vendor::Vmx => (unsafe { x86::rdmsr(msr::IA32_VMX_CR4_FIXED1) }) & !cr4::VMXE,
            Vendor::Svm => !0,
        };
        Limits { cr4, phys_bits: 52 }
    }

    #[cold]
    fn unexpected(&mut self, exit: &Exit) -> Action {
        let cpu = self.cpu;
        rlog!(
            cpu,
            Err,
            "CPU {}: unexpected Dom0 exit {} ({:?})",
            cpu.cpu,
            exit.kind().name(),
            exit
        );
        self.dump("unexpected exit");
        self.hw.inject(vector::UD, None);
        Action::Resume
    }

    fn init(&mut self, _exit: &Exit) -> Action {
        // An INIT aimed at a launched CPU: Linux sends none to an online CPU (hotplug hands a
        // CPU back before it goes offline). Count it and go on.
        let cpu = self.cpu;
        rlog!(cpu, Warn, "CPU {}: INIT signal ignored", cpu.cpu);
        Action::Resume
    }

    fn host_event(&mut self, _exit: &Exit) -> Action {
        Action::Resume
    }

    fn shutdown(&mut self, _exit: &Exit) -> Action {
        Action::Crash
    }
}
