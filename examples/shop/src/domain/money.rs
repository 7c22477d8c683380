//! [`Money`], a value object: an amount in integer minor units (cents) of one currency.
//!
//! Integers, because binary floating point cannot hold 0.10 exactly; unsigned, because no amount
//! in the shop is negative (a refund is money moving the other way, not a negative charge); one
//! currency per operation, because adding euros to dollars needs an exchange rate and that is a
//! decision, not arithmetic. Every operation is checked and returns a new value.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why an amount or an operation on amounts is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("cannot combine {left} with {right}: one currency per operation")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("the result would be negative: {minuend} - {subtrahend}")]
    Negative { minuend: Money, subtrahend: Money },
    #[error("the amount is too large")]
    Overflow,
    #[error("{0:?} is not a currency code (three capital letters, such as EUR)")]
    InvalidCurrency(String),
}

/// An ISO 4217-style currency code: three ASCII capital letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// The shop's catalog currency.
    pub const EUR: Currency = Currency(*b"EUR");

    pub fn as_str(&self) -> &str {
        // Only ASCII capitals get in (see `from_str`), so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(code: &str) -> Result<Self, MoneyError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(MoneyError::InvalidCurrency(code.to_owned())),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(code: String) -> Result<Self, MoneyError> {
        code.parse()
    }
}

impl From<Currency> for String {
    fn from(currency: Currency) -> String {
        currency.as_str().to_owned()
    }
}

fmt_as_str!(Display for Currency, Debug for Currency);

/// An amount of one currency, in minor units. On the wire: `{"minor": 1250, "currency": "EUR"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "MoneyFields")]
pub struct Money {
    minor: u64,
    currency: Currency,
}

/// The unchecked wire shape; [`Money`] is made from it through [`Money::new`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyFields {
    minor: u64,
    currency: Currency,
}

impl TryFrom<MoneyFields> for Money {
    type Error = MoneyError;
    fn try_from(fields: MoneyFields) -> Result<Self, MoneyError> {
        Money::new(fields.minor, fields.currency)
    }
}

impl Money {
    /// The largest amount: what SQLite's signed 64-bit integers hold.
    pub const MAX_MINOR: u64 = i64::MAX as u64;

    pub fn new(minor: u64, currency: Currency) -> Result<Self, MoneyError> {
        if minor > Self::MAX_MINOR {
            return Err(MoneyError::Overflow);
        }
        Ok(Self { minor, currency })
    }

    pub const fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn minor(&self) -> u64 {
        self.minor
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn is_zero(&self) -> bool {
        self.minor == 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let sum = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::Overflow)?;
        Money::new(sum, self.currency)
    }

    /// `self - other`; refused when `other` is larger, since money is never negative.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(&other)?;
        let difference = self
            .minor
            .checked_sub(other.minor)
            .ok_or(MoneyError::Negative {
                minuend: self,
                subtrahend: other,
            })?;
        Money::new(difference, self.currency)
    }

    /// The price of `count` units of something costing `self`.
    pub fn times(self, count: u32) -> Result<Money, MoneyError> {
        let product = self
            .minor
            .checked_mul(u64::from(count))
            .ok_or(MoneyError::Overflow)?;
        Money::new(product, self.currency)
    }

    /// Adds up amounts that must all be in `currency`.
    pub fn sum(
        currency: Currency,
        amounts: impl IntoIterator<Item = Money>,
    ) -> Result<Money, MoneyError> {
        amounts
            .into_iter()
            .try_fold(Money::zero(currency), Money::checked_add)
    }

    pub fn same_currency(&self, other: &Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch {
                left: self.currency,
                right: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    /// `12.50 EUR`: every currency the shop uses has two decimal places.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:02} {}",
            self.minor / 100,
            self.minor % 100,
            self.currency
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(minor: u64) -> Money {
        Money::new(minor, Currency::EUR).unwrap()
    }

    fn usd(minor: u64) -> Money {
        Money::new(minor, "USD".parse().unwrap()).unwrap()
    }

    #[test]
    fn arithmetic_keeps_the_currency() {
        assert_eq!(eur(150).checked_add(eur(250)), Ok(eur(400)));
        assert_eq!(eur(400).checked_sub(eur(150)), Ok(eur(250)));
        assert_eq!(eur(125).times(4), Ok(eur(500)));
        assert_eq!(
            Money::sum(Currency::EUR, [eur(1), eur(2), eur(3)]),
            Ok(eur(6))
        );
        assert_eq!(
            Money::sum(Currency::EUR, []),
            Ok(Money::zero(Currency::EUR))
        );
    }

    #[test]
    fn money_is_never_negative() {
        assert!(matches!(
            eur(100).checked_sub(eur(101)),
            Err(MoneyError::Negative { .. })
        ));
        assert_eq!(
            eur(100).checked_sub(eur(100)),
            Ok(Money::zero(Currency::EUR))
        );
        // Not even on the wire.
        assert!(serde_json::from_str::<Money>(r#"{"minor": -5, "currency": "EUR"}"#).is_err());
    }

    #[test]
    fn one_currency_per_operation() {
        assert!(matches!(
            eur(1).checked_add(usd(1)),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert!(matches!(
            eur(5).checked_sub(usd(1)),
            Err(MoneyError::CurrencyMismatch { .. })
        ));
        assert!(Money::sum(Currency::EUR, [eur(1), usd(1)]).is_err());
        assert!(Money::sum(Currency::EUR, [usd(1)]).is_err());
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let max = Money::new(Money::MAX_MINOR, Currency::EUR).unwrap();
        assert_eq!(max.checked_add(eur(1)), Err(MoneyError::Overflow));
        assert_eq!(max.times(2), Err(MoneyError::Overflow));
        assert_eq!(
            Money::new(u64::MAX, Currency::EUR),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn currency_codes_are_three_capitals() {
        assert!("EUR".parse::<Currency>().is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(bad.parse::<Currency>().is_err(), "{bad}");
        }
    }

    #[test]
    fn wire_format_and_display() {
        let money: Money = serde_json::from_str(r#"{"minor": 1250, "currency": "EUR"}"#).unwrap();
        assert_eq!(money, eur(1250));
        assert_eq!(
            serde_json::to_value(money).unwrap(),
            serde_json::json!({"minor": 1250, "currency": "EUR"})
        );
        assert_eq!(money.to_string(), "12.50 EUR");
        assert_eq!(eur(7).to_string(), "0.07 EUR");
    }
}
