//! The algorithm against the HPA's documented and coded behaviour, case by case.

use super::*;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weir_crds::{AutoscalerMetric, AutoscalerSpec, ScaleTargetRef, ScalingBehavior, ScalingRules};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// min 1, max 20, Concurrency target 10, HPA default behavior.
fn spec() -> Spec {
    Spec {
        min_replicas: 1,
        max_replicas: 20,
        metrics: vec![MetricTarget {
            kind: MetricType::Concurrency,
            target: 10.0,
        }],
        scale_up: Rules::hpa_scale_up(),
        scale_down: Rules::hpa_scale_down(),
    }
}

/// `spec()` without any stabilization or rate limit (to test the formula alone).
fn free_spec() -> Spec {
    let mut spec = spec();
    spec.scale_down.stabilization_window = Duration::ZERO;
    spec.scale_up.select = SelectPolicy::Max;
    spec.scale_up.policies = vec![Policy {
        kind: PolicyKind::Pods,
        value: 1000,
        period: secs(15),
    }];
    spec
}

/// `n` ready pods `p0..`, each reporting `value` at `now`.
fn observation(now: u64, spec_replicas: i32, values: &[f64]) -> Observation {
    Observation {
        now: secs(now),
        spec_replicas,
        pods: (0..values.len())
            .map(|i| Pod::ready(format!("p{i}"), Duration::ZERO))
            .collect(),
        samples: values
            .iter()
            .enumerate()
            .map(|(i, v)| sample(&format!("p{i}"), now, *v))
            .collect(),
    }
}

fn sample(pod: &str, at: u64, value: f64) -> Sample {
    Sample {
        pod: pod.to_owned(),
        metric: MetricType::Concurrency,
        at: secs(at),
        window: Duration::ZERO,
        value,
    }
}

fn hpa() -> Tuning {
    Tuning::hpa()
}

#[test]
fn within_tolerance_nothing_changes() {
    let mut state = State::new();
    // 10 % over the target: inside the tolerance.
    let d = state.evaluate(&free_spec(), &hpa(), &observation(100, 4, &[11.0; 4]));
    assert_eq!(d.desired_replicas, 4);
    assert!(!d.rescale());
    // 12 % over: ceil(1.12 × 4) = 5.
    let d = state.evaluate(&free_spec(), &hpa(), &observation(115, 4, &[11.2; 4]));
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(d.metrics[0].replicas, Some(5));
    assert_eq!(d.metrics[0].display_value().as_deref(), Some("11.2"));
}

#[test]
fn desired_is_ceil_of_current_times_ratio() {
    let mut state = State::new();
    let d = state.evaluate(&free_spec(), &hpa(), &observation(100, 3, &[25.0; 3]));
    assert_eq!(d.desired_replicas, 8); // ceil(3 × 2.5)
    let d = state.evaluate(&free_spec(), &hpa(), &observation(200, 8, &[2.0; 8]));
    assert_eq!(d.desired_replicas, 2); // ceil(8 × 0.2) = 1.6 → 2
}

#[test]
fn missing_pods_count_as_zero_on_scale_up_and_as_target_on_scale_down() {
    // 4 pods, 2 report 20 (ratio 2), 2 missing: on the way up the missing ones count as 0:
    // (40 + 0) / 4 = 10 per pod → ratio 1.0 → within tolerance → keep 4.
    let mut obs = observation(100, 4, &[20.0, 20.0, 0.0, 0.0]);
    obs.samples.truncate(2);
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!((d.metrics[0].ready_pods, d.metrics[0].missing_pods), (2, 2));
    assert_eq!(d.desired_replicas, 4);
    // 2 report 30: (60 + 0) / 4 = 15 → ratio 1.5 → ceil(1.5 × 4) = 6.
    obs.samples = vec![sample("p0", 100, 30.0), sample("p1", 100, 30.0)];
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!(d.desired_replicas, 6);
    // Down: 2 report 2 (ratio 0.2), 2 missing count as 10: (4 + 20) / 4 = 6 → ceil(0.6 × 4) = 3.
    obs.samples = vec![sample("p0", 100, 2.0), sample("p1", 100, 2.0)];
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!(d.desired_replicas, 3);
}

