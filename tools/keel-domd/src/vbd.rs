//! A virtual disk's backend half: one thread per disk follows the frontend through XenStore
//! (XEN-PVH.md 5.3: the backend publishes its features and goes to InitWait; when the
//! frontend is Initialised it maps the rings, binds the event channels and publishes the
//! disk, then Connected; Closing and Closed undo it) and runs one `keel-backends` queue
//! thread per ring. Grants go through `/dev/keel` ([`KeelGrants`]).
use std::{
    cell::RefCell,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
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
mod state {
    pub const INITIALISING: u32 = 1;
    pub const INIT_WAIT: u32 = 2;
    pub const INITIALISED: u32 = 3;
    pub const CONNECTED: u32 = 4;
    pub const CLOSING: u32 = 5;
    pub const CLOSED: u32 = 6;
}

/// A running disk backend: its XenStore thread (which owns the queue threads).
pub struct VbdBackend {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
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
}

impl VbdBackend {
    /// Starts the backend's thread; it publishes the features and waits for the frontend.
    pub fn start(setup: VbdSetup) -> Result<VbdBackend, String> {
        let stop = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vbd-{}", setup.name))
            .spawn(move || {
                let log = setup.log.clone();
                let name = setup.name.clone();
                if let Err(e) = serve(setup, &s2) {
                    log(&format!("disk {name}: backend stopped: {e}"));
                }
            })
            .map_err(|e| format!("cannot start the disk backend thread: {e}"))?;
        Ok(VbdBackend {
            stop,
            thread: Some(thread),
        })
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

fn serve(setup: VbdSetup, stop: &EventFd) -> Result<(), String> {
    let VbdSetup {
        socket,
        domain,
        paths,
        disk,
        name,
        log,
    } = setup;
    let c = RefCell::new(Client::connect(&socket).map_err(|e| format!("XenStore: {e}"))?);
    let limits = Limits {
        max_queues: 1,
        ..Limits::default()
    };
    let keys = backend_keys(&disk, &limits);
    let be = &paths.backend;
    let write = |k: &str, v: &str| {
        c.borrow_mut()
            .write(TxId::NONE, &format!("{be}/{k}"), v)
            .map_err(xs_err("write"))
    };
    for (k, v) in &keys.features {
        write(k, v)?;
    }
    write("state", &state::INIT_WAIT.to_string())?;
    let mut be_state = state::INIT_WAIT;
    let fe_state = format!("{}/state", paths.frontend);
    c.borrow_mut()
        .watch(&fe_state, "fe")
        .map_err(xs_err("watch"))?;
    let mut connected: Option<Connected> = None;
    loop {
        if stop.take().unwrap_or(0) != 0 {
            break;
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
        match fe {
            Some(state::INITIALISED) | Some(state::CONNECTED) if connected.is_none() => {
                let lookup = |k: &str| {
                    c.borrow_mut()
                        .read_string(TxId::NONE, &format!("{}/{k}", paths.frontend))
                        .ok()
                };
                let cfg = match parse_frontend_keys(lookup, &limits) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        log(&format!("disk {name}: the frontend's keys: {e}"));
                        write("state", &state::CLOSING.to_string())?;
                        be_state = state::CLOSING;
                        continue;
                    }
                };
                match connect(&domain, &disk, &cfg, &name, &log) {
                    Ok(conn) => {
                        for (k, v) in &keys.device {
                            write(k, v)?;
                        }
                        write("state", &state::CONNECTED.to_string())?;
                        be_state = state::CONNECTED;
                        log(&format!(
                            "disk {name}: connected ({} ring(s), {} sectors)",
                            cfg.queues.len(),
                            disk.sectors()
                        ));
                        connected = Some(conn);
                    }
                    Err(e) => {
                        log(&format!("disk {name}: cannot connect: {e}"));
                        write("state", &state::CLOSING.to_string())?;
                        be_state = state::CLOSING;
                    }
                }
            }
            Some(state::CLOSING) => {
                if let Some(conn) = connected.take() {
                    conn.close(&domain);
                }
                write("state", &state::CLOSING.to_string())?;
                be_state = state::CLOSING;
            }
            Some(state::CLOSED) | None => {
                if let Some(conn) = connected.take() {
                    conn.close(&domain);
                }
                if be_state != state::CLOSED {
                    write("state", &state::CLOSED.to_string())?;
                    be_state = state::CLOSED;
                }
            }
            // A frontend starting again after it closed (its driver reloaded): as Xen's
            // blkback, go back to InitWait.
            Some(state::INITIALISING) if be_state == state::CLOSED => {
                write("state", &state::INIT_WAIT.to_string())?;
                be_state = state::INIT_WAIT;
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
