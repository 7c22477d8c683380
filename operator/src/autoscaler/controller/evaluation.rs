//! One evaluation of one Autoscaler, steps 1–7 of the [controller](super): the spec, the
//! target's `scale`, a conflicting HPA, the pods' sidecars and CPU, the decision and its
//! actuation (scale patch, Event), then status. The outcome is what status reports; the
//! API errors that should make the controller back off are returned beside it.

use super::{Clock, Context, Error, FIELD_MANAGER, Tracked};
use crate::autoscaler::Scaler;
use crate::autoscaler::algorithm::{Observation, Pod as AlgorithmPod, PodPhase, Sample, Verdict};
use crate::autoscaler::status::{Outcome, now_time, truncate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use weir_crds::{Autoscaler, AutoscalerStatus, MetricType};

fn since_epoch(time: &Time) -> Duration {
    Duration::from_millis(time.0.as_millisecond().max(0) as u64)
}

/// Steps 1–6: what status should say, and the API error to back off for, if any.
pub(super) async fn evaluate(
    context: &Context,
    autoscaler: &Autoscaler,
    tracked: &mut Tracked,
) -> (Outcome, Option<Error>) {
    let mut failure = None;
    let outcome = decide(context, autoscaler, tracked, &mut failure).await;
    (outcome, failure)
}

async fn decide(
    context: &Context,
    autoscaler: &Autoscaler,
    tracked: &mut Tracked,
    failure: &mut Option<Error>,
) -> Outcome {
    let (client, settings) = (&context.client, &context.settings);
    let namespace = autoscaler.namespace().unwrap_or_default();
    let name = autoscaler.name_any();
    let refused = Outcome::refused;
    // 1. The spec.
    let generation = autoscaler.metadata.generation;
    if tracked.scaler.is_none() || tracked.generation != generation {
        let parsed = match tracked.scaler.as_mut() {
            Some(scaler) => scaler.update(&autoscaler.spec),
            None => Scaler::new(&autoscaler.spec).map(|s| tracked.scaler = Some(s)),
        };
        if let Err(error) = parsed {
            tracked.scaler = None;
            return refused("Invalid", error.to_string());
        }
        tracked.generation = generation;
    }
    let target = &autoscaler.spec.target_ref;
    if target.kind != "Deployment" || target.api_version != "apps/v1" {
        return refused(
            "UnsupportedTarget",
            format!(
                "only apps/v1 Deployments are scaled, not {} {}",
                target.api_version, target.kind
            ),
        );
    }
    // 2. The scale subresource.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let scale: Scale = match deployments.get_scale(&target.name).await {
        Ok(scale) => scale,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return refused(
                "TargetNotFound",
                format!("Deployment {namespace}/{} does not exist", target.name),
            );
        }
        Err(error) => {
            let mut outcome = Outcome::accepted();
            outcome.able_to_scale = Some(Verdict {
                status: false,
                reason: "FailedGetScale",
                message: format!("reading the scale of Deployment {}: {error}", target.name),
            });
            *failure = Some(Error::ReadScale {
                deployment: target.name.clone(),
                source: error,
            });
            return outcome;
        }
    };
    let spec_replicas = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let status_replicas = scale.status.as_ref().map(|s| s.replicas);
    let selector = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();

    // 3. Another HPA on the same target.
    let conflicting = context.hpas.state().into_iter().find(|hpa| {
        hpa.namespace().as_deref() == Some(namespace.as_str())
            && hpa.spec.as_ref().is_some_and(|spec| {
                spec.scale_target_ref.kind == "Deployment"
                    && spec.scale_target_ref.name == target.name
            })
    });
    if let Some(hpa) = conflicting {
        let mut outcome = Outcome::accepted();
        outcome.current_replicas = status_replicas;
        outcome.able_to_scale = Some(Verdict {
            status: false,
            reason: "ConflictingHPA",
            message: format!(
                "HorizontalPodAutoscaler {} also scales Deployment {}: Weir leaves the scale alone while it exists",
                hpa.name_any(),
                target.name
            ),
        });
        return outcome;
    }

    // 4. Pods and their sidecars.
    let Some(scaler) = tracked.scaler.as_mut() else {
        return refused("Invalid", "no spec".to_owned());
    };
    let now = context.clock.now();
    let pods: Vec<Arc<Pod>> = context
        .pods
        .state()
        .into_iter()
        .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|p| selects(&selector, p.labels()))
        .collect();
    let wanted: Vec<MetricType> = scaler.sidecar_metrics();
    let mut samples: Vec<Sample> = Vec::new();
    if !wanted.is_empty() {
        let scraper = &tracked.scraper;
        let fetches = pods.iter().filter_map(|pod| {
            let ip: IpAddr = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
            if phase(pod) != PodPhase::Running {
                return None;
            }
            let addr = SocketAddr::new(ip, settings.admin_port);
            let name = pod.name_any();
            Some(async move { (name, scraper.fetch(addr).await) })
        });
        let texts = futures::future::join_all(fetches).await;
        for (pod, text) in texts {
            match text {
                Ok(text) => samples.extend(tracked.scraper.samples(&pod, now, &text, &wanted)),
                Err(error) => tracing::debug!(%namespace, pod, %error, "sidecar scrape failed"),
            }
        }
        tracked
            .scraper
            .retain(|pod| pods.iter().any(|p| p.name_any() == pod));
    }
    // 5. CPU from metrics.k8s.io.
    // Not while it is known absent: CPU stays unknown, as when the request fails.
    if scaler.spec.target(MetricType::Cpu).is_some()
        && context
            .metrics_api
            .lock()
            .may_ask(tokio::time::Instant::now())
    {
        match cpu_samples(&context.clock, client, &namespace, &selector, &pods).await {
            Ok(cpu) => {
                context.metrics_api.lock().answered();
                samples.extend(cpu);
            }
            Err(error) => {
                context
                    .metrics_api
                    .lock()
                    .failed(tokio::time::Instant::now());
                tracing::debug!(%namespace, %name, %error, "no CPU metrics (metrics.k8s.io); asking again later")
            }
        }
    }

    // 6. Decide and act.
    let observation = Observation {
        now,
        spec_replicas,
        pods: pods.iter().map(|p| algorithm_pod(p)).collect(),
        samples,
    };
    let decision = scaler.evaluate(&observation);
    let mut outcome = Outcome::accepted();
    outcome.current_replicas = status_replicas;
    if decision.rescale() {
        let patch = serde_json::json!({"spec": {"replicas": decision.desired_replicas}});
        // Named, not left to the API server's guess from the User-Agent.
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let reference = autoscaler.object_ref(&());
        match deployments
            .patch_scale(&target.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                scaler.record_scale(now, spec_replicas, decision.desired_replicas);
                tracked.last_scale_time = Some(now_time());
                tracing::info!(%namespace, %name, deployment = %target.name, "{}", decision.summary());
                let event = Event {
                    type_: EventType::Normal,
                    reason: "SuccessfulRescale".to_owned(),
                    note: Some(truncate(
                        &format!(
                            "New size: {}; {}",
                            decision.desired_replicas,
                            decision.summary()
                        ),
                        1000,
                    )),
                    action: "Scale".to_owned(),
                    secondary: None,
                };
                // Each scale is an Event of its own. kube-runtime's Recorder keys a series on
                // type, reason, action, reporter and object — not on the note — so through the
                // long-lived recorder a second scale would only bump the first Event's count and
                // `kubectl describe` would show "New size: 3 (x6)" for 2→3→4→6→8→4→2. A fresh
                // recorder has no series to extend. (Repeated FailedRescale warnings do fold
                // into one series, through the long-lived one: that is what a series is for.)
                let once = Recorder::new(
                    client.clone(),
                    Reporter {
                        controller: FIELD_MANAGER.to_owned(),
                        instance: Some(settings.identity.clone()),
                    },
                );
                if let Err(error) = once.publish(&event, &reference).await {
                    tracing::warn!(%namespace, %name, %error, "publishing an Event failed");
                }
            }
            Err(error) => {
                tracing::warn!(%namespace, %name, %error, "writing the scale failed");
                outcome.able_to_scale = Some(Verdict {
                    status: false,
                    reason: "FailedUpdateScale",
                    message: format!("writing the scale of Deployment {}: {error}", target.name),
                });
                let event = Event {
                    type_: EventType::Warning,
                    reason: "FailedRescale".to_owned(),
                    note: Some(truncate(
                        &format!("New size: {}; {error}", decision.desired_replicas),
                        1000,
                    )),
                    action: "Scale".to_owned(),
                    secondary: None,
                };
                let _ = context.recorder.publish(&event, &reference).await;
                *failure = Some(Error::WriteScale {
                    deployment: target.name.clone(),
                    source: error,
                });
            }
        }
    }
    outcome.decision = Some(decision);
    outcome
}

