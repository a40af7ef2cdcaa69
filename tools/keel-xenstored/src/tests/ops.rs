//! Each operation's payloads and answers, and the protocol's edges.

use super::Harness;
use crate::wire::{self, MsgType, PAYLOAD_MAX};
use crate::Errno;

#[test]
fn the_initial_tree_is_xens() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/\0"), b"local\0tool\0");
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/local\0"), b"domain\0");
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/local/domain\0"), b"");
    for p in ["/\0", "/local\0", "/local/domain\0", "/tool\0"] {
        assert_eq!(h.ok(d0, MsgType::GetPerms, 0, p), b"n0\0");
    }
    assert_eq!(h.ok(d0, MsgType::GetPerms, 0, "@releaseDomain\0"), b"n0\0");
}

#[test]
fn write_creates_parents_and_read_gives_the_bytes() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    assert_eq!(h.write(d0, "/a/b/c", "v\0with nul"), Ok(b"OK\0".to_vec()));
    assert_eq!(h.read(d0, "/a/b/c"), Ok(b"v\0with nul".to_vec()));
    assert_eq!(h.read(d0, "/a/b"), Ok(Vec::new()));
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/a\0"), b"b\0");
    h.write(d0, "/a/b/c", "").expect("overwrite");
    assert_eq!(h.read(d0, "/a/b/c"), Ok(Vec::new()));
    assert_eq!(h.read(d0, "/a/x"), Err(Errno::ENOENT));
    // Relative paths are under /local/domain/0 for Dom0.
    h.write(d0, "rel", "1").expect("relative write");
    assert_eq!(h.read(d0, "/local/domain/0/rel"), Ok(b"1".to_vec()));
}

#[test]
fn mkdir_keeps_existing_values() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    h.write(d0, "/m", "keep").expect("write");
    h.ok(d0, MsgType::Mkdir, 0, "/m\0");
    assert_eq!(h.read(d0, "/m"), Ok(b"keep".to_vec()));
    h.ok(d0, MsgType::Mkdir, 0, "/m/n/o\0");
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/m/n\0"), b"o\0");
}

#[test]
fn rm_is_recursive_tolerant_and_spares_the_root() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    h.write(d0, "/r/a/b", "1").expect("write");
    h.write(d0, "/r/c", "2").expect("write");
    h.ok(d0, MsgType::Rm, 0, "/r/a\0");
    assert_eq!(h.read(d0, "/r/a/b"), Err(Errno::ENOENT));
    assert_eq!(h.ok(d0, MsgType::Directory, 0, "/r\0"), b"c\0");
    // Missing with its parent there: fine. Missing parent: ENOENT.
    h.ok(d0, MsgType::Rm, 0, "/r/a\0");
    assert_eq!(h.err(d0, MsgType::Rm, 0, "/r/a/b\0"), Errno::ENOENT);
    assert_eq!(h.err(d0, MsgType::Rm, 0, "/\0"), Errno::EINVAL);
    let before = h.xs.tree().len();
    h.ok(d0, MsgType::Rm, 0, "/r\0");
    assert_eq!(h.xs.tree().len(), before - 2);
}

#[test]
fn perms_get_and_set_in_xens_format() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    h.write(d0, "/p", "").expect("write");
    h.ok(d0, MsgType::SetPerms, 0, "/p\0r3\0w1\0b2\0n4\0");
    assert_eq!(h.ok(d0, MsgType::GetPerms, 0, "/p\0"), b"r3\0w1\0b2\0n4\0");
    assert_eq!(h.err(d0, MsgType::SetPerms, 0, "/p\0"), Errno::EINVAL);
    assert_eq!(h.err(d0, MsgType::SetPerms, 0, "/p\0x1\0"), Errno::EINVAL);
    assert_eq!(
        h.err(d0, MsgType::SetPerms, 0, "/nope\0b0\0"),
        Errno::ENOENT
    );
    // The special nodes' permissions can be set (to let DomUs watch them).
    h.ok(d0, MsgType::SetPerms, 0, "@releaseDomain\0n0\0r5\0");
    assert_eq!(
        h.ok(d0, MsgType::GetPerms, 0, "@releaseDomain\0"),
        b"n0\0r5\0"
    );
}

#[test]
fn directory_part_pages_a_long_list() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let names: Vec<String> = (0..400).map(|i| format!("child-number-{i:04}")).collect();
    for n in &names {
        h.ok(d0, MsgType::Mkdir, 0, &format!("/big/{n}\0"));
    }
    assert_eq!(h.err(d0, MsgType::Directory, 0, "/big\0"), Errno::E2BIG);
    let mut got = Vec::new();
    let mut off = 0;
    let mut gen = None;
    loop {
        let p = h.ok(d0, MsgType::DirectoryPart, 0, &format!("/big\0{off}\0"));
        assert!(p.len() <= PAYLOAD_MAX);
        let parts = wire::split_strings(&p);
        let g = parts[0].to_vec();
        assert!(gen.is_none_or(|x| x == g), "generation stable");
        gen = Some(g);
        let mut done = false;
        for name in &parts[1..] {
            if name.is_empty() {
                done = true;
                break;
            }
            off += name.len() + 1;
            got.push(String::from_utf8(name.to_vec()).expect("ASCII"));
        }
        if done {
            break;
        }
    }
    assert_eq!(got, names);
}

