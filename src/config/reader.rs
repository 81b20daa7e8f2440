//! Typed reading of the tree. Every read that fails records a [`ConfigError`] at the key's
//! path and yields `None`, so the caller keeps going and the operator sees every problem.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::error::ConfigError;
use super::tree::{Node, child_path};

/// The errors collected so far.
pub(super) type Errors = Vec<ConfigError>;

/// Stands in for an absent section, so absent and empty read the same.
static EMPTY: BTreeMap<String, Node> = BTreeMap::new();

/// A value and where it sits.
#[derive(Debug, Clone)]
pub(super) struct Field<'a> {
    /// Key path, e.g. `mailboxes[0].folders`.
    pub(super) path: String,
    /// Borrowed from the tree, or owned for defaults and items split out of an override.
    node: Cow<'a, Node>,
}

impl<'a> Field<'a> {
    /// A field holding a built-in default, read through the same checks as a written value.
    pub(super) fn default_at(path: String, text: &str) -> Field<'a> {
        Field {
            path,
            node: Cow::Owned(Node::Str(text.to_string())),
        }
    }

    /// A field holding any built-in default value.
    pub(super) fn builtin(path: String, node: Node) -> Field<'a> {
        Field {
            path,
            node: Cow::Owned(node),
        }
    }

    /// Records a problem with this field; a value from the environment names its variable.
    pub(super) fn fail(&self, errors: &mut Errors, message: impl Into<String>) {
        let mut message = message.into();
        if let Node::Env { var, .. } = self.node.as_ref() {
            message.push_str(&format!(" (set by {var})"));
        }
        errors.push(ConfigError::new(self.path.clone(), message));
    }

    fn mismatch<T>(&self, errors: &mut Errors, expected: &str) -> Option<T> {
        self.fail(errors, format!("expected {expected}, found {}", self.node.kind()));
        None
    }

    /// True when the value came from an environment variable rather than the file.
    pub(super) fn set_by_env(&self) -> bool {
        matches!(self.node.as_ref(), Node::Env { .. })
    }

    /// The text of a string; `expected` describes the wanted value in the type error.
    pub(super) fn text(&self, errors: &mut Errors, expected: &str) -> Option<&str> {
        match self.node.as_ref() {
            Node::Str(s) | Node::Env { text: s, .. } => Some(s.as_str()),
            _ => self.mismatch(errors, expected),
        }
    }

    /// A non-empty string, trimmed.
    pub(super) fn non_empty(&self, errors: &mut Errors) -> Option<String> {
        let text = self.text(errors, "a string")?.trim();
        if text.is_empty() {
            self.fail(errors, "must not be empty");
            return None;
        }
        Some(text.to_string())
    }

    /// An integer (`3_000_000` is fine in an override too).
    pub(super) fn int(&self, errors: &mut Errors) -> Option<i64> {
        match self.node.as_ref() {
            Node::Int(i) => Some(*i),
            Node::Env { text, .. } => match text.trim().replace('_', "").parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.fail(errors, format!("expected an integer, found '{text}'"));
                    None
                }
            },
            _ => self.mismatch(errors, "an integer"),
        }
    }

    /// An integer within `min..=max`.
    pub(super) fn int_in(&self, errors: &mut Errors, min: i64, max: i64) -> Option<i64> {
        let value = self.int(errors)?;
        if value < min || value > max {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            self.fail(errors, format!("must be {range}, found {value}"));
            return None;
        }
        Some(value)
    }

    /// `true` or `false`.
    pub(super) fn bool(&self, errors: &mut Errors) -> Option<bool> {
        match self.node.as_ref() {
            Node::Bool(b) => Some(*b),
            Node::Env { text, .. } => match text.trim().to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => {
                    self.fail(errors, format!("expected true or false, found '{text}'"));
                    None
                }
            },
            _ => self.mismatch(errors, "true or false"),
        }
    }

    /// The items of an array. An override gives a list as a JSON array (`["a","b"]`) or as
    /// comma-separated text (`a,b`).
    pub(super) fn items(&self, errors: &mut Errors) -> Option<Vec<Field<'a>>> {
        match &self.node {
            Cow::Borrowed(Node::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, node)| Field {
                        path: format!("{}[{i}]", self.path),
                        node: Cow::Borrowed(node),
                    })
                    .collect(),
            ),
            Cow::Owned(Node::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, node)| Field {
                        path: format!("{}[{i}]", self.path),
                        node: Cow::Owned(node.clone()),
                    })
                    .collect(),
            ),
            node => match node.as_ref() {
                Node::Env { var, text } => {
                    let parts = split_list(text).or_else(|| {
                        self.fail(errors, "is not a JSON array of strings");
                        None
                    })?;
                    Some(
                        parts
                            .into_iter()
                            .enumerate()
                            .map(|(i, text)| Field {
                                path: format!("{}[{i}]", self.path),
                                node: Cow::Owned(Node::Env { var: var.clone(), text }),
                            })
                            .collect(),
                    )
                }
                _ => self.mismatch(errors, "an array"),
            },
        }
    }

    /// A table, to read key by key.
    pub(super) fn table(&self, errors: &mut Errors) -> Option<Table<'a>> {
        match &self.node {
            Cow::Borrowed(Node::Table(map)) => Some(Table::new(self.path.clone(), map)),
            _ => self.mismatch(errors, "a table"),
        }
    }

    /// The tables of an array of tables (`[[apps]]`); entries that are not tables are reported.
    pub(super) fn tables(&self, errors: &mut Errors) -> Option<Vec<Table<'a>>> {
        if let Node::Table(_) = self.node.as_ref() {
            return self.mismatch(
                errors,
                &format!("an array of tables (write [[{}]] for each entry)", self.path),
            );
        }
        let items = self.items(errors)?;
        Some(items.iter().filter_map(|item| item.table(errors)).collect())
    }
}

