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
