//! The inbound bulkhead: at most `maxConcurrent` requests reach the application at once, at
//! most `maxQueued` wait (each up to `queueTimeout`), the rest are refused at once.
//!
//! Our own rather than `tower::limit::ConcurrencyLimit`: that layer queues without bound (it
//! only makes `poll_ready` wait), while a bulkhead must refuse past a bounded queue and give up on
//! a queued request after a timeout. It is still a tower layer ([`BulkheadLayer`]), as the
//! inbound stack is built of them.
//!
//! Every place is a semaphore permit, so a request that goes away at any point — while queued,
//! at the application, or while its answer streams — gives back what it held when it is
//! dropped; nothing is counted by hand. Two semaphores: *places* (`maxConcurrent` +
//! `maxQueued`), taken without waiting, so a request that finds none is refused at once; and
//! *slots* (`maxConcurrent`), waited for in tokio's fair order up to `queueTimeout`.
//!
//! In dry run ([`Bulkhead::admit_dry_run`]) nothing waits and nothing is refused: a request takes
//! a slot if one is free, else only a place (it would have queued), else nothing — it would have
//! been refused `bulkhead-full` for a full queue, and is counted. Queue timeouts are not
//! predicted (that would mean holding requests back to see).

use crate::body::BoxError;
use crate::gate::{BoxFuture, GateLayer, Gated};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use weir_proxy_api::Bulkhead as Config;

#[derive(Debug)]
pub struct Bulkhead {
    pub config: Config,
    /// Room for requests in progress or waiting.
    places: Arc<Semaphore>,
    /// Room at the application.
    slots: Arc<Semaphore>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The queue was full on arrival.
    #[error("the bulkhead's slots and queue are full")]
    QueueFull,
    /// Queued, but no slot came free within `queueTimeout`.
    #[error("no bulkhead slot came free within the queue timeout")]
    QueueTimeout,
}

/// A request's slot at the application and its place in the bulkhead; both are given back when
/// this is dropped.
#[derive(Debug)]
pub struct Admitted {
    // Options only for dry run, where a request may pass without them.
    _slot: Option<OwnedSemaphorePermit>,
    _place: Option<OwnedSemaphorePermit>,
}

impl Bulkhead {
    pub fn new(config: Config) -> Self {
        // Within the bounds both fit easily; the cap only keeps absurd numbers from panicking.
        let permits = |n: u64| n.min(Semaphore::MAX_PERMITS as u64) as usize;
        let slots = u64::from(config.max_concurrent);
        Self {
            places: Arc::new(Semaphore::new(permits(
                slots + u64::from(config.max_queued),
            ))),
            slots: Arc::new(Semaphore::new(permits(slots))),
            config,
        }
    }

    /// Waits for a slot as the limits allow. Dropping the future while it waits gives its queue
    /// place back.
    pub async fn enter(&self) -> Result<Admitted, Full> {
        let place = self
            .places
            .clone()
            .try_acquire_owned()
            .map_err(|_| Full::QueueFull)?;
        // tokio's timeout polls the acquisition first: a free slot is taken even when the
        // timeout is already due.
        let waited = tokio::time::timeout(
            self.config.queue_timeout.get(),
            self.slots.clone().acquire_owned(),
        )
        .await;
        match waited {
            Ok(Ok(slot)) => Ok(Admitted {
                _slot: Some(slot),
                _place: Some(place),
            }),
            // The semaphore is never closed; treat it like a timeout if it ever were.
            Ok(Err(_)) | Err(_) => Err(Full::QueueTimeout),
        }
    }

    /// Admits at once whatever the limits say (dry run), holding what the request would hold
    /// if it is free; true when the request would have been refused for a full queue.
    pub fn admit_dry_run(&self) -> (Admitted, bool) {
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            let nothing = Admitted {
                _slot: None,
                _place: None,
            };
            return (nothing, true);
        };
        let slot = self.slots.clone().try_acquire_owned().ok();
        let admitted = Admitted {
            _slot: slot,
            _place: Some(place),
        };
        (admitted, false)
    }

    /// Requests admitted or waiting right now.
    pub fn occupied(&self) -> usize {
        let total = u64::from(self.config.max_concurrent) + u64::from(self.config.max_queued);
        (total.min(Semaphore::MAX_PERMITS as u64) as usize)
            .saturating_sub(self.places.available_permits())
    }
}

/// A request's admission, carried in its extensions so that whoever answers it (the body of
/// the answer, or a protocol switch's spliced connection) holds it to the end.
#[derive(Debug, Clone)]
pub struct Admission(pub Arc<Admitted>);

/// The bulkhead as a tower layer.
pub type BulkheadLayer = GateLayer<Bulkhead>;

/// Admits a request through the bulkhead, then passes it on with its [`Admission`]; refusals
/// are [`Full`] errors.
pub type BulkheadService<S> = Gated<Bulkhead, S>;

