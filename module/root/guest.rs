// SPDX-License-Identifier: GPL-2.0
//! DomU vCPUs in root mode: the state a vCPU keeps between runs, and the exit handling both
//! vendors share.
//!
//! A Dom0 thread runs a vCPU with Keel's `Run` hypercall (see `domain.rs` for the Linux side).
//! Root mode then switches this CPU to the vCPU's VMCS/VMCB, runs the guest until it exits
//! for something Dom0 must see (or a host interrupt arrives), and returns to Dom0. The vendor
//! files (`vmx_guest.rs`, `svm_guest.rs`) implement [`GuestVendor`]; the handlers here never
//! name a VMCS field or a VMCB offset. Like everything in `root/`, this calls nothing in Linux.

use crate::keel_core::{
    cpuid,
    insn::{self, Mode},
    mmio::{self, MmioInsn, MmioOp},
    paging,
    slat::{self, Format},
    vmcb::VmcbSeg,
    xcr,
};
use crate::root::{GuestRegs, Page, GP, RAX, RBX, RCX, RDX, UD};
use crate::x86::{self, msr};

/// Guest-physical ranges a domain may have (the uapi's `KEEL_MAX_RANGES`).
pub(crate) const MAX_RANGES: usize = 64;
/// Pages of each XSAVE area.
pub(crate) const FPU_PAGES: usize = 3;

/// EFER bits.
pub(crate) const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub(crate) const EFER_LMA: u64 = 1 << 10;
/// CR0.PG.
pub(crate) const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub(crate) const CR4_PAE: u64 = 1 << 5;

/// MSRs a guest reads and writes without exits: kept in the VMCS/VMCB (FS/GS base, SYSENTER,
/// and on SVM the VMLOAD/VMSAVE state) or switched by each VMX run (KERNEL_GS_BASE, STAR,
/// LSTAR, CSTAR, SFMASK).
pub(crate) const PASSTHROUGH_MSRS: [u32; 10] = [
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
];

/// What a guest-physical range is.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RangeKind {
    /// Not a range (an unused slot).
    #[default]
    None,
    /// RAM.
    Ram,
    /// Read-only memory.
    Rom,
    /// Every access exits to Dom0, decoded.
    Mmio,
}

/// One guest-physical range.
#[derive(Clone, Copy, Default)]
pub(crate) struct Range {
    /// Start.
    pub(crate) gpa: u64,
    /// Bytes.
    pub(crate) size: u64,
    /// Kind.
    pub(crate) kind: RangeKind,
}

/// What root mode knows of a vCPU's domain. Fixed once the domain has started: the Linux side
/// fills it before the first run and never changes it after.
#[derive(Clone, Copy)]
pub(crate) struct DomainView {
    /// The second-level page tables' root (physical).
    pub(crate) slat_root: u64,
    /// EPT or NPT.
    pub(crate) format: Format,
    /// The map.
    pub(crate) ranges: [Range; MAX_RANGES],
    /// Linux's direct-map offset: root mode reads physical memory at this + address.
    pub(crate) page_offset_base: u64,
    /// XCR0 bits the CPU supports and Dom0 enabled (what the guest's XSETBV may set, and what
    /// the FPU switch moves); 0 without XSAVE
    /// (Dom0's CR4.OSXSAVE clear): the FPU then moves with FXSAVE and XSETBV raises #UD.
    pub(crate) xcr0_supported: u64,
    /// What Keel's CPUID leaves report.
    pub(crate) identity: cpuid::Identity,
}

impl DomainView {
    /// The range holding `gpa`.
    pub(crate) fn range_of(&self, gpa: u64) -> Option<&Range> {
        self.ranges
            .iter()
            .find(|r| r.kind != RangeKind::None && gpa >= r.gpa && gpa - r.gpa < r.size)
    }

    /// Reads guest-physical memory through the second-level tables (RAM and ROM only).
    /// Returns the bytes read: fewer when a page is not memory.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> usize {
        let mut t = DirectTables(self.page_offset_base);
        let mut done = 0;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let Some(m) = slat::translate(&mut t, self.format, self.slat_root, a) else {
                break;
            };
            let hpa = m.hpa;
            let in_page = (4096 - (a & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let src = (self.page_offset_base + hpa) as *const u8;
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                // SAFETY: `hpa` is domain memory (the tables map nothing else), page-sized
                // pages that the domain owns and Linux's direct map covers.
                *b = unsafe { src.add(i).read_volatile() };
            }
            done += n;
        }
        done
    }

    /// Reads an 8-byte guest-physical value.
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        (self.read(gpa, &mut b) == 8).then(|| u64::from_le_bytes(b))
    }
}

