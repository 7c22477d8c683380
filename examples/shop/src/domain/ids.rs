//! Identifiers. Each is its own type so an account id cannot be passed where an order id is
//! expected; all of them travel in URL paths, so their alphabet is kept URL-safe.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not valid: use 1 to 64 of A-Z a-z 0-9 . _ -")]
pub struct InvalidId {
    kind: &'static str,
    value: String,
}

/// The longest identifier accepted: ids appear in paths, logs and SQL keys.
const MAX_ID_LEN: usize = 64;

fn check(kind: &'static str, value: String) -> Result<String, InvalidId> {
    let ok = (1..=MAX_ID_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(value)
    } else {
        Err(InvalidId { kind, value })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
                check($kind, value.into()).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An order, and the idempotency key of everything done for it: the reservation, the
    /// charge and the shipment of an order are all keyed by its id.
    OrderId,
    "order id"
);
id_type!(
    /// A customer of the shop (`alice`).
    CustomerId,
    "customer id"
);
id_type!(
    /// A payments account (`acct-alice`).
    AccountId,
    "account id"
);

impl OrderId {
    /// A fresh id for an order whose client did not choose one.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
        let suffix: String = (0..12)
            .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
            .collect();
        Self(format!("ord-{suffix}"))
    }
}

impl CustomerId {
    /// Every customer pays from the account named after them, opened at the first start of
    /// payments.
    pub fn account(&self) -> AccountId {
        AccountId(format!("acct-{}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_bounded() {
        assert!(OrderId::new("ord-1_a.B").is_ok());
        assert!(OrderId::new("").is_err());
        assert!(OrderId::new("a/b").is_err());
        assert!(OrderId::new("x".repeat(65)).is_err());
        assert!(OrderId::new(OrderId::generate().as_str()).is_ok());
    }

    #[test]
    fn ids_deserialize_through_validation() {
        assert!(serde_json::from_str::<AccountId>("\"acct-alice\"").is_ok());
        assert!(serde_json::from_str::<AccountId>("\"acct alice\"").is_err());
    }

    #[test]
    fn a_customer_pays_from_their_account() {
        let alice = CustomerId::new("alice").unwrap();
        assert_eq!(alice.account().as_str(), "acct-alice");
    }
}
