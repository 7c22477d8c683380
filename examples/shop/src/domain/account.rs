//! The event-sourced [`Account`] of the payments context.
//!
//! An account is not stored as a row with a balance: its stream of [`AccountEvent`]s is the
//! record, and the balance is what replaying them gives. Commands are methods that *decide*
//! (check the rules against the current state and return the event to record, changing
//! nothing); [`Account::evolve`] *applies* an event and is the only code that changes state, so
//! replaying a stream, resuming from a snapshot and handling a live command all go through the
//! same function and cannot disagree.

use crate::domain::ids::{AccountId, OrderId};
use crate::domain::money::{Currency, Money, MoneyError};
use crate::domain::order::Millis;
use serde::{Deserialize, Serialize};

/// Why an account refuses a command, or why a stored stream cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("account {0} is already open")]
    AlreadyOpen(AccountId),
    #[error("account {0} is closed")]
    Closed(AccountId),
    #[error("the amount must be positive")]
    NonPositiveAmount,
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds { balance: Money, requested: Money },
    #[error("account {id} still holds {balance}: only an empty account can be closed")]
    BalanceNotZero { id: AccountId, balance: Money },
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error("the stored stream cannot be replayed: {0}")]
    Corrupt(String),
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum AccountEvent {
    AccountOpened {
        account_id: AccountId,
        currency: Currency,
        at: Millis,
    },
    MoneyDeposited {
        amount: Money,
        /// Set when the deposit refunds an order's charge.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<OrderId>,
        at: Millis,
    },
    MoneyWithdrawn {
        amount: Money,
        /// Set when the withdrawal pays for an order.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order_id: Option<OrderId>,
        at: Millis,
    },
    AccountClosed {
        at: Millis,
    },
}

/// Open or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Open,
    Closed,
}

/// The state replaying an account's stream gives. Serialized as is for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    id: AccountId,
    balance: Money,
    status: AccountStatus,
    /// How many events made this state: the expected version of the next append.
    version: u64,
}

impl Account {
    pub fn id(&self) -> &AccountId {
        &self.id
    }

    pub fn balance(&self) -> Money {
        self.balance
    }

    pub fn currency(&self) -> Currency {
        self.balance.currency()
    }

    pub fn status(&self) -> AccountStatus {
        self.status
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Decides opening account `id`; `existing` is what its stream holds so far.
    pub fn open(
        existing: Option<&Account>,
        id: AccountId,
        currency: Currency,
        at: Millis,
    ) -> Result<AccountEvent, AccountError> {
        match existing {
            Some(account) => Err(AccountError::AlreadyOpen(account.id.clone())),
            None => Ok(AccountEvent::AccountOpened {
                account_id: id,
                currency,
                at,
            }),
        }
    }

    pub fn deposit(
        &self,
        amount: Money,
        order_id: Option<OrderId>,
        at: Millis,
    ) -> Result<AccountEvent, AccountError> {
        self.ensure_movable(amount)?;
        // The result must fit, and the currency must match: check now, not at replay.
        self.balance.checked_add(amount)?;
        Ok(AccountEvent::MoneyDeposited {
            amount,
            order_id,
            at,
        })
    }

    pub fn withdraw(
        &self,
        amount: Money,
        order_id: Option<OrderId>,
        at: Millis,
    ) -> Result<AccountEvent, AccountError> {
        self.ensure_movable(amount)?;
        match self.balance.checked_sub(amount) {
            Ok(_) => Ok(AccountEvent::MoneyWithdrawn {
                amount,
                order_id,
                at,
            }),
            Err(MoneyError::Negative { .. }) => Err(AccountError::InsufficientFunds {
                balance: self.balance,
                requested: amount,
            }),
            Err(other) => Err(other.into()),
        }
    }

    pub fn close(&self, at: Millis) -> Result<AccountEvent, AccountError> {
        self.ensure_open()?;
        if !self.balance.is_zero() {
            return Err(AccountError::BalanceNotZero {
                id: self.id.clone(),
                balance: self.balance,
            });
        }
        Ok(AccountEvent::AccountClosed { at })
    }

    /// Applies one stored event: the only place an account's state changes.
    pub fn evolve(state: Option<Account>, event: &AccountEvent) -> Result<Account, AccountError> {
        let corrupt = |what: &str| AccountError::Corrupt(what.to_owned());
        let mut account = match (state, event) {
            (
                None,
                AccountEvent::AccountOpened {
                    account_id,
                    currency,
                    ..
                },
            ) => {
                return Ok(Account {
                    id: account_id.clone(),
                    balance: Money::zero(*currency),
                    status: AccountStatus::Open,
                    version: 1,
                });
            }
            (None, _) => return Err(corrupt("the first event is not AccountOpened")),
            (Some(_), AccountEvent::AccountOpened { .. }) => {
                return Err(corrupt("AccountOpened in the middle of a stream"));
            }
            (Some(account), _) => account,
        };
        match event {
            AccountEvent::AccountOpened { .. } => unreachable!("handled above"),
            AccountEvent::MoneyDeposited { amount, .. } => {
                account.balance = account.balance.checked_add(*amount)?;
            }
            AccountEvent::MoneyWithdrawn { amount, .. } => {
                account.balance = account
                    .balance
                    .checked_sub(*amount)
                    .map_err(|e| AccountError::Corrupt(e.to_string()))?;
            }
            AccountEvent::AccountClosed { .. } => account.status = AccountStatus::Closed,
        }
        account.version += 1;
        Ok(account)
    }

    /// Applies `events` in order, starting from `from` (a snapshot, or nothing).
    pub fn replay<'a>(
        from: Option<Account>,
        events: impl IntoIterator<Item = &'a AccountEvent>,
    ) -> Result<Option<Account>, AccountError> {
        events
            .into_iter()
            .try_fold(from, |state, event| Account::evolve(state, event).map(Some))
    }

