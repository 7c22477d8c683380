//! The order saga's state machine: which steps of placing an order are done, which are being
//! undone, and what comes next. Pure; the orchestrator (`services::orders::saga`) does the I/O
//! and persists the state after every transition (`store::sagas`).
//!
//! Forward: create order → reserve inventory → charge payment → arrange shipment → completed.
//! On a failure: undo the completed steps in reverse — refund, release, cancel the order — and
//! end compensated.
//!
//! A failed step may have taken effect anyway when its outcome is *in doubt* (the call timed
//! out, the connection broke after the request left): then its undo comes first too. Every
//! undo is idempotent and harmless when there is nothing to undo, but the service that just
//! failed may well be down still, so an in-doubt undo that cannot be done yet is *deferred*
//! behind the others rather than block them — the steps are independent, so the customer's
//! money and stock come back at once and the in-doubt undo follows when its service recovers.
//!
//! While `Running`, `step` is the step to do next and every earlier step is done; while
//! `Compensating`, `undo` lists what is left to undo, first to last. A crash at any point leaves
//! a state from which the saga can go on.
use crate::domain::ids::{AccountId, CustomerId, OrderId};
use crate::domain::order::Millis;
use serde::{Deserialize, Serialize};

/// A step of placing an order, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Store the confirmed order (undo: cancel it).
    CreateOrder,
    /// Inventory `POST /reservations` (undo: `DELETE /reservations/{orderId}`).
    ReserveInventory,
    /// Payments `POST /charges` (undo: `POST /refunds`).
    ChargePayment,
    /// Shipping `POST /shipments` (undo: `POST /shipments/{orderId}/cancel`).
    ArrangeShipment,
}

impl Step {
    pub const ALL: [Step; 4] = [
        Step::CreateOrder,
        Step::ReserveInventory,
        Step::ChargePayment,
        Step::ArrangeShipment,
    ];

    pub fn next(self) -> Option<Step> {
        Self::ALL.get(self as usize + 1).copied()
    }

    pub fn previous(self) -> Option<Step> {
        (self as usize).checked_sub(1).map(|i| Self::ALL[i])
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateOrder => "createOrder",
            Self::ReserveInventory => "reserveInventory",
            Self::ChargePayment => "chargePayment",
            Self::ArrangeShipment => "arrangeShipment",
        }
    }
}

fmt_as_str!(Display for Step);

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SagaStatus {
    Running,
    Compensating,
    Completed,
    Compensated,
}

