//! The block queue end to end: a fake frontend fills the ring in fake guest memory, the queue
//! serves it from a temporary file, through io_uring and through the worker thread.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keel_core::xen::blkif::{
    op, rsp, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BlkifResponse,
};

use super::xenstore::{backend_keys, parse_frontend_keys, Limits, RingConfig};
use super::{Disk, Queue, QueueError, QueueOptions};
use crate::grant::GrantAccess;
use crate::ring::BackRing;
use crate::testing::{FakeFrontend, FakeGuest};

/// Guest pages: the ring from page 0, data pages from [`DATA`], granted as `GREF + page`.
const DATA: usize = 16;
const GUEST_PAGES: usize = DATA + 128;
const GREF: u32 = 1000;
const DISK_SECTORS: u64 = 2048;

/// A temporary file of `sectors` sectors, already unlinked.
fn temp_file(sectors: u64) -> File {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "keel-blk-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("temp file");
    std::fs::remove_file(&path).expect("unlink");
    f.set_len(sectors * 512).expect("set_len");
    f
}

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

/// FNV-1a, to compare what went in with what came out.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

struct Rig {
    guest: FakeGuest,
    front: FakeFrontend,
    queue: Queue,
    /// Another handle on the disk's file, to look at it directly.
    file: File,
    notifications: Cell<u64>,
}

impl Rig {
    fn new(disk: Disk, options: QueueOptions) -> Rig {
        Rig::with_ring(disk, options, 1)
    }

    fn with_ring(disk: Disk, options: QueueOptions, pages: usize) -> Rig {
        let guest = FakeGuest::new(GUEST_PAGES);
        for p in DATA..GUEST_PAGES {
            guest.grant(GREF + p as u32, p, false);
        }
        let front = FakeFrontend::new(&guest, 0, pages, 1);
        let map = guest.map(front.ring_refs(), true).expect("map ring");
        let ring = BackRing::new(map, keel_core::xen::blkif::ENTRY_SIZE).expect("ring");
        let file = disk.file().try_clone().expect("dup");
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.clone());
        let queue = Queue::new(ring, Arc::new(disk), grants, options).expect("queue");
        Rig {
            guest,
            front,
            queue,
            file,
            notifications: Cell::new(0),
        }
    }

    /// Publishes what was queued and serves until every request is answered.
    fn serve(&mut self) -> Result<Vec<BlkifResponse>, QueueError> {
        self.front.publish();
        let notify = || self.notifications.set(self.notifications.get() + 1);
        loop {
            let more = self.queue.process(&notify)?;
            if !more && self.queue.in_flight() == 0 {
                break;
            }
            if !more {
                self.queue.wait_for_io()?;
            }
        }
        Ok(self.front.take_responses())
    }

    /// Serves and returns the statuses by id order of the responses.
    fn statuses(&mut self) -> Vec<(u64, i16)> {
        let mut v: Vec<(u64, i16)> = self
            .serve()
            .expect("served")
            .iter()
            .map(|r| (r.id, r.status))
            .collect();
        v.sort();
        v
    }

    fn read_disk(&self, sector: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.file
            .read_exact_at(&mut v, sector * 512)
            .expect("read disk");
        v
    }
}

fn rw(operation: u8, id: u64, sector: u64, segs: &[(usize, u8, u8)]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    for (i, &(page, first_sect, last_sect)) in segs.iter().enumerate() {
        r.seg[i] = BlkifRequestSegment {
            gref: GREF + page as u32,
            first_sect,
            last_sect,
            pad: [0; 2],
        };
    }
    r
}

/// Full pages `first..first + n`.
fn pages(first: usize, n: usize) -> Vec<(usize, u8, u8)> {
    (first..first + n).map(|p| (p, 0, 7)).collect()
}

fn writable_disk() -> Disk {
    Disk::from_file(temp_file(DISK_SECTORS), false).expect("disk")
}

