//! Whether to ask `metrics.k8s.io` for CPU now: probed with backoff while it does not answer.
//!
//! Most clusters without metrics-server have no `metrics.k8s.io` at all; asking for it on every
//! evaluation of every Autoscaler with a `Cpu` metric (every 2 s each) is load on the API server
//! for an answer that does not change. After a failed request the API is left alone for 4 s,
//! doubling up to 5 minutes, for every Autoscaler at once; the first answer resets it. Meanwhile
//! CPU is unknown, exactly as when the request fails (the algorithm then never scales down on
//! it, and `ScalingActive` says so).

use std::time::Duration;
use tokio::time::Instant;

/// The pause after the first failure.
pub const FIRST_PAUSE: Duration = Duration::from_secs(4);
/// The longest pause: how late a newly installed metrics-server is noticed, at worst.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);

/// The probe's memory, shared by every Autoscaler of the controller.
#[derive(Debug, Default)]
pub struct MetricsApi {
    /// No request before this.
    quiet_until: Option<Instant>,
    /// The pause after the next failure.
    next_pause: Option<Duration>,
}

impl MetricsApi {
    /// Whether a request may be made at `now`.
    pub fn may_ask(&self, now: Instant) -> bool {
        self.quiet_until.is_none_or(|until| now >= until)
    }

    /// A request failed at `now`: pause.
    pub fn failed(&mut self, now: Instant) {
        let pause = self.next_pause.unwrap_or(FIRST_PAUSE);
        self.quiet_until = Some(now + pause);
        self.next_pause = Some((pause * 2).min(MAX_PAUSE));
    }

    /// A request was answered: ask freely again.
    pub fn answered(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_five_minutes_and_an_answer_resets_them() {
        let mut api = MetricsApi::default();
        let start = Instant::now();
        assert!(api.may_ask(start));
        let mut pauses = Vec::new();
        let mut now = start;
        for _ in 0..10 {
            api.failed(now);
            let mut waited = Duration::ZERO;
            while !api.may_ask(now + waited) {
                waited += Duration::from_secs(1);
            }
            pauses.push(waited.as_secs());
            now += waited;
        }
        assert_eq!(pauses, [4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        api.answered();
        assert!(api.may_ask(now));
        api.failed(now);
        assert!(!api.may_ask(now + Duration::from_secs(3)));
        assert!(api.may_ask(now + FIRST_PAUSE));
    }
}
