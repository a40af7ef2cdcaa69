//! Xen's 2-level event channels as pure logic: each domain's port table with the rules and
//! errno values of `EVTCHNOP_*` (X: xen/common/event_channel.c), and delivery into the
//! shared_info / vcpu_info bitmaps (X: xen/common/event_2l.c `evtchn_2l_set_pending`,
//! `evtchn_2l_unmask`), and the checks of `SCHEDOP_poll` (X: xen/common/sched/core.c `do_poll`).
//!
//! # Tables and locks
//! A [`Table`] is one domain's ports. Operations on one domain take `&mut Table`; the
//! interdomain ones ([`Table::bind_interdomain`], [`Table::close`] of an interdomain port,
//! [`Table::reset`]) need the other domain's table too and take it as a [`Peer`]: the caller
//! (root mode) resolves the remote domain id, takes both domains' locks in its fixed order
//! (e.g. lower domid first, as Xen does) and passes both tables. [`Table::peer_of`] tells it
//! which domain a close needs before it locks; if the port changed in between, the operation
//! answers as Xen does in that race (EINVAL).
//!
//! # Guest memory
//! The bits live in guest memory that the guest changes concurrently. They are reached only
//! through the [`Words`] trait: root mode implements it with locked instructions on the guest's
//! shared_info and vcpu_info, tests implement it on atomic arrays. Table operations that touch
//! guest memory (close clears the pending bit, bind_interdomain raises the new port) take the
//! domain's `Words`.
//!
//! # Decisions where Keel differs from Xen's letter
//! - Xen allocates port structures in buckets and calls a port "valid" once its bucket exists;
//!   Keel's table has every port up to [`Table::port_limit`] from the start, so a never-used
//!   port in range is closed (EINVAL for close, `EVTCHNSTAT_closed` for status), never out of
//!   range. A guest sees what it would see under Xen after allocating that many ports.
//! - No Keel domain handles global VIRQs (Xen gives them to the hardware domain): binding one
//!   is EBUSY, as for any Xen DomU.
//! - Xen checks a foreign `dom` argument's permission after allocating a port in it; Keel
//!   checks it first ([`resolve_dom`]), so a full foreign table reports EPERM, not ENOSPC.
//! - No PIRQs (a PVH DomU without passthrough has none) and no Xen-attached ports.

use super::abi::{domid, evtchnop, schedop, virq, Errno, EvtchnStatus, Width};

/// A domain id (`domid_t`).
pub type DomId = u16;

/// An event-channel port (`evtchn_port_t`).
pub type Port = u32;

/// Ports in a table: the 2-level limit for 64-bit shared info.
pub const MAX_PORTS: usize = 4096;

/// vCPUs a table can notify: Xen's limit for HVM domains (`HVM_MAX_VCPUS`).
pub const MAX_VCPUS: usize = 128;

const NR_VIRQS: usize = virq::NR_VIRQS as usize;

/// A port's state (Xen's `ECS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not in use.
    Free,
    /// Never usable: port 0.
    Reserved,
    /// Waiting for domain `remote` to bind to it.
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote_port` of domain `remote` (possibly this domain: loopback).
    Interdomain {
        /// The remote domain.
        remote: DomId,
        /// Its port.
        remote_port: Port,
    },
    /// Bound to a VIRQ.
    Virq {
        /// The [`virq`] number.
        virq: u32,
    },
    /// An IPI port: a send raises it on its own vCPU.
    Ipi,
}

// Channel kinds, Xen's ECS_* numbers (ECS_PIRQ = 4 unused).
const ECS_FREE: u8 = 0;
const ECS_RESERVED: u8 = 1;
const ECS_UNBOUND: u8 = 2;
const ECS_INTERDOMAIN: u8 = 3;
const ECS_VIRQ: u8 = 5;
const ECS_IPI: u8 = 6;

/// One port, stored as plain integers so that a zeroed table is all-free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Channel {
    kind: u8,
    _pad: u8,
    /// Unbound: the remote domain allowed to bind; interdomain: the remote domain.
    dom: u16,
    /// Interdomain: the remote port; VIRQ: the virq.
    arg: u32,
    /// The vCPU this port notifies.
    vcpu: u32,
}

impl Channel {
    const FREE: Channel = Channel {
        kind: ECS_FREE,
        _pad: 0,
        dom: 0,
        arg: 0,
        vcpu: 0,
    };

    fn state(&self) -> State {
        match self.kind {
            ECS_RESERVED => State::Reserved,
            ECS_UNBOUND => State::Unbound { remote: self.dom },
            ECS_INTERDOMAIN => State::Interdomain {
                remote: self.dom,
                remote_port: self.arg,
            },
            ECS_VIRQ => State::Virq { virq: self.arg },
            ECS_IPI => State::Ipi,
            _ => State::Free,
        }
    }

    /// Xen's `evtchn_usable`: bound to something.
    fn usable(&self) -> bool {
        self.kind > ECS_RESERVED
    }
}

/// Per-vCPU or not (Xen's `get_virq_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VirqType {
    /// One port per vCPU (TIMER, DEBUG, XENOPROF, XENPMU).
    Vcpu,
    /// One port per domain (ARGO).
    Domain,
    /// One handler domain for the system (Xen: the hardware domain).
    Global,
}

/// The type of a VIRQ below [`virq::NR_VIRQS`] (x86: every arch VIRQ is global).
pub const fn virq_type(v: u32) -> VirqType {
    match v {
        virq::TIMER | virq::DEBUG | virq::XENOPROF | virq::XENPMU => VirqType::Vcpu,
        virq::ARGO => VirqType::Domain,
        _ => VirqType::Global,
    }
}

/// The other table of an interdomain operation.
pub enum Peer<'a> {
    /// The remote domain is this table's own domain (loopback).
    SameDomain,
    /// The remote domain's table, locked by the caller.
    Other(&'a mut Table),
}

