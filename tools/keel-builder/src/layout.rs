//! The guest-physical map of a PVH DomU: where RAM, the ACPI tables and the special pages are,
//! and the memory map the DomU is given.
//!
//! ```text
//! 0                 RAM (RAM below 1 MiB must be in the map: Linux's AP trampoline)
//!   0x0010_0000     boot info: hvm_start_info, command line, module list, memory map
//!   p_paddr         the kernel's PT_LOAD segments (16 MiB for x86-64 Linux)
//!   kernel end      the initrd (page aligned, right after the kernel, as Xen)
//! low_ram_end       min(memory, 0xF000_0000)
//! 0xFC00_0000       ACPI tables (RSDP first), memory outside RAM, ACPI NVS in the map
//! 0xFEE0_0000       local APIC (not memory)
//! 0xFEFF_8000       8 special pages (XenStore and console rings), RESERVED in the map
//! 4 GiB             RAM above 4 GiB: memory - 0xF000_0000, when memory > 0xF000_0000
//! ```
//!
//! Facts this rests on:
//! - Xen's libxl makes PVH RAM one range from 0 up to the MMIO hole, then the rest from 4 GiB
//!   (tools/libs/light/libxl_dom.c `libxl__build_hvm`: without a device model the hole starts
//!   at the lowest of the special region, the LAPIC and the ACPI info page, 0xFC00_0000), and
//!   gives the DomU that map with the special pages RESERVED and the ACPI pages NVS
//!   (tools/libs/light/libxl_x86.c `domain_construct_memmap`). Keel stops low RAM at
//!   0xF000_0000 instead, keeping 64 MiB of hole below the ACPI tables free for MMIO ranges
//!   to come; Xen's map lists the ranges in the order it adds them, Keel's is sorted.
//! - The special pages: 8 pages ending at pfn 0xFF000 (tools/include/xenguest.h
//!   `X86_HVM_END_SPECIAL_REGION`, `X86_HVM_NR_SPECIAL_PAGES`), indexed as
//!   tools/libs/guest/xg_dom_x86.c `special_pfn` numbers them (see [`SpecialPages`]).
//! - The ACPI tables: libxl puts them at `ACPI_INFO_PHYSICAL_ADDRESS` = 0xFC00_0000 (an info
//!   page for its AML, then the tables, then the RSDP for Linux with
//!   `XENFEAT_linux_rsdp_unrestricted`; tools/libs/light/libxl_x86_acpi.c
//!   `libxl__dom_load_acpi`). Keel's AML needs no info page, so the RSDP comes first, at
//!   0xFC00_0000, and the tables after it in the same page.
//! - The boot info: Linux reads the memory map and module list through `__va()` while
//!   its PVH entry maps only the first 1 GiB, and stores the command line and initrd
//!   addresses in 32-bit fields (arch/x86/platform/pvh/enlighten.c `init_pvh_bootparams`,
//!   head.S); it copies all of it before it allocates memory, so these pages are not reserved
//!   in the map. Xen puts them in one segment after the kernel and modules
//!   (xg_dom_x86.c `bootlate_hvm`); Keel puts them at the first free page from 1 MiB, below
//!   the kernel, so a large initrd never pushes them past 1 GiB.
use std::ops::Range;

use keel_core::xen::start_info::{memmap_type, HvmMemmapTableEntry};

use crate::error::{Error, Result};

/// Bytes in a page.
pub const PAGE_SIZE: u64 = 4096;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 4 GiB: where RAM above the hole starts.
pub const FOUR_GIB: u64 = 4 << 30;

/// Low RAM ends here at the latest; the rest of the domain's memory goes above 4 GiB.
pub const LOW_RAM_LIMIT: u64 = 0xF000_0000;
/// The smallest memory size accepted: room for the boot info, a kernel at 16 MiB and its
/// early allocations.
pub const MIN_MEMORY: u64 = 32 * MIB;
/// The largest memory size accepted (so that every guest-physical address stays below 2^39,
/// the smallest physical address width of the x86-64 CPUs Keel runs on).
pub const MAX_MEMORY: u64 = 256 * GIB;
/// The most vCPUs a domain may have: Xen's `HVM_MAX_VCPUS` (xen/include/public/hvm/
/// hvm_info_table.h), which also keeps every APIC ID below the xAPIC broadcast ID 0xFF.
pub const MAX_VCPUS: u32 = 128;