#[test]
fn stale_samples_are_missing() {
    let spec = free_spec();
    let tuning = Tuning {
        staleness: secs(10),
        ..hpa()
    };
    let mut state = State::new();
    state.evaluate(&spec, &tuning, &observation(100, 2, &[2.0, 2.0]));
    // p1's sample is now 20 s old: missing, counted as 100 % on the way down.
    let mut obs = observation(120, 2, &[2.0, 2.0]);
    obs.samples.truncate(1);
    let d = state.evaluate(&spec, &tuning, &obs);
    assert_eq!(d.metrics[0].missing_pods, 1);
    // (2 + 10) / 2 = 6 → ratio 0.6 → ceil(1.2) = 2: no scale-down on a guess.
    assert_eq!(d.desired_replicas, 2);
}

#[test]
fn unready_pods_count_as_zero_on_scale_up_only() {
    // 2 ready at 12 (ratio 1.2), 2 starting (not Ready, their sidecars say 0). The ready pods
    // alone would say ceil(1.2 × 2) = 3, a scale-*down* under load; with the starting pods at
    // 0 % the ratio is 24 / 4 / 10 = 0.6: the direction flips, so nothing changes.
    let mut obs = observation(100, 4, &[12.0, 12.0, 0.0, 0.0]);
    obs.pods[2] = Pod::starting("p2", secs(95));
    obs.pods[3] = Pod::starting("p3", secs(95));
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!(d.metrics[0].unready_pods, 2);
    assert_eq!(d.desired_replicas, 4);
    // 2 ready at 40: (80 + 0 + 0) / 4 = 20 per pod → ratio 2 → ceil(2 × 4) = 8.
    for s in &mut obs.samples[..2] {
        s.value = 40.0;
    }
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!(d.desired_replicas, 8);
    // On the way down unready pods are left out: 2 ready at 2 → ceil(0.2 × 2) = 1.
    let mut obs = observation(100, 4, &[2.0, 2.0, 0.0, 0.0]);
    obs.pods[2] = Pod::starting("p2", secs(95));
    obs.pods[3] = Pod::starting("p3", secs(95));
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    assert_eq!(d.desired_replicas, 1);
}

#[test]
fn pending_terminating_and_finished_pods() {
    let mut obs = observation(100, 3, &[30.0, 0.0, 0.0, 0.0]);
    obs.pods[1].phase = PodPhase::Pending;
    obs.pods[2].phase = PodPhase::Terminating;
    obs.pods[3].phase = PodPhase::Finished;
    obs.samples.truncate(1);
    let d = State::new().evaluate(&free_spec(), &hpa(), &obs);
    let m = &d.metrics[0];
    assert_eq!((m.ready_pods, m.missing_pods, m.unready_pods), (1, 0, 1));
    // (30 + 0) / 2 = 15 → ceil(1.5 × 2) = 3 = current.
    assert_eq!(d.desired_replicas, 3);
}

#[test]
fn cpu_readiness_follows_the_hpa() {
    let mut spec = free_spec();
    spec.metrics = vec![MetricTarget {
        kind: MetricType::Cpu,
        target: 50.0,
    }];
    let cpu = |pod: &str, at: u64, value: f64| Sample {
        pod: pod.to_owned(),
        metric: MetricType::Cpu,
        at: secs(at),
        window: secs(30),
        value,
    };
    // Started at 1000, Ready at 1010; at 1030 its 30 s sample began before it was Ready: set
    // aside (within the initialization period). The old pod is ready.
    let obs = Observation {
        now: secs(1030),
        spec_replicas: 2,
        pods: vec![
            Pod::ready("old", Duration::ZERO),
            Pod {
                ready_changed_at: Some(secs(1010)),
                ..Pod::ready("new", secs(1000))
            },
        ],
        samples: vec![cpu("old", 1030, 100.0), cpu("new", 1030, 100.0)],
    };
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!((d.metrics[0].ready_pods, d.metrics[0].unready_pods), (1, 1));
    // ratio 2 with one unready at 0: 100 / 2 / 50 = 1 → within tolerance → keep 2.
    assert_eq!(d.desired_replicas, 2);
    // At 1041 one full window has passed since Ready: trusted.
    let mut obs = obs;
    obs.now = secs(1041);
    obs.samples = vec![cpu("old", 1041, 100.0), cpu("new", 1041, 100.0)];
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!(d.metrics[0].ready_pods, 2);
    assert_eq!(d.desired_replicas, 4);
}

