//! The [`Order`] aggregate and its domain events.
//!
//! The order is the consistency boundary of the sales context: its lines, total and status
//! change only through its methods, which keep the invariants — only a draft changes, an empty
//! order cannot be confirmed, quantities are positive, all lines share the order's currency.
//! Each state change records an [`OrderEvent`]; the repository stores the new state and the
//! events in one transaction (`store::orders`), and the order history read model is a projection
//! of those events.

use crate::domain::address::Address;
use crate::domain::catalog::Product;
use crate::domain::ids::{CustomerId, OrderId};
use crate::domain::money::{Currency, Money, MoneyError};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// Milliseconds since the Unix epoch. Passed in rather than read, so the domain stays pure.
pub type Millis = i64;

/// Why an order refuses a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("order {id} is {status}: only a draft can change")]
    NotDraft { id: OrderId, status: OrderStatus },
    #[error("order {0} has no lines: an empty order cannot be confirmed")]
    Empty(OrderId),
    #[error("quantity must be positive, got {0}")]
    NonPositiveQuantity(i64),
    #[error("quantity {0} is too large")]
    QuantityTooLarge(i64),
    #[error("order {id} is {status} and cannot be {action}")]
    InvalidTransition {
        id: OrderId,
        status: OrderStatus,
        action: &'static str,
    },
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// How many units of a product: positive by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u32")]
pub struct Quantity(NonZeroU32);

impl Quantity {
    pub fn get(self) -> u32 {
        self.0.get()
    }
}

impl TryFrom<i64> for Quantity {
    type Error = OrderError;
    fn try_from(n: i64) -> Result<Self, OrderError> {
        if n <= 0 {
            return Err(OrderError::NonPositiveQuantity(n));
        }
        u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self)
            .ok_or(OrderError::QuantityTooLarge(n))
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> u32 {
        q.get()
    }
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Being put together; lines may change.
    Draft,
    /// Placed: its lines and total are fixed; the saga is fulfilling it.
    Confirmed,
    /// Paid for and handed to shipping.
    Completed,
    /// Given up; whatever was done for it has been undone.
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Confirmed => "confirmed",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }
}

fmt_as_str!(Display for OrderStatus);

/// One product on an order, priced when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderLine {
    pub sku: String,
    pub name: String,
    pub unit_price: Money,
    pub quantity: Quantity,
}

impl OrderLine {
    pub fn subtotal(&self) -> Result<Money, MoneyError> {
        self.unit_price.times(self.quantity.get())
    }
}

/// What happened to an order: facts, named in the past tense, stored in the order's stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum OrderEvent {
    OrderPlaced {
        order_id: OrderId,
        customer: CustomerId,
        lines: Vec<OrderLine>,
        total: Money,
        address: Address,
        at: Millis,
    },
    OrderCompleted {
        order_id: OrderId,
        tracking_id: String,
        at: Millis,
    },
    OrderCancelled {
        order_id: OrderId,
        reason: String,
        at: Millis,
    },
}

/// The aggregate root. Serialized as is for storage and for `GET /orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    id: OrderId,
    customer: CustomerId,
    address: Address,
    currency: Currency,
    lines: Vec<OrderLine>,
    total: Money,
    status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placed_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracking_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cancel_reason: Option<String>,
    /// How many events of this order are stored: the expected version of the next save.
    version: u64,
    /// Events recorded since the last save.
    #[serde(skip)]
    uncommitted: Vec<OrderEvent>,
}

impl Order {
    /// A new, empty draft. Drafts live in memory until confirmed: the first stored event is
    /// `OrderPlaced`.
    pub fn draft(id: OrderId, customer: CustomerId, address: Address, currency: Currency) -> Self {
        Self {
            id,
            customer,
            address,
            currency,
            lines: Vec::new(),
            total: Money::zero(currency),
            status: OrderStatus::Draft,
            placed_at: None,
            tracking_id: None,
            cancel_reason: None,
            version: 0,
            uncommitted: Vec::new(),
        }
    }

    pub fn id(&self) -> &OrderId {
        &self.id
    }

