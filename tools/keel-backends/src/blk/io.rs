//! The disk I/O of a queue: io_uring where the kernel allows it, else a worker thread doing
//! the same operations with blocking system calls. Both take operations tagged by the caller,
//! and hand back completions with the tag and the system call's result; both signal an eventfd
//! when completions are waiting, so one `poll` loop serves either.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use io_uring::{opcode, types, IoUring, Probe};

use super::Disk;

/// One disk operation. Buffers are owned by the caller (see [`Engine::push`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum IoOp {
    /// `pread(fd, buf, len, offset)`.
    Read {
        offset: u64,
        buf: *mut u8,
        len: usize,
    },
    /// `pwrite(fd, buf, len, offset)`.
    Write {
        offset: u64,
        buf: *const u8,
        len: usize,
    },
    /// `preadv(fd, iov, iovcnt, offset)`: into several buffers (a request's mapped pages).
    ReadV {
        offset: u64,
        iov: *const libc::iovec,
        iovcnt: usize,
    },
    /// `pwritev(fd, iov, iovcnt, offset)`.
    WriteV {
        offset: u64,
        iov: *const libc::iovec,
        iovcnt: usize,
    },
    /// `fdatasync(fd)`.
    Sync,
    /// `fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len)`.
    Punch { offset: u64, len: u64 },
}

/// A finished operation: its tag, and bytes done or an errno.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub tag: u64,
    pub result: Result<usize, i32>,
}

/// The largest read or write handed to the kernel at once (a request is at most 4096 pages;
/// the result of a larger one would not fit io_uring's i32 result anyway).
const MAX_IO: usize = 1 << 30;

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads an eventfd's counter to zero (it is non-blocking: nothing to read is fine).
/// Reads (and so clears) an eventfd's counter: how many times it was signalled since (0 when
/// it was not readable).
pub(crate) fn clear_eventfd(fd: RawFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live local u64.
    if unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) } != 8 {
        return 0;
    }
    v
}

fn signal_eventfd(fd: RawFd) {
    let v = 1u64;
    // SAFETY: writes 8 bytes from a live local u64.
    unsafe { libc::write(fd, (&v as *const u64).cast(), 8) };
}

