//! The raw configuration tree: the TOML file parsed into [`Node`]s, with environment
//! overrides laid on top. Nothing is typed yet; the section readers do that.

use std::collections::{BTreeMap, HashMap};

use config::{FileFormat, Source, Value, ValueKind};

use super::error::ConfigError;

/// Environment variables starting with this override keys: `INBOXD__SERVER__LISTEN`.
pub(super) const ENV_PREFIX: &str = "INBOXD__";

/// Separates path segments in an override's name (single underscores belong to key names).
const ENV_SEPARATOR: &str = "__";

/// A value in the configuration tree.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    /// `true` / `false`.
    Bool(bool),
    /// A TOML integer.
    Int(i64),
    /// A TOML float (no key takes one; kept to name it in type errors).
    Float(f64),
    /// A TOML string (TOML date-times arrive here too, as text).
    Str(String),
    /// A TOML array.
    Array(Vec<Node>),
    /// A TOML table.
    Table(BTreeMap<String, Node>),
    /// Text from an environment variable, read as whatever type its key expects.
    Env {
        /// The variable, named in error messages.
        var: String,
        /// Its value.
        text: String,
    },
}

impl Node {
    /// How type errors name this value ("expected a string, found an integer").
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Str(_) => "a string",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
            Node::Env { .. } => "text from the environment",
        }
    }
}

/// Parses TOML text into a table node. A syntax error is the one problem that stops
/// everything else: without a tree there is nothing to check.
pub(super) fn parse_toml(text: &str) -> Result<Node, ConfigError> {
    let table = config::File::from_str(text, FileFormat::Toml)
        .collect()
        .map_err(|err| ConfigError::new("", format!("invalid TOML: {}", one_line(&err.to_string()))))?;
    Ok(Node::Table(
        table.into_iter().map(|(k, v)| (k, from_value(v))).collect(),
    ))
}

/// TOML errors come with a multi-line source excerpt; keep `line N, column M` and the reason.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match (lines.first(), lines.last()) {
        (Some(first), Some(last)) if lines.len() > 1 => {
            let first = first.trim_start_matches("TOML parse error at ");
            format!("{first}: {last}")
        }
        _ => message.trim().to_string(),
    }
}

fn from_value(value: Value) -> Node {
    match value.kind {
        ValueKind::Nil => Node::Str(String::new()),
        ValueKind::Boolean(b) => Node::Bool(b),
        ValueKind::I64(i) => Node::Int(i),
        ValueKind::I128(i) => i64::try_from(i).map_or(Node::Float(i as f64), Node::Int),
        ValueKind::U64(i) => i64::try_from(i).map_or(Node::Float(i as f64), Node::Int),
        ValueKind::U128(i) => i64::try_from(i).map_or(Node::Float(i as f64), Node::Int),
        ValueKind::Float(f) => Node::Float(f),
        ValueKind::String(s) => Node::Str(s),
        ValueKind::Table(t) => Node::Table(t.into_iter().map(|(k, v)| (k, from_value(v))).collect()),
        ValueKind::Array(a) => Node::Array(a.into_iter().map(from_value).collect()),
    }
}

/// One segment of an override's path; indices sort numerically so `__2__` comes before
/// `__10__` and arrays can be extended from the environment in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    Index(usize),
    Key(String),
}

impl Segment {
    fn parse(raw: &str) -> Segment {
        match raw.parse::<usize>() {
            Ok(i) => Segment::Index(i),
            Err(_) => Segment::Key(raw.to_ascii_lowercase()),
        }
    }
}

/// Lays every `INBOXD__…` variable of `env` over the tree; a malformed name or a path that
/// cannot exist is reported, and the other variables still apply.
pub(super) fn apply_env(root: &mut Node, env: &HashMap<String, String>, errors: &mut Vec<ConfigError>) {
    let mut overrides: Vec<(Vec<Segment>, &String, &String)> = Vec::new();
    for (var, text) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let raw: Vec<&str> = rest.split(ENV_SEPARATOR).collect();
        if raw.iter().any(|s| s.is_empty()) {
            errors.push(ConfigError::new(
                "",
                format!("environment variable {var} is not of the form INBOXD__SECTION__KEY"),
            ));
            continue;
        }
        overrides.push((raw.into_iter().map(Segment::parse).collect(), var, text));
    }
    overrides.sort();
    for (segments, var, text) in overrides {
        let value = Node::Env {
            var: var.clone(),
            text: text.clone(),
        };
        if let Err(message) = set(root, &segments, value, "") {
            errors.push(ConfigError::new("", format!("environment variable {var}: {message}")));
        }
    }
}

/// Joins a key path and a child key: `mailboxes[0]` + `folders` → `mailboxes[0].folders`.
pub(super) fn child_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn segment_path(parent: &str, segment: &Segment) -> String {
    match segment {
        Segment::Index(i) => format!("{parent}[{i}]"),
        Segment::Key(k) => child_path(parent, k),
    }
}

/// An empty container of the kind the next segment needs.
fn container_for(next: &Segment) -> Node {
    match next {
        Segment::Index(_) => Node::Array(Vec::new()),
        Segment::Key(_) => Node::Table(BTreeMap::new()),
    }
}

fn set(node: &mut Node, segments: &[Segment], value: Node, path: &str) -> Result<(), String> {
    let Some((head, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    let here = segment_path(path, head);
    let child = match (node, head) {
        (Node::Table(map), Segment::Key(key)) => match rest.first() {
            None => {
                map.insert(key.clone(), value);
                return Ok(());
            }
            Some(next) => map.entry(key.clone()).or_insert_with(|| container_for(next)),
        },
        (Node::Table(map), Segment::Index(i)) => {
            // A numeric key inside a table (unusual, but valid TOML): treat it as a key.
            let next = rest.first().map_or(Node::Table(BTreeMap::new()), container_for);
            map.entry(i.to_string()).or_insert(next)
        }
        (Node::Array(items), Segment::Index(i)) => {
            if *i == items.len() {
                items.push(rest.first().map_or(Node::Table(BTreeMap::new()), container_for));
            }
            let len = items.len();
            match items.get_mut(*i) {
                Some(item) => item,
                None => {
                    return Err(format!(
                        "{here} is past the end ({} has {} entries; extend it one index at a time)",
                        if path.is_empty() { "the array" } else { path },
                        len
                    ));
                }
            }
        }
        (Node::Array(_), Segment::Key(key)) => {
            return Err(format!("{path} is an array; expected an index instead of `{key}`"));
        }
        (other, _) => {
            return Err(format!("{path} is {}, so {here} cannot be set", other.kind()));
        }
    };
    set(child, rest, value, &here)
}
