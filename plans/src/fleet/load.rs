//! Reading `fleet/*.toml` into a validated [`Fleet`], with `path:line:col` diagnostics.
//!
//! The work happens in three steps, each in its own file: [`fields`] reads typed values out of a
//! TOML table and reports type errors; [`decode`] turns each file's tables into declarations and
//! checks what one declaration can check alone; [`checks`] merges the declarations of every file
//! and checks what needs all of them (duplicate names, references, counts). Every step keeps
//! going after a problem, so one run reports every mistake in every file.
//! docs/fleet-format.md is the operator's reference for the rules enforced here.

mod checks;
mod decode;
mod decode_contention;
mod decode_key;
mod decode_model;
mod fields;

#[cfg(test)]
mod key_tests;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256};

use crate::diagnostic::{Diagnostic, Severity, line_col};
use crate::fleet::{Fleet, Origin};

/// The result of loading a fleet directory: the fleet when there were no errors, and every
/// diagnostic (errors and warnings), sorted by path, line and column.
#[derive(Clone, Debug)]
pub struct FleetLoad {
    pub fleet: Option<Fleet>,
    pub diagnostics: Vec<Diagnostic>,
}

impl FleetLoad {
    /// Whether any diagnostic is an error (then `fleet` is `None`).
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Load and validate the files of a fleet directory, given as `(path, text)` pairs (every
/// `*.toml` file; the order does not matter, they are sorted by path here).
pub fn load(files: &[(String, String)]) -> FleetLoad {
    let mut sorted: Vec<(&str, &str)> =
        files.iter().map(|(path, text)| (path.as_str(), text.as_str())).collect();
    sorted.sort();
    let mut sink = Sink::default();
    let mut declarations = decode::Declarations::default();
    for &(path, text) in &sorted {
        decode::file(path, text, &mut declarations, &mut sink);
    }
    let fleet = checks::merge(declarations, digest(&sorted), &mut sink);
    let mut diagnostics = sink.diagnostics;
    diagnostics.sort();
    diagnostics.dedup();
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    FleetLoad { fleet: if has_errors { None } else { Some(fleet) }, diagnostics }
}

/// `sha256:<hex>` over the files sorted by path, each as its path, a 0 byte, its text, a 0 byte.
/// The 0 bytes keep `("a", "bc")` and `("ab", "c")` apart (neither paths nor TOML hold a NUL).
/// Paths count from the files' common directory, so that the same fleet has the same digest
/// however its directory is named (`fleet`, `./fleet`, `/srv/fleet`): a plan saved from one
/// working directory is not stale in another.
fn digest(sorted: &[(&str, &str)]) -> String {
    let common = common_dir(sorted.iter().map(|(path, _)| *path));
    let mut hasher = Sha256::new();
    for (path, text) in sorted {
        hasher.update(path.get(common..).unwrap_or(path).as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let hex: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// The length of the longest directory prefix (up to and including a `/`) all `paths` share.
fn common_dir<'a>(mut paths: impl Iterator<Item = &'a str>) -> usize {
    let Some(first) = paths.next() else { return 0 };
    let mut common = first.rfind('/').map_or(0, |at| at + 1);
    for path in paths {
        let same = first.bytes().zip(path.bytes()).take(common).take_while(|(a, b)| a == b).count();
        common = first[..same].rfind('/').map_or(0, |at| at + 1);
    }
    common
}

/// A place in one file: where a diagnostic points and where a declaration came from.
#[derive(Clone, Copy, Debug)]
struct Site<'a> {
    path: &'a str,
    text: &'a str,
    offset: usize,
}

impl<'a> Site<'a> {
    fn new(path: &'a str, text: &'a str, offset: usize) -> Self {
        Site { path, text, offset }
    }

    /// Another place in the same file.
    fn at(self, offset: usize) -> Self {
        Site { offset, ..self }
    }

    fn origin(self) -> Origin {
        let (line, column) = line_col(self.text, self.offset);
        Origin { path: self.path.to_owned(), line, column }
    }

    /// `path:line:col`, for messages that point at a second place ("first declared at ...").
    fn describe(self) -> String {
        let (line, column) = line_col(self.text, self.offset);
        format!("{}:{line}:{column}", self.path)
    }
}

/// A value and the place it was written.
#[derive(Clone, Debug)]
struct Located<'a, T> {
    value: T,
    at: Site<'a>,
}

/// Collects diagnostics; every step of loading writes here and carries on.
#[derive(Default)]
struct Sink {
    diagnostics: Vec<Diagnostic>,
}

impl Sink {
    fn error(&mut self, at: Site<'_>, message: impl Into<String>) {
        self.push(at, Severity::Error, message);
    }

    fn warning(&mut self, at: Site<'_>, message: impl Into<String>) {
        self.push(at, Severity::Warning, message);
    }

    fn push(&mut self, at: Site<'_>, severity: Severity, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::at(at.path, at.text, at.offset, severity, message));
    }
}
