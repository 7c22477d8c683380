//! Lookups in Prometheus text, for assertions on `/metrics`.
//!
//! Hand-written: tests need one value by series, and a full exposition-format parser would be
//! a dependency for two functions.

/// The value of a metric line given exactly as written (name and labels in the text's order),
/// e.g. `weir_requests_total{service="a"}`; None when no line has it.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The value of the series with metric `name` and exactly these `labels`, in any order (the text
/// format does not promise one); None when no such line exists.
pub fn metric_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let inner = if rest.is_empty() {
                ""
            } else {
                rest.strip_prefix('{')?.strip_suffix('}')?
            };
            let have: Vec<(&str, &str)> = inner
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let same = have.len() == labels.len() && labels.iter().all(|l| have.contains(l));
            same.then(|| value.parse().ok()).flatten()
        })
}
