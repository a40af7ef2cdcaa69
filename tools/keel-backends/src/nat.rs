//! NAT for a vif (`script=vif-nat`): Dom0 masquerades the guest's private address behind its
//! own and lets back in only what answers the guest's connections, as Xen's vif-nat and
//! network-nat scripts do with iptables.
//!
//! Each NAT vif gets an nftables table of its own, `ip keel-d<domid>-<vif>`, written through
//! the `nft` program's JSON interface (the `nftables` crate): a `prerouting` filter chain that
//! drops what the guest sends from another address (before Dom0 routes or takes it: the
//! vif's [`crate::dhcp`] server reads the unconfigured client's broadcasts ahead of it), a
//! `postrouting` NAT chain masquerading the guest's address on its way out (out of
//! `gatewaydev=` only, when the vif names one) and a `forward` filter chain that drops every
//! new connection towards the guest. Dom0's own traffic to the guest (output, not forward) is
//! untouched.
//!
//! What comes back is let in only when its connection was opened through this very vif: the
//! forward chain marks each connection the guest sends on with a number drawn for the vif
//! (conntrack's mark, all 32 bits of it: Dom0's own rules must not use the mark of a NAT
//! guest's connections) and accepts towards the guest only connections carrying it. Conntrack
//! entries outlive the vif (minutes, up to days for TCP); without the mark, a later guest
//! given the same address would inherit its predecessor's connections, and their peers could
//! reach it unasked. The drop rules count what they drop (`nft list table ip keel-d...`).
//!
//! The table is IPv4's: the vif's IPv6 is turned off by the caller. Removing the table removes
//! every rule of the vif at once: that is done when [`NatRules`] is dropped, before a table of
//! the same name is made, and by [`remove_domain_tables`] for a domain whose backend could
//! not (killed), or whose domid is taken again.

use std::{borrow::Cow, io, net::Ipv4Addr};

use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, CT},
    helper::{self, NftablesError},
    schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table},
    stmt::{Counter, Mangle, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook},
};

/// The nftables table of domain `domid`'s vif named `vif`.
pub fn table_name(domid: u32, vif: &str) -> String {
    format!("{}{vif}", domain_prefix(domid))
}

fn domain_prefix(domid: u32) -> String {
    format!("keel-d{domid}-")
}

/// The rules a NAT vif puts in place: removed when this is dropped.
#[derive(Debug)]
pub struct NatRules {
    table: String,
}

impl NatRules {
    /// Masquerades `guest` (the address the guest was given, `ip=`) coming in on the TAP
    /// named `vif` and leaving by `out` (any other interface when `None`), and shuts new
    /// connections towards the guest out. Fails naming the problem when `nft` is missing or
    /// refuses (a kernel without nf_tables).
    pub fn install(
        domid: u32,
        vif: &str,
        guest: Ipv4Addr,
        out: Option<&str>,
    ) -> io::Result<NatRules> {
        let table = table_name(domid, vif);
        apply(&ruleset(&table, vif, guest, out, connection_mark()?))?;
        Ok(NatRules { table })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for NatRules {
    fn drop(&mut self) {
        let mut batch = Batch::new();
        batch.delete(NfListObject::Table(table(&self.table)));
        let _ = apply(&batch.to_nftables());
    }
}

/// Removes every NAT table of domain `domid` (its backend was killed before it could, or the
/// domid is a new domain's). Returns their names; none, and no error, without `nft`.
pub fn remove_domain_tables(domid: u32) -> io::Result<Vec<String>> {
    let prefix = domain_prefix(domid);
    remove_tables(|name| name.starts_with(&prefix))
}

/// Removes the table of domain `domid`'s vif `vif` if there is one (left by a backend that
/// could not remove it); nothing happens without it or without `nft`.
pub fn remove_table(domid: u32, vif: &str) {
    let name = table_name(domid, vif);
    let _ = remove_tables(|t| t == name);
}

/// Removes the IPv4 tables whose names `pick` chooses, only those that exist (so that `nft`
/// has no missing table to complain about); returns their names.
fn remove_tables(pick: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
    let listed =
        match helper::get_current_ruleset_with_args(helper::DEFAULT_NFT, ["list", "tables"]) {
            Ok(l) => l,
            Err(NftablesError::NftExecution { inner, .. })
                if inner.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(nft_error(e)),
        };
    let tables: Vec<String> = listed
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Table(t))
                if t.family == NfFamily::IP && pick(&t.name) =>
            {
                Some(t.name.to_string())
            }
            _ => None,
        })
        .collect();
    if !tables.is_empty() {
        let mut batch = Batch::new();
        for name in &tables {
            batch.delete(NfListObject::Table(table(name)));
        }
        apply(&batch.to_nftables())?;
    }
    Ok(tables)
}

