// SPDX-License-Identifier: GPL-2.0
//! Domains and vCPUs: the Linux side of `KEEL_CREATE_DOMAIN` and the domain and vCPU file
//! descriptors. This file is the domain object; `memory.rs` its RAM and tables,
//! `registry.rs` the live domains by id, `vcpu.rs` the vCPUs, `run.rs` the run loop, `fd.rs`
//! the fd plumbing.
//!
//! A [`Domain`] owns its RAM (allocated here, zeroed, in 2 MiB chunks where the layout allows)
//! and its second-level page tables (EPT or NPT, built with the core crate's `slat`). Its
//! guest-physical map is fixed at the first run of any vCPU; until then the builder may mmap
//! the domain fd (offset = guest-physical address) to load it. A [`Vcpu`] owns the state root
//! mode runs (`root::vcpu::VcpuState`); `KEEL_VCPU_RUN` enters it on the calling thread
//! through Keel's `Run` hypercall.
//!
//! Each fd holds a reference on its object (the vCPU's holds its domain's), so the domain is
//! freed when the last fd is closed. The fds' `file_operations` name this module as owner:
//! `rmmod` is refused while any exists.
//!
//! This is Dom0 code: it allocates and takes Linux locks. Root mode sees only `VcpuState`
//! and the domain's `root::domain::DomainShared`, made at the first run.

mod balloon;
mod fd;
mod grant;
mod memory;
mod registry;
mod run;
mod vcpu;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kernel::{
    bindings,
    prelude::*,
    sync::{new_condvar, new_mutex, new_spinlock, Arc, CondVar, Mutex, SpinLock},
    uaccess::{UserPtr, UserSlice},
};

use crate::keel_core::{
    arch::cr4,
    caps::{flags, Caps},
    exit::EXIT_KINDS,
    slat::{self, Format, LargePages},
    spinlock,
};
use crate::root::domain::{DomainShared, DomainState, Range, RangeKind, MAX_RANGES};
use crate::root::vcpu::FPU_PAGES;
use crate::root::x86;
use crate::uapi;
use crate::xen::{WakeSet, Xen};
use fd::{new_fd, DOMAIN_FOPS, VCPU_FOPS};
use memory::{build_tables, page_of, page_offset, Chunk, RangeMem, TableSet, PAGE, SIZE_2M};
pub(crate) use registry::Registration;
use vcpu::{alloc_vcpu_state, Vcpu};

/// What a domain's lock protects.
struct DomainInner {
    /// The tables' format (for the teardown, which frees what they map).
    format: Format,
    ranges: KVec<RangeMem>,
    tables: Option<TableSet>,
    /// Root mode's view, made at the first run and fixed from then on.
    /// Pinned: every vCPU's state points at it.
    shared: Option<Pin<KBox<DomainShared>>>,
    memory_used: u64,
    vcpu_mask: u64,
    pause_count: u32,
    started: bool,
    /// Pages given back whose free had to wait for the domain's end.
    deferred: KVec<u64>,
}

impl Drop for DomainInner {
    fn drop(&mut self) {
        let fmt = self.format;
        balloon::free_mapped(self, fmt);
    }
}

/// A domain.
#[pin_data]
pub(crate) struct Domain {
    domid: u32,
    name: [u8; 32],
    /// `KEEL_CREATE_DOMAIN_*` flags: a Xen PVH domain or a bare one.
    flags: u32,
    max_vcpus: u32,
    memory_size: u64,
    caps: Caps,
    #[pin]
    inner: Mutex<DomainInner>,
    #[pin]
    unpaused: CondVar,
    /// The tasks inside `KEEL_VCPU_RUN`, per vCPU id (for kicks).
    #[pin]
    runners: SpinLock<[usize; 64]>,
    paused: AtomicU32,
    /// Open fds of the domain and its vCPUs: the registry lists it while any is open.
    open_fds: AtomicU32,
    /// A Xen PVH domain's state (`KEEL_CREATE_DOMAIN_XEN`).
    pub(crate) xen: Option<Pin<KBox<Xen>>>,
    /// Nanoseconds the vCPUs spent in `KEEL_VCPU_RUN`'s guest entries.
    cpu_ns: AtomicU64,
}

