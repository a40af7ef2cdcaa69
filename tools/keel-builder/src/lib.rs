//! The PVH domain builder: from a kernel (vmlinux or bzImage), an initrd, a command line, a
//! memory size and a vCPU count, the guest's initial memory and entry state, laid out as Xen's
//! toolstack lays out a PVH DomU (libxl and libxenguest), so that a stock Linux built with
//! `CONFIG_XEN_PVH` boots through its PVH entry.
//!
//! [`build`] computes everything and touches nothing: the caller creates the domain, backs
//! every range of [`Image::memory`] with zeroed memory, copies [`Image::writes`] in, and
//! starts the boot vCPU in [`Image::vcpu`]. The guest-physical map is described in
//! [`layout`]; the ACPI tables in [`acpi`]; the kernel formats in [`kernel`] and
//! [`decompress`]; the entry state in [`vcpu`].
use std::ops::Range;

use keel_core::xen::start_info::{HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo};

pub mod acpi;
pub mod decompress;
pub mod error;
pub mod kernel;
pub mod layout;
pub mod vcpu;

pub use error::{Compression, Error, Result};
pub use kernel::Kernel;
pub use layout::SpecialPages;
pub use vcpu::VcpuState;

use layout::{align_up, Ram, BOOT_INFO_LIMIT, BOOT_INFO_MIN, MAX_VCPUS, PAGE_SIZE};

/// The longest command line passed, without its NUL: Linux's x86 `COMMAND_LINE_SIZE` is
/// 2048 bytes with the NUL.
pub const MAX_CMDLINE: usize = 2047;

/// What to build.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    /// The kernel file: an x86-64 ELF vmlinux or a bzImage.
    pub kernel: &'a [u8],
    /// The initrd, if any (passed as module 0 of the start info).
    pub initrd: Option<&'a [u8]>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The domain's memory in bytes (a multiple of 4 KiB).
    pub memory: u64,
    /// The number of vCPUs.
    pub vcpus: u32,
}

/// Bytes to copy into guest memory at a guest-physical address.
#[derive(Clone, PartialEq, Eq)]
pub struct Write {
    /// Where the bytes go.
    pub gpa: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

impl Write {
    /// The guest-physical range written.
    pub fn range(&self) -> Range<u64> {
        self.gpa..self.gpa + self.bytes.len() as u64
    }
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Write({:#x}, {} bytes)", self.gpa, self.bytes.len())
    }
}

/// What a range of guest-physical memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// The domain's RAM.
    Ram,
    /// The ACPI tables' pages, outside RAM (NVS in the memory map).
    Acpi,
    /// The special pages (XenStore, console, ...), outside RAM (RESERVED in the map).
    Special,
}

/// A page-aligned range of guest-physical memory the domain must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// The range.
    pub range: Range<u64>,
    /// What it is for.
    pub kind: MemoryKind,
}

/// A built domain: its memory, what goes in it, and its boot vCPU's state.
#[derive(Clone, Debug)]
pub struct Image {
    /// Every range the domain must have memory behind, zeroed, sorted by address.
    pub memory: Vec<MemoryRange>,
    /// What to copy into that memory. Whatever is not written stays zero: a kernel segment's
    /// bss (`p_memsz` beyond `p_filesz`), the special pages.
    pub writes: Vec<Write>,
    /// The memory map the DomU is given (also written, in the boot info).
    pub memmap: Vec<HvmMemmapTableEntry>,
    /// The PVH entry point (EIP).
    pub entry: u32,
    /// The `hvm_start_info`'s address (EBX).
    pub start_info: u64,
    /// The ACPI RSDP's address (also in the start info).
    pub rsdp: u64,
    /// The special pages: `HVM_PARAM_STORE_PFN` is `special.xenstore_pfn`,
    /// `HVM_PARAM_CONSOLE_PFN` is `special.console_pfn`.
    pub special: SpecialPages,
    /// The boot vCPU's state at the entry.
    pub vcpu: VcpuState,
    /// Where the kernel's segments are (first start to last end, bss included).
    pub kernel: Range<u64>,
    /// Where the initrd is, if there is one.
    pub initrd: Option<Range<u64>>,
    /// The compression of the bzImage the kernel came from, `None` for a vmlinux.
    pub compression: Option<Compression>,
}

/// The first page-aligned place from `min` for `len` bytes that overlaps none of `used`.
fn first_free(min: u64, len: u64, used: &[Range<u64>]) -> u64 {
    let mut at = align_up(min, PAGE_SIZE);
    loop {
        match used.iter().find(|u| u.start < at + len && at < u.end) {
            Some(u) => at = align_up(u.end, PAGE_SIZE),
            None => return at,
        }
    }
}

/// Lays out and fills the boot info at `at`: the start info, the command line, the module
/// list and the memory map, one after the other (Xen's order, xg_dom_x86.c `bootlate_hvm`).
/// Returns the bytes.
fn boot_info(
    at: u64,
    cmdline: &str,
    initrd: Option<&Range<u64>>,
    rsdp: u64,
    memmap: &[HvmMemmapTableEntry],
) -> Vec<u8> {
    let cmdline_at = HvmStartInfo::SIZE as u64;
    let modlist_at = align_up(cmdline_at + cmdline.len() as u64 + 1, 8);
    let nr_modules = u32::from(initrd.is_some());
    let memmap_at = modlist_at + u64::from(nr_modules) * HvmModlistEntry::SIZE as u64;
    let si = HvmStartInfo {
        nr_modules,
        modlist_paddr: if initrd.is_some() { at + modlist_at } else { 0 },
        cmdline_paddr: at + cmdline_at,
        rsdp_paddr: rsdp,
        memmap_paddr: at + memmap_at,
        memmap_entries: u32::try_from(memmap.len()).expect("a few entries"),
        ..HvmStartInfo::new()
    };
    let mut b = si.to_bytes().to_vec();
    b.extend_from_slice(cmdline.as_bytes());
    b.resize(modlist_at as usize, 0); // the NUL and the padding
    if let Some(r) = initrd {
        let m = HvmModlistEntry {
            paddr: r.start,
            size: r.end - r.start,
            cmdline_paddr: 0,
            reserved: 0,
        };
        b.extend_from_slice(&m.to_bytes());
    }
    for e in memmap {
        b.extend_from_slice(&e.to_bytes());
    }
    b
}

