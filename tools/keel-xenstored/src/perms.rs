//! Node permissions (xenstore.txt "Each node has one or multiple permission entries"; Xen's
//! `perm_for_conn`): a list of `<letter><domid>` entries, `n` none, `r` read, `w` write, `b`
//! both. The first entry names the owner, who may do anything, and gives everyone without an
//! entry of their own its access. Dom0 may do anything anywhere.

use crate::wire::Errno;
use crate::DomId;

/// What one entry allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `n`
    None,
    /// `r`
    Read,
    /// `w`
    Write,
    /// `b`
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// The domain it is about.
    pub domid: DomId,
    /// What that domain may do.
    pub access: Access,
}

/// What an operation needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Reading the value, the children, the permissions; seeing watch events.
    Read,
    /// Writing, creating below, removing.
    Write,
    /// Changing the permissions: the owner (or Dom0) only.
    Owner,
}

/// A node's permission list.
///
/// # Invariants
///
/// Never empty: entry 0 is the owner's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owned by `owner`, with `others` for everyone else.
    pub fn new(owner: DomId, others: Access) -> Self {
        Self(vec![Perm {
            domid: owner,
            access: others,
        }])
    }

    /// The list given in order, `None` when empty.
    pub fn from_entries(entries: Vec<Perm>) -> Option<Self> {
        (!entries.is_empty()).then_some(Self(entries))
    }

    /// The entries, owner first.
    pub fn entries(&self) -> &[Perm] {
        &self.0
    }

    /// The owner.
    pub fn owner(&self) -> DomId {
        self.0[0].domid
    }

    /// The same list with `owner` as the owner (a DomU owns what it creates, inheriting the
    /// rest of the parent's list: Xen's `construct_node`).
    pub fn with_owner(&self, owner: DomId) -> Self {
        let mut v = self.0.clone();
        v[0].domid = owner;
        Self(v)
    }

    /// The list without entries for `domid` after the owner's (a released domain's).
    pub fn without(&self, domid: DomId) -> Self {
        let mut v = self.0.clone();
        let owner = v.remove(0);
        v.retain(|p| p.domid != domid);
        v.insert(0, owner);
        Self(v)
    }

    /// The access `domid` has: Dom0 and the owner everything; else its own entry's (the
    /// first after the owner's), else the owner entry's default.
    pub fn allows(&self, domid: DomId, want: Want) -> bool {
        if domid == 0 || domid == self.owner() {
            return true;
        }
        let access = self.0[1..]
            .iter()
            .find(|p| p.domid == domid)
            .map_or(self.0[0].access, |p| p.access);
        match want {
            Want::Read => access.reads(),
            Want::Write => access.writes(),
            Want::Owner => false,
        }
    }

    /// The GET_PERMS payload: each entry as a NUL-terminated string.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.0 {
            out.extend_from_slice(format!("{}{}\0", p.access.letter(), p.domid).as_bytes());
        }
        out
    }

    /// Parses SET_PERMS' entries (`b0`, `r5`, ...).
    pub fn parse(strings: &[&[u8]]) -> Result<Self, Errno> {
        let mut v = Vec::with_capacity(strings.len());
        for s in strings {
            let (&letter, num) = s.split_first().ok_or(Errno::EINVAL)?;
            let access = match letter {
                b'n' => Access::None,
                b'r' => Access::Read,
                b'w' => Access::Write,
                b'b' => Access::Both,
                _ => return Err(Errno::EINVAL),
            };
            let domid = crate::path::parse_domid(num).ok_or(Errno::EINVAL)?;
            v.push(Perm { domid, access });
        }
        Self::from_entries(v).ok_or(Errno::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(s: &str) -> Perms {
        let parts: Vec<&[u8]> = s.split(',').map(str::as_bytes).collect();
        Perms::parse(&parts).expect("valid perms")
    }

    #[test]
    fn owner_and_dom0_may_do_anything() {
        let p = perms("n3");
        for want in [Want::Read, Want::Write, Want::Owner] {
            assert!(p.allows(3, want));
            assert!(p.allows(0, want));
            assert!(!p.allows(4, want));
        }
    }

    #[test]
    fn entries_override_the_default() {
        let p = perms("r0,w5,n6,b7");
        assert!(p.allows(4, Want::Read) && !p.allows(4, Want::Write));
        assert!(!p.allows(5, Want::Read) && p.allows(5, Want::Write));
        assert!(!p.allows(6, Want::Read) && !p.allows(6, Want::Write));
        assert!(p.allows(7, Want::Read) && p.allows(7, Want::Write));
        assert!(!p.allows(7, Want::Owner));
    }

    #[test]
    fn wire_format_round_trips() {
        let p = perms("n0,r1,w2,b3");
        assert_eq!(p.to_wire(), b"n0\0r1\0w2\0b3\0");
        for bad in ["", "x1", "r", "r-1", "r65536", "r1a"] {
            assert_eq!(
                Perms::parse(&[bad.as_bytes()]),
                Err(Errno::EINVAL),
                "{bad:?}"
            );
        }
        assert_eq!(Perms::parse(&[]), Err(Errno::EINVAL));
    }

    #[test]
    fn ownership_and_release_edits() {
        let p = perms("b0,r5,w6,r5");
        assert_eq!(p.with_owner(9).owner(), 9);
        assert_eq!(p.with_owner(9).entries()[1..], p.entries()[1..]);
        assert_eq!(p.without(5), perms("b0,w6"));
        assert_eq!(perms("n5,r6").without(5), perms("n5,r6"), "the owner stays");
    }
}
