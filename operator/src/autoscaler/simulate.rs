//! The autoscaler against load curves, beside a plain HPA, in simulated time.
//!
//! A [`Curve`] gives the total load — requests in flight across the deployment — second by
//! second (the noisy curve from a fixed seed, so every run is the same). A simulated cluster runs
//! the deployment: the load splits evenly over the Ready pods; a new pod becomes Ready
//! [`Scenario::startup`] after it was created; a removed pod goes at once (not-ready pods first,
//! then the newest, as the ReplicaSet controller does). Both autoscalers run the same
//! [`algorithm`](super::algorithm) code on the same load, with the same spec (min, max, target 10
//! per pod, the HPA's default behavior); what differs is what a real deployment of each would see
//! and how often it decides:
//!
//! - **Weir**: every sidecar's in-flight gauge scraped every 2 s, an evaluation every 2 s with
//!   [`Tuning::weir`] (20 s stable window, 6 s panic window at 2× the target).
//! - **HPA**: metrics.k8s.io-style samples — each pod's mean load over the last 15 s, refreshed
//!   every 15 s (metrics-server's default resolution) — read by a sync every 15 s (the
//!   controller manager's default, 5 s after the metrics refresh), with [`Tuning::hpa`]: the
//!   latest sample per pod, no panic, the CPU readiness rules (samples are "CPU").
//!
//! "Needed capacity" is reached when the Ready pods hold the load at most 10 % above the
//! target (the tolerance: neither autoscaler acts inside it). Figures per run: the reaction time
//! after the surge begins (step, ramp plateau, spike), the seconds under capacity, the
//! replica-minutes used (every pod, Ready or not), the scale changes and the flaps (changes of
//! direction: up after down or down after up).

use super::algorithm::{
    Decision, MetricTarget, Observation, Pod, PodPhase, Rules, Sample, Spec, State, Tuning,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weir_crds::MetricType;

/// A load curve: total requests in flight over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// 40 in flight, 160 from 120 s to 720 s, 40 again.
    Step,
    /// 40, rising linearly from 120 s to 200 at 420 s, held to 720 s, down to 40 at 1020 s.
    Ramp,
    /// 40 with 300 for 30 s from 120 s.
    Spike,
    /// 100 ± 60 with a 10 minute period.
    Sine,
    /// 80 with ±20 % noise (a fixed seed), second by second.
    Noisy,
}

impl Curve {
    pub const ALL: [Curve; 5] = [
        Curve::Step,
        Curve::Ramp,
        Curve::Spike,
        Curve::Sine,
        Curve::Noisy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Curve::Step => "step",
            Curve::Ramp => "ramp",
            Curve::Spike => "spike",
            Curve::Sine => "sine",
            Curve::Noisy => "noisy",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The high phase whose reaction time is measured: (start, end) in seconds.
    pub fn surge(self) -> Option<(u32, u32)> {
        match self {
            Curve::Step => Some((120, 720)),
            Curve::Ramp => Some((420, 720)),
            Curve::Spike => Some((120, 150)),
            Curve::Sine | Curve::Noisy => None,
        }
    }

    /// The load, second by second, for `duration` seconds.
    pub fn series(self, duration: u32, seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..duration)
            .map(|t| {
                let t = f64::from(t);
                match self {
                    Curve::Step => {
                        if (120.0..720.0).contains(&t) {
                            160.0
                        } else {
                            40.0
                        }
                    }
                    Curve::Ramp => {
                        if t < 120.0 {
                            40.0
                        } else if t < 420.0 {
                            40.0 + 160.0 * (t - 120.0) / 300.0
                        } else if t < 720.0 {
                            200.0
                        } else if t < 1020.0 {
                            200.0 - 160.0 * (t - 720.0) / 300.0
                        } else {
                            40.0
                        }
                    }
                    Curve::Spike => {
                        if (120.0..150.0).contains(&t) {
                            300.0
                        } else {
                            40.0
                        }
                    }
                    Curve::Sine => 100.0 + 60.0 * (2.0 * std::f64::consts::PI * t / 600.0).sin(),
                    Curve::Noisy => 80.0 * (1.0 + 0.2 * rng.normal()).max(0.2),
                }
            })
            .collect()
    }
}

