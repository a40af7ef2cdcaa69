//! Frames from the host to the frontend.

use keel_core::xen::netif::rxf;

use super::*;

fn hdr() -> [u8; VNET_HDR_LEN] {
    [0; VNET_HDR_LEN]
}

#[test]
fn a_small_frame_lands_in_one_posted_page() {
    let mut rig = Rig::new(NetOptions::default());
    let ids = rig.post_rx(4);
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(1, 100)));
    rig.io.inject(&hdr(), &frame);
    let rsps = rig.serve_rx().unwrap();
    assert_eq!(rsps.len(), 1);
    assert_eq!(
        NetifRxResponse::from_bytes(&rsps[0]).unwrap(),
        NetifRxResponse {
            id: ids[0],
            offset: 0,
            flags: 0,
            status: frame.len() as i16,
        }
    );
    assert_eq!(
        rig.guest
            .read(rig.rx_pages[&ids[0]], 0, frame.len())
            .as_slice(),
        frame
    );
    let s = rig.queue.stats();
    assert_eq!(
        (s.rx_packets, s.rx_bytes, s.rx_dropped, s.grant_copy_calls),
        (1, frame.len() as u64, 0, 1)
    );
    // The other three requests are still posted: three more frames need no new post.
    for i in 0..3 {
        rig.io.inject(&hdr(), &frame[..60 + i]);
    }
    let got = rig.serve_received();
    assert_eq!(
        got.iter().map(|r| r.data.len()).collect::<Vec<_>>(),
        [60, 61, 62]
    );
    assert_eq!(rig.queue.stats().grant_copy_calls, 2, "one copy per batch");
}

#[test]
fn a_jumbo_frame_spans_three_slots_with_sg() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        ..NetOptions::default()
    });
    let ids = rig.post_rx(4);
    let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(2, 9000 - 42)));
    rig.io.inject(&hdr(), &frame);
    let rsps = rig.serve_rx().unwrap();
    let r: Vec<NetifRxResponse> = rsps
        .iter()
        .map(|b| NetifRxResponse::from_bytes(b).unwrap())
        .collect();
    assert_eq!(
        r.iter()
            .map(|r| (r.id, r.offset, r.flags, r.status))
            .collect::<Vec<_>>(),
        [
            (ids[0], 0, rxf::MORE_DATA, 4096),
            (ids[1], 0, rxf::MORE_DATA, 4096),
            (ids[2], 0, 0, 808)
        ]
    );
    assert_eq!(rig.received(&rsps)[0].data, frame);
}

#[test]
fn a_jumbo_frame_is_dropped_without_sg() {
    let mut rig = Rig::new(NetOptions::default());
    rig.post_rx(4);
    let big = ipv4(false, IPPROTO_UDP, &udp(&pattern(3, 9000)));
    let small = ipv4(false, IPPROTO_UDP, &udp(&pattern(4, 1000)));
    rig.io.inject(&hdr(), &big);
    rig.io.inject(&hdr(), &small);
    // Exactly a page is fine.
    let page = ipv4(false, IPPROTO_UDP, &udp(&pattern(5, 4096 - 42)));
    rig.io.inject(&hdr(), &page);
    let got = rig.serve_received();
    assert_eq!(got.len(), 2);
    assert_eq!((&got[0].data, &got[1].data), (&small, &page));
    let s = rig.queue.stats();
    assert_eq!((s.rx_packets, s.rx_dropped), (2, 1));
}

#[test]
fn a_frame_waits_for_receive_requests_and_is_never_dropped_for_lack_of_them() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        ..NetOptions::default()
    });
    let first = ipv4(false, IPPROTO_UDP, &udp(&pattern(6, 500)));
    let jumbo = ipv4(false, IPPROTO_UDP, &udp(&pattern(7, 9000)));
    rig.io.inject(&hdr(), &first);
    rig.io.inject(&hdr(), &jumbo);
    assert_eq!(rig.serve_rx().unwrap(), Vec::<[u8; 8]>::new());
    assert!(rig.queue.rx_waiting());
    assert_eq!(
        rig.io.waiting(),
        1,
        "one frame taken, the next left to the host"
    );
    // Posting asks for a notification: the backend set req_event while it waited.
    rig.post_rx(2);
    assert!(rig.rx.publish());
    let got = rig.serve_received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, first);
    // The jumbo frame needs 3 slots; 1 is left.
    assert!(rig.queue.rx_waiting());
    rig.post_rx(1);
    assert_eq!(rig.serve_rx().unwrap(), Vec::<[u8; 8]>::new());
    rig.post_rx(1);
    let got = rig.serve_received();
    assert_eq!(got[0].data, jumbo);
    assert!(!rig.queue.rx_waiting());
    let s = rig.queue.stats();
    assert_eq!((s.rx_packets, s.rx_dropped), (2, 0));
}

