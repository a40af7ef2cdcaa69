//! Second-level address translation: building Intel EPT and AMD NPT tables for a guest.
//!
//! Both are four-level radix trees over a 48-bit guest-physical address, with 512 eight-byte
//! entries per 4 KiB table, indexed by GPA bits 47:39, 38:30, 29:21 and 20:12. A leaf may sit
//! at the third level (1 GiB page) or the second (2 MiB page) instead of the last. The formats
//! differ only in the entry bits:
//!
//! - EPT (SDM Vol. 3C, 29.3.2): bits 0/1/2 read/write/execute; an entry is present when any of
//!   them is set. Leaves carry the memory type in bits 5:3 (always write-back here) and, for
//!   2 MiB and 1 GiB pages, bit 7.
//! - NPT (APM Vol. 2, 15.25): ordinary long-mode page-table entries (P, R/W, U/S, PS, NX),
//!   walked as user accesses, so U/S is set everywhere. There is no way to make a present page
//!   unreadable.
//!
//! The caller owns the table memory through [`Tables`]; this module only reads and writes
//! entries. Tables are never freed here: [`for_each_table`] lists them for the caller to free.
//!
//! [`map`] builds a tree that is not in use yet. [`remap`] and [`unmap_range`] change a live
//! one, which other CPUs may be walking while it changes (a vCPU of the domain running
//! elsewhere); their contract:
//!
//! - **Every gfn translates to its old or its new mapping at every instant.** New tables are
//!   filled completely while nothing points at them, then linked in with one aligned 8-byte
//!   store ([`Tables::store`]) after a release fence; a leaf is changed or cleared with one
//!   such store. Splitting a large page keeps every other page's address, rights and memory
//!   type bits, so a walker that sees the old large leaf or the new table translates them
//!   alike. (Accessed/dirty bits that an NPT walk sets in the old leaf while it is being
//!   copied may be lost; Keel uses neither, and EPT accessed/dirty flags are off in [`eptp`].)
//! - **The caller serializes writers**: one lock per tree, held across each call (walkers are
//!   the CPUs' page walks and [`translate`], which never write).
//! - **The caller flushes**: CPUs cache translations (TLB, paging-structure caches) for as
//!   long as they like. After a change and before relying on it (freeing or reusing a page
//!   that was unmapped or replaced, telling the guest its change is done), the caller
//!   invalidates on every CPU that may have run the domain: INVEPT (single-context, this
//!   tree's [`eptp`]) on Intel; a new ASID or a TLB_CONTROL flush of the domain's ASID before
//!   its next VMRUN on AMD, with an IPI to CPUs running it now. Until then a CPU may go on
//!   using the old page, including through the old large page a split replaced.
//! - Nothing here frees memory: a table that a change empties stays in the tree, the pages a
//!   change unmaps are returned for the caller to free after the flush, and tables allocated
//!   by a call that then fails for lack of memory are not linked anywhere (they stay owned by
//!   the [`Tables`] implementation, which frees them with the rest of its set).

use core::sync::atomic::{fence, Ordering};

/// Which second-level table format to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Intel extended page tables.
    Ept,
    /// AMD nested page tables.
    Npt,
}

/// The access rights of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perms {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Instruction fetches allowed.
    pub exec: bool,
}

impl Perms {
    /// Read, write and execute: ordinary RAM.
    pub const RWX: Self = Self::new(true, true, true);
    /// Read and write, no execute: device memory.
    pub const RW: Self = Self::new(true, true, false);
    /// Read and execute: code.
    pub const RX: Self = Self::new(true, false, true);
    /// Read only.
    pub const R: Self = Self::new(true, false, false);

    /// Permissions from the three rights.
    pub const fn new(read: bool, write: bool, exec: bool) -> Self {
        Self { read, write, exec }
    }
}

/// Which page sizes above 4 KiB [`map`] may use. The caller decides from the CPU's
/// capabilities: EPT reports 2 MiB and 1 GiB support in `IA32_VMX_EPT_VPID_CAP` bits 16 and
/// 17; NPT always has 2 MiB pages and has 1 GiB pages when CPUID Fn8000_0001 EDX bit 26 is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LargePages {
    /// 4 KiB pages only.
    None,
    /// 4 KiB and 2 MiB pages.
    Upto2M,
    /// 4 KiB, 2 MiB and 1 GiB pages.
    Upto1G,
}

impl LargePages {
    /// Whether a leaf at the level indexed by address bits `shift + 8 : shift` is allowed.
    fn allows(self, shift: u32) -> bool {
        match shift {
            PAGE_SHIFT => true,
            LARGE_2M_SHIFT => self != Self::None,
            LARGE_1G_SHIFT => self == Self::Upto1G,
            _ => false,
        }
    }
}

/// The memory holding the tables, provided by the caller.
pub trait Tables {
    /// Allocates a zeroed 4 KiB table and returns its physical address, which must be 4 KiB
    /// aligned and below 2^52; `None` when out of memory.
    fn alloc(&mut self) -> Option<u64>;

    /// The entries of the table at physical address `phys`, which is the root passed to this
    /// module's functions or an address [`Tables::alloc`] returned.
    fn entries(&mut self, phys: u64) -> &mut [u64; 512];

    /// Writes entry `index` of the table at `phys` in a tree that CPUs may be walking: the
    /// store must be one aligned 8-byte write, so that no walker sees half of the old entry
    /// and half of the new. [`remap`] and [`unmap_range`] write live entries only through
    /// this, after a release fence. The default is a plain store, which is one `mov` on
    /// x86-64; an implementation may make that a language guarantee with an atomic store
    /// (`AtomicU64::from_ptr(..).store(entry, Ordering::Release)`).
    fn store(&mut self, phys: u64, index: usize, entry: u64) {
        self.entries(phys)[index] = entry;
    }
}

/// Why [`map`], [`remap`] or [`unmap_range`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlatError {
    /// The guest-physical address, host-physical address or size is not a multiple of 4 KiB.
    Misaligned,
    /// The guest range reaches 2^48 (the limit of a 4-level walk), or the host range 2^52 (the
    /// architectural physical-address limit).
    OutOfRange,
    /// Part of the range is already mapped, or a larger page covers it ([`map`] only).
    AlreadyMapped,
    /// [`Tables::alloc`] returned `None`.
    OutOfMemory,
    /// The format cannot express the permissions: no rights at all, write without read
    /// (an EPT misconfiguration, SDM Vol. 3C, 29.3.3.1), or anything unreadable in NPT.
    UnsupportedPerms,
}

/// Guest-physical addresses must be below this: four levels translate 48 bits.
pub const GPA_LIMIT: u64 = 1 << 48;
/// Host-physical addresses must be below this: entries hold address bits 51:12.
pub const HPA_LIMIT: u64 = 1 << 52;

const PAGE_SHIFT: u32 = 12;
const LARGE_2M_SHIFT: u32 = 21;
const LARGE_1G_SHIFT: u32 = 30;
const ROOT_SHIFT: u32 = 39;
const PAGE_MASK: u64 = (1 << PAGE_SHIFT) - 1;
/// Address bits 51:12 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// EPT entry bits (SDM Vol. 3C, Tables 29-2 to 29-6).
mod ept {
    pub(super) const READ: u64 = 1 << 0;
    pub(super) const WRITE: u64 = 1 << 1;
    pub(super) const EXECUTE: u64 = 1 << 2;
    /// Memory type, bits 5:3 of a leaf: 6 is write-back.
    pub(super) const MEMTYPE_WB: u64 = 6 << 3;
    /// Bit 7 of a PDPTE or PDE: the entry maps a 1 GiB or 2 MiB page.
    pub(super) const LARGE: u64 = 1 << 7;
}

/// NPT (long-mode page-table) entry bits (APM Vol. 2, 5.4).
mod npt {
    pub(super) const P: u64 = 1 << 0;
    pub(super) const RW: u64 = 1 << 1;
    pub(super) const US: u64 = 1 << 2;
    pub(super) const PS: u64 = 1 << 7;
    pub(super) const NX: u64 = 1 << 63;
    /// The PAT bit of a 4 KiB page (the PS position).
    pub(super) const PAT_4K: u64 = 1 << 7;
    /// The PAT bit of a 2 MiB or 1 GiB page.
    pub(super) const PAT_LARGE: u64 = 1 << 12;
}

impl Format {
    /// Checks that the format can express `perms`.
    fn check(self, perms: Perms) -> Result<(), SlatError> {
        let ok = match self {
            // Readable, or execute-only, which is valid when IA32_VMX_EPT_VPID_CAP bit 0 says
            // so (the caller knows whether it does).
            Self::Ept => perms.read || (perms.exec && !perms.write),
            Self::Npt => perms.read,
        };
        if ok {
            Ok(())
        } else {
            Err(SlatError::UnsupportedPerms)
        }
    }

