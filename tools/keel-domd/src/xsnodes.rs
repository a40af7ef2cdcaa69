//! The XenStore nodes the toolstack writes for a domain and its virtual disks, laid out as
//! Xen's libxl lays them out (tools/libs/light/libxl_create.c `libxl__domain_make`,
//! libxl_dom.c `libxl__build_post`, libxl_disk.c / libxl_device.c for `vbd`), with Xen's
//! permission strings: the first entry names the owner (who may do anything) and what every
//! other domain may do (`n` nothing, `r` read, `w` write, `b` both); later entries grant one
//! domain more. Pure data: the daemon writes them through its XenStore connection.

use keel_xlcfg::{Access, Disk, Mac, Vif, VifScript};

/// One node: an absolute path, its value and its permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The absolute path.
    pub path: String,
    /// The value.
    pub value: String,
    /// Xen's permission strings, owner first (`["n0", "r5"]`).
    pub perms: Vec<String>,
}

/// What a domain's nodes are made from.
#[derive(Clone, Debug)]
pub struct DomainFacts<'a> {
    /// The domain's id.
    pub domid: u32,
    /// Its name.
    pub name: &'a str,
    /// Its UUID, as text.
    pub uuid: String,
    /// vCPUs online at boot.
    pub vcpus: u32,
    /// vCPUs the domain may have (`maxvcpus`).
    pub max_vcpus: u32,
    /// RAM at boot, KiB (`memory/target`).
    pub target_kib: u64,
    /// The most RAM it may have, KiB (`memory/static-max`).
    pub max_kib: u64,
    /// The XenStore ring's pfn and port.
    pub store: (u64, u32),
    /// The console ring's pfn and port.
    pub console: (u64, u32),
    /// When the domain was built (this build: a restart's is new), as seconds since the
    /// epoch.
    pub start_time: std::time::Duration,
}

/// A start time as libxl writes `/vm/<uuid>/start_time`: seconds, a dot, hundredths.
pub fn start_time_text(t: std::time::Duration) -> String {
    format!("{}.{:02}", t.as_secs(), t.subsec_millis() / 10)
}

/// Owned by Dom0, readable by the domain (libxl's `roperm`).
fn ro(domid: u32) -> Vec<String> {
    vec!["n0".into(), format!("r{domid}")]
}

/// Owned by the domain (libxl's `rwperm`): it may read and write, and so may Dom0.
fn rw(domid: u32) -> Vec<String> {
    vec![format!("n{domid}")]
}

/// The domain's home, `/local/domain/<domid>`.
pub fn home(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// The nodes of a new domain: its home and the `/vm/<uuid>` entry.
pub fn domain_nodes(f: &DomainFacts<'_>) -> Vec<Node> {
    let d = f.domid;
    let home = home(d);
    let vm = format!("/vm/{}", f.uuid);
    let mut v = Vec::new();
    let mut add =
        |path: String, value: String, perms: Vec<String>| v.push(Node { path, value, perms });
    add(home.clone(), String::new(), ro(d));
    add(vm.clone(), String::new(), ro(d));
    add(format!("{vm}/uuid"), f.uuid.clone(), ro(d));
    add(format!("{vm}/name"), f.name.into(), ro(d));
    // What `xl uptime` (and `keelctl uptime`) count from.
    add(
        format!("{vm}/start_time"),
        start_time_text(f.start_time),
        ro(d),
    );
    add(format!("{home}/vm"), vm.clone(), ro(d));
    add(format!("{home}/name"), f.name.into(), ro(d));
    add(format!("{home}/domid"), d.to_string(), ro(d));
    // The directories the guest writes into.
    for dir in [
        "control", "device", "error", "drivers", "attr", "data", "messages", "feature",
    ] {
        add(format!("{home}/{dir}"), String::new(), rw(d));
    }
    // Written "" by the guest when it takes a request (a transaction in `shutdown_handler`).
    add(format!("{home}/control/shutdown"), String::new(), rw(d));
    add(format!("{home}/control/sysrq"), String::new(), rw(d));
    add(
        format!("{home}/control/platform-feature-multiprocessor-suspend"),
        "1".into(),
        ro(d),
    );
    add(
        format!("{home}/control/platform-feature-xs_reset_watches"),
        "1".into(),
        ro(d),
    );
    add(format!("{home}/memory"), String::new(), ro(d));
    add(
        format!("{home}/memory/static-max"),
        f.max_kib.to_string(),
        ro(d),
    );
    add(
        format!("{home}/memory/target"),
        f.target_kib.to_string(),
        ro(d),
    );
    add(format!("{home}/memory/videoram"), "-1".into(), ro(d));
    for i in 0..f.max_vcpus {
        let state = if i < f.vcpus { "online" } else { "offline" };
        add(format!("{home}/cpu/{i}/availability"), state.into(), ro(d));
    }
    add(format!("{home}/store/port"), f.store.1.to_string(), ro(d));
    add(
        format!("{home}/store/ring-ref"),
        f.store.0.to_string(),
        ro(d),
    );
    add(
        format!("{home}/console/port"),
        f.console.1.to_string(),
        ro(d),
    );
    add(
        format!("{home}/console/ring-ref"),
        f.console.0.to_string(),
        ro(d),
    );
    add(format!("{home}/console/limit"), "1048576".into(), ro(d));
    add(format!("{home}/console/type"), "xenconsoled".into(), ro(d));
    v
}

/// Where a PV device's two halves live: the frontend's directory (the guest's) and the
/// backend's (Dom0's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePaths {
    /// `/local/domain/<domid>/device/vbd/<devid>`.
    pub frontend: String,
    /// `/local/domain/0/backend/vbd/<domid>/<devid>`.
    pub backend: String,
}