/// Where an `EVTCHNOP_send` goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendTarget {
    /// Raise `port` of the sender's own domain (an IPI port, or loopback interdomain).
    Local {
        /// The port to raise with [`Table::raise`].
        port: Port,
    },
    /// Raise `port` in domain `dom`: [`Table::raise`] on that domain's table.
    Remote {
        /// The remote domain.
        dom: DomId,
        /// Its port.
        port: Port,
    },
    /// An unbound port: the notification is dropped (success).
    Dropped,
}

/// What [`Table::reset`] could not do alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeedsPeer {
    /// An interdomain port still open.
    pub port: Port,
    /// The domain whose table [`Table::close`] needs for it.
    pub remote: DomId,
}

/// Resolves the `dom` argument of `EVTCHNOP_alloc_unbound`, `EVTCHNOP_status` and
/// `EVTCHNOP_reset` (Xen: `rcu_lock_domain_by_any_id` then the XSM "target" check): DOMID_SELF
/// or the caller's own id is the caller; another existing domain needs a privileged caller
/// (EPERM otherwise); a domain that does not exist is ESRCH.
pub fn resolve_dom(
    dom: u16,
    caller: DomId,
    caller_privileged: bool,
    exists: impl FnOnce(DomId) -> bool,
) -> Result<DomId, Errno> {
    if dom == domid::SELF || dom == caller {
        Ok(caller)
    } else if !exists(dom) {
        Err(Errno::ESRCH)
    } else if caller_privileged {
        Ok(dom)
    } else {
        Err(Errno::EPERM)
    }
}

/// DOMID_SELF as the caller, any other id as itself (`bind_interdomain`'s remote_dom, which any
/// domain may name: ESRCH is the caller's answer when it does not exist).
pub const fn self_or(dom: u16, caller: DomId) -> DomId {
    if dom == domid::SELF {
        caller
    } else {
        dom
    }
}

/// One domain's event-channel ports.
///
/// Every field is an integer, so an all-zero `Table` is a valid (empty, unusable) value: the
/// module may allocate it zeroed and then call [`Table::init`] in place (it is about 55 KiB).
#[repr(C)]
pub struct Table {
    channels: [Channel; MAX_PORTS],
    /// Port bound to (vCPU, VIRQ), 0 for none. Non-per-vCPU VIRQs are kept under vCPU 0.
    virq_ports: [[u16; NR_VIRQS]; MAX_VCPUS],
    domid: DomId,
    compat32: bool,
    nr_vcpus: u32,
    max_port: Port,
}

impl Table {
    /// A new table for domain `domid` with `nr_vcpus` vCPUs and ports 1..=`max_port` (at most
    /// 4095; port 0 is reserved). 64-bit shared info until [`Table::set_width`].
    pub fn new(domid: DomId, nr_vcpus: u32, max_port: Port) -> Self {
        let mut t = Table {
            channels: [Channel::FREE; MAX_PORTS],
            virq_ports: [[0; NR_VIRQS]; MAX_VCPUS],
            domid: 0,
            compat32: false,
            nr_vcpus: 0,
            max_port: 0,
        };
        t.init(domid, nr_vcpus, max_port);
        t
    }

    /// (Re)initialises the table in place: every port free, port 0 reserved (Xen's
    /// `evtchn_init`). `nr_vcpus` is capped at [`MAX_VCPUS`], `max_port` at 4095.
    pub fn init(&mut self, domid: DomId, nr_vcpus: u32, max_port: Port) {
        self.channels.fill(Channel::FREE);
        self.channels[0].kind = ECS_RESERVED;
        for v in self.virq_ports.iter_mut() {
            v.fill(0);
        }
        self.domid = domid;
        self.compat32 = false;
        self.nr_vcpus = nr_vcpus.min(MAX_VCPUS as u32);
        self.max_port = max_port.min(MAX_PORTS as u32 - 1);
    }

    /// The domain this table belongs to.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The number of vCPUs ports may notify.
    pub fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    /// The shared-info width the domain latched (see `abi`'s module doc).
    pub fn width(&self) -> Width {
        if self.compat32 {
            Width::Bits32
        } else {
            Width::Bits64
        }
    }

    /// Latches the shared-info width (Xen does at `HVM_PARAM_CALLBACK_IRQ`). With 32-bit
    /// shared info ports above 1023 cannot be allocated or raised.
    pub fn set_width(&mut self, w: Width) {
        self.compat32 = w == Width::Bits32;
    }

    /// The highest usable port: the configured maximum, within the width's 2-level limit.
    pub fn port_limit(&self) -> Port {
        self.max_port.min(self.width().evtchn_2l_ports() - 1)
    }

    fn channel(&self, port: Port) -> Result<&Channel, Errno> {
        if port > self.port_limit() {
            return Err(Errno::EINVAL);
        }
        Ok(&self.channels[port as usize])
    }

    fn channel_mut(&mut self, port: Port) -> Result<&mut Channel, Errno> {
        if port > self.port_limit() {
            return Err(Errno::EINVAL);
        }
        Ok(&mut self.channels[port as usize])
    }

    fn check_vcpu(&self, vcpu: u32) -> Result<(), Errno> {
        if vcpu < self.nr_vcpus {
            Ok(())
        } else {
            Err(Errno::ENOENT)
        }
    }

    /// A port's state, `None` out of range.
    pub fn state(&self, port: Port) -> Option<State> {
        self.channel(port).ok().map(Channel::state)
    }

    /// The vCPU a bound port notifies, `None` for a free, reserved or out-of-range port.
    pub fn notify_vcpu(&self, port: Port) -> Option<u32> {
        self.channel(port)
            .ok()
            .filter(|c| c.usable())
            .map(|c| c.vcpu)
    }

    /// The port bound to `virq` for `vcpu` (per-vCPU VIRQs) or for the domain (others: pass
    /// vCPU 0).
    pub fn virq_port(&self, vcpu: u32, virq: u32) -> Option<Port> {
        let p = *self.virq_ports.get(vcpu as usize)?.get(virq as usize)?;
        (p != 0).then_some(Port::from(p))
    }

    /// The lowest free port (Xen's `get_free_port`), ENOSPC when none is left.
    fn free_port(&self) -> Result<Port, Errno> {
        (1..=self.port_limit())
            .find(|&p| self.channels[p as usize].kind == ECS_FREE)
            .ok_or(Errno::ENOSPC)
    }

