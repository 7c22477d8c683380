//! Payments storage: event-sourced accounts (stream `account-<id>`, snapshots every N events)
//! and the charges table, which remembers what was done for each order so charges and refunds
//! are idempotent by order id.
//!
//! A command is read → decide → [`commit`]: the account's new events are appended with the
//! version the decision was based on, and the charge row changes in the same transaction, so a
//! charge is never recorded without its withdrawal (or the other way round).

use crate::domain::account::{Account, AccountEvent};
use crate::domain::ids::{AccountId, OrderId};
use crate::domain::money::Money;
use crate::domain::order::Millis;
use crate::store::events;
use crate::store::{Database, Result, StoreError, from_sql_int, is_unique_violation, to_sql_int};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS charges (
    order_id     TEXT PRIMARY KEY,
    account_id   TEXT,
    amount_minor INTEGER,
    currency     TEXT,
    status       TEXT NOT NULL,
    variant      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
";

/// The payments service's database: accounts' events and snapshots, and the charges.
pub const DATABASE: Database = Database::new("payments", &[events::SCHEMA, SCHEMA]);

pub fn stream(id: &AccountId) -> String {
    format!("account-{id}")
}

/// What payments did for an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChargeStatus {
    /// The money was withdrawn.
    Charged,
    /// The money was withdrawn and given back.
    Refunded,
    /// A refund came before any charge: nothing was taken, and a later charge is refused.
    Voided,
}

