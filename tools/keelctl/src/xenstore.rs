//! `keelctl xenstore`: the XenStore from the command line, as Xen's `xenstore-ls`,
//! `xenstore-read`, `-write`, `-rm`, `-list` and `-watch` (tools/xenstore/xenstore_client.c),
//! through keel-xenstored's client library as Dom0; and the connection the domain-control
//! verbs (`shutdown`, `reboot`, `mem-set`) share.
use std::{
    io::{self, Write},
    path::Path,
};

use clap::Subcommand;
use keel_xenstored::{
    client::{Client, Error, TxId},
    perms::Access,
    Errno,
};

/// `keelctl xenstore`'s verbs.
#[derive(Subcommand, Debug)]
pub enum XsCommand {
    /// List a subtree, as `xenstore-ls`.
    ///
    /// Prints every node below PATH (default "/"), one per line, `name = "value"`, indented
    /// by one space per level below PATH; values are escaped as in `read`. A node whose value
    /// cannot be read prints `name:`. Unlike xenstore-ls, long values are not cut to the
    /// terminal's width.
    Ls {
        /// Print each node's full path instead of an indented name (xenstore-ls -f).
        #[arg(short = 'f', long)]
        full_paths: bool,
        /// Also print each node's permissions, `  (n0,r7)` (xenstore-ls -p).
        #[arg(short = 'p', long)]
        perms: bool,
        /// The subtree's root.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print values, one per line, as `xenstore-read`.
    ///
    /// Bytes outside printable ASCII are escaped as xenstore-read escapes them: \t \n \r,
    /// \\ for a backslash, \NNN (octal) below 8, \xNN otherwise. Stops at the first path
    /// that cannot be read.
    Read {
        /// Print the bytes as they are, unescaped (xenstore-read -R).
        #[arg(short = 'R', long)]
        raw: bool,
        /// The nodes to read.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Write values, as `xenstore-write`: PATH VALUE [PATH VALUE...].
    ///
    /// Creates the node and missing parents. VALUE's escapes (\t \n \r \\ \xNN \NNN, as
    /// `read` prints them) are turned into the bytes they stand for, as xenstore-write does,
    /// unless -R.
    Write {
        /// Write VALUE's bytes as given, without unescaping (xenstore-write -R).
        #[arg(short = 'R', long)]
        raw: bool,
        /// Alternating paths and values.
        #[arg(required = true, value_name = "PATH VALUE")]
        pairs: Vec<String>,
    },
    /// Remove nodes and everything below them, as `xenstore-rm`.
    ///
    /// Removing a node that does not exist is not an error when its parent exists (Xen's
    /// rule).
    Rm {
        /// The nodes to remove.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Print the names of a node's children, one per line, as `xenstore-list`.
    List {
        /// The nodes whose children to print.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Print a node's permissions as Xen writes them, as `xenstore-ls -p` does.
    ///
    /// One line per PATH, the entries separated by spaces, owner first, in the form
    /// `xenstore-chmod` takes: a letter (n none, r read, w write, b both) and a domid. The
    /// owner may do anything; its entry's letter is what every domain without an entry of
    /// its own may do. E.g. `n0 r7`: owned by Dom0, domain 7 may read, no one else may.
    Perms {
        /// The nodes.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Watch nodes and print each event, `path token`, as `xenstore-watch`.
    ///
    /// A watch fires for changes to PATH and everything below it; the watch's token is PATH.
    /// XenStore fires each watch once at once when it is set, so the first event comes
    /// without a change. Runs until interrupted, or until COUNT events were printed.
    Watch {
        /// Stop after this many events (xenstore-watch -n).
        #[arg(short = 'n', long = "count", value_name = "COUNT")]
        count: Option<u64>,
        /// The nodes to watch.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
}

/// Connects to the XenStore daemon at `socket` as Dom0, saying what to do when there is none.
pub fn connect(socket: &Path) -> Result<Client, String> {
    Client::connect(socket).map_err(|e| connect_error(socket, &e))
}

fn connect_error(socket: &Path, e: &io::Error) -> String {
    let s = socket.display();
    match e.kind() {
        io::ErrorKind::NotFound => {
            format!("XenStore is not running (no {s}): start a domain or run keel-xenstored")
        }
        io::ErrorKind::ConnectionRefused => format!(
            "XenStore is not running (nothing listens on {s}): start a domain or run \
             keel-xenstored"
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied connecting to XenStore at {s}: it accepts root and its own \
             user; run keelctl as root"
        ),
        _ => format!("cannot connect to XenStore at {s}: {e}"),
    }
}

/// What an XenStore errno means to a user.
fn errno_text(e: Errno) -> &'static str {
    match e {
        Errno::ENOENT => "no such node",
        Errno::EACCES => "permission denied",
        Errno::EINVAL => "invalid path or argument",
        Errno::EEXIST => "already exists",
        Errno::EISDIR => "is a directory",
        Errno::ENOSPC => "quota exceeded",
        Errno::E2BIG => "too big",
        Errno::ENOMEM => "out of memory",
        Errno::EIO => "I/O error",
        Errno::ENOTEMPTY => "not empty",
        Errno::ENOSYS => "not supported",
        Errno::EROFS => "read-only",
        Errno::EBUSY => "busy",
        Errno::EAGAIN => "try again",
        Errno::EISCONN => "already connected",
        Errno::EPERM => "operation not permitted",
    }
}

/// A failed XenStore operation in words: `read /a/b: no such node (ENOENT)`.
pub fn op_error(op: &str, path: &str, e: &Error) -> String {
    match e {
        Error::Xs(errno) => format!("{op} {path}: {} ({errno})", errno_text(*errno)),
        Error::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => format!(
            "{op} {path}: XenStore closed the connection (it stopped, or refused this user: \
             it accepts only root and its own user)"
        ),
        other => format!("{op} {path}: {other}"),
    }
}

/// A value as `xenstore-read` prints it (libxenstore's `sanitise_value`): printable ASCII
/// as is, `\t` `\n` `\r` `\\`, `\NNN` (three octal digits) below 8, `\xNN` for the rest.
pub fn escape(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value {
        match b {
            b'\\' => out.push_str("\\\\"),
            b' '..=b'~' => out.push(char::from(b)),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            0..=7 => out.push_str(&format!("\\{b:03o}")),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// The bytes `text` stands for, as `xenstore-write` reads it (libxenstore's
/// `unsanitise_value`): the escapes [`escape`] makes, `\xN[N]` and `\N[N[N]]` (octal) with
/// fewer digits too; a backslash before anything else is dropped.
pub fn unescape(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    // Up to `max` digits of `radix` from b[at..]: the value and how many were read.
    let digits = |at: usize, radix: u32, max: usize| {
        let mut v = 0u32;
        let mut n = 0;
        while n < max {
            match b.get(at + n).and_then(|&c| char::from(c).to_digit(radix)) {
                Some(d) => v = v * radix + d,
                None => break,
            }
            n += 1;
        }
        (v, n)
    };
    while i < b.len() {
        let c = b[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&next) = b.get(i) else {
            // A trailing backslash stands for itself.
            out.push(b'\\');
            break;
        };
        i += 1;
        match next {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'x' => {
                let (v, n) = digits(i, 16, 2);
                i += n;
                // `\x` without digits: Xen's sscanf leaves the 'x'.
                out.push(if n == 0 { b'x' } else { v as u8 });
            }
            b'0'..=b'7' => {
                let (v, n) = digits(i - 1, 8, 3);
                i += n - 1;
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// Xen's permission strings of `perms`, owner first: `["n0", "r7"]`.
pub fn perm_strings(perms: &keel_xenstored::perms::Perms) -> Vec<String> {
    perms
        .entries()
        .iter()
        .map(|p| {
            let letter = match p.access {
                Access::None => 'n',
                Access::Read => 'r',
                Access::Write => 'w',
                Access::Both => 'b',
            };
            format!("{letter}{}", p.domid)
        })
        .collect()
}

/// The reads `ls` makes, so that the tree printing runs on a fake in tests.
pub trait Tree {
    /// The names of `path`'s children.
    fn children(&mut self, path: &str) -> Result<Vec<String>, Error>;
    /// `path`'s value.
    fn value(&mut self, path: &str) -> Result<Vec<u8>, Error>;
    /// `path`'s permission strings.
    fn perms(&mut self, path: &str) -> Result<Vec<String>, Error>;
}

impl Tree for Client {
    fn children(&mut self, path: &str) -> Result<Vec<String>, Error> {
        self.directory(TxId::NONE, path)
    }

    fn value(&mut self, path: &str) -> Result<Vec<u8>, Error> {
        self.read(TxId::NONE, path)
    }

    fn perms(&mut self, path: &str) -> Result<Vec<String>, Error> {
        self.get_perms(TxId::NONE, path).map(|p| perm_strings(&p))
    }
}

/// `child` below `parent`, with one slash between.
pub fn join(parent: &str, child: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// How `ls` prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct LsStyle {
    /// Full paths instead of indented names.
    pub full_paths: bool,
    /// Permissions after each value.
    pub perms: bool,
}

/// Prints the tree below `path` as `xenstore-ls` does. Children that vanish or become
/// unreadable while it walks are skipped, as xenstore-ls skips them (it warns); `path`
/// itself must be listable. A reader that goes away (`keelctl xenstore ls | head`) ends the
/// listing quietly, as it ends xenstore-ls.
pub fn ls(
    tree: &mut dyn Tree,
    path: &str,
    style: LsStyle,
    out: &mut dyn Write,
) -> Result<(), String> {
    let names = tree.children(path).map_err(|e| op_error("ls", path, &e))?;
    Stop::ended(ls_below(tree, path, &names, 0, style, out))
}

/// Why a listing (or any output of `keelctl xenstore`) stopped early.
enum Stop {
    /// Its output is a pipe whose reader closed it.
    ReaderGone,
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Self {
        Stop::Failed(e)
    }
}

impl Stop {
    /// A failed write of `what`: a reader gone, or an error naming it.
    fn writing(what: &'static str) -> impl Fn(io::Error) -> Stop + Copy {
        move |e| match e.kind() {
            io::ErrorKind::BrokenPipe => Stop::ReaderGone,
            _ => Stop::Failed(format!("writing {what}: {e}")),
        }
    }

    /// The outcome for the user: output cut short by its reader is no failure.
    fn ended(r: Result<(), Stop>) -> Result<(), String> {
        match r {
            Ok(()) | Err(Stop::ReaderGone) => Ok(()),
            Err(Stop::Failed(e)) => Err(e),
        }
    }
}

fn ls_below(
    tree: &mut dyn Tree,
    path: &str,
    names: &[String],
    depth: usize,
    style: LsStyle,
    out: &mut dyn Write,
) -> Result<(), Stop> {
    let write_err = Stop::writing("the listing");
    for name in names {
        let child = join(path, name);
        let mut line = if style.full_paths {
            child.clone()
        } else {
            format!("{:depth$}{name}", "")
        };
        match tree.value(&child) {
            Ok(v) => line.push_str(&format!(" = \"{}\"", escape(&v))),
            Err(_) => line.push(':'),
        }
        if style.perms {
            if let Ok(p) = tree.perms(&child) {
                line.push_str(&format!("  ({})", p.join(",")));
            }
        }
        writeln!(out, "{line}").map_err(write_err)?;
        match tree.children(&child) {
            Ok(grandchildren) => ls_below(tree, &child, &grandchildren, depth + 1, style, out)?,
            Err(Error::Xs(Errno::ENOENT | Errno::EACCES)) => {}
            Err(e) => return Err(Stop::Failed(op_error("ls", &child, &e))),
        }
    }
    Ok(())
}

/// Splits `write`'s arguments into (path, value) pairs.
pub fn pairs(args: &[String]) -> Result<Vec<(&str, &str)>, String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!(
            "xenstore write takes PATH VALUE pairs: no value for {}",
            args[args.len() - 1]
        ));
    }
    Ok(args
        .chunks(2)
        .map(|c| (c[0].as_str(), c[1].as_str()))
        .collect())
}

/// Runs one `keelctl xenstore` verb against the daemon at `socket`.
pub fn run(command: &XsCommand, socket: &Path) -> Result<(), String> {
    // `keelctl xenstore ls | head`, `... watch | head -n 1`: done, as for xenstore-ls.
    Stop::ended(run_to_stdout(command, socket))
}

fn run_to_stdout(command: &XsCommand, socket: &Path) -> Result<(), Stop> {
    // Bad arguments are reported before a missing daemon.
    if let XsCommand::Write { pairs: args, .. } = command {
        pairs(args)?;
    }
    let mut xs = connect(socket)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let write_err = Stop::writing("to stdout");
    match command {
        XsCommand::Ls {
            full_paths,
            perms,
            path,
        } => {
            let style = LsStyle {
                full_paths: *full_paths,
                perms: *perms,
            };
            ls(&mut xs, path, style, &mut out)?;
        }
        XsCommand::Read { raw, paths } => {
            for p in paths {
                let v = xs
                    .read(TxId::NONE, p)
                    .map_err(|e| op_error("read", p, &e))?;
                if *raw {
                    out.write_all(&v).map_err(write_err)?;
                    out.write_all(b"\n").map_err(write_err)?;
                } else {
                    writeln!(out, "{}", escape(&v)).map_err(write_err)?;
                }
            }
        }
        XsCommand::Write { raw, pairs: args } => {
            for (p, v) in pairs(args)? {
                let bytes = if *raw {
                    v.as_bytes().to_vec()
                } else {
                    unescape(v)
                };
                xs.write(TxId::NONE, p, bytes)
                    .map_err(|e| op_error("write", p, &e))?;
            }
        }
        XsCommand::Rm { paths } => {
            for p in paths {
                xs.rm(TxId::NONE, p).map_err(|e| op_error("rm", p, &e))?;
            }
        }
        XsCommand::List { paths } => {
            for p in paths {
                for name in xs
                    .directory(TxId::NONE, p)
                    .map_err(|e| op_error("list", p, &e))?
                {
                    writeln!(out, "{name}").map_err(write_err)?;
                }
            }
        }
        XsCommand::Perms { paths } => {
            for p in paths {
                let perms = xs
                    .get_perms(TxId::NONE, p)
                    .map_err(|e| op_error("perms", p, &e))?;
                writeln!(out, "{}", perm_strings(&perms).join(" ")).map_err(write_err)?;
            }
        }
        XsCommand::Watch { count, paths } => {
            if *count == Some(0) {
                return Ok(());
            }
            for p in paths {
                // The path is the token, as xenstore-watch makes it.
                xs.watch(p, p).map_err(|e| op_error("watch", p, &e))?;
            }
            let mut seen = 0u64;
            loop {
                let ev = xs
                    .next_event()
                    .map_err(|e| op_error("watch", &paths[0], &e))?;
                writeln!(out, "{} {}", ev.path, ev.token).map_err(write_err)?;
                // Each event as it comes, for whoever reads the pipe.
                out.flush().map_err(write_err)?;
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
        }
    }
    out.flush().map_err(write_err)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn escaping_follows_xenstore_read() {
        assert_eq!(escape(b"plain text ~!"), "plain text ~!");
        assert_eq!(escape(b"a\\b"), "a\\\\b");
        assert_eq!(escape(b"\t\n\r"), "\\t\\n\\r");
        assert_eq!(escape(b"\0\x07"), "\\000\\007");
        assert_eq!(escape(b"\x08\x1b\x7f\xff"), "\\x08\\x1b\\x7f\\xff");
        assert_eq!(escape(b""), "");
    }

    #[test]
    fn unescaping_inverts_escaping() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(unescape(&escape(&all)), all);
        assert_eq!(unescape("a\\tb"), b"a\tb");
        assert_eq!(unescape("\\x4"), b"\x04");
        assert_eq!(unescape("\\x4g"), b"\x04g");
        assert_eq!(unescape("\\xg"), b"xg");
        assert_eq!(unescape("\\0"), b"\0");
        assert_eq!(unescape("\\101x"), b"Ax");
        assert_eq!(unescape("\\1012"), b"A2");
        assert_eq!(unescape("\\q"), b"q");
        assert_eq!(unescape("end\\"), b"end\\");
    }

    /// A tree of (path -> value), with perms `n0` everywhere but where given.
    #[derive(Default)]
    struct Fake {
        nodes: BTreeMap<String, Vec<u8>>,
        unreadable: Vec<String>,
    }

    impl Fake {
        fn with(paths: &[(&str, &str)]) -> Self {
            let mut f = Fake::default();
            f.nodes.insert("/".into(), Vec::new());
            for (p, v) in paths {
                // Parents exist, as XenStore makes them.
                let mut at = 0;
                while let Some(i) = p[at + 1..].find('/') {
                    at += i + 1;
                    f.nodes.entry(p[..at].to_string()).or_default();
                }
                f.nodes.insert(p.to_string(), v.as_bytes().to_vec());
            }
            f
        }
    }

    impl Tree for Fake {
        fn children(&mut self, path: &str) -> Result<Vec<String>, Error> {
            if !self.nodes.contains_key(path) {
                return Err(Error::Xs(Errno::ENOENT));
            }
            let prefix = join(path, "");
            Ok(self
                .nodes
                .keys()
                .filter_map(|k| k.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(String::from)
                .collect())
        }

        fn value(&mut self, path: &str) -> Result<Vec<u8>, Error> {
            if self.unreadable.iter().any(|u| u == path) {
                return Err(Error::Xs(Errno::EACCES));
            }
            self.nodes
                .get(path)
                .cloned()
                .ok_or(Error::Xs(Errno::ENOENT))
        }

        fn perms(&mut self, path: &str) -> Result<Vec<String>, Error> {
            let domid = path
                .strip_prefix("/local/domain/")
                .and_then(|r| r.split('/').next());
            Ok(match domid {
                Some(d) => vec!["n0".into(), format!("r{d}")],
                None => vec!["n0".into()],
            })
        }
    }

    fn listing(tree: &mut Fake, path: &str, style: LsStyle) -> Result<String, String> {
        let mut out = Vec::new();
        ls(tree, path, style, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn fake() -> Fake {
        Fake::with(&[
            ("/local/domain/7/name", "web"),
            ("/local/domain/7/control/shutdown", ""),
            ("/local/domain/7/data/blob", "a\nb\\"),
            ("/vm/1234/name", "web"),
        ])
    }

    /// A writer that takes `room` lines, then fails with `kind`.
    struct Closing {
        room: usize,
        kind: io::ErrorKind,
    }

    impl Write for Closing {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(self.kind.into());
            }
            self.room -= buf.iter().filter(|&&b| b == b'\n').count().min(self.room);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn ls_stops_quietly_when_its_reader_goes() {
        let style = LsStyle::default();
        let mut gone = Closing {
            room: 3,
            kind: io::ErrorKind::BrokenPipe,
        };
        assert_eq!(ls(&mut fake(), "/", style, &mut gone), Ok(()));
        let mut full = Closing {
            room: 3,
            kind: io::ErrorKind::StorageFull,
        };
        let e = ls(&mut fake(), "/", style, &mut full).unwrap_err();
        assert!(e.starts_with("writing the listing: "), "{e}");
    }

    #[test]
    fn ls_indents_by_depth() {
        let want = "\
local = \"\"
 domain = \"\"
  7 = \"\"
   control = \"\"
    shutdown = \"\"
   data = \"\"
    blob = \"a\\nb\\\\\"
   name = \"web\"
vm = \"\"
 1234 = \"\"
  name = \"web\"
";
        assert_eq!(listing(&mut fake(), "/", LsStyle::default()).unwrap(), want);
        assert_eq!(
            listing(&mut fake(), "/local/domain/7/control", LsStyle::default()).unwrap(),
            "shutdown = \"\"\n"
        );
    }

    #[test]
    fn ls_full_paths_and_perms() {
        let style = LsStyle {
            full_paths: true,
            perms: true,
        };
        assert_eq!(
            listing(&mut fake(), "/vm", style).unwrap(),
            "/vm/1234 = \"\"  (n0)\n/vm/1234/name = \"web\"  (n0)\n"
        );
        assert_eq!(
            listing(&mut fake(), "/local/domain/7/data", style).unwrap(),
            "/local/domain/7/data/blob = \"a\\nb\\\\\"  (n0,r7)\n"
        );
    }

    #[test]
    fn ls_marks_unreadable_values_and_refuses_a_missing_root() {
        let mut f = fake();
        f.unreadable.push("/vm/1234/name".into());
        assert_eq!(
            listing(&mut f, "/vm", LsStyle::default()).unwrap(),
            "1234 = \"\"\n name:\n"
        );
        assert_eq!(
            listing(&mut f, "/nope", LsStyle::default()).unwrap_err(),
            "ls /nope: no such node (ENOENT)"
        );
    }

    #[test]
    fn write_pairs() {
        let args: Vec<String> = ["/a", "1", "/b", "two words"].map(String::from).to_vec();
        assert_eq!(pairs(&args).unwrap(), [("/a", "1"), ("/b", "two words")]);
        assert_eq!(
            pairs(&args[..3]).unwrap_err(),
            "xenstore write takes PATH VALUE pairs: no value for /b"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let missing = Path::new("/nonexistent/xs.sock");
        assert_eq!(
            connect(missing).unwrap_err(),
            "XenStore is not running (no /nonexistent/xs.sock): start a domain or run \
             keel-xenstored"
        );
        assert_eq!(
            op_error("read", "/x", &Error::Xs(Errno::EACCES)),
            "read /x: permission denied (EACCES)"
        );
        let eof = Error::Io(io::ErrorKind::UnexpectedEof.into());
        assert!(op_error("rm", "/x", &eof).contains("closed the connection"));
    }

    #[test]
    fn a_stale_socket_is_not_a_daemon() {
        let dir = std::env::temp_dir().join(format!("keelctl-xs-stale-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("xs.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let e = connect(&sock).unwrap_err();
        assert!(
            e.starts_with("XenStore is not running (nothing listens on"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
