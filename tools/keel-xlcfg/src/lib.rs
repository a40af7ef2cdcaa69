//! Xen's `xl.cfg` domain configuration files, read as `xl` reads them, for
//! `keelctl create CFG [KEY=VALUE...]`.
//!
//! Two layers: [`syntax`] turns the text into an ordered map of settings ([`Config`]), with
//! `KEY=VALUE` command-line overrides applied after the file as xl applies them; [`domain`]
//! reads the keys Keel uses into a [`DomainConfig`], with the `disk` and `vif` specs parsed
//! by [`disk`] and [`vif`]. Errors and warnings are [`Diagnostic`]s that name the file, the
//! line and the key.
//!

pub mod diagnostic;
pub mod syntax;

#[cfg(test)]
mod testutil;

pub use diagnostic::{Diagnostic, Location};
pub use syntax::{Config, Setting, Value, ValueKind};
