//! Format-preserving edits of the fleet directory (toml_edit): the one place that changes
//! desired state on disk for the operator's commands (`cortex cordon`, `drain`, `uncordon`,
//! `pin`, `unpin`). Comments, blank lines, key order and inline tables survive; only the edited
//! key changes. The daemon never writes fleet files: this is for commands a person runs.
//!
//! Use: [`FleetEditor::open`] a directory (a fleet with errors is refused: nothing is edited
//! on top of a mistake), find a [`Declaration`] with [`FleetEditor::declaration`]
//! (`[[neuron]]` by `name`, `[[model]]` by `id`, in whichever file declares it, written as a
//! header or as an inline table), change its keys, check the result with
//! [`FleetEditor::validate`], show [`FleetEditor::diff`], and [`FleetEditor::write`] the
//! changed files (each atomically replaced). New declarations (`cortex key new`) are appended
//! with [`FleetEditor::append`]: a new table at the end of one file, the rest of it untouched.

use std::path::Path;

use plans::fleet::{Fleet, FleetLoad};
use similar::TextDiff;
use toml_edit::{Array, ArrayOfTables, DocumentMut, Item, Table, TableLike, Value};

/// Why the fleet directory cannot be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read the fleet directory {dir}: {message}")]
    Read { dir: String, message: String },
    /// The fleet as found on disk has errors (the diagnostics say where).
    #[error("the fleet in {dir} has {errors} error(s); fix them first (nothing was changed)")]
    Invalid { dir: String, errors: usize, load: Box<FleetLoad> },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    /// A table cannot be appended where it was asked to go.
    #[error("{0}")]
    Append(String),
}

/// One fleet file: its text as read and the document being edited.
struct FleetFile {
    path: String,
    original: String,
    document: DocumentMut,
}

/// The fleet directory's files, open for editing.
pub struct FleetEditor {
    files: Vec<FleetFile>,
    fleet: Fleet,
}

impl FleetEditor {
    /// Read and validate every fleet file of `dir`. A fleet with errors is refused.
    pub fn open(dir: &Path) -> Result<FleetEditor, EditError> {
        let describe = || dir.display().to_string();
        let texts = crate::control::fleetdir::read_dir(dir)
            .map_err(|e| EditError::Read { dir: describe(), message: format!("{e:#}") })?;
        let load = plans::fleet::load(&texts);
        let Some(fleet) = load.fleet.clone() else {
            let errors = load.diagnostics.iter().filter(|d| d.is_error()).count();
            return Err(EditError::Invalid { dir: describe(), errors, load: Box::new(load) });
        };
        let mut files = Vec::with_capacity(texts.len());
        for (path, text) in texts {
            // The loader accepted every file, so each parses.
            let document = text.parse::<DocumentMut>().map_err(|e| EditError::Read {
                dir: describe(),
                message: format!("{path}: {}", e.message()),
            })?;
            files.push(FleetFile { path, original: text, document });
        }
        Ok(FleetEditor { files, fleet })
    }

