//! Keel's Dom0 userspace backends for the Xen PV devices of a DomU.
//!
//! A DomU runs its own, unmodified frontends (Linux's xen-blkfront); the backends here serve
//! them from Dom0 the way Xen's blkback does, with no hypercalls of their own: everything they
//! touch in the DomU is a page it granted, reached through [`grant::GrantAccess`] (the real one
//! talks to `/dev/keel` in keel-domd; [`testing`] has an in-memory one). Rings are
//! [`ring::BackRing`]s; the block backend is [`blk`].
//!
//! Everything that comes from the DomU (ring indexes, requests, indirect segment pages,
//! XenStore values) is hostile: it is copied out once, then checked, and a bad value costs the
//! DomU its request or its ring, never Dom0 its process.

pub mod blk;
pub mod dhcp;
pub mod grant;
pub mod nat;
pub mod net;
pub mod ring;
pub mod tap;
pub mod testing;