/// Where the ACPI tables start (the RSDP is the first thing there).
pub const ACPI_BASE: u64 = 0xFC00_0000;
/// The most bytes the ACPI tables may take (Xen's `NUM_ACPI_PAGES`, 16 pages).
pub const ACPI_MAX_SIZE: u64 = 16 * PAGE_SIZE;
/// The local APIC's MMIO page (`LAPIC_BASE_ADDRESS`), the MADT's local APIC address.
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// The first of the special pages' pfns: `X86_HVM_END_SPECIAL_REGION` (0xFF000) -
/// `X86_HVM_NR_SPECIAL_PAGES` (8).
pub const SPECIAL_PFN_BASE: u64 = 0xFF000 - SPECIAL_PAGES;
/// How many special pages there are.
pub const SPECIAL_PAGES: u64 = 8;
/// Where the boot info (start info, command line, module list, memory map) goes at the
/// earliest.
pub const BOOT_INFO_MIN: u64 = MIB;
/// The boot info must end below this (the PVH entry maps the first 1 GiB only).
pub const BOOT_INFO_LIMIT: u64 = GIB;

/// The special pages, by their index in Xen's `special_pfn()` (xg_dom_x86.c
/// `SPECIALPAGE_*`): pfn = [`SPECIAL_PFN_BASE`] + index. Keel uses the XenStore and console
/// pages; the others are there, zeroed and reserved, so the pfns match Xen's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialPages {
    /// The first special page's pfn (0xFEFF8).
    pub base_pfn: u64,
    /// `SPECIALPAGE_PAGING` (0): the paging ring (unused by Keel).
    pub paging_pfn: u64,
    /// `SPECIALPAGE_ACCESS` (1): the VM-event access ring (unused).
    pub access_pfn: u64,
    /// `SPECIALPAGE_SHARING` (2): the sharing ring (unused).
    pub sharing_pfn: u64,
    /// `SPECIALPAGE_BUFIOREQ` (3): buffered ioreqs for a device model (unused).
    pub bufioreq_pfn: u64,
    /// `SPECIALPAGE_XENSTORE` (4): the XenStore ring, `HVM_PARAM_STORE_PFN` (0xFEFFC).
    pub xenstore_pfn: u64,
    /// `SPECIALPAGE_IOREQ` (5): synchronous ioreqs for a device model (unused).
    pub ioreq_pfn: u64,
    /// `SPECIALPAGE_IDENT_PT` (6): identity page tables for unpaged real mode (unused).
    pub ident_pt_pfn: u64,
    /// `SPECIALPAGE_CONSOLE` (7): the PV console ring, `HVM_PARAM_CONSOLE_PFN` (0xFEFFF).
    pub console_pfn: u64,
}

impl SpecialPages {
    /// Xen's special-page layout.
    pub const XEN: Self = Self {
        base_pfn: SPECIAL_PFN_BASE,
        paging_pfn: SPECIAL_PFN_BASE,
        access_pfn: SPECIAL_PFN_BASE + 1,
        sharing_pfn: SPECIAL_PFN_BASE + 2,
        bufioreq_pfn: SPECIAL_PFN_BASE + 3,
        xenstore_pfn: SPECIAL_PFN_BASE + 4,
        ioreq_pfn: SPECIAL_PFN_BASE + 5,
        ident_pt_pfn: SPECIAL_PFN_BASE + 6,
        console_pfn: SPECIAL_PFN_BASE + 7,
    };

