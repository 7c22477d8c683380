//! Fault knobs: make a service slow, failing or unresponsive at run time, so the mesh's
//! policies (timeouts, retries, circuit breaking, outlier detection) have something to do.
//!
//! Set with `PUT /faults` and read with `GET /faults`; applied by the HTTP server to every
//! request except those two (see `http::serve`). Held in a `watch` channel so a request that
//! hangs is released as soon as the hang is switched off.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The longest added latency: enough to trip any sane timeout, short enough to recover from.
pub const MAX_LATENCY_MS: u64 = 60_000;

/// The knobs. `PUT /faults` replaces them all; an absent field is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Share of requests answered 500, from 0 to 1.
    pub error_rate: f64,
    /// Added to every request before it is handled.
    pub latency_ms: u64,
    /// Requests are never answered while this is on.
    pub hang: bool,
}

/// Why knob settings are refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultError {
    #[error("errorRate must be between 0 and 1, got {0}")]
    ErrorRate(f64),
    #[error("latencyMs must be at most {MAX_LATENCY_MS}, got {0}")]
    Latency(u64),
}

impl FaultSettings {
    pub fn validate(&self) -> Result<(), FaultError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FaultError::ErrorRate(self.error_rate));
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(FaultError::Latency(self.latency_ms));
        }
        Ok(())
    }
}

/// What the knobs decided for one request, after any latency and hang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Proceed,
    /// Answer with an injected 500.
    Fail,
}

/// A service's knobs, shared by its handlers.
#[derive(Debug, Clone)]
pub struct Faults(Arc<watch::Sender<FaultSettings>>);

impl Default for Faults {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(FaultSettings::default())))
    }
}

impl Faults {
    pub fn get(&self) -> FaultSettings {
        *self.0.borrow()
    }

    pub fn set(&self, settings: FaultSettings) -> Result<(), FaultError> {
        settings.validate()?;
        self.0.send_replace(settings);
        if settings != FaultSettings::default() {
            tracing::warn!(?settings, "fault knobs set");
        }
        Ok(())
    }

    /// Applies the knobs to one request: waits the added latency, waits while hanging, then
    /// draws against the error rate.
    pub async fn apply(&self) -> Verdict {
        let settings = self.get();
        if settings.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(settings.latency_ms)).await;
        }
        let mut knobs = self.0.subscribe();
        // Errors only when the sender is gone, which cannot happen while `self` holds it.
        let _ = knobs.wait_for(|s| !s.hang).await;
        let error_rate = self.get().error_rate;
        if error_rate > 0.0 && fastrand::f64() < error_rate {
            Verdict::Fail
        } else {
            Verdict::Proceed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn settings_are_validated() {
        let faults = Faults::default();
        assert!(
            faults
                .set(FaultSettings {
                    error_rate: 1.5,
                    ..Default::default()
                })
                .is_err()
        );
        assert!(
            faults
                .set(FaultSettings {
                    latency_ms: MAX_LATENCY_MS + 1,
                    ..Default::default()
                })
                .is_err()
        );
        assert_eq!(faults.get(), FaultSettings::default());
        let partial: FaultSettings = serde_json::from_str(r#"{"latencyMs": 5}"#).unwrap();
        assert_eq!(
            partial,
            FaultSettings {
                latency_ms: 5,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<FaultSettings>(r#"{"errorRat": 1}"#).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_and_error_rate() {
        let faults = Faults::default();
        assert_eq!(faults.apply().await, Verdict::Proceed);
        faults
            .set(FaultSettings {
                error_rate: 1.0,
                latency_ms: 200,
                hang: false,
            })
            .unwrap();
        let start = Instant::now();
        assert_eq!(faults.apply().await, Verdict::Fail);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hang_lasts_until_switched_off() {
        let faults = Faults::default();
        faults
            .set(FaultSettings {
                hang: true,
                ..Default::default()
            })
            .unwrap();
        let hung = tokio::spawn({
            let faults = faults.clone();
            async move { faults.apply().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!hung.is_finished());
        faults.set(FaultSettings::default()).unwrap();
        assert_eq!(hung.await.unwrap(), Verdict::Proceed);
    }
}
