//! A vif's backend: the [`crate::xenbus`] handshake, then a thread per queue pair the frontend
//! uses (up to the domain's vCPUs), each serving its TX and RX rings between the guest and a
//! queue of the vif's multi-queue TAP device (`keel-backends`' netif queue), woken by the
//! frontend's event channel(s) (one per queue, or split: one per ring) and by frames on its
//! TAP queue.
//!
//! The TAP is made and configured by [`open_tap`] before the frontend is told about the vif,
//! as Xen's hotplug scripts run before the frontend connects: named `vif<domid>.<devid>` (or
//! `vifname=`), Xen's backend MAC fe:ff:ff:ff:ff:ff, the MTU, up; in bridged mode (the
//! default `script=vif-bridge`) a port of the named bridge; in routed mode (`vif-route`)
//! Dom0's address as a /32, proxy ARP, and a host route to each `ip=` address, with Dom0
//! forwarding; in NAT mode (`vif-nat`) as routed, with the first address of the guest's
//! network as Dom0's end and the guest's address masqueraded ([`keel_backends::nat`]). The
//! TAP, its address, its routes and its NAT rules go with the vif.
use std::{
    net::Ipv4Addr,
    os::fd::AsFd,
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use keel_backends::{
    dhcp::{name_servers, DhcpServer, Lease},
    nat::NatRules,
    net::{
        shaper::Shaper,
        xenstore::{backend_keys, parse_frontend_keys, NetQueueKeys},
        NetOptions, NetQueue,
    },
    tap::{host_address, ipv4_addresses, HostAddr, Tap},
};
use keel_sys::{Domain, EventFd};
use keel_xlcfg::{Rate, Vif, VifScript};

use crate::vbd::KeelGrants;
use crate::xenbus::{Backend, Device};
use crate::xsnodes::DevicePaths;

/// Xen's MAC for the Dom0 end of a vif (vif-common.sh): never a guest's, and it keeps a
/// bridge from taking the vif's address as its own.
pub const BACKEND_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// The TAP device's name for vif `devid` of domain `domid`.
pub fn tap_name(domid: u32, vif: &Vif) -> String {
    vif.vifname
        .clone()
        .unwrap_or_else(|| format!("vif{domid}.{}", vif.devid))
}

/// The guest addresses of a routed vif (`ip=`: IPv4 addresses, or /32 prefixes, separated
/// by spaces or commas).
fn routed_addresses(label: &str, vif: &Vif) -> Result<Vec<Ipv4Addr>, String> {
    let text = vif.ip.as_deref().unwrap_or("");
    let ips = text
        .split([' ', ','])
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.strip_suffix("/32")
                .unwrap_or(t)
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("{label}: ip={text}: `{t}' is not an IPv4 address (or a /32)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ips.is_empty() {
        return Err(format!(
            "{label}: script=vif-route needs the guest's address (ip=): Dom0 routes it to the vif"
        ));
    }
    Ok(ips)
}

/// A NAT vif's addresses (`ip=ADDR` or `ADDR/LEN`, one IPv4 address, LEN 8 to 30, /24 when
/// not given): the guest's, Dom0's end (the first address of the guest's network, the
/// guest's gateway) and the prefix length. Without `ip=`, Xen's vif-nat default: the guest
/// is 10.(domid / 256).(domid % 256).(devid + 1)/16 and its gateway that address plus 127
/// (the same last octet rule as vif-nat's `routing_ip`), so a guest set up for Xen's NAT
/// addresses finds them here too.
fn nat_addresses(label: &str, domid: u32, vif: &Vif) -> Result<(Ipv4Addr, Ipv4Addr, u32), String> {
    let text = vif.ip.as_deref().unwrap_or("").trim();
    if text.is_empty() {
        if vif.devid >= 127 || domid > 0xffff {
            return Err(format!(
                "{label}: script=vif-nat without ip=: Xen's default address \
                 (10.(domid/256).(domid%256).(devid+1)/16) is for devids below 127; give ip="
            ));
        }
        // 10.(domid/256).(domid%256).0, then the last byte.
        let base = u32::from_be_bytes([10, (domid >> 8) as u8, domid as u8, 0]);
        let guest = Ipv4Addr::from(base + vif.devid + 1);
        let gateway = Ipv4Addr::from(base + vif.devid + 1 + 127);
        return Ok((guest, gateway, 16));
    }
    let (addr, len) = text.split_once('/').unwrap_or((text, "24"));
    let guest: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{label}: ip={text}: `{addr}' is not an IPv4 address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| (8..=30).contains(l))
        .ok_or_else(|| format!("{label}: ip={text}: the prefix length must be 8 to 30"))?;
    let mask = u32::MAX << (32 - len);
    let gateway = Ipv4Addr::from((u32::from(guest) & mask) + 1);
    if guest == gateway || u32::from(guest) & !mask == !mask {
        return Err(format!(
            "{label}: ip={text}: {guest} is the network's first or broadcast address (the first, \
             {gateway}, is Dom0's end of the vif)"
        ));
    }
    Ok((guest, gateway, len))
}

/// The name servers a NAT guest is given: Dom0's (resolv.conf's) that are not on its
/// loopback, else, behind systemd-resolved's local stub, the ones it forwards to.
fn dom0_name_servers() -> Vec<Ipv4Addr> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .map(|t| name_servers(&t))
                .unwrap_or_default()
        })
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Whether the network `a`/`alen` and the network `b`/`blen` share an address.
fn overlaps(a: Ipv4Addr, alen: u32, b: Ipv4Addr, blen: u32) -> bool {
    let len = alen.min(blen).min(32);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// Refuses a NAT network that overlaps one Dom0 is on (a LAN's: Dom0 would take its first
/// address, often the LAN's router, and answer ARP for it). Host addresses (/32: a routed or
/// NAT vif's) and loopback do not count.
fn nat_network_is_free(
    label: &str,
    guest: Ipv4Addr,
    prefix: u32,
    dom0: &[HostAddr],
) -> Result<(), String> {
    if let Some(h) = dom0.iter().find(|h| h.addr == guest) {
        return Err(format!(
            "{label}: ip={guest}: that is an address of Dom0's ({}): pick another",
            h.dev
        ));
    }
    match dom0.iter().find(|h| {
        h.prefix < 32 && !h.addr.is_loopback() && overlaps(guest, prefix, h.addr, h.prefix)
    }) {
        Some(h) => Err(format!(
            "{label}: ip={guest}/{prefix}: the NAT network overlaps {}'s {}/{}: pick a private \
             network of its own",
            h.dev, h.addr, h.prefix
        )),
        None => Ok(()),
    }
}

/// The host routes (/32) in `/proc/net/route`'s text: their address and device.
fn host_routes(text: &str) -> Vec<(Ipv4Addr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |i: usize| u32::from_str_radix(f.get(i)?, 16).ok();
            // The file's words are in the machine's byte order.
            let (dest, mask) = (hex(1)?.to_ne_bytes(), hex(7)?);
            (mask == u32::MAX).then(|| (Ipv4Addr::from(dest), f[0].to_owned()))
        })
        .collect()
}

/// Refuses a NAT gateway that is a guest's address Dom0 routes to a vif (a routed or NAT
/// guest's, say vif-nat's default one of another domain): Dom0 would take it as its own.
fn gateway_is_no_guests(
    label: &str,
    gateway: Ipv4Addr,
    routes: &[(Ipv4Addr, String)],
) -> Result<(), String> {
    match routes.iter().find(|(a, _)| *a == gateway) {
        Some((_, dev)) => Err(format!(
            "{label}: the NAT gateway {gateway} is the address of the guest behind {dev}: pick \
             another network (ip=)"
        )),
        None => Ok(()),
    }
}

/// How Dom0 connects a vif (its `script=`).
enum Mode {
    Bridge,
    Route(Vec<Ipv4Addr>),
    Nat {
        guest: Ipv4Addr,
        gateway: Ipv4Addr,
        prefix: u32,
    },
}

/// What a NAT vif holds in Dom0 besides its TAP: its DHCP server and its nftables rules,
/// stopped and removed (in that order) when it is dropped.
pub struct NatVif {
    _dhcp: Option<DhcpServer>,
    _rules: NatRules,
}

/// Makes and configures the vif's TAP device as its mode asks, as Xen's vif-bridge,
/// vif-route and vif-nat scripts do; refuses what is not served, naming the vif and the key.
/// A NAT vif also gets a DHCP server that gives the guest its address, its gateway, Dom0's
/// name servers and `host_name` (vif-nat's `dhcp=yes`); it logs through `log`. Returns the
/// TAP, what a NAT vif holds (removed when dropped) and what was done, for the log.
pub fn open_tap(
    domid: u32,
    vif: &Vif,
    host_name: &str,
    log: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<(Tap, Option<NatVif>, String), String> {
    let label = format!("vif {}", vif.devid);
    let mode = match &vif.script {
        VifScript::Bridge => Mode::Bridge,
        VifScript::Route => Mode::Route(routed_addresses(&label, vif)?),
        VifScript::Nat => {
            let (guest, gateway, prefix) = nat_addresses(&label, domid, vif)?;
            let dom0 = ipv4_addresses().map_err(|e| format!("{label}: Dom0's addresses: {e}"))?;
            nat_network_is_free(&label, guest, prefix, &dom0)?;
            let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            gateway_is_no_guests(&label, gateway, &host_routes(&routes))?;
            Mode::Nat {
                guest,
                gateway,
                prefix,
            }
        }
        VifScript::Other(p) => {
            return Err(format!(
                "{label}: script={}: Keel runs no hotplug scripts; it serves vif-bridge, \
                 vif-route and vif-nat",
                p.display()
            ))
        }
    };
    if let Some(b) = vif
        .backend
        .as_deref()
        .filter(|b| !matches!(*b, "0" | "Domain-0"))
    {
        return Err(format!(
            "{label}: backend={b}: Keel serves vifs from Dom0 only (no driver domains)"
        ));
    }
    let name = tap_name(domid, vif);
    let tap = Tap::create(&name).map_err(|e| format!("{label}: {e}"))?;
    let setup = || -> std::io::Result<(Option<NatVif>, String)> {
        tap.set_mac(BACKEND_MAC)?;
        if let Some(mtu) = vif.mtu.filter(|&m| m != 0) {
            tap.set_mtu(mtu)?;
        }
        // vif-route and vif-nat: the vif takes an address of Dom0's as a /32 (its main one;
        // for NAT the guest's gateway), answers ARP for the rest of the network (proxy ARP),
        // and each guest address is routed to it; Dom0 forwards.
        let routed = |dom0: Ipv4Addr, ips: &[Ipv4Addr]| -> std::io::Result<()> {
            tap.set_host_address(dom0)?;
            tap.up()?;
            tap.set_ipv4_conf("proxy_arp", "1")?;
            for ip in ips {
                tap.add_host_route(*ip)?;
            }
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        };
        match &mode {
            Mode::Bridge => {
                tap.join_bridge(&vif.bridge)?;
                tap.up()?;
                Ok((None, format!("on bridge {}", vif.bridge)))
            }
            Mode::Route(ips) => {
                let (dev, main) = host_address(vif.gatewaydev.as_deref())?;
                routed(main, ips)?;
                let list: Vec<String> = ips.iter().map(|i| i.to_string()).collect();
                Ok((
                    None,
                    format!("routed: {} through it, from {main} ({dev})", list.join(" ")),
                ))
            }
            Mode::Nat {
                guest,
                gateway,
                prefix,
            } => {
                let out = vif.gatewaydev.as_deref();
                if let Some(dev) = out {
                    Tap::index_of(dev).map_err(|e| {
                        std::io::Error::new(e.kind(), format!("gatewaydev={dev}: {e}"))
                    })?;
                }
                // The rules are IPv4's: the vif carries no IPv6 (nothing to masquerade it, and
                // no filter to keep the outside from the guest).
                std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1")
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()), // a kernel without IPv6
                        _ => Err(e),
                    })?;
                // The rules first: no moment with the guest routed but not yet filtered.
                let rules = NatRules::install(domid, &name, *guest, out)?;
                routed(*gateway, &[*guest])?;
                let lease = Lease {
                    addr: *guest,
                    prefix: *prefix,
                    gateway: *gateway,
                    dns: dom0_name_servers(),
                    host_name: Some(host_name.to_owned()),
                    seconds: 86400,
                };
                // Without DHCP the guest can still be given the address by hand: a warning.
                let served = Tap::index_of(&name)
                    .and_then(|index| DhcpServer::start(&name, index, lease, log.clone()));
                let (dhcp, served) = match served {
                    Ok(d) => (Some(d), "DHCP served".to_owned()),
                    Err(e) => (None, format!("no DHCP ({e})")),
                };
                let how = format!(
                    "NAT: {guest}/{prefix} masqueraded out of {}, its gateway {gateway}, {served} \
                     (nftables table {})",
                    out.unwrap_or("any other interface"),
                    rules.table()
                );
                Ok((
                    Some(NatVif {
                        _dhcp: dhcp,
                        _rules: rules,
                    }),
                    how,
                ))
            }
        }
    };
    let (nat, done) = setup().map_err(|e| format!("{label} ({name}): {e}"))?;
    Ok((tap, nat, done))
}

/// What a vif's backend needs.
pub struct VifSetup {
    /// The XenStore daemon's socket.
    pub socket: PathBuf,
    /// The domain.
    pub domain: Arc<Domain>,
    /// The vif's two XenStore directories.
    pub paths: DevicePaths,
    /// Its device id.
    pub devid: u32,
    /// Its TAP device ([`open_tap`]): the first queue.
    pub tap: Arc<Tap>,
    /// The MTU (the frontend's frames are at most this, plus GSO).
    pub mtu: u32,
    /// Queue pairs offered to the frontend (the domain's vCPUs, as netback offers its CPUs).
    pub max_queues: u32,
    /// The transmit rate limit (`rate=`), for the vif as a whole.
    pub rate: Option<Rate>,
    /// Where messages go (the domain's log).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// Starts a vif's backend: it publishes the features and waits for the frontend.
pub fn start(setup: VifSetup) -> Result<Backend, String> {
    let device = VifDevice {
        domain: setup.domain,
        devid: setup.devid,
        tap: setup.tap,
        mtu: setup.mtu,
        max_queues: setup.max_queues.max(1),
        rate: setup.rate,
        log: setup.log.clone(),
        connected: None,
    };
    Backend::start(setup.socket, setup.paths, Box::new(device), setup.log)
}

struct VifDevice {
    domain: Arc<Domain>,
    devid: u32,
    tap: Arc<Tap>,
    mtu: u32,
    max_queues: u32,
    rate: Option<Rate>,
    log: Arc<dyn Fn(&str) + Send + Sync>,
    connected: Option<Serving>,
}

/// The queue threads of a connected frontend, and the ports bound for them.
struct Serving {
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
    ports: Vec<u32>,
}

impl Serving {
    fn end(self, domain: &Domain) {
        let _ = self.stop.signal();
        for t in self.threads {
            let _ = t.join();
        }
        for p in self.ports {
            let _ = domain.evtchn_unbind(p);
        }
    }
}

impl VifDevice {
    /// Starts queue `q`'s thread over its rings, TAP queue and event channel(s).
    fn start_queue(
        &self,
        serving: &mut Serving,
        q: usize,
        keys: &NetQueueKeys,
        options: NetOptions,
        shaper: Option<&Arc<Mutex<Shaper>>>,
    ) -> Result<(), String> {
        let grants = Arc::new(KeelGrants(self.domain.clone()));
        let mut queue = NetQueue::attach(grants, keys.tx_ring_ref, keys.rx_ring_ref, options)
            .map_err(|e| format!("queue {q}: mapping the rings: {e}"))?;
        if let Some(s) = shaper {
            queue.set_shaper(s.clone());
        }
        let tap = if q == 0 {
            self.tap.clone()
        } else {
            Arc::new(
                self.tap
                    .open_queue()
                    .map_err(|e| format!("queue {q}: {e}"))?,
            )
        };
        let kick = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
        let (tx, rx) = (keys.tx_port, keys.rx_port);
        for port in if tx == rx { vec![tx] } else { vec![tx, rx] } {
            self.domain
                .evtchn_bind(port, &kick)
                .map_err(|e| format!("queue {q}: binding event channel {port}: {e}"))?;
            serving.ports.push(port);
        }
        let (domain, log, stop) = (self.domain.clone(), self.log.clone(), serving.stop.clone());
        let devid = self.devid;
        let thread = std::thread::Builder::new()
            .name(format!("vif-{devid}.{q}"))
            .spawn(move || {
                let notify = |port: u32| {
                    let _ = domain.evtchn_notify(port);
                };
                if let Err(e) = queue.run(
                    kick.as_fd(),
                    &*tap,
                    stop.as_fd(),
                    || notify(tx),
                    || notify(rx),
                ) {
                    // As netback, a broken queue disables the whole vif: the others stop too.
                    log(&format!(
                        "vif {devid} queue {q}: the rings stopped, and the vif's other queues: {e}"
                    ));
                    let _ = stop.signal();
                }
                let s = queue.stats();
                log(&format!(
                    "vif {devid} queue {q}: {} packets ({} bytes) from the guest, {} errors, \
                     {} dropped; {} packets ({} bytes) to it, {} dropped; {} notifications \
                     from the frontend, {} to it",
                    s.tx_packets,
                    s.tx_bytes,
                    s.tx_errors,
                    s.tx_dropped,
                    s.rx_packets,
                    s.rx_bytes,
                    s.rx_dropped,
                    s.kicks,
                    s.notifications
                ));
            })
            .map_err(|e| format!("cannot start the vif's thread: {e}"))?;
        serving.threads.push(thread);
        Ok(())
    }
}

impl Device for VifDevice {
    fn label(&self) -> String {
        format!("vif {}", self.devid)
    }

    fn features(&self) -> Vec<(String, String)> {
        backend_keys(self.max_queues)
    }

    fn connect(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<(String, String)>, String), String> {
        let cfg = parse_frontend_keys(lookup, self.max_queues)
            .map_err(|e| format!("the frontend's keys: {e}"))?;
        let options = cfg.options(self.mtu as usize);
        // Frames from the host may leave their checksum to the guest, and come as TCP
        // segments of up to 64 KiB, only as far as the frontend takes them (a segment spans
        // several slots: only with scatter-gather).
        let csum = !cfg.no_csum_offload;
        let tso = csum && cfg.sg;
        self.tap
            .set_offload(csum, tso && cfg.gso_tcpv4, tso && cfg.gso_tcpv6)
            .map_err(|e| format!("the TAP's offloads: {e}"))?;
        let mut serving = Serving {
            stop: Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?),
            threads: Vec::new(),
            ports: Vec::new(),
        };
        // One credit for the vif, whichever queue the guest sends on.
        let shaper = self.rate.map(|r| {
            let interval = Duration::from_micros(u64::from(r.interval_usecs));
            Arc::new(Mutex::new(Shaper::new(
                r.bytes_per_interval,
                interval,
                Instant::now(),
            )))
        });
        for (q, keys) in cfg.queues.iter().enumerate() {
            if let Err(e) = self.start_queue(&mut serving, q, keys, options, shaper.as_ref()) {
                serving.end(&self.domain);
                return Err(e);
            }
        }
        let split = cfg.queues.iter().any(|k| k.tx_port != k.rx_port);
        self.connected = Some(serving);
        Ok((
            Vec::new(),
            format!(
                "connected to {} ({} queue(s){}{}, sg {}, gso {})",
                self.tap.name(),
                cfg.queues.len(),
                if split { ", split event channels" } else { "" },
                self.rate.map_or(String::new(), |r| format!(
                    ", at most {} bytes per {} us",
                    r.bytes_per_interval, r.interval_usecs
                )),
                u8::from(cfg.sg),
                u8::from(cfg.gso_tcpv4 || cfg.gso_tcpv6)
            ),
        ))
    }

    fn disconnect(&mut self) {
        if let Some(s) = self.connected.take() {
            s.end(&self.domain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vif(spec: &str) -> Vif {
        Vif::parse(spec, 0).expect("a valid vif spec").0
    }

    #[test]
    fn routed_addresses_are_ipv4_hosts() {
        assert_eq!(
            routed_addresses("vif 0", &vif("script=vif-route, ip=10.0.0.2 10.0.0.3/32")),
            Ok(vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)])
        );
        let e = routed_addresses("vif 0", &vif("script=vif-route")).unwrap_err();
        assert!(e.contains("needs the guest's address (ip=)"), "{e}");
        let e = routed_addresses("vif 0", &vif("script=vif-route, ip=10.0.0.0/24")).unwrap_err();
        assert!(e.contains("`10.0.0.0/24' is not an IPv4 address"), "{e}");
    }

    #[test]
    fn nat_addresses_give_the_gateway_first_in_the_network() {
        let a = |spec| nat_addresses("vif 0", 3, &vif(spec));
        let ip = Ipv4Addr::new;
        assert_eq!(
            a("script=vif-nat, ip=10.99.2.7"),
            Ok((ip(10, 99, 2, 7), ip(10, 99, 2, 1), 24))
        );
        assert_eq!(
            a("script=vif-nat, ip=172.16.9.200/16"),
            Ok((ip(172, 16, 9, 200), ip(172, 16, 0, 1), 16))
        );
        assert_eq!(
            a("script=vif-nat, ip=192.168.5.6/30"),
            Ok((ip(192, 168, 5, 6), ip(192, 168, 5, 5), 30))
        );
        // Without ip=: Xen's vif-nat default, the gateway 127 above the guest.
        assert_eq!(
            a("script=vif-nat"),
            Ok((ip(10, 0, 3, 1), ip(10, 0, 3, 128), 16))
        );
        let b = |domid, spec: &str| nat_addresses("vif 1", domid, &vif(spec));
        assert_eq!(
            b(300, "script=vif-nat, devid=1"),
            Ok((ip(10, 1, 44, 2), ip(10, 1, 44, 129), 16))
        );
        assert_eq!(
            b(256, "script=vif-nat, devid=126"),
            Ok((ip(10, 1, 0, 127), ip(10, 1, 0, 254), 16))
        );
        for devid in ["127", "4294967295"] {
            let e = b(3, &format!("script=vif-nat, devid={devid}")).unwrap_err();
            assert!(e.contains("for devids below 127; give ip="), "{e}");
        }
        for (spec, says) in [
            ("script=vif-nat, ip=10.99.2.255", "broadcast"),
            (
                "script=vif-nat, ip=10.99.2.2/31",
                "prefix length must be 8 to 30",
            ),
            ("script=vif-nat, ip=10.99.2.2/x", "prefix length"),
            ("script=vif-nat, ip=host", "`host' is not an IPv4 address"),
        ] {
            let e = a(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn a_nat_network_must_not_overlap_dom0s() {
        let ip = Ipv4Addr::new;
        let h = |dev: &str, addr, prefix| HostAddr {
            dev: dev.into(),
            addr,
            prefix,
        };
        let dom0 = [
            h("lo", ip(127, 0, 0, 1), 8),
            h("eth0", ip(192, 168, 1, 10), 24),
            h("vif3.0", ip(10, 99, 2, 1), 32),
            h("br0", ip(172, 16, 0, 1), 16),
        ];
        let free = |guest, prefix| nat_network_is_free("vif 0", guest, prefix, &dom0);
        // Another NAT vif's gateway (a /32) is no LAN: NAT guests may share a network.
        assert_eq!(free(ip(10, 99, 2, 5), 24), Ok(()));
        // But not that gateway's address.
        let e = free(ip(10, 99, 2, 1), 24).unwrap_err();
        assert!(e.contains("an address of Dom0's (vif3.0)"), "{e}");
        assert_eq!(free(ip(10, 0, 0, 2), 24), Ok(()));
        assert_eq!(free(ip(192, 168, 2, 2), 24), Ok(()));
        let e = free(ip(192, 168, 1, 50), 24).unwrap_err();
        assert!(e.contains("overlaps eth0's 192.168.1.10/24"), "{e}");
        // A wider guest network that takes a LAN in, or one inside a LAN.
        assert!(free(ip(192, 168, 7, 2), 16).unwrap_err().contains("eth0"));
        assert!(free(ip(172, 16, 200, 2), 24).unwrap_err().contains("br0"));
        assert!(overlaps(ip(10, 0, 0, 0), 8, ip(10, 200, 3, 4), 30));
        assert!(!overlaps(ip(10, 0, 0, 0), 30, ip(10, 0, 0, 4), 30));
    }

    #[test]
    fn a_nat_gateway_must_not_be_a_routed_guests_address() {
        // Destinations and masks as the file has them: little-endian words on x86.
        let word = |a: [u8; 4]| format!("{:08X}", u32::from_ne_bytes(a));
        let text = format!(
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
             eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
             vif5.0\t{}\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
             br0\t{}\t00000000\t0001\t0\t0\t0\t{}\t0\t0\t0\n",
            word([10, 0, 5, 1]),
            word([10, 99, 0, 0]),
            word([255, 255, 255, 0])
        );
        let routes = host_routes(&text);
        assert_eq!(
            routes,
            vec![(Ipv4Addr::new(10, 0, 5, 1), "vif5.0".to_owned())]
        );
        let e = gateway_is_no_guests("vif 0", Ipv4Addr::new(10, 0, 5, 1), &routes).unwrap_err();
        assert!(e.contains("the guest behind vif5.0"), "{e}");
        assert_eq!(
            gateway_is_no_guests("vif 0", Ipv4Addr::new(10, 0, 5, 2), &routes),
            Ok(())
        );
    }

    #[test]
    fn modes_not_served_are_refused_before_anything_is_made() {
        for (spec, says) in [
            (
                "script=vif-nat, ip=10.0.0.1",
                "is the network's first or broadcast",
            ),
            ("script=my-script", "runs no hotplug scripts"),
            ("backend=netdom", "backend=netdom"),
            ("script=vif-route", "ip="),
        ] {
            let e = open_tap(3, &vif(spec), "guest", Arc::new(|_: &str| {}))
                .map(|_| ())
                .unwrap_err();
            assert!(e.starts_with("vif 0: ") && e.contains(says), "{spec}: {e}");
        }
    }
}
