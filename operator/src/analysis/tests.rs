use super::*;
use crate::autoscaler::scrape::SIDECAR_METRICS;
use std::time::Duration;
use weir_crds::{Analysis, JudgementResult, TrafficSplitBackend, TrafficSplitStatus};

fn analysis() -> Analysis {
    Analysis {
        canary: "v2".into(),
        steps: vec![10, 25, 50, 100],
        interval: "30s".into(),
        min_requests: Some(50),
        success_rate: Some(0.99),
        latency_p99: Some("500ms".into()),
        max_failures: None,
    }
}

fn spec_of(a: &Analysis) -> Spec {
    Spec::parse(a, ["v1", "v2"]).unwrap()
}

fn spec() -> Spec {
    spec_of(&analysis())
}

fn measured(requests: u64, failures: u64, p99_ms: u64) -> Measured {
    Measured {
        requests,
        failures,
        latency_p99: Some(Duration::from_millis(p99_ms)),
    }
}

/// Calls counted, but no latency measured (no histogram in the sidecars' metrics).
fn unmeasured_latency(requests: u64, failures: u64) -> Measured {
    Measured {
        latency_p99: None,
        ..measured(requests, failures, 0)
    }
}

fn healthy() -> Measured {
    measured(1000, 1, 120)
}

#[test]
fn the_spec_is_checked_as_the_schema_checks_it() {
    let bad = |edit: fn(&mut Analysis), field: &str| {
        let mut a = analysis();
        edit(&mut a);
        let error = Spec::parse(&a, ["v1", "v2"]).unwrap_err();
        assert!(error.contains(field), "{error}");
    };
    bad(|a| a.canary = "v3".into(), "spec.analysis.canary");
    bad(|a| a.steps = vec![], "spec.analysis.steps");
    bad(|a| a.steps = vec![10, 10], "spec.analysis.steps[1]");
    bad(|a| a.steps = vec![50, 25], "spec.analysis.steps[1]");
    bad(|a| a.steps = vec![0, 25], "spec.analysis.steps[0]");
    bad(|a| a.steps = vec![50, 101], "spec.analysis.steps[1]");
    bad(|a| a.interval = "999ms".into(), "spec.analysis.interval");
    bad(|a| a.interval = "25h".into(), "spec.analysis.interval");
    bad(|a| a.min_requests = Some(0), "spec.analysis.minRequests");
    bad(|a| a.max_failures = Some(-1), "spec.analysis.maxFailures");
    bad(
        |a| a.success_rate = Some(f64::NAN),
        "spec.analysis.successRate",
    );
    bad(|a| a.success_rate = Some(1.5), "spec.analysis.successRate");
    bad(
        |a| a.latency_p99 = Some("0s".into()),
        "spec.analysis.latencyP99",
    );
    let s = spec();
    assert_eq!((s.max_failures, s.min_requests), (1, 50));
    assert_eq!(s.interval, Duration::from_secs(30));
}

#[test]
fn a_rollout_starts_at_step_one_and_passes_step_by_step_to_succeeded() {
    let spec = spec();
    let mut state = begin(&spec, 3);
    assert_eq!(
        (state.phase, state.step, state.canary_weight),
        (AnalysisPhase::Progressing, 1, 10)
    );
    for (step, weight) in [(2, 25), (3, 50), (4, 100)] {
        let (next, outcome) = judge(&spec, &state, &healthy());
        assert_eq!(outcome, Outcome::Promoted);
        assert_eq!((next.step, next.canary_weight), (step, weight));
        state = next;
    }
    let (done, outcome) = judge(&spec, &state, &healthy());
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        (done.phase, done.step, done.canary_weight),
        (AnalysisPhase::Succeeded, 4, 100)
    );
    let judgement = done.last_judgement.clone().unwrap();
    assert_eq!(judgement.result, JudgementResult::Passed);
    assert_eq!(judgement.requests, 1000);
    assert_eq!(judgement.success_rate, Some(0.999));
    assert_eq!(judgement.latency_p99.as_deref(), Some("120ms"));
    // A finished rollout stays where it is.
    assert_eq!(judge(&spec, &done, &healthy()), (done, Outcome::Finished));
}

#[test]
fn the_last_step_need_not_be_100_percent() {
    let mut a = analysis();
    a.steps = vec![5, 20];
    let spec = spec_of(&a);
    let (state, _) = judge(&spec, &begin(&spec, 1), &healthy());
    let (done, outcome) = judge(&spec, &state, &healthy());
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        done.canary_weight, 20,
        "the canary keeps the last step's weight"
    );
}

