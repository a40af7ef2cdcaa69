//! The PVH start-of-day structure: `struct hvm_start_info` (version 1), its module list and
//! its memory map, as Xen's public header `xen/include/public/arch-x86/hvm/start_info.h` lays
//! them out (Linux's copy: `include/xen/interface/hvm/start_info.h`).
//!
//! The domain builder writes these into DomU memory and passes the start info's address in
//! EBX at the PVH entry point. Every field is little-endian, every address guest-physical, and
//! 0 in an address field means "absent" (nothing is ever loaded at guest-physical 0). The
//! types are `#[repr(C)]` with their size and offsets checked at compile time; `to_bytes` and
//! `from_bytes` give the guest's byte image without any `unsafe`.

use core::mem::{offset_of, size_of};

/// `XEN_HVM_START_MAGIC_VALUE`: "xEn3" with the 0x80 bit of the "E" set. Linux `BUG()`s on
/// anything else (`xen_prepare_pvh`).
pub const HVM_START_MAGIC: u32 = 0x336e_c578;

/// The version this file describes: version 1 added `memmap_paddr` and `memmap_entries`
/// (Linux reads the memory map only when `version > 0`).
pub const HVM_START_INFO_VERSION: u32 = 1;

/// `SIF_INITDOMAIN` in [`HvmStartInfo::flags`]: the domain is Dom0. A DomU's flags are 0.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

/// The memory-map entry types (`XEN_HVM_MEMMAP_TYPE_*`): the ACPI address range types, the
/// same numbers as the BIOS e820 types.
pub mod memmap_type {
    /// Usable RAM.
    pub const RAM: u32 = 1;
    /// Reserved: not RAM, not for the OS to use (the special pages, MMIO).
    pub const RESERVED: u32 = 2;
    /// ACPI reclaimable: the OS may reuse it once it has read the ACPI tables.
    pub const ACPI: u32 = 3;
    /// ACPI NVS: holds ACPI data the OS must preserve.
    pub const NVS: u32 = 4;
    /// Unusable (memory with errors; Linux uses PVH ranges of this type as room for foreign
    /// and grant mappings).
    pub const UNUSABLE: u32 = 5;
    /// Disabled.
    pub const DISABLED: u32 = 6;
    /// Persistent memory.
    pub const PMEM: u32 = 7;
}

/// `struct hvm_start_info`, version 1 (56 bytes). Linux copies exactly these 56 bytes from
/// EBX whatever the version says (`pvh_start_xen`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// [`HVM_START_MAGIC`].
    pub magic: u32, // 0x00
    /// [`HVM_START_INFO_VERSION`].
    pub version: u32, // 0x04
    /// `SIF_*` flags; 0 for a DomU.
    pub flags: u32, // 0x08
    /// Entries in the module list (Linux takes module 0 as its initrd).
    pub nr_modules: u32, // 0x0c
    /// Address of an array of [`HvmModlistEntry`], or 0.
    pub modlist_paddr: u64, // 0x10
    /// Address of the kernel command line (NUL-terminated ASCII), or 0.
    pub cmdline_paddr: u64, // 0x18
    /// Address of the ACPI RSDP, or 0 (Linux then scans the legacy BIOS areas).
    pub rsdp_paddr: u64, // 0x20
    /// Address of an array of [`HvmMemmapTableEntry`], or 0 (version 1).
    pub memmap_paddr: u64, // 0x28
    /// Entries in the memory map; 0 when there is none (version 1).
    pub memmap_entries: u32, // 0x30
    /// Must be 0 (version 1).
    pub reserved: u32, // 0x34
}

/// `struct hvm_modlist_entry` (32 bytes): one module (an initrd) in guest memory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    /// Address of the module.
    pub paddr: u64, // 0x00
    /// Size of the module in bytes.
    pub size: u64, // 0x08
    /// Address of the module's command line (NUL-terminated ASCII), or 0.
    pub cmdline_paddr: u64, // 0x10
    /// Must be 0.
    pub reserved: u64, // 0x18
}

/// `struct hvm_memmap_table_entry` (24 bytes): one range of the guest-physical map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapTableEntry {
    /// Base address of the range.
    pub addr: u64, // 0x00
    /// Size of the range in bytes.
    pub size: u64, // 0x08
    /// A [`memmap_type`] number.
    pub r#type: u32, // 0x10
    /// Must be 0 (version 1).
    pub reserved: u32, // 0x14
}