impl Domain {
    /// `KEEL_CREATE_DOMAIN`: makes a domain and returns its fd.
    pub(crate) fn create(caps: Caps, arg: &mut uapi::keel_domain_create) -> Result<isize> {
        if arg.flags & !uapi::KEEL_CREATE_DOMAIN_XEN != 0 || arg.pad != 0 || arg.domid != 0 {
            return Err(EINVAL);
        }
        if arg.max_vcpus == 0 || arg.max_vcpus > uapi::KEEL_MAX_VCPUS {
            return Err(EINVAL);
        }
        if arg.memory_size % PAGE != 0 || arg.memory_size > uapi::KEEL_MAX_DOMAIN_MEMORY {
            return Err(EINVAL);
        }
        let mut name = [0u8; 32];
        let len = arg.name.iter().position(|&c| c == 0).ok_or(EINVAL)?;
        if len == 0
            || arg.name[..len]
                .iter()
                .any(|&c| !(0x20..0x7f).contains(&(c as u8)))
        {
            return Err(EINVAL);
        }
        for (d, s) in name.iter_mut().zip(&arg.name[..len]) {
            *d = *s as u8;
        }
        if !crate::vendor::runs_domains(&caps) {
            pr_warn!("domains need EPT/NPT and (VMX) unrestricted guest\n");
            return Err(EOPNOTSUPP);
        }
        let (max_vcpus, memory_size, flags) = (arg.max_vcpus, arg.memory_size, arg.flags);
        let domid = registry::next_domid()?;
        let xen = if flags & uapi::KEEL_CREATE_DOMAIN_XEN != 0 {
            Some(Xen::new(domid as u16, max_vcpus, registry::exists)?)
        } else {
            None
        };
        let domain = Arc::pin_init(
            try_pin_init!(Domain {
                domid,
                name,
                flags,
                max_vcpus,
                memory_size,
                caps,
                inner <- new_mutex!(DomainInner {
                    format: crate::vendor::slat_format(caps.vendor),
                    ranges: KVec::new(),
                    tables: Some(TableSet::new()?),
                    shared: None,
                    memory_used: 0,
                    vcpu_mask: 0,
                    pause_count: 0,
                    started: false,
                    deferred: KVec::new(),
                }),
                unpaused <- new_condvar!(),
                runners <- new_spinlock!([0; 64]),
                paused: AtomicU32::new(0),
                open_fds: AtomicU32::new(1),
                xen,
                cpu_ns: AtomicU64::new(0),
            }? Error),
            GFP_KERNEL,
        )?;
        registry::insert(domain.clone())?;
        let fd = new_fd(c"keel-domain", &DOMAIN_FOPS, domain).inspect_err(|_| {
            registry::remove(domid);
        })?;
        arg.domid = domid;
        Ok(fd)
    }

    /// One of the domain's fds (its own or a vCPU's) was closed: the last takes the domain
    /// out of the registry.
    fn fd_closed(&self) {
        if self.open_fds.fetch_sub(1, Ordering::AcqRel) == 1 {
            registry::remove(self.domid);
        }
    }

    /// Whether this is a Xen PVH domain (`KEEL_CREATE_DOMAIN_XEN`).
    pub(crate) fn is_xen(&self) -> bool {
        self.flags & uapi::KEEL_CREATE_DOMAIN_XEN != 0
    }

    fn format(&self) -> Format {
        crate::vendor::slat_format(self.caps.vendor)
    }

    fn large_pages(&self) -> LargePages {
        if self.caps.has(flags::SLAT_2M) {
            LargePages::Upto2M
        } else {
            LargePages::None
        }
    }