/// Blocks until `fd` is readable (EINTR retried).
pub(crate) fn wait_readable(fd: RawFd) -> io::Result<()> {
    loop {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut p, 1, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs one operation with blocking system calls.
fn run_blocking(file: &File, op: IoOp) -> Result<usize, i32> {
    let fd = file.as_raw_fd();
    let last = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: `fd` is the open disk file for every call; a read or write buffer is valid for
    // `len` bytes, and an iovec array for `iovcnt` entries each naming such a buffer, until
    // this operation's completion is reaped (Engine::push's contract) and nothing else
    // touches them meanwhile.
    let r = unsafe {
        match op {
            IoOp::Read { offset, buf, len } => {
                libc::pread(fd, buf.cast(), len.min(MAX_IO), offset as libc::off_t)
            }
            IoOp::Write { offset, buf, len } => {
                libc::pwrite(fd, buf.cast(), len.min(MAX_IO), offset as libc::off_t)
            }
            IoOp::ReadV {
                offset,
                iov,
                iovcnt,
            } => libc::preadv(fd, iov, iovcnt as libc::c_int, offset as libc::off_t),
            IoOp::WriteV {
                offset,
                iov,
                iovcnt,
            } => libc::pwritev(fd, iov, iovcnt as libc::c_int, offset as libc::off_t),
            IoOp::Sync => libc::fdatasync(fd) as isize,
            IoOp::Punch { offset, len } => libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            ) as isize,
        }
    };
    if r < 0 {
        Err(last())
    } else {
        Ok(r as usize)
    }
}

/// A queue's I/O engine.
pub(crate) enum Engine {
    /// io_uring (boxed: it is much larger than the other).
    Uring(Box<UringEngine>),
    /// A worker thread with blocking calls.
    Thread(ThreadEngine),
}

impl Engine {
    /// An io_uring engine for up to `depth` operations in flight, or the worker thread when
    /// `blocking` is asked for or the kernel refuses io_uring (ENOSYS, EPERM, an old kernel
    /// without the operations).
    pub fn new(disk: Arc<Disk>, depth: u32, blocking: bool) -> io::Result<Engine> {
        if !blocking {
            match UringEngine::new(disk.clone(), depth) {
                Ok(u) => return Ok(Engine::Uring(Box::new(u))),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(
                            libc::ENOSYS
                                | libc::EPERM
                                | libc::EOPNOTSUPP
                                | libc::ENOMEM
                                | libc::EINVAL
                        )
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        ThreadEngine::new(disk).map(Engine::Thread)
    }

    /// Whether this is the io_uring engine.
    pub fn is_uring(&self) -> bool {
        matches!(self, Engine::Uring(_))
    }

    /// Queues `op` under `tag` (sent to the kernel or the worker by [`Self::submit`]).
    ///
    /// # Safety
    ///
    /// A `Read` buffer must stay valid for writes of `len` bytes, a `Write` buffer for reads,
    /// and untouched by anything else, until the completion with `tag` has been returned by
    /// [`Self::reap`] (or the engine is dropped, which waits for every operation). The same
    /// holds for a `ReadV` or `WriteV` iovec array (`iovcnt` entries, at most `IOV_MAX`) and
    /// every buffer it names.
    pub unsafe fn push(&mut self, tag: u64, op: IoOp) {
        match self {
            Engine::Uring(u) => u.push(tag, op),
            Engine::Thread(t) => t.push(tag, op),
        }
    }

    /// Hands the queued operations over.
    pub fn submit(&mut self) -> io::Result<()> {
        match self {
            Engine::Uring(u) => u.submit(),
            Engine::Thread(t) => {
                t.submit();
                Ok(())
            }
        }
    }

    /// Appends the completions waiting to `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Engine::Uring(u) => u.reap(out),
            Engine::Thread(t) => t.reap(out),
        }
    }

    /// Operations pushed and not yet reaped.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Uring(u) => u.in_flight,
            Engine::Thread(t) => t.in_flight,
        }
    }

    /// The eventfd that becomes readable when completions may be waiting.
    pub fn event_fd(&self) -> RawFd {
        match self {
            Engine::Uring(u) => u.event.as_raw_fd(),
            Engine::Thread(t) => t.event.as_raw_fd(),
        }
    }

    /// Waits for every operation in flight and drops their completions. `false` when that
    /// failed (the io_uring is unusable): the callers' buffers must then be leaked.
    pub fn drain(&mut self) -> bool {
        let mut sink = Vec::new();
        while self.in_flight() > 0 {
            if self.wait().is_err() {
                return false;
            }
            self.reap(&mut sink);
            sink.clear();
        }
        true
    }

    /// Blocks until a completion is waiting (or returns at once when none is in flight).
    pub fn wait(&mut self) -> io::Result<()> {
        if self.in_flight() == 0 {
            return Ok(());
        }
        match self {
            Engine::Uring(u) => u.wait(),
            Engine::Thread(t) => t.wait(),
        }
    }
}

/// io_uring with a registered eventfd.
pub(crate) struct UringEngine {
    ring: IoUring,
    event: OwnedFd,
    /// Keeps the file, whose fd the ring's operations name, open.
    disk: Arc<Disk>,
    in_flight: usize,
}

