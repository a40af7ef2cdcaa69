//! In-memory stand-ins for a DomU, for tests and the fuzzer: [`FakeGuest`], guest memory with a
//! grant table model implementing [`GrantAccess`]; [`FakeRing`], the frontend's side of a shared
//! ring of any entry size in that memory (what a frontend does with `RING_PUSH_REQUESTS...`
//! and `RING_FINAL_CHECK_FOR_RESPONSES`), and [`FakeFrontend`], a blkif ring on it; and
//! [`FakePacketIo`], the host side of a vif in memory.
//!
//! The grant table refuses what Xen refuses (an unknown reference, a copy crossing its page, a
//! copy into a read-only grant) and can log every copy segment it was asked for
//! ([`FakeGuest::log_copies`]), so that a test or the fuzzer can check what a backend tried to
//! reach, not only what it got.

use std::alloc::{self, Layout};
use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use keel_core::xen::abi::gnttabop;
use keel_core::xen::blkif::{
    self, sring, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifResponse,
    SRING_HEADER_SIZE,
};

use crate::grant::{GrantAccess, GrantCopy, GrantMapping};
use crate::net::{PacketIo, VNET_HDR_LEN};

const PAGE: usize = blkif::PAGE_SIZE;

/// One entry of the fake grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The guest page granted.
    pub page: usize,
    /// `GTF_readonly`: the backend may only read it.
    pub readonly: bool,
}

/// One segment of a grant copy as the fake grant table saw it ([`FakeGuest::log_copies`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRecord {
    /// The reference the backend named.
    pub gref: u32,
    /// The page that reference granted at the time, if any.
    pub page: Option<usize>,
    /// Offset in the page.
    pub offset: u16,
    /// Bytes asked for.
    pub len: usize,
    /// Into the guest (`true`) or out of it.
    pub to_guest: bool,
    /// The status the segment got: 0, or the `GNTST_*` it was refused with.
    pub status: i16,
}

#[derive(Default)]
struct State {
    grants: HashMap<u32, Grant>,
    /// References mapped, with how many mappings hold each.
    mapped: HashMap<u32, usize>,
    copied_segments: u64,
    map_calls: u64,
    fail_copies: bool,
    /// Every copy segment since logging was turned on, if it is.
    copy_log: Option<Vec<CopyRecord>>,
}

/// Guest memory: page-aligned, only accessed through raw pointers.
///
/// # Invariants
///
/// `base` is an allocation of `pages * 4096` bytes with [`Inner::layout`], live until drop.
struct Inner {
    base: *mut u8,
    pages: usize,
    state: Mutex<State>,
}

// SAFETY: the memory behind `base` is plain bytes reached only through raw-pointer copies and
// atomics (like a DomU's memory shared with Dom0), and the grant table is behind a Mutex.
unsafe impl Send for Inner {}
// SAFETY: as for Send: no `&` access to the bytes is ever handed out.
unsafe impl Sync for Inner {}

