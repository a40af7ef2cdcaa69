//! The network backend's queue (`keel_backends::net::NetQueue`) against a hostile netfront, in
//! a few rounds over one pair of rings: transmit packets built as netfront builds them (IPv4
//! and IPv6 TCP/UDP frames, VLAN tags, IP options and extension headers, other protocols,
//! random bytes; spread over slots at random offsets; checksum flags; GSO, hash, multicast and
//! XDP extra slots), most of them with one field of one slot made hostile (grant reference,
//! offset, size, flags, id, extra type or flags, GSO size or type, chains past the slot
//! limits) and some slots all random; packets cut across rounds; receive requests with bad
//! ids, unknown, read-only or repeated grant references and garbage padding; frames from the
//! host of every size (runts, several pages, larger than the requests posted, larger than any
//! frame) with checksum and GSO metadata, right or wrong, for frontends that negotiated
//! scatter-gather, GSO and checksum offload or not; sends the host refuses, grant copies that
//! fail, revoked grants, ring indexes past the ring's end (after a warm-up), a frontend's
//! `rsp_event` anywhere, and a last `req_prod` far ahead, behind, or ahead into stale slots.
//!
//! Checked, against a model of the rings built from netif.h and the slots as the frontend
//! wrote them: nothing panics or hangs; no grant copy outside a request's slot (the fake grant
//! table logs every segment: transmit reads exactly the slots of the well-formed packets in
//! ring order, receive writes only the page of its own request, from offset 0); every
//! transmit request taken is answered once, in its slot, with its id (extra slots `NULL`), a
//! packet's requests all alike: `ERROR` for a malformed packet or a failed copy, `OKAY` or
//! `DROPPED` for a well-formed one, `OKAY` exactly when it reached the host (a control packet
//! aside), and `OKAY` whenever nothing could stop it; what reached the host is the guest's
//! bytes from the granted slots, the first slot's size long, with the virtio-net header its
//! flags and GSO slot ask for; responses never overtake the requests published, and the
//! backend writes nothing else of the ring but its own indexes; the frontend is notified
//! exactly when its `rsp_event` asks and asked to notify while the backend waits; a broken
//! `req_prod` is refused (the queue errs, and stays stopped on both rings) and a sound one
//! never is. On receive, the responses chain up into frames that are, in order, the host's
//! frames less the ones dropped (never one that must be dropped, always one that must be
//! delivered): each data slot is its request's page holding the next 4096 bytes (or `ERROR`,
//! exactly when that page is not granted writable), with the checksum flags, a software
//! checksum, and a GSO slot as the frame's header and the frontend's features call for.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use keel_backends::grant::GrantAccess;
use keel_backends::net::{vnet, NetError, NetOptions, NetQueue, VnetHdr};
use keel_backends::testing::{CopyRecord, FakeGuest, FakePacketIo, FakeRing};
use keel_core::xen::blkif::{sring, PAGE_SIZE as PAGE, SRING_HEADER_SIZE};
use keel_core::xen::netif::{
    extra_type, gso_type, rsp, rxf, txf, NetifExtraGso, NetifExtraInfo, NetifRxRequest,
    NetifRxResponse, NetifTxRequest, NetifTxResponse, EXTRA_FLAG_MORE, RX_ENTRY_SIZE,
    TX_ENTRY_SIZE, XEN_NETBK_LEGACY_SLOTS_MAX,
};
use rand::Rng as _;

use crate::{Finding, Rng};

/// Guest pages: the two rings, transmit data pages, receive pages.
const TX_RING_PAGE: usize = 0;
const RX_RING_PAGE: usize = 1;
const TX_FIRST: usize = 2;
const TX_PAGES: usize = 20;
const RX_FIRST: usize = TX_FIRST + TX_PAGES;
const RX_PAGES: usize = 20;
const PAGES: usize = RX_FIRST + RX_PAGES;
/// The rings' grant references: never posted for receive (a frontend having the backend copy
/// into its own ring breaks it, as a hostile `req_prod` does); a transmit slot may name one.
const TX_RING_REF: u32 = 1;
const RX_RING_REF: u32 = 2;
/// Data page `p` is granted under `GREF + p`.
const GREF: u32 = 100;
/// Entries of each one-page ring.
const ENTRIES: usize = 256;
const ETH_HLEN: usize = 14;
/// Extra slots of a packet: one of each defined type (netif.h).
const MAX_EXTRAS: usize = extra_type::MAX as usize - 1;
/// Frames larger than this may be cut by the host device: nothing is required of them.
const MAX_FRAME: usize = 65536;

/// A shared index of `ring` ([`sring`]).
fn index(ring: &FakeRing, offset: usize) -> u32 {
    ring.shared_index(offset).load(Ordering::Acquire)
}