/// A conntrack mark for a new vif's connections: random, never 0 (every connection's mark
/// before anything sets it).
fn connection_mark() -> io::Result<u32> {
    loop {
        let mut m = 0u32;
        // SAFETY: getrandom writes at most 4 bytes into the live local u32.
        let n = unsafe { libc::getrandom((&mut m as *mut u32).cast(), 4, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 4 && m != 0 {
            return Ok(m);
        }
    }
}

fn apply(rules: &Nftables) -> io::Result<()> {
    helper::apply_ruleset(rules).map_err(nft_error)
}

fn nft_error(e: NftablesError) -> io::Error {
    match e {
        NftablesError::NftExecution { inner, .. } if inner.kind() == io::ErrorKind::NotFound => {
            io::Error::other(
                "NAT needs nftables' `nft` program in PATH (Debian: apt-get install nftables)",
            )
        }
        NftablesError::NftFailed { stderr, .. } => io::Error::other(format!(
            "nft refused the vif's NAT rules (does the kernel have nf_tables, NAT, conntrack \
             and its marks?): {}",
            stderr.trim()
        )),
        e => io::Error::other(format!("nft: {e}")),
    }
}

fn table(name: &str) -> Table<'static> {
    Table {
        family: NfFamily::IP,
        name: Cow::Owned(name.to_owned()),
        handle: None,
    }
}

fn base_chain(
    table: &str,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Borrowed(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..Default::default()
    }
}

fn rule(table: &str, chain: &'static str, expr: Vec<Statement<'static>>) -> Rule<'static> {
    Rule {
        family: NfFamily::IP,
        table: Cow::Owned(table.to_owned()),
        chain: Cow::Borrowed(chain),
        expr: Cow::Owned(expr),
        ..Default::default()
    }
}

fn matches(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn ip_saddr() -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed("ip"),
            field: Cow::Borrowed("saddr"),
        },
    )))
}

fn string(s: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(s.to_owned()))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// A counter, so that `nft list table` shows what a rule dropped.
fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(None))
}

