//! One queue of a vif: its transmit ring, its receive ring, and the packets between them and
//! the host.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keel_core::xen::blkif::PAGE_SIZE;
use keel_core::xen::netif::{
    gso_type, rsp, rxf, txf, NetifExtraInfo, NetifRxRequest, NetifRxResponse, NetifTxResponse,
    RX_ENTRY_SIZE, TX_ENTRY_SIZE, XEN_NETIF_MAX_TX_SIZE,
};

use super::packet::{self, IPPROTO_TCP, L3};
use super::rx::{self, RxPlan};
use super::shaper::Shaper;
use super::tx::{Fed, TxAssembler, TxPacket};
use super::{vnet, NetError, NetOptions, NetStats, PacketIo, VnetHdr, VNET_HDR_LEN};
use crate::grant::{GrantAccess, GrantCopy};
use crate::ring::{BackRing, RingBroken};

/// Passes of [`NetQueue::process_tx`] or [`NetQueue::process_rx`] before they let the caller
/// look at its other fds.
const MAX_PASSES: usize = 16;

/// Transmitted packets copied with one grant copy, at most.
const TX_BATCH_PACKETS: usize = 64;
/// A transmit batch is closed once it holds this many bytes.
const TX_BATCH_BYTES: usize = 256 * 1024;
/// The transmit buffer: a full batch and one more packet of the largest size.
const TX_BUF: usize = TX_BATCH_BYTES + XEN_NETIF_MAX_TX_SIZE;

/// Received frames copied with one grant copy, at most.
const RX_BATCH_FRAMES: usize = 64;
/// A receive batch is closed once it holds this many bytes.
const RX_BATCH_BYTES: usize = 256 * 1024;
/// The largest frame taken from the host: a 64 KiB GSO frame with its headers (an IPv6
/// payload length of 65535 does not count the 40-byte header) and VLAN tags.
const MAX_RX_FRAME: usize = 65536 + 128;
/// One read from the host: a header, the largest frame, and one byte to see truncation.
const RECV_LEN: usize = VNET_HDR_LEN + MAX_RX_FRAME + 1;
/// The receive buffer: a full batch and one more read.
const RX_BUF: usize = RX_BATCH_BYTES + RECV_LEN;
/// Frames dropped in a row before [`NetQueue::process_rx`] returns.
const MAX_RX_DROPS: usize = 64;
/// How often [`NetQueue::run`] looks for receive requests while a frame waits for them and
/// the frontend does not notify them (netback's 30 ms drain timeout, shorter).
const RX_POLL_MS: i32 = 10;

// A queue runs on a thread of its own.
const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<NetQueue>();
};

/// What becomes of a transmitted packet in a batch.
#[derive(Clone, Copy, Debug)]
enum TxVerdict {
    /// Malformed: answered `NETIF_RSP_ERROR`.
    Error,
    /// A multicast-control message (not offered): answered `NETIF_RSP_OKAY`, not sent.
    Control,
    /// To copy (into the transmit buffer from `start`; `first_len` bytes from the first
    /// slot) and send.
    Send { start: usize, first_len: usize },
}

#[derive(Debug)]
struct TxItem {
    pkt: TxPacket,
    verdict: TxVerdict,
}

/// A receive request taken off the ring.
#[derive(Clone, Copy, Debug)]
struct RxSlot {
    id: u16,
    gref: u32,
}

/// A frame from the host in the receive buffer.
#[derive(Clone, Copy, Debug)]
struct RxFrame {
    /// Where its bytes are in the receive buffer.
    start: usize,
    len: usize,
    plan: RxPlan,
    /// Its first slot in `rx_slots` (once placed).
    first_slot: usize,
}

impl RxFrame {
    /// The slot of data slot `i`: the extra slot, if any, follows the first data slot.
    fn data_slot(&self, i: usize) -> usize {
        self.first_slot + i + usize::from(self.plan.gso.is_some() && i > 0)
    }
}

/// Why [`NetQueue::take_rx`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxStop {
    /// The host has no frame waiting.
    Empty,
    /// A frame waits for receive requests.
    Blocked,
    /// The batch is full.
    Full,
}