/// The bytes the boot info takes for a command line of `cmdline_len` bytes.
fn boot_info_len(cmdline_len: usize, modules: usize, memmap_entries: usize) -> u64 {
    align_up((HvmStartInfo::SIZE + cmdline_len + 1) as u64, 8)
        + (modules * HvmModlistEntry::SIZE + memmap_entries * HvmMemmapTableEntry::SIZE) as u64
}

/// Builds a PVH domain (see the crate's doc).
pub fn build(cfg: &Config) -> Result<Image> {
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(Error::Vcpus {
            count: cfg.vcpus,
            max: MAX_VCPUS,
        });
    }
    if cfg.cmdline.len() > MAX_CMDLINE {
        return Err(Error::Cmdline(format!(
            "{} bytes, more than Linux's {MAX_CMDLINE}",
            cfg.cmdline.len()
        )));
    }
    if cfg.cmdline.contains('\0') {
        return Err(Error::Cmdline("it holds a NUL byte".into()));
    }
    let ram = Ram::new(cfg.memory)?;
    let kernel = Kernel::parse(cfg.kernel)?;
    for s in &kernel.segments {
        // Page 0 stays free: 0 means "absent" in the start info's address fields.
        if s.paddr < PAGE_SIZE || s.range().end > ram.low_end {
            return Err(Error::SegmentOutsideRam {
                start: s.paddr,
                end: s.range().end,
                ram_end: ram.low_end,
            });
        }
    }
    let kernel_range = kernel.range();

    // The initrd right after the kernel, page aligned (as Xen allocates modules after it).
    let initrd = cfg.initrd.filter(|i| !i.is_empty());
    let initrd_range = initrd
        .map(|i| {
            let start = align_up(kernel_range.end, PAGE_SIZE);
            let end = start + i.len() as u64;
            if end > ram.low_end {
                return Err(Error::Initrd(format!(
                    "{} bytes at {start:#x} end past low RAM at {:#x} (give the domain more memory)",
                    i.len(),
                    ram.low_end
                )));
            }
            Ok(start..end)
        })
        .transpose()?;

    let special = SpecialPages::XEN;
    let acpi = acpi::build(cfg.vcpus);
    let memmap = layout::memmap(&ram, acpi.range(), &special);

    let mut used = vec![kernel_range.clone()];
    used.extend(initrd_range.clone());
    let info_len = boot_info_len(
        cfg.cmdline.len(),
        usize::from(initrd.is_some()),
        memmap.len(),
    );
    let info_at = first_free(BOOT_INFO_MIN, info_len, &used);
    if info_at + info_len > BOOT_INFO_LIMIT.min(ram.low_end) {
        return Err(Error::Memory(format!(
            "no room below 1 GiB for the start info ({info_len} bytes) next to the kernel and \
             initrd"
        )));
    }
    let info = boot_info(
        info_at,
        cfg.cmdline,
        initrd_range.as_ref(),
        acpi.rsdp(),
        &memmap,
    );
    debug_assert_eq!(info.len() as u64, info_len);

    let mut writes: Vec<Write> = kernel
        .segments
        .iter()
        .filter(|s| !s.data.is_empty())
        .map(|s| Write {
            gpa: s.paddr,
            bytes: s.data.clone(),
        })
        .collect();
    if let (Some(i), Some(r)) = (initrd, &initrd_range) {
        writes.push(Write {
            gpa: r.start,
            bytes: i.to_vec(),
        });
    }
    writes.push(Write {
        gpa: info_at,
        bytes: info,
    });
    let rsdp = acpi.rsdp();
    let acpi_range = acpi.range();
    writes.push(Write {
        gpa: acpi.base,
        bytes: acpi.bytes,
    });
    writes.sort_by_key(|w| w.gpa);

    let mut memory: Vec<MemoryRange> = ram
        .ranges()
        .into_iter()
        .map(|range| MemoryRange {
            range,
            kind: MemoryKind::Ram,
        })
        .collect();
    memory.push(MemoryRange {
        range: acpi_range.start..align_up(acpi_range.end, PAGE_SIZE),
        kind: MemoryKind::Acpi,
    });
    memory.push(MemoryRange {
        range: special.range(),
        kind: MemoryKind::Special,
    });
    memory.sort_by_key(|m| m.range.start);

    let start_info = u32::try_from(info_at).expect("below 1 GiB");
    Ok(Image {
        memory,
        writes,
        memmap,
        entry: kernel.entry,
        start_info: info_at,
        rsdp,
        special,
        vcpu: VcpuState::pvh_entry(kernel.entry, start_info),
        kernel: kernel_range,
        initrd: initrd_range,
        compression: kernel.compression,
    })
}

#[cfg(test)]
mod tests;
