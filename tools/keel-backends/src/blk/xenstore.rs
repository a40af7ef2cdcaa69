//! The vbd's XenStore keys (blkif.h, "Feature and Parameter Negotiation"; XEN-PVH.md 5.4):
//! what the backend publishes about itself and the disk, and the frontend's transport
//! parameters read into a checked [`FrontendConfig`].
//!
//! Keys are relative to the device's directory (`backend/vbd/<domid>/<dev>/` for the backend's,
//! `device/vbd/<dev>/` of the DomU for the frontend's); the caller reads and writes XenStore.

use std::fmt;

use keel_core::xen::abi::Width;
use keel_core::xen::blkif::{
    vdisk, Protocol, ProtocolError, MAX_INDIRECT_SEGMENTS as PROTOCOL_MAX,
};

use super::Disk;

/// The `feature-max-indirect-segments` published by default (Linux blkback's
/// `MAX_INDIRECT_SEGMENTS`; blkfront uses up to 32 unless told otherwise).
pub const MAX_INDIRECT_SEGMENTS: usize = 256;

/// `XENBUS_MAX_RING_GRANT_ORDER`: the largest ring Linux's frontends ask for, 16 pages.
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// What the backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max-ring-page-order` (at most [`MAX_RING_PAGE_ORDER`]).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` (at least 1).
    pub max_queues: u32,
    /// `feature-max-indirect-segments` (0: not offered).
    pub max_indirect_segments: usize,
    /// `feature-persistent`.
    pub persistent: bool,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_ring_page_order: MAX_RING_PAGE_ORDER,
            max_queues: 4,
            max_indirect_segments: MAX_INDIRECT_SEGMENTS,
            persistent: true,
        }
    }
}

/// The backend's keys, in the two groups the state machine publishes them in (XEN-PVH.md 5.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendKeys {
    /// Written before InitWait (2): the features and transport limits the frontend reads
    /// before it sets its ring up.
    pub features: Vec<(String, String)>,
    /// Written before Connected (4): the disk (`blkfront_connect` gathers these).
    pub device: Vec<(String, String)>,
}

/// The keys the backend publishes for `disk`.
pub fn backend_keys(disk: &Disk, limits: &Limits) -> BackendKeys {
    let kv = |k: &str, v: String| (k.to_string(), v);
    let mut features = vec![
        kv("feature-flush-cache", "1".into()),
        kv(
            "feature-persistent",
            u8::from(limits.persistent).to_string(),
        ),
        kv(
            "multi-queue-max-queues",
            limits.max_queues.max(1).to_string(),
        ),
        kv(
            "max-ring-page-order",
            limits
                .max_ring_page_order
                .min(MAX_RING_PAGE_ORDER)
                .to_string(),
        ),
    ];
    if limits.max_indirect_segments > 0 {
        features.push(kv(
            "feature-max-indirect-segments",
            limits.max_indirect_segments.min(PROTOCOL_MAX).to_string(),
        ));
    }
    if disk.discard() {
        // Discarding single logical sectors, from the start of the disk, never securely.
        features.push(kv("feature-discard", "1".into()));
        features.push(kv("discard-granularity", disk.sector_size().to_string()));
        features.push(kv("discard-alignment", "0".into()));
        features.push(kv("discard-secure", "0".into()));
    }
    let info = if disk.read_only() { vdisk::READONLY } else { 0 };
    let device = vec![
        kv("sectors", disk.sectors().to_string()),
        kv("info", info.to_string()),
        kv("sector-size", disk.sector_size().to_string()),
        kv(
            "physical-sector-size",
            disk.physical_sector_size().to_string(),
        ),
    ];
    BackendKeys { features, device }
}

/// One ring the frontend set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingConfig {
    /// The ring's pages, in order (`ring-ref` or `ring-ref0`..).
    pub ring_refs: Vec<u32>,
    /// The frontend's event channel port for this ring.
    pub event_channel: u32,
}

/// The frontend's transport parameters, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// The ring layout (only x86_64 is served).
    pub protocol: Protocol,
    /// The frontend uses persistent grants (and the backend offers them).
    pub persistent: bool,
    /// Each ring has `1 << ring_page_order` pages.
    pub ring_page_order: u32,
    /// One entry per queue (`multi-queue-num-queues`, 1 when absent).
    pub queues: Vec<RingConfig>,
}

