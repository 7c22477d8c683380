//! The inbound bulkhead: at most `maxConcurrent` requests reach the application at once, at
//! most `maxQueued` wait (each up to `queueTimeout`), the rest are refused at once.
//!
//! Our own rather than `tower::limit::ConcurrencyLimit`: that layer queues without bound (it
//! only makes `poll_ready` wait), while a bulkhead must refuse past a bounded queue and give up on
//! a queued request after a timeout. tokio's fair semaphore does the waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_proxy_api::Bulkhead as Config;

#[derive(Debug)]
pub struct Bulkhead {
    pub config: Config,
    permits: Arc<Semaphore>,
    queued: AtomicU32,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The queue was full on arrival.
    QueueFull,
    /// Queued, but no slot came free within `queueTimeout`.
    QueueTimeout,
}

impl Bulkhead {
    pub fn new(config: Config) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            queued: AtomicU32::new(0),
            config,
        }
    }

    /// Waits for a slot as the limits allow; the permit holds it until dropped.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Full> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.config.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::QueueFull);
        }
        let waited = tokio::time::timeout(
            self.config.queue_timeout.get(),
            self.permits.clone().acquire_owned(),
        )
        .await;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout if it ever were.
            Ok(Err(_)) | Err(_) => Err(Full::QueueTimeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_queue_and_times_out_queued_requests() {
        let b = Arc::new(Bulkhead::new(Config {
            max_concurrent: 2,
            max_queued: 1,
            queue_timeout: weir_proxy_api::Duration::from_millis(100),
        }));
        let p1 = b.enter().await.unwrap();
        let _p2 = b.enter().await.unwrap();
        let queued = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.enter().await.unwrap_err(), Full::QueueFull);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(p1);
        assert_eq!(queued.await.unwrap(), Ok(()));

        // Both slots held again: a queued request gives up after queueTimeout.
        let _p3 = b.enter().await.unwrap();
        let timed_out = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(drop) }
        });
        assert_eq!(timed_out.await.unwrap(), Err(Full::QueueTimeout));
    }
}
