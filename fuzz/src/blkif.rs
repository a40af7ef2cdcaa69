//! The block backend's queue (`keel_backends::blk::Queue`) against a hostile frontend: random
//! and structure-aware ring entries (reads, writes, flushes, barriers, discards, indirect
//! requests with their segment pages, unknown operations, raw bytes), random grants (missing,
//! read-only), random indexes, served from a small in-memory disk through io_uring or the
//! worker thread, with or without persistent grants.
//!
//! Checked: nothing panics or hangs; an honest ring is never called broken, and every request
//! on it is answered exactly once; every response answers a request that was put on the ring
//! (with a hostile `req_prod`, whatever stale slots held counts as put there),
//! with its operation (an indirect request's `indirect_op`); an `OKAY` read or write used only
//! pages that were granted (writable, for a read); nothing changes on a read-only disk, nor
//! past the end of a writable one.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use keel_backends::blk::{Disk, Queue, QueueError, QueueOptions};
use keel_backends::grant::GrantAccess;
use keel_backends::ring::BackRing;
use keel_backends::testing::{FakeFrontend, FakeGuest};
use keel_core::xen::blkif::{
    self, op, rsp, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    ENTRY_SIZE,
};
use rand::Rng as _;

use crate::{Finding, Rng};

/// Sectors the disk serves; the file has [`GUARD`] more, which must never change.
const SECTORS: u64 = 64;
const GUARD: u64 = 16;
/// Guest pages: the ring at 0..2, data pages, then indirect segment pages (never the target
/// of a data segment, so what the backend fetched from them can be read again afterwards).
const FIRST_DATA: usize = 2;
const FIRST_INDIRECT: usize = 20;
const PAGES: usize = 24;
/// Grant references: `GREF + page`.
const GREF: u32 = 100;

