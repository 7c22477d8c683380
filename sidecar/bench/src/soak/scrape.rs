//! Reading the sidecar's `/metrics`: sums of a family's samples grouped by some of their
//! labels. Only the Prometheus text format's sample lines are needed, and only from our own
//! sidecar, so a few lines of parsing do instead of a client library.

use std::collections::BTreeMap;

/// A sample's labels, as (name, value) pairs.
type Labels = Vec<(String, String)>;

/// One sample line: its metric name, labels and value.
fn sample(line: &str) -> Option<(&str, Labels, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let (labels, rest) = if line[name_end..].starts_with('{') {
        let close = line.rfind('}')?;
        (
            parse_labels(&line[name_end + 1..close])?,
            &line[close + 1..],
        )
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// `a="x",b="y\"z"` → `[(a, x), (b, y"z)]`.
fn parse_labels(text: &str) -> Option<Labels> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start_matches(',');
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_owned();
        let mut chars = rest[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        rest = rest[eq + 1..][1 + end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// The samples of `family`, summed per combination of the values of the `by` labels (joined
/// with `,`; the empty string when `by` is empty). Absent family: empty map.
pub fn sum_by(text: &str, family: &str, by: &[&str]) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for (name, labels, value) in text.lines().filter_map(sample) {
        if name != family {
            continue;
        }
        let key = by
            .iter()
            .map(|want| {
                labels
                    .iter()
                    .find(|(k, _)| k == want)
                    .map_or("", |(_, v)| v.as_str())
            })
            .collect::<Vec<_>>()
            .join(",");
        *sums.entry(key).or_insert(0.0) += value;
    }
    sums
}

/// The sum of every sample of `family`, `None` if it has none.
pub fn total(text: &str, family: &str) -> Option<f64> {
    let sums = sum_by(text, family, &[]);
    sums.get("").copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weir_timeouts_total Timeouts, by kind.
# TYPE weir_timeouts_total counter
weir_timeouts_total{service="default/slow",kind="request"} 7
weir_timeouts_total{service="default/flaky",kind="request"} 3
weir_timeouts_total{service="default/flaky",kind="per-try"} 2
weir_config_version 12
weir_config_rejected_total{source="file"} 4
weir_requests_total{direction="outbound",service="a\"b",subset="v1",code="200"} 1e3
weir_requests_total_extra 99
"#;

    #[test]
    fn samples_sum_by_labels() {
        let by_kind = sum_by(TEXT, "weir_timeouts_total", &["kind"]);
        assert_eq!(by_kind.get("request"), Some(&10.0));
        assert_eq!(by_kind.get("per-try"), Some(&2.0));
        assert_eq!(total(TEXT, "weir_config_version"), Some(12.0));
        assert_eq!(total(TEXT, "weir_config_rejected_total"), Some(4.0));
        assert_eq!(total(TEXT, "weir_requests_total"), Some(1000.0));
        let by = sum_by(TEXT, "weir_requests_total", &["service", "code"]);
        assert_eq!(by.get("a\"b,200"), Some(&1000.0));
        assert_eq!(total(TEXT, "weir_absent_total"), None);
        assert_eq!(sum_by("garbage {\n{}\n", "garbage", &[]).len(), 0);
    }
}
