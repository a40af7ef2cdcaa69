// SPDX-License-Identifier: GPL-2.0
//! DomU vCPUs in root mode: the state a vCPU keeps between runs, and the DomU policy of the
//! exit pipeline ([`Domu`]).
//!
//! A Dom0 thread runs a vCPU with Keel's `Run` hypercall (see `module/domain/run.rs` for the
//! Linux side). Root mode then switches this CPU to the vCPU's VMCS/VMCB (`vmx/domu.rs`,
//! `svm/domu.rs`), runs the guest until it exits for something Dom0 must see (or a host
//! interrupt arrives), and returns to Dom0. Like everything in `root/`, this calls nothing in
//! Linux.

use core::sync::atomic::{AtomicU32, Ordering};

use super::domain::{DomainShared, RangeKind};
use super::exit::{self, Action, Ctx, UserExit};
use super::hal::Hal;
use super::{x86, GuestRegs, Page, RAX, RBX, RCX, RDX};
use crate::keel_core::{
    arch::{cr0, cr4, efer, msr, seg_attrib, vector},
    caps::Vendor,
    cpuid,
    exit::{access, Exit, ExitKind},
    insn::{self, Mode},
    lapic,
    mmio::{self, MmioInsn, MmioOp},
    paging, slat, state,
    vmcb::VmcbSeg,
    xen::{
        self,
        abi::{hypercall, schedop, shutdown, xenfeat, xenver, Errno},
    },
};

/// Testing only: how many of the next DomU entries (on any vCPU) root mode makes the hardware
/// refuse, to exercise the entry-failure path with states Keel would never enter otherwise
/// (`KEEL_VCPU_SET_SREGS` refuses invalid states). Set through debugfs `fail_entries`.
pub(crate) static FORCED_ENTRY_FAILURES: AtomicU32 = AtomicU32::new(0);

