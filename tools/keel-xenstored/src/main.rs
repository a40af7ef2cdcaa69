//! `keel-xenstored`: Keel's XenStore daemon (Xen's `xenstored`). See the library's
//! documentation for the socket and the domain-connection convention.

mod serve;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use keel_xenstored::{Limits, XenStore, DEFAULT_PID_FILE, DEFAULT_SOCKET};

use serve::{log, Access};

/// Command-line options.
#[derive(Parser)]
#[command(
    name = "keel-xenstored",
    version,
    about = "Keel's XenStore daemon",
    long_about = "Keel's XenStore daemon: the tree of keys, values, permissions and watches \
        through which the toolstack, the backends and the DomUs' frontends meet, on Xen's \
        xs_wire protocol.\n\n\
        It listens on a Unix socket. Only privileged peers are accepted (SO_PEERCRED uid 0, \
        the daemon's own uid, or one given with --allow-uid). A client is Dom0 (domid 0, every \
        permission, no quota), unless its first message is Keel's domain handshake (type \
        0x4b45, payload \"<domid>\\0\", for an introduced domain): then the rest of the \
        connection is that DomU's own xs_wire stream, relayed from its ring by its keel-domd, \
        with the DomU's permissions and quotas.\n\n\
        Without --foreground it detaches (double fork), writes its pid to --pid-file and \
        logs to --log (or nowhere). SIGTERM or SIGINT stops it; the socket and pid file are \
        removed.",
    after_help = "Quotas (per DomU; Dom0 has none), as Xen's xenstored's defaults:\n  \
        nodes=1000 node-size=2048 watches=128 transactions=10 transaction-nodes=1024 \
        perms=5\n  outstanding=20 (replies unsent before input pauses)\n\
        Per connection: output-bytes=1048576 (then dropped), input-bytes=65536.\n\
        Exceeding a quota answers ENOSPC, as Xen does."
)]
struct Args {
    /// The Unix socket to listen on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Stay in the foreground (log to stderr unless --log).
    #[arg(long)]
    foreground: bool,
    /// Where to write the pid when detaching.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_PID_FILE)]
    pid_file: PathBuf,
    /// Append the log to this file.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Also accept clients of this uid (repeatable); the socket is then made world-writable
    /// (the uid check still applies). Meant for tests and unprivileged setups.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Set a quota or bound, NAME=VALUE (repeatable; names as listed below).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_quota)]
    quota: Vec<(String, usize)>,
}

fn parse_quota(s: &str) -> Result<(String, usize), String> {
    let (name, value) = s.split_once('=').ok_or("expected NAME=VALUE")?;
    let value = value.parse().map_err(|e| format!("{value}: {e}"))?;
    let mut probe = Limits::default();
    set_quota(&mut probe, name, value)?;
    Ok((name.to_string(), value))
}

fn set_quota(l: &mut Limits, name: &str, value: usize) -> Result<(), String> {
    let field = match name {
        "nodes" => &mut l.nodes,
        "node-size" => &mut l.node_size,
        "watches" => &mut l.watches,
        "transactions" => &mut l.transactions,
        "transaction-nodes" => &mut l.transaction_nodes,
        "perms" => &mut l.perms,
        "outstanding" => &mut l.outstanding,
        "output-bytes" => &mut l.output_bytes,
        "input-bytes" => &mut l.input_bytes,
        _ => return Err(format!("unknown quota '{name}'")),
    };
    if value == 0 && matches!(name, "outstanding" | "output-bytes" | "input-bytes") {
        return Err(format!("{name} must be above 0"));
    }
    *field = value;
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is "no flags, empty mask"; the handler only stores to
        // an atomic (async-signal-safe); no SA_RESTART, so poll(2) returns EINTR at once.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_stop as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: ignoring SIGPIPE changes no memory; a write to a closed client then fails
    // with EPIPE, which the loop handles.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Binds the socket, replacing a stale one but not a live daemon's.
fn bind(path: &Path, world: bool) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a daemon already listens on {}", path.display()),
            ));
        }
        fs::remove_file(path)?;
    }
    let l = UnixListener::bind(path)?;
    let mode = if world { 0o666 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// Points stderr at the log file (or /dev/null) and, when detaching, stdin and stdout at
/// /dev/null.
fn redirect(log_file: Option<&Path>, detached: bool) -> io::Result<()> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err = match log_file {
        Some(p) => OpenOptions::new().create(true).append(true).open(p)?,
        None if detached => null.try_clone()?,
        None => return Ok(()),
    };
    let mut pairs = vec![(err.as_raw_fd(), 2)];
    if detached {
        pairs.push((null.as_raw_fd(), 0));
        pairs.push((null.as_raw_fd(), 1));
    }
    for (from, to) in pairs {
        // SAFETY: both fds are open (`from` is owned by a live File); dup2 replaces `to`
        // atomically and touches no memory.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the process is single-threaded here (no thread has been started), so the
    // child is a complete copy that may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Detaches (fork, setsid, fork). The first process returns only once the daemon has
/// written its pid file, so that the socket and the pid file exist when the command ends.
/// Returns in the daemon only.
fn daemonize(pid_file: &Path) -> io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two fds pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe just opened both; each is owned here exactly once.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if fork()? > 0 {
        drop(wr);
        let mut ok = [0u8; 1];
        let code = match fs::File::from(rd).read(&mut ok) {
            Ok(1) => 0,
            _ => 1,
        };
        std::process::exit(code);
    }
    drop(rd);
    // SAFETY: setsid takes no arguments; in a fresh child it cannot lead a group already.
    unsafe { libc::setsid() };
    if fork()? > 0 {
        // SAFETY: _exit ends the intermediate process without running the parent's
        // atexit handlers or flushing buffers twice.
        unsafe { libc::_exit(0) };
    }
    std::env::set_current_dir("/")?;
    write_pid(pid_file)?;
    fs::File::from(wr).write_all(b"1")?;
    Ok(())
}

fn write_pid(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, format!("{}\n", std::process::id()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut limits = Limits::default();
    for (name, value) in &args.quota {
        if let Err(e) = set_quota(&mut limits, name, *value) {
            eprintln!("keel-xenstored: {e}");
            return ExitCode::from(2);
        }
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut uids = args.allow_uid.clone();
    uids.push(euid);
    let listener = match bind(&args.socket, !args.allow_uid.is_empty()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel-xenstored: {}: {e}", args.socket.display());
            return ExitCode::FAILURE;
        }
    };
    let detached = !args.foreground;
    let setup = (|| {
        if detached {
            daemonize(&args.pid_file)?;
        }
        redirect(args.log.as_deref(), detached)
    })();
    if let Err(e) = setup {
        eprintln!("keel-xenstored: {e}");
        let _ = fs::remove_file(&args.socket);
        return ExitCode::FAILURE;
    }
    install_signals();
    log(&format!(
        "listening on {} (pid {})",
        args.socket.display(),
        std::process::id()
    ));
    let mut xs = XenStore::new(limits);
    let r = serve::run(&listener, &mut xs, &Access { uids }, &STOP);
    let _ = fs::remove_file(&args.socket);
    if detached {
        let _ = fs::remove_file(&args.pid_file);
    }
    match r {
        Ok(()) => {
            log("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log(&format!("event loop: {e}"));
            ExitCode::FAILURE
        }
    }
}
