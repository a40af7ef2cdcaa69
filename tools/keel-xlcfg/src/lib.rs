//! Xen's `xl.cfg` domain configuration files, read as `xl` reads them, for
//! `keelctl create CFG [KEY=VALUE...]`.
//!
//! Two layers: [`syntax`] turns the text into an ordered map of settings ([`Config`]), with
//! `KEY=VALUE` command-line overrides applied after the file as xl applies them; [`domain`]
//! reads the keys Keel uses into a [`DomainConfig`], with the `disk` and `vif` specs parsed
//! by [`disk`] and [`vif`]. Errors and warnings are [`Diagnostic`]s that name the file, the
//! line and the key.
//!
//! ```
//! use keel_xlcfg::{Config, DomainConfig};
//! use std::path::Path;
//!
//! let mut config = Config::parse(
//!     "guest.cfg",
//!     br#"name = "web"
//!         type = "pvh"
//!         kernel = "/boot/vmlinuz"
//!         memory = 512
//!         disk = [ 'format=raw, vdev=xvda, access=rw, target=/srv/web.img' ]
//!         vif = [ 'mac=00:16:3e:00:00:01, bridge=xenbr0' ]
//!     "#,
//! )
//! .unwrap();
//! config.apply_override("memory=1024").unwrap();
//! let domain = DomainConfig::from_config(&config, Path::new("/")).unwrap();
//! assert_eq!(domain.memory_mib, 1024);
//! assert_eq!(domain.disks[0].vdev.number, 202 << 8);
//! ```

pub mod diagnostic;
pub mod disk;
pub mod domain;
pub mod syntax;
pub mod vif;

#[cfg(test)]
mod testutil;

pub use diagnostic::{Diagnostic, Location};
pub use disk::{Access, Disk, DiskFormat, Vdev};
pub use domain::{Action, DomainConfig, Uuid};
pub use syntax::{Config, Setting, Value, ValueKind};
pub use vif::{Mac, Rate, Vif, VifScript};

/// Where hotplug scripts named without a leading `/` are (`@XEN_SCRIPT_DIR@` in Xen).
pub const XEN_SCRIPT_DIR: &str = "/etc/xen/scripts";
