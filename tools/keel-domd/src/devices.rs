//! A domain's life in XenStore and its PV devices: the XenStore daemon started on demand, the
//! domain introduced with libxl's nodes ([`crate::xsnodes`]), its store ring relayed to the
//! daemon ([`StorePump`], pumped by the main loop), and one backend per `disk =` entry
//! ([`crate::vbd`]), more attached and detached while it runs ([`Devices::attach`],
//! [`Devices::close`], [`Devices::remove_disk`]). [`Devices::stop`] undoes it all:
//! backends stopped, nodes removed, the domain released.
use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use keel_sys::{Domain, XenParam};
use keel_xenstored::{
    client::{connect_domain, Client, Error as XsError, TxId},
    perms::Perms,
    Errno,
};
use keel_xlcfg::{Access, Disk, DiskFormat, DomainConfig, Mac, Vdev, Vif};

use crate::{
    guest::Guest,
    proto::{BlockInfo, NicInfo},
    ring::Confused,
    vbd::{open_disk, VbdSetup},
    vif::{open_tap, NatVif, VifSetup},
    xenbus::Backend,
    xsnodes::{
        default_mac, domain_nodes, home, vbd_nodes, vif_nodes, DevicePaths, DomainFacts, Node,
    },
};

/// Bytes of guest requests or daemon replies held while the other side does not take them.
const PENDING_MAX: usize = 64 * 1024;

/// Where the XenStore daemon's socket is: `$KEEL_XENSTORED_SOCKET` or the daemon's default.
pub fn xenstored_socket() -> PathBuf {
    std::env::var_os("KEEL_XENSTORED_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(keel_xenstored::DEFAULT_SOCKET))
}

/// Connects to the XenStore daemon, starting it (`keel-xenstored`, found beside this program
/// or on PATH) when nothing answers on `socket`.
pub fn ensure_xenstored(socket: &Path) -> Result<Client, String> {
    if let Ok(c) = Client::connect(socket) {
        return Ok(c);
    }
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("keel-xenstored")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("keel-xenstored"));
    // Its own stdio: the daemon outlives us, and our stdout is `keelctl create`'s pipe.
    let status = Command::new(&exe)
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("cannot start the XenStore daemon {}: {e}", exe.display()))?;
    if !status.success() {
        return Err(format!(
            "the XenStore daemon {} failed to start ({status})",
            exe.display()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Client::connect(socket) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "the XenStore daemon does not answer on {}: {e}",
                    socket.display()
                ))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Relays a DomU's XenStore ring to and from its connection to the daemon.
pub struct StorePump {
    sock: UnixStream,
    to_daemon: Vec<u8>,
    to_guest: Vec<u8>,
    /// Why the relay stopped, once it has.
    pub dead: Option<String>,
}

impl StorePump {
    /// The socket, for the main loop's poll.
    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.sock)
    }

    /// Whether the relay has bytes for the daemon that the socket has not taken yet.
    pub fn wants_write(&self) -> bool {
        !self.to_daemon.is_empty()
    }

    /// Moves bytes both ways; true when the guest's ring moved (the guest is to be notified).
    pub fn pump(&mut self, guest: &Guest) -> bool {
        if self.dead.is_some() {
            return false;
        }
        match self.pump_inner(guest) {
            Ok(moved) => moved,
            Err(e) => {
                self.dead = Some(e);
                false
            }
        }
    }

    fn pump_inner(&mut self, guest: &Guest) -> Result<bool, String> {
        let mut moved = false;
        let confused = |_: Confused| "the guest's XenStore ring indexes are corrupt".to_string();
        if self.to_daemon.len() < PENDING_MAX {
            moved |= guest
                .store
                .read_out(&mut self.to_daemon)
                .map_err(confused)?
                > 0;
        }
        while !self.to_daemon.is_empty() {
            match self.sock.write(&self.to_daemon) {
                Ok(0) => return Err("the XenStore daemon closed the connection".into()),
                Ok(n) => {
                    self.to_daemon.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("writing to the XenStore daemon: {e}")),
            }
        }
        let mut buf = [0u8; 4096];
        while self.to_guest.len() < PENDING_MAX {
            match self.sock.read(&mut buf) {
                Ok(0) => return Err("the XenStore daemon closed the connection".into()),
                Ok(n) => self.to_guest.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("reading from the XenStore daemon: {e}")),
            }
        }
        if !self.to_guest.is_empty() {
            let n = guest.store.write_in(&self.to_guest).map_err(confused)?;
            self.to_guest.drain(..n);
            moved |= n > 0;
        }
        Ok(moved)
    }
}

