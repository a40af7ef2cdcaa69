use super::*;

fn vif(spec: &str) -> Vif {
    Vif::parse(spec, 0)
        .unwrap_or_else(|e| panic!("{spec}: {e}"))
        .0
}

fn rate(text: &str) -> (u64, u32) {
    let r = Rate::parse(text).unwrap_or_else(|e| panic!("{e}"));
    (r.bytes_per_interval, r.interval_usecs)
}

#[test]
fn defaults() {
    let (v, warnings) = Vif::parse("", 3).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(v.devid, 3);
    assert_eq!(v.bridge, "xenbr0");
    assert_eq!(v.script, VifScript::Bridge);
    assert_eq!((v.mac, v.mtu, v.rate), (None, None, None));
}

#[test]
fn every_field() {
    let (v, warnings) = Vif::parse(
        "mac=00:16:3E:74:3d:76, bridge=br1,ip=10.0.0.2 10.0.0.3,script=vif-route,vifname=web0,\
         mtu=9000,rate=10Mb/s@20ms,model=e1000,type=vif,backend=drv,gatewaydev=eth0,vlan=10p/20,\
         untrusted,devid=7",
        0,
    )
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(v.mac, Some(Mac([0x00, 0x16, 0x3e, 0x74, 0x3d, 0x76])));
    assert_eq!(v.bridge, "br1");
    assert_eq!(v.ip.as_deref(), Some("10.0.0.2 10.0.0.3"));
    assert_eq!(v.script, VifScript::Route);
    assert_eq!(v.vifname.as_deref(), Some("web0"));
    assert_eq!(v.mtu, Some(9000));
    assert_eq!(
        v.rate,
        Some(Rate {
            bytes_per_interval: 25_000,
            interval_usecs: 20_000
        })
    );
    assert_eq!(v.model.as_deref(), Some("e1000"));
    assert_eq!(v.vif_type, Some(VifType::Vif));
    assert_eq!(v.backend.as_deref(), Some("drv"));
    assert_eq!(v.gatewaydev.as_deref(), Some("eth0"));
    assert_eq!(v.vlan.as_deref(), Some("10p/20"));
    assert_eq!(v.trusted, Some(false));
    assert_eq!(v.devid, 7);
}

#[test]
fn scripts_by_name_or_path() {
    assert_eq!(vif("script=vif-nat").script, VifScript::Nat);
    assert_eq!(
        vif("script=/etc/xen/scripts/vif-bridge").script,
        VifScript::Bridge
    );
    assert_eq!(
        vif("script=/usr/lib/xen/vif-route").script,
        VifScript::Route
    );
    assert_eq!(
        vif("script=vif-openvswitch").script,
        VifScript::Other(PathBuf::from("/etc/xen/scripts/vif-openvswitch"))
    );
    assert_eq!(
        vif("script=/opt/my-vif").script,
        VifScript::Other(PathBuf::from("/opt/my-vif"))
    );
}

#[test]
fn later_keys_win_and_empty_items_are_skipped() {
    let v = vif(",,bridge=a,, bridge=b,");
    assert_eq!(v.bridge, "b");
    assert_eq!(vif("mtu=0").mtu, None);
}

#[test]
fn unknown_and_ignored_parameters_warn() {
    let (_, w) = Vif::parse(
        "colour=red,accel=x,colo_sock_mirror_id=1,flag,netdev=eth1",
        0,
    )
    .unwrap();
    assert_eq!(w.len(), 5, "{w:?}");
    assert!(w[0].contains("colour=red"));
    assert!(w[1].contains("accel"));
    assert!(w[4].contains("deprecated"));
}

#[test]
fn macs() {
    assert_eq!(
        Mac::parse("0:16:3e:0:0:1").unwrap(),
        Mac([0, 0x16, 0x3e, 0, 0, 1])
    );
    assert_eq!(
        Mac::parse("aa-bb-cc-dd-ee-ff").unwrap().to_string(),
        "aa:bb:cc:dd:ee:ff"
    );
    for bad in [
        "",
        "00:16:3e:00:00",
        "00:16:3e:00:00:00:00",
        "00:16:3e:00:00:100",
        "00:16:3e:00:00:zz",
        "00::3e:00:00:01",
    ] {
        assert!(Mac::parse(bad).is_err(), "{bad:?}");
    }
    assert!(Vif::parse("mac=nope", 0).unwrap_err().contains("mac"));
}

#[test]
fn rates() {
    // The manual's examples.
    assert_eq!(rate("10Mb/s"), (62_500, 50_000));
    assert_eq!(rate("250KB/s"), (12_500, 50_000));
    assert_eq!(rate("1MB/s@20ms"), (20_000, 20_000));
    assert_eq!(rate("1GB/s@1s"), (1_000_000_000, 1_000_000));
    assert_eq!(rate("8b/s@1"), (1, 1_000_000));
    assert_eq!(rate("1000B/s@2m"), (2, 2_000));
    assert_eq!(rate("1000B/s@1ms"), (1, 1000));
    assert_eq!(rate("4294967295GB/s@1us"), (4_294_967_295_000, 1));
}

#[test]
fn rate_refusals() {
    for bad in [
        "",
        "@20ms",
        "10",
        "10M/s",
        "10MB",
        "10mb/s",
        "10MB/s@",
        "10MB/s@20ks",
        "0MB/s",
        "4294967296B/s",
        "010MB/s",
        "1MB/s@0",
        "1MB/s@4295s",
        "1MB/s@20ms@1",
        " 1MB/s",
        // Less than a byte per interval (xl takes it; Xen's netback then sends nothing).
        "1000B/s@3u",
        "1000B/s@500us",
        "7b/s",
    ] {
        assert!(Rate::parse(bad).is_err(), "{bad:?}");
    }
    assert!(Vif::parse("rate=fast", 0).is_err());
}

#[test]
fn numeric_fields_and_type() {
    assert!(Vif::parse("mtu=big", 0).is_err());
    assert!(Vif::parse("mtu=-1", 0).is_err());
    assert!(Vif::parse("devid=99999999999", 0).is_err());
    assert!(Vif::parse("type=tap", 0).is_err());
    assert_eq!(vif("type=ioemu").vif_type, Some(VifType::Ioemu));
}

#[test]
fn random_specs_never_panic() {
    const PIECES: &[&str] = &[
        "mac=", "rate=", "@", "ms", "Mb/s", "B/s", "1", "0", ":", ",", "=", " ", "mtu=", "G", "é",
        "script=", "/", "trusted",
    ];
    let mut rng = crate::testutil::Rng(99);
    for _ in 0..20_000 {
        let n = rng.below(10);
        let spec: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let _ = Vif::parse(&spec, 0);
        let _ = Rate::parse(&spec);
    }
}
