//! The control plane: CRDs, the operator Deployment and its Lease, the injection webhook.

use super::{CallError, Cluster, OPERATOR_SELECTOR, Operator, unchecked};
use crate::check::{Finding, Group, Severity};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use std::time::SystemTime;

const APPLY_CRDS: &str = "kubectl apply --server-side -f crds/ (from the release of this binary; \
    `helm upgrade` does not update CRDs)";

/// Each Weir CRD is installed, established and serves the versions and schemas compiled into
/// this binary.
pub(super) async fn crds(cluster: &Cluster) -> Vec<Finding> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut findings = Vec::new();
    for wanted in weir_crds::crds() {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let subject = format!("CRD {name}");
        let served = match cluster.bounded(api.get(&name)).await {
            Ok(served) => served,
            Err(CallError::NotFound) => {
                findings.push(Finding::new(
                    Severity::Error,
                    Group::Crds,
                    "CrdMissing",
                    subject,
                    "is not installed",
                    APPLY_CRDS,
                ));
                continue;
            }
            Err(e) => {
                findings.push(unchecked(Group::Crds, &subject, &e));
                continue;
            }
        };
        let differences = crd_differences(&wanted, &served);
        if !differences.is_empty() {
            findings.push(Finding::new(
                Severity::Error,
                Group::Crds,
                "CrdStale",
                subject.clone(),
                format!(
                    "differs from the one compiled into this weir-operator ({}): {}",
                    env!("CARGO_PKG_VERSION"),
                    differences.join("; ")
                ),
                APPLY_CRDS,
            ));
        }
        let established = served
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
        if let Some(condition) = established
            && condition.status != "True"
        {
            findings.push(Finding::new(
                Severity::Error,
                Group::Crds,
                "CrdNotEstablished",
                subject,
                format!(
                    "is not established: {}",
                    condition.message.clone().unwrap_or_default()
                ),
                format!("kubectl describe crd {name}"),
            ));
        }
    }
    findings
}

/// What differs between the compiled CRD and the served one, version by version: missing
/// versions, `served`/`storage` flags, schemas, subresources and printer columns (compared as
/// JSON, both sides through the same types so defaults cannot differ by spelling).
pub fn crd_differences(
    wanted: &CustomResourceDefinition,
    served: &CustomResourceDefinition,
) -> Vec<String> {
    let mut differences = Vec::new();
    for version in &wanted.spec.versions {
        let Some(have) = served.spec.versions.iter().find(|v| v.name == version.name) else {
            differences.push(format!("version {} is not served", version.name));
            continue;
        };
        if have.served != version.served || have.storage != version.storage {
            differences.push(format!(
                "version {}: served/storage are {}/{}, expected {}/{}",
                version.name, have.served, have.storage, version.served, version.storage
            ));
        }
        if let Some(at) = first_difference(&json(&version.schema), &json(&have.schema), "schema") {
            differences.push(format!(
                "version {}: the schema differs at {at}",
                version.name
            ));
        }
        if first_difference(&json(&version.subresources), &json(&have.subresources), "").is_some() {
            differences.push(format!("version {}: the subresources differ", version.name));
        }
        if first_difference(
            &json(&version.additional_printer_columns),
            &json(&have.additional_printer_columns),
            "",
        )
        .is_some()
        {
            differences.push(format!(
                "version {}: the printer columns differ",
                version.name
            ));
        }
    }
    differences
}

/// The path of the first place where `served` differs from `wanted`, if any.
fn first_difference(
    wanted: &serde_json::Value,
    served: &serde_json::Value,
    path: &str,
) -> Option<String> {
    use serde_json::Value;
    match (wanted, served) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|key| {
                let inner = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => first_difference(x, y, &inner),
                    _ => Some(inner),
                }
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, &format!("{path}[{i}]"))),
        // The API server may give back `1` for `1.0`, and serde_json's float parsing is not
        // exact in the last bit (9007199254740991.0 reads back as ...990): numbers are
        // compared as numbers, equal within a relative 1e-12.
        (Value::Number(a), Value::Number(b))
            if a.as_f64()
                .zip(b.as_f64())
                .is_some_and(|(a, b)| (a - b).abs() <= 1e-12 * a.abs().max(b.abs())) =>
        {
            None
        }
        (a, b) if a == b => None,
        _ => Some(path.to_owned()),
    }
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// The operator Deployments (by the chart's labels, in every namespace): each must have every
/// replica ready and, with leader election, a leader holding an unexpired Lease.
pub(super) async fn operators(cluster: &Cluster, findings: &mut Vec<Finding>) -> Vec<Operator> {
    let api: Api<Deployment> = Api::all(cluster.client.clone());
    let deployments = match cluster.list(&api, OPERATOR_SELECTOR).await {
        Ok(found) => found,
        Err(e) => {
            findings.push(unchecked(Group::Operator, "operator Deployment", &e));
            return Vec::new();
        }
    };
    let operators: Vec<Operator> = deployments.into_iter().filter_map(Operator::new).collect();
    if operators.is_empty() {
        findings.push(Finding::new(
            Severity::Error,
            Group::Operator,
            "OperatorMissing",
            "operator Deployment",
            format!("none found (no Deployment labelled {OPERATOR_SELECTOR})"),
            "helm install weir charts/weir -n weir-system --create-namespace",
        ));
    }
    for operator in &operators {
        findings.extend(readiness(operator));
        findings.extend(leader(cluster, operator).await);
    }
    operators
}

