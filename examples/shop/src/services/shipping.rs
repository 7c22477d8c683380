//! The shipping service: one shipment per order, arranged and cancelled idempotently
//! (`store::shipping` holds the rules).

use crate::Error;
use crate::domain::address::Address;
use crate::domain::ids::OrderId;
use crate::http::{self, ApiError, Request, Response, Routes, Server};
use crate::services::{self, begin_of_order, end_of_order, record_of_order};
use crate::store::Db;
use crate::store::shipping::{self, ShippingError};
use serde::Deserialize;
use std::path::PathBuf;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `shipping.db`.
    pub data_dir: PathBuf,
}

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let db = Db::open_in(&config.data_dir, shipping::DATABASE)?;
    Ok(services::serve(listener, Shipping { db })?)
}

#[derive(Debug)]
struct Shipping {
    db: Db,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArrangeBody {
    order_id: OrderId,
    address: Address,
}

impl Routes for Shipping {
    async fn route(&self, key: (&str, &[&str]), request: Request) -> Result<Response, ApiError> {
        match key {
            ("POST", ["shipments"]) => {
                let ArrangeBody { order_id, address } = http::read_json(request).await?;
                let arrange =
                    move |conn: &mut _, id: &_, at| shipping::arrange(conn, id, &address, at);
                begin_of_order(&self.db, order_id, arrange, refusal, "shipment arranged").await
            }
            ("POST", ["shipments", id, "cancel"]) => {
                end_of_order(&self.db, id, shipping::cancel, "shipment cancelled").await
            }
            ("GET", ["shipments", id]) => {
                record_of_order(&self.db, id, shipping::load, "no shipment for order").await
            }
            _ => Err(http::no_route(&request)),
        }
    }
}

fn refusal(e: ShippingError) -> ApiError {
    match e {
        ShippingError::Store(e) => e.into(),
        ShippingError::Cancelled(_) => ApiError::conflict("shipment-cancelled", e.to_string()),
        ShippingError::DifferentAddress(_) => {
            ApiError::conflict("shipment-conflict", e.to_string())
        }
    }
}
