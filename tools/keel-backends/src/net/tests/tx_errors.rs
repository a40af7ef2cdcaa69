//! Transmitted packets refused, dropped, and broken transmit rings.

use super::*;

fn err(id: u16) -> NetifTxResponse {
    NetifTxResponse {
        id,
        status: rsp::ERROR,
    }
}

fn dropped(id: u16) -> NetifTxResponse {
    NetifTxResponse {
        id,
        status: rsp::DROPPED,
    }
}

#[test]
fn malformed_packets_are_answered_error_and_the_ring_goes_on() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(1, 200)));
    let len = frame.len() as u16;
    let mut expected = Vec::new();
    let page = GREF + TX_DATA as u32;

    // The first slot's data crosses the end of its page.
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 4000,
        flags: 0,
        id: 1,
        size: 200,
    });
    expected.push(err(1));
    // Continuations adding up to more than the packet.
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 0,
        flags: txf::MORE_DATA,
        id: 2,
        size: 100,
    });
    for id in [3, 4] {
        rig.tx_req(NetifTxRequest {
            gref: page,
            offset: 0,
            flags: if id == 3 { txf::MORE_DATA } else { 0 },
            id,
            size: 60,
        });
    }
    expected.extend([err(2), err(3), err(4)]);
    // A continuation crossing its page.
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 0,
        flags: txf::MORE_DATA,
        id: 5,
        size: len,
    });
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 4090,
        flags: 0,
        id: 6,
        size: 10,
    });
    expected.extend([err(5), err(6)]);
    // Shorter than an Ethernet header.
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 0,
        flags: 0,
        id: 7,
        size: 13,
    });
    expected.push(err(7));
    // A grant reference the guest never granted.
    rig.tx_req(NetifTxRequest {
        gref: 77_777,
        offset: 0,
        flags: 0,
        id: 8,
        size: len,
    });
    expected.push(err(8));
    // An extra slot of an unknown type.
    rig.tx_req(NetifTxRequest {
        gref: page,
        offset: 0,
        flags: txf::EXTRA_INFO,
        id: 9,
        size: len,
    });
    rig.tx.queue_raw(
        &NetifExtraInfo {
            ty: 9,
            flags: 0,
            u: [0; 6],
        }
        .to_bytes(),
    );
    expected.extend([err(9), null()]);
    // A GSO descriptor of size 0, and one of a type that does not exist.
    for (id, extra) in [
        (10, gso_extra(0, gso_type::TCPV4)),
        (11, gso_extra(1400, 7)),
    ] {
        rig.tx_req(NetifTxRequest {
            gref: page,
            offset: 0,
            flags: txf::EXTRA_INFO | txf::CSUM_BLANK,
            id,
            size: len,
        });
        rig.tx.queue_raw(&extra.to_bytes());
        expected.extend([err(id), null()]);
    }
    // Then a good packet.
    let good = rig.send_simple(&frame);
    expected.push(ok(good));

    assert_eq!(rig.serve_tx().unwrap(), expected);
    assert_eq!(rig.io.take_sent(), [([0; VNET_HDR_LEN], frame)]);
    let s = rig.queue.stats();
    assert_eq!((s.tx_errors, s.tx_packets, s.tx_dropped), (8, 1, 0));
}

#[test]
fn a_packet_with_a_revoked_page_among_its_slots_is_refused_whole() {
    let mut rig = Rig::new(NetOptions::default());
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(2, 3000)));
    let ids = rig.send(&frame, &[(0, 1000), (0, 1000), (0, 1042)], 0, &[]);
    // The second slot's page is the one after the first's.
    assert!(rig.guest.revoke(GREF + TX_DATA as u32 + 1));
    let good = rig.send_simple(&frame);
    assert_eq!(
        rig.serve_tx().unwrap(),
        [err(ids[0]), err(ids[1]), err(ids[2]), ok(good)]
    );
    assert_eq!(rig.io.take_sent().len(), 1);
}

