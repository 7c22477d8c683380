//! The saga orchestrator: drives each order's [`Saga`] through its steps, calling inventory,
//! payments and shipping, and persists the saga after every transition.
//!
//! - A step's call is retried on transient failures (no answer, 5xx, 429, 408), a bounded number
//!   of times with doubling pauses; a refusal (any other 4xx: out of stock, insufficient funds)
//!   is final. Either way the saga then compensates: the completed steps in reverse, and first
//!   the failed step itself if its outcome is in doubt (see `domain::saga`).
//! - Every call is idempotent by order id on the other side, so repeating a step whose outcome
//!   was lost (a timeout, a crash) is safe, and so is undoing a step that never happened.
//! - At most one driver per saga: requests and the sweeper take a per-order lock, so a retried
//!   `POST /orders` waits for the first and answers the same outcome.
//! - The sweeper runs every few seconds (first a few seconds after start) and drives every saga
//!   not in a terminal state that nobody wrote for [`SagaPolicy::resume_after`], resuming it
//!   forward or finishing its compensation: a crash mid-saga leaves no charge without an order
//!   and no reservation held forever, and instances sharing one database do not take over each
//!   other's running sagas.

use crate::domain::ids::OrderId;
use crate::domain::order::{Order, OrderError};
use crate::domain::saga::{Saga, SagaStatus, Step};
use crate::http::{CallError, Client, Reply};
use crate::store::{Db, StoreError, now_ms, orders, sagas};
use ::http::StatusCode;
use parking_lot::Mutex;
use rusqlite::TransactionBehavior;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

/// How hard the orchestrator tries.
#[derive(Debug, Clone)]
pub struct SagaPolicy {
    /// Tries of a forward step before compensating (transient failures only).
    pub step_attempts: u32,
    /// Tries of a compensation before leaving it to the next sweep.
    pub undo_attempts: u32,
    /// The pause after the first failed try, doubled after each further one.
    pub backoff: Duration,
    /// How often unfinished sagas are looked for (and how long after start the first look is).
    pub sweep_every: Duration,
    /// How long a saga must have gone without a write before the sweeper takes it over. The
    /// per-order lock only covers this process; with several orders instances on one database
    /// (the demo's autoscaled orders, a Deployment's replicas) another instance may be driving
    /// the saga right now, and it writes after every step.
    pub resume_after: Duration,
}

impl Default for SagaPolicy {
    fn default() -> Self {
        Self {
            step_attempts: 3,
            undo_attempts: 5,
            backoff: Duration::from_millis(100),
            sweep_every: Duration::from_secs(5),
            resume_after: Duration::from_secs(10),
        }
    }
}