#[test]
fn no_traffic_is_inconclusive_held_and_never_promoted() {
    let spec = spec();
    let mut state = begin(&spec, 1);
    for _ in 0..1000 {
        let (next, outcome) = judge(&spec, &state, &Measured::default());
        assert_eq!(outcome, Outcome::Held);
        state = next;
    }
    assert_eq!(
        (state.phase, state.step, state.canary_weight, state.failures),
        (AnalysisPhase::Progressing, 1, 10, 0)
    );
    let judgement = state.last_judgement.unwrap();
    assert_eq!(judgement.result, JudgementResult::Inconclusive);
    assert_eq!((judgement.requests, judgement.success_rate), (0, None));
    assert!(state.message.contains("inconclusive"), "{}", state.message);
    // Just below minRequests, even all successful: still held.
    let (next, outcome) = judge(&spec, &begin(&spec, 1), &measured(49, 0, 10));
    assert_eq!((outcome, next.step), (Outcome::Held, 1));
}

#[test]
fn a_latency_that_cannot_be_measured_never_passes_silently() {
    let spec = spec();
    let m = unmeasured_latency(500, 0);
    let (next, outcome) = judge(&spec, &begin(&spec, 1), &m);
    assert_eq!(outcome, Outcome::Held);
    assert_eq!(
        next.last_judgement.unwrap().result,
        JudgementResult::Inconclusive
    );
}

#[test]
fn success_rate_only_fails_and_rolls_back_to_zero() {
    let mut a = analysis();
    a.latency_p99 = None;
    let spec = spec_of(&a);
    // 98 % of non-5xx with a 99 % threshold: failed; latency is not judged at all.
    let m = unmeasured_latency(100, 2);
    let (next, outcome) = judge(&spec, &begin(&spec, 1), &m);
    assert_eq!(outcome, Outcome::RolledBack);
    assert_eq!(
        (next.phase, next.canary_weight, next.failures),
        (AnalysisPhase::RolledBack, 0, 1)
    );
    assert_eq!(next.last_judgement.unwrap().result, JudgementResult::Failed);
    assert!(next.message.contains("success rate"), "{}", next.message);
    // Exactly the threshold passes.
    let (_, outcome) = judge(&spec, &begin(&spec, 1), &measured(100, 1, 10_000));
    assert_eq!(outcome, Outcome::Promoted);
}

#[test]
fn latency_only_fails_a_fully_successful_canary() {
    let mut a = analysis();
    a.success_rate = None;
    let spec = spec_of(&a);
    let (next, outcome) = judge(&spec, &begin(&spec, 1), &measured(1000, 1000, 501));
    assert_eq!(
        outcome,
        Outcome::RolledBack,
        "too slow, though every answer was a 5xx: only latency is judged"
    );
    assert!(
        next.message.contains("p99 latency 501ms above 500ms"),
        "{}",
        next.message
    );
    let (_, outcome) = judge(&spec, &begin(&spec, 1), &measured(1000, 1000, 500));
    assert_eq!(outcome, Outcome::Promoted);
}

#[test]
fn failures_are_counted_to_max_failures_then_rolled_back() {
    let mut a = analysis();
    a.max_failures = Some(3);
    let spec = spec_of(&a);
    let bad = measured(100, 50, 10);
    let (s1, o1) = judge(&spec, &begin(&spec, 1), &bad);
    assert_eq!(
        (o1, s1.failures, s1.step, s1.canary_weight),
        (Outcome::Held, 1, 1, 10)
    );
    // A pass in between promotes but does not forgive: failures count over the rollout.
    let (s2, o2) = judge(&spec, &s1, &healthy());
    assert_eq!((o2, s2.failures, s2.step), (Outcome::Promoted, 1, 2));
    let (s3, o3) = judge(&spec, &s2, &bad);
    assert_eq!((o3, s3.failures, s3.step), (Outcome::Held, 2, 2));
    let (s4, o4) = judge(&spec, &s3, &bad);
    assert_eq!(o4, Outcome::RolledBack);
    assert_eq!(
        (s4.phase, s4.canary_weight, s4.failures),
        (AnalysisPhase::RolledBack, 0, 3)
    );
    // Rolled back stays rolled back.
    assert_eq!(judge(&spec, &s4, &healthy()).1, Outcome::Finished);
}

