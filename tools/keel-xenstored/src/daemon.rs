//! The daemon's state without I/O: connections in, encoded replies and events out.
//!
//! The caller (the binary's event loop, a test, the fuzzer) adds a connection, hands it the
//! bytes it reads with [`XenStore::receive`], sends what [`XenStore::output`] gives and
//! reports it with [`XenStore::consume_output`], reads no more than [`XenStore::input_room`]
//! allows (0 while the connection has its quota of unsent replies: Xen's flow control), and
//! closes the connection when [`XenStore::should_close`] says so. Nothing a connection sends
//! can panic the daemon or affect another connection beyond the store's own semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::conn::{Connection, Peer, State, Watch};
use crate::path::resolve;
use crate::quota::Limits;
use crate::store::{event_path, Change, Tree, View};
use crate::wire::{self, Errno, Message, MsgType, PAYLOAD_MAX};
use crate::DomId;

/// Log lines kept for [`XenStore::take_log`]; later ones are dropped until it is called.
const LOG_LINES: usize = 1024;

fn push_log(log: &mut Vec<String>, line: String) {
    if log.len() < LOG_LINES {
        log.push(line);
    }
}

/// A connection's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// `DOMID_FIRST_RESERVED` (xen.h): domids from here on are special values.
pub const DOMID_FIRST_RESERVED: u32 = 0x7ff0;
/// `DOMID_SELF`.
pub const DOMID_SELF: u32 = 0x7ff0;

/// The daemon's whole state.
#[derive(Debug)]
pub struct XenStore {
    pub(crate) tree: Tree,
    pub(crate) limits: Limits,
    pub(crate) conns: BTreeMap<ConnId, Connection>,
    pub(crate) introduced: BTreeSet<DomId>,
    pub(crate) domain_conns: HashMap<DomId, ConnId>,
    next_id: u64,
    log: Vec<String>,
}

