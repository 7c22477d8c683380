//! Test helpers: the generated schemas as JSON, a schema walker, and `admit`, which checks an
//! object roughly as the API server would without one: the OpenAPI value validations (through the
//! `jsonschema` crate), unknown fields (as `kubectl`'s strict field validation does), list-map and
//! set uniqueness, and the CEL rules (evaluated with the `cel` interpreter that `kube-cel` ships,
//! with the Kubernetes CEL library registered).
#![allow(dead_code)]

use kube_cel::KubeCelExt;
use kube_cel::cel::{Context, Program, Value as Cel};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// The `openAPIV3Schema` of the CRD for `kind`, as JSON.
pub fn schema(kind: &str) -> Value {
    let crd = weir_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("openAPIV3Schema");
    serde_json::to_value(schema).unwrap()
}

/// Every kind Weir defines.
pub const KINDS: [&str; 4] = [
    "TrafficSplit",
    "ResiliencePolicy",
    "Autoscaler",
    "LocalService",
];

/// Calls `f(path, node)` for every schema node under `schema` (itself included). Paths look like
/// `.spec.backends[].weight` (`[]` for list items, `{}` for map values).
pub fn walk(schema: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, schema);
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), f);
        }
    }
    if let Some(items) = schema.get("items") {
        walk(items, &format!("{path}[]"), f);
    }
    if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        walk(extra, &format!("{path}{{}}"), f);
    }
    for key in ["anyOf", "allOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            for (i, branch) in branches.iter().enumerate() {
                walk(branch, &format!("{path}<{key}{i}>"), f);
            }
        }
    }
    if let Some(not) = schema.get("not") {
        walk(not, &format!("{path}<not>"), f);
    }
}

/// A file under `crds/tests/examples/`, parsed from YAML into JSON.
pub fn example(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/examples")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sets the value at a JSON pointer (creating nothing: the parent must exist).
pub fn with(mut object: Value, pointer: &str, value: Value) -> Value {
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    let parent = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} not found"));
    match parent {
        Value::Object(map) => {
            map.insert(last.to_owned(), value);
        }
        Value::Array(list) => {
            let i: usize = last.parse().unwrap();
            if i == list.len() {
                list.push(value);
            } else {
                list[i] = value;
            }
        }
        _ => panic!("{parent} is not a container"),
    }
    object
}

/// Removes the value at a JSON pointer.
pub fn without(mut object: Value, pointer: &str) -> Value {
    let (parent, last) = pointer.rsplit_once('/').expect("a pointer");
    match object.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(last);
        }
        Some(Value::Array(list)) => {
            list.remove(last.parse().unwrap());
        }
        _ => panic!("{parent} not found"),
    }
    object
}

/// Everything the API server would refuse in `object` (a whole resource of kind `object.kind`),
/// one message per problem; empty when it would be admitted.
pub fn admit(object: &Value) -> Vec<String> {
    let kind = object["kind"].as_str().expect("kind");
    let schema = schema(kind);
    let mut problems = Vec::new();

    // The OpenAPI value validations, by a JSON Schema validator (draft 4 is what OpenAPI 3.0
    // schemas are based on; `nullable` becomes a "null" type).
    let json_schema = to_json_schema(&schema);
    let validator = jsonschema::draft4::new(&json_schema).expect("the schema compiles");
    for error in validator.iter_errors(object) {
        problems.push(format!("{}: {error}", error.instance_path()));
    }

    structure(&schema, object, "", &mut problems);
    cel_rules(&schema, object, "", &mut problems);
    problems
}

