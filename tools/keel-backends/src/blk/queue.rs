//! One ring's data path: take requests, move their data, do their I/O, answer them.

use std::alloc::{self, Layout};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::Arc;

use keel_core::xen::blkif::{self, rsp, BlkifResponse, Protocol, SECTOR_SIZE};

use super::io::{clear_eventfd, Completion, Engine, IoOp};
use super::request::{self, Geometry, IndirectHead, Kind, Parsed, Request, Segment};
use super::Disk;
use crate::grant::{GrantAccess, GrantCopy, GrantMapping};
use crate::ring::{BackRing, RingBroken};

/// How a queue serves its ring.
#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// The frontend wrote `feature-persistent = 1` (and the backend offers it): keep the
    /// data pages it uses mapped and reuse the mappings.
    pub persistent_grants: bool,
    /// At most this many grants stay mapped for the ring; beyond, pages are copied.
    pub max_persistent_grants: usize,
    /// The published `feature-max-indirect-segments` (0: indirect requests are refused).
    pub max_indirect_segments: usize,
    /// Use the blocking worker thread even where io_uring works.
    pub blocking_io: bool,
}

impl Default for QueueOptions {
    fn default() -> QueueOptions {
        QueueOptions {
            persistent_grants: false,
            max_persistent_grants: 256,
            max_indirect_segments: super::xenstore::MAX_INDIRECT_SEGMENTS,
            blocking_io: false,
        }
    }
}

/// Counters of a queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Requests taken off the ring.
    pub requests: u64,
    /// Responses answered `BLKIF_RSP_OKAY`.
    pub ok: u64,
    /// Responses answered `BLKIF_RSP_ERROR`.
    pub errors: u64,
    /// Responses answered `BLKIF_RSP_EOPNOTSUPP`.
    pub unsupported: u64,
    /// Notifications asked of `notify`.
    pub notifications: u64,
    /// Notifications from the frontend: signals of the kick eventfd [`Queue::run`] read.
    pub kicks: u64,
    /// `GrantAccess::copy` calls.
    pub grant_copy_calls: u64,
    /// Segments served through a persistent mapping.
    pub persistent_hits: u64,
    /// Reads and writes done straight on the frontend's persistently mapped pages (no bounce
    /// buffer, no copy by the backend).
    pub mapped_io: u64,
}

/// Why a queue stopped.
#[derive(Debug)]
pub enum QueueError {
    /// The frontend broke the ring's indexes: the ring is not served any more.
    Ring(RingBroken),
    /// A system call the queue needs failed (poll, io_uring submission, the grant device).
    Io(io::Error),
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Ring(b) => b.fmt(f),
            QueueError::Io(e) => write!(f, "block queue: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<RingBroken> for QueueError {
    fn from(b: RingBroken) -> QueueError {
        QueueError::Ring(b)
    }
}

impl From<io::Error> for QueueError {
    fn from(e: io::Error) -> QueueError {
        QueueError::Io(e)
    }
}

/// A zeroed, page-aligned bounce buffer.
///
/// # Invariants
///
/// `ptr` is an allocation of `len` bytes (at least 1) with alignment 4096, owned by this value.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is an allocation this value owns alone; moving it to another thread moves
// that ownership (the engine's use of it is bounded by the queue's Drop, wherever it runs).
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.max(1), blkif::PAGE_SIZE).expect("bounce buffer layout")
    }

    fn new(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: the layout's size is at least 1.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` initialized (zeroed) bytes owned by this value (type invariant),
        // borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout (type invariant).
        unsafe { alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

/// The steps of a request, run one after the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The read or write of the whole data, possibly in several system calls.
    Transfer,
    /// `fdatasync`.
    Sync,
    /// The discard.
    Punch,
}

fn plan(kind: Kind, has_data: bool) -> &'static [Step] {
    match (kind, has_data) {
        (Kind::Read | Kind::Write, _) => &[Step::Transfer],
        (Kind::WriteFlush | Kind::Barrier, true) => &[Step::Transfer, Step::Sync],
        (Kind::WriteFlush | Kind::Barrier | Kind::Flush, _) => &[Step::Sync],
        (Kind::Discard, _) => &[Step::Punch],
    }
}

