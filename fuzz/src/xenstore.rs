//! The `xenstore` target: the XenStore daemon's connection logic (`keel_xenstored::XenStore`),
//! in memory, fed message streams from Dom0, two DomUs and a socket client that may turn
//! itself into a domain connection.
//!
//! Inputs mix blind bytes with structure-aware requests (every message type, unknown ones,
//! transaction ids that exist or not, paths relative, absolute, special, foreign, malformed
//! or too long, values up to the quota and past it), cut into random pieces, with output
//! drained partly, fully or not at all (so flow control and the output bound engage), and
//! domain connections dropped and made again. After every step: the output of every
//! connection decodes as well-formed messages (ERROR with a known errno name, WATCH_EVENT with
//! ids 0 and two strings), no other DomU receives the value DomU 2 keeps private, no DomU
//! owns more nodes than its quota, and the tree is consistent (every node's parent lists it,
//! every child listed exists). A panic is a finding too.

use keel_xenstored::wire::{self, Decoder, MsgType, PAYLOAD_MAX};
use keel_xenstored::{ConnId, Errno, Limits, XenStore};
use rand::seq::IndexedRandom;
use rand::Rng as _;

use crate::{Finding, Rng};

/// What DomU 2 keeps at `data/private` (perms `n2`); DomU 1 must never see it. No generated
/// payload contains it.
const SECRET: &[u8] = b"Kx9-private-value-of-domain-2";

const TYPES: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    26,
    27,
    0x4b45,
    0xffff,
    u32::MAX,
];

/// Path components; `private` names DomU 2's private node, which the DomUs try to reach
/// (but never SET_PERMS, through which DomU 2 could rightly share it).
const NAMES: &[&str] = &[
    "data", "a", "b", "c", "state", "device", "x-1", "y_2", "@", "private",
];

const PREFIXES: &[&str] = &[
    "",
    "/",
    "/local/domain/1/",
    "/local/domain/2/",
    "/local/domain/2/data/",
    "/local/domain/0/",
    "/tool/",
    "/local/",
];

/// A fuzz harness around one daemon.
struct Harness {
    xs: XenStore,
    dom0: ConnId,
    /// DomU 1 and DomU 2's connections (`None` while dropped).
    domu: [Option<ConnId>; 2],
    /// A socket-style client: Dom0 unless its first message is the handshake.
    socket: ConnId,
    /// Transaction ids seen in replies, reused in requests.
    tx_ids: Vec<u32>,
    /// Decoders of each connection's output (messages may be drained in pieces).
    decoders: Vec<(ConnId, Decoder)>,
}

/// A path; Dom0's stay out of the DomUs' homes, where what it creates would count against
/// their quotas (as in Xen) and blur the quota check.
fn path(rng: &mut Rng, dom0: bool) -> Vec<u8> {
    match rng.random_range(0..12) {
        0 => b"@releaseDomain".to_vec(),
        1 => b"@introduceDomain".to_vec(),
        2 => {
            // Malformed.
            let bad: &[&[u8]] = &[b"", b"//", b"/a/", b"/a b", b"a//b", b"/\xff", b"/a\0b"];
            bad.choose(rng).copied().unwrap_or(b"").to_vec()
        }
        3 => {
            // Long: around the relative and absolute limits.
            let n = [2040, 2049, 3060, 3073, 4000]
                .choose(rng)
                .copied()
                .unwrap_or(10);
            let mut p = b"/local/domain/1/".to_vec();
            p.resize(n, b'a');
            p
        }
        _ => {
            let mut p = PREFIXES.choose(rng).copied().unwrap_or("").to_string();
            if dom0 && p.starts_with("/local/domain/") && !p.starts_with("/local/domain/0") {
                p = "/tool/".to_string();
            }
            for i in 0..rng.random_range(1..4) {
                if i > 0 {
                    p.push('/');
                }
                p.push_str(NAMES.choose(rng).copied().unwrap_or("a"));
            }
            p.into_bytes()
        }
    }
}

