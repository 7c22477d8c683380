//! The event store: append-only streams of domain events with optimistic concurrency, a global
//! order for projections, and snapshots.
//!
//! - Each aggregate has a stream (`order-ord-1`, `account-acct-alice`); an event's `version` is
//!   its 1-based place in the stream, its `position` its place in the whole store.
//! - [`append`] takes the version the writer based its decision on (the *expected version*) and
//!   fails with [`StoreError::Concurrency`] if the stream has moved on: the writer decided on
//!   stale state and must reload and decide again. `UNIQUE (stream, version)` backs the check,
//!   so two writers cannot both win even over separate connections.
//! - [`read_category`] reads every stream of one kind in position order: what a projection
//!   follows, remembering the last position it applied.
//! - Snapshots hold an aggregate's state at a version, so loading reads the snapshot and only
//!   the events after it.

use crate::domain::DomainEvent;
use crate::domain::order::Millis;
use crate::store::{Result, StoreError, from_sql_int, is_unique_violation, to_sql_int};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    stream      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    data        TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream, version)
);
CREATE TABLE IF NOT EXISTS snapshots (
    stream   TEXT PRIMARY KEY,
    version  INTEGER NOT NULL,
    state    TEXT NOT NULL,
    taken_at INTEGER NOT NULL
);
";

/// An event as stored, with its place in the stream and in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded<E> {
    pub position: i64,
    pub stream: String,
    pub version: u64,
    pub recorded_at: Millis,
    pub event: E,
}

/// How many events `stream` holds (0 for a stream that does not exist).
pub fn stream_version(conn: &Connection, stream: &str) -> Result<u64> {
    let version: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?1",
        [stream],
        |row| row.get(0),
    )?;
    from_sql_int(version)
}

/// Appends `events` to `stream` if it holds exactly `expected` events. Returns the new version.
pub fn append<E: DomainEvent>(
    tx: &Transaction<'_>,
    stream: &str,
    expected: u64,
    events: &[E],
    at: Millis,
) -> Result<u64> {
    let actual = stream_version(tx, stream)?;
    let conflict = |actual| StoreError::Concurrency {
        stream: stream.to_owned(),
        expected,
        actual,
    };
    if actual != expected {
        return Err(conflict(actual));
    }
    let mut insert = tx.prepare_cached(
        "INSERT INTO events (stream, version, kind, data, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut version = expected;
    for event in events {
        version += 1;
        let data = serde_json::to_string(event)?;
        insert
            .execute(params![
                stream,
                to_sql_int(version)?,
                event.kind(),
                data,
                at
            ])
            .map_err(|e| {
                if is_unique_violation(&e) {
                    conflict(version)
                } else {
                    e.into()
                }
            })?;
    }
    Ok(version)
}

/// The events of `stream` after version `after`, oldest first.
pub fn read_stream<E: DomainEvent>(
    conn: &Connection,
    stream: &str,
    after: u64,
) -> Result<Vec<Recorded<E>>> {
    let mut query = conn.prepare_cached(
        "SELECT position, stream, version, recorded_at, data FROM events
         WHERE stream = ?1 AND version > ?2 ORDER BY version",
    )?;
    let rows = query.query_map(params![stream, to_sql_int(after)?], raw_row)?;
    rows.map(|row| decode(row?)).collect()
}

/// Up to `limit` events of the streams whose names start with `prefix`, after store position
/// `after`, in position order.
pub fn read_category<E: DomainEvent>(
    conn: &Connection,
    prefix: &str,
    after: i64,
    limit: usize,
) -> Result<Vec<Recorded<E>>> {
    let mut query = conn.prepare_cached(
        "SELECT position, stream, version, recorded_at, data FROM events
         WHERE position > ?1 AND substr(stream, 1, length(?2)) = ?2
         ORDER BY position LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = query.query_map(params![after, prefix, limit], raw_row)?;
    rows.map(|row| decode(row?)).collect()
}

/// Stores `state` as the snapshot of `stream` at `version`, replacing an older one.
pub fn save_snapshot<S: Serialize>(
    tx: &Transaction<'_>,
    stream: &str,
    version: u64,
    state: &S,
    at: Millis,
) -> Result<()> {
    tx.execute(
        "INSERT INTO snapshots (stream, version, state, taken_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (stream) DO UPDATE SET version = ?2, state = ?3, taken_at = ?4
         WHERE excluded.version > snapshots.version",
        params![
            stream,
            to_sql_int(version)?,
            serde_json::to_string(state)?,
            at
        ],
    )?;
    Ok(())
}

/// The latest snapshot of `stream` and its version.
pub fn load_snapshot<S: DeserializeOwned>(
    conn: &Connection,
    stream: &str,
) -> Result<Option<(u64, S)>> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT version, state FROM snapshots WHERE stream = ?1",
            [stream],
            |row| row.try_into(),
        )
        .optional()?;
    row.map(|(version, state)| Ok((from_sql_int(version)?, serde_json::from_str(&state)?)))
        .transpose()
}

