//! The net queue end to end: a fake netfront fills the transmit and receive rings in fake
//! guest memory as xen-netfront would, the queue serves them against an in-memory host
//! interface ([`FakePacketIo`]). Transmit here, transmit refusals in `tx_errors`, receive in
//! `rx`, the run loop in `run`.

mod run;
mod rx;
mod tx_errors;

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use keel_core::xen::netif::{
    extra_type, gso_type, rsp, txf, NetifExtraGso, NetifExtraInfo, NetifRxRequest, NetifRxResponse,
    NetifTxRequest, NetifTxResponse, RX_ENTRY_SIZE, TX_ENTRY_SIZE,
};

use super::packet::tests::{ipv4, ipv6, tcp, udp};
use super::packet::{self, IPPROTO_TCP, IPPROTO_UDP};
use super::{vnet, NetError, NetOptions, NetQueue, VnetHdr, VNET_HDR_LEN};
use crate::grant::GrantAccess;
use crate::testing::{FakeGuest, FakePacketIo, FakeRing};

/// Guest pages: the transmit ring at 0, the receive ring at 1; transmit data pages from
/// [`TX_DATA`], receive pages from [`RX_DATA`]; data pages granted as `GREF + page`.
const TX_RING_PAGE: usize = 0;
const RX_RING_PAGE: usize = 1;
const TX_DATA: usize = 4;
const TX_PAGES: usize = 256;
const RX_DATA: usize = TX_DATA + TX_PAGES;
const RX_PAGES: usize = 48;
const GUEST_PAGES: usize = RX_DATA + RX_PAGES;
const GREF: u32 = 1000;
const TX_RING_REF: u32 = 1;
const RX_RING_REF: u32 = 2;

/// Deterministic bytes for `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A frame received by the frontend: its first slot's flags, its GSO slot, its data.
#[derive(Debug, PartialEq, Eq)]
struct Received {
    flags: u16,
    gso: Option<NetifExtraGso>,
    data: Vec<u8>,
    statuses: Vec<i16>,
}

struct Rig {
    guest: FakeGuest,
    tx: FakeRing,
    rx: FakeRing,
    queue: NetQueue,
    io: FakePacketIo,
    notifications: Cell<u64>,
    /// The next transmit data page (cycling through the transmit data pages).
    next_tx_page: usize,
    next_tx_id: u16,
    next_rx_id: u16,
    /// Receive request id -> the page posted with it.
    rx_pages: HashMap<u16, usize>,
}

