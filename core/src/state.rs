//! The rules a vCPU's state follows: what `KEEL_VCPU_SET_SREGS`/`SET_REGS` accept
//! ([`check`]), and the #GP rules of the instructions through which a guest changes its own
//! control registers and EFER ([`mov_cr0`], [`mov_cr4`], [`wrmsr_efer`]).
//!
//! Keel enters only states that pass these checks, on both vendors, whatever the hardware or
//! an emulator would let through: a state one vendor refuses at entry is refused for both, and
//! a state an emulator mishandles never reaches it. The rules are the union of the SDM's
//! checks on guest state at VM entry (Vol. 3C, 27.3.1, with unrestricted guest) and the APM's
//! VMRUN consistency checks (Vol. 2, 15.5.1), with the architectural combinations of CR0, CR4
//! and EFER that MOV to CR and WRMSR enforce (SDM Vol. 3A 2.5 and 10.8.5; Vol. 2B, MOV CR).
//! KVM's `kvm_is_valid_sregs`, `kvm_set_cr0`/`cr4` and `nested_vmcb_valid_sregs` list the same.

use super::arch::{cr0, cr4, efer};
use super::vmcb::VmcbSeg;

/// CR4 bits Keel lets a guest set when the CPU has the feature (the rest: VMXE and SMXE,
/// which Keel hides, and features whose state Keel does not switch, such as CET, PKS, UINTR
/// and key locker).
pub mod cr4_bits {
    /// VME, PVI, TSD, DE, PSE, PAE, MCE, PGE, PCE, OSFXSR, OSXMMEXCPT: every x86-64 CPU.
    pub const BASE: u64 = 0x7ff;
    /// UMIP (CPUID.7.0:ECX[2]).
    pub const UMIP: u64 = 1 << 11;
    /// LA57 (CPUID.7.0:ECX[16]).
    pub const LA57: u64 = 1 << 12;
    /// FSGSBASE (CPUID.7.0:EBX[0]).
    pub const FSGSBASE: u64 = 1 << 16;
    /// PCIDE (CPUID.1:ECX[17]).
    pub const PCIDE: u64 = 1 << 17;
    /// OSXSAVE (CPUID.1:ECX[26]).
    pub const OSXSAVE: u64 = 1 << 18;
    /// SMEP (CPUID.7.0:EBX[7]).
    pub const SMEP: u64 = 1 << 20;
    /// SMAP (CPUID.7.0:EBX[20]).
    pub const SMAP: u64 = 1 << 21;
    /// PKE (CPUID.7.0:ECX[3]).
    pub const PKE: u64 = 1 << 22;
}

/// The CR4 bits a guest may set on a CPU with these CPUID leaves (`cpuid(leaf, subleaf)`).
pub fn cr4_supported(cpuid: impl Fn(u32, u32) -> [u32; 4]) -> u64 {
    use cr4_bits::*;
    let max = cpuid(0, 0)[0];
    let [_, _, ecx1, _] = cpuid(1, 0);
    let [_, ebx7, ecx7, _] = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
    let has = |reg: u32, bit: u32| reg & (1 << bit) != 0;
    let mut bits = BASE;
    for (present, bit) in [
        (has(ecx7, 2), UMIP),
        (has(ecx7, 16), LA57),
        (has(ebx7, 0), FSGSBASE),
        (has(ecx1, 17), PCIDE),
        (has(ecx1, 26), OSXSAVE),
        (has(ebx7, 7), SMEP),
        (has(ebx7, 20), SMAP),
        (has(ecx7, 3), PKE),
    ] {
        if present {
            bits |= bit;
        }
    }
    bits
}

/// What the CPU allows, for the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The CR4 bits a guest may set (see [`cr4_supported`]).
    pub cr4: u64,
    /// The physical-address width (MAXPHYADDR, CPUID.8000_0008h:EAX[7:0]).
    pub phys_bits: u8,
}

/// CR0, CR3, CR4 and EFER.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ctl {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

