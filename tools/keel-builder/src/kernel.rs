//! Reading the kernel: an x86-64 ELF vmlinux, or a bzImage whose compressed payload is one.
//!
//! The PVH entry point is the value of the ELF note `XEN_ELFNOTE_PHYS32_ENTRY` (type 18,
//! owner "Xen"): on x86-64 Linux emits it as an 8-byte `_ASM_PTR` (arch/x86/platform/pvh/
//! head.S); 4-byte values, as 32-bit kernels and other PVH kernels write, are accepted too.
//! The PT_LOAD segments are loaded at their physical addresses (`p_paddr`), as Xen's ELF
//! loader does for a PVH domain.
//!
//! A bzImage (Documentation/arch/x86/boot.rst) carries the vmlinux, stripped, compressed and
//! followed by a 4-byte little-endian decompressed size, at `payload_offset` from the start
//! of its protected-mode code, `(setup_sects + 1) * 512` bytes into the file
//! (arch/x86/boot/header.S; arch/x86/boot/compressed/Makefile and mkpiggy.c).
use std::ops::Range;

use crate::decompress;
use crate::error::{Error, Result};

/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// ELF constants (System V ABI, ELF-64 Object File Format).
mod elf {
    /// `\x7fELF`.
    pub const MAGIC: [u8; 4] = *b"\x7fELF";
    /// ELFCLASS64.
    pub const CLASS64: u8 = 2;
    /// ELFDATA2LSB.
    pub const DATA_LSB: u8 = 1;
    /// EM_X86_64.
    pub const MACHINE_X86_64: u16 = 62;
    /// Bytes in the ELF-64 file header.
    pub const EHDR_LEN: usize = 64;
    /// Bytes in an ELF-64 program header.
    pub const PHDR_LEN: usize = 56;
    /// PT_LOAD.
    pub const PT_LOAD: u32 = 1;
    /// PT_NOTE.
    pub const PT_NOTE: u32 = 4;
}

/// Setup header offsets (Documentation/arch/x86/boot.rst, "The real-mode kernel header").
mod setup {
    /// setup_sects (u8): 512-byte sectors of real-mode code after the boot sector.
    pub const SETUP_SECTS: usize = 0x1f1;
    /// header (u32): "HdrS".
    pub const HEADER: usize = 0x202;
    /// version (u16): the boot protocol.
    pub const VERSION: usize = 0x206;
    /// payload_offset (u32, protocol 2.08+).
    pub const PAYLOAD_OFFSET: usize = 0x248;
    /// payload_length (u32, protocol 2.08+).
    pub const PAYLOAD_LENGTH: usize = 0x24c;
    /// Bytes of the header this builder reads.
    pub const LEN: usize = 0x250;
}

/// One PT_LOAD segment: `data` at guest-physical `paddr`, then zeros up to `memsz` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where the segment goes (`p_paddr`).
    pub paddr: u64,
    /// The file bytes (`p_filesz` of them).
    pub data: Vec<u8>,
    /// The segment's size in memory (`p_memsz`, at least `data.len()`).
    pub memsz: u64,
}

impl Segment {
    /// The guest-physical range the segment covers in memory.
    pub fn range(&self) -> Range<u64> {
        self.paddr..self.paddr + self.memsz
    }
}

/// A loadable PVH kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The PT_LOAD segments, sorted by address, not overlapping.
    pub segments: Vec<Segment>,
    /// The 32-bit PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`).
    pub entry: u32,
    /// The compression of the bzImage it came from, `None` for a plain ELF.
    pub compression: Option<crate::error::Compression>,
}

impl Kernel {
    /// Reads a vmlinux or a bzImage.
    pub fn parse(file: &[u8]) -> Result<Self> {
        if file.starts_with(&elf::MAGIC) {
            return parse_elf(file);
        }
        if file.len() >= setup::HEADER + 4 && &file[setup::HEADER..setup::HEADER + 4] == b"HdrS" {
            return parse_bzimage(file);
        }
        Err(Error::NotAKernel)
    }

    /// The guest-physical range from the first segment's start to the last one's end.
    pub fn range(&self) -> Range<u64> {
        let start = self.segments.first().map_or(0, |s| s.paddr);
        let end = self.segments.last().map_or(0, |s| s.range().end);
        start..end
    }
}