impl UringEngine {
    fn new(disk: Arc<Disk>, depth: u32) -> io::Result<UringEngine> {
        let ring = IoUring::new(depth.clamp(8, 4096).next_power_of_two())?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let needed = [
            opcode::Read::CODE,
            opcode::Write::CODE,
            opcode::Readv::CODE,
            opcode::Writev::CODE,
            opcode::Fsync::CODE,
            opcode::Fallocate::CODE,
        ];
        if !needed.iter().all(|&c| probe.is_supported(c)) {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let event = eventfd()?;
        ring.submitter().register_eventfd(event.as_raw_fd())?;
        Ok(UringEngine {
            ring,
            event,
            disk,
            in_flight: 0,
        })
    }

    fn push(&mut self, tag: u64, op: IoOp) {
        let fd = types::Fd(self.disk.file().as_raw_fd());
        let sqe = match op {
            IoOp::Read { offset, buf, len } => opcode::Read::new(fd, buf, len.min(MAX_IO) as u32)
                .offset(offset)
                .build(),
            IoOp::Write { offset, buf, len } => opcode::Write::new(fd, buf, len.min(MAX_IO) as u32)
                .offset(offset)
                .build(),
            IoOp::ReadV {
                offset,
                iov,
                iovcnt,
            } => opcode::Readv::new(fd, iov, iovcnt as u32)
                .offset(offset)
                .build(),
            IoOp::WriteV {
                offset,
                iov,
                iovcnt,
            } => opcode::Writev::new(fd, iov, iovcnt as u32)
                .offset(offset)
                .build(),
            IoOp::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoOp::Punch { offset, len } => opcode::Fallocate::new(fd, len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
        }
        .user_data(tag);
        loop {
            // SAFETY: the SQE's buffer (or iovec array and its buffers) stays valid until its
            // completion is reaped (push's contract, passed on by Engine::push), and its fd is
            // the disk file, kept open by `self.disk` for the ring's life.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                break;
            }
            // The submission queue is full: hand it to the kernel and retry.
            if let Err(e) = self.ring.submit() {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) {
                    // Cannot happen with in-flight operations bounded by the ring's size;
                    // wait for completions to make room.
                    let _ = self.ring.submit_and_wait(1);
                }
            }
        }
        self.in_flight += 1;
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // Left in the submission queue; the next submit hands them over.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            self.in_flight = self.in_flight.saturating_sub(1);
            let r = cqe.result();
            out.push(Completion {
                tag: cqe.user_data(),
                result: if r < 0 { Err(-r) } else { Ok(r as usize) },
            });
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => return Ok(()),
                // EBUSY: completions to reap first (checked above on the next turn).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// An operation sent to the worker thread.
struct Job {
    tag: u64,
    op: IoOp,
}

// SAFETY: a Job's buffer pointer (or iovec array, and the buffers it names) is valid until its
// completion is reaped (Engine::push's contract), and only the worker touches them meanwhile.
unsafe impl Send for Job {}

/// A worker thread running operations with blocking calls, a batch at a time.
pub(crate) struct ThreadEngine {
    tx: Option<mpsc::Sender<Vec<Job>>>,
    batch: Vec<Job>,
    done: Arc<Mutex<Vec<Completion>>>,
    event: Arc<OwnedFd>,
    worker: Option<thread::JoinHandle<()>>,
    in_flight: usize,
}

impl ThreadEngine {
    fn new(disk: Arc<Disk>) -> io::Result<ThreadEngine> {
        let event = Arc::new(eventfd()?);
        let done = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Vec<Job>>();
        let (w_event, w_done) = (event.clone(), done.clone());
        let worker = thread::Builder::new()
            .name("keel-blk-io".into())
            .spawn(move || {
                while let Ok(mut jobs) = rx.recv() {
                    // Whatever else was sent meanwhile joins this batch: one wakeup for all.
                    while let Ok(more) = rx.try_recv() {
                        jobs.extend(more);
                    }
                    let results: Vec<Completion> = jobs
                        .iter()
                        .map(|j| Completion {
                            tag: j.tag,
                            result: run_blocking(disk.file(), j.op),
                        })
                        .collect();
                    w_done
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(results);
                    signal_eventfd(w_event.as_raw_fd());
                }
            })?;
        Ok(ThreadEngine {
            tx: Some(tx),
            batch: Vec::new(),
            done,
            event,
            worker: Some(worker),
            in_flight: 0,
        })
    }

    fn push(&mut self, tag: u64, op: IoOp) {
        self.batch.push(Job { tag, op });
        self.in_flight += 1;
    }

    fn submit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.batch);
        if let Some(tx) = &self.tx {
            if let Err(mpsc::SendError(jobs)) = tx.send(jobs) {
                // The worker is gone (it panicked): fail the operations rather than hang.
                let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
                done.extend(jobs.iter().map(|j| Completion {
                    tag: j.tag,
                    result: Err(libc::EIO),
                }));
                signal_eventfd(self.event.as_raw_fd());
            }
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        self.in_flight = self.in_flight.saturating_sub(done.len());
        out.append(&mut done);
    }

    fn wait(&mut self) -> io::Result<()> {
        self.submit();
        loop {
            if !self
                .done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
            {
                return Ok(());
            }
            wait_readable(self.event.as_raw_fd())?;
            clear_eventfd(self.event.as_raw_fd());
        }
    }
}

impl Drop for ThreadEngine {
    fn drop(&mut self) {
        // Jobs pushed but never submitted have not started: nothing touches their buffers.
        self.batch.clear();
        // Closing the channel ends the worker after the jobs it has; joining it means no
        // buffer is in use any more.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
