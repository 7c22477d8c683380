//! The generated CRDs: the checked-in manifests are current, the schemas are structural and
//! bounded the way the Kubernetes API server (1.28+) needs, the promised CEL rules are where they
//! belong, and names, categories, subresources and printer columns are right.
//!
//! Regenerate the checked-in manifests with `WEIR_UPDATE_CRDS=1 cargo test -p weir-crds`.

mod common;

use common::{KINDS, schema, walk};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const REGENERATE: &str = "WEIR_UPDATE_CRDS=1 cargo test -p weir-crds";

#[test]
fn checked_in_manifests_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var("WEIR_UPDATE_CRDS").is_ok_and(|v| !v.is_empty() && v != "0");
    let files = weir_crds::manifest_files();
    let mut stale = Vec::new();
    for (name, content) in &files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            if update {
                std::fs::write(&path, content).unwrap();
                eprintln!("wrote crds/{name}");
            } else {
                stale.push(format!("crds/{name}"));
            }
        }
    }
    // A generated manifest left behind (a kind renamed or removed) is stale too.
    let expected: BTreeSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let generated = || {
            std::fs::read_to_string(dir.join(&name))
                .is_ok_and(|text| text.starts_with(weir_crds::MANIFEST_HEADER))
        };
        if name.ends_with(".yaml") && !expected.contains(name.as_str()) && generated() {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
                eprintln!("removed crds/{name}");
            } else {
                stale.push(format!("crds/{name} (no longer generated)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRD manifests: {}\nThey differ from what the types in crds/src generate; regenerate them with\n    {REGENERATE}\nand commit the result.",
        stale.join(", ")
    );
}

#[test]
fn manifests_yaml_holds_every_crd() {
    let yaml = weir_crds::manifests_yaml();
    let documents: Vec<CustomResourceDefinition> = serde_saphyr::from_multiple(&yaml).unwrap();
    assert_eq!(documents, weir_crds::crds());
    assert_eq!(yaml.matches("\n---\n").count(), 3);
    for (_, content) in weir_crds::manifest_files() {
        assert!(yaml.contains(&content));
        assert!(content.starts_with("# Generated"));
        assert!(content.contains(REGENERATE));
    }
}

#[test]
fn names_categories_subresources_and_columns() {
    let crds = weir_crds::crds();
    let by_kind = |kind: &str| {
        crds.iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap_or_else(|| panic!("{kind}"))
    };
    // (kind, plural, short name, printer columns as (name, JSON path))
    type Expected<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);
    let expected: [Expected; 4] = [
        (
            "TrafficSplit",
            "trafficsplits",
            Some("ts"),
            &[
                ("Service", ".spec.service"),
                ("Weights", ".status.weights"),
                ("Phase", ".status.analysis.phase"),
                ("Canary", ".status.analysis.canaryWeight"),
                (
                    "Accepted",
                    r#".status.conditions[?(@.type=="Accepted")].status"#,
                ),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "ResiliencePolicy",
            "resiliencepolicies",
            Some("rp"),
            &[
                ("Kind", ".spec.targetRef.kind"),
                ("Target", ".spec.targetRef.name"),
                ("Mode", ".spec.mode"),
                (
                    "Accepted",
                    r#".status.conditions[?(@.type=="Accepted")].status"#,
                ),
                ("Effective", ".status.effectiveLimits"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "Autoscaler",
            "autoscalers",
            Some("as"),
            &[
                ("Target", ".spec.targetRef.name"),
                ("Min", ".spec.minReplicas"),
                ("Max", ".spec.maxReplicas"),
                ("Desired", ".status.desiredReplicas"),
                ("Current", ".status.currentReplicas"),
                (
                    "Accepted",
                    r#".status.conditions[?(@.type=="Accepted")].status"#,
                ),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
        (
            "LocalService",
            "localservices",
            None,
            &[
                ("Port", ".spec.port"),
                ("Age", ".metadata.creationTimestamp"),
            ],
        ),
    ];
    for (kind, plural, short, columns) in expected {
        let crd = by_kind(kind);
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(&*format!("{plural}.weir.dev"))
        );
        assert_eq!(crd.spec.group, weir_crds::GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.plural, plural);
        assert_eq!(
            crd.spec.names.short_names.clone().unwrap_or_default(),
            short.map(|s| vec![s.to_owned()]).unwrap_or_default(),
            "{kind} short names"
        );
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["weir".to_owned()]),
            "{kind}"
        );
        assert_eq!(crd.spec.versions.len(), 1);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, weir_crds::VERSION);
        assert!(version.served && version.storage);
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{kind} has a status subresource"
        );
        let got: Vec<(&str, &str)> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| (c.name.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(got, columns, "{kind} printer columns");
        for column in version.additional_printer_columns.as_ref().unwrap() {
            let want = match column.name.as_str() {
                "Age" => "date",
                "Min" | "Max" | "Desired" | "Current" | "Port" | "Canary" => "integer",
                _ => "string",
            };
            assert_eq!(column.type_, want, "{kind} column {}", column.name);
        }
        // Every column's path exists in the schema.
        let schema = schema(kind);
        for (name, path) in columns {
            let Some(rest) = path.strip_prefix('.') else {
                panic!("{path}")
            };
            if rest.starts_with("metadata") {
                continue;
            }
            let mut node = &schema;
            for part in rest.split('.').map(|p| p.split('[').next().unwrap()) {
                if part.is_empty() || part.starts_with('?') || part.starts_with("type==") {
                    continue;
                }
                node = node
                    .get("properties")
                    .and_then(|p| p.get(part))
                    .or_else(|| node.get("items").and_then(|i| i["properties"].get(part)))
                    .unwrap_or_else(|| panic!("{kind} column {name}: {path} is not in the schema"));
            }
        }
    }
}

#[test]
fn weights_summary_lists_every_backend_in_order() {
    let spec: weir_crds::TrafficSplitSpec = serde_json::from_value(serde_json::json!({
        "service": "payments",
        "backends": [
            {"subset": "v1", "selector": {"version": "v1"}, "weight": 90},
            {"subset": "v2", "selector": {"version": "v2"}, "weight": 10},
            {"subset": "v3", "selector": {"version": "v3"}, "weight": 0}
        ]
    }))
    .unwrap();
    assert_eq!(weir_crds::weights_summary(&spec), "v1=90,v2=10,v3=0");

    // The longest summary the spec allows fits `status.weights`.
    let backends: Vec<Value> = (0..weir_crds::schema::MAX_BACKENDS)
        .map(|i| serde_json::json!({"subset": format!("{i:0>63}"), "selector": {}, "weight": weir_crds::schema::MAX_WEIGHT}))
        .collect();
    let spec: weir_crds::TrafficSplitSpec =
        serde_json::from_value(serde_json::json!({"service": "a", "backends": backends})).unwrap();
    let longest = weir_crds::weights_summary(&spec).len() as u64;
    let max = schema("TrafficSplit")["properties"]["status"]["properties"]["weights"]["maxLength"]
        .as_u64()
        .unwrap();
    assert!(longest <= max, "{longest} > {max}");
}

/// What the API server refuses in a CRD schema, and what makes CEL rules too costly.
fn structural_problems(kind: &str, root: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if root["type"] != "object" {
        problems.push("root: type must be object".to_owned());
    }
    if root.get("additionalProperties").is_some() {
        problems.push("root: additionalProperties is not allowed at the root".to_owned());
    }
    if let Some(metadata) = root["properties"].get("metadata") {
        let names: BTreeSet<&str> = metadata
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        if !names.is_subset(&BTreeSet::from(["name", "generateName"])) {
            problems.push("root: metadata may only restrict name and generateName".to_owned());
        }
    }
    walk(root, "", &mut |path, node| {
        let mut fail = |what: &str| problems.push(format!("{kind} {path}: {what}"));
        let Some(object) = node.as_object() else {
            return fail("a schema must be an object");
        };
        if object.is_empty() {
            fail("empty schema {}");
        }
        if object.contains_key("$ref") {
            fail("$ref");
        }
        for unsupported in [
            "definitions",
            "$defs",
            "patternProperties",
            "dependencies",
            "additionalItems",
            "id",
            "$schema",
        ] {
            if object.contains_key(unsupported) {
                fail(&format!("{unsupported} is not supported"));
            }
        }
        if object.contains_key("default") {
            fail("default (keep defaults in the operator: a default also fills in on reads)");
        }
        let int_or_string = object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
        let preserve =
            object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if object.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
            fail("x-kubernetes-preserve-unknown-fields must be true or absent");
        }
        let in_branch = path.contains('<');
        let ty = object.get("type");
        match ty {
            None if in_branch => {}
            None if int_or_string || preserve => {}
            None => {
                fail("no type (only int-or-string and preserve-unknown-fields nodes may omit it)")
            }
            Some(Value::String(t)) if in_branch => {
                fail(&format!("type {t} inside anyOf/allOf/oneOf/not"))
            }
            Some(Value::String(t))
                if ["object", "array", "string", "integer", "number", "boolean"]
                    .contains(&t.as_str()) => {}
            Some(other) => fail(&format!("type {other} (must be one type name)")),
        }
        if int_or_string && ty.is_some() {
            fail("x-kubernetes-int-or-string with a type");
        }
        if in_branch {
            for generic in [
                "properties",
                "items",
                "additionalProperties",
                "description",
                "title",
                "nullable",
                "default",
            ] {
                if object.contains_key(generic) {
                    fail(&format!("{generic} inside anyOf/allOf/oneOf/not"));
                }
            }
            if object.keys().any(|k| k.starts_with("x-kubernetes-")) {
                fail("x-kubernetes-* inside anyOf/allOf/oneOf/not");
            }
            return;
        }
        let ty = ty.and_then(Value::as_str).unwrap_or("");
        if let Some(extra) = object.get("additionalProperties") {
            if object.contains_key("properties") {
                fail("additionalProperties beside properties");
            }
            if extra == &Value::Bool(false) {
                fail(
                    "additionalProperties: false (serde's deny_unknown_fields; the API server prunes unknown fields itself)",
                );
            }
            if extra.is_object() && !object.contains_key("maxProperties") {
                fail("map without maxProperties");
            }
        }
        for key in ["exclusiveMinimum", "exclusiveMaximum"] {
            if object.get(key).is_some_and(|v| !v.is_boolean()) {
                fail(&format!("{key} must be a boolean"));
            }
        }
        if ty == "integer" || ty == "number" {
            match (
                object.get("minimum").and_then(Value::as_f64),
                object.get("maximum").and_then(Value::as_f64),
            ) {
                (Some(min), Some(max)) if min <= max => {}
                (Some(_), Some(_)) => fail("minimum above maximum"),
                _ => fail("a number needs both minimum and maximum (format is only a label)"),
            }
        }
        if int_or_string {
            for key in ["minimum", "maximum", "maxLength"] {
                if !object.contains_key(key) {
                    fail(&format!("int-or-string without {key}"));
                }
            }
        }
        if ty == "string"
            && !object.contains_key("maxLength")
            && !object.contains_key("enum")
            && object.get("format") != Some(&Value::from("date-time"))
        {
            fail("string without maxLength (CEL cost estimates need it)");
        }
        if ty == "array" {
            if !object.contains_key("items") {
                fail("array without items");
            }
            if !object.contains_key("maxItems") {
                fail("array without maxItems (CEL cost estimates need it)");
            }
        }
        if let Some(pattern) = object.get("pattern").and_then(Value::as_str)
            && let Err(e) = regex::Regex::new(pattern)
        {
            fail(&format!("pattern does not compile as RE2-style regex: {e}"));
        }
        if let Some(values) = object.get("enum").and_then(Value::as_array) {
            let nullable = object.get("nullable") == Some(&Value::Bool(true));
            if nullable && !values.contains(&Value::Null) {
                fail("nullable enum without null: the API server would refuse an explicit null");
            }
            if !nullable && values.contains(&Value::Null) {
                fail("null in the enum of a non-nullable field");
            }
            if values.iter().any(|v| !v.is_null() && !v.is_string()) {
                fail("enum values must be strings here");
            }
        }
        match object.get("x-kubernetes-list-type").and_then(Value::as_str) {
            None | Some("atomic") => {
                if object.contains_key("x-kubernetes-list-map-keys") {
                    fail("list-map-keys without list-type map");
                }
            }
            Some("set") => {
                let item = object["items"]["type"].as_str().unwrap_or("");
                if !["string", "integer", "number", "boolean"].contains(&item) {
                    fail("list-type set needs scalar items");
                }
            }
            Some("map") => {
                let items = &object["items"];
                let keys = object
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array);
                match keys {
                    None => fail("list-type map without list-map-keys"),
                    Some(keys) if keys.is_empty() => fail("empty list-map-keys"),
                    Some(keys) => {
                        for key in keys {
                            let key = key.as_str().unwrap();
                            let required = items["required"]
                                .as_array()
                                .is_some_and(|r| r.contains(&Value::from(key)));
                            if !required {
                                fail(&format!("list-map key {key} is not required"));
                            }
                            let key_type = items["properties"][key]["type"].as_str().unwrap_or("");
                            if !["string", "integer", "number", "boolean"].contains(&key_type) {
                                fail(&format!("list-map key {key} is not a scalar"));
                            }
                        }
                    }
                }
                if items["type"] != "object" {
                    fail("list-type map needs object items");
                }
            }
            Some(other) => fail(&format!("unknown list-type {other}")),
        }
        if let Some(rules) = object.get("x-kubernetes-validations") {
            for rule in rules.as_array().into_iter().flatten() {
                let text = rule["rule"].as_str().unwrap_or("");
                if text.trim().is_empty() {
                    fail("a validation without a rule");
                }
                match rule.get("message").and_then(Value::as_str) {
                    Some(m) if !m.is_empty() && !m.contains('\n') => {}
                    _ => fail(&format!("rule {text:?} needs a one-line message")),
                }
                for key in rule.as_object().unwrap().keys() {
                    // reason, fieldPath and optionalOldSelf are newer than Kubernetes 1.28.
                    if !["rule", "message"].contains(&key.as_str()) {
                        fail(&format!(
                            "rule {text:?}: {key} is not understood by every supported API server"
                        ));
                    }
                }
                if let Err(e) = kube_cel::cel::Program::compile(text) {
                    fail(&format!("rule {text:?} does not parse: {e}"));
                }
                if text.contains("oldSelf") {
                    fail(&format!(
                        "rule {text:?}: transition rules are not expected here"
                    ));
                }
            }
        }
    });
    problems
}

