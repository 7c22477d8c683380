//! Saga state, one row per order, written after every transition. The whole state is JSON in
//! `state`; `status` is a column of its own so recovery finds the unfinished ones by index.

use crate::domain::ids::OrderId;
use crate::domain::saga::{Saga, SagaStatus};
use crate::store::Result;
use rusqlite::{Connection, params};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sagas (
    order_id   TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_by_status ON sagas (status, created_at);
";

/// Stores a new saga; fails with a UNIQUE violation if the order already has one.
pub fn insert(conn: &Connection, saga: &Saga) -> Result<()> {
    conn.execute(
        "INSERT INTO sagas (order_id, status, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            saga.order_id.as_str(),
            saga.status().as_str(),
            serde_json::to_string(saga)?,
            saga.created_at,
            saga.updated_at
        ],
    )?;
    Ok(())
}

pub fn update(conn: &Connection, saga: &Saga) -> Result<()> {
    conn.execute(
        "UPDATE sagas SET status = ?2, state = ?3, updated_at = ?4 WHERE order_id = ?1",
        params![
            saga.order_id.as_str(),
            saga.status().as_str(),
            serde_json::to_string(saga)?,
            saga.updated_at
        ],
    )?;
    Ok(())
}

pub fn load(conn: &Connection, order_id: &OrderId) -> Result<Option<Saga>> {
    crate::store::load_state(conn, "sagas", order_id.as_str())
}

/// Sagas with `status` (all when `None`), newest first, at most `limit`.
pub fn list(conn: &Connection, status: Option<SagaStatus>, limit: usize) -> Result<Vec<Saga>> {
    let mut query = conn.prepare_cached(
        "SELECT state FROM sagas WHERE ?1 IS NULL OR status = ?1
         ORDER BY created_at DESC, order_id DESC LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = query.query_map(params![status.map(SagaStatus::as_str), limit], |row| {
        row.get::<_, String>(0)
    })?;
    rows.map(|state| Ok(serde_json::from_str(&state?)?))
        .collect()
}

/// How many sagas are in each status (every status, zero included), uncapped: the demo's report
/// compares these with what the callers saw, so a list capped at a page would undercount.
pub fn count_by_status(conn: &Connection) -> Result<Vec<(SagaStatus, u64)>> {
    let mut query = conn.prepare_cached("SELECT status, COUNT(*) FROM sagas GROUP BY status")?;
    let rows = query.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
    })?;
    let mut counts: Vec<(SagaStatus, u64)> = SagaStatus::ALL.iter().map(|s| (*s, 0)).collect();
    for row in rows {
        let (status, n) = row?;
        if let Some(slot) = counts.iter_mut().find(|(s, _)| s.as_str() == status) {
            slot.1 = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(counts)
}

/// Every saga not in a terminal state and not written since `untouched_since` (milliseconds
/// since the epoch), oldest first: what recovery drives to an end.
pub fn unfinished(conn: &Connection, untouched_since: i64) -> Result<Vec<Saga>> {
    let mut query = conn.prepare_cached(
        "SELECT state FROM sagas WHERE status IN ('running', 'compensating') AND updated_at <= ?1
         ORDER BY created_at, order_id",
    )?;
    let rows = query.query_map([untouched_since], |row| row.get::<_, String>(0))?;
    rows.map(|state| Ok(serde_json::from_str(&state?)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{AccountId, CustomerId};
    use crate::store::is_unique_violation;

    fn saga(id: &str, at: i64) -> Saga {
        Saga::begin(
            OrderId::new(id).unwrap(),
            CustomerId::new("alice").unwrap(),
            AccountId::new("acct-alice").unwrap(),
            "{}".into(),
            at,
        )
    }

    #[test]
    fn sagas_persist_and_are_found_by_status() {
        let conn = crate::store::memory_db(&[SCHEMA]);
        let mut a = saga("a", 1);
        let b = saga("b", 2);
        insert(&conn, &a).unwrap();
        insert(&conn, &b).unwrap();
        match insert(&conn, &a) {
            Err(crate::store::StoreError::Sqlite(e)) => assert!(is_unique_violation(&e)),
            other => panic!("expected a unique violation, got {other:?}"),
        }
        a.step_failed("boom".into(), true, 3);
        a.step_undone(4);
        update(&conn, &a).unwrap();
        assert_eq!(load(&conn, &a.order_id).unwrap(), Some(a.clone()));
        assert_eq!(unfinished(&conn, i64::MAX).unwrap().len(), 2);
        // `a` was written at 4: a driver may still be at it.
        assert_eq!(unfinished(&conn, 3).unwrap(), std::slice::from_ref(&b));
        a.step_undone(6);
        update(&conn, &a).unwrap();
        assert_eq!(
            unfinished(&conn, i64::MAX).unwrap(),
            std::slice::from_ref(&b)
        );
        assert_eq!(
            list(&conn, Some(SagaStatus::Compensated), 10).unwrap(),
            [a.clone()]
        );
        assert_eq!(list(&conn, None, 10).unwrap(), [b, a]);
    }

    #[test]
    fn counts_are_not_capped_by_a_page() {
        let conn = crate::store::memory_db(&[SCHEMA]);
        for i in 0..1500 {
            insert(&conn, &saga(&format!("o{i}"), i)).unwrap();
        }
        let mut done = saga("done", 9999);
        done.step_failed("boom".into(), true, 10_000);
        done.step_undone(10_001);
        done.step_undone(10_002);
        insert(&conn, &done).unwrap();
        let counts = count_by_status(&conn).unwrap();
        let of = |status| counts.iter().find(|(s, _)| *s == status).unwrap().1;
        assert_eq!(of(SagaStatus::Running), 1500);
        assert_eq!(of(SagaStatus::Compensated), 1);
        assert_eq!(of(SagaStatus::Completed), 0);
        assert_eq!(counts.len(), SagaStatus::ALL.len());
    }
}
