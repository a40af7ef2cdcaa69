//! A virtual disk's backend half: one thread per disk follows the frontend through XenStore
//! (XEN-PVH.md 5.3: the backend publishes its features and goes to InitWait; when the
//! frontend is Initialised it maps the rings, binds the event channels and publishes the
//! disk, then Connected; a frontend Closing is answered with Closing, and Closed unmaps and
//! unbinds it all, as Linux's blkback does) and runs one `keel-backends` queue thread per
//! ring, as many rings as the frontend asks for up to [`VbdSetup::max_queues`]. A detach
//! ([`VbdBackend::close`]) goes the other way, as libxl starts it: `online` = 0 and the
//! backend Closing, and the frontend answers with Closed once it has let the disk go.
//! Grants go through `/dev/keel` ([`KeelGrants`]).
use std::{
    cell::RefCell,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use keel_backends::{
    blk::{
        xenstore::{backend_keys, parse_frontend_keys, Limits},
        Disk, Queue, QueueOptions,
    },
    grant::{GrantAccess, GrantCopy, GrantMapping},
};
use keel_sys::{Domain, EventFd, GrantCopySeg};
use keel_xenstored::client::{Client, TxId};

use crate::xsnodes::VbdPaths;

/// Grant copies and maps of a DomU through `/dev/keel`.
pub struct KeelGrants(pub Arc<Domain>);

struct Mapped(keel_sys::GrantMapping);

impl GrantMapping for Mapped {
    fn as_ptr(&self) -> *mut u8 {
        self.0.as_ptr()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl GrantAccess for KeelGrants {
    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> io::Result<()> {
        let mut segs: Vec<GrantCopySeg> = ops
            .iter_mut()
            .map(|o| GrantCopySeg {
                gref: o.gref,
                offset: o.offset,
                len: o.buf.len() as u16,
                buf: o.buf.as_mut_ptr(),
                to_guest: o.to_guest,
                status: 0,
            })
            .collect();
        // SAFETY: each `buf` is one of the ops' slices, borrowed mutably for this call, so
        // valid for its length both ways and not otherwise accessed meanwhile.
        unsafe { self.0.grant_copy(&mut segs) }.map_err(to_io)?;
        for (o, s) in ops.iter_mut().zip(&segs) {
            o.status = s.status;
        }
        Ok(())
    }

    fn map(&self, refs: &[u32], writable: bool) -> io::Result<Box<dyn GrantMapping>> {
        let m = self.0.grant_map(refs, writable).map_err(to_io)?;
        Ok(Box::new(Mapped(m)))
    }
}

fn to_io(e: keel_sys::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// xenbus states (xen/include/public/io/xenbus.h).
pub mod state {
    #![allow(missing_docs)]
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;

    /// `N (Name)`, for messages; 0 is "missing" (no node).
    pub fn describe(s: u32) -> String {
        let name = match s {
            0 => return "missing".into(),
            INITIALISING => "Initialising",
            INIT_WAIT => "InitWait",
            INITIALISED => "Initialised",
            CONNECTED => "Connected",
            CLOSING => "Closing",
            CLOSED => "Closed",
            _ => "Unknown",
        };
        format!("{s} ({name})")
    }
}

/// A running disk backend: its XenStore thread (which owns the queue threads).
pub struct VbdBackend {
    stop: Arc<EventFd>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the backend's thread and its owner share.
#[derive(Default)]
struct Shared {
    /// The owner asked for the disk to be released ([`VbdBackend::close`]).
    close: AtomicBool,
    /// The frontend's state as last read (0: not read yet, or its node is gone).
    frontend: AtomicU32,
    /// The state the backend last wrote (0: none yet).
    backend: AtomicU32,
}

/// What a disk backend needs.
pub struct VbdSetup {
    /// The XenStore daemon's socket.
    pub socket: PathBuf,
    /// The domain.
    pub domain: Arc<Domain>,
    /// The disk's two XenStore directories.
    pub paths: VbdPaths,
    /// The opened disk.
    pub disk: Arc<Disk>,
    /// The vdev's name, for messages.
    pub name: String,
    /// Where messages go (the domain's log).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
    /// The most rings offered (`multi-queue-max-queues`); the domain's vCPU count, so that
    /// Linux's blkfront gives each vCPU a ring.
    pub max_queues: u32,
}

impl VbdBackend {
    /// Starts the backend's thread; it publishes the features and waits for the frontend.
    pub fn start(setup: VbdSetup) -> Result<VbdBackend, String> {
        let stop = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let shared = Arc::new(Shared::default());
        let (s2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("vbd-{}", setup.name))
            .spawn(move || {
                let log = setup.log.clone();
                let name = setup.name.clone();
                if let Err(e) = serve(setup, &s2, &shared2) {
                    log(&format!("disk {name}: backend stopped: {e}"));
                }
            })
            .map_err(|e| format!("cannot start the disk backend thread: {e}"))?;
        Ok(VbdBackend {
            stop,
            shared,
            thread: Some(thread),
        })
    }

    /// Asks the guest to release the disk, as libxl's device removal does: the backend writes
    /// `online` = 0 and goes Closing (within one turn of its loop, 200 ms), connects no more,
    /// and goes Closed once the frontend has closed. [`VbdBackend::released`] tells when.
    pub fn close(&self) {
        self.shared.close.store(true, Ordering::SeqCst);
    }

    /// Whether the guest no longer uses the disk, after [`VbdBackend::close`]: the backend
    /// reached Closed (the frontend closed, or its node went away), the frontend never left
    /// Initialising (no driver took the disk), or the backend's thread ended.
    pub fn released(&self) -> bool {
        self.shared.backend.load(Ordering::SeqCst) == state::CLOSED
            || self.shared.frontend.load(Ordering::SeqCst) == state::INITIALISING
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The frontend's state as the backend last read it (0 when it has none).
    pub fn frontend_state(&self) -> u32 {
        self.shared.frontend.load(Ordering::SeqCst)
    }
}

impl Drop for VbdBackend {
    fn drop(&mut self) {
        let _ = self.stop.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The rings of a connected frontend, each served by a thread with its own stop eventfd.
struct Connected {
    stops: Vec<Arc<EventFd>>,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<u32>,
}

impl Connected {
    fn close(self, domain: &Domain) {
        for s in &self.stops {
            let _ = s.signal();
        }
        for t in self.threads {
            let _ = t.join();
        }
        for p in self.ports {
            let _ = domain.evtchn_unbind(p);
        }
    }
}

fn xs_err(what: &str) -> impl Fn(keel_xenstored::client::Error) -> String + '_ {
    move |e| format!("XenStore {what}: {e}")
}

fn serve(setup: VbdSetup, stop: &EventFd, shared: &Shared) -> Result<(), String> {
    let VbdSetup {
        socket,
        domain,
        paths,
        disk,
        name,
        log,
        max_queues,
    } = setup;
    let c = RefCell::new(Client::connect(&socket).map_err(|e| format!("XenStore: {e}"))?);
    let limits = Limits {
        max_queues: max_queues.max(1),
        ..Limits::default()
    };
    let keys = backend_keys(&disk, &limits);
    let be = &paths.backend;
    let write = |k: &str, v: &str| {
        c.borrow_mut()
            .write(TxId::NONE, &format!("{be}/{k}"), v)
            .map_err(xs_err("write"))
    };
    let set_state = |s: u32| {
        write("state", &s.to_string())?;
        shared.backend.store(s, Ordering::SeqCst);
        Ok::<u32, String>(s)
    };
    for (k, v) in &keys.features {
        write(k, v)?;
    }
    let mut be_state = set_state(state::INIT_WAIT)?;
    let mut closing = false;
    let fe_state = format!("{}/state", paths.frontend);
    c.borrow_mut()
        .watch(&fe_state, "fe")
        .map_err(xs_err("watch"))?;
    let mut connected: Option<Connected> = None;
    loop {
        if stop.take().unwrap_or(0) != 0 {
            break;
        }
        if !closing && shared.close.load(Ordering::SeqCst) {
            // libxl's `libxl__initiate_device_generic_remove`: offline, and Closing unless
            // already Closed.
            closing = true;
            write("online", "0")?;
            if be_state != state::CLOSED {
                be_state = set_state(state::CLOSING)?;
            }
            log(&format!(
                "disk {name}: detaching, the guest is asked to release it"
            ));
        }
        // The first event comes at once (XenStore fires a new watch).
        let ev = c
            .borrow_mut()
            .next_event_timeout(Some(Duration::from_millis(200)))
            .map_err(xs_err("watch"))?;
        if ev.is_none() {
            continue;
        }
        let fe = c
            .borrow_mut()
            .read_string(TxId::NONE, &fe_state)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        shared.frontend.store(fe.unwrap_or(0), Ordering::SeqCst);
        match fe {
            Some(state::INITIALISED) | Some(state::CONNECTED)
                if connected.is_none() && !closing =>
            {
                let lookup = |k: &str| {
                    c.borrow_mut()
                        .read_string(TxId::NONE, &format!("{}/{k}", paths.frontend))
                        .ok()
                };
                let cfg = match parse_frontend_keys(lookup, &limits) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        log(&format!("disk {name}: the frontend's keys: {e}"));
                        be_state = set_state(state::CLOSING)?;
                        continue;
                    }
                };
                match connect(&domain, &disk, &cfg, &name, &log) {
                    Ok(conn) => {
                        for (k, v) in &keys.device {
                            write(k, v)?;
                        }
                        be_state = set_state(state::CONNECTED)?;
                        log(&format!(
                            "disk {name}: connected ({} ring(s), {} sectors)",
                            cfg.queues.len(),
                            disk.sectors()
                        ));
                        connected = Some(conn);
                    }
                    Err(e) => {
                        log(&format!("disk {name}: cannot connect: {e}"));
                        be_state = set_state(state::CLOSING)?;
                    }
                }
            }
            // As Linux's blkback (`frontend_changed`): the rings stay until the frontend is
            // Closed, so that a frontend that stays Closing (a guest still using the disk)
            // keeps working.
            Some(state::CLOSING) if be_state != state::CLOSING => {
                be_state = set_state(state::CLOSING)?;
            }
            Some(state::CLOSED) | None => {
                if let Some(conn) = connected.take() {
                    conn.close(&domain);
                }
                if be_state != state::CLOSED {
                    be_state = set_state(state::CLOSED)?;
                }
            }
            // A frontend starting again after it closed (its driver reloaded): as Xen's
            // blkback, go back to InitWait, unless the disk is being detached.
            Some(state::INITIALISING) if be_state == state::CLOSED && !closing => {
                be_state = set_state(state::INIT_WAIT)?;
            }
            _ => {}
        }
    }
    if let Some(conn) = connected.take() {
        conn.close(&domain);
    }
    Ok(())
}

/// Maps each ring, binds its event channel and starts its queue thread.
fn connect(
    domain: &Arc<Domain>,
    disk: &Arc<Disk>,
    cfg: &keel_backends::blk::xenstore::FrontendConfig,
    name: &str,
    log: &Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Connected, String> {
    let mut conn = Connected {
        stops: Vec::new(),
        threads: Vec::new(),
        ports: Vec::new(),
    };
    let grants: Arc<dyn GrantAccess> = Arc::new(KeelGrants(domain.clone()));
    let options = QueueOptions {
        persistent_grants: cfg.persistent,
        ..QueueOptions::default()
    };
    for (i, ring) in cfg.queues.iter().enumerate() {
        let result = (|| {
            let mut queue = Queue::attach(
                grants.clone(),
                &ring.ring_refs,
                cfg.protocol,
                disk.clone(),
                options.clone(),
            )
            .map_err(|e| format!("mapping ring {i}: {e}"))?;
            let kick = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
            let stop = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
            conn.stops.push(stop.clone());
            domain
                .evtchn_bind(ring.event_channel, &kick)
                .map_err(|e| format!("binding event channel {}: {e}", ring.event_channel))?;
            conn.ports.push(ring.event_channel);
            let (domain, log, name) = (domain.clone(), log.clone(), name.to_owned());
            let port = ring.event_channel;
            std::thread::Builder::new()
                .name(format!("vbd-{name}-q{i}"))
                .spawn(move || {
                    let notify = || {
                        let _ = domain.evtchn_notify(port);
                    };
                    if let Err(e) = queue.run(kick.as_fd(), stop.as_fd(), notify) {
                        log(&format!("disk {name}: ring {i} stopped: {e}"));
                    }
                    let s = queue.stats();
                    log(&format!(
                        "disk {name}: ring {i}: {} requests, {} notifications from the \
                         frontend, {} to it, {} grant copy calls, {} persistent grant hits",
                        s.requests, s.kicks, s.notifications, s.grant_copy_calls, s.persistent_hits
                    ));
                })
                .map_err(|e| format!("cannot start a queue thread: {e}"))
        })();
        match result {
            Ok(t) => conn.threads.push(t),
            Err(e) => {
                conn.close(domain);
                return Err(e);
            }
        }
    }
    Ok(conn)
}

/// Opens a disk's backing file or device as its config says; the message names the disk.
pub fn open_disk(vdev: &str, path: &Path, read_only: bool) -> Result<Disk, String> {
    Disk::open(path, read_only)
        .map_err(|e| format!("disk {vdev}: cannot open {}: {e}", path.display()))
}
