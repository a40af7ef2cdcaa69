//! A vif's backend: the [`crate::xenbus`] handshake, then one thread serving the frontend's
//! TX and RX rings between the guest and the vif's TAP device (`keel-backends`' netif queue),
//! woken by the frontend's event channel and by frames on the TAP.
//!
//! The TAP is made and configured by [`open_tap`] before the frontend is told about the vif,
//! as Xen's hotplug scripts run before the frontend connects: named `vif<domid>.<devid>` (or
//! `vifname=`), Xen's backend MAC fe:ff:ff:ff:ff:ff, the MTU, up, and in bridged mode (the
//! default `script=vif-bridge`) a port of the named bridge.
use std::{os::fd::AsFd, path::PathBuf, sync::Arc, thread::JoinHandle};

use keel_backends::{
    net::{
        xenstore::{backend_keys, parse_frontend_keys},
        NetQueue,
    },
    tap::Tap,
};
use keel_sys::{Domain, EventFd};
use keel_xlcfg::{Vif, VifScript};

use crate::vbd::KeelGrants;
use crate::xenbus::{Backend, Device};
use crate::xsnodes::DevicePaths;

/// Xen's MAC for the Dom0 end of a vif (vif-common.sh): never a guest's, and it keeps a
/// bridge from taking the vif's address as its own.
pub const BACKEND_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// The TAP device's name for vif `devid` of domain `domid`.
pub fn tap_name(domid: u32, vif: &Vif) -> String {
    vif.vifname
        .clone()
        .unwrap_or_else(|| format!("vif{domid}.{}", vif.devid))
}

/// Makes and configures the vif's TAP device as its mode asks; refuses the modes not served
/// yet, naming the vif and the script.
pub fn open_tap(domid: u32, vif: &Vif) -> Result<Tap, String> {
    let label = format!("vif {}", vif.devid);
    match &vif.script {
        VifScript::Bridge => {}
        VifScript::Route | VifScript::Nat => {
            return Err(format!(
                "{label}: script={}: only bridged vifs (vif-bridge) are served yet",
                if vif.script == VifScript::Route {
                    "vif-route"
                } else {
                    "vif-nat"
                }
            ))
        }
        VifScript::Other(p) => {
            return Err(format!(
                "{label}: script={}: Keel runs no hotplug scripts; it serves vif-bridge",
                p.display()
            ))
        }
    }
    if let Some(b) = vif
        .backend
        .as_deref()
        .filter(|b| !matches!(*b, "0" | "Domain-0"))
    {
        return Err(format!(
            "{label}: backend={b}: Keel serves vifs from Dom0 only (no driver domains)"
        ));
    }
    let name = tap_name(domid, vif);
    let tap = Tap::create(&name).map_err(|e| format!("{label}: {e}"))?;
    let setup = || -> std::io::Result<()> {
        tap.set_mac(BACKEND_MAC)?;
        if let Some(mtu) = vif.mtu.filter(|&m| m != 0) {
            tap.set_mtu(mtu)?;
        }
        tap.join_bridge(&vif.bridge)?;
        tap.up()
    };
    setup().map_err(|e| format!("{label} ({name}): {e}"))?;
    Ok(tap)
}

/// What a vif's backend needs.
pub struct VifSetup {
    /// The XenStore daemon's socket.
    pub socket: PathBuf,
    /// The domain.
    pub domain: Arc<Domain>,
    /// The vif's two XenStore directories.
    pub paths: DevicePaths,
    /// Its device id.
    pub devid: u32,
    /// Its TAP device ([`open_tap`]).
    pub tap: Arc<Tap>,
    /// The MTU (the frontend's frames are at most this, plus GSO).
    pub mtu: u32,
    /// Where messages go (the domain's log).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// Starts a vif's backend: it publishes the features and waits for the frontend.
pub fn start(setup: VifSetup) -> Result<Backend, String> {
    let device = VifDevice {
        domain: setup.domain,
        devid: setup.devid,
        tap: setup.tap,
        mtu: setup.mtu,
        log: setup.log.clone(),
        connected: None,
    };
    Backend::start(setup.socket, setup.paths, Box::new(device), setup.log)
}

struct VifDevice {
    domain: Arc<Domain>,
    devid: u32,
    tap: Arc<Tap>,
    mtu: u32,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    connected: Option<Serving>,
}

/// The queue thread of a connected frontend.
struct Serving {
    stop: Arc<EventFd>,
    thread: JoinHandle<()>,
    port: u32,
}

impl Device for VifDevice {
    fn label(&self) -> String {
        format!("vif {}", self.devid)
    }

    fn features(&self) -> Vec<(String, String)> {
        backend_keys()
    }

    fn connect(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<(String, String)>, String), String> {
        let cfg = parse_frontend_keys(lookup).map_err(|e| format!("the frontend's keys: {e}"))?;
        let options = cfg.options(self.mtu as usize);
        // Frames from the host may leave their checksum to the guest, and come as TCP
        // segments of up to 64 KiB, only as far as the frontend takes them.
        let csum = !cfg.no_csum_offload;
        self.tap
            .set_offload(csum, csum && cfg.gso_tcpv4, csum && cfg.gso_tcpv6)
            .map_err(|e| format!("the TAP's offloads: {e}"))?;
        let grants = Arc::new(KeelGrants(self.domain.clone()));
        let mut queue = NetQueue::attach(grants, cfg.tx_ring_ref, cfg.rx_ring_ref, options)
            .map_err(|e| format!("mapping the rings: {e}"))?;
        let kick = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
        let stop = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let port = cfg.event_channel;
        self.domain
            .evtchn_bind(port, &kick)
            .map_err(|e| format!("binding event channel {port}: {e}"))?;
        let (domain, tap, log, s2) = (
            self.domain.clone(),
            self.tap.clone(),
            self.log.clone(),
            stop.clone(),
        );
        let devid = self.devid;
        let thread = std::thread::Builder::new()
            .name(format!("vif-{devid}"))
            .spawn(move || {
                let notify = || {
                    let _ = domain.evtchn_notify(port);
                };
                if let Err(e) = queue.run(kick.as_fd(), &*tap, s2.as_fd(), notify) {
                    log(&format!("vif {devid}: the rings stopped: {e}"));
                }
                let s = queue.stats();
                log(&format!(
                    "vif {devid}: {} packets ({} bytes) from the guest, {} errors, {} dropped; \
                     {} packets ({} bytes) to it, {} dropped; {} notifications from the \
                     frontend, {} to it",
                    s.tx_packets,
                    s.tx_bytes,
                    s.tx_errors,
                    s.tx_dropped,
                    s.rx_packets,
                    s.rx_bytes,
                    s.rx_dropped,
                    s.kicks,
                    s.notifications
                ));
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = self.domain.evtchn_unbind(port);
                return Err(format!("cannot start the vif's thread: {e}"));
            }
        };
        self.connected = Some(Serving { stop, thread, port });
        Ok((
            Vec::new(),
            format!(
                "connected to {} (sg {}, gso {})",
                self.tap.name(),
                u8::from(cfg.sg),
                u8::from(cfg.gso_tcpv4 || cfg.gso_tcpv6)
            ),
        ))
    }

    fn disconnect(&mut self) {
        if let Some(s) = self.connected.take() {
            let _ = s.stop.signal();
            let _ = s.thread.join();
            let _ = self.domain.evtchn_unbind(s.port);
        }
    }
}
