// SPDX-License-Identifier: GPL-2.0
//! Hypercall arguments in guest-virtual memory, seen from the run loop: the vCPU's paging as
//! root mode saved it at the end of the run, and the domain's RAM.

use crate::keel_core::{
    arch::{cr0, cr4, efer},
    paging, state,
    xen::abi::{Errno, Width},
};
use crate::root::domain::{DomainShared, RangeKind};
use crate::root::vcpu::ArchState;

/// A vCPU's view of its memory (supervisor accesses: hypercalls come from CPL 0).
pub(super) struct Guest<'a> {
    dom: &'a DomainShared,
    ctl: state::Ctl,
    long: bool,
}

impl<'a> Guest<'a> {
    pub(super) fn new(dom: &'a DomainShared, arch: &ArchState, long: bool) -> Self {
        Guest {
            dom,
            ctl: arch.ctl(),
            long,
        }
    }

    /// The guest-physical address of `gva`, where a CPU would not fault.
    fn gpa(&self, gva: u64, write: bool) -> Option<u64> {
        let c = &self.ctl;
        if c.efer & efer::LMA != 0 && !state::canonical(gva, c.cr4 & cr4::LA57 != 0) {
            return None;
        }
        let mode = paging::PagingMode::from_control_registers(c.cr0, c.cr4, c.efer);
        let t = paging::walk(mode, c.cr3, gva, |pa| self.dom.read_u64(pa))?;
        (!write || t.write || c.cr0 & cr0::WP == 0).then_some(t.pa)
    }

    fn at(&self, gva: u64, done: usize) -> u64 {
        let a = gva.wrapping_add(done as u64);
        if self.long {
            a
        } else {
            a & 0xffff_ffff
        }
    }

    /// Copies `buf.len()` bytes in from `gva`; EFAULT where a page is not mapped.
    pub(super) fn read(&self, gva: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mut done = 0;
        while done < buf.len() {
            let a = self.at(gva, done);
            let n = ((4096 - (a & 0xfff)) as usize).min(buf.len() - done);
            let gpa = self.gpa(a, false).ok_or(Errno::EFAULT)?;
            if self.dom.read(gpa, &mut buf[done..done + n]) != n {
                return Err(Errno::EFAULT);
            }
            done += n;
        }
        Ok(())
    }

    /// The guest-physical addresses of the (one or two) pages that `len` bytes at `gva`
    /// touch, each writable RAM where a CPU would not fault; `None` when the bytes span more
    /// pages or one is not writable RAM.
    fn writable_pages(&self, gva: u64, len: usize) -> Result<Option<[(u64, usize); 2]>, Errno> {
        let mut pages = [(0, 0); 2];
        let mut done = 0;
        for p in pages.iter_mut() {
            if done == len {
                break;
            }
            let a = self.at(gva, done);
            let n = ((4096 - (a & 0xfff)) as usize).min(len - done);
            let gpa = self.gpa(a, true).ok_or(Errno::EFAULT)?;
            if self.dom.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
                return Err(Errno::EFAULT);
            }
            *p = (gpa, n);
            done += n;
        }
        Ok((done == len).then_some(pages))
    }

    /// Copies `buf` out to `gva`; EFAULT (nothing written) where a page is not writable RAM.
    pub(super) fn write(&self, gva: u64, buf: &[u8]) -> Result<(), Errno> {
        // The usual case, a structure in one or two pages: one walk a page.
        if let Some(pages) = self.writable_pages(gva, buf.len())? {
            let mut done = 0;
            for (gpa, n) in pages {
                if n != 0 && self.dom.write(gpa, &buf[done..done + n]) != n {
                    return Err(Errno::EFAULT);
                }
                done += n;
            }
            return Ok(());
        }
        for pass in [false, true] {
            let mut done = 0;
            while done < buf.len() {
                let a = self.at(gva, done);
                let n = ((4096 - (a & 0xfff)) as usize).min(buf.len() - done);
                let gpa = self.gpa(a, true).ok_or(Errno::EFAULT)?;
                if !pass {
                    if self.dom.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
                        return Err(Errno::EFAULT);
                    }
                } else if self.dom.write(gpa, &buf[done..done + n]) != n {
                    return Err(Errno::EFAULT);
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Where `len` bytes at `gva`, all in one page of writable RAM, are in Linux's direct map
    /// (the page stays the domain's while the calling vCPU thread is between runs: the balloon
    /// frees a page only after `Xen::quiesce`); `None` when they are not so (a caller then goes
    /// through [`Guest::write`]).
    pub(super) fn writable_ptr(&self, gva: u64, len: usize) -> Option<*mut u8> {
        if len == 0 || len > 4096 - (self.at(gva, 0) & 0xfff) as usize {
            return None;
        }
        let gpa = self.gpa(self.at(gva, 0), true)?;
        self.dom.ram_ptr(gpa)
    }

    /// Reads an argument structure of `N` bytes.
    pub(super) fn get<const N: usize>(&self, gva: u64) -> Result<[u8; N], Errno> {
        let mut b = [0u8; N];
        self.read(gva, &mut b)?;
        Ok(b)
    }

    /// Reads an argument structure of `len` bytes (at most `N`: the larger, 64-bit layout)
    /// into an `N`-byte buffer, zero-filled after it.
    pub(super) fn get_sized<const N: usize>(&self, gva: u64, len: usize) -> Result<[u8; N], Errno> {
        let mut b = [0u8; N];
        self.read(gva, &mut b[..len.min(N)])?;
        Ok(b)
    }

    /// The argument layout of the calling vCPU's mode (Xen's compat layout outside 64-bit
    /// mode).
    pub(super) fn width(&self) -> Width {
        if self.long {
            Width::Bits64
        } else {
            Width::Bits32
        }
    }

    /// Reads a `xen_pfn_t` (or `xen_ulong_t`) of this width at `gva`.
    pub(super) fn get_word(&self, gva: u64) -> Result<u64, Errno> {
        let b = self.get_sized::<8>(gva, self.width().word_bytes())?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a `xen_pfn_t` of this width at `gva`.
    pub(super) fn put_word(&self, gva: u64, v: u64) -> Result<(), Errno> {
        self.write(gva, &v.to_le_bytes()[..self.width().word_bytes()])
    }
}
