// SPDX-License-Identifier: GPL-2.0
//! The live domains by domain id. The registry holds a counted reference on each domain for
//! as long as any of its fds (the domain's or a vCPU's) is open, and hands out counted
//! references to them ([`all`]), so that a domain found here
//! stays alive while its finder uses it.

use kernel::{prelude::*, sync::Arc};

use super::Domain;

/// The live domains.
struct Registry {
    next_domid: u32,
    /// Live domains, in domid order.
    list: KVec<Arc<Domain>>,
}

kernel::sync::global_lock! {
    // SAFETY: Initialized by `Registration::new` at module load, before `/dev/keel` exists.
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

/// The highest domain id: Xen's ids for domains are 1..=0x7fef (0 is Dom0; 0x7ff0 and up
/// are reserved: DOMID_SELF, DOMID_IO, ...). Ids are handed out in turn and wrap around,
/// skipping live ones.
pub(super) const MAX_DOMID: u32 = 0x7fef;

/// A new domain id: `ENOSPC` when every id is live.
pub(super) fn next_domid() -> Result<u32> {
    let mut reg = REGISTRY.lock();
    for _ in 0..MAX_DOMID {
        let id = reg.next_domid;
        reg.next_domid = if id >= MAX_DOMID { 1 } else { id + 1 };
        if !reg.list.iter().any(|d| d.domid == id) {
            return Ok(id);
        }
    }
    Err(ENOSPC)
}

/// Registers a domain (its first fd is about to be made), in domid order.
pub(super) fn insert(domain: Arc<Domain>) -> Result {
    let mut reg = REGISTRY.lock();
    let at = reg
        .list
        .iter()
        .position(|d| d.domid > domain.domid)
        .unwrap_or(reg.list.len());
    // Room first, so that placing it cannot fail.
    reg.list.reserve(1, GFP_KERNEL)?;
    reg.list
        .insert_within_capacity(at, domain)
        .map_err(|_| ENOMEM)?;
    Ok(())
}

/// Unregisters the domain `domid` (its last fd was closed).
pub(super) fn remove(domid: u32) {
    // Dropped after the lock: the domain's drop may free its memory.
    let gone = {
        let mut reg = REGISTRY.lock();
        let at = reg.list.iter().position(|d| d.domid == domid);
        at.map(|i| reg.list.remove(i))
    };
    drop(gone);
}

/// Whether domain `domid` exists: Dom0 (0) or a live DomU.
pub(crate) fn exists(domid: u16) -> bool {
    domid == 0
        || REGISTRY
            .lock()
            .list
            .iter()
            .any(|d| d.domid == u32::from(domid))
}

/// Counted references to the first `max` live domains, in domid order, and how many are
/// live.
pub(super) fn all(max: usize) -> Result<(KVec<Arc<Domain>>, usize)> {
    let reg = REGISTRY.lock();
    let mut out = KVec::with_capacity(max.min(reg.list.len()), GFP_KERNEL)?;
    for d in reg.list.iter().take(max) {
        out.push(d.clone(), GFP_KERNEL)?;
    }
    Ok((out, reg.list.len()))
}
