//! Decoding the instruction behind an emulated MMIO access.
//!
//! When a guest touches a guest-physical address that has no mapping in the second-level
//! tables, the exit reports the address but not the data: Keel reads the instruction at the
//! guest's RIP and decodes it here to learn the access size, its direction, the value a write
//! stores ([`write_data`]), and where the value a read returns goes ([`complete_read`]).
//!
//! Only the plain moves compilers emit for device registers are handled: MOV (88, 89, 8A, 8B,
//! C6 /0, C7 /0, A0..=A3), MOVZX (0F B6, 0F B7), MOVSX (0F BE, 0F BF) and MOVNTI (0F C3).
//! Anything else, in particular read-modify-write instructions and string moves, is refused
//! with [`MmioError::Unsupported`] naming the opcode. Lengths, prefixes, ModRM, SIB and
//! displacements come from [`insn::decode`].
//!
//! Encodings that raise #UD (LOCK MOV, or prefixes MOVNTI forbids) are not checked for: the CPU
//! refused those before any access, so they never reach an MMIO exit.

use super::insn::{self, DecodeError, Insn, Map, Mode};

/// A decoded MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInsn {
    /// The instruction's length in bytes: RIP advances by this much once it is emulated.
    pub len: u8,
    /// The size of the memory access in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The direction and the register or immediate involved.
    pub op: MmioOp,
}

/// The direction of an MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOp {
    /// The guest stores `src` to the device.
    Write {
        /// Where the stored value comes from.
        src: Src,
    },
    /// The guest loads from the device into `dst`.
    Read {
        /// Where the loaded value goes.
        dst: Dst,
    },
}

/// The source of a stored value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Src {
    /// A general-purpose register.
    Reg {
        /// The register number in encoding order (0 = rAX ... 15 = R15).
        index: u8,
        /// The value is bits 15:8 of register `index` (AH, CH, DH or BH; `index` is 0..=3).
        high_byte: bool,
    },
    /// An immediate, already sign-extended to the access size and masked to it.
    Imm(u64),
}

/// The destination register of a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dst {
    /// The register number in encoding order (0 = rAX ... 15 = R15).
    pub index: u8,
    /// The destination is bits 15:8 of register `index` (AH, CH, DH or BH; `index` is 0..=3).
    pub high_byte: bool,
    /// The destination's width in bytes (1, 2, 4 or 8): the access size, or more for
    /// MOVZX/MOVSX.
    pub size: u8,
    /// How the loaded value widens to `size`.
    pub extend: Extension,
}

/// How a loaded value widens to its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extension {
    /// No widening: the destination is as wide as the access.
    None,
    /// Zero extension (MOVZX).
    Zero,
    /// Sign extension (MOVSX).
    Sign,
}

/// Why an instruction could not be decoded as an MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// The bytes are not a decodable instruction.
    Decode(DecodeError),
    /// A valid instruction this module does not emulate, e.g. `ADD [mem], reg` or `MOVS`.
    Unsupported {
        /// The opcode map of the instruction.
        map: Map,
        /// The opcode byte within the map.
        opcode: u8,
    },
    /// The instruction's ModRM names a register, so it does not access memory: the bytes at
    /// RIP are not what faulted (the guest changed them, or RIP moved).
    NotMemory,
}

impl From<DecodeError> for MmioError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

const REX_W: u8 = 1 << 3;

