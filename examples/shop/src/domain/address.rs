//! [`Address`], a value object: equal when all its parts are equal, never changed in place,
//! valid from the moment it exists.

use serde::{Deserialize, Serialize};

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address field {0} is empty")]
    Empty(&'static str),
    #[error("address field {0} is longer than {MAX_FIELD_LEN} characters")]
    TooLong(&'static str),
    #[error("country {0:?} is not a two-letter code such as DE")]
    Country(String),
}

/// Room for any real street name, not for a megabyte of text.
const MAX_FIELD_LEN: usize = 200;

/// A shipping address. On the wire: `{"street", "city", "postalCode", "country"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "AddressFields")]
pub struct Address {
    street: String,
    city: String,
    postal_code: String,
    country: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddressFields {
    street: String,
    city: String,
    postal_code: String,
    country: String,
}

impl TryFrom<AddressFields> for Address {
    type Error = AddressError;
    fn try_from(f: AddressFields) -> Result<Self, AddressError> {
        Address::new(f.street, f.city, f.postal_code, f.country)
    }
}

fn field(name: &'static str, value: String) -> Result<String, AddressError> {
    let value = value.trim();
    if value.is_empty() {
        Err(AddressError::Empty(name))
    } else if value.chars().count() > MAX_FIELD_LEN {
        Err(AddressError::TooLong(name))
    } else {
        Ok(value.to_owned())
    }
}

impl Address {
    pub fn new(
        street: impl Into<String>,
        city: impl Into<String>,
        postal_code: impl Into<String>,
        country: impl Into<String>,
    ) -> Result<Self, AddressError> {
        let country = country.into().trim().to_ascii_uppercase();
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(AddressError::Country(country));
        }
        Ok(Self {
            street: field("street", street.into())?,
            city: field("city", city.into())?,
            postal_code: field("postalCode", postal_code.into())?,
            country,
        })
    }

    pub fn street(&self) -> &str {
        &self.street
    }

    pub fn city(&self) -> &str {
        &self.city
    }

    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }

    pub fn country(&self) -> &str {
        &self.country
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_normalised() {
        let a = Address::new(" Hauptstr. 1 ", "Berlin", "10115", "de").unwrap();
        assert_eq!(a.street(), "Hauptstr. 1");
        assert_eq!(a.country(), "DE");
        // Value equality.
        assert_eq!(
            a,
            Address::new("Hauptstr. 1", "Berlin", "10115", "DE").unwrap()
        );
    }

    #[test]
    fn invalid_addresses_are_refused() {
        assert_eq!(
            Address::new("", "Berlin", "10115", "DE"),
            Err(AddressError::Empty("street"))
        );
        assert!(matches!(
            Address::new("a", "b", "c", "Germany"),
            Err(AddressError::Country(_))
        ));
        assert!(matches!(
            Address::new("a".repeat(201), "b", "c", "DE"),
            Err(AddressError::TooLong("street"))
        ));
        let json = r#"{"street": " ", "city": "b", "postalCode": "c", "country": "DE"}"#;
        assert!(serde_json::from_str::<Address>(json).is_err());
    }

    #[test]
    fn wire_format_is_camel_case() {
        let a = Address::new("s", "c", "p", "FR").unwrap();
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["postalCode"], "p");
        assert_eq!(serde_json::from_value::<Address>(json).unwrap(), a);
    }
}