fn readiness(operator: &Operator) -> Option<Finding> {
    let wanted = operator
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = operator
        .deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let (namespace, name) = (&operator.namespace, &operator.name);
    let (code, message, hint) = if wanted == 0 {
        (
            "OperatorScaledDown",
            "is scaled to 0 replicas: no config API, no webhook".to_owned(),
            format!("kubectl -n {namespace} scale deployment {name} --replicas=2"),
        )
    } else if ready < wanted {
        (
            "OperatorNotReady",
            format!("{ready} of {wanted} replicas ready"),
            format!(
                "kubectl -n {namespace} describe deployment {name}; kubectl -n {namespace} logs deployment/{name} (its /ready names the part that is not ready)"
            ),
        )
    } else {
        return None;
    };
    let subject = format!("Deployment {namespace}/{name}");
    Some(Finding::new(
        Severity::Error,
        Group::Operator,
        code,
        subject,
        message,
        hint,
    ))
}

/// With leader election (the default), someone must hold the Lease and have renewed it within
/// its duration.
async fn leader(cluster: &Cluster, operator: &Operator) -> Option<Finding> {
    let elects = operator
        .setting("--leader-election", "WEIR_LEADER_ELECTION")
        .is_none_or(|v| v != "false");
    if !elects {
        return None;
    }
    let lease_name = operator
        .setting("--lease-name", "WEIR_LEASE_NAME")
        .unwrap_or_else(|| "weir-operator".to_owned());
    let namespace = &operator.namespace;
    let subject = format!("Lease {namespace}/{lease_name}");
    let logs = format!(
        "kubectl -n {namespace} logs deployment/{} | grep -i lease",
        operator.name
    );
    let no_leader = |message: &str| {
        Finding::new(
            Severity::Error,
            Group::Operator,
            "NoLeader",
            subject.clone(),
            message,
            logs.clone(),
        )
    };
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let lease = match cluster.bounded(api.get(&lease_name)).await {
        Ok(lease) => lease,
        Err(CallError::NotFound) => {
            return Some(no_leader(
                "does not exist: no replica has ever led, so no status is written and nothing is scaled",
            ));
        }
        Err(e) => return Some(unchecked(Group::Operator, &subject, &e)),
    };
    let spec = lease.spec.unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Some(no_leader(
            "is held by no replica: no status is written and nothing is scaled",
        ));
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec.renew_time.or(spec.acquire_time);
    let age = renewed.map(|t| {
        let now = k8s_openapi::jiff::Timestamp::now();
        now.as_second() - t.0.as_second()
    });
    let renewed = match age {
        Some(age) if age <= duration => return None,
        Some(age) => format!(
            "last renewed {age}s ago (it lasts {duration}s): the leader is gone or cannot reach the API server"
        ),
        None => "never renewed".to_owned(),
    };
    Some(Finding::new(
        Severity::Error,
        Group::Operator,
        "LeaseExpired",
        subject,
        format!("held by {holder} but {renewed}"),
        logs,
    ))
}

