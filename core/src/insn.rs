//! x86 instruction length and operand decoding.
//!
//! QEMU's SVM saves no next RIP (no NRIP save) and has no decode assists, so on an intercept
//! Keel must find the length of the instruction at RIP itself to skip it, and for MOV to/from
//! a control register, which register it names. This decoder handles the legacy encodings
//! (legacy prefixes, REX, the one-byte map, 0F, 0F 38 and 0F 3A) in every operating mode, per
//! the SDM Vol. 2, chapter 2 and appendix A (opcode maps). VEX/EVEX/XOP encodings are reported
//! as [`DecodeError::Unsupported`]: no intercepted instruction uses them.

/// The processor mode the instruction executes in: it sets the default operand and address
/// sizes (SDM Vol. 1, 3.6) and whether REX exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Real mode, virtual-8086 mode, or protected mode with a 16-bit code segment.
    Bits16,
    /// Protected or compatibility mode with a 32-bit code segment.
    Bits32,
    /// 64-bit mode.
    Bits64,
}

/// Why decoding failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Longer than the architectural limit of 15 bytes (the CPU raises #GP).
    TooLong,
    /// An encoding this decoder does not handle (VEX/EVEX/XOP, or invalid in this mode).
    Unsupported,
}

/// Which opcode map the opcode byte belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// The one-byte map.
    Primary,
    /// 0F xx.
    Map0F,
    /// 0F 38 xx.
    Map0F38,
    /// 0F 3A xx.
    Map0F3A,
}

/// A decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Length in bytes, prefixes included.
    pub len: usize,
    /// The opcode map.
    pub map: Map,
    /// The opcode byte within the map.
    pub opcode: u8,
    /// The ModRM byte, when the instruction has one.
    pub modrm: Option<u8>,
    /// The REX prefix (0 when absent; only in 64-bit mode).
    pub rex: u8,
    /// Operand size in bytes for instructions whose size is not fixed by the opcode: 2, 4 or 8.
    pub operand_size: u8,
    /// Address size in bytes: 2, 4 or 8.
    pub address_size: u8,
    /// A REP/REPE (F3) prefix is present.
    pub rep: bool,
    /// A REPNE (F2) prefix is present.
    pub repne: bool,
    /// A LOCK prefix is present.
    pub lock: bool,
}

const REX_W: u8 = 1 << 3;
const REX_R: u8 = 1 << 2;
const REX_B: u8 = 1 << 0;

impl Insn {
    /// ModRM.reg extended by REX.R: a register number or a control register number.
    pub fn reg(&self) -> Option<u8> {
        self.modrm
            .map(|m| ((m >> 3) & 7) | if self.rex & REX_R != 0 { 8 } else { 0 })
    }

    /// ModRM.rm extended by REX.B, when ModRM names a register (mod = 11, or MOV CR/DR, which
    /// ignores mod).
    pub fn rm_register(&self) -> Option<u8> {
        let m = self.modrm?;
        (m >> 6 == 3 || self.is_mov_cr_dr())
            .then_some((m & 7) | if self.rex & REX_B != 0 { 8 } else { 0 })
    }

    /// MOV to or from a control or debug register (0F 20..=0F 23).
    pub fn is_mov_cr_dr(&self) -> bool {
        is_mov_cr_dr(self.map, self.opcode)
    }
}

/// MOV CR/DR (0F 20..=0F 23) always names a register, whatever ModRM.mod says (SDM Vol. 2B,
/// MOV—Move to/from Control Registers).
fn is_mov_cr_dr(map: Map, opcode: u8) -> bool {
    map == Map::Map0F && (0x20..=0x23).contains(&opcode)
}

/// The architectural maximum instruction length (SDM Vol. 2A, 2.3.11).
pub const MAX_LEN: usize = 15;

/// Sizes of an immediate operand.
#[derive(Clone, Copy)]
enum Imm {
    None,
    /// A fixed number of bytes.
    Bytes(usize),
    /// 2 bytes with a 16-bit operand size, else 4 ("Iz").
    Z,
    /// 2, 4 or 8 bytes: the operand size ("Iv", MOV r, imm only).
    V,
    /// Iz plus 2 (far pointer "Ap": offset then selector).
    FarPointer,
    /// The address size (MOV moffs, A0..=A3).
    Moffs,
}

