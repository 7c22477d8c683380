//! Inventory: stock per SKU and reservations per order.
//!
//! A reservation holds stock for one order. Reserving and releasing are idempotent by order id:
//! reserving again returns the reservation already held (same items) and releasing again does
//! nothing. Releasing an order that has no reservation yet leaves a *released* marker, so a
//! reservation request that arrives late — after the saga gave up and compensated — is refused
//! instead of holding stock forever.

use crate::domain::catalog;
use crate::domain::ids::OrderId;
use crate::domain::money::Money;
use crate::domain::order::{Millis, Quantity};
use crate::store::{
    Database, Effect, PerOrder, Result, StoreError, events, from_sql_int, to_sql_int,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS stock (
    sku         TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    price_minor INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    on_hand     INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved    INTEGER NOT NULL CHECK (reserved >= 0 AND reserved <= on_hand)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reservation_lines (
    order_id TEXT NOT NULL REFERENCES reservations (order_id),
    sku      TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
";

/// The inventory service's database.
pub const DATABASE: Database = Database::new("inventory", &[events::SCHEMA, SCHEMA]);

/// Reservations, one per order.
const RESERVATIONS: PerOrder<Reservation> = PerOrder::new("reservations", "reservation", load);

/// Units of every product at first start: enough that a long load test does not run out.
pub const SEED_UNITS: u64 = 100_000;

/// Why a reservation is refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("a reservation needs at least one item")]
    NoItems,
    #[error("too many units of {0}")]
    QuantityTooLarge(String),
    #[error("unknown product {0}")]
    UnknownSku(String),
    #[error("insufficient stock for {sku}: {requested} requested, {available} available")]
    InsufficientStock {
        sku: String,
        requested: u64,
        available: u64,
    },
    #[error("the reservation for order {0} was released")]
    Released(OrderId),
    #[error("order {0} already holds a reservation for other items")]
    DifferentItems(OrderId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockItem {
    pub sku: String,
    pub name: String,
    pub price: Money,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
}

/// So many units of a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub sku: String,
    pub quantity: Quantity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationStatus {
    Held,
    Released,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub order_id: OrderId,
    pub status: ReservationStatus,
    pub items: Vec<Item>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Fills the stock table from the catalog if it is empty (first start). Returns whether it did.
pub fn seed(conn: &mut Connection) -> Result<bool> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM stock", [], |row| row.get(0))?;
    if count > 0 {
        return Ok(false);
    }
    for product in catalog::products() {
        tx.execute(
            "INSERT INTO stock (sku, name, price_minor, currency, on_hand, reserved)
             VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            params![
                product.sku,
                product.name,
                to_sql_int(product.price.minor())?,
                product.price.currency().as_str(),
                to_sql_int(SEED_UNITS)?
            ],
        )?;
    }
    tx.commit()?;
    Ok(true)
}

/// Same SKUs merged, in SKU order: the canonical form two requests are compared in.
fn normalise(items: &[Item]) -> std::result::Result<Vec<Item>, InventoryError> {
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for item in items {
        *merged.entry(&item.sku).or_default() += i64::from(item.quantity.get());
    }
    merged
        .into_iter()
        .map(|(sku, n)| {
            let quantity = Quantity::try_from(n)
                .map_err(|_| InventoryError::QuantityTooLarge(sku.to_owned()))?;
            Ok(Item {
                sku: sku.to_owned(),
                quantity,
            })
        })
        .collect()
}

/// Holds stock for `order_id`, all items or none.
pub fn reserve(
    conn: &mut Connection,
    order_id: &OrderId,
    items: &[Item],
    at: Millis,
) -> std::result::Result<(Reservation, Effect), InventoryError> {
    let items = normalise(items)?;
    if items.is_empty() {
        return Err(InventoryError::NoItems);
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(existing) = load(&tx, order_id)? {
        return match existing.status {
            ReservationStatus::Released => Err(InventoryError::Released(order_id.clone())),
            ReservationStatus::Held if existing.items == items => {
                Ok((existing, Effect::AlreadyDone))
            }
            ReservationStatus::Held => Err(InventoryError::DifferentItems(order_id.clone())),
        };
    }
    for item in &items {
        let row: Option<(i64, i64)> = tx
            .query_row(
                "SELECT on_hand, reserved FROM stock WHERE sku = ?1",
                [&item.sku],
                |row| row.try_into(),
            )
            .optional()?;
        let (on_hand, reserved) =
            row.ok_or_else(|| InventoryError::UnknownSku(item.sku.clone()))?;
        let available = from_sql_int(on_hand - reserved)?;
        let requested = u64::from(item.quantity.get());
        if requested > available {
            return Err(InventoryError::InsufficientStock {
                sku: item.sku.clone(),
                requested,
                available,
            });
        }
        tx.execute(
            "UPDATE stock SET reserved = reserved + ?2 WHERE sku = ?1",
            params![item.sku, to_sql_int(requested)?],
        )?;
    }
    tx.execute(
        "INSERT INTO reservations (order_id, status, created_at, updated_at)
         VALUES (?1, 'held', ?2, ?2)",
        params![order_id.as_str(), at],
    )?;
    for item in &items {
        tx.execute(
            "INSERT INTO reservation_lines (order_id, sku, quantity) VALUES (?1, ?2, ?3)",
            params![order_id.as_str(), item.sku, item.quantity.get()],
        )?;
    }
    let reservation = RESERVATIONS.commit_and_load(tx, order_id)?;
    Ok((reservation, Effect::Applied))
}

/// Gives back the stock held for `order_id`. Idempotent; leaves a released marker when there
/// was nothing to release.
pub fn release(
    conn: &mut Connection,
    order_id: &OrderId,
    at: Millis,
) -> Result<(Reservation, Effect)> {
    let released = |r: &Reservation| r.status == ReservationStatus::Released;
    let give_back_stock = |tx: &Transaction<'_>, held: &Reservation| {
        for item in &held.items {
            tx.execute(
                "UPDATE stock SET reserved = reserved - ?2 WHERE sku = ?1",
                params![item.sku, item.quantity.get()],
            )?;
        }
        Ok(())
    };
    RESERVATIONS.end_once(conn, (order_id, "released"), released, give_back_stock, at)
}

pub fn load(conn: &Connection, order_id: &OrderId) -> Result<Option<Reservation>> {
    let head: Option<(String, i64, i64)> = conn
        .query_row(
            "SELECT status, created_at, updated_at FROM reservations WHERE order_id = ?1",
            [order_id.as_str()],
            |row| row.try_into(),
        )
        .optional()?;
    let Some((status, created_at, updated_at)) = head else {
        return Ok(None);
    };
    let status = match status.as_str() {
        "held" => ReservationStatus::Held,
        "released" => ReservationStatus::Released,
        other => return Err(StoreError::Corrupt(format!("reservation status {other:?}"))),
    };
    let mut query = conn.prepare_cached(
        "SELECT sku, quantity FROM reservation_lines WHERE order_id = ?1 ORDER BY sku",
    )?;
    let items = query
        .query_map([order_id.as_str()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?
        .map(|row| {
            let (sku, n) = row?;
            let quantity = Quantity::try_from(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok(Item { sku, quantity })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(Reservation {
        order_id: order_id.clone(),
        status,
        items,
        created_at,
        updated_at,
    }))
}

/// Every product's stock, in SKU order.
pub fn stock(conn: &Connection) -> Result<Vec<StockItem>> {
    query_stock(
        conn,
        "SELECT sku, name, price_minor, currency, on_hand, reserved FROM stock",
    )
}

/// Products to suggest: the best stocked first (what the shop most wants to sell).
pub fn recommendations(conn: &Connection, limit: usize) -> Result<Vec<StockItem>> {
    let mut items = stock(conn)?;
    items.retain(|i| i.available > 0);
    items.sort_by(|a, b| {
        b.available
            .cmp(&a.available)
            .then_with(|| sku_number(a).cmp(&sku_number(b)))
    });
    items.truncate(limit);
    Ok(items)
}

fn sku_number(item: &StockItem) -> u64 {
    item.sku
        .strip_prefix("SKU-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

fn query_stock(conn: &Connection, sql: &str) -> Result<Vec<StockItem>> {
    type Row = (String, String, i64, String, i64, i64);
    let mut query = conn.prepare_cached(sql)?;
    let rows = query.query_map([], |row| Row::try_from(row))?;
    let mut items = rows
        .map(|row| {
            let (sku, name, minor, currency, on_hand, reserved) = row?;
            let corrupt = |e: crate::domain::money::MoneyError| StoreError::Corrupt(e.to_string());
            let price = Money::new(from_sql_int(minor)?, currency.parse().map_err(corrupt)?)
                .map_err(corrupt)?;
            let (on_hand, reserved) = (from_sql_int(on_hand)?, from_sql_int(reserved)?);
            Ok(StockItem {
                sku,
                name,
                price,
                on_hand,
                reserved,
                available: on_hand.saturating_sub(reserved),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    items.sort_by_key(sku_number);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = crate::store::memory_db(&[SCHEMA]);
        assert!(seed(&mut conn).unwrap());
        assert!(!seed(&mut conn).unwrap(), "seeding happens once");
        conn
    }

    fn item(sku: &str, n: i64) -> Item {
        Item {
            sku: sku.into(),
            quantity: Quantity::try_from(n).unwrap(),
        }
    }

    fn reserved(conn: &Connection, sku: &str) -> u64 {
        stock(conn)
            .unwrap()
            .into_iter()
            .find(|i| i.sku == sku)
            .unwrap()
            .reserved
    }

    #[test]
    fn reserve_is_idempotent_by_order_id() {
        let mut conn = db();
        let order = OrderId::new("ord-1").unwrap();
        let (first, effect) = reserve(
            &mut conn,
            &order,
            &[item("SKU-1", 2), item("SKU-2", 1), item("SKU-1", 1)],
            1,
        )
        .unwrap();
        assert_eq!(effect, Effect::Applied);
        assert_eq!(first.items, [item("SKU-1", 3), item("SKU-2", 1)]);
        let (again, effect) =
            reserve(&mut conn, &order, &[item("SKU-2", 1), item("SKU-1", 3)], 2).unwrap();
        assert_eq!((again, effect), (first, Effect::AlreadyDone));
        assert_eq!(reserved(&conn, "SKU-1"), 3, "held once");
        assert!(matches!(
            reserve(&mut conn, &order, &[item("SKU-1", 1)], 3),
            Err(InventoryError::DifferentItems(_))
        ));
    }

    #[test]
    fn release_is_idempotent_and_blocks_a_late_reserve() {
        let mut conn = db();
        let order = OrderId::new("ord-1").unwrap();
        reserve(&mut conn, &order, &[item("SKU-3", 4)], 1).unwrap();
        assert_eq!(release(&mut conn, &order, 2).unwrap().1, Effect::Applied);
        assert_eq!(
            release(&mut conn, &order, 3).unwrap().1,
            Effect::AlreadyDone
        );
        assert_eq!(reserved(&conn, "SKU-3"), 0);

        // The compensation overtook the reservation: the reservation must not win later.
        let late = OrderId::new("ord-2").unwrap();
        let (marker, _) = release(&mut conn, &late, 4).unwrap();
        assert_eq!(
            (marker.status, marker.items.len()),
            (ReservationStatus::Released, 0)
        );
        assert!(matches!(
            reserve(&mut conn, &late, &[item("SKU-3", 1)], 5),
            Err(InventoryError::Released(_))
        ));
        assert_eq!(reserved(&conn, "SKU-3"), 0);
    }

    #[test]
    fn all_or_nothing() {
        let mut conn = db();
        let order = OrderId::new("ord-1").unwrap();
        let too_many = (SEED_UNITS + 1) as i64;
        assert!(matches!(
            reserve(
                &mut conn,
                &order,
                &[item("SKU-1", 1), item("SKU-5", too_many)],
                1
            ),
            Err(InventoryError::InsufficientStock { .. })
        ));
        assert!(matches!(
            reserve(&mut conn, &order, &[item("SKU-1", 1), item("SKU-99", 1)], 1),
            Err(InventoryError::UnknownSku(_))
        ));
        assert_eq!(reserved(&conn, "SKU-1"), 0);
        assert!(load(&conn, &order).unwrap().is_none());
    }

    #[test]
    fn recommendations_prefer_well_stocked_products() {
        let mut conn = db();
        reserve(
            &mut conn,
            &OrderId::new("o").unwrap(),
            &[item("SKU-1", 5)],
            1,
        )
        .unwrap();
        let picks = recommendations(&conn, 3).unwrap();
        assert_eq!(
            picks.iter().map(|p| p.sku.as_str()).collect::<Vec<_>>(),
            ["SKU-2", "SKU-3", "SKU-4"]
        );
    }
}