/// xorshift64*: tiny, deterministic, good enough for load noise.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal (Irwin–Hall with 12 terms).
    fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// The simulated deployment and the autoscalers' cadence.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Seconds simulated.
    pub duration: u32,
    /// Per-pod target: requests in flight.
    pub target: f64,
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Seconds from a pod's creation to Ready.
    pub startup: u32,
    /// Weir's scrape and evaluation interval, seconds.
    pub weir_interval: u32,
    /// The HPA's sync period and its offset after the metrics refresh, seconds.
    pub hpa_sync: u32,
    pub hpa_sync_offset: u32,
    /// metrics.k8s.io's resolution: each sample averages this many seconds, refreshed as often.
    pub metrics_resolution: u32,
    /// The noisy curve's seed.
    pub seed: u64,
    /// How each autoscaler reads its metrics.
    pub weir: Tuning,
    pub hpa: Tuning,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            duration: 1200,
            target: 10.0,
            min_replicas: 2,
            max_replicas: 40,
            startup: 10,
            weir_interval: 2,
            hpa_sync: 15,
            hpa_sync_offset: 5,
            metrics_resolution: 15,
            seed: 0x5eed_1e55,
            weir: Tuning::weir(),
            hpa: Tuning::hpa(),
        }
    }
}

impl Scenario {
    /// The spec both autoscalers run: min/max, one load metric at `target`, the HPA's default
    /// behavior (scale up by max(4 pods, 100 %) per 15 s, scale down after a 300 s window).
    pub fn spec(&self, kind: MetricType) -> Spec {
        Spec {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            metrics: vec![MetricTarget {
                kind,
                target: self.target,
            }],
            scale_up: Rules::hpa_scale_up(),
            scale_down: Rules::hpa_scale_down(),
        }
    }
}

/// Which autoscaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autoscaler {
    Weir,
    Hpa,
}

impl Autoscaler {
    pub fn name(self) -> &'static str {
        match self {
            Autoscaler::Weir => "weir",
            Autoscaler::Hpa => "hpa",
        }
    }
}

/// One second of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t: u32,
    pub load: f64,
    /// Pods (Ready or not) after this second's decision.
    pub replicas: i32,
    pub ready: i32,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Seconds from the surge's start to Ready capacity for its load; `None`: not within it.
    pub reaction: Option<u32>,
    /// Seconds with the Ready pods more than 10 % over the target.
    pub under_capacity: u32,
    pub replica_minutes: f64,
    pub scale_changes: u32,
    /// Changes of direction.
    pub flaps: u32,
    pub peak_replicas: i32,
    /// Pods the peak load needs (at the target, within the tolerance).
    pub peak_needed: i32,
}

/// One autoscaler's run through one curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub autoscaler: Autoscaler,
    pub timeline: Vec<Point>,
    /// Every decision that changed the scale.
    pub scalings: Vec<Decision>,
    pub stats: Stats,
}

/// Both autoscalers through one curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub curve: Curve,
    pub scenario: Scenario,
    pub weir: Run,
    pub hpa: Run,
}

impl Comparison {
    pub fn run(curve: Curve, scenario: &Scenario) -> Self {
        Self {
            curve,
            scenario: scenario.clone(),
            weir: simulate(curve, scenario, Autoscaler::Weir),
            hpa: simulate(curve, scenario, Autoscaler::Hpa),
        }
    }
}

#[derive(Debug)]
struct SimPod {
    name: String,
    created: u32,
    ready_at: u32,
    /// Load served each second (0 while not Ready), the last `metrics_resolution` seconds.
    served: std::collections::VecDeque<f64>,
}

