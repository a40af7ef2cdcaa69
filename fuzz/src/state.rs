//! The vCPU-state rules (`keel_core::state`) and SVM's EFER split (`vmcb::hardware_efer`):
//! from any control state the checks accept, every write a guest can make (MOV to CR0, CR3,
//! CR4, WRMSR to EFER) either faults or gives a state the checks accept again, and the VMCB
//! never gets EFER.LME with CR0.PG and CR4.PAE both clear.

use keel_core::arch::{cr0, cr4, efer};
use keel_core::state::{self, cr4_bits, Ctl, Limits};
use keel_core::vmcb::hardware_efer;
use rand::Rng as _;

use crate::{Finding, Rng};

/// CR0 bits worth flipping: PE, MP, TS, ET, NE, WP, AM, NW, CD, PG, and bit 32.
const CR0_BITS: [u64; 11] = [
    1,
    2,
    8,
    16,
    32,
    1 << 16,
    1 << 18,
    1 << 29,
    1 << 30,
    1 << 31,
    1 << 32,
];
/// CR4 bits worth flipping: PAE, PSE, PGE, OSFXSR, LA57, VMXE, PCIDE, OSXSAVE, SMEP, PKE, CET.
const CR4_BITS: [u64; 11] = [
    cr4::PAE,
    cr4::PSE,
    1 << 7,
    1 << 9,
    cr4::LA57,
    cr4::VMXE,
    cr4_bits::PCIDE,
    cr4::OSXSAVE,
    cr4_bits::SMEP,
    cr4::PKE,
    1 << 23,
];
/// EFER bits worth flipping: SCE, LME, LMA, NXE, SVME, bit 14.
const EFER_BITS: [u64; 6] = [
    efer::SCE,
    efer::LME,
    efer::LMA,
    efer::NXE,
    efer::SVME,
    1 << 14,
];

fn bits(rng: &mut Rng, from: &[u64]) -> u64 {
    from.iter()
        .filter(|_| rng.random_bool(0.3))
        .fold(0, |a, b| a | b)
}

fn flip(rng: &mut Rng, v: u64, from: &[u64]) -> u64 {
    v ^ from[rng.random_range(0..from.len())]
}

fn limits(rng: &mut Rng) -> Limits {
    let mut cr4 = cr4_bits::BASE;
    for b in [
        cr4_bits::PCIDE,
        cr4_bits::LA57,
        cr4_bits::OSXSAVE,
        cr4_bits::SMEP,
        cr4_bits::PKE,
    ] {
        if rng.random_bool(0.5) {
            cr4 |= b;
        }
    }
    Limits {
        cr4,
        phys_bits: *[36u8, 39, 46, 52]
            .get(rng.random_range(0..4))
            .expect("in range"),
    }
}

/// The invariant of the SVM split for one state.
fn check_split(c: &Ctl) -> Result<(), Finding> {
    let (hw, held) = hardware_efer(c);
    if hw & efer::LME != 0 && c.cr0 & cr0::PG == 0 && c.cr4 & cr4::PAE == 0 {
        return Err(format!(
            "hardware_efer({c:x?}) = {hw:#x}: LME without PG and PAE"
        ));
    }
    let back = (hw & !efer::SVME) | if held { efer::LME } else { 0 };
    if back != c.efer {
        return Err(format!(
            "hardware_efer({c:x?}) = ({hw:#x}, {held}) loses EFER"
        ));
    }
    Ok(())
}

/// One input: a random control state and, if the checks accept it, 16 random guest writes.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let lim = limits(rng);
    let mut c = Ctl {
        cr0: bits(rng, &CR0_BITS),
        cr3: if rng.random_bool(0.8) {
            rng.random::<u64>() & 0xf_ffff_f000
        } else {
            rng.random()
        },
        cr4: bits(rng, &CR4_BITS),
        efer: bits(rng, &EFER_BITS),
    };
    if state::check_ctl(&c, &lim).is_err() {
        return Ok(());
    }
    for step in 0..16 {
        check_split(&c)?;
        // 64-bit code only in long mode.
        let cs_long = c.efer & efer::LMA != 0 && rng.random_bool(0.5);
        let (what, next) = match rng.random_range(0..4) {
            0 => {
                let v = flip(rng, c.cr0, &CR0_BITS);
                ("mov cr0", state::mov_cr0(&c, v, cs_long))
            }
            1 => {
                let v = if rng.random_bool(0.5) {
                    c.cr3 ^ (1 << rng.random_range(0..64))
                } else {
                    rng.random::<u64>() & 0xff_ffff_f000
                };
                ("mov cr3", state::mov_cr3(&c, v, &lim))
            }
            2 => {
                let v = flip(rng, c.cr4, &CR4_BITS);
                ("mov cr4", state::mov_cr4(&c, v, &lim))
            }
            _ => {
                let v = flip(rng, c.efer, &EFER_BITS);
                ("wrmsr efer", state::wrmsr_efer(&c, v))
            }
        };
        if let Some(n) = next {
            if let Err(why) = state::check_ctl(&n, &lim) {
                return Err(format!(
                    "step {step}: {what} from {c:x?} gave {n:x?}, which check_ctl refuses: {why:?}"
                ));
            }
            c = n;
        }
    }
    Ok(())
}