fn value(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.random_range(0..8) {
        0 => rng.random_range(2040..2060),
        1 => rng.random_range(3000..4200),
        _ => rng.random_range(0..12),
    };
    (0..n).map(|_| rng.random_range(b'0'..=b'z')).collect()
}

/// A SET_PERMS list; Dom0's keep itself the owner (giving a DomU nodes would count against
/// its quota, as in Xen).
fn perms(rng: &mut Rng, dom0: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..rng.random_range(0..8) {
        let letter = *b"nrwbx".choose(rng).unwrap_or(&b'n');
        let dom = if dom0 && i == 0 {
            0
        } else {
            [0u32, 1, 2, 3, 65535, 70000]
                .choose(rng)
                .copied()
                .unwrap_or(0)
        };
        v.extend_from_slice(format!("{}{dom}\0", letter as char).as_bytes());
    }
    v
}

impl Harness {
    fn new(rng: &mut Rng) -> Result<Self, Finding> {
        let limits = Limits {
            nodes: rng.random_range(3..30),
            transaction_nodes: rng.random_range(4..64),
            watches: rng.random_range(1..8),
            transactions: rng.random_range(1..4),
            output_bytes: rng.random_range(256..64 << 10),
            outstanding: rng.random_range(1..25),
            ..Limits::default()
        };
        let mut xs = XenStore::new(limits);
        let dom0 = xs.connect_dom0();
        let socket = xs.connect();
        let mut h = Self {
            xs,
            dom0,
            domu: [None, None],
            socket,
            tx_ids: vec![0, 1, 2],
            decoders: Vec::new(),
        };
        // Homes as libxl makes them, and DomU 2's private value.
        for d in [1, 2] {
            let home = format!("/local/domain/{d}");
            for (ty, payload) in [
                (MsgType::Introduce, format!("{d}\0 0\0 1\0")),
                (MsgType::Mkdir, format!("{home}/data\0")),
                (MsgType::SetPerms, format!("{home}\0n0\0r{d}\0")),
                (MsgType::SetPerms, format!("{home}/data\0n{d}\0")),
            ] {
                h.setup(ty, payload.as_bytes())?;
            }
        }
        let mut secret = b"/local/domain/2/data/private\0".to_vec();
        secret.extend_from_slice(SECRET);
        h.setup(MsgType::Write, &secret)?;
        h.setup(MsgType::SetPerms, b"/local/domain/2/data/private\0n2\0")?;
        for i in 0..2 {
            h.domu[i] = h.xs.connect_domain(i as u16 + 1).ok();
        }
        Ok(h)
    }

    /// A Dom0 request that must succeed.
    fn setup(&mut self, ty: MsgType, payload: &[u8]) -> Result<(), Finding> {
        self.xs
            .receive(self.dom0, &wire::encoded(ty as u32, 1, 0, payload));
        let out = self.xs.output(self.dom0).to_vec();
        self.xs.consume_output(self.dom0, out.len());
        if out.len() < wire::HEADER_LEN || out[..4] != (ty as u32).to_ne_bytes() {
            return Err(format!("setup {ty:?} failed: {out:?}"));
        }
        Ok(())
    }

