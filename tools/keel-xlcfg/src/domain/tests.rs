use super::*;

const BASE: &str = "name = \"web\"\ntype = \"pvh\"\nkernel = \"/boot/vmlinuz\"\n";

fn config(text: &str) -> Config {
    Config::parse("g.cfg", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"))
}

fn domain(extra: &str) -> DomainConfig {
    DomainConfig::from_config(&config(&format!("{BASE}{extra}")), Path::new("/cwd"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> Diagnostic {
    DomainConfig::from_config(&config(text), Path::new("/cwd")).expect_err(text)
}

fn error_with(extra: &str) -> Diagnostic {
    error(&format!("{BASE}{extra}"))
}

#[test]
fn defaults() {
    let d = domain("");
    assert_eq!(d.name, "web");
    assert_eq!(d.kernel, PathBuf::from("/boot/vmlinuz"));
    assert_eq!((d.ramdisk, d.cmdline, d.uuid), (None, None, None));
    assert_eq!((d.memory_mib, d.maxmem_mib), (32, 32));
    assert_eq!((d.vcpus, d.max_vcpus), (1, 1));
    assert_eq!(d.on_poweroff, Action::Destroy);
    assert_eq!(d.on_reboot, Action::Restart);
    assert_eq!(d.on_watchdog, Action::Destroy);
    assert_eq!(d.on_crash, Action::Destroy);
    assert_eq!(d.on_soft_reset, Action::SoftReset);
    assert!(d.disks.is_empty() && d.vifs.is_empty());
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
}

#[test]
fn name_is_required_and_validated() {
    let e = error("type=\"pvh\"\nkernel=\"/k\"");
    assert!(e.message.contains("name must be specified"), "{e}");
    assert_eq!(e.line, None);
    for bad in ["\"\"", "\"123\"", "123", "\"a/b\"", "\"a\\nb\"", "['x']"] {
        let e = error(&format!("name = {bad}\ntype=\"pvh\"\nkernel=\"/k\""));
        assert_eq!(e.line, Some(1), "{bad}: {e}");
        assert!(e.message.contains("`name'"), "{bad}: {e}");
    }
    assert!(validate_name("web-1.example_2").is_ok());
}

#[test]
fn only_pvh() {
    for (ty, what) in [
        ("pv", "PV"),
        ("p", "PV"),
        ("hvm", "HVM"),
        ("h", "HVM"),
        ("", "HVM"),
    ] {
        let e = error(&format!("name=\"a\"\nkernel=\"/k\"\ntype = \"{ty}\""));
        assert!(e.message.contains("Keel runs PVH guests"), "{e}");
        assert!(e.message.contains(what), "{e}");
        assert_eq!(e.line, Some(3));
    }
    assert!(error("name=\"a\"\nkernel=\"/k\"\ntype=\"pvhx\"")
        .message
        .contains("invalid domain type"));
    assert!(error_with("builder = \"generic\"").message.contains("PV"));
    assert!(error_with("builder = \"hvm\"").message.contains("HVM"));
    assert!(error_with("builder = \"xyz\"")
        .message
        .contains("invalid domain builder"));
}

#[test]
fn missing_type_defaults_to_pvh_with_a_warning() {
    let d =
        DomainConfig::from_config(&config("name=\"a\"\nkernel=\"/k\""), Path::new("/")).unwrap();
    assert_eq!(d.warnings.len(), 1);
    assert!(d.warnings[0].message.contains("PV guest"));
}

#[test]
fn paths_are_made_absolute_against_the_working_directory() {
    let c = config("name=\"a\"\ntype=\"pvh\"\nkernel=\"vmlinuz\"\nramdisk='../initrd.img'");
    let d = DomainConfig::from_config(&c, Path::new("/home/u/guests")).unwrap();
    assert_eq!(d.kernel, PathBuf::from("/home/u/guests/vmlinuz"));
    assert_eq!(
        d.ramdisk,
        Some(PathBuf::from("/home/u/guests/../initrd.img"))
    );
    assert_eq!(
        domain("ramdisk=\"/abs\"").ramdisk,
        Some(PathBuf::from("/abs"))
    );
    assert!(error("name=\"a\"\ntype=\"pvh\"")
        .message
        .contains("`kernel' is required"));
    assert!(error_with("ramdisk = \"\"")
        .message
        .contains("`ramdisk' is empty"));
    assert!(error_with("kernel = [\"/k\"]")
        .message
        .contains("`kernel' is a list"));
}

#[test]
fn command_line_from_cmdline_root_and_extra() {
    assert_eq!(
        domain("root=\"/dev/xvda1 ro\"").cmdline.as_deref(),
        Some("root=/dev/xvda1 ro")
    );
    assert_eq!(
        domain("extra=\"console=hvc0\"").cmdline.as_deref(),
        Some("console=hvc0")
    );
    assert_eq!(
        domain("root=\"/dev/xvda1\"\nextra=\"console=hvc0\"")
            .cmdline
            .as_deref(),
        Some("root=/dev/xvda1 console=hvc0")
    );
    let d = domain("cmdline=\"quiet\"\nroot=\"/dev/xvda1\"\nextra=\"x\"");
    assert_eq!(d.cmdline.as_deref(), Some("quiet"));
    assert!(d.warnings[0].message.contains("ignoring root= and extra="));
}

#[test]
fn memory() {
    assert_eq!(
        (
            domain("memory=512").memory_mib,
            domain("memory=512").maxmem_mib
        ),
        (512, 512)
    );
    assert_eq!(domain("memory=\"0x200\"").memory_mib, 512);
    let d = domain("maxmem=1024");
    assert_eq!((d.memory_mib, d.maxmem_mib), (1024, 1024));
    let d = domain("memory=512\nmaxmem=1024");
    assert_eq!((d.memory_mib, d.maxmem_mib), (512, 1024));
    assert!(d.warnings[0].message.contains("balloon"));
    let e = error_with("memory=1024\nmaxmem=512");
    assert!(e.message.contains("below `memory'"), "{e}");
    assert_eq!(e.line, Some(5));
    assert!(error_with("memory=0")
        .message
        .contains("`memory' = 0 is out of range"));
    assert!(error_with("memory=\"-1\"").message.contains("out of range"));
    assert!(error_with("memory=\"lots\"").message.contains("`memory'"));
    assert!(error_with("memory=[512]")
        .message
        .contains("`memory' is a list"));
    assert!(error_with("memory=5\nmemory+=1").message.contains("+="));
}

#[test]
fn vcpus() {
    let d = domain("vcpus=2");
    assert_eq!((d.vcpus, d.max_vcpus), (2, 2));
    let d = domain("vcpus=2\nmaxvcpus=4");
    assert_eq!((d.vcpus, d.max_vcpus), (2, 4));
    let d = domain("maxvcpus=4");
    assert_eq!((d.vcpus, d.max_vcpus), (1, 4));
    let d = domain("maxvcpus=0");
    assert_eq!((d.vcpus, d.max_vcpus), (1, 1));
    assert!(error_with("vcpus=0")
        .message
        .contains("`vcpus' = 0: a domain needs at least 1 vCPU"));
    assert!(error_with("vcpus=4\nmaxvcpus=2")
        .message
        .contains("`maxvcpus' = 2 is below"));
    assert!(error_with("vcpus=4294967296")
        .message
        .contains("out of range"));
    assert!(error_with("maxvcpus=\"-1\"")
        .message
        .contains("out of range"));
    assert!(error_with("vcpus='two'").message.contains("`vcpus'"));
}

#[test]
fn actions() {
    for action in Action::ALL {
        let d = domain(&format!(
            "on_poweroff=\"{action}\"\non_reboot=\"{action}\"\non_crash=\"{action}\"\n\
             on_watchdog=\"{action}\"\non_soft_reset=\"{action}\""
        ));
        assert_eq!(
            [
                d.on_poweroff,
                d.on_reboot,
                d.on_crash,
                d.on_watchdog,
                d.on_soft_reset
            ],
            [action; 5]
        );
        assert_eq!(
            d.warnings.len(),
            if action.supported_by_keel() { 0 } else { 5 },
            "{action}"
        );
        assert_eq!(Action::parse(action.name()), Some(action));
    }
    let e = error_with("on_crash = \"explode\"");
    assert!(
        e.message.contains("unknown on_crash action \"explode\""),
        "{e}"
    );
    assert!(error_with("on_reboot = \"Restart\"")
        .message
        .contains("on_reboot"));
}

#[test]
fn uuids() {
    let text = "6b1b1b0e-7f3c-4d6a-9e2b-0123456789AB";
    let d = domain(&format!("uuid = \"{text}\""));
    assert_eq!(d.uuid.unwrap().to_string(), text.to_lowercase());
    for bad in [
        "6b1b1b0e7f3c4d6a9e2b0123456789ab",
        "6b1b1b0e-7f3c-4d6a-9e2b-0123456789a",
        "6b1b1b0e-7f3c-4d6a-9e2b_0123456789ab",
        "gb1b1b0e-7f3c-4d6a-9e2b-0123456789ab",
    ] {
        assert!(
            error_with(&format!("uuid = \"{bad}\""))
                .message
                .contains("uuid"),
            "{bad}"
        );
    }
    let a = Uuid::generate().unwrap();
    assert_ne!(a, Uuid::generate().unwrap());
    assert_eq!(a.0[6] >> 4, 4);
    assert_eq!(Uuid::parse(&a.to_string()), Some(a));
}

#[test]
fn disks() {
    let d = domain(
        "disk = [ 'format=raw, vdev=xvda, access=rw, target=/srv/web.img',\n\
         'phy:/dev/sdb,xvdb,r',\n ',hdc:cdrom,r' ]",
    );
    assert_eq!(d.disks.len(), 3);
    assert_eq!(d.disks[0].path(), Some(PathBuf::from("/srv/web.img")));
    assert_eq!(d.disks[1].access, crate::disk::Access::ReadOnly);
    assert!(d.disks[2].cdrom);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let e = error_with("disk = [\n '/a,,xvda',\n '/b,,xvda256' ]");
    assert_eq!(e.line, Some(6));
    assert!(
        e.message
            .starts_with("disk[1] `/b,,xvda256': invalid virtual disk"),
        "{e}"
    );
    let e = error_with("disk = [ '/a,,xvda', '/b,,d0p0' ]");
    assert!(e.message.contains("same device as disk[0]"), "{e}");
    assert!(error_with("disk = '/a,,xvda'")
        .message
        .contains("`disk' is a single value"));
    assert!(error_with("disk = [ ['/a,,xvda'] ]")
        .message
        .contains("disk[0] is a list"));
    let d = domain(
        "disk = [ 'format=qcow2,vdev=xvda,target=/a', 'script=block-x,vdev=xvdb,target=t' ]",
    );
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
}

#[test]
fn vifs() {
    let d =
        domain("vif = [ 'mac=00:16:3e:00:00:01, bridge=xenbr0', '', 'script=vif-nat,rate=1MB/s' ]");
    assert_eq!(d.vifs.len(), 3);
    assert_eq!(
        d.vifs.iter().map(|v| v.devid).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(d.vifs[2].script, VifScript::Nat);
    assert!(d.warnings.is_empty(), "{:?}", d.warnings);
    let d = domain("vif = [ 'model=e1000,colour=red' ]");
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
    assert!(d.warnings.iter().all(|w| w.message.starts_with("vif[0]")));
    let e = error_with("vif = [ 'mac=zz' ]");
    assert!(e.message.starts_with("vif[0] `mac=zz': invalid mac"), "{e}");
    assert!(error_with("vif = [ 'devid=1', '' ]")
        .message
        .contains("devid 1"));
}

#[test]
fn unknown_keys_are_warnings() {
    let d = domain("pci = [ '01:00.0' ]\non_crash = \"coredump-restart\"\nbootloader = \"pygrub\"");
    let messages: Vec<&str> = d.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        messages.contains(&"`pci' is not used by Keel, ignored"),
        "{messages:?}"
    );
    assert!(messages.contains(&"`bootloader' is not used by Keel, ignored"));
    assert!(messages.iter().any(|m| m.contains("coredump-restart")));
}

#[test]
fn load_applies_overrides_in_order() {
    let dir = std::env::temp_dir().join(format!("keel-xlcfg-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.cfg");
    std::fs::write(
        &file,
        format!("{BASE}memory = 512\nextra = \"console=hvc0\"\n"),
    )
    .unwrap();
    let d = DomainConfig::load(
        &file,
        &["memory=1024", "extra += \" quiet\"", "name='db'"],
        &dir,
    )
    .unwrap();
    assert_eq!((d.memory_mib, d.name.as_str()), (1024, "db"));
    assert_eq!(d.cmdline.as_deref(), Some("console=hvc0 quiet"));
    let e = DomainConfig::load(&file, &["memory=\"x\""], &dir).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("command line `memory=\"x\"':1: `memory'"),
        "{e}"
    );
    let e = DomainConfig::load(&dir.join("absent.cfg"), &[] as &[&str], &dir).unwrap_err();
    assert!(e.message.contains("unable to read"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_configs_never_panic() {
    const PIECES: &[&str] = &[
        "name",
        "type",
        "kernel",
        "memory",
        "maxmem",
        "vcpus",
        "maxvcpus",
        "disk",
        "vif",
        "uuid",
        "on_crash",
        "extra",
        "root",
        "=",
        "+=",
        "\"pvh\"",
        "\"pv\"",
        "'x'",
        "'/a,,xvda'",
        "[",
        "]",
        ",",
        "\n",
        ";",
        "0",
        "-1",
        "0x7fffffffffffffff",
        "'mac=1'",
        "\"destroy\"",
        "''",
    ];
    let mut rng = crate::testutil::Rng(2024);
    for _ in 0..20_000 {
        let n = rng.below(30);
        let text: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        if let Ok(c) = Config::parse("fuzz", text.as_bytes()) {
            let _ = DomainConfig::from_config(&c, Path::new("/"));
        }
    }
}