    /// `KEEL_DOMAIN_ADD_RANGE`.
    fn add_range(&self, r: &uapi::keel_mem_range) -> Result<isize> {
        let kind = match r.kind {
            uapi::KEEL_RANGE_RAM => RangeKind::Ram,
            uapi::KEEL_RANGE_ROM => RangeKind::Rom,
            uapi::KEEL_RANGE_MMIO => RangeKind::Mmio,
            _ => return Err(EINVAL),
        };
        if r.flags != 0 || r.size == 0 || (r.gpa | r.size) % PAGE != 0 {
            return Err(EINVAL);
        }
        let end = r.gpa.checked_add(r.size).ok_or(EINVAL)?;
        if end > uapi::KEEL_MAX_GPA {
            return Err(EINVAL);
        }
        let mut inner = self.inner.lock();
        if inner.started {
            return Err(EBUSY);
        }
        if inner.ranges.len() >= MAX_RANGES {
            return Err(ENOSPC);
        }
        if inner
            .ranges
            .iter()
            .any(|m| r.gpa < m.range.gpa + m.range.size && m.range.gpa < end)
        {
            return Err(EEXIST);
        }
        let memory = kind != RangeKind::Mmio;
        if memory && inner.memory_used + r.size > self.memory_size {
            return Err(ENOSPC);
        }
        let mut mem = RangeMem {
            range: Range {
                gpa: r.gpa,
                size: r.size,
                kind,
            },
            chunks: KVec::new(),
        };
        if memory {
            let mut at = r.gpa;
            while at < end {
                let big = at % SIZE_2M == 0 && end - at >= SIZE_2M;
                let Some(mut chunk) = big
                    .then(|| Chunk::alloc(9))
                    .flatten()
                    .or_else(|| Chunk::alloc(0))
                else {
                    mem.free_chunks();
                    return Err(ENOMEM);
                };
                chunk.offset = at - r.gpa;
                at += chunk.pages * PAGE;
                if mem.chunks.reserve(1, GFP_KERNEL).is_err() {
                    chunk.free();
                    mem.free_chunks();
                    return Err(ENOMEM);
                }
                // Room reserved just above.
                let _ = mem.chunks.push_within_capacity(chunk);
            }
        }
        // Rebuild the tables with the new range: on failure the old ones stay as they were.
        if inner.ranges.reserve(1, GFP_KERNEL).is_err() {
            mem.free_chunks();
            return Err(ENOMEM);
        }
        // Room reserved just above.
        let _ = inner.ranges.push_within_capacity(mem);
        match build_tables(&inner.ranges, self.format(), self.large_pages()) {
            Ok(t) => {
                // The old tables mapped only the ranges before: their pages are the new
                // tables' now, so the old set goes without freeing what it mapped.
                inner.tables = Some(t);
                if memory {
                    inner.memory_used += r.size;
                }
                Ok(0)
            }
            Err(e) => {
                if let Some(m) = inner.ranges.pop() {
                    m.free_chunks();
                }
                Err(e)
            }
        }
    }

    /// Fixes the map at the first run of any vCPU and returns root mode's view of the domain,
    /// made then and kept until the domain is freed (after its last vCPU).
    fn start(&self) -> Result<*const DomainShared> {
        let mut inner = self.inner.lock();
        if let Some(shared) = &inner.shared {
            return Ok(&raw const **shared);
        }
        let mut ranges = [Range::default(); MAX_RANGES];
        for (d, m) in ranges.iter_mut().zip(inner.ranges.iter()) {
            *d = m.range;
        }
        // A guest may enable what both the CPU and Dom0 have enabled: root mode saves and
        // restores its FPU state under Dom0's XCR0.
        let xcr0 = if x86::read_cr4() & cr4::OSXSAVE != 0 {
            let r = x86::cpuid(0xd, 0);
            ((u64::from(r[3]) << 32) | u64::from(r[0])) & x86::xgetbv0()
        } else {
            0
        };
        let shared = KBox::pin(
            DomainShared {
                domid: self.domid as u16,
                xen: self.is_xen(),
                slat_root: inner.tables.as_ref().ok_or(EINVAL)?.root,
                format: self.format(),
                ranges,
                page_offset_base: page_offset(),
                xcr0_supported: xcr0,
                identity: crate::keel_core::cpuid::Identity {
                    version: crate::VERSION,
                    abi_version: uapi::KEEL_ABI_VERSION,
                },
                limits: self.caps.limits,
                tsc_aux: has_tsc_aux(),
                state: spinlock::SpinLock::new(DomainState {
                    exits: [0; EXIT_KINDS],
                }),
            },
            GFP_KERNEL,
        )?;
        let p = &raw const *shared;
        inner.shared = Some(shared);
        inner.started = true;
        Ok(p)
    }

