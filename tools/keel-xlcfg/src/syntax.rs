//! The xl.cfg syntax: `KEY = VALUE` settings into an ordered map, as xl's parser reads them
//! (Xen's tools/libs/util/libxlu_cfg_l.l, libxlu_cfg_y.y and libxlu_cfg.c).
//!
//! The grammar, token for token:
//! - a key is `[a-z][._0-9a-z]*` (lowercase only); `=` assigns, `+=` appends to the value
//!   set before (strings are concatenated, lists joined; a list and a string do not mix);
//! - a value is a `"string"` or `'string'` on one line, a number `[0-9][0-9a-fx]*` (kept as
//!   text: xl reads `memory = 512` and `memory = "512"` alike, and interprets either as a C
//!   `strtol` with base 0 where it wants a number), or a `[list, of, values]` whose items may
//!   be lists, spread over lines, with an optional trailing comma;
//! - settings end at a newline or `;`; the last one may end at the end of the file;
//! - `#` starts a comment that runs to the end of the line; blanks are spaces and tabs.
//!
//! In strings, `\"`, `\'`, `\\`, `\a`, `\b`, `\f`, `\n`, `\r`, `\t` and `\v` are the C
//! escapes. Numeric escapes (`\x41`, `\101`) are refused: xl's dequoting skips a character
//! after `\x` and always fails, and for `\NNN` reads the digits as decimal and then drops the
//! character, so no config that relies on one means the same in xl.
//!
//! Where xl's parser would accept a file, this one builds the same map, with two exceptions,
//! both more lenient: a comment on the last line needs no newline after it (xl's lexer matches
//! comments with their newline, so there it is a lexical error), and parsing stops at the
//! first error (xl goes on to the next line to report more, but fails all the same).
//!
//! A key set twice keeps its first place in the order and takes the later value, as xl's
//! lookup finds the newest setting; xl says nothing, Keel adds a warning when both are in
//! the file. Command-line overrides ([`Config::apply_override`]) are parsed with the same
//! grammar and applied after the file, as xl appends them to the file's text: the later
//! value wins, `+=` appends to the file's value.

use std::path::Path;
use std::sync::Arc;

use crate::diagnostic::{Diagnostic, Location};

/// Lists nested deeper than this are refused (xl has no limit but its parser's stack;
/// nothing real comes close, and a bound keeps hostile input from exhausting ours).
pub const MAX_LIST_DEPTH: usize = 64;

/// A value: a string, a number (its text, as written) or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A quoted string, unescaped.
    String(String),
    /// An unquoted number, as written (`512`, `0x200`, `0755`, even `12abc`: xl's lexer
    /// takes `[0-9][0-9a-fx]*`, and only the key that wants a number checks it).
    Number(String),
    /// A list of values.
    List(Vec<Value>),
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value.
    pub kind: ValueKind,
    /// Where it starts.
    pub location: Location,
}

impl Value {
    /// The text of a string or a number (xl does not tell them apart); `None` for a list.
    pub fn as_atom(&self) -> Option<&str> {
        match &self.kind {
            ValueKind::String(s) | ValueKind::Number(s) => Some(s),
            ValueKind::List(_) => None,
        }
    }

    /// The items of a list; `None` for a string or a number.
    pub fn as_list(&self) -> Option<&[Value]> {
        match &self.kind {
            ValueKind::List(items) => Some(items),
            _ => None,
        }
    }
}

/// One `KEY = VALUE` setting, after every later assignment and `+=` was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// Where the setting that gave the value was written (the last assignment or `+=`).
    pub location: Location,
    /// The last setting was a `+=` (xl refuses such a value where it wants a number).
    pub appended: bool,
}

/// A parsed config: its settings in the order their keys first appeared.
#[derive(Clone, Debug)]
pub struct Config {
    source: Arc<str>,
    settings: Vec<Setting>,
    warnings: Vec<Diagnostic>,
}

impl Config {
    /// Parses `text`, naming it `source` in messages (the file name, as xl does).
    pub fn parse(source: &str, text: &[u8]) -> Result<Config, Diagnostic> {
        let source: Arc<str> = Arc::from(source);
        let statements = parse_statements(&source, text)?;
        let mut config = Config {
            source,
            settings: Vec::new(),
            warnings: Vec::new(),
        };
        config.apply(statements, true)?;
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn read(path: &Path) -> Result<Config, Diagnostic> {
        let name = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| {
            Diagnostic::whole(
                &Arc::from(name.as_str()),
                format!("unable to read configuration file: {e}"),
            )
        })?;
        Config::parse(&name, &text)
    }

