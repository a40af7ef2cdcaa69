//! Per-domain quotas and per-connection bounds.
//!
//! The quotas are Xen's xenstored defaults (tools/xenstored/domain.c `quotas[]`) and, as
//! there, apply to DomUs only and answer ENOSPC (Xen has no EQUOTA on the wire):
//!
//! | quota | default | exceeded by | answer |
//! |---|---|---|---|
//! | `nodes` owned by the domain | 1000 | WRITE/MKDIR creating nodes, a commit adding them | ENOSPC |
//! | `node_size`: bytes of a value | 2048 | WRITE | ENOSPC |
//! | `watches` | 128 | WATCH | ENOSPC |
//! | `transactions` open at once | 10 | TRANSACTION_START | ENOSPC |
//! | `transaction_nodes`: nodes one transaction touches | 1024 | any op in it | ENOSPC |
//! | `perms`: entries in SET_PERMS | 5 | SET_PERMS | ENOSPC |
//! | `outstanding` replies not yet taken | 20 | any request | input paused (Xen's flow control) |
//!
//! Every connection, Dom0's too, is bounded by `output_bytes` of replies and events waiting
//! to be sent and `input_bytes` received but not processed; past either the connection is
//! dropped (a client that never reads must not make the daemon grow).

/// The limits a daemon applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nodes a DomU may own.
    pub nodes: usize,
    /// Bytes of a DomU's value.
    pub node_size: usize,
    /// Watches of a DomU.
    pub watches: usize,
    /// Open transactions of a DomU.
    pub transactions: usize,
    /// Nodes one transaction of a DomU may read or write.
    pub transaction_nodes: usize,
    /// Permission entries a DomU may set on a node.
    pub perms: usize,
    /// Replies queued on a connection before its input is no longer processed.
    pub outstanding: usize,
    /// Bytes queued for a connection before it is dropped.
    pub output_bytes: usize,
    /// Bytes received on a connection and not yet processed before it is dropped.
    pub input_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            nodes: 1000,
            node_size: 2048,
            watches: 128,
            transactions: 10,
            transaction_nodes: 1024,
            perms: 5,
            outstanding: 20,
            output_bytes: 1 << 20,
            input_bytes: 64 << 10,
        }
    }
}
