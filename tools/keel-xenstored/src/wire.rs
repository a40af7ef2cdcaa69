//! The xs_wire protocol (Xen's xen/include/public/io/xs_wire.h, docs/misc/xenstore.txt): a
//! 16-byte header `struct xsd_sockmsg { u32 type, req_id, tx_id, len; }` in native (x86:
//! little) byte order, then `len` <= [`PAYLOAD_MAX`] bytes of payload, in both directions.
//! Errors travel as the errno's *name*, NUL-terminated.

use std::fmt;

/// Bytes of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the largest payload either side may send. A client that announces
/// more is cut off (xenstore.txt: "its xenstored connection will be immediately killed").
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: the longest path.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: the longest part of a DomU's path below its home
/// `/local/domain/<domid>/`.
pub const REL_PATH_MAX: usize = 2048;

/// `enum xsd_sockmsg_type`, with Xen's numbers, and Keel's one addition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[expect(
    missing_docs,
    reason = "the names are xs_wire.h's; xenstore.txt documents each"
)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, removed: an invalid type.
    ResetWatches = 21,
    DirectoryPart = 22,
    GetFeature = 23,
    SetFeature = 24,
    GetQuota = 25,
    SetQuota = 26,
    /// Keel's own: the first message of a privileged socket client that turns the rest of
    /// the connection into a DomU's relayed ring stream. Payload: the decimal domid,
    /// NUL-terminated. 0x4b45 is "KE", far above Xen's last type (26) and below
    /// `XS_INVALID` (0xffff). See the crate documentation.
    KeelDomainConnect = 0x4b45,
}

/// `XS_INVALID`: guaranteed never to be a valid type.
pub const XS_INVALID: u32 = 0xffff;

impl MsgType {
    /// The type numbered `v`, if it is one.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            23 => GetFeature,
            24 => SetFeature,
            25 => GetQuota,
            26 => SetQuota,
            0x4b45 => KeelDomainConnect,
            _ => return None,
        })
    }
}

/// The errors of xs_wire.h's `xsd_errors` table, sent by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[expect(
    missing_docs,
    reason = "the errno names as xs_wire.h spells them (and as they go on the wire)"
)]
pub enum Errno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
}

impl Errno {
    /// Every error, in `xsd_errors` order.
    pub const ALL: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name that goes on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
        }
    }

    /// The error an ERROR reply's payload names (with or without its NUL).
    pub fn from_name(payload: &[u8]) -> Option<Self> {
        let name = payload.strip_suffix(b"\0").unwrap_or(payload);
        Self::ALL.into_iter().find(|e| e.name().as_bytes() == name)
    }

    /// The Linux errno number, for callers that want an `io::Error`.
    pub fn raw_os_error(self) -> i32 {
        match self {
            Errno::EINVAL => libc::EINVAL,
            Errno::EACCES => libc::EACCES,
            Errno::EEXIST => libc::EEXIST,
            Errno::EISDIR => libc::EISDIR,
            Errno::ENOENT => libc::ENOENT,
            Errno::ENOMEM => libc::ENOMEM,
            Errno::ENOSPC => libc::ENOSPC,
            Errno::EIO => libc::EIO,
            Errno::ENOTEMPTY => libc::ENOTEMPTY,
            Errno::ENOSYS => libc::ENOSYS,
            Errno::EROFS => libc::EROFS,
            Errno::EBUSY => libc::EBUSY,
            Errno::EAGAIN => libc::EAGAIN,
            Errno::EISCONN => libc::EISCONN,
            Errno::E2BIG => libc::E2BIG,
            Errno::EPERM => libc::EPERM,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::error::Error for Errno {}

/// `struct xsd_sockmsg`, with the type left raw so that an unknown one can be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// `XS_*`, see [`MsgType`].
    pub ty: u32,
    /// Echoed in the reply.
    pub req_id: u32,
    /// The transaction, 0 for none.
    pub tx_id: u32,
    /// Bytes of payload that follow.
    pub len: u32,
}

impl Header {
    /// The header's 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0; HEADER_LEN];
        for (i, v) in [self.ty, self.req_id, self.tx_id, self.len]
            .into_iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b
    }

    /// The header in `b`.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            ty: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }
}

/// One whole message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Its header; `len` equals the payload's length.
    pub header: Header,
    /// At most [`PAYLOAD_MAX`] bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// The message's type, if it is a known one.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.header.ty)
    }
}

/// Appends one message to `out`. The payload must be at most [`PAYLOAD_MAX`] bytes (the
/// daemon answers E2BIG instead of building a longer reply).
pub fn encode(ty: u32, req_id: u32, tx_id: u32, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= PAYLOAD_MAX);
    let header = Header {
        ty,
        req_id,
        tx_id,
        len: payload.len() as u32,
    };
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
}

/// One encoded message, as a new vector.
pub fn encoded(ty: u32, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    encode(ty, req_id, tx_id, payload, &mut v);
    v
}

/// A stream that violated the protocol; the connection cannot be resynchronized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A header announced more than [`PAYLOAD_MAX`] bytes of payload.
    TooLong(u32),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::TooLong(n) => {
                write!(f, "payload of {n} bytes announced (max {PAYLOAD_MAX})")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}

