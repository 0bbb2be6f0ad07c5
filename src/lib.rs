//! # tenantgate
//!
//! A sidecar reverse proxy that makes an unchanged single-tenant HTTP backend multi-tenant.
//! Each request names its tenant with a public key in `X-Tenant-ID`; tenantgate looks the tenant
//! up (cached in-process), enforces the tenant's browser origins (dynamic CORS) and concurrency
//! cap, and forwards the request with the tenant's provider endpoint and region injected as
//! headers — to the default backend or to the tenant's own.
//!
//! ## Reading order
//!
//! The request path, in the order a request meets it — [`proxy`] strings the stages together
//! on one screen:
//!
//! | stage | module | refuses with |
//! |---|---|---|
//! | accept, TLS, HTTP/1.1 + HTTP/2, connection cap, head size, shutdown | [`server`], [`http1`], [`tls`] | 400 / 408 / 431 |
//! | 1. identify the tenant from its key | [`identify`] | 401 / 400 / 403 / 503 |
//! | 2. check the browser origin (and answer preflights) | [`cors`], [`origin`] | 403 |
//! | 3. take one of the tenant's concurrency slots | [`limit`] | 429 |
//! | 4. rewrite headers, stream to the backend and back (or splice an upgrade) | [`forward`], [`pool`], [`exchange`], [`body`] | 413 / 502 / 504 |
//! | every refusal as the contract's JSON | [`error`] | |
//!
//! Where tenants come from: [`tenant`] (the document and its validation), [`store`] (the store
//! trait, the JSON file store and the MongoDB store), [`directory`] (the cache in front of every store: TTL,
//! negative TTL, coalesced misses, stale-while-revalidate, invalidation, miss budget).
//!
//! Around it: [`config`] (TOML → validated settings), [`admin`] (`/healthz`, `/readyz`,
//! `/metrics`), [`metrics`], [`trace`] (`traceparent` propagation, OTLP spans with the `otel`
//! feature),
//! [`cli`] (`run`, `check`, `demo`, `tenants …`), [`demo`] (sample backend and zero-setup demo),
//! [`logging`].
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod cors;
pub mod demo;
pub mod directory;
pub mod error;
pub mod forward;
pub mod http;
pub mod identify;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod server;
pub mod store;
pub mod tenant;
pub mod tls;
pub mod trace;
