// SPDX-License-Identifier: GPL-2.0
//! Root mode: the code that runs beneath Dom0.
//!
//! Everything in this folder may run in VMX root mode or, on AMD, between #VMEXIT and VMRUN
//! with the global interrupt flag clear. It can interrupt Linux anywhere, holding any lock, so
//! it calls nothing in Linux: no printk, no allocation, no Linux locks, no sleeping. It works
//! on the per-CPU [`CpuState`] the module allocated before the launch, logs into that CPU's
//! lock-free ring (drained into the kernel log by Dom0), and counts exits per kind.
//!
//! The launch itself (filling the VMCS/VMCB from the running CPU's state) also lives here: it
//! runs in Dom0 with interrupts off and calls nothing in Linux either.
//!
//! The map: `exit.rs` is the exit pipeline (one `match` over the decoded exit), `hal.rs` the
//! one hardware trait it works through, `dom0.rs` and `vcpu.rs` the Dom0 and DomU policies,
//! `domain.rs` what a domain's vCPUs share, `fpu.rs` the FPU switch, `vmx/` and `svm/` the
//! vendors, `x86.rs` the instructions. This file holds the per-CPU state and the trampolines'
//! common parts. A check in the test command (`scripts/check-root`) fails when a file here
//! names Linux.

pub(crate) mod dom0;
pub(crate) mod domain;
pub(crate) mod exit;
pub(crate) mod fpu;
pub(crate) mod hal;
pub(crate) mod svm;
pub(crate) mod vcpu;
pub(crate) mod vmx;
pub(crate) mod x86;

use core::sync::atomic::{AtomicBool, AtomicU64};

use crate::keel_core::{
    caps::Vendor,
    cpuid::Identity,
    exit::EXIT_KINDS,
    logring::{Level, LogRing},
};

/// Bytes of each CPU's root-mode stack.
pub(crate) const STACK_SIZE: usize = 16384;
/// Records in each CPU's log ring.
pub(crate) const LOG_RECORDS: usize = 32;

/// One 4 KiB page.
#[repr(C, align(4096))]
pub(crate) struct Page(pub(crate) [u8; 4096]);

/// The guest's general-purpose registers while root mode runs, indexed by their encoding
/// (0 = RAX, 1 = RCX, 2 = RDX, 3 = RBX, 4 = RSP (unused: RSP lives in the VMCS/VMCB),
/// 5 = RBP, 6 = RSI, 7 = RDI, 8..15 = R8..R15).
#[repr(C)]
pub(crate) struct GuestRegs {
    pub(crate) gpr: [u64; 16],
}

/// Register numbers.
pub(crate) const RAX: usize = 0;
/// RCX.
pub(crate) const RCX: usize = 1;
/// RDX.
pub(crate) const RDX: usize = 2;
/// RBX.
pub(crate) const RBX: usize = 3;
/// RDI.
pub(crate) const RDI: usize = 7;

/// The frame at the top of each root-mode stack: where the exit trampolines save the guest's
/// registers, and what they need to find without any other register.
#[repr(C)]
pub(crate) struct HostFrame {
    /// The guest's registers, saved on exit and restored on entry.
    pub(crate) regs: GuestRegs,
    /// The CPU's state (which contains this frame).
    pub(crate) state: *mut CpuState,
    /// SVM: the physical address of the VMCB.
    pub(crate) vmcb_pa: u64,
    /// When leaving: Dom0's RSP, pointing at the RFLAGS and RIP to resume with.
    pub(crate) leave_rsp: u64,
    /// When leaving: Dom0's CR3.
    pub(crate) leave_cr3: u64,
    /// The launch point (RSP, RIP, CR3), to return to when the first entry fails: the
    /// hardware may have overwritten the VMCB's copy by then.
    pub(crate) launch_rsp: u64,
    /// See `launch_rsp`.
    pub(crate) launch_rip: u64,
    /// See `launch_rsp`.
    pub(crate) launch_cr3: u64,
    _pad: u64,
}

