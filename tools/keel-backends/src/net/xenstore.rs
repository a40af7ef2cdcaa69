//! The vif's XenStore keys (netif.h's feature notes; Linux netback's `netback_probe` and
//! `read_xenbus_vif_flags`, netfront's `talk_to_netback`): what the backend publishes before
//! InitWait, and the frontend's transport parameters read into a checked
//! [`NetFrontendConfig`].
//!
//! Keys are relative to the device's directory (`backend/vif/<domid>/<dev>/` for the
//! backend's, `device/vif/<dev>/` of the DomU for the frontend's); the caller reads and writes
//! XenStore. The vif's `mac` is the toolstack's to write, in both directories (the frontend
//! reads its own; netback reads the backend's), as libxl does.
//!
//! What Keel offers: copying receive (no page flipping), scatter-gather, TCP GSO both ways,
//! IPv6 checksum offload, up to `multi-queue-max-queues` queue pairs (the frontend's keys of
//! queue N under `queue-N/` when it uses more than one, at the top otherwise) and split event
//! channels (`event-channel-tx` and `-rx` in place of `event-channel`); no multicast control,
//! no XDP headroom, no control ring.

use keel_core::xen::abi::Width;

pub use crate::blk::xenstore::KeyError;

use super::NetOptions;

/// The keys the backend publishes before InitWait (2): the features, with `max_queues`
/// queue pairs offered (at least one).
pub fn backend_keys(max_queues: u32) -> Vec<(String, String)> {
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    vec![
        kv("feature-rx-copy", "1"),
        kv("feature-rx-flip", "0"),
        kv("feature-sg", "1"),
        kv("feature-gso-tcpv4", "1"),
        kv("feature-gso-tcpv6", "1"),
        kv("feature-ipv6-csum-offload", "1"),
        kv("feature-split-event-channels", "1"),
        kv("feature-multicast-control", "0"),
        kv("multi-queue-max-queues", &max_queues.max(1).to_string()),
    ]
}

/// One queue pair's transport: its two rings and event channel(s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetQueueKeys {
    /// `tx-ring-ref`: the transmit ring's page.
    pub tx_ring_ref: u32,
    /// `rx-ring-ref`: the receive ring's page.
    pub rx_ring_ref: u32,
    /// The frontend's port for the transmit ring (`event-channel-tx`, or `event-channel`).
    pub tx_port: u32,
    /// The frontend's port for the receive ring (`event-channel-rx`, or the same as
    /// `tx_port` with one channel).
    pub rx_port: u32,
}

/// The frontend's transport parameters, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetFrontendConfig {
    /// The queue pairs (`multi-queue-num-queues` of them, one when absent).
    pub queues: Vec<NetQueueKeys>,
    /// `feature-rx-notify`: the frontend notifies when it posts receive requests.
    pub rx_notify: bool,
    /// `feature-sg`: it takes frames in more than one page.
    pub sg: bool,
    /// `feature-gso-tcpv4`.
    pub gso_tcpv4: bool,
    /// `feature-gso-tcpv6`.
    pub gso_tcpv6: bool,
    /// `feature-no-csum-offload`: it takes no IPv4 frames with a blank checksum.
    pub no_csum_offload: bool,
    /// `feature-ipv6-csum-offload`: it takes IPv6 frames with a blank checksum.
    pub ipv6_csum_offload: bool,
}

impl NetFrontendConfig {
    /// The queue options for this frontend on a vif of MTU `mtu`. (The host's TAP should
    /// offer GSO frames only of the kinds the frontend takes: `TUNSETOFFLOAD` with `TUN_F_TSO4`
    /// for `gso_tcpv4`, `TUN_F_TSO6` for `gso_tcpv6`.)
    pub fn options(&self, mtu: usize) -> NetOptions {
        NetOptions {
            mtu,
            sg: self.sg,
            gso: self.gso_tcpv4 || self.gso_tcpv6,
            csum_ipv4: !self.no_csum_offload,
            csum_ipv6: self.ipv6_csum_offload,
            rx_notify: self.rx_notify,
        }
    }
}

