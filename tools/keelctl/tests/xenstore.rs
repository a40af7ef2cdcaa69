//! `keelctl xenstore`, `mem-set`, `shutdown`, `reboot` and `sysrq` against the keel-xenstored
//! daemon on a temporary socket, run as the current user (the daemon accepts its own uid). The
//! domain verbs run with the testing hook `KEELCTL_NO_MODULE=1`: the test writes a domain's
//! XenStore home, and plays its guest, through the client library.
//!
//! The daemon binary is the one next to keelctl's (a workspace build makes it); else it is
//! built into a target directory of its own (cargo keeps the build directory locked while
//! tests run). A test that can have neither says so and is skipped.

use std::io::{BufRead, BufReader};
use std::os::fd::FromRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_xenstored::client::{Client, TxId};

const KEELCTL: &str = env!("CARGO_BIN_EXE_keelctl");
const NONE: TxId = TxId::NONE;

/// The daemon binary, found or built once per test binary.
fn daemon_binary() -> Option<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin_dir = Path::new(KEELCTL).parent()?;
        let beside = bin_dir.join("keel-xenstored");
        if beside.is_file() {
            return Some(beside);
        }
        let profile = bin_dir.file_name()?;
        let target = bin_dir.parent()?.join("keelctl-tests");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--quiet", "--locked", "-p", "keel-xenstored"])
            .args(["--bin", "keel-xenstored", "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        let bin = target.join(profile).join("keel-xenstored");
        match built {
            Ok(s) if s.success() && bin.is_file() => Some(bin),
            other => {
                eprintln!("building keel-xenstored failed: {other:?}");
                None
            }
        }
    })
    .as_deref()
}

