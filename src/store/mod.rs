//! Storage: the `Store` trait every backend implements, the versioned
//! resource model, and the backend-neutral search plan.
//!
//! The stored JSON text *is* the record: it is written once, with the
//! server's `id` and `meta` already in it, and read back byte for byte.
//! Search index rows live beside it and are written in the same transaction.

pub mod cache;
pub mod plan;
pub mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

pub use plan::{Cursor, Filter, SearchPlan};

use crate::fhir::search::extract::IndexValue;

/// One stored version of a resource.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The backend's row id of the resource (0 for history rows).
    pub rid: i64,
    pub ty: String,
    pub id: String,
    pub version: i64,
    /// Milliseconds since the Unix epoch, UTC.
    pub last_updated_ms: i64,
    pub deleted: bool,
    /// The HTTP verb that made this version: `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The resource's JSON text with `id` and `meta`; empty for deletions.
    pub body: Arc<str>,
}

/// What the current version of a resource is, as seen inside a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Current {
    pub version: i64,
    pub deleted: bool,
}

/// A new version to write.
#[derive(Debug)]
pub struct NewVersion<'a> {
    pub ty: &'a str,
    pub id: &'a str,
    pub version: i64,
    pub last_updated_ms: i64,
    /// `POST` or `PUT`.
    pub method: &'static str,
    pub body: &'a str,
    /// Search index entries: parameter code and value.
    pub index: Vec<(&'static str, IndexValue)>,
}

/// A page of search results.
#[derive(Debug, Default)]
pub struct SearchPage {
    pub rows: Vec<Stored>,
    /// Total matches, when the plan asked for it.
    pub total: Option<u64>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
}

/// Which versions a history request wants.
#[derive(Clone, Debug, Default)]
pub struct HistoryQuery {
    pub ty: Option<String>,
    pub id: Option<String>,
    /// Only versions written at or after this time (ms).
    pub since_ms: Option<i64>,
    /// Only versions written before this time (ms), for `_at`-style bounds.
    pub before_ms: Option<i64>,
    /// Continue after this position (exclusive), from a previous page.
    pub after_seq: Option<i64>,
    pub count: usize,
}

/// A page of history, newest first.
#[derive(Debug, Default)]
pub struct HistoryPage {
    pub rows: Vec<Stored>,
    pub next_seq: Option<i64>,
}

/// Storage failures, kept coarse: callers only decide how to answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another write got there first (unique key, lost race); retrying may succeed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached or is busy beyond its timeout.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug or a damaged database.
    #[error("storage error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A storage backend. Reads run concurrently; writes go through [`StoreTx`].
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version of a resource (deleted ones included, with `deleted`).
    async fn read(&self, ty: &str, id: &str) -> StoreResult<Option<Stored>>;
    /// One specific version.
    async fn vread(&self, ty: &str, id: &str, version: i64) -> StoreResult<Option<Stored>>;
    /// Versions newest first, for instance, type or system history.
    async fn history(&self, q: &HistoryQuery) -> StoreResult<HistoryPage>;
    /// One page of current, non-deleted resources matching the plan.
    async fn search(&self, plan: &SearchPlan) -> StoreResult<SearchPage>;
    /// Current resources that `rows` reference through `param` (an `_include`).
    async fn include(
        &self,
        rows: &[Stored],
        param: &str,
        target_type: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<Stored>>;
    /// Current resources of `source_type` referencing `rows` through `param` (a `_revinclude`).
    async fn revinclude(
        &self,
        rows: &[Stored],
        source_type: &str,
        param: &str,
        limit: usize,
    ) -> StoreResult<Vec<Stored>>;
    /// Starts a write transaction. Dropping it without `commit` rolls back.
    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>>;
    /// Cheap check that the database answers.
    async fn ping(&self) -> StoreResult<()>;
}

/// A write transaction: everything in it becomes visible at once or not at all.
#[async_trait]
pub trait StoreTx: Send {
    /// The current version of a resource, if it ever existed.
    async fn current(&mut self, ty: &str, id: &str) -> StoreResult<Option<Current>>;
    /// Ids of current resources matching `plan` (up to `plan.count`), for conditional operations.
    async fn find_ids(&mut self, plan: &SearchPlan) -> StoreResult<Vec<String>>;
    /// Writes a new version and replaces the resource's search index.
    async fn put(&mut self, v: NewVersion<'_>) -> StoreResult<()>;
    /// Writes a deletion as a new version and drops the search index.
    async fn delete(&mut self, ty: &str, id: &str, version: i64, at_ms: i64) -> StoreResult<()>;
    /// Makes the transaction durable.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// The index table of a value and its columns after `rid` and `param`, in
/// the order of the table definitions in `migrations/`.
pub(crate) fn index_columns(v: &IndexValue) -> (plan::IndexTable, Vec<sql::Arg>) {
    use plan::IndexTable;
    use sql::Arg;
    let text = |s: &Option<String>| s.as_ref().map_or(Arg::Null, |s| Arg::Text(s.clone()));
    match v {
        IndexValue::Token { system, code, text: t } => (
            IndexTable::Token,
            vec![
                text(system),
                text(code),
                t.as_deref().map_or(Arg::Null, |t| Arg::Text(crate::fhir::search::values::normalize_string(t))),
            ],
        ),
        IndexValue::String { exact, normalized } => {
            (IndexTable::String, vec![Arg::Text(normalized.clone()), Arg::Text(exact.clone())])
        }
        IndexValue::Date { low, high } => (IndexTable::Date, vec![Arg::Int(*low), Arg::Int(*high)]),
        IndexValue::Reference { reference, target_type, target_id, identifier } => (
            IndexTable::Reference,
            vec![
                text(reference),
                text(target_type),
                text(target_id),
                identifier.as_ref().map_or(Arg::Null, |(s, _)| text(s)),
                identifier.as_ref().map_or(Arg::Null, |(_, v)| Arg::Text(v.clone())),
            ],
        ),
        IndexValue::Number { text: t, value } => (IndexTable::Number, vec![Arg::Real(*value), Arg::Text(t.clone())]),
        IndexValue::Quantity { value, system, code, unit, .. } => {
            (IndexTable::Quantity, vec![Arg::Real(*value), text(system), text(code), text(unit)])
        }
        IndexValue::Uri(u) => (IndexTable::Uri, vec![Arg::Text(u.clone())]),
    }
}

/// Opens the backend the URL names and brings its schema up to date.
pub async fn open(config: &crate::config::DatabaseConfig) -> anyhow::Result<Arc<dyn Store>> {
    if config.url.starts_with("sqlite:") {
        let store: Arc<dyn Store> = Arc::new(sqlite::SqliteStore::open(config).await?);
        Ok(match config.cache_mb {
            0 => store,
            mb => Arc::new(cache::CachedStore::new(store, mb * 1024 * 1024)),
        })
    } else {
        anyhow::bail!("database.url: the PostgreSQL backend is not available in this build yet")
    }
}
