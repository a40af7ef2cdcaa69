// SPDX-License-Identifier: GPL-2.0
//! Xen PVH domains, the Linux side: what the run loop does for a domain created with
//! `KEEL_CREATE_DOMAIN_XEN` between two entries of one of its vCPUs.
//!
//! Root mode answers the cheap exits itself (CPUID, `xen_version`, port I/O and holes as
//! all-ones) and hands the rest to the vCPU's thread in the kernel (`module/domain/run.rs`),
//! which calls [`Xen::handle_exit`]: the other hypercalls (`hypercall.rs`), the local APIC's
//! MMIO page, HLT. Before each entry, [`Xen::prepare`] starts a vCPU that INIT/SIPI woke, fires
//! its timer and picks the interrupt root mode injects: the Xen callback vector while the
//! vCPU's `evtchn_upcall_pending` is set, else the local APIC's highest pending vector.
//!
//! Time is one timebase (`keel_core::xen::time::Timebase`): system time is the TSC since the
//! domain was made, scaled to nanoseconds; pvclock records, the wallclock and the one-shot
//! timers' absolute deadlines all use it. A vCPU that blocks (HLT, `SCHEDOP_block`/`poll`)
//! sleeps on its wait queue until an event, its deadline or a signal; while it runs, an
//! hrtimer pinned to its CPU makes the guest exit at the deadline.
//!
//! The domain-wide state is behind one spinlock (never taken in interrupt context): the event
//! channel table, shared_info's place, the HVM params, the local APICs.

mod grant;
pub(crate) use grant::Use;
mod guest;
mod hypercall;
mod sync;

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use kernel::{
    bindings,
    prelude::*,
    sync::{new_spinlock, SpinLock},
};

use crate::keel_core::{
    arch::msr,
    lapic::{self, Lapic},
    xen::{
        abi::{runstate, Errno, SharedInfoLayout, VcpuRunstateInfo, Width},
        evtchn::{self, Map, Port, Raised, SendTarget, Table, Words},
        time::{self as xtime, Timebase, Wallclock},
    },
};
use crate::root::domain::DomainShared;
use crate::root::exit::UserExit;
use crate::root::vcpu::{ArchState, Completion, VcpuState, IRQ_VALID};
use crate::root::x86;
use crate::uapi;
pub(crate) use sync::VcpuSync;

/// Xen's hypercall numbers are below this (`NR_hypercalls`).
const XEN_HYPERCALLS: u64 = 64;
/// Ports Dom0 may connect to one DomU.
const MAX_DOM0_PORTS: usize = 32;
/// Grant table frames a DomU may have (`GNTTABOP_query_size`'s max_nr_frames).
pub(crate) const GNTTAB_FRAMES: usize = 16;
/// The highest port (2-level, 64-bit shared_info).
const MAX_PORT: Port = 4095;
/// HVM params the toolstack sets, in `Inner::params` order.
const PARAMS: [u32; 4] = [
    uapi::KEEL_XEN_PARAM_STORE_PFN,
    uapi::KEEL_XEN_PARAM_STORE_EVTCHN,
    uapi::KEEL_XEN_PARAM_CONSOLE_PFN,
    uapi::KEEL_XEN_PARAM_CONSOLE_EVTCHN,
];

/// A port connected to Dom0, and the eventfd its notifications signal.
#[derive(Clone, Copy)]
pub(crate) struct Dom0Port {
    port: Port,
    /// `struct eventfd_ctx *` (a reference held), 0 for a free slot.
    ctx: usize,
}

impl Dom0Port {
    /// Drops the eventfd reference and frees the slot.
    pub(crate) fn release(&mut self) {
        if self.ctx != 0 {
            // SAFETY: A used slot holds a reference from `eventfd_ctx_fdget`, dropped once here.
            unsafe { bindings::eventfd_ctx_put(self.ctx as *mut bindings::eventfd_ctx) };
        }
        *self = Dom0Port { port: 0, ctx: 0 };
    }
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Default)]
pub(crate) struct E820 {
    pub(crate) addr: u64,
    pub(crate) size: u64,
    pub(crate) kind: u32,
}

/// A vCPU's runstate (Xen's `vcpu_runstate_info`): its state since when, and the time spent
/// in each state, kept from the vCPU's first run and written to the guest's area, if it
/// registered one, at each change.
#[derive(Clone, Copy, Default)]
pub(crate) struct Runstate {
    /// The area's guest-virtual address, 0 for none.
    pub(crate) gva: u64,
    state: i32,
    entry: u64,
    time: [u64; 4],
}

impl Runstate {
    /// The `vcpu_runstate_info` in the layout of `w` (state, state_entry_time with `flag`,
    /// time[4]), and its size.
    fn bytes(&self, w: Width, flag: u64) -> ([u8; 48], usize) {
        let info = VcpuRunstateInfo {
            state: self.state,
            state_entry_time: self.entry | flag,
            time: self.time,
        };
        let mut b = [0u8; 48];
        let n = info.encode(w, &mut b).unwrap_or(0);
        (b, n)
    }
}

/// One vCPU's Xen state.
struct VcpuXen {
    lapic: Lapic,
    /// The registered vcpu_info's guest-physical address (else shared_info's slot).
    vcpu_info: Option<u64>,
    /// The runstate: where the guest reads it and the times kept.
    runstate: Runstate,
    /// The one-shot timer's deadline (system time, ns).
    deadline: Option<u64>,
    /// The periodic timer's period (ns; 0 = stopped) and its next expiry.
    period: u64,
    next_tick: u64,
    /// The interrupt the last prepare picked came from the local APIC.
    irq_from_lapic: bool,
    /// Down: halted with interrupts off (only INIT brings it back).
    down: bool,
    /// The vCPU's own upcall vector (`HVMOP_set_evtchn_upcall_vector`), 0 for none: its
    /// upcalls go through its local APIC (an edge interrupt the guest EOIs), not the callback.
    upcall_vector: u8,
}