/// `["a","b"]` or `a, b`, as text items.
fn split_list(text: &str) -> Option<Vec<String>> {
    let trimmed = text.trim();
    if trimmed.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(trimmed).ok();
    }
    if trimmed.is_empty() {
        return Some(Vec::new());
    }
    Some(trimmed.split(',').map(|s| s.trim().to_string()).collect())
}

/// A table being read. Keys asked for are remembered, so [`Table::finish`] can report the
/// rest as unknown, with the closest known key as a suggestion.
#[derive(Debug)]
pub(super) struct Table<'a> {
    path: String,
    map: &'a BTreeMap<String, Node>,
    known: Vec<&'static str>,
}

impl<'a> Table<'a> {
    fn new(path: String, map: &'a BTreeMap<String, Node>) -> Table<'a> {
        Table {
            path,
            map,
            known: Vec::new(),
        }
    }

    /// The root of the tree.
    pub(super) fn root(node: &'a Node) -> Table<'a> {
        match node {
            Node::Table(map) => Table::new(String::new(), map),
            _ => Table::new(String::new(), &EMPTY),
        }
    }

    /// An empty table at `path`, read for its defaults.
    pub(super) fn empty(path: &str) -> Table<'a> {
        Table::new(path.to_string(), &EMPTY)
    }

    /// This table's key path, e.g. `apps[1]`.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// Path of a key in this table.
    pub(super) fn path_of(&self, key: &str) -> String {
        child_path(&self.path, key)
    }

    /// The value of `key`, if present.
    pub(super) fn get(&mut self, key: &'static str) -> Option<Field<'a>> {
        self.known.push(key);
        self.map.get(key).map(|node| Field {
            path: child_path(&self.path, key),
            node: Cow::Borrowed(node),
        })
    }

    /// The value of `key`, or the built-in default `text` when absent.
    pub(super) fn get_or(&mut self, key: &'static str, text: &str) -> Field<'a> {
        let path = self.path_of(key);
        self.get(key).unwrap_or_else(|| Field::default_at(path, text))
    }

    /// The value of `key`; reports it missing otherwise (`why` says when it is required).
    pub(super) fn require(&mut self, key: &'static str, errors: &mut Errors, why: &str) -> Option<Field<'a>> {
        let field = self.get(key);
        if field.is_none() {
            errors.push(ConfigError::new(
                self.path_of(key),
                format!("missing required key{why}"),
            ));
        }
        field
    }

    /// A sub-table; an absent one reads as empty so its defaults apply.
    pub(super) fn section(&mut self, key: &'static str, errors: &mut Errors) -> Option<Table<'a>> {
        match self.get(key) {
            Some(field) => field.table(errors),
            None => Some(Table::new(self.path_of(key), &EMPTY)),
        }
    }

    /// Accepts `key` as known but refuses it here, saying why (e.g. a webhook key on a file sink).
    pub(super) fn refuse(&mut self, key: &'static str, errors: &mut Errors, why: &str) {
        if let Some(field) = self.get(key) {
            field.fail(errors, why.to_string());
        }
    }

    /// Reports every key nobody asked for.
    pub(super) fn finish(mut self, errors: &mut Errors) {
        let mut seen = Vec::new();
        self.known.retain(|k| {
            let first = !seen.contains(k);
            seen.push(*k);
            first
        });
        for (key, node) in self.map {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let mut message = match closest(key, &self.known) {
                Some(near) => format!("unknown key; did you mean `{near}`?"),
                None if self.known.is_empty() => "unknown key".to_string(),
                None => format!("unknown key; expected one of: {}", self.known.join(", ")),
            };
            if let Node::Env { var, .. } = node {
                message.push_str(&format!(" (set by {var})"));
            }
            errors.push(ConfigError::new(child_path(&self.path, key), message));
        }
    }
}

/// The known key nearest to a typo, if it is near enough to be what was meant.
fn closest<'k>(typo: &str, known: &[&'k str]) -> Option<&'k str> {
    let limit = if typo.chars().count() <= 4 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (edit_distance(typo, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance where swapping two neighbouring letters (`paht`) counts as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}
