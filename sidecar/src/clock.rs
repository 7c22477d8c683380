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

/// Awaits `future`; when it is still running at `at`, runs `exceeded` once and keeps waiting:
/// a dry-run timeout, which cuts nothing. The second value says whether it was exceeded.
pub async fn watch<F: std::future::Future>(
    future: F,
    at: Instant,
    exceeded: impl FnOnce(),
) -> (F::Output, bool) {
    let mut future = std::pin::pin!(future);
    tokio::select! {
        biased;
        output = &mut future => (output, false),
        () = tokio::time::sleep_until(at) => {
            exceeded();
            (future.await, true)
        }
    }
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

    #[tokio::test(start_paused = true)]
    async fn a_watched_future_is_not_cut() {
        let start = Instant::now();
        let slow = tokio::time::sleep(Duration::from_secs(3));
        let mut fired = 0;
        let ((), exceeded) = watch(slow, start + Duration::from_secs(1), || fired += 1).await;
        assert!(exceeded);
        assert_eq!(fired, 1);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        let ((), exceeded) = watch(async {}, start, || unreachable!()).await;
        assert!(!exceeded, "a ready future wins over a due deadline");
    }
}