impl VcpuXen {
    /// The next expiry of any of its timers (the one-shot, the periodic, the local APIC's), in
    /// system time.
    fn next_timer(&self, timebase: &Timebase) -> Option<u64> {
        let tick = (self.period != 0).then_some(self.next_tick);
        let apic = self
            .lapic
            .next_deadline()
            .map(|tsc| timebase.system_time(tsc));
        [self.deadline, tick, apic].into_iter().flatten().min()
    }
}

/// What the lock protects.
struct Inner {
    evtchn: KBox<Table>,
    /// shared_info's guest-physical address.
    shared_info: Option<u64>,
    params: [u64; PARAMS.len()],
    /// The callback vector (`HVM_PARAM_CALLBACK_IRQ` of type vector), 0 for none.
    callback: u8,
    dom0: [Dom0Port; MAX_DOM0_PORTS],
    /// Guest-physical address of each grant-table frame the guest placed.
    gnttab: [Option<u64>; GNTTAB_FRAMES],
    /// Dom0's uses of the DomU's grants, per reference.
    grants: KVVec<crate::keel_core::xen::grant::Active>,
    vcpus: KVec<VcpuXen>,
    /// The memory map the toolstack set (`KEEL_DOMAIN_SET_MEMORY_MAP`): e820 entries.
    memmap: [E820; uapi::KEEL_MAX_E820 as usize],
    memmap_len: usize,
    /// VMASST_TYPE_runstate_update_flag: runstate writes mark state_entry_time's top bit.
    pub(crate) runstate_flag: bool,
    /// console_io's rate limit: the second (system time) and the lines logged in it.
    console_second: u64,
    console_lines: u32,
}

/// The guest-physical memory changes of `XENMEM_decrease_reservation` and
/// `XENMEM_populate_physmap`, which the domain's memory does (the `Domain` implements it).
pub(crate) trait Balloon {
    /// Gives the RAM pages at `gfns` back to Dom0, in order, for vCPU `me`'s hypercall; stops
    /// at the first it cannot (not RAM of the domain, already given back, in use by Dom0
    /// through a grant). Returns how many it gave back.
    fn release(&self, me: u32, gfns: &[u64]) -> usize;
    /// Backs the RAM gfns at `gfns`, given back before, with new zeroed pages, in order;
    /// stops at the first it cannot (not a given-back RAM gfn, the domain at its maximum,
    /// no memory). Returns how many it backed.
    fn populate(&self, gfns: &[u64]) -> usize;
}

/// A Xen domain's state beside its `Domain`.
#[pin_data(PinnedDrop)]
pub(crate) struct Xen {
    domid: u16,
    /// The generation of the domain's second-level tables: bumped after a change that
    /// removes a translation (see [`Xen::quiesce`]).
    slat_gen: AtomicU64,
    /// Per vCPU: its `evtchn_upcall_pending` went from 0 to 1 since its last entry (or its
    /// upcall vector was set), so a vCPU with its own upcall vector gets that vector once in
    /// its APIC's IRR, as Xen asserts it at each new upcall.
    upcall_edges: AtomicU64,
    /// Whether a domain id names a live domain (the registry; takes a mutex).
    exists: fn(u16) -> bool,
    nr_vcpus: u32,
    timebase: Timebase,
    wallclock: Wallclock,
    #[pin]
    inner: SpinLock<Inner>,
    sync: KVec<Pin<KBox<VcpuSync>>>,
}

#[pinned_drop]
impl PinnedDrop for Xen {
    fn drop(self: Pin<&mut Self>) {
        let mut inner = self.inner.lock();
        inner.dom0.iter_mut().for_each(Dom0Port::release);
    }
}

/// What the run loop does after [`Xen::handle_exit`].
pub(crate) enum Handled {
    /// Enter the guest again.
    Resume,
    /// The run ends with the exit for userspace.
    ToUser,
}

/// The guest's event bitmaps in its memory: shared_info and the vCPUs' vcpu_info, in the
/// layout of the domain's latched width.
struct GuestWords<'a> {
    dom: &'a DomainShared,
    shared_info: u64,
    vcpus: &'a [VcpuXen],
    width: Width,
}

/// One word of an event bitmap in guest memory (`xen_ulong_t`: 32 or 64 bits) and the mask of
/// a bit in it.
enum Word<'a> {
    W32(&'a AtomicU32, u32),
    W64(&'a AtomicU64, u64),
}

impl Word<'_> {
    fn test(&self) -> bool {
        match *self {
            Word::W32(w, m) => w.load(Ordering::SeqCst) & m != 0,
            Word::W64(w, m) => w.load(Ordering::SeqCst) & m != 0,
        }
    }

    /// Sets the bit; whether it was set.
    fn set(&self) -> bool {
        match *self {
            Word::W32(w, m) => w.fetch_or(m, Ordering::SeqCst) & m != 0,
            Word::W64(w, m) => w.fetch_or(m, Ordering::SeqCst) & m != 0,
        }
    }

    /// Clears the bit; whether it was set.
    fn clear(&self) -> bool {
        match *self {
            Word::W32(w, m) => w.fetch_and(!m, Ordering::SeqCst) & m != 0,
            Word::W64(w, m) => w.fetch_and(!m, Ordering::SeqCst) & m != 0,
        }
    }
}

