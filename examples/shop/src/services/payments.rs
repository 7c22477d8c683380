//! The payments service: event-sourced accounts and charges idempotent by order id.
//!
//! [`Ledger`] is the command handler. Each command reads the account (snapshot + newer events)
//! and the order's charge row, decides with the [`Account`] aggregate, and commits the events
//! with the version it read. If another request appended in between, the commit fails with a
//! concurrency error and the handler reads and decides again — a few times, then gives up with
//! 503 so the caller (or the mesh) retries later.
//!
//! `--variant v2` is the canary build: the same rules, told apart by the `x-payments-variant`
//! header on every answer, a `variant` field in JSON answers, and `chargedBy` on charges.

use crate::Error;
use crate::domain::account::{Account, AccountError, AccountEvent, AccountStatus};
use crate::domain::ids::{AccountId, CustomerId, OrderId};
use crate::domain::money::{Currency, Money, MoneyError};
use crate::faults::Faults;
use crate::http::{self, ApiError, Request, Response, Routes, Server};
use crate::services::{CUSTOMERS, created_or_ok, order_id_param};
use crate::store::payments::{self, AccountChange, Charge, ChargeChange, ChargeStatus};
use crate::store::{Db, Effect, StoreError, now_ms};
use ::http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The header naming the build that answered.
pub const VARIANT_HEADER: &str = "x-payments-variant";

/// Events between snapshots unless configured otherwise.
pub const SNAPSHOT_EVERY: u64 = 10;

/// What each demo customer's account holds at first start: 10 000 000.00 EUR, so no demo or
/// load test runs out of money.
pub const SEED_BALANCE_MINOR: u64 = 1_000_000_000;

/// How many times a command is decided at most when it keeps losing races to other writers.
const MAX_ATTEMPTS: u32 = 10;

/// Which build of payments this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Variant {
    #[default]
    V1,
    /// The canary.
    V2,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `payments.db`.
    pub data_dir: PathBuf,
    pub variant: Variant,
    /// A snapshot of an account is stored every this many events (0: never).
    pub snapshot_every: u64,
}

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let db = Db::open_in(&config.data_dir, payments::DATABASE)?;
    let ledger = Ledger::new(db, config.snapshot_every, config.variant);
    ledger.seed().await?;
    let mut stamp = HeaderMap::new();
    stamp.insert(
        VARIANT_HEADER,
        HeaderValue::from_static(config.variant.as_str()),
    );
    let routes = Arc::new(Payments { ledger });
    Ok(http::serve(listener, routes, Faults::default(), stamp)?)
}

/// Why a payments command is refused.
#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("no account {0}")]
    UnknownAccount(AccountId),
    #[error("order {0} was already charged with another account or amount")]
    ChargeConflict(OrderId),
    #[error("the charge of order {0} was refunded or voided; it cannot be charged again")]
    Refunded(OrderId),
    #[error("gave up after {MAX_ATTEMPTS} attempts lost to concurrent writers")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PaymentError> for ApiError {
    fn from(e: PaymentError) -> Self {
        let message = e.to_string();
        match e {
            PaymentError::Account(AccountError::InsufficientFunds { .. }) => {
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient-funds", message)
            }
            PaymentError::Account(AccountError::Closed(_)) => {
                ApiError::conflict("account-closed", message)
            }
            PaymentError::Account(AccountError::AlreadyOpen(_)) => {
                ApiError::conflict("account-exists", message)
            }
            PaymentError::Account(AccountError::Money(MoneyError::CurrencyMismatch { .. })) => {
                ApiError::unprocessable("currency-mismatch", message)
            }
            PaymentError::Account(AccountError::Corrupt(_)) => ApiError::internal(message),
            PaymentError::Account(_) => ApiError::unprocessable("invalid-amount", message),
            PaymentError::UnknownAccount(_) => ApiError::not_found(message),
            PaymentError::ChargeConflict(_) => ApiError::conflict("charge-conflict", message),
            PaymentError::Refunded(_) => ApiError::conflict("charge-refunded", message),
            PaymentError::Contention => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "contention", message)
            }
            PaymentError::Store(e) => e.into(),
        }
    }
}

/// What a command reads before deciding.
#[derive(Debug, Default)]
pub struct Loaded {
    pub account: Option<Account>,
    pub charge: Option<Charge>,
}

/// What a command decided.
#[derive(Debug)]
// Lives for one command and is moved once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Decision<T> {
    /// Nothing to write (already done, or only a read): answer with this.
    Done(T),
    /// Write these changes in one transaction, then answer.
    Write {
        account: Option<AccountChange>,
        charge: Option<ChargeChange>,
        answer: T,
    },
}

