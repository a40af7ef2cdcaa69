//! Keel's hardware-independent logic.
//!
//! This crate has no dependencies and does not touch hardware: callers read registers and pass
//! the raw values in. It is unit-tested on the host with `cargo test`, and the kernel module
//! compiles the same files into itself (Kbuild builds one crate per module), so every item here
//! must build under the kernel's Rust lints as well as under cargo.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

pub mod arch;
pub mod caps;
pub mod cpuid;
pub mod exit;
pub mod hypercall;
pub mod insn;
pub mod lapic;
pub mod logring;
pub mod mmio;
pub mod paging;
pub mod slat;
pub mod spinlock;
pub mod state;
pub mod uart;
pub mod vmcb;
pub mod vmcs;
pub mod xcr;
pub mod xen;
