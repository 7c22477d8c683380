//! `weir-shop`: the demo e-commerce shop — five services made resilient by Weir — and its
//! launcher (`weir-shop demo`).
//!
//! One binary holds every service (`weir-shop gateway|orders|inventory|payments|shipping`); each
//! is a small HTTP/JSON server with its own SQLite database, calling the others through its Weir
//! sidecar. `examples/shop/README.md` is the contract: processes, ports, command lines, API.
//!
//! # Layout
//!
//! - [`domain`] — the pure core, no I/O, times passed in:
//!   - [`domain::money`]: [`Money`](domain::money::Money), a value object in integer minor
//!     units that is never negative and refuses to mix currencies;
//!     [`domain::address`]: the [`Address`](domain::address::Address) value object.
//!   - [`domain::order`]: the [`Order`](domain::order::Order) **aggregate** (draft → confirmed →
//!     completed | cancelled; only a draft changes, an empty order cannot be confirmed,
//!     quantities are positive) and its **domain events** (`OrderPlaced`, `OrderCompleted`,
//!     `OrderCancelled`).
//!   - [`domain::account`]: the **event-sourced** [`Account`](domain::account::Account) of
//!     payments (`AccountOpened`, `MoneyDeposited`, `MoneyWithdrawn`, `AccountClosed`):
//!     commands decide events, `evolve` applies them, replay is a fold.
//!   - [`domain::saga`]: the order **saga**'s state machine (steps forward, compensation in
//!     reverse), pure so its rules are tested without a network.
//! - [`store`] — SQLite, one database per service:
//!   - [`store::events`]: the **event store** — append with an expected version (optimistic
//!     concurrency), per-stream and per-category reads, snapshots.
//!   - [`store::orders`]: the order **repository** (state and events in one transaction) and the
//!     **CQRS read model**, the order history, kept by a **projection** of the event stream.
//!   - [`store::payments`]: accounts loaded from snapshot + newer events, and the charges table
//!     that makes charges and refunds idempotent by order id.
//!   - [`store::sagas`], [`store::inventory`], [`store::shipping`]: saga state, stock and
//!     reservations, shipments.
//!
//!   The module itself holds what they share: [`store::Db`] and the [`store::Database`] (file
//!   and schemas) each service's store module declares, the errors, [`store::Effect`] of an
//!   idempotent command, and a record kept per order (a reservation, a shipment): read back
//!   before commit, ended once.
//! - [`services`] — one module per service, the HTTP edge: [`services::gateway`] (the API
//!   gateway / BFF: bearer auth, parallel aggregation), [`services::orders`] (with
//!   [`services::orders::saga`], the **orchestrator** that runs, retries, compensates and
//!   recovers sagas), [`services::inventory`], [`services::payments`] (the command handler that
//!   retries on concurrency conflicts; the `v2` canary), [`services::shipping`].
//!   The module itself holds what they share: the bootstrap without faults or stamp headers,
//!   the demo's customers, the status of an idempotent answer.
//! - [`http`] — the binary's one accept loop ([`http::serve`]: header-read timeout, connection
//!   cap, bounded graceful drain), JSON helpers, the one error-to-answer mapping
//!   ([`http::ApiError`]) and the client that calls other services through the sidecar.
//! - [`faults`] — the run-time fault knobs every service has.
//! - [`demo`] — the launcher: the whole mesh on one machine with a live dashboard (its own
//!   module doc maps its parts: processes, the run's mesh folder, orders' scaling, traffic,
//!   figures, scenarios, dashboard, report).
//!
//! Dependencies run one way: `services` → `http` → `store` → `domain`, `http` → `faults`;
//! `domain` and `faults` use nothing of the crate, and `demo` only runs the binaries (it talks
//! to the services over HTTP, as a user would).
//!
//! # Why these patterns where they are
//!
//! Orders are *state-stored* with events beside them: an order is read far more often than its
//! history, and the events exist to feed the read model and tell the story. Accounts are
//! *event-sourced*: for money the ledger is the truth and the balance is derived, so every
//! change is an append checked against the version it was decided on, and snapshots keep
//! loading cheap as streams grow. The saga is *orchestrated* (one place knows the steps), and
//! its state is stored after every transition so a crash leaves it resumable; the calls it
//! makes are idempotent by order id, which is what makes retries — the saga's own and the
//! mesh's — safe.

pub mod demo;
pub mod domain;
pub mod faults;
pub mod http;
pub mod services;
pub mod store;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("payments: {0}")]
    Payments(#[from] services::payments::PaymentError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