    fn bind(&mut self, port: Port, kind: u8, dom: u16, arg: u32, vcpu: u32) {
        self.channels[port as usize] = Channel {
            kind,
            _pad: 0,
            dom,
            arg,
            vcpu,
        };
    }

    /// `EVTCHNOP_alloc_unbound` in this (already resolved, see [`resolve_dom`]) table, by
    /// domain `caller`: a new port that `remote_dom` (DOMID_SELF: the caller) may bind to. Any
    /// remote id is accepted, as in Xen. Errors: ENOSPC.
    pub fn alloc_unbound(&mut self, caller: DomId, remote_dom: u16) -> Result<Port, Errno> {
        let port = self.free_port()?;
        self.bind(port, ECS_UNBOUND, self_or(remote_dom, caller), 0, 0);
        Ok(port)
    }

    /// `EVTCHNOP_bind_interdomain` by this table's domain: connects a new local port to
    /// `remote_port` of the peer, which must be unbound and waiting for this domain. The new
    /// port is raised at once, as Xen does for notifications lost while the remote was
    /// unbound: the result says whom to notify. Errors: ENOSPC (no local port), EINVAL (remote
    /// port out of range, not unbound, or not for this domain). ESRCH for a remote domain that
    /// does not exist is the caller's.
    pub fn bind_interdomain<W: Words>(
        &mut self,
        peer: Peer<'_>,
        remote_port: Port,
        words: &W,
    ) -> Result<(Port, Raised), Errno> {
        let lport = self.free_port()?;
        let me = self.domid;
        let remote_dom = match peer {
            Peer::SameDomain => {
                let r = self.channel_mut(remote_port)?;
                if r.state() != (State::Unbound { remote: me }) {
                    return Err(Errno::EINVAL);
                }
                r.kind = ECS_INTERDOMAIN;
                r.arg = lport;
                me
            }
            Peer::Other(t) => {
                let r = t.channel_mut(remote_port)?;
                if r.state() != (State::Unbound { remote: me }) {
                    return Err(Errno::EINVAL);
                }
                r.kind = ECS_INTERDOMAIN;
                r.arg = lport;
                t.domid
            }
        };
        self.bind(lport, ECS_INTERDOMAIN, remote_dom, remote_port, 0);
        Ok((lport, self.raise(lport, words)))
    }

    /// `EVTCHNOP_bind_virq`. Errors, in Xen's order: EINVAL (virq out of range, or a vCPU
    /// other than 0 for a VIRQ that is not per vCPU), ENOENT (no such vCPU), EBUSY (a global
    /// VIRQ), EEXIST (already bound on that vCPU), ENOSPC.
    pub fn bind_virq(&mut self, virq: u32, vcpu: u32) -> Result<Port, Errno> {
        if virq >= virq::NR_VIRQS {
            return Err(Errno::EINVAL);
        }
        let ty = virq_type(virq);
        if ty != VirqType::Vcpu && vcpu != 0 {
            return Err(Errno::EINVAL);
        }
        self.check_vcpu(vcpu)?;
        if ty == VirqType::Global {
            return Err(Errno::EBUSY);
        }
        if self.virq_port(vcpu, virq).is_some() {
            return Err(Errno::EEXIST);
        }
        let port = self.free_port()?;
        self.bind(port, ECS_VIRQ, 0, virq, vcpu);
        self.virq_ports[vcpu as usize][virq as usize] = port as u16;
        Ok(port)
    }

    /// `EVTCHNOP_bind_ipi`. Errors: ENOENT (no such vCPU), ENOSPC.
    pub fn bind_ipi(&mut self, vcpu: u32) -> Result<Port, Errno> {
        self.check_vcpu(vcpu)?;
        let port = self.free_port()?;
        self.bind(port, ECS_IPI, 0, 0, vcpu);
        Ok(port)
    }

    /// The domain whose table [`Table::close`] needs for `port`: `Some` for an interdomain
    /// port connected to another domain.
    pub fn peer_of(&self, port: Port) -> Option<DomId> {
        match self.state(port)? {
            State::Interdomain { remote, .. } if remote != self.domid => Some(remote),
            _ => None,
        }
    }

    /// `EVTCHNOP_close` (also the toolstack's close): frees the port, clears its pending bit,
    /// and turns an interdomain peer back into an unbound port waiting for this domain. `peer`
    /// is the table [`Table::peer_of`] named (any value when it named none). Errors: EINVAL
    /// (out of range, free or reserved, or `peer` is not the port's remote domain any more).
    pub fn close<W: Words>(&mut self, port: Port, peer: Peer<'_>, words: &W) -> Result<(), Errno> {
        let me = self.domid;
        let c = *self.channel(port)?;
        match c.state() {
            State::Free | State::Reserved => return Err(Errno::EINVAL),
            State::Unbound { .. } | State::Ipi => {}
            State::Virq { virq } => {
                let v = if virq_type(virq) == VirqType::Vcpu {
                    c.vcpu
                } else {
                    0
                };
                self.virq_ports[v as usize][virq as usize] = 0;
            }
            State::Interdomain {
                remote,
                remote_port,
            } => {
                let unbind = |r: &mut Channel| {
                    r.kind = ECS_UNBOUND;
                    r.dom = me;
                    r.arg = 0;
                };
                if remote == me {
                    unbind(&mut self.channels[remote_port as usize]);
                } else {
                    match peer {
                        Peer::Other(t) if t.domid == remote => {
                            unbind(&mut t.channels[remote_port as usize])
                        }
                        _ => return Err(Errno::EINVAL),
                    }
                }
            }
        }
        self.channels[port as usize] = Channel::FREE;
        clear_pending(words, self.width(), port);
        Ok(())
    }

