//! `weir-operator run`, the real binary, against the in-process fake API server (`fake_api`,
//! reached through a kubeconfig): the config API is served by every replica whatever happens to
//! the injection webhook, and `/ready` names the part that is not ready.

mod fake_api;
mod local_operator;

use fake_api::FakeApi;
use local_operator::{Folder, http_get, http_post, temp_dir, until_answer};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;
use weir_testkit::{Process, free_addr};

/// A running `weir-operator run`, killed when dropped.
struct Operator {
    process: Process,
    /// Holds its kubeconfig.
    _dir: Folder,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Operator {
    /// Without leader election, with the webhook on `webhook` and this readiness grace.
    fn start(api: &FakeApi, webhook: SocketAddr, grace_seconds: u64) -> Self {
        Self::start_with(api, webhook, grace_seconds, &[])
    }

    fn start_with(api: &FakeApi, webhook: SocketAddr, grace_seconds: u64, extra: &[&str]) -> Self {
        let dir = temp_dir("weir-run");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: weir-system}}}}]\n\
                 current-context: fake\n",
                api.url
            ),
        )
        .unwrap();
        let (listen, admin) = (free_addr(), free_addr());
        let mut command = local_operator::operator_command();
        command
            .arg("run")
            .args(["--listen", &listen.to_string()])
            .args(["--admin", &admin.to_string()])
            .args(["--identity", "weir-0", "--leader-election", "false"])
            .args(["--webhook-listen", &webhook.to_string()])
            .args(["--webhook-ready-grace-seconds", &grace_seconds.to_string()])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("POD_NAMESPACE");
        Self {
            process: Process::spawn(command),
            _dir: dir,
            listen,
            admin,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// `GET /ready`: status and body (None while nothing answers).
    async fn ready(&self) -> Option<(u16, String)> {
        http_get(self.admin, "/ready").await
    }

    /// Polls `/ready` until `check` holds, for at most `within`.
    async fn until_ready(&self, within: Duration, check: impl Fn(u16, &str) -> bool) -> String {
        let answer = until_answer(
            "/ready",
            (within, Duration::from_millis(50)),
            || self.ready(),
            |answer| {
                answer
                    .as_ref()
                    .is_some_and(|(status, body)| check(*status, body))
            },
            || self.log(),
        );
        answer.await.expect("checked").1
    }
}

fn seed(api: &FakeApi) {
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "payments", "namespace": "shop"},
        "spec": {"ports": [{"name": "http", "port": 80}]},
    }));
}

/// The fake API server seeded, where the webhook's Secret cannot be read: no certificate, ever.
async fn without_certificate() -> FakeApi {
    let api = FakeApi::start().await;
    seed(&api);
    let forever = usize::MAX;
    api.fail(
        "GET",
        "/secrets/weir-webhook-tls",
        403,
        "Forbidden",
        forever,
    );
    api
}

/// A sidecar of `checkout` polling `control_plane`; Some once it holds config from it.
async fn sidecar_gets_config(control_plane: SocketAddr) -> Option<weir_sidecar::Running> {
    let app = "127.0.0.1:9".parse().unwrap();
    local_operator::sidecar_with_config(
        control_plane,
        "checkout",
        "checkout-test",
        app,
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_cannot_listen_takes_nothing_from_the_config_api() {
    let api = FakeApi::start().await;
    seed(&api);
    // Someone else holds the webhook's port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let operator = Operator::start(&api, taken.local_addr().unwrap(), 30);

    let body = operator
        .until_ready(Duration::from_secs(20), |status, _| status == 200)
        .await;
    assert!(body.starts_with("ready\n"), "{body}");
    assert!(body.contains("config API: ready\n"), "{body}");
    assert!(
        body.contains("injection webhook: not ready: stopped: ")
            && body.contains(&taken.local_addr().unwrap().to_string()),
        "the failed part is named, with why: {body}"
    );
    assert!(
        sidecar_gets_config(operator.listen).await.is_some(),
        "a sidecar gets its config; log:\n{}",
        operator.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_a_certificate_delays_readiness_but_never_the_config_api() {
    let api = without_certificate().await;
    let webhook = free_addr();
    let grace = 12;
    let started = Instant::now();
    let operator = Operator::start(&api, webhook, grace);

    let proxy = sidecar_gets_config(operator.listen).await;
    assert!(
        proxy.is_some(),
        "the config API serves while the webhook has no certificate; log:\n{}",
        operator.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(grace - 1),
        "served well within the grace"
    );
    let (status, body) = operator.ready().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        "not ready\nconfig API: ready\ninjection webhook: not ready: starting: no certificate yet\n"
    );
    // After the grace: ready, still naming the webhook.
    let body = operator
        .until_ready(Duration::from_secs(grace + 10), |status, _| status == 200)
        .await;
    assert!(started.elapsed() >= Duration::from_secs(grace));
    assert_eq!(
        body,
        format!(
            "ready\nconfig API: ready\ninjection webhook: not ready: no certificate after {grace}s (see the log)\n"
        )
    );
}

/// `POST /v1/discovery` with `token`, if any: the status.
async fn discovery_status(config_api: SocketAddr, token: Option<&str>) -> u16 {
    let body = json!({
        "node": {"service": "checkout", "namespace": "shop", "pod": "checkout-1"},
        "resources": [{"name": "inbound"}],
        "waitSeconds": 0,
    });
    let answer = http_post(config_api, "/v1/discovery", &body, token).await;
    answer.expect("the config API answers").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_token_review_the_config_api_answers_only_proxies_with_a_good_token() {
    let api = without_certificate().await;
    api.add_token("good", "shop", "checkout-1", &["weir"]);
    let operator =
        Operator::start_with(&api, free_addr(), 0, &["--config-api-auth", "token-review"]);
    operator
        .until_ready(Duration::from_secs(20), |status, _| status == 200)
        .await;
    assert_eq!(discovery_status(operator.listen, None).await, 401);
    assert_eq!(discovery_status(operator.listen, Some("bad")).await, 401);
    assert_eq!(discovery_status(operator.listen, Some("good")).await, 200);
}