impl<'a> GuestWords<'a> {
    fn new(dom: &'a DomainShared, shared_info: u64, vcpus: &'a [VcpuXen], width: Width) -> Self {
        GuestWords {
            dom,
            shared_info,
            vcpus,
            width,
        }
    }

    fn layout(&self) -> SharedInfoLayout {
        SharedInfoLayout::of(self.width)
    }

    /// The guest-physical address of vCPU `v`'s vcpu_info.
    fn vcpu_info(&self, v: u32) -> Option<u64> {
        match self.vcpus.get(v as usize)?.vcpu_info {
            Some(gpa) => Some(gpa),
            None if (v as usize) < 32 => {
                Some(self.shared_info + self.layout().vcpu_info(v as usize) as u64)
            }
            None => None,
        }
    }

    /// The word holding `bit` of `map`.
    fn word(&self, map: Map, bit: u32) -> Option<Word<'a>> {
        let l = self.layout();
        let base = match map {
            Map::Pending => self.shared_info + l.evtchn_pending as u64,
            Map::Mask => self.shared_info + l.evtchn_mask as u64,
            Map::PendingSel(v) => self.vcpu_info(v)? + l.pending_sel as u64,
            Map::UpcallPending(_) => return None,
        };
        let bits = self.width.word_bits();
        let p = self
            .dom
            .ram_ptr(base + u64::from(bit / bits) * u64::from(bits / 8))?;
        let bit = bit % bits;
        // SAFETY: `ram_ptr` gives a pointer into a RAM page of the domain, valid while the
        // domain lives, aligned to the word's size (the bitmaps are at offsets of their word
        // size in structures aligned to it: shared_info is a page, a registered vcpu_info is
        // 8-byte aligned); the guest changes the word with atomic instructions too.
        Some(unsafe {
            match self.width {
                Width::Bits32 => Word::W32(AtomicU32::from_ptr(p.cast()), 1 << bit),
                Width::Bits64 => Word::W64(AtomicU64::from_ptr(p.cast()), 1 << bit),
            }
        })
    }

    /// The guest-physical address of vCPU `v`'s `evtchn_upcall_pending` byte.
    fn upcall_gpa(&self, v: u32) -> Option<u64> {
        Some(self.vcpu_info(v)? + self.layout().upcall_pending as u64)
    }

    /// vCPU `v`'s `evtchn_upcall_pending` byte.
    fn upcall(&self, v: u32) -> Option<&AtomicU8> {
        let p = self.dom.ram_ptr(self.upcall_gpa(v)?)?;
        // SAFETY: As in `word`; a byte needs no alignment.
        Some(unsafe { AtomicU8::from_ptr(p) })
    }
}

impl Words for GuestWords<'_> {
    fn test(&self, map: Map, bit: u32) -> bool {
        if let Map::UpcallPending(v) = map {
            return self
                .upcall(v)
                .is_some_and(|b| b.load(Ordering::SeqCst) != 0);
        }
        self.word(map, bit).is_some_and(|w| w.test())
    }

    fn test_and_set(&self, map: Map, bit: u32) -> bool {
        if let Map::UpcallPending(v) = map {
            return self
                .upcall(v)
                .is_none_or(|b| b.swap(1, Ordering::SeqCst) != 0);
        }
        // A missing word reads as set: nothing further happens for it.
        self.word(map, bit).is_none_or(|w| w.set())
    }

    fn test_and_clear(&self, map: Map, bit: u32) -> bool {
        if let Map::UpcallPending(v) = map {
            return self
                .upcall(v)
                .is_some_and(|b| b.swap(0, Ordering::SeqCst) != 0);
        }
        self.word(map, bit).is_some_and(|w| w.clear())
    }
}

/// A mask of vCPUs to wake (bit = vCPU id).
#[derive(Clone, Copy, Default)]
pub(crate) struct WakeSet(pub(crate) u64);

impl WakeSet {
    fn add(&mut self, v: u32) {
        if v < 64 {
            self.0 |= 1 << v;
        }
    }
}

impl Xen {
    /// The Xen state of a new domain with `nr_vcpus` vCPUs.
    pub(crate) fn new(
        domid: u16,
        nr_vcpus: u32,
        exists: fn(u16) -> bool,
    ) -> Result<Pin<KBox<Self>>> {
        // SAFETY: Set at boot (the TSC's calibrated rate), read only.
        let tsc_khz = u64::from(unsafe { bindings::tsc_khz });
        let tsc0 = x86::rdtsc();
        let timebase = Timebase::new(tsc_khz * 1000, tsc0).ok_or(EINVAL)?;
        let mut ts = bindings::timespec64::default();
        // SAFETY: Fills the timespec.
        unsafe { bindings::ktime_get_real_ts64(&mut ts) };
        let real = (ts.tv_sec as u64) * xtime::NS_PER_SEC + ts.tv_nsec as u64;
        let wallclock = Wallclock::at_system_time_zero(real, timebase.system_time(x86::rdtsc()));
        let table = KBox::<Table>::new_uninit(GFP_KERNEL | __GFP_ZERO)?;
        // SAFETY: Every field of `Table` is an integer: all-zero is a valid value (its docs).
        let mut table = unsafe { table.assume_init() };
        table.init(domid, nr_vcpus, MAX_PORT);
        let mut vcpus = KVec::with_capacity(nr_vcpus as usize, GFP_KERNEL)?;
        let mut sync = KVec::with_capacity(nr_vcpus as usize, GFP_KERNEL)?;
        for id in 0..nr_vcpus {
            let mut lapic = Lapic::new(lapic::Config {
                apic_id: id,
                bsp: id == 0,
                x2apic: true,
                tsc_deadline: false,
                tsc_per_bus_cycle: 1,
            });
            // Application processors wait for INIT and SIPI (Xen's PVH: only vCPU 0 runs).
            lapic.set_waiting_for_sipi(id != 0);
            vcpus.push(
                VcpuXen {
                    lapic,
                    vcpu_info: None,
                    runstate: Runstate::default(),
                    deadline: None,
                    period: 0,
                    next_tick: 0,
                    irq_from_lapic: false,
                    down: false,
                    upcall_vector: 0,
                },
                GFP_KERNEL,
            )?;
            sync.push(VcpuSync::new()?, GFP_KERNEL)?;
        }
        let grants = grant::new_table()?;
        KBox::pin_init(
            try_pin_init!(Xen {
                domid,
                slat_gen: AtomicU64::new(0),
                upcall_edges: AtomicU64::new(0),
                exists,
                nr_vcpus,
                timebase,
                wallclock,
                inner <- new_spinlock!(Inner {
                    evtchn: table,
                    shared_info: None,
                    params: [0; PARAMS.len()],
                    callback: 0,
                    dom0: [Dom0Port { port: 0, ctx: 0 }; MAX_DOM0_PORTS],
                    gnttab: [None; GNTTAB_FRAMES],
                    grants,
                    vcpus,
                    memmap: [E820::default(); uapi::KEEL_MAX_E820 as usize],
                    memmap_len: 0,
                    runstate_flag: false,
                    console_second: 0,
                    console_lines: 0,
                }),
                sync,
            }? Error),
            GFP_KERNEL,
        )
    }