impl Rig {
    fn new(options: NetOptions) -> Rig {
        let guest = FakeGuest::new(GUEST_PAGES);
        for p in TX_DATA..GUEST_PAGES {
            guest.grant(GREF + p as u32, p, false);
        }
        let tx = FakeRing::new(&guest, TX_RING_PAGE, 1, TX_RING_REF, TX_ENTRY_SIZE);
        let rx = FakeRing::new(&guest, RX_RING_PAGE, 1, RX_RING_REF, RX_ENTRY_SIZE);
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.clone());
        let queue = NetQueue::attach(grants, TX_RING_REF, RX_RING_REF, options).expect("queue");
        Rig {
            guest,
            tx,
            rx,
            queue,
            io: FakePacketIo::new(),
            notifications: Cell::new(0),
            next_tx_page: 0,
            next_tx_id: 0,
            next_rx_id: 0,
            rx_pages: HashMap::new(),
        }
    }

    /// Options with everything Linux netfront negotiates.
    fn netfront() -> Rig {
        Rig::new(NetOptions {
            sg: true,
            gso: true,
            csum_ipv6: true,
            ..NetOptions::default()
        })
    }

    fn tx_page(&mut self) -> usize {
        let p = TX_DATA + self.next_tx_page;
        self.next_tx_page = (self.next_tx_page + 1) % TX_PAGES;
        p
    }

    fn tx_id(&mut self) -> u16 {
        let id = self.next_tx_id;
        self.next_tx_id = self.next_tx_id.wrapping_add(1);
        id
    }

    /// Queues a raw transmit request.
    fn tx_req(&mut self, r: NetifTxRequest) {
        self.tx.queue_raw(&r.to_bytes());
    }

    /// Queues `frame` as netfront does: each `(offset, len)` of `slots` a slot in a fresh
    /// page (the lengths add up to the frame), the first with `flags` and the whole length,
    /// then the `extras` after the first slot. The ids of the data slots.
    fn send(
        &mut self,
        frame: &[u8],
        slots: &[(usize, usize)],
        flags: u16,
        extras: &[NetifExtraInfo],
    ) -> Vec<u16> {
        assert_eq!(slots.iter().map(|s| s.1).sum::<usize>(), frame.len());
        let mut ids = Vec::new();
        let mut at = 0;
        for (i, &(offset, len)) in slots.iter().enumerate() {
            let page = self.tx_page();
            self.guest.write(page, offset, &frame[at..at + len]);
            at += len;
            let id = self.tx_id();
            ids.push(id);
            let mut f = if i + 1 < slots.len() {
                txf::MORE_DATA
            } else {
                0
            };
            if i == 0 {
                f |= flags;
                if !extras.is_empty() {
                    f |= txf::EXTRA_INFO;
                }
            }
            self.tx_req(NetifTxRequest {
                gref: GREF + page as u32,
                offset: offset as u16,
                flags: f,
                id,
                size: if i == 0 {
                    frame.len() as u16
                } else {
                    len as u16
                },
            });
            if i == 0 {
                for (j, e) in extras.iter().enumerate() {
                    let mut e = *e;
                    if j + 1 < extras.len() {
                        e.flags |= keel_core::xen::netif::EXTRA_FLAG_MORE;
                    }
                    self.tx.queue_raw(&e.to_bytes());
                }
            }
        }
        ids
    }

    /// A frame in one slot at offset 0.
    fn send_simple(&mut self, frame: &[u8]) -> u16 {
        self.send(frame, &[(0, frame.len())], 0, &[])[0]
    }

    /// Publishes what was queued, serves the transmit ring until it is idle, and takes the
    /// responses.
    fn serve_tx(&mut self) -> Result<Vec<NetifTxResponse>, NetError> {
        self.tx.publish();
        let notify = || self.notifications.set(self.notifications.get() + 1);
        while self.queue.process_tx(&self.io, &notify)? {}
        Ok(self.take_tx())
    }

    fn take_tx(&mut self) -> Vec<NetifTxResponse> {
        self.tx
            .take_raw_responses(NetifTxResponse::SIZE)
            .iter()
            .map(|b| NetifTxResponse::from_bytes(b).expect("4 bytes"))
            .collect()
    }

    /// Posts `n` receive requests (ids counting up, each with a page of its own, zeroed).
    fn post_rx(&mut self, n: usize) -> Vec<u16> {
        (0..n)
            .map(|_| {
                let id = self.next_rx_id;
                self.next_rx_id = self.next_rx_id.wrapping_add(1);
                let page = RX_DATA + usize::from(id) % RX_PAGES;
                self.guest.write(page, 0, &[0; 4096]);
                self.rx_pages.insert(id, page);
                self.rx.queue_raw(
                    &NetifRxRequest {
                        id,
                        pad: 0,
                        gref: GREF + page as u32,
                    }
                    .to_bytes(),
                );
                id
            })
            .collect()
    }

    /// Publishes the posted requests and serves the receive ring until it is idle; the raw
    /// responses.
    fn serve_rx(&mut self) -> Result<Vec<[u8; 8]>, NetError> {
        self.rx.publish();
        let notify = || self.notifications.set(self.notifications.get() + 1);
        while self.queue.process_rx(&self.io, &notify)? {}
        Ok(self.take_rx())
    }

    fn take_rx(&mut self) -> Vec<[u8; 8]> {
        self.rx
            .take_raw_responses(RX_ENTRY_SIZE)
            .iter()
            .map(|b| b.as_slice().try_into().expect("8 bytes"))
            .collect()
    }

    /// Serves the receive ring and reads the frames it delivered.
    fn serve_received(&mut self) -> Vec<Received> {
        let rsps = self.serve_rx().expect("served");
        self.received(&rsps)
    }

    /// Reads frames out of receive responses as netfront does (`xennet_get_responses`).
    fn received(&self, rsps: &[[u8; 8]]) -> Vec<Received> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < rsps.len() {
            let first = NetifRxResponse::from_bytes(&rsps[i]).unwrap();
            let mut r = Received {
                flags: first.flags,
                gso: None,
                data: Vec::new(),
                statuses: Vec::new(),
            };
            let mut cur = first;
            loop {
                r.statuses.push(cur.status);
                if cur.status > 0 {
                    let page = self.rx_pages[&cur.id];
                    r.data.extend(self.guest.read(
                        page,
                        usize::from(cur.offset),
                        cur.status as usize,
                    ));
                }
                if cur.flags & keel_core::xen::netif::rxf::EXTRA_INFO != 0 {
                    i += 1;
                    let e = NetifExtraInfo::from_bytes(&rsps[i]).unwrap();
                    assert_eq!(e.ty, extra_type::GSO);
                    r.gso = Some(e.gso());
                }
                i += 1;
                if cur.flags & keel_core::xen::netif::rxf::MORE_DATA == 0 {
                    break;
                }
                cur = NetifRxResponse::from_bytes(&rsps[i]).unwrap();
            }
            out.push(r);
        }
        out
    }
}