/// Takes one forced entry failure, if any is left.
pub(crate) fn take_forced_failure() -> bool {
    FORCED_ENTRY_FAILURES
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Pages of each XSAVE area.
pub(crate) const FPU_PAGES: usize = 3;

/// MSRs a guest reads and writes without exits: kept in the VMCS/VMCB (FS/GS base, SYSENTER,
/// and on SVM the VMLOAD/VMSAVE state) or switched by each VMX run (KERNEL_GS_BASE, STAR,
/// LSTAR, CSTAR, SFMASK).
pub(crate) const PASSTHROUGH_MSRS: [u32; 11] = [
    msr::FS_BASE,
    msr::GS_BASE,
    msr::KERNEL_GS_BASE,
    msr::STAR,
    msr::LSTAR,
    msr::CSTAR,
    msr::SFMASK,
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
    // Switched around each run where the CPU has it (`switch_tsc_aux`); without it, the
    // guest's access faults in the hardware, as its CPUID says.
    msr::TSC_AUX,
];

/// Gives the guest its TSC_AUX for the run (RDTSCP and RDPID read it, and Linux keeps its CPU
/// number there) and returns Dom0's, when the CPU has the MSR.
///
/// # Safety
///
/// Root mode, with `switch_back_tsc_aux` called with the result before Dom0 runs.
pub(crate) unsafe fn switch_tsc_aux(v: &VcpuState, has: bool) -> Option<u64> {
    if !has {
        return None;
    }
    // SAFETY: The CPU has TSC_AUX (CPUID); Dom0's value is restored by the caller's contract.
    unsafe {
        let dom0 = x86::rdmsr(msr::TSC_AUX);
        x86::wrmsr(msr::TSC_AUX, v.arch.tsc_aux);
        Some(dom0)
    }
}

/// Keeps the guest's TSC_AUX and gives Dom0 its own back (see `switch_tsc_aux`).
///
/// # Safety
///
/// Root mode, after the run, with what `switch_tsc_aux` returned.
pub(crate) unsafe fn switch_back_tsc_aux(v: &mut VcpuState, dom0: Option<u64>) {
    if let Some(d) = dom0 {
        // SAFETY: As in `switch_tsc_aux`.
        unsafe {
            v.arch.tsc_aux = x86::rdmsr(msr::TSC_AUX);
            x86::wrmsr(msr::TSC_AUX, d);
        }
    }
}

/// The guest's architectural state between runs, vendor-neutral: what `KEEL_VCPU_GET/SET_*`
/// exchange. Root mode loads it into the VMCS/VMCB when `arch_dirty` and saves it back at the
/// end of every run.
#[derive(Clone, Copy, Default)]
pub(crate) struct ArchState {
    pub(crate) rip: u64,
    pub(crate) rsp: u64,
    pub(crate) rflags: u64,
    pub(crate) cs: VmcbSeg,
    pub(crate) ds: VmcbSeg,
    pub(crate) es: VmcbSeg,
    pub(crate) fs: VmcbSeg,
    pub(crate) gs: VmcbSeg,
    pub(crate) ss: VmcbSeg,
    pub(crate) tr: VmcbSeg,
    pub(crate) ldt: VmcbSeg,
    pub(crate) gdt: VmcbSeg,
    pub(crate) idt: VmcbSeg,
    pub(crate) cr0: u64,
    pub(crate) cr2: u64,
    pub(crate) cr3: u64,
    pub(crate) cr4: u64,
    pub(crate) efer: u64,
    pub(crate) pat: u64,
    pub(crate) xcr0: u64,
    pub(crate) star: u64,
    pub(crate) lstar: u64,
    pub(crate) cstar: u64,
    pub(crate) sfmask: u64,
    pub(crate) kernel_gs_base: u64,
    pub(crate) sysenter_cs: u64,
    pub(crate) sysenter_esp: u64,
    pub(crate) sysenter_eip: u64,
    /// TSC_AUX (not in the uapi; 0 at reset).
    pub(crate) tsc_aux: u64,
    /// DR6 and DR7 (not in the uapi: the guest's own, kept across Dom0's state changes).
    pub(crate) dr6: u64,
    pub(crate) dr7: u64,
}

impl ArchState {
    /// CR0, CR3, CR4 and EFER.
    pub(crate) fn ctl(&self) -> state::Ctl {
        state::Ctl {
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer,
        }
    }

    /// An x86 CPU after INIT (SDM Vol. 3A, 10.1.1): real mode at F000:FFF0.
    pub(crate) fn reset() -> Self {
        let seg = |attrib: u16| VmcbSeg {
            selector: 0,
            attrib,
            limit: 0xffff,
            base: 0,
        };
        // Present, S, read/write data accessed (3); code execute/read accessed (0xb).
        let data = seg(0x93);
        Self {
            rip: 0xfff0,
            rflags: 2,
            cs: VmcbSeg {
                selector: 0xf000,
                base: 0xffff_0000,
                ..seg(0x9b)
            },
            ds: data,
            es: data,
            fs: data,
            gs: data,
            ss: data,
            // A busy 16-bit TSS and an LDT (system segments, present).
            tr: seg(0x8b),
            ldt: seg(0x82),
            gdt: VmcbSeg {
                limit: 0xffff,
                ..VmcbSeg::default()
            },
            idt: VmcbSeg {
                limit: 0xffff,
                ..VmcbSeg::default()
            },
            cr0: 0x6000_0010,
            pat: 0x0007_0406_0007_0406,
            // SDM Vol. 3B, 19.2.3-4.
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            xcr0: 1,
            ..Self::default()
        }
    }
}

/// `VcpuState::irq` and `injected`: the value holds a vector.
pub(crate) const IRQ_VALID: u16 = 0x100;

/// What the next run must finish before entering the guest: the exit left an instruction
/// half done, waiting for Dom0's data.
#[derive(Clone, Copy, Default)]
pub(crate) enum Completion {
    /// Nothing.
    #[default]
    None,
    /// An IN of `size` bytes, `len` bytes long.
    IoIn { size: u8, len: u8 },
    /// An MMIO read.
    MmioRead(MmioInsn),
    /// A hypercall Dom0 answers (the result goes to RAX), `len` bytes long.
    Hypercall { len: u8 },
    /// An MSR access the run loop served, `len` bytes long (a read's value goes to EDX:EAX).
    Msr { read: bool, len: u8 },
    /// The run loop refused the access that exited: #GP instead of completing it.
    GeneralProtection,
}

/// One vCPU's state, in one physically contiguous allocation the module owns.
#[repr(C, align(4096))]
pub(crate) struct VcpuState {
    /// VMX: the VMCS. SVM: the VMCB.
    pub(crate) control: Page,
    /// VMX: the MSR bitmap (first page). SVM: the MSR permission map.
    pub(crate) msr_map: [Page; 2],
    /// SVM: the I/O permission map (12 KiB).
    pub(crate) io_map: [Page; 3],
    /// The guest's FPU/SSE/AVX state (XSAVE area) between runs.
    pub(crate) guest_fpu: [Page; FPU_PAGES],
    /// Dom0's FPU state while the guest runs.
    pub(crate) host_fpu: [Page; FPU_PAGES],
    /// The guest's GPRs (RSP lives in the VMCS/VMCB).
    pub(crate) regs: GuestRegs,
    /// The architectural state between runs.
    pub(crate) arch: ArchState,
    /// `arch` was changed by Dom0: load it at the next entry.
    pub(crate) arch_dirty: bool,
    /// The VMCS/VMCB controls are set up.
    pub(crate) initialized: bool,
    /// SVM: the guest's EFER.LME is held back from the VMCB (`vmcb::hardware_efer`).
    pub(crate) lme_held: bool,
    /// The guest's DR0-DR3 between runs (no VM entry or exit switches them).
    pub(crate) guest_dr: [u64; 4],
    /// Set by Dom0 before a run: the completion data for `completion`.
    pub(crate) completion_data: u64,
    /// The last run ended with an exit whose completion userspace supplies (the next
    /// `KEEL_VCPU_RUN` takes its data).
    pub(crate) user_completion: bool,
    /// What the next run must finish first.
    pub(crate) completion: Completion,
    /// Why the last run ended, and the RIP then.
    pub(crate) exit: UserExit,
    /// See `exit`.
    pub(crate) exit_rip: u64,
    /// The domain, once the vCPU has run: set by the Linux side before the first run, to an
    /// object that outlives the vCPU.
    pub(crate) domain: *const DomainShared,
    /// The vCPU's id.
    pub(crate) id: u32,
    /// Set by the run loop before a run: an external interrupt to deliver, `IRQ_VALID |
    /// vector`, or 0. Root mode injects it at the first entry where the guest takes
    /// interrupts (asking for an interrupt-window exit until then) and moves it to
    /// `injected`.
    pub(crate) irq: u16,
    /// The interrupt root mode injected during the run (`IRQ_VALID | vector`), or 0: the run
    /// loop acknowledges it (the local APIC moves it from IRR to ISR).
    pub(crate) injected: u16,
    /// Set with `irq`: the guest-physical address of a byte that must still be non-zero when
    /// `irq` is injected (Xen's callback vector: the vCPU's `evtchn_upcall_pending`), or 0
    /// for an interrupt that stays pending until taken (the local APIC's).
    pub(crate) irq_gate: u64,
    /// Set by the run loop: an NMI to deliver (the local APIC's). Root mode injects it at
    /// the first entry where the guest is not handling an NMI already, and clears it.
    pub(crate) nmi: bool,
    /// SVM: the guest is in an NMI handler that root mode entered (until its IRET, which is
    /// intercepted meanwhile); VMX keeps this in the guest's interruptibility state.
    pub(crate) nmi_masked: bool,
    /// SVM: the vCPU's ASID.
    pub(crate) asid: u32,
    /// The physical address of this state (computed by the Linux side).
    pub(crate) pa: u64,
    /// Set by the run loop before a run: the TSC value after which root mode gives the CPU
    /// back at the next exit it would otherwise serve and resume from (see `finish`).
    pub(crate) turn_end: u64,
}

impl VcpuState {
    /// Drops `irq` if its gate byte (`irq_gate`) is clear by now. Xen injects the callback
    /// vector only while `evtchn_upcall_pending` is set, checked at each entry: a handler that
    /// took the upcall after the run loop picked the vector (an exit inside the handler, or
    /// the delivery itself cut short and redelivered) must not be entered for it again.
    pub(crate) fn drop_stale_irq(&mut self, domain: &DomainShared) {
        if self.irq & IRQ_VALID == 0 || self.irq_gate == 0 {
            return;
        }
        let mut byte = [0u8; 1];
        if domain.read(self.irq_gate, &mut byte) == 1 && byte[0] == 0 {
            self.irq = 0;
        }
    }

    /// The physical address of something inside this state.
    pub(crate) fn pa_of(&self, p: *const u8) -> u64 {
        self.pa + (p as u64 - core::ptr::from_ref(self) as u64)
    }

    /// The vCPU as the exit pipeline sees it: `hw` makes the hardware view from the vCPU's
    /// control page and `lme_held` (SVM: its VMCB) or brings its own (VMX: the current VMCS).
    pub(crate) fn domu<'a, H: Hal>(
        &'a mut self,
        hw: impl FnOnce(&'a mut Page, &'a mut bool) -> H,
        domain: &'a DomainShared,
        vendor: Vendor,
        raw_reason: u64,
    ) -> Domu<'a, H> {
        let VcpuState {
            control,
            lme_held,
            regs,
            arch,
            completion,
            exit,
            id,
            ..
        } = self;
        Domu {
            vcpu_id: *id,
            hw: hw(control, lme_held),
            regs,
            xcr0: &mut arch.xcr0,
            completion,
            exit,
            domain,
            vendor,
            raw_reason,
        }
    }

    /// Records how a run ended: `action` from the exit pipeline, `rip` where the guest was
    /// when it exited. Returns true when the guest should be entered again.
    ///
    /// A run whose turn is over (`turn_end`) ends at the next exit as if a host interrupt had
    /// ended it: the run loop lets Dom0 take what is pending, then enters again. A guest whose
    /// every exit root mode serves (a CPUID loop, an invalid opcode whose handler is another)
    /// would otherwise keep the CPU for as long as host interrupts do not end its turn, which
    /// an emulator that holds them while the guest's IF is clear (Bochs) never does: each
    /// entry also starts the VMX-preemption timer afresh.
    pub(crate) fn finish(&mut self, action: Action, rip: u64) -> bool {
        match action {
            Action::Resume if (x86::rdtsc().wrapping_sub(self.turn_end) as i64) < 0 => return true,
            Action::Resume | Action::RunLoop => self.exit = UserExit::None,
            // The handler wrote the record.
            Action::ToUser | Action::Crash => {}
            // Only Dom0 leaves.
            Action::Leave => {
                self.exit = UserExit::Unhandled {
                    reason: 0,
                    qualification: rip,
                }
            }
        }
        self.exit_rip = rip;
        false
    }
}

