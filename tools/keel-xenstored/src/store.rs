//! The tree and the operations on it, directly or inside a transaction.
//!
//! Every node has a value, an ordered list of children's names, permissions and a generation:
//! the value of a global counter when the node was last created or changed (a child added or
//! removed changes the parent, as in Xen). A transaction works on an overlay of the nodes it
//! changed and records the generation of every node it looked at (or that it was absent) the
//! first time it did; committing fails with EAGAIN when any of them has changed since the
//! transaction started (or is gone, or appeared). Operations return the [`Change`]s that fire
//! watches; inside a transaction they are kept until the commit.

use std::collections::HashMap;

use crate::path::{basename, child, is_at_or_below, parent};
use crate::perms::{Access, Perms, Want};
use crate::quota::Limits;
use crate::wire::{Errno, PAYLOAD_MAX};
use crate::DomId;

/// The special watch names, which are nodes of their own (not below `/`) so that their
/// permissions can be read and set as Xen allows.
pub const SPECIALS: [&str; 2] = ["@introduceDomain", "@releaseDomain"];

/// One node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The value (any bytes).
    pub value: Vec<u8>,
    /// The children's names, in creation order.
    pub children: Vec<String>,
    /// Owner first.
    pub perms: Perms,
    /// When it last changed.
    pub gen: u64,
}

impl Node {
    fn new(value: Vec<u8>, perms: Perms) -> Self {
        Self {
            value,
            children: Vec::new(),
            perms,
            gen: 0,
        }
    }
}

/// What happened to a path, for watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Created, written or its permissions changed: fires watches at or above it.
    Node,
    /// Removed with everything below: also fires watches below it (with their own path).
    Removed,
    /// A special event (`@introduceDomain`, `@releaseDomain`) about a domain: fires watches
    /// on the name and on `<name>/<domid>`.
    Special(DomId),
}

/// One change, with the permissions that decide who may see it (Xen's `watch_permitted`: the
/// node's, before removal or before and after a permission change, and its parent's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The absolute path (or special name).
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
    /// A watcher that may read under any of these sees the event.
    pub readers: Vec<Perms>,
}

impl Change {
    /// Whether `domid` may see it.
    pub fn visible_to(&self, domid: DomId) -> bool {
        self.readers.iter().any(|p| p.allows(domid, Want::Read))
    }
}

/// The whole store outside transactions.
#[derive(Debug)]
pub struct Tree {
    nodes: HashMap<String, Node>,
    owned: HashMap<DomId, usize>,
    gen: u64,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// Xen's initial tree: `/`, `/local`, `/local/domain`, `/tool`, all owned by Dom0 with
    /// no access for others, and the two special nodes.
    pub fn new() -> Self {
        let mut t = Self {
            nodes: HashMap::new(),
            owned: HashMap::new(),
            gen: 0,
        };
        let dom0 = || Perms::new(0, Access::None);
        for (path, children) in [
            ("/", &["local", "tool"][..]),
            ("/local", &["domain"]),
            ("/local/domain", &[]),
            ("/tool", &[]),
            (SPECIALS[0], &[]),
            (SPECIALS[1], &[]),
        ] {
            let mut n = Node::new(Vec::new(), dom0());
            n.children = children.iter().map(|c| c.to_string()).collect();
            t.put(path.to_string(), n);
        }
        t
    }

    /// The node at `path`.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Nodes in the tree (special nodes included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Nodes `domid` owns.
    pub fn owned_by(&self, domid: DomId) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    /// The generation counter: the newest node's generation.
    pub fn generation(&self) -> u64 {
        self.gen
    }

    /// Every path, for checks.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    fn count(&mut self, domid: DomId, delta: isize) {
        let n = self.owned.entry(domid).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.owned.remove(&domid);
        }
    }

    fn put(&mut self, path: String, mut node: Node) {
        self.gen += 1;
        node.gen = self.gen;
        self.count(node.perms.owner(), 1);
        if let Some(old) = self.nodes.insert(path, node) {
            self.count(old.perms.owner(), -1);
        }
    }

    fn del(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            self.gen += 1;
            self.count(old.perms.owner(), -1);
        }
    }

    /// Drops `domid`'s entries (after the owner's) from every node, as Xen does when a
    /// domain goes; no watches fire. Nodes it owns are removed beforehand by the caller.
    pub fn strip_domain(&mut self, domid: DomId) {
        for node in self.nodes.values_mut() {
            if node.perms.entries()[1..].iter().any(|p| p.domid == domid) {
                node.perms = node.perms.without(domid);
            }
        }
    }

    /// The topmost nodes `domid` owns (whose parents it does not own).
    pub fn owned_roots(&self, domid: DomId) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter(|(p, n)| {
                n.perms.owner() == domid
                    && p.starts_with('/')
                    && parent(p)
                        .and_then(|pp| self.nodes.get(pp))
                        .is_none_or(|pn| pn.perms.owner() != domid)
            })
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }
}

