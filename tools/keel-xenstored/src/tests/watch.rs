//! Watches: the first event, descendants, removal, relative paths, permissions, specials.

use super::{ev, Harness};
use crate::wire::MsgType;
use crate::Errno;

#[test]
fn a_new_watch_fires_once_at_once_after_its_ack() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let a = h.req(d0, MsgType::Watch, 0, "/nothing/yet\0tok\0");
    assert_eq!(a.reply, Ok(b"OK\0".to_vec()));
    assert_eq!(a.events, [ev("/nothing/yet", "tok")]);
    let msgs = {
        h.xs.receive(
            d0,
            &crate::wire::encoded(MsgType::Watch as u32, 9, 0, b"/x\0t\0"),
        );
        h.drain(d0)
    };
    let types: Vec<u32> = msgs.iter().map(|m| m.header.ty).collect();
    assert_eq!(types, [MsgType::Watch as u32, MsgType::WatchEvent as u32]);
}

#[test]
fn events_for_the_path_and_descendants_only() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let w = h.xs.connect_dom0();
    h.watch(w, "/a/b", "t");
    h.events(w);
    h.write(d0, "/a/b", "").expect("write");
    h.write(d0, "/a/b/c/d", "").expect("write");
    h.write(d0, "/a/bc", "").expect("a sibling");
    h.write(d0, "/a", "").expect("the parent");
    h.ok(d0, MsgType::SetPerms, 0, "/a/b/c\0b0\0");
    assert_eq!(
        h.events(w),
        [ev("/a/b", "t"), ev("/a/b/c/d", "t"), ev("/a/b/c", "t")]
    );
    // The root watch sees everything.
    h.watch(w, "/", "root");
    h.events(w);
    h.write(d0, "/z", "").expect("write");
    assert_eq!(h.events(w), [ev("/z", "root")]);
}

#[test]
fn rm_fires_for_watches_above_and_below_the_removed_node() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let w = h.xs.connect_dom0();
    h.write(d0, "/r/a/b/c", "").expect("write");
    h.watch(w, "/r", "above");
    h.watch(w, "/r/a/b", "below");
    h.watch(w, "/r/a/b/never/made", "missing");
    h.watch(w, "/other", "no");
    h.events(w);
    h.ok(d0, MsgType::Rm, 0, "/r/a\0");
    let mut got = h.events(w);
    got.sort();
    assert_eq!(
        got,
        [
            ev("/r/a", "above"),
            ev("/r/a/b", "below"),
            ev("/r/a/b/never/made", "missing")
        ]
    );
}

#[test]
fn relative_watches_get_relative_paths() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    let a = h.req(d1, MsgType::Watch, 0, "data/state\0fe\0");
    assert_eq!(a.events, [ev("data/state", "fe")]);
    h.watch(d1, "/local/domain/1/data", "abs");
    h.events(d1);
    h.write(d0, "/local/domain/1/data/state/x", "4")
        .expect("write");
    let got = h.events(d1);
    assert_eq!(
        got,
        [
            ev("data/state/x", "fe"),
            ev("/local/domain/1/data/state/x", "abs")
        ]
    );
}

#[test]
fn unwatch_and_reset_watches_stop_events() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    h.watch(d1, "data", "a");
    h.watch(d1, "data", "b");
    h.ok(d1, MsgType::Unwatch, 0, "data\0a\0");
    assert_eq!(h.err(d1, MsgType::Unwatch, 0, "data\0a\0"), Errno::ENOENT);
    h.events(d1);
    h.write(d0, "/local/domain/1/data/x", "").expect("write");
    assert_eq!(h.events(d1), [ev("data/x", "b")]);
    // Unwatch by the absolute name of a relative watch works too, as in Xen.
    h.ok(d1, MsgType::Unwatch, 0, "/local/domain/1/data\0b\0");
    h.watch(d1, "data", "c");
    h.ok(d1, MsgType::ResetWatches, 0, "\0");
    h.events(d1);
    h.write(d0, "/local/domain/1/data/y", "").expect("write");
    assert!(h.events(d1).is_empty());
}

#[test]
fn events_only_for_nodes_the_watcher_may_read() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    let d2 = h.domu(2);
    h.watch(d1, "/", "all");
    h.watch(d1, "/local/domain/2", "peek");
    h.events(d1);
    h.write(d2, "data/secret", "x").expect("own");
    h.ok(d2, MsgType::Rm, 0, "data/secret\0");
    h.write(d0, "/tool/private", "x").expect("dom0");
    assert!(h.events(d1).is_empty(), "nothing of domain 2's or Dom0's");
    // What it may read (its own nodes, a granted node or a child of one) it sees.
    h.write(d0, "/local/domain/1/data/in", "x").expect("dom0");
    h.write(d0, "/shared", "").expect("dom0");
    h.ok(d0, MsgType::SetPerms, 0, "/shared\0n0\0r1\0");
    h.write(d0, "/shared/kid", "").expect("dom0");
    let got = h.events(d1);
    assert_eq!(
        got,
        [
            ev("/local/domain/1/data/in", "all"),
            ev("/shared", "all"),
            ev("/shared/kid", "all")
        ]
    );
    // Dom0 watchers see all.
    h.watch(d0, "/local/domain/2", "dom0");
    h.events(d0);
    h.write(d2, "data/s2", "x").expect("own");
    assert_eq!(h.events(d0), [ev("/local/domain/2/data/s2", "dom0")]);
}

#[test]
fn special_watches_fire_on_introduce_and_release() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let w = h.xs.connect_dom0();
    for (path, token) in [
        ("@introduceDomain", "in"),
        ("@releaseDomain", "out"),
        ("@releaseDomain/3", "out3"),
    ] {
        let a = h.req(w, MsgType::Watch, 0, &format!("{path}\0{token}\0"));
        assert_eq!(a.events, [ev(path, token)]);
    }
    let d3 = h.domu(3);
    assert_eq!(h.events(w), [ev("@introduceDomain", "in")]);
    h.domu(4);
    assert_eq!(h.events(w), [ev("@introduceDomain", "in")]);
    h.ok(d0, MsgType::Release, 0, "4\0");
    assert_eq!(h.events(w), [ev("@releaseDomain", "out")]);
    // A DomU may watch it, but sees events only when allowed to read it.
    let a = h.req(d3, MsgType::Watch, 0, "@releaseDomain\0mine\0");
    assert_eq!(a.events, [ev("@releaseDomain", "mine")]);
    h.ok(d0, MsgType::Introduce, 0, "5\0 0\0 0\0");
    h.ok(d0, MsgType::Release, 0, "5\0");
    assert!(h.events(d3).is_empty());
    h.ok(d0, MsgType::SetPerms, 0, "@releaseDomain\0n0\0r3\0");
    // Changing its permissions fires it, as any node's (Xen's `do_set_perms`).
    assert_eq!(h.events(d3), [ev("@releaseDomain", "mine")]);
    h.ok(d0, MsgType::Introduce, 0, "6\0 0\0 0\0");
    h.ok(d0, MsgType::Release, 0, "6\0");
    assert_eq!(h.events(d3), [ev("@releaseDomain", "mine")]);
    h.ok(d0, MsgType::Release, 0, "3\0");
    let got = h.events(w);
    assert!(got.contains(&ev("@releaseDomain/3", "out3")), "{got:?}");
}

#[test]
fn release_drops_the_domains_watches() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    h.watch(d1, "data", "t");
    h.ok(d0, MsgType::Release, 0, "1\0");
    assert!(h.xs.connection(d1).is_some_and(|c| c.watches().is_empty()));
    assert!(h.xs.should_close(d1));
}