    /// The second-level tables' generation now.
    pub(crate) fn slat_gen(&self) -> u64 {
        self.slat_gen.load(Ordering::SeqCst)
    }

    /// After a change of the second-level tables that removed translations: a new
    /// generation, and the wait until every vCPU's thread but `me` holds no translation older
    /// than it (each run starts by flushing the CPU's cached translations: a vCPU in the guest
    /// is kicked out by `kick`; a sleeping one holds none). Returns false when `me`'s thread
    /// got a signal first: what was unmapped must then not be freed yet. Takes no lock.
    pub(crate) fn quiesce(&self, me: u32, kick: impl Fn()) -> bool {
        let gen = self.slat_gen.fetch_add(1, Ordering::SeqCst) + 1;
        // Others waiting for us meanwhile need not wait: we use no translation while here.
        let held = self.sync(me).let_go();
        let mut done = false;
        loop {
            if self
                .sync
                .iter()
                .enumerate()
                .all(|(v, s)| v as u32 == me || s.held() >= gen)
            {
                done = true;
                break;
            }
            // SAFETY: `current` is the running task.
            if unsafe { bindings::signal_pending(kernel::task::Task::current_raw()) } != 0 {
                break;
            }
            kick();
            // SAFETY: Sleeps a jiffy; the thread is in process context with no lock held.
            unsafe { bindings::schedule_timeout_uninterruptible(1) };
        }
        self.sync(me).hold(held);
        done
    }

    /// Runs `unmap` (which takes frame `gfn` out of the tables) unless Dom0 uses a grant of
    /// that frame now (its page must stay): `None` then. Under the lock that grant uses and
    /// event paths take while they walk the tables, so that no such walk straddles the change.
    pub(crate) fn unmap_unless_granted<R>(&self, gfn: u64, unmap: impl FnOnce() -> R) -> Option<R> {
        let inner = self.inner.lock();
        if inner
            .grants
            .iter()
            .any(|a| a.pins != 0 && u64::from(a.frame) == gfn)
        {
            return None;
        }
        let r = unmap();
        drop(inner);
        Some(r)
    }

    /// System time now (ns since the domain was made).
    pub(crate) fn now(&self) -> u64 {
        self.timebase.system_time(x86::rdtsc())
    }

    /// Whether another console_io line may go to the kernel log now (the per-second budget).
    pub(crate) fn console_line_allowed(&self) -> bool {
        let second = self.now() / xtime::NS_PER_SEC;
        let mut inner = self.inner.lock();
        if inner.console_second != second {
            inner.console_second = second;
            inner.console_lines = 0;
        }
        inner.console_lines += 1;
        inner.console_lines <= hypercall::CONSOLE_LINES_PER_SEC
    }

    /// `KEEL_DOMAIN_SET_MEMORY_MAP`: the entries, checked.
    pub(crate) fn set_memory_map(&self, entries: &[E820]) -> Result {
        if entries.is_empty() || entries.len() > uapi::KEEL_MAX_E820 as usize {
            return Err(EINVAL);
        }
        if entries.iter().any(|e| {
            e.size == 0 || e.addr.checked_add(e.size).is_none() || !(1..=5).contains(&e.kind)
        }) {
            return Err(EINVAL);
        }
        let mut inner = self.inner.lock();
        for (d, e) in inner.memmap.iter_mut().zip(entries) {
            *d = *e;
        }
        inner.memmap_len = entries.len();
        Ok(())
    }

    /// `KEEL_DOMAIN_SET_PARAM`.
    pub(crate) fn set_param(&self, index: u32, value: u64) -> Result {
        let i = PARAMS.iter().position(|&p| p == index).ok_or(EINVAL)?;
        self.inner.lock().params[i] = value;
        Ok(())
    }

    /// `KEEL_DOMAIN_GET_PARAM`.
    pub(crate) fn get_param(&self, index: u32) -> Result<u64> {
        let i = PARAMS.iter().position(|&p| p == index).ok_or(EINVAL)?;
        Ok(self.inner.lock().params[i])
    }