impl<S, B> tower::Service<http::Request<B>> for BulkheadService<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was polled ready goes with this request; a clone stays for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let bulkhead = self.gate.clone();
        let dry_run = self.dry_run.clone();
        Box::pin(async move {
            let admitted = match dry_run {
                None => bulkhead.enter().await?,
                Some(counter) => {
                    let (admitted, over) = bulkhead.admit_dry_run();
                    if over {
                        counter.inc();
                        tracing::debug!("dry run: the bulkhead would have refused this request");
                    }
                    admitted
                }
            };
            request
                .extensions_mut()
                .insert(Admission(Arc::new(admitted)));
            inner.call(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower::{Service, ServiceExt};

    fn bulkhead(max_concurrent: u32, max_queued: u32, queue_timeout_ms: u64) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(Config {
            max_concurrent,
            max_queued,
            queue_timeout: weir_proxy_api::Duration::from_millis(queue_timeout_ms),
            dry_run: false,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_past_the_queue_and_times_out_queued_requests() {
        let b = bulkhead(2, 1, 100);
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
        assert_eq!(b.occupied(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_callers_that_go_away_give_their_place_back() {
        let b = bulkhead(1, 2, 60_000);
        let slot = b.enter().await.unwrap();
        // Three times the queue's size, callers queue and are dropped before a slot frees.
        for _ in 0..6 {
            let waiting = tokio::spawn({
                let b = b.clone();
                async move { b.enter().await.map(drop) }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(b.occupied(), 2, "one admitted, one queued");
            waiting.abort();
            let _ = waiting.await;
            assert_eq!(b.occupied(), 1, "the queue place is back");
        }
        // The queue still takes maxQueued callers, and they are admitted in turn.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(drop) }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(drop) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(b.enter().await.unwrap_err(), Full::QueueFull);
        drop(slot);
        assert_eq!(first.await.unwrap(), Ok(()));
        assert_eq!(second.await.unwrap(), Ok(()));
        assert_eq!(b.occupied(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_holds_the_admission_as_long_as_the_request_holds_it() {
        // An inner service that keeps each request's admission until told to let go.
        let (release, released) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |request: http::Request<()>| {
            let mut released = released.clone();
            async move {
                let admission = request.extensions().get::<Admission>().cloned();
                assert!(admission.is_some());
                let _ = released.wait_for(|r| *r).await;
                Ok::<_, BoxError>(admission)
            }
        });
        let b = bulkhead(1, 1, 1000);
        let mut service = tower::Layer::layer(
            &BulkheadLayer::new(b.clone(), false, || unreachable!()),
            inner,
        );
        let call = |service: &mut BulkheadService<_>| {
            let fut = service.call(http::Request::new(()));
            tokio::spawn(fut)
        };
        service.ready().await.unwrap();
        let admitted = call(&mut service);
        service.ready().await.unwrap();
        let queued = call(&mut service);
        tokio::time::sleep(Duration::from_millis(1)).await;
        service.ready().await.unwrap();
        let refused = service.call(http::Request::new(())).await.unwrap_err();
        assert_eq!(refused.downcast_ref::<Full>(), Some(&Full::QueueFull));
        // The queued one is cut (its client left): its place is free at once.
        queued.abort();
        let _ = queued.await;
        assert_eq!(b.occupied(), 1);
        release.send(true).unwrap();
        let admission = admitted.await.unwrap().unwrap();
        assert_eq!(b.occupied(), 1, "the answer still holds the slot");
        drop(admission);
        assert_eq!(b.occupied(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn numbers_at_the_bounds_work() {
        let b = bulkhead(1_000_000, 1_000_000, 86_400_000);
        let held: Vec<_> = futures_enter(&b, 1000).await;
        assert_eq!(b.occupied(), 1000);
        drop(held);
        let b = bulkhead(1, 0, 1);
        let _slot = b.enter().await.unwrap();
        assert_eq!(b.enter().await.unwrap_err(), Full::QueueFull);
        let b = bulkhead(u32::MAX, u32::MAX, u64::MAX);
        assert!(b.enter().await.is_ok());
    }

    async fn futures_enter(b: &Bulkhead, n: usize) -> Vec<Admitted> {
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            held.push(b.enter().await.unwrap());
        }
        held
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_admits_everyone_and_says_who_would_have_been_refused() {
        let b = bulkhead(1, 1, 100);
        let (first, over1) = b.admit_dry_run();
        let (queued, over2) = b.admit_dry_run();
        let (beyond, over3) = b.admit_dry_run();
        assert_eq!((over1, over2, over3), (false, false, true));
        assert_eq!(b.occupied(), 2);
        drop((first, queued, beyond));
        assert_eq!(b.occupied(), 0, "everything given back");
    }
}