/// The injection webhook: the configuration's caBundle, its Service and endpoints, an answer
/// through the API server's service proxy, and the serving certificate (module doc of
/// `cluster`).
pub(super) async fn webhook(cluster: &Cluster, operators: &[Operator]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let configs = match cluster.list(&api, "").await {
        Ok(configs) => configs,
        Err(e) => {
            return vec![unchecked(
                Group::Webhook,
                "MutatingWebhookConfigurations",
                &e,
            )];
        }
    };
    let ours: Vec<&MutatingWebhookConfiguration> = configs
        .iter()
        .filter(|c| {
            c.webhooks
                .iter()
                .flatten()
                .any(|w| w.name.ends_with(".inject.weir.dev"))
        })
        .collect();
    if ours.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            Group::Webhook,
            "WebhookMissing",
            "injection webhook",
            "no MutatingWebhookConfiguration has *.inject.weir.dev entries: no pod gets a sidecar automatically",
            "helm upgrade weir charts/weir -n weir-system --reuse-values --set injection.enabled=true",
        ));
    }
    for config in ours {
        let config_name = config.metadata.name.clone().unwrap_or_default();
        let subject = format!("MutatingWebhookConfiguration {config_name}");
        // The entries share one Service and bundle in the chart; judge each distinct pair once.
        let mut seen = Vec::new();
        for entry in config.webhooks.iter().flatten() {
            let bundle = entry.client_config.ca_bundle.as_ref().map(|b| b.0.clone());
            let Some(service) = entry.client_config.service.as_ref() else {
                continue;
            };
            let key = (
                service.namespace.clone(),
                service.name.clone(),
                bundle.clone(),
            );
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let Some(bundle) = bundle.filter(|b| !b.is_empty()) else {
                findings.push(Finding::new(
                    Severity::Error,
                    Group::Webhook,
                    "WebhookNoCaBundle",
                    subject.clone(),
                    format!("entry {} has no caBundle: the API server cannot trust the webhook, so pod creation fails or skips injection", entry.name),
                    "the operator fills it at start with its own CA (look for caBundle in its logs); with cert-manager its CA injector does (kubectl -n cert-manager logs deployment/cert-manager-cainjector)",
                ));
                continue;
            };
            let port = service.port.unwrap_or(443);
            let path = service.path.clone().unwrap_or_else(|| "/".to_owned());
            findings.extend(
                webhook_service(cluster, &service.namespace, &service.name, port, &path).await,
            );
            let operator = operators
                .iter()
                .find(|o| o.namespace == service.namespace)
                .or(operators.first());
            findings.extend(
                certificate(
                    cluster,
                    operator,
                    &bundle,
                    &service.namespace,
                    &service.name,
                    &subject,
                )
                .await,
            );
        }
    }
    findings
}

/// The Service exists, has a ready endpoint, and answers through the API server.
async fn webhook_service(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    port: i32,
    path: &str,
) -> Vec<Finding> {
    let subject = format!("Service {namespace}/{name}");
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), namespace);
    match cluster.bounded(services.get(name)).await {
        Ok(_) => {}
        Err(CallError::NotFound) => {
            return webhook_error(
                "WebhookServiceMissing",
                &subject,
                "does not exist: the API server cannot call the injection webhook",
                "helm upgrade weir charts/weir -n weir-system --reuse-values (the chart creates it)",
            );
        }
        Err(e) => return vec![unchecked(Group::Webhook, &subject, &e)],
    }
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), namespace);
    let selector = format!("{}={name}", crate::kubernetes::inputs::SERVICE_NAME_LABEL);
    match cluster.list(&slices, &selector).await {
        Ok(slices) => {
            let ready = slices
                .iter()
                .flat_map(|s| &s.endpoints)
                .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
            if !ready {
                return webhook_error(
                    "WebhookNoEndpoints",
                    &subject,
                    "has no ready endpoint: no operator replica serves the webhook (with failurePolicy Fail, pods of injected namespaces cannot be created)",
                    format!(
                        "kubectl -n {namespace} get pods -l {}; kubectl -n {namespace} describe service {name}",
                        super::OPERATOR_SELECTOR
                    ),
                );
            }
        }
        Err(e) => return vec![unchecked(Group::Webhook, &subject, &e)],
    }
    let uri = format!(
        "/api/v1/namespaces/{namespace}/services/https:{name}:{port}/proxy{}",
        if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        }
    );
    match reach(cluster, &uri).await {
        Ok(()) => Vec::new(),
        Err(why) => webhook_error(
            "WebhookUnreachable",
            &subject,
            format!("the API server cannot reach the webhook through it: {why}"),
            format!(
                "check that the Service's targetPort is the operator's --webhook-listen port and that no NetworkPolicy blocks the API server (kubectl -n {namespace} get endpointslices -l kubernetes.io/service-name={name} -o wide)"
            ),
        ),
    }
}

