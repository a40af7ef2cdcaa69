//! The `exit` target: VM-exit decoding (`keel_core::exit`).

use std::cell::Cell;

use keel_core::exit::{access, CrOp, Exit, ExitKind, VmxInfo};
use keel_core::insn::{self, Mode};
use rand::Rng as _;

use crate::{Finding, Rng};

/// The kind a VMX basic exit reason is counted under (SDM Vol. 3D, Appendix C), written from
/// the table rather than from `from_vmx`; reason 0 depends on the interruption type.
fn vmx_kind(basic: u32, nmi: bool) -> ExitKind {
    use ExitKind::*;
    match basic {
        0 if nmi => Nmi,
        0 => Exception,
        1 => ExternalInterrupt,
        2 => TripleFault,
        3 => Init,
        4 => Sipi,
        7 | 8 => Window, // interrupt window, NMI window
        10 => Cpuid,
        12 => Hlt,
        13 => Invd,
        18 => Hypercall,
        19..=27 | 50 | 53 | 59 => VirtInsn, // VMCLEAR..VMXON, INVEPT, INVVPID, VMFUNC
        28 => CrAccess,
        29 => DrAccess,
        30 => Io,
        31 => Rdmsr,
        32 => Wrmsr,
        33 | 34 | 41 => EntryFailure, // invalid guest state, MSR loading, machine check
        48 | 49 => SlatFault,         // EPT violation, misconfiguration
        52 => PreemptionTimer,
        55 => Xsetbv,
        _ => Other,
    }
}

/// The kind an SVM exit code is counted under (APM Vol. 2, Appendix C).
fn svm_kind(code: u64) -> ExitKind {
    use ExitKind::*;
    match code {
        0x00..=0x1f => CrAccess,
        0x20..=0x3f => DrAccess,
        0x40..=0x5f => Exception,
        0x60 => ExternalInterrupt,
        0x61 => Nmi,
        0x63 => Init,
        0x64 => Window,
        0x72 => Cpuid,
        0x76 => Invd,
        0x78 => Hlt,
        0x7a | 0x80 | 0x82..=0x86 => VirtInsn, // INVLPGA, VMRUN, VMLOAD..SKINIT
        0x7b => Io,
        0x7c => Rdmsr, // or Wrmsr, by EXITINFO1 bit 0
        0x7f => TripleFault,
        0x81 => Hypercall,
        0x8d => Xsetbv,
        0x400 => SlatFault,
        u64::MAX | 0xffff_ffff => EntryFailure,
        _ => Other,
    }
}

/// What every decoded exit must satisfy whichever vendor it came from.
fn common(e: &Exit) -> Result<(), Finding> {
    match *e {
        Exit::Io { size, .. } if ![1, 2, 4].contains(&size) => {
            return Err(format!("I/O size {size}, not 1, 2 or 4: {e:?}"))
        }
        Exit::CrAccess(c) => {
            let gpr = match c.op {
                CrOp::Write(g) | CrOp::Read(g) => g,
                CrOp::Clts | CrOp::Lmsw => None,
            };
            if c.cr > 15 || gpr.is_some_and(|g| g > 15) {
                return Err(format!("register numbers out of range: {e:?}"));
            }
        }
        Exit::SlatFault { access: a, .. }
            if ![access::READ, access::WRITE, access::EXEC].contains(&a) =>
        {
            return Err(format!("access bits {a:#x}: {e:?}"))
        }
        _ => {}
    }
    // The prefix-free encoding is the kind's, and decodes to exactly its length.
    if e.plain_encoding() != e.kind().plain_encoding() {
        return Err(format!("plain encoding differs from its kind's: {e:?}"));
    }
    if let Some(b) = e.plain_encoding() {
        if insn::decode(b, Mode::Bits64).map(|i| i.len) != Ok(b.len()) {
            return Err(format!(
                "plain encoding {b:02x?} does not decode to its length"
            ));
        }
    }
    Ok(())
}