    /// Applies one command-line argument `KEY=VALUE` (in the file's syntax: strings need
    /// their quotes, `name="web"`; `+=` works; several settings may be joined with `;`) after
    /// what is already there, as `xl create CFG KEY=VALUE...` does. Nothing changes on error.
    pub fn apply_override(&mut self, arg: &str) -> Result<(), Diagnostic> {
        let source: Arc<str> = Arc::from(format!("command line `{arg}'"));
        let statements = parse_statements(&source, arg.as_bytes()).map_err(|mut e| {
            if arg.contains('=') && !arg.contains(['"', '\'', '[']) {
                let value = arg.split_once('=').map_or("", |(_, v)| v).trim();
                if value.starts_with(|c: char| !c.is_ascii_digit()) {
                    e.message += &format!(
                        " (strings need quotes on the command line too, e.g. '{}=\"{}\"')",
                        arg.split_once('=').map_or("", |(k, _)| k).trim(),
                        value
                    );
                }
            }
            e
        })?;
        let mut staged = self.clone();
        staged.apply(statements, false)?;
        *self = staged;
        Ok(())
    }

    /// The name of the source, as messages give it.
    pub fn source(&self) -> &Arc<str> {
        &self.source
    }

    /// The settings, in the order their keys first appeared.
    pub fn settings(&self) -> &[Setting] {
        &self.settings
    }

    /// The setting of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// What parsing found odd but harmless (a key set twice in the file).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The string (or number, as text) `key` is set to; an error names the key if it is a
    /// list (xl warns and ignores the key; Keel refuses).
    pub fn atom(&self, key: &str) -> Result<Option<(&str, &Setting)>, Diagnostic> {
        let Some(setting) = self.get(key) else {
            return Ok(None);
        };
        match setting.value.as_atom() {
            Some(text) => Ok(Some((text, setting))),
            None => Err(Diagnostic::at(
                &setting.location,
                format!("`{key}' is a list but should be a single value"),
            )),
        }
    }

    /// The number `key` is set to, read as xl reads it (C `strtol`, base 0: `0x` hex, a
    /// leading `0` octal, surrounding blanks and a sign allowed, nothing after the digits).
    pub fn number(&self, key: &str) -> Result<Option<(i64, &Setting)>, Diagnostic> {
        let Some((text, setting)) = self.atom(key)? else {
            return Ok(None);
        };
        if setting.appended {
            return Err(Diagnostic::at(
                &setting.location,
                format!("can't use += with numbers for `{key}'"),
            ));
        }
        match parse_number(text) {
            Ok(n) => Ok(Some((n, setting))),
            Err(why) => Err(Diagnostic::at(
                &setting.location,
                format!("`{key}' = `{text}' is not a valid number: {why}"),
            )),
        }
    }

    /// The list `key` is set to; an error names the key if it is a single value.
    pub fn list(&self, key: &str) -> Result<Option<(&[Value], &Setting)>, Diagnostic> {
        let Some(setting) = self.get(key) else {
            return Ok(None);
        };
        match setting.value.as_list() {
            Some(items) => Ok(Some((items, setting))),
            None => Err(Diagnostic::at(
                &setting.location,
                format!("`{key}' is a single value but should be a list"),
            )),
        }
    }

    fn apply(&mut self, statements: Vec<Statement>, from_file: bool) -> Result<(), Diagnostic> {
        for statement in statements {
            let Statement {
                key,
                append,
                mut value,
                location,
            } = statement;
            let index = self.settings.iter().position(|s| s.key == key);
            if append {
                if let Some(i) = index {
                    value.kind = concat(&self.settings[i].value, value.kind).ok_or_else(|| {
                        Diagnostic::at(
                            &location,
                            format!("`{key}' +=: can't add [list] to \"string\" or vice versa"),
                        )
                    })?;
                }
            } else if let (Some(i), true) = (index, from_file) {
                let first = &self.settings[i].location;
                if first.source == location.source {
                    self.warnings.push(Diagnostic::at(
                        &location,
                        format!(
                            "`{key}' is set again (before on line {}); the later value wins",
                            first.line
                        ),
                    ));
                }
            }
            let setting = Setting {
                key,
                value,
                location,
                appended: append,
            };
            match index {
                Some(i) => self.settings[i] = setting,
                None => self.settings.push(setting),
            }
        }
        Ok(())
    }
}