/// Decodes the instruction at the start of `bytes` (those at the guest's RIP), executing in
/// `mode`, as an MMIO access.
pub fn decode(bytes: &[u8], mode: Mode) -> Result<MmioInsn, MmioError> {
    let i = insn::decode(bytes, mode)?;
    let unsupported = MmioError::Unsupported {
        map: i.map,
        opcode: i.opcode,
    };
    if i.modrm.is_some_and(|m| m >> 6 == 3) {
        // Check the opcode first so that e.g. `add eax, ecx` is named as unsupported.
        if !is_handled(i.map, i.opcode) {
            return Err(unsupported);
        }
        return Err(MmioError::NotMemory);
    }
    let full = i.operand_size;
    let (size, op) = match (i.map, i.opcode) {
        (Map::Primary, 0x88) => (1, write_reg(byte_reg(&i, reg(&i)))),
        (Map::Primary, 0x89) => (full, write_reg((reg(&i), false))),
        (Map::Primary, 0x8a) => (1, read(byte_reg(&i, reg(&i)), 1, Extension::None)),
        (Map::Primary, 0x8b) => (full, read((reg(&i), false), full, Extension::None)),
        // Group 11: only /0 is MOV with a memory operand.
        (Map::Primary, 0xc6 | 0xc7) if i.modrm.is_some_and(|m| m & 0x38 != 0) => {
            return Err(unsupported)
        }
        (Map::Primary, 0xc6) => (
            1,
            MmioOp::Write {
                src: Src::Imm(imm(bytes, &i, 1)),
            },
        ),
        (Map::Primary, 0xc7) => {
            // Iz: an immediate of 2 bytes for a 16-bit operand, else 4, sign-extended to 8.
            let value = if full == 2 {
                imm(bytes, &i, 2)
            } else {
                let v = imm(bytes, &i, 4);
                mask(sign_extend(v, 4), full)
            };
            (
                full,
                MmioOp::Write {
                    src: Src::Imm(value),
                },
            )
        }
        // MOV AL/rAX to or from a memory offset: the register is always AL or rAX.
        (Map::Primary, 0xa0) => (1, read((0, false), 1, Extension::None)),
        (Map::Primary, 0xa1) => (full, read((0, false), full, Extension::None)),
        (Map::Primary, 0xa2) => (1, write_reg((0, false))),
        (Map::Primary, 0xa3) => (full, write_reg((0, false))),
        (Map::Map0F, 0xb6) => (1, read((reg(&i), false), full, Extension::Zero)),
        (Map::Map0F, 0xb7) => (2, read((reg(&i), false), full, Extension::Zero)),
        (Map::Map0F, 0xbe) => (1, read((reg(&i), false), full, Extension::Sign)),
        (Map::Map0F, 0xbf) => (2, read((reg(&i), false), full, Extension::Sign)),
        // MOVNTI stores 32 bits, or 64 with REX.W; 66 does not apply to it.
        (Map::Map0F, 0xc3) => {
            let size = if i.rex & REX_W != 0 { 8 } else { 4 };
            (size, write_reg((reg(&i), false)))
        }
        _ => return Err(unsupported),
    };
    // `insn::decode` never returns more than `insn::MAX_LEN` (15) bytes.
    let len = u8::try_from(i.len).map_err(|_| DecodeError::TooLong)?;
    Ok(MmioInsn { len, size, op })
}

/// Whether `decode` handles the opcode (given a memory operand).
fn is_handled(map: Map, opcode: u8) -> bool {
    match map {
        Map::Primary => matches!(opcode, 0x88..=0x8b | 0xc6 | 0xc7 | 0xa0..=0xa3),
        Map::Map0F => matches!(opcode, 0xb6 | 0xb7 | 0xbe | 0xbf | 0xc3),
        Map::Map0F38 | Map::Map0F3A => false,
    }
}

/// ModRM.reg extended by REX.R (every opcode that calls this has a ModRM byte).
fn reg(i: &Insn) -> u8 {
    i.reg().unwrap_or(0)
}

/// A byte register operand: without any REX prefix, numbers 4..=7 are AH, CH, DH and BH; with
/// one they are SPL, BPL, SIL and DIL (SDM Vol. 2A, 3.7.2.1 / Table 3-1).
fn byte_reg(i: &Insn, index: u8) -> (u8, bool) {
    if i.rex == 0 && (4..8).contains(&index) {
        (index - 4, true)
    } else {
        (index, false)
    }
}

fn write_reg((index, high_byte): (u8, bool)) -> MmioOp {
    MmioOp::Write {
        src: Src::Reg { index, high_byte },
    }
}

fn read((index, high_byte): (u8, bool), size: u8, extend: Extension) -> MmioOp {
    MmioOp::Read {
        dst: Dst {
            index,
            high_byte,
            size,
            extend,
        },
    }
}

/// The `n`-byte little-endian immediate that ends the instruction.
fn imm(bytes: &[u8], i: &Insn, n: usize) -> u64 {
    let start = i.len.saturating_sub(n);
    bytes
        .get(start..i.len)
        .unwrap_or_default()
        .iter()
        .rev()
        .fold(0, |acc, &b| acc << 8 | u64::from(b))
}

/// `value` truncated to `size` bytes.
fn mask(value: u64, size: u8) -> u64 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        4 => value & 0xffff_ffff,
        _ => value,
    }
}

/// The low `size` bytes of `value`, sign-extended to 64 bits.
fn sign_extend(value: u64, size: u8) -> u64 {
    // The `as` casts truncate and reinterpret on purpose.
    let wide = match size {
        1 => i64::from(value as u8 as i8),
        2 => i64::from(value as u16 as i16),
        4 => i64::from(value as u32 as i32),
        _ => return value,
    };
    wide as u64
}

