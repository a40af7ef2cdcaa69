// SPDX-License-Identifier: GPL-2.0
//! Domains and vCPUs: the Linux side of `KEEL_CREATE_DOMAIN` and the domain and vCPU file
//! descriptors.
//!
//! A [`Domain`] owns its RAM (allocated here, zeroed, in 2 MiB chunks where the layout allows)
//! and its second-level page tables (EPT or NPT, built with the core crate's `slat`). Its
//! guest-physical map is fixed at the first run of any vCPU; until then the builder may mmap
//! the domain fd (offset = guest-physical address) to load it. A [`Vcpu`] owns the state root
//! mode runs (`root::guest::VcpuState`); `KEEL_VCPU_RUN` enters it on the calling thread
//! through Keel's `Run` hypercall.
//!
//! Each fd holds a reference on its object (the vCPU's holds its domain's), so the domain is
//! freed when the last fd is closed. The fds' `file_operations` name this module as owner:
//! `rmmod` is refused while any exists.
//!
//! This is Dom0 code: it allocates and takes Linux locks. Root mode sees only `VcpuState`.

use core::{
    ffi::{c_int, c_uint, c_void},
    sync::atomic::{AtomicU32, Ordering},
};

use kernel::{
    bindings,
    prelude::*,
    sync::{new_condvar, new_mutex, new_spinlock, Arc, CondVar, Mutex, SpinLock},
    task::Task,
    uaccess::{UserPtr, UserSlice},
};

use crate::keel_core::{
    caps::{flags, Caps, Vendor},
    slat::{self, Format, LargePages, Perms},
    vmcb::VmcbSeg,
};
use crate::root::guest::{
    ArchState, Completion, DomainView, GuestExit, Range, RangeKind, VcpuState, FPU_PAGES,
    MAX_RANGES,
};
use crate::uapi;
use crate::x86;

/// 2 MiB.
const SIZE_2M: u64 = 2 << 20;
/// The page size.
const PAGE: u64 = 4096;

unsafe extern "C" {
    /// `anon_inode_getfd` (fs/anon_inodes.c, exported): a new fd on an anonymous inode.
    fn anon_inode_getfd(
        name: *const u8,
        fops: *const c_void,
        private: *mut c_void,
        flags: c_int,
    ) -> c_int;
}

/// Linux's direct-map offset.
fn page_offset() -> u64 {
    // SAFETY: Set at boot, never changed after.
    unsafe { bindings::page_offset_base as u64 }
}

/// One physically contiguous piece of a range's memory: `pages` 4 KiB pages from `va` (direct
/// map), each an independent order-0 page (`split_page`).
struct Chunk {
    va: u64,
    pages: u64,
}

impl Chunk {
    /// Allocates a zeroed chunk of 2^order pages.
    fn alloc(order: u32) -> Option<Self> {
        let mut gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO;
        if order > 0 {
            gfp |= bindings::__GFP_NOWARN;
        }
        // SAFETY: Allocating pages has no preconditions.
        let va = unsafe { bindings::get_free_pages_noprof(gfp, order) } as u64;
        if va == 0 {
            return None;
        }
        if order > 0 {
            // SAFETY: `va` is a fresh non-compound allocation of this order; splitting makes
            // each page an order-0 page with its own reference, freed one by one.
            unsafe { bindings::split_page(page_of(va), order) };
        }
        Some(Self {
            va,
            pages: 1 << order,
        })
    }

    fn pa(&self) -> u64 {
        self.va - page_offset()
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        for i in 0..self.pages {
            // SAFETY: Each page of the chunk is an order-0 page this chunk allocated; pages a
            // builder still maps keep their own reference and are freed at munmap.
            unsafe { bindings::free_pages((self.va + i * PAGE) as usize, 0) };
        }
    }
}

/// The `struct page` of a direct-map address.
fn page_of(va: u64) -> *mut bindings::page {
    let pfn = (va - page_offset()) >> 12;
    // SAFETY: x86-64 uses SPARSEMEM_VMEMMAP: the page array starts at `vmemmap_base`, set at
    // boot, and covers every pfn of RAM.
    unsafe { (bindings::vmemmap_base as *mut bindings::page).add(pfn as usize) }
}

