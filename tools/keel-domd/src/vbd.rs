//! A virtual disk's backend: the [`crate::xenbus`] handshake with one `keel-backends` queue
//! thread per ring, as many rings as the frontend asks for up to [`VbdSetup::max_queues`].
//! Grants go through `/dev/keel` ([`KeelGrants`]).
use std::{
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use keel_backends::{
    blk::{
        xenstore::{backend_keys, parse_frontend_keys, Limits},
        Disk, Queue, QueueOptions,
    },
    grant::{GrantAccess, GrantCopy, GrantMapping},
};
use keel_sys::{Domain, EventFd, GrantCopySeg};

use crate::xenbus::{Backend, Device};
use crate::xsnodes::DevicePaths;

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

/// What a disk backend needs.
pub struct VbdSetup {
    /// The XenStore daemon's socket.
    pub socket: PathBuf,
    /// The domain.
    pub domain: Arc<Domain>,
    /// The disk's two XenStore directories.
    pub paths: DevicePaths,
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

/// Starts a disk's backend: it publishes the features and waits for the frontend.
pub fn start(setup: VbdSetup) -> Result<Backend, String> {
    let device = Vbd {
        limits: Limits {
            max_queues: setup.max_queues.max(1),
            ..Limits::default()
        },
        domain: setup.domain,
        disk: setup.disk,
        name: setup.name,
        log: setup.log.clone(),
        connected: None,
    };
    Backend::start(setup.socket, setup.paths, Box::new(device), setup.log)
}

/// A disk as the handshake sees it.
struct Vbd {
    domain: Arc<Domain>,
    disk: Arc<Disk>,
    name: String,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    limits: Limits,
    connected: Option<Connected>,
}

impl Device for Vbd {
    fn label(&self) -> String {
        format!("disk {}", self.name)
    }

    fn features(&self) -> Vec<(String, String)> {
        backend_keys(&self.disk, &self.limits).features
    }

    fn connect(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<(String, String)>, String), String> {
        let cfg = parse_frontend_keys(lookup, &self.limits)
            .map_err(|e| format!("the frontend's keys: {e}"))?;
        let conn = connect(&self.domain, &self.disk, &cfg, &self.name, &self.log)
            .map_err(|e| format!("cannot connect: {e}"))?;
        self.connected = Some(conn);
        Ok((
            backend_keys(&self.disk, &self.limits).device,
            format!(
                "connected ({} ring(s), {} sectors)",
                cfg.queues.len(),
                self.disk.sectors()
            ),
        ))
    }

    fn disconnect(&mut self) {
        if let Some(conn) = self.connected.take() {
            conn.close(&self.domain);
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
            log(&format!(
                "disk {name}: ring {i}: I/O through {}",
                if queue.uses_io_uring() {
                    "io_uring"
                } else {
                    "a worker thread (the kernel refused io_uring)"
                }
            ));
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
                         frontend, {} to it, {} grant copy calls, {} persistent grant hits, \
                         {} on mapped pages",
                        s.requests,
                        s.kicks,
                        s.notifications,
                        s.grant_copy_calls,
                        s.persistent_hits,
                        s.mapped_io
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
