//! Smaller targets: the values Dom0 passes in registers, and the root-mode log ring.

use keel_core::caps::Vendor;
use keel_core::cpuid::{self, Identity};
use keel_core::hypercall::Call;
use keel_core::logring::{Level, LogRing, MSG_LEN};
use keel_core::xcr::xsetbv_valid;
use rand::Rng as _;

use crate::{Finding, Rng};

const CALLS: [Call; 5] = [
    Call::Ping,
    Call::Leave,
    Call::Run,
    Call::Spin,
    Call::TestIntercept,
];

/// One input: a hypercall RAX, a CPUID leaf and its hardware answer, an XSETBV.
pub fn run_guest_values(rng: &mut Rng) -> Result<(), Finding> {
    // Call::decode: only the RAX of a known call decodes to it, and the magic alone says
    // whether RAX is a Keel hypercall at all.
    let rax: u64 = match rng.random_range(0..3) {
        0 => rng.random(),
        1 => CALLS[rng.random_range(0..CALLS.len())].rax() ^ (1 << rng.random_range(0..64)),
        _ => CALLS[0].rax() & !0xffff_ffff | rng.random_range(0..16),
    };
    match Call::decode(rax) {
        Some(Some(c)) if c.rax() != rax => {
            return Err(format!(
                "Call::decode({rax:#x}) = {c:?}, whose RAX is {:#x}",
                c.rax()
            ))
        }
        Some(None) if CALLS.iter().any(|c| c.rax() == rax) => {
            return Err(format!("Call::decode({rax:#x}) misses a known call"))
        }
        None if rax >> 32 == CALLS[0].rax() >> 32 => {
            return Err(format!("Call::decode({rax:#x}): the magic is there"))
        }
        Some(_) if rax >> 32 != CALLS[0].rax() >> 32 => {
            return Err(format!("Call::decode({rax:#x}): no magic"))
        }
        _ => {}
    }

    // cpuid::dom0: Keel's leaves never ask the hardware; other leaves are the hardware's,
    // with only the documented bits changed.
    let vendor = if rng.random_bool(0.5) {
        Vendor::Vmx
    } else {
        Vendor::Svm
    };
    let leaf: u32 = match rng.random_range(0..4) {
        0 => rng.random(),
        1 => 0x4000_0000 + rng.random_range(0..0x200),
        2 => *[1, 0x8000_0001, 0x8000_000a]
            .get(rng.random_range(0..3))
            .expect("in range"),
        _ => rng.random_range(0..0x20) | if rng.random_bool(0.5) { 0x8000_0000 } else { 0 },
    };
    let hw: [u32; 4] = rng.random();
    let id = Identity {
        version: rng.random(),
        abi_version: rng.random(),
    };
    let asked = std::cell::Cell::new(false);
    let got = cpuid::dom0(vendor, id, leaf, || {
        asked.set(true);
        hw
    });
    let ours = (0x4000_0000..=0x4000_00ff).contains(&leaf);
    if asked.get() == ours {
        return Err(format!(
            "cpuid::dom0({vendor:?}, {leaf:#x}): hardware asked {}",
            asked.get()
        ));
    }
    if !ours {
        let mut want = hw;
        match (vendor, leaf) {
            (_, 1) => {
                want[2] |= 1 << 31;
                if vendor == Vendor::Vmx {
                    want[2] &= !(1 << 5);
                }
            }
            (Vendor::Svm, 0x8000_0001) => want[2] &= !(1 << 2),
            (Vendor::Svm, 0x8000_000a) => want = [0; 4],
            _ => {}
        }
        if got != want {
            return Err(format!(
                "cpuid::dom0({vendor:?}, {leaf:#x}, hw {hw:x?}) = {got:x?}, not {want:x?}"
            ));
        }
    } else if leaf > 0x4000_0001 && got != [0; 4] || leaf == 0x4000_0000 && got[0] != 0x4000_0001 {
        return Err(format!("cpuid::dom0 leaf {leaf:#x} = {got:x?}"));
    }

    // xsetbv_valid: what it accepts has x87, stays within what the CPU supports, and keeps
    // AVX with SSE (SDM Vol. 1, 13.3).
    let index: u32 = if rng.random_bool(0.8) {
        0
    } else {
        rng.random()
    };
    let supported: u64 = rng.random::<u64>() | 1;
    let value: u64 = rng.random::<u64>()
        & if rng.random_bool(0.7) {
            supported
        } else {
            u64::MAX
        };
    if xsetbv_valid(index, value, supported)
        && (index != 0
            || value & 1 == 0
            || value & !supported != 0
            || value & 4 != 0 && value & 2 == 0)
    {
        return Err(format!(
            "xsetbv_valid({index}, {value:#x}, {supported:#x}) accepts it"
        ));
    }
    Ok(())
}

/// A random string: ASCII, two-, three- and four-byte characters.
fn text(rng: &mut Rng) -> String {
    let chars = ['a', 'Z', ' ', '%', 'é', 'ß', '€', '字', '😀', '\n'];
    (0..rng.random_range(0..100))
        .map(|_| chars[rng.random_range(0..chars.len())])
        .collect()
}

/// One input: a sequence of writes and reads on a small ring.
pub fn run_logring(rng: &mut Rng) -> Result<(), Finding> {
    const N: usize = 8;
    let ring: LogRing<N> = LogRing::new();
    let mut pending = std::collections::VecDeque::new();
    let mut dropped = 0u32;
    for _ in 0..rng.random_range(1..40) {
        if rng.random_bool(0.6) {
            let (a, b) = (text(rng), text(rng));
            let full = format!("{a}{b}");
            let accepted = ring.write(Level::Info, format_args!("{a}{b}"));
            if accepted != (pending.len() < N) {
                return Err(format!(
                    "write accepted {accepted} with {} of {N} records pending",
                    pending.len()
                ));
            }
            if accepted {
                pending.push_back(full);
            } else {
                dropped += 1;
            }
        } else {
            let got = ring.read();
            match (got, pending.pop_front()) {
                (None, None) => {}
                (Some(r), Some(full)) => {
                    // The text is the formatted message cut at a character boundary, as
                    // much of it as fits.
                    let msg = r.msg();
                    let fits = (0..=full.len().min(MSG_LEN))
                        .rev()
                        .find(|&n| full.is_char_boundary(n))
                        .unwrap_or(0);
                    if msg != &full[..fits] || r.level != Level::Info {
                        return Err(format!(
                            "record {msg:?}, written {full:?} (expected its first {fits} bytes)"
                        ));
                    }
                }
                (got, want) => {
                    return Err(format!(
                        "read {:?}, expected {want:?}",
                        got.map(|r| r.msg().to_string())
                    ))
                }
            }
        }
    }
    let counted = ring.take_dropped();
    if counted != dropped || ring.take_dropped() != 0 {
        return Err(format!("{counted} drops counted, {dropped} made"));
    }
    Ok(())
}