/// A GET through the API server's proxy: `Ok` when the backend answered anything, the API
/// server's reason when it could not reach it.
async fn reach(cluster: &Cluster, uri: &str) -> Result<(), String> {
    use http_body_util::BodyExt;
    let request = http::Request::get(uri)
        .body(kube::client::Body::empty())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(cluster.timeout, async {
        let response = cluster
            .client
            .send(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, String>((status, body))
    })
    .await
    .map_err(|_| format!("no answer within {}s", cluster.timeout.as_secs()))??;
    let (status, body) = response;
    // The API server's own refusals are Status objects; the webhook answers plain text.
    let own: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let own = own.filter(|v| v["kind"] == "Status");
    match own {
        Some(own)
            if status.is_server_error() || status.as_u16() == 401 || status.as_u16() == 403 =>
        {
            Err(format!(
                "{} {}",
                status.as_u16(),
                own["message"].as_str().unwrap_or_default()
            ))
        }
        _ => Ok(()),
    }
}

/// The caBundle verifies the serving certificate the replicas load, for the Service's name.
async fn certificate(
    cluster: &Cluster,
    operator: Option<&Operator>,
    bundle: &[u8],
    namespace: &str,
    service: &str,
    config_subject: &str,
) -> Vec<Finding> {
    // Where the certificate is not found, it is not judged: a warning that says why.
    let not_checked = |why: &str, hint: &str| {
        vec![Finding::new(
            Severity::Warning,
            Group::Webhook,
            "NotChecked",
            config_subject,
            format!("the serving certificate was not checked: {why}"),
            hint,
        )]
    };
    let Some(operator) = operator else {
        return not_checked(
            "no operator Deployment says where it is",
            "install the operator with the chart",
        );
    };
    let secret_name = match operator.setting("--webhook-cert-dir", "WEIR_WEBHOOK_CERT_DIR") {
        Some(dir) => mounted_secret(operator, &dir),
        None => Some(
            operator
                .setting("--webhook-secret", "WEIR_WEBHOOK_SECRET")
                .unwrap_or_else(|| "weir-webhook-tls".to_owned()),
        ),
    };
    let Some(secret_name) = secret_name else {
        return not_checked(
            "--webhook-cert-dir is no mounted Secret",
            "mount the certificate's Secret at the folder --webhook-cert-dir names",
        );
    };
    let subject = format!("Secret {}/{secret_name}", operator.namespace);
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &operator.namespace);
    let secret = match cluster.bounded(secrets.get(&secret_name)).await {
        Ok(secret) => secret,
        Err(CallError::NotFound) => {
            return webhook_error(
                "WebhookCertMissing",
                &subject,
                "does not exist: the webhook has no certificate to serve",
                format!(
                    "self-managed: the operator creates it at start (kubectl -n {ns} logs deployment/{op}); cert-manager: kubectl -n {ns} describe certificate",
                    ns = operator.namespace,
                    op = operator.name
                ),
            );
        }
        Err(e) => return vec![unchecked(Group::Webhook, &subject, &e)],
    };
    let Some(tls_crt) = secret.data.as_ref().and_then(|d| d.get("tls.crt")) else {
        return webhook_error(
            "WebhookCertMissing",
            &subject,
            "holds no tls.crt",
            "self-managed: delete the Secret and restart the operator to issue a new one",
        );
    };
    let name = format!("{service}.{namespace}.svc");
    match super::super::tls::verify(bundle, &tls_crt.0, &name, SystemTime::now()) {
        Ok(()) => Vec::new(),
        Err(why) => webhook_error(
            "WebhookCertInvalid",
            config_subject,
            format!(
                "its caBundle does not verify the serving certificate in {subject} for {name}: {why}"
            ),
            format!(
                "self-managed CA: kubectl -n {ns} delete secret {secret_name} && kubectl -n {ns} rollout restart deployment {op} (a new CA and certificate are issued and the caBundle patched); cert-manager: kubectl -n {ns} describe certificate",
                ns = operator.namespace,
                op = operator.name
            ),
        ),
    }
}

/// The one finding of a webhook check that stops at its first problem: an error about
/// `subject`.
fn webhook_error(
    code: &'static str,
    subject: &str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Vec<Finding> {
    vec![Finding::new(
        Severity::Error,
        Group::Webhook,
        code,
        subject,
        message,
        hint,
    )]
}

/// The Secret mounted at `dir` in the operator's container.
fn mounted_secret(operator: &Operator, dir: &str) -> Option<String> {
    let mount = operator
        .container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path.trim_end_matches('/') == dir.trim_end_matches('/'))?;
    operator
        .deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?
        .secret
        .as_ref()?
        .secret_name
        .clone()
}
