//! `weir-operator test-connection`, what `helm test` runs: against a real admin listener and a
//! real config API on loopback that checks tokens with the in-process fake API server.

mod cluster;
mod fake_api;

use cluster::{fixed_snapshot, payments_config};
use fake_api::FakeApi;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_operator::admin::{Admin, CONFIG_API, Readiness};
use weir_operator::config_api::ConfigApi;
use weir_operator::install_test::{Target, run};
use weir_operator::kubernetes::token_review::TokenReviewer;
use weir_operator::metrics::Metrics;
use weir_testkit::{Action, Upstream};

struct Operator {
    admin: String,
    config_api: String,
    readiness: Arc<Readiness>,
    _stop: watch::Sender<bool>,
}

/// An operator's admin listener and config API, the latter requiring tokens the fake API
/// server vouches for.
async fn operator(api: &FakeApi) -> Operator {
    // A first snapshot (an empty mesh is no change from the default one).
    let rx = fixed_snapshot(vec![payments_config(&[])]);
    let metrics = Arc::new(Metrics::new());
    let config_api = ConfigApi::new(rx, metrics.clone());
    let client = weir_operator::kubernetes::client::client(api.config()).unwrap();
    config_api.require_authentication(Arc::new(TokenReviewer::new(client)));
    let readiness = Arc::new(Readiness::default());
    readiness.not_ready(CONFIG_API, true, "no snapshot yet");
    let (stop, stopped) = watch::channel(false);
    let (_autoscalers_tx, autoscalers) = watch::channel(Default::default());
    std::mem::forget(_autoscalers_tx);
    let admin = Admin {
        metrics,
        readiness: readiness.clone(),
        config_api: config_api.clone(),
        autoscalers,
        status: weir_operator::admin::StatusFeeds::channels().1,
    };
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let urls = (
        format!("http://{}", admin_listener.local_addr().unwrap()),
        format!("http://{}", api_listener.local_addr().unwrap()),
    );
    tokio::spawn(admin.serve(admin_listener, stopped.clone()));
    tokio::spawn(config_api.serve(api_listener, stopped));
    Operator {
        admin: urls.0,
        config_api: urls.1,
        readiness,
        _stop: stop,
    }
}

fn target(op: &Operator, token_file: Option<std::path::PathBuf>) -> Target {
    Target {
        admin: op.admin.parse().unwrap(),
        config_api: op.config_api.parse().unwrap(),
        namespace: "weir-system".into(),
        token_file,
    }
}

fn token_file(dir: &tempfile::TempDir, token: &str) -> std::path::PathBuf {
    let path = dir.path().join("token");
    // As the kubelet writes it.
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

#[tokio::test]
async fn passes_when_ready_and_the_token_is_vouched_for() {
    let api = FakeApi::start().await;
    api.add_token(
        "helm-test-token",
        "weir-system",
        "weir-test-ready",
        &["weir"],
    );
    let op = operator(&api).await;
    op.readiness.ready(CONFIG_API);
    let dir = weir_testkit::temp_dir("weir-install-test-pass");
    let passed = run(&target(&op, Some(token_file(&dir, "helm-test-token"))))
        .await
        .expect("the test passes");
    assert_eq!(passed.len(), 2, "{passed:?}");
    assert!(passed[0].contains("/ready") && passed[1].contains("/v1/discovery"));
    assert!(
        api.requests()
            .iter()
            .any(|r| r.body["spec"]["token"] == "helm-test-token"),
        "the token was reviewed"
    );
}

#[tokio::test]
async fn fails_naming_what_is_wrong() {
    let api = FakeApi::start().await;
    api.add_token("vault-token", "weir-system", "weir-test-ready", &["vault"]);
    let op = operator(&api).await;
    let dir = weir_testkit::temp_dir("weir-install-test-fail");

    // Not ready yet: /ready's 503 and its reason.
    let error = run(&target(&op, None)).await.unwrap_err();
    assert!(error.contains("/ready") && error.contains("503"), "{error}");
    op.readiness.ready(CONFIG_API);

    // Ready, but the poll has no token: 401, and the hint says to give one.
    let error = run(&target(&op, None)).await.unwrap_err();
    assert!(
        error.contains("401") && error.contains("--token-file"),
        "{error}"
    );

    // A token for another audience: 401, and the hint points at the review.
    let wrong = token_file(&dir, "vault-token");
    let error = run(&target(&op, Some(wrong))).await.unwrap_err();
    assert!(
        error.contains("401") && error.contains("tokenreviews"),
        "{error}"
    );

    // A token file that is missing or empty is named.
    let missing = dir.path().join("absent");
    let error = run(&target(&op, Some(missing))).await.unwrap_err();
    assert!(error.contains("absent"), "{error}");
    let empty = token_file(&dir, "");
    let error = run(&target(&op, Some(empty))).await.unwrap_err();
    assert!(error.contains("empty token"), "{error}");
}

/// A target whose admin listener and config API are both at `addr`.
fn both_at(addr: std::net::SocketAddr) -> Target {
    let url: String = format!("http://{addr}");
    Target {
        admin: url.parse().unwrap(),
        config_api: url.parse().unwrap(),
        namespace: "weir-system".into(),
        token_file: None,
    }
}

#[tokio::test]
async fn an_operator_that_is_not_there_is_an_error_not_a_hang() {
    // A port nobody listens on (bound, then closed).
    let error = run(&both_at(weir_testkit::free_addr())).await.unwrap_err();
    assert!(error.contains("GET") && error.contains("/ready"), "{error}");
    // The cause, not only hyper's "client error (Connect)".
    assert!(error.to_lowercase().contains("refused"), "{error}");

    // A name that does not resolve says so.
    let error = run(&Target {
        admin: "http://weir-operator.invalid:15011".parse().unwrap(),
        config_api: "http://weir-operator.invalid:15010".parse().unwrap(),
        namespace: "weir-system".into(),
        token_file: None,
    })
    .await
    .unwrap_err();
    assert!(error.contains("dns error"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_operator_times_out() {
    // Accepts connections and never answers.
    let silent = Upstream::start(|_, _| Action::Hang).await;
    let error = run(&both_at(silent.addr)).await.unwrap_err();
    assert!(error.contains("no answer within 10s"), "{error}");
}
