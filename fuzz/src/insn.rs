//! The `insn` target: x86 instruction lengths (`keel_core::insn`).

use iced_x86::{Decoder, DecoderError, DecoderOptions, EncodingKind};
use keel_core::insn::{decode, DecodeError, Insn, Mode, MAX_LEN};
use rand::seq::IndexedRandom;
use rand::{Rng as _, RngCore};

use crate::{Finding, Rng};

/// The legacy prefixes (SDM Vol. 2A, 2.1.1).
const LEGACY_PREFIXES: [u8; 11] = [
    0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65,
];

/// A random operating mode.
pub fn mode(rng: &mut Rng) -> Mode {
    *[Mode::Bits16, Mode::Bits32, Mode::Bits64]
        .choose(rng)
        .expect("not empty")
}

/// Prefixes: mostly a few legacy ones and (64-bit mode) a REX, sometimes REX in the middle
/// (where it does not count), sometimes enough to pass the 15-byte limit.
pub fn prefixes(rng: &mut Rng, mode: Mode, out: &mut Vec<u8>) {
    let n = match rng.random_range(0..20) {
        0 => rng.random_range(8..=16),
        1..=9 => 0,
        _ => rng.random_range(1..=3),
    };
    for _ in 0..n {
        if mode == Mode::Bits64 && rng.random_ratio(1, 6) {
            out.push(rng.random_range(0x40..=0x4f));
        } else {
            out.push(*LEGACY_PREFIXES.choose(rng).expect("not empty"));
        }
    }
    if mode == Mode::Bits64 && rng.random_bool(0.4) {
        out.push(rng.random_range(0x40..=0x4f));
    }
}

/// The opcode bytes: any byte of the one-byte map, or an escape to 0F, 0F 38 or 0F 3A and a
/// byte of that map.
fn opcode(rng: &mut Rng, out: &mut Vec<u8>) {
    match rng.random_range(0..10) {
        0..=4 => out.push(rng.random()),
        5..=7 => out.extend([0x0f, rng.random()]),
        8 => out.extend([0x0f, 0x38, rng.random()]),
        _ => out.extend([0x0f, 0x3a, rng.random()]),
    }
}

/// ModRM, SIB, displacement and immediate bytes: a ModRM whose mod is spread evenly, a SIB
/// whose base is often 5 (no base with mod 00), then random bytes for whatever follows.
pub fn operand_bytes(rng: &mut Rng, out: &mut Vec<u8>) {
    let md: u8 = rng.random_range(0..4);
    let rm: u8 = if rng.random_bool(0.3) {
        *[4u8, 5, 6].choose(rng).expect("not empty")
    } else {
        rng.random_range(0..8)
    };
    out.push(md << 6 | rng.random_range(0..8) << 3 | rm);
    let base: u8 = if rng.random_bool(0.3) {
        5
    } else {
        rng.random_range(0..8)
    };
    out.push(rng.random::<u8>() & !7 | base);
    let tail = rng.random_range(0..12);
    out.extend((0..tail).map(|_| rng.random::<u8>()));
}

/// An instruction built from pieces, or (one time in five) plain random bytes.
pub fn bytes(rng: &mut Rng, mode: Mode) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    if rng.random_ratio(1, 5) {
        b.resize(rng.random_range(0..20), 0);
        rng.fill_bytes(&mut b);
        return b;
    }
    prefixes(rng, mode, &mut b);
    opcode(rng, &mut b);
    operand_bytes(rng, &mut b);
    // Sometimes cut it short, to reach the truncation paths from the full-length side.
    if rng.random_ratio(1, 8) {
        let keep = rng.random_range(0..=b.len());
        b.truncate(keep);
    }
    b
}

fn bitness(mode: Mode) -> u32 {
    match mode {
        Mode::Bits16 => 16,
        Mode::Bits32 => 32,
        Mode::Bits64 => 64,
    }
}