#[test]
fn checksum_flags_are_mapped() {
    let mut rig = Rig::netfront();
    rig.post_rx(8);
    let f = ipv4(false, IPPROTO_TCP, &tcp(0, &pattern(8, 300)));
    let needs = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let valid = VnetHdr {
        flags: vnet::F_DATA_VALID,
        ..VnetHdr::default()
    };
    rig.io.inject(&needs.to_bytes(), &f);
    rig.io.inject(&valid.to_bytes(), &f);
    rig.io.inject(&hdr(), &f);
    let got = rig.serve_received();
    assert_eq!(
        got.iter().map(|r| r.flags).collect::<Vec<_>>(),
        [
            rxf::CSUM_BLANK | rxf::DATA_VALIDATED,
            rxf::DATA_VALIDATED,
            0
        ]
    );
    assert!(got.iter().all(|r| r.data == f));
}

#[test]
fn a_frontend_without_checksum_offload_gets_checksums_completed() {
    let mut rig = Rig::new(NetOptions {
        csum_ipv4: false,
        ..NetOptions::default()
    });
    rig.post_rx(2);
    let mut f = ipv4(false, IPPROTO_TCP, &tcp(4, &pattern(9, 999)));
    let t = packet::transport(&f).unwrap();
    assert!(packet::set_partial_checksum(&mut f, &t));
    let needs = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    rig.io.inject(&needs.to_bytes(), &f);
    // Offsets outside the frame: dropped.
    let bad = VnetHdr {
        csum_start: 2000,
        ..needs
    };
    rig.io.inject(&bad.to_bytes(), &f);
    let got = rig.serve_received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].flags, rxf::DATA_VALIDATED);
    assert!(packet::checksum_ok(&got[0].data, &t));
    assert_eq!(rig.queue.stats().rx_dropped, 1);
}

#[test]
fn gso_frames_get_an_extra_slot_after_their_first_data_slot() {
    let mut rig = Rig::netfront();
    let ids = rig.post_rx(8);
    let f = ipv4(false, IPPROTO_TCP, &tcp(0, &pattern(10, 20000)));
    let gso = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    rig.io.inject(&gso.to_bytes(), &f);
    let rsps = rig.serve_rx().unwrap();
    assert_eq!(rsps.len(), 6);
    let first = NetifRxResponse::from_bytes(&rsps[0]).unwrap();
    assert_eq!(
        (first.id, first.flags, first.status),
        (
            ids[0],
            rxf::CSUM_BLANK | rxf::DATA_VALIDATED | rxf::EXTRA_INFO | rxf::MORE_DATA,
            4096
        )
    );
    let extra = NetifExtraInfo::from_bytes(&rsps[1]).unwrap();
    assert_eq!(
        extra,
        gso_extra(1448, gso_type::TCPV4),
        "type GSO, no MORE flag"
    );
    // Every data response sits in the slot of its own request.
    let later: Vec<u16> = rsps[2..]
        .iter()
        .map(|b| NetifRxResponse::from_bytes(b).unwrap().id)
        .collect();
    assert_eq!(later, &ids[2..6]);
    let got = rig.received(&rsps);
    assert_eq!(got[0].data, f);
    assert_eq!(
        got[0].gso.map(|g| (g.size, g.ty)),
        Some((1448, gso_type::TCPV4))
    );
}

#[test]
fn gso_frames_are_dropped_when_the_frontend_cannot_take_them() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        gso: false,
        ..NetOptions::default()
    });
    rig.post_rx(8);
    let big = ipv4(false, IPPROTO_TCP, &tcp(0, &pattern(11, 20000)));
    let small = ipv4(false, IPPROTO_TCP, &tcp(0, &pattern(12, 1000)));
    let gso = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    rig.io.inject(&gso.to_bytes(), &big);
    rig.io.inject(&gso.to_bytes(), &small);
    let got = rig.serve_received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].gso, &got[0].data), (None, &small));
    assert_eq!(rig.queue.stats().rx_dropped, 1);
}

#[test]
fn a_read_only_receive_page_fails_its_slot() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        ..NetOptions::default()
    });
    let ids = rig.post_rx(3);
    // The frontend granted the second page read-only.
    let page = rig.rx_pages[&ids[1]];
    rig.guest.grant(GREF + page as u32, page, true);
    let f = ipv4(false, IPPROTO_UDP, &udp(&pattern(13, 6000)));
    rig.io.inject(&hdr(), &f);
    let small = ipv4(false, IPPROTO_UDP, &udp(b"next"));
    rig.io.inject(&hdr(), &small);
    let got = rig.serve_received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].statuses, [4096, rsp::ERROR]);
    assert_eq!(got[1].data, small);
    let s = rig.queue.stats();
    assert_eq!((s.rx_errors, s.rx_packets), (1, 1));
}

#[test]
fn truncated_and_empty_reads_are_dropped() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        ..NetOptions::default()
    });
    rig.post_rx(20);
    // Longer than any frame the host may send: the read is cut and seen as cut.
    rig.io.inject(&hdr(), &vec![0xab; 70_000]);
    rig.io.inject(&hdr(), &[]);
    rig.io.inject(&hdr(), &[1; 13]);
    let f = ipv4(false, IPPROTO_UDP, &udp(b"fine"));
    rig.io.inject(&hdr(), &f);
    let got = rig.serve_received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, f);
    assert_eq!(rig.queue.stats().rx_dropped, 3);
}

