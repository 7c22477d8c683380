use super::*;
use proptest::prelude::*;

const TEXT: &str = r#"# HELP weir_requests_total Requests.
# TYPE weir_requests_total counter
weir_requests_total{code="200",direction="inbound",service="orders",subset=""} 90
weir_requests_total{ code = "503", direction="inbound",service="orders",subset="",} 10 1700000000
weir_request_duration_seconds_bucket{direction="inbound",service="orders",le="+Inf"} 100
weir_config_version 7
odd{msg="a \"quoted\" \\ value, with } and commas",nl="x\ny"} NaN
weir_in_flight_requests{direction="inbound"} -Inf

garbage
"#;

#[test]
fn reads_names_labels_escapes_and_special_values() {
    let samples: Vec<Sample> = samples(TEXT).collect();
    assert_eq!(samples.len(), 6, "{samples:?}");
    assert_eq!(samples[0].label("code"), Some("200"));
    assert_eq!(samples[0].value, 90.0);
    // Spaces around `=`, a trailing comma and a timestamp.
    assert_eq!(samples[1].label("code"), Some("503"));
    assert_eq!(samples[1].value, 10.0);
    assert_eq!(samples[2].value, 100.0);
    assert_eq!(samples[2].label("le").and_then(number), Some(f64::INFINITY));
    assert_eq!(samples[3].name, "weir_config_version");
    assert!(samples[3].labels.is_empty());
    assert_eq!(
        samples[4].label("msg"),
        Some(r#"a "quoted" \ value, with } and commas"#)
    );
    assert_eq!(samples[4].label("nl"), Some("x\ny"));
    assert!(samples[4].value.is_nan());
    assert_eq!(samples[5].value, f64::NEG_INFINITY);
    assert!(samples[0].matches(&[("direction", "inbound"), ("service", "orders")]));
    assert!(!samples[0].matches(&[("direction", "outbound")]));
}

#[test]
fn malformed_lines_are_errors_that_say_what_is_wrong() {
    let cases: [(&str, LineError); 9] = [
        (r#"m{a="unterminated} 1"#, LineError::Unterminated),
        (r#"m{a="x\"#, LineError::Unterminated),
        (r#"m{a="x" 1"#, LineError::BadLabel),
        (r#"m{a=x} 1"#, LineError::BadLabel),
        (r#"m{novalue} 1"#, LineError::BadLabel),
        (r#"{a="x"} 1"#, LineError::NoName),
        ("m", LineError::NoValue),
        (r#"m{a="x"}"#, LineError::NoValue),
        ("m one", LineError::BadValue),
    ];
    for (line, expected) in cases {
        assert_eq!(parse_line(line), Err(expected), "line {line:?}");
    }
    assert_eq!(parse_line("  # a comment"), Ok(None));
    assert_eq!(parse_line(""), Ok(None));
}

#[test]
fn a_huge_line_is_refused_without_reading_it() {
    let line = format!("m{{a=\"{}\"}} 1", "x".repeat(MAX_LINE_BYTES));
    assert_eq!(parse_line(&line), Err(LineError::TooLong));
    let text = format!("{line}\nok 2\n");
    let kept: Vec<Sample> = samples(&text).collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].name, "ok");
}

#[test]
fn a_million_series_is_refused_past_the_limit() {
    let text = "weir_requests_total{code=\"200\"} 1\n".repeat(1_000_000);
    assert_eq!(parse(&text, 20_000), Err(TextError::TooManySeries(20_000)));
    assert_eq!(parse(&text[..34 * 3], 3).map(|s| s.len()), Ok(3));
}

#[test]
fn bare_label_sets_read_with_or_without_their_brace() {
    let expected = vec![
        ("a".to_owned(), "x,y".to_owned()),
        ("b".to_owned(), "\"".to_owned()),
    ];
    assert_eq!(labels(r#"a="x,y",b="\"""#), Ok(expected.clone()));
    assert_eq!(labels(r#"a="x,y",b="\""} 3"#), Ok(expected));
    assert_eq!(labels(r#"a="x"#), Err(LineError::Unterminated));
}

#[test]
fn quantiles_interpolate_within_buckets() {
    let buckets = [(0.01, 50.0), (0.1, 100.0), (f64::INFINITY, 100.0)];
    let p50 = quantile(&buckets, 0.5).unwrap();
    assert!((p50 - 0.01).abs() < 1e-9, "{p50}");
    let p99 = quantile(&buckets, 0.99).unwrap();
    assert!((p99 - (0.01 + 0.09 * 49.0 / 50.0)).abs() < 1e-9, "{p99}");
    assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    assert_eq!(quantile(&[], 0.5), None);
    assert_eq!(quantile(&[(1.0, f64::NAN)], 0.5), None);
    // Everything above the last finite bound: that bound.
    assert_eq!(
        quantile(&[(1.0, 0.0), (f64::INFINITY, 3.0)], 0.5),
        Some(1.0)
    );
}

fn sample_strategy() -> impl Strategy<Value = Sample> {
    (
        "[a-z_][a-z0-9_]{0,20}",
        prop::collection::vec(("[a-z_][a-z0-9_]{0,8}", any::<String>()), 0..4),
        prop_oneof![
            any::<f64>().prop_filter("NaN is not equal to itself", |v| !v.is_nan()),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ],
    )
        .prop_map(|(name, labels, value)| Sample {
            name,
            labels,
            value,
        })
}

proptest! {
    #[test]
    fn any_text_is_read_without_panicking(text in any::<String>()) {
        for line in text.lines() {
            let _ = parse_line(line);
        }
        let _ = parse(&text, 10);
        let _ = labels(&text);
    }

    #[test]
    fn written_samples_read_back(sample in sample_strategy()) {
        let line = sample.to_string();
        prop_assume!(line.len() <= MAX_LINE_BYTES && !line.contains('\r'));
        prop_assert_eq!(parse_line(&line), Ok(Some(sample)));
    }
}
