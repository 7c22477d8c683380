//! The weights a split routes with while its analysis runs: the canary's share comes from the
//! rollout, the other backends share the rest in proportion to their own weights.
//!
//! Applied to the split before translation ([`apply`]), so the translation, its refusal rules
//! and the `status.weights` summary see the weights actually in force.

use weir_crds::TrafficSplitSpec;

/// Weight units per percent: a rollout's weights sum to 1,000,000, the largest weight there is,
/// so the shares of the other backends keep six digits of precision.
const PER_PERCENT: u64 = 10_000;

/// `spec` with the canary backend at `percent` % of the traffic and the other backends sharing
/// the rest in proportion to their weights (equally when those are all 0). The remainder of the
/// integer division goes to the first backends, so the weights always sum to 1,000,000.
/// A `spec` without the canary backend is returned unchanged.
pub fn apply(spec: &TrafficSplitSpec, canary: &str, percent: u32) -> TrafficSplitSpec {
    let mut out = spec.clone();
    if !spec.backends.iter().any(|b| b.subset == canary) {
        return out;
    }
    let percent = u64::from(percent.min(100));
    let rest = (100 - percent) * PER_PERCENT;
    let others: Vec<usize> = (0..spec.backends.len())
        .filter(|i| spec.backends[*i].subset != canary)
        .collect();
    let total: u64 = others
        .iter()
        .map(|i| u64::try_from(spec.backends[*i].weight).unwrap_or(0))
        .sum();
    let share = |i: usize| -> u64 {
        if total == 0 {
            1
        } else {
            u64::try_from(spec.backends[i].weight).unwrap_or(0)
        }
    };
    let shares: u64 = if total == 0 {
        others.len() as u64
    } else {
        total
    };
    let mut given = 0;
    let mut weights: Vec<(usize, u64)> = others
        .iter()
        .map(|i| {
            let w = rest * share(*i) / shares.max(1);
            given += w;
            (*i, w)
        })
        .collect();
    let mut left = rest.saturating_sub(given);
    for (i, w) in weights.iter_mut() {
        if left == 0 {
            break;
        }
        if share(*i) > 0 {
            *w += 1;
            left -= 1;
        }
    }
    for backend in &mut out.backends {
        if backend.subset == canary {
            backend.weight = i32::try_from(percent * PER_PERCENT).unwrap_or(i32::MAX);
        }
    }
    for (i, w) in weights {
        out.backends[i].weight = i32::try_from(w).unwrap_or(i32::MAX);
    }
    out
}