type RawRow = (i64, String, i64, i64, String);

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    row.try_into()
}

fn decode<E: DomainEvent>(
    (position, stream, version, recorded_at, data): RawRow,
) -> Result<Recorded<E>> {
    Ok(Recorded {
        position,
        stream,
        version: from_sql_int(version)?,
        recorded_at,
        event: serde_json::from_str(&data)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::AccountEvent;
    use crate::domain::ids::AccountId;
    use crate::domain::money::{Currency, Money};
    use crate::store::Db;
    use rusqlite::TransactionBehavior;
    use tempfile::TempDir;

    fn deposit(minor: u64) -> AccountEvent {
        AccountEvent::MoneyDeposited {
            amount: Money::new(minor, Currency::EUR).unwrap(),
            order_id: None,
            at: 0,
        }
    }

    fn append_in_tx(
        conn: &mut Connection,
        stream: &str,
        expected: u64,
        events: &[AccountEvent],
    ) -> Result<u64> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version = append(&tx, stream, expected, events, 1)?;
        tx.commit()?;
        Ok(version)
    }

    #[test]
    fn append_checks_the_expected_version() {
        let mut conn = crate::store::memory_db(&[SCHEMA]);
        let open = AccountEvent::AccountOpened {
            account_id: AccountId::new("a").unwrap(),
            currency: Currency::EUR,
            at: 0,
        };
        assert_eq!(
            append_in_tx(&mut conn, "account-a", 0, &[open, deposit(1)]).unwrap(),
            2
        );
        // A writer that read the stream at version 1 decided on stale state.
        let stale = append_in_tx(&mut conn, "account-a", 1, &[deposit(2)]);
        assert!(matches!(
            stale,
            Err(StoreError::Concurrency {
                expected: 1,
                actual: 2,
                ..
            })
        ));
        assert_eq!(
            append_in_tx(&mut conn, "account-a", 2, &[deposit(3)]).unwrap(),
            3
        );
        let events: Vec<Recorded<AccountEvent>> = read_stream(&conn, "account-a", 1).unwrap();
        assert_eq!(events.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(events[1].event, deposit(3));
    }

    #[test]
    fn two_connections_cannot_both_win() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("events.db");
        let _db = Db::open(&path, &[SCHEMA]).unwrap();
        let mut first = Connection::open(&path).unwrap();
        let mut second = Connection::open(&path).unwrap();
        second
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        append_in_tx(&mut first, "s", 0, &[deposit(1)]).unwrap();
        // Both read version 1; the first to append wins, the other gets a concurrency error.
        append_in_tx(&mut first, "s", 1, &[deposit(2)]).unwrap();
        assert!(matches!(
            append_in_tx(&mut second, "s", 1, &[deposit(3)]),
            Err(StoreError::Concurrency { .. })
        ));
    }

    #[test]
    fn categories_read_in_store_order_and_snapshots_replace_older_ones() {
        let mut conn = crate::store::memory_db(&[SCHEMA]);
        append_in_tx(&mut conn, "account-b", 0, &[deposit(1)]).unwrap();
        append_in_tx(&mut conn, "other-x", 0, &[deposit(2)]).unwrap();
        append_in_tx(&mut conn, "account-a", 0, &[deposit(3)]).unwrap();
        let all: Vec<Recorded<AccountEvent>> = read_category(&conn, "account-", 0, 10).unwrap();
        assert_eq!(
            all.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
            ["account-b", "account-a"]
        );
        let after_first: Vec<Recorded<AccountEvent>> =
            read_category(&conn, "account-", all[0].position, 10).unwrap();
        assert_eq!(after_first.len(), 1);

        let tx = conn.transaction().unwrap();
        save_snapshot(&tx, "account-a", 5, &"five", 0).unwrap();
        save_snapshot(&tx, "account-a", 3, &"three", 0).unwrap(); // older: ignored
        tx.commit().unwrap();
        let snapshot: Option<(u64, String)> = load_snapshot(&conn, "account-a").unwrap();
        assert_eq!(snapshot, Some((5, "five".to_owned())));
    }
}
