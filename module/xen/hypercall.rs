// SPDX-License-Identifier: GPL-2.0
//! The Xen hypercalls the run loop serves (root mode answers `xen_version` and
//! `sched_op(yield|shutdown)` itself). Each checks every guest value, answers with Xen's errno,
//! and returns the vCPUs the call made runnable.

use kernel::prelude::*;

use super::{guest::Guest, Balloon, WakeSet, Xen, GNTTAB_FRAMES};
use crate::keel_core::xen::abi::{evtchnop, XenMemoryMap, E820_ENTRY_SIZE};
use crate::keel_core::xen::{
    abi::{
        domid, gnttabop, hvm_param, hvmop, hypercall as nr, schedop, vcpuop, vmasst, xenmem, Errno,
        EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVcpu, EvtchnBindVirq,
        EvtchnClose, EvtchnReset, EvtchnSend, EvtchnStatus, EvtchnUnmask, GnttabQuerySize,
        GnttabSetVersion, GnttabSetupTable, SchedPoll, SharedInfoLayout,
        VcpuRegisterRunstateMemoryArea, VcpuRegisterVcpuInfo, VcpuSetSingleshotTimer, VcpuTimeInfo,
        Width, XenAddToPhysmap, XenHvmEvtchnUpcallVector, XenHvmParam, XenMemoryReservation,
    },
    evtchn::{self, Peer, Port},
    time,
};
use crate::root::domain::{DomainShared, RangeKind};
use crate::root::vcpu::{ArchState, VcpuState};

/// `console_io` write: bytes read from the guest at a time.
const CONSOLE_CHUNK: usize = 256;
/// `console_io` write: the most bytes one call takes (Xen takes them all, in continuations).
const CONSOLE_MAX: usize = 16 * 1024;
/// `console_io` lines a domain may put in Dom0's kernel log per second; the rest are dropped.
pub(super) const CONSOLE_LINES_PER_SEC: u32 = 50;

/// The shortest period `VCPUOP_set_periodic_timer` takes (Xen's 1 ms).
const PERIOD_MIN_NS: u64 = 1_000_000;

type HResult = Result<u64, Errno>;

/// Serves hypercall `nr(args)` of vCPU `v`. Returns RAX and the vCPUs to wake; EINTR (not
/// Xen's) when a signal ends a sleep: the run returns to userspace and the call completes with
/// 0 when the vCPU runs again, as a wakeup would.
pub(super) fn dispatch(
    x: &Xen,
    mem: &dyn Balloon,
    v: u32,
    s: &mut VcpuState,
    dom: &DomainShared,
    (call, args, long_mode): (u64, [u64; 5], bool),
) -> Result<(u64, WakeSet)> {
    // A vCPU outside 64-bit mode passes Xen's compat (32-bit) layouts.
    let g = Guest::new(dom, &s.arch, long_mode);
    let mut wake = WakeSet::default();
    let cmd = args[0] as u32;
    let r = match call {
        nr::MEMORY_OP => memory_op(x, mem, v, dom, &g, cmd, args[1]),
        nr::HVM_OP => hvm_op(x, dom, &g, cmd, args[1]),
        nr::VCPU_OP => vcpu_op(x, v, dom, &g, cmd, args[1], args[2]),
        nr::SET_TIMER_OP => {
            // A 32-bit caller passes the 64-bit timeout in two words: low in EBX, high in ECX.
            let timeout = if long_mode {
                args[0]
            } else {
                args[0] | (args[1] << 32)
            };
            set_timer(x, v, timeout);
            Ok(0)
        }
        nr::EVENT_CHANNEL_OP => evtchn_op(x, v, dom, &g, cmd, args[1], &mut wake),
        nr::SCHED_OP => match cmd {
            schedop::BLOCK => match x.block(v, &s.arch, dom) {
                Ok(()) => Ok(0),
                Err(e) => {
                    s.completion_data = 0;
                    return Err(e);
                }
            },
            schedop::POLL => match poll(x, v, &s.arch, dom, &g, args[1]) {
                Ok(r) => Ok(r),
                Err(PollEnd::Guest(e)) => Err(e),
                Err(PollEnd::Signal(e)) => {
                    s.completion_data = 0;
                    return Err(e);
                }
            },
            _ => Err(Errno::ENOSYS),
        },
        nr::GRANT_TABLE_OP => gnttab_op(x, &g, cmd, args[1], args[2]),
        nr::CONSOLE_IO => console_io(x, &g, cmd, args[1], args[2]),
        nr::VM_ASSIST => {
            if args[1] as u32 == vmasst::TYPE_RUNSTATE_UPDATE_FLAG
                && (cmd == vmasst::CMD_ENABLE || cmd == vmasst::CMD_DISABLE)
            {
                x.inner.lock().runstate_flag = cmd == vmasst::CMD_ENABLE;
                Ok(0)
            } else {
                Err(Errno::EINVAL)
            }
        }
        _ => Err(Errno::ENOSYS),
    };
    let rax = match r {
        Ok(v) => v,
        Err(e) => e.rax(),
    };
    Ok((rax, wake))
}