fn both_engines(test: impl Fn(QueueOptions)) {
    for blocking_io in [false, true] {
        test(QueueOptions {
            blocking_io,
            ..QueueOptions::default()
        });
    }
}

#[test]
fn the_io_uring_engine_is_used_where_the_kernel_allows_it() {
    if io_uring::IoUring::new(8).is_err() {
        eprintln!("SKIP: io_uring_setup refused on this host");
        return;
    }
    let rig = Rig::new(writable_disk(), QueueOptions::default());
    assert!(rig.queue.uses_io_uring());
    let rig = Rig::new(
        writable_disk(),
        QueueOptions {
            blocking_io: true,
            ..QueueOptions::default()
        },
    );
    assert!(!rig.queue.uses_io_uring());
}

#[test]
fn written_data_reads_back_with_partial_segments() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        // 11 segments: 10 full pages and one of sectors 2..=5: 84 sectors from sector 100.
        let mut segs = pages(DATA, 10);
        segs.push((DATA + 10, 2, 5));
        let mut sent = Vec::new();
        for (i, &(page, first, last)) in segs.iter().enumerate() {
            let bytes = pattern(i as u64 + 1, (usize::from(last - first) + 1) * 512);
            rig.guest.write(page, usize::from(first) * 512, &bytes);
            sent.extend(bytes);
        }
        rig.front.queue(&rw(op::WRITE, 7, 100, &segs));
        assert_eq!(rig.statuses(), [(7, rsp::OKAY)]);
        assert_eq!(checksum(&rig.read_disk(100, sent.len())), checksum(&sent));

        // Read it back into other pages, at other offsets.
        let back = [(DATA + 40, 0, 7), (DATA + 41, 4, 7), (DATA + 42, 0, 3)];
        rig.front.queue(&rw(op::READ, 8, 104, &back));
        let rsps = rig.serve().expect("served");
        assert_eq!(
            (rsps[0].id, rsps[0].operation, rsps[0].status),
            (8, op::READ, rsp::OKAY)
        );
        let mut got = rig.guest.read(DATA + 40, 0, 4096);
        got.extend(rig.guest.read(DATA + 41, 2048, 2048));
        got.extend(rig.guest.read(DATA + 42, 0, 2048));
        assert_eq!(checksum(&got), checksum(&sent[4 * 512..4 * 512 + 8192]));
        // Bytes around a partial segment are the guest's own.
        assert_eq!(rig.guest.read(DATA + 41, 0, 2048), vec![0; 2048]);
    });
}

#[test]
fn flushes_barriers_and_fua_writes() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        rig.guest.write(DATA, 0, &pattern(9, 4096));
        rig.front.queue(&rw(op::FLUSH_DISKCACHE, 1, 0, &[]));
        rig.front
            .queue(&rw(op::FLUSH_DISKCACHE, 2, 8, &pages(DATA, 1)));
        rig.front.queue(&rw(op::WRITE, 3, 16, &pages(DATA, 1)));
        rig.front
            .queue(&rw(op::WRITE_BARRIER, 4, 24, &pages(DATA, 1)));
        rig.front.queue(&rw(op::READ, 5, 24, &pages(DATA + 1, 1)));
        rig.front.queue(&rw(op::WRITE_BARRIER, 6, 0, &[]));
        let rsps = rig.serve().expect("served");
        let mut ops: Vec<(u64, u8, i16)> =
            rsps.iter().map(|r| (r.id, r.operation, r.status)).collect();
        ops.sort();
        assert_eq!(
            ops,
            [
                (1, op::FLUSH_DISKCACHE, 0),
                (2, op::FLUSH_DISKCACHE, 0),
                (3, op::WRITE, 0),
                (4, op::WRITE_BARRIER, 0),
                (5, op::READ, 0),
                (6, op::WRITE_BARRIER, 0)
            ]
        );
        // The read after the barrier saw the barrier's data.
        assert_eq!(rig.guest.read(DATA + 1, 0, 4096), pattern(9, 4096));
        for s in [8, 16, 24] {
            assert_eq!(rig.read_disk(s, 4096), pattern(9, 4096));
        }
        // The barrier was answered after everything taken before it.
        let pos = |id| rsps.iter().position(|r| r.id == id).expect("answered");
        assert!(pos(4) > pos(1) && pos(4) > pos(2) && pos(4) > pos(3) && pos(5) > pos(4));
    });
}