    /// An entry pointing at the next-level table at `phys`: every right allowed, so the leaf
    /// alone decides.
    fn table_entry(self, phys: u64) -> u64 {
        let bits = match self {
            Self::Ept => ept::READ | ept::WRITE | ept::EXECUTE,
            Self::Npt => npt::P | npt::RW | npt::US,
        };
        (phys & ADDR_MASK) | bits
    }

    /// A leaf mapping the page at `hpa`; `large` for 2 MiB and 1 GiB pages.
    fn leaf_entry(self, hpa: u64, perms: Perms, large: bool) -> u64 {
        let flag = |on: bool, bit: u64| if on { bit } else { 0 };
        let bits = match self {
            // No "ignore PAT" (bit 6): the guest's PAT still combines with write-back.
            Self::Ept => {
                flag(perms.read, ept::READ)
                    | flag(perms.write, ept::WRITE)
                    | flag(perms.exec, ept::EXECUTE)
                    | ept::MEMTYPE_WB
                    | flag(large, ept::LARGE)
            }
            // PWT = PCD = PAT = 0 selects the host's PAT entry 0, write-back. NX is a valid bit
            // because the nested walk uses the host's EFER, and Linux sets EFER.NXE.
            Self::Npt => {
                npt::P
                    | npt::US
                    | flag(perms.write, npt::RW)
                    | flag(large, npt::PS)
                    | flag(!perms.exec, npt::NX)
            }
        };
        (hpa & ADDR_MASK) | bits
    }

    fn is_present(self, entry: u64) -> bool {
        match self {
            Self::Ept => entry & (ept::READ | ept::WRITE | ept::EXECUTE) != 0,
            Self::Npt => entry & npt::P != 0,
        }
    }

    /// Whether a present entry at level `shift` maps a page rather than a table.
    fn is_leaf(self, entry: u64, shift: u32) -> bool {
        // Bit 7 is EPT's "large page" and NPT's PS alike.
        shift == PAGE_SHIFT || (shift <= LARGE_1G_SHIFT && entry & npt::PS != 0)
    }

    /// Entry `j` of the table that replaces the large leaf `entry` at level `shift` (2 MiB or
    /// 1 GiB): a leaf one level down for the `j`-th part of the page, with every other bit of
    /// `entry` (rights, memory type, ignore-PAT, accessed/dirty, NX, ...) unchanged.
    fn split_leaf(self, entry: u64, shift: u32, j: usize) -> u64 {
        let child_shift = shift - 9;
        let base = entry & ADDR_MASK & !((1u64 << shift) - 1);
        // `j` is below 512, so the cast is lossless.
        let addr = base + ((j as u64) << child_shift);
        let mut bits = entry & !ADDR_MASK;
        let pat = self == Self::Npt && entry & npt::PAT_LARGE != 0;
        if child_shift == PAGE_SHIFT {
            // Bit 7 is EPT's "large page" and NPT's PS in a large leaf; in an NPT 4 KiB leaf it
            // is the PAT bit, which a large leaf keeps in bit 12 instead.
            bits &= !npt::PS;
            if pat {
                bits |= npt::PAT_4K;
            }
        } else if pat {
            bits |= npt::PAT_LARGE;
        }
        addr | bits
    }

    /// The rights an entry grants (a table entry's rights limit everything below it).
    fn rights(self, entry: u64) -> Perms {
        match self {
            Self::Ept => Perms::new(
                entry & ept::READ != 0,
                entry & ept::WRITE != 0,
                entry & ept::EXECUTE != 0,
            ),
            Self::Npt => Perms::new(
                entry & npt::P != 0,
                entry & npt::RW != 0,
                entry & npt::NX == 0,
            ),
        }
    }
}

/// The table index of `gpa` at the level indexed by bits `shift + 8 : shift`.
fn index(gpa: u64, shift: u32) -> usize {
    // The mask keeps the value below 512, so the cast is lossless.
    ((gpa >> shift) & 0x1ff) as usize
}

/// Maps the guest-physical range `[gpa, gpa + size)` to host-physical `[hpa, hpa + size)`
/// in the tree rooted at `root` (the table [`eptp`] or nCR3 points at).
///
/// Each piece uses the largest page that `large` allows, that `gpa` and `hpa` are both aligned
/// to and that fits in what remains; where a table already exists at that level (from an
/// earlier mapping nearby), the piece goes into it as smaller pages instead. Leaves are
/// write-back.
///
/// On error, the pieces before the failing one stay mapped and tables allocated so far stay
/// in the tree: the tree is still well-formed, but the caller is expected to discard it (see
/// [`for_each_table`]) rather than retry. Validation errors ([`SlatError::Misaligned`],
/// [`SlatError::OutOfRange`], [`SlatError::UnsupportedPerms`]) are reported before anything
/// changes. An empty range maps nothing and succeeds.
#[expect(
    clippy::too_many_arguments,
    reason = "each argument is a distinct part of the request"
)]
pub fn map(
    t: &mut impl Tables,
    fmt: Format,
    root: u64,
    gpa: u64,
    hpa: u64,
    size: u64,
    perms: Perms,
    large: LargePages,
) -> Result<(), SlatError> {
    fmt.check(perms)?;
    if (gpa | hpa | size) & PAGE_MASK != 0 {
        return Err(SlatError::Misaligned);
    }
    let in_range = |start: u64, limit: u64| start.checked_add(size).is_some_and(|e| e <= limit);
    if !in_range(gpa, GPA_LIMIT) || !in_range(hpa, HPA_LIMIT) {
        return Err(SlatError::OutOfRange);
    }
    let mut done = 0;
    while done < size {
        done += map_one(
            t,
            fmt,
            root,
            gpa + done,
            hpa + done,
            size - done,
            perms,
            large,
        )?;
    }
    Ok(())
}

/// Maps one page at the start of the remaining range (`left` bytes, at least 4 KiB) and
/// returns its size.
#[expect(
    clippy::too_many_arguments,
    reason = "map's arguments, less the size done"
)]
fn map_one(
    t: &mut impl Tables,
    fmt: Format,
    root: u64,
    gpa: u64,
    hpa: u64,
    left: u64,
    perms: Perms,
    large: LargePages,
) -> Result<u64, SlatError> {
    let mut table = root;
    let mut shift = ROOT_SHIFT;
    loop {
        let i = index(gpa, shift);
        let entry = t.entries(table)[i];
        let page = 1u64 << shift;
        if fmt.is_present(entry) {
            if fmt.is_leaf(entry, shift) {
                return Err(SlatError::AlreadyMapped);
            }
            table = entry & ADDR_MASK;
        } else if large.allows(shift) && (gpa | hpa) & (page - 1) == 0 && left >= page {
            t.entries(table)[i] = fmt.leaf_entry(hpa, perms, shift != PAGE_SHIFT);
            return Ok(page);
        } else {
            // Not at the last level: `allows(PAGE_SHIFT)` holds and 4 KiB alignment and size
            // were checked, so the branch above took that case.
            let next = t.alloc().ok_or(SlatError::OutOfMemory)?;
            t.entries(table)[i] = fmt.table_entry(next);
            table = next;
        }
        shift -= 9;
    }
}

/// The result of [`translate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The host-physical address.
    pub hpa: u64,
    /// The effective rights: those of the leaf, limited by every table entry above it.
    pub perms: Perms,
    /// The size of the page that maps the address: 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
}