/// The kinds of device that attach and detach at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevKind {
    /// A virtual disk (vbd).
    Disk,
    /// A network interface (vif).
    Vif,
}

impl DevKind {
    /// The verb that detaches one.
    pub fn detach_verb(self) -> &'static str {
        match self {
            DevKind::Disk => "block-detach",
            DevKind::Vif => "network-detach",
        }
    }
}

/// A disk being served: its config, its XenStore directories and its backend.
struct ServedDisk {
    disk: Disk,
    paths: DevicePaths,
    backend: Backend,
}

/// A vif being served: its config, MAC, TAP name, how it is connected, its XenStore
/// directories and its backend (which holds the TAP).
struct ServedVif {
    vif: Vif,
    mac: Mac,
    tap: String,
    mode: String,
    paths: DevicePaths,
    backend: Backend,
    /// A NAT vif's DHCP server and nftables rules, gone with it.
    _nat: Option<NatVif>,
}

/// The domain's XenStore presence and backends.
pub struct Devices {
    socket: PathBuf,
    domid: u16,
    /// The store relay, pumped by the main loop.
    pub store: StorePump,
    domain: Arc<Domain>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    /// Rings offered per disk: the domain's vCPUs.
    max_queues: u32,
    disks: Vec<ServedDisk>,
    vifs: Vec<ServedVif>,
    /// What a default MAC address is derived from: the domain's UUID or name.
    mac_key: String,
    /// The domain's name (a NAT guest's host name, given by DHCP).
    name: String,
    /// Paths removed when the domain goes.
    owned: Vec<String>,
}

fn perms(n: &Node) -> Result<Perms, String> {
    let strings: Vec<&[u8]> = n.perms.iter().map(|s| s.as_bytes()).collect();
    Perms::parse(&strings).map_err(|e| format!("bad permissions {:?}: {e:?}", n.perms))
}

fn write_node(c: &mut Client, tx: TxId, n: &Node) -> Result<(), XsError> {
    c.write(tx, &n.path, &n.value)?;
    c.set_perms(tx, &n.path, &perms(n).map_err(XsError::Protocol)?)
}

fn write_nodes(c: &mut Client, nodes: &[Node]) -> Result<(), String> {
    for n in nodes {
        write_node(c, TxId::NONE, n).map_err(|e| format!("XenStore: writing {}: {e}", n.path))?;
    }
    Ok(())
}

/// Writes `nodes` in one transaction, as libxl writes a device's two directories, so that a
/// running guest never sees its half of a disk before the backend's half is there (Linux's
/// xenbus gives up on a device whose backend directory is missing when it probes it).
fn write_nodes_at_once(c: &mut Client, nodes: &[Node]) -> Result<(), String> {
    for _ in 0..16 {
        let tx = c
            .transaction_start()
            .map_err(|e| format!("XenStore: starting a transaction: {e}"))?;
        if let Some((n, e)) = nodes
            .iter()
            .find_map(|n| write_node(c, tx, n).err().map(|e| (n, e)))
        {
            let _ = c.transaction_end(tx, false);
            return Err(format!("XenStore: writing {}: {e}", n.path));
        }
        match c.transaction_end(tx, true) {
            Ok(()) => return Ok(()),
            Err(XsError::Xs(Errno::EAGAIN)) => continue,
            Err(e) => return Err(format!("XenStore: committing a transaction: {e}")),
        }
    }
    Err("XenStore: a transaction kept conflicting (EAGAIN 16 times)".into())
}