#[test]
fn discard_punches_holes_inside_the_disk_only() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        rig.file
            .write_all_at(&vec![0xee; 64 * 512], 0)
            .expect("fill");
        let d = |id, sector, nr| BlkifRequestDiscard {
            operation: op::DISCARD,
            id,
            sector_number: sector,
            nr_sectors: nr,
            ..Default::default()
        };
        rig.front.queue_discard(&d(1, 8, 16));
        rig.front.queue_discard(&d(2, DISK_SECTORS - 8, 9));
        rig.front.queue_discard(&d(3, 0, 0));
        assert_eq!(
            rig.statuses(),
            [(1, rsp::OKAY), (2, rsp::ERROR), (3, rsp::OKAY)]
        );
        assert_eq!(rig.read_disk(0, 8 * 512), vec![0xee; 8 * 512]);
        assert_eq!(rig.read_disk(8, 16 * 512), vec![0; 16 * 512]);
        assert_eq!(rig.read_disk(24, 40 * 512), vec![0xee; 40 * 512]);
        assert_eq!(
            rig.file.metadata().unwrap().len(),
            DISK_SECTORS * 512,
            "KEEP_SIZE"
        );

        let mut rig = Rig::new(writable_disk().with_discard(false), QueueOptions::default());
        rig.front.queue_discard(&d(4, 0, 8));
        assert_eq!(rig.statuses(), [(4, rsp::EOPNOTSUPP)]);
    });
}

/// An indirect request over `n` full data pages from `DATA`, its segments in the pages
/// from `DATA + 100`.
fn indirect(
    rig: &FakeGuest,
    indirect_op: u8,
    id: u64,
    sector: u64,
    n: usize,
) -> BlkifRequestIndirect {
    let mut grefs = [0u32; 8];
    for (i, chunk) in pages(DATA, n).chunks(512).enumerate() {
        let page = DATA + 100 + i;
        let mut bytes = Vec::new();
        for &(p, first_sect, last_sect) in chunk {
            let s = BlkifRequestSegment {
                gref: GREF + p as u32,
                first_sect,
                last_sect,
                pad: [0; 2],
            };
            bytes.extend(s.to_bytes());
        }
        rig.write(page, 0, &bytes);
        grefs[i] = GREF + page as u32;
    }
    BlkifRequestIndirect {
        operation: op::INDIRECT,
        indirect_op,
        nr_segments: n as u16,
        id,
        sector_number: sector,
        indirect_grefs: grefs,
        ..Default::default()
    }
}

