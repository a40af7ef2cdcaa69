//! Tests of the daemon through its message interface: each request goes in encoded, the
//! replies and events come out encoded, as on a socket.

mod ops;
mod perms;
mod quota;
mod tx;
mod watch;

use crate::wire::{self, Decoder, Message, MsgType};
use crate::{ConnId, Errno, Limits, XenStore};

/// What one request produced on its connection.
#[derive(Debug)]
pub struct Answer {
    /// The reply's type and payload, or the error.
    pub reply: Result<Vec<u8>, Errno>,
    /// Events queued before and after the reply, as (path, token).
    pub events: Vec<(String, String)>,
}

pub struct Harness {
    pub xs: XenStore,
    pub dom0: ConnId,
    next_req: u32,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let mut xs = XenStore::new(limits);
        let dom0 = xs.connect_dom0();
        Self {
            xs,
            dom0,
            next_req: 1,
        }
    }

    /// Introduces `domid` with a home as libxl makes it (`n0,r<domid>`, owned by Dom0) and
    /// `data` owned by the DomU, and connects it.
    pub fn domu(&mut self, domid: u16) -> ConnId {
        let d0 = self.dom0;
        self.ok(d0, MsgType::Introduce, 0, &format!("{domid}\x000\x001\0"));
        let home = format!("/local/domain/{domid}");
        self.ok(d0, MsgType::Mkdir, 0, &format!("{home}\0"));
        self.ok(d0, MsgType::SetPerms, 0, &format!("{home}\0n0\0r{domid}\0"));
        self.ok(d0, MsgType::Mkdir, 0, &format!("{home}/data\0"));
        self.ok(
            d0,
            MsgType::SetPerms,
            0,
            &format!("{home}/data\0n{domid}\0"),
        );
        let id = self.xs.connect_domain(domid).expect("introduced");
        self.drain(d0);
        id
    }

    /// Everything queued for `id`, decoded, and marked sent.
    pub fn drain(&mut self, id: ConnId) -> Vec<Message> {
        let mut d = Decoder::new();
        loop {
            let out = self.xs.output(id).to_vec();
            if out.is_empty() {
                break;
            }
            d.push(&out);
            self.xs.consume_output(id, out.len());
        }
        let mut v = Vec::new();
        while let Some(m) = d.next_message().expect("the daemon sends valid messages") {
            v.push(m);
        }
        assert_eq!(d.buffered(), 0, "a partial message was queued");
        v
    }

    /// Events queued for `id`.
    pub fn events(&mut self, id: ConnId) -> Vec<(String, String)> {
        split(self.drain(id), None).events
    }

    pub fn raw(&mut self, id: ConnId, ty: u32, tx: u32, payload: &[u8]) -> Answer {
        let req = self.next_req;
        self.next_req += 1;
        self.xs.receive(id, &wire::encoded(ty, req, tx, payload));
        let msgs = self.drain(id);
        split(msgs, Some((ty, req, tx)))
    }

    pub fn req(&mut self, id: ConnId, ty: MsgType, tx: u32, payload: &str) -> Answer {
        self.raw(id, ty as u32, tx, payload.as_bytes())
    }

    /// A request that must succeed; its reply payload.
    pub fn ok(&mut self, id: ConnId, ty: MsgType, tx: u32, payload: &str) -> Vec<u8> {
        let a = self.req(id, ty, tx, payload);
        a.reply
            .unwrap_or_else(|e| panic!("{ty:?} {payload:?} failed: {e}"))
    }

    /// A request that must fail; its error.
    pub fn err(&mut self, id: ConnId, ty: MsgType, tx: u32, payload: &str) -> Errno {
        match self.req(id, ty, tx, payload).reply {
            Ok(p) => panic!("{ty:?} {payload:?} succeeded: {p:?}"),
            Err(e) => e,
        }
    }

    pub fn read(&mut self, id: ConnId, path: &str) -> Result<Vec<u8>, Errno> {
        self.req(id, MsgType::Read, 0, &format!("{path}\0")).reply
    }

    pub fn write(&mut self, id: ConnId, path: &str, value: &str) -> Result<Vec<u8>, Errno> {
        self.req(id, MsgType::Write, 0, &format!("{path}\0{value}"))
            .reply
    }

    pub fn watch(&mut self, id: ConnId, path: &str, token: &str) {
        self.ok(id, MsgType::Watch, 0, &format!("{path}\0{token}\0"));
    }

    pub fn tx_start(&mut self, id: ConnId) -> u32 {
        let p = self.ok(id, MsgType::TransactionStart, 0, "\0");
        std::str::from_utf8(p.strip_suffix(b"\0").expect("NUL"))
            .expect("ASCII")
            .parse()
            .expect("a number")
    }
}

/// Splits a connection's output into the reply to `req` (type, req_id, tx_id) and events.
fn split(msgs: Vec<Message>, req: Option<(u32, u32, u32)>) -> Answer {
    let mut reply = None;
    let mut events = Vec::new();
    for m in msgs {
        if m.header.ty == MsgType::WatchEvent as u32 {
            assert_eq!((m.header.req_id, m.header.tx_id), (0, 0));
            let s = wire::split_strings(&m.payload);
            assert_eq!(s.len(), 2, "event payload {:?}", m.payload);
            assert!(m.payload.ends_with(b"\0"));
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
            events.push((text(s[0]), text(s[1])));
            continue;
        }
        let (ty, req_id, tx_id) = req.expect("no request, yet a reply");
        assert!(reply.is_none(), "two replies");
        assert_eq!((m.header.req_id, m.header.tx_id), (req_id, tx_id));
        reply = Some(if m.header.ty == MsgType::Error as u32 {
            assert!(m.payload.ends_with(b"\0"));
            Err(Errno::from_name(&m.payload).expect("a known error name"))
        } else {
            assert_eq!(m.header.ty, ty);
            Ok(m.payload)
        });
    }
    Answer {
        reply: match req {
            Some(_) => reply.expect("no reply"),
            None => Ok(Vec::new()),
        },
        events,
    }
}

pub fn ev(path: &str, token: &str) -> (String, String) {
    (path.to_string(), token.to_string())
}
