//! Real file sink output checked against `schemas/inboxd.message.v1.schema.json`.
//!
//! No JSON Schema crate is a dependency, so this is a small validator for the keywords the
//! schema uses. A keyword it does not know fails the test, so the schema cannot quietly
//! grow a constraint nobody checks.

use serde_json::{Map, Value, json};

use super::tests::{read_events, sample_event};
use super::*;

const SCHEMA: &str = include_str!("../../../schemas/inboxd.message.v1.schema.json");

/// Keywords that only annotate (or, for `additionalProperties: true`, allow what we allow).
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "title",
    "description",
    "format",
    "contentEncoding",
];

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("the schema file is JSON")
}

/// Every violation of `node` by `value`, each with its JSON path.
fn validate(root: &Value, node: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let node = node.as_object().expect("a schema node is an object");
    for (keyword, arg) in node {
        match keyword.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "additionalProperties" => assert_eq!(
                arg,
                &Value::Bool(true),
                "only `additionalProperties: true` is supported"
            ),
            "$ref" => {
                let name = arg.as_str().unwrap().strip_prefix("#/$defs/").expect("local $defs ref");
                validate(root, &root["$defs"][name], value, path, errors);
            }
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                    _ => panic!("bad type at {path}"),
                };
                if !types.iter().any(|t| has_type(value, t)) {
                    errors.push(format!("{path}: expected {types:?}, got {value}"));
                }
            }
            "const" if value != arg => errors.push(format!("{path}: expected {arg}, got {value}")),
            "const" => {}
            "enum" if !arg.as_array().unwrap().contains(value) => errors.push(format!("{path}: {value} not in {arg}")),
            "enum" => {}
            "minimum" => {
                if value.as_f64().is_some_and(|v| v < arg.as_f64().unwrap()) {
                    errors.push(format!("{path}: {value} below {arg}"));
                }
            }
            "required" => {
                if let Some(obj) = value.as_object() {
                    for field in arg.as_array().unwrap() {
                        if !obj.contains_key(field.as_str().unwrap()) {
                            errors.push(format!("{path}: missing required {field}"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(obj) = value.as_object() {
                    for (name, sub) in arg.as_object().unwrap() {
                        if let Some(v) = obj.get(name) {
                            validate(root, sub, v, &format!("{path}.{name}"), errors);
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, v) in items.iter().enumerate() {
                        validate(root, arg, v, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            "anyOf" => {
                let branches = arg.as_array().unwrap();
                let fits = branches.iter().any(|b| {
                    let mut errs = Vec::new();
                    validate(root, b, value, path, &mut errs);
                    errs.is_empty()
                });
                if !fits {
                    errors.push(format!("{path}: {value} matches no anyOf branch"));
                }
            }
            other => panic!("the test validator does not understand `{other}` (at {path}): teach it"),
        }
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        other => panic!("unknown type {other}"),
    }
}

fn errors_of(value: &Value) -> Vec<String> {
    let root = schema();
    let mut errors = Vec::new();
    validate(&root, &root, value, "$", &mut errors);
    errors
}

/// Lines the real file sink wrote, as raw JSON.
async fn real_output() -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbound.ndjson");
    let sink = FileSink::open(path.clone(), None).await.unwrap();
    let mut bare = sample_event(1);
    bare.from = None;
    bare.in_reply_to = None;
    bare.references.clear();
    bare.body.html = None;
    bare.attachments[0].content_id = Some("<img1>".into());
    bare.attachments[0].is_inline = true;
    bare.attachments.pop();
    let mut empty = sample_event(2);
    empty.to.clear();
    empty.attachments.clear();
    empty.body.text = None;
    assert!(
        sink.deliver(&[sample_event(0), bare, empty])
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert_eq!(read_events(&path).len(), 3);
    fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn real_file_sink_output_matches_the_schema() {
    for line in real_output().await {
        assert_eq!(errors_of(&line), Vec::<String>::new(), "{line}");
    }
}

/// Every field the event serialises is declared in the schema (so the schema keeps up).
fn undeclared(root: &Value, node: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let node = match node.get("$ref").and_then(Value::as_str) {
        Some(r) => &root["$defs"][r.strip_prefix("#/$defs/").unwrap()],
        None => node,
    };
    if let Some(branches) = node.get("anyOf").and_then(Value::as_array) {
        // Declared if some branch declares it all.
        let per_branch = branches.iter().map(|b| {
            let mut missing = Vec::new();
            undeclared(root, b, value, path, &mut missing);
            missing
        });
        out.extend(per_branch.min_by_key(Vec::len).unwrap_or_default());
        return;
    }
    match value {
        Value::Object(obj) => {
            let empty = Map::new();
            let props = node.get("properties").and_then(Value::as_object).unwrap_or(&empty);
            for (k, v) in obj {
                match props.get(k) {
                    Some(sub) => undeclared(root, sub, v, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                undeclared(root, &node["items"], v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_schema_declares_every_field_the_sink_writes() {
    let root = schema();
    for line in real_output().await {
        let mut out = Vec::new();
        undeclared(&root, &root, &line, "$", &mut out);
        assert_eq!(out, Vec::<String>::new());
    }
}

#[tokio::test]
async fn the_validator_catches_missing_fields_and_wrong_types() {
    let good = real_output().await.remove(0);
    assert!(errors_of(&good).is_empty());

    let required = schema()["required"].as_array().unwrap().clone();
    assert_eq!(required.len(), 18, "every field of the v1 event is required");
    for field in required {
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove(field.as_str().unwrap());
        assert!(!errors_of(&bad).is_empty(), "missing {field} went unnoticed");
    }

    let broken: &[(&str, Value)] = &[
        ("/schema", json!("inboxd.message.v2")),
        ("/from", json!(42)),
        ("/from", json!({"name": "no address"})),
        ("/to/0/address", Value::Null),
        ("/body/text", json!(7)),
        ("/attachments/0/size", json!(-1)),
        ("/attachments/0/is_inline", json!("false")),
        ("/attachments/0/content_base64", Value::Null),
        ("/references", json!("<one>")),
    ];
    for (pointer, value) in broken {
        let mut bad = good.clone();
        *bad.pointer_mut(pointer).unwrap() = value.clone();
        assert!(!errors_of(&bad).is_empty(), "{pointer} = {value} went unnoticed");
    }
    let mut bad = good.clone();
    bad["attachments"][0].as_object_mut().unwrap().remove("sha256");
    assert!(!errors_of(&bad).is_empty(), "a missing nested sha256 went unnoticed");
}
