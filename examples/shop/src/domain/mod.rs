//! The pure core: value objects, aggregates and their events. Nothing here does I/O or reads
//! the clock; times come in as arguments, so every rule is tested as plain code.

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