/// Looks up `gpa` in the tree rooted at `root`; `None` when it is not mapped or not below
/// [`GPA_LIMIT`].
pub fn translate(t: &mut impl Tables, fmt: Format, root: u64, gpa: u64) -> Option<Mapping> {
    if gpa >= GPA_LIMIT {
        return None;
    }
    let mut table = root;
    let mut shift = ROOT_SHIFT;
    let mut perms = Perms::RWX;
    loop {
        let entry = t.entries(table)[index(gpa, shift)];
        if !fmt.is_present(entry) {
            return None;
        }
        let rights = fmt.rights(entry);
        perms = Perms::new(
            perms.read && rights.read,
            perms.write && rights.write,
            perms.exec && rights.exec,
        );
        if fmt.is_leaf(entry, shift) {
            let page_size = 1u64 << shift;
            let offset = gpa & (page_size - 1);
            return Some(Mapping {
                hpa: (entry & ADDR_MASK & !(page_size - 1)) | offset,
                perms,
                page_size,
            });
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
}

/// The host-physical address `gpa` maps to, if any: [`translate`]'s `hpa` without the rights
/// and page size, in fewer instructions (what reading and writing a domain's memory through
/// its tables needs, on every grant and event-channel path).
pub fn host_address(t: &mut impl Tables, fmt: Format, root: u64, gpa: u64) -> Option<u64> {
    if gpa >= GPA_LIMIT {
        return None;
    }
    let present = match fmt {
        Format::Ept => ept::READ | ept::WRITE | ept::EXECUTE,
        Format::Npt => npt::P,
    };
    let mut table = root;
    let mut shift = ROOT_SHIFT;
    loop {
        let entry = t.entries(table)[index(gpa, shift)];
        if entry & present == 0 {
            return None;
        }
        if fmt.is_leaf(entry, shift) {
            let offset = (1u64 << shift) - 1;
            return Some((entry & ADDR_MASK & !offset) | (gpa & offset));
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
}

/// Whether `gpa` is mapped by a 2 MiB or 1 GiB page (a [`remap`] of any page in it splits
/// that page, allocating tables).
pub fn in_large_page(t: &mut impl Tables, fmt: Format, root: u64, gpa: u64) -> bool {
    translate(t, fmt, root, gpa).is_some_and(|m| m.page_size > 1 << PAGE_SHIFT)
}

/// Sets (`new` is the host page and its rights) or clears (`new` is `None`) the 4 KiB mapping
/// of the guest page at `gpa` in a tree that may be live (see the module documentation for
/// what the caller must do: serialize writers, flush TLBs after). Returns what mapped `gpa`
/// before: [`translate`]'s answer, whose `page_size` says whether it was part of a large page
/// (the page at `hpa` is still the domain's then: only the 4 KiB at `gpa` left the mapping).
///
/// A large page covering `gpa` is split: a 2 MiB leaf becomes a table of 512 4 KiB leaves, a
/// 1 GiB leaf a table of 512 2 MiB leaves of which the one holding `gpa` is split again; every
/// page but `gpa` keeps its host address, rights and memory type. Missing tables on the way
/// to `gpa` are allocated (none when clearing: a page that is not mapped stays so). The new
/// leaf is write-back, as [`map`]'s.
///
/// Everything is allocated before anything is written: on error (validation, or
/// [`SlatError::OutOfMemory`]) the tree is unchanged, byte for byte.
pub fn remap(
    t: &mut impl Tables,
    fmt: Format,
    root: u64,
    gpa: u64,
    new: Option<(u64, Perms)>,
) -> Result<Option<Mapping>, SlatError> {
    if gpa & PAGE_MASK != 0 {
        return Err(SlatError::Misaligned);
    }
    if gpa >= GPA_LIMIT {
        return Err(SlatError::OutOfRange);
    }
    let leaf = match new {
        Some((hpa, perms)) => {
            fmt.check(perms)?;
            if hpa & PAGE_MASK != 0 {
                return Err(SlatError::Misaligned);
            }
            if hpa >= HPA_LIMIT {
                return Err(SlatError::OutOfRange);
            }
            fmt.leaf_entry(hpa, perms, false)
        }
        None => 0,
    };
    let old = translate(t, fmt, root, gpa);
    set_leaf(t, fmt, root, gpa, leaf)?;
    Ok(old)
}

/// How many tables [`remap`] of the page at `gpa` would allocate now: 0 when a 4 KiB entry
/// for it exists (or when clearing a page that is not mapped), 1 or 2 to split a 2 MiB or
/// 1 GiB page, up to 3 to fill a hole; never more than 3. A caller that cannot allocate
/// where it changes the tree (under a spinlock, in root mode) reserves this many zeroed pages
/// beforehand and hands them out through its [`Tables::alloc`]; the answer holds as long as
/// no other change happens in between (the writer lock).
pub fn tables_needed(t: &mut impl Tables, fmt: Format, root: u64, gpa: u64, clear: bool) -> usize {
    if gpa >= GPA_LIMIT {
        return 0;
    }
    let slot = walk(t, fmt, root, gpa & !PAGE_MASK);
    if slot.shift == PAGE_SHIFT || (clear && !fmt.is_present(slot.entry)) {
        0
    } else {
        ((slot.shift - PAGE_SHIFT) / 9) as usize
    }
}

/// Clears the mappings of `[gpa, gpa + size)` in a tree that may be live (the contract of
/// [`remap`]), calling `f(gpa, hpa, size)` for each piece it unmaps: a whole leaf inside the
/// range is cleared with one store and reported whole (4 KiB, 2 MiB or 1 GiB), a large leaf
/// that reaches beyond the range is split and the 4 KiB pages inside reported one by one.
/// Unmapped parts are skipped.
///
/// Validation errors come before any change. [`SlatError::OutOfMemory`] (a split) stops the
/// walk: the pieces reported so far are unmapped, the rest is as it was.
pub fn unmap_range(
    t: &mut impl Tables,
    fmt: Format,
    root: u64,
    gpa: u64,
    size: u64,
    mut f: impl FnMut(u64, u64, u64),
) -> Result<(), SlatError> {
    if (gpa | size) & PAGE_MASK != 0 {
        return Err(SlatError::Misaligned);
    }
    let end = gpa
        .checked_add(size)
        .filter(|&e| e <= GPA_LIMIT)
        .ok_or(SlatError::OutOfRange)?;
    let mut a = gpa;
    while a < end {
        let slot = walk(t, fmt, root, a);
        let page = 1u64 << slot.shift;
        let next = (a & !(page - 1)) + page;
        if !fmt.is_present(slot.entry) {
            a = next;
        } else if a & (page - 1) == 0 && next <= end {
            t.store(slot.table, index(a, slot.shift), 0);
            f(a, slot.entry & ADDR_MASK & !(page - 1), page);
            a = next;
        } else {
            // The range covers part of a large page: split it, clearing the page at `a`.
            let hpa = (slot.entry & ADDR_MASK & !(page - 1)) | (a & (page - 1));
            set_leaf(t, fmt, root, a, 0)?;
            f(a, hpa, 1 << PAGE_SHIFT);
            a += 1 << PAGE_SHIFT;
        }
    }
    Ok(())
}

/// Where the walk for an address ends: at a leaf, a non-present entry or the last level.
struct Slot {
    /// The table holding the entry.
    table: u64,
    /// The level of the table, as the lowest address bit it indexes.
    shift: u32,
    /// The entry.
    entry: u64,
}

fn walk(t: &mut impl Tables, fmt: Format, root: u64, gpa: u64) -> Slot {
    let mut table = root;
    let mut shift = ROOT_SHIFT;
    loop {
        let entry = t.entries(table)[index(gpa, shift)];
        if !fmt.is_present(entry) || fmt.is_leaf(entry, shift) {
            return Slot {
                table,
                shift,
                entry,
            };
        }
        table = entry & ADDR_MASK;
        shift -= 9;
    }
}

/// Makes `leaf` (a 4 KiB leaf, or 0) the last-level entry of the aligned, in-range `gpa`,
/// splitting a large leaf or adding the missing tables on the way; the tree is unchanged when
/// this fails.
fn set_leaf(
    t: &mut impl Tables,
    fmt: Format,
    root: u64,
    gpa: u64,
    leaf: u64,
) -> Result<(), SlatError> {
    let slot = walk(t, fmt, root, gpa);
    let slot_index = index(gpa, slot.shift);
    let present = fmt.is_present(slot.entry);
    if slot.shift == PAGE_SHIFT {
        if slot.entry != leaf {
            t.store(slot.table, slot_index, leaf);
        }
        return Ok(());
    }
    if !present && !fmt.is_present(leaf) {
        return Ok(());
    }
    // One new table per level below the slot's, top down: 1 under a PD entry, 3 under a
    // root entry. All of them before any write, so running out changes nothing.
    let levels = ((slot.shift - PAGE_SHIFT) / 9) as usize;
    let mut new = [0u64; 3];
    for n in new.iter_mut().take(levels) {
        *n = t.alloc().ok_or(SlatError::OutOfMemory)?;
    }
    // Fill them while nothing points at them: the split of the large leaf above (zeroed
    // tables already stand for a hole), the entry towards `gpa` pointing one level down, and
    // `leaf` at the bottom.
    let mut above = slot.entry;
    let mut shift = slot.shift;
    for k in 0..levels {
        let table = new[k];
        let child = shift - 9;
        if present {
            for (j, e) in t.entries(table).iter_mut().enumerate() {
                *e = fmt.split_leaf(above, shift, j);
            }
        }
        let i = index(gpa, child);
        above = t.entries(table)[i];
        t.entries(table)[i] = if k + 1 < levels {
            fmt.table_entry(new[k + 1])
        } else {
            leaf
        };
        shift = child;
    }
    // The new tables' contents become visible before the entry that links them (on x86 the
    // stores are not reordered by the CPU; the fence keeps the compiler from doing it).
    fence(Ordering::Release);
    t.store(slot.table, slot_index, fmt.table_entry(new[0]));
    Ok(())
}

/// Calls `f` with the physical address of every table in the tree rooted at `root`, `root`
/// included and last, children before their parent. The caller frees the tables this way:
/// [`map`] does not record what it allocates. `f` is given addresses only, so it cannot
/// disturb the walk; freeing inside `f` is safe as long as the freed page is not reused for
/// this tree before the walk ends.
pub fn for_each_table(t: &mut impl Tables, fmt: Format, root: u64, mut f: impl FnMut(u64)) {
    visit(t, fmt, root, ROOT_SHIFT, &mut f);
}

fn visit(t: &mut impl Tables, fmt: Format, table: u64, shift: u32, f: &mut impl FnMut(u64)) {
    if shift > PAGE_SHIFT {
        for i in 0..512 {
            let entry = t.entries(table)[i];
            if fmt.is_present(entry) && !fmt.is_leaf(entry, shift) {
                visit(t, fmt, entry & ADDR_MASK, shift - 9, f);
            }
        }
    }
    f(table);
}

/// The EPT pointer for the tree rooted at `root` (SDM Vol. 3C, 25.6.11): write-back paging-
/// structure memory type (6) in bits 2:0, a 4-level walk (length minus one, 3) in bits 5:3,
/// accessed/dirty flags off. NPT needs no such encoding: nCR3 is `root` itself.
pub fn eptp(root: u64) -> u64 {
    const MEMTYPE_WB: u64 = 6;
    const WALK_LENGTH_4: u64 = 3 << 3;
    (root & ADDR_MASK) | MEMTYPE_WB | WALK_LENGTH_4
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x10_0000;
    const K4: u64 = 1 << 12;
    const M2: u64 = 1 << 21;
    const G1: u64 = 1 << 30;

    /// At most `cap` tables at physical addresses `BASE`, `BASE + 4 KiB`, ...
    struct TestTables {
        tables: Vec<[u64; 512]>,
        cap: usize,
    }

    impl TestTables {
        fn new(cap: usize) -> Self {
            Self {
                tables: Vec::new(),
                cap,
            }
        }

        /// A fresh tree: the tables and the root's address.
        fn with_root(cap: usize) -> (Self, u64) {
            let mut t = Self::new(cap);
            let root = t.alloc().unwrap();
            (t, root)
        }

        fn entry(&mut self, table: u64, i: usize) -> u64 {
            self.entries(table)[i]
        }
    }

    impl Tables for TestTables {
        fn alloc(&mut self) -> Option<u64> {
            if self.tables.len() == self.cap {
                return None;
            }
            self.tables.push([0; 512]);
            Some(BASE + (self.tables.len() as u64 - 1) * K4)
        }

        fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
            assert_eq!(phys & 0xfff, 0, "unaligned table {phys:#x}");
            &mut self.tables[((phys - BASE) / K4) as usize]
        }
    }

    fn table(n: u64) -> u64 {
        BASE + n * K4
    }

    #[test]
    fn ept_4k_entry_bits() {
        let (mut t, root) = TestTables::with_root(8);
        let gpa = 0x0000_8040_2030_1000u64 & (GPA_LIMIT - 1);
        map(
            &mut t,
            Format::Ept,
            root,
            gpa,
            0xabcd_e000,
            K4,
            Perms::RW,
            LargePages::Upto1G,
        )
        .unwrap();
        // Root, PDPT, PD, PT, allocated in walk order.
        assert_eq!(t.tables.len(), 4);
        assert_eq!(t.entry(root, index(gpa, 39)), table(1) | 0b111);
        assert_eq!(t.entry(table(1), index(gpa, 30)), table(2) | 0b111);
        assert_eq!(t.entry(table(2), index(gpa, 21)), table(3) | 0b111);
        // R, W, memory type 6 in bits 5:3, no X, no bit 7.
        assert_eq!(
            t.entry(table(3), index(gpa, 12)),
            0xabcd_e000 | 0b011 | 0x30
        );
        // Nothing else was written.
        let nonzero: usize = t
            .tables
            .iter()
            .map(|tb| tb.iter().filter(|&&e| e != 0).count())
            .sum();
        assert_eq!(nonzero, 4);
    }

    #[test]
    fn ept_large_entry_bits() {
        let (mut t, root) = TestTables::with_root(8);
        map(
            &mut t,
            Format::Ept,
            root,
            2 * M2,
            0x1_2340_0000,
            M2,
            Perms::RX,
            LargePages::Upto2M,
        )
        .unwrap();
        assert_eq!(t.tables.len(), 3);
        assert_eq!(t.entry(table(2), 2), 0x1_2340_0000 | 0b101 | 0x30 | 0x80);
        map(
            &mut t,
            Format::Ept,
            root,
            3 * G1,
            0x40_0000_0000,
            G1,
            Perms::RWX,
            LargePages::Upto1G,
        )
        .unwrap();
        assert_eq!(t.tables.len(), 3);
        assert_eq!(t.entry(table(1), 3), 0x40_0000_0000 | 0b111 | 0x30 | 0x80);
        // Read-only and execute-only leaves.
        map(
            &mut t,
            Format::Ept,
            root,
            0,
            0x5000,
            K4,
            Perms::R,
            LargePages::None,
        )
        .unwrap();
        assert_eq!(t.entry(table(3), 0), 0x5000 | 0b001 | 0x30);
        let x = Perms::new(false, false, true);
        map(
            &mut t,
            Format::Ept,
            root,
            K4,
            0x6000,
            K4,
            x,
            LargePages::None,
        )
        .unwrap();
        assert_eq!(t.entry(table(3), 1), 0x6000 | 0b100 | 0x30);
    }

    #[test]
    fn npt_entry_bits() {
        const NX: u64 = 1 << 63;
        let (mut t, root) = TestTables::with_root(8);
        map(
            &mut t,
            Format::Npt,
            root,
            0x7000,
            0x9000,
            K4,
            Perms::RW,
            LargePages::Upto1G,
        )
        .unwrap();
        assert_eq!(t.entry(root, 0), table(1) | 0b111);
        assert_eq!(t.entry(table(1), 0), table(2) | 0b111);
        assert_eq!(t.entry(table(2), 0), table(3) | 0b111);
        // P | RW | US | NX.
        assert_eq!(t.entry(table(3), 7), 0x9000 | 0b111 | NX);
        map(
            &mut t,
            Format::Npt,
            root,
            0x8000,
            0xa000,
            K4,
            Perms::RX,
            LargePages::None,
        )
        .unwrap();
        assert_eq!(t.entry(table(3), 8), 0xa000 | 0b101);
        map(
            &mut t,
            Format::Npt,
            root,
            0x9000,
            0xb000,
            K4,
            Perms::R,
            LargePages::None,
        )
        .unwrap();
        assert_eq!(t.entry(table(3), 9), 0xb000 | 0b101 | NX);
        map(
            &mut t,
            Format::Npt,
            root,
            0xa000,
            0xc000,
            K4,
            Perms::RWX,
            LargePages::None,
        )
        .unwrap();
        assert_eq!(t.entry(table(3), 10), 0xc000 | 0b111);
        // 2 MiB and 1 GiB leaves have PS.
        map(
            &mut t,
            Format::Npt,
            root,
            M2,
            0x20_0000,
            M2,
            Perms::RWX,
            LargePages::Upto2M,
        )
        .unwrap();
        assert_eq!(t.entry(table(2), 1), 0x20_0000 | 0b111 | 0x80);
        map(
            &mut t,
            Format::Npt,
            root,
            G1,
            0x8000_0000,
            G1,
            Perms::RW,
            LargePages::Upto1G,
        )
        .unwrap();
        assert_eq!(t.entry(table(1), 1), 0x8000_0000 | 0b111 | 0x80 | NX);
        assert_eq!(t.tables.len(), 4);
    }

    #[test]
    fn unrepresentable_perms() {
        let (mut t, root) = TestTables::with_root(8);
        let none = Perms::new(false, false, false);
        let w = Perms::new(false, true, false);
        let wx = Perms::new(false, true, true);
        let x = Perms::new(false, false, true);
        for p in [none, w, wx] {
            let r = map(&mut t, Format::Ept, root, 0, 0, K4, p, LargePages::None);
            assert_eq!(r, Err(SlatError::UnsupportedPerms), "{p:?}");
        }
        for p in [none, w, wx, x] {
            let r = map(&mut t, Format::Npt, root, 0, 0, K4, p, LargePages::None);
            assert_eq!(r, Err(SlatError::UnsupportedPerms), "{p:?}");
        }
        // Nothing was allocated or written.
        assert_eq!(t.tables.len(), 1);
        assert!(t.tables[0].iter().all(|&e| e == 0));
    }

    /// The page sizes that map `[gpa, gpa + size)`, in order.
    fn page_sizes(t: &mut TestTables, fmt: Format, root: u64, gpa: u64, size: u64) -> Vec<u64> {
        let mut sizes = Vec::new();
        let mut a = gpa;
        while a < gpa + size {
            let m = translate(t, fmt, root, a).unwrap();
            sizes.push(m.page_size);
            a += m.page_size;
        }
        sizes
    }

    #[test]
    fn large_pages_by_alignment_and_size() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(64);
            // Both aligned: 4 KiB up to the 2 MiB boundary, then 2 MiB pages, then 4 KiB.
            let (gpa, hpa, size) = (M2 - K4, 0x4000_0000 - K4, 2 * M2 + 2 * K4);
            map(
                &mut t,
                fmt,
                root,
                gpa,
                hpa,
                size,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, gpa, size), [K4, M2, M2, K4]);

            // The host address is only 4 KiB aligned relative to the guest's: no 2 MiB pages.
            let gpa = 16 * M2;
            map(
                &mut t,
                fmt,
                root,
                gpa,
                0x8000_1000,
                M2,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, gpa, M2), [K4; 512]);

            // Aligned but less than 2 MiB left.
            let gpa = 20 * M2;
            map(
                &mut t,
                fmt,
                root,
                gpa,
                0x8020_0000,
                M2 - K4,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, gpa, M2 - K4), [K4; 511]);

            // Aligned and large enough, but 2 MiB pages not allowed.
            let gpa = 24 * M2;
            map(
                &mut t,
                fmt,
                root,
                gpa,
                0x8040_0000,
                M2,
                Perms::RWX,
                LargePages::None,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, gpa, M2), [K4; 512]);

            // 1 GiB pages only when allowed; otherwise 2 MiB.
            map(
                &mut t,
                fmt,
                root,
                G1,
                0x1_0000_0000,
                G1 + M2,
                Perms::RWX,
                LargePages::Upto1G,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, G1, G1 + M2), [G1, M2]);
            map(
                &mut t,
                fmt,
                root,
                4 * G1,
                0x2_0000_0000,
                G1,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert_eq!(page_sizes(&mut t, fmt, root, 4 * G1, G1), [M2; 512]);
        }
    }

    #[test]
    fn translate_round_trips() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(64);
            let (gpa, hpa, size) = (0x7fe0_0000u64, 0x3_0000_0000u64, 0x60_3000u64);
            map(
                &mut t,
                fmt,
                root,
                gpa,
                hpa,
                size,
                Perms::RX,
                LargePages::Upto1G,
            )
            .unwrap();
            for off in [
                0, 1, 0xfff, 0x1000, 0x1f_ffff, 0x20_0000, 0x40_0123, 0x60_2fff,
            ] {
                let m = translate(&mut t, fmt, root, gpa + off).unwrap();
                assert_eq!(m.hpa, hpa + off, "{fmt:?} {off:#x}");
                assert_eq!(m.perms, Perms::RX);
            }
            assert_eq!(translate(&mut t, fmt, root, gpa - 1), None);
            assert_eq!(translate(&mut t, fmt, root, gpa + size), None);
            assert_eq!(translate(&mut t, fmt, root, 0), None);
            assert_eq!(translate(&mut t, fmt, root, GPA_LIMIT + gpa), None);
            assert_eq!(translate(&mut t, fmt, root, u64::MAX), None);
        }
    }

    #[test]
    fn host_address_agrees_with_translate() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(64);
            // 1 GiB, 2 MiB and 4 KiB leaves, a split large page with a hole, and an
            // execute-only page (present for EPT, a leaf NPT cannot express: not mapped).
            // gpa 0x4000_0000 meets hpa 0x3_0000_0000: the 1 GiB leaf.
            let (gpa, hpa, size) = (0x3fe0_0000u64, 0x2_ffe0_0000u64, 0x4060_3000u64);
            map(
                &mut t,
                fmt,
                root,
                gpa,
                hpa,
                size,
                Perms::RX,
                LargePages::Upto1G,
            )
            .unwrap();
            assert_eq!(
                translate(&mut t, fmt, root, 0x4000_0000).unwrap().page_size,
                1 << 30
            );
            remap(&mut t, fmt, root, 0x8020_0000, None).unwrap();
            remap(&mut t, fmt, root, 0x8020_1000, Some((0x9000, Perms::RWX))).unwrap();
            let xo = Perms::new(false, false, true);
            let _ = map(
                &mut t,
                fmt,
                root,
                0x1000,
                0x7000,
                0x1000,
                xo,
                LargePages::None,
            );
            let mut probes = vec![0, 0x1000, 0x1fff, gpa - 1, gpa + size, GPA_LIMIT, u64::MAX];
            for base in [gpa, 0x4000_0000, 0x4020_0000, 0x8000_0000, 0x8020_0000] {
                for off in [
                    0,
                    1,
                    0xfff,
                    0x1000,
                    0x1234,
                    0x1f_ffff,
                    0x20_0000,
                    0x3fff_ffff,
                ] {
                    probes.push(base + off);
                }
            }
            for a in probes {
                let want = translate(&mut t, fmt, root, a).map(|m| m.hpa);
                assert_eq!(host_address(&mut t, fmt, root, a), want, "{fmt:?} {a:#x}");
            }
        }
    }

    #[test]
    fn translate_limits_rights_by_table_entries() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(8);
            map(
                &mut t,
                fmt,
                root,
                0,
                0x1000,
                K4,
                Perms::RWX,
                LargePages::None,
            )
            .unwrap();
            // Take write and execute away at the PDPT entry.
            let pdpte = t.entry(table(1), 0);
            t.entries(table(1))[0] = match fmt {
                Format::Ept => pdpte & !0b110,
                Format::Npt => (pdpte & !0b010) | 1 << 63,
            };
            let m = translate(&mut t, fmt, root, 0x10).unwrap();
            assert_eq!((m.hpa, m.perms, m.page_size), (0x1010, Perms::R, K4));
        }
    }

    #[test]
    fn overlaps_are_refused() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(64);
            let rwx = Perms::RWX;
            let up2m = LargePages::Upto2M;
            // The same 4 KiB page twice.
            map(&mut t, fmt, root, 0x5000, 0x5000, K4, rwx, up2m).unwrap();
            assert_eq!(
                map(&mut t, fmt, root, 0x5000, 0x9000, K4, rwx, up2m),
                Err(SlatError::AlreadyMapped)
            );
            // A 2 MiB range over that page: the existing table is reused, the pages before
            // the overlap get mapped (a documented partial update), then the overlap fails.
            assert_eq!(
                map(&mut t, fmt, root, 0, 0x4000_0000, M2, rwx, up2m),
                Err(SlatError::AlreadyMapped)
            );
            assert_eq!(
                translate(&mut t, fmt, root, 0x4000).unwrap().hpa,
                0x4000_4000
            );
            assert_eq!(translate(&mut t, fmt, root, 0x5000).unwrap().hpa, 0x5000);
            assert_eq!(translate(&mut t, fmt, root, 0x6000), None);

            // A 4 KiB page inside an existing 2 MiB page: a leaf where a table is needed.
            map(&mut t, fmt, root, 4 * M2, 0x20_0000, M2, rwx, up2m).unwrap();
            assert_eq!(
                map(&mut t, fmt, root, 4 * M2 + 0x3000, 0x3000, K4, rwx, up2m),
                Err(SlatError::AlreadyMapped)
            );
            // A range that ends inside it.
            assert_eq!(
                map(&mut t, fmt, root, 3 * M2, 0x80_0000, M2 + K4, rwx, up2m),
                Err(SlatError::AlreadyMapped)
            );
            // A 1 GiB page over it.
            assert_eq!(
                map(&mut t, fmt, root, 0, 0, G1, rwx, LargePages::Upto1G),
                Err(SlatError::AlreadyMapped)
            );
            // A 2 MiB page inside an existing 1 GiB page.
            map(&mut t, fmt, root, G1, 0, G1, rwx, LargePages::Upto1G).unwrap();
            assert_eq!(
                map(&mut t, fmt, root, G1 + M2, 0, M2, rwx, up2m),
                Err(SlatError::AlreadyMapped)
            );
            // Neighbours that do not overlap are fine.
            map(&mut t, fmt, root, 5 * M2, 0x20_0000, M2, rwx, up2m).unwrap();
            map(&mut t, fmt, root, 6 * M2, 0x1000, K4, rwx, up2m).unwrap();
        }
    }

    #[test]
    fn existing_empty_table_takes_small_pages() {
        // A table already sits where a 2 MiB leaf would go (left empty by an earlier failed
        // map): the range is mapped as 4 KiB pages inside it rather than refused.
        let (mut t, root) = TestTables::with_root(8);
        map(
            &mut t,
            Format::Ept,
            root,
            0,
            0,
            K4,
            Perms::RWX,
            LargePages::None,
        )
        .unwrap();
        let pt = t.alloc().unwrap();
        t.entries(table(2))[1] = Format::Ept.table_entry(pt);
        map(
            &mut t,
            Format::Ept,
            root,
            M2,
            M2,
            M2,
            Perms::RWX,
            LargePages::Upto2M,
        )
        .unwrap();
        assert_eq!(page_sizes(&mut t, Format::Ept, root, M2, M2), [K4; 512]);
    }

    #[test]
    fn argument_errors() {
        let (mut t, root) = TestTables::with_root(8);
        let fmt = Format::Ept;
        let rwx = Perms::RWX;
        let none = LargePages::None;
        let misaligned = Err(SlatError::Misaligned);
        assert_eq!(map(&mut t, fmt, root, 0x800, 0, K4, rwx, none), misaligned);
        assert_eq!(map(&mut t, fmt, root, 0, 0x1, K4, rwx, none), misaligned);
        assert_eq!(map(&mut t, fmt, root, 0, 0, 0x1800, rwx, none), misaligned);
        let range = Err(SlatError::OutOfRange);
        assert_eq!(map(&mut t, fmt, root, GPA_LIMIT, 0, K4, rwx, none), range);
        assert_eq!(
            map(&mut t, fmt, root, GPA_LIMIT - K4, 0, 2 * K4, rwx, none),
            range
        );
        assert_eq!(
            map(&mut t, fmt, root, 0, HPA_LIMIT - K4, 2 * K4, rwx, none),
            range
        );
        assert_eq!(map(&mut t, fmt, root, 0, 0, !0xfff, rwx, none), range);
        assert_eq!(map(&mut t, fmt, root, !0xfff, 0, K4, rwx, none), range);
        assert_eq!(t.tables.len(), 1);
        // The last page below each limit is fine; so is an empty range.
        map(
            &mut t,
            fmt,
            root,
            GPA_LIMIT - K4,
            HPA_LIMIT - K4,
            K4,
            rwx,
            none,
        )
        .unwrap();
        let m = translate(&mut t, fmt, root, GPA_LIMIT - 1).unwrap();
        assert_eq!(m.hpa, HPA_LIMIT - 1);
        map(&mut t, fmt, root, 0x1000, 0x1000, 0, rwx, none).unwrap();
        assert_eq!(t.tables.len(), 4);
    }

    #[test]
    fn out_of_table_memory() {
        // Room for the root and two more tables: the PT cannot be allocated.
        let (mut t, root) = TestTables::with_root(3);
        assert_eq!(
            map(
                &mut t,
                Format::Npt,
                root,
                0,
                0,
                K4,
                Perms::RW,
                LargePages::None
            ),
            Err(SlatError::OutOfMemory)
        );
        // A 2 MiB page needs no PT.
        map(
            &mut t,
            Format::Npt,
            root,
            0,
            0,
            M2,
            Perms::RW,
            LargePages::Upto2M,
        )
        .unwrap();
        // A 4 KiB page 1 GiB away needs a PD too.
        assert_eq!(
            map(
                &mut t,
                Format::Npt,
                root,
                G1,
                0,
                K4,
                Perms::RW,
                LargePages::None
            ),
            Err(SlatError::OutOfMemory)
        );
    }

    #[test]
    fn every_table_is_visited_once_root_last() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(64);
            let rwx = Perms::RWX;
            map(
                &mut t,
                fmt,
                root,
                0,
                0,
                3 * M2 + K4,
                rwx,
                LargePages::Upto2M,
            )
            .unwrap();
            map(&mut t, fmt, root, G1, 0, G1, rwx, LargePages::Upto1G).unwrap();
            map(
                &mut t,
                fmt,
                root,
                0x7f_0000_0000,
                0,
                2 * K4,
                rwx,
                LargePages::None,
            )
            .unwrap();
            map(
                &mut t,
                fmt,
                root,
                0x8000_0020_0000,
                0,
                K4,
                rwx,
                LargePages::None,
            )
            .unwrap();
            let mut seen = Vec::new();
            for_each_table(&mut t, fmt, root, |p| seen.push(p));
            assert_eq!(seen.last(), Some(&root));
            let mut all: Vec<u64> = (0..t.tables.len() as u64).map(table).collect();
            seen.sort();
            all.sort();
            assert_eq!(seen, all);
        }
        // A tree with only the root.
        let (mut t, root) = TestTables::with_root(1);
        let mut seen = Vec::new();
        for_each_table(&mut t, Format::Ept, root, |p| seen.push(p));
        assert_eq!(seen, [root]);
    }

    #[test]
    fn eptp_encoding() {
        assert_eq!(eptp(0x1234_5000), 0x1234_5000 | 6 | 3 << 3);
        assert_eq!(eptp(0x000f_ffff_ffff_f000), 0x000f_ffff_ffff_f01e);
    }

    /// Every table of the tree and its contents, in walk order.
    fn snapshot(t: &mut TestTables, fmt: Format, root: u64) -> Vec<(u64, [u64; 512])> {
        let mut phys = Vec::new();
        for_each_table(t, fmt, root, |p| phys.push(p));
        phys.into_iter().map(|p| (p, *t.entries(p))).collect()
    }

    /// Every leaf of the tree: (gpa, entry, page size).
    fn leaves(t: &mut TestTables, fmt: Format, root: u64) -> Vec<(u64, u64, u64)> {
        fn go(
            t: &mut TestTables,
            fmt: Format,
            table: u64,
            shift: u32,
            base: u64,
            out: &mut Vec<(u64, u64, u64)>,
        ) {
            for i in 0..512u64 {
                let e = t.entries(table)[i as usize];
                let gpa = base + (i << shift);
                if !fmt.is_present(e) {
                    continue;
                }
                if fmt.is_leaf(e, shift) {
                    out.push((gpa, e, 1 << shift));
                } else {
                    go(t, fmt, e & ADDR_MASK, shift - 9, gpa, out);
                }
            }
        }
        let mut out = Vec::new();
        go(t, fmt, root, ROOT_SHIFT, 0, &mut out);
        out
    }

    type Model = std::collections::HashMap<u64, (u64, Perms)>;

    /// What the tree maps, 4 KiB page by 4 KiB page: gpa -> (hpa, rights).
    fn expand(t: &mut TestTables, fmt: Format, root: u64) -> Model {
        let mut m = Model::new();
        for (gpa, e, size) in leaves(t, fmt, root) {
            let hpa = e & ADDR_MASK & !(size - 1);
            for off in (0..size).step_by(K4 as usize) {
                assert!(m.insert(gpa + off, (hpa + off, fmt.rights(e))).is_none());
            }
        }
        m
    }

    #[test]
    fn split_2m_keeps_the_other_pages() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            let (gpa, hpa) = (3 * M2, 0x1_2340_0000u64);
            map(
                &mut t,
                fmt,
                root,
                gpa,
                hpa,
                M2,
                Perms::RX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert!(in_large_page(&mut t, fmt, root, gpa + 5 * K4));
            // A memory type other than write-back, to see it kept: EPT write-through (4)
            // with ignore-PAT; NPT PWT, PCD and the large page's PAT bit (12).
            let pde = t.entry(table(2), 3);
            let (pde, small_bits) = match fmt {
                Format::Ept => {
                    let pde = (pde & !0x38) | 4 << 3 | 1 << 6;
                    (pde, 0b101 | 4 << 3 | 1 << 6)
                }
                // P, US, PWT, PCD, then PAT in bit 7; RX: no RW, no NX.
                Format::Npt => (pde | 1 << 3 | 1 << 4 | 1 << 12, 0b101 | 0b11 << 3 | 1 << 7),
            };
            t.entries(table(2))[3] = pde;

            let old = remap(
                &mut t,
                fmt,
                root,
                gpa + 5 * K4,
                Some((0x7777_7000, Perms::RW)),
            );
            let old = old.unwrap().unwrap();
            assert_eq!(
                (old.hpa, old.perms, old.page_size),
                (hpa + 5 * K4, Perms::RX, M2)
            );
            assert_eq!(t.tables.len(), 4);
            assert_eq!(t.entry(table(2), 3), table(3) | 0b111);
            assert!(!in_large_page(&mut t, fmt, root, gpa));
            for j in 0..512u64 {
                let a = gpa + j * K4;
                let m = translate(&mut t, fmt, root, a).unwrap();
                let e = t.entry(table(3), j as usize);
                if j == 5 {
                    assert_eq!((m.hpa, m.perms, m.page_size), (0x7777_7000, Perms::RW, K4));
                    assert_eq!(e, fmt.leaf_entry(0x7777_7000, Perms::RW, false));
                } else {
                    assert_eq!((m.hpa, m.perms, m.page_size), (hpa + j * K4, Perms::RX, K4));
                    assert_eq!(e, (hpa + j * K4) | small_bits, "{fmt:?} {j}");
                }
            }
        }
    }

    #[test]
    fn split_1g_into_2m_then_4k() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            let hpa = 0x40_0000_0000u64;
            map(
                &mut t,
                fmt,
                root,
                G1,
                hpa,
                G1,
                Perms::RWX,
                LargePages::Upto1G,
            )
            .unwrap();
            assert_eq!(t.tables.len(), 2);
            let pdpte = t.entry(table(1), 1);
            let target = G1 + 7 * M2 + 3 * K4;
            let old = remap(&mut t, fmt, root, target, None).unwrap().unwrap();
            assert_eq!(
                (old.hpa, old.perms, old.page_size),
                (target - G1 + hpa, Perms::RWX, G1)
            );
            // A PD and a PT.
            assert_eq!(t.tables.len(), 4);
            assert_eq!(t.entry(table(1), 1), table(2) | 0b111);
            assert_eq!(t.entry(table(2), 7), table(3) | 0b111);
            for j in (0..512u64).filter(|&j| j != 7) {
                // The 1 GiB leaf's bits with its address, as 2 MiB leaves.
                let expect = (pdpte & !ADDR_MASK) | (hpa + j * M2);
                assert_eq!(t.entry(table(2), j as usize), expect);
            }
            for off in (0..G1).step_by(K4 as usize) {
                let m = translate(&mut t, fmt, root, G1 + off);
                if G1 + off == target {
                    assert_eq!(m, None);
                    continue;
                }
                let size = if off >> 21 == 7 { K4 } else { M2 };
                let expect = Mapping {
                    hpa: hpa + off,
                    perms: Perms::RWX,
                    page_size: size,
                };
                assert_eq!(m, Some(expect), "{fmt:?} {off:#x}");
            }
        }
    }

    #[test]
    fn remap_fills_holes_and_unmaps() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            // Clearing what is not mapped allocates and writes nothing.
            assert_eq!(tables_needed(&mut t, fmt, root, 0x1234_5000, true), 0);
            assert_eq!(tables_needed(&mut t, fmt, root, 0x1234_5000, false), 3);
            assert_eq!(remap(&mut t, fmt, root, 0x1234_5000, None), Ok(None));
            assert_eq!(t.tables.len(), 1);
            assert!(t.tables[0].iter().all(|&e| e == 0));
            // A page in an empty tree: PDPT, PD and PT.
            let gpa = 0x1234_5000;
            let new = Some((0xabc_d000, Perms::RWX));
            assert_eq!(remap(&mut t, fmt, root, gpa, new), Ok(None));
            assert_eq!(t.tables.len(), 4);
            let m = translate(&mut t, fmt, root, gpa).unwrap();
            assert_eq!((m.hpa, m.perms, m.page_size), (0xabc_d000, Perms::RWX, K4));
            // Another 2 MiB away needs a PT only; one in the same PT, nothing.
            remap(&mut t, fmt, root, gpa + M2, new).unwrap();
            assert_eq!(t.tables.len(), 5);
            remap(&mut t, fmt, root, gpa + K4, new).unwrap();
            assert_eq!(t.tables.len(), 5);
            // 1 GiB away: a PD and a PT; 512 GiB away: all three.
            remap(&mut t, fmt, root, gpa + G1, new).unwrap();
            assert_eq!(t.tables.len(), 7);
            remap(&mut t, fmt, root, gpa + (1 << 39), new).unwrap();
            assert_eq!(t.tables.len(), 10);
            // Replacing a 4 KiB page returns the old one.
            let old = remap(&mut t, fmt, root, gpa, Some((0x5000, Perms::R))).unwrap();
            assert_eq!(
                old,
                Some(Mapping {
                    hpa: 0xabc_d000,
                    perms: Perms::RWX,
                    page_size: K4
                })
            );
            // Unmapping clears the entry, keeps the tables.
            let old = remap(&mut t, fmt, root, gpa, None).unwrap().unwrap();
            assert_eq!((old.hpa, old.perms), (0x5000, Perms::R));
            assert_eq!(translate(&mut t, fmt, root, gpa), None);
            assert_eq!(t.entry(table(3), index(gpa, 12)), 0);
            assert_eq!(remap(&mut t, fmt, root, gpa, None), Ok(None));
            assert_eq!(t.tables.len(), 10);
            assert_eq!(
                translate(&mut t, fmt, root, gpa + K4).unwrap().hpa,
                0xabc_d000
            );
        }
    }

    #[test]
    fn page_over_ram_and_back() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            let (gpa, hpa) = (0, 0x8000_0000u64);
            map(
                &mut t,
                fmt,
                root,
                gpa,
                hpa,
                2 * M2,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            let before: Vec<_> = (0..1024u64)
                .map(|j| translate(&mut t, fmt, root, j * K4).unwrap().hpa)
                .collect();
            // shared_info over RAM page 0x1f3 (rights of device memory), then back.
            let at = 0x1f3 * K4;
            let old = remap(&mut t, fmt, root, at, Some((0x9_9999_9000, Perms::RW)));
            let old = old.unwrap().unwrap();
            assert_eq!((old.hpa, old.page_size), (hpa + at, M2));
            let m = translate(&mut t, fmt, root, at).unwrap();
            assert_eq!((m.hpa, m.perms), (0x9_9999_9000, Perms::RW));
            let back = remap(&mut t, fmt, root, at, Some((old.hpa, old.perms))).unwrap();
            assert_eq!(
                back.map(|m| (m.hpa, m.page_size)),
                Some((0x9_9999_9000, K4))
            );
            for (j, &h) in before.iter().enumerate() {
                let m = translate(&mut t, fmt, root, j as u64 * K4).unwrap();
                assert_eq!((m.hpa, m.perms), (h, Perms::RWX));
                // The first 2 MiB stay split; the second was never touched.
                assert_eq!(m.page_size, if j < 512 { K4 } else { M2 });
            }
        }
    }

    #[test]
    fn remap_argument_errors_change_nothing() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            map(&mut t, fmt, root, 0, 0, M2, Perms::RWX, LargePages::Upto2M).unwrap();
            let snap = snapshot(&mut t, fmt, root);
            let rw = Perms::RW;
            let cases = [
                (0x800, Some((0x1000, rw)), SlatError::Misaligned),
                (0x1000, Some((0x1001, rw)), SlatError::Misaligned),
                (0x1000, Some((HPA_LIMIT, rw)), SlatError::OutOfRange),
                (GPA_LIMIT, Some((0x1000, rw)), SlatError::OutOfRange),
                (GPA_LIMIT, None, SlatError::OutOfRange),
                (
                    0x1000,
                    Some((0x1000, Perms::new(false, true, false))),
                    SlatError::UnsupportedPerms,
                ),
            ];
            for (gpa, new, err) in cases {
                assert_eq!(
                    remap(&mut t, fmt, root, gpa, new),
                    Err(err),
                    "{gpa:#x} {new:?}"
                );
            }
            let none = |_, _, _| panic!("nothing unmapped");
            assert_eq!(
                unmap_range(&mut t, fmt, root, 0x800, K4, none),
                Err(SlatError::Misaligned)
            );
            assert_eq!(
                unmap_range(&mut t, fmt, root, 0, 0x800, none),
                Err(SlatError::Misaligned)
            );
            assert_eq!(
                unmap_range(&mut t, fmt, root, GPA_LIMIT - K4, 2 * K4, none),
                Err(SlatError::OutOfRange)
            );
            assert_eq!(snapshot(&mut t, fmt, root), snap);
            assert_eq!(t.tables.len(), 3);
        }
        // NPT cannot map execute-only; EPT can.
        let (mut t, root) = TestTables::with_root(16);
        let x = Some((0x1000, Perms::new(false, false, true)));
        assert_eq!(
            remap(&mut t, Format::Npt, root, 0, x),
            Err(SlatError::UnsupportedPerms)
        );
        assert_eq!(remap(&mut t, Format::Ept, root, 0, x), Ok(None));
    }

    #[test]
    fn out_of_memory_at_any_step_changes_nothing() {
        // Each case: the tree, the page, the new mapping, the tables the change needs.
        type Setup = fn(&mut TestTables, Format, u64);
        type Case = (Setup, u64, Option<(u64, Perms)>, usize);
        let ram = |t: &mut TestTables, fmt, root| {
            map(
                t,
                fmt,
                root,
                0,
                0x4000_0000,
                4 * M2,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            map(
                t,
                fmt,
                root,
                G1,
                0x8000_0000,
                G1,
                Perms::RX,
                LargePages::Upto1G,
            )
            .unwrap();
        };
        let empty = |_: &mut TestTables, _, _| {};
        let page = Some((0x7000, Perms::RW));
        let cases: [Case; 8] = [
            (empty, 0x5000, page, 3),
            (ram, 0x5000, page, 1),
            (ram, 0x5000, None, 1),
            (ram, G1 + 9 * M2 + K4, page, 2),
            (ram, G1 + 9 * M2 + K4, None, 2),
            // Holes: under the root entry that exists, under a PDPT entry that exists.
            (ram, 3 * G1, page, 2),
            (ram, 16 * M2, page, 1),
            (ram, 1 << 40, page, 3),
        ];
        for fmt in [Format::Ept, Format::Npt] {
            for (setup, gpa, new, needed) in cases {
                for extra in 0..=needed {
                    let (mut t, root) = TestTables::with_root(64);
                    setup(&mut t, fmt, root);
                    assert_eq!(tables_needed(&mut t, fmt, root, gpa, new.is_none()), needed);
                    let expect = translate(&mut t, fmt, root, gpa);
                    let snap = snapshot(&mut t, fmt, root);
                    t.cap = t.tables.len() + extra;
                    let r = remap(&mut t, fmt, root, gpa, new);
                    if extra < needed {
                        assert_eq!(r, Err(SlatError::OutOfMemory), "{fmt:?} {gpa:#x} {extra}");
                        assert_eq!(
                            snapshot(&mut t, fmt, root),
                            snap,
                            "{fmt:?} {gpa:#x} {extra}"
                        );
                    } else {
                        assert_eq!(r, Ok(expect), "{fmt:?} {gpa:#x}");
                        let m = translate(&mut t, fmt, root, gpa);
                        assert_eq!(m.map(|m| (m.hpa, m.perms)), new);
                    }
                }
            }
        }
    }

    #[test]
    fn unmap_range_whole_leaves_and_edges() {
        for fmt in [Format::Ept, Format::Npt] {
            let (mut t, root) = TestTables::with_root(16);
            let hpa = 0x4000_0000u64;
            let size = 3 * M2 + 5 * K4;
            map(
                &mut t,
                fmt,
                root,
                0,
                hpa,
                size,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            map(
                &mut t,
                fmt,
                root,
                8 * M2,
                hpa,
                K4,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            assert_eq!(t.tables.len(), 5);
            let mut got = Vec::new();
            let (from, to) = (M2 / 2, 3 * M2 + 2 * K4);
            unmap_range(&mut t, fmt, root, from, to - from, |g, h, s| {
                got.push((g, h, s))
            })
            .unwrap();
            let mut expect: Vec<_> = (from..M2)
                .step_by(K4 as usize)
                .map(|g| (g, hpa + g, K4))
                .collect();
            expect.extend([(M2, hpa + M2, M2), (2 * M2, hpa + 2 * M2, M2)]);
            expect.extend([
                (3 * M2, hpa + 3 * M2, K4),
                (3 * M2 + K4, hpa + 3 * M2 + K4, K4),
            ]);
            assert_eq!(got, expect);
            // One PT for the split; the whole 2 MiB leaves needed none.
            assert_eq!(t.tables.len(), 6);
            let model = expand(&mut t, fmt, root);
            let mut left: Vec<_> = model.keys().copied().collect();
            left.sort();
            let mut want: Vec<_> = (0..from).step_by(K4 as usize).collect();
            want.extend((to..size).step_by(K4 as usize));
            want.push(8 * M2);
            assert_eq!(left, want);
            // Again over the same range, and over holes: nothing to report.
            unmap_range(&mut t, fmt, root, from, to - from, |_, _, _| panic!()).unwrap();
            unmap_range(&mut t, fmt, root, 4 * M2, 4 * M2, |_, _, _| panic!()).unwrap();
            unmap_range(&mut t, fmt, root, 0, 0, |_, _, _| panic!()).unwrap();
            assert_eq!(t.tables.len(), 6);
            // A whole 1 GiB leaf goes with one store.
            map(&mut t, fmt, root, G1, 0, G1, Perms::RX, LargePages::Upto1G).unwrap();
            got.clear();
            unmap_range(&mut t, fmt, root, G1, G1, |g, h, s| got.push((g, h, s))).unwrap();
            assert_eq!(got, [(G1, 0, G1)]);
            assert_eq!(t.tables.len(), 6);
        }
    }

    /// A small xorshift generator: the tests need no crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_remaps_match_a_model() {
        for fmt in [Format::Ept, Format::Npt] {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let (mut t, root) = TestTables::with_root(usize::MAX);
            // RAM in 2 MiB pages, a 1 GiB page, and holes around them.
            map(
                &mut t,
                fmt,
                root,
                0,
                0x1_0000_0000,
                8 * M2,
                Perms::RWX,
                LargePages::Upto2M,
            )
            .unwrap();
            map(
                &mut t,
                fmt,
                root,
                G1,
                0x40_0000_0000,
                G1,
                Perms::RX,
                LargePages::Upto1G,
            )
            .unwrap();
            let mut model = expand(&mut t, fmt, root);
            assert_eq!(model.len(), 8 * 512 + 512 * 512);
            let perms: &[Perms] = match fmt {
                Format::Ept => &[
                    Perms::R,
                    Perms::RW,
                    Perms::RX,
                    Perms::RWX,
                    Perms::new(false, false, true),
                ],
                Format::Npt => &[Perms::R, Perms::RW, Perms::RX, Perms::RWX],
            };
            let mut failures = 0;
            for step in 0..6000 {
                // Mostly the first 32 MiB of each gigabyte, where splits and holes meet.
                let span = if rng.below(4) == 0 { G1 } else { 16 * M2 };
                let gpa = rng.below(4) * G1 + (rng.below(span) & !(K4 - 1));
                let new = match rng.below(10) {
                    0..=4 => Some((
                        rng.below(1 << 40) & !(K4 - 1),
                        perms[rng.below(perms.len() as u64) as usize],
                    )),
                    5..=7 => None,
                    _ => {
                        let pages = if rng.below(2) == 0 { 8 } else { 1024 };
                        let size = (1 + rng.below(pages)) * K4;
                        let mut gone = Vec::new();
                        unmap_range(&mut t, fmt, root, gpa, size, |g, h, s| gone.push((g, h, s)))
                            .unwrap();
                        for (g, h, s) in gone {
                            assert!(g >= gpa && g + s <= gpa + size);
                            for off in (0..s).step_by(K4 as usize) {
                                assert_eq!(model.remove(&(g + off)).map(|m| m.0), Some(h + off));
                            }
                        }
                        assert!((gpa..gpa + size)
                            .step_by(K4 as usize)
                            .all(|g| !model.contains_key(&g)));
                        continue;
                    }
                };
                // Now and then, too little memory for what the change needs.
                let starve = rng.below(4) == 0;
                let snap = starve.then(|| snapshot(&mut t, fmt, root));
                if starve {
                    t.cap = t.tables.len() + rng.below(2) as usize;
                }
                let needed = tables_needed(&mut t, fmt, root, gpa, new.is_none());
                let before = t.tables.len();
                let r = remap(&mut t, fmt, root, gpa, new);
                if r.is_ok() {
                    assert_eq!(t.tables.len() - before, needed, "step {step}");
                }
                t.cap = usize::MAX;
                match r {
                    Err(SlatError::OutOfMemory) if starve => {
                        failures += 1;
                        assert_eq!(Some(snapshot(&mut t, fmt, root)), snap);
                    }
                    Ok(old) => {
                        assert_eq!(
                            old.map(|m| (m.hpa, m.perms)),
                            model.get(&gpa).copied(),
                            "step {step}"
                        );
                        match new {
                            Some(n) => model.insert(gpa, n),
                            None => model.remove(&gpa),
                        };
                    }
                    Err(e) => panic!("step {step}: {e:?}"),
                }
                let m = translate(&mut t, fmt, root, gpa);
                assert_eq!(m.map(|m| (m.hpa, m.perms)), model.get(&gpa).copied());
                if step % 1000 == 999 {
                    assert_eq!(expand(&mut t, fmt, root), model, "step {step}");
                }
            }
            assert!(failures > 50, "{failures}");
            assert_eq!(expand(&mut t, fmt, root), model);
            // Large pages the changes did not touch are still large.
            let large = leaves(&mut t, fmt, root)
                .iter()
                .filter(|l| l.2 > K4)
                .count();
            assert!(large > 0);
        }
    }
}
