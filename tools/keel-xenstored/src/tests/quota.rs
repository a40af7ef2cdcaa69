//! Quotas (Xen's defaults, ENOSPC) and the per-connection bounds.

use super::Harness;
use crate::wire::{self, MsgType};
use crate::{Errno, Limits};

#[test]
fn defaults_are_xens() {
    let l = Limits::default();
    assert_eq!(
        (
            l.nodes,
            l.node_size,
            l.watches,
            l.transactions,
            l.perms,
            l.outstanding
        ),
        (1000, 2048, 128, 10, 5, 20)
    );
}

#[test]
fn node_quota_counts_owned_nodes_and_frees_on_rm() {
    let mut h = Harness::with_limits(Limits {
        nodes: 5,
        ..Limits::default()
    });
    let d1 = h.domu(1); // owns data: 1
    h.write(d1, "data/a/b/c", "").expect("4 nodes");
    assert_eq!(h.xs.tree().owned_by(1), 4);
    assert_eq!(h.write(d1, "data/d/e", ""), Err(Errno::ENOSPC), "2 more");
    assert_eq!(
        h.read(d1, "data/d"),
        Err(Errno::ENOENT),
        "nothing half-made"
    );
    h.write(d1, "data/d", "").expect("the 5th");
    assert_eq!(h.err(d1, MsgType::Mkdir, 0, "data/f\0"), Errno::ENOSPC);
    h.write(d1, "data/d", "overwrite").expect("no new node");
    h.ok(d1, MsgType::Rm, 0, "data/a\0");
    assert_eq!(h.xs.tree().owned_by(1), 2);
    h.write(d1, "data/f", "").expect("room again");
    // Dom0 has no quota.
    let d0 = h.dom0;
    for i in 0..20 {
        h.write(d0, &format!("/many/{i}"), "").expect("dom0");
    }
}

#[test]
fn node_quota_applies_at_commit() {
    let mut h = Harness::with_limits(Limits {
        nodes: 3,
        ..Limits::default()
    });
    let d1 = h.domu(1);
    let t1 = h.tx_start(d1);
    let t2 = h.tx_start(d1);
    h.ok(d1, MsgType::Write, t1, "data/a\0");
    h.ok(d1, MsgType::Write, t1, "data/b\0");
    h.ok(d1, MsgType::Write, t2, "data/c\0");
    h.ok(d1, MsgType::Write, t2, "data/d\0");
    h.ok(d1, MsgType::TransactionEnd, t1, "T\0");
    let e = h.err(d1, MsgType::TransactionEnd, t2, "T\0");
    assert!(matches!(e, Errno::ENOSPC | Errno::EAGAIN), "{e}");
    assert_eq!(h.xs.tree().owned_by(1), 3);
}

#[test]
fn value_size_watch_transaction_and_perm_quotas() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    let big = "x".repeat(2049);
    assert_eq!(h.write(d1, "data/big", &big), Err(Errno::ENOSPC));
    h.write(d1, "data/big", &big[1..]).expect("2048 fits");
    let d0 = h.dom0;
    h.write(d0, "/dom0big", &"y".repeat(4000))
        .expect("Dom0: no quota");

    for i in 0..128 {
        h.watch(d1, &format!("data/w{i}"), "t");
    }
    assert_eq!(h.err(d1, MsgType::Watch, 0, "data/x\0t\0"), Errno::ENOSPC);
    assert_eq!(h.err(d1, MsgType::Watch, 0, "data/w0\0t\0"), Errno::EEXIST);

    let txs: Vec<u32> = (0..10).map(|_| h.tx_start(d1)).collect();
    assert_eq!(h.err(d1, MsgType::TransactionStart, 0, "\0"), Errno::ENOSPC);
    h.ok(d1, MsgType::TransactionEnd, txs[0], "F\0");
    h.tx_start(d1);

    h.write(d1, "data/p", "").expect("own");
    h.ok(d1, MsgType::SetPerms, 0, "data/p\0n1\0r2\0r3\0r4\0r5\0");
    assert_eq!(
        h.err(d1, MsgType::SetPerms, 0, "data/p\0n1\0r2\0r3\0r4\0r5\0r6\0"),
        Errno::ENOSPC
    );
}

#[test]
fn a_transaction_touching_too_many_nodes_is_enospc() {
    let mut h = Harness::with_limits(Limits {
        transaction_nodes: 8,
        ..Limits::default()
    });
    let d1 = h.domu(1);
    let t = h.tx_start(d1);
    let got: Vec<Errno> = (0..10)
        .map(|i| h.err(d1, MsgType::Read, t, &format!("data/n{i}\0")))
        .collect();
    // Each read looks at the node and (missing) its parent `data`: 2, 3, ... 8 nodes.
    assert_eq!(got[..7], [Errno::ENOENT; 7]);
    assert_eq!(got[7..], [Errno::ENOSPC; 3]);
}

#[test]
fn a_client_that_never_reads_is_paused_then_dropped() {
    let mut h = Harness::with_limits(Limits {
        output_bytes: 4096,
        ..Limits::default()
    });
    let d0 = h.dom0;
    let d1 = h.domu(1);
    // Replies: at the outstanding quota, input waits (and the caller is told to read no more).
    let mut bytes = Vec::new();
    for i in 0..30 {
        wire::encode(MsgType::Read as u32, i, 0, b"data\0", &mut bytes);
    }
    h.xs.receive(d1, &bytes);
    assert_eq!(h.xs.connection(d1).map(|c| c.queued_replies()), Some(20));
    assert_eq!(h.xs.input_room(d1), 0);
    assert_eq!(
        h.drain(d1).len(),
        30,
        "the rest is processed as output drains"
    );
    assert!(h.xs.input_room(d1) > 0);
    // Events: past the output bound, the connection is dropped.
    h.watch(d1, "data", "tok");
    for i in 0..200 {
        h.write(d0, &format!("/local/domain/1/data/k{i}"), "v")
            .expect("dom0");
    }
    assert!(h.xs.should_close(d1));
    assert_eq!(h.xs.output(d1), b"");
    // Others are unaffected.
    assert_eq!(h.read(d0, "/local/domain/1/data/k199"), Ok(b"v".to_vec()));
}

#[test]
fn input_past_the_bound_drops_the_connection() {
    let mut h = Harness::new();
    let d1 = h.domu(1);
    let mut bytes = Vec::new();
    while bytes.len() < 200_000 {
        wire::encode(MsgType::Read as u32, 1, 0, b"data\0", &mut bytes);
    }
    h.xs.receive(d1, &bytes);
    assert!(h.xs.should_close(d1));
}
