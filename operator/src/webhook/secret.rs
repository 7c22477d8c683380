//! The self-managed TLS mode: the webhook's CA and serving certificate live in one Secret in
//! the operator's namespace, so every replica serves the same certificate, and the CA bundle is
//! patched into the MutatingWebhookConfiguration so the API server trusts it.
//!
//! Every [`SYNC_INTERVAL`] (sooner when a certificate is due) each replica reads the Secret,
//! asks [`certs::plan`] whether it is good, issues what is due, serves what the Secret holds and
//! makes the `caBundle` of every entry of the MutatingWebhookConfiguration equal to the
//! Secret's `ca.crt` (a JSON patch per entry that differs, guarded by a `test` of the entry's
//! name).
//!
//! # Who writes
//!
//! Writes are optimistic: the Secret is created (which fails if another replica created it
//! first) or replaced with the `resourceVersion` that was read (which fails if another replica
//! changed it since). The replica that loses such a race re-reads the Secret and serves what
//! the winner wrote, so concurrent replicas converge on one CA without needing the leader —
//! and when a leadership channel is given ([`SecretKeeper::leader`]), only the leader writes at
//! all, the others just read and serve.

use super::certs::{self, Bundle, CA_CRT, CA_KEY, Plan, TLS_CRT, TLS_KEY};
use super::tls::ServingCert;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// How often the Secret and the webhook configuration are checked; also how long a replica may
/// serve a certificate another replica has replaced (harmless: both are trusted, see `certs`).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(15);
const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("the Secret's certificate does not load: {0}")]
    Tls(#[from] super::tls::TlsError),
}

/// Keeps the Secret, the served certificate and the caBundle in step.
#[derive(Clone)]
pub struct SecretKeeper {
    pub client: Client,
    /// The operator's namespace: where the Secret (and the webhook Service) live.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle` is kept.
    pub webhook_config: String,
    /// The names the serving certificate must carry (`<service>.<namespace>.svc` …).
    pub dns_names: Vec<String>,
    /// When given, only write while it says true; when absent, every replica may write
    /// (optimistically, see the module doc).
    pub leader: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for SecretKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeeper")
            .field("namespace", &self.namespace)
            .field("secret", &self.secret)
            .field("webhook_config", &self.webhook_config)
            .field("dns_names", &self.dns_names)
            .finish_non_exhaustive()
    }
}

/// What one sync did, for the caller's logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Synced {
    /// The Secret was good; when the next certificate is due.
    Kept { until: SystemTime },
    /// This replica issued and stored new certificates, because of `.0`.
    Issued(String),
    /// Another replica wrote first; what it wrote is served.
    LostRace,
    /// Certificates are due but this replica is not the leader; waiting for it.
    WaitingForLeader(String),
}