/// The paths of disk `devid` (the vdev's number) of domain `domid`.
pub fn vbd_paths(domid: u32, devid: u32) -> DevicePaths {
    DevicePaths {
        frontend: format!("{}/device/vbd/{devid}", home(domid)),
        backend: format!("/local/domain/0/backend/vbd/{domid}/{devid}"),
    }
}

/// A PV device's nodes before either side connects (libxl_device.c's skeleton: both halves in
/// state 1, Initialising): the frontend's owned by the guest and readable by Dom0, the
/// backend's owned by Dom0 and readable by the guest (the frontend reads the backend's state
/// and features). [`DeviceNodes::front`] and [`DeviceNodes::back`] add the kind's own keys.
struct DeviceNodes {
    paths: DevicePaths,
    fperms: Vec<String>,
    bperms: Vec<String>,
    front: Vec<Node>,
    back: Vec<Node>,
}

impl DeviceNodes {
    fn new(domid: u32, paths: DevicePaths) -> Self {
        let mut n = DeviceNodes {
            fperms: vec![format!("n{domid}"), "r0".to_string()],
            bperms: vec!["n0".to_string(), format!("r{domid}")],
            front: Vec::new(),
            back: Vec::new(),
            paths,
        };
        let (f, b) = (n.paths.frontend.clone(), n.paths.backend.clone());
        n.front(None, String::new());
        n.front(Some("backend"), b);
        n.front(Some("backend-id"), "0".into());
        n.back(None, String::new());
        n.back(Some("frontend"), f);
        n.back(Some("frontend-id"), domid.to_string());
        n.back(Some("online"), "1".into());
        n
    }

    fn node(dir: &str, key: Option<&str>, value: String, perms: &[String]) -> Node {
        Node {
            path: key.map_or_else(|| dir.to_owned(), |k| format!("{dir}/{k}")),
            value,
            perms: perms.to_vec(),
        }
    }

    /// A key in the frontend's directory (`None`: the directory itself).
    fn front(&mut self, key: Option<&str>, value: String) {
        let n = Self::node(&self.paths.frontend, key, value, &self.fperms);
        self.front.push(n);
    }

    /// A key in the backend's directory (`None`: the directory itself).
    fn back(&mut self, key: Option<&str>, value: String) {
        let n = Self::node(&self.paths.backend, key, value, &self.bperms);
        self.back.push(n);
    }

    /// The paths and the nodes, each half's `state` last.
    fn finish(mut self) -> (DevicePaths, Vec<Node>) {
        self.front(Some("state"), "1".into());
        self.back(Some("state"), "1".into());
        let mut v = self.front;
        v.append(&mut self.back);
        (self.paths, v)
    }
}

/// The nodes of a disk before either side connects (libxl_disk.c's keys).
pub fn vbd_nodes(domid: u32, disk: &Disk) -> (DevicePaths, Vec<Node>) {
    let devid = disk.vdev.number;
    let target = disk
        .path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mode = match disk.access {
        Access::ReadOnly => "r",
        Access::ReadWrite => "w",
    };
    let kind = if disk.cdrom { "cdrom" } else { "disk" };
    let mut n = DeviceNodes::new(domid, vbd_paths(domid, devid));
    n.front(Some("virtual-device"), devid.to_string());
    n.front(Some("device-type"), kind.into());
    n.back(Some("removable"), u8::from(disk.cdrom).to_string());
    n.back(Some("bootable"), "1".into());
    n.back(Some("dev"), disk.vdev.name.clone());
    n.back(Some("type"), "file".into());
    n.back(Some("mode"), mode.into());
    n.back(Some("params"), target);
    n.back(Some("device-type"), kind.into());
    n.finish()
}

