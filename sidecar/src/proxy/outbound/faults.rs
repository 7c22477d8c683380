//! The policy's faults, injected before the first try.

use super::{Outbound, TriesEnd, note};
use crate::metrics::DryRunReason;
use crate::refusal::{Reason, Refusal};
use crate::route_trace::RouteTrace;
use crate::table::ServiceRoute;
use http::StatusCode;
use tokio::time::Instant;
use weir_proxy_api::Faults;

impl Outbound {
    /// The policy's faults: an abort answers at once (never retried, charged to no endpoint or
    /// breaker), a delay holds the call before its first try (inside the request timeout). A
    /// dry-run block only counts what it would have done.
    pub(super) async fn inject_faults(
        &self,
        route: &ServiceRoute,
        faults: &Faults,
        deadline: Option<Instant>,
        trace: &mut Option<Box<RouteTrace>>,
    ) -> Result<(), TriesEnd> {
        let service = route.key.name.as_str();
        let metrics = &self.store.metrics;
        if let Some(abort) = &faults.abort
            && drawn(abort.percent)
        {
            if faults.dry_run {
                metrics.dry_run_hit(service, DryRunReason::Fault);
                note(trace, "dry-run:fault-abort");
                // An abort answers at once: no delay would have followed.
                return Ok(());
            } else {
                metrics
                    .faults_injected
                    .with_label_values(&[service, "abort"])
                    .inc();
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                if let Some(trace) = trace {
                    trace.decision(format!("fault-abort:{}", status.as_u16()));
                }
                let refusal = Refusal::new(
                    Reason::FaultInjected,
                    format!(
                        "fault injected by the policy of {}: aborted with {}",
                        route.key,
                        status.as_u16()
                    ),
                )
                .with_status(status);
                return Err(TriesEnd::Done(Err(refusal)));
            }
        }
        if let Some(delay) = &faults.delay
            && drawn(delay.percent)
        {
            if faults.dry_run {
                metrics.dry_run_hit(service, DryRunReason::Fault);
                note(trace, "dry-run:fault-delay");
            } else {
                metrics
                    .faults_injected
                    .with_label_values(&[service, "delay"])
                    .inc();
                if let Some(trace) = trace {
                    trace.decision(format!(
                        "fault-delay:{}",
                        crate::route_trace::millis(delay.duration.get())
                    ));
                }
                let wake = crate::clock::deadline(Instant::now(), delay.duration.get());
                if let Some(deadline) = deadline
                    && deadline <= wake
                {
                    tokio::time::sleep_until(deadline).await;
                    return Err(TriesEnd::Deadline);
                }
                tokio::time::sleep_until(wake).await;
            }
        }
        Ok(())
    }
}

/// Whether this call falls in the `percent` % share: exact at 0 and 100, fractions allowed.
fn drawn(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}
