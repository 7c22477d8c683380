//! The figures' arithmetic over the sidecars' and the operator's `/metrics`: sums by label,
//! histogram buckets, counter deltas. The text is read by the sidecar API's [`metrics_text`].

use weir_proxy_api::metrics_text;
pub use weir_proxy_api::metrics_text::{Sample, quantile};

/// Every sample of a `/metrics` answer; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    metrics_text::samples(text).collect()
}

/// The sum of every series of `name` whose labels include `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.matches(filter))
        .map(|s| s.value)
        .sum()
}

/// The series of `name` matching `filter`, summed per value of the label `by`.
pub fn sum_by(
    samples: &[Sample],
    name: &str,
    filter: &[(&str, &str)],
    by: &str,
) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for s in samples
        .iter()
        .filter(|s| s.name == name && s.matches(filter))
    {
        let key = s.label(by).unwrap_or("").to_owned();
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v += s.value,
            None => out.push((key, s.value)),
        }
    }
    out
}

/// A histogram's cumulative buckets (`le`, count), summed over the series matching `filter`,
/// sorted by bound.
pub fn buckets(samples: &[Sample], histogram: &str, filter: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let name = format!("{histogram}_bucket");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (le, count) in sum_by(samples, &name, filter, "le") {
        if let Some(bound) = metrics_text::number(&le) {
            out.push((bound, count));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `later - earlier` per bucket bound (a counter that went down — a restart — counts from zero).
pub fn bucket_delta(later: &[(f64, f64)], earlier: &[(f64, f64)]) -> Vec<(f64, f64)> {
    later
        .iter()
        .map(|&(le, count)| {
            let before = earlier
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, counter_delta(count, before))
        })
        .collect()
}

/// The increase of a counter, treating a decrease as a restart from zero.
pub fn counter_delta(later: f64, earlier: f64) -> f64 {
    if later >= earlier {
        later - earlier
    } else {
        later
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weir_requests_total Requests.
# TYPE weir_requests_total counter
weir_requests_total{code="200",direction="inbound",service="orders",subset=""} 90
weir_requests_total{code="503",direction="inbound",service="orders",subset=""} 10
weir_requests_total{code="200",direction="outbound",service="payments",subset="v1"} 45
weir_requests_total{code="200",direction="outbound",service="payments",subset="v2"} 5
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="0.01"} 50
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="0.1"} 100
weir_request_duration_seconds_bucket{direction="inbound",service="orders",subset="",le="+Inf"} 100
weir_config_version 7
odd{msg="a \"quoted\" \\ value, with, commas"} 1.5 1700000000
"#;

    #[test]
    fn parses_samples_with_labels_and_escapes() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 9);
        assert_eq!(samples[0].label("code"), Some("200"));
        assert_eq!(samples[7].name, "weir_config_version");
        assert_eq!(samples[7].value, 7.0);
        assert_eq!(
            samples[8].label("msg"),
            Some(r#"a "quoted" \ value, with, commas"#)
        );
        assert_eq!(samples[8].value, 1.5);
    }

    #[test]
    fn sums_and_groups() {
        let samples = parse(TEXT);
        let inbound = [("direction", "inbound")];
        assert_eq!(sum(&samples, "weir_requests_total", &inbound), 100.0);
        let split = sum_by(
            &samples,
            "weir_requests_total",
            &[("direction", "outbound"), ("service", "payments")],
            "subset",
        );
        assert_eq!(split, vec![("v1".into(), 45.0), ("v2".into(), 5.0)]);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let samples = parse(TEXT);
        let b = buckets(&samples, "weir_request_duration_seconds", &[]);
        assert_eq!(b.len(), 3);
        let p50 = quantile(&b, 0.5).unwrap();
        assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
        let p99 = quantile(&b, 0.99).unwrap();
        assert!((p99 - (0.01 + 0.09 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        // Everything above the last finite bound.
        assert_eq!(
            quantile(&[(1.0, 0.0), (f64::INFINITY, 3.0)], 0.5),
            Some(1.0)
        );
    }

    #[test]
    fn deltas_survive_restarts() {
        assert_eq!(counter_delta(10.0, 4.0), 6.0);
        assert_eq!(counter_delta(3.0, 40.0), 3.0);
        let d = bucket_delta(&[(0.1, 5.0), (f64::INFINITY, 8.0)], &[(0.1, 2.0)]);
        assert_eq!(d, vec![(0.1, 3.0), (f64::INFINITY, 8.0)]);
    }
}
