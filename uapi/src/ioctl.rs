// SPDX-License-Identifier: GPL-2.0
//! The ioctl table of `/dev/keel`, written once: the numbers the C macros `_IO`, `_IOR`, `_IOW`
//! and `_IOWR` give (include/uapi/asm-generic/ioctl.h), built from the structure types of
//! `uapi/linux/keel.h`.
//!
//! Both sides compile this file: the `keel-uapi` crate (`mod ioctl` in `src/lib.rs`) and the
//! kernel module (`module/uapi.rs`, by path, as Kbuild builds one crate per module). It uses
//! nothing but `core` and the parent module's bindgen types and `KEEL_IOCTL_TYPE`, so it stays
//! `no_std` and free of dependencies. `ioctl_numbers_match_c` in `src/lib.rs` checks every
//! number against the C header.

use super::{
    keel_caps, keel_domain_create, keel_domain_info, keel_domain_list, keel_evtchn_bind,
    keel_evtchn_port, keel_grant_copy, keel_grant_map, keel_mem_range, keel_memory_map, keel_regs,
    keel_run, keel_sregs, keel_vcpu_create, keel_version, keel_xen_param, KEEL_IOCTL_TYPE,
};

/// `_IOC` direction: no argument.
const IOC_NONE: u32 = 0;
/// `_IOC` direction: the kernel reads the argument (userspace writes).
const IOC_WRITE: u32 = 1;
/// `_IOC` direction: the kernel writes the argument (userspace reads).
const IOC_READ: u32 = 2;

/// Bits of the argument size in a command number.
const IOC_SIZEBITS: u32 = 14;

/// The number `_IOC(dir, type, nr, size)` gives in C: 8 bits of number, 8 of type, 14 of size,
/// 2 of direction.
const fn ioc(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(ty < (1 << 8) && nr < (1 << 8));
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << 30) | ((size as u32) << 16) | (ty << 8) | nr
}

/// The number `_IO(type, nr)` gives in C: a command without an argument.
pub const fn io(ty: u32, nr: u32) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// The number `_IOR(type, nr, T)` gives in C: the kernel writes a `T` to the caller.
pub const fn ior<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ, ty, nr, core::mem::size_of::<T>())
}

/// The number `_IOW(type, nr, T)` gives in C: the kernel reads a `T` from the caller.
pub const fn iow<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_WRITE, ty, nr, core::mem::size_of::<T>())
}

/// The number `_IOWR(type, nr, T)` gives in C: the kernel reads a `T` and writes it back.
pub const fn iowr<T>(ty: u32, nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, core::mem::size_of::<T>())
}

/// The argument size a command number encodes (`_IOC_SIZE`).
pub const fn ioc_size(cmd: u32) -> usize {
    ((cmd >> 16) & ((1 << IOC_SIZEBITS) - 1)) as usize
}

/// `KEEL_GET_VERSION` (on `/dev/keel`).
pub const KEEL_GET_VERSION: u32 = iowr::<keel_version>(KEEL_IOCTL_TYPE, 0x00);
/// `KEEL_GET_CAPS` (on `/dev/keel`).
pub const KEEL_GET_CAPS: u32 = iowr::<keel_caps>(KEEL_IOCTL_TYPE, 0x01);
/// `KEEL_CREATE_DOMAIN` (on `/dev/keel`): returns the domain fd.
pub const KEEL_CREATE_DOMAIN: u32 = iowr::<keel_domain_create>(KEEL_IOCTL_TYPE, 0x02);
/// `KEEL_LIST_DOMAINS` (on `/dev/keel`).
pub const KEEL_LIST_DOMAINS: u32 = iowr::<keel_domain_list>(KEEL_IOCTL_TYPE, 0x03);