fn ok(id: u16) -> NetifTxResponse {
    NetifTxResponse {
        id,
        status: rsp::OKAY,
    }
}

fn null() -> NetifTxResponse {
    NetifTxResponse {
        id: 0,
        status: rsp::NULL,
    }
}

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

#[test]
fn a_one_slot_packet_reaches_the_host_intact() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(1, 100)));
    let id = rig.send(&frame, &[(200, frame.len())], 0, &[])[0];
    assert_eq!(rig.serve_tx().unwrap(), [ok(id)]);
    assert_eq!(rig.io.take_sent(), [([0; VNET_HDR_LEN], frame.clone())]);
    let s = rig.queue.stats();
    assert_eq!(
        (s.tx_packets, s.tx_bytes, s.tx_errors, s.tx_dropped),
        (1, frame.len() as u64, 0, 0)
    );
    assert_eq!(rig.notifications.get(), 1);
}

#[test]
fn a_multi_slot_packet_is_reassembled() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(2, 4958)));
    assert_eq!(frame.len(), 5000);
    let ids = rig.send(&frame, &[(96, 4000), (0, 800), (2048, 200)], 0, &[]);
    assert_eq!(
        rig.serve_tx().unwrap(),
        ids.iter().map(|&i| ok(i)).collect::<Vec<_>>()
    );
    let sent = rig.io.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, frame);
    // A data-validated packet tells the host so.
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(3, 50)));
    rig.send(
        &frame,
        &[(0, 20), (0, frame.len() - 20)],
        txf::DATA_VALIDATED,
        &[],
    );
    assert_eq!(rig.serve_tx().unwrap().len(), 2);
    let sent = rig.io.take_sent();
    assert_eq!(VnetHdr::from_bytes(&sent[0].0).flags, vnet::F_DATA_VALID);
    assert_eq!(sent[0].1, frame);
}

#[test]
fn blank_checksums_become_needs_csum_with_the_transport_header_found() {
    let mut rig = Rig::new(NetOptions::default());
    let blank = txf::CSUM_BLANK | txf::DATA_VALIDATED;
    let cases = [
        (ipv4(false, IPPROTO_TCP, &tcp(12, &pattern(4, 300))), 34, 16),
        (ipv6(IPPROTO_UDP, &[], &udp(&pattern(5, 300))), 54, 6),
        (ipv4(true, IPPROTO_TCP, &tcp(0, &pattern(6, 300))), 38, 16),
    ];
    for (frame, _, _) in &cases {
        rig.send(frame, &[(0, 60), (100, frame.len() - 60)], blank, &[]);
    }
    assert!(rig
        .serve_tx()
        .unwrap()
        .iter()
        .all(|r| r.status == rsp::OKAY));
    let sent = rig.io.take_sent();
    assert_eq!(sent.len(), 3);
    for ((frame, start, offset), (hdr, got)) in cases.iter().zip(&sent) {
        let h = VnetHdr::from_bytes(hdr);
        assert_eq!(
            h,
            VnetHdr {
                flags: vnet::F_NEEDS_CSUM,
                csum_start: *start,
                csum_offset: *offset,
                ..VnetHdr::default()
            }
        );
        assert_eq!(got, frame);
    }
}

