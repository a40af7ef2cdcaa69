//! Permissions as Xen's xenstored applies them.

use super::Harness;
use crate::wire::MsgType;
use crate::Errno;

#[test]
fn a_domu_writes_and_reads_its_own_nodes_relatively_and_absolutely() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    h.write(d1, "data/x", "1").expect("own data");
    assert_eq!(h.read(d1, "/local/domain/1/data/x"), Ok(b"1".to_vec()));
    assert_eq!(h.read(d1, "data/x"), Ok(b"1".to_vec()));
    // Its home is read-only to it (n0,r1), as libxl makes it.
    assert_eq!(h.read(d1, "/local/domain/1"), Ok(Vec::new()));
    assert_eq!(
        h.write(d1, "/local/domain/1/other", "x"),
        Err(Errno::EACCES)
    );
}

#[test]
fn a_domu_cannot_read_or_write_another_domus_nodes() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    let d2 = h.domu(2);
    h.write(d2, "data/secret", "s3cr3t").expect("own");
    assert_eq!(
        h.read(d1, "/local/domain/2/data/secret"),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.write(d1, "/local/domain/2/data/secret", "x"),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.write(d1, "/local/domain/2/data/new", "x"),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.err(d1, MsgType::Rm, 0, "/local/domain/2/data\0"),
        Errno::EACCES
    );
    assert_eq!(
        h.err(d1, MsgType::Directory, 0, "/local/domain/2\0"),
        Errno::EACCES
    );
    assert_eq!(
        h.err(d1, MsgType::GetPerms, 0, "/local/domain/2/data\0"),
        Errno::EACCES
    );
    // A missing node says EACCES, not ENOENT, where the parent is unreadable.
    assert_eq!(h.read(d1, "/local/domain/2/data/none"), Err(Errno::EACCES));
    assert_eq!(h.read(d1, "/local/domain/1/data/none"), Err(Errno::ENOENT));
    // Nor anything of Dom0's.
    assert_eq!(h.read(d1, "/tool"), Err(Errno::EACCES));
    assert_eq!(h.write(d1, "/tool/x", "1"), Err(Errno::EACCES));
    assert_eq!(
        h.read(d2, "/local/domain/2/data/secret"),
        Ok(b"s3cr3t".to_vec())
    );
}

#[test]
fn created_nodes_inherit_the_parents_perms_with_the_domu_as_owner() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    h.ok(d0, MsgType::Mkdir, 0, "/local/domain/1/device\0");
    h.ok(
        d0,
        MsgType::SetPerms,
        0,
        "/local/domain/1/device\0n0\0b1\0r2\0",
    );
    h.write(d1, "device/vbd/51712/state", "1")
        .expect("writable");
    for p in [
        "device/vbd\0",
        "device/vbd/51712\0",
        "device/vbd/51712/state\0",
    ] {
        assert_eq!(h.ok(d1, MsgType::GetPerms, 0, p), b"n1\0b1\0r2\0", "{p}");
    }
    // Dom0 keeps the parent's owner.
    h.write(d0, "/local/domain/1/device/x/y", "").expect("dom0");
    assert_eq!(
        h.ok(d0, MsgType::GetPerms, 0, "/local/domain/1/device/x/y\0"),
        b"n0\0b1\0r2\0"
    );
    assert_eq!(h.xs.tree().owned_by(1), 4 /* data + 3 */);
}

#[test]
fn a_granted_domu_reads_a_backend_node() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    let d2 = h.domu(2);
    h.write(d0, "/local/domain/0/backend/vbd/1/51712/state", "2")
        .expect("dom0");
    h.ok(
        d0,
        MsgType::SetPerms,
        0,
        "/local/domain/0/backend/vbd/1/51712\0n0\0r1\0",
    );
    h.ok(
        d0,
        MsgType::SetPerms,
        0,
        "/local/domain/0/backend/vbd/1/51712/state\0n0\0r1\0",
    );
    assert_eq!(
        h.read(d1, "/local/domain/0/backend/vbd/1/51712/state"),
        Ok(b"2".to_vec())
    );
    assert_eq!(
        h.write(d1, "/local/domain/0/backend/vbd/1/51712/state", "4"),
        Err(Errno::EACCES)
    );
    assert_eq!(
        h.read(d2, "/local/domain/0/backend/vbd/1/51712/state"),
        Err(Errno::EACCES)
    );
}

#[test]
fn only_the_owner_sets_perms_and_only_dom0_changes_the_owner() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    let d2 = h.domu(2);
    h.write(d1, "data/x", "").expect("own");
    h.ok(d1, MsgType::SetPerms, 0, "data/x\0n1\0r2\0");
    assert_eq!(h.read(d2, "/local/domain/1/data/x"), Ok(Vec::new()));
    assert_eq!(
        h.err(d1, MsgType::SetPerms, 0, "data/x\0n2\0"),
        Errno::EPERM
    );
    assert_eq!(
        h.err(d2, MsgType::SetPerms, 0, "/local/domain/1/data/x\0n2\0"),
        Errno::EACCES
    );
    assert_eq!(
        h.err(d1, MsgType::SetPerms, 0, "/local/domain/1\0n1\0"),
        Errno::EACCES
    );
    let d0 = h.dom0;
    h.ok(d0, MsgType::SetPerms, 0, "/local/domain/1/data/x\0n2\0");
    assert_eq!(h.read(d2, "/local/domain/1/data/x"), Ok(Vec::new()));
    assert_eq!(h.read(d1, "/local/domain/1/data/x"), Err(Errno::EACCES));
}

#[test]
fn release_removes_the_domains_nodes_and_entries() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    h.write(d1, "data/a/b", "x").expect("own");
    h.write(d0, "/shared", "").expect("dom0");
    h.ok(d0, MsgType::SetPerms, 0, "/shared\0n0\0r1\0w2\0");
    h.ok(d0, MsgType::Release, 0, "1\0");
    assert!(h.xs.should_close(d1), "its connection goes");
    assert_eq!(h.xs.tree().owned_by(1), 0);
    assert_eq!(h.read(d0, "/local/domain/1/data"), Err(Errno::ENOENT));
    assert_eq!(h.ok(d0, MsgType::GetPerms, 0, "/shared\0"), b"n0\0w2\0");
    // Dom0's nodes under its home stay for the toolstack to remove.
    assert_eq!(h.read(d0, "/local/domain/1"), Ok(Vec::new()));
}