/// Whether `event` lies in `(old, new]`: publishing `old..new` must notify.
fn crosses(event: u32, old: u32, new: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// A grant reference that is neither ring's.
fn not_a_ring(gref: u32) -> u32 {
    if gref == TX_RING_REF || gref == RX_RING_REF {
        gref + 0x1000_0000
    } else {
        gref
    }
}

/// Filler bytes, cheap for large frames: random bytes repeated with a prime period (251), so
/// that bytes landing at a wrong offset show (unless it is wrong by a multiple of 251).
fn fill(rng: &mut Rng, out: &mut [u8]) {
    const PERIOD: usize = 251;
    let n = out.len().min(PERIOD);
    rng.fill(&mut out[..n]);
    let mut have = n;
    while have < out.len() {
        let m = have.min(out.len() - have);
        out.copy_within(..m, have);
        have += m;
    }
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// Where the generator put a frame's transport header.
#[derive(Clone, Copy, Debug)]
struct L4 {
    v6: bool,
    l3_start: usize,
    start: usize,
    tcp: bool,
    end: usize,
}

/// What the generator knows of a frame's headers.
#[derive(Clone, Copy, Debug)]
enum Parse {
    /// IP, then TCP or UDP, all of it inside the frame.
    Known(L4),
    /// An EtherType that is neither IP nor a VLAN tag.
    NotIp,
    /// Anything (random bytes, cut headers).
    Unknown,
}

#[derive(Clone, Debug)]
struct Frame {
    bytes: Vec<u8>,
    parse: Parse,
}

/// A frame of `len` bytes (at least its headers'): IPv4 or IPv6, TCP or UDP, or another
/// protocol, or random bytes.
fn frame(rng: &mut Rng, len: usize, want_tcp: Option<bool>) -> Frame {
    let kind = match want_tcp {
        Some(_) => rng.random_range(0..2),
        None => rng.random_range(0..10),
    };
    if kind >= 8 {
        let mut bytes = vec![0; len];
        fill(rng, &mut bytes);
        let parse = if kind == 8 && len >= ETH_HLEN {
            let ty: u16 = [0x0806, 0x88cc, 0x8035, 0x9000][rng.random_range(0..4)];
            bytes[12..14].copy_from_slice(&ty.to_be_bytes());
            Parse::NotIp
        } else {
            Parse::Unknown
        };
        return Frame { bytes, parse };
    }
    let v6 = kind % 2 == 1;
    let tcp = want_tcp.unwrap_or_else(|| rng.random_bool(0.6));
    let mut f = Vec::with_capacity(len.max(128));
    f.extend([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
    let tags = match rng.random_range(0..20) {
        0..=2 => 1,
        3 => 2,
        _ => 0,
    };
    if tags == 2 {
        f.extend([0x88, 0xa8, 0x00, 0x07]);
    }
    if tags >= 1 {
        f.extend([0x81, 0x00, 0x00, 0x05]);
    }
    f.extend(if v6 { [0x86, 0xdd] } else { [0x08, 0x00] });
    let l3_start = f.len();
    let proto: u8 = if tcp { 6 } else { 17 };
    if v6 {
        let hop = rng.random_bool(0.25);
        f.extend([0x60, 0, 0, 0, 0, 0, if hop { 0 } else { proto }, 64]);
        let mut addrs = [0u8; 32];
        rng.fill(&mut addrs[..]);
        f.extend(addrs);
        if hop {
            // Hop-by-hop options: a PadN option filling its 8 bytes.
            f.extend([proto, 0, 1, 4, 0, 0, 0, 0]);
        }
    } else {
        let words = if rng.random_bool(0.2) {
            rng.random_range(6..=15)
        } else {
            5
        };
        f.extend([0x40 | words as u8, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0]);
        let mut addrs = [0u8; 8];
        rng.fill(&mut addrs[..]);
        f.extend(addrs);
        f.extend(std::iter::repeat_n(1u8, (words - 5) * 4));
    }
    let start = f.len();
    if tcp {
        let opts = if rng.random_bool(0.3) {
            rng.random_range(1..=10) * 4
        } else {
            0
        };
        let mut h = [0u8; 20];
        rng.fill(&mut h[..]);
        h[12] = (((20 + opts) / 4) as u8) << 4;
        h[13] = 0x18;
        f.extend(h);
        f.extend(std::iter::repeat_n(1u8, opts));
    } else {
        let mut h = [0u8; 8];
        rng.fill(&mut h[..]);
        f.extend(h);
    }
    let end = f.len();
    let total = len.max(end);
    let at = f.len();
    f.resize(total, 0);
    fill(rng, &mut f[at..]);
    let l4_len = total - start;
    if v6 {
        let plen = (total - l3_start - 40) as u16;
        f[l3_start + 4..l3_start + 6].copy_from_slice(&plen.to_be_bytes());
    } else {
        let tot = (total - l3_start) as u16;
        f[l3_start + 2..l3_start + 4].copy_from_slice(&tot.to_be_bytes());
    }
    if !tcp {
        f[start + 4..start + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    Frame {
        bytes: f,
        parse: Parse::Known(L4 {
            v6,
            l3_start,
            start,
            tcp,
            end,
        }),
    }
}

/// A frame length: mostly an ordinary one, sometimes several pages, rarely a runt or huge.
fn frame_len(rng: &mut Rng, max: usize) -> usize {
    let len = match rng.random_range(0..100) {
        0..=59 => rng.random_range(60..=1514),
        60..=84 => rng.random_range(1515..=9000),
        85..=88 => rng.random_range(9001..=65535),
        89..=96 => rng.random_range(0..60),
        _ => rng.random_range(0..ETH_HLEN),
    };
    len.min(max)
}

/// Ones'-complement sum of big-endian words (an odd last byte padded), not folded.
fn sum16(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(2);
    let mut s: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

/// Folds a sum of words into 16 bits (end-around carries).
fn fold16(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum of a frame the generator built (what a partial checksum field
/// holds).
fn pseudo_sum(f: &[u8], l4: &L4) -> u16 {
    let addrs = if l4.v6 {
        &f[l4.l3_start + 8..l4.l3_start + 40]
    } else {
        &f[l4.l3_start + 12..l4.l3_start + 20]
    };
    let len = (f.len() - l4.start) as u64;
    let proto = if l4.tcp { 6 } else { 17 };
    fold16(sum16(addrs) + proto + (len >> 16) + (len & 0xffff))
}

/// The network layer after at most two VLAN tags: `Some(true)` IPv6, `Some(false)` IPv4.
fn l3_v6(f: &[u8]) -> Option<bool> {
    let mut at = 12;
    for _ in 0..3 {
        let ty = u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]);
        match ty {
            0x0800 => return Some(false),
            0x86dd => return Some(true),
            0x8100 | 0x88a8 => at += 4,
            _ => return None,
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Transmit: generation.

/// Transmit data pages handed out to slots, never twice in a run (a packet's bytes stay put
/// until the backend copies them).
struct TxArea {
    page: usize,
    used: usize,
}

impl TxArea {
    /// Room for `len` (at most a page) bytes: (page, offset).
    fn place(&mut self, rng: &mut Rng, len: usize) -> Option<(usize, usize)> {
        let fresh = self.used + len > PAGE || rng.random_bool(0.15);
        if fresh {
            self.page += 1;
            self.used = 0;
        }
        if self.page >= TX_PAGES {
            return None;
        }
        let room = PAGE - self.used - len;
        let off = self.used
            + match rng.random_range(0..10) {
                0..=5 => 0,
                6 => room,
                _ => rng.random_range(0..=room.min(300)),
            };
        self.used = off + len;
        Some((TX_FIRST + self.page, off))
    }
}

/// What a slot of a generated packet is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Req,
    Extra,
}

/// Generated transmit slots, each with the frame its packet was built from (on its first
/// slot only).
type TxSlots = Vec<([u8; TX_ENTRY_SIZE], Option<Frame>)>;

/// A GSO extra slot.
fn gso_extra(size: u16, ty: u8) -> NetifExtraInfo {
    NetifExtraInfo::new_gso(
        NetifExtraGso {
            size,
            ty,
            pad: 0,
            features: 0,
        },
        0,
    )
}

/// An extra-info slot as the transmit ring holds it (4 bytes of padding after it).
fn extra_slot(e: &NetifExtraInfo) -> [u8; TX_ENTRY_SIZE] {
    let mut b = [0u8; TX_ENTRY_SIZE];
    b[..NetifExtraInfo::SIZE].copy_from_slice(&e.to_bytes());
    b
}

/// One packet as netfront would queue it, then perhaps one field of one slot made hostile;
/// `None` when the data pages are used up.
fn tx_packet(rng: &mut Rng, guest: &FakeGuest, area: &mut TxArea, id: &mut u16) -> Option<TxSlots> {
    let room = (TX_PAGES - area.page.min(TX_PAGES)) * PAGE;
    let len = frame_len(rng, room.saturating_sub(PAGE).min(65535));
    let f = frame(rng, len, None);
    let len = f.bytes.len();
    if len > 65535 {
        return None;
    }
    // Chunks, each in one page.
    let tiny = len <= 2000 && rng.random_bool(0.03);
    let mut chunks = Vec::new();
    let mut at = 0;
    loop {
        let rest = len - at;
        let want = if tiny {
            rng.random_range(1..=48)
        } else if rng.random_bool(0.6) {
            PAGE
        } else {
            rng.random_range(1..=PAGE)
        };
        let n = rest.min(want);
        let (page, off) = area.place(rng, n)?;
        guest.write(page, off, &f.bytes[at..at + n]);
        chunks.push((page, off, n));
        at += n;
        if at >= len {
            break;
        }
    }
    // Extra slots.
    let mut extras = Vec::new();
    if rng.random_bool(0.08) {
        extras.push(NetifExtraInfo {
            ty: extra_type::HASH,
            flags: 0,
            u: [1, 1, 2, 3, 4, 5],
        });
    }
    let l4 = match f.parse {
        Parse::Known(l4) => Some(l4),
        _ => None,
    };
    let gso = match l4 {
        Some(l4) if l4.tcp => rng.random_bool(0.35),
        _ => rng.random_bool(0.03),
    };
    if gso {
        let ty = match l4 {
            Some(l4) if rng.random_bool(0.9) => {
                if l4.v6 {
                    gso_type::TCPV6
                } else {
                    gso_type::TCPV4
                }
            }
            _ => rng.random_range(0..4),
        };
        let size = if rng.random_bool(0.8) {
            1448
        } else {
            rng.random_range(1..=9000)
        };
        extras.push(gso_extra(size, ty));
    }
    if rng.random_bool(0.03) {
        let ty = [
            extra_type::MCAST_ADD,
            extra_type::MCAST_DEL,
            extra_type::XDP,
        ][rng.random_range(0..3)];
        extras.push(NetifExtraInfo {
            ty,
            flags: 0,
            u: [1, 0, 0x5e, 0, 0, 1],
        });
    }
    if rng.random_bool(0.02) {
        // Past the extra-slot limit.
        for _ in 0..rng.random_range(MAX_EXTRAS..=MAX_EXTRAS + 3) {
            extras.push(NetifExtraInfo {
                ty: extra_type::HASH,
                flags: 0,
                u: [0; 6],
            });
        }
    }
    let n = extras.len();
    for (i, e) in extras.iter_mut().enumerate() {
        if i + 1 < n {
            e.flags |= EXTRA_FLAG_MORE;
        }
    }
    // The slots.
    let mut flags = 0;
    if l4.is_some() && rng.random_bool(0.4) || rng.random_bool(0.05) {
        flags |= txf::CSUM_BLANK;
    }
    if rng.random_bool(0.5) {
        flags |= txf::DATA_VALIDATED;
    }
    if chunks.len() > 1 {
        flags |= txf::MORE_DATA;
    }
    if !extras.is_empty() {
        flags |= txf::EXTRA_INFO;
    }
    let mut next_id = || {
        let i = *id;
        *id = id.wrapping_add(1);
        i
    };
    let mut slots: Vec<([u8; TX_ENTRY_SIZE], SlotKind)> = Vec::new();
    let (page, off, _) = chunks[0];
    let first = NetifTxRequest {
        gref: GREF + page as u32,
        offset: off as u16,
        flags,
        id: next_id(),
        size: len as u16,
    };
    slots.push((first.to_bytes(), SlotKind::Req));
    for e in &extras {
        slots.push((extra_slot(e), SlotKind::Extra));
    }
    for (i, &(page, off, n)) in chunks.iter().enumerate().skip(1) {
        let r = NetifTxRequest {
            gref: GREF + page as u32,
            offset: off as u16,
            flags: if i + 1 < chunks.len() {
                txf::MORE_DATA
            } else {
                0
            },
            id: next_id(),
            size: n as u16,
        };
        slots.push((r.to_bytes(), SlotKind::Req));
    }
    if rng.random_bool(0.3) {
        corrupt(rng, &mut slots);
    }
    let mut out: TxSlots = slots.into_iter().map(|(b, _)| (b, None)).collect();
    out[0].1 = Some(f);
    Some(out)
}

/// One field of one slot, as a hostile frontend would set it.
fn corrupt(rng: &mut Rng, slots: &mut [([u8; TX_ENTRY_SIZE], SlotKind)]) {
    let s = rng.random_range(0..slots.len());
    let (b, kind) = &mut slots[s];
    if rng.random_bool(0.1) {
        rng.fill(&mut b[..]);
    } else if *kind == SlotKind::Req {
        let mut r = NetifTxRequest::from_bytes(&b[..]).expect("a slot");
        match rng.random_range(0..5) {
            0 => {
                r.gref = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => GREF + rng.random_range(TX_FIRST..PAGES) as u32,
                    _ => GREF + PAGES as u32 + rng.random_range(0..4),
                }
            }
            1 => {
                r.offset = match rng.random_range(0..3) {
                    0 => rng.random(),
                    1 => (PAGE as u16).saturating_sub(r.size) + rng.random_range(1..64),
                    _ => PAGE as u16,
                }
            }
            2 => {
                r.size = match rng.random_range(0..4) {
                    0 => rng.random(),
                    1 => r.size.saturating_add(rng.random_range(1..100)),
                    2 => r.size.saturating_sub(rng.random_range(1..100)),
                    _ => rng.random_range(0..ETH_HLEN as u16),
                }
            }
            3 => {
                r.flags = match rng.random_range(0..4) {
                    0 => r.flags ^ txf::MORE_DATA,
                    1 => r.flags ^ txf::EXTRA_INFO,
                    2 => r.flags ^ txf::CSUM_BLANK,
                    _ => rng.random(),
                }
            }
            _ => r.id = rng.random(),
        }
        *b = r.to_bytes();
    } else {
        let mut e = NetifExtraInfo::from_bytes(&b[..]).expect("a slot");
        match rng.random_range(0..4) {
            0 => e.ty = rng.random_range(0..8),
            1 => e.flags ^= EXTRA_FLAG_MORE,
            2 => {
                let mut g = e.gso();
                g.size = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random()
                };
                e.u = g.to_bytes();
            }
            _ => {
                let mut g = e.gso();
                g.ty = rng.random_range(0..5);
                e.u = g.to_bytes();
            }
        }
        *b = extra_slot(&e);
    }
}

// ---------------------------------------------------------------------------------------------
// Transmit: the model.

/// A packet as netif.h reads the slots from `start`.
struct TxPkt {
    start: usize,
    /// One past its last slot; `None` while slots are missing.
    end: Option<usize>,
    first: NetifTxRequest,
    extras: Vec<NetifExtraInfo>,
    conts: Vec<(usize, NetifTxRequest)>,
}

impl TxPkt {
    /// The packet whose first request is `slots[start]`.
    fn parse(slots: &[[u8; TX_ENTRY_SIZE]], start: usize) -> TxPkt {
        let first = NetifTxRequest::from_bytes(&slots[start]).expect("a slot");
        let mut p = TxPkt {
            start,
            end: None,
            first,
            extras: Vec::new(),
            conts: Vec::new(),
        };
        let mut i = start + 1;
        if first.flags & txf::EXTRA_INFO != 0 {
            loop {
                let Some(s) = slots.get(i) else { return p };
                let e = NetifExtraInfo::from_bytes(s).expect("a slot");
                p.extras.push(e);
                i += 1;
                if !e.more() {
                    break;
                }
            }
        }
        if first.flags & txf::MORE_DATA != 0 {
            loop {
                let Some(s) = slots.get(i) else { return p };
                let r = NetifTxRequest::from_bytes(s).expect("a slot");
                p.conts.push((i, r));
                i += 1;
                if r.flags & txf::MORE_DATA == 0 {
                    break;
                }
            }
        }
        p.end = Some(i);
        p
    }

    /// Past the slot limits (already, for an incomplete packet).
    fn overlong(&self) -> bool {
        self.extras.len() > MAX_EXTRAS || 1 + self.conts.len() > XEN_NETBK_LEGACY_SLOTS_MAX
    }

    /// The slots of the packet taken so far, each with whether it is a request.
    fn slots(&self, published: usize) -> impl Iterator<Item = (usize, Option<u16>)> + '_ {
        let end = self.end.unwrap_or(published);
        (self.start..end).map(move |s| {
            if s == self.start {
                (s, Some(self.first.id))
            } else if let Some((_, r)) = self.conts.iter().find(|(i, _)| *i == s) {
                (s, Some(r.id))
            } else {
                (s, None)
            }
        })
    }
}

/// The statuses a packet's requests may get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TxWant {
    Error,
    Okay,
    Dropped,
    OkayOrDropped,
}

impl TxWant {
    /// Whether a request may be answered `status`.
    fn allows(self, status: i16) -> bool {
        match self {
            TxWant::Error => status == rsp::ERROR,
            TxWant::Okay => status == rsp::OKAY,
            TxWant::Dropped => status == rsp::DROPPED,
            TxWant::OkayOrDropped => status == rsp::OKAY || status == rsp::DROPPED,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Receive.

/// Whether a frame from the host must reach the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Deliver,
    Drop,
    Either,
}

struct Injected {
    hdr: VnetHdr,
    bytes: Vec<u8>,
    expect: Expect,
    /// The checksum `NEEDS_CSUM` calls for, completed over everything from `csum_start` (the
    /// field holding the pseudo-header sum): where it goes and its value, when it fits.
    sw: Option<(usize, u16)>,
}

impl Injected {
    /// A frame with its header and what must become of it.
    fn new(hdr: VnetHdr, bytes: Vec<u8>, expect: Expect) -> Injected {
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        let sw = (hdr.flags & vnet::F_NEEDS_CSUM != 0 && at + 2 <= bytes.len())
            .then(|| (at, !fold16(sum16(&bytes[start..]))));
        Injected {
            hdr,
            bytes,
            expect,
            sw,
        }
    }
}

/// One data slot of a received frame.
struct RxSlot {
    /// Its length: the status, or for a failed slot the length of the copy tried.
    len: Option<usize>,
    /// What the page holds, when no other slot of the same round wrote it too.
    bytes: Option<Vec<u8>>,
}

/// A frame as the frontend reads it from the responses.
struct Chain {
    /// Ring index of its first response.
    at: usize,
    flags: u16,
    gso: Option<NetifExtraGso>,
    data: Vec<RxSlot>,
}

/// A frame from the host, checksum and GSO metadata right or wrong.
fn rx_frame(rng: &mut Rng, o: &NetOptions) -> Injected {
    let fits = |len: usize| (ETH_HLEN..=MAX_FRAME).contains(&len) && (len <= PAGE || o.sg);
    let sized = |len: usize| {
        if fits(len) {
            Expect::Deliver
        } else if len < ETH_HLEN || len <= MAX_FRAME {
            Expect::Drop
        } else {
            Expect::Either
        }
    };
    let mut hdr = VnetHdr::default();
    match rng.random_range(0..100) {
        // Plain frames, validated or not.
        0..=39 => {
            let len = if rng.random_bool(0.01) {
                rng.random_range(MAX_FRAME..=70_000)
            } else {
                frame_len(rng, MAX_FRAME)
            };
            let f = frame(rng, len, None);
            if rng.random_bool(0.4) {
                hdr.flags = vnet::F_DATA_VALID;
            }
            // Fields that mean nothing without the flags that use them.
            if rng.random_bool(0.2) {
                hdr.csum_start = rng.random();
                hdr.csum_offset = rng.random();
                hdr.hdr_len = rng.random();
                hdr.gso_size = rng.random();
            }
            let expect = sized(f.bytes.len());
            Injected::new(hdr, f.bytes, expect)
        }
        // A checksum to complete, the header right.
        40..=64 => {
            let len = frame_len(rng, MAX_FRAME).max(100);
            let tcp = rng.random_bool(0.5);
            let f = frame(rng, len, Some(tcp));
            let Parse::Known(l4) = f.parse else {
                unreachable!("an IP frame")
            };
            hdr.flags = vnet::F_NEEDS_CSUM;
            hdr.csum_start = l4.start as u16;
            hdr.csum_offset = if l4.tcp { 16 } else { 6 };
            let expect = sized(f.bytes.len());
            Injected::new(hdr, f.bytes, expect)
        }
        // TCP GSO, the header right.
        65..=84 => {
            let len = match rng.random_range(0..10) {
                0..=2 => rng.random_range(100..=1514),
                3..=8 => rng.random_range(1515..=16_000),
                _ => rng.random_range(16_001..=MAX_FRAME),
            };
            let f = frame(rng, len, Some(true));
            let Parse::Known(l4) = f.parse else {
                unreachable!("an IP frame")
            };
            hdr.flags = vnet::F_NEEDS_CSUM;
            hdr.gso_type = if l4.v6 {
                vnet::GSO_TCPV6
            } else {
                vnet::GSO_TCPV4
            };
            if rng.random_bool(0.1) {
                hdr.gso_type |= vnet::GSO_ECN;
            }
            hdr.gso_size = if rng.random_bool(0.8) {
                1448
            } else {
                rng.random_range(1..=9000)
            };
            hdr.hdr_len = l4.end as u16;
            hdr.csum_start = l4.start as u16;
            hdr.csum_offset = 16;
            let len = f.bytes.len();
            let expect = if o.gso && o.sg {
                sized(len)
            } else if len > o.mtu + ETH_HLEN + 4 {
                Expect::Drop
            } else {
                sized(len)
            };
            Injected::new(hdr, f.bytes, expect)
        }
        // One field of the header wrong, or all of it random.
        _ => {
            let len = frame_len(rng, MAX_FRAME);
            let f = frame(rng, len, Some(true));
            let l4 = match f.parse {
                Parse::Known(l4) => l4,
                _ => unreachable!("an IP frame"),
            };
            hdr = VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                gso_type: if l4.v6 {
                    vnet::GSO_TCPV6
                } else {
                    vnet::GSO_TCPV4
                },
                hdr_len: l4.end as u16,
                gso_size: 1448,
                csum_start: l4.start as u16,
                csum_offset: 16,
            };
            match rng.random_range(0..7) {
                0 => hdr.gso_type ^= vnet::GSO_TCPV4 ^ vnet::GSO_TCPV6,
                1 => {
                    hdr.gso_type = [vnet::GSO_UDP, 2, 5, 0x7f, rng.random()][rng.random_range(0..5)]
                }
                2 => hdr.gso_size = 0,
                3 => hdr.csum_start = rng.random(),
                4 => hdr.csum_offset = rng.random(),
                5 => hdr.flags = rng.random(),
                _ => {
                    let mut b = [0u8; 10];
                    rng.fill(&mut b[..]);
                    hdr = VnetHdr::from_bytes(&b);
                }
            }
            let expect = if f.bytes.len() < ETH_HLEN {
                Expect::Drop
            } else {
                Expect::Either
            };
            Injected::new(hdr, f.bytes, expect)
        }
    }
}

/// Whether `got` (frame bytes from `from`) is `want`, but for the checksum `patch` (where,
/// what, whether 0xffff will do too) completed in software.
fn same(got: &[u8], want: &[u8], from: usize, patch: Option<(usize, u16, bool)>) -> bool {
    let Some((at, sum, udp)) = patch.filter(|p| p.0 + 2 > from && p.0 < from + got.len()) else {
        return got == want;
    };
    got.iter().zip(want).enumerate().all(|(i, (&g, &w))| {
        let pos = from + i;
        if pos == at || pos == at + 1 {
            g == sum.to_be_bytes()[pos - at] || (udp && g == 0xff)
        } else {
            g == w
        }
    })
}

/// Whether `c` can be the frontend's view of `f` under `o`: `Err` says why not.
fn compat(c: &Chain, f: &Injected, o: &NetOptions) -> Result<(), &'static str> {
    let len = f.bytes.len();
    if len < ETH_HLEN {
        return Err("a frame shorter than an Ethernet header delivered");
    }
    if c.data.len() != len.div_ceil(PAGE) {
        return Err("data slots do not match the frame's length");
    }
    if c.data.len() > 1 && !o.sg {
        return Err("several slots without feature-sg");
    }
    for (i, s) in c.data.iter().enumerate() {
        if s.len.is_some_and(|l| l != (len - i * PAGE).min(PAGE)) {
            return Err("a slot's length is not the frame's next 4096 bytes");
        }
    }
    let h = &f.hdr;
    let v6 = l3_v6(&f.bytes);
    let gso_ty = h.gso_type & !vnet::GSO_ECN;
    let xen_gso = match (gso_ty, v6) {
        (vnet::GSO_TCPV4, Some(false)) => Some(gso_type::TCPV4),
        (vnet::GSO_TCPV6, Some(true)) => Some(gso_type::TCPV6),
        _ => None,
    };
    let gso_ok = xen_gso.is_some() && o.gso && o.sg && h.gso_size > 0;
    match c.gso {
        Some(g) => {
            if !gso_ok {
                return Err("a GSO slot the frame or the frontend cannot have");
            }
            if Some(g.ty) != xen_gso || g.size != h.gso_size {
                return Err("the GSO slot is not the frame's GSO");
            }
        }
        None => {
            if gso_ok {
                return Err("a GSO frame for a GSO frontend without its GSO slot");
            }
            if gso_ty != vnet::GSO_NONE && len > o.mtu + ETH_HLEN + 4 {
                return Err("a GSO frame larger than the MTU delivered without GSO");
            }
        }
    }
    let blank_ok = c.gso.is_some()
        || match v6 {
            Some(false) => o.csum_ipv4,
            Some(true) => o.csum_ipv6,
            None => false,
        };
    let mut patch = None;
    let want = if h.flags & vnet::F_NEEDS_CSUM != 0 {
        if blank_ok {
            rxf::CSUM_BLANK | rxf::DATA_VALIDATED
        } else {
            let Some((at, sum)) = f.sw else {
                return Err("a checksum outside the frame completed");
            };
            // A UDP checksum of 0 goes as 0xffff (0 is none).
            patch = Some((at, sum, h.csum_offset == 6 && sum == 0));
            rxf::DATA_VALIDATED
        }
    } else if h.flags & vnet::F_DATA_VALID != 0 {
        rxf::DATA_VALIDATED
    } else {
        0
    };
    if c.flags & (rxf::CSUM_BLANK | rxf::DATA_VALIDATED) != want {
        return Err("checksum flags that are not the frame's");
    }
    for (i, s) in c.data.iter().enumerate() {
        let Some(got) = &s.bytes else { continue };
        let from = i * PAGE;
        if !same(got, &f.bytes[from..from + got.len()], from, patch) {
            return Err("a slot's bytes are not the frame's");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The run.

/// One input's queue, the frontend's side of its rings, and the model of what was asked of
/// it and what it answered.
struct Run {
    guest: FakeGuest,
    tx: FakeRing,
    rx: FakeRing,
    queue: NetQueue,
    io: FakePacketIo,
    options: NetOptions,
    /// Sends of frames whose length has bit `len % 64` set here are refused.
    refuse_mask: u64,
    fail_copies: bool,
    notifications: u64,
    // Transmit.
    area: TxArea,
    tx_next_id: u16,
    /// Generated, not yet published.
    tx_backlog: VecDeque<([u8; TX_ENTRY_SIZE], Option<Frame>)>,
    /// Published, by ring index.
    tx_slots: Vec<[u8; TX_ENTRY_SIZE]>,
    /// The frame each generated packet was built from, by its first slot's ring index.
    tx_frames: HashMap<usize, Frame>,
    tx_rsps: Vec<NetifTxResponse>,
    /// The first slot of the first packet not yet complete.
    tx_next: usize,
    tx_sent: u64,
    tx_sent_bytes: u64,
    // Receive.
    rx_next_id: u16,
    rx_cursor: usize,
    /// Published, by ring index.
    rx_reqs: Vec<NetifRxRequest>,
    rx_rsps: usize,
    rx_chains: Vec<Chain>,
    rx_frames: Vec<Injected>,
    /// Frames in flight may have been lost (the ring broke): none must be delivered.
    rx_lossy: bool,
}

/// A hostile `req_prod`, and whether the backend must refuse it.
#[derive(Clone, Copy)]
struct Hostile {
    value: u32,
    /// `Some(true)`: broken, `Some(false)`: sound; `None`: either, for what the backend took
    /// (or saw) before is not known exactly.
    broken: Option<bool>,
    /// Requests published before this round (all the backend may have seen).
    seen: usize,
}

impl Run {
    /// A queue over fresh rings, for a frontend with random features, guest pages granted
    /// mostly as netfront grants them.
    fn new(rng: &mut Rng) -> Result<Run, Finding> {
        let guest = FakeGuest::new(PAGES);
        for p in TX_FIRST..RX_FIRST {
            match rng.random_range(0..20) {
                0 => {}
                1 | 2 => guest.grant(GREF + p as u32, p, false),
                // netfront grants its transmit pages read-only.
                _ => guest.grant(GREF + p as u32, p, true),
            }
        }
        for p in RX_FIRST..PAGES {
            match rng.random_range(0..40) {
                0 => {}
                1 => guest.grant(GREF + p as u32, p, true),
                _ => guest.grant(GREF + p as u32, p, false),
            }
        }
        let tx = FakeRing::new(&guest, TX_RING_PAGE, 1, TX_RING_REF, TX_ENTRY_SIZE);
        let rx = FakeRing::new(&guest, RX_RING_PAGE, 1, RX_RING_REF, RX_ENTRY_SIZE);
        let options = NetOptions {
            mtu: [1500, 9000, 576, rng.random_range(68..=65535)][rng.random_range(0..4)],
            sg: rng.random_bool(0.7),
            gso: rng.random_bool(0.5),
            csum_ipv4: rng.random_bool(0.8),
            csum_ipv6: rng.random_bool(0.5),
            rx_notify: true,
        };
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.clone());
        let queue = NetQueue::attach(grants, TX_RING_REF, RX_RING_REF, options)
            .map_err(|e| format!("attach: {e}"))?;
        let io = FakePacketIo::new();
        let refuse_mask = if rng.random_bool(0.25) {
            rng.random::<u64>() & rng.random::<u64>()
        } else {
            0
        };
        if refuse_mask != 0 {
            io.refuse_sends(Some(Box::new(move |f: &[u8]| {
                (refuse_mask >> (f.len() % 64)) & 1 == 1
            })));
        }
        Ok(Run {
            guest,
            tx,
            rx,
            queue,
            io,
            options,
            refuse_mask,
            fail_copies: false,
            notifications: 0,
            area: TxArea { page: 0, used: 0 },
            tx_next_id: rng.random(),
            tx_backlog: VecDeque::new(),
            tx_slots: Vec::new(),
            tx_frames: HashMap::new(),
            tx_rsps: Vec::new(),
            tx_next: 0,
            tx_sent: 0,
            tx_sent_bytes: 0,
            rx_next_id: rng.random(),
            rx_cursor: 0,
            rx_reqs: Vec::new(),
            rx_rsps: 0,
            rx_chains: Vec::new(),
            rx_frames: Vec::new(),
            rx_lossy: false,
        })
    }

    /// Publishes up to `n` slots of the backlog (never more than the ring has room for).
    fn publish_tx(&mut self, n: usize) {
        let n = n
            .min(self.tx_backlog.len())
            .min(self.tx.free_requests() as usize);
        for _ in 0..n {
            let (b, f) = self.tx_backlog.pop_front().expect("backlog");
            self.tx.queue_raw(&b);
            if let Some(f) = f {
                self.tx_frames.insert(self.tx_slots.len(), f);
            }
            self.tx_slots.push(b);
        }
        self.tx.publish();
    }

    /// Posts `n` receive requests (never more than the ring has room for) and publishes them.
    fn post_rx(&mut self, rng: &mut Rng, n: usize) {
        let n = n.min(self.rx.free_requests() as usize);
        let mut last = None;
        for _ in 0..n {
            let id = if rng.random_bool(0.9) {
                self.rx_next_id = self.rx_next_id.wrapping_add(1);
                self.rx_next_id
            } else {
                rng.random()
            };
            let gref = match rng.random_range(0..100) {
                0..=84 => {
                    self.rx_cursor += 1;
                    GREF + (RX_FIRST + self.rx_cursor % RX_PAGES) as u32
                }
                85..=88 => rng.random(),
                89..=92 => GREF + rng.random_range(TX_FIRST..RX_FIRST) as u32,
                93..=96 => last.unwrap_or(GREF + RX_FIRST as u32),
                _ => GREF + rng.random_range(RX_FIRST..PAGES + 2) as u32,
            };
            let mut b = NetifRxRequest { id, pad: 0, gref }.to_bytes();
            if rng.random_bool(0.03) {
                b[2..4].copy_from_slice(&rng.random::<u16>().to_le_bytes());
            }
            if rng.random_bool(0.02) {
                rng.fill(&mut b[..]);
            }
            let r = NetifRxRequest::from_bytes(&b).expect("8 bytes");
            b[4..8].copy_from_slice(&not_a_ring(r.gref).to_le_bytes());
            let r = NetifRxRequest::from_bytes(&b).expect("8 bytes");
            last = Some(r.gref);
            self.rx.queue_raw(&b);
            self.rx_reqs.push(r);
        }
        self.rx.publish();
    }

    /// A frame from the host.
    fn inject(&mut self, f: Injected) {
        self.io.inject(&f.hdr.to_bytes(), &f.bytes);
        self.rx_frames.push(f);
    }

    /// A `req_prod` for `ring`, hostile in one of several ways, given the requests the
    /// backend took (`taken`) and answered (`answered`).
    fn hostile_value(rng: &mut Rng, taken: usize, answered: usize) -> u32 {
        let (taken, answered) = (taken as u32, answered as u32);
        let in_flight = taken - answered;
        match rng.random_range(0..6) {
            0 => answered + ENTRIES as u32 + rng.random_range(1..1000),
            1 => taken.wrapping_sub(rng.random_range(1..=taken.max(1) + 3)),
            2 if in_flight < ENTRIES as u32 => {
                taken + rng.random_range(1..=ENTRIES as u32 - in_flight)
            }
            3 => answered + ENTRIES as u32,
            4 => taken.wrapping_sub(rng.random_range(0..3)),
            _ => rng.random(),
        }
    }

    /// Whether the backend must refuse `value` with `taken` requests taken and `answered`
    /// answered (netif's rings are one page: 256 entries).
    fn refuses(value: u32, taken: usize, answered: usize) -> bool {
        let ahead = value.wrapping_sub(answered as u32);
        ahead > ENTRIES as u32 || value.wrapping_sub(taken as u32) > ahead
    }

    /// The entries `from..to` of a ring as they are in memory: what a backend takes when
    /// `req_prod` is `to` (stale entries of a ring pushed ahead: old requests and responses).
    /// With `sanitize`, a ring's reference among them, which would have the backend copy
    /// into a ring, is changed first, as the frontend may change anything.
    fn stale(
        guest: &FakeGuest,
        page: usize,
        entry: usize,
        from: usize,
        to: usize,
        sanitize: bool,
    ) -> Vec<[u8; TX_ENTRY_SIZE]> {
        (from..to)
            .map(|i| {
                let at = SRING_HEADER_SIZE + (i % ENTRIES) * entry;
                let mut b = [0u8; TX_ENTRY_SIZE];
                b[..entry].copy_from_slice(&guest.read(page, at, entry));
                if sanitize {
                    // A receive request's reference is its second word.
                    let g = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    b[4..8].copy_from_slice(&not_a_ring(g).to_le_bytes());
                    guest.write(page, at, &b[..entry]);
                }
                b
            })
            .collect()
    }

    /// Checks that the backend changed nothing of a ring page but `req_event`, `rsp_prod`
    /// and the responses `old..new`.
    fn ring_untouched(
        what: &str,
        before: &[u8],
        after: &[u8],
        entry: usize,
        rsp: usize,
        old: u32,
        new: u32,
    ) -> Result<(), Finding> {
        let fail = |b: usize| {
            Err(format!(
                "{what}: the backend wrote byte {b} of the ring, which is not its own \
                 (responses {old}..{new})"
            ))
        };
        // The header: only req_event and rsp_prod are the backend's.
        for range in [0..sring::REQ_EVENT, sring::RSP_PROD + 4..SRING_HEADER_SIZE] {
            if before[range.clone()] != after[range.clone()] {
                return fail(range.start);
            }
        }
        let answered = new.wrapping_sub(old) as usize;
        for slot in 0..ENTRIES {
            let at = SRING_HEADER_SIZE + slot * entry;
            // Slot `slot` took a response when some index of old..new maps to it.
            let from = if (slot + ENTRIES - old as usize % ENTRIES) % ENTRIES < answered {
                at + rsp
            } else {
                at
            };
            if before[from..at + entry] != after[from..at + entry] {
                return fail(from);
            }
        }
        let end = SRING_HEADER_SIZE + ENTRIES * entry;
        if before[end..] != after[end..] {
            return fail(end);
        }
        Ok(())
    }

    /// After the other ring broke: `ring` ("tx" or "rx") refuses to serve and answers
    /// nothing.
    fn check_stopped(&mut self, ring: &str) -> Result<(), Finding> {
        let (shared, page) = if ring == "tx" {
            (&self.tx, TX_RING_PAGE)
        } else {
            (&self.rx, RX_RING_PAGE)
        };
        let old = index(shared, sring::RSP_PROD);
        let before = self.guest.read(page, 0, PAGE);
        let r = if ring == "tx" {
            self.queue.process_tx(&self.io, &|| {})
        } else {
            self.queue.process_rx(&self.io, &|| {})
        };
        if !matches!(r, Err(NetError::Ring(_))) {
            return Err(format!("{ring}: served after the other ring broke: {r:?}"));
        }
        let shared = if ring == "tx" { &self.tx } else { &self.rx };
        if index(shared, sring::RSP_PROD) != old || self.guest.read(page, 0, PAGE) != before {
            return Err(format!("{ring}: answered after the other ring broke"));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Transmit.

    /// Serves the transmit ring until it is idle (or broken, as `hostile` may have it) and
    /// checks what the backend did; `false` when the ring is broken for good.
    fn serve_tx(&mut self, hostile: Option<Hostile>) -> Result<bool, Finding> {
        let before = self.guest.read(TX_RING_PAGE, 0, PAGE);
        let old = index(&self.tx, sring::RSP_PROD);
        let event = index(&self.tx, sring::RSP_EVENT);
        self.guest.log_copies(true);
        let notified = Cell::new(0u64);
        let notify = || notified.set(notified.get() + 1);
        let mut turns = 0;
        let result = loop {
            turns += 1;
            if turns > 64 {
                return Err("tx: process_tx never went idle".into());
            }
            match self.queue.process_tx(&self.io, &notify) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let log = self.guest.take_copy_log();
        self.guest.log_copies(false);
        self.notifications += notified.get();
        let after = self.guest.read(TX_RING_PAGE, 0, PAGE);
        let new = index(&self.tx, sring::RSP_PROD);
        let published = self.tx_slots.len();
        if new.wrapping_sub(old) as usize > published - old as usize {
            return Err(format!(
                "tx: rsp_prod {new} ran ahead of the {published} requests published"
            ));
        }
        Self::ring_untouched("tx", &before, &after, TX_ENTRY_SIZE, 4, old, new)?;
        match (result, hostile) {
            (Err(NetError::Ring(b)), Some(h)) if h.broken == Some(true) => {
                if b.req_prod != h.value {
                    return Err(format!(
                        "tx: broken for req_prod {}, not {}",
                        b.req_prod, h.value
                    ));
                }
                if new != old || !log.is_empty() {
                    return Err("tx: a broken ring served".into());
                }
                if self.queue.process_tx(&self.io, &|| {}).is_ok() {
                    return Err("tx: a broken ring served again".into());
                }
                return Ok(false);
            }
            (Err(e), _) => return Err(format!("tx: an honest ring refused: {e}")),
            (Ok(()), Some(h)) if h.broken == Some(true) => {
                return Err(format!(
                    "tx: req_prod {} accepted with {} requests taken and {} answered",
                    h.value, h.seen, old
                ));
            }
            (Ok(()), _) => {}
        }
        if notified.get() != u64::from(crosses(event, old, new)) {
            return Err(format!(
                "tx: {} notifications for responses {old}..{new} with rsp_event {event}",
                notified.get()
            ));
        }
        let req_event = index(&self.tx, sring::REQ_EVENT);
        if req_event != published as u32 + 1 {
            return Err(format!(
                "tx: idle with req_event {req_event} after {published} requests"
            ));
        }
        self.tx_rsps.extend(
            self.tx
                .take_raw_responses(NetifTxResponse::SIZE)
                .iter()
                .map(|b| NetifTxResponse::from_bytes(b).expect("4 bytes")),
        );
        self.check_tx(&log)?;
        Ok(true)
    }

    /// Checks the responses to every packet completed so far against the model, the frames
    /// sent against the guest's bytes, and the copies made against the packets' slots.
    fn check_tx(&mut self, log: &[CopyRecord]) -> Result<(), Finding> {
        let published = self.tx_slots.len();
        let mut sent: VecDeque<_> = self.io.take_sent().into();
        let mut reads = Vec::new();
        let answerable;
        loop {
            if self.tx_next >= published {
                answerable = published;
                break;
            }
            let p = TxPkt::parse(&self.tx_slots, self.tx_next);
            let Some(end) = p.end else {
                if p.overlong() {
                    self.check_statuses(&p, published, TxWant::Error)?;
                    answerable = published;
                } else {
                    answerable = p.start;
                }
                break;
            };
            self.check_packet(&p, &mut sent, &mut reads)?;
            self.tx_next = end;
        }
        if self.tx_rsps.len() != answerable {
            return Err(format!(
                "tx: {} responses for {answerable} requests that can be answered",
                self.tx_rsps.len()
            ));
        }
        if !sent.is_empty() {
            return Err(format!(
                "tx: {} frames sent for no packet answered OKAY",
                sent.len()
            ));
        }
        let made: Vec<(u32, u16, usize)> = log.iter().map(|c| (c.gref, c.offset, c.len)).collect();
        if let Some(c) = log.iter().find(|c| c.to_guest) {
            return Err(format!("tx: a copy into the guest: {c:?}"));
        }
        if made != reads {
            let i = made.iter().zip(&reads).take_while(|(a, b)| a == b).count();
            return Err(format!(
                "tx: copy segment {i} (gref, offset, len) is {:?}, the packets' slots call \
                 for {:?} ({} segments made, {} called for)",
                made.get(i),
                reads.get(i),
                made.len(),
                reads.len()
            ));
        }
        Ok(())
    }

    /// Checks that each slot of `p` taken so far is answered in its own slot: requests with
    /// their id and a status `want` allows (the same for all), extra slots `NULL`. The status.
    fn check_statuses(&self, p: &TxPkt, published: usize, want: TxWant) -> Result<i16, Finding> {
        let mut status = None;
        for (s, id) in p.slots(published) {
            let Some(r) = self.tx_rsps.get(s) else {
                return Err(format!(
                    "tx: request {s} (of the packet at {}) unanswered",
                    p.start
                ));
            };
            match id {
                Some(id) => {
                    if r.id != id {
                        return Err(format!(
                            "tx: request {s} (id {id}) answered with id {}",
                            r.id
                        ));
                    }
                    if !want.allows(r.status) {
                        return Err(format!(
                            "tx: request {s} (id {id}, packet at {}, {} bytes) answered {}, \
                             expected {want:?}",
                            p.start, p.first.size, r.status
                        ));
                    }
                    if *status.get_or_insert(r.status) != r.status {
                        return Err(format!(
                            "tx: the packet at {} answered both {} and {}",
                            p.start,
                            status.unwrap_or_default(),
                            r.status
                        ));
                    }
                }
                None if r.status != rsp::NULL => {
                    return Err(format!(
                        "tx: extra slot {s} answered {}, not NULL",
                        r.status
                    ));
                }
                None => {}
            }
        }
        Ok(status.unwrap_or(rsp::ERROR))
    }

    /// Checks a complete packet: its statuses, what was sent for it (popped from `sent`) and
    /// the copy segments it calls for (pushed to `reads`).
    fn check_packet(
        &mut self,
        p: &TxPkt,
        sent: &mut VecDeque<([u8; 10], Vec<u8>)>,
        reads: &mut Vec<(u32, u16, usize)>,
    ) -> Result<(), Finding> {
        let published = self.tx_slots.len();
        let first = p.first;
        let total = usize::from(first.size);
        let extras = &p.extras;
        let gso = extras
            .iter()
            .rfind(|e| e.ty == extra_type::GSO)
            .map(|e| e.gso());
        let mcast = extras
            .iter()
            .any(|e| e.ty == extra_type::MCAST_ADD || e.ty == extra_type::MCAST_DEL);
        let conts_len: usize = p.conts.iter().map(|(_, c)| usize::from(c.size)).sum();
        let first_len = total.checked_sub(conts_len);
        let malformed = p.overlong()
            || extras.iter().any(|e| !e.known_type())
            || first_len.is_none()
            || p.conts
                .iter()
                .any(|(_, c)| usize::from(c.offset) + usize::from(c.size) > PAGE)
            || first_len.is_some_and(|l| usize::from(first.offset) + l > PAGE)
            || total < ETH_HLEN
            || gso
                .is_some_and(|g| g.size == 0 || !matches!(g.ty, gso_type::TCPV4 | gso_type::TCPV6));
        if malformed {
            self.check_statuses(p, published, TxWant::Error)?;
            return Ok(());
        }
        if mcast {
            self.check_statuses(p, published, TxWant::Okay)?;
            return Ok(());
        }
        let first_len = first_len.expect("checked");
        let mut segs = vec![(first.gref, first.offset, first_len)];
        segs.extend(
            p.conts
                .iter()
                .map(|(_, c)| (c.gref, c.offset, usize::from(c.size))),
        );
        segs.retain(|s| s.2 > 0);
        if !self.fail_copies {
            reads.extend(&segs);
        }
        let grants: Vec<_> = segs.iter().map(|s| self.guest.grant_of(s.0)).collect();
        if self.fail_copies || grants.iter().any(Option::is_none) {
            self.check_statuses(p, published, TxWant::Error)?;
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(total);
        for (s, g) in segs.iter().zip(&grants) {
            bytes.extend(
                self.guest
                    .read(g.expect("granted").page, usize::from(s.1), s.2),
            );
        }
        let blank = first.flags & txf::CSUM_BLANK != 0;
        let offload = blank || gso.is_some();
        let refused = (self.refuse_mask >> (total % 64)) & 1 == 1;
        // Slots in a ring page (a hostile reference, or a stale slot's): the transmit ring
        // changed as the backend answered, so its bytes are not known.
        let from_ring = grants.iter().flatten().any(|g| g.page < TX_FIRST);
        // What the generator built, if the packet is still that.
        let parse = match self.tx_frames.get(&p.start) {
            Some(f) if f.bytes == bytes && !from_ring => f.parse,
            _ => Parse::Unknown,
        };
        let want = if !offload {
            TxWant::Okay
        } else {
            match parse {
                Parse::Known(l4) => {
                    let fits = gso.is_none_or(|g| l4.tcp && (g.ty == gso_type::TCPV6) == l4.v6);
                    if fits {
                        TxWant::Okay
                    } else {
                        TxWant::Dropped
                    }
                }
                Parse::NotIp => TxWant::Dropped,
                Parse::Unknown => TxWant::OkayOrDropped,
            }
        };
        let want = if refused && want != TxWant::Error {
            TxWant::Dropped
        } else {
            want
        };
        let status = self.check_statuses(p, published, want)?;
        if status != rsp::OKAY {
            return Ok(());
        }
        let Some((hdr, got)) = sent.pop_front() else {
            return Err(format!(
                "tx: the packet at {} answered OKAY and not sent",
                p.start
            ));
        };
        self.tx_sent += 1;
        self.tx_sent_bytes += total as u64;
        let h = VnetHdr::from_bytes(&hdr);
        let at = p.start;
        if got.len() != total {
            return Err(format!(
                "tx: the packet at {at} sent {} bytes, not {total}",
                got.len()
            ));
        }
        let mut fixed = None;
        if !offload {
            let want = VnetHdr {
                flags: if first.flags & txf::DATA_VALIDATED != 0 {
                    vnet::F_DATA_VALID
                } else {
                    0
                },
                ..VnetHdr::default()
            };
            if h != want {
                return Err(format!(
                    "tx: the packet at {at} sent with {h:?}, not {want:?}"
                ));
            }
        } else {
            let (start, off) = (usize::from(h.csum_start), usize::from(h.csum_offset));
            if h.flags != vnet::F_NEEDS_CSUM || !(off == 6 || off == 16) || start + off + 2 > total
            {
                return Err(format!(
                    "tx: the packet at {at} ({total} bytes) sent with {h:?}"
                ));
            }
            if let Parse::Known(l4) = parse {
                if start != l4.start || off != if l4.tcp { 16 } else { 6 } {
                    return Err(format!(
                        "tx: the packet at {at} sent with {h:?}, its transport header at {}",
                        l4.start
                    ));
                }
            }
            match gso {
                None => {
                    if h.gso_type != vnet::GSO_NONE || h.gso_size != 0 {
                        return Err(format!("tx: the packet at {at} sent with {h:?}, not GSO"));
                    }
                }
                Some(g) => {
                    let ty = if g.ty == gso_type::TCPV4 {
                        vnet::GSO_TCPV4
                    } else {
                        vnet::GSO_TCPV6
                    };
                    let hdr_ok = usize::from(h.hdr_len) > start && usize::from(h.hdr_len) <= total;
                    if h.gso_type & !vnet::GSO_ECN != ty || h.gso_size != g.size || !hdr_ok {
                        return Err(format!("tx: the packet at {at} sent with {h:?} for {g:?}"));
                    }
                    if let Parse::Known(l4) = parse {
                        if usize::from(h.hdr_len) != l4.end {
                            return Err(format!(
                                "tx: the packet at {at} sent with {h:?}, its headers {} long",
                                l4.end
                            ));
                        }
                    }
                    if !blank {
                        // The partial checksum, set up by the backend.
                        fixed = Some(start + off);
                        if let Parse::Known(l4) = parse {
                            let want = pseudo_sum(&bytes, &l4);
                            let field =
                                u16::from_be_bytes([got[start + off], got[start + off + 1]]);
                            if field != want {
                                return Err(format!(
                                    "tx: the packet at {at} sent with partial checksum {field:#x}, \
                                     not {want:#x}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        let differs = (got != bytes && !from_ring)
            .then(|| {
                (0..total)
                    .find(|&i| got[i] != bytes[i] && !fixed.is_some_and(|f| i == f || i == f + 1))
            })
            .flatten();
        if let Some(i) = differs {
            return Err(format!(
                "tx: the packet at {at} sent with byte {i} {:#x}, the guest's is {:#x}",
                got[i], bytes[i]
            ));
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Receive.

    /// Serves the receive ring until it is idle (every frame from the host taken, or one
    /// waiting for requests), or broken, and checks what the backend did; `false` when the
    /// ring is broken for good.
    fn serve_rx(&mut self, hostile: Option<Hostile>) -> Result<bool, Finding> {
        let before = self.guest.read(RX_RING_PAGE, 0, PAGE);
        let old = index(&self.rx, sring::RSP_PROD);
        let event = index(&self.rx, sring::RSP_EVENT);
        self.guest.log_copies(true);
        let notified = Cell::new(0u64);
        let notify = || notified.set(notified.get() + 1);
        let mut turns = 0;
        let result = loop {
            turns += 1;
            if turns > 256 {
                return Err("rx: process_rx never went idle".into());
            }
            let waiting = self.io.waiting();
            match self.queue.process_rx(&self.io, &notify) {
                Ok(true) => {}
                Ok(false) => {
                    let now = self.io.waiting();
                    if now == 0 || self.queue.rx_waiting() {
                        break Ok(());
                    }
                    if now == waiting {
                        return Err(format!(
                            "rx: idle with {now} frames from the host and none waiting for requests"
                        ));
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let log = self.guest.take_copy_log();
        self.guest.log_copies(false);
        self.notifications += notified.get();
        let after = self.guest.read(RX_RING_PAGE, 0, PAGE);
        let new = index(&self.rx, sring::RSP_PROD);
        // The requests the backend may take: with a req_prod it may refuse, those it may have
        // seen before.
        let sound = hostile.is_none_or(|h| h.broken == Some(false));
        let published = if sound {
            self.rx_reqs.len()
        } else {
            hostile.map_or(0, |h| h.seen)
        };
        if new.wrapping_sub(old) as usize > published.saturating_sub(old as usize) {
            return Err(format!(
                "rx: rsp_prod {new} ran ahead of the {published} requests the backend may take"
            ));
        }
        Self::ring_untouched(
            "rx",
            &before,
            &after,
            RX_ENTRY_SIZE,
            RX_ENTRY_SIZE,
            old,
            new,
        )?;
        let mut go_on = true;
        match (result, hostile) {
            (Err(NetError::Ring(b)), Some(h)) if h.broken != Some(false) => {
                if b.req_prod != h.value {
                    return Err(format!(
                        "rx: broken for req_prod {}, not {}",
                        b.req_prod, h.value
                    ));
                }
                self.rx_lossy = true;
                go_on = false;
            }
            (Err(e), _) => return Err(format!("rx: an honest ring refused: {e}")),
            (Ok(()), _) => {
                if notified.get() != u64::from(crosses(event, old, new)) {
                    return Err(format!(
                        "rx: {} notifications for responses {old}..{new} with rsp_event {event}",
                        notified.get()
                    ));
                }
                if self.queue.rx_waiting() && sound {
                    let req_event = index(&self.rx, sring::REQ_EVENT);
                    if req_event != published as u32 + 1 {
                        return Err(format!(
                            "rx: a frame waits with req_event {req_event} after {published} \
                             requests"
                        ));
                    }
                }
            }
        }
        let raw = self.rx.take_raw_responses(RX_ENTRY_SIZE);
        self.check_rx(&raw, &log)?;
        Ok(go_on)
    }

    /// Reads this round's responses into frames as the frontend does, checking each
    /// response against its request and the copy made for it.
    fn check_rx(&mut self, raw: &[Vec<u8>], log: &[CopyRecord]) -> Result<(), Finding> {
        let base = self.rx_rsps;
        self.rx_rsps += raw.len();
        let mut copies = log.iter();
        let mut chains = Vec::new();
        let mut writers: HashMap<usize, usize> = HashMap::new();
        let mut written = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let mut chain = Chain {
                at: base + i,
                flags: 0,
                gso: None,
                data: Vec::new(),
            };
            loop {
                let k = base + i;
                let Some(b) = raw.get(i) else {
                    return Err(format!("rx: the frame at {} has no last slot", chain.at));
                };
                let r = NetifRxResponse::from_bytes(b).expect("8 bytes");
                let req = self.rx_reqs[k];
                let first = chain.data.is_empty();
                let known =
                    rxf::DATA_VALIDATED | rxf::CSUM_BLANK | rxf::MORE_DATA | rxf::EXTRA_INFO;
                let allowed = if first { known } else { rxf::MORE_DATA };
                if r.id != req.id || r.offset != 0 || r.flags & !allowed != 0 {
                    return Err(format!("rx: response {k} is {r:?} for request {req:?}"));
                }
                if r.status != rsp::ERROR && !(1..=PAGE as i16).contains(&r.status) {
                    return Err(format!("rx: response {k} has status {}", r.status));
                }
                let grant = self.guest.grant_of(req.gref);
                let writable = !self.fail_copies && grant.is_some_and(|g| !g.readonly);
                if (r.status > 0) != writable {
                    return Err(format!(
                        "rx: response {k} status {} for gref {} granted {grant:?}",
                        r.status, req.gref
                    ));
                }
                let mut len = (r.status > 0).then_some(r.status as usize);
                if !self.fail_copies {
                    let Some(c) = copies.next() else {
                        return Err(format!("rx: response {k} with no copy made for it"));
                    };
                    let fits = c.offset == 0 && (1..=PAGE).contains(&c.len);
                    let matches = if r.status > 0 {
                        c.status == 0 && c.len == r.status as usize
                    } else {
                        c.status != 0
                    };
                    if !c.to_guest || c.gref != req.gref || !fits || !matches {
                        return Err(format!("rx: response {k} ({r:?}) made copy {c:?}"));
                    }
                    len = Some(c.len);
                }
                if r.status > 0 {
                    let page = grant.expect("granted").page;
                    *writers.entry(page).or_default() += 1;
                    written.push((chains.len(), chain.data.len(), page));
                }
                chain.data.push(RxSlot { len, bytes: None });
                i += 1;
                if first {
                    chain.flags = r.flags;
                    if r.flags & rxf::EXTRA_INFO != 0 {
                        let Some(b) = raw.get(i) else {
                            return Err(format!(
                                "rx: the frame at {} lacks its extra slot",
                                chain.at
                            ));
                        };
                        let e = NetifExtraInfo::from_bytes(b).expect("8 bytes");
                        let g = e.gso();
                        if e.ty != extra_type::GSO
                            || e.flags != 0
                            || g.size == 0
                            || !matches!(g.ty, gso_type::TCPV4 | gso_type::TCPV6)
                        {
                            return Err(format!("rx: extra slot {} is {e:?}", base + i));
                        }
                        chain.gso = Some(g);
                        i += 1;
                    }
                }
                if r.flags & rxf::MORE_DATA == 0 {
                    break;
                }
            }
            chains.push(chain);
        }
        if let Some(c) = copies.next() {
            return Err(format!("rx: copy {c:?} made for no response"));
        }
        for (c, s, page) in written {
            if writers[&page] == 1 {
                let len = chains[c].data[s].len.expect("copied");
                chains[c].data[s].bytes = Some(self.guest.read(page, 0, len));
            }
        }
        self.rx_chains.extend(chains);
        Ok(())
    }

    /// The delivered frames are, in order, the frames the host sent less some of those that
    /// may be dropped, and none of those that must be.
    fn match_frames(&self) -> Result<(), Finding> {
        let resolved =
            self.rx_frames.len() - self.io.waiting() - usize::from(self.queue.rx_waiting());
        let frames = &self.rx_frames[..resolved];
        let chains = &self.rx_chains;
        let expect = |f: &Injected| {
            if self.rx_lossy && f.expect == Expect::Deliver {
                Expect::Either
            } else {
                f.expect
            }
        };
        let (m, n) = (chains.len(), frames.len());
        // can[i][j]: chains i.. are frames j.. less droppable ones.
        let mut can = vec![vec![false; n + 1]; m + 1];
        can[m][n] = true;
        for j in (0..n).rev() {
            can[m][j] = can[m][j + 1] && expect(&frames[j]) != Expect::Deliver;
        }
        for i in (0..m).rev() {
            for j in (0..n).rev() {
                let e = expect(&frames[j]);
                can[i][j] = (e != Expect::Deliver && can[i][j + 1])
                    || (e != Expect::Drop
                        && can[i + 1][j + 1]
                        && compat(&chains[i], &frames[j], &self.options).is_ok());
            }
        }
        if can[0][0] {
            return Ok(());
        }
        // Say what went wrong: a frame delivered that is none of the host's, or one missing.
        for c in chains {
            if frames.iter().all(|f| compat(c, f, &self.options).is_err()) {
                // Why not the frames of as many slots.
                let why: Vec<_> = frames
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.bytes.len().div_ceil(PAGE) == c.data.len())
                    .filter_map(|(j, f)| compat(c, f, &self.options).err().map(|e| (j, e)))
                    .collect();
                return Err(format!(
                    "rx: the frame delivered at response {} ({} slots of {:?} bytes, flags \
                     {:#x}, gso {:?}) is none of the {n} frames from the host (those of as \
                     many slots: {why:?})",
                    c.at,
                    c.data.len(),
                    c.data.iter().map(|s| s.len).collect::<Vec<_>>(),
                    c.flags,
                    c.gso
                ));
            }
        }
        let must: Vec<usize> = (0..n)
            .filter(|&j| expect(&frames[j]) == Expect::Deliver)
            .collect();
        Err(format!(
            "rx: the {m} frames delivered are not, in order, the {n} from the host less some \
             that may be dropped (must deliver {must:?} of lengths {:?}; delivered: {:?})",
            must.iter()
                .map(|&j| frames[j].bytes.len())
                .collect::<Vec<_>>(),
            chains
                .iter()
                .map(|c| c.data.iter().map(|s| s.len).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        ))
    }

    /// The queue's counters agree with what it was seen to do.
    fn check_stats(&self) -> Result<(), Finding> {
        let s = self.queue.stats();
        if s.tx_packets != self.tx_sent || s.tx_bytes != self.tx_sent_bytes {
            return Err(format!(
                "stats: {} packets of {} bytes sent, counted {} of {}",
                self.tx_sent, self.tx_sent_bytes, s.tx_packets, s.tx_bytes
            ));
        }
        let chains = self.rx_chains.len() as u64;
        if !self.rx_lossy && s.rx_packets + s.rx_errors != chains {
            return Err(format!(
                "stats: {chains} frames delivered, counted {} and {} failed",
                s.rx_packets, s.rx_errors
            ));
        }
        if s.notifications != self.notifications {
            return Err(format!(
                "stats: {} notifications, counted {}",
                self.notifications, s.notifications
            ));
        }
        Ok(())
    }
}

/// Keeps glibc's heap from going back to the kernel after every input and coming back one
/// page fault at a time in the next: a queue's buffers (over 600 KiB, allocated zeroed) and
/// the guest's memory are freed at the end of each input, which has glibc trim the heap's top,
/// and the next input faults it in again (half of the time an input took).
fn keep_the_heap() {
    #[cfg(target_env = "gnu")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only sets two tuning parameters of glibc's allocator (taking its
            // lock); no memory is touched and every allocation stays valid.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            }
        });
    }
}

/// One input: a queue, a few rounds of traffic both ways, checked after each.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    keep_the_heap();
    let mut r = Run::new(rng)?;
    let rounds = rng.random_range(1..=4);
    // Warm-ups that carry the rings' indexes past their end: cheap runt packets, small
    // frames into one page.
    if rng.random_bool(0.1) {
        for _ in 0..rng.random_range(ENTRIES - 64..ENTRIES) {
            let id = r.tx_next_id;
            r.tx_next_id = id.wrapping_add(1);
            let req = NetifTxRequest {
                gref: GREF + TX_FIRST as u32,
                offset: 0,
                flags: 0,
                id,
                size: rng.random_range(0..ETH_HLEN as u16),
            };
            r.tx_backlog.push_back((req.to_bytes(), None));
        }
        let n = r.tx_backlog.len();
        r.publish_tx(n);
        r.serve_tx(None)?;
    }
    if rng.random_bool(0.03) {
        let n = rng.random_range(ENTRIES - 24..ENTRIES);
        for _ in 0..n {
            r.rx_next_id = r.rx_next_id.wrapping_add(1);
            let req = NetifRxRequest {
                id: r.rx_next_id,
                pad: 0,
                gref: GREF + (RX_FIRST + r.rx_reqs.len() % RX_PAGES) as u32,
            };
            r.rx.queue_raw(&req.to_bytes());
            r.rx_reqs.push(req);
        }
        r.rx.publish();
        for _ in 0..n {
            let len = rng.random_range(60..=200);
            let f = frame(rng, len, None);
            let expect = if f.bytes.len() >= ETH_HLEN {
                Expect::Deliver
            } else {
                Expect::Drop
            };
            r.inject(Injected::new(VnetHdr::default(), f.bytes, expect));
        }
        r.serve_rx(None)?;
    }
    let mut tx_live = true;
    let mut rx_live = true;
    for round in 0..rounds {
        let last = round + 1 == rounds;
        let tx_before = r.tx_slots.len();
        let rx_before = r.rx_reqs.len();
        // Grants the frontend ends or gives anew.
        if rng.random_bool(0.15) {
            let p = rng.random_range(TX_FIRST..PAGES);
            match rng.random_range(0..3) {
                0 => {
                    r.guest.revoke(GREF + p as u32);
                }
                1 => r.guest.grant(GREF + p as u32, p, true),
                _ => r.guest.grant(GREF + p as u32, p, false),
            }
        }
        r.fail_copies = rng.random_bool(0.03);
        r.guest.fail_copies(r.fail_copies);

        // Transmit: packets, some slots all random, published whole or cut.
        for _ in 0..rng.random_range(0..=10) {
            if rng.random_bool(0.05) {
                for _ in 0..rng.random_range(1..=3) {
                    let mut b = [0u8; TX_ENTRY_SIZE];
                    rng.fill(&mut b[..]);
                    r.tx_backlog.push_back((b, None));
                }
                continue;
            }
            match tx_packet(rng, &r.guest, &mut r.area, &mut r.tx_next_id) {
                Some(slots) => r.tx_backlog.extend(slots),
                None => break,
            }
        }
        let n = if rng.random_bool(0.2) {
            rng.random_range(0..=r.tx_backlog.len())
        } else {
            r.tx_backlog.len()
        };
        if tx_live {
            r.publish_tx(n);
        }

        // Receive: requests, some of them too few for the frames that follow.
        let frames: Vec<Injected> = (0..rng.random_range(0..=5))
            .map(|_| rx_frame(rng, &r.options))
            .collect();
        let need: usize = frames
            .iter()
            .map(|f| f.bytes.len().div_ceil(PAGE) + 1)
            .sum();
        let posts = match rng.random_range(0..4) {
            0 => rng.random_range(0..=need),
            1 => rng.random_range(0..=24),
            _ => need,
        };
        if rx_live {
            r.post_rx(rng, posts);
            for f in frames {
                r.inject(f);
            }
        }

        // A hostile req_prod, last.
        let mut tx_hostile = None;
        let mut rx_hostile = None;
        if last && rng.random_bool(0.15) {
            if tx_live && rng.random_bool(0.6) {
                // The backend took (and saw) every request of the rounds before.
                let (taken, answered) = (tx_before, r.tx_rsps.len());
                let value = Run::hostile_value(rng, taken, answered);
                let broken = Run::refuses(value, taken, answered);
                r.tx.set_req_prod(value);
                if !broken {
                    let to = taken + value.wrapping_sub(taken as u32) as usize;
                    let from = r.tx_slots.len().min(to);
                    r.tx_slots.truncate(from);
                    let stale = Run::stale(&r.guest, TX_RING_PAGE, TX_ENTRY_SIZE, from, to, false);
                    r.tx_slots.extend(stale);
                }
                tx_hostile = Some(Hostile {
                    value,
                    broken: Some(broken),
                    seen: taken,
                });
            }
            if rx_live && rng.random_bool(0.6) {
                // The backend took the requests of the frames it answered, and all it saw if
                // a frame waits; it saw at least what it took and at most what was published.
                let answered = r.rx_rsps;
                let least = if r.queue.rx_waiting() {
                    rx_before
                } else {
                    answered
                };
                let value = Run::hostile_value(rng, least, answered);
                let broken = match (
                    Run::refuses(value, least, answered),
                    Run::refuses(value, rx_before, answered),
                ) {
                    (true, true) => Some(true),
                    (false, false) => Some(false),
                    _ => None,
                };
                r.rx.set_req_prod(value);
                if broken == Some(false) {
                    let to = answered + value.wrapping_sub(answered as u32) as usize;
                    let from = r.rx_reqs.len().min(to);
                    r.rx_reqs.truncate(from);
                    let stale = Run::stale(&r.guest, RX_RING_PAGE, RX_ENTRY_SIZE, from, to, true);
                    r.rx_reqs.extend(
                        stale
                            .iter()
                            .map(|b| NetifRxRequest::from_bytes(b).expect("8 bytes")),
                    );
                }
                rx_hostile = Some(Hostile {
                    value,
                    broken,
                    seen: rx_before,
                });
            }
        }
        // A frontend's rsp_event anywhere.
        if rng.random_bool(0.1) {
            r.tx.shared_index(sring::RSP_EVENT)
                .store(rng.random(), Ordering::Relaxed);
        }
        if rng.random_bool(0.1) {
            r.rx.shared_index(sring::RSP_EVENT)
                .store(rng.random(), Ordering::Relaxed);
        }

        // A broken ring stops the whole queue: the other ring serves nothing more either.
        if tx_live {
            tx_live = r.serve_tx(tx_hostile)?;
            if !tx_live && rx_live {
                r.check_stopped("rx")?;
                r.rx_lossy = true;
                rx_live = false;
            }
        }
        if rx_live {
            rx_live = r.serve_rx(rx_hostile)?;
            if !rx_live && tx_live {
                r.check_stopped("tx")?;
                tx_live = false;
            }
        }
        r.guest.fail_copies(false);
        r.fail_copies = false;
    }
    r.match_frames()?;
    r.check_stats()
}