#[test]
fn a_gso_extra_slot_sets_the_gso_fields_and_is_answered_null() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_TCP, &tcp(12, &pattern(7, 3000)));
    let blank = txf::CSUM_BLANK | txf::DATA_VALIDATED;
    let ids = rig.send(
        &frame,
        &[(0, 1000), (0, frame.len() - 1000)],
        blank,
        &[gso_extra(1448, gso_type::TCPV4)],
    );
    assert_eq!(rig.serve_tx().unwrap(), [ok(ids[0]), null(), ok(ids[1])]);
    let sent = rig.io.take_sent();
    assert_eq!(
        VnetHdr::from_bytes(&sent[0].0),
        VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    );
    assert_eq!(sent[0].1, frame);

    // TCP/IPv6 GSO from a frontend that forgot csum_blank: the partial checksum is set up
    // here, with a hash extra slot before the GSO one (ignored).
    let frame = ipv6(IPPROTO_TCP, &[], &tcp(0, &pattern(8, 5000)));
    let hash = NetifExtraInfo {
        ty: extra_type::HASH,
        flags: 0,
        u: [1, 1, 0, 0, 0, 0],
    };
    let ids = rig.send(
        &frame,
        &[(0, 4096), (0, frame.len() - 4096)],
        0,
        &[hash, gso_extra(1428, gso_type::TCPV6)],
    );
    assert_eq!(
        rig.serve_tx().unwrap(),
        [ok(ids[0]), null(), null(), ok(ids[1])]
    );
    let sent = rig.io.take_sent();
    let h = VnetHdr::from_bytes(&sent[0].0);
    assert_eq!(
        (h.flags, h.gso_type, h.gso_size, h.hdr_len, h.csum_start),
        (vnet::F_NEEDS_CSUM, vnet::GSO_TCPV6, 1428, 74, 54)
    );
    let t = packet::transport(&sent[0].1).unwrap();
    let field = u16::from_be_bytes([sent[0].1[70], sent[0].1[71]]);
    assert_eq!(Some(field), packet::pseudo_header_sum(&sent[0].1, &t));
    assert_eq!(sent[0].1[..70], frame[..70]);
    assert_eq!(sent[0].1[72..], frame[72..]);
}

#[test]
fn read_only_grants_are_enough_to_transmit() {
    let mut rig = Rig::new(NetOptions::default());
    // netfront grants its transmit pages read-only.
    let page = TX_DATA;
    rig.guest.grant(GREF + page as u32, page, true);
    let frame = ipv4(false, IPPROTO_UDP, &udp(b"read-only"));
    let id = rig.send_simple(&frame);
    assert_eq!(rig.serve_tx().unwrap(), [ok(id)]);
    assert_eq!(rig.io.take_sent()[0].1, frame);
}

#[test]
fn a_packet_waits_for_its_last_slots() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(9, 2000)));
    rig.guest.write(TX_DATA, 0, &frame[..1000]);
    rig.guest.write(TX_DATA + 1, 0, &frame[1000..]);
    rig.tx_req(NetifTxRequest {
        gref: GREF + TX_DATA as u32,
        offset: 0,
        flags: txf::MORE_DATA,
        id: 1,
        size: frame.len() as u16,
    });
    assert_eq!(rig.serve_tx().unwrap(), []);
    assert!(rig.io.take_sent().is_empty());
    rig.tx_req(NetifTxRequest {
        gref: GREF + TX_DATA as u32 + 1,
        offset: 0,
        flags: 0,
        id: 2,
        size: (frame.len() - 1000) as u16,
    });
    // The backend asked to be told of the next request (req_event) while it waited.
    assert!(rig.tx.publish());
    assert_eq!(rig.serve_tx().unwrap(), [ok(1), ok(2)]);
    assert_eq!(rig.io.take_sent()[0].1, frame);
}

#[test]
fn a_batch_of_packets_is_copied_with_one_grant_copy() {
    let mut rig = Rig::new(NetOptions::default());
    let frames: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            ipv4(
                false,
                IPPROTO_UDP,
                &udp(&pattern(i, 100 + 300 * i as usize)),
            )
        })
        .collect();
    for f in &frames {
        rig.send(f, &[(0, 50), (0, f.len() - 50)], 0, &[]);
    }
    let rsps = rig.serve_tx().unwrap();
    assert_eq!(rsps.len(), 20);
    assert!(rsps.iter().all(|r| r.status == rsp::OKAY));
    let sent: Vec<Vec<u8>> = rig.io.take_sent().into_iter().map(|s| s.1).collect();
    assert_eq!(sent, frames);
    assert_eq!(rig.queue.stats().grant_copy_calls, 1);
    assert_eq!(rig.guest.copied_segments(), 20);
    assert_eq!(rig.notifications.get(), 1);
}

