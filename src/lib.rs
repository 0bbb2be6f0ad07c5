//! # tenantgate
//!
//! A sidecar reverse proxy that makes an unchanged single-tenant HTTP backend multi-tenant.
//! Each request names its tenant with a public key in `X-Tenant-ID`; tenantgate looks the tenant
//! up (cached in-process), enforces the tenant's browser origins (dynamic CORS) and concurrency
//! cap, and forwards the request with the tenant's provider endpoint and region injected as
//! headers — to the default backend or to the tenant's own.
//!
//! ## The house: five layers, each importing only the ones below it
//!
//! | layer | folder | what it is |
//! |---|---|---|
//! | 5 | [`run`] | the process: config file, listeners and TLS, reloads, admin endpoints, CLI, demo |
//! | 4 | [`pipeline`] | the request path: identify → CORS → limit → forward, errors as JSON |
//! | 3 | [`telemetry`] | access and process logs, trace context and spans, Prometheus metrics |
//! | 2 | [`tenants`] | the tenant document, the stores, the cache in front of them, the slots |
//! | 1 | [`http`] | HTTP/1.1: one codec for both sides, the client-facing server, the backend client and pool |
//!
//! ## Reading order
//!
//! The request path, in the order a request meets it — [`pipeline::proxy`] strings the stages
//! together on one screen:
//!
//! | stage | module | refuses with |
//! |---|---|---|
//! | accept, TLS, HTTP/1.1 + HTTP/2, connection cap, shutdown | [`run::server`], [`run::tls`] | |
//! | read the head: framing, `Host`, target form, head size (the gateway is the only author of framing) | [`http::codec`], [`http::server`] | 400 / 408 / 431 |
//! | 1. identify the tenant from its key | [`pipeline::identify`] | 401 / 400 / 403 / 503 |
//! | 2. check the browser origin (and answer preflights) | [`pipeline::cors`], [`tenants::origin`] | 403 |
//! | 3. take a concurrency slot, a token of the rate, a unit of the day's quota | [`pipeline::limit`], [`tenants::slots`] | 429 |
//! | 4. rewrite headers, stream to the backend and back (or splice an upgrade) | [`pipeline::forward`], [`http::client`], [`http::pool`] | 400 / 413 / 502 / 504 |
//! | every refusal as the contract's JSON | [`pipeline::error`] | |
//!
//! Where tenants come from: [`tenants::tenant`] (the document and its validation),
//! [`tenants::store`] (the store trait, the JSON file store and the MongoDB store),
//! [`tenants::directory`] (the cache in front of every store: TTL, negative TTL, coalesced
//! misses, stale-while-revalidate, invalidation, miss budget), [`tenants::audit`] (one log line
//! per observed document change). A tenant's lifecycle — retired keys, its own limits, fields
//! injected as headers — is read in [`tenants::tenant`] and applied by the stages: retired keys
//! in [`pipeline::identify`], limits and `[inject] headers` in [`pipeline::forward`].
//!
//! Off the request path: [`tenants::cluster`] shares each tenant's cap, rate and quota between
//! replicas through MongoDB (`[cluster] scope = "cluster"`) and flushes usage
//! ([`tenants::usage`]); the request path only reads the atomics it sets ([`tenants::rate`],
//! [`tenants::quota`], [`tenants::slots`]).
#![forbid(unsafe_code)]

pub mod http;
pub mod pipeline;
pub mod run;
pub mod telemetry;
pub mod tenants;
