//! `keelctl console`: the domain's console as a byte stream between the terminal and its
//! keel-domd, as `xl console`. On a terminal, raw mode (restored on every way out) and
//! Ctrl-] detaches; otherwise stdin is forwarded until its end and the output printed until
//! the domain ends, Ctrl-] in the input, or the timeout.
use std::{
    io::{self, Read, Write},
    net::Shutdown,
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use keel_domd::proto::{self, Request};

/// The byte that detaches: Ctrl-] (0x1d), xl's.
pub const ESCAPE: u8 = 0x1d;

/// Raw mode on a terminal for as long as this lives.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    /// Puts `fd` in raw mode if it is a terminal; `None` if it is not.
    fn enter(fd: i32) -> Option<RawMode> {
        // SAFETY: isatty takes no pointers.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: a zeroed termios is a valid value for tcgetattr to fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a live termios for the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: `raw` is a live termios; cfmakeraw only edits it.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a live termios for the call.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) };
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` is the live termios read at entry.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// What to send of `input`: the bytes before an [`ESCAPE`], and whether there was one.
pub fn split_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|&b| b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// Copies `stdin` to the console until its end or an escape; on an escape, closes the
/// connection so that the output side ends too.
fn forward_input(mut stream: UnixStream, detached: Arc<AtomicBool>) {
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (send, escape) = split_escape(&buf[..n]);
        if stream.write_all(send).is_err() {
            return;
        }
        if escape {
            detached.store(true, Ordering::SeqCst);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Attaches to the console at `socket` of domain `name` until the domain ends, the user
/// detaches, or `timeout` passes.
pub fn attach(name: &str, socket: &Path, timeout: Option<Duration>) -> Result<(), String> {
    let (reply, mut stream, rest) =
        proto::request(socket, &Request::Console, Duration::from_secs(5))
            .map_err(|e| format!("domain {name}: {e}"))?;
    if !reply.ok {
        return Err(reply
            .error
            .unwrap_or_else(|| format!("domain {name} refused the console")));
    }
    let raw = RawMode::enter(0);
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(&rest);
    let _ = stdout.flush();
    let detached = Arc::new(AtomicBool::new(false));
    let input = stream.try_clone().map_err(|e| format!("console: {e}"))?;
    {
        let detached = detached.clone();
        std::thread::spawn(move || forward_input(input, detached));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 4096];
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) || detached.load(Ordering::SeqCst) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    drop(raw);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_detaches() {
        assert_eq!(split_escape(b"ls\n"), (&b"ls\n"[..], false));
        assert_eq!(split_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_escape(b"\x1d"), (&b""[..], true));
    }

    #[test]
    fn raw_mode_needs_a_terminal() {
        // A pipe is no terminal: pipe mode, nothing to restore.
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(RawMode::enter(fds[0]).is_none());
        // SAFETY: closing the two fds pipe made, which nothing else uses.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
