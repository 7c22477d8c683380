//! The five services, one module each: the HTTP edge of the domain and store layers. Each has a
//! `Config` and a `start(listener, config)` that opens its database (seeding it at first start),
//! serves, and returns the running [`Server`] — what `main` runs and what
//! the tests start in-process on `127.0.0.1:0`.

pub mod gateway;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod shipping;

use crate::domain::ids::{InvalidId, OrderId};
use crate::domain::order::Millis;
use crate::faults::Faults;
use crate::http::{self, ApiError, Routes, Server};
use crate::store::{Db, Effect, StoreError, now_ms};
use ::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A customer of the demo, and the bearer token that signs them in at the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Customer {
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    pub token: &'static str,
}

/// The demo's customers: the gateway signs them in, payments opens their accounts.
pub const CUSTOMERS: [Customer; 3] = [
    Customer {
        id: "alice",
        name: "Alice",
        email: "alice@example.com",
        token: "alice-token",
    },
    Customer {
        id: "bob",
        name: "Bob",
        email: "bob@example.com",
        token: "bob-token",
    },
    Customer {
        id: "carol",
        name: "Carol",
        email: "carol@example.com",
        token: "carol-token",
    },
];

/// How long a call to another service may take before the caller gives up. The mesh's
/// timeouts are meant to be tighter; this is the backstop, also when there is no sidecar.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// An order id taken from a path segment.
pub(crate) fn order_id_param(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::new(raw).map_err(|e: InvalidId| ApiError::bad_request(e.to_string()))
}

/// Serves `routes` with no faults and no stamp headers: every service but payments.
pub(crate) fn serve(listener: TcpListener, routes: impl Routes) -> std::io::Result<Server> {
    http::serve(
        listener,
        Arc::new(routes),
        Faults::default(),
        Default::default(),
    )
}

/// The status of an idempotent command's answer: 201 when it made the change, 200 when an
/// earlier call had made it already.
pub(crate) fn created_or_ok(effect: Effect) -> StatusCode {
    match effect {
        Effect::Applied => StatusCode::CREATED,
        Effect::AlreadyDone => StatusCode::OK,
    }
}

/// Answers `GET …/{raw_id}` for a record kept per order: 200 with it, or 404 saying
/// `"{missing} {raw_id}"`.
pub(crate) async fn record_of_order<T: serde::Serialize + Send + 'static>(
    db: &Db,
    raw_id: &str,
    load: fn(&rusqlite::Connection, &OrderId) -> crate::store::Result<Option<T>>,
    missing: &str,
) -> Result<http::Response, ApiError> {
    let order_id = order_id_param(raw_id)?;
    let found = db
        .run(move |conn| Ok::<_, ApiError>(load(conn, &order_id)?))
        .await?;
    http::found(found, || format!("{missing} {raw_id}"))
}

/// Answers the `POST` that begins a record kept per order: `begin` makes it for `order_id`
/// once, at the time it is given (a repeat finds it and changes nothing), refused as `refusal`
/// says; `begun` is logged only when this call made it, and the answer is 201 then, 200 for a
/// repeat.
pub(crate) async fn begin_of_order<T, E>(
    db: &Db,
    order_id: OrderId,
    begin: impl FnOnce(&mut rusqlite::Connection, &OrderId, Millis) -> Result<(T, Effect), E>
    + Send
    + 'static,
    refusal: fn(E) -> ApiError,
    begun: &'static str,
) -> Result<http::Response, ApiError>
where
    T: serde::Serialize + Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let logged = order_id.clone();
    let (record, effect) = db
        .run(move |conn| begin(conn, &order_id, now_ms()))
        .await
        .map_err(refusal)?;
    if effect == Effect::Applied {
        tracing::info!(order = %logged, "{begun}");
    }
    Ok(http::json(created_or_ok(effect), &record))
}

/// Answers the `DELETE`/`cancel` of a record kept per order: `end` ends it once (a repeat
/// finds it ended and changes nothing), `ended` is logged only when this call ended it, and the
/// answer is 200 with the record either way.
pub(crate) async fn end_of_order<T: serde::Serialize + Send + 'static>(
    db: &Db,
    raw_id: &str,
    end: fn(&mut rusqlite::Connection, &OrderId, Millis) -> crate::store::Result<(T, Effect)>,
    ended: &'static str,
) -> Result<http::Response, ApiError> {
    let order_id = order_id_param(raw_id)?;
    let logged = order_id.clone();
    let (record, effect) = db.run(move |conn| end(conn, &order_id, now_ms())).await?;
    if effect == Effect::Applied {
        tracing::info!(order = %logged, "{ended}");
    }
    Ok(http::json(StatusCode::OK, &record))
}