/// The parts of a vCPU's state the checks read.
#[derive(Clone, Copy, Debug, Default)]
pub struct State {
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// The control registers and EFER.
    pub ctl: Ctl,
    /// CS.
    pub cs: VmcbSeg,
    /// SS.
    pub ss: VmcbSeg,
    /// DS, ES, FS, GS.
    pub data: [VmcbSeg; 4],
    /// TR.
    pub tr: VmcbSeg,
    /// LDTR.
    pub ldt: VmcbSeg,
    /// GDTR and IDTR bases.
    pub table_bases: [u64; 2],
}

/// A segment register, in [`Invalid::Segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seg {
    /// CS.
    Cs,
    /// SS.
    Ss,
    /// DS.
    Ds,
    /// ES.
    Es,
    /// FS.
    Fs,
    /// GS.
    Gs,
    /// TR.
    Tr,
    /// LDTR.
    Ldt,
}

/// Why a state is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// CR0 bits 63:32 set.
    Cr0Reserved,
    /// CR0.NW without CR0.CD.
    Cr0NwWithoutCd,
    /// CR0.PG without CR0.PE.
    Cr0PgWithoutPe,
    /// A CR4 bit the CPU (or Keel) does not allow.
    Cr4Reserved,
    /// CR3 bits beyond the physical-address width.
    Cr3Reserved,
    /// An EFER bit other than SCE, LME, LMA, NXE.
    EferReserved,
    /// Long mode (EFER.LME with CR0.PG) without CR4.PAE.
    LongModeWithoutPae,
    /// EFER.LMA differs from EFER.LME and CR0.PG.
    LmaMismatch,
    /// CR4.PCIDE outside long mode.
    PcideOutsideLongMode,
    /// CS.L outside long mode, or CS.L with CS.D.
    CsMode,
    /// RFLAGS reserved bits set, or bit 1 clear.
    RflagsReserved,
    /// RFLAGS.VM in long mode or real mode.
    Vm86Mode,
    /// RIP not canonical in 64-bit mode, or above 4 GiB outside it.
    Rip,
    /// A descriptor-table base is not canonical.
    TableBase,
    /// A segment register's cache is not one a descriptor load could have made.
    Segment(Seg),
}

/// Segment attribute bits (Keel's VMCB format).
mod attr {
    pub(super) const TYPE: u16 = 0xf;
    pub(super) const ACCESSED: u16 = 1;
    pub(super) const WRITABLE_OR_READABLE: u16 = 2;
    pub(super) const CODE: u16 = 8;
    pub(super) const S: u16 = 1 << 4;
    pub(super) const P: u16 = 1 << 7;
    pub(super) const L: u16 = 1 << 9;
    pub(super) const DB: u16 = 1 << 10;
    pub(super) const G: u16 = 1 << 11;
    pub(super) fn dpl(a: u16) -> u16 {
        (a >> 5) & 3
    }
}

/// RFLAGS bits that must be 0 (63:22, 15, 5, 3).
const RFLAGS_RESERVED: u64 = !0x3f_ffff | (1 << 15) | (1 << 5) | (1 << 3);
/// RFLAGS.VM.
const RFLAGS_VM: u64 = 1 << 17;
/// EFER bits a guest may have.
pub const EFER_ALLOWED: u64 = efer::SCE | efer::LME | efer::LMA | efer::NXE;

/// Whether `addr` is canonical for 48-bit (or, with `la57`, 57-bit) linear addresses.
pub fn canonical(addr: u64, la57: bool) -> bool {
    let bits = if la57 { 57 } else { 48 };
    let shift = 64 - bits;
    (((addr << shift) as i64) >> shift) as u64 == addr
}

/// Long mode is active in `c`.
fn long_mode(c: &Ctl) -> bool {
    c.efer & efer::LMA != 0
}