    /// The fleet as it was read (validated).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The `[[kind]]` declaration whose `key` is `value` (e.g. `[[neuron]]` with `name =
    /// "beast"`), in whichever file declares it, written as a header or as an inline table.
    pub fn declaration(&mut self, kind: &str, key: &str, value: &str) -> Option<Declaration<'_>> {
        for file in &mut self.files {
            let Some(item) = file.document.as_table_mut().get_mut(kind) else { continue };
            let found: Option<(&mut dyn TableLike, bool)> = match item {
                Item::ArrayOfTables(tables) => tables
                    .iter_mut()
                    .find(|t| t.get(key).and_then(Item::as_str) == Some(value))
                    .map(|t| (t as &mut dyn TableLike, false)),
                Item::Value(Value::Array(array)) => array
                    .iter_mut()
                    .filter_map(Value::as_inline_table_mut)
                    .find(|t| t.get(key).and_then(Value::as_str) == Some(value))
                    .map(|t| (t as &mut dyn TableLike, true)),
                _ => None,
            };
            if let Some((table, inline)) = found {
                return Some(Declaration {
                    #[cfg(test)]
                    path: file.path.as_str(),
                    table,
                    inline,
                });
            }
        }
        None
    }

    /// The file that declares the first `[[kind]]` table (as a header or inline), if any.
    pub fn file_declaring(&self, kind: &str) -> Option<&str> {
        self.files.iter().find(|f| f.document.as_table().contains_key(kind)).map(|f| f.path.as_str())
    }

    /// Append `table` as a new `[[kind]]` at the end of the fleet file `path` (a new file when
    /// the directory has none by that path), after a blank line and the `comment` lines, so
    /// that the diff is the added table alone. Refused when the file writes its `kind` tables
    /// as an inline array (`key = [{ ... }]`), which one more header would contradict.
    pub fn append(
        &mut self,
        path: &str,
        kind: &str,
        mut table: Table,
        comment: &str,
    ) -> Result<(), EditError> {
        if !self.files.iter().any(|f| f.path == path) {
            self.files.push(FleetFile {
                path: path.to_owned(),
                original: String::new(),
                document: DocumentMut::new(),
            });
            self.files.sort_by(|a, b| a.path.cmp(&b.path));
        }
        let Some(file) = self.files.iter_mut().find(|f| f.path == path) else {
            return Err(EditError::Append(format!("{path} is not a fleet file")));
        };
        let last = last_position(&file.document);
        let text_so_far = file.document.to_string();
        let blank = if text_so_far.is_empty() || text_so_far.ends_with("\n\n") { "" } else { "\n" };
        let newline = if text_so_far.is_empty() || text_so_far.ends_with('\n') { "" } else { "\n" };
        let comments: String = comment.lines().map(|line| format!("# {line}\n")).collect();
        // What follows the last table (comments at the end of the file) stays before the new one.
        let trailing = file.document.trailing().as_str().unwrap_or_default().to_owned();
        file.document.set_trailing("");
        table.decor_mut().set_prefix(format!("{trailing}{newline}{blank}{comments}"));
        table.set_position(Some(last + 1));
        let root = file.document.as_table_mut();
        match root.entry(kind).or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new())) {
            Item::ArrayOfTables(tables) => {
                tables.push(table);
                Ok(())
            }
            _ => Err(EditError::Append(format!(
                "{path} writes its {kind} tables as an inline array ({kind} = [{{ ... }}]); add the new one there by hand, or choose another file"
            ))),
        }
    }

    /// The files as edited, as `(path, text)`, sorted by path.
    pub fn texts(&self) -> Vec<(String, String)> {
        self.files.iter().map(|f| (f.path.clone(), f.document.to_string())).collect()
    }

    /// Load the edited files: the caller refuses to write a fleet with errors.
    pub fn validate(&self) -> FleetLoad {
        plans::fleet::load(&self.texts())
    }

    /// The files whose text changed, as `(path, before, after)`.
    pub fn changed(&self) -> Vec<(&str, &str, String)> {
        self.files
            .iter()
            .map(|f| (f.path.as_str(), f.original.as_str(), f.document.to_string()))
            .filter(|(_, before, after)| before != after)
            .collect()
    }

    /// A unified diff of the changed files (`git diff` style headers), empty when nothing changed.
    pub fn diff(&self) -> String {
        let mut out = String::new();
        for (path, before, after) in self.changed() {
            let diff = TextDiff::from_lines(before, after);
            let unified = diff
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("a/{}", path.trim_start_matches('/')),
                    &format!("b/{}", path.trim_start_matches('/')),
                )
                .to_string();
            out.push_str(&unified);
        }
        out
    }

    /// Replace each changed file atomically (a temporary file in the same directory, renamed
    /// over it, with the original's permissions); returns their paths.
    pub fn write(&self) -> Result<Vec<String>, EditError> {
        let mut written = Vec::new();
        for (path, _, after) in self.changed() {
            write_atomic(Path::new(path), &after)
                .map_err(|source| EditError::Write { path: path.to_owned(), source })?;
            written.push(path.to_owned());
        }
        Ok(written)
    }
}

/// The highest position of any table in `document` (0 for none): a table after it is written last.
fn last_position(document: &DocumentMut) -> isize {
    fn walk(table: &Table, last: &mut isize) {
        *last = (*last).max(table.position().unwrap_or(0));
        for (_, item) in table.iter() {
            match item {
                Item::Table(inner) => walk(inner, last),
                Item::ArrayOfTables(tables) => tables.iter().for_each(|inner| walk(inner, last)),
                _ => {}
            }
        }
    }
    let mut last = 0;
    walk(document.as_table(), &mut last);
    last
}

/// Write `text` over `path` through a hidden temporary file next to it (the fleet reader and
/// watcher skip hidden files), keeping the original's permissions.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.cortex-edit"));
    std::fs::write(&temporary, text)?;
    if let Ok(metadata) = std::fs::metadata(path) {
        std::fs::set_permissions(&temporary, metadata.permissions())?;
    }
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