#[test]
fn schemas_are_structural_and_bounded() {
    let mut problems = Vec::new();
    for kind in KINDS {
        problems.extend(structural_problems(kind, &schema(kind)));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_structural_checker_catches_what_it_should() {
    // What schemars alone writes for some Rust types, and other mistakes: the checker must flag
    // every one of them.
    let bad = serde_json::json!({
        "type": "object",
        "properties": {
            "a": {"$ref": "#/definitions/A"},
            "b": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
            "c": {"type": "integer", "format": "int32"},
            "d": {"type": "object", "properties": {"x": {"type": "string", "maxLength": 1}}, "additionalProperties": false},
            "e": {},
            "f": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMinimum": 0},
            "g": {"type": "array", "items": {"type": "string"}},
            "h": {"type": ["string", "null"], "maxLength": 3},
            "i": {"type": "string", "enum": ["a", "b"], "nullable": true},
            "j": {"type": "array", "maxItems": 2, "x-kubernetes-list-type": "map",
                  "items": {"type": "object", "properties": {"k": {"type": "string", "maxLength": 1}}}},
            "k": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 1}},
            "l": {"type": "string", "maxLength": 9, "pattern": "(unclosed"},
            "m": {"type": "object", "x-kubernetes-validations": [{"rule": "self.a >", "message": "x"}]},
            "n": {"type": "object", "x-kubernetes-validations": [{"rule": "true", "message": "x", "fieldPath": ".a"}]}
        }
    });
    let problems = structural_problems("Bad", &bad);
    for (path, what) in [
        (".a", "$ref"),
        (".b<anyOf0>", "inside anyOf"),
        (".b", "no type"),
        (".c", "minimum and maximum"),
        (".d", "additionalProperties beside properties"),
        (".d", "additionalProperties: false"),
        (".e", "empty schema"),
        (".f", "exclusiveMinimum must be a boolean"),
        (".g", "array without maxItems"),
        (".g[]", "string without maxLength"),
        (".h", "must be one type name"),
        (".i", "nullable enum without null"),
        (".j", "without list-map-keys"),
        (".k", "map without maxProperties"),
        (".l", "pattern does not compile"),
        (".m", "does not parse"),
        (".n", "fieldPath is not understood"),
    ] {
        let want = format!("Bad {path}: ");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&want) && p.contains(what)),
            "{path} ({what}) not flagged: {problems:#?}"
        );
    }
}