macro_rules! daemon_or_skip {
    ($name:expr) => {
        match daemon_binary() {
            Some(bin) => Daemon::start(bin, $name),
            None => {
                eprintln!("SKIP: no keel-xenstored binary (not built, and building it failed)");
                return;
            }
        }
    };
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keelctl-xs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// A daemon in the foreground on a socket of its own, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, name: &str) -> Self {
        let dir = temp_dir(name);
        let socket = dir.join("xs.sock");
        let child = Command::new(bin)
            .arg("--foreground")
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the daemon starts");
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the daemon's socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, dir, socket }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connects")
    }

    /// keelctl with this daemon's socket and the testing hook.
    fn keelctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KEELCTL);
        c.arg("--xenstore-socket")
            .arg(&self.socket)
            .args(args)
            .env("KEELCTL_NO_MODULE", "1")
            .env("KEEL_RUN_DIR", &self.dir)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.keelctl(args).output().expect("keelctl runs")
    }

    /// Runs keelctl, expecting success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "keelctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// Starts keelctl in the background, its output piped (for [`finish_ok`]).
    fn spawn(&self, args: &[&str]) -> Child {
        self.keelctl(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("keelctl runs")
    }

    /// Runs keelctl, expecting failure (status 1); its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(1), "keelctl {args:?} should fail");
        String::from_utf8(out.stderr).expect("UTF-8")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid and a valid signal touches no memory.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` to end within 20 s (killing it otherwise); its output.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.expect("keelctl ran"),
        Err(_) => {
            // SAFETY: kill touches no memory; the pid is our child's, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("keelctl did not finish within 20 s");
        }
    }
}

/// Waits for `child` (started by [`Daemon::spawn`]) as [`finish`] does, expecting success;
/// its stdout.
fn finish_ok(child: Child) -> String {
    let out = finish(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Polls `cond` for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn xenstore_verbs() {
    let d = daemon_or_skip!("verbs");
    assert_eq!(
        d.ok(&[
            "xenstore",
            "write",
            "/test/a",
            "hello",
            "/test/b/c",
            "x\\ty\\x01"
        ]),
        ""
    );
    assert_eq!(
        d.client().read(NONE, "/test/b/c").expect("written"),
        b"x\ty\x01"
    );
    d.ok(&["xenstore", "write", "-R", "/test/raw", "a\\tb"]);
    assert_eq!(
        d.ok(&["xenstore", "read", "/test/a", "/test/b/c", "/test/raw"]),
        "hello\nx\\ty\\001\na\\\\tb\n"
    );
    assert_eq!(d.ok(&["xenstore", "read", "-R", "/test/raw"]), "a\\tb\n");
    assert_eq!(
        d.ok(&["xenstore", "ls", "/test"]),
        "a = \"hello\"\nb = \"\"\n c = \"x\\ty\\001\"\nraw = \"a\\\\tb\"\n"
    );
    assert_eq!(
        d.ok(&["xenstore", "ls", "-f", "-p", "/test/b"]),
        "/test/b/c = \"x\\ty\\001\"  (n0)\n"
    );
    assert!(d.ok(&["xenstore", "ls"]).starts_with("local = \"\"\n"));
    assert_eq!(d.ok(&["xenstore", "list", "/test"]), "a\nb\nraw\n");
    assert_eq!(d.ok(&["xenstore", "perms", "/test/a"]), "n0\n");

    d.ok(&["xenstore", "rm", "/test/a", "/test/b"]);
    assert_eq!(d.ok(&["xenstore", "list", "/test"]), "raw\n");
    assert_eq!(
        d.fails(&["xenstore", "read", "/test/a"]),
        "keelctl: read /test/a: no such node (ENOENT)\n"
    );
    assert_eq!(
        d.fails(&["xenstore", "ls", "/nope"]),
        "keelctl: ls /nope: no such node (ENOENT)\n"
    );
    assert!(d
        .fails(&["xenstore", "write", "/test/x"])
        .contains("PATH VALUE pairs: no value for /test/x"));
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let d = daemon_or_skip!("pipe");
    for i in 0..3 {
        d.client()
            .write(NONE, &format!("/few/node{i}"), "v")
            .expect("write");
    }
    // `keelctl xenstore ls | head -n 0`: stdout is a pipe whose reader has gone already, so
    // the first write fails (EPIPE).
    for args in [
        &["xenstore", "ls", "/few"][..],
        &["xenstore", "list", "/few"],
    ] {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds are new and ours alone; the read end is closed at once.
        let write_end = unsafe {
            libc::close(fds[0]);
            std::os::fd::OwnedFd::from_raw_fd(fds[1])
        };
        let out = d
            .keelctl(args)
            .stdout(Stdio::from(write_end))
            .output()
            .expect("keelctl runs");
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn watch_prints_events_as_they_come() {
    let d = daemon_or_skip!("watch");
    // The first event comes at once, for the watched path itself.
    assert_eq!(d.ok(&["xenstore", "watch", "-n", "1", "/w"]), "/w /w\n");
    let mut child = d
        .keelctl(&["xenstore", "watch", "-n", "2", "/w"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("keelctl runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("first event");
    assert_eq!(first, "/w /w\n");
    d.client().write(NONE, "/w/k", "1").expect("write");
    let mut second = String::new();
    lines.read_line(&mut second).expect("second event");
    assert_eq!(second, "/w/k /w\n");
    let out = finish(child);
    assert!(out.status.success(), "watch -n 2 ends after two events");
}

#[test]
fn a_missing_daemon_is_named() {
    let dir = temp_dir("none");
    let socket = dir.join("xs.sock");
    for args in [
        &["xenstore", "ls"][..],
        &["mem-set", "3", "128"],
        &["shutdown", "3"],
    ] {
        let out = Command::new(KEELCTL)
            .arg("--xenstore-socket")
            .arg(&socket)
            .args(args)
            .env("KEELCTL_NO_MODULE", "1")
            .output()
            .expect("keelctl runs");
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "keelctl: XenStore is not running (no {}): start a domain or run \
                 keel-xenstored\n",
                socket.display()
            )
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a domain home as keel-domd lays it out (the part these verbs use), with the
/// guest's PV-control features when `pv`.
fn domain_home(c: &mut Client, domid: u32, name: &str, pv: bool) {
    let home = format!("/local/domain/{domid}");
    c.write(NONE, &format!("{home}/name"), name).expect("name");
    c.write(NONE, &format!("{home}/memory/static-max"), "262144")
        .expect("static-max");
    c.write(NONE, &format!("{home}/memory/target"), "262144")
        .expect("target");
    c.write(NONE, &format!("{home}/control/shutdown"), "")
        .expect("shutdown");
    if pv {
        for f in ["feature-poweroff", "feature-reboot"] {
            c.write(NONE, &format!("{home}/control/{f}"), "1")
                .expect("feature");
        }
    }
}

#[test]
fn mem_set_writes_the_target_in_kib() {
    let d = daemon_or_skip!("memset");
    let mut c = d.client();
    domain_home(&mut c, 5, "web", true);
    assert_eq!(d.ok(&["mem-set", "web", "128"]), "");
    assert_eq!(
        c.read_string(NONE, "/local/domain/5/memory/target")
            .unwrap(),
        "131072"
    );
    d.ok(&["mem-set", "5", "256m"]);
    assert_eq!(
        c.read_string(NONE, "/local/domain/5/memory/target")
            .unwrap(),
        "262144"
    );
    assert_eq!(
        d.fails(&["mem-set", "web", "1g"]),
        "keelctl: domain web (id 5): 1 GiB is more than its maximum memory, 256 MiB \
         (memory/static-max = 262144 KiB)\n"
    );
    assert_eq!(
        d.fails(&["mem-set", "9", "128"]),
        "keelctl: no domain with id 9\n"
    );
    assert_eq!(
        d.fails(&["mem-set", "mail", "128"]),
        "keelctl: no domain named 'mail'\n"
    );
    c.rm(NONE, "/local/domain/5/memory").unwrap();
    assert!(d
        .fails(&["mem-set", "web", "128"])
        .contains("has no /local/domain/5/memory/static-max"));
}

#[test]
fn shutdown_and_reboot_through_control_shutdown() {
    let d = daemon_or_skip!("shutdown");
    let mut c = d.client();
    domain_home(&mut c, 5, "web", true);
    domain_home(&mut c, 6, "db", true);
    domain_home(&mut c, 8, "bare", false);

    // Without -w: the request is written, nothing waits.
    assert_eq!(
        d.ok(&["shutdown", "web"]),
        "shutting down domain web (id 5)\n"
    );
    let request = |c: &mut Client, domid: u32| {
        c.read_string(NONE, &format!("/local/domain/{domid}/control/shutdown"))
            .unwrap()
    };
    assert_eq!(request(&mut c, 5), "poweroff");
    assert_eq!(d.ok(&["reboot", "6"]), "rebooting domain db (id 6)\n");
    assert_eq!(request(&mut c, 6), "reboot");

    // -w: the guest takes the request and the domain goes away.
    c.write(NONE, "/local/domain/5/control/shutdown", "")
        .unwrap();
    let child = d.spawn(&["shutdown", "-w", "--timeout", "10", "web"]);
    eventually("the poweroff request", || request(&mut c, 5) == "poweroff");
    c.write(NONE, "/local/domain/5/control/shutdown", "")
        .unwrap();
    c.rm(NONE, "/local/domain/5").unwrap();
    let out = finish_ok(child);
    assert_eq!(
        out,
        "shutting down domain web (id 5)\nwaiting for domain web (id 5) to shut down...\n\
         domain web (id 5) has shut down\n"
    );

    // reboot -w: the domain comes back under a new id.
    c.write(NONE, "/local/domain/6/control/shutdown", "")
        .unwrap();
    let child = d.spawn(&["reboot", "-w", "--timeout", "10", "db"]);
    eventually("the reboot request", || request(&mut c, 6) == "reboot");
    c.rm(NONE, "/local/domain/6").unwrap();
    domain_home(&mut c, 7, "db", true);
    let out = finish_ok(child);
    assert!(out.ends_with("domain db (id 6) has rebooted, now id 7\n"));

    // -w on a guest that never takes the request: the timeout.
    let stderr = d.fails(&["shutdown", "-w", "--timeout", "0.3", "db"]);
    assert!(
        stderr.starts_with("keelctl: domain db did not shut down within 0.3 s"),
        "{stderr}"
    );

    // No PV control: refused, or destroyed with -F (which the hook cannot do).
    assert!(d
        .fails(&["shutdown", "bare"])
        .contains("advertises no PV control"));
    assert_eq!(request(&mut c, 8), "", "nothing was written");
    let out = d.run(&["shutdown", "-F", "bare"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("advertises no PV control"));
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("destroying it\n"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot destroy domain bare (id 8)"));

    // Bad arguments.
    assert!(d
        .fails(&["shutdown", "--timeout=-1", "db"])
        .contains("positive number of seconds"));
    assert_eq!(
        d.fails(&["reboot", "nope"]),
        "keelctl: no domain named 'nope'\n"
    );
}

#[test]
fn sysrq_through_control_sysrq() {
    let d = daemon_or_skip!("sysrq");
    let mut c = d.client();
    domain_home(&mut c, 5, "web", true);
    c.write(NONE, "/local/domain/5/control/sysrq", "").unwrap();
    let key = |c: &mut Client| {
        c.read_string(NONE, "/local/domain/5/control/sysrq")
            .unwrap()
    };

    // The guest takes the key (Linux empties the node): keelctl says it was sent.
    let child = d.spawn(&["sysrq", "--timeout", "10", "web", "s"]);
    eventually("the key", || key(&mut c) == "s");
    c.write(NONE, "/local/domain/5/control/sysrq", "").unwrap();
    let out = finish_ok(child);
    assert_eq!(out, "sent sysrq 's' to domain web (id 5)\n");

    // A guest that never takes it: the timeout, and the key stays for it.
    let stderr = d.fails(&["sysrq", "--timeout", "0.3", "5", "h"]);
    assert!(
        stderr.starts_with("keelctl: domain web (id 5) did not take sysrq 'h' within 0.3 s"),
        "{stderr}"
    );
    assert_eq!(key(&mut c), "h");

    // A domain without the node (no XenStore home of the toolstack's), bad keys, no domain.
    c.write(NONE, "/local/domain/8/name", "bare").unwrap();
    assert!(d
        .fails(&["sysrq", "bare", "s"])
        .contains("has no /local/domain/8/control/sysrq"));
    for bad in ["", "hs", " "] {
        assert!(
            d.fails(&["sysrq", "web", bad])
                .contains("must be one printable character"),
            "{bad:?}"
        );
    }
    assert_eq!(
        d.fails(&["sysrq", "nope", "s"]),
        "keelctl: no domain named 'nope'\n"
    );
    assert!(d
        .fails(&["sysrq", "--timeout", "0", "web", "s"])
        .contains("positive number of seconds"));
}
