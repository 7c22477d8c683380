//! The orders service: places orders through the saga, and answers from the write model
//! (`GET /orders/{id}`: the aggregate) or the read model (`GET /orders?customer=`: the order
//! history projection).

pub mod saga;

use crate::Error;
use crate::domain::address::Address;
use crate::domain::catalog;
use crate::domain::ids::{CustomerId, OrderId};
use crate::domain::money::Currency;
use crate::domain::order::{Order, OrderError, Quantity};
use crate::domain::saga::{Saga, SagaStatus};
use crate::http::{self, ApiError, Client, Request, Response, Routes, Routing, Server};
use crate::services;
use crate::store::{Db, now_ms, orders, sagas};
use ::http::StatusCode;
use saga::{Orchestrator, PlaceError, SagaPolicy};
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds `orders.db`.
    pub data_dir: PathBuf,
    /// Where inventory, payments and shipping are.
    pub routing: Routing,
    /// The backstop timeout of each call to them.
    pub call_timeout: Duration,
    pub saga: SagaPolicy,
}

/// `GET /orders?customer=` answers this many orders unless `limit` says otherwise.
const DEFAULT_HISTORY: usize = 10;
const MAX_HISTORY: usize = 100;
const MAX_SAGAS: usize = 1000;

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let db = Db::open_in(&config.data_dir, orders::DATABASE)?;
    let caught_up = db.run(orders::project).await?;
    if caught_up > 0 {
        tracing::info!(events = caught_up, "order history caught up");
    }
    let client = Client::new(config.routing, config.call_timeout);
    let orchestrator = Orchestrator::new(db.clone(), client, config.saga);
    let sweeper = orchestrator.clone().spawn_sweeper();
    Ok(services::serve(listener, Orders { db, orchestrator })?.with_background(sweeper))
}

#[derive(Debug)]
struct Orders {
    db: Db,
    orchestrator: Arc<Orchestrator>,
}

/// `POST /orders`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceOrder {
    /// The client's idempotency key; one is made up when absent.
    #[serde(default)]
    pub order_id: Option<String>,
    pub customer: String,
    pub items: Vec<ItemRequest>,
    pub address: Address,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ItemRequest {
    pub sku: String,
    /// Signed on purpose: a zero or negative quantity is the order's to refuse, with its words.
    pub quantity: i64,
}

impl PlaceOrder {
    /// The confirmed order this request asks for, and the request's canonical form (the same
    /// lines in any order or split, the same customer and address).
    pub fn into_order(self) -> Result<(Order, String), ApiError> {
        let invalid = |e: OrderError| ApiError::unprocessable("invalid-order", e.to_string());
        let order_id = match self.order_id {
            Some(id) => OrderId::new(id)
                .map_err(|e| ApiError::unprocessable("invalid-order-id", e.to_string()))?,
            None => OrderId::generate(),
        };
        let customer = CustomerId::new(self.customer)
            .map_err(|e| ApiError::unprocessable("invalid-customer", e.to_string()))?;
        let mut order = Order::draft(order_id, customer, self.address, Currency::EUR);
        for item in self.items {
            let product = catalog::product(&item.sku).ok_or_else(|| {
                ApiError::unprocessable("unknown-sku", format!("unknown product {:?}", item.sku))
            })?;
            let quantity = Quantity::try_from(item.quantity).map_err(invalid)?;
            order.add_line(&product, quantity).map_err(invalid)?;
        }
        order.confirm(now_ms()).map_err(invalid)?;
        let mut lines: Vec<_> = order
            .lines()
            .iter()
            .map(|l| (l.sku.clone(), l.quantity.get()))
            .collect();
        lines.sort();
        let fingerprint = json!({
            "customer": order.customer(),
            "lines": lines,
            "address": order.address(),
        })
        .to_string();
        Ok((order, fingerprint))
    }
}

impl From<PlaceError> for ApiError {
    fn from(e: PlaceError) -> Self {
        match e {
            PlaceError::IdempotencyConflict(_) => {
                ApiError::unprocessable("idempotency-conflict", e.to_string())
            }
            PlaceError::Store(e) => e.into(),
        }
    }
}

/// The answer to `POST /orders`: 201 when completed, 409 otherwise (with the reason).
fn outcome(saga: &Saga, order: Option<&Order>) -> Response {
    let mut body = json!({
        "orderId": saga.order_id,
        "status": saga.status().as_str(),
        "order": order,
    });
    if let Some(order) = order {
        body["total"] = json!(order.total());
    }
    match saga.status() {
        SagaStatus::Completed => {
            body["trackingId"] = json!(saga.tracking_id());
            http::json(StatusCode::CREATED, &body)
        }
        _ => {
            body["reason"] = json!(saga.reason());
            body["failedStep"] = json!(saga.failed_step());
            http::json(StatusCode::CONFLICT, &body)
        }
    }
}

impl Orders {
    async fn place(&self, request: PlaceOrder) -> Result<Response, ApiError> {
        let (order, fingerprint) = request.into_order()?;
        let saga = self.orchestrator.place(order, fingerprint).await?;
        let order_id = saga.order_id.clone();
        let order = self
            .db
            .run(move |conn| orders::load(conn, &order_id))
            .await?;
        Ok(outcome(&saga, order.as_ref()))
    }
}

impl Routes for Orders {
    async fn route(&self, key: (&str, &[&str]), request: Request) -> Result<Response, ApiError> {
        match key {
            ("POST", ["orders"]) => {
                let body: PlaceOrder = http::read_json(request).await?;
                self.place(body).await
            }
            ("GET", ["orders", id]) => {
                services::record_of_order(&self.db, id, orders::load, "no order").await
            }
            ("GET", ["orders"]) => {
                let params = http::query(&request);
                let customer = params
                    .get("customer")
                    .ok_or_else(|| ApiError::bad_request("customer=ID is required"))?;
                let customer = CustomerId::new(customer.as_str())
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
                let limit = http::parse_param(&params, "limit")?
                    .unwrap_or(DEFAULT_HISTORY)
                    .min(MAX_HISTORY);
                let history = self
                    .db
                    .run(move |conn| orders::history(conn, &customer, limit))
                    .await?;
                Ok(http::json(StatusCode::OK, &history))
            }
            ("GET", ["sagas", "counts"]) => {
                let counts = self.db.run(|conn| sagas::count_by_status(conn)).await?;
                let body: serde_json::Map<String, serde_json::Value> = counts
                    .into_iter()
                    .map(|(status, n)| (status.as_str().to_owned(), n.into()))
                    .collect();
                Ok(http::json(StatusCode::OK, &body))
            }
            ("GET", ["sagas"]) => {
                let params = http::query(&request);
                let status = match params.get("status") {
                    None => None,
                    Some(s) => Some(SagaStatus::parse(s).ok_or_else(|| {
                        ApiError::bad_request(format!("unknown saga status {s:?}"))
                    })?),
                };
                let limit = http::parse_param(&params, "limit")?
                    .unwrap_or(MAX_SAGAS)
                    .min(MAX_SAGAS);
                let list = self
                    .db
                    .run(move |conn| sagas::list(conn, status, limit))
                    .await?;
                Ok(http::json(StatusCode::OK, &list))
            }
            _ => Err(http::no_route(&request)),
        }
    }
}
