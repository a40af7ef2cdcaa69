//! The control socket's protocol. A client connects to the domain's socket and sends one
//! request line; the process answers one line of JSON, a [`Reply`]. The requests without
//! arguments are a bare word (`status`, `destroy`, `pause`, `unpause`, `console`,
//! `block-list`), as they always were; those with arguments (`block-attach`, `block-detach`)
//! are a JSON object naming the request (`{"request":"block-attach","spec":"..."}`), which
//! the bare words may also be sent as. After a successful `console` the connection becomes
//! the console: the client's bytes go to the guest's input, the guest's output comes back.
use std::{
    fmt,
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The longest request line a process reads (a disk spec holds a path, up to 4096 bytes).
pub const REQUEST_MAX: usize = 8192;

/// How long `block-detach` waits for the guest to release a disk (libxl's
/// `LIBXL_DESTROY_TIMEOUT`).
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(10);

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
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
    /// Add a disk to the running domain, as `xl block-attach`.
    BlockAttach {
        /// The disk, in xl's disk syntax (xl-disk-configuration(5)).
        spec: String,
    },
    /// Remove a disk, as `xl block-detach`: the guest is asked to release it first (the
    /// answer comes once it has, or after [`DETACH_TIMEOUT`]), unless `force`.
    BlockDetach {
        /// Its vdev (`xvdb`) or device number (`51728`).
        device: String,
        /// Remove it without waiting for the guest.
        #[serde(default)]
        force: bool,
    },
    /// The domain's disks ([`Reply::disks`]), as `xl block-list`.
    BlockList,
    /// Add a vif to the running domain, as `xl network-attach`.
    NetworkAttach {
        /// The vif, in xl's vif syntax (xl-network-configuration(5)).
        spec: String,
    },
    /// Remove a vif, as `xl network-detach`: the guest is asked to release it first, as
    /// for a disk, unless `force`.
    NetworkDetach {
        /// Its device id (`1`) or its MAC address.
        device: String,
        /// Remove it without waiting for the guest.
        #[serde(default)]
        force: bool,
    },
    /// The domain's vifs ([`Reply::nics`]), as `xl network-list`.
    NetworkList,
}

impl Request {
    /// The request's name, its whole line when it has no arguments.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Destroy => "destroy",
            Self::Pause => "pause",
            Self::Unpause => "unpause",
            Self::Console => "console",
            Self::BlockAttach { .. } => "block-attach",
            Self::BlockDetach { .. } => "block-detach",
            Self::BlockList => "block-list",
            Self::NetworkAttach { .. } => "network-attach",
            Self::NetworkDetach { .. } => "network-detach",
            Self::NetworkList => "network-list",
        }
    }

    /// The request's line on the wire, without its newline: the bare word when it has no
    /// arguments (what every keel-domd understands), JSON otherwise.
    pub fn line(&self) -> String {
        match self {
            Self::BlockAttach { .. }
            | Self::BlockDetach { .. }
            | Self::NetworkAttach { .. }
            | Self::NetworkDetach { .. } => {
                serde_json::to_string(self).expect("plain data serializes")
            }
            _ => self.word().to_owned(),
        }
    }

    /// Parses a request line (without its newline).
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim();
        if line.starts_with('{') {
            return serde_json::from_str(line).map_err(|e| format!("bad request {line:?}: {e}"));
        }
        [
            Self::Status,
            Self::Destroy,
            Self::Pause,
            Self::Unpause,
            Self::Console,
            Self::BlockList,
            Self::NetworkList,
        ]
        .into_iter()
        .find(|r| r.word() == line)
        .ok_or_else(|| format!("unknown request {line:?}"))
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

/// One disk of a domain, as `block-list` reports it (libxl's `libxl_diskinfo`, read from
/// XenStore as `libxl_device_disk_getinfo` reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// The vdev as configured (`xvdb`).
    pub vdev: String,
    /// Its device number (51728): xl's Vdev column.
    pub devid: u32,
    /// The backend's domain (Dom0): xl's BE column.
    pub backend_id: u32,
    /// The guest's domid: xl's "handle" column (libxl fills it with the frontend's id).
    pub frontend_id: u32,
    /// The frontend's xenbus state (1 Initialising .. 4 Connected, 5 Closing, 6 Closed):
    /// xl's "state" column; `None` when the node is missing.
    pub state: Option<u32>,
    /// The backend's xenbus state.
    pub backend_state: Option<u32>,
    /// The frontend's `event-channel`: xl's evt-ch column. Missing (-1 in xl) before the
    /// frontend connects and with several rings, whose keys are under `queue-N/`.
    pub event_channel: Option<u32>,
    /// The frontend's `ring-ref`: xl's ring-ref column, missing as `event_channel` is.
    pub ring_ref: Option<u32>,
    /// The rings the frontend set up (`multi-queue-num-queues`, 1 without it); 0 before it
    /// connects.
    pub queues: u32,
    /// The backend's directory: xl's BE-path column.
    pub backend_path: String,
    /// The frontend's directory.
    pub frontend_path: String,
    /// The file or device served.
    pub target: String,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

