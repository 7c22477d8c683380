//! The inventory service: stock per SKU and reservations per order (`store::inventory` holds
//! the rules). Seeds SKU-1..SKU-20 at first start.

use crate::Error;
use crate::domain::ids::OrderId;
use crate::http::{self, ApiError, Request, Response, Routes, Server};
use crate::services::{self, begin_of_order, end_of_order, record_of_order};
use crate::store::Db;
use crate::store::inventory::{self, InventoryError, Item};
use ::http::StatusCode;
use serde::Deserialize;
use std::path::PathBuf;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `inventory.db`.
    pub data_dir: PathBuf,
}

/// How many products `GET /recommendations` suggests unless `limit` says otherwise.
const RECOMMENDATIONS: usize = 5;

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let db = Db::open_in(&config.data_dir, inventory::DATABASE)?;
    if db.run(inventory::seed).await? {
        tracing::info!("seeded stock for the catalog");
    }
    Ok(services::serve(listener, Inventory { db })?)
}

#[derive(Debug)]
struct Inventory {
    db: Db,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReserveBody {
    order_id: OrderId,
    items: Vec<Item>,
}

impl Routes for Inventory {
    async fn route(&self, key: (&str, &[&str]), request: Request) -> Result<Response, ApiError> {
        match key {
            ("GET", ["stock"]) => {
                let stock = self.db.run(|conn| inventory::stock(conn)).await?;
                Ok(http::json(StatusCode::OK, &stock))
            }
            ("GET", ["recommendations"]) => {
                let limit = http::parse_param(&http::query(&request), "limit")?
                    .unwrap_or(RECOMMENDATIONS)
                    .min(crate::domain::catalog::PRODUCT_COUNT);
                let picks = self
                    .db
                    .run(move |conn| inventory::recommendations(conn, limit))
                    .await?;
                Ok(http::json(StatusCode::OK, &picks))
            }
            ("POST", ["reservations"]) => {
                let ReserveBody { order_id, items } = http::read_json(request).await?;
                let reserve =
                    move |conn: &mut _, id: &_, at| inventory::reserve(conn, id, &items, at);
                begin_of_order(&self.db, order_id, reserve, refusal, "stock reserved").await
            }
            ("DELETE", ["reservations", id]) => {
                end_of_order(&self.db, id, inventory::release, "reservation released").await
            }
            ("GET", ["reservations", id]) => {
                record_of_order(&self.db, id, inventory::load, "no reservation for order").await
            }
            _ => Err(http::no_route(&request)),
        }
    }
}

fn refusal(e: InventoryError) -> ApiError {
    let message = e.to_string();
    match e {
        InventoryError::InsufficientStock { .. } => {
            ApiError::conflict("insufficient-stock", message)
        }
        InventoryError::Released(_) => ApiError::conflict("reservation-released", message),
        InventoryError::DifferentItems(_) => ApiError::conflict("reservation-conflict", message),
        InventoryError::UnknownSku(_) => ApiError::unprocessable("unknown-sku", message),
        InventoryError::NoItems | InventoryError::QuantityTooLarge(_) => {
            ApiError::unprocessable("invalid-reservation", message)
        }
        InventoryError::Store(e) => e.into(),
    }
}
