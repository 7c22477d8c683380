//! The judgement of a rollout step: a pure function of (spec, previous state, measured interval).
//!
//! The state is the resource's own `status.analysis` ([`AnalysisStatus`]): what a restarted
//! operator or a new leader reads back is exactly what the judgement needs, so a rollout resumes
//! at the step it was at ([`resume`]) — it neither starts over nor jumps ahead. A state recorded
//! for another generation of the split (any spec edit) starts over at step 1.
//!
//! Rules (DESIGN.md, "Canary analysis"):
//! - fewer than `minRequests` canary requests in the interval, or no latency measured while
//!   `latencyP99` is set → **Inconclusive**: the step is held and judged again; silence never
//!   promotes, and a criterion that cannot be measured never passes silently;
//! - the share of non-5xx answers below `successRate`, or the p99 above `latencyP99` →
//!   **Failed**: counted; the step is held until the count reaches `maxFailures`, then the
//!   rollout is **RolledBack** (canary weight 0). Failures count over the whole rollout, not per
//!   step: a canary that fails now and then is not promoted by retrying;
//! - otherwise **Passed**: the next step, or after the last one **Succeeded** at its weight.

use std::time::Duration;
use weir_crds::{AnalysisPhase, AnalysisStatus, Judgement, JudgementResult};

/// A parsed, checked `spec.analysis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The canary backend's subset.
    pub canary: String,
    /// Canary weight in percent per step, strictly increasing, each 1–100.
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub min_requests: u64,
    pub success_rate: Option<f64>,
    pub latency_p99: Option<Duration>,
    pub max_failures: u32,
}

impl Spec {
    /// Checks `analysis` as the CRD schema does (local mode has no API server): the Bounds
    /// table's ranges, increasing steps, a canary that is one of `subsets`. The error names the
    /// field.
    pub fn parse<'a>(
        analysis: &weir_crds::Analysis,
        subsets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, String> {
        use weir_proxy_api::bounds;
        if !subsets.into_iter().any(|s| s == analysis.canary) {
            return Err(format!(
                "spec.analysis.canary: {:?} is not one of the backends",
                analysis.canary
            ));
        }
        if analysis.steps.is_empty() || analysis.steps.len() > bounds::ANALYSIS_MAX_STEPS {
            return Err(format!(
                "spec.analysis.steps: must hold 1 to {} steps",
                bounds::ANALYSIS_MAX_STEPS
            ));
        }
        let mut steps = Vec::with_capacity(analysis.steps.len());
        // A whole number within `bound`, or the refusal naming `spec.analysis.{field}`.
        let within = |field: &str, value: i32, bound: bounds::Bound<u32>| {
            u32::try_from(value)
                .ok()
                .filter(|v| bound.contains(*v))
                .ok_or_else(|| format!("spec.analysis.{field}: {}", bound.message()))
        };
        for (i, step) in analysis.steps.iter().enumerate() {
            let step = within(&format!("steps[{i}]"), *step, bounds::ANALYSIS_STEP)?;
            if steps.last().is_some_and(|last| *last >= step) {
                return Err(format!(
                    "spec.analysis.steps[{i}]: steps must be strictly increasing"
                ));
            }
            steps.push(step);
        }
        let duration = |field: &str, text: &str, bound: bounds::Bound<Duration>| {
            text.parse::<weir_proxy_api::Duration>()
                .ok()
                .map(|d| d.0)
                .filter(|d| bound.contains(*d))
                .ok_or_else(|| {
                    format!(
                        "spec.analysis.{field}: {text:?} {}",
                        bounds::duration_message(&bound)
                    )
                })
        };
        let count = |field: &str, value: Option<i32>| {
            within(field, value.unwrap_or(1), bounds::ANALYSIS_COUNT)
        };
        let success_rate = match analysis.success_rate {
            Some(rate) if !bounds::RATIO.contains_f64(rate) => {
                return Err(format!(
                    "spec.analysis.successRate: {}",
                    bounds::RATIO.message()
                ));
            }
            other => other,
        };
        Ok(Self {
            canary: analysis.canary.clone(),
            steps,
            interval: duration("interval", &analysis.interval, bounds::ANALYSIS_INTERVAL)?,
            min_requests: u64::from(count("minRequests", analysis.min_requests)?),
            success_rate,
            latency_p99: analysis
                .latency_p99
                .as_deref()
                .map(|text| duration("latencyP99", text, bounds::DURATION))
                .transpose()?,
            max_failures: count("maxFailures", analysis.max_failures)?,
        })
    }

    /// The canary's weight (percent) at 1-based `step`.
    fn weight_at(&self, step: u32) -> u32 {
        let index = usize::try_from(step.max(1) - 1).unwrap_or(usize::MAX);
        self.steps
            .get(index)
            .or(self.steps.last())
            .copied()
            .unwrap_or(0)
    }

    fn step_count(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX)
    }
}

/// What the callers' sidecars saw of the canary during one interval, all callers summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Canary answers (the app's and Weir's refusals alike).
    pub requests: u64,
    /// Of those, 5xx answers.
    pub failures: u64,
    /// The 99th percentile of their latency; `None` when nothing was measured.
    pub latency_p99: Option<Duration>,
}

/// What a judgement did to the rollout: the Event and the log line it gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Inconclusive, or failed fewer than `maxFailures` times: the step runs again.
    Held,
    /// Passed: the next step started.
    Promoted,
    /// Passed the last step.
    Succeeded,
    /// Failed `maxFailures` times: canary weight 0.
    RolledBack,
    /// The rollout had already ended; nothing judged.
    Finished,
}