    pub fn customer(&self) -> &CustomerId {
        &self.customer
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    pub fn lines(&self) -> &[OrderLine] {
        &self.lines
    }

    pub fn total(&self) -> Money {
        self.total
    }

    pub fn status(&self) -> OrderStatus {
        self.status
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Adds `quantity` of `product`, merging with a line for the same product.
    pub fn add_line(&mut self, product: &Product, quantity: Quantity) -> Result<(), OrderError> {
        self.ensure_draft()?;
        Money::zero(self.currency).same_currency(&product.price)?;
        let mut lines = self.lines.clone();
        match lines.iter_mut().find(|line| line.sku == product.sku) {
            Some(line) => {
                let merged = i64::from(line.quantity.get()) + i64::from(quantity.get());
                line.quantity = Quantity::try_from(merged)?;
            }
            None => lines.push(OrderLine {
                sku: product.sku.clone(),
                name: product.name.to_owned(),
                unit_price: product.price,
                quantity,
            }),
        }
        self.set_lines(lines)
    }

    pub fn remove_line(&mut self, sku: &str) -> Result<(), OrderError> {
        self.ensure_draft()?;
        let lines = self
            .lines
            .iter()
            .filter(|l| l.sku != sku)
            .cloned()
            .collect();
        self.set_lines(lines)
    }

    /// Places the order: draft → confirmed, recording `OrderPlaced`.
    pub fn confirm(&mut self, at: Millis) -> Result<(), OrderError> {
        self.ensure_draft()?;
        if self.lines.is_empty() {
            return Err(OrderError::Empty(self.id.clone()));
        }
        self.status = OrderStatus::Confirmed;
        self.placed_at = Some(at);
        self.uncommitted.push(OrderEvent::OrderPlaced {
            order_id: self.id.clone(),
            customer: self.customer.clone(),
            lines: self.lines.clone(),
            total: self.total,
            address: self.address.clone(),
            at,
        });
        Ok(())
    }

    /// Fulfilled: confirmed → completed, recording `OrderCompleted`.
    pub fn complete(&mut self, tracking_id: String, at: Millis) -> Result<(), OrderError> {
        if self.status != OrderStatus::Confirmed {
            return Err(self.invalid("completed"));
        }
        self.status = OrderStatus::Completed;
        self.tracking_id = Some(tracking_id.clone());
        self.uncommitted.push(OrderEvent::OrderCompleted {
            order_id: self.id.clone(),
            tracking_id,
            at,
        });
        Ok(())
    }

    /// Given up: draft or confirmed → cancelled, recording `OrderCancelled`. Cancelling a
    /// cancelled order changes nothing (compensation may run twice); a completed order stays
    /// completed.
    pub fn cancel(&mut self, reason: String, at: Millis) -> Result<(), OrderError> {
        match self.status {
            OrderStatus::Cancelled => Ok(()),
            OrderStatus::Completed => Err(self.invalid("cancelled")),
            OrderStatus::Draft | OrderStatus::Confirmed => {
                self.status = OrderStatus::Cancelled;
                self.cancel_reason = Some(reason.clone());
                self.uncommitted.push(OrderEvent::OrderCancelled {
                    order_id: self.id.clone(),
                    reason,
                    at,
                });
                Ok(())
            }
        }
    }

    /// Events recorded since the last save, oldest first.
    pub fn uncommitted(&self) -> &[OrderEvent] {
        &self.uncommitted
    }

    /// Hands the recorded events to the repository and counts them into the version. Returns
    /// the version the stored stream must have had (the expected version) and the events.
    pub fn commit(&mut self) -> (u64, Vec<OrderEvent>) {
        let expected = self.version;
        let events = std::mem::take(&mut self.uncommitted);
        self.version += events.len() as u64;
        (expected, events)
    }

    fn set_lines(&mut self, lines: Vec<OrderLine>) -> Result<(), OrderError> {
        let subtotals = lines
            .iter()
            .map(OrderLine::subtotal)
            .collect::<Result<Vec<_>, _>>()?;
        self.total = Money::sum(self.currency, subtotals)?;
        self.lines = lines;
        Ok(())
    }

    fn ensure_draft(&self) -> Result<(), OrderError> {
        if self.status == OrderStatus::Draft {
            Ok(())
        } else {
            Err(OrderError::NotDraft {
                id: self.id.clone(),
                status: self.status,
            })
        }
    }

    fn invalid(&self, action: &'static str) -> OrderError {
        OrderError::InvalidTransition {
            id: self.id.clone(),
            status: self.status,
            action,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainEvent;
    use crate::domain::catalog;

    /// A draft with `quantity` of `sku`, confirmed at `at`.
    fn confirmed(sku: &str, quantity: i64, at: Millis) -> Order {
        let mut order = draft();
        order
            .add_line(&catalog::product(sku).unwrap(), qty(quantity))
            .unwrap();
        order.confirm(at).unwrap();
        order
    }

    fn draft() -> Order {
        Order::draft(
            OrderId::new("ord-1").unwrap(),
            CustomerId::new("alice").unwrap(),
            Address::new("Hauptstr. 1", "Berlin", "10115", "DE").unwrap(),
            Currency::EUR,
        )
    }

    fn qty(n: i64) -> Quantity {
        Quantity::try_from(n).unwrap()
    }

    #[test]
    fn quantities_are_positive() {
        assert_eq!(
            Quantity::try_from(0),
            Err(OrderError::NonPositiveQuantity(0))
        );
        assert_eq!(
            Quantity::try_from(-3),
            Err(OrderError::NonPositiveQuantity(-3))
        );
        assert!(matches!(
            Quantity::try_from(1 << 40),
            Err(OrderError::QuantityTooLarge(_))
        ));
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert_eq!(serde_json::from_str::<Quantity>("2").unwrap().get(), 2);
    }

    #[test]
    fn lines_merge_and_the_total_follows() {
        let mut order = draft();
        let cup = catalog::product("SKU-1").unwrap(); // 5.49
        let kettle = catalog::product("SKU-2").unwrap(); // 7.99
        order.add_line(&cup, qty(2)).unwrap();
        order.add_line(&kettle, qty(1)).unwrap();
        order.add_line(&cup, qty(1)).unwrap();
        assert_eq!(order.lines().len(), 2);
        assert_eq!(order.lines()[0].quantity.get(), 3);
        assert_eq!(order.total().minor(), 3 * 549 + 799);
        order.remove_line("SKU-1").unwrap();
        assert_eq!(order.total().minor(), 799);
        assert!(order.uncommitted().is_empty(), "drafting records no event");
    }

    #[test]
    fn lines_must_share_the_order_currency() {
        let mut order = draft();
        let mut foreign = catalog::product("SKU-1").unwrap();
        foreign.price = Money::new(100, "USD".parse().unwrap()).unwrap();
        assert!(matches!(
            order.add_line(&foreign, qty(1)),
            Err(OrderError::Money(MoneyError::CurrencyMismatch { .. }))
        ));
        assert!(order.lines().is_empty());
    }

    #[test]
    fn an_empty_order_cannot_be_confirmed() {
        let mut order = draft();
        assert!(matches!(order.confirm(1), Err(OrderError::Empty(_))));
        assert_eq!(order.status(), OrderStatus::Draft);
    }

    #[test]
    fn a_confirmed_order_cannot_change() {
        let mut order = draft();
        let cup = catalog::product("SKU-1").unwrap();
        order.add_line(&cup, qty(1)).unwrap();
        order.confirm(1).unwrap();
        assert_eq!(order.status(), OrderStatus::Confirmed);
        assert!(matches!(
            order.add_line(&cup, qty(1)),
            Err(OrderError::NotDraft { .. })
        ));
        assert!(matches!(
            order.remove_line("SKU-1"),
            Err(OrderError::NotDraft { .. })
        ));
        assert!(matches!(order.confirm(2), Err(OrderError::NotDraft { .. })));
        assert_eq!(order.total().minor(), 549);
    }

    #[test]
    fn the_life_of_an_order_is_recorded_as_events() {
        let mut order = confirmed("SKU-3", 2, 10);
        order.complete("TRK-1".into(), 20).unwrap();
        let kinds: Vec<_> = order.uncommitted().iter().map(DomainEvent::kind).collect();
        assert_eq!(kinds, ["OrderPlaced", "OrderCompleted"]);
        let (expected, events) = order.commit();
        assert_eq!((expected, events.len(), order.version()), (0, 2, 2));
        assert!(order.uncommitted().is_empty());
        // A completed order stays completed.
        assert!(matches!(
            order.cancel("too late".into(), 30),
            Err(OrderError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn cancelling_is_idempotent_and_only_before_completion() {
        let mut order = confirmed("SKU-3", 1, 10);
        order.cancel("out of stock".into(), 11).unwrap();
        order.cancel("again".into(), 12).unwrap();
        assert_eq!(order.status(), OrderStatus::Cancelled);
        assert_eq!(order.uncommitted().len(), 2, "placed + one cancelled");
        assert!(matches!(
            order.complete("TRK".into(), 13),
            Err(OrderError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn events_have_a_stable_wire_form() {
        let order = confirmed("SKU-1", 1, 5);
        let json = serde_json::to_value(&order.uncommitted()[0]).unwrap();
        assert_eq!(json["type"], "OrderPlaced");
        assert_eq!(json["orderId"], "ord-1");
        assert_eq!(json["total"]["minor"], 549);
        let back: OrderEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, order.uncommitted()[0]);
    }
}