/// The checks on CR0, CR3, CR4 and EFER alone, and on their combination.
pub fn check_ctl(c: &Ctl, lim: &Limits) -> Result<(), Invalid> {
    if c.cr0 >> 32 != 0 {
        return Err(Invalid::Cr0Reserved);
    }
    if c.cr0 & cr0::NW != 0 && c.cr0 & cr0::CD == 0 {
        return Err(Invalid::Cr0NwWithoutCd);
    }
    if c.cr0 & cr0::PG != 0 && c.cr0 & cr0::PE == 0 {
        return Err(Invalid::Cr0PgWithoutPe);
    }
    if c.cr4 & !lim.cr4 != 0 {
        return Err(Invalid::Cr4Reserved);
    }
    if lim.phys_bits < 64 && c.cr3 >> lim.phys_bits != 0 {
        return Err(Invalid::Cr3Reserved);
    }
    if c.efer & !EFER_ALLOWED != 0 {
        return Err(Invalid::EferReserved);
    }
    let paging_long = c.efer & efer::LME != 0 && c.cr0 & cr0::PG != 0;
    if paging_long && c.cr4 & cr4::PAE == 0 {
        return Err(Invalid::LongModeWithoutPae);
    }
    if paging_long != long_mode(c) {
        return Err(Invalid::LmaMismatch);
    }
    if !paging_long && c.cr4 & cr4_bits::PCIDE != 0 {
        return Err(Invalid::PcideOutsideLongMode);
    }
    Ok(())
}

/// Whether the segment's limit and G bit agree: a limit in 4 KiB units has its low 12 bits
/// set, a byte-granular one fits in 20 bits.
fn granularity_ok(s: &VmcbSeg) -> bool {
    let g = s.attrib & attr::G != 0;
    (s.limit & 0xfff == 0xfff || !g) && (s.limit >> 20 == 0 || g)
}

/// Checks CS, SS, DS, ES, FS, GS, TR and LDTR (a segment whose P bit is clear is unusable:
/// a null selector).
fn check_segments(s: &State) -> Result<(), Invalid> {
    use attr::*;
    let c = &s.ctl;
    let protected = c.cr0 & cr0::PE != 0;
    let lm = long_mode(c);
    let la57 = c.cr4 & cr4::LA57 != 0;
    let bad = |seg| Err(Invalid::Segment(seg));

    // CS: usable, an accessed code segment (or, in real mode's unrestricted form, an
    // accessed writable data segment), its DPL matching the CPL (SS.DPL).
    let (cs, ss) = (&s.cs, &s.ss);
    let ty = cs.attrib & TYPE;
    let cs_ok = cs.attrib & P != 0
        && cs.attrib & S != 0
        && ty & ACCESSED != 0
        && match ty {
            3 => dpl(cs.attrib) == 0,
            9 | 11 => dpl(cs.attrib) == dpl(ss.attrib),
            13 | 15 => dpl(cs.attrib) <= dpl(ss.attrib),
            _ => false,
        }
        && granularity_ok(cs)
        && cs.base >> 32 == 0;
    if !cs_ok {
        return bad(Seg::Cs);
    }
    if cs.attrib & L != 0 && (!lm || cs.attrib & DB != 0) {
        return Err(Invalid::CsMode);
    }
    // SS: unusable, or an accessed writable data segment; DPL 0 in real mode and with a
    // real-mode CS.
    if ss.attrib & P != 0 {
        let ty = ss.attrib & TYPE;
        if ss.attrib & S == 0 || !matches!(ty, 3 | 7) || !granularity_ok(ss) || ss.base >> 32 != 0 {
            return bad(Seg::Ss);
        }
    }
    if (!protected || cs.attrib & TYPE == 3) && dpl(ss.attrib) != 0 {
        return bad(Seg::Ss);
    }
    // DS, ES, FS, GS: unusable, or an accessed data or readable code segment.
    for (seg, which) in s.data.iter().zip([Seg::Ds, Seg::Es, Seg::Fs, Seg::Gs]) {
        let fs_gs = matches!(which, Seg::Fs | Seg::Gs);
        if fs_gs && !canonical(seg.base, la57) {
            return bad(which);
        }
        if seg.attrib & P == 0 {
            continue;
        }
        let ty = seg.attrib & TYPE;
        if seg.attrib & S == 0
            || ty & ACCESSED == 0
            || (ty & CODE != 0 && ty & WRITABLE_OR_READABLE == 0)
            || !granularity_ok(seg)
            || (!fs_gs && seg.base >> 32 != 0)
        {
            return bad(which);
        }
    }
    // TR: usable, a busy TSS (16-bit only outside long mode), in the GDT.
    let tr = &s.tr;
    let tr_type_ok = match tr.attrib & TYPE {
        3 => !lm,
        11 => true,
        _ => false,
    };
    if !tr_type_ok
        || tr.attrib & S != 0
        || tr.attrib & P == 0
        || tr.selector & 4 != 0
        || !granularity_ok(tr)
        || !canonical(tr.base, la57)
    {
        return bad(Seg::Tr);
    }
    // LDTR: unusable, or an LDT descriptor from the GDT.
    let ldt = &s.ldt;
    if !canonical(ldt.base, la57) {
        return bad(Seg::Ldt);
    }
    if ldt.attrib & P != 0
        && (ldt.attrib & TYPE != 2
            || ldt.attrib & S != 0
            || ldt.selector & 4 != 0
            || !granularity_ok(ldt))
    {
        return bad(Seg::Ldt);
    }
    Ok(())
}