    /// `KEEL_DOMAIN_CREATE_VCPU`.
    fn create_vcpu(self: &Arc<Self>, arg: &uapi::keel_vcpu_create) -> Result<isize> {
        if arg.flags != 0 || arg.id >= self.max_vcpus {
            return Err(EINVAL);
        }
        let xsave_size = if x86::read_cr4() & cr4::OSXSAVE != 0 {
            x86::cpuid(0xd, 0)[2] as usize
        } else {
            512
        };
        if xsave_size > FPU_PAGES * 4096 {
            pr_warn!("XSAVE area of {} bytes: too large for Keel\n", xsave_size);
            return Err(EOPNOTSUPP);
        }
        let bit = 1u64 << arg.id;
        {
            let mut inner = self.inner.lock();
            if inner.vcpu_mask & bit != 0 {
                return Err(EEXIST);
            }
            inner.vcpu_mask |= bit;
        }
        let release = |e| {
            self.inner.lock().vcpu_mask &= !bit;
            e
        };
        let state = alloc_vcpu_state(arg.id).map_err(release)?;
        let vcpu = Arc::pin_init(
            pin_init!(Vcpu {
                domain: self.clone(),
                id: arg.id,
                state <- new_mutex!(state),
            }),
            GFP_KERNEL,
        )
        .map_err(release)?;
        // The vCPU's fd counts as one of the domain's (see `fd_closed`); a failed fd leaves
        // the domain as it was.
        self.open_fds.fetch_add(1, Ordering::AcqRel);
        new_fd(c"keel-vcpu", &VCPU_FOPS, vcpu).map_err(|e| {
            self.fd_closed();
            release(e)
        })
    }

    /// `KEEL_DOMAIN_PAUSE`: vCPUs inside a run are kicked out and wait.
    fn pause(&self) -> Result<isize> {
        {
            let mut inner = self.inner.lock();
            inner.pause_count = inner.pause_count.checked_add(1).ok_or(EINVAL)?;
            self.paused.store(inner.pause_count, Ordering::SeqCst);
        }
        self.kick_all();
        Ok(0)
    }

    /// `KEEL_DOMAIN_UNPAUSE`.
    fn unpause(&self) -> Result<isize> {
        let mut inner = self.inner.lock();
        if inner.pause_count == 0 {
            return Err(EINVAL);
        }
        inner.pause_count -= 1;
        self.paused.store(inner.pause_count, Ordering::SeqCst);
        if inner.pause_count == 0 {
            self.unpaused.notify_all();
        }
        Ok(0)
    }

    /// Makes every vCPU inside a run leave the guest (an IPI ends the guest's turn).
    /// Wakes the Xen vCPUs of `set`: the blocked ones from their sleep, the running ones out
    /// of the guest (to take what is now pending at their next entry).
    pub(crate) fn wake(&self, set: WakeSet) {
        let Some(x) = &self.xen else {
            return;
        };
        if set.0 == 0 {
            return;
        }
        x.wake(set);
        let runners = self.runners.lock();
        for (v, &t) in runners.iter().enumerate() {
            if t != 0 && set.0 & (1 << v) != 0 {
                // SAFETY: As in `kick_all`.
                unsafe { bindings::kick_process(t as *mut bindings::task_struct) };
            }
        }
    }

