//! The `mmio` target: decoding the instruction behind an MMIO access (`keel_core::mmio`).

use keel_core::insn::{self, Map, Mode};
use keel_core::mmio::{
    complete_read, decode, write_data, Extension, MmioError, MmioInsn, MmioOp, Src,
};
use rand::seq::IndexedRandom;
use rand::Rng as _;

use crate::{Finding, Rng};

/// The opcodes `mmio::decode` handles, and a few neighbours it must refuse.
const OPCODES: &[&[u8]] = &[
    &[0x88],
    &[0x89],
    &[0x8a],
    &[0x8b],
    &[0xc6],
    &[0xc7],
    &[0xa0],
    &[0xa1],
    &[0xa2],
    &[0xa3],
    &[0x0f, 0xb6],
    &[0x0f, 0xb7],
    &[0x0f, 0xbe],
    &[0x0f, 0xbf],
    &[0x0f, 0xc3],
    &[0x87],
    &[0x01],
    &[0x83],
    &[0xf7],
    &[0xa4],
    &[0xa5],
    &[0x0f, 0xb1],
    &[0x0f, 0x6f],
];

/// `value` truncated to `size` bytes.
fn low(value: u64, size: u8) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (8 * u32::from(size))) - 1)
    }
}

/// The register file after a load, computed byte by byte (SDM Vol. 1, 3.4.1.1): the loaded
/// bytes, widened, go to the destination's bytes; a 32-bit destination in 64-bit mode zeroes
/// bytes 4..8; every other byte stays.
fn model_load(regs: &[u64; 16], m: &MmioInsn, data: u64, mode: Mode) -> [u64; 16] {
    let MmioOp::Read { dst } = m.op else {
        return *regs;
    };
    let mut loaded = low(data, m.size).to_le_bytes();
    let negative = loaded[usize::from(m.size) - 1] & 0x80 != 0;
    if dst.extend == Extension::Sign && negative {
        loaded[usize::from(m.size)..].fill(0xff);
    }
    let mut out = *regs;
    let mut reg = out[usize::from(dst.index)].to_le_bytes();
    let first = if dst.high_byte { 1 } else { 0 };
    let n = usize::from(dst.size);
    reg[first..first + n].copy_from_slice(&loaded[..n]);
    if dst.size == 4 && mode == Mode::Bits64 {
        reg[4..].fill(0);
    }
    out[usize::from(dst.index)] = u64::from_le_bytes(reg);
    out
}

/// An instruction built around an MMIO opcode (or plain random bytes now and then).
fn bytes(rng: &mut Rng, mode: Mode) -> Vec<u8> {
    if rng.random_ratio(1, 6) {
        return crate::insn::bytes(rng, mode);
    }
    let mut b = Vec::with_capacity(24);
    crate::insn::prefixes(rng, mode, &mut b);
    b.extend_from_slice(OPCODES.choose(rng).expect("not empty"));
    // ModRM's mod is spread evenly, so three inputs in four have a memory operand.
    crate::insn::operand_bytes(rng, &mut b);
    b
}

