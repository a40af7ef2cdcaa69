//! Transactions: isolation, commit, abort, conflicts, watches at commit.

use super::{ev, Harness};
use crate::wire::MsgType;
use crate::Errno;

#[test]
fn a_transaction_sees_its_own_writes_and_others_do_not_until_commit() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let other = h.xs.connect_dom0();
    h.write(d0, "/t/a", "old").expect("write");
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Write, t, "/t/a\0new");
    h.ok(d0, MsgType::Write, t, "/t/b/c\0made");
    h.ok(d0, MsgType::Rm, t, "/t/gone\0");
    assert_eq!(h.ok(d0, MsgType::Read, t, "/t/a\0"), b"new");
    assert_eq!(h.ok(d0, MsgType::Read, t, "/t/b/c\0"), b"made");
    assert_eq!(h.ok(d0, MsgType::Directory, t, "/t\0"), b"a\0b\0");
    assert_eq!(h.read(other, "/t/a"), Ok(b"old".to_vec()));
    assert_eq!(h.read(other, "/t/b"), Err(Errno::ENOENT));
    assert_eq!(h.read(d0, "/t/a"), Ok(b"old".to_vec()), "outside it, too");
    h.ok(d0, MsgType::TransactionEnd, t, "T\0");
    assert_eq!(h.read(other, "/t/a"), Ok(b"new".to_vec()));
    assert_eq!(h.read(other, "/t/b/c"), Ok(b"made".to_vec()));
    assert_eq!(
        h.err(d0, MsgType::Read, t, "/t/a\0"),
        Errno::ENOENT,
        "id gone"
    );
}

#[test]
fn abort_discards() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    h.write(d0, "/t/a", "old").expect("write");
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Write, t, "/t/a\0new");
    h.ok(d0, MsgType::Rm, t, "/t\0");
    assert_eq!(h.err(d0, MsgType::Read, t, "/t/a\0"), Errno::ENOENT);
    h.ok(d0, MsgType::TransactionEnd, t, "F\0");
    assert_eq!(h.read(d0, "/t/a"), Ok(b"old".to_vec()));
}

#[test]
fn a_conflicting_change_gives_eagain_and_the_retry_succeeds() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let other = h.xs.connect_dom0();
    h.write(d0, "/c/x", "0").expect("write");
    h.write(d0, "/c/y", "0").expect("write");
    // Something read, changed by another: EAGAIN.
    let t = h.tx_start(d0);
    assert_eq!(h.ok(d0, MsgType::Read, t, "/c/x\0"), b"0");
    h.ok(d0, MsgType::Write, t, "/c/y\0from-tx");
    h.write(other, "/c/x", "1").expect("meanwhile");
    assert_eq!(h.err(d0, MsgType::TransactionEnd, t, "T\0"), Errno::EAGAIN);
    assert_eq!(h.read(d0, "/c/y"), Ok(b"0".to_vec()), "nothing applied");
    // Something written, changed by another: EAGAIN.
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Write, t, "/c/y\0from-tx");
    h.write(other, "/c/y", "other").expect("meanwhile");
    assert_eq!(h.err(d0, MsgType::TransactionEnd, t, "T\0"), Errno::EAGAIN);
    // Something found missing, created by another: EAGAIN.
    let t = h.tx_start(d0);
    assert_eq!(h.err(d0, MsgType::Read, t, "/c/z\0"), Errno::ENOENT);
    h.write(other, "/c/z", "").expect("meanwhile");
    assert_eq!(h.err(d0, MsgType::TransactionEnd, t, "T\0"), Errno::EAGAIN);
    // Changed after the start, before the transaction first looked: EAGAIN too.
    let t = h.tx_start(d0);
    h.write(other, "/c/x", "2").expect("meanwhile");
    assert_eq!(h.ok(d0, MsgType::Read, t, "/c/x\0"), b"2");
    assert_eq!(h.err(d0, MsgType::TransactionEnd, t, "T\0"), Errno::EAGAIN);
    // Unrelated changes do not conflict; the retry commits.
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Read, t, "/c/x\0");
    h.ok(d0, MsgType::Write, t, "/c/y\0from-tx");
    h.write(other, "/elsewhere", "").expect("meanwhile");
    h.ok(d0, MsgType::TransactionEnd, t, "T\0");
    assert_eq!(h.read(d0, "/c/y"), Ok(b"from-tx".to_vec()));
}

#[test]
fn two_transactions_on_one_node_the_second_loses() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    let a = h.tx_start(d1);
    let b = h.tx_start(d1);
    h.ok(d1, MsgType::Write, a, "data/n\0a");
    h.ok(d1, MsgType::Write, b, "data/n\0b");
    h.ok(d1, MsgType::TransactionEnd, a, "T\0");
    assert_eq!(h.err(d1, MsgType::TransactionEnd, b, "T\0"), Errno::EAGAIN);
    assert_eq!(h.read(d0, "/local/domain/1/data/n"), Ok(b"a".to_vec()));
}

#[test]
fn watches_fire_at_commit_only() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let w = h.xs.connect_dom0();
    let a = h.req(w, MsgType::Watch, 0, "/wt\0tok\0");
    assert_eq!(a.events, [ev("/wt", "tok")]);
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Write, t, "/wt/a\0");
    h.ok(d0, MsgType::Write, t, "/wt/a\0again");
    assert!(h.events(w).is_empty());
    h.ok(d0, MsgType::TransactionEnd, t, "T\0");
    assert_eq!(h.events(w), [ev("/wt/a", "tok")]);
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::Write, t, "/wt/b\0");
    h.ok(d0, MsgType::TransactionEnd, t, "F\0");
    assert!(h.events(w).is_empty(), "an abort fires nothing");
}

#[test]
fn transaction_ids_are_per_connection_and_checked() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let other = h.xs.connect_dom0();
    let t = h.tx_start(d0);
    assert_eq!(h.err(other, MsgType::Read, t, "/\0"), Errno::ENOENT);
    assert_eq!(h.err(d0, MsgType::TransactionStart, t, "\0"), Errno::EBUSY);
    assert_eq!(h.err(d0, MsgType::TransactionEnd, 0, "T\0"), Errno::ENOENT);
    assert_eq!(
        h.err(d0, MsgType::TransactionEnd, t, "maybe\0"),
        Errno::EINVAL
    );
    h.ok(d0, MsgType::TransactionEnd, t, "T\0"); // still there after the bad end
                                                 // WATCH ignores the transaction id.
    h.ok(d0, MsgType::Watch, 12345, "/\0x\0");
    // RESET_WATCHES drops transactions too.
    let t = h.tx_start(d0);
    h.ok(d0, MsgType::ResetWatches, 0, "\0");
    assert_eq!(h.err(d0, MsgType::Read, t, "/\0"), Errno::ENOENT);
}

#[test]
fn a_domain_connection_closing_drops_its_transactions_not_the_domain() {
    let mut h = Harness::new();
    let d0 = h.dom0;
    let d1 = h.domu(1);
    let t = h.tx_start(d1);
    h.ok(d1, MsgType::Write, t, "data/x\0");
    h.xs.disconnect(d1);
    assert_eq!(h.ok(d0, MsgType::IsDomainIntroduced, 0, "1\0"), b"T\0");
    assert_eq!(h.read(d0, "/local/domain/1/data/x"), Err(Errno::ENOENT));
    let again = h.xs.connect_domain(1).expect("reconnects");
    assert_eq!(h.err(again, MsgType::Read, t, "data\0"), Errno::ENOENT);
}
