//! Where a config file went wrong, or what in it Keel ignores: one type for errors and warnings,
//! printed as xl prints its own (`SOURCE:LINE: MESSAGE`).

use std::fmt;
use std::sync::Arc;

/// A place in a config source: the file's name (or `command line `ARG'` for an override) and
/// a line, counted from 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file name as given, or a description of a command-line override.
    pub source: Arc<str>,
    /// The line, from 1.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// An error or a warning about a config: where (as precisely as known) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or override) it is about.
    pub source: Arc<str>,
    /// The line, when one line is to blame.
    pub line: Option<u32>,
    /// What is wrong, naming the key where there is one.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic about one line.
    pub fn at(location: &Location, message: impl Into<String>) -> Self {
        Diagnostic {
            source: location.source.clone(),
            line: Some(location.line),
            message: message.into(),
        }
    }

    /// A diagnostic about a whole source (a missing key, an unreadable file).
    pub fn whole(source: &Arc<str>, message: impl Into<String>) -> Self {
        Diagnostic {
            source: source.clone(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.source, line, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for Diagnostic {}