/// One vif of a domain, as `network-list` reports it (libxl's `libxl_nicinfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    /// The device id: xl's Idx column.
    pub devid: u32,
    /// The backend's domain (Dom0): xl's BE column.
    pub backend_id: u32,
    /// The guest's MAC address: xl's "Mac Addr." column.
    pub mac: String,
    /// The guest's domid: xl's "handle" column.
    pub frontend_id: u32,
    /// The frontend's xenbus state: xl's "state" column; `None` when the node is missing.
    pub state: Option<u32>,
    /// The backend's xenbus state.
    pub backend_state: Option<u32>,
    /// The frontend's `event-channel`: xl's evt-ch column (missing before it connects).
    pub event_channel: Option<u32>,
    /// The frontend's `tx-ring-ref` and `rx-ring-ref`: xl's "tx-/rx-ring-ref" column.
    pub tx_ring_ref: Option<u32>,
    /// See `tx_ring_ref`.
    pub rx_ring_ref: Option<u32>,
    /// The backend's directory: xl's BE-path column.
    pub backend_path: String,
    /// The TAP device in Dom0.
    pub tap: String,
    /// How it is connected (`bridge br0`, `routed 10.0.0.2`).
    pub mode: String,
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
    /// The disks, for `block-list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<BlockInfo>>,
    /// The vifs, for `network-list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<NicInfo>>,
}

impl Reply {
    /// Success.
    pub fn ok() -> Self {
        Self {
            ok: true,
            error: None,
            status: None,
            disks: None,
            nics: None,
        }
    }

    /// Failure with `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            status: None,
            disks: None,
            nics: None,
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
    request: &Request,
    timeout: Duration,
) -> Result<(Reply, UnixStream, Vec<u8>), ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(ClientError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ClientError::Io)?;
    stream
        .write_all(format!("{}\n", request.line()).as_bytes())
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

    fn all_requests() -> Vec<Request> {
        vec![
            Request::Status,
            Request::Destroy,
            Request::Pause,
            Request::Unpause,
            Request::Console,
            Request::BlockList,
            Request::BlockAttach {
                spec: "format=raw, vdev=xvdb, access=rw, target=/srv/a \"b\".img".into(),
            },
            Request::BlockDetach {
                device: "xvdb".into(),
                force: true,
            },
            Request::NetworkList,
            Request::NetworkAttach {
                spec: "bridge=br0, mac=00:16:3e:00:00:01".into(),
            },
            Request::NetworkDetach {
                device: "1".into(),
                force: false,
            },
        ]
    }

    #[test]
    fn requests_round_trip() {
        for r in all_requests() {
            let line = r.line();
            assert!(!line.contains('\n'), "{line:?} is not one line");
            assert_eq!(Request::parse(&line), Ok(r.clone()));
            assert_eq!(Request::parse(&format!("{line}\r")), Ok(r));
        }
        assert_eq!(Request::parse("pause\r"), Ok(Request::Pause));
        assert_eq!(
            Request::parse("reboot").unwrap_err(),
            "unknown request \"reboot\""
        );
    }

    #[test]
    fn old_words_stay_bare_and_new_requests_are_json() {
        // What a keel-domd from before block-attach understands is still sent as it was.
        for (r, word) in [
            (Request::Status, "status"),
            (Request::Destroy, "destroy"),
            (Request::Pause, "pause"),
            (Request::Unpause, "unpause"),
            (Request::Console, "console"),
            (Request::BlockList, "block-list"),
        ] {
            assert_eq!(r.line(), word);
        }
        assert_eq!(
            Request::BlockAttach {
                spec: "/a,raw,xvdb,rw".into()
            }
            .line(),
            r#"{"request":"block-attach","spec":"/a,raw,xvdb,rw"}"#
        );
        assert_eq!(
            Request::BlockDetach {
                device: "51728".into(),
                force: false
            }
            .line(),
            r#"{"request":"block-detach","device":"51728","force":false}"#
        );
        // The bare words in JSON; force defaults to off.
        assert_eq!(
            Request::parse(r#"{"request":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            Request::parse(r#"{"request":"block-detach","device":"xvdb"}"#),
            Ok(Request::BlockDetach {
                device: "xvdb".into(),
                force: false
            })
        );
        for bad in [
            r#"{"request":"block-attach"}"#,
            r#"{"request":"block-attach","spec":"x","extra":1}"#,
            r#"{"request":"reboot"}"#,
            "{",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(e.starts_with("bad request"), "{bad}: {e}");
        }
        assert!(
            Request::BlockAttach {
                spec: "x".repeat(4096)
            }
            .line()
            .len()
                < REQUEST_MAX
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
    fn a_block_list_reply() {
        let mut r = Reply::ok();
        r.disks = Some(vec![BlockInfo {
            vdev: "xvdb".into(),
            devid: 51728,
            backend_id: 0,
            frontend_id: 3,
            state: Some(4),
            backend_state: Some(4),
            event_channel: None,
            ring_ref: None,
            queues: 2,
            backend_path: "/local/domain/0/backend/vbd/3/51728".into(),
            frontend_path: "/local/domain/3/device/vbd/51728".into(),
            target: "/srv/b.img".into(),
            read_only: false,
        }]);
        let back: Reply = serde_json::from_str(r.line().trim_end()).unwrap();
        assert_eq!(back, r);
        // A reply from a keel-domd without disks still reads.
        let old: Reply = serde_json::from_str(r#"{"ok":true}"#).unwrap();
        assert_eq!(old.disks, None);
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
            request(&path, &Request::Console, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
        assert!(reply.ok);
        // What followed the reply line may have come in the same read.
        assert!(b"guest output".starts_with(&rest));
        let e = request(
            &dir.join("none.sock"),
            &Request::Status,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("cannot connect"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