fn phase(pod: &Pod) -> PodPhase {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodPhase::Terminating;
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Failed" | "Succeeded") => PodPhase::Finished,
        _ => PodPhase::Pending,
    }
}

/// A Kubernetes Pod as the algorithm sees it.
fn algorithm_pod(pod: &Pod) -> AlgorithmPod {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    AlgorithmPod {
        name: pod.name_any(),
        phase: phase(pod),
        ready: ready.is_some_and(|c| c.status == "True"),
        started_at: status.and_then(|s| s.start_time.as_ref()).map(since_epoch),
        ready_changed_at: ready.map(|c| {
            c.last_transition_time
                .as_ref()
                .map(since_epoch)
                .unwrap_or_default()
        }),
    }
}

/// Whether `labels` match a label selector in its string form (`a=b,c!=d,e,!f,g in (x,y),h
/// notin (z)`), as the scale subresource gives it.
pub fn selects(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .all(|term| {
            let set = |rest: &str| -> Vec<String> {
                rest.trim()
                    .trim_start_matches('(')
                    .trim_end_matches(')')
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect()
            };
            if let Some((key, rest)) = term.split_once(" notin ") {
                !labels
                    .get(key.trim())
                    .is_some_and(|v| set(rest).contains(v))
            } else if let Some((key, rest)) = term.split_once(" in ") {
                labels
                    .get(key.trim())
                    .is_some_and(|v| set(rest).contains(v))
            } else if let Some((key, value)) = term.split_once("!=") {
                labels.get(key.trim()).map(String::as_str) != Some(value.trim())
            } else if let Some((key, value)) = term.split_once('=') {
                let value = value.trim_start_matches('=').trim();
                labels.get(key.trim()).map(String::as_str) == Some(value)
            } else if let Some(key) = term.strip_prefix('!') {
                !labels.contains_key(key.trim())
            } else {
                labels.contains_key(term)
            }
        })
}

