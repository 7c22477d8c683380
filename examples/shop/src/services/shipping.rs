//! The shipping service: one shipment per order, arranged and cancelled idempotently
//! (`store::shipping` holds the rules).

use crate::Error;
use crate::domain::address::Address;
use crate::domain::ids::OrderId;
use crate::http::{self, ApiError, Request, Response, Routes, Server};
use crate::services::{self, as_strs, created_or_ok, order_id_param, record_of_order};
use crate::store::shipping::{self, ShippingError};
use crate::store::{Db, Effect, now_ms};
use ::http::StatusCode;
use serde::Deserialize;
use std::path::PathBuf;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `shipping.db`.
    pub data_dir: PathBuf,
}

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let db = Db::open_in(&config.data_dir, "shipping", &[shipping::SCHEMA])?;
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
    async fn route(&self, request: Request) -> Result<Response, ApiError> {
        let segments = http::segments(&request);
        let method = request.method().clone();
        match (method.as_str(), as_strs(&segments).as_slice()) {
            ("POST", ["shipments"]) => {
                let body: ArrangeBody = http::read_json(request).await?;
                let (shipment, effect) = self
                    .db
                    .run(move |conn| {
                        shipping::arrange(conn, &body.order_id, &body.address, now_ms())
                    })
                    .await
                    .map_err(refusal)?;
                if effect == Effect::Applied {
                    tracing::info!(order = %shipment.order_id, "shipment arranged");
                }
                Ok(http::json(created_or_ok(effect), &shipment))
            }
            ("POST", ["shipments", id, "cancel"]) => {
                let order_id = order_id_param(id)?;
                let (shipment, effect) = self
                    .db
                    .run(move |conn| shipping::cancel(conn, &order_id, now_ms()))
                    .await?;
                if effect == Effect::Applied {
                    tracing::info!(order = %shipment.order_id, "shipment cancelled");
                }
                Ok(http::json(StatusCode::OK, &shipment))
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