/// A frontend key that was missing or out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// A XenStore number: decimal digits only (no sign, no space), within `range`.
fn number(
    lookup: &dyn Fn(&str) -> Option<String>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, KeyError> {
    let Some(v) = lookup(key) else {
        return Ok(None);
    };
    let parsed = (!v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse::<u64>().ok())
        .flatten();
    match parsed {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(KeyError(format!(
            "frontend key {key} = {v:?}: not a number in {}..={}",
            range.start(),
            range.end()
        ))),
    }
}

fn required(
    lookup: &dyn Fn(&str) -> Option<String>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, KeyError> {
    number(lookup, key, range)?.ok_or_else(|| KeyError(format!("frontend key {key} is missing")))
}

/// Reads the frontend's keys through `lookup` (a key relative to the frontend's device
/// directory, e.g. `"queue-1/ring-ref0"`, to its value) into a checked configuration.
pub fn parse_frontend_keys(
    lookup: impl Fn(&str) -> Option<String>,
    limits: &Limits,
) -> Result<FrontendConfig, KeyError> {
    let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
    let protocol = Protocol::parse(lookup("protocol").as_deref()).map_err(|e| {
        let v = lookup("protocol").unwrap_or_default();
        KeyError(match e {
            ProtocolError::Unsupported => {
                format!("frontend protocol {v:?} is not supported (only x86_64-abi)")
            }
            ProtocolError::Unknown => format!("frontend protocol {v:?} is unknown"),
        })
    })?;
    let persistent =
        number(lookup, "feature-persistent", 0..=1)?.unwrap_or(0) == 1 && limits.persistent;
    let max_queues = u64::from(limits.max_queues.max(1));
    let nr_queues = number(lookup, "multi-queue-num-queues", 1..=max_queues)?.unwrap_or(1);
    let max_order = u64::from(limits.max_ring_page_order.min(MAX_RING_PAGE_ORDER));
    let order = number(lookup, "ring-page-order", 0..=max_order)?;
    let ports = u64::from(Width::Bits64.evtchn_2l_ports()) - 1;
    let mut queues = Vec::new();
    for q in 0..nr_queues {
        // One queue: the keys at the top; more: under queue-N/ (blkif.h, "Multiple hardware
        // queues/rings").
        let dir = if nr_queues == 1 {
            String::new()
        } else {
            format!("queue-{q}/")
        };
        let refs = match order {
            // No ring-page-order: one page, "ring-ref".
            None => vec![required(
                lookup,
                &format!("{dir}ring-ref"),
                0..=u64::from(u32::MAX),
            )?],
            // blkfront writes "ring-ref" for one page even with an order of 0 around.
            Some(0) if lookup(&format!("{dir}ring-ref0")).is_none() => {
                vec![required(
                    lookup,
                    &format!("{dir}ring-ref"),
                    0..=u64::from(u32::MAX),
                )?]
            }
            Some(order) => (0..1u64 << order)
                .map(|i| {
                    required(
                        lookup,
                        &format!("{dir}ring-ref{i}"),
                        0..=u64::from(u32::MAX),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let event_channel = required(lookup, &format!("{dir}event-channel"), 1..=ports)?;
        queues.push(RingConfig {
            ring_refs: refs.into_iter().map(|r| r as u32).collect(),
            event_channel: event_channel as u32,
        });
    }
    Ok(FrontendConfig {
        protocol,
        persistent,
        ring_page_order: order.unwrap_or(0) as u32,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::temp_file;

    fn writable_disk() -> Disk {
        Disk::from_file(temp_file(2048), false).expect("disk")
    }

    #[test]
    fn backend_keys_describe_the_disk() {
        let disk = writable_disk();
        let keys = backend_keys(&disk, &Limits::default());
        let get = |v: &Vec<(String, String)>, k: &str| {
            v.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&keys.device, "sectors").as_deref(), Some("2048"));
        assert_eq!(get(&keys.device, "info").as_deref(), Some("0"));
        assert_eq!(get(&keys.device, "sector-size").as_deref(), Some("512"));
        assert_eq!(
            get(&keys.device, "physical-sector-size").as_deref(),
            Some("512")
        );
        for (k, v) in [
            ("feature-flush-cache", "1"),
            ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "256"),
            ("multi-queue-max-queues", "4"),
            ("max-ring-page-order", "4"),
            ("feature-discard", "1"),
            ("discard-granularity", "512"),
            ("discard-alignment", "0"),
            ("discard-secure", "0"),
        ] {
            assert_eq!(get(&keys.features, k).as_deref(), Some(v), "{k}");
        }
        let ro = Disk::from_file(temp_file(64), true)
            .unwrap()
            .with_sector_size(4096)
            .unwrap();
        let keys = backend_keys(
            &ro,
            &Limits {
                max_indirect_segments: 0,
                ..Limits::default()
            },
        );
        assert_eq!(get(&keys.device, "info").as_deref(), Some("4"));
        assert_eq!(get(&keys.device, "sector-size").as_deref(), Some("4096"));
        assert_eq!(get(&keys.features, "feature-discard"), None);
        assert_eq!(get(&keys.features, "feature-max-indirect-segments"), None);
    }

    fn frontend<'a>(keys: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            keys.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn frontend_keys_are_read_and_checked() {
        let l = Limits::default();
        let c = parse_frontend_keys(
            frontend(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("protocol", "x86_64-abi"),
            ]),
            &l,
        )
        .unwrap();
        assert_eq!(
            c.queues,
            [RingConfig {
                ring_refs: vec![8],
                event_channel: 5
            }]
        );
        assert!(!c.persistent);
        let c = parse_frontend_keys(
            frontend(&[
                ("ring-page-order", "1"),
                ("multi-queue-num-queues", "2"),
                ("feature-persistent", "1"),
                ("queue-0/ring-ref0", "10"),
                ("queue-0/ring-ref1", "11"),
                ("queue-0/event-channel", "6"),
                ("queue-1/ring-ref0", "12"),
                ("queue-1/ring-ref1", "13"),
                ("queue-1/event-channel", "7"),
            ]),
            &l,
        )
        .unwrap();
        assert_eq!(
            (c.ring_page_order, c.persistent, c.queues.len()),
            (1, true, 2)
        );
        assert_eq!(
            c.queues[1],
            RingConfig {
                ring_refs: vec![12, 13],
                event_channel: 7
            }
        );
        let no_persistent = Limits {
            persistent: false,
            ..l
        };
        let c = parse_frontend_keys(
            frontend(&[
                ("ring-ref", "8"),
                ("event-channel", "5"),
                ("feature-persistent", "1"),
            ]),
            &no_persistent,
        )
        .unwrap();
        assert!(!c.persistent);

        for (keys, msg) in [
            (
                vec![
                    ("ring-ref", "8"),
                    ("event-channel", "5"),
                    ("protocol", "x86_32-abi"),
                ],
                "not supported",
            ),
            (
                vec![
                    ("ring-ref", "8"),
                    ("event-channel", "5"),
                    ("protocol", "vax"),
                ],
                "unknown",
            ),
            (vec![("event-channel", "5")], "ring-ref is missing"),
            (vec![("ring-ref", "8")], "event-channel is missing"),
            (
                vec![("ring-ref", "8"), ("event-channel", "0")],
                "event-channel",
            ),
            (
                vec![("ring-ref", "8"), ("event-channel", "4096")],
                "event-channel",
            ),
            (vec![("ring-ref", "-8"), ("event-channel", "5")], "ring-ref"),
            (
                vec![("ring-ref", "4294967296"), ("event-channel", "5")],
                "ring-ref",
            ),
            (vec![("ring-ref", " 8"), ("event-channel", "5")], "ring-ref"),
            (
                vec![
                    ("ring-page-order", "5"),
                    ("ring-ref0", "8"),
                    ("event-channel", "5"),
                ],
                "ring-page-order",
            ),
            (
                vec![
                    ("ring-page-order", "1"),
                    ("ring-ref0", "8"),
                    ("event-channel", "5"),
                ],
                "ring-ref1 is missing",
            ),
            (
                vec![
                    ("multi-queue-num-queues", "5"),
                    ("ring-ref", "8"),
                    ("event-channel", "5"),
                ],
                "multi-queue-num-queues",
            ),
            (
                vec![
                    ("multi-queue-num-queues", "0"),
                    ("ring-ref", "8"),
                    ("event-channel", "5"),
                ],
                "multi-queue-num-queues",
            ),
            (
                vec![
                    ("multi-queue-num-queues", "2"),
                    ("queue-0/ring-ref", "8"),
                    ("queue-0/event-channel", "5"),
                ],
                "queue-1/ring-ref",
            ),
            (
                vec![
                    ("feature-persistent", "2"),
                    ("ring-ref", "8"),
                    ("event-channel", "5"),
                ],
                "feature-persistent",
            ),
        ] {
            let err = parse_frontend_keys(frontend(&keys), &l)
                .expect_err(msg)
                .to_string();
            assert!(err.contains(msg), "{keys:?}: {err}");
        }
    }
}