/// A guest-physical range and its memory.
struct RangeMem {
    range: Range,
    chunks: KVec<Chunk>,
}

impl RangeMem {
    /// The direct-map address of the page at `gpa`, inside the range.
    fn page_va(&self, gpa: u64) -> Option<u64> {
        let mut at = self.range.gpa;
        for c in &self.chunks {
            let size = c.pages * PAGE;
            if gpa >= at && gpa < at + size {
                return Some(c.va + (gpa - at));
            }
            at += size;
        }
        None
    }
}

/// Second-level table pages, allocated here and freed as a set.
struct TableSet {
    pages: KVec<u64>,
    root: u64,
}

impl TableSet {
    fn new() -> Result<Self> {
        let mut t = Self {
            pages: KVec::new(),
            root: 0,
        };
        t.root = slat::Tables::alloc(&mut t).ok_or(ENOMEM)?;
        Ok(t)
    }
}

impl slat::Tables for TableSet {
    fn alloc(&mut self) -> Option<u64> {
        self.pages.reserve(1, GFP_KERNEL).ok()?;
        let gfp = bindings::GFP_KERNEL | bindings::__GFP_ZERO;
        // SAFETY: Allocating a page has no preconditions.
        let va = unsafe { bindings::get_free_pages_noprof(gfp, 0) } as u64;
        if va == 0 {
            return None;
        }
        self.pages.push(va, GFP_KERNEL).ok()?;
        Some(va - page_offset())
    }

    fn entries(&mut self, phys: u64) -> &mut [u64; 512] {
        // SAFETY: `phys` is one of this set's pages (the builder only follows entries it
        // wrote), in the direct map and owned by the set.
        unsafe { &mut *((phys + page_offset()) as *mut [u64; 512]) }
    }
}

impl Drop for TableSet {
    fn drop(&mut self) {
        for &va in self.pages.iter() {
            // SAFETY: Each page was allocated by `alloc`; no vCPU uses the tables any more
            // (the set is dropped with the domain, or was never installed).
            unsafe { bindings::free_pages(va as usize, 0) };
        }
    }
}

/// What a domain's lock protects.
struct DomainInner {
    ranges: KVec<RangeMem>,
    tables: Option<TableSet>,
    memory_used: u64,
    vcpu_mask: u64,
    pause_count: u32,
    started: bool,
}

/// A domain.
#[pin_data(PinnedDrop)]
pub(crate) struct Domain {
    domid: u32,
    name: [u8; 32],
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
}

#[pinned_drop]
impl PinnedDrop for Domain {
    fn drop(self: Pin<&mut Self>) {
        let mut reg = REGISTRY.lock();
        let me = core::ptr::from_ref(&*self) as usize;
        reg.list.retain(|p| *p != me);
    }
}

/// The live domains, for `KEEL_LIST_DOMAINS`.
struct Registry {
    next_domid: u32,
    /// Addresses of live `Domain`s; each removes itself in its drop, under this lock.
    list: KVec<usize>,
}

kernel::sync::global_lock! {
    // SAFETY: Initialized by `init` at module load, before `/dev/keel` exists.
    unsafe(uninit) static REGISTRY: Mutex<Registry> = Registry {
        next_domid: 1,
        list: KVec::new(),
    };
}

/// The domain registry, set up at module load and emptied at unload (the static outlives the
/// module's data: its list's buffer must be freed by hand).
pub(crate) struct Registration;

impl Registration {
    /// Sets the registry up.
    pub(crate) fn new() -> Self {
        // SAFETY: Called once per module load, before any user of REGISTRY.
        unsafe { REGISTRY.init() };
        Self
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // No domain is left: each fd holds a module reference, so unload waits for the last.
        let old = core::mem::take(&mut REGISTRY.lock().list);
        drop(old);
    }
}

/// A vCPU.
#[pin_data]
pub(crate) struct Vcpu {
    domain: Arc<Domain>,
    id: u32,
    #[pin]
    state: Mutex<KBox<VcpuState>>,
}

