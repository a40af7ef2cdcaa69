//! `keel-sys`: safe owners of the Keel hypervisor's file descriptors, in the shape of rust-vmm's
//! `kvm-ioctls`.
//!
//! [`KeelDev`] owns an open `/dev/keel`, a [`Domain`] a domain fd (from `KEEL_CREATE_DOMAIN`), a
//! [`Vcpu`] a vCPU fd (from `KEEL_DOMAIN_CREATE_VCPU`) and a [`GuestRam`] a mapping of a domain's
//! memory. Each ioctl is one method that checks its result; a failure is an [`Error`] naming the
//! command. [`Vcpu::run`] returns a [`VcpuExit`], the one typed view of `struct keel_exit`, and
//! [`Vcpu::complete`] hands the module the value an IN, MMIO read or hypercall completes with.
//!
//! The structures and constants come from the `keel-uapi` crate (bindgen's view of
//! `uapi/linux/keel.h`), re-exported as [`uapi`].
#![deny(missing_docs)]

mod addr;
mod domain;
mod error;
mod eventfd;
mod grant;
mod ioctl;
mod keel;
mod memory;
mod vcpu;

pub use addr::GuestAddress;
pub use domain::{name_from_raw, Domain, DomainInfo, DomainName, RangeKind, XenParam};
pub use error::{errno_name, Error};
pub use eventfd::EventFd;
pub use grant::{GrantCopySeg, GrantMapping};
pub use keel::{KeelDev, DEVICE_PATH};
pub use keel_uapi as uapi;
pub use memory::{offset_in, GuestMemoryWrite, GuestRam, RamError};
pub use vcpu::{complete_exit, decode_exit, RunExit, Vcpu, VcpuExit};