    fn ensure_open(&self) -> Result<(), AccountError> {
        match self.status {
            AccountStatus::Open => Ok(()),
            AccountStatus::Closed => Err(AccountError::Closed(self.id.clone())),
        }
    }

    /// Money moves in or out of an open account only, and never a zero amount.
    fn ensure_movable(&self, amount: Money) -> Result<(), AccountError> {
        self.ensure_open()?;
        if amount.is_zero() {
            Err(AccountError::NonPositiveAmount)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: u64) -> Money {
        Money::new(minor, Currency::EUR).unwrap()
    }

    fn id() -> AccountId {
        AccountId::new("acct-alice").unwrap()
    }

    /// Decides and applies, as the command handler does.
    fn run(
        state: Option<Account>,
        decide: impl FnOnce(Option<&Account>) -> Result<AccountEvent, AccountError>,
        log: &mut Vec<AccountEvent>,
    ) -> Result<Option<Account>, AccountError> {
        let event = decide(state.as_ref())?;
        let next = Account::evolve(state, &event)?;
        log.push(event);
        Ok(Some(next))
    }

    fn history() -> (Option<Account>, Vec<AccountEvent>) {
        let mut log = Vec::new();
        let mut state = run(None, |s| Account::open(s, id(), Currency::EUR, 1), &mut log).unwrap();
        for i in 0..10u64 {
            state = run(
                state,
                |s| s.unwrap().deposit(eur(100 + i), None, 2),
                &mut log,
            )
            .unwrap();
            state = run(state, |s| s.unwrap().withdraw(eur(50), None, 3), &mut log).unwrap();
        }
        (state, log)
    }

    #[test]
    fn the_balance_is_what_the_events_say() {
        let (state, log) = history();
        let account = state.unwrap();
        assert_eq!(account.balance(), eur((100..110).sum::<u64>() - 500));
        assert_eq!(account.version(), log.len() as u64);
        assert_eq!(Account::replay(None, &log).unwrap(), Some(account));
    }

    #[test]
    fn snapshot_plus_tail_equals_full_replay() {
        let (_, log) = history();
        let full = Account::replay(None, &log).unwrap();
        for cut in 1..log.len() {
            let snapshot = Account::replay(None, &log[..cut]).unwrap();
            // Through JSON, as the snapshot store keeps it.
            let stored = serde_json::to_string(&snapshot).unwrap();
            let restored: Option<Account> = serde_json::from_str(&stored).unwrap();
            assert_eq!(
                Account::replay(restored, &log[cut..]).unwrap(),
                full,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn commands_enforce_the_rules() {
        let (state, _) = history();
        let account = state.unwrap();
        assert!(matches!(
            account.withdraw(eur(1_000_000), None, 4),
            Err(AccountError::InsufficientFunds { .. })
        ));
        assert_eq!(
            account.deposit(Money::zero(Currency::EUR), None, 4),
            Err(AccountError::NonPositiveAmount)
        );
        let dollars = Money::new(5, "USD".parse().unwrap()).unwrap();
        assert!(matches!(
            account.deposit(dollars, None, 4),
            Err(AccountError::Money(MoneyError::CurrencyMismatch { .. }))
        ));
        assert!(matches!(
            account.withdraw(dollars, None, 4),
            Err(AccountError::Money(MoneyError::CurrencyMismatch { .. }))
        ));
        assert!(matches!(
            account.close(4),
            Err(AccountError::BalanceNotZero { .. })
        ));
        assert!(matches!(
            Account::open(Some(&account), id(), Currency::EUR, 4),
            Err(AccountError::AlreadyOpen(_))
        ));
    }

    #[test]
    fn a_closed_account_refuses_money() {
        let mut log = Vec::new();
        let state = run(None, |s| Account::open(s, id(), Currency::EUR, 1), &mut log).unwrap();
        let state = run(state, |s| s.unwrap().close(2), &mut log)
            .unwrap()
            .unwrap();
        assert_eq!(state.status(), AccountStatus::Closed);
        assert_eq!(
            state.deposit(eur(1), None, 3),
            Err(AccountError::Closed(id()))
        );
        assert_eq!(state.close(3), Err(AccountError::Closed(id())));
    }

    #[test]
    fn corrupt_streams_are_reported_not_replayed() {
        let deposit = AccountEvent::MoneyDeposited {
            amount: eur(1),
            order_id: None,
            at: 0,
        };
        assert!(matches!(
            Account::replay(None, [&deposit]),
            Err(AccountError::Corrupt(_))
        ));
        let open = AccountEvent::AccountOpened {
            account_id: id(),
            currency: Currency::EUR,
            at: 0,
        };
        let overdraw = AccountEvent::MoneyWithdrawn {
            amount: eur(1),
            order_id: None,
            at: 0,
        };
        assert!(matches!(
            Account::replay(None, [&open, &overdraw]),
            Err(AccountError::Corrupt(_))
        ));
        assert!(matches!(
            Account::replay(None, [&open, &open]),
            Err(AccountError::Corrupt(_))
        ));
    }
}