/// `KEEL_DOMAIN_ADD_RANGE` (on a domain fd).
pub const KEEL_DOMAIN_ADD_RANGE: u32 = iow::<keel_mem_range>(KEEL_IOCTL_TYPE, 0x10);
/// `KEEL_DOMAIN_CREATE_VCPU` (on a domain fd): returns the vCPU fd.
pub const KEEL_DOMAIN_CREATE_VCPU: u32 = iow::<keel_vcpu_create>(KEEL_IOCTL_TYPE, 0x11);
/// `KEEL_DOMAIN_PAUSE` (on a domain fd, no argument).
pub const KEEL_DOMAIN_PAUSE: u32 = io(KEEL_IOCTL_TYPE, 0x12);
/// `KEEL_DOMAIN_UNPAUSE` (on a domain fd, no argument).
pub const KEEL_DOMAIN_UNPAUSE: u32 = io(KEEL_IOCTL_TYPE, 0x13);
/// `KEEL_DOMAIN_INFO` (on a domain fd).
pub const KEEL_DOMAIN_INFO: u32 = ior::<keel_domain_info>(KEEL_IOCTL_TYPE, 0x14);
/// `KEEL_DOMAIN_SET_PARAM` (on a Xen domain's fd).
pub const KEEL_DOMAIN_SET_PARAM: u32 = iow::<keel_xen_param>(KEEL_IOCTL_TYPE, 0x15);
/// `KEEL_DOMAIN_GET_PARAM` (on a Xen domain's fd).
pub const KEEL_DOMAIN_GET_PARAM: u32 = iowr::<keel_xen_param>(KEEL_IOCTL_TYPE, 0x16);
/// `KEEL_DOMAIN_EVTCHN_BIND` (on a Xen domain's fd).
pub const KEEL_DOMAIN_EVTCHN_BIND: u32 = iowr::<keel_evtchn_bind>(KEEL_IOCTL_TYPE, 0x17);
/// `KEEL_DOMAIN_EVTCHN_NOTIFY` (on a Xen domain's fd).
pub const KEEL_DOMAIN_EVTCHN_NOTIFY: u32 = iow::<keel_evtchn_port>(KEEL_IOCTL_TYPE, 0x18);
/// `KEEL_DOMAIN_EVTCHN_UNBIND` (on a Xen domain's fd).
pub const KEEL_DOMAIN_EVTCHN_UNBIND: u32 = iow::<keel_evtchn_port>(KEEL_IOCTL_TYPE, 0x19);
/// `KEEL_DOMAIN_SET_MEMORY_MAP` (on a Xen domain's fd).
pub const KEEL_DOMAIN_SET_MEMORY_MAP: u32 = iow::<keel_memory_map>(KEEL_IOCTL_TYPE, 0x1a);
/// `KEEL_DOMAIN_GRANT_COPY` (on a Xen domain's fd).
pub const KEEL_DOMAIN_GRANT_COPY: u32 = iow::<keel_grant_copy>(KEEL_IOCTL_TYPE, 0x1b);
/// `KEEL_DOMAIN_GRANT_MAP` (on a Xen domain's fd): returns a new fd.
pub const KEEL_DOMAIN_GRANT_MAP: u32 = iow::<keel_grant_map>(KEEL_IOCTL_TYPE, 0x1c);

/// `KEEL_VCPU_GET_REGS` (on a vCPU fd).
pub const KEEL_VCPU_GET_REGS: u32 = ior::<keel_regs>(KEEL_IOCTL_TYPE, 0x20);
/// `KEEL_VCPU_SET_REGS` (on a vCPU fd).
pub const KEEL_VCPU_SET_REGS: u32 = iow::<keel_regs>(KEEL_IOCTL_TYPE, 0x21);
/// `KEEL_VCPU_GET_SREGS` (on a vCPU fd).
pub const KEEL_VCPU_GET_SREGS: u32 = ior::<keel_sregs>(KEEL_IOCTL_TYPE, 0x22);
/// `KEEL_VCPU_SET_SREGS` (on a vCPU fd).
pub const KEEL_VCPU_SET_SREGS: u32 = iow::<keel_sregs>(KEEL_IOCTL_TYPE, 0x23);
/// `KEEL_VCPU_RUN` (on a vCPU fd).
pub const KEEL_VCPU_RUN: u32 = iowr::<keel_run>(KEEL_IOCTL_TYPE, 0x24);
