//! One request in, its reply (and the events it causes) out: the payload formats and the
//! rules of docs/misc/xenstore.txt, with Xen's xenstored's error choices.

use crate::conn::{Peer, State};
use crate::daemon::{ConnId, XenStore, DOMID_FIRST_RESERVED, DOMID_SELF};
use crate::path::{domain_path, parse_domid, resolve};
use crate::perms::Perms;
use crate::store::{Transaction, View};
use crate::wire::{one_arg, split_strings, Errno, Message, MsgType};
use crate::DomId;

/// What a request's handler gives back.
enum Answer {
    /// A reply of the request's type with this payload.
    Reply(Vec<u8>),
    /// `OK\0`.
    Ok,
    /// `OK\0`, then the new watch's first event (path as shown, token).
    Watched(String, Vec<u8>),
}

const OK: &[u8] = b"OK\0";

/// A request's answer and the transaction it ran in, if that goes on.
struct Outcome {
    answer: Result<Answer, Errno>,
    tx: Option<Transaction>,
}

/// Types only Dom0 may send (Xen's `XS_FLAG_PRIV`).
fn dom0_only(t: MsgType) -> bool {
    use MsgType::*;
    matches!(
        t,
        Control
            | Introduce
            | Release
            | IsDomainIntroduced
            | Resume
            | SetTarget
            | SetFeature
            | GetQuota
            | SetQuota
    )
}

fn arg_domid(payload: &[u8]) -> Result<u32, Errno> {
    one_arg(payload)
        .and_then(parse_domid)
        .map(u32::from)
        .ok_or(Errno::EINVAL)
}

fn real_domid(d: u32) -> Result<DomId, Errno> {
    if d == 0 || d >= DOMID_FIRST_RESERVED {
        return Err(Errno::EINVAL);
    }
    DomId::try_from(d).map_err(|_| Errno::EINVAL)
}

impl XenStore {
    /// Handles one request of connection `id`.
    pub(crate) fn handle(&mut self, id: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let domid = c.domid();
        if let Peer::Dom0 { may_become_domain } = &mut c.peer {
            let first = std::mem::replace(may_become_domain, false);
            if first && msg.msg_type() == Some(MsgType::KeelDomainConnect) {
                self.handshake(id, &msg);
                return;
            }
        }
        let Some(ty) = msg.msg_type() else {
            return self.reply_error(id, &msg, Errno::ENOSYS);
        };
        if domid != 0 && dom0_only(ty) {
            return self.reply_error(id, &msg, Errno::EACCES);
        }
        let tx_id = msg.header.tx_id;
        let tx = if tx_id == 0 || matches!(ty, MsgType::Watch | MsgType::Unwatch) {
            None
        } else {
            match self
                .conns
                .get_mut(&id)
                .and_then(|c| c.transactions.remove(&tx_id))
            {
                Some(t) => Some(t),
                None => return self.reply_error(id, &msg, Errno::ENOENT),
            }
        };
        let r = self.dispatch(id, domid, ty, &msg, tx);
        let r = self.put_back(id, tx_id, r);
        match r.answer {
            Ok(Answer::Reply(p)) => self.reply(id, &msg, ty as u32, &p),
            Ok(Answer::Ok) => self.reply(id, &msg, ty as u32, OK),
            Ok(Answer::Watched(path, token)) => {
                self.reply(id, &msg, ty as u32, OK);
                // A new watch fires once at once, after its acknowledgement (xenstore.txt).
                self.send_event(id, &path, &token);
            }
            Err(e) => self.reply_error(id, &msg, e),
        }
    }

