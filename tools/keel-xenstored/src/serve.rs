//! The event loop: one thread, `poll(2)` over the listening socket and every client, bytes
//! between the sockets and [`XenStore`].

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};

use keel_xenstored::{ConnId, XenStore};

/// Connections served at once; more are refused (each costs a little memory and a poll slot).
const MAX_CLIENTS: usize = 1024;
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 16 << 10;
/// How long a poll waits, so that a stop request is seen even without a signal's EINTR.
const POLL_MS: i32 = 1000;

/// Writes a line to the log (stderr, which `--log` and daemonizing point at a file).
pub fn log(msg: &str) {
    eprintln!("keel-xenstored: {msg}");
}

/// The uid of the process at the other end of `s` (`SO_PEERCRED`).
fn peer_uid(s: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is the open socket `s` owns; `cred` and `len` are valid for writes of
    // the sizes given and live across the call.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Who may connect.
pub struct Access {
    /// uids accepted besides 0.
    pub uids: Vec<u32>,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid)
    }
}

/// Serves until `stop` is set.
pub fn run(
    listener: &UnixListener,
    xs: &mut XenStore,
    access: &Access,
    stop: &AtomicBool,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut clients: BTreeMap<ConnId, UnixStream> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let ids: Vec<ConnId> = clients.keys().copied().collect();
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for id in &ids {
            let mut events = 0;
            if xs.input_room(*id) > 0 {
                events |= libc::POLLIN;
            }
            if !xs.output(*id).is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: clients[id].as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures that lives across
        // the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            accept_all(listener, xs, access, &mut clients);
        }
        for (id, pfd) in ids.iter().zip(&fds[1..]) {
            let Some(stream) = clients.get_mut(id) else {
                continue;
            };
            let gone = if pfd.revents & libc::POLLOUT != 0 {
                flush(xs, *id, stream).is_err()
            } else {
                false
            };
            let gone = gone
                || if pfd.revents & libc::POLLIN != 0 {
                    receive(xs, *id, stream)
                } else {
                    pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
                };
            if gone {
                clients.remove(id);
                xs.disconnect(*id);
            }
        }
        // Requests queue replies and events everywhere: send what can go now, close what
        // should be closed.
        let ids: Vec<ConnId> = clients.keys().copied().collect();
        for id in ids {
            let failed = match clients.get_mut(&id) {
                Some(s) => flush(xs, id, s).is_err(),
                None => continue,
            };
            if failed || xs.should_close(id) {
                clients.remove(&id);
                xs.disconnect(id);
            }
        }
        for line in xs.take_log() {
            log(&line);
        }
    }
    Ok(())
}

fn accept_all(
    listener: &UnixListener,
    xs: &mut XenStore,
    access: &Access,
    clients: &mut BTreeMap<ConnId, UnixStream>,
) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: try again at the next poll.
                log(&format!("accept: {e}"));
                return;
            }
        };
        match peer_uid(&stream) {
            Ok(uid) if access.allows(uid) => {}
            Ok(uid) => {
                log(&format!("refused a client of uid {uid}: not privileged"));
                continue;
            }
            Err(e) => {
                log(&format!("refused a client: SO_PEERCRED: {e}"));
                continue;
            }
        }
        if clients.len() >= MAX_CLIENTS {
            log("refused a client: too many connections");
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log(&format!("refused a client: {e}"));
            continue;
        }
        let id = xs.connect();
        clients.insert(id, stream);
    }
}

/// Reads what the connection may take now; `true` when the client is gone.
fn receive(xs: &mut XenStore, id: ConnId, stream: &mut UnixStream) -> bool {
    let room = xs.input_room(id).min(READ_CHUNK);
    if room == 0 {
        return false;
    }
    let mut buf = vec![0u8; room];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            xs.receive(id, &buf[..n]);
            false
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            false
        }
        Err(_) => true,
    }
}

/// Writes queued output until the socket would block.
fn flush(xs: &mut XenStore, id: ConnId, stream: &mut UnixStream) -> io::Result<()> {
    loop {
        let out = xs.output(id);
        if out.is_empty() {
            return Ok(());
        }
        match stream.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => xs.consume_output(id, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