/// `len` bytes at `at` in `b`, or a truncation error naming `what`.
fn bytes<'a>(b: &'a [u8], at: u64, len: u64, what: &'static str) -> Result<&'a [u8]> {
    let end = at.checked_add(len).ok_or(Error::Truncated { what })?;
    let (at, end) = (
        usize::try_from(at).map_err(|_| Error::Truncated { what })?,
        usize::try_from(end).map_err(|_| Error::Truncated { what })?,
    );
    b.get(at..end).ok_or(Error::Truncated { what })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads an ELF-64 x86-64 vmlinux (extra bytes after what its headers describe, such as the
/// relocations a bzImage appends, are ignored).
fn parse_elf(file: &[u8]) -> Result<Kernel> {
    let eh = bytes(file, 0, elf::EHDR_LEN as u64, "ELF header")?;
    if eh[4] != elf::CLASS64 {
        return Err(Error::UnsupportedElf("not a 64-bit ELF file (ELFCLASS64)"));
    }
    if eh[5] != elf::DATA_LSB {
        return Err(Error::UnsupportedElf("not little-endian"));
    }
    if u16_at(eh, 0x12) != elf::MACHINE_X86_64 {
        return Err(Error::UnsupportedElf("not an x86-64 file (e_machine)"));
    }
    let phoff = u64_at(eh, 0x20);
    let phentsize = u16_at(eh, 0x36);
    let phnum = u16_at(eh, 0x38);
    if phnum > 0 && usize::from(phentsize) < elf::PHDR_LEN {
        return Err(Error::UnsupportedElf(
            "program headers smaller than 56 bytes",
        ));
    }
    let mut segments = Vec::new();
    let mut entry = None;
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or(Error::Truncated {
                what: "program headers",
            })?;
        let ph = bytes(file, at, elf::PHDR_LEN as u64, "program headers")?;
        let (ty, offset, paddr, filesz, memsz) = (
            u32_at(ph, 0),
            u64_at(ph, 8),
            u64_at(ph, 24),
            u64_at(ph, 32),
            u64_at(ph, 40),
        );
        match ty {
            elf::PT_LOAD => {
                if filesz > memsz {
                    return Err(Error::UnsupportedElf("a PT_LOAD has p_filesz > p_memsz"));
                }
                if memsz == 0 {
                    continue;
                }
                if paddr.checked_add(memsz).is_none() {
                    return Err(Error::UnsupportedElf("a PT_LOAD wraps around"));
                }
                let data = bytes(file, offset, filesz, "PT_LOAD segment data")?.to_vec();
                segments.push(Segment { paddr, data, memsz });
            }
            elf::PT_NOTE => {
                let notes = bytes(file, offset, filesz, "PT_NOTE segment")?;
                if let Some(e) = find_phys32_entry(notes)? {
                    entry = Some(e);
                }
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(Error::NoLoadSegments);
    }
    segments.sort_by_key(|s| s.paddr);
    for w in segments.windows(2) {
        if w[1].paddr < w[0].range().end {
            return Err(Error::SegmentsOverlap(w[1].paddr));
        }
    }
    let entry = entry.ok_or(Error::NoPvhEntry)?;
    if !segments
        .iter()
        .any(|s| s.range().contains(&u64::from(entry)))
    {
        return Err(Error::EntryOutsideImage(entry.into()));
    }
    Ok(Kernel {
        segments,
        entry,
        compression: None,
    })
}

/// Looks for the "Xen" PHYS32_ENTRY note in the contents of a PT_NOTE segment.
fn find_phys32_entry(mut notes: &[u8]) -> Result<Option<u32>> {
    // Each note: namesz, descsz, type (u32 each), then the name and the descriptor, each
    // padded to 4 bytes.
    while notes.len() >= 12 {
        let namesz = u64::from(u32_at(notes, 0));
        let descsz = u64::from(u32_at(notes, 4));
        let ty = u32_at(notes, 8);
        let name_at = 12u64;
        let desc_at = name_at + namesz.next_multiple_of(4);
        let next = desc_at + descsz.next_multiple_of(4);
        let name = bytes(notes, name_at, namesz, "ELF note")?;
        let desc = bytes(notes, desc_at, descsz, "ELF note")?;
        if name == b"Xen\0" && ty == XEN_ELFNOTE_PHYS32_ENTRY {
            let value = match desc.len() {
                4 => u64::from(u32_at(desc, 0)),
                8 => u64_at(desc, 0),
                n => return Err(Error::BadPvhNote(n)),
            };
            let value = u32::try_from(value)
                .map_err(|_| Error::UnsupportedElf("the PVH entry point is above 4 GiB"))?;
            return Ok(Some(value));
        }
        notes = notes.get(next as usize..).unwrap_or(&[]);
    }
    Ok(None)
}

/// Reads a bzImage: finds, decompresses and parses its vmlinux payload.
fn parse_bzimage(file: &[u8]) -> Result<Kernel> {
    let hdr = bytes(file, 0, setup::LEN as u64, "bzImage setup header")?;
    let version = u16_at(hdr, setup::VERSION);
    if version < 0x0208 {
        return Err(Error::OldBootProtocol(version));
    }
    let setup_sects = match hdr[setup::SETUP_SECTS] {
        0 => 4, // "if the setup_sects field contains 0, the real value is 4"
        n => u64::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let offset = u64::from(u32_at(hdr, setup::PAYLOAD_OFFSET));
    let length = u64::from(u32_at(hdr, setup::PAYLOAD_LENGTH));
    let payload = bytes(file, pm_start + offset, length, "bzImage payload")?;
    let (compression, vmlinux) = decompress::payload(payload)?;
    if !vmlinux.starts_with(&elf::MAGIC) {
        return Err(Error::PayloadNotElf);
    }
    let mut kernel = parse_elf(&vmlinux)?;
    kernel.compression = Some(compression);
    Ok(kernel)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic ELF's PT_LOAD: contents at a physical address.
    pub struct Load {
        pub paddr: u64,
        pub data: Vec<u8>,
        pub memsz: u64,
    }

    /// A note: owner, type, descriptor.
    pub struct Note<'a>(pub &'a [u8], pub u32, pub &'a [u8]);

    /// Builds an ELF-64 x86-64 executable with `loads` and one PT_NOTE holding `notes`.
    pub fn make_elf(loads: &[Load], notes: &[Note]) -> Vec<u8> {
        let mut note_bytes = Vec::new();
        for Note(name, ty, desc) in notes {
            let mut owner = name.to_vec();
            owner.push(0);
            note_bytes.extend((owner.len() as u32).to_le_bytes());
            note_bytes.extend((desc.len() as u32).to_le_bytes());
            note_bytes.extend(ty.to_le_bytes());
            note_bytes.extend(&owner);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
            note_bytes.extend(*desc);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
        }
        let phnum = loads.len() + 1;
        let mut data_at = (elf::EHDR_LEN + phnum * elf::PHDR_LEN) as u64;
        let mut f = vec![0u8; elf::EHDR_LEN];
        f[..4].copy_from_slice(&elf::MAGIC);
        f[4] = elf::CLASS64;
        f[5] = elf::DATA_LSB;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&elf::MACHINE_X86_64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&(elf::EHDR_LEN as u64).to_le_bytes());
        f[0x34..0x36].copy_from_slice(&(elf::EHDR_LEN as u16).to_le_bytes());
        f[0x36..0x38].copy_from_slice(&(elf::PHDR_LEN as u16).to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut phdr = |ty: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
            let mut p = vec![0u8; elf::PHDR_LEN];
            p[0..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&(paddr | 0xffff_ffff_8000_0000).to_le_bytes());
            p[24..32].copy_from_slice(&paddr.to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            f.extend(p);
        };
        for l in loads {
            phdr(elf::PT_LOAD, data_at, l.paddr, l.data.len() as u64, l.memsz);
            data_at += l.data.len() as u64;
        }
        phdr(
            elf::PT_NOTE,
            data_at,
            0,
            note_bytes.len() as u64,
            note_bytes.len() as u64,
        );
        for l in loads {
            f.extend(&l.data);
        }
        f.extend(note_bytes);
        f
    }

    /// A small PVH "kernel": text at 16 MiB, data and bss after it, the entry at 16 MiB+0x10.
    pub fn pvh_elf() -> Vec<u8> {
        make_elf(
            &[
                Load {
                    paddr: 0x100_0000,
                    data: (0..0x3000u32).map(|i| (i * 7) as u8).collect(),
                    memsz: 0x3000,
                },
                Load {
                    paddr: 0x100_4000,
                    data: vec![0xaa; 0x800],
                    memsz: 0x2000,
                },
            ],
            &[
                Note(b"Linux", 1, &[0]),
                Note(b"Xen", 6, b"linux\0"),
                Note(
                    b"Xen",
                    XEN_ELFNOTE_PHYS32_ENTRY,
                    &0x100_0010u64.to_le_bytes(),
                ),
            ],
        )
    }

    #[test]
    fn elf_segments_and_entry() {
        let k = Kernel::parse(&pvh_elf()).unwrap();
        assert_eq!(k.entry, 0x100_0010);
        assert_eq!(k.compression, None);
        assert_eq!(k.segments.len(), 2);
        assert_eq!(k.segments[0].range(), 0x100_0000..0x100_3000);
        assert_eq!(k.segments[0].data[..3], [0, 7, 14]);
        assert_eq!(k.segments[1].range(), 0x100_4000..0x100_6000);
        assert_eq!(k.segments[1].data.len(), 0x800);
        assert_eq!(k.range(), 0x100_0000..0x100_6000);
    }

    #[test]
    fn four_byte_entry_note_is_accepted() {
        let f = make_elf(
            &[Load {
                paddr: 0x20_0000,
                data: vec![0x90; 16],
                memsz: 16,
            }],
            &[Note(
                b"Xen",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x20_0004u32.to_le_bytes(),
            )],
        );
        assert_eq!(Kernel::parse(&f).unwrap().entry, 0x20_0004);
    }

    #[test]
    fn trailing_bytes_after_the_elf_are_ignored() {
        let mut f = pvh_elf();
        f.extend([0x55; 100]); // a bzImage's vmlinux.relocs
        assert_eq!(Kernel::parse(&f).unwrap().entry, 0x100_0010);
    }

    #[test]
    fn no_pvh_note_is_an_error() {
        let f = make_elf(
            &[Load {
                paddr: 0x100_0000,
                data: vec![0; 16],
                memsz: 16,
            }],
            // A PHYS32_ENTRY number with another owner is not the Xen note.
            &[Note(b"Linux", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 8])],
        );
        let e = Kernel::parse(&f).unwrap_err();
        assert!(matches!(e, Error::NoPvhEntry));
        assert!(e.to_string().contains("CONFIG_XEN_PVH"), "{e}");
    }

    #[test]
    fn bad_note_size_is_an_error() {
        let f = make_elf(
            &[Load {
                paddr: 0x100_0000,
                data: vec![0; 16],
                memsz: 16,
            }],
            &[Note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &[1, 2])],
        );
        assert!(matches!(Kernel::parse(&f), Err(Error::BadPvhNote(2))));
    }

    #[test]
    fn entry_outside_the_image_is_an_error() {
        let f = make_elf(
            &[Load {
                paddr: 0x100_0000,
                data: vec![0; 16],
                memsz: 16,
            }],
            &[Note(
                b"Xen",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x200_0000u64.to_le_bytes(),
            )],
        );
        assert!(matches!(
            Kernel::parse(&f),
            Err(Error::EntryOutsideImage(0x200_0000))
        ));
    }

    #[test]
    fn overlapping_segments_are_an_error() {
        let load = |paddr| Load {
            paddr,
            data: vec![0; 0x100],
            memsz: 0x1000,
        };
        let f = make_elf(
            &[load(0x100_0000), load(0x100_0800)],
            &[Note(
                b"Xen",
                XEN_ELFNOTE_PHYS32_ENTRY,
                &0x100_0000u64.to_le_bytes(),
            )],
        );
        assert!(matches!(
            Kernel::parse(&f),
            Err(Error::SegmentsOverlap(0x100_0800))
        ));
    }

    #[test]
    fn truncated_files_are_errors() {
        let f = pvh_elf();
        // Cut inside the header, the program headers, the segment data and the notes.
        for len in [10, 100, 0x200, f.len() - 4] {
            let e = Kernel::parse(&f[..len]).unwrap_err();
            assert!(matches!(e, Error::Truncated { .. }), "{len}: {e}");
            assert!(e.to_string().starts_with("truncated kernel"), "{e}");
        }
    }

    #[test]
    fn other_elf_files_are_refused() {
        let mut f = pvh_elf();
        f[4] = 1; // ELFCLASS32
        assert!(matches!(Kernel::parse(&f), Err(Error::UnsupportedElf(_))));
        let mut f = pvh_elf();
        f[0x12] = 183; // EM_AARCH64
        assert!(matches!(Kernel::parse(&f), Err(Error::UnsupportedElf(_))));
    }

    #[test]
    fn random_bytes_are_not_a_kernel() {
        assert!(matches!(Kernel::parse(b"hello"), Err(Error::NotAKernel)));
        assert!(matches!(Kernel::parse(&[0; 4096]), Err(Error::NotAKernel)));
    }
}