#[test]
fn highest_metric_wins_and_unknown_metric_blocks_scale_down() {
    let mut spec = free_spec();
    spec.metrics.push(MetricTarget {
        kind: MetricType::RequestsPerSecond,
        target: 100.0,
    });
    let mut obs = observation(100, 4, &[5.0; 4]);
    obs.samples.extend((0..4).map(|i| Sample {
        metric: MetricType::RequestsPerSecond,
        value: 300.0,
        ..sample(&format!("p{i}"), 100, 0.0)
    }));
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!(d.metrics[0].replicas, Some(2));
    assert_eq!(d.metrics[1].replicas, Some(12));
    assert_eq!(d.desired_replicas, 12);
    assert!(d.scaling_active.message.contains("RequestsPerSecond"));
    // RequestsPerSecond unknown and Concurrency says 2: no scale-down on half the picture.
    obs.samples.truncate(4);
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!(d.desired_replicas, 4);
    assert_eq!(
        (d.scaling_active.status, d.scaling_active.reason),
        (false, "FailedGetMetrics")
    );
    // Unknown but the other says up: scale up.
    for s in &mut obs.samples {
        s.value = 30.0;
    }
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!(d.desired_replicas, 12);
    // Nothing known: nothing changes.
    obs.samples.clear();
    let d = State::new().evaluate(&spec, &hpa(), &obs);
    assert_eq!(d.desired_replicas, 4);
    assert!(!d.scaling_active.status);
}

#[test]
fn out_of_range_and_disabled() {
    let spec = Spec {
        min_replicas: 2,
        max_replicas: 5,
        ..free_spec()
    };
    let d = State::new().evaluate(&spec, &hpa(), &observation(100, 1, &[10.0]));
    assert_eq!(d.desired_replicas, 2);
    assert_eq!(d.scaling_limited.reason, "TooFewReplicas");
    let d = State::new().evaluate(&spec, &hpa(), &observation(100, 7, &[10.0; 7]));
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(d.scaling_limited.reason, "TooManyReplicas");
    let d = State::new().evaluate(&spec, &hpa(), &observation(100, 0, &[]));
    assert_eq!(d.desired_replicas, 0);
    assert_eq!(d.scaling_active.reason, "ScalingDisabled");
    // Within range, the recommendation is clamped with the HPA's reasons.
    let d = State::new().evaluate(&spec, &hpa(), &observation(100, 4, &[100.0; 4]));
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(
        (d.scaling_limited.status, d.scaling_limited.reason),
        (true, "TooManyReplicas")
    );
    let d = State::new().evaluate(&spec, &hpa(), &observation(100, 4, &[0.5; 4]));
    assert_eq!(d.desired_replicas, 2);
    assert_eq!(d.scaling_limited.reason, "TooFewReplicas");
}

#[test]
fn stabilization_windows_hold_the_count_for_their_length() {
    struct Case {
        name: &'static str,
        spec: Spec,
        replicas: i32,
        /// The per-pod load before and after the change at 15 s.
        load: (f64, f64),
        recommendation: i32,
        reason: &'static str,
        /// When the recommendation that holds the count leaves the window.
        released_at: u64,
    }
    let mut up = free_spec();
    up.scale_up.stabilization_window = secs(60);
    let cases = [
        // 300 s down window; first sight seeds it with the current count. At 300 the seed (at
        // 0) has left the window; the one at 15 is the highest left: 2.
        Case {
            name: "scale-down window keeps the highest recommendation",
            spec: spec(),
            replicas: 6,
            load: (10.0, 2.0),
            recommendation: 2,
            reason: "ScaleDownStabilized",
            released_at: 300,
        },
        // 60 s up window: the recommendation at 0 (2) holds the count until 60.
        Case {
            name: "scale-up window keeps the lowest recommendation",
            spec: up,
            replicas: 2,
            load: (10.0, 30.0),
            recommendation: 6,
            reason: "ScaleUpStabilized",
            released_at: 60,
        },
    ];
    for case in cases {
        let name = case.name;
        let n = case.replicas as usize;
        let mut state = State::new();
        let mut at = |t: u64, load: f64| {
            state.evaluate(
                &case.spec,
                &hpa(),
                &observation(t, case.replicas, &vec![load; n]),
            )
        };
        assert_eq!(at(0, case.load.0).desired_replicas, case.replicas, "{name}");
        let d = at(15, case.load.1);
        assert_eq!(d.recommendation, Some(case.recommendation), "{name}");
        assert_eq!(d.desired_replicas, case.replicas, "{name}");
        assert_eq!(d.able_to_scale.reason, case.reason, "{name}");
        let held = at(case.released_at - 1, case.load.1);
        assert_eq!(held.desired_replicas, case.replicas, "{name}");
        let released = at(case.released_at, case.load.1);
        assert_eq!(released.desired_replicas, case.recommendation, "{name}");
    }
}

