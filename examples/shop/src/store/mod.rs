//! Storage: one embedded SQLite database per service (`DIR/<service>.db`).
//!
//! [`Db`] owns the connection and opens a service's [`Database`]; the modules below are plain
//! functions over a `Connection` or a `Transaction`, so a command that must change two tables
//! atomically (an order and its events, a charge and the account's stream) composes them inside
//! one transaction. A record kept per order (a reservation, a shipment) is described once as a
//! `PerOrder`, which reads it back before commit and ends it once.
//!
//! SQLite calls block, so [`Db::run`] moves them to tokio's blocking pool; one connection behind
//! a mutex is plenty for a demo service and keeps writes serialised.

pub mod events;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod sagas;
pub mod shipping;

use crate::domain::ids::OrderId;
use crate::domain::order::Millis;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `From<rusqlite::Error>` for the refusal types of commands that run SQL themselves, through
/// their `Store` variant, so that `?` works on SQLite calls: the same impl for every such type,
/// so written once.
macro_rules! store_failure_from_sqlite {
    ($($refusal:ty),+ $(,)?) => {$(
        impl From<rusqlite::Error> for $refusal {
            fn from(e: rusqlite::Error) -> Self {
                Self::Store(e.into())
            }
        }
    )+};
}

store_failure_from_sqlite!(inventory::InventoryError, shipping::ShippingError);

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Optimistic concurrency: someone appended to the stream since it was read.
    #[error("stream {stream} is at version {actual}, the writer expected {expected}")]
    Concurrency {
        stream: String,
        expected: u64,
        actual: u64,
    },
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the database task failed: {0}")]
    Task(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What an idempotent operation did: the work, or nothing because it was done before (and the
/// answer is what the first call answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Applied,
    AlreadyDone,
}

/// What a service keeps in its database: the file (`<name>.db` in its data folder) and the
/// schemas (idempotent DDL) applied when it opens. Each store module that is a service's
/// database declares its `DATABASE` once, so the service, its tests and a second instance
/// opening the same file cannot disagree on the tables.
#[derive(Debug, Clone, Copy)]
pub struct Database {
    pub name: &'static str,
    pub schemas: &'static [&'static str],
}

impl Database {
    pub const fn new(name: &'static str, schemas: &'static [&'static str]) -> Self {
        Self { name, schemas }
    }
}

/// A service's database.
#[derive(Clone)]
pub struct Db {
    /// One connection: SQLite serialises writers anyway, and a mutex makes that explicit.
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) `database` in `dir` and applies its schemas.
    pub fn open_in(dir: &Path, database: Database) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Self::open(&dir.join(format!("{}.db", database.name)), database.schemas)
    }

    pub fn open(path: &Path, schemas: &[&str]) -> Result<Self> {
        let conn = Connection::open(path)?;
        // Another connection — payments v1 and v2 share one database, as two versions of one
        // Deployment would — makes this one wait instead of failing. Set first: switching to
        // WAL needs the lock too.
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL: readers do not block the writer; NORMAL sync is durable across a process crash
        // (what the demo kills), which is the failure the saga recovery is about.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        for schema in schemas {
            conn.execute_batch(schema)?;
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in tokio's blocking pool.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| E::from(StoreError::Task(e.to_string())))?
    }
}

/// The wall clock in milliseconds since the Unix epoch, for timestamps in stored rows and
/// events. (Durations use tokio's clock; this is only ever a label.)
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SQLite keeps integers signed; every count and amount the shop stores fits.
pub(crate) fn to_sql_int(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{n} does not fit in SQLite")))
}

pub(crate) fn from_sql_int(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n} stored")))
}

/// The JSON `state` column of the row of `table` whose `order_id` is `order_id`: orders and sagas
/// are stored whole, as their domain types serialize.
pub(crate) fn load_state<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    table: &str,
    order_id: &str,
) -> Result<Option<T>> {
    let state: Option<String> = conn
        .query_row(
            &format!("SELECT state FROM {table} WHERE order_id = ?1"),
            [order_id],
            |row| row.get(0),
        )
        .optional()?;
    Ok(state.map(|s| serde_json::from_str(&s)).transpose()?)
}

/// A record kept per order, one row per order id in `table` with its `status` (a reservation,
/// a shipment): `what` names it in errors, `load` reads it.
pub(crate) struct PerOrder<T> {
    table: &'static str,
    what: &'static str,
    load: fn(&Connection, &OrderId) -> Result<Option<T>>,
}

impl<T> PerOrder<T> {
    pub(crate) const fn new(
        table: &'static str,
        what: &'static str,
        load: fn(&Connection, &OrderId) -> Result<Option<T>>,
    ) -> Self {
        Self { table, what, load }
    }

    /// Reads back what a command wrote in `tx` for `order_id`, then commits: the answer is what
    /// is stored, not what the command meant to store.
    pub(crate) fn commit_and_load(&self, tx: Transaction<'_>, order_id: &OrderId) -> Result<T> {
        let what = self.what;
        let stored = (self.load)(&tx, order_id)?
            .ok_or_else(|| StoreError::Corrupt(format!("{what} vanished")))?;
        tx.commit()?;
        Ok(stored)
    }

    /// The idempotent end of the record of `order_id` (a reservation released, a shipment
    /// cancelled), `ended` telling whether a stored one has ended. Nothing when it has ended
    /// already; when it is under way, `undo` (what it held) and then its status becomes
    /// `status`; when it was never started, a record inserted already ended, so that a start
    /// arriving late is refused. Answers the record as stored.
    pub(crate) fn end_once(
        &self,
        conn: &mut Connection,
        (order_id, status): (&OrderId, &str),
        ended: impl FnOnce(&T) -> bool,
        undo: impl FnOnce(&Transaction<'_>, &T) -> Result<()>,
        at: Millis,
    ) -> Result<(T, Effect)> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let table = self.table;
        let sql = match (self.load)(&tx, order_id)? {
            Some(existing) if ended(&existing) => None,
            Some(existing) => {
                undo(&tx, &existing)?;
                Some(format!(
                    "UPDATE {table} SET status = '{status}', updated_at = ?2 WHERE order_id = ?1"
                ))
            }
            None => Some(format!(
                "INSERT INTO {table} (order_id, status, created_at, updated_at)
                 VALUES (?1, '{status}', ?2, ?2)"
            )),
        };
        let effect = match sql {
            None => Effect::AlreadyDone,
            Some(sql) => {
                tx.execute(&sql, rusqlite::params![order_id.as_str(), at])?;
                Effect::Applied
            }
        };
        Ok((self.commit_and_load(tx, order_id)?, effect))
    }
}

/// True when `e` is a UNIQUE or PRIMARY KEY violation: someone else inserted first.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

/// A database in memory with `schemas`, for the store's unit tests.
#[cfg(test)]
pub(crate) fn memory_db(schemas: &[&str]) -> Connection {
    let conn = Connection::open_in_memory().expect("an in-memory database opens");
    for schema in schemas {
        conn.execute_batch(schema).expect("the schema applies");
    }
    conn
}
