//! The pure core: value objects, aggregates and their events. Nothing here does I/O or reads
//! the clock; times come in as arguments, so every rule is tested as plain code.

/// `Display` (and, where asked, `Debug`) of a closed set of names as the name `as_str` gives:
/// the same impl for every such type in the domain, so written once.
macro_rules! fmt_as_str {
    ($($fmt_trait:ident for $name:ty),+ $(,)?) => {$(
        impl std::fmt::$fmt_trait for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

pub mod account;
pub mod address;
pub mod catalog;
pub mod ids;
pub mod money;
pub mod order;
pub mod saga;

/// A domain event as the event store keeps it: JSON with a `type` field, plus that type's name
/// in a column of its own so streams can be read and filtered without parsing every event.
pub trait DomainEvent: serde::Serialize + serde::de::DeserializeOwned {
    fn kind(&self) -> &'static str;
}

/// Both names are the variant's: serde's `type` tag, and strum's `IntoStaticStr` for the
/// column, so an event enum is a domain event by deriving the two (no list of names to keep in
/// step with the variants).
impl<E> DomainEvent for E
where
    E: serde::Serialize + serde::de::DeserializeOwned,
    for<'a> &'a E: Into<&'static str>,
{
    fn kind(&self) -> &'static str {
        self.into()
    }
}

#[cfg(test)]
mod tests {
    use super::DomainEvent;
    use super::account::AccountEvent;
    use super::address::Address;
    use super::ids::{AccountId, CustomerId, OrderId};
    use super::money::{Currency, Money};
    use super::order::OrderEvent;

    /// The `kind` column of every event names the same type as its JSON's `type` tag.
    fn assert_kind_is_the_type_tag<E: DomainEvent + std::fmt::Debug>(events: &[E]) {
        for event in events {
            let json = serde_json::to_value(event).expect("an event serializes");
            assert_eq!(
                json["type"].as_str(),
                Some(event.kind()),
                "the kind of {event:?}"
            );
        }
    }

    #[test]
    fn kinds_are_the_type_tags() {
        let eur = Money::new(100, Currency::EUR).unwrap();
        let order = OrderId::new("ord-1").unwrap();
        assert_kind_is_the_type_tag(&[
            AccountEvent::AccountOpened {
                account_id: AccountId::new("acct-alice").unwrap(),
                currency: Currency::EUR,
                at: 1,
            },
            AccountEvent::MoneyDeposited {
                amount: eur,
                order_id: None,
                at: 2,
            },
            AccountEvent::MoneyWithdrawn {
                amount: eur,
                order_id: Some(order.clone()),
                at: 3,
            },
            AccountEvent::AccountClosed { at: 4 },
        ]);
        assert_kind_is_the_type_tag(&[
            OrderEvent::OrderPlaced {
                order_id: order.clone(),
                customer: CustomerId::new("alice").unwrap(),
                lines: Vec::new(),
                total: eur,
                address: Address::new("s", "c", "p", "DE").unwrap(),
                at: 5,
            },
            OrderEvent::OrderCompleted {
                order_id: order.clone(),
                tracking_id: "TRK-1".into(),
                at: 6,
            },
            OrderEvent::OrderCancelled {
                order_id: order,
                reason: "no stock".into(),
                at: 7,
            },
        ]);
    }
}
