//! The daemon binary on a temporary socket, driven through the client library. It runs as
//! the current user, whose uid the daemon accepts as its own (root in CI, anyone locally).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_xenstored::client::{connect_domain, Client, Error, TxId, WatchEvent};
use keel_xenstored::perms::Perms;
use keel_xenstored::wire::{self, Decoder, MsgType};
use keel_xenstored::Errno;

const BIN: &str = env!("CARGO_BIN_EXE_keel-xenstored");
const NONE: TxId = TxId::NONE;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("keel-xs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A daemon in the foreground, stopped (SIGTERM) when dropped.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    fn start(name: &str, extra: &[&str]) -> Self {
        let socket = temp_dir(name).join("xs.sock");
        let child = Command::new(BIN)
            .arg("--foreground")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("the daemon starts");
        wait_for(&socket);
        Self { child, socket }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connects")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill with our own child's pid and a valid signal touches no memory.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn xs_err<T: std::fmt::Debug>(r: Result<T, Error>) -> Errno {
    match r {
        Err(Error::Xs(e)) => e,
        other => panic!("expected an xenstored error, got {other:?}"),
    }
}

fn event(path: &str, token: &str) -> WatchEvent {
    WatchEvent {
        path: path.into(),
        token: token.into(),
    }
}

#[test]
fn dom0_operations_through_the_client() {
    let d = Daemon::start("ops", &[]);
    let mut c = d.client();
    c.write(NONE, "/vm/a/b", "hello").expect("write");
    assert_eq!(c.read_string(NONE, "/vm/a/b").expect("read"), "hello");
    assert_eq!(c.directory(NONE, "/vm/a").expect("dir"), ["b"]);
    c.mkdir(NONE, "/vm/c").expect("mkdir");
    let perms = Perms::parse(&[b"n0", b"r3"]).expect("perms");
    c.set_perms(NONE, "/vm/c", &perms).expect("set_perms");
    assert_eq!(c.get_perms(NONE, "/vm/c").expect("get_perms"), perms);
    c.rm(NONE, "/vm").expect("rm");
    assert_eq!(xs_err(c.read(NONE, "/vm/a/b")), Errno::ENOENT);
    assert_eq!(c.get_domain_path(4).expect("path"), "/local/domain/4");
    assert!(!c.is_domain_introduced(4).expect("introduced?"));

    // Transactions: commit, and EAGAIN on a conflict.
    let mut other = d.client();
    let t = c.transaction_start().expect("start");
    c.write(t, "/t/x", "in-tx").expect("tx write");
    assert_eq!(xs_err(other.read(NONE, "/t/x")), Errno::ENOENT);
    c.transaction_end(t, true).expect("commit");
    assert_eq!(other.read_string(NONE, "/t/x").expect("read"), "in-tx");
    let t = c.transaction_start().expect("start");
    c.read(t, "/t/x").expect("tx read");
    other.write(NONE, "/t/x", "meanwhile").expect("write");
    assert_eq!(xs_err(c.transaction_end(t, true)), Errno::EAGAIN);

    // Watches: the first event at once, then changes, across clients.
    c.watch("/w", "tok").expect("watch");
    assert_eq!(c.next_event().expect("first"), event("/w", "tok"));
    other.write(NONE, "/w/k", "1").expect("write");
    let got = c
        .next_event_timeout(Some(Duration::from_secs(5)))
        .expect("event");
    assert_eq!(got, Some(event("/w/k", "tok")));
    c.unwatch("/w", "tok").expect("unwatch");
    other.write(NONE, "/w/k", "2").expect("write");
    assert_eq!(
        c.next_event_timeout(Some(Duration::from_millis(200)))
            .expect("none"),
        None
    );
}

/// Sends one raw request on a domain connection and reads one reply.
fn domu_request(s: &mut UnixStream, ty: MsgType, req_id: u32, payload: &[u8]) -> (u32, Vec<u8>) {
    s.write_all(&wire::encoded(ty as u32, req_id, 0, payload))
        .expect("send");
    let mut d = Decoder::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = d.next_message().expect("valid") {
            if m.header.ty == MsgType::WatchEvent as u32 {
                continue;
            }
            assert_eq!(m.header.req_id, req_id);
            return (m.header.ty, m.payload);
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "daemon closed the connection");
        d.push(&buf[..n]);
    }
}