/// One queue of a vif (a transmit ring and a receive ring, one event channel): see the module
/// documentation of [`crate::net`].
pub struct NetQueue {
    tx: BackRing,
    rx: BackRing,
    grants: Arc<dyn GrantAccess>,
    options: NetOptions,
    stats: NetStats,
    // Transmit.
    tx_entry: [u8; TX_ENTRY_SIZE],
    tx_asm: TxAssembler,
    tx_batch: Vec<TxItem>,
    tx_buf: Vec<u8>,
    /// Bytes of `tx_buf` given to the packets of the batch.
    tx_used: usize,
    // Receive.
    rx_entry: [u8; RX_ENTRY_SIZE],
    rx_buf: Vec<u8>,
    /// Bytes of `rx_buf` holding frames (placed, and the pending one).
    rx_used: usize,
    /// Frames placed on the ring (their requests taken), not yet copied and answered.
    rx_frames: Vec<RxFrame>,
    /// Receive requests taken, in ring order: the first `rx_assigned` belong to
    /// `rx_frames`, the others wait for a frame.
    rx_slots: Vec<RxSlot>,
    rx_assigned: usize,
    /// A frame received and waiting for enough receive requests.
    rx_pending: Option<RxFrame>,
    // Rate limit.
    shaper: Option<Arc<Mutex<Shaper>>>,
    /// A transmitted packet waiting for credit, and when to ask again.
    tx_held: Option<(TxPacket, Instant)>,
}

impl NetQueue {
    /// A queue serving `tx` (a ring of [`TX_ENTRY_SIZE`]-byte entries) and `rx` (of
    /// [`RX_ENTRY_SIZE`]-byte entries) for a frontend that negotiated `options`, moving data
    /// with `grants`.
    pub fn new(
        tx: BackRing,
        rx: BackRing,
        grants: Arc<dyn GrantAccess>,
        options: NetOptions,
    ) -> NetQueue {
        NetQueue {
            tx,
            rx,
            grants,
            options,
            stats: NetStats::default(),
            tx_entry: [0; TX_ENTRY_SIZE],
            tx_asm: TxAssembler::default(),
            tx_batch: Vec::with_capacity(TX_BATCH_PACKETS),
            tx_buf: vec![0; TX_BUF],
            tx_used: 0,
            rx_entry: [0; RX_ENTRY_SIZE],
            rx_buf: vec![0; RX_BUF],
            rx_used: 0,
            rx_frames: Vec::with_capacity(RX_BATCH_FRAMES),
            rx_slots: Vec::new(),
            rx_assigned: 0,
            rx_pending: None,
            shaper: None,
            tx_held: None,
        }
    }

    /// Limits what the frontend transmits to what `shaper` (shared by the vif's queues)
    /// admits (`rate=`).
    pub fn set_shaper(&mut self, shaper: Arc<Mutex<Shaper>>) {
        self.shaper = Some(shaper);
    }

    /// Whether a transmitted packet waits for credit, and until when.
    pub fn tx_throttled(&self) -> Option<Instant> {
        self.tx_held.as_ref().map(|(_, at)| *at)
    }

    /// Whether the rate limit lets `pkt` go now; else records when to ask again.
    fn admit(&self, pkt: &TxPacket) -> Result<(), Instant> {
        let Some(shaper) = &self.shaper else {
            return Ok(());
        };
        let mut s = shaper.lock().unwrap_or_else(|p| p.into_inner());
        s.admit(pkt.total_len() as u64, Instant::now())
    }