#[test]
fn rate_limits_follow_the_policies() {
    let mut spec = spec();
    spec.max_replicas = 100;
    let tuning = hpa();
    let mut state = State::new();
    // HPA default up: max(+4 pods, +100 %) per 15 s. From 1: 5.
    let d = state.evaluate(&spec, &tuning, &observation(0, 1, &[400.0]));
    assert_eq!(d.recommendation, Some(40));
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(d.scaling_limited.reason, "ScaleUpLimit");
    state.record_scale(secs(0), 1, 5, &spec);
    // 10 s later the period started at 1: still 5 allowed at most.
    let d = state.evaluate(&spec, &tuning, &observation(10, 5, &[80.0; 5]));
    assert_eq!(d.desired_replicas, 5);
    assert_eq!(d.scaling_limited.reason, "ScaleUpLimit");
    // At 15 the event left the period: 5 → max(9, 10) = 10.
    let d = state.evaluate(&spec, &tuning, &observation(15, 5, &[80.0; 5]));
    assert_eq!(d.desired_replicas, 10);

    // Percent down, floor: 50 % per 60 s from 9 → 4 (4.5 rounds down).
    let mut spec = free_spec();
    spec.scale_down.policies = vec![Policy {
        kind: PolicyKind::Percent,
        value: 50,
        period: secs(60),
    }];
    let mut state = State::new();
    let d = state.evaluate(&spec, &tuning, &observation(0, 9, &[1.0; 9]));
    assert_eq!(d.desired_replicas, 4);
    assert_eq!(d.scaling_limited.reason, "ScaleDownLimit");
    state.record_scale(secs(0), 9, 4, &spec);
    // 30 s later the period began at 9: floor(4.5) = 4 is the floor; nothing more.
    let d = state.evaluate(&spec, &tuning, &observation(30, 4, &[1.0; 4]));
    assert_eq!(d.desired_replicas, 4);
    let d = state.evaluate(&spec, &tuning, &observation(60, 4, &[1.0; 4]));
    assert_eq!(d.desired_replicas, 2);
}

#[test]
fn crd_spec_parses_with_hpa_defaults() {
    let crd = AutoscalerSpec {
        target_ref: ScaleTargetRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "orders".into(),
        },
        min_replicas: 2,
        max_replicas: 10,
        metrics: vec![
            AutoscalerMetric {
                kind: MetricType::Concurrency,
                target: IntOrString::Int(10),
            },
            AutoscalerMetric {
                kind: MetricType::LatencyP99,
                target: IntOrString::String("250ms".into()),
            },
        ],
        behavior: Some(ScalingBehavior {
            scale_up: None,
            scale_down: Some(ScalingRules {
                stabilization_window: Some("60s".into()),
                max_change_percent: Some(50),
                period: Some("1m".into()),
            }),
        }),
    };
    let spec = Spec::from_crd(&crd).unwrap();
    assert_eq!(spec.target(MetricType::LatencyP99), Some(0.25));
    assert_eq!(spec.scale_up, Rules::hpa_scale_up());
    assert_eq!(spec.scale_down.stabilization_window, secs(60));
    assert_eq!(
        spec.scale_down.policies,
        vec![Policy {
            kind: PolicyKind::Percent,
            value: 50,
            period: secs(60)
        }]
    );
    // As the HPA's utilization, a CPU target may exceed the request (pods with higher limits).
    let mut above_request = crd.clone();
    above_request.metrics.push(AutoscalerMetric {
        kind: MetricType::Cpu,
        target: IntOrString::Int(150),
    });
    let spec = Spec::from_crd(&above_request).unwrap();
    assert_eq!(spec.target(MetricType::Cpu), Some(150.0));
    let mut bad = crd.clone();
    bad.metrics[1].target = IntOrString::Int(3);
    let error = Spec::from_crd(&bad).unwrap_err();
    assert_eq!(error.field, "spec.metrics[1].target");
    let mut bad = crd;
    bad.behavior
        .as_mut()
        .unwrap()
        .scale_down
        .as_mut()
        .unwrap()
        .period = Some("soon".into());
    assert_eq!(
        Spec::from_crd(&bad).unwrap_err().field,
        "spec.behavior.scaleDown.period"
    );
}