/// The second-level tables, read through Linux's direct map (root mode never allocates).
struct DirectTables(u64);

impl slat::Tables for DirectTables {
    fn alloc(&mut self) -> Option<u64> {
        None
    }

    fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: Table pages are module allocations in the direct map; root mode only reads
        // them (`translate` does not write).
        unsafe { &mut *((self.0 + phys) as *mut [u64; 512]) }
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
}

impl ArchState {
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
            xcr0: 1,
            ..Self::default()
        }
    }
}

/// Why a run ended, for Dom0.
#[derive(Clone, Copy, Default)]
pub(crate) enum GuestExit {
    /// Nothing for Dom0: a host interrupt or a kick took the CPU back; run again.
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
    /// A hypercall Keel does not handle.
    Hypercall {
        nr: u64,
        args: [u64; 5],
        long_mode: bool,
    },
    /// Triple fault.
    Shutdown,
    /// An access outside the map (or a write to ROM): access bits read 1, write 2, exec 4.
    MemoryFault { gpa: u64, access: u32 },
    /// The hardware refused the guest state.
    EntryFailure { reason: u64, qualification: u64 },
    /// An exit Keel cannot handle.
    Unhandled { reason: u64, qualification: u64 },
}

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
    /// Set by Dom0 before a run: the completion data for `completion`.
    pub(crate) completion_data: u64,
    /// What the next run must finish first.
    pub(crate) completion: Completion,
    /// Why the last run ended, and the RIP then.
    pub(crate) exit: GuestExit,
    /// See `exit`.
    pub(crate) exit_rip: u64,
    /// Root mode injected an NMI that arrived while the guest ran into Dom0 (VMX).
    pub(crate) nmi_for_dom0: bool,
    /// The domain.
    pub(crate) domain: DomainView,
    /// Guest exits per kind (root mode counts; Dom0 reads them between runs).
    pub(crate) counters: [u64; crate::keel_core::exit::EXIT_KINDS],
    /// The vCPU's id.
    pub(crate) id: u32,
    /// SVM: the vCPU's ASID.
    pub(crate) asid: u32,
    /// The physical address of this state (computed by the Linux side).
    pub(crate) pa: u64,
}

impl VcpuState {
    /// The physical address of something inside this state.
    pub(crate) fn pa_of(&self, p: *const u8) -> u64 {
        self.pa + (p as u64 - core::ptr::from_ref(self) as u64)
    }
}

/// What to do after a guest exit.
pub(crate) enum Next {
    /// Enter the guest again.
    Resume,
    /// Return to Dom0; `VcpuState::exit` says why.
    ToDom0,
}

/// A vendor's view of the guest during an exit.
pub(crate) trait GuestVendor {
    /// The vCPU.
    fn vcpu(&mut self) -> &mut VcpuState;
    /// The vCPU, shared.
    fn vcpu_ref(&self) -> &VcpuState;
    /// RIP.
    fn rip(&self) -> u64;
    /// Sets RIP (and clears the STI/MOV SS interrupt shadow).
    fn set_rip(&mut self, rip: u64);
    /// The guest's CPL.
    fn cpl(&self) -> u8;
    /// CR0, CR3, CR4 and EFER as the guest sees them.
    fn control_regs(&self) -> (u64, u64, u64, u64);
    /// CS base and attributes (VMCB format).
    fn cs(&self) -> (u64, u16);
    /// Injects a hardware exception.
    fn inject(&mut self, vector: u8, error_code: Option<u32>);
    /// The length of the instruction that exited, if known.
    fn insn_len(&mut self) -> Option<u64>;
    /// Stores the guest's EFER (already checked; LMA as the processor has it).
    fn set_efer(&mut self, efer: u64);
    /// The guest's IA32_PAT.
    fn pat(&self) -> u64;
    /// Sets the guest's IA32_PAT.
    fn set_pat(&mut self, pat: u64);
}