/// The invariants of one decode that hold for every input.
pub fn check(bytes: &[u8], mode: Mode) -> Result<Option<Insn>, Finding> {
    let at = || format!("{mode:?} {bytes:02x?}");
    let r = decode(bytes, mode);
    match r {
        Ok(i) => {
            if !(1..=MAX_LEN).contains(&i.len) || i.len > bytes.len() {
                return Err(format!(
                    "{}: length {} out of 1..=15 or past the bytes",
                    at(),
                    i.len
                ));
            }
            // The result depends only on the bytes consumed: cutting the rest off changes
            // nothing, and any shorter prefix is truncated.
            let exact = decode(&bytes[..i.len], mode);
            if exact != r {
                return Err(format!(
                    "{}: {r:?}, but its first {} bytes give {exact:?}",
                    at(),
                    i.len
                ));
            }
            for k in 0..i.len {
                let short = decode(&bytes[..k], mode);
                if short != Err(DecodeError::Truncated) {
                    return Err(format!("{}: decodes to length {}, but its first {k} bytes give {short:?}, not Truncated", at(), i.len));
                }
            }
            if ![2, 4, 8].contains(&i.operand_size) || ![2, 4, 8].contains(&i.address_size) {
                return Err(format!(
                    "{}: operand size {} / address size {}",
                    at(),
                    i.operand_size,
                    i.address_size
                ));
            }
            if mode != Mode::Bits64 && (i.rex != 0 || i.operand_size == 8 || i.address_size == 8) {
                return Err(format!(
                    "{}: REX or 64-bit sizes outside 64-bit mode: {i:?}",
                    at()
                ));
            }
            if i.rex != 0 && !(0x40..=0x4f).contains(&i.rex) {
                return Err(format!("{}: REX {:#x}", at(), i.rex));
            }
            if i.rep && i.repne {
                return Err(format!("{}: both REP and REPNE", at()));
            }
            if i.reg().is_some() != i.modrm.is_some()
                || i.reg().is_some_and(|r| r > 15)
                || i.rm_register().is_some_and(|r| r > 15)
            {
                return Err(format!(
                    "{}: register numbers {:?} {:?} for {i:?}",
                    at(),
                    i.reg(),
                    i.rm_register()
                ));
            }
            Ok(Some(i))
        }
        Err(e) => {
            // Only a truncation can turn into something else with more bytes, and 15 bytes
            // always suffice to decide.
            if e == DecodeError::Truncated && bytes.len() >= MAX_LEN {
                return Err(format!("{}: Truncated with {} bytes", at(), bytes.len()));
            }
            if e != DecodeError::Truncated {
                let mut longer = bytes.to_vec();
                longer.extend_from_slice(&[0x90; 16]);
                let again = decode(&longer, mode);
                if again != r {
                    return Err(format!(
                        "{}: {r:?}, but with more bytes after them {again:?}",
                        at()
                    ));
                }
            }
            Ok(None)
        }
    }
}

/// Compares with iced-x86 where it decodes a valid legacy (or 3DNow!) instruction: Keel must
/// find the same length.
fn compare_with_iced(bytes: &[u8], mode: Mode, ours: Option<Insn>) -> Result<(), Finding> {
    let mut d = Decoder::new(bitness(mode), bytes, DecoderOptions::NONE);
    let theirs = d.decode();
    if theirs.is_invalid() || d.last_error() != DecoderError::None {
        return Ok(());
    }
    if !matches!(
        theirs.encoding(),
        EncodingKind::Legacy | EncodingKind::D3NOW
    ) {
        return Ok(());
    }
    if ours.map(|i| i.len) == Some(theirs.len()) {
        return Ok(());
    }
    let ours = ours.map_or_else(
        || format!("{:?}", decode(bytes, mode)),
        |i| format!("length {}", i.len),
    );
    Err(format!(
        "{mode:?} {:02x?}: Keel says {ours}, iced-x86 decodes {:?} of length {}",
        &bytes[..theirs.len()],
        theirs.code(),
        theirs.len()
    ))
}

/// One input: an instruction in a random mode.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let mode = mode(rng);
    let b = bytes(rng, mode);
    let ours = check(&b, mode)?;
    compare_with_iced(&b, mode, ours)
}