    /// `EVTCHNOP_reset` (after [`resolve_dom`]): closes every port it can alone. Returns
    /// `Err(NeedsPeer)` for the first interdomain port connected to another domain: close it
    /// with that domain's table ([`Table::close`]) and call `reset` again, until it returns
    /// `Ok`.
    pub fn reset<W: Words>(&mut self, words: &W) -> Result<(), NeedsPeer> {
        for port in 1..=self.port_limit() {
            if self.channels[port as usize].kind == ECS_FREE {
                continue;
            }
            if let Some(remote) = self.peer_of(port) {
                return Err(NeedsPeer { port, remote });
            }
            // Cannot fail: the port is in range, bound, and needs no peer.
            let _ = self.close(port, Peer::SameDomain, words);
        }
        Ok(())
    }

    /// `EVTCHNOP_send` from this table's domain: where the event goes. Errors: EINVAL (out of
    /// range, free, reserved, or a VIRQ port).
    pub fn send(&self, port: Port) -> Result<SendTarget, Errno> {
        match self.channel(port)?.state() {
            State::Interdomain {
                remote,
                remote_port,
            } if remote == self.domid => Ok(SendTarget::Local { port: remote_port }),
            State::Interdomain {
                remote,
                remote_port,
            } => Ok(SendTarget::Remote {
                dom: remote,
                port: remote_port,
            }),
            State::Ipi => Ok(SendTarget::Local { port }),
            State::Unbound { .. } => Ok(SendTarget::Dropped),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `EVTCHNOP_status` (after [`resolve_dom`]; `dom` is echoed as given). Errors: EINVAL
    /// (out of range).
    pub fn status(&self, dom: u16, port: Port) -> Result<EvtchnStatus, Errno> {
        let c = self.channel(port)?;
        let (status, u0, u1) = match c.state() {
            State::Free | State::Reserved => (evtchnop::STAT_CLOSED, 0, 0),
            State::Unbound { remote } => (evtchnop::STAT_UNBOUND, u32::from(remote), 0),
            State::Interdomain {
                remote,
                remote_port,
            } => (evtchnop::STAT_INTERDOMAIN, u32::from(remote), remote_port),
            State::Virq { virq } => (evtchnop::STAT_VIRQ, virq, 0),
            State::Ipi => (evtchnop::STAT_IPI, 0, 0),
        };
        Ok(EvtchnStatus {
            dom,
            port,
            status,
            vcpu: c.vcpu,
            u0,
            u1,
        })
    }

    /// `EVTCHNOP_bind_vcpu`: which vCPU the port notifies from now on. Errors: ENOENT (no such
    /// vCPU, checked first), EINVAL (out of range; a per-vCPU VIRQ; an IPI, free or reserved
    /// port).
    pub fn bind_vcpu(&mut self, port: Port, vcpu: u32) -> Result<(), Errno> {
        self.check_vcpu(vcpu)?;
        let c = self.channel_mut(port)?;
        match c.state() {
            State::Virq { virq } if virq_type(virq) != VirqType::Vcpu => c.vcpu = vcpu,
            State::Unbound { .. } | State::Interdomain { .. } => c.vcpu = vcpu,
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }

    /// `EVTCHNOP_unmask`: clears the mask bit and, if the port is pending, notifies its vCPU
    /// as a fresh event would. Returns whether that vCPU must be notified. A free port is
    /// left alone (success, as in Xen). Errors: EINVAL (out of range).
    pub fn unmask<W: Words>(&self, port: Port, words: &W) -> Result<bool, Errno> {
        let c = self.channel(port)?;
        if !c.usable() {
            return Ok(false);
        }
        Ok(unmask(words, self.width(), port, c.vcpu))
    }

    /// Raises a bound port (a send, a VIRQ, a bind): [`set_pending`] on the vCPU it notifies.
    /// A free, reserved or out-of-range port is ignored (Xen's `evtchn_port_set_pending`).
    pub fn raise<W: Words>(&self, port: Port, words: &W) -> Raised {
        match self.notify_vcpu(port) {
            Some(vcpu) => set_pending(words, self.width(), port, vcpu),
            None => Raised::default(),
        }
    }

    /// The checks of `SCHEDOP_poll` on its port list (after Xen's own check that no event is
    /// already waiting for the vCPU): `Ok(Some(port))` for the first listed port that is
    /// pending, masked or not (the poll returns 0 at once), `Ok(None)` when none is (the vCPU
    /// blocks until a listed port is raised, see [`PollWait`], or the timeout). Errors: EINVAL
    /// (more than [`schedop::POLL_MAX_PORTS`] ports; a port out of range or not bound, met
    /// before any pending one).
    pub fn poll<W: Words>(&self, ports: &[Port], words: &W) -> Result<Option<Port>, Errno> {
        if ports.len() > schedop::POLL_MAX_PORTS as usize {
            return Err(Errno::EINVAL);
        }
        for &port in ports {
            let c = self.channel(port)?;
            if !c.usable() {
                return Err(Errno::EINVAL);
            }
            if is_pending(words, self.width(), port) {
                return Ok(Some(port));
            }
        }
        Ok(None)
    }
}

/// What a polling vCPU waits for (Xen's `poll_evtchn`: the port when it polls one, any port
/// when it polls several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollWait {
    /// Any port of the domain wakes it.
    Any,
    /// Only this port wakes it.
    Port(Port),
}

impl PollWait {
    /// The wait for a poll on `ports`.
    pub fn of(ports: &[Port]) -> Self {
        match ports {
            [p] => PollWait::Port(*p),
            _ => PollWait::Any,
        }
    }

    /// Whether a port that became pending ([`Raised::newly_pending`]) wakes the poller.
    pub fn wakes_on(self, port: Port) -> bool {
        match self {
            PollWait::Any => true,
            PollWait::Port(p) => p == port,
        }
    }
}

/// A bitmap in guest memory that event delivery touches. Bit numbers count from bit 0 of the
/// first byte, little-endian (x86 bit-string order), whatever the word size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Map {
    /// shared_info `evtchn_pending`: bit = port.
    Pending,
    /// shared_info `evtchn_mask`: bit = port.
    Mask,
    /// The vCPU's vcpu_info `evtchn_pending_sel`: bit = port / word bits.
    PendingSel(u32),
    /// The vCPU's vcpu_info `evtchn_upcall_pending` byte: bit 0.
    UpcallPending(u32),
}

/// Atomic bit operations on the guest's event bitmaps. Root mode implements them with locked
/// instructions (`lock bts`/`btr`, which are also full barriers, as Xen relies on) on guest
/// memory located with `abi::SharedInfoLayout`; the guest changes the same words at any time.
pub trait Words {
    /// Reads a bit.
    fn test(&self, map: Map, bit: u32) -> bool;
    /// Atomically sets a bit, returning its old value.
    fn test_and_set(&self, map: Map, bit: u32) -> bool;
    /// Atomically clears a bit, returning its old value.
    fn test_and_clear(&self, map: Map, bit: u32) -> bool;
}

/// The outcome of raising a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raised {
    /// The pending bit went from 0 to 1: wake vCPUs polling this port ([`PollWait`]).
    pub newly_pending: bool,
    /// The vCPU's `evtchn_upcall_pending` went from 0 to 1: inject the callback or kick the
    /// vCPU (or wake it if blocked).
    pub notify: bool,
}