#[test]
fn many_packets_wrap_the_ring_in_batches() {
    let mut rig = Rig::new(NetOptions::default());
    let mut expected = Vec::new();
    for round in 0..6u64 {
        for i in 0..100u64 {
            let f = ipv4(false, IPPROTO_UDP, &udp(&pattern(round * 1000 + i, 1400)));
            rig.send(&f, &[(0, 1000), (0, f.len() - 1000)], 0, &[]);
            expected.push(f);
        }
        let rsps = rig.serve_tx().unwrap();
        assert_eq!(rsps.len(), 200);
    }
    let sent: Vec<Vec<u8>> = rig.io.take_sent().into_iter().map(|s| s.1).collect();
    assert_eq!(sent, expected);
    let s = rig.queue.stats();
    assert_eq!(s.tx_packets, 600);
    // 64 packets a batch at most.
    assert!(s.grant_copy_calls >= 600 / 64, "{s:?}");
}

#[test]
fn notifications_follow_rsp_event() {
    let mut rig = Rig::new(NetOptions::default());
    let f = ipv4(false, IPPROTO_UDP, &udp(b"one"));
    rig.send_simple(&f);
    rig.tx.publish();
    let notify = || rig.notifications.set(rig.notifications.get() + 1);
    rig.queue.process_tx(&rig.io, &notify).unwrap();
    assert_eq!(rig.notifications.get(), 1, "rsp_event starts at 1");
    // The frontend has not looked at its responses: rsp_event is still 1.
    rig.send_simple(&f);
    rig.send_simple(&f);
    rig.tx.publish();
    let notify = || rig.notifications.set(rig.notifications.get() + 1);
    rig.queue.process_tx(&rig.io, &notify).unwrap();
    assert_eq!(rig.notifications.get(), 1, "nobody asked");
    assert_eq!(rig.take_tx().len(), 3);
    rig.send_simple(&f);
    assert_eq!(rig.serve_tx().unwrap().len(), 1);
    assert_eq!(
        rig.notifications.get(),
        2,
        "asked again after taking the responses"
    );
    assert_eq!(rig.queue.stats().notifications, 2);
}

#[test]
fn multicast_control_requests_are_answered_and_not_sent() {
    let mut rig = Rig::new(NetOptions::default());
    let f = ipv4(false, IPPROTO_UDP, &udp(b"dummy"));
    let mcast = NetifExtraInfo {
        ty: extra_type::MCAST_ADD,
        flags: 0,
        u: [1, 0, 0x5e, 0, 0, 1],
    };
    let id = rig.send(&f, &[(0, f.len())], 0, &[mcast])[0];
    assert_eq!(rig.serve_tx().unwrap(), [ok(id), null()]);
    assert!(rig.io.take_sent().is_empty());
}

#[test]
fn a_rate_limit_holds_packets_until_the_credit_is_there() {
    use super::shaper::Shaper;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    let mut rig = Rig::new(NetOptions::default());
    // 1000 bytes per 150 ms.
    let interval = Duration::from_millis(150);
    let shaper = Arc::new(Mutex::new(Shaper::new(1000, interval, Instant::now())));
    rig.queue.set_shaper(shaper);
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(3, 700)));
    let a = rig.send_simple(&frame);
    let b = rig.send_simple(&frame);
    let c = rig.send_simple(&frame);
    let start = Instant::now();
    // The first fits the credit, the second goes into debt; the third waits, unanswered,
    // with the queue idle.
    assert_eq!(rig.serve_tx().unwrap(), [ok(a), ok(b)]);
    assert_eq!(rig.io.take_sent().len(), 2);
    let until = rig.queue.tx_throttled().expect("the third packet is held");
    assert!(
        until > Instant::now() && until <= start + interval,
        "{until:?}"
    );
    assert_eq!(rig.serve_tx().unwrap(), [], "still no credit");
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    // 1000 bytes come back, less the debt: enough for one more.
    assert_eq!(rig.serve_tx().unwrap(), [ok(c)]);
    assert_eq!(rig.io.take_sent()[0].1, frame);
    assert!(rig.queue.tx_throttled().is_none());
    assert!(start.elapsed() >= interval - Duration::from_millis(5));
    assert_eq!(rig.queue.stats().tx_packets, 3);
}