/// Virtual-8086 mode: every segment register as a real-mode load makes it.
fn check_vm86(s: &State) -> Result<(), Invalid> {
    let segs = [
        (&s.cs, Seg::Cs),
        (&s.ss, Seg::Ss),
        (&s.data[0], Seg::Ds),
        (&s.data[1], Seg::Es),
        (&s.data[2], Seg::Fs),
        (&s.data[3], Seg::Gs),
    ];
    for (seg, which) in segs {
        if seg.base != u64::from(seg.selector) << 4 || seg.limit != 0xffff || seg.attrib != 0xf3 {
            return Err(Invalid::Segment(which));
        }
    }
    Ok(())
}

/// Checks a whole vCPU state before Keel accepts it.
pub fn check(s: &State, lim: &Limits) -> Result<(), Invalid> {
    let c = &s.ctl;
    check_ctl(c, lim)?;
    if s.rflags & RFLAGS_RESERVED != 0 || s.rflags & 2 == 0 {
        return Err(Invalid::RflagsReserved);
    }
    let la57 = c.cr4 & cr4::LA57 != 0;
    if s.table_bases.iter().any(|&b| !canonical(b, la57)) {
        return Err(Invalid::TableBase);
    }
    let vm86 = s.rflags & RFLAGS_VM != 0;
    if vm86 {
        if long_mode(c) || c.cr0 & cr0::PE == 0 {
            return Err(Invalid::Vm86Mode);
        }
        check_vm86(s)?;
    } else {
        check_segments(s)?;
    }
    let bits64 = long_mode(c) && s.cs.attrib & attr::L != 0;
    let rip_ok = if bits64 {
        canonical(s.rip, la57)
    } else {
        s.rip >> 32 == 0
    };
    if !rip_ok {
        return Err(Invalid::Rip);
    }
    Ok(())
}

/// Whether `c` is PAE paging (not long mode): the CPU then uses the four PDPTEs it loaded from
/// CR3 when CR3, or one of CR0.CD/NW/PG or CR4.PAE/PGE/PSE/SMEP, last changed (SDM Vol. 3A,
/// 4.4.1). VMX with EPT takes them from the VMCS at entry.
pub fn pae_paging(c: &Ctl) -> bool {
    c.cr0 & cr0::PG != 0 && c.cr4 & cr4::PAE != 0 && !long_mode(c)
}

/// Whether a write from `old` to `new` makes the CPU load the PDPTEs from memory (and raise
/// #GP when one has a reserved bit set): PAE paging is in use after it and it changed CR3,
/// CR0.CD, NW or PG, or CR4.PAE, PGE, PSE or SMEP.
pub fn loads_pdptes(old: &Ctl, new: &Ctl) -> bool {
    const CR0_BITS: u64 = cr0::CD | cr0::NW | cr0::PG;
    const CR4_BITS: u64 = cr4::PAE | cr4::PSE | (1 << 7) | cr4_bits::SMEP;
    pae_paging(new)
        && (old.cr3 != new.cr3
            || (old.cr0 ^ new.cr0) & CR0_BITS != 0
            || (old.cr4 ^ new.cr4) & CR4_BITS != 0)
}

