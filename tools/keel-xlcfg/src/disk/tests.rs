use super::*;

fn disk(spec: &str) -> Disk {
    Disk::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn error(spec: &str) -> String {
    Disk::parse(spec).expect_err(spec)
}

fn vdev(name: &str) -> u32 {
    Vdev::parse(name).unwrap_or_else(|e| panic!("{e}")).number
}

#[test]
fn vdev_numbers() {
    assert_eq!(vdev("xvda"), 202 << 8);
    assert_eq!(vdev("xvdb"), (202 << 8) | (1 << 4));
    assert_eq!(vdev("xvda1"), (202 << 8) | 1);
    assert_eq!(vdev("xvdp15"), (202 << 8) | (15 << 4) | 15);
    // Past disk 15 or partition 15: the extended form.
    assert_eq!(vdev("xvdq"), (1 << 28) | (16 << 8));
    assert_eq!(vdev("xvdz"), (1 << 28) | (25 << 8));
    assert_eq!(vdev("xvdaa"), (1 << 28) | (26 << 8));
    assert_eq!(vdev("xvdba"), (1 << 28) | (52 << 8));
    assert_eq!(vdev("xvda16"), (1 << 28) | 16);
    assert_eq!(vdev("xvda255"), (1 << 28) | 255);
    assert_eq!(vdev("hda"), 3 << 8);
    assert_eq!(vdev("hdb"), (3 << 8) | (1 << 6));
    assert_eq!(vdev("hdc"), 22 << 8);
    assert_eq!(vdev("hdd63"), (22 << 8) | (1 << 6) | 63);
    assert_eq!(vdev("sda"), 8 << 8);
    assert_eq!(vdev("sdb2"), (8 << 8) | (1 << 4) | 2);
    assert_eq!(vdev("d0p0"), 202 << 8);
    assert_eq!(vdev("d0p1"), (202 << 8) | 1);
    assert_eq!(vdev("d16p0"), (1 << 28) | (16 << 8));
    assert_eq!(vdev("d1048575p255"), (1 << 28) | (1_048_575 << 8) | 255);
    assert_eq!(vdev("51712"), 51712);
    assert_eq!(vdev("0xca00"), 51712);
}

#[test]
fn vdev_refusals() {
    for bad in [
        "",
        "xvd",
        "xvd1",
        "xvda0",
        "xvda01",
        "xvda256",
        "xvdA",
        "hde",
        "hda64",
        "sdq",
        "sda16",
        "d0",
        "d0p",
        "dxp1",
        "d01p1",
        "d1048576p0",
        "d0p256",
        "vda",
        "2147483648",
        "-1",
        "xvda-1",
        "xvda ",
    ] {
        assert!(Vdev::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn keyword_form_with_every_field() {
    let d = disk(
        "format=qcow2, vdev=xvdb, access=ro, devtype=disk, backend=drv, backendtype=qdisk, \
         specification=xen, script=block-foo, direct-io-safe, no-discard, untrusted, \
         grant_usage=0, target=iqn.x:y,z",
    );
    assert_eq!(d.format, DiskFormat::Qcow2);
    assert_eq!(d.vdev.name, "xvdb");
    assert_eq!(d.access, Access::ReadOnly);
    assert!(!d.cdrom);
    assert_eq!(d.backend.as_deref(), Some("drv"));
    assert_eq!(d.backend_type, Some(BackendType::Qdisk));
    assert_eq!(d.specification, Some(Specification::Xen));
    assert_eq!(d.script.as_deref(), Some("block-foo"));
    assert!(d.direct_io_safe);
    assert_eq!(d.discard, Some(false));
    assert_eq!(d.trusted, Some(false));
    assert_eq!(d.grant_usage, Some(false));
    // target= takes the rest, commas and colons too; with a script it is no path.
    assert_eq!(d.target.as_deref(), Some("iqn.x:y,z"));
    assert_eq!(d.path(), None);
    assert_eq!(
        d.script_path(),
        Some(PathBuf::from("/etc/xen/scripts/block-foo"))
    );
}

#[test]
fn documented_equivalents() {
    let want = disk("format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume");
    for spec in [
        "/dev/vg/guest-volume,,hda",
        "/dev/vg/guest-volume,raw,hda,rw",
        "raw:/dev/vg/guest-volume,hda,w",
    ] {
        assert_eq!(disk(spec), want, "{spec}");
    }
    let cd = disk("format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso");
    for spec in [
        "/root/image.iso,,hdc,cdrom",
        "/root/image.iso,,hdc,,cdrom",
        "/root/image.iso,raw,hdc,devtype=cdrom",
        "raw:/root/image.iso,hdc:cdrom,ro",
    ] {
        assert_eq!(disk(spec), cd, "{spec}");
    }
    assert!(cd.cdrom);
    assert_eq!(cd.access, Access::ReadOnly);
}

#[test]
fn positional_forms() {
    let d = disk("/srv/a.img,raw,xvda,rw");
    assert_eq!(d.path(), Some(PathBuf::from("/srv/a.img")));
    assert_eq!(d.access, Access::ReadWrite);
    let d = disk("phy:/dev/sdb,xvdb,r");
    assert_eq!(d.target.as_deref(), Some("/dev/sdb"));
    assert_eq!(d.vdev.number, (202 << 8) | (1 << 4));
    assert_eq!(d.access, Access::ReadOnly);
    assert_eq!(d.format, DiskFormat::Raw);
    let d = disk("tap:aio:/i.img,xvdc,w");
    assert_eq!(d.target.as_deref(), Some("/i.img"));
    let d = disk("qcow2:/i.qcow2,xvdd,w");
    assert_eq!(d.format, DiskFormat::Qcow2);
    // Keywords first, then positionals fill what is left.
    let d = disk("format=raw,/x,xvde");
    assert_eq!(
        (d.target.as_deref(), d.vdev.name.as_str()),
        (Some("/x"), "xvde")
    );
    // Leading blanks are dropped.
    assert_eq!(disk("  /x,\traw,\n xvda").vdev.name, "xvda");
}

#[test]
fn deprecated_script_prefixes() {
    let d = disk("iscsi:iqn.2001-04.com.example:disk,xvda,w");
    assert_eq!(d.script.as_deref(), Some("block-iscsi"));
    assert_eq!(d.path(), None);
    assert!(error("foo:/x,xvda").contains("unknown deprecated disk prefix"));
}

#[test]
fn relative_targets_are_under_dev() {
    assert_eq!(
        disk("vg/guest,raw,xvda").path(),
        Some(PathBuf::from("/dev/vg/guest"))
    );
    assert_eq!(disk("sdb,,xvda").path(), Some(PathBuf::from("/dev/sdb")));
}

#[test]
fn empty_cdroms() {
    let d = disk(",hdc:cdrom,r");
    assert!(d.cdrom);
    assert_eq!(d.format, DiskFormat::Empty);
    assert_eq!(d.path(), None);
    let d = disk("vdev=xvdc, devtype=cdrom");
    assert_eq!((d.format, d.target), (DiskFormat::Empty, None));
    // A cdrom is read-only whatever access says.
    assert_eq!(disk("/a.iso,raw,xvdd,rw,cdrom").access, Access::ReadOnly);
}

#[test]
fn refusals() {
    assert!(error("/x").contains("no vdev"));
    assert!(error("vdev=xvda").contains("no target"));
    assert!(error(",,xvda").contains("empty target"));
    assert!(error("/x,raw,xvda,rw,extra").contains("too many positional"));
    assert!(error("/x,vmdk,xvda").contains("unknown value for format"));
    assert!(error("/x,raw,xvda,rx").contains("unknown value for access"));
    assert!(error("/x,,xvda,devtype=floppy").contains("unknown value for type"));
    assert!(error("/x,,xvda,backendtype=nbd").contains("backendtype"));
    assert!(error("/x,,xvda,specification=scsi").contains("specification"));
    assert!(error("/x,,xvda,grant_usage=2").contains("grant_usage"));
    assert!(error("/x,,xvda,colour=red").contains("unknown parameter"));
    assert!(error("/x,,xvda,Bad=1").contains("bad disk syntax"));
    assert!(error("/x,,hdc:floppy").contains("unknown deprecated type"));
    assert!(error("/x,,xvdz9999").contains("invalid virtual disk"));
}

#[test]
fn respecification() {
    assert!(error("vdev=xvda,vdev=xvdb,target=/x").contains("vdev respecified"));
    assert!(error("format=raw,format=qcow2,vdev=xvda,target=/x").contains("format respecified"));
    assert!(error("/x,raw,xvda,target=/y").contains("target respecified"));
    // Same value again, or replacing an empty string, is fine (xl's rules).
    disk("format=raw,format=raw,vdev=xvda,target=/x");
    assert_eq!(disk(",raw,xvda,target=/y").target.as_deref(), Some("/y"));
}

#[test]
fn flags_and_colo() {
    let d = disk("/x,,xvda,discard,trusted,colo,colo-host=h,colo-port=9000");
    assert_eq!(d.discard, Some(true));
    assert_eq!(d.trusted, Some(true));
    assert_eq!(d.colo, ["colo", "colo-host=h", "colo-port=9000"]);
    assert!(error("/x,,xvda,colo-port=x").contains("colo_port"));
}

#[test]
fn random_specs_never_panic() {
    const PIECES: &[&str] = &[
        "/x",
        ",",
        "raw",
        "raw:",
        "phy:",
        "xvda",
        "hdc:cdrom",
        "target=",
        "vdev=",
        "=",
        ":",
        " ",
        "cdrom",
        "access=",
        "r",
        "d0p1",
        "é",
        "iscsi:",
        "foo:",
        "0x",
        "\t",
    ];
    let mut rng = crate::testutil::Rng(7);
    for _ in 0..20_000 {
        let n = rng.below(12);
        let spec: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let _ = Disk::parse(&spec);
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        let _ = Disk::parse(&String::from_utf8_lossy(&bytes));
        let _ = Vdev::parse(&spec);
    }
}
