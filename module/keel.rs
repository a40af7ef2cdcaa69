// SPDX-License-Identifier: GPL-2.0
//! Keel: a hypervisor loaded into a running Linux.
//!
//! Loading the module probes the CPU's virtualization extension (Intel VMX or AMD SVM), refuses
//! to load when it is absent, disabled by the firmware or already in use, and registers
//! `/dev/keel`, through which `keelctl` reads what the hardware offers.

use kernel::{
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
};

mod dev;
mod hw;
mod uapi;

/// The hardware-independent core crate (`core/` in the repository), compiled into this crate:
/// Kbuild builds one crate per module.
#[path = "../core/src/lib.rs"]
#[allow(unused_attributes)] // lib.rs's crate-level `no_std` is for its own cargo build.
pub mod keel_core;

/// The module's version, reported by `KEEL_GET_VERSION`.
pub const VERSION: (u16, u16, u16) = (0, 1, 0);

module! {
    type: Keel,
    name: "keel",
    authors: ["The Keel developers"],
    description: "Keel: a hypervisor loaded into a running Linux",
    license: "GPL",
}

/// The loaded module: the capabilities probed at load and the `/dev/keel` registration.
#[pin_data]
pub struct Keel {
    caps: keel_core::caps::Caps,
    #[pin]
    misc: MiscDeviceRegistration<dev::KeelFile>,
}

impl kernel::InPlaceModule for Keel {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        let caps = hw::probe();
        try_pin_init!(Self {
            caps: caps?,
            misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"keel" }),
        })
    }
}