fn vmx(rng: &mut Rng) -> Result<(), Finding> {
    let basic: u32 = if rng.random_bool(0.8) {
        rng.random_range(0..70)
    } else {
        rng.random::<u16>().into()
    };
    let high: u32 = match rng.random_range(0..8) {
        0 => rng.random::<u32>() & 0xffff_0000,
        1 => 1 << 31,
        _ => 0,
    };
    let reason = high | basic;
    let fields: [u64; 4] = rng.random();
    let reads = Cell::new([0u32; 4]);
    let read = |f: VmxInfo| {
        let n = f as usize;
        let mut r = reads.get();
        r[n] += 1;
        reads.set(r);
        fields[n]
    };
    let e = Exit::from_vmx(reason, read);
    let at = || format!("from_vmx({reason:#x}, fields {fields:x?})");
    let intr = fields[VmxInfo::IntrInfo as usize] as u32;
    let failed = reason & (1 << 31) != 0;
    let nmi = intr >> 8 & 7 == 2;
    let kind = if failed {
        ExitKind::EntryFailure
    } else {
        vmx_kind(reason & 0xffff, nmi)
    };
    if e.kind() != kind {
        return Err(format!(
            "{}: {e:?} counted as {:?}, the SDM says {kind:?}",
            at(),
            e.kind()
        ));
    }
    common(&e).map_err(|f| format!("{}: {f}", at()))?;
    // Each field is read at most once (a VMREAD each), and only for the reasons that have it.
    let r = reads.get();
    let basic = reason & 0xffff;
    let may = [
        true,
        !failed && basic == 0,
        !failed && basic == 0 && !nmi && intr & (1 << 11) != 0,
        !failed && (basic == 48 || basic == 49),
    ];
    for (n, &count) in r.iter().enumerate() {
        if count > 1 || count == 1 && !may[n] {
            return Err(format!("{}: field {n} read {count} times", at()));
        }
    }
    match e {
        Exit::Exception { vector, error_code } => {
            let want =
                (intr & (1 << 11) != 0).then_some(fields[VmxInfo::IntrErrorCode as usize] as u32);
            if vector != intr as u8 || error_code != want {
                return Err(format!("{}: {e:?}", at()));
            }
        }
        Exit::SlatFault { gpa, .. } | Exit::SlatMisconfig { gpa }
            if gpa != fields[VmxInfo::GuestPhysical as usize] =>
        {
            return Err(format!("{}: {e:?} has the wrong address", at()));
        }
        Exit::EntryFailure {
            reason: r,
            qualification,
        }
        | Exit::Other {
            reason: r,
            qualification,
        } if r != u64::from(reason) || qualification != fields[VmxInfo::Qualification as usize] => {
            return Err(format!("{}: {e:?} does not carry the raw values", at()));
        }
        _ => {}
    }
    Ok(())
}

fn svm(rng: &mut Rng) -> Result<(), Finding> {
    let code: u64 = match rng.random_range(0..10) {
        0 => rng.random(),
        1 => *[0x400, u64::MAX, 0xffff_ffff, 0x401, 0x1_0000_0072]
            .get(rng.random_range(0..5))
            .expect("in range"),
        _ => rng.random_range(0..0xa0),
    };
    let (info1, info2): (u64, u64) = rng.random();
    let e = Exit::from_svm(code, info1, info2);
    let at = || format!("from_svm({code:#x}, {info1:#x}, {info2:#x})");
    let mut kind = svm_kind(code);
    if code == 0x7c && info1 & 1 != 0 {
        kind = ExitKind::Wrmsr;
    }
    if e.kind() != kind {
        return Err(format!(
            "{}: {e:?} counted as {:?}, the APM says {kind:?}",
            at(),
            e.kind()
        ));
    }
    common(&e).map_err(|f| format!("{}: {f}", at()))?;
    let ok = match e {
        Exit::CrAccess(c) => {
            let gpr = (info1 >> 63 != 0).then_some((info1 & 0xf) as u8);
            let want = if code >= 0x10 {
                CrOp::Write(gpr)
            } else {
                CrOp::Read(gpr)
            };
            u64::from(c.cr) == code & 0xf && c.op == want
        }
        Exit::Exception { vector, error_code } => {
            u64::from(vector) + 0x40 == code && error_code.is_none()
        }
        Exit::Io { port, next_rip, .. } => {
            u64::from(port) == info1 >> 16 & 0xffff && next_rip == Some(info2)
        }
        Exit::SlatFault { gpa, .. } => gpa == info2,
        Exit::EntryFailure {
            reason,
            qualification,
        }
        | Exit::Other {
            reason,
            qualification,
        } => reason == code && qualification == info1,
        _ => true,
    };
    if !ok {
        return Err(format!(
            "{}: {e:?} does not carry the exit information",
            at()
        ));
    }
    Ok(())
}

/// One input: a VMX or an SVM exit.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    if rng.random_bool(0.5) {
        vmx(rng)
    } else {
        svm(rng)
    }
}