/// A CPU quantity (`250m`, `1`, `1500000n`, `20u`) in millicores.
pub fn cpu_millis(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let (number, factor) = if let Some(n) = q.strip_suffix('n') {
        (n, 1e-6)
    } else if let Some(n) = q.strip_suffix('u') {
        (n, 1e-3)
    } else if let Some(n) = q.strip_suffix('m') {
        (n, 1.0)
    } else {
        (q, 1000.0)
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// Per-pod CPU as a percentage of the pod's requests, from `metrics.k8s.io/v1beta1`.
async fn cpu_samples(
    clock: &Clock,
    client: &Client,
    namespace: &str,
    selector: &str,
    pods: &[Arc<Pod>],
) -> anyhow::Result<Vec<Sample>> {
    let mut url = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods");
    if !selector.is_empty() {
        url.push_str("?labelSelector=");
        url.push_str(&percent_encode(selector));
    }
    let request = http::Request::get(url).body(Vec::new())?;
    let list: serde_json::Value = client.request(request).await?;
    let mut out = Vec::new();
    for item in list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let Some(pod) = pods.iter().find(|p| p.name_any() == name) else {
            continue;
        };
        let requested: Option<f64> = pod.spec.as_ref().and_then(|spec| {
            spec.containers
                .iter()
                .map(|c| {
                    c.resources
                        .as_ref()
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("cpu"))
                        .and_then(|q| cpu_millis(&q.0))
                })
                .sum::<Option<f64>>()
        });
        let Some(requested) = requested.filter(|r| *r > 0.0) else {
            continue; // without requests there is no utilization, as for the HPA
        };
        let used: f64 = item["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["usage"]["cpu"].as_str().and_then(cpu_millis))
            .sum();
        let at = item["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| since_epoch(&Time(t)))
            .unwrap_or_else(|| clock.now());
        let window = item["window"]
            .as_str()
            .and_then(|w| w.parse::<weir_proxy_api::Duration>().ok())
            .map(|d| d.get())
            .unwrap_or_default();
        out.push(Sample {
            pod: name.to_owned(),
            metric: MetricType::Cpu,
            at,
            window,
            value: used / requested * 100.0,
        });
    }
    Ok(out)
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Writes status by server-side apply when it changed (metric values alone: at most every
/// `status_interval`).
pub(super) async fn write_status(
    context: &Context,
    autoscaler: &Autoscaler,
    tracked: &mut Tracked,
    outcome: &Outcome,
) -> Result<(), kube::Error> {
    let current = tracked
        .written
        .as_ref()
        .map(|(s, _)| s.clone())
        .or_else(|| autoscaler.status.clone());
    let desired = crate::autoscaler::status::status(
        autoscaler.metadata.generation,
        outcome,
        tracked.last_scale_time.clone(),
        current.as_ref(),
        &now_time(),
    );
    if let Some(current) = &current {
        let same_but_values = AutoscalerStatus {
            current_metrics: desired.current_metrics.clone(),
            ..current.clone()
        } == desired;
        let fresh = tracked
            .written
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < context.settings.status_interval);
        if *current == desired || (same_but_values && fresh) {
            return Ok(());
        }
    }
    let api: Api<Autoscaler> = Api::namespaced(
        context.client.clone(),
        &autoscaler.namespace().unwrap_or_default(),
    );
    let patch = serde_json::json!({
        "apiVersion": Autoscaler::api_version(&()),
        "kind": Autoscaler::kind(&()),
        "status": desired,
    });
    api.patch_status(
        &autoscaler.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    tracked.written = Some((desired, tokio::time::Instant::now()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_in_string_form() {
        let labels: BTreeMap<String, String> = [("app", "orders"), ("tier", "web")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        for (selector, expected) in [
            ("", true),
            ("app=orders", true),
            ("app==orders,tier=web", true),
            ("app=payments", false),
            ("app!=payments", true),
            ("tier", true),
            ("!tier", false),
            ("app in (orders,payments),tier notin (db)", true),
            ("app notin (orders)", false),
            ("zone in (a,b)", false),
        ] {
            assert_eq!(selects(selector, &labels), expected, "{selector}");
        }
    }

    #[test]
    fn cpu_quantities() {
        assert_eq!(cpu_millis("250m"), Some(250.0));
        assert_eq!(cpu_millis("2"), Some(2000.0));
        assert_eq!(cpu_millis("0.5"), Some(500.0));
        assert_eq!(cpu_millis("1500000n"), Some(1.5));
        assert_eq!(cpu_millis("20u"), Some(0.02));
        assert_eq!(cpu_millis("lots"), None);
    }
}