#[test]
fn a_domain_connection_acts_as_its_domu() {
    let d = Daemon::start("domu", &[]);
    let mut c = d.client();
    assert_eq!(xs_err(connect_domain(&d.socket, 5)), Errno::ENOENT);
    c.introduce(5, 0x1000, 1).expect("introduce");
    c.introduce(6, 0x1000, 1).expect("introduce");
    assert!(c.is_domain_introduced(5).expect("introduced?"));
    for (dom, home) in [(5, "/local/domain/5"), (6, "/local/domain/6")] {
        c.mkdir(NONE, home).expect("home");
        let p = Perms::parse(&[b"n0", format!("r{dom}").as_bytes()]).expect("perms");
        c.set_perms(NONE, home, &p).expect("perms");
        let data = format!("{home}/data");
        c.mkdir(NONE, &data).expect("data");
        let p = Perms::parse(&[format!("n{dom}").as_bytes()]).expect("perms");
        c.set_perms(NONE, &data, &p).expect("perms");
    }
    c.write(NONE, "/local/domain/6/data/secret", "six")
        .expect("write");

    let mut s5 = connect_domain(&d.socket, 5).expect("handshake");
    assert_eq!(xs_err(connect_domain(&d.socket, 5)), Errno::EISCONN);
    // Relative paths, its own permissions.
    let (ty, p) = domu_request(&mut s5, MsgType::Write, 1, b"data/x\0five");
    assert_eq!((ty, p.as_slice()), (MsgType::Write as u32, &b"OK\0"[..]));
    assert_eq!(
        c.read_string(NONE, "/local/domain/5/data/x").expect("read"),
        "five"
    );
    let (ty, p) = domu_request(&mut s5, MsgType::Read, 2, b"/local/domain/6/data/secret\0");
    assert_eq!(
        (ty, p.as_slice()),
        (MsgType::Error as u32, &b"EACCES\0"[..])
    );
    let (ty, p) = domu_request(&mut s5, MsgType::Introduce, 3, b"7\0 0\0 0\0");
    assert_eq!(
        (ty, p.as_slice()),
        (MsgType::Error as u32, &b"EACCES\0"[..])
    );

    // Release: @releaseDomain fires for Dom0, the domain's connection is closed.
    c.watch("@releaseDomain", "rel").expect("watch");
    assert_eq!(
        c.next_event().expect("first"),
        event("@releaseDomain", "rel")
    );
    c.release(5).expect("release");
    let got = c
        .next_event_timeout(Some(Duration::from_secs(5)))
        .expect("event");
    assert_eq!(got, Some(event("@releaseDomain", "rel")));
    s5.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert_eq!(s5.read(&mut buf).expect("EOF, not a timeout"), 0);
    assert_eq!(
        xs_err(c.read(NONE, "/local/domain/5/data/x")),
        Errno::ENOENT
    );
}

#[test]
fn a_hostile_client_is_dropped_and_others_go_on() {
    let d = Daemon::start("hostile", &[]);
    let mut good = d.client();
    let mut bad = UnixStream::connect(&d.socket).expect("connects");
    let h = wire::Header {
        ty: MsgType::Read as u32,
        req_id: 1,
        tx_id: 0,
        len: u32::MAX,
    };
    bad.write_all(&h.to_bytes()).expect("send");
    bad.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    assert_eq!(bad.read(&mut buf).expect("closed"), 0);
    good.write(NONE, "/still", "here").expect("write");
    assert_eq!(good.read_string(NONE, "/still").expect("read"), "here");
}

#[test]
fn it_detaches_with_a_pid_file_and_stops_on_sigterm() {
    let dir = temp_dir("detach");
    let socket = dir.join("xs.sock");
    let pid_file = dir.join("xs.pid");
    let log = dir.join("xs.log");
    let status = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--log")
        .arg(&log)
        .status()
        .expect("runs");
    assert!(status.success());
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("pid file written before the command returns")
        .trim()
        .parse()
        .expect("a pid");
    let mut c = Client::connect(&socket).expect("the socket is there");
    c.write(NONE, "/x", "1").expect("works");
    // A second daemon on the same socket refuses to start.
    let second = Command::new(BIN)
        .args(["--foreground", "--socket"])
        .arg(&socket)
        .stderr(Stdio::null())
        .status()
        .expect("runs");
    assert!(!second.success());
    // SAFETY: kill with the daemon's pid (which this test started) touches no memory.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = Instant::now();
    while pid_file.exists() || socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not clean up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("listening on"), "{text}");
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("keel-xenstored "));
    let out = Command::new(BIN).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("0x4b45") && help.contains("--socket"),
        "{help}"
    );
}

/// The systemd unit (`keel-xenstored.service`, installed by `make install`): with the
/// binary's directory for `@SBINDIR@` it passes `systemd-analyze verify`, and its ExecStart
/// line, on a temporary socket, runs a daemon that serves and stops on SIGTERM.
#[test]
fn the_systemd_unit_verifies_and_its_command_serves() {
    let unit = include_str!("../keel-xenstored.service");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let dir = temp_dir("unit");
    let text = unit.replace("@SBINDIR@", bin_dir.to_str().expect("a UTF-8 path"));
    let path = dir.join("keel-xenstored.service");
    std::fs::write(&path, &text).expect("unit written");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !complaints.contains("keel-xenstored.service"),
        "systemd-analyze verify: {} {complaints}",
        out.status
    );
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let socket = dir.join("xs.sock");
    let mut words: Vec<String> = exec.split_whitespace().map(String::from).collect();
    let at = words
        .iter()
        .position(|w| w == "--socket")
        .expect("--socket in ExecStart");
    words[at + 1] = socket.to_str().expect("a UTF-8 path").into();
    let mut child = Command::new(&words[0])
        .args(&words[1..])
        .stdin(Stdio::null())
        .spawn()
        .expect("ExecStart's command starts");
    wait_for(&socket);
    let mut c = Client::connect(&socket).expect("connects");
    c.write(NONE, "/unit-test", b"up").expect("write");
    assert_eq!(c.read(NONE, "/unit-test").expect("read"), b"up");
    drop(c);
    // SAFETY: kill with our own child's pid and a valid signal touches no memory.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("waited");
    assert!(status.success(), "SIGTERM ends it cleanly: {status}");
    assert!(!socket.exists(), "the socket is removed at exit");
}