/// The file or device a disk serves; the message names the disk when Keel cannot serve it.
fn served_path(disk: &Disk) -> Result<PathBuf, String> {
    let vdev = &disk.vdev.name;
    if disk.format != DiskFormat::Raw {
        return Err(format!(
            "disk {vdev}: format {:?} is not served (Keel serves raw images and block devices)",
            disk.format
        ));
    }
    if let Some(b) = disk
        .backend
        .as_deref()
        .filter(|b| !matches!(*b, "0" | "Domain-0"))
    {
        return Err(format!(
            "disk {vdev}: backend={b}: Keel serves disks from Dom0 only (no driver domains)"
        ));
    }
    if let Some(script) = &disk.script {
        return Err(format!(
            "disk {vdev}: script={script}: Keel runs no block hotplug scripts; give the file or \
             device itself as the target"
        ));
    }
    disk.path().ok_or_else(|| {
        format!(
            "disk {vdev}: Keel serves raw image files and block devices only (target {:?})",
            disk.target
        )
    })
}

/// A state number in a node, if the node is there and holds one.
fn read_u32(c: &mut Client, path: &str) -> Option<u32> {
    c.read_string(TxId::NONE, path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

impl Devices {
    /// Introduces the domain to XenStore (starting the daemon if needed), writes its nodes and
    /// its disks', starts the disk backends and the store relay, and gives the guest its
    /// store pfn. `log` writes a line to the domain's log.
    pub fn start(
        guest: &Guest,
        cfg: &DomainConfig,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<Devices, String> {
        let socket = xenstored_socket();
        let mut c = ensure_xenstored(&socket)?;
        let domid = u16::try_from(guest.domain.domid())
            .map_err(|_| format!("domain id {} is beyond XenStore's", guest.domain.domid()))?;
        // A domain of this id from before (a crashed keel-domd) leaves nothing behind.
        let _ = c.release(domid);
        let _ = c.rm(TxId::NONE, &home(domid.into()));
        let backend_dir = format!("/local/domain/0/backend/vbd/{domid}");
        let vif_dir = format!("/local/domain/0/backend/vif/{domid}");
        for d in [&backend_dir, &vif_dir] {
            let _ = c.rm(TxId::NONE, d);
        }
        // Nor its NAT rules, which could catch this domain's vifs of the same names (only
        // looked for when there are vifs: it runs nft).
        if !cfg.vifs.is_empty() {
            let _ = keel_backends::nat::remove_domain_tables(domid.into());
        }
        c.introduce(domid, guest.store_pfn, guest.store_port)
            .map_err(|e| format!("XenStore: introducing domain {domid}: {e}"))?;
        let uuid = cfg
            .uuid
            .map(|u| u.to_string())
            .unwrap_or_else(|| format!("00000000-0000-4000-8000-{:012x}", u64::from(domid)));
        let facts = DomainFacts {
            domid: domid.into(),
            name: &cfg.name,
            uuid: uuid.clone(),
            vcpus: cfg.vcpus,
            max_vcpus: cfg.max_vcpus.max(cfg.vcpus),
            target_kib: cfg.memory_mib * 1024,
            max_kib: cfg.maxmem_mib.max(cfg.memory_mib) * 1024,
            store: (guest.store_pfn, guest.store_port),
            console: (guest.console_pfn, guest.console_port),
            start_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
        };
        let owned = vec![
            home(domid.into()),
            format!("/vm/{uuid}"),
            backend_dir,
            vif_dir,
        ];
        let sock = match connect_domain(&socket, domid) {
            Ok(s) => s,
            Err(e) => {
                let _ = c.release(domid);
                return Err(format!("XenStore: connecting domain {domid}'s ring: {e}"));
            }
        };
        let mut devices = Devices {
            socket: socket.clone(),
            domid,
            store: StorePump {
                sock,
                to_daemon: Vec::new(),
                to_guest: Vec::new(),
                dead: None,
            },
            domain: guest.domain.clone(),
            log,
            max_queues: cfg.vcpus.max(1),
            disks: Vec::new(),
            vifs: Vec::new(),
            // The configured UUID, else the name: the default UUID has the domain id in it,
            // which changes at each start.
            mac_key: cfg.uuid.map_or_else(|| cfg.name.clone(), |u| u.to_string()),
            name: cfg.name.clone(),
            owned,
        };
        match devices.populate(&mut c, guest, cfg, &facts) {
            Ok(()) => Ok(devices),
            Err(e) => {
                devices.stop();
                Err(e)
            }
        }
    }

    /// The nodes, the disks and the store pfn of [`Devices::start`].
    fn populate(
        &mut self,
        c: &mut Client,
        guest: &Guest,
        cfg: &DomainConfig,
        facts: &DomainFacts<'_>,
    ) -> Result<(), String> {
        self.store
            .sock
            .set_nonblocking(true)
            .map_err(|e| format!("XenStore socket: {e}"))?;
        write_nodes(c, &domain_nodes(facts))?;
        for disk in &cfg.disks {
            self.add_disk(c, disk)?;
        }
        for vif in &cfg.vifs {
            self.add_vif(c, vif)?;
        }
        guest
            .domain
            .set_param(XenParam::StorePfn, guest.store_pfn)
            .map_err(|e| format!("setting the XenStore pfn: {e}"))
    }

    /// Opens a disk, writes its two directories and starts its backend.
    fn add_disk(&mut self, c: &mut Client, disk: &Disk) -> Result<(), String> {
        let vdev = &disk.vdev.name;
        let path = served_path(disk)?;
        let opened = open_disk(vdev, &path, disk.access == Access::ReadOnly || disk.cdrom)?;
        let (paths, nodes) = vbd_nodes(self.domid.into(), disk);
        write_nodes_at_once(c, &nodes)?;
        let started = crate::vbd::start(VbdSetup {
            socket: self.socket.clone(),
            domain: self.domain.clone(),
            paths: paths.clone(),
            disk: Arc::new(opened),
            name: vdev.clone(),
            log: self.log.clone(),
            max_queues: self.max_queues,
        });
        match started {
            Ok(backend) => {
                self.disks.push(ServedDisk {
                    disk: disk.clone(),
                    paths,
                    backend,
                });
                Ok(())
            }
            Err(e) => {
                let _ = c.rm(TxId::NONE, &paths.frontend);
                let _ = c.rm(TxId::NONE, &paths.backend);
                Err(format!("disk {vdev}: {e}"))
            }
        }
    }

    /// Makes a vif's TAP device, writes its two directories and starts its backend.
    fn add_vif(&mut self, c: &mut Client, vif: &Vif) -> Result<(), String> {
        let domid = u32::from(self.domid);
        let (tap, nat, how) = open_tap(domid, vif, &self.name, self.log.clone())?;
        let tap = Arc::new(tap);
        let mac = vif
            .mac
            .unwrap_or_else(|| default_mac(&self.mac_key, vif.devid));
        let (paths, nodes) = vif_nodes(domid, vif, mac, tap.name());
        write_nodes_at_once(c, &nodes)?;
        let started = crate::vif::start(VifSetup {
            socket: self.socket.clone(),
            domain: self.domain.clone(),
            paths: paths.clone(),
            devid: vif.devid,
            tap: tap.clone(),
            mtu: vif.mtu.filter(|&m| m != 0).unwrap_or(1500),
            max_queues: self.max_queues,
            rate: vif.rate,
            log: self.log.clone(),
        });
        match started {
            Ok(backend) => {
                (self.log)(&format!("vif {}: {} ({mac}) {how}", vif.devid, tap.name()));
                self.vifs.push(ServedVif {
                    vif: vif.clone(),
                    mac,
                    tap: tap.name().to_owned(),
                    mode: how,
                    paths,
                    backend,
                    _nat: nat,
                });
                Ok(())
            }
            Err(e) => {
                let _ = c.rm(TxId::NONE, &paths.frontend);
                let _ = c.rm(TxId::NONE, &paths.backend);
                Err(format!("vif {}: {e}", vif.devid))
            }
        }
    }

    /// Adds `disk` to the running domain (`block-attach`): refused, naming the disk, when its
    /// vdev is taken, it is not a raw image or device, or it cannot be opened. The guest
    /// finds it through its watch on `device/`.
    pub fn attach(&mut self, disk: &Disk) -> Result<(), String> {
        let vdev = &disk.vdev.name;
        if let Some(d) = self
            .disks
            .iter()
            .find(|d| d.disk.vdev.number == disk.vdev.number)
        {
            return Err(if d.disk.vdev.name == *vdev {
                format!("disk {vdev}: the domain already has a disk {vdev}")
            } else {
                format!(
                    "disk {vdev}: the domain's disk {} is the same device ({})",
                    d.disk.vdev.name, disk.vdev.number
                )
            });
        }
        let mut c =
            Client::connect(&self.socket).map_err(|e| format!("XenStore: connecting: {e}"))?;
        let paths = crate::xsnodes::vbd_paths(self.domid.into(), disk.vdev.number);
        for p in [&paths.frontend, &paths.backend] {
            if c.read(TxId::NONE, p).is_ok() {
                return Err(format!(
                    "disk {vdev}: {p} is in XenStore already (left by another toolstack?)"
                ));
            }
        }
        self.add_disk(&mut c, disk)
    }

    /// The disk `device` names (a vdev such as `xvdb`, or its number): its device number.
    pub fn find_disk(&self, device: &str) -> Result<u32, String> {
        let number = Vdev::parse(device)
            .map_err(|e| format!("{device}: {e}"))?
            .number;
        self.disks
            .iter()
            .find(|d| d.disk.vdev.number == number)
            .map(|d| d.disk.vdev.number)
            .ok_or_else(|| format!("the domain has no disk {device}"))
    }

    fn served(&self, devid: u32) -> Option<&ServedDisk> {
        self.disks.iter().find(|d| d.disk.vdev.number == devid)
    }

    /// The backend of device `devid` of that kind, if it is served.
    fn backend(&self, kind: DevKind, devid: u32) -> Option<&Backend> {
        match kind {
            DevKind::Disk => self.served(devid).map(|d| &d.backend),
            DevKind::Vif => self
                .vifs
                .iter()
                .find(|v| v.vif.devid == devid)
                .map(|v| &v.backend),
        }
    }

    /// Asks the guest to release device `devid` ([`Backend::close`]).
    pub fn close(&self, kind: DevKind, devid: u32) {
        if let Some(b) = self.backend(kind, devid) {
            b.close();
        }
    }

    /// Whether the guest has released device `devid` after [`Devices::close`] (true for a
    /// device no longer served).
    pub fn released(&self, kind: DevKind, devid: u32) -> bool {
        self.backend(kind, devid).is_none_or(|b| b.released())
    }

    /// The state of device `devid`'s frontend as its backend last saw it (0: none).
    pub fn frontend_state(&self, kind: DevKind, devid: u32) -> u32 {
        self.backend(kind, devid).map_or(0, |b| b.frontend_state())
    }

    /// The vdev name of disk `devid`.
    pub fn disk_name(&self, devid: u32) -> Option<String> {
        self.served(devid).map(|d| d.disk.vdev.name.clone())
    }

    /// Stops disk `devid`'s backend and removes both its directories (libxl's
    /// `libxl__device_destroy`); returns its config.
    pub fn remove_disk(&mut self, devid: u32) -> Option<Disk> {
        let i = self
            .disks
            .iter()
            .position(|d| d.disk.vdev.number == devid)?;
        let ServedDisk {
            disk,
            paths,
            backend,
        } = self.disks.remove(i);
        drop(backend);
        match Client::connect(&self.socket) {
            Ok(mut c) => {
                for p in [&paths.frontend, &paths.backend] {
                    if let Err(e) = c.rm(TxId::NONE, p) {
                        if e.errno() != Some(Errno::ENOENT) {
                            (self.log)(&format!("disk {}: removing {p}: {e}", disk.vdev.name));
                        }
                    }
                }
            }
            Err(e) => (self.log)(&format!(
                "disk {}: cannot remove its XenStore nodes: {e}",
                disk.vdev.name
            )),
        }
        Some(disk)
    }

    /// The disks as `block-list` shows them, read from XenStore as libxl reads them.
    pub fn list(&self) -> Result<Vec<BlockInfo>, String> {
        let mut c =
            Client::connect(&self.socket).map_err(|e| format!("XenStore: connecting: {e}"))?;
        Ok(self
            .disks
            .iter()
            .map(|d| {
                let (fe, be) = (&d.paths.frontend, &d.paths.backend);
                let state = read_u32(&mut c, &format!("{fe}/state"));
                let event_channel = read_u32(&mut c, &format!("{fe}/event-channel"));
                let ring_ref = read_u32(&mut c, &format!("{fe}/ring-ref"));
                let queues =
                    read_u32(&mut c, &format!("{fe}/multi-queue-num-queues")).unwrap_or(u32::from(
                        event_channel.is_some()
                            || read_u32(&mut c, &format!("{fe}/queue-0/event-channel")).is_some(),
                    ));
                BlockInfo {
                    vdev: d.disk.vdev.name.clone(),
                    devid: d.disk.vdev.number,
                    backend_id: 0,
                    frontend_id: self.domid.into(),
                    state,
                    backend_state: read_u32(&mut c, &format!("{be}/state")),
                    event_channel,
                    ring_ref,
                    queues,
                    backend_path: be.clone(),
                    frontend_path: fe.clone(),
                    target: d
                        .disk
                        .path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    read_only: d.disk.access == Access::ReadOnly || d.disk.cdrom,
                }
            })
            .collect())
    }

    /// Adds `vif` to the running domain (`network-attach`): refused, naming it, when its
    /// device id is taken or it cannot be served. The guest finds it through its watch on
    /// `device/`.
    pub fn attach_vif(&mut self, vif: &Vif) -> Result<(), String> {
        if self.vifs.iter().any(|v| v.vif.devid == vif.devid) {
            return Err(format!(
                "vif {}: the domain already has a vif {}",
                vif.devid, vif.devid
            ));
        }
        let mut c =
            Client::connect(&self.socket).map_err(|e| format!("XenStore: connecting: {e}"))?;
        let paths = crate::xsnodes::vif_paths(self.domid.into(), vif.devid);
        for p in [&paths.frontend, &paths.backend] {
            if c.read(TxId::NONE, p).is_ok() {
                return Err(format!(
                    "vif {}: {p} is in XenStore already (left by another toolstack?)",
                    vif.devid
                ));
            }
        }
        // A table left under this vif's name by a crashed keel-domd of this domid.
        let tap = crate::vif::tap_name(self.domid.into(), vif);
        keel_backends::nat::remove_table(self.domid.into(), &tap);
        self.add_vif(&mut c, vif)
    }

    /// The next free vif device id (`network-attach` without `devid=`).
    pub fn next_vif_devid(&self) -> u32 {
        self.vifs.iter().map(|v| v.vif.devid + 1).max().unwrap_or(0)
    }

    /// The vif `device` names (its device id or its MAC address): its device id.
    pub fn find_vif(&self, device: &str) -> Result<u32, String> {
        let by_mac = Mac::parse(device).ok();
        self.vifs
            .iter()
            .find(|v| match by_mac {
                Some(m) => v.mac == m,
                None => device.parse::<u32>().is_ok_and(|d| d == v.vif.devid),
            })
            .map(|v| v.vif.devid)
            .ok_or_else(|| format!("the domain has no vif {device} (a device id or a MAC)"))
    }

    /// Stops vif `devid`'s backend (its TAP goes with it) and removes both its directories.
    pub fn remove_vif(&mut self, devid: u32) {
        let Some(i) = self.vifs.iter().position(|v| v.vif.devid == devid) else {
            return;
        };
        let v = self.vifs.remove(i);
        drop(v.backend);
        if let Ok(mut c) = Client::connect(&self.socket) {
            for p in [&v.paths.frontend, &v.paths.backend] {
                let _ = c.rm(TxId::NONE, p);
            }
        }
    }

    /// The vifs as `network-list` shows them, read from XenStore.
    pub fn list_vifs(&self) -> Result<Vec<NicInfo>, String> {
        let mut c =
            Client::connect(&self.socket).map_err(|e| format!("XenStore: connecting: {e}"))?;
        Ok(self
            .vifs
            .iter()
            .map(|v| {
                let (fe, be) = (&v.paths.frontend, &v.paths.backend);
                NicInfo {
                    devid: v.vif.devid,
                    backend_id: 0,
                    mac: v.mac.to_string(),
                    frontend_id: self.domid.into(),
                    state: read_u32(&mut c, &format!("{fe}/state")),
                    backend_state: read_u32(&mut c, &format!("{be}/state")),
                    event_channel: read_u32(&mut c, &format!("{fe}/event-channel")),
                    tx_ring_ref: read_u32(&mut c, &format!("{fe}/tx-ring-ref")),
                    rx_ring_ref: read_u32(&mut c, &format!("{fe}/rx-ring-ref")),
                    backend_path: be.clone(),
                    tap: v.tap.clone(),
                    mode: v.mode.clone(),
                }
            })
            .collect())
    }

    /// Stops the backends, removes the domain's nodes and releases it.
    pub fn stop(mut self) {
        self.disks.clear();
        self.vifs.clear();
        if let Ok(mut c) = Client::connect(&self.socket) {
            let _ = c.release(self.domid);
            for p in self.owned.drain(..) {
                let _ = c.rm(TxId::NONE, &p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(spec: &str) -> Result<PathBuf, String> {
        served_path(&Disk::parse(spec).expect("a valid disk spec"))
    }

    #[test]
    fn raw_files_from_dom0_are_served() {
        assert_eq!(
            served("/img/a.raw,raw,xvda,rw"),
            Ok(PathBuf::from("/img/a.raw"))
        );
        assert_eq!(
            served("format=raw, vdev=xvdb, backend=Domain-0, target=/img/b"),
            Ok(PathBuf::from("/img/b"))
        );
        assert_eq!(
            served("vdev=xvdc, backend=0, target=/dev/sdb"),
            Ok(PathBuf::from("/dev/sdb"))
        );
    }

    #[test]
    fn driver_domains_scripts_and_other_formats_are_refused_by_name() {
        let e = served("vdev=xvda, backend=storage, target=/img/a").unwrap_err();
        assert!(e.contains("disk xvda: backend=storage"), "{e}");
        let e = served("vdev=xvdb, script=block-iscsi, target=iqn.x:y").unwrap_err();
        assert!(e.contains("disk xvdb: script=block-iscsi"), "{e}");
        let e = served("format=qcow2, vdev=xvdc, target=/img/c.qcow2").unwrap_err();
        assert!(e.contains("disk xvdc: format"), "{e}");
    }
}
