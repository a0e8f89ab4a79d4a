//! nara-gateway: a FHIR R4 gateway between Swedish municipal EHR systems,
//! region systems and the national patient overview NPÖ.
//!
//! Module map (see `docs/ARCHITECTURE.md` for how a request flows):

/// Organisation binding: who is acting and which resources they may see and change.
pub mod access;
/// Application state, router assembly and `serve`, shared by the binary and the tests.
pub mod app;
/// The PDL audit trail: AuditEvents, durable and hash-chained, and their verification.
pub mod audit;
/// Tokens (SMART Backend Services), scopes, client registry, the authentication middleware.
pub mod auth;
/// The command-line commands (`serve`, `migrate`) behind `main.rs`.
pub mod cli;
/// Layered configuration: defaults, TOML file, `NARA_*` environment, validated at load.
pub mod config;
/// `ApiError` and its rendering as a FHIR OperationOutcome.
pub mod error;
/// The FHIR R4 REST API: interactions, search, Bundles, validation, CapabilityStatement.
pub mod fhir;
/// Swedish identifiers (personnummer, samordningsnummer, HSA-id, kommunkod) as validated newtypes.
pub mod identity;
/// The municipal push: `/ingest`, receipts, idempotent atomic writes with Provenance.
pub mod ingest;
/// A lossless JSON tree: exact numbers, key order, no duplicate keys.
pub mod json;
/// Declarative mappings from municipal push formats to FHIR: language, loading, fixtures.
pub mod mapping;
/// Request counts and latency histograms in Prometheus format.
pub mod metrics;
/// The NPÖ coverage registry: declared and observed production, reports, the `/npo` page.
pub mod npo;
/// Shipped reference data: the region's municipalities and delregions.
pub mod reference;
/// The `Store` trait, the SQLite and PostgreSQL backends and the SQL they share.
pub mod store;
/// Rest-hook Subscriptions: matching in the writing transaction, the durable outbox, delivery.
pub mod subscriptions;
/// A fresh SQLite or PostgreSQL database per test (`NARA_TEST_POSTGRES_URL`).
#[doc(hidden)]
pub mod test_support;
/// TLS and mutual TLS: settings, rustls configuration, client identity, HTTPS serving.
pub mod tls;
/// Document transfers: the Task state machine, first-fetch receipt, overdue list, duplicates.
pub mod transfer;