/// EFER bits a guest may write: SCE, LME, LMA (ignored: the processor's), NXE.
const EFER_WRITABLE: u64 = (1 << 0) | EFER_LME | EFER_LMA | (1 << 11);

/// RDMSR/WRMSR of an MSR that exits: EFER and PAT live in the VMCS/VMCB; the TSC reads
/// through; anything else raises #GP, as on a CPU without it.
pub(crate) fn msr(g: &mut impl GuestVendor, write: bool) -> Next {
    let (cr0, _, _, efer) = g.control_regs();
    let regs = &g.vcpu_ref().regs.gpr;
    let index = regs[RCX] as u32;
    let value = (regs[RDX] << 32) | (regs[RAX] & 0xffff_ffff);
    let read = match (index, write) {
        (msr::EFER, false) => Some(efer),
        // LME may not change while paging is on.
        (msr::EFER, true)
            if value & !EFER_WRITABLE == 0
                && (cr0 & CR0_PG == 0 || (value ^ efer) & EFER_LME == 0) =>
        {
            g.set_efer((value & !EFER_LMA) | (efer & EFER_LMA));
            None
        }
        (msr::IA32_PAT, false) => Some(g.pat()),
        (msr::IA32_PAT, true) => {
            g.set_pat(value);
            None
        }
        (msr::IA32_TSC, false) => Some(x86::rdtsc()),
        _ => {
            g.inject(GP, Some(0));
            return Next::Resume;
        }
    };
    if let Some(value) = read {
        let regs = &mut g.vcpu().regs.gpr;
        regs[RAX] = value & 0xffff_ffff;
        regs[RDX] = value >> 32;
    }
    resume_after(g)
}

/// The guest's code-segment mode.
pub(crate) fn mode(g: &impl GuestVendor) -> Mode {
    let (_, _, _, efer) = g.control_regs();
    let (_, attrib) = g.cs();
    if efer & EFER_LMA != 0 && attrib & (1 << 9) != 0 {
        Mode::Bits64
    } else if attrib & (1 << 10) != 0 {
        Mode::Bits32
    } else {
        Mode::Bits16
    }
}