/// The exceptions a DomU's exits intercept (the same bits in VMX's exception bitmap and SVM's
/// exception intercepts): #UD for the other vendor's hypercall instruction, #AC and #DB so
/// that no guest can loop the processor in their delivery (see `Domu::exception`).
pub(crate) const INTERCEPTED_EXCEPTIONS: u32 =
    (1 << vector::UD) | (1 << vector::DB) | (1 << vector::AC);

/// Whether `exit` is an intercepted #AC or #DB (see [`INTERCEPTED_EXCEPTIONS`]).
pub(crate) fn benign_exception(exit: &Exit) -> bool {
    matches!(
        exit,
        Exit::Exception {
            vector: vector::AC | vector::DB,
            ..
        }
    )
}

/// A DomU vCPU during one exit: its hardware and the parts of its state the handlers use.
pub(crate) struct Domu<'a, H: Hal> {
    /// The vCPU's id.
    pub(crate) vcpu_id: u32,
    /// The hardware.
    pub(crate) hw: H,
    /// The vCPU's GPRs.
    pub(crate) regs: &'a mut GuestRegs,
    /// The guest's XCR0.
    pub(crate) xcr0: &'a mut u64,
    /// What the next run must finish first.
    pub(crate) completion: &'a mut Completion,
    /// The exit record for userspace, when a handler ends the run.
    pub(crate) exit: &'a mut UserExit,
    /// The domain.
    pub(crate) domain: &'a DomainShared,
    /// The vendor (for CPUID's view).
    pub(crate) vendor: Vendor,
    /// The raw exit reason, for exits reported as unhandled.
    pub(crate) raw_reason: u64,
}

