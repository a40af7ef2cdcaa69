//! What can go wrong building a domain, each case naming the problem in words a user can act on.
use std::fmt;

/// A compression format a bzImage payload can use (Linux's `CONFIG_KERNEL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// bzip2 (`CONFIG_KERNEL_BZIP2`).
    Bzip2,
    /// The legacy .lzma format (`CONFIG_KERNEL_LZMA`).
    Lzma,
    /// .xz, with the x86 BCJ filter (`CONFIG_KERNEL_XZ`).
    Xz,
    /// LZO (`CONFIG_KERNEL_LZO`): recognised, not supported.
    Lzo,
    /// The legacy LZ4 frame (`CONFIG_KERNEL_LZ4`).
    Lz4,
    /// zstd (`CONFIG_KERNEL_ZSTD`).
    Zstd,
}

impl Compression {
    /// The name Linux's Kconfig uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Bzip2 => "bzip2",
            Self::Lzma => "lzma",
            Self::Xz => "xz",
            Self::Lzo => "lzo",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Why a domain could not be built.
#[derive(Debug)]
pub enum Error {
    /// The kernel is neither an ELF file nor a bzImage.
    NotAKernel,
    /// The kernel file ends before a structure it describes: `what` names that structure.
    Truncated {
        /// The structure that does not fit.
        what: &'static str,
    },
    /// The ELF file is not a little-endian x86-64 executable.
    UnsupportedElf(&'static str),
    /// The ELF has no `XEN_ELFNOTE_PHYS32_ENTRY` note: the kernel was not built with
    /// `CONFIG_XEN_PVH`.
    NoPvhEntry,
    /// The PHYS32_ENTRY note's value has a size other than 4 or 8 bytes.
    BadPvhNote(usize),
    /// The ELF has no PT_LOAD segment.
    NoLoadSegments,
    /// A PT_LOAD segment (`[start, end)` guest-physical) does not lie in the domain's low RAM.
    SegmentOutsideRam {
        /// First byte of the segment.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The end of low RAM it must fit below.
        ram_end: u64,
    },
    /// Two PT_LOAD segments overlap.
    SegmentsOverlap(u64),
    /// The PVH entry point is not inside a loaded segment.
    EntryOutsideImage(u64),
    /// The bzImage's boot protocol is older than 2.08, which added payload_offset/length.
    OldBootProtocol(u16),
    /// The bzImage payload uses a compression this builder cannot decompress (or none it
    /// recognises: then `None`, with the payload's first bytes).
    UnknownCompression(Option<Compression>, [u8; 4]),
    /// The payload did not decompress.
    Decompress(Compression, String),
    /// The decompressed size differs from the one the bzImage records after the payload.
    DecompressedSize {
        /// The compression used.
        compression: Compression,
        /// The size the bzImage records.
        expected: u64,
        /// The size the payload decompressed to (capped at `expected + 1`).
        got: u64,
    },
    /// The decompressed payload of the bzImage is not an ELF file.
    PayloadNotElf,
    /// The memory size is not supported; the string says why.
    Memory(String),
    /// The vCPU count is not supported.
    Vcpus {
        /// The count asked for.
        count: u32,
        /// The most supported.
        max: u32,
    },
    /// The command line cannot be passed (too long, or it holds a NUL byte).
    Cmdline(String),
    /// The initrd does not fit (the string says where it would go).
    Initrd(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAKernel => {
                write!(f, "not a kernel: neither an ELF file (vmlinux) nor a bzImage (no \"HdrS\" setup header)")
            }
            Self::Truncated { what } => {
                write!(f, "truncated kernel: the file ends inside the {what}")
            }
            Self::UnsupportedElf(why) => write!(f, "unsupported ELF file: {why}"),
            Self::NoPvhEntry => write!(
                f,
                "the kernel has no PVH entry point (no Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY): \
                 build it with CONFIG_XEN_PVH=y"
            ),
            Self::BadPvhNote(n) => {
                write!(
                    f,
                    "the XEN_ELFNOTE_PHYS32_ENTRY note holds {n} bytes, not 4 or 8"
                )
            }
            Self::NoLoadSegments => write!(f, "the ELF file has no PT_LOAD segment"),
            Self::SegmentOutsideRam {
                start,
                end,
                ram_end,
            } => write!(
                f,
                "kernel segment [{start:#x}, {end:#x}) lies outside the domain's RAM below \
                 {ram_end:#x} (give the domain more memory)"
            ),
            Self::SegmentsOverlap(at) => write!(f, "kernel segments overlap at {at:#x}"),
            Self::EntryOutsideImage(entry) => {
                write!(
                    f,
                    "the PVH entry point {entry:#x} is not inside a loaded segment"
                )
            }
            Self::OldBootProtocol(v) => write!(
                f,
                "bzImage boot protocol {}.{:02} is older than 2.08 (no payload_offset): \
                 pass the vmlinux instead",
                v >> 8,
                v & 0xff
            ),
            Self::UnknownCompression(Some(c), _) => write!(
                f,
                "the bzImage payload is {}-compressed, which is not supported: rebuild the \
                 kernel with another CONFIG_KERNEL_* compression or pass the vmlinux",
                c.name()
            ),
            Self::UnknownCompression(None, magic) => write!(
                f,
                "unknown compression of the bzImage payload (it starts {magic:02x?}): expected \
                 gzip, bzip2, lzma, xz, lz4 or zstd"
            ),
            Self::Decompress(c, why) => {
                write!(f, "the {} payload did not decompress: {why}", c.name())
            }
            Self::DecompressedSize {
                compression,
                expected,
                got,
            } => write!(
                f,
                "the {} payload decompressed to {got} bytes but the bzImage records {expected}",
                compression.name()
            ),
            Self::PayloadNotElf => {
                write!(
                    f,
                    "the bzImage payload decompressed, but it is not an ELF file"
                )
            }
            Self::Memory(why) => write!(f, "unsupported memory size: {why}"),
            Self::Vcpus { count, max } => write!(
                f,
                "unsupported vCPU count {count}: between 1 and {max} (Xen's HVM_MAX_VCPUS)"
            ),
            Self::Cmdline(why) => write!(f, "bad command line: {why}"),
            Self::Initrd(why) => write!(f, "the initrd does not fit: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// The builder's result type.
pub type Result<T> = std::result::Result<T, Error>;
