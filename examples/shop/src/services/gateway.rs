//! The API gateway / backend for frontend: the shop's public edge.
//!
//! - Authentication: `Authorization: Bearer <token>` on every `/api` route, 401 otherwise. The
//!   token names the customer; clients never say who they are in the body.
//! - Commands pass through: `POST /api/orders` becomes orders' `POST /orders` for the signed-in
//!   customer, with an order id chosen here when the client gave none, so the mesh may retry it.
//! - Aggregation: `GET /api/home` asks orders and inventory at the same time and shows whatever
//!   answered; a part that failed is `null` and named in `degraded`.
//!
//! Rate limiting is not here: Weir's inbound policy does it in front of the gateway.

use crate::Error;
use crate::domain::ids::OrderId;
use crate::http::{
    self, ApiError, CallError, Client, Reply, Request, Response, Routes, Routing, Server,
};
use crate::services::{self, CUSTOMERS, Customer};
use ::http::{HeaderValue, StatusCode, header};
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Config {
    /// Where orders and inventory are.
    pub routing: Routing,
    /// The backstop timeout of each call to them.
    pub call_timeout: Duration,
}

/// Recent orders shown on the home page.
const RECENT_ORDERS: usize = 5;

pub async fn start(listener: TcpListener, config: Config) -> Result<Server, Error> {
    let client = Client::new(config.routing, config.call_timeout);
    Ok(services::serve(listener, Gateway { client })?)
}

#[derive(Debug)]
struct Gateway {
    client: Client,
}

/// The customer a request's bearer token names.
fn authenticate(request: &Request) -> Result<Customer, ApiError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))?;
    CUSTOMERS
        .into_iter()
        .find(|c| c.token == token)
        .ok_or_else(|| ApiError::unauthorized("unknown token"))
}

/// The body of `POST /api/orders`: items and address go on to orders as they are (orders
/// validates them); the order id is the client's idempotency key, if it has one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderBody {
    #[serde(default)]
    order_id: Option<String>,
    items: Value,
    address: Value,
}

/// Headers worth passing back from orders: its content, and the mesh's refusal details.
const PASSED_BACK: [&str; 3] = ["content-type", "x-weir-reason", "retry-after"];

fn pass_back(reply: Reply) -> Response {
    let mut response = hyper::Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    for name in PASSED_BACK {
        if let Some(value) = reply.headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

fn upstream_error(e: CallError) -> ApiError {
    match e {
        CallError::Timeout { .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream-timeout",
            e.to_string(),
        ),
        other => ApiError::bad_gateway(other.to_string()),
    }
}

impl Gateway {
    async fn place_order(&self, customer: Customer, body: OrderBody) -> Result<Response, ApiError> {
        let order_id = match body.order_id {
            Some(id) => id,
            None => OrderId::generate().to_string(),
        };
        let forward = json!({
            "orderId": order_id,
            "customer": customer.id,
            "items": body.items,
            "address": body.address,
        });
        let reply = self
            .client
            .post_idempotent("orders", "/orders", &forward)
            .await
            .map_err(upstream_error)?;
        Ok(pass_back(reply))
    }

    async fn home(&self, customer: Customer) -> Response {
        let orders_path = format!("/orders?customer={}&limit={RECENT_ORDERS}", customer.id);
        let (orders, recommendations) = tokio::join!(
            self.client.get("orders", &orders_path),
            self.client.get("inventory", "/recommendations"),
        );
        let mut degraded = Vec::new();
        let mut part = |name: &'static str, result: Result<Reply, CallError>| -> Value {
            let problem = match result {
                Ok(reply) if reply.is_success() => match reply.json::<Value>() {
                    Ok(value) => return value,
                    Err(e) => e.to_string(),
                },
                Ok(reply) => format!(
                    "{} answered {}: {}",
                    reply.service,
                    reply.status,
                    reply.message()
                ),
                Err(e) => e.to_string(),
            };
            tracing::warn!(part = name, %problem, "home page part missing");
            degraded.push(name);
            Value::Null
        };
        let recent_orders = part("recentOrders", orders);
        let recommendations = part("recommendations", recommendations);
        http::json(
            StatusCode::OK,
            &json!({
                "customer": {"id": customer.id, "name": customer.name, "email": customer.email},
                "recentOrders": recent_orders,
                "recommendations": recommendations,
                "degraded": degraded,
            }),
        )
    }
}

impl Routes for Gateway {
    async fn route(&self, key: (&str, &[&str]), request: Request) -> Result<Response, ApiError> {
        let (method, path) = key;
        if path.first() == Some(&"api") {
            let customer = authenticate(&request)?;
            match (method, path) {
                ("POST", ["api", "orders"]) => {
                    let body: OrderBody = http::read_json(request).await?;
                    return self.place_order(customer, body).await;
                }
                ("GET", ["api", "home"]) => return Ok(self.home(customer).await),
                _ => {}
            }
        }
        if (method, path) == ("GET", [].as_slice()) {
            let mut response = hyper::Response::new(Full::new(Bytes::from_static(
                b"weir demo shop: GET /api/home, POST /api/orders (Authorization: Bearer alice-token)\n",
            )));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(response);
        }
        Err(http::no_route(&request))
    }
}
