//! Where a configured duration meets the clock. Durations are bounded (24 h at most) by
//! validation, but a deadline must never be able to panic the request path: `Instant + Duration`
//! panics on overflow, so every deadline is computed here, saturating at a far future instead.

use std::time::Duration;
use tokio::time::Instant;

/// About thirty years: later than any deadline a bounded config can ask for, and far enough
/// from the clock's limit that adding it to `now` cannot overflow.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `now + after`, or a far future when that is past the clock's range.
pub fn deadline(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or_else(|| now + FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        let far = deadline(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(365 * 24 * 3600));
        // `5000000000000000h`, as a config once asked for.
        let huge = Duration::from_secs(5_000_000_000_000_000u64.saturating_mul(3600));
        assert!(deadline(now, huge) > now);
    }
}