#[test]
fn absurd_figures_neither_panic_nor_pass() {
    let spec = spec();
    let m = Measured {
        requests: u64::MAX,
        failures: u64::MAX,
        latency_p99: Some(Duration::from_secs(u64::MAX / 4)),
    };
    let (next, outcome) = judge(&spec, &begin(&spec, 1), &m);
    assert_eq!(outcome, Outcome::RolledBack);
    assert_eq!(next.last_judgement.unwrap().requests, i64::MAX);
    let mut wild = begin(&spec, 1);
    wild.step = i32::MAX;
    wild.failures = i32::MAX;
    let (next, _) = judge(&spec, &wild, &measured(100, 100, 10));
    assert_eq!(next.phase, AnalysisPhase::RolledBack);
}

#[test]
fn an_operator_restart_resumes_from_status_without_starting_over_or_jumping_ahead() {
    let spec = spec();
    let (at_step_2, _) = judge(&spec, &begin(&spec, 7), &healthy());
    let (mut at_step_2, _) = judge(&spec, &at_step_2, &measured(10, 0, 10));
    assert_eq!(at_step_2.step, 2);
    at_step_2.failures = 0;
    // What a new operator reads back from status.
    let resumed = resume(&spec, 7, Some(&at_step_2));
    assert_eq!(resumed, at_step_2);
    // Through Rollouts: a split carrying that status resumes at step 2, and its first scrape
    // only starts the interval: nothing is judged before a whole interval has run.
    let split = recording(Some(7), &at_step_2);
    let mut rollouts = Rollouts::default();
    let changes = rollouts.sync([&split]);
    assert_eq!(changes[0].reason, "RolloutResumed");
    let key = ("shop".to_owned(), "payments".to_owned());
    let start = Instant::now();
    assert_eq!(rollouts.observe(&key, start, callers(0.0)), None);
    let rollout = rollouts.iter().next().unwrap().1;
    assert_eq!((rollout.state.step, rollout.state.canary_weight), (2, 25));
    assert!(!rollout.wants_scrape(start + Duration::from_secs(29)));
    let (outcome, state) = rollouts
        .observe(&key, start + Duration::from_secs(30), callers(1000.0))
        .unwrap();
    assert_eq!((outcome, state.step), (Outcome::Promoted, 3));
    // A recorded step beyond the steps (a status edited by hand) is held to the last step, and
    // the weight always comes from the steps.
    let mut wild = at_step_2;
    wild.step = 99;
    wild.canary_weight = 77;
    let resumed = resume(&spec, 7, Some(&wild));
    assert_eq!((resumed.step, resumed.canary_weight), (4, 100));
}

#[test]
fn a_leader_handover_resumes_where_the_old_leader_left() {
    // The old leader judged step 1 and recorded step 2; the new leader has only the status.
    let spec = spec();
    let (recorded, _) = judge(&spec, &begin(&spec, 2), &healthy());
    let mut split = recording(Some(2), &recorded);
    let mut new_leader = Rollouts::default();
    new_leader.sync([&split]);
    let weights = new_leader.weights();
    assert_eq!(
        weights.values().next(),
        Some(&("v2".to_owned(), 25)),
        "the new leader routes at the recorded step's weight"
    );
    // A rolled back rollout stays rolled back across a handover.
    let mut rolled = recorded;
    rolled.phase = AnalysisPhase::RolledBack;
    rolled.canary_weight = 0;
    split.status.as_mut().unwrap().analysis = Some(rolled);
    let mut next_leader = Rollouts::default();
    next_leader.sync([&split]);
    assert_eq!(next_leader.weights().values().next().unwrap().1, 0);
    let key = ("shop".to_owned(), "payments".to_owned());
    assert!(
        !next_leader
            .iter()
            .next()
            .unwrap()
            .1
            .wants_scrape(Instant::now())
    );
    assert_eq!(
        next_leader.observe(&key, Instant::now(), callers(1.0)),
        None
    );
}

