//! The order repository and the order history read model.
//!
//! Write side: [`save`] stores an order's current state (one row, for loading it back) and
//! appends its new events to the order's stream, in the caller's transaction — the state and
//! the facts cannot disagree, and no event is lost between "saved" and "published" (the
//! transactional outbox, with the event store as the outbox).
//!
//! Read side (CQRS): [`project`] follows the `order-` streams from its last position and keeps
//! `order_history`, a table shaped for "the recent orders of a customer". It can be dropped and
//! rebuilt from the events at any time ([`rebuild`]); queries ([`history`]) never touch the
//! write model.

use crate::domain::DomainEvent;
use crate::domain::ids::{CustomerId, OrderId};
use crate::domain::money::{Currency, Money};
use crate::domain::order::{Millis, Order, OrderEvent};
use crate::store::events::{self, Recorded};
use crate::store::{Database, Result, StoreError, from_sql_int, sagas, to_sql_int};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    order_id   TEXT PRIMARY KEY,
    customer   TEXT NOT NULL,
    status     TEXT NOT NULL,
    version    INTEGER NOT NULL,
    state      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS order_history (
    order_id    TEXT PRIMARY KEY,
    customer    TEXT NOT NULL,
    status      TEXT NOT NULL,
    total_minor INTEGER NOT NULL,
    currency    TEXT NOT NULL,
    item_count  INTEGER NOT NULL,
    tracking_id TEXT,
    reason      TEXT,
    placed_at   INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS order_history_by_customer ON order_history (customer, placed_at DESC);
CREATE TABLE IF NOT EXISTS projections (
    name     TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
";

/// The orders service's database: its orders, their events and history, and its sagas.
pub const DATABASE: Database = Database::new("orders", &[events::SCHEMA, SCHEMA, sagas::SCHEMA]);

/// Streams of orders are named `order-<id>`.
pub const STREAM_PREFIX: &str = "order-";
const PROJECTION: &str = "order_history";
/// Events applied per projection transaction.
const BATCH: usize = 500;

fn stream(id: &OrderId) -> String {
    format!("{STREAM_PREFIX}{id}")
}

/// Stores `order`'s new events (checking its version) and its current state.
pub fn save(tx: &Transaction<'_>, order: &mut Order, at: Millis) -> Result<()> {
    let (expected, new_events) = order.commit();
    if new_events.is_empty() {
        return Ok(());
    }
    let version = events::append(tx, &stream(order.id()), expected, &new_events, at)?;
    tx.execute(
        "INSERT INTO orders (order_id, customer, status, version, state, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (order_id) DO UPDATE
         SET status = ?3, version = ?4, state = ?5, updated_at = ?6",
        params![
            order.id().as_str(),
            order.customer().as_str(),
            order.status().as_str(),
            to_sql_int(version)?,
            serde_json::to_string(&order)?,
            at
        ],
    )?;
    Ok(())
}

pub fn load(conn: &Connection, id: &OrderId) -> Result<Option<Order>> {
    crate::store::load_state(conn, "orders", id.as_str())
}

/// One row of the order history read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    pub order_id: String,
    pub customer: String,
    pub status: String,
    pub total: Money,
    pub item_count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub placed_at: Millis,
    pub updated_at: Millis,
}

/// Applies the order events stored since the projection's last position. Returns how many
/// were applied. Each batch and its new position commit together, so a crash mid-way neither
/// skips nor repeats an event.
pub fn project(conn: &mut Connection) -> Result<usize> {
    let mut applied = 0;
    loop {
        // Immediate: the batch is read and its position written in one transaction. A deferred
        // one would fail at once with "database is locked" when another orders instance on the
        // same database wrote in between (a read cannot be upgraded past a newer commit), where
        // an immediate one waits its turn under the busy timeout.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let after: i64 = tx
            .query_row(
                "SELECT position FROM projections WHERE name = ?1",
                [PROJECTION],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let batch: Vec<Recorded<OrderEvent>> =
            events::read_category(&tx, STREAM_PREFIX, after, BATCH)?;
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(applied);
        };
        for recorded in &batch {
            apply(&tx, recorded)?;
        }
        tx.execute(
            "INSERT INTO projections (name, position) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET position = ?2",
            params![PROJECTION, last],
        )?;
        tx.commit()?;
        applied += batch.len();
    }
}

/// Drops the read model and replays every order event into it.
pub fn rebuild(conn: &mut Connection) -> Result<usize> {
    conn.execute_batch(&format!(
        "DELETE FROM order_history; DELETE FROM projections WHERE name = '{PROJECTION}';"
    ))?;
    project(conn)
}

/// Ends an order's history row: `status`, with `note` in `column` (the tracking id of a
/// completed order, the reason of a cancelled one).
fn close(
    tx: &Transaction<'_>,
    order_id: &OrderId,
    status: &str,
    column: &str,
    note: &str,
    at: Millis,
) -> Result<()> {
    tx.execute(
        &format!(
            "UPDATE order_history SET status = '{status}', {column} = ?2, updated_at = ?3
             WHERE order_id = ?1"
        ),
        params![order_id.as_str(), note, at],
    )?;
    Ok(())
}

fn apply(tx: &Transaction<'_>, recorded: &Recorded<OrderEvent>) -> Result<()> {
    tracing::debug!(kind = recorded.event.kind(), stream = %recorded.stream, "projecting");
    match &recorded.event {
        OrderEvent::OrderPlaced {
            order_id,
            customer,
            lines,
            total,
            at,
            ..
        } => {
            let items: u64 = lines.iter().map(|l| u64::from(l.quantity.get())).sum();
            tx.execute(
                "INSERT INTO order_history (order_id, customer, status, total_minor, currency,
                     item_count, placed_at, updated_at)
                 VALUES (?1, ?2, 'confirmed', ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (order_id) DO NOTHING",
                params![
                    order_id.as_str(),
                    customer.as_str(),
                    to_sql_int(total.minor())?,
                    total.currency().as_str(),
                    to_sql_int(items)?,
                    at
                ],
            )?;
        }
        // The two ends of an order differ only in what they record beside the status.
        OrderEvent::OrderCompleted {
            order_id,
            tracking_id: note,
            at,
        } => close(tx, order_id, "completed", "tracking_id", note, *at)?,
        OrderEvent::OrderCancelled {
            order_id,
            reason: note,
            at,
        } => close(tx, order_id, "cancelled", "reason", note, *at)?,
    }
    Ok(())
}

/// The most recent `limit` orders of `customer`, newest first.
pub fn history(
    conn: &Connection,
    customer: &CustomerId,
    limit: usize,
) -> Result<Vec<OrderSummary>> {
    let mut query = conn.prepare_cached(
        "SELECT order_id, customer, status, total_minor, currency, item_count, tracking_id,
                reason, placed_at, updated_at
         FROM order_history WHERE customer = ?1
         ORDER BY placed_at DESC, order_id DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = query.query_map(params![customer.as_str(), limit], |row| {
        Ok((
            (
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ),
            (
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, i64>(5)?,
            ),
            (
                row.get::<_, Option<String>>(6)?,
                row.get::<_, Option<String>>(7)?,
            ),
            (row.get::<_, i64>(8)?, row.get::<_, i64>(9)?),
        ))
    })?;
    rows.map(|row| {
        let (
            (order_id, customer, status),
            (minor, currency, items),
            (tracking_id, reason),
            (placed_at, updated_at),
        ) = row?;
        let currency: Currency = currency
            .parse()
            .map_err(|e: crate::domain::money::MoneyError| StoreError::Corrupt(e.to_string()))?;
        Ok(OrderSummary {
            order_id,
            customer,
            status,
            total: Money::new(from_sql_int(minor)?, currency)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            item_count: from_sql_int(items)?,
            tracking_id,
            reason,
            placed_at,
            updated_at,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::address::Address;
    use crate::domain::catalog;
    use crate::domain::order::{OrderStatus, Quantity};

    fn db() -> Connection {
        crate::store::memory_db(DATABASE.schemas)
    }

    fn placed(id: &str, customer: &str, at: Millis) -> Order {
        let mut order = Order::draft(
            OrderId::new(id).unwrap(),
            CustomerId::new(customer).unwrap(),
            Address::new("s", "c", "p", "DE").unwrap(),
            Currency::EUR,
        );
        let product = catalog::product("SKU-2").unwrap();
        order
            .add_line(&product, Quantity::try_from(3).unwrap())
            .unwrap();
        order.confirm(at).unwrap();
        order
    }

    /// Two orders instances on one database: one projects while the other is in the middle of
    /// a write. The projection waits for the write and goes on, rather than failing with
    /// "database is locked" when its read snapshot turns stale.
    #[test]
    fn projecting_waits_for_another_instance_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orders.db");
        let _schema = crate::store::Db::open(&path, DATABASE.schemas).unwrap();
        let open = |path: &std::path::Path| {
            let conn = Connection::open(path).unwrap();
            conn.busy_timeout(std::time::Duration::from_secs(5))
                .unwrap();
            conn
        };
        let mut mine = open(&path);
        save_now(&mut mine, &mut placed("ord-1", "alice", 1), 1).unwrap();

        let (writing, started) = std::sync::mpsc::channel();
        let other_path = path.clone();
        let other = std::thread::spawn(move || {
            let mut theirs = open(&other_path);
            let tx = theirs
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            save(&tx, &mut placed("ord-2", "bob", 2), 2).unwrap();
            writing.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            tx.commit().unwrap();
        });
        started.recv().unwrap();
        let applied = project(&mut mine).expect("the projection waits for the other writer");
        other.join().unwrap();
        assert_eq!(applied, 2, "both orders' events, the other's included");
        assert_eq!(project(&mut mine).unwrap(), 0);
    }

    fn save_now(conn: &mut Connection, order: &mut Order, at: Millis) -> Result<()> {
        let tx = conn.transaction()?;
        save(&tx, order, at)?;
        tx.commit()?;
        Ok(())
    }

    /// Alice's order `ord-1`, placed and saved at 10, and the copy loaded back from the store.
    fn saved_and_reloaded(conn: &mut Connection) -> (Order, Order) {
        let mut order = placed("ord-1", "alice", 10);
        save_now(conn, &mut order, 10).unwrap();
        let loaded = load(conn, order.id()).unwrap().unwrap();
        (order, loaded)
    }

    #[test]
    fn orders_round_trip_with_their_events() {
        let mut conn = db();
        let (order, mut loaded) = saved_and_reloaded(&mut conn);
        assert_eq!(loaded, order);
        assert_eq!(loaded.version(), 1);
        loaded.complete("TRK-9".into(), 20).unwrap();
        save_now(&mut conn, &mut loaded, 20).unwrap();
        assert_eq!(
            load(&conn, order.id()).unwrap().unwrap().status(),
            OrderStatus::Completed
        );
        assert_eq!(events::stream_version(&conn, "order-ord-1").unwrap(), 2);
    }

    #[test]
    fn a_stale_order_is_not_saved() {
        let mut conn = db();
        let (order, mut first) = saved_and_reloaded(&mut conn);
        let mut second = first.clone();
        first.complete("TRK".into(), 11).unwrap();
        save_now(&mut conn, &mut first, 11).unwrap();
        second.cancel("late".into(), 12).unwrap();
        assert!(matches!(
            save_now(&mut conn, &mut second, 12),
            Err(StoreError::Concurrency { .. })
        ));
        assert_eq!(
            load(&conn, order.id()).unwrap().unwrap().status(),
            OrderStatus::Completed
        );
    }

    #[test]
    fn the_projection_follows_the_events_and_can_be_rebuilt() {
        let mut conn = db();
        let mut a = placed("ord-a", "alice", 10);
        let mut b = placed("ord-b", "alice", 20);
        let mut c = placed("ord-c", "bob", 30);
        for order in [&mut a, &mut b, &mut c] {
            save_now(&mut conn, order, 1).unwrap();
        }
        assert_eq!(project(&mut conn).unwrap(), 3);
        a.complete("TRK-A".into(), 40).unwrap();
        b.cancel("no stock".into(), 50).unwrap();
        save_now(&mut conn, &mut a, 40).unwrap();
        save_now(&mut conn, &mut b, 50).unwrap();
        assert_eq!(project(&mut conn).unwrap(), 2);
        assert_eq!(project(&mut conn).unwrap(), 0, "caught up");

        let alice = CustomerId::new("alice").unwrap();
        let rows = history(&conn, &alice, 5).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.order_id.as_str()).collect::<Vec<_>>(),
            ["ord-b", "ord-a"]
        );
        assert_eq!(rows[0].status, "cancelled");
        assert_eq!(rows[0].reason.as_deref(), Some("no stock"));
        assert_eq!(rows[1].status, "completed");
        assert_eq!(rows[1].item_count, 3);
        assert_eq!(rows[1].total.minor(), 3 * 799);
        assert_eq!(history(&conn, &alice, 1).unwrap().len(), 1);

        assert_eq!(rebuild(&mut conn).unwrap(), 5);
        assert_eq!(history(&conn, &alice, 5).unwrap(), rows);
    }
}