/// A transaction's state.
#[derive(Debug)]
pub struct Transaction {
    start_gen: u64,
    overlay: HashMap<String, Option<Node>>,
    observed: HashMap<String, Option<u64>>,
    owned_delta: HashMap<DomId, isize>,
    changes: Vec<Change>,
}

impl Transaction {
    /// A transaction starting now.
    pub fn new(tree: &Tree) -> Self {
        Self {
            start_gen: tree.generation(),
            overlay: HashMap::new(),
            observed: HashMap::new(),
            owned_delta: HashMap::new(),
            changes: Vec::new(),
        }
    }

    /// Nodes it has looked at.
    pub fn touched(&self) -> usize {
        self.observed.len()
    }

    /// Applies the transaction to `tree` for `domid`: EAGAIN when something it looked at
    /// changed since it started, ENOSPC when it would take a DomU over its node quota. On
    /// success, the changes to fire.
    pub fn commit(self, tree: &mut Tree, limits: &Limits) -> Result<Vec<Change>, Errno> {
        for (path, seen) in &self.observed {
            let now = tree.get(path).map(|n| n.gen);
            if now != *seen || seen.is_some_and(|g| g > self.start_gen) {
                return Err(Errno::EAGAIN);
            }
        }
        for (&domid, &delta) in &self.owned_delta {
            if domid != 0 && delta > 0 && tree.owned_by(domid) + delta as usize > limits.nodes {
                return Err(Errno::ENOSPC);
            }
        }
        for (path, node) in self.overlay {
            match node {
                Some(n) => tree.put(path, n),
                None => tree.del(&path),
            }
        }
        Ok(self.changes)
    }
}

/// The store as one caller sees it, directly or through one of its transactions.
pub struct View<'a> {
    tree: &'a mut Tree,
    tx: Option<&'a mut Transaction>,
    domid: DomId,
    limits: &'a Limits,
    changes: Vec<Change>,
}

impl<'a> View<'a> {
    /// `domid`'s view of `tree`, inside `tx` if given.
    pub fn new(
        tree: &'a mut Tree,
        tx: Option<&'a mut Transaction>,
        domid: DomId,
        limits: &'a Limits,
    ) -> Self {
        Self {
            tree,
            tx,
            domid,
            limits,
            changes: Vec::new(),
        }
    }

    fn privileged(&self) -> bool {
        self.domid == 0
    }

    /// The changes to fire now: none inside a transaction (they wait for the commit).
    pub fn into_changes(self) -> Vec<Change> {
        match self.tx {
            Some(tx) => {
                // Kept once per path and kind, so that a transaction writing one node over
                // and over holds one change (its readers merged).
                for c in self.changes {
                    match tx
                        .changes
                        .iter_mut()
                        .find(|k| k.path == c.path && k.kind == c.kind)
                    {
                        Some(k) => {
                            for r in c.readers {
                                // Bounded: past a few lists, fewer watchers see it.
                                if k.readers.len() < 8 && !k.readers.contains(&r) {
                                    k.readers.push(r);
                                }
                            }
                        }
                        None => tx.changes.push(c),
                    }
                }
                Vec::new()
            }
            None => self.changes,
        }
    }

    /// Records a transaction's first look at `path`.
    fn observe(&mut self, path: &str) -> Result<(), Errno> {
        let privileged = self.privileged();
        if let Some(tx) = self.tx.as_deref_mut() {
            if !tx.observed.contains_key(path) {
                if !privileged && tx.observed.len() >= self.limits.transaction_nodes {
                    return Err(Errno::ENOSPC);
                }
                let gen = self.tree.get(path).map(|n| n.gen);
                tx.observed.insert(path.to_string(), gen);
            }
        }
        Ok(())
    }

    fn peek(&self, path: &str) -> Option<&Node> {
        if let Some(tx) = self.tx.as_deref() {
            if let Some(n) = tx.overlay.get(path) {
                return n.as_ref();
            }
        }
        self.tree.get(path)
    }

    fn get(&mut self, path: &str) -> Result<Option<&Node>, Errno> {
        self.observe(path)?;
        Ok(self.peek(path))
    }

    /// The node, which the caller checked is there.
    fn node(&self, path: &str) -> Result<Node, Errno> {
        self.peek(path).cloned().ok_or(Errno::EIO)
    }

    /// Stores `node`; every path given here was looked at first (so this cannot fail).
    fn put(&mut self, path: &str, node: Node) {
        if self.tx.is_some() {
            self.stage(path, Some(node));
        } else {
            self.tree.put(path.to_string(), node);
        }
    }

