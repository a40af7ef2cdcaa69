//! The block queue end to end: a fake frontend fills the ring in fake guest memory, the queue
//! serves it from a temporary file, through io_uring and through the worker thread. Data
//! paths here, refusals and failures in `errors`.

mod errors;

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use keel_core::xen::blkif::{
    op, rsp, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BlkifResponse, Protocol,
};

use super::{Disk, Queue, QueueError, QueueOptions};
use crate::grant::GrantAccess;
use crate::testing::{temp_file, FakeFrontend, FakeGuest};

/// Guest pages: the ring from page 0, data pages from [`DATA`], granted as `GREF + page`.
const DATA: usize = 16;
const GUEST_PAGES: usize = DATA + 128;
const GREF: u32 = 1000;
const DISK_SECTORS: u64 = 2048;

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
        let file = disk.file().try_clone().expect("dup");
        let grants: Arc<dyn GrantAccess> = Arc::new(guest.clone());
        let queue = Queue::attach(
            grants,
            front.ring_refs(),
            Protocol::X86_64,
            Arc::new(disk),
            options,
        )
        .expect("queue");
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
            st.mapped_io, 0,
            "two pages unmapped: through a bounce buffer"
        );
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
fn mapped_requests_do_their_io_on_the_frontends_pages() {
    both_engines(|options| {
        let options = QueueOptions {
            persistent_grants: true,
            ..options
        };
        let mut rig = Rig::new(writable_disk(), options);
        // Partial segments at both ends, as in the bounce-buffer test: every page mappable, so
        // the I/O goes to and from the pages themselves.
        let mut segs = vec![(DATA, 3, 7)];
        segs.extend(pages(DATA + 1, 9));
        segs.push((DATA + 10, 0, 4));
        let mut sent = Vec::new();
        for (i, &(page, first, last)) in segs.iter().enumerate() {
            let bytes = pattern(i as u64 + 50, (usize::from(last - first) + 1) * 512);
            rig.guest.write(page, usize::from(first) * 512, &bytes);
            sent.extend(bytes);
        }
        rig.front.queue(&rw(op::WRITE_BARRIER, 3, 200, &segs));
        assert_eq!(rig.statuses(), [(3, rsp::OKAY)]);
        assert_eq!(checksum(&rig.read_disk(200, sent.len())), checksum(&sent));

        let back = [(DATA + 20, 1, 7), (DATA + 21, 0, 7), (DATA + 22, 0, 2)];
        rig.front.queue(&rw(op::READ, 4, 201, &back));
        assert_eq!(rig.statuses(), [(4, rsp::OKAY)]);
        let mut got = rig.guest.read(DATA + 20, 512, 3584);
        got.extend(rig.guest.read(DATA + 21, 0, 4096));
        got.extend(rig.guest.read(DATA + 22, 0, 1536));
        assert_eq!(checksum(&got), checksum(&sent[512..512 + 9216]));
        assert_eq!(
            rig.guest.read(DATA + 20, 0, 512),
            vec![0; 512],
            "outside the segment"
        );
        assert_eq!(rig.guest.read(DATA + 22, 1536, 2560), vec![0; 2560]);

        let st = rig.queue.stats();
        assert_eq!(st.mapped_io, 2, "both straight on the pages");
        assert_eq!(st.grant_copy_calls, 0);
        assert_eq!(st.persistent_hits, 11 + 3);
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