const _: () = assert!(core::mem::size_of::<HostFrame>() % 16 == 0);

/// Assembly text for the trampolines: loads the guest's GPRs but RAX and RSP from the
/// [`HostFrame`] at RSP (`regs.gpr[n]` is at `n * 8`, the frame starts with `regs`).
macro_rules! load_gprs_but_rax {
    () => {
        "mov rcx, [rsp + 0x08]\nmov rdx, [rsp + 0x10]\nmov rbx, [rsp + 0x18]\nmov rbp, [rsp + 0x28]\nmov rsi, [rsp + 0x30]\nmov rdi, [rsp + 0x38]\nmov r8, [rsp + 0x40]\nmov r9, [rsp + 0x48]\nmov r10, [rsp + 0x50]\nmov r11, [rsp + 0x58]\nmov r12, [rsp + 0x60]\nmov r13, [rsp + 0x68]\nmov r14, [rsp + 0x70]\nmov r15, [rsp + 0x78]"
    };
}
pub(crate) use load_gprs_but_rax;

/// Assembly text: saves the guest's GPRs but RAX and RSP into the [`HostFrame`] at RSP.
macro_rules! save_gprs_but_rax {
    () => {
        "mov [rsp + 0x08], rcx\nmov [rsp + 0x10], rdx\nmov [rsp + 0x18], rbx\nmov [rsp + 0x28], rbp\nmov [rsp + 0x30], rsi\nmov [rsp + 0x38], rdi\nmov [rsp + 0x40], r8\nmov [rsp + 0x48], r9\nmov [rsp + 0x50], r10\nmov [rsp + 0x58], r11\nmov [rsp + 0x60], r12\nmov [rsp + 0x68], r13\nmov [rsp + 0x70], r14\nmov [rsp + 0x78], r15"
    };
}
pub(crate) use save_gprs_but_rax;

const _: () = assert!(core::mem::offset_of!(HostFrame, regs) == 0);

/// Assembly text for the guest-run trampolines: loads a guest's GPRs but RAX and RSP from the
/// [`GuestRegs`] at RAX (`gpr[n]` is at `n * 8`); RAX last, by the caller.
macro_rules! load_gprs_from_rax {
    () => {
        "mov rcx, [rax + 0x08]\nmov rdx, [rax + 0x10]\nmov rbx, [rax + 0x18]\nmov rbp, [rax + 0x28]\nmov rsi, [rax + 0x30]\nmov rdi, [rax + 0x38]\nmov r8, [rax + 0x40]\nmov r9, [rax + 0x48]\nmov r10, [rax + 0x50]\nmov r11, [rax + 0x58]\nmov r12, [rax + 0x60]\nmov r13, [rax + 0x68]\nmov r14, [rax + 0x70]\nmov r15, [rax + 0x78]"
    };
}
pub(crate) use load_gprs_from_rax;

/// Assembly text: saves a guest's GPRs but RAX and RSP into the [`GuestRegs`] at RAX.
macro_rules! save_gprs_to_rax {
    () => {
        "mov [rax + 0x08], rcx\nmov [rax + 0x10], rdx\nmov [rax + 0x18], rbx\nmov [rax + 0x28], rbp\nmov [rax + 0x30], rsi\nmov [rax + 0x38], rdi\nmov [rax + 0x40], r8\nmov [rax + 0x48], r9\nmov [rax + 0x50], r10\nmov [rax + 0x58], r11\nmov [rax + 0x60], r12\nmov [rax + 0x68], r13\nmov [rax + 0x70], r14\nmov [rax + 0x78], r15"
    };
}
pub(crate) use save_gprs_to_rax;

/// Assembly text: the trampolines' prologue, which saves the callee-saved GPRs.
macro_rules! push_callee_saved {
    () => {
        "push rbp\npush rbx\npush r12\npush r13\npush r14\npush r15"
    };
}
pub(crate) use push_callee_saved;

