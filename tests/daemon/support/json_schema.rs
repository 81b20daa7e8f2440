//! The published event schema and a validator for the subset of JSON Schema (2020-12) it
//! uses. No JSON Schema crate is a dependency; this file needs only `serde_json`.

use serde_json::Value;

/// The published schema of the event.
pub fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/inboxd.message.v1.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A validator for the subset of JSON Schema (2020-12) the event schema uses. Keywords it
/// does not know make it panic, so a schema that grows a new rule cannot be half-checked.
pub struct Validator<'a> {
    /// The whole schema (`$ref`s resolve against it).
    pub root: &'a Value,
}

impl Validator<'_> {
    /// Every violation, as `path: problem`.
    pub fn errors(&self, value: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(self.root, value, "$", &mut out);
        out
    }

    fn check(&self, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = schema.as_object().expect("schema nodes are objects");
        for (keyword, rule) in schema {
            match keyword.as_str() {
                "type" => {
                    let types: Vec<&str> = match rule {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        other => panic!("type {other}"),
                    };
                    if !types.iter().any(|t| has_type(value, t)) {
                        out.push(format!("{at}: expected {types:?}, got {value}"));
                    }
                }
                "required" => {
                    for name in rule.as_array().unwrap().iter().filter_map(Value::as_str) {
                        if value.is_object() && value.get(name).is_none() {
                            out.push(format!("{at}: required field '{name}' is missing"));
                        }
                    }
                }
                "properties" => {
                    if let Some(obj) = value.as_object() {
                        for (name, sub) in rule.as_object().unwrap() {
                            if let Some(v) = obj.get(name) {
                                self.check(sub, v, &format!("{at}.{name}"), out);
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(items) = value.as_array() {
                        for (i, v) in items.iter().enumerate() {
                            self.check(rule, v, &format!("{at}[{i}]"), out);
                        }
                    }
                }
                "enum" => {
                    if !rule.as_array().unwrap().contains(value) {
                        out.push(format!("{at}: {value} is not one of {rule}"));
                    }
                }
                "const" => {
                    if value != rule {
                        out.push(format!("{at}: {value} is not {rule}"));
                    }
                }
                "minimum" => {
                    if value.as_f64().is_some_and(|n| n < rule.as_f64().unwrap()) {
                        out.push(format!("{at}: {value} is below {rule}"));
                    }
                }
                "anyOf" => {
                    let fits = rule.as_array().unwrap().iter().any(|alt| {
                        let mut errs = Vec::new();
                        self.check(alt, value, at, &mut errs);
                        errs.is_empty()
                    });
                    if !fits {
                        out.push(format!("{at}: {value} matches none of anyOf"));
                    }
                }
                "$ref" => {
                    let pointer = rule.as_str().unwrap().strip_prefix('#').expect("local $ref");
                    let target = self
                        .root
                        .pointer(pointer)
                        .unwrap_or_else(|| panic!("dangling $ref {rule}"));
                    self.check(target, value, at, out);
                }
                "additionalProperties" => assert_eq!(rule, &Value::Bool(true), "only open objects are supported"),
                // Annotations, not assertions (format is an annotation by default in 2020-12).
                "$schema" | "$id" | "$defs" | "title" | "description" | "format" | "contentEncoding" => {}
                other => panic!("the test validator does not know the schema keyword '{other}'"),
            }
        }
    }
}

fn has_type(value: &Value, t: &str) -> bool {
    match t {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_u64() || value.is_i64(),
        other => panic!("unknown type {other}"),
    }
}