    /// One structure-aware request.
    fn request(&mut self, rng: &mut Rng, from_domu: bool) -> Vec<u8> {
        let ty = *TYPES.choose(rng).unwrap_or(&2);
        let mut p = Vec::new();
        match MsgType::from_u32(ty) {
            Some(MsgType::Write) => {
                p.extend(path(rng, !from_domu));
                p.push(0);
                p.extend(value(rng));
            }
            Some(MsgType::SetPerms) => {
                let target = path(rng, !from_domu);
                if target.windows(7).any(|w| w == b"private") {
                    p.extend_from_slice(b"data");
                } else {
                    p.extend(target);
                }
                p.push(0);
                p.extend(perms(rng, !from_domu));
            }
            Some(MsgType::Watch | MsgType::Unwatch) => {
                p.extend(path(rng, !from_domu));
                p.push(0);
                p.extend_from_slice([&b"t1"[..], b"t2", b""].choose(rng).copied().unwrap_or(b""));
                p.push(0);
            }
            Some(MsgType::TransactionEnd) => p.extend_from_slice(
                [&b"T\0"[..], b"F\0", b"X\0"]
                    .choose(rng)
                    .copied()
                    .unwrap_or(b""),
            ),
            Some(MsgType::DirectoryPart) => {
                p.extend(path(rng, !from_domu));
                p.extend_from_slice(format!("\0{}\0", rng.random_range(0..40)).as_bytes());
            }
            Some(
                MsgType::Introduce
                | MsgType::Release
                | MsgType::Resume
                | MsgType::IsDomainIntroduced
                | MsgType::GetDomainPath
                | MsgType::KeelDomainConnect,
            ) => {
                // Never release DomU 1 or 2 from Dom0 (their connections are what we test);
                // other domains come and go.
                let d = if from_domu {
                    rng.random_range(0..4)
                } else {
                    rng.random_range(3..6)
                };
                p.extend_from_slice(format!("{d}\0").as_bytes());
            }
            _ => {
                p.extend(path(rng, !from_domu));
                p.push(0);
            }
        }
        if rng.random_bool(0.05) {
            p.truncate(rng.random_range(0..=p.len()));
        }
        p.truncate(PAYLOAD_MAX);
        let tx = if rng.random_bool(0.6) {
            0
        } else {
            *self.tx_ids.choose(rng).unwrap_or(&0)
        };
        let mut msg = wire::encoded(ty, rng.random(), tx, &p);
        if rng.random_bool(0.02) {
            // A corrupted length.
            let len: u32 = rng.random_range(0..8192);
            msg[12..16].copy_from_slice(&len.to_ne_bytes());
        }
        msg
    }