impl SagaStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
        }
    }

    pub const ALL: [Self; 4] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One order's saga, as persisted and as `GET /sagas` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saga {
    pub order_id: OrderId,
    pub customer: CustomerId,
    pub account: AccountId,
    /// The request that started the saga, canonical: a retry with the same order id must
    /// carry the same request, or it is a different order reusing the id.
    pub fingerprint: String,
    status: SagaStatus,
    /// Running: the step to do next. Afterwards: where the forward run ended.
    step: Step,
    /// Compensating: the steps still to undo, first to last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    undo: Vec<Step>,
    /// Why the saga is compensating: the first failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failed_step: Option<Step>,
    /// The failed step may have taken effect: its undo is on the list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    in_doubt: bool,
    /// Shipping's tracking id, once the shipment is arranged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracking_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Saga {
    /// A saga whose order was just stored (in the same transaction as this state): creating the
    /// order is done, inventory is next.
    pub fn begin(
        order_id: OrderId,
        customer: CustomerId,
        account: AccountId,
        fingerprint: String,
        at: Millis,
    ) -> Self {
        Self {
            order_id,
            customer,
            account,
            fingerprint,
            status: SagaStatus::Running,
            step: Step::ReserveInventory,
            undo: Vec::new(),
            reason: None,
            failed_step: None,
            in_doubt: false,
            tracking_id: None,
            created_at: at,
            updated_at: at,
        }
    }

    pub fn status(&self) -> SagaStatus {
        self.status
    }

    /// The step to do (running) or to undo (compensating) next.
    pub fn step(&self) -> Step {
        match self.status {
            SagaStatus::Compensating => self.undo.first().copied().unwrap_or(Step::CreateOrder),
            _ => self.step,
        }
    }

    /// Compensating: what is left to undo, first to last.
    pub fn undo_list(&self) -> &[Step] {
        &self.undo
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn failed_step(&self) -> Option<Step> {
        self.failed_step
    }

    pub fn tracking_id(&self) -> Option<&str> {
        self.tracking_id.as_deref()
    }

    /// The current step is done: on to the next, or completed after the last.
    pub fn step_done(&mut self, at: Millis) {
        debug_assert_eq!(self.status, SagaStatus::Running);
        match self.step.next() {
            Some(next) => self.step = next,
            None => self.status = SagaStatus::Completed,
        }
        self.updated_at = at;
    }

    /// The shipment is arranged with this tracking id; the saga is completed.
    pub fn shipped(&mut self, tracking_id: String, at: Millis) {
        self.tracking_id = Some(tracking_id);
        self.step_done(at);
    }

    /// The current step failed for good: undo the completed steps, newest first — and the
    /// failed one before them when it may have taken effect (`in_doubt`).
    pub fn step_failed(&mut self, reason: String, in_doubt: bool, at: Millis) {
        debug_assert_eq!(self.status, SagaStatus::Running);
        let failed = self.step;
        let completed = std::iter::successors(failed.previous(), |s| s.previous());
        self.undo = in_doubt
            .then_some(failed)
            .into_iter()
            .chain(completed)
            .collect();
        self.status = SagaStatus::Compensating;
        self.failed_step = Some(failed);
        self.in_doubt = in_doubt;
        self.reason = Some(reason);
        self.updated_at = at;
    }

    /// The first step on the undo list is undone: on to the next, or compensated.
    pub fn step_undone(&mut self, at: Millis) {
        debug_assert_eq!(self.status, SagaStatus::Compensating);
        if !self.undo.is_empty() {
            self.undo.remove(0);
        }
        if self.undo.is_empty() {
            self.status = SagaStatus::Compensated;
        }
        self.updated_at = at;
    }

    /// The first undo cannot be done now. The in-doubt step's undo goes to the back of the list
    /// (the others do not depend on it) and `true` is returned; any other undo must wait, and
    /// so must the in-doubt one when nothing else is left: `false`.
    pub fn defer_undo(&mut self, at: Millis) -> bool {
        let deferrable =
            self.in_doubt && self.undo.len() > 1 && self.undo.first() == self.failed_step.as_ref();
        if deferrable {
            self.undo.rotate_left(1);
            self.updated_at = at;
        }
        deferrable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga() -> Saga {
        Saga::begin(
            OrderId::new("ord-1").unwrap(),
            CustomerId::new("alice").unwrap(),
            AccountId::new("acct-alice").unwrap(),
            "{}".into(),
            0,
        )
    }

    #[test]
    fn forward_to_completion() {
        let mut s = saga();
        assert_eq!(
            (s.status(), s.step()),
            (SagaStatus::Running, Step::ReserveInventory)
        );
        s.step_done(1);
        assert_eq!(s.step(), Step::ChargePayment);
        s.step_done(2);
        assert_eq!(s.step(), Step::ArrangeShipment);
        s.shipped("TRK-1".into(), 3);
        assert_eq!(s.status(), SagaStatus::Completed);
        assert!(s.status().is_terminal());
        assert_eq!(s.tracking_id(), Some("TRK-1"));
    }

    fn compensate(s: &mut Saga) -> Vec<Step> {
        let mut undone = Vec::new();
        while s.status() == SagaStatus::Compensating {
            undone.push(s.step());
            s.step_undone(9);
        }
        undone
    }

    #[test]
    fn a_refused_step_undoes_only_the_completed_ones_in_reverse() {
        let mut s = saga();
        s.step_done(1); // reserved
        s.step_failed("payment declined".into(), false, 2);
        assert_eq!(
            (s.status(), s.step()),
            (SagaStatus::Compensating, Step::ReserveInventory)
        );
        assert_eq!(s.failed_step(), Some(Step::ChargePayment));
        assert_eq!(
            compensate(&mut s),
            [Step::ReserveInventory, Step::CreateOrder]
        );
        assert_eq!(s.status(), SagaStatus::Compensated);
        assert_eq!(s.reason(), Some("payment declined"));
    }

    /// A saga whose shipping call timed out after the charge: it may or may not have shipped.
    fn shipping_in_doubt() -> Saga {
        let mut s = saga();
        s.step_done(1);
        s.step_done(2);
        s.step_failed("shipping timed out".into(), true, 3);
        s
    }

    #[test]
    fn a_step_in_doubt_is_undone_first() {
        let mut s = shipping_in_doubt();
        assert_eq!(
            compensate(&mut s),
            [
                Step::ArrangeShipment,
                Step::ChargePayment,
                Step::ReserveInventory,
                Step::CreateOrder
            ]
        );
    }

    #[test]
    fn only_the_in_doubt_undo_may_wait_behind_the_others() {
        let mut s = shipping_in_doubt();
        assert!(
            s.defer_undo(4),
            "shipping is down: refund and release first"
        );
        assert_eq!(s.step(), Step::ChargePayment);
        assert!(!s.defer_undo(5), "a completed step's undo is not skipped");
        s.step_undone(6);
        s.step_undone(7);
        s.step_undone(8);
        assert_eq!(
            (s.status(), s.undo_list()),
            (SagaStatus::Compensating, &[Step::ArrangeShipment][..])
        );
        assert!(!s.defer_undo(9), "nothing left to go before it");
        s.step_undone(10);
        assert_eq!(s.status(), SagaStatus::Compensated);
    }

    #[test]
    fn a_saga_failing_at_its_first_call_cancels_the_order() {
        let mut s = saga();
        s.step_failed("out of stock".into(), false, 1);
        assert_eq!(compensate(&mut s), [Step::CreateOrder]);
    }

    #[test]
    fn steps_and_statuses_have_names() {
        assert_eq!(Step::ArrangeShipment.next(), None);
        assert_eq!(Step::CreateOrder.previous(), None);
        assert_eq!(
            SagaStatus::parse("compensating"),
            Some(SagaStatus::Compensating)
        );
        assert_eq!(SagaStatus::parse("nope"), None);
        let json = serde_json::to_value(saga()).unwrap();
        assert_eq!(json["status"], "running");
        assert_eq!(json["step"], "reserveInventory");
    }
}
