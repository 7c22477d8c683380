//! `POST /inject`: an `admission.k8s.io/v1` AdmissionReview in, one out, with kube's types.
//!
//! The answer is always a review the API server can act on, except for a body that is not an
//! AdmissionReview at all, which gets `400` and a plain-text error (the API server treats it as
//! a webhook failure and applies the `failurePolicy`). Inside a well-formed review:
//! - a pod to inject → allowed, with the JSONPatch (`patchType: JSONPatch`, base64 on the wire:
//!   [`to_wire`]);
//! - a pod left alone, or anything other than a pod `CREATE` → allowed, no patch;
//! - a bad `weir.dev/*` annotation, or a pod object that does not parse → denied (code 400)
//!   with a message naming the annotation (or the field) and why.
//!
//! # Which pods arrive here
//!
//! The API server only sends what the MutatingWebhookConfiguration selects (see the chart's
//! `webhook.yaml`): pods in namespaces labelled `weir.dev/inject=enabled`, and pods labelled
//! `weir.dev/inject=enabled` elsewhere. Either way the pod was selected for injection, so the
//! handler decides as if the namespace carried the label: it still honours the pod's own
//! `weir.dev/inject: disabled` (annotation or label) and the idempotency mark. An *annotation*
//! `weir.dev/inject: enabled` in an unlabelled namespace cannot reach this handler (the API
//! server selects on labels only), which is why the label is the pod-level opt-in.

use super::annotations;
use super::inject::{InjectionSettings, Outcome, plan};
use crate::metrics;
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use prometheus::IntCounterVec;
use std::collections::BTreeMap;

/// The path the MutatingWebhookConfiguration calls.
pub const INJECT_PATH: &str = "/inject";
/// A pod is at most ~1.5 MiB in etcd; a review carries it (and on update, twice).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The review to send back for one request body, or a reason to answer `400`.
pub fn review(
    body: &[u8],
    settings: &InjectionSettings,
) -> Result<AdmissionReview<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {:?}, {:?}",
            review.types.api_version, review.types.kind
        ));
    }
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())?;
    Ok(respond(&request, settings).into_review())
}

/// The decision for one request.
pub fn respond(
    request: &AdmissionRequest<DynamicObject>,
    settings: &InjectionSettings,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if request.operation != Operation::Create || !is_pod || request.sub_resource.is_some() {
        return response;
    }
    let Some(object) = &request.object else {
        return deny(response, "the request carries no pod object".to_owned());
    };
    let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
        Ok(pod) => pod,
        Err(e) => return deny(response, format!("the pod does not parse: {e}")),
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let what = pod
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    // Reaching this handler means a webhook selector chose the pod (module doc).
    let selected = BTreeMap::from([(annotations::INJECT.to_owned(), "enabled".to_owned())]);
    match plan(&pod, &selected, settings) {
        Ok(Outcome::Inject { patch, warnings }) => {
            tracing::info!(namespace = %namespace, pod = %what, uid = %request.uid, "injecting the sidecar");
            let mut response = match response.clone().with_patch(patch) {
                Ok(response) => response,
                Err(e) => return deny(response, format!("internal error: {e}")),
            };
            if !warnings.is_empty() {
                response.warnings = Some(warnings);
            }
            response
        }
        Ok(Outcome::Skip(skip)) => {
            tracing::debug!(namespace = %namespace, pod = %what, reason = skip.as_str(), "not injecting");
            response
        }
        Err(denial) => {
            tracing::info!(namespace = %namespace, pod = %what, %denial, "denied");
            deny(response, denial.to_string())
        }
    }
}

fn deny(response: AdmissionResponse, message: String) -> AdmissionResponse {
    let mut response = response.deny(&message);
    response.result = kube::core::Status::failure(&message, "BadRequest").with_code(400);
    response
}

/// The review as the API server expects it on the wire: like serde's form of kube's type, but
/// with `response.patch` as a base64 string (Go's `[]byte`), not an array of numbers.
pub fn to_wire(review: &AdmissionReview<DynamicObject>) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(review)?;
    if let Some(patch) = review.response.as_ref().and_then(|r| r.patch.clone()) {
        value["response"]["patch"] = serde_json::to_value(k8s_openapi::ByteString(patch))?;
    }
    serde_json::to_vec(&value)
}

/// What the webhook did with a request, as `weir_webhook_admissions_total` counts it.
pub fn outcome_of(review: &AdmissionReview<DynamicObject>) -> &'static str {
    match &review.response {
        Some(r) if !r.allowed => metrics::ADMISSION_DENIED,
        Some(r) if r.patch.is_some() => metrics::ADMISSION_INJECTED,
        _ => metrics::ADMISSION_SKIPPED,
    }
}

/// Routes one HTTP request (its body already read, at most [`MAX_BODY_BYTES`]), counting
/// admission requests in `admissions` when given.
pub fn handle(
    method: &Method,
    path: &str,
    body: Result<Bytes, String>,
    settings: &InjectionSettings,
    admissions: Option<&IntCounterVec>,
) -> Response<Full<Bytes>> {
    let count = |result: &str| {
        if let Some(counter) = admissions {
            counter.with_label_values(&[result]).inc();
        }
    };
    match (method, path) {
        (&Method::POST, INJECT_PATH) => match body.and_then(|b| review(&b, settings)) {
            Ok(review) => match to_wire(&review) {
                Ok(json) => {
                    count(outcome_of(&review));
                    let mut response = Response::new(Full::new(Bytes::from(json)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            Err(e) => {
                count(metrics::ADMISSION_MALFORMED);
                tracing::warn!(error = %e, "malformed admission request");
                text(StatusCode::BAD_REQUEST, format!("{e}\n"))
            }
        },
        (_, INJECT_PATH) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "POST an AdmissionReview to /inject\n".to_owned(),
        ),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the webhook serves POST /inject\n".to_owned(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