    /// `KEEL_DOMAIN_EVTCHN_BIND`: connects a DomU port to Dom0 with an eventfd (a reference
    /// the caller took, which this keeps on success).
    pub(crate) fn bind_dom0(&self, alloc: bool, port: Port, ctx: usize) -> Result<Port> {
        let mut inner = self.inner.lock();
        let slot = inner.dom0.iter().position(|p| p.ctx == 0).ok_or(ENOSPC)?;
        let port = if alloc {
            inner
                .evtchn
                .alloc_unbound(self.domid, 0)
                .map_err(|_| ENOSPC)?
        } else {
            match inner.evtchn.state(port) {
                Some(evtchn::State::Unbound { remote: 0 }) => port,
                _ => return Err(EINVAL),
            }
        };
        if inner.dom0.iter().any(|p| p.ctx != 0 && p.port == port) {
            return Err(EBUSY);
        }
        inner.dom0[slot] = Dom0Port { port, ctx };
        Ok(port)
    }

    /// `KEEL_DOMAIN_EVTCHN_UNBIND`.
    pub(crate) fn unbind_dom0(&self, port: Port) -> Result {
        let mut inner = self.inner.lock();
        let p = inner
            .dom0
            .iter_mut()
            .find(|p| p.ctx != 0 && p.port == port)
            .ok_or(EINVAL)?;
        p.release();
        Ok(())
    }

    /// `KEEL_DOMAIN_EVTCHN_NOTIFY`: Dom0 raises a port connected to it. Returns the vCPUs to
    /// wake.
    pub(crate) fn notify_from_dom0(&self, dom: &DomainShared, port: Port) -> Result<WakeSet> {
        let inner = self.inner.lock();
        if !inner.dom0.iter().any(|p| p.ctx != 0 && p.port == port) {
            return Err(EINVAL);
        }
        Ok(self.raise(&inner, dom, port))
    }

    /// Whether `port` is connected to Dom0 (a notify before the first run raises nothing:
    /// shared_info is not placed yet).
    pub(crate) fn check_dom0_port(&self, port: Port) -> Result {
        let inner = self.inner.lock();
        if inner.dom0.iter().any(|p| p.ctx != 0 && p.port == port) {
            Ok(())
        } else {
            Err(EINVAL)
        }
    }

    /// Raises `port` of this domain: pending, and the upcall of the vCPU it is bound to.
    /// Returns the vCPUs to wake (the notified one, and every one if the port became pending:
    /// a vCPU may be polling it while masked).
    fn raise(&self, inner: &Inner, dom: &DomainShared, port: Port) -> WakeSet {
        let Some(shared_info) = inner.shared_info else {
            return WakeSet::default();
        };
        let words = GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
        let r: Raised = inner.evtchn.raise(port, &words);
        if r.notify {
            self.upcall_raised(inner, port);
        }
        let mut wake = WakeSet::default();
        if r.newly_pending {
            wake.0 = u64::MAX;
        } else if r.notify {
            if let Some(v) = inner.evtchn.notify_vcpu(port) {
                wake.add(v);
            }
        }
        wake
    }

    /// The upcall of the vCPU that `port` notifies went from 0 to 1 (see `upcall_edges`).
    fn upcall_raised(&self, inner: &Inner, port: Port) {
        if let Some(v) = inner.evtchn.notify_vcpu(port).filter(|&v| v < 64) {
            self.upcall_edges.fetch_or(1 << v, Ordering::SeqCst);
        }
    }

    /// A guest's send on `port`: its own port, or Dom0's eventfd.
    fn send(&self, inner: &Inner, dom: &DomainShared, port: Port) -> Result<WakeSet, Errno> {
        if let Some(p) = inner.dom0.iter().find(|p| p.ctx != 0 && p.port == port) {
            // SAFETY: The slot holds a reference; eventfd_signal_mask may be called from any
            // context.
            unsafe { bindings::eventfd_signal_mask(p.ctx as *mut bindings::eventfd_ctx, 0) };
            return Ok(WakeSet::default());
        }
        match inner.evtchn.send(port)? {
            SendTarget::Local { port } => Ok(self.raise(inner, dom, port)),
            // No other DomU is reachable yet: interdomain ports end in Dom0 only.
            SendTarget::Remote { .. } | SendTarget::Dropped => Ok(WakeSet::default()),
        }
    }

    /// The wait queue and timer of vCPU `v`.
    pub(crate) fn sync(&self, v: u32) -> &VcpuSync {
        &self.sync[v as usize]
    }

    /// Wakes the blocked vCPUs of `set` (the caller kicks the running ones).
    pub(crate) fn wake(&self, set: WakeSet) {
        for (v, s) in self.sync.iter().enumerate() {
            if v < 64 && set.0 & (1 << v) != 0 {
                s.wake();
            }
        }
    }

    /// Whether vCPU `v` has something to do after HLT: an upcall, an APIC interrupt or event,
    /// an expired timer.
    fn has_work(&self, inner: &Inner, dom: &DomainShared, v: u32, now: u64) -> bool {
        let Some(x) = inner.vcpus.get(v as usize) else {
            return false;
        };
        if x.lapic.has_event() || x.lapic.highest_pending().is_some() {
            return true;
        }
        if x.next_timer(&self.timebase).is_some_and(|d| d <= now) {
            return true;
        }
        self.upcall_pending(inner, dom, v)
    }

    /// The guest-physical address of vCPU `v`'s `evtchn_upcall_pending` byte.
    fn upcall_gpa(&self, inner: &Inner, dom: &DomainShared, v: u32) -> Option<u64> {
        let shared_info = inner.shared_info?;
        let words = GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
        words.upcall_gpa(v)
    }