/// Converts `file_operations` callbacks' results.
fn to_c(r: Result<isize>) -> isize {
    match r {
        Ok(v) => v,
        Err(e) => e.to_errno() as isize,
    }
}

impl Domain {
    /// `KEEL_CREATE_DOMAIN`: makes a domain and returns its fd.
    pub(crate) fn create(caps: Caps, arg: &mut uapi::keel_domain_create) -> Result<isize> {
        if arg.flags != 0 || arg.pad != 0 || arg.domid != 0 {
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
        let slat_ok = caps.has(flags::SLAT)
            && (caps.vendor == Vendor::Svm || caps.has(flags::UNRESTRICTED_GUEST));
        if !slat_ok {
            pr_warn!("domains need EPT/NPT and (VMX) unrestricted guest\n");
            return Err(EOPNOTSUPP);
        }
        let (max_vcpus, memory_size) = (arg.max_vcpus, arg.memory_size);
        let domid = {
            let mut reg = REGISTRY.lock();
            let id = reg.next_domid;
            reg.next_domid += 1;
            id
        };
        let domain = Arc::pin_init(
            try_pin_init!(Domain {
                domid,
                name,
                max_vcpus,
                memory_size,
                caps,
                inner <- new_mutex!(DomainInner {
                    ranges: KVec::new(),
                    tables: Some(TableSet::new()?),
                    memory_used: 0,
                    vcpu_mask: 0,
                    pause_count: 0,
                    started: false,
                }),
                unpaused <- new_condvar!(),
                runners <- new_spinlock!([0; 64]),
                paused: AtomicU32::new(0),
            }? Error),
            GFP_KERNEL,
        )?;
        {
            let mut reg = REGISTRY.lock();
            reg.list
                .push(core::ptr::from_ref(&*domain) as usize, GFP_KERNEL)?;
        }
        arg.domid = domid;
        new_fd(c"keel-domain", &DOMAIN_FOPS, domain)
    }

    fn format(&self) -> Format {
        match self.caps.vendor {
            Vendor::Vmx => Format::Ept,
            Vendor::Svm => Format::Npt,
        }
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
                let chunk = big
                    .then(|| Chunk::alloc(9))
                    .flatten()
                    .or_else(|| Chunk::alloc(0))
                    .ok_or(ENOMEM)?;
                at += chunk.pages * PAGE;
                mem.chunks.push(chunk, GFP_KERNEL)?;
            }
        }
        // Rebuild the tables with the new range: on failure the old ones stay as they were.
        inner.ranges.push(mem, GFP_KERNEL)?;
        match self.build_tables(&inner.ranges) {
            Ok(t) => {
                inner.tables = Some(t);
                if memory {
                    inner.memory_used += r.size;
                }
                Ok(0)
            }
            Err(e) => {
                inner.ranges.pop();
                Err(e)
            }
        }
    }

    /// Builds second-level tables for `ranges`.
    fn build_tables(&self, ranges: &[RangeMem]) -> Result<TableSet> {
        let mut t = TableSet::new()?;
        let (fmt, large) = (self.format(), self.large_pages());
        let root = t.root;
        for m in ranges {
            let perms = match m.range.kind {
                RangeKind::Ram => Perms::RWX,
                RangeKind::Rom => Perms::RX,
                _ => continue,
            };
            let mut gpa = m.range.gpa;
            for c in m.chunks.iter() {
                let size = c.pages * PAGE;
                slat::map(&mut t, fmt, root, gpa, c.pa(), size, perms, large).map_err(|e| {
                    if matches!(e, slat::SlatError::OutOfMemory) {
                        ENOMEM
                    } else {
                        EINVAL
                    }
                })?;
                gpa += size;
            }
        }
        Ok(t)
    }

    /// Fixes the map at the first run and returns root mode's view of it.
    fn start(&self) -> Result<DomainView> {
        let mut inner = self.inner.lock();
        inner.started = true;
        let mut ranges = [Range::default(); MAX_RANGES];
        for (d, m) in ranges.iter_mut().zip(inner.ranges.iter()) {
            *d = m.range;
        }
        // A guest may enable what both the CPU and Dom0 have enabled: root mode saves and
        // restores its FPU state under Dom0's XCR0.
        let xcr0 = if x86::read_cr4() & x86::CR4_OSXSAVE != 0 {
            let r = x86::cpuid(0xd, 0);
            ((u64::from(r[3]) << 32) | u64::from(r[0])) & x86::xgetbv0()
        } else {
            0
        };
        Ok(DomainView {
            slat_root: inner.tables.as_ref().ok_or(EINVAL)?.root,
            format: self.format(),
            ranges,
            page_offset_base: page_offset(),
            xcr0_supported: xcr0,
            identity: crate::keel_core::cpuid::Identity {
                version: crate::VERSION,
                abi_version: uapi::KEEL_ABI_VERSION,
            },
        })
    }

    /// `KEEL_DOMAIN_CREATE_VCPU`.
    fn create_vcpu(self: &Arc<Self>, arg: &uapi::keel_vcpu_create) -> Result<isize> {
        if arg.flags != 0 || arg.id >= self.max_vcpus {
            return Err(EINVAL);
        }
        let xsave_size = if x86::read_cr4() & x86::CR4_OSXSAVE != 0 {
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
        new_fd(c"keel-vcpu", &VCPU_FOPS, vcpu)
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
            ..Default::default()
        };
        for (d, s) in info.name.iter_mut().zip(self.name) {
            *d = s as core::ffi::c_char;
        }
        info
    }

    /// mmap of the domain fd: the pages of one RAM/ROM range, before the first run.
    fn mmap(&self, vma: *mut bindings::vm_area_struct) -> Result<isize> {
        // SAFETY: The mmap callback gets a valid VMA that it may set up.
        let vma_new = unsafe { kernel::mm::virt::VmaNew::from_raw(vma) };
        // SAFETY: As above.
        let pgoff = unsafe { (*vma).vm_pgoff };
        let (start, end) = (vma_new.start(), vma_new.end());
        let len = (end - start) as u64;
        let gpa = (pgoff as u64).checked_mul(PAGE).ok_or(EINVAL)?;
        let inner = self.inner.lock();
        if inner.started {
            return Err(EBUSY);
        }
        let m = inner
            .ranges
            .iter()
            .find(|m| {
                m.range.kind != RangeKind::Mmio
                    && gpa >= m.range.gpa
                    && gpa
                        .checked_add(len)
                        .is_some_and(|e| e <= m.range.gpa + m.range.size)
            })
            .ok_or(EINVAL)?;
        vma_new.set_dontcopy();
        vma_new.set_dontexpand();
        let mut off = 0;
        while off < len {
            let va = m.page_va(gpa + off).ok_or(EINVAL)?;
            // SAFETY: The VMA is being set up under the mmap lock; the page is an order-0 page
            // of the domain, which gets its own reference from the mapping.
            let r = unsafe { bindings::vm_insert_page(vma, start + off as usize, page_of(va)) };
            if r != 0 {
                return Err(Error::from_errno(r));
            }
            off += PAGE;
        }
        Ok(0)
    }

    fn ioctl(self: &Arc<Self>, cmd: u32, arg: usize) -> Result<isize> {
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
            _ => Err(ENOTTY),
        }
    }
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
    let mut infos = KVec::new();
    let total;
    {
        let reg = REGISTRY.lock();
        total = reg.list.len();
        for &p in reg.list.iter().take(want) {
            // SAFETY: Registered domains are alive: each removes itself from the list (under
            // this lock) before it is freed.
            let d = unsafe { &*(p as *const Domain) };
            infos.push(d.info(), GFP_KERNEL)?;
        }
    }
    for info in infos.iter() {
        out.write(info)?;
    }
    arg.count = infos.len() as u32;
    arg.total = total as u32;
    Ok(0)
}