#[test]
fn responses_echo_whatever_ids_the_frontend_used() {
    let mut rig = Rig::new(NetOptions::default());
    for id in [700u16, 3, 65535] {
        rig.rx.queue_raw(
            &NetifRxRequest {
                id,
                pad: 0,
                gref: GREF + RX_DATA as u32,
            }
            .to_bytes(),
        );
    }
    let f = ipv4(false, IPPROTO_UDP, &udp(b"z"));
    for _ in 0..3 {
        rig.io.inject(&hdr(), &f);
    }
    let ids: Vec<u16> = rig
        .serve_rx()
        .unwrap()
        .iter()
        .map(|b| NetifRxResponse::from_bytes(b).unwrap().id)
        .collect();
    assert_eq!(ids, [700, 3, 65535]);
}

#[test]
fn many_frames_wrap_the_receive_ring() {
    let mut rig = Rig::netfront();
    let mut total = 0;
    for round in 0..10u64 {
        rig.post_rx(40);
        let frames: Vec<Vec<u8>> = (0..40)
            .map(|i| ipv4(false, IPPROTO_UDP, &udp(&pattern(round * 100 + i, 1000))))
            .collect();
        for f in &frames {
            rig.io.inject(&hdr(), f);
        }
        let got = rig.serve_received();
        assert_eq!(got.len(), 40);
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(&g.data, f);
        }
        total += 40;
    }
    assert_eq!(rig.queue.stats().rx_packets, total);
}

#[test]
fn receive_notifications_follow_rsp_event() {
    let mut rig = Rig::new(NetOptions::default());
    rig.post_rx(8);
    rig.rx.publish();
    let f = ipv4(false, IPPROTO_UDP, &udp(b"n"));
    rig.io.inject(&hdr(), &f);
    let notify = || rig.notifications.set(rig.notifications.get() + 1);
    rig.queue.process_rx(&rig.io, &notify).unwrap();
    assert_eq!(rig.notifications.get(), 1);
    rig.io.inject(&hdr(), &f);
    let notify = || rig.notifications.set(rig.notifications.get() + 1);
    rig.queue.process_rx(&rig.io, &notify).unwrap();
    assert_eq!(rig.notifications.get(), 1, "the frontend did not ask again");
    assert_eq!(rig.take_rx().len(), 2);
    rig.io.inject(&hdr(), &f);
    assert_eq!(rig.serve_rx().unwrap().len(), 1);
    assert_eq!(rig.notifications.get(), 2);
}

#[test]
fn a_hostile_rx_req_prod_breaks_the_queue() {
    let mut rig = Rig::new(NetOptions::default());
    rig.rx.set_req_prod(1000);
    rig.io
        .inject(&hdr(), &ipv4(false, IPPROTO_UDP, &udp(b"lost")));
    let notify = || {};
    let e = rig.queue.process_rx(&rig.io, &notify).unwrap_err();
    assert!(matches!(e, NetError::Ring(b) if b.req_prod == 1000), "{e}");
}

#[test]
fn a_failing_host_device_stops_the_queue() {
    struct Broken;
    impl super::super::PacketIo for Broken {
        fn send(&self, _: &[u8; VNET_HDR_LEN], _: &[u8]) -> std::io::Result<()> {
            Ok(())
        }
        fn recv(&self, _: &mut [u8]) -> std::io::Result<Option<usize>> {
            Err(std::io::Error::from_raw_os_error(libc::EBADFD))
        }
        fn raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }
    let mut rig = Rig::new(NetOptions::default());
    let notify = || {};
    assert!(matches!(
        rig.queue.process_rx(&Broken, &notify),
        Err(NetError::Io(_))
    ));
}

#[test]
fn a_broken_ring_answers_nothing_more_even_with_requests_taken_before() {
    let mut rig = Rig::new(NetOptions {
        sg: true,
        mtu: 9000,
        ..NetOptions::default()
    });
    // Two receive requests posted; a frame that needs three pages waits on them.
    rig.post_rx(2);
    let big = ipv4(false, IPPROTO_UDP, &udp(&pattern(4, 9000)));
    rig.io.inject(&hdr(), &big);
    assert_eq!(rig.serve_rx().unwrap(), Vec::<[u8; 8]>::new());
    assert!(rig.queue.rx_waiting());
    // The frontend breaks the ring; a small frame that the requests taken could hold gets
    // no answer, then or later, and the transmit side stops too.
    rig.rx.set_req_prod(1000);
    let small = ipv4(false, IPPROTO_UDP, &udp(&pattern(5, 100)));
    rig.io.inject(&hdr(), &small);
    let notify = || {};
    for _ in 0..2 {
        let r = rig.queue.process_rx(&rig.io, &notify);
        assert!(matches!(r, Err(NetError::Ring(_))), "{r:?}");
    }
    let r = rig.queue.process_tx(&rig.io, &notify);
    assert!(matches!(r, Err(NetError::Ring(_))), "{r:?}");
    assert!(rig.take_rx().is_empty());
}
