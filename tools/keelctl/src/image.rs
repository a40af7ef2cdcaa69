//! Guest images for `keelctl run`: a flat binary, or an ELF executable loaded by its program
//! headers (System V gABI, "Program Loading"). Turns the file and the command-line choices into
//! a [`LoadPlan`]: what goes where in guest memory, the mode and the entry point, after checking
//! that all of it fits in the guest's RAM.
use std::{fmt, ops::Range};

use keel_sys::{GuestAddress, GuestMemoryWrite, RamError};

use crate::{
    boot::{self, Blob, Mode},
    units::human_size,
};

/// Where a flat image goes in prot32 and long64 unless `--load` says otherwise.
pub const DEFAULT_LOAD: u64 = 0x10_0000;
/// Where a flat image goes, and starts, in real mode: a boot sector's address.
pub const BOOT_SECTOR: u64 = 0x7c00;

/// What kind of file the image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Bytes copied as they are.
    Flat,
    /// ELFCLASS32.
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

impl Format {
    /// The name keelctl prints.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Elf32 => "elf32",
            Self::Elf64 => "elf64",
        }
    }
}

/// Why an image cannot run; the text is the message for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct ImageError(pub String);

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImageError {}

fn err<T>(text: impl Into<String>) -> Result<T, ImageError> {
    Err(ImageError(text.into()))
}

/// One piece of the image in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Where it starts.
    pub gpa: GuestAddress,
    /// The bytes from the file.
    pub data: Vec<u8>,
    /// Its size in memory: `data`, then zeroes (which the module's fresh RAM already is).
    pub mem_size: u64,
}

impl Segment {
    fn range(&self) -> Range<u64> {
        self.gpa.0..self.gpa.0 + self.mem_size
    }
}

/// The ELF identification and header fields keelctl uses.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PN_XNUM: u16 = 0xffff;

/// Whether `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(ELF_MAGIC)
}

/// A little-endian reader over the file that fails with a message instead of panicking.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes<const N: usize>(&self, offset: u64) -> Result<[u8; N], ImageError> {
        usize::try_from(offset)
            .ok()
            .and_then(|o| self.0.get(o..o.checked_add(N)?))
            .map(|b| b.try_into().expect("N bytes"))
            .ok_or_else(|| {
                ImageError(format!(
                    "the ELF file is truncated: it is {} bytes, and a header at byte {offset} \
                     runs past its end",
                    self.0.len()
                ))
            })
    }
    fn u16(&self, offset: u64) -> Result<u16, ImageError> {
        self.bytes(offset).map(u16::from_le_bytes)
    }
    fn u32(&self, offset: u64) -> Result<u32, ImageError> {
        self.bytes(offset).map(u32::from_le_bytes)
    }
    fn u64(&self, offset: u64) -> Result<u64, ImageError> {
        self.bytes(offset).map(u64::from_le_bytes)
    }
    /// A 32-bit field in ELFCLASS32, a 64-bit one in ELFCLASS64.
    fn word(&self, offset: u64, wide: bool) -> Result<u64, ImageError> {
        if wide {
            self.u64(offset)
        } else {
            self.u32(offset).map(u64::from)
        }
    }
}

/// An ELF executable's loadable contents.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf {
    /// ELFCLASS32 or ELFCLASS64.
    pub format: Format,
    /// `e_entry`, translated to a physical address when it lies in a segment whose virtual
    /// and physical addresses differ (only physical addresses mean anything to a guest without
    /// paging or on identity page tables).
    pub entry: u64,
    /// The PT_LOAD segments at their physical addresses (`p_paddr`), in file order.
    pub segments: Vec<Segment>,
}