    /// Sends `bytes` to `id` in random pieces, draining output now and then.
    fn feed(&mut self, rng: &mut Rng, id: ConnId, bytes: &[u8]) -> Result<(), Finding> {
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.random_range(1..=bytes.len() - at);
            self.xs.receive(id, &bytes[at..at + n]);
            at += n;
            if rng.random_bool(0.3) {
                self.drain(rng, id)?;
            }
        }
        Ok(())
    }

    /// Takes some or all of `id`'s output and checks it.
    fn drain(&mut self, rng: &mut Rng, id: ConnId) -> Result<(), Finding> {
        let all = rng.random_bool(0.7);
        loop {
            let out = self.xs.output(id).to_vec();
            if out.is_empty() {
                return Ok(());
            }
            let n = if all {
                out.len()
            } else {
                rng.random_range(1..=out.len())
            };
            self.check_output(id, &out[..n])?;
            self.xs.consume_output(id, n);
            if !all {
                return Ok(());
            }
        }
    }

    fn check_output(&mut self, id: ConnId, bytes: &[u8]) -> Result<(), Finding> {
        let domid = self.xs.connection(id).map_or(0, |c| c.domid());
        if domid != 0 && domid != 2 && bytes.windows(SECRET.len()).any(|w| w == SECRET) {
            return Err(format!("DomU {domid} received DomU 2's private value"));
        }
        let at = match self.decoders.iter().position(|(c, _)| *c == id) {
            Some(i) => i,
            None => {
                self.decoders.push((id, Decoder::new()));
                self.decoders.len() - 1
            }
        };
        let d = &mut self.decoders[at].1;
        d.push(bytes);
        while let Some(m) = d
            .next_message()
            .map_err(|e| format!("daemon output to {id:?}: {e}"))?
        {
            let ty = m.msg_type();
            match ty {
                None => return Err(format!("unknown reply type {}", m.header.ty)),
                Some(MsgType::Error) => {
                    if !m.payload.ends_with(b"\0") || Errno::from_name(&m.payload).is_none() {
                        return Err(format!("bad ERROR payload {:?}", m.payload));
                    }
                }
                Some(MsgType::WatchEvent) => {
                    let parts = wire::split_strings(&m.payload);
                    if m.header.req_id != 0
                        || m.header.tx_id != 0
                        || parts.len() != 2
                        || !m.payload.ends_with(b"\0")
                    {
                        return Err(format!("bad WATCH_EVENT {:?}", m));
                    }
                }
                Some(MsgType::TransactionStart) => {
                    let id = std::str::from_utf8(m.payload.strip_suffix(b"\0").unwrap_or(b"x"))
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("bad transaction id {:?}", m.payload))?;
                    if self.tx_ids.len() < 32 {
                        self.tx_ids.push(id);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The invariants that hold between steps.
    fn check_state(&self) -> Result<(), Finding> {
        let tree = self.xs.tree();
        for d in [1, 2] {
            if tree.owned_by(d) > self.xs.limits().nodes {
                return Err(format!(
                    "DomU {d} owns {} nodes, quota {}",
                    tree.owned_by(d),
                    self.xs.limits().nodes
                ));
            }
        }
        for p in tree.paths() {
            let node = tree.get(p).ok_or("path without node")?;
            for c in &node.children {
                let cp = keel_xenstored::path::child(p, c);
                if tree.get(&cp).is_none() {
                    return Err(format!("{p} lists {c}, which is missing"));
                }
            }
            if let Some(up) = keel_xenstored::path::parent(p) {
                let listed = tree.get(up).is_some_and(|n| {
                    n.children
                        .iter()
                        .any(|c| c == keel_xenstored::path::basename(p))
                });
                if !listed {
                    return Err(format!("{p} is not listed by its parent"));
                }
            }
        }
        Ok(())
    }

    /// Closes and remakes what the daemon says to close.
    fn reap(&mut self) {
        for id in self.xs.connection_ids() {
            if self.xs.should_close(id) {
                self.xs.disconnect(id);
                self.decoders.retain(|(c, _)| *c != id);
                if id == self.dom0 {
                    self.dom0 = self.xs.connect_dom0();
                } else if id == self.socket {
                    self.socket = self.xs.connect();
                }
            }
        }
        for i in 0..2 {
            if self.domu[i].is_none_or(|id| self.xs.connection(id).is_none()) {
                self.domu[i] = self.xs.connect_domain(i as u16 + 1).ok();
            }
        }
    }
}

/// One input: a daemon, a few dozen steps on its connections.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let mut h = Harness::new(rng)?;
    for _ in 0..rng.random_range(1..60) {
        let who = rng.random_range(0..4);
        let (id, from_domu) = match who {
            0 => (h.dom0, false),
            1 | 2 => match h.domu[who - 1] {
                Some(id) => (id, true),
                None => continue,
            },
            _ => (h.socket, false),
        };
        let bytes = match rng.random_range(0..10) {
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            1 if who == 3 => {
                // The handshake, right or wrong.
                let d = rng.random_range(0..4);
                wire::encoded(0x4b45, 7, 0, format!("{d}\0").as_bytes())
            }
            _ => {
                let mut v = Vec::new();
                for _ in 0..rng.random_range(1..4) {
                    v.extend(h.request(rng, from_domu));
                }
                v
            }
        };
        h.feed(rng, id, &bytes)?;
        for id in h.xs.connection_ids() {
            if rng.random_bool(0.8) {
                h.drain(rng, id)?;
            }
        }
        if rng.random_bool(0.03) {
            if let Some(id) = h.domu[0].take() {
                h.xs.disconnect(id);
                h.decoders.retain(|(c, _)| *c != id);
            }
        }
        h.check_state()?;
        h.reap();
    }
    Ok(())
}