/// Allocates a vCPU's state, at reset.
fn alloc_vcpu_state(id: u32) -> Result<KBox<VcpuState>> {
    let mut s = KBox::<VcpuState>::new_uninit(GFP_KERNEL | __GFP_ZERO)?;
    let p = s.as_mut_ptr();
    // SAFETY: The allocation is zeroed, which is a valid value for every field of
    // `VcpuState` (plain integers, arrays, `bool`s and enums whose first variant is a unit
    // variant with discriminant 0... but `Format` and the `GuestExit`/`Completion` enums have
    // no guaranteed zero representation): every field that is not plain data is written here
    // before `assume_init`.
    unsafe {
        (&raw mut (*p).arch).write(ArchState::reset());
        (&raw mut (*p).exit).write(GuestExit::None);
        (&raw mut (*p).completion).write(Completion::None);
        (&raw mut (*p).domain).write(DomainView {
            slat_root: 0,
            format: Format::Ept,
            ranges: [Range::default(); MAX_RANGES],
            page_offset_base: page_offset(),
            xcr0_supported: 1,
            identity: crate::keel_core::cpuid::Identity {
                version: crate::VERSION,
                abi_version: uapi::KEEL_ABI_VERSION,
            },
        });
        (*p).id = id;
        // One ASID for every DomU vCPU: each run flushes the TLB at entry.
        (*p).asid = 2;
        (*p).pa = p as u64 - page_offset();
        // The XSAVE area's legacy part: MXCSR's reset value (the x87 state starts in its
        // init state: XSTATE_BV is 0).
        let fpu = (*p).guest_fpu.as_mut_ptr().cast::<u8>();
        fpu.cast::<u16>().write(0x37f);
        fpu.add(24).cast::<u32>().write(0x1f80);
        Ok(s.assume_init())
    }
}