/// The paths of vif `devid` of domain `domid`.
pub fn vif_paths(domid: u32, devid: u32) -> DevicePaths {
    DevicePaths {
        frontend: format!("{}/device/vif/{devid}", home(domid)),
        backend: format!("/local/domain/0/backend/vif/{domid}/{devid}"),
    }
}

/// A vif's MAC address when its config gives none: in Xen's OUI 00:16:3e (locally
/// administered bits clear, as libxl's random ones), the rest a hash of the domain's `key`
/// (its UUID, or its name) and the device id, so that it is the same at every start of the
/// domain (libxl draws a random one each time; a guest's DHCP lease and udev naming
/// then break on every restart).
pub fn default_mac(key: &str, devid: u32) -> Mac {
    // FNV-1a over the key, a separator and the device id.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes().chain([0]).chain(devid.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let [a, b, c, ..] = h.to_le_bytes();
    Mac([0x00, 0x16, 0x3e, a & 0x7f, b, c])
}

/// The nodes of a vif before either side connects (libxl_nic.c's keys). `tap` is the backend
/// interface's name.
pub fn vif_nodes(domid: u32, vif: &Vif, mac: Mac, tap: &str) -> (DevicePaths, Vec<Node>) {
    let script = match &vif.script {
        VifScript::Bridge => "vif-bridge".to_string(),
        VifScript::Route => "vif-route".to_string(),
        VifScript::Nat => "vif-nat".to_string(),
        VifScript::Other(p) => p.display().to_string(),
    };
    let mut n = DeviceNodes::new(domid, vif_paths(domid, vif.devid));
    n.front(Some("handle"), vif.devid.to_string());
    n.front(Some("mac"), mac.to_string());
    if let Some(mtu) = vif.mtu.filter(|&m| m != 0) {
        n.front(Some("mtu"), mtu.to_string());
    }
    n.back(Some("script"), script);
    n.back(Some("mac"), mac.to_string());
    if vif.script == VifScript::Bridge {
        n.back(Some("bridge"), vif.bridge.clone());
    }
    if let Some(ip) = &vif.ip {
        n.back(Some("ip"), ip.clone());
    }
    if let Some(r) = vif.rate {
        // libxl's form: bytes per interval, the interval in microseconds.
        n.back(
            Some("rate"),
            format!("{},{}", r.bytes_per_interval, r.interval_usecs),
        );
    }
    n.back(Some("handle"), vif.devid.to_string());
    n.back(Some("type"), "vif".into());
    n.back(Some("vifname"), tap.into());
    n.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_xlcfg::Disk;

    fn facts() -> DomainFacts<'static> {
        DomainFacts {
            domid: 7,
            name: "web",
            uuid: "00000000-0000-0000-0000-000000000007".into(),
            vcpus: 2,
            max_vcpus: 3,
            target_kib: 262144,
            max_kib: 524288,
            store: (0xfeffc, 1),
            console: (0xfeffd, 2),
            start_time: std::time::Duration::from_millis(1_765_000_000_123),
        }
    }

    fn find<'a>(v: &'a [Node], path: &str) -> &'a Node {
        v.iter()
            .find(|n| n.path == path)
            .unwrap_or_else(|| panic!("no {path}"))
    }

    #[test]
    fn domain_nodes_are_libxls() {
        let v = domain_nodes(&facts());
        let home = find(&v, "/local/domain/7");
        assert_eq!(
            home.perms,
            ["n0", "r7"],
            "the guest reads its home, Dom0 owns it"
        );
        assert_eq!(
            find(&v, "/local/domain/7/vm").value,
            "/vm/00000000-0000-0000-0000-000000000007"
        );
        assert_eq!(
            find(&v, "/local/domain/7/control").perms,
            ["n7"],
            "the guest writes control/"
        );
        assert_eq!(find(&v, "/local/domain/7/control/shutdown").perms, ["n7"]);
        let start = find(&v, "/vm/00000000-0000-0000-0000-000000000007/start_time");
        assert_eq!(start.value, "1765000000.12");
        assert_eq!(start.perms, ["n0", "r7"]);
        assert_eq!(
            start_time_text(std::time::Duration::from_millis(5_009)),
            "5.00"
        );
        assert_eq!(
            start_time_text(std::time::Duration::from_millis(5_990)),
            "5.99"
        );
        assert_eq!(find(&v, "/local/domain/7/memory/target").value, "262144");
        assert_eq!(
            find(&v, "/local/domain/7/memory/target").perms,
            ["n0", "r7"]
        );
        assert_eq!(
            find(&v, "/local/domain/7/cpu/1/availability").value,
            "online"
        );
        assert_eq!(
            find(&v, "/local/domain/7/cpu/2/availability").value,
            "offline"
        );
        assert!(!v
            .iter()
            .any(|n| n.path == "/local/domain/7/cpu/3/availability"));
        assert_eq!(find(&v, "/local/domain/7/store/port").value, "1");
        assert_eq!(
            find(&v, "/local/domain/7/store/ring-ref").value,
            (0xfeffc).to_string()
        );
        // Parents come before their children, so each write finds its parent's perms.
        for (i, n) in v.iter().enumerate() {
            let parent = &n.path[..n.path.rfind('/').unwrap()];
            if let Some(j) = v.iter().position(|m| m.path == parent) {
                assert!(j < i, "{} after its child {}", parent, n.path);
            }
        }
    }

    #[test]
    fn vbd_nodes_both_halves() {
        let d = Disk::parse("/srv/a.img,raw,xvdb,r").unwrap();
        let (p, v) = vbd_nodes(7, &d);
        assert_eq!(p.frontend, "/local/domain/7/device/vbd/51728");
        assert_eq!(p.backend, "/local/domain/0/backend/vbd/7/51728");
        assert_eq!(find(&v, &p.frontend).perms, ["n7", "r0"]);
        assert_eq!(find(&v, &p.backend).perms, ["n0", "r7"]);
        assert_eq!(
            find(&v, &format!("{}/backend", p.frontend)).value,
            p.backend
        );
        assert_eq!(
            find(&v, &format!("{}/device-type", p.frontend)).value,
            "disk"
        );
        assert_eq!(
            find(&v, &format!("{}/virtual-device", p.frontend)).value,
            "51728"
        );
        assert_eq!(find(&v, &format!("{}/state", p.frontend)).value, "1");
        assert_eq!(find(&v, &format!("{}/mode", p.backend)).value, "r");
        assert_eq!(
            find(&v, &format!("{}/params", p.backend)).value,
            "/srv/a.img"
        );
        assert_eq!(find(&v, &format!("{}/frontend-id", p.backend)).value, "7");
    }

    #[test]
    fn default_macs_are_xens_stable_and_distinct() {
        let a = default_mac("00000000-0000-0000-0000-000000000007", 0);
        assert_eq!(a, default_mac("00000000-0000-0000-0000-000000000007", 0));
        assert_eq!(a.0[..3], [0x00, 0x16, 0x3e]);
        assert_eq!(a.0[3] & 0x80, 0);
        assert_ne!(a, default_mac("00000000-0000-0000-0000-000000000007", 1));
        assert_ne!(a, default_mac("00000000-0000-0000-0000-000000000008", 0));
    }

    #[test]
    fn vif_nodes_are_libxls() {
        let (vif, _) = Vif::parse("bridge=br0, ip=10.0.0.2", 1).unwrap();
        let mac = Mac([0, 0x16, 0x3e, 1, 2, 3]);
        let (p, v) = vif_nodes(7, &vif, mac, "vif7.1");
        assert_eq!(p.frontend, "/local/domain/7/device/vif/1");
        assert_eq!(p.backend, "/local/domain/0/backend/vif/7/1");
        assert_eq!(find(&v, &p.frontend).perms, ["n7", "r0"]);
        assert_eq!(find(&v, &p.backend).perms, ["n0", "r7"]);
        for (k, val) in [
            ("backend", p.backend.as_str()),
            ("handle", "1"),
            ("mac", "00:16:3e:01:02:03"),
            ("state", "1"),
        ] {
            assert_eq!(find(&v, &format!("{}/{k}", p.frontend)).value, val, "{k}");
        }
        for (k, val) in [
            ("frontend-id", "7"),
            ("script", "vif-bridge"),
            ("bridge", "br0"),
            ("ip", "10.0.0.2"),
            ("type", "vif"),
            ("vifname", "vif7.1"),
            ("online", "1"),
        ] {
            assert_eq!(find(&v, &format!("{}/{k}", p.backend)).value, val, "{k}");
        }
    }
}