    /// The guest-physical range the special pages cover.
    pub fn range(&self) -> Range<u64> {
        self.base_pfn * PAGE_SIZE..(self.base_pfn + SPECIAL_PAGES) * PAGE_SIZE
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two).
pub const fn align_up(x: u64, align: u64) -> u64 {
    (x + align - 1) & !(align - 1)
}

/// Where the domain's RAM is: `[0, low_end)` and, for memory above [`LOW_RAM_LIMIT`],
/// `[4 GiB, high_end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ram {
    /// The end of RAM below the hole.
    pub low_end: u64,
    /// The end of RAM above 4 GiB, or 4 GiB when there is none.
    pub high_end: u64,
}

impl Ram {
    /// Splits `memory` bytes around the hole below 4 GiB, refusing sizes the layout does not
    /// support.
    pub fn new(memory: u64) -> Result<Self> {
        if !memory.is_multiple_of(PAGE_SIZE) {
            return Err(Error::Memory(format!(
                "{memory:#x} bytes is not a whole number of 4 KiB pages"
            )));
        }
        if memory < MIN_MEMORY {
            return Err(Error::Memory(format!(
                "{} MiB is less than the minimum of {} MiB",
                memory / MIB,
                MIN_MEMORY / MIB
            )));
        }
        if memory > MAX_MEMORY {
            return Err(Error::Memory(format!(
                "{} GiB is more than the maximum of {} GiB",
                memory / GIB,
                MAX_MEMORY / GIB
            )));
        }
        let low_end = memory.min(LOW_RAM_LIMIT);
        Ok(Self {
            low_end,
            high_end: FOUR_GIB + (memory - low_end),
        })
    }

    /// The guest-physical ranges of RAM.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        let high = (self.high_end > FOUR_GIB).then_some(FOUR_GIB..self.high_end);
        std::iter::once(0..self.low_end).chain(high).collect()
    }
}

/// The DomU's memory map, sorted by address: RAM, the ACPI tables' pages as NVS (libxl's
/// choice: Xen's tables are not reclaimable, and kexec passes NVS on), the special pages as
/// RESERVED, RAM above 4 GiB.
pub fn memmap(ram: &Ram, acpi: Range<u64>, special: &SpecialPages) -> Vec<HvmMemmapTableEntry> {
    let acpi_start = acpi.start & !(PAGE_SIZE - 1);
    let acpi_end = align_up(acpi.end, PAGE_SIZE);
    let special = special.range();
    let mut map = vec![
        HvmMemmapTableEntry::new(0, ram.low_end, memmap_type::RAM),
        HvmMemmapTableEntry::new(acpi_start, acpi_end - acpi_start, memmap_type::NVS),
        HvmMemmapTableEntry::new(
            special.start,
            special.end - special.start,
            memmap_type::RESERVED,
        ),
    ];
    if ram.high_end > FOUR_GIB {
        map.push(HvmMemmapTableEntry::new(
            FOUR_GIB,
            ram.high_end - FOUR_GIB,
            memmap_type::RAM,
        ));
    }
    map.sort_by_key(|e| e.addr);
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_pages_are_xens() {
        let s = SpecialPages::XEN;
        assert_eq!(s.base_pfn, 0xfeff8);
        assert_eq!(s.xenstore_pfn, 0xfeffc);
        assert_eq!(s.console_pfn, 0xfefff);
        assert_eq!(s.range(), 0xfeff_8000..0xff00_0000);
    }

    #[test]
    fn small_memory_is_all_low() {
        let r = Ram::new(512 * MIB).unwrap();
        assert_eq!(r.ranges(), vec![0..512 * MIB]);
    }

    #[test]
    fn large_memory_goes_above_4g() {
        let r = Ram::new(8 * GIB).unwrap();
        assert_eq!(
            r.ranges(),
            vec![
                0..LOW_RAM_LIMIT,
                FOUR_GIB..FOUR_GIB + 8 * GIB - LOW_RAM_LIMIT
            ]
        );
    }

    #[test]
    fn unsupported_sizes_are_refused() {
        for bad in [0, 16 * MIB, 64 * MIB + 1, MAX_MEMORY + PAGE_SIZE] {
            let e = Ram::new(bad).unwrap_err();
            assert!(matches!(e, Error::Memory(_)), "{bad:#x}: {e}");
        }
        assert!(Ram::new(MAX_MEMORY).is_ok());
    }
}