    /// Adds the time of one run to the domain's CPU time.
    pub(crate) fn account(&self, ns: u64) {
        self.cpu_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The Xen domain's ioctls.
    fn xen_ioctl(
        &self,
        cmd: u32,
        reader: &mut kernel::uaccess::UserSliceReader,
        writer: &mut kernel::uaccess::UserSliceWriter,
    ) -> Result<isize> {
        let x = self.xen.as_ref().ok_or(ENOTTY)?;
        match cmd {
            uapi::KEEL_DOMAIN_SET_PARAM => {
                let p: uapi::keel_xen_param = reader.read()?;
                if p.pad != 0 {
                    return Err(EINVAL);
                }
                x.set_param(p.index, p.value)?;
            }
            uapi::KEEL_DOMAIN_GET_PARAM => {
                let mut p: uapi::keel_xen_param = reader.read()?;
                if p.pad != 0 {
                    return Err(EINVAL);
                }
                p.value = x.get_param(p.index)?;
                writer.write(&p)?;
            }
            uapi::KEEL_DOMAIN_EVTCHN_BIND => {
                let mut b: uapi::keel_evtchn_bind = reader.read()?;
                if b.flags & !uapi::KEEL_EVTCHN_ALLOC != 0 || b.pad != 0 {
                    return Err(EINVAL);
                }
                // SAFETY: Looks the fd up in the caller's table; returns a counted reference
                // or an error pointer.
                let ctx = unsafe { bindings::eventfd_ctx_fdget(b.eventfd) };
                if (ctx as isize) < 0 && (ctx as isize) >= -4095 {
                    return Err(Error::from_errno(ctx as isize as i32));
                }
                match x.bind_dom0(b.flags & uapi::KEEL_EVTCHN_ALLOC != 0, b.port, ctx as usize) {
                    Ok(port) => b.port = port,
                    Err(e) => {
                        // SAFETY: The reference taken above, not kept.
                        unsafe { bindings::eventfd_ctx_put(ctx) };
                        return Err(e);
                    }
                }
                writer.write(&b)?;
            }
            uapi::KEEL_DOMAIN_EVTCHN_NOTIFY => {
                let p: uapi::keel_evtchn_port = reader.read()?;
                if p.pad != 0 {
                    return Err(EINVAL);
                }
                let shared = self.inner.lock().shared.as_ref().map(|s| &raw const **s);
                match shared {
                    // SAFETY: The shared view lives as long as the domain (made once, never
                    // replaced).
                    Some(s) => self.wake(x.notify_from_dom0(unsafe { &*s }, p.port)?),
                    None => x.check_dom0_port(p.port)?,
                }
            }
            uapi::KEEL_DOMAIN_SET_MEMORY_MAP => {
                let m: uapi::keel_memory_map = reader.read()?;
                if m.pad != 0 || m.nr_entries == 0 || m.nr_entries > uapi::KEEL_MAX_E820 {
                    return Err(EINVAL);
                }
                let n = m.nr_entries as usize;
                let size = n * core::mem::size_of::<uapi::keel_e820_entry>();
                let mut r = UserSlice::new(UserPtr::from_addr(m.entries as usize), size).reader();
                let mut entries = KVec::with_capacity(n, GFP_KERNEL)?;
                for _ in 0..n {
                    let e: uapi::keel_e820_entry = r.read()?;
                    if e.pad != 0 {
                        return Err(EINVAL);
                    }
                    entries.push(
                        crate::xen::E820 {
                            addr: e.addr,
                            size: e.size,
                            kind: e.type_,
                        },
                        GFP_KERNEL,
                    )?;
                }
                x.set_memory_map(&entries)?;
            }
            uapi::KEEL_DOMAIN_EVTCHN_UNBIND => {
                let p: uapi::keel_evtchn_port = reader.read()?;
                if p.pad != 0 {
                    return Err(EINVAL);
                }
                x.unbind_dom0(p.port)?;
            }
            _ => return Err(ENOTTY),
        }
        Ok(0)
    }

    fn kick_all(&self) {
        let runners = self.runners.lock();
        for &t in runners.iter() {
            if t != 0 {
                // SAFETY: A runner clears its slot under this lock before its run returns, so
                // the task is alive while its pointer is here.
                unsafe { bindings::kick_process(t as *mut bindings::task_struct) };
            }
        }
    }

    /// Fills a `keel_domain_info`.
    fn info(&self) -> uapi::keel_domain_info {
        let inner = self.inner.lock();
        let mut state = 0;
        if inner.pause_count > 0 {
            state |= uapi::KEEL_DOMAIN_PAUSED;
        }
        if inner.started {
            state |= uapi::KEEL_DOMAIN_STARTED;
        }
        let mut info = uapi::keel_domain_info {
            domid: self.domid,
            state,
            max_vcpus: self.max_vcpus,
            nr_vcpus: inner.vcpu_mask.count_ones(),
            memory_size: self.memory_size,
            memory_used: inner.memory_used,
            nr_ranges: inner.ranges.len() as u32,
            vcpu_mask: inner.vcpu_mask,
            running_mask: self
                .runners
                .lock()
                .iter()
                .enumerate()
                .filter(|&(_, &task)| task != 0)
                .fold(0, |mask, (id, _)| mask | 1 << id),
            flags: self.flags,
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            ..Default::default()
        };
        for (d, s) in info.name.iter_mut().zip(self.name) {
            *d = s as core::ffi::c_char;
        }
        info
    }

    /// mmap of the domain fd: the pages of one RAM/ROM range, before the first run. Nothing
    /// is mapped here: each page goes in at its first touch ([`Domain::fault_page`]), so a
    /// builder that writes a 20 MB kernel into 512 MiB of RAM maps 5000 pages, not 131072
    /// (inserting every page took most of a DomU's launch time).
    pub(super) fn mmap(&self, vma: *mut bindings::vm_area_struct) -> Result<isize> {
        // SAFETY: The mmap callback gets a valid VMA that it may set up.
        let vma_new = unsafe { kernel::mm::virt::VmaNew::from_raw(vma) };
        // SAFETY: As above.
        let pgoff = unsafe { (*vma).vm_pgoff };
        let len = (vma_new.end() - vma_new.start()) as u64;
        let gpa = (pgoff as u64).checked_mul(PAGE).ok_or(EINVAL)?;
        let inner = self.inner.lock();
        if inner.started {
            return Err(EBUSY);
        }
        Self::mappable(&inner, gpa, len).ok_or(EINVAL)?;
        vma_new.set_dontcopy();
        vma_new.set_dontexpand();
        // Pages are inserted by the fault handler, under the mmap lock taken for reading: the
        // flag must be set now, under the write lock (`vm_insert_page`).
        vma_new.set_mixedmap();
        // SAFETY: As above; the table is static and its handler serves this file's VMAs
        // (`vm_file` keeps the file, and so the domain, alive while the VMA lives).
        unsafe { (*vma).vm_ops = fd::domain_vm_ops() };
        Ok(0)
    }

    /// The RAM or ROM range that holds `len` bytes at `gpa`.
    fn mappable(inner: &DomainInner, gpa: u64, len: u64) -> Option<&RangeMem> {
        inner.ranges.iter().find(|m| {
            m.range.kind != RangeKind::Mmio
                && gpa >= m.range.gpa
                && gpa
                    .checked_add(len)
                    .is_some_and(|e| e <= m.range.gpa + m.range.size)
        })
    }

    /// A page fault in a VMA of [`Domain::mmap`] at `gpa` (page-aligned): inserts the page
    /// that backs it at `addr`. Before the first run that is the range's own page; from then
    /// on what the second-level tables map there (memory given back is unmapped there, and
    /// taken again maps new pages), looked up and inserted under the domain's lock so that
    /// a page given back meanwhile cannot be freed in between (the mapping holds its own
    /// reference). Unbacked: `EFAULT` (SIGBUS).
    pub(super) fn fault_page(
        &self,
        vma: *mut bindings::vm_area_struct,
        addr: usize,
        gpa: u64,
    ) -> Result {
        let mut inner = self.inner.lock();
        let va = if !inner.started {
            Self::mappable(&inner, gpa, PAGE)
                .and_then(|m| m.page_va(gpa))
                .ok_or(EFAULT)?
        } else {
            Self::mappable(&inner, gpa, PAGE).ok_or(EFAULT)?;
            let fmt = self.format();
            let tables = inner.tables.as_mut().ok_or(EFAULT)?;
            let root = tables.root;
            let m = slat::translate(tables, fmt, root, gpa).ok_or(EFAULT)?;
            (m.hpa & !(PAGE - 1)) + page_offset()
        };
        // SAFETY: The VMA is the faulting one (VM_MIXEDMAP, set at mmap); the page is an
        // order-0 page that the domain owns while its lock is held, and the mapping takes its
        // own reference.
        let r = unsafe { bindings::vm_insert_page(vma, addr, page_of(va)) };
        match r {
            0 => Ok(()),
            r => Err(Error::from_errno(r)),
        }
    }

    pub(super) fn ioctl(self: &Arc<Self>, cmd: u32, arg: usize) -> Result<isize> {
        let size = kernel::ioctl::_IOC_SIZE(cmd);
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), size).reader_writer();
        match cmd {
            uapi::KEEL_DOMAIN_ADD_RANGE => self.add_range(&reader.read()?),
            uapi::KEEL_DOMAIN_CREATE_VCPU => self.create_vcpu(&reader.read()?),
            uapi::KEEL_DOMAIN_PAUSE => self.pause(),
            uapi::KEEL_DOMAIN_UNPAUSE => self.unpause(),
            uapi::KEEL_DOMAIN_INFO => {
                writer.write(&self.info())?;
                Ok(0)
            }
            uapi::KEEL_DOMAIN_GRANT_COPY => self.grant_copy(&reader.read()?),
            uapi::KEEL_DOMAIN_GRANT_MAP => self.grant_map(&reader.read()?),
            _ => self.xen_ioctl(cmd, &mut reader, &mut writer),
        }
    }
}

