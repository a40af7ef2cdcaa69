//! A blocking XenStore client over the daemon's Unix socket, for Keel's tools (libxenstore's
//! place): one request at a time, watch events kept aside until asked for.
//!
//! Operations take the transaction they belong to, [`TxId::NONE`] outside one, as
//! libxenstore's `xs_transaction_t` does. Errors the daemon answers come back as
//! [`Error::Xs`] with the errno (EAGAIN from [`Client::transaction_end`] means "retry the
//! transaction").
//!
//! Events arrive interleaved with replies; those read along with a reply wait in the client.
//! To wait for events with `poll(2)` on [`Client::as_raw_fd`] (with other fds), first take
//! [`Client::pending_event`] until it gives `None`: the socket is not readable for events
//! already read.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::perms::Perms;
use crate::wire::{self, split_strings, Decoder, Errno, Message, MsgType, PAYLOAD_MAX};
use crate::DomId;

/// What can go wrong.
#[derive(Debug)]
pub enum Error {
    /// The socket.
    Io(io::Error),
    /// The daemon's answer: an errno by name.
    Xs(Errno),
    /// The daemon said something that does not fit the protocol.
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "xenstored connection: {e}"),
            Error::Xs(e) => write!(f, "xenstored: {e}"),
            Error::Protocol(s) => write!(f, "xenstored protocol: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Errno> for Error {
    fn from(e: Errno) -> Self {
        Error::Xs(e)
    }
}

impl Error {
    /// The errno the daemon answered, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Xs(e) => Some(*e),
            _ => None,
        }
    }
}

/// The client's result.
pub type Result<T> = std::result::Result<T, Error>;

/// A transaction (`xs_transaction_t`); [`TxId::NONE`] is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxId(pub u32);

impl TxId {
    /// Outside any transaction (`XBT_NULL`).
    pub const NONE: TxId = TxId(0);
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (relative when the watch was set relative).
    pub path: String,
    /// The watch's token.
    pub token: String,
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    decoder: Decoder,
    next_req: u32,
    events: VecDeque<WatchEvent>,
}

fn utf8(b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::Protocol("non-UTF-8 string".into()))
}

fn strip_nul(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\0").unwrap_or(b)
}