/// Reads guest memory at linear address `la` through the guest's paging (if on) and the
/// domain's map. Returns the bytes read.
pub(crate) fn read_linear(g: &impl GuestVendor, la: u64, buf: &mut [u8]) -> usize {
    let (cr0, cr3, cr4, efer) = g.control_regs();
    let dom = &g.vcpu_ref().domain;
    let mode = paging::PagingMode::from_control_registers(cr0, cr4, efer);
    paging::read_linear_in(
        mode,
        cr3,
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
pub(crate) fn fetch(g: &impl GuestVendor, buf: &mut [u8; insn::MAX_LEN]) -> usize {
    let (cs_base, _) = g.cs();
    let mut la = cs_base.wrapping_add(g.rip());
    if mode(g) != Mode::Bits64 {
        la &= 0xffff_ffff;
    }
    read_linear(g, la, buf)
}

/// Advances RIP past the instruction that exited; false if its length is unknown.
pub(crate) fn skip(g: &mut impl GuestVendor) -> bool {
    match g.insn_len() {
        Some(len) => {
            let rip = g.rip().wrapping_add(len);
            g.set_rip(rip);
            true
        }
        None => false,
    }
}

/// Ends the run with an exit for Dom0 (RIP as it is now).
fn to_dom0(g: &mut impl GuestVendor, exit: GuestExit) -> Next {
    let rip = g.rip();
    let v = g.vcpu();
    v.exit = exit;
    v.exit_rip = rip;
    Next::ToDom0
}

/// Ends the run with an exit Keel cannot handle.
pub(crate) fn unhandled(g: &mut impl GuestVendor, reason: u64, qualification: u64) -> Next {
    to_dom0(
        g,
        GuestExit::Unhandled {
            reason,
            qualification,
        },
    )
}

/// Finishes the instruction the previous exit left for Dom0, with Dom0's data.
pub(crate) fn complete_pending(g: &mut impl GuestVendor) {
    let v = g.vcpu();
    let completion = core::mem::take(&mut v.completion);
    let data = v.completion_data;
    let len = match completion {
        Completion::None => return,
        Completion::IoIn { size, len } => {
            let rax = &mut v.regs.gpr[RAX];
            *rax = match size {
                1 => (*rax & !0xff) | (data & 0xff),
                2 => (*rax & !0xffff) | (data & 0xffff),
                _ => data & 0xffff_ffff,
            };
            len
        }
        Completion::MmioRead(insn) => {
            let m = mode(g);
            let v = g.vcpu();
            mmio::complete_read(&mut v.regs.gpr, &insn, data, m);
            insn.len
        }
        Completion::Hypercall { len } => {
            v.regs.gpr[RAX] = data;
            len
        }
    };
    let rip = g.rip().wrapping_add(len.into());
    g.set_rip(rip);
}

/// CPUID: Dom0's view of the CPU (the extension hidden, Keel's leaves) with the OSXSAVE and
/// OSPKE bits following the guest's own CR4.
pub(crate) fn cpuid(g: &mut impl GuestVendor, vendor: crate::keel_core::caps::Vendor) -> Next {
    let (_, _, cr4, _) = g.control_regs();
    let v = g.vcpu();
    let id = v.domain.identity;
    let regs = &mut v.regs;
    let (leaf, sub) = (regs.gpr[RAX] as u32, regs.gpr[RCX] as u32);
    let mut r = cpuid::dom0(vendor, id, leaf, || x86::cpuid(leaf, sub));
    if leaf == 1 {
        // ECX.OSXSAVE (27) mirrors CR4.OSXSAVE; ECX.MONITOR (3): MONITOR/MWAIT are refused.
        r[2] &= !((1 << 27) | (1 << 3));
        if cr4 & x86::CR4_OSXSAVE != 0 {
            r[2] |= 1 << 27;
        }
    } else if leaf == 0xd && sub == 0 {
        // EDX:EAX: the XCR0 bits the guest may set (Dom0's; see `DomainView::xcr0_supported`).
        let supported = v.domain.xcr0_supported;
        r[0] &= supported as u32;
        r[3] &= (supported >> 32) as u32;
    } else if leaf == 7 && sub == 0 {
        // ECX.OSPKE (4) mirrors CR4.PKE (22).
        r[2] &= !(1 << 4);
        if cr4 & (1 << 22) != 0 {
            r[2] |= 1 << 4;
        }
    }
    regs.gpr[RAX] = r[0].into();
    regs.gpr[RBX] = r[1].into();
    regs.gpr[RCX] = r[2].into();
    regs.gpr[RDX] = r[3].into();
    resume_after(g)
}

/// Skips the instruction and resumes; an unknown length ends the run.
fn resume_after(g: &mut impl GuestVendor) -> Next {
    if skip(g) {
        Next::Resume
    } else {
        let rip = g.rip();
        unhandled(g, 0, rip)
    }
}

/// XSETBV: checked, then executed (the guest's XCR0 is live while it runs).
pub(crate) fn xsetbv(g: &mut impl GuestVendor, supported: u64) -> Next {
    let (_, _, cr4, _) = g.control_regs();
    let regs = &g.vcpu_ref().regs;
    let index = regs.gpr[RCX] as u32;
    let value = (regs.gpr[RDX] << 32) | (regs.gpr[RAX] & 0xffff_ffff);
    if cr4 & x86::CR4_OSXSAVE == 0 || supported == 0 {
        g.inject(UD, None);
    } else if g.cpl() != 0 || !xcr::xsetbv_valid(index, value, supported) {
        g.inject(GP, Some(0));
    } else {
        // SAFETY: The host's CR4.OSXSAVE is set (Keel only runs guests with XSAVE), and the
        // value is valid for this CPU. Dom0's XCR0 is restored at the end of the run.
        unsafe { x86::xsetbv(index, value) };
        g.vcpu().arch.xcr0 = value;
        return resume_after(g);
    }
    Next::Resume
}

/// Xen's hypercall numbers Keel handles itself.
const XEN_VERSION: u64 = 17;
/// xen_version's XENVER_version command.
const XENVER_VERSION: u64 = 0;
/// The Xen interface version Keel reports (4.19): the ABI DomUs are offered.
const XEN_VERSION_VALUE: u64 = (4 << 16) | 19;
/// -EPERM and -ENOSYS as Xen returns them.
const EPERM: u64 = (-1i64) as u64;
const ENOSYS: u64 = (-38i64) as u64;

/// A hypercall (VMCALL or VMMCALL, whichever the vendor), `len` bytes long. Xen's convention:
/// 64-bit callers pass the number in RAX and arguments in RDI, RSI, RDX, R10, R8; 32-bit
/// callers in EAX and EBX, ECX, EDX, ESI, EDI. Numbers Keel handles are answered here; the
/// others go to Dom0, which supplies the result.
pub(crate) fn hypercall(g: &mut impl GuestVendor, len: u8) -> Next {
    let long_mode = mode(g) == Mode::Bits64;
    let cpl = g.cpl();
    let regs = &mut g.vcpu().regs.gpr;
    if cpl != 0 {
        regs[RAX] = EPERM;
    } else {
        let (nr, args) = if long_mode {
            (regs[RAX], [regs[7], regs[6], regs[RDX], regs[10], regs[8]])
        } else {
            let r = |i: usize| regs[i] & 0xffff_ffff;
            (r(RAX), [r(RBX), r(RCX), r(RDX), r(6), r(7)])
        };
        match (nr, args[0]) {
            (XEN_VERSION, XENVER_VERSION) => regs[RAX] = XEN_VERSION_VALUE,
            (XEN_VERSION, _) => regs[RAX] = ENOSYS,
            _ => {
                let v = g.vcpu();
                v.completion = Completion::Hypercall { len };
                v.completion_data = 0;
                return to_dom0(
                    g,
                    GuestExit::Hypercall {
                        nr,
                        args,
                        long_mode,
                    },
                );
            }
        }
    }
    let rip = g.rip().wrapping_add(len.into());
    g.set_rip(rip);
    Next::Resume
}

/// The other vendor's hypercall instruction raised #UD (VMMCALL on Intel, VMCALL on AMD):
/// if the bytes at RIP are a VMCALL or VMMCALL, it is a hypercall; otherwise the #UD is the
/// guest's own and is delivered.
pub(crate) fn invalid_opcode(g: &mut impl GuestVendor) -> Next {
    let mut bytes = [0u8; insn::MAX_LEN];
    let n = fetch(g, &mut bytes);
    if n >= 3 && bytes[0] == 0x0f && bytes[1] == 0x01 && (bytes[2] == 0xc1 || bytes[2] == 0xd9) {
        return hypercall(g, 3);
    }
    g.inject(UD, None);
    Next::Resume
}

/// IN/OUT (not the string forms): OUT is complete when Dom0 sees it; IN completes at the
/// next run with Dom0's data. `len` is the instruction's length.
pub(crate) fn io(g: &mut impl GuestVendor, port: u16, size: u8, input: bool, len: u8) -> Next {
    let mask = if size >= 4 {
        0xffff_ffff
    } else {
        (1u64 << (size * 8)) - 1
    };
    let rip = g.rip();
    let v = g.vcpu();
    let data = if input { 0 } else { v.regs.gpr[RAX] & mask };
    v.exit = GuestExit::Io {
        port,
        size,
        input,
        data,
    };
    v.exit_rip = rip;
    if input {
        v.completion = Completion::IoIn { size, len };
        v.completion_data = 0;
    } else {
        g.set_rip(rip.wrapping_add(len.into()));
    }
    Next::ToDom0
}

/// HLT: the guest has nothing to do until an event, and Keel delivers none yet.
pub(crate) fn hlt(g: &mut impl GuestVendor) -> Next {
    let rip = g.rip();
    if !skip(g) {
        return unhandled(g, 0, rip);
    }
    let v = g.vcpu();
    v.exit = GuestExit::Hlt;
    v.exit_rip = rip;
    Next::ToDom0
}

/// A second-level fault at `gpa` (access bits: read 1, write 2, exec 4): an MMIO access comes
/// out decoded; anything else is a memory fault.
pub(crate) fn slat_fault(g: &mut impl GuestVendor, gpa: u64, access: u32) -> Next {
    let kind = g
        .vcpu_ref()
        .domain
        .range_of(gpa)
        .map_or(RangeKind::None, |r| r.kind);
    if kind != RangeKind::Mmio || access & 4 != 0 {
        return to_dom0(g, GuestExit::MemoryFault { gpa, access });
    }
    let mut bytes = [0u8; insn::MAX_LEN];
    let n = fetch(g, &mut bytes);
    let m = mode(g);
    let Ok(insn) = mmio::decode(&bytes[..n], m) else {
        let rip = g.rip();
        return unhandled(g, 0, rip);
    };
    let rip = g.rip();
    match insn.op {
        MmioOp::Write { .. } => {
            let data = mmio::write_data(&g.vcpu_ref().regs.gpr, &insn);
            g.set_rip(rip.wrapping_add(insn.len.into()));
            let v = g.vcpu();
            v.exit = GuestExit::Mmio {
                gpa,
                size: insn.size,
                read: false,
                data,
            };
            v.exit_rip = rip;
        }
        MmioOp::Read { .. } => {
            let v = g.vcpu();
            v.exit = GuestExit::Mmio {
                gpa,
                size: insn.size,
                read: true,
                data: 0,
            };
            v.exit_rip = rip;
            v.completion = Completion::MmioRead(insn);
            v.completion_data = 0;
        }
    }
    Next::ToDom0
}

/// Triple fault / shutdown.
pub(crate) fn shutdown(g: &mut impl GuestVendor) -> Next {
    to_dom0(g, GuestExit::Shutdown)
}

/// Saves Dom0's FPU state and loads the guest's (`xcr0_host` is Dom0's XCR0). With XSAVE
/// (CR4.OSXSAVE) every component Dom0's XCR0 enables moves, whatever the guest's XCR0 (a
/// guest with XCR0 = x87 still has XMM registers of its own), and the guest's XCR0 is loaded
/// last; without XSAVE, the x87/SSE state moves (FXSAVE).
///
/// # Safety
///
/// The areas are 64-byte aligned and large enough for every enabled feature (the Linux side
/// checked CPUID 0xD at vCPU creation).
pub(crate) unsafe fn fpu_enter(v: &mut VcpuState, xcr0_host: u64) {
    let host = v.host_fpu.as_mut_ptr().cast::<u8>();
    let guest = v.guest_fpu.as_ptr().cast::<u8>();
    // SAFETY: The caller's contract; XSAVE/XRSTOR with all-ones masks move the components
    // XCR0 enables, and the guest's XCR0 was validated when it was set.
    unsafe {
        if v.domain.xcr0_supported == 0 {
            core::arch::asm!("fxsave64 [{}]", in(reg) host, options(nostack));
            core::arch::asm!("fxrstor64 [{}]", in(reg) guest, options(nostack));
            return;
        }
        core::arch::asm!("xsave64 [{}]", in(reg) host, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        core::arch::asm!("xrstor64 [{}]", in(reg) guest, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        if v.arch.xcr0 != xcr0_host {
            x86::xsetbv(0, v.arch.xcr0);
        }
    }
}

/// Saves the guest's FPU state and gives Dom0 back its own: Dom0's XCR0 first, so that the
/// save covers the same components as [`fpu_enter`]'s restore.
///
/// # Safety
///
/// As for [`fpu_enter`], which ran before on this CPU for this vCPU.
pub(crate) unsafe fn fpu_leave(v: &mut VcpuState, xcr0_host: u64) {
    let host = v.host_fpu.as_ptr().cast::<u8>();
    let guest = v.guest_fpu.as_mut_ptr().cast::<u8>();
    // SAFETY: As in `fpu_enter`.
    unsafe {
        if v.domain.xcr0_supported == 0 {
            core::arch::asm!("fxsave64 [{}]", in(reg) guest, options(nostack));
            core::arch::asm!("fxrstor64 [{}]", in(reg) host, options(nostack));
            return;
        }
        if v.arch.xcr0 != xcr0_host {
            x86::xsetbv(0, xcr0_host);
        }
        core::arch::asm!("xsave64 [{}]", in(reg) guest, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        core::arch::asm!("xrstor64 [{}]", in(reg) host, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
    }
}

/// Dom0's XCR0, or 0 without XSAVE.
pub(crate) fn host_xcr0(v: &VcpuState) -> u64 {
    if v.domain.xcr0_supported == 0 {
        0
    } else {
        x86::xgetbv0()
    }
}