    fn upcall_pending(&self, inner: &Inner, dom: &DomainShared, v: u32) -> bool {
        let Some(shared_info) = inner.shared_info else {
            return false;
        };
        let words = GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
        words.test(Map::UpcallPending(v), 0)
    }

    /// Before an entry of vCPU `v`: a vCPU waiting for SIPI or down sleeps until INIT/SIPI
    /// (EINTR on a signal); an expired timer raises its VIRQ; the interrupt to inject is
    /// picked (`s.irq`); the timer is armed on this CPU for a deadline in the run.
    pub(crate) fn prepare(&self, v: u32, s: &mut VcpuState, dom: &DomainShared) -> Result<WakeSet> {
        let mut wake = WakeSet::default();
        loop {
            let mut inner = self.inner.lock();
            let x = &mut inner.vcpus[v as usize];
            match x.lapic.take_event() {
                Some(lapic::Event::Init) => {
                    x.down = false;
                    continue;
                }
                Some(lapic::Event::StartUp { vector }) => {
                    x.down = false;
                    drop(inner);
                    start_real_mode(s, vector);
                    continue;
                }
                Some(lapic::Event::Nmi) => {
                    // NMIs do not queue: one pending at most.
                    s.nmi = true;
                    continue;
                }
                None => {}
            }
            if x.lapic.waiting_for_sipi() || x.down {
                drop(inner);
                self.set_runstate(v, &s.arch, dom, runstate::OFFLINE);
                self.sync(v).block(
                    || {
                        let inner = self.inner.lock();
                        let x = &inner.vcpus[v as usize];
                        x.lapic.has_event()
                    },
                    None,
                    || 0,
                )?;
                continue;
            }
            let now = self.now();
            let one_shot = x.deadline.is_some_and(|d| d <= now);
            let tick = x.period != 0 && x.next_tick <= now;
            if one_shot {
                x.deadline = None;
            }
            if tick {
                // Missed periods are not made up for (Xen's periodic timer skips them too).
                let behind = (now - x.next_tick) / x.period;
                x.next_tick += (behind + 1) * x.period;
            }
            if one_shot || tick {
                if let Some(port) = inner.evtchn.virq_port(v, 0) {
                    let w = self.raise(&inner, dom, port);
                    wake.0 |= w.0 & !(1u64 << v);
                }
            }
            let x = &mut inner.vcpus[v as usize];
            x.lapic.advance_timer(x86::rdtsc());
            // A vCPU with its own upcall vector: each new upcall puts that vector in its
            // APIC's IRR once (an edge, as Xen's `hvm_assert_evtchn_irq`; Linux EOIs before it
            // clears the upcall).
            let upcall_vector = x.upcall_vector;
            let edge = self.upcall_edges.fetch_and(!(1u64 << v), Ordering::SeqCst) & (1 << v);
            if upcall_vector != 0 && edge != 0 {
                x.lapic.accept(upcall_vector, lapic::Trigger::Edge);
            }
            let callback = if upcall_vector == 0 {
                inner.callback
            } else {
                0
            };
            let lapic_irq = inner.vcpus[v as usize].lapic.highest_pending();
            let (irq, from_lapic) = if callback != 0 && self.upcall_pending(&inner, dom, v) {
                (IRQ_VALID | u16::from(callback), false)
            } else if let Some(vec) = lapic_irq {
                (IRQ_VALID | u16::from(vec), true)
            } else {
                (0, false)
            };
            // The callback is injected only while the upcall is still pending (root mode
            // checks the byte at each entry: `VcpuState::drop_stale_irq`).
            s.irq_gate = if irq != 0 && !from_lapic {
                self.upcall_gpa(&inner, dom, v).unwrap_or(0)
            } else {
                0
            };
            s.irq = irq;
            s.injected = 0;
            inner.vcpus[v as usize].irq_from_lapic = from_lapic;
            drop(inner);
            self.set_runstate(v, &s.arch, dom, runstate::RUNNING);
            return Ok(wake);
        }
    }

    /// vCPU `v` enters runstate `state` (`abi::runstate`) now; its area, if registered, is
    /// written through the vCPU's paging as it was at the end of its last run.
    pub(crate) fn set_runstate(&self, v: u32, arch: &ArchState, dom: &DomainShared, state: i32) {
        let now = self.now();
        let mut inner = self.inner.lock();
        let flag = inner.runstate_flag;
        let r = &mut inner.vcpus[v as usize].runstate;
        if r.state == state && r.entry != 0 {
            return;
        }
        if r.entry != 0 {
            r.time[(r.state & 3) as usize] += now.saturating_sub(r.entry);
        }
        r.state = state;
        r.entry = now.max(1);
        if r.gva == 0 {
            return;
        }
        let r = *r;
        // The area's layout follows the shared info's (Xen's `has_32bit_shinfo`).
        let w = inner.evtchn.width();
        drop(inner);
        let long = arch.efer & crate::keel_core::arch::efer::LMA != 0;
        let g = guest::Guest::new(dom, arch, long);
        const UPDATE: u64 = crate::keel_core::xen::abi::runstate::UPDATE;
        let entry_at = r
            .gva
            .wrapping_add(VcpuRunstateInfo::state_entry_time_offset(w) as u64);
        let (b, n) = r.bytes(w, if flag { UPDATE } else { 0 });
        // With the flag, the protocol a guest reading the area expects (Xen's): the flag set
        // in the entry time's top byte alone, then the rest, then the flag cleared in that byte
        // alone; a one-byte store is never torn, so a guest sees the flag or a whole update.
        let top = entry_at.wrapping_add(7);
        let flagged = ((r.entry | UPDATE) >> 56) as u8;
        let unflagged = (r.entry >> 56) as u8;
        // The usual case: the area is in one page, found by one walk of the guest's tables.
        if let Some(p) = g.writable_ptr(r.gva, n) {
            let top = top.wrapping_sub(r.gva) as usize;
            let put = |off: usize, bytes: &[u8]| {
                for (i, &x) in bytes.iter().enumerate() {
                    // SAFETY: `p` is the area's `n` bytes in one page of the domain's RAM
                    // (direct map) and `off + i` is below `n` (the entry time's top byte
                    // lies within the area); the page stays the domain's while this vCPU
                    // thread is between runs (the balloon frees a page only after
                    // `Xen::quiesce`); the guest may read the bytes meanwhile, as on Xen.
                    unsafe { p.add(off + i).write_volatile(x) };
                }
            };
            if flag {
                put(top, &[flagged]);
                core::sync::atomic::fence(Ordering::SeqCst);
                put(0, &b[..n]);
                core::sync::atomic::fence(Ordering::SeqCst);
                put(top, &[unflagged]);
            } else {
                put(0, &b[..n]);
            }
            return;
        }
        if flag {
            let _ = g.write(top, &[flagged]);
            core::sync::atomic::fence(Ordering::SeqCst);
            let _ = g.write(r.gva, &b[..n]);
            core::sync::atomic::fence(Ordering::SeqCst);
            let _ = g.write(top, &[unflagged]);
        } else {
            let _ = g.write(r.gva, &b[..n]);
        }
    }