/// Extents read from the guest per call of the balloon (one TLB shootdown per batch).
const EXTENT_BATCH: usize = 256;

/// `memory_op`: add_to_physmap for shared_info and grant frames, the memory map,
/// decrease_reservation and populate_physmap (pages given back to Dom0 and taken again).
fn memory_op(
    x: &Xen,
    mem: &dyn Balloon,
    v: u32,
    dom: &DomainShared,
    g: &Guest<'_>,
    cmd: u32,
    arg: u64,
) -> HResult {
    match cmd {
        xenmem::ADD_TO_PHYSMAP => {
            let w = g.width();
            let b = g.get_sized::<24>(arg, XenAddToPhysmap::size(w))?;
            let a = XenAddToPhysmap::decode(w, &b).ok_or(Errno::EFAULT)?;
            if a.domid != domid::SELF && a.domid != x.domid {
                return Err(Errno::EPERM);
            }
            let gpa = a.gpfn.checked_mul(4096).ok_or(Errno::EINVAL)?;
            // The page at that gfn of the guest's RAM becomes the frame, used in place; a gfn
            // the guest gave back (Linux places its grant frames on ballooned-out pages) gets
            // a new page first.
            if dom.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
                return Err(Errno::EINVAL);
            }
            if dom.ram_ptr(gpa).is_none() && mem.populate(&[a.gpfn]) != 1 {
                return Err(Errno::ENOMEM);
            }
            match a.space {
                xenmem::MAPSPACE_SHARED_INFO if a.idx == 0 => {
                    x.map_shared_info(dom, gpa);
                    Ok(0)
                }
                xenmem::MAPSPACE_GRANT_TABLE => {
                    let i = a.idx as usize;
                    if i >= GNTTAB_FRAMES {
                        return Err(Errno::EINVAL);
                    }
                    dom.write(gpa, &[0u8; 4096]);
                    x.inner.lock().gnttab[i] = Some(gpa);
                    Ok(0)
                }
                _ => Err(Errno::EINVAL),
            }
        }
        xenmem::MEMORY_MAP => {
            let w = g.width();
            let size = XenMemoryMap::size(w);
            let mut m =
                XenMemoryMap::decode(w, &g.get_sized::<16>(arg, size)?).ok_or(Errno::EFAULT)?;
            let inner = x.inner.lock();
            if inner.memmap_len == 0 {
                return Err(Errno::ENOSYS);
            }
            let n = inner.memmap_len.min(m.nr_entries as usize);
            let entries = inner.memmap;
            drop(inner);
            for (i, e) in entries.iter().take(n).enumerate() {
                let mut b = [0u8; E820_ENTRY_SIZE];
                b[..8].copy_from_slice(&e.addr.to_le_bytes());
                b[8..16].copy_from_slice(&e.size.to_le_bytes());
                b[16..20].copy_from_slice(&e.kind.to_le_bytes());
                g.write(m.buffer.wrapping_add((i * E820_ENTRY_SIZE) as u64), &b)?;
            }
            m.nr_entries = n as u32;
            let mut out = [0u8; 16];
            m.encode(w, &mut out).ok_or(Errno::EFAULT)?;
            g.write(arg, &out[..size])?;
            Ok(0)
        }
        xenmem::POPULATE_PHYSMAP | xenmem::DECREASE_RESERVATION => {
            let w = g.width();
            let b = g.get_sized::<32>(arg, XenMemoryReservation::size(w))?;
            let r = XenMemoryReservation::decode(w, &b).ok_or(Errno::EFAULT)?;
            if r.domid != domid::SELF && r.domid != x.domid {
                return Err(Errno::EPERM);
            }
            if r.extent_order != 0 {
                return Err(Errno::EINVAL);
            }
            // Xen's answer: how many extents were done, in order; the first one that cannot
            // be done (or cannot be read) ends the call.
            let mut done = 0u64;
            let mut gfns = [0u64; EXTENT_BATCH];
            while done < r.nr_extents {
                let want = (r.nr_extents - done).min(EXTENT_BATCH as u64) as usize;
                let mut n = 0;
                while n < want {
                    let at = r
                        .extent_start
                        .wrapping_add((done + n as u64).wrapping_mul(w.word_bytes() as u64));
                    let Ok(gfn) = g.get_word(at) else {
                        break;
                    };
                    gfns[n] = gfn;
                    n += 1;
                }
                let ok = if cmd == xenmem::DECREASE_RESERVATION {
                    mem.release(v, &gfns[..n])
                } else {
                    mem.populate(&gfns[..n])
                };
                done += ok as u64;
                if ok < want {
                    break;
                }
            }
            Ok(done)
        }
        // A translated guest has no use for frames that are not in its physical map (Xen's
        // PVH and HVM guests populate at gfns instead).
        xenmem::INCREASE_RESERVATION => Err(Errno::ENOSYS),
        _ => Err(Errno::ENOSYS),
    }
}