/// The iovecs of a request whose segments are all persistently mapped: its I/O reads and
/// writes the frontend's pages directly, with no bounce buffer and no copy.
///
/// # Invariants
///
/// Each entry names bytes inside a page of the queue's `persistent` mappings, which stay
/// mapped while the queue lives (they are only dropped with it, after its I/O is drained).
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers name memory the queue keeps mapped (type invariant); moving them to
// another thread with the queue moves no ownership.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Drops the first `n` bytes (a short transfer's part done).
    fn advance(&mut self, mut n: usize) {
        let mut gone = 0;
        for v in &mut self.0 {
            if n < v.iov_len {
                // SAFETY: n < iov_len: still inside the entry's bytes.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                break;
            }
            n -= v.iov_len;
            gone += 1;
        }
        self.0.drain(..gone);
    }
}

/// Where a request's data is while its I/O runs.
enum Data {
    /// A bounce buffer: filled from the frontend's pages before a write, copied to them after
    /// a read.
    Bounce(AlignedBuf),
    /// The frontend's persistently mapped pages themselves; `advanced` bytes of them are
    /// already done and dropped from the iovecs.
    Mapped { iov: IoVecs, advanced: usize },
}

/// A request whose I/O is under way. Its buffer (or the mappings its iovecs name) must outlive
/// the engine's use of it.
struct InFlight {
    req: Request,
    data: Data,
    /// Bytes of the whole transfer.
    len: usize,
    steps: &'static [Step],
    step: usize,
    /// Bytes of the transfer done.
    done: usize,
}

/// One ring of a virtual disk: see the module documentation of [`crate::blk`].
pub struct Queue {
    ring: BackRing,
    disk: Arc<Disk>,
    geo: Geometry,
    grants: Arc<dyn GrantAccess>,
    options: QueueOptions,
    engine: Engine,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    /// A barrier waiting for the requests before it to complete.
    parked: Option<Request>,
    /// A barrier's I/O is under way: nothing else starts.
    barrier_active: bool,
    persistent: HashMap<u32, Box<dyn GrantMapping>, BuildHasherDefault<GrefHasher>>,
    stats: QueueStats,
    entry: Vec<u8>,
    completions: Vec<Completion>,
}

/// Hashes a grant reference with one multiplication: std's SipHash cost more than the rest of
/// the lookup, once per segment (bench-disk's profile). A frontend choosing references that
/// collide slows only its own queue's lookups, and boundedly: the map holds at most
/// `max_persistent_grants` entries.
#[derive(Default)]
struct GrefHasher(u64);

impl Hasher for GrefHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u32(u32::from(b) ^ (self.0 as u32).rotate_left(8));
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: the product's high bits (hashbrown's tag) mix every bit of a
        // reference; its low bits (the position) are a permutation of the reference's low
        // bits, which differ between references a frontend hands out in sequence.
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

// A queue runs on a thread of its own.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Queue>();
};

/// The most iovecs one system call takes (Linux's `UIO_MAXIOV`); a request with more
/// segments goes through a bounce buffer.
const MAX_IOVECS: usize = 1024;

/// Passes of [`Queue::process`] before it lets the caller look at its other fds.
const MAX_PASSES: usize = 16;

impl Queue {
    /// A queue serving `ring` (whose entries are the native blkif ones) from `disk`, moving
    /// data with `grants`.
    pub fn new(
        ring: BackRing,
        disk: Arc<Disk>,
        grants: Arc<dyn GrantAccess>,
        options: QueueOptions,
    ) -> io::Result<Queue> {
        let entries = ring.entries();
        let engine = Engine::new(disk.clone(), entries, options.blocking_io)?;
        let geo = Geometry {
            sectors: disk.sectors(),
            sector_size: disk.sector_size(),
            read_only: disk.read_only(),
            discard: disk.discard(),
            max_indirect_segments: options.max_indirect_segments,
        };
        Ok(Queue {
            ring,
            disk,
            geo,
            grants,
            options,
            engine,
            slots: Vec::new(),
            free: Vec::new(),
            parked: None,
            barrier_active: false,
            persistent: HashMap::default(),
            stats: QueueStats::default(),
            entry: vec![0; blkif::ENTRY_SIZE],
            completions: Vec::new(),
        })
    }