#[test]
fn domain_ops() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    assert_eq!(
        h.ok(d0, MsgType::GetDomainPath, 0, "7\0"),
        b"/local/domain/7\0"
    );
    assert_eq!(h.err(d0, MsgType::GetDomainPath, 0, "x\0"), Errno::EINVAL);
    assert_eq!(h.ok(d0, MsgType::IsDomainIntroduced, 0, "7\0"), b"F\0");
    assert_eq!(h.ok(d0, MsgType::IsDomainIntroduced, 0, "0\0"), b"T\0");
    h.ok(d0, MsgType::Introduce, 0, "7\x00123\x004\0");
    assert_eq!(h.ok(d0, MsgType::IsDomainIntroduced, 0, "7\0"), b"T\0");
    h.ok(d0, MsgType::Introduce, 0, "7\x00123\x004\0"); // again: fine
    assert_eq!(h.err(d0, MsgType::Introduce, 0, "0\0"), Errno::EINVAL);
    assert_eq!(h.err(d0, MsgType::Introduce, 0, "32752\0"), Errno::EINVAL);
    h.ok(d0, MsgType::Resume, 0, "7\0");
    h.ok(d0, MsgType::Release, 0, "7\0");
    assert_eq!(h.ok(d0, MsgType::IsDomainIntroduced, 0, "7\0"), b"F\0");
    assert_eq!(h.err(d0, MsgType::Release, 0, "7\0"), Errno::ENOENT);
    assert_eq!(h.err(d0, MsgType::Release, 0, "0\0"), Errno::EINVAL);
    assert_eq!(h.err(d0, MsgType::Resume, 0, "7\0"), Errno::ENOENT);
}

#[test]
fn a_domu_may_not_use_dom0s_operations() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    for (ty, p) in [
        (MsgType::Introduce, "2\0 0\0 0\0"),
        (MsgType::Release, "1\0"),
        (MsgType::IsDomainIntroduced, "1\0"),
        (MsgType::Control, "check\0"),
        (MsgType::SetQuota, "x\0"),
    ] {
        assert_eq!(h.err(d1, ty, 0, p), Errno::EACCES, "{ty:?}");
    }
    assert_eq!(
        h.ok(d1, MsgType::GetDomainPath, 0, "1\0"),
        b"/local/domain/1\0"
    );
}

#[test]
fn unknown_and_reply_only_types_are_enosys() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    for ty in [20, 27, 0x4b44, wire::XS_INVALID, u32::MAX] {
        assert_eq!(h.raw(d0, ty, 0, b"x\0").reply, Err(Errno::ENOSYS), "{ty}");
    }
    for ty in [MsgType::WatchEvent, MsgType::Error, MsgType::Control] {
        assert_eq!(h.err(d0, ty, 0, "x\0"), Errno::ENOSYS, "{ty:?}");
    }
    // The handshake is only a first message.
    assert_eq!(
        h.err(d0, MsgType::KeelDomainConnect, 0, "1\0"),
        Errno::ENOSYS
    );
}

#[test]
fn malformed_payloads_are_einval() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    for (ty, p) in [
        (MsgType::Read, "/a"),
        (MsgType::Read, "/a\0b\0"),
        (MsgType::Read, ""),
        (MsgType::Read, "/a/\0"),
        (MsgType::Read, "@releaseDomain\0"),
        (MsgType::Write, "/a"),
        (MsgType::Write, "/a b\0v"),
        (MsgType::Mkdir, "//\0"),
        (MsgType::Watch, "/a\0"),
        (MsgType::Watch, "/a\0t\0depth\0"),
        (MsgType::TransactionEnd, "X\0"),
        (MsgType::DirectoryPart, "/\0x\0"),
    ] {
        assert_eq!(h.err(d0, ty, 0, p), Errno::EINVAL, "{ty:?} {p:?}");
    }
}

#[test]
fn replies_echo_ids_and_requests_queue_in_order() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let mut bytes = Vec::new();
    for i in 0..5u32 {
        wire::encode(
            MsgType::Write as u32,
            100 + i,
            0,
            format!("/o{i}\0{i}").as_bytes(),
            &mut bytes,
        );
    }
    // Fed in odd pieces.
    for chunk in bytes.chunks(7) {
        h.xs.receive(d0, chunk);
    }
    let replies = h.drain(d0);
    let ids: Vec<u32> = replies.iter().map(|m| m.header.req_id).collect();
    assert_eq!(ids, [100, 101, 102, 103, 104]);
    assert!(replies.iter().all(|m| m.payload == b"OK\0"));
}

#[test]
fn an_oversized_header_drops_only_that_connection() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let other = h.xs.connect_dom0();
    let mut bytes = wire::encoded(MsgType::Read as u32, 1, 0, b"/\0");
    bytes.extend_from_slice(
        &wire::Header {
            ty: MsgType::Read as u32,
            req_id: 2,
            tx_id: 0,
            len: PAYLOAD_MAX as u32 + 1,
        }
        .to_bytes(),
    );
    h.xs.receive(other, &bytes);
    assert!(h.xs.should_close(other));
    assert_eq!(h.xs.input_room(other), 0);
    h.xs.disconnect(other);
    assert_eq!(h.read(d0, "/"), Ok(Vec::new()));
}