/// A XenStore number: decimal digits only (no sign, no space), within `range`.
fn number(
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, KeyError> {
    let Some(v) = get(key) else {
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
    get: &dyn Fn(&str) -> Option<String>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, KeyError> {
    number(get, key, range)?.ok_or_else(|| KeyError(format!("frontend key {key} is missing")))
}

/// A 0/1 feature key; `default` when absent.
fn flag(get: &dyn Fn(&str) -> Option<String>, key: &str, default: bool) -> Result<bool, KeyError> {
    Ok(number(get, key, 0..=1)?.map_or(default, |v| v == 1))
}

/// One queue's keys, under `dir` (empty: at the top).
fn queue_keys(get: &dyn Fn(&str) -> Option<String>, dir: &str) -> Result<NetQueueKeys, KeyError> {
    let key = |k: &str| format!("{dir}{k}");
    let refs = 0..=u64::from(u32::MAX);
    let ports = 1..=u64::from(Width::Bits64.evtchn_2l_ports()) - 1;
    let tx_ring_ref = required(get, &key("tx-ring-ref"), refs.clone())? as u32;
    let rx_ring_ref = required(get, &key("rx-ring-ref"), refs)? as u32;
    // Split channels when the frontend gives both (netif.h); else the one for both rings.
    let tx = number(get, &key("event-channel-tx"), ports.clone())?;
    let rx = number(get, &key("event-channel-rx"), ports.clone())?;
    let (tx_port, rx_port) = match (tx, rx) {
        (Some(t), Some(r)) => (t as u32, r as u32),
        _ => {
            let p = required(get, &key("event-channel"), ports)? as u32;
            (p, p)
        }
    };
    Ok(NetQueueKeys {
        tx_ring_ref,
        rx_ring_ref,
        tx_port,
        rx_port,
    })
}

/// Reads the frontend's keys through `get` (a key relative to the frontend's device
/// directory to its value) into a checked configuration, refusing more queues than the
/// `max_queues` offered.
pub fn parse_frontend_keys(
    get: impl Fn(&str) -> Option<String>,
    max_queues: u32,
) -> Result<NetFrontendConfig, KeyError> {
    let get: &dyn Fn(&str) -> Option<String> = &get;
    let max_queues = max_queues.max(1);
    let num = number(get, "multi-queue-num-queues", 1..=u64::from(u32::MAX))
        .map_err(|_| {
            KeyError(format!(
                "frontend key multi-queue-num-queues = {:?}: not a number of queues",
                get("multi-queue-num-queues").unwrap_or_default()
            ))
        })?
        .unwrap_or(1);
    if num > u64::from(max_queues) {
        return Err(KeyError(format!(
            "frontend key multi-queue-num-queues = {num}: more than the {max_queues} queue(s) \
             offered (multi-queue-max-queues)"
        )));
    }
    match number(get, "request-rx-copy", 0..=1)? {
        Some(1) => {}
        Some(_) => {
            return Err(KeyError(
                "frontend key request-rx-copy = 0: the frontend wants page flipping, which \
                 Keel does not do (feature-rx-flip = 0)"
                    .into(),
            ))
        }
        None => {
            return Err(KeyError(
                "frontend key request-rx-copy is missing: a frontend that does not ask for \
                 copying wants page flipping, which Keel does not do"
                    .into(),
            ))
        }
    }
    // One queue: its keys at the top; more: each under queue-N/ (netif.h).
    let queues = if num == 1 {
        vec![queue_keys(get, "")?]
    } else {
        (0..num)
            .map(|q| queue_keys(get, &format!("queue-{q}/")))
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(NetFrontendConfig {
        queues,
        rx_notify: flag(get, "feature-rx-notify", false)?,
        sg: flag(get, "feature-sg", false)?,
        gso_tcpv4: flag(get, "feature-gso-tcpv4", false)?,
        gso_tcpv6: flag(get, "feature-gso-tcpv6", false)?,
        no_csum_offload: flag(get, "feature-no-csum-offload", false)?,
        ipv6_csum_offload: flag(get, "feature-ipv6-csum-offload", false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend<'a>(keys: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            keys.iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.to_string())
        }
    }

    /// What Linux netfront writes for one queue.
    const NETFRONT: &[(&str, &str)] = &[
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "9"),
        ("event-channel", "5"),
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
    ];

    fn with(changes: &[(&'static str, Option<&'static str>)]) -> Vec<(&'static str, &'static str)> {
        let mut keys: Vec<(&str, &str)> = NETFRONT.to_vec();
        for &(k, v) in changes {
            keys.retain(|(key, _)| *key != k);
            if let Some(v) = v {
                keys.push((k, v));
            }
        }
        keys
    }

    #[test]
    fn backend_keys_offer_copy_sg_gso_queues_and_split_channels() {
        let keys = backend_keys(4);
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(keys.len(), 9);
        for (k, v) in [
            ("feature-rx-copy", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-ipv6-csum-offload", "1"),
            ("feature-rx-flip", "0"),
            ("feature-split-event-channels", "1"),
            ("feature-multicast-control", "0"),
            ("multi-queue-max-queues", "4"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        assert!(backend_keys(0).contains(&("multi-queue-max-queues".into(), "1".into())));
    }

    fn one(tx_ring_ref: u32, rx_ring_ref: u32, tx_port: u32, rx_port: u32) -> NetQueueKeys {
        NetQueueKeys {
            tx_ring_ref,
            rx_ring_ref,
            tx_port,
            rx_port,
        }
    }

    #[test]
    fn netfront_keys_are_read_into_options() {
        let c = parse_frontend_keys(frontend(NETFRONT), 1).unwrap();
        assert_eq!(
            c,
            NetFrontendConfig {
                queues: vec![one(8, 9, 5, 5)],
                rx_notify: true,
                sg: true,
                gso_tcpv4: true,
                gso_tcpv6: true,
                no_csum_offload: false,
                ipv6_csum_offload: true,
            }
        );
        let o = c.options(9000);
        assert_eq!(
            (o.mtu, o.sg, o.gso, o.csum_ipv4, o.csum_ipv6, o.rx_notify),
            (9000, true, true, true, true, true)
        );
        // A minimal frontend: only the mandatory keys; one queue said explicitly.
        let keys = [
            ("tx-ring-ref", "0"),
            ("rx-ring-ref", "4294967295"),
            ("event-channel", "4095"),
            ("request-rx-copy", "1"),
            ("feature-no-csum-offload", "1"),
            ("multi-queue-num-queues", "1"),
        ];
        let c = parse_frontend_keys(frontend(&keys), 4).unwrap();
        assert_eq!(c.queues, vec![one(0, u32::MAX, 4095, 4095)]);
        assert!(!c.rx_notify && !c.sg && !c.gso_tcpv4 && !c.gso_tcpv6);
        assert!(c.no_csum_offload && !c.ipv6_csum_offload);
        let o = c.options(1500);
        assert!(!o.gso && !o.sg && !o.csum_ipv4 && !o.csum_ipv6 && !o.rx_notify);
        // Either GSO kind turns GSO on.
        let keys = [
            ("tx-ring-ref", "1"),
            ("rx-ring-ref", "2"),
            ("event-channel", "3"),
            ("request-rx-copy", "1"),
            ("feature-gso-tcpv6", "1"),
        ];
        assert!(
            parse_frontend_keys(frontend(&keys), 1)
                .unwrap()
                .options(1500)
                .gso
        );
    }

    #[test]
    fn split_channels_and_queues_as_netfront_writes_them() {
        // One queue, split channels: at the top.
        let keys = with(&[
            ("event-channel", None),
            ("event-channel-tx", Some("6")),
            ("event-channel-rx", Some("7")),
        ]);
        let c = parse_frontend_keys(frontend(&keys), 2).unwrap();
        assert_eq!(c.queues, vec![one(8, 9, 6, 7)]);
        // Only one of the pair: the single channel is wanted.
        let keys = with(&[("event-channel-tx", Some("6"))]);
        assert_eq!(
            parse_frontend_keys(frontend(&keys), 2).unwrap().queues,
            vec![one(8, 9, 5, 5)]
        );
        // Two queues: each under queue-N/, the top's ring keys ignored.
        let keys = [
            ("request-rx-copy", "1"),
            ("feature-sg", "1"),
            ("multi-queue-num-queues", "2"),
            ("queue-0/tx-ring-ref", "10"),
            ("queue-0/rx-ring-ref", "11"),
            ("queue-0/event-channel-tx", "12"),
            ("queue-0/event-channel-rx", "13"),
            ("queue-1/tx-ring-ref", "20"),
            ("queue-1/rx-ring-ref", "21"),
            ("queue-1/event-channel", "22"),
        ];
        let c = parse_frontend_keys(frontend(&keys), 2).unwrap();
        assert_eq!(c.queues, vec![one(10, 11, 12, 13), one(20, 21, 22, 22)]);
        assert!(c.sg);
        // More than offered, or a queue's key missing or bad: refused naming it.
        let e = parse_frontend_keys(frontend(&keys), 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("multi-queue-num-queues = 2: more than the 1"),
            "{e}"
        );
        let e = parse_frontend_keys(frontend(&keys[..9]), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue-1/event-channel is missing"), "{e}");
        let mut bad = keys;
        bad[7] = ("queue-1/tx-ring-ref", "x");
        let e = parse_frontend_keys(frontend(&bad), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue-1/tx-ring-ref"), "{e}");
        bad = keys;
        bad[5] = ("queue-0/event-channel-tx", "5000");
        let e = parse_frontend_keys(frontend(&bad), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue-0/event-channel-tx"), "{e}");
    }

    #[test]
    fn bad_frontend_keys_are_refused_naming_the_key() {
        for (changes, msg) in [
            (vec![("request-rx-copy", Some("0"))], "request-rx-copy = 0"),
            (
                vec![("request-rx-copy", None)],
                "request-rx-copy is missing",
            ),
            (vec![("request-rx-copy", Some("2"))], "request-rx-copy"),
            (vec![("tx-ring-ref", None)], "tx-ring-ref is missing"),
            (vec![("rx-ring-ref", Some("-1"))], "rx-ring-ref"),
            (vec![("rx-ring-ref", Some("4294967296"))], "rx-ring-ref"),
            (vec![("tx-ring-ref", Some(" 8"))], "tx-ring-ref"),
            (vec![("event-channel", None)], "event-channel is missing"),
            (vec![("event-channel", Some("0"))], "event-channel"),
            (vec![("event-channel", Some("4096"))], "event-channel"),
            (vec![("feature-sg", Some("yes"))], "feature-sg"),
            (vec![("feature-rx-notify", Some("2"))], "feature-rx-notify"),
            (vec![("feature-gso-tcpv4", Some(""))], "feature-gso-tcpv4"),
            (
                vec![("feature-gso-tcpv6", Some("01x"))],
                "feature-gso-tcpv6",
            ),
            (
                vec![("feature-no-csum-offload", Some("3"))],
                "feature-no-csum-offload",
            ),
            (
                vec![("feature-ipv6-csum-offload", Some("-1"))],
                "feature-ipv6-csum-offload",
            ),
            (
                vec![("multi-queue-num-queues", Some("2"))],
                "multi-queue-num-queues = 2: more than the 1",
            ),
            (
                vec![("multi-queue-num-queues", Some("0"))],
                "multi-queue-num-queues",
            ),
            (
                vec![("multi-queue-num-queues", Some("many"))],
                "multi-queue-num-queues",
            ),
        ] {
            let keys = with(&changes);
            let err = parse_frontend_keys(frontend(&keys), 1)
                .expect_err(msg)
                .to_string();
            assert!(err.contains(msg), "{changes:?}: {err}");
        }
    }
}
