//! Refusals, failures and the run loop.

use super::*;

#[test]
fn a_read_only_disk_refuses_writes_and_stays_unchanged() {
    both_engines(|options| {
        let file = temp_file(DISK_SECTORS);
        file.write_all_at(&vec![0x5a; 8192], 0).expect("fill");
        let disk = Disk::from_file(file, true).expect("disk");
        assert!(!disk.discard());
        let mut rig = Rig::new(disk, options);
        rig.guest.write(DATA, 0, &pattern(1, 4096));
        rig.front.queue(&rw(op::WRITE, 1, 0, &pages(DATA, 1)));
        rig.front
            .queue(&rw(op::FLUSH_DISKCACHE, 2, 0, &pages(DATA, 1)));
        rig.front
            .queue_indirect(&indirect(&rig.guest, op::WRITE, 3, 0, 2));
        rig.front.queue(&rw(op::READ, 4, 0, &pages(DATA + 1, 1)));
        rig.front.queue(&rw(op::FLUSH_DISKCACHE, 5, 0, &[]));
        assert_eq!(rig.statuses(), [(1, -1), (2, -1), (3, -1), (4, 0), (5, 0)]);
        assert_eq!(rig.read_disk(0, 8192), vec![0x5a; 8192]);
        assert_eq!(rig.guest.read(DATA + 1, 0, 4096), vec![0x5a; 4096]);
    });
}

#[test]
fn malformed_requests_are_answered_and_the_ring_goes_on() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        rig.front
            .queue(&rw(op::READ, 1, DISK_SECTORS - 7, &pages(DATA, 1)));
        rig.front
            .queue(&rw(op::READ, 2, u64::MAX - 2, &pages(DATA, 1)));
        rig.front.queue(&rw(op::READ, 3, 0, &[(DATA, 5, 4)]));
        rig.front.queue(&rw(op::WRITE, 4, 0, &[(DATA, 0, 8)]));
        rig.front.queue(&rw(op::READ, 5, 0, &[]));
        let mut twelve = rw(op::READ, 6, 0, &pages(DATA, 11)).to_bytes();
        twelve[1] = 12;
        rig.front.queue_raw(&twelve);
        rig.front.queue(&rw(op::RESERVED_1, 7, 0, &pages(DATA, 1)));
        rig.front.queue(&rw(99, 8, 0, &pages(DATA, 1)));
        rig.front
            .queue(&rw(op::READ, 9, DISK_SECTORS - 8, &pages(DATA, 1)));
        let rsps = rig.serve().expect("served");
        let mut got: Vec<(u64, u8, i16)> =
            rsps.iter().map(|r| (r.id, r.operation, r.status)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                (1, op::READ, -1),
                (2, op::READ, -1),
                (3, op::READ, -1),
                (4, op::WRITE, -1),
                (5, op::READ, -1),
                (6, op::READ, -1),
                (7, op::RESERVED_1, -2),
                (8, 99, -2),
                (9, op::READ, 0)
            ]
        );
        assert_eq!(rig.queue.stats().unsupported, 2);
    });
}

#[test]
fn ungranted_or_read_only_pages_fail_the_request() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        rig.file.write_all_at(&[0x11; 4096], 0).expect("fill");
        rig.guest.revoke(GREF + DATA as u32 + 1);
        rig.guest.grant(GREF + DATA as u32 + 2, DATA + 2, true);
        // A write whose second page is not granted: nothing is written.
        rig.front.queue(&rw(op::WRITE, 1, 0, &pages(DATA, 2)));
        // A read into a read-only grant.
        rig.front.queue(&rw(op::READ, 2, 0, &pages(DATA + 2, 1)));
        // A write from a read-only grant is fine.
        rig.front.queue(&rw(op::WRITE, 3, 16, &pages(DATA + 2, 1)));
        assert_eq!(rig.statuses(), [(1, -1), (2, -1), (3, 0)]);
        assert_eq!(rig.read_disk(0, 4096), vec![0x11; 4096]);
        // The grant device failing as a whole is an error response too.
        rig.guest.fail_copies(true);
        rig.front.queue(&rw(op::READ, 4, 0, &pages(DATA, 1)));
        assert_eq!(rig.statuses(), [(4, -1)]);
    });
}