/// Whether a primary-map opcode has a ModRM byte (SDM Vol. 2D, Table A-2).
fn primary_has_modrm(op: u8) -> bool {
    match op {
        0x00..=0x3f => op & 7 < 4,
        0x62 | 0x63 | 0x69 | 0x6b => true,
        0x80..=0x8f => true,
        0xc0 | 0xc1 | 0xc4..=0xc7 => true,
        0xd0..=0xd3 | 0xd8..=0xdf => true,
        0xf6 | 0xf7 | 0xfe | 0xff => true,
        _ => false,
    }
}

/// The immediate of a primary-map opcode; `reg` is ModRM.reg for the groups that need it.
fn primary_imm(op: u8, reg: u8) -> Imm {
    match op {
        0x00..=0x3f if op & 7 == 4 => Imm::Bytes(1),
        0x00..=0x3f if op & 7 == 5 => Imm::Z,
        0x68 | 0x69 | 0x81 | 0xa9 | 0xc7 | 0xe8 | 0xe9 => Imm::Z,
        0x6a | 0x6b | 0x70..=0x7f | 0x80 | 0x82 | 0x83 | 0xa8 | 0xb0..=0xb7 => Imm::Bytes(1),
        0xc0 | 0xc1 | 0xc6 | 0xcd | 0xd4 | 0xd5 | 0xe0..=0xe7 | 0xeb => Imm::Bytes(1),
        0xa0..=0xa3 => Imm::Moffs,
        0xb8..=0xbf => Imm::V,
        0xc2 | 0xca => Imm::Bytes(2),
        0xc8 => Imm::Bytes(3),
        0x9a | 0xea => Imm::FarPointer,
        // TEST r/m, imm is /0 and /1 of groups 3.
        0xf6 if reg < 2 => Imm::Bytes(1),
        0xf7 if reg < 2 => Imm::Z,
        _ => Imm::None,
    }
}

/// Whether a 0F-map opcode has a ModRM byte (SDM Vol. 2D, Table A-3).
fn map0f_has_modrm(op: u8) -> bool {
    !matches!(
        op,
        0x04..=0x09 | 0x0b | 0x0e | 0x30..=0x37 | 0x77 | 0x80..=0x8f | 0xa0..=0xa2 | 0xa8..=0xaa | 0xc8..=0xcf
    )
}

/// The immediate of a 0F-map opcode; `prefix` is the mandatory prefix in effect (66, F2, F3
/// or none), for the opcodes it changes.
fn map0f_imm(op: u8, prefix: Option<u8>) -> Imm {
    match op {
        0x0f | 0x70..=0x73 | 0xa4 | 0xac | 0xba | 0xc2 | 0xc4..=0xc6 => Imm::Bytes(1),
        // AMD's SSE4a EXTRQ (66 0F 78 /0 ib ib) and INSERTQ (F2 0F 78 /r ib ib) take two
        // immediates; without a prefix 0F 78 is VMREAD, which has none (APM Vol. 4).
        0x78 if matches!(prefix, Some(0x66 | 0xf2)) => Imm::Bytes(2),
        0x80..=0x8f => Imm::Z,
        _ => Imm::None,
    }
}

/// Opcodes that do not exist in 64-bit mode (SDM Vol. 2D, Table A-2 "i64").
fn invalid_in_64(op: u8) -> bool {
    matches!(
        op,
        0x06 | 0x07
            | 0x0e
            | 0x16
            | 0x17
            | 0x1e
            | 0x1f
            | 0x27
            | 0x2f
            | 0x37
            | 0x3f
            | 0x60
            | 0x61
            | 0x62
            | 0x82
            | 0x9a
            | 0xc4
            | 0xc5
            | 0xce
            | 0xd4
            | 0xd5
            | 0xd6
            | 0xea
    )
}