/// Assembly text: restores what [`push_callee_saved`] saved, and returns.
macro_rules! pop_callee_saved_ret {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop rbx\npop rbp\nret"
    };
}
pub(crate) use pop_callee_saved_ret;

/// Assembly text: clears the caller-saved GPRs a guest left values in, and restores the
/// callee-saved ones a guest-run trampoline pushed, before its `ret`.
macro_rules! guest_run_epilogue {
    () => {
        concat!(
            "xor ecx, ecx\nxor edx, edx\nxor esi, esi\nxor edi, edi\nxor r8d, r8d\n",
            "xor r9d, r9d\nxor r10d, r10d\nxor r11d, r11d\n",
            pop_callee_saved_ret!()
        )
    };
}
pub(crate) use guest_run_epilogue;

/// Assembly text: tells objtool not to check this function's stack frame (Linux's
/// `STACK_FRAME_NON_STANDARD`): the trampolines switch stacks and jump between each other,
/// which its frame checks cannot follow. The function is passed as the `this` operand.
macro_rules! objtool_frame_non_standard {
    () => {
        ".pushsection .discard.func_stack_frame_non_standard, \"aw\"\n.quad {this}\n.popsection"
    };
}
pub(crate) use objtool_frame_non_standard;

/// Dom0's view of the state Keel owns on this CPU (SVM; VMX keeps its view in the VMCS).
#[derive(Default)]
pub(crate) struct Dom0View {
    /// EFER.SVME as Dom0 last wrote it (hardware keeps it set).
    pub(crate) efer_svme: bool,
    /// VM_HSAVE_PA as Dom0 last wrote it (hardware points at Keel's area).
    pub(crate) hsave_pa: u64,
}

/// What the rest of the module and root mode share about one CPU.
pub(crate) struct CpuInfo {
    /// Linux's CPU number.
    pub(crate) cpu: u32,
    /// The vendor.
    pub(crate) vendor: Vendor,
    /// What Keel's CPUID leaves report.
    pub(crate) identity: Identity,
    /// Linux's direct-map offset: root mode reads physical memory at this + address.
    pub(crate) page_offset_base: u64,
    /// SVM saves the next RIP (otherwise root mode decodes instruction lengths).
    pub(crate) nrip_save: bool,
    /// XCR0 bits the CPU supports.
    pub(crate) xcr0_supported: u64,
    /// The CPU runs beneath Keel.
    pub(crate) launched: AtomicBool,
    /// Exits per kind.
    pub(crate) counters: [AtomicU64; EXIT_KINDS],
    /// Root mode's log.
    pub(crate) log: LogRing<LOG_RECORDS>,
    /// The UART that error records are also written to (the `log_port` parameter), or 0.
    pub(crate) log_port: u16,
}

impl CpuInfo {
    /// Logs a record into this CPU's ring; an error also goes to the `log_port` UART, if any,
    /// so it is seen even when Dom0 never drains the ring (see `keel_core::uart`).
    pub(crate) fn log(&self, level: Level, args: core::fmt::Arguments<'_>) {
        self.log.write(level, args);
        if level == Level::Err && self.log_port != 0 {
            crate::keel_core::uart::Uart::new(x86::Ports, self.log_port).line(args);
        }
    }
}

/// Everything one CPU needs beneath Dom0, in one physically contiguous allocation.
#[repr(C, align(4096))]
pub(crate) struct CpuState {
    /// VMX: the VMXON region. SVM: the host-save area.
    pub(crate) region: Page,
    /// VMX: the VMCS. SVM: the VMCB.
    pub(crate) control: Page,
    /// VMX: the MSR bitmap (first page). SVM: the MSR permission map (both pages).
    pub(crate) msr_map: [Page; 2],
    /// VMX: root mode's IDT, Linux's but for the NMI gate (see `vmx.rs`).
    pub(crate) idt: Page,
    /// The root-mode stack; it grows down from `frame`.
    pub(crate) stack: [u8; STACK_SIZE],
    /// The trampolines' frame, at the top of the stack.
    pub(crate) frame: HostFrame,
    /// Dom0's view of the state Keel owns.
    pub(crate) view: Dom0View,
    /// VMX: an NMI arrived in root mode (or ended a guest's turn) and is Dom0's: it is
    /// injected at Dom0's next entry that can take it.
    pub(crate) nmi_pending: AtomicBool,
    /// What the module and root mode share.
    pub(crate) info: CpuInfo,
}