#[test]
fn indirect_requests_round_trip() {
    both_engines(|options| {
        let mut rig = Rig::new(writable_disk(), options);
        let sent: Vec<u8> = (0..40).flat_map(|p| pattern(100 + p, 4096)).collect();
        for p in 0..40 {
            rig.guest.write(DATA + p, 0, &sent[p * 4096..][..4096]);
        }
        let w = indirect(&rig.guest, op::WRITE, 1, 64, 40);
        rig.front.queue_indirect(&w);
        let rsps = rig.serve().expect("served");
        assert_eq!(
            (rsps[0].id, rsps[0].operation, rsps[0].status),
            (1, op::WRITE, rsp::OKAY)
        );
        assert_eq!(checksum(&rig.read_disk(64, sent.len())), checksum(&sent));

        for p in 0..40 {
            rig.guest.write(DATA + p, 0, &[0; 4096]);
        }
        let r = indirect(&rig.guest, op::READ, 2, 64, 40);
        rig.front.queue_indirect(&r);
        let rsps = rig.serve().expect("served");
        assert_eq!(
            (rsps[0].id, rsps[0].operation, rsps[0].status),
            (2, op::READ, rsp::OKAY)
        );
        let got: Vec<u8> = (0..40)
            .flat_map(|p| rig.guest.read(DATA + p, 0, 4096))
            .collect();
        assert_eq!(checksum(&got), checksum(&sent));

        // More segments than published, and a bad segment inside a page, are errors.
        let options = QueueOptions {
            max_indirect_segments: 32,
            ..QueueOptions::default()
        };
        let mut rig = Rig::new(writable_disk(), options);
        let too_many = indirect(&rig.guest, op::READ, 3, 0, 33);
        rig.front.queue_indirect(&too_many);
        let mut bad = indirect(&rig.guest, op::READ, 4, 0, 8);
        bad.indirect_grefs[0] = GREF + DATA as u32 + 110;
        let seg = BlkifRequestSegment {
            gref: GREF + DATA as u32,
            first_sect: 6,
            last_sect: 5,
            pad: [0; 2],
        };
        rig.guest.write(DATA + 110, 0, &seg.to_bytes());
        rig.front.queue_indirect(&bad);
        let mut ungranted = indirect(&rig.guest, op::READ, 5, 0, 8);
        ungranted.indirect_grefs[0] = 7;
        rig.front.queue_indirect(&ungranted);
        assert_eq!(
            rig.statuses(),
            [(3, rsp::ERROR), (4, rsp::ERROR), (5, rsp::ERROR)]
        );
    });
}

#[test]
fn persistent_grants_are_mapped_once_and_reused() {
    both_engines(|options| {
        let options = QueueOptions {
            persistent_grants: true,
            max_persistent_grants: 6,
            ..options
        };
        let mut rig = Rig::new(writable_disk(), options);
        for round in 0..3u64 {
            for p in 0..8 {
                rig.guest
                    .write(DATA + p, 0, &pattern(round * 10 + p as u64, 4096));
            }
            rig.front
                .queue(&rw(op::WRITE, round, round * 64, &pages(DATA, 8)));
            assert_eq!(rig.statuses(), [(round, rsp::OKAY)]);
            for p in 0..8 {
                assert_eq!(
                    rig.read_disk(round * 64 + p as u64 * 8, 4096),
                    pattern(round * 10 + p as u64, 4096)
                );
            }
        }
        // Six pages mapped for good; the other two copied each round.
        assert_eq!(rig.queue.persistent_grants(), 6);
        assert_eq!(
            rig.guest.mapped_refs(),
            6 + 1,
            "six data pages and the ring"
        );
        let st = rig.queue.stats();
        assert_eq!(st.persistent_hits, 18);
        assert_eq!(st.grant_copy_calls, 3, "one batched copy per request");
        assert_eq!(
            rig.guest.map_calls(),
            1 + 6,
            "the ring, then each page once"
        );

        // A read through the mappings.
        for p in 0..8 {
            rig.guest.write(DATA + p, 0, &[0; 4096]);
        }
        rig.front.queue(&rw(op::READ, 9, 128, &pages(DATA, 8)));
        assert_eq!(rig.statuses(), [(9, rsp::OKAY)]);
        for p in 0..8 {
            assert_eq!(
                rig.guest.read(DATA + p, 0, 4096),
                pattern(20 + p as u64, 4096)
            );
        }
        assert!(
            !rig.guest.revoke(GREF + DATA as u32),
            "a mapped grant cannot be ended"
        );
        drop(rig.queue);
        assert_eq!(rig.guest.mapped_refs(), 0, "unmapped with the queue");
    });
}

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

#[test]
fn a_full_ring_of_requests_costs_few_notifications() {
    both_engines(|options| {
        let blocking = options.blocking_io;
        let mut rig = Rig::with_ring(writable_disk(), options, 1);
        for round in 0..4u64 {
            for i in 0..32u64 {
                rig.front.queue(&rw(
                    op::READ,
                    round * 32 + i,
                    i * 8,
                    &pages(DATA + i as usize, 1),
                ));
            }
            let before = rig.notifications.get();
            assert_eq!(rig.serve().expect("served").len(), 32);
            let sent = rig.notifications.get() - before;
            assert!(
                (1..=4).contains(&sent),
                "{sent} notifications for 32 requests (blocking {blocking})"
            );
        }
        assert_eq!(rig.queue.stats().ok, 128);
    });
}