    fn handshake(&mut self, id: ConnId, msg: &Message) {
        let r = arg_domid(&msg.payload)
            .and_then(real_domid)
            .and_then(|d| self.check_domain_connect(d).map(|()| d));
        match r {
            Ok(d) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.peer = Peer::Domain(d);
                }
                self.domain_conns.insert(d, id);
                self.reply(id, msg, MsgType::KeelDomainConnect as u32, OK);
            }
            Err(e) => {
                self.reply_error(id, msg, e);
                if let Some(c) = self.conns.get_mut(&id) {
                    c.state = State::Draining;
                }
            }
        }
    }

    /// Runs a request with the transaction it names, taken out of the connection; gives
    /// the transaction back unless the request ended it.
    fn dispatch(
        &mut self,
        id: ConnId,
        domid: DomId,
        ty: MsgType,
        msg: &Message,
        mut tx: Option<Transaction>,
    ) -> Outcome {
        let p = &msg.payload[..];
        let answer = match ty {
            MsgType::TransactionStart => {
                if tx.is_some() {
                    Err(Errno::EBUSY)
                } else {
                    self.transaction_start(id, domid)
                }
            }
            MsgType::TransactionEnd => {
                let commit = match one_arg(p) {
                    Some(b"T") => Some(true),
                    Some(b"F") => Some(false),
                    _ => None,
                };
                match (commit, tx.take()) {
                    (None, t) => {
                        tx = t;
                        Err(Errno::EINVAL)
                    }
                    (Some(_), None) => Err(Errno::ENOENT),
                    (Some(false), Some(_)) => Ok(Answer::Ok),
                    (Some(true), Some(t)) => match t.commit(&mut self.tree, &self.limits) {
                        Ok(changes) => {
                            self.fire(&changes);
                            Ok(Answer::Ok)
                        }
                        Err(e) => Err(e),
                    },
                }
            }
            MsgType::Watch => {
                let s = split_strings(p);
                if s.len() != 2 || !p.ends_with(b"\0") {
                    Err(Errno::EINVAL)
                } else {
                    self.add_watch(id, s[0], s[1]).map(|w| {
                        let shown = w.path.get(w.relative_prefix..).unwrap_or(&w.path);
                        Answer::Watched(shown.to_string(), w.token)
                    })
                }
            }
            MsgType::Unwatch => {
                let s = split_strings(p);
                if s.len() != 2 || !p.ends_with(b"\0") {
                    Err(Errno::EINVAL)
                } else {
                    self.unwatch(id, domid, s[0], s[1]).map(|()| Answer::Ok)
                }
            }
            MsgType::ResetWatches => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.watches.clear();
                    c.transactions.clear();
                }
                tx = None; // the request's own transaction goes too
                Ok(Answer::Ok)
            }
            MsgType::Introduce => {
                // <domid>|<gfn>|<evtchn>|: Keel needs only the domid (the ring arrives
                // through a domain connection), so the others are not checked.
                match split_strings(p).first().and_then(|d| parse_domid(d)) {
                    Some(d) => self.introduce(d).map(|()| Answer::Ok),
                    None => Err(Errno::EINVAL),
                }
            }
            MsgType::Release => {
                // Only Dom0 gets here, so the connection released is never this one.
                arg_domid(p)
                    .and_then(real_domid)
                    .and_then(|d| self.release(d))
                    .map(|()| Answer::Ok)
            }
            MsgType::Resume => match arg_domid(p).and_then(real_domid) {
                Ok(d) if self.introduced.contains(&d) => Ok(Answer::Ok),
                Ok(_) => Err(Errno::ENOENT),
                Err(e) => Err(e),
            },
            MsgType::IsDomainIntroduced => arg_domid(p).map(|d| {
                let yes =
                    d == DOMID_SELF || DomId::try_from(d).is_ok_and(|d| self.is_introduced(d));
                Answer::Reply(if yes { b"T\0" } else { b"F\0" }.to_vec())
            }),
            MsgType::GetDomainPath => {
                arg_domid(p).map(|d| Answer::Reply(format!("{}\0", domain_path(d)).into_bytes()))
            }
            MsgType::Read
            | MsgType::Directory
            | MsgType::DirectoryPart
            | MsgType::GetPerms
            | MsgType::Write
            | MsgType::Mkdir
            | MsgType::Rm
            | MsgType::SetPerms => self.node_op(domid, ty, p, tx.as_mut()),
            MsgType::Control
            | MsgType::SetTarget
            | MsgType::GetFeature
            | MsgType::SetFeature
            | MsgType::GetQuota
            | MsgType::SetQuota
            | MsgType::WatchEvent
            | MsgType::Error
            | MsgType::KeelDomainConnect => Err(Errno::ENOSYS),
        };
        Outcome { answer, tx }
    }

    /// Gives a request's transaction back to its connection, if that is still open (a
    /// request can get its own connection dropped, by overflowing its output with events).
    fn put_back(&mut self, id: ConnId, tx_id: u32, r: Outcome) -> Outcome {
        if let (Some(t), Some(c)) = (r.tx, self.conns.get_mut(&id)) {
            if c.state == State::Open {
                c.transactions.insert(tx_id, t);
            }
        }
        Outcome {
            answer: r.answer,
            tx: None,
        }
    }

    fn unwatch(
        &mut self,
        id: ConnId,
        domid: DomId,
        path: &[u8],
        token: &[u8],
    ) -> Result<(), Errno> {
        let full = resolve(path, domid, domid == 0, true)?.full;
        let c = self.conns.get_mut(&id).ok_or(Errno::EIO)?;
        let at = c
            .watches
            .iter()
            .position(|w| w.path == full && w.token == token)
            .ok_or(Errno::ENOENT)?;
        c.watches.remove(at);
        Ok(())
    }

    fn transaction_start(&mut self, id: ConnId, domid: DomId) -> Result<Answer, Errno> {
        let limit = self.limits.transactions;
        let c = self.conns.get_mut(&id).ok_or(Errno::EIO)?;
        if domid != 0 && c.transactions.len() >= limit {
            return Err(Errno::ENOSPC);
        }
        let tx_id = c.new_tx_id();
        c.transactions.insert(tx_id, Transaction::new(&self.tree));
        Ok(Answer::Reply(format!("{tx_id}\0").into_bytes()))
    }

    /// The operations on one node, directly or in a transaction.
    fn node_op(
        &mut self,
        domid: DomId,
        ty: MsgType,
        p: &[u8],
        tx: Option<&mut Transaction>,
    ) -> Result<Answer, Errno> {
        let privileged = domid == 0;
        let (path_raw, rest) = match ty {
            MsgType::Write | MsgType::SetPerms | MsgType::DirectoryPart => {
                let nul = p.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
                (&p[..nul], &p[nul + 1..])
            }
            _ => (one_arg(p).ok_or(Errno::EINVAL)?, &[][..]),
        };
        let special_ok = matches!(ty, MsgType::GetPerms | MsgType::SetPerms);
        let path = resolve(path_raw, domid, privileged, special_ok)?.full;
        let in_tx = tx.is_some();
        let mut view = View::new(&mut self.tree, tx, domid, &self.limits);
        let r = run_node_op(&mut view, ty, &path, rest);
        let changes = view.into_changes();
        debug_assert!(!in_tx || changes.is_empty());
        self.fire(&changes);
        r
    }
}