/// A cursor over the instruction bytes that enforces the 15-byte limit.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        self.bytes
            .get(self.pos)
            .copied()
            .ok_or(DecodeError::Truncated)
    }

    fn next(&mut self) -> Result<u8, DecodeError> {
        let b = self.peek()?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        let end = self.pos + n;
        if end > MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        if end > self.bytes.len() {
            return Err(DecodeError::Truncated);
        }
        self.pos = end;
        Ok(())
    }
}

/// Decodes the instruction at the start of `bytes`, executing in `mode`.
///
/// `bytes` may extend past the instruction; if it ends first, the result is
/// [`DecodeError::Truncated`] (fetch more bytes and retry).
pub fn decode(bytes: &[u8], mode: Mode) -> Result<Insn, DecodeError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (mut opsize_prefix, mut addrsize_prefix) = (false, false);
    let (mut rep, mut repne, mut lock) = (false, false, false);
    let mut rex = 0u8;

    // Legacy prefixes in any order, then (64-bit mode) REX, which counts only when it comes
    // last, right before the opcode (SDM Vol. 2A, 2.2.1).
    loop {
        let b = c.peek()?;
        match b {
            0x66 => opsize_prefix = true,
            0x67 => addrsize_prefix = true,
            0xf0 => lock = true,
            0xf2 => (repne, rep) = (true, false),
            0xf3 => (rep, repne) = (true, false),
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 => {}
            0x40..=0x4f if mode == Mode::Bits64 => {
                rex = b;
                c.next()?;
                continue;
            }
            _ => break,
        }
        // A legacy prefix after REX cancels the REX.
        rex = 0;
        c.next()?;
    }

    let operand_size = match mode {
        _ if rex & REX_W != 0 => 8,
        Mode::Bits16 => {
            if opsize_prefix {
                4
            } else {
                2
            }
        }
        Mode::Bits32 | Mode::Bits64 => {
            if opsize_prefix {
                2
            } else {
                4
            }
        }
    };
    let address_size = match (mode, addrsize_prefix) {
        (Mode::Bits16, false) | (Mode::Bits32, true) => 2,
        (Mode::Bits16, true) | (Mode::Bits32, false) | (Mode::Bits64, true) => 4,
        (Mode::Bits64, false) => 8,
    };

    let first = c.next()?;
    let (map, opcode) = match first {
        0x0f => match c.next()? {
            0x38 => (Map::Map0F38, c.next()?),
            0x3a => (Map::Map0F3A, c.next()?),
            op => (Map::Map0F, op),
        },
        // VEX (C4, C5), EVEX (62) and XOP (8F) are prefixes in 64-bit mode, and elsewhere when
        // the next byte's mod field is 11.
        0xc4 | 0xc5 | 0x62 if mode == Mode::Bits64 || c.peek()? >> 6 == 3 => {
            return Err(DecodeError::Unsupported)
        }
        0x8f if c.peek()? & 0x38 != 0 => return Err(DecodeError::Unsupported),
        op => (Map::Primary, op),
    };
    if map == Map::Primary && mode == Mode::Bits64 && invalid_in_64(opcode) {
        return Err(DecodeError::Unsupported);
    }

    let has_modrm = match map {
        Map::Primary => primary_has_modrm(opcode),
        Map::Map0F => map0f_has_modrm(opcode),
        Map::Map0F38 | Map::Map0F3A => true,
    };
    let modrm = if has_modrm { Some(c.next()?) } else { None };

    if let Some(m) = modrm {
        let (md, rm) = (m >> 6, m & 7);
        if md != 3 && !is_mov_cr_dr(map, opcode) {
            if address_size == 2 {
                // 16-bit addressing (SDM Vol. 2A, Table 2-1).
                let disp = match md {
                    0 if rm == 6 => 2,
                    0 => 0,
                    1 => 1,
                    _ => 2,
                };
                c.skip(disp)?;
            } else {
                // 32/64-bit addressing (Tables 2-2, 2-3).
                let mut disp = match md {
                    0 if rm == 5 => 4,
                    0 => 0,
                    1 => 1,
                    _ => 4,
                };
                if rm == 4 {
                    let sib = c.next()?;
                    if md == 0 && sib & 7 == 5 {
                        disp = 4;
                    }
                }
                c.skip(disp)?;
            }
        }
    }

    let imm = match map {
        Map::Primary => primary_imm(opcode, modrm.map_or(0, |m| (m >> 3) & 7)),
        Map::Map0F => {
            // F2 and F3 select the instruction over 66 (SDM Vol. 2A, 2.1.2); of F2 and F3 the
            // last one counts, as `rep`/`repne` record.
            let mandatory = if repne {
                Some(0xf2)
            } else if rep {
                Some(0xf3)
            } else if opsize_prefix {
                Some(0x66)
            } else {
                None
            };
            map0f_imm(opcode, mandatory)
        }
        Map::Map0F38 => Imm::None,
        Map::Map0F3A => Imm::Bytes(1),
    };
    let z = if operand_size == 2 { 2 } else { 4 };
    let imm_len = match imm {
        Imm::None => 0,
        Imm::Bytes(n) => n,
        // Near branches (E8, E9, 0F 8x) take rel32 in 64-bit mode whatever the operand size
        // (Intel's behaviour; SDM Vol. 2A, CALL/JMP/Jcc).
        Imm::Z if mode == Mode::Bits64 && (map == Map::Map0F || matches!(opcode, 0xe8 | 0xe9)) => 4,
        Imm::Z => z,
        Imm::V => usize::from(operand_size),
        Imm::FarPointer => z + 2,
        Imm::Moffs => usize::from(address_size),
    };
    c.skip(imm_len)?;

    Ok(Insn {
        len: c.pos,
        map,
        opcode,
        modrm,
        rex,
        operand_size,
        address_size,
        rep,
        repne,
        lock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(bytes: &[u8], mode: Mode) -> usize {
        match decode(bytes, mode) {
            Ok(i) => i.len,
            Err(e) => panic!("{bytes:02x?}: {e:?}"),
        }
    }

    #[test]
    fn intercepted_instructions() {
        use Mode::Bits64 as M;
        assert_eq!(len(&[0x0f, 0xa2], M), 2); // cpuid
        assert_eq!(len(&[0x0f, 0x32], M), 2); // rdmsr
        assert_eq!(len(&[0x0f, 0x30], M), 2); // wrmsr
        assert_eq!(len(&[0x0f, 0x08], M), 2); // invd
        assert_eq!(len(&[0x0f, 0x01, 0xd1], M), 3); // xsetbv
        assert_eq!(len(&[0x0f, 0x01, 0xd9], M), 3); // vmmcall
        assert_eq!(len(&[0x0f, 0x01, 0xc1], M), 3); // vmcall
        assert_eq!(len(&[0x0f, 0x01, 0xd8], M), 3); // vmrun
        assert_eq!(len(&[0xf3, 0x0f, 0xc7, 0x34, 0x24], M), 5); // vmxon [rsp]
        assert_eq!(len(&[0xf4], M), 1); // hlt
        assert_eq!(len(&[0x0f, 0x0b], M), 2); // ud2
        assert_eq!(len(&[0xf3, 0x0f, 0x1e, 0xfa], M), 4); // endbr64
    }

    #[test]
    fn mov_control_registers() {
        let i = decode(&[0x0f, 0x22, 0xe0], Mode::Bits64).unwrap(); // mov cr4, rax
        assert_eq!((i.len, i.reg(), i.rm_register()), (3, Some(4), Some(0)));
        assert!(i.is_mov_cr_dr());
        let i = decode(&[0x41, 0x0f, 0x22, 0xe7], Mode::Bits64).unwrap(); // mov cr4, r15
        assert_eq!((i.len, i.reg(), i.rm_register()), (4, Some(4), Some(15)));
        let i = decode(&[0x44, 0x0f, 0x20, 0xc1], Mode::Bits64).unwrap(); // mov rcx, cr8
        assert_eq!((i.len, i.reg(), i.rm_register()), (4, Some(8), Some(1)));
        // mod is ignored: no SIB or displacement follows even with mod = 00, rm = 100.
        let i = decode(&[0x0f, 0x22, 0x04, 0xff, 0xff], Mode::Bits64).unwrap();
        assert_eq!((i.len, i.reg(), i.rm_register()), (3, Some(0), Some(4)));
        // 32-bit mode: 0x41 is INC ECX, not REX.
        assert_eq!(len(&[0x41], Mode::Bits32), 1);
    }

    #[test]
    fn port_io() {
        use Mode::*;
        for mode in [Bits16, Bits32, Bits64] {
            assert_eq!(len(&[0xe4, 0x60], mode), 2); // in al, 0x60
            assert_eq!(len(&[0xe7, 0x80], mode), 2); // out 0x80, eax
            assert_eq!(len(&[0xec], mode), 1); // in al, dx
            assert_eq!(len(&[0x66, 0xef], mode), 2); // out dx, ax/eax
        }
        let i = decode(&[0xf3, 0x6c], Bits64).unwrap(); // rep insb
        assert!(i.rep && i.len == 2);
        let i = decode(&[0x66, 0xef], Bits32).unwrap();
        assert_eq!(i.operand_size, 2);
        let i = decode(&[0x66, 0xef], Bits16).unwrap();
        assert_eq!(i.operand_size, 4);
    }

    #[test]
    fn modrm_addressing_64() {
        use Mode::Bits64 as M;
        assert_eq!(len(&[0x8b, 0x44, 0x24, 0x08], M), 4); // mov eax, [rsp+8]
        assert_eq!(len(&[0x8b, 0x04, 0x25, 0, 0x10, 0, 0], M), 7); // mov eax, [0x1000]
        assert_eq!(len(&[0x8b, 0x05, 1, 2, 3, 4], M), 6); // mov eax, [rip+disp32]
        assert_eq!(len(&[0x48, 0x8b, 0x84, 0xc8, 1, 2, 3, 4], M), 8); // mov rax, [rax+rcx*8+d32]
        assert_eq!(len(&[0x89, 0xc8], M), 2); // mov eax, ecx
        assert_eq!(len(&[0xc7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8], M), 10); // mov [rip+d], imm32
        assert_eq!(len(&[0x48, 0xc7, 0xc0, 1, 2, 3, 4], M), 7); // mov rax, imm32 (sign-ext)
        assert_eq!(len(&[0x48, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8], M), 10); // movabs rax, imm64
        assert_eq!(len(&[0x66, 0xc7, 0x00, 1, 2], M), 5); // mov word [rax], imm16
        assert_eq!(len(&[0x0f, 0xb6, 0x45, 0xf0], M), 4); // movzx eax, byte [rbp-16]
        assert_eq!(len(&[0xa1, 1, 2, 3, 4, 5, 6, 7, 8], M), 9); // mov eax, [moffs64]
        assert_eq!(len(&[0x67, 0xa1, 1, 2, 3, 4], M), 6); // mov eax, [moffs32]
        assert_eq!(len(&[0xf6, 0x00, 0x01], M), 3); // test byte [rax], 1
        assert_eq!(len(&[0xf6, 0x10], M), 2); // not byte [rax]
        assert_eq!(len(&[0xf7, 0xc0, 1, 2, 3, 4], M), 6); // test eax, imm32
        assert_eq!(len(&[0xe8, 1, 2, 3, 4], M), 5); // call rel32
        assert_eq!(len(&[0x66, 0xe8, 1, 2, 3, 4], M), 6); // call rel32 (66 ignored)
        assert_eq!(len(&[0x0f, 0x84, 1, 2, 3, 4], M), 6); // je rel32
        assert_eq!(len(&[0x66, 0x0f, 0x3a, 0x0f, 0xc1, 0x08], M), 6); // palignr xmm0, xmm1, 8
        assert_eq!(len(&[0x66, 0x0f, 0x38, 0x00, 0xc1], M), 5); // pshufb xmm0, xmm1
        assert_eq!(len(&[0xf0, 0x48, 0x0f, 0xb1, 0x0a], M), 5); // lock cmpxchg [rdx], rcx
    }

    #[test]
    fn sse4a_extrq_insertq_have_two_immediates() {
        // Found by keel-fuzz's insn target against iced-x86: 0F 78 was taken for VMREAD alone.
        use Mode::*;
        assert_eq!(len(&[0x66, 0x0f, 0x78, 0xc1, 4, 8], Bits64), 6); // extrq xmm1, 4, 8
        assert_eq!(len(&[0xf2, 0x0f, 0x78, 0xca, 4, 8], Bits64), 6); // insertq xmm1, xmm2, 4, 8
        assert_eq!(len(&[0xf2, 0x67, 0x0f, 0x78, 0xdd, 0x55, 0x69], Bits32), 7);
        assert_eq!(len(&[0x0f, 0x78, 0xc1], Bits64), 3); // vmread rcx, rax
        assert_eq!(len(&[0x66, 0x0f, 0x79, 0xc1], Bits64), 4); // extrq xmm0, xmm1
    }

    #[test]
    fn modrm_addressing_16_and_32() {
        use Mode::*;
        assert_eq!(len(&[0x8b, 0x46, 0x02], Bits16), 3); // mov ax, [bp+2]
        assert_eq!(len(&[0x8b, 0x06, 0x34, 0x12], Bits16), 4); // mov ax, [0x1234]
        assert_eq!(len(&[0x8b, 0x86, 0x34, 0x12], Bits16), 4); // mov ax, [bp+0x1234]
        assert_eq!(len(&[0x67, 0x8b, 0x06], Bits16), 3); // mov ax, [esi]
        assert_eq!(len(&[0xb8, 0x34, 0x12], Bits16), 3); // mov ax, imm16
        assert_eq!(len(&[0x66, 0xb8, 1, 2, 3, 4], Bits16), 6); // mov eax, imm32
        assert_eq!(len(&[0xea, 0, 0x7c, 0, 0], Bits16), 5); // jmp far 0:7c00
        assert_eq!(len(&[0xea, 1, 2, 3, 4, 8, 0], Bits32), 7); // jmp far 8:imm32
        assert_eq!(len(&[0x8b, 0x05, 1, 2, 3, 4], Bits32), 6); // mov eax, [disp32]
        assert_eq!(len(&[0x67, 0x8b, 0x46, 0x02], Bits32), 4); // mov eax, [bp+2]
        assert_eq!(len(&[0xc4, 0x06], Bits32), 2); // les eax, [esi] (not VEX outside 64-bit)
        assert_eq!(len(&[0xe8, 1, 2], Bits16), 3); // call rel16
        assert_eq!(len(&[0xc8, 0x10, 0x00, 0x00], Bits32), 4); // enter 16, 0
    }

    #[test]
    fn rex_before_legacy_prefix_is_ignored() {
        // 48 66 b8: the REX is not last, so it is dropped and 66 makes the immediate 16-bit.
        let i = decode(&[0x48, 0x66, 0xb8, 1, 2], Mode::Bits64).unwrap();
        assert_eq!((i.len, i.rex, i.operand_size), (5, 0, 2));
    }

    #[test]
    fn errors() {
        use Mode::*;
        assert_eq!(decode(&[], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x0f], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[0x8b, 0x44], Bits64), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[0x48, 0xb8, 1, 2, 3], Bits64),
            Err(DecodeError::Truncated)
        );
        assert_eq!(decode(&[0x66; 16], Bits64), Err(DecodeError::TooLong));
        // 14 prefixes and a 2-byte instruction: 16 bytes.
        let mut long = [0x66u8; 16];
        long[14] = 0x0f;
        long[15] = 0xa2;
        assert_eq!(decode(&long, Bits64), Err(DecodeError::TooLong));
        // 13 prefixes and cpuid: exactly 15 bytes is fine.
        assert_eq!(len(&long[1..], Bits64), 15);
        assert_eq!(
            decode(&[0xc5, 0xf8, 0x77], Bits64),
            Err(DecodeError::Unsupported)
        ); // vzeroupper
        assert_eq!(decode(&[0x06], Bits64), Err(DecodeError::Unsupported)); // push es
        assert_eq!(len(&[0x06], Bits32), 1);
    }
}