impl Client {
    /// Connects to the daemon's socket (as Dom0).
    pub fn connect(socket: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::from_stream(UnixStream::connect(socket)?))
    }

    /// A client over a connected stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        Self {
            stream,
            decoder: Decoder::new(),
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    /// Reads more bytes; `Ok(false)` when `deadline` passed first (`None` waits forever).
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool> {
        let timeout = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => Some(Duration::from_micros(1)),
            },
        };
        self.stream.set_read_timeout(timeout)?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => {
                self.decoder.push(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// The next message, reading as needed until `deadline`.
    fn next_message(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    fn keep_event(&mut self, m: &Message) -> Result<()> {
        let s = split_strings(&m.payload);
        if s.len() < 2 {
            return Err(Error::Protocol("watch event without path and token".into()));
        }
        self.events.push_back(WatchEvent {
            path: utf8(s[0])?,
            token: utf8(s[1])?,
        });
        Ok(())
    }

    /// Sends one request and waits for its answer, keeping events that come before it.
    fn request(&mut self, ty: MsgType, tx: TxId, payload: &[u8]) -> Result<Vec<u8>> {
        if payload.len() > PAYLOAD_MAX {
            return Err(Error::Xs(Errno::E2BIG));
        }
        let req_id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.stream
            .write_all(&wire::encoded(ty as u32, req_id, tx.0, payload))?;
        loop {
            let Some(m) = self.next_message(None)? else {
                continue;
            };
            match m.msg_type() {
                Some(MsgType::WatchEvent) => self.keep_event(&m)?,
                Some(MsgType::Error) if m.header.req_id == req_id => {
                    return Err(Errno::from_name(&m.payload)
                        .map_or_else(|| Error::Protocol("unknown error name".into()), Error::Xs))
                }
                Some(t) if t == ty && m.header.req_id == req_id => return Ok(m.payload),
                _ => {
                    return Err(Error::Protocol(format!(
                        "unexpected message type {} for request {req_id}",
                        m.header.ty
                    )))
                }
            }
        }
    }

    fn path_request(&mut self, ty: MsgType, tx: TxId, path: &str) -> Result<Vec<u8>> {
        self.request(ty, tx, format!("{path}\0").as_bytes())
    }

    /// READ: the value at `path`.
    pub fn read(&mut self, tx: TxId, path: &str) -> Result<Vec<u8>> {
        self.path_request(MsgType::Read, tx, path)
    }

    /// READ, as text (values are conventionally ASCII).
    pub fn read_string(&mut self, tx: TxId, path: &str) -> Result<String> {
        utf8(&self.read(tx, path)?)
    }

    /// WRITE: sets the value, creating the node and missing parents.
    pub fn write(&mut self, tx: TxId, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        let mut p = format!("{path}\0").into_bytes();
        p.extend_from_slice(value.as_ref());
        self.request(MsgType::Write, tx, &p).map(drop)
    }

    /// MKDIR: makes sure the node exists.
    pub fn mkdir(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.path_request(MsgType::Mkdir, tx, path).map(drop)
    }

    /// RM: removes the node and everything below.
    pub fn rm(&mut self, tx: TxId, path: &str) -> Result<()> {
        self.path_request(MsgType::Rm, tx, path).map(drop)
    }

    /// DIRECTORY: the names of the children.
    pub fn directory(&mut self, tx: TxId, path: &str) -> Result<Vec<String>> {
        let p = self.path_request(MsgType::Directory, tx, path)?;
        split_strings(&p).into_iter().map(utf8).collect()
    }

    /// GET_PERMS.
    pub fn get_perms(&mut self, tx: TxId, path: &str) -> Result<Perms> {
        let p = self.path_request(MsgType::GetPerms, tx, path)?;
        Perms::parse(&split_strings(&p)).map_err(|_| Error::Protocol("bad permissions".into()))
    }

    /// SET_PERMS.
    pub fn set_perms(&mut self, tx: TxId, path: &str, perms: &Perms) -> Result<()> {
        let mut p = format!("{path}\0").into_bytes();
        p.extend_from_slice(&perms.to_wire());
        self.request(MsgType::SetPerms, tx, &p).map(drop)
    }

    /// WATCH: events for `path` and below come with `token`; the first comes at once.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(
            MsgType::Watch,
            TxId::NONE,
            format!("{path}\0{token}\0").as_bytes(),
        )
        .map(drop)
    }

    /// UNWATCH.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<()> {
        self.request(
            MsgType::Unwatch,
            TxId::NONE,
            format!("{path}\0{token}\0").as_bytes(),
        )
        .map(drop)
    }

    /// RESET_WATCHES: drops all watches and transactions of this connection.
    pub fn reset_watches(&mut self) -> Result<()> {
        self.request(MsgType::ResetWatches, TxId::NONE, b"\0")
            .map(drop)
    }

    /// An event already received, without waiting.
    pub fn pending_event(&mut self) -> Option<WatchEvent> {
        self.events.pop_front()
    }

    /// Whether events were received and not taken yet.
    pub fn has_pending_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The next event, waiting as long as it takes.
    pub fn next_event(&mut self) -> Result<WatchEvent> {
        loop {
            if let Some(e) = self.next_event_timeout(None)? {
                return Ok(e);
            }
        }
    }

    /// The next event, waiting at most `timeout` (`None`: forever); `Ok(None)` on timeout.
    pub fn next_event_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<WatchEvent>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let Some(m) = self.next_message(deadline)? else {
                return Ok(None);
            };
            if m.msg_type() != Some(MsgType::WatchEvent) {
                return Err(Error::Protocol(format!(
                    "unexpected message type {} while idle",
                    m.header.ty
                )));
            }
            self.keep_event(&m)?;
        }
    }

    /// TRANSACTION_START.
    pub fn transaction_start(&mut self) -> Result<TxId> {
        let p = self.request(MsgType::TransactionStart, TxId::NONE, b"\0")?;
        std::str::from_utf8(strip_nul(&p))
            .ok()
            .and_then(|s| s.parse().ok())
            .map(TxId)
            .ok_or_else(|| Error::Protocol("bad transaction id".into()))
    }

    /// TRANSACTION_END: commits (`commit`) or aborts. `Err(Error::Xs(EAGAIN))`: something
    /// the transaction used changed meanwhile; run it again.
    pub fn transaction_end(&mut self, tx: TxId, commit: bool) -> Result<()> {
        let arg: &[u8] = if commit { b"T\0" } else { b"F\0" };
        self.request(MsgType::TransactionEnd, tx, arg).map(drop)
    }

    /// INTRODUCE: the daemon may now talk to `domid` (Dom0 only). Keel's daemon reads only
    /// the domid; the ring's gfn and event channel are passed for Xen's format.
    pub fn introduce(&mut self, domid: DomId, gfn: u64, evtchn: u32) -> Result<()> {
        let p = format!("{domid}\0{gfn}\0{evtchn}\0");
        self.request(MsgType::Introduce, TxId::NONE, p.as_bytes())
            .map(drop)
    }

    /// RELEASE: the domain is gone (Dom0 only); `@releaseDomain` fires.
    pub fn release(&mut self, domid: DomId) -> Result<()> {
        self.request(
            MsgType::Release,
            TxId::NONE,
            format!("{domid}\0").as_bytes(),
        )
        .map(drop)
    }

    /// IS_DOMAIN_INTRODUCED (Dom0 only).
    pub fn is_domain_introduced(&mut self, domid: DomId) -> Result<bool> {
        let p = self.request(
            MsgType::IsDomainIntroduced,
            TxId::NONE,
            format!("{domid}\0").as_bytes(),
        )?;
        Ok(strip_nul(&p) == b"T")
    }

    /// GET_DOMAIN_PATH: `/local/domain/<domid>`.
    pub fn get_domain_path(&mut self, domid: DomId) -> Result<String> {
        let p = self.request(
            MsgType::GetDomainPath,
            TxId::NONE,
            format!("{domid}\0").as_bytes(),
        )?;
        utf8(strip_nul(&p))
    }
}