// SAFETY: The raw pointer in `frame` points at the `CpuState` that contains it; the state is
// moved between threads only as a whole (in its box), and root mode and Dom0 share only the
// atomics and the log ring of `info`, which are `Sync`.
unsafe impl Send for CpuState {}

/// Logs into a CPU's root-mode ring: `rlog!(info, Warn, "...", args)`.
macro_rules! rlog {
    ($info:expr, $level:ident, $($arg:tt)*) => {
        $info.log($crate::keel_core::logring::Level::$level, format_args!($($arg)*))
    };
}
pub(crate) use rlog;

/// Logs the guest's registers (part of every dump).
pub(crate) fn dump_regs(info: &CpuInfo, regs: &GuestRegs) {
    let g = &regs.gpr;
    rlog!(
        info,
        Err,
        " rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x}",
        g[0],
        g[3],
        g[1],
        g[2]
    );
    rlog!(
        info,
        Err,
        " rsi={:#x} rdi={:#x} rbp={:#x} r8={:#x}",
        g[6],
        g[7],
        g[5],
        g[8]
    );
    rlog!(
        info,
        Err,
        " r9={:#x} r10={:#x} r11={:#x} r12={:#x}",
        g[9],
        g[10],
        g[11],
        g[12]
    );
    rlog!(
        info,
        Err,
        " r13={:#x} r14={:#x} r15={:#x}",
        g[13],
        g[14],
        g[15]
    );
}

/// Parks this CPU for good after Dom0 became unrunnable on it (a triple fault or a failed
/// entry): there is nothing to return to. NMIs stay blocked; the log says why.
pub(crate) fn park() -> ! {
    loop {
        // SAFETY: HLT with interrupts disabled stops this CPU; nothing else is affected.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Prepares the jump back into Dom0 on bare metal: pushes RFLAGS and RIP on Dom0's stack for
/// [`root_leave`]'s POPFQ/RET and records Dom0's RSP and CR3 in the frame.
pub(crate) fn push_return(frame: &mut HostFrame, rsp: u64, rip: u64, rflags: u64, cr3: u64) {
    let slot = (rsp - 16) as *mut u64;
    // SAFETY: Only Dom0's kernel (CPL 0) makes the Leave call, from the module, on a kernel
    // stack: it is mapped in every page table (root mode's included), and the kernel uses no
    // red zone, so the 16 bytes below its RSP are free.
    unsafe {
        slot.write(rflags);
        slot.add(1).write(rip);
    }
    frame.leave_rsp = rsp - 16;
    frame.leave_cr3 = cr3;
}

/// The common tail of leaving: the vendor code has turned VMX/SVM off and restored Dom0's
/// system state, and RSP points at this CPU's [`HostFrame`]. Loads Dom0's CR3 and GPRs from
/// the frame, switches to Dom0's stack and returns into Dom0 through the RFLAGS and RIP that
/// [`push_return`] put there.
///
/// # Safety
///
/// Jumped to (never called) by the exit trampolines, with RSP at the frame and VMX/SVM off.
#[unsafe(naked)]
pub(crate) unsafe extern "C" fn root_leave() {
    core::arch::naked_asm!(
        objtool_frame_non_standard!(),
        "mov rax, [rsp + {cr3}]",
        "mov cr3, rax",
        "mov rax, [rsp + 0x00]",
        load_gprs_but_rax!(),
        "mov rsp, [rsp + {rsp}]",
        "popfq",
        "ret",
        cr3 = const core::mem::offset_of!(HostFrame, leave_cr3),
        rsp = const core::mem::offset_of!(HostFrame, leave_rsp),
        this = sym root_leave,
    )
}