/// `previous` followed by `next`, when both are strings or both lists. Numbers are text
/// here, as in xl (`"1" += 2` is `"12"`, which no numeric key then accepts after a `+=`).
fn concat(previous: &Value, next: ValueKind) -> Option<ValueKind> {
    match (&previous.kind, next) {
        (ValueKind::List(old), ValueKind::List(new)) => {
            Some(ValueKind::List(old.iter().cloned().chain(new).collect()))
        }
        (ValueKind::List(_), _) | (_, ValueKind::List(_)) => None,
        (ValueKind::String(old) | ValueKind::Number(old), ValueKind::String(new)) => {
            Some(ValueKind::String(format!("{old}{new}")))
        }
        (ValueKind::String(old), ValueKind::Number(new)) => {
            Some(ValueKind::String(format!("{old}{new}")))
        }
        (ValueKind::Number(old), ValueKind::Number(new)) => {
            Some(ValueKind::Number(format!("{old}{new}")))
        }
    }
}

/// Reads a number as C's `strtol(text, &end, 0)` does when `*end` must be the end: blanks,
/// a sign, then `0x` hex, `0` octal or decimal digits, and nothing after them.
pub fn parse_number(text: &str) -> Result<i64, &'static str> {
    let t = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(hex) = t.strip_prefix("0x").or(t.strip_prefix("0X")) {
        (16, hex)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err("not a number");
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| "out of range")?;
    if negative {
        0i64.checked_sub_unsigned(magnitude).ok_or("out of range")
    } else {
        i64::try_from(magnitude).map_err(|_| "out of range")
    }
}

/// One statement as written, before it is applied.
struct Statement {
    key: String,
    append: bool,
    value: Value,
    location: Location,
}

#[derive(Debug, PartialEq)]
enum Token {
    Key(String),
    Number(String),
    Str(String),
    Comma,
    Open,
    Close,
    Assign,
    Append,
    Semicolon,
    Newline,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Key(k) => format!("`{k}'"),
            Token::Number(n) => format!("`{n}'"),
            Token::Str(_) => "a string".into(),
            Token::Comma => "`,'".into(),
            Token::Open => "`['".into(),
            Token::Close => "`]'".into(),
            Token::Assign => "`='".into(),
            Token::Append => "`+='".into(),
            Token::Semicolon => "`;'".into(),
            Token::Newline => "the end of the line".into(),
            Token::End => "the end of the file".into(),
        }
    }
}

struct Lexer<'a> {
    text: &'a [u8],
    pos: usize,
    line: u32,
    source: Arc<str>,
}