/// Parses an ELF executable for x86 (EM_386 or EM_X86_64, little-endian).
pub fn parse_elf(file: &[u8]) -> Result<Elf, ImageError> {
    let r = Reader(file);
    let ident: [u8; 16] = r.bytes(0)?;
    let (format, wide) = match ident[4] {
        ELFCLASS32 => (Format::Elf32, false),
        ELFCLASS64 => (Format::Elf64, true),
        c => return err(format!("unknown ELF class {c} (neither 32- nor 64-bit)")),
    };
    if ident[5] != ELFDATA2LSB {
        return err("the ELF file is big-endian: x86 guests are little-endian");
    }
    let e_type = r.u16(16)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return err(format!(
            "the ELF file is not an executable (e_type {e_type}, expected ET_EXEC)"
        ));
    }
    let machine = r.u16(18)?;
    if machine != EM_386 && machine != EM_X86_64 {
        return err(format!(
            "the ELF file is for machine {machine}, not x86 (EM_386 or EM_X86_64)"
        ));
    }
    // e_entry, e_phoff, then e_phentsize and e_phnum after the flags and e_ehsize.
    let (entry, phoff, phentsize, phnum) = if wide {
        (r.u64(24)?, r.u64(32)?, r.u16(54)?, r.u16(56)?)
    } else {
        (
            u64::from(r.u32(24)?),
            u64::from(r.u32(28)?),
            r.u16(42)?,
            r.u16(44)?,
        )
    };
    let min_phentsize = if wide { 56 } else { 32 };
    if phnum == PN_XNUM {
        return err("the ELF file has too many program headers (PN_XNUM)");
    }
    if phnum > 0 && phentsize < min_phentsize {
        return err(format!(
            "the ELF file's program headers are {phentsize} bytes, less than {min_phentsize}"
        ));
    }
    let mut segments = Vec::new();
    let mut virt_phys = Vec::new();
    for i in 0..u64::from(phnum) {
        let ph = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or_else(|| ImageError("the ELF program header offset overflows".into()))?;
        if r.u32(ph)? != PT_LOAD {
            continue;
        }
        // ELF64: p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz;
        // ELF32: p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags.
        let field = |n: u64| {
            if wide {
                r.word(ph + 8 + 8 * n, true)
            } else {
                r.word(ph + 4 + 4 * n, false)
            }
        };
        let (offset, vaddr, paddr, filesz, memsz) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        if memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return err(format!(
                "ELF program header {i}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}"
            ));
        }
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| file.get(o..o.checked_add(n)?))
            .ok_or_else(|| {
                ImageError(format!(
                    "ELF program header {i}: its {filesz:#x} bytes at file offset {offset:#x} \
                     lie past the end of the file ({:#x} bytes)",
                    file.len()
                ))
            })?;
        if paddr.checked_add(memsz).is_none() || vaddr.checked_add(memsz).is_none() {
            return err(format!(
                "ELF program header {i}: the segment at {paddr:#x} wraps around"
            ));
        }
        segments.push(Segment {
            gpa: GuestAddress(paddr),
            data: data.to_vec(),
            mem_size: memsz,
        });
        virt_phys.push((vaddr, paddr, memsz));
    }
    if segments.is_empty() {
        return err("the ELF file has no loadable segment (PT_LOAD)");
    }
    let entry = virt_phys
        .iter()
        .find(|&&(vaddr, _, memsz)| (vaddr..vaddr + memsz).contains(&entry))
        .map_or(entry, |&(vaddr, paddr, _)| entry - vaddr + paddr);
    Ok(Elf {
        format,
        entry,
        segments,
    })
}

/// What the command line asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--mode`; by default from the ELF class, prot32 for a flat image.
    pub mode: Option<Mode>,
    /// `--entry`; by default `e_entry`, or the load address of a flat image.
    pub entry: Option<u64>,
    /// `--load` (flat images only).
    pub load: Option<u64>,
    /// The guest's RAM in bytes, from guest-physical 0.
    pub memory: u64,
}