impl Default for XenStore {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl XenStore {
    /// A daemon with Xen's initial tree and the given limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            tree: Tree::new(),
            limits,
            conns: BTreeMap::new(),
            introduced: BTreeSet::new(),
            domain_conns: HashMap::new(),
            next_id: 1,
            log: Vec::new(),
        }
    }

    /// The tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether `domid` is introduced (Dom0 always is).
    pub fn is_introduced(&self, domid: DomId) -> bool {
        domid == 0 || self.introduced.contains(&domid)
    }

    /// A connection's state, if it exists.
    pub fn connection(&self, id: ConnId) -> Option<&Connection> {
        self.conns.get(&id)
    }

    /// Every connection's handle.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Messages worth logging since the last call.
    pub fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }

    fn add(&mut self, peer: Peer) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.conns.insert(id, Connection::new(peer));
        id
    }

    /// A privileged socket client: Dom0, unless its first message is the Keel handshake
    /// that makes it a domain connection.
    pub fn connect(&mut self) -> ConnId {
        self.add(Peer::Dom0 {
            may_become_domain: true,
        })
    }

    /// A Dom0 client that may not become a domain connection.
    pub fn connect_dom0(&mut self) -> ConnId {
        self.add(Peer::Dom0 {
            may_become_domain: false,
        })
    }

    /// A domain connection for introduced `domid` (what the handshake makes): ENOENT when
    /// not introduced, EISCONN when the domain has one already, EINVAL for Dom0.
    pub fn connect_domain(&mut self, domid: DomId) -> Result<ConnId, Errno> {
        self.check_domain_connect(domid)?;
        let id = self.add(Peer::Domain(domid));
        self.domain_conns.insert(domid, id);
        Ok(id)
    }

    pub(crate) fn check_domain_connect(&self, domid: DomId) -> Result<(), Errno> {
        if domid == 0 || u32::from(domid) >= DOMID_FIRST_RESERVED {
            return Err(Errno::EINVAL);
        }
        if !self.introduced.contains(&domid) {
            return Err(Errno::ENOENT);
        }
        if self.domain_conns.contains_key(&domid) {
            return Err(Errno::EISCONN);
        }
        Ok(())
    }

    /// Forgets a connection (its watches and transactions go; a domain stays introduced).
    pub fn disconnect(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            if let Peer::Domain(d) = c.peer {
                if self.domain_conns.get(&d) == Some(&id) {
                    self.domain_conns.remove(&d);
                }
            }
        }
    }

    /// Drops a connection's state now; the caller closes it.
    pub(crate) fn close(&mut self, id: ConnId, why: &str) {
        if let Some(c) = self.conns.get_mut(&id) {
            if c.state != State::Closed {
                let line = format!("connection {} (dom{}): {why}", id.0, c.domid());
                push_log(&mut self.log, line);
            }
            c.state = State::Closed;
            c.clear();
            if let Peer::Domain(d) = c.peer {
                if self.domain_conns.get(&d) == Some(&id) {
                    self.domain_conns.remove(&d);
                }
            }
        }
    }

    /// Whether the caller should close the connection now (dropped, or a refused handshake
    /// whose answer has been sent).
    pub fn should_close(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_none_or(|c| {
            c.state == State::Closed || c.state == State::Draining && c.output().is_empty()
        })
    }

    /// How many more bytes the caller may read for the connection now: 0 while it has its
    /// quota of unsent replies or is closing.
    pub fn input_room(&self, id: ConnId) -> usize {
        match self.conns.get(&id) {
            Some(c) if c.state == State::Open && c.queued_replies() < self.limits.outstanding => {
                self.limits.input_bytes.saturating_sub(c.decoder.buffered())
            }
            _ => 0,
        }
    }

    /// The next bytes to send to the connection.
    pub fn output(&self, id: ConnId) -> &[u8] {
        self.conns.get(&id).map_or(&[][..], |c| c.output())
    }

    /// Records that `n` bytes of [`XenStore::output`] were sent, and processes input that
    /// waited for room.
    pub fn consume_output(&mut self, id: ConnId, n: usize) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.consume(n);
        }
        self.process(id);
    }

    /// Takes bytes read from the connection and processes the whole requests among them
    /// (as many as the outstanding-reply quota lets through; the rest wait).
    pub fn receive(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state != State::Open {
            return;
        }
        c.decoder.push(bytes);
        if c.decoder.buffered() > self.limits.input_bytes + wire::HEADER_LEN + PAYLOAD_MAX {
            self.close(id, "sent too much without reading replies");
            return;
        }
        self.process(id);
    }

    /// Processes waiting requests of the connection.
    pub fn process(&mut self, id: ConnId) {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.state != State::Open || c.queued_replies() >= self.limits.outstanding {
                return;
            }
            match c.decoder.next_message() {
                Ok(Some(msg)) => self.handle(id, msg),
                Ok(None) => return,
                Err(e) => {
                    self.close(id, &format!("protocol error: {e}"));
                    return;
                }
            }
        }
    }

    /// Queues a message for a connection; past the output bound the connection is dropped.
    fn send(&mut self, id: ConnId, msg: Vec<u8>, reply: bool) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == State::Closed {
            return;
        }
        if c.queued_bytes() + msg.len() > self.limits.output_bytes {
            self.close(id, "output queue full (client not reading)");
            return;
        }
        c.push_out(msg, reply);
    }

    pub(crate) fn reply(&mut self, id: ConnId, req: &Message, ty: u32, payload: &[u8]) {
        let h = req.header;
        let msg = if payload.len() > PAYLOAD_MAX {
            wire::encoded(MsgType::Error as u32, h.req_id, h.tx_id, b"E2BIG\0")
        } else {
            wire::encoded(ty, h.req_id, h.tx_id, payload)
        };
        self.send(id, msg, true);
    }

    pub(crate) fn reply_error(&mut self, id: ConnId, req: &Message, e: Errno) {
        let payload = format!("{}\0", e.name());
        self.reply(id, req, MsgType::Error as u32, payload.as_bytes());
    }

    pub(crate) fn send_event(&mut self, id: ConnId, path: &str, token: &[u8]) {
        let mut payload = Vec::with_capacity(path.len() + token.len() + 2);
        payload.extend_from_slice(path.as_bytes());
        payload.push(0);
        payload.extend_from_slice(token);
        payload.push(0);
        if payload.len() > PAYLOAD_MAX {
            return; // cannot happen: both came in one request
        }
        let msg = wire::encoded(MsgType::WatchEvent as u32, 0, 0, &payload);
        self.send(id, msg, false);
    }

    /// Fires watches for committed changes: each matching watch of each open connection
    /// whose domain may read the node (or its parent) gets an event.
    pub(crate) fn fire(&mut self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut events: Vec<(ConnId, String, Vec<u8>)> = Vec::new();
        for (&id, c) in &self.conns {
            if c.state != State::Open {
                continue;
            }
            for change in changes {
                if !change.visible_to(c.domid()) {
                    continue;
                }
                for w in &c.watches {
                    if let Some(p) = event_path(&w.path, change) {
                        let shown = p.get(w.relative_prefix..).unwrap_or(p);
                        events.push((id, shown.to_string(), w.token.clone()));
                    }
                }
            }
        }
        for (id, path, token) in events {
            self.send_event(id, &path, &token);
        }
    }

    /// Runs `op` on the store as `domid` sees it, outside transactions, and fires what it
    /// changed.
    pub(crate) fn with_view<T>(
        &mut self,
        domid: DomId,
        op: impl FnOnce(&mut View) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let mut view = View::new(&mut self.tree, None, domid, &self.limits);
        let r = op(&mut view);
        let changes = view.into_changes();
        self.fire(&changes);
        r
    }

    /// Adds a watch (WATCH's work after the arguments are checked).
    pub(crate) fn add_watch(
        &mut self,
        id: ConnId,
        path: &[u8],
        token: &[u8],
    ) -> Result<Watch, Errno> {
        let c = self.conns.get_mut(&id).ok_or(Errno::EIO)?;
        let domid = c.domid();
        let r = resolve(path, domid, domid == 0, true)?;
        if c.watches
            .iter()
            .any(|w| w.path == r.full && w.token == token)
        {
            return Err(Errno::EEXIST);
        }
        if domid != 0 && c.watches.len() >= self.limits.watches {
            return Err(Errno::ENOSPC);
        }
        let w = Watch {
            path: r.full,
            token: token.to_vec(),
            relative_prefix: r.relative_prefix,
        };
        c.watches.push(w.clone());
        Ok(w)
    }

    /// INTRODUCE's work: marks the domain known and fires `@introduceDomain` when new.
    pub fn introduce(&mut self, domid: DomId) -> Result<(), Errno> {
        if domid == 0 || u32::from(domid) >= DOMID_FIRST_RESERVED {
            return Err(Errno::EINVAL);
        }
        if self.introduced.insert(domid) {
            push_log(&mut self.log, format!("dom{domid} introduced"));
            self.with_view(0, |v| {
                v.special(crate::store::SPECIALS[0], domid);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// RELEASE's work: the domain is forgotten, its connection dropped (watches and
    /// transactions with it), the nodes it owns removed and its permission entries dropped
    /// (Xen's `domain_tree_remove`), and `@releaseDomain` fires.
    pub fn release(&mut self, domid: DomId) -> Result<(), Errno> {
        if domid == 0 || u32::from(domid) >= DOMID_FIRST_RESERVED {
            return Err(Errno::EINVAL);
        }
        if !self.introduced.remove(&domid) {
            return Err(Errno::ENOENT);
        }
        if let Some(&id) = self.domain_conns.get(&domid) {
            self.close(id, "domain released");
        }
        push_log(&mut self.log, format!("dom{domid} released"));
        for root in self.tree.owned_roots(domid) {
            // Best effort: a root removed with an earlier one is simply gone.
            let _ = self.with_view(0, |v| v.rm(&root));
        }
        self.tree.strip_domain(domid);
        self.with_view(0, |v| {
            v.special(crate::store::SPECIALS[1], domid);
            Ok(())
        })
    }
}