/// Every CEL rule in every schema, as (kind, path, rule).
fn all_rules() -> BTreeSet<(String, String, String)> {
    let mut rules = BTreeSet::new();
    for kind in KINDS {
        walk(&schema(kind), "", &mut |path, node| {
            for rule in node
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                rules.insert((
                    kind.to_owned(),
                    path.to_owned(),
                    rule["rule"].as_str().unwrap().to_owned(),
                ));
            }
        });
    }
    rules
}

#[test]
fn cel_rules_are_where_promised() {
    const POSITIVE: &str = "duration(self) >= duration('1ms') && duration(self) <= duration('24h')";
    const WINDOW: &str = "duration(self) <= duration('24h')";
    // One rule a row: `KIND PATH: RULE`, RULE `POSITIVE` or `WINDOW` for the constants above.
    let rows = [
        r#"TrafficSplit .spec: self.backends.exists(b, b.weight > 0)"#,
        r#"TrafficSplit .spec: !has(self.rules) || self.rules.all(r, self.backends.exists(b, b.subset == r.subset))"#,
        r#"TrafficSplit .spec: !has(self.analysis) || self.backends.exists(b, b.subset == self.analysis.canary)"#,
        r#"TrafficSplit .spec.analysis.steps: self.isSorted()"#,
        r#"TrafficSplit .spec.analysis.interval: duration(self) >= duration('1s') && duration(self) <= duration('24h')"#,
        r#"TrafficSplit .spec.analysis.latencyP99: POSITIVE"#,
        r#"ResiliencePolicy .spec.targetRef: self.kind in ['Service', 'Namespace', 'Mesh']"#,
        r#"ResiliencePolicy .spec.targetRef: self.kind == 'Mesh' || has(self.name)"#,
        r#"ResiliencePolicy .spec.targetRef: self.kind != 'Service' || !has(self.name) || self.name.matches('^[a-z]')"#,
        r#"ResiliencePolicy .spec.circuitBreaker: has(self.failureThreshold) || has(self.failureRate)"#,
        r#"ResiliencePolicy .spec.circuitBreaker.window: duration(self) >= duration('1s') && duration(self) <= duration('24h')"#,
        r#"ResiliencePolicy .spec.faults.delay.duration: POSITIVE"#,
        r#"ResiliencePolicy .spec.timeouts: !has(self.perTry) || !has(self.request) || duration(self.perTry) <= duration(self.request)"#,
        r#"ResiliencePolicy .spec.timeouts.request: POSITIVE"#,
        r#"ResiliencePolicy .spec.timeouts.perTry: POSITIVE"#,
        r#"ResiliencePolicy .spec.timeouts.connect: POSITIVE"#,
        r#"ResiliencePolicy .spec.timeouts.idle: POSITIVE"#,
        r#"ResiliencePolicy .spec.retries.backoff: !has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)"#,
        r#"ResiliencePolicy .spec.retries.backoff.base: POSITIVE"#,
        r#"ResiliencePolicy .spec.retries.backoff.max: POSITIVE"#,
        r#"ResiliencePolicy .spec.circuitBreaker.openDuration: POSITIVE"#,
        r#"ResiliencePolicy .spec.outlierDetection.interval: POSITIVE"#,
        r#"ResiliencePolicy .spec.outlierDetection.baseEjectionTime: POSITIVE"#,
        r#"ResiliencePolicy .spec.bulkhead.queueTimeout: POSITIVE"#,
        r#"Autoscaler .spec: self.minReplicas <= self.maxReplicas"#,
        r#"Autoscaler .spec.metrics[]: self.type == 'LatencyP99' ? type(self.target) == string : type(self.target) == int"#,
        r#"Autoscaler .spec.metrics[]: self.type != 'LatencyP99' || type(self.target) != string || (duration(self.target) >= duration('1ms') && duration(self.target) <= duration('24h'))"#,
        r#"Autoscaler .spec.behavior.scaleUp.period: POSITIVE"#,
        r#"Autoscaler .spec.behavior.scaleDown.period: POSITIVE"#,
        r#"Autoscaler .spec.behavior.scaleUp.stabilizationWindow: WINDOW"#,
        r#"Autoscaler .spec.behavior.scaleDown.stabilizationWindow: WINDOW"#,
    ];
    let expected: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|row| {
            let (kind, rest) = row.split_once(' ').expect("KIND PATH: RULE");
            let (path, rule) = rest.split_once(": ").expect("KIND PATH: RULE");
            let rule = match rule {
                "POSITIVE" => POSITIVE,
                "WINDOW" => WINDOW,
                rule => rule,
            };
            (kind.to_owned(), path.to_owned(), rule.to_owned())
        })
        .collect();
    let got = all_rules();
    let missing: Vec<_> = expected.difference(&got).collect();
    let unexpected: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing rules: {missing:#?}\nunexpected rules: {unexpected:#?}"
    );
}