/// The XENFEAT bits of submap 0 Keel offers (xen_version get_features): what a PVH DomU's
/// memory model is (page tables and descriptor tables are the guest's own, the physical map
/// translated by EPT/NPT).
const FEATURES: u32 = (1 << xenfeat::WRITABLE_PAGE_TABLES)
    | (1 << xenfeat::WRITABLE_DESCRIPTOR_TABLES)
    | (1 << xenfeat::AUTO_TRANSLATED_PHYSMAP)
    | (1 << xenfeat::HVM_CALLBACK_VECTOR)
    | (1 << xenfeat::HVM_SAFE_PVCLOCK);

/// IA32_MISC_ENABLE of a Xen domain's vCPU: fast strings (bit 0), BTS (11) and PEBS (12)
/// unavailable.
const MISC_ENABLE: u64 = (1 << 0) | (1 << 11) | (1 << 12);
/// IA32_MTRR_DEF_TYPE of a Xen domain's vCPU: MTRRs enabled (bit 11), default write-back.
const MTRR_DEF_TYPE: u64 = (1 << 11) | 6;

/// A guest-virtual access that failed (EFAULT to the guest).
struct Fault;

impl<H: Hal> Domu<'_, H> {
    /// The guest's code-segment mode.
    pub(crate) fn mode(&self) -> Mode {
        let efer = self.hw.control_regs().efer;
        let (_, attrib) = self.hw.cs();
        if efer & efer::LMA != 0 && attrib & seg_attrib::L != 0 {
            Mode::Bits64
        } else if attrib & seg_attrib::DB != 0 {
            Mode::Bits32
        } else {
            Mode::Bits16
        }
    }

    /// Reads guest memory at linear address `la` through the guest's paging (if on) and the
    /// domain's map. Returns the bytes read.
    fn read_linear(&self, la: u64, buf: &mut [u8]) -> usize {
        let c = self.hw.control_regs();
        let dom = self.domain;
        let mode = paging::PagingMode::from_control_registers(c.cr0, c.cr4, c.efer);
        paging::read_linear_in(
            mode,
            c.cr3,
            la,
            buf,
            |pa| dom.read_u64(pa),
            |pa| {
                let mut b = [0u8];
                (dom.read(pa, &mut b) == 1).then_some(b[0])
            },
        )
    }

    /// Reads the instruction bytes at CS:RIP; returns how many were read.
    fn fetch(&self, buf: &mut [u8; insn::MAX_LEN]) -> usize {
        let (cs_base, _) = self.hw.cs();
        let mut la = cs_base.wrapping_add(self.hw.rip());
        if self.mode() != Mode::Bits64 {
            la &= 0xffff_ffff;
        }
        self.read_linear(la, buf)
    }

    /// The guest-physical address of guest-virtual `gva` for a supervisor access (hypercall
    /// arguments: the caller is at CPL 0), through the guest's paging; `None` where a CPU
    /// would fault (not present, a write to a read-only page with CR0.WP, not canonical).
    fn gva_to_gpa(&self, gva: u64, write: bool) -> Option<u64> {
        let c = self.hw.control_regs();
        let mode = paging::PagingMode::from_control_registers(c.cr0, c.cr4, c.efer);
        if c.efer & efer::LMA != 0 && !state::canonical(gva, c.cr4 & cr4::LA57 != 0) {
            return None;
        }
        let dom = self.domain;
        let t = paging::walk(mode, c.cr3, gva, |pa| dom.read_u64(pa))?;
        (!write || t.write || c.cr0 & cr0::WP == 0).then_some(t.pa)
    }

    /// The guest-virtual address of the `done`th byte of an argument at `gva` (wrapping as
    /// the vCPU's address size does).
    fn gva_at(&self, gva: u64, done: usize) -> u64 {
        let a = gva.wrapping_add(done as u64);
        if self.mode() == Mode::Bits64 {
            a
        } else {
            a & 0xffff_ffff
        }
    }

    /// Copies a hypercall argument in from guest-virtual `gva` (it may cross pages).
    fn copy_from_guest(&self, gva: u64, buf: &mut [u8]) -> Result<(), Fault> {
        let mut done = 0;
        while done < buf.len() {
            let a = self.gva_at(gva, done);
            let n = ((4096 - (a & 0xfff)) as usize).min(buf.len() - done);
            let gpa = self.gva_to_gpa(a, false).ok_or(Fault)?;
            if self.domain.read(gpa, &mut buf[done..done + n]) != n {
                return Err(Fault);
            }
            done += n;
        }
        Ok(())
    }

    /// Copies a hypercall result out to guest-virtual `gva` (it may cross pages). Every page is
    /// checked before the first byte is written, so a fault writes nothing.
    fn copy_to_guest(&self, gva: u64, buf: &[u8]) -> Result<(), Fault> {
        for pass in [false, true] {
            let mut done = 0;
            while done < buf.len() {
                let a = self.gva_at(gva, done);
                let n = ((4096 - (a & 0xfff)) as usize).min(buf.len() - done);
                let gpa = self.gva_to_gpa(a, true).ok_or(Fault)?;
                if !pass {
                    if self.domain.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
                        return Err(Fault);
                    }
                } else if self.domain.write(gpa, &buf[done..done + n]) != n {
                    return Err(Fault);
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Writes a result: 0, or -EFAULT.
    fn put(&self, gva: u64, bytes: &[u8]) -> u64 {
        match self.copy_to_guest(gva, bytes) {
            Ok(()) => 0,
            Err(Fault) => Errno::EFAULT.rax(),
        }
    }

    /// `xen_version(cmd, arg)`: Xen's answers for an HVM/PVH DomU (xen/common/kernel.c).
    fn xen_version(&self, cmd: u64, arg: u64) -> u64 {
        /// A NUL-padded string field of `N` bytes.
        fn field<const N: usize>(s: &[u8]) -> [u8; N] {
            let mut f = [0u8; N];
            let n = s.len().min(N - 1);
            f[..n].copy_from_slice(&s[..n]);
            f
        }
        let Ok(cmd) = u32::try_from(cmd) else {
            return Errno::ENOSYS.rax();
        };
        let long = self.mode() == Mode::Bits64;
        match cmd {
            xenver::VERSION => u64::from((xen::cpuid::VERSION.0 << 16) | xen::cpuid::VERSION.1),
            xenver::PAGESIZE => 4096,
            xenver::EXTRAVERSION => {
                self.put(arg, &field::<{ xenver::EXTRAVERSION_LEN }>(b".0-keel"))
            }
            xenver::CHANGESET => self.put(arg, &field::<{ xenver::CHANGESET_LEN }>(b"keel")),
            xenver::CAPABILITIES => self.put(
                arg,
                &field::<{ xenver::CAPABILITIES_LEN }>(
                    b"hvm-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p",
                ),
            ),
            xenver::COMPILE_INFO => {
                let mut info = [0u8; 144];
                info[..64].copy_from_slice(&field::<64>(b"rustc"));
                info[64..80].copy_from_slice(&field::<16>(b"keel"));
                self.put(arg, &info)
            }
            // virt_start: nothing of the guest's address space is the hypervisor's.
            xenver::PLATFORM_PARAMETERS => {
                self.put(arg, if long { &[0u8; 8][..] } else { &[0u8; 4][..] })
            }
            // The domain's handle (its UUID): none yet.
            xenver::GUEST_HANDLE => self.put(arg, &[0u8; 16]),
            xenver::GET_FEATURES => {
                let mut info = [0u8; 8];
                if self.copy_from_guest(arg, &mut info).is_err() {
                    return Errno::EFAULT.rax();
                }
                let idx = u32::from_le_bytes([info[0], info[1], info[2], info[3]]);
                if idx != 0 {
                    return Errno::EINVAL.rax();
                }
                info[4..].copy_from_slice(&FEATURES.to_le_bytes());
                self.put(arg, &info)
            }
            // Xen keeps its command line and build id from unprivileged domains.
            xenver::COMMANDLINE | xenver::BUILD_ID => Errno::EPERM.rax(),
            _ => Errno::ENOSYS.rax(),
        }
    }

    /// `sched_op(cmd, arg)` for the sub-ops Keel serves in root mode: `SCHEDOP_yield` (the run
    /// loop lets Dom0's scheduler run, then the guest goes on) and `SCHEDOP_shutdown`, which
    /// ends the run with the reason for the vCPU's userspace (the toolstack applies
    /// on_poweroff/on_reboot/on_crash). The hypercall completes (RAX = 0, RIP past it) before
    /// the guest is entered again; a bad argument gets Xen's errno.
    fn sched_op(&mut self, cmd: u32, arg: u64, len: u8) -> Action {
        let result = if cmd == schedop::YIELD {
            Ok(Action::RunLoop)
        } else {
            let mut b = [0u8; 4];
            match self
                .copy_from_guest(arg, &mut b)
                .map(|()| u32::from_le_bytes(b))
            {
                Err(Fault) => Err(Errno::EFAULT),
                Ok(reason) if reason > shutdown::MAX => Err(Errno::EINVAL),
                Ok(reason) => {
                    *self.exit = UserExit::Shutdown {
                        xen_reason: Some(reason),
                    };
                    Ok(Action::ToUser)
                }
            }
        };
        let (rax, action) = match result {
            Ok(a) => (0, a),
            Err(e) => (e.rax(), Action::Resume),
        };
        self.regs.gpr[RAX] = rax;
        let rip = self.hw.rip().wrapping_add(len.into());
        self.hw.set_rip(rip);
        action
    }

    /// Fills the hypercall page the guest asked for at `value` (its guest-physical address;
    /// the low 12 bits pick the page: there is one). False (#GP) when it is not a RAM page.
    fn install_hypercall_page(&self, value: u64) -> bool {
        // The page must lie in guest-physical space (the stubs' addresses cannot wrap).
        if value & 0xfff != 0 || value >= slat::GPA_LIMIT {
            return false;
        }
        let amd = self.vendor == Vendor::Svm;
        (0..xen::cpuid::HYPERCALL_STUBS as u32).all(|n| {
            let stub = xen::cpuid::hypercall_stub(n, amd);
            self.domain.write(value + 32 * u64::from(n), &stub) == stub.len()
        })
    }

    /// Finishes the instruction the previous exit left for Dom0, with Dom0's data.
    pub(crate) fn complete_pending(&mut self, data: u64) {
        let len = match core::mem::take(self.completion) {
            Completion::None => return,
            Completion::IoIn { size, len } => {
                let rax = &mut self.regs.gpr[RAX];
                *rax = match size {
                    1 => (*rax & !0xff) | (data & 0xff),
                    2 => (*rax & !0xffff) | (data & 0xffff),
                    _ => data & 0xffff_ffff,
                };
                len
            }
            Completion::MmioRead(insn) => {
                let m = self.mode();
                mmio::complete_read(&mut self.regs.gpr, &insn, data, m);
                insn.len
            }
            Completion::Hypercall { len } => {
                self.regs.gpr[RAX] = data;
                len
            }
            Completion::Msr { read, len } => {
                if read {
                    self.regs.gpr[RAX] = data & 0xffff_ffff;
                    self.regs.gpr[RDX] = data >> 32;
                }
                len
            }
            Completion::GeneralProtection => {
                exit::general_protection(self);
                return;
            }
        };
        let rip = self.hw.rip().wrapping_add(len.into());
        self.hw.set_rip(rip);
    }

    /// A hypercall, `len` bytes long. Xen's convention: 64-bit callers pass the number in
    /// RAX and arguments in RDI, RSI, RDX, R10, R8; 32-bit callers in EAX and EBX, ECX, EDX,
    /// ESI, EDI. Numbers Keel handles are answered here; the others go to Dom0, which
    /// supplies the result.
    fn xen_hypercall(&mut self, len: u8) -> Action {
        let long_mode = self.mode() == Mode::Bits64;
        let cpl = self.hw.cpl();
        let regs = &mut self.regs.gpr;
        if cpl != 0 {
            regs[RAX] = Errno::EPERM.rax();
        } else {
            let (nr, args) = if long_mode {
                (regs[RAX], [regs[7], regs[6], regs[RDX], regs[10], regs[8]])
            } else {
                let r = |i: usize| regs[i] & 0xffff_ffff;
                (r(RAX), [r(RBX), r(RCX), r(RDX), r(6), r(7)])
            };
            match nr {
                hypercall::XEN_VERSION => {
                    let r = self.xen_version(args[0], args[1]);
                    self.regs.gpr[RAX] = r;
                }
                hypercall::SCHED_OP if matches!(args[0], 0 | 2) => {
                    return self.sched_op(args[0] as u32, args[1], len);
                }
                _ => {
                    *self.completion = Completion::Hypercall { len };
                    return self.exit_to_user(UserExit::Hypercall {
                        nr,
                        args,
                        long_mode,
                    });
                }
            }
        }
        let rip = self.hw.rip().wrapping_add(len.into());
        self.hw.set_rip(rip);
        Action::Resume
    }

    /// Ends the run with an exit for userspace.
    fn exit_to_user(&mut self, exit: UserExit) -> Action {
        *self.exit = exit;
        Action::ToUser
    }

    /// Ends the run with the exit reported as unhandled.
    fn crash(&mut self, reason: u64, qualification: u64) -> Action {
        *self.exit = UserExit::Unhandled {
            reason,
            qualification,
        };
        Action::Crash
    }

    /// Ends the run with the exit reported as unhandled, at RIP.
    fn crash_at_rip(&mut self) -> Action {
        let rip = self.hw.rip();
        self.crash(self.raw_reason, rip)
    }
}

impl<H: Hal> Ctx for Domu<'_, H> {
    type Hw = H;

    fn hw(&mut self) -> &mut H {
        &mut self.hw
    }

    fn hw_ref(&self) -> &H {
        &self.hw
    }

    fn regs(&mut self) -> &mut GuestRegs {
        self.regs
    }

    fn count(&mut self, kind: ExitKind) {
        self.domain.state.lock().exits[kind as usize] += 1;
    }

    /// Xen's hypervisor leaves (`keel_core::xen::cpuid`); otherwise Dom0's view of the CPU (the
    /// extension hidden) with the OSXSAVE and OSPKE bits following the guest's own CR4,
    /// MONITOR hidden and XCR0 limited to what the domain may set.
    fn cpuid(&mut self, leaf: u32, sub: u32) -> [u32; 4] {
        let cr4 = self.hw.cr4();
        let ids = xen::cpuid::Ids {
            domid: self.domain.domid,
            vcpu: self.vcpu_id,
        };
        if let Some(r) = xen::cpuid::hypervisor_leaf(leaf, sub, ids) {
            return r;
        }
        let mut r = cpuid::dom0(self.vendor, self.domain.identity, leaf, || {
            x86::cpuid(leaf, sub)
        });
        if leaf == 1 {
            // ECX.OSXSAVE (27) mirrors CR4.OSXSAVE; ECX.MONITOR (3): MONITOR/MWAIT are refused;
            // the local APIC is a Xen domain's model, with x2APIC (21) but no TSC-deadline
            // mode (24), whose ID is the vCPU id (EBX 31:24, as in the MADT).
            r[2] &= !((1 << 27) | (1 << 3) | (1 << 21) | (1 << 24));
            if cr4 & cr4::OSXSAVE != 0 {
                r[2] |= 1 << 27;
            }
            if self.domain.xen {
                r[2] |= 1 << 21;
            }
            r[1] = (r[1] & 0x00ff_ffff) | (self.vcpu_id << 24);
        } else if leaf == 0xb || leaf == 0x1f {
            // The x2APIC ID of the topology leaves.
            r[3] = self.vcpu_id;
        } else if leaf == 0xd && sub == 0 {
            // EDX:EAX: the XCR0 bits the guest may set.
            let supported = self.domain.xcr0_supported;
            r[0] &= supported as u32;
            r[3] &= (supported >> 32) as u32;
        } else if leaf == 7 && sub == 0 {
            // ECX.OSPKE (4) mirrors CR4.PKE.
            r[2] &= !(1 << 4);
            if cr4 & cr4::PKE != 0 {
                r[2] |= 1 << 4;
            }
        }
        r
    }

    fn xcr0_supported(&self) -> u64 {
        self.domain.xcr0_supported
    }

    fn xcr0_changed(&mut self, value: u64) {
        *self.xcr0 = value;
    }

    /// EFER and PAT live in the VMCS/VMCB; the TSC reads through; anything else raises #GP,
    /// as on a CPU without it.
    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        match index {
            msr::EFER => Some(self.hw.control_regs().efer),
            msr::IA32_PAT => Some(self.hw.pat()),
            msr::IA32_TSC => Some(x86::rdtsc()),
            // What Xen gives an HVM guest: fast strings, no BTS or PEBS (Linux reads it with
            // no fault handler in its first instructions on Intel); MTRRs present with no
            // ranges and the default type write-back, enabled.
            msr::IA32_MISC_ENABLE if self.domain.xen => Some(MISC_ENABLE),
            msr::MTRR_CAP if self.domain.xen => Some(0),
            msr::MTRR_DEF_TYPE if self.domain.xen => Some(MTRR_DEF_TYPE),
            msr::AMD_INT_PENDING_MSG if self.domain.xen => Some(0),
            _ => None,
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64) -> bool {
        match index {
            msr::EFER => match state::wrmsr_efer(&self.hw.control_regs(), value) {
                Some(c) => {
                    self.hw.set_control_regs(&c);
                    true
                }
                None => false,
            },
            msr::IA32_PAT => {
                self.hw.set_pat(value);
                true
            }
            xen::cpuid::HYPERCALL_PAGE_MSR => self.install_hypercall_page(value),
            // Xen ignores these writes from a guest.
            msr::IA32_MISC_ENABLE | msr::MTRR_DEF_TYPE | msr::AMD_INT_PENDING_MSG
                if self.domain.xen =>
            {
                true
            }
            _ => false,
        }
    }

    /// A Xen domain's IA32_APIC_BASE and x2APIC registers belong to its local APIC model,
    /// which the run loop holds (as it holds the xAPIC page). Its hypercall page is written
    /// here, then the run loop latches the shared-info layout from the vCPU's mode, as Xen
    /// does then.
    fn msr_to_run_loop(
        &mut self,
        index: u32,
        write: bool,
        value: u64,
        exit: &Exit,
    ) -> Option<Action> {
        let apic =
            index == msr::IA32_APIC_BASE || (msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&index);
        let page = index == xen::cpuid::HYPERCALL_PAGE_MSR && write;
        if !self.domain.xen || !(apic || page) {
            return None;
        }
        if page && !self.install_hypercall_page(value) {
            exit::general_protection(self);
            return Some(Action::Resume);
        }
        let Some(len) = self.hw.insn_len().or_else(|| self.decode_len(exit)) else {
            return Some(self.length_unknown(exit));
        };
        *self.completion = Completion::Msr {
            read: !write,
            len: len as u8,
        };
        Some(self.exit_to_user(UserExit::Msr {
            index,
            write,
            value,
        }))
    }

    fn hypercall(&mut self) -> Action {
        // VMCALL and VMMCALL are 3 bytes.
        let len = self.hw.insn_len().unwrap_or(3) as u8;
        self.xen_hypercall(len)
    }

    fn decode_len(&mut self, _exit: &Exit) -> Option<u64> {
        self.fetch_insn().map(|i| i.len as u64)
    }

    fn length_unknown(&mut self, _exit: &Exit) -> Action {
        let rip = self.hw.rip();
        self.crash(0, rip)
    }

    fn limits(&self) -> state::Limits {
        self.domain.limits
    }

    fn pdptes(&self, pdpt: u64) -> Option<[u64; 4]> {
        self.domain.pdptes(pdpt)
    }

    fn fetch_insn(&mut self) -> Option<insn::Insn> {
        let mut bytes = [0u8; insn::MAX_LEN];
        let n = self.fetch(&mut bytes);
        insn::decode(&bytes[..n], self.mode()).ok()
    }

    fn unexpected(&mut self, exit: &Exit) -> Action {
        match *exit {
            Exit::Other {
                reason,
                qualification,
            } => self.crash(reason, qualification),
            _ => self.crash_at_rip(),
        }
    }

    /// #UD: the other vendor's hypercall instruction (VMMCALL on Intel, VMCALL on AMD) is a
    /// hypercall too; any other #UD is the guest's own and is delivered.
    ///
    /// #AC and #DB are the guest's own, delivered as the processor would have. They are
    /// intercepted so that no guest keeps a CPU in a loop of deliveries: an #AC raised while
    /// delivering an #AC (a misaligned stack at CPL 3), or a #DB while delivering a #DB (a
    /// breakpoint on the handler's stack), is delivered again and again with no instruction
    /// boundary where a host interrupt could end the guest's turn (CVE-2015-5307,
    /// CVE-2015-8104; KVM and Xen intercept both). Each delivery is an exit instead.
    fn exception(&mut self, exit: &Exit) -> Action {
        match *exit {
            Exit::Exception {
                vector: vector::UD, ..
            } => {}
            Exit::Exception {
                vector: vector::AC, ..
            } => {
                // #AC's error code is always 0; real mode has none (a split-lock #AC, which
                // Linux's detection raises at any CPL, comes in real mode too).
                let pe = self.hw.control_regs().cr0 & cr0::PE != 0;
                self.hw.inject(vector::AC, pe.then_some(0));
                return Action::Resume;
            }
            Exit::Exception {
                vector: vector::DB, ..
            } => {
                self.hw.reflect_debug();
                return Action::Resume;
            }
            _ => return self.unexpected(exit),
        }
        let mut bytes = [0u8; insn::MAX_LEN];
        let n = self.fetch(&mut bytes);
        if n >= 3 && bytes[0] == 0x0f && bytes[1] == 0x01 && (bytes[2] == 0xc1 || bytes[2] == 0xd9)
        {
            return self.xen_hypercall(3);
        }
        self.hw.inject(vector::UD, None);
        Action::Resume
    }

    /// Host interrupts and NMIs are Dom0's: the run loop lets Dom0 take them.
    fn host_event(&mut self, _exit: &Exit) -> Action {
        Action::RunLoop
    }

    /// The guest takes interrupts again: the run loop picks what to inject now (what it picked
    /// before may be stale: a callback whose upcall flag the guest has cleared since, in the
    /// handler of an event delivered meanwhile).
    fn interrupt_window(&mut self, _exit: &Exit) -> Action {
        Action::RunLoop
    }

    /// INIT: Linux sends none to a CPU it is using; ignore it.
    fn init(&mut self, _exit: &Exit) -> Action {
        Action::Resume
    }

    /// HLT: the guest has nothing to do until an event, and Keel delivers none yet.
    fn hlt(&mut self, exit: &Exit) -> Action {
        match exit::complete(self, exit) {
            Action::Resume => self.exit_to_user(UserExit::Hlt),
            other => other,
        }
    }

    /// IN/OUT (not the string forms): OUT is complete when Dom0 sees it; IN completes at the
    /// next run with Dom0's data.
    fn io(&mut self, exit: &Exit) -> Action {
        let Exit::Io {
            port,
            size,
            input,
            string: false,
            next_rip,
            ..
        } = *exit
        else {
            return self.unexpected(exit);
        };
        let rip = self.hw.rip();
        let len = match next_rip {
            Some(next) => next.wrapping_sub(rip),
            None => match self.hw.insn_len() {
                Some(len) => len,
                None => return self.crash_at_rip(),
            },
        } as u8;
        let mask = if size >= 4 {
            0xffff_ffff
        } else {
            (1u64 << (size * 8)) - 1
        };
        if self.domain.xen {
            // Xen's PVH DomU has no port I/O devices: reads are all-ones, writes dropped.
            if input {
                let rax = &mut self.regs.gpr[RAX];
                *rax = if size >= 4 {
                    mask
                } else {
                    (*rax & !mask) | mask
                };
            }
            self.hw.set_rip(rip.wrapping_add(len.into()));
            return Action::Resume;
        }
        let data = if input {
            *self.completion = Completion::IoIn { size, len };
            0
        } else {
            self.hw.set_rip(rip.wrapping_add(len.into()));
            self.regs.gpr[RAX] & mask
        };
        self.exit_to_user(UserExit::Io {
            port,
            size,
            input,
            data,
        })
    }

    /// A second-level fault: an MMIO access comes out decoded; anything else is a memory
    /// fault.
    fn slat_fault(&mut self, exit: &Exit) -> Action {
        let Exit::SlatFault { gpa, access } = *exit else {
            return self.unexpected(exit);
        };
        let kind = self
            .domain
            .range_of(gpa)
            .map_or(RangeKind::None, |r| r.kind);
        // Xen: a hole reads all-ones and drops writes, except the local APIC's page, which the
        // run loop serves.
        let hole = self.domain.xen && kind == RangeKind::None;
        let lapic = hole && gpa & !0xfff == lapic::DEFAULT_BASE;
        if (kind != RangeKind::Mmio && !hole) || access & access::EXEC != 0 {
            return self.exit_to_user(UserExit::MemoryFault { gpa, access });
        }
        if self.hw.event_in_delivery() {
            // The access is the delivery's (the guest's IDT, GDT or stack in MMIO or a hole),
            // not the instruction's at RIP: nothing can emulate it, and the guest cannot go
            // on (KVM reports an internal error too).
            return self.crash_at_rip();
        }
        let mut bytes = [0u8; insn::MAX_LEN];
        let n = self.fetch(&mut bytes);
        let Ok(insn) = mmio::decode(&bytes[..n], self.mode()) else {
            let rip = self.hw.rip();
            return self.crash(0, rip);
        };
        let rip = self.hw.rip();
        if hole && !lapic {
            if let MmioOp::Read { .. } = insn.op {
                let m = self.mode();
                mmio::complete_read(&mut self.regs.gpr, &insn, u64::MAX, m);
            }
            self.hw.set_rip(rip.wrapping_add(insn.len.into()));
            return Action::Resume;
        }
        match insn.op {
            MmioOp::Write { .. } => {
                let data = mmio::write_data(&self.regs.gpr, &insn);
                self.hw.set_rip(rip.wrapping_add(insn.len.into()));
                self.exit_to_user(UserExit::Mmio {
                    gpa,
                    size: insn.size,
                    read: false,
                    data,
                })
            }
            MmioOp::Read { .. } => {
                *self.completion = Completion::MmioRead(insn);
                self.exit_to_user(UserExit::Mmio {
                    gpa,
                    size: insn.size,
                    read: true,
                    data: 0,
                })
            }
        }
    }

    /// A triple fault, or an entry the hardware refused: for the vCPU's userspace.
    fn shutdown(&mut self, exit: &Exit) -> Action {
        self.exit_to_user(match *exit {
            Exit::EntryFailure {
                reason,
                qualification,
            } => UserExit::EntryFailure {
                reason,
                qualification,
            },
            _ => UserExit::Shutdown { xen_reason: None },
        })
    }
}