/// Sets `port` pending for `vcpu` (Xen's `evtchn_2l_set_pending`): the pending bit; if it was
/// clear and the port is unmasked, the vCPU's selector bit for the port's word; if that was
/// clear, the vCPU's upcall-pending flag. The order matters against the guest's handler,
/// which clears upcall-pending, then takes the selector, then clears pending bits. Ports
/// beyond the width's 2-level range are ignored.
pub fn set_pending<W: Words>(words: &W, width: Width, port: Port, vcpu: u32) -> Raised {
    if port >= width.evtchn_2l_ports() || words.test_and_set(Map::Pending, port) {
        return Raised::default();
    }
    let notify = !words.test(Map::Mask, port)
        && !words.test_and_set(Map::PendingSel(vcpu), port / width.word_bits())
        && !words.test_and_set(Map::UpcallPending(vcpu), 0);
    Raised {
        newly_pending: true,
        notify,
    }
}

/// Unmasks `port` for `vcpu` (Xen's `evtchn_2l_unmask`): clears the mask bit and, if it was set
/// and the port is pending, marks the selector and upcall-pending as a new event would.
/// Returns whether the vCPU must be notified.
pub fn unmask<W: Words>(words: &W, width: Width, port: Port, vcpu: u32) -> bool {
    port < width.evtchn_2l_ports()
        && words.test_and_clear(Map::Mask, port)
        && words.test(Map::Pending, port)
        && !words.test_and_set(Map::PendingSel(vcpu), port / width.word_bits())
        && !words.test_and_set(Map::UpcallPending(vcpu), 0)
}

/// Whether `port` is pending, masked or not (false beyond the width's range).
pub fn is_pending<W: Words>(words: &W, width: Width, port: Port) -> bool {
    port < width.evtchn_2l_ports() && words.test(Map::Pending, port)
}