/// Whether this CPU has TSC_AUX: RDTSCP (CPUID 0x80000001 EDX bit 27) or RDPID (leaf 7 ECX
/// bit 22).
fn has_tsc_aux() -> bool {
    let ext = x86::cpuid(0x8000_0000, 0)[0] >= 0x8000_0001
        && x86::cpuid(0x8000_0001, 0)[3] & (1 << 27) != 0;
    let rdpid = x86::cpuid(0, 0)[0] >= 7 && x86::cpuid(7, 0)[2] & (1 << 22) != 0;
    ext || rdpid
}

/// `KEEL_LIST_DOMAINS`.
pub(crate) fn list(arg: &mut uapi::keel_domain_list) -> Result<isize> {
    if arg.flags != 0 || arg.pad != 0 {
        return Err(EINVAL);
    }
    let want = arg.count as usize;
    let size = core::mem::size_of::<uapi::keel_domain_info>();
    let mut out = UserSlice::new(
        UserPtr::from_addr(arg.buffer as usize),
        want.saturating_mul(size),
    )
    .writer();
    let (domains, total) = registry::all(want)?;
    for d in domains.iter() {
        out.write(&d.info())?;
    }
    arg.count = domains.len() as u32;
    arg.total = total as u32;
    Ok(0)
}

/// Writes every live domain's exit counters (`domain_exits` in debugfs): one line per domain
/// and exit kind that occurred, `domid kind count`.
pub(crate) fn write_exits(f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    use crate::keel_core::exit::ExitKind;
    let Ok((domains, _)) = registry::all(usize::MAX) else {
        return Err(core::fmt::Error);
    };
    writeln!(f, "# domid exit count")?;
    for d in domains.iter() {
        let exits = match &d.inner.lock().shared {
            Some(shared) => {
                // Root mode takes this lock with interrupts off (VMX root mode, or SVM's GIF
                // clear): so does Dom0, and nothing in between exits to Keel.
                let flags = x86::irq_save();
                let exits = shared.state.lock().exits;
                x86::irq_restore(flags);
                exits
            }
            None => [0; EXIT_KINDS],
        };
        for kind in ExitKind::ALL {
            let n = exits[kind as usize];
            if n != 0 {
                writeln!(f, "{} {} {}", d.domid, kind.name(), n)?;
            }
        }
    }
    Ok(())
}