#[test]
fn a_spec_edit_mid_step_restarts_at_step_one() {
    let spec = spec();
    let (at_step_2, _) = judge(&spec, &begin(&spec, 4), &healthy());
    // Status of generation 4, split now at generation 5 (a new selector for the next version).
    let split = recording(Some(5), &at_step_2);
    let restarted = resume(&spec, 5, Some(&at_step_2));
    assert_eq!((restarted.step, restarted.canary_weight), (1, 10));
    assert_eq!(restarted.observed_generation, Some(5));
    let mut rollouts = Rollouts::default();
    assert_eq!(rollouts.sync([&split])[0].reason, "RolloutStarted");
    // Local mode (no generation): a changed spec is a new generation, an unchanged one is not.
    let mut local = split_with(analysis(), None);
    let mut rollouts = Rollouts::default();
    rollouts.sync([&local]);
    let key = ("shop".to_owned(), "payments".to_owned());
    let t0 = Instant::now();
    rollouts.observe(&key, t0, callers(0.0));
    rollouts.observe(&key, t0 + Duration::from_secs(30), callers(1000.0));
    assert_eq!(rollouts.iter().next().unwrap().1.state.step, 2);
    assert!(
        rollouts.sync([&local]).is_empty(),
        "same spec: nothing restarts"
    );
    assert_eq!(rollouts.iter().next().unwrap().1.state.step, 2);
    local.spec.backends[1].selector = [("version".to_owned(), "v3".to_owned())].into();
    assert_eq!(rollouts.sync([&local])[0].reason, "RolloutStarted");
    let rollout = rollouts.iter().next().unwrap().1;
    assert_eq!((rollout.state.step, rollout.generation), (1, 2));
    // Gone from the folder: forgotten.
    rollouts.sync([]);
    assert_eq!(rollouts.iter().count(), 0);
}

/// The split of generation `generation` whose status records `state` (what a new leader, or
/// a restarted operator, resumes from).
fn recording(generation: Option<i64>, state: &AnalysisStatus) -> TrafficSplit {
    let mut split = split_with(analysis(), generation);
    split.status = Some(TrafficSplitStatus {
        analysis: Some(state.clone()),
        ..TrafficSplitStatus::default()
    });
    split
}

fn split_with(analysis: Analysis, generation: Option<i64>) -> TrafficSplit {
    let backend = |subset: &str, weight| TrafficSplitBackend {
        subset: subset.into(),
        selector: [("version".to_owned(), subset.to_owned())].into(),
        weight,
    };
    let mut split = TrafficSplit::new(
        "payments",
        TrafficSplitSpec {
            service: "payments".into(),
            port: None,
            backends: vec![backend("v1", 90), backend("v2", 10)],
            rules: Vec::new(),
            analysis: Some(analysis),
        },
    );
    split.metadata.namespace = Some("shop".into());
    split.metadata.generation = generation;
    split
}

/// One caller whose counters stand at `requests` successes, all under 100 ms.
fn callers(requests: f64) -> HashMap<String, Counters> {
    HashMap::from([(
        "127.0.0.1:15020".to_owned(),
        Counters {
            requests,
            failures: 0.0,
            buckets: vec![(0.1, requests), (f64::INFINITY, requests)],
        },
    )])
}

#[test]
fn only_the_canarys_outbound_series_are_read_and_5xx_refusals_are_failures() {
    // The inbound 500s of payments/v2 and the outbound ones of orders/v2 are not the canary's.
    let c = telemetry::parse(SIDECAR_METRICS, "payments", "v2");
    assert_eq!((c.requests, c.failures), (110.0, 10.0));
    assert_eq!(
        c.buckets,
        vec![(0.1, 100.0), (0.5, 110.0), (f64::INFINITY, 110.0)]
    );
    assert_eq!(
        telemetry::parse("garbage{\n{}} x\n", "payments", "v2"),
        Counters::default()
    );
}

fn counters(requests: f64, failures: f64) -> Counters {
    Counters {
        requests,
        failures,
        buckets: vec![(0.1, requests), (f64::INFINITY, requests)],
    }
}

#[test]
fn callers_are_summed_as_increases_and_only_some_callers_may_send_traffic() {
    let start = HashMap::from([
        ("a".to_owned(), counters(100.0, 0.0)),
        ("b".to_owned(), counters(50.0, 5.0)),
        ("idle".to_owned(), counters(7.0, 0.0)),
    ]);
    let window = Window::start(start);
    let now = HashMap::from([
        ("a".to_owned(), counters(160.0, 1.0)),
        ("b".to_owned(), counters(90.0, 6.0)),
        ("idle".to_owned(), counters(7.0, 0.0)),
    ]);
    let m = window.measure(&now);
    assert_eq!((m.requests, m.failures), (100, 2));
    assert!(m.latency_p99.unwrap() <= Duration::from_millis(100));
    // Nobody sent anything: no figure at all, inconclusive.
    let m = Window::start(now.clone()).measure(&now);
    assert_eq!((m.requests, m.latency_p99), (0, None));
}