    /// `HVMOP_set_evtchn_upcall_vector`: vCPU `v`'s upcalls go to `vector` through its local
    /// APIC from now on (a pending one too, at its next entry).
    pub(crate) fn set_upcall_vector(&self, v: u32, vector: u8) -> Result<(), Errno> {
        // Xen checks the vector first, then the vCPU.
        if vector < 0x10 {
            return Err(Errno::EINVAL);
        }
        let mut inner = self.inner.lock();
        let x = inner.vcpus.get_mut(v as usize).ok_or(Errno::ENOENT)?;
        x.upcall_vector = vector;
        // Asserted once now, as Xen does, so that an upcall already pending is seen.
        self.upcall_edges.fetch_or(1 << v, Ordering::SeqCst);
        Ok(())
    }

    /// The deadline of vCPU `v`'s timer as a relative time from now, for the run's hrtimer.
    pub(crate) fn deadline_in(&self, v: u32) -> Option<u64> {
        let d = self.inner.lock().vcpus[v as usize].next_timer(&self.timebase)?;
        Some(d.saturating_sub(self.now()))
    }

    /// After a run: the local APIC takes the interrupt root mode injected into service.
    pub(crate) fn after_run(&self, v: u32, s: &mut VcpuState, dom: &DomainShared) {
        self.set_runstate(v, &s.arch, dom, runstate::RUNNABLE);
        if s.injected & IRQ_VALID == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        let x = &mut inner.vcpus[v as usize];
        if x.irq_from_lapic {
            let _ = x.lapic.ack((s.injected & 0xff) as u8);
        }
        s.injected = 0;
    }

    /// Serves an exit of vCPU `v` that root mode left to the run loop. Returns what the run
    /// loop does next, and the vCPUs to wake; EINTR when a signal interrupted a sleep.
    pub(crate) fn handle_exit(
        &self,
        mem: &dyn Balloon,
        v: u32,
        s: &mut VcpuState,
        dom: &DomainShared,
    ) -> Result<(Handled, WakeSet)> {
        match s.exit {
            // Numbers past Xen's table are the toolstack's (Xen answers them -ENOSYS; tests use
            // them to report).
            UserExit::Hypercall { nr, .. } if nr >= XEN_HYPERCALLS => {
                Ok((Handled::ToUser, WakeSet::default()))
            }
            UserExit::Hypercall {
                nr,
                args,
                long_mode,
            } => {
                let (ret, wake) = hypercall::dispatch(self, mem, v, s, dom, (nr, args, long_mode))?;
                s.completion_data = ret;
                Ok((Handled::Resume, wake))
            }
            UserExit::Hlt => {
                if s.arch.rflags & crate::keel_core::arch::rflags::IF == 0 {
                    return Ok(self.vcpu_down(v, s));
                }
                // An NMI root mode could not inject yet (an interrupt shadow, another event)
                // ends the HLT at once.
                if !s.nmi {
                    self.block(v, &s.arch, dom)?;
                }
                Ok((Handled::Resume, WakeSet::default()))
            }
            UserExit::Mmio {
                gpa,
                size,
                read,
                data,
            } if gpa & !0xfff == lapic::DEFAULT_BASE => {
                let wake = self.lapic_mmio(v, s, gpa & 0xfff, size, read, data);
                Ok((Handled::Resume, wake))
            }
            UserExit::Msr {
                index: crate::keel_core::xen::cpuid::HYPERCALL_PAGE_MSR,
                ..
            } => {
                let long = s.arch.efer & crate::keel_core::arch::efer::LMA != 0
                    && s.arch.cs.attrib & crate::keel_core::arch::seg_attrib::L != 0;
                self.latch_width(dom, if long { Width::Bits64 } else { Width::Bits32 });
                Ok((Handled::Resume, WakeSet::default()))
            }
            UserExit::Msr {
                index,
                write,
                value,
            } => Ok((Handled::Resume, self.lapic_msr(v, s, index, write, value))),
            _ => Ok((Handled::ToUser, WakeSet::default())),
        }
    }

