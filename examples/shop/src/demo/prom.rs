//! A small reader of the Prometheus text format, enough for what the sidecars expose: one sample
//! per line, `name{label="value",...} number`, comments skipped. A full client library would
//! bring a registry and an exposition writer we do not need; the dashboard only reads.

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `filter` is among its labels.
    pub fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter.iter().all(|(k, v)| self.label(k) == Some(v))
    }
}

/// Every sample of a `/metrics` answer; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    // The value, optionally followed by a timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    if name.is_empty() {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[end + 1..];
    }
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
        let bound = match le.as_str() {
            "+Inf" => f64::INFINITY,
            v => match v.parse() {
                Ok(b) => b,
                Err(_) => continue,
            },
        };
        out.push((bound, count));
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

/// The `q` quantile (0–1) of cumulative buckets, interpolated linearly inside the bucket where
/// it falls, as Prometheus' `histogram_quantile` does. `None` without observations. A quantile in
/// the `+Inf` bucket is reported as the highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
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