fn check(bytes: &[u8], mode: Mode, rng: &mut Rng) -> Result<(), Finding> {
    let at = || format!("{mode:?} {bytes:02x?}");
    let r = decode(bytes, mode);
    let i = insn::decode(bytes, mode);
    // The two decoders agree on the instruction's length and on what is undecodable.
    let m = match (r, i) {
        (Err(MmioError::Decode(e)), Err(f)) if e == f => return Ok(()),
        (Err(MmioError::Decode(e)), _) | (_, Err(e)) => {
            return Err(format!("{}: mmio {r:?} but insn {i:?} (error {e:?})", at()))
        }
        (Err(MmioError::NotMemory), Ok(i)) => {
            if i.modrm.is_none_or(|m| m >> 6 != 3) {
                return Err(format!("{}: NotMemory without a register operand", at()));
            }
            return Ok(());
        }
        (Err(MmioError::Unsupported { map, opcode }), Ok(i)) => {
            if (map, opcode) != (i.map, i.opcode) {
                return Err(format!(
                    "{}: Unsupported names {map:?} {opcode:#x}, the instruction is {:?} {:#x}",
                    at(),
                    i.map,
                    i.opcode
                ));
            }
            return Ok(());
        }
        (Ok(m), Ok(i)) => {
            if usize::from(m.len) != i.len {
                return Err(format!(
                    "{}: mmio length {}, insn length {}",
                    at(),
                    m.len,
                    i.len
                ));
            }
            let handled = match i.map {
                Map::Primary => {
                    matches!(i.opcode, 0x88..=0x8b | 0xa0..=0xa3)
                        || matches!(i.opcode, 0xc6 | 0xc7) && i.modrm.is_some_and(|m| m & 0x38 == 0)
                }
                Map::Map0F => matches!(i.opcode, 0xb6 | 0xb7 | 0xbe | 0xbf | 0xc3),
                _ => false,
            };
            if !handled || i.modrm.is_some_and(|m| m >> 6 == 3) {
                return Err(format!("{}: accepted as MMIO: {m:?}", at()));
            }
            (m, i)
        }
    };
    let (m, i) = m;
    if ![1, 2, 4, 8].contains(&m.size) {
        return Err(format!("{}: access size {}", at(), m.size));
    }
    match m.op {
        MmioOp::Write {
            src: Src::Reg { index, high_byte },
        } => {
            if index > 15 || high_byte && (index > 3 || m.size != 1 || i.rex != 0) {
                return Err(format!(
                    "{}: source register {index} high {high_byte}",
                    at()
                ));
            }
        }
        MmioOp::Write { src: Src::Imm(v) } => {
            if v != low(v, m.size) {
                return Err(format!(
                    "{}: immediate {v:#x} wider than {} bytes",
                    at(),
                    m.size
                ));
            }
            // The immediate is the last bytes of the instruction, sign-extended from 4 bytes
            // for a 64-bit store.
            let n = usize::from(m.size.min(4));
            let mut raw = [0u8; 8];
            raw[..n].copy_from_slice(&bytes[i.len - n..i.len]);
            if m.size == 8 && raw[3] & 0x80 != 0 {
                raw[4..].fill(0xff);
            }
            if u64::from_le_bytes(raw) != v {
                return Err(format!(
                    "{}: immediate {v:#x}, the bytes say {:#x}",
                    at(),
                    u64::from_le_bytes(raw)
                ));
            }
        }
        MmioOp::Read { dst } => {
            let ok_size = [1, 2, 4, 8].contains(&dst.size) && dst.size >= m.size;
            let ok_extend = (dst.extend == Extension::None) == (i.map == Map::Primary);
            let ok_high = !dst.high_byte || dst.index <= 3 && dst.size == 1 && i.rex == 0;
            if dst.index > 15
                || !ok_size
                || !ok_extend
                || !ok_high
                || dst.extend == Extension::None && dst.size != m.size
            {
                return Err(format!(
                    "{}: destination {dst:?} for a {}-byte access",
                    at(),
                    m.size
                ));
            }
        }
    }

    // write_data and complete_read against the byte-wise model.
    let mut regs = [0u64; 16];
    regs.iter_mut().for_each(|r| *r = rng.random());
    let data: u64 = rng.random();
    let stored = write_data(&regs, &m);
    let expected = match m.op {
        MmioOp::Write {
            src: Src::Reg { index, high_byte },
        } => low(
            regs[usize::from(index)] >> if high_byte { 8 } else { 0 },
            m.size,
        ),
        MmioOp::Write { src: Src::Imm(v) } => v,
        MmioOp::Read { .. } => 0,
    };
    if stored != expected {
        return Err(format!(
            "{}: write_data {stored:#x}, expected {expected:#x}",
            at()
        ));
    }
    let mut after = regs;
    complete_read(&mut after, &m, data, mode);
    let model = model_load(&regs, &m, data, mode);
    if after != model {
        return Err(format!(
            "{}: complete_read of {data:#x} gave {after:x?}, the model {model:x?}",
            at()
        ));
    }

    // A store through a register and the load with the same operands (88/89 -> 8A/8B,
    // A2/A3 -> A0/A1) carry the register's low bytes there and back.
    let load_opcode = match (i.map, i.opcode) {
        (Map::Primary, 0x88 | 0x89) => Some(i.opcode + 2),
        (Map::Primary, 0xa2 | 0xa3) => Some(i.opcode - 2),
        _ => None,
    };
    if let Some(load_opcode) = load_opcode {
        let mut swapped = bytes[..i.len].to_vec();
        let pos =
            opcode_position(&swapped, mode).ok_or_else(|| format!("{}: no opcode found", at()))?;
        swapped[pos] = load_opcode;
        let load = decode(&swapped, mode)
            .map_err(|e| format!("{}: the matching load {swapped:02x?} gives {e:?}", at()))?;
        let MmioOp::Read { dst } = load.op else {
            return Err(format!(
                "{}: the matching load {swapped:02x?} is {load:?}",
                at()
            ));
        };
        let MmioOp::Write {
            src: Src::Reg { index, high_byte },
        } = m.op
        else {
            return Err(format!("{}: a register store decoded as {m:?}", at()));
        };
        if load.len != m.len
            || load.size != m.size
            || (dst.index, dst.high_byte) != (index, high_byte)
        {
            return Err(format!("{}: store {m:?} and load {load:?} disagree", at()));
        }
        let mut back = [0u64; 16];
        complete_read(&mut back, &load, stored, mode);
        let got = low(
            back[usize::from(index)] >> if high_byte { 8 } else { 0 },
            m.size,
        );
        if got != stored {
            return Err(format!(
                "{}: stored {stored:#x}, loaded back {got:#x}",
                at()
            ));
        }
    }
    Ok(())
}

/// Where the opcode byte is: after the legacy prefixes and (64-bit mode) REX prefixes.
fn opcode_position(bytes: &[u8], mode: Mode) -> Option<usize> {
    bytes.iter().position(|&b| {
        let legacy = matches!(
            b,
            0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 | 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65
        );
        let rex = mode == Mode::Bits64 && (0x40..=0x4f).contains(&b);
        !(legacy || rex)
    })
}

/// One input: an MMIO instruction in a random mode.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let mode = crate::insn::mode(rng);
    let b = bytes(rng, mode);
    check(&b, mode, rng)
}
