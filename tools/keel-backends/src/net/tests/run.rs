//! The run loop on a thread of its own: kicks, frames from the host, stop.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::*;

fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd creation; a non-negative result is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: just created, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn signal(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live local u64.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

/// Waits up to 10 s for `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_loop_serves_kicks_and_host_frames_until_stopped() {
    for rx_notify in [true, false] {
        let Rig {
            mut tx,
            mut rx,
            mut queue,
            guest,
            ..
        } = Rig::new(NetOptions {
            rx_notify,
            ..NetOptions::default()
        });
        let io = Arc::new(FakePacketIo::new());
        let (kick, stop) = (eventfd(), eventfd());
        let notified = Arc::new(AtomicU64::new(0));
        let worker = {
            let (io, notified) = (io.clone(), notified.clone());
            let kick = kick.try_clone().unwrap();
            let stop = stop.try_clone().unwrap();
            std::thread::spawn(move || {
                let notify = || {
                    notified.fetch_add(1, Ordering::SeqCst);
                };
                let r = queue.run(kick.as_fd(), io.as_ref(), stop.as_fd(), notify, notify);
                (r, queue.stats())
            })
        };

        // The frontend transmits and kicks.
        let frame = ipv4(false, IPPROTO_UDP, &udp(&pattern(1, 300)));
        guest.write(TX_DATA, 0, &frame);
        tx.queue_raw(
            &NetifTxRequest {
                gref: GREF + TX_DATA as u32,
                offset: 0,
                flags: 0,
                id: 5,
                size: frame.len() as u16,
            }
            .to_bytes(),
        );
        if tx.publish() {
            signal(&kick);
        }
        wait_for("the packet to be sent", || {
            io.waiting() == 0 && {
                let r = tx.take_raw_responses(4);
                r.len() == 1 && NetifTxResponse::from_bytes(&r[0]) == Some(ok(5))
            }
        });
        assert_eq!(io.take_sent()[0].1, frame);

        // A frame from the host with no receive request posted: it waits for the post (and
        // its kick, when the frontend notifies them).
        let down = ipv4(false, IPPROTO_UDP, &udp(&pattern(2, 700)));
        io.inject(&[0; VNET_HDR_LEN], &down);
        wait_for("the frame to be taken", || io.waiting() == 0);
        rx.queue_raw(
            &NetifRxRequest {
                id: 9,
                pad: 0,
                gref: GREF + RX_DATA as u32,
            }
            .to_bytes(),
        );
        assert!(rx.publish(), "req_event was set while the frame waited");
        // A frontend without feature-rx-notify does not kick: the loop polls.
        if rx_notify {
            signal(&kick);
        }
        let mut got = Vec::new();
        wait_for("the frame to be received", || {
            got.extend(rx.take_raw_responses(8));
            !got.is_empty()
        });
        let r = NetifRxResponse::from_bytes(&got[0]).unwrap();
        assert_eq!((r.id, r.status), (9, down.len() as i16));
        assert_eq!(guest.read(RX_DATA, 0, down.len()), down);

        signal(&stop);
        let (r, stats) = worker.join().unwrap();
        r.unwrap();
        assert_eq!((stats.tx_packets, stats.rx_packets), (1, 1));
        assert!(stats.kicks >= 1, "{stats:?}");
        assert_eq!(notified.load(Ordering::SeqCst), stats.notifications);
        assert!(stats.notifications >= 2, "{stats:?}");
    }
}

#[test]
fn the_loop_reports_a_broken_ring() {
    let Rig {
        mut tx, mut queue, ..
    } = Rig::new(NetOptions::default());
    let io = FakePacketIo::new();
    let (kick, stop) = (eventfd(), eventfd());
    tx.set_req_prod(4000);
    signal(&kick);
    let r = queue.run(kick.as_fd(), &io, stop.as_fd(), || {}, || {});
    assert!(matches!(r, Err(NetError::Ring(_))));
}