/// The value a write stores, masked to the access size: the source register's value (bits
/// 15:8 for AH, CH, DH, BH) or the immediate. 0 for a read.
pub fn write_data(regs: &[u64; 16], insn: &MmioInsn) -> u64 {
    let value = match insn.op {
        MmioOp::Write {
            src: Src::Reg { index, high_byte },
        } => {
            let v = regs[usize::from(index & 15)];
            if high_byte {
                v >> 8
            } else {
                v
            }
        }
        MmioOp::Write {
            src: Src::Imm(value),
        } => value,
        MmioOp::Read { .. } => 0,
    };
    mask(value, insn.size)
}

/// Completes a read: puts `data`, the value the device returned (only its low `insn.size`
/// bytes count), into the destination register the way the CPU would (SDM Vol. 1, 3.4.1.1):
/// an 8- or 16-bit destination leaves the register's other bits alone; a 32-bit destination
/// clears bits 63:32 in 64-bit mode (`mode`) and leaves them alone elsewhere; MOVZX and MOVSX
/// widen first. Does nothing for a write.
pub fn complete_read(regs: &mut [u64; 16], insn: &MmioInsn, data: u64, mode: Mode) {
    let MmioOp::Read { dst } = insn.op else {
        return;
    };
    let data = mask(data, insn.size);
    let value = match dst.extend {
        Extension::None | Extension::Zero => data,
        Extension::Sign => sign_extend(data, insn.size),
    };
    let reg = &mut regs[usize::from(dst.index & 15)];
    let merge =
        |old: u64, bits: u64, shift: u32| (old & !(bits << shift)) | (value & bits) << shift;
    *reg = match dst.size {
        1 if dst.high_byte => merge(*reg, 0xff, 8),
        1 => merge(*reg, 0xff, 0),
        2 => merge(*reg, 0xffff, 0),
        4 if mode == Mode::Bits64 => value & 0xffff_ffff,
        4 => merge(*reg, 0xffff_ffff, 0),
        _ => value,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::{Bits16, Bits32, Bits64};

    fn ok(bytes: &[u8], mode: Mode) -> MmioInsn {
        match decode(bytes, mode) {
            Ok(i) => i,
            Err(e) => panic!("{bytes:02x?}: {e:?}"),
        }
    }

    fn w_reg(len: u8, size: u8, index: u8, high_byte: bool) -> MmioInsn {
        MmioInsn {
            len,
            size,
            op: MmioOp::Write {
                src: Src::Reg { index, high_byte },
            },
        }
    }

    fn w_imm(len: u8, size: u8, value: u64) -> MmioInsn {
        MmioInsn {
            len,
            size,
            op: MmioOp::Write {
                src: Src::Imm(value),
            },
        }
    }

    fn r(
        len: u8,
        size: u8,
        index: u8,
        high_byte: bool,
        dst_size: u8,
        extend: Extension,
    ) -> MmioInsn {
        MmioInsn {
            len,
            size,
            op: MmioOp::Read {
                dst: Dst {
                    index,
                    high_byte,
                    size: dst_size,
                    extend,
                },
            },
        }
    }

    /// A plain read of `size` bytes into a register as wide.
    fn rd(len: u8, size: u8, index: u8) -> MmioInsn {
        r(len, size, index, false, size, Extension::None)
    }

    #[test]
    fn mov_stores_from_registers_64() {
        let m = Bits64;
        assert_eq!(ok(&[0x89, 0x08], m), w_reg(2, 4, 1, false)); // mov [rax], ecx
        assert_eq!(ok(&[0x48, 0x89, 0x08], m), w_reg(3, 8, 1, false)); // mov [rax], rcx
        assert_eq!(ok(&[0x66, 0x89, 0x08], m), w_reg(3, 2, 1, false)); // mov [rax], cx
        assert_eq!(ok(&[0x4c, 0x89, 0x00], m), w_reg(3, 8, 8, false)); // mov [rax], r8
        assert_eq!(ok(&[0x45, 0x89, 0x3f], m), w_reg(3, 4, 15, false)); // mov [r15], r15d
        assert_eq!(ok(&[0x41, 0x89, 0x07], m), w_reg(3, 4, 0, false)); // mov [r15], eax
                                                                       // mov [rax+r15*1], eax: REX.X only selects the index register.
        assert_eq!(ok(&[0x42, 0x89, 0x04, 0x38], m), w_reg(4, 4, 0, false));
        // mov [rip+0x12345678], edx
        assert_eq!(
            ok(&[0x89, 0x15, 0x78, 0x56, 0x34, 0x12], m),
            w_reg(6, 4, 2, false)
        );
        // mov [rbx+rsi*4+0x10], esp
        assert_eq!(ok(&[0x89, 0x64, 0xb3, 0x10], m), w_reg(4, 4, 4, false));
        // 66 and REX.W: REX.W wins.
        assert_eq!(ok(&[0x66, 0x48, 0x89, 0x08], m), w_reg(4, 8, 1, false));
    }

    #[test]
    fn byte_registers() {
        let m = Bits64;
        assert_eq!(ok(&[0x88, 0x08], m), w_reg(2, 1, 1, false)); // mov [rax], cl
        assert_eq!(ok(&[0x88, 0x20], m), w_reg(2, 1, 0, true)); // mov [rax], ah
        assert_eq!(ok(&[0x88, 0x38], m), w_reg(2, 1, 3, true)); // mov [rax], bh
        assert_eq!(ok(&[0x40, 0x88, 0x20], m), w_reg(3, 1, 4, false)); // mov [rax], spl
        assert_eq!(ok(&[0x40, 0x88, 0x38], m), w_reg(3, 1, 7, false)); // mov [rax], dil
        assert_eq!(ok(&[0x41, 0x88, 0x20], m), w_reg(3, 1, 4, false)); // mov [r8], spl
        assert_eq!(ok(&[0x44, 0x88, 0x38], m), w_reg(3, 1, 15, false)); // mov [rax], r15b
                                                                        // A REX that is not last is dropped, and with it the SPL..DIL meaning.
        assert_eq!(ok(&[0x40, 0x66, 0x88, 0x20], m), w_reg(4, 1, 0, true));
        // mov ah, [rsi]; mov sil, [rsi]; mov dh, [esi] in 32-bit mode.
        assert_eq!(ok(&[0x8a, 0x26], m), r(2, 1, 0, true, 1, Extension::None));
        assert_eq!(
            ok(&[0x40, 0x8a, 0x36], m),
            r(3, 1, 6, false, 1, Extension::None)
        );
        assert_eq!(
            ok(&[0x8a, 0x36], Bits32),
            r(2, 1, 2, true, 1, Extension::None)
        );
        // mov [si], bh in 16-bit mode.
        assert_eq!(ok(&[0x88, 0x3c], Bits16), w_reg(2, 1, 3, true));
    }

    #[test]
    fn mov_loads_64() {
        let m = Bits64;
        assert_eq!(ok(&[0x8b, 0x05, 1, 2, 3, 4], m), rd(6, 4, 0)); // mov eax, [rip+d32]
        assert_eq!(ok(&[0x48, 0x8b, 0x0a], m), rd(3, 8, 1)); // mov rcx, [rdx]
        assert_eq!(ok(&[0x66, 0x8b, 0x0a], m), rd(3, 2, 1)); // mov cx, [rdx]
        assert_eq!(ok(&[0x4d, 0x8b, 0x48, 0x08], m), rd(4, 8, 9)); // mov r9, [r8+8]
        assert_eq!(ok(&[0x8a, 0x0a], m), rd(2, 1, 1)); // mov cl, [rdx]
                                                       // mov eax, [rsp+8]; mov eax, [0x1000] (SIB, no base).
        assert_eq!(ok(&[0x8b, 0x44, 0x24, 0x08], m), rd(4, 4, 0));
        assert_eq!(ok(&[0x8b, 0x04, 0x25, 0, 0x10, 0, 0], m), rd(7, 4, 0));
        // Segment overrides and an address-size override change nothing here.
        assert_eq!(ok(&[0x65, 0x48, 0x8b, 0x08], m), rd(4, 8, 1)); // mov rcx, gs:[rax]
        assert_eq!(ok(&[0x64, 0x67, 0x8b, 0x08], m), rd(4, 4, 1)); // mov ecx, fs:[eax]
        assert_eq!(ok(&[0x2e, 0x8b, 0x08], m), rd(3, 4, 1)); // mov ecx, cs:[rax]
    }

    #[test]
    fn mov_immediates() {
        let m = Bits64;
        assert_eq!(ok(&[0xc6, 0x00, 0xab], m), w_imm(3, 1, 0xab)); // mov byte [rax], 0xab
        assert_eq!(ok(&[0x66, 0xc7, 0x00, 0x34, 0x12], m), w_imm(5, 2, 0x1234));
        assert_eq!(
            ok(&[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12], m),
            w_imm(6, 4, 0x1234_5678)
        );
        assert_eq!(
            ok(&[0xc7, 0x00, 0, 0, 0, 0x80], m),
            w_imm(6, 4, 0x8000_0000)
        );
        // REX.W: imm32 sign-extended to 64 bits.
        assert_eq!(
            ok(&[0x48, 0xc7, 0x00, 0, 0, 0, 0x80], m),
            w_imm(7, 8, 0xffff_ffff_8000_0000)
        );
        assert_eq!(
            ok(&[0x48, 0xc7, 0x00, 0, 0, 0, 0x7f], m),
            w_imm(7, 8, 0x7f00_0000)
        );
        // mov qword [rax+0x10], -1: disp32 then imm32.
        assert_eq!(
            ok(
                &[0x48, 0xc7, 0x80, 0x10, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
                m
            ),
            w_imm(11, 8, u64::MAX)
        );
        // mov byte [rip+d32], 0x5a; mov dword [r12+disp8], 1 (SIB because base is r12).
        assert_eq!(ok(&[0xc6, 0x05, 1, 2, 3, 4, 0x5a], m), w_imm(7, 1, 0x5a));
        assert_eq!(
            ok(&[0x41, 0xc7, 0x44, 0x24, 0x08, 1, 0, 0, 0], m),
            w_imm(9, 4, 1)
        );
        // Bytes after the instruction are not part of the immediate.
        assert_eq!(ok(&[0xc6, 0x00, 0xab, 0xcd, 0xef], m), w_imm(3, 1, 0xab));
    }

    #[test]
    fn moffs() {
        let m = Bits64;
        let off64 = [1, 2, 3, 4, 5, 6, 7, 8];
        let with = |prefix: &[u8], op: u8, off: &[u8]| -> Vec<u8> { [prefix, &[op], off].concat() };
        assert_eq!(ok(&with(&[], 0xa0, &off64), m), rd(9, 1, 0)); // mov al, [moffs64]
        assert_eq!(ok(&with(&[], 0xa1, &off64), m), rd(9, 4, 0)); // mov eax, [moffs64]
        assert_eq!(ok(&with(&[0x48], 0xa1, &off64), m), rd(10, 8, 0)); // mov rax, [moffs64]
        assert_eq!(ok(&with(&[0x66], 0xa1, &off64), m), rd(10, 2, 0)); // mov ax, [moffs64]
        assert_eq!(ok(&with(&[], 0xa2, &off64), m), w_reg(9, 1, 0, false)); // mov [moffs64], al
        assert_eq!(ok(&with(&[0x48], 0xa3, &off64), m), w_reg(10, 8, 0, false));
        // 67: a 32-bit offset.
        assert_eq!(ok(&with(&[0x67], 0xa0, &off64[..4]), m), rd(6, 1, 0));
        assert_eq!(
            ok(&with(&[0x67], 0xa3, &off64[..4]), m),
            w_reg(6, 4, 0, false)
        );
        // With REX.B the register is still rAX.
        assert_eq!(ok(&with(&[0x49], 0xa1, &off64), m), rd(10, 8, 0));
        // 32-bit and 16-bit modes.
        assert_eq!(ok(&with(&[], 0xa1, &off64[..4]), Bits32), rd(5, 4, 0));
        assert_eq!(ok(&with(&[0x67], 0xa1, &off64[..2]), Bits32), rd(4, 4, 0));
        assert_eq!(ok(&with(&[], 0xa1, &off64[..2]), Bits16), rd(3, 2, 0));
        assert_eq!(
            ok(&with(&[0x66], 0xa3, &off64[..2]), Bits16),
            w_reg(4, 4, 0, false)
        );
        assert_eq!(
            ok(&with(&[0x67], 0xa2, &off64[..4]), Bits16),
            w_reg(6, 1, 0, false)
        );
    }

    #[test]
    fn movzx_movsx() {
        let m = Bits64;
        use Extension::{Sign, Zero};
        assert_eq!(ok(&[0x0f, 0xb6, 0x00], m), r(3, 1, 0, false, 4, Zero)); // movzx eax, byte
        assert_eq!(ok(&[0x48, 0x0f, 0xb7, 0x08], m), r(4, 2, 1, false, 8, Zero)); // rcx, word
        assert_eq!(ok(&[0x66, 0x0f, 0xb6, 0x00], m), r(4, 1, 0, false, 2, Zero)); // ax, byte
        assert_eq!(ok(&[0x0f, 0xbe, 0x20], m), r(3, 1, 4, false, 4, Sign)); // movsx esp, byte
        assert_eq!(ok(&[0x4c, 0x0f, 0xbf, 0x00], m), r(4, 2, 8, false, 8, Sign)); // r8, word
        assert_eq!(ok(&[0x48, 0x0f, 0xbe, 0x00], m), r(4, 1, 0, false, 8, Sign)); // rax, byte
                                                                                  // movzx eax, byte [rbp-16]
        assert_eq!(ok(&[0x0f, 0xb6, 0x45, 0xf0], m), r(4, 1, 0, false, 4, Zero));
        // 16-bit mode: movzx ax, byte [bx]; movsx eax, word [bx+si].
        assert_eq!(ok(&[0x0f, 0xb6, 0x07], Bits16), r(3, 1, 0, false, 2, Zero));
        assert_eq!(
            ok(&[0x66, 0x0f, 0xbf, 0x00], Bits16),
            r(4, 2, 0, false, 4, Sign)
        );
    }

    #[test]
    fn movnti() {
        let m = Bits64;
        assert_eq!(ok(&[0x0f, 0xc3, 0x08], m), w_reg(3, 4, 1, false)); // movnti [rax], ecx
        assert_eq!(ok(&[0x48, 0x0f, 0xc3, 0x08], m), w_reg(4, 8, 1, false)); // rcx
        assert_eq!(ok(&[0x4c, 0x0f, 0xc3, 0x00], m), w_reg(4, 8, 8, false)); // r8
        assert_eq!(ok(&[0x0f, 0xc3, 0x08], Bits16), w_reg(3, 4, 1, false));
    }

    #[test]
    fn modes_32_and_16() {
        assert_eq!(ok(&[0x89, 0x08], Bits32), w_reg(2, 4, 1, false)); // mov [eax], ecx
        assert_eq!(ok(&[0x66, 0x89, 0x08], Bits32), w_reg(3, 2, 1, false)); // mov [eax], cx
        assert_eq!(ok(&[0x8b, 0x1d, 1, 2, 3, 4], Bits32), rd(6, 4, 3)); // mov ebx, [d32]
        assert_eq!(ok(&[0x67, 0x8b, 0x46, 0x02], Bits32), rd(4, 4, 0)); // mov eax, [bp+2]
                                                                        // 0x48 is DEC EAX outside 64-bit mode, not REX.W.
        assert_eq!(
            decode(&[0x48, 0x89, 0x08], Bits32),
            Err(MmioError::Unsupported {
                map: Map::Primary,
                opcode: 0x48
            })
        );
        assert_eq!(ok(&[0x89, 0x07], Bits16), w_reg(2, 2, 0, false)); // mov [bx], ax
        assert_eq!(ok(&[0x66, 0x89, 0x07], Bits16), w_reg(3, 4, 0, false)); // mov [bx], eax
        assert_eq!(ok(&[0x8b, 0x46, 0x02], Bits16), rd(3, 2, 0)); // mov ax, [bp+2]
        assert_eq!(ok(&[0x67, 0x8b, 0x06], Bits16), rd(3, 2, 0)); // mov ax, [esi]
                                                                  // mov word [0x1234], 0x5678; mov dword [0x1234], 0x12345678.
        assert_eq!(
            ok(&[0xc7, 0x06, 0x34, 0x12, 0x78, 0x56], Bits16),
            w_imm(6, 2, 0x5678)
        );
        assert_eq!(
            ok(
                &[0x66, 0xc7, 0x06, 0x34, 0x12, 0x78, 0x56, 0x34, 0x12],
                Bits16
            ),
            w_imm(9, 4, 0x1234_5678)
        );
        // es: mov [di], dl
        assert_eq!(ok(&[0x26, 0x88, 0x15], Bits16), w_reg(3, 1, 2, false));
    }

    #[test]
    fn refused() {
        let m = Bits64;
        let unsupported = |map, opcode| Err(MmioError::Unsupported { map, opcode });
        assert_eq!(decode(&[0x01, 0x08], m), unsupported(Map::Primary, 0x01)); // add [rax], ecx
        assert_eq!(decode(&[0x87, 0x08], m), unsupported(Map::Primary, 0x87)); // xchg
        assert_eq!(decode(&[0xa5], m), unsupported(Map::Primary, 0xa5)); // movsd
        assert_eq!(decode(&[0xf3, 0xa4], m), unsupported(Map::Primary, 0xa4)); // rep movsb
        assert_eq!(decode(&[0xab], m), unsupported(Map::Primary, 0xab)); // stosd
        assert_eq!(
            decode(&[0x83, 0x08, 0x01], m),
            unsupported(Map::Primary, 0x83)
        ); // or
        assert_eq!(
            decode(&[0xf7, 0x00, 1, 0, 0, 0], m),
            unsupported(Map::Primary, 0xf7)
        ); // test
        assert_eq!(
            decode(&[0x0f, 0xb1, 0x0a], m),
            unsupported(Map::Map0F, 0xb1)
        ); // cmpxchg
           // movdqa xmm0, [rax]
        assert_eq!(
            decode(&[0x66, 0x0f, 0x6f, 0x00], m),
            unsupported(Map::Map0F, 0x6f)
        );
        // C6 /1 with a memory operand is not MOV.
        assert_eq!(
            decode(&[0xc6, 0x08, 0x01], m),
            unsupported(Map::Primary, 0xc6)
        );
        assert_eq!(
            decode(&[0xc7, 0x38, 1, 2, 3, 4], m),
            unsupported(Map::Primary, 0xc7)
        );
        // Register operands do not access memory.
        assert_eq!(decode(&[0x89, 0xc8], m), Err(MmioError::NotMemory)); // mov eax, ecx
        assert_eq!(decode(&[0x0f, 0xb6, 0xc0], m), Err(MmioError::NotMemory)); // movzx
        assert_eq!(decode(&[0x01, 0xc8], m), unsupported(Map::Primary, 0x01)); // add eax, ecx
                                                                               // Undecodable bytes.
        assert_eq!(
            decode(&[0x89], m),
            Err(MmioError::Decode(DecodeError::Truncated))
        );
        assert_eq!(
            decode(&[0xc7, 0x00, 1, 2], m),
            Err(MmioError::Decode(DecodeError::Truncated))
        );
        assert_eq!(
            decode(&[], m),
            Err(MmioError::Decode(DecodeError::Truncated))
        );
        assert_eq!(
            decode(&[0x66; 15], m),
            Err(MmioError::Decode(DecodeError::TooLong))
        );
        // vmovdqu ymm0, [rax]
        assert_eq!(
            decode(&[0xc5, 0xfe, 0x6f, 0x00], m),
            Err(MmioError::Decode(DecodeError::Unsupported))
        );
    }

    const REGS: [u64; 16] = [
        0x0011_2233_4455_6677,
        0x1111_1111_dead_beef,
        0x2222_2222_2222_2222,
        0x3333_3333_3333_a5c3,
        0x4444_4444_4444_4444,
        0x5555_5555_5555_5555,
        0x6666_6666_6666_6666,
        0x7777_7777_7777_7777,
        0x8888_8888_8888_8888,
        0x9999_9999_9999_9999,
        0xaaaa_aaaa_aaaa_aaaa,
        0xbbbb_bbbb_bbbb_bbbb,
        0xcccc_cccc_cccc_cccc,
        0xdddd_dddd_dddd_dddd,
        0xeeee_eeee_eeee_eeee,
        0xffff_ffff_ffff_ff0f,
    ];

    #[test]
    fn write_data_from_registers_and_immediates() {
        let data = |bytes: &[u8]| write_data(&REGS, &ok(bytes, Bits64));
        assert_eq!(data(&[0x89, 0x08]), 0xdead_beef); // ecx
        assert_eq!(data(&[0x48, 0x89, 0x08]), 0x1111_1111_dead_beef); // rcx
        assert_eq!(data(&[0x66, 0x89, 0x08]), 0xbeef); // cx
        assert_eq!(data(&[0x88, 0x08]), 0xef); // cl
        assert_eq!(data(&[0x88, 0x38]), 0xa5); // bh
        assert_eq!(data(&[0x88, 0x18]), 0xc3); // bl
        assert_eq!(data(&[0x40, 0x88, 0x38]), 0x77); // dil
        assert_eq!(data(&[0x44, 0x88, 0x38]), 0x0f); // r15b
        assert_eq!(data(&[0x4c, 0x89, 0x38]), 0xffff_ffff_ffff_ff0f); // r15
        assert_eq!(data(&[0xa2, 0, 0, 0, 0, 0, 0, 0, 0]), 0x77); // al
        assert_eq!(data(&[0x0f, 0xc3, 0x18]), 0x3333_a5c3); // movnti ebx
        assert_eq!(data(&[0xc6, 0x00, 0xab]), 0xab);
        assert_eq!(
            data(&[0x48, 0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff]),
            u64::MAX - 1
        );
        assert_eq!(data(&[0xc7, 0x00, 0xfe, 0xff, 0xff, 0xff]), 0xffff_fffe);
        // A read stores nothing.
        assert_eq!(data(&[0x8b, 0x00]), 0);
    }

    /// The registers after completing the read `bytes` with `data`.
    fn after(bytes: &[u8], mode: Mode, data: u64) -> [u64; 16] {
        let mut regs = REGS;
        complete_read(&mut regs, &ok(bytes, mode), data, mode);
        regs
    }

    /// `REGS` with register `index` set to `value`.
    fn with(index: usize, value: u64) -> [u64; 16] {
        let mut regs = REGS;
        regs[index] = value;
        regs
    }

    #[test]
    fn complete_read_register_write_rules() {
        // 32-bit destination: zero-extended in 64-bit mode, upper half kept elsewhere.
        assert_eq!(
            after(&[0x8b, 0x08], Bits64, 0x1234_5678),
            with(1, 0x1234_5678)
        );
        assert_eq!(
            after(&[0x8b, 0x08], Bits32, 0x1234_5678),
            with(1, 0x1111_1111_1234_5678)
        );
        assert_eq!(
            after(&[0x66, 0x8b, 0x08], Bits16, 0x1234_5678),
            with(1, 0x1111_1111_1234_5678)
        );
        // 64-bit destination: all of it.
        assert_eq!(
            after(&[0x4c, 0x8b, 0x08], Bits64, 0x0102_0304_0506_0708),
            with(9, 0x0102_0304_0506_0708)
        );
        // 16- and 8-bit destinations keep the other bits.
        assert_eq!(
            after(&[0x66, 0x8b, 0x08], Bits64, 0x1234),
            with(1, 0x1111_1111_dead_1234)
        );
        assert_eq!(
            after(&[0x8b, 0x08], Bits16, 0x1234),
            with(1, 0x1111_1111_dead_1234)
        );
        assert_eq!(
            after(&[0x8a, 0x08], Bits64, 0x12),
            with(1, 0x1111_1111_dead_be12)
        );
        assert_eq!(
            after(&[0x8a, 0x28], Bits64, 0x12),
            with(1, 0x1111_1111_dead_12ef)
        ); // ch
        assert_eq!(
            after(&[0x40, 0x8a, 0x28], Bits64, 0x12),
            with(5, 0x5555_5555_5555_5512)
        ); // bpl
        assert_eq!(
            after(&[0x44, 0x8a, 0x38], Bits64, 0x12),
            with(15, 0xffff_ffff_ffff_ff12)
        ); // r15b
        assert_eq!(
            after(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0], Bits64, 0x99),
            with(0, 0x0011_2233_4455_6699)
        );
        // Bits beyond the access size are ignored.
        assert_eq!(
            after(&[0x8a, 0x08], Bits64, 0xffff_ff12),
            with(1, 0x1111_1111_dead_be12)
        );
        assert_eq!(after(&[0x8b, 0x08], Bits64, u64::MAX), with(1, 0xffff_ffff));
    }

    #[test]
    fn complete_read_extensions() {
        // movzx / movsx eax, byte [rax] in 64-bit mode (the 32-bit result zero-extends).
        assert_eq!(after(&[0x0f, 0xb6, 0x00], Bits64, 0x80), with(0, 0x80));
        assert_eq!(
            after(&[0x0f, 0xbe, 0x00], Bits64, 0x80),
            with(0, 0xffff_ff80)
        );
        assert_eq!(after(&[0x0f, 0xbe, 0x00], Bits64, 0x7f), with(0, 0x7f));
        // In 32-bit mode the upper half stays.
        assert_eq!(
            after(&[0x0f, 0xbe, 0x00], Bits32, 0x80),
            with(0, 0x0011_2233_ffff_ff80)
        );
        // 64-bit destinations.
        assert_eq!(
            after(&[0x48, 0x0f, 0xbe, 0x00], Bits64, 0x80),
            with(0, 0xffff_ffff_ffff_ff80)
        );
        assert_eq!(
            after(&[0x48, 0x0f, 0xbf, 0x00], Bits64, 0x8000),
            with(0, 0xffff_ffff_ffff_8000)
        );
        assert_eq!(
            after(&[0x48, 0x0f, 0xb7, 0x00], Bits64, 0xffff_8000),
            with(0, 0x8000)
        );
        // 16-bit destinations keep bits 63:16.
        assert_eq!(
            after(&[0x66, 0x0f, 0xbe, 0x00], Bits64, 0x80),
            with(0, 0x0011_2233_4455_ff80)
        );
        assert_eq!(
            after(&[0x66, 0x0f, 0xb6, 0x00], Bits64, 0x80),
            with(0, 0x0011_2233_4455_0080)
        );
        assert_eq!(
            after(&[0x0f, 0xb6, 0x07], Bits16, 0xfe),
            with(0, 0x0011_2233_4455_00fe)
        );
        // movsx r8d, word [rax]
        assert_eq!(
            after(&[0x44, 0x0f, 0xbf, 0x00], Bits64, 0x8001),
            with(8, 0xffff_8001)
        );
    }

    #[test]
    fn complete_read_ignores_writes() {
        let mut regs = REGS;
        complete_read(&mut regs, &ok(&[0x89, 0x08], Bits64), 0x1234, Bits64);
        complete_read(&mut regs, &ok(&[0xc6, 0x00, 1], Bits64), 0x1234, Bits64);
        assert_eq!(regs, REGS);
    }
}
