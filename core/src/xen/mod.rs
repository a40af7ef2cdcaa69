//! The Xen PVH guest ABI, hardware-independent: the layouts and numbers DomUs and the tools
//! share (`abi`, `start_info`, the PV block protocol `blkif`), the 2-level event-channel rules
//! (`evtchn`), the grantee's grant rules (`grant`), and the pvclock timebase (`time`). Root
//! mode (`module/root/xen/`) and the toolstack (`tools/`) build on it.
//! Facts come from Xen's public headers (`xen/include/public/`) and Linux's copies of them
//! (`include/xen/interface/`); the code is Keel's own.

pub mod abi;
pub mod blkif;
pub mod cpuid;
pub mod evtchn;
pub mod grant;
pub mod netif;
pub mod start_info;
pub mod time;