impl Vcpu {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        let size = kernel::ioctl::_IOC_SIZE(cmd);
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), size).reader_writer();
        match cmd {
            uapi::KEEL_VCPU_GET_REGS => {
                let s = self.state.lock();
                writer.write(&get_regs(&s))?;
                Ok(0)
            }
            uapi::KEEL_VCPU_SET_REGS => {
                let r: uapi::keel_regs = reader.read()?;
                let mut s = self.state.lock();
                set_regs(&mut s, &r);
                Ok(0)
            }
            uapi::KEEL_VCPU_GET_SREGS => {
                let s = self.state.lock();
                writer.write(&get_sregs(&s.arch))?;
                Ok(0)
            }
            uapi::KEEL_VCPU_SET_SREGS => {
                let r: uapi::keel_sregs = reader.read()?;
                if r.reserved.iter().any(|&x| x != 0)
                    || r.gdt.pad.iter().any(|&x| x != 0)
                    || r.idt.pad.iter().any(|&x| x != 0)
                {
                    return Err(EINVAL);
                }
                let mut s = self.state.lock();
                set_sregs(&mut s.arch, &r);
                s.arch_dirty = true;
                Ok(0)
            }
            uapi::KEEL_VCPU_RUN => {
                let mut run: uapi::keel_run = reader.read()?;
                if run.flags != 0 || run.pad != 0 {
                    return Err(EINVAL);
                }
                let r = self.run(&mut run);
                writer.write(&run)?;
                r
            }
            _ => Err(ENOTTY),
        }
    }

    /// `KEEL_VCPU_RUN`.
    fn run(&self, run: &mut uapi::keel_run) -> Result<isize> {
        let d = &self.domain;
        let mut s = self.state.lock();
        // SAFETY: Reading the union's members as plain integers: every bit pattern is valid.
        let (io, mmio, hc) = unsafe {
            let e = &run.exit.__bindgen_anon_1;
            (e.io.data, e.mmio.data, e.hypercall.ret)
        };
        s.completion_data = match s.completion {
            Completion::None => 0,
            Completion::IoIn { .. } => io,
            Completion::MmioRead(_) => mmio,
            Completion::Hypercall { .. } => hc,
        };
        if s.domain.slat_root == 0 {
            s.domain = d.start()?;
        }
        let vendor = d.caps.vendor;
        let current = Task::current_raw() as usize;
        let result = loop {
            // SAFETY: `current` is the running task.
            if unsafe { bindings::signal_pending(Task::current_raw()) } != 0 {
                break Err(EINTR);
            }
            if d.paused.load(Ordering::SeqCst) != 0 {
                let mut inner = d.inner.lock();
                let mut interrupted = false;
                while inner.pause_count != 0 && !interrupted {
                    interrupted = d.unpaused.wait_interruptible(&mut inner);
                }
                if interrupted {
                    break Err(EINTR);
                }
                continue;
            }
            d.runners.lock()[self.id as usize] = current;
            let flags = x86::irq_save();
            // A kick between the pause check and here is an IPI that is now pending: the guest
            // exits at once.
            if d.paused.load(Ordering::SeqCst) == 0 {
                let p: *mut VcpuState = &mut **s;
                // SAFETY: Interrupts are off; the state is held through `s` and its domain view
                // is filled in.
                unsafe { crate::launch::run_vcpu(vendor, p) };
            }
            x86::irq_restore(flags);
            d.runners.lock()[self.id as usize] = 0;
            if !matches!(s.exit, GuestExit::None) {
                break Ok(0);
            }
        };
        if let GuestExit::EntryFailure {
            reason,
            qualification,
        }
        | GuestExit::Unhandled {
            reason,
            qualification,
        } = s.exit
        {
            pr_warn!(
                "domain {} vCPU {}: {} {:#x} ({:#x}) at rip {:#x}\n",
                d.domid,
                self.id,
                if matches!(s.exit, GuestExit::EntryFailure { .. }) {
                    "VM entry failed:"
                } else {
                    "unhandled exit"
                },
                reason,
                qualification,
                s.exit_rip
            );
        }
        run.exit = exit_record(&s, self.id, result.is_err());
        result
    }
}