/// One `[[kind]]` table of a fleet file, found by [`FleetEditor::declaration`].
pub struct Declaration<'d> {
    /// The file that declares it.
    #[cfg(test)]
    pub path: &'d str,
    table: &'d mut dyn TableLike,
    /// Written as `{ ... }` inside an array rather than under a `[[kind]]` header.
    inline: bool,
}

impl Declaration<'_> {
    /// Set `key` to the string `value`, keeping the decor (spacing, a trailing comment) of the
    /// value it replaces; a new key goes after the table's last key.
    pub fn set_string(&mut self, key: &str, value: &str) {
        self.set_value(key, Value::from(value));
    }

    /// Set `key` to `value`, as [`Declaration::set_string`] does.
    pub fn set_value(&mut self, key: &str, value: Value) {
        let mut new = value;
        if let Some(old) = self.table.get_mut(key).and_then(Item::as_value_mut) {
            *new.decor_mut() = old.decor().clone();
            *old = new;
            return;
        }
        // In `{ a = 1 }` the space before `}` is the last value's: it moves to the new last one.
        let closing = self.inline.then(|| self.last_value_mut().map(take_suffix)).flatten();
        self.table.insert(key, Item::Value(new));
        if let (Some(suffix), Some(last)) = (closing, self.last_value_mut()) {
            last.decor_mut().set_suffix(suffix);
        }
    }

    /// Remove `key` (and the comment lines written above it); whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let was_last = self.table.iter().last().is_some_and(|(last, _)| last == key);
        let Some(removed) = self.table.remove(key) else { return false };
        if self.inline && was_last {
            let closing = removed.as_value().and_then(|v| v.decor().suffix().cloned());
            if let (Some(suffix), Some(last)) = (closing, self.last_value_mut()) {
                last.decor_mut().set_suffix(suffix);
            }
        }
        true
    }

    /// The array of strings at `key`, created empty (`key = []`) when absent. `None` when
    /// `key` holds something else (the loader would have refused that fleet).
    pub fn string_array_mut(&mut self, key: &str) -> Option<&mut Array> {
        if self.table.get(key).is_none() {
            self.set_array(key);
        }
        self.table.get_mut(key).and_then(Item::as_value_mut).and_then(Value::as_array_mut)
    }

    fn set_array(&mut self, key: &str) {
        let closing = self.inline.then(|| self.last_value_mut().map(take_suffix)).flatten();
        self.table.insert(key, Item::Value(Value::Array(Array::new())));
        if let (Some(suffix), Some(last)) = (closing, self.last_value_mut()) {
            last.decor_mut().set_suffix(suffix);
        }
    }

    fn last_value_mut(&mut self) -> Option<&mut Value> {
        self.table.iter_mut().last().and_then(|(_, item)| item.as_value_mut())
    }
}

/// The value's suffix decor, left empty.
fn take_suffix(value: &mut Value) -> toml_edit::RawString {
    let suffix = value.decor().suffix().cloned().unwrap_or_default();
    value.decor_mut().set_suffix("");
    suffix
}

/// Append `value` to `array`, spaced like the elements already there: one per line stays one
/// per line, `["a", "b"]` stays on one line.
pub fn push_string(array: &mut Array, value: &str) {
    let multi_line =
        |v: &Value| v.decor().prefix().and_then(|p| p.as_str()).is_some_and(|p| p.contains('\n'));
    let decor = match array.len() {
        0 => None,
        1 => array.get(0).filter(|v| multi_line(v)).map(|v| v.decor().clone()),
        _ => array.iter().last().map(|last| last.decor().clone()),
    };
    array.push(value);
    if let (Some(decor), Some(new)) = (decor, array.iter_mut().last()) {
        *new.decor_mut() = decor;
    }
}

