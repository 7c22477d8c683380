//! What the launcher asks of the shop's own APIs, straight at the apps (setting up and checking
//! are not traffic of the mesh): SKUs in stock, money for the customers, fault knobs, saga
//! states, and the records a compensated order must not leave behind.

use super::scenario::{self, Compensation};
use super::topology::{INVENTORY, Instance, ORDERS, PAYMENTS_V1};
use super::traffic::{self, Outcome};
use super::{figures, web};
use anyhow::{Result, bail};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// SKUs to order: those in stock, most stock first (from `GET /stock` of inventory).
pub(super) async fn stock_skus(client: &web::Client) -> Vec<String> {
    let Ok(answer) = web::get(client, INVENTORY.app_addr(), "/stock").await else {
        return Vec::new();
    };
    let Some(json) = answer.json() else {
        return Vec::new();
    };
    let mut found: Vec<(String, i64)> = Vec::new();
    let quantity = |v: &serde_json::Value| -> i64 {
        if let Some(n) = v.as_i64() {
            return n;
        }
        ["available", "quantity", "onHand", "stock"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|n| n.as_i64()))
            .unwrap_or(1)
    };
    let list = json
        .as_array()
        .or_else(|| json.get("items").and_then(|i| i.as_array()))
        .or_else(|| json.get("stock").and_then(|i| i.as_array()));
    match (list, json.as_object()) {
        (Some(items), _) => {
            for item in items {
                if let Some(sku) = item.get("sku").and_then(|s| s.as_str()) {
                    found.push((sku.to_owned(), quantity(item)));
                }
            }
        }
        (None, Some(map)) => {
            for (sku, v) in map {
                found.push((sku.clone(), quantity(v)));
            }
        }
        (None, None) => {}
    }
    found.retain(|(_, q)| *q > 0);
    found.sort_by_key(|(_, q)| std::cmp::Reverse(*q));
    found.into_iter().map(|(s, _)| s).collect()
}

/// Tops up the customers' accounts so that a long demo does not run out of money (directly at
/// payments v1: setting up is not traffic of the mesh).
pub(super) async fn fund_accounts(client: &web::Client) {
    for (customer, _) in traffic::CUSTOMERS {
        let path = format!("/accounts/acct-{customer}");
        let Ok(answer) = web::get(client, PAYMENTS_V1.app_addr(), &path).await else {
            continue;
        };
        let Some(account) = answer.json() else {
            continue;
        };
        let balance = account.get("balance");
        let minor = balance
            .and_then(|b| b.get("minor"))
            .and_then(|m| m.as_i64())
            .unwrap_or(0);
        let currency = balance
            .and_then(|b| b.get("currency"))
            .or_else(|| account.get("currency"))
            .and_then(|c| c.as_str())
            .unwrap_or("EUR")
            .to_owned();
        if minor < 10_000_000 {
            let body = serde_json::json!({"amount": {"minor": 100_000_000, "currency": currency}});
            let _ = web::send_json(
                client,
                web::Method::POST,
                PAYMENTS_V1.app_addr(),
                &format!("{path}/deposits"),
                &body,
            )
            .await;
        }
    }
}

/// The saga statuses of orders (`GET /sagas?status=...`).
/// The sagas orders records with `status` (at most the 1000 newest: the endpoint's cap).
pub(super) async fn sagas_with(
    client: &web::Client,
    status: &str,
) -> Option<Vec<serde_json::Value>> {
    let path = format!("/sagas?status={status}&limit=1000");
    orders_json(client, &path).await?.as_array().cloned()
}

/// How many sagas orders records in each status (all of them, not a page).
pub(super) async fn saga_states(client: &web::Client) -> Option<BTreeMap<String, u64>> {
    serde_json::from_value(orders_json(client, "/sagas/counts").await?).ok()
}

/// The JSON orders answers `GET path` with; `None` unless it answers 200 within 10 s.
async fn orders_json(client: &web::Client, path: &str) -> Option<serde_json::Value> {
    let answer = web::send(
        client,
        web::Method::GET,
        ORDERS.app_addr(),
        path,
        &[],
        None,
        Duration::from_secs(10),
    )
    .await
    .ok()
    .filter(|a| a.status == 200)?;
    answer.json()
}

