//! The running process: vCPU threads, the console, the control socket, shutdown actions.
//!
//! One thread per vCPU calls `KEEL_VCPU_RUN` in a loop and reports the exits that end the
//! domain (shutdowns, crashes) over a channel. The main thread polls the console's eventfd
//! (and the ring every 100 ms, as a guest need not notify), the control socket, the attached
//! console client and a wakeup eventfd for the vCPU threads and signals.
use std::{
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, RawFd},
        unix::{
            net::{UnixListener, UnixStream},
            thread::JoinHandleExt,
        },
    },
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use keel_sys::{EventFd, KeelDev, Vcpu};
use keel_xlcfg::{Action, Disk, DomainConfig, Vif};

use crate::{
    devices::{DevKind, Devices},
    exit::{classify, Outcome, Shutdown},
    files::{process_alive, Dirs, StateFile},
    guest::{build, Guest},
    proto::{Reply, Request, RunState, Status, DETACH_TIMEOUT, REQUEST_MAX},
    xenbus::state,
};

/// How often the console ring is polled when the guest sends no event.
pub const RING_POLL: Duration = Duration::from_millis(100);
/// Console output kept for a client that attaches later.
const BACKLOG: usize = 64 * 1024;
/// Console input held while the guest does not take it.
const INPUT_MAX: usize = 16 * 1024;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The keel device node.
    pub device: PathBuf,
    /// The xl.cfg file.
    pub config: PathBuf,
    /// `KEY=VALUE` overrides, applied in order.
    pub overrides: Vec<String>,
    /// Leave the domain paused.
    pub paused: bool,
    /// Where the files go.
    pub dirs: Dirs,
}

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write is async-signal-safe; it reads the 8 bytes of `one`.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

extern "C" fn on_kick(_: libc::c_int) {}

/// The signal that takes a vCPU thread out of `KEEL_VCPU_RUN`.
const KICK: libc::c_int = libc::SIGUSR1;

fn set_handler(sig: libc::c_int, handler: extern "C" fn(libc::c_int), flags: libc::c_int) {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is a
    // plain extern "C" function that only does async-signal-safe things; the pointers passed
    // live across the call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = flags;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Writes a line to the kernel log (/dev/kmsg), the syslog a busybox VM has; errors ignored.
fn kmsg(line: &str) {
    if let Ok(mut f) = File::options().write(true).open("/dev/kmsg") {
        let _ = f.write_all(format!("<4>keel-domd: {line}\n").as_bytes());
    }
}

/// A vCPU thread's report.
#[derive(Debug)]
struct Event {
    shutdown: Shutdown,
}

/// A `block-detach` waiting for the guest to release its disk; answered by the main loop.
struct PendingDetach {
    client: UnixStream,
    kind: DevKind,
    devid: u32,
    /// The device as messages name it (`disk xvdb`, `vif 1`).
    label: String,
    deadline: Instant,
}

/// A live domain and its vCPU threads.
struct Live {
    /// XenStore and the backends (none when the domain has no XenStore).
    devices: Option<Devices>,
    guest: Guest,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

/// The process.
pub struct Daemon {
    opts: Options,
    cfg: DomainConfig,
    dev: KeelDev,
    log: File,
    listener: UnixListener,
    live: Option<Live>,
    state: RunState,
    reason: Option<String>,
    restarts: u32,
    client: Option<UnixStream>,
    input: Vec<u8>,
    backlog: Vec<u8>,
    wake: Arc<EventFd>,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    daemonized: bool,
    notify_failed: bool,
    /// The domain's log for the backends' threads.
    log_line: Arc<dyn Fn(&str) + Send + Sync>,
    /// Detaches waiting for the guest.
    detaching: Vec<PendingDetach>,
}

/// A thread-safe writer of `[keel-domd]` lines into the domain's log.
fn log_writer(log: &File) -> Arc<dyn Fn(&str) + Send + Sync> {
    let file = Mutex::new(log.try_clone().ok());
    Arc::new(move |msg: &str| {
        if let Ok(mut f) = file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(format!("[keel-domd] {msg}\n").as_bytes());
            }
        }
    })
}

