//! `keel-domd`: the Dom0 process of one Keel Xen PVH domain (QEMU's place in KVM).
//!
//! It builds the domain from its xl.cfg ([`guest`]), runs one thread per vCPU, serves the
//! PV console ring ([`ring`]) into a log file and to an attached client, applies the
//! config's `on_*` actions to shutdowns and crashes ([`exit`]), and answers `keelctl` on a
//! Unix socket ([`proto`]) whose place, with the state file's, [`files`] gives. `keelctl`
//! uses this library's types to talk to it. [`xsnodes`] lays out the XenStore nodes of a
//! domain and its disks as libxl does.
#![deny(missing_docs)]

pub mod daemon;
pub mod devices;
pub mod exit;
pub mod files;
pub mod guest;
pub mod proto;
pub mod ring;
pub mod vbd;
pub mod vif;
pub mod xenbus;
pub mod xsnodes;