/// Waits (up to `limit`) until orders has no saga still running or compensating: its sweeper
/// finishes compensations that were stuck while a service failed.
pub(super) async fn wait_sagas_settled(client: &web::Client, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let unfinished = saga_states(client).await.map_or(1, |counts| {
            counts.get("running").copied().unwrap_or(0)
                + counts.get("compensating").copied().unwrap_or(0)
        });
        if unfinished == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Looks every answered order up in payments and inventory.
/// Orders whose saga orders itself records as compensated count as compensated too (also
/// those the gateway did not answer in time).
pub(super) async fn check_compensation(client: &web::Client, orders: &[Outcome]) -> Compensation {
    let mut c = Compensation::default();
    let mut outcomes: BTreeMap<String, u16> = BTreeMap::new();
    for o in orders {
        if let (Some(id), Some(status @ (201 | 409))) = (o.order_id.clone(), o.status) {
            outcomes.insert(id, status);
        }
    }
    for saga in sagas_with(client, "compensated").await.unwrap_or_default() {
        if let Some(id) = saga.get("orderId").and_then(|i| i.as_str()) {
            outcomes.insert(id.to_owned(), 409);
        }
    }
    let semaphore = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for (id, status) in outcomes {
        let client = client.clone();
        let semaphore = semaphore.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire().await;
            let look = |addr, path: String| {
                let client = client.clone();
                async move {
                    match web::get(&client, addr, &path).await {
                        Ok(a) => (Some(a.status), a.json()),
                        Err(_) => (None, None),
                    }
                }
            };
            let charge = look(PAYMENTS_V1.app_addr(), format!("/charges/{id}")).await;
            let reservation = look(INVENTORY.app_addr(), format!("/reservations/{id}")).await;
            (id, status, charge, reservation)
        }));
    }
    for task in tasks {
        let Ok((id, status, (cs, cb), (rs, rb))) = task.await else {
            continue;
        };
        c.orders_checked += 1;
        let charged = cs.and_then(|s| scenario::charge_held(s, cb.as_ref()));
        let reserved = rs.and_then(|s| scenario::reservation_held(s, rb.as_ref()));
        if charged.is_none() || reserved.is_none() {
            c.unknown += 1;
        }
        let mut example = |what: &str| {
            if c.examples.len() < 5 {
                c.examples.push(format!("{id}: {what}"));
            }
        };
        // A compensated order must hold neither a charge nor stock, a completed one both.
        let compensated = status == 409;
        let (outcome, mismatches) = if compensated {
            let still = Some(true);
            (
                &mut c.compensated,
                [
                    (
                        charged == still,
                        &mut c.compensated_still_charged,
                        "compensated but still charged",
                    ),
                    (
                        reserved == still,
                        &mut c.compensated_still_reserved,
                        "compensated but stock still reserved",
                    ),
                ],
            )
        } else {
            let missing = Some(false);
            (
                &mut c.completed,
                [
                    (
                        charged == missing,
                        &mut c.completed_not_charged,
                        "completed without a charge",
                    ),
                    (
                        reserved == missing,
                        &mut c.completed_not_reserved,
                        "completed without a reservation",
                    ),
                ],
            )
        };
        *outcome += 1;
        for (wrong, count, what) in mismatches {
            if wrong {
                *count += 1;
                example(what);
            }
        }
    }
    c
}

/// Polls the orders sidecar's `/config` until it runs `v1`/`v2`, and records how long that took.
pub(super) async fn watch_weights_applied(
    client: web::Client,
    v1: u32,
    v2: u32,
    applied: Arc<Mutex<Option<u64>>>,
) {
    let edited = Instant::now();
    let deadline = edited + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(a) = web::get(&client, ORDERS.admin_addr(), "/config").await
            && let Some(w) = a.json().and_then(|c| figures::payments_weights(&c))
            && w.get("v1").copied().unwrap_or(0) == u64::from(v1)
            && w.get("v2").copied().unwrap_or(0) == u64::from(v2)
        {
            *applied.lock() = Some(edited.elapsed().as_millis() as u64);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn set_faults(
    client: &web::Client,
    instance: &Instance,
    error_rate: f64,
    hang: bool,
) -> Result<()> {
    let body = serde_json::json!({"errorRate": error_rate, "latencyMs": 0, "hang": hang});
    let answer = web::send_json(
        client,
        web::Method::PUT,
        instance.app_addr(),
        "/faults",
        &body,
    )
    .await?;
    if !answer.is_success() {
        bail!(
            "PUT /faults answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(())
}
