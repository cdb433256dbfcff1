//! Typed reads of one TOML table's keys, reporting unknown keys and wrong types as diagnostics.
//!
//! Each read returns `None` (after reporting) when the key is absent or its value is unusable,
//! so callers fall back to the default and the load goes on to find the next mistake.

use std::collections::BTreeMap;

use toml_edit::{Datetime, Item, Offset, TableLike, Value};

use crate::fleet::keys;
use crate::fleet::load::{Located, Sink, Site};

/// The keys of one table (`[policy]`, one `[[neuron]]` or one `[[model]]`) being read.
pub(super) struct Fields<'a, 'd, 's> {
    table: &'d dyn TableLike,
    /// How the table is written, for messages: `[[model]]`.
    header: &'static str,
    /// Where the table starts: its header, or the `{` of an inline table.
    at: Site<'a>,
    sink: &'s mut Sink,
}

impl<'a, 'd, 's> Fields<'a, 'd, 's> {
    /// Starts reading `table`, reporting every key that is not in `allowed`.
    pub(super) fn new(
        table: &'d dyn TableLike,
        header: &'static str,
        at: Site<'a>,
        allowed: &[&str],
        sink: &'s mut Sink,
    ) -> Self {
        for (key, _) in table.iter() {
            if !allowed.contains(&key) {
                let key_at = table.key(key).and_then(|k| k.span()).map_or(at, |span| at.at(span.start));
                sink.error(
                    key_at,
                    format!("unknown key {key:?} in {header}; expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Fields { table, header, at, sink }
    }

    /// The diagnostics sink, for checks on the values read.
    pub(super) fn sink(&mut self) -> &mut Sink {
        self.sink
    }

    /// The value of `key` and where it was written.
    pub(super) fn item(&self, key: &str) -> Option<(&'d Item, Site<'a>)> {
        let (key_repr, item) = self.table.get_key_value(key)?;
        let offset = item.span().or_else(|| key_repr.span()).map(|span| span.start);
        Some((item, offset.map_or(self.at, |offset| self.at.at(offset))))
    }

    /// A string that must be there: its absence is reported at the table's start.
    pub(super) fn required_string(&mut self, key: &str) -> Option<Located<'a, String>> {
        if self.table.get(key).is_none() {
            let header = self.header;
            self.sink.error(self.at, format!("missing required key {key:?} in {header}"));
        }
        self.string(key)
    }

    pub(super) fn string(&mut self, key: &str) -> Option<Located<'a, String>> {
        let (item, at) = self.item(key)?;
        match item.as_str() {
            Some(value) => Some(Located { value: value.to_owned(), at }),
            None => {
                self.sink.error(at, format!("{key} must be a string, found {}", item.type_name()));
                None
            }
        }
    }

    pub(super) fn bool(&mut self, key: &str) -> Option<bool> {
        let (item, at) = self.item(key)?;
        let value = item.as_bool();
        if value.is_none() {
            self.sink.error(at, format!("{key} must be true or false, found {}", item.type_name()));
        }
        value
    }

    /// Any integer (TOML integers are 64-bit signed).
    pub(super) fn integer(&mut self, key: &str) -> Option<Located<'a, i64>> {
        let (item, at) = self.item(key)?;
        match item.as_integer() {
            Some(value) => Some(Located { value, at }),
            None => {
                self.sink.error(at, format!("{key} must be an integer, found {}", item.type_name()));
                None
            }
        }
    }

    /// A non-negative integer.
    pub(super) fn unsigned(&mut self, key: &str) -> Option<Located<'a, u64>> {
        let (item, at) = self.item(key)?;
        let Some(value) = item.as_integer() else {
            let found = item.type_name();
            self.sink.error(at, format!("{key} must be a non-negative integer, found {found}"));
            return None;
        };
        match u64::try_from(value) {
            Ok(value) => Some(Located { value, at }),
            Err(_) => {
                self.sink.error(at, format!("{key} must be a non-negative integer, found {value}"));
                None
            }
        }
    }