impl Inner {
    fn layout(pages: usize) -> Layout {
        Layout::from_size_align(pages.max(1) * PAGE, PAGE).expect("guest memory layout")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed` with this layout (type invariant); every
        // mapping holds an `Arc<Inner>`, so none outlives this.
        unsafe { alloc::dealloc(self.base, Self::layout(self.pages)) };
    }
}

/// A DomU's memory and grant table, as Dom0's [`GrantAccess`] sees them. Cloning shares it.
#[derive(Clone)]
pub struct FakeGuest {
    inner: Arc<Inner>,
}

impl FakeGuest {
    /// `pages` zeroed pages and an empty grant table.
    pub fn new(pages: usize) -> FakeGuest {
        let layout = Inner::layout(pages);
        // SAFETY: the layout has a non-zero size.
        let base = unsafe { alloc::alloc_zeroed(layout) };
        if base.is_null() {
            alloc::handle_alloc_error(layout);
        }
        FakeGuest {
            inner: Arc::new(Inner {
                base,
                pages,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Pages of memory.
    pub fn pages(&self) -> usize {
        self.inner.pages
    }

    /// Grants `page` under `gref` (replacing an earlier grant of `gref`).
    pub fn grant(&self, gref: u32, page: usize, readonly: bool) {
        assert!(page < self.inner.pages, "page {page} outside guest memory");
        self.inner
            .state()
            .grants
            .insert(gref, Grant { page, readonly });
    }

    /// Ends the grant `gref`; refused (`false`) while Dom0 has it mapped, as Xen's
    /// `GTF_reading`/`GTF_writing` make the guest's end of access fail.
    pub fn revoke(&self, gref: u32) -> bool {
        let mut st = self.inner.state();
        if st.mapped.get(&gref).is_some_and(|&n| n > 0) {
            return false;
        }
        st.grants.remove(&gref);
        true
    }

    /// The grant `gref`, if any.
    pub fn grant_of(&self, gref: u32) -> Option<Grant> {
        self.inner.state().grants.get(&gref).copied()
    }

    /// References mapped now.
    pub fn mapped_refs(&self) -> usize {
        self.inner
            .state()
            .mapped
            .values()
            .filter(|&&n| n > 0)
            .count()
    }

    /// Segments copied so far (successful or not).
    pub fn copied_segments(&self) -> u64 {
        self.inner.state().copied_segments
    }

    /// `map` calls so far.
    pub fn map_calls(&self) -> u64 {
        self.inner.state().map_calls
    }

    /// Makes every later `copy` fail as a whole (the device went away).
    pub fn fail_copies(&self, fail: bool) {
        self.inner.state().fail_copies = fail;
    }

    /// Starts (with an empty log) or stops logging every segment of every later `copy`,
    /// refused or not. A `copy` failing as a whole ([`Self::fail_copies`]) touches nothing and
    /// logs nothing.
    pub fn log_copies(&self, on: bool) {
        self.inner.state().copy_log = on.then(Vec::new);
    }

    /// Takes the segments logged so far (in the order they were copied), leaving the log
    /// empty; nothing when logging is off.
    pub fn take_copy_log(&self) -> Vec<CopyRecord> {
        self.inner
            .state()
            .copy_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The first byte of `page`.
    pub fn page_ptr(&self, page: usize) -> *mut u8 {
        assert!(page < self.inner.pages, "page {page} outside guest memory");
        // SAFETY: inside the allocation (type invariant of Inner).
        unsafe { self.inner.base.add(page * PAGE) }
    }

    /// Writes `data` at `offset` of `page` (the guest's own store).
    pub fn write(&self, page: usize, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= PAGE, "write crosses the page");
        // SAFETY: inside the page (checked), which is inside the allocation; `data` is a
        // distinct Rust allocation.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), self.page_ptr(page).add(offset), data.len())
        };
    }

    /// Reads `len` bytes at `offset` of `page`.
    pub fn read(&self, page: usize, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= PAGE, "read crosses the page");
        let mut v = vec![0; len];
        // SAFETY: as in `write`.
        unsafe { ptr::copy_nonoverlapping(self.page_ptr(page).add(offset), v.as_mut_ptr(), len) };
        v
    }

    fn u32_at(&self, page: usize, offset: usize) -> &AtomicU32 {
        assert!(offset.is_multiple_of(4) && offset + 4 <= PAGE);
        // SAFETY: an aligned u32 inside the allocation, accessed only atomically (ring indexes)
        // by both sides; the reference lives no longer than `self`, which keeps it allocated.
        unsafe { AtomicU32::from_ptr(self.page_ptr(page).add(offset).cast()) }
    }
}

impl GrantAccess for FakeGuest {
    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> io::Result<()> {
        let mut st = self.inner.state();
        if st.fail_copies {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        for op in ops.iter_mut() {
            st.copied_segments += 1;
            let grant = st.grants.get(&op.gref).copied();
            op.status = match grant {
                None => gnttabop::ST_BAD_GNTREF,
                Some(_) if usize::from(op.offset) + op.buf.len() > PAGE => {
                    gnttabop::ST_BAD_COPY_ARG
                }
                Some(g) if g.readonly && op.to_guest => gnttabop::ST_PERMISSION_DENIED,
                Some(g) => {
                    // SAFETY: offset + len <= 4096 (checked) inside a page of the allocation;
                    // `buf` is a distinct Rust slice of exactly `len` bytes.
                    unsafe {
                        let at = self.page_ptr(g.page).add(usize::from(op.offset));
                        if op.to_guest {
                            ptr::copy_nonoverlapping(op.buf.as_ptr(), at, op.buf.len());
                        } else {
                            ptr::copy_nonoverlapping(at, op.buf.as_mut_ptr(), op.buf.len());
                        }
                    }
                    gnttabop::ST_OKAY
                }
            };
            if let Some(log) = st.copy_log.as_mut() {
                log.push(CopyRecord {
                    gref: op.gref,
                    page: grant.map(|g| g.page),
                    offset: op.offset,
                    len: op.buf.len(),
                    to_guest: op.to_guest,
                    status: op.status,
                });
            }
        }
        Ok(())
    }

    fn map(&self, refs: &[u32], writable: bool) -> io::Result<Box<dyn GrantMapping>> {
        let mut st = self.inner.state();
        st.map_calls += 1;
        let mut first = None;
        for (i, r) in refs.iter().enumerate() {
            let g = st
                .grants
                .get(r)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            if writable && g.readonly {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            let start = *first.get_or_insert(g.page);
            if g.page != start + i {
                // The fake maps guest-contiguous pages only.
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        let Some(start) = first else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        for r in refs {
            *st.mapped.entry(*r).or_default() += 1;
        }
        Ok(Box::new(FakeMapping {
            ptr: self.page_ptr(start),
            len: refs.len() * PAGE,
            refs: refs.to_vec(),
            guest: self.inner.clone(),
        }))
    }
}

/// A mapping of guest pages; the guest memory stays allocated while it lives.
struct FakeMapping {
    ptr: *mut u8,
    len: usize,
    refs: Vec<u32>,
    guest: Arc<Inner>,
}

// SAFETY: the pointer is into `guest`'s memory, which this value keeps alive, and which is
// only accessed through raw pointers.
unsafe impl Send for FakeMapping {}

impl GrantMapping for FakeMapping {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.len
    }
}

impl Drop for FakeMapping {
    fn drop(&mut self) {
        let mut st = self.guest.state();
        for r in &self.refs {
            if let Some(n) = st.mapped.get_mut(r) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// The frontend's side of a shared ring with entries of any size in a [`FakeGuest`], laid out
/// as `io/ring.h`'s `FRONT_RING_*` macros lay it out: what every fake frontend builds on.
pub struct FakeRing {
    guest: FakeGuest,
    first_page: usize,
    refs: Vec<u32>,
    entry_size: usize,
    entries: u32,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl FakeRing {
    /// A ring of `entry_size`-byte entries over `pages` guest pages from `first_page`, granted
    /// writable under `first_gref`.., initialized as `XEN_FRONT_RING_INIT` does.
    pub fn new(
        guest: &FakeGuest,
        first_page: usize,
        pages: usize,
        first_gref: u32,
        entry_size: usize,
    ) -> FakeRing {
        let refs: Vec<u32> = (0..pages as u32).map(|i| first_gref + i).collect();
        for (i, r) in refs.iter().enumerate() {
            guest.write(first_page + i, 0, &[0; PAGE]);
            guest.grant(*r, first_page + i, false);
        }
        let f = FakeRing {
            guest: guest.clone(),
            first_page,
            refs,
            entry_size,
            entries: blkif::ring_entries(pages * PAGE, entry_size) as u32,
            req_prod_pvt: 0,
            rsp_cons: 0,
        };
        f.shared_index(sring::REQ_EVENT).store(1, Ordering::Relaxed);
        f.shared_index(sring::RSP_EVENT).store(1, Ordering::Relaxed);
        f
    }

    /// The ring's grant references, in page order.
    pub fn ring_refs(&self) -> &[u32] {
        &self.refs
    }

    /// The ring's entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Requests queued and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Entries free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> u32 {
        self.entries - self.outstanding()
    }

    /// A shared index (see [`blkif::sring`]).
    pub fn shared_index(&self, offset: usize) -> &AtomicU32 {
        self.guest.u32_at(self.first_page, offset)
    }

    /// Guest page and offset of the entry of `idx`.
    fn entry_at(&self, idx: u32) -> (usize, usize) {
        let at = SRING_HEADER_SIZE + (idx & (self.entries - 1)) as usize * self.entry_size;
        (self.first_page + at / PAGE, at % PAGE)
    }

    fn write_entry(&self, idx: u32, bytes: &[u8]) {
        assert!(bytes.len() <= self.entry_size, "entry too long");
        let (page, off) = self.entry_at(idx);
        // An entry may straddle two ring pages.
        let first = bytes.len().min(PAGE - off);
        self.guest.write(page, off, &bytes[..first]);
        if first < bytes.len() {
            self.guest.write(page + 1, 0, &bytes[first..]);
        }
    }

    fn read_entry(&self, idx: u32, len: usize) -> Vec<u8> {
        let (page, off) = self.entry_at(idx);
        let first = len.min(PAGE - off);
        let mut v = self.guest.read(page, off, first);
        if first < len {
            v.extend(self.guest.read(page + 1, 0, len - first));
        }
        v
    }

    /// Queues raw entry bytes (at most an entry; not yet visible to the backend: see
    /// [`Self::publish`]).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.write_entry(self.req_prod_pvt, bytes);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the queued requests; `true` when the
    /// backend asked to be notified.
    pub fn publish(&mut self) -> bool {
        let old = self.shared_index(sring::REQ_PROD).load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        self.shared_index(sring::REQ_PROD)
            .store(new, Ordering::Release);
        std::sync::atomic::fence(Ordering::SeqCst);
        let event = self.shared_index(sring::REQ_EVENT).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Sets `req_prod` to anything (a hostile frontend).
    pub fn set_req_prod(&mut self, value: u32) {
        self.shared_index(sring::REQ_PROD)
            .store(value, Ordering::Release);
    }

    /// Takes the published responses (the first `len` bytes of each entry) and sets
    /// `rsp_event` as `RING_FINAL_CHECK_FOR_RESPONSES` does (notify me at the next one).
    pub fn take_raw_responses(&mut self, len: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let prod = self.shared_index(sring::RSP_PROD).load(Ordering::Acquire);
            while self.rsp_cons != prod {
                out.push(self.read_entry(self.rsp_cons, len));
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
            }
            self.shared_index(sring::RSP_EVENT)
                .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.shared_index(sring::RSP_PROD).load(Ordering::Acquire) == self.rsp_cons {
                return out;
            }
        }
    }
}

/// The frontend's side of a blkif ring in a [`FakeGuest`], laid out as blkfront lays it out.
pub struct FakeFrontend {
    ring: FakeRing,
}

impl FakeFrontend {
    /// A ring over `pages` guest pages from `first_page`, granted writable under
    /// `first_gref`.., initialized as `XEN_FRONT_RING_INIT` does.
    pub fn new(
        guest: &FakeGuest,
        first_page: usize,
        pages: usize,
        first_gref: u32,
    ) -> FakeFrontend {
        FakeFrontend {
            ring: FakeRing::new(guest, first_page, pages, first_gref, blkif::ENTRY_SIZE),
        }
    }

    /// The ring's grant references, in page order.
    pub fn ring_refs(&self) -> &[u32] {
        self.ring.ring_refs()
    }

    /// The ring's entries.
    pub fn entries(&self) -> u32 {
        self.ring.entries()
    }

    /// Requests queued and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.ring.outstanding()
    }

    /// A shared index (see [`blkif::sring`]).
    pub fn shared_index(&self, offset: usize) -> &AtomicU32 {
        self.ring.shared_index(offset)
    }

    /// Queues raw entry bytes (not yet visible to the backend: see [`Self::publish`]).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.ring.queue_raw(bytes);
    }

    /// Queues a read/write/flush request.
    pub fn queue(&mut self, r: &BlkifRequest) {
        self.queue_raw(&r.to_bytes());
    }

    /// Queues a discard request.
    pub fn queue_discard(&mut self, r: &BlkifRequestDiscard) {
        self.queue_raw(&r.to_bytes());
    }

    /// Queues an indirect request.
    pub fn queue_indirect(&mut self, r: &BlkifRequestIndirect) {
        self.queue_raw(&r.to_bytes());
    }

    /// `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`: publishes the queued requests; `true` when the
    /// backend asked to be notified.
    pub fn publish(&mut self) -> bool {
        self.ring.publish()
    }

    /// Sets `req_prod` to anything (a hostile frontend).
    pub fn set_req_prod(&mut self, value: u32) {
        self.ring.set_req_prod(value);
    }

    /// Takes the published responses and sets `rsp_event` as
    /// `RING_FINAL_CHECK_FOR_RESPONSES` does (notify me at the next one).
    pub fn take_responses(&mut self) -> Vec<BlkifResponse> {
        self.ring
            .take_raw_responses(BlkifResponse::SIZE)
            .iter()
            .map(|b| BlkifResponse::from_bytes(b).expect("16 bytes"))
            .collect()
    }
}

/// Which frames [`FakePacketIo`] refuses to send ([`FakePacketIo::refuse_sends`]): `true`
/// for a frame to refuse.
pub type SendFilter = Box<dyn Fn(&[u8]) -> bool + Send>;

#[derive(Default)]
struct FakeIoState {
    inbound: VecDeque<Vec<u8>>,
    sent: Vec<([u8; VNET_HDR_LEN], Vec<u8>)>,
    send_error: Option<io::ErrorKind>,
    refuse: Option<SendFilter>,
}

/// The host side of a vif in memory, as a TAP device with `IFF_VNET_HDR` would be: frames
/// injected with [`Self::inject`] are what [`PacketIo::recv`] returns (vnet header first),
/// what the backend sends is kept for [`Self::take_sent`]. [`PacketIo::raw_fd`] is an eventfd
/// that is readable exactly while frames wait, as a TAP fd polls.
pub struct FakePacketIo {
    state: Mutex<FakeIoState>,
    event: OwnedFd,
}

impl Default for FakePacketIo {
    fn default() -> FakePacketIo {
        FakePacketIo::new()
    }
}

impl FakePacketIo {
    /// No frame waiting, nothing sent.
    pub fn new() -> FakePacketIo {
        // SAFETY: plain eventfd creation; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", io::Error::last_os_error());
        FakePacketIo {
            state: Mutex::new(FakeIoState::default()),
            // SAFETY: just created, owned by nobody else.
            event: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeIoState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame from the host, with its vnet header.
    pub fn inject(&self, vnet_hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) {
        let mut st = self.state();
        let mut v = vnet_hdr.to_vec();
        v.extend_from_slice(frame);
        st.inbound.push_back(v);
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live local u64 to our eventfd.
        unsafe { libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Frames from the host not yet received.
    pub fn waiting(&self) -> usize {
        self.state().inbound.len()
    }

    /// Takes what was sent so far: (vnet header, frame) pairs, in order.
    pub fn take_sent(&self) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
        std::mem::take(&mut self.state().sent)
    }

    /// Makes every later `send` fail with `kind` (`WouldBlock`: a full TAP queue), or succeed
    /// again with `None`.
    pub fn fail_sends(&self, kind: Option<io::ErrorKind>) {
        self.state().send_error = kind;
    }

    /// Makes every later `send` of a frame for which `refuse` is `true` fail with
    /// `WouldBlock` (the TAP queue full just then), or no frame with `None`; what is refused
    /// is decided by the frame's bytes alone, so a test knows it beforehand.
    pub fn refuse_sends(&self, refuse: Option<SendFilter>) {
        self.state().refuse = refuse;
    }
}

impl PacketIo for FakePacketIo {
    fn send(&self, vnet_hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        if let Some(kind) = st.send_error {
            return Err(io::Error::from(kind));
        }
        if st.refuse.as_ref().is_some_and(|refuse| refuse(frame)) {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        st.sent.push((*vnet_hdr, frame.to_vec()));
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut st = self.state();
        let Some(f) = st.inbound.pop_front() else {
            return Ok(None);
        };
        if st.inbound.is_empty() {
            let mut v = 0u64;
            // SAFETY: reads 8 bytes into a live local u64 from our non-blocking eventfd.
            unsafe { libc::read(self.event.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
        // A TAP read into a short buffer truncates the frame.
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(Some(n))
    }

    fn raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

/// A temporary file of `sectors` 512-byte sectors, already unlinked (for tests).
pub fn temp_file(sectors: u64) -> File {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn op(gref: u32, offset: u16, to_guest: bool, buf: &mut [u8]) -> GrantCopy<'_> {
        GrantCopy {
            gref,
            offset,
            to_guest,
            buf,
            status: 0,
        }
    }

    #[test]
    fn the_copy_log_has_every_segment_refused_or_not() {
        let guest = FakeGuest::new(2);
        guest.grant(7, 1, false);
        guest.grant(8, 0, true);
        let (mut a, mut b, mut c, mut d) = ([0u8; 16], [0u8; 16], [0u8; 16], [1u8; 8]);
        let mut ops = [
            op(7, 4080, false, &mut a),
            op(7, 4081, false, &mut b),
            op(9, 0, false, &mut c),
            op(8, 0, true, &mut d),
        ];
        guest.copy(&mut ops).unwrap();
        assert!(guest.take_copy_log().is_empty(), "not logging yet");
        guest.log_copies(true);
        guest.copy(&mut ops).unwrap();
        let log: Vec<_> = guest
            .take_copy_log()
            .iter()
            .map(|c| (c.gref, c.page, c.offset, c.len, c.to_guest, c.status))
            .collect();
        assert_eq!(
            log,
            [
                (7, Some(1), 4080, 16, false, gnttabop::ST_OKAY),
                (7, Some(1), 4081, 16, false, gnttabop::ST_BAD_COPY_ARG),
                (9, None, 0, 16, false, gnttabop::ST_BAD_GNTREF),
                (8, Some(0), 0, 8, true, gnttabop::ST_PERMISSION_DENIED),
            ]
        );
        assert!(guest.take_copy_log().is_empty(), "taken");
        guest.fail_copies(true);
        assert!(guest.copy(&mut ops).is_err());
        assert!(
            guest.take_copy_log().is_empty(),
            "a failed copy touches nothing"
        );
        guest.fail_copies(false);
        guest.log_copies(false);
        guest.copy(&mut ops).unwrap();
        assert!(guest.take_copy_log().is_empty());
    }

    #[test]
    fn refused_sends_fail_and_are_not_kept() {
        let io = FakePacketIo::new();
        let hdr = [0u8; VNET_HDR_LEN];
        io.refuse_sends(Some(Box::new(|f: &[u8]| f.len() == 3)));
        let e = io.send(&hdr, b"abc").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        io.send(&hdr, b"abcd").unwrap();
        io.refuse_sends(None);
        io.send(&hdr, b"abc").unwrap();
        let sent: Vec<_> = io.take_sent().into_iter().map(|(_, f)| f).collect();
        assert_eq!(sent, [b"abcd".to_vec(), b"abc".to_vec()]);
    }
}