// ------------------------------------------------------------------------ Weir's windows

/// Weir's tuning evaluated every 2 s on a workload under a total load, each stretch starting
/// where the one before stopped.
struct Run {
    spec: Spec,
    state: State,
    replicas: i32,
    at: u64,
}

impl Run {
    fn new(spec: Spec, replicas: i32) -> Self {
        Self {
            spec,
            state: State::new(),
            replicas,
            at: 0,
        }
    }

    /// Evaluates from `self.at` to `to` (excluded), scaling as decided; returns the decisions.
    fn until(&mut self, to: u64, total: impl Fn(u64) -> f64) -> Vec<Decision> {
        assert!(to >= self.at, "a stretch ends after it starts");
        let tuning = Tuning::weir();
        let mut out = Vec::new();
        let mut t = self.at;
        while t < to {
            let n = self.replicas as usize;
            let per_pod = total(t) / n as f64;
            let observation = observation(t, self.replicas, &vec![per_pod; n]);
            let d = self.state.evaluate(&self.spec, &tuning, &observation);
            if d.rescale() {
                self.state
                    .record_scale(secs(t), self.replicas, d.desired_replicas, &self.spec);
                self.replicas = d.desired_replicas;
            }
            out.push(d);
            t += 2;
        }
        self.at = to;
        out
    }
}

#[test]
fn the_window_averages_the_total_so_new_pods_lower_the_value_at_once() {
    let mut run = Run::new(spec(), 4);
    run.until(60, |_| 40.0);
    assert_eq!(run.replicas, 4);
    // 1.5× the load: below the panic threshold; the stable window ramps towards 6 pods and
    // does not overshoot even though pods are added while the window remembers the surge.
    let decisions = run.until(200, |_| 60.0);
    assert!(decisions.iter().all(|d| !d.panicking));
    assert_eq!(run.replicas, 6);
    assert!(decisions.iter().all(|d| d.desired_replicas <= 6));
}

#[test]
fn panic_scales_up_at_once_and_never_down_while_panicking() {
    let mut run = Run::new(spec(), 2);
    run.until(60, |_| 20.0);
    // 5× the load at 60: the short window crosses 2× within a tick or two.
    let decisions = run.until(70, |_| 100.0);
    let first = decisions.iter().find(|d| d.panicking).expect("panics");
    assert!(first.now <= secs(62), "panicked at {:?}", first.now);
    assert_eq!(first.scaling_active.reason, "Panic");
    // Past the HPA's rate limit (+4 or +100 % per 15 s from 2 → 6 at most): at once to 10.
    assert_eq!(run.replicas, 10);
    // Load drops back at 70: still panicking (no scale-down) until the trigger (last held at
    // 60 or 62) has been off for a whole stable window.
    let window = Tuning::weir().stable_window.as_secs();
    let decisions = run.until(60 + window, |_| 20.0);
    assert!(
        decisions
            .iter()
            .all(|d| d.panicking && d.desired_replicas == 10)
    );
    run.until(64 + window, |_| 20.0);
    let calm = run.until(120, |_| 20.0);
    assert!(calm.iter().all(|d| !d.panicking));
    // Then the HPA's scale-down window (300 s) holds the highest *stable* recommendation made
    // meanwhile: the stable window saw the surge only in part, so fewer than the panic's 10.
    let replicas = run.replicas;
    assert!((3..10).contains(&replicas), "{replicas}");
    run.until(500, |_| 20.0);
    assert_eq!(run.replicas, 2);
}

#[test]
fn panic_respects_max_replicas() {
    let spec = Spec {
        max_replicas: 6,
        ..spec()
    };
    let mut run = Run::new(spec, 2);
    run.until(20, |_| 20.0);
    let decisions = run.until(30, |_| 200.0);
    assert_eq!(run.replicas, 6);
    let last = decisions.last().unwrap();
    assert!(last.panicking);
    assert_eq!(
        (last.scaling_limited.status, last.scaling_limited.reason),
        (true, "TooManyReplicas")
    );
}

#[test]
fn the_same_history_gives_the_same_decisions() {
    let load = |t: u64| 30.0 + ((t * 7919) % 23) as f64;
    let (mut a, mut b) = (Run::new(spec(), 3), Run::new(spec(), 3));
    assert_eq!(a.until(600, load), b.until(600, load));
}
