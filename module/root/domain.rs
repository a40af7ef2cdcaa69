// SPDX-License-Identifier: GPL-2.0
//! What root mode shares among a domain's vCPUs: one object per domain, allocated and pinned
//! by the module (`module/domain/`), reached from every vCPU's state by a pointer.
//!
//! Its map and settings are fixed before the first vCPU runs and only read afterwards; what
//! vCPUs running on several CPUs change at once lives behind [`DomainShared::state`], a
//! root-mode spinlock (the Linux side takes it with interrupts off). That is where the Xen
//! stage's domain-wide state goes: event channels, grant table frames, the shared_info
//! location, timers.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use crate::keel_core::{
    cpuid,
    exit::EXIT_KINDS,
    slat::{self, Format},
    spinlock::SpinLock,
    state,
};

/// Guest-physical ranges a domain may have (the uapi's `KEEL_MAX_RANGES`).
pub(crate) const MAX_RANGES: usize = 64;

/// What a guest-physical range is.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RangeKind {
    /// Not a range (an unused slot).
    #[default]
    None,
    /// RAM.
    Ram,
    /// Read-only memory.
    Rom,
    /// Every access exits to Dom0, decoded.
    Mmio,
}

/// One guest-physical range.
#[derive(Clone, Copy, Default)]
pub(crate) struct Range {
    /// Start.
    pub(crate) gpa: u64,
    /// Bytes.
    pub(crate) size: u64,
    /// Kind.
    pub(crate) kind: RangeKind,
}

/// What the domain's vCPUs change at once, under [`DomainShared::state`].
pub(crate) struct DomainState {
    /// The domain's exits per kind, counted by root mode on every vCPU.
    pub(crate) exits: [u64; EXIT_KINDS],
}

/// One domain as root mode sees it.
pub(crate) struct DomainShared {
    /// The domain id.
    pub(crate) domid: u16,
    /// A Xen PVH domain: port I/O and holes in the map read all-ones, and hypercalls, HLT and
    /// the local APIC are served by the module's run loop (`module/xen/`) rather than by the
    /// vCPU's userspace.
    pub(crate) xen: bool,
    /// The second-level page tables' root (physical).
    pub(crate) slat_root: u64,
    /// EPT or NPT.
    pub(crate) format: Format,
    /// The map.
    pub(crate) ranges: [Range; MAX_RANGES],
    /// Linux's direct-map offset: root mode reads physical memory at this + address.
    pub(crate) page_offset_base: u64,
    /// XCR0 bits the CPU supports and Dom0 enabled (what the guest's XSETBV may set, and what
    /// the FPU switch moves); 0 without XSAVE (Dom0's CR4.OSXSAVE clear): the FPU then moves
    /// with FXSAVE and XSETBV raises #UD.
    pub(crate) xcr0_supported: u64,
    /// What Keel's CPUID leaves report.
    pub(crate) identity: cpuid::Identity,
    /// The CPU has TSC_AUX (RDTSCP or RDPID): each run switches it.
    pub(crate) tsc_aux: bool,
    /// What the vCPUs' control registers may hold (`keel_core::state`).
    pub(crate) limits: state::Limits,
    /// What vCPUs change at once.
    pub(crate) state: SpinLock<DomainState>,
}

impl DomainShared {
    /// The range holding `gpa`.
    pub(crate) fn range_of(&self, gpa: u64) -> Option<&Range> {
        self.ranges
            .iter()
            .find(|r| r.kind != RangeKind::None && gpa >= r.gpa && gpa - r.gpa < r.size)
    }

    /// Reads guest-physical memory through the second-level tables (RAM and ROM only).
    /// Returns the bytes read: fewer when a page is not memory.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> usize {
        let mut t = DirectTables(self.page_offset_base);
        let mut done = 0;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            let Some(hpa) = slat::host_address(&mut t, self.format, self.slat_root, a) else {
                break;
            };
            let in_page = (4096 - (a & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let src = (self.page_offset_base + hpa) as *const u8;
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                // SAFETY: `hpa` is domain memory (the tables map nothing else), page-sized
                // pages that the domain owns and Linux's direct map covers.
                *b = unsafe { src.add(i).read_volatile() };
            }
            done += n;
        }
        done
    }

    /// Writes guest-physical RAM (not ROM, not MMIO) through the second-level tables. Returns
    /// the bytes written: fewer when a page is not RAM.
    pub(crate) fn write(&self, gpa: u64, buf: &[u8]) -> usize {
        let mut t = DirectTables(self.page_offset_base);
        let mut done = 0;
        while done < buf.len() {
            let a = gpa.wrapping_add(done as u64);
            if self.range_of(a).map(|r| r.kind) != Some(RangeKind::Ram) {
                break;
            }
            let Some(hpa) = slat::host_address(&mut t, self.format, self.slat_root, a) else {
                break;
            };
            let in_page = (4096 - (a & 0xfff)) as usize;
            let n = in_page.min(buf.len() - done);
            let dst = (self.page_offset_base + hpa) as *mut u8;
            for (i, b) in buf[done..done + n].iter().enumerate() {
                // SAFETY: `hpa` is a RAM page of the domain (checked above), which the domain
                // owns and Linux's direct map covers; the guest may access it concurrently,
                // as on a CPU.
                unsafe { dst.add(i).write_volatile(*b) };
            }
            done += n;
        }
        done
    }

    /// A pointer to guest-physical RAM byte `gpa` in Linux's direct map (valid to the end of
    /// its page, while the domain lives); `None` outside RAM.
    pub(crate) fn ram_ptr(&self, gpa: u64) -> Option<*mut u8> {
        if self.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
            return None;
        }
        let mut t = DirectTables(self.page_offset_base);
        let hpa = slat::host_address(&mut t, self.format, self.slat_root, gpa)?;
        Some((self.page_offset_base + hpa) as *mut u8)
    }

    /// The four PAE PDPTEs at `pdpt` (32-byte aligned, so in one page).
    pub(crate) fn pdptes(&self, pdpt: u64) -> Option<[u64; 4]> {
        let mut p = [0u64; 4];
        for (i, e) in p.iter_mut().enumerate() {
            *e = self.read_u64(pdpt + 8 * i as u64)?;
        }
        Some(p)
    }

    /// Reads an 8-byte guest-physical value.
    pub(crate) fn read_u64(&self, gpa: u64) -> Option<u64> {
        // Page-table entries, the most read: aligned, one load.
        if gpa & 7 == 0 {
            let mut t = DirectTables(self.page_offset_base);
            let hpa = slat::host_address(&mut t, self.format, self.slat_root, gpa)?;
            let p = (self.page_offset_base + hpa) as *const u64;
            // SAFETY: As in `read`: `hpa` is domain memory in Linux's direct map, and 8-byte
            // aligned, so the 8 bytes are in its page.
            return Some(u64::from_le(unsafe { p.read_volatile() }));
        }
        let mut b = [0u8; 8];
        (self.read(gpa, &mut b) == 8).then(|| u64::from_le_bytes(b))
    }
}

/// The second-level tables, read through Linux's direct map (root mode never allocates).
struct DirectTables(u64);

impl slat::Tables for DirectTables {
    fn alloc(&mut self) -> Option<u64> {
        None
    }

    fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: Table pages are module allocations in the direct map; root mode only reads
        // them (`translate` and `host_address` do not write).
        unsafe { &mut *((self.0 + phys) as *mut [u64; 512]) }
    }
}