impl Lexer<'_> {
    fn here(&self) -> Location {
        Location {
            source: self.source.clone(),
            line: self.line,
        }
    }

    /// The text from `from` to the next blank or newline, for "near `...'" in messages.
    fn near(&self, from: usize) -> String {
        let rest = &self.text[from.min(self.text.len())..];
        let end = rest
            .iter()
            .position(|b| matches!(b, b' ' | b'\t' | b'\n'))
            .unwrap_or(rest.len())
            .min(40);
        String::from_utf8_lossy(&rest[..end]).into_owned()
    }

    fn error(&self, from: usize, message: &str) -> Diagnostic {
        let near = self.near(from);
        if near.is_empty() {
            Diagnostic::at(&self.here(), message)
        } else {
            Diagnostic::at(&self.here(), format!("{message} near `{near}'"))
        }
    }

    /// The next token and the line it is on.
    fn next(&mut self) -> Result<(Token, u32), Diagnostic> {
        while let Some(b' ' | b'\t') = self.text.get(self.pos) {
            self.pos += 1;
        }
        let line = self.line;
        let start = self.pos;
        let Some(&c) = self.text.get(start) else {
            return Ok((Token::End, line));
        };
        let run = |pos: usize, ok: fn(u8) -> bool| {
            pos + self.text[pos..].iter().take_while(|&&b| ok(b)).count()
        };
        let token = match c {
            b'a'..=b'z' => {
                self.pos = run(
                    start + 1,
                    |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_'),
                );
                Token::Key(self.text_between(start, self.pos))
            }
            b'0'..=b'9' => {
                self.pos = run(start + 1, |b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'x'));
                Token::Number(self.text_between(start, self.pos))
            }
            b',' | b'[' | b']' | b'=' | b';' => {
                self.pos += 1;
                match c {
                    b',' => Token::Comma,
                    b'[' => Token::Open,
                    b']' => Token::Close,
                    b'=' => Token::Assign,
                    _ => Token::Semicolon,
                }
            }
            b'+' if self.text.get(start + 1) == Some(&b'=') => {
                self.pos += 2;
                Token::Append
            }
            b'\n' => {
                self.pos += 1;
                self.line += 1;
                Token::Newline
            }
            b'#' => {
                self.pos = run(start, |b| b != b'\n');
                if self.pos < self.text.len() {
                    self.pos += 1;
                    self.line += 1;
                }
                Token::Newline
            }
            b'"' | b'\'' => Token::Str(self.string(c)?),
            b'\r' => {
                return Err(self.error(
                    start,
                    "carriage return: DOS line endings are not accepted (xl refuses them too)",
                ))
            }
            b'A'..=b'Z' => {
                return Err(self.error(start, "keys are lowercase ([a-z][._0-9a-z]*)"));
            }
            b'+' | b'-' | b'.' | b'(' | b')' | b':' => {
                return Err(self.error(
                    start,
                    "lexical error (this looks like Python, which xl config files no longer are)",
                ));
            }
            _ => return Err(self.error(start, "lexical error")),
        };
        Ok((token, line))
    }

    fn text_between(&self, from: usize, to: usize) -> String {
        String::from_utf8_lossy(&self.text[from..to]).into_owned()
    }

    /// A quoted string starting at the quote under `pos`, unescaped.
    fn string(&mut self, quote: u8) -> Result<String, Diagnostic> {
        let start = self.pos;
        let mut out = Vec::new();
        let mut pos = start + 1;
        loop {
            match self.text.get(pos) {
                None | Some(b'\n') => {
                    return Err(self.error(
                        start,
                        "unterminated string (a string ends on the line it starts)",
                    ));
                }
                Some(&b) if b == quote => break,
                Some(b'\\') => {
                    let escaped = match self.text.get(pos + 1) {
                        None | Some(b'\n') => {
                            return Err(self
                                .error(start, "unterminated string (a backslash ends the line)"));
                        }
                        Some(&e @ (b'"' | b'\'' | b'\\')) => e,
                        Some(b'a') => 0x07,
                        Some(b'b') => 0x08,
                        Some(b'f') => 0x0c,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'v') => 0x0b,
                        Some(b'x' | b'0'..=b'7') => {
                            return Err(self.error(
                                pos,
                                "numeric escapes in strings are not supported \
                                 (xl refuses `\\x' escapes and drops octal ones)",
                            ));
                        }
                        Some(_) => {
                            return Err(self
                                .error(pos, "invalid character after backslash in quoted string"));
                        }
                    };
                    out.push(escaped);
                    pos += 2;
                }
                Some(&b) => {
                    out.push(b);
                    pos += 1;
                }
            }
        }
        self.pos = pos + 1;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    peeked: Option<(Token, u32)>,
}