    /// Maps the two one-page rings the frontend granted (`tx-ring-ref`, `rx-ring-ref`, as
    /// [`super::xenstore::parse_frontend_keys`] read them) writable and builds a queue on them.
    pub fn attach(
        grants: Arc<dyn GrantAccess>,
        tx_ring_ref: u32,
        rx_ring_ref: u32,
        options: NetOptions,
    ) -> io::Result<NetQueue> {
        let bad = |e| io::Error::new(io::ErrorKind::InvalidData, e);
        let tx = BackRing::new(grants.map(&[tx_ring_ref], true)?, TX_ENTRY_SIZE).map_err(bad)?;
        let rx = BackRing::new(grants.map(&[rx_ring_ref], true)?, RX_ENTRY_SIZE).map_err(bad)?;
        Ok(NetQueue::new(tx, rx, grants, options))
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// What the frontend negotiated.
    pub fn options(&self) -> &NetOptions {
        &self.options
    }

    /// Whether a frame from the host waits for the frontend to post receive requests (the
    /// host's fd is then not worth polling).
    pub fn rx_waiting(&self) -> bool {
        self.rx_pending.is_some()
    }

    /// A queue with a broken ring serves nothing more, on either ring (not even with
    /// requests taken before the break).
    fn check_rings(&self) -> Result<(), NetError> {
        match self.tx.broken().or(self.rx.broken()) {
            Some(b) => Err(b.into()),
            None => Ok(()),
        }
    }

    fn publish(ring: &mut BackRing, stats: &mut NetStats, notify: &dyn Fn()) {
        if ring.push_responses() {
            stats.notifications += 1;
            notify();
        }
    }

    // -----------------------------------------------------------------------------------------
    // Transmit.

    /// Serves the transmit ring: takes every request the frontend published, assembles,
    /// checks, copies (one grant copy per batch) and sends the packets through `io`, answers
    /// every slot, and calls `notify` when the frontend asked to be told. A packet whose slots
    /// are not all published waits for them. Returns `true` when work may remain that
    /// deserves another call without waiting; an error when the frontend broke the ring.
    pub fn process_tx(&mut self, io: &dyn PacketIo, notify: &dyn Fn()) -> Result<bool, NetError> {
        self.check_rings()?;
        for _ in 0..MAX_PASSES {
            let full = self.take_tx(io)?;
            self.flush_tx(io);
            Self::publish(&mut self.tx, &mut self.stats, notify);
            // Held for credit: nothing more until then (run waits for it).
            if self.tx_held.is_some() {
                return Ok(false);
            }
            if !full && !self.tx.final_check_for_requests()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Takes transmit slots until the ring is empty or a packet waits for credit (`false`)
    /// or the batch is full (`true`).
    fn take_tx(&mut self, io: &dyn PacketIo) -> Result<bool, RingBroken> {
        if let Some((pkt, _)) = self.tx_held.take() {
            match self.admit(&pkt) {
                Ok(()) => self.queue_tx(pkt),
                Err(at) => {
                    self.tx_held = Some((pkt, at));
                    return Ok(false);
                }
            }
        }
        loop {
            if self.tx_batch.len() >= TX_BATCH_PACKETS || self.tx_used >= TX_BATCH_BYTES {
                return Ok(true);
            }
            if !self.tx.next_request(&mut self.tx_entry)? {
                return Ok(false);
            }
            match self.tx_asm.feed(&self.tx_entry) {
                Fed::Pending => {}
                Fed::Complete(pkt) => match self.admit(&pkt) {
                    Ok(()) => self.queue_tx(pkt),
                    Err(at) => {
                        self.tx_held = Some((pkt, at));
                        return Ok(false);
                    }
                },
                Fed::Overlong(pkt) => {
                    // Answered now (after the packets before it), so that its chain cannot
                    // fill the ring unanswered.
                    self.flush_tx(io);
                    self.stats.tx_errors += 1;
                    self.answer_tx(&pkt, rsp::ERROR);
                }
                Fed::SkipExtra => self.put_tx(0, rsp::NULL),
                Fed::SkipData(id) => self.put_tx(id, rsp::ERROR),
            }
        }
    }

    fn queue_tx(&mut self, pkt: TxPacket) {
        let verdict = match pkt.check() {
            Err(()) => TxVerdict::Error,
            Ok(_) if pkt.mcast => TxVerdict::Control,
            Ok(first_len) => {
                // tx_used < TX_BATCH_BYTES before this packet's first slot was taken, and a
                // packet is at most 64 KiB: it fits TX_BUF.
                let start = self.tx_used;
                self.tx_used += pkt.total_len();
                TxVerdict::Send { start, first_len }
            }
        };
        self.tx_batch.push(TxItem { pkt, verdict });
    }

    fn put_tx(&mut self, id: u16, status: i16) {
        self.tx
            .put_response(&NetifTxResponse { id, status }.to_bytes());
    }

    /// Answers every slot of `pkt`: its requests with `status`, its extra slots `NULL`.
    fn answer_tx(&mut self, pkt: &TxPacket, status: i16) {
        self.put_tx(pkt.first.id, status);
        for _ in 0..pkt.extras {
            self.put_tx(0, rsp::NULL);
        }
        for c in &pkt.conts {
            self.put_tx(c.id, status);
        }
    }

    /// Copies the batch's packets out of the frontend's pages (one grant copy), sends them
    /// and answers them.
    fn flush_tx(&mut self, io: &dyn PacketIo) {
        if self.tx_batch.is_empty() {
            return;
        }
        let mut batch = std::mem::take(&mut self.tx_batch);
        let copied = self.copy_tx(&batch);
        for (item, ok) in batch.drain(..).zip(copied) {
            let status = match item.verdict {
                TxVerdict::Error => {
                    self.stats.tx_errors += 1;
                    rsp::ERROR
                }
                TxVerdict::Control => rsp::OKAY,
                TxVerdict::Send { .. } if !ok => {
                    self.stats.tx_errors += 1;
                    rsp::ERROR
                }
                TxVerdict::Send { start, .. } => {
                    let len = item.pkt.total_len();
                    let frame = &mut self.tx_buf[start..start + len];
                    let sent = tx_header(&item.pkt, frame)
                        .is_some_and(|h| io.send(&h.to_bytes(), frame).is_ok());
                    if sent {
                        self.stats.tx_packets += 1;
                        self.stats.tx_bytes += len as u64;
                        rsp::OKAY
                    } else {
                        self.stats.tx_dropped += 1;
                        rsp::DROPPED
                    }
                }
            };
            self.answer_tx(&item.pkt, status);
        }
        self.tx_batch = batch;
        self.tx_used = 0;
    }

    /// The grant copy of a batch: for each item, whether all its data was copied.
    fn copy_tx(&mut self, batch: &[TxItem]) -> Vec<bool> {
        let mut ops: Vec<GrantCopy<'_>> = Vec::new();
        let mut ranges = Vec::with_capacity(batch.len());
        let mut rest: &mut [u8] = &mut self.tx_buf[..self.tx_used];
        for item in batch {
            let TxVerdict::Send { first_len, .. } = item.verdict else {
                ranges.push(None);
                continue;
            };
            let (buf, tail) = std::mem::take(&mut rest).split_at_mut(item.pkt.total_len());
            rest = tail;
            let from = ops.len();
            let (head, mut more) = buf.split_at_mut(first_len);
            push_copy(&mut ops, item.pkt.first.gref, item.pkt.first.offset, head);
            for c in &item.pkt.conts {
                let (b, t) = std::mem::take(&mut more).split_at_mut(usize::from(c.size));
                more = t;
                push_copy(&mut ops, c.gref, c.offset, b);
            }
            ranges.push(Some(from..ops.len()));
        }
        let copied = ops.is_empty() || {
            self.stats.grant_copy_calls += 1;
            self.grants.copy(&mut ops).is_ok()
        };
        ranges
            .into_iter()
            .map(|r| r.is_some_and(|r| copied && ops[r].iter().all(|o| o.status == 0)))
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Receive.

    /// Serves the receive ring: while the frontend has posted receive requests, takes frames
    /// from `io` and copies each into as many of the posted pages as it needs (one grant copy
    /// per batch), answers the requests, and calls `notify` when the frontend asked to be
    /// told. A frame that does not fit the requests posted waits for more (the frontend is
    /// asked to notify when it posts them). Returns `true` when work may remain that deserves
    /// another call without waiting; an error when the frontend broke the ring or `io` failed.
    pub fn process_rx(&mut self, io: &dyn PacketIo, notify: &dyn Fn()) -> Result<bool, NetError> {
        self.check_rings()?;
        for _ in 0..MAX_PASSES {
            let stop = self.take_rx(io);
            if !matches!(stop, Err(NetError::Ring(_))) {
                self.flush_rx();
                Self::publish(&mut self.rx, &mut self.stats, notify);
            }
            match stop? {
                RxStop::Empty => return Ok(false),
                RxStop::Full => {}
                RxStop::Blocked => {
                    if !self.rx.final_check_for_requests()? {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Receives frames and takes receive requests for them until the host has none, a frame
    /// does not fit the requests posted, or the batch is full.
    fn take_rx(&mut self, io: &dyn PacketIo) -> Result<RxStop, NetError> {
        loop {
            let mut frame = match self.rx_pending.take() {
                Some(f) => f,
                None => {
                    if self.rx_frames.len() >= RX_BATCH_FRAMES || self.rx_used >= RX_BATCH_BYTES {
                        return Ok(RxStop::Full);
                    }
                    match self.recv_frame(io)? {
                        Some(f) => f,
                        None => return Ok(RxStop::Empty),
                    }
                }
            };
            let need = frame.plan.slots();
            while self.rx_slots.len() - self.rx_assigned < need {
                if !self.rx.next_request(&mut self.rx_entry)? {
                    self.rx_pending = Some(frame);
                    return Ok(RxStop::Blocked);
                }
                let r = NetifRxRequest::from_bytes(&self.rx_entry).unwrap_or_default();
                self.rx_slots.push(RxSlot {
                    id: r.id,
                    gref: r.gref,
                });
            }
            frame.first_slot = self.rx_assigned;
            self.rx_assigned += need;
            self.rx_frames.push(frame);
        }
    }

    /// Reads one frame from the host into the receive buffer and plans it; drops (and counts)
    /// frames that cannot go to this frontend.
    fn recv_frame(&mut self, io: &dyn PacketIo) -> Result<Option<RxFrame>, NetError> {
        for _ in 0..MAX_RX_DROPS {
            let start = self.rx_used;
            let buf = &mut self.rx_buf[start..start + RECV_LEN];
            let n = match io.recv(buf) {
                Ok(Some(n)) => n.min(RECV_LEN),
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            // Nothing after the header, or a frame too long for the buffer (truncated).
            if n <= VNET_HDR_LEN || n == RECV_LEN {
                self.stats.rx_dropped += 1;
                continue;
            }
            let (head, frame) = buf[..n].split_at_mut(VNET_HDR_LEN);
            let hdr = VnetHdr::from_bytes(&(*head).try_into().expect("header length"));
            let plan = rx::plan(&hdr, frame, &self.options).filter(|p| {
                p.sw_csum
                    .is_none_or(|(s, o)| packet::complete_checksum(frame, s, o))
            });
            let Some(plan) = plan else {
                self.stats.rx_dropped += 1;
                continue;
            };
            self.rx_used = start + n;
            return Ok(Some(RxFrame {
                start: start + VNET_HDR_LEN,
                len: n - VNET_HDR_LEN,
                plan,
                first_slot: 0,
            }));
        }
        Ok(None)
    }

    /// Copies the placed frames into the frontend's pages (one grant copy) and answers their
    /// requests in ring order; the pending frame, if any, moves to the front of the buffer.
    fn flush_rx(&mut self) {
        if !self.rx_frames.is_empty() {
            let ok = self.copy_rx();
            let mut frames = std::mem::take(&mut self.rx_frames);
            for f in &frames {
                let mut all_ok = true;
                for i in 0..f.plan.data_slots {
                    let slot = f.data_slot(i);
                    let len = (f.len - i * PAGE_SIZE).min(PAGE_SIZE);
                    let mut flags = if i + 1 < f.plan.data_slots {
                        rxf::MORE_DATA
                    } else {
                        0
                    };
                    if i == 0 {
                        flags |= f.plan.flags;
                        if f.plan.gso.is_some() {
                            flags |= rxf::EXTRA_INFO;
                        }
                    }
                    let status = if ok[slot] {
                        len as i16
                    } else {
                        all_ok = false;
                        rsp::ERROR
                    };
                    let r = NetifRxResponse {
                        id: self.rx_slots[slot].id,
                        offset: 0,
                        flags,
                        status,
                    };
                    self.rx.put_response(&r.to_bytes());
                    if i == 0 {
                        if let Some(g) = f.plan.gso {
                            self.rx
                                .put_response(&NetifExtraInfo::new_gso(g, 0).to_bytes());
                        }
                    }
                }
                if all_ok {
                    self.stats.rx_packets += 1;
                    self.stats.rx_bytes += f.len as u64;
                } else {
                    self.stats.rx_errors += 1;
                }
            }
            frames.clear();
            self.rx_frames = frames;
            self.rx_slots.drain(..self.rx_assigned);
            self.rx_assigned = 0;
        }
        match &mut self.rx_pending {
            Some(p) => {
                self.rx_buf.copy_within(p.start..p.start + p.len, 0);
                p.start = 0;
                self.rx_used = p.len;
            }
            None => self.rx_used = 0,
        }
    }

    /// The grant copy of the placed frames: for each assigned slot, whether its data was
    /// copied (extra slots: `true`).
    fn copy_rx(&mut self) -> Vec<bool> {
        let mut ok = vec![true; self.rx_assigned];
        let mut ops: Vec<GrantCopy<'_>> = Vec::new();
        let mut slots = Vec::new();
        let mut rest: &mut [u8] = &mut self.rx_buf[..];
        let mut pos = 0;
        for f in &self.rx_frames {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(f.start - pos);
            let (data, tail) = tail.split_at_mut(f.len);
            rest = tail;
            pos = f.start + f.len;
            for (i, chunk) in data.chunks_mut(PAGE_SIZE).enumerate() {
                let slot = f.data_slot(i);
                ops.push(GrantCopy {
                    gref: self.rx_slots[slot].gref,
                    offset: 0,
                    to_guest: true,
                    buf: chunk,
                    status: 0,
                });
                slots.push(slot);
            }
        }
        if !ops.is_empty() {
            self.stats.grant_copy_calls += 1;
            let copied = self.grants.copy(&mut ops).is_ok();
            for (op, &slot) in ops.iter().zip(&slots) {
                ok[slot] = copied && op.status == 0;
            }
        }
        ok
    }

    // -----------------------------------------------------------------------------------------
    // The loop.

    /// Serves the queue until `stop` becomes readable: waits (poll) on `kick` (an eventfd the
    /// frontend's event channel(s) signal, for both rings; read to clear), on `io`'s fd (frames
    /// from the host; not polled while a frame waits for receive requests) and on `stop`, and
    /// calls `notify_tx` and `notify_rx` to signal the frontend's event channel for responses
    /// on the transmit and receive ring (the same channel unless the frontend split them).
    /// Returns an error when the frontend broke a ring (the queue is then abandoned) or a
    /// system call failed.
    pub fn run(
        &mut self,
        kick: BorrowedFd<'_>,
        io: &dyn PacketIo,
        stop: BorrowedFd<'_>,
        notify_tx: impl Fn(),
        notify_rx: impl Fn(),
    ) -> Result<(), NetError> {
        loop {
            let more_tx = self.process_tx(io, &notify_tx)?;
            let more_rx = self.process_rx(io, &notify_rx)?;
            let waiting = self.rx_waiting();
            let mut timeout = if more_tx || more_rx {
                0
            } else if waiting && !self.options.rx_notify {
                RX_POLL_MS
            } else {
                -1
            };
            if let Some(at) = self.tx_throttled() {
                // Rounded up: woken before the credit is there would only spin.
                let wait = at.saturating_duration_since(Instant::now());
                let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
                timeout = if timeout < 0 { ms } else { timeout.min(ms) };
            }
            let mut fds = [
                libc::pollfd {
                    fd: kick.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    // A negative fd is ignored by poll.
                    fd: if waiting { -1 } else { io.raw_fd() },
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
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if fds[2].revents != 0 {
                return Ok(());
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("the kick fd failed").into());
            }
            if fds[1].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(io::Error::other("the packet device fd failed").into());
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.stats.kicks += clear_eventfd(kick.as_raw_fd());
            }
        }
    }
}

/// Adds the grant copy of `buf` from (`gref`, `offset`) to `ops`, unless it is empty.
fn push_copy<'a>(ops: &mut Vec<GrantCopy<'a>>, gref: u32, offset: u16, buf: &'a mut [u8]) {
    if !buf.is_empty() {
        ops.push(GrantCopy {
            gref,
            offset,
            to_guest: false,
            buf,
            status: 0,
        });
    }
}

/// The virtio-net header of a transmitted packet (whose bytes may be fixed up: the partial
/// checksum of a GSO packet that came without a blank one); `None` when the offload it asks
/// for cannot be set up (headers not found, GSO of a kind the packet is not).
fn tx_header(pkt: &TxPacket, frame: &mut [u8]) -> Option<VnetHdr> {
    let flags = pkt.first.flags;
    let blank = flags & txf::CSUM_BLANK != 0;
    if pkt.gso.is_none() && !blank {
        let valid = flags & txf::DATA_VALIDATED != 0;
        return Some(VnetHdr {
            flags: if valid { vnet::F_DATA_VALID } else { 0 },
            ..VnetHdr::default()
        });
    }
    let t = packet::transport(frame)?;
    let mut h = VnetHdr {
        flags: vnet::F_NEEDS_CSUM,
        csum_start: u16::try_from(t.start).ok()?,
        csum_offset: t.csum_offset as u16,
        ..VnetHdr::default()
    };
    if let Some(g) = pkt.gso {
        h.gso_type = match (g.ty, t.l3, t.proto) {
            (gso_type::TCPV4, L3::V4, IPPROTO_TCP) => vnet::GSO_TCPV4,
            (gso_type::TCPV6, L3::V6, IPPROTO_TCP) => vnet::GSO_TCPV6,
            _ => return None,
        };
        // A GSO packet is checksum-offloaded; some frontends forget to say so (netback
        // sets the partial checksum up itself then).
        if !blank && !packet::set_partial_checksum(frame, &t) {
            return None;
        }
        h.gso_size = g.size;
        h.hdr_len = u16::try_from(t.header_end).ok()?;
    }
    Some(h)
}

/// Reads (and so resets) an eventfd; its count, 0 when it was not signalled.
fn clear_eventfd(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live local u64.
    if unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) } != 8 {
        return 0;
    }
    v
}