/// The uapi exit record of the last run.
fn exit_record(s: &VcpuState, id: u32, interrupted: bool) -> uapi::keel_exit {
    let mut e = uapi::keel_exit {
        vcpu: id,
        rip: s.exit_rip,
        ..Default::default()
    };
    if interrupted {
        e.reason = uapi::KEEL_EXIT_INTR;
        e.rip = s.arch.rip;
        return e;
    }
    let u = &mut e.__bindgen_anon_1;
    e.reason = match s.exit {
        GuestExit::None => uapi::KEEL_EXIT_NONE,
        GuestExit::Hlt => uapi::KEEL_EXIT_HLT,
        GuestExit::Io {
            port,
            size,
            input,
            data,
        } => {
            u.io = uapi::keel_exit_io {
                port,
                size,
                direction: if input {
                    uapi::KEEL_IO_IN
                } else {
                    uapi::KEEL_IO_OUT
                } as u8,
                pad: 0,
                data,
            };
            uapi::KEEL_EXIT_IO
        }
        GuestExit::Mmio {
            gpa,
            size,
            read,
            data,
        } => {
            u.mmio = uapi::keel_exit_mmio {
                gpa,
                size,
                direction: if read {
                    uapi::KEEL_IO_IN
                } else {
                    uapi::KEEL_IO_OUT
                } as u8,
                pad: [0; 6],
                data,
            };
            uapi::KEEL_EXIT_MMIO
        }
        GuestExit::Hypercall {
            nr,
            args,
            long_mode,
        } => {
            u.hypercall = uapi::keel_exit_hypercall {
                nr,
                args,
                ret: 0,
                longmode: long_mode.into(),
                pad: 0,
            };
            uapi::KEEL_EXIT_HYPERCALL
        }
        GuestExit::Shutdown => {
            u.shutdown = uapi::keel_exit_shutdown {
                kind: uapi::KEEL_SHUTDOWN_TRIPLE_FAULT,
                pad: 0,
            };
            uapi::KEEL_EXIT_SHUTDOWN
        }
        GuestExit::MemoryFault { gpa, access } => {
            u.fault = uapi::keel_exit_fault {
                gpa,
                access,
                pad: 0,
            };
            uapi::KEEL_EXIT_MEMORY_FAULT
        }
        GuestExit::EntryFailure {
            reason,
            qualification,
        } => {
            u.fail = uapi::keel_exit_fail {
                hw_reason: reason,
                qualification,
            };
            uapi::KEEL_EXIT_ENTRY_FAILURE
        }
        GuestExit::Unhandled {
            reason,
            qualification,
        } => {
            u.fail = uapi::keel_exit_fail {
                hw_reason: reason,
                qualification,
            };
            uapi::KEEL_EXIT_UNHANDLED
        }
    };
    e
}