impl Xen {
    /// The guest placed shared_info at `gpa` (a RAM page, used in place): zeroed, then the
    /// wallclock and every vCPU's pvclock record written.
    fn map_shared_info(&self, dom: &DomainShared, gpa: u64) {
        dom.write(gpa, &[0u8; 4096]);
        let mut inner = self.inner.lock();
        inner.shared_info = Some(gpa);
        self.write_clocks(dom, &inner);
    }

    /// Xen's `hvm_latch_shinfo_size`: shared_info, the vcpu_infos and the runstate areas take
    /// the layout of the mode of the vCPU that sets the callback (or installs the hypercall
    /// page), 64-bit until then; a change writes the clocks again in the new layout.
    pub(super) fn latch_width(&self, dom: &DomainShared, w: Width) {
        let mut inner = self.inner.lock();
        if inner.evtchn.width() != w {
            inner.evtchn.set_width(w);
            self.write_clocks(dom, &inner);
        }
    }

    /// The wallclock in shared_info and the pvclock record in each vCPU's vcpu_info, in the
    /// latched layout.
    fn write_clocks(&self, dom: &DomainShared, inner: &super::Inner) {
        let Some(gpa) = inner.shared_info else {
            return;
        };
        let l = SharedInfoLayout::of(inner.evtchn.width());
        let wc = self.wallclock;
        dom.write(gpa + l.wc_version as u64, &2u32.to_le_bytes());
        dom.write(gpa + l.wc_sec as u64, &wc.wc_sec().to_le_bytes());
        dom.write(gpa + l.wc_nsec as u64, &wc.wc_nsec().to_le_bytes());
        dom.write(gpa + l.wc_sec_hi as u64, &wc.wc_sec_hi().to_le_bytes());
        for (v, x) in inner.vcpus.iter().enumerate() {
            match x.vcpu_info {
                Some(at) => self.write_time(dom, at, &l),
                None if v < 32 => self.write_time(dom, gpa + l.vcpu_info(v) as u64, &l),
                None => {}
            }
        }
    }