/// The per-rule worst case stays small: every list a rule can iterate is bounded to at most 64
/// items and every string it can compare to at most 1024 characters, and a rule sits under at
/// most one bounded list. With those bounds the costliest rule (TrafficSplit's rule-subset check,
/// 64 × 64 string comparisons of at most 63 characters) is a few ten thousand cost units, far
/// below the API server's limits (10^6 per evaluation, 10^7 per rule estimate, 10^8 per CRD).
#[test]
fn cel_rules_see_only_bounded_data() {
    for kind in KINDS {
        walk(&schema(kind), "", &mut |path, node| {
            if node.get("x-kubernetes-validations").is_none() {
                return;
            }
            assert!(
                path.matches("[]").count() <= 1,
                "{kind} {path}: a rule under nested lists"
            );
            walk(node, path, &mut |inner, n| {
                if let Some(max) = n.get("maxItems") {
                    // The analysis steps (at most 100) are only sorted and checked for
                    // membership: linear work, no nested comparison of lists.
                    let most = if inner.ends_with(".analysis.steps") {
                        100
                    } else {
                        64
                    };
                    assert!(
                        max.as_u64().unwrap() <= most,
                        "{kind} {inner}: maxItems {max}"
                    );
                }
                if let Some(max) = n.get("maxLength") {
                    assert!(
                        max.as_u64().unwrap() <= 65536,
                        "{kind} {inner}: maxLength {max}"
                    );
                }
            });
        });
    }
}