/// The uapi GPR order (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp) to the hardware's.
const UAPI_TO_HW: [usize; 8] = [0, 3, 1, 2, 6, 7, 4, 5];

fn get_regs(s: &VcpuState) -> uapi::keel_regs {
    let g = &s.regs.gpr;
    let mut low = [0u64; 8];
    for (d, &hw) in low.iter_mut().zip(&UAPI_TO_HW) {
        *d = if hw == 4 { s.arch.rsp } else { g[hw] };
    }
    uapi::keel_regs {
        rax: low[0],
        rbx: low[1],
        rcx: low[2],
        rdx: low[3],
        rsi: low[4],
        rdi: low[5],
        rsp: low[6],
        rbp: low[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.arch.rip,
        rflags: s.arch.rflags,
    }
}

fn set_regs(s: &mut VcpuState, r: &uapi::keel_regs) {
    let low = [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp];
    for (&v, &hw) in low.iter().zip(&UAPI_TO_HW) {
        s.regs.gpr[hw] = v;
    }
    s.arch.rsp = r.rsp;
    let high = [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15];
    for (d, v) in s.regs.gpr.iter_mut().skip(8).zip(high) {
        *d = v;
    }
    s.arch.rip = r.rip;
    s.arch.rflags = r.rflags | 2;
    s.arch_dirty = true;
}

fn seg_to_uapi(s: &VmcbSeg) -> uapi::keel_segment {
    uapi::keel_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        attrib: s.attrib,
    }
}

fn seg_from_uapi(s: &uapi::keel_segment) -> VmcbSeg {
    VmcbSeg {
        selector: s.selector,
        attrib: s.attrib & 0xfff,
        limit: s.limit,
        base: s.base,
    }
}

fn dt_to_uapi(s: &VmcbSeg) -> uapi::keel_dtable {
    uapi::keel_dtable {
        base: s.base,
        limit: s.limit as u16,
        pad: [0; 3],
    }
}

fn dt_from_uapi(s: &uapi::keel_dtable) -> VmcbSeg {
    VmcbSeg {
        limit: s.limit.into(),
        base: s.base,
        ..VmcbSeg::default()
    }
}

fn get_sregs(a: &ArchState) -> uapi::keel_sregs {
    uapi::keel_sregs {
        cs: seg_to_uapi(&a.cs),
        ds: seg_to_uapi(&a.ds),
        es: seg_to_uapi(&a.es),
        fs: seg_to_uapi(&a.fs),
        gs: seg_to_uapi(&a.gs),
        ss: seg_to_uapi(&a.ss),
        tr: seg_to_uapi(&a.tr),
        ldt: seg_to_uapi(&a.ldt),
        gdt: dt_to_uapi(&a.gdt),
        idt: dt_to_uapi(&a.idt),
        cr0: a.cr0,
        cr2: a.cr2,
        cr3: a.cr3,
        cr4: a.cr4,
        efer: a.efer,
        reserved: [0; 4],
    }
}

fn set_sregs(a: &mut ArchState, r: &uapi::keel_sregs) {
    a.cs = seg_from_uapi(&r.cs);
    a.ds = seg_from_uapi(&r.ds);
    a.es = seg_from_uapi(&r.es);
    a.fs = seg_from_uapi(&r.fs);
    a.gs = seg_from_uapi(&r.gs);
    a.ss = seg_from_uapi(&r.ss);
    a.tr = seg_from_uapi(&r.tr);
    a.ldt = seg_from_uapi(&r.ldt);
    a.gdt = dt_from_uapi(&r.gdt);
    a.idt = dt_from_uapi(&r.idt);
    a.cr0 = r.cr0;
    a.cr2 = r.cr2;
    a.cr3 = r.cr3;
    a.cr4 = r.cr4;
    a.efer = r.efer;
}