/// Remove every element equal to `value`; whether one was there. The first element left keeps
/// the spacing the removed first element had.
pub fn remove_string(array: &mut Array, value: &str) -> bool {
    let Some(index) = array.iter().position(|v| v.as_str() == Some(value)) else { return false };
    let first_decor = array.get(0).map(|v| v.decor().clone());
    array.remove(index);
    if index == 0
        && let (Some(decor), Some(first)) = (first_decor, array.get_mut(0))
    {
        *first.decor_mut() = decor;
    }
    remove_string(array, value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"# The fleet of the lab.

# The big box under the desk.
[[neuron]]
name = "beast"   # pins use this name
endpoint = "http://beast.internal:13131"
labels = { tier = "large" }

# The small one.
[[neuron]]
name = "quad"
endpoint = "http://quad.internal:13131"
"#;

    /// A fleet directory with `files`, opened.
    fn open(files: &[(&str, &str)]) -> (tempfile::TempDir, FleetEditor) {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let editor = FleetEditor::open(dir.path()).expect("a valid fleet");
        (dir, editor)
    }

    #[test]
    fn an_invalid_fleet_is_refused_with_its_diagnostics() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("fleet.toml"), "[[neuron]]\nname = \"beast\"\nstate = \"away\"\n")
            .expect("write");
        let Err(EditError::Invalid { load, errors, .. }) = FleetEditor::open(dir.path()) else {
            panic!("an invalid fleet must be refused")
        };
        assert_eq!(errors, 2);
        let first = load.diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert!(first.contains("fleet.toml:3:9: error: state must be"), "{first}");
        assert!(first.contains("fleet.toml:1:1: error: missing required key \"endpoint\""), "{first}");
    }

    #[test]
    fn setting_and_removing_a_key_keeps_everything_else() {
        let fleet = FLEET;
        let (_dir, mut editor) = open(&[("a.toml", fleet)]);
        let mut beast = editor.declaration("neuron", "name", "beast").expect("beast");
        assert!(beast.path.ends_with("a.toml"));
        beast.set_string("state", "cordoned");
        let after = editor.texts()[0].1.clone();
        assert_eq!(
            after,
            fleet.replace(
                "labels = { tier = \"large\" }\n",
                "labels = { tier = \"large\" }\nstate = \"cordoned\"\n"
            )
        );
        editor.declaration("neuron", "name", "beast").expect("beast").set_string("state", "draining");
        assert_eq!(editor.texts()[0].1, after.replace("cordoned", "draining"));
        assert!(editor.declaration("neuron", "name", "beast").expect("beast").remove("state"));
        assert_eq!(editor.texts()[0].1, fleet, "back to the very same text");
        assert!(editor.changed().is_empty());
    }

    #[test]
    fn a_replaced_value_keeps_its_comment() {
        let text =
            "[[neuron]]\nname = \"beast\"\nendpoint = \"http://b:1\"\nstate = \"cordoned\"   # new PSU\n";
        let (_dir, mut editor) = open(&[("a.toml", text)]);
        editor.declaration("neuron", "name", "beast").expect("beast").set_string("state", "draining");
        assert_eq!(editor.texts()[0].1, text.replace("\"cordoned\"", "\"draining\""));
    }

    #[test]
    fn inline_tables_are_edited_in_place() {
        let text = "neuron = [\n  { name = \"a\", endpoint = \"http://a:1\" },\n  { name = \"b\", endpoint = \"http://b:1\" },\n]\n";
        let (_dir, mut editor) = open(&[("a.toml", text)]);
        editor.declaration("neuron", "name", "b").expect("b").set_string("state", "draining");
        expect_test::expect![[r#"
            neuron = [
              { name = "a", endpoint = "http://a:1" },
              { name = "b", endpoint = "http://b:1", state = "draining" },
            ]
        "#]]
        .assert_eq(&editor.texts()[0].1);
        assert!(editor.declaration("neuron", "name", "b").expect("b").remove("state"));
        assert_eq!(editor.texts()[0].1, text, "back to the very same text");
    }

    #[test]
    fn arrays_keep_their_layout() {
        let text = r#"[[neuron]]
name = "a"
endpoint = "http://a:1"

[[neuron]]
name = "b"
endpoint = "http://b:1"

[[model]]
id = "one"   # the first
harness = "sim"
source = "one.gguf"
pinned_on = ["a"]  # keep it hot

[[model]]
id = "two"
harness = "sim"
source = "two.gguf"
pinned_on = [
    "a",
]
"#;
        let (_dir, mut editor) = open(&[("models.toml", text)]);
        for id in ["one", "two"] {
            let mut model = editor.declaration("model", "id", id).expect("model");
            push_string(model.string_array_mut("pinned_on").expect("array"), "b");
        }
        let pinned = editor.texts()[0].1.clone();
        // (expect-test cannot hold the blank context line's single space)
        let diff: Vec<String> = editor.diff().lines().map(|l| format!("{}\n", l.trim_end())).collect();
        expect_test::expect![[r#"
            --- a/MODELS
            +++ b/MODELS
            @@ -10,7 +10,7 @@
             id = "one"   # the first
             harness = "sim"
             source = "one.gguf"
            -pinned_on = ["a"]  # keep it hot
            +pinned_on = ["a", "b"]  # keep it hot
 
             [[model]]
             id = "two"
            @@ -18,4 +18,5 @@
             source = "two.gguf"
             pinned_on = [
                 "a",
            +    "b",
             ]
        "#]]
        .assert_eq(&diff.concat().replace(editor.texts()[0].0.trim_start_matches('/'), "MODELS"));
        for id in ["one", "two"] {
            let mut model = editor.declaration("model", "id", id).expect("model");
            assert!(remove_string(model.string_array_mut("pinned_on").expect("array"), "a"));
        }
        expect_test::expect![[r#"
            pinned_on = ["b"]  # keep it hot
            pinned_on = [
                "b",
            ]
        "#]]
        .assert_eq(&pins(&editor.texts()[0].1));
        assert_ne!(pinned, editor.texts()[0].1);
    }

    /// The `pinned_on` lines of a fleet file.
    fn pins(text: &str) -> String {
        let mut out = String::new();
        let mut inside = false;
        for line in text.lines() {
            if line.starts_with("pinned_on") || inside {
                out.push_str(line);
                out.push('\n');
                inside = line.ends_with('[') || (inside && line != "]");
            }
        }
        out
    }

    #[test]
    fn an_appended_table_is_the_only_change_to_a_commented_file() {
        let text = "# Keys of the lab.\n\n[[key]]   # Alice's laptop\nname = \"alice\"\nsha256 = \"214a711fea74e1c80faa8536375c89900a4727019e7ea983c6c48cd87c69687d\"  # rotated in May\n\n# the end\n";
        let (_dir, mut editor) = open(&[("keys.toml", text)]);
        let path = editor.file_declaring("key").expect("keys.toml declares keys").to_owned();
        let mut table = Table::new();
        table.insert("name", toml_edit::value("bob"));
        table.insert(
            "sha256",
            toml_edit::value("f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f"),
        );
        editor.append(&path, "key", table, "bob: made by cortex key new").expect("appended");
        let after = &editor.texts()[0].1;
        assert_eq!(
            after,
            &format!(
                "{text}\n# bob: made by cortex key new\n[[key]]\nname = \"bob\"\nsha256 = \"f62616b17bdd474b5411c5e2973b41f103341e1e3db479fbcb738f6f76373d8f\"\n"
            ),
            "everything before is kept byte for byte"
        );
        assert!(editor.validate().fleet.is_some_and(|fleet| fleet.keys.len() == 2));
        // A directory without keys gets a new file.
        let (dir, mut editor) = open(&[("fleet.toml", "[policy]\nprune = true\n")]);
        let new = dir.path().join("keys.toml").display().to_string();
        let mut table = Table::new();
        table.insert("name", toml_edit::value("carol"));
        table.insert(
            "sha256",
            toml_edit::value("0000000000000000000000000000000000000000000000000000000000000000"),
        );
        editor.append(&new, "key", table, "carol").expect("appended");
        editor.write().expect("written");
        assert_eq!(
            std::fs::read_to_string(&new).expect("new file"),
            "# carol\n[[key]]\nname = \"carol\"\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n"
        );
    }

    #[test]
    fn a_declaration_is_found_in_whichever_file_holds_it_and_only_that_file_is_written() {
        let (dir, mut editor) = open(&[
            ("a.toml", "[[neuron]]\nname = \"a\"\nendpoint = \"http://a:1\"\n"),
            ("b.toml", "# b's file\n[[neuron]]\nname = \"b\"\nendpoint = \"http://b:1\"\n"),
        ]);
        assert!(editor.declaration("neuron", "name", "nobody").is_none());
        let mut b = editor.declaration("neuron", "name", "b").expect("b");
        assert!(b.path.ends_with("b.toml"), "{}", b.path);
        b.set_string("state", "cordoned");
        assert!(editor.validate().fleet.is_some());
        let before = std::fs::metadata(dir.path().join("a.toml")).expect("a").modified().expect("mtime");
        let written = editor.write().expect("written");
        assert_eq!(written.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("b.toml")).expect("b"),
            "# b's file\n[[neuron]]\nname = \"b\"\nendpoint = \"http://b:1\"\nstate = \"cordoned\"\n"
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("a.toml")).expect("a").modified().expect("mtime"),
            before
        );
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary file is left: {leftovers:?}");
    }
}