/// Everything needed to start the guest.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// The image's format.
    pub format: Format,
    /// The mode the vCPU starts in.
    pub mode: Mode,
    /// The first instruction's address.
    pub entry: u64,
    /// The RAM size.
    pub memory: u64,
    /// The image in guest memory.
    pub segments: Vec<Segment>,
    /// The GDT, TSS and page tables the mode needs.
    pub boot: Vec<Blob>,
}

impl LoadPlan {
    /// Checks `image` against `opts` and lays it out.
    pub fn new(image: &[u8], opts: &LoadOptions) -> Result<Self, ImageError> {
        let memory = opts.memory;
        if image.is_empty() {
            return err("the image is empty");
        }
        let (format, mode, entry, segments) = if is_elf(image) {
            if let Some(load) = opts.load {
                return err(format!(
                    "--load {load:#x} is for flat images: an ELF file is loaded at its \
                     segments' physical addresses"
                ));
            }
            let elf = parse_elf(image)?;
            let mode = opts.mode.unwrap_or(match elf.format {
                Format::Elf64 => Mode::Long64,
                _ => Mode::Prot32,
            });
            (
                elf.format,
                mode,
                opts.entry.unwrap_or(elf.entry),
                elf.segments,
            )
        } else {
            let mode = opts.mode.unwrap_or(Mode::Prot32);
            let default_load = if mode == Mode::Real {
                BOOT_SECTOR
            } else {
                DEFAULT_LOAD
            };
            let load = opts.load.unwrap_or(default_load);
            let size = image.len() as u64;
            if size > memory {
                return err(format!(
                    "the image is {size} bytes ({}), larger than the guest's RAM ({}): \
                     give more with --memory",
                    human_size(size),
                    human_size(memory)
                ));
            }
            if load.checked_add(size).is_none_or(|end| end > memory) {
                return err(format!(
                    "the image ({size} bytes) does not fit at {load:#x} in {} of RAM: it \
                     would end at {:#x}; give more --memory or a lower --load",
                    human_size(memory),
                    u128::from(load) + u128::from(size)
                ));
            }
            let segment = Segment {
                gpa: GuestAddress(load),
                data: image.to_vec(),
                mem_size: size,
            };
            (
                Format::Flat,
                mode,
                opts.entry.unwrap_or(load),
                vec![segment],
            )
        };
        let boot = boot::boot_blobs(mode, memory);
        let plan = Self {
            format,
            mode,
            entry,
            memory,
            segments,
            boot,
        };
        plan.check()?;
        Ok(plan)
    }

    /// Checks that the segments fit in RAM, stay clear of each other and of the boot
    /// structures, and that the entry point is reachable in the mode.
    fn check(&self) -> Result<(), ImageError> {
        let memory = self.memory;
        let ram = human_size(memory);
        if let Some(area) = boot::reserved(self.mode, memory) {
            if area.end > memory {
                return err(format!(
                    "{} guests need at least {} of RAM for their GDT{} (at {:#x}..{:#x})",
                    self.mode.name(),
                    human_size(area.end.next_multiple_of(4096)),
                    if self.mode == Mode::Long64 {
                        " and page tables"
                    } else {
                        ""
                    },
                    area.start,
                    area.end
                ));
            }
        }
        let (what, fix) = match self.format {
            Format::Flat => ("the image", "use another --load"),
            _ => ("the ELF segment", "link it at another physical address"),
        };
        for (i, seg) in self.segments.iter().enumerate() {
            let r = seg.range();
            let what = if self.segments.len() > 1 {
                format!("{what} {i}")
            } else {
                what.to_string()
            };
            if r.end > memory {
                return err(format!(
                    "{what} at [{:#x}, {:#x}) does not fit in the guest's {ram} of RAM",
                    r.start, r.end
                ));
            }
            for (j, other) in self.segments.iter().enumerate().skip(i + 1) {
                let o = other.range();
                if r.start < o.end && o.start < r.end {
                    return err(format!(
                        "ELF segments {i} [{:#x}, {:#x}) and {j} [{:#x}, {:#x}) overlap",
                        r.start, r.end, o.start, o.end
                    ));
                }
            }
            if let Some(area) = boot::reserved(self.mode, memory) {
                if r.start < area.end && area.start < r.end {
                    return err(format!(
                        "{what} at [{:#x}, {:#x}) overlaps the {} boot structures \
                         (GDT, TSS{}) at [{:#x}, {:#x}): {fix}",
                        r.start,
                        r.end,
                        self.mode.name(),
                        if self.mode == Mode::Long64 {
                            ", page tables"
                        } else {
                            ""
                        },
                        area.start,
                        area.end
                    ));
                }
            }
        }
        if self.entry >= memory {
            return err(format!(
                "the entry point {:#x} lies outside the guest's RAM [0, {memory:#x})",
                self.entry
            ));
        }
        if self.entry >= self.mode.address_limit() {
            return err(format!(
                "the entry point {:#x} is out of reach in {} mode (below {:#x} only{})",
                self.entry,
                self.mode.name(),
                self.mode.address_limit(),
                if self.mode == Mode::Real {
                    ": CS is 0"
                } else {
                    ""
                }
            ));
        }
        Ok(())
    }