const _: () = {
    assert!(size_of::<HvmStartInfo>() == HvmStartInfo::SIZE);
    assert!(offset_of!(HvmStartInfo, magic) == 0x00);
    assert!(offset_of!(HvmStartInfo, version) == 0x04);
    assert!(offset_of!(HvmStartInfo, flags) == 0x08);
    assert!(offset_of!(HvmStartInfo, nr_modules) == 0x0c);
    assert!(offset_of!(HvmStartInfo, modlist_paddr) == 0x10);
    assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 0x18);
    assert!(offset_of!(HvmStartInfo, rsdp_paddr) == 0x20);
    assert!(offset_of!(HvmStartInfo, memmap_paddr) == 0x28);
    assert!(offset_of!(HvmStartInfo, memmap_entries) == 0x30);
    assert!(offset_of!(HvmStartInfo, reserved) == 0x34);
    assert!(size_of::<HvmModlistEntry>() == HvmModlistEntry::SIZE);
    assert!(offset_of!(HvmModlistEntry, paddr) == 0x00);
    assert!(offset_of!(HvmModlistEntry, size) == 0x08);
    assert!(offset_of!(HvmModlistEntry, cmdline_paddr) == 0x10);
    assert!(offset_of!(HvmModlistEntry, reserved) == 0x18);
    assert!(size_of::<HvmMemmapTableEntry>() == HvmMemmapTableEntry::SIZE);
    assert!(offset_of!(HvmMemmapTableEntry, addr) == 0x00);
    assert!(offset_of!(HvmMemmapTableEntry, size) == 0x08);
    assert!(offset_of!(HvmMemmapTableEntry, r#type) == 0x10);
    assert!(offset_of!(HvmMemmapTableEntry, reserved) == 0x14);
};

/// Copies `N` bytes at `at` out of `b` (the offsets are the compile-time-checked ones above).
const fn take<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    let mut i = 0;
    while i < N {
        out[i] = b[at + i];
        i += 1;
    }
    out
}

/// A field that [`put`] can store little-endian.
trait Field: Copy {
    /// Stores `self` little-endian at the start of `b`.
    fn store(self, b: &mut [u8]);
}

impl Field for u32 {
    fn store(self, b: &mut [u8]) {
        b[..4].copy_from_slice(&self.to_le_bytes());
    }
}

impl Field for u64 {
    fn store(self, b: &mut [u8]) {
        b[..8].copy_from_slice(&self.to_le_bytes());
    }
}

/// Stores `v` little-endian into `b` at `at`.
fn put(b: &mut [u8], at: usize, v: impl Field) {
    v.store(&mut b[at..]);
}

impl HvmStartInfo {
    /// Bytes in the guest's image of the structure.
    pub const SIZE: usize = 56;

    /// A version 1 start info with the magic set and every other field 0.
    pub const fn new() -> Self {
        Self {
            magic: HVM_START_MAGIC,
            version: HVM_START_INFO_VERSION,
            flags: 0,
            nr_modules: 0,
            modlist_paddr: 0,
            cmdline_paddr: 0,
            rsdp_paddr: 0,
            memmap_paddr: 0,
            memmap_entries: 0,
            reserved: 0,
        }
    }

    /// The structure as the guest sees it in memory.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, offset_of!(Self, magic), self.magic);
        put(&mut b, offset_of!(Self, version), self.version);
        put(&mut b, offset_of!(Self, flags), self.flags);
        put(&mut b, offset_of!(Self, nr_modules), self.nr_modules);
        put(&mut b, offset_of!(Self, modlist_paddr), self.modlist_paddr);
        put(&mut b, offset_of!(Self, cmdline_paddr), self.cmdline_paddr);
        put(&mut b, offset_of!(Self, rsdp_paddr), self.rsdp_paddr);
        put(&mut b, offset_of!(Self, memmap_paddr), self.memmap_paddr);
        put(
            &mut b,
            offset_of!(Self, memmap_entries),
            self.memmap_entries,
        );
        put(&mut b, offset_of!(Self, reserved), self.reserved);
        b
    }

    /// Reads the structure from the guest's bytes.
    pub const fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            magic: u32::from_le_bytes(take(b, offset_of!(Self, magic))),
            version: u32::from_le_bytes(take(b, offset_of!(Self, version))),
            flags: u32::from_le_bytes(take(b, offset_of!(Self, flags))),
            nr_modules: u32::from_le_bytes(take(b, offset_of!(Self, nr_modules))),
            modlist_paddr: u64::from_le_bytes(take(b, offset_of!(Self, modlist_paddr))),
            cmdline_paddr: u64::from_le_bytes(take(b, offset_of!(Self, cmdline_paddr))),
            rsdp_paddr: u64::from_le_bytes(take(b, offset_of!(Self, rsdp_paddr))),
            memmap_paddr: u64::from_le_bytes(take(b, offset_of!(Self, memmap_paddr))),
            memmap_entries: u32::from_le_bytes(take(b, offset_of!(Self, memmap_entries))),
            reserved: u32::from_le_bytes(take(b, offset_of!(Self, reserved))),
        }
    }
}

