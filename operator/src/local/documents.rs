//! Parsing a file's documents into resources, each refusal naming the file, the document (its
//! 1-based index in the file) and the field.
//!
//! The YAML is read by `serde-saphyr` into untyped `serde_json::Value`s, then each is typed by
//! its `kind`. The file is cut into its documents here rather than by the crate's
//! multi-document reader: that reader skips empty documents, which would shift the index every
//! refusal names (an empty document, e.g. after a trailing `---`, counts as one, as `kubectl`
//! counts them). Cutting is exact because a line starting `---` (alone or followed by a space) is
//! always a document marker in YAML, even inside a block scalar. Each document is parsed with as
//! many line breaks before it as lines precede it, so the line a syntax error names is the
//! file's.

use super::Resources;
use kube::Resource;
use serde::de::DeserializeOwned;

/// A document that was refused, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: document {document}: {field}{message}")]
pub struct FileError {
    pub file: String,
    /// 1-based index of the document in the file.
    pub document: usize,
    /// ``field `spec.backends[0].weight`: `` or empty.
    pub field: String,
    pub message: String,
}

/// Parses one file's text; all or nothing, so a half-edited file never applies half its changes.
pub fn parse_file(file: &str, text: &str) -> Result<Resources, FileError> {
    let mut resources = Resources::default();
    for (index, (document, line)) in documents(text).enumerate() {
        let document_no = index + 1;
        let fail = |field: String, message: String| FileError {
            file: file.to_owned(),
            document: document_no,
            field: if field.is_empty() {
                String::new()
            } else {
                format!("field `{field}`: ")
            },
            message,
        };
        if is_blank(document) {
            continue; // an empty document, e.g. after a trailing `---`
        }
        // One line per refusal: no source snippet under the message.
        let value: serde_json::Value = serde_saphyr::from_str_with_options(
            &format!("{}{document}", "\n".repeat(line)),
            serde_saphyr::options! { with_snippet: false },
        )
        .map_err(|e| fail(String::new(), e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let expected = format!("{}/{}", weir_crds::GROUP, weir_crds::VERSION);
        if api_version != expected {
            return Err(fail(
                "apiVersion".into(),
                format!("expected {expected}, found {api_version:?}"),
            ));
        }
        match kind {
            "TrafficSplit" => resources.splits.push(typed(value, &fail)?),
            "ResiliencePolicy" => resources.policies.push(typed(value, &fail)?),
            "Autoscaler" => resources.autoscalers.push(typed(value, &fail)?),
            "LocalService" => resources.local_services.push(typed(value, &fail)?),
            other => {
                return Err(fail(
                    "kind".into(),
                    format!(
                        "{other:?} is not one of TrafficSplit, ResiliencePolicy, Autoscaler, LocalService"
                    ),
                ));
            }
        }
    }
    identify(file, "TrafficSplit", &mut resources.splits);
    identify(file, "ResiliencePolicy", &mut resources.policies);
    identify(file, "Autoscaler", &mut resources.autoscalers);
    identify(file, "LocalService", &mut resources.local_services);
    Ok(resources)
}

/// Gives each definition a uid of its own, as the API server gives each object one: the file,
/// the kind, the name and how many definitions of that name precede it in the file. What the
/// translation remembers of a resource (a refused split's last good weights) is matched by uid,
/// so a name defined twice (in two files, or twice in one; `weir-operator check` reports it as
/// `Duplicate`) is two resources, each judged against its own past, and a translation of the
/// same folder gives the same result however often it runs. Editing other documents of the file
/// keeps the uid; a user's own `metadata.uid` is kept.
fn identify<K: Resource>(file: &str, kind: &str, list: &mut [K]) {
    let mut seen: std::collections::HashMap<(Option<String>, Option<String>), usize> =
        std::collections::HashMap::new();
    for resource in list {
        let meta = resource.meta_mut();
        let earlier = seen
            .entry((meta.namespace.clone(), meta.name.clone()))
            .or_default();
        if meta.uid.is_none() {
            meta.uid = Some(format!(
                "local:{file}:{kind}:{}/{}#{earlier}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ));
        }
        *earlier += 1;
    }
}

/// Deserializes a resource, refusing unknown fields as the API server's strict field validation
/// does (the CRD types themselves accept them, as CRD types must), and defaulting the namespace.
fn typed<K>(
    value: serde_json::Value,
    fail: &dyn Fn(String, String) -> FileError,
) -> Result<K, FileError>
where
    K: DeserializeOwned + Resource,
{
    let resource: K = serde_path_to_error::deserialize(value.clone())
        .map_err(|e| fail(e.path().to_string(), e.into_inner().to_string()))?;
    let mut unknown = Vec::new();
    let _: Result<K, _> = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
    // apiVersion and kind were checked by the caller; metadata and status are not ours to judge.
    let ours = |p: &String| {
        !(p == "apiVersion"
            || p == "kind"
            || p == "status"
            || p.starts_with("metadata.")
            || p.starts_with("status."))
    };
    if let Some(path) = unknown.into_iter().find(ours) {
        return Err(fail(path, "unknown field".into()));
    }
    let mut resource = resource;
    let meta = resource.meta_mut();
    if meta.name.as_deref().unwrap_or_default().is_empty() {
        return Err(fail("metadata.name".into(), "required".into()));
    }
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    Ok(resource)
}

/// The documents of `text`, each with the number of lines before it: what follows each `---`
/// marker (the rest of the marker's line included), and what precedes the first marker when it
/// holds more than comments.
fn documents(text: &str) -> impl Iterator<Item = (&str, usize)> {
    let mut documents = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let content = line.trim_end_matches(['\n', '\r']);
        let marker = content
            .strip_prefix("---")
            .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']));
        if let Some(rest) = marker {
            let before = &text[start..offset];
            if !documents.is_empty() || !is_blank(before) {
                documents.push((before, start_line));
            }
            // The marker's own line may carry the document's first node (`--- {a: 1}`).
            start = offset + (content.len() - rest.len());
            start_line = number;
        }
        offset += line.len();
    }
    let last = &text[start..];
    // A file with no marker at all is one document, even empty; after a marker, what follows
    // is a document even when empty (it is skipped, but counted).
    if documents.is_empty() && is_blank(last) && start == 0 {
        return documents.into_iter();
    }
    documents.push((last, start_line));
    documents.into_iter()
}

/// Whether `text` holds nothing but blank lines, comments and directives (an empty document).
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim_start();
        line.is_empty() || line.starts_with('#') || line.starts_with('%')
    })
}