    /// Bytes of the image in memory.
    pub fn image_size(&self) -> u64 {
        self.segments.iter().map(|s| s.mem_size).sum()
    }

    /// Writes the image and the boot structures into guest memory.
    pub fn write_to(&self, mem: &mut impl GuestMemoryWrite) -> Result<(), RamError> {
        for seg in &self.segments {
            mem.write_at(seg.gpa, &seg.data)?;
        }
        for blob in &self.boot {
            mem.write_at(blob.gpa, &blob.bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_sys::offset_in;

    /// Plain memory standing in for a guest's RAM.
    pub struct TestRam(pub Vec<u8>);

    impl GuestMemoryWrite for TestRam {
        fn write_at(&mut self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), RamError> {
            let o = offset_in(
                GuestAddress(0),
                self.0.len() as u64,
                gpa,
                bytes.len() as u64,
            )?;
            self.0[o..o + bytes.len()].copy_from_slice(bytes);
            Ok(())
        }
    }

    /// A program header for [`elf`]: (paddr, vaddr, file bytes, memsz).
    pub type Ph<'a> = (u64, u64, &'a [u8], u64);

    /// A minimal x86 ELF executable: header, program headers, then each segment's bytes.
    pub fn elf(wide: bool, entry: u64, phs: &[Ph<'_>]) -> Vec<u8> {
        let (ehsize, phentsize) = if wide { (64u64, 56u64) } else { (52, 32) };
        let mut f = vec![0u8; ehsize as usize];
        f[..4].copy_from_slice(ELF_MAGIC);
        f[4] = if wide { ELFCLASS64 } else { ELFCLASS32 };
        f[5] = ELFDATA2LSB;
        f[6] = 1; // EV_CURRENT
        f[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        let machine = if wide { EM_X86_64 } else { EM_386 };
        f[18..20].copy_from_slice(&machine.to_le_bytes());
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        let phnum = phs.len() as u16;
        if wide {
            f[24..32].copy_from_slice(&entry.to_le_bytes());
            f[32..40].copy_from_slice(&ehsize.to_le_bytes());
            f[52..54].copy_from_slice(&(ehsize as u16).to_le_bytes());
            f[54..56].copy_from_slice(&(phentsize as u16).to_le_bytes());
            f[56..58].copy_from_slice(&phnum.to_le_bytes());
        } else {
            f[24..28].copy_from_slice(&(entry as u32).to_le_bytes());
            f[28..32].copy_from_slice(&(ehsize as u32).to_le_bytes());
            f[40..42].copy_from_slice(&(ehsize as u16).to_le_bytes());
            f[42..44].copy_from_slice(&(phentsize as u16).to_le_bytes());
            f[44..46].copy_from_slice(&phnum.to_le_bytes());
        }
        let mut offset = ehsize + phentsize * phs.len() as u64;
        for &(paddr, vaddr, data, memsz) in phs {
            let filesz = data.len() as u64;
            if wide {
                f.extend(PT_LOAD.to_le_bytes());
                f.extend(5u32.to_le_bytes()); // PF_R | PF_X
                for v in [offset, vaddr, paddr, filesz, memsz, 0x1000] {
                    f.extend(v.to_le_bytes());
                }
            } else {
                f.extend(PT_LOAD.to_le_bytes());
                for v in [offset, vaddr, paddr, filesz, memsz, 5, 0x1000] {
                    f.extend((v as u32).to_le_bytes());
                }
            }
            offset += filesz;
        }
        for &(_, _, data, _) in phs {
            f.extend_from_slice(data);
        }
        f
    }

    const MIB16: u64 = 16 << 20;

    fn opts(memory: u64) -> LoadOptions {
        LoadOptions {
            memory,
            ..Default::default()
        }
    }

    #[test]
    fn elf64_loads_at_paddr_and_defaults_to_long64() {
        let code = [0xb0, b'K', 0xe6, 0xe9, 0xf4];
        let file = elf(
            true,
            0x20_0000,
            &[
                (0x20_0000, 0x20_0000, &code, 0x1000),
                (0x30_0000, 0x30_0000, b"data", 4),
            ],
        );
        let plan = LoadPlan::new(&file, &opts(MIB16)).unwrap();
        assert_eq!(plan.format, Format::Elf64);
        assert_eq!(plan.mode, Mode::Long64);
        assert_eq!(plan.entry, 0x20_0000);
        assert_eq!(plan.segments.len(), 2);
        assert_eq!(plan.image_size(), 0x1004);
        let mut ram = TestRam(vec![0xaa; MIB16 as usize]);
        plan.write_to(&mut ram).unwrap();
        assert_eq!(&ram.0[0x20_0000..0x20_0005], &code);
        assert_eq!(&ram.0[0x30_0000..0x30_0004], b"data");
        // The page tables and the GDT are in place too.
        assert_eq!(ram.0[0x2000], 0x03);
        assert_eq!(
            &ram.0[0x1008..0x1010],
            &0x00af_9b00_0000_ffffu64.to_le_bytes()
        );
    }

    #[test]
    fn elf32_defaults_to_prot32_and_translates_a_virtual_entry() {
        // Linked at 0xc0100000 virtual, loaded at 1 MiB physical.
        let file = elf(
            false,
            0xc010_0010,
            &[(0x10_0000, 0xc010_0000, &[0x90; 32], 32)],
        );
        let plan = LoadPlan::new(&file, &opts(MIB16)).unwrap();
        assert_eq!((plan.format, plan.mode), (Format::Elf32, Mode::Prot32));
        assert_eq!(plan.entry, 0x10_0010);
        assert_eq!(plan.boot.len(), 1);
        // --mode and --entry override.
        let o = LoadOptions {
            mode: Some(Mode::Long64),
            entry: Some(0x10_0004),
            ..opts(MIB16)
        };
        let plan = LoadPlan::new(&file, &o).unwrap();
        assert_eq!((plan.mode, plan.entry), (Mode::Long64, 0x10_0004));
    }

    #[test]
    fn elf_errors() {
        let good = elf(true, 0x10_0000, &[(0x10_0000, 0x10_0000, &[0xf4], 1)]);
        let e = |f: &[u8], o: LoadOptions| LoadPlan::new(f, &o).unwrap_err().0;

        assert!(e(&good, opts(1 << 20)).contains("does not fit"));
        let with_load = LoadOptions {
            load: Some(0),
            ..opts(MIB16)
        };
        assert!(e(&good, with_load).contains("--load"));
        assert!(e(&good[..40], opts(MIB16)).contains("truncated"));

        let mut be = good.clone();
        be[5] = 2;
        assert!(e(&be, opts(MIB16)).contains("big-endian"));
        let mut arm = good.clone();
        arm[18] = 40;
        assert!(e(&arm, opts(MIB16)).contains("not x86"));
        let mut rel = good.clone();
        rel[16] = 1;
        assert!(e(&rel, opts(MIB16)).contains("not an executable"));

        let none = elf(true, 0, &[]);
        assert!(e(&none, opts(MIB16)).contains("no loadable segment"));
        let overlap = elf(
            true,
            0x10_0000,
            &[
                (0x10_0000, 0x10_0000, &[1], 0x2000),
                (0x10_1000, 0x10_1000, &[2], 1),
            ],
        );
        assert!(e(&overlap, opts(MIB16)).contains("overlap"));
        let low = elf(true, 0x1000, &[(0x1000, 0x1000, &[0xf4], 1)]);
        assert!(e(&low, opts(MIB16)).contains("boot structures"));
        let past_file = {
            let mut f = good.clone();
            f.truncate(f.len() - 1);
            f
        };
        assert!(e(&past_file, opts(MIB16)).contains("past the end of the file"));
        let bss_smaller = elf(true, 0x10_0000, &[(0x10_0000, 0x10_0000, &[1, 2], 1)]);
        assert!(e(&bss_smaller, opts(MIB16)).contains("larger than p_memsz"));
        let far_entry = elf(true, 0x4000_0000, &[(0x10_0000, 0x10_0000, &[0xf4], 1)]);
        assert!(e(&far_entry, opts(MIB16)).contains("outside the guest's RAM"));
    }

    #[test]
    fn flat_defaults() {
        let code = [0xf4];
        let plan = LoadPlan::new(&code, &opts(MIB16)).unwrap();
        assert_eq!(plan.format, Format::Flat);
        assert_eq!(plan.mode, Mode::Prot32);
        assert_eq!(
            (plan.segments[0].gpa.0, plan.entry),
            (DEFAULT_LOAD, DEFAULT_LOAD)
        );

        let real = LoadOptions {
            mode: Some(Mode::Real),
            ..opts(1 << 20)
        };
        let plan = LoadPlan::new(&code, &real).unwrap();
        assert_eq!(
            (plan.segments[0].gpa.0, plan.entry),
            (BOOT_SECTOR, BOOT_SECTOR)
        );
        assert!(plan.boot.is_empty());

        let custom = LoadOptions {
            mode: Some(Mode::Long64),
            load: Some(0x20_0000),
            entry: Some(0x20_0010),
            ..opts(MIB16)
        };
        let plan = LoadPlan::new(&[0u8; 32], &custom).unwrap();
        assert_eq!((plan.segments[0].gpa.0, plan.entry), (0x20_0000, 0x20_0010));
        let mut ram = TestRam(vec![0; MIB16 as usize]);
        plan.write_to(&mut ram).unwrap();
    }

    #[test]
    fn flat_errors() {
        let e = |f: &[u8], o: LoadOptions| LoadPlan::new(f, &o).unwrap_err().0;
        assert!(e(&[], opts(MIB16)).contains("empty"));
        assert!(e(&[0; 8192], opts(4096)).contains("larger than the guest's RAM (4 KiB)"));
        let msg = e(&[0; 4096], opts(1 << 20));
        assert!(msg.contains("does not fit at 0x100000 in 1 MiB"), "{msg}");
        let real_high = LoadOptions {
            mode: Some(Mode::Real),
            load: Some(0x10_0000),
            ..opts(MIB16)
        };
        assert!(e(&[0xf4], real_high).contains("CS is 0"));
        let small_long = LoadOptions {
            mode: Some(Mode::Long64),
            load: Some(0x0),
            ..opts(16 << 10)
        };
        assert!(e(&[0xf4], small_long).contains("at least 20 KiB"));
        let overflow = LoadOptions {
            load: Some(u64::MAX),
            ..opts(MIB16)
        };
        assert!(e(&[0xf4], overflow).contains("does not fit"));
    }
}