/// Starts XenStore and the devices of a freshly built guest. Without disks or vifs, a domain
/// whose XenStore cannot start still runs (the guest finds no XenStore); with them it cannot,
/// nor when one of them cannot be served.
fn start_devices(
    guest: &Guest,
    cfg: &DomainConfig,
    log: &Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<Option<Devices>, String> {
    match Devices::start(guest, cfg, log.clone()) {
        Ok(d) => Ok(Some(d)),
        Err(e) if cfg.disks.is_empty() && cfg.vifs.is_empty() => {
            log(&format!("running without XenStore: {e}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn vcpu_loop(mut vcpu: Vcpu, stop: Arc<AtomicBool>, tx: mpsc::Sender<Event>, wake: Arc<EventFd>) {
    let id = vcpu.id();
    let report = |shutdown| {
        let _ = tx.send(Event { shutdown });
        let _ = wake.signal();
    };
    while !stop.load(Ordering::SeqCst) {
        match vcpu.run() {
            Ok(exit) => match classify(id, exit.rip, &exit.exit) {
                Outcome::Continue => {}
                Outcome::Complete(v) => {
                    let _ = vcpu.complete(v);
                }
                Outcome::Shutdown(s) => {
                    report(s);
                    return;
                }
            },
            Err(e) => {
                report(Shutdown::Crash(format!("vCPU {id}: {e}")));
                return;
            }
        }
    }
}

impl Daemon {
    /// Builds the domain and everything around it, without running it yet. Fails with the
    /// message `keelctl create` prints; nothing is left behind then.
    pub fn create(opts: Options) -> Result<Daemon, String> {
        let cwd = std::env::current_dir()
            .map_err(|e| format!("cannot read the working directory: {e}"))?;
        let cfg =
            DomainConfig::load(&opts.config, &opts.overrides, &cwd).map_err(|e| e.to_string())?;
        let dirs = &opts.dirs;
        for d in [&dirs.run, &dirs.log] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create the directory {}: {e}", d.display()))?;
        }
        if let Ok(s) = StateFile::read(&dirs.state(&cfg.name)) {
            if process_alive(s.pid) && s.pid != std::process::id() {
                return Err(format!(
                    "a domain named '{}' already exists (id {}, keel-domd pid {})",
                    cfg.name, s.domid, s.pid
                ));
            }
            dirs.remove(&cfg.name);
        }
        let dev = KeelDev::open(&opts.device).map_err(|e| e.to_string())?;
        let guest = build(&dev, &cfg)?;
        if opts.paused {
            guest
                .domain
                .pause()
                .map_err(|e| format!("pausing the domain: {e}"))?;
        }
        let log_path = dirs.log_file(&cfg.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
        let socket = dirs.socket(&cfg.name);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .map_err(|e| format!("cannot create the socket {}: {e}", socket.display()))?;
        let (name, dirs_owned) = (cfg.name.clone(), dirs.clone());
        let cleanup = move |e: String| {
            dirs_owned.remove(&name);
            e
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| cleanup(format!("socket: {e}")))?;
        let wake = match EventFd::new() {
            Ok(w) => Arc::new(w),
            Err(e) => return Err(cleanup(format!("eventfd: {e}"))),
        };
        let (tx, rx) = mpsc::channel();
        let domid = guest.domain.domid();
        let log_line = log_writer(&log);
        let devices = start_devices(&guest, &cfg, &log_line).map_err(&cleanup)?;
        let mut d = Daemon {
            cfg,
            dev,
            log,
            listener,
            live: Some(Live {
                devices,
                guest,
                stop: Arc::new(AtomicBool::new(false)),
                threads: Vec::new(),
                started: Instant::now(),
            }),
            state: RunState::Running,
            reason: None,
            restarts: 0,
            client: None,
            input: Vec::new(),
            backlog: Vec::new(),
            wake,
            tx,
            rx,
            daemonized: false,
            notify_failed: false,
            log_line,
            detaching: Vec::new(),
            opts,
        };
        d.write_state().map_err(cleanup)?;
        d.note(&format!(
            "domain {} (id {domid}) created from {}",
            d.cfg.name,
            d.opts.config.display()
        ));
        Ok(d)
    }

    /// The domain's current id.
    pub fn domid(&self) -> Option<u32> {
        self.live.as_ref().map(|l| l.guest.domain.domid())
    }

    fn write_state(&self) -> Result<(), String> {
        let s = StateFile {
            name: self.cfg.name.clone(),
            domid: self.domid().unwrap_or(0),
            pid: std::process::id(),
            config: self.opts.config.clone(),
        };
        s.write(&self.opts.dirs).map_err(|e| {
            format!(
                "cannot write the state file {}: {e}",
                self.opts.dirs.state(&self.cfg.name).display()
            )
        })
    }

    /// A line about the domain in its log (and on stderr before the process detached).
    fn note(&mut self, msg: &str) {
        let _ = self
            .log
            .write_all(format!("[keel-domd] {msg}\n").as_bytes());
        if !self.daemonized {
            eprintln!("keel-domd: {msg}");
        }
    }

    /// Tells whoever started us (on stdout) that the domain is built, then detaches: a new
    /// session, stdin and stdout on /dev/null, stderr into the log.
    pub fn detach(&mut self) {
        let domid = self.domid().unwrap_or(0);
        let mut out = io::stdout();
        let _ = writeln!(out, "ok {domid}");
        let _ = out.flush();
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            // SAFETY: dup2 onto the standard fds, which this process owns; the sources are
            // open fds that outlive the calls.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(self.log.as_raw_fd(), 2);
                libc::dup2(null.as_raw_fd(), 1);
            }
        }
        // SAFETY: setsid takes no arguments; it fails harmlessly if we lead a group already.
        unsafe { libc::setsid() };
        self.daemonized = true;
    }

    fn start_vcpus(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        for vcpu in std::mem::take(&mut live.guest.vcpus) {
            let (stop, tx, wake) = (live.stop.clone(), self.tx.clone(), self.wake.clone());
            let name = format!("vcpu{}", vcpu.id());
            match std::thread::Builder::new()
                .name(name)
                .spawn(move || vcpu_loop(vcpu, stop, tx, wake))
            {
                Ok(t) => live.threads.push(t),
                Err(e) => {
                    let _ = self.tx.send(Event {
                        shutdown: Shutdown::Crash(format!("cannot start a vCPU thread: {e}")),
                    });
                }
            }
        }
        live.started = Instant::now();
    }

    /// Stops the vCPU threads (each is kicked out of `KEEL_VCPU_RUN` until it ends).
    fn stop_vcpus(live: &mut Live) {
        live.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while live.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            for t in live.threads.iter().filter(|t| !t.is_finished()) {
                // SAFETY: the thread is not joined, so its pthread_t is valid; KICK has a
                // handler that does nothing (installed in `run`).
                unsafe { libc::pthread_kill(t.as_pthread_t(), KICK) };
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in live.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }

    fn status(&self) -> Status {
        let paused = self
            .live
            .as_ref()
            .and_then(|l| l.guest.domain.info().ok())
            .is_some_and(|i| i.paused);
        let state = match self.state {
            RunState::Running if paused => RunState::Paused,
            s => s,
        };
        Status {
            name: self.cfg.name.clone(),
            domid: self.domid().unwrap_or(0),
            pid: std::process::id(),
            state,
            reason: self.reason.clone(),
            restarts: self.restarts,
        }
    }

    /// Ends the domain and the process.
    fn destroy(&mut self, why: &str) -> ! {
        self.state = RunState::Dying;
        for p in std::mem::take(&mut self.detaching) {
            Self::answer(
                p.client,
                Reply::error(format!("{}: the domain was destroyed", p.label)),
            );
        }
        if let Some(d) = self.live.as_mut().and_then(|l| l.devices.take()) {
            d.stop();
        }
        self.note(&format!("domain {} destroyed: {why}", self.cfg.name));
        self.opts.dirs.remove(&self.cfg.name);
        let _ = self.log.flush();
        // Exiting closes the domain's and vCPUs' fds, which destroys the domain.
        std::process::exit(0);
    }

    fn on_shutdown(&mut self, s: Shutdown) {
        if !matches!(self.state, RunState::Running) {
            return;
        }
        let action = s.action(&self.cfg);
        let what = s.describe();
        self.note(&format!(
            "domain {} shut down: {what}; action {action}",
            self.cfg.name
        ));
        if s.is_crash() {
            kmsg(&format!("domain {}: {what}", self.cfg.name));
            eprintln!("keel-domd: domain {}: {what}", self.cfg.name);
        }
        match action {
            Action::Preserve => {
                if let Some(live) = self.live.as_mut() {
                    let _ = live.guest.domain.pause();
                    Self::stop_vcpus(live);
                }
                self.state = if s.is_crash() {
                    RunState::Crashed
                } else {
                    RunState::Shutdown
                };
                self.reason = Some(what);
            }
            Action::Restart => self.restart(),
            _ => self.destroy(&what),
        }
    }

    fn restart(&mut self) {
        // A device being detached is released by the guest's going: it is not attached again.
        for p in std::mem::take(&mut self.detaching) {
            self.forget(p.kind, p.devid);
            self.note(&format!("{} detached (the domain restarted)", p.label));
            Self::answer(p.client, Reply::ok());
        }
        let ran = if let Some(mut live) = self.live.take() {
            Self::stop_vcpus(&mut live);
            if let Some(d) = live.devices.take() {
                d.stop();
            }
            let ran = live.started.elapsed();
            drop(live);
            ran
        } else {
            Duration::ZERO
        };
        // A guest that dies at once would otherwise spin the CPU rebuilding it.
        if ran < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut tries = 0;
        let guest = loop {
            match build(&self.dev, &self.cfg) {
                Ok(g) => break g,
                // The old domain's fds are closed; the module may finish tearing it down a
                // moment later.
                Err(e) if e.contains("already exists") && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    self.note(&format!("restart failed: {e}"));
                    kmsg(&format!("domain {}: restart failed: {e}", self.cfg.name));
                    self.destroy("its restart failed");
                }
            }
        };
        let devices = match start_devices(&guest, &self.cfg, &self.log_line) {
            Ok(d) => d,
            Err(e) => {
                self.note(&format!("restart failed: {e}"));
                self.destroy("its restart failed");
            }
        };
        self.live = Some(Live {
            devices,
            guest,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            started: Instant::now(),
        });
        self.restarts += 1;
        let domid = self.domid().unwrap_or(0);
        if let Err(e) = self.write_state() {
            self.note(&e);
        }
        self.note(&format!("domain {} restarted (id {domid})", self.cfg.name));
        self.start_vcpus();
    }

    /// Relays the XenStore ring and notifies the guest when it moved.
    fn pump_store(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let Some(d) = live.devices.as_mut() else {
            return;
        };
        if d.store.dead.is_some() {
            return;
        }
        if d.store.pump(&live.guest) {
            let _ = live.guest.domain.evtchn_notify(live.guest.store_port);
        }
        if let Some(why) = d.store.dead.clone() {
            self.note(&format!("XenStore relay stopped: {why}"));
        }
    }

    /// Moves console bytes both ways and notifies the guest when the ring moved.
    fn pump_console(&mut self) {
        let Some(live) = self.live.as_ref() else {
            return;
        };
        let mut out = Vec::new();
        let mut moved = false;
        for _ in 0..4 {
            if live.guest.console.read_out(&mut out).unwrap_or(0) == 0 {
                break;
            }
            moved = true;
        }
        if !self.input.is_empty() {
            let n = live.guest.console.write_in(&self.input).unwrap_or(0);
            self.input.drain(..n);
            moved |= n > 0;
        }
        if moved {
            if let Err(e) = live.guest.domain.evtchn_notify(live.guest.console_port) {
                if !self.notify_failed {
                    self.notify_failed = true;
                    self.note(&format!("notifying the console port failed: {e}"));
                }
            }
        }
        if out.is_empty() {
            return;
        }
        let _ = self.log.write_all(&out);
        if let Some(c) = self.client.as_mut() {
            // A client that cannot keep up loses output; the log has it all.
            if let Err(e) = c.write_all(&out) {
                if e.kind() != io::ErrorKind::WouldBlock {
                    self.client = None;
                }
            }
        }
        self.backlog.extend_from_slice(&out);
        if self.backlog.len() > BACKLOG {
            let cut = self.backlog.len() - BACKLOG;
            self.backlog.drain(..cut);
        }
    }

    fn read_client(&mut self) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let mut buf = [0u8; 4096];
        match c.read(&mut buf) {
            Ok(0) => self.client = None,
            Ok(n) => self.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.client = None,
        }
    }

    /// Reads a request line byte by byte (a console client's input must stay in the socket).
    fn read_request(s: &mut UnixStream) -> io::Result<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < REQUEST_MAX {
            if s.read(&mut b)? == 0 || b[0] == b'\n' {
                break;
            }
            line.push(b[0]);
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn serve(&mut self, mut s: UnixStream) {
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        let Ok(line) = Self::read_request(&mut s) else {
            return;
        };
        let request = match Request::parse(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = s.write_all(Reply::error(e).line().as_bytes());
                return;
            }
        };
        let reply = match request {
            Request::Status => Reply {
                status: Some(self.status()),
                ..Reply::ok()
            },
            Request::Destroy => {
                let _ = s.write_all(Reply::ok().line().as_bytes());
                drop(s);
                self.destroy("destroyed by request");
            }
            Request::Pause | Request::Unpause => self.pause(request == Request::Pause),
            Request::BlockList => match self.devices().and_then(|d| d.list()) {
                Ok(disks) => Reply {
                    disks: Some(disks),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e),
            },
            Request::BlockAttach { spec } => match self.block_attach(&spec) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e),
            },
            Request::BlockDetach { device, force } => {
                match self.detach_device(DevKind::Disk, &device, force) {
                    Ok(None) => Reply::ok(),
                    Ok(Some((devid, label))) => {
                        // Answered by `poll_detaches` once the guest lets the disk go.
                        self.wait_detach(s, DevKind::Disk, devid, label);
                        return;
                    }
                    Err(e) => Reply::error(e),
                }
            }
            Request::NetworkList => match self.devices().and_then(|d| d.list_vifs()) {
                Ok(nics) => Reply {
                    nics: Some(nics),
                    ..Reply::ok()
                },
                Err(e) => Reply::error(e),
            },
            Request::NetworkAttach { spec } => match self.network_attach(&spec) {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::error(e),
            },
            Request::NetworkDetach { device, force } => {
                match self.detach_device(DevKind::Vif, &device, force) {
                    Ok(None) => Reply::ok(),
                    Ok(Some((devid, label))) => {
                        self.wait_detach(s, DevKind::Vif, devid, label);
                        return;
                    }
                    Err(e) => Reply::error(e),
                }
            }
            Request::Console => {
                if let Some(mut old) = self.client.take() {
                    let _ =
                        old.write_all(b"\r\n[keel-domd: another client attached the console]\r\n");
                }
                let mut r = Reply::ok().line().into_bytes();
                r.extend_from_slice(&self.backlog);
                if s.write_all(&r).is_ok() && s.set_nonblocking(true).is_ok() {
                    self.client = Some(s);
                }
                return;
            }
        };
        let _ = s.write_all(reply.line().as_bytes());
    }

    fn answer(mut client: UnixStream, reply: Reply) {
        let _ = client.write_all(reply.line().as_bytes());
    }

    /// The live domain's devices, for the block requests; the error says why there are none.
    fn devices(&self) -> Result<&Devices, String> {
        let name = &self.cfg.name;
        let live = self
            .live
            .as_ref()
            .ok_or_else(|| format!("domain {name} is not running"))?;
        live.devices.as_ref().ok_or_else(|| {
            format!(
                "domain {name} has no XenStore (keel-xenstored could not be started when it \
                 was built; see its log), so it has no PV disks"
            )
        })
    }

    fn devices_mut(&mut self) -> Result<&mut Devices, String> {
        let name = self.cfg.name.clone();
        if self.state != RunState::Running {
            return Err(format!(
                "domain {name} has shut down ({}); its disks cannot change",
                self.reason.as_deref().unwrap_or("?")
            ));
        }
        self.devices()?;
        Ok(self
            .live
            .as_mut()
            .and_then(|l| l.devices.as_mut())
            .expect("checked just above"))
    }

    /// `block-attach`: the disk joins the running domain, and its config, so that a restart
    /// keeps it (xl's restart takes the domain's devices as they are then:
    /// `reload_domain_config`).
    fn block_attach(&mut self, spec: &str) -> Result<(), String> {
        let disk = Disk::parse(spec).map_err(|e| format!("disk spec `{spec}': {e}"))?;
        self.devices_mut()?.attach(&disk)?;
        self.note(&format!(
            "disk {} attached ({})",
            disk.vdev.name,
            disk.target.as_deref().unwrap_or("")
        ));
        self.cfg.disks.push(disk);
        Ok(())
    }

    /// `network-attach`: the vif joins the running domain and its config (as a disk does).
    fn network_attach(&mut self, spec: &str) -> Result<(), String> {
        let devid = self.devices()?.next_vif_devid();
        let (vif, warnings) =
            Vif::parse(spec, devid).map_err(|e| format!("vif spec `{spec}': {e}"))?;
        for w in warnings {
            self.note(&format!("vif spec `{spec}': {w}"));
        }
        self.devices_mut()?.attach_vif(&vif)?;
        self.note(&format!("vif {} attached", vif.devid));
        self.cfg.vifs.push(vif);
        Ok(())
    }

    /// `block-detach` and `network-detach`: with `force`, the device goes at once (`None`);
    /// otherwise the guest is asked to release it and the request waits for it: the device's
    /// id and label.
    fn detach_device(
        &mut self,
        kind: DevKind,
        device: &str,
        force: bool,
    ) -> Result<Option<(u32, String)>, String> {
        let devices = self.devices_mut()?;
        let (devid, label) = match kind {
            DevKind::Disk => {
                let devid = devices.find_disk(device)?;
                let vdev = devices
                    .disk_name(devid)
                    .unwrap_or_else(|| device.to_owned());
                (devid, format!("disk {vdev}"))
            }
            DevKind::Vif => {
                let devid = devices.find_vif(device)?;
                (devid, format!("vif {devid}"))
            }
        };
        let state = devices.frontend_state(kind, devid);
        if !force {
            if self
                .detaching
                .iter()
                .any(|p| p.kind == kind && p.devid == devid)
            {
                return Err(format!(
                    "{label}: a detach of it is already waiting for the guest"
                ));
            }
            // The backend logs that it asks the guest.
            self.devices_mut()?.close(kind, devid);
            return Ok(Some((devid, label)));
        }
        self.finish_detach(kind, devid);
        self.note(&format!(
            "{label} detached by force (its frontend was {})",
            state::describe(state)
        ));
        // A detach that was waiting for this device is over too.
        let (done, waiting) = std::mem::take(&mut self.detaching)
            .into_iter()
            .partition(|p| p.kind == kind && p.devid == devid);
        self.detaching = waiting;
        for p in done {
            Self::answer(p.client, Reply::ok());
        }
        Ok(None)
    }

    /// Queues `client`'s detach of device `devid`: answered by `poll_detaches`.
    fn wait_detach(&mut self, client: UnixStream, kind: DevKind, devid: u32, label: String) {
        self.detaching.push(PendingDetach {
            client,
            kind,
            devid,
            label,
            deadline: Instant::now() + DETACH_TIMEOUT,
        });
    }

    /// Removes device `devid` from the domain and its config.
    fn finish_detach(&mut self, kind: DevKind, devid: u32) {
        if let Some(d) = self.live.as_mut().and_then(|l| l.devices.as_mut()) {
            match kind {
                DevKind::Disk => {
                    d.remove_disk(devid);
                }
                DevKind::Vif => d.remove_vif(devid),
            }
        }
        self.forget(kind, devid);
    }

    /// Takes device `devid` out of the config (a restart does not attach it again).
    fn forget(&mut self, kind: DevKind, devid: u32) {
        match kind {
            DevKind::Disk => self.cfg.disks.retain(|d| d.vdev.number != devid),
            DevKind::Vif => self.cfg.vifs.retain(|v| v.devid != devid),
        }
    }

    fn poll_detaches(&mut self) {
        let mut i = 0;
        while i < self.detaching.len() {
            let p = &self.detaching[i];
            let devices = self.live.as_ref().and_then(|l| l.devices.as_ref());
            let released = devices.is_none_or(|d| d.released(p.kind, p.devid));
            if released {
                let p = self.detaching.remove(i);
                self.finish_detach(p.kind, p.devid);
                self.note(&format!("{} detached", p.label));
                Self::answer(p.client, Reply::ok());
            } else if Instant::now() >= p.deadline {
                let fe = devices.map_or(0, |d| d.frontend_state(p.kind, p.devid));
                let p = self.detaching.remove(i);
                let why = format!(
                    "{}: the guest did not release it within {} s (its frontend is {}; \
                     is it in use?); it stays attached, its backend Closing; \
                     `{} --force` removes it anyway",
                    p.label,
                    DETACH_TIMEOUT.as_secs(),
                    state::describe(fe),
                    p.kind.detach_verb()
                );
                self.note(&why);
                Self::answer(p.client, Reply::error(why));
            } else {
                i += 1;
            }
        }
    }

    fn pause(&mut self, pause: bool) -> Reply {
        let name = self.cfg.name.clone();
        let Some(live) = self.live.as_ref() else {
            return Reply::error(format!("domain {name} is not running"));
        };
        if self.state != RunState::Running {
            return Reply::error(format!(
                "domain {name} has shut down ({}); destroy it",
                self.reason.as_deref().unwrap_or("?")
            ));
        }
        let paused = live.guest.domain.info().map(|i| i.paused).unwrap_or(false);
        let r = if pause {
            if paused {
                return Reply::error(format!("domain {name} is already paused"));
            }
            live.guest.domain.pause()
        } else {
            if !paused {
                return Reply::error(format!("domain {name} is not paused"));
            }
            live.guest.domain.unpause()
        };
        match r {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::error(e.to_string()),
        }
    }

    /// Runs the domain until it is destroyed.
    pub fn run(mut self) -> ! {
        WAKE_FD.store(self.wake.as_raw(), Ordering::SeqCst);
        set_handler(KICK, on_kick, 0);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            set_handler(sig, on_terminate, libc::SA_RESTART);
        }
        self.start_vcpus();
        loop {
            if TERMINATE.load(Ordering::SeqCst) {
                self.destroy("terminated by a signal");
            }
            let mut fds: Vec<libc::pollfd> = Vec::new();
            let mut add = |fd: RawFd| {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                fds.len() - 1
            };
            add(self.wake.as_raw());
            let listener = add(self.listener.as_raw_fd());
            let mut store_out = None;
            if let Some(l) = self.live.as_ref() {
                add(l.guest.console_evt.as_raw());
                add(l.guest.store_evt.as_raw());
                if let Some(d) = l.devices.as_ref().filter(|d| d.store.dead.is_none()) {
                    store_out = Some((add(d.store.fd()), d.store.wants_write()));
                }
            }
            let client = match self.client.as_ref() {
                Some(c) if self.input.len() < INPUT_MAX => Some(add(c.as_raw_fd())),
                _ => None,
            };
            if let Some((i, true)) = store_out {
                fds[i].events |= libc::POLLOUT;
            }
            // SAFETY: `fds` is a live array of `fds.len()` pollfds for the call.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    RING_POLL.as_millis() as libc::c_int,
                )
            };
            let _ = self.wake.take();
            if let Some(l) = self.live.as_ref() {
                let _ = l.guest.console_evt.take();
                let _ = l.guest.store_evt.take();
            }
            self.pump_store();
            if let Some(i) = client {
                if fds[i].revents != 0 {
                    self.read_client();
                }
            }
            self.pump_console();
            while let Ok(ev) = self.rx.try_recv() {
                self.on_shutdown(ev.shutdown);
            }
            if fds[listener].revents != 0 {
                while let Ok((s, _)) = self.listener.accept() {
                    self.serve(s);
                }
            }
            self.poll_detaches();
        }
    }
}