/// The PDPT address in CR3 under PAE paging (32-byte aligned).
pub fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xffff_ffe0
}

/// Whether a PAE PDPTE may be loaded: not present, or present without reserved bits (2:1,
/// 8:5, 63 and those beyond the physical-address width).
pub fn pdpte_valid(e: u64, lim: &Limits) -> bool {
    let beyond = if lim.phys_bits < 63 {
        !0u64 << lim.phys_bits
    } else {
        1 << 63
    };
    e & 1 == 0 || e & (0x1e6 | (1 << 63) | beyond) == 0
}

/// A guest's MOV to CR0 with `value` (zero-extended from 32 bits outside 64-bit mode), with
/// `cs_long` when CS.L is set: the new CR0 and EFER (long mode is entered or left here), or
/// `None` for #GP.
pub fn mov_cr0(c: &Ctl, value: u64, cs_long: bool) -> Option<Ctl> {
    if value >> 32 != 0
        || (value & cr0::NW != 0 && value & cr0::CD == 0)
        || (value & cr0::PG != 0 && value & cr0::PE == 0)
    {
        return None;
    }
    let mut n = Ctl { cr0: value, ..*c };
    let was_paging = c.cr0 & cr0::PG != 0;
    let paging = value & cr0::PG != 0;
    if !was_paging && paging && c.efer & efer::LME != 0 {
        // Entering long mode: with PAE, not from a 64-bit code segment.
        if c.cr4 & cr4::PAE == 0 || cs_long {
            return None;
        }
        n.efer |= efer::LMA;
    } else if was_paging && !paging {
        // Paging may not be turned off in 64-bit mode, nor with PCIDE.
        if (long_mode(c) && cs_long) || c.cr4 & cr4_bits::PCIDE != 0 {
            return None;
        }
        n.efer &= !efer::LMA;
    }
    Some(n)
}

/// A guest's MOV to CR3 with `value`: the new state, or `None` for #GP (bits beyond the
/// physical-address width; with PCIDE, bit 63 asks not to flush and is not stored).
pub fn mov_cr3(c: &Ctl, value: u64, lim: &Limits) -> Option<Ctl> {
    let mut v = value;
    if long_mode(c) && c.cr4 & cr4_bits::PCIDE != 0 {
        v &= !(1 << 63);
    }
    if lim.phys_bits < 64 && v >> lim.phys_bits != 0 {
        return None;
    }
    Some(Ctl { cr3: v, ..*c })
}

/// A guest's MOV to CR4 with `value`: the new state, or `None` for #GP.
pub fn mov_cr4(c: &Ctl, value: u64, lim: &Limits) -> Option<Ctl> {
    if value & !lim.cr4 != 0 {
        return None;
    }
    if long_mode(c) {
        // Long mode needs PAE; the paging depth cannot change under it.
        if value & cr4::PAE == 0 || (value ^ c.cr4) & cr4::LA57 != 0 {
            return None;
        }
    }
    if value & cr4_bits::PCIDE != 0
        && c.cr4 & cr4_bits::PCIDE == 0
        && (!long_mode(c) || c.cr3 & 0xfff != 0)
    {
        return None;
    }
    Some(Ctl { cr4: value, ..*c })
}