/// Clears `port`'s pending bit (on close, so a re-bound port starts clean).
pub fn clear_pending<W: Words>(words: &W, width: Width, port: Port) {
    if port < width.evtchn_2l_ports() {
        words.test_and_clear(Map::Pending, port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
    use std::sync::Arc;

    /// shared_info and vcpu_info on atomic arrays (64-bit layout; a 32-bit guest uses the low
    /// halves of the same bits).
    struct Mem {
        pending: Vec<AtomicU64>,
        mask: Vec<AtomicU64>,
        sel: Vec<AtomicU64>,
        upcall: Vec<AtomicU8>,
    }

    impl Mem {
        fn new(vcpus: usize) -> Self {
            Mem {
                pending: (0..64).map(|_| AtomicU64::new(0)).collect(),
                mask: (0..64).map(|_| AtomicU64::new(0)).collect(),
                sel: (0..vcpus).map(|_| AtomicU64::new(0)).collect(),
                upcall: (0..vcpus).map(|_| AtomicU8::new(0)).collect(),
            }
        }

        fn word(&self, map: Map, bit: u32) -> (&AtomicU64, u64) {
            let b = 1u64 << (bit % 64);
            match map {
                Map::Pending => (&self.pending[bit as usize / 64], b),
                Map::Mask => (&self.mask[bit as usize / 64], b),
                Map::PendingSel(v) => (&self.sel[v as usize], b),
                Map::UpcallPending(_) => unreachable!(),
            }
        }
    }

    impl Words for Mem {
        fn test(&self, map: Map, bit: u32) -> bool {
            if let Map::UpcallPending(v) = map {
                return self.upcall[v as usize].load(SeqCst) & 1 != 0;
            }
            let (w, b) = self.word(map, bit);
            w.load(SeqCst) & b != 0
        }
        fn test_and_set(&self, map: Map, bit: u32) -> bool {
            if let Map::UpcallPending(v) = map {
                return self.upcall[v as usize].fetch_or(1, SeqCst) & 1 != 0;
            }
            let (w, b) = self.word(map, bit);
            w.fetch_or(b, SeqCst) & b != 0
        }
        fn test_and_clear(&self, map: Map, bit: u32) -> bool {
            if let Map::UpcallPending(v) = map {
                return self.upcall[v as usize].fetch_and(!1, SeqCst) & 1 != 0;
            }
            let (w, b) = self.word(map, bit);
            w.fetch_and(!b, SeqCst) & b != 0
        }
    }

    const ME: DomId = 1;
    const BACK: DomId = 0;

    fn table() -> Box<Table> {
        Box::new(Table::new(ME, 2, 4095))
    }

    #[test]
    fn port_zero_is_reserved_and_allocation_is_lowest_first() {
        let mut t = table();
        let m = Mem::new(2);
        assert_eq!(t.state(0), Some(State::Reserved));
        assert_eq!(t.bind_ipi(0), Ok(1));
        assert_eq!(t.bind_ipi(1), Ok(2));
        assert_eq!(t.close(0, Peer::SameDomain, &m), Err(Errno::EINVAL));
        assert_eq!(t.send(0), Err(Errno::EINVAL));
        assert_eq!(
            t.status(domid::SELF, 0).unwrap().status,
            evtchnop::STAT_CLOSED
        );
        assert_eq!(t.close(1, Peer::SameDomain, &m), Ok(()));
        assert_eq!(t.close(1, Peer::SameDomain, &m), Err(Errno::EINVAL));
        assert_eq!(t.bind_ipi(1), Ok(1));
        assert_eq!(t.bind_ipi(2), Err(Errno::ENOENT));
    }

    #[test]
    fn ports_run_out_with_enospc() {
        let mut t = Box::new(Table::new(ME, 1, 3));
        assert_eq!(t.port_limit(), 3);
        for p in 1..=3 {
            assert_eq!(t.bind_ipi(0), Ok(p));
        }
        assert_eq!(t.bind_ipi(0), Err(Errno::ENOSPC));
        assert_eq!(t.alloc_unbound(ME, BACK), Err(Errno::ENOSPC));
        assert_eq!(t.status(domid::SELF, 4), Err(Errno::EINVAL));
        let big = Table::new(ME, 1, 100_000);
        assert_eq!(big.port_limit(), 4095);
    }

    #[test]
    fn width_32_limits_ports_to_1023() {
        let mut t = table();
        t.set_width(Width::Bits32);
        assert_eq!(t.port_limit(), 1023);
        assert_eq!(t.unmask(1024, &Mem::new(2)), Err(Errno::EINVAL));
        t.set_width(Width::Bits64);
        assert_eq!(t.port_limit(), 4095);
    }

    #[test]
    fn bind_virq_rules() {
        let mut t = table();
        assert_eq!(t.bind_virq(virq::NR_VIRQS, 0), Err(Errno::EINVAL));
        assert_eq!(t.bind_virq(virq::ARGO, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_virq(virq::CONSOLE, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_virq(virq::TIMER, 2), Err(Errno::ENOENT));
        assert_eq!(t.bind_virq(virq::CONSOLE, 0), Err(Errno::EBUSY));
        assert_eq!(t.bind_virq(virq::ARCH_0, 0), Err(Errno::EBUSY));
        assert_eq!(t.bind_virq(virq::TIMER, 0), Ok(1));
        assert_eq!(t.bind_virq(virq::TIMER, 1), Ok(2));
        assert_eq!(t.bind_virq(virq::TIMER, 1), Err(Errno::EEXIST));
        assert_eq!(t.bind_virq(virq::DEBUG, 1), Ok(3));
        assert_eq!(t.bind_virq(virq::ARGO, 0), Ok(4));
        assert_eq!(t.virq_port(1, virq::TIMER), Some(2));
        assert_eq!(t.notify_vcpu(2), Some(1));
        let s = t.status(domid::SELF, 2).unwrap();
        assert_eq!(
            (s.status, s.vcpu, s.u0),
            (evtchnop::STAT_VIRQ, 1, virq::TIMER)
        );
        // A VIRQ port cannot be sent on or moved when per vCPU; ARGO can move.
        assert_eq!(t.send(2), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(2, 0), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(4, 1), Ok(()));
        // Closing frees the (vCPU, VIRQ) slot.
        let m = Mem::new(2);
        assert_eq!(t.close(2, Peer::SameDomain, &m), Ok(()));
        assert_eq!(t.virq_port(1, virq::TIMER), None);
        assert_eq!(t.bind_virq(virq::TIMER, 1), Ok(2));
        assert_eq!(t.close(4, Peer::SameDomain, &m), Ok(()));
        assert_eq!(t.bind_virq(virq::ARGO, 0), Ok(4));
    }

    #[test]
    fn bind_vcpu_rules() {
        let mut t = table();
        let ipi = t.bind_ipi(0).unwrap();
        let unbound = t.alloc_unbound(ME, BACK).unwrap();
        assert_eq!(t.bind_vcpu(unbound, 5), Err(Errno::ENOENT));
        assert_eq!(t.bind_vcpu(9999, 5), Err(Errno::ENOENT));
        assert_eq!(t.bind_vcpu(9999, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(ipi, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(100, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(0, 1), Err(Errno::EINVAL));
        assert_eq!(t.bind_vcpu(unbound, 1), Ok(()));
        assert_eq!(t.status(ME, unbound).unwrap().vcpu, 1);
    }

    #[test]
    fn resolve_dom_rules() {
        let exists = |d: DomId| d < 5;
        assert_eq!(resolve_dom(domid::SELF, 3, false, exists), Ok(3));
        assert_eq!(resolve_dom(3, 3, false, exists), Ok(3));
        assert_eq!(resolve_dom(4, 3, false, exists), Err(Errno::EPERM));
        assert_eq!(resolve_dom(4, 3, true, exists), Ok(4));
        assert_eq!(resolve_dom(9, 3, true, exists), Err(Errno::ESRCH));
        assert_eq!(self_or(domid::SELF, 3), 3);
        assert_eq!(self_or(0, 3), 0);
    }

    #[test]
    fn interdomain_bind_send_close() {
        let mut front = table();
        let mut back = Box::new(Table::new(BACK, 1, 4095));
        let (fm, bm) = (Mem::new(2), Mem::new(1));

        // The frontend offers a port to the backend (DomU: alloc_unbound{SELF, 0}).
        let fport = front.alloc_unbound(ME, BACK).unwrap();
        let s = front.status(domid::SELF, fport).unwrap();
        assert_eq!((s.status, s.u0), (evtchnop::STAT_UNBOUND, u32::from(BACK)));
        assert_eq!(front.send(fport), Ok(SendTarget::Dropped));

        // Only the domain it names may bind, only to an unbound port, only in range.
        let mut other = Box::new(Table::new(7, 1, 4095));
        let om = Mem::new(1);
        assert_eq!(
            other
                .bind_interdomain(Peer::Other(&mut front), fport, &om)
                .map(|r| r.0),
            Err(Errno::EINVAL)
        );
        let r = back.bind_interdomain(Peer::Other(&mut front), 4096, &bm);
        assert_eq!(r.map(|r| r.0), Err(Errno::EINVAL));
        let (bport, raised) = back
            .bind_interdomain(Peer::Other(&mut front), fport, &bm)
            .unwrap();
        assert!(
            raised.newly_pending && raised.notify,
            "bind raises the new port"
        );
        assert!(is_pending(&bm, Width::Bits64, bport));
        let r = back.bind_interdomain(Peer::Other(&mut front), fport, &bm);
        assert_eq!(r.map(|r| r.0), Err(Errno::EINVAL), "already bound");

        assert_eq!(
            front.state(fport),
            Some(State::Interdomain {
                remote: BACK,
                remote_port: bport
            })
        );
        let s = front.status(domid::SELF, fport).unwrap();
        assert_eq!(
            (s.status, s.u0, s.u1),
            (evtchnop::STAT_INTERDOMAIN, 0, bport)
        );

        // Send both ways.
        assert_eq!(
            front.send(fport),
            Ok(SendTarget::Remote {
                dom: BACK,
                port: bport
            })
        );
        assert_eq!(
            back.send(bport),
            Ok(SendTarget::Remote {
                dom: ME,
                port: fport
            })
        );
        let raised = front.raise(fport, &fm);
        assert!(raised.newly_pending && raised.notify);
        assert!(!front.raise(fport, &fm).newly_pending, "already pending");

        // The frontend closes: its port is freed and clean, the backend's waits for it again.
        assert_eq!(front.peer_of(fport), Some(BACK));
        assert_eq!(
            front.close(fport, Peer::Other(&mut other), &fm),
            Err(Errno::EINVAL),
            "wrong peer"
        );
        assert_eq!(
            front.close(fport, Peer::SameDomain, &fm),
            Err(Errno::EINVAL)
        );
        assert_eq!(front.close(fport, Peer::Other(&mut back), &fm), Ok(()));
        assert!(!is_pending(&fm, Width::Bits64, fport));
        assert_eq!(front.state(fport), Some(State::Free));
        assert_eq!(back.state(bport), Some(State::Unbound { remote: ME }));
        assert_eq!(back.send(bport), Ok(SendTarget::Dropped));

        // The frontend can bind to the backend's now-unbound port.
        let (fport2, _) = front
            .bind_interdomain(Peer::Other(&mut back), bport, &fm)
            .unwrap();
        assert_eq!(
            back.state(bport),
            Some(State::Interdomain {
                remote: ME,
                remote_port: fport2
            })
        );
    }

    #[test]
    fn loopback_interdomain() {
        let mut t = table();
        let m = Mem::new(2);
        let a = t.alloc_unbound(ME, domid::SELF).unwrap();
        assert_eq!(t.state(a), Some(State::Unbound { remote: ME }));
        let (b, _) = t.bind_interdomain(Peer::SameDomain, a, &m).unwrap();
        assert_eq!(t.send(a), Ok(SendTarget::Local { port: b }));
        assert_eq!(t.send(b), Ok(SendTarget::Local { port: a }));
        assert_eq!(t.peer_of(a), None);
        assert_eq!(t.close(a, Peer::SameDomain, &m), Ok(()));
        assert_eq!(t.state(b), Some(State::Unbound { remote: ME }));
    }

    #[test]
    fn reset_closes_everything_asking_for_peers() {
        let mut front = table();
        let mut back = Box::new(Table::new(BACK, 1, 4095));
        let (fm, bm) = (Mem::new(2), Mem::new(1));
        front.bind_virq(virq::TIMER, 0).unwrap();
        front.bind_ipi(1).unwrap();
        let f = front.alloc_unbound(ME, BACK).unwrap();
        let (b, _) = back
            .bind_interdomain(Peer::Other(&mut front), f, &bm)
            .unwrap();
        let a = front.alloc_unbound(ME, ME).unwrap();
        front.bind_interdomain(Peer::SameDomain, a, &fm).unwrap();
        front.raise(1, &fm);

        let need = front.reset(&fm).unwrap_err();
        assert_eq!(
            need,
            NeedsPeer {
                port: f,
                remote: BACK
            }
        );
        front.close(f, Peer::Other(&mut back), &fm).unwrap();
        assert_eq!(front.reset(&fm), Ok(()));
        for p in 1..=4095 {
            assert_eq!(front.state(p), Some(State::Free), "port {p}");
            assert!(!is_pending(&fm, Width::Bits64, p));
        }
        assert_eq!(front.virq_port(0, virq::TIMER), None);
        assert_eq!(back.state(b), Some(State::Unbound { remote: ME }));
        assert_eq!(front.bind_virq(virq::TIMER, 0), Ok(1));
    }

    #[test]
    fn set_pending_follows_2l_rules() {
        let m = Mem::new(2);
        let w = Width::Bits64;
        // Unmasked: pending, selector bit of word 130/64 = 2, upcall: notify.
        let r = set_pending(&m, w, 130, 1);
        assert_eq!(
            r,
            Raised {
                newly_pending: true,
                notify: true
            }
        );
        assert_eq!(m.sel[1].load(SeqCst), 1 << 2);
        assert_eq!(m.upcall[1].load(SeqCst), 1);
        // Another port in another word: selector bit, no second notification.
        let r = set_pending(&m, w, 5, 1);
        assert!(r.newly_pending && !r.notify);
        assert_eq!(m.sel[1].load(SeqCst), (1 << 2) | 1);
        // Masked: pending only; unmask then notifies once the guest cleared its flags.
        m.test_and_set(Map::Mask, 200);
        m.upcall[1].store(0, SeqCst);
        m.sel[1].store(0, SeqCst);
        let r = set_pending(&m, w, 200, 1);
        assert!(r.newly_pending && !r.notify);
        assert_eq!(m.sel[1].load(SeqCst), 0);
        assert!(unmask(&m, w, 200, 1));
        assert_eq!(m.sel[1].load(SeqCst), 1 << 3);
        assert!(!unmask(&m, w, 200, 1), "not masked any more");
        // Unmask of a port that is not pending does nothing else.
        m.test_and_set(Map::Mask, 7);
        m.upcall[1].store(0, SeqCst);
        assert!(!unmask(&m, w, 7, 1));
        assert_eq!(m.upcall[1].load(SeqCst), 0);
    }

    #[test]
    fn set_pending_32_bit_words() {
        let m = Mem::new(1);
        let r = set_pending(&m, Width::Bits32, 70, 0);
        assert!(r.notify);
        assert_eq!(m.sel[0].load(SeqCst), 1 << 2, "word 70 / 32");
        assert_eq!(set_pending(&m, Width::Bits32, 1024, 0), Raised::default());
        assert!(!is_pending(&m, Width::Bits32, 1024));
    }

    #[test]
    fn table_unmask_and_raise_ignore_free_ports() {
        let mut t = table();
        let m = Mem::new(2);
        m.test_and_set(Map::Mask, 3);
        m.test_and_set(Map::Pending, 3);
        assert_eq!(t.unmask(3, &m), Ok(false));
        assert!(m.test(Map::Mask, 3), "free port: left masked");
        assert_eq!(t.raise(3, &m), Raised::default());
        assert_eq!(t.unmask(4096, &m), Err(Errno::EINVAL));
        let p = t.bind_ipi(1).unwrap();
        m.test_and_set(Map::Mask, p);
        assert!(t.raise(p, &m).newly_pending);
        assert_eq!(t.unmask(p, &m), Ok(true));
        assert_eq!(m.upcall[1].load(SeqCst), 1);
    }

    #[test]
    fn poll_rules() {
        let mut t = table();
        let m = Mem::new(2);
        let a = t.bind_ipi(0).unwrap();
        let b = t.bind_ipi(0).unwrap();
        assert_eq!(t.poll(&[a, b], &m), Ok(None));
        m.test_and_set(Map::Mask, b);
        t.raise(b, &m);
        assert_eq!(t.poll(&[a, b], &m), Ok(Some(b)), "masked ports count");
        assert_eq!(t.poll(&[b, 77], &m), Ok(Some(b)));
        assert_eq!(t.poll(&[77, b], &m), Err(Errno::EINVAL), "free port");
        assert_eq!(t.poll(&[5000], &m), Err(Errno::EINVAL));
        assert_eq!(t.poll(&[a; 129], &m), Err(Errno::EINVAL));
        assert_eq!(t.poll(&[a; 128], &m), Ok(None));
        assert_eq!(t.poll(&[], &m), Ok(None));
        assert_eq!(PollWait::of(&[a]), PollWait::Port(a));
        assert!(!PollWait::of(&[a]).wakes_on(b));
        assert!(PollWait::of(&[a, b]).wakes_on(99));
    }

    /// Linux's 2-level upcall handler on `vcpu`: clear upcall-pending, take the selector, and
    /// clear and count every pending unmasked port of the selected words.
    fn handle_upcall(m: &Mem, vcpu: usize, seen: &[AtomicU64]) {
        m.upcall[vcpu].store(0, SeqCst);
        let mut sel = m.sel[vcpu].swap(0, SeqCst);
        while sel != 0 {
            let w = sel.trailing_zeros() as usize;
            sel &= sel - 1;
            let mut bits = m.pending[w].load(SeqCst) & !m.mask[w].load(SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                let port = (w as u32) * 64 + b;
                if m.test_and_clear(Map::Pending, port) {
                    seen[port as usize].fetch_add(1, SeqCst);
                }
            }
        }
    }

    /// Producers raise ports while a masker masks and unmasks them and a consumer handles
    /// upcalls only when upcall-pending says so, as Linux does: every 0 -> 1 pending
    /// transition is consumed, with no event left behind once everyone stops.
    #[test]
    fn racing_set_pending_unmask_and_consumer_lose_nothing() {
        const PORTS: u32 = 4096;
        const RAISES: u32 = 200_000;
        let m = Arc::new(Mem::new(1));
        let raised: Arc<Vec<AtomicU64>> = Arc::new((0..PORTS).map(|_| AtomicU64::new(0)).collect());
        let seen: Arc<Vec<AtomicU64>> = Arc::new((0..PORTS).map(|_| AtomicU64::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let producers_done = Arc::new(AtomicU64::new(0));

        let consumer = {
            let (m, seen, stop) = (m.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(SeqCst) {
                    if m.upcall[0].load(SeqCst) != 0 {
                        handle_upcall(&m, 0, &seen);
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let masker = {
            let (m, done) = (m.clone(), producers_done.clone());
            std::thread::spawn(move || {
                let mut x = 12345u32;
                while done.load(SeqCst) < 3 {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    // Only every 8th port: the others must get through without its help.
                    let port = 8 * (1 + (x >> 8) % (PORTS / 8 - 1));
                    m.test_and_set(Map::Mask, port);
                    std::hint::spin_loop();
                    unmask(&*m, Width::Bits64, port, 0);
                }
            })
        };
        let producers: Vec<_> = (0..3u32)
            .map(|i| {
                let (m, raised, done) = (m.clone(), raised.clone(), producers_done.clone());
                std::thread::spawn(move || {
                    let mut x = i + 1;
                    for _ in 0..RAISES {
                        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        let port = 1 + (x >> 8) % (PORTS - 1);
                        if set_pending(&*m, Width::Bits64, port, 0).newly_pending {
                            raised[port as usize].fetch_add(1, SeqCst);
                        }
                    }
                    done.fetch_add(1, SeqCst);
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        masker.join().unwrap();
        // Every mask was undone through unmask: the consumer must drain everything by itself.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let left: u64 = (0..PORTS as usize)
                .map(|p| raised[p].load(SeqCst) - seen[p].load(SeqCst))
                .sum();
            if left == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{left} events lost (upcall {}, sel {:#x})",
                m.upcall[0].load(SeqCst),
                m.sel[0].load(SeqCst)
            );
            std::thread::yield_now();
        }
        stop.store(true, SeqCst);
        consumer.join().unwrap();
        let total: u64 = raised.iter().map(|r| r.load(SeqCst)).sum();
        assert!(total > 0);
        for p in 0..PORTS {
            assert!(!m.test(Map::Pending, p), "port {p} still pending");
        }
    }
}
