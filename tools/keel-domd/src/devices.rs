//! A domain's life in XenStore and its PV devices: the XenStore daemon started on demand, the
//! domain introduced with libxl's nodes ([`crate::xsnodes`]), its store ring relayed to the
//! daemon ([`StorePump`], pumped by the main loop), and one backend per `disk =` entry
//! ([`crate::vbd`]). [`Devices::stop`] undoes it all: backends stopped, nodes removed, the
//! domain released.
use std::{
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use keel_sys::XenParam;
use keel_xenstored::{
    client::{connect_domain, Client, TxId},
    perms::Perms,
};
use keel_xlcfg::{Access, DiskFormat, DomainConfig};

use crate::{
    guest::Guest,
    ring::Confused,
    vbd::{open_disk, VbdBackend, VbdSetup},
    xsnodes::{domain_nodes, home, vbd_nodes, DomainFacts, Node},
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

/// The domain's XenStore presence and backends.
pub struct Devices {
    socket: PathBuf,
    domid: u16,
    /// The store relay, pumped by the main loop.
    pub store: StorePump,
    disks: Vec<VbdBackend>,
    /// Paths removed when the domain goes.
    owned: Vec<String>,
}

fn perms(n: &Node) -> Result<Perms, String> {
    let strings: Vec<&[u8]> = n.perms.iter().map(|s| s.as_bytes()).collect();
    Perms::parse(&strings).map_err(|e| format!("bad permissions {:?}: {e:?}", n.perms))
}

fn write_nodes(c: &mut Client, nodes: &[Node]) -> Result<(), String> {
    for n in nodes {
        c.write(TxId::NONE, &n.path, &n.value)
            .and_then(|()| {
                c.set_perms(
                    TxId::NONE,
                    &n.path,
                    &perms(n).map_err(keel_xenstored::client::Error::Protocol)?,
                )
            })
            .map_err(|e| format!("XenStore: writing {}: {e}", n.path))?;
    }
    Ok(())
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
        let _ = c.rm(TxId::NONE, &backend_dir);
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
        };
        let owned = vec![home(domid.into()), format!("/vm/{uuid}"), backend_dir];
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
            disks: Vec::new(),
            owned,
        };
        match devices.populate(&mut c, guest, cfg, &facts, log) {
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
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> Result<(), String> {
        let (socket, domid) = (self.socket.clone(), self.domid);
        self.store
            .sock
            .set_nonblocking(true)
            .map_err(|e| format!("XenStore socket: {e}"))?;
        write_nodes(c, &domain_nodes(facts))?;
        for disk in &cfg.disks {
            let vdev = &disk.vdev.name;
            if disk.format != DiskFormat::Raw {
                return Err(format!(
                    "disk {vdev}: format {:?} is not served (Keel serves raw images and block devices)",
                    disk.format
                ));
            }
            let path = disk.path().ok_or_else(|| {
                format!(
                    "disk {vdev}: Keel serves raw image files and block devices only (target {:?})",
                    disk.target
                )
            })?;
            let opened = open_disk(vdev, &path, disk.access == Access::ReadOnly || disk.cdrom)?;
            let (paths, nodes) = vbd_nodes(domid.into(), disk);
            write_nodes(c, &nodes)?;
            self.disks.push(VbdBackend::start(VbdSetup {
                socket: socket.clone(),
                domain: guest.domain.clone(),
                paths,
                disk: Arc::new(opened),
                name: vdev.clone(),
                log: log.clone(),
            })?);
        }
        guest
            .domain
            .set_param(XenParam::StorePfn, guest.store_pfn)
            .map_err(|e| format!("setting the XenStore pfn: {e}"))
    }

    /// Stops the backends, removes the domain's nodes and releases it.
    pub fn stop(mut self) {
        self.disks.clear();
        if let Ok(mut c) = Client::connect(&self.socket) {
            let _ = c.release(self.domid);
            for p in self.owned.drain(..) {
                let _ = c.rm(TxId::NONE, &p);
            }
        }
    }
}
