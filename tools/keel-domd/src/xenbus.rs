//! The backend half of a PV device's XenStore handshake (XEN-PVH.md 5.3), the same for every
//! device kind: one thread per device publishes the device's features and goes to InitWait;
//! when the frontend is Initialised (blkfront) or Connected (netfront) it has the device
//! connect (map the rings, bind the event channels, start serving) and goes Connected; a
//! frontend Closing is answered with Closing, and Closed has the device disconnect, as Linux's
//! backends do. A detach ([`Backend::close`]) goes the other way, as libxl starts it:
//! `online` = 0 and the backend Closing, and the frontend answers with Closed once it has let
//! the device go. What differs per kind is a [`Device`] ([`crate::vbd`], [`crate::vif`]).
use std::{
    cell::RefCell,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use keel_sys::EventFd;
use keel_xenstored::client::{Client, TxId};

use crate::xsnodes::DevicePaths;

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

/// What one kind of device does at each step of the handshake.
pub trait Device: Send + 'static {
    /// The device as messages name it (`disk xvda`, `vif 0`).
    fn label(&self) -> String;
    /// The keys written into the backend's directory before InitWait.
    fn features(&self) -> Vec<(String, String)>;
    /// The frontend is ready: reads its keys with `lookup` (relative to its directory),
    /// starts serving, and returns the keys to write before Connected and a line for the log.
    /// An error (the frontend's keys, a mapping) sends the backend to Closing.
    fn connect(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<(String, String)>, String), String>;
    /// Stops serving what [`Device::connect`] started (the frontend closed, or the backend
    /// stops). Nothing to do when not connected.
    fn disconnect(&mut self);
}

/// A running device backend: its XenStore thread (which owns the device).
pub struct Backend {
    stop: Arc<EventFd>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the backend's thread and its owner share.
#[derive(Default)]
struct Shared {
    /// The owner asked for the device to be released ([`Backend::close`]).
    close: AtomicBool,
    /// The frontend's state as last read (0: not read yet, or its node is gone).
    frontend: AtomicU32,
    /// The state the backend last wrote (0: none yet).
    backend: AtomicU32,
}

impl Backend {
    /// Starts the backend's thread for `device`, whose directories are `paths`, talking to
    /// the XenStore daemon at `socket`; `log` writes a line to the domain's log.
    pub fn start(
        socket: PathBuf,
        paths: DevicePaths,
        device: Box<dyn Device>,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Backend, String> {
        let stop = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let shared = Arc::new(Shared::default());
        let (s2, shared2) = (stop.clone(), shared.clone());
        let label = device.label();
        let thread = std::thread::Builder::new()
            .name(format!("be-{}", label.replace(' ', "-")))
            .spawn(move || {
                let mut device = device;
                if let Err(e) = serve(&socket, &paths, &mut *device, &log, &s2, &shared2) {
                    log(&format!("{}: backend stopped: {e}", device.label()));
                }
                device.disconnect();
            })
            .map_err(|e| format!("cannot start the {label} backend thread: {e}"))?;
        Ok(Backend {
            stop,
            shared,
            thread: Some(thread),
        })
    }

    /// Asks the guest to release the device, as libxl's device removal does: the backend
    /// writes `online` = 0 and goes Closing (within one turn of its loop, 200 ms), connects no
    /// more, and goes Closed once the frontend has closed. [`Backend::released`] tells when.
    pub fn close(&self) {
        self.shared.close.store(true, Ordering::SeqCst);
    }

    /// Whether the guest no longer uses the device, after [`Backend::close`]: the backend
    /// reached Closed (the frontend closed, or its node went away), the frontend never left
    /// Initialising (no driver took the device), or the backend's thread ended.
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

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.stop.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn xs_err(what: &str) -> impl Fn(keel_xenstored::client::Error) -> String + '_ {
    move |e| format!("XenStore {what}: {e}")
}

fn serve(
    socket: &std::path::Path,
    paths: &DevicePaths,
    device: &mut dyn Device,
    log: &Arc<dyn Fn(&str) + Send + Sync>,
    stop: &EventFd,
    shared: &Shared,
) -> Result<(), String> {
    let c = RefCell::new(Client::connect(socket).map_err(|e| format!("XenStore: {e}"))?);
    let label = device.label();
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
    for (k, v) in &device.features() {
        write(k, v)?;
    }
    let mut be_state = set_state(state::INIT_WAIT)?;
    let mut closing = false;
    let mut connected = false;
    let fe_state = format!("{}/state", paths.frontend);
    c.borrow_mut()
        .watch(&fe_state, "fe")
        .map_err(xs_err("watch"))?;
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
                "{label}: detaching, the guest is asked to release it"
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
            Some(state::INITIALISED) | Some(state::CONNECTED) if !connected && !closing => {
                let lookup = |k: &str| {
                    c.borrow_mut()
                        .read_string(TxId::NONE, &format!("{}/{k}", paths.frontend))
                        .ok()
                };
                match device.connect(&lookup) {
                    Ok((keys, message)) => {
                        for (k, v) in &keys {
                            write(k, v)?;
                        }
                        be_state = set_state(state::CONNECTED)?;
                        log(&format!("{label}: {message}"));
                        connected = true;
                    }
                    Err(e) => {
                        log(&format!("{label}: {e}"));
                        be_state = set_state(state::CLOSING)?;
                    }
                }
            }
            // As Linux's backends (`frontend_changed`): the rings stay until the frontend is
            // Closed, so that a frontend that stays Closing (a guest still using the device)
            // keeps working.
            Some(state::CLOSING) if be_state != state::CLOSING => {
                be_state = set_state(state::CLOSING)?;
            }
            Some(state::CLOSED) | None => {
                if connected {
                    device.disconnect();
                    connected = false;
                }
                if be_state != state::CLOSED {
                    be_state = set_state(state::CLOSED)?;
                }
            }
            // A frontend starting again after it closed (its driver reloaded): as Xen's
            // backends, go back to InitWait, unless the device is being detached.
            Some(state::INITIALISING) if be_state == state::CLOSED && !closing => {
                be_state = set_state(state::INIT_WAIT)?;
            }
            _ => {}
        }
    }
    Ok(())
}