    /// HLT with interrupts off: the vCPU is down (Xen's `hvm_vcpu_down`); when every vCPU is,
    /// the domain powers off.
    fn vcpu_down(&self, v: u32, s: &mut VcpuState) -> (Handled, WakeSet) {
        let mut inner = self.inner.lock();
        inner.vcpus[v as usize].down = true;
        if inner
            .vcpus
            .iter()
            .all(|x| x.down || x.lapic.waiting_for_sipi())
        {
            s.exit = UserExit::Shutdown {
                xen_reason: Some(crate::keel_core::xen::abi::shutdown::POWEROFF),
            };
            return (Handled::ToUser, WakeSet::default());
        }
        (Handled::Resume, WakeSet::default())
    }

    /// Sleeps until vCPU `v` has work (or, with `poll`, until one of those ports is pending)
    /// or system time `deadline`.
    fn block(&self, v: u32, arch: &ArchState, dom: &DomainShared) -> Result {
        self.block_until(v, arch, dom, None, None)
    }

    fn block_until(
        &self,
        v: u32,
        arch: &ArchState,
        dom: &DomainShared,
        poll: Option<&[Port]>,
        deadline: Option<u64>,
    ) -> Result {
        self.set_runstate(v, arch, dom, runstate::BLOCKED);
        let r = self.sleep(v, dom, poll, deadline);
        self.set_runstate(v, arch, dom, runstate::RUNNABLE);
        r
    }

    fn sleep(
        &self,
        v: u32,
        dom: &DomainShared,
        poll: Option<&[Port]>,
        deadline: Option<u64>,
    ) -> Result {
        let timer = self.inner.lock().vcpus[v as usize].next_timer(&self.timebase);
        let until = match (deadline, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.sync(v).block(
            || {
                let inner = self.inner.lock();
                let now = self.now();
                if self.has_work(&inner, dom, v, now) {
                    return true;
                }
                if let (Some(ports), Some(shared_info)) = (poll, inner.shared_info) {
                    let words =
                        GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
                    if ports
                        .iter()
                        .any(|&p| evtchn::is_pending(&words, words.width, p))
                    {
                        return true;
                    }
                }
                deadline.is_some_and(|d| d <= now)
            },
            until,
            || self.now(),
        )
    }

    /// An access to the local APIC's page.
    fn lapic_mmio(
        &self,
        v: u32,
        s: &mut VcpuState,
        offset: u64,
        size: u8,
        read: bool,
        data: u64,
    ) -> WakeSet {
        let now = x86::rdtsc();
        let mut inner = self.inner.lock();
        if read {
            let value = inner.vcpus[v as usize].lapic.mmio_read(offset, size, now);
            s.completion_data = value;
            return WakeSet::default();
        }
        let effect = inner.vcpus[v as usize]
            .lapic
            .mmio_write(offset, size, data, now);
        deliver(&mut inner.vcpus, v, effect)
    }

    /// RDMSR or WRMSR of IA32_APIC_BASE or an x2APIC register: the value read goes to
    /// `completion_data`; a refused access becomes #GP.
    fn lapic_msr(&self, v: u32, s: &mut VcpuState, index: u32, write: bool, value: u64) -> WakeSet {
        let now = x86::rdtsc();
        let mut inner = self.inner.lock();
        let apic = &mut inner.vcpus[v as usize].lapic;
        let effect = match (index, write) {
            (msr::IA32_APIC_BASE, true) => match apic.write_apic_base(value) {
                Ok(()) => lapic::Effect::Done,
                Err(lapic::Gp) => lapic::Effect::Gp,
            },
            (msr::IA32_APIC_BASE, false) => {
                s.completion_data = apic.apic_base();
                lapic::Effect::Done
            }
            (_, true) => apic.wrmsr(index, value, now),
            (_, false) => match apic.rdmsr(index, now) {
                Ok(x) => {
                    s.completion_data = x;
                    lapic::Effect::Done
                }
                Err(lapic::Gp) => lapic::Effect::Gp,
            },
        };
        if effect == lapic::Effect::Gp {
            s.completion = Completion::GeneralProtection;
        }
        deliver(&mut inner.vcpus, v, effect)
    }
}

/// What a local APIC access of vCPU `v` set off: an IPI received by its targets. Returns the
/// vCPUs to wake.
fn deliver(vcpus: &mut [VcpuXen], v: u32, effect: lapic::Effect) -> WakeSet {
    let mut wake = WakeSet::default();
    if let lapic::Effect::SendIpi(ipi) = effect {
        let mut addressing = [lapic::Addressing::default(); 64];
        let n = vcpus.len().min(64);
        for (a, x) in addressing.iter_mut().zip(vcpus.iter()) {
            *a = x.lapic.addressing();
        }
        for t in ipi.targets(v as usize, &addressing[..n]).iter() {
            if vcpus[t].lapic.receive(&ipi) {
                wake.add(t as u32);
            }
        }
    }
    wake
}

/// Puts a vCPU in real mode at a SIPI's start address (Xen's `hvm_vcpu_reset_state`: CS =
/// vector << 8, IP 0, the rest as after INIT).
fn start_real_mode(s: &mut VcpuState, vector: u8) {
    let mut a = ArchState::reset();
    a.cs.selector = u16::from(vector) << 8;
    a.cs.base = u64::from(lapic::sipi_start_address(vector));
    a.rip = 0;
    // The FPU, XCR0 and the syscall MSRs keep what they had (INIT leaves them).
    a.xcr0 = s.arch.xcr0.max(1);
    s.arch = a;
    s.regs.gpr = [0; 16];
    s.arch_dirty = true;
    s.completion = Completion::None;
    s.nmi = false;
    s.nmi_masked = false;
}