impl ChargeStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Charged => "charged",
            Self::Refunded => "refunded",
            Self::Voided => "voided",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Charge {
    pub order_id: OrderId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<AccountId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    pub status: ChargeStatus,
    /// The payments build (`v1`, `v2`) that took the charge or marked it voided.
    pub charged_by: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// New events for an account, decided on the state at `expected` version.
#[derive(Debug, Clone)]
pub struct AccountChange {
    pub expected: u64,
    pub events: Vec<AccountEvent>,
    /// The state after the events, stored as the snapshot when one is due.
    pub after: Account,
}

/// A change to the charges table.
#[derive(Debug, Clone)]
pub enum ChargeChange {
    Insert(Charge),
    SetStatus {
        order_id: OrderId,
        from: ChargeStatus,
        to: ChargeStatus,
        at: Millis,
    },
}

/// The account as its snapshot and later events say, or `None` if it was never opened.
pub fn load_account(conn: &Connection, id: &AccountId) -> Result<Option<Account>> {
    let stream = stream(id);
    let (after, state) = match events::load_snapshot::<Account>(conn, &stream)? {
        Some((version, account)) => (version, Some(account)),
        None => (0, None),
    };
    let tail = events::read_stream::<AccountEvent>(conn, &stream, after)?;
    Account::replay(state, tail.iter().map(|r| &r.event))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The account replayed from its first event, ignoring snapshots (to check them).
pub fn load_account_without_snapshot(conn: &Connection, id: &AccountId) -> Result<Option<Account>> {
    let all = events::read_stream::<AccountEvent>(conn, &stream(id), 0)?;
    Account::replay(None, all.iter().map(|r| &r.event))
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The version of the account's latest snapshot (0 when none).
pub fn snapshot_version(conn: &Connection, id: &AccountId) -> Result<u64> {
    Ok(events::load_snapshot::<serde_json::Value>(conn, &stream(id))?.map_or(0, |(v, _)| v))
}

pub fn load_charge(conn: &Connection, order_id: &OrderId) -> Result<Option<Charge>> {
    type Row = (
        Option<String>,
        Option<i64>,
        Option<String>,
        String,
        String,
        i64,
        i64,
    );
    let row: Option<Row> = conn
        .query_row(
            "SELECT account_id, amount_minor, currency, status, variant, created_at, updated_at
             FROM charges WHERE order_id = ?1",
            [order_id.as_str()],
            |r| r.try_into(),
        )
        .optional()?;
    let Some((account_id, minor, currency, status, charged_by, created_at, updated_at)) = row
    else {
        return Ok(None);
    };
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(e.to_string());
    let status = [
        ChargeStatus::Charged,
        ChargeStatus::Refunded,
        ChargeStatus::Voided,
    ]
    .into_iter()
    .find(|s| s.as_str() == status)
    .ok_or_else(|| corrupt(&format!("charge status {status:?}")))?;
    let amount = match (minor, currency) {
        (Some(minor), Some(currency)) => Some(
            Money::new(
                from_sql_int(minor)?,
                currency.parse().map_err(|e| corrupt(&e))?,
            )
            .map_err(|e| corrupt(&e))?,
        ),
        _ => None,
    };
    Ok(Some(Charge {
        order_id: order_id.clone(),
        account_id: account_id
            .map(AccountId::new)
            .transpose()
            .map_err(|e| corrupt(&e))?,
        amount,
        status,
        charged_by,
        created_at,
        updated_at,
    }))
}

/// Writes a decision in one transaction: the account's events (if the stream is still at the
/// expected version), a snapshot when the new version crosses a multiple of `snapshot_every`,
/// and the charge change. A concurrent writer makes it fail with [`StoreError::Concurrency`].
pub fn commit(
    conn: &mut Connection,
    account: Option<&AccountChange>,
    charge: Option<&ChargeChange>,
    snapshot_every: u64,
    at: Millis,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if let Some(change) = account {
        let stream = stream(change.after.id());
        let version = events::append(&tx, &stream, change.expected, &change.events, at)?;
        if snapshot_every > 0 && version / snapshot_every > change.expected / snapshot_every {
            events::save_snapshot(&tx, &stream, version, &change.after, at)?;
        }
    }
    match charge {
        None => {}
        Some(ChargeChange::Insert(c)) => {
            let inserted = tx.execute(
                "INSERT INTO charges (order_id, account_id, amount_minor, currency, status, variant,
                     created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.order_id.as_str(),
                    c.account_id.as_ref().map(AccountId::as_str),
                    c.amount.map(|m| to_sql_int(m.minor())).transpose()?,
                    c.amount.map(|m| m.currency().to_string()),
                    c.status.as_str(),
                    c.charged_by,
                    c.created_at,
                    c.updated_at
                ],
            );
            match inserted {
                Err(e) if is_unique_violation(&e) => return Err(charge_conflict(&c.order_id)),
                other => {
                    other?;
                }
            }
        }
        Some(ChargeChange::SetStatus {
            order_id,
            from,
            to,
            at,
        }) => {
            let changed = tx.execute(
                "UPDATE charges SET status = ?3, updated_at = ?4 WHERE order_id = ?1 AND status = ?2",
                params![order_id.as_str(), from.as_str(), to.as_str(), at],
            )?;
            if changed != 1 {
                return Err(charge_conflict(order_id));
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// The charge row changed under the writer: the same kind of conflict as a stale stream.
fn charge_conflict(order_id: &OrderId) -> StoreError {
    StoreError::Concurrency {
        stream: format!("charge-{order_id}"),
        expected: 0,
        actual: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Currency;

    fn db() -> Connection {
        crate::store::memory_db(DATABASE.schemas)
    }

    fn eur(minor: u64) -> Money {
        Money::new(minor, Currency::EUR).unwrap()
    }

    /// Decides with `decide` on the stored state and commits, as the command handler does.
    fn act(
        conn: &mut Connection,
        id: &AccountId,
        every: u64,
        decide: impl FnOnce(Option<&Account>) -> AccountEvent,
    ) {
        let before = load_account(conn, id).unwrap();
        let event = decide(before.as_ref());
        let expected = before.as_ref().map_or(0, Account::version);
        let after = Account::evolve(before, &event).unwrap();
        let change = AccountChange {
            expected,
            events: vec![event],
            after,
        };
        commit(conn, Some(&change), None, every, 0).unwrap();
    }

    #[test]
    fn snapshots_every_n_events_and_loading_agrees_with_a_full_replay() {
        let mut conn = db();
        let id = AccountId::new("acct-x").unwrap();
        act(&mut conn, &id, 4, |s| {
            Account::open(s, id.clone(), Currency::EUR, 0).unwrap()
        });
        for i in 1..=9 {
            act(&mut conn, &id, 4, |s| {
                s.unwrap().deposit(eur(i * 10), None, 0).unwrap()
            });
        }
        // 10 events: snapshots were taken at 4 and 8.
        assert_eq!(snapshot_version(&conn, &id).unwrap(), 8);
        let loaded = load_account(&conn, &id).unwrap().unwrap();
        assert_eq!(loaded.version(), 10);
        assert_eq!(loaded.balance(), eur(450));
        assert_eq!(
            Some(loaded),
            load_account_without_snapshot(&conn, &id).unwrap()
        );
    }

    #[test]
    fn charge_rows_conflict_like_streams() {
        let mut conn = db();
        let order = OrderId::new("ord-1").unwrap();
        let voided = Charge {
            order_id: order.clone(),
            account_id: None,
            amount: None,
            status: ChargeStatus::Voided,
            charged_by: "v1".into(),
            created_at: 1,
            updated_at: 1,
        };
        commit(
            &mut conn,
            None,
            Some(&ChargeChange::Insert(voided.clone())),
            10,
            1,
        )
        .unwrap();
        assert_eq!(load_charge(&conn, &order).unwrap(), Some(voided.clone()));
        assert!(matches!(
            commit(&mut conn, None, Some(&ChargeChange::Insert(voided)), 10, 1),
            Err(StoreError::Concurrency { .. })
        ));
        let refund = ChargeChange::SetStatus {
            order_id: order,
            from: ChargeStatus::Charged,
            to: ChargeStatus::Refunded,
            at: 2,
        };
        assert!(matches!(
            commit(&mut conn, None, Some(&refund), 10, 2),
            Err(StoreError::Concurrency { .. })
        ));
    }
}