/// The whole of a vif's NAT: the table made afresh (added, deleted with whatever a previous
/// backend left in it, added again) with its three chains and their rules, applied as one
/// transaction.
fn ruleset(
    name: &str,
    vif: &str,
    guest: Ipv4Addr,
    out: Option<&str>,
    mark: u32,
) -> Nftables<'static> {
    let guest = string(&guest.to_string());
    let mut b = Batch::new();
    b.add(NfListObject::Table(table(name)));
    b.delete(NfListObject::Table(table(name)));
    b.add(NfListObject::Table(table(name)));
    // The guest speaks only from its own address: checked before Dom0 routes the packet
    // (to itself or on), at the raw priority.
    b.add(NfListObject::Chain(base_chain(
        name,
        "prerouting",
        NfChainType::Filter,
        NfHook::Prerouting,
        -300,
    )));
    b.add(NfListObject::Rule(rule(
        name,
        "prerouting",
        vec![
            matches(meta(MetaKey::Iifname), Operator::EQ, string(vif)),
            matches(ip_saddr(), Operator::NEQ, guest.clone()),
            counter(),
            Statement::Drop(None),
        ],
    )));
    // srcnat priority (100), after Dom0's own destination NAT and filters.
    b.add(NfListObject::Chain(base_chain(
        name,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    )));
    let leaving = match out {
        Some(dev) => matches(meta(MetaKey::Oifname), Operator::EQ, string(dev)),
        None => matches(meta(MetaKey::Oifname), Operator::NEQ, string(vif)),
    };
    b.add(NfListObject::Rule(rule(
        name,
        "postrouting",
        vec![
            matches(ip_saddr(), Operator::EQ, guest),
            leaving,
            Statement::Masquerade(None),
        ],
    )));
    b.add(NfListObject::Chain(base_chain(
        name,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        0,
    )));
    // What the guest sends marks its connection as this vif's (conntrack has seen the packet:
    // the forward hook comes after conntrack's, unlike prerouting's -300). Not only a new
    // connection: one left by an earlier guest of this address that this guest sends on (the
    // same ports) becomes its own, rather than staying the old vif's, its answers dropped for
    // as long as the guest's packets keep the entry alive. Only the guest's own packets claim
    // a connection; the old peers' are dropped before the guest sees them.
    b.add(NfListObject::Rule(rule(
        name,
        "forward",
        vec![
            matches(meta(MetaKey::Iifname), Operator::EQ, string(vif)),
            matches(ct("mark"), Operator::NEQ, Expression::Number(mark)),
            Statement::Mangle(Mangle {
                key: ct("mark"),
                value: Expression::Number(mark),
            }),
        ],
    )));
    // Towards the guest: answers to what it started through this vif, nothing else.
    b.add(NfListObject::Rule(rule(
        name,
        "forward",
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, string(vif)),
            matches(
                ct("state"),
                Operator::IN,
                Expression::List(vec![string("established"), string("related")]),
            ),
            matches(ct("mark"), Operator::EQ, Expression::Number(mark)),
            Statement::Accept(None),
        ],
    )));
    b.add(NfListObject::Rule(rule(
        name,
        "forward",
        vec![
            matches(meta(MetaKey::Oifname), Operator::EQ, string(vif)),
            counter(),
            Statement::Drop(None),
        ],
    )));
    b.to_nftables()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON `nft -j -f -` is given, as text without spaces.
    fn json(out: Option<&str>) -> String {
        let r = ruleset(
            "keel-d3-vif3.0",
            "vif3.0",
            Ipv4Addr::new(10, 99, 2, 2),
            out,
            0x1234_5678,
        );
        serde_json::to_string(&r).expect("serializable")
    }

    #[test]
    fn the_table_is_made_afresh_then_filled() {
        let j = json(None);
        let add = r#"{"add":{"table":{"family":"ip","name":"keel-d3-vif3.0"}}}"#;
        let del = r#"{"delete":{"table":{"family":"ip","name":"keel-d3-vif3.0"}}}"#;
        let a = j.find(add).expect("table added");
        let d = j.find(del).expect("table deleted");
        let a2 = j[d..].find(add).expect("and added again") + d;
        assert!(a < d && d < a2, "{j}");
        assert!(
            j.find(r#""chain":{"family":"ip","table":"keel-d3-vif3.0","name":"postrouting""#)
                .unwrap()
                > a2
        );
    }

    #[test]
    fn masquerade_and_forward_rules_name_the_vif_and_guest() {
        let j = json(None);
        for part in [
            r#""type":"nat","hook":"postrouting","prio":100"#,
            r#""type":"filter","hook":"forward","prio":0"#,
            r#""type":"filter","hook":"prerouting","prio":-300"#,
            r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.99.2.2","op":"=="}},{"match":{"left":{"meta":{"key":"oifname"}},"right":"vif3.0","op":"!="}},{"masquerade":null}"#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"vif3.0","op":"=="}},{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.99.2.2","op":"!="}},{"counter":null},{"drop":null}"#,
            r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"vif3.0","op":"=="}},{"match":{"left":{"ct":{"key":"mark"}},"right":305419896,"op":"!="}},{"mangle":{"key":{"ct":{"key":"mark"}},"value":305419896}}"#,
            r#"{"match":{"left":{"ct":{"key":"state"}},"right":["established","related"],"op":"in"}},{"match":{"left":{"ct":{"key":"mark"}},"right":305419896,"op":"=="}},{"accept":null}"#,
            r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"vif3.0","op":"=="}},{"counter":null},{"drop":null}"#,
        ] {
            assert!(j.contains(part), "missing {part} in {j}");
        }
        // No exception to the anti-spoof rule, not even a DHCP client's broadcast from no
        // address (the vif's DHCP server reads those ahead of it).
        assert!(!j.contains("0.0.0.0"), "{j}");
    }

    #[test]
    fn marks_are_random_and_never_zero() {
        let a = connection_mark().expect("getrandom");
        let b = connection_mark().expect("getrandom");
        assert!(a != 0 && b != 0);
        assert_ne!(a, b, "two draws of 32 random bits were equal");
    }

    #[test]
    fn a_gateway_device_limits_the_masquerade() {
        let j = json(Some("eth1"));
        assert!(
            j.contains(r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"eth1","op":"=="}},{"masquerade":null}"#),
            "{j}"
        );
    }
}