#[test]
fn hostile_indexes_stop_the_queue() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        rig.front.queue(&rw(op::READ, 1, 0, &pages(DATA, 1)));
        assert_eq!(rig.statuses(), [(1, 0)]);
        rig.front.set_req_prod(1 + 33);
        let notify = || {};
        match rig.queue.process(&notify) {
            Err(QueueError::Ring(b)) => assert_eq!((b.req_prod, b.req_cons), (34, 1)),
            other => panic!("not broken: {other:?}"),
        }
        assert!(
            matches!(rig.queue.process(&notify), Err(QueueError::Ring(_))),
            "stays broken"
        );
    });
}

#[test]
fn backing_file_errors_are_error_responses() {
    both_engines(|options| {
        // A writable disk over a file opened read-only: every write fails with EBADF.
        let file = temp_file(DISK_SECTORS);
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file));
        let ro = OpenOptions::new()
            .read(true)
            .open(path)
            .expect("reopen read-only");
        let mut rig = Rig::new(Disk::from_file(ro, false).expect("disk"), options.clone());
        rig.front.queue(&rw(op::WRITE, 1, 0, &pages(DATA, 2)));
        rig.front.queue(&rw(op::READ, 2, 0, &pages(DATA, 2)));
        let st = rig.statuses();
        assert_eq!(st, [(1, -1), (2, 0)]);

        // The file shrank under the disk: reads past its end fail, not loop.
        let mut rig = Rig::new(writable_disk(), options);
        rig.file.set_len(512 * 4).expect("truncate");
        rig.front.queue(&rw(op::READ, 3, 0, &pages(DATA, 1)));
        rig.front.queue(&rw(op::READ, 4, 100, &pages(DATA, 1)));
        assert_eq!(rig.statuses(), [(3, -1), (4, -1)]);
    });
}

fn eventfd() -> OwnedFd {
    // SAFETY: no pointers; a non-negative result is a new fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: just created, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn signal(fd: &OwnedFd) {
    let one = 1u64;
    let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
    // SAFETY: writes 8 bytes from a live u64.
    let n = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    assert_eq!(n, 8);
}

#[test]
fn the_run_loop_serves_kicks_until_stopped() {
    both_engines(|options| {
        let rig = Rig::new(writable_disk(), options);
        let (kick, stop, irq) = (
            Arc::new(eventfd()),
            Arc::new(eventfd()),
            Arc::new(eventfd()),
        );
        let Rig {
            guest,
            mut front,
            queue,
            ..
        } = rig;
        let mut queue = queue;
        let (k, s, i) = (kick.clone(), stop.clone(), irq.clone());
        let server = std::thread::spawn(move || {
            let r = queue.run(k.as_fd(), s.as_fd(), || signal(&i));
            (r.map_err(|e| e.to_string()), queue.stats())
        });
        let (mut answered, mut kicked) = (0, 0u64);
        for round in 0..20u64 {
            for j in 0..4 {
                let id = round * 4 + j;
                guest.write(DATA + j as usize, 0, &pattern(id, 4096));
                front.queue(&rw(op::WRITE, id, id * 8, &pages(DATA + j as usize, 1)));
            }
            if front.publish() {
                signal(&kick);
                kicked += 1;
            }
            // Wait for the event channel, then take what came (as blkfront's interrupt does).
            while answered < (round + 1) * 4 {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes into a live u64 (a blocking eventfd).
                unsafe {
                    libc::read(
                        std::os::fd::AsRawFd::as_raw_fd(&*irq),
                        (&mut v as *mut u64).cast(),
                        8,
                    )
                };
                for r in front.take_responses() {
                    assert_eq!(r.status, rsp::OKAY, "id {}", r.id);
                    answered += 1;
                }
            }
        }
        signal(&stop);
        let (r, stats) = server.join().expect("server thread");
        assert_eq!(r, Ok(()));
        assert_eq!(stats.ok, 80);
        // Every kick counted, but the last may still be unread when the stop comes with it.
        assert!(
            kicked > 0 && (kicked - 1..=kicked).contains(&stats.kicks),
            "{kicked} kicks sent, {} counted",
            stats.kicks
        );
    });
}

#[test]
fn a_broken_ring_ends_the_run_loop_with_the_reason() {
    let rig = Rig::new(writable_disk(), QueueOptions::default());
    let Rig {
        mut front,
        mut queue,
        ..
    } = rig;
    let (kick, stop) = (eventfd(), eventfd());
    front.set_req_prod(1000);
    signal(&kick);
    let err = queue
        .run(kick.as_fd(), stop.as_fd(), || {})
        .expect_err("broken");
    assert!(err.to_string().contains("req_prod 1000"), "{err}");
}
