//! Integration tests: the real gateway on port 0 with its own database (SQLite,
//! or PostgreSQL with `NARA_TEST_POSTGRES_URL`),
//! exercised over real HTTP (and once through fhir-sdk's FHIR client).

mod attacks;
mod bundles;
mod crash;
mod crud;
mod fhir_client;
mod helpers;
mod http;
mod ingest;
mod npo;
mod replicas;
mod search;
mod security;
mod subscriptions;
mod transfers;
mod validation;