/// Runs one autoscaler through one curve.
pub fn simulate(curve: Curve, scenario: &Scenario, autoscaler: Autoscaler) -> Run {
    let load = curve.series(scenario.duration, scenario.seed);
    let (kind, tuning) = match autoscaler {
        Autoscaler::Weir => (MetricType::Concurrency, scenario.weir),
        Autoscaler::Hpa => (MetricType::Cpu, scenario.hpa),
    };
    let spec = scenario.spec(kind);
    let mut state = State::new();
    let mut next_id = 0u32;
    let mut new_pod = |created: u32, ready_at: u32| {
        next_id += 1;
        SimPod {
            name: format!("pod-{next_id}"),
            created,
            ready_at,
            served: Default::default(),
        }
    };
    // Start at the count the initial load needs, long Ready.
    let initial =
        needed(load[0], scenario.target).clamp(scenario.min_replicas, scenario.max_replicas);
    let mut pods: Vec<SimPod> = (0..initial).map(|_| new_pod(0, 0)).collect();
    let mut replicas = initial;
    let mut pending_samples: Vec<Sample> = Vec::new();
    let mut timeline = Vec::with_capacity(load.len());
    let mut scalings = Vec::new();
    let at = |t: u32| Duration::from_secs(u64::from(t) + 3600);
    for (t, &offered) in (0u32..).zip(load.iter()) {
        let ready = pods.iter().filter(|p| p.ready_at <= t).count();
        let per_pod = if ready == 0 {
            0.0
        } else {
            offered / ready as f64
        };
        for pod in &mut pods {
            let served = if pod.ready_at <= t { per_pod } else { 0.0 };
            pod.served.push_back(served);
            if pod.served.len() > scenario.metrics_resolution as usize {
                pod.served.pop_front();
            }
        }
        let evaluate = match autoscaler {
            Autoscaler::Weir => {
                if t % scenario.weir_interval == 0 {
                    // Each sidecar's in-flight gauge (0 on a pod not Ready: no traffic yet).
                    pending_samples.extend(pods.iter().map(|p| Sample {
                        pod: p.name.clone(),
                        metric: kind,
                        at: at(t),
                        window: Duration::ZERO,
                        value: if p.ready_at <= t { per_pod } else { 0.0 },
                    }));
                    true
                } else {
                    false
                }
            }
            Autoscaler::Hpa => {
                if t % scenario.metrics_resolution == 0 {
                    // metrics-server: each pod's mean over its last window, once it has one.
                    pending_samples.extend(
                        pods.iter()
                            .filter(|p| p.served.len() >= scenario.metrics_resolution as usize)
                            .map(|p| Sample {
                                pod: p.name.clone(),
                                metric: kind,
                                at: at(t),
                                window: Duration::from_secs(u64::from(scenario.metrics_resolution)),
                                value: p.served.iter().sum::<f64>() / p.served.len() as f64,
                            }),
                    );
                }
                t % scenario.hpa_sync == scenario.hpa_sync_offset % scenario.hpa_sync
            }
        };
        if evaluate {
            let observation = Observation {
                now: at(t),
                spec_replicas: replicas,
                pods: pods
                    .iter()
                    .map(|p| {
                        let is_ready = p.ready_at <= t;
                        Pod {
                            name: p.name.clone(),
                            phase: PodPhase::Running,
                            ready: is_ready,
                            // Pods of the initial set started long ago.
                            started_at: Some(if p.created == 0 && p.ready_at == 0 {
                                Duration::ZERO
                            } else {
                                at(p.created)
                            }),
                            ready_changed_at: Some(if is_ready {
                                if p.ready_at == 0 {
                                    Duration::ZERO
                                } else {
                                    at(p.ready_at)
                                }
                            } else {
                                at(p.created)
                            }),
                        }
                    })
                    .collect(),
                samples: std::mem::take(&mut pending_samples),
            };
            let decision = state.evaluate(&spec, &tuning, &observation);
            if decision.rescale() {
                let to = decision.desired_replicas;
                state.record_scale(at(t), replicas, to, &spec);
                while (pods.len() as i32) < to {
                    pods.push(new_pod(t, t + scenario.startup));
                }
                while (pods.len() as i32) > to {
                    // Not-ready pods go first, then the newest.
                    let victim = pods
                        .iter()
                        .rposition(|p| p.ready_at > t)
                        .unwrap_or(pods.len() - 1);
                    pods.remove(victim);
                }
                replicas = to;
                scalings.push(decision);
            }
        }
        timeline.push(Point {
            t,
            load: offered,
            replicas,
            ready: pods.iter().filter(|p| p.ready_at <= t).count() as i32,
        });
    }
    let stats = stats(curve, scenario, &timeline, &scalings);
    Run {
        autoscaler,
        timeline,
        scalings,
        stats,
    }
}

