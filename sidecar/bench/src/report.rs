//! Figures, the table they are printed in, and the target checks.

use crate::load::Stats;
use serde_json::{Value, json};
use std::fmt::Write;

/// What one phase measured against one target, reduced to the printed figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub non_2xx: u64,
    pub errors: u64,
    /// The proxy's peak resident set size; `None` for direct.
    pub peak_rss_kib: Option<u64>,
    /// The proxy's CPU time per 2xx answer; `None` for direct.
    pub proxy_cpu_us: Option<f64>,
}

impl Row {
    pub fn new(stats: &Stats, peak_rss_kib: Option<u64>) -> Self {
        Self {
            rps: stats.rps(),
            p50_ms: stats.quantile_ms(0.5),
            p99_ms: stats.quantile_ms(0.99),
            non_2xx: stats.non_2xx,
            errors: stats.errors,
            peak_rss_kib,
            proxy_cpu_us: stats.cpu_us_per_request(crate::load::CPU_PROXY),
        }
    }

    pub fn failures(&self) -> u64 {
        self.non_2xx + self.errors
    }

    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.peak_rss_kib.map(|kib| kib as f64 / 1024.0)
    }

    fn to_json(&self) -> Value {
        json!({
            "requestsPerSecond": round(self.rps, 1),
            "p50Ms": self.p50_ms,
            "p99Ms": self.p99_ms,
            "non2xx": self.non_2xx,
            "errors": self.errors,
            "peakRssKiB": self.peak_rss_kib,
            "proxyCpuMicrosPerRequest": self.proxy_cpu_us.map(|us| round(us, 2)),
        })
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Measured(Row),
    Failed(String),
    Skipped(String),
}

impl Entry {
    pub fn row(&self) -> Option<&Row> {
        match self {
            Self::Measured(row) => Some(row),
            _ => None,
        }
    }

    pub fn from_result(result: anyhow::Result<Row>) -> Self {
        match result {
            Ok(row) => Self::Measured(row),
            Err(e) => Self::Failed(format!("{e:#}")),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Self::Measured(row) => row.to_json(),
            Self::Failed(e) => json!({"failed": e}),
            Self::Skipped(why) => json!({"skipped": why}),
        }
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// `a / b`, if both are there and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// `0.93x`, or `-`.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{r:.2}x"))
}

/// Milliseconds with three decimals, or `-`.
pub fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{ms:.3}"))
}

const NAME_WIDTH: usize = 30;

pub fn table_header() -> String {
    format!(
        "{:<NAME_WIDTH$} {:>9} {:>8} {:>8} {:>13} {:>12} {:>8} {:>7}",
        "target", "req/s", "p50 ms", "p99 ms", "peak RSS MiB", "CPU µs/req", "non-2xx", "errors"
    )
}

pub fn table_line(name: &str, entry: &Entry) -> String {
    match entry {
        Entry::Measured(row) => format!(
            "{name:<NAME_WIDTH$} {:>9.0} {:>8} {:>8} {:>13} {:>12} {:>8} {:>7}",
            row.rps,
            fmt_ms(row.p50_ms),
            fmt_ms(row.p99_ms),
            row.peak_rss_mib()
                .map_or_else(|| "-".into(), |m| format!("{m:.1}")),
            row.proxy_cpu_us
                .map_or_else(|| "-".into(), |us| format!("{us:.1}")),
            row.non_2xx,
            row.errors,
        ),
        Entry::Failed(e) => {
            // The whole message goes to the end of the report; one line here.
            let first = e.lines().next().unwrap_or_default();
            format!("{name:<NAME_WIDTH$} FAILED: {first}")
        }
        Entry::Skipped(why) => format!("{name:<NAME_WIDTH$} skipped: {why}"),
    }
}

/// A table: the header and one line per entry.
pub fn table(entries: &[(String, Entry)]) -> String {
    let mut out = table_header();
    for (name, entry) in entries {
        let _ = write!(out, "\n{}", table_line(name, entry));
    }
    out
}

pub fn entries_json(entries: &[(String, Entry)]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|(name, entry)| {
                let mut v = entry.to_json();
                v["target"] = json!(name);
                v
            })
            .collect(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not measured (a target was skipped or failed).
    Unknown,
}