/// An incremental decoder over a byte stream: bytes go in as they arrive, in pieces of any
/// size, and whole messages come out.
///
/// # Invariants
///
/// `start <= buf.len()`; `buf[start..]` holds the bytes not yet decoded; once a header in it
/// announced too long a payload, `broken` is set and nothing more is decoded.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    broken: Option<ProtocolError>,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `Ok(None)` when more bytes are needed. A header with too long
    /// a payload is an error as soon as the header is complete, and stays one.
    pub fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let avail = &self.buf[self.start..];
        let Some(head) = avail.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::from_bytes(head);
        if header.len as usize > PAYLOAD_MAX {
            let e = ProtocolError::TooLong(header.len);
            self.broken = Some(e);
            return Err(e);
        }
        let total = HEADER_LEN + header.len as usize;
        if avail.len() < total {
            return Ok(None);
        }
        let payload = avail[HEADER_LEN..total].to_vec();
        self.start += total;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        Ok(Some(Message { header, payload }))
    }
}

/// The NUL-terminated strings of a payload: `a\0b\0` is `[a, b]`. A payload that does not
/// end in NUL has an unterminated last piece, which counts as a string too (a WRITE's value).
pub fn split_strings(payload: &[u8]) -> Vec<&[u8]> {
    if payload.is_empty() {
        return Vec::new();
    }
    let body = payload.strip_suffix(b"\0").unwrap_or(payload);
    body.split(|&b| b == 0).collect()
}

/// The request's single argument: the payload must be exactly one NUL-terminated string
/// (Xen's `onearg`).
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    let body = payload.strip_suffix(b"\0")?;
    (!body.contains(&0)).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> (Vec<u8>, Vec<Message>) {
        let msgs = vec![
            Message {
                header: Header {
                    ty: 2,
                    req_id: 7,
                    tx_id: 0,
                    len: 6,
                },
                payload: b"/local\0".to_vec()[..6].to_vec(),
            },
            Message {
                header: Header {
                    ty: 11,
                    req_id: 8,
                    tx_id: 3,
                    len: 0,
                },
                payload: vec![],
            },
            Message {
                header: Header {
                    ty: 1,
                    req_id: u32::MAX,
                    tx_id: 1,
                    len: PAYLOAD_MAX as u32,
                },
                payload: (0..PAYLOAD_MAX).map(|i| i as u8).collect(),
            },
        ];
        let mut bytes = Vec::new();
        for m in &msgs {
            let h = m.header;
            encode(h.ty, h.req_id, h.tx_id, &m.payload, &mut bytes);
        }
        (bytes, msgs)
    }

    fn decode_all(d: &mut Decoder) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = d.next_message().expect("valid stream") {
            out.push(m);
        }
        out
    }

    #[test]
    fn a_stream_split_at_every_byte_boundary_decodes_the_same() {
        let (bytes, msgs) = stream();
        for cut in 0..=bytes.len() {
            let mut d = Decoder::new();
            d.push(&bytes[..cut]);
            let mut got = decode_all(&mut d);
            d.push(&bytes[cut..]);
            got.extend(decode_all(&mut d));
            assert_eq!(got, msgs, "cut at {cut}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_stream_fed_byte_by_byte_decodes() {
        let (bytes, msgs) = stream();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            got.extend(decode_all(&mut d));
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn too_long_a_payload_is_refused_at_the_header_and_stays_refused() {
        let mut d = Decoder::new();
        let h = Header {
            ty: 2,
            req_id: 1,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        };
        d.push(&h.to_bytes()[..15]);
        assert_eq!(d.next_message(), Ok(None));
        d.push(&h.to_bytes()[15..]);
        assert_eq!(
            d.next_message(),
            Err(ProtocolError::TooLong(PAYLOAD_MAX as u32 + 1))
        );
        d.push(&encoded(2, 1, 0, b"x\0"));
        assert!(d.next_message().is_err());
        let mut d = Decoder::new();
        d.push(&[0xff; HEADER_LEN]);
        assert_eq!(d.next_message(), Err(ProtocolError::TooLong(u32::MAX)));
    }

    #[test]
    fn types_round_trip_and_gaps_are_unknown() {
        for v in 0..=0x1_0000u32 {
            if let Some(t) = MsgType::from_u32(v) {
                assert_eq!(t as u32, v);
            }
        }
        assert_eq!(MsgType::from_u32(20), None, "XS_RESTRICT was removed");
        assert_eq!(MsgType::from_u32(27), None);
        assert_eq!(MsgType::from_u32(XS_INVALID), None);
        assert_eq!(MsgType::from_u32(26), Some(MsgType::SetQuota));
        assert_eq!(MsgType::from_u32(21), Some(MsgType::ResetWatches));
    }

    #[test]
    fn error_names_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_name(format!("{e}\0").as_bytes()), Some(e));
        }
        assert_eq!(Errno::from_name(b"EQUOTA\0"), None);
    }

    #[test]
    fn strings_split_like_xen() {
        assert!(split_strings(b"").is_empty());
        assert_eq!(split_strings(b"a\0b\0"), [&b"a"[..], b"b"]);
        assert_eq!(split_strings(b"a\0b"), [&b"a"[..], b"b"]);
        assert_eq!(split_strings(b"\0"), [&b""[..]]);
        assert_eq!(one_arg(b"x\0"), Some(&b"x"[..]));
        assert_eq!(one_arg(b"x"), None);
        assert_eq!(one_arg(b"x\0y\0"), None);
    }
}