impl Outcome {
    /// The Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Held => "StepHeld",
            Self::Promoted => "StepPromoted",
            Self::Succeeded => "RolloutSucceeded",
            Self::RolledBack => "RolledBack",
            Self::Finished => "RolloutFinished",
        }
    }
}

/// A new rollout of `generation`: step 1 at the first step's weight.
pub fn begin(spec: &Spec, generation: i64) -> AnalysisStatus {
    AnalysisStatus {
        phase: AnalysisPhase::Progressing,
        step: 1,
        canary_weight: weight_i32(spec.weight_at(1)),
        failures: 0,
        observed_generation: Some(generation),
        last_judgement: None,
        message: format!(
            "step 1 of {}: canary at {}%",
            spec.steps.len(),
            spec.weight_at(1)
        ),
    }
}

/// The state to go on from: `recorded` (the status read back) when it is of this `generation`,
/// otherwise a new rollout. The weight is recomputed from the step, so a status edited by hand
/// or written for other steps can never put the canary anywhere but on one of `spec.steps`
/// (or 0 once rolled back).
pub fn resume(spec: &Spec, generation: i64, recorded: Option<&AnalysisStatus>) -> AnalysisStatus {
    match recorded {
        Some(status) if status.observed_generation == Some(generation) => {
            let mut state = status.clone();
            let step = u32::try_from(status.step)
                .unwrap_or(1)
                .clamp(1, spec.step_count());
            state.step = weight_i32(step);
            state.failures = status.failures.max(0);
            state.canary_weight = match status.phase {
                AnalysisPhase::RolledBack => 0,
                _ => weight_i32(spec.weight_at(step)),
            };
            state
        }
        _ => begin(spec, generation),
    }
}

/// Judges the interval `measured` of the step `state` is at.
pub fn judge(
    spec: &Spec,
    state: &AnalysisStatus,
    measured: &Measured,
) -> (AnalysisStatus, Outcome) {
    if state.phase != AnalysisPhase::Progressing {
        return (state.clone(), Outcome::Finished);
    }
    let step = u32::try_from(state.step)
        .unwrap_or(1)
        .clamp(1, spec.step_count());
    let steps = spec.steps.len();
    let success_rate = (measured.requests > 0).then(|| {
        measured.requests.saturating_sub(measured.failures) as f64 / measured.requests as f64
    });
    let judgement = |result| Judgement {
        requests: i64::try_from(measured.requests).unwrap_or(i64::MAX),
        success_rate,
        latency_p99: measured
            .latency_p99
            .filter(|_| measured.requests > 0)
            .map(|d| weir_proxy_api::Duration(round_ms(d)).to_string()),
        result,
    };
    let mut next = state.clone();
    next.step = weight_i32(step);
    let at = format!("step {step} of {steps} ({}%)", spec.weight_at(step));

    if measured.requests < spec.min_requests {
        next.last_judgement = Some(judgement(JudgementResult::Inconclusive));
        next.message = format!(
            "{at}: inconclusive, held: {} of the {} canary requests needed",
            measured.requests, spec.min_requests
        );
        return (next, Outcome::Held);
    }
    if spec.latency_p99.is_some() && measured.latency_p99.is_none() {
        next.last_judgement = Some(judgement(JudgementResult::Inconclusive));
        next.message = format!("{at}: inconclusive, held: no latency was measured");
        return (next, Outcome::Held);
    }

    let mut why = Vec::new();
    if let (Some(wanted), Some(rate)) = (spec.success_rate, success_rate)
        && rate < wanted
    {
        why.push(format!("success rate {rate:.4} below {wanted}"));
    }
    if let (Some(wanted), Some(p99)) = (spec.latency_p99, measured.latency_p99)
        && p99 > wanted
    {
        why.push(format!(
            "p99 latency {} above {}",
            weir_proxy_api::Duration(round_ms(p99)),
            weir_proxy_api::Duration(wanted)
        ));
    }

    if !why.is_empty() {
        next.last_judgement = Some(judgement(JudgementResult::Failed));
        next.failures = state.failures.saturating_add(1);
        let failures = u32::try_from(next.failures).unwrap_or(u32::MAX);
        if failures >= spec.max_failures {
            next.phase = AnalysisPhase::RolledBack;
            next.canary_weight = 0;
            next.message = format!(
                "{at}: failed ({}); rolled back after {failures} failed judgement(s): canary at 0%",
                why.join(", ")
            );
            return (next, Outcome::RolledBack);
        }
        next.message = format!(
            "{at}: failed ({}), {failures} of {} failures allowed: held",
            why.join(", "),
            spec.max_failures
        );
        return (next, Outcome::Held);
    }

    next.last_judgement = Some(judgement(JudgementResult::Passed));
    if step >= spec.step_count() {
        next.phase = AnalysisPhase::Succeeded;
        next.canary_weight = weight_i32(spec.weight_at(step));
        next.message = format!(
            "{at}: passed; rollout succeeded, the canary keeps {}%",
            spec.weight_at(step)
        );
        return (next, Outcome::Succeeded);
    }
    let promoted = step + 1;
    next.step = weight_i32(promoted);
    next.canary_weight = weight_i32(spec.weight_at(promoted));
    next.message = format!(
        "{at}: passed; promoted to step {promoted} of {steps}: canary at {}%",
        spec.weight_at(promoted)
    );
    (next, Outcome::Promoted)
}

/// A latency to the millisecond (at least 1 ms when not zero): what status shows.
fn round_ms(d: Duration) -> Duration {
    let ms = d.as_secs_f64() * 1000.0;
    if ms > 0.0 && ms < 1.0 {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(ms.round() as u64)
    }
}

fn weight_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}