    fn del(&mut self, path: &str) {
        if self.tx.is_some() {
            self.stage(path, None);
        } else {
            self.tree.del(path);
        }
    }

    /// In a transaction: `path` becomes `node` (or goes) in the overlay, the owners' node
    /// counts follow, and the node's generation is observed for the conflict check.
    fn stage(&mut self, path: &str, node: Option<Node>) {
        let Some(tx) = self.tx.as_deref_mut() else {
            return;
        };
        let old = tx
            .overlay
            .get(path)
            .map(|n| n.as_ref().map(|n| n.perms.owner()))
            .unwrap_or_else(|| self.tree.get(path).map(|n| n.perms.owner()));
        if let Some(o) = old {
            *tx.owned_delta.entry(o).or_insert(0) -= 1;
        }
        if let Some(n) = &node {
            *tx.owned_delta.entry(n.perms.owner()).or_insert(0) += 1;
        }
        tx.observed
            .entry(path.to_string())
            .or_insert_with(|| self.tree.get(path).map(|n| n.gen));
        tx.overlay.insert(path.to_string(), node);
    }

    fn owned_now(&self) -> usize {
        let delta = self
            .tx
            .as_deref()
            .and_then(|tx| tx.owned_delta.get(&self.domid).copied())
            .unwrap_or(0);
        self.tree.owned_by(self.domid).saturating_add_signed(delta)
    }

    /// Whether `path` exists and allows `want`: Ok(true) there, Ok(false) missing (ENOENT
    /// for the caller to give or not), EACCES when not allowed. For a missing node the
    /// nearest existing ancestor decides between ENOENT and EACCES, so that a DomU learns
    /// nothing of what it may not read (Xen's `errno_from_parents`).
    fn check(&mut self, path: &str, want: Want) -> Result<bool, Errno> {
        let domid = self.domid;
        if let Some(n) = self.get(path)? {
            return if n.perms.allows(domid, want) {
                Ok(true)
            } else {
                Err(Errno::EACCES)
            };
        }
        let want = if want == Want::Owner {
            Want::Write
        } else {
            want
        };
        let mut cur = path;
        while let Some(p) = parent(cur) {
            if let Some(n) = self.get(p)? {
                return if n.perms.allows(domid, want) {
                    Ok(false)
                } else {
                    Err(Errno::EACCES)
                };
            }
            cur = p;
        }
        Ok(false)
    }