/// One target line: what was required, whether it held, and the figures behind the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub target: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    /// Passes if `value` (when measured) satisfies `holds` and none of `rows` saw a failed
    /// request: a target met by answering errors is not met.
    pub fn new(
        target: impl Into<String>,
        value: Option<f64>,
        holds: impl Fn(f64) -> bool,
        detail: impl Fn(f64) -> String,
        rows: &[Option<&Row>],
    ) -> Self {
        let target = target.into();
        let Some(value) = value else {
            return Self {
                target,
                verdict: Verdict::Unknown,
                detail: "not measured".into(),
            };
        };
        let failures: u64 = rows.iter().flatten().map(|r| r.failures()).sum();
        let mut detail = detail(value);
        let verdict = if failures > 0 {
            detail.push_str(&format!(" but {failures} requests failed"));
            Verdict::Fail
        } else if holds(value) {
            Verdict::Pass
        } else {
            Verdict::Fail
        };
        Self {
            target,
            verdict,
            detail,
        }
    }

    pub fn line(&self) -> String {
        let verdict = match self.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Unknown => "n/a ",
        };
        format!("{verdict}  {:<62} {}", self.target, self.detail)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "verdict": match self.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "fail",
                Verdict::Unknown => "unknown",
            },
            "detail": self.detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rps: f64, p99_ms: f64, failures: u64) -> Row {
        Row {
            rps,
            p50_ms: Some(p99_ms / 2.0),
            p99_ms: Some(p99_ms),
            non_2xx: failures,
            errors: 0,
            peak_rss_kib: Some(10 * 1024 + 512),
            proxy_cpu_us: Some(12.25),
        }
    }

    #[test]
    fn ratios_and_milliseconds_format() {
        assert_eq!(fmt_ratio(ratio(Some(80.0), Some(100.0))), "0.80x");
        assert_eq!(fmt_ratio(ratio(Some(1.0), Some(3.0))), "0.33x");
        assert_eq!(fmt_ratio(ratio(Some(1.0), Some(0.0))), "-");
        assert_eq!(fmt_ratio(ratio(None, Some(1.0))), "-");
        assert_eq!(fmt_ms(Some(0.0125)), "0.013");
        assert_eq!(fmt_ms(Some(12.0)), "12.000");
        assert_eq!(fmt_ms(None), "-");
    }

    #[test]
    fn table_lines_align() {
        let entries = vec![
            (
                "direct".to_owned(),
                Entry::Measured(Row {
                    peak_rss_kib: None,
                    ..row(41234.4, 1.5, 0)
                }),
            ),
            ("sidecar".to_owned(), Entry::Measured(row(25000.0, 2.25, 3))),
            ("haproxy".to_owned(), Entry::Skipped("not found".into())),
        ];
        let text = table(&entries);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let width = |line: &str| line.chars().count();
        assert_eq!(width(lines[0]), width(lines[1]));
        assert_eq!(width(lines[1]), width(lines[2]));
        assert!(lines[1].starts_with("direct "));
        assert!(lines[1].contains(" 41234 ") && lines[1].contains(" 1.500 "));
        assert!(lines[2].contains(" 10.5 ") && lines[2].contains(" 12.2 "));
        assert!(lines[2].ends_with(" 3       0"));
        assert!(lines[3].ends_with("skipped: not found"));
        let json = entries_json(&entries);
        assert_eq!(json[0]["target"], "direct");
        assert_eq!(json[0]["peakRssKiB"], Value::Null);
        assert_eq!(json[2]["skipped"], "not found");
    }

    #[test]
    fn checks_fail_on_failed_requests_and_miss() {
        let good = row(100.0, 1.0, 0);
        let bad = row(100.0, 1.0, 2);
        let at_least = |min: f64| move |v: f64| v >= min;
        let detail = |v: f64| fmt_ratio(Some(v));
        let pass = Check::new("t", Some(0.85), at_least(0.8), detail, &[Some(&good)]);
        assert_eq!(pass.verdict, Verdict::Pass);
        assert!(pass.line().starts_with("PASS  t "));
        assert!(pass.line().ends_with(" 0.85x"));
        let miss = Check::new("t", Some(0.75), at_least(0.8), detail, &[Some(&good)]);
        assert_eq!(miss.verdict, Verdict::Fail);
        let errors = Check::new("t", Some(0.95), at_least(0.8), detail, &[Some(&bad)]);
        assert_eq!(errors.verdict, Verdict::Fail);
        assert_eq!(errors.detail, "0.95x but 2 requests failed");
        let unknown = Check::new("t", None, at_least(0.8), detail, &[None]);
        assert_eq!(unknown.verdict, Verdict::Unknown);
    }
}
