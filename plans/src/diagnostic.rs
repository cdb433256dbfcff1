//! Diagnostics: what is wrong with a user's input, located as `path:line:col`.

use std::fmt;

/// How bad a diagnostic is. Errors make a fleet unusable; warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about one place in one file. Lines and columns count from 1; the column counts
/// characters, not bytes, the way editors show them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub path: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic at byte offset `offset` of `text` (the content of `path`).
    pub fn at(path: &str, text: &str, offset: usize, severity: Severity, message: impl Into<String>) -> Self {
        let (line, column) = line_col(text, offset);
        Diagnostic { path: path.to_owned(), line, column, severity, message: message.into() }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}:{}:{}: {}: {}", self.path, self.line, self.column, severity, self.message)
    }
}

/// 1-based line and character column of byte `offset` in `text` (clamped to the text).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_and_in_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // 'é' is two bytes; the '=' after "bé " is the 4th character of line 2.
        assert_eq!(line_col(text, 6 + "bé ".len()), (2, 4));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }
}