fn run_node_op(view: &mut View, ty: MsgType, path: &str, rest: &[u8]) -> Result<Answer, Errno> {
    Ok(match ty {
        MsgType::Read => Answer::Reply(view.read(path)?),
        MsgType::Directory => {
            let mut out = Vec::new();
            for c in view.directory(path)? {
                out.extend_from_slice(c.as_bytes());
                out.push(0);
            }
            Answer::Reply(out)
        }
        MsgType::DirectoryPart => {
            let off = one_arg(rest)
                .and_then(|o| std::str::from_utf8(o).ok())
                .and_then(|o| o.parse::<usize>().ok())
                .ok_or(Errno::EINVAL)?;
            Answer::Reply(view.directory_part(path, off)?)
        }
        MsgType::GetPerms => Answer::Reply(view.get_perms(path)?.to_wire()),
        MsgType::Write => {
            view.write(path, rest)?;
            Answer::Ok
        }
        MsgType::Mkdir => {
            view.mkdir(path)?;
            Answer::Ok
        }
        MsgType::Rm => {
            view.rm(path)?;
            Answer::Ok
        }
        MsgType::SetPerms => {
            if !rest.ends_with(b"\0") {
                return Err(Errno::EINVAL);
            }
            let perms = Perms::parse(&split_strings(rest))?;
            view.set_perms(path, perms)?;
            Answer::Ok
        }
        _ => return Err(Errno::ENOSYS),
    })
}