#[test]
fn a_multi_page_ring_serves_more_in_flight() {
    both_engines(|options| {
        let mut rig = Rig::with_ring(writable_disk(), options, 4);
        assert_eq!(rig.front.entries(), 128);
        for i in 0..100u64 {
            rig.guest.write(DATA + i as usize, 0, &pattern(i, 4096));
            rig.front
                .queue(&rw(op::WRITE, i, i * 8, &pages(DATA + i as usize, 1)));
        }
        assert_eq!(rig.statuses().len(), 100);
        for i in 0..100u64 {
            assert_eq!(rig.read_disk(i * 8, 4096), pattern(i, 4096));
        }
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
        let mut rig = Rig::new(writable_disk(), options);
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
        let mut answered = 0;
        for round in 0..20u64 {
            for j in 0..4 {
                let id = round * 4 + j;
                guest.write(DATA + j as usize, 0, &pattern(id, 4096));
                front.queue(&rw(op::WRITE, id, id * 8, &pages(DATA + j as usize, 1)));
            }
            if front.publish() {
                signal(&kick);
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
        rig = Rig::new(writable_disk(), QueueOptions::default());
        drop(rig);
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

#[test]
fn backend_keys_describe_the_disk() {
    let disk = writable_disk();
    let keys = backend_keys(&disk, &Limits::default());
    let get = |v: &Vec<(String, String)>, k: &str| {
        v.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
    };
    assert_eq!(get(&keys.device, "sectors").as_deref(), Some("2048"));
    assert_eq!(get(&keys.device, "info").as_deref(), Some("0"));
    assert_eq!(get(&keys.device, "sector-size").as_deref(), Some("512"));
    assert_eq!(
        get(&keys.device, "physical-sector-size").as_deref(),
        Some("512")
    );
    for (k, v) in [
        ("feature-flush-cache", "1"),
        ("feature-persistent", "1"),
        ("feature-max-indirect-segments", "256"),
        ("multi-queue-max-queues", "4"),
        ("max-ring-page-order", "4"),
        ("feature-discard", "1"),
        ("discard-granularity", "512"),
        ("discard-alignment", "0"),
        ("discard-secure", "0"),
    ] {
        assert_eq!(get(&keys.features, k).as_deref(), Some(v), "{k}");
    }
    let ro = Disk::from_file(temp_file(64), true)
        .unwrap()
        .with_sector_size(4096)
        .unwrap();
    let keys = backend_keys(
        &ro,
        &Limits {
            max_indirect_segments: 0,
            ..Limits::default()
        },
    );
    assert_eq!(get(&keys.device, "info").as_deref(), Some("4"));
    assert_eq!(get(&keys.device, "sector-size").as_deref(), Some("4096"));
    assert_eq!(get(&keys.features, "feature-discard"), None);
    assert_eq!(get(&keys.features, "feature-max-indirect-segments"), None);
}

fn frontend<'a>(keys: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        keys.iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn frontend_keys_are_read_and_checked() {
    let l = Limits::default();
    let c = parse_frontend_keys(
        frontend(&[
            ("ring-ref", "8"),
            ("event-channel", "5"),
            ("protocol", "x86_64-abi"),
        ]),
        &l,
    )
    .unwrap();
    assert_eq!(
        c.queues,
        [RingConfig {
            ring_refs: vec![8],
            event_channel: 5
        }]
    );
    assert!(!c.persistent);
    let c = parse_frontend_keys(
        frontend(&[
            ("ring-page-order", "1"),
            ("multi-queue-num-queues", "2"),
            ("feature-persistent", "1"),
            ("queue-0/ring-ref0", "10"),
            ("queue-0/ring-ref1", "11"),
            ("queue-0/event-channel", "6"),
            ("queue-1/ring-ref0", "12"),
            ("queue-1/ring-ref1", "13"),
            ("queue-1/event-channel", "7"),
        ]),
        &l,
    )
    .unwrap();
    assert_eq!(
        (c.ring_page_order, c.persistent, c.queues.len()),
        (1, true, 2)
    );
    assert_eq!(
        c.queues[1],
        RingConfig {
            ring_refs: vec![12, 13],
            event_channel: 7
        }
    );
    let no_persistent = Limits {
        persistent: false,
        ..l
    };
    let c = parse_frontend_keys(
        frontend(&[
            ("ring-ref", "8"),
            ("event-channel", "5"),
            ("feature-persistent", "1"),
        ]),
        &no_persistent,
    )
    .unwrap();
    assert!(!c.persistent);

    for (keys, msg) in [
        (
            vec![
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "x86_32-abi"),
            ],
            "not supported",
        ),
        (
            vec![
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "vax"),
            ],
            "unknown",
        ),
        (vec![("event-channel", "5")], "ring-ref is missing"),
        (vec![("ring-ref", "8")], "event-channel is missing"),
        (
            vec![("ring-ref", "8"), ("event-channel", "0")],
            "event-channel",
        ),
        (
            vec![("ring-ref", "8"), ("event-channel", "4096")],
            "event-channel",
        ),
        (vec![("ring-ref", "-8"), ("event-channel", "5")], "ring-ref"),
        (
            vec![("ring-ref", "4294967296"), ("event-channel", "5")],
            "ring-ref",
        ),
        (vec![("ring-ref", " 8"), ("event-channel", "5")], "ring-ref"),
        (
            vec![
                ("ring-page-order", "5"),
                ("ring-ref0", "8"),
                ("event-channel", "5"),
            ],
            "ring-page-order",
        ),
        (
            vec![
                ("ring-page-order", "1"),
                ("ring-ref0", "8"),
                ("event-channel", "5"),
            ],
            "ring-ref1 is missing",
        ),
        (
            vec![
                ("multi-queue-num-queues", "5"),
                ("ring-ref", "8"),
                ("event-channel", "5"),
            ],
            "multi-queue-num-queues",
        ),
        (
            vec![
                ("multi-queue-num-queues", "0"),
                ("ring-ref", "8"),
                ("event-channel", "5"),
            ],
            "multi-queue-num-queues",
        ),
        (
            vec![
                ("multi-queue-num-queues", "2"),
                ("queue-0/ring-ref", "8"),
                ("queue-0/event-channel", "5"),
            ],
            "queue-1/ring-ref",
        ),
        (
            vec![
                ("feature-persistent", "2"),
                ("ring-ref", "8"),
                ("event-channel", "5"),
            ],
            "feature-persistent",
        ),
    ] {
        let err = parse_frontend_keys(frontend(&keys), &l)
            .expect_err(msg)
            .to_string();
        assert!(err.contains(msg), "{keys:?}: {err}");
    }
}

#[test]
fn disks_probe_files_and_refuse_other_files() {
    let d = Disk::from_file(temp_file(100), false).unwrap();
    assert_eq!(
        (d.sectors(), d.sector_size(), d.read_only(), d.discard()),
        (100, 512, false, true)
    );
    let d = d.with_sector_size(4096).unwrap();
    assert_eq!(d.sectors(), 96);
    assert!(d.with_sectors(97).is_err());
    let d = Disk::from_file(temp_file(100), false)
        .unwrap()
        .with_sectors(10)
        .unwrap();
    assert_eq!(d.sectors(), 10);
    assert!(Disk::from_file(File::open("/dev/null").unwrap(), true).is_err());
    assert!(Disk::from_file(temp_file(1), false)
        .unwrap()
        .with_sector_size(1024)
        .is_ok());
    assert!(Disk::from_file(temp_file(1), false)
        .unwrap()
        .with_sector_size(8192)
        .is_err());
}