    /// Maps the ring the frontend granted (`ring_refs`, in page order, as
    /// [`super::xenstore::parse_frontend_keys`] read them) writable and builds a queue on it.
    pub fn attach(
        grants: Arc<dyn GrantAccess>,
        ring_refs: &[u32],
        protocol: Protocol,
        disk: Arc<Disk>,
        options: QueueOptions,
    ) -> io::Result<Queue> {
        let map = grants.map(ring_refs, true)?;
        let ring = BackRing::new(map, protocol.entry_size())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Queue::new(ring, disk, grants, options)
    }

    /// Whether the I/O goes through io_uring (else through the worker thread).
    pub fn uses_io_uring(&self) -> bool {
        self.engine.is_uring()
    }

    /// The counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// Requests whose I/O is under way (or waiting behind a barrier).
    pub fn in_flight(&self) -> usize {
        self.busy_slots() + usize::from(self.parked.is_some())
    }

    fn busy_slots(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Grants kept mapped.
    pub fn persistent_grants(&self) -> usize {
        self.persistent.len()
    }

    /// The fd that becomes readable when I/O completes: poll it, and call
    /// [`Self::process`] after [`Self::clear_completion_fd`].
    pub fn completion_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the engine owns the eventfd and keeps it open while `self` lives, which the
        // borrow ties the result to.
        unsafe { BorrowedFd::borrow_raw(self.engine.event_fd()) }
    }

    /// Resets the completion fd (before [`Self::process`], so no completion is missed).
    pub fn clear_completion_fd(&self) {
        clear_eventfd(self.engine.event_fd());
    }

    /// Blocks until some I/O in flight completes (returns at once with none in flight).
    pub fn wait_for_io(&mut self) -> io::Result<()> {
        self.engine.wait()
    }