impl AsRawFd for Client {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsFd for Client {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// Opens a domain connection for introduced `domid` (the Keel handshake, see the crate
/// documentation): the returned stream carries the DomU's xs_wire stream, to be relayed
/// verbatim to and from its ring.
pub fn connect_domain(socket: impl AsRef<Path>, domid: DomId) -> Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    let payload = format!("{domid}\0");
    let ty = MsgType::KeelDomainConnect as u32;
    stream.write_all(&wire::encoded(ty, 0, 0, payload.as_bytes()))?;
    // Read exactly the answer, not a byte more: what follows is the DomU's.
    let mut head = [0u8; wire::HEADER_LEN];
    stream.read_exact(&mut head)?;
    let h = wire::Header::from_bytes(&head);
    if h.len as usize > PAYLOAD_MAX {
        return Err(Error::Protocol("oversized handshake answer".into()));
    }
    let mut body = vec![0; h.len as usize];
    stream.read_exact(&mut body)?;
    if h.ty == ty && body == b"OK\0" {
        Ok(stream)
    } else if h.ty == MsgType::Error as u32 {
        Err(Errno::from_name(&body)
            .map_or_else(|| Error::Protocol("unknown error name".into()), Error::Xs))
    } else {
        Err(Error::Protocol(format!(
            "handshake answered with type {}",
            h.ty
        )))
    }
}