/// A guest's WRMSR to EFER with `value`: the new state (LMA stays the processor's), or `None`
/// for #GP.
pub fn wrmsr_efer(c: &Ctl, value: u64) -> Option<Ctl> {
    if value & !EFER_ALLOWED != 0 {
        return None;
    }
    // LME may not change while paging is on.
    if c.cr0 & cr0::PG != 0 && (value ^ c.efer) & efer::LME != 0 {
        return None;
    }
    Some(Ctl {
        efer: (value & !efer::LMA) | (c.efer & efer::LMA),
        ..*c
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        cr4: cr4_bits::BASE | cr4_bits::PCIDE | cr4_bits::OSXSAVE | cr4_bits::FSGSBASE,
        phys_bits: 40,
    };

    fn seg(selector: u16, attrib: u16, limit: u32) -> VmcbSeg {
        VmcbSeg {
            selector,
            attrib,
            limit,
            base: 0,
        }
    }

    /// A vCPU after INIT.
    fn real() -> State {
        let data = seg(0, 0x93, 0xffff);
        State {
            rip: 0xfff0,
            rflags: 2,
            ctl: Ctl {
                cr0: 0x6000_0010,
                ..Ctl::default()
            },
            cs: VmcbSeg {
                base: 0xffff_0000,
                ..seg(0xf000, 0x9b, 0xffff)
            },
            ss: data,
            data: [data; 4],
            tr: seg(0, 0x8b, 0xffff),
            ldt: seg(0, 0x82, 0xffff),
            table_bases: [0; 2],
        }
    }

    /// 32-bit flat protected mode, as the PVH entry has it.
    fn flat32() -> State {
        let data = seg(0x10, 0xc93, 0xffff_ffff);
        State {
            rip: 0x10_0000,
            rflags: 2,
            ctl: Ctl {
                cr0: cr0::PE | cr0::ET,
                ..Ctl::default()
            },
            cs: seg(0x8, 0xc9b, 0xffff_ffff),
            ss: data,
            data: [data; 4],
            tr: seg(0x18, 0x8b, 0x67),
            ldt: seg(0, 0, 0),
            table_bases: [0x1000, 0],
        }
    }

    /// 64-bit mode.
    fn long() -> State {
        let mut s = flat32();
        s.ctl = Ctl {
            cr0: cr0::PE | cr0::ET | cr0::PG,
            cr3: 0x2000,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA,
        };
        s.cs = seg(0x8, 0xa9b, 0xffff_ffff);
        s.rip = 0xffff_ffff_8100_0000;
        s
    }

    #[test]
    fn good_states_pass() {
        for s in [real(), flat32(), long()] {
            assert_eq!(check(&s, &LIM), Ok(()));
        }
        // Real mode with EFER.LME set: legal before paging is on.
        let mut s = real();
        s.ctl.efer = efer::LME;
        assert_eq!(check(&s, &LIM), Ok(()));
        // An unusable SS in 64-bit mode.
        let mut s = long();
        s.ss = seg(0, 0, 0);
        assert_eq!(check(&s, &LIM), Ok(()));
    }

    #[test]
    fn control_register_combinations() {
        type Case = (fn(&mut State), Invalid);
        let cases: [Case; 11] = [
            (|s| s.ctl.cr0 |= 1 << 32, Invalid::Cr0Reserved),
            (|s| s.ctl.cr0 = cr0::PE | cr0::NW, Invalid::Cr0NwWithoutCd),
            (|s| s.ctl.cr0 = cr0::PG, Invalid::Cr0PgWithoutPe),
            (|s| s.ctl.cr4 |= cr4::VMXE, Invalid::Cr4Reserved),
            (|s| s.ctl.cr4 |= cr4::LA57, Invalid::Cr4Reserved),
            (|s| s.ctl.cr3 = 1 << 40, Invalid::Cr3Reserved),
            (|s| s.ctl.efer |= efer::SVME, Invalid::EferReserved),
            // EFER.LMA without paging (16-bit and protected).
            (|s| s.ctl.efer = efer::LME | efer::LMA, Invalid::LmaMismatch),
            (
                |s| {
                    s.ctl.cr0 = cr0::PE | cr0::PG;
                    s.ctl.efer = efer::LME;
                },
                Invalid::LongModeWithoutPae,
            ),
            (
                |s| {
                    s.ctl.cr0 = cr0::PE | cr0::PG;
                    s.ctl.cr4 = cr4::PAE;
                    s.ctl.efer = efer::LME;
                },
                Invalid::LmaMismatch,
            ),
            (
                |s| s.ctl.cr4 |= cr4_bits::PCIDE,
                Invalid::PcideOutsideLongMode,
            ),
        ];
        for (i, (make, want)) in cases.iter().enumerate() {
            let mut s = flat32();
            make(&mut s);
            assert_eq!(check(&s, &LIM), Err(*want), "case {i}");
        }
        // PCIDE is fine in long mode.
        let mut s = long();
        s.ctl.cr4 |= cr4_bits::PCIDE;
        assert_eq!(check(&s, &LIM), Ok(()));
    }

    #[test]
    fn segments_and_flags() {
        let mut s = flat32();
        s.cs.attrib |= attr::L;
        assert_eq!(check(&s, &LIM), Err(Invalid::CsMode));
        let mut s = long();
        s.cs.attrib |= attr::DB;
        assert_eq!(check(&s, &LIM), Err(Invalid::CsMode));
        let mut s = flat32();
        s.cs.attrib = 0xc9a; // a code segment not marked accessed
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Cs)));
        let mut s = flat32();
        s.cs.limit = 0xfff_ffff; // G set but low bits not all ones... they are; clear G
        s.cs.attrib &= !attr::G;
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Cs)));
        let mut s = flat32();
        s.ss.attrib = 0xc9b; // code as SS
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Ss)));
        let mut s = flat32();
        s.data[1].attrib = 0xc92; // not accessed
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Es)));
        let mut s = flat32();
        s.data[2].base = 1 << 60;
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Fs)));
        let mut s = long();
        s.tr.attrib = 0x83; // 16-bit TSS in long mode
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Tr)));
        let mut s = flat32();
        s.tr.attrib = 0x89; // available TSS
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Tr)));
        let mut s = flat32();
        s.ldt = seg(0x20, 0x83, 0xff);
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Ldt)));
        let mut s = real();
        s.ss.attrib |= 3 << 5; // DPL 3 in real mode
        s.cs.attrib |= 3 << 5;
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Ss)));

        let mut s = flat32();
        s.rflags |= 1 << 15;
        assert_eq!(check(&s, &LIM), Err(Invalid::RflagsReserved));
        let mut s = real();
        s.rflags |= RFLAGS_VM;
        assert_eq!(check(&s, &LIM), Err(Invalid::Vm86Mode));
        let mut s = flat32();
        s.rflags |= RFLAGS_VM;
        assert_eq!(check(&s, &LIM), Err(Invalid::Segment(Seg::Cs)));
        let v86 = VmcbSeg {
            selector: 0x1234,
            attrib: 0xf3,
            limit: 0xffff,
            base: 0x12340,
        };
        (s.cs, s.ss, s.data) = (v86, v86, [v86; 4]);
        assert_eq!(check(&s, &LIM), Ok(()));

        let mut s = long();
        s.rip = 1 << 50;
        assert_eq!(check(&s, &LIM), Err(Invalid::Rip));
        let mut s = flat32();
        s.rip = 1 << 32;
        assert_eq!(check(&s, &LIM), Err(Invalid::Rip));
        let mut s = long();
        s.table_bases[1] = 1 << 47;
        assert_eq!(check(&s, &LIM), Err(Invalid::TableBase));
    }

    #[test]
    fn guest_transitions_follow_the_gp_rules() {
        let prot = flat32().ctl;
        // PG with LME but without PAE: #GP; with PAE: long mode.
        let lme = Ctl {
            efer: efer::LME,
            ..prot
        };
        assert_eq!(mov_cr0(&lme, prot.cr0 | cr0::PG, false), None);
        let pae = Ctl {
            cr4: cr4::PAE,
            ..lme
        };
        let on = mov_cr0(&pae, prot.cr0 | cr0::PG, false).unwrap();
        assert_eq!(on.efer, efer::LME | efer::LMA);
        assert_eq!(check_ctl(&on, &LIM), Ok(()));
        // Not from a 64-bit code segment.
        assert_eq!(mov_cr0(&pae, prot.cr0 | cr0::PG, true), None);
        // Leaving: not in 64-bit mode, fine from compatibility mode.
        assert_eq!(mov_cr0(&on, prot.cr0, true), None);
        let off = mov_cr0(&on, prot.cr0, false).unwrap();
        assert_eq!(off.efer, efer::LME);
        assert_eq!(mov_cr0(&prot, cr0::PG, false), None);
        assert_eq!(mov_cr0(&prot, cr0::NW | cr0::PE, false), None);
        assert_eq!(mov_cr0(&prot, 1 << 40, false), None);

        // CR4: PAE stays in long mode; PCIDE needs long mode and CR3[11:0] = 0.
        assert_eq!(mov_cr4(&on, 0, &LIM), None);
        assert_eq!(mov_cr4(&prot, cr4::VMXE, &LIM), None);
        assert_eq!(mov_cr4(&prot, cr4_bits::PCIDE, &LIM), None);
        assert!(mov_cr4(&on, cr4::PAE | cr4_bits::PCIDE, &LIM).is_some());
        let odd_cr3 = Ctl { cr3: 0x2001, ..on };
        assert_eq!(mov_cr4(&odd_cr3, cr4::PAE | cr4_bits::PCIDE, &LIM), None);

        // CR3: within the address width; bit 63 only with PCIDE.
        assert_eq!(mov_cr3(&on, 1 << 63, &LIM), None);
        let pcid = Ctl {
            cr4: cr4::PAE | cr4_bits::PCIDE,
            ..on
        };
        assert_eq!(
            mov_cr3(&pcid, (1 << 63) | 0x5000, &LIM).unwrap().cr3,
            0x5000
        );
        assert_eq!(mov_cr3(&on, 1 << 40, &LIM), None);

        // EFER: LME fixed while paging; LMA stays the processor's.
        assert_eq!(wrmsr_efer(&on, 0), None);
        assert_eq!(wrmsr_efer(&prot, efer::SVME), None);
        let w = wrmsr_efer(&prot, efer::LME | efer::LMA).unwrap();
        assert_eq!(w.efer, efer::LME);
        // Every transition from a valid state gives a valid control state.
        for c in [prot, lme, pae, on, off] {
            assert_eq!(check_ctl(&c, &LIM), Ok(()), "{c:?}");
        }
    }

    #[test]
    fn pae_pdptes() {
        let pae = Ctl {
            cr0: cr0::PE | cr0::PG,
            cr3: 0x1234_5060,
            cr4: cr4::PAE,
            efer: 0,
        };
        assert!(pae_paging(&pae));
        assert_eq!(pdpt_address(pae.cr3), 0x1234_5060);
        let off = Ctl {
            cr0: cr0::PE,
            ..pae
        };
        assert!(loads_pdptes(&off, &pae));
        assert!(!loads_pdptes(&pae, &pae));
        assert!(loads_pdptes(&pae, &Ctl { cr3: 0x2000, ..pae }));
        assert!(!loads_pdptes(
            &off,
            &Ctl {
                efer: efer::LME | efer::LMA,
                ..pae
            }
        ));
        assert!(pdpte_valid(0, &LIM));
        assert!(pdpte_valid(0xffff_ffff_ffff_fffe, &LIM));
        assert!(pdpte_valid(0x1234_5001, &LIM));
        assert!(!pdpte_valid(0x1234_5003, &LIM));
        assert!(!pdpte_valid(0x1234_5021, &LIM));
        assert!(!pdpte_valid((1 << 40) | 1, &LIM));
        assert!(!pdpte_valid((1 << 63) | 1, &LIM));
    }

    #[test]
    fn cr4_from_cpuid() {
        let none = cr4_supported(|_, _| [0; 4]);
        assert_eq!(none, cr4_bits::BASE);
        let all = cr4_supported(|leaf, _| match leaf {
            0 => [7, 0, 0, 0],
            1 => [0, 0, (1 << 17) | (1 << 26), 0],
            7 => [
                0,
                1 | (1 << 7) | (1 << 20),
                (1 << 2) | (1 << 16) | (1 << 3),
                0,
            ],
            _ => [0; 4],
        });
        assert_eq!(all & cr4::VMXE, 0);
        assert_eq!(all.count_ones(), 11 + 8);
    }
}