/// Why placing an order failed before its saga could run.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("order id {0} was already used for a different order")]
    IdempotencyConflict(OrderId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one call to [`Orchestrator::advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The saga moved (and the new state is stored).
    Moved(Saga),
    /// The undo of the step in doubt failed and went to the back of the list (stored).
    Deferred(Saga),
    /// A compensation keeps failing; the saga is unchanged and waits for the next sweep.
    Stuck(Saga),
}

/// Why a step failed.
enum Failure {
    /// The service said no: nothing happened, and retrying cannot help.
    Refused(String),
    /// No usable answer after every try. `in_doubt`: some try may have taken effect (it timed
    /// out, or the connection broke after the request left).
    Unavailable { reason: String, in_doubt: bool },
}

impl Failure {
    fn in_doubt(&self) -> bool {
        matches!(self, Failure::Unavailable { in_doubt: true, .. })
    }

    fn reason(self) -> String {
        match self {
            Failure::Refused(reason) | Failure::Unavailable { reason, .. } => reason,
        }
    }
}

/// One lock per order with a saga being driven; entries go away with their last holder.
#[derive(Debug, Default)]
struct SagaLocks(Mutex<HashMap<OrderId, Arc<tokio::sync::Mutex<()>>>>);

struct SagaGuard {
    locks: Arc<SagaLocks>,
    order_id: OrderId,
    _held: OwnedMutexGuard<()>,
}

impl Drop for SagaGuard {
    fn drop(&mut self) {
        let mut map = self.locks.0.lock();
        // The map's reference and ours: nobody else waits, so the entry can go.
        if map
            .get(&self.order_id)
            .is_some_and(|lock| Arc::strong_count(lock) <= 2)
        {
            map.remove(&self.order_id);
        }
    }
}

impl SagaLocks {
    fn entry(&self, order_id: &OrderId) -> Arc<tokio::sync::Mutex<()>> {
        self.0.lock().entry(order_id.clone()).or_default().clone()
    }

    async fn lock(self: &Arc<Self>, order_id: &OrderId) -> SagaGuard {
        let held = self.entry(order_id).lock_owned().await;
        SagaGuard {
            locks: self.clone(),
            order_id: order_id.clone(),
            _held: held,
        }
    }

    fn try_lock(self: &Arc<Self>, order_id: &OrderId) -> Option<SagaGuard> {
        let held = self.entry(order_id).try_lock_owned().ok()?;
        Some(SagaGuard {
            locks: self.clone(),
            order_id: order_id.clone(),
            _held: held,
        })
    }
}

/// Drives order sagas; shared by the request handlers and the sweeper.
#[derive(Debug)]
pub struct Orchestrator {
    db: Db,
    client: Client,
    policy: SagaPolicy,
    locks: Arc<SagaLocks>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShipmentReply {
    tracking_id: Option<String>,
}

impl Orchestrator {
    pub fn new(db: Db, client: Client, policy: SagaPolicy) -> Arc<Self> {
        Arc::new(Self {
            db,
            client,
            policy,
            locks: Arc::default(),
        })
    }

    /// Places `order` (confirmed, not yet stored): stores it with a new saga, or finds the saga
    /// already started for its id, and drives it to an end. Returns the final state.
    pub async fn place(
        self: &Arc<Self>,
        order: Order,
        fingerprint: String,
    ) -> Result<Saga, PlaceError> {
        let order_id = order.id().clone();
        let guard = self.locks.lock(&order_id).await;
        let saga = self.begin(order, fingerprint.clone()).await?;
        if saga.fingerprint != fingerprint {
            return Err(PlaceError::IdempotencyConflict(order_id));
        }
        if saga.status().is_terminal() {
            return Ok(saga);
        }
        // Driven in a task of its own: a caller that hangs up must not stop a saga half-way.
        let this = self.clone();
        let driving = tokio::spawn(async move {
            let _guard = guard;
            this.drive(saga).await
        });
        Ok(driving
            .await
            .map_err(|e| StoreError::Task(format!("saga task: {e}")))??)
    }

    /// Stores the confirmed `order` and its new saga in one transaction — creating the order is
    /// the saga's first step — or returns the saga that already exists for its id.
    pub async fn begin(&self, mut order: Order, fingerprint: String) -> Result<Saga, StoreError> {
        self.db
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Some(existing) = sagas::load(&tx, order.id())? {
                    return Ok(existing);
                }
                let at = now_ms();
                let saga = Saga::begin(
                    order.id().clone(),
                    order.customer().clone(),
                    order.customer().account(),
                    fingerprint,
                    at,
                );
                orders::save(&tx, &mut order, at)?;
                sagas::insert(&tx, &saga)?;
                tx.commit()?;
                tracing::info!(
                    order = %saga.order_id, total = %order.total(),
                    "order placed; saga started"
                );
                orders::project(conn)?;
                Ok(saga)
            })
            .await
    }

    pub async fn load(&self, order_id: OrderId) -> Result<Option<Saga>, StoreError> {
        self.db.run(move |conn| sagas::load(conn, &order_id)).await
    }

    /// Advances until the saga is completed or compensated, or a compensation is stuck. An
    /// undo deferred in this run is not tried again in it: the next sweep will.
    pub async fn drive(&self, mut saga: Saga) -> Result<Saga, StoreError> {
        let mut deferred = None;
        while !saga.status().is_terminal() {
            if saga.status() == SagaStatus::Compensating && deferred == Some(saga.step()) {
                return Ok(saga);
            }
            match self.advance(saga).await? {
                Progress::Moved(next) => saga = next,
                Progress::Deferred(next) => {
                    deferred = next.undo_list().last().copied();
                    saga = next;
                }
                Progress::Stuck(stuck) => return Ok(stuck),
            }
        }
        Ok(saga)
    }

    /// Does one transition: one step or one compensation, then stores the new state.
    pub async fn advance(&self, mut saga: Saga) -> Result<Progress, StoreError> {
        let step = saga.step();
        match saga.status() {
            SagaStatus::Completed | SagaStatus::Compensated => Ok(Progress::Moved(saga)),
            SagaStatus::Running if step == Step::CreateOrder => {
                // `begin` stores the order with the saga, so this is done by construction.
                saga.step_done(now_ms());
                self.save(saga).await.map(Progress::Moved)
            }
            SagaStatus::Running => {
                let order = self.order(&saga.order_id).await?;
                let result = match &order {
                    Some(order) => self.perform(step, &saga, order).await,
                    None => Err(Failure::Refused(format!(
                        "order {} is not stored",
                        saga.order_id
                    ))),
                };
                match result {
                    Ok(Some(tracking_id)) => {
                        saga.shipped(tracking_id.clone(), now_ms());
                        self.save_with_order(saga, move |order| {
                            order.complete(tracking_id, now_ms())
                        })
                        .await
                        .map(Progress::Moved)
                    }
                    Ok(None) => {
                        saga.step_done(now_ms());
                        self.save(saga).await.map(Progress::Moved)
                    }
                    Err(failure) => {
                        let in_doubt = failure.in_doubt();
                        let reason = failure.reason();
                        tracing::warn!(
                            order = %saga.order_id, %step, %reason, in_doubt,
                            "step failed; compensating"
                        );
                        saga.step_failed(reason, in_doubt, now_ms());
                        self.save(saga).await.map(Progress::Moved)
                    }
                }
            }
            SagaStatus::Compensating if step == Step::CreateOrder => {
                let reason = saga.reason().unwrap_or("compensated").to_owned();
                saga.step_undone(now_ms());
                self.save_with_order(saga, move |order| order.cancel(reason, now_ms()))
                    .await
                    .map(Progress::Moved)
            }
            SagaStatus::Compensating => match self.undo(step, &saga.order_id).await {
                Ok(()) => {
                    saga.step_undone(now_ms());
                    self.save(saga).await.map(Progress::Moved)
                }
                Err(failure) => {
                    let reason = failure.reason();
                    if saga.defer_undo(now_ms()) {
                        tracing::warn!(
                            order = %saga.order_id, %step, %reason,
                            "undo of the step in doubt deferred"
                        );
                        return self.save(saga).await.map(Progress::Deferred);
                    }
                    tracing::error!(
                        order = %saga.order_id, %step, %reason,
                        "compensation failed; the sweeper will try again"
                    );
                    Ok(Progress::Stuck(saga))
                }
            },
        }
    }

    /// Drives every unfinished saga nobody else is driving. Returns their new states.
    pub async fn recover(&self) -> Result<Vec<Saga>, StoreError> {
        let quiet = i64::try_from(self.policy.resume_after.as_millis()).unwrap_or(i64::MAX);
        let untouched_since = now_ms().saturating_sub(quiet);
        let unfinished = self
            .db
            .run(move |conn| sagas::unfinished(conn, untouched_since))
            .await?;
        let mut driven = Vec::new();
        for saga in unfinished {
            let Some(_guard) = self.locks.try_lock(&saga.order_id) else {
                continue; // a request is driving it
            };
            // Read again under the lock: its driver may have just finished it.
            let Some(saga) = self.load(saga.order_id.clone()).await? else {
                continue;
            };
            if saga.status().is_terminal() {
                continue;
            }
            tracing::info!(
                order = %saga.order_id, status = saga.status().as_str(), step = %saga.step(),
                "resuming an unfinished saga"
            );
            driven.push(self.drive(saga).await?);
        }
        // The read model catches up even if a write's own projection run failed.
        self.db.run(orders::project).await?;
        Ok(driven)
    }

    /// Runs [`recover`](Self::recover) every `sweep_every`, the first time `sweep_every` after
    /// start so the services called have had a moment to come up.
    pub fn spawn_sweeper(self: Arc<Self>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let every = self.policy.sweep_every;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match self.recover().await {
                    Ok(driven) if !driven.is_empty() => {
                        tracing::info!(sagas = driven.len(), "sweep drove unfinished sagas");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "sweep failed"),
                }
            }
        })
    }

    async fn order(&self, order_id: &OrderId) -> Result<Option<Order>, StoreError> {
        let order_id = order_id.clone();
        self.db.run(move |conn| orders::load(conn, &order_id)).await
    }

    async fn save(&self, saga: Saga) -> Result<Saga, StoreError> {
        log_transition(&saga);
        self.db
            .run(move |conn| {
                sagas::update(conn, &saga)?;
                Ok(saga)
            })
            .await
    }

    /// Stores the saga's new state together with a change to its order.
    async fn save_with_order<F>(&self, saga: Saga, change: F) -> Result<Saga, StoreError>
    where
        F: FnOnce(&mut Order) -> Result<(), OrderError> + Send + 'static,
    {
        log_transition(&saga);
        self.db
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                if let Some(mut order) = orders::load(&tx, &saga.order_id)? {
                    change(&mut order).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    orders::save(&tx, &mut order, now_ms())?;
                }
                sagas::update(&tx, &saga)?;
                tx.commit()?;
                orders::project(conn)?;
                Ok(saga)
            })
            .await
    }

    /// Does a forward step. Returns the tracking id when the step arranged the shipment.
    async fn perform(
        &self,
        step: Step,
        saga: &Saga,
        order: &Order,
    ) -> Result<Option<String>, Failure> {
        let id = saga.order_id.as_str();
        let attempts = self.policy.step_attempts;
        match step {
            Step::CreateOrder => Ok(None),
            Step::ReserveInventory => {
                let items: Vec<_> = order
                    .lines()
                    .iter()
                    .map(|l| json!({"sku": l.sku, "quantity": l.quantity}))
                    .collect();
                let body = json!({"orderId": id, "items": items});
                self.call(attempts, || {
                    self.client
                        .post_idempotent("inventory", "/reservations", &body)
                })
                .await?;
                Ok(None)
            }
            Step::ChargePayment => {
                let body =
                    json!({"orderId": id, "accountId": saga.account, "amount": order.total()});
                self.call(attempts, || {
                    self.client.post_idempotent("payments", "/charges", &body)
                })
                .await?;
                Ok(None)
            }
            Step::ArrangeShipment => {
                let body = json!({"orderId": id, "address": order.address()});
                let reply = self
                    .call(attempts, || {
                        self.client.post_idempotent("shipping", "/shipments", &body)
                    })
                    .await?;
                let tracking = reply
                    .json::<ShipmentReply>()
                    .ok()
                    .and_then(|r| r.tracking_id);
                Ok(Some(tracking.unwrap_or_else(|| "unknown".to_owned())))
            }
        }
    }

    /// Undoes a step; every undo is idempotent and harmless if the step never happened.
    async fn undo(&self, step: Step, order_id: &OrderId) -> Result<(), Failure> {
        let id = order_id.as_str();
        let attempts = self.policy.undo_attempts;
        let result = match step {
            Step::CreateOrder => return Ok(()),
            Step::ReserveInventory => {
                let path = format!("/reservations/{id}");
                self.call(attempts, || self.client.delete("inventory", &path))
                    .await
            }
            Step::ChargePayment => {
                let body = json!({"orderId": id});
                self.call(attempts, || {
                    self.client.post_idempotent("payments", "/refunds", &body)
                })
                .await
            }
            Step::ArrangeShipment => {
                let path = format!("/shipments/{id}/cancel");
                let body = json!({});
                self.call(attempts, || {
                    self.client.post_idempotent("shipping", &path, &body)
                })
                .await
            }
        };
        match result {
            Ok(_) => Ok(()),
            // The undo endpoints refuse only malformed requests, which no retry can fix: say so
            // loudly and go on, rather than keep the saga (and the order) open forever.
            Err(Failure::Refused(reason)) => {
                tracing::error!(
                    order = %order_id, %step, %reason,
                    "compensation refused; skipping it"
                );
                Ok(())
            }
            Err(unavailable) => Err(unavailable),
        }
    }

    /// Calls until a success, a refusal, or `attempts` transient failures.
    async fn call<F, Fut>(&self, attempts: u32, mut call: F) -> Result<Reply, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Reply, CallError>>,
    {
        let mut last = String::new();
        let mut in_doubt = false;
        for attempt in 1..=attempts.max(1) {
            match call().await {
                Ok(reply) if reply.is_success() => return Ok(reply),
                Ok(reply) if is_transient(reply.status) => {
                    in_doubt |= reply_in_doubt(&reply);
                    last = format!(
                        "{} answered {}: {}",
                        reply.service,
                        reply.status,
                        reply.message()
                    );
                }
                Ok(reply) => {
                    return Err(Failure::Refused(format!(
                        "{} refused: {}",
                        reply.service,
                        reply.message()
                    )));
                }
                Err(e) => {
                    in_doubt |= !matches!(e, CallError::NoRoute(_) | CallError::Connect { .. });
                    last = e.to_string();
                }
            }
            tracing::warn!(attempt, error = %last, "transient failure");
            if attempt < attempts {
                let pause = self
                    .policy
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(10));
                tokio::time::sleep(pause).await;
            }
        }
        Err(Failure::Unavailable {
            reason: format!("{last} (after {attempts} attempts)"),
            in_doubt,
        })
    }
}

/// Worth another try: the service (or the mesh in front of it) may answer differently soon.
fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Whether a failed answer leaves open that the request took effect. The shop's services
/// commit as their last act, so their own error answers mean nothing happened; so do the
/// mesh's refusals made before the request was sent. A timeout, a broken connection or a
/// gateway error nobody explained may hide a success.
fn reply_in_doubt(reply: &Reply) -> bool {
    match reply
        .headers
        .get("x-weir-reason")
        .and_then(|v| v.to_str().ok())
    {
        Some(reason) => !matches!(
            reason,
            "rate-limited"
                | "bulkhead-full"
                | "circuit-open"
                | "no-healthy-endpoints"
                | "upstream-connect-failure"
        ),
        None => matches!(
            reply.status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
    }
}

fn log_transition(saga: &Saga) {
    tracing::info!(
        order = %saga.order_id,
        status = saga.status().as_str(),
        step = %saga.step(),
        "saga"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderMap;

    fn reply(status: u16, reason: Option<&str>) -> Reply {
        let mut headers = HeaderMap::new();
        if let Some(reason) = reason {
            headers.insert("x-weir-reason", reason.parse().unwrap());
        }
        Reply {
            service: "shipping".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers,
            body: Bytes::new(),
        }
    }

    #[test]
    fn which_failures_may_hide_a_success() {
        // The app's own errors and the mesh's refusals before sending: nothing happened.
        assert!(!reply_in_doubt(&reply(500, None)));
        for refusal in [
            "rate-limited",
            "bulkhead-full",
            "circuit-open",
            "no-healthy-endpoints",
        ] {
            assert!(!reply_in_doubt(&reply(503, Some(refusal))), "{refusal}");
        }
        assert!(!reply_in_doubt(&reply(
            502,
            Some("upstream-connect-failure")
        )));
        // Timeouts, resets and unexplained gateway errors: maybe it did.
        assert!(reply_in_doubt(&reply(504, Some("timeout"))));
        assert!(reply_in_doubt(&reply(502, Some("upstream-reset"))));
        assert!(reply_in_doubt(&reply(504, None)));
        assert!(reply_in_doubt(&reply(503, None)));
    }

    #[test]
    fn which_answers_are_worth_another_try() {
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(
                is_transient(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [400, 402, 404, 409, 422] {
            assert!(
                !is_transient(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
