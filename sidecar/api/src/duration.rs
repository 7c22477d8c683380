//! Durations written the way Kubernetes users write them: `250ms`, `2s`, `1m30s`, `1.5h`.
//!
//! Our own parser rather than `humantime`: the custom resources validate durations with the Go
//! syntax (`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`), and the sidecar must accept exactly what the
//! API server accepts, no more (humantime takes `1 hour`, refuses `1.5s`). As Go's
//! `time.ParseDuration` (and so CEL's `duration()`), a total beyond 2^63-1 nanoseconds (about 292
//! years) is refused as too large rather than wrapped or saturated; the bounds of each field
//! ([`crate::bounds::DURATION`]) are checked by validation, which names the field.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A non-negative duration that serializes as a Go-style duration string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

/// The longest duration Go (and so the API server's CEL) can represent: `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (expected e.g. 250ms, 2s, 1m30s)")]
pub struct ParseDurationError {
    input: String,
    why: &'static str,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |why| ParseDurationError {
            input: input.to_owned(),
            why,
        };
        if input.is_empty() {
            return Err(fail("empty"));
        }
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| fail("missing unit"))?;
            let (number, tail) = rest.split_at(number_len);
            let (whole, frac) = match number.split_once('.') {
                Some((w, f)) => (w, f),
                None => (number, ""),
            };
            if whole.is_empty() || whole.len() > 20 || (number.contains('.') && frac.is_empty()) {
                return Err(fail("malformed number"));
            }
            if frac.contains('.') {
                return Err(fail("malformed number"));
            }
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let unit_nanos: u128 = match unit {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                "" => return Err(fail("missing unit")),
                _ => return Err(fail("unknown unit")),
            };
            let whole: u128 = whole.parse().map_err(|_| fail("malformed number"))?;
            let mut part = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| fail("too large"))?;
            if !frac.is_empty() {
                let digits = frac.len().min(18);
                let frac_value: u128 = frac[..digits]
                    .parse()
                    .map_err(|_| fail("malformed number"))?;
                part += frac_value * unit_nanos / 10u128.pow(digits as u32);
            }
            total_nanos = total_nanos
                .checked_add(part)
                .filter(|&n| n <= MAX_NANOS)
                .ok_or_else(|| fail("too large"))?;
            rest = next;
        }
        // At most MAX_NANOS: both parts fit.
        let secs = (total_nanos / 1_000_000_000) as u64;
        Ok(Self(std::time::Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        let (value, unit) = if nanos == 0 {
            (0, "s")
        } else if nanos.is_multiple_of(3_600_000_000_000) {
            (nanos / 3_600_000_000_000, "h")
        } else if nanos.is_multiple_of(60_000_000_000) {
            (nanos / 60_000_000_000, "m")
        } else if nanos.is_multiple_of(1_000_000_000) {
            (nanos / 1_000_000_000, "s")
        } else if nanos.is_multiple_of(1_000_000) {
            (nanos / 1_000_000, "ms")
        } else if nanos.is_multiple_of(1_000) {
            (nanos / 1_000, "us")
        } else {
            (nanos, "ns")
        };
        write!(f, "{value}{unit}")
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(s: &str) -> u128 {
        s.parse::<Duration>().unwrap().0.as_millis()
    }

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("2s"), 2_000);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!("1500us".parse::<Duration>().unwrap().0.as_micros(), 1500);
    }

    #[test]
    fn refuses_what_the_crd_pattern_refuses() {
        for bad in [
            "", "10", "s", "1.s", ".5s", "1 s", "-1s", "1d", "1.2.3s", "1sm",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn absurd_durations_are_too_large_not_wrapped() {
        for absurd in [
            "5000000000000000h",
            "99999999999999999999h",
            "2562048h",
            "9223372036854775808ns",
        ] {
            let err = absurd.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains("too large"), "{absurd}: {err}");
        }
        // Go's largest duration is still one.
        assert_eq!(
            "9223372036854775807ns".parse::<Duration>().unwrap().0,
            std::time::Duration::from_nanos(i64::MAX as u64)
        );
        assert!("2562047h".parse::<Duration>().is_ok());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused(text in "\\PC{0,40}") {
            let _ = text.parse::<Duration>();
        }

        #[test]
        fn any_digits_and_units_never_overflow(
            parts in proptest::collection::vec(("[0-9]{1,24}(\\.[0-9]{1,24})?", "(ns|us|µs|ms|s|m|h)"), 1..6)
        ) {
            let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
            if let Ok(d) = text.parse::<Duration>() {
                prop_assert!(d.0.as_nanos() <= MAX_NANOS);
            }
        }

        #[test]
        fn display_round_trips(nanos in 0u64..10_000_000_000_000) {
            let d = Duration(std::time::Duration::from_nanos(nanos));
            prop_assert_eq!(d.to_string().parse::<Duration>().unwrap(), d);
        }
    }
}
