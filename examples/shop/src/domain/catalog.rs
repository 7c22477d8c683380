//! The product catalog, compiled in: orders prices lines with it and inventory seeds its stock
//! from it. A real shop would have a catalog service; the demo keeps the call graph to the five
//! services the mesh is meant to show.

use crate::domain::money::{Currency, Money};
use serde::Serialize;

/// A product the shop sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub sku: String,
    pub name: &'static str,
    pub price: Money,
}

const NAMES: [&str; 20] = [
    "Espresso cup",
    "Pour-over kettle",
    "Burr grinder",
    "Milk jug",
    "Tamper",
    "Coffee scale",
    "Paper filters",
    "Cold brew jar",
    "Travel mug",
    "Moka pot",
    "French press",
    "Cleaning tablets",
    "Knock box",
    "Latte glass",
    "Dosing funnel",
    "Bean canister",
    "Thermometer",
    "Barista towel",
    "Descaler",
    "Gift card",
];

/// How many products there are: SKU-1 to SKU-20.
pub const PRODUCT_COUNT: usize = NAMES.len();

fn product_at(index: usize) -> Product {
    let number = index as u64 + 1;
    Product {
        sku: format!("SKU-{number}"),
        name: NAMES[index],
        // 5.49 EUR, 7.99 EUR, …: distinct prices make totals easy to check by eye.
        price: Money::new(299 + 250 * number, Currency::EUR).unwrap_or(Money::zero(Currency::EUR)),
    }
}

/// The product with this SKU, if the shop sells it.
pub fn product(sku: &str) -> Option<Product> {
    let number: usize = sku.strip_prefix("SKU-")?.parse().ok()?;
    // `parse` accepts "+3" and "03"; only the canonical spelling names a product.
    (1..=PRODUCT_COUNT)
        .contains(&number)
        .then(|| product_at(number - 1))
        .filter(|p| p.sku == sku)
}

/// Every product, in SKU order.
pub fn products() -> impl Iterator<Item = Product> {
    (0..PRODUCT_COUNT).map(product_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_products_with_canonical_skus() {
        assert_eq!(products().count(), 20);
        assert_eq!(product("SKU-1").unwrap().price.minor(), 549);
        assert_eq!(product("SKU-20").unwrap().name, "Gift card");
        for unknown in ["SKU-0", "SKU-21", "SKU-01", "SKU-+1", "sku-1", ""] {
            assert!(product(unknown).is_none(), "{unknown}");
        }
    }
}