#[test]
fn too_many_slots_are_refused_even_as_a_long_chain() {
    let mut rig = Rig::new(NetOptions::default());
    // 19 data slots: one more than netback's legacy limit.
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(3, 19 * 100 - 42)));
    let ids = rig.send(&frame, &[(0, 100); 19], 0, &[]);
    let good = rig.send_simple(&frame);
    let mut expected: Vec<NetifTxResponse> = ids.iter().map(|&i| err(i)).collect();
    expected.push(ok(good));
    assert_eq!(rig.serve_tx().unwrap(), expected);

    // 18 are fine.
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(4, 18 * 100 - 42)));
    let ids = rig.send(&frame, &[(0, 100); 18], 0, &[]);
    assert_eq!(
        rig.serve_tx().unwrap(),
        ids.iter().map(|&i| ok(i)).collect::<Vec<_>>()
    );

    // A chain longer than the ring: answered as it goes, so the frontend can go on filling
    // the ring until its chain ends.
    let mut answered = 0;
    for i in 0..400u16 {
        rig.tx_req(NetifTxRequest {
            gref: GREF + TX_DATA as u32,
            offset: 0,
            flags: if i == 399 { 0 } else { txf::MORE_DATA },
            id: i % 256,
            size: 10,
        });
        if rig.tx.free_requests() == 0 || i == 399 {
            let r = rig.serve_tx().unwrap();
            assert!(r.iter().all(|r| r.status == rsp::ERROR));
            answered += r.len();
        }
    }
    assert_eq!(answered, 400);
    let good = rig.send_simple(&frame[..100]);
    assert_eq!(rig.serve_tx().unwrap(), [ok(good)]);
    assert_eq!(rig.queue.stats().tx_errors, 2);
}

#[test]
fn unparseable_offloads_and_host_refusals_are_dropped() {
    let mut rig = Rig::new(NetOptions::default());
    let blank = txf::CSUM_BLANK | txf::DATA_VALIDATED;
    // A blank checksum on an ARP frame.
    let mut arp = vec![0xff; 12];
    arp.extend([0x08, 0x06]);
    arp.extend([0; 28]);
    let a = rig.send(&arp, &[(0, arp.len())], blank, &[])[0];
    // A blank checksum on an IPv4 fragment.
    let mut frag = ipv4(false, IPPROTO_UDP, &udp(&pattern(5, 100)));
    frag[20] = 0x20;
    let b = rig.send(&frag, &[(0, frag.len())], blank, &[])[0];
    // TCPv4 GSO on a UDP packet, and TCPv6 GSO on a TCP/IPv4 packet.
    let u = ipv4(false, IPPROTO_UDP, &udp(&pattern(6, 3000)));
    let c = rig.send(
        &u,
        &[(0, u.len())],
        blank,
        &[gso_extra(1400, gso_type::TCPV4)],
    )[0];
    let t = ipv4(false, IPPROTO_TCP, &tcp(0, &pattern(7, 3000)));
    let d = rig.send(
        &t,
        &[(0, t.len())],
        blank,
        &[gso_extra(1400, gso_type::TCPV6)],
    )[0];
    assert_eq!(
        rig.serve_tx().unwrap(),
        [
            dropped(a),
            dropped(b),
            dropped(c),
            null(),
            dropped(d),
            null()
        ]
    );
    assert!(rig.io.take_sent().is_empty());

    // The host's queue is full.
    rig.io.fail_sends(Some(std::io::ErrorKind::WouldBlock));
    let f = ipv4(false, IPPROTO_UDP, &udp(b"x"));
    let e = rig.send_simple(&f);
    assert_eq!(rig.serve_tx().unwrap(), [dropped(e)]);
    rig.io.fail_sends(None);
    let g = rig.send_simple(&f);
    assert_eq!(rig.serve_tx().unwrap(), [ok(g)]);
    let s = rig.queue.stats();
    assert_eq!((s.tx_dropped, s.tx_errors, s.tx_packets), (5, 0, 1));
}

#[test]
fn a_failed_grant_copy_fails_the_batch_and_not_the_queue() {
    let mut rig = Rig::new(NetOptions::default());
    let f = ipv4(false, IPPROTO_UDP, &udp(b"lost"));
    let a = rig.send_simple(&f);
    let b = rig.send_simple(&f);
    rig.guest.fail_copies(true);
    assert_eq!(rig.serve_tx().unwrap(), [err(a), err(b)]);
    rig.guest.fail_copies(false);
    let c = rig.send_simple(&f);
    assert_eq!(rig.serve_tx().unwrap(), [ok(c)]);
}

#[test]
fn a_hostile_tx_req_prod_breaks_the_queue() {
    let mut rig = Rig::new(NetOptions::default());
    rig.tx.set_req_prod(257);
    let notify = || {};
    let e = rig.queue.process_tx(&rig.io, &notify).unwrap_err();
    assert!(matches!(e, NetError::Ring(b) if b.req_prod == 257), "{e}");
    assert!(e.to_string().contains("req_prod 257"));
    rig.tx.set_req_prod(0);
    assert!(
        rig.queue.process_tx(&rig.io, &notify).is_err(),
        "broken stays broken"
    );
}