/// A `file_operations` table, shareable.
struct Fops(bindings::file_operations);

// SAFETY: The table is immutable; its pointers are to functions and to this module.
unsafe impl Sync for Fops {}

/// Makes an anonymous-inode fd whose private data is `obj`.
fn new_fd<T>(name: &'static CStr, fops: &'static Fops, obj: Arc<T>) -> Result<isize> {
    let raw = obj.into_raw();
    let flags = (bindings::O_RDWR | bindings::O_CLOEXEC) as c_int;
    // SAFETY: The name is a static C string, the table static; the fd's file owns the
    // reference `raw` from now on (released in the table's `release`).
    let fd = unsafe {
        anon_inode_getfd(
            name.as_char_ptr().cast(),
            (&raw const fops.0).cast(),
            raw as *mut c_void,
            flags,
        )
    };
    if fd < 0 {
        // SAFETY: `raw` came from `into_raw` above and the file was not made.
        drop(unsafe { Arc::from_raw(raw) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

/// The object behind a file of ours.
///
/// # Safety
///
/// `file` is a live file made by [`new_fd`] with an `Arc<T>`.
unsafe fn object<'a, T>(file: *mut bindings::file) -> &'a T {
    // SAFETY: The caller's contract: private data is the `Arc`'s raw pointer, alive until
    // `release`, which cannot run while a callback on the file runs.
    unsafe { &*((*file).private_data as *const T) }
}

/// As [`object`], as an `Arc` borrowed for the call.
///
/// # Safety
///
/// As for [`object`].
unsafe fn object_arc<T>(file: *mut bindings::file) -> core::mem::ManuallyDrop<Arc<T>> {
    // SAFETY: As in `object`; the `ManuallyDrop` keeps the file's reference in place.
    core::mem::ManuallyDrop::new(unsafe { Arc::from_raw((*file).private_data as *const T) })
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_ioctl(file: *mut bindings::file, cmd: c_uint, arg: usize) -> isize {
    // SAFETY: Called by the VFS on a domain file.
    let d = unsafe { object_arc::<Domain>(file) };
    to_c(d.ioctl(cmd, arg))
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_mmap(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: Called by the VFS on a domain file.
    let d = unsafe { object::<Domain>(file) };
    to_c(d.mmap(vma)) as c_int
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The file's last reference is gone: take back its `Arc`.
    drop(unsafe { Arc::from_raw((*file).private_data as *const Domain) });
    0
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn vcpu_ioctl(file: *mut bindings::file, cmd: c_uint, arg: usize) -> isize {
    // SAFETY: Called by the VFS on a vCPU file.
    let v = unsafe { object::<Vcpu>(file) };
    to_c(v.ioctl(cmd, arg))
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn vcpu_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The file's last reference is gone.
    let v = unsafe { Arc::from_raw((*file).private_data as *const Vcpu) };
    v.domain.inner.lock().vcpu_mask &= !(1u64 << v.id);
    drop(v);
    0
}

/// Builds a `file_operations` table.
const fn fops(
    ioctl: unsafe extern "C" fn(*mut bindings::file, c_uint, usize) -> isize,
    mmap: Option<unsafe extern "C" fn(*mut bindings::file, *mut bindings::vm_area_struct) -> c_int>,
    release: unsafe extern "C" fn(*mut bindings::inode, *mut bindings::file) -> c_int,
) -> Fops {
    Fops(bindings::file_operations {
        owner: kernel::module::this_module::<crate::Keel>().as_ptr(),
        unlocked_ioctl: Some(ioctl),
        compat_ioctl: bindings::compat_ptr_ioctl,
        mmap,
        release: Some(release),
        llseek: Some(bindings::noop_llseek),
        ..pin_init::zeroed()
    })
}

static DOMAIN_FOPS: Fops = fops(domain_ioctl, Some(domain_mmap), domain_release);
static VCPU_FOPS: Fops = fops(vcpu_ioctl, None, vcpu_release);
