//! The shop's services over real HTTP on loopback, started in-process on `127.0.0.1:0` and
//! pointed straight at each other (`--peer`), without sidecars.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use weir_shop::domain::ids::OrderId;
use weir_shop::domain::saga::{SagaStatus, Step};
use weir_shop::http::{Routing, Server};
use weir_shop::services::orders::saga::{Orchestrator, Progress, SagaPolicy};
use weir_shop::services::orders::{ItemRequest, PlaceOrder};
use weir_shop::services::{gateway, inventory, orders, payments, shipping};
use weir_shop::store::{Db, orders as order_store};
use weir_testkit::temp::TempDir;

const SEED: u64 = payments::SEED_BALANCE_MINOR;

/// A fresh data folder for a shop, removed on drop.
fn data_dir() -> TempDir {
    weir_testkit::temp_dir("weir-shop-test")
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Fast retries, and no sweeper during a test: tests call `recover` themselves.
fn policy() -> SagaPolicy {
    SagaPolicy {
        step_attempts: 3,
        undo_attempts: 3,
        backoff: Duration::from_millis(10),
        sweep_every: Duration::from_secs(3600),
        resume_after: Duration::ZERO,
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// The three services the saga calls.
struct Backends {
    inventory: Server,
    payments: Server,
    shipping: Server,
}

impl Backends {
    async fn start(dir: &Path) -> Self {
        let data_dir = dir.to_owned();
        Self {
            inventory: inventory::start(
                listener().await,
                inventory::Config {
                    data_dir: data_dir.clone(),
                },
            )
            .await
            .unwrap(),
            payments: payments::start(
                listener().await,
                payments::Config {
                    data_dir: data_dir.clone(),
                    variant: payments::Variant::V1,
                    snapshot_every: 5,
                },
            )
            .await
            .unwrap(),
            shipping: shipping::start(listener().await, shipping::Config { data_dir })
                .await
                .unwrap(),
        }
    }

    fn routing(&self) -> Routing {
        Routing::default()
            .peer("inventory", self.inventory.addr())
            .peer("payments", self.payments.addr())
            .peer("shipping", self.shipping.addr())
    }

    async fn stop(self) {
        self.inventory.shutdown().await;
        self.payments.shutdown().await;
        self.shipping.shutdown().await;
    }
}

/// The whole shop.
struct Shop {
    dir: TempDir,
    backends: Backends,
    orders: Server,
    gateway: Server,
}

impl Shop {
    async fn start() -> Self {
        Self::start_in(data_dir()).await
    }

    async fn start_in(dir: TempDir) -> Self {
        let backends = Backends::start(dir.path()).await;
        let orders = orders::start(
            listener().await,
            orders::Config {
                data_dir: dir.path().to_owned(),
                routing: backends.routing(),
                call_timeout: TIMEOUT,
                saga: policy(),
            },
        )
        .await
        .unwrap();
        let gateway = gateway::start(
            listener().await,
            gateway::Config {
                routing: Routing::default()
                    .peer("orders", orders.addr())
                    .peer("inventory", backends.inventory.addr()),
                call_timeout: TIMEOUT,
            },
        )
        .await
        .unwrap();
        Self {
            dir,
            backends,
            orders,
            gateway,
        }
    }

    async fn stop(self) -> TempDir {
        self.gateway.shutdown().await;
        self.orders.shutdown().await;
        self.backends.stop().await;
        self.dir
    }

    fn inventory(&self) -> SocketAddr {
        self.backends.inventory.addr()
    }

    fn payments(&self) -> SocketAddr {
        self.backends.payments.addr()
    }

    fn shipping(&self) -> SocketAddr {
        self.backends.shipping.addr()
    }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    timeout: Duration,
) -> Result<Answer, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let request = request.body(Full::new(body)).unwrap();
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    send(addr, Method::GET, path, None, None, TIMEOUT)
        .await
        .unwrap()
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Answer {
    send(addr, Method::POST, path, None, Some(body), TIMEOUT)
        .await
        .unwrap()
}

/// The gateway's home page for the customer of `token`.
async fn home_page(gateway: SocketAddr, token: &str) -> Answer {
    send(
        gateway,
        Method::GET,
        "/api/home",
        Some(token),
        None,
        TIMEOUT,
    )
    .await
    .unwrap()
}

async fn set_faults(addr: SocketAddr, faults: Value) {
    let answer = send(addr, Method::PUT, "/faults", None, Some(faults), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

async fn place(shop: &Shop, token: &str, body: Value) -> Answer {
    send(
        shop.gateway.addr(),
        Method::POST,
        "/api/orders",
        Some(token),
        Some(body),
        TIMEOUT,
    )
    .await
    .unwrap()
}

/// Places order `order_id` of `items` (SKU, quantity) as the customer of `token`.
async fn order(shop: &Shop, token: &str, order_id: &str, items: &[(&str, i64)]) -> Answer {
    let items: Vec<Value> = items
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    place(shop, token, order_body(order_id, Value::Array(items))).await
}

fn address() -> Value {
    json!({"street": "Hauptstr. 1", "city": "Berlin", "postalCode": "10115", "country": "DE"})
}

fn order_body(order_id: &str, items: Value) -> Value {
    json!({"orderId": order_id, "items": items, "address": address()})
}

async fn balance(shop: &Shop, account: &str) -> u64 {
    let answer = get(shop.payments(), &format!("/accounts/{account}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.json["balance"]["minor"].as_u64().unwrap()
}

async fn reserved(inventory: SocketAddr, sku: &str) -> u64 {
    let stock = get(inventory, "/stock").await.json;
    stock
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["sku"] == sku)
        .unwrap()["reserved"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn an_order_goes_through_every_service_once() {
    let shop = Shop::start().await;
    let body = order_body(
        "ord-happy",
        json!([{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-3", "quantity": 1}]),
    );
    let answer = place(&shop, "alice-token", body.clone()).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(answer.json["status"], "completed");
    assert_eq!(answer.json["orderId"], "ord-happy");
    let total = 2 * 549 + 1049;
    assert_eq!(
        answer.json["total"],
        json!({"minor": total, "currency": "EUR"})
    );
    let tracking = answer.json["trackingId"].as_str().unwrap().to_owned();

    // Every service holds its part.
    let reservation = get(shop.inventory(), "/reservations/ord-happy").await;
    assert_eq!(reservation.json["status"], "held");
    assert_eq!(reserved(shop.inventory(), "SKU-1").await, 2);
    let charge = get(shop.payments(), "/charges/ord-happy").await;
    assert_eq!(charge.json["status"], "charged");
    assert_eq!(charge.json["amount"]["minor"], total);
    let shipment = get(shop.shipping(), "/shipments/ord-happy").await;
    assert_eq!(
        (
            shipment.json["status"].as_str(),
            shipment.json["trackingId"].as_str()
        ),
        (Some("arranged"), Some(tracking.as_str()))
    );
    assert_eq!(balance(&shop, "acct-alice").await, SEED - total);

    // The write model and the read model agree.
    let order = get(shop.orders.addr(), "/orders/ord-happy").await;
    assert_eq!(order.json["status"], "completed");
    let history = get(shop.orders.addr(), "/orders?customer=alice&limit=5").await;
    assert_eq!(history.json[0]["orderId"], "ord-happy");
    assert_eq!(history.json[0]["status"], "completed");
    assert_eq!(history.json[0]["itemCount"], 3);
    let sagas = get(shop.orders.addr(), "/sagas?status=completed").await;
    assert_eq!(sagas.json.as_array().unwrap().len(), 1);
    let counts = get(shop.orders.addr(), "/sagas/counts").await;
    assert_eq!(
        counts.json,
        serde_json::json!({"running": 0, "compensating": 0, "completed": 1, "compensated": 0})
    );

    // The same order again: the same outcome, nothing done twice.
    let again = place(&shop, "alice-token", body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.json["trackingId"], tracking.as_str());
    assert_eq!(balance(&shop, "acct-alice").await, SEED - total);
    assert_eq!(reserved(shop.inventory(), "SKU-1").await, 2);
    assert_eq!(
        get(shop.orders.addr(), "/orders?customer=alice")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );
    shop.stop().await;
}

#[tokio::test]
async fn concurrent_duplicates_of_one_order_share_one_saga() {
    let shop = Shop::start().await;
    let body = order_body("ord-twice", json!([{"sku": "SKU-2", "quantity": 1}]));
    let (a, b) = tokio::join!(
        place(&shop, "bob-token", body.clone()),
        place(&shop, "bob-token", body)
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(a.json["trackingId"], b.json["trackingId"]);
    assert_eq!(balance(&shop, "acct-bob").await, SEED - 799);
    shop.stop().await;
}

#[tokio::test]
async fn a_failing_shipment_is_compensated_in_reverse() {
    let shop = Shop::start().await;
    set_faults(shop.shipping(), json!({"errorRate": 1.0})).await;
    let answer = order(&shop, "alice-token", "ord-noship", &[("SKU-4", 3)]).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{answer:?}");
    assert_eq!(answer.json["status"], "compensated");
    assert_eq!(answer.json["failedStep"], "arrangeShipment");
    assert!(
        answer.json["reason"].as_str().unwrap().contains("shipping"),
        "{answer:?}"
    );

    // No charged payment and no reserved stock remain; the order is cancelled.
    set_faults(shop.shipping(), json!({})).await;
    assert_eq!(
        get(shop.payments(), "/charges/ord-noship").await.json["status"],
        "refunded"
    );
    assert_eq!(balance(&shop, "acct-alice").await, SEED);
    assert_eq!(
        get(shop.inventory(), "/reservations/ord-noship").await.json["status"],
        "released"
    );
    assert_eq!(reserved(shop.inventory(), "SKU-4").await, 0);
    // Shipping answered its own errors, so it did nothing: nothing to cancel there.
    assert_eq!(
        get(shop.shipping(), "/shipments/ord-noship").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(shop.orders.addr(), "/orders/ord-noship").await.json["status"],
        "cancelled"
    );
    let history = get(shop.orders.addr(), "/orders?customer=alice").await;
    assert_eq!(history.json[0]["status"], "cancelled");
    assert_eq!(
        get(shop.orders.addr(), "/sagas?status=compensated")
            .await
            .json
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Asking again answers the same, and does not try again.
    let again = order(&shop, "alice-token", "ord-noship", &[("SKU-4", 3)]).await;
    assert_eq!(
        (again.status, &again.json["status"]),
        (StatusCode::CONFLICT, &json!("compensated"))
    );
    shop.stop().await;
}

#[tokio::test]
async fn out_of_stock_is_compensated_without_touching_payments() {
    let shop = Shop::start().await;
    let answer = order(&shop, "carol-token", "ord-big", &[("SKU-5", 1_000_000)]).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.json["failedStep"], "reserveInventory");
    assert!(
        answer.json["reason"]
            .as_str()
            .unwrap()
            .contains("insufficient stock"),
        "{answer:?}"
    );
    assert_eq!(
        get(shop.payments(), "/charges/ord-big").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(balance(&shop, "acct-carol").await, SEED);
    shop.stop().await;
}

#[tokio::test]
async fn invalid_orders_are_refused_before_any_saga() {
    let shop = Shop::start().await;
    let orders = shop.orders.addr();
    let cases = [
        (json!([]), "invalid-order"),
        (json!([{"sku": "SKU-1", "quantity": 0}]), "invalid-order"),
        (json!([{"sku": "SKU-1", "quantity": -2}]), "invalid-order"),
        (json!([{"sku": "SKU-999", "quantity": 1}]), "unknown-sku"),
    ];
    for (items, code) in cases {
        let answer = post(
            orders,
            "/orders",
            json!({"customer": "alice", "items": items, "address": address()}),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{items}: {answer:?}"
        );
        assert_eq!(answer.json["error"], code);
    }
    let bad_address = json!({"customer": "alice", "items": [{"sku": "SKU-1", "quantity": 1}],
        "address": {"street": "", "city": "c", "postalCode": "p", "country": "DE"}});
    assert_eq!(
        post(orders, "/orders", bad_address).await.status,
        StatusCode::BAD_REQUEST
    );
    assert!(
        get(orders, "/sagas")
            .await
            .json
            .as_array()
            .unwrap()
            .is_empty()
    );

    // One order id, two different orders.
    let first = json!({"orderId": "ord-k", "customer": "alice", "items": [{"sku": "SKU-1", "quantity": 1}], "address": address()});
    assert_eq!(
        post(orders, "/orders", first).await.status,
        StatusCode::CREATED
    );
    let second = json!({"orderId": "ord-k", "customer": "alice", "items": [{"sku": "SKU-2", "quantity": 1}], "address": address()});
    let answer = post(orders, "/orders", second).await;
    assert_eq!(
        (answer.status, &answer.json["error"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("idempotency-conflict")
        )
    );
    shop.stop().await;
}

#[tokio::test]
async fn the_gateway_requires_a_valid_token() {
    let shop = Shop::start().await;
    let gw = shop.gateway.addr();
    for token in [None, Some("nobody-token")] {
        for (method, path) in [(Method::GET, "/api/home"), (Method::POST, "/api/orders")] {
            let body = Some(order_body(
                "ord-x",
                json!([{"sku": "SKU-1", "quantity": 1}]),
            ));
            let answer = send(gw, method, path, token, body, TIMEOUT).await.unwrap();
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
            assert_eq!(answer.json["error"], "unauthorized");
            assert_eq!(answer.headers["www-authenticate"], "Bearer");
        }
    }
    // No order was placed by the refused requests.
    assert_eq!(
        get(shop.payments(), "/charges/ord-x").await.status,
        StatusCode::NOT_FOUND
    );
    let home = home_page(gw, "bob-token").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.json["customer"]["id"], "bob");
    shop.stop().await;
}

#[tokio::test]
async fn the_home_page_shows_what_answered() {
    let shop = Shop::start().await;
    let gw = shop.gateway.addr();
    order(&shop, "alice-token", "ord-home", &[("SKU-7", 1)]).await;
    let home = home_page(gw, "alice-token").await;
    assert_eq!(home.json["recentOrders"][0]["orderId"], "ord-home");
    assert_eq!(home.json["recommendations"].as_array().unwrap().len(), 5);
    assert_eq!(home.json["degraded"], json!([]));

    set_faults(shop.inventory(), json!({"errorRate": 1.0})).await;
    let home = home_page(gw, "alice-token").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.json["customer"]["name"], "Alice");
    assert_eq!(home.json["recentOrders"][0]["orderId"], "ord-home");
    assert_eq!(home.json["recommendations"], Value::Null);
    assert_eq!(home.json["degraded"], json!(["recommendations"]));

    // With orders gone too, the page still answers.
    let Shop {
        dir,
        backends,
        orders,
        gateway,
    } = shop;
    orders.shutdown().await;
    let home = home_page(gateway.addr(), "alice-token").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.json["recentOrders"], Value::Null);
    assert_eq!(
        home.json["degraded"],
        json!(["recentOrders", "recommendations"])
    );
    gateway.shutdown().await;
    backends.stop().await;
    drop(dir);
}

#[tokio::test]
async fn fault_knobs_slow_fail_and_hang() {
    let dir = data_dir();
    let shipping = shipping::start(
        listener().await,
        shipping::Config {
            data_dir: dir.path().to_owned(),
        },
    )
    .await
    .unwrap();
    let addr = shipping.addr();
    assert_eq!(
        get(addr, "/faults").await.json,
        json!({"errorRate": 0.0, "latencyMs": 0, "hang": false})
    );
    let bad = send(
        addr,
        Method::PUT,
        "/faults",
        None,
        Some(json!({"errorRate": 2})),
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    set_faults(addr, json!({"latencyMs": 300})).await;
    let start = tokio::time::Instant::now();
    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = tokio::time::Instant::now();
    get(addr, "/faults").await;
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "knob requests are never faulted"
    );

    set_faults(addr, json!({"errorRate": 1.0})).await;
    let failed = get(addr, "/shipments/ord-1").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.headers["x-shop-fault"], "error");

    set_faults(addr, json!({"hang": true})).await;
    let hung =
        tokio::spawn(async move { send(addr, Method::GET, "/health", None, None, TIMEOUT).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hung.is_finished(), "a hung request is not answered");
    set_faults(addr, json!({})).await;
    assert_eq!(
        hung.await.unwrap().unwrap().status,
        StatusCode::OK,
        "released when the hang is off"
    );
    shipping.shutdown().await;
}

#[tokio::test]
async fn idempotent_endpoints_do_things_once() {
    let dir = data_dir();
    let backends = Backends::start(dir.path()).await;
    let (inv, pay, ship) = (
        backends.inventory.addr(),
        backends.payments.addr(),
        backends.shipping.addr(),
    );

    let reserve = json!({"orderId": "ord-i", "items": [{"sku": "SKU-9", "quantity": 2}]});
    assert_eq!(
        post(inv, "/reservations", reserve.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        post(inv, "/reservations", reserve.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(reserved(inv, "SKU-9").await, 2);
    for _ in 0..2 {
        let released = send(
            inv,
            Method::DELETE,
            "/reservations/ord-i",
            None,
            None,
            TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(
            (released.status, &released.json["status"]),
            (StatusCode::OK, &json!("released"))
        );
    }
    assert_eq!(reserved(inv, "SKU-9").await, 0);
    assert_eq!(
        post(inv, "/reservations", reserve).await.status,
        StatusCode::CONFLICT,
        "released stays released"
    );

    let charge = json!({"orderId": "ord-i", "accountId": "acct-bob", "amount": {"minor": 500, "currency": "EUR"}});
    assert_eq!(
        post(pay, "/charges", charge.clone()).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        post(pay, "/charges", charge.clone()).await.status,
        StatusCode::OK
    );
    let account = get(pay, "/accounts/acct-bob").await;
    assert_eq!(account.json["balance"]["minor"], SEED - 500);
    for _ in 0..2 {
        assert_eq!(
            post(pay, "/refunds", json!({"orderId": "ord-i"}))
                .await
                .json["status"],
            "refunded"
        );
    }
    assert_eq!(
        get(pay, "/accounts/acct-bob").await.json["balance"]["minor"],
        SEED
    );
    let broke = json!({"orderId": "ord-j", "accountId": "acct-bob", "amount": {"minor": SEED + 1, "currency": "EUR"}});
    assert_eq!(
        post(pay, "/charges", broke).await.status,
        StatusCode::PAYMENT_REQUIRED
    );

    let shipment = json!({"orderId": "ord-i", "address": address()});
    let first = post(ship, "/shipments", shipment.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let second = post(ship, "/shipments", shipment).await;
    assert_eq!(
        (second.status, &second.json["trackingId"]),
        (StatusCode::OK, &first.json["trackingId"])
    );
    for _ in 0..2 {
        assert_eq!(
            post(ship, "/shipments/ord-i/cancel", json!({})).await.json["status"],
            "cancelled"
        );
    }
    backends.stop().await;
}

#[tokio::test]
async fn payments_v2_is_told_apart_and_shares_the_ledger() {
    let dir = data_dir();
    let start = |variant| {
        let data_dir = dir.path().to_owned();
        async move {
            let config = payments::Config {
                data_dir,
                variant,
                snapshot_every: 5,
            };
            payments::start(listener().await, config).await.unwrap()
        }
    };
    let v1 = start(payments::Variant::V1).await;
    let v2 = start(payments::Variant::V2).await;
    let health = get(v2.addr(), "/health").await;
    assert_eq!(health.headers["x-payments-variant"], "v2");
    let charge = json!({"orderId": "ord-c", "accountId": "acct-carol", "amount": {"minor": 1234, "currency": "EUR"}});
    let charged = post(v2.addr(), "/charges", charge).await;
    assert_eq!(charged.status, StatusCode::CREATED);
    assert_eq!(
        (&charged.json["variant"], &charged.json["chargedBy"]),
        (&json!("v2"), &json!("v2"))
    );
    let seen = get(v1.addr(), "/charges/ord-c").await;
    assert_eq!(seen.headers["x-payments-variant"], "v1");
    assert_eq!(
        (&seen.json["variant"], &seen.json["chargedBy"]),
        (&json!("v1"), &json!("v2"))
    );
    assert_eq!(
        get(v1.addr(), "/accounts/acct-carol").await.json["balance"]["minor"],
        SEED - 1234
    );
    v1.shutdown().await;
    v2.shutdown().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let shop = Shop::start().await;
    let answer = order(&shop, "bob-token", "ord-kept", &[("SKU-10", 2)]).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let spent = answer.json["total"]["minor"].as_u64().unwrap();
    let dir = shop.stop().await;

    let shop = Shop::start_in(dir).await;
    assert_eq!(
        get(shop.orders.addr(), "/orders/ord-kept").await.json["status"],
        "completed"
    );
    assert_eq!(
        get(shop.orders.addr(), "/orders?customer=bob").await.json[0]["orderId"],
        "ord-kept"
    );
    assert_eq!(
        get(shop.inventory(), "/reservations/ord-kept").await.json["status"],
        "held"
    );
    assert_eq!(reserved(shop.inventory(), "SKU-10").await, 2);
    assert_eq!(
        get(shop.shipping(), "/shipments/ord-kept").await.json["status"],
        "arranged"
    );
    assert_eq!(
        balance(&shop, "acct-bob").await,
        SEED - spent,
        "seeding does not run twice"
    );
    let again = order(&shop, "bob-token", "ord-kept", &[("SKU-10", 2)]).await;
    assert_eq!(
        (again.status, &again.json["trackingId"]),
        (StatusCode::CREATED, &answer.json["trackingId"])
    );
    shop.stop().await;
}

/// An orders database and an orchestrator over it, as an orders process would have.
fn orchestrator(dir: &Path, routing: Routing) -> (Db, std::sync::Arc<Orchestrator>) {
    orchestrator_with(dir, routing, TIMEOUT)
}

fn orchestrator_with(
    dir: &Path,
    routing: Routing,
    timeout: Duration,
) -> (Db, std::sync::Arc<Orchestrator>) {
    let db = Db::open_in(dir, order_store::DATABASE).unwrap();
    let client = weir_shop::http::Client::new(routing, timeout);
    (db.clone(), Orchestrator::new(db, client, policy()))
}

/// Starts a saga for a new order and advances it until it is about to arrange the shipment
/// (inventory reserved, payment charged), then "crashes": the orchestrator and its database
/// handle are dropped mid-saga.
/// A fresh folder and backends, with the saga of `order_id` left by a crash after the charge.
async fn crashed(order_id: &str) -> (TempDir, Backends) {
    let dir = data_dir();
    let backends = Backends::start(dir.path()).await;
    crash_after_the_charge(dir.path(), &backends, order_id).await;
    (dir, backends)
}

/// The status of order `order_id` as the orders database holds it.
async fn order_status(db: &Db, order_id: &str) -> String {
    let id = OrderId::new(order_id).unwrap();
    let order = db
        .run(move |conn| order_store::load(conn, &id))
        .await
        .unwrap()
        .unwrap();
    order.status().as_str().to_owned()
}

async fn crash_after_the_charge(dir: &Path, backends: &Backends, order_id: &str) {
    let (_db, first) = orchestrator(dir, backends.routing());
    let request = PlaceOrder {
        order_id: Some(order_id.into()),
        customer: "alice".into(),
        items: vec![ItemRequest {
            sku: "SKU-6".into(),
            quantity: 2,
        }],
        address: serde_json::from_value(address()).unwrap(),
    };
    let (order, fingerprint) = request.into_order().unwrap();
    let mut saga = first.begin(order, fingerprint).await.unwrap();
    while saga.step() != Step::ArrangeShipment {
        saga = match first.advance(saga).await.unwrap() {
            Progress::Moved(next) => next,
            stuck => panic!("{stuck:?}"),
        };
    }
    assert_eq!(saga.status(), SagaStatus::Running);
    assert_eq!(
        get(backends.payments.addr(), &format!("/charges/{order_id}"))
            .await
            .json["status"],
        "charged"
    );
}

#[tokio::test]
async fn another_instance_leaves_a_saga_alone_while_it_may_still_be_driven() {
    let (dir, backends) = crashed("ord-busy").await;

    // A second orders instance on the same database: the saga was written a moment ago, so
    // its sweeper waits for `resume_after` before taking it over.
    let db = Db::open_in(dir.path(), order_store::DATABASE).unwrap();
    let client = weir_shop::http::Client::new(backends.routing(), TIMEOUT);
    let patient = SagaPolicy {
        resume_after: Duration::from_secs(3600),
        ..policy()
    };
    let other = Orchestrator::new(db, client, patient);
    assert!(other.recover().await.unwrap().is_empty());
    assert_eq!(
        get(backends.shipping.addr(), "/shipments/ord-busy")
            .await
            .status,
        StatusCode::NOT_FOUND,
        "no shipment arranged by the other instance"
    );
    // Once quiet long enough (zero here), it is resumed.
    let (_db, restarted) = orchestrator(dir.path(), backends.routing());
    let driven = restarted.recover().await.unwrap();
    assert_eq!(driven.len(), 1);
    assert_eq!(driven[0].status(), SagaStatus::Completed);
    backends.stop().await;
}

#[tokio::test]
async fn a_saga_interrupted_after_the_charge_is_resumed_at_restart() {
    let (dir, backends) = crashed("ord-crash").await;

    let (db, restarted) = orchestrator(dir.path(), backends.routing());
    let driven = restarted.recover().await.unwrap();
    assert_eq!(driven.len(), 1);
    assert_eq!(driven[0].status(), SagaStatus::Completed);
    assert_eq!(
        get(backends.shipping.addr(), "/shipments/ord-crash")
            .await
            .json["status"],
        "arranged"
    );
    assert_eq!(order_status(&db, "ord-crash").await, "completed");
    assert!(
        restarted.recover().await.unwrap().is_empty(),
        "nothing left to do"
    );
    backends.stop().await;
}

#[tokio::test]
async fn a_saga_interrupted_after_the_charge_is_compensated_if_it_cannot_finish() {
    let (dir, backends) = crashed("ord-crash").await;
    set_faults(backends.shipping.addr(), json!({"errorRate": 1.0})).await;

    let (db, restarted) = orchestrator(dir.path(), backends.routing());
    let driven = restarted.recover().await.unwrap();
    assert_eq!(driven[0].status(), SagaStatus::Compensated);
    // No charge without an order, no reservation held.
    let (inv, pay) = (backends.inventory.addr(), backends.payments.addr());
    assert_eq!(
        get(pay, "/charges/ord-crash").await.json["status"],
        "refunded"
    );
    assert_eq!(
        get(pay, "/accounts/acct-alice").await.json["balance"]["minor"],
        SEED
    );
    assert_eq!(
        get(inv, "/reservations/ord-crash").await.json["status"],
        "released"
    );
    assert_eq!(reserved(inv, "SKU-6").await, 0);
    assert_eq!(order_status(&db, "ord-crash").await, "cancelled");
    backends.stop().await;
}

#[tokio::test]
async fn a_step_done_but_not_recorded_is_not_done_twice() {
    let dir = data_dir();
    let backends = Backends::start(dir.path()).await;
    let (_db, first) = orchestrator(dir.path(), backends.routing());
    let request = PlaceOrder {
        order_id: Some("ord-lost".into()),
        customer: "alice".into(),
        items: vec![ItemRequest {
            sku: "SKU-8".into(),
            quantity: 1,
        }],
        address: serde_json::from_value(address()).unwrap(),
    };
    let (order, fingerprint) = request.into_order().unwrap();
    let total = order.total().minor();
    let saga = first.begin(order, fingerprint).await.unwrap();
    let saga = match first.advance(saga).await.unwrap() {
        Progress::Moved(next) => next,
        stuck => panic!("{stuck:?}"),
    };
    assert_eq!(saga.step(), Step::ChargePayment);
    // The charge happened, but the process died before recording it.
    let charge = json!({"orderId": "ord-lost", "accountId": "acct-alice", "amount": {"minor": total, "currency": "EUR"}});
    assert_eq!(
        post(backends.payments.addr(), "/charges", charge)
            .await
            .status,
        StatusCode::CREATED
    );
    drop(first);

    let (_db, restarted) = orchestrator(dir.path(), backends.routing());
    assert_eq!(
        restarted.recover().await.unwrap()[0].status(),
        SagaStatus::Completed
    );
    assert_eq!(
        get(backends.payments.addr(), "/accounts/acct-alice")
            .await
            .json["balance"]["minor"],
        SEED - total,
        "charged once"
    );
    backends.stop().await;
}

#[tokio::test]
async fn an_undo_in_doubt_waits_behind_the_others_and_happens_later() {
    let (dir, backends) = crashed("ord-doubt").await;
    // Shipping takes requests and never answers: did it arrange the shipment? Nobody knows.
    set_faults(backends.shipping.addr(), json!({"hang": true})).await;

    let (db, restarted) =
        orchestrator_with(dir.path(), backends.routing(), Duration::from_millis(200));
    let driven = restarted.recover().await.unwrap();
    assert_eq!(driven[0].status(), SagaStatus::Compensating);
    assert_eq!(driven[0].undo_list(), [Step::ArrangeShipment]);
    // The money and the stock are back already, and the order is cancelled.
    let (inv, pay) = (backends.inventory.addr(), backends.payments.addr());
    assert_eq!(
        get(pay, "/charges/ord-doubt").await.json["status"],
        "refunded"
    );
    assert_eq!(
        get(inv, "/reservations/ord-doubt").await.json["status"],
        "released"
    );
    assert_eq!(order_status(&db, "ord-doubt").await, "cancelled");

    // Shipping recovers (and finishes whatever it was holding); the next sweep cancels.
    set_faults(backends.shipping.addr(), json!({})).await;
    let driven = restarted.recover().await.unwrap();
    assert_eq!(driven[0].status(), SagaStatus::Compensated);
    assert_eq!(
        get(backends.shipping.addr(), "/shipments/ord-doubt")
            .await
            .json["status"],
        "cancelled"
    );
    backends.stop().await;
}
