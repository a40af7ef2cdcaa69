// SPDX-License-Identifier: GPL-2.0
//! Thin wrappers over the x86 instructions Keel needs, for both sides of the root-mode
//! boundary: they are single instructions and call nothing in Linux.
//!
//! Instructions that only read state are safe functions; those that change it are `unsafe fn`
//! whose callers vouch for the new state.

use core::arch::asm;

/// CPUID leaf `leaf`, subleaf `subleaf`: EAX, EBX, ECX, EDX.
pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// Reads MSR `index`.
///
/// # Safety
///
/// The MSR must exist on this CPU; reading a missing MSR raises #GP.
pub(crate) unsafe fn rdmsr(index: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: The caller guarantees the MSR exists; RDMSR only writes EAX:EDX.
    unsafe {
        asm!("rdmsr", in("ecx") index, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes MSR `index`.
///
/// # Safety
///
/// The MSR must exist, `value` must be valid for it, and the change must not break the
/// invariants of whoever owns the MSR (Linux or Keel).
pub(crate) unsafe fn wrmsr(index: u32, value: u64) {
    // SAFETY: The caller vouches for the MSR and the value.
    unsafe {
        asm!("wrmsr", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, preserves_flags))
    };
}

macro_rules! read_reg {
    ($(#[$doc:meta] $name:ident = $insn:literal;)*) => {$(
        #[$doc]
        pub(crate) fn $name() -> u64 {
            let v: u64;
            // SAFETY: Reading this register at CPL0 has no side effects, and Keel's code
            // only runs at CPL0 (module and root mode alike).
            unsafe { asm!($insn, out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    )*};
}

read_reg! {
    /// CR0.
    read_cr0 = "mov {}, cr0";
    /// CR2.
    read_cr2 = "mov {}, cr2";
    /// CR3.
    read_cr3 = "mov {}, cr3";
    /// CR4.
    read_cr4 = "mov {}, cr4";
    /// DR6.
    read_dr6 = "mov {}, dr6";
    /// DR7.
    read_dr7 = "mov {}, dr7";
}

/// DR0-DR3, the breakpoint addresses: no VM entry or exit switches them.
pub(crate) fn read_dr0_3() -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    // SAFETY: Reading debug registers at CPL0 has no side effects.
    unsafe {
        asm!("mov {}, dr0", "mov {}, dr1", "mov {}, dr2", "mov {}, dr3",
             out(reg) a, out(reg) b, out(reg) c, out(reg) d,
             options(nomem, nostack, preserves_flags));
    }
    [a, b, c, d]
}

/// Writes DR0-DR3.
///
/// # Safety
///
/// DR7 must not enable a breakpoint that the new addresses would make fire in this context
/// (root mode runs with DR7's breakpoints off: VM exits clear them).
pub(crate) unsafe fn write_dr0_3(v: &[u64; 4]) {
    // SAFETY: The caller's contract.
    unsafe {
        asm!("mov dr0, {}", "mov dr1, {}", "mov dr2, {}", "mov dr3, {}",
             in(reg) v[0], in(reg) v[1], in(reg) v[2], in(reg) v[3],
             options(nomem, nostack, preserves_flags));
    }
}

/// Writes DR6.
///
/// # Safety
///
/// Only restores a value DR6 held (Linux reads it in its #DB handler).
pub(crate) unsafe fn write_dr6(v: u64) {
    // SAFETY: The caller vouches for the value.
    unsafe { asm!("mov dr6, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// Writes DR7.
///
/// # Safety
///
/// Only restores the value DR7 held in Dom0 (its breakpoints' addresses in DR0-DR3).
pub(crate) unsafe fn write_dr7(v: u64) {
    // SAFETY: The caller vouches for the value.
    unsafe { asm!("mov dr7, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// Loads LDTR with `selector` (0: no LDT).
///
/// # Safety
///
/// `selector` is null or an LDT descriptor's in the current GDT, the one Dom0 had loaded.
pub(crate) unsafe fn lldt(selector: u16) {
    // SAFETY: The caller vouches for the selector.
    unsafe { asm!("lldt {0:x}", in(reg) selector, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
///
/// The new value must be valid and consistent with Linux's view of CR4 on this CPU.
pub(crate) unsafe fn write_cr4(v: u64) {
    // SAFETY: The caller vouches for the value.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// Writes CR2.
///
/// # Safety
///
/// Only restores a value CR2 held: nothing else depends on it.
pub(crate) unsafe fn write_cr2(v: u64) {
    // SAFETY: The caller vouches for the value.
    unsafe { asm!("mov cr2, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// RFLAGS.
pub(crate) fn read_rflags() -> u64 {
    let v: u64;
    // SAFETY: PUSHF/POP only touches the stack slot it allocates.
    unsafe { asm!("pushfq", "pop {}", out(reg) v, options(nomem, preserves_flags)) };
    v
}

/// Disables interrupts and returns the previous RFLAGS, for [`irq_restore`].
pub(crate) fn irq_save() -> u64 {
    let flags = read_rflags();
    // SAFETY: Disabling interrupts is always sound; the caller restores them.
    unsafe { asm!("cli", options(nomem, nostack)) };
    flags
}

/// Re-enables interrupts if `flags` (from [`irq_save`]) had them enabled.
pub(crate) fn irq_restore(flags: u64) {
    if flags & crate::keel_core::arch::rflags::IF != 0 {
        // SAFETY: Interrupts were enabled when `irq_save` returned `flags`.
        unsafe { asm!("sti", options(nomem, nostack)) };
    }
}

/// A GDTR or IDTR value, in SGDT/SIDT's memory format.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
pub(crate) struct DescTable {
    pub(crate) limit: u16,
    pub(crate) base: u64,
}

/// The GDTR.
pub(crate) fn sgdt() -> DescTable {
    let mut t = DescTable::default();
    // SAFETY: SGDT writes 10 bytes to `t`, which is 10 bytes long.
    unsafe { asm!("sgdt [{}]", in(reg) &raw mut t, options(nostack, preserves_flags)) };
    t
}

/// The IDTR.
pub(crate) fn sidt() -> DescTable {
    let mut t = DescTable::default();
    // SAFETY: SIDT writes 10 bytes to `t`, which is 10 bytes long.
    unsafe { asm!("sidt [{}]", in(reg) &raw mut t, options(nostack, preserves_flags)) };
    t
}

/// Loads the GDTR.
///
/// # Safety
///
/// `t` must describe a valid GDT that stays mapped while it is loaded, with the selectors in
/// use at the same places.
pub(crate) unsafe fn lgdt(t: &DescTable) {
    // SAFETY: The caller vouches for the table.
    unsafe { asm!("lgdt [{}]", in(reg) t, options(readonly, nostack, preserves_flags)) };
}

/// Loads the IDTR.
///
/// # Safety
///
/// `t` must describe a valid IDT that stays mapped while it is loaded.
pub(crate) unsafe fn lidt(t: &DescTable) {
    // SAFETY: The caller vouches for the table.
    unsafe { asm!("lidt [{}]", in(reg) t, options(readonly, nostack, preserves_flags)) };
}

macro_rules! read_sel {
    ($(#[$doc:meta] $name:ident = $insn:literal;)*) => {$(
        #[$doc]
        pub(crate) fn $name() -> u16 {
            let v: u16;
            // SAFETY: Reading a selector has no side effects.
            unsafe { asm!($insn, out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    )*};
}

read_sel! {
    /// CS.
    read_cs = "mov {0:x}, cs";
    /// SS.
    read_ss = "mov {0:x}, ss";
    /// DS.
    read_ds = "mov {0:x}, ds";
    /// ES.
    read_es = "mov {0:x}, es";
    /// FS.
    read_fs = "mov {0:x}, fs";
    /// GS.
    read_gs = "mov {0:x}, gs";
    /// TR.
    read_tr = "str {0:x}";
    /// LDTR.
    read_ldtr = "sldt {0:x}";
}

/// The access rights of the descriptor `sel` names (LAR), or `None` if it is null or invalid.
pub(crate) fn lar(sel: u16) -> Option<u32> {
    let v: u32;
    let ok: u8;
    // SAFETY: LAR only reads the descriptor table; an invalid selector clears ZF, no fault.
    unsafe {
        asm!("lar {0:e}, {1:e}", "setz {2}", out(reg) v, in(reg) u32::from(sel), out(reg_byte) ok,
             options(nostack))
    };
    (ok != 0).then_some(v)
}

/// The byte-granular limit of the segment `sel` names (LSL), or 0 if it is null or invalid.
pub(crate) fn lsl(sel: u16) -> u32 {
    let v: u32;
    let ok: u8;
    // SAFETY: LSL only reads the descriptor table; an invalid selector clears ZF, no fault.
    unsafe {
        asm!("lsl {0:e}, {1:e}", "setz {2}", out(reg) v, in(reg) u32::from(sel), out(reg_byte) ok,
             options(nostack))
    };
    if ok != 0 {
        v
    } else {
        0
    }
}

/// The base of a system segment (TSS or LDT: 16-byte descriptors in 64-bit mode) in the GDT.
///
/// # Safety
///
/// `gdt` must be the current GDTR and `sel` a valid system-descriptor selector within it.
pub(crate) unsafe fn system_segment_base(gdt: &DescTable, sel: u16) -> u64 {
    let desc = (gdt.base + u64::from(sel & !7)) as *const u64;
    // SAFETY: The caller guarantees both 8-byte halves of the descriptor are in the GDT, which
    // is mapped while loaded.
    let (lo, hi) = unsafe { (desc.read_volatile(), desc.add(1).read_volatile()) };
    ((lo >> 16) & 0xff_ffff) | (((lo >> 56) & 0xff) << 24) | ((hi & 0xffff_ffff) << 32)
}

/// Writes an extended control register.
///
/// # Safety
///
/// CR4.OSXSAVE must be set and the value valid (`keel_core::xcr::xsetbv_valid`).
pub(crate) unsafe fn xsetbv(index: u32, value: u64) {
    // SAFETY: The caller vouches for the value.
    unsafe {
        asm!("xsetbv", in("ecx") index, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nomem, nostack, preserves_flags))
    };
}

/// Writes back and invalidates the caches (what Keel does for Dom0's INVD: dropping dirty
/// lines would lose data that is not Dom0's alone).
pub(crate) fn wbinvd() {
    // SAFETY: WBINVD has no effect on program state.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) };
}

/// Port I/O for root mode's serial mirror ([`crate::keel_core::uart`]).
pub(crate) struct Ports;

impl crate::keel_core::uart::PortIo for Ports {
    fn inb(&mut self, port: u16) -> u8 {
        let v: u8;
        // SAFETY: Only the UART named by the `log_port` parameter is read, which the user
        // vouched for; reading its line status register changes nothing.
        unsafe {
            asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags))
        };
        v
    }
    fn outb(&mut self, port: u16, value: u8) {
        // SAFETY: As for `inb`: a byte into the UART's transmit register only sends it.
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
        };
    }
}

/// Reads the time-stamp counter.
pub(crate) fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the counter (CR4.TSD does not apply at CPL 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads XCR0.
pub(crate) fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 is valid whenever CR4.OSXSAVE is set, which Keel requires before
    // running guests (the module checks it).
    unsafe {
        asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}