/// An in-memory file of `bytes` bytes.
fn memfd(bytes: u64) -> Result<File, Finding> {
    // SAFETY: a NUL-terminated name; a non-negative result is a new fd we own.
    let fd = unsafe { libc::memfd_create(c"keel-fuzz-blk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: just created, owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(bytes).map_err(|e| format!("set_len: {e}"))?;
    Ok(f)
}

/// A plausible gref: mostly a data page's, sometimes anything (but the ring's own refs 1 and
/// 2: a frontend reading into its ring breaks it, as a hostile `req_prod` does).
fn gref(rng: &mut Rng) -> u32 {
    match rng.random_range(0..10) {
        0 => rng.random::<u32>().max(3),
        1 => rng.random_range(3..8),
        _ => GREF + rng.random_range(FIRST_DATA..FIRST_INDIRECT) as u32,
    }
}

/// A plausible indirect page's gref.
fn indirect_gref(rng: &mut Rng) -> u32 {
    match rng.random_range(0..10) {
        0 => rng.random::<u32>().max(3),
        _ => GREF + rng.random_range(FIRST_INDIRECT..PAGES) as u32,
    }
}

fn segment(rng: &mut Rng) -> BlkifRequestSegment {
    let (first_sect, last_sect) = if rng.random_bool(0.85) {
        let f = rng.random_range(0..8);
        (f, rng.random_range(f..8))
    } else {
        (rng.random(), rng.random())
    };
    BlkifRequestSegment {
        gref: gref(rng),
        first_sect,
        last_sect,
        pad: [0; 2],
    }
}

fn sector(rng: &mut Rng) -> u64 {
    match rng.random_range(0..10) {
        0 => rng.random(),
        1 => SECTORS - rng.random_range(0..16),
        _ => rng.random_range(0..SECTORS),
    }
}

/// One ring entry, with `id`.
fn entry(rng: &mut Rng, guest: &FakeGuest, id: u64) -> [u8; ENTRY_SIZE] {
    let mut e = [0u8; ENTRY_SIZE];
    match rng.random_range(0..12) {
        0..=5 => {
            let operation = [
                op::READ,
                op::WRITE,
                op::FLUSH_DISKCACHE,
                op::WRITE_BARRIER,
                op::RESERVED_1,
                rng.random(),
            ][rng.random_range(0..6)];
            let n = if rng.random_bool(0.9) {
                rng.random_range(0..=11)
            } else {
                rng.random()
            };
            let mut r = BlkifRequest {
                operation,
                nr_segments: n,
                id,
                sector_number: sector(rng),
                ..Default::default()
            };
            for s in r.seg.iter_mut().take(usize::from(n)) {
                *s = segment(rng);
            }
            e.copy_from_slice(&r.to_bytes());
        }
        6 | 7 => {
            let d = BlkifRequestDiscard {
                operation: op::DISCARD,
                flag: rng.random_range(0..2),
                id,
                sector_number: sector(rng),
                nr_sectors: if rng.random_bool(0.9) {
                    rng.random_range(0..24)
                } else {
                    rng.random()
                },
                ..Default::default()
            };
            e[..BlkifRequestDiscard::SIZE].copy_from_slice(&d.to_bytes());
        }
        8..=10 => {
            let n: u16 = if rng.random_bool(0.9) {
                rng.random_range(0..40)
            } else {
                rng.random()
            };
            let mut grefs = [0u32; blkif::MAX_INDIRECT_PAGES_PER_REQUEST];
            for g in grefs.iter_mut() {
                *g = indirect_gref(rng);
            }
            // The segment pages: the first one or two of the request, filled now.
            for g in grefs.iter().take(2) {
                let Some(page) = g
                    .checked_sub(GREF)
                    .map(|p| p as usize)
                    .filter(|p| (FIRST_INDIRECT..PAGES).contains(p))
                else {
                    continue;
                };
                let bytes: Vec<u8> = (0..usize::from(n).min(512))
                    .flat_map(|_| segment(rng).to_bytes())
                    .collect();
                guest.write(page, 0, &bytes);
            }
            let r = BlkifRequestIndirect {
                operation: op::INDIRECT,
                indirect_op: [op::READ, op::WRITE, rng.random()][rng.random_range(0..3)],
                nr_segments: n,
                id,
                sector_number: sector(rng),
                indirect_grefs: grefs,
                ..Default::default()
            };
            e[..BlkifRequestIndirect::SIZE].copy_from_slice(&r.to_bytes());
        }
        _ => {
            rng.fill(&mut e[..]);
            e[8..16].copy_from_slice(&id.to_le_bytes());
        }
    }
    e
}

/// The grants an entry's data needs: pages only read (a write's data, indirect segment pages)
/// and pages written (a read's data). Read back from the entry as the frontend wrote it, and
/// from the indirect pages as they are when the batch is published.
struct Needs {
    read: Vec<u32>,
    written: Vec<u32>,
}

fn needs(e: &[u8], guest: &FakeGuest) -> Needs {
    let mut n = Needs {
        read: Vec::new(),
        written: Vec::new(),
    };
    match e[0] {
        op::READ | op::WRITE | op::FLUSH_DISKCACHE | op::WRITE_BARRIER => {
            let r = BlkifRequest::from_bytes(e).expect("an entry");
            let count = usize::from(r.nr_segments).min(blkif::MAX_SEGMENTS_PER_REQUEST);
            let refs = r.seg[..count].iter().map(|s| s.gref);
            if e[0] == op::READ {
                n.written.extend(refs);
            } else {
                n.read.extend(refs);
            }
        }
        op::INDIRECT => {
            let r = BlkifRequestIndirect::from_bytes(e).expect("an entry");
            let count = usize::from(r.nr_segments);
            let pages = blkif::indirect_pages(count).min(blkif::MAX_INDIRECT_PAGES_PER_REQUEST);
            n.read.extend(&r.indirect_grefs[..pages]);
            for (i, g) in r.indirect_grefs[..pages].iter().enumerate() {
                if let Some(grant) = guest.grant_of(*g) {
                    let segs = (count - i * 512).min(512);
                    let bytes = guest.read(grant.page, 0, segs * 8);
                    let refs = bytes
                        .chunks_exact(8)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
                    if r.indirect_op == op::READ {
                        n.written.extend(refs);
                    } else {
                        n.read.extend(refs);
                    }
                }
            }
        }
        _ => {}
    }
    n
}

/// One input: a disk, grants, a ring's worth of entries, indexes; served to the end.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let read_only = rng.random_bool(0.25);
    let file = memfd((SECTORS + GUARD) * 512)?;
    let initial: Vec<u8> = (0..(SECTORS + GUARD) * 512)
        .map(|i| (i * 7 + i / 512) as u8)
        .collect();
    file.write_all_at(&initial, 0).map_err(|e| e.to_string())?;
    let check = file.try_clone().map_err(|e| e.to_string())?;
    let disk = Disk::from_file(file, read_only)
        .and_then(|d| d.with_sectors(SECTORS))
        .map_err(|e| format!("disk: {e}"))?
        .with_discard(rng.random_bool(0.8));

    let guest = FakeGuest::new(PAGES);
    let ring_pages = rng.random_range(1..=2);
    let mut front = FakeFrontend::new(&guest, 0, ring_pages, 1);
    for p in FIRST_DATA..PAGES {
        match rng.random_range(0..10) {
            0 => {}
            1 => guest.grant(GREF + p as u32, p, true),
            _ => guest.grant(GREF + p as u32, p, false),
        }
    }
    let grants: HashMap<u32, bool> = (0..PAGES as u32 + GREF)
        .filter_map(|g| guest.grant_of(g).map(|gr| (g, gr.readonly)))
        .collect();

    let map = guest
        .map(front.ring_refs(), true)
        .map_err(|e| format!("map ring: {e}"))?;
    let ring = BackRing::new(map, ENTRY_SIZE).map_err(|e| e.to_string())?;
    let options = QueueOptions {
        persistent_grants: rng.random_bool(0.5),
        max_persistent_grants: rng.random_range(0..8),
        max_indirect_segments: [0, 8, 32, 256][rng.random_range(0..4)],
        blocking_io: rng.random_bool(0.5),
    };
    let access: Arc<dyn GrantAccess> = Arc::new(guest.clone());
    let mut queue =
        Queue::new(ring, Arc::new(disk), access, options).map_err(|e| format!("queue: {e}"))?;

    // Entries, in one or more published batches; sometimes a hostile req_prod.
    let entries = front.entries();
    let mut sent: HashMap<u64, ([u8; ENTRY_SIZE], Needs)> = HashMap::new();
    let mut answers: Vec<(u64, u8, i16)> = Vec::new();
    let hostile = rng.random_bool(0.1);
    let mut broken = false;
    let mut next_id = rng.random::<u64>() & !0xffff;
    for _batch in 0..rng.random_range(1..4) {
        let room = entries - front.outstanding();
        let mut batch = Vec::new();
        for _ in 0..rng.random_range(0..=room) {
            let e = entry(rng, &guest, next_id);
            batch.push((next_id, e));
            front.queue_raw(&e);
            next_id += 1;
        }
        for (id, e) in batch {
            sent.insert(id, (e, needs(&e, &guest)));
        }
        front.publish();
        if hostile && rng.random_bool(0.5) {
            front.set_req_prod(rng.random());
        }
        // Serve until idle (bounded: a hang is a finding).
        let mut turns = 0;
        loop {
            turns += 1;
            if turns > 100_000 {
                return Err("the queue never went idle".into());
            }
            match queue.process(&|| {}) {
                Ok(more) => {
                    if !more && queue.in_flight() == 0 {
                        break;
                    }
                    if !more {
                        queue.wait_for_io().map_err(|e| e.to_string())?;
                    }
                }
                Err(QueueError::Ring(b)) => {
                    if !hostile {
                        return Err(format!("an honest ring called broken: {b}"));
                    }
                    broken = true;
                    break;
                }
                Err(e) => return Err(format!("queue failed: {e}")),
            }
        }
        answers.extend(
            front
                .take_responses()
                .iter()
                .map(|r| (r.id, r.operation, r.status)),
        );
        if broken {
            break;
        }
    }
    drop(queue); // waits for any I/O in flight

    let mut seen = HashMap::new();
    for &(id, operation, status) in &answers {
        let Some((e, need)) = sent.get(&id) else {
            // A hostile req_prod makes the backend read slots never written, or holding
            // responses: whatever they hold is what that frontend submitted.
            if hostile {
                continue;
            }
            return Err(format!("response id {id:#x} answers no request"));
        };
        // ... or slots written in an earlier batch, answered again.
        if std::mem::replace(seen.entry(id).or_insert(false), true) && !hostile {
            return Err(format!("request {id:#x} answered twice"));
        }
        let want_op = if e[0] == op::INDIRECT { e[1] } else { e[0] };
        if operation != want_op {
            return Err(format!(
                "request {id:#x} (op {}) answered with op {operation}",
                e[0]
            ));
        }
        if ![rsp::OKAY, rsp::ERROR, rsp::EOPNOTSUPP].contains(&status) {
            return Err(format!("request {id:#x}: status {status}"));
        }
        if status == rsp::OKAY {
            for r in need.read.iter().chain(&need.written) {
                if !grants.contains_key(r) {
                    return Err(format!("request {id:#x} OKAY through ungranted ref {r}"));
                }
            }
            if let Some(r) = need.written.iter().find(|r| grants.get(r) == Some(&true)) {
                return Err(format!(
                    "request {id:#x} OKAY reading into read-only ref {r}"
                ));
            }
        }
    }
    if !broken && answers.len() != sent.len() {
        return Err(format!(
            "{} requests, {} answered",
            sent.len(),
            answers.len()
        ));
    }

    let mut now = vec![0u8; initial.len()];
    check
        .read_exact_at(&mut now, 0)
        .map_err(|e| e.to_string())?;
    let keep = if read_only {
        0
    } else {
        (SECTORS * 512) as usize
    };
    if let Some(at) = (keep..now.len()).find(|&i| now[i] != initial[i]) {
        return Err(format!(
            "byte {at} changed on a {} disk of {SECTORS} sectors",
            if read_only { "read-only" } else { "writable" }
        ));
    }
    Ok(())
}