    /// Serves what is ready: completed I/O is answered, new requests are taken and started,
    /// the responses are published, and `notify` is called when the frontend asked for a
    /// notification (at most once per call). Returns `true` when work may remain that
    /// deserves another call without waiting.
    pub fn process(&mut self, notify: &dyn Fn()) -> Result<bool, QueueError> {
        for _ in 0..MAX_PASSES {
            self.complete()?;
            self.take_requests()?;
            self.engine.submit()?;
            // Operations the kernel finished at submission (cached reads) join this batch.
            self.complete()?;
            self.engine.submit()?;
            self.publish(notify);
            if self.parked.is_some() || self.barrier_active {
                return Ok(false);
            }
            if !self.ring.final_check_for_requests()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for the I/O in flight, answers it and publishes the answers; takes no new
    /// request. For a frontend going away.
    pub fn shutdown(&mut self, notify: &dyn Fn()) -> Result<(), QueueError> {
        while self.in_flight() > 0 {
            self.engine.wait()?;
            self.complete()?;
            self.engine.submit()?;
        }
        self.publish(notify);
        Ok(())
    }

    /// Serves the ring until `stop` becomes readable: waits (poll) on `kick` (an eventfd the
    /// frontend's event channel signals; read to clear), on the I/O completions and on `stop`,
    /// and calls `notify` to signal the frontend's event channel. On `stop`, the I/O in flight
    /// is finished and answered first. Returns an error when the frontend broke the ring (the
    /// ring is then abandoned) or a system call failed.
    pub fn run(
        &mut self,
        kick: BorrowedFd<'_>,
        stop: BorrowedFd<'_>,
        notify: impl Fn(),
    ) -> Result<(), QueueError> {
        loop {
            let more = self.process(&notify)?;
            let mut fds = [
                libc::pollfd {
                    fd: kick.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.engine.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: three live pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, if more { 0 } else { -1 }) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if fds[2].revents != 0 {
                self.shutdown(&notify)?;
                return Ok(());
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("the kick fd failed").into());
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.stats.kicks += clear_eventfd(kick.as_raw_fd());
            }
            if fds[1].revents != 0 {
                self.clear_completion_fd();
            }
        }
    }

    fn publish(&mut self, notify: &dyn Fn()) {
        if self.ring.push_responses() {
            self.stats.notifications += 1;
            notify();
        }
    }

    fn respond(&mut self, id: u64, operation: u8, status: i16) {
        match status {
            rsp::OKAY => self.stats.ok += 1,
            rsp::EOPNOTSUPP => self.stats.unsupported += 1,
            _ => self.stats.errors += 1,
        }
        let r = BlkifResponse {
            id,
            operation,
            status,
            ..Default::default()
        };
        self.ring.put_response(&r.to_bytes());
    }

    fn take_requests(&mut self) -> Result<(), RingBroken> {
        while self.parked.is_none() && !self.barrier_active {
            if !self.ring.next_request(&mut self.entry)? {
                break;
            }
            self.stats.requests += 1;
            match request::parse(&self.entry, &self.geo) {
                Parsed::Ready(req) => self.start(req),
                Parsed::Indirect(head) => match self.fetch_indirect(&head) {
                    Ok(req) => self.start(req),
                    Err(status) => self.respond(head.id, head.indirect_op, status),
                },
                Parsed::Reject { id, rsp_op, status } => self.respond(id, rsp_op, status),
            }
        }
        Ok(())
    }

    /// Copies an indirect request's segment pages out (once) and checks the segments.
    fn fetch_indirect(&mut self, head: &IndirectHead) -> Result<Request, i16> {
        let pages: Vec<Segment> = head
            .pages
            .iter()
            .map(|&gref| Segment {
                gref,
                first_sect: 0,
                last_sect: blkif::SECTORS_PER_PAGE - 1,
            })
            .collect();
        let mut buf = vec![0u8; pages.len() * blkif::PAGE_SIZE];
        if !self.move_data(&pages, &mut buf, false) {
            return Err(rsp::ERROR);
        }
        request::finish_indirect(head, &buf, &self.geo)
    }

    fn start(&mut self, req: Request) {
        if req.kind == Kind::Barrier {
            if self.busy_slots() > 0 {
                self.parked = Some(req);
                return;
            }
            self.barrier_active = true;
        }
        if req.kind == Kind::Discard && req.sectors == 0 {
            self.respond(req.id, req.rsp_op, rsp::OKAY);
            return;
        }
        let len = req.data_len();
        let data = match self.mapped_iovecs(&req) {
            Some(iov) => Data::Mapped { iov, advanced: 0 },
            None => {
                let mut buf = AlignedBuf::new(len);
                if req.kind.writes_data()
                    && !req.segments.is_empty()
                    && !self.move_data(&req.segments, buf.as_mut_slice(), false)
                {
                    self.finish_barrier(&req);
                    self.respond(req.id, req.rsp_op, rsp::ERROR);
                    return;
                }
                Data::Bounce(buf)
            }
        };
        let steps = plan(req.kind, !req.segments.is_empty());
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(InFlight {
            req,
            data,
            len,
            steps,
            step: 0,
            done: 0,
        });
        self.issue(slot);
    }

    /// Hands the current step of the request in `slot` to the engine.
    fn issue(&mut self, slot: usize) {
        let Some(f) = self.slots[slot].as_mut() else {
            return;
        };
        let start = f.req.sector * u64::from(SECTOR_SIZE);
        let op = match f.steps[f.step] {
            Step::Transfer => {
                let offset = start + f.done as u64;
                let read = f.req.kind == Kind::Read;
                match &mut f.data {
                    Data::Bounce(buf) => {
                        let len = buf.len - f.done;
                        // SAFETY: `done` < len: inside the buffer.
                        let at = unsafe { buf.ptr.add(f.done) };
                        if read {
                            IoOp::Read {
                                offset,
                                buf: at,
                                len,
                            }
                        } else {
                            IoOp::Write {
                                offset,
                                buf: at,
                                len,
                            }
                        }
                    }
                    Data::Mapped { iov, advanced } => {
                        iov.advance(f.done - *advanced);
                        *advanced = f.done;
                        let (iov, iovcnt) = (iov.0.as_ptr(), iov.0.len());
                        if read {
                            IoOp::ReadV {
                                offset,
                                iov,
                                iovcnt,
                            }
                        } else {
                            IoOp::WriteV {
                                offset,
                                iov,
                                iovcnt,
                            }
                        }
                    }
                }
            }
            Step::Sync => IoOp::Sync,
            Step::Punch => IoOp::Punch {
                offset: start,
                len: f.req.sectors * u64::from(SECTOR_SIZE),
            },
        };
        // SAFETY: the buffer (or the iovecs) belongs to the slot, which is only emptied when
        // this operation's completion is reaped (`complete`), and is not touched meanwhile;
        // the pages iovecs name stay mapped as long as the queue (IoVecs' invariant); Queue's
        // Drop waits for every operation before the slots and mappings go.
        unsafe { self.engine.push(slot as u64, op) };
    }

    /// Reaps completed operations: a request with steps left goes on, a finished one is
    /// answered.
    fn complete(&mut self) -> Result<(), QueueError> {
        let mut completions = std::mem::take(&mut self.completions);
        self.engine.reap(&mut completions);
        for c in completions.drain(..) {
            let slot = c.tag as usize;
            let Some(f) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let status = match (f.steps[f.step], c.result) {
                (Step::Transfer, Ok(n)) if n > 0 => {
                    f.done += n;
                    if f.done < f.len {
                        // A short transfer: the rest.
                        self.issue(slot);
                        continue;
                    }
                    None
                }
                // End of file inside the disk (the file shrank): an error, not a loop.
                (Step::Transfer, Ok(_)) => Some(rsp::ERROR),
                (_, Ok(_)) => None,
                (Step::Punch, Err(e)) if e == libc::EOPNOTSUPP => Some(rsp::EOPNOTSUPP),
                (_, Err(_)) => Some(rsp::ERROR),
            };
            if status.is_none() && f.step + 1 < f.steps.len() {
                f.step += 1;
                self.issue(slot);
                continue;
            }
            let Some(mut f) = self.slots[slot].take() else {
                continue;
            };
            self.free.push(slot);
            let mut status = status.unwrap_or(rsp::OKAY);
            if let Data::Bounce(buf) = &mut f.data {
                if status == rsp::OKAY
                    && f.req.kind == Kind::Read
                    && !self.move_data(&f.req.segments, buf.as_mut_slice(), true)
                {
                    status = rsp::ERROR;
                }
            }
            self.finish_barrier(&f.req);
            self.respond(f.req.id, f.req.rsp_op, status);
        }
        self.completions = completions;
        // A parked barrier starts once everything before it is done.
        if self.busy_slots() == 0 {
            if let Some(req) = self.parked.take() {
                self.start(req);
            }
        }
        Ok(())
    }

    fn finish_barrier(&mut self, req: &Request) {
        if req.kind == Kind::Barrier {
            self.barrier_active = false;
        }
    }

    /// Moves the data of `segments` between the frontend's pages and `buf` (which holds them
    /// back to back): persistently mapped pages by memory copies, the others in one batched
    /// grant copy. `false` when any segment failed.
    fn move_data(&mut self, segments: &[Segment], buf: &mut [u8], to_guest: bool) -> bool {
        let mut copies: Vec<GrantCopy<'_>> = Vec::new();
        let mut rest = buf;
        for seg in segments {
            let Some((chunk, tail)) =
                (seg.len() <= rest.len()).then(|| rest.split_at_mut(seg.len()))
            else {
                return false;
            };
            rest = tail;
            if let Some(page) = self.persistent_page(seg.gref) {
                // SAFETY: `page` maps 4096 bytes that stay mapped while the queue keeps the
                // mapping (until it drops), and offset + len <= 4096 for a checked segment;
                // `chunk` is ours. The frontend may write the page meanwhile: the bytes are
                // data, never checked.
                unsafe {
                    let at = page.add(seg.offset());
                    if to_guest {
                        ptr::copy_nonoverlapping(chunk.as_ptr(), at, chunk.len());
                    } else {
                        ptr::copy_nonoverlapping(at, chunk.as_mut_ptr(), chunk.len());
                    }
                }
                self.stats.persistent_hits += 1;
                continue;
            }
            copies.push(GrantCopy {
                gref: seg.gref,
                offset: seg.offset() as u16,
                to_guest,
                buf: chunk,
                status: 0,
            });
        }
        if copies.is_empty() {
            return true;
        }
        self.stats.grant_copy_calls += 1;
        self.grants.copy(&mut copies).is_ok() && copies.iter().all(|c| c.status == 0)
    }

    /// The iovecs of a read or write whose every segment is (or can now be) persistently
    /// mapped: its I/O then goes straight to the frontend's pages. `None` otherwise (the
    /// request goes through a bounce buffer).
    fn mapped_iovecs(&mut self, req: &Request) -> Option<IoVecs> {
        if !matches!(
            req.kind,
            Kind::Read | Kind::Write | Kind::WriteFlush | Kind::Barrier
        ) || req.segments.is_empty()
            || req.segments.len() > MAX_IOVECS
            || !self.options.persistent_grants
        {
            return None;
        }
        let mut iov = Vec::with_capacity(req.segments.len());
        for seg in &req.segments {
            let page = self.persistent_page(seg.gref)?;
            iov.push(libc::iovec {
                // SAFETY: offset + len <= 4096 for a checked segment: inside the mapped page.
                iov_base: unsafe { page.add(seg.offset()) }.cast(),
                iov_len: seg.len(),
            });
        }
        self.stats.persistent_hits += req.segments.len() as u64;
        self.stats.mapped_io += 1;
        Some(IoVecs(iov))
    }

    /// The page of a persistently mapped grant, mapping it now if there is room.
    fn persistent_page(&mut self, gref: u32) -> Option<*mut u8> {
        if !self.options.persistent_grants {
            return None;
        }
        if let Some(m) = self.persistent.get(&gref) {
            return Some(m.as_ptr());
        }
        if self.persistent.len() >= self.options.max_persistent_grants {
            return None;
        }
        // Writable: a persistent frontend grants every page so (blkif.h, note 8); a refused
        // map falls back to a copy, which checks the grant as usual.
        let m = self.grants.map(&[gref], true).ok()?;
        if m.len() < blkif::PAGE_SIZE {
            return None;
        }
        let p = m.as_ptr();
        self.persistent.insert(gref, m);
        Some(p)
    }

    /// The disk served.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // The kernel or the worker may still use the buffers of requests in flight: wait for
        // them. If that cannot be done, leak the buffers rather than free memory in use.
        if !self.engine.drain() {
            for f in self.slots.drain(..).flatten() {
                std::mem::forget(f.data);
            }
            std::mem::forget(std::mem::take(&mut self.persistent));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IoVecs;

    #[test]
    fn iovecs_advance_past_whole_and_partial_entries() {
        let mut bytes = [0u8; 64];
        let base = bytes.as_mut_ptr();
        let iov = |off: usize, len: usize| libc::iovec {
            // SAFETY: off + len <= 64 in every use below.
            iov_base: unsafe { base.add(off) }.cast(),
            iov_len: len,
        };
        let mut v = IoVecs(vec![iov(0, 8), iov(16, 8), iov(32, 16)]);
        v.advance(0);
        assert_eq!(v.0.len(), 3);
        v.advance(10);
        let got: Vec<(usize, usize)> =
            v.0.iter()
                .map(|e| (e.iov_base as usize - base as usize, e.iov_len))
                .collect();
        assert_eq!(got, [(18, 6), (32, 16)]);
        v.advance(6);
        assert_eq!(v.0.len(), 1);
        assert_eq!(
            (v.0[0].iov_base as usize - base as usize, v.0[0].iov_len),
            (32, 16)
        );
        v.advance(15);
        assert_eq!(
            (v.0[0].iov_base as usize - base as usize, v.0[0].iov_len),
            (47, 1)
        );
    }
}