#[test]
fn durations_have_the_pattern() {
    let durations = [
        ("ResiliencePolicy", ".spec.timeouts.request"),
        ("ResiliencePolicy", ".spec.timeouts.perTry"),
        ("ResiliencePolicy", ".spec.timeouts.connect"),
        ("ResiliencePolicy", ".spec.timeouts.idle"),
        ("ResiliencePolicy", ".spec.retries.backoff.base"),
        ("ResiliencePolicy", ".spec.retries.backoff.max"),
        ("ResiliencePolicy", ".spec.circuitBreaker.openDuration"),
        ("ResiliencePolicy", ".spec.outlierDetection.interval"),
        (
            "ResiliencePolicy",
            ".spec.outlierDetection.baseEjectionTime",
        ),
        ("ResiliencePolicy", ".spec.bulkhead.queueTimeout"),
        ("ResiliencePolicy", ".spec.circuitBreaker.window"),
        ("ResiliencePolicy", ".spec.faults.delay.duration"),
        ("Autoscaler", ".spec.behavior.scaleUp.stabilizationWindow"),
        ("Autoscaler", ".spec.behavior.scaleUp.period"),
        ("Autoscaler", ".spec.behavior.scaleDown.stabilizationWindow"),
        ("Autoscaler", ".spec.behavior.scaleDown.period"),
        ("Autoscaler", ".spec.metrics[].target"),
        ("TrafficSplit", ".spec.analysis.interval"),
        ("TrafficSplit", ".spec.analysis.latencyP99"),
    ];
    let mut found = BTreeSet::new();
    for kind in KINDS {
        walk(&schema(kind), "", &mut |path, node| {
            if node.get("pattern").and_then(Value::as_str)
                == Some(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
            {
                assert_eq!(node["maxLength"], 32, "{kind} {path}");
                found.insert((kind, path.to_owned()));
            }
        });
    }
    let expected: BTreeSet<(&str, String)> = durations
        .iter()
        .map(|(k, p)| (*k, (*p).to_owned()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn unique_keys_are_list_maps() {
    let list = |kind: &str, path: &str| {
        let mut found = None;
        walk(&schema(kind), "", &mut |p, node| {
            if p == path {
                found = Some(node.clone());
            }
        });
        found.unwrap_or_else(|| panic!("{kind} {path}"))
    };
    // Every kind's conditions are keyed by `type`, as Kubernetes' own are.
    let conditions = KINDS.map(|kind| (kind, ".status.conditions", "type"));
    for (kind, path, key) in [
        ("TrafficSplit", ".spec.backends", "subset"),
        ("Autoscaler", ".spec.metrics", "type"),
    ]
    .into_iter()
    .chain(conditions)
    {
        let node = list(kind, path);
        assert_eq!(node["x-kubernetes-list-type"], "map", "{kind} {path}");
        assert_eq!(
            node["x-kubernetes-list-map-keys"],
            serde_json::json!([key]),
            "{kind} {path}"
        );
    }
    assert_eq!(
        list("ResiliencePolicy", ".spec.retries.retryOn")["x-kubernetes-list-type"],
        "set"
    );
    assert_eq!(list("TrafficSplit", ".spec.backends")["minItems"], 1);
    // The Condition shape.
    let condition = &list("ResiliencePolicy", ".status.conditions")["items"];
    let required: BTreeSet<&str> = common::strings(&condition["required"]);
    assert_eq!(
        required,
        BTreeSet::from(["lastTransitionTime", "message", "reason", "status", "type"])
    );
    assert_eq!(
        condition["properties"]["status"]["enum"],
        serde_json::json!(["True", "False", "Unknown"])
    );
}

#[test]
fn every_rule_evaluates_on_the_design_examples() {
    // admit() evaluates every rule where the examples have data; make sure that covers every rule
    // that has data to see in the examples (so none is silently skipped).
    let mut evaluated = BTreeSet::new();
    for (file, kind) in [
        ("trafficsplit.yaml", "TrafficSplit"),
        ("resiliencepolicy.yaml", "ResiliencePolicy"),
        ("autoscaler.yaml", "Autoscaler"),
    ] {
        let object = common::example(file);
        walk(&schema(kind), "", &mut |path, node| {
            if node.get("x-kubernetes-validations").is_none() {
                return;
            }
            let pointer = path.replace("[]", "/0").replace('.', "/");
            if object.pointer(&pointer).is_some() {
                for rule in node["x-kubernetes-validations"].as_array().unwrap() {
                    let value = object.pointer(&pointer).unwrap();
                    let rule = rule["rule"].as_str().unwrap();
                    assert_eq!(
                        common::evaluate(rule, value),
                        Ok(true),
                        "{kind} {path}: {rule}"
                    );
                    evaluated.insert((kind.to_owned(), path.to_owned(), rule.to_owned()));
                }
            }
        });
    }
    assert_eq!(evaluated, all_rules(), "a rule the examples do not reach");
}