/// Turns an OpenAPI v3.0 schema into JSON Schema draft 4: `nullable: true` allows null.
fn to_json_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let value = match key.as_str() {
                    "properties" => Value::Object(
                        value
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), to_json_schema(v)))
                            .collect(),
                    ),
                    "items" | "additionalProperties" | "not" => to_json_schema(value),
                    "anyOf" | "allOf" | "oneOf" => Value::Array(
                        value
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(to_json_schema)
                            .collect(),
                    ),
                    _ => value.clone(),
                };
                out.insert(key.clone(), value);
            }
            if map.get("nullable") == Some(&Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type")
            {
                out.insert("type".into(), json!([t, "null"]));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Unknown fields (the root's apiVersion, kind and metadata aside), and duplicate keys of
/// `x-kubernetes-list-type: map` and `set` lists.
fn structure(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (key, child) in object {
                if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str()) {
                    continue;
                }
                let child_path = format!("{path}.{key}");
                match (props.and_then(|p| p.get(key)), extra) {
                    (Some(child_schema), _) | (None, Some(child_schema)) => {
                        structure(child_schema, child, &child_path, problems)
                    }
                    (None, None) => problems.push(format!("{child_path}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            let item_schema = &schema["items"];
            for (i, item) in items.iter().enumerate() {
                structure(item_schema, item, &format!("{path}[{i}]"), problems);
            }
            match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
                Some("map") => {
                    let keys: Vec<&str> = strings(&schema["x-kubernetes-list-map-keys"]);
                    let mut seen = HashSet::new();
                    for item in items {
                        let key: Vec<String> = keys.iter().map(|k| item[k].to_string()).collect();
                        if !seen.insert(key.clone()) {
                            problems.push(format!("{path}: Duplicate value: {}", key.join(",")));
                        }
                    }
                }
                Some("set") => {
                    let mut seen = HashSet::new();
                    for item in items {
                        if !seen.insert(item.to_string()) {
                            problems.push(format!("{path}: Duplicate value: {item}"));
                        }
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

/// The strings of a schema's list of names (`required`, `x-kubernetes-list-map-keys`); panics on
/// anything else, which would be a malformed schema.
pub fn strings<'a, C: FromIterator<&'a str>>(list: &'a Value) -> C {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list of names, got {list}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected a name, got {v}"))
        })
        .collect()
}

/// Evaluates every `x-kubernetes-validations` rule where the object has a value, as the API
/// server does; a rule that is false or fails to evaluate is a problem.
fn cel_rules(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if value.is_null() {
        return; // null is treated as absent
    }
    if let Some(rules) = schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            let text = rule["rule"].as_str().unwrap();
            let message = rule["message"].as_str().unwrap_or(text);
            match evaluate(text, value) {
                Ok(true) => {}
                Ok(false) => problems.push(format!("{path}: Invalid value: {message}")),
                Err(e) => problems.push(format!("{path}: rule {text:?} failed: {e}")),
            }
        }
    }
    match value {
        Value::Object(object) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|v| v.is_object());
            for (key, child) in object {
                if let Some(child_schema) = props.and_then(|p| p.get(key)).or(extra) {
                    cel_rules(child_schema, child, &format!("{path}.{key}"), problems);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                cel_rules(&schema["items"], item, &format!("{path}[{i}]"), problems);
            }
        }
        _ => {}
    }
}

/// Evaluates one CEL rule with `self` bound to `value`.
pub fn evaluate(rule: &str, value: &Value) -> Result<bool, String> {
    let program = Program::compile(rule).map_err(|e| format!("does not compile: {e}"))?;
    let mut context = Context::default().with_all();
    // `type(x) == int` / `== string`, as Kubernetes' CEL has them for int-or-string fields; the
    // `cel` crate has no type values, so type names stand for them here.
    context.add_function("type", |v: Cel| -> Arc<String> {
        Arc::new(
            match v {
                Cel::Int(_) | Cel::UInt(_) => "int",
                Cel::Float(_) => "double",
                Cel::String(_) => "string",
                Cel::Bool(_) => "bool",
                Cel::List(_) => "list",
                Cel::Map(_) => "map",
                Cel::Duration(_) => "google.protobuf.Duration",
                Cel::Timestamp(_) => "google.protobuf.Timestamp",
                Cel::Null => "null_type",
                _ => "other",
            }
            .to_owned(),
        )
    });
    context.add_variable_from_value("int", "int");
    context.add_variable_from_value("string", "string");
    context.add_variable_from_value("self", to_cel(value));
    match program.execute(&context) {
        Ok(Cel::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("returned {other:?}, not a bool")),
        Err(e) => Err(e.to_string()),
    }
}

/// JSON to CEL: integers as `int`, other numbers as `double`, null-valued fields left out.
fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap()),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(object) => {
            let map: HashMap<String, Cel> = object
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect();
            Cel::from(map)
        }
    }
}