    /// Writes the pvclock record into the vcpu_info at `vcpu_info` (the record is a fixed
    /// function of the TSC: written once, with an even version).
    fn write_time(&self, dom: &DomainShared, vcpu_info: u64, l: &SharedInfoLayout) {
        let mut rec: VcpuTimeInfo = self.timebase.record(false);
        rec.version = time::version_end(time::version_begin(0));
        dom.write(vcpu_info + l.time as u64, &rec.to_bytes());
    }
}

/// `hvm_op`: params (the DomU may set only its callback), the rest ENOSYS as for Xen's PVH
/// DomU where it has no use.
fn hvm_op(x: &Xen, dom: &DomainShared, g: &Guest<'_>, cmd: u32, arg: u64) -> HResult {
    match cmd {
        hvmop::SET_PARAM | hvmop::GET_PARAM => {
            let b = g.get::<16>(arg)?;
            let mut p = XenHvmParam::from_bytes(&b).ok_or(Errno::EFAULT)?;
            if p.domid != domid::SELF && p.domid != x.domid {
                return Err(Errno::EPERM);
            }
            if cmd == hvmop::SET_PARAM {
                if p.index != hvm_param::CALLBACK_IRQ {
                    return Err(Errno::EPERM);
                }
                let kind = (p.value & hvm_param::CALLBACK_IRQ_TYPE_MASK)
                    >> hvm_param::CALLBACK_IRQ_TYPE_SHIFT;
                let vector = (p.value & 0xff) as u8;
                let callback = match kind {
                    hvm_param::CALLBACK_TYPE_VECTOR if vector >= 0x10 => vector,
                    // Linux sets 1 (GSI 1) once per-vCPU vectors are in use: nothing to do.
                    hvm_param::CALLBACK_TYPE_GSI => 0,
                    _ => return Err(Errno::EINVAL),
                };
                x.inner.lock().callback = callback;
                x.latch_width(dom, g.width());
                return Ok(0);
            }
            p.value = match p.index {
                hvm_param::CALLBACK_IRQ => {
                    let cb = x.inner.lock().callback;
                    if cb == 0 {
                        0
                    } else {
                        (hvm_param::CALLBACK_TYPE_VECTOR << hvm_param::CALLBACK_IRQ_TYPE_SHIFT)
                            | u64::from(cb)
                    }
                }
                i => x.get_param(i).map_err(|_| Errno::EINVAL)?,
            };
            g.write(arg, &p.to_bytes())?;
            Ok(0)
        }
        hvmop::SET_EVTCHN_UPCALL_VECTOR => {
            let b = g.get::<8>(arg)?;
            let op = XenHvmEvtchnUpcallVector::from_bytes(&b).ok_or(Errno::EFAULT)?;
            x.set_upcall_vector(op.vcpu, op.vector)?;
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `vcpu_op(cmd, vcpu, arg)`.
fn vcpu_op(
    x: &Xen,
    caller: u32,
    dom: &DomainShared,
    g: &Guest<'_>,
    cmd: u32,
    target: u64,
    arg: u64,
) -> HResult {
    if target >= u64::from(x.nr_vcpus) {
        return Err(Errno::ENOENT);
    }
    let t = target as u32;
    match cmd {
        vcpuop::REGISTER_VCPU_INFO => {
            let b = g.get::<16>(arg)?;
            let r = VcpuRegisterVcpuInfo::from_bytes(&b).ok_or(Errno::EFAULT)?;
            if r.rsvd != 0 {
                return Err(Errno::EINVAL);
            }
            let layout = SharedInfoLayout::of(x.inner.lock().evtchn.width());
            let size = layout.vcpu_info_size as u32;
            if r.offset > 4096 - size || r.offset % 8 != 0 {
                return Err(Errno::EINVAL);
            }
            let gpa = r
                .mfn
                .checked_mul(4096)
                .and_then(|a| a.checked_add(u64::from(r.offset)))
                .ok_or(Errno::EINVAL)?;
            if dom.range_of(gpa).map(|r| r.kind) != Some(RangeKind::Ram) {
                return Err(Errno::EINVAL);
            }
            let mut inner = x.inner.lock();
            if inner.vcpus[t as usize].vcpu_info.is_some() {
                return Err(Errno::EINVAL);
            }
            // The new place starts with the old slot's contents (pending upcall and selector),
            // as Xen copies them.
            let mut old = [0u8; 64];
            if let Some(sh) = inner.shared_info {
                if t < 32 {
                    dom.read(sh + u64::from(t) * u64::from(size), &mut old);
                }
            }
            dom.write(gpa, &old[..16]);
            inner.vcpus[t as usize].vcpu_info = Some(gpa);
            drop(inner);
            x.write_time(dom, gpa, &layout);
            Ok(0)
        }
        vcpuop::REGISTER_RUNSTATE_MEMORY_AREA => {
            let b = g.get::<8>(arg)?;
            let r = VcpuRegisterRunstateMemoryArea::decode(g.width(), &b).ok_or(Errno::EFAULT)?;
            x.inner.lock().vcpus[t as usize].runstate.gva = r.addr;
            Ok(0)
        }
        vcpuop::SET_PERIODIC_TIMER => {
            let period = u64::from_le_bytes(g.get::<8>(arg)?);
            // Xen's bounds: at least 1 ms, at most what system time can add.
            if !(PERIOD_MIN_NS..=i64::MAX as u64).contains(&period) {
                return Err(Errno::EINVAL);
            }
            let now = x.now();
            let mut inner = x.inner.lock();
            let t = &mut inner.vcpus[t as usize];
            t.period = period;
            t.next_tick = now + period;
            Ok(0)
        }
        vcpuop::STOP_PERIODIC_TIMER => {
            x.inner.lock().vcpus[t as usize].period = 0;
            Ok(0)
        }
        vcpuop::SET_SINGLESHOT_TIMER => {
            if t != caller {
                return Err(Errno::EINVAL);
            }
            let w = g.width();
            let b = g.get_sized::<16>(arg, VcpuSetSingleshotTimer::size(w))?;
            let r = VcpuSetSingleshotTimer::decode(w, &b).ok_or(Errno::EFAULT)?;
            if r.flags & vcpuop::SSHOTTMR_FUTURE != 0 && r.timeout_abs_ns < x.now() {
                return Err(Errno::ETIME);
            }
            x.inner.lock().vcpus[t as usize].deadline = Some(r.timeout_abs_ns);
            Ok(0)
        }
        vcpuop::STOP_SINGLESHOT_TIMER => {
            if t != caller {
                return Err(Errno::EINVAL);
            }
            x.inner.lock().vcpus[t as usize].deadline = None;
            Ok(0)
        }
        vcpuop::IS_UP => {
            let inner = x.inner.lock();
            let v = &inner.vcpus[t as usize];
            Ok(u64::from(!v.lapic.waiting_for_sipi() && !v.down))
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `set_timer_op(timeout)`: the caller's one-shot timer at absolute system time `timeout`;
/// 0 stops it.
fn set_timer(x: &Xen, v: u32, timeout: u64) {
    x.inner.lock().vcpus[v as usize].deadline = (timeout != 0).then_some(timeout);
}

/// How a poll ended other than with a result.
enum PollEnd {
    Guest(Errno),
    Signal(kernel::error::Error),
}

/// `SCHEDOP_poll`: returns 0 once one of the ports is pending (masked or not), an event is
/// for the vCPU, or the timeout (absolute system time, 0 none) passes.
fn poll(
    x: &Xen,
    v: u32,
    arch: &ArchState,
    dom: &DomainShared,
    g: &Guest<'_>,
    arg: u64,
) -> Result<u64, PollEnd> {
    let w = g.width();
    let b = g
        .get_sized::<24>(arg, SchedPoll::size(w))
        .map_err(PollEnd::Guest)?;
    let p = SchedPoll::decode(w, &b).ok_or(PollEnd::Guest(Errno::EFAULT))?;
    if p.nr_ports > schedop::POLL_MAX_PORTS {
        return Err(PollEnd::Guest(Errno::EINVAL));
    }
    let mut ports = [0 as Port; schedop::POLL_MAX_PORTS as usize];
    for (i, port) in ports.iter_mut().take(p.nr_ports as usize).enumerate() {
        let e = g
            .get::<4>(p.ports.wrapping_add(4 * i as u64))
            .map_err(PollEnd::Guest)?;
        *port = u32::from_le_bytes(e);
        if *port > super::MAX_PORT {
            return Err(PollEnd::Guest(Errno::EINVAL));
        }
    }
    let deadline = (p.timeout != 0).then_some(p.timeout);
    x.block_until(v, arch, dom, Some(&ports[..p.nr_ports as usize]), deadline)
        .map_err(PollEnd::Signal)?;
    Ok(0)
}

/// `event_channel_op`.
fn evtchn_op(
    x: &Xen,
    v: u32,
    dom: &DomainShared,
    g: &Guest<'_>,
    cmd: u32,
    arg: u64,
    wake: &mut WakeSet,
) -> HResult {
    let me = x.domid;
    // Another domain: ESRCH if it does not exist, else EPERM (a DomU is not privileged), as
    // Xen's lookup then XSM check answer; asked before the lock (the registry sleeps).
    if matches!(
        cmd,
        evtchnop::ALLOC_UNBOUND | evtchnop::STATUS | evtchnop::RESET
    ) {
        let dom = u16::from_le_bytes(g.get::<2>(arg)?);
        if dom != domid::SELF && dom != me {
            return Err(if (x.exists)(dom) {
                Errno::EPERM
            } else {
                Errno::ESRCH
            });
        }
    }
    let mut inner = x.inner.lock();
    match cmd {
        evtchnop::ALLOC_UNBOUND => {
            let mut a = EvtchnAllocUnbound::from_bytes(&g.get::<8>(arg)?).ok_or(Errno::EFAULT)?;
            if a.dom != domid::SELF && a.dom != me {
                return Err(Errno::EPERM);
            }
            a.port = inner
                .evtchn
                .alloc_unbound(me, evtchn::self_or(a.remote_dom, me))?;
            g.write(arg, &a.to_bytes())?;
            Ok(0)
        }
        evtchnop::BIND_VIRQ => {
            let mut a = EvtchnBindVirq::from_bytes(&g.get::<12>(arg)?).ok_or(Errno::EFAULT)?;
            a.port = inner.evtchn.bind_virq(a.virq, a.vcpu)?;
            g.write(arg, &a.to_bytes())?;
            Ok(0)
        }
        evtchnop::BIND_INTERDOMAIN => {
            let mut a =
                EvtchnBindInterdomain::from_bytes(&g.get::<12>(arg)?).ok_or(Errno::EFAULT)?;
            let remote = evtchn::self_or(a.remote_dom, me);
            if remote != me {
                // Dom0 has no ports of its own (it connects through KEEL_DOMAIN_EVTCHN_BIND),
                // and no other DomU is reachable yet.
                return Err(if remote == 0 {
                    Errno::EINVAL
                } else {
                    Errno::ESRCH
                });
            }
            let Some(shared_info) = inner.shared_info else {
                return Err(Errno::EINVAL);
            };
            let inner = &mut *inner;
            let words =
                super::GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
            let (port, raised) =
                inner
                    .evtchn
                    .bind_interdomain(Peer::SameDomain, a.remote_port, &words)?;
            a.local_port = port;
            if raised.notify {
                x.upcall_raised(inner, port);
                if let Some(t) = inner.evtchn.notify_vcpu(port) {
                    wake.add(t);
                }
            }
            g.write(arg, &a.to_bytes())?;
            Ok(0)
        }
        evtchnop::RESET => {
            let a = EvtchnReset::from_bytes(&g.get::<2>(arg)?).ok_or(Errno::EFAULT)?;
            if a.dom != domid::SELF && a.dom != me {
                return Err(Errno::EPERM);
            }
            let inner = &mut *inner;
            // Dom0's ends go with the DomU's ports.
            inner.dom0.iter_mut().for_each(super::Dom0Port::release);
            let Some(shared_info) = inner.shared_info else {
                return Ok(0);
            };
            let words =
                super::GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
            // Only ports within the domain exist: nothing needs another table.
            let _ = inner.evtchn.reset(&words);
            Ok(0)
        }
        evtchnop::BIND_IPI => {
            let mut a = EvtchnBindIpi::from_bytes(&g.get::<8>(arg)?).ok_or(Errno::EFAULT)?;
            a.port = inner.evtchn.bind_ipi(a.vcpu)?;
            g.write(arg, &a.to_bytes())?;
            Ok(0)
        }
        evtchnop::CLOSE => {
            let a = EvtchnClose::from_bytes(&g.get::<4>(arg)?).ok_or(Errno::EFAULT)?;
            // A port connected to Dom0 loses Dom0's end with it (Dom0's notify and unbind then
            // get EINVAL).
            if let Some(p) = inner
                .dom0
                .iter_mut()
                .find(|p| p.ctx != 0 && p.port == a.port)
            {
                p.release();
            }
            let Some(shared_info) = inner.shared_info else {
                return Err(Errno::EINVAL);
            };
            let inner = &mut *inner;
            let words =
                super::GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
            inner.evtchn.close(a.port, Peer::SameDomain, &words)?;
            Ok(0)
        }
        evtchnop::SEND => {
            let a = EvtchnSend::from_bytes(&g.get::<4>(arg)?).ok_or(Errno::EFAULT)?;
            *wake = x.send(&inner, dom, a.port)?;
            Ok(0)
        }
        evtchnop::STATUS => {
            let a = EvtchnStatus::from_bytes(&g.get::<24>(arg)?).ok_or(Errno::EFAULT)?;
            if a.dom != domid::SELF && a.dom != me {
                return Err(Errno::EPERM);
            }
            let st = inner.evtchn.status(a.dom, a.port)?;
            g.write(arg, &st.to_bytes())?;
            Ok(0)
        }
        evtchnop::BIND_VCPU => {
            let a = EvtchnBindVcpu::from_bytes(&g.get::<8>(arg)?).ok_or(Errno::EFAULT)?;
            inner.evtchn.bind_vcpu(a.port, a.vcpu)?;
            Ok(0)
        }
        evtchnop::UNMASK => {
            let a = EvtchnUnmask::from_bytes(&g.get::<4>(arg)?).ok_or(Errno::EFAULT)?;
            let Some(shared_info) = inner.shared_info else {
                return Err(Errno::EINVAL);
            };
            let words =
                super::GuestWords::new(dom, shared_info, &inner.vcpus, inner.evtchn.width());
            if inner.evtchn.unmask(a.port, &words)? {
                x.upcall_raised(&inner, a.port);
                if let Some(t) = inner.evtchn.notify_vcpu(a.port) {
                    if t != v {
                        wake.add(t);
                    }
                }
            }
            Ok(0)
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `grant_table_op(cmd, arg, count)`: the DomU's own table's size and version.
fn gnttab_op(x: &Xen, g: &Guest<'_>, cmd: u32, arg: u64, count: u64) -> HResult {
    if count != 1 {
        return Err(Errno::EINVAL);
    }
    match cmd {
        gnttabop::QUERY_SIZE => {
            let mut q = GnttabQuerySize::from_bytes(&g.get::<16>(arg)?).ok_or(Errno::EFAULT)?;
            if q.dom != domid::SELF && q.dom != x.domid {
                q.status = if (x.exists)(q.dom) {
                    gnttabop::ST_PERMISSION_DENIED
                } else {
                    gnttabop::ST_BAD_DOMAIN
                };
            } else {
                let inner = x.inner.lock();
                q.nr_frames = inner.gnttab.iter().filter(|f| f.is_some()).count() as u32;
                q.max_nr_frames = GNTTAB_FRAMES as u32;
                q.status = gnttabop::ST_OKAY;
            }
            g.write(arg, &q.to_bytes())?;
            Ok(0)
        }
        gnttabop::SETUP_TABLE => {
            let w = g.width();
            let size = GnttabSetupTable::size(w);
            let mut t =
                GnttabSetupTable::decode(w, &g.get_sized::<24>(arg, size)?).ok_or(Errno::EFAULT)?;
            if t.dom != domid::SELF && t.dom != x.domid {
                t.status = if (x.exists)(t.dom) {
                    gnttabop::ST_PERMISSION_DENIED
                } else {
                    gnttabop::ST_BAD_DOMAIN
                };
            } else if t.nr_frames as usize > GNTTAB_FRAMES {
                t.status = gnttabop::ST_GENERAL_ERROR;
            } else {
                // A translated guest gets the gfns where it placed its frames (Xen's
                // gnttab_shared_gfn), all-ones for one not placed.
                let frames = x.inner.lock().gnttab;
                for (i, f) in frames.iter().take(t.nr_frames as usize).enumerate() {
                    let gfn = f.map_or(u64::MAX, |gpa| gpa >> 12);
                    let at = t.frame_list.wrapping_add((w.word_bytes() * i) as u64);
                    g.put_word(at, gfn)?;
                }
                t.status = gnttabop::ST_OKAY;
            }
            let mut b = [0u8; 24];
            t.encode(w, &mut b).ok_or(Errno::EFAULT)?;
            g.write(arg, &b[..size])?;
            Ok(0)
        }
        gnttabop::SET_VERSION => {
            let mut s = GnttabSetVersion::from_bytes(&g.get::<4>(arg)?).ok_or(Errno::EFAULT)?;
            let ok = s.version == 1;
            s.version = 1;
            g.write(arg, &s.to_bytes())?;
            if ok {
                Ok(0)
            } else {
                Err(Errno::EINVAL)
            }
        }
        _ => Err(Errno::ENOSYS),
    }
}

/// `console_io(cmd, count, buffer)`: writes go to Dom0's kernel log (printable ASCII, at most
/// `CONSOLE_LINES_PER_SEC` lines a second per domain, chunks of up to 256 bytes a line).
fn console_io(x: &Xen, g: &Guest<'_>, cmd: u32, count: u64, buf: u64) -> HResult {
    match cmd {
        crate::keel_core::xen::abi::consoleio::WRITE => {
            let total = (count as usize).min(CONSOLE_MAX);
            let mut done = 0;
            while done < total {
                let n = (total - done).min(CONSOLE_CHUNK);
                let mut b = [0u8; CONSOLE_CHUNK];
                g.read(buf.wrapping_add(done as u64), &mut b[..n])?;
                for line in b[..n].split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                    if !x.console_line_allowed() {
                        continue;
                    }
                    let mut text = [0u8; CONSOLE_CHUNK];
                    for (d, &c) in text.iter_mut().zip(line) {
                        *d = if (0x20..0x7f).contains(&c) { c } else { b'.' };
                    }
                    if let Ok(s) = core::str::from_utf8(&text[..line.len()]) {
                        pr_info!("domain {}: {}\n", x.domid, s);
                    }
                }
                done += n;
            }
            Ok(0)
        }
        crate::keel_core::xen::abi::consoleio::READ => Ok(0),
        _ => Err(Errno::ENOSYS),
    }
}