#[test]
fn a_restarted_caller_gives_no_negative_or_inflated_figure() {
    let window = Window::start(HashMap::from([
        ("a".to_owned(), counters(10_000.0, 0.0)),
        ("b".to_owned(), counters(100.0, 0.0)),
    ]));
    // `a` restarted and counted 30 requests since; `b` sent 20.
    let now = HashMap::from([
        ("a".to_owned(), counters(30.0, 3.0)),
        ("b".to_owned(), counters(120.0, 0.0)),
    ]);
    let m = window.measure(&now);
    assert_eq!((m.requests, m.failures), (50, 3));
    // A caller first seen now (its history is unknown) and one gone count nothing.
    let now = HashMap::from([("new".to_owned(), counters(1e9, 1e9))]);
    assert_eq!(window.measure(&now).requests, 0);
}

#[test]
fn the_canary_weight_comes_from_the_rollout_and_the_others_share_the_rest() {
    let split = split_with(analysis(), None);
    let mut spec = split.spec.clone();
    spec.backends.push(TrafficSplitBackend {
        subset: "v0".into(),
        selector: Default::default(),
        weight: 30,
    });
    let weights =
        |s: &TrafficSplitSpec| -> Vec<i32> { s.backends.iter().map(|b| b.weight).collect() };
    // v1: 90, v2 (canary): 10 → 25 %, v0: 30. The rest, 75 %, shared 90:30.
    let out = weights::apply(&spec, "v2", 25);
    assert_eq!(weights(&out), [562_500, 250_000, 187_500]);
    assert_eq!(weights(&out).iter().sum::<i32>(), 1_000_000);
    // Rolled back: the canary gets nothing.
    assert_eq!(
        weights(&weights::apply(&spec, "v2", 0)),
        [750_000, 0, 250_000]
    );
    // 100 %: the others nothing.
    assert_eq!(
        weights(&weights::apply(&spec, "v2", 100)),
        [0, 1_000_000, 0]
    );
    // Others all at 0 share equally, remainders to the first; the sum stays exact.
    spec.backends[0].weight = 0;
    spec.backends[2].weight = 0;
    let out = weights::apply(&spec, "v2", 33);
    assert_eq!(weights(&out), [335_000, 330_000, 335_000]);
    spec.backends.push(TrafficSplitBackend {
        subset: "v9".into(),
        selector: Default::default(),
        weight: 0,
    });
    let out = weights::apply(&spec, "v2", 33);
    assert_eq!(weights(&out).iter().sum::<i32>(), 1_000_000);
    // A canary that is not a backend changes nothing.
    assert_eq!(weights::apply(&spec, "v7", 50), spec);
    // Through apply_all, by split.
    let mut splits = vec![split];
    apply_all(
        &mut splits,
        &BTreeMap::from([(
            ("shop".to_owned(), "payments".to_owned()),
            ("v2".to_owned(), 10),
        )]),
    );
    assert_eq!(weights(&splits[0].spec), [900_000, 100_000]);
}

/// A sidecar admin listener on loopback that accepts connections and never answers; counts
/// the connections it accepted.
async fn hung_admin(accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    addr
}

/// Many callers that hang are read at most 32 at once, each given up after the scrape
/// timeout; the one that answers is read for every wanted rollout, the others left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_read_32_at_a_time_and_hung_ones_are_left_out() {
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut admins = Vec::new();
    for _ in 0..40 {
        admins.push(hung_admin(accepted.clone()).await);
    }
    let answering = weir_testkit::FakeAdmin::start(
        "weir_requests_total{code=\"200\",direction=\"outbound\",service=\"payments\",subset=\"v2\"} 7\n\
         weir_requests_total{code=\"503\",direction=\"outbound\",service=\"shipping\",subset=\"v2\"} 3\n",
    )
    .await;
    let good = answering.addr;
    admins.push(good);
    let scraper = crate::autoscaler::scrape::Scraper::new(SCRAPE_TIMEOUT);
    let wanted = [
        ("payments".to_owned(), "v2".to_owned()),
        ("shipping".to_owned(), "v2".to_owned()),
    ];
    // Before the first timeout, no hung read has ended: at most 32 are open.
    let during = async {
        tokio::time::sleep(SCRAPE_TIMEOUT.mul_f32(0.9)).await;
        accepted.load(std::sync::atomic::Ordering::SeqCst)
    };
    let (answers, open) = tokio::join!(scrape(&scraper, admins, &wanted), during);
    assert!(
        (1..=SCRAPES_IN_FLIGHT).contains(&open),
        "{open} reads at once"
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 40);
    assert_eq!(answers.len(), 1, "{answers:?}");
    let counters = &answers[&good];
    assert_eq!(
        counters
            .iter()
            .map(|c| (c.requests, c.failures))
            .collect::<Vec<_>>(),
        [(7.0, 0.0), (3.0, 3.0)]
    );
}