impl SecretKeeper {
    /// The names the Service answers to inside the cluster.
    pub fn dns_names_for(service: &str, namespace: &str) -> Vec<String> {
        vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ]
    }

    /// Syncs now and then every [`SYNC_INTERVAL`] until shutdown; errors are logged and retried
    /// with backoff while the last good certificate keeps serving.
    pub async fn keep(self, cert: Arc<ServingCert>, mut shutdown: watch::Receiver<bool>) {
        let mut retry = RETRY_MIN;
        loop {
            let wait = match self.sync(&cert, SystemTime::now()).await {
                Ok(synced) => {
                    retry = RETRY_MIN;
                    match synced {
                        Synced::Kept { until } => until
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .clamp(Duration::from_secs(1), SYNC_INTERVAL),
                        Synced::Issued(_) => SYNC_INTERVAL,
                        Synced::LostRace => Duration::from_millis(100),
                        Synced::WaitingForLeader(_) => SYNC_INTERVAL,
                    }
                }
                Err(e) => {
                    tracing::error!(secret = %self.secret, namespace = %self.namespace, error = %e,
                        "webhook certificates: sync failed; retrying");
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = super::stopped(&mut shutdown) => return,
            }
        }
    }

    /// One pass: read, plan, maybe issue and write, serve, patch the caBundle.
    pub async fn sync(&self, cert: &ServingCert, now: SystemTime) -> Result<Synced, SyncError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let existing = secrets.get_opt(&self.secret).await?;
        let stored = existing.as_ref().and_then(bundle_of);
        let plan = certs::plan(now, stored.as_ref(), &self.dns_names);
        let (bundle, synced) = match plan {
            Plan::Keep { until } => (stored, Synced::Kept { until }),
            Plan::Serving(ref why) | Plan::Ca(ref why) => {
                let why = why.clone();
                if let Some(leader) = &self.leader
                    && !*leader.borrow()
                {
                    // Serve what there is (if anything) until the leader replaces it.
                    (stored, Synced::WaitingForLeader(why))
                } else {
                    let fresh = certs::issue(&plan, stored.as_ref(), now, &self.dns_names)?;
                    match self.write(&secrets, existing.as_ref(), &fresh).await {
                        Ok(()) => {
                            tracing::info!(secret = %self.secret, namespace = %self.namespace,
                                reason = %why, new_ca = matches!(plan, Plan::Ca(_)),
                                "webhook certificates issued");
                            (Some(fresh), Synced::Issued(why))
                        }
                        Err(kube::Error::Api(status))
                            if status.is_conflict() || status.is_already_exists() =>
                        {
                            tracing::debug!("another replica wrote the webhook Secret first");
                            let theirs = secrets.get_opt(&self.secret).await?;
                            (theirs.as_ref().and_then(bundle_of), Synced::LostRace)
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        if let Some(bundle) = bundle {
            if cert.set_pem(bundle.tls_crt.as_bytes(), bundle.tls_key.as_bytes())? {
                tracing::info!(secret = %self.secret, "webhook serving certificate loaded");
            }
            let may_write = self.leader.as_ref().is_none_or(|l| *l.borrow());
            if may_write {
                self.patch_ca_bundle(bundle.ca_crt.as_bytes()).await?;
            }
        }
        Ok(synced)
    }

    async fn write(
        &self,
        secrets: &Api<Secret>,
        existing: Option<&Secret>,
        bundle: &Bundle,
    ) -> Result<(), kube::Error> {
        let data: BTreeMap<String, ByteString> = [
            (CA_CRT, &bundle.ca_crt),
            (CA_KEY, &bundle.ca_key),
            (TLS_CRT, &bundle.tls_crt),
            (TLS_KEY, &bundle.tls_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
        match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.secret.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "weir-operator".to_owned(),
                        )])),
                        ..Default::default()
                    },
                    type_: Some("kubernetes.io/tls".to_owned()),
                    data: Some(data),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &secret).await?;
            }
            Some(existing) => {
                // Replace with the resourceVersion read: a conflict if anyone wrote since.
                let mut secret = existing.clone();
                secret.data = Some(data);
                secret.string_data = None;
                secrets
                    .replace(&self.secret, &PostParams::default(), &secret)
                    .await?;
            }
        }
        Ok(())
    }

    /// Makes every entry's `caBundle` equal to `ca`; a missing configuration is logged, not an
    /// error (injection may be switched off in the chart while the operator still runs).
    async fn patch_ca_bundle(&self, ca: &[u8]) -> Result<(), kube::Error> {
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let Some(config) = configs.get_opt(&self.webhook_config).await? else {
            tracing::warn!(name = %self.webhook_config,
                "no MutatingWebhookConfiguration of that name: no caBundle to keep");
            return Ok(());
        };
        let Some(patch) = ca_bundle_patch(&config, ca) else {
            return Ok(());
        };
        configs
            .patch(
                &self.webhook_config,
                &PatchParams::default(),
                &Patch::Json::<()>(patch),
            )
            .await?;
        tracing::info!(name = %self.webhook_config, "webhook caBundle updated");
        Ok(())
    }
}

/// The JSON patch that sets `ca` as the caBundle of every entry that lacks it (`None`: all
/// have it). Each change is guarded by a `test` of the entry's name, so a configuration whose
/// entries moved between the read and the patch refuses the patch instead of getting it wrong.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    ca: &[u8],
) -> Option<json_patch::Patch> {
    let encoded = serde_json::to_value(ByteString(ca.to_vec())).ok()?;
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.as_slice())
            == Some(ca)
        {
            continue;
        }
        ops.push(
            json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}),
        );
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    if ops.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::Array(ops)).ok()
}

/// What a Secret holds, if it holds the four keys as text.
pub fn bundle_of(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    Some(Bundle {
        ca_crt: text(CA_CRT)?,
        ca_key: text(CA_KEY)?,
        tls_crt: text(TLS_CRT).unwrap_or_default(),
        tls_key: text(TLS_KEY).unwrap_or_default(),
    })
}