impl Parser<'_> {
    fn next(&mut self) -> Result<(Token, u32), Diagnostic> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lexer.next(),
        }
    }

    fn peek(&mut self) -> Result<&Token, Diagnostic> {
        if self.peeked.is_none() {
            self.peeked = Some(self.lexer.next()?);
        }
        Ok(&self.peeked.as_ref().expect("just filled").0)
    }

    fn location(&self, line: u32) -> Location {
        Location {
            source: self.lexer.source.clone(),
            line,
        }
    }

    fn skip_newlines(&mut self) -> Result<(), Diagnostic> {
        while *self.peek()? == Token::Newline {
            self.next()?;
        }
        Ok(())
    }

    fn statements(&mut self) -> Result<Vec<Statement>, Diagnostic> {
        let mut out = Vec::new();
        loop {
            let (token, line) = self.next()?;
            let key = match token {
                Token::End => return Ok(out),
                Token::Newline | Token::Semicolon => continue,
                Token::Key(key) => key,
                other => {
                    return Err(Diagnostic::at(
                        &self.location(line),
                        format!(
                            "expected a setting (KEY = VALUE), found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            let append = match self.next()? {
                (Token::Assign, _) => false,
                (Token::Append, _) => true,
                (other, line) => {
                    return Err(Diagnostic::at(
                        &self.location(line),
                        format!("expected `=' after `{key}', found {}", other.describe()),
                    ))
                }
            };
            let value = self.value(&key, 0)?;
            out.push(Statement {
                key: key.clone(),
                append,
                location: self.location(line),
                value,
            });
            match self.next()? {
                (Token::End, _) => return Ok(out),
                (Token::Newline | Token::Semicolon, _) => {}
                (other, line) => {
                    return Err(Diagnostic::at(
                        &self.location(line),
                        format!(
                            "expected a new line or `;' after the value of `{key}', found {}",
                            other.describe()
                        ),
                    ))
                }
            }
        }
    }

    fn value(&mut self, key: &str, depth: usize) -> Result<Value, Diagnostic> {
        let (token, line) = self.next()?;
        let location = self.location(line);
        let kind = match token {
            Token::Str(s) => ValueKind::String(s),
            Token::Number(n) => ValueKind::Number(n),
            Token::Open => {
                if depth >= MAX_LIST_DEPTH {
                    return Err(Diagnostic::at(
                        &location,
                        format!("`{key}': lists nested more than {MAX_LIST_DEPTH} deep"),
                    ));
                }
                ValueKind::List(self.list_items(key, depth, &location)?)
            }
            Token::Key(word) => {
                return Err(Diagnostic::at(
                    &location,
                    format!(
                        "`{key}': bare word `{word}' is not a value; quote strings: \"{word}\""
                    ),
                ))
            }
            other => {
                return Err(Diagnostic::at(
                    &location,
                    format!(
                        "`{key}': expected a value (\"string\", number or [list]), found {}",
                        other.describe()
                    ),
                ))
            }
        };
        Ok(Value { kind, location })
    }

    /// The items after a `[`, up to and with the `]`.
    fn list_items(
        &mut self,
        key: &str,
        depth: usize,
        open: &Location,
    ) -> Result<Vec<Value>, Diagnostic> {
        let mut items = Vec::new();
        self.skip_newlines()?;
        if *self.peek()? == Token::Close {
            self.next()?;
            return Ok(items);
        }
        loop {
            if *self.peek()? == Token::End {
                return Err(unterminated_list(key, open));
            }
            items.push(self.value(key, depth + 1)?);
            self.skip_newlines()?;
            match self.next()? {
                (Token::Close, _) => return Ok(items),
                (Token::Comma, _) => {
                    self.skip_newlines()?;
                    if *self.peek()? == Token::Close {
                        self.next()?;
                        return Ok(items);
                    }
                }
                (Token::End, _) => return Err(unterminated_list(key, open)),
                (other, line) => {
                    return Err(Diagnostic::at(
                        &self.location(line),
                        format!(
                            "`{key}': expected `,' or `]' in the list, found {}",
                            other.describe()
                        ),
                    ))
                }
            }
        }
    }
}

fn unterminated_list(key: &str, open: &Location) -> Diagnostic {
    Diagnostic::at(
        open,
        format!("`{key}': the list opened here has no closing `]'"),
    )
}

fn parse_statements(source: &Arc<str>, text: &[u8]) -> Result<Vec<Statement>, Diagnostic> {
    if let Err(e) = std::str::from_utf8(text) {
        let line = 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        return Err(Diagnostic::at(
            &Location {
                source: source.clone(),
                line: u32::try_from(line).unwrap_or(u32::MAX),
            },
            "the text is not UTF-8",
        ));
    }
    let mut parser = Parser {
        lexer: Lexer {
            text,
            pos: 0,
            line: 1,
            source: source.clone(),
        },
        peeked: None,
    };
    parser.statements()
}

#[cfg(test)]
mod tests;