    fn existing(&mut self, path: &str, want: Want) -> Result<Node, Errno> {
        if self.check(path, want)? {
            self.node(path)
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn readers(&self, path: &str, node: &Node) -> Vec<Perms> {
        let mut v = vec![node.perms.clone()];
        if let Some(pn) = parent(path).and_then(|p| self.peek(p)) {
            v.push(pn.perms.clone());
        }
        v
    }

    fn changed(&mut self, path: &str, kind: ChangeKind, mut readers: Vec<Perms>) {
        if let Some(n) = self.peek(path) {
            readers.extend(self.readers(path, n));
        }
        self.changes.push(Change {
            path: path.to_string(),
            kind,
            readers,
        });
    }

    /// READ.
    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, Errno> {
        Ok(self.existing(path, Want::Read)?.value)
    }

    /// DIRECTORY: the children's names.
    pub fn directory(&mut self, path: &str) -> Result<Vec<String>, Errno> {
        Ok(self.existing(path, Want::Read)?.children)
    }

    /// DIRECTORY_PART: the generation and the children from byte `offset` of the list, as
    /// much as fits a payload; the list ends with an empty name once it is complete.
    pub fn directory_part(&mut self, path: &str, offset: usize) -> Result<Vec<u8>, Errno> {
        let node = self.existing(path, Want::Read)?;
        let mut out = format!("{}\0", node.gen).into_bytes();
        let mut list = Vec::new();
        for c in &node.children {
            list.extend_from_slice(c.as_bytes());
            list.push(0);
        }
        let mut at = offset.min(list.len());
        // Whole names only, from the first name boundary at or after the offset.
        while at > 0 && at < list.len() && list[at - 1] != 0 {
            at += 1;
        }
        while at < list.len() {
            let end = at + list[at..].iter().position(|&b| b == 0).unwrap_or(0) + 1;
            if out.len() + (end - at) + 1 > PAYLOAD_MAX {
                return Ok(out);
            }
            out.extend_from_slice(&list[at..end]);
            at = end;
        }
        out.push(0);
        Ok(out)
    }

    /// GET_PERMS (special names too).
    pub fn get_perms(&mut self, path: &str) -> Result<Perms, Errno> {
        Ok(self.existing(path, Want::Read)?.perms)
    }

    /// WRITE: creates missing parents, which inherit their parent's permissions (a DomU
    /// owning what it creates).
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let exists = self.check(path, Want::Write)?;
        if !self.privileged() && value.len() > self.limits.node_size {
            return Err(Errno::ENOSPC);
        }
        if exists {
            let mut n = self.node(path)?;
            n.value = value.to_vec();
            self.put(path, n);
        } else {
            self.create(path, value)?;
        }
        self.changed(path, ChangeKind::Node, Vec::new());
        Ok(())
    }

    /// MKDIR: creates the node (and parents) with empty values unless it exists.
    pub fn mkdir(&mut self, path: &str) -> Result<(), Errno> {
        if !self.check(path, Want::Write)? {
            self.create(path, b"")?;
            self.changed(path, ChangeKind::Node, Vec::new());
        }
        Ok(())
    }

    fn create(&mut self, path: &str, value: &[u8]) -> Result<(), Errno> {
        let mut missing = vec![path.to_string()];
        let mut top = path;
        let existing = loop {
            let p = parent(top).ok_or(Errno::EINVAL)?;
            if self.get(p)?.is_some() {
                break p.to_string();
            }
            missing.push(p.to_string());
            top = p;
        };
        if !self.privileged() && self.owned_now() + missing.len() > self.limits.nodes {
            return Err(Errno::ENOSPC);
        }
        for p in &missing {
            self.observe(p)?;
        }
        let mut above = existing;
        for p in missing.iter().rev() {
            let mut pn = self.node(&above)?;
            pn.children.push(basename(p).to_string());
            let perms = if self.privileged() {
                pn.perms.clone()
            } else {
                pn.perms.with_owner(self.domid)
            };
            self.put(&above, pn);
            let v = if p == path { value } else { b"" };
            self.put(p, Node::new(v.to_vec(), perms));
            above = p.clone();
        }
        Ok(())
    }

    /// RM: removes the node and everything below; fine if it is missing but its parent is
    /// there; never the root.
    pub fn rm(&mut self, path: &str) -> Result<(), Errno> {
        if !self.check(path, Want::Write)? {
            let p = parent(path).ok_or(Errno::EINVAL)?;
            return match self.get(p)? {
                Some(_) => Ok(()),
                None => Err(Errno::ENOENT),
            };
        }
        let up = parent(path).ok_or(Errno::EINVAL)?.to_string();
        self.get(&up)?.ok_or(Errno::EIO)?;
        let mut doomed = vec![path.to_string()];
        let mut i = 0;
        while i < doomed.len() {
            let n = self.node(&doomed[i])?;
            for c in &n.children {
                let cp = child(&doomed[i], c);
                self.observe(&cp)?;
                doomed.push(cp);
            }
            i += 1;
        }
        // Fire while the permissions can still be seen (Xen's `delnode_sub`).
        self.changed(path, ChangeKind::Removed, Vec::new());
        let mut pn = self.node(&up)?;
        let name = basename(path);
        pn.children.retain(|c| c != name);
        self.put(&up, pn);
        for p in &doomed {
            self.del(p);
        }
        Ok(())
    }

    /// SET_PERMS: the owner (or Dom0) sets the list; only Dom0 may change the owner.
    pub fn set_perms(&mut self, path: &str, perms: Perms) -> Result<(), Errno> {
        if !self.privileged() && perms.entries().len() > self.limits.perms {
            return Err(Errno::ENOSPC);
        }
        let mut n = self.existing(path, Want::Owner)?;
        if !self.privileged() && perms.owner() != n.perms.owner() {
            return Err(Errno::EPERM);
        }
        let old = std::mem::replace(&mut n.perms, perms);
        self.put(path, n);
        self.changed(path, ChangeKind::Node, vec![old]);
        Ok(())
    }

    /// Fires a special event (no node changes).
    pub fn special(&mut self, name: &str, domid: DomId) {
        let readers = self
            .tree
            .get(name)
            .map(|n| vec![n.perms.clone()])
            .unwrap_or_default();
        self.changes.push(Change {
            path: name.to_string(),
            kind: ChangeKind::Special(domid),
            readers,
        });
    }
}

/// Whether a watch on `watched` fires for `change`, and with which (absolute) path.
pub fn event_path<'c>(watched: &'c str, change: &'c Change) -> Option<&'c str> {
    match change.kind {
        ChangeKind::Node => is_at_or_below(&change.path, watched).then_some(&change.path),
        ChangeKind::Removed => {
            if is_at_or_below(&change.path, watched) {
                Some(&change.path)
            } else if is_at_or_below(watched, &change.path) {
                Some(watched)
            } else {
                None
            }
        }
        ChangeKind::Special(domid) => {
            if watched == change.path {
                return Some(watched);
            }
            let rest = watched
                .strip_prefix(change.path.as_str())?
                .strip_prefix('/')?;
            (crate::path::parse_domid(rest.as_bytes()) == Some(domid)).then_some(watched)
        }
    }
}
