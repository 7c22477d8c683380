//! Shipments, one per order. Arranging and cancelling are idempotent by order id; cancelling an
//! order with no shipment yet leaves a cancelled marker so a late arrangement is refused.

use crate::domain::address::Address;
use crate::domain::ids::OrderId;
use crate::domain::order::Millis;
use crate::store::{Database, Effect, PerOrder, Result, StoreError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shipments (
    order_id    TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    tracking_id TEXT,
    address     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
";

/// The shipping service's database.
pub const DATABASE: Database = Database::new("shipping", &[SCHEMA]);

/// Shipments, one per order.
const SHIPMENTS: PerOrder<Shipment> = PerOrder::new("shipments", "shipment", load);

/// Why a shipment is refused.
#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    #[error("the shipment of order {0} was cancelled")]
    Cancelled(OrderId),
    #[error("order {0} already ships to another address")]
    DifferentAddress(OrderId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShipmentStatus {
    Arranged,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shipment {
    pub order_id: OrderId,
    pub status: ShipmentStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

fn tracking_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let code: String = (0..10)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect();
    format!("TRK-{code}")
}

pub fn arrange(
    conn: &mut Connection,
    order_id: &OrderId,
    address: &Address,
    at: Millis,
) -> Result<(Shipment, Effect), ShippingError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(existing) = load(&tx, order_id)? {
        return match existing.status {
            ShipmentStatus::Cancelled => Err(ShippingError::Cancelled(order_id.clone())),
            ShipmentStatus::Arranged if existing.address.as_ref() == Some(address) => {
                Ok((existing, Effect::AlreadyDone))
            }
            ShipmentStatus::Arranged => Err(ShippingError::DifferentAddress(order_id.clone())),
        };
    }
    tx.execute(
        "INSERT INTO shipments (order_id, status, tracking_id, address, created_at, updated_at)
         VALUES (?1, 'arranged', ?2, ?3, ?4, ?4)",
        params![
            order_id.as_str(),
            tracking_id(),
            serde_json::to_string(address).map_err(StoreError::from)?,
            at
        ],
    )?;
    let shipment = SHIPMENTS.commit_and_load(tx, order_id)?;
    Ok((shipment, Effect::Applied))
}

pub fn cancel(conn: &mut Connection, order_id: &OrderId, at: Millis) -> Result<(Shipment, Effect)> {
    let cancelled = |s: &Shipment| s.status == ShipmentStatus::Cancelled;
    // Nothing is held for a shipment: cancelling is its status alone.
    let nothing_held = |_: &Transaction<'_>, _: &Shipment| Ok(());
    SHIPMENTS.end_once(conn, (order_id, "cancelled"), cancelled, nothing_held, at)
}

pub fn load(conn: &Connection, order_id: &OrderId) -> Result<Option<Shipment>> {
    type Row = (String, Option<String>, Option<String>, i64, i64);
    let row: Option<Row> = conn
        .query_row(
            "SELECT status, tracking_id, address, created_at, updated_at
             FROM shipments WHERE order_id = ?1",
            [order_id.as_str()],
            |row| row.try_into(),
        )
        .optional()?;
    let Some((status, tracking_id, address, created_at, updated_at)) = row else {
        return Ok(None);
    };
    let status = match status.as_str() {
        "arranged" => ShipmentStatus::Arranged,
        "cancelled" => ShipmentStatus::Cancelled,
        other => return Err(StoreError::Corrupt(format!("shipment status {other:?}"))),
    };
    Ok(Some(Shipment {
        order_id: order_id.clone(),
        status,
        tracking_id,
        address: address.map(|a| serde_json::from_str(&a)).transpose()?,
        created_at,
        updated_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        crate::store::memory_db(&[SCHEMA])
    }

    fn address() -> Address {
        Address::new("s", "c", "p", "DE").unwrap()
    }

    #[test]
    fn arrange_and_cancel_are_idempotent() {
        let mut conn = db();
        let order = OrderId::new("ord-1").unwrap();
        let (first, effect) = arrange(&mut conn, &order, &address(), 1).unwrap();
        assert_eq!(effect, Effect::Applied);
        assert!(first.tracking_id.as_deref().unwrap().starts_with("TRK-"));
        let (again, effect) = arrange(&mut conn, &order, &address(), 2).unwrap();
        assert_eq!((again, effect), (first.clone(), Effect::AlreadyDone));
        let other = Address::new("x", "c", "p", "DE").unwrap();
        assert!(matches!(
            arrange(&mut conn, &order, &other, 3),
            Err(ShippingError::DifferentAddress(_))
        ));

        assert_eq!(cancel(&mut conn, &order, 4).unwrap().1, Effect::Applied);
        let (cancelled, effect) = cancel(&mut conn, &order, 5).unwrap();
        assert_eq!(
            (cancelled.status, effect),
            (ShipmentStatus::Cancelled, Effect::AlreadyDone)
        );
        assert_eq!(cancelled.tracking_id, first.tracking_id);
    }

    #[test]
    fn a_cancel_before_the_shipment_blocks_it() {
        let mut conn = db();
        let order = OrderId::new("ord-2").unwrap();
        cancel(&mut conn, &order, 1).unwrap();
        assert!(matches!(
            arrange(&mut conn, &order, &address(), 2),
            Err(ShippingError::Cancelled(_))
        ));
    }
}