/// Pods `load` needs at `target`, within the 10 % tolerance.
fn needed(load: f64, target: f64) -> i32 {
    (load / (target * 1.1) - 1e-9).ceil().max(1.0) as i32
}

fn has_capacity(point: &Point, target: f64) -> bool {
    f64::from(point.ready) * target * 1.1 + 1e-9 >= point.load
}

fn stats(curve: Curve, scenario: &Scenario, timeline: &[Point], scalings: &[Decision]) -> Stats {
    let target = scenario.target;
    let reaction = curve.surge().and_then(|(start, end)| {
        timeline
            .iter()
            .filter(|p| p.t >= start && p.t < end)
            .find(|p| has_capacity(p, target))
            .map(|p| p.t - start)
    });
    let under_capacity = timeline.iter().filter(|p| !has_capacity(p, target)).count() as u32;
    let replica_minutes = timeline.iter().map(|p| f64::from(p.replicas)).sum::<f64>() / 60.0;
    let mut flaps = 0;
    let mut last_direction = 0i32;
    for decision in scalings {
        let direction = (decision.desired_replicas - decision.current_replicas).signum();
        if last_direction != 0 && direction != last_direction {
            flaps += 1;
        }
        last_direction = direction;
    }
    let peak_load = timeline.iter().map(|p| p.load).fold(0.0, f64::max);
    Stats {
        reaction,
        under_capacity,
        replica_minutes,
        scale_changes: scalings.len() as u32,
        flaps,
        peak_replicas: timeline.iter().map(|p| p.replicas).max().unwrap_or(0),
        peak_needed: needed(peak_load, target).clamp(scenario.min_replicas, scenario.max_replicas),
    }
}

/// The comparison table: one row per curve and autoscaler.
pub fn table(comparisons: &[Comparison]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<5} {:>17} {:>15} {:>12} {:>8} {:>6} {:>13}",
        "curve",
        "who",
        "to capacity after",
        "under capacity",
        "replica-min",
        "changes",
        "flaps",
        "peak (needed)"
    );
    for comparison in comparisons {
        for run in [&comparison.weir, &comparison.hpa] {
            let s = &run.stats;
            let reaction = match (comparison.curve.surge(), s.reaction) {
                (None, _) => "-".to_owned(),
                (Some(_), Some(r)) => format!("{r} s"),
                (Some((start, end)), None) => format!("never ({} s)", end - start),
            };
            let _ = writeln!(
                out,
                "{:<6} {:<5} {:>17} {:>15} {:>12.1} {:>8} {:>6} {:>13}",
                comparison.curve.name(),
                run.autoscaler.name(),
                reaction,
                format!("{} s", s.under_capacity),
                s.replica_minutes,
                s.scale_changes,
                s.flaps,
                format!("{} ({})", s.peak_replicas, s.peak_needed),
            );
        }
    }
    out
}

/// Where the chart of `curve` goes in `dir`.
pub fn chart_path(dir: &Path, curve: Curve) -> PathBuf {
    dir.join(format!("autoscaler-{}.png", curve.name()))
}