impl HvmModlistEntry {
    /// Bytes in the guest's image of one entry.
    pub const SIZE: usize = 32;

    /// The entry as the guest sees it in memory.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, offset_of!(Self, paddr), self.paddr);
        put(&mut b, offset_of!(Self, size), self.size);
        put(&mut b, offset_of!(Self, cmdline_paddr), self.cmdline_paddr);
        put(&mut b, offset_of!(Self, reserved), self.reserved);
        b
    }

    /// Reads an entry from the guest's bytes.
    pub const fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            paddr: u64::from_le_bytes(take(b, offset_of!(Self, paddr))),
            size: u64::from_le_bytes(take(b, offset_of!(Self, size))),
            cmdline_paddr: u64::from_le_bytes(take(b, offset_of!(Self, cmdline_paddr))),
            reserved: u64::from_le_bytes(take(b, offset_of!(Self, reserved))),
        }
    }
}

impl HvmMemmapTableEntry {
    /// Bytes in the guest's image of one entry.
    pub const SIZE: usize = 24;

    /// An entry for `size` bytes at `addr` of type `ty` (a [`memmap_type`] number).
    pub const fn new(addr: u64, size: u64, ty: u32) -> Self {
        Self {
            addr,
            size,
            r#type: ty,
            reserved: 0,
        }
    }

    /// The end of the range (exclusive), saturating at `u64::MAX`.
    pub const fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }

    /// The entry as the guest sees it in memory.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, offset_of!(Self, addr), self.addr);
        put(&mut b, offset_of!(Self, size), self.size);
        put(&mut b, offset_of!(Self, r#type), self.r#type);
        put(&mut b, offset_of!(Self, reserved), self.reserved);
        b
    }

    /// Reads an entry from the guest's bytes.
    pub const fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            addr: u64::from_le_bytes(take(b, offset_of!(Self, addr))),
            size: u64::from_le_bytes(take(b, offset_of!(Self, size))),
            r#type: u32::from_le_bytes(take(b, offset_of!(Self, r#type))),
            reserved: u32::from_le_bytes(take(b, offset_of!(Self, reserved))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_info_bytes_follow_the_header_layout() {
        let si = HvmStartInfo {
            nr_modules: 1,
            modlist_paddr: 0x1122_3344_5566_7788,
            cmdline_paddr: 0x1000,
            rsdp_paddr: 0xfc00_0000,
            memmap_paddr: 0x2000,
            memmap_entries: 5,
            ..HvmStartInfo::new()
        };
        let b = si.to_bytes();
        assert_eq!(b[0..4], [0x78, 0xc5, 0x6e, 0x33]);
        assert_eq!(b[4..8], 1u32.to_le_bytes());
        assert_eq!(b[8..12], [0; 4]);
        assert_eq!(b[12..16], 1u32.to_le_bytes());
        assert_eq!(b[16..24], [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(b[24..32], 0x1000u64.to_le_bytes());
        assert_eq!(b[32..40], 0xfc00_0000u64.to_le_bytes());
        assert_eq!(b[40..48], 0x2000u64.to_le_bytes());
        assert_eq!(b[48..52], 5u32.to_le_bytes());
        assert_eq!(b[52..56], [0; 4]);
        assert_eq!(HvmStartInfo::from_bytes(&b), si);
    }

    #[test]
    fn modlist_entry_round_trips() {
        let m = HvmModlistEntry {
            paddr: 0x0200_0000,
            size: 0x1234,
            cmdline_paddr: 0,
            reserved: 0,
        };
        let b = m.to_bytes();
        assert_eq!(b[0..8], 0x0200_0000u64.to_le_bytes());
        assert_eq!(b[8..16], 0x1234u64.to_le_bytes());
        assert_eq!(b[16..32], [0; 16]);
        assert_eq!(HvmModlistEntry::from_bytes(&b), m);
    }

    #[test]
    fn memmap_entry_round_trips() {
        let e = HvmMemmapTableEntry::new(0xfeff_8000, 0x8000, memmap_type::RESERVED);
        let b = e.to_bytes();
        assert_eq!(b[0..8], 0xfeff_8000u64.to_le_bytes());
        assert_eq!(b[8..16], 0x8000u64.to_le_bytes());
        assert_eq!(b[16..20], 2u32.to_le_bytes());
        assert_eq!(b[20..24], [0; 4]);
        assert_eq!(HvmMemmapTableEntry::from_bytes(&b), e);
        assert_eq!(e.end(), 0xff00_0000);
    }

    #[test]
    fn memmap_types_are_the_e820_numbers() {
        use memmap_type::*;
        assert_eq!(
            [RAM, RESERVED, ACPI, NVS, UNUSABLE, DISABLED, PMEM],
            [1, 2, 3, 4, 5, 6, 7]
        );
    }
}
