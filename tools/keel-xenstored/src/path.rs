//! XenStore path rules (docs/misc/xenstore.txt, "Paths are /-separated..."; Xen's
//! `canonicalize`): ASCII alphanumerics and `-/_@`; no empty path, no `//`, no trailing `/`
//! except the root; at most [`ABS_PATH_MAX`] bytes; a DomU's path at most [`REL_PATH_MAX`]
//! bytes below its home `/local/domain/<domid>/`. A path not starting with `/` is relative to
//! the caller's home; one starting with `@` names a special watch (`@introduceDomain`,
//! `@releaseDomain`), allowed only where the operation says so.

use crate::wire::{Errno, ABS_PATH_MAX, REL_PATH_MAX};
use crate::DomId;

/// A checked path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The absolute path (or the `@` name).
    pub full: String,
    /// Bytes of the caller's home prefix `/local/domain/<domid>/` that a relative path was
    /// given without, so that events can give it back the way it was given; 0 otherwise.
    pub relative_prefix: usize,
}

impl Resolved {
    /// Whether it is a special `@` name rather than a node's path.
    pub fn is_special(&self) -> bool {
        self.full.starts_with('@')
    }
}

/// A domain's home, `/local/domain/<domid>` (`GET_DOMAIN_PATH`).
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Checks `raw` as given by a connection of `domid` (privileged when `privileged`) and makes
/// it absolute. `special_ok` allows `@` names (WATCH, UNWATCH, GET/SET_PERMS).
pub fn resolve(
    raw: &[u8],
    domid: DomId,
    privileged: bool,
    special_ok: bool,
) -> Result<Resolved, Errno> {
    if raw.is_empty() || !raw.iter().all(|&b| valid_char(b)) {
        return Err(Errno::EINVAL);
    }
    if raw[0] == b'@' && !special_ok {
        return Err(Errno::EINVAL);
    }
    // Valid characters are ASCII, so this cannot fail.
    let raw = std::str::from_utf8(raw).map_err(|_| Errno::EINVAL)?;
    let (full, relative_prefix) = if raw.starts_with('/') || raw.starts_with('@') {
        (raw.to_string(), 0)
    } else {
        let home = domain_path(domid.into());
        (format!("{home}/{raw}"), home.len() + 1)
    };
    if full.len() > 1 && full.ends_with('/') || full.contains("//") || full.len() > ABS_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    if !privileged && full.len() - home_prefix_len(&full) > REL_PATH_MAX {
        return Err(Errno::EINVAL);
    }
    Ok(Resolved {
        full,
        relative_prefix,
    })
}

/// The length of a leading `/local/domain/<domid>/` (any domain of up to 5 digits, as Xen's
/// `sscanf("/local/domain/%5u/")`), else 0.
fn home_prefix_len(path: &str) -> usize {
    const LOCAL: &str = "/local/domain/";
    let Some(rest) = path.strip_prefix(LOCAL) else {
        return 0;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=5).contains(&digits) && rest.as_bytes().get(digits) == Some(&b'/') {
        LOCAL.len() + digits + 1
    } else {
        0
    }
}

/// The parent of an absolute path; `None` for the root.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// The last component of an absolute path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `parent`'s child `name`.
pub fn child(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or below it (xenstore.txt's "`<child>` of `<parent>`").
pub fn is_at_or_below(path: &str, ancestor: &str) -> bool {
    if ancestor == "/" {
        return path.starts_with('/');
    }
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A domid in decimal (0..=65535, digits only; Xen's `parse_domid`).
pub fn parse_domid(s: &[u8]) -> Option<DomId> {
    if s.is_empty() || s.len() > 5 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_under_the_callers_home() {
        let r = resolve(b"device/vbd", 5, false, false).expect("valid");
        assert_eq!(r.full, "/local/domain/5/device/vbd");
        assert_eq!(&r.full[r.relative_prefix..], "device/vbd");
        let r = resolve(b"/local", 5, false, false).expect("valid");
        assert_eq!((r.full.as_str(), r.relative_prefix), ("/local", 0));
        assert_eq!(
            resolve(b"x", 0, true, false).expect("valid").full,
            "/local/domain/0/x"
        );
    }

    #[test]
    fn malformed_paths_are_einval() {
        for bad in [
            &b""[..],
            b"/a/",
            b"//a",
            b"/a//b",
            b"/a b",
            b"/a\0b",
            b"/a.b",
            b"/\xc3\xa9",
            b"@releaseDomain",
        ] {
            assert_eq!(resolve(bad, 1, false, false), Err(Errno::EINVAL), "{bad:?}");
        }
        assert!(resolve(b"/", 1, false, false).is_ok());
        assert!(resolve(b"/a@b-c_D9", 1, false, false).is_ok());
        assert!(resolve(b"@releaseDomain", 1, false, true)
            .expect("special allowed")
            .is_special());
    }

    #[test]
    fn length_limits_follow_xen() {
        let long = |n: usize| format!("/{}", "a".repeat(n - 1));
        assert!(resolve(long(ABS_PATH_MAX).as_bytes(), 0, true, false).is_ok());
        assert_eq!(
            resolve(long(ABS_PATH_MAX + 1).as_bytes(), 0, true, false),
            Err(Errno::EINVAL)
        );
        // A DomU: at most REL_PATH_MAX below any /local/domain/<id>/, and for other paths.
        let rel = "a".repeat(REL_PATH_MAX);
        assert!(resolve(rel.as_bytes(), 7, false, false).is_ok());
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert_eq!(resolve(rel.as_bytes(), 7, false, false), Err(Errno::EINVAL));
        assert!(
            resolve(rel.as_bytes(), 0, true, false).is_ok(),
            "Dom0 has no such limit"
        );
        assert_eq!(
            resolve(long(REL_PATH_MAX + 1).as_bytes(), 7, false, false),
            Err(Errno::EINVAL)
        );
        let other = format!("/local/domain/9/{}", "b".repeat(REL_PATH_MAX));
        assert!(resolve(other.as_bytes(), 7, false, false).is_ok());
    }

    #[test]
    fn path_helpers() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/bc"), "bc");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/a", "b"), "/a/b");
        assert!(is_at_or_below("/a/b", "/a"));
        assert!(is_at_or_below("/a", "/a"));
        assert!(!is_at_or_below("/ab", "/a"));
        assert!(is_at_or_below("/ab", "/"));
        assert_eq!(parse_domid(b"65535"), Some(65535));
        assert_eq!(parse_domid(b"65536"), None);
        assert_eq!(parse_domid(b"-1"), None);
        assert_eq!(parse_domid(b""), None);
    }
}
