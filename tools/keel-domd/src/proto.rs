//! The control socket's protocol. A client connects to the domain's socket and sends one
//! request line (`status`, `destroy`, `pause`, `unpause` or `console`); the process answers
//! one line of JSON, a [`Reply`]. After a successful `console` the connection becomes the
//! console: the client's bytes go to the guest's input, the guest's output comes back.
use std::{
    fmt,
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// A request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The domain's [`Status`].
    Status,
    /// End the domain and its process.
    Destroy,
    /// Pause the domain's vCPUs.
    Pause,
    /// Undo a pause.
    Unpause,
    /// Attach the console (the one attached before, if any, is detached).
    Console,
}

impl Request {
    /// The request's word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Destroy => "destroy",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Console => "console",
        }
    }

    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, String> {
        [
            Self::Status,
            Self::Destroy,
            Self::Pause,
            Self::Unpause,
            Self::Console,
        ]
        .into_iter()
        .find(|r| r.word() == line.trim())
        .ok_or_else(|| format!("unknown request {:?}", line.trim()))
    }
}

/// What the domain is doing, as its process knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Its vCPUs run (or wait for events).
    Running,
    /// Paused by `pause` or `create -p`.
    Paused,
    /// It shut down and is preserved (on_poweroff/on_reboot = "preserve").
    Shutdown,
    /// It crashed and is preserved (on_crash = "preserve").
    Crashed,
    /// Being torn down.
    Dying,
}

/// The domain's process's view of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The domain's name.
    pub name: String,
    /// Its current domid.
    pub domid: u32,
    /// The process's pid.
    pub pid: u32,
    /// Its state.
    pub state: RunState,
    /// Why it shut down or crashed, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How often it was restarted.
    pub restarts: u32,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The status, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

impl Reply {
    /// Success.
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
        }
    }

    /// Failure with `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            status: None,
        }
    }

    /// The reply as its line on the wire.
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes") + "\n"
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting failed (no process listens: it is gone or wedged before accept).
    Connect(io::Error),
    /// Sending or receiving failed, or the answer did not come in time.
    Io(io::Error),
    /// The answer was not a [`Reply`].
    BadReply(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect to the domain's process: {e}"),
            Self::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {
                write!(f, "the domain's process did not answer in time")
            }
            Self::Io(e) => write!(f, "talking to the domain's process failed: {e}"),
            Self::BadReply(line) => write!(f, "the domain's process answered {line:?}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends `request` to the socket at `socket` and reads the reply, each step within `timeout`.
/// Returns the reply and the connection (the console, after `console`) with its read timeout
/// cleared; any bytes that came after the reply line are returned too.
pub fn request(
    socket: &Path,
    request: Request,
    timeout: Duration,
) -> Result<(Reply, UnixStream, Vec<u8>), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(ClientError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ClientError::Io)?;
    stream
        .write_all(format!("{}\n", request.word()).as_bytes())
        .map_err(ClientError::Io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(ClientError::Io)?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(ClientError::Io)?;
    if line.is_empty() {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "it closed the connection",
        )));
    }
    let reply: Reply =
        serde_json::from_str(line.trim_end()).map_err(|_| ClientError::BadReply(line.clone()))?;
    let rest = reader.buffer().to_vec();
    stream.set_read_timeout(None).map_err(ClientError::Io)?;
    stream.set_write_timeout(None).map_err(ClientError::Io)?;
    Ok((reply, stream, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status,
            Request::Destroy,
            Request::Pause,
            Request::Unpause,
            Request::Console,
        ] {
            assert_eq!(Request::parse(r.word()), Ok(r));
        }
        assert_eq!(Request::parse("pause\r"), Ok(Request::Pause));
        assert_eq!(
            Request::parse("reboot").unwrap_err(),
            "unknown request \"reboot\""
        );
    }

    #[test]
    fn replies_are_one_json_line() {
        assert_eq!(Reply::ok().line(), "{\"ok\":true}\n");
        assert_eq!(
            Reply::error("not paused").line(),
            "{\"ok\":false,\"error\":\"not paused\"}\n"
        );
        let mut r = Reply::ok();
        r.status = Some(Status {
            name: "a".into(),
            domid: 2,
            pid: 10,
            state: RunState::Crashed,
            reason: Some("crash".into()),
            restarts: 0,
        });
        let back: Reply = serde_json::from_str(r.line().trim_end()).unwrap();
        assert_eq!(back, r);
        assert!(r.line().contains("\"state\":\"crashed\""));
    }

    #[test]
    fn a_request_over_a_socket() {
        let dir = std::env::temp_dir().join(format!("keel-proto-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("d.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            assert_eq!(Request::parse(&line), Ok(Request::Console));
            (&s).write_all(Reply::ok().line().as_bytes()).unwrap();
            (&s).write_all(b"guest output").unwrap();
        });
        let (reply, _stream, rest) =
            request(&path, Request::Console, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert!(reply.ok);
        // What followed the reply line may have come in the same read.
        assert!(b"guest output".starts_with(&rest));
        let e = request(
            &dir.join("none.sock"),
            Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot connect"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
