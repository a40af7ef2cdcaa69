//! `keel-xenstored`: Keel's XenStore daemon and its client library.
//!
//! XenStore is the small tree of keys and values through which Xen's toolstack, backends
//! and DomUs' frontends meet (docs/misc/xenstore.txt). This crate keeps it as Xen's
//! `xenstored` does, on the same wire protocol (`xs_wire.h`), with the same paths,
//! permissions, watches, transactions and quotas, so that a stock Linux DomU's xenbus needs
//! nothing special.
//!
//! - [`wire`]: the message format, its incremental decoder and the error names.
//! - [`path`], [`perms`]: the path rules and the permission lists.
//! - [`store`]: the tree and its operations, directly and in transactions.
//! - [`quota`]: the per-domain quotas (Xen's defaults) and per-connection bounds.
//! - [`conn`], [`daemon`] (and the request handlers): connections in, replies and events
//!   out, without I/O; the `keel-xenstored` binary adds the socket and the event loop.
//! - [`client`]: a blocking client over the daemon's socket, for Keel's tools.
//!
//! # Connections
//!
//! The daemon listens on one Unix socket (default [`DEFAULT_SOCKET`]). Only privileged
//! peers are accepted (`SO_PEERCRED` uid 0, the daemon's own uid, or one given with
//! `--allow-uid`). There are two kinds of connection on it:
//!
//! - **Dom0 connections**: every message is a request from Dom0 (domid 0, no quotas, all
//!   permissions), as on Xen's `/run/xenstored/socket`.
//! - **Domain connections**, a Keel convention: a privileged client (the DomU's `keel-domd`)
//!   sends as its *first* message one of type [`wire::MsgType::KeelDomainConnect`]
//!   (`0x4b45`, "KE", unused by Xen) with `req_id` and `tx_id` of its choice and the payload
//!   `"<domid>\0"` (decimal). The domain must have been introduced (INTRODUCE) and have no
//!   domain connection yet. The daemon answers with a message of the same type and payload
//!   `"OK\0"` (or an ERROR: EINVAL for a bad domid, ENOENT when not introduced, EISCONN when
//!   connected already, after which the connection is closed). From then on every byte on
//!   the connection is the DomU's own xs_wire stream in both directions, relayed verbatim
//!   between the socket and the guest's `xenstore_domain_interface` ring, and every request
//!   is that DomU's: relative paths under `/local/domain/<domid>`, its permissions, its
//!   quotas. [`client::connect_domain`] performs the handshake. When a domain connection
//!   closes, its watches and transactions go; the domain stays introduced until RELEASE,
//!   which in turn closes its connection.
#![deny(missing_docs)]

pub mod client;
pub mod conn;
pub mod daemon;
mod ops;
pub mod path;
pub mod perms;
pub mod quota;
pub mod store;
pub mod wire;

#[cfg(test)]
mod tests;

pub use daemon::{ConnId, XenStore};
pub use quota::Limits;
pub use wire::Errno;

/// A domain id (0 is Dom0).
pub type DomId = u16;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/keel/xenstored.sock";
/// Where the daemon writes its pid when it daemonizes.
pub const DEFAULT_PID_FILE: &str = "/run/keel/xenstored.pid";