    /// A non-negative integer that fits 32 bits (counts, context sizes).
    pub(super) fn unsigned32(&mut self, key: &str) -> Option<Located<'a, u32>> {
        let Located { value, at } = self.unsigned(key)?;
        match u32::try_from(value) {
            Ok(value) => Some(Located { value, at }),
            Err(_) => {
                self.sink.error(at, format!("{key} must be at most {}, found {value}", u32::MAX));
                None
            }
        }
    }

    /// A TOML date or date-time (`2026-12-31`, `2026-12-31T18:00:00Z`) as Unix milliseconds;
    /// a date means its first moment, and a time without an offset is UTC.
    pub(super) fn moment(&mut self, key: &str) -> Option<Located<'a, u64>> {
        let (item, at) = self.item(key)?;
        let moment = item.as_datetime().and_then(unix_ms_of);
        if moment.is_none() {
            let found = item.as_datetime().map_or_else(|| item.type_name().to_owned(), ToString::to_string);
            self.sink.error(
                at,
                format!(
                    "{key} must be a date like 2026-12-31 or a date-time like 2026-12-31T18:00:00Z \
                     (unquoted), after 1970, found {found}"
                ),
            );
        }
        moment.map(|value| Located { value, at })
    }

    /// One of a fixed set of strings, such as `eviction = "lru"`.
    pub(super) fn choice<T: Copy>(&mut self, key: &str, choices: &[(&str, T)]) -> Option<T> {
        let (item, at) = self.item(key)?;
        let found = match item.as_str() {
            Some(value) => {
                if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == value) {
                    return Some(*choice);
                }
                format!("{value:?}")
            }
            None => item.type_name().to_owned(),
        };
        let names: Vec<String> = choices.iter().map(|(name, _)| format!("{name:?}")).collect();
        self.sink.error(at, format!("{key} must be {}, found {found}", one_of(&names)));
        None
    }

    /// An array of strings; each element keeps its own place for later messages.
    pub(super) fn strings(&mut self, key: &str) -> Option<Vec<Located<'a, String>>> {
        let (item, at) = self.item(key)?;
        let Some(array) = item.as_array() else {
            let found = item.type_name();
            self.sink.error(at, format!("{key} must be an array of strings, found {found}"));
            return None;
        };
        let mut strings = Vec::new();
        for (index, element) in array.iter().enumerate() {
            let element_at = value_site(element, at);
            match element.as_str() {
                Some(value) => strings.push(Located { value: value.to_owned(), at: element_at }),
                None => {
                    let found = element.type_name();
                    self.sink.error(element_at, format!("{key}[{index}] must be a string, found {found}"));
                }
            }
        }
        Some(strings)
    }

    /// A table of strings, such as `labels = { tier = "large" }`.
    pub(super) fn string_map(&mut self, key: &str) -> Option<Located<'a, BTreeMap<String, String>>> {
        let (item, at) = self.item(key)?;
        let Some(table) = item.as_table_like() else {
            let found = item.type_name();
            self.sink.error(
                at,
                format!("{key} must be a table of strings like {{ tier = \"large\" }}, found {found}"),
            );
            return None;
        };
        let mut map = BTreeMap::new();
        for (name, value) in table.iter() {
            let value_at = value.span().map_or(at, |span| at.at(span.start));
            match value.as_str() {
                Some(text) => {
                    map.insert(name.to_owned(), text.to_owned());
                }
                None => {
                    let found = value.type_name();
                    self.sink.error(value_at, format!("{key}.{name} must be a string, found {found}"));
                }
            }
        }
        Some(Located { value: map, at })
    }
}

/// Where an array element was written, or the array's place when it has no span.
fn value_site<'a>(value: &Value, fallback: Site<'a>) -> Site<'a> {
    value.span().map_or(fallback, |span| fallback.at(span.start))
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn one_of(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Names (neuron names, model ids, aliases) appear in URLs, logs and CLI output: they must be
/// non-empty and free of whitespace and control characters. Returns whether the name is usable.
pub(super) fn check_name(name: &Located<'_, String>, what: &str, sink: &mut Sink) -> bool {
    if name.value.is_empty() {
        sink.error(name.at, format!("{what} must not be empty"));
        return false;
    }
    if name.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let value = &name.value;
        sink.error(
            name.at,
            format!("{what} must not contain whitespace or control characters, found {value:?}"),
        );
        return false;
    }
    true
}

/// Unix milliseconds of a TOML date or date-time (`None` for a bare time or a moment before
/// 1970). A date is its first moment in UTC; a local date-time is read as UTC.
pub(super) fn unix_ms_of(moment: &Datetime) -> Option<u64> {
    let date = moment.date?;
    let (seconds, millis) = match moment.time {
        Some(time) => (
            i64::from(time.hour) * 3_600 + i64::from(time.minute) * 60 + i64::from(time.second.unwrap_or(0)),
            i64::from(time.nanosecond.unwrap_or(0) / 1_000_000),
        ),
        None => (0, 0),
    };
    let offset_s = match moment.offset {
        Some(Offset::Custom { minutes }) => i64::from(minutes) * 60,
        Some(Offset::Z) | None => 0,
    };
    let ms = keys::unix_ms(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
        seconds - offset_s,
        millis,
    );
    u64::try_from(ms).ok()
}
