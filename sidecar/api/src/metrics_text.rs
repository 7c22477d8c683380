//! Reading the sidecar's `/metrics`: the Prometheus text exposition format as the sidecar
//! writes it (DESIGN.md's metric contract) — one sample a line, `name{label="value",…} value
//! [timestamp]`, label values with `\\`, `\"` and `\n` escapes, `# HELP`/`# TYPE` comments,
//! `+Inf`/`-Inf`/`NaN` values — and the histogram arithmetic its readers share.
//!
//! **Why our own reader:** the operator's autoscaler and dashboard and the demo shop only read a
//! few series of one scrape; a client library brings a registry and an exposition writer they do
//! not need, and this crate stays serde-only.
//!
//! **Hostile input:** a line longer than [`MAX_LINE_BYTES`] is refused without being scanned
//! further, a malformed line is an error naming what is wrong (the iterators skip it), and
//! [`parse`] refuses a text with more than its `max_series` samples: nothing panics, and what is
//! kept is bounded by the caller's limit.

use std::collections::BTreeMap;
use std::fmt;

/// The longest sample line read; the sidecar's longest lines (a histogram bucket with its
/// service, subset and bound) are a few hundred bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// A sample's labels, `(name, value)` in the line's order.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
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

/// Why a line is not a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("the line is longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("the line has no metric name")]
    NoName,
    #[error("a label is not `name=\"value\"`")]
    BadLabel,
    #[error("a label value's quote or the label set's brace is not closed")]
    Unterminated,
    #[error("the line has no value")]
    NoValue,
    #[error("the value is not a number")]
    BadValue,
}

/// Why a whole text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("more than {0} series")]
    TooManySeries(usize),
}

/// One line: `Ok(None)` for a blank line or a comment.
pub fn parse_line(line: &str) -> Result<Option<Sample>, LineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong);
    }
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err(LineError::NoName);
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = label_set(inner)?;
        labels = parsed;
        rest = after.ok_or(LineError::Unterminated)?;
    }
    // The value, optionally followed by a timestamp.
    let value = rest.split_whitespace().next().ok_or(LineError::NoValue)?;
    Ok(Some(Sample {
        name: name.to_owned(),
        labels,
        value: number(value).ok_or(LineError::BadValue)?,
    }))
}

/// Every sample of `text`; lines that are not samples are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample> + '_ {
    text.lines()
        .filter_map(|line| parse_line(line).ok().flatten())
}

/// Every sample of `text` (lines that are not samples skipped), refused when there are more
/// than `max_series`.
pub fn parse(text: &str, max_series: usize) -> Result<Vec<Sample>, TextError> {
    let mut out = Vec::new();
    for sample in samples(text) {
        if out.len() == max_series {
            return Err(TextError::TooManySeries(max_series));
        }
        out.push(sample);
    }
    Ok(out)
}

/// The labels between a label set's braces, `a="x",b="y"` (the closing brace optional): values
/// unescaped, in their order.
pub fn labels(inner: &str) -> Result<Labels, LineError> {
    label_set(inner).map(|(labels, _)| labels)
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace (`None`
/// when the text ends before one).
fn label_set(mut s: &str) -> Result<(Labels, Option<&str>), LineError> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if s.is_empty() {
            return Ok((labels, None));
        }
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, Some(after)));
        }
        let (key, after) = s.split_once('=').ok_or(LineError::BadLabel)?;
        let key = key.trim();
        if key.is_empty() || key.contains(['"', '}', ',']) {
            return Err(LineError::BadLabel);
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or(LineError::BadLabel)?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or(LineError::Unterminated)? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or(LineError::Unterminated)?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = &after[end + 1..];
    }
}

/// A sample value or a bucket bound: a float, `+Inf`, `-Inf` or `NaN`.
pub fn number(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// Cumulative histogram buckets summed by bound (over series, proxies or callers), in ascending
/// bound order: what [`quantile`] reads. The one accumulator of the autoscaler's, canary
/// analysis's and the dashboard's readers.
///
/// Bounds are keyed by their bits, which order as the bounds do for non-negative floats; a
/// negative bound (the sidecar writes none) is added to the bucket of 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(BTreeMap<u64, (f64, f64)>);

impl Buckets {
    /// Adds `count` to the bucket bounded by `le`.
    pub fn add(&mut self, le: f64, count: f64) {
        self.0.entry(le.max(0.0).to_bits()).or_insert((le, 0.0)).1 += count;
    }

    /// The buckets, `(le, count)` by ascending bound.
    pub fn to_vec(&self) -> Vec<(f64, f64)> {
        self.0.values().copied().collect()
    }
}

/// The `q` quantile (0–1) of cumulative histogram buckets (`le`, count; ascending), linear
/// inside the bucket where it falls, as PromQL's `histogram_quantile`. `None` without
/// observations; a quantile in the `+Inf` bucket is the highest finite bound. The one quantile of
/// the autoscaler, the dashboard and the demo's figures.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total.is_nan() || total <= 0.0 {
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
            // The share of the bucket below the rank first: multiplying the counts first would
            // overflow to infinity with counts near `f64::MAX`.
            let share = ((rank - lower_count) / in_bucket).clamp(0.0, 1.0);
            return Some(lower_bound + (le - lower_bound) * share);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
}

impl fmt::Display for Sample {
    /// The sample as an exposition line (labels escaped): what [`parse_line`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (key, value)) in self.labels.iter().enumerate() {
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                write!(f, "{}{key}=\"{value}\"", if i == 0 { "" } else { "," })?;
            }
            f.write_str("}")?;
        }
        if self.value == f64::INFINITY {
            f.write_str(" +Inf")
        } else if self.value == f64::NEG_INFINITY {
            f.write_str(" -Inf")
        } else {
            write!(f, " {}", self.value)
        }
    }
}

#[cfg(test)]
mod tests;