/// The command handler over the account streams and the charges table.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Db,
    snapshot_every: u64,
    variant: Variant,
}

/// New events on top of `before` (nothing, for a new account), with the state they lead to.
fn change(
    before: Option<&Account>,
    events: Vec<AccountEvent>,
) -> Result<AccountChange, PaymentError> {
    let after = Account::replay(before.cloned(), &events)?
        .ok_or_else(|| AccountError::Corrupt("no events to apply".into()))?;
    Ok(AccountChange {
        expected: before.map_or(0, Account::version),
        events,
        after,
    })
}

impl Ledger {
    pub fn new(db: Db, snapshot_every: u64, variant: Variant) -> Self {
        Self {
            db,
            snapshot_every,
            variant,
        }
    }

    /// Read → decide → commit, deciding again when a concurrent writer got there first.
    pub async fn execute<T, F>(
        &self,
        account_id: Option<AccountId>,
        order_id: Option<OrderId>,
        decide: F,
    ) -> Result<T, PaymentError>
    where
        F: Fn(&Loaded) -> Result<Decision<T>, PaymentError> + Send + Sync,
        T: Send,
    {
        for attempt in 1..=MAX_ATTEMPTS {
            let (account_id, order_id) = (account_id.clone(), order_id.clone());
            let loaded = self
                .db
                .run(move |conn| {
                    let charge = match &order_id {
                        Some(order) => payments::load_charge(conn, order)?,
                        None => None,
                    };
                    let account_id =
                        account_id.or_else(|| charge.as_ref().and_then(|c| c.account_id.clone()));
                    let account = match &account_id {
                        Some(id) => payments::load_account(conn, id)?,
                        None => None,
                    };
                    Ok::<_, StoreError>(Loaded { account, charge })
                })
                .await?;
            let (account, charge, answer) = match decide(&loaded)? {
                Decision::Done(answer) => return Ok(answer),
                Decision::Write {
                    account,
                    charge,
                    answer,
                } => (account, charge, answer),
            };
            let every = self.snapshot_every;
            let committed = self
                .db
                .run(move |conn| {
                    payments::commit(conn, account.as_ref(), charge.as_ref(), every, now_ms())
                })
                .await;
            match committed {
                Ok(()) => return Ok(answer),
                Err(StoreError::Concurrency { stream, .. }) => {
                    tracing::info!(
                        attempt, %stream,
                        "lost a race to another writer; deciding again"
                    );
                    // A little jitter so the losers of one race do not all collide again.
                    let pause = fastrand::u64(1..=5) * u64::from(attempt);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(PaymentError::Contention)
    }

    /// Opens `id` (with an optional first deposit, in the same append). Opening an open account
    /// in the same currency again changes nothing.
    pub async fn open(
        &self,
        id: AccountId,
        currency: Currency,
        initial: Option<Money>,
    ) -> Result<(Account, Effect), PaymentError> {
        self.execute(Some(id.clone()), None, |loaded| match &loaded.account {
            Some(account) if account.currency() == currency => {
                Ok(Decision::Done((account.clone(), Effect::AlreadyDone)))
            }
            Some(account) => Err(AccountError::AlreadyOpen(account.id().clone()).into()),
            None => {
                let at = now_ms();
                let mut events = vec![Account::open(None, id.clone(), currency, at)?];
                if let Some(amount) = initial {
                    let opened = change(None, events.clone())?.after;
                    events.push(opened.deposit(amount, None, at)?);
                }
                let change = change(None, events)?;
                Ok(Decision::Write {
                    answer: (change.after.clone(), Effect::Applied),
                    account: Some(change),
                    charge: None,
                })
            }
        })
        .await
    }

    pub async fn deposit(&self, id: AccountId, amount: Money) -> Result<Account, PaymentError> {
        self.execute(Some(id.clone()), None, |loaded| {
            let account = loaded
                .account
                .as_ref()
                .ok_or_else(|| PaymentError::UnknownAccount(id.clone()))?;
            let change = change(
                Some(account),
                vec![account.deposit(amount, None, now_ms())?],
            )?;
            Ok(Decision::Write {
                answer: change.after.clone(),
                account: Some(change),
                charge: None,
            })
        })
        .await
    }

    /// Withdraws `amount` for `order_id`, once: the same charge again answers what was done.
    pub async fn charge(
        &self,
        order_id: OrderId,
        account_id: AccountId,
        amount: Money,
    ) -> Result<(Charge, Effect), PaymentError> {
        self.execute(Some(account_id.clone()), Some(order_id.clone()), |loaded| {
            match &loaded.charge {
                Some(c) if c.status == ChargeStatus::Charged => {
                    return if c.account_id.as_ref() == Some(&account_id) && c.amount == Some(amount)
                    {
                        Ok(Decision::Done((c.clone(), Effect::AlreadyDone)))
                    } else {
                        Err(PaymentError::ChargeConflict(order_id.clone()))
                    };
                }
                Some(_) => return Err(PaymentError::Refunded(order_id.clone())),
                None => {}
            }
            let account = loaded
                .account
                .as_ref()
                .ok_or_else(|| PaymentError::UnknownAccount(account_id.clone()))?;
            let at = now_ms();
            let change = change(
                Some(account),
                vec![account.withdraw(amount, Some(order_id.clone()), at)?],
            )?;
            let charge = Charge {
                order_id: order_id.clone(),
                account_id: Some(account_id.clone()),
                amount: Some(amount),
                status: ChargeStatus::Charged,
                charged_by: self.variant.as_str().to_owned(),
                created_at: at,
                updated_at: at,
            };
            Ok(Decision::Write {
                account: Some(change),
                charge: Some(ChargeChange::Insert(charge.clone())),
                answer: (charge, Effect::Applied),
            })
        })
        .await
    }

    /// Gives the charge of `order_id` back, once. With no charge yet, marks the order voided so
    /// a charge arriving after its refund is refused.
    pub async fn refund(&self, order_id: OrderId) -> Result<(Charge, Effect), PaymentError> {
        self.execute(None, Some(order_id.clone()), |loaded| {
            let at = now_ms();
            let Some(charge) = &loaded.charge else {
                let voided = Charge {
                    order_id: order_id.clone(),
                    account_id: None,
                    amount: None,
                    status: ChargeStatus::Voided,
                    charged_by: self.variant.as_str().to_owned(),
                    created_at: at,
                    updated_at: at,
                };
                return Ok(Decision::Write {
                    account: None,
                    charge: Some(ChargeChange::Insert(voided.clone())),
                    answer: (voided, Effect::Applied),
                });
            };
            if charge.status != ChargeStatus::Charged {
                return Ok(Decision::Done((charge.clone(), Effect::AlreadyDone)));
            }
            let corrupt =
                || StoreError::Corrupt(format!("charge of {order_id} lacks its account or amount"));
            let amount = charge.amount.ok_or_else(corrupt)?;
            let account = loaded.account.as_ref().ok_or_else(corrupt)?;
            let change = change(
                Some(account),
                vec![account.deposit(amount, Some(order_id.clone()), at)?],
            )?;
            Ok(Decision::Write {
                account: Some(change),
                charge: Some(ChargeChange::SetStatus {
                    order_id: order_id.clone(),
                    from: ChargeStatus::Charged,
                    to: ChargeStatus::Refunded,
                    at,
                }),
                answer: (
                    Charge {
                        status: ChargeStatus::Refunded,
                        updated_at: at,
                        ..charge.clone()
                    },
                    Effect::Applied,
                ),
            })
        })
        .await
    }

    pub async fn account(&self, id: AccountId) -> Result<Option<AccountView>, PaymentError> {
        let view = self
            .db
            .run(move |conn| {
                let Some(account) = payments::load_account(conn, &id)? else {
                    return Ok::<_, StoreError>(None);
                };
                let snapshot_version = payments::snapshot_version(conn, &id)?;
                Ok(Some(AccountView::new(&account, Some(snapshot_version))))
            })
            .await?;
        Ok(view)
    }

    pub async fn charge_of(&self, order_id: OrderId) -> Result<Option<Charge>, PaymentError> {
        Ok(self
            .db
            .run(move |conn| payments::load_charge(conn, &order_id))
            .await?)
    }

    /// Opens and funds the demo customers' accounts at first start.
    pub async fn seed(&self) -> Result<(), PaymentError> {
        for customer in CUSTOMERS {
            let account = CustomerId::new(customer.id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?
                .account();
            let funds =
                Money::new(SEED_BALANCE_MINOR, Currency::EUR).map_err(AccountError::from)?;
            let (_, effect) = self
                .open(account.clone(), Currency::EUR, Some(funds))
                .await?;
            if effect == Effect::Applied {
                tracing::info!(%account, %funds, "opened and funded a demo account");
            }
        }
        Ok(())
    }
}

/// An account as answers show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub account_id: AccountId,
    pub currency: Currency,
    pub balance: Money,
    pub status: AccountStatus,
    pub version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_version: Option<u64>,
}

impl AccountView {
    fn new(account: &Account, snapshot_version: Option<u64>) -> Self {
        Self {
            account_id: account.id().clone(),
            currency: account.currency(),
            balance: account.balance(),
            status: account.status(),
            version: account.version(),
            snapshot_version,
        }
    }
}

#[derive(Debug)]
struct Payments {
    ledger: Ledger,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenBody {
    account_id: AccountId,
    currency: Currency,
}

#[derive(Deserialize)]
struct DepositBody {
    amount: Money,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChargeBody {
    order_id: OrderId,
    account_id: AccountId,
    amount: Money,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundBody {
    order_id: OrderId,
}

impl Payments {
    /// A JSON answer with this build's `variant` added to objects.
    fn answer<T: Serialize>(&self, status: StatusCode, value: &T) -> Result<Response, ApiError> {
        let mut json =
            serde_json::to_value(value).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(object) = json.as_object_mut() {
            object.insert("variant".into(), self.ledger.variant.as_str().into());
        }
        Ok(http::json(status, &json))
    }
}

impl Routes for Payments {
    async fn route(&self, key: (&str, &[&str]), request: Request) -> Result<Response, ApiError> {
        let ledger = &self.ledger;
        match key {
            ("POST", ["accounts"]) => {
                let body: OpenBody = http::read_json(request).await?;
                let (account, effect) = ledger.open(body.account_id, body.currency, None).await?;
                self.answer(created_or_ok(effect), &AccountView::new(&account, None))
            }
            ("POST", ["accounts", id, "deposits"]) => {
                let id = AccountId::new(*id).map_err(|e| ApiError::bad_request(e.to_string()))?;
                let body: DepositBody = http::read_json(request).await?;
                let account = ledger.deposit(id, body.amount).await?;
                self.answer(StatusCode::CREATED, &AccountView::new(&account, None))
            }
            ("GET", ["accounts", id]) => {
                let id = AccountId::new(*id).map_err(|e| ApiError::bad_request(e.to_string()))?;
                match ledger.account(id.clone()).await? {
                    Some(view) => self.answer(StatusCode::OK, &view),
                    None => Err(ApiError::not_found(format!("no account {id}"))),
                }
            }
            ("POST", ["charges"]) => {
                let body: ChargeBody = http::read_json(request).await?;
                let (charge, effect) = ledger
                    .charge(body.order_id, body.account_id, body.amount)
                    .await?;
                if effect == Effect::Applied {
                    tracing::info!(order = %charge.order_id, amount = ?charge.amount, "charged");
                }
                self.answer(created_or_ok(effect), &charge)
            }
            ("POST", ["refunds"]) => {
                let body: RefundBody = http::read_json(request).await?;
                let (charge, effect) = ledger.refund(body.order_id).await?;
                if effect == Effect::Applied {
                    tracing::info!(order = %charge.order_id, status = ?charge.status, "refunded");
                }
                self.answer(StatusCode::OK, &charge)
            }
            ("GET", ["charges", id]) => {
                let order_id = order_id_param(id)?;
                match ledger.charge_of(order_id).await? {
                    Some(charge) => self.answer(StatusCode::OK, &charge),
                    None => Err(ApiError::not_found(format!("no charge for order {id}"))),
                }
            }
            _ => Err(http::no_route(&request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tempfile::TempDir;

    fn eur(minor: u64) -> Money {
        Money::new(minor, Currency::EUR).unwrap()
    }

    fn ledger(dir: &TempDir) -> Ledger {
        let db = Db::open_in(dir.path(), payments::DATABASE).unwrap();
        Ledger::new(db, 3, Variant::V1)
    }

    /// A ledger with one account, `acct-x`, opened with `balance` euro cents.
    async fn ledger_with_account(dir: &TempDir, balance: u64) -> (Ledger, AccountId) {
        let ledger = ledger(dir);
        let id = AccountId::new("acct-x").unwrap();
        ledger
            .open(id.clone(), Currency::EUR, Some(eur(balance)))
            .await
            .unwrap();
        (ledger, id)
    }

    #[tokio::test]
    async fn a_stale_decision_is_retried_by_the_command_handler() {
        let dir = TempDir::new().unwrap();
        let (ledger, id) = ledger_with_account(&dir, 100).await;

        // Another writer (its own connection) deposits between our read and our append.
        let other = rusqlite::Connection::open(dir.path().join("payments.db")).unwrap();
        other
            .busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        let other = parking_lot::Mutex::new(other);
        let attempts = AtomicU32::new(0);
        let account = ledger
            .execute(Some(id.clone()), None, |loaded| {
                let account = loaded.account.as_ref().unwrap();
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    let theirs = change(Some(account), vec![account.deposit(eur(5), None, 0)?])?;
                    payments::commit(&mut other.lock(), Some(&theirs), None, 3, 0)?;
                }
                let ours = change(Some(account), vec![account.deposit(eur(1), None, 0)?])?;
                Ok(Decision::Write {
                    answer: ours.after.clone(),
                    account: Some(ours),
                    charge: None,
                })
            })
            .await
            .unwrap();
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            2,
            "the first decision was stale"
        );
        assert_eq!(
            account.balance(),
            eur(106),
            "both deposits count, neither is lost"
        );
        assert_eq!(account.version(), 4);
    }

    #[tokio::test]
    async fn concurrent_charges_on_one_account_all_land() {
        let dir = TempDir::new().unwrap();
        let (ledger, id) = ledger_with_account(&dir, 1_000).await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (ledger, id) = (ledger.clone(), id.clone());
                tokio::spawn(async move {
                    ledger
                        .charge(OrderId::new(format!("ord-{i}")).unwrap(), id, eur(10))
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let view = ledger.account(id).await.unwrap().unwrap();
        assert_eq!(view.balance, eur(920));
        assert_eq!(view.version, 10);
        assert_eq!(view.snapshot_version, Some(9));
    }

    #[tokio::test]
    async fn charge_and_refund_are_idempotent_by_order_id() {
        let dir = TempDir::new().unwrap();
        let (ledger, id) = ledger_with_account(&dir, 100).await;
        let order = OrderId::new("ord-1").unwrap();

        let (first, effect) = ledger
            .charge(order.clone(), id.clone(), eur(30))
            .await
            .unwrap();
        assert_eq!(effect, Effect::Applied);
        let (again, effect) = ledger
            .charge(order.clone(), id.clone(), eur(30))
            .await
            .unwrap();
        assert_eq!((again, effect), (first, Effect::AlreadyDone));
        assert!(matches!(
            ledger.charge(order.clone(), id.clone(), eur(31)).await,
            Err(PaymentError::ChargeConflict(_))
        ));
        assert_eq!(
            ledger.account(id.clone()).await.unwrap().unwrap().balance,
            eur(70)
        );

        assert_eq!(
            ledger.refund(order.clone()).await.unwrap().1,
            Effect::Applied
        );
        let (refunded, effect) = ledger.refund(order.clone()).await.unwrap();
        assert_eq!(
            (refunded.status, effect),
            (ChargeStatus::Refunded, Effect::AlreadyDone)
        );
        assert_eq!(
            ledger.account(id.clone()).await.unwrap().unwrap().balance,
            eur(100)
        );
        assert!(matches!(
            ledger.charge(order, id.clone(), eur(30)).await,
            Err(PaymentError::Refunded(_))
        ));

        // A refund that overtakes its charge voids the order.
        let late = OrderId::new("ord-2").unwrap();
        assert_eq!(
            ledger.refund(late.clone()).await.unwrap().0.status,
            ChargeStatus::Voided
        );
        assert!(matches!(
            ledger.charge(late, id.clone(), eur(1)).await,
            Err(PaymentError::Refunded(_))
        ));
        assert_eq!(ledger.account(id).await.unwrap().unwrap().balance, eur(100));
    }

    #[tokio::test]
    async fn refusals() {
        let dir = TempDir::new().unwrap();
        let (ledger, id) = ledger_with_account(&dir, 10).await;
        let order = OrderId::new("ord-1").unwrap();
        let err = ledger
            .charge(order.clone(), id.clone(), eur(11))
            .await
            .unwrap_err();
        assert_eq!(ApiError::from(err).status(), StatusCode::PAYMENT_REQUIRED);
        let nobody = AccountId::new("acct-nobody").unwrap();
        let err = ledger.charge(order, nobody, eur(1)).await.unwrap_err();
        assert_eq!(ApiError::from(err).status(), StatusCode::NOT_FOUND);
        let usd = "USD".parse().unwrap();
        let err = ledger.open(id, usd, None).await.unwrap_err();
        assert_eq!(ApiError::from(err).status(), StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn seeding_happens_once() {
        let dir = TempDir::new().unwrap();
        let ledger = ledger(&dir);
        ledger.seed().await.unwrap();
        ledger.seed().await.unwrap();
        let alice = ledger
            .account(AccountId::new("acct-alice").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (alice.balance.minor(), alice.version),
            (SEED_BALANCE_MINOR, 2)
        );
    }
}
